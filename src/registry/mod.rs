//! The application core for the region's own signals: the VIR's rules as functions over a
//! store transaction, and [`Registry`], which runs them as durable writes.
//!
//! "When is a match made?" — [`signals::register`]: a new signal on a child with other
//! active signals here (or a matched pair in another region) is a match (D5), and
//! [`notices`] says who is told what. [`signals::retire`] and [`signals::delete_child`]
//! end matches (D7) and apply retention (D3, D4); [`Registry::sweep`] runs them on the
//! clock.
//!
//! The federation is below nothing here: the registry calls it through the
//! [`FederationHook`] trait, inside the same transaction as the local change, and
//! `federation` implements it. So the registry never imports the federation, and the
//! federation builds on the registry's notice rules.

pub mod family;
pub mod notices;
pub mod signals;

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};

use crate::domain::{
    ArchiveReason, AuditAction, ChildKey, Contact, OrgId, Organisation, Party, Signal, SignalId, WithdrawReason,
    Withdrawer,
};
use crate::pseudonym::Blinded;
use crate::store::{Store, StoreError, Tx, TxResult};
pub use signals::ChildState;

/// Why an operation was refused. The API maps each to a precise gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("organisation {0} is not registered with this region; ask the regional VIR operator to add it")]
    UnknownOrg(OrgId),
    #[error("no signal with id {0}")]
    NotFound(SignalId),
    #[error("signal {0} was made by another organisation; only the reporting organisation may withdraw it")]
    NotOwner(SignalId),
    #[error("signal {0} is already archived; only 'made in error' can still delete it")]
    NotActive(SignalId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What changed about a local child, for the federation.
pub struct ChildChange<'a> {
    pub child: &'a ChildKey,
    pub before: ChildState,
    pub after: ChildState,
    /// `P·a`, known when the change is a registration.
    pub point: Option<Blinded>,
    /// New local parties on an already active subject, each with the child its signal is on
    /// (the subject itself for a child; a family party is sent to a peer only once its child
    /// is linked there, see `registry::family`).
    pub added: Vec<(Party, ChildKey)>,
    /// Local organisations that stopped signalling a still active subject.
    pub removed_orgs: Vec<OrgId>,
}

/// The federation's part in local changes, run inside the same transaction.
pub trait FederationHook: Send + Sync {
    /// Messages to peers and local pair updates for a changed child.
    fn child_changed(&self, tx: &Tx<'_>, change: &ChildChange<'_>, at: DateTime<Utc>) -> TxResult<()>;
    /// The parties of every matched cross-region pair of the child (for a new reporter, D5).
    fn remote_parties(&self, tx: &Tx<'_>, child: &ChildKey) -> TxResult<Vec<Party>>;
    /// The parties of the matched cross-region family pairs of the child's parents, less
    /// those known through the child's own pairs (for a reporter on the child, D11).
    fn family_parties(&self, tx: &Tx<'_>, child: &ChildKey) -> TxResult<Vec<Party>>;
}

/// A signal to register, already validated.
#[derive(Clone, Debug)]
pub struct NewSignal {
    pub child: ChildKey,
    pub org: OrgId,
    pub professional: Contact,
    pub date_of_birth: NaiveDate,
    pub removal_date: NaiveDate,
    pub now: DateTime<Utc>,
    /// The child's point blinded with this node's key (`P·a`), for the federation.
    pub point: Option<Blinded>,
    /// The child's parents (0-2, D11), as pseudonyms with their points.
    pub parents: Vec<family::NewParent>,
    /// The child's BSN sealed for a BRP parent lookup (`LocalKey::seal_bsn`), when the node
    /// asks the BRP: queued in the same write if the child is new here.
    pub lookup: Option<Vec<u8>>,
}

/// Result of a registration (D2: a repeat returns the existing signal).
#[derive(Clone, Debug)]
pub struct Registered {
    pub signal: Signal,
    pub created: bool,
    /// Number of other active signals on the child: > 0 means a match (D5).
    pub matched_with: usize,
    /// A BRP parent lookup for the child is queued (family matches follow when it is done).
    pub lookup_pending: bool,
}

/// What a withdrawal did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Withdrawn {
    Deleted,
    Archived,
}

/// Counts of one sweeper run, in signals (active or archived).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub archived: u64,
    pub deleted_age_limit: u64,
    pub purged_archive: u64,
}

/// An active match as one organisation sees it.
#[derive(Clone, Debug)]
pub struct MatchView {
    pub own: Signal,
    /// Child match: the other reporters on the same child.
    pub counterparts: Vec<Party>,
    /// Family match: the reporters on children who share a parent with it (D11).
    pub family: Vec<Party>,
}

