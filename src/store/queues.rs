//! The store's queues: each peer's outbox and each organisation's notices, read in
//! order up to what is durable (see the writer), so nobody sees what a crash could take
//! back.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::records::{self, decode, Queued};
use super::{keys, Outgoing, Store, StoreError, Table};
use crate::domain::{Notice, OrgId};

impl Store {
    // ---- outbox -------------------------------------------------------------------------

    /// The first `limit` durable outbox items for `peer`, in order.
    /// Only items already flushed are returned: an item a crash could take back must never
    /// reach a peer, or its sequence number could be given to another item after restart.
    pub fn outbox_batch<T: DeserializeOwned>(&self, peer: &str, limit: usize) -> Result<Vec<Outgoing<T>>, StoreError> {
        let durable = *self.durable_outbox.borrow();
        let range = keys::outbox(peer, 0)..keys::outbox(peer, durable.saturating_add(1));
        let mut out = Vec::new();
        for item in self.t(Table::Outbox).range(range).take(limit) {
            let (k, v) = item?;
            let seq = keys::trailing_seq(&k).ok_or(StoreError::Corrupt { what: "outbox key" })?;
            let queued: Queued<T> = decode(&v, "outbox item")?;
            out.push(Outgoing { seq, item: queued.item });
        }
        Ok(out)
    }

    /// When the oldest item still queued for `peer` was queued (None: the outbox is empty).
    pub fn outbox_oldest(&self, peer: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let Some(first) = self.t(Table::Outbox).scan_prefix(keys::owned(peer, &[])).next() else { return Ok(None) };
        Ok(DateTime::from_timestamp_millis(records::queued_at(&first?.1)?))
    }

    /// Number of items queued for `peer`.
    pub fn outbox_depth(&self, peer: &str) -> usize {
        self.t(Table::Outbox).scan_prefix(keys::owned(peer, &[])).count()
    }

    /// A receiver that changes whenever new outbox items become durable.
    pub fn subscribe_outbox(&self) -> watch::Receiver<u64> {
        self.durable_outbox.subscribe()
    }

    // ---- notices ------------------------------------------------------------------------

    /// Durable notices for `org` with cursor in `(after, upto]`, oldest first.
    pub fn notices_after(&self, org: &OrgId, after: u64, limit: usize) -> Result<Vec<(u64, Notice)>, StoreError> {
        let upto = *self.durable_notices.borrow();
        if after >= upto {
            return Ok(Vec::new());
        }
        let range = keys::notice(org, after.saturating_add(1))..keys::notice(org, upto.saturating_add(1));
        self.t(Table::Notices)
            .range(range)
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                let seq = keys::trailing_seq(&k).ok_or(StoreError::Corrupt { what: "notice key" })?;
                Ok((seq, decode(&v, "notice")?))
            })
            .collect()
    }

    /// A receiver that changes whenever new notices become durable.
    pub fn subscribe_notices(&self) -> watch::Receiver<u64> {
        self.durable_notices.subscribe()
    }
}
