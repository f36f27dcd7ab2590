//! [`TcpTransport`]: the listener, one task per peer, and the connection loops.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::channel::mpsc;
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use parking_lot::{Mutex, RwLock};
use raftline_proto::{Message, NodeId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

use crate::config::TransportConfig;
use crate::stats::{add, Counters, TransportStats};
use crate::wire::{
    encode_frame, frame_len, take_frame, FrameError, Handshake, HandshakeError, HandshakeKind,
    RejectReason, FRAME_HEADER_LEN, HANDSHAKE_LEN,
};

/// The most bytes the reader asks the socket for at once (beyond the rest of a large frame).
const READ_CHUNK_BYTES: usize = 64 << 10;

/// How long the listener pauses after `accept` fails (out of file descriptors, say).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A TCP transport for one Raft node: it listens for its peers, keeps one connection per pair
/// of nodes, and moves [`Message`]s as checksummed frames (see the [crate documentation](crate)).
///
/// Cloning is cheap and every clone drives the same transport (the driver takes its
/// [`Transport`](raftline_core::driver::Transport) by value; keep a clone for
/// [`stats`](TcpTransport::stats), membership changes and [`shutdown`](TcpTransport::shutdown)).
/// When the last clone is dropped the transport's tasks are aborted, which closes its
/// sockets; [`shutdown`](TcpTransport::shutdown) does the same and waits until they are gone.
#[derive(Clone)]
pub struct TcpTransport {
    shared: Arc<Shared>,
    _guard: Arc<AbortOnDrop>,
}

/// What the handles and the tasks share.
struct Shared {
    id: NodeId,
    cluster_id: u64,
    config: TransportConfig,
    local_addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    /// Cloned by every connection's reader; taken at shutdown so that the receiver ends once
    /// the tasks are gone.
    inbound: Mutex<Option<mpsc::Sender<Message>>>,
    counters: Counters,
    state: RwLock<State>,
}

struct State {
    closed: bool,
    peers: BTreeMap<NodeId, PeerEntry>,
    acceptor: Option<JoinHandle<()>>,
}

struct PeerEntry {
    peer: Arc<Peer>,
    task: JoinHandle<()>,
}

/// One peer: its outbound queue and, on the accepting side, the slot where the listener hands
/// over connections that completed the handshake.
struct Peer {
    id: NodeId,
    addr: String,
    queue: Mutex<VecDeque<Message>>,
    queue_ready: Notify,
    incoming: Mutex<Option<TcpStream>>,
    incoming_ready: Notify,
    connected: AtomicBool,
}

/// Aborts every task when the last [`TcpTransport`] handle is dropped.
struct AbortOnDrop(Arc<Shared>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for handle in self.0.close() {
            handle.abort();
        }
    }
}

impl TcpTransport {
    /// Binds `config.listen_addr`, starts the listener and one task per peer (dialing the
    /// peers with a higher id), and returns the transport with the receiving half of the
    /// inbound channel (capacity about `config.inbound_msgs_max`), which yields every message
    /// received from any peer.
    ///
    /// Must be called inside a Tokio runtime (with the time and I/O drivers enabled); the
    /// tasks are spawned on it. Fails if the configuration is invalid
    /// ([`TransportConfig::validate`]) or the address cannot be bound.
    pub async fn start(
        config: TransportConfig,
    ) -> io::Result<(TcpTransport, mpsc::Receiver<Message>)> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let listener = TcpListener::bind(config.listen_addr).await?;
        let local_addr = listener.local_addr()?;
        let (inbound, receiver) = mpsc::channel(config.inbound_msgs_max);
        let peers = config.peers.clone();
        let shared = Arc::new(Shared {
            id: config.id,
            cluster_id: config.cluster_id,
            config,
            local_addr,
            runtime,
            inbound: Mutex::new(Some(inbound)),
            counters: Counters::default(),
            state: RwLock::new(State {
                closed: false,
                peers: BTreeMap::new(),
                acceptor: None,
            }),
        });
        for (id, addr) in peers {
            shared.add_peer(id, addr);
        }
        let acceptor = shared
            .runtime
            .spawn(accept_loop(Arc::clone(&shared), listener));
        shared.state.write().acceptor = Some(acceptor);
        tracing::info!(node = %shared.id, cluster = shared.cluster_id, addr = %local_addr, "transport listening");
        let transport = TcpTransport {
            _guard: Arc::new(AbortOnDrop(Arc::clone(&shared))),
            shared,
        };
        Ok((transport, receiver))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// The address the listener is bound to (with the actual port when the configuration
    /// asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Adds a peer, or moves it to a new address (its queue and connection are then dropped
    /// and it starts afresh). Ignored for this node's own id and after shutdown.
    pub fn add_peer(&self, id: NodeId, addr: impl ToString) {
        self.shared.add_peer(id, addr.to_string());
    }

