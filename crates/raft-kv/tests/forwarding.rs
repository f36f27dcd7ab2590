//! Writes a follower forwards to a leader that dies under them fail as etcd's do: gRPC
//! `Unavailable` with one of etcd's messages (so that clients retry), never `Unknown`
//! ("transport error") nor another code.
//!
//! The harness is in `common/mod.rs`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bounded, Cluster};
use raftline_kv::proto::etcdserverpb::PutRequest;
use tonic::{Code, Status};

/// Writers, each on a connection of its own, writing through the follower at once: enough
/// that several forwarded writes are in flight when the leader dies.
const WRITERS: usize = 8;
/// How long the writers run before the leader is paused.
const BEFORE_PAUSE: Duration = Duration::from_millis(400);
/// How long the leader stays paused (SIGSTOP) before it is killed: forwarded writes pile up
/// unanswered on its connections, so that the kill breaks connections with writes in flight.
/// Well below the election timeout.
const PAUSED: Duration = Duration::from_millis(200);
/// How long they go on after: past the election of a new leader.
const AFTER_KILL: Duration = Duration::from_millis(2500);
/// The messages etcd answers `Unavailable` with when a write cannot be known to commit.
const ETCD_UNAVAILABLE: [&str; 5] = [
    "etcdserver: leader changed",
    "etcdserver: no leader",
    "etcdserver: request timed out",
    "etcdserver: request timed out, possibly due to previous leader failure",
    "etcdserver: request timed out, possibly due to connection lost",
];

/// Writes `<prefix><n>` through `client` until `stop`, and returns every failure.
fn spawn_writer(
    mut client: raftline_kv::proto::etcdserverpb::kv_client::KvClient<tonic::transport::Channel>,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<Status>)> {
    tokio::spawn(async move {
        let (mut acked, mut failures) = (0, Vec::new());
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let put = client.put(PutRequest {
                key: format!("{prefix}{n:05}").into(),
                value: b"v".to_vec(),
                ..PutRequest::default()
            });
            match put.await {
                Ok(_) => acked += 1,
                Err(s) => failures.push(s),
            }
        }
        (acked, failures)
    })
}

/// The leader is paused, then SIGKILLed, while a follower forwards writes to it from several
/// clients (some of them started during the pause, so that their writes wait at the paused
/// leader when it dies): every write that fails fails with `Unavailable` and one of etcd's
/// messages, the writes in flight at the kill among them, and writes go on through the
/// follower once a new leader is elected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_forwarded_to_a_killed_leader_fail_unavailable() {
    bounded(Duration::from_secs(40), async {
        let mut cluster = Cluster::start(3).await;
        let leader = cluster.wait_leader(&[0, 1, 2]).await;
        let follower = (leader + 1) % 3;
        let stop = Arc::new(AtomicBool::new(false));
        let writers = |prefix: &str| -> Vec<_> {
            (0..WRITERS)
                .map(|w| {
                    let prefix = format!("{prefix}{w}/");
                    spawn_writer(cluster.kv(follower), prefix, Arc::clone(&stop))
                })
                .collect()
        };
        let steady = writers("steady");
        tokio::time::sleep(BEFORE_PAUSE).await;
        cluster.pause(leader);
        // Their first writes are forwarded to the paused leader and wait there unanswered.
        let late = writers("late");
        tokio::time::sleep(PAUSED).await;
        cluster.kill(leader);
        tokio::time::sleep(AFTER_KILL).await;
        stop.store(true, Ordering::Relaxed);

        let (mut acked, mut failures, mut late_failures) = (0, Vec::new(), 0);
        for (i, w) in steady.into_iter().chain(late).enumerate() {
            let (a, f) = w.await.expect("a writer");
            acked += a;
            if i >= WRITERS {
                late_failures += f.len();
            }
            failures.extend(f);
        }
        assert!(acked > 0, "no write went through");
        assert!(
            late_failures > 0,
            "no write in flight at the paused leader failed when it was killed"
        );
        let wrong: Vec<&Status> = failures
            .iter()
            .filter(|s| s.code() != Code::Unavailable || !ETCD_UNAVAILABLE.contains(&s.message()))
            .collect();
        assert!(
            wrong.is_empty(),
            "{} of {} failed writes were not Unavailable with etcd's message: {wrong:?}",
            wrong.len(),
            failures.len()
        );
        // The follower serves writes again with the new leader.
        cluster.put_retrying(follower, "after", "x").await;
    })
    .await;
}
