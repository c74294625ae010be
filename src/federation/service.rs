//! [`PeerService`]: the peer API (`virfed.federation.v1.Peer`) other regions call.
//!
//! The caller's region comes from its node certificate, never from the message; only
//! configured peers are served; an exchange is validated whole, checked against the
//! peer's budget (a token bucket in the store, [`super::budget`]) *before* anything is
//! blinded, then blinded as one batch and applied in one transaction, which takes the
//! tokens (and refuses the exchange whole if a concurrent one took them first). Refusals are
//! [`FederationError`]s, audited where they concern the peer's conduct.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::warn;

use super::budget::{Bucket, Limit};
use super::convert::{item_in, party_out};
use super::item::{Item, MAX_ITEMS, PROTOCOL_MINOR, PROTOCOL_VERSION};
use super::{cert_not_after, Counters, Federation, FederationError, PeerCounters};
use crate::domain::{AuditAction, Clock, RegionId};
use crate::pb::federation as pb;
use crate::pki::require_region;
use crate::pki::ticket::{self, Ticket, TicketError};
use crate::pseudonym::{BlindKey, Blinded, PeerBlind};

/// The peer API.
#[derive(Clone)]
pub struct PeerService {
    inner: Arc<Inner>,
}

struct Inner {
    federation: Federation,
    region: String,
    /// This node's certificate file, for the expiry it reports in pings.
    cert_file: std::path::PathBuf,
    /// The federation CA file: resync tickets must be signed by it (re-read per ticket, so
    /// a CA rotation applies at once).
    ca_file: std::path::PathBuf,
    /// This node's blinding key towards each configured peer (derived from its one key).
    blinds: HashMap<String, PeerBlind>,
    /// One exchange at a time per peer, from the budget check to the answer: concurrent
    /// requests cannot all pass the read-only check and get blinding work the budget then
    /// pays for only once (an honest sender has one exchange in flight anyway).
    turns: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    peers: HashSet<String>,
    oracle: Limit,
    resync: Limit,
    counters: Counters,
    /// The node's clock: budget refills and audit times.
    clock: Arc<dyn Clock>,
}

