//! The store: the node's tables behind a typed facade. It holds records and keeps them
//! durable; it knows no VIR rule (those are in `registry` and `federation`, as functions
//! over a [`Tx`]).
//!
//! ## Files
//!
//! - [`engine`]: the one file that names the engines, sled (the default) and redb
//!   (measured beside it): trees, transactions, flush.
//! - [`keys`]: every key layout; [`records`]: the store's own record shapes and codec.
//! - [`tx`]: [`Tx`], one write transaction's typed accessors; `queues` (outbox, notices)
//!   and `peers` (federation state) hold the reads beside the ones below.
//! - `writer`: the single writer thread (group commit of whole transactions).
//! - `audit`: the hash chain (D8); [`backup`]: online backup, offline restore;
//!   [`migrate`]: schema versions and their migrations.
//!
//! ## Tables and keys
//!
//! | table         | key                                  | value                         |
//! |---------------|--------------------------------------|-------------------------------|
//! | `meta`        | see [`keys::meta`]                   | small values                  |
//! | `orgs`        | org id                               | `Organisation`                |
//! | `signals`     | signal id (16 bytes)                 | `Signal` (active or archived) |
//! | `children`    | `ChildKey` (32 bytes)                | [`ChildRecord`]               |
//! | `org_signals` | org id ‖ 0 ‖ signal id               | empty: the organisation's active signals |
//! | `notices`     | org id ‖ 0 ‖ seq (u64 BE)            | `Notice` for that recipient   |
//! | `audit`       | seq (u64 BE)                         | hash-chained [`AuditEntry`]   |
//! | `fed`         | tag ‖ … (see [`keys::Fed`])          | pseudonym indexes, pairs, idempotency |
//! | `outbox`      | peer region ‖ 0 ‖ seq (u64 BE)       | [`Queued`] protocol item      |
//!
//! No table holds a BSN: a child is known only by its `ChildKey`.
//!
//! ## Writes
//!
//! Every change is a job ([`Store::write`]) that the writer runs, with the other jobs
//! queued at that moment, as one transaction across all tables, appending its audit
//! entries and notices in the same transaction (so sequence numbers follow commit order).
//! The job's caller gets its answer only after the batch is flushed, and only then are
//! watchers told about new notices and delivery about new outbox items: nobody ever sees
//! something a crash could take back. A job that refuses (a domain error, returned as its
//! value) must do so before its first write.

mod audit;
pub mod backup;
pub mod engine;
pub mod keys;
pub mod migrate;
mod peers;
mod queues;
pub mod records;
pub mod tx;
mod writer;

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

pub use audit::{AuditBroken, AuditEntry, AuditSummary};
use engine::{Db, Tree, TreeSet};
pub use engine::{Engine, TxError};
use keys::{meta, Fed};
use records::decode;
pub use records::{ChildRecord, CrossPair, Lookup, PairState, PeerSeen, Queued, RemoteEntry};
pub use tx::{Tx, TxResult};
pub use writer::WriteStats;
use writer::Writer;

use crate::domain::{AuditAction, ChildKey, OrgId, Organisation, ParentKey, Signal, SignalId};

/// Version of the on-disk layout. Bump it with a migration when a key or value changes.
pub const SCHEMA_VERSION: u32 = 2;

/// Failures of the storage layer itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {reason}. Is another virfed process using this data directory?")]
    Open { path: PathBuf, reason: String },
    #[error("the store at {path} has schema version {found}, but this virfed uses version {expected} and cannot migrate from it; run the virfed version that wrote it (restore a backup to go back)")]
    SchemaMismatch { path: PathBuf, found: u32, expected: u32 },
    #[error("storage failure: {0}")]
    Engine(String),
    #[error("a stored {what} could not be decoded; the store may be damaged: restore from backup")]
    Corrupt { what: &'static str },
    #[error("{0}")]
    Failed(String),
}

/// The tables, in the order transactions and backups see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    Meta,
    Orgs,
    Signals,
    Children,
    OrgSignals,
    Notices,
    Audit,
    Fed,
    Outbox,
    /// Children's parents (family matches): see `keys::Family`.
    Family,
}

