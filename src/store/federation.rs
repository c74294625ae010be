//! Federation state in the store: per-peer pseudonym indexes, cross-region pairs and the
//! durable per-peer outbox. All of it is changed inside the same transactions as the
//! local change that causes it, so a signal and the messages about it commit together.
//!
//! ## Keys in the `fed` tree (one tree, a tag byte per kind)
//!
//! | key                               | value | meaning |
//! |-----------------------------------|-------|---------|
//! | `P` child                         | `P·a` | my child's blinded point (for new peers and re-key) |
//! | `H` peer 0 handle                 | child | my handle for a child towards `peer` |
//! | `B` peer 0 D                      | child | my child blinded for `peer`: `D = P·a·b` |
//! | `L` child peer                    | D     | link from my child to its `B` entry |
//! | `I` peer 0 D                      | [`RemoteEntry`] | `peer`'s child blinded by me (my index of the peer) |
//! | `J` peer 0 handle                 | D     | link from the peer's handle to its `I` entry |
//! | `X` child 0 peer                  | [`CrossPair`] | the pair of my child with the peer's child |
//! | `S` peer                          | [`PeerSeen`] | highest item applied from the peer (idempotency) |
//!
//! A match between my child `y` and a peer's child exists exactly when the same `D` is in
//! `B` (mine, blinded for the peer) and `I` (the peer's, blinded by me) and both are
//! active. Each side checks that when the second of the two entries arrives, inside the
//! writer's transaction, so of two concurrent registrations the later one always sees the
//! earlier (see `docs/protocol.md`).
//!
//! The `outbox` tree holds `peer 0 seq → OutItem`, delivered in order by
//! `federation::delivery` and removed only in the transaction that applies the peer's
//! answer.

use serde::{Deserialize, Serialize};

use super::{encode, prefixed, ChildRecord, Tx, TxResult};
use crate::domain::{ChildKey, NoticeKind, OrgId, Party, RegionId, Signal};
use crate::pseudonym::{BlindKey, Blinded, Handle};

/// Tags of the `fed` tree.
const P: u8 = b'P';
const H: u8 = b'H';
const B: u8 = b'B';
const L: u8 = b'L';
const I: u8 = b'I';
const J: u8 = b'J';
const X: u8 = b'X';
const S: u8 = b'S';

/// A peer's child in my index of that peer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteEntry {
    pub handle: Handle,
    pub active: bool,
    /// The point the peer sent (`P·b`), kept so a re-key can recompute `D`.
    pub point: Blinded,
}

/// Where a pair of my child and a peer's child stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairState {
    /// Both sides active: a match (D5).
    Matched,
    /// Not (or no longer) a match; kept for history markers and early contacts.
    Idle,
}

/// A pair of my child with a peer's child.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CrossPair {
    pub state: PairState,
    pub peer_handle: Handle,
    /// The peer's parties known here (their contact details), region set.
    pub remote_parties: Vec<Party>,
    /// Contacts that arrived before this side saw the match; applied when it does.
    pub pending: Vec<Party>,
    /// Local organisations that already had their cross-region history notice (D6).
    pub history_notified: Vec<OrgId>,
}

/// Idempotency state per peer: items up to `last_seq` of `epoch` are applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerSeen {
    pub epoch: u64,
    pub last_seq: u64,
    /// Earlier epochs of the peer's store: requests from them are refused.
    pub retired: Vec<u64>,
}

/// An outgoing item, as queued in the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OutItem {
    /// `child` stays local: it is how the answer is applied.
    Publish {
        child: ChildKey,
        handle: Handle,
        point: Blinded,
        active: bool,
        resync: bool,
    },
    State {
        handle: Handle,
        active: bool,
    },
    Remove {
        handle: Handle,
    },
    Contacts {
        from: Handle,
        to: Handle,
        archived: bool,
        parties: Vec<Party>,
    },
    PartyGone {
        from: Handle,
        to: Handle,
        org: OrgId,
    },
    /// After a re-key: the peer's child under its handle `to` now blinds to `blinded`.
    Reblind {
        to: Handle,
        blinded: Blinded,
    },
    /// After a restore from backup: the peer should publish every child to me again.
    ResyncRequest,
}

