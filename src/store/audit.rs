//! The audit log (D8): append-only, hash-chained, without BSNs.
//!
//! Entry `n` stores `prev = hash(entry n-1)` and `hash = SHA-256(postcard(entry n))`; the
//! store's meta tree holds the head `(n, hash)`. Entries are appended inside the same
//! transaction as the change they record, so the log and the data never disagree.
//! [`verify`] recomputes the chain: a modified entry breaks its hash, a removed one breaks
//! the sequence or the next `prev`, a removed tail no longer reaches the head.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One logged event: who did what to which record, and when. Never a BSN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// `org:<id>`, `operator:<name>`, `system:sweeper`, ...
    pub actor: String,
    /// Dotted action name, e.g. `signal.register`.
    pub action: String,
    /// The record acted on: a signal id, an organisation id.
    pub subject: String,
    /// Extra facts, e.g. the notice's recipient; never personal data about the child.
    pub detail: String,
    pub prev: [u8; 32],
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StoredEntry {
    pub entry: AuditEntry,
    pub hash: [u8; 32],
}

pub(crate) fn entry_hash(entry: &AuditEntry) -> [u8; 32] {
    let bytes = postcard::to_stdvec(entry).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(b"virfed/audit/v1");
    h.update(&bytes);
    h.finalize().into()
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditBroken {
    #[error("audit entry {seq} is unreadable (the bytes were changed)")]
    Unreadable { seq: u64 },
    #[error("audit entry {seq} was modified: its hash does not match its content")]
    Modified { seq: u64 },
    #[error("audit entry {expected} is missing (found {found} next): entries were removed")]
    Gap { expected: u64, found: u64 },
    #[error("audit entry {seq} does not link to entry {prev}: the chain was rewritten")]
    Unlinked { seq: u64, prev: u64 },
    #[error("the audit log ends at entry {last} but the recorded head is entry {head}: entries were removed or the head was changed")]
    HeadMismatch { last: u64, head: u64 },
}

/// Summary of a verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSummary {
    pub entries: u64,
    pub head_hash: [u8; 32],
}

/// Verifies a chain given in key order plus the recorded head.
pub(crate) fn verify(
    entries: impl Iterator<Item = (u64, Vec<u8>)>,
    head: (u64, [u8; 32]),
) -> Result<AuditSummary, AuditBroken> {
    let mut prev_hash = [0u8; 32];
    let mut expected = 1u64;
    for (key_seq, bytes) in entries {
        let stored: StoredEntry = postcard::from_bytes(&bytes).map_err(|_| AuditBroken::Unreadable { seq: key_seq })?;
        let seq = stored.entry.seq;
        if seq != key_seq || entry_hash(&stored.entry) != stored.hash {
            return Err(AuditBroken::Modified { seq: key_seq });
        }
        if seq != expected {
            return Err(AuditBroken::Gap { expected, found: seq });
        }
        if stored.entry.prev != prev_hash {
            return Err(AuditBroken::Unlinked { seq, prev: seq - 1 });
        }
        prev_hash = stored.hash;
        expected += 1;
    }
    let last = expected - 1;
    if last != head.0 || prev_hash != head.1 {
        return Err(AuditBroken::HeadMismatch { last, head: head.0 });
    }
    Ok(AuditSummary { entries: last, head_hash: prev_hash })
}
