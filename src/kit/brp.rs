//! A local BRP of our own, for tests and the demo: it answers `POST
//! /haalcentraal/api/brp/personen` in the shapes of the Haal Centraal *BRP Personen
//! bevragen* v2 OpenAPI specification (2.5.0) and its `fout-cases` features, for the one
//! query virfed asks (`RaadpleegMetBurgerservicenummer`), and serves an OAuth 2.0
//! client-credentials token endpoint at `/oauth2/token` (RFC 6749 §4.4).
//!
//! What it checks, as the real API does: the API key header or bearer token (`401`
//! problem otherwise); `Content-Type` JSON (`415`) and an `Accept` that allows JSON
//! (`406`); `type` present and known (`400`, `invalidParams` `value`/`required`),
//! `burgerservicenummer` present (`400` `paramsCombination`), an array of 1–20 strings of
//! 9 digits (`array`, `minItems`, `maxItems`, `pattern` on `burgerservicenummer[i]`), and
//! `fields` a non-empty array of known paths (`fields[i]`: "niet bestaande veldnaam"). It
//! knows the fields `burgerservicenummer`, `ouders`, `ouders.burgerservicenummer` and
//! `ouders.ouderAanduiding`, and answers only those that were asked. An unknown BSN is
//! `200` with `personen: []`; a person without parents has no `ouders`.
//!
//! Switches ([`BrpFault`]) make it answer `503` or `429`, answer late (beyond a client's
//! timeout), send a malformed `200`, or send a careless problem that quotes the BSN it was
//! asked about (to test the client's redaction). Parents are stored as given, so a test
//! can make the BRP list an invalid parent BSN. Plain http on 127.0.0.1, or https that
//! requires a client certificate from the given CA ([`BrpServer::mtls`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::brp::QUERY_TYPE;
use crate::pki::TlsMaterial;

use super::KitResult;

/// The path of the API's base URL on this server.
pub const BASE_PATH: &str = "/haalcentraal/api/brp";
/// The path of the token endpoint.
pub const TOKEN_PATH: &str = "/oauth2/token";
/// The fields this server knows.
pub const KNOWN_FIELDS: &[&str] =
    &["burgerservicenummer", "ouders", "ouders.burgerservicenummer", "ouders.ouderAanduiding"];

const BAD_REQUEST_TYPE: &str = "https://datatracker.ietf.org/doc/html/rfc7231#section-6.5.1";
const PARAMS_TITLE: &str = "Een of meerdere parameters zijn niet correct.";

/// How the server misbehaves on `/personen` (after checking the credentials).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BrpFault {
    /// Answers as the API specifies.
    #[default]
    None,
    /// `503` problem, "Bronservice BRP is tijdelijk niet beschikbaar." (`Retry-After: 1`).
    Unavailable,
    /// `429` problem, "Too many request".
    RateLimited,
    /// Waits this long before answering normally.
    Delay(Duration),
    /// `200` with a body cut off in the middle of the JSON.
    TruncatedJson,
    /// `200` with the child's BSN as a JSON number where a parent's BSN string belongs (a
    /// JSON parser's complaint quotes it).
    WrongShape,
    /// `200` with another query's `type`.
    WrongType,
    /// `400` problem whose `detail`, `instance` and `invalidParams` quote the BSN asked
    /// about (a careless gateway).
    EchoBsnInProblem,
}

/// An OAuth client the token endpoint accepts.
#[derive(Clone, Debug)]
struct OauthClient {
    id: String,
    secret: String,
    expires_in: u64,
}

/// The server's set-up; [`BrpServer::start`] runs it.
#[derive(Clone, Debug, Default)]
pub struct BrpServer {
    people: HashMap<String, Vec<String>>,
    api_key: Option<(String, String)>,
    oauth: Option<OauthClient>,
    mtls: Option<TlsMaterial>,
}

/// A child BSN as the client sends it: 9 digits (an 8-digit one gets its leading zero).
fn key(bsn: &str) -> String {
    if bsn.len() == 8 {
        format!("0{bsn}")
    } else {
        bsn.to_owned()
    }
}

impl BrpServer {
    /// A server that knows nobody and asks for no credentials.
    pub fn new() -> BrpServer {
        BrpServer::default()
    }

    /// Records `child` with `parents`, stored as given (so they may be invalid BSNs).
    pub fn person(mut self, child: &str, parents: &[&str]) -> BrpServer {
        self.people.insert(key(child), parents.iter().map(|p| p.to_string()).collect());
        self
    }

