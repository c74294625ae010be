//! The BRP client for family matches (issue 10, scope 1) against the kit's local BRP,
//! which answers in the request, response and error shapes of the public BRP Personen
//! bevragen v2 specification: found, not found, 5xx, timeout, malformed answers, a bad
//! API key, an invalid parent BSN, OAuth client credentials, mutual TLS, and no BSN in any
//! log line or error text.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use virfed::brp::{
    ApiKeyAuth, BrpAuth, BrpClient, BrpConfig, BrpError, Endpoint, OauthAuth, Parents, DEFAULT_API_KEY_HEADER,
};
use virfed::domain::Bsn;
use virfed::kit::brp::{BrpFault, BrpServer, BrpServerHandle};
use virfed::pki::{write_cert_pair, write_secret_file, Ca, CertSpec, Identity, TlsMaterial};

const API_KEY: &str = "brp-api-key-for-tests";

fn vectors(verdict: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bsn-vectors.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('\''))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let input = parts.next()?;
            (parts.next()? == verdict).then(|| input.to_owned())
        })
        .collect()
}

/// The valid BSNs of the shared vectors, as given (some have 8 digits).
fn valid() -> Vec<String> {
    vectors("valid")
}

/// The 9-digit form of a valid vector.
fn nine(bsn: &str) -> String {
    format!("{bsn:0>9}")
}

fn bsn(text: &str) -> Bsn {
    Bsn::parse(text).unwrap()
}

/// A secret file (0600) under `dir`.
fn secret(dir: &Path, name: &str, value: &str) -> PathBuf {
    let path = dir.join(name);
    write_secret_file(&path, value.as_bytes()).unwrap();
    path
}

fn api_key_config(dir: &Path, url: &str, key: &str) -> BrpConfig {
    let value_file = secret(dir, &format!("api-key-{}", uuid::Uuid::new_v4()), key);
    BrpConfig {
        url: url.to_owned(),
        ca: None,
        client_cert: None,
        client_key: None,
        auth: BrpAuth::ApiKey(ApiKeyAuth { header: DEFAULT_API_KEY_HEADER.into(), value_file }),
        timeout_ms: 2000,
    }
}

/// A server with an API key and `people`, and a client of it.
async fn api_key_brp(dir: &Path, people: &[(&str, &[&str])]) -> (BrpServerHandle, BrpClient) {
    let mut server = BrpServer::new().api_key("X-API-KEY", API_KEY);
    for (child, parents) in people {
        server = server.person(child, parents);
    }
    let (_, handle) = server.start().await.unwrap();
    let client = BrpClient::new(&api_key_config(dir, &handle.url(), API_KEY)).unwrap();
    (handle, client)
}

/// No request target the server saw holds a digit run that could be a BSN.
fn assert_no_bsn_in_urls(server: &BrpServerHandle) {
    let targets = server.targets();
    assert!(!targets.is_empty());
    for target in targets {
        assert_eq!(virfed::brp::redact(&target), target, "a BSN-like number in the URL {target}");
    }
}

#[tokio::test]
async fn family_brp_found() {
    let dir = tempfile::tempdir().unwrap();
    let owned = valid();
    let v: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (child, one, none, eight) = (v[0], v[1], v[2], "42473342");
    let (mother, father) = (v[10], v[11]);
    let (server, client) = api_key_brp(
        dir.path(),
        &[(child, &[mother, father]), (one, &[mother]), (none, &[]), (eight, &[father, "050174861"])],
    )
    .await;
    assert_eq!(client.parents(&bsn(child)).await.unwrap(), Parents::Found(vec![bsn(mother), bsn(father)]));
    assert_eq!(client.parents(&bsn(one)).await.unwrap(), Parents::Found(vec![bsn(mother)]));
    assert_eq!(client.parents(&bsn(none)).await.unwrap(), Parents::Found(vec![]), "no parents recorded");
    // An 8-digit BSN is asked in its 9-digit form, and an answer's parent is parsed the same way.
    assert_eq!(client.parents(&bsn(eight)).await.unwrap(), Parents::Found(vec![bsn(father), bsn("50174861")]));
    assert_eq!(client.skipped_invalid_parents(), 0);
    assert_eq!(server.lookups(), 4);
    assert!(server.targets().iter().all(|t| t == "/haalcentraal/api/brp/personen"), "{:?}", server.targets());
    assert_no_bsn_in_urls(&server);
}