    /// Removes a peer: closes its connection, drops its queued messages, and refuses its
    /// future connections. Returns whether it was a peer.
    pub fn remove_peer(&self, id: NodeId) -> bool {
        let entry = self.shared.state.write().peers.remove(&id);
        match entry {
            Some(entry) => {
                self.shared.retire(&entry);
                tracing::info!(node = %self.shared.id, peer = %id, "peer removed");
                true
            }
            None => false,
        }
    }

    /// The current peers.
    pub fn peers(&self) -> Vec<NodeId> {
        self.shared.state.read().peers.keys().copied().collect()
    }

    /// Whether a handshaken connection to `peer` is currently open.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.shared
            .state
            .read()
            .peers
            .get(&peer)
            .is_some_and(|entry| entry.peer.connected.load(Ordering::Relaxed))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        self.shared.counters.snapshot()
    }

    /// Stops the listener and every peer task and waits until they are gone, which closes
    /// every socket (the listening address can be bound again once this returns). Queued
    /// messages are dropped; later sends are dropped as unroutable. The inbound receiver
    /// ends (yields `None`) once it has handed out what was already received. Affects every
    /// clone.
    pub async fn shutdown(&self) {
        let handles = self.shared.close();
        for handle in &handles {
            handle.abort();
        }
        for handle in handles {
            // A cancelled task's future has been dropped (its sockets closed) when the join
            // handle resolves.
            let _ = handle.await;
        }
        tracing::info!(node = %self.shared.id, "transport shut down");
    }
}

impl raftline_core::driver::Transport for TcpTransport {
    fn send(&self, messages: Vec<Message>) {
        let shared = &self.shared;
        let queue_max = shared.config.peer_queue_msgs_max;
        let (mut full, mut unroutable) = (0, 0);
        {
            let state = shared.state.read();
            for message in messages {
                match state.peers.get(&message.to) {
                    Some(entry) => {
                        if !entry.peer.enqueue(message, queue_max) {
                            full += 1;
                        }
                    }
                    None => unroutable += 1,
                }
            }
        }
        add(&shared.counters.dropped_queue_full, full);
        add(&shared.counters.dropped_unroutable, unroutable);
        if full + unroutable > 0 {
            tracing::trace!(node = %shared.id, full, unroutable, "dropped outgoing messages");
        }
    }
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("id", &self.shared.id)
            .field("cluster_id", &self.shared.cluster_id)
            .field("local_addr", &self.shared.local_addr)
            .field("peers", &self.peers())
            .finish()
    }
}

impl Shared {
    fn add_peer(self: &Arc<Self>, id: NodeId, addr: String) {
        if id == self.id {
            return;
        }
        let mut state = self.state.write();
        if state.closed {
            return;
        }
        if let Some(old) = state.peers.get(&id) {
            if old.peer.addr == addr {
                return;
            }
        }
        let peer = Arc::new(Peer {
            id,
            addr,
            queue: Mutex::new(VecDeque::new()),
            queue_ready: Notify::new(),
            incoming: Mutex::new(None),
            incoming_ready: Notify::new(),
            connected: AtomicBool::new(false),
        });
        let task = self
            .runtime
            .spawn(run_peer(Arc::clone(self), Arc::clone(&peer)));
        tracing::info!(node = %self.id, peer = %id, addr = %peer.addr, "peer added");
        if let Some(old) = state.peers.insert(id, PeerEntry { peer, task }) {
            self.retire(&old);
        }
    }

