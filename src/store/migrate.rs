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
