//! Cross-region pairs: the protocol's rules over a store transaction.
//!
//! A match between my child and a peer's child exists exactly when the same `D` is in my
//! child's entry blinded for the peer (`B`) and in my index of the peer (`I`), and both
//! are active (see `store::keys::Fed` for the entries). Each side checks that when the
//! second of the two entries arrives, inside the writer's transaction, so of two
//! concurrent registrations the later one always sees the earlier. [`Pairs::reconcile`]
//! is that check; [`Pairs::end_pair`] ends a match; the rest apply local changes
//! ([`FederationHook`]) and peer items ([`Pairs::apply_incoming`]) through them.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::item::{InItem, Incoming, Item, OutItem, OutPublish};
use crate::domain::{AuditAction, ChildKey, NoticeKind, ParentKey, Party, RegionId};
use crate::pseudonym::{BlindKey, Blinded, Handle, LocalKey, PeerBlind};
use crate::registry::notices::{self, Notify};
use crate::registry::{family, ChildChange, ChildState, FederationHook};
use crate::store::{ChildRecord, CrossPair, PairState, RemoteEntry, StoreError, Tx, TxResult};

/// Contacts a reconcile sent to the peer: for a match (D5) or, `archived`, my earlier
/// reporters for the peer's new one (D6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub parties: Vec<Party>,
    pub archived: bool,
}

/// What became of contact details a peer sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactsOutcome {
    Applied,
    /// I have no active signal on the child (any more).
    Gone,
    /// Not for a pair this node detected: audited, nothing applied.
    Refused,
}

/// What the pair rules need to speak for this node: its peers, its local key (for
/// per-peer handles) and its blinding towards each peer (to check a re-key's proofs
/// against what was published to that peer). Cheap to clone.
#[derive(Clone)]
pub struct Pairs {
    peers: Arc<Vec<String>>,
    key: LocalKey,
    blinds: Arc<HashMap<String, PeerBlind>>,
}

impl Pairs {
    /// `blind`: the node's blinding key (`None` for a store tool that never verifies a
    /// peer's re-key).
    pub fn new(peers: Vec<String>, key: LocalKey, blind: Option<&BlindKey>) -> Pairs {
        let blinds = blind.map(|b| peers.iter().map(|p| (p.clone(), b.towards(p))).collect()).unwrap_or_default();
        Pairs { peers: Arc::new(peers), key, blinds: Arc::new(blinds) }
    }

    /// Pins `key` as the public key of `peer`'s answers to this node, unless one is pinned
    /// already (first contact; a re-key's announcement replaces it, see
    /// [`Pairs::apply_incoming`]).
    pub fn pin_key(&self, tx: &Tx<'_>, peer: &str, key: &Blinded, at: DateTime<Utc>) -> TxResult<()> {
        if tx.peer_key(peer)?.is_some() {
            return Ok(());
        }
        tx.set_peer_key(peer, key)?;
        let detail = format!("blinding key {} pinned on first contact", key_fingerprint(key));
        tx.log(at, &format!("region:{peer}"), AuditAction::FederationPeerKey, &format!("region {peer}"), &detail)
    }

    /// What this node published to `peer` for a child whose stored base point is `base`.
    fn published_point(&self, peer: &str, base: &Blinded) -> Option<Blinded> {
        self.blinds.get(peer)?.publish_one(base).ok()
    }

    pub fn peers(&self) -> &[String] {
        &self.peers
    }

    fn handle(&self, peer: &str, child: &ChildKey) -> Handle {
        self.key.handle(peer, child)
    }

    /// Parties of the child's local signals (active or archived ids).
    fn local_parties(
        &self,
        notify: &Notify<'_, '_>,
        tx: &Tx<'_>,
        ids: &[(crate::domain::SignalId, crate::domain::OrgId)],
    ) -> TxResult<Vec<Party>> {
        Ok(notify.reporters(&tx.signals_of(ids)?)?.into_iter().map(|r| r.party).collect())
    }

    /// The contacts a matched pair sends: a child's active parties; for a parent, those on
    /// its children linked to the peer (`registry::family::linked_parties`).
    fn sent_parties(
        &self,
        tx: &Tx<'_>,
        peer: &str,
        subject: &ChildKey,
        record: &ChildRecord,
        at: DateTime<Utc>,
    ) -> TxResult<Vec<Party>> {
        if family::is_parent(tx, subject)? {
            family::linked_parties(tx, &ParentKey(subject.0), peer, at)
        } else {
            self.local_parties(&Notify::new(tx, at), tx, &record.active)
        }
    }