/// Table names on disk, indexed by [`Table`].
pub(crate) const TABLES: [&str; 10] =
    ["meta", "orgs", "signals", "children", "org_signals", "notices", "audit", "fed", "outbox", "family"];

/// One outbox item ready for delivery.
#[derive(Clone, Debug)]
pub struct Outgoing<T> {
    pub seq: u64,
    pub item: T,
}

/// Match counts for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatchCounts {
    /// Children with two or more active signals here.
    pub local: u64,
    /// Matched child pairs with other regions.
    pub cross: u64,
    /// Parents with active signals on two or more of their children here.
    pub family_local: u64,
    /// Matched family pairs (per parent and peer) with other regions.
    pub family_cross: u64,
}

/// [`Store::footprint`] of one table.
#[derive(Clone, Debug)]
pub struct TableFootprint {
    pub name: &'static str,
    pub keys: u64,
    /// Key and value bytes.
    pub bytes: u64,
}

/// [`Store::footprint`].
#[derive(Clone, Debug)]
pub struct Footprint {
    pub tables: Vec<TableFootprint>,
    /// (child, peer) entries: peer children indexed here plus own children blinded per peer.
    pub entries: u64,
}

impl Footprint {
    /// Keys and key-plus-value bytes over every table.
    pub fn total(&self) -> (u64, u64) {
        self.tables.iter().fold((0, 0), |(k, b), t| (k + t.keys, b + t.bytes))
    }
}

/// Counts for status and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub active: u64,
    pub archived: u64,
}

/// A raw key and value.
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// Opening options.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The engine's page cache in bytes.
    pub cache_bytes: u64,
    /// A new sled store compresses its pages (zstd); an existing one keeps what it was made with.
    pub compression: bool,
    /// The engine of a new store; an existing one keeps the engine it was made with.
    pub engine: Engine,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { cache_bytes: 128 * 1024 * 1024, compression: false, engine: Engine::Sled }
    }
}

impl StoreOptions {
    /// The options of a node's `[store]` config.
    pub fn of(config: &crate::config::StoreConfig) -> StoreOptions {
        StoreOptions {
            cache_bytes: config.cache_mb * 1024 * 1024,
            compression: config.compression,
            engine: config.engine,
        }
    }
}

/// The node's store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Db,
    path: PathBuf,
    tables: Vec<Tree>,
    writer: Writer,
    /// Highest notice sequence number known to be durable.
    durable_notices: watch::Sender<u64>,
    /// Changes whenever new outbox items become durable.
    durable_outbox: watch::Sender<u64>,
}

