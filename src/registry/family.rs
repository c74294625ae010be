//! Family matches (D11): active signals on two *different* children who share a parent.
//!
//! A child's parents are kept as local pseudonyms ([`ParentKey`], their own domain string)
//! in the `family` table, each side one record: the child's parents and each parent's
//! children with a signal here. A parent is a *subject* of the federation like a child
//! (published per parent and per peer, under [`ParentKey::subject`]), and its state is the
//! union of its children's signals ([`subject_record`]).
//!
//! Every change to a child (a new signal, a parent link, a withdrawal, expiry, erasure) is
//! bracketed: [`Picture::of`] before, [`settle`] after. Settle compares the two pictures
//! and notifies the family matches that were made or ended (D5 recipients, D7), and tells
//! the federation how each parent's state changed, as it does for the child itself. So
//! every rule is one set difference, and no event can forget one.
//!
//! The rules: the same child never gives a family match (its signals match as a child
//! match); an organisation is not matched with itself; a party already known to a reporter
//! through the child match with a region (the same child signalled there) is not told
//! again as a family match. History notices (D6) stay child-only.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use super::notices::{self, Notify, Reporter};
use super::{ChildChange, ChildState, FederationHook};
use crate::domain::{AuditAction, ChildKey, NoticeKind, OrgId, ParentKey, Party, Signal, SignalId};
use crate::pseudonym::Blinded;
use crate::store::{ChildRecord, Tx, TxResult};

/// A parent of a new signal's child, with its point `P'·a` for the federation (when the
/// node has a blinding key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewParent {
    pub key: ParentKey,
    pub point: Option<Blinded>,
}

/// The record of a federation subject: a child's own record, or for a parent the union of
/// its children's signals (history markers are child-only). `true` for a parent.
pub fn subject_record(tx: &Tx<'_>, subject: &ChildKey) -> TxResult<(ChildRecord, bool)> {
    let children = tx.children_of(&ParentKey(subject.0))?;
    if children.is_empty() {
        return Ok((tx.child(subject)?, false));
    }
    let mut record = ChildRecord::default();
    for child in children {
        let r = tx.child(&child)?;
        record.active.extend(r.active);
        record.archived.extend(r.archived);
    }
    Ok((record, true))
}

/// Whether a federation subject is a parent (has children here).
pub fn is_parent(tx: &Tx<'_>, subject: &ChildKey) -> TxResult<bool> {
    Ok(!tx.children_of(&ParentKey(subject.0))?.is_empty())
}

/// A parent's record from its children other than `child`.
fn record_without(tx: &Tx<'_>, parent: &ParentKey, child: &ChildKey) -> TxResult<ChildRecord> {
    let mut record = ChildRecord::default();
    for c in tx.children_of(parent)?.into_iter().filter(|c| c != child) {
        let r = tx.child(&c)?;
        record.active.extend(r.active);
        record.archived.extend(r.archived);
    }
    Ok(record)
}

/// The most parents a child has here: the BRP lists at most two.
pub const MAX_PARENTS: usize = 2;

/// The child's siblings here: the other children of each of its parents.
pub fn siblings(tx: &Tx<'_>, child: &ChildKey) -> TxResult<Vec<ChildKey>> {
    let mut out = BTreeSet::new();
    for parent in tx.parents_of(child)? {
        out.extend(tx.children_of(&parent)?.into_iter().filter(|c| c != child));
    }
    Ok(out.into_iter().collect())
}

/// Records the child's parents that are new here, up to [`MAX_PARENTS`] in all (later
/// ones are ignored: a child's parents are not replaced by a repeat); returns them.
pub fn link(tx: &Tx<'_>, child: &ChildKey, parents: &[NewParent]) -> TxResult<Vec<NewParent>> {
    let mut known = tx.parents_of(child)?;
    let mut added = Vec::new();
    for p in parents {
        if known.contains(&p.key) || added.iter().any(|a: &NewParent| a.key == p.key) {
            continue;
        }
        if known.len() >= MAX_PARENTS {
            tracing::debug!("a child already has two parents here; a further one is ignored");
            break;
        }
        known.push(p.key);
        let mut children = tx.children_of(&p.key)?;
        if !children.contains(child) {
            children.push(*child);
            tx.put_children_of(&p.key, &children)?;
        }
        added.push(*p);
    }
    if !added.is_empty() {
        tx.put_parents_of(child, &known)?;
    }
    Ok(added)
}

