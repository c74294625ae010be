//! [`Federation`]: the pair rules run as durable writes — exchanges received, answers
//! to deliveries, joins, re-keys and the resync after a restore — each one transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;

use super::error::FederationError;
use super::item::{InItem, Item, ItemAnswer, OutItem};
use super::pairs::Pairs;
use crate::domain::{AuditAction, ChildKey, RegionId};
use crate::pseudonym::{BlindKey, Blinded, Handle};
use crate::store::{Outgoing, PeerSeen, Store, StoreError};

/// How many of a peer's earlier store epochs are remembered (and refused). Each restore of
/// the peer's store from a backup retires one; a peer that switches epochs with every
/// exchange only pushes its own oldest ones out.
pub const RETIRED_EPOCHS_KEPT: usize = 32;

/// Children per transaction when a peer joins.
const JOIN_CHUNK: usize = 1000;

/// The node's federation state: its store and the pair rules. Cheap to clone.
#[derive(Clone)]
pub struct Federation {
    store: Store,
    pairs: Pairs,
    /// Per peer with a delivery in flight: the peer's children (by its handles) that items
    /// of the peer's applied since the delivery was sent were about, with the newest such
    /// item's (epoch, sequence number). The peer answered from its state when the delivery
    /// reached it, and its items travel apart from the answer (the other direction, its
    /// own exchanges): an item queued after the answer can be applied here first. Kept in
    /// memory: a crash loses the delivery with it.
    in_flight: Arc<Mutex<HashMap<String, Touched>>>,
}

/// The peer's children (in my index) its applied items were about, each with the newest
/// such item's (epoch, sequence number); past [`TOUCHED_CAP`] children, every answer
/// counts as overtaken (a peer cannot grow this by sending items about many children).
#[derive(Clone, Debug, Default)]
struct Touched {
    handles: HashMap<Handle, (u64, u64)>,
    overflow: bool,
}

/// Children remembered per delivery in flight (a few exchanges' worth).
const TOUCHED_CAP: usize = 4096;

impl Touched {
    fn insert(&mut self, handle: Handle, at: (u64, u64)) {
        if self.handles.len() < TOUCHED_CAP || self.handles.contains_key(&handle) {
            self.handles.insert(handle, at);
        } else {
            self.overflow = true;
        }
    }
}

impl Federation {
    pub fn new(store: Store, pairs: Pairs) -> Federation {
        Federation { store, pairs, in_flight: Default::default() }
    }

    /// A delivery to `peer` is about to be sent: from now on, remember which of the peer's
    /// children its applied items are about, until [`Federation::apply_delivery`] (or
    /// [`Federation::delivery_done`]).
    pub fn delivery_sent(&self, peer: &str) {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(peer.to_owned(), Touched::default());
    }