    /// Aborts a removed peer's task and counts its queued messages as dropped.
    fn retire(&self, entry: &PeerEntry) {
        entry.task.abort();
        let queued = std::mem::take(&mut *entry.peer.queue.lock()).len();
        add(&self.counters.dropped_in_flight, queued as u64);
    }

    /// Marks the transport closed and returns every task to abort.
    fn close(&self) -> Vec<JoinHandle<()>> {
        let mut state = self.state.write();
        state.closed = true;
        self.inbound.lock().take();
        let mut handles: Vec<_> = state.acceptor.take().into_iter().collect();
        for (_, entry) in std::mem::take(&mut state.peers) {
            let queued = std::mem::take(&mut *entry.peer.queue.lock()).len();
            add(&self.counters.dropped_in_flight, queued as u64);
            handles.push(entry.task);
        }
        handles
    }
}

impl Peer {
    /// Queues `message` unless the queue is full; never waits.
    fn enqueue(&self, message: Message, queue_max: usize) -> bool {
        let mut queue = self.queue.lock();
        if queue.len() >= queue_max {
            return false;
        }
        let was_empty = queue.is_empty();
        queue.push_back(message);
        drop(queue);
        if was_empty {
            // The writer drains the whole queue once woken; a permit is kept if it is busy.
            self.queue_ready.notify_one();
        }
        true
    }

    /// Hands a connection accepted by the listener to this peer's task; a newer connection
    /// replaces the current one (the peer restarted, or redialed a connection we had not yet
    /// seen break).
    fn offer(&self, stream: TcpStream) {
        *self.incoming.lock() = Some(stream);
        self.incoming_ready.notify_one();
    }

    async fn take_incoming(&self) -> TcpStream {
        loop {
            if let Some(stream) = self.incoming.lock().take() {
                return stream;
            }
            self.incoming_ready.notified().await;
        }
    }

    /// Resolves once a newer connection waits in the slot.
    async fn replaced(&self) {
        loop {
            self.incoming_ready.notified().await;
            if self.incoming.lock().is_some() {
                return;
            }
        }
    }
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("handshake i/o failed: {0}")]
    Io(#[from] io::Error),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("malformed handshake reply: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("refused by the peer: {0}")]
    Refused(RejectReason),
    #[error("unexpected handshake reply {0:?}")]
    Unexpected(Handshake),
}

/// Why an incoming connection was refused.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("handshake i/o failed: {0}")]
    Io(#[from] io::Error),
    #[error("handshake timed out")]
    Timeout,
    #[error("malformed hello: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("expected a hello, got {0:?}")]
    NotHello(HandshakeKind),
    #[error("{reason} (hello from node {from} of cluster {cluster_id} to node {to})")]
    Rejected {
        reason: RejectReason,
        from: NodeId,
        to: NodeId,
        cluster_id: u64,
    },
}

/// Why an established connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnEnd {
    #[error("closed by the peer")]
    Eof,
    #[error("closed by the peer in the middle of a frame")]
    EofMidFrame,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("rejected frame: {0}")]
    Frame(#[from] FrameError),
    #[error("rejected frame: message from {from} to {to} on the connection from {peer} to {me}")]
    Misrouted {
        from: NodeId,
        to: NodeId,
        peer: NodeId,
        me: NodeId,
    },
    #[error("replaced by a newer connection from the peer")]
    Replaced,
    #[error("the transport is shutting down")]
    Closed,
}