/// Forgets a child that has no signal left here: it leaves each parent's children, and a
/// parent with none left is gone.
fn unlink(tx: &Tx<'_>, child: &ChildKey) -> TxResult<()> {
    for parent in tx.parents_of(child)? {
        let mut children = tx.children_of(&parent)?;
        children.retain(|c| c != child);
        tx.put_children_of(&parent, &children)?;
    }
    tx.put_parents_of(child, &[])
}

/// The family side of one child at one moment: its family pairs here, the family parties
/// from other regions, and each parent's state.
pub struct Picture {
    child: ChildKey,
    /// (signal on the child, signal on a sibling), both active, different organisations.
    pairs: BTreeSet<(SignalId, SignalId)>,
    /// Family parties from other regions of the child's matched family pairs.
    remote: Vec<Party>,
    /// The signals of both sides, for the notices (a deleted one is still here before).
    signals: HashMap<SignalId, Signal>,
    /// The child's active signals.
    active: BTreeSet<SignalId>,
    parents: BTreeMap<ParentKey, ChildRecord>,
}

impl Picture {
    pub fn of(tx: &Tx<'_>, fed: Option<&dyn FederationHook>, child: &ChildKey) -> TxResult<Picture> {
        let record = tx.child(child)?;
        let mut signals = HashMap::new();
        for s in tx.signals_of(&record.active)? {
            signals.insert(s.id, s);
        }
        let active: BTreeSet<SignalId> = signals.keys().copied().collect();
        let mut pairs = BTreeSet::new();
        if !active.is_empty() {
            for sibling in siblings(tx, child)? {
                for t in tx.signals_of(&tx.child(&sibling)?.active)? {
                    for s in record.active.iter().filter(|(_, org)| *org != t.org) {
                        pairs.insert((s.0, t.id));
                    }
                    signals.insert(t.id, t);
                }
            }
        }
        let remote = match fed {
            Some(fed) if !active.is_empty() => fed.family_parties(tx, child)?,
            _ => Vec::new(),
        };
        let mut parents = BTreeMap::new();
        for parent in tx.parents_of(child)? {
            parents.insert(parent, subject_record(tx, &parent.subject())?.0);
        }
        Ok(Picture { child: *child, pairs, remote, signals, active, parents })
    }
}

fn same_party(a: &Party, b: &Party) -> bool {
    a.region == b.region && a.org_id == b.org_id
}

fn active_orgs(record: &ChildRecord) -> BTreeSet<OrgId> {
    record.active.iter().map(|(_, o)| o.clone()).collect()
}

/// Notices for family pairs made (`created`) or ended between two pictures: each reporter
/// learns its new (or gone) counterparts, its coordinator too, and the officer everyone.
fn notify_pairs(
    notify: &Notify<'_, '_>,
    kind: NoticeKind,
    pairs: &BTreeSet<(SignalId, SignalId)>,
    signals: &HashMap<SignalId, Signal>,
    still_active: &dyn Fn(&SignalId) -> bool,
    remote: &BTreeMap<SignalId, Vec<Party>>,
) -> TxResult<()> {
    let mut told: BTreeMap<SignalId, Vec<SignalId>> = BTreeMap::new();
    for (x, y) in pairs {
        if still_active(x) {
            told.entry(*x).or_default().push(*y);
        }
        if still_active(y) {
            told.entry(*y).or_default().push(*x);
        }
    }
    for id in remote.keys() {
        told.entry(*id).or_default();
    }
    if told.is_empty() {
        return Ok(());
    }
    let mut reporters: HashMap<SignalId, Reporter> = HashMap::new();
    let mut involved = BTreeSet::new();
    for (x, y) in pairs {
        involved.insert(*x);
        involved.insert(*y);
    }
    involved.extend(remote.keys().copied());
    for id in &involved {
        if let Some(signal) = signals.get(id) {
            reporters.insert(*id, notify.reporter(signal)?);
        }
    }
    let mut out = Vec::new();
    let mut remote_all: Vec<Party> = Vec::new();
    for (id, others) in &told {
        let Some(me) = reporters.get(id) else { continue };
        let mut parties: Vec<Party> = others.iter().filter_map(|o| reporters.get(o)).map(|r| r.party.clone()).collect();
        for p in remote.get(id).into_iter().flatten() {
            parties.push(p.clone());
            if !remote_all.iter().any(|q| same_party(q, p)) {
                remote_all.push(p.clone());
            }
        }
        if !parties.is_empty() {
            out.extend(notices::to_reporter(kind, me, &parties));
        }
    }
    if out.is_empty() {
        return Ok(());
    }
    if let Some(officer) = notify.officer()? {
        let involved: Vec<&Reporter> = involved.iter().filter_map(|id| reporters.get(id)).collect();
        out.push(notices::to_officer(kind, &officer, &involved, &remote_all));
    }
    notify.send(out)
}

