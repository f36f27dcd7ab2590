//! etcd's MVCC history, Watch, Lease and space quota under faults, in three-member `raft-kv`
//! clusters of real processes, through raft-kv's own gRPC clients:
//!
//! 1. a watcher on a follower, resuming from its last revision + 1 (on the same or another
//!    member) whenever its stream breaks or it moves, while another client writes and the
//!    leader, then the watched member, are SIGKILLed and restarted, receives every
//!    acknowledged write exactly once, in revision order, with no gap;
//! 2. a lease kept alive through a follower survives a SIGKILL of the leader; a lease nobody
//!    keeps alive expires within a bounded time, never before a new leader gave it a full
//!    TTL, and its keys go at the same revision on every member;
//! 3. past `--quota-backend-bytes`, writes fail with etcd's error and a NOSPACE alarm is
//!    raised; acknowledged data stays readable, deletes work, and after deleting,
//!    compacting and disarming, writes work again;
//! 4. the history (reads at old revisions, the compaction point, `HashKV`) is the same on
//!    every member after restarts and snapshot installs;
//! 5. bad watch requests get etcd's answers on a stream that goes on serving.
//!
//! The harness is in `common/mod.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    assert_acked_present, bounded, channel, kv_map, prefix_end, spawn_writer, Ack, Cluster,
    KvState, Options, State,
};
use raftline_kv::proto::etcdserverpb::alarm_request::AlarmAction;
use raftline_kv::proto::etcdserverpb::lease_client::LeaseClient;
use raftline_kv::proto::etcdserverpb::watch_client::WatchClient;
use raftline_kv::proto::etcdserverpb::{
    watch_request, AlarmMember, AlarmRequest, AlarmType, CompactionRequest, DeleteRangeRequest,
    HashKvRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
    WatchResponse,
};
use raftline_kv::proto::mvccpb::event::EventType;
use raftline_kv::proto::mvccpb::Event;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

/// One member's whole key space at one revision, or the error reading it.
type ReadAt = Result<BTreeMap<String, KvState>, (Code, String)>;

const ALL: [usize; 3] = [0, 1, 2];

/// etcd's message for a write past the space quota.
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
/// etcd's message for a read below the compaction point.
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

// ---------------------------------------------------------------------------------------------
// Helpers

/// An event as a test compares it: (type, key, value, mod_revision).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    kind: EventType,
    key: String,
    value: String,
    revision: i64,
}

fn seen(e: &Event) -> Seen {
    let kv = e.kv.clone().unwrap_or_default();
    Seen {
        kind: EventType::try_from(e.r#type).unwrap_or(EventType::Put),
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: String::from_utf8_lossy(&kv.value).into_owned(),
        revision: kv.mod_revision,
    }
}

fn create(key: &str, range_end: &[u8], start_revision: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: key.into(),
                range_end: range_end.to_vec(),
                start_revision,
                ..WatchCreateRequest::default()
            },
        )),
    }
}

/// A watch stream to the member at client port `port`, with `first` as its first request;
/// more requests go through the sender.
async fn open_watch(
    port: u16,
    first: WatchRequest,
) -> Result<(mpsc::Sender<WatchRequest>, Streaming<WatchResponse>), Status> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.expect("an open channel");
    let stream = WatchClient::new(channel(port))
        .watch(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, stream))
}

/// The next response of a watch stream within `limit`; panics on an error, an end or a
/// timeout.
async fn next_response(stream: &mut Streaming<WatchResponse>, limit: Duration) -> WatchResponse {
    match tokio::time::timeout(limit, stream.message()).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => panic!("the watch stream ended"),
        Ok(Err(e)) => panic!("the watch stream failed: {e:?}"),
        Err(_) => panic!("no watch response within {limit:?}"),
    }
}

/// Member `i`'s id.
async fn member_id(cluster: &Cluster, i: usize) -> u64 {
    cluster
        .status(i)
        .await
        .expect("a status")
        .header
        .expect("a header")
        .member_id
}

/// A `Range` of `[key, range_end)` at `revision` (0: the current one) on member `i`.
async fn range_at(
    cluster: &Cluster,
    i: usize,
    key: &str,
    range_end: &[u8],
    revision: i64,
    serializable: bool,
) -> Result<BTreeMap<String, KvState>, (Code, String)> {
    cluster
        .kv(i)
        .range(RangeRequest {
            key: key.into(),
            range_end: range_end.to_vec(),
            revision,
            serializable,
            ..RangeRequest::default()
        })
        .await
        .map(|r| kv_map(&r.into_inner()))
        .map_err(|s| (s.code(), s.message().to_string()))
}

