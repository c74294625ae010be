//! Federation health, for national coordinators and monitoring — never personal data.
//!
//! - [`NodeHealth`]: one node's view of itself, shared by every health surface: uptime,
//!   store writability and size, certificate expiry, small-count suppressed signal and
//!   match counts, and per peer the federation counters and outbox. Figures that scan the
//!   store are cached for [`FIGURES_TTL`], so probes and scrapes stay cheap.
//! - [`status`]: the `virfed.admin.v1.Status` service on the peer port (node and
//!   coordinator certificates only).
//! - [`probe`]: `grpc.health.v1` on both gRPC ports, NOT_SERVING while a periodic tiny
//!   store write fails; reflection with the crate's file descriptor set.
//! - [`metrics`]: the Prometheus exporter (names in [`metrics::METRICS`]) and the tower
//!   layer that counts and times every RPC.
//! - [`http`]: the plain-HTTP port: `/healthz`, `/readyz`, `/metrics`.
//! - [`sweep`]: `virfed status`: query many nodes in parallel, render the node table, the
//!   link matrix and warnings, and the exit code; reusable by a dashboard.
//!
//! Small-count suppression: a count of signals or matches below 5 is reported as "<5"
//! (and exported as 0 in metrics), so that no figure points at a child.

pub mod http;
pub mod metrics;
pub mod probe;
pub mod status;
pub mod sweep;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::federation::{cert_not_after, Counters, PROTOCOL_VERSION};
use crate::pb::admin as pb;
use crate::store::Store;

/// The encoded `FileDescriptorSet` of every virfed proto, for gRPC reflection.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/virfed_descriptor.bin"));

include!(concat!(env!("OUT_DIR"), "/rpc_methods.rs"));

/// How long figures that scan the store (counts, outbox depths, size) are reused.
pub const FIGURES_TTL: Duration = Duration::from_secs(2);

/// Counts below this are reported as "<5".
pub const SUPPRESS_BELOW: u64 = 5;

/// Small-count suppression: "<5" for 0..=4, the exact number from 5 on.
pub fn suppress(n: u64) -> String {
    if n < SUPPRESS_BELOW {
        "<5".into()
    } else {
        n.to_string()
    }
}

/// The numeric value of a suppressed count for metrics: 0 for "<5".
pub fn suppressed_value(s: &str) -> u64 {
    s.parse().unwrap_or(0)
}

/// Whole days from now until `not_after` (Unix seconds); negative once expired.
pub fn days_left(not_after: i64) -> i64 {
    (not_after - chrono::Utc::now().timestamp()).div_euclid(86_400)
}

/// A configured peer: region and peer API address.
#[derive(Clone, Debug)]
pub struct PeerAddr {
    pub region: String,
    pub address: String,
}

/// Figures that need a scan of the store.
#[derive(Clone, Debug, Default)]
struct Figures {
    store_bytes: u64,
    active: u64,
    archived: u64,
    local_matches: u64,
    cross_matches: u64,
    family_local: u64,
    family_cross: u64,
    /// Per peer: depth and age of the oldest item in seconds.
    outbox: Vec<(usize, Option<u64>)>,
    /// Queued BRP lookups and the age of the oldest in seconds.
    lookups: (u64, u64),
}

/// Organisation ids and whether each is flagged quiet.
type QuietFlags = Vec<(String, bool)>;

/// One node's health, shared by the status service, the probes and the exporter.
pub struct NodeHealth {
    region: String,
    started: Instant,
    store: Store,
    counters: Counters,
    peers: Vec<PeerAddr>,
    api_cert: PathBuf,
    federation_cert: Option<PathBuf>,
    store_writable: AtomicBool,
    api_bound: AtomicBool,
    figures: tokio::sync::Mutex<Option<(Instant, Figures)>>,
    /// Participation flags per organisation, recomputed at most every 5 minutes.
    quiet: std::sync::Mutex<Option<(Instant, QuietFlags)>>,
    /// Request counts and latencies of both gRPC ports.
    pub rpc: Arc<metrics::RpcMetrics>,
}

