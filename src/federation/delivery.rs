//! Outbox delivery: one task per peer drains that peer's durable outbox, in order.
//!
//! The task takes the first items (up to [`super::MAX_ITEMS`], of one kind: regular or
//! resync), sends them in one `Exchange`, and applies the answers and removes the items in
//! one store transaction. Nothing leaves the outbox before the peer has acknowledged it, so
//! a crash of either side at any point only leads to a re-send, which the peer recognises
//! by sequence number (invariant 5). Failures back off exponentially with jitter, from
//! 200 ms to 60 s, and the task wakes as soon as new items are committed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::item::{Item, ItemAnswer, OutItem};
use super::{item_out, Federation, PeerCounters, MAX_ITEMS, PROTOCOL_MINOR, PROTOCOL_VERSION};
use crate::backoff::Backoff;
use crate::pb::federation as pb;
use crate::pb::federation::peer_client::PeerClient;
use curve25519_dalek::ristretto::RistrettoPoint;

use crate::pseudonym::{Blinded, PeerBlind};
use crate::shutdown::Shutdown;
use crate::store::Outgoing;

/// How to reach one peer.
pub struct PeerLink {
    pub region: String,
    pub own_region: String,
    pub client: PeerClient<tonic::transport::Channel>,
    pub counters: Arc<PeerCounters>,
    /// This node's blinding towards the peer: publishes leave the outbox as base points
    /// `P·k` and go out as `P·k_B`.
    pub blind: PeerBlind,
    /// This node's resync ticket file, sent with bulk publishes (re-read for each).
    pub resync_ticket: Option<std::path::PathBuf>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest a peer may take to answer one exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

fn is_resync(item: &OutItem) -> bool {
    matches!(item, Item::Publish(p) if p.resync)
}

/// Runs until `shutdown` flips.
pub async fn run(federation: Federation, mut link: PeerLink, mut shutdown: Shutdown) {
    let store = federation.store().clone();
    let epoch = match store.epoch() {
        Ok(e) => e,
        Err(e) => {
            warn!(peer = %link.region, error = %e, "cannot read the store epoch; delivery stopped");
            return;
        }
    };
    ping(&federation, &mut link).await;
    let mut wake = store.subscribe_outbox();
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    // Halved after a budget refusal, so a peer with a small budget still takes what fits.
    let mut batch_limit = MAX_ITEMS;
    let mut was_failing = false;
    loop {
        wake.borrow_and_update();
        let batch = match store.outbox_batch(&link.region, MAX_ITEMS) {
            Ok(b) => b,
            Err(e) => {
                warn!(peer = %link.region, error = %e, "cannot read the outbox");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! {
                changed = wake.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(PING_INTERVAL) => ping(&federation, &mut link).await,
                _ = shutdown.recv() => return,
            }
            continue;
        }
        let resync = is_resync(&batch[0].item);
        let mut batch: Vec<Outgoing<OutItem>> =
            batch.into_iter().take_while(|o| is_resync(&o.item) == resync).take(batch_limit).collect();
        let published = match towards_peer(&link.blind, &mut batch) {
            Ok(points) => points,
            Err(e) => {
                link.counters.failed(format!("cannot blind the outbox for the peer: {e}"));
                warn!(peer = %link.region, "a stored child point does not decode; delivery paused");
                tokio::select! {
                    _ = tokio::time::sleep(MAX_BACKOFF) => continue,
                    _ = shutdown.recv() => return,
                }
            }
        };
        let resync_ticket = match (&link.resync_ticket, resync) {
            (Some(path), true) => crate::pki::ticket::read_ticket_file(path).unwrap_or_else(|e| {
                warn!(peer = %link.region, error = %e, "cannot read this node's resync ticket; sending the resync without one");
                Vec::new()
            }),
            _ => Vec::new(),
        };
        let request = pb::ExchangeRequest {
            protocol_version: PROTOCOL_VERSION,
            protocol_minor: PROTOCOL_MINOR,
            from_region: link.own_region.clone(),
            epoch,
            resync,
            resync_ticket,
            items: batch.iter().map(|o| item_out(o.seq, &o.item)).collect(),
        };
        link.counters.delivery_attempts.fetch_add(1, Ordering::Relaxed);
        federation.delivery_sent(&link.region);
        // A peer that keeps the connection alive but never answers does not stall the
        // link (HTTP/2 keepalive only catches a dead connection).
        let sent = tokio::select! {
            r = tokio::time::timeout(EXCHANGE_TIMEOUT, link.client.exchange(request)) => r.unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(format!("no answer within {} s", EXCHANGE_TIMEOUT.as_secs())))
            }),
            _ = shutdown.recv() => {
                federation.delivery_done(&link.region);
                return;
            }
        };
        let failure = match sent {
            Ok(resp) => {
                let resp = resp.into_inner();
                let pinned = store.peer_key(&link.region).ok().flatten();
                let paired = crate::domain::RegionId::parse(&link.region)
                    .map_err(|e| e.to_string())
                    .and_then(|region| answers_in(batch, resp, &published, pinned, &region, &link.own_region, epoch));
                if let Err(why) = &paired {
                    let action = if why.starts_with(PROOF_REFUSED) {
                        link.counters.proof_failures.fetch_add(1, Ordering::Relaxed);
                        Some(crate::domain::AuditAction::FederationProofRefused)
                    } else if why.starts_with(KEY_UNANNOUNCED) {
                        Some(crate::domain::AuditAction::FederationPeerKey)
                    } else {
                        None
                    };
                    if let Some(action) = action {
                        let (actor, subject) = (format!("region:{}", link.region), format!("region {}", link.region));
                        let _ = store.audit_event(&actor, action, &subject, why).await;
                    }
                }
                match paired {
                    Ok((delivered, key)) => {
                        let n = delivered.len() as u64;
                        match federation.apply_delivery(&link.region, delivered, key).await {
                            Ok(()) => {
                                link.counters.items_delivered.fetch_add(n, Ordering::Relaxed);
                                link.counters.succeeded();
                                if was_failing {
                                    info!(peer = %link.region, "peer reachable again; catching up");
                                }
                                was_failing = false;
                                backoff.reset();
                                batch_limit = (batch_limit * 2).min(MAX_ITEMS);
                                debug!(peer = %link.region, items = n, "delivered");
                                None
                            }
                            Err(e) => Some(format!("applying the answers failed: {e}")),
                        }
                    }
                    Err(e) => Some(e),
                }
            }
            Err(status) => {
                if status.code() == tonic::Code::ResourceExhausted {
                    batch_limit = (batch_limit / 2).max(1);
                }
                Some(format!("{:?}: {}", status.code(), super::peer_text(status.message(), super::MAX_ERROR_TEXT)))
            }
        };
        if let Some(reason) = failure {
            federation.delivery_done(&link.region);
            link.counters.failed(reason.clone());
            if !was_failing {
                warn!(peer = %link.region, %reason, "delivery to peer failed; retrying with backoff");
            }
            was_failing = true;
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.recv() => return,
            }
        }
    }
}

