//! [`Tx`]: one write transaction's typed view of the tables.
//!
//! The rules (`registry`, `federation`) change the store only through these accessors,
//! inside a job of the writer's batch (see [`super::Store::write`]). The audit head, the
//! notice counter and the outbox counter are carried in memory through the transaction
//! and written once at its end, so every job of a batch extends the same chain.

use std::cell::RefCell;

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Serialize};

use super::audit::{self, AuditEntry};
use super::engine::{TxError, TxTree};
use super::keys::{self, meta, Family, Fed};
use super::records::{decode, encode, ChildRecord, CrossPair, Lookup, PeerSeen, Queued, RemoteEntry};
use super::{StoreError, Table};
use crate::domain::{AuditAction, ChildKey, Notice, OrgId, Organisation, ParentKey, Signal, SignalId};
use crate::pseudonym::{Blinded, Handle};

/// The result of a step inside a transaction: an error aborts the whole batch.
pub type TxResult<T> = Result<T, TxError>;

/// One transaction over every table.
pub struct Tx<'a> {
    trees: &'a [TxTree<'a>],
    audit_head: RefCell<Option<(u64, [u8; 32])>>,
    notice_seq: RefCell<Option<u64>>,
    outbox_seq: RefCell<Option<u64>>,
}

/// Sequence numbers a finished transaction wrote last (for the durable watermarks).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Marks {
    pub notice: Option<u64>,
    pub outbox: Option<u64>,
}

fn corrupt(what: &'static str) -> TxError {
    StoreError::Corrupt { what }.into()
}

fn fixed<const N: usize>(bytes: Option<super::engine::Bytes>, what: &'static str) -> TxResult<Option<[u8; N]>> {
    bytes.map(|b| b.as_ref().try_into().map_err(|_| corrupt(what))).transpose()
}