/// Exponential backoff delays with jitter, from a small xorshift generator seeded per task.
struct Backoff {
    state: u64,
    current: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(config: &TransportConfig, peer: NodeId) -> Backoff {
        let seed = RandomState::new().hash_one((config.id, peer, Instant::now()));
        Backoff {
            state: seed | 1,
            current: config.connect_backoff_min,
            min: config.connect_backoff_min,
            max: config.connect_backoff_max,
        }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    /// The next delay: uniform in the upper half of the current backoff, which then doubles.
    fn next_delay(&mut self) -> Duration {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let nanos = u64::try_from(self.current.as_nanos()).unwrap_or(u64::MAX);
        let half = nanos / 2;
        let delay = Duration::from_nanos(half + self.state % (nanos - half).saturating_add(1));
        self.current = self.current.saturating_mul(2).min(self.max);
        delay
    }
}

/// One peer's task: get a connection (dial it if this node has the lower id, else wait for
/// the listener to hand one over), run it until it ends, repeat.
async fn run_peer(shared: Arc<Shared>, peer: Arc<Peer>) {
    let dialer = shared.id < peer.id;
    let mut backoff = Backoff::new(&shared.config, peer.id);
    let mut connected_before = false;
    loop {
        let stream = if dialer {
            match dial(&shared, &peer).await {
                Ok(stream) => stream,
                Err(error) => {
                    add(&shared.counters.connect_failures, 1);
                    match error {
                        DialError::Refused(_)
                        | DialError::Handshake(_)
                        | DialError::Unexpected(_) => {
                            tracing::warn!(node = %shared.id, peer = %peer.id, addr = %peer.addr, %error, "dial failed")
                        }
                        _ => {
                            tracing::debug!(node = %shared.id, peer = %peer.id, addr = %peer.addr, %error, "dial failed")
                        }
                    }
                    sleep(backoff.next_delay()).await;
                    continue;
                }
            }
        } else {
            peer.take_incoming().await
        };
        add(&shared.counters.connections_established, 1);
        if connected_before {
            add(&shared.counters.reconnects, 1);
        }
        connected_before = true;
        tracing::info!(node = %shared.id, peer = %peer.id, dialed = dialer, "connected");

        peer.connected.store(true, Ordering::Relaxed);
        let end = run_connection(&shared, &peer, stream, !dialer).await;
        peer.connected.store(false, Ordering::Relaxed);
        match &end {
            ConnEnd::Frame(_) | ConnEnd::Misrouted { .. } => {
                tracing::warn!(node = %shared.id, peer = %peer.id, reason = %end, "connection closed")
            }
            _ => {
                tracing::info!(node = %shared.id, peer = %peer.id, reason = %end, "connection closed")
            }
        }
        if dialer {
            backoff.reset();
            sleep(backoff.next_delay()).await;
        }
    }
}

/// Connects to `peer` and runs the dialer's side of the handshake.
async fn dial(shared: &Shared, peer: &Peer) -> Result<TcpStream, DialError> {
    let config = &shared.config;
    let mut stream = match timeout(
        config.connect_timeout,
        TcpStream::connect(peer.addr.as_str()),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(DialError::Connect(error)),
        Err(_) => return Err(DialError::ConnectTimeout),
    };
    stream.set_nodelay(true)?;
    let hello = Handshake {
        kind: HandshakeKind::Hello,
        cluster_id: shared.cluster_id,
        from: shared.id,
        to: peer.id,
    };
    let exchange = async {
        stream.write_all(&hello.encode()).await?;
        let mut reply = [0u8; HANDSHAKE_LEN];
        stream.read_exact(&mut reply).await?;
        Ok::<_, DialError>(Handshake::decode(&reply)?)
    };
    let reply = timeout(config.handshake_timeout, exchange)
        .await
        .map_err(|_| DialError::HandshakeTimeout)??;
    match reply.kind {
        HandshakeKind::Accept
            if reply.cluster_id == shared.cluster_id
                && reply.from == peer.id
                && reply.to == shared.id =>
        {
            Ok(stream)
        }
        HandshakeKind::Reject(reason) => Err(DialError::Refused(reason)),
        _ => Err(DialError::Unexpected(reply)),
    }
}

/// The listener: accepts connections and runs their handshakes (at most
/// `pending_handshakes_max` at once, inside this task so that aborting it drops them).
async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let pending_max = shared.config.pending_handshakes_max;
    let mut pending = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if pending.len() < pending_max => match accepted {
                Ok((stream, addr)) => pending.push(accept_one(Arc::clone(&shared), stream, addr)),
                Err(error) => {
                    tracing::warn!(node = %shared.id, %error, "accept failed");
                    sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some(()) = pending.next(), if !pending.is_empty() => {}
        }
    }
}

