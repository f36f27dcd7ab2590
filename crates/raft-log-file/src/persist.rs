//! [`LogStore`] for [`LogFile`]: writes are queued in call order at once and made durable by
//! a background sync thread, so the driver's task never waits on the disk.

use std::sync::{mpsc, Arc, Weak};

use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::FutureExt;
use raft_core::driver::LogStore;
use raft_core::StorageError;
use raft_proto::{Entry, HardState};

use crate::store::{Inner, LogFile, Ticket};

/// One write for the sync thread: wait for the entries, then persist the hard state.
pub(crate) struct Job {
    ticket: Ticket,
    hard_state: Option<HardState>,
    done: oneshot::Sender<Result<(), StorageError>>,
}

/// Starts the sync thread of a store. It holds only a weak reference, so it ends when the
/// last handle to the store is dropped (the job channel closes).
pub(crate) fn start_syncer(inner: Weak<Inner>) -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("raft-log-sync".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                let Some(inner) = inner.upgrade() else { break };
                let log = LogFile::from_inner(inner);
                let result = log
                    .wait_durable(job.ticket)
                    .and_then(|()| match job.hard_state {
                        Some(hs) => log.set_hard_state(hs),
                        None => Ok(()),
                    })
                    .map_err(|e| StorageError::Other(e.to_string()));
                // Let go of the store before answering: a caller that drops its last handle
                // once the write resolves must find the directory unlocked.
                drop(log);
                let _ = job.done.send(result);
            }
        })?;
    Ok(tx)
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
        let job = Job {
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
        result
            .map(|r| {
                r.unwrap_or_else(|_| Err(StorageError::Other("the sync thread stopped".into())))
            })
            .boxed()
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
}