/// An outbox value: the item and when it was queued (for the outbox-age health figure).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Queued {
    pub at_ms: i64,
    pub item: OutItem,
}

/// An incoming item, with the receiver's answer for publishes already computed.
#[derive(Clone, Debug)]
pub enum InItem {
    Publish {
        handle: Handle,
        point: Blinded,
        active: bool,
        blinded: Blinded,
    },
    State {
        handle: Handle,
        active: bool,
    },
    Remove {
        handle: Handle,
    },
    Contacts {
        from: Handle,
        to: Handle,
        archived: bool,
        parties: Vec<Party>,
    },
    PartyGone {
        from: Handle,
        to: Handle,
        org: OrgId,
    },
    Reblind {
        to: Handle,
        blinded: Blinded,
    },
    ResyncRequest,
    /// An item kind from a newer protocol minor version: acknowledged, not applied.
    Unknown,
}

/// The receiver's answer to one item.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemAnswer {
    pub seq: u64,
    pub blinded: Option<Blinded>,
    pub gone: bool,
    /// For a publish that completed a pair at the receiver: its contacts (D5).
    pub contacts: Vec<Party>,
    /// The sender asked for a resync (local only: the receiver then re-joins it).
    pub resync_requested: bool,
}

/// What applying one incoming item produced.
#[derive(Clone, Debug, Default)]
pub struct Incoming {
    pub gone: bool,
    pub contacts: Vec<Party>,
    pub resync_requested: bool,
}

/// Whether a child has active signals, only archived ones, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildState {
    None,
    Archived,
    Active,
}

pub(super) fn child_state(rec: &ChildRecord) -> ChildState {
    if !rec.active.is_empty() {
        ChildState::Active
    } else if !rec.archived.is_empty() {
        ChildState::Archived
    } else {
        ChildState::None
    }
}

fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![tag];
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn peer_key(tag: u8, peer: &str, rest: &[u8]) -> Vec<u8> {
    key(tag, &[peer.as_bytes(), &[0], rest])
}

fn pair_key(child: &ChildKey, peer: &str) -> Vec<u8> {
    key(X, &[&child.0, &[0], peer.as_bytes()])
}

/// What changed about a local child, for [`Tx::fed_child_changed`].
pub(super) struct ChildChange<'a> {
    pub child: &'a ChildKey,
    pub before: ChildState,
    pub after: ChildState,
    /// `P·a`, known when the change is a registration.
    pub point: Option<Blinded>,
    /// A new local party on an already active child.
    pub added: Option<Party>,
    /// A local organisation that stopped signalling a still active child.
    pub removed_org: Option<OrgId>,
}

