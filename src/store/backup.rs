//! Online backup and offline restore of the store.
//!
//! **Backup** runs as an exclusive job on the writer thread: every write goes through that
//! thread, so while the backup file is written no write happens and the copy is one
//! consistent point in time (writes queue for those seconds and then continue). The file:
//!
//! ```text
//! "virfed-backup\n" (14 bytes)
//! records, each: u32 big-endian length, postcard bytes
//!   first: Header { format, schema_version, created_at, audit_head, entries }
//!   then:  Entry { tree, key, value }   (every tree; not the epoch, join markers, probes)
//! SHA-256 of everything before it (32 bytes)
//! ```
//!
//! The key files are **not** in the backup: they are the secrets that make the store's
//! pseudonyms unreadable, and belong in a separate, more tightly held backup.
//!
//! **Restore** (node stopped) checks the trailing hash and the audit chain before it
//! writes anything, builds a fresh store, gives it a new epoch (peers must not take its
//! sequence numbers for replays of the old ones), and marks it to ask every peer for a
//! resync on the next start, so no cross-region match made after the backup is missed.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::engine::{Db, Tree};
use super::keys::meta;
use super::{audit, StoreError, SCHEMA_VERSION, TABLES};

const MAGIC: &[u8] = b"virfed-backup\n";
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    format: u32,
    schema_version: u32,
    created_at: DateTime<Utc>,
    audit_head: (u64, [u8; 32]),
    entries: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    tree: String,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// What a backup or restore handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSummary {
    pub entries: u64,
    pub audit_entries: u64,
    pub created_at: DateTime<Utc>,
}

/// Meta keys that describe this copy of the store, not its data.
fn skipped(tree: &str, key: &[u8]) -> bool {
    tree == "meta" && (key == meta::EPOCH || key.starts_with(meta::JOINED.as_bytes()) || key == meta::PROBE)
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn record<W: Write, T: Serialize>(out: &mut W, value: &T) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(value).map_err(std::io::Error::other)?;
    out.write_all(&(bytes.len() as u32).to_be_bytes())?;
    out.write_all(&bytes)
}

/// Writes a backup of the tables (in [`TABLES`] order) to `path` (called with no write in
/// progress).
pub(super) fn write(tables: &[Tree], path: &Path) -> Result<BackupSummary, StoreError> {
    let io = |e: std::io::Error| StoreError::Failed(format!("writing the backup {}: {e}", path.display()));
    let audit_head: (u64, [u8; 32]) = match tables[0].get(meta::AUDIT_HEAD)? {
        Some(v) => postcard::from_bytes(&v).map_err(|_| StoreError::Corrupt { what: "audit head" })?,
        None => (0, [0; 32]),
    };
    let mut entries = 0u64;
    for (name, tree) in TABLES.iter().zip(tables) {
        for item in tree.iter() {
            let (k, _) = item?;
            if !skipped(name, &k) {
                entries += 1;
            }
        }
    }
    let created_at = Utc::now();
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io)?;
    let mut out = HashingWriter { inner: BufWriter::new(file), hash: Sha256::new() };
    out.write_all(MAGIC).map_err(io)?;
    record(&mut out, &Header { format: FORMAT, schema_version: SCHEMA_VERSION, created_at, audit_head, entries })
        .map_err(io)?;
    for (name, tree) in TABLES.iter().zip(tables) {
        for item in tree.iter() {
            let (k, v) = item?;
            if skipped(name, &k) {
                continue;
            }
            record(&mut out, &Entry { tree: (*name).into(), key: k.to_vec(), value: v.to_vec() }).map_err(io)?;
        }
    }
    let digest = out.hash.finalize();
    let mut inner = out.inner;
    inner.write_all(&digest).map_err(io)?;
    let file = inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(BackupSummary { entries, audit_entries: audit_head.0, created_at })
}

/// Reads and checks a backup: the trailing hash, the format, the audit chain.
fn read(path: &Path) -> Result<(Header, Vec<Entry>), StoreError> {
    let bad = |why: &str| StoreError::Failed(format!("{} is not a usable virfed backup: {why}", path.display()));
    let mut bytes = Vec::new();
    BufReader::new(std::fs::File::open(path).map_err(|e| bad(&e.to_string()))?)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(&e.to_string()))?;
    if bytes.len() < MAGIC.len() + 32 || !bytes.starts_with(MAGIC) {
        return Err(bad("it does not start with the virfed backup marker"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(bad("its checksum does not match: the file is damaged or was changed"));
    }
    let mut rest = &body[MAGIC.len()..];
    let mut next = |what: &str| -> Result<Vec<u8>, StoreError> {
        if rest.len() < 4 {
            return Err(bad(&format!("it ends inside the {what}")));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            return Err(bad(&format!("it ends inside the {what}")));
        }
        let record = rest[4..4 + len].to_vec();
        rest = &rest[4 + len..];
        Ok(record)
    };
    let header: Header = postcard::from_bytes(&next("header")?).map_err(|_| bad("unreadable header"))?;
    if header.format != FORMAT {
        return Err(bad(&format!("backup format {} is not supported (this virfed reads {FORMAT})", header.format)));
    }
    // An older schema is migrated when the restored store is first opened.
    if header.schema_version > SCHEMA_VERSION {
        return Err(bad(&format!(
            "it holds schema version {}, newer than this virfed's {SCHEMA_VERSION}; restore it with the virfed version that wrote it",
            header.schema_version
        )));
    }
    let mut entries = Vec::with_capacity(header.entries as usize);
    for _ in 0..header.entries {
        entries.push(postcard::from_bytes::<Entry>(&next("entries")?).map_err(|_| bad("an unreadable entry"))?);
    }
    let chain = entries
        .iter()
        .filter(|e| e.tree == "audit")
        .map(|e| (e.key.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0), e.value.clone()));
    audit::verify(chain, header.audit_head)
        .map_err(|broken| bad(&format!("its audit chain does not verify ({broken})")))?;
    Ok((header, entries))
}

/// Restores `backup` into a new store at `store_path`. An existing store there is moved
/// aside to `<store>.before-restore-<time>` when `replace` is set, else refused.
pub fn restore(
    store_path: &Path,
    backup: &Path,
    replace: bool,
) -> Result<(BackupSummary, Option<PathBuf>), StoreError> {
    let (header, entries) = read(backup)?;
    let mut moved = None;
    if store_path.exists() && std::fs::read_dir(store_path).map(|mut d| d.next().is_some()).unwrap_or(true) {
        if !replace {
            return Err(StoreError::Failed(format!(
                "{} already holds a store; stop the node and pass --replace to move it aside, or restore into an empty data directory",
                store_path.display()
            )));
        }
        let aside = store_path.with_extension(format!("before-restore-{}", Utc::now().format("%Y%m%dT%H%M%S")));
        std::fs::rename(store_path, &aside)
            .map_err(|e| StoreError::Failed(format!("moving {} aside: {e}", store_path.display())))?;
        moved = Some(aside);
    }
    let db = Db::open(store_path, None, false)?;
    for entry in &entries {
        db.tree(&entry.tree)?.insert(&entry.key, &entry.value)?;
    }
    let meta_tree = db.tree("meta")?;
    meta_tree.insert(meta::EPOCH, rand::random::<u64>().max(1).to_be_bytes())?;
    meta_tree.insert(meta::RESYNC_AFTER_RESTORE, [1])?;
    db.flush()?;
    Ok((
        BackupSummary { entries: header.entries, audit_entries: header.audit_head.0, created_at: header.created_at },
        moved,
    ))
}
