//! etcd's own command-line client (`etcdctl`, API v3) against a three-member `raft-kv`
//! cluster, with all three members as endpoints: put, get, get --prefix, del, endpoint
//! status, member list, and txn; and `snapshot save` against
//! one member.
//!
//! etcdctl comes from Debian's `etcd-client` package. Without it the test prints a notice and
//! passes, except under CI (the `CI` environment variable is set), where it fails and says
//! what to install.
//!
//! The harness is in `common/mod.rs`.

mod common;

use std::time::Duration;

use common::{bounded, etcdctl_installed, etcdctl_ok, etcdctl_with_input, table, Cluster};
use raftline_kv::proto::etcdserverpb::{MemberListRequest, SnapshotRequest};
use raftline_kv::snapshot::{etcd_envelope, read_etcd_snapshot};

/// Test 5: etcdctl's everyday commands against a three-member cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_against_a_three_member_cluster() {
    if !etcdctl_installed() {
        return;
    }
    bounded(Duration::from_secs(45), async {
        let cluster = Cluster::start(3).await;
        let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
        let e = endpoints.join(",");

        assert_eq!(etcdctl_ok(&e, &["put", "foo", "bar"]).await, "OK\n");
        assert_eq!(etcdctl_ok(&e, &["put", "foo2", "baz"]).await, "OK\n");
        assert_eq!(
            etcdctl_ok(&e, &["put", "fop", "not in the prefix"]).await,
            "OK\n"
        );
        assert_eq!(etcdctl_ok(&e, &["get", "foo"]).await, "foo\nbar\n");
        assert_eq!(
            etcdctl_ok(&e, &["get", "--prefix", "foo"]).await,
            "foo\nbar\nfoo2\nbaz\n"
        );
        assert_eq!(
            etcdctl_ok(&e, &["get", "--prefix", "--keys-only", "fo"]).await,
            "foo\n\nfoo2\n\nfop\n\n"
        );
        // Each member serves the reads itself.
        for endpoint in &endpoints {
            assert_eq!(etcdctl_ok(endpoint, &["get", "foo2"]).await, "foo2\nbaz\n");
        }
        assert_eq!(etcdctl_ok(&e, &["del", "foo"]).await, "1\n");
        assert_eq!(etcdctl_ok(&e, &["del", "foo"]).await, "0\n");
        assert_eq!(etcdctl_ok(&e, &["get", "foo"]).await, "");

        let status = etcdctl_ok(&e, &["endpoint", "status", "-w", "table"]).await;
        let (header, rows) = table(&status);
        let column = |name: &str| {
            header
                .iter()
                .position(|h| h == name)
                .unwrap_or_else(|| panic!("no {name} column in\n{status}"))
        };
        let (endpoint, leader) = (column("ENDPOINT"), column("IS LEADER"));
        let mut listed: Vec<&str> = rows.iter().map(|r| r[endpoint].as_str()).collect();
        listed.sort_unstable();
        let mut expected: Vec<&str> = endpoints.iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(listed, expected, "endpoint status:\n{status}");
        let leaders = rows.iter().filter(|r| r[leader] == "true").count();
        assert_eq!(leaders, 1, "endpoint status:\n{status}");
        assert!(
            rows.iter()
                .all(|r| r[leader] == "true" || r[leader] == "false"),
            "{status}"
        );

        let members = etcdctl_ok(&e, &["member", "list"]).await;
        let mut lines: Vec<Vec<&str>> = members.lines().map(|l| l.split(", ").collect()).collect();
        lines.sort_by_key(|l| l.get(2).copied());
        assert_eq!(lines.len(), 3, "member list:\n{members}");
        for (line, m) in lines.iter().zip(&cluster.members) {
            // ID, status, name, peer URLs, client URLs, is learner
            assert_eq!(line.len(), 6, "member list:\n{members}");
            assert_eq!(line[1], "started");
            assert_eq!(line[2], m.name);
            assert_eq!(line[3], format!("http://127.0.0.1:{}", m.peer_port));
            assert_eq!(line[4], m.client_url());
            assert_eq!(line[5], "false");
        }

        // A transaction with no compare runs its success branch. (Its stdin holds the three
        // sections: compares, success requests, failure requests.)
        let txn = etcdctl_with_input(&e, &["txn"], "\nput foo txn\n\n\n").await;
        assert!(txn.status.success(), "txn failed:\n{}", txn.stderr);
        assert_eq!(txn.stdout, "SUCCESS\n\nOK\n");
        assert_eq!(etcdctl_ok(&e, &["get", "foo"]).await, "foo\ntxn\n");
    })
    .await;
}

