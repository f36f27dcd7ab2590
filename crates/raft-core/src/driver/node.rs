//! [`Node`] and [`NodeHandle`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::stream::{FusedStream, FuturesOrdered};
use futures::{FutureExt, SinkExt, StreamExt};
use raftline_proto::{
    Entry, LogIndex, Membership, Message, MessageBody, NodeId, SnapshotMeta, Term,
};

use crate::membership::{MembershipChange, MembershipError, Refusal};

use super::applier::{Applier, Done, Work};
use super::error::{Busy, NodeError, TransferFailure, Unknown};
use super::forward::{self, Forwarder, Reply, Seen};
use super::status::{StatusCell, StatusWatch};
use super::traits::{LogStore, SnapshotStore, StateMachine, Transport};
use crate::error::{Error, SnapshotError, StorageError};
use crate::node::{PersistAck, RawNode, Ready};
use crate::role::Role;
use crate::snapshot::SnapshotSend;
use crate::Config;

/// Bounds of the driver's own queues.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Requests (proposals, reads) waiting for the driver task; callers wait when it is full.
    pub request_queue_max: usize,
    /// Queued events (requests, peers' messages) the driver takes in one go before the next
    /// `Ready`: everything proposed in between leaves in one append per follower, and the
    /// forwards and their answers in one transport send.
    pub events_per_ready_max: usize,
    /// Writes handed to the log store and not yet durable; the driver stops taking new
    /// `Ready`s while this many are in flight.
    pub persist_inflight_max: usize,
    /// Reads waiting for their read index to be applied.
    pub reads_waiting_max: usize,
    /// Work items (batches of committed entries, snapshots, restores) queued for the
    /// applier and not done yet; the driver stops taking new `Ready`s while this many are
    /// queued.
    pub apply_queue_max: usize,
    /// Pass proposals made on a follower to the leader over the transport, and resolve them
    /// with the leader's answer. Off, a follower refuses them with
    /// [`NodeError::NotLeader`].
    pub forward_proposals: bool,
    /// Forwarded proposals waiting for the leader's answer; more fail with
    /// [`Busy::Forwards`].
    pub forwards_pending_max: usize,
    /// Forwarded requests the leader remembers having taken, to drop duplicates a transport
    /// delivers (a duplicate of an older one would be proposed again).
    pub forwards_remembered_max: usize,
    /// How long a forwarded proposal waits for the leader's answer, in ticks, before it
    /// fails with [`Unknown::ForwardUnanswered`] (0: four times
    /// [`Config::election_ticks`](crate::Config::election_ticks)).
    pub forward_timeout_ticks: u64,
    /// Peer addresses, to name the leader's address in [`NodeError::NotLeader`].
    pub addresses: BTreeMap<NodeId, String>,
    /// Take a snapshot whenever the applied index reaches a multiple of this (0: only on
    /// request). Multiples make every node snapshot at the same indexes, so that the same
    /// state gives the same snapshot everywhere and a transfer interrupted by a leader change
    /// resumes on the new leader.
    pub snapshot_entries: u64,
    /// After a snapshot, the log keeps this many entries behind it, so that slightly lagging
    /// followers still replicate from the log instead of receiving a snapshot.
    pub snapshot_trailing_entries: u64,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            request_queue_max: 4096,
            events_per_ready_max: 256,
            persist_inflight_max: 64,
            reads_waiting_max: 4096,
            apply_queue_max: 64,
            forward_proposals: true,
            forwards_pending_max: 4096,
            forwards_remembered_max: 16_384,
            forward_timeout_ticks: 0,
            addresses: BTreeMap::new(),
            snapshot_entries: 10_000,
            snapshot_trailing_entries: 5_000,
        }
    }
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
    /// Its role.
    pub role: Role,
    /// The commit index.
    pub commit_index: LogIndex,
    /// The last index applied to the state machine.
    pub applied_index: LogIndex,
    /// The last index of the log.
    pub last_index: LogIndex,
    /// The first index the log still holds.
    pub first_index: LogIndex,
    /// Snapshot counters.
    pub snapshots: SnapshotStats,
    /// The configuration in force on this node.
    pub membership: Membership,
    /// This node learned that it was removed from the cluster (see
    /// [`Config::removed_election_timeouts`](crate::Config::removed_election_timeouts)).
    pub removed: bool,
}

/// A node starts as a follower.
impl Default for Role {
    fn default() -> Role {
        Role::Follower
    }
}

