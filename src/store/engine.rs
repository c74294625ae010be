//! The one file that names the storage engines: a tiny facade (in the spirit of garage's
//! `db` crate) of named trees, byte keys and values, multi-tree transactions and flushes,
//! over either of two embedded engines:
//!
//! - **sled** (the default, what the project is built on): a log-structured B-tree with
//!   optimistic multi-tree transactions; writes are durable at [`Db::flush`].
//! - **redb** (measured beside it, issue 12; `[store] engine = "redb"`): one file, a
//!   copy-on-write B-tree, one writer at a time and MVCC reads. Transactions commit with
//!   `Durability::None` and [`Db::flush`] commits durably, so both engines give the same
//!   contract: a transaction is atomic at once and durable at the next flush, and a crash
//!   loses at most what was not flushed, never part of a transaction.
//!
//! Everything above it in `store/` speaks [`Db`], [`Tree`], [`TxTree`] and [`Bytes`], so
//! the tables, the writer and the rules do not know which engine holds them. Errors leave
//! as [`StoreError`] or [`TxError`], never as engine types. A store's engine is fixed when
//! it is created: an existing store is opened with the engine its files belong to.

use std::cell::RefCell;
use std::ops::{Bound, Deref, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::ReadableTable;
use sled::transaction::{ConflictableTransactionError, TransactionError, UnabortableTransactionError};
use sled::Transactional;

use super::StoreError;

/// The embedded engine under a store (`[store] engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Sled,
    Redb,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Sled => "sled",
            Engine::Redb => "redb",
        }
    }

    /// The engine whose files are in `dir`, if any.
    pub fn of_existing(dir: &Path) -> Option<Engine> {
        if dir.join(REDB_FILE).exists() {
            Some(Engine::Redb)
        } else if dir.join("conf").exists() || dir.join("db").exists() {
            Some(Engine::Sled)
        } else {
            None
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Engine, String> {
        match s {
            "sled" => Ok(Engine::Sled),
            "redb" => Ok(Engine::Redb),
            other => Err(format!("unknown storage engine {other:?}: use \"sled\" or \"redb\"")),
        }
    }
}

/// The one file of a redb store, inside the store's directory.
const REDB_FILE: &str = "store.redb";

type RedbTable<'a> = redb::TableDefinition<'a, &'static [u8], &'static [u8]>;

fn redb_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// A value (or key) read from the engine; derefs to bytes (without copying, for sled).
#[derive(Clone, Debug)]
pub struct Bytes(BytesRepr);

#[derive(Clone, Debug)]
enum BytesRepr {
    Sled(sled::IVec),
    Owned(Box<[u8]>),
}

impl Bytes {
    fn owned(bytes: &[u8]) -> Bytes {
        Bytes(BytesRepr::Owned(bytes.into()))
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            BytesRepr::Sled(v) => v,
            BytesRepr::Owned(v) => v,
        }
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Bytes) -> bool {
        **self == **other
    }
}

impl Eq for Bytes {}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}

/// Why a transaction stopped: the engine's own conflict or failure (retried or reported by
/// the engine), or a store-level failure such as a value that does not decode. Either one
/// aborts the whole transaction; nothing of it is applied.
#[derive(Debug)]
pub struct TxError(TxErrorKind);

#[derive(Debug)]
enum TxErrorKind {
    Engine(UnabortableTransactionError),
    Store(StoreError),
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError(TxErrorKind::Store(e))
    }
}

impl From<UnabortableTransactionError> for TxError {
    fn from(e: UnabortableTransactionError) -> Self {
        TxError(TxErrorKind::Engine(e))
    }
}

/// An open redb database and whether it has commits not yet made durable.
struct RedbDb {
    db: redb::Database,
    file: PathBuf,
    dirty: AtomicBool,
}

impl RedbDb {
    /// A write transaction whose commit is atomic but durable only at the next flush.
    fn begin(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(redb_err)?;
        txn.set_durability(redb::Durability::None);
        Ok(txn)
    }

    fn commit(&self, txn: redb::WriteTransaction) -> Result<(), StoreError> {
        txn.commit().map_err(redb_err)?;
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }
}

/// An open database.
#[derive(Clone)]
pub struct Db(DbRepr);

#[derive(Clone)]
enum DbRepr {
    Sled(sled::Db),
    Redb(Arc<RedbDb>),
}