/// `etcdctl snapshot save` stores `Maintenance.Snapshot`'s stream from one member as it comes:
/// the file is raft-kv's snapshot of that member's store, holding every acknowledged write, in
/// etcd's envelope (padding and SHA-256, which etcdctl checks for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_snapshot_save_writes_the_store() {
    if !etcdctl_installed() {
        return;
    }
    bounded(Duration::from_secs(45), async {
        let cluster = Cluster::start(3).await;
        let e = cluster
            .members
            .iter()
            .map(|m| m.endpoint())
            .collect::<Vec<_>>()
            .join(",");
        for (key, value) in [("snap/a", "1"), ("snap/b", "2"), ("snap/c", "3")] {
            assert_eq!(etcdctl_ok(&e, &["put", key, value]).await, "OK\n");
        }
        assert_eq!(etcdctl_ok(&e, &["put", "snap/a", "again"]).await, "OK\n");
        assert_eq!(etcdctl_ok(&e, &["del", "snap/b"]).await, "1\n");

        // Wait until member 0 has every member's published addresses: from then on its store
        // changes only with writes, so two snapshots of it give the same bytes.
        let mut members = cluster.cluster(0);
        loop {
            let list = members
                .member_list(MemberListRequest::default())
                .await
                .expect("member list")
                .into_inner();
            if list.members.iter().all(|m| !m.client_ur_ls.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // etcdctl 3.4 takes exactly one endpoint for a snapshot.
        let file = cluster.dir().join("saved.snapshot");
        let path = file.to_str().expect("a UTF-8 path");
        let out = etcdctl_ok(&cluster.members[0].endpoint(), &["snapshot", "save", path]).await;
        assert!(out.contains("Snapshot saved at"), "snapshot save:\n{out}");
        let saved = std::fs::read(&file).expect("the saved snapshot");

        let store = read_etcd_snapshot(&saved).expect("a raft-kv snapshot in etcd's envelope");
        // The file is the store's snapshot, zero-padded, with a SHA-256.
        let mut plain = Vec::new();
        store.write_snapshot(&mut plain).expect("encoding");
        assert_eq!(etcd_envelope(plain), saved);
        let kvs: Vec<(&[u8], &[u8], i64)> = store
            .key_values()
            .map(|kv| (&kv.key[..], &kv.value[..], kv.version))
            .collect();
        assert_eq!(
            kvs,
            [
                (&b"snap/a"[..], &b"again"[..], 2),
                (&b"snap/c"[..], &b"3"[..], 1)
            ]
        );
        // Four puts and one delete after the initial revision 1.
        assert_eq!(store.revision(), 6);
        let names: Vec<&str> = store.members().values().map(|m| m.name.as_str()).collect();
        let mut expected: Vec<&str> = cluster.members.iter().map(|m| m.name.as_str()).collect();
        expected.sort_unstable();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, expected);

        // The file holds exactly the streamed bytes; remaining_bytes counts down to 0.
        let mut stream = cluster
            .maintenance(0)
            .snapshot(SnapshotRequest {})
            .await
            .expect("Maintenance.Snapshot")
            .into_inner();
        let mut streamed = Vec::new();
        let mut remaining = Vec::new();
        while let Some(r) = stream.message().await.expect("a snapshot chunk") {
            assert_eq!(r.header.expect("a header").revision, 6);
            streamed.extend_from_slice(&r.blob);
            remaining.push(r.remaining_bytes);
        }
        assert_eq!(streamed, saved);
        assert_eq!(remaining.last(), Some(&0));
        assert!(remaining.windows(2).all(|w| w[0] > w[1]), "{remaining:?}");
    })
    .await;
}