/// A linearizable `Range` of a prefix on member `i`, retried while the cluster cannot answer
/// (an election), for up to 10 s.
async fn range_prefix_retrying(
    cluster: &Cluster,
    i: usize,
    prefix: &str,
) -> BTreeMap<String, KvState> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cluster.range_prefix(i, prefix).await {
            Ok(r) => return kv_map(&r),
            Err(s) => {
                assert!(
                    Instant::now() < deadline,
                    "range {prefix} on {}: {s:?}",
                    cluster.members[i].name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A resuming watcher across leader kills

/// What a resuming watcher did.
#[derive(Default, Debug)]
struct ResumeLog {
    /// Every event received, in order.
    events: Vec<Seen>,
    /// Each stream opened: (member, start revision).
    streams: Vec<(usize, i64)>,
    /// Why streams ended (errors, ends, failed opens).
    breaks: Vec<String>,
    /// Responses a correct server never sends (cancellations, revisions out of order).
    violations: Vec<String>,
}

/// Watches `prefix` from `start` on, through the members (index, client port) of `members`:
/// opens a stream on `members[*target]`; whenever that stream breaks or cannot be opened, it
/// resumes on the next member of `members` (in turn), and whenever `target` changes, on the
/// member it names; each time at the revision after the last event received.
async fn resuming_watcher(
    members: Vec<(usize, u16)>,
    prefix: String,
    start: i64,
    mut target: tokio::sync::watch::Receiver<usize>,
    log: Arc<Mutex<ResumeLog>>,
) {
    let end = prefix_end(prefix.as_bytes());
    let mut next = start;
    let mut at = *target.borrow_and_update();
    loop {
        let (member, port) = members[at];
        let opened = tokio::time::timeout(
            Duration::from_secs(2),
            open_watch(port, create(&prefix, &end, next)),
        )
        .await;
        let (tx, mut stream) = match opened {
            Ok(Ok(s)) => s,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => format!("opening on n{}: {}", member + 1, e.message()),
                    _ => format!("opening on n{}: timed out", member + 1),
                };
                log.lock().unwrap().breaks.push(why);
                tokio::time::sleep(Duration::from_millis(100)).await;
                at = (at + 1) % members.len();
                continue;
            }
        };
        log.lock().unwrap().streams.push((member, next));
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                moved = target.changed() => {
                    if moved.is_err() {
                        return;
                    }
                    at = *target.borrow_and_update();
                    break;
                }
            };
            let mut log = log.lock().unwrap();
            let broke = match message {
                Ok(Some(r)) => {
                    if r.canceled {
                        log.violations
                            .push(format!("n{}: canceled: {r:?}", member + 1));
                    }
                    for e in &r.events {
                        let s = seen(e);
                        if s.revision < next {
                            log.violations.push(format!(
                                "n{}: event at {} after the watcher asked for {next}: {s:?}",
                                member + 1,
                                s.revision
                            ));
                        }
                        next = s.revision + 1;
                        log.events.push(s);
                    }
                    r.canceled.then(|| "canceled".to_string())
                }
                Ok(None) => Some("stream ended".to_string()),
                Err(e) => Some(format!("{:?}: {}", e.code(), e.message())),
            };
            if let Some(why) = broke {
                log.breaks.push(format!("n{}: {why}", member + 1));
                at = (at + 1) % members.len();
                break;
            }
        }
        drop(tx);
    }
}

