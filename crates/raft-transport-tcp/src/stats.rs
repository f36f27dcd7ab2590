//! Counters of what the transport did.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the transport's counters, from [`TcpTransport::stats`](crate::TcpTransport::stats).
///
/// Every message handed to [`send`](raftline_core::driver::Transport::send) ends up counted once,
/// in `messages_sent` or one of the `dropped_*` counters, unless it is still queued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Messages written to a socket (the write returned; the peer may still lose them).
    pub messages_sent: u64,
    /// Messages decoded from peers and pushed into the inbound channel.
    pub messages_received: u64,
    /// Messages dropped because their peer's queue held `peer_queue_msgs_max` messages.
    pub dropped_queue_full: u64,
    /// Messages dropped for want of a destination: an unknown peer, this node itself, a
    /// transport already shut down, or (inbound) a dropped receiver.
    pub dropped_unroutable: u64,
    /// Outgoing messages whose encoding exceeds `frame_bytes_max`.
    pub dropped_oversized: u64,
    /// Messages lost with their connection: taken from the queue for a write that failed, or
    /// still queued when their peer was removed.
    pub dropped_in_flight: u64,
    /// Frames refused on receipt (oversized length prefix, bad checksum, undecodable body,
    /// or a message whose sender or receiver does not match the connection). Each closes
    /// its connection.
    pub frames_rejected: u64,
    /// Incoming connections refused during the handshake (another cluster, an unknown node
    /// id, a malformed or late hello).
    pub handshakes_refused: u64,
    /// Outgoing dials that failed: connect error or timeout, or a handshake refused or broken.
    pub connect_failures: u64,
    /// Connections that completed the handshake, in either direction.
    pub connections_established: u64,
    /// Connections established to a peer that had been connected before.
    pub reconnects: u64,
}

impl TransportStats {
    /// All dropped messages: the sum of the `dropped_*` counters.
    pub fn messages_dropped(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_unroutable
            + self.dropped_oversized
            + self.dropped_in_flight
    }
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) dropped_queue_full: AtomicU64,
    pub(crate) dropped_unroutable: AtomicU64,
    pub(crate) dropped_oversized: AtomicU64,
    pub(crate) dropped_in_flight: AtomicU64,
    pub(crate) frames_rejected: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) connections_established: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            messages_sent: get(&self.messages_sent),
            messages_received: get(&self.messages_received),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_unroutable: get(&self.dropped_unroutable),
            dropped_oversized: get(&self.dropped_oversized),
            dropped_in_flight: get(&self.dropped_in_flight),
            frames_rejected: get(&self.frames_rejected),
            handshakes_refused: get(&self.handshakes_refused),
            connect_failures: get(&self.connect_failures),
            connections_established: get(&self.connections_established),
            reconnects: get(&self.reconnects),
        }
    }
}
