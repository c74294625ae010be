//! The signal rules over one transaction: register (D1, D2, D5, D6), retire a signal by
//! withdrawal, expiry or purge (D4, D7), delete a child (D3, D4), and the sweeper's
//! decision per signal. Each function refuses before its first write, as the writer needs.

use chrono::{DateTime, NaiveDate};

use super::family;
use super::notices::{self, Notify};
use super::{ChildChange, FederationHook, NewSignal, Registered, RegistryError};
use crate::domain::retention::{self, ActiveFate, ArchivedFate};
use crate::domain::{ArchiveReason, AuditAction, ChildKey, Signal, SignalId, SignalState};
use crate::store::{ChildRecord, Lookup, StoreError, Tx, TxResult};

type Utc = chrono::Utc;

/// Whether a child has active signals, only archived ones, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildState {
    None,
    Archived,
    Active,
}

impl ChildState {
    pub fn of(record: &ChildRecord) -> ChildState {
        if !record.active.is_empty() {
            ChildState::Active
        } else if !record.archived.is_empty() {
            ChildState::Archived
        } else {
            ChildState::None
        }
    }
}

fn changed(tx: &Tx<'_>, fed: Option<&dyn FederationHook>, change: ChildChange<'_>, at: DateTime<Utc>) -> TxResult<()> {
    match fed {
        Some(fed) => fed.child_changed(tx, &change, at),
        None => Ok(()),
    }
}

/// Registers a signal (D1, D2), forming matches (D5) or a history notice (D6).
pub fn register(
    tx: &Tx<'_>,
    fed: Option<&dyn FederationHook>,
    new: &NewSignal,
    actor: &str,
) -> TxResult<Result<Registered, RegistryError>> {
    let Some(org) = tx.org(&new.org)? else {
        return Ok(Err(RegistryError::UnknownOrg(new.org.clone())));
    };
    let notify = Notify::new(tx, new.now);
    let mut child = tx.child(&new.child)?;
    if let Some((id, _)) = child.active.iter().find(|(_, o)| *o == new.org) {
        let Some(signal) = tx.signal(id)? else {
            return Err(StoreError::Corrupt { what: "signal index" }.into());
        };
        tx.log(new.now, actor, AuditAction::SignalRegisterRepeat, &signal.id.to_string(), "")?;
        // A repeat may name parents not known yet: their family matches form now.
        family::add_parents(tx, fed, &new.child, &new.parents, new.now, &signal.id.to_string())?;
        let matched_with = child.active.len() - 1;
        let lookup_pending = tx.waiting_lookup(&new.child)?.is_some();
        return Ok(Ok(Registered { signal, created: false, matched_with, lookup_pending }));
    }
    let signal = Signal {
        id: SignalId::random(),
        child: new.child,
        org: new.org.clone(),
        professional: new.professional.clone(),
        coordinator: org.coordinator.clone(),
        registered_at: new.now,
        removal_date: new.removal_date,
        date_of_birth: new.date_of_birth,
        state: SignalState::Active,
    };
    let others = tx.signals_of(&child.active)?;
    let before = ChildState::of(&child);
    let picture = family::Picture::of(tx, fed, &new.child)?;
    let remote = match fed {
        Some(fed) => fed.remote_parties(tx, &new.child)?,
        None => Vec::new(),
    };
    tx.put_signal(&signal)?;
    tx.add_org_signal(&signal.org, &signal.id)?;
    child.active.push((signal.id, signal.org.clone()));
    tx.log(new.now, actor, AuditAction::SignalRegister, &signal.id.to_string(), "")?;
    let me = notify.reporter(&signal)?;
    if !others.is_empty() || !remote.is_empty() {
        let others = notify.reporters(&others)?;
        notify.send(notices::match_created(&me, &others, &remote, notify.officer()?.as_ref()))?;
    } else if !child.archived.is_empty() && !child.history_sent.contains(&signal.org) {
        let earlier: Vec<Signal> =
            tx.signals_of(&child.archived)?.into_iter().filter(|s| s.org != signal.org).collect();
        if !earlier.is_empty() {
            let earlier = notify.reporters(&earlier)?.into_iter().map(|r| r.party).collect();
            notify.send(vec![notices::history(&me, earlier)])?;
            child.history_sent.push(signal.org.clone());
        }
    }
    tx.put_child(&new.child, &child)?;
    let change = ChildChange {
        child: &new.child,
        before,
        after: ChildState::Active,
        point: new.point,
        added: vec![(me.party.clone(), new.child)],
        removed_orgs: vec![],
    };
    changed(tx, fed, change, new.now)?;
    let linked = family::link(tx, &new.child, &new.parents)?;
    if !linked.is_empty() {
        let detail = format!("{} parent(s) linked", linked.len());
        tx.log(new.now, "system:family", AuditAction::FamilyParentLinked, &signal.id.to_string(), &detail)?;
    }
    family::settle(tx, fed, picture, &new.parents, new.now)?;
    // A child new here, on a node that asks the BRP: its parent lookup is queued in this
    // same write, so it survives a crash and never delays the answer.
    if let (Some(sealed), ChildState::None) = (&new.lookup, before) {
        let at_ms = new.now.timestamp_millis();
        let lookup =
            Lookup { child: new.child, sealed: sealed.clone(), attempts: 0, next_at_ms: at_ms, queued_at_ms: at_ms };
        tx.push_lookup(&lookup)?;
        tx.log(new.now, "system:family", AuditAction::FamilyLookupQueued, &signal.id.to_string(), "")?;
    }
    let lookup_pending = tx.waiting_lookup(&new.child)?.is_some();
    Ok(Ok(Registered { matched_with: others.len(), signal, created: true, lookup_pending }))
}

