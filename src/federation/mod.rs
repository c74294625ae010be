//! The federation: this node's peer API and its delivery to peers.
//!
//! - [`PeerService`] (`virfed.federation.v1.Peer`) answers other regions. The caller's
//!   region comes from its node certificate ([`crate::pki::require_region`]); a region
//!   named in the body must equal it, and only configured peers are served. Publishes are
//!   counted against the peer's hourly oracle budget ([`Budget`]); bulk resync (join,
//!   re-key) against a separate daily budget, and audited.
//! - [`delivery`] drains each peer's durable outbox in order, retrying with jittered,
//!   bounded exponential backoff, so a peer that was down for days is caught up.
//!
//! The store does the protocol's bookkeeping (pseudonym indexes, pair detection, the
//! outbox) inside its transactions; this module moves bytes and checks identities. The
//! protocol itself is described in `docs/protocol.md`.

pub mod delivery;
pub mod rekey;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use tracing::warn;

use crate::domain::{Contact, OrgDomain, OrgId, Party, RegionId};
use crate::pb::federation as pb;
use crate::pki::require_region;
use crate::pseudonym::{BlindKey, Blinded, Handle};
use crate::store::federation::{InItem, OutItem};
use crate::store::Store;

/// Major version of the peer protocol: nodes interoperate only within one major version.
pub const PROTOCOL_VERSION: u32 = 1;
/// Minor version: a minor step only adds item kinds, which older nodes acknowledge without
/// applying, so nodes one minor version apart interoperate.
pub const PROTOCOL_MINOR: u32 = 0;

/// Most items in one exchange.
pub const MAX_ITEMS: usize = 256;

/// Per-peer counters, readable by status and metrics.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Blind requests refused because the peer was over its budget.
    pub budget_rejections: AtomicU64,
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
}

impl PeerCounters {
    pub(crate) fn succeeded(&self) {
        self.last_ok_ms.store(chrono::Utc::now().timestamp_millis().max(0) as u64, Ordering::Relaxed);
        self.connected.store(true, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, reason: String) {
        self.delivery_failures.fetch_add(1, Ordering::Relaxed);
        self.connected.store(false, Ordering::Relaxed);
        self.info.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(reason);
    }
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

/// A fixed-window budget of blind operations per peer.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    window: Duration,
    windows: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Budget {
    pub fn new(limit: u64, window: Duration) -> Budget {
        Budget { limit, window, windows: Mutex::new(HashMap::new()) }
    }

    /// Takes `n` from the peer's budget for this window; false when that would exceed it.
    pub fn take(&self, peer: &str, n: u64) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let window = windows.entry(peer.to_owned()).or_insert((now, 0));
        if now.duration_since(window.0) >= self.window {
            *window = (now, 0);
        }
        if window.1 + n > self.limit {
            return false;
        }
        window.1 += n;
        true
    }
}

/// The peer API.
#[derive(Clone)]
pub struct PeerService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    region: String,
    /// This node's certificate file, for the expiry it reports in pings.
    cert_file: std::path::PathBuf,
    blind_key: BlindKey,
    peers: HashSet<String>,
    oracle: Budget,
    resync: Budget,
    counters: Counters,
}

impl PeerService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        region: String,
        cert_file: std::path::PathBuf,
        blind_key: BlindKey,
        peers: HashSet<String>,
        oracle_per_hour: u64,
        resync_per_day: u64,
        counters: Counters,
    ) -> PeerService {
        PeerService {
            inner: Arc::new(Inner {
                store,
                region,
                cert_file,
                blind_key,
                peers,
                oracle: Budget::new(oracle_per_hour, Duration::from_secs(3600)),
                // The flag is the peer's claim, so the bulk budget is per day: a join or a
                // re-key a day, not a standing allowance for a peer that probes.
                resync: Budget::new(resync_per_day, Duration::from_secs(24 * 3600)),
                counters,
            }),
        }
    }

    /// The calling region: from the certificate, and one of the configured peers.
    async fn caller<T>(&self, req: &Request<T>, claimed: &str) -> Result<RegionId, Status> {
        let region = require_region(req)?;
        if !self.inner.peers.contains(&region) {
            let _ = self
                .inner
                .store
                .audit_event(
                    &format!("region:{region}"),
                    "federation.refused",
                    &format!("region {region}"),
                    "not a configured peer",
                )
                .await;
            warn!(peer = %region, "a node certificate of an unconfigured region was refused");
            return Err(Status::permission_denied(format!(
                "region {region} is not a configured peer of region {}; ask its operator to add it to [federation.peers]",
                self.inner.region
            )));
        }
        if claimed != region {
            let _ = self
                .inner
                .store
                .audit_event(
                    &format!("region:{region}"),
                    "federation.refused",
                    &format!("region {region}"),
                    "message claimed another region",
                )
                .await;
            warn!(peer = %region, claimed, "peer message claims another region; refused");
            return Err(Status::permission_denied(format!(
                "from_region {claimed:?} does not match the region in your certificate ({region})"
            )));
        }
        RegionId::parse(&region).map_err(|e| Status::permission_denied(format!("certificate region: {e}")))
    }
}