/// Runs the acceptor's side of the handshake and hands the connection to its peer's task.
async fn accept_one(shared: Arc<Shared>, mut stream: TcpStream, addr: SocketAddr) {
    let result = match timeout(
        shared.config.handshake_timeout,
        handshake_incoming(&shared, &mut stream),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(Refusal::Timeout),
    };
    match result {
        Ok(peer) => peer.offer(stream),
        Err(refusal) => {
            add(&shared.counters.handshakes_refused, 1);
            tracing::warn!(node = %shared.id, remote = %addr, reason = %refusal, "refused incoming connection");
        }
    }
}

async fn handshake_incoming(shared: &Shared, stream: &mut TcpStream) -> Result<Arc<Peer>, Refusal> {
    stream.set_nodelay(true)?;
    let mut bytes = [0u8; HANDSHAKE_LEN];
    stream.read_exact(&mut bytes).await?;
    let hello = Handshake::decode(&bytes)?;
    if hello.kind != HandshakeKind::Hello {
        return Err(Refusal::NotHello(hello.kind));
    }
    let peer = shared
        .state
        .read()
        .peers
        .get(&hello.from)
        .map(|entry| Arc::clone(&entry.peer));
    let verdict = if hello.cluster_id != shared.cluster_id {
        Err(RejectReason::ClusterMismatch)
    } else if hello.to != shared.id {
        Err(RejectReason::WrongNode)
    } else if hello.from > shared.id && peer.is_some() {
        Err(RejectReason::WrongDirection)
    } else {
        peer.ok_or(RejectReason::UnknownNode)
    };
    let kind = match &verdict {
        Ok(_) => HandshakeKind::Accept,
        Err(reason) => HandshakeKind::Reject(*reason),
    };
    let reply = Handshake {
        kind,
        cluster_id: shared.cluster_id,
        from: shared.id,
        to: hello.from,
    };
    match verdict {
        Ok(peer) => {
            stream.write_all(&reply.encode()).await?;
            Ok(peer)
        }
        Err(reason) => {
            // Best effort: the dialer logs the reason; the connection closes either way.
            let _ = stream.write_all(&reply.encode()).await;
            Err(Refusal::Rejected {
                reason,
                from: hello.from,
                to: hello.to,
                cluster_id: hello.cluster_id,
            })
        }
    }
}

/// Runs one handshaken connection: a reader and a writer over the two halves of the socket
/// until either fails (or, on the accepting side, a newer connection from the peer arrives).
async fn run_connection(
    shared: &Shared,
    peer: &Peer,
    mut stream: TcpStream,
    accepted: bool,
) -> ConnEnd {
    let (mut reader, mut writer) = stream.split();
    let in_flight = AtomicU64::new(0);
    let end = tokio::select! {
        end = read_loop(shared, peer, &mut reader) => end,
        end = write_loop(shared, peer, &mut writer, &in_flight) => end,
        () = peer.replaced(), if accepted => ConnEnd::Replaced,
    };
    // The batch being written when the connection ended is lost.
    add(
        &shared.counters.dropped_in_flight,
        in_flight.load(Ordering::Relaxed),
    );
    end
}

