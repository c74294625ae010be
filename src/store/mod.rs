//! The only place sled appears: a typed facade over the node's trees.
//!
//! ## Trees and keys
//!
//! | tree          | key                                  | value                         |
//! |---------------|--------------------------------------|-------------------------------|
//! | `meta`        | `schema_version`, `audit_head`, `notice_seq`, `webhook_cursor/<org>` | small values |
//! | `orgs`        | org id                               | [`Organisation`]              |
//! | `signals`     | signal id (16 bytes)                 | [`Signal`] (active or archived) |
//! | `children`    | [`ChildKey`] (32 bytes)              | [`ChildRecord`]: active and archived signal ids, D6 markers |
//! | `org_signals` | org id ‖ 0 ‖ signal id               | empty: the organisation's active signals |
//! | `notices`     | org id ‖ 0 ‖ seq (u64 BE)            | [`Notice`] for that recipient |
//! | `audit`       | seq (u64 BE)                         | hash-chained [`AuditEntry`]   |
//!
//! No tree holds a BSN: a child is known only by its [`ChildKey`]. The `children` record is
//! the one-active-signal-per-organisation-per-child index (D2) and the local pseudonym
//! index in one key, so a registration checks and inserts it in a single transaction and
//! of two concurrent registrations the second always sees the first.
//!
//! The federation adds trees beside these without reshaping them: `outbox` keyed
//! `peer region ‖ 0 ‖ seq` (one ordered queue per peer) and `peer_index` keyed
//! `peer region ‖ 0 ‖ blinded pseudonym`, written in the same transactions.
//!
//! ## Writes
//!
//! Every change is one sled transaction across the trees it touches, appending its audit
//! entries and notices in the same transaction (sled 0.34 runs transactions one at a time,
//! so sequence numbers follow commit order). The write then waits for a group-commit flush
//! before the caller may acknowledge it, and only then are watchers told about new notices:
//! a watcher never sees a notice that a crash could take back.

mod audit;
mod writer;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use tokio::sync::watch;

pub use audit::{AuditBroken, AuditEntry, AuditSummary};
pub use writer::WriteStats;
use writer::{Job, Writer};

use crate::domain::retention::{self, ActiveFate, ArchivedFate};
use crate::domain::{
    Addressee, ArchiveReason, ChildKey, Contact, Notice, NoticeKind, OrgId, Organisation, Party,
    Signal, SignalId, SignalState, WithdrawReason, Withdrawer,
};

/// Version of the on-disk layout. Bump it with a migration when a key or value changes.
pub const SCHEMA_VERSION: u32 = 1;

const META_SCHEMA: &[u8] = b"schema_version";
const META_AUDIT_HEAD: &[u8] = b"audit_head";
const META_NOTICE_SEQ: &[u8] = b"notice_seq";

/// Failures of the storage layer itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {reason}. Is another virfed process using this data directory?")]
    Open { path: PathBuf, reason: String },
    #[error("the store at {path} has schema version {found}, but this virfed uses version {expected}; run the matching virfed version or migrate the store")]
    SchemaMismatch {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("storage failure: {0}")]
    Sled(#[from] sled::Error),
    #[error("a stored {what} could not be decoded; the store may be damaged: restore from backup")]
    Corrupt { what: &'static str },
    #[error("{0}")]
    Failed(String),
}

/// Why an operation was refused. The API maps each to a precise gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
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

/// Everything the node knows about one child, under its local pseudonym.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChildRecord {
    pub active: Vec<(SignalId, OrgId)>,
    pub archived: Vec<(SignalId, OrgId)>,
    /// Organisations that already had their one history notice (D6).
    pub history_sent: Vec<OrgId>,
}

impl ChildRecord {
    fn is_empty(&self) -> bool {
        self.active.is_empty() && self.archived.is_empty()
    }
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
}

/// Result of a registration (D2: a repeat returns the existing signal).
#[derive(Clone, Debug)]
pub struct Registered {
    pub signal: Signal,
    pub created: bool,
    /// Number of other active signals on the child: > 0 means a match (D5).
    pub matched_with: usize,
}

