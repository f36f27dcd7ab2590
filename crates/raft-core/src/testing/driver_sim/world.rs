//! The simulated world the drivers run in: the network, the disks and the events the
//! simulator will deliver (messages, ticks, disk completions), all under one seeded [`Rng`].
//!
//! [`SimTransport`] and [`SimLog`] are the driver's `Transport` and `LogStore`; they schedule
//! events here, and the simulator's loop delivers them when virtual time reaches them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use raftline_proto::{Entry, HardState, LogIndex, Membership, Message, MessageBody, NodeId, Term};

use super::executor::Clock;
use crate::driver::{LogStore, Transport};
use crate::storage::{InitialState, MemStorage, Storage, StorageMut};
use crate::{Rng, StorageError};

/// Something the simulator does when virtual time reaches it.
#[derive(Debug)]
pub enum Event {
    /// A message arrives at `message.to` (lost if it is down).
    Deliver(Message),
    /// A node's clock ticks.
    Tick(NodeId),
    /// The oldest write of a node's disk becomes durable (if the node did not crash since:
    /// `.1` is its incarnation).
    DiskDone(NodeId, u64),
    /// A crashed node restarts.
    Restart(NodeId),
    /// Every partition heals.
    Heal,
    /// Once per tick: the simulator may start faults.
    Faults,
}

/// The network's fault rates.
#[derive(Clone, Debug)]
pub struct NetFaults {
    /// Probability that a message is lost.
    pub drop_rate: f64,
    /// Probability that a message is delivered twice.
    pub duplicate_rate: f64,
    /// Latencies are uniform in `1..=latency_units_max`.
    pub latency_units_max: u64,
    /// Probability that a snapshot chunk is corrupted in transit.
    pub chunk_corrupt_rate: f64,
}

/// Network, disks and event queue.
pub struct World {
    /// Every random choice of the run outside the executor.
    pub rng: Rng,
    clock: Clock,
    seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    /// Directed links that lose every message.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// Faults are off (the liveness phase).
    pub quiet: bool,
    /// The network's fault rates.
    pub net: NetFaults,
    /// A disk write takes 1 to this many units.
    pub disk_units_max: u64,
    /// Messages sent.
    pub sent: u64,
    /// Messages lost to drops and partitions.
    pub lost: u64,
}

/// The world, shared by the simulator and every simulated component.
pub type SharedWorld = Arc<Mutex<World>>;

impl World {
    /// A world with no events yet.
    pub fn new(seed: u64, clock: Clock, net: NetFaults, disk_units_max: u64) -> World {
        World {
            rng: Rng::new(seed),
            clock,
            seq: 0,
            events: BTreeMap::new(),
            blocked: BTreeSet::new(),
            quiet: false,
            net,
            disk_units_max,
            sent: 0,
            lost: 0,
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Schedules `event` `delay` units from now.
    pub fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        let at = self.clock.now() + delay;
        self.events.insert((at, self.seq), event);
    }

    /// When the next event is due.
    pub fn next_event(&self) -> Option<u64> {
        self.events.keys().next().map(|&(at, _)| at)
    }

    /// Removes and returns the next event if it is due at or before `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<Event> {
        let (&key, _) = self.events.first_key_value()?;
        if key.0 > now {
            return None;
        }
        self.events.remove(&key)
    }

    /// Sends one message through the faulty network.
    fn send(&mut self, mut m: Message) {
        self.sent += 1;
        let faulty = !self.quiet;
        if self.blocked.contains(&(m.from, m.to)) || (faulty && self.rng.chance(self.net.drop_rate))
        {
            self.lost += 1;
            return;
        }
        if let MessageBody::InstallSnapshot(req) = &mut m.body {
            if faulty && !req.data.is_empty() && self.rng.chance(self.net.chunk_corrupt_rate) {
                let mut data = req.data.to_vec();
                let at = self.rng.below(data.len() as u64) as usize;
                data[at] ^= 0x01;
                req.data = Bytes::from(data);
            }
        }
        if faulty && self.rng.chance(self.net.duplicate_rate) {
            let delay = 1 + self.rng.below(self.net.latency_units_max);
            self.schedule(delay, Event::Deliver(m.clone()));
        }
        let delay = 1 + self.rng.below(self.net.latency_units_max);
        self.schedule(delay, Event::Deliver(m));
    }
}

/// A node's [`Transport`]: every message goes through the world's network.
#[derive(Clone)]
pub struct SimTransport {
    /// The world.
    pub world: SharedWorld,
}

impl Transport for SimTransport {
    fn send(&self, messages: Vec<Message>) {
        let mut world = self.world.lock();
        for m in messages {
            world.send(m);
        }
    }
}

/// One write the disk has not finished.
enum DiskOp {
    Persist(Vec<Entry>, Option<HardState>),
    Compact(LogIndex),
    Install(LogIndex, Term, Membership),
}

