//! [`Node`] and [`NodeHandle`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::stream::{FusedStream, FuturesOrdered};
use futures::{FutureExt, SinkExt, StreamExt};
use parking_lot::Mutex;
use raft_proto::{EntryPayload, LogIndex, Message, NodeId, Term};

use super::traits::{LogStore, StateMachine, Transport};
use crate::error::{Error, StorageError};
use crate::node::{PersistAck, RawNode};
use crate::raft::Role;
use crate::Config;

/// Bounds of the driver's own queues.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Requests (proposals, reads) waiting for the driver task; callers wait when it is full.
    pub request_queue_max: usize,
    /// Writes handed to the log store and not yet durable; the driver stops taking new
    /// `Ready`s while this many are in flight.
    pub persist_inflight_max: usize,
    /// Reads waiting for their read index to be applied.
    pub reads_waiting_max: usize,
    /// Peer addresses, to name the leader's address in [`NodeError::NotLeader`].
    pub addresses: BTreeMap<NodeId, String>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            request_queue_max: 4096,
            persist_inflight_max: 64,
            reads_waiting_max: 4096,
            addresses: BTreeMap::new(),
        }
    }
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// This node is not the leader. Retry on `leader` (at `address`) if known.
    #[error("not the leader; leader is {leader:?} at {address:?}")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
        /// Its address, if the driver was told.
        address: Option<String>,
    },
    /// The proposal was accepted but leadership was lost before it committed, and another
    /// entry took its place. It was not applied.
    #[error("leadership lost before the proposal committed")]
    LeadershipLost,
    /// The node could not confirm a read point (no leader, or leadership changed).
    #[error("no read point: leadership could not be confirmed")]
    ReadUnavailable,
    /// The leader's queue of uncommitted entries, or a driver queue, is full.
    #[error("busy: {0}")]
    Busy(String),
    /// The node is shutting down or has stopped.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The log store failed; the node stopped (fail-stop).
    #[error("storage failed: {0}")]
    Storage(String),
}

/// A summary the driver refreshes after every event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// This node.
    pub id: NodeId,
    /// The current term.
    pub term: Term,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// Whether this node is the leader.
    pub is_leader: bool,
    /// The commit index.
    pub commit_index: LogIndex,
    /// The last index applied to the state machine.
    pub applied_index: LogIndex,
    /// The last index of the log.
    pub last_index: LogIndex,
}

enum Request<R> {
    Propose(Bytes, oneshot::Sender<Result<R, NodeError>>),
    Read(oneshot::Sender<Result<LogIndex, NodeError>>),
    Campaign,
    Shutdown,
}

/// A cloneable handle for proposing, reading and observing a running [`Node`].
pub struct NodeHandle<R> {
    requests: mpsc::Sender<Request<R>>,
    status: Arc<Mutex<NodeStatus>>,
}

impl<R> Clone for NodeHandle<R> {
    fn clone(&self) -> Self {
        NodeHandle {
            requests: self.requests.clone(),
            status: Arc::clone(&self.status),
        }
    }
}

impl<R: Send + 'static> NodeHandle<R> {
    async fn request(&self, req: Request<R>) -> Result<(), NodeError> {
        self.requests
            .clone()
            .send(req)
            .await
            .map_err(|_| NodeError::ShuttingDown)
    }

    /// Proposes `command`; resolves with the state machine's response once it is committed
    /// and applied on this node (which must be the leader).
    pub async fn propose(&self, command: Bytes) -> Result<R, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Propose(command, tx)).await?;
        rx.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Waits for a linearizable read point and for this node's state machine to apply it.
    /// A read of the state machine after this returns sees every write committed before it
    /// was called (ReadIndex, §6.4 of the dissertation; works on followers too).
    pub async fn read_barrier(&self) -> Result<LogIndex, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Read(tx)).await?;
        rx.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Starts an election on this node now.
    pub async fn campaign(&self) -> Result<(), NodeError> {
        self.request(Request::Campaign).await
    }

    /// Asks the driver to stop; pending requests fail with [`NodeError::ShuttingDown`].
    pub async fn shutdown(&self) {
        let _ = self.request(Request::Shutdown).await;
    }

    /// The latest status.
    pub fn status(&self) -> NodeStatus {
        self.status.lock().clone()
    }
}

/// What a finished write hands back to the driver.
struct Persisted {
    ack: PersistAck,
    messages: Vec<Message>,
}