/// How often an idle link pings its peer (liveness, round trip, versions, expiry).
const PING_INTERVAL: Duration = Duration::from_secs(15);

/// Turns the batch's publishes from base points `P·k` into what the peer gets, `P·k_B`
/// (one batch of multiplications, outside the store's writer). Returns those points, in
/// the batch's order, for checking the peer's proof.
pub(crate) fn towards_peer(
    blind: &PeerBlind,
    batch: &mut [Outgoing<OutItem>],
) -> Result<Vec<RistrettoPoint>, crate::pseudonym::BadPoint> {
    let base: Vec<Blinded> = batch.iter().filter_map(|o| o.item.publish().map(|p| p.point)).collect();
    let (encoded, points) = blind.publish_points(&base)?;
    let mut sent = encoded.into_iter();
    for out in batch.iter_mut() {
        if let Item::Publish(p) = &mut out.item {
            p.point = sent.next().ok_or(crate::pseudonym::BadPoint)?;
        }
    }
    Ok(points)
}

/// Pings the peer and records what it said, or why it did not answer. The public key the
/// peer announces for its answers to this node is pinned on first contact.
pub async fn ping(federation: &Federation, link: &mut PeerLink) {
    let started = std::time::Instant::now();
    let request = pb::PingRequest {
        from_region: link.own_region.clone(),
        protocol_version: PROTOCOL_VERSION,
        software_version: env!("CARGO_PKG_VERSION").into(),
        protocol_minor: PROTOCOL_MINOR,
    };
    match tokio::time::timeout(Duration::from_secs(10), link.client.ping(request)).await {
        Ok(Ok(resp)) => {
            let resp = resp.into_inner();
            if let Ok(key) = <Blinded>::try_from(resp.public_key.as_slice()) {
                if crate::dleq::is_public_key(&key) {
                    if let Err(e) = federation.pin_peer_key(&link.region, key).await {
                        warn!(peer = %link.region, error = %e, "cannot pin the peer's blinding key");
                    }
                }
            }
            link.counters.rtt_micros.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            link.counters.succeeded();
            let mut info = link.counters.info.lock().unwrap_or_else(|p| p.into_inner());
            info.protocol_version = Some(resp.protocol_version);
            info.software_version = Some(super::peer_text(&resp.software_version, super::MAX_VERSION_TEXT));
            info.cert_not_after = (resp.cert_not_after > 0).then_some(resp.cert_not_after);
            if resp.protocol_version != PROTOCOL_VERSION {
                // The peer's numbers, through peer_text like its other texts.
                info.last_error = Some(super::peer_text(
                    &format!(
                        "incompatible peer: it speaks protocol {}.{}, this node {PROTOCOL_VERSION}.{PROTOCOL_MINOR}; upgrade the older node",
                        resp.protocol_version, resp.protocol_minor
                    ),
                    super::MAX_ERROR_TEXT,
                ));
                link.counters.connected.store(false, Ordering::Relaxed);
                warn!(peer = %link.region, theirs = resp.protocol_version, ours = PROTOCOL_VERSION, "peer speaks an incompatible protocol major version; exchanges will be refused until one side is upgraded");
            } else if resp.protocol_minor != PROTOCOL_MINOR {
                tracing::info!(peer = %link.region, theirs = resp.protocol_minor, ours = PROTOCOL_MINOR, "peer is one protocol minor version apart; compatible");
            }
        }
        Ok(Err(status)) => link.counters.failed(format!(
            "ping: {:?}: {}",
            status.code(),
            super::peer_text(status.message(), super::MAX_ERROR_TEXT)
        )),
        Err(_) => link.counters.failed("ping: no answer within 10 s".into()),
    }
}

