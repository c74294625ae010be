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
pub mod backup;
pub mod federation;
pub mod migrate;
mod writer;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

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
    Addressee, ArchiveReason, ChildKey, Contact, Notice, NoticeKind, OrgId, Organisation, Party, RegionId, Signal,
    SignalId, SignalState, WithdrawReason, Withdrawer,
};
use crate::pseudonym::{BlindKey, Blinded, LocalKey};
use federation::{child_state, ChildChange, ChildState, InItem, ItemAnswer, OutItem, PeerSeen};

/// Version of the on-disk layout. Bump it with a migration when a key or value changes.
pub const SCHEMA_VERSION: u32 = 2;

const META_SCHEMA: &[u8] = b"schema_version";
const META_AUDIT_HEAD: &[u8] = b"audit_head";
const META_NOTICE_SEQ: &[u8] = b"notice_seq";
const META_OUTBOX_SEQ: &[u8] = b"outbox_seq";
const META_EPOCH: &[u8] = b"epoch";
const META_BLIND_FP: &[u8] = b"blind_key_fingerprint";
const META_JOINED: &str = "joined/";

/// Failures of the storage layer itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {reason}. Is another virfed process using this data directory?")]
    Open { path: PathBuf, reason: String },
    #[error("the store at {path} has schema version {found}, but this virfed uses version {expected} and cannot migrate from it; run the virfed version that wrote it (restore a backup to go back)")]
    SchemaMismatch { path: PathBuf, found: u32, expected: u32 },
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
    #[error("epoch {0:x} of this peer's store was replaced (a restore); its messages are no longer applied")]
    Superseded(u64),
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
    /// The child's point blinded with this node's key (`P·a`), for the federation.
    pub point: Option<Blinded>,
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
    fed: sled::Tree,
    outbox: sled::Tree,
    fed_ctx: Arc<RwLock<Option<FedContext>>>,
}

/// What the transactions need to speak for this node to its peers.
#[derive(Clone)]
pub struct FedContext {
    /// Configured peer regions.
    pub peers: Vec<String>,
    /// The local key, for per-peer handles.
    pub key: LocalKey,
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
            &self.fed,
            &self.outbox,
        );
        let fed_ctx = self.fed_ctx.read().map(|c| c.clone()).unwrap_or(None);
        let result = trees.transaction(|(meta, orgs, signals, children, org_signals, notices, audit, fed, outbox)| {
            let tx = Tx {
                meta,
                orgs,
                signals,
                children,
                org_signals,
                notices,
                audit,
                fed,
                outbox,
                fed_ctx: &fed_ctx,
                audit_head: RefCell::new(None),
                notice_seq: RefCell::new(None),
                outbox_seq: RefCell::new(None),
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
                    Err(ConflictableTransactionError::Abort(refused)) => results.push(Err(refused)),
                    Err(other) => return Err(other),
                }
            }
            tx.finish()?;
            let outbox = *tx.outbox_seq.borrow();
            Ok((results, writer::Marks { notice: tx.last_notice(), outbox }))
        });
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
    /// Changes whenever new outbox items become durable.
    durable_outbox: watch::Sender<u64>,
}

