//! A TCP transport for [raftline-core](raftline_core): [`TcpTransport`] implements
//! [`raftline_core::driver::Transport`] over one connection per pair of nodes.
//!
//! ```no_run
//! use futures::StreamExt;
//! use raftline_core::driver::Transport;
//! use raftline_proto::{Message, MessageBody, NodeId, Term};
//! use raftline_tcp::{TcpTransport, TransportConfig};
//!
//! # async fn example() -> std::io::Result<()> {
//! let config = TransportConfig::new(NodeId(1), 42, "127.0.0.1:7001".parse().unwrap())
//!     .with_peer(NodeId(2), "127.0.0.1:7002")
//!     .with_peer(NodeId(3), "127.0.0.1:7003");
//! let (transport, mut inbound) = TcpTransport::start(config).await?;
//! // Hand `transport.clone()` to the driver; it calls `send`, which never waits:
//! transport.send(vec![Message { from: NodeId(1), to: NodeId(2), term: Term(1), body: MessageBody::TimeoutNow }]);
//! // and `inbound` is the driver's stream of received messages:
//! let _received: Option<Message> = inbound.next().await;
//! transport.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Connections
//!
//! Each pair of nodes shares one TCP connection (`TCP_NODELAY` set), used in both
//! directions. The node with the **lower id dials**, the other accepts, so simultaneous dials
//! cannot happen. The dialer keeps a connection open to every peer with a higher id, redialing
//! after a failure with exponential backoff (`connect_backoff_min` doubling up to
//! `connect_backoff_max`, each delay drawn from the upper half of the current backoff). When an
//! accepting node gets a new connection from a peer it already has one with (the peer
//! restarted), the newer connection replaces the older.
//!
//! Every peer has a bounded outbound queue (`peer_queue_msgs_max`): [`send`] only pushes into
//! it and drops (and counts) what does not fit, whether the peer is slow, unreachable or not
//! yet connected. A writer per connection drains the queue into one buffer of frames, up to
//! `write_batch_bytes_max` bytes, and writes it with one call, so under load many messages
//! share each write. Received messages go into one bounded channel (`inbound_msgs_max`)
//! shared by all connections; while it is full, connections stop reading.
//!
//! # Handshake
//!
//! The dialer sends a hello; the acceptor answers with an accept, or a reject and closes the
//! connection. Both are 36 bytes, integers little-endian:
//!
//! ```text
//! 0      4        5      6        7          8            16        24        32       36
//! +------+--------+------+--------+----------+------------+---------+---------+--------+
//! | RAFT | proto  | kind | reason | reserved | cluster id | from    | to      | crc32c |
//! |      | ver. 1 |      |        | (0)      | u64        | node id | node id | of 0.. |
//! |      |        |      |        |          |            | u64     | u64     | 32 u32 |
//! +------+--------+------+--------+----------+------------+---------+---------+--------+
//! kind: 1 hello, 2 accept, 3 reject
//! reason (reject only): 1 other cluster, 2 wrong node id, 3 unknown node id,
//!                       4 wrong direction (the higher id dialed)
//!
//!   dialer (lower id)                         acceptor (higher id)
//!     | --- hello  {cluster, from: me, to: you} ---> |  checks cluster, `to`, that `from`
//!     | <-- accept {cluster, from: me, to: you} ---- |  is a peer with a lower id
//!     | <=========== frames, both ways ============> |
//!   or
//!     | <-- reject {reason} ---- close ------------- |  (logged on both sides)
//! ```
//!
//! The whole handshake must complete within `handshake_timeout`; at most
//! `pending_handshakes_max` incoming handshakes run at once.
//!
//! # Frames
//!
//! After the handshake each direction is a sequence of frames, one message each:
//!
//! ```text
//! +------------+-------------------------------+---------------------------------+
//! | length u32 | crc32c u32 over the 4 length  | body: `length` bytes,           |
//! | LE         | bytes, then the body          | raftline_proto::encode(&Message) |
//! +------------+-------------------------------+---------------------------------+
//! ```
//!
//! The body is raftline-proto's versioned encoding (one version byte, then postcard). The receiver
//! checks `length` against `frame_bytes_max` before it allocates anything for the body. A
//! frame that is oversized, fails its checksum, does not decode, or carries a message whose
//! `from` / `to` are not the connection's two nodes closes that connection with a logged
//! reason (a `tracing` warning) and counts in [`TransportStats::frames_rejected`]; other
//! connections are unaffected and the peer may reconnect.
//!
//! The [`wire`] module exposes the encoding, for tools and tests that speak the protocol by
//! hand.
//!
//! # Not done here
//!
//! No TLS or authentication beyond the cluster id, no compression, no keepalive or write
//! timeout (a silently vanished peer is noticed when TCP gives up or the peer comes back).
//!
//! [`send`]: raftline_core::driver::Transport::send

#![deny(missing_docs)]

mod config;
mod stats;
mod transport;
pub mod wire;

pub use config::TransportConfig;
pub use stats::TransportStats;
pub use transport::TcpTransport;

// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