impl Db {
    /// Opens (or creates, with sled) the database at `path`. With `wait_for_lock`, retries
    /// for a moment while a previous holder of the file lock (this process's last node, a
    /// backup) is still letting go.
    pub fn open(path: &Path, cache_bytes: Option<u64>, wait_for_lock: bool) -> Result<Db, StoreError> {
        Db::open_with(path, Engine::Sled, cache_bytes, false, wait_for_lock)
    }

    /// Opens the database at `path`, creating a new one with `engine` (and, for sled,
    /// zstd-compressed pages when `compress`). The engine and compression are fixed when a
    /// database is created: an existing one is opened as it was made, whatever they say.
    pub fn open_with(
        path: &Path,
        engine: Engine,
        cache_bytes: Option<u64>,
        compress: bool,
        wait: bool,
    ) -> Result<Db, StoreError> {
        let deadline = Instant::now() + Duration::from_secs(if wait { 2 } else { 0 });
        match Engine::of_existing(path).unwrap_or(engine) {
            Engine::Sled => Db::open_sled(path, cache_bytes, compress, deadline),
            Engine::Redb => Db::open_redb(path, cache_bytes, deadline),
        }
    }

    fn open_sled(path: &Path, cache_bytes: Option<u64>, compress: bool, deadline: Instant) -> Result<Db, StoreError> {
        let mut compress = compress;
        let mut switched = false;
        loop {
            // Level 1: the fastest; the pages are mostly small records and random points.
            let mut config = sled::Config::new().path(path).use_compression(compress).compression_factor(1);
            if let Some(bytes) = cache_bytes {
                config = config.cache_capacity(bytes);
            }
            match config.open() {
                Ok(db) => return Ok(Db(DbRepr::Sled(db))),
                Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                // Made with the other setting: open it as it is.
                Err(sled::Error::Unsupported(why)) if why.contains("compression") && !switched => {
                    compress = !compress;
                    switched = true;
                }
                Err(e) => return Err(StoreError::Open { path: path.to_owned(), reason: e.to_string() }),
            }
        }
    }