    /// Requires header `header` to carry `value` on `/personen`.
    pub fn api_key(mut self, header: &str, value: &str) -> BrpServer {
        self.api_key = Some((header.to_owned(), value.to_owned()));
        self
    }

    /// Serves tokens to `client_id`/`client_secret` (HTTP Basic or form body), valid for
    /// `expires_in` seconds, and accepts them as `Authorization: Bearer` on `/personen`.
    pub fn oauth(mut self, client_id: &str, client_secret: &str, expires_in: u64) -> BrpServer {
        self.oauth = Some(OauthClient { id: client_id.into(), secret: client_secret.into(), expires_in });
        self
    }

    /// Serves https with `material`'s certificate and requires a client certificate
    /// chaining to `material`'s CA (the crate's server policy, with ALPN `http/1.1`).
    pub fn mtls(mut self, material: TlsMaterial) -> BrpServer {
        self.mtls = Some(material);
        self
    }

    /// Binds 127.0.0.1:0 and serves until the handle is stopped or dropped.
    pub async fn start(self) -> KitResult<(SocketAddr, BrpServerHandle)> {
        let api_key = match self.api_key {
            Some((header, value)) => match HeaderName::from_bytes(header.as_bytes()) {
                Ok(header) => Some((header, value)),
                Err(_) => super::fail!("BrpServer::api_key: {header:?} is not an HTTP header name"),
            },
            None => None,
        };
        let tcp = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = tcp.local_addr()?;
        let shared = Arc::new(Shared {
            people: Mutex::new(self.people),
            api_key,
            oauth: self.oauth,
            fault: Mutex::new(BrpFault::None),
            tokens: Mutex::new(HashMap::new()),
            lookups: AtomicUsize::new(0),
            token_requests: AtomicUsize::new(0),
            targets: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route(&format!("{BASE_PATH}/personen"), post(personen))
            .route(TOKEN_PATH, post(token))
            .with_state(shared.clone());
        let scheme = if self.mtls.is_some() { "https" } else { "http" };
        let task = match self.mtls {
            None => tokio::spawn(async move {
                let _ = axum::serve(tcp, app).await;
            }),
            Some(material) => {
                let mut config = (*crate::pki::server_config(&material)?).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let listener = TlsListener { tcp, acceptor: TlsAcceptor::from(Arc::new(config)) };
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                })
            }
        };
        Ok((addr, BrpServerHandle { shared, addr, scheme, task }))
    }
}

/// A running [`BrpServer`]: its switches, what it saw, its URLs. Dropping it stops the
/// server.
pub struct BrpServerHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    scheme: &'static str,
    task: JoinHandle<()>,
}

impl BrpServerHandle {
    /// The API's base URL, for `brp.url`.
    pub fn url(&self) -> String {
        format!("{}://{}{BASE_PATH}", self.scheme, self.addr)
    }

    /// The token endpoint, for `brp.auth.oauth.token_url`.
    pub fn token_url(&self) -> String {
        format!("{}://{}{TOKEN_PATH}", self.scheme, self.addr)
    }

    /// Sets how `/personen` misbehaves from the next request on.
    pub fn set_fault(&self, fault: BrpFault) {
        *lock(&self.shared.fault) = fault;
    }

    /// Records (or replaces) `child` with `parents`, while running.
    pub fn insert_person(&self, child: &str, parents: &[&str]) {
        lock(&self.shared.people).insert(key(child), parents.iter().map(|p| p.to_string()).collect());
    }

    /// Invalidates every token issued so far (as a revocation would).
    pub fn revoke_tokens(&self) {
        lock(&self.shared.tokens).clear();
    }

    /// Requests to `/personen` so far (answered or refused).
    pub fn lookups(&self) -> usize {
        self.shared.lookups.load(Ordering::SeqCst)
    }

    /// Requests to the token endpoint so far.
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// The request targets (path and query) of every request so far, to check that no
    /// BSN travels in a URL.
    pub fn targets(&self) -> Vec<String> {
        lock(&self.shared.targets).clone()
    }

    /// Stops the server.
    pub fn stop(self) {}
}

