//! Webhook delivery of stored notices.
//!
//! The notices tree is the durable queue: each configured organisation has a delivery
//! cursor in the store (`webhook_cursor/<org>`). A task per webhook POSTs every durable
//! notice after the cursor, in order, as JSON, and advances the cursor only after a 2xx
//! answer. Failures retry with jittered exponential backoff (1 s to 5 min), so a receiver
//! that is down for days still gets everything, once it is back. Delivery is at least
//! once: receivers de-duplicate on `cursor`.
//!
//! **Transport.** `https://` webhooks go over rustls (ring provider, TLS 1.2+, no session
//! resumption, as everywhere in the crate) and trust only the receiver's CA from the
//! webhook's `ca` file: there is no system root store in this crate, and a notice must not
//! reach whoever a public CA vouches for. Plain `http://` is accepted by the config only to
//! a loopback address (a TLS-terminating proxy on the same host); see
//! [`crate::config::Webhook`]. The client side is [`crate::https::HttpsConnector`] with a
//! config from [`crate::pki::https_client_config`], shared with the BRP client.
//!
//! **Signature.** Every attempt carries
//! `X-Virfed-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." ‖ body)>`
//! (the Stripe scheme). Binding the time into the MAC lets a receiver refuse a captured
//! delivery replayed later: [`verify_signature`] is the check a receiver mirrors, with
//! [`DEFAULT_TOLERANCE_SECS`]. The time is the attempt's, read from the injected clock,
//! so a retry after a long outage is signed fresh rather than looking stale.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::ClientConfig;
use serde::Serialize;
use sha2::Sha256;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::config::{Config, Webhook};
use crate::domain::{Clock, Notice, NoticeKind, OrgId, SystemClock};
use crate::https::HttpsConnector;
use crate::shutdown::Shutdown;
use crate::store::Store;

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The header carrying the signature (HTTP header names are case-insensitive).
pub const SIGNATURE_HEADER: &str = "x-virfed-signature";

/// How far a receiver should let a delivery's timestamp be from its own clock, either way:
/// five minutes covers transit and modest clock skew, and bounds a replay window.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// The JSON body of a webhook POST.
#[derive(Serialize)]
struct Delivery<'a> {
    cursor: u64,
    notice: WebhookNotice<'a>,
}

/// A notice as a webhook receives it: `kind` is `MatchCreated`, `MatchEnded` or `History`,
/// and `family` is true for a family match (D11), as on the watch stream.
#[derive(Serialize)]
struct WebhookNotice<'a> {
    kind: NoticeKind,
    family: bool,
    addressee: crate::domain::Addressee,
    recipient: &'a OrgId,
    own_signal: Option<crate::domain::SignalId>,
    signals: &'a [crate::domain::SignalId],
    counterparts: &'a [crate::domain::Party],
}

impl<'a> WebhookNotice<'a> {
    fn of(n: &'a Notice) -> WebhookNotice<'a> {
        WebhookNotice {
            kind: n.kind.base(),
            family: n.kind.is_family(),
            addressee: n.addressee,
            recipient: &n.recipient,
            own_signal: n.own_signal,
            signals: &n.signals,
            counterparts: &n.counterparts,
        }
    }
}

/// Why a webhook signature is refused by [`verify_signature`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=<unix seconds>,v1=<hex>`.
    #[error("malformed X-Virfed-Signature header: {0} (expected t=<unix seconds>,v1=<hex HMAC-SHA256>)")]
    Malformed(&'static str),
    /// No `v1` value is the HMAC of this timestamp and body under the secret: the body or
    /// the timestamp was changed, or the secret differs.
    #[error("X-Virfed-Signature does not match the timestamp and body (wrong secret, or the delivery was altered)")]
    Mismatch,
    /// The signature is genuine but its timestamp is too far from now: a stale delivery or
    /// a replay, or a clock that is off.
    #[error("X-Virfed-Signature timestamp {timestamp} is {age_secs} s from now, outside the {tolerance_secs} s tolerance (stale or replayed delivery, or a skewed clock)")]
    Stale {
        /// The header's `t`.
        timestamp: i64,
        /// `now - t` (negative: from the future).
        age_secs: i64,
        /// The tolerance it was checked against.
        tolerance_secs: i64,
    },
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Virfed-Signature` value for `body` sent at `timestamp` (unix seconds) under
/// `secret`: `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>." ‖ body)>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", hex::encode(mac(secret, timestamp, body).finalize().into_bytes()))
}

