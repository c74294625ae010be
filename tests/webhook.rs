//! Webhook delivery of notices (issue 2, item 6; issue 9, item 5): every notice for a
//! configured organisation is POSTed as JSON over HTTPS (trusting only the receiver's CA),
//! signed with an HMAC over a timestamp and the body so a replay is refused, retried until
//! the receiver answers 2xx, delivered once per cursor, and never carries a BSN.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use virfed::domain::SystemClock;
use virfed::kit::fixture::{RegionFiles, RunningRegion};
use virfed::notify::{verify_signature, SignatureError, DEFAULT_TOLERANCE_SECS};
use virfed::pki::{write_cert_pair, Ca, CertSpec};

use common::req;

const SECRET: &[u8] = b"s3cret-shared-with-the-app";

/// One received POST: its signature header and body.
#[derive(Clone, Debug)]
struct Received {
    signature: String,
    body: Vec<u8>,
}

/// What a receiver saw: accepted POSTs and the number of HTTP requests (refused or not).
#[derive(Clone, Default)]
struct Seen {
    got: Arc<Mutex<Vec<Received>>>,
    attempts: Arc<Mutex<usize>>,
}

impl Seen {
    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
    fn attempts(&self) -> usize {
        *self.attempts.lock().unwrap()
    }
    /// Waits (up to 5 s) until `n` POSTs were accepted.
    async fn wait_for(&self, n: usize) {
        for _ in 0..100 {
            if self.got.lock().unwrap().len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The receiver's certificate (IP SAN 127.0.0.1) from a fresh CA, written as a pair with
/// `write_cert_pair`; returns the TLS acceptor and the CA certificate file for `ca`.
fn receiver_tls(dir: &Path, ca_name: &str) -> (TlsAcceptor, PathBuf) {
    let ca = Ca::generate(ca_name, 365).unwrap();
    let issued = ca.issue(&CertSpec::server(vec!["127.0.0.1".into()], 30)).unwrap();
    let (cert, key) = write_cert_pair(dir, ca_name, &issued, false).unwrap();
    let ca_path = dir.join(format!("{ca_name}-ca.pem"));
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let chain = CertificateDer::pem_file_iter(&cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    (TlsAcceptor::from(Arc::new(config)), ca_path)
}

/// A tiny HTTP/1.1 receiver on loopback, over TLS when `tls` is given, that refuses the
/// first `refuse` requests with 500. Returns its URL and what it sees.
async fn receiver(tls: Option<TlsAcceptor>, refuse: usize) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}/vir/notices", listener.local_addr().unwrap());
    let seen = Seen::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let (seen, tls) = (seen2.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(socket).await {
                            serve(stream, seen, refuse).await
                        }
                    }
                    None => serve(socket, seen, refuse).await,
                }
            });
        }
    });
    (url, seen)
}