impl Tx<'_> {
    fn fed_get<T: serde::de::DeserializeOwned>(&self, k: &[u8], what: &'static str) -> TxResult<Option<T>> {
        Self::get(self.fed, k, what)
    }

    fn peers(&self) -> Vec<String> {
        self.fed_ctx.as_ref().map(|c| c.peers.clone()).unwrap_or_default()
    }

    fn my_handle(&self, peer: &str, child: &ChildKey) -> Option<Handle> {
        self.fed_ctx.as_ref().map(|c| c.key.handle(peer, child))
    }

    /// Appends an item to the peer's outbox.
    pub(super) fn enqueue(&self, peer: &str, item: &OutItem) -> TxResult<()> {
        let mut counter = self.outbox_seq.borrow_mut();
        let seq = match *counter {
            Some(s) => s,
            None => super::read_u64(&self.meta.get(super::META_OUTBOX_SEQ)?),
        } + 1;
        *counter = Some(seq);
        let queued = Queued { at_ms: chrono::Utc::now().timestamp_millis(), item: item.clone() };
        self.outbox.insert(prefixed(peer, &seq.to_be_bytes()), encode(&queued))?;
        Ok(())
    }

    /// Parties of the child's local signals (active or archived).
    fn local_parties(&self, ids: &[(crate::domain::SignalId, OrgId)]) -> TxResult<Vec<Party>> {
        let signals = self.signals_of(ids)?;
        self.parties(&signals)
    }

    /// Remote parties of every matched pair of the child (for a new local reporter, D5).
    pub(super) fn remote_parties_of(&self, child: &ChildKey) -> TxResult<Vec<Party>> {
        let mut out = Vec::new();
        for peer in self.peers() {
            if let Some(pair) = self.fed_get::<CrossPair>(&pair_key(child, &peer), "cross pair")? {
                if pair.state == PairState::Matched {
                    out.extend(pair.remote_parties);
                }
            }
        }
        Ok(out)
    }

    /// For a join or resync: publishes the child to `peer` unless it is gone, deciding on its
    /// state inside this transaction. Returns whether it did.
    pub(super) fn join_publish(&self, peer: &str, child: &ChildKey, point: Blinded) -> TxResult<bool> {
        let record = self.child(child)?;
        if self.fed_ctx.is_none() {
            return Ok(false);
        }
        if child_state(&record) == ChildState::None {
            return Ok(false);
        }
        // Published before (a resync request after the peer's restore) or not: publishing
        // again is idempotent at the peer and brings its index up to date.
        self.publish(peer, child, point, !record.active.is_empty(), true)?;
        Ok(true)
    }

    /// Publishes one child to one peer.
    pub(super) fn publish(
        &self,
        peer: &str,
        child: &ChildKey,
        point: Blinded,
        active: bool,
        resync: bool,
    ) -> TxResult<()> {
        let Some(handle) = self.my_handle(peer, child) else { return Ok(()) };
        self.fed.insert(peer_key(H, peer, &handle), &child.0)?;
        self.enqueue(peer, &OutItem::Publish { child: *child, handle, point, active, resync })
    }

    /// The federation side of a local change: messages to every peer, local pair updates.
    pub(super) fn fed_child_changed(&self, change: ChildChange<'_>, at: chrono::DateTime<chrono::Utc>) -> TxResult<()> {
        // Nothing to tell peers about a child this node never had (an erasure of an
        // unknown BSN), and nothing at all without a federation context.
        if self.fed_ctx.is_none() || (change.before, change.after) == (ChildState::None, ChildState::None) {
            return Ok(());
        }
        let child = change.child;
        let record = self.child(child)?;
        // A child known before this node had a blinding point (registered before the
        // federation was configured) is published on its first registration with one.
        let unpublished =
            change.after != ChildState::None && change.point.is_some() && self.fed.get(key(P, &[&child.0]))?.is_none();
        for peer in self.peers() {
            let Some(handle) = self.my_handle(&peer, child) else { continue };
            if unpublished {
                if let Some(point) = change.point {
                    self.publish(&peer, child, point, change.after == ChildState::Active, false)?;
                }
                continue;
            }
            match (change.before, change.after) {
                (ChildState::None, ChildState::Active | ChildState::Archived) => {
                    if let Some(point) = change.point {
                        self.publish(&peer, child, point, change.after == ChildState::Active, false)?;
                    }
                }
                (_, ChildState::None) => {
                    self.enqueue(&peer, &OutItem::Remove { handle })?;
                    self.forget_child_for_peer(&peer, child, &handle, at)?;
                }
                (ChildState::Archived, ChildState::Active) | (ChildState::Active, ChildState::Archived) => {
                    let active = change.after == ChildState::Active;
                    self.enqueue(&peer, &OutItem::State { handle, active })?;
                    if let Some(d) = self.fed_get::<Blinded>(&key(L, &[&child.0, peer.as_bytes()]), "link")? {
                        self.reconcile(&peer, child, &d, &record, at)?;
                    }
                }
                (ChildState::Active, ChildState::Active) => {
                    let Some(pair) = self.fed_get::<CrossPair>(&pair_key(child, &peer), "cross pair")? else {
                        continue;
                    };
                    if pair.state != PairState::Matched {
                        continue;
                    }
                    if let Some(party) = &change.added {
                        let item = OutItem::Contacts {
                            from: handle,
                            to: pair.peer_handle,
                            archived: false,
                            parties: vec![party.clone()],
                        };
                        self.enqueue(&peer, &item)?;
                    }
                    if let Some(org) = &change.removed_org {
                        self.enqueue(
                            &peer,
                            &OutItem::PartyGone { from: handle, to: pair.peer_handle, org: org.clone() },
                        )?;
                    }
                }
                _ => {}
            }
        }
        if change.after == ChildState::None {
            self.fed.remove(key(P, &[&child.0]))?;
        } else if let (true, Some(point)) = (unpublished, change.point) {
            self.fed.insert(key(P, &[&child.0]), &point)?;
        }
        Ok(())
    }

    fn forget_child_for_peer(
        &self,
        peer: &str,
        child: &ChildKey,
        handle: &Handle,
        at: chrono::DateTime<chrono::Utc>,
    ) -> TxResult<()> {
        if let Some(mut pair) = self.fed_get::<CrossPair>(&pair_key(child, peer), "cross pair")? {
            if pair.state == PairState::Matched {
                self.end_pair(peer, &mut pair, &ChildRecord::default(), at)?;
            }
        }
        self.fed.remove(peer_key(H, peer, handle))?;
        let link = key(L, &[&child.0, peer.as_bytes()]);
        if let Some(d) = self.fed.remove(link)? {
            self.fed.remove(peer_key(B, peer, &d))?;
        }
        self.fed.remove(pair_key(child, peer))?;
        Ok(())
    }

    /// Re-evaluates the pair of my child with whatever the peer holds under `d`: forms a
    /// match (and sends my contacts) when both are active, ends it when either stopped.
    fn reconcile(
        &self,
        peer: &str,
        child: &ChildKey,
        d: &Blinded,
        record: &ChildRecord,
        at: chrono::DateTime<chrono::Utc>,
    ) -> TxResult<Option<Vec<Party>>> {
        let mut sent = None;
        let remote: Option<RemoteEntry> = self.fed_get(&peer_key(I, peer, d), "peer index")?;
        let pk = pair_key(child, peer);
        let mut pair: Option<CrossPair> = self.fed_get(&pk, "cross pair")?;
        let own = child_state(record);
        let Some(my_handle) = self.my_handle(peer, child) else { return Ok(None) };
        match (own, remote) {
            (ChildState::Active, Some(entry)) if entry.active => {
                let mut p = pair.take().unwrap_or(CrossPair {
                    state: PairState::Idle,
                    peer_handle: entry.handle,
                    remote_parties: vec![],
                    pending: vec![],
                    history_notified: vec![],
                });
                if p.state != PairState::Matched {
                    p.state = PairState::Matched;
                    p.peer_handle = entry.handle;
                    let parties = self.local_parties(&record.active)?;
                    self.enqueue(
                        peer,
                        &OutItem::Contacts {
                            from: my_handle,
                            to: entry.handle,
                            archived: false,
                            parties: parties.clone(),
                        },
                    )?;
                    sent = Some(parties);
                    self.log(at, "system:matcher", "federation.match", &format!("region {peer}"), "pair matched")?;
                    let pending = std::mem::take(&mut p.pending);
                    if !pending.is_empty() {
                        self.add_remote_parties(&mut p, record, pending, at)?;
                    }
                }
                self.fed.insert(pk, encode(&p))?;
            }
            (ChildState::Archived, Some(entry)) if entry.active => {
                // D6 across borders: the peer's new reporter learns of my archived ones. Not
                // when my child just went from matched to archived: that ends a match, and
                // the peer's reporters did not signal a child with only archived signals.
                let was_matched = pair.as_ref().is_some_and(|p| p.state == PairState::Matched);
                if !was_matched {
                    let parties = self.local_parties(&record.archived)?;
                    self.enqueue(
                        peer,
                        &OutItem::Contacts { from: my_handle, to: entry.handle, archived: true, parties },
                    )?;
                }
                if let Some(mut p) = pair {
                    if was_matched {
                        self.end_pair(peer, &mut p, record, at)?;
                    }
                    p.pending.clear();
                    self.fed.insert(pk, encode(&p))?;
                }
            }
            _ => {
                if let Some(mut p) = pair {
                    if p.state == PairState::Matched {
                        self.end_pair(peer, &mut p, record, at)?;
                    }
                    // Contacts held for a pair that is not (or no longer) there are stale.
                    p.pending.clear();
                    self.fed.insert(pk, encode(&p))?;
                }
            }
        }
        Ok(sent)
    }

    /// A matched pair ends: my active reporters learn it (D7).
    fn end_pair(
        &self,
        peer: &str,
        pair: &mut CrossPair,
        record: &ChildRecord,
        at: chrono::DateTime<chrono::Utc>,
    ) -> TxResult<()> {
        pair.state = PairState::Idle;
        pair.pending.clear();
        let gone = std::mem::take(&mut pair.remote_parties);
        if !gone.is_empty() {
            if record.active.is_empty() {
                // My side ended it: no local reporter is left to tell, the officer still is.
                self.notify_match_officer_with(NoticeKind::MatchEnded, &[], &gone, at)?;
            } else {
                self.notify_locals(NoticeKind::MatchEnded, record, &gone, at)?;
            }
        }
        self.log(at, "system:matcher", "federation.match-ended", &format!("region {peer}"), "pair ended")
    }

    /// Notices to every local active reporter of the child and the match officer.
    fn notify_locals(
        &self,
        kind: NoticeKind,
        record: &ChildRecord,
        remote: &[Party],
        at: chrono::DateTime<chrono::Utc>,
    ) -> TxResult<()> {
        let locals: Vec<Signal> = self.signals_of(&record.active)?;
        for signal in &locals {
            self.notify_reporter(kind, signal, remote.to_vec(), at)?;
        }
        let involved: Vec<&Signal> = locals.iter().collect();
        self.notify_match_officer_with(kind, &involved, remote, at)
    }

    fn add_remote_parties(
        &self,
        pair: &mut CrossPair,
        record: &ChildRecord,
        parties: Vec<Party>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> TxResult<()> {
        let mut fresh = Vec::new();
        for party in parties {
            if let Some(known) = pair.remote_parties.iter_mut().find(|p| p.org_id == party.org_id) {
                *known = party;
            } else {
                pair.remote_parties.push(party.clone());
                fresh.push(party);
            }
        }
        if !fresh.is_empty() {
            self.notify_locals(NoticeKind::MatchCreated, record, &fresh, at)?;
        }
        Ok(())
    }

    /// Applies one item from `peer` (already de-duplicated by sequence number).
    pub(super) fn apply_incoming(
        &self,
        peer: &RegionId,
        item: &InItem,
        at: chrono::DateTime<chrono::Utc>,
    ) -> TxResult<Incoming> {
        let peer = peer.as_str();
        let mut done = Incoming::default();
        match item {
            InItem::Publish { handle, point, active, blinded } => {
                if let Some(old) = self.fed_get::<Blinded>(&peer_key(J, peer, handle), "peer handle")? {
                    if old != *blinded {
                        self.fed.remove(peer_key(I, peer, &old))?;
                    }
                }
                let entry = RemoteEntry { handle: *handle, active: *active, point: *point };
                self.fed.insert(peer_key(I, peer, blinded), encode(&entry))?;
                self.fed.insert(peer_key(J, peer, handle), blinded)?;
                // When this publish completes a pair, my contacts go back with the answer
                // (and, for reliability, through the outbox as well; duplicates are no-ops).
                done.contacts = self.reconcile_remote(peer, blinded, at)?.unwrap_or_default();
            }
            InItem::State { handle, active } => {
                if let Some(d) = self.fed_get::<Blinded>(&peer_key(J, peer, handle), "peer handle")? {
                    if let Some(mut entry) = self.fed_get::<RemoteEntry>(&peer_key(I, peer, &d), "peer index")? {
                        entry.active = *active;
                        self.fed.insert(peer_key(I, peer, &d), encode(&entry))?;
                        self.reconcile_remote(peer, &d, at)?;
                    }
                }
            }
            InItem::Remove { handle } => {
                if let Some(d) = self.fed_get::<Blinded>(&peer_key(J, peer, handle), "peer handle")? {
                    self.fed.remove(peer_key(I, peer, &d))?;
                    self.fed.remove(peer_key(J, peer, handle))?;
                    self.reconcile_remote(peer, &d, at)?;
                }
            }
            InItem::Contacts { to, archived, parties, .. } => {
                done.gone = self.receive_contacts(peer, to, *archived, parties, at)?;
            }
            InItem::Reblind { to, blinded } => {
                // The sender re-keyed: my child now has a new D towards it. Only ever forms
                // a pair; a pair ends only on an explicit State, Remove or local change.
                if let Some(child) = self.fed_get::<[u8; 32]>(&peer_key(H, peer, to), "own handle")? {
                    self.apply_publish_answer(peer, &ChildKey(child), blinded, at)?;
                }
            }
            InItem::Unknown => {}
            InItem::ResyncRequest => {
                // Forget that this peer has everything; the join runs after this commit.
                self.meta.remove(format!("{}{peer}", super::META_JOINED).as_bytes())?;
                done.resync_requested = true;
            }
            InItem::PartyGone { to, org, .. } => {
                let Some(child) = self.fed_get::<[u8; 32]>(&peer_key(H, peer, to), "own handle")? else {
                    return Ok(done);
                };
                let child = ChildKey(child);
                let pk = pair_key(&child, peer);
                if let Some(mut pair) = self.fed_get::<CrossPair>(&pk, "cross pair")? {
                    pair.pending.retain(|p| p.org_id != *org);
                    let (gone_parties, kept): (Vec<Party>, Vec<Party>) =
                        std::mem::take(&mut pair.remote_parties).into_iter().partition(|p| p.org_id == *org);
                    pair.remote_parties = kept;
                    let record = self.child(&child)?;
                    if !gone_parties.is_empty() && !record.active.is_empty() {
                        self.notify_locals(NoticeKind::MatchEnded, &record, &gone_parties, at)?;
                    }
                    self.fed.insert(pk, encode(&pair))?;
                }
            }
        }
        Ok(done)
    }

    /// My active parties for the pair under `d`, if it is matched (for a replayed publish).
    pub(super) fn matched_contacts(&self, peer: &str, d: &Blinded) -> TxResult<Vec<Party>> {
        let Some(child) = self.fed_get::<[u8; 32]>(&peer_key(B, peer, d), "own blinded")? else { return Ok(vec![]) };
        let child = ChildKey(child);
        match self.fed_get::<CrossPair>(&pair_key(&child, peer), "cross pair")? {
            Some(pair) if pair.state == PairState::Matched => {
                let record = self.child(&child)?;
                self.local_parties(&record.active)
            }
            _ => Ok(vec![]),
        }
    }

    /// Contact details from the peer for my child under handle `to` (D5, or D6 when
    /// `archived`). Returns true ("gone") when I have no active signal on the child.
    pub(super) fn receive_contacts(
        &self,
        peer: &str,
        to: &Handle,
        archived: bool,
        parties: &[Party],
        at: chrono::DateTime<chrono::Utc>,
    ) -> TxResult<bool> {
        let Some(child) = self.fed_get::<[u8; 32]>(&peer_key(H, peer, to), "own handle")? else {
            return Ok(true);
        };
        let child = ChildKey(child);
        let record = self.child(&child)?;
        if child_state(&record) != ChildState::Active {
            return Ok(true);
        }
        let region = RegionId::parse(peer).ok();
        let parties: Vec<Party> = parties
            .iter()
            .cloned()
            .map(|mut p| {
                p.region = region.clone();
                p
            })
            .collect();
        let pk = pair_key(&child, peer);
        let mut pair: CrossPair = self.fed_get(&pk, "cross pair")?.unwrap_or(CrossPair {
            state: PairState::Idle,
            peer_handle: [0; 16],
            remote_parties: vec![],
            pending: vec![],
            history_notified: vec![],
        });
        if archived {
            self.history_notices(&mut pair, &record, &parties, at)?;
        } else if pair.state == PairState::Matched {
            self.add_remote_parties(&mut pair, &record, parties, at)?;
        } else {
            // The peer saw the match first; hold its contacts until this side does.
            for party in parties {
                pair.pending.retain(|p| p.org_id != party.org_id);
                pair.pending.push(party);
            }
        }
        self.fed.insert(pk, encode(&pair))?;
        Ok(false)
    }

    /// After a change to the peer's entry `d`: re-evaluate my child under `d`, if any.
    fn reconcile_remote(
        &self,
        peer: &str,
        d: &Blinded,
        at: chrono::DateTime<chrono::Utc>,
    ) -> TxResult<Option<Vec<Party>>> {
        if let Some(child) = self.fed_get::<[u8; 32]>(&peer_key(B, peer, d), "own blinded")? {
            let child = ChildKey(child);
            let record = self.child(&child)?;
            return self.reconcile(peer, &child, d, &record, at);
        }
        Ok(None)
    }

    /// D6 across borders: each local active reporter's organisation gets one history notice.
    fn history_notices(
        &self,
        pair: &mut CrossPair,
        record: &ChildRecord,
        parties: &[Party],
        at: chrono::DateTime<chrono::Utc>,
    ) -> TxResult<()> {
        if parties.is_empty() {
            return Ok(());
        }
        for signal in self.signals_of(&record.active)? {
            if pair.history_notified.contains(&signal.org) {
                continue;
            }
            self.history_notice(&signal, parties.to_vec(), at)?;
            pair.history_notified.push(signal.org.clone());
        }
        Ok(())
    }

    /// Applies the peer's answer to one of my publishes: records `D` and checks the pair.
    pub(super) fn apply_publish_answer(
        &self,
        peer: &str,
        child: &ChildKey,
        d: &Blinded,
        at: chrono::DateTime<chrono::Utc>,
    ) -> TxResult<()> {
        let link = key(L, &[&child.0, peer.as_bytes()]);
        let record = self.child(child)?;
        if child_state(&record) == ChildState::None {
            return Ok(()); // deleted meanwhile; its Remove follows in the outbox
        }
        if let Some(old) = self.fed_get::<Blinded>(&link, "link")? {
            if old != *d {
                self.fed.remove(peer_key(B, peer, &old))?;
            }
        }
        self.fed.insert(peer_key(B, peer, d), &child.0)?;
        self.fed.insert(link, d)?;
        self.reconcile(peer, child, d, &record, at)?;
        Ok(())
    }

    /// Re-keys everything that depends on this node's blinding key (see `docs/protocol.md`):
    /// my published points, my index of every peer, and queues the exchange that updates
    /// the peers. Pairs are keyed by child and peer, so no match is lost or made twice.
    pub(super) fn rekey(
        &self,
        old: &BlindKey,
        new: &BlindKey,
        points: &[(ChildKey, Blinded)],
        entries: &[(String, Blinded, RemoteEntry)],
    ) -> TxResult<(u64, u64)> {
        let bad = || {
            super::abort(super::OpError::Store(super::StoreError::Failed(
                "a stored point is not a valid ristretto255 point".into(),
            )))
        };
        let mut children = 0;
        for (child, point) in points {
            let Ok(fresh) = old.rekey_point(new, point) else { return bad() };
            self.fed.insert(key(P, &[&child.0]), &fresh)?;
            let active = !self.child(child)?.active.is_empty();
            for peer in self.peers() {
                self.publish(&peer, child, fresh, active, true)?;
            }
            children += 1;
        }
        let mut remote = 0;
        for (peer, d, entry) in entries {
            let Ok(fresh) = new.blind_point(&entry.point) else { return bad() };
            self.fed.remove(peer_key(I, peer, d))?;
            self.fed.insert(peer_key(I, peer, &fresh), encode(entry))?;
            self.fed.insert(peer_key(J, peer, &entry.handle), &fresh)?;
            self.enqueue(peer, &OutItem::Reblind { to: entry.handle, blinded: fresh })?;
            remote += 1;
        }
        Ok((children, remote))
    }

    pub(super) fn peer_seen(&self, peer: &str) -> TxResult<PeerSeen> {
        Ok(self.fed_get(&key(S, &[peer.as_bytes()]), "peer seen")?.unwrap_or_default())
    }

    pub(super) fn set_peer_seen(&self, peer: &str, seen: &PeerSeen) -> TxResult<()> {
        self.fed.insert(key(S, &[peer.as_bytes()]), encode(seen))?;
        Ok(())
    }
}