#[tokio::test]
async fn family_brp_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let owned = valid();
    let v: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (server, client) = api_key_brp(dir.path(), &[(v[0], &[v[1]])]).await;
    assert_eq!(client.parents(&bsn(v[3])).await.unwrap(), Parents::NotFound);
    assert_eq!(server.lookups(), 1);
    // Known later (the queue's retry finds it once the BRP has it).
    server.insert_person(v[3], &[v[4]]);
    assert_eq!(client.parents(&bsn(v[3])).await.unwrap(), Parents::Found(vec![bsn(v[4])]));
}

#[tokio::test]
async fn family_brp_5xx_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let owned = valid();
    let v: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (server, client) = api_key_brp(dir.path(), &[(v[0], &[v[1]])]).await;

    server.set_fault(BrpFault::Unavailable);
    let err = client.parents(&bsn(v[0])).await.unwrap_err();
    assert!(matches!(err, BrpError::Unavailable { endpoint: Endpoint::Personen, status: 503, .. }), "{err:?}");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(err.problem().and_then(|p| p.code()), Some("notAvailable"), "{err}");
    assert!(err.to_string().contains("Bronservice BRP is tijdelijk niet beschikbaar."), "{err}");

    server.set_fault(BrpFault::RateLimited);
    let err = client.parents(&bsn(v[0])).await.unwrap_err();
    assert!(err.is_retryable() && err.status() == Some(429), "{err}");
    assert_eq!(err.problem().and_then(|p| p.code()), Some("tooManyRequests"));

    // The BRP is back: the same lookup succeeds.
    server.set_fault(BrpFault::None);
    assert_eq!(client.parents(&bsn(v[0])).await.unwrap(), Parents::Found(vec![bsn(v[1])]));
}

#[tokio::test]
async fn family_brp_timeout_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let owned = valid();
    let v: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (server, _) = api_key_brp(dir.path(), &[(v[0], &[v[1]])]).await;
    let mut config = api_key_config(dir.path(), &server.url(), API_KEY);
    config.timeout_ms = 200;
    let client = BrpClient::new(&config).unwrap();
    server.set_fault(BrpFault::Delay(Duration::from_secs(3)));
    let started = Instant::now();
    let err = client.parents(&bsn(v[0])).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "the timeout did not bound the call: {:?}", started.elapsed());
    assert!(matches!(err, BrpError::Timeout { endpoint: Endpoint::Personen, after_ms: 200 }), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("200 ms"), "{err}");

    server.set_fault(BrpFault::None);
    assert_eq!(client.parents(&bsn(v[0])).await.unwrap(), Parents::Found(vec![bsn(v[1])]));

    // Nobody listening is retryable too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gone = BrpClient::new(&api_key_config(dir.path(), &format!("http://{closed}/brp"), API_KEY)).unwrap();
    let err = gone.parents(&bsn(v[0])).await.unwrap_err();
    assert!(matches!(err, BrpError::Connect { .. }) && err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn family_brp_malformed_answer() {
    let dir = tempfile::tempdir().unwrap();
    let owned = valid();
    let v: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (server, client) = api_key_brp(dir.path(), &[(v[0], &[v[1], v[2]])]).await;
    for fault in [BrpFault::TruncatedJson, BrpFault::WrongShape, BrpFault::WrongType] {
        server.set_fault(fault.clone());
        let err = client.parents(&bsn(v[0])).await.unwrap_err();
        assert!(matches!(err, BrpError::Malformed { endpoint: Endpoint::Personen, .. }), "{fault:?}: {err:?}");
        assert!(err.is_retryable(), "{fault:?}: {err}");
        // The wrong shape puts the child's BSN where a string belongs; the parser's
        // complaint quotes it, and the error must not.
        let shown = format!("{err} {err:?}");
        let as_number = nine(v[0]).trim_start_matches('0').to_owned();
        assert!(!shown.contains(&as_number), "{fault:?}: {shown}");
    }
    server.set_fault(BrpFault::None);

    // Three parents for one person, or two persons for one BSN, are not believed.
    server.insert_person(v[5], &[v[1], v[2], v[3]]);
    let err = client.parents(&bsn(v[5])).await.unwrap_err();
    assert!(matches!(err, BrpError::Malformed { .. }) && err.to_string().contains("at most 2"), "{err}");
}

#[tokio::test]
async fn family_brp_bad_api_key_is_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let owned = valid();
    let v: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (server, _) = api_key_brp(dir.path(), &[(v[0], &[v[1]])]).await;
    let wrong = BrpClient::new(&api_key_config(dir.path(), &server.url(), "not-the-key")).unwrap();
    let err = wrong.parents(&bsn(v[0])).await.unwrap_err();
    assert!(matches!(err, BrpError::Refused { endpoint: Endpoint::Personen, status: 401, .. }), "{err:?}");
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.problem().and_then(|p| p.code()), Some("authentication"));
    assert!(err.to_string().contains("Niet correct geauthenticeerd."), "{err}");

    // The right key in another header is no key at all.
    let mut config = api_key_config(dir.path(), &server.url(), API_KEY);
    config.auth = match config.auth {
        BrpAuth::ApiKey(key) => BrpAuth::ApiKey(ApiKeyAuth { header: "X-Api-Token".into(), ..key }),
        other => other,
    };
    let err = BrpClient::new(&config).unwrap().parents(&bsn(v[0])).await.unwrap_err();
    assert!(!err.is_retryable() && err.status() == Some(401), "{err}");
}

