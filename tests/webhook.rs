//! Webhook delivery of notices (issue 2, item 6): every notice for a configured
//! organisation is POSTed as JSON with an HMAC signature, retried until the receiver
//! answers 2xx, delivered once per cursor, and never carries a BSN.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use virfed::domain::SystemClock;
use virfed::kit::fixture::{RegionFiles, RunningRegion};

use common::req;

/// One received POST: its signature header and body.
#[derive(Clone, Debug)]
struct Received {
    signature: String,
    body: Vec<u8>,
}

/// A tiny HTTP/1.1 receiver that refuses the first `refuse` requests with 500.
async fn receiver(refuse: usize) -> (String, Arc<Mutex<Vec<Received>>>, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/vir/notices", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(Mutex::new(0usize));
    let (got2, attempts2) = (got.clone(), attempts.clone());
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let (got, attempts) = (got2.clone(), attempts2.clone());
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
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
                        let mut a = attempts.lock().unwrap();
                        *a += 1;
                        *a
                    };
                    let status = if n <= refuse {
                        "500 Internal Server Error"
                    } else {
                        got.lock().unwrap().push(Received { signature, body });
                        "200 OK"
                    };
                    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, got, attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_notices_are_posted_to_the_webhook_signed_retried_and_without_bsn() {
    let (url, got, attempts) = receiver(1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut files =
        RegionFiles::create(&dir.path().join("r"), "rotterdam", std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .unwrap();
    let secret_path = dir.path().join("webhook.secret");
    virfed::pseudonym::write_new_secret(&secret_path, b"s3cret-shared-with-the-app\n").unwrap();
    let mut text = std::fs::read_to_string(&files.config_path).unwrap();
    text.push_str(&format!("\n[[webhooks]]\norg = \"school\"\nurl = {url:?}\nsecret_file = {secret_path:?}\n"));
    std::fs::write(&files.config_path, &text).unwrap();
    files.config = virfed::config::Config::parse(&text).unwrap();
    let region = RunningRegion::start_with(files, Arc::new(SystemClock)).await.unwrap();
    region.add_org("jeugdzorg", "Jeugdzorg", "youth-care", None).await.unwrap();
    region.add_org("school", "School", "education", None).await.unwrap();

    let bsn = "111222333";
    region.org_client("jeugdzorg").await.unwrap().register_signal(req(bsn, "J One")).await.unwrap();
    region.org_client("school").await.unwrap().register_signal(req(bsn, "S Two")).await.unwrap();

    // The first POST is refused; the retry (after ~1 s backoff) is accepted.
    for _ in 0..100 {
        if !got.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = got.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "exactly one notice for school: {received:?}");
    assert_eq!(*attempts.lock().unwrap(), 2, "one refusal, one retry");
    let body = &received[0].body;
    assert_eq!(received[0].signature, virfed::notify::signature(b"s3cret-shared-with-the-app", body));
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
    assert_eq!(got.lock().unwrap().len(), 1, "no second delivery after a restart");
    region.stop().await.unwrap();
}