impl NodeHealth {
    pub fn new(
        region: String,
        store: Store,
        counters: Counters,
        peers: Vec<PeerAddr>,
        api_cert: PathBuf,
        federation_cert: Option<PathBuf>,
    ) -> NodeHealth {
        NodeHealth {
            region,
            started: Instant::now(),
            store,
            counters,
            peers,
            api_cert,
            federation_cert,
            store_writable: AtomicBool::new(true),
            api_bound: AtomicBool::new(false),
            figures: tokio::sync::Mutex::new(None),
            quiet: std::sync::Mutex::new(None),
            rpc: Arc::new(metrics::RpcMetrics::default()),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether the last probe write to the store succeeded.
    pub fn store_writable(&self) -> bool {
        self.store_writable.load(Ordering::Relaxed)
    }

    pub(crate) fn set_store_writable(&self, ok: bool) {
        self.store_writable.store(ok, Ordering::Relaxed);
    }

    /// Whether the gRPC ports are bound and serving (set by the server).
    pub fn api_bound(&self) -> bool {
        self.api_bound.load(Ordering::Relaxed)
    }

    pub fn set_api_bound(&self, bound: bool) {
        self.api_bound.store(bound, Ordering::Relaxed);
    }

    /// Ready: the API ports are bound and the store takes writes.
    pub fn ready(&self) -> bool {
        self.api_bound() && self.store_writable()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The store figures, recomputed (off the async threads) when older than [`FIGURES_TTL`].
    async fn figures(&self) -> Figures {
        let mut cached = self.figures.lock().await;
        if let Some((at, figures)) = cached.as_ref() {
            if at.elapsed() < FIGURES_TTL {
                return figures.clone();
            }
        }
        let store = self.store.clone();
        let peers: Vec<String> = self.peers.iter().map(|p| p.region.clone()).collect();
        let computed = tokio::task::spawn_blocking(move || compute_figures(&store, &peers)).await;
        let failed = match computed {
            Ok(Ok(figures)) => {
                *cached = Some((Instant::now(), figures.clone()));
                return figures;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(error = %failed, "reading the store figures for status failed");
        // Keep the last good figures rather than report zeros.
        let figures = cached.as_ref().map(|(_, f)| f.clone()).unwrap_or_default();
        *cached = Some((Instant::now(), figures.clone()));
        figures
    }

    /// Each organisation and whether the participation report flags it quiet (default
    /// period), recomputed from the audit log at most every 5 minutes.
    pub fn quiet_orgs(&self) -> Vec<(String, bool)> {
        use crate::domain::Clock;
        let mut cached = self.quiet.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, flags)) = cached.as_ref() {
            if at.elapsed() < Duration::from_secs(300) {
                return flags.clone();
            }
        }
        let flags = match (self.store.orgs(), self.store.audit_entries()) {
            (Ok(orgs), Ok(audit)) => {
                let config = crate::participation::ParticipationConfig::default();
                let report = crate::participation::report(&orgs, &audit, crate::domain::SystemClock.today(), &config);
                report.orgs.iter().map(|o| (o.org.to_string(), o.quiet)).collect()
            }
            _ => return cached.as_ref().map(|(_, f)| f.clone()).unwrap_or_default(),
        };
        *cached = Some((Instant::now(), flags));
        cached.as_ref().map(|(_, f)| f.clone()).unwrap_or_default()
    }

    /// This node's status, as served by `GetStatus` and exported as metrics.
    pub async fn status(&self) -> pb::NodeStatus {
        let f = self.figures().await;
        let peers = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, peer)| {
                let c = self.counters.get(&peer.region).cloned().unwrap_or_default();
                let info = c.info.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let (depth, oldest) = f.outbox.get(i).copied().unwrap_or_default();
                let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                pb::PeerStatus {
                    region: peer.region.clone(),
                    address: peer.address.clone(),
                    connected: c.connected.load(Ordering::Relaxed),
                    last_ok_unix_ms: load(&c.last_ok_ms),
                    last_error: info.last_error.map(|e| clip(&e, 300)).unwrap_or_default(),
                    rtt_micros: load(&c.rtt_micros),
                    outbox_depth: depth as u64,
                    outbox_oldest_age_seconds: oldest,
                    items_delivered: load(&c.items_delivered),
                    items_received: load(&c.items_received),
                    delivery_failures: load(&c.delivery_failures),
                    delivery_attempts: load(&c.delivery_attempts),
                    proof_failures: load(&c.proof_failures),
                    peer_key_fingerprint: self
                        .store
                        .peer_key(&peer.region)
                        .ok()
                        .flatten()
                        .map(|k| crate::federation::pairs::key_fingerprint(&k))
                        .unwrap_or_default(),
                    own_key_fingerprint: info.own_key_fingerprint.clone().unwrap_or_default(),
                    budget_rejections: load(&c.budget_rejections),
                    peer_protocol_version: info.protocol_version.unwrap_or(0),
                    peer_software_version: info.software_version.unwrap_or_default(),
                    peer_cert_days_left: info.cert_not_after.filter(|t| *t > 0).map(days_left),
                }
            })
            .collect();
        pb::NodeStatus {
            region: self.region.clone(),
            software_version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: PROTOCOL_VERSION,
            uptime_seconds: self.uptime().as_secs(),
            store_bytes: f.store_bytes,
            store_writable: self.store_writable(),
            api_cert_days_left: cert_not_after(&self.api_cert).map(days_left),
            federation_cert_days_left: self.federation_cert.as_deref().and_then(cert_not_after).map(days_left),
            active_signals: suppress(f.active),
            archived_signals: suppress(f.archived),
            local_matches: suppress(f.local_matches),
            cross_region_matches: suppress(f.cross_matches),
            peers,
            family_local_matches: suppress(f.family_local),
            family_cross_region_matches: suppress(f.family_cross),
            family_lookups_pending: f.lookups.0,
            family_lookup_oldest_age_seconds: f.lookups.1,
        }
    }
}

fn compute_figures(store: &Store, peers: &[String]) -> Result<Figures, crate::store::StoreError> {
    let counts = store.counts()?;
    let m = store.all_match_counts()?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let queued = store.lookups()?;
    let oldest_lookup = queued.iter().map(|(_, l)| l.queued_at_ms).min().map(|t| ((now_ms - t).max(0) / 1000) as u64);
    let lookups = (queued.len() as u64, oldest_lookup.unwrap_or(0));
    let mut outbox = Vec::with_capacity(peers.len());
    for peer in peers {
        let oldest = store.outbox_oldest(peer)?.map(|t| ((now_ms - t.timestamp_millis()).max(0) / 1000) as u64);
        outbox.push((store.outbox_depth(peer), oldest));
    }
    Ok(Figures {
        store_bytes: store.size_on_disk()?,
        active: counts.active,
        archived: counts.archived,
        local_matches: m.local,
        cross_matches: m.cross,
        family_local: m.family_local,
        family_cross: m.family_cross,
        outbox,
        lookups,
    })
}

/// At most `max` characters of `s`.
fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
