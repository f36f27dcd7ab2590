//! Snapshots in three-member `raft-kv` clusters of real processes, observed through each
//! member's metrics (`--listen-metrics-urls`), its log and its data:
//!
//! - a follower killed while the others write far past the compaction point is brought up to
//!   date by a snapshot and then by the log, and ends with the same data;
//! - a transfer whose connection is cut half-way continues from the bytes the follower
//!   acknowledged, not from the start, and the leader logs and counts the resumption;
//! - a transfer interrupted by a leader change resumes on the new leader at the offset the
//!   follower acknowledged, logged and counted as a resumption;
//! - a frame corrupted in flight fails the transport's frame checksum, which closes the
//!   connection; the transfer continues after the reconnect and installs a correct snapshot;
//! - a follower killed right after it received a snapshot restarts consistent and keeps up;
//! - under a long write load the log directory holds a bounded number of segment files and
//!   the snapshot directory exactly one snapshot.
//!
//! The connection tests put a TCP proxy ([`Proxy`], in this process) in front of every
//! member's peer port: every member's `--initial-cluster` names the others at their proxies
//! (each member advertises its proxy's URL with `--initial-advertise-peer-urls` while it
//! listens on its own port), so every peer connection runs through a proxy the test can
//! throttle, cut or corrupt. The harness is in `common/mod.rs`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bounded, free_port, kv_map, prefix_end, Cluster, KvState, Options, State};
use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use raftline_kv::proto::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use raftline_tcp::wire::{Handshake, FRAME_HEADER_LEN, HANDSHAKE_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Code;

const ALL: [usize; 3] = [0, 1, 2];
/// `--snapshot-count`.
const SNAPSHOT_COUNT: u64 = 100;
/// `--snapshot-catchup-entries`.
const CATCHUP_ENTRIES: u64 = 10;
/// `--snapshot-chunk-bytes` where a transfer must take many chunks.
const CHUNK_BYTES: u64 = 4096;
/// `--log-segment-bytes` unless a test needs smaller segments: small enough that creating
/// (and zero-filling) segments costs little.
const SEGMENT_BYTES: u64 = 1 << 20;
/// Every key a test writes starts with this.
const PREFIX: &str = "k/";
/// The most bytes a test's gRPC client accepts in one answer (a whole-store `Range` of a few
/// MiB; tonic's default is 4 MiB).
const RANGE_ANSWER_BYTES_MAX: usize = 64 << 20;
/// Puts in flight at once while a test loads the cluster.
const PUT_CONCURRENCY: usize = 4;
/// How long a snapshot transfer or a catch-up may take.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of a value in the tests that need a big snapshot.
const BIG_VALUE_BYTES: usize = 10 << 10;
/// Keys with a big value in those tests. The snapshot sent (at index 500) holds ~190 of
/// them: about 1.9 MB, ~470 chunks of `CHUNK_BYTES`.
const BIG_KEYS: usize = 250;
/// raftline-core's default window of snapshot chunks in flight to one follower
/// (`Config::snapshot_chunks_inflight_max`): what a resumed transfer may send twice.
const CHUNKS_INFLIGHT_MAX: u64 = 64;

/// The flags every test passes, with `chunk_bytes` as `--snapshot-chunk-bytes` (default when
/// `None`) and `segment_bytes` as `--log-segment-bytes`.
fn snapshot_flags(chunk_bytes: Option<u64>, segment_bytes: u64) -> Vec<String> {
    let mut flags = vec![
        "--snapshot-count".to_string(),
        SNAPSHOT_COUNT.to_string(),
        "--snapshot-catchup-entries".to_string(),
        CATCHUP_ENTRIES.to_string(),
        "--log-segment-bytes".to_string(),
        segment_bytes.to_string(),
    ];
    if let Some(bytes) = chunk_bytes {
        flags.extend(["--snapshot-chunk-bytes".to_string(), bytes.to_string()]);
    }
    flags
}

/// A KV client to member `i` that accepts big answers.
fn kv(cluster: &Cluster, i: usize) -> KvClient<Channel> {
    cluster
        .kv(i)
        .max_decoding_message_size(RANGE_ANSWER_BYTES_MAX)
}

/// `len` bytes that tell which key they belong to.
fn value_of(key: &str, len: usize) -> Vec<u8> {
    key.bytes()
        .chain(std::iter::once(b'='))
        .cycle()
        .take(len)
        .collect()
}

/// `n` keys `<PREFIX><tag>/<i>` with values of `len` bytes.
fn keys(tag: &str, n: usize, len: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let key = format!("{PREFIX}{tag}/{i:05}");
            let value = value_of(&key, len);
            (key, value)
        })
        .collect()
}