/// Serves HTTP/1.1 requests on one connection until it closes.
async fn serve(socket: impl AsyncRead + AsyncWrite + Send + 'static, seen: Seen, refuse: usize) {
    let (read, mut write) = tokio::io::split(socket);
    let mut reader = BufReader::new(read);
    loop {
        let mut length = 0usize;
        let mut signature = String::new();
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (name, value) = l.split_once(':').unwrap_or((l, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "x-virfed-signature" => signature = value.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let n = {
            let mut a = seen.attempts.lock().unwrap();
            *a += 1;
            *a
        };
        let status = if n <= refuse {
            "500 Internal Server Error"
        } else {
            seen.got.lock().unwrap().push(Received { signature, body });
            "200 OK"
        };
        let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A region in `dir` with a webhook for organisation `school` at `url` (`ca` if given);
/// both organisations are added.
async fn region_with_webhook(dir: &Path, url: &str, ca: Option<&Path>) -> RunningRegion {
    let mut files =
        RegionFiles::create(&dir.join("r"), "rotterdam", std::net::SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let secret_path = dir.join("webhook.secret");
    virfed::pseudonym::write_new_secret(&secret_path, b"s3cret-shared-with-the-app\n").unwrap();
    let mut text = std::fs::read_to_string(&files.config_path).unwrap();
    text.push_str(&format!("\n[[webhooks]]\norg = \"school\"\nurl = {url:?}\nsecret_file = {secret_path:?}\n"));
    if let Some(ca) = ca {
        text.push_str(&format!("ca = {ca:?}\n"));
    }
    std::fs::write(&files.config_path, &text).unwrap();
    files.config = virfed::config::Config::parse(&text).unwrap();
    let region = RunningRegion::start_with(files, Arc::new(SystemClock)).await.unwrap();
    region.add_org("jeugdzorg", "Jeugdzorg", "youth-care", None).await.unwrap();
    region.add_org("school", "School", "education", None).await.unwrap();
    region
}

/// Registers the same child at both organisations: one match notice for `school`.
async fn make_a_match(region: &RunningRegion, bsn: &str) {
    region.org_client("jeugdzorg").await.unwrap().register_signal(req(bsn, "J One")).await.unwrap();
    region.org_client("school").await.unwrap().register_signal(req(bsn, "S Two")).await.unwrap();
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The `t=` of a signature header.
fn timestamp_of(header: &str) -> i64 {
    header.split(',').find_map(|p| p.strip_prefix("t=")).expect("t=").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_notices_are_posted_to_the_webhook_signed_retried_and_without_bsn() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = receiver_tls(dir.path(), "receiver");
    let (url, seen) = receiver(Some(tls), 1).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let region = region_with_webhook(dir.path(), &url, Some(&ca)).await;
    let bsn = "111222333";
    make_a_match(&region, bsn).await;

    // The first POST is refused; the retry (after ~1 s backoff) is accepted.
    seen.wait_for(1).await;
    let received = seen.received();
    assert_eq!(received.len(), 1, "exactly one notice for school: {received:?}");
    assert_eq!(seen.attempts(), 2, "one refusal, one retry");
    let body = &received[0].body;
    let header = &received[0].signature;
    assert_eq!(verify_signature(SECRET, header, body, now_unix(), DEFAULT_TOLERANCE_SECS), Ok(()), "{header}");
    assert_eq!(*header, virfed::notify::signature(SECRET, timestamp_of(header), body));
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(json["notice"]["kind"], "MatchCreated");
    assert_eq!(json["notice"]["recipient"], "school");
    assert_eq!(json["notice"]["counterparts"][0]["professional"]["name"], "J One");
    let text = String::from_utf8_lossy(body);
    assert!(!text.contains(bsn), "the BSN must never reach a webhook: {text}");

    // Delivered once: the cursor is stored, a restart does not post it again.
    let cursor = json["cursor"].as_u64().unwrap();
    assert_eq!(region.handle.store().webhook_cursor(&virfed::domain::OrgId::parse("school").unwrap()).unwrap(), cursor);
    let files = region.stop().await.unwrap();
    let region = RunningRegion::start_with(files, Arc::new(SystemClock)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen.received().len(), 1, "no second delivery after a restart");
    region.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_signature_binds_the_timestamp_and_a_replay_after_ten_minutes_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = receiver_tls(dir.path(), "receiver");
    let (url, seen) = receiver(Some(tls), 0).await;
    let before = now_unix();
    let region = region_with_webhook(dir.path(), &url, Some(&ca)).await;
    make_a_match(&region, "111222333").await;
    seen.wait_for(1).await;
    let Received { signature: header, body } = seen.received().pop().expect("a delivery");
    let (t, now) = (timestamp_of(&header), now_unix());
    assert!((before..=now).contains(&t), "signed at the attempt's time: {before} <= {t} <= {now}");

    // Fresh: accepted.
    assert_eq!(verify_signature(SECRET, &header, &body, now, DEFAULT_TOLERANCE_SECS), Ok(()));
    // The same header and body replayed ten minutes later: stale.
    let replay = verify_signature(SECRET, &header, &body, now + 600, DEFAULT_TOLERANCE_SECS);
    assert!(matches!(replay, Err(SignatureError::Stale { age_secs, .. }) if age_secs >= 600), "{replay:?}");
    // A changed body, or a timestamp moved forward to look fresh: the MAC no longer matches.
    let mut changed = body.clone();
    changed.extend_from_slice(b" ");
    assert_eq!(verify_signature(SECRET, &header, &changed, now, 300), Err(SignatureError::Mismatch));
    let refreshed = header.replace(&format!("t={t},"), &format!("t={},", t + 600));
    assert_ne!(refreshed, header);
    assert_eq!(verify_signature(SECRET, &refreshed, &body, now + 600, 300), Err(SignatureError::Mismatch));
    // The old `sha256=` format is not a valid signature any more.
    let old = verify_signature(SECRET, "sha256=00", &body, now, 300);
    assert!(matches!(old, Err(SignatureError::Malformed(_))), "{old:?}");
    region.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_whose_certificate_is_not_from_the_configured_ca_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _) = receiver_tls(dir.path(), "impostor");
    let (_, ca) = receiver_tls(dir.path(), "receiver");
    let (url, seen) = receiver(Some(tls), 0).await;
    let region = region_with_webhook(dir.path(), &url, Some(&ca)).await;
    make_a_match(&region, "111222333").await;
    // The handshake fails, so no request is ever sent (the task keeps retrying).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(seen.attempts(), 0, "no HTTP request may reach a receiver the CA does not vouch for");
    let school = virfed::domain::OrgId::parse("school").unwrap();
    assert_eq!(region.handle.store().webhook_cursor(&school).unwrap(), 0, "nothing counted as delivered");
    region.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_loopback_proxy_still_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let (url, seen) = receiver(None, 0).await;
    let region = region_with_webhook(dir.path(), &url, None).await;
    make_a_match(&region, "111222333").await;
    seen.wait_for(1).await;
    let received = seen.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let (header, body) = (&received[0].signature, &received[0].body);
    assert_eq!(verify_signature(SECRET, header, body, now_unix(), DEFAULT_TOLERANCE_SECS), Ok(()));
    region.stop().await.unwrap();
}

#[test]
fn a_plain_http_webhook_is_refused_at_config_load() {
    let dir = tempfile::tempdir().unwrap();
    let files =
        RegionFiles::create(&dir.path().join("r"), "rotterdam", std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .unwrap();
    let base = std::fs::read_to_string(&files.config_path).unwrap();
    let with = |url: &str, ca: Option<&str>| {
        let ca = ca.map(|c| format!("ca = {c:?}\n")).unwrap_or_default();
        virfed::config::Config::parse(&format!(
            "{base}\n[[webhooks]]\norg = \"school\"\nurl = {url:?}\nsecret_file = \"s\"\n{ca}"
        ))
    };
    for url in ["http://vir.school.example/notices", "http://10.0.0.8:8080/n", "http://127.0.0.1.example/n"] {
        let err = with(url, None).unwrap_err();
        assert!(err.contains("plain http:// is refused except to a loopback address"), "{url}: {err}");
        assert!(err.contains("use https://"), "the error says what to do: {err}");
    }
    let err = with("https://vir.school.example/notices", None).unwrap_err();
    assert!(err.contains("needs `ca`"), "{err}");
    let err = with("ftp://vir.school.example/notices", None).unwrap_err();
    assert!(err.contains("use an https:// URL"), "{err}");
    let err = with("http://127.0.0.1:8080/n", Some("ca.pem")).unwrap_err();
    assert!(err.contains("webhooks.ca is for https://"), "{err}");
    with("https://vir.school.example/notices", Some("ca.pem")).unwrap();
    for loopback in ["http://127.0.0.1:8080/n", "http://127.1.2.3/n", "http://[::1]:8080/n", "http://localhost:8080/n"]
    {
        with(loopback, None).unwrap_or_else(|e| panic!("{loopback}: {e}"));
    }
}
