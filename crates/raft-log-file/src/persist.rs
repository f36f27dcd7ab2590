//! [`LogStore`] for [`LogFile`]: writes are queued in call order at once and made durable by
//! a worker, so the driver's task does not wait on the disk for them. The worker is a
//! background sync thread ([`SyncWorker::Thread`]), or the caller itself
//! ([`SyncWorker::Manual`]: [`LogFile::run_queued_jobs`]); both run each job with
//! [`run_job`].
//!
//! `compact` and `install_snapshot` run inside the call, after a barrier: see the crate
//! documentation ("The async interface").

use std::collections::VecDeque;
use std::sync::{mpsc, Arc, Weak};

use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::FutureExt;
use raftline_core::driver::LogStore;
use raftline_core::StorageError;
use raftline_proto::{Entry, HardState, LogIndex, Membership, Term};

use crate::store::{Inner, LogFile, SyncWorker, Ticket};

/// One job for the worker.
pub(crate) enum Job {
    /// Wait for the entries, then persist the hard state.
    Persist {
        ticket: Ticket,
        hard_state: Option<HardState>,
        done: oneshot::Sender<Result<(), StorageError>>,
    },
    /// Nothing to write: the answer says that every job queued before it is done.
    Barrier(mpsc::SyncSender<()>),
}

/// Where the jobs of a store go.
pub(crate) enum Worker {
    /// To the sync thread, started on first use.
    Thread(Option<mpsc::Sender<Job>>),
    /// Into a queue that [`LogFile::run_queued_jobs`] runs on the caller's thread.
    Manual(VecDeque<Job>),
}

impl Worker {
    pub(crate) fn new(kind: SyncWorker) -> Worker {
        match kind {
            SyncWorker::Thread => Worker::Thread(None),
            SyncWorker::Manual => Worker::Manual(VecDeque::new()),
        }
    }
}

/// What running one job came to.
pub(crate) enum Ran {
    /// A barrier was answered.
    Barrier,
    /// A persist job ran; its future resolves to this result.
    Persisted(Result<(), StorageError>),
    /// The store is gone (every handle was dropped): the job's future resolves to an error.
    StoreGone,
}

/// Runs one job: the body of the sync thread's loop, and what [`LogFile::run_queued_jobs`]
/// does with each job. Holds the store (`inner`) only while the job runs.
pub(crate) fn run_job(job: Job, inner: &Weak<Inner>) -> Ran {
    let (ticket, hard_state, done) = match job {
        Job::Persist {
            ticket,
            hard_state,
            done,
        } => (ticket, hard_state, done),
        Job::Barrier(reached) => {
            let _ = reached.send(());
            return Ran::Barrier;
        }
    };
    let Some(inner) = inner.upgrade() else {
        return Ran::StoreGone;
    };
    let log = LogFile::from_inner(inner);
    let result = log
        .wait_durable(ticket)
        .and_then(|()| match hard_state {
            Some(hs) => log.set_hard_state(hs),
            None => Ok(()),
        })
        .map_err(StorageError::other);
    // Let go of the store before answering: a caller that drops its last handle once the
    // write resolves must find the directory unlocked.
    drop(log);
    let _ = done.send(result.clone());
    Ran::Persisted(result)
}

/// Starts the sync thread of a store. It holds only a weak reference, so it ends when the
/// last handle to the store is dropped (the job channel closes).
fn start_syncer(inner: Weak<Inner>) -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("raft-log-sync".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                if let Ran::StoreGone = run_job(job, &inner) {
                    break;
                }
            }
        })?;
    Ok(tx)
}

fn stopped() -> StorageError {
    StorageError::other("the sync thread stopped")
}

impl LogStore for LogFile {
    fn persist(
        &self,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let ticket = match self.submit(&entries) {
            Ok(t) => t,
            Err(e) => return futures::future::ready(Err(StorageError::other(e))).boxed(),
        };
        let (done, result) = oneshot::channel();
        let job = Job::Persist {
            ticket,
            hard_state,
            done,
        };
        if let Err(e) = self.queue(job) {
            return futures::future::ready(Err(StorageError::other(e))).boxed();
        }
        result.map(|r| r.unwrap_or_else(|_| Err(stopped()))).boxed()
    }

