//! Your own parts for the async driver (`raftline_core::driver::Node`): a `Transport` over
//! in-process channels and a `LogStore` that keeps the log in a `Vec` and writes it from a
//! thread of its own, as a disk store would. The comments on each say what contract it keeps.
//!
//! The program first runs the storage conformance suite against the store, then runs three
//! nodes in one process (on tokio) that replicate a few commands, and checks that every node
//! applied them in the same order.
//!
//! `cargo run -p raftline-examples --example custom_parts`

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::{FutureExt, StreamExt};
use parking_lot::{Mutex, RwLock};
use raftline_core::driver::{
    DriverConfig, LogStore, Node, NodeHandle, SnapshotSink, SnapshotSource, StateMachine, Transport,
};
use raftline_core::testing::{conformance, MemSnapshotStore};
use raftline_core::{limit_bytes, Config, InitialState, Storage, StorageError, StorageMut};
use raftline_proto::{Entry, HardState, LogIndex, Membership, Message, NodeId, Term};
use tokio::time::{interval, timeout};
use tokio_stream::wrappers::IntervalStream;

// ---------------------------------------------------------------------------------------
// The transport
// ---------------------------------------------------------------------------------------

/// The in-process network: every node's inbox, a bounded channel. To show that losing
/// messages is safe, it loses one in ten.
#[derive(Clone, Default)]
struct Switchboard {
    inboxes: Arc<Mutex<BTreeMap<NodeId, mpsc::Sender<Message>>>>,
    /// Messages sent and lost.
    counts: Arc<Mutex<(u64, u64)>>,
}

impl Switchboard {
    /// Plugs node `id` in: its transport, and the stream of the messages sent to it (which
    /// the driver takes as its `inbound` stream).
    fn connect(&self, id: NodeId) -> (ChannelTransport, mpsc::Receiver<Message>) {
        let (inbox, inbound) = mpsc::channel(1024);
        self.inboxes.lock().insert(id, inbox);
        let transport = ChannelTransport {
            network: self.clone(),
        };
        (transport, inbound)
    }
}

/// One node's way out to the others.
struct ChannelTransport {
    network: Switchboard,
}

