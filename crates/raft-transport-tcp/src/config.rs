//! [`TransportConfig`]: identity, addresses and every bound of the transport.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use raftline_proto::NodeId;

/// Identity, addresses and bounds of a [`TcpTransport`](crate::TcpTransport).
///
/// Build one with [`TransportConfig::new`], which fills in the defaults documented on each
/// field, then adjust the public fields.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node. Must not be `NodeId(0)`.
    pub id: NodeId,
    /// The cluster this node belongs to; a peer that names another cluster in its handshake is
    /// refused.
    pub cluster_id: u64,
    /// The address to listen on. Port 0 picks a free port (see
    /// [`TcpTransport::local_addr`](crate::TcpTransport::local_addr)).
    pub listen_addr: SocketAddr,
    /// The other members: node id to address (`"10.0.0.2:7000"`, `"node2.local:7000"`). The
    /// address is resolved at every dial, so a host name may move. An entry for `id` itself
    /// is ignored. Only ids listed here (or added with
    /// [`TcpTransport::add_peer`](crate::TcpTransport::add_peer)) may connect.
    pub peers: BTreeMap<NodeId, String>,
    /// The largest frame body (one encoded message) sent or accepted, in bytes. A received
    /// length prefix above it closes the connection before anything is allocated for the
    /// body; an outgoing message above it is dropped. At most `u32::MAX`. Default 16 MiB,
    /// room for raftline-core's default `msg_bytes_max` (1 MiB) many times over.
    pub frame_bytes_max: usize,
    /// Messages queued per peer while waiting for its connection or its socket; further
    /// messages to that peer are dropped (and counted). Default 1024.
    pub peer_queue_msgs_max: usize,
    /// Capacity of the inbound channel handed out by
    /// [`TcpTransport::start`](crate::TcpTransport::start). When it is full, connections stop
    /// reading (TCP pushes back on the senders) until the node catches up. Default 4096.
    pub inbound_msgs_max: usize,
    /// Bytes of frames coalesced into one write: the writer drains its peer queue into one
    /// buffer until it holds this many bytes (a single larger message is written alone).
    /// Default 256 KiB.
    pub write_batch_bytes_max: usize,
    /// The first delay before redialing a peer after a failed dial or a closed connection.
    /// Default 50 ms.
    pub connect_backoff_min: Duration,
    /// The delay doubles after each failed dial up to this. Each delay is drawn uniformly
    /// from its upper half (jitter). Default 2 s.
    pub connect_backoff_max: Duration,
    /// The longest a TCP connect may take before the dial counts as failed. Default 1 s.
    pub connect_timeout: Duration,
    /// The longest the handshake may take, on either side, before the connection is closed.
    /// Default 2 s.
    pub handshake_timeout: Duration,
    /// Accepted connections whose handshake is still in progress; while this many are
    /// pending, no further connection is accepted. Default 64.
    pub pending_handshakes_max: usize,
}

impl TransportConfig {
    /// A configuration for node `id` of cluster `cluster_id` listening on `listen_addr`, with
    /// no peers and the default bounds.
    pub fn new(id: NodeId, cluster_id: u64, listen_addr: SocketAddr) -> TransportConfig {
        TransportConfig {
            id,
            cluster_id,
            listen_addr,
            peers: BTreeMap::new(),
            frame_bytes_max: 16 << 20,
            peer_queue_msgs_max: 1024,
            inbound_msgs_max: 4096,
            write_batch_bytes_max: 256 << 10,
            connect_backoff_min: Duration::from_millis(50),
            connect_backoff_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(2),
            pending_handshakes_max: 64,
        }
    }

    /// Adds (or replaces) a peer; convenient when building a configuration.
    pub fn with_peer(mut self, id: NodeId, addr: impl ToString) -> TransportConfig {
        self.peers.insert(id, addr.to_string());
        self
    }

    /// Checks the bounds: every one must be at least 1 and `frame_bytes_max` at most
    /// `u32::MAX`.
    pub fn validate(&self) -> io::Result<()> {
        let invalid = |what: &str| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                what.to_string(),
            ))
        };
        if self.id == NodeId(0) {
            return invalid("node id 0 is not a valid id");
        }
        if self.frame_bytes_max == 0 || u32::try_from(self.frame_bytes_max).is_err() {
            return invalid("frame_bytes_max must be in 1..=u32::MAX");
        }
        if self.peer_queue_msgs_max == 0
            || self.inbound_msgs_max == 0
            || self.write_batch_bytes_max == 0
            || self.pending_handshakes_max == 0
        {
            return invalid("queue and batch bounds must be at least 1");
        }
        if self.connect_backoff_min.is_zero() || self.connect_backoff_max < self.connect_backoff_min
        {
            return invalid("connect backoff must satisfy 0 < min <= max");
        }
        if self.connect_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return invalid("timeouts must be positive");
        }
        Ok(())
    }
}