#[tokio::test]
async fn family_brp_invalid_parent_bsn_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let owned = valid();
    let v: Vec<&str> = owned.iter().map(String::as_str).collect();
    let invalid_owned = vectors("invalid");
    let invalid: Vec<&str> = invalid_owned.iter().map(String::as_str).collect();
    // One good parent, one failing the 11-proef, and the child named as its own parent.
    let (_server, client) = api_key_brp(
        dir.path(),
        &[(v[0], &[v[1], invalid[0]]), (v[2], &[v[2], v[3]]), (v[4], &[invalid[1], invalid[2]])],
    )
    .await;
    assert_eq!(client.parents(&bsn(v[0])).await.unwrap(), Parents::Found(vec![bsn(v[1])]));
    assert_eq!(client.skipped_invalid_parents(), 1);
    assert_eq!(client.parents(&bsn(v[2])).await.unwrap(), Parents::Found(vec![bsn(v[3])]));
    assert_eq!(client.skipped_invalid_parents(), 2);
    assert_eq!(client.parents(&bsn(v[4])).await.unwrap(), Parents::Found(vec![]));
    assert_eq!(client.skipped_invalid_parents(), 4);
}

fn oauth_config(dir: &Path, server: &BrpServerHandle, client_id: &str, client_secret: &str) -> BrpConfig {
    let client_secret_file = secret(dir, &format!("client-secret-{}", uuid::Uuid::new_v4()), client_secret);
    BrpConfig {
        url: server.url(),
        ca: None,
        client_cert: None,
        client_key: None,
        auth: BrpAuth::Oauth(OauthAuth {
            token_url: server.token_url(),
            client_id: client_id.into(),
            client_secret_file,
            scope: Some("brp personen".into()),
        }),
        timeout_ms: 2000,
    }
}