fn handle_in(bytes: &[u8], what: &str) -> Result<Handle, Status> {
    bytes.try_into().map_err(|_| Status::invalid_argument(format!("{what} must be 16 bytes")))
}

fn contact_in(c: Option<pb::Contact>, who: &str) -> Result<Option<Contact>, Status> {
    let Some(c) = c else { return Ok(None) };
    let contact = Contact { name: c.name, role: c.role, phone: c.phone, email: c.email };
    contact.validate(who).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(Some(contact))
}

pub(crate) fn party_in(p: pb::Party, region: &RegionId) -> Result<Party, Status> {
    let bad = |e: crate::domain::FieldError| Status::invalid_argument(format!("party: {e}"));
    crate::domain::check_text("organisation_name", &p.organisation_name, crate::domain::MAX_NAME).map_err(bad)?;
    Ok(Party {
        region: Some(region.clone()),
        org_id: OrgId::parse(&p.organisation_id).map_err(bad)?,
        org_name: p.organisation_name,
        org_domain: p.organisation_domain.parse::<OrgDomain>().map_err(bad)?,
        professional: contact_in(p.professional, "professional")?
            .ok_or_else(|| Status::invalid_argument("party: professional is required"))?,
        coordinator: contact_in(p.coordinator, "coordinator")?,
    })
}

pub(crate) fn contact_out(c: &Contact) -> pb::Contact {
    pb::Contact { name: c.name.clone(), role: c.role.clone(), phone: c.phone.clone(), email: c.email.clone() }
}

pub(crate) fn party_out(p: &Party) -> pb::Party {
    pb::Party {
        organisation_id: p.org_id.to_string(),
        organisation_name: p.org_name.clone(),
        organisation_domain: p.org_domain.to_string(),
        professional: Some(contact_out(&p.professional)),
        coordinator: p.coordinator.as_ref().map(contact_out),
    }
}