/// The largest write buffer a connection keeps between batches.
const WRITE_BUFFER_KEEP_BYTES: usize = 4 << 20;

/// Drains the peer's queue into frames, up to `write_batch_bytes_max` bytes per write.
async fn write_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    peer: &Peer,
    writer: &mut W,
    in_flight: &AtomicU64,
) -> ConnEnd {
    let batch_max = shared.config.write_batch_bytes_max;
    let mut buf = Vec::with_capacity(batch_max.min(READ_CHUNK_BYTES));
    loop {
        let count = fill_batch(shared, peer, &mut buf);
        if count == 0 {
            peer.queue_ready.notified().await;
            continue;
        }
        in_flight.store(count, Ordering::Relaxed);
        if let Err(error) = writer.write_all(&buf).await {
            return ConnEnd::Io(error);
        }
        in_flight.store(0, Ordering::Relaxed);
        add(&shared.counters.messages_sent, count);
        buf.clear();
        // One huge message must not pin a huge buffer; a stream of large ones (snapshot
        // chunks) keeps one of up to WRITE_BUFFER_KEEP_BYTES instead of reallocating it for
        // every frame.
        if buf.capacity() > (4 * batch_max).max(WRITE_BUFFER_KEEP_BYTES) {
            buf.shrink_to(batch_max);
        }
    }
}

/// Encodes queued messages into `buf` until it holds `write_batch_bytes_max` bytes or the
/// queue is empty; returns how many messages it holds.
fn fill_batch(shared: &Shared, peer: &Peer, buf: &mut Vec<u8>) -> u64 {
    let config = &shared.config;
    let mut count = 0;
    while buf.len() < config.write_batch_bytes_max {
        let Some(message) = peer.queue.lock().pop_front() else {
            break;
        };
        let start = buf.len();
        let body_len = encode_frame(&message, buf);
        if body_len > config.frame_bytes_max {
            buf.truncate(start);
            add(&shared.counters.dropped_oversized, 1);
            tracing::warn!(
                node = %shared.id, peer = %peer.id, kind = message.body.kind(), body_len,
                frame_bytes_max = config.frame_bytes_max, "dropped a message larger than frame_bytes_max"
            );
            continue;
        }
        count += 1;
    }
    count
}

/// Reads frames, checks them, and pushes their messages into the inbound channel (waiting
/// while it is full, so that TCP pushes back on the peer).
async fn read_loop<R: AsyncRead + Unpin>(shared: &Shared, peer: &Peer, reader: &mut R) -> ConnEnd {
    let frame_max = shared.config.frame_bytes_max;
    let Some(mut inbound) = shared.inbound.lock().clone() else {
        return ConnEnd::Closed;
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        loop {
            match take_frame(&mut buf, frame_max) {
                Ok(Some(message)) => {
                    if message.from != peer.id || message.to != shared.id {
                        add(&shared.counters.frames_rejected, 1);
                        return ConnEnd::Misrouted {
                            from: message.from,
                            to: message.to,
                            peer: peer.id,
                            me: shared.id,
                        };
                    }
                    if inbound.send(message).await.is_ok() {
                        add(&shared.counters.messages_received, 1);
                    } else {
                        add(&shared.counters.dropped_unroutable, 1);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    add(&shared.counters.frames_rejected, 1);
                    return ConnEnd::Frame(error);
                }
            }
        }
        // Room for the rest of the current frame (its length is already checked) or a chunk.
        let frame_end = match buf.first_chunk::<FRAME_HEADER_LEN>() {
            Some(header) => FRAME_HEADER_LEN + frame_len(header, frame_max).unwrap_or(0),
            None => FRAME_HEADER_LEN,
        };
        buf.reserve(frame_end.saturating_sub(buf.len()).max(READ_CHUNK_BYTES));
        match reader.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => return ConnEnd::Eof,
            Ok(0) => return ConnEnd::EofMidFrame,
            Ok(_) => {}
            Err(error) => return ConnEnd::Io(error),
        }
    }
}