impl Store {
    /// Opens (or creates) the store; checks the schema version and migrates older stores.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let db = Db::open_with(path, options.engine, Some(options.cache_bytes), options.compression, true)?;
        let meta_tree = db.tree(TABLES[Table::Meta as usize])?;
        match meta_tree.get(meta::SCHEMA)? {
            None => {
                meta_tree.insert(meta::SCHEMA, SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            // Older stores are migrated in place; a newer one is refused.
            Some(_) => {
                migrate::run(&db, path, true)?;
            }
        }
        let tables = TABLES.iter().map(|name| db.tree(name)).collect::<Result<Vec<_>, _>>()?;
        if meta_tree.get(meta::EPOCH)?.is_none() {
            meta_tree.insert(meta::EPOCH, rand::random::<u64>().max(1).to_be_bytes())?;
            // A new store (a new node, or one rebuilt empty) asks its peers for everything.
            meta_tree.insert(meta::RESYNC_AFTER_RESTORE, [1])?;
            db.flush()?;
        }
        let durable_notices = watch::Sender::new(keys::u64_value(meta_tree.get(meta::NOTICE_SEQ)?.as_deref()));
        let durable_outbox = watch::Sender::new(keys::u64_value(meta_tree.get(meta::OUTBOX_SEQ)?.as_deref()));
        let set = TreeSet::new(&tables);
        let writer = Writer::start(db.clone(), durable_notices.clone(), durable_outbox.clone(), move |jobs| {
            set.transaction(|trees| {
                let tx = Tx::new(trees);
                let mut results = Vec::with_capacity(jobs.len());
                for job in jobs {
                    results.push((job.run)(&tx)?);
                }
                Ok((results, tx.finish()?))
            })
        });
        Ok(Store { path: path.to_owned(), db, tables, writer, durable_notices, durable_outbox })
    }

    fn t(&self, table: Table) -> &Tree {
        &self.tables[table as usize]
    }

    fn get<T: DeserializeOwned>(&self, table: Table, key: &[u8], what: &'static str) -> Result<Option<T>, StoreError> {
        self.t(table).get(key)?.map(|b| decode(&b, what)).transpose()
    }

    fn values<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &[u8],
        what: &'static str,
    ) -> impl Iterator<Item = Result<T, StoreError>> + '_ {
        self.t(table).scan_prefix(prefix).map(move |item| decode(&item?.1, what))
    }

    fn meta_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        Ok(keys::u64_value(self.t(Table::Meta).get(key)?.as_deref()))
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
        self.db.size_on_disk()
    }

    /// What the store holds, logically: per table, the number of keys and the bytes of
    /// their keys and values (the engine's own overhead is `size_on_disk` minus this), and
    /// the number of (child, peer) entries: the peers' children indexed here (`I`) and this
    /// node's children blinded for each peer (`B`). A full scan: for benchmarks and tools.
    pub fn footprint(&self) -> Result<Footprint, StoreError> {
        let mut tables = Vec::with_capacity(TABLES.len());
        let mut entries = 0u64;
        for (i, name) in TABLES.iter().enumerate() {
            let (mut keys, mut bytes) = (0u64, 0u64);
            for item in self.tables[i].iter() {
                let (k, v) = item?;
                keys += 1;
                bytes += (k.len() + v.len()) as u64;
                if i == Table::Fed as usize && Fed::is_entry(&k) {
                    entries += 1;
                }
            }
            tables.push(TableFootprint { name, keys, bytes });
        }
        Ok(Footprint { tables, entries })
    }

    /// Runs `f` as one job of the writer's next batch transaction and returns its value
    /// once the batch is committed and flushed. A refusal is part of `T` (e.g. a
    /// `Result`) and must come before `f`'s first write; a [`TxError`] aborts the batch.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let out = self.writer.submit(Box::new(move |tx| f(tx).map(|v| Box::new(v) as writer::Output))).await?;
        out.downcast::<T>()
            .map(|v| *v)
            .map_err(|_| StoreError::Failed("internal: the writer returned another type".into()))
    }

    /// Writes one audit entry on its own (peer refusals, budget breaches).
    pub async fn audit_event(
        &self,
        actor: &str,
        action: AuditAction,
        subject: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let (actor, subject, detail) = (actor.to_owned(), subject.to_owned(), detail.to_owned());
        self.write(move |tx| tx.log(Utc::now(), &actor, action, &subject, &detail)).await
    }

    // ---- organisations, signals, children -----------------------------------------------

    pub fn org(&self, id: &OrgId) -> Result<Option<Organisation>, StoreError> {
        self.get(Table::Orgs, id.as_str().as_bytes(), "organisation")
    }

    pub fn orgs(&self) -> Result<Vec<Organisation>, StoreError> {
        self.values(Table::Orgs, &[], "organisation").collect()
    }

    pub fn signal(&self, id: &SignalId) -> Result<Option<Signal>, StoreError> {
        self.get(Table::Signals, &id.0, "signal")
    }

    /// Every signal, active and archived, in id order.
    pub fn signals(&self) -> impl Iterator<Item = Result<Signal, StoreError>> + '_ {
        self.values(Table::Signals, &[], "signal")
    }

    /// The child's record (empty when the node has nothing on the child).
    pub fn child(&self, child: &ChildKey) -> Result<ChildRecord, StoreError> {
        Ok(self.get(Table::Children, &child.0, "child record")?.unwrap_or_default())
    }

    /// Every child record.
    /// The child's parents known here (family matches).
    pub fn parents_of(&self, child: &ChildKey) -> Result<Vec<ParentKey>, StoreError> {
        Ok(self.get(Table::Family, &keys::Family::parents_of(child), "child's parents")?.unwrap_or_default())
    }

    /// The parent's children with a signal here.
    pub fn children_of(&self, parent: &ParentKey) -> Result<Vec<ChildKey>, StoreError> {
        Ok(self.get(Table::Family, &keys::Family::children_of(parent), "parent's children")?.unwrap_or_default())
    }

    /// The queued BRP lookups, in queue order.
    pub fn lookups(&self) -> Result<Vec<(u64, crate::store::Lookup)>, StoreError> {
        self.t(Table::Family)
            .scan_prefix(keys::Family::all_lookups())
            .map(|item| {
                let (k, v) = item?;
                let seq = keys::trailing_seq(&k).ok_or(StoreError::Corrupt { what: "queued lookup key" })?;
                Ok((seq, decode(&v, "queued lookup")?))
            })
            .collect()
    }

    /// Every parent known here, with its children.
    pub fn parents(&self) -> impl Iterator<Item = Result<(ParentKey, Vec<ChildKey>), StoreError>> + '_ {
        self.t(Table::Family).scan_prefix(keys::Family::all_parents()).map(|item| {
            let (k, v) = item?;
            let key: [u8; 32] =
                k.get(1..).and_then(|b| b.try_into().ok()).ok_or(StoreError::Corrupt { what: "parent key" })?;
            Ok((ParentKey(key), decode(&v, "parent's children")?))
        })
    }

    pub fn children(&self) -> impl Iterator<Item = Result<ChildRecord, StoreError>> + '_ {
        self.values(Table::Children, &[], "child record")
    }

    /// The organisation's active signal ids.
    pub fn org_signal_ids(&self, org: &OrgId) -> Result<Vec<SignalId>, StoreError> {
        self.t(Table::OrgSignals)
            .scan_prefix(keys::owned(org.as_str(), &[]))
            .map(|item| keys::signal_id_of_org_key(&item?.0).ok_or(StoreError::Corrupt { what: "index" }))
            .collect()
    }

    /// Active and archived signal counts.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        let mut counts = Counts::default();
        for signal in self.signals() {
            if signal?.is_active() {
                counts.active += 1;
            } else {
                counts.archived += 1;
            }
        }
        Ok(counts)
    }

    /// Children with two or more active signals here, and matched pairs with other regions
    /// (a child matched in two other regions counts twice).
    pub fn match_counts(&self) -> Result<(u64, u64), StoreError> {
        let m = self.all_match_counts()?;
        Ok((m.local, m.cross))
    }

    /// Child and family match counts (see [`MatchCounts`]).
    pub fn all_match_counts(&self) -> Result<MatchCounts, StoreError> {
        let mut m = MatchCounts::default();
        for record in self.children() {
            if record?.active.len() >= 2 {
                m.local += 1;
            }
        }
        for parent in self.parents() {
            let (_, children) = parent?;
            let mut active = 0;
            for child in &children {
                if !self.child(child)?.active.is_empty() {
                    active += 1;
                }
            }
            if active >= 2 {
                m.family_local += 1;
            }
        }
        for item in self.t(Table::Fed).scan_prefix(Fed::all_pairs()) {
            let (k, v) = item?;
            let pair: CrossPair = decode(&v, "cross pair")?;
            if !pair.is_matched() {
                continue;
            }
            let subject: Option<[u8; 32]> = k.get(1..33).and_then(|b| b.try_into().ok());
            let family = match subject {
                Some(s) => !self.children_of(&ParentKey(s))?.is_empty(),
                None => false,
            };
            if family {
                m.family_cross += 1;
            } else {
                m.cross += 1;
            }
        }
        Ok(m)
    }

    // ---- meta ---------------------------------------------------------------------------

    /// This store's epoch: a random id fixed at creation; outbox sequence numbers are per epoch.
    pub fn epoch(&self) -> Result<u64, StoreError> {
        self.meta_u64(meta::EPOCH)
    }

    /// Whether every child has been published to `peer`.
    pub fn joined(&self, peer: &str) -> Result<bool, StoreError> {
        Ok(self.t(Table::Meta).get(meta::joined(peer))?.is_some())
    }

    /// Whether a restore asked for a resync with every peer that has not yet been sent.
    pub fn resync_after_restore_pending(&self) -> Result<bool, StoreError> {
        Ok(self.t(Table::Meta).get(meta::RESYNC_AFTER_RESTORE)?.is_some())
    }

    /// The fingerprint of the blinding key the store was written with, if any.
    pub fn blind_fingerprint(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.t(Table::Meta).get(meta::BLIND_FP)?.and_then(|v| v.as_ref().try_into().ok()))
    }

    /// The fingerprint of the local key the store was written with, if recorded.
    pub fn local_fingerprint(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.t(Table::Meta).get(meta::LOCAL_FP)?.and_then(|v| v.as_ref().try_into().ok()))
    }

    /// Records the local key's fingerprint (first start).
    pub async fn set_local_fingerprint(&self, fp: [u8; 32]) -> Result<(), StoreError> {
        self.write(move |tx| tx.set_local_fingerprint(&fp)).await
    }

    /// Records the blinding key's fingerprint (first start with federation).
    pub async fn set_blind_fingerprint(&self, fp: [u8; 32]) -> Result<(), StoreError> {
        self.write(move |tx| tx.set_blind_fingerprint(&fp)).await
    }

    /// Children the peer has published here under the resync ticket `serial`.
    pub fn ticket_used(&self, peer: &str, serial: &str) -> Result<u64, StoreError> {
        self.meta_u64(&meta::ticket(peer, serial))
    }

    /// The public blinding key the peer uses towards this node, if pinned ([`Tx::peer_key`]).
    pub fn peer_key(&self, peer: &str) -> Result<Option<crate::pseudonym::Blinded>, StoreError> {
        Ok(self.t(Table::Meta).get(meta::peer_key(peer))?.and_then(|v| v.as_ref().try_into().ok()))
    }

    /// A peer's blind budget of `kind` as last stored: (tokens, Unix ms); see [`Tx::budget`].
    pub fn budget(&self, peer: &str, kind: &str) -> Result<Option<(f64, i64)>, StoreError> {
        self.get(Table::Meta, &meta::budget(peer, kind), "blind budget")
    }

    /// The last notice delivered to the organisation's webhook (0: none yet).
    pub fn webhook_cursor(&self, org: &OrgId) -> Result<u64, StoreError> {
        self.meta_u64(&meta::webhook_cursor(org.as_str()))
    }

    pub async fn set_webhook_cursor(&self, org: &OrgId, seq: u64) -> Result<(), StoreError> {
        let org = org.clone();
        self.write(move |tx| tx.set_webhook_cursor(&org, seq)).await
    }

    /// A small durable write through the writer, to prove writes work (readiness probe).
    pub async fn probe(&self, value: u64) -> Result<(), StoreError> {
        self.write(move |tx| tx.set_probe(value)).await
    }

    pub fn probe_value(&self) -> Result<u64, StoreError> {
        self.meta_u64(meta::PROBE)
    }

    // ---- audit (D8) ---------------------------------------------------------------------

    /// Verifies the hash chain of the audit log.
    pub fn verify_audit(&self) -> Result<Result<AuditSummary, AuditBroken>, StoreError> {
        let head = self.get(Table::Meta, meta::AUDIT_HEAD, "audit head")?.unwrap_or((0, [0; 32]));
        let entries = self
            .t(Table::Audit)
            .iter()
            .map(|item| item.map(|(k, v)| (keys::u64_value(Some(&k)), v.to_vec())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(audit::verify(entries.into_iter(), head))
    }

    /// Audit entries in order (for `virfed audit show` and tests).
    pub fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.values::<audit::StoredEntry>(Table::Audit, &[], "audit entry").map(|e| Ok(e?.entry)).collect()
    }

    /// Raw access for tamper tests: rewrites (or removes) an audit entry's stored bytes.
    #[cfg(any(test, feature = "kit"))]
    pub fn tamper_audit_raw(&self, seq: u64, bytes: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, StoreError> {
        let old = match bytes {
            Some(b) => self.t(Table::Audit).insert(keys::audit(seq), b)?,
            None => self.t(Table::Audit).remove(keys::audit(seq))?,
        };
        self.db.flush()?;
        Ok(old.map(|v| v.to_vec()))
    }

    // ---- whole store ----------------------------------------------------------------------

    /// Writes a consistent backup of the whole store to `path` while the node keeps
    /// serving (writes wait for the seconds it takes). See [`backup`].
    pub async fn backup_to(&self, path: &Path) -> Result<backup::BackupSummary, StoreError> {
        let (tables, path) = (self.tables.clone(), path.to_owned());
        let out = self.writer.exclusive(Box::new(move || Ok(Box::new(backup::write(&tables, &path)?) as _))).await?;
        out.downcast::<backup::BackupSummary>()
            .map(|v| *v)
            .map_err(|_| StoreError::Failed("internal: backup returned another type".into()))
    }

    /// Flushes everything (used at shutdown).
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.db.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Addressee, NoticeKind};

    fn notice(to: &str) -> crate::domain::Notice {
        crate::domain::Notice {
            kind: NoticeKind::MatchCreated,
            addressee: Addressee::Professional,
            recipient: OrgId::parse(to).unwrap(),
            own_signal: None,
            signals: vec![],
            counterparts: vec![],
        }
    }

    #[tokio::test]
    async fn invariant_4_a_write_is_durable_and_its_sequence_numbers_follow_commit_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = Store::open(&path, &StoreOptions::default()).unwrap();
        let seqs = store
            .write(|tx| {
                let a = tx.push_notice(&notice("school"))?;
                let b = tx.push_notice(&notice("ggd"))?;
                tx.log(Utc::now(), "test", AuditAction::OrgAdd, "school", "")?;
                tx.log(Utc::now(), "test", AuditAction::OrgAdd, "ggd", "")?;
                Ok((a, b))
            })
            .await
            .unwrap();
        assert_eq!(seqs, (1, 2));
        let school = OrgId::parse("school").unwrap();
        assert_eq!(store.notices_after(&school, 0, 10).unwrap().len(), 1);
        drop(store);
        let store = Store::open(&path, &StoreOptions::default()).unwrap();
        assert_eq!(store.verify_audit().unwrap().unwrap().entries, 2);
        let next = store.write(|tx| tx.push_notice(&notice("school"))).await.unwrap();
        assert_eq!(next, 3, "the counter survives a restart");
        assert_eq!(store.notices_after(&school, 0, 10).unwrap().iter().map(|n| n.0).collect::<Vec<_>>(), [1, 3]);
    }

    #[tokio::test]
    async fn invariant_7_a_failing_job_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let failed = store
            .write(|tx| {
                tx.set_probe(42)?;
                tx.log(Utc::now(), "test", AuditAction::OrgAdd, "x", "")?;
                Err::<(), _>(StoreError::Corrupt { what: "test" }.into())
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(store.probe_value().unwrap(), 0);
        assert!(store.audit_entries().unwrap().is_empty());
        store.probe(7).await.unwrap();
        assert_eq!(store.probe_value().unwrap(), 7, "the writer goes on after a failed batch");
    }

    #[test]
    fn a_store_written_by_a_newer_virfed_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), &StoreOptions::default()).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let db = Db::open(dir.path(), None, true).unwrap();
        db.tree("meta").unwrap().insert(meta::SCHEMA, (SCHEMA_VERSION + 1).to_be_bytes()).unwrap();
        db.flush().unwrap();
        drop(db);
        let Err(e) = Store::open(dir.path(), &StoreOptions::default()) else { panic!("a newer store opened") };
        assert!(matches!(e, StoreError::SchemaMismatch { .. }));
        assert!(e.to_string().contains("run the virfed version that wrote it"), "{e}");
    }
}