/// After a change to `before.child`: unlinks a child with no signal left, notifies the
/// family matches made and ended, and tells the federation about each parent whose state
/// changed. `points`: points of parents new here (for their first publish).
pub fn settle(
    tx: &Tx<'_>,
    fed: Option<&dyn FederationHook>,
    before: Picture,
    points: &[NewParent],
    at: DateTime<Utc>,
) -> TxResult<()> {
    let child = before.child;
    let mut after = Picture::of(tx, fed, &child)?;
    let notify = Notify::new(tx, at);
    // Made: pairs new in `after`, and remote parties new to each active signal of the child
    // (all of them for a signal that was not active before).
    let made: BTreeSet<_> = after.pairs.difference(&before.pairs).copied().collect();
    let mut remote_made: BTreeMap<SignalId, Vec<Party>> = BTreeMap::new();
    for id in &after.active {
        let fresh: Vec<Party> = if before.active.contains(id) {
            after.remote.iter().filter(|p| !before.remote.iter().any(|q| same_party(p, q))).cloned().collect()
        } else {
            after.remote.clone()
        };
        if !fresh.is_empty() {
            remote_made.insert(*id, fresh);
        }
    }
    // A change to this child leaves its siblings' signals as they were.
    let active_after = |id: &SignalId| !before.active.contains(id) || after.active.contains(id);
    notify_pairs(&notify, NoticeKind::FamilyMatchCreated, &made, &after.signals, &active_after, &remote_made)?;
    // Ended: pairs gone from `after`; the side still active learns who left.
    let ended: BTreeSet<_> = before.pairs.difference(&after.pairs).copied().collect();
    let mut signals = std::mem::take(&mut after.signals);
    for (id, s) in &before.signals {
        signals.entry(*id).or_insert_with(|| s.clone());
    }
    notify_pairs(&notify, NoticeKind::FamilyMatchEnded, &ended, &signals, &active_after, &BTreeMap::new())?;
    // The federation: each parent's change, as the child's own. A child with no signal left
    // adds nothing to its parents' state, so they are computed before it is unlinked (and a
    // parent whose last child it was still reads as a parent while its pairs end).
    if let Some(fed) = fed {
        tell_parents(tx, fed, &before, &after, &signals, points, at)?;
    }
    if tx.child(&child)?.is_empty() {
        unlink(tx, &child)?;
    }
    Ok(())
}

/// Tells the federation how each parent of the child changed between two pictures.
fn tell_parents(
    tx: &Tx<'_>,
    fed: &dyn FederationHook,
    before: &Picture,
    after: &Picture,
    signals: &HashMap<SignalId, Signal>,
    points: &[NewParent],
    at: DateTime<Utc>,
) -> TxResult<()> {
    let notify = Notify::new(tx, at);
    let keys: BTreeSet<ParentKey> = before.parents.keys().chain(after.parents.keys()).copied().collect();
    for parent in keys {
        // A parent new to this child had the state of its other children before (they did
        // not change in this write): a parent known here already is not published again.
        let other_children;
        let was = match before.parents.get(&parent) {
            Some(record) => record,
            None => {
                other_children = record_without(tx, &parent, &before.child)?;
                &other_children
            }
        };
        let now = &subject_record(tx, &parent.subject())?.0;
        let (was_orgs, now_orgs) = (active_orgs(was), active_orgs(now));
        let (b, a) = (ChildState::of(was), ChildState::of(now));
        if b == a && was_orgs == now_orgs {
            continue;
        }
        let mut added: Vec<(Party, ChildKey)> = Vec::new();
        for (id, org) in &now.active {
            if was_orgs.contains(org) || added.iter().any(|(p, _)| p.org_id == *org) {
                continue;
            }
            let signal = match signals.get(id) {
                Some(s) => s.clone(),
                None => match tx.signal(id)? {
                    Some(s) => s,
                    None => continue,
                },
            };
            added.push((notify.reporter(&signal)?.party, signal.child));
        }
        let subject = parent.subject();
        let change = ChildChange {
            child: &subject,
            before: b,
            after: a,
            point: points.iter().find(|p| p.key == parent).and_then(|p| p.point),
            added,
            removed_orgs: was_orgs.difference(&now_orgs).cloned().collect(),
        };
        fed.child_changed(tx, &change, at)?;
    }
    Ok(())
}