impl DiskOp {
    fn apply(&self, store: &mut MemStorage) -> Result<(), StorageError> {
        match self {
            DiskOp::Persist(entries, hard_state) => {
                if !entries.is_empty() {
                    store.append(entries)?;
                }
                match hard_state {
                    Some(hs) => store.set_hard_state(*hs),
                    None => Ok(()),
                }
            }
            DiskOp::Compact(up_to) => store.compact(*up_to),
            DiskOp::Install(index, term, m) => store.install_snapshot(*index, *term, m),
        }
    }
}

/// Resolves a write's future.
type Done = oneshot::Sender<Result<(), StorageError>>;

/// A node's disk: what reads see, what survives a crash, and the writes in between.
pub struct Disk {
    /// What reads see: every write handed to the disk, durable or not.
    written: MemStorage,
    /// What a crash leaves.
    durable: MemStorage,
    /// Writes not durable yet, in order, each with the time its sync completes.
    pending: VecDeque<(DiskOp, u64, Done)>,
    /// The last sync (group commit): when it starts and ends. Writes that arrive before it
    /// starts join it; later ones start the next sync once it ends.
    last_sync: (u64, u64),
    /// Bumped at each crash; completions of an earlier life are ignored.
    pub incarnation: u64,
    /// Every entry handed to the disk, with the term of the entry before it, for the
    /// checker's Log Matching (drained by the simulator after each step).
    pub appended: Vec<(Entry, Term)>,
}

impl Disk {
    /// A disk holding an empty log of a cluster started as `membership`.
    pub fn new(membership: &Membership) -> Disk {
        let durable = MemStorage::new(membership.clone());
        Disk {
            written: durable.deep_clone(),
            durable,
            pending: VecDeque::new(),
            last_sync: (0, 0),
            incarnation: 0,
            appended: Vec::new(),
        }
    }

    /// What survives a crash.
    pub fn durable(&self) -> &MemStorage {
        &self.durable
    }

    /// What the node's reads see (for the checker's view of its log).
    pub fn written(&self) -> &MemStorage {
        &self.written
    }

    /// A crash: unfinished writes are lost; reads see the durable state again.
    pub fn crash(&mut self) {
        self.pending.clear();
        self.written = self.durable.deep_clone();
        self.last_sync = (0, 0);
        self.incarnation += 1;
    }

    /// Every write whose sync completes by `now` becomes durable, in order, and its future
    /// resolves.
    pub fn complete(&mut self, now: u64) {
        while self.pending.front().is_some_and(|(_, at, _)| *at <= now) {
            let (op, _, done) = self.pending.pop_front().expect("checked");
            let result = op.apply(&mut self.durable);
            let _ = done.send(result);
        }
    }
}

/// A shared disk.
pub type SharedDisk = Arc<Mutex<Disk>>;

/// A node's [`LogStore`]: reads see every write at once; a write's future resolves when the
/// simulated disk finishes it, in order, after a random latency.
#[derive(Clone)]
pub struct SimLog {
    /// The node.
    pub id: NodeId,
    /// Its disk.
    pub disk: SharedDisk,
    /// The world (for latencies and completion events).
    pub world: SharedWorld,
}

impl SimLog {
    fn submit(&self, op: DiskOp) -> BoxFuture<'static, Result<(), StorageError>> {
        let mut disk = self.disk.lock();
        if let DiskOp::Persist(entries, _) = &op {
            if let Some(first) = entries.first() {
                let before = disk.written.term(first.index.prev()).unwrap_or(Term(0));
                let prev = std::iter::once(before).chain(entries.iter().map(|e| e.term));
                let seen: Vec<(Entry, Term)> = entries.iter().cloned().zip(prev).collect();
                disk.appended.extend(seen);
            }
        }
        if let Err(e) = op.apply(&mut disk.written) {
            return futures::future::ready(Err(e)).boxed();
        }
        let (tx, rx) = oneshot::channel();
        let mut world = self.world.lock();
        let now = world.now();
        let (start, end) = disk.last_sync;
        let done_at = if now < start {
            end // the next sync has not started: this write joins it
        } else {
            let max = world.disk_units_max.max(1);
            let start = now.max(end);
            let end = start + 1 + world.rng.below(max);
            disk.last_sync = (start, end);
            world.schedule(end - now, Event::DiskDone(self.id, disk.incarnation));
            end
        };
        disk.pending.push_back((op, done_at, tx));
        rx.map(|r| r.unwrap_or_else(|_| Err(StorageError::other("the node crashed"))))
            .boxed()
    }
}

impl Storage for SimLog {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        self.disk.lock().written.initial_state()
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        self.disk.lock().written.entries(low, high, bytes_max)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.disk.lock().written.term(index)
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        self.disk.lock().written.first_index()
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        self.disk.lock().written.last_index()
    }
}

impl LogStore for SimLog {
    fn persist(
        &self,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        self.submit(DiskOp::Persist(entries, hard_state))
    }

    fn compact(&self, up_to: LogIndex) -> BoxFuture<'static, Result<(), StorageError>> {
        self.submit(DiskOp::Compact(up_to))
    }

    fn install_snapshot(
        &self,
        index: LogIndex,
        term: Term,
        membership: Membership,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        self.submit(DiskOp::Install(index, term, membership))
    }
}