/// What the driver did with snapshots (counters since start).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// The newest snapshot's last index (0: none).
    pub last_index: LogIndex,
    /// Snapshots taken of this node's state machine.
    pub taken: u64,
    /// Transfers to a follower started from offset 0.
    pub transfers_started: u64,
    /// Transfers to a follower resumed at an offset the follower already held.
    pub transfers_resumed: u64,
    /// Chunks sent (probes excluded) and their bytes.
    pub chunks_sent: u64,
    /// Bytes of snapshot data sent.
    pub bytes_sent: u64,
    /// Chunks received and written.
    pub chunks_received: u64,
    /// Received snapshots installed.
    pub installed: u64,
    /// Received snapshots that failed verification.
    pub rejected: u64,
}

enum Request<R> {
    Propose(Bytes, oneshot::Sender<Result<R, NodeError>>),
    ProposeInTerm(Term, Bytes, oneshot::Sender<Result<R, NodeError>>),
    Read(oneshot::Sender<Result<LogIndex, NodeError>>),
    Snapshot(oneshot::Sender<Result<SnapshotMeta, NodeError>>),
    ChangeMembership(
        MembershipChange,
        oneshot::Sender<Result<Membership, NodeError>>,
    ),
    TransferLeadership(NodeId, oneshot::Sender<Result<(), NodeError>>),
    Campaign,
    Shutdown,
}

/// A cloneable handle for proposing, reading and observing a running [`Node`].
pub struct NodeHandle<R> {
    /// This handle's own sender, used without cloning while the queue has room (a clone per
    /// request allocated, and let each caller hold one slot beyond `request_queue_max`).
    requests: parking_lot::Mutex<mpsc::Sender<Request<R>>>,
    status: Arc<StatusCell>,
}

impl<R> Clone for NodeHandle<R> {
    fn clone(&self) -> Self {
        NodeHandle {
            requests: parking_lot::Mutex::new(self.requests.lock().clone()),
            status: Arc::clone(&self.status),
        }
    }
}

impl<R: Send + 'static> NodeHandle<R> {
    async fn request(&self, req: Request<R>) -> Result<(), NodeError> {
        let sent = self.requests.lock().try_send(req);
        let req = match sent {
            Ok(()) => return Ok(()),
            Err(e) if e.is_disconnected() => return Err(NodeError::ShuttingDown),
            Err(e) => e.into_inner(),
        };
        // The queue is full: wait for room on a clone, without holding the lock.
        let mut requests = self.requests.lock().clone();
        requests
            .send(req)
            .await
            .map_err(|_| NodeError::ShuttingDown)
    }

    /// Proposes `command`; resolves with the state machine's response once it is committed
    /// and applied on this node. On a follower that knows the leader (and
    /// [`DriverConfig::forward_proposals`]), the command goes to the leader over the
    /// transport and the response is the leader's.
    pub async fn propose(&self, command: Bytes) -> Result<R, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Propose(command, tx)).await?;
        rx.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Proposes `command` only if this node is the leader of `term` when the driver takes the
    /// request; otherwise fails at once with [`NodeError::NotLeader`]. Never forwarded.
    ///
    /// For decisions a leader takes from its own state, such as expiring a lease by its
    /// clock: a leader deposed without knowing it yet cannot have its successor propose the
    /// command for it, and the entry it appends itself commits only if a majority still
    /// follows it in `term` (else the new leader's log replaces it). Resolves as
    /// [`propose`](Self::propose) does.
    pub async fn propose_in_term(&self, term: Term, command: Bytes) -> Result<R, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::ProposeInTerm(term, command, tx))
            .await?;
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

    /// Takes a snapshot of the state machine now (at the applied index) and compacts the log
    /// behind it.
    pub async fn snapshot(&self) -> Result<SnapshotMeta, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::Snapshot(tx)).await?;
        rx.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Changes the cluster's configuration (this node must lead); resolves with the new
    /// configuration once it is committed. See [`MembershipChange`] for what each change
    /// does; adding a voter waits until the new server has caught up as a learner.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<Membership, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::ChangeMembership(change, tx)).await?;
        rx.await.map_err(|_| NodeError::ShuttingDown)?
    }

    /// Hands leadership to voter `to`; resolves once `to` leads, or fails after an election
    /// timeout. Proposals to this node fail while the transfer runs.
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.request(Request::TransferLeadership(to, tx)).await?;
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
        self.status.get()
    }

    /// The current term, without copying the whole status (for response headers).
    pub fn term(&self) -> Term {
        self.status.read(|s| s.term)
    }

    /// A watch of the status: wait for a leader, an applied index or a configuration
    /// instead of polling [`status`](Self::status).
    pub fn watch(&self) -> StatusWatch {
        StatusWatch::new(Arc::clone(&self.status))
    }
}

/// What a finished write hands back to the driver.
struct Persisted {
    ack: PersistAck,
    messages: Vec<Message>,
}

