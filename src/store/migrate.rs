//! Schema migrations, run when a store written by an older virfed is opened.
//!
//! Each step takes the store from one schema version to the next and is applied with the
//! version bump in one flush, in order; `plan` describes the steps without writing, for
//! `virfed migrate --dry-run`. A store newer than this virfed is refused.
//!
//! | from | to | change |
//! |-----:|---:|--------|
//! | 1 | 2 | outbox values carry the time they were queued (for the outbox-age health figure) |

use std::path::Path;

use super::engine::Db;
use super::keys::meta;
use super::records::encode;
use super::{StoreError, SCHEMA_VERSION};

/// One step of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub from: u32,
    pub to: u32,
    pub what: &'static str,
    /// Entries the step rewrites.
    pub entries: u64,
}

type Apply = fn(&Db, bool) -> Result<u64, StoreError>;

const STEPS: &[(u32, &str, Apply)] = &[(1, "outbox values gain the time they were queued", outbox_queued_at)];

/// v1 → v2: bare outbox items become `Queued { at_ms: now, item }`. A `Queued` value is
/// its queue time followed by the item's own bytes (see `records`), so each item is
/// prefixed, not decoded: the store need not know the protocol's item type.
fn outbox_queued_at(db: &Db, write: bool) -> Result<u64, StoreError> {
    let outbox = db.tree("outbox")?;
    let now = encode(&chrono::Utc::now().timestamp_millis());
    let mut rewritten = Vec::new();
    for item in outbox.iter() {
        let (k, v) = item?;
        if v.is_empty() {
            return Err(StoreError::Corrupt { what: "v1 outbox item" });
        }
        let mut value = now.clone();
        value.extend_from_slice(&v);
        rewritten.push((k.to_vec(), value));
    }
    let n = rewritten.len() as u64;
    if write {
        outbox.apply_all(rewritten)?;
    }
    Ok(n)
}

fn version(db: &Db) -> Result<Option<u32>, StoreError> {
    Ok(db.tree("meta")?.get(meta::SCHEMA)?.map(|v| v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0)))
}

/// Brings `db` to [`SCHEMA_VERSION`] (or, with `write` false, only says what that takes).
pub(super) fn run(db: &Db, path: &Path, write: bool) -> Result<Vec<Step>, StoreError> {
    let Some(mut found) = version(db)? else { return Ok(Vec::new()) };
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaMismatch { path: path.to_owned(), found, expected: SCHEMA_VERSION });
    }
    let mut done = Vec::new();
    while found < SCHEMA_VERSION {
        let Some((_, what, apply)) = STEPS.iter().find(|(from, _, _)| *from == found) else {
            return Err(StoreError::SchemaMismatch { path: path.to_owned(), found, expected: SCHEMA_VERSION });
        };
        let entries = apply(db, write)?;
        if write {
            db.tree("meta")?.insert(meta::SCHEMA, (found + 1).to_be_bytes())?;
            db.flush()?;
            tracing::info!(from = found, to = found + 1, entries, "store migrated");
        }
        done.push(Step { from: found, to: found + 1, what, entries });
        found += 1;
    }
    Ok(done)
}

/// `virfed migrate --dry-run`: the steps opening the store at `path` would take.
pub fn plan(path: &Path) -> Result<Vec<Step>, StoreError> {
    let db = Db::open(path, None, false)?;
    run(&db, path, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::{decode, Queued};

    /// A store as a version-1 virfed left it: schema 1, bare items in the outbox.
    fn v1_store(dir: &Path, items: &[Vec<u8>]) -> Db {
        let db = Db::open(dir, None, false).unwrap();
        db.tree("meta").unwrap().insert(meta::SCHEMA, 1u32.to_be_bytes()).unwrap();
        let outbox = db.tree("outbox").unwrap();
        for (i, item) in items.iter().enumerate() {
            outbox.insert(crate::store::keys::outbox("utrecht", i as u64 + 1), item).unwrap();
        }
        db.flush().unwrap();
        db
    }

    #[test]
    fn v1_outbox_items_gain_their_queue_time_and_keep_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let items = vec![encode(&(3u8, true)), encode(&(4u8, false))];
        let db = v1_store(dir.path(), &items);
        let steps = run(&db, dir.path(), true).unwrap();
        assert_eq!(steps, vec![Step { from: 1, to: 2, what: STEPS[0].1, entries: 2 }]);
        assert_eq!(version(&db).unwrap(), Some(SCHEMA_VERSION));
        let migrated: Vec<Queued<(u8, bool)>> =
            db.tree("outbox").unwrap().iter().map(|e| decode(&e.unwrap().1, "outbox item").unwrap()).collect();
        assert_eq!(migrated.iter().map(|q| q.item).collect::<Vec<_>>(), vec![(3, true), (4, false)]);
        let age = chrono::Utc::now().timestamp_millis() - migrated[0].at_ms;
        assert!((0..60_000).contains(&age), "queued 'now': {age} ms ago");
        assert!(run(&db, dir.path(), true).unwrap().is_empty(), "a migrated store needs nothing more");
    }

    #[test]
    fn a_dry_run_says_what_it_would_do_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let items = vec![encode(&7u8)];
        let db = v1_store(dir.path(), &items);
        let steps = run(&db, dir.path(), false).unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].entries, 1);
        assert_eq!(version(&db).unwrap(), Some(1));
        let stored = db.tree("outbox").unwrap().iter().next().unwrap().unwrap().1;
        assert_eq!(&*stored, items[0].as_slice());
    }

    #[test]
    fn a_newer_store_is_refused_and_a_new_one_needs_no_step() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), None, false).unwrap();
        assert!(run(&db, dir.path(), true).unwrap().is_empty(), "no schema yet: nothing to migrate");
        db.tree("meta").unwrap().insert(meta::SCHEMA, (SCHEMA_VERSION + 1).to_be_bytes()).unwrap();
        match run(&db, dir.path(), true) {
            Err(StoreError::SchemaMismatch { found, expected, .. }) => {
                assert_eq!((found, expected), (SCHEMA_VERSION + 1, SCHEMA_VERSION))
            }
            other => panic!("a newer store was accepted: {other:?}"),
        }
    }

    #[test]
    fn an_unreadable_v1_item_stops_the_migration_before_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = v1_store(dir.path(), &[encode(&1u8), Vec::new()]);
        assert!(matches!(run(&db, dir.path(), true), Err(StoreError::Corrupt { .. })));
        assert_eq!(version(&db).unwrap(), Some(1), "the schema version is not bumped");
        let first = db.tree("outbox").unwrap().iter().next().unwrap().unwrap().1;
        assert_eq!(&*first, encode(&1u8).as_slice(), "no item was rewritten");
    }
}