    /// A child's publish to `peer` was answered for the first time (see
    /// `registry::family::linked_to`): family parties cross in both directions now.
    pub fn child_linked(&self, tx: &Tx<'_>, peer: &str, child: &ChildKey, at: DateTime<Utc>) -> TxResult<()> {
        if family::is_parent(tx, child)? {
            return Ok(());
        }
        let send = |parent: &ParentKey, parties: &[Party]| -> TxResult<()> {
            let subject = parent.subject();
            let Some(pair) = tx.pair(&subject, peer)?.filter(CrossPair::is_matched) else { return Ok(()) };
            if parties.is_empty() {
                return Ok(());
            }
            let item = OutItem::Contacts {
                from: self.handle(peer, &subject),
                to: pair.peer_handle,
                archived: false,
                parties: parties.to_vec(),
            };
            self.queue(tx, peer, &item)
        };
        family::linked_to(tx, child, peer, at, &send)
    }

    /// For a join or resync: publishes the child to `peer` unless it is gone, deciding on its
    /// state inside this transaction. Returns whether it did.
    pub fn join_publish(&self, tx: &Tx<'_>, peer: &str, child: &ChildKey, point: Blinded) -> TxResult<bool> {
        let record = subject(tx, child)?;
        if ChildState::of(&record) == ChildState::None {
            return Ok(false);
        }
        // Published before (a resync request after the peer's restore) or not: publishing
        // again is idempotent at the peer and brings its index up to date.
        self.publish(tx, peer, child, point, !record.active.is_empty(), true)?;
        Ok(true)
    }

    /// Publishes one child to one peer.
    fn publish(
        &self,
        tx: &Tx<'_>,
        peer: &str,
        child: &ChildKey,
        point: Blinded,
        active: bool,
        resync: bool,
    ) -> TxResult<()> {
        let handle = self.handle(peer, child);
        tx.put_own_handle(peer, &handle, child)?;
        self.queue(tx, peer, &OutItem::Publish(OutPublish { child: *child, handle, point, active, resync }))
    }

    fn forget_child_for_peer(
        &self,
        tx: &Tx<'_>,
        peer: &str,
        child: &ChildKey,
        handle: &Handle,
        at: DateTime<Utc>,
    ) -> TxResult<()> {
        if let Some(mut pair) = tx.pair(child, peer)? {
            if pair.is_matched() {
                self.end_pair(tx, peer, child, &mut pair, &ChildRecord::default(), at)?;
            }
        }
        tx.remove_own_handle(peer, handle)?;
        if let Some(d) = tx.remove_link(child, peer)? {
            tx.remove_own_blinded(peer, &d)?;
        }
        tx.remove_pair(child, peer)
    }

    /// Re-evaluates the pair of my child with whatever the peer holds under `d`: forms a
    /// match (and sends my contacts) when both are active, ends it when either stopped,
    /// and tells an active peer child about my archived-only one (D6). Returns the contacts
    /// it sent, if any.
    pub fn reconcile(
        &self,
        tx: &Tx<'_>,
        peer: &str,
        child: &ChildKey,
        d: &Blinded,
        record: &ChildRecord,
        at: DateTime<Utc>,
    ) -> TxResult<Option<Sent>> {
        let notify = Notify::new(tx, at);
        let mut sent = None;
        let remote = tx.remote(peer, d)?;
        let mut pair = tx.pair(child, peer)?;
        let my_handle = self.handle(peer, child);
        match (ChildState::of(record), remote) {
            (ChildState::Active, Some(entry)) if entry.active => {
                let mut p = pair.take().unwrap_or_else(|| CrossPair::idle(entry.handle));
                if p.state != PairState::Matched {
                    p.state = PairState::Matched;
                    p.peer_handle = entry.handle;
                    let parties = self.sent_parties(tx, peer, child, record, at)?;
                    let item = OutItem::Contacts {
                        from: my_handle,
                        to: entry.handle,
                        archived: false,
                        parties: parties.clone(),
                    };
                    self.queue(tx, peer, &item)?;
                    sent = Some(Sent { parties, archived: false });
                    let region = format!("region {peer}");
                    let what = if family::is_parent(tx, child)? { "family pair matched" } else { "pair matched" };
                    tx.log(at, "system:matcher", AuditAction::FederationMatch, &region, what)?;
                    // Contacts are only taken for a pair this node detected, never held from
                    // before it did; stores of earlier versions may still hold some.
                    p.pending.clear();
                }
                tx.put_pair(child, peer, &p)?;
            }
            (ChildState::Archived, Some(entry)) if entry.active => {
                // D6 across borders: the peer's new reporter learns of my archived ones. Not
                // when my child just went from matched to archived: that ends a match, and
                // the peer's reporters did not signal a child with only archived signals.
                let was_matched = pair.as_ref().is_some_and(CrossPair::is_matched);
                // History notices stay child-only: a parent's archived signals tell nobody.
                if !was_matched && !family::is_parent(tx, child)? {
                    let parties = self.local_parties(&notify, tx, &record.archived)?;
                    let item = OutItem::Contacts {
                        from: my_handle,
                        to: entry.handle,
                        archived: true,
                        parties: parties.clone(),
                    };
                    self.queue(tx, peer, &item)?;
                    sent = Some(Sent { parties, archived: true });
                }
                if let Some(mut p) = pair {
                    if was_matched {
                        self.end_pair(tx, peer, child, &mut p, record, at)?;
                    }
                    p.pending.clear();
                    tx.put_pair(child, peer, &p)?;
                }
            }
            _ => {
                if let Some(mut p) = pair {
                    if p.is_matched() {
                        self.end_pair(tx, peer, child, &mut p, record, at)?;
                    }
                    // Contacts held for a pair that is not (or no longer) there are stale.
                    p.pending.clear();
                    tx.put_pair(child, peer, &p)?;
                }
            }
        }
        Ok(sent)
    }