impl Drop for BrpServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    people: Mutex<HashMap<String, Vec<String>>>,
    api_key: Option<(HeaderName, String)>,
    oauth: Option<OauthClient>,
    fault: Mutex<BrpFault>,
    /// Issued bearer tokens and when they expire.
    tokens: Mutex<HashMap<String, Instant>>,
    lookups: AtomicUsize,
    token_requests: AtomicUsize,
    targets: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An https listener for `axum::serve`: TCP accept, then the TLS handshake (a connection
/// whose handshake fails, e.g. without a client certificate, is dropped).
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// One `invalidParams` entry: code, name, reason.
type Invalid = (&'static str, String, &'static str);

/// A problem+json answer in the API's `Foutbericht` shape.
fn problem(status: StatusCode, type_: &str, title: &str, code: &str, detail: &str, invalid: &[Invalid]) -> Response {
    let mut body = json!({
        "type": type_,
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "instance": format!("{BASE_PATH}/personen"),
        "code": code,
    });
    if !invalid.is_empty() {
        body["invalidParams"] = invalid
            .iter()
            .map(|(code, name, reason)| json!({ "type": BAD_REQUEST_TYPE, "code": code, "name": name, "reason": reason }))
            .collect();
    }
    respond(status, "application/problem+json", body.to_string())
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type.parse().expect("a content type"));
    response
}

/// `400` `paramsValidation` naming every parameter at fault.
fn params_problem(invalid: &[Invalid]) -> Response {
    let names: Vec<&str> = invalid.iter().map(|(_, name, _)| name.as_str()).collect();
    let detail = format!("De foutieve parameter(s) zijn: {}.", names.join(", "));
    problem(StatusCode::BAD_REQUEST, BAD_REQUEST_TYPE, PARAMS_TITLE, "paramsValidation", &detail, invalid)
}

fn unauthorized(bearer: bool) -> Response {
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        "https://datatracker.ietf.org/doc/html/rfc7235#section-3.1",
        "Niet correct geauthenticeerd.",
        "authentication",
        "The request requires user authentication.",
        &[],
    );
    if bearer {
        response.headers_mut().insert(WWW_AUTHENTICATE, "Bearer".parse().expect("a header value"));
    }
    response
}

impl Shared {
    /// Whether the request carries a configured credential (or none is configured).
    fn authorised(&self, headers: &HeaderMap) -> bool {
        if self.api_key.is_none() && self.oauth.is_none() {
            return true;
        }
        if let Some((header, value)) = &self.api_key {
            if headers.get(header).is_some_and(|v| v.as_bytes() == value.as_bytes()) {
                return true;
            }
        }
        if self.oauth.is_some() {
            let bearer =
                headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
            if let Some(token) = bearer {
                if lock(&self.tokens).get(token).is_some_and(|until| Instant::now() < *until) {
                    return true;
                }
            }
        }
        false
    }
}

