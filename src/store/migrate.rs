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

use super::federation::{OutItem, Queued};
use super::{StoreError, META_SCHEMA, SCHEMA_VERSION};

/// One step of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub from: u32,
    pub to: u32,
    pub what: &'static str,
    /// Entries the step rewrites.
    pub entries: u64,
}

type Apply = fn(&sled::Db, bool) -> Result<u64, StoreError>;

const STEPS: &[(u32, &str, Apply)] = &[(1, "outbox values gain the time they were queued", outbox_queued_at)];

/// v1 → v2: bare `OutItem` values become `Queued { at_ms: now, item }`.
fn outbox_queued_at(db: &sled::Db, write: bool) -> Result<u64, StoreError> {
    let outbox = db.open_tree("outbox")?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut batch = sled::Batch::default();
    let mut n = 0;
    for item in outbox.iter() {
        let (k, v) = item?;
        let old: OutItem = postcard::from_bytes(&v).map_err(|_| StoreError::Corrupt { what: "v1 outbox item" })?;
        let new = postcard::to_stdvec(&Queued { at_ms: now, item: old })
            .map_err(|_| StoreError::Corrupt { what: "outbox item" })?;
        batch.insert(k, new);
        n += 1;
    }
    if write {
        outbox.apply_batch(batch)?;
    }
    Ok(n)
}

fn version(db: &sled::Db) -> Result<Option<u32>, StoreError> {
    Ok(db.open_tree("meta")?.get(META_SCHEMA)?.map(|v| v.as_ref().try_into().map(u32::from_be_bytes).unwrap_or(0)))
}

/// Brings `db` to [`SCHEMA_VERSION`] (or, with `write` false, only says what that takes).
pub(super) fn run(db: &sled::Db, path: &Path, write: bool) -> Result<Vec<Step>, StoreError> {
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
            db.open_tree("meta")?.insert(META_SCHEMA, &(found + 1).to_be_bytes())?;
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
    let db = sled::Config::new()
        .path(path)
        .open()
        .map_err(|e| StoreError::Open { path: path.to_owned(), reason: e.to_string() })?;
    run(&db, path, false)
}