    /// A matched pair ends: my active reporters learn it (D7).
    pub fn end_pair(
        &self,
        tx: &Tx<'_>,
        peer: &str,
        child: &ChildKey,
        pair: &mut CrossPair,
        record: &ChildRecord,
        at: DateTime<Utc>,
    ) -> TxResult<()> {
        let notify = Notify::new(tx, at);
        pair.state = PairState::Idle;
        pair.pending.clear();
        let gone = std::mem::take(&mut pair.remote_parties);
        if !gone.is_empty() {
            if record.active.is_empty() {
                // My side ended it: no local reporter is left to tell, the officer still is.
                let kind =
                    if family::is_parent(tx, child)? { NoticeKind::FamilyMatchEnded } else { NoticeKind::MatchEnded };
                notify.officer_only(kind, &gone)?;
            } else {
                tell(tx, at, child, peer, NoticeKind::MatchEnded, record, &gone)?;
            }
        }
        tx.log(at, "system:matcher", AuditAction::FederationMatchEnded, &format!("region {peer}"), "pair ended")
    }

    fn add_remote_parties(
        &self,
        tx: &Tx<'_>,
        at: DateTime<Utc>,
        (peer, child): (&str, &ChildKey),
        pair: &mut CrossPair,
        record: &ChildRecord,
        parties: Vec<Party>,
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
            tell(tx, at, child, peer, NoticeKind::MatchCreated, record, &fresh)?;
        }
        Ok(())
    }

    /// Applies one item from `peer` (already de-duplicated by sequence number).
    /// `context` is the DLEQ context of the peer's proofs in this exchange
    /// ([`crate::dleq::virfed_context`] of the peer, this node and the peer's epoch).
    pub fn apply_incoming(
        &self,
        tx: &Tx<'_>,
        peer: &RegionId,
        item: &InItem,
        context: &[u8],
        at: DateTime<Utc>,
    ) -> TxResult<Incoming> {
        let peer = peer.as_str();
        let mut done = Incoming::default();
        match item {
            Item::Publish(p) => {
                if let Some(old) = tx.remote_handle(peer, &p.handle)? {
                    if old != p.blinded {
                        tx.remove_remote(peer, &old)?;
                    }
                }
                let entry = RemoteEntry { handle: p.handle, active: p.active, point: p.point };
                tx.put_remote(peer, &p.blinded, &entry)?;
                tx.put_remote_handle(peer, &p.handle, &p.blinded)?;
                // When this publish completes a pair, my contacts go back with the answer
                // (and, for reliability, through the outbox as well; duplicates are no-ops),
                // unless older items about my child still wait for the peer: then the
                // queued copy alone goes, after them (see `Pairs::contacts_answer`).
                let behind = match tx.own_blinded(peer, &p.blinded)? {
                    Some(child) => self.waiting_about(tx, peer, &self.handle(peer, &child))?,
                    None => false,
                };
                if let Some(sent) = self.reconcile_remote(tx, peer, &p.blinded, at)? {
                    if !behind {
                        done.contacts = sent.parties;
                        done.contacts_archived = sent.archived;
                    }
                }
            }
            Item::State { handle, active } => {
                if let Some(d) = tx.remote_handle(peer, handle)? {
                    if let Some(mut entry) = tx.remote(peer, &d)? {
                        entry.active = *active;
                        tx.put_remote(peer, &d, &entry)?;
                        self.reconcile_remote(tx, peer, &d, at)?;
                    }
                }
            }
            Item::Remove { handle } => {
                if let Some(d) = tx.remote_handle(peer, handle)? {
                    tx.remove_remote(peer, &d)?;
                    tx.remove_remote_handle(peer, handle)?;
                    self.reconcile_remote(tx, peer, &d, at)?;
                }
            }
            Item::Contacts { from, to, archived, parties } => {
                let outcome = self.receive_contacts(tx, peer, from, to, *archived, parties, at)?;
                done.gone = outcome != ContactsOutcome::Applied;
                if outcome == ContactsOutcome::Applied && !*archived {
                    // In reply, my own contacts for the pair: if the peer detected the match
                    // first, my Contacts to it may have been refused as early.
                    if let Some(child) = tx.own_handle(peer, to)? {
                        let record = subject(tx, &child)?;
                        done.contacts = self.contacts_answer(tx, peer, &child, &record, at)?;
                    }
                }
            }
            Item::ProvenReblind { to, blinded, public_key, proof } => {
                // The sender re-keyed: my child now has a new D towards it, applied only with
                // a proof under the key it announced (pinned) that D is the point I published
                // to it times that key (so no peer can re-blind my child to a D of its
                // choosing). Only ever forms a pair; a pair ends only on an explicit State,
                // Remove or local change.
                let Some(child) = tx.own_handle(peer, to)? else { return Ok(done) };
                let Some(base) = tx.point(&child)? else { return Ok(done) };
                let verdict = match (tx.peer_key(peer)?, self.published_point(peer, &base)) {
                    (Some(pinned), _) if pinned != *public_key => {
                        Err("re-key item under a key the peer has not announced".to_string())
                    }
                    (_, None) => Err("no blinding key towards this peer to check the re-key with".to_string()),
                    (_, Some(point)) => crate::dleq::verify_blinded(public_key, &[point], &[*blinded], proof, context)
                        .map_err(|e| e.to_string()),
                };
                match verdict {
                    Ok(()) => {
                        if self.apply_publish_answer(tx, peer, &child, blinded, at)? {
                            self.child_linked(tx, peer, &child, at)?;
                        }
                    }
                    Err(e) => {
                        let why = format!("re-key item refused: {e}");
                        tx.log(
                            at,
                            &format!("region:{peer}"),
                            AuditAction::FederationProofRefused,
                            &format!("region {peer}"),
                            &why,
                        )?;
                        tracing::warn!(peer, error = %e, "a peer's re-key item failed its check; refused");
                        done.gone = true;
                    }
                }
            }
            Item::KeyAnnounce { public_key } => {
                // The peer re-keyed: its answers to me are proven under the new key from
                // now on. Pinned in place of the old one, audited with both fingerprints.
                let old = tx.peer_key(peer)?;
                if old != Some(*public_key) {
                    tx.set_peer_key(peer, public_key)?;
                    let detail = format!(
                        "re-key announced: blinding key {} replaces {}",
                        key_fingerprint(public_key),
                        old.map(|k| key_fingerprint(&k)).unwrap_or_else(|| "none".into()),
                    );
                    let (actor, subject) = (format!("region:{peer}"), format!("region {peer}"));
                    tx.log(at, &actor, AuditAction::FederationPeerKey, &subject, &detail)?;
                    tracing::info!(peer, fingerprint = %key_fingerprint(public_key), "peer announced a new blinding key; pinned");
                }
            }
            Item::Reblind { .. } => {
                // Protocol 1's unproven form: never applied.
                let why = "re-key item without a proof refused";
                tx.log(
                    at,
                    &format!("region:{peer}"),
                    AuditAction::FederationProofRefused,
                    &format!("region {peer}"),
                    why,
                )?;
                done.gone = true;
            }
            Item::Unknown => {}
            Item::ResyncRequest => {
                // Forget that this peer has everything; the join runs after this commit.
                tx.set_joined(peer, false)?;
                done.resync_requested = true;
            }
            Item::PartyGone { to, org, .. } => {
                let Some(child) = tx.own_handle(peer, to)? else {
                    return Ok(done);
                };
                if let Some(mut pair) = tx.pair(&child, peer)? {
                    let (gone_parties, kept): (Vec<Party>, Vec<Party>) =
                        std::mem::take(&mut pair.remote_parties).into_iter().partition(|p| p.org_id == *org);
                    pair.remote_parties = kept;
                    let record = subject(tx, &child)?;
                    if !gone_parties.is_empty() && !record.active.is_empty() {
                        tell(tx, at, &child, peer, NoticeKind::MatchEnded, &record, &gone_parties)?;
                    }
                    tx.put_pair(&child, peer, &pair)?;
                }
            }
        }
        Ok(done)
    }

    /// My active parties for the pair under `d`, if it is matched (for a replayed publish;
    /// see [`Pairs::contacts_answer`]).
    pub fn matched_contacts(&self, tx: &Tx<'_>, peer: &str, d: &Blinded, at: DateTime<Utc>) -> TxResult<Vec<Party>> {
        let Some(child) = tx.own_blinded(peer, d)? else { return Ok(vec![]) };
        match tx.pair(&child, peer)? {
            Some(pair) if pair.is_matched() => {
                let record = subject(tx, &child)?;
                self.contacts_answer(tx, peer, &child, &record, at)
            }
            _ => Ok(vec![]),
        }
    }

    /// My contacts in answer to a replayed live Contacts item from the peer's child (its
    /// handle `from`) for mine (my handle `to`): as [`Pairs::contacts_answer`] when that is
    /// the pair matched here, nothing otherwise.
    pub fn replayed_contacts(
        &self,
        tx: &Tx<'_>,
        peer: &str,
        from: &Handle,
        to: &Handle,
        at: DateTime<Utc>,
    ) -> TxResult<Vec<Party>> {
        let Some((child, record)) = matched_active(tx, peer, from, to)? else { return Ok(vec![]) };
        self.contacts_answer(tx, peer, &child, &record, at)
    }

    /// Queues `item` for `peer`, remembered as the last item about its child (if it is
    /// about one) until the peer acknowledges it.
    fn queue(&self, tx: &Tx<'_>, peer: &str, item: &OutItem) -> TxResult<()> {
        let seq = tx.enqueue(peer, item)?;
        if let Some(handle) = item.about() {
            tx.put_queued_about(peer, handle, seq)?;
        }
        Ok(())
    }

    /// Whether an item about my child (my `handle` towards `peer`) still waits for the
    /// peer's acknowledgement.
    fn waiting_about(&self, tx: &Tx<'_>, peer: &str, handle: &Handle) -> TxResult<bool> {
        match tx.queued_about(peer, handle)? {
            Some(seq) => tx.outbox_holds(peer, seq),
            None => Ok(false),
        }
    }

    /// My contacts for a matched pair, to answer the peer with (a replayed publish, a
    /// contacts item it sent). An answer tells my current state, while my State, Remove,
    /// Publish and PartyGone items arrive in outbox order: an answer that overtook older
    /// items still queued about the child would be followed by them, and the peer would
    /// replay history it had jumped past (end the pair on a stale "archived", then match
    /// it and announce my parties a second time). So while such items wait, the answer
    /// carries no contacts; they go through the outbox behind those items instead.
    fn contacts_answer(
        &self,
        tx: &Tx<'_>,
        peer: &str,
        child: &ChildKey,
        record: &ChildRecord,
        at: DateTime<Utc>,
    ) -> TxResult<Vec<Party>> {
        let parties = self.sent_parties(tx, peer, child, record, at)?;
        let handle = self.handle(peer, child);
        if !self.waiting_about(tx, peer, &handle)? {
            return Ok(parties);
        }
        // Even when an item already queued carries these contacts, a fresh copy goes behind
        // the rest: that one may reach the peer before it has detected the pair (and be
        // refused as early), and this answer was the peer's way to hear from me.
        let pair = tx.pair(child, peer)?.filter(CrossPair::is_matched);
        if let (Some(pair), false) = (pair, parties.is_empty()) {
            let item = OutItem::Contacts { from: handle, to: pair.peer_handle, archived: false, parties };
            self.queue(tx, peer, &item)?;
        }
        Ok(vec![])
    }

    /// Contact details from the peer's child under its handle `from` for my child under
    /// handle `to` (D5, or D6 when `archived`). Applied only to a pair this node detected
    /// itself: the peer's child is in my index under `from` and blinds to the same `D` as my
    /// child does towards the peer, and its state allows it (both active and matched for
    /// live contacts; the peer's child archived-only for history contacts). "Gone" when I
    /// have no active signal on the child; anything else is refused and audited, and no
    /// notice is made.
    #[allow(clippy::too_many_arguments)]
    pub fn receive_contacts(
        &self,
        tx: &Tx<'_>,
        peer: &str,
        from: &Handle,
        to: &Handle,
        archived: bool,
        parties: &[Party],
        at: DateTime<Utc>,
    ) -> TxResult<ContactsOutcome> {
        let Some(child) = tx.own_handle(peer, to)? else {
            return Ok(ContactsOutcome::Gone);
        };
        let record = subject(tx, &child)?;
        if ChildState::of(&record) != ChildState::Active {
            return Ok(ContactsOutcome::Gone);
        }
        let audit = |why: &str| {
            tx.log(
                at,
                &format!("region:{peer}"),
                AuditAction::FederationContactsRefused,
                &format!("region {peer}"),
                why,
            )
        };
        let refuse = |why: &str| -> TxResult<ContactsOutcome> {
            audit(why)?;
            tracing::warn!(peer, why, "contact details from a peer refused: no pair detected here");
            Ok(ContactsOutcome::Refused)
        };
        let Some(d) = tx.remote_handle(peer, from)? else {
            return refuse("the sender's child is not in this node's index");
        };
        let Some(entry) = tx.remote(peer, &d)?.filter(|e| e.handle == *from) else {
            return refuse("the sender's child is not in this node's index");
        };
        if tx.own_blinded(peer, &d)? != Some(child) {
            if tx.link(&child, peer)?.is_none() {
                // The honest race: the peer saw the pair first and this node has not had the
                // peer's answer for its own child yet. Refused all the same (nothing is held);
                // the contacts arrive again in reply once this node detects the pair itself.
                audit("early: this node has not detected the pair yet")?;
                tracing::debug!(peer, "contact details from a peer before this node detected the pair; refused");
                return Ok(ContactsOutcome::Refused);
            }
            return refuse("the sender's child and this node's child are not a pair");
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
        let notify = Notify::new(tx, at);
        if archived {
            if family::is_parent(tx, &child)? {
                return refuse("history contacts for a family pair (history notices are child-only)");
            }
            if entry.active {
                return refuse("history contacts for a child the sender has active signals on");
            }
            let mut pair = tx.pair(&child, peer)?.unwrap_or_else(|| CrossPair::idle(*from));
            self.history_notices(&notify, tx, &mut pair, &record, &parties)?;
            tx.put_pair(&child, peer, &pair)?;
        } else {
            let Some(mut pair) = tx.pair(&child, peer)?.filter(|p| p.is_matched() && p.peer_handle == *from) else {
                return refuse("contacts for a pair that is not matched here");
            };
            self.add_remote_parties(tx, at, (peer, &child), &mut pair, &record, parties)?;
            tx.put_pair(&child, peer, &pair)?;
        }
        Ok(ContactsOutcome::Applied)
    }

    /// The peer's contacts in an answer to my delivery, for the pair of its child (its
    /// handle `from`) with mine (my handle `to`), while items of the peer's about that
    /// child were applied here as the delivery was in flight: the answer may tell an older
    /// state than those items did, so it is not applied (see
    /// `Federation::apply_delivery`). For a live pair matched here, my contacts go to the
    /// peer again, and its reply brings its contacts as of then; history contacts
    /// (`archived`) are dropped: the items were about a child that has changed since.
    pub fn stale_contacts(
        &self,
        tx: &Tx<'_>,
        peer: &str,
        from: &Handle,
        to: &Handle,
        archived: bool,
        at: DateTime<Utc>,
    ) -> TxResult<()> {
        tracing::debug!(peer, "the peer's contacts in an answer were overtaken by its newer items; asking again");
        if archived {
            return Ok(());
        }
        let Some((child, record)) = matched_active(tx, peer, from, to)? else { return Ok(()) };
        let parties = self.sent_parties(tx, peer, &child, &record, at)?;
        if parties.is_empty() {
            return Ok(());
        }
        self.queue(tx, peer, &OutItem::Contacts { from: *to, to: *from, archived: false, parties })
    }

    /// After a change to the peer's entry `d`: re-evaluate my child under `d`, if any.
    fn reconcile_remote(&self, tx: &Tx<'_>, peer: &str, d: &Blinded, at: DateTime<Utc>) -> TxResult<Option<Sent>> {
        if let Some(child) = tx.own_blinded(peer, d)? {
            let record = subject(tx, &child)?;
            return self.reconcile(tx, peer, &child, d, &record, at);
        }
        Ok(None)
    }

    /// D6 across borders: each local active reporter's organisation gets one history notice.
    fn history_notices(
        &self,
        notify: &Notify<'_, '_>,
        tx: &Tx<'_>,
        pair: &mut CrossPair,
        record: &ChildRecord,
        parties: &[Party],
    ) -> TxResult<()> {
        if parties.is_empty() {
            return Ok(());
        }
        for signal in tx.signals_of(&record.active)? {
            if pair.history_notified.contains(&signal.org) {
                continue;
            }
            let reporter = notify.reporter(&signal)?;
            notify.send(vec![notices::history(&reporter, parties.to_vec())])?;
            pair.history_notified.push(signal.org.clone());
        }
        Ok(())
    }

    /// Applies the peer's answer to one of my publishes: records `D` and checks the pair.
    /// Returns whether this is the subject's first link to the peer (then, once the peer's
    /// contacts in the answer are applied too, call [`Pairs::child_linked`]).
    pub fn apply_publish_answer(
        &self,
        tx: &Tx<'_>,
        peer: &str,
        child: &ChildKey,
        d: &Blinded,
        at: DateTime<Utc>,
    ) -> TxResult<bool> {
        let record = subject(tx, child)?;
        if ChildState::of(&record) == ChildState::None {
            return Ok(false); // deleted meanwhile; its Remove follows in the outbox
        }
        let old = tx.link(child, peer)?;
        if let Some(old) = old {
            if old != *d {
                tx.remove_own_blinded(peer, &old)?;
            }
        }
        tx.put_own_blinded(peer, d, child)?;
        tx.put_link(child, peer, d)?;
        self.reconcile(tx, peer, child, d, &record, at)?;
        Ok(old.is_none())
    }

    /// Re-keys everything that depends on this node's blinding key (see `docs/protocol.md`):
    /// my published points, my index of every peer, and queues the exchange that updates
    /// the peers. Pairs are keyed by child and peer, so no match is lost or made twice.
    /// `context(peer)` is the DLEQ context of this node's proofs towards `peer`: each
    /// re-blinded entry goes out with a proof under the new key.
    pub fn rekey(
        &self,
        tx: &Tx<'_>,
        old: &BlindKey,
        new: &BlindKey,
        points: &[(ChildKey, Blinded)],
        entries: &[(String, Blinded, RemoteEntry)],
        context: &dyn Fn(&str) -> Vec<u8>,
    ) -> TxResult<(u64, u64)> {
        let bad = || StoreError::Failed("a stored point is not a valid ristretto255 point".into());
        let towards: HashMap<&str, PeerBlind> = self.peers.iter().map(|p| (p.as_str(), new.towards(p))).collect();
        // First in every peer's outbox: the new key its answers will be proven under.
        for (peer, blind) in &towards {
            self.queue(tx, peer, &OutItem::KeyAnnounce { public_key: crate::dleq::public_key(blind.key()) })?;
        }
        let mut children = 0;
        for (child, point) in points {
            let fresh = old.rekey_point(new, point).map_err(|_| bad())?;
            tx.put_point(child, &fresh)?;
            let active = !subject(tx, child)?.active.is_empty();
            for peer in self.peers.iter() {
                self.publish(tx, peer, child, fresh, active, true)?;
            }
            children += 1;
        }
        let mut remote = 0;
        for (peer, d, entry) in entries {
            // An entry of a peer no longer configured keeps its old value: nothing is sent.
            let Some(blind) = towards.get(peer.as_str()) else { continue };
            let fresh = blind.key().blind_point(&entry.point).map_err(|_| bad())?;
            tx.remove_remote(peer, d)?;
            tx.put_remote(peer, &fresh, entry)?;
            tx.put_remote_handle(peer, &entry.handle, &fresh)?;
            let proof = crate::dleq::prove_blinded(
                blind.key(),
                &[entry.point],
                &[fresh],
                &context(peer),
                &mut rand::thread_rng(),
            )
            .map_err(|e| StoreError::Failed(format!("proving a re-blinded entry: {e}")))?;
            let public_key = crate::dleq::public_key(blind.key());
            let item = OutItem::ProvenReblind {
                to: entry.handle,
                blinded: fresh,
                public_key,
                proof: proof.to_bytes().to_vec(),
            };
            self.queue(tx, peer, &item)?;
            remote += 1;
        }
        Ok((children, remote))
    }
}