    /// The delivery to `peer` is over (answered and applied, failed, or given up on).
    pub fn delivery_done(&self, peer: &str) {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(peer);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn pairs(&self) -> &Pairs {
        &self.pairs
    }

    /// Applies items received from `peer`, skipping those already applied (same epoch,
    /// sequence number not above the last applied), all in one transaction, which first
    /// takes the exchange's `charge` (its blind budget): when that is refused, only the
    /// refusal's audit entry is written. `own_region` names this node in the context of
    /// the peer's proofs.
    pub async fn apply_exchange(
        &self,
        peer: &RegionId,
        own_region: &str,
        epoch: u64,
        items: Vec<(u64, InItem)>,
        charge: Option<super::service::Charge>,
    ) -> Result<Vec<ItemAnswer>, FederationError> {
        let context = crate::dleq::virfed_context(peer.as_str(), own_region, epoch)
            .map_err(|e| FederationError::bad(format!("proof context: {e}")))?;
        let (peer, pairs, in_flight) = (peer.clone(), self.pairs.clone(), self.in_flight.clone());
        let now = Utc::now();
        self.store
            .write(move |tx| {
                // The charge first: every blinded request pays, also one that is refused
                // below as superseded (so a peer cannot get free blinding work by sending
                // under an epoch it retired itself).
                if let Some(charge) = &charge {
                    if let Err(refused) = charge.take(tx)? {
                        return Ok(Err(refused));
                    }
                }
                let mut seen: PeerSeen = tx.peer_seen(peer.as_str())?;
                if seen.retired.contains(&epoch) {
                    // A delayed request from a store the peer has since replaced (restore).
                    return Ok(Err(FederationError::Superseded(epoch)));
                }
                if seen.epoch != epoch {
                    let mut retired = std::mem::take(&mut seen.retired);
                    if seen.epoch != 0 {
                        retired.push(seen.epoch);
                        // Rare for an honest peer (one per restore): a peer that keeps
                        // switching shows in the audit log, with as many entries as
                        // epochs are remembered, not one per exchange (an exchange without
                        // publishes costs no budget). The epoch is the peer's number: not
                        // in the entry.
                        if retired.len() <= RETIRED_EPOCHS_KEPT {
                            tx.log(
                                now,
                                &format!("region:{peer}"),
                                AuditAction::FederationPeerEpoch,
                                &format!("region {peer}"),
                                &format!(
                                    "the peer's store started a new epoch; {} earlier ones retired (audited up to {RETIRED_EPOCHS_KEPT})",
                                    retired.len()
                                ),
                            )?;
                        }
                    }
                    // The newest few are enough to catch a delayed request from a replaced
                    // store; a peer that switches epochs without end cannot grow the record.
                    let excess = retired.len().saturating_sub(RETIRED_EPOCHS_KEPT);
                    retired.drain(..excess);
                    seen = PeerSeen { epoch, last_seq: 0, retired };
                }
                let mut answers = Vec::with_capacity(items.len());
                let mut applied = 0u64;
                let (mut replayed, mut replayed_contacts) = (0u64, 0u64);
                for (seq, item) in &items {
                    let mut answer = ItemAnswer { seq: *seq, ..ItemAnswer::default() };
                    if *seq > seen.last_seq {
                        let done = pairs.apply_incoming(tx, &peer, item, &context, now)?;
                        if let Some(handle) = item.about() {
                            if tx.remote_handle(peer.as_str(), handle)?.is_some() {
                                let mut in_flight = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                                if let Some(touched) = in_flight.get_mut(peer.as_str()) {
                                    touched.insert(*handle, (epoch, *seq));
                                }
                            }
                        }
                        answer.blinded = item.publish().map(|p| p.blinded);
                        answer.gone = done.gone;
                        answer.contacts = done.contacts;
                        answer.contacts_archived = done.contacts_archived;
                        answer.resync_requested = done.resync_requested;
                        seen.last_seq = *seq;
                        applied += 1;
                    } else if let Some(p) = item.publish() {
                        // A replayed publish is answered from what the first one stored: the
                        // same D, and my contacts when the pair is matched (the first answer
                        // may be what got lost). A replay that changes the point gets no D: a
                        // replay is no way round the applied, audited path.
                        replayed += 1;
                        let stored = match tx.remote_handle(peer.as_str(), &p.handle)? {
                            Some(d) => tx.remote(peer.as_str(), &d)?.map(|e| (d, e.point)),
                            None => None,
                        };
                        answer.blinded = match stored {
                            Some((d, point)) if point == p.point => Some(d),
                            Some(_) => None,
                            // Removed since: the entry is gone, the answer is the point's D
                            // (blinded and counted against the budget like any publish).
                            None => Some(p.blinded),
                        };
                        if let Some(d) = answer.blinded {
                            answer.contacts = pairs.matched_contacts(tx, peer.as_str(), &d, now)?;
                        }
                    } else if let Item::Contacts { from, to, archived: false, .. } = item {
                        // A replayed live Contacts item is answered from the pair as it is now,
                        // as the first one was: the first answer, the peer's only way to hear my
                        // contacts if it detected the pair second, may be what got lost (found
                        // by the model of the pair protocol: a lost answer, a retry, and one
                        // side of the pair never had the other's contacts).
                        replayed_contacts += 1;
                        answer.contacts = pairs.replayed_contacts(tx, peer.as_str(), from, to, now)?;
                    }
                    answers.push(answer);
                }
                if replayed + replayed_contacts > 0 {
                    tx.log(
                        now,
                        &format!("region:{peer}"),
                        AuditAction::FederationReplay,
                        &format!("region {peer}"),
                        &format!("{replayed} publishes and {replayed_contacts} contacts replayed"),
                    )?;
                }
                tx.put_peer_seen(peer.as_str(), &seen)?;
                // Every item I queue for the peer after these answers is newer than them.
                let as_of = tx.outbox_seq()?;
                for answer in &mut answers {
                    answer.as_of = as_of;
                }
                if applied > 0 {
                    tx.log(
                        now,
                        &format!("region:{peer}"),
                        AuditAction::FederationExchange,
                        &format!("region {peer}"),
                        &format!("{applied} items"),
                    )?;
                }
                Ok(Ok(answers))
            })
            .await?
    }

    /// Applies the peer's answers to delivered items: removes them from the outbox and
    /// records the blinded values of publishes, detecting matches, in one transaction.
    /// `key`: the public key the answers were proven under, pinned if none is yet.
    ///
    /// The peer's contacts in an answer are applied only if no item of the peer's about
    /// the same child of its, newer than the answer (above its `as_of`), was applied here
    /// while the delivery was in flight (see [`Federation::delivery_sent`]): the answer
    /// would undo it (a party the peer has since said is gone would come back, announced
    /// a second time). Then my contacts go to the peer again instead, and its reply tells
    /// its state as of then ([`Pairs::stale_contacts`]).
    pub async fn apply_delivery(
        &self,
        peer: &str,
        delivered: Vec<(Outgoing<OutItem>, ItemAnswer)>,
        key: Option<Blinded>,
    ) -> Result<(), StoreError> {
        let (peer, pairs, in_flight) = (peer.to_owned(), self.pairs.clone(), self.in_flight.clone());
        let name = peer.clone();
        let now = Utc::now();
        let written = self
            .store
            .write(move |tx| {
                // Read in the transaction: the writer orders it after every exchange applied
                // before it, and none applied after it can be older than the answer. A copy,
                // and the entry goes only after the write, so a re-run of this closure sees
                // the same.
                let touched =
                    in_flight.lock().unwrap_or_else(|p| p.into_inner()).get(&peer).cloned().unwrap_or_default();
                let epoch = tx.peer_seen(&peer)?.epoch;
                // Whether an applied item about the peer's child `handle` is newer than `answer`
                // (with no `as_of` stated, any item applied meanwhile may be).
                let overtaken = |handle: &Handle, answer: &ItemAnswer| match touched.handles.get(handle) {
                    None => touched.overflow,
                    Some(&(e, seq)) => answer.as_of == 0 || e != epoch || seq > answer.as_of,
                };
                if let Some(key) = &key {
                    pairs.pin_key(tx, &peer, key, now)?;
                }
                for (out, answer) in &delivered {
                    tx.remove_outbox(&peer, out.seq)?;
                    if let Some(handle) = out.item.about() {
                        if tx.queued_about(&peer, handle)? == Some(out.seq) {
                            tx.remove_queued_about(&peer, handle)?;
                        }
                    }
                    // A "gone" answer is not acted on: it may describe an older state than the
                    // pair now has; the peer's in-order State or Remove ends the match.
                    match &out.item {
                        Item::Publish(p) => {
                            let Some(d) = answer.blinded else { continue };
                            let first = pairs.apply_publish_answer(tx, &peer, &p.child, &d, now)?;
                            // The peer's contacts for the pair it detected, from its child that
                            // blinds to the same D; applied only if this node now detects the
                            // same pair itself.
                            if !answer.contacts.is_empty() {
                                if let Some(entry) = tx.remote(&peer, &d)? {
                                    let (contacts, archived) = (&answer.contacts, answer.contacts_archived);
                                    if overtaken(&entry.handle, answer) {
                                        pairs.stale_contacts(tx, &peer, &entry.handle, &p.handle, archived, now)?;
                                    } else {
                                        let their = &entry.handle;
                                        pairs.receive_contacts(tx, &peer, their, &p.handle, archived, contacts, now)?;
                                    }
                                }
                            }
                            // With the child's own match settled, family parties cross.
                            if first {
                                pairs.child_linked(tx, &peer, &p.child, now)?;
                            }
                        }
                        // The peer's own contacts in reply to mine (see `Pairs::apply_incoming`).
                        Item::Contacts { from, to, archived: false, .. } if !answer.contacts.is_empty() => {
                            if overtaken(to, answer) {
                                pairs.stale_contacts(tx, &peer, to, from, false, now)?;
                            } else {
                                pairs.receive_contacts(tx, &peer, to, from, false, &answer.contacts, now)?;
                            }
                        }
                        _ => {}
                    }
                }
                Ok(())
            })
            .await;
        self.delivery_done(&name);
        written
    }

    /// Pins the public key a peer announced in its ping, if none is pinned yet.
    pub async fn pin_peer_key(&self, peer: &str, key: Blinded) -> Result<(), StoreError> {
        let (peer, pairs) = (peer.to_owned(), self.pairs.clone());
        self.store.write(move |tx| pairs.pin_key(tx, &peer, &key, Utc::now())).await
    }

    /// Queues every child for a peer this node has never published to (join, resync).
    /// Returns the number of children queued. Resumable: each chunk commits on its own and
    /// the marker is set only at the end.
    pub async fn join_peer(&self, peer: &str) -> Result<u64, StoreError> {
        if self.store.joined(peer)? {
            return Ok(0);
        }
        let points: Vec<(ChildKey, Blinded)> = self.store.points()?;
        let total = points.len();
        let mut queued = 0u64;
        for chunk in points.chunks(JOIN_CHUNK) {
            let (chunk, target, pairs) = (chunk.to_vec(), peer.to_owned(), self.pairs.clone());
            // Each child's state is decided inside the chunk's transaction, so a child
            // erased or archived meanwhile is not published with a stale state.
            queued += self
                .store
                .write(move |tx| {
                    let mut n = 0u64;
                    for (child, point) in &chunk {
                        n += u64::from(pairs.join_publish(tx, &target, child, *point)?);
                    }
                    Ok(n)
                })
                .await?;
            tracing::info!(peer, queued, total, "resync: children queued for the new peer");
        }
        let peer = peer.to_owned();
        self.store
            .write(move |tx| {
                tx.set_joined(&peer, true)?;
                tx.log(Utc::now(), "system:federation", AuditAction::FederationJoin, &format!("region {peer}"), "")
            })
            .await?;
        Ok(queued)
    }

    /// Re-keys the blinding (see `docs/protocol.md`, and `virfed rekey`): recomputes every
    /// stored point and index entry under `new` and queues the exchange that updates every
    /// peer, in one transaction, and records `new`'s fingerprint. Returns (children, peer
    /// entries) re-keyed.
    pub async fn rekey(&self, own_region: &str, old: &BlindKey, new: &BlindKey) -> Result<(u64, u64), StoreError> {
        let points = self.store.points()?;
        let entries = self.store.remote_entries()?;
        let epoch = self.store.epoch()?;
        let (old, new, pairs, own) = (old.clone(), new.clone(), self.pairs.clone(), own_region.to_owned());
        self.store
            .write(move |tx| {
                let context = |peer: &str| crate::dleq::virfed_context(&own, peer, epoch).unwrap_or_default();
                let counts = pairs.rekey(tx, &old, &new, &points, &entries, &context)?;
                tx.set_blind_fingerprint(&new.fingerprint())?;
                tx.log(
                    Utc::now(),
                    "operator:rekey",
                    AuditAction::FederationRekey,
                    "blinding key",
                    &format!("{} children, {} peer entries", counts.0, counts.1),
                )?;
                Ok(counts)
            })
            .await
    }

    /// After a restore: asks every peer for a resync and forgets which peers have all of
    /// this node's children, so both directions are published again. Returns whether it
    /// was needed.
    pub async fn resync_after_restore(&self) -> Result<bool, StoreError> {
        if !self.store.resync_after_restore_pending()? {
            return Ok(false);
        }
        let peers = self.pairs.peers().to_vec();
        self.store
            .write(move |tx| {
                for peer in &peers {
                    tx.set_joined(peer, false)?;
                    tx.enqueue(peer, &OutItem::ResyncRequest)?;
                }
                tx.clear_resync_after_restore()?;
                let action = AuditAction::FederationResyncAfterRestore;
                tx.log(Utc::now(), "system:restore", action, "all peers", "")?;
                Ok(true)
            })
            .await
    }
}
