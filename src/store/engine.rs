//! The one file that names sled: a tiny engine facade (in the spirit of garage's `db`
//! crate) of named trees, byte keys and values, multi-tree transactions and flushes.
//!
//! Everything above it in `store/` speaks [`Db`], [`Tree`], [`TxTree`] and [`Bytes`], so
//! the engine can be measured against, or replaced by, another embedded store without
//! touching the tables, the writer or the rules. Errors leave as [`StoreError`] or
//! [`TxError`], never as sled types.

use std::ops::{Deref, RangeBounds};
use std::path::Path;
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError, UnabortableTransactionError};
use sled::Transactional;

use super::StoreError;

/// A value (or key) read from the engine; derefs to bytes without copying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bytes(sled::IVec);

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

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

/// An open database.
#[derive(Clone)]
pub struct Db(sled::Db);

impl Db {
    /// Opens (or creates) the database at `path`. With `wait_for_lock`, retries for a
    /// moment while a previous holder of the file lock (this process's last node, a
    /// backup) is still letting go.
    pub fn open(path: &Path, cache_bytes: Option<u64>, wait_for_lock: bool) -> Result<Db, StoreError> {
        Db::open_with(path, cache_bytes, false, wait_for_lock)
    }

    /// [`Db::open`], creating a new database with zstd-compressed pages when `compress`.
    /// Compression is fixed when a database is created: an existing one is opened as it
    /// was made, whatever `compress` says.
    pub fn open_with(path: &Path, cache_bytes: Option<u64>, compress: bool, wait: bool) -> Result<Db, StoreError> {
        let deadline = Instant::now() + Duration::from_secs(if wait { 2 } else { 0 });
        let mut compress = compress;
        let mut switched = false;
        loop {
            // Level 1: the fastest; the pages are mostly small records and random points.
            let mut config = sled::Config::new().path(path).use_compression(compress).compression_factor(1);
            if let Some(bytes) = cache_bytes {
                config = config.cache_capacity(bytes);
            }
            match config.open() {
                Ok(db) => return Ok(Db(db)),
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

    pub fn tree(&self, name: &str) -> Result<Tree, StoreError> {
        Ok(Tree(self.0.open_tree(name)?))
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.0.flush()?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.0.size_on_disk()?)
    }
}

type Entry = Result<(Bytes, Bytes), StoreError>;

fn entry(item: sled::Result<(sled::IVec, sled::IVec)>) -> Entry {
    item.map(|(k, v)| (Bytes(k), Bytes(v))).map_err(StoreError::from)
}

/// One named tree, outside a transaction (reads, scans, offline maintenance).
#[derive(Clone)]
pub struct Tree(sled::Tree);

impl Tree {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, StoreError> {
        Ok(self.0.get(key)?.map(Bytes))
    }

    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Option<Bytes>, StoreError> {
        Ok(self.0.insert(key.as_ref(), value.as_ref())?.map(Bytes))
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, StoreError> {
        Ok(self.0.remove(key)?.map(Bytes))
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Entry> {
        self.0.iter().map(entry)
    }

    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> impl DoubleEndedIterator<Item = Entry> {
        self.0.scan_prefix(prefix).map(entry)
    }

    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> impl DoubleEndedIterator<Item = Entry> {
        self.0.range(range).map(entry)
    }

    /// Writes every `(key, value)` atomically (offline migrations and restores).
    pub fn apply_all(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (k, v) in entries {
            batch.insert(k, v);
        }
        self.0.apply_batch(batch)?;
        Ok(())
    }
}

/// A fixed set of trees that transactions span, indexed by position.
#[derive(Clone)]
pub struct TreeSet(Vec<sled::Tree>);

impl TreeSet {
    pub fn new(trees: &[Tree]) -> TreeSet {
        TreeSet(trees.iter().map(|t| t.0.clone()).collect())
    }

    /// Runs `f` over every tree of the set as one atomic transaction. `f` may be run again
    /// after an engine conflict, so it must not have effects outside the transaction.
    pub fn transaction<R>(&self, f: impl Fn(&[TxTree<'_>]) -> Result<R, TxError>) -> Result<R, StoreError> {
        let result = self.0.as_slice().transaction(|trees| {
            let view: Vec<TxTree<'_>> = (0..self.0.len()).map(|i| TxTree(&trees[i])).collect();
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
}

/// One tree inside a transaction.
pub struct TxTree<'a>(&'a sled::transaction::TransactionalTree);

impl TxTree<'_> {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, TxError> {
        Ok(self.0.get(key)?.map(Bytes))
    }

    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<Option<Bytes>, TxError> {
        Ok(self.0.insert(key.as_ref(), value.as_ref())?.map(Bytes))
    }

    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, TxError> {
        Ok(self.0.remove(key.as_ref())?.map(Bytes))
    }
}

/// A bare database for benchmark floors: what the engine does with no store around it.
pub struct Floor {
    db: Db,
    tree: Tree,
}

impl Floor {
    /// A fresh database under `dir` with one tree.
    pub fn open(dir: &Path) -> Result<Floor, StoreError> {
        let db = Db::open(dir, None, false)?;
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
    /// inserts. Returns inserts per second.
    pub fn insert_flush_rate(&self, batch: usize, total: usize, value_len: usize) -> Result<f64, StoreError> {
        let value = vec![7u8; value_len];
        let started = Instant::now();
        let mut n = 0u64;
        while (n as usize) < total {
            for _ in 0..batch.max(1) {
                self.insert(n, &value)?;
                n += 1;
            }
            self.flush()?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_that_fails_applies_nothing_and_one_that_succeeds_applies_all() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), None, false).unwrap();
        let (a, b) = (db.tree("a").unwrap(), db.tree("b").unwrap());
        let set = TreeSet::new(&[a.clone(), b.clone()]);
        let failed: Result<(), StoreError> = set.transaction(|t| {
            t[0].insert(b"k", b"1")?;
            Err(StoreError::Corrupt { what: "test" }.into())
        });
        assert!(matches!(failed, Err(StoreError::Corrupt { what: "test" })));
        assert_eq!(a.get(b"k").unwrap(), None);
        set.transaction(|t| {
            t[0].insert(b"k", b"1")?;
            t[1].insert(b"k", b"2")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(&*a.get(b"k").unwrap().unwrap(), b"1");
        assert_eq!(&*b.get(b"k").unwrap().unwrap(), b"2");
    }

    #[test]
    fn compression_is_chosen_at_creation_and_kept_whatever_a_later_open_asks() {
        for made_compressed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open_with(dir.path(), None, made_compressed, false).unwrap();
            db.tree("t").unwrap().insert(b"k", vec![7u8; 4096]).unwrap();
            db.flush().unwrap();
            drop(db);
            // Asked for the other setting: opened as it was made, with its data.
            let db = Db::open_with(dir.path(), None, !made_compressed, false).unwrap();
            assert_eq!(db.tree("t").unwrap().get(b"k").unwrap().unwrap().len(), 4096);
            drop(db);
            let db = Db::open(dir.path(), None, false).unwrap();
            assert!(db.tree("t").unwrap().get(b"k").unwrap().is_some());
        }
    }

    #[test]
    fn a_second_open_of_a_locked_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Db::open(dir.path(), None, false).unwrap();
        match Db::open(dir.path(), None, false) {
            Err(StoreError::Open { path, .. }) => assert_eq!(path, dir.path()),
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("a locked database opened twice"),
        }
    }

    #[test]
    fn scans_see_keys_in_order_within_their_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), None, false).unwrap();
        let t = db.tree("t").unwrap();
        t.apply_all(vec![(b"a\x00\x02".to_vec(), vec![2]), (b"a\x00\x01".to_vec(), vec![1]), (b"b".to_vec(), vec![3])])
            .unwrap();
        let got: Vec<u8> = t.scan_prefix(b"a\x00").map(|e| e.unwrap().1[0]).collect();
        assert_eq!(got, vec![1, 2]);
        let ranged: Vec<u8> = t.range(b"a\x00\x02".as_slice()..b"c".as_slice()).map(|e| e.unwrap().1[0]).collect();
        assert_eq!(ranged, vec![2, 3]);
    }
}
