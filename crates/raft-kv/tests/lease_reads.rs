//! `--read-mode lease` on a three-member cluster of real processes: every linearizable read
//! (on the leader, answered from its lease, and on followers, forwarded to it) sees every
//! write acknowledged before it began, and so it stays after the leader is killed and another
//! takes over (its commits wait out the old lease).
//!
//! The harness is in `common/mod.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{bounded, Cluster, Options};
use raftline_kv::proto::etcdserverpb::RangeRequest;
use tonic::Code;

const ALL: [usize; 3] = [0, 1, 2];

/// How long a read may answer Unavailable while a new leader settles.
const SETTLE: Duration = Duration::from_secs(10);

/// Three members with `--read-mode lease`.
async fn lease_cluster() -> Cluster {
    let options = Options {
        flags: vec!["--read-mode".into(), "lease".into()],
        ..Options::default()
    };
    Cluster::start_with(3, options).await
}

/// A linearizable read of `key` on member `i` sees `value` at a revision of at least
/// `revision` (retried while the member answers Unavailable, during an election).
async fn assert_reads(cluster: &Cluster, i: usize, key: &str, value: &str, revision: i64) {
    let deadline = Instant::now() + SETTLE;
    let r = loop {
        match cluster.range(i, key, &[]).await {
            Ok(r) => break r,
            Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("read {key} on member {i}: {s:?}"),
        }
    };
    let seen = r.header.expect("a header").revision;
    assert!(
        seen >= revision,
        "member {i} read at {seen} after a write at {revision}"
    );
    let kv = r.kvs.first().expect("the key exists");
    assert_eq!(kv.value, value.as_bytes(), "member {i} read a stale {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reads_see_every_acknowledged_write_across_a_leader_kill() {
    bounded(Duration::from_secs(60), async {
        let mut cluster = lease_cluster().await;
        let leader = cluster.wait_leader(&ALL).await;
        for n in 0..12 {
            let value = format!("v{n}");
            let put = cluster.put(n % 3, "k", &value).await.unwrap();
            let revision = put.header.unwrap().revision;
            for i in ALL {
                assert_reads(&cluster, i, "k", &value, revision).await;
            }
        }
        cluster.kill(leader);
        let survivors: Vec<usize> = ALL.into_iter().filter(|&i| i != leader).collect();
        let new_leader = cluster.wait_leader(&survivors).await;
        assert_ne!(new_leader, leader);
        for (n, &i) in survivors.iter().cycle().take(6).enumerate() {
            let value = format!("after{n}");
            let put = cluster.put_retrying(i, "k", &value).await;
            let revision = put.header.unwrap().revision;
            for &j in &survivors {
                assert_reads(&cluster, j, "k", &value, revision).await;
            }
        }
    })
    .await;
}

/// A leader paused (SIGSTOP) far longer than its lease while the others elect a new leader
/// and overwrite a key, then resumed with linearizable reads already queued on it: its clock
/// stood still during the pause, so unless the ticks it missed reach the core before the reads
/// do, it would still count itself inside its lease and answer the old value. Each read must
/// return the new value or fail with Unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_old_leader_serves_no_stale_lease_reads() {
    bounded(Duration::from_secs(60), async {
        let cluster = lease_cluster().await;
        let old = cluster.wait_leader(&ALL).await;
        let others: Vec<usize> = ALL.into_iter().filter(|&i| i != old).collect();
        cluster.put(old, "x", "old").await.unwrap();
        // A read renews nothing here: the put just committed an entry of the leader's term,
        // so the old leader holds a fresh lease when it stops.
        assert_reads(&cluster, old, "x", "old", 0).await;

        cluster.pause(old);
        let new = cluster.wait_leader(&others).await;
        let r = cluster.put_retrying(new, "x", "new").await;
        let new_revision = r.header.unwrap().revision;
        // Reads sent to the paused member wait in its socket buffers until it resumes.
        let reads: Vec<_> = (0..8)
            .map(|_| {
                let mut kv = cluster.kv(old);
                tokio::spawn(async move {
                    let request = RangeRequest {
                        key: b"x".to_vec(),
                        ..RangeRequest::default()
                    };
                    kv.range(request).await.map(|r| r.into_inner())
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        cluster.resume(old);
        for read in reads {
            match read.await.unwrap() {
                Ok(r) => {
                    let kv = r.kvs.first().expect("the key exists");
                    assert_eq!(
                        kv.value, b"new",
                        "stale lease read on the resumed old leader"
                    );
                    assert!(r.header.unwrap().revision >= new_revision);
                }
                Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
            }
        }
        assert_reads(&cluster, old, "x", "new", new_revision).await;
    })
    .await;
}
