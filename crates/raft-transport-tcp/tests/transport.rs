//! The transport over real loopback sockets: delivery, restarts, refusals, malformed frames
//! and back-pressure. Every test is bounded by a generous timeout and asserts no timing.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::StreamExt;
use raftline_core::driver::Transport;
use raftline_proto::{
    AppendRequest, Entry, EntryPayload, HeartbeatRequest, LogIndex, Message, MessageBody, NodeId,
    Term,
};
use raftline_tcp::wire::{self, Handshake, HandshakeKind, RejectReason, HANDSHAKE_LEN};
use raftline_tcp::{TcpTransport, TransportConfig, TransportStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout};

const CLUSTER: u64 = 0x5eed;
/// The bound on every test; the tests take well under a second each.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The bound on any single wait inside a test.
const WAIT: Duration = Duration::from_secs(5);
/// An address where no node of these tests listens (port 1 is privileged and unused). Peers
/// with a lower id than the node under test are never dialed, so this only names them.
const NOWHERE: &str = "127.0.0.1:1";

type Inbound = mpsc::Receiver<Message>;

fn config(id: u64) -> TransportConfig {
    let mut config = TransportConfig::new(NodeId(id), CLUSTER, "127.0.0.1:0".parse().unwrap());
    config.connect_backoff_min = Duration::from_millis(5);
    config.connect_backoff_max = Duration::from_millis(50);
    config
}

async fn start(config: TransportConfig) -> (TcpTransport, Inbound) {
    TcpTransport::start(config).await.expect("start transport")
}

/// Starts one transport per id, each with every other as a peer.
async fn cluster(ids: &[u64]) -> Vec<(TcpTransport, Inbound)> {
    let mut nodes = Vec::new();
    for &id in ids {
        nodes.push(start(config(id)).await);
    }
    let addrs: Vec<(NodeId, SocketAddr)> = nodes
        .iter()
        .map(|(t, _)| (t.id(), t.local_addr()))
        .collect();
    for (t, _) in &nodes {
        for &(id, addr) in &addrs {
            t.add_peer(id, addr);
        }
    }
    nodes
}

fn heartbeat(from: u64, to: u64, context: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(1),
        body: MessageBody::Heartbeat(HeartbeatRequest {
            leader_commit: LogIndex(0),
            context,
        }),
    }
}

fn big_append(from: u64, to: u64, bytes: usize) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(1),
        body: MessageBody::Append(AppendRequest {
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries: vec![Entry {
                term: Term(1),
                index: LogIndex(1),
                payload: EntryPayload::Normal(Bytes::from(vec![7u8; bytes])),
            }],
            leader_commit: LogIndex(0),
        }),
    }
}

async fn bounded<F: Future>(test: F) -> F::Output {
    timeout(TEST_TIMEOUT, test).await.expect("test timed out")
}

