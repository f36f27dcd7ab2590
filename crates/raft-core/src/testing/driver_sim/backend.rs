//! Where simulated servers keep their logs: the [`LogBackend`] trait, and [`MemBackend`]
//! (a [`SimLog`] over an in-memory [`Disk`] per server).
//!
//! Another crate plugs in its own log store (raftline-log does, with its real async path)
//! by implementing [`LogBackend`]; the simulator only goes through this trait.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use raftline_proto::{Entry, LogIndex, Membership, NodeId, Term};

use super::world::{Disk, SharedDisk, SharedWorld, SimLog};
use crate::driver::LogStore;
use crate::{Rng, Storage};

/// The logs of every simulated server.
pub trait LogBackend: 'static {
    /// A server's log store: what its driver runs on.
    type Log: LogStore + Clone;

    /// Opens server `id`'s log, creating it with `membership` the first time. After a crash
    /// this runs the store's recovery over what the crash left. Writes schedule their
    /// completion in `world` ([`Event::DiskDone`](super::Event::DiskDone)). An error (the
    /// store does not recover, or lost a durable write) fails the run.
    fn open(
        &mut self,
        id: NodeId,
        membership: &Membership,
        world: &SharedWorld,
    ) -> Result<Self::Log, String>;

    /// Server `id` crashed (its driver and every handle it had are gone): lose what was not
    /// durable. `rng` may choose how (which unsynced writes survive, torn sectors).
    fn crash(&mut self, id: NodeId, rng: &mut Rng);

    /// A [`DiskDone`](super::Event::DiskDone) event for `id` came due at `now`: complete the
    /// writes whose sync is done (if `incarnation` is still current).
    fn sync_due(&mut self, id: NodeId, incarnation: u64, now: u64);

    /// The term of the durable entry at `index` (what survives a crash), if any.
    fn durable_term(&self, id: NodeId, index: LogIndex) -> Option<Term>;

    /// The checker's view of server `id`'s log: every write handed to the store, durable or
    /// not (what the node takes for its log), as its first index, last index and the term at
    /// `index`. By default, what reads through `log` show (right for a store whose reads show
    /// writes at once, like [`SimLog`]); a store whose reads show only durable entries keeps
    /// a copy of what was written and answers from it.
    fn written(&self, id: NodeId, log: &Self::Log, index: LogIndex) -> WrittenView {
        let _ = id;
        WrittenView {
            first: log.first_index().unwrap_or(LogIndex(1)),
            last: log.last_index().unwrap_or(LogIndex(0)),
            term: log.term(index).ok(),
        }
    }

    /// Every entry handed to `id`'s log since the last call, with the term of the entry
    /// before it (for the checker's Log Matching).
    fn take_appended(&mut self, id: NodeId) -> Vec<(Entry, Term)>;
}

/// What [`LogBackend::written`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrittenView {
    /// The first index the log holds.
    pub first: LogIndex,
    /// The last index written.
    pub last: LogIndex,
    /// The term at the index asked about, if the log holds it (or it is the compaction point).
    pub term: Option<Term>,
}

/// In-memory logs: [`SimLog`]s over [`Disk`]s with group commit.
#[derive(Default)]
pub struct MemBackend {
    disks: BTreeMap<NodeId, SharedDisk>,
}

impl LogBackend for MemBackend {
    type Log = SimLog;

    fn open(
        &mut self,
        id: NodeId,
        membership: &Membership,
        world: &SharedWorld,
    ) -> Result<SimLog, String> {
        let disk = self
            .disks
            .entry(id)
            .or_insert_with(|| Arc::new(Mutex::new(Disk::new(membership))));
        Ok(SimLog {
            id,
            disk: Arc::clone(disk),
            world: Arc::clone(world),
        })
    }

    fn crash(&mut self, id: NodeId, _: &mut Rng) {
        if let Some(disk) = self.disks.get(&id) {
            disk.lock().crash();
        }
    }

    fn sync_due(&mut self, id: NodeId, incarnation: u64, now: u64) {
        if let Some(disk) = self.disks.get(&id) {
            let mut disk = disk.lock();
            if disk.incarnation == incarnation {
                disk.complete(now);
            }
        }
    }

    fn durable_term(&self, id: NodeId, index: LogIndex) -> Option<Term> {
        let disk = self.disks.get(&id)?.lock();
        disk.durable().term(index).ok()
    }

    fn take_appended(&mut self, id: NodeId) -> Vec<(Entry, Term)> {
        self.disks
            .get(&id)
            .map(|d| std::mem::take(&mut d.lock().appended))
            .unwrap_or_default()
    }
}
