//! Webhook delivery of stored notices.
//!
//! The notices tree is the durable queue: each configured organisation has a delivery
//! cursor in the store (`webhook_cursor/<org>`). A task per webhook POSTs every durable
//! notice after the cursor, in order, as JSON, signed with
//! `X-Virfed-Signature: sha256=<hex HMAC-SHA256(secret, body)>`, and advances the cursor
//! only after a 2xx answer. Failures retry with jittered exponential backoff (1 s to
//! 5 min), so a receiver that is down for days still gets everything, once it is back.
//! Delivery is at least once: receivers de-duplicate on `cursor`.

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sha2::Sha256;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::domain::{Notice, OrgId};
use crate::shutdown::Shutdown;
use crate::store::Store;

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The JSON body of a webhook POST.
#[derive(Serialize)]
struct Delivery<'a> {
    cursor: u64,
    notice: &'a Notice,
}

/// Signature header value for `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Starts one delivery task per configured webhook.
pub fn spawn_webhooks(config: &Config, store: Store, shutdown: Shutdown) -> Result<Vec<JoinHandle<()>>, String> {
    let mut tasks = Vec::new();
    for hook in &config.webhooks {
        let org = hook.org.clone();
        crate::pki::check_secret_file_mode(&hook.secret_file).map_err(|e| e.to_string())?;
        let secret = std::fs::read(&hook.secret_file)
            .map_err(|e| format!("webhook secret {}: {e}", hook.secret_file.display()))?;
        let secret = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
        let uri: http::Uri = hook.url.parse().map_err(|e| format!("webhooks.url {}: {e}", hook.url))?;
        tasks.push(tokio::spawn(deliver(store.clone(), org, uri, secret, shutdown.clone())));
    }
    Ok(tasks)
}

async fn deliver(store: Store, org: OrgId, uri: http::Uri, secret: Vec<u8>, mut shutdown: Shutdown) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut durable = store.subscribe_notices();
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    loop {
        durable.borrow_and_update();
        let cursor = store.webhook_cursor(&org).unwrap_or(0);
        let batch = store.notices_after(&org, cursor, 64).unwrap_or_default();
        if batch.is_empty() {
            tokio::select! {
                changed = durable.changed() => if changed.is_err() { return },
                _ = shutdown.recv() => return,
            }
            continue;
        }
        for (seq, notice) in batch {
            let body = serde_json::to_vec(&Delivery { cursor: seq, notice: &notice }).unwrap_or_default();
            let request = http::Request::post(uri.clone())
                .header("content-type", "application/json")
                .header("x-virfed-signature", signature(&secret, &body))
                .body(Full::new(Bytes::from(body)));
            let ok = match request {
                Ok(req) => match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                    Ok(Ok(resp)) if resp.status().is_success() => true,
                    Ok(Ok(resp)) => {
                        warn!(%org, status = %resp.status(), cursor = seq, "webhook refused a notice; will retry");
                        false
                    }
                    Ok(Err(e)) => {
                        warn!(%org, error = %e, cursor = seq, "webhook unreachable; will retry");
                        false
                    }
                    Err(_) => {
                        warn!(%org, cursor = seq, "webhook timed out; will retry");
                        false
                    }
                },
                Err(e) => {
                    warn!(%org, error = %e, "webhook request could not be built");
                    false
                }
            };
            if !ok {
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.recv() => return,
                }
                break;
            }
            backoff.reset();
            if let Err(e) = store.set_webhook_cursor(&org, seq).await {
                warn!(%org, error = %e, "cannot record webhook progress");
            }
            debug!(%org, cursor = seq, "notice delivered to webhook");
        }
    }
}