async fn recv(inbound: &mut Inbound) -> Message {
    timeout(WAIT, inbound.next())
        .await
        .expect("timed out waiting for a message")
        .expect("inbound channel closed")
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `from -> to` heartbeats until one arrives (messages sent while a connection is down
/// may be lost, as the transport allows) and returns it.
async fn deliver_eventually(
    sender: &TcpTransport,
    from: u64,
    to: u64,
    inbound: &mut Inbound,
) -> Message {
    for attempt in 0.. {
        sender.send(vec![heartbeat(from, to, attempt)]);
        if let Ok(Some(msg)) = timeout(Duration::from_millis(20), inbound.next()).await {
            return msg;
        }
        assert!(attempt < 250, "no message from {from} to {to} got through");
    }
    unreachable!()
}

/// Dials `addr` by hand, sends `hello` and returns the stream with the reply.
async fn raw_handshake(addr: SocketAddr, hello: Handshake) -> (TcpStream, Handshake) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&hello.encode()).await.unwrap();
    let mut reply = [0u8; HANDSHAKE_LEN];
    timeout(WAIT, stream.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    (stream, Handshake::decode(&reply).unwrap())
}

fn hello(cluster_id: u64, from: u64, to: u64) -> Handshake {
    Handshake {
        kind: HandshakeKind::Hello,
        cluster_id,
        from: NodeId(from),
        to: NodeId(to),
    }
}

/// Pretends to be node `from` (a lower id than `to`) and completes the handshake.
async fn raw_peer(addr: SocketAddr, from: u64, to: u64) -> TcpStream {
    let (stream, reply) = raw_handshake(addr, hello(CLUSTER, from, to)).await;
    assert_eq!(reply.kind, HandshakeKind::Accept);
    assert_eq!((reply.from, reply.to), (NodeId(to), NodeId(from)));
    stream
}

/// Waits until the peer closes `stream` (EOF or reset), discarding anything it sends.
async fn expect_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("connection was not closed")
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn frame(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_frame(msg, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_both_ways_between_three_nodes() {
    bounded(async {
        let mut nodes = cluster(&[1, 2, 3]).await;
        const PER_PAIR: u64 = 200;
        for (t, _) in &nodes {
            let from = t.id().0;
            let mut batch = Vec::new();
            for n in 0..PER_PAIR {
                for to in [1, 2, 3].into_iter().filter(|&to| to != from) {
                    batch.push(heartbeat(from, to, n));
                }
            }
            t.send(batch);
        }
        for (t, inbound) in &mut nodes {
            let me = t.id();
            let mut next = std::collections::BTreeMap::new();
            for _ in 0..2 * PER_PAIR {
                let msg = recv(inbound).await;
                assert_eq!(msg.to, me);
                let MessageBody::Heartbeat(hb) = msg.body else {
                    panic!("unexpected message {msg:?}")
                };
                // One connection per pair: messages of a pair arrive in order.
                let expected = next.entry(msg.from).or_insert(0u64);
                assert_eq!(
                    hb.context, *expected,
                    "message from {} out of order",
                    msg.from
                );
                *expected += 1;
            }
            assert_eq!(next.len(), 2);
        }
        for (t, _) in &nodes {
            // Counters move once a write returned or a push into the channel returned, which
            // on a multi-threaded runtime may be after the other side saw the message.
            wait_for("the counters", || {
                let stats = t.stats();
                stats.messages_sent == 2 * PER_PAIR && stats.messages_received == 2 * PER_PAIR
            })
            .await;
            let stats = t.stats();
            assert_eq!(stats.messages_dropped(), 0);
            assert_eq!(stats.frames_rejected, 0);
            assert!(t.is_connected(NodeId(1 + t.id().0 % 3)));
        }
        for (t, inbound) in &mut nodes {
            t.shutdown().await;
            let end = timeout(WAIT, inbound.next())
                .await
                .expect("inbound did not end");
            assert_eq!(end, None);
        }
    })
    .await;
}

#[tokio::test]
async fn reconnects_after_a_peer_restarts() {
    bounded(async {
        let (t1, mut in1) = start(config(1)).await;
        let (t2, mut in2) = start(config(2)).await;
        let (addr1, addr2) = (t1.local_addr(), t2.local_addr());
        t1.add_peer(NodeId(2), addr2);
        t2.add_peer(NodeId(1), addr1);
        deliver_eventually(&t1, 1, 2, &mut in2).await;
        deliver_eventually(&t2, 2, 1, &mut in1).await;

        // Restart the accepting node on the same address: node 1 redials.
        t2.shutdown().await;
        drop((t2, in2));
        let (t2, mut in2) = start(config(2).with_peer(NodeId(1), addr1).listen_on(addr2)).await;
        deliver_eventually(&t1, 1, 2, &mut in2).await;
        deliver_eventually(&t2, 2, 1, &mut in1).await;
        assert!(t1.stats().reconnects >= 1, "{:?}", t1.stats());

        // Restart the dialing node: its new connection replaces the old one on node 2.
        t1.shutdown().await;
        drop((t1, in1));
        let (t1, mut in1) = start(config(1).with_peer(NodeId(2), addr2).listen_on(addr1)).await;
        deliver_eventually(&t2, 2, 1, &mut in1).await;
        deliver_eventually(&t1, 1, 2, &mut in2).await;
        assert!(t2.stats().reconnects >= 1, "{:?}", t2.stats());

        t1.shutdown().await;
        t2.shutdown().await;
    })
    .await;
}

/// `TransportConfig::listen_addr` as a builder step, for restarts on a known address.
trait ListenOn {
    fn listen_on(self, addr: SocketAddr) -> Self;
}

impl ListenOn for TransportConfig {
    fn listen_on(mut self, addr: SocketAddr) -> Self {
        self.listen_addr = addr;
        self
    }
}

#[tokio::test]
async fn a_corrupted_frame_closes_only_its_connection() {
    bounded(async {
        let mut nodes = cluster(&[2, 3, 4]).await;
        // Node 1 is a peer of node 3 but never dialed by it (1 < 3); a raw stream plays it.
        let (t3, _) = &nodes[1];
        t3.add_peer(NodeId(1), NOWHERE);
        let addr3 = t3.local_addr();

        let mut raw = raw_peer(addr3, 1, 3).await;
        raw.write_all(&frame(&heartbeat(1, 3, 100))).await.unwrap();
        let msg = recv(&mut nodes[1].1).await;
        assert_eq!((msg.from, msg.to), (NodeId(1), NodeId(3)));

        // A bit flipped in the body: the checksum no longer matches.
        let mut bad = frame(&heartbeat(1, 3, 101));
        let last = bad.len() - 1;
        bad[last] ^= 0x10;
        raw.write_all(&bad).await.unwrap();
        expect_closed(&mut raw).await;
        assert_eq!(nodes[1].0.stats().frames_rejected, 1);

        // A frame with a good checksum whose body does not decode, on a new connection.
        let mut raw = raw_peer(addr3, 1, 3).await;
        let body = [0xffu8, 1, 2, 3];
        let len = (body.len() as u32).to_le_bytes();
        let mut undecodable = len.to_vec();
        undecodable.extend_from_slice(&wire::frame_checksum(len, &body).to_le_bytes());
        undecodable.extend_from_slice(&body);
        raw.write_all(&undecodable).await.unwrap();
        expect_closed(&mut raw).await;

        // A well-formed message that claims another sender than the handshake did.
        let mut raw = raw_peer(addr3, 1, 3).await;
        raw.write_all(&frame(&heartbeat(2, 3, 102))).await.unwrap();
        expect_closed(&mut raw).await;
        assert_eq!(nodes[1].0.stats().frames_rejected, 3);

        // The real connections kept working, in both directions.
        for (from, to) in [(2, 3), (3, 2), (3, 4), (4, 3), (2, 4)] {
            let sender = nodes
                .iter()
                .find(|(t, _)| t.id() == NodeId(from))
                .unwrap()
                .0
                .clone();
            let inbound = &mut nodes
                .iter_mut()
                .find(|(t, _)| t.id() == NodeId(to))
                .unwrap()
                .1;
            deliver_eventually(&sender, from, to, inbound).await;
        }
        // And "node 1" may come back.
        let mut raw = raw_peer(addr3, 1, 3).await;
        raw.write_all(&frame(&heartbeat(1, 3, 103))).await.unwrap();
        let msg = recv(&mut nodes[1].1).await;
        assert_eq!(msg, heartbeat(1, 3, 103));
        for (t, _) in &nodes {
            assert_eq!(t.stats().messages_dropped(), 0, "{:?}", t.stats());
            t.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_peer_of_another_cluster_is_refused() {
    bounded(async {
        let (t2, mut in2) = start(config(2).with_peer(NodeId(1), NOWHERE)).await;
        let addr2 = t2.local_addr();

        let (mut raw, reply) = raw_handshake(addr2, hello(CLUSTER + 1, 1, 2)).await;
        assert_eq!(
            reply.kind,
            HandshakeKind::Reject(RejectReason::ClusterMismatch)
        );
        expect_closed(&mut raw).await;
        assert_eq!(t2.stats().handshakes_refused, 1);

        // A real transport of the other cluster keeps being refused, and delivers nothing.
        let mut other = config(1).with_peer(NodeId(2), addr2);
        other.cluster_id = CLUSTER + 1;
        let (t1, _in1) = start(other).await;
        t1.send(vec![heartbeat(1, 2, 0)]);
        wait_for("repeated refusals", || {
            t2.stats().handshakes_refused >= 3 && t1.stats().connect_failures >= 2
        })
        .await;
        assert_eq!(t1.stats().connections_established, 0);
        assert!(!t2.is_connected(NodeId(1)));
        assert!(in2.try_recv().is_err(), "nothing may be delivered");
        t1.shutdown().await;
        t2.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_unknown_node_id_is_refused() {
    bounded(async {
        let (t2, mut in2) = start(
            config(2)
                .with_peer(NodeId(1), NOWHERE)
                .with_peer(NodeId(3), NOWHERE),
        )
        .await;
        let addr2 = t2.local_addr();
        for (hello, reason) in [
            (hello(CLUSTER, 42, 2), RejectReason::UnknownNode),
            (hello(CLUSTER, 1, 7), RejectReason::WrongNode),
            (hello(CLUSTER, 3, 2), RejectReason::WrongDirection),
        ] {
            let (mut raw, reply) = raw_handshake(addr2, hello).await;
            assert_eq!(reply.kind, HandshakeKind::Reject(reason));
            assert_eq!(reply.to, hello.from);
            expect_closed(&mut raw).await;
        }
        // Not a handshake at all.
        let mut raw = TcpStream::connect(addr2).await.unwrap();
        raw.write_all(&[0u8; HANDSHAKE_LEN]).await.unwrap();
        expect_closed(&mut raw).await;
        assert_eq!(t2.stats().handshakes_refused, 4);

        // A real transport that node 2 no longer knows.
        assert!(t2.remove_peer(NodeId(1)));
        let (t1, _in1) = start(config(1).with_peer(NodeId(2), addr2)).await;
        t1.send(vec![heartbeat(1, 2, 0)]);
        wait_for("a refusal of the removed node", || {
            t1.stats().connect_failures >= 2
        })
        .await;
        assert_eq!(t1.stats().connections_established, 0);
        assert!(in2.try_recv().is_err(), "nothing may be delivered");
        t1.shutdown().await;
        t2.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_oversized_length_prefix_is_refused_before_the_body_arrives() {
    bounded(async {
        let mut config2 = config(2).with_peer(NodeId(1), NOWHERE);
        config2.frame_bytes_max = 1024;
        let (t2, mut in2) = start(config2).await;
        let addr2 = t2.local_addr();
        for len in [1025u32, u32::MAX] {
            let mut raw = raw_peer(addr2, 1, 2).await;
            // Only the header: had the receiver trusted the prefix it would wait for the body
            // (with a buffer of that size) instead of closing.
            let mut header = len.to_le_bytes().to_vec();
            header.extend_from_slice(&wire::frame_checksum(len.to_le_bytes(), &[]).to_le_bytes());
            raw.write_all(&header).await.unwrap();
            expect_closed(&mut raw).await;
        }
        assert_eq!(t2.stats().frames_rejected, 2);

        // A frame of exactly the limit is delivered.
        let body_len = |m: &Message| frame(m).len() - wire::FRAME_HEADER_LEN;
        let exact = (900..1024)
            .map(|payload| big_append(1, 2, payload))
            .find(|m| body_len(m) == 1024)
            .unwrap();
        let mut raw = raw_peer(addr2, 1, 2).await;
        raw.write_all(&frame(&exact)).await.unwrap();
        assert_eq!(recv(&mut in2).await, exact);
        t2.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_full_peer_queue_drops_instead_of_blocking() {
    bounded(async {
        // Unreachable peer: nothing leaves the queue.
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = free.local_addr().unwrap();
        drop(free);
        let mut config1 = config(1).with_peer(NodeId(2), dead_addr);
        config1.peer_queue_msgs_max = 8;
        let (t1, _in1) = start(config1).await;
        t1.send((0..1000).map(|n| heartbeat(1, 2, n)).collect());
        t1.send(vec![heartbeat(1, 9, 0), heartbeat(1, 1, 0)]);
        let stats = t1.stats();
        assert_eq!(stats.dropped_queue_full, 992, "{stats:?}");
        assert_eq!(stats.dropped_unroutable, 2, "{stats:?}");
        t1.shutdown().await;
        assert_eq!(t1.stats().dropped_in_flight, 8);

        // A peer that handshakes and then never reads: the socket buffers fill, the writer
        // blocks, the queue fills, and sends still return at once.
        let stalled = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stalled_addr = stalled.local_addr().unwrap();
        let mut config1 = config(1).with_peer(NodeId(2), stalled_addr);
        config1.peer_queue_msgs_max = 8;
        config1.write_batch_bytes_max = 64 << 10;
        let (t1, _in1) = start(config1).await;
        let (mut conn, _) = stalled.accept().await.unwrap();
        let mut greeting = [0u8; HANDSHAKE_LEN];
        conn.read_exact(&mut greeting).await.unwrap();
        assert_eq!(Handshake::decode(&greeting), Ok(hello(CLUSTER, 1, 2)));
        let accept = Handshake {
            kind: HandshakeKind::Accept,
            cluster_id: CLUSTER,
            from: NodeId(2),
            to: NodeId(1),
        };
        conn.write_all(&accept.encode()).await.unwrap();
        wait_for("the connection", || t1.is_connected(NodeId(2))).await;
        let mut rounds = 0;
        while t1.stats().dropped_queue_full == 0 {
            t1.send((0..8).map(|_| big_append(1, 2, 256 << 10)).collect());
            sleep(Duration::from_millis(1)).await;
            rounds += 1;
            assert!(rounds < 2000, "the queue never filled: {:?}", t1.stats());
        }
        let stats: TransportStats = t1.stats();
        assert!(stats.messages_sent > 0, "{stats:?}");
        assert!(t1.is_connected(NodeId(2)));
        t1.shutdown().await;
        drop(conn);
    })
    .await;
}