impl Transport for ChannelTransport {
    /// The contract: hand the messages over and return at once, never wait (the driver calls
    /// this from its loop: a wait here would stop its ticks and heartbeats). Each message names
    /// its receiver in `to`. A message that cannot be queued (the inbox is full, the peer is
    /// gone) is dropped: Raft copes with lost, duplicated and reordered messages and resends
    /// what matters. It does not cope with corrupted ones: a network transport checksums them.
    fn send(&self, messages: Vec<Message>) {
        let mut inboxes = self.network.inboxes.lock();
        let mut counts = self.network.counts.lock();
        for message in messages {
            counts.0 += 1;
            if counts.0.is_multiple_of(10) {
                counts.1 += 1;
                continue; // lost
            }
            if let Some(inbox) = inboxes.get_mut(&message.to) {
                let _ = inbox.try_send(message); // full or closed: dropped
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The log store
// ---------------------------------------------------------------------------------------

/// The log as the node reads it.
#[derive(Default)]
struct Log {
    hard_state: HardState,
    membership: Membership,
    /// The index and term of the last entry compacted away ((0, 0) when none was).
    base: (LogIndex, Term),
    /// The entries after `base`: `entries[i].index == base.0 + 1 + i`.
    entries: Vec<Entry>,
}

/// A write, queued in call order.
enum Write {
    Persist(Vec<Entry>, Option<HardState>),
    Compact(LogIndex),
    InstallSnapshot(LogIndex, Term, Membership),
}

type Done = oneshot::Sender<Result<(), StorageError>>;

/// A log store whose writes go through a queue to a writer thread, one after the other, as
/// they would to a disk. Clones share the store (the driver keeps one, the core another).
#[derive(Clone)]
struct QueuedLog {
    log: Arc<RwLock<Log>>,
    writes: std::sync::mpsc::Sender<(Write, Done)>,
}

impl QueuedLog {
    /// An empty store whose cluster is `membership` (what a new node starts from).
    fn new(membership: Membership) -> QueuedLog {
        let log = Arc::new(RwLock::new(Log {
            membership,
            ..Log::default()
        }));
        let (writes, queue) = std::sync::mpsc::channel::<(Write, Done)>();
        let writer_log = Arc::clone(&log);
        // The writer: one write at a time, in queue order; it ends when the store is dropped.
        std::thread::spawn(move || {
            for (write, done) in queue {
                let result = writer_log.write().apply(write);
                // A disk store would write its file here and fsync it before answering.
                let _ = done.send(result);
            }
        });
        QueuedLog { log, writes }
    }

    /// Queues `write` now, in the caller's order; the future resolves once it is done.
    fn submit(&self, write: Write) -> BoxFuture<'static, Result<(), StorageError>> {
        let (done, result) = oneshot::channel();
        let queued = self.writes.send((write, done));
        let gone = || StorageError::other("the writer thread stopped");
        async move {
            queued.map_err(|_| gone())?;
            result.await.map_err(|_| gone())?
        }
        .boxed()
    }
}

impl Log {
    fn last_index(&self) -> LogIndex {
        self.base.0.plus(self.entries.len() as u64)
    }

    /// The position of `index` in `entries` (`index` must be past `base`).
    fn position(&self, index: LogIndex) -> usize {
        (index.0 - self.base.0 .0 - 1) as usize
    }

    fn apply(&mut self, write: Write) -> Result<(), StorageError> {
        match write {
            Write::Persist(entries, hard_state) => {
                // Entries first: the hard state's commit index may name them.
                if let Some(first) = entries.first() {
                    if first.index <= self.base.0 || first.index > self.last_index().next() {
                        return Err(StorageError::other(format!("append at {}", first.index)));
                    }
                    // Raft's conflict rule: the entries replace the log from their first index.
                    let keep = self.position(first.index);
                    self.entries.truncate(keep);
                    self.entries.extend(entries);
                }
                if let Some(hard_state) = hard_state {
                    self.hard_state = hard_state;
                }
            }
            Write::Compact(up_to) => {
                if up_to > self.base.0 && up_to <= self.last_index() {
                    let cut = self.position(up_to) + 1;
                    self.base = (up_to, self.entries[cut - 1].term);
                    self.entries.drain(..cut);
                }
            }
            Write::InstallSnapshot(index, term, membership) => {
                // A log that holds the snapshot's last entry (or is compacted past it) agrees
                // with the snapshot and stays; otherwise the log restarts after it.
                let holds = index <= self.base.0
                    || (index <= self.last_index()
                        && self.entries[self.position(index)].term == term);
                if !holds {
                    self.entries.clear();
                    self.base = (index, term);
                    self.membership = membership;
                }
            }
        }
        Ok(())
    }
}

/// Reads. The contract: they reflect every write whose future has resolved (here the writer
/// updates the log before it answers).
impl Storage for QueuedLog {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        let log = self.log.read();
        Ok(InitialState {
            hard_state: log.hard_state,
            membership: log.membership.clone(),
        })
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let log = self.log.read();
        if low <= log.base.0 {
            return Err(StorageError::Compacted(low));
        }
        if high > log.last_index().next() {
            return Err(StorageError::Unavailable(high.prev()));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let range = &log.entries[log.position(low)..log.position(high)];
        Ok(limit_bytes(range, bytes_max).to_vec()) // at least one entry, then up to bytes_max
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let log = self.log.read();
        match index {
            i if i < log.base.0 => Err(StorageError::Compacted(i)),
            i if i == log.base.0 => Ok(log.base.1),
            i if i > log.last_index() => Err(StorageError::Unavailable(i)),
            i => Ok(log.entries[log.position(i)].term),
        }
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.log.read().base.0.next())
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.log.read().last_index())
    }
}

/// The driver's writes. The contract: each call queues its write before it returns (the order
/// of calls is the order of writes: several persists may be in flight, and compactions and
/// snapshot installs must not overtake them or be overtaken; one queue does it), and its
/// future resolves once the write is durable. A failed write is fatal: the node stops.
impl LogStore for QueuedLog {
    fn persist(
        &self,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        self.submit(Write::Persist(entries, hard_state))
    }

    fn compact(&self, up_to: LogIndex) -> BoxFuture<'static, Result<(), StorageError>> {
        self.submit(Write::Compact(up_to))
    }

    fn install_snapshot(
        &self,
        index: LogIndex,
        term: Term,
        membership: Membership,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        self.submit(Write::InstallSnapshot(index, term, membership))
    }
}

