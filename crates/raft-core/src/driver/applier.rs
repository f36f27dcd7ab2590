//! The applier: the task that owns the state machine. It applies committed entries, takes
//! snapshots and restores received ones, in the order the driver queues the work, while the
//! driver's Ready loop goes on ticking, heartbeating and appending.
//!
//! A snapshot is taken between two applies, so the state it captures is exactly the state at
//! the applied index it is labelled with; entries queued behind it wait, ticks do not.

use std::sync::Arc;

use futures::channel::mpsc;
use futures::StreamExt;
use raftline_proto::{Entry, EntryPayload, LogIndex, Membership, SnapshotMeta, Term};

use super::traits::{SnapshotStore, StateMachine};
use crate::error::SnapshotError;

/// Work the driver queues for the applier, done in order.
pub(crate) enum Work {
    /// Apply these committed entries.
    Apply(Vec<Entry>),
    /// Snapshot the state as of the last applied entry.
    Snapshot,
    /// Replace the state with this received snapshot.
    Restore(SnapshotMeta),
}

/// What the applier reports back, one report per [`Work`].
pub(crate) enum Done<R> {
    /// Entries applied: each one's index and term, with the response of a command.
    Applied(Vec<(LogIndex, Term, Option<R>)>),
    /// A snapshot was taken (`true`), or the newest one already covers the applied index
    /// (`false`); or why not.
    Snapshot(Result<(SnapshotMeta, bool), SnapshotError>),
    /// A received snapshot was restored (or the error that stops the node).
    Restored(Result<SnapshotMeta, (SnapshotMeta, SnapshotError)>),
}

/// The state machine and what it has applied.
pub(crate) struct Applier<M: StateMachine, P> {
    pub(crate) state_machine: M,
    pub(crate) snapshots: Arc<P>,
    /// The last applied index, its term and the configuration in force there: what a
    /// snapshot taken now covers.
    pub(crate) applied: LogIndex,
    pub(crate) applied_term: Term,
    pub(crate) applied_membership: Membership,
}

impl<M: StateMachine, P: SnapshotStore> Applier<M, P> {
    /// Runs until the driver drops its end of the work queue.
    pub(crate) async fn run(
        mut self,
        mut work: mpsc::UnboundedReceiver<Work>,
        done: mpsc::UnboundedSender<Done<M::Response>>,
    ) {
        while let Some(item) = work.next().await {
            let report = match item {
                Work::Apply(entries) => Done::Applied(self.apply(entries).await),
                Work::Snapshot => Done::Snapshot(self.snapshot().await),
                Work::Restore(meta) => Done::Restored(self.restore(meta).await),
            };
            if done.unbounded_send(report).is_err() {
                break;
            }
        }
    }

    async fn apply(&mut self, entries: Vec<Entry>) -> Vec<(LogIndex, Term, Option<M::Response>)> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            // The driver queues each index once, and none a queued restore covers.
            assert!(
                entry.index > self.applied,
                "State Machine Safety: applying {} after {} was applied",
                entry.index,
                self.applied
            );
            let response = match &entry.payload {
                EntryPayload::Normal(command) => {
                    Some(self.state_machine.apply(entry.index, command).await)
                }
                EntryPayload::Membership(m) => {
                    self.applied_membership = m.clone();
                    None
                }
                EntryPayload::Noop => None,
            };
            self.applied = entry.index;
            self.applied_term = entry.term;
            out.push((entry.index, entry.term, response));
        }
        out
    }

    /// Snapshots the state machine at the applied index and makes it the newest snapshot.
    async fn snapshot(&mut self) -> Result<(SnapshotMeta, bool), SnapshotError> {
        if let Some(meta) = self.snapshots.latest() {
            if meta.last_index >= self.applied {
                return Ok((meta, false));
            }
        }
        if self.applied == LogIndex(0) {
            return Err(SnapshotError::NothingApplied);
        }
        let mut writer = self.snapshots.begin().await?;
        self.state_machine.snapshot(&mut writer).await?;
        let membership = self.applied_membership.clone();
        let meta = writer
            .finish(self.applied, self.applied_term, membership)
            .await?;
        Ok((meta, true))
    }

    /// Restores a received snapshot; on failure, names it beside the error.
    async fn restore(
        &mut self,
        meta: SnapshotMeta,
    ) -> Result<SnapshotMeta, (SnapshotMeta, SnapshotError)> {
        let restored = async {
            let mut source = self.snapshots.open(&meta).await?;
            self.state_machine.restore(&mut source).await?;
            Ok::<_, SnapshotError>(())
        };
        if let Err(e) = restored.await {
            return Err((meta, e));
        }
        self.applied = meta.last_index;
        self.applied_term = meta.last_term;
        self.applied_membership = meta.membership.clone();
        Ok(meta)
    }
}
