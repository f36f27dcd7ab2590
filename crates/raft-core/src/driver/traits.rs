//! The boundary between the driver and the outside world: what a transport, a log store and a
//! state machine must do. Swap any of them without touching the core.

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use raft_proto::{Entry, HardState, LogIndex, Message};

use crate::error::StorageError;
use crate::storage::{Storage, StorageMut};

/// Sends messages to peers.
///
/// Inbound messages reach the node through the stream given to
/// [`Node::new`](crate::driver::Node::new); a transport typically owns the sending half of a
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
}

/// The replicated state machine: applies committed commands in log order.
#[async_trait]
pub trait StateMachine: Send + 'static {
    /// What applying a command returns to the client that proposed it.
    type Response: Send + 'static;

    /// Applies the command committed at `index`. Must be deterministic: every node applies the
    /// same commands in the same order and must reach the same state.
    async fn apply(&mut self, index: LogIndex, command: &Bytes) -> Self::Response;
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
}