impl Persisted {
    /// A write that acknowledges nothing to the core (a compaction, a snapshot install).
    fn none() -> Persisted {
        Persisted {
            ack: PersistAck::default(),
            messages: Vec::new(),
        }
    }
}

/// A proposal waiting for its entry to be applied.
struct Waiter<R> {
    term: Term,
    reply: WaiterReply<R>,
}

/// Who waits for a proposal's outcome.
enum WaiterReply<R> {
    /// A caller on this node.
    Local(Reply<R>),
    /// A follower that forwarded it: the answer goes back as a message.
    Forwarded {
        /// The follower.
        from: NodeId,
        /// Its id for the request.
        request_id: u64,
    },
}

/// A new driver and the first handle to it.
pub type Started<L, M, T, P> = (Node<L, M, T, P>, NodeHandle<<M as StateMachine>::Response>);

/// The driver of one Raft node.
///
/// It runs as two tasks: the Ready loop ([`Node::run`], or the first future of
/// [`Node::into_tasks`]) and the applier that owns the state machine (applies, snapshots,
/// restores), so that a long snapshot never stops ticks, heartbeats or appends.
pub struct Node<L: LogStore + Clone, M: StateMachine, T: Transport, P: SnapshotStore> {
    raw: RawNode<L>,
    log: L,
    /// Taken when the node starts running.
    applier: Option<Applier<M, P>>,
    work: mpsc::UnboundedSender<Work>,
    work_rx: Option<mpsc::UnboundedReceiver<Work>>,
    done: mpsc::UnboundedReceiver<Done<M::Response>>,
    done_tx: Option<mpsc::UnboundedSender<Done<M::Response>>>,
    /// Work items queued and not reported done.
    work_inflight: usize,
    /// The highest index queued for the applier (applied, or restored from a snapshot).
    queued_to: LogIndex,
    /// One entry per queued snapshot, in order: the caller waiting for it, if any.
    snapshot_replies: VecDeque<Option<oneshot::Sender<Result<SnapshotMeta, NodeError>>>>,
    transport: T,
    snapshots: Arc<P>,
    config: DriverConfig,
    requests: mpsc::Receiver<Request<M::Response>>,
    status: Arc<StatusCell>,
    persisting: FuturesOrdered<BoxFuture<'static, Result<Persisted, StorageError>>>,
    waiters: BTreeMap<LogIndex, Waiter<M::Response>>,
    reads_pending: HashMap<u64, oneshot::Sender<Result<LogIndex, NodeError>>>,
    /// Reads confirmed at an index this node has not applied yet, in arrival order.
    reads_waiting: VecDeque<(LogIndex, oneshot::Sender<Result<LogIndex, NodeError>>)>,
    next_read_id: u64,
    /// The last index the applier reported applied.
    applied: LogIndex,
    stats: SnapshotStats,
    next_change_id: u64,
    changes: HashMap<u64, oneshot::Sender<Result<Membership, NodeError>>>,
    /// A leadership transfer the caller waits for.
    transfer: Option<(NodeId, oneshot::Sender<Result<(), NodeError>>)>,
    /// Proposals this node forwarded to the leader.
    forwarder: Forwarder<M::Response>,
    /// Forwarded requests this node took as leader (to drop duplicates).
    forwards_seen: Seen,
    /// Forwarded proposals, and answers to those forwarded here, gathered until the next
    /// Ready has been handled and then sent together.
    forward_out: Vec<Message>,
}

