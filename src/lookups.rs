//! The durable BRP lookup queue's worker (family matches, D11, `family.source = "brp"`).
//!
//! A registration of a child new here queues a lookup in the same write (`records::Lookup`:
//! the child's pseudonym and its BSN sealed under a key derived from the local key) and
//! answers at once: the child match never waits for the BRP. This task asks the BRP for the
//! parents of each due lookup, one at a time, and records them ([`Registry::complete_lookup`],
//! which forms the family matches); a BRP that is down, slow or malformed is retried with
//! jittered backoff (1 s doubling to 5 minutes; an answer that needs a change first, such
//! as a refused credential, every hour), and every attempt is durable, so a restart
//! resumes where it stopped. "Not found" completes the lookup with no parents.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::brp::{BrpClient, Parents};
use crate::domain::Clock;
use crate::pseudonym::{BlindKey, LocalKey};
use crate::registry::family::NewParent;
use crate::registry::Registry;
use crate::shutdown::Shutdown;

/// How often the queue is looked at when nothing woke the worker.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// Retries of an error that may pass: from 1 s, doubling, at most 5 minutes apart.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
/// Retries of an error that needs a change first (credentials, a 4xx): hourly.
const REFUSED_RETRY: Duration = Duration::from_secs(3600);

/// What the worker needs.
pub struct LookupWorker {
    pub registry: Registry,
    pub brp: BrpClient,
    pub local_key: LocalKey,
    pub blind_key: Option<BlindKey>,
    pub clock: Arc<dyn Clock>,
}

impl LookupWorker {
    /// Runs until shutdown.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut wake = self.registry.store().subscribe_outbox();
        loop {
            let next = match self.pass().await {
                Ok(next) => next,
                Err(e) => {
                    warn!(error = %e, "BRP lookup queue: the store failed; retrying");
                    Some(IDLE_POLL)
                }
            };
            let wait = next.unwrap_or(IDLE_POLL).min(IDLE_POLL);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wake.changed() => {}
                _ = shutdown.recv() => return,
            }
        }
    }

    /// One pass over the due lookups; returns how long until the next one is due.
    pub async fn pass(&self) -> Result<Option<Duration>, crate::registry::RegistryError> {
        let now_ms = self.clock.now().timestamp_millis();
        let mut next: Option<i64> = None;
        for (seq, lookup) in self.registry.store().lookups()? {
            if lookup.next_at_ms > now_ms {
                next = Some(next.map_or(lookup.next_at_ms, |n| n.min(lookup.next_at_ms)));
                continue;
            }
            let Some(bsn) = self.local_key.open_bsn(&lookup.sealed, &lookup.child) else {
                warn!(seq, "BRP lookup queue: an entry does not open under this node's local key; dropped");
                self.registry
                    .complete_lookup(seq, Vec::new(), "dropped: not sealed under this local key", self.clock.now())
                    .await?;
                continue;
            };
            match self.brp.parents(&bsn).await {
                Ok(found) => {
                    let (parents, detail) = match found {
                        Parents::Found(list) => {
                            let n = list.len();
                            let parents = list
                                .iter()
                                .filter(|p| **p != bsn)
                                .map(|p| NewParent {
                                    key: self.local_key.parent_key(p),
                                    point: self.blind_key.as_ref().map(|k| k.blind_parent(p)),
                                })
                                .collect();
                            (parents, format!("{n} parent(s) in the BRP"))
                        }
                        Parents::NotFound => (Vec::new(), "not found in the BRP".to_owned()),
                    };
                    let linked = self.registry.complete_lookup(seq, parents, &detail, self.clock.now()).await?;
                    info!(seq, linked, attempts = lookup.attempts + 1, "BRP lookup done");
                }
                Err(e) => {
                    let attempts = lookup.attempts.saturating_add(1);
                    let wait = if e.is_retryable() {
                        let mut b = RETRY;
                        for _ in 1..attempts.min(16) {
                            b.next_delay();
                        }
                        b.next_delay()
                    } else {
                        REFUSED_RETRY
                    };
                    let at = now_ms + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
                    // The error names the endpoint and status, never the BSN (`brp::redact`).
                    warn!(seq, attempts, retry_in_ms = wait.as_millis() as u64, error = %e, "BRP lookup failed; the registration stands, the family lookup is retried");
                    self.registry.reschedule_lookup(seq, attempts, at).await?;
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        debug!("BRP lookup queue pass done");
        Ok(next.map(|n| Duration::from_millis(u64::try_from(n - self.clock.now().timestamp_millis()).unwrap_or(0))))
    }
}
