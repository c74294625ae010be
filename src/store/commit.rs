//! Group commit: writers that finish a transaction at about the same time share one fsync.
//!
//! Every write path calls [`GroupCommit::sync`] after its transaction and before it
//! answers OK (invariant 4). One flusher thread takes every request queued so far, flushes
//! the database once, and releases them all; requests arriving during a flush go into the
//! next one. Under load the batch grows on its own, so throughput scales with concurrency
//! while a lone writer still pays a single flush.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

type Waiter = oneshot::Sender<Result<(), String>>;

/// Handle to the flusher thread. Cloning shares the thread.
#[derive(Clone)]
pub struct GroupCommit {
    requests: mpsc::Sender<Waiter>,
    stats: Arc<FlushStats>,
}

/// Counters for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct FlushStats {
    pub flushes: AtomicU64,
    pub writers: AtomicU64,
    pub flush_micros: AtomicU64,
}

impl GroupCommit {
    pub fn start(db: sled::Db) -> GroupCommit {
        let (requests, rx) = mpsc::channel::<Waiter>();
        let stats = Arc::new(FlushStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("virfed-flush".into())
            .spawn(move || flusher(db, rx, thread_stats))
            .expect("spawning the flush thread at startup");
        GroupCommit { requests, stats }
    }

    /// Returns once everything written before the call is on disk.
    pub async fn sync(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(tx)
            .map_err(|_| "the flush thread has stopped".to_string())?;
        rx.await
            .map_err(|_| "the flush thread has stopped".to_string())?
    }

    pub fn stats(&self) -> &FlushStats {
        &self.stats
    }
}

fn flusher(db: sled::Db, rx: mpsc::Receiver<Waiter>, stats: Arc<FlushStats>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let result = db
            .flush()
            .map(|_| ())
            .map_err(|e| format!("flushing the store failed: {e}"));
        stats
            .flush_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats
            .writers
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for waiter in batch {
            let _ = waiter.send(result.clone());
        }
    }
}