async fn personen(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    shared.lookups.fetch_add(1, Ordering::SeqCst);
    lock(&shared.targets).push(uri.to_string());
    if !shared.authorised(&headers) {
        return unauthorized(shared.oauth.is_some());
    }
    let fault = lock(&shared.fault).clone();
    match &fault {
        BrpFault::Unavailable => {
            let mut response = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "https://datatracker.ietf.org/doc/html/rfc7231#section-6.6.4",
                "Bronservice BRP is tijdelijk niet beschikbaar.",
                "notAvailable",
                "The service is currently unable to handle the request due to a temporary overloading or maintenance of the server.",
                &[],
            );
            response.headers_mut().insert(RETRY_AFTER, "1".parse().expect("a header value"));
            return response;
        }
        BrpFault::RateLimited => {
            return problem(
                StatusCode::TOO_MANY_REQUESTS,
                "https://datatracker.ietf.org/doc/html/rfc6585#section-4",
                "Too many request",
                "tooManyRequests",
                "The user has sent too many requests in a given amount of time (rate limiting).",
                &[],
            )
        }
        BrpFault::Delay(delay) => tokio::time::sleep(*delay).await,
        _ => {}
    }
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.trim_start().to_ascii_lowercase().starts_with("application/json") {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "https://datatracker.ietf.org/doc/html/rfc7231#section-6.5.13",
            "Unsupported Media Type",
            "unsupported",
            "The server is refusing the request because the entity of the request is in a format not supported.",
            &[],
        );
    }
    if let Some(accept) = headers.get(ACCEPT).and_then(|v| v.to_str().ok()) {
        let accept = accept.to_ascii_lowercase();
        if !["application/json", "application/*", "*/*"].iter().any(|m| accept.contains(m)) {
            return problem(
                StatusCode::NOT_ACCEPTABLE,
                "https://datatracker.ietf.org/doc/html/rfc7231#section-6.5.6",
                "Gevraagde contenttype wordt niet ondersteund.",
                "notAcceptable",
                "The resource is only capable of generating application/json.",
                &[],
            );
        }
    }
    let query = match validate(&body) {
        Ok(query) => query,
        Err(response) => return response,
    };
    if fault == BrpFault::EchoBsnInProblem {
        let bsn = &query.bsns[0];
        let dotted = format!("{}.{}.{}", &bsn[..4], &bsn[4..6], &bsn[6..]);
        // Quoted plain and dotted, in every text field and in `instance`.
        let body = json!({
            "type": BAD_REQUEST_TYPE,
            "title": format!("{PARAMS_TITLE} {dotted}"),
            "status": 400,
            "detail": format!("De foutieve parameter(s) zijn: burgerservicenummer[0] ({bsn})."),
            "instance": format!("{BASE_PATH}/personen?burgerservicenummer={bsn}"),
            "code": "paramsValidation",
            "invalidParams": [{
                "type": BAD_REQUEST_TYPE,
                "code": "pattern",
                "name": format!("burgerservicenummer[0]={bsn}"),
                "reason": format!("Waarde {dotted} is ongeldig"),
            }],
        });
        let response = respond(StatusCode::BAD_REQUEST, "application/problem+json", body.to_string());
        return response;
    }
    let people = lock(&shared.people).clone();
    let found: Vec<Value> = query
        .bsns
        .iter()
        .filter_map(|bsn| people.get(bsn).map(|parents| persoon(bsn, parents, &query.fields)))
        .collect();
    let body = match fault {
        BrpFault::TruncatedJson => {
            format!(r#"{{"type":"{QUERY_TYPE}","personen":[{{"ouders":[{{"burgerservicenummer":"#)
        }
        BrpFault::WrongShape => {
            let number: u64 = query.bsns[0].parse().unwrap_or(0);
            format!(r#"{{"type":"{QUERY_TYPE}","personen":[{{"ouders":[{{"burgerservicenummer":{number}}}]}}]}}"#)
        }
        BrpFault::WrongType => json!({ "type": "ZoekMetPostcodeEnHuisnummer", "personen": found }).to_string(),
        _ => json!({ "type": QUERY_TYPE, "personen": found }).to_string(),
    };
    respond(StatusCode::OK, "application/json; charset=utf-8", body)
}

/// One person of an answer, with the asked fields only.
fn persoon(bsn: &str, parents: &[String], fields: &[String]) -> Value {
    let asked = |f: &str| fields.iter().any(|x| x == f);
    let mut persoon = json!({});
    if asked("burgerservicenummer") {
        persoon["burgerservicenummer"] = json!(bsn);
    }
    let (all, bsn_field, aanduiding) =
        (asked("ouders"), asked("ouders.burgerservicenummer"), asked("ouders.ouderAanduiding"));
    if !parents.is_empty() && (all || bsn_field || aanduiding) {
        persoon["ouders"] = parents
            .iter()
            .enumerate()
            .map(|(i, parent)| {
                let mut ouder = json!({});
                if all || bsn_field {
                    ouder["burgerservicenummer"] = json!(parent);
                }
                if all || aanduiding {
                    ouder["ouderAanduiding"] = json!((i + 1).to_string());
                }
                ouder
            })
            .collect();
    }
    persoon
}

/// A valid `RaadpleegMetBurgerservicenummer` query.
struct Query {
    bsns: Vec<String>,
    fields: Vec<String>,
}

/// The checks of the API's `fout-cases` for this query: the first failing group answers.
// The error is the answer itself, built once per refused request: boxing buys nothing.
#[allow(clippy::result_large_err)]
fn validate(body: &[u8]) -> Result<Query, Response> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            BAD_REQUEST_TYPE,
            PARAMS_TITLE,
            "paramsValidation",
            "De request body is geen geldig JSON object.",
            &[],
        ));
    };
    match body.get("type") {
        None => return Err(params_problem(&[("required", "type".into(), "Parameter is verplicht.")])),
        Some(Value::String(t)) if t == QUERY_TYPE => {}
        Some(_) => return Err(params_problem(&[("value", "type".into(), "Waarde is geen geldig zoek type.")])),
    }
    let Some(bsns) = body.get("burgerservicenummer") else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            BAD_REQUEST_TYPE,
            "Minimale combinatie van parameters moet worden opgegeven.",
            "paramsCombination",
            "De foutieve parameter(s) zijn: burgerservicenummer.",
            &[("required", "burgerservicenummer".into(), "Parameter is verplicht.")],
        ));
    };
    let mut invalid: Vec<Invalid> = Vec::new();
    let mut valid_bsns = Vec::new();
    match bsns {
        Value::Array(items) if items.is_empty() => {
            invalid.push(("minItems", "burgerservicenummer".into(), "Array bevat minder dan 1 items."))
        }
        Value::Array(items) if items.len() > 20 => {
            invalid.push(("maxItems", "burgerservicenummer".into(), "Array bevat meer dan 20 items."))
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) if s.len() == 9 && s.bytes().all(|b| b.is_ascii_digit()) => {
                        valid_bsns.push(s.clone())
                    }
                    _ => invalid.push((
                        "pattern",
                        format!("burgerservicenummer[{i}]"),
                        "Waarde voldoet niet aan patroon ^[0-9]{9}$.",
                    )),
                }
            }
        }
        _ => invalid.push(("array", "burgerservicenummer".into(), "Parameter is geen array.")),
    }
    let mut fields = Vec::new();
    match body.get("fields") {
        None => invalid.push(("minItems", "fields".into(), "Array bevat minder dan 1 items.")),
        Some(Value::Array(items)) if items.is_empty() => {
            invalid.push(("minItems", "fields".into(), "Array bevat minder dan 1 items."))
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(f) if KNOWN_FIELDS.contains(&f) => fields.push(f.to_owned()),
                    _ => {
                        invalid.push(("fields", format!("fields[{i}]"), "Parameter bevat een niet bestaande veldnaam."))
                    }
                }
            }
        }
        Some(_) => invalid.push(("array", "fields".into(), "Parameter is geen array.")),
    }
    if !invalid.is_empty() {
        return Err(params_problem(&invalid));
    }
    Ok(Query { bsns: valid_bsns, fields })
}

