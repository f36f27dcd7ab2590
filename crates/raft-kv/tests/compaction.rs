//! Automatic compaction with real processes: `--auto-compaction-mode revision` and
//! `periodic` make the leader compact the history, every member applies it, and reads below
//! the compaction point fail with etcd's error while later ones still work.
//!
//! The harness is in `common/mod.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{bounded, Cluster, Options};
use raftline_kv::proto::etcdserverpb::RangeRequest;
use tonic::Code;

/// Writes `n` versions of `key`; returns the revision of the last.
async fn overwrite(cluster: &Cluster, key: &str, n: usize) -> i64 {
    let mut revision = 0;
    for i in 0..n {
        let put = cluster.put_retrying(0, key, &format!("v{i}")).await;
        revision = put.header.expect("a header").revision;
    }
    revision
}

/// Waits until member `i` reports the history below `revision` compacted (a read there
/// fails with OutOfRange); panics after `limit`.
async fn wait_compacted_below(cluster: &Cluster, i: usize, revision: i64, limit: Duration) {
    let start = Instant::now();
    loop {
        let read = cluster
            .kv(i)
            .range(RangeRequest {
                key: b"k".to_vec(),
                revision: revision - 1,
                serializable: true,
                ..RangeRequest::default()
            })
            .await;
        match read {
            Err(s) if s.code() == Code::OutOfRange => {
                assert_eq!(
                    s.message(),
                    "etcdserver: mvcc: required revision has been compacted"
                );
                return;
            }
            _ if start.elapsed() > limit => {
                panic!("member {i} did not compact below {revision} within {limit:?}: {read:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_keeps_the_retention_window() {
    bounded(Duration::from_secs(40), async {
        let flags = [
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "2s",
        ];
        let options = Options {
            flags: flags.iter().map(|s| s.to_string()).collect(),
            ..Options::default()
        };
        let cluster = Cluster::start_with(3, options).await;
        let old = overwrite(&cluster, "k", 5).await;
        // Writes keep coming, so the revision of 2 s ago moves past `old`.
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            overwrite(&cluster, "other", 1).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for i in 0..3 {
            wait_compacted_below(&cluster, i, old, Duration::from_secs(10)).await;
        }
        // The current value is still there.
        let now = cluster.range(1, "k", b"").await.expect("a read");
        assert_eq!(now.kvs[0].value, b"v4");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacting_by_hand_reaches_every_member() {
    bounded(Duration::from_secs(30), async {
        let cluster = Cluster::start(3).await;
        let last = overwrite(&cluster, "k", 10).await;
        let mut kv = cluster.kv(2);
        let answer = kv
            .compact(raftline_kv::proto::etcdserverpb::CompactionRequest {
                revision: last - 3,
                physical: true,
            })
            .await;
        assert!(answer.is_ok(), "{answer:?}");
        // The member that answered has applied it already (physical).
        let below = kv
            .range(RangeRequest {
                key: b"k".to_vec(),
                revision: last - 4,
                serializable: true,
                ..RangeRequest::default()
            })
            .await;
        assert_eq!(below.map_err(|s| s.code()).unwrap_err(), Code::OutOfRange);
        for i in 0..3 {
            wait_compacted_below(&cluster, i, last - 3, Duration::from_secs(5)).await;
            let at = cluster
                .kv(i)
                .range(RangeRequest {
                    key: b"k".to_vec(),
                    revision: last - 3,
                    serializable: true,
                    ..RangeRequest::default()
                })
                .await
                .expect("a read at the compaction point");
            assert_eq!(at.into_inner().kvs[0].value, b"v6");
        }
        // Compacting again at or below the point fails as in etcd.
        let again = kv
            .compact(raftline_kv::proto::etcdserverpb::CompactionRequest {
                revision: last - 3,
                physical: false,
            })
            .await;
        assert_eq!(again.map_err(|s| s.code()).unwrap_err(), Code::OutOfRange);
    })
    .await;
}