    /// Runs [`LogFile::compact`] inside the call, once every write queued before is durable
    /// (see [the crate documentation](crate#the-async-interface)). Blocks for those writes.
    fn compact(&self, up_to: LogIndex) -> BoxFuture<'static, Result<(), StorageError>> {
        let result = self
            .wait_for_queued_jobs()
            .and_then(|()| LogFile::compact(self, up_to).map_err(StorageError::other));
        futures::future::ready(result).boxed()
    }

    /// Runs [`LogFile::install_snapshot`] inside the call, once every write queued before is
    /// durable (see [the crate documentation](crate#the-async-interface)). Blocks for those
    /// writes.
    fn install_snapshot(
        &self,
        index: LogIndex,
        term: Term,
        membership: Membership,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let result = self.wait_for_queued_jobs().and_then(|()| {
            LogFile::install_snapshot(self, index, term, &membership).map_err(StorageError::other)
        });
        futures::future::ready(result).boxed()
    }
}

impl LogFile {
    /// Hands `job` to the worker: the sync thread (started on first use) or the manual queue.
    fn queue(&self, job: Job) -> Result<(), String> {
        let mut worker = self.inner().worker.lock();
        match &mut *worker {
            Worker::Manual(queue) => {
                queue.push_back(job);
                Ok(())
            }
            Worker::Thread(slot) => {
                if slot.is_none() {
                    let tx = start_syncer(Arc::downgrade(self.inner()))
                        .map_err(|e| format!("cannot start the sync thread: {e}"))?;
                    *slot = Some(tx);
                }
                let tx = slot.as_ref().expect("set above");
                tx.send(job)
                    .map_err(|_| "the sync thread stopped".to_string())
            }
        }
    }

    /// Blocks until every job queued before the call is finished: the sync thread answers a
    /// barrier (at once if it never got a job); in manual mode, the queued jobs run here.
    fn wait_for_queued_jobs(&self) -> Result<(), StorageError> {
        let tx = match &*self.inner().worker.lock() {
            Worker::Manual(_) => None,
            Worker::Thread(None) => return Ok(()),
            Worker::Thread(Some(tx)) => Some(tx.clone()),
        };
        let Some(tx) = tx else {
            self.run_queued_jobs();
            return Ok(());
        };
        let (reached, wait) = mpsc::sync_channel(1);
        tx.send(Job::Barrier(reached)).map_err(|_| stopped())?;
        wait.recv().map_err(|_| stopped())
    }

    /// With [`SyncWorker::Manual`]: runs every queued write of the
    /// [`LogStore`] interface on this thread, in call order (also those queued meanwhile),
    /// resolving their futures. Returns how many ran. With [`SyncWorker::Thread`] the sync
    /// thread runs them: returns 0.
    pub fn run_queued_jobs(&self) -> usize {
        let mut ran = 0;
        while self.run_queued_job().is_some() {
            ran += 1;
        }
        ran
    }

    /// With [`SyncWorker::Manual`]: runs the oldest queued write of the [`LogStore`]
    /// interface on this thread and returns its result (what its future resolves to); `None`
    /// if none is queued (always, with [`SyncWorker::Thread`]).
    pub fn run_queued_job(&self) -> Option<Result<(), StorageError>> {
        // Held while the job runs, so that jobs run one at a time and in order even when
        // several threads run the queue.
        let _running = self.inner().running.lock();
        let job = match &mut *self.inner().worker.lock() {
            Worker::Manual(queue) => queue.pop_front()?,
            Worker::Thread(_) => return None,
        };
        match run_job(job, &Arc::downgrade(self.inner())) {
            Ran::Persisted(result) => Some(result),
            Ran::Barrier => Some(Ok(())),
            Ran::StoreGone => Some(Err(stopped())),
        }
    }

    /// With [`SyncWorker::Manual`]: how many writes of the [`LogStore`] interface are queued
    /// and not run yet (0 with [`SyncWorker::Thread`]).
    pub fn queued_jobs(&self) -> usize {
        match &*self.inner().worker.lock() {
            Worker::Manual(queue) => queue.len(),
            Worker::Thread(_) => 0,
        }
    }
}