/// `application/x-www-form-urlencoded` decoding of one name or value.
fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response =
        respond(status, "application/json", json!({ "error": error, "error_description": description }).to_string());
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(WWW_AUTHENTICATE, "Basic".parse().expect("a header value"));
    }
    response
}

async fn token(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    lock(&shared.targets).push(uri.to_string());
    let Some(client) = &shared.oauth else {
        return oauth_error(StatusCode::BAD_REQUEST, "unauthorized_client", "no OAuth client is configured");
    };
    let form: HashMap<String, String> = String::from_utf8_lossy(&body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect();
    // Client authentication: HTTP Basic (RFC 6749 §2.3.1), or the form body.
    let basic = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|pair| pair.split_once(':').map(|(id, secret)| (form_decode(id), form_decode(secret))));
    let credentials = basic.or_else(|| Some((form.get("client_id")?.clone(), form.get("client_secret")?.clone())));
    if credentials.as_ref().is_none_or(|(id, secret)| *id != client.id || *secret != client.secret) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed.");
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "Only client_credentials is supported.");
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    lock(&shared.tokens).insert(token.clone(), Instant::now() + Duration::from_secs(client.expires_in));
    let mut response = respond(
        StatusCode::OK,
        "application/json",
        json!({ "access_token": token, "token_type": "Bearer", "expires_in": client.expires_in }).to_string(),
    );
    response.headers_mut().insert(CACHE_CONTROL, "no-store".parse().expect("a header value"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%3Ac%2Fd%2B%C3%A9"), "a b:c/d+é");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz"), "%zz");
    }

    #[test]
    fn only_the_asked_fields_are_answered() {
        let parents = vec!["111222333".to_string(), "123456782".to_string()];
        let only_bsn = persoon("047812618", &parents, &["ouders.burgerservicenummer".into()]);
        assert_eq!(
            only_bsn,
            json!({ "ouders": [{ "burgerservicenummer": "111222333" }, { "burgerservicenummer": "123456782" }] })
        );
        let all = persoon("047812618", &parents, &["ouders".into(), "burgerservicenummer".into()]);
        assert_eq!(all["burgerservicenummer"], "047812618");
        assert_eq!(all["ouders"][1]["ouderAanduiding"], "2");
        assert_eq!(persoon("047812618", &[], &["ouders".into()]), json!({}));
    }
}