/// A proposal waiting for its entry to be applied.
struct Waiter<R> {
    term: Term,
    reply: oneshot::Sender<Result<R, NodeError>>,
}

/// A new driver and the first handle to it.
pub type Started<L, M, T> = (Node<L, M, T>, NodeHandle<<M as StateMachine>::Response>);

/// The driver of one Raft node.
pub struct Node<L: LogStore + Clone, M: StateMachine, T: Transport> {
    raw: RawNode<L>,
    log: L,
    state_machine: M,
    transport: T,
    config: DriverConfig,
    requests: mpsc::Receiver<Request<M::Response>>,
    status: Arc<Mutex<NodeStatus>>,
    persisting: FuturesOrdered<BoxFuture<'static, Result<Persisted, StorageError>>>,
    waiters: BTreeMap<LogIndex, Waiter<M::Response>>,
    reads_pending: HashMap<u64, oneshot::Sender<Result<LogIndex, NodeError>>>,
    /// Reads confirmed at an index this node has not applied yet, in arrival order.
    reads_waiting: VecDeque<(LogIndex, oneshot::Sender<Result<LogIndex, NodeError>>)>,
    next_read_id: u64,
    applied: LogIndex,
}

impl<L, M, T> Node<L, M, T>
where
    L: LogStore + Clone,
    M: StateMachine,
    T: Transport,
{
    /// A driver for the node described by `config`, reading its state from `log`.
    pub fn new(
        config: Config,
        driver: DriverConfig,
        log: L,
        state_machine: M,
        transport: T,
    ) -> Result<Started<L, M, T>, Error> {
        let applied = config.applied;
        let raw = RawNode::new(config, log.clone())?;
        let (tx, rx) = mpsc::channel(driver.request_queue_max);
        let status = Arc::new(Mutex::new(NodeStatus::default()));
        let node = Node {
            raw,
            log,
            state_machine,
            transport,
            config: driver,
            requests: rx,
            status: Arc::clone(&status),
            persisting: FuturesOrdered::new(),
            waiters: BTreeMap::new(),
            reads_pending: HashMap::new(),
            reads_waiting: VecDeque::new(),
            next_read_id: 0,
            applied,
        };
        node.publish_status();
        Ok((
            node,
            NodeHandle {
                requests: tx,
                status,
            },
        ))
    }

    /// Runs the node until shutdown or a storage failure. `inbound` yields messages from
    /// peers; `ticks` yields once per tick.
    pub async fn run<I, K>(mut self, inbound: I, ticks: K) -> Result<(), NodeError>
    where
        I: futures::Stream<Item = Message> + FusedStream + Unpin,
        K: futures::Stream<Item = ()> + FusedStream + Unpin,
    {
        let mut inbound = inbound;
        let mut ticks = ticks;
        // Proposals of a lost term stay registered: they resolve when their index is applied,
        // with the response if their entry survived, or LeadershipLost.
        let result = loop {
            self.handle_ready().await;
            futures::select_biased! {
                done = self.persisting.select_next_some() => match done {
                    Ok(p) => self.on_persisted(p),
                    Err(e) => break Err(NodeError::Storage(e.to_string())),
                },
                msg = inbound.select_next_some() => self.raw.step(msg),
                () = ticks.select_next_some() => self.raw.tick(),
                req = self.requests.select_next_some() => {
                    if !self.handle_request(req) {
                        break Ok(());
                    }
                },
                complete => break Ok(()),
            }
        };
        self.fail_all(result.clone().err().unwrap_or(NodeError::ShuttingDown));
        result
    }

    fn handle_request(&mut self, req: Request<M::Response>) -> bool {
        match req {
            Request::Propose(command, reply) => match self.raw.propose(command) {
                Ok(index) => {
                    let term = self.raw.term();
                    self.waiters.insert(index, Waiter { term, reply });
                }
                Err(e) => {
                    let _ = reply.send(Err(self.map_error(e)));
                }
            },
            Request::Read(reply) => {
                if self.reads_pending.len() + self.reads_waiting.len()
                    >= self.config.reads_waiting_max
                {
                    let _ = reply.send(Err(NodeError::Busy("too many reads waiting".into())));
                } else {
                    self.next_read_id += 1;
                    self.reads_pending.insert(self.next_read_id, reply);
                    self.raw.read_index(self.next_read_id);
                }
            }
            Request::Campaign => self.raw.campaign(),
            Request::Shutdown => return false,
        }
        true
    }

    fn map_error(&self, e: Error) -> NodeError {
        match e {
            Error::NotLeader { leader } => NodeError::NotLeader {
                leader,
                address: leader.and_then(|id| self.config.addresses.get(&id).cloned()),
            },
            Error::Busy { uncommitted } => {
                NodeError::Busy(format!("{uncommitted} entries wait for commit"))
            }
            other => NodeError::Storage(other.to_string()),
        }
    }

    /// Takes every Ready: messages out, the write to the log store, committed entries to the
    /// state machine, read points to their waiters.
    async fn handle_ready(&mut self) {
        while self.raw.has_ready() && self.persisting.len() < self.config.persist_inflight_max {
            let mut ready = self.raw.ready();
            if !ready.messages.is_empty() {
                self.transport.send(std::mem::take(&mut ready.messages));
            }
            for rs in std::mem::take(&mut ready.read_states) {
                if let Some(reply) = self.reads_pending.remove(&rs.request_id) {
                    match rs.index {
                        Some(index) => self.reads_waiting.push_back((index, reply)),
                        None => {
                            let _ = reply.send(Err(NodeError::ReadUnavailable));
                        }
                    }
                }
            }
            let ack = ready.persist_ack();
            let messages = std::mem::take(&mut ready.persisted_messages);
            let write = self
                .log
                .persist(std::mem::take(&mut ready.entries), ready.hard_state);
            self.persisting.push_back(
                write
                    .map(move |r| r.map(|()| Persisted { ack, messages }))
                    .boxed(),
            );
            // Committed entries are durable here already: apply them now.
            if let Some(last) = ready.last_committed_index() {
                for entry in &ready.committed_entries {
                    let response = match &entry.payload {
                        EntryPayload::Normal(command) => {
                            Some(self.state_machine.apply(entry.index, command).await)
                        }
                        _ => None,
                    };
                    self.complete(entry.index, entry.term, response);
                }
                self.applied = last;
                self.raw.on_applied(last);
            }
            self.serve_reads();
            self.publish_status();
        }
    }

    fn on_persisted(&mut self, p: Persisted) {
        if !p.messages.is_empty() {
            self.transport.send(p.messages);
        }
        self.raw.on_persisted(p.ack);
        self.publish_status();
    }

    /// Resolves the proposal waiting at `index`, if any, and every older one: an older
    /// waiter still here had its entry replaced by another leader's, so it was never applied.
    fn complete(&mut self, index: LogIndex, term: Term, response: Option<M::Response>) {
        let mut response = response;
        while let Some(entry) = self.waiters.first_entry() {
            if *entry.key() > index {
                break;
            }
            let at = *entry.key();
            let waiter = entry.remove();
            // The same index and term is the same entry (Log Matching): ours was applied.
            let result = match response.take() {
                Some(r) if at == index && waiter.term == term => Ok(r),
                other => {
                    response = other;
                    Err(NodeError::LeadershipLost)
                }
            };
            let _ = waiter.reply.send(result);
        }
    }

    fn serve_reads(&mut self) {
        while self
            .reads_waiting
            .front()
            .is_some_and(|(index, _)| *index <= self.applied)
        {
            let (index, reply) = self.reads_waiting.pop_front().expect("front exists");
            let _ = reply.send(Ok(index));
        }
    }

    fn publish_status(&self) {
        let status = self.raw.status();
        *self.status.lock() = NodeStatus {
            id: status.id,
            term: status.hard_state.term,
            leader: status.soft_state.leader,
            is_leader: status.soft_state.role == Role::Leader,
            commit_index: status.hard_state.commit,
            applied_index: self.applied,
            last_index: status.last_index,
        };
    }

    fn fail_all(&mut self, error: NodeError) {
        for (_, w) in std::mem::take(&mut self.waiters) {
            let _ = w.reply.send(Err(error.clone()));
        }
        for (_, r) in self.reads_pending.drain() {
            let _ = r.send(Err(error.clone()));
        }
        for (_, r) in self.reads_waiting.drain(..) {
            let _ = r.send(Err(error.clone()));
        }
        self.requests.close();
        while let Ok(req) = self.requests.try_recv() {
            match req {
                Request::Propose(_, reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
                Request::Read(reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
                _ => {}
            }
        }
    }
}