/// Checks an `X-Virfed-Signature` header as a receiver should: the MAC over `"<t>." ‖ body`
/// must match (compared in constant time), then `t` must be within `tolerance_secs` of
/// `now_unix` either way ([`DEFAULT_TOLERANCE_SECS`] is the recommended tolerance).
///
/// Several `v1=` entries are accepted and any one may match (room for a secret rotation);
/// unknown entries are ignored, so a later scheme can be added alongside `v1`.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (key, value) = part.trim().split_once('=').ok_or(SignatureError::Malformed("an entry without '='"))?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("more than one t="));
                }
                let t = value.parse::<i64>().map_err(|_| SignatureError::Malformed("t is not unix seconds"))?;
                timestamp = Some(t);
            }
            "v1" => candidates.push(hex::decode(value).map_err(|_| SignatureError::Malformed("v1 is not hex"))?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t="))?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed("no v1="));
    }
    let expected = mac(secret, timestamp, body);
    if !candidates.iter().any(|c| expected.clone().verify_slice(c).is_ok()) {
        return Err(SignatureError::Mismatch);
    }
    let age_secs = now_unix.saturating_sub(timestamp);
    if age_secs.unsigned_abs() > tolerance_secs.max(0).unsigned_abs() {
        return Err(SignatureError::Stale { timestamp, age_secs, tolerance_secs });
    }
    Ok(())
}

/// Starts one delivery task per configured webhook, signing with the system clock.
pub fn spawn_webhooks(config: &Config, store: Store, shutdown: Shutdown) -> Result<Vec<JoinHandle<()>>, String> {
    spawn_webhooks_with_clock(config, store, Arc::new(SystemClock), shutdown)
}

/// Starts one delivery task per configured webhook; signature timestamps read `clock`.
/// Every file (secret, CA) is read and checked here, so a bad one stops the node at start.
pub fn spawn_webhooks_with_clock(
    config: &Config,
    store: Store,
    clock: Arc<dyn Clock>,
    shutdown: Shutdown,
) -> Result<Vec<JoinHandle<()>>, String> {
    let mut tasks = Vec::new();
    for hook in &config.webhooks {
        let org = hook.org.clone();
        crate::pki::check_secret_file_mode(&hook.secret_file).map_err(|e| e.to_string())?;
        let secret = std::fs::read(&hook.secret_file)
            .map_err(|e| format!("webhook secret {}: {e}", hook.secret_file.display()))?;
        let secret = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
        let uri: http::Uri = hook.url.parse().map_err(|e| format!("webhooks.url {}: {e}", hook.url))?;
        let connector = webhook_connector(hook, &uri)?;
        tasks.push(tokio::spawn(deliver(store.clone(), org, uri, connector, secret, clock.clone(), shutdown.clone())));
    }
    Ok(tasks)
}

/// The connector of one webhook: plain TCP for an `http://` URL (loopback only, see the
/// config), TLS trusting only the webhook's `ca` for `https://`.
fn webhook_connector(hook: &Webhook, uri: &http::Uri) -> Result<HttpsConnector, String> {
    if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
        return Ok(HttpsConnector::loopback_plain());
    }
    let ca = hook.ca.as_ref().ok_or_else(|| format!("webhooks.url {}: an https webhook needs `ca`", hook.url))?;
    let what = format!("webhooks.ca {}", ca.display());
    let pem = std::fs::read(ca).map_err(|e| format!("{what}: {e}"))?;
    Ok(HttpsConnector::new(webhook_tls_config(&pem, &what)?))
}

/// The rustls client config of an `https` webhook: [`crate::pki::https_client_config`],
/// which trusts the certificates in `ca_pem` only.
fn webhook_tls_config(ca_pem: &[u8], what: &str) -> Result<Arc<ClientConfig>, String> {
    crate::pki::https_client_config(ca_pem, what).map_err(|e| e.to_string())
}