/// Puts every pair through member `via`, `PUT_CONCURRENCY` at a time, each retried while the
/// cluster answers Unavailable (an election) for up to the harness's leader timeout.
async fn put_all(cluster: &Cluster, via: usize, pairs: &[(String, Vec<u8>)]) {
    let queue = Arc::new(Mutex::new(pairs.iter().cloned().collect::<VecDeque<_>>()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..PUT_CONCURRENCY {
        let queue = Arc::clone(&queue);
        let mut client = kv(cluster, via);
        tasks.spawn(async move {
            loop {
                let Some((key, value)) = queue.lock().unwrap().pop_front() else {
                    return;
                };
                let deadline = Instant::now() + common::LEADER_TIMEOUT;
                loop {
                    let put = client.put(PutRequest {
                        key: key.clone().into(),
                        value: value.clone(),
                        ..PutRequest::default()
                    });
                    match put.await {
                        Ok(_) => break,
                        Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(s) => panic!("put {key}: {s:?}"),
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a put task");
    }
}

/// Every key under `PREFIX` on member `i`, read linearizably or (`serializable`) from its
/// own state.
async fn read_all(cluster: &Cluster, i: usize, serializable: bool) -> BTreeMap<String, KvState> {
    let r = kv(cluster, i)
        .range(RangeRequest {
            key: PREFIX.into(),
            range_end: prefix_end(PREFIX.as_bytes()),
            serializable,
            ..RangeRequest::default()
        })
        .await
        .unwrap_or_else(|s| panic!("range on {}: {s:?}", cluster.members[i].name))
        .into_inner();
    kv_map(&r)
}

/// Waits until every running member has applied everything, then checks that each one holds
/// exactly `expected` (key → value) with the same revisions as the others, read both from its
/// own state (serializable) and linearizably.
async fn assert_same_data(cluster: &Cluster, expected: &BTreeMap<String, Vec<u8>>) {
    let running = cluster.running();
    for &i in &running {
        cluster.wait_caught_up(i).await;
    }
    let mut reference: Option<(usize, BTreeMap<String, KvState>)> = None;
    for &i in &running {
        let name = &cluster.members[i].name;
        let local = read_all(cluster, i, true).await;
        let linearizable = read_all(cluster, i, false).await;
        assert_eq!(
            local.len(),
            linearizable.len(),
            "{name}: serializable and linearizable reads differ"
        );
        assert!(
            local == linearizable,
            "{name}: serializable and linearizable reads differ"
        );
        let values: BTreeMap<&String, &[u8]> =
            local.iter().map(|(k, (v, ..))| (k, v.as_bytes())).collect();
        let want: BTreeMap<&String, &[u8]> =
            expected.iter().map(|(k, v)| (k, v.as_slice())).collect();
        if values != want {
            let missing = want.keys().filter(|k| !values.contains_key(*k)).count();
            let extra = values.keys().filter(|k| !want.contains_key(*k)).count();
            panic!(
                "{name} holds {} keys, expected {} ({missing} missing, {extra} unexpected, the rest differ in value)",
                values.len(),
                want.len()
            );
        }
        match &reference {
            None => reference = Some((i, local)),
            Some((j, theirs)) => assert!(
                *theirs == local,
                "{name} and {} hold the same values but different revisions",
                cluster.members[*j].name
            ),
        }
    }
}

/// Member `i`'s raft id (`Status.header.member_id`).
async fn member_id(cluster: &Cluster, i: usize) -> u64 {
    cluster
        .maintenance(i)
        .status(StatusRequest {})
        .await
        .expect("a status")
        .into_inner()
        .header
        .expect("a header")
        .member_id
}

/// The value of `field=<number>` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The log lines with `message` about a transfer to node `to`.
fn transfer_lines<'a>(log: &'a str, message: &str, to: u64) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains(message) && field(l, "to") == Some(to))
        .collect()
}

const STARTS: &str = "snapshot transfer starts";
const RESUMES: &str = "snapshot transfer resumes at the acknowledged offset";
const RECEIVED: &str = "received a snapshot";

/// The names of the files in `dir` ending in `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The total size of the files in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// A TCP proxy for peer connections, with faults.
// ---------------------------------------------------------------------------------------

/// The most bytes a proxy moves per read.
const PROXY_PIECE_BYTES: usize = 16 << 10;
/// The most bytes a throttled direction moves per read (so that the pace is even).
const THROTTLED_PIECE_BYTES: usize = 1 << 10;
/// How long a proxy waits for a dialer's hello.
const PROXY_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Faults shared by every proxy of a cluster, keyed by direction: (sender id, receiver id).
#[derive(Default)]
struct Faults {
    /// Bytes per second a direction may carry.
    throttle: Mutex<HashMap<(u64, u64), u64>>,
    /// Directions in which the next frame with a body of at least this many bytes gets one
    /// byte flipped in the middle of its body (once).
    corrupt: Mutex<HashMap<(u64, u64), usize>>,
    /// Bytes flipped so far.
    corrupted: AtomicU64,
}

impl Faults {
    fn throttle(&self, from: u64, to: u64, bytes_per_second: Option<u64>) {
        let mut t = self.throttle.lock().unwrap();
        match bytes_per_second {
            Some(rate) => t.insert((from, to), rate),
            None => t.remove(&(from, to)),
        };
    }

    fn rate(&self, dir: (u64, u64)) -> Option<u64> {
        self.throttle.lock().unwrap().get(&dir).copied()
    }

    fn corrupt_next_frame(&self, from: u64, to: u64, body_bytes_min: usize) {
        self.corrupt
            .lock()
            .unwrap()
            .insert((from, to), body_bytes_min);
    }

    /// Whether to corrupt a frame of `body_len` bytes in direction `dir` (disarms).
    fn take_corrupt(&self, dir: (u64, u64), body_len: usize) -> bool {
        let mut c = self.corrupt.lock().unwrap();
        if c.get(&dir).is_some_and(|&min| body_len >= min) {
            c.remove(&dir);
            self.corrupted.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// Follows the frames of one direction of a peer connection: after `skip` handshake bytes,
/// frames of an 8-byte header (length u32 LE, crc32c) and a body of `length` bytes.
struct FrameTracker {
    skip: usize,
    header: [u8; FRAME_HEADER_LEN],
    header_have: usize,
    body_len: usize,
    body_at: usize,
}

impl FrameTracker {
    fn new(skip: usize) -> FrameTracker {
        FrameTracker {
            skip,
            header: [0; FRAME_HEADER_LEN],
            header_have: 0,
            body_len: 0,
            body_at: 0,
        }
    }

    /// Walks over `bytes` (the next bytes of the stream), flipping the middle byte of a
    /// frame body when `faults` asks for it.
    fn feed(&mut self, bytes: &mut [u8], dir: (u64, u64), faults: &Faults) {
        let mut i = 0;
        while i < bytes.len() {
            if self.skip > 0 {
                let k = self.skip.min(bytes.len() - i);
                self.skip -= k;
                i += k;
            } else if self.header_have < FRAME_HEADER_LEN {
                self.header[self.header_have] = bytes[i];
                self.header_have += 1;
                i += 1;
                if self.header_have == FRAME_HEADER_LEN {
                    let len = u32::from_le_bytes(self.header[..4].try_into().expect("4 bytes"));
                    self.body_len = len as usize;
                    self.body_at = 0;
                    if self.body_len == 0 {
                        self.header_have = 0;
                    }
                }
            } else {
                let k = (self.body_len - self.body_at).min(bytes.len() - i);
                let mid = self.body_len / 2;
                if (self.body_at..self.body_at + k).contains(&mid)
                    && faults.take_corrupt(dir, self.body_len)
                {
                    bytes[i + (mid - self.body_at)] ^= 0x5a;
                }
                self.body_at += k;
                i += k;
                if self.body_at == self.body_len {
                    self.header_have = 0;
                }
            }
        }
    }
}

/// A proxy in front of one member's peer port. Peer connections are dialed by the lower
/// node id, so a proxy carries the connections from every member with a lower id than its
/// own member's; it reads each dialer's hello to learn the two node ids.
struct Proxy {
    cut: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `port` and forwards each connection to `upstream` (both on loopback).
    async fn start(port: u16, upstream: u16, faults: Arc<Faults>) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("proxy port {port}: {e}"));
        let (cut, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let task = {
            let cut = cut.clone();
            let accepted = Arc::clone(&accepted);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let faults = Arc::clone(&faults);
                    let cut = cut.subscribe();
                    tokio::spawn(proxy_connection(client, upstream, faults, cut));
                }
            })
        };
        Proxy {
            cut,
            accepted,
            task,
        }
    }

    /// Closes every connection open through this proxy now (new ones are accepted).
    fn cut_all(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }

    /// Connections accepted so far.
    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

async fn proxy_connection(
    mut client: TcpStream,
    upstream: u16,
    faults: Arc<Faults>,
    mut cut: watch::Receiver<u64>,
) {
    let mut hello = [0u8; HANDSHAKE_LEN];
    match tokio::time::timeout(PROXY_HELLO_TIMEOUT, client.read_exact(&mut hello)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    let Ok(handshake) = Handshake::decode(&hello) else {
        return;
    };
    let (dialer, acceptor) = (handshake.from.0, handshake.to.0);
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    if server.write_all(&hello).await.is_err() {
        return;
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // The acceptor's answer to the hello comes first on the way back.
    let outbound = pump(client_read, server_write, (dialer, acceptor), &faults, 0);
    let inbound = pump(
        server_read,
        client_write,
        (acceptor, dialer),
        &faults,
        HANDSHAKE_LEN,
    );
    tokio::select! {
        () = outbound => {}
        () = inbound => {}
        _ = cut.changed() => {}
    }
    // Dropping both streams closes both connections.
}

/// Moves bytes one way until either side closes, applying the direction's faults.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: (u64, u64),
    faults: &Faults,
    skip: usize,
) {
    let mut tracker = FrameTracker::new(skip);
    let mut buf = vec![0u8; PROXY_PIECE_BYTES];
    loop {
        let rate = faults.rate(dir);
        let piece = if rate.is_some() {
            THROTTLED_PIECE_BYTES
        } else {
            PROXY_PIECE_BYTES
        };
        let n = match from.read(&mut buf[..piece]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        tracker.feed(&mut buf[..n], dir, faults);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if let Some(rate) = rate {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
    }
}

/// A cluster whose peer connections all run through proxies, with metrics; started, with a
/// leader.
struct Proxied {
    cluster: Cluster,
    proxies: Vec<Proxy>,
    faults: Arc<Faults>,
    /// Raft ids, by member index.
    ids: Vec<u64>,
}

impl Proxied {
    async fn start(flags: Vec<String>) -> Proxied {
        let faults = Arc::new(Faults::default());
        let ports: Vec<u16> = ALL.iter().map(|_| free_port()).collect();
        let mut cluster = Cluster::with_options(
            3,
            Options {
                flags,
                metrics: true,
                advertised_peer_ports: Some(ports.clone()),
            },
        );
        let mut proxies = Vec::new();
        for i in ALL {
            proxies.push(
                Proxy::start(ports[i], cluster.members[i].peer_port, Arc::clone(&faults)).await,
            );
        }
        cluster.start_members(&ALL, State::New).await;
        cluster.wait_leader(&ALL).await;
        let mut ids = Vec::new();
        for i in ALL {
            ids.push(member_id(&cluster, i).await);
        }
        assert!(
            proxies.iter().map(Proxy::accepted).sum::<u64>() >= 3,
            "the members did not connect through the proxies"
        );
        Proxied {
            cluster,
            proxies,
            faults,
            ids,
        }
    }
}

/// raftline-core's default window of append messages in flight to one follower
/// (`Config::inflight_msgs_max`). While a follower is down the leader keeps up to this many
/// appends queued for it in the transport (whose queue holds more), and delivers them when
/// it comes back: a restarted follower gets that far by log, whatever the leader compacted.
const APPENDS_INFLIGHT_MAX: usize = 256;

/// Kills a follower, then writes through the leader, one at a time, more small entries than
/// the leader keeps in flight to it (each put is an append message of its own), then `pairs`;
/// asserts that the leader's log no longer holds what the follower will need after the
/// appends that wait for it, and returns (leader, follower). `expected` gets what was written.
async fn leave_a_follower_behind(
    cluster: &mut Cluster,
    tag: &str,
    pairs: &[(String, Vec<u8>)],
    expected: &mut BTreeMap<String, Vec<u8>>,
) -> (usize, usize) {
    let leader = cluster.wait_leader(&ALL).await;
    let follower = (leader + 1) % 3;
    let early = keys(&format!("{tag}-early"), 5, 16);
    put_all(cluster, leader, &early).await;
    expected.extend(early);
    cluster.wait_caught_up(follower).await;
    let behind = cluster.metric(follower, "raft_kv_applied_index").await;
    cluster.kill(follower);

    let filler = keys(&format!("{tag}-gap"), APPENDS_INFLIGHT_MAX + 50, 16);
    put_one_at_a_time(cluster, leader, &filler).await;
    expected.extend(filler);
    put_all(cluster, leader, pairs).await;
    expected.extend(pairs.iter().cloned());
    let others: Vec<usize> = cluster.running();
    let leader = cluster.wait_leader(&others).await;
    let first = cluster.metric(leader, "raft_kv_first_index").await;
    assert!(
        first > behind + APPENDS_INFLIGHT_MAX as u64 + 10,
        "the leader's log starts at {first}: not compacted past the follower's {behind} and the appends queued for it"
    );
    (leader, follower)
}

/// Puts every pair through member `via`, one after another.
async fn put_one_at_a_time(cluster: &Cluster, via: usize, pairs: &[(String, Vec<u8>)]) {
    for (key, value) in pairs {
        let value = String::from_utf8(value.clone()).expect("a UTF-8 value");
        cluster.put_retrying(via, key, &value).await;
    }
}

/// Test (a): a follower stopped while the others write 600 entries (six snapshots at
/// `--snapshot-count 100`, the log compacted behind each) is brought up to date by one
/// snapshot and then by the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_catches_up_by_snapshot_then_by_log() {
    bounded(Duration::from_secs(90), async {
        let mut cluster = Cluster::start_with(
            3,
            Options {
                flags: snapshot_flags(None, SEGMENT_BYTES),
                metrics: true,
                ..Options::default()
            },
        )
        .await;
        let mut expected = BTreeMap::new();
        let (leader, follower) =
            leave_a_follower_behind(&mut cluster, "a", &keys("load", 600, 64), &mut expected).await;
        let leader_snapshot = cluster.metric(leader, "raft_kv_snapshot_last_index").await;
        assert!(
            cluster
                .metric(leader, "raft_kv_snapshots_taken_total")
                .await
                >= 6,
            "600 writes at --snapshot-count 100 take at least 6 snapshots"
        );

        cluster.restart(follower, State::Existing).await;
        cluster
            .wait_metric(
                follower,
                "raft_kv_snapshots_installed_total",
                CATCH_UP_TIMEOUT,
                |n| n >= 1,
            )
            .await;
        let installed_at = cluster
            .metric(follower, "raft_kv_snapshot_last_index")
            .await;
        // Then by log: new writes reach it as entries, not as another snapshot.
        let after = keys("after", 50, 64);
        put_all(&cluster, leader, &after).await;
        expected.extend(after);
        assert_same_data(&cluster, &expected).await;

        let m = cluster.metrics(follower).await.unwrap();
        assert_eq!(m["raft_kv_snapshots_installed_total"], 1, "{m:?}");
        assert_eq!(m["raft_kv_snapshots_rejected_total"], 0, "{m:?}");
        assert!(m["raft_kv_snapshot_chunks_received_total"] >= 1, "{m:?}");
        assert!(
            m["raft_kv_first_index"] > 1,
            "the follower's log starts after the snapshot: {m:?}"
        );
        assert!(
            m["raft_kv_snapshot_last_index"] >= leader_snapshot,
            "the follower holds the leader's snapshot at {leader_snapshot} or a later one: {m:?}"
        );
        assert!(
            m["raft_kv_applied_index"] >= installed_at + 50,
            "the 50 writes after the snapshot at {installed_at} were applied from the log: {m:?}"
        );
        let l = cluster.metrics(leader).await.unwrap();
        assert!(l["raft_kv_snapshot_transfers_started_total"] >= 1, "{l:?}");
        assert_eq!(l["raft_kv_is_leader"], 1, "{l:?}");
        assert_eq!(m["raft_kv_is_leader"], 0, "{m:?}");
        assert_eq!(m["raft_kv_term"], l["raft_kv_term"]);
        let follower_log = cluster.members[follower].log_text();
        assert_eq!(follower_log.matches(RECEIVED).count(), 1, "{follower_log}");
    })
    .await;
}

/// Throttle of the leader → follower direction while a transfer is to be interrupted, in
/// bytes per second: the ~2.5 MiB snapshot takes a few seconds, so the interruption lands
/// part-way.
const TRANSFER_THROTTLE: u64 = 1 << 20;
/// Chunks the follower must have received before the test interrupts the transfer.
const INTERRUPT_AFTER_CHUNKS: u64 = 160;

/// Starts a transfer to a follower left behind, throttled, and waits until it is part-way.
/// Returns (leader, follower, chunks the follower had received).
async fn start_a_slow_transfer(
    p: &mut Proxied,
    expected: &mut BTreeMap<String, Vec<u8>>,
) -> (usize, usize, u64) {
    let pairs = keys("big", BIG_KEYS, BIG_VALUE_BYTES);
    let (leader, follower) = leave_a_follower_behind(&mut p.cluster, "b", &pairs, expected).await;
    p.faults
        .throttle(p.ids[leader], p.ids[follower], Some(TRANSFER_THROTTLE));
    p.cluster.restart(follower, State::Existing).await;
    let chunks = p
        .cluster
        .wait_metric(
            follower,
            "raft_kv_snapshot_chunks_received_total",
            CATCH_UP_TIMEOUT,
            |n| n >= INTERRUPT_AFTER_CHUNKS,
        )
        .await;
    (leader, follower, chunks)
}

/// The size of the snapshot the leader's log says it started sending to `to`.
fn transfer_size(leader_log: &str, to: u64) -> u64 {
    let starts = transfer_lines(leader_log, STARTS, to);
    assert_eq!(starts.len(), 1, "one transfer started:\n{leader_log}");
    field(starts[0], "bytes").expect("a bytes field")
}

/// What a transfer interrupted part-way looked like once the follower installed the snapshot.
struct Interrupted {
    /// Chunks the follower had received when the test interrupted the transfer.
    chunks_before: u64,
    /// The snapshot's size, from the leader's "transfer starts" line.
    size: u64,
    leader_metrics: BTreeMap<String, u64>,
    follower_metrics: BTreeMap<String, u64>,
}

impl Interrupted {
    /// Checks that the follower installed one valid snapshot and that the transfer was not
    /// started over: beyond the snapshot's bytes the leader sent again less than the follower
    /// held before the interruption (starting over would resend all of that).
    fn assert_continued(&self) {
        let (l, f) = (&self.leader_metrics, &self.follower_metrics);
        assert!(
            self.size > self.chunks_before * CHUNK_BYTES,
            "the interruption landed part-way"
        );
        assert_eq!(f["raft_kv_snapshots_installed_total"], 1, "{f:?}");
        assert_eq!(f["raft_kv_snapshots_rejected_total"], 0, "{f:?}");
        assert_eq!(l["raft_kv_snapshot_transfers_started_total"], 1, "{l:?}");
        let resent = l["raft_kv_snapshot_bytes_sent_total"].saturating_sub(self.size);
        let held = self.chunks_before * CHUNK_BYTES;
        assert!(
            resent < held,
            "{resent} bytes sent again, though the follower held {held} before the interruption: the transfer started over"
        );
        // A resumed transfer resends at most the window in flight at the interruption (and
        // one more per re-probe of raftline-core's stall detection).
        assert!(
            resent <= 2 * CHUNKS_INFLIGHT_MAX * CHUNK_BYTES,
            "{resent} bytes sent again"
        );
        assert!(f["raft_kv_snapshot_chunks_received_total"] >= self.size.div_ceil(CHUNK_BYTES));
    }
}

/// Test (b): cuts every connection through the proxies in front of the leader and of the
/// follower while the follower has received part of the snapshot, then waits until the
/// follower installed it and checks that its data equals the others'.
async fn cut_a_transfer_part_way() -> Interrupted {
    let mut p = Proxied::start(snapshot_flags(Some(CHUNK_BYTES), SEGMENT_BYTES)).await;
    let mut expected = BTreeMap::new();
    let (leader, follower, chunks_before) = start_a_slow_transfer(&mut p, &mut expected).await;
    p.proxies[leader].cut_all();
    p.proxies[follower].cut_all();
    let cut_at = Instant::now();
    let installed = p
        .cluster
        .metric(follower, "raft_kv_snapshots_installed_total")
        .await;
    assert_eq!(installed, 0, "the cut came after the transfer completed");
    p.faults.throttle(p.ids[leader], p.ids[follower], None);

    p.cluster
        .wait_metric(
            follower,
            "raft_kv_snapshots_installed_total",
            CATCH_UP_TIMEOUT,
            |n| n >= 1,
        )
        .await;
    eprintln!("installed {:?} after the cut", cut_at.elapsed());
    assert_same_data(&p.cluster, &expected).await;
    let leader_log = p.cluster.members[leader].log_text();
    let outcome = Interrupted {
        chunks_before,
        size: transfer_size(&leader_log, p.ids[follower]),
        leader_metrics: p.cluster.metrics(leader).await.unwrap(),
        follower_metrics: p.cluster.metrics(follower).await.unwrap(),
    };
    eprintln!(
        "snapshot {} bytes, cut after {chunks_before} chunks; leader {:?}",
        outcome.size, outcome.leader_metrics
    );
    outcome.assert_continued();
    // The leader's stalled transfer probed again, learned the follower's offset, and logged and
    // counted the resumption.
    if let Err(e) = resume_logged(
        chunks_before,
        outcome.size,
        &leader_log,
        p.ids[follower],
        "the leader",
        &outcome.leader_metrics,
    ) {
        panic!("{e}; the leader's log:\n{leader_log}");
    }
    outcome
}

/// Checks that `log` (of the member that resumed the transfer) has the resume line for `to`
/// at an offset at or past what the follower held before the interruption (`chunks_before`
/// chunks of a snapshot of `size` bytes), and that the member counted it in
/// `snapshot_transfers_resumed_total` (`metrics`). Returns the offset.
fn resume_logged(
    chunks_before: u64,
    size: u64,
    log: &str,
    to: u64,
    who: &str,
    metrics: &BTreeMap<String, u64>,
) -> Result<u64, String> {
    let resumes = transfer_lines(log, RESUMES, to);
    let Some(line) = resumes.first() else {
        return Err(format!("{who} did not log {RESUMES:?}"));
    };
    let offset = field(line, "offset").ok_or_else(|| format!("no offset in {line:?}"))?;
    if offset < chunks_before * CHUNK_BYTES || offset >= size {
        return Err(format!(
            "{who} resumed at {offset}; the follower had {chunks_before} chunks of {CHUNK_BYTES} of {size} bytes before the interruption"
        ));
    }
    if metrics["raft_kv_snapshot_transfers_resumed_total"] < 1 {
        return Err(format!("{who} did not count the resumption: {metrics:?}"));
    }
    Ok(offset)
}

/// Test (b): a transfer whose connection is cut part-way continues at the offset the
/// follower acknowledged (checked by what the leader sent and the follower received), and the
/// leader logs and counts the resumption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_transfer_resumes_at_the_acknowledged_offset() {
    bounded(Duration::from_secs(120), async {
        cut_a_transfer_part_way().await;
    })
    .await;
}

/// Test (b) across a leader change: the leader is paused (SIGSTOP) part-way through a
/// transfer; the member elected in its place sends its own copy of the same snapshot (taken
/// at the same index from the same entries, so byte for byte the same), and its probe finds
/// the part the follower holds: it resumes there, and logs and counts the resumption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_interrupted_by_a_leader_change_resumes_on_the_new_leader() {
    bounded(Duration::from_secs(120), async {
        let mut p = Proxied::start(snapshot_flags(Some(CHUNK_BYTES), SEGMENT_BYTES)).await;
        let mut expected = BTreeMap::new();
        // The new leader appends a no-op when elected: it must not land on a snapshot index,
        // or the new leader sends that newer snapshot from the start instead.
        let leader = p.cluster.wait_leader(&ALL).await;
        let (leader, follower, chunks_before) = loop {
            let last = p.cluster.metric(leader, "raft_kv_last_index").await;
            let planned = last + 5 + APPENDS_INFLIGHT_MAX as u64 + 50 + BIG_KEYS as u64;
            if (planned + 1..=planned + 3).all(|i| i % SNAPSHOT_COUNT != 0) {
                break start_a_slow_transfer(&mut p, &mut expected).await;
            }
            put_all(&p.cluster, leader, &keys("align", 2, 8)).await;
            expected.extend(keys("align", 2, 8));
        };
        let other = 3 - leader - follower;
        p.cluster.pause(leader);
        let new_leader = p.cluster.wait_leader(&[other, follower]).await;
        assert_eq!(
            new_leader, other,
            "the follower without the data cannot lead"
        );
        p.cluster.resume(leader);
        p.faults.throttle(p.ids[leader], p.ids[follower], None);
        p.cluster
            .wait_metric(
                follower,
                "raft_kv_snapshots_installed_total",
                CATCH_UP_TIMEOUT,
                |n| n >= 1,
            )
            .await;
        assert_same_data(&p.cluster, &expected).await;

        let old_log = p.cluster.members[leader].log_text();
        let size = transfer_size(&old_log, p.ids[follower]);
        let new_log = p.cluster.members[other].log_text();
        let m = p.cluster.metrics(other).await.unwrap();
        let f = p.cluster.metrics(follower).await.unwrap();
        eprintln!(
            "snapshot {size} bytes, leader paused after {chunks_before} chunks; new leader {m:?}"
        );
        let offset = resume_logged(
            chunks_before,
            size,
            &new_log,
            p.ids[follower],
            "the new leader",
            &m,
        )
        .unwrap_or_else(|e| panic!("{e}; its log:\n{new_log}"));
        assert_eq!(m["raft_kv_snapshot_transfers_started_total"], 0, "{m:?}");
        // The new leader sent only what the follower lacked (and what was in flight).
        assert!(
            m["raft_kv_snapshot_bytes_sent_total"]
                <= size - offset + CHUNKS_INFLIGHT_MAX * CHUNK_BYTES,
            "{m:?}"
        );
        assert_eq!(f["raft_kv_snapshots_installed_total"], 1, "{f:?}");
        assert_eq!(f["raft_kv_snapshots_rejected_total"], 0, "{f:?}");
    })
    .await;
}

/// Test (c): one byte flipped inside a snapshot chunk's frame on its way to the follower.
/// The transport's frame checksum (crc32c over length and body) catches it before raftline-core
/// sees the chunk: the follower closes the connection, the dialer reconnects, and the
/// transfer continues from what the follower acknowledged. (A chunk whose own checksum fails
/// — rejected and resent by raftline-core — cannot be produced through the transport; raftline-core's
/// simulator covers it: `corrupt_chunks_are_rejected_and_resent` in
/// `crates/raft-core/tests/snapshots.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_frame_closes_the_connection_and_the_transfer_continues() {
    bounded(Duration::from_secs(120), async {
        let mut p = Proxied::start(snapshot_flags(Some(CHUNK_BYTES), SEGMENT_BYTES)).await;
        let mut expected = BTreeMap::new();
        let (leader, follower, chunks) = start_a_slow_transfer(&mut p, &mut expected).await;
        p.faults
            .corrupt_next_frame(p.ids[leader], p.ids[follower], CHUNK_BYTES as usize);
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        while p.faults.corrupted.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "no chunk frame passed the proxy");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        p.faults.throttle(p.ids[leader], p.ids[follower], None);
        p.cluster
            .wait_metric(
                follower,
                "raft_kv_snapshots_installed_total",
                CATCH_UP_TIMEOUT,
                |n| n >= 1,
            )
            .await;
        assert_same_data(&p.cluster, &expected).await;

        let follower_log = p.cluster.members[follower].log_text();
        assert!(
            follower_log.contains("frame checksum mismatch"),
            "the follower's transport did not refuse the corrupted frame:\n{follower_log}"
        );
        let leader_log = p.cluster.members[leader].log_text();
        let outcome = Interrupted {
            chunks_before: chunks,
            size: transfer_size(&leader_log, p.ids[follower]),
            leader_metrics: p.cluster.metrics(leader).await.unwrap(),
            follower_metrics: p.cluster.metrics(follower).await.unwrap(),
        };
        eprintln!(
            "snapshot {} bytes, corrupted after {chunks}+ chunks; leader {:?}",
            outcome.size, outcome.leader_metrics
        );
        // The chunk never reached raftline-core, so its own checksum had nothing to reject
        // (`snapshots_rejected_total` stays 0), and the transfer went on from what the
        // follower held.
        outcome.assert_continued();
    })
    .await;
}

/// When test (d) kills the follower.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// As soon as its metrics show all chunks of the snapshot but the last received: before
    /// it has the whole snapshot, or while it verifies and keeps it, or just after.
    LastChunkDue,
    /// As soon as it logs "received a snapshot" (kept and verified): while it installs it, or
    /// just after.
    ReceivedLogged,
}

/// Test (d): a follower SIGKILLed right after it received a snapshot restarts into a
/// consistent state from its data directory and keeps up with new writes; twice, at two
/// kill points. (In practice both kills land after the install: the driver installs a
/// snapshot within a millisecond or so of keeping it. Where each kill landed is printed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_after_receiving_a_snapshot_restarts_consistent() {
    const CHUNK: u64 = 64 << 10;
    bounded(Duration::from_secs(120), async {
        let mut cluster = Cluster::start_with(
            3,
            Options {
                flags: snapshot_flags(Some(CHUNK), SEGMENT_BYTES),
                metrics: true,
                ..Options::default()
            },
        )
        .await;
        let mut expected = BTreeMap::new();
        for (round, kill_at) in [KillAt::LastChunkDue, KillAt::ReceivedLogged]
            .into_iter()
            .enumerate()
        {
            let tag = format!("d{round}");
            let pairs = keys(&format!("{tag}-big"), BIG_KEYS, BIG_VALUE_BYTES);
            let (leader, follower) =
                leave_a_follower_behind(&mut cluster, &tag, &pairs, &mut expected).await;
            let follower_id = cluster.members[follower].name.clone();
            let started = cluster
                .metric(leader, "raft_kv_snapshot_transfers_started_total")
                .await;
            cluster.spawn(follower, State::Existing);
            let deadline = Instant::now() + CATCH_UP_TIMEOUT;
            let log_path = cluster.members[follower].logs().last().unwrap().clone();
            match kill_at {
                KillAt::ReceivedLogged => loop {
                    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if text.contains(RECEIVED) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "no snapshot received:\n{text}");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                },
                KillAt::LastChunkDue => {
                    // The snapshot's size, once the leader starts the transfer.
                    let size = loop {
                        let log = cluster.members[leader].log_text();
                        let starts: Vec<u64> = log
                            .lines()
                            .filter(|l| l.contains(STARTS))
                            .filter_map(|l| field(l, "bytes"))
                            .collect();
                        if starts.len() as u64 > started {
                            break *starts.last().expect("one");
                        }
                        assert!(Instant::now() < deadline, "no transfer started");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    };
                    let chunks = size.div_ceil(CHUNK);
                    loop {
                        let received = cluster.metrics(follower).await.ok().and_then(|m| {
                            m.get("raft_kv_snapshot_chunks_received_total").copied()
                        });
                        if received.is_some_and(|n| n + 1 >= chunks) {
                            break;
                        }
                        assert!(Instant::now() < deadline, "not all {chunks} chunks received");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            cluster.kill(follower);
            // Where the kill landed. An install that completed moved the log to a fresh
            // segment file; a snapshot kept has its `.meta` file.
            let killed_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let data_dir = &cluster.members[follower].data_dir;
            eprintln!(
                "round {round}: killed {follower_id} at {kill_at:?}; logged {RECEIVED:?}: {}; log segments {:?}; snapshot files {:?}",
                killed_log.contains(RECEIVED),
                files_ending(&data_dir.join("log"), ".seg"),
                files_ending(&data_dir.join("snap"), ""),
            );
            let kept = killed_log.contains(RECEIVED);

            cluster.restart(follower, State::Existing).await;
            assert_same_data(&cluster, &expected).await;
            let more = keys(&format!("{tag}-more"), 150, 64);
            put_all(&cluster, leader, &more).await;
            expected.extend(more);
            assert_same_data(&cluster, &expected).await;

            let f = cluster.metrics(follower).await.unwrap();
            let l = cluster.metrics(leader).await.unwrap();
            assert_eq!(f["raft_kv_applied_index"], l["raft_kv_applied_index"], "{f:?} / {l:?}");
            assert!(f["raft_kv_first_index"] > 1, "{f:?}");
            assert_eq!(f["raft_kv_snapshots_rejected_total"], 0, "{f:?}");
            let transfers = l["raft_kv_snapshot_transfers_started_total"] - started;
            if kept {
                // The snapshot it kept was restored at start, and the log continued after
                // it: no second transfer.
                assert_eq!(transfers, 1, "a second transfer was needed: {l:?} / {f:?}");
                assert_eq!(f["raft_kv_snapshots_installed_total"], 0, "{f:?}");
            } else {
                // Killed before it kept the snapshot: it may need the transfer again.
                assert!((1..=2).contains(&transfers), "{l:?}");
                assert!(f["raft_kv_snapshots_installed_total"] <= 1, "{f:?}");
            }
        }
    })
    .await;
}

/// Test (e): 2000 writes with `--snapshot-count 100 --snapshot-catchup-entries 10` and 16 KiB
/// log segments. Without compaction the log would need dozens of segments; with it each
/// member keeps a few, and exactly one snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_bounded_under_a_long_write_load() {
    const SEGMENT: u64 = 16 << 10;
    const ROUNDS: usize = 4;
    const PUTS_PER_ROUND: usize = 500;
    const VALUE_BYTES: usize = 100;
    // Entries a member keeps: up to `--snapshot-count` since the last snapshot plus the
    // catch-up entries behind it, ~110 entries of ~150 bytes in 16 KiB segments: two or three
    // segments, plus the one being written, plus the one prepared ahead.
    const SEGMENTS_MAX: usize = 6;
    bounded(Duration::from_secs(120), async {
        let cluster = Cluster::start_with(
            3,
            Options {
                flags: snapshot_flags(None, SEGMENT),
                metrics: true,
                ..Options::default()
            },
        )
        .await;
        let leader = cluster.wait_leader(&ALL).await;
        let mut expected = BTreeMap::new();
        let mut most_segments = 0;
        let mut most_bytes = 0;
        for round in 0..ROUNDS {
            let pairs = keys(&format!("r{round}"), PUTS_PER_ROUND, VALUE_BYTES);
            put_all(&cluster, leader, &pairs).await;
            expected.extend(pairs);
            for i in ALL {
                cluster.wait_caught_up(i).await;
            }
            for i in ALL {
                let m = &cluster.members[i];
                let log = m.data_dir.join("log");
                let snap = m.data_dir.join("snap");
                // Compaction runs behind the apply: give it a moment to delete segments.
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let segments = files_ending(&log, ".seg").len();
                    let settled = segments <= SEGMENTS_MAX
                        && files_ending(&snap, ".snap").len() == 1
                        && files_ending(&snap, ".meta").len() == 1;
                    if settled || Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let segments = files_ending(&log, ".seg");
                let bytes = dir_bytes(&log);
                most_segments = most_segments.max(segments.len());
                most_bytes = most_bytes.max(bytes);
                assert!(
                    segments.len() <= SEGMENTS_MAX,
                    "round {round}: {} holds {} segments: {segments:?}",
                    m.name,
                    segments.len()
                );
                let snaps = files_ending(&snap, ".snap");
                let metas = files_ending(&snap, ".meta");
                assert_eq!(snaps.len(), 1, "round {round}: {}: {snaps:?}", m.name);
                assert_eq!(metas.len(), 1, "round {round}: {}: {metas:?}", m.name);
                assert_eq!(
                    snaps[0].trim_end_matches(".snap"),
                    metas[0].trim_end_matches(".meta"),
                    "{}: the data and metadata of one snapshot",
                    m.name
                );
                let all_snap_files = files_ending(&snap, "");
                assert_eq!(all_snap_files.len(), 2, "{}: {all_snap_files:?}", m.name);
                let mx = cluster.metrics(i).await.unwrap();
                let (first, last) = (mx["raft_kv_first_index"], mx["raft_kv_last_index"]);
                assert!(
                    last - first < SNAPSHOT_COUNT + CATCHUP_ENTRIES + 10,
                    "round {round}: {} holds entries {first}..={last}",
                    m.name
                );
            }
        }
        eprintln!(
            "after {} puts: at most {most_segments} segment files, {most_bytes} bytes in a log directory",
            ROUNDS * PUTS_PER_ROUND
        );
        // What compaction saved: the log would otherwise hold every entry.
        let last = cluster.metric(leader, "raft_kv_last_index").await;
        assert!(last >= (ROUNDS * PUTS_PER_ROUND) as u64);
        assert!(
            most_bytes < last * VALUE_BYTES as u64 / 2,
            "{most_bytes} bytes of log for {last} entries of over {VALUE_BYTES} bytes"
        );
        assert_same_data(&cluster, &expected).await;
    })
    .await;
}

#[test]
fn the_frame_tracker_flips_one_byte_in_the_middle_of_a_big_frame_body() {
    let faults = Faults::default();
    let dir = (1, 2);
    let mut stream = vec![7u8; HANDSHAKE_LEN];
    for len in [10usize, 5000, 6000] {
        stream.extend_from_slice(&(len as u32).to_le_bytes());
        stream.extend_from_slice(&[0; 4]);
        stream.extend(std::iter::repeat_n(0u8, len));
    }
    let original = stream.clone();
    faults.corrupt_next_frame(1, 2, 4096);
    let mut tracker = FrameTracker::new(HANDSHAKE_LEN);
    // In uneven pieces, as reads return them.
    let mut at = 0;
    for piece in [3usize, 40, 1, 2500, 999, 7000, 100_000] {
        let end = (at + piece).min(stream.len());
        tracker.feed(&mut stream[at..end], dir, &faults);
        at = end;
    }
    let diffs: Vec<usize> = (0..stream.len())
        .filter(|&i| stream[i] != original[i])
        .collect();
    let second_body = HANDSHAKE_LEN + FRAME_HEADER_LEN + 10 + FRAME_HEADER_LEN;
    assert_eq!(diffs, vec![second_body + 2500]);
    assert_eq!(faults.corrupted.load(Ordering::Relaxed), 1);
    let unused: HashSet<(u64, u64)> = faults.corrupt.lock().unwrap().keys().copied().collect();
    assert!(unused.is_empty());
}