/// Opening options.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// sled page cache in bytes.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { cache_bytes: 128 * 1024 * 1024 }
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
            Some(_) => {
                // Older stores are migrated in place; a newer one is refused.
                migrate::run(&db, path, true)?;
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
            fed: db.open_tree("fed")?,
            outbox: db.open_tree("outbox")?,
            fed_ctx: Arc::new(RwLock::new(None)),
            meta,
        };
        if trees.meta.get(META_EPOCH)?.is_none() {
            trees.meta.insert(META_EPOCH, &rand::random::<u64>().to_be_bytes())?;
            // A new store (a new node, or one rebuilt empty) asks its peers for everything.
            trees.meta.insert(backup::META_RESYNC_AFTER_RESTORE, &[1])?;
            db.flush()?;
        }
        let durable_notices = watch::Sender::new(last_notice);
        let durable_outbox = watch::Sender::new(read_u64(&trees.meta.get(META_OUTBOX_SEQ)?));
        let batch_trees = trees.clone();
        let writer = Writer::start(db.clone(), durable_notices.clone(), durable_outbox.clone(), move |jobs| {
            batch_trees.run_batch(jobs)
        });
        Ok(Store { path: path.to_owned(), trees, writer, durable_notices, durable_outbox, db })
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
        let out = self.writer.submit(Box::new(move |tx| f(tx).map(|v| Box::new(v) as writer::Output))).await?;
        out.downcast::<T>()
            .map(|v| *v)
            .map_err(|_| OpError::Store(StoreError::Failed("internal: writer returned another type".into())))
    }

    // ---- organisations (D2) -------------------------------------------------------------

    /// Registers or updates an organisation.
    pub async fn put_org(&self, org: &Organisation, actor: &str, now: DateTime<Utc>) -> Result<(), OpError> {
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
        self.trees.orgs.get(id.as_str())?.map(|b| decode(&b, "organisation")).transpose()
    }

    pub fn orgs(&self) -> Result<Vec<Organisation>, StoreError> {
        self.trees.orgs.iter().values().map(|v| decode(&v?, "organisation")).collect()
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
                let signal = tx.signal(id)?.ok_or(OpError::Store(StoreError::Corrupt { what: "signal index" }));
                let signal = match signal {
                    Ok(s) => s,
                    Err(e) => return abort(e),
                };
                tx.log(new.now, actor, "signal.register.repeat", &signal.id.to_string(), "")?;
                let matched_with = child.active.len() - 1;
                return Ok(Registered { signal, created: false, matched_with });
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
            let before = child_state(&child);
            let remote = tx.remote_parties_of(&new.child)?;
            tx.put_signal(&signal)?;
            tx.org_signals.insert(prefixed(signal.org.as_str(), &signal.id.0), &[])?;
            child.active.push((signal.id, signal.org.clone()));
            tx.log(new.now, actor, "signal.register", &signal.id.to_string(), "")?;
            if !others.is_empty() || !remote.is_empty() {
                tx.notify_match_created(&signal, &org, &others, &remote, new.now)?;
            } else if !child.archived.is_empty() && !child.history_sent.contains(&signal.org) {
                let earlier: Vec<_> =
                    tx.signals_of(&child.archived)?.into_iter().filter(|s| s.org != signal.org).collect();
                if !earlier.is_empty() {
                    tx.history_notice(&signal, tx.parties(&earlier)?, new.now)?;
                    child.history_sent.push(signal.org.clone());
                }
            }
            tx.put_child(&new.child, &child)?;
            let change = ChildChange {
                child: &new.child,
                before,
                after: ChildState::Active,
                point: new.point,
                added: Some(party_of(&signal, Some(&org))),
                removed_org: None,
            };
            tx.fed_child_changed(change, new.now)?;
            Ok(Registered { matched_with: others.len(), signal, created: true })
        })
        .await
    }

    pub fn signal(&self, id: &SignalId) -> Result<Option<Signal>, StoreError> {
        self.trees.signals.get(id.0)?.map(|b| decode(&b, "signal")).transpose()
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
                    tx.retire(&signal, None, now, &actor, "signal.withdraw.made-in-error", by)?;
                    Ok(Withdrawn::Deleted)
                }
                (WithdrawReason::ConcernResolved, true) => {
                    let archived = Some((today, ArchiveReason::ConcernResolved));
                    tx.retire(&signal, archived, now, &actor, "signal.withdraw.concern-resolved", by)?;
                    Ok(Withdrawn::Archived)
                }
                (WithdrawReason::ConcernResolved, false) => abort(OpError::NotActive(*id)),
            }
        })
        .await
    }

    /// Deletes every signal and archive entry on the child (erasure decision, D4).
    pub async fn erase_child(&self, child: &ChildKey, actor: &str, now: DateTime<Utc>) -> Result<u32, OpError> {
        let (child, actor) = (*child, actor.to_owned());
        self.write(move |tx| tx.delete_child(&child, now, &actor, "child.erase")).await
    }

    /// Applies D3 and D4 as of `today`: archive expired signals, delete everything on
    /// children who turned 23, purge archive entries older than 5 years.
    pub async fn sweep(&self, today: NaiveDate, now: DateTime<Utc>) -> Result<SweepReport, OpError> {
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
                    return Ok((Fate::Keep, 0));
                };
                let fate = fate_of(&signal, today);
                let count = match fate {
                    Fate::Keep => 0,
                    Fate::Archive => {
                        let archived = Some((today, ArchiveReason::Expired));
                        tx.retire(&signal, archived, now, actor, "signal.expire", "removal date reached")?;
                        1
                    }
                    // Every signal and archive entry of the child goes at once.
                    Fate::DeleteAgeLimit => u64::from(tx.delete_child(&signal.child, now, actor, "child.age-limit")?),
                    Fate::Purge => {
                        tx.retire(&signal, None, now, actor, "archive.purge", "5 years in archive")?;
                        1
                    }
                };
                Ok((fate, count))
            })
        });
        for done in futures::future::join_all(jobs).await {
            let (fate, count) = done?;
            match fate {
                Fate::Keep => {}
                Fate::Archive => report.archived += count,
                Fate::DeleteAgeLimit => report.deleted_age_limit += count,
                Fate::Purge => report.purged_archive += count,
            }
        }
        Ok(report)
    }

    /// The organisation's active matches (D5).
    pub fn matches_for(&self, org: &OrgId) -> Result<Vec<MatchView>, StoreError> {
        let mut out = Vec::new();
        for key in self.trees.org_signals.scan_prefix(prefixed(org.as_str(), &[])).keys() {
            let key = key?;
            let id: [u8; 16] = key[key.len() - 16..].try_into().map_err(|_| StoreError::Corrupt { what: "index" })?;
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
            let pairs = self.trees.fed.scan_prefix(federation::pair_prefix(&own.child)).values();
            let pairs = pairs.collect::<Result<Vec<_>, _>>()?;
            counterparts.extend(federation::matched_parties(pairs.into_iter().map(|v| v.to_vec())));
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

    /// Children with a match inside this region (two or more active signals), and matched
    /// pairs with other regions (a child matched in two other regions counts twice).
    pub fn match_counts(&self) -> Result<(u64, u64), StoreError> {
        let mut local = 0;
        for v in self.trees.children.iter().values() {
            let record: ChildRecord = decode(&v?, "child record")?;
            if record.active.len() >= 2 {
                local += 1;
            }
        }
        let pairs = self.trees.fed.scan_prefix(federation::all_pairs_prefix()).values();
        let values = pairs.map(|v| v.map(|v| v.to_vec())).collect::<Result<Vec<_>, _>>()?;
        let cross = federation::count_matched(values.into_iter());
        Ok((local, cross))
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
    pub fn notices_after(&self, org: &OrgId, after: u64, limit: usize) -> Result<Vec<(u64, Notice)>, StoreError> {
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
        self.trees.audit.iter().values().map(|v| Ok(decode::<audit::StoredEntry>(&v?, "audit entry")?.entry)).collect()
    }

    fn audit_head(&self) -> Result<(u64, [u8; 32]), StoreError> {
        match self.trees.meta.get(META_AUDIT_HEAD)? {
            None => Ok((0, [0; 32])),
            Some(v) => decode(&v, "audit head"),
        }
    }

    /// Raw access for tamper tests: rewrites an audit entry's stored bytes.
    #[doc(hidden)]
    pub fn tamper_audit_raw(&self, seq: u64, bytes: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, StoreError> {
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

/// Opens sled, retrying for a moment while a previous holder of the file lock (this
/// process's last node, a backup) is still letting go.
fn open_db(path: &Path, options: &StoreOptions) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::Config::new().path(path).cache_capacity(options.cache_bytes).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(StoreError::Open { path: path.to_owned(), reason: e.to_string() }),
        }
    }
}

fn read_u64(v: &Option<sled::IVec>) -> u64 {
    v.as_ref().and_then(|b| b.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}

fn party_of(signal: &Signal, org: Option<&Organisation>) -> Party {
    Party {
        region: None,
        org_id: signal.org.clone(),
        org_name: org.map(|o| o.name.clone()).unwrap_or_else(|| signal.org.to_string()),
        org_domain: org.map(|o| o.domain).unwrap_or(crate::domain::OrgDomain::Other),
        professional: signal.professional.clone(),
        coordinator: org.and_then(|o| o.coordinator.clone()).or_else(|| signal.coordinator.clone()),
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
    fed: &'a TransactionalTree,
    outbox: &'a TransactionalTree,
    fed_ctx: &'a Option<FedContext>,
    outbox_seq: RefCell<Option<u64>>,
}

fn corrupt<T>(what: &'static str) -> TxResult<T> {
    abort(OpError::Store(StoreError::Corrupt { what }))
}

impl Tx<'_> {
    fn get<T: DeserializeOwned>(tree: &TransactionalTree, key: &[u8], what: &'static str) -> TxResult<Option<T>> {
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
        signals.iter().map(|s| Ok(party_of(s, self.org(&s.org)?.as_ref()))).collect()
    }

    /// Appends an audit entry to the chain.
    fn log(&self, at: DateTime<Utc>, actor: &str, action: &str, subject: &str, detail: &str) -> TxResult<()> {
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
        self.audit.insert(&entry.seq.to_be_bytes(), encode(&audit::StoredEntry { entry: entry.clone(), hash }))?;
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
        self.notices.insert(notice_key(&notice.recipient, seq), encode(&notice))?;
        self.log(at, "system:matcher", action, &subject, &detail)
    }

    /// D6: the one history notice for the reporter of `signal`, naming earlier reporters.
    fn history_notice(&self, signal: &Signal, earlier: Vec<Party>, at: DateTime<Utc>) -> TxResult<()> {
        let notice = Notice {
            kind: NoticeKind::History,
            addressee: Addressee::Professional,
            recipient: signal.org.clone(),
            own_signal: Some(signal.id),
            signals: vec![],
            counterparts: earlier,
        };
        self.push_notice(notice, at)
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

    fn notify_match_officer(&self, kind: NoticeKind, involved: &[&Signal], at: DateTime<Utc>) -> TxResult<()> {
        self.notify_match_officer_with(kind, involved, &[], at)
    }

    /// The match officer's notice: every local party plus any remote ones (D5).
    fn notify_match_officer_with(
        &self,
        kind: NoticeKind,
        involved: &[&Signal],
        remote: &[Party],
        at: DateTime<Utc>,
    ) -> TxResult<()> {
        let Some(officer) = Self::get::<OrgId>(self.meta, b"match_officer", "match officer")? else {
            return Ok(());
        };
        let owned: Vec<Signal> = involved.iter().map(|s| (*s).clone()).collect();
        let notice = Notice {
            kind,
            addressee: Addressee::MatchOfficer,
            recipient: officer,
            own_signal: None,
            signals: involved.iter().map(|s| s.id).collect(),
            counterparts: self.parties(&owned)?.into_iter().chain(remote.iter().cloned()).collect(),
        };
        self.push_notice(notice, at)
    }

    /// D5: everyone on the child learns the others' contact details.
    fn notify_match_created(
        &self,
        new: &Signal,
        org: &Organisation,
        others: &[Signal],
        remote: &[Party],
        at: DateTime<Utc>,
    ) -> TxResult<()> {
        let new_party = party_of(new, Some(org));
        let mut counterparts = self.parties(others)?;
        counterparts.extend_from_slice(remote);
        self.notify_reporter(NoticeKind::MatchCreated, new, counterparts, at)?;
        for other in others {
            self.notify_reporter(NoticeKind::MatchCreated, other, vec![new_party.clone()], at)?;
        }
        let mut involved: Vec<&Signal> = others.iter().collect();
        involved.push(new);
        self.notify_match_officer_with(NoticeKind::MatchCreated, &involved, remote, at)
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
        let before = child_state(&child);
        let was_active = signal.is_active();
        child.active.retain(|(id, _)| *id != signal.id);
        child.archived.retain(|(id, _)| *id != signal.id);
        self.org_signals.remove(prefixed(signal.org.as_str(), &signal.id.0))?;
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
        self.put_child(&signal.child, &child)?;
        let org_still_active = child.active.iter().any(|(_, o)| *o == signal.org);
        let change = ChildChange {
            child: &signal.child,
            before,
            after: child_state(&child),
            point: None,
            added: None,
            removed_org: (was_active && !org_still_active).then(|| signal.org.clone()),
        };
        self.fed_child_changed(change, at)
    }

    /// Deletes every signal and archive entry of a child (D3 age limit, D4 erasure).
    fn delete_child(&self, child: &ChildKey, at: DateTime<Utc>, actor: &str, action: &str) -> TxResult<u32> {
        let record = self.child(child)?;
        let mut count = 0;
        for (id, org) in record.active.iter().chain(record.archived.iter()) {
            self.signals.remove(&id.0)?;
            self.org_signals.remove(prefixed(org.as_str(), &id.0))?;
            self.log(at, actor, action, &id.to_string(), "deleted")?;
            count += 1;
        }
        self.children.remove(&child.0)?;
        let change = ChildChange {
            child,
            before: child_state(&record),
            after: ChildState::None,
            point: None,
            added: None,
            removed_org: None,
        };
        self.fed_child_changed(change, at)?;
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
        if let Some(seq) = *self.outbox_seq.borrow() {
            self.meta.insert(META_OUTBOX_SEQ, &seq.to_be_bytes())?;
        }
        Ok(())
    }
}

/// A raw key and value.
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// One outbox item ready for delivery.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub seq: u64,
    pub item: OutItem,
}

impl Store {
    /// Turns on the federation side of every write: peers to publish to, handles from `key`.
    pub fn enable_federation(&self, peers: Vec<String>, key: LocalKey) {
        if let Ok(mut ctx) = self.trees.fed_ctx.write() {
            *ctx = Some(FedContext { peers, key });
        }
    }

    /// This store's epoch: a random id fixed at creation; outbox sequence numbers are per epoch.
    pub fn epoch(&self) -> Result<u64, StoreError> {
        Ok(read_u64(&self.trees.meta.get(META_EPOCH)?))
    }

    /// Queues every child for a peer this node has never published to (join, resync).
    /// Returns the number of children queued. Resumable: each chunk commits with its marker.
    pub async fn join_peer(&self, peer: &str) -> Result<u64, OpError> {
        let marker = format!("{META_JOINED}{peer}");
        if self.trees.meta.get(&marker).map_err(StoreError::from)?.is_some() {
            return Ok(0);
        }
        let mut queued = 0u64;
        let points: Vec<(ChildKey, Blinded)> = self
            .trees
            .fed
            .scan_prefix(federation::point_prefix())
            .filter_map(|item| {
                let (k, v) = item.ok()?;
                Some((ChildKey(k[1..].try_into().ok()?), v.as_ref().try_into().ok()?))
            })
            .collect();
        let total = points.len();
        for chunk in points.chunks(1000) {
            let (chunk, target) = (chunk.to_vec(), peer.to_owned());
            // Each child's state is decided inside the chunk's transaction, so a child
            // erased or archived meanwhile is not published with a stale state.
            queued += self
                .write(move |tx| {
                    let mut n = 0u64;
                    for (child, point) in &chunk {
                        n += u64::from(tx.join_publish(&target, child, *point)?);
                    }
                    Ok(n)
                })
                .await?;
            tracing::info!(peer, queued, total, "resync: children queued for the new peer");
        }
        let peer = peer.to_owned();
        self.write(move |tx| {
            tx.meta.insert(marker.as_bytes(), &[1])?;
            tx.log(Utc::now(), "system:federation", "federation.join", &format!("region {peer}"), "")?;
            Ok(())
        })
        .await?;
        Ok(queued)
    }

    /// Re-keys the blinding (see `docs/protocol.md`, and `virfed rekey`): recomputes every
    /// stored point and index entry under `new` and queues the exchange that updates every
    /// peer, in one transaction, and records `new`'s fingerprint. Returns (children, peer
    /// entries) re-keyed. Federation must be enabled (the peers are needed).
    pub async fn rekey(&self, old: &BlindKey, new: &BlindKey) -> Result<(u64, u64), OpError> {
        let points: Vec<(ChildKey, Blinded)> = self
            .trees
            .fed
            .scan_prefix(federation::point_prefix())
            .filter_map(|item| {
                let (k, v) = item.ok()?;
                Some((ChildKey(k[1..].try_into().ok()?), v.as_ref().try_into().ok()?))
            })
            .collect();
        let entries = federation::all_peer_entries(&self.trees.fed)?;
        let (old, new) = (old.clone(), new.clone());
        self.write(move |tx| {
            let counts = tx.rekey(&old, &new, &points, &entries)?;
            tx.meta.insert(META_BLIND_FP, &new.fingerprint())?;
            tx.log(
                Utc::now(),
                "operator:rekey",
                "federation.rekey",
                "blinding key",
                &format!("{} children, {} peer entries", counts.0, counts.1),
            )?;
            Ok(counts)
        })
        .await
    }

    /// The fingerprint of the blinding key the store was written with, if any.
    pub fn blind_fingerprint(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.trees.meta.get(META_BLIND_FP)?.and_then(|v| v.as_ref().try_into().ok()))
    }

    /// Records the blinding key's fingerprint (first start with federation).
    pub async fn set_blind_fingerprint(&self, fp: [u8; 32]) -> Result<(), OpError> {
        self.write(move |tx| {
            tx.meta.insert(META_BLIND_FP, &fp)?;
            Ok(())
        })
        .await
    }

    /// Writes a consistent backup of the whole store to `path` while the node keeps
    /// serving (writes wait for the seconds it takes). See [`backup`].
    pub async fn backup_to(&self, path: &Path) -> Result<backup::BackupSummary, OpError> {
        let (db, path) = (self.db.clone(), path.to_owned());
        let out =
            self.writer.exclusive(Box::new(move || Ok(Box::new(backup::write(&db, &path)?) as writer::Output))).await?;
        out.downcast::<backup::BackupSummary>()
            .map(|v| *v)
            .map_err(|_| OpError::Store(StoreError::Failed("internal: backup returned another type".into())))
    }

    /// After a restore: asks every peer for a resync and forgets which peers have all of
    /// this node's children, so both directions are published again. Returns whether it
    /// was needed.
    pub async fn resync_after_restore(&self, peers: Vec<String>) -> Result<bool, OpError> {
        if self.trees.meta.get(backup::META_RESYNC_AFTER_RESTORE).map_err(StoreError::from)?.is_none() {
            return Ok(false);
        }
        self.write(move |tx| {
            for peer in &peers {
                tx.meta.remove(format!("{META_JOINED}{peer}").as_bytes())?;
                tx.enqueue(peer, &OutItem::ResyncRequest)?;
            }
            tx.meta.remove(backup::META_RESYNC_AFTER_RESTORE)?;
            tx.log(Utc::now(), "system:restore", "federation.resync-after-restore", "all peers", "")?;
            Ok(true)
        })
        .await
    }

    /// The first `limit` durable outbox items for `peer`, in order.
    /// Only items already flushed are returned: an item a crash could take back must never
    /// reach a peer, or its sequence number could be given to another item after restart.
    pub fn outbox_batch(&self, peer: &str, limit: usize) -> Result<Vec<Outgoing>, StoreError> {
        let durable = *self.durable_outbox.borrow();
        let mut out = Vec::new();
        for item in
            self.trees.outbox.range(prefixed(peer, &[])..prefixed(peer, &durable.saturating_add(1).to_be_bytes()))
        {
            if out.len() == limit {
                break;
            }
            let (k, v) = item?;
            let seq = read_u64(&Some(k.subslice(k.len() - 8, 8)));
            let queued: federation::Queued = decode(&v, "outbox item")?;
            out.push(Outgoing { seq, item: queued.item });
        }
        Ok(out)
    }

    /// When the oldest item still queued for `peer` was queued (None: the outbox is empty).
    pub fn outbox_oldest(&self, peer: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let Some(first) = self.trees.outbox.scan_prefix(prefixed(peer, &[])).next() else { return Ok(None) };
        let (_, v) = first?;
        let queued: federation::Queued = decode(&v, "outbox item")?;
        Ok(DateTime::from_timestamp_millis(queued.at_ms))
    }

    /// Number of items queued for `peer`.
    pub fn outbox_depth(&self, peer: &str) -> usize {
        self.trees.outbox.scan_prefix(prefixed(peer, &[])).count()
    }

    /// A receiver that changes whenever new outbox items become durable.
    pub fn subscribe_outbox(&self) -> watch::Receiver<u64> {
        self.durable_outbox.subscribe()
    }

    /// Applies the peer's answers to delivered items: removes them from the outbox and
    /// records the blinded values of publishes, detecting matches, in one transaction.
    pub async fn apply_delivery(&self, peer: &str, delivered: Vec<(Outgoing, ItemAnswer)>) -> Result<(), OpError> {
        let peer = peer.to_owned();
        let now = Utc::now();
        self.write(move |tx| {
            for (out, answer) in &delivered {
                tx.outbox.remove(prefixed(&peer, &out.seq.to_be_bytes()))?;
                // A "gone" answer is not acted on: it may describe an older state than the
                // pair now has; the peer's in-order State or Remove ends the match.
                if let (OutItem::Publish { child, handle, .. }, Some(d)) = (&out.item, answer.blinded) {
                    tx.apply_publish_answer(&peer, child, &d, now)?;
                    if !answer.contacts.is_empty() {
                        tx.receive_contacts(&peer, handle, false, &answer.contacts, now)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Applies items received from `peer`, skipping those already applied (same epoch,
    /// sequence number not above the last applied), all in one transaction.
    pub async fn apply_exchange(
        &self,
        peer: &RegionId,
        epoch: u64,
        items: Vec<(u64, InItem)>,
    ) -> Result<Vec<ItemAnswer>, OpError> {
        let peer = peer.clone();
        let now = Utc::now();
        self.write(move |tx| {
            let mut seen: PeerSeen = tx.peer_seen(peer.as_str())?;
            if seen.retired.contains(&epoch) {
                // A delayed request from a store the peer has since replaced (restore).
                return abort(OpError::Superseded(epoch));
            }
            if seen.epoch != epoch {
                let mut retired = std::mem::take(&mut seen.retired);
                if seen.epoch != 0 {
                    retired.push(seen.epoch);
                }
                seen = PeerSeen { epoch, last_seq: 0, retired };
            }
            let mut answers = Vec::with_capacity(items.len());
            let mut applied = 0u64;
            for (seq, item) in &items {
                let blinded = match item {
                    InItem::Publish { blinded, .. } => Some(*blinded),
                    _ => None,
                };
                let mut answer =
                    ItemAnswer { seq: *seq, blinded, gone: false, contacts: Vec::new(), resync_requested: false };
                if *seq > seen.last_seq {
                    let done = tx.apply_incoming(&peer, item, now)?;
                    answer.gone = done.gone;
                    answer.contacts = done.contacts;
                    answer.resync_requested = done.resync_requested;
                    seen.last_seq = *seq;
                    applied += 1;
                } else if let Some(d) = blinded {
                    // A replayed publish: answer as the first time, contacts included when
                    // the pair is matched (the first answer may be what got lost).
                    answer.contacts = tx.matched_contacts(peer.as_str(), &d)?;
                }
                answers.push(answer);
            }
            tx.set_peer_seen(peer.as_str(), &seen)?;
            if applied > 0 {
                tx.log(
                    now,
                    &format!("region:{peer}"),
                    "federation.exchange",
                    &format!("region {peer}"),
                    &format!("{applied} items"),
                )?;
            }
            Ok(answers)
        })
        .await
    }

    /// Writes an audit entry (peer refusals, budget breaches, re-key).
    pub async fn audit_event(&self, actor: &str, action: &str, subject: &str, detail: &str) -> Result<(), OpError> {
        let (actor, action, subject, detail) =
            (actor.to_owned(), action.to_owned(), subject.to_owned(), detail.to_owned());
        self.write(move |tx| tx.log(Utc::now(), &actor, &action, &subject, &detail)).await
    }

    /// How many of the peer's children this node holds in its index of the peer (tests, status).
    pub fn peer_index_len(&self, peer: &str) -> usize {
        self.trees.fed.scan_prefix(federation::peer_index_prefix(peer)).count()
    }

    /// Every value stored about peers, raw (for tests that check what crosses a border).
    pub fn federation_raw(&self) -> Result<Vec<RawEntry>, StoreError> {
        let fed = self.trees.fed.iter().map(|i| i.map(|(k, v)| (k.to_vec(), v.to_vec())));
        let out = self.trees.outbox.iter().map(|i| i.map(|(k, v)| (k.to_vec(), v.to_vec())));
        Ok(fed.chain(out).collect::<Result<Vec<_>, _>>()?)
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