impl<'a> Tx<'a> {
    pub(super) fn new(trees: &'a [TxTree<'a>]) -> Tx<'a> {
        Tx { trees, audit_head: RefCell::new(None), notice_seq: RefCell::new(None), outbox_seq: RefCell::new(None) }
    }

    fn t(&self, table: Table) -> &TxTree<'a> {
        &self.trees[table as usize]
    }

    fn get<T: DeserializeOwned>(&self, table: Table, key: &[u8], what: &'static str) -> TxResult<Option<T>> {
        match self.t(table).get(key)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(&bytes, what)?)),
        }
    }

    fn put<T: Serialize>(&self, table: Table, key: &[u8], value: &T) -> TxResult<()> {
        self.t(table).insert(key, encode(value))?;
        Ok(())
    }

    fn remove(&self, table: Table, key: &[u8]) -> TxResult<()> {
        self.t(table).remove(key)?;
        Ok(())
    }

    fn meta_u64(&self, key: &[u8]) -> TxResult<u64> {
        Ok(keys::u64_value(self.t(Table::Meta).get(key)?.as_deref()))
    }

    // ---- organisations, signals, children -----------------------------------------------

    pub fn org(&self, id: &OrgId) -> TxResult<Option<Organisation>> {
        self.get(Table::Orgs, id.as_str().as_bytes(), "organisation")
    }

    /// Stores the organisation; returns whether it existed before.
    pub fn put_org(&self, org: &Organisation) -> TxResult<bool> {
        Ok(self.t(Table::Orgs).insert(org.id.as_str(), encode(org))?.is_some())
    }

    pub fn signal(&self, id: &SignalId) -> TxResult<Option<Signal>> {
        self.get(Table::Signals, &id.0, "signal")
    }

    pub fn put_signal(&self, signal: &Signal) -> TxResult<()> {
        self.put(Table::Signals, &signal.id.0, signal)
    }

    pub fn remove_signal(&self, id: &SignalId) -> TxResult<()> {
        self.remove(Table::Signals, &id.0)
    }

    /// The signals behind a child record's ids; a missing one means a damaged index.
    pub fn signals_of(&self, ids: &[(SignalId, OrgId)]) -> TxResult<Vec<Signal>> {
        ids.iter().map(|(id, _)| self.signal(id)?.ok_or_else(|| corrupt("child record"))).collect()
    }

    /// The child's record (empty when the node has nothing on the child).
    pub fn child(&self, child: &ChildKey) -> TxResult<ChildRecord> {
        Ok(self.get(Table::Children, &child.0, "child record")?.unwrap_or_default())
    }

    /// Stores the child's record; an empty record is removed.
    pub fn put_child(&self, child: &ChildKey, record: &ChildRecord) -> TxResult<()> {
        if record.is_empty() {
            self.remove(Table::Children, &child.0)
        } else {
            self.put(Table::Children, &child.0, record)
        }
    }

    /// Marks `id` as one of the organisation's active signals.
    pub fn add_org_signal(&self, org: &OrgId, id: &SignalId) -> TxResult<()> {
        self.t(Table::OrgSignals).insert(keys::org_signal(org, id), [])?;
        Ok(())
    }

    pub fn remove_org_signal(&self, org: &OrgId, id: &SignalId) -> TxResult<()> {
        self.remove(Table::OrgSignals, &keys::org_signal(org, id))
    }

    // ---- family (see `keys::Family`) --------------------------------------------------------

    /// The child's parents known here (none when the source listed none).
    pub fn parents_of(&self, child: &ChildKey) -> TxResult<Vec<ParentKey>> {
        Ok(self.get(Table::Family, &Family::parents_of(child), "child's parents")?.unwrap_or_default())
    }

    /// Stores the child's parents; an empty list is removed.
    pub fn put_parents_of(&self, child: &ChildKey, parents: &[ParentKey]) -> TxResult<()> {
        if parents.is_empty() {
            self.remove(Table::Family, &Family::parents_of(child))
        } else {
            self.put(Table::Family, &Family::parents_of(child), &parents)
        }
    }

    /// The parent's children with a signal here.
    pub fn children_of(&self, parent: &ParentKey) -> TxResult<Vec<ChildKey>> {
        Ok(self.get(Table::Family, &Family::children_of(parent), "parent's children")?.unwrap_or_default())
    }

    /// Stores the parent's children; an empty list removes the parent.
    pub fn put_children_of(&self, parent: &ParentKey, children: &[ChildKey]) -> TxResult<()> {
        if children.is_empty() {
            self.remove(Table::Family, &Family::children_of(parent))
        } else {
            self.put(Table::Family, &Family::children_of(parent), &children)
        }
    }

    /// Queues a BRP lookup for its child; returns its sequence number (the outbox's
    /// counter: unique).
    pub fn push_lookup(&self, lookup: &Lookup) -> TxResult<u64> {
        let mut counter = self.outbox_seq.borrow_mut();
        let seq = match *counter {
            Some(s) => s,
            None => self.meta_u64(meta::OUTBOX_SEQ)?,
        } + 1;
        *counter = Some(seq);
        self.put(Table::Family, &Family::lookup(seq), lookup)?;
        self.t(Table::Family).insert(Family::waiting(&lookup.child), seq.to_be_bytes())?;
        Ok(seq)
    }

    /// The sequence number of the child's queued lookup, if one waits.
    pub fn waiting_lookup(&self, child: &ChildKey) -> TxResult<Option<u64>> {
        Ok(self.t(Table::Family).get(Family::waiting(child))?.map(|v| keys::u64_value(Some(&v))))
    }

    pub fn lookup(&self, seq: u64) -> TxResult<Option<Lookup>> {
        self.get(Table::Family, &Family::lookup(seq), "queued lookup")
    }

    pub fn put_lookup(&self, seq: u64, lookup: &Lookup) -> TxResult<()> {
        self.put(Table::Family, &Family::lookup(seq), lookup)
    }

    /// Removes a queued lookup (done, or its child erased) with its child's marker.
    pub fn remove_lookup(&self, seq: u64) -> TxResult<()> {
        if let Some(lookup) = self.lookup(seq)? {
            // The marker may name a newer lookup of the same child: leave that one's.
            if self.waiting_lookup(&lookup.child)? == Some(seq) {
                self.remove(Table::Family, &Family::waiting(&lookup.child))?;
            }
        }
        self.remove(Table::Family, &Family::lookup(seq))
    }

    // ---- notices and the audit chain ------------------------------------------------------

    /// Appends a notice to its recipient's queue; returns its cursor (sequence number).
    pub fn push_notice(&self, notice: &Notice) -> TxResult<u64> {
        let mut counter = self.notice_seq.borrow_mut();
        let seq = match *counter {
            Some(s) => s,
            None => self.meta_u64(meta::NOTICE_SEQ)?,
        } + 1;
        *counter = Some(seq);
        self.put(Table::Notices, &keys::notice(&notice.recipient, seq), notice)?;
        Ok(seq)
    }

    /// Appends an entry to the audit chain (D8).
    pub fn log(
        &self,
        at: DateTime<Utc>,
        actor: &str,
        action: AuditAction,
        subject: &str,
        detail: &str,
    ) -> TxResult<()> {
        let mut head = self.audit_head.borrow_mut();
        let (seq, prev) = match *head {
            Some(h) => h,
            None => self.get(Table::Meta, meta::AUDIT_HEAD, "audit head")?.unwrap_or((0, [0; 32])),
        };
        let entry = AuditEntry {
            seq: seq + 1,
            at,
            actor: actor.to_owned(),
            action: action.as_str().to_owned(),
            subject: subject.to_owned(),
            detail: detail.to_owned(),
            prev,
        };
        let hash = audit::entry_hash(&entry);
        let seq = entry.seq;
        self.put(Table::Audit, &keys::audit(seq), &audit::StoredEntry { entry, hash })?;
        *head = Some((seq, hash));
        Ok(())
    }

    // ---- meta -----------------------------------------------------------------------------

    /// The organisation that receives the match officer's notices (D5), if configured.
    pub fn match_officer(&self) -> TxResult<Option<OrgId>> {
        self.get(Table::Meta, meta::MATCH_OFFICER, "match officer")
    }

    pub fn set_match_officer(&self, org: Option<&OrgId>) -> TxResult<()> {
        match org {
            Some(o) => self.put(Table::Meta, meta::MATCH_OFFICER, o),
            None => self.remove(Table::Meta, meta::MATCH_OFFICER),
        }
    }

    /// Records that every child has been published to `peer` (`true`) or must be again.
    pub fn set_joined(&self, peer: &str, joined: bool) -> TxResult<()> {
        if joined {
            self.t(Table::Meta).insert(meta::joined(peer), [1])?;
            Ok(())
        } else {
            self.remove(Table::Meta, &meta::joined(peer))
        }
    }

    pub fn set_local_fingerprint(&self, fp: &[u8; 32]) -> TxResult<()> {
        self.t(Table::Meta).insert(meta::LOCAL_FP, fp)?;
        Ok(())
    }

    pub fn set_blind_fingerprint(&self, fp: &[u8; 32]) -> TxResult<()> {
        self.t(Table::Meta).insert(meta::BLIND_FP, fp)?;
        Ok(())
    }

    pub fn clear_resync_after_restore(&self) -> TxResult<()> {
        self.remove(Table::Meta, meta::RESYNC_AFTER_RESTORE)
    }

    pub fn set_webhook_cursor(&self, org: &OrgId, seq: u64) -> TxResult<()> {
        self.t(Table::Meta).insert(meta::webhook_cursor(org.as_str()), seq.to_be_bytes())?;
        Ok(())
    }

    /// A peer's blind budget of `kind`: (tokens, Unix ms when they were counted); `None`
    /// for a peer never budgeted here.
    pub fn budget(&self, peer: &str, kind: &str) -> TxResult<Option<(f64, i64)>> {
        self.get(Table::Meta, &meta::budget(peer, kind), "blind budget")
    }

    pub fn put_budget(&self, peer: &str, kind: &str, tokens: f64, at_ms: i64) -> TxResult<()> {
        self.put(Table::Meta, &meta::budget(peer, kind), &(tokens, at_ms))
    }

    /// Children the peer has published here under the resync ticket `serial`.
    pub fn ticket_used(&self, peer: &str, serial: &str) -> TxResult<u64> {
        self.meta_u64(&meta::ticket(peer, serial))
    }

    pub fn set_ticket_used(&self, peer: &str, serial: &str, used: u64) -> TxResult<()> {
        self.t(Table::Meta).insert(meta::ticket(peer, serial), used.to_be_bytes())?;
        Ok(())
    }

    /// The public blinding key the peer uses towards this node, if pinned.
    pub fn peer_key(&self, peer: &str) -> TxResult<Option<Blinded>> {
        Ok(self.t(Table::Meta).get(meta::peer_key(peer))?.and_then(|v| v.as_ref().try_into().ok()))
    }

    pub fn set_peer_key(&self, peer: &str, key: &Blinded) -> TxResult<()> {
        self.t(Table::Meta).insert(meta::peer_key(peer), key)?;
        Ok(())
    }

    pub fn set_probe(&self, value: u64) -> TxResult<()> {
        self.t(Table::Meta).insert(meta::PROBE, value.to_be_bytes())?;
        Ok(())
    }

    // ---- outbox ---------------------------------------------------------------------------

    /// Appends `item` to the peer's outbox queue; returns its sequence number.
    pub fn enqueue<T: Serialize>(&self, peer: &str, item: &T) -> TxResult<u64> {
        let mut counter = self.outbox_seq.borrow_mut();
        let seq = match *counter {
            Some(s) => s,
            None => self.meta_u64(meta::OUTBOX_SEQ)?,
        } + 1;
        *counter = Some(seq);
        let queued = Queued { at_ms: Utc::now().timestamp_millis(), item };
        self.put(Table::Outbox, &keys::outbox(peer, seq), &queued)?;
        Ok(seq)
    }

    /// The outbox's sequence number now: the last one given to a queued item (for any
    /// peer), this transaction's included.
    pub fn outbox_seq(&self) -> TxResult<u64> {
        match *self.outbox_seq.borrow() {
            Some(s) => Ok(s),
            None => self.meta_u64(meta::OUTBOX_SEQ),
        }
    }

    /// Removes a delivered item.
    pub fn remove_outbox(&self, peer: &str, seq: u64) -> TxResult<()> {
        self.remove(Table::Outbox, &keys::outbox(peer, seq))
    }

    /// Whether the item `seq` for `peer` is still queued (not yet acknowledged).
    pub fn outbox_holds(&self, peer: &str, seq: u64) -> TxResult<bool> {
        Ok(self.t(Table::Outbox).get(keys::outbox(peer, seq))?.is_some())
    }

    // ---- federation state (see `keys::Fed`) -------------------------------------------------

    /// My child's blinded point `P·a`.
    pub fn point(&self, child: &ChildKey) -> TxResult<Option<Blinded>> {
        fixed(self.t(Table::Fed).get(Fed::point(child))?, "child point")
    }

    pub fn put_point(&self, child: &ChildKey, point: &Blinded) -> TxResult<()> {
        self.t(Table::Fed).insert(Fed::point(child), point)?;
        Ok(())
    }

    pub fn remove_point(&self, child: &ChildKey) -> TxResult<()> {
        self.remove(Table::Fed, &Fed::point(child))
    }

    /// My child behind my handle towards `peer`.
    pub fn own_handle(&self, peer: &str, handle: &Handle) -> TxResult<Option<ChildKey>> {
        Ok(fixed(self.t(Table::Fed).get(Fed::own_handle(peer, handle))?, "own handle")?.map(ChildKey))
    }

    pub fn put_own_handle(&self, peer: &str, handle: &Handle, child: &ChildKey) -> TxResult<()> {
        self.t(Table::Fed).insert(Fed::own_handle(peer, handle), child.0)?;
        Ok(())
    }

    pub fn remove_own_handle(&self, peer: &str, handle: &Handle) -> TxResult<()> {
        self.remove(Table::Fed, &Fed::own_handle(peer, handle))
    }

    /// My child blinded for `peer` as `d`.
    pub fn own_blinded(&self, peer: &str, d: &Blinded) -> TxResult<Option<ChildKey>> {
        Ok(fixed(self.t(Table::Fed).get(Fed::own_blinded(peer, d))?, "own blinded")?.map(ChildKey))
    }

    pub fn put_own_blinded(&self, peer: &str, d: &Blinded, child: &ChildKey) -> TxResult<()> {
        self.t(Table::Fed).insert(Fed::own_blinded(peer, d), child.0)?;
        Ok(())
    }

    pub fn remove_own_blinded(&self, peer: &str, d: &Blinded) -> TxResult<()> {
        self.remove(Table::Fed, &Fed::own_blinded(peer, d))
    }

    /// The `d` my child has towards `peer`.
    pub fn link(&self, child: &ChildKey, peer: &str) -> TxResult<Option<Blinded>> {
        fixed(self.t(Table::Fed).get(Fed::link(child, peer))?, "link")
    }

    pub fn put_link(&self, child: &ChildKey, peer: &str, d: &Blinded) -> TxResult<()> {
        self.t(Table::Fed).insert(Fed::link(child, peer), d)?;
        Ok(())
    }

    /// Removes the link; returns the `d` it pointed to.
    pub fn remove_link(&self, child: &ChildKey, peer: &str) -> TxResult<Option<Blinded>> {
        fixed(self.t(Table::Fed).remove(Fed::link(child, peer))?, "link")
    }

    /// The peer's child that blinds (under my key) to `d`.
    pub fn remote(&self, peer: &str, d: &Blinded) -> TxResult<Option<RemoteEntry>> {
        self.get(Table::Fed, &Fed::remote(peer, d), "peer index")
    }

    pub fn put_remote(&self, peer: &str, d: &Blinded, entry: &RemoteEntry) -> TxResult<()> {
        self.put(Table::Fed, &Fed::remote(peer, d), entry)
    }

    pub fn remove_remote(&self, peer: &str, d: &Blinded) -> TxResult<()> {
        self.remove(Table::Fed, &Fed::remote(peer, d))
    }

    /// The `d` of the peer's child behind the peer's handle.
    pub fn remote_handle(&self, peer: &str, handle: &Handle) -> TxResult<Option<Blinded>> {
        fixed(self.t(Table::Fed).get(Fed::remote_handle(peer, handle))?, "peer handle")
    }

    pub fn put_remote_handle(&self, peer: &str, handle: &Handle, d: &Blinded) -> TxResult<()> {
        self.t(Table::Fed).insert(Fed::remote_handle(peer, handle), d)?;
        Ok(())
    }

    pub fn remove_remote_handle(&self, peer: &str, handle: &Handle) -> TxResult<()> {
        self.remove(Table::Fed, &Fed::remote_handle(peer, handle))
    }

    /// The pair of my child with the peer's child.
    pub fn pair(&self, child: &ChildKey, peer: &str) -> TxResult<Option<CrossPair>> {
        self.get(Table::Fed, &Fed::pair(child, peer), "cross pair")
    }

    pub fn put_pair(&self, child: &ChildKey, peer: &str, pair: &CrossPair) -> TxResult<()> {
        self.put(Table::Fed, &Fed::pair(child, peer), pair)
    }

    pub fn remove_pair(&self, child: &ChildKey, peer: &str) -> TxResult<()> {
        self.remove(Table::Fed, &Fed::pair(child, peer))
    }

    /// The sequence number of the last item about my child (my `handle` towards `peer`)
    /// queued for the peer, until the peer acknowledges it.
    pub fn queued_about(&self, peer: &str, handle: &Handle) -> TxResult<Option<u64>> {
        match self.t(Table::Fed).get(Fed::queued_about(peer, handle))? {
            None => Ok(None),
            Some(bytes) if bytes.as_ref().len() == 8 => Ok(Some(keys::u64_value(Some(bytes.as_ref())))),
            Some(_) => Err(corrupt("queued-about record")),
        }
    }

    pub fn put_queued_about(&self, peer: &str, handle: &Handle, seq: u64) -> TxResult<()> {
        self.t(Table::Fed).insert(Fed::queued_about(peer, handle), seq.to_be_bytes())?;
        Ok(())
    }

    pub fn remove_queued_about(&self, peer: &str, handle: &Handle) -> TxResult<()> {
        self.remove(Table::Fed, &Fed::queued_about(peer, handle))
    }

    /// What has been applied from `peer` so far.
    pub fn peer_seen(&self, peer: &str) -> TxResult<PeerSeen> {
        Ok(self.get(Table::Fed, &Fed::seen(peer), "peer seen")?.unwrap_or_default())
    }

    pub fn put_peer_seen(&self, peer: &str, seen: &PeerSeen) -> TxResult<()> {
        self.put(Table::Fed, &Fed::seen(peer), seen)
    }

    // ---- end of transaction ---------------------------------------------------------------

    /// Writes the counters carried through the transaction; returns the marks.
    pub(super) fn finish(&self) -> TxResult<Marks> {
        if let Some(head) = *self.audit_head.borrow() {
            self.put(Table::Meta, meta::AUDIT_HEAD, &head)?;
        }
        let notice = *self.notice_seq.borrow();
        if let Some(seq) = notice {
            self.t(Table::Meta).insert(meta::NOTICE_SEQ, seq.to_be_bytes())?;
        }
        let outbox = *self.outbox_seq.borrow();
        if let Some(seq) = outbox {
            self.t(Table::Meta).insert(meta::OUTBOX_SEQ, seq.to_be_bytes())?;
        }
        Ok(Marks { notice, outbox })
    }
}