async fn deliver(
    store: Store,
    org: OrgId,
    uri: http::Uri,
    connector: HttpsConnector,
    secret: Vec<u8>,
    clock: Arc<dyn Clock>,
    mut shutdown: Shutdown,
) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
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
            let body =
                serde_json::to_vec(&Delivery { cursor: seq, notice: WebhookNotice::of(&notice) }).unwrap_or_default();
            let request = http::Request::post(uri.clone())
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, signature(&secret, clock.now().timestamp(), &body))
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s3cret";
    const BODY: &[u8] = br#"{"cursor":7}"#;
    const T: i64 = 1_700_000_000;

    #[test]
    fn family_a_webhook_body_shows_the_kind_and_the_family_flag_beside_it() {
        use crate::domain::{Addressee, NoticeKind, SignalId};
        let notice = |kind| Notice {
            kind,
            addressee: Addressee::Professional,
            recipient: OrgId::parse("school").unwrap(),
            own_signal: Some(SignalId([1; 16])),
            signals: vec![],
            counterparts: vec![],
        };
        let body = |kind| {
            let n = notice(kind);
            serde_json::to_value(Delivery { cursor: 3, notice: WebhookNotice::of(&n) }).unwrap()
        };
        let family = body(NoticeKind::FamilyMatchCreated);
        assert_eq!(family["notice"]["kind"], "MatchCreated");
        assert_eq!(family["notice"]["family"], true);
        assert_eq!(body(NoticeKind::FamilyMatchEnded)["notice"]["kind"], "MatchEnded");
        let child = body(NoticeKind::MatchCreated);
        assert_eq!((&child["notice"]["kind"], &child["notice"]["family"]), (&"MatchCreated".into(), &false.into()));
        // The body keeps the fields receivers already read.
        let fields: Vec<&str> = child["notice"].as_object().unwrap().keys().map(String::as_str).collect();
        for f in ["kind", "addressee", "recipient", "own_signal", "signals", "counterparts"] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn signature_is_hmac_over_timestamp_dot_body() {
        let header = signature(SECRET, T, BODY);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET).unwrap();
        mac.update(format!("{T}.").as_bytes());
        mac.update(BODY);
        assert_eq!(header, format!("t={T},v1={}", hex::encode(mac.finalize().into_bytes())));
    }

    #[test]
    fn a_fresh_signature_verifies_within_the_tolerance_either_way() {
        let header = signature(SECRET, T, BODY);
        for now in [T, T + DEFAULT_TOLERANCE_SECS, T - DEFAULT_TOLERANCE_SECS] {
            assert_eq!(verify_signature(SECRET, &header, BODY, now, DEFAULT_TOLERANCE_SECS), Ok(()), "now = {now}");
        }
    }

    #[test]
    fn a_stale_or_future_signature_is_refused() {
        let header = signature(SECRET, T, BODY);
        let late = verify_signature(SECRET, &header, BODY, T + 301, 300);
        assert_eq!(late, Err(SignatureError::Stale { timestamp: T, age_secs: 301, tolerance_secs: 300 }));
        let early = verify_signature(SECRET, &header, BODY, T - 301, 300);
        assert!(matches!(early, Err(SignatureError::Stale { age_secs: -301, .. })), "{early:?}");
        let extreme = verify_signature(SECRET, &signature(SECRET, i64::MIN, BODY), BODY, i64::MAX, 300);
        assert!(matches!(extreme, Err(SignatureError::Stale { .. })), "{extreme:?}");
    }

    #[test]
    fn a_changed_body_timestamp_or_secret_is_a_mismatch() {
        let header = signature(SECRET, T, BODY);
        assert_eq!(verify_signature(SECRET, &header, b"{\"cursor\":8}", T, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify_signature(b"other", &header, BODY, T, 300), Err(SignatureError::Mismatch));
        let shifted = header.replace(&format!("t={T}"), &format!("t={}", T + 1));
        assert_eq!(verify_signature(SECRET, &shifted, BODY, T, 300), Err(SignatureError::Mismatch));
    }

    #[test]
    fn any_v1_may_match_and_unknown_entries_are_ignored() {
        let good = signature(SECRET, T, BODY);
        let v1 = good.split_once(",v1=").unwrap().1;
        let header = format!("t={T}, v1={}, v1={v1}, v0=zz", "00".repeat(32));
        assert_eq!(verify_signature(SECRET, &header, BODY, T, 300), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let v1 = "ab".repeat(32);
        for header in [
            "".to_string(),
            format!("sha256={v1}"),
            format!("v1={v1}"),
            format!("t={T}"),
            format!("t=soon,v1={v1}"),
            format!("t={T},v1=xyz"),
            format!("t={T},t={T},v1={v1}"),
            format!("t={T};v1={v1}"),
        ] {
            let got = verify_signature(SECRET, &header, BODY, T, 300);
            assert!(matches!(got, Err(SignatureError::Malformed(_))), "{header:?}: {got:?}");
        }
    }

    #[test]
    fn the_webhook_tls_config_needs_a_certificate() {
        let err = webhook_tls_config(b"not pem", "webhooks.ca x.pem").unwrap_err();
        assert!(err.contains("webhooks.ca x.pem") && err.contains("no certificate"), "{err}");
        let ca = crate::pki::Ca::generate("receiver CA", 1).unwrap();
        let config = webhook_tls_config(ca.cert_pem().as_bytes(), "ca").unwrap();
        assert_eq!(config.alpn_protocols, [b"http/1.1"]);
    }
}