impl<L, M, T, P> Node<L, M, T, P>
where
    L: LogStore + Clone,
    M: StateMachine,
    T: Transport,
    P: SnapshotStore,
{
    /// A driver for the node described by `config`, reading its state from `log` and the
    /// newest snapshot in `snapshots`: the state machine is restored from that snapshot (the
    /// log must then continue after it; a crash between keeping a received snapshot and
    /// installing it in the log is repaired here), and only entries after it are applied.
    pub async fn new(
        config: Config,
        driver: DriverConfig,
        log: L,
        state_machine: M,
        snapshots: P,
        transport: T,
    ) -> Result<Started<L, M, T, P>, Error> {
        let mut config = config;
        let mut state_machine = state_machine;
        let mut applied_term = Term(0);
        let mut applied_membership = log.initial_state()?.membership;
        let latest = snapshots.latest();
        if let Some(meta) = &latest {
            let mut source = snapshots.open(meta).await?;
            state_machine
                .restore(&mut source)
                .await
                .map_err(|e| SnapshotError::Corrupt(format!("restoring {meta:?}: {e}")))?;
            log.install_snapshot(meta.last_index, meta.last_term, meta.membership.clone())
                .await?;
            config.applied = meta.last_index;
            applied_term = meta.last_term;
            applied_membership = meta.membership.clone();
        }
        let applied = config.applied;
        let forward_timeout = match driver.forward_timeout_ticks {
            0 => 4 * u64::from(config.election_ticks),
            ticks => ticks,
        };
        let forwarder = Forwarder::new(config.seed, forward_timeout, driver.forwards_pending_max);
        let forwards_remembered = driver.forwards_remembered_max;
        let mut raw = RawNode::new(config, log.clone())?;
        let mut stats = SnapshotStats::default();
        if let Some(meta) = latest {
            stats.last_index = meta.last_index;
            raw.on_snapshot_stored(meta);
        }
        let (tx, rx) = mpsc::channel(driver.request_queue_max);
        let status = Arc::new(StatusCell::default());
        let snapshots = Arc::new(snapshots);
        let (work, work_rx) = mpsc::unbounded();
        let (done_tx, done) = mpsc::unbounded();
        let applier = Applier {
            state_machine,
            snapshots: Arc::clone(&snapshots),
            applied,
            applied_term,
            applied_membership,
        };
        let node = Node {
            raw,
            log,
            applier: Some(applier),
            work,
            work_rx: Some(work_rx),
            done,
            done_tx: Some(done_tx),
            work_inflight: 0,
            queued_to: applied,
            snapshot_replies: VecDeque::new(),
            transport,
            snapshots,
            config: driver,
            requests: rx,
            status: Arc::clone(&status),
            persisting: FuturesOrdered::new(),
            waiters: BTreeMap::new(),
            reads_pending: HashMap::new(),
            reads_waiting: VecDeque::new(),
            next_read_id: 0,
            applied,
            stats,
            next_change_id: 0,
            changes: HashMap::new(),
            transfer: None,
            forwarder,
            forwards_seen: Seen::new(forwards_remembered),
            forward_out: Vec::new(),
        };
        node.publish_status();
        Ok((
            node,
            NodeHandle {
                requests: parking_lot::Mutex::new(tx),
                status,
            },
        ))
    }

    /// Runs the node until shutdown or a storage failure. `inbound` yields messages from
    /// peers; `ticks` yields once per tick. The Ready loop and the applier run concurrently
    /// within this one future; [`into_tasks`](Self::into_tasks) gives them apart.
    pub async fn run<I, K>(self, inbound: I, ticks: K) -> Result<(), NodeError>
    where
        I: futures::Stream<Item = Message> + FusedStream + Unpin,
        K: futures::Stream<Item = ()> + FusedStream + Unpin,
    {
        let (ready_loop, applier) = self.into_tasks(inbound, ticks);
        futures::future::join(ready_loop, applier).await.0
    }

    /// The node as two futures to run concurrently, for example as two tasks of a runtime:
    /// the Ready loop (which resolves when the node stops) and the applier (which owns the
    /// state machine and ends after the Ready loop). A snapshot being written or restored
    /// by the applier does not hold up the Ready loop.
    pub fn into_tasks<I, K>(
        mut self,
        inbound: I,
        ticks: K,
    ) -> (
        impl std::future::Future<Output = Result<(), NodeError>>,
        impl std::future::Future<Output = ()>,
    )
    where
        I: futures::Stream<Item = Message> + FusedStream + Unpin,
        K: futures::Stream<Item = ()> + FusedStream + Unpin,
    {
        let applier = self.applier.take().expect("a node starts once");
        let work = self.work_rx.take().expect("a node starts once");
        let done = self.done_tx.take().expect("a node starts once");
        (self.ready_loop(inbound, ticks), applier.run(work, done))
    }

    async fn ready_loop<I, K>(mut self, inbound: I, ticks: K) -> Result<(), NodeError>
    where
        I: futures::Stream<Item = Message> + FusedStream + Unpin,
        K: futures::Stream<Item = ()> + FusedStream + Unpin,
    {
        let (mut inbound, mut ticks) = (inbound, ticks);
        // Proposals of a lost term stay registered: they resolve when their index is applied,
        // with the response if their entry survived, or LeadershipLost.
        let result = loop {
            if let Err(e) = self.handle_ready().await {
                break Err(e);
            }
            self.send_forwards();
            self.forwarder.leader_is(self.raw.leader());
            // Ticks first: a node that missed ticks (its process paused) counts that time
            // before it reads a message or a request, so a lease read never trusts a clock
            // that stood still (raft-kv delivers missed ticks at once in lease mode).
            futures::select_biased! {
                () = ticks.select_next_some() => {
                    self.raw.tick();
                    self.forwarder.tick();
                    if self.raw.is_removed() != self.status.read(|s| s.removed) {
                        self.publish_status();
                    }
                },
                done = self.persisting.select_next_some() => match done {
                    Ok(p) => self.on_persisted(p),
                    Err(e) => break Err(NodeError::Storage(e)),
                },
                done = self.done.select_next_some() => {
                    if let Err(e) = self.on_done(done) {
                        break Err(e);
                    }
                },
                msg = inbound.select_next_some() => {
                    self.on_message(msg);
                    if !self.take_queued(&mut inbound) {
                        break Ok(());
                    }
                },
                req = self.requests.select_next_some() => {
                    if !self.handle_request(req) || !self.take_queued(&mut inbound) {
                        break Ok(());
                    }
                },
                complete => break Ok(()),
            }
        };
        self.fail_all(result.clone().err().unwrap_or(NodeError::ShuttingDown));
        self.status.close();
        result
    }

    /// Takes the requests and messages already queued, up to `events_per_ready_max` in all,
    /// so that they share the next Ready. False when a request asked the node to stop.
    fn take_queued<I>(&mut self, inbound: &mut I) -> bool
    where
        I: futures::Stream<Item = Message> + FusedStream + Unpin,
    {
        let mut budget = self.config.events_per_ready_max.saturating_sub(1);
        while budget > 0 {
            let mut took = false;
            if let Some(Some(req)) = self.requests.next().now_or_never() {
                if !self.handle_request(req) {
                    return false;
                }
                (took, budget) = (true, budget - 1);
            }
            if budget > 0 && !inbound.is_terminated() {
                if let Some(Some(msg)) = inbound.next().now_or_never() {
                    self.on_message(msg);
                    (took, budget) = (true, budget - 1);
                }
            }
            if !took {
                break;
            }
        }
        true
    }

    fn handle_request(&mut self, req: Request<M::Response>) -> bool {
        match req {
            Request::Propose(command, reply) => self.propose(command, reply),
            Request::ProposeInTerm(term, command, reply) => {
                if self.raw.term() == term && self.raw.role() == Role::Leader {
                    self.propose(command, reply);
                } else {
                    let not_leader = Error::NotLeader {
                        leader: self.raw.leader(),
                    };
                    let _ = reply.send(Err(self.map_error(not_leader)));
                }
            }
            Request::Read(reply) => {
                if self.reads_pending.len() + self.reads_waiting.len()
                    >= self.config.reads_waiting_max
                {
                    let max = self.config.reads_waiting_max;
                    let _ = reply.send(Err(NodeError::Busy(Busy::Reads { max })));
                } else {
                    self.next_read_id += 1;
                    self.reads_pending.insert(self.next_read_id, reply);
                    self.raw.read_index(self.next_read_id);
                }
            }
            Request::Snapshot(reply) => self.queue_snapshot(Some(reply)),
            Request::ChangeMembership(change, reply) => {
                self.next_change_id += 1;
                match self.raw.propose_membership(self.next_change_id, change) {
                    Ok(()) => {
                        self.changes.insert(self.next_change_id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(self.map_error(e)));
                    }
                }
            }
            Request::TransferLeadership(to, reply) => match self.raw.transfer_leadership(to) {
                Ok(()) if self.raw.leader() == Some(to) => {
                    let _ = reply.send(Ok(()));
                }
                Ok(()) => {
                    if let Some((_, old)) = self.transfer.replace((to, reply)) {
                        let _ =
                            old.send(Err(NodeError::TransferFailed(TransferFailure::Superseded)));
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(self.map_error(e)));
                }
            },
            Request::Campaign => self.raw.campaign(),
            Request::Shutdown => return false,
        }
        true
    }

    /// Proposes here if this node leads; forwards to the leader if it knows one (and
    /// forwarding is on); else refuses.
    fn propose(&mut self, command: Bytes, reply: Reply<M::Response>) {
        let leader = match self.raw.propose(command.clone()) {
            Ok(index) => {
                let term = self.raw.term();
                let reply = WaiterReply::Local(reply);
                self.waiters.insert(index, Waiter { term, reply });
                return;
            }
            Err(Error::NotLeader {
                leader: Some(leader),
            }) if self.config.forward_proposals && leader != self.raw.id() => leader,
            Err(e) => {
                let _ = reply.send(Err(self.map_error(e)));
                return;
            }
        };
        let me = (self.raw.id(), self.raw.term());
        if let Some(message) = self.forwarder.forward(me, leader, command, reply) {
            self.forward_out.push(message);
        }
    }

    /// A message from a peer: forwarding is the driver's; the rest goes to the core.
    fn on_message(&mut self, msg: Message) {
        match msg.body {
            MessageBody::Forward(request) => {
                if !self.forwards_seen.first_time(msg.from, request.request_id) {
                    return;
                }
                let outcome = match self.raw.propose(request.command) {
                    Ok(index) => {
                        let term = self.raw.term();
                        let reply = WaiterReply::Forwarded {
                            from: msg.from,
                            request_id: request.request_id,
                        };
                        self.waiters.insert(index, Waiter { term, reply });
                        return;
                    }
                    Err(e) => forward::refusal(&e),
                };
                let me = (self.raw.id(), self.raw.term());
                let answer = forward::response(me, msg.from, request.request_id, outcome);
                self.forward_out.push(answer);
            }
            MessageBody::ForwardResponse(response) => {
                let addresses = &self.config.addresses;
                self.forwarder.answered(msg.from, response, addresses);
            }
            _ => self.raw.step(msg),
        }
    }

    /// Resolves a proposal: its caller here, or the follower that forwarded it.
    fn resolve(&mut self, reply: WaiterReply<M::Response>, result: Result<M::Response, NodeError>) {
        match reply {
            WaiterReply::Local(reply) => {
                let _ = reply.send(result);
            }
            WaiterReply::Forwarded { from, request_id } => {
                let me = (self.raw.id(), self.raw.term());
                let outcome = forward::outcome(result);
                let answer = forward::response(me, from, request_id, outcome);
                self.forward_out.push(answer);
            }
        }
    }

    /// Sends the forwards and the answers to forwards gathered since the last call, together.
    fn send_forwards(&mut self) {
        if !self.forward_out.is_empty() {
            self.transport.send(std::mem::take(&mut self.forward_out));
        }
    }

    fn map_error(&self, e: Error) -> NodeError {
        match e {
            Error::NotLeader { leader } => NodeError::NotLeader {
                leader,
                address: leader.and_then(|id| self.config.addresses.get(&id).cloned()),
            },
            Error::Busy { uncommitted } => NodeError::Busy(Busy::Uncommitted { uncommitted }),
            Error::TransferInProgress { to } => NodeError::Busy(Busy::TransferInProgress { to }),
            Error::MembershipRefused(why) => NodeError::MembershipRefused(why),
            Error::MembershipChangePending(why) => NodeError::MembershipPending(why),
            Error::Config(e) => NodeError::Config(e),
            Error::Storage(e) => NodeError::Storage(e),
            Error::Snapshot(e) => NodeError::Snapshot(e),
        }
    }

    /// Takes every Ready: messages out, snapshot chunks read and sent or written, the write
    /// to the log store, committed entries to the state machine, read points to their
    /// waiters. Errors are fatal for the node.
    async fn handle_ready(&mut self) -> Result<(), NodeError> {
        while self.raw.has_ready()
            && self.persisting.len() < self.config.persist_inflight_max
            && self.work_inflight < self.config.apply_queue_max
        {
            let mut ready = self.raw.ready();
            if !ready.messages.is_empty() {
                self.transport.send(std::mem::take(&mut ready.messages));
            }
            self.send_snapshot_chunks(std::mem::take(&mut ready.snapshot_sends))
                .await;
            for r in std::mem::take(&mut ready.membership_results) {
                if let Some(reply) = self.changes.remove(&r.request_id) {
                    let _ = reply.send(r.result.map_err(|e| match e {
                        MembershipError::LeadershipLost => {
                            NodeError::OutcomeUnknown(Unknown::ChangeInterrupted)
                        }
                        MembershipError::CatchUpFailed { id, rounds } => {
                            NodeError::CatchUpFailed { id, rounds }
                        }
                        MembershipError::NotALearner { id } => {
                            NodeError::MembershipRefused(Refusal::NotALearner(id))
                        }
                    }));
                }
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
            if let Some(meta) = ready.snapshot.take() {
                self.install_snapshot(meta);
            }
            self.write_snapshot_chunks(&mut ready).await;
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
            // Committed entries are durable here already: hand them to the applier.
            self.queue_apply(std::mem::take(&mut ready.committed_entries));
            self.serve_reads();
            self.check_transfer();
            self.publish_status();
        }
        Ok(())
    }

    /// Resolves the caller's leadership transfer once `to` leads or the leader gave up.
    fn check_transfer(&mut self) {
        let Some((to, _)) = &self.transfer else {
            return;
        };
        let to = *to;
        let outcome = match self.raw.leader() {
            Some(leader) if leader == to => Some(Ok(())),
            _ if self.raw.role() == Role::Leader && self.raw.transfer_target() != Some(to) => {
                Some(Err(NodeError::TransferFailed(TransferFailure::TimedOut {
                    to,
                })))
            }
            Some(leader) if self.raw.role() != Role::Leader => Some(Err(
                NodeError::TransferFailed(TransferFailure::OtherLeader { leader, to }),
            )),
            _ => None,
        };
        if let Some(outcome) = outcome {
            let (_, reply) = self.transfer.take().expect("checked above");
            let _ = reply.send(outcome);
        }
    }

    /// Reads each chunk the core asks for and sends it; a chunk that cannot be read (a newer
    /// snapshot replaced it) is skipped: the core starts that transfer over.
    async fn send_snapshot_chunks(&mut self, sends: Vec<SnapshotSend>) {
        if sends.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(sends.len());
        for send in sends {
            if send.len == 0 {
                out.push(send.into_message(Bytes::new()));
                continue;
            }
            if send.first {
                if send.offset == 0 {
                    self.stats.transfers_started += 1;
                    tracing::info!(
                        to = send.to.0,
                        snapshot = send.meta.last_index.0,
                        bytes = send.meta.size_bytes,
                        "snapshot transfer starts"
                    );
                } else {
                    self.stats.transfers_resumed += 1;
                    tracing::info!(
                        to = send.to.0,
                        snapshot = send.meta.last_index.0,
                        offset = send.offset,
                        "snapshot transfer resumes at the acknowledged offset"
                    );
                }
            }
            match self
                .snapshots
                .read_chunk(&send.meta, send.offset, send.len)
                .await
            {
                Ok(data) if data.len() == send.len => {
                    self.stats.chunks_sent += 1;
                    self.stats.bytes_sent += data.len() as u64;
                    out.push(send.into_message(data));
                }
                _ => {}
            }
        }
        self.transport.send(out);
    }

    /// Writes received chunks; after the last one of a snapshot, verifies and keeps it and
    /// tells the core.
    async fn write_snapshot_chunks(&mut self, ready: &mut Ready) {
        for chunk in std::mem::take(&mut ready.snapshot_chunks) {
            let written = self
                .snapshots
                .write_chunk(&chunk.meta, chunk.offset, &chunk.data)
                .await;
            self.stats.chunks_received += 1;
            if !chunk.last {
                // A failed write shows when the whole snapshot is verified.
                continue;
            }
            let valid = match written {
                Ok(()) => self.snapshots.finish_received(&chunk.meta).await.is_ok(),
                Err(_) => false,
            };
            if valid {
                self.stats.last_index = self.stats.last_index.max(chunk.meta.last_index);
                tracing::info!(snapshot = chunk.meta.last_index.0, "received a snapshot");
            } else {
                self.stats.rejected += 1;
                tracing::warn!(
                    snapshot = chunk.meta.last_index.0,
                    "a received snapshot failed verification; the transfer starts over"
                );
            }
            self.raw.on_snapshot_received(&chunk.meta, valid);
        }
    }

    /// Queues work for the applier.
    fn send_work(&mut self, work: Work) {
        // The applier ends only after this loop drops the sender: the send cannot fail.
        let _ = self.work.unbounded_send(work);
        self.work_inflight += 1;
    }

    /// Hands committed entries to the applier, with a snapshot after each entry whose index
    /// is a multiple of `snapshot_entries` (every node snapshots at the same indexes, so the
    /// same state gives the same bytes everywhere).
    fn queue_apply(&mut self, entries: Vec<Entry>) {
        let every = self.config.snapshot_entries;
        let mut batch = Vec::new();
        for entry in entries {
            if entry.index <= self.queued_to {
                continue; // handed out before a snapshot that covers it was installed
            }
            self.queued_to = entry.index;
            let snapshot_here = every > 0 && entry.index.0.is_multiple_of(every);
            batch.push(entry);
            if snapshot_here {
                self.send_work(Work::Apply(std::mem::take(&mut batch)));
                self.queue_snapshot(None);
            }
        }
        if !batch.is_empty() {
            self.send_work(Work::Apply(batch));
        }
    }

    /// Asks the applier for a snapshot of the state once the work queued before is done.
    fn queue_snapshot(&mut self, reply: Option<oneshot::Sender<Result<SnapshotMeta, NodeError>>>) {
        self.snapshot_replies.push_back(reply);
        self.send_work(Work::Snapshot);
    }

    /// Installs a received snapshot: the applier restores it (after the entries queued
    /// before it), and the log continues after it (ordered with the other log writes).
    fn install_snapshot(&mut self, meta: SnapshotMeta) {
        self.queued_to = self.queued_to.max(meta.last_index);
        self.send_work(Work::Restore(meta.clone()));
        let install =
            self.log
                .install_snapshot(meta.last_index, meta.last_term, meta.membership.clone());
        self.persisting
            .push_back(install.map(|r| r.map(|()| Persisted::none())).boxed());
    }

    /// What the applier finished. A failed restore stops the node.
    fn on_done(&mut self, done: Done<M::Response>) -> Result<(), NodeError> {
        self.work_inflight -= 1;
        match done {
            Done::Applied(applied) => {
                let Some(&(last, _, _)) = applied.last() else {
                    return Ok(());
                };
                // The status shows the index applied before its proposers hear of it.
                self.applied = self.applied.max(last);
                self.raw.on_applied(last);
                self.publish_status();
                for (index, term, response) in applied {
                    self.complete(index, term, response);
                }
            }
            Done::Snapshot(result) => self.on_snapshot_taken(result),
            Done::Restored(Err((meta, source))) => {
                let index = meta.last_index;
                return Err(NodeError::Restore { index, source });
            }
            Done::Restored(Ok(meta)) => self.on_restored(meta),
        }
        self.serve_reads();
        self.publish_status();
        Ok(())
    }

    fn on_restored(&mut self, meta: SnapshotMeta) {
        // Proposals this node made at indexes the snapshot covers, and not applied before
        // it, were applied or replaced there; which one is not known.
        let covered: Vec<LogIndex> = self
            .waiters
            .range(..=meta.last_index)
            .map(|(&i, _)| i)
            .collect();
        for index in covered {
            let waiter = self.waiters.remove(&index).expect("listed above");
            let unknown = NodeError::OutcomeUnknown(Unknown::SnapshotCovered);
            self.resolve(waiter.reply, Err(unknown));
        }
        self.applied = self.applied.max(meta.last_index);
        self.stats.installed += 1;
    }

    /// A snapshot is stored: tell the core, compact the log behind it (keeping
    /// `snapshot_trailing_entries`), answer the caller who asked for it.
    fn on_snapshot_taken(&mut self, result: Result<(SnapshotMeta, bool), SnapshotError>) {
        let reply = self.snapshot_replies.pop_front().flatten();
        let result = match result {
            Ok((meta, fresh)) => {
                if fresh {
                    self.stats.taken += 1;
                    self.stats.last_index = self.stats.last_index.max(meta.last_index);
                    self.raw.on_snapshot_stored(meta.clone());
                    self.compact_behind(&meta);
                }
                Ok(meta)
            }
            Err(e) => {
                // Not fatal: the log keeps growing until a later snapshot works.
                tracing::warn!("taking a snapshot failed: {e}");
                Err(NodeError::Snapshot(e))
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    fn compact_behind(&mut self, meta: &SnapshotMeta) {
        let trailing = self.config.snapshot_trailing_entries;
        let up_to = LogIndex(meta.last_index.0.saturating_sub(trailing));
        let first = self.raw.first_index();
        if up_to >= first {
            let compact = self.log.compact(up_to);
            self.persisting
                .push_back(compact.map(|r| r.map(|()| Persisted::none())).boxed());
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
            self.resolve(waiter.reply, result);
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

    /// Refreshes the shared status. Runs after every Ready: it copies the configuration only
    /// when it changed.
    fn publish_status(&self) {
        let raw = &self.raw;
        self.status.publish(|status| {
            status.id = raw.id();
            status.term = raw.term();
            status.leader = raw.leader();
            status.is_leader = raw.role() == Role::Leader;
            status.role = raw.role();
            status.commit_index = raw.commit_index();
            status.applied_index = self.applied;
            status.last_index = raw.last_index();
            status.first_index = raw.first_index();
            status.snapshots.clone_from(&self.stats);
            if status.membership != *raw.membership() {
                status.membership = raw.membership().clone();
            }
            status.removed = raw.is_removed();
        });
    }

    fn fail_all(&mut self, error: NodeError) {
        for (_, w) in std::mem::take(&mut self.waiters) {
            self.resolve(w.reply, Err(error.clone()));
        }
        self.send_forwards();
        self.forwarder.fail_all(&error);
        for (_, r) in self.changes.drain() {
            let _ = r.send(Err(error.clone()));
        }
        if let Some((_, r)) = self.transfer.take() {
            let _ = r.send(Err(error.clone()));
        }
        for (_, r) in self.reads_pending.drain() {
            let _ = r.send(Err(error.clone()));
        }
        for (_, r) in self.reads_waiting.drain(..) {
            let _ = r.send(Err(error.clone()));
        }
        for r in self.snapshot_replies.drain(..).flatten() {
            let _ = r.send(Err(error.clone()));
        }
        self.requests.close();
        while let Ok(req) = self.requests.try_recv() {
            match req {
                Request::Propose(_, reply) | Request::ProposeInTerm(_, _, reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
                Request::Read(reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
                Request::Snapshot(reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
                Request::ChangeMembership(_, reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
                Request::TransferLeadership(_, reply) => {
                    let _ = reply.send(Err(error.clone()));
                }
                _ => {}
            }
        }
    }
}