#[tokio::test]
async fn family_brp_oauth_client_credentials_token_is_cached_and_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let owned = valid();
    let v: Vec<&str> = owned.iter().map(String::as_str).collect();
    // The client id and secret need form-encoding inside HTTP Basic (RFC 6749 2.3.1).
    let (id, secret) = ("virfed rijnmond:1", "s3cret/with+chars%");
    let (_, server) = BrpServer::new().oauth(id, secret, 3600).person(v[0], &[v[1]]).start().await.unwrap();
    let client = BrpClient::new(&oauth_config(dir.path(), &server, id, secret)).unwrap();
    for _ in 0..3 {
        assert_eq!(client.parents(&bsn(v[0])).await.unwrap(), Parents::Found(vec![bsn(v[1])]));
    }
    assert_eq!(server.token_requests(), 1, "the token is cached until shortly before it expires");

    // A revoked token: the 401 fetches a fresh one and the lookup goes through.
    server.revoke_tokens();
    assert_eq!(client.parents(&bsn(v[0])).await.unwrap(), Parents::Found(vec![bsn(v[1])]));
    assert_eq!(server.token_requests(), 2);
    assert_eq!(server.lookups(), 5);

    // A wrong secret is a permanent refusal from the token endpoint.
    let wrong = BrpClient::new(&oauth_config(dir.path(), &server, id, "guess")).unwrap();
    let err = wrong.parents(&bsn(v[0])).await.unwrap_err();
    assert!(matches!(err, BrpError::Refused { endpoint: Endpoint::Token, status: 401, .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(err.problem().and_then(|p| p.code()), Some("invalid_client"));

    // A token issued with no lifetime is never reused: each lookup fetches one, is refused
    // (the server's token has expired too), fetches one more, and then gives up.
    let (_, short) = BrpServer::new().oauth(id, secret, 0).person(v[0], &[v[1]]).start().await.unwrap();
    let client = BrpClient::new(&oauth_config(dir.path(), &short, id, secret)).unwrap();
    for round in 1..=2 {
        let err = client.parents(&bsn(v[0])).await.unwrap_err();
        assert!(matches!(err, BrpError::Refused { endpoint: Endpoint::Personen, status: 401, .. }), "{err:?}");
        assert_eq!(short.token_requests(), 2 * round);
    }
    assert_no_bsn_in_urls(&server);
}

/// A CA, the BRP's server certificate for 127.0.0.1, and a client certificate pair
/// written under `dir`.
struct Mtls {
    ca_file: PathBuf,
    server: TlsMaterial,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn mtls(dir: &Path, name: &str) -> Mtls {
    let ca = Ca::generate(&format!("{name} CA"), 30).unwrap();
    let server = ca.issue(&CertSpec::server(vec!["127.0.0.1".into()], 1)).unwrap();
    let client = ca.issue(&CertSpec::client(Identity::Organisation("virfed-node".into()), 1)).unwrap();
    let (client_cert, client_key) = write_cert_pair(dir, &format!("{name}-client"), &client, false).unwrap();
    let ca_file = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    Mtls { ca_file, server: TlsMaterial::from_issued(&ca.cert_pem(), &server), client_cert, client_key }
}

#[tokio::test]
async fn family_brp_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let owned = valid();
    let v: Vec<&str> = owned.iter().map(String::as_str).collect();
    let ours = mtls(dir.path(), "brp");
    let (_, server) = BrpServer::new()
        .api_key("X-API-KEY", API_KEY)
        .mtls(ours.server.clone())
        .person(v[0], &[v[1]])
        .start()
        .await
        .unwrap();
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let config = BrpConfig {
        ca: Some(ours.ca_file.clone()),
        client_cert: Some(ours.client_cert.clone()),
        client_key: Some(ours.client_key.clone()),
        ..api_key_config(dir.path(), &server.url(), API_KEY)
    };
    let client = BrpClient::new(&config).unwrap();
    assert_eq!(client.parents(&bsn(v[0])).await.unwrap(), Parents::Found(vec![bsn(v[1])]));

    // Without a client certificate the handshake is refused.
    let no_cert = BrpConfig { client_cert: None, client_key: None, ..config.clone() };
    let err = BrpClient::new(&no_cert).unwrap().parents(&bsn(v[0])).await.unwrap_err();
    assert!(matches!(err, BrpError::Connect { .. }), "{err:?}");

    // A client certificate from another CA is refused; a server from another CA is not trusted.
    let other = mtls(dir.path(), "other");
    let foreign_cert = BrpConfig {
        client_cert: Some(other.client_cert.clone()),
        client_key: Some(other.client_key.clone()),
        ..config.clone()
    };
    let err = BrpClient::new(&foreign_cert).unwrap().parents(&bsn(v[0])).await.unwrap_err();
    assert!(matches!(err, BrpError::Connect { .. }), "{err:?}");
    let foreign_ca = BrpConfig {
        ca: Some(other.ca_file.clone()),
        client_cert: Some(other.client_cert.clone()),
        client_key: Some(other.client_key.clone()),
        ..config.clone()
    };
    let err = BrpClient::new(&foreign_ca).unwrap().parents(&bsn(v[0])).await.unwrap_err();
    assert!(matches!(err, BrpError::Connect { .. }) && err.to_string().contains("certificate"), "{err}");
    assert_eq!(server.lookups(), 1, "only the authenticated client got through");

    // A client key of mode 0644 is refused at start.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ours.client_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = BrpClient::new(&config).unwrap_err();
    assert!(matches!(err, BrpError::Config(_)) && err.to_string().contains("chmod 600"), "{err}");
}

#[tokio::test]
async fn family_brp_request_shapes_are_checked_by_the_local_server() {
    // The kit's server holds a client to the API's rules, answered as problem+json.
    let owned = valid();
    let v: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (_, server) = BrpServer::new().person(v[0], &[v[1]]).start().await.unwrap();
    let url = format!("{}/personen", server.url());
    let post = |body: &'static str, content_type: &'static str| {
        let url = url.clone();
        async move { raw_post(&url, body, content_type).await }
    };
    let cases: &[(&str, u16, &str, &[&str])] = &[
        (r#"{"burgerservicenummer":["123456782"],"fields":["ouders"]}"#, 400, "paramsValidation", &["type"]),
        (
            r#"{"type":"RaadpleegMetBsn","burgerservicenummer":["123456782"],"fields":["ouders"]}"#,
            400,
            "paramsValidation",
            &["type"],
        ),
        (
            r#"{"type":"RaadpleegMetBurgerservicenummer","fields":["ouders"]}"#,
            400,
            "paramsCombination",
            &["burgerservicenummer"],
        ),
        (
            r#"{"type":"RaadpleegMetBurgerservicenummer","burgerservicenummer":"123456782","fields":["ouders"]}"#,
            400,
            "paramsValidation",
            &["burgerservicenummer"],
        ),
        (
            r#"{"type":"RaadpleegMetBurgerservicenummer","burgerservicenummer":[],"fields":["ouders"]}"#,
            400,
            "paramsValidation",
            &["burgerservicenummer"],
        ),
        (
            r#"{"type":"RaadpleegMetBurgerservicenummer","burgerservicenummer":["12345678","1234567890"],"fields":["ouders"]}"#,
            400,
            "paramsValidation",
            &["burgerservicenummer[0]", "burgerservicenummer[1]"],
        ),
        (
            r#"{"type":"RaadpleegMetBurgerservicenummer","burgerservicenummer":["123456782"],"fields":["ouders","ouders.nietBestaand"]}"#,
            400,
            "paramsValidation",
            &["fields[1]"],
        ),
        (
            r#"{"type":"RaadpleegMetBurgerservicenummer","burgerservicenummer":["123456782"]}"#,
            400,
            "paramsValidation",
            &["fields"],
        ),
    ];
    for (body, status, code, names) in cases {
        let (got, content_type, answer) = post(body, "application/json").await;
        assert_eq!(got, *status, "{body}: {answer}");
        assert_eq!(content_type, "application/problem+json", "{body}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["code"], *code, "{body}: {answer}");
        assert_eq!(answer["status"], *status);
        let params: Vec<&str> =
            answer["invalidParams"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(params, *names, "{body}: {answer}");
    }
    let (status, _, answer) =
        post(r#"{"type":"RaadpleegMetBurgerservicenummer","burgerservicenummer":["1"]}"#, "text/plain").await;
    assert_eq!(status, 415, "{answer}");
    let found = format!(
        r#"{{"type":"RaadpleegMetBurgerservicenummer","burgerservicenummer":["{}","111222333"],"fields":["ouders.burgerservicenummer"]}}"#,
        nine(v[0])
    );
    let (status, content_type, answer) = raw_post(&url, &found, "application/json; charset=utf-8").await;
    assert_eq!((status, content_type.as_str()), (200, "application/json; charset=utf-8"));
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"type": "RaadpleegMetBurgerservicenummer", "personen": [{"ouders": [{"burgerservicenummer": nine(v[1])}]}]})
    );
}

/// A bare HTTP/1.1 POST: status, content type and body.
async fn raw_post(url: &str, body: &str, content_type: &str) -> (u16, String, String) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let request = http::Request::post(url)
        .header("content-type", content_type)
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, String::from_utf8_lossy(&body).into_owned())
}

// ---- no BSN in logs or errors (invariant 1, parents included) -------------------------------

/// Every path of the client, for every vector BSN as a child and as a parent, with a
/// thread-local TRACE capture. It runs alone in a child process of this test binary (as
/// the client API's invariant-1 test does), so tracing's process-wide call-site cache,
/// filled by other tests' threads, cannot hide lines from the capture.
#[tokio::test(flavor = "current_thread")]
async fn family_brp_no_bsn_in_errors_or_logs() {
    if !common::in_own_process("family_brp_no_bsn_in_errors_or_logs", "VIRFED_BRP_CANARY_ALONE") {
        return;
    }
    let capture = common::capture_logs();

    let dir = tempfile::tempdir().unwrap();
    let valid = valid();
    let invalid = vectors("invalid");
    assert!(valid.len() >= 40 && invalid.len() >= 10);
    let n = valid.len();
    let mut server = BrpServer::new().api_key("X-API-KEY", API_KEY).oauth("virfed", "s3cret", 3600);
    for (i, child) in valid.iter().enumerate().filter(|(i, _)| i % 3 != 2) {
        // Parents: two other vectors, and now and then an invalid one.
        let (a, b) = (&valid[(i + 1) % n], &valid[(i + 7) % n]);
        let parents: Vec<&str> = if i % 4 == 0 {
            vec![a.as_str(), invalid[i % invalid.len()].as_str()]
        } else {
            vec![a.as_str(), b.as_str()]
        };
        server = server.person(child, &parents);
    }
    let (_, server) = server.start().await.unwrap();
    let client = BrpClient::new(&api_key_config(dir.path(), &server.url(), API_KEY)).unwrap();
    let wrong_key = BrpClient::new(&api_key_config(dir.path(), &server.url(), "wrong")).unwrap();
    let oauth = BrpClient::new(&oauth_config(dir.path(), &server, "virfed", "s3cret")).unwrap();
    let wrong_secret = BrpClient::new(&oauth_config(dir.path(), &server, "virfed", "guess")).unwrap();
    let mut hasty = api_key_config(dir.path(), &server.url(), API_KEY);
    hasty.timeout_ms = 50;
    let hasty = BrpClient::new(&hasty).unwrap();

    let mut shown: Vec<String> = Vec::new();
    let mut show = |result: Result<Parents, BrpError>| match result {
        Ok(parents) => shown.push(format!("{parents:?}")),
        Err(e) => shown.push(format!("{e} | {e:?} | {:?}", e.problem())),
    };
    let (mut found, mut errors) = (0, 0);
    for (i, child) in valid.iter().enumerate() {
        let child = bsn(child);
        for result in [client.parents(&child).await, oauth.parents(&child).await] {
            found += usize::from(matches!(result, Ok(Parents::Found(_))));
            show(result);
        }
        for fault in [
            BrpFault::EchoBsnInProblem,
            BrpFault::WrongShape,
            BrpFault::TruncatedJson,
            BrpFault::WrongType,
            BrpFault::Unavailable,
            BrpFault::RateLimited,
        ] {
            server.set_fault(fault);
            let result = client.parents(&child).await;
            errors += usize::from(result.is_err());
            show(result);
        }
        if i % 8 == 0 {
            server.set_fault(BrpFault::Delay(Duration::from_millis(300)));
            show(hasty.parents(&child).await);
        }
        server.set_fault(BrpFault::None);
        show(wrong_key.parents(&child).await);
        show(wrong_secret.parents(&child).await);
    }
    assert!(found > 40, "too few lookups answered: {found}");
    assert_eq!(errors, valid.len() * 6);
    assert!(client.skipped_invalid_parents() > 0);

    let logs = String::from_utf8(capture.bytes()).unwrap();
    assert!(logs.contains("BRP lookup: person found"), "the capture saw no client line:\n{logs}");
    assert!(logs.contains("not valid (D9)"), "the capture saw no skipped-parent line");
    assert!(shown.iter().any(|s| s.contains("<redacted>")), "the careless problems were not redacted");
    for canary in valid.iter().map(|b| nine(b)).chain(invalid.iter().cloned()) {
        let raw = canary.trim_start_matches('0');
        let dotted = format!("{}.{}.{}", &canary[..4], &canary[4..6], &canary[6..]);
        for needle in [canary.as_str(), raw, dotted.as_str()] {
            assert!(!logs.contains(needle), "a BSN in the logs:\n{logs}");
            for text in &shown {
                assert!(!text.contains(needle), "a BSN in an error or answer: {text}");
            }
        }
    }
    assert_no_bsn_in_urls(&server);
}