impl PeerService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        federation: Federation,
        region: String,
        cert_file: std::path::PathBuf,
        ca_file: std::path::PathBuf,
        blind_key: BlindKey,
        peers: HashSet<String>,
        oracle: Limit,
        resync: Limit,
        counters: Counters,
        clock: Arc<dyn Clock>,
    ) -> PeerService {
        let blinds = peers.iter().map(|p| (p.clone(), blind_key.towards(p))).collect();
        let turns = peers.iter().map(|p| (p.clone(), Arc::default())).collect();
        PeerService {
            inner: Arc::new(Inner {
                federation,
                region,
                cert_file,
                ca_file,
                blinds,
                turns,
                peers,
                oracle,
                resync,
                counters,
                clock,
            }),
        }
    }

    /// The buckets of a node's `[federation]` config. The resync flag is the peer's claim,
    /// so the bulk budget is per day: a join or a re-key a day, not a standing allowance
    /// for a peer that probes.
    pub fn limits(fed: &crate::config::Federation) -> (Limit, Limit) {
        (
            Limit::per_hour(fed.oracle_budget_per_hour, fed.oracle_refill_per_hour),
            Limit::per_day(fed.resync_budget_per_day, fed.resync_budget_per_day),
        )
    }

    /// What an exchange of `n` publishes costs the peer: `n` tokens of its `kind` bucket
    /// and, for a bulk publish, `n` uses of its ticket.
    fn charge(&self, region: &str, kind: &'static str, n: u64, ticket: Option<Ticket>) -> Charge {
        let limit = if kind == "resync" { self.inner.resync } else { self.inner.oracle };
        Charge { peer: region.to_owned(), kind, n, ticket, limit, now: self.inner.clock.now() }
    }

    /// Whether the charge fits what the store holds now, read without writing: an
    /// exchange that does not fit is refused before anything is blinded for it. The
    /// charge is taken for real in the transaction that applies the exchange
    /// ([`Charge::take`]), so two concurrent exchanges of one peer never spend the same
    /// token twice.
    fn fits(&self, charge: &Charge) -> Result<bool, FederationError> {
        let store = self.inner.federation.store();
        if let Some(t) = &charge.ticket {
            if store.ticket_used(&charge.peer, &t.serial)?.saturating_add(charge.n) > t.children {
                return Ok(false);
            }
        }
        let stored = store.budget(&charge.peer, charge.kind)?.map(|(tokens, at_ms)| Bucket { tokens, at_ms });
        Ok(charge.limit.take(stored, charge.now.timestamp_millis(), charge.n).is_ok())
    }

    /// Counts and logs a refusal for the budget or the ticket.
    fn over_budget(&self, region: &RegionId, kind: &str, publishes: u64, e: &FederationError, counters: &PeerCounters) {
        if matches!(e, FederationError::OverBudget { .. } | FederationError::Ticket { .. }) {
            counters.budget_rejections.fetch_add(1, Ordering::Relaxed);
            warn!(peer = %region, publishes, kind, "peer over its blind budget; refused and audited");
        }
    }

    /// The resync ticket a bulk publish must carry: signed by the federation CA, valid now,
    /// for the calling region. A refusal is audited.
    async fn check_ticket(&self, region: &RegionId, der: &[u8]) -> Result<Ticket, FederationError> {
        let cas = std::fs::read(&self.inner.ca_file).map(|pem| ticket::ca_certs(&pem)).unwrap_or_default();
        match ticket::verify(der, &cas, region.as_str(), self.inner.clock.now()) {
            Ok(t) => Ok(t),
            Err(error) => {
                let subject = format!("region {region}");
                let _ = self
                    .audit(region.as_str(), AuditAction::FederationTicketRefused, &subject, &error.to_string())
                    .await;
                Err(FederationError::Ticket { region: region.to_string(), error })
            }
        }
    }

    /// The calling region: from the certificate, and one of the configured peers.
    async fn caller<T>(&self, req: &Request<T>, claimed: &str) -> Result<RegionId, FederationError> {
        let region = require_region(req).map_err(FederationError::Identity)?;
        let subject = format!("region {region}");
        if !self.inner.peers.contains(&region) {
            let _ = self.audit(&region, AuditAction::FederationRefused, &subject, "not a configured peer").await;
            warn!(peer = %region, "a node certificate of an unconfigured region was refused");
            return Err(FederationError::NotAPeer { region, own: self.inner.region.clone() });
        }
        if claimed != region {
            let _ =
                self.audit(&region, AuditAction::FederationRefused, &subject, "message claimed another region").await;
            warn!(peer = %region, claimed, "peer message claims another region; refused");
            return Err(FederationError::ClaimMismatch { claimed: claimed.to_owned(), region });
        }
        RegionId::parse(&region)
            .map_err(|e| FederationError::Identity(Status::permission_denied(format!("certificate region: {e}"))))
    }

    /// This node's key towards a configured peer (every configured peer has one).
    fn blind_for(&self, region: &RegionId) -> Result<&PeerBlind, FederationError> {
        self.inner
            .blinds
            .get(region.as_str())
            .ok_or_else(|| FederationError::NotAPeer { region: region.to_string(), own: self.inner.region.clone() })
    }

    async fn audit(
        &self,
        region: &str,
        action: AuditAction,
        subject: &str,
        detail: &str,
    ) -> Result<(), crate::store::StoreError> {
        self.inner.federation.store().audit_event(&format!("region:{region}"), action, subject, detail).await
    }

    /// One exchange: identify the caller from its certificate, then [`Self::exchange_from`].
    async fn exchange(&self, req: Request<pb::ExchangeRequest>) -> Result<pb::ExchangeResponse, FederationError> {
        let claimed = req.get_ref().from_region.clone();
        let region = self.caller(&req, &claimed).await?;
        self.exchange_from(&region, req.into_inner()).await
    }

    /// An exchange of a peer already identified, for in-process drivers (the fuzz target
    /// `exchange_apply` applies bytes to a real store through it). The gRPC handler always
    /// identifies the caller from its certificate first; this still refuses a region that
    /// is not a configured peer.
    #[cfg(feature = "kit")]
    pub(crate) async fn exchange_identified(
        &self,
        region: &RegionId,
        r: pb::ExchangeRequest,
    ) -> Result<pb::ExchangeResponse, FederationError> {
        if !self.inner.peers.contains(region.as_str()) {
            return Err(FederationError::NotAPeer { region: region.to_string(), own: self.inner.region.clone() });
        }
        self.exchange_from(region, r).await
    }

    /// One exchange of the identified peer `region`: validate everything, take the budget,
    /// blind the batch, apply.
    async fn exchange_from(
        &self,
        region: &RegionId,
        r: pb::ExchangeRequest,
    ) -> Result<pb::ExchangeResponse, FederationError> {
        let region = region.clone();
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(FederationError::Version {
                got: r.protocol_version,
                major: PROTOCOL_VERSION,
                minor: PROTOCOL_MINOR,
            });
        }
        if r.items.len() > MAX_ITEMS {
            return Err(FederationError::bad(format!("at most {MAX_ITEMS} items per exchange")));
        }
        if r.epoch == 0 {
            return Err(FederationError::bad("epoch 0 is not a store epoch; send the epoch of the sending store"));
        }
        let turn = self.inner.turns.get(region.as_str()).cloned().unwrap_or_default();
        let _turn = turn.lock().await;
        let counters = self.inner.counters.get(region.as_str()).cloned().unwrap_or_default();
        // Validate everything first: a bad item refuses the request, unchanged.
        let mut items = Vec::with_capacity(r.items.len());
        let mut last_seq = 0;
        for item in r.items {
            if item.seq <= last_seq {
                return Err(FederationError::bad("item sequence numbers must increase"));
            }
            last_seq = item.seq;
            items.push((item.seq, item_in(item.body, &region, r.protocol_minor > PROTOCOL_MINOR)?));
        }
        let points: Vec<Blinded> = items.iter().filter_map(|(_, i)| i.publish().map(|p| p.point)).collect();
        let publishes = points.len() as u64;
        // A bad point is bad input: refused before it costs the peer a token. Each point
        // is decoded once, here, for blinding and proving alike.
        let decoded = crate::pseudonym::decode_points(&points)
            .map_err(|_| FederationError::bad("publish.point is not a valid ristretto255 point"))?;
        // The budget before any blinding: a refused request gets no blinded value back,
        // and no scalar multiplication is spent on it.
        let kind = if r.resync { "resync" } else { "oracle" };
        let charge = if publishes > 0 {
            // A bulk publish needs the CA's ticket for the caller; it is checked before any
            // token is taken, and counted against its N in the same write as the tokens.
            let ticket = match r.resync {
                true => Some(self.check_ticket(&region, &r.resync_ticket).await.inspect_err(|e| {
                    counters.budget_rejections.fetch_add(1, Ordering::Relaxed);
                    warn!(peer = %region, publishes, error = %e, "peer's bulk publish refused for its resync ticket");
                })?),
                false => None,
            };
            let charge = self.charge(region.as_str(), kind, publishes, ticket);
            if self.fits(&charge)? {
                Some(charge)
            } else {
                // Refused, and audited, in a write of its own (should the bucket have
                // refilled meanwhile, that write takes the charge and the exchange goes on).
                self.inner
                    .federation
                    .store()
                    .write(move |tx| charge.take(tx))
                    .await?
                    .inspect_err(|e| self.over_budget(&region, kind, publishes, e, &counters))?;
                None
            }
        } else {
            None
        };
        let blind = self.blind_for(&region)?;
        let mut blinded = blind.key().blind_decoded(&decoded).into_iter();
        for (_, item) in items.iter_mut() {
            if let Item::Publish(p) = item {
                p.blinded = blinded.next().ok_or_else(|| FederationError::bad("blinding lost an item"))?;
            }
        }
        counters.items_received.fetch_add(items.len() as u64, Ordering::Relaxed);
        let points: HashMap<u64, (Blinded, curve25519_dalek::ristretto::RistrettoPoint)> = items
            .iter()
            .filter_map(|(seq, i)| i.publish().map(|p| (*seq, p.point)))
            .zip(decoded)
            .map(|((seq, point), q)| (seq, (point, q)))
            .collect();
        let own = self.inner.region.as_str();
        let answers =
            self.inner.federation.apply_exchange(&region, own, r.epoch, items, charge).await.inspect_err(|e| {
                if let FederationError::Store(e) = e {
                    warn!(peer = %region, error = %e, "applying a peer exchange failed");
                }
                self.over_budget(&region, kind, publishes, e, &counters);
            })?;
        let granted = if r.resync { &counters.resync_blinds } else { &counters.oracle_blinds };
        granted.fetch_add(publishes, Ordering::Relaxed);
        if answers.iter().any(|a| a.resync_requested) {
            let (federation, peer) = (self.inner.federation.clone(), region.to_string());
            tokio::spawn(async move {
                match federation.join_peer(&peer).await {
                    Ok(n) => {
                        tracing::info!(%peer, children = n, "peer asked for a resync after a restore: children queued")
                    }
                    Err(e) => warn!(%peer, error = %e, "queueing the resync a peer asked for failed"),
                }
            });
        }
        // One proof for every blinded answer, in order: that each is its publish's point
        // times this node's key (invariant 9: the asker applies nothing it cannot verify).
        let (mut inputs, mut decoded, mut outputs) = (Vec::new(), Vec::new(), Vec::new());
        for a in &answers {
            if let (Some((point, q)), Some(d)) = (points.get(&a.seq), a.blinded) {
                inputs.push(*point);
                decoded.push(*q);
                outputs.push(d);
            }
        }
        let proof = if inputs.is_empty() {
            Vec::new()
        } else {
            let context = crate::dleq::virfed_context(own, region.as_str(), r.epoch)
                .map_err(|e| FederationError::bad(format!("proof context: {e}")))?;
            let rng = &mut rand::thread_rng();
            crate::dleq::prove_decoded(blind.key(), &decoded, &inputs, &outputs, &context, rng)
                .map_err(|e| FederationError::Store(crate::store::StoreError::Failed(format!("proving answers: {e}"))))?
                .to_bytes()
                .to_vec()
        };
        Ok(pb::ExchangeResponse {
            public_key: crate::dleq::public_key(blind.key()).to_vec(),
            proof,
            as_of_seq: answers.first().map_or(0, |a| a.as_of),
            results: answers
                .into_iter()
                .map(|a| pb::ItemResult {
                    seq: a.seq,
                    blinded: a.blinded.map(|b| b.to_vec()).unwrap_or_default(),
                    gone: a.gone,
                    contacts: a.contacts.iter().map(party_out).collect(),
                    contacts_archived: a.contacts_archived,
                })
                .collect(),
        })
    }
}

