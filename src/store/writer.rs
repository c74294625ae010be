//! The single writer: group commit at the level of whole transactions.
//!
//! The engine (sled 0.34, see `engine`) runs every multi-tree transaction under a global
//! write lock, and its `flush` holds the matching read lock through the fsync, so
//! transactions and flushes never overlap. Flushing after each transaction would therefore serialise one fsync per
//! write. Instead, every write becomes a [`Job`] on one queue; a dedicated thread takes
//! every job queued so far (up to [`MAX_BATCH`]), runs them all in **one** transaction,
//! flushes once, and only then answers each caller. Under load the batch grows by itself;
//! a lone writer still pays one transaction and one flush.
//!
//! A job may refuse (a domain error such as "not your signal") only before its first
//! write, so a refused job leaves nothing behind in the shared transaction. A storage
//! failure aborts the whole batch and every job in it gets the error; nothing is applied.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use tokio::sync::{oneshot, watch};

use super::engine::Db;
use super::tx::Marks;
use super::{StoreError, Tx, TxResult};

/// Most jobs in one transaction.
pub const MAX_BATCH: usize = 512;

pub(super) type Output = Box<dyn Any + Send>;
pub(super) type JobFn = Box<dyn Fn(&Tx<'_>) -> TxResult<Output> + Send>;

pub(super) struct Job {
    pub run: JobFn,
    pub reply: oneshot::Sender<Result<Output, StoreError>>,
}

/// Work that needs the store to itself between batches (a consistent backup): no write
/// runs while it does, because every write goes through this thread.
pub(super) type ExclusiveFn = Box<dyn FnOnce() -> Result<Output, StoreError> + Send>;

pub(super) struct Exclusive {
    pub run: ExclusiveFn,
    pub reply: oneshot::Sender<Result<Output, StoreError>>,
}

pub(super) enum Request {
    Write(Job),
    Exclusive(Exclusive),
}

/// What one batch produced: each job's result and the sequence numbers it wrote.
pub(super) type BatchResult = Result<(Vec<Output>, Marks), StoreError>;

/// Counters for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct WriteStats {
    /// Flushes (= batches).
    pub flushes: AtomicU64,
    /// Jobs committed.
    pub writers: AtomicU64,
    pub flush_micros: AtomicU64,
    pub txn_micros: AtomicU64,
}

impl WriteStats {
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.flushes.load(Ordering::Relaxed),
            self.writers.load(Ordering::Relaxed),
            self.flush_micros.load(Ordering::Relaxed),
            self.txn_micros.load(Ordering::Relaxed),
        )
    }
}

/// Handle to the writer thread. When the last clone drops, the thread is stopped and
/// joined, so the database (and its file lock) is released before the drop returns and a
/// node can be reopened at once.
#[derive(Clone)]
pub(super) struct Writer {
    inner: Arc<Inner>,
    pub stats: Arc<WriteStats>,
}

struct Inner {
    jobs: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    /// Starts the writer thread. `run_batch` runs jobs in one transaction.
    pub fn start(
        db: Db,
        durable_notices: watch::Sender<u64>,
        durable_outbox: watch::Sender<u64>,
        run_batch: impl Fn(&[Job]) -> BatchResult + Send + 'static,
    ) -> Writer {
        let (jobs, rx) = mpsc::channel::<Request>();
        let stats = Arc::new(WriteStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("virfed-writer".into())
            .spawn(move || writer_loop(db, rx, [durable_notices, durable_outbox], thread_stats, run_batch))
            .expect("spawning the writer thread at startup");
        Writer { inner: Arc::new(Inner { jobs: Some(jobs), thread: Some(thread) }), stats }
    }

    /// Queues `job` and waits until it is committed and on disk.
    pub async fn submit(&self, run: JobFn) -> Result<Output, StoreError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || StoreError::Failed("the store's writer has stopped".into());
        let jobs = self.inner.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(Request::Write(Job { run, reply })).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Runs `run` on the writer thread with no write in progress or started meanwhile.
    pub async fn exclusive(&self, run: ExclusiveFn) -> Result<Output, StoreError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || StoreError::Failed("the store's writer has stopped".into());
        let jobs = self.inner.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(Request::Exclusive(Exclusive { run, reply })).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn writer_loop(
    db: Db,
    rx: mpsc::Receiver<Request>,
    durable: [watch::Sender<u64>; 2],
    stats: Arc<WriteStats>,
    run_batch: impl Fn(&[Job]) -> BatchResult,
) {
    let mut next: Option<Request> = None;
    loop {
        let first = match next.take() {
            Some(r) => r,
            None => match rx.recv() {
                Ok(r) => r,
                Err(_) => return,
            },
        };
        let first = match first {
            Request::Exclusive(job) => {
                let _ = job.reply.send((job.run)());
                continue;
            }
            Request::Write(job) => job,
        };
        let mut batch = vec![first];
        for request in rx.try_iter() {
            match request {
                Request::Write(job) => batch.push(job),
                exclusive @ Request::Exclusive(_) => {
                    // Runs right after this batch, before any later write.
                    next = Some(exclusive);
                    break;
                }
            }
            if batch.len() == MAX_BATCH {
                break;
            }
        }
        let started = Instant::now();
        let outcome = run_batch(&batch);
        let flush_started = Instant::now();
        stats.txn_micros.fetch_add((flush_started - started).as_micros() as u64, Ordering::Relaxed);
        let outcome = outcome.and_then(|done| {
            db.flush().map_err(|e| StoreError::Failed(format!("flushing the store failed: {e}")))?;
            Ok(done)
        });
        stats.flush_micros.fetch_add(flush_started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats.writers.fetch_add(batch.len() as u64, Ordering::Relaxed);
        match outcome {
            Ok((results, marks)) => {
                // Only now, with the batch on disk, may watchers and peers see it.
                for (sender, mark) in durable.iter().zip([marks.notice, marks.outbox]) {
                    if let Some(seq) = mark {
                        sender.send_if_modified(|v| {
                            let newer = seq > *v;
                            if newer {
                                *v = seq;
                            }
                            newer
                        });
                    }
                }
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::Failed(message.clone())));
                }
            }
        }
    }
}
