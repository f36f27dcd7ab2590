//! [`LogStore`] for [`LogFile`]: writes are queued in call order at once and made durable by
//! a background sync thread, so the driver's task does not wait on the disk for them.
//!
//! `compact` and `install_snapshot` run inside the call, after a barrier job: see the crate
//! documentation ("The async interface").

use std::sync::{mpsc, Arc, Weak};

use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::FutureExt;
use raft_core::driver::LogStore;
use raft_core::StorageError;
use raft_proto::{Entry, HardState, LogIndex, Membership, Term};

use crate::store::{Inner, LogFile, Ticket};

/// One job for the sync thread.
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

/// Starts the sync thread of a store. It holds only a weak reference, so it ends when the
/// last handle to the store is dropped (the job channel closes).
pub(crate) fn start_syncer(inner: Weak<Inner>) -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("raft-log-sync".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                let (ticket, hard_state, done) = match job {
                    Job::Persist {
                        ticket,
                        hard_state,
                        done,
                    } => (ticket, hard_state, done),
                    Job::Barrier(reached) => {
                        let _ = reached.send(());
                        continue;
                    }
                };
                let Some(inner) = inner.upgrade() else { break };
                let log = LogFile::from_inner(inner);
                let result = log
                    .wait_durable(ticket)
                    .and_then(|()| match hard_state {
                        Some(hs) => log.set_hard_state(hs),
                        None => Ok(()),
                    })
                    .map_err(|e| StorageError::Other(e.to_string()));
                // Let go of the store before answering: a caller that drops its last handle
                // once the write resolves must find the directory unlocked.
                drop(log);
                let _ = done.send(result);
            }
        })?;
    Ok(tx)
}

fn stopped() -> StorageError {
    StorageError::Other("the sync thread stopped".into())
}

impl LogStore for LogFile {
    fn persist(
        &self,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let ticket = match self.submit(&entries) {
            Ok(t) => t,
            Err(e) => {
                return futures::future::ready(Err(StorageError::Other(e.to_string()))).boxed()
            }
        };
        let (done, result) = oneshot::channel();
        let job = Job::Persist {
            ticket,
            hard_state,
            done,
        };
        if let Err(e) = self.syncer().and_then(|tx| {
            tx.send(job)
                .map_err(|_| "the sync thread stopped".to_string())
        }) {
            return futures::future::ready(Err(StorageError::Other(e))).boxed();
        }
        result.map(|r| r.unwrap_or_else(|_| Err(stopped()))).boxed()
    }

    /// Runs [`LogFile::compact`] inside the call, once every write queued before is durable
    /// (see [the crate documentation](crate#the-async-interface)). Blocks for those writes.
    fn compact(&self, up_to: LogIndex) -> BoxFuture<'static, Result<(), StorageError>> {
        let result = self.wait_for_queued_jobs().and_then(|()| {
            LogFile::compact(self, up_to).map_err(|e| StorageError::Other(e.to_string()))
        });
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
            LogFile::install_snapshot(self, index, term, &membership)
                .map_err(|e| StorageError::Other(e.to_string()))
        });
        futures::future::ready(result).boxed()
    }
}

impl LogFile {
    fn syncer(&self) -> Result<mpsc::Sender<Job>, String> {
        let mut slot = self.inner().syncer.lock();
        if slot.is_none() {
            let tx = start_syncer(Arc::downgrade(self.inner()))
                .map_err(|e| format!("cannot start the sync thread: {e}"))?;
            *slot = Some(tx);
        }
        Ok(slot.as_ref().expect("set above").clone())
    }

    /// Blocks until the sync thread has finished every job queued before the call (at once
    /// if it never got one).
    fn wait_for_queued_jobs(&self) -> Result<(), StorageError> {
        let Some(tx) = self.inner().syncer.lock().clone() else {
            return Ok(());
        };
        let (reached, wait) = mpsc::sync_channel(1);
        tx.send(Job::Barrier(reached)).map_err(|_| stopped())?;
        wait.recv().map_err(|_| stopped())
    }
}