/// Who retires a signal, why, and when: the audit entry of the change (D8).
pub struct Retirement<'a> {
    pub at: DateTime<Utc>,
    pub actor: &'a str,
    pub action: AuditAction,
    pub detail: &'a str,
}

/// Takes a signal out of matching: archive it (`Some`) or delete it (`None`). Remaining
/// active counterparts learn the match ended (D7).
pub fn retire(
    tx: &Tx<'_>,
    fed: Option<&dyn FederationHook>,
    signal: &Signal,
    archive: Option<(NaiveDate, ArchiveReason)>,
    why: Retirement<'_>,
) -> TxResult<()> {
    let Retirement { at, actor, action, detail } = why;
    let notify = Notify::new(tx, at);
    let picture = family::Picture::of(tx, fed, &signal.child)?;
    let mut child = tx.child(&signal.child)?;
    let before = ChildState::of(&child);
    let was_active = signal.is_active();
    child.active.retain(|(id, _)| *id != signal.id);
    child.archived.retain(|(id, _)| *id != signal.id);
    tx.remove_org_signal(&signal.org, &signal.id)?;
    match archive {
        Some((on, reason)) => {
            let mut archived = signal.clone();
            archived.state = SignalState::Archived { on, reason };
            tx.put_signal(&archived)?;
            child.archived.push((signal.id, signal.org.clone()));
        }
        None => tx.remove_signal(&signal.id)?,
    }
    tx.log(at, actor, action, &signal.id.to_string(), detail)?;
    if was_active && !child.active.is_empty() {
        let remaining = notify.active_reporters(&child)?;
        let gone = notify.reporter(signal)?;
        notify.send(notices::match_ended_locally(&gone, &remaining, notify.officer()?.as_ref()))?;
    }
    tx.put_child(&signal.child, &child)?;
    let org_still_active = child.active.iter().any(|(_, o)| *o == signal.org);
    let change = ChildChange {
        child: &signal.child,
        before,
        after: ChildState::of(&child),
        point: None,
        added: vec![],
        removed_orgs: (was_active && !org_still_active).then(|| signal.org.clone()).into_iter().collect(),
    };
    // A child with nothing left here takes its waiting BRP lookup (its sealed BSN) along.
    if child.is_empty() {
        if let Some(seq) = tx.waiting_lookup(&signal.child)? {
            tx.remove_lookup(seq)?;
        }
    }
    // Ending: the family side first, so a peer ends a family pair while it still knows the
    // child match's parties (and tells nobody a family match ended that it never told).
    family::settle(tx, fed, picture, &[], at)?;
    changed(tx, fed, change, at)
}

/// Deletes every signal and archive entry of a child (D3 age limit, D4 erasure).
pub fn delete_child(
    tx: &Tx<'_>,
    fed: Option<&dyn FederationHook>,
    child: &ChildKey,
    at: DateTime<Utc>,
    actor: &str,
    action: AuditAction,
) -> TxResult<u32> {
    let picture = family::Picture::of(tx, fed, child)?;
    let record = tx.child(child)?;
    let mut count = 0;
    for (id, org) in record.active.iter().chain(record.archived.iter()) {
        tx.remove_signal(id)?;
        tx.remove_org_signal(org, id)?;
        tx.log(at, actor, action, &id.to_string(), "deleted")?;
        count += 1;
    }
    tx.put_child(child, &ChildRecord::default())?;
    // An erasure takes the child's queued BRP lookup (its sealed BSN) with it.
    if let Some(seq) = tx.waiting_lookup(child)? {
        tx.remove_lookup(seq)?;
    }
    let change = ChildChange {
        child,
        before: ChildState::of(&record),
        after: ChildState::None,
        point: None,
        added: vec![],
        removed_orgs: vec![],
    };
    family::settle(tx, fed, picture, &[], at)?;
    changed(tx, fed, change, at)?;
    Ok(count)
}

