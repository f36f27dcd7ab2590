//! The boundary between the driver and the outside world: what a transport, a log store and a
//! state machine must do. Swap any of them without touching the core.

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::io::{AsyncRead, AsyncWrite};
use raftline_proto::{Entry, HardState, LogIndex, Membership, Message, SnapshotMeta, Term};

use crate::error::{SnapshotError, StorageError};
use crate::storage::{Storage, StorageMut};

/// Sends messages to peers.
///
/// Inbound messages reach the node through the `inbound` stream given to
/// [`Node::run`](crate::driver::Node::run) or [`Node::into_tasks`](crate::driver::Node::into_tasks),
/// not through this trait; a transport typically owns the sending half of a
/// bounded channel and pushes every message it decodes into it.
pub trait Transport: Send + Sync + 'static {
    /// Hands `messages` (each names its peer in `to`) to the network and returns at once:
    /// it must not wait for a connection or a write. A transport keeps a bounded queue per
    /// peer and drops messages it cannot queue; Raft retransmits what matters.
    fn send(&self, messages: Vec<Message>);
}

/// A durable log the driver can write without blocking its task.
///
/// Reads go through [`Storage`]. They must reflect every write whose future has resolved.
pub trait LogStore: Storage + Send + Sync + 'static {
    /// Persists `entries` (Raft's conflict rule: they replace the log from their first index)
    /// and then `hard_state`. The order of calls is the order of the writes: the call itself
    /// must enqueue the write before returning. The returned future resolves once both are
    /// durable; an error is fatal for the node.
    fn persist(
        &self,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    ) -> BoxFuture<'static, Result<(), StorageError>>;

    /// Discards the entries up to `up_to` ([`StorageMut::compact`]), after every write
    /// enqueued before it.
    fn compact(&self, up_to: LogIndex) -> BoxFuture<'static, Result<(), StorageError>>;

    /// Makes the log continue after an installed snapshot
    /// ([`StorageMut::install_snapshot`]), after every write enqueued before it and before
    /// every write enqueued after it.
    fn install_snapshot(
        &self,
        index: LogIndex,
        term: Term,
        membership: Membership,
    ) -> BoxFuture<'static, Result<(), StorageError>>;
}

/// A byte sink a state machine writes its snapshot into.
pub type SnapshotSink<'a> = dyn AsyncWrite + Send + Unpin + 'a;

/// A byte source a state machine restores its snapshot from.
pub type SnapshotSource<'a> = dyn AsyncRead + Send + Unpin + 'a;

/// The replicated state machine: applies committed commands in log order, and saves and
/// restores its whole state as a snapshot.
#[async_trait]
pub trait StateMachine: Send + 'static {
    /// What applying a command returns to the client that proposed it. It travels from the
    /// leader to a follower that forwarded the command (encoded with postcard), so it is
    /// serializable.
    type Response: serde::Serialize + serde::de::DeserializeOwned + Send + 'static;

    /// Applies the command committed at `index`. Must be deterministic: every node applies the
    /// same commands in the same order and must reach the same state.
    async fn apply(&mut self, index: LogIndex, command: &Bytes) -> Self::Response;

    /// Writes the state as of the last applied entry into `sink`, as a stream: the snapshot
    /// need not fit in memory. The same state should give the same bytes on every node (then
    /// a transfer interrupted by a leader change resumes on the new leader's copy).
    async fn snapshot(&mut self, sink: &mut SnapshotSink<'_>) -> std::io::Result<()>;

    /// Replaces the whole state with the snapshot read from `source` (written by
    /// [`snapshot`](Self::snapshot) on some node). An error leaves the node unable to go on:
    /// the driver stops.
    async fn restore(&mut self, source: &mut SnapshotSource<'_>) -> std::io::Result<()>;
}

/// Where a node keeps snapshots: the ones its state machine writes and the ones it receives
/// from a leader, chunk by chunk.
///
/// A snapshot is durable and complete before it becomes [`latest`](Self::latest); a crash
/// never leaves a half-written snapshot that a restart would take for a complete one.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The newest complete snapshot, if any.
    fn latest(&self) -> Option<SnapshotMeta>;

    /// Starts a snapshot of this node's state: the state machine writes into the returned
    /// writer, then [`SnapshotWriter::finish`] makes it durable and the latest.
    async fn begin(&self) -> Result<Box<dyn SnapshotWriter>, SnapshotError>;

    /// Opens snapshot `meta`'s data for reading (to restore a state machine from it).
    async fn open(
        &self,
        meta: &SnapshotMeta,
    ) -> Result<Box<SnapshotSource<'static>>, SnapshotError>;

    /// Reads up to `len` bytes of snapshot `meta` from `offset` (fewer only at its end).
    async fn read_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, SnapshotError>;

    /// Writes a chunk received from a leader at `offset` into the partial copy of `meta`. A
    /// chunk of another snapshot discards the partial copy first. The chunk need not be
    /// durable yet: a receiver that crashes starts the transfer over.
    async fn write_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SnapshotError>;

    /// Every chunk of `meta` was written: makes the partial copy durable, checks its size and
    /// whole checksum against `meta`, and makes it the latest snapshot (older ones go).
    /// [`SnapshotError::Corrupt`] if it does not check out; the partial copy is discarded.
    async fn finish_received(&self, meta: &SnapshotMeta) -> Result<(), SnapshotError>;
}

/// A snapshot being written by a state machine.
#[async_trait]
pub trait SnapshotWriter: AsyncWrite + Send + Unpin {
    /// The state machine wrote everything: makes the data durable as the snapshot of the
    /// state up to (`last_index`, `last_term`) with `membership` in force there, makes it
    /// the latest (older snapshots go), and returns its metadata. A writer dropped without
    /// `finish` leaves nothing behind that counts as a snapshot.
    async fn finish(
        self: Box<Self>,
        last_index: LogIndex,
        last_term: Term,
        membership: Membership,
    ) -> Result<SnapshotMeta, SnapshotError>;
}

/// [`MemStorage`](crate::MemStorage) persists synchronously: its future is already resolved.
impl LogStore for crate::MemStorage {
    fn persist(
        &self,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let mut store = self.clone();
        let result = store.append(&entries).and_then(|()| match hard_state {
            Some(hs) => store.set_hard_state(hs),
            None => Ok(()),
        });
        Box::pin(futures::future::ready(result))
    }

    fn compact(&self, up_to: LogIndex) -> BoxFuture<'static, Result<(), StorageError>> {
        let result = StorageMut::compact(&mut self.clone(), up_to);
        Box::pin(futures::future::ready(result))
    }

    fn install_snapshot(
        &self,
        index: LogIndex,
        term: Term,
        membership: Membership,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let result = StorageMut::install_snapshot(&mut self.clone(), index, term, &membership);
        Box::pin(futures::future::ready(result))
    }
}