/// Keys of every stored child point (`P` entries), for a joining peer.
pub(super) fn point_prefix() -> Vec<u8> {
    vec![P]
}

/// Every `I` entry: (peer, D, entry), for re-keying.
pub(super) fn all_peer_entries(tree: &sled::Tree) -> Result<Vec<(String, Blinded, RemoteEntry)>, super::StoreError> {
    let mut out = Vec::new();
    for item in tree.scan_prefix([I]) {
        let (k, v) = item?;
        let rest = &k[1..];
        let Some(split) = rest.iter().position(|b| *b == 0) else { continue };
        let peer = String::from_utf8_lossy(&rest[..split]).into_owned();
        let Ok(d) = <Blinded>::try_from(&rest[split + 1..]) else { continue };
        let entry: RemoteEntry =
            postcard::from_bytes(&v).map_err(|_| super::StoreError::Corrupt { what: "peer index" })?;
        out.push((peer, d, entry));
    }
    Ok(out)
}

/// Scans `I` entries of a peer (for tests and status): count of the peer's children here.
pub(super) fn peer_index_prefix(peer: &str) -> Vec<u8> {
    peer_key(I, peer, &[])
}

pub(super) fn pair_prefix(child: &ChildKey) -> Vec<u8> {
    key(X, &[&child.0, &[0]])
}

/// Prefix of every pair entry.
pub(super) fn all_pairs_prefix() -> Vec<u8> {
    vec![X]
}

/// Number of matched pairs among pair entries.
pub(super) fn count_matched(values: impl Iterator<Item = Vec<u8>>) -> u64 {
    values.filter_map(|v| postcard::from_bytes::<CrossPair>(&v).ok()).filter(|p| p.state == PairState::Matched).count()
        as u64
}

/// Remote parties of every matched pair under a `pair_prefix` scan.
pub(super) fn matched_parties(values: impl Iterator<Item = Vec<u8>>) -> Vec<Party> {
    values
        .filter_map(|v| postcard::from_bytes::<CrossPair>(&v).ok())
        .filter(|p| p.state == PairState::Matched)
        .flat_map(|p| p.remote_parties)
        .collect()
}