/// Records parents for a child that has signals here (a repeat registration that names
/// parents, or a completed BRP lookup): new family matches are notified at once.
pub fn add_parents(
    tx: &Tx<'_>,
    fed: Option<&dyn FederationHook>,
    child: &ChildKey,
    parents: &[NewParent],
    at: DateTime<Utc>,
    subject: &str,
) -> TxResult<usize> {
    if tx.child(child)?.is_empty() {
        return Ok(0); // every signal went meanwhile: nothing to link
    }
    let before = Picture::of(tx, fed, child)?;
    let added = link(tx, child, parents)?;
    if added.is_empty() {
        return Ok(0);
    }
    let detail = format!("{} parent(s) linked", added.len());
    tx.log(at, "system:family", AuditAction::FamilyParentLinked, subject, &detail)?;
    settle(tx, fed, before, &added, at)?;
    Ok(added.len())
}

/// Family parties from `peer` (of the matched family pair of `parent`) told to my local
/// reporters on the parent's children: each reporter learns only the parties it does not
/// know already through its child's match with `peer` or another family pair with `peer`.
/// `kind` is `MatchCreated` or `MatchEnded`; the notices carry the family flag.
pub fn tell_remote(
    tx: &Tx<'_>,
    at: DateTime<Utc>,
    parent: &ParentKey,
    peer: &str,
    kind: NoticeKind,
    parties: &[Party],
) -> TxResult<()> {
    let notify = Notify::new(tx, at);
    let kind = kind.family();
    let mut out = Vec::new();
    let mut involved = Vec::new();
    let mut told: Vec<Party> = Vec::new();
    for child in tx.children_of(parent)? {
        let record = tx.child(&child)?;
        // A child not linked to the peer yet learns the peer's family parties once it is
        // (`linked_to`), after its own child match with the peer, if any, is known.
        if record.active.is_empty() || !linked(tx, &child, peer)? {
            continue;
        }
        let known = known_from(tx, &child, peer, Some(parent))?;
        let fresh: Vec<Party> = parties.iter().filter(|p| !known.iter().any(|k| same_party(k, p))).cloned().collect();
        if fresh.is_empty() {
            continue;
        }
        for reporter in notify.active_reporters(&record)? {
            out.extend(notices::to_reporter(kind, &reporter, &fresh));
            involved.push(reporter);
        }
        for p in fresh {
            if !told.iter().any(|q| same_party(q, &p)) {
                told.push(p);
            }
        }
    }
    if let Some(officer) = notify.officer()? {
        if !told.is_empty() {
            let refs: Vec<&Reporter> = involved.iter().collect();
            out.push(notices::to_officer(kind, &officer, &refs, &told));
        }
    }
    notify.send(out)
}

/// Whether the child's own publish to `peer` has been answered (its link exists), so that
/// its child match with the peer, if there is one, is known here and at the peer before any
/// family party about it crosses. A child never published (no point) counts as linked.
pub fn linked(tx: &Tx<'_>, child: &ChildKey, peer: &str) -> TxResult<bool> {
    Ok(tx.link(child, peer)?.is_some() || tx.point(child)?.is_none())
}

/// The parties a parent's family pair with `peer` sends: the active signals on its children
/// that are linked to the peer (the others follow when they are, `Pairs::child_linked`).
pub fn linked_parties(tx: &Tx<'_>, parent: &ParentKey, peer: &str, at: DateTime<Utc>) -> TxResult<Vec<Party>> {
    let notify = Notify::new(tx, at);
    let mut out: Vec<Party> = Vec::new();
    for child in tx.children_of(parent)? {
        if !linked(tx, &child, peer)? {
            continue;
        }
        for reporter in notify.active_reporters(&tx.child(&child)?)? {
            out.push(reporter.party);
        }
    }
    Ok(out)
}