/// What the sweeper does with one signal on `today` (D3, D4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Keep,
    Archive,
    DeleteAgeLimit,
    Purge,
}

pub fn fate_of(signal: &Signal, today: NaiveDate) -> Fate {
    match signal.state {
        SignalState::Active => match retention::active_fate(signal.date_of_birth, signal.removal_date, today) {
            ActiveFate::Keep => Fate::Keep,
            ActiveFate::Archive => Fate::Archive,
            ActiveFate::DeleteAgeLimit => Fate::DeleteAgeLimit,
        },
        SignalState::Archived { on, .. } => match retention::archived_fate(signal.date_of_birth, on, today) {
            ArchivedFate::Keep => Fate::Keep,
            ArchivedFate::DeleteAgeLimit => Fate::DeleteAgeLimit,
            ArchivedFate::DeleteRetentionEnded => Fate::Purge,
        },
    }
}

/// Applies the sweeper's decision to one signal, re-checked inside the transaction.
/// Returns the fate and how many signals it touched.
pub fn sweep_one(
    tx: &Tx<'_>,
    fed: Option<&dyn FederationHook>,
    id: &SignalId,
    today: NaiveDate,
    at: DateTime<Utc>,
) -> TxResult<(Fate, u64)> {
    let actor = "system:sweeper";
    let Some(signal) = tx.signal(id)? else {
        return Ok((Fate::Keep, 0));
    };
    let fate = fate_of(&signal, today);
    let count = match fate {
        Fate::Keep => 0,
        Fate::Archive => {
            let archived = Some((today, ArchiveReason::Expired));
            let why = Retirement { at, actor, action: AuditAction::SignalExpire, detail: "removal date reached" };
            retire(tx, fed, &signal, archived, why)?;
            1
        }
        // Every signal and archive entry of the child goes at once.
        Fate::DeleteAgeLimit => u64::from(delete_child(tx, fed, &signal.child, at, actor, AuditAction::ChildAgeLimit)?),
        Fate::Purge => {
            let why = Retirement { at, actor, action: AuditAction::ArchivePurge, detail: "5 years in archive" };
            retire(tx, fed, &signal, None, why)?;
            1
        }
    };
    Ok((fate, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Contact, OrgId};

    fn signal(born: NaiveDate, removal: NaiveDate, state: SignalState) -> Signal {
        Signal {
            id: SignalId([1; 16]),
            child: ChildKey([2; 32]),
            org: OrgId::parse("school").unwrap(),
            professional: Contact { name: "n".into(), role: "r".into(), phone: "p".into(), email: "e@x.nl".into() },
            coordinator: None,
            registered_at: chrono::Utc::now(),
            removal_date: removal,
            date_of_birth: born,
            state,
        }
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn d3_d4_the_sweeper_archives_at_the_removal_date_and_deletes_at_23() {
        let born = day(2010, 6, 1);
        let active = signal(born, day(2026, 3, 1), SignalState::Active);
        assert_eq!(fate_of(&active, day(2026, 2, 28)), Fate::Keep);
        assert_eq!(fate_of(&active, day(2026, 3, 1)), Fate::Archive);
        let adult = signal(day(2003, 6, 1), day(2027, 1, 1), SignalState::Active);
        assert_eq!(fate_of(&adult, day(2026, 5, 31)), Fate::Keep);
        assert_eq!(fate_of(&adult, day(2026, 6, 1)), Fate::DeleteAgeLimit);
    }

    #[test]
    fn d4_an_archived_signal_is_purged_after_five_years() {
        let archived = SignalState::Archived { on: day(2020, 1, 10), reason: ArchiveReason::ConcernResolved };
        let s = signal(day(2012, 1, 1), day(2021, 1, 1), archived);
        assert_eq!(fate_of(&s, day(2025, 1, 9)), Fate::Keep);
        assert_eq!(fate_of(&s, day(2025, 1, 10)), Fate::Purge);
    }

    #[test]
    fn child_state_follows_the_record() {
        let mut record = ChildRecord::default();
        assert_eq!(ChildState::of(&record), ChildState::None);
        record.archived.push((SignalId([1; 16]), OrgId::parse("ggd").unwrap()));
        assert_eq!(ChildState::of(&record), ChildState::Archived);
        record.active.push((SignalId([2; 16]), OrgId::parse("ggd").unwrap()));
        assert_eq!(ChildState::of(&record), ChildState::Active);
    }
}