/// How a refused proof's failure text starts (counted and audited apart from transport errors).
const PROOF_REFUSED: &str = "the peer's blinded answers are not proven";
/// How a refusal of answers under a key other than the pinned one starts (audited).
const KEY_UNANNOUNCED: &str = "the peer answered under a blinding key it has not announced";

/// Items sent with the peer's answers to them.
pub(crate) type Delivered = Vec<(Outgoing<OutItem>, ItemAnswer)>;

/// The peer's answer to `batch`, read: every result paired with the item it answers
/// ([`pair_answers`]) and the proof checked ([`verify_answers`]). Bytes from a peer that
/// may be hostile: the items with their verified answers, or why the whole answer is
/// refused (nothing of it is applied). Also the fuzz target `exchange_answer`'s entry.
pub(crate) fn answers_in(
    batch: Vec<Outgoing<OutItem>>,
    response: pb::ExchangeResponse,
    published: &[RistrettoPoint],
    pinned: Option<Blinded>,
    peer: &crate::domain::RegionId,
    own_region: &str,
    epoch: u64,
) -> Result<(Delivered, Option<Blinded>), String> {
    let delivered = pair_answers(batch, response.results, response.as_of_seq, peer)?;
    let context = crate::dleq::virfed_context(peer.as_str(), own_region, epoch)
        .map_err(|e| format!("{PROOF_REFUSED}: {e}; nothing applied, the batch is retried"))?;
    let key = verify_answers(&delivered, published, &response.public_key, &response.proof, pinned, &context)?;
    Ok((delivered, key))
}