/// A child's publish to `peer` was answered for the first time: its reporters learn the
/// peer's family parties (less those of its own child match, which are known by now), and
/// its parties go to the peer's side of each matched family pair (`send`: per parent, the
/// parties and the pair's handles).
pub fn linked_to(
    tx: &Tx<'_>,
    child: &ChildKey,
    peer: &str,
    at: DateTime<Utc>,
    send: &dyn Fn(&ParentKey, &[Party]) -> TxResult<()>,
) -> TxResult<()> {
    let record = tx.child(child)?;
    if record.active.is_empty() {
        return Ok(());
    }
    let notify = Notify::new(tx, at);
    let reporters = notify.active_reporters(&record)?;
    let mine: Vec<Party> = reporters.iter().map(|r| r.party.clone()).collect();
    for parent in tx.parents_of(child)? {
        send(&parent, &mine)?;
    }
    let remote = remote_family_parties(tx, child, &[peer.to_owned()])?;
    if remote.is_empty() {
        return Ok(());
    }
    let mut out = Vec::new();
    for reporter in &reporters {
        out.extend(notices::to_reporter(NoticeKind::FamilyMatchCreated, reporter, &remote));
    }
    if let Some(officer) = notify.officer()? {
        let refs: Vec<&Reporter> = reporters.iter().collect();
        out.push(notices::to_officer(NoticeKind::FamilyMatchCreated, &officer, &refs, &remote));
    }
    notify.send(out)
}

/// The parties of `peer` a reporter on `child` knows otherwise: through the child's own
/// match with the peer, and through the family pairs with the peer of the child's other
/// parents (all parents when `except` is `None`).
fn known_from(tx: &Tx<'_>, child: &ChildKey, peer: &str, except: Option<&ParentKey>) -> TxResult<Vec<Party>> {
    let mut known = Vec::new();
    if let Some(pair) = tx.pair(child, peer)? {
        if pair.is_matched() {
            known.extend(pair.remote_parties);
        }
    }
    for other in tx.parents_of(child)? {
        if Some(&other) == except {
            continue;
        }
        if let Some(pair) = tx.pair(&other.subject(), peer)? {
            if pair.is_matched() {
                known.extend(pair.remote_parties);
            }
        }
    }
    Ok(known)
}

/// The family parties of other regions for a reporter on `child`: the parties of every
/// matched family pair of its parents, less those it knows through the child's own match
/// with the same region (the same child signalled there), each party once.
pub fn remote_family_parties(tx: &Tx<'_>, child: &ChildKey, peers: &[String]) -> TxResult<Vec<Party>> {
    let mut out: Vec<Party> = Vec::new();
    let parents = tx.parents_of(child)?;
    if parents.is_empty() {
        return Ok(out);
    }
    for peer in peers {
        if !linked(tx, child, peer)? {
            continue;
        }
        let same_child = match tx.pair(child, peer)? {
            Some(pair) if pair.is_matched() => pair.remote_parties,
            _ => Vec::new(),
        };
        for parent in &parents {
            let Some(pair) = tx.pair(&parent.subject(), peer)? else { continue };
            if !pair.is_matched() {
                continue;
            }
            for p in pair.remote_parties {
                if !same_child.iter().any(|k| same_party(k, &p)) && !out.iter().any(|k| same_party(k, &p)) {
                    out.push(p);
                }
            }
        }
    }
    Ok(out)
}

/// The family counterparts of one local signal (for `matches list`): active signals of other
/// organisations on its siblings here, then the family parties of other regions.
pub fn counterparts_of(tx: &Tx<'_>, own: &Signal, peers: &[String]) -> TxResult<Vec<Party>> {
    let notify = Notify::new(tx, own.registered_at);
    let mut out = Vec::new();
    for sibling in siblings(tx, &own.child)? {
        for t in tx.signals_of(&tx.child(&sibling)?.active)? {
            if t.org != own.org {
                out.push(notify.reporter(&t)?.party);
            }
        }
    }
    out.extend(remote_family_parties(tx, &own.child, peers)?);
    Ok(out)
}
