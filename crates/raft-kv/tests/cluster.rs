//! Three-member `raft-kv` clusters of real processes under crashes (SIGKILL):
//!
//! - writes through any member are readable (linearizably) on every member, with etcd's
//!   revision bookkeeping;
//! - a killed leader is replaced by one of the two others and writes continue, with nothing
//!   acknowledged lost;
//! - a killed follower restarted on its data directory (`--initial-cluster-state existing` or
//!   `new`) catches up;
//! - a minority cannot commit or serve linearizable reads, and a write that failed there is
//!   later either everywhere or nowhere;
//! - all members killed at once and restarted keep every acknowledged write;
//! - a leader paused (SIGSTOP) while the others elect a new one and move on never serves a
//!   stale linearizable read when it resumes.
//!
//! The harness is in `common/mod.rs`.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_acked_present, assert_code, bounded, kv_map, spawn_writer, Cluster, KvState, State,
    REQUEST_TIMEOUT,
};
use raftline_kv::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use tonic::{Code, Status};

const ALL: [usize; 3] = [0, 1, 2];

/// The revision bookkeeping etcd defines, kept by the test: one revision for the cluster,
/// starting at 1 and raised by every put and every delete that removes something; per key
/// `create_revision`, `mod_revision` and `version` (puts since the key was created).
struct Model {
    revision: i64,
    keys: BTreeMap<String, KvState>,
}

impl Model {
    fn new() -> Model {
        Model {
            revision: 1,
            keys: BTreeMap::new(),
        }
    }

    fn put(&mut self, key: &str, value: &str) -> i64 {
        self.revision += 1;
        let rev = self.revision;
        let kv = self
            .keys
            .entry(key.to_string())
            .or_insert_with(|| (String::new(), rev, rev, 0));
        kv.0 = value.to_string();
        kv.2 = rev;
        kv.3 += 1;
        rev
    }

    fn delete(&mut self, key: &str) -> i64 {
        let deleted = i64::from(self.keys.remove(key).is_some());
        self.revision += deleted;
        deleted
    }
}