/// What a withdrawal did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Withdrawn {
    Deleted,
    Archived,
}

/// Counts of one sweeper run.
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
    pub counterparts: Vec<Party>,
}

/// Counts for status and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub active: u64,
    pub archived: u64,
}

type TxResult<T> = Result<T, ConflictableTransactionError<OpError>>;

fn abort<T>(e: OpError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encodes plain structs infallibly")
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt { what })
}

fn prefixed(prefix: &str, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 1 + rest.len());
    key.extend_from_slice(prefix.as_bytes());
    key.push(0);
    key.extend_from_slice(rest);
    key
}

fn notice_key(org: &OrgId, seq: u64) -> Vec<u8> {
    prefixed(org.as_str(), &seq.to_be_bytes())
}

/// The trees, shared by readers and the writer thread.
#[derive(Clone)]
struct Trees {
    meta: sled::Tree,
    orgs: sled::Tree,
    signals: sled::Tree,
    children: sled::Tree,
    org_signals: sled::Tree,
    notices: sled::Tree,
    audit: sled::Tree,
}

impl Trees {
    /// Runs every job of a batch in one transaction (see [`writer`]).
    fn run_batch(&self, jobs: &[Job]) -> writer::BatchResult {
        let trees = (
            &self.meta,
            &self.orgs,
            &self.signals,
            &self.children,
            &self.org_signals,
            &self.notices,
            &self.audit,
        );
        let result = trees.transaction(
            |(meta, orgs, signals, children, org_signals, notices, audit)| {
                let tx = Tx {
                    meta,
                    orgs,
                    signals,
                    children,
                    org_signals,
                    notices,
                    audit,
                    audit_head: RefCell::new(None),
                    notice_seq: RefCell::new(None),
                };
                let mut results = Vec::with_capacity(jobs.len());
                for job in jobs {
                    match (job.run)(&tx) {
                        Ok(out) => results.push(Ok(out)),
                        // A storage failure poisons the shared transaction: abort it all.
                        Err(ConflictableTransactionError::Abort(OpError::Store(e))) => {
                            return Err(ConflictableTransactionError::Abort(OpError::Store(e)))
                        }
                        // A refusal happens before the job's first write: the others go on.
                        Err(ConflictableTransactionError::Abort(refused)) => {
                            results.push(Err(refused))
                        }
                        Err(other) => return Err(other),
                    }
                }
                tx.finish()?;
                Ok((results, tx.last_notice()))
            },
        );
        match result {
            Ok(done) => Ok(done),
            Err(TransactionError::Abort(OpError::Store(e))) => Err(e),
            Err(TransactionError::Abort(e)) => Err(StoreError::Failed(e.to_string())),
            Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
        }
    }
}

/// The node's store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    trees: Trees,
    writer: Writer,
    /// Highest notice sequence number known to be durable.
    durable_notices: watch::Sender<u64>,
}

/// Opening options.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// sled page cache in bytes.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 128 * 1024 * 1024,
        }
    }
}