/// An outbox item as it goes on the wire (the local child key stays behind).
pub(crate) fn item_out(seq: u64, item: &OutItem) -> pb::Item {
    use pb::item::Body;
    let body = match item {
        OutItem::Publish { handle, point, active, .. } => {
            Body::Publish(pb::Publish { handle: handle.to_vec(), point: point.to_vec(), active: *active })
        }
        OutItem::State { handle, active } => Body::State(pb::State { handle: handle.to_vec(), active: *active }),
        OutItem::Remove { handle } => Body::Remove(pb::Remove { handle: handle.to_vec() }),
        OutItem::Contacts { from, to, archived, parties } => Body::Contacts(pb::Contacts {
            from_handle: from.to_vec(),
            to_handle: to.to_vec(),
            archived: *archived,
            parties: parties.iter().map(party_out).collect(),
        }),
        OutItem::PartyGone { from, to, org } => Body::PartyGone(pb::PartyGone {
            from_handle: from.to_vec(),
            to_handle: to.to_vec(),
            organisation_id: org.to_string(),
        }),
        OutItem::Reblind { to, blinded } => {
            Body::Reblind(pb::Reblind { to_handle: to.to_vec(), blinded: blinded.to_vec() })
        }
        OutItem::ResyncRequest => Body::ResyncRequest(pb::ResyncRequest {}),
    };
    pb::Item { seq, body: Some(body) }
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn exchange(&self, req: Request<pb::ExchangeRequest>) -> Result<Response<pb::ExchangeResponse>, Status> {
        let claimed = req.get_ref().from_region.clone();
        let region = self.caller(&req, &claimed).await?;
        let r = req.into_inner();
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol major version {} is not supported here (this node speaks {PROTOCOL_VERSION}.{PROTOCOL_MINOR}); upgrade the older node",
                r.protocol_version
            )));
        }
        if r.items.len() > MAX_ITEMS {
            return Err(Status::invalid_argument(format!("at most {MAX_ITEMS} items per exchange")));
        }
        let counters = self.inner.counters.get(region.as_str()).cloned().unwrap_or_default();
        // Validate and blind everything first: a bad item refuses the request, unchanged.
        let mut items = Vec::with_capacity(r.items.len());
        let mut last_seq = 0;
        let mut publishes = 0u64;
        for item in r.items {
            use pb::item::Body;
            if item.seq <= last_seq {
                return Err(Status::invalid_argument("item sequence numbers must increase"));
            }
            last_seq = item.seq;
            let parsed = match item.body {
                Some(Body::Publish(p)) => {
                    publishes += 1;
                    let handle = handle_in(&p.handle, "publish.handle")?;
                    let point: Blinded = p
                        .point
                        .as_slice()
                        .try_into()
                        .map_err(|_| Status::invalid_argument("publish.point must be 32 bytes"))?;
                    // Blinded below, the whole batch at once.
                    InItem::Publish { handle, point, active: p.active, blinded: [0; 32] }
                }
                Some(Body::State(s)) => {
                    InItem::State { handle: handle_in(&s.handle, "state.handle")?, active: s.active }
                }
                Some(Body::Remove(s)) => InItem::Remove { handle: handle_in(&s.handle, "remove.handle")? },
                Some(Body::Contacts(c)) => InItem::Contacts {
                    from: handle_in(&c.from_handle, "contacts.from_handle")?,
                    to: handle_in(&c.to_handle, "contacts.to_handle")?,
                    archived: c.archived,
                    parties: c.parties.into_iter().map(|p| party_in(p, &region)).collect::<Result<_, _>>()?,
                },
                Some(Body::PartyGone(g)) => InItem::PartyGone {
                    from: handle_in(&g.from_handle, "party_gone.from_handle")?,
                    to: handle_in(&g.to_handle, "party_gone.to_handle")?,
                    org: OrgId::parse(&g.organisation_id).map_err(|e| Status::invalid_argument(e.to_string()))?,
                },
                Some(Body::Reblind(r)) => InItem::Reblind {
                    to: handle_in(&r.to_handle, "reblind.to_handle")?,
                    blinded: r
                        .blinded
                        .as_slice()
                        .try_into()
                        .map_err(|_| Status::invalid_argument("reblind.blinded must be 32 bytes"))?,
                },
                Some(Body::ResyncRequest(_)) => InItem::ResyncRequest,
                // A kind from a newer minor version: acknowledged, not applied.
                None if r.protocol_minor > PROTOCOL_MINOR => InItem::Unknown,
                None => return Err(Status::invalid_argument("item without a body")),
            };
            items.push((item.seq, parsed));
        }
        let points: Vec<Blinded> = items
            .iter()
            .filter_map(|(_, i)| match i {
                InItem::Publish { point, .. } => Some(*point),
                _ => None,
            })
            .collect();
        let mut blinded = self
            .inner
            .blind_key
            .blind_points(&points)
            .map_err(|_| Status::invalid_argument("publish.point is not a valid ristretto255 point"))?
            .into_iter();
        for (_, item) in items.iter_mut() {
            if let InItem::Publish { blinded: slot, .. } = item {
                *slot = blinded.next().ok_or_else(|| Status::internal("blinding lost an item"))?;
            }
        }
        let budget = if r.resync { &self.inner.resync } else { &self.inner.oracle };
        if publishes > 0 && !budget.take(region.as_str(), publishes) {
            counters.budget_rejections.fetch_add(1, Ordering::Relaxed);
            let kind = if r.resync { "resync" } else { "oracle" };
            warn!(peer = %region, publishes, kind, "peer over its blind budget; refused");
            let _ = self
                .inner
                .store
                .audit_event(
                    &format!("region:{region}"),
                    "federation.budget-exceeded",
                    &format!("region {region}"),
                    &format!("{kind} budget, {publishes} blind requests refused"),
                )
                .await;
            return Err(Status::resource_exhausted(format!(
                "region {region} is over its hourly {kind} budget of blind requests; this is reported to the coordinators"
            )));
        }
        if r.resync && publishes > 0 {
            let _ = self
                .inner
                .store
                .audit_event(
                    &format!("region:{region}"),
                    "federation.resync",
                    &format!("region {region}"),
                    &format!("{publishes} children blinded for a join or re-key"),
                )
                .await;
        }
        counters.items_received.fetch_add(items.len() as u64, Ordering::Relaxed);
        let answers = self.inner.store.apply_exchange(&region, r.epoch, items).await.map_err(|e| {
            if let crate::store::OpError::Superseded(_) = e {
                return Status::failed_precondition(e.to_string());
            }
            warn!(peer = %region, error = %e, "applying a peer exchange failed");
            Status::internal(format!("the node could not apply the exchange: {e}"))
        })?;
        if answers.iter().any(|a| a.resync_requested) {
            let (store, peer) = (self.inner.store.clone(), region.to_string());
            tokio::spawn(async move {
                match store.join_peer(&peer).await {
                    Ok(n) => {
                        tracing::info!(%peer, children = n, "peer asked for a resync after a restore: children queued")
                    }
                    Err(e) => warn!(%peer, error = %e, "queueing the resync a peer asked for failed"),
                }
            });
        }
        Ok(Response::new(pb::ExchangeResponse {
            results: answers
                .into_iter()
                .map(|a| pb::ItemResult {
                    seq: a.seq,
                    blinded: a.blinded.map(|b| b.to_vec()).unwrap_or_default(),
                    gone: a.gone,
                    contacts: a.contacts.iter().map(party_out).collect(),
                })
                .collect(),
        }))
    }

    async fn ping(&self, req: Request<pb::PingRequest>) -> Result<Response<pb::PingResponse>, Status> {
        let claimed = req.get_ref().from_region.clone();
        self.caller(&req, &claimed).await?;
        Ok(Response::new(pb::PingResponse {
            region: self.inner.region.clone(),
            protocol_version: PROTOCOL_VERSION,
            software_version: env!("CARGO_PKG_VERSION").into(),
            cert_not_after: cert_not_after(&self.inner.cert_file).unwrap_or(0),
            protocol_minor: PROTOCOL_MINOR,
        }))
    }
}