/// The region's signals: the rules run as durable writes on the store. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    store: Store,
    federation: Option<Arc<dyn FederationHook>>,
}

impl Registry {
    /// A registry without federation (a node on its own).
    pub fn new(store: Store) -> Registry {
        Registry { store, federation: None }
    }

    /// A registry whose local changes reach the federation through `federation`.
    pub fn with_federation(store: Store, federation: Arc<dyn FederationHook>) -> Registry {
        Registry { store, federation: Some(federation) }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl Fn(&Tx<'_>, Option<&dyn FederationHook>) -> TxResult<Result<T, RegistryError>> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let fed = self.federation.clone();
        self.store.write(move |tx| f(tx, fed.as_deref())).await?
    }

    /// Registers or updates an organisation (D2).
    pub async fn put_org(&self, org: &Organisation, actor: &str, now: DateTime<Utc>) -> Result<(), RegistryError> {
        let (org, actor) = (org.clone(), actor.to_owned());
        self.write(move |tx, _| {
            let action = if tx.put_org(&org)? { AuditAction::OrgUpdate } else { AuditAction::OrgAdd };
            tx.log(now, &actor, action, org.id.as_str(), org.domain.as_str())?;
            Ok(Ok(()))
        })
        .await
    }

    /// Records which organisation receives the match officer's notices (D5).
    pub async fn set_match_officer(&self, org: Option<&OrgId>) -> Result<(), RegistryError> {
        let org = org.cloned();
        self.write(move |tx, _| Ok(Ok(tx.set_match_officer(org.as_ref())?))).await
    }

    /// Registers a signal (D1, D2), forming matches (D5) or a history notice (D6).
    pub async fn register(&self, new: &NewSignal, actor: &str) -> Result<Registered, RegistryError> {
        let (new, actor) = (new.clone(), actor.to_owned());
        self.write(move |tx, fed| signals::register(tx, fed, &new, &actor)).await
    }

    /// Withdraws a signal on behalf of its own organisation (D4, D7).
    pub async fn withdraw(
        &self,
        id: &SignalId,
        caller: &OrgId,
        reason: WithdrawReason,
        by: Withdrawer,
        now: DateTime<Utc>,
        today: NaiveDate,
    ) -> Result<Withdrawn, RegistryError> {
        let actor = format!("org:{caller}");
        let (id, caller) = (*id, caller.clone());
        self.write(move |tx, fed| {
            let Some(signal) = tx.signal(&id)? else {
                return Ok(Err(RegistryError::NotFound(id)));
            };
            if signal.org != caller {
                return Ok(Err(RegistryError::NotOwner(id)));
            }
            let by = match by {
                Withdrawer::Professional => "by professional",
                Withdrawer::Coordinator => "by coordinator",
            };
            match (reason, signal.is_active()) {
                (WithdrawReason::MadeInError, _) => {
                    let action = AuditAction::SignalWithdrawMadeInError;
                    let why = signals::Retirement { at: now, actor: &actor, action, detail: by };
                    signals::retire(tx, fed, &signal, None, why)?;
                    Ok(Ok(Withdrawn::Deleted))
                }
                (WithdrawReason::ConcernResolved, true) => {
                    let archived = Some((today, ArchiveReason::ConcernResolved));
                    let action = AuditAction::SignalWithdrawConcernResolved;
                    let why = signals::Retirement { at: now, actor: &actor, action, detail: by };
                    signals::retire(tx, fed, &signal, archived, why)?;
                    Ok(Ok(Withdrawn::Archived))
                }
                (WithdrawReason::ConcernResolved, false) => Ok(Err(RegistryError::NotActive(id))),
            }
        })
        .await
    }

    /// A BRP lookup is done: the child's parents are recorded and its family matches form
    /// (none when the BRP listed none, or the child has no signal left here). Returns the
    /// parents newly linked.
    pub async fn complete_lookup(
        &self,
        seq: u64,
        parents: Vec<family::NewParent>,
        detail: &str,
        now: DateTime<Utc>,
    ) -> Result<usize, RegistryError> {
        let detail = detail.to_owned();
        self.write(move |tx, fed| {
            let Some(lookup) = tx.lookup(seq)? else { return Ok(Ok(0)) };
            tx.remove_lookup(seq)?;
            tx.log(now, "system:family", AuditAction::FamilyLookupDone, &format!("lookup {seq}"), &detail)?;
            Ok(Ok(family::add_parents(tx, fed, &lookup.child, &parents, now, &format!("lookup {seq}"))?))
        })
        .await
    }

    /// A BRP lookup failed: it waits until `next_at_ms` for its next attempt.
    pub async fn reschedule_lookup(&self, seq: u64, attempts: u32, next_at_ms: i64) -> Result<(), RegistryError> {
        self.write(move |tx, _| {
            if let Some(mut lookup) = tx.lookup(seq)? {
                lookup.attempts = attempts;
                lookup.next_at_ms = next_at_ms;
                tx.put_lookup(seq, &lookup)?;
            }
            Ok(Ok(()))
        })
        .await
    }

    /// Deletes every signal and archive entry on the child (erasure decision, D4).
    pub async fn erase_child(&self, child: &ChildKey, actor: &str, now: DateTime<Utc>) -> Result<u32, RegistryError> {
        let (child, actor) = (*child, actor.to_owned());
        self.write(move |tx, fed| Ok(Ok(signals::delete_child(tx, fed, &child, now, &actor, AuditAction::ChildErase)?)))
            .await
    }

    /// Applies D3 and D4 as of `today`: archive expired signals, delete everything on
    /// children who turned 23, purge archive entries older than 5 years.
    pub async fn sweep(&self, today: NaiveDate, now: DateTime<Utc>) -> Result<SweepReport, RegistryError> {
        // Decide from a scan, then act per signal in its own job, re-checking there.
        let mut due = Vec::new();
        for signal in self.store.signals() {
            let signal = signal?;
            if signals::fate_of(&signal, today) != signals::Fate::Keep {
                due.push(signal.id);
            }
        }
        // Submitted together, the jobs share the writer's batches and flushes.
        let jobs =
            due.into_iter().map(|id| self.write(move |tx, fed| Ok(Ok(signals::sweep_one(tx, fed, &id, today, now)?))));
        let mut report = SweepReport::default();
        for done in futures::future::join_all(jobs).await {
            let (fate, count) = done?;
            match fate {
                signals::Fate::Keep => {}
                signals::Fate::Archive => report.archived += count,
                signals::Fate::DeleteAgeLimit => report.deleted_age_limit += count,
                signals::Fate::Purge => report.purged_archive += count,
            }
        }
        Ok(report)
    }

    /// The organisation's active matches (D5): its active signals with the other active
    /// reporters on the same child here and the parties of matched pairs elsewhere.
    pub fn matches_for(&self, org: &OrgId) -> Result<Vec<MatchView>, StoreError> {
        let mut out = Vec::new();
        for id in self.store.org_signal_ids(org)? {
            let Some(own) = self.store.signal(&id)? else { continue };
            let child = self.store.child(&own.child)?;
            let mut counterparts = Vec::new();
            for (other, _) in child.active.iter().filter(|(s, _)| *s != own.id) {
                if let Some(signal) = self.store.signal(other)? {
                    let org = self.store.org(&signal.org)?;
                    counterparts.push(notices::party_of(&signal, org.as_ref()));
                }
            }
            let mut same_child = Vec::new();
            for pair in self.store.pairs_of(&own.child)? {
                if pair.is_matched() {
                    same_child.extend(pair.remote_parties);
                }
            }
            let family = self.family_of(&own, &same_child)?;
            counterparts.extend(same_child);
            if !counterparts.is_empty() || !family.is_empty() {
                out.push(MatchView { own, counterparts, family });
            }
        }
        Ok(out)
    }

    /// The family counterparts of one active signal: other organisations' active signals on
    /// its siblings here, then the parties of its parents' matched family pairs elsewhere,
    /// less those it knows through its own child's matches (`same_child`).
    fn family_of(&self, own: &Signal, same_child: &[Party]) -> Result<Vec<Party>, StoreError> {
        let mut out: Vec<Party> = Vec::new();
        let parents = self.store.parents_of(&own.child)?;
        let mut siblings = std::collections::BTreeSet::new();
        for parent in &parents {
            siblings.extend(self.store.children_of(parent)?.into_iter().filter(|c| *c != own.child));
        }
        for sibling in siblings {
            for (id, org) in self.store.child(&sibling)?.active {
                if org == own.org {
                    continue;
                }
                if let Some(signal) = self.store.signal(&id)? {
                    out.push(notices::party_of(&signal, self.store.org(&signal.org)?.as_ref()));
                }
            }
        }
        for parent in &parents {
            for pair in self.store.pairs_of(&parent.subject())? {
                if !pair.is_matched() {
                    continue;
                }
                for p in pair.remote_parties {
                    let known = |q: &Party| q.region == p.region && q.org_id == p.org_id;
                    if !same_child.iter().any(known) && !out.iter().any(known) {
                        out.push(p);
                    }
                }
            }
        }
        Ok(out)
    }
}