/// Test 1: puts through every member, each read back linearizably on another member at once,
/// then every member returns all keys with the same create/mod revisions and versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_any_member_are_readable_on_every_member() {
    bounded(Duration::from_secs(30), async {
        let cluster = Cluster::start(3).await;
        let mut model = Model::new();
        for n in 0..15 {
            let via = n % 3;
            let key = format!("w/k{}", n % 5);
            let value = format!("v{n} via {}", cluster.members[via].name);
            let prev = model.keys.get(&key).cloned();
            let r = cluster
                .kv(via)
                .put(PutRequest {
                    key: key.clone().into(),
                    value: value.clone().into(),
                    prev_kv: true,
                    ..PutRequest::default()
                })
                .await
                .unwrap_or_else(|s| panic!("put {key} via n{}: {s:?}", via + 1))
                .into_inner();
            let rev = model.put(&key, &value);
            assert_eq!(r.header.as_ref().unwrap().revision, rev, "put {key}");
            let got_prev = r.prev_kv.map(|kv| {
                (
                    String::from_utf8(kv.value).unwrap(),
                    kv.create_revision,
                    kv.mod_revision,
                    kv.version,
                )
            });
            assert_eq!(got_prev, prev, "prev_kv of put {key}");
            // Linearizable: another member sees the write as soon as it is acknowledged.
            let reader = (via + 1) % 3;
            let read = cluster.range(reader, &key, b"").await.unwrap();
            assert_eq!(
                kv_map(&read).get(&key),
                model.keys.get(&key),
                "{key} on n{}",
                reader + 1
            );
            assert!(read.header.unwrap().revision >= rev);
        }

        // A delete raises the revision once; the key created again starts over at version 1.
        let d = cluster
            .kv(2)
            .delete_range(DeleteRangeRequest {
                key: "w/k0".into(),
                ..DeleteRangeRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.deleted, model.delete("w/k0"));
        assert_eq!(d.header.unwrap().revision, model.revision);
        let nothing = cluster
            .kv(0)
            .delete_range(DeleteRangeRequest {
                key: "w/absent".into(),
                ..DeleteRangeRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (nothing.deleted, nothing.header.unwrap().revision),
            (0, model.revision)
        );
        let r = cluster.put(0, "w/k0", "again").await.unwrap();
        assert_eq!(r.header.unwrap().revision, model.put("w/k0", "again"));
        assert_eq!(model.keys["w/k0"].1, model.revision);
        assert_eq!(model.keys["w/k1"].3, 3);

        // A value just under etcd's request limit (1.5 MiB) replicates like any other.
        let big = "b".repeat(1_400_000);
        let r = cluster.put(1, "w/big", &big).await.unwrap();
        assert_eq!(r.header.unwrap().revision, model.put("w/big", &big));
        assert_eq!(model.keys.len(), 6);

        for i in ALL {
            let r = cluster.range_prefix(i, "w/").await.unwrap();
            let who = &cluster.members[i].name;
            // (The big value is compared apart, so that a failure does not print it.)
            let (mut got, mut want) = (kv_map(&r), model.keys.clone());
            let (got_big, want_big) = (got.remove("w/big"), want.remove("w/big"));
            assert_eq!(got, want, "all keys on {who}");
            assert!(got_big == want_big, "w/big differs on {who}");
            assert_eq!(r.count, 6, "{who}");
            assert!(!r.more, "{who}");
            assert_eq!(
                r.header.unwrap().revision,
                model.revision,
                "revision on {who}"
            );
            let limited = cluster
                .kv(i)
                .range(RangeRequest {
                    key: "w/".into(),
                    range_end: common::prefix_end(b"w/"),
                    limit: 2,
                    ..RangeRequest::default()
                })
                .await
                .unwrap()
                .into_inner();
            let keys: Vec<_> = kv_map(&limited).into_keys().collect();
            assert_eq!(keys, ["w/big", "w/k0"], "{who}");
            assert_eq!((limited.count, limited.more), (6, true), "{who}");
        }
    })
    .await;
}

/// Test 2: SIGKILL the leader while a client writes through a follower; one of the two others
/// becomes leader in a later term, writes continue, and every acknowledged write is readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_nothing_acknowledged_is_lost() {
    bounded(Duration::from_secs(30), async {
        let mut cluster = Cluster::start(3).await;
        let leader = cluster.wait_leader(&ALL).await;
        let old = cluster.status(leader).await.unwrap();
        let survivors: Vec<usize> = ALL.into_iter().filter(|&i| i != leader).collect();

        let mut before = Vec::new();
        for n in 0..9 {
            let key = format!("before/{n}");
            let value = format!("value {n}");
            let r = cluster.put(n % 3, &key, &value).await.unwrap();
            before.push(common::Ack {
                key,
                value,
                revision: r.header.unwrap().revision,
                at: Instant::now(),
            });
        }

        let stop = Arc::new(AtomicBool::new(false));
        let writer = spawn_writer(
            cluster.kv(survivors[0]),
            "during/".to_string(),
            Arc::clone(&stop),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.kill(leader);
        let killed_at = Instant::now();

        let new_leader = cluster.wait_leader(&survivors).await;
        assert_ne!(new_leader, leader);
        let new = cluster.status(new_leader).await.unwrap();
        assert!(
            new.raft_term > old.raft_term,
            "{} then {}",
            old.raft_term,
            new.raft_term
        );
        assert_ne!(new.leader, old.leader);

        // Writes continue through both survivors.
        let mut after = Vec::new();
        for (n, &i) in survivors.iter().enumerate() {
            let key = format!("after/{n}");
            let r = cluster.put_retrying(i, &key, "x").await;
            after.push(common::Ack {
                key,
                value: "x".to_string(),
                revision: r.header.unwrap().revision,
                at: Instant::now(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        let during = writer.await.unwrap();
        assert!(
            during.iter().any(|a| a.at < killed_at),
            "the writer got no write through before the kill"
        );
        assert!(
            during.iter().any(|a| a.at > killed_at),
            "the writer got no write through after the kill"
        );

        for &i in &survivors {
            let who = &cluster.members[i].name;
            for (prefix, acks) in [
                ("before/", &before),
                ("during/", &during),
                ("after/", &after),
            ] {
                let r = cluster.range_prefix(i, prefix).await.unwrap();
                assert_acked_present(who, &kv_map(&r), acks);
            }
        }
    })
    .await;
}

/// Test 3: a follower killed and restarted on its data directory, once with
/// `--initial-cluster-state existing` and once with `new`, serves the writes made while it
/// was down with a linearizable read, and its applied index reaches the others'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up() {
    bounded(Duration::from_secs(40), async {
        let mut cluster = Cluster::start(3).await;
        let leader = cluster.wait_leader(&ALL).await;
        let follower = (leader + 1) % 3;
        let others: Vec<usize> = ALL.into_iter().filter(|&i| i != follower).collect();
        cluster.put(follower, "before", "x").await.unwrap();

        for (round, state) in [State::Existing, State::New].into_iter().enumerate() {
            cluster.kill(follower);
            let prefix = format!("down{round}/");
            let mut acks = Vec::new();
            for n in 0..10 {
                let key = format!("{prefix}{n}");
                let value = format!("value {n}");
                let r = cluster.put(others[n % 2], &key, &value).await.unwrap();
                acks.push(common::Ack {
                    key,
                    value,
                    revision: r.header.unwrap().revision,
                    at: Instant::now(),
                });
            }
            cluster.restart(follower, state).await;
            let who = format!(
                "{} restarted with {state:?}",
                cluster.members[follower].name
            );
            let r = cluster
                .range_prefix(follower, &prefix)
                .await
                .unwrap_or_else(|s| panic!("{who}: {s:?}"));
            let kvs = kv_map(&r);
            assert_eq!(kvs.len(), acks.len(), "{who}");
            assert_acked_present(&who, &kvs, &acks);
            let before = cluster.range(follower, "before", b"").await.unwrap();
            assert_eq!(before.kvs.len(), 1, "{who}");
            cluster.wait_caught_up(follower).await;
        }
    })
    .await;
}

/// Asserts that a request to a minority fails with Unavailable within the request timeout
/// (plus a second of slack for a loaded machine).
async fn fails_unavailable_in_time<T: std::fmt::Debug>(
    what: String,
    request: impl Future<Output = Result<T, Status>>,
) {
    let t = Instant::now();
    let r = request.await;
    let took = t.elapsed();
    eprintln!(
        "{what} on the minority: {:?} after {took:?}",
        r.as_ref().map_err(Status::code).map(|_| ())
    );
    assert!(
        took <= REQUEST_TIMEOUT + Duration::from_secs(1),
        "{what} took {took:?}"
    );
    assert_code(&format!("{what} on a minority"), r, Code::Unavailable);
}

/// Test 4: with two of three members killed, the survivor (the old leader) fails puts and
/// linearizable reads with Unavailable within the request timeout; once a second member is
/// back, writes succeed and each failed put is on every member or on none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit() {
    bounded(Duration::from_secs(40), async {
        let mut cluster = Cluster::start(3).await;
        let survivor = cluster.wait_leader(&ALL).await;
        let killed: Vec<usize> = ALL.into_iter().filter(|&i| i != survivor).collect();
        cluster.put(survivor, "a", "committed").await.unwrap();
        for &i in &killed {
            cluster.kill(i);
        }

        // Each put and linearizable read must fail with Unavailable, and within the request
        // timeout (plus slack for a loaded machine). The first pair reaches a leader that does
        // not yet know it lost its quorum; the second comes after it stepped down
        // (check-quorum) or while it still leads. Each pair runs concurrently.
        for key in ["lost1", "lost2"] {
            tokio::join!(
                fails_unavailable_in_time(format!("put {key}"), async {
                    cluster.put(survivor, key, "never acknowledged").await
                }),
                fails_unavailable_in_time("linearizable range".to_string(), async {
                    cluster.range(survivor, "a", b"").await
                }),
            );
        }
        // A serializable read is served from local state, as in etcd.
        let stale = cluster
            .kv(survivor)
            .range(RangeRequest {
                key: "a".into(),
                serializable: true,
                ..RangeRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stale.kvs[0].value, b"committed");

        cluster.restart(killed[0], State::Existing).await;
        let pair = [survivor, killed[0]];
        cluster.wait_leader(&pair).await;
        for &i in &pair {
            cluster.put_retrying(i, &format!("after/{i}"), "ok").await;
        }
        let on_pair = [
            kv_map(&cluster.range(survivor, "\0", &[0]).await.unwrap()),
            kv_map(&cluster.range(killed[0], "\0", &[0]).await.unwrap()),
        ];
        assert_eq!(on_pair[0], on_pair[1], "the two running members disagree");

        cluster.restart(killed[1], State::Existing).await;
        cluster.wait_caught_up(killed[1]).await;
        for i in ALL {
            let all = kv_map(&cluster.range(i, "\0", &[0]).await.unwrap());
            assert_eq!(all, on_pair[0], "{} disagrees", cluster.members[i].name);
        }
        for key in ["lost1", "lost2"] {
            eprintln!("{key} after recovery: {:?}", on_pair[0].get(key));
            if let Some(kv) = on_pair[0].get(key) {
                assert_eq!(kv.0, "never acknowledged");
            }
        }
    })
    .await;
}

/// Test 7: SIGKILL every member while a client writes, restart all three on their data
/// (mixing `new` and `existing`): every acknowledged write is there on every member, and the
/// revision goes on from where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_member_keeps_acknowledged_writes() {
    bounded(Duration::from_secs(40), async {
        let mut cluster = Cluster::start(3).await;
        let mut acks = Vec::new();
        for n in 0..12 {
            let key = format!("k/seq{n:02}");
            let r = cluster.put(n % 3, &key, "v").await.unwrap();
            acks.push(common::Ack {
                key,
                value: "v".to_string(),
                revision: r.header.unwrap().revision,
                at: Instant::now(),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writer = spawn_writer(cluster.kv(1), "k/w".to_string(), Arc::clone(&stop));
        tokio::time::sleep(Duration::from_millis(400)).await;
        for i in ALL {
            cluster.kill(i);
        }
        stop.store(true, Ordering::Relaxed);
        let written = writer.await.unwrap();
        assert!(!written.is_empty(), "the writer got nothing through");
        acks.extend(written);
        let last = acks.iter().map(|a| a.revision).max().unwrap();

        for (i, state) in [(0, State::New), (1, State::Existing), (2, State::New)] {
            cluster.spawn(i, state);
        }
        for i in ALL {
            cluster.wait_ready(i).await;
        }
        cluster.wait_leader(&ALL).await;
        let mut seen = Vec::new();
        for i in ALL {
            let r = cluster.range_prefix(i, "k/").await.unwrap();
            assert!(r.header.as_ref().unwrap().revision >= last);
            let kvs = kv_map(&r);
            assert_acked_present(&cluster.members[i].name, &kvs, &acks);
            seen.push(kvs);
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "members disagree");
        let r = cluster.put_retrying(2, "k/after", "v").await;
        assert!(r.header.unwrap().revision > last);
    })
    .await;
}

/// Test 8: pause the leader (SIGSTOP), let the two others elect a leader and overwrite a key,
/// then resume the old leader with linearizable reads already queued on it. It still believes
/// it leads, yet none of the reads may return the old value: each returns the new value or
/// fails with Unavailable, and reads succeed again soon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_old_leader_serves_no_stale_reads() {
    bounded(Duration::from_secs(30), async {
        let cluster = Cluster::start(3).await;
        let old = cluster.wait_leader(&ALL).await;
        let others: Vec<usize> = ALL.into_iter().filter(|&i| i != old).collect();
        cluster.put(old, "x", "old").await.unwrap();

        // (If the test fails while the member is paused, the guard's SIGKILL still ends it.)
        cluster.pause(old);
        let new = cluster.wait_leader(&others).await;
        let r = cluster.put_retrying(new, "x", "new").await;
        // Reads sent to the paused member wait in its socket buffers until it resumes.
        let reads: Vec<_> = (0..4)
            .map(|_| {
                let mut kv = cluster.kv(old);
                tokio::spawn(async move {
                    kv.range(RangeRequest {
                        key: b"x".to_vec(),
                        ..RangeRequest::default()
                    })
                    .await
                    .map(|r| r.into_inner())
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        cluster.resume(old);
        let new_revision = r.header.unwrap().revision;
        for read in reads {
            match read.await.unwrap() {
                Ok(r) => {
                    let kvs = kv_map(&r);
                    assert_eq!(kvs["x"].0, "new", "stale read on the resumed old leader");
                    assert_eq!(kvs["x"].2, new_revision);
                }
                Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
            }
        }
        let deadline = Instant::now() + common::LEADER_TIMEOUT;
        loop {
            match cluster.range(old, "x", b"").await {
                Ok(r) => {
                    assert_eq!(kv_map(&r)["x"].0, "new");
                    break;
                }
                Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => panic!("reads on the resumed member: {s:?}"),
            }
        }
    })
    .await;
}

/// A delete through a follower that removes more than 4 MiB of keys and values succeeds like
/// any other (etcd returns the removed pairs only when `prev_kv` is asked for).
///
/// Ignored while it fails: the delete commits, but the follower answers OutOfRange ("decoded
/// message length too large"). `Store::apply` puts every removed pair in
/// `Outcome::Deleted::prev`, `InternalService::forward` sends that whole outcome back to the
/// follower, and the follower's `InternalClient` (built in `Shared::forward`) keeps tonic's
/// default 4 MiB decoding limit. (`etcdctl check perf` trips on it when it cleans up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_delete_through_a_follower_succeeds() {
    bounded(Duration::from_secs(30), async {
        let cluster = Cluster::start(3).await;
        let leader = cluster.wait_leader(&ALL).await;
        let follower = (leader + 1) % 3;
        let value = "v".repeat(1_200_000);
        for n in 0..4 {
            cluster
                .put(leader, &format!("big/{n}"), &value)
                .await
                .unwrap();
        }
        let deleted = cluster
            .kv(follower)
            .delete_range(DeleteRangeRequest {
                key: "big/".into(),
                range_end: common::prefix_end(b"big/"),
                ..DeleteRangeRequest::default()
            })
            .await;
        let left = cluster.range_prefix(leader, "big/").await.unwrap();
        assert!(left.kvs.is_empty(), "{} keys left", left.kvs.len());
        let deleted =
            deleted.unwrap_or_else(|s| panic!("delete of 4.8 MB through a follower: {s:?}"));
        assert_eq!(deleted.into_inner().deleted, 4);
    })
    .await;
}