/// The record of a subject of the pair rules: a child's own, or a parent's (the union of
/// its children's signals, `registry::family`).
/// My child under my handle `to`, with its record, when it is active and matched here with
/// the peer's child under its handle `from`.
fn matched_active(tx: &Tx<'_>, peer: &str, from: &Handle, to: &Handle) -> TxResult<Option<(ChildKey, ChildRecord)>> {
    let Some(child) = tx.own_handle(peer, to)? else { return Ok(None) };
    if tx.pair(&child, peer)?.filter(|p| p.is_matched() && p.peer_handle == *from).is_none() {
        return Ok(None);
    }
    let record = subject(tx, &child)?;
    Ok((ChildState::of(&record) == ChildState::Active).then_some((child, record)))
}

fn subject(tx: &Tx<'_>, key: &ChildKey) -> TxResult<ChildRecord> {
    Ok(family::subject_record(tx, key)?.0)
}

/// My local reporters on the subject learn about parties of `peer`: for a child every
/// active reporter (D5, D7); for a parent the reporters on its children, with the family
/// flag and less the parties each knows already (`registry::family::tell_remote`).
fn tell(
    tx: &Tx<'_>,
    at: DateTime<Utc>,
    key: &ChildKey,
    peer: &str,
    kind: NoticeKind,
    record: &ChildRecord,
    parties: &[Party],
) -> TxResult<()> {
    if family::is_parent(tx, key)? {
        family::tell_remote(tx, at, &ParentKey(key.0), peer, kind, parties)
    } else {
        Notify::new(tx, at).locals(kind, record, parties)
    }
}