/// Synchronous writes, durable when they return: what the conformance suite (and a
/// hand-driven `RawNode`) writes through. Here each one waits for its queued write.
impl StorageMut for QueuedLog {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        futures::executor::block_on(self.persist(entries.to_vec(), None))
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        futures::executor::block_on(self.persist(Vec::new(), Some(hard_state)))
    }

    fn compact(&mut self, up_to: LogIndex) -> Result<(), StorageError> {
        futures::executor::block_on(LogStore::compact(self, up_to))
    }

    fn install_snapshot(
        &mut self,
        index: LogIndex,
        term: Term,
        membership: &Membership,
    ) -> Result<(), StorageError> {
        let write = LogStore::install_snapshot(self, index, term, membership.clone());
        futures::executor::block_on(write)
    }
}

// ---------------------------------------------------------------------------------------
// A state machine, and three nodes
// ---------------------------------------------------------------------------------------

/// The state machine: the list of commands applied, shared with `main` to check it.
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl StateMachine for Journal {
    type Response = u64; // how many commands this node applied so far

    async fn apply(&mut self, _index: LogIndex, command: &Bytes) -> u64 {
        let mut list = self.0.lock();
        list.push(String::from_utf8_lossy(command).into_owned());
        list.len() as u64
    }

    async fn snapshot(&mut self, sink: &mut SnapshotSink<'_>) -> std::io::Result<()> {
        let text = self.0.lock().join("\n");
        sink.write_all(text.as_bytes()).await
    }

    async fn restore(&mut self, source: &mut SnapshotSource<'_>) -> std::io::Result<()> {
        let mut text = String::new();
        source.read_to_string(&mut text).await?;
        *self.0.lock() = text.lines().map(str::to_string).collect();
        Ok(())
    }
}

const COMMANDS: [&str; 4] = ["create /a", "write /a hello", "rename /a /b", "delete /b"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Any store must pass the suite; in your crate, make this a #[test].
    conformance::run_all(QueuedLog::new);
    println!("QueuedLog passes raftline_core::testing::conformance");
    timeout(Duration::from_secs(10), replicate())
        .await
        .map_err(|_| "three nodes did not replicate the commands within 10 s")?
}

/// Starts three nodes, proposes `COMMANDS` on the leader, and checks that every node applied
/// them in order.
async fn replicate() -> Result<(), Box<dyn Error>> {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let network = Switchboard::default();
    let mut nodes: Vec<(NodeHandle<u64>, Journal)> = Vec::new();
    for id in ids {
        let (transport, inbound) = network.connect(id);
        let log = QueuedLog::new(Membership::with_voters(ids));
        let journal = Journal::default();
        let snapshots = MemSnapshotStore::new(); // raftline-snapshot keeps them on disk
        let driver = DriverConfig::default();
        let (node, handle) = Node::new(
            Config::new(id),
            driver,
            log,
            journal.clone(),
            snapshots,
            transport,
        )
        .await?;
        // A tick every 10 ms: an election timeout (10 ticks) is 100 to 200 ms.
        let ticks = IntervalStream::new(interval(Duration::from_millis(10)));
        tokio::spawn(node.run(inbound, ticks.map(|_| ()).fuse()));
        nodes.push((handle, journal));
    }
    let leader = nodes[0].0.watch().leader().await?;
    println!("{leader} leads");
    let leader = &nodes[ids
        .iter()
        .position(|&id| id == leader)
        .ok_or("unknown leader")?]
    .0;
    for command in COMMANDS {
        let applied = leader
            .propose(Bytes::from_static(command.as_bytes()))
            .await?;
        println!("{command:?} committed and applied (command #{applied} on the leader)");
    }
    // A read point after every write: the leader applied it; wait until each node did.
    let index = leader.read_barrier().await?;
    for (handle, journal) in &nodes {
        handle.watch().applied(index).await?;
        let applied = journal.0.lock().clone();
        println!("{} applied {applied:?}", handle.status().id);
        if applied != COMMANDS {
            return Err(format!("{} applied {applied:?}", handle.status().id).into());
        }
    }
    let (sent, lost) = *network.counts.lock();
    println!("the network lost {lost} of {sent} messages");
    for (handle, _) in &nodes {
        handle.shutdown().await;
    }
    Ok(())
}