impl Store {
    /// Opens (or creates) the store; checks the schema version.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let db = open_db(path, options)?;
        let meta = db.open_tree("meta")?;
        match meta.get(META_SCHEMA)? {
            None => {
                meta.insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            Some(v) => {
                let found = v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::SchemaMismatch {
                        path: path.to_owned(),
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
            }
        }
        let last_notice = read_u64(&meta.get(META_NOTICE_SEQ)?);
        let trees = Trees {
            orgs: db.open_tree("orgs")?,
            signals: db.open_tree("signals")?,
            children: db.open_tree("children")?,
            org_signals: db.open_tree("org_signals")?,
            notices: db.open_tree("notices")?,
            audit: db.open_tree("audit")?,
            meta,
        };
        let durable_notices = watch::Sender::new(last_notice);
        let batch_trees = trees.clone();
        let writer = Writer::start(db.clone(), durable_notices.clone(), move |jobs| {
            batch_trees.run_batch(jobs)
        });
        Ok(Store {
            path: path.to_owned(),
            trees,
            writer,
            durable_notices,
            db,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Batch and flush counters of the writer.
    pub fn write_stats(&self) -> &WriteStats {
        &self.writer.stats
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Runs `f` as one job of the writer's next batch transaction and returns once it is
    /// committed and flushed. `f` may refuse (a domain error) only before its first write.
    async fn write<T: Send + 'static>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<T> + Send + 'static,
    ) -> Result<T, OpError> {
        let out = self
            .writer
            .submit(Box::new(move |tx| {
                f(tx).map(|v| Box::new(v) as writer::Output)
            }))
            .await?;
        out.downcast::<T>().map(|v| *v).map_err(|_| {
            OpError::Store(StoreError::Failed(
                "internal: writer returned another type".into(),
            ))
        })
    }

    // ---- organisations (D2) -------------------------------------------------------------

    /// Registers or updates an organisation.
    pub async fn put_org(
        &self,
        org: &Organisation,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(), OpError> {
        let (org, actor) = (org.clone(), actor.to_owned());
        self.write(move |tx| {
            let existed = tx.orgs.get(org.id.as_str())?.is_some();
            tx.orgs.insert(org.id.as_str(), encode(&org))?;
            let action = if existed { "org.update" } else { "org.add" };
            tx.log(now, &actor, action, org.id.as_str(), org.domain.as_str())?;
            Ok(())
        })
        .await
    }

    pub fn org(&self, id: &OrgId) -> Result<Option<Organisation>, StoreError> {
        self.trees
            .orgs
            .get(id.as_str())?
            .map(|b| decode(&b, "organisation"))
            .transpose()
    }

    pub fn orgs(&self) -> Result<Vec<Organisation>, StoreError> {
        self.trees
            .orgs
            .iter()
            .values()
            .map(|v| decode(&v?, "organisation"))
            .collect()
    }

    // ---- signals ------------------------------------------------------------------------

    /// Registers a signal (D1, D2), forming matches (D5) or a history notice (D6).
    pub async fn register(&self, new: &NewSignal, actor: &str) -> Result<Registered, OpError> {
        let (new, actor) = (new.clone(), actor.to_owned());
        self.write(move |tx| {
            let actor = actor.as_str();
            let Some(org) = tx.org(&new.org)? else {
                return abort(OpError::UnknownOrg(new.org.clone()));
            };
            let mut child = tx.child(&new.child)?;
            if let Some((id, _)) = child.active.iter().find(|(_, o)| *o == new.org) {
                let signal = tx.signal(id)?.ok_or(OpError::Store(StoreError::Corrupt {
                    what: "signal index",
                }));
                let signal = match signal {
                    Ok(s) => s,
                    Err(e) => return abort(e),
                };
                tx.log(
                    new.now,
                    actor,
                    "signal.register.repeat",
                    &signal.id.to_string(),
                    "",
                )?;
                let matched_with = child.active.len() - 1;
                return Ok(Registered {
                    signal,
                    created: false,
                    matched_with,
                });
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
            tx.put_signal(&signal)?;
            tx.org_signals
                .insert(prefixed(signal.org.as_str(), &signal.id.0), &[])?;
            child.active.push((signal.id, signal.org.clone()));
            tx.log(
                new.now,
                actor,
                "signal.register",
                &signal.id.to_string(),
                "",
            )?;
            if !others.is_empty() {
                tx.notify_match_created(&signal, &org, &others, new.now)?;
            } else if !child.archived.is_empty() && !child.history_sent.contains(&signal.org) {
                let earlier: Vec<_> = tx
                    .signals_of(&child.archived)?
                    .into_iter()
                    .filter(|s| s.org != signal.org)
                    .collect();
                if !earlier.is_empty() {
                    let parties = tx.parties(&earlier)?;
                    let notice = Notice {
                        kind: NoticeKind::History,
                        addressee: Addressee::Professional,
                        recipient: signal.org.clone(),
                        own_signal: Some(signal.id),
                        signals: vec![],
                        counterparts: parties,
                    };
                    tx.push_notice(notice, new.now)?;
                    child.history_sent.push(signal.org.clone());
                }
            }
            tx.put_child(&new.child, &child)?;
            Ok(Registered {
                matched_with: others.len(),
                signal,
                created: true,
            })
        })
        .await
    }

    pub fn signal(&self, id: &SignalId) -> Result<Option<Signal>, StoreError> {
        self.trees
            .signals
            .get(id.0)?
            .map(|b| decode(&b, "signal"))
            .transpose()
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
    ) -> Result<Withdrawn, OpError> {
        let actor = format!("org:{caller}");
        let (id, caller) = (*id, caller.clone());
        self.write(move |tx| {
            let id = &id;
            let Some(signal) = tx.signal(id)? else {
                return abort(OpError::NotFound(*id));
            };
            if signal.org != caller {
                return abort(OpError::NotOwner(*id));
            }
            let by = match by {
                Withdrawer::Professional => "by professional",
                Withdrawer::Coordinator => "by coordinator",
            };
            match (reason, signal.is_active()) {
                (WithdrawReason::MadeInError, _) => {
                    tx.retire(
                        &signal,
                        None,
                        now,
                        &actor,
                        "signal.withdraw.made-in-error",
                        by,
                    )?;
                    Ok(Withdrawn::Deleted)
                }
                (WithdrawReason::ConcernResolved, true) => {
                    let archived = Some((today, ArchiveReason::ConcernResolved));
                    tx.retire(
                        &signal,
                        archived,
                        now,
                        &actor,
                        "signal.withdraw.concern-resolved",
                        by,
                    )?;
                    Ok(Withdrawn::Archived)
                }
                (WithdrawReason::ConcernResolved, false) => abort(OpError::NotActive(*id)),
            }
        })
        .await
    }

    /// Deletes every signal and archive entry on the child (erasure decision, D4).
    pub async fn erase_child(
        &self,
        child: &ChildKey,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<u32, OpError> {
        let (child, actor) = (*child, actor.to_owned());
        self.write(move |tx| tx.delete_child(&child, now, &actor, "child.erase"))
            .await
    }

    /// Applies D3 and D4 as of `today`: archive expired signals, delete everything on
    /// children who turned 23, purge archive entries older than 5 years.
    pub async fn sweep(
        &self,
        today: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<SweepReport, OpError> {
        let actor = "system:sweeper";
        let mut report = SweepReport::default();
        // Decide from a scan, then act per record in its own transaction, re-checking there.
        let mut due = Vec::new();
        for item in self.trees.signals.iter().values() {
            let signal: Signal = decode(&item.map_err(StoreError::from)?, "signal")?;
            let fate = fate_of(&signal, today);
            if fate != Fate::Keep {
                due.push(signal.id);
            }
        }
        // Submitted together, the jobs share the writer's batches and flushes.
        let jobs = due.into_iter().map(|id| {
            self.write(move |tx| {
                let Some(signal) = tx.signal(&id)? else {
                    return Ok(Fate::Keep);
                };
                let fate = fate_of(&signal, today);
                match fate {
                    Fate::Keep => {}
                    Fate::Archive => {
                        let archived = Some((today, ArchiveReason::Expired));
                        tx.retire(
                            &signal,
                            archived,
                            now,
                            actor,
                            "signal.expire",
                            "removal date reached",
                        )?;
                    }
                    Fate::DeleteAgeLimit => {
                        tx.delete_child(&signal.child, now, actor, "child.age-limit")?;
                    }
                    Fate::Purge => {
                        tx.retire(
                            &signal,
                            None,
                            now,
                            actor,
                            "archive.purge",
                            "5 years in archive",
                        )?;
                    }
                }
                Ok(fate)
            })
        });
        for done in futures::future::join_all(jobs).await {
            match done? {
                Fate::Keep => {}
                Fate::Archive => report.archived += 1,
                Fate::DeleteAgeLimit => report.deleted_age_limit += 1,
                Fate::Purge => report.purged_archive += 1,
            }
        }
        Ok(report)
    }

    /// The organisation's active matches (D5).
    pub fn matches_for(&self, org: &OrgId) -> Result<Vec<MatchView>, StoreError> {
        let mut out = Vec::new();
        for key in self
            .trees
            .org_signals
            .scan_prefix(prefixed(org.as_str(), &[]))
            .keys()
        {
            let key = key?;
            let id: [u8; 16] = key[key.len() - 16..]
                .try_into()
                .map_err(|_| StoreError::Corrupt { what: "index" })?;
            let Some(own) = self.signal(&SignalId(id))? else {
                continue;
            };
            let Some(child) = self.trees.children.get(own.child.0)? else {
                continue;
            };
            let child: ChildRecord = decode(&child, "child record")?;
            let mut counterparts = Vec::new();
            for (other, _) in child.active.iter().filter(|(s, _)| *s != own.id) {
                if let Some(signal) = self.signal(other)? {
                    counterparts.push(self.party(&signal)?);
                }
            }
            if !counterparts.is_empty() {
                out.push(MatchView { own, counterparts });
            }
        }
        Ok(out)
    }

    fn party(&self, signal: &Signal) -> Result<Party, StoreError> {
        let org = self.org(&signal.org)?;
        Ok(party_of(signal, org.as_ref()))
    }

    /// Active and archived signal counts.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        let mut counts = Counts::default();
        for v in self.trees.signals.iter().values() {
            let s: Signal = decode(&v?, "signal")?;
            if s.is_active() {
                counts.active += 1;
            } else {
                counts.archived += 1;
            }
        }
        Ok(counts)
    }

    // ---- notices ------------------------------------------------------------------------

    /// Durable notices for `org` with cursor in `(after, upto]`, oldest first.
    pub fn notices_after(
        &self,
        org: &OrgId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Notice)>, StoreError> {
        let upto = *self.durable_notices.borrow();
        let start = notice_key(org, after.saturating_add(1));
        let end = notice_key(org, upto.saturating_add(1));
        if after >= upto {
            return Ok(Vec::new());
        }
        self.trees
            .notices
            .range(start..end)
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                let seq = read_u64(&Some(k.subslice(k.len() - 8, 8)));
                Ok((seq, decode(&v, "notice")?))
            })
            .collect()
    }

    /// A receiver that changes whenever new notices become durable.
    pub fn subscribe_notices(&self) -> watch::Receiver<u64> {
        self.durable_notices.subscribe()
    }

    pub fn meta_u64(&self, key: &str) -> Result<u64, StoreError> {
        Ok(read_u64(&self.trees.meta.get(key)?))
    }

    pub async fn set_meta_u64(&self, key: &str, value: u64) -> Result<(), OpError> {
        let key = key.to_owned();
        self.write(move |tx| {
            tx.meta.insert(key.as_bytes(), &value.to_be_bytes())?;
            Ok(())
        })
        .await
    }

    // ---- audit (D8) ---------------------------------------------------------------------

    /// Verifies the hash chain of the audit log.
    pub fn verify_audit(&self) -> Result<Result<AuditSummary, AuditBroken>, StoreError> {
        let head = self.audit_head()?;
        let entries = self
            .trees
            .audit
            .iter()
            .map(|item| item.map(|(k, v)| (read_u64(&Some(k)), v.to_vec())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(audit::verify(entries.into_iter(), head))
    }

    /// Audit entries in order (for `virfed audit show` and tests).
    pub fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.trees
            .audit
            .iter()
            .values()
            .map(|v| Ok(decode::<audit::StoredEntry>(&v?, "audit entry")?.entry))
            .collect()
    }

    fn audit_head(&self) -> Result<(u64, [u8; 32]), StoreError> {
        match self.trees.meta.get(META_AUDIT_HEAD)? {
            None => Ok((0, [0; 32])),
            Some(v) => decode(&v, "audit head"),
        }
    }

    /// Raw access for tamper tests: rewrites an audit entry's stored bytes.
    #[doc(hidden)]
    pub fn tamper_audit_raw(
        &self,
        seq: u64,
        bytes: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let old = match bytes {
            Some(b) => self.trees.audit.insert(seq.to_be_bytes(), b)?,
            None => self.trees.audit.remove(seq.to_be_bytes())?,
        };
        self.db.flush()?;
        Ok(old.map(|v| v.to_vec()))
    }

    /// Flushes everything (used at shutdown).
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Keep,
    Archive,
    DeleteAgeLimit,
    Purge,
}

fn fate_of(signal: &Signal, today: NaiveDate) -> Fate {
    match signal.state {
        SignalState::Active => {
            match retention::active_fate(signal.date_of_birth, signal.removal_date, today) {
                ActiveFate::Keep => Fate::Keep,
                ActiveFate::Archive => Fate::Archive,
                ActiveFate::DeleteAgeLimit => Fate::DeleteAgeLimit,
            }
        }
        SignalState::Archived { on, .. } => {
            match retention::archived_fate(signal.date_of_birth, on, today) {
                ArchivedFate::Keep => Fate::Keep,
                ArchivedFate::DeleteAgeLimit => Fate::DeleteAgeLimit,
                ArchivedFate::DeleteRetentionEnded => Fate::Purge,
            }
        }
    }
}

/// Opens sled, retrying for a moment while a previous holder of the file lock (this
/// process's last node, a backup) is still letting go.
fn open_db(path: &Path, options: &StoreOptions) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_bytes)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => {
                return Err(StoreError::Open {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

fn read_u64(v: &Option<sled::IVec>) -> u64 {
    v.as_ref()
        .and_then(|b| b.as_ref().try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

fn party_of(signal: &Signal, org: Option<&Organisation>) -> Party {
    Party {
        region: None,
        org_id: signal.org.clone(),
        org_name: org
            .map(|o| o.name.clone())
            .unwrap_or_else(|| signal.org.to_string()),
        org_domain: org
            .map(|o| o.domain)
            .unwrap_or(crate::domain::OrgDomain::Other),
        professional: signal.professional.clone(),
        coordinator: org
            .and_then(|o| o.coordinator.clone())
            .or_else(|| signal.coordinator.clone()),
    }
}

/// One transaction's view of the trees, with the audit head and notice counter carried
/// in memory and written once at the end.
struct Tx<'a> {
    meta: &'a TransactionalTree,
    orgs: &'a TransactionalTree,
    signals: &'a TransactionalTree,
    children: &'a TransactionalTree,
    org_signals: &'a TransactionalTree,
    notices: &'a TransactionalTree,
    audit: &'a TransactionalTree,
    audit_head: RefCell<Option<(u64, [u8; 32])>>,
    notice_seq: RefCell<Option<u64>>,
}

fn corrupt<T>(what: &'static str) -> TxResult<T> {
    abort(OpError::Store(StoreError::Corrupt { what }))
}

impl Tx<'_> {
    fn get<T: DeserializeOwned>(
        tree: &TransactionalTree,
        key: &[u8],
        what: &'static str,
    ) -> TxResult<Option<T>> {
        match tree.get(key)? {
            None => Ok(None),
            Some(bytes) => match postcard::from_bytes(&bytes) {
                Ok(v) => Ok(Some(v)),
                Err(_) => corrupt(what),
            },
        }
    }

    fn org(&self, id: &OrgId) -> TxResult<Option<Organisation>> {
        Self::get(self.orgs, id.as_str().as_bytes(), "organisation")
    }

    fn signal(&self, id: &SignalId) -> TxResult<Option<Signal>> {
        Self::get(self.signals, &id.0, "signal")
    }

    fn put_signal(&self, signal: &Signal) -> TxResult<()> {
        self.signals.insert(&signal.id.0, encode(signal))?;
        Ok(())
    }

    fn child(&self, child: &ChildKey) -> TxResult<ChildRecord> {
        Ok(Self::get(self.children, &child.0, "child record")?.unwrap_or_default())
    }

    fn put_child(&self, key: &ChildKey, record: &ChildRecord) -> TxResult<()> {
        if record.is_empty() {
            self.children.remove(&key.0)?;
        } else {
            self.children.insert(&key.0, encode(record))?;
        }
        Ok(())
    }

    fn signals_of(&self, ids: &[(SignalId, OrgId)]) -> TxResult<Vec<Signal>> {
        let mut out = Vec::with_capacity(ids.len());
        for (id, _) in ids {
            match self.signal(id)? {
                Some(s) => out.push(s),
                None => return corrupt("child record"),
            }
        }
        Ok(out)
    }

    fn parties(&self, signals: &[Signal]) -> TxResult<Vec<Party>> {
        signals
            .iter()
            .map(|s| Ok(party_of(s, self.org(&s.org)?.as_ref())))
            .collect()
    }

    /// Appends an audit entry to the chain.
    fn log(
        &self,
        at: DateTime<Utc>,
        actor: &str,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> TxResult<()> {
        let mut head = self.audit_head.borrow_mut();
        let (seq, prev) = match *head {
            Some(h) => h,
            None => Self::get(self.meta, META_AUDIT_HEAD, "audit head")?.unwrap_or((0, [0; 32])),
        };
        let entry = AuditEntry {
            seq: seq + 1,
            at,
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject: subject.to_owned(),
            detail: detail.to_owned(),
            prev,
        };
        let hash = audit::entry_hash(&entry);
        self.audit.insert(
            &entry.seq.to_be_bytes(),
            encode(&audit::StoredEntry {
                entry: entry.clone(),
                hash,
            }),
        )?;
        *head = Some((entry.seq, hash));
        Ok(())
    }

    /// Stores a notice for its recipient and logs it (D8).
    fn push_notice(&self, notice: Notice, at: DateTime<Utc>) -> TxResult<()> {
        let mut counter = self.notice_seq.borrow_mut();
        let seq = match *counter {
            Some(s) => s,
            None => read_u64(&self.meta.get(META_NOTICE_SEQ)?),
        } + 1;
        *counter = Some(seq);
        drop(counter);
        let action = match notice.kind {
            NoticeKind::MatchCreated => "notice.match-created",
            NoticeKind::MatchEnded => "notice.match-ended",
            NoticeKind::History => "notice.history",
        };
        let addressee = match notice.addressee {
            Addressee::Professional => "professional",
            Addressee::Coordinator => "coordinator",
            Addressee::MatchOfficer => "match officer",
        };
        let subject = notice.own_signal.map(|s| s.to_string()).unwrap_or_default();
        let detail = format!("to {addressee} of org:{} (cursor {seq})", notice.recipient);
        self.notices
            .insert(notice_key(&notice.recipient, seq), encode(&notice))?;
        self.log(at, "system:matcher", action, &subject, &detail)
    }

    /// Notices to the professional and the coordinator (if any) of `signal`'s organisation.
    fn notify_reporter(
        &self,
        kind: NoticeKind,
        signal: &Signal,
        counterparts: Vec<Party>,
        at: DateTime<Utc>,
    ) -> TxResult<()> {
        let has_coordinator = self.org(&signal.org)?.and_then(|o| o.coordinator).is_some();
        let mut addressees = vec![Addressee::Professional];
        if has_coordinator {
            addressees.push(Addressee::Coordinator);
        }
        for addressee in addressees {
            let notice = Notice {
                kind,
                addressee,
                recipient: signal.org.clone(),
                own_signal: Some(signal.id),
                signals: vec![],
                counterparts: counterparts.clone(),
            };
            self.push_notice(notice, at)?;
        }
        Ok(())
    }

    fn notify_match_officer(
        &self,
        kind: NoticeKind,
        involved: &[&Signal],
        at: DateTime<Utc>,
    ) -> TxResult<()> {
        let Some(officer) = Self::get::<OrgId>(self.meta, b"match_officer", "match officer")?
        else {
            return Ok(());
        };
        let owned: Vec<Signal> = involved.iter().map(|s| (*s).clone()).collect();
        let notice = Notice {
            kind,
            addressee: Addressee::MatchOfficer,
            recipient: officer,
            own_signal: None,
            signals: involved.iter().map(|s| s.id).collect(),
            counterparts: self.parties(&owned)?,
        };
        self.push_notice(notice, at)
    }

    /// D5: everyone on the child learns the others' contact details.
    fn notify_match_created(
        &self,
        new: &Signal,
        org: &Organisation,
        others: &[Signal],
        at: DateTime<Utc>,
    ) -> TxResult<()> {
        let new_party = party_of(new, Some(org));
        self.notify_reporter(NoticeKind::MatchCreated, new, self.parties(others)?, at)?;
        for other in others {
            self.notify_reporter(NoticeKind::MatchCreated, other, vec![new_party.clone()], at)?;
        }
        let mut involved: Vec<&Signal> = others.iter().collect();
        involved.push(new);
        self.notify_match_officer(NoticeKind::MatchCreated, &involved, at)
    }

    /// Takes a signal out of matching: archive it (`Some`) or delete it (`None`). Remaining
    /// active counterparts learn the match ended (D7).
    fn retire(
        &self,
        signal: &Signal,
        archive: Option<(NaiveDate, ArchiveReason)>,
        at: DateTime<Utc>,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> TxResult<()> {
        let mut child = self.child(&signal.child)?;
        let was_active = signal.is_active();
        child.active.retain(|(id, _)| *id != signal.id);
        child.archived.retain(|(id, _)| *id != signal.id);
        self.org_signals
            .remove(prefixed(signal.org.as_str(), &signal.id.0))?;
        match archive {
            Some((on, reason)) => {
                let mut archived = signal.clone();
                archived.state = SignalState::Archived { on, reason };
                self.put_signal(&archived)?;
                child.archived.push((signal.id, signal.org.clone()));
            }
            None => {
                self.signals.remove(&signal.id.0)?;
            }
        }
        self.log(at, actor, action, &signal.id.to_string(), detail)?;
        if was_active && !child.active.is_empty() {
            let remaining = self.signals_of(&child.active)?;
            let gone = self.parties(std::slice::from_ref(signal))?;
            for other in &remaining {
                self.notify_reporter(NoticeKind::MatchEnded, other, gone.clone(), at)?;
            }
            let mut involved: Vec<&Signal> = remaining.iter().collect();
            involved.push(signal);
            self.notify_match_officer(NoticeKind::MatchEnded, &involved, at)?;
        }
        self.put_child(&signal.child, &child)
    }

    /// Deletes every signal and archive entry of a child (D3 age limit, D4 erasure).
    fn delete_child(
        &self,
        child: &ChildKey,
        at: DateTime<Utc>,
        actor: &str,
        action: &str,
    ) -> TxResult<u32> {
        let record = self.child(child)?;
        let mut count = 0;
        for (id, org) in record.active.iter().chain(record.archived.iter()) {
            self.signals.remove(&id.0)?;
            self.org_signals.remove(prefixed(org.as_str(), &id.0))?;
            self.log(at, actor, action, &id.to_string(), "deleted")?;
            count += 1;
        }
        self.children.remove(&child.0)?;
        Ok(count)
    }

    fn last_notice(&self) -> Option<u64> {
        *self.notice_seq.borrow()
    }

    fn finish(&self) -> TxResult<()> {
        if let Some(head) = *self.audit_head.borrow() {
            self.meta.insert(META_AUDIT_HEAD, encode(&head))?;
        }
        if let Some(seq) = *self.notice_seq.borrow() {
            self.meta.insert(META_NOTICE_SEQ, &seq.to_be_bytes())?;
        }
        Ok(())
    }
}

impl Store {
    /// Records which organisation receives the match officer's notices (D5).
    pub async fn set_match_officer(&self, org: Option<&OrgId>) -> Result<(), OpError> {
        let org = org.cloned();
        self.write(move |tx| {
            match &org {
                Some(o) => tx.meta.insert("match_officer", encode(o))?,
                None => tx.meta.remove("match_officer")?,
            };
            Ok(())
        })
        .await
    }
}
