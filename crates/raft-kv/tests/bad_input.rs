//! What `raft-kv` does with input it does not take:
//!
//! - RPCs it does not serve (etcd's `Auth` methods, the `v3lockpb.Lock` gateway service, an
//!   unknown service) get gRPC `Unimplemented`;
//! - malformed requests (empty key, negative limit, a request over etcd's size limit) get
//!   `InvalidArgument`, and the member goes on serving;
//! - bad command-line flags make the binary exit non-zero with a message on stderr that says
//!   what is wrong.
//!
//! The harness is in `common/mod.rs`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{assert_code, bounded, call, free_port, run_bounded, Cluster, BIN};
use raftline_kv::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, StatusRequest,
};
use tonic::Code;

/// Test 6a: methods and services raft-kv does not serve answer Unimplemented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_rpcs_are_unimplemented() {
    bounded(Duration::from_secs(20), async {
        let cluster = Cluster::start(1).await;
        let port = cluster.members[0].client_port;
        for path in [
            "/etcdserverpb.Auth/UserAdd",
            "/etcdserverpb.Auth/AuthEnable",
            "/v3lockpb.Lock/Lock",
            "/no.such.Service/Method",
        ] {
            assert_code(path, call(port, path).await, Code::Unimplemented);
        }
        // The same generic call reaches a method that exists (which refuses the empty key).
        let r = call(port, "/etcdserverpb.KV/Range").await;
        assert_code("Range with an empty key", r, Code::InvalidArgument);
        cluster.put(0, "still", "serving").await.unwrap();
    })
    .await;
}

/// Test 6b: malformed requests are refused with InvalidArgument and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_arguments() {
    bounded(Duration::from_secs(20), async {
        let cluster = Cluster::start(1).await;
        let mut kv = cluster.kv(0);
        let before = cluster.status(0).await.unwrap().header.unwrap().revision;

        let r = kv
            .put(PutRequest {
                key: Vec::new(),
                value: b"v".to_vec(),
                ..PutRequest::default()
            })
            .await;
        assert_code("put with an empty key", r, Code::InvalidArgument);
        let r = kv
            .put(PutRequest {
                key: b"big".to_vec(),
                value: vec![b'x'; 2 * 1024 * 1024],
                ..PutRequest::default()
            })
            .await;
        assert_code("put of 2 MiB", r, Code::InvalidArgument);
        let r = kv
            .range(RangeRequest {
                key: b"k".to_vec(),
                limit: -1,
                ..RangeRequest::default()
            })
            .await;
        assert_code("range with limit -1", r, Code::InvalidArgument);
        let r = kv.range(RangeRequest::default()).await;
        assert_code("range with an empty key", r, Code::InvalidArgument);
        let r = kv.delete_range(DeleteRangeRequest::default()).await;
        assert_code("delete with an empty key", r, Code::InvalidArgument);

        let after = cluster
            .maintenance(0)
            .status(StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            after.header.unwrap().revision,
            before,
            "a refused request wrote"
        );
        let r = cluster.put(0, "k", "v").await.unwrap();
        assert_eq!(r.header.unwrap().revision, before + 1);
    })
    .await;
}

/// Test 6c: bad flags: the binary exits non-zero and stderr says what is wrong.
#[test]
fn bad_flags_exit_non_zero_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let peer = format!("http://127.0.0.1:{}", free_port());
    let client = format!("http://127.0.0.1:{}", free_port());
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    // Valid flags for a one-member cluster, with some replaced (or added) by `changes`.
    let flags = |changes: &[(&str, &str)]| -> Vec<String> {
        let mut flags = vec![
            ("--name", "n1".to_string()),
            ("--data-dir", data.to_string()),
            ("--listen-peer-urls", peer.clone()),
            ("--listen-client-urls", client.clone()),
            ("--initial-cluster", format!("n1={peer}")),
        ];
        for &(flag, value) in changes {
            match flags.iter_mut().find(|(f, _)| *f == flag) {
                Some(slot) => slot.1 = value.to_string(),
                None => flags.push((flag, value.to_string())),
            }
        }
        flags
            .into_iter()
            .flat_map(|(f, v)| [f.to_string(), v])
            .collect()
    };
    let cases = [
        (
            "an unknown flag",
            flags(&[("--no-such-flag", "1")]),
            "--no-such-flag",
        ),
        (
            "a name not in --initial-cluster",
            flags(&[("--name", "n9")]),
            "does not appear",
        ),
        (
            "an election timeout under 5 heartbeats",
            flags(&[
                ("--heartbeat-interval", "50"),
                ("--election-timeout", "100"),
            ]),
            "--election-timeout",
        ),
        (
            "an https URL",
            flags(&[("--listen-client-urls", "https://127.0.0.1:1")]),
            "TLS",
        ),
        (
            "an unknown --initial-cluster-state",
            flags(&[("--initial-cluster-state", "sideways")]),
            "sideways",
        ),
        (
            "a damaged member id file (written below)",
            flags(&[]),
            "not a member id",
        ),
    ];
    // The data directory keeps the member's id; a file that does not hold one is refused.
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(dir.path().join("data").join("member_id"), "not hex\n").unwrap();
    for (what, args, expected) in cases {
        let done = run_bounded(
            Command::new(BIN).args(&args).current_dir(dir.path()),
            "",
            Duration::from_secs(10),
        );
        assert!(
            !done.status.success(),
            "{what}: raft-kv exited with success; stderr:\n{}",
            done.stderr
        );
        assert!(
            done.stderr.contains(expected),
            "{what}: stderr does not mention {expected:?}:\n{}",
            done.stderr
        );
    }
    // Nothing was created where the binary ran, beyond the data directory a valid
    // configuration may make.
    let strays: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n != "data")
        .collect();
    assert!(strays.is_empty(), "files left behind: {strays:?}");
}