/// A public key's fingerprint as shown in audit entries and status: the first 8 bytes of
/// `SHA-256(Y)`, hex.
pub fn key_fingerprint(public_key: &Blinded) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(public_key)[..8])
}

impl FederationHook for Pairs {
    /// The federation side of a local change: messages to every peer, local pair updates.
    fn child_changed(&self, tx: &Tx<'_>, change: &ChildChange<'_>, at: DateTime<Utc>) -> TxResult<()> {
        // Nothing to tell peers about a child this node never had (an erasure of an
        // unknown BSN).
        if (change.before, change.after) == (ChildState::None, ChildState::None) {
            return Ok(());
        }
        let child = change.child;
        let record = subject(tx, child)?;
        // A child known before this node had a blinding point (registered before the
        // federation was configured) is published on its first registration with one.
        let unpublished = change.after != ChildState::None && change.point.is_some() && tx.point(child)?.is_none();
        for peer in self.peers.iter() {
            let handle = self.handle(peer, child);
            if unpublished {
                if let Some(point) = change.point {
                    self.publish(tx, peer, child, point, change.after == ChildState::Active, false)?;
                }
                continue;
            }
            match (change.before, change.after) {
                (ChildState::None, ChildState::Active | ChildState::Archived) => {
                    if let Some(point) = change.point {
                        self.publish(tx, peer, child, point, change.after == ChildState::Active, false)?;
                    }
                }
                (_, ChildState::None) => {
                    self.queue(tx, peer, &OutItem::Remove { handle })?;
                    self.forget_child_for_peer(tx, peer, child, &handle, at)?;
                }
                (ChildState::Archived, ChildState::Active) | (ChildState::Active, ChildState::Archived) => {
                    let active = change.after == ChildState::Active;
                    self.queue(tx, peer, &OutItem::State { handle, active })?;
                    if let Some(d) = tx.link(child, peer)? {
                        self.reconcile(tx, peer, child, &d, &record, at)?;
                    }
                }
                (ChildState::Active, ChildState::Active) => {
                    let Some(pair) = tx.pair(child, peer)? else { continue };
                    if !pair.is_matched() {
                        continue;
                    }
                    // A family party goes once its own child is linked to the peer (then
                    // `child_linked` sends it), after that child's own match, if any.
                    let mut added = Vec::new();
                    for (party, on) in &change.added {
                        if on == child || family::linked(tx, on, peer)? {
                            added.push(party.clone());
                        }
                    }
                    if !added.is_empty() {
                        let item =
                            OutItem::Contacts { from: handle, to: pair.peer_handle, archived: false, parties: added };
                        self.queue(tx, peer, &item)?;
                    }
                    for org in &change.removed_orgs {
                        let item = OutItem::PartyGone { from: handle, to: pair.peer_handle, org: org.clone() };
                        self.queue(tx, peer, &item)?;
                    }
                }
                _ => {}
            }
        }
        if change.after == ChildState::None {
            tx.remove_point(child)?;
        } else if let (true, Some(point)) = (unpublished, change.point) {
            tx.put_point(child, &point)?;
        }
        Ok(())
    }

    fn family_parties(&self, tx: &Tx<'_>, child: &ChildKey) -> TxResult<Vec<Party>> {
        family::remote_family_parties(tx, child, &self.peers)
    }

    /// Remote parties of every matched pair of the child (for a new local reporter, D5).
    fn remote_parties(&self, tx: &Tx<'_>, child: &ChildKey) -> TxResult<Vec<Party>> {
        let mut out = Vec::new();
        for peer in self.peers.iter() {
            if let Some(pair) = tx.pair(child, peer)? {
                if pair.is_matched() {
                    out.extend(pair.remote_parties);
                }
            }
        }
        Ok(out)
    }
}