/// Test 1: a watcher on a follower, while another follower's client writes unique keys and
/// the leader is SIGKILLed and restarted, then the watched member is SIGKILLed and
/// restarted. The watcher resumes from its last revision + 1 on the next member whenever
/// its stream breaks, and is moved (the same way) to each restarted member while it catches
/// up. It receives every acknowledged write, each event once, in strictly increasing
/// revision order, and exactly the revisions the final state holds (no gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resuming_watcher_sees_each_acknowledged_write_once_across_kills() {
    bounded(Duration::from_secs(60), async {
        const PREFIX: &str = "w/";
        let mut cluster = Cluster::start(3).await;
        let leader = cluster.wait_leader(&ALL).await;
        let watched = (leader + 1) % 3;
        let writer_via = (leader + 2) % 3;
        let start = cluster
            .status(watched)
            .await
            .expect("a status")
            .header
            .expect("a header")
            .revision
            + 1;
        let log = Arc::new(Mutex::new(ResumeLog::default()));
        // Positions in the watcher's list: 0 the watched member, 1 the writer's, 2 the leader.
        let members = [watched, writer_via, leader]
            .iter()
            .map(|&i| (i, cluster.members[i].client_port))
            .collect();
        let (target, targets) = tokio::sync::watch::channel(0usize);
        let watcher = tokio::spawn(resuming_watcher(
            members,
            PREFIX.to_string(),
            start,
            targets,
            Arc::clone(&log),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = spawn_writer(cluster.kv(writer_via), PREFIX.into(), Arc::clone(&stop));

        tokio::time::sleep(Duration::from_millis(1500)).await;
        let leader_killed = Instant::now();
        cluster.kill(leader);
        eprintln!("killed the leader {}", cluster.members[leader].name);
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.restart(leader, State::Existing).await;
        target.send_replace(2); // to the old leader, while it catches up
        tokio::time::sleep(Duration::from_millis(1500)).await;
        target.send_replace(0);
        // Kill the watched member only once the watcher streams from it again.
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.lock().unwrap().streams.last().map(|s| s.0) != Some(watched) {
            assert!(Instant::now() < deadline, "{:?}", log.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let watched_killed = Instant::now();
        cluster.kill(watched);
        eprintln!("killed the watched member {}", cluster.members[watched].name);
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.restart(watched, State::Existing).await;
        target.send_replace(0); // back to it, while it catches up
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        let acks = writer.await.expect("the writer");

        let gaps: Vec<(Duration, Duration)> = acks
            .windows(2)
            .map(|w| (w[1].at - w[0].at, w[0].at.saturating_duration_since(leader_killed)))
            .filter(|(gap, _)| *gap > Duration::from_millis(300))
            .collect();
        eprintln!(
            "gaps of more than 300 ms between acknowledgements (gap, since the leader's kill; the watched member was killed {:?} after it): {gaps:?}",
            watched_killed - leader_killed
        );
        let after = |t: Instant| acks.iter().filter(|a| a.at > t).count();
        assert!(
            after(leader_killed) > 0 && after(watched_killed) > 0,
            "the writes went on after the kills: {} acknowledged, {} after the leader's kill, {} after the watched member's",
            acks.len(),
            after(leader_killed),
            after(watched_killed)
        );

        // The final state: every key written at most once (each put sent once).
        let now_leader = cluster.wait_leader(&ALL).await;
        let state = range_prefix_retrying(&cluster, now_leader, PREFIX).await;
        assert_acked_present("the final state", &state, &acks);
        for (key, (_, create, modified, version)) in &state {
            assert!(
                *version == 1 && create == modified,
                "{key} was written once but has version {version} (created {create}, modified {modified})"
            );
        }
        let expected: BTreeMap<i64, (String, String)> = state
            .iter()
            .map(|(k, (v, _, m, _))| (*m, (k.clone(), v.clone())))
            .collect();
        let last = *expected.keys().next_back().expect("some writes");

        // The watcher catches up with the last write.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reached = log.lock().unwrap().events.last().map_or(0, |e| e.revision);
            if reached >= last {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the watcher reached revision {reached}, not {last}, within 10 s: {:?}",
                log.lock().unwrap().breaks
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        watcher.abort();
        let log = log.lock().unwrap();
        eprintln!(
            "{} writes acknowledged, {} in the final state, {} events; streams (member, from): {:?}; breaks: {:?}",
            acks.len(),
            state.len(),
            log.events.len(),
            log.streams,
            log.breaks
        );
        assert!(log.violations.is_empty(), "{:?}", log.violations);
        // It did resume after a broken stream, and on each member.
        let broke_at = log
            .breaks
            .iter()
            .position(|b| b.starts_with(&format!("n{}: ", watched + 1)));
        assert!(
            broke_at.is_some(),
            "the stream on the killed member did not break: {:?}",
            log.breaks
        );
        for m in ALL {
            assert!(
                log.streams.iter().any(|&(s, _)| s == m),
                "the watcher never resumed on {}: {:?}",
                cluster.members[m].name,
                log.streams
            );
        }
        for pair in log.events.windows(2) {
            assert!(
                pair[0].revision < pair[1].revision,
                "events out of order or repeated: {pair:?}"
            );
        }
        let mut keys = BTreeSet::new();
        for e in &log.events {
            assert_eq!(e.kind, EventType::Put, "{e:?}");
            assert!(keys.insert(e.key.clone()), "{} twice: {e:?}", e.key);
            assert_eq!(
                expected.get(&e.revision),
                Some(&(e.key.clone(), e.value.clone())),
                "an event the final state does not hold at its revision: {e:?}"
            );
        }
        let got: BTreeSet<i64> = log.events.iter().map(|e| e.revision).collect();
        let missing: Vec<_> = expected.keys().filter(|r| !got.contains(r)).collect();
        assert!(
            missing.is_empty(),
            "the watcher missed revisions {missing:?} (of {})",
            expected.len()
        );
        // Only this client writes: the revisions from the start on are all its writes.
        let all: Vec<i64> = (start..=last).collect();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), all, "gaps in the revisions");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Leases across a leader kill

/// The TTL of the leases of test 2, in seconds.
const TTL: i64 = 3;

/// Keep-alives and their answers.
#[derive(Default, Debug)]
struct KeepAliveLog {
    /// When the last request was sent (queued for the stream).
    last_sent: Option<Instant>,
    /// (when sent, TTL answered or error).
    answers: Vec<(Instant, Result<i64, String>)>,
}

/// Keeps lease `id` alive through the member at `port`: a request every 500 ms on one
/// stream, a new stream after any error.
async fn keep_alive(port: u16, id: i64, log: Arc<Mutex<KeepAliveLog>>) {
    loop {
        let (tx, rx) = mpsc::channel(4);
        let opened = tokio::time::timeout(
            Duration::from_secs(3),
            LeaseClient::new(channel(port)).lease_keep_alive(ReceiverStream::new(rx)),
        )
        .await;
        let mut stream = match opened {
            Ok(Ok(s)) => s.into_inner(),
            other => {
                let why = match other {
                    Ok(Err(e)) => format!("opening: {:?}: {}", e.code(), e.message()),
                    _ => "opening: timed out".to_string(),
                };
                log.lock().unwrap().answers.push((Instant::now(), Err(why)));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let sent = Instant::now();
            log.lock().unwrap().last_sent = Some(sent);
            if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                break;
            }
            let answer = match tokio::time::timeout(Duration::from_secs(3), stream.message()).await
            {
                Ok(Ok(Some(r))) => Ok(r.ttl),
                Ok(Ok(None)) => Err("stream ended".to_string()),
                Ok(Err(e)) => Err(format!("{:?}: {}", e.code(), e.message())),
                Err(_) => Err("no answer within 3 s".to_string()),
            };
            let failed = answer.is_err();
            log.lock().unwrap().answers.push((sent, answer));
            if failed {
                tokio::time::sleep(Duration::from_millis(100)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn grant(cluster: &Cluster, i: usize, ttl: i64) -> i64 {
    let r = LeaseClient::new(channel(cluster.members[i].client_port))
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .expect("a grant")
        .into_inner();
    assert_eq!(r.ttl, ttl);
    r.id
}

async fn time_to_live(
    cluster: &Cluster,
    i: usize,
    id: i64,
) -> Result<LeaseTimeToLiveResponse, Status> {
    LeaseClient::new(channel(cluster.members[i].client_port))
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .map(tonic::Response::into_inner)
}

/// Polls `key` on member `i` (linearizable reads; errors during an election are retried)
/// until it is gone; returns when, failing past `deadline`.
async fn wait_gone(
    cluster: &Cluster,
    i: usize,
    key: &str,
    deadline: Instant,
    what: &str,
) -> Instant {
    loop {
        if let Ok(r) = cluster.range(i, key, &[]).await {
            if r.kvs.is_empty() {
                return Instant::now();
            }
        }
        assert!(Instant::now() < deadline, "{what}: {key} still there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The events of `prefix` from `from` through `through` on member `i`, read by a new watch.
async fn replay(cluster: &Cluster, i: usize, prefix: &str, from: i64, through: i64) -> Vec<Seen> {
    let (_tx, mut stream) = open_watch(
        cluster.members[i].client_port,
        create(prefix, &prefix_end(prefix.as_bytes()), from),
    )
    .await
    .expect("a watch stream");
    let mut events: Vec<Seen> = Vec::new();
    while events.last().is_none_or(|e| e.revision < through) {
        let r = next_response(&mut stream, Duration::from_secs(5)).await;
        assert!(!r.canceled, "{}: {r:?}", cluster.members[i].name);
        events.extend(r.events.iter().map(seen));
    }
    events
}

/// Test 2: two leases of 3 s granted through a follower; one kept alive through that
/// follower (a new stream after each error), the other not. The leader is SIGKILLed 1 s
/// after the second grant: that lease's key goes no sooner than a full TTL after the kill
/// (the new leader's grace) and within TTL + 3 s of it; the kept lease's key is still there
/// two TTLs after the kill, with a positive time to live. Once its keep-alives stop, it
/// goes no sooner than a TTL after the last one and within TTL + 3 s. A watcher on the other
/// follower sees both deletions, and every member's history holds them at the same
/// revisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_lease_survives_a_leader_kill_and_an_abandoned_one_expires() {
    bounded(Duration::from_secs(60), async {
        let ttl = Duration::from_secs(TTL as u64);
        let slack = Duration::from_secs(3);
        let mut cluster = Cluster::start(3).await;
        let leader = cluster.wait_leader(&ALL).await;
        let via = (leader + 1) % 3;
        let watch_on = (leader + 2) % 3;
        let put_leased = |key: &'static str, lease: i64| {
            let mut kv = cluster.kv(via);
            async move {
                kv.put(PutRequest {
                    key: key.into(),
                    value: "v".into(),
                    lease,
                    ..PutRequest::default()
                })
                .await
                .expect("a put with a lease")
                .into_inner()
                .header
                .expect("a header")
                .revision
            }
        };

        let kept = grant(&cluster, via, TTL).await;
        let first = put_leased("l/kept", kept).await;
        let ka_log = Arc::new(Mutex::new(KeepAliveLog::default()));
        let ka = tokio::spawn(keep_alive(
            cluster.members[via].client_port,
            kept,
            Arc::clone(&ka_log),
        ));
        let (_watch_tx, mut live) = open_watch(
            cluster.members[watch_on].client_port,
            create("l/", &prefix_end(b"l/"), first),
        )
        .await
        .expect("a watch stream");
        let live_events = Arc::new(Mutex::new(Vec::new()));
        let live_task = {
            let live_events = Arc::clone(&live_events);
            tokio::spawn(async move {
                loop {
                    match live.message().await {
                        Ok(Some(r)) => live_events
                            .lock()
                            .unwrap()
                            .extend(r.events.iter().map(seen)),
                        other => return format!("{other:?}"),
                    }
                }
            })
        };

        let abandoned = grant(&cluster, via, TTL).await;
        put_leased("l/abandoned", abandoned).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let killed = Instant::now();
        cluster.kill(leader);
        eprintln!("killed the leader {}", cluster.members[leader].name);

        let gone = wait_gone(
            &cluster,
            watch_on,
            "l/abandoned",
            killed + ttl + slack,
            "a lease of 3 s not kept alive, TTL + 3 s after the leader's kill",
        )
        .await;
        eprintln!("l/abandoned went {:?} after the leader's kill", gone - killed);
        assert!(
            gone - killed >= ttl,
            "l/abandoned went {:?} after the leader's kill: the new leader did not give its lease a full TTL",
            gone - killed
        );

        cluster.restart(leader, State::Existing).await;
        let wait = (killed + 2 * ttl + Duration::from_secs(1)).saturating_duration_since(Instant::now());
        tokio::time::sleep(wait).await;
        for i in ALL {
            let r = range_at(&cluster, i, "l/kept", &[], 0, false).await;
            assert!(
                matches!(&r, Ok(kvs) if kvs.contains_key("l/kept")),
                "{}: l/kept (lease kept alive) {:?} after the leader's kill: {r:?}; keep-alives: {:?}",
                cluster.members[i].name,
                killed.elapsed(),
                ka_log.lock().unwrap()
            );
        }
        let left = time_to_live(&cluster, via, kept).await.expect("a time to live");
        assert!(left.ttl > 0 && left.granted_ttl == TTL, "{left:?}");
        assert_eq!(left.keys, vec![b"l/kept".to_vec()]);
        {
            let log = ka_log.lock().unwrap();
            let renewed = log
                .answers
                .iter()
                .filter(|(at, a)| *at > killed && a.is_ok())
                .count();
            let failed: Vec<(Duration, &String)> = log
                .answers
                .iter()
                .filter_map(|(at, a)| Some((at.saturating_duration_since(killed), a.as_ref().err()?)))
                .collect();
            eprintln!(
                "keep-alives: {} answered, {renewed} after the kill; {} failures, the first and last (since the kill): {:?}, {:?}",
                log.answers.len() - failed.len(),
                failed.len(),
                failed.first(),
                failed.last()
            );
            assert!(renewed > 0, "no keep-alive renewed the lease after the kill: {log:?}");
            for (_, a) in &log.answers {
                if let Ok(t) = a {
                    assert_eq!(*t, TTL, "a keep-alive answer: {log:?}");
                }
            }
        }

        // Abandon it.
        ka.abort();
        let _ = ka.await;
        let stopped = Instant::now();
        let last_sent = ka_log.lock().unwrap().last_sent.expect("keep-alives sent");
        let gone = wait_gone(
            &cluster,
            via,
            "l/kept",
            stopped + ttl + slack,
            "a lease of 3 s, TTL + 3 s after its keep-alives stopped",
        )
        .await;
        eprintln!(
            "l/kept went {:?} after its last keep-alive",
            gone - last_sent
        );
        assert!(
            gone - last_sent >= ttl,
            "l/kept went {:?} after its last keep-alive",
            gone - last_sent
        );
        for id in [kept, abandoned] {
            let r = time_to_live(&cluster, watch_on, id).await.expect("a time to live");
            assert_eq!(r.ttl, -1, "an expired lease: {r:?}");
        }

        // The live watcher saw both deletions, after both puts.
        let deadline = Instant::now() + Duration::from_secs(3);
        let events = loop {
            let events = live_events.lock().unwrap().clone();
            if events.len() >= 4 || Instant::now() > deadline {
                break events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if live_task.is_finished() {
            panic!("the live watch ended: {:?}", live_task.await);
        }
        live_task.abort();
        let shape: Vec<(EventType, &str)> =
            events.iter().map(|e| (e.kind, e.key.as_str())).collect();
        assert_eq!(
            shape,
            [
                (EventType::Put, "l/kept"),
                (EventType::Put, "l/abandoned"),
                (EventType::Delete, "l/abandoned"),
                (EventType::Delete, "l/kept"),
            ],
            "{events:?}"
        );
        // Every member deleted them at the same revisions.
        let last = events[3].revision;
        for i in ALL {
            cluster.wait_caught_up(i).await;
            let history = replay(&cluster, i, "l/", first, last).await;
            assert_eq!(history, events, "{}'s history", cluster.members[i].name);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. The space quota

/// `--quota-backend-bytes` of test 3.
const QUOTA: u64 = 64 << 10;

/// A leader paused past a lease's TTL and replaced meanwhile wakes with stale deadlines: it
/// must not revoke the lease (its successor gave it a full TTL and the client kept it alive
/// through another member), nor have its successor revoke it for it. (A jepsen run found a
/// woken leader revoking such a lease through forwarding, and answering a keep-alive without
/// confirming its leadership.)
#[tokio::test]
async fn a_paused_and_replaced_leader_does_not_expire_a_lease_kept_alive_meanwhile() {
    bounded(Duration::from_secs(60), async {
        let ttl = Duration::from_secs(TTL as u64);
        let cluster = Cluster::start(3).await;
        let leader = cluster.wait_leader(&ALL).await;
        let via = (leader + 1) % 3;
        let others: Vec<usize> = ALL.into_iter().filter(|&i| i != leader).collect();
        let kept = grant(&cluster, via, TTL).await;
        cluster
            .kv(via)
            .put(PutRequest {
                key: "p/kept".into(),
                value: "v".into(),
                lease: kept,
                ..PutRequest::default()
            })
            .await
            .expect("a put with a lease");
        let ka_log = Arc::new(Mutex::new(KeepAliveLog::default()));
        let port = cluster.members[via].client_port;
        let ka = tokio::spawn(keep_alive(port, kept, Arc::clone(&ka_log)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.pause(leader);
        let paused = Instant::now();
        let successor = cluster.wait_leader(&others).await;
        eprintln!(
            "paused {}, {} leads",
            cluster.members[leader].name, cluster.members[successor].name
        );
        tokio::time::sleep_until((paused + ttl + Duration::from_secs(2)).into()).await;
        cluster.resume(leader);
        tokio::time::sleep(Duration::from_secs(3)).await;
        for i in ALL {
            let r = range_at(&cluster, i, "p/kept", &[], 0, false).await;
            assert!(
                matches!(&r, Ok(kvs) if kvs.contains_key("p/kept")),
                "{}: p/kept, whose lease was kept alive, is gone: {r:?}; keep-alives: {:?}",
                cluster.members[i].name,
                ka_log.lock().unwrap()
            );
        }
        let woken = cluster.members[leader].log_text();
        assert!(
            !woken.contains("lease expired: revoked"),
            "the woken leader revoked a lease"
        );
        ka.abort();
        let _ = ka.await;
    })
    .await;
}

async fn alarms(cluster: &Cluster, i: usize) -> Vec<AlarmMember> {
    cluster
        .maintenance(i)
        .alarm(AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        })
        .await
        .expect("alarm list")
        .into_inner()
        .alarms
}

/// Waits up to 3 s until every member's `Status.errors` satisfies `ok`.
async fn wait_status_errors(cluster: &Cluster, ok: impl Fn(&[String]) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    for i in ALL {
        loop {
            let errors = cluster.status(i).await.expect("a status").errors;
            if ok(&errors) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: Status.errors {errors:?}: {what}",
                cluster.members[i].name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[track_caller]
fn assert_no_space<T: std::fmt::Debug>(what: &str, result: Result<T, Status>) {
    match result {
        Ok(v) => panic!("{what}: expected {NO_SPACE:?}, got {v:?}"),
        Err(s) => assert_eq!(
            (s.code(), s.message()),
            (Code::ResourceExhausted, NO_SPACE),
            "{what}"
        ),
    }
}

/// Test 3: with `--quota-backend-bytes 65536`, puts of 1 KiB through a follower until one
/// fails with ResourceExhausted and etcd's message; the NOSPACE alarm of that member is
/// listed and in every member's `Status.errors`; every member refuses puts; every
/// acknowledged put is still readable everywhere; a delete works; after deleting everything,
/// compacting and disarming, puts work again through every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_space_quota_writes_fail_until_compaction_and_disarm() {
    bounded(Duration::from_secs(40), async {
        const PREFIX: &str = "q/";
        let cluster = Cluster::start_with(
            3,
            Options {
                flags: vec!["--quota-backend-bytes".into(), QUOTA.to_string()],
                ..Options::default()
            },
        )
        .await;
        let leader = cluster.wait_leader(&ALL).await;
        let via = (leader + 1) % 3;
        let via_id = member_id(&cluster, via).await;
        let value = "x".repeat(1000);
        let mut acks = Vec::new();
        let mut refused = None;
        for n in 0..300 {
            let key = format!("{PREFIX}{n:04}");
            match cluster.put(via, &key, &value).await {
                Ok(r) => acks.push(Ack {
                    key,
                    value: value.clone(),
                    revision: r.header.expect("a header").revision,
                    at: Instant::now(),
                }),
                Err(s) => {
                    refused = Some(s);
                    break;
                }
            }
        }
        let refused = refused.expect("300 puts of 1 KiB past a quota of 64 KiB all succeeded");
        eprintln!("{} puts of 1 KiB accepted, then: {refused:?}", acks.len());
        assert_no_space("the put past the quota", Err::<(), _>(refused));
        let per_put = (1000 + 2 * 6) as u64;
        assert!(
            acks.len() as u64 * per_put <= QUOTA && acks.len() as u64 * (per_put + 200) >= QUOTA,
            "{} puts of 1 KiB accepted under a quota of {QUOTA} bytes",
            acks.len()
        );

        // The alarm: listed by every member, in every member's status.
        let expected = vec![AlarmMember {
            member_id: via_id,
            alarm: AlarmType::Nospace as i32,
        }];
        for i in ALL {
            assert_eq!(
                alarms(&cluster, i).await,
                expected,
                "{}",
                cluster.members[i].name
            );
        }
        let mentioned = format!("memberID:{via_id} alarm:NOSPACE");
        wait_status_errors(
            &cluster,
            |errors| errors.iter().any(|e| e.contains(&mentioned)),
            "no NOSPACE alarm",
        )
        .await;

        // Every member refuses puts, even small ones, and transactions that put.
        for i in ALL {
            let r = cluster.put(i, &format!("{PREFIX}small"), "v").await;
            assert_no_space(
                &format!("a small put through {}", cluster.members[i].name),
                r,
            );
        }
        // Acknowledged writes stay, on every member; refused ones were not applied.
        for i in ALL {
            let state = range_prefix_retrying(&cluster, i, PREFIX).await;
            assert_acked_present(&cluster.members[i].name, &state, &acks);
            assert_eq!(state.len(), acks.len(), "{}", cluster.members[i].name);
        }

        // Deletes work; the alarm stays until disarmed, compaction or not.
        let deleted = cluster
            .kv(via)
            .delete_range(DeleteRangeRequest {
                key: PREFIX.into(),
                range_end: prefix_end(PREFIX.as_bytes()),
                prev_kv: false,
            })
            .await
            .expect("a delete under the NOSPACE alarm")
            .into_inner();
        assert_eq!(deleted.deleted, acks.len() as i64);
        let revision = deleted.header.expect("a header").revision;
        cluster
            .kv(via)
            .compact(CompactionRequest {
                revision,
                physical: true,
            })
            .await
            .expect("a compaction under the NOSPACE alarm");
        assert_no_space(
            "a put after the compaction, before the disarm",
            cluster.put(leader, &format!("{PREFIX}early"), "v").await,
        );

        // Disarm every alarm listed (a put through another member may have raised its own).
        let listed = alarms(&cluster, leader).await;
        assert!(listed.contains(&expected[0]), "{listed:?}");
        for a in &listed {
            cluster
                .maintenance(leader)
                .alarm(AlarmRequest {
                    action: AlarmAction::Deactivate as i32,
                    member_id: a.member_id,
                    alarm: a.alarm,
                })
                .await
                .expect("a disarm");
        }
        for i in ALL {
            assert_eq!(alarms(&cluster, i).await, [], "{}", cluster.members[i].name);
        }
        wait_status_errors(
            &cluster,
            <[String]>::is_empty,
            "alarms left after the disarm",
        )
        .await;
        for i in ALL {
            let key = format!("{PREFIX}again/{i}");
            cluster.put(i, &key, &value).await.unwrap_or_else(|s| {
                panic!(
                    "a put through {} after the disarm: {s:?}",
                    cluster.members[i].name
                )
            });
        }
        let state = range_prefix_retrying(&cluster, via, PREFIX).await;
        assert_eq!(state.len(), 3, "{state:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. History across restarts and snapshot installs

/// `--snapshot-count` of test 4.
const SNAPSHOT_COUNT: u64 = 50;
/// `--snapshot-catchup-entries` of test 4.
const CATCHUP_ENTRIES: u64 = 10;
/// Puts, one at a time, while a follower is down: more than the appends the leader keeps
/// queued for it (raftline-core's 256 in flight), so that it needs a snapshot.
const PUTS_WHILE_DOWN: usize = 400;
/// The keys test 4 overwrites.
const HISTORY_KEYS: usize = 10;

/// Every revision's `Range` of `h/` on member `i` (serializable: its own state), for revisions
/// 1 through `through`.
async fn history(
    cluster: &Cluster,
    i: usize,
    through: i64,
) -> Vec<Result<BTreeMap<String, KvState>, (Code, String)>> {
    let end = prefix_end(b"h/");
    let mut all = Vec::new();
    for revision in 1..=through {
        all.push(range_at(cluster, i, "h/", &end, revision, true).await);
    }
    all
}

/// Puts `n` overwrites of the `h/` keys through member `via`, one at a time, deleting one
/// key every 37 puts; returns the revision reached.
async fn overwrite(cluster: &Cluster, via: usize, round: &str, n: usize) -> i64 {
    let mut revision = 0;
    for j in 0..n {
        let key = format!("h/{:02}", j % HISTORY_KEYS);
        let r = cluster
            .put_retrying(via, &key, &format!("{round}-{j}"))
            .await;
        revision = r.header.expect("a header").revision;
        if j % 37 == 36 {
            let r = cluster
                .kv(via)
                .delete_range(DeleteRangeRequest {
                    key: key.clone().into(),
                    ..DeleteRangeRequest::default()
                })
                .await
                .expect("a delete")
                .into_inner();
            revision = r.header.expect("a header").revision;
        }
    }
    revision
}

async fn hash_kv(cluster: &Cluster, i: usize, revision: i64) -> (u32, i64) {
    let r = cluster
        .maintenance(i)
        .hash_kv(HashKvRequest { revision })
        .await
        .unwrap_or_else(|s| panic!("HashKV at {revision} on {}: {s:?}", cluster.members[i].name))
        .into_inner();
    assert_eq!(r.header.expect("a header").revision, revision);
    (r.hash, r.compact_revision)
}

/// Asserts that every member's `HashKV` at each revision is the same.
async fn assert_same_hashes(cluster: &Cluster, revisions: &[i64]) {
    for &revision in revisions {
        let hashes: Vec<(u32, i64)> = {
            let mut h = Vec::new();
            for i in ALL {
                h.push(hash_kv(cluster, i, revision).await);
            }
            h
        };
        assert!(
            hashes.iter().all(|h| *h == hashes[0]),
            "HashKV at {revision} (hash, compact revision) per member: {hashes:?}"
        );
    }
}

/// Waits until member `i` has installed a snapshot (in its current run).
async fn wait_snapshot_installed(cluster: &Cluster, i: usize) {
    cluster
        .wait_metric(
            i,
            "raft_kv_snapshots_installed_total",
            Duration::from_secs(20),
            |n| n >= 1,
        )
        .await;
}

/// Test 4: with `--snapshot-count 50`, ten keys overwritten (and now and then deleted); a
/// follower killed while 400 more writes go by, so that it comes back by snapshot. Its reads
/// at every past revision equal the leader's, and `HashKV` agrees at several revisions.
/// After a compaction, reads below the compaction point fail with etcd's error on every
/// member and the rest are unchanged; that holds again after another snapshot install
/// (which carries the compaction point) and after a plain restart of the third member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_survives_restarts_and_snapshot_installs() {
    bounded(Duration::from_secs(60), async {
        let mut cluster = Cluster::start_with(
            3,
            Options {
                flags: vec![
                    "--snapshot-count".into(),
                    SNAPSHOT_COUNT.to_string(),
                    "--snapshot-catchup-entries".into(),
                    CATCHUP_ENTRIES.to_string(),
                ],
                metrics: true,
                ..Options::default()
            },
        )
        .await;
        let leader = cluster.wait_leader(&ALL).await;
        let follower = (leader + 1) % 3;
        let other = (leader + 2) % 3;
        overwrite(&cluster, leader, "a", 3 * HISTORY_KEYS).await;
        cluster.wait_caught_up(follower).await;
        cluster.kill(follower);
        let r1 = overwrite(&cluster, leader, "b", PUTS_WHILE_DOWN).await;
        cluster.restart(follower, State::Existing).await;
        wait_snapshot_installed(&cluster, follower).await;
        for i in ALL {
            cluster.wait_caught_up(i).await;
        }
        let on_leader = history(&cluster, leader, r1).await;
        assert!(on_leader.iter().all(Result::is_ok), "{on_leader:?}");
        for i in [follower, other] {
            let h = history(&cluster, i, r1).await;
            for (r, (a, b)) in on_leader.iter().zip(&h).enumerate() {
                assert_eq!(
                    a,
                    b,
                    "at revision {}: leader vs {}",
                    r + 1,
                    cluster.members[i].name
                );
            }
        }
        assert_same_hashes(&cluster, &[1, r1 / 3, r1 / 2, r1]).await;

        // Compaction at the middle.
        let compacted = r1 / 2;
        cluster
            .kv(follower)
            .compact(CompactionRequest {
                revision: compacted,
                physical: true,
            })
            .await
            .expect("a compaction");
        for i in ALL {
            cluster.wait_caught_up(i).await;
        }
        let check = |cluster: &Cluster, i: usize, h: &[ReadAt]| {
            let name = cluster.members[i].name.clone();
            for (r, got) in h.iter().enumerate() {
                let revision = r as i64 + 1;
                if revision < compacted {
                    assert_eq!(
                        got,
                        &Err((Code::OutOfRange, COMPACTED.to_string())),
                        "{name} at {revision}, below the compaction point {compacted}"
                    );
                } else if let Some(before) = on_leader.get(r) {
                    assert_eq!(
                        got, before,
                        "{name} at {revision}, compacted at {compacted}"
                    );
                }
            }
        };
        for i in ALL {
            check(&cluster, i, &history(&cluster, i, r1).await);
        }
        assert_same_hashes(&cluster, &[compacted, r1]).await;
        assert_eq!(hash_kv(&cluster, follower, r1).await.1, compacted);

        // Another snapshot install, which carries the compaction point.
        cluster.kill(follower);
        let r2 = overwrite(&cluster, leader, "c", PUTS_WHILE_DOWN).await;
        cluster.restart(follower, State::Existing).await;
        wait_snapshot_installed(&cluster, follower).await;
        // And a plain restart (from its own snapshot and log).
        cluster.wait_caught_up(other).await;
        cluster.kill(other);
        cluster.restart(other, State::Existing).await;
        for i in ALL {
            cluster.wait_caught_up(i).await;
        }
        let on_leader2 = history(&cluster, leader, r2).await;
        check(&cluster, leader, &on_leader2);
        for i in [follower, other] {
            let h = history(&cluster, i, r2).await;
            check(&cluster, i, &h);
            for (r, (a, b)) in on_leader2.iter().zip(&h).enumerate() {
                assert_eq!(
                    a,
                    b,
                    "at revision {}: leader vs {}",
                    r + 1,
                    cluster.members[i].name
                );
            }
        }
        assert_same_hashes(&cluster, &[compacted, r1, r2]).await;
        for i in ALL {
            assert_eq!(hash_kv(&cluster, i, r2).await.1, compacted);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Bad watch requests

/// Test 5: on one watch stream to a follower, a watch whose range ends before its key is
/// refused (created and canceled, with a reason); a watch from below the compaction point is
/// canceled with `compact_revision`; then a valid watch on the same stream gets the history
/// from the compaction point on and a new write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_watches_are_refused_and_the_stream_goes_on() {
    bounded(Duration::from_secs(30), async {
        let cluster = Cluster::start(3).await;
        let leader = cluster.wait_leader(&ALL).await;
        let follower = (leader + 1) % 3;
        let mut revisions = Vec::new();
        for n in 0..5 {
            let r = cluster.put_retrying(leader, "b/k", &format!("v{n}")).await;
            revisions.push(r.header.expect("a header").revision);
        }
        let compacted = revisions[3];
        cluster
            .kv(leader)
            .compact(CompactionRequest {
                revision: compacted,
                physical: true,
            })
            .await
            .expect("a compaction");
        cluster.wait_caught_up(follower).await;
        let limit = Duration::from_secs(3);

        let (tx, mut stream) = open_watch(
            cluster.members[follower].client_port,
            create("b/z", b"b/a", 0),
        )
        .await
        .expect("a watch stream");
        let r = next_response(&mut stream, limit).await;
        assert!(
            r.created && r.canceled && !r.cancel_reason.is_empty() && r.watch_id == -1,
            "a watch of an empty range: {r:?}"
        );

        tx.send(create("b/k", &[], compacted - 1)).await.unwrap();
        let mut r = next_response(&mut stream, limit).await;
        let id = r.watch_id;
        if r.created && !r.canceled {
            r = next_response(&mut stream, limit).await;
        }
        assert!(
            r.canceled
                && r.watch_id == id
                && r.compact_revision == compacted
                && r.events.is_empty(),
            "a watch from {} below the compaction point {compacted}: {r:?}",
            compacted - 1
        );

        tx.send(create("b/k", &[], compacted)).await.unwrap();
        let r = next_response(&mut stream, limit).await;
        assert!(
            r.created && !r.canceled && r.watch_id >= 0,
            "a valid watch: {r:?}"
        );
        let id = r.watch_id;
        let mut events = Vec::new();
        while events.len() < 2 {
            let r = next_response(&mut stream, limit).await;
            assert!(r.watch_id == id && !r.canceled, "{r:?}");
            events.extend(r.events.iter().map(seen));
        }
        let new = cluster.put_retrying(leader, "b/k", "v5").await;
        while events.len() < 3 {
            let r = next_response(&mut stream, limit).await;
            assert!(r.watch_id == id && !r.canceled, "{r:?}");
            events.extend(r.events.iter().map(seen));
        }
        let expected: Vec<Seen> = [
            (revisions[3], "v3"),
            (revisions[4], "v4"),
            (new.header.expect("a header").revision, "v5"),
        ]
        .iter()
        .map(|&(revision, value)| Seen {
            kind: EventType::Put,
            key: "b/k".into(),
            value: value.into(),
            revision,
        })
        .collect();
        assert_eq!(events, expected);
    })
    .await;
}