/// The cost of one exchange to the peer (see [`PeerService::fits`]).
pub struct Charge {
    peer: String,
    kind: &'static str,
    n: u64,
    ticket: Option<Ticket>,
    limit: Limit,
    now: chrono::DateTime<chrono::Utc>,
}

impl Charge {
    /// Takes the charge inside a store write: the bucket is stored when granted (with the
    /// `federation.resync` audit entry for a resync, naming its ticket, whose use count
    /// grows by `n` in the same write); when refused nothing is taken and the
    /// `federation.budget-exceeded` (or `federation.ticket-refused`, for a used-up ticket)
    /// entry is written instead, and the refusal is the value. The writer runs one job at a
    /// time and each reads what the one before wrote, so a token is never spent twice.
    pub fn take(&self, tx: &crate::store::Tx<'_>) -> crate::store::TxResult<Result<(), FederationError>> {
        let Charge { peer, kind, n, ticket, limit, now } = self;
        let (n, now_ms) = (*n, now.timestamp_millis());
        let (actor, subject) = (format!("region:{peer}"), format!("region {peer}"));
        let per = if *kind == "resync" { "daily" } else { "hourly" };
        if let Some(t) = ticket {
            let used = tx.ticket_used(peer, &t.serial)?;
            if used.saturating_add(n) > t.children {
                let error = TicketError::UsedUp { serial: t.serial.clone(), children: t.children, used, asked: n };
                tx.log(*now, &actor, AuditAction::FederationTicketRefused, &subject, &error.to_string())?;
                return Ok(Err(FederationError::Ticket { region: peer.clone(), error }));
            }
        }
        let stored = tx.budget(peer, kind)?.map(|(tokens, at_ms)| Bucket { tokens, at_ms });
        match limit.take(stored, now_ms, n) {
            Ok(b) => {
                tx.put_budget(peer, kind, b.tokens, b.at_ms)?;
                if let Some(t) = ticket {
                    let used = tx.ticket_used(peer, &t.serial)? + n;
                    tx.set_ticket_used(peer, &t.serial, used)?;
                    let detail = format!(
                        "{n} children blinded for a join, re-key or restore under ticket {} ({used} of {} used)",
                        t.serial, t.children
                    );
                    tx.log(*now, &actor, AuditAction::FederationResync, &subject, &detail)?;
                }
                Ok(Ok(()))
            }
            Err(left) => {
                let detail = format!(
                    "{kind} budget: {n} blind requests refused, {} tokens left (capacity {}, {} per {})",
                    left.floor(),
                    limit.capacity,
                    limit.refill,
                    if *kind == "resync" { "day" } else { "hour" },
                );
                tx.log(*now, &actor, AuditAction::FederationBudgetExceeded, &subject, &detail)?;
                Ok(Err(FederationError::OverBudget { region: peer.clone(), kind, per }))
            }
        }
    }
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn exchange(&self, req: Request<pb::ExchangeRequest>) -> Result<Response<pb::ExchangeResponse>, Status> {
        Ok(Response::new(PeerService::exchange(self, req).await?))
    }

    async fn ping(&self, req: Request<pb::PingRequest>) -> Result<Response<pb::PingResponse>, Status> {
        let claimed = req.get_ref().from_region.clone();
        let region = self.caller(&req, &claimed).await?;
        let public_key = crate::dleq::public_key(self.blind_for(&region)?.key()).to_vec();
        Ok(Response::new(pb::PingResponse {
            public_key,
            region: self.inner.region.clone(),
            protocol_version: PROTOCOL_VERSION,
            software_version: env!("CARGO_PKG_VERSION").into(),
            cert_not_after: cert_not_after(&self.inner.cert_file).unwrap_or(0),
            protocol_minor: PROTOCOL_MINOR,
        }))
    }
}