    fn open_redb(path: &Path, cache_bytes: Option<u64>, deadline: Instant) -> Result<Db, StoreError> {
        let refused = |reason: String| StoreError::Open { path: path.to_owned(), reason };
        std::fs::create_dir_all(path).map_err(|e| refused(e.to_string()))?;
        let file = path.join(REDB_FILE);
        loop {
            let mut builder = redb::Database::builder();
            if let Some(bytes) = cache_bytes {
                builder.set_cache_size(bytes as usize);
            }
            match builder.create(&file) {
                Ok(db) => return Ok(Db(DbRepr::Redb(Arc::new(RedbDb { db, file, dirty: AtomicBool::new(false) })))),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(refused("the store is in use by another process (or node)".into()))
                }
                Err(e) => return Err(refused(e.to_string())),
            }
        }
    }

    /// Which engine holds this database.
    pub fn engine(&self) -> Engine {
        match &self.0 {
            DbRepr::Sled(_) => Engine::Sled,
            DbRepr::Redb(_) => Engine::Redb,
        }
    }

    pub fn tree(&self, name: &str) -> Result<Tree, StoreError> {
        match &self.0 {
            DbRepr::Sled(db) => Ok(Tree(TreeRepr::Sled(db.open_tree(name)?))),
            DbRepr::Redb(db) => {
                // Made now, so reads outside transactions find it.
                let txn = db.begin()?;
                txn.open_table(RedbTable::new(name)).map_err(redb_err)?;
                db.commit(txn)?;
                Ok(Tree(TreeRepr::Redb(db.clone(), name.into())))
            }
        }
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        match &self.0 {
            DbRepr::Sled(db) => {
                db.flush()?;
            }
            DbRepr::Redb(db) => {
                if db.dirty.swap(false, Ordering::AcqRel) {
                    // An empty durable commit makes every earlier non-durable one durable.
                    let mut txn = db.db.begin_write().map_err(redb_err)?;
                    txn.set_durability(redb::Durability::Immediate);
                    if let Err(e) = txn.commit() {
                        db.dirty.store(true, Ordering::Release);
                        return Err(redb_err(e));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        match &self.0 {
            DbRepr::Sled(db) => Ok(db.size_on_disk()?),
            DbRepr::Redb(db) => Ok(std::fs::metadata(&db.file).map_err(redb_err)?.len()),
        }
    }
}

type Entry = Result<(Bytes, Bytes), StoreError>;

/// An ordered scan over one tree.
pub type Scan = Box<dyn DoubleEndedIterator<Item = Entry> + Send>;

fn sled_entry(item: sled::Result<(sled::IVec, sled::IVec)>) -> Entry {
    item.map(|(k, v)| (Bytes(BytesRepr::Sled(k)), Bytes(BytesRepr::Sled(v)))).map_err(StoreError::from)
}

/// The smallest key above every key that starts with `prefix` (none: no bound).
fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

fn owned_bound<K: AsRef<[u8]>>(bound: Bound<&K>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// One named tree, outside a transaction (reads, scans, offline maintenance).
#[derive(Clone)]
pub struct Tree(TreeRepr);

#[derive(Clone)]
enum TreeRepr {
    Sled(sled::Tree),
    Redb(Arc<RedbDb>, Arc<str>),
}

impl Tree {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, StoreError> {
        match &self.0 {
            TreeRepr::Sled(t) => Ok(t.get(key)?.map(|v| Bytes(BytesRepr::Sled(v)))),
            TreeRepr::Redb(db, name) => {
                let txn = db.db.begin_read().map_err(redb_err)?;
                let table = txn.open_table(RedbTable::new(name)).map_err(redb_err)?;
                let value = table.get(key.as_ref()).map_err(redb_err)?;
                Ok(value.map(|v| Bytes::owned(v.value())))
            }
        }
    }

    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Option<Bytes>, StoreError> {
        match &self.0 {
            TreeRepr::Sled(t) => Ok(t.insert(key.as_ref(), value.as_ref())?.map(|v| Bytes(BytesRepr::Sled(v)))),
            TreeRepr::Redb(db, name) => {
                let txn = db.begin()?;
                let old = {
                    let mut table = txn.open_table(RedbTable::new(name)).map_err(redb_err)?;
                    let old = table.insert(key.as_ref(), value.as_ref()).map_err(redb_err)?;
                    old.map(|v| Bytes::owned(v.value()))
                };
                db.commit(txn)?;
                Ok(old)
            }
        }
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, StoreError> {
        match &self.0 {
            TreeRepr::Sled(t) => Ok(t.remove(key)?.map(|v| Bytes(BytesRepr::Sled(v)))),
            TreeRepr::Redb(db, name) => {
                let txn = db.begin()?;
                let old = {
                    let mut table = txn.open_table(RedbTable::new(name)).map_err(redb_err)?;
                    let old = table.remove(key.as_ref()).map_err(redb_err)?;
                    old.map(|v| Bytes::owned(v.value()))
                };
                db.commit(txn)?;
                Ok(old)
            }
        }
    }

    pub fn iter(&self) -> Scan {
        self.scan((Bound::Unbounded, Bound::Unbounded))
    }

    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Scan {
        match &self.0 {
            TreeRepr::Sled(t) => Box::new(t.scan_prefix(prefix).map(sled_entry)),
            TreeRepr::Redb(..) => {
                let prefix = prefix.as_ref();
                self.scan((Bound::Included(prefix.to_vec()), prefix_end(prefix)))
            }
        }
    }

    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Scan {
        self.scan((owned_bound(range.start_bound()), owned_bound(range.end_bound())))
    }

    fn scan(&self, (start, end): (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> Scan {
        match &self.0 {
            TreeRepr::Sled(t) => Box::new(t.range((start, end)).map(sled_entry)),
            TreeRepr::Redb(db, name) => {
                let open = || -> Result<redb::Range<'static, &'static [u8], &'static [u8]>, StoreError> {
                    let txn = db.db.begin_read().map_err(redb_err)?;
                    let table = txn.open_table(RedbTable::new(name)).map_err(redb_err)?;
                    let bounds: (Bound<&[u8]>, Bound<&[u8]>) =
                        (start.as_ref().map(Vec::as_slice), end.as_ref().map(Vec::as_slice));
                    // The range keeps its read transaction alive until it is dropped.
                    table.range::<&[u8]>(bounds).map_err(redb_err)
                };
                match open() {
                    Ok(range) => Box::new(range.map(|item| {
                        item.map(|(k, v)| (Bytes::owned(k.value()), Bytes::owned(v.value()))).map_err(redb_err)
                    })),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            }
        }
    }

    /// Writes every `(key, value)` atomically (offline migrations and restores).
    pub fn apply_all(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        match &self.0 {
            TreeRepr::Sled(t) => {
                let mut batch = sled::Batch::default();
                for (k, v) in entries {
                    batch.insert(k, v);
                }
                t.apply_batch(batch)?;
            }
            TreeRepr::Redb(db, name) => {
                let txn = db.begin()?;
                {
                    let mut table = txn.open_table(RedbTable::new(name)).map_err(redb_err)?;
                    for (k, v) in &entries {
                        table.insert(k.as_slice(), v.as_slice()).map_err(redb_err)?;
                    }
                }
                db.commit(txn)?;
            }
        }
        Ok(())
    }
}

/// A fixed set of trees that transactions span, indexed by position.
#[derive(Clone)]
pub struct TreeSet(SetRepr);

#[derive(Clone)]
enum SetRepr {
    Sled(Vec<sled::Tree>),
    Redb(Arc<RedbDb>, Vec<Arc<str>>),
}

impl TreeSet {
    /// The set of `trees`, all of one database.
    pub fn new(trees: &[Tree]) -> TreeSet {
        match trees.first().map(|t| &t.0) {
            Some(TreeRepr::Redb(db, _)) => TreeSet(SetRepr::Redb(
                db.clone(),
                trees
                    .iter()
                    .filter_map(|t| match &t.0 {
                        TreeRepr::Redb(_, name) => Some(name.clone()),
                        TreeRepr::Sled(_) => None,
                    })
                    .collect(),
            )),
            _ => TreeSet(SetRepr::Sled(
                trees
                    .iter()
                    .filter_map(|t| match &t.0 {
                        TreeRepr::Sled(t) => Some(t.clone()),
                        TreeRepr::Redb(..) => None,
                    })
                    .collect(),
            )),
        }
    }

    /// Runs `f` over every tree of the set as one atomic transaction. `f` may be run again
    /// after an engine conflict, so it must not have effects outside the transaction.
    pub fn transaction<R>(&self, f: impl Fn(&[TxTree<'_>]) -> Result<R, TxError>) -> Result<R, StoreError> {
        match &self.0 {
            SetRepr::Sled(trees) => {
                let result = trees.as_slice().transaction(|tx| {
                    let view: Vec<TxTree<'_>> = (0..trees.len()).map(|i| TxTree(TxRepr::Sled(&tx[i]))).collect();
                    f(&view).map_err(|e| match e.0 {
                        TxErrorKind::Engine(e) => ConflictableTransactionError::from(e),
                        TxErrorKind::Store(e) => ConflictableTransactionError::Abort(e),
                    })
                });
                match result {
                    Ok(r) => Ok(r),
                    Err(TransactionError::Abort(e)) => Err(e),
                    Err(TransactionError::Storage(e)) => Err(e.into()),
                }
            }
            // One writer at a time: no conflicts, `f` runs once.
            SetRepr::Redb(db, names) => {
                let txn = db.begin()?;
                let result = {
                    let tables = names
                        .iter()
                        .map(|name| txn.open_table(RedbTable::new(name)).map(RefCell::new).map_err(redb_err))
                        .collect::<Result<Vec<_>, _>>()?;
                    let view: Vec<TxTree<'_>> = tables.iter().map(|t| TxTree(TxRepr::Redb(t))).collect();
                    f(&view)
                };
                match result {
                    Ok(r) => {
                        db.commit(txn)?;
                        Ok(r)
                    }
                    Err(e) => {
                        txn.abort().map_err(redb_err)?;
                        Err(match e.0 {
                            TxErrorKind::Store(e) => e,
                            TxErrorKind::Engine(e) => StoreError::Engine(e.to_string()),
                        })
                    }
                }
            }
        }
    }
}

/// One tree inside a transaction.
pub struct TxTree<'a>(TxRepr<'a>);

enum TxRepr<'a> {
    Sled(&'a sled::transaction::TransactionalTree),
    Redb(&'a (dyn RedbTx + 'a)),
}

/// A redb table open in the write transaction (behind a trait object, so a [`TxTree`]
/// needs only the lifetime of its borrow, not also the transaction's).
trait RedbTx {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, TxError>;
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Bytes>, TxError>;
    fn remove(&self, key: &[u8]) -> Result<Option<Bytes>, TxError>;
}

impl RedbTx for RefCell<redb::Table<'_, &'static [u8], &'static [u8]>> {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, TxError> {
        Ok(self.borrow().get(key).map_err(tx_redb)?.map(|v| Bytes::owned(v.value())))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Bytes>, TxError> {
        let mut table = self.borrow_mut();
        let old = table.insert(key, value).map_err(tx_redb)?;
        Ok(old.map(|v| Bytes::owned(v.value())))
    }

    fn remove(&self, key: &[u8]) -> Result<Option<Bytes>, TxError> {
        let mut table = self.borrow_mut();
        let old = table.remove(key).map_err(tx_redb)?;
        Ok(old.map(|v| Bytes::owned(v.value())))
    }
}

/// An engine failure inside a redb transaction: aborts it.
fn tx_redb(e: impl std::fmt::Display) -> TxError {
    TxError(TxErrorKind::Store(redb_err(e)))
}

impl TxTree<'_> {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, TxError> {
        match &self.0 {
            TxRepr::Sled(t) => Ok(t.get(key)?.map(|v| Bytes(BytesRepr::Sled(v)))),
            TxRepr::Redb(t) => t.get(key.as_ref()),
        }
    }

    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Option<Bytes>, TxError> {
        match &self.0 {
            TxRepr::Sled(t) => Ok(t.insert(key.as_ref(), value.as_ref())?.map(|v| Bytes(BytesRepr::Sled(v)))),
            TxRepr::Redb(t) => t.insert(key.as_ref(), value.as_ref()),
        }
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, TxError> {
        match &self.0 {
            TxRepr::Sled(t) => Ok(t.remove(key.as_ref())?.map(|v| Bytes(BytesRepr::Sled(v)))),
            TxRepr::Redb(t) => t.remove(key.as_ref()),
        }
    }
}

/// A bare database for benchmark floors: what the engine does with no store around it.
pub struct Floor {
    db: Db,
    tree: Tree,
}

impl Floor {
    /// A fresh `engine` database under `dir` with one tree.
    pub fn open(dir: &Path, engine: Engine) -> Result<Floor, StoreError> {
        let db = Db::open_with(dir, engine, None, false, false)?;
        let tree = db.tree("floor")?;
        Ok(Floor { db, tree })
    }

    pub fn insert(&self, n: u64, value: &[u8]) -> Result<(), StoreError> {
        self.tree.insert(n.to_be_bytes(), value)?;
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()
    }

    /// At least `total` inserts of `value_len` bytes, flushed after every `batch`
    /// inserts (one batch in one write for redb, whose writes are transactions). Returns
    /// inserts per second.
    pub fn insert_flush_rate(&self, batch: usize, total: usize, value_len: usize) -> Result<f64, StoreError> {
        let value = vec![7u8; value_len];
        let started = Instant::now();
        let mut n = 0u64;
        while (n as usize) < total {
            match self.db.engine() {
                Engine::Sled => {
                    for _ in 0..batch.max(1) {
                        self.insert(n, &value)?;
                        n += 1;
                    }
                }
                Engine::Redb => {
                    let entries =
                        (n..n + batch.max(1) as u64).map(|k| (k.to_be_bytes().to_vec(), value.clone())).collect();
                    self.tree.apply_all(entries)?;
                    n += batch.max(1) as u64;
                }
            }
            self.flush()?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENGINES: [Engine; 2] = [Engine::Sled, Engine::Redb];

    fn open(dir: &Path, engine: Engine) -> Db {
        Db::open_with(dir, engine, None, false, false).unwrap()
    }

    #[test]
    fn a_transaction_that_fails_applies_nothing_and_one_that_succeeds_applies_all() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let db = open(dir.path(), engine);
            let (a, b) = (db.tree("a").unwrap(), db.tree("b").unwrap());
            let set = TreeSet::new(&[a.clone(), b.clone()]);
            let failed: Result<(), StoreError> = set.transaction(|t| {
                t[0].insert(b"k", b"1")?;
                // Read-your-writes inside the transaction.
                assert_eq!(t[0].get(b"k")?.as_deref(), Some(b"1".as_slice()));
                Err(StoreError::Corrupt { what: "test" }.into())
            });
            assert!(matches!(failed, Err(StoreError::Corrupt { what: "test" })), "{engine:?}");
            assert_eq!(a.get(b"k").unwrap(), None, "{engine:?}");
            set.transaction(|t| {
                t[0].insert(b"k", b"1")?;
                t[1].insert(b"k", b"2")?;
                assert_eq!(t[1].remove(b"k")?.as_deref(), Some(b"2".as_slice()));
                t[1].insert(b"k", b"3")?;
                Ok(())
            })
            .unwrap();
            assert_eq!(&*a.get(b"k").unwrap().unwrap(), b"1", "{engine:?}");
            assert_eq!(&*b.get(b"k").unwrap().unwrap(), b"3", "{engine:?}");
        }
    }

    #[test]
    fn what_was_flushed_is_there_after_a_reopen_with_the_engine_the_store_was_made_with() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let db = open(dir.path(), engine);
            let t = db.tree("t").unwrap();
            let set = TreeSet::new(std::slice::from_ref(&t));
            set.transaction(|t| t[0].insert(b"in-tx", b"1").map(|_| ())).unwrap();
            t.insert(b"direct", b"2").unwrap();
            db.flush().unwrap();
            drop((t, set, db));
            // Asked for the other engine: the existing files decide.
            let other = if engine == Engine::Sled { Engine::Redb } else { Engine::Sled };
            // Reopened in the same process, as a node restart does: sled's background
            // flusher may hold the file lock a moment after the drop, so wait for it.
            let db = Db::open_with(dir.path(), other, None, false, true).unwrap();
            assert_eq!(db.engine(), engine);
            let t = db.tree("t").unwrap();
            assert_eq!(t.get(b"in-tx").unwrap().as_deref(), Some(b"1".as_slice()), "{engine:?}");
            assert_eq!(t.get(b"direct").unwrap().as_deref(), Some(b"2".as_slice()), "{engine:?}");
            assert_eq!(Engine::of_existing(dir.path()), Some(engine));
        }
    }

    #[test]
    fn compression_is_chosen_at_creation_and_kept_whatever_a_later_open_asks() {
        for made_compressed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open_with(dir.path(), Engine::Sled, None, made_compressed, false).unwrap();
            db.tree("t").unwrap().insert(b"k", vec![7u8; 4096]).unwrap();
            db.flush().unwrap();
            drop(db);
            // Asked for the other setting: opened as it was made, with its data.
            let db = Db::open_with(dir.path(), Engine::Sled, None, !made_compressed, true).unwrap();
            assert_eq!(db.tree("t").unwrap().get(b"k").unwrap().unwrap().len(), 4096);
            drop(db);
            let db = Db::open(dir.path(), None, true).unwrap();
            assert!(db.tree("t").unwrap().get(b"k").unwrap().is_some());
        }
    }

    #[test]
    fn a_second_open_of_a_locked_database_is_a_clear_error() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let _held = open(dir.path(), engine);
            match Db::open_with(dir.path(), engine, None, false, false) {
                Err(StoreError::Open { path, .. }) => assert_eq!(path, dir.path()),
                Err(other) => panic!("unexpected error: {other}"),
                Ok(_) => panic!("a locked {engine:?} database opened twice"),
            }
        }
    }

    #[test]
    fn scans_see_keys_in_order_within_their_prefix() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let db = open(dir.path(), engine);
            let t = db.tree("t").unwrap();
            t.apply_all(vec![
                (b"a\x00\x02".to_vec(), vec![2]),
                (b"a\x00\x01".to_vec(), vec![1]),
                (b"a\x01".to_vec(), vec![4]),
                (b"a\x00\xff".to_vec(), vec![5]),
                (b"b".to_vec(), vec![3]),
            ])
            .unwrap();
            let got: Vec<u8> = t.scan_prefix(b"a\x00").map(|e| e.unwrap().1[0]).collect();
            assert_eq!(got, vec![1, 2, 5], "{engine:?}");
            let back: Vec<u8> = t.scan_prefix(b"a\x00").rev().map(|e| e.unwrap().1[0]).collect();
            assert_eq!(back, vec![5, 2, 1], "{engine:?}");
            let ranged: Vec<u8> = t.range(b"a\x00\x02".as_slice()..b"c".as_slice()).map(|e| e.unwrap().1[0]).collect();
            assert_eq!(ranged, vec![2, 5, 4, 3], "{engine:?}");
            assert_eq!(t.iter().count(), 5, "{engine:?}");
            assert_eq!(t.scan_prefix(b"").count(), 5, "{engine:?}");
        }
    }

    #[test]
    fn the_end_of_a_prefix_is_the_next_key_that_does_not_start_with_it() {
        assert_eq!(prefix_end(b"a\x00"), Bound::Excluded(b"a\x01".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Bound::Excluded(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), Bound::Unbounded);
        assert_eq!(prefix_end(b""), Bound::Unbounded);
    }
}