/// Checks the one DLEQ proof of an exchange's answers (RFC 9497 §2.2): every blinded answer
/// to a publish is the published point times the key behind the peer's public key, and
/// that key is the one pinned for the peer. A batch that fails is refused whole; nothing
/// of it is applied. Returns the key to pin when none is pinned yet.
fn verify_answers(
    delivered: &[(Outgoing<OutItem>, ItemAnswer)],
    published: &[RistrettoPoint],
    public_key: &[u8],
    proof: &[u8],
    pinned: Option<Blinded>,
    context: &[u8],
) -> Result<Option<Blinded>, String> {
    // Every publish of the batch has an answer (`pair_answers`), so the publishes and the
    // points they were made from line up one to one.
    let publishes = delivered.iter().filter_map(|(out, answer)| match &out.item {
        Item::Publish(p) => Some((p.point, answer.blinded)),
        _ => None,
    });
    let publishes: Vec<(Blinded, Option<Blinded>)> = publishes.collect();
    if publishes.len() != published.len() {
        return Err(format!(
            "{PROOF_REFUSED}: {} publishes answered for {} sent; nothing applied, the batch is retried",
            publishes.len(),
            published.len()
        ));
    }
    let (mut inputs, mut decoded, mut outputs) = (Vec::new(), Vec::new(), Vec::new());
    for ((point, answer), q) in publishes.into_iter().zip(published) {
        if let Some(d) = answer {
            inputs.push(point);
            decoded.push(*q);
            outputs.push(d);
        }
    }
    if inputs.is_empty() {
        return Ok(None);
    }
    let refused = |e: String| format!("{PROOF_REFUSED}: {e}; nothing applied, the batch is retried");
    let public_key: [u8; 32] = public_key.try_into().map_err(|_| refused("no public key in the answer".into()))?;
    if let Some(pinned) = pinned.filter(|p| *p != public_key) {
        // A re-key announces its key before anything is proven under it; until the
        // announcement arrives the answers wait (an honest re-key takes seconds).
        return Err(format!(
            "{KEY_UNANNOUNCED} ({}; {} is pinned and no re-key was announced); nothing applied, retried",
            super::pairs::key_fingerprint(&public_key),
            super::pairs::key_fingerprint(&pinned),
        ));
    }
    crate::dleq::verify_decoded(&public_key, &decoded, &inputs, &outputs, proof, context)
        .map_err(|e| refused(e.to_string()))?;
    Ok(pinned.is_none().then_some(public_key))
}

/// Matches the peer's answers to the items sent, refusing an answer that does not fit.
fn pair_answers(
    batch: Vec<Outgoing<OutItem>>,
    results: Vec<pb::ItemResult>,
    as_of: u64,
    region: &crate::domain::RegionId,
) -> Result<Vec<(Outgoing<OutItem>, ItemAnswer)>, String> {
    if results.len() != batch.len() {
        return Err(format!("peer answered {} of {} items", results.len(), batch.len()));
    }
    batch
        .into_iter()
        .zip(results)
        .map(|(out, r)| {
            if r.seq != out.seq {
                return Err(format!("peer answered item {} for item {}", r.seq, out.seq));
            }
            let blinded = match &out.item {
                Item::Publish(_) => Some(
                    <[u8; 32]>::try_from(r.blinded.as_slice())
                        .map_err(|_| "peer sent a malformed blinded value".to_string())?,
                ),
                _ => None,
            };
            let contacts = match &out.item {
                Item::Publish(_) | Item::Contacts { .. } => r
                    .contacts
                    .into_iter()
                    .map(|p| super::party_in(p, region).map_err(|e| format!("peer sent bad contacts: {e}")))
                    .collect::<Result<Vec<_>, _>>()?,
                _ => Vec::new(),
            };
            Ok((
                out,
                ItemAnswer {
                    seq: r.seq,
                    blinded,
                    gone: r.gone,
                    contacts,
                    contacts_archived: r.contacts_archived,
                    resync_requested: false,
                    as_of,
                },
            ))
        })
        .collect()
}
