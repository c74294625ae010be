//! The federation: the peer protocol, its rules and its transport.
//!
//! - [`item`]: the protocol's items ([`Item<P>`](item::Item) for both directions),
//!   versions and limits; [`convert`]: protobuf ↔ items, validated on the way in.
//! - [`pairs`]: cross-region pair reconciliation over a store transaction (when is a
//!   cross-border match made or ended), and the [`crate::registry::FederationHook`] that
//!   local changes call; [`sync`]: [`Federation`], those rules as durable writes.
//! - [`service`]: [`PeerService`] (`virfed.federation.v1.Peer`) answers other regions. The
//!   caller's region comes from its node certificate ([`crate::pki::require_region`]); a
//!   region named in the body must equal it, and only configured peers are served.
//!   Publishes are counted, before anything is blinded, against the peer's oracle budget
//!   (a token bucket kept in the store, [`budget`]); bulk resync (join, re-key) against a
//!   separate daily bucket, and audited.
//! - [`delivery`] drains each peer's durable outbox in order, retrying with jittered,
//!   bounded exponential backoff, so a peer that was down for days is caught up.
//! - [`error`]: every refusal and its one mapping to `tonic::Status`.
//!
//! The protocol itself is described in `docs/protocol.md`.

pub mod budget;
pub mod convert;
pub mod delivery;
pub mod error;
pub mod item;
#[cfg(feature = "kit")]
pub mod model;
pub mod pairs;
pub mod rekey;
pub mod service;
pub mod sync;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use budget::{Bucket, Limit};
pub(crate) use convert::{item_out, party_in};
pub use error::FederationError;
pub use item::{InItem, Item, ItemAnswer, OutItem, MAX_ITEMS, PROTOCOL_MINOR, PROTOCOL_VERSION};
pub use pairs::Pairs;
pub use service::PeerService;
pub use sync::Federation;

/// Per-peer counters, readable by status and metrics.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Exchanges whose answers failed their proof (refused whole).
    pub proof_failures: AtomicU64,
    /// Blind requests refused because the peer was over its budget.
    pub budget_rejections: AtomicU64,
    /// Blind operations granted to the peer from its oracle budget (new children).
    pub oracle_blinds: AtomicU64,
    /// Blind operations granted to the peer from its resync budget (join, re-key).
    pub resync_blinds: AtomicU64,
    /// Items this node received from the peer.
    pub items_received: AtomicU64,
    /// Items delivered to the peer.
    pub items_delivered: AtomicU64,
    /// Exchanges sent to the peer.
    pub delivery_attempts: AtomicU64,
    /// Failed delivery attempts.
    pub delivery_failures: AtomicU64,
    /// Unix milliseconds of the last successful exchange or ping (0: never).
    pub last_ok_ms: AtomicU64,
    /// Round trip of the last ping, microseconds.
    pub rtt_micros: AtomicU64,
    /// Whether the last attempt to reach the peer succeeded.
    pub connected: std::sync::atomic::AtomicBool,
    /// What went wrong last, and the peer's versions and certificate expiry from its ping.
    pub info: Mutex<PeerInfoSnapshot>,
}

/// What the last ping and the last failure told about a peer.
#[derive(Clone, Debug, Default)]
pub struct PeerInfoSnapshot {
    pub last_error: Option<String>,
    pub protocol_version: Option<u32>,
    pub software_version: Option<String>,
    /// Unix seconds when the peer's node certificate expires, as the peer reports it.
    pub cert_not_after: Option<i64>,
    /// Fingerprint of this node's own public blinding key towards the peer.
    pub own_key_fingerprint: Option<String>,
}

impl PeerCounters {
    pub(crate) fn succeeded(&self) {
        self.last_ok_ms.store(chrono::Utc::now().timestamp_millis().max(0) as u64, Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, reason: String) {
        self.delivery_failures.fetch_add(1, Ordering::Relaxed);
        self.connected.store(false, Ordering::Relaxed);
        self.info.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(cut_text(&reason, MAX_ERROR_TEXT));
    }
}

/// A kept failure reason is cut to this many characters.
pub(crate) const MAX_ERROR_TEXT: usize = 500;
/// A peer's software version is cut to this many characters.
pub(crate) const MAX_VERSION_TEXT: usize = 64;

/// Text from outside this node (a peer's software version, the message of its refusal,
/// the version numbers it claims; a BRP answer's texts) as this node keeps and shows it
/// in status, metrics, logs and errors: runs of 8 or more digits redacted first (a
/// compromised peer cannot route a number to the coordinators through its texts), then
/// [`cut_text`].
pub(crate) fn peer_text(text: &str, max: usize) -> String {
    cut_text(&crate::brp::redact(text), max)
}

/// At most `max` characters of `text`, control characters replaced (a failure reason, a
/// peer's text): status and logs stay one line each and bounded.
pub(crate) fn cut_text(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// When a PEM certificate file's certificate expires (Unix seconds); None if unreadable.
pub fn cert_not_after(path: &std::path::Path) -> Option<i64> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Counters of every peer.
pub type Counters = Arc<HashMap<String, Arc<PeerCounters>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_text_is_cut_cleaned_and_never_carries_a_bsn() {
        assert_eq!(peer_text("0.1.0", MAX_VERSION_TEXT), "0.1.0");
        let long = "x".repeat(10_000);
        assert_eq!(peer_text(&long, MAX_VERSION_TEXT).chars().count(), MAX_VERSION_TEXT + 1);
        assert_eq!(peer_text("a\nb\u{1b}[31m", 100), "a b [31m");
        let told = peer_text("child 111222333 refused", 100);
        assert!(!told.contains("111222333") && told.starts_with("child "), "{told}");
        // This node's own reasons keep their numbers (sequence numbers, fingerprints).
        assert_eq!(
            cut_text("peer answered item 123456789 for item 12", 100),
            "peer answered item 123456789 for item 12"
        );
        assert_eq!(cut_text(&long, MAX_ERROR_TEXT).chars().count(), MAX_ERROR_TEXT + 1);
    }
}
