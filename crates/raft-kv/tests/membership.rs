//! Membership changes with real processes, while a client writes: growing a cluster from 3 to
//! 5 members (`member add --learner` + start + `member promote`, and a plain `member add`
//! that the leader promotes by itself), moving leadership, removing the leader, replacing a
//! member (the new one catching up by snapshot), and moving a member to another peer URL.
//!
//! After each, every remaining member holds the same keys (full ranges compared) and every
//! acknowledged write is there with its value. The core steps use the gRPC client, so they
//! always run; where `etcdctl` is installed, the same steps go through it instead (and it is
//! checked that etcdctl reads the answers), otherwise the test says so and uses gRPC.
//!
//! The harness is in `common/mod.rs`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_acked_present, bounded, etcdctl, etcdctl_installed, etcdctl_ok, kv_map, prefix_end,
    spawn_writer, Ack, Cluster, KvState, Options, State,
};
use raftline_kv::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MemberUpdateRequest, MoveLeaderRequest,
};
use raftline_kv::server::{
    BAD_LEADER_TRANSFEREE, LEARNER_NOT_READY, MEMBER_NOT_FOUND, MEMBER_NOT_LEARNER, NOT_LEADER,
};
use tonic::{Code, Status};

/// How long a membership step may take (a promotion waits for the member to start, publish
/// and catch up; the leader retries it every 2 s).
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a removed member may take to notice and exit (a few election timeouts).
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Asserts that a request failed with `code`; returns the message.
#[track_caller]
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) -> String {
    match result {
        Ok(v) => panic!("{what}: expected {code:?}, got success {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: got {s:?}");
            s.message().to_string()
        }
    }
}

/// The member's id, from its own `Status` header.
async fn id_of(cluster: &Cluster, i: usize) -> u64 {
    cluster
        .status(i)
        .await
        .expect("status")
        .header
        .expect("a header")
        .member_id
}

/// The members as member `via` lists them, by id.
async fn list(cluster: &Cluster, via: usize) -> BTreeMap<u64, Member> {
    cluster
        .cluster(via)
        .member_list(MemberListRequest { linearizable: true })
        .await
        .expect("member list")
        .into_inner()
        .members
        .into_iter()
        .map(|m| (m.id, m))
        .collect()
}

/// Waits until member `via` lists `id` as a voter that has published its name.
async fn wait_voter(cluster: &Cluster, via: usize, id: u64) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let members = list(cluster, via).await;
        if members
            .get(&id)
            .is_some_and(|m| !m.is_learner && !m.name.is_empty())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id:x} is not a started voter within {STEP_TIMEOUT:?}: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `etcdctl`'s endpoints for the given members.
fn endpoints(cluster: &Cluster, which: &[usize]) -> String {
    which
        .iter()
        .map(|&i| cluster.members[i].endpoint())
        .collect::<Vec<_>>()
        .join(",")
}

/// Adds member `i` (made with [`Cluster::add_member`]) through member `via`, with etcdctl if
/// `with_etcdctl`, and returns its id.
async fn member_add(
    cluster: &Cluster,
    via: usize,
    i: usize,
    learner: bool,
    with_etcdctl: bool,
) -> u64 {
    let peer = cluster.members[i].peer_url();
    if with_etcdctl {
        let mut args = vec!["member", "add", &cluster.members[i].name];
        let flag = format!("--peer-urls={peer}");
        args.push(&flag);
        if learner {
            args.push("--learner");
        }
        let out = etcdctl_ok(&cluster.members[via].endpoint(), &args).await;
        // "Member <id> added to cluster <id>", then the environment for the new member.
        let id = out
            .split_whitespace()
            .nth(1)
            .and_then(|id| u64::from_str_radix(id, 16).ok())
            .unwrap_or_else(|| panic!("no member id in etcdctl's answer:\n{out}"));
        assert!(
            out.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\"\n")
                && out.contains(&format!("{}={peer}", cluster.members[i].name)),
            "member add:\n{out}"
        );
        id
    } else {
        let answer = cluster
            .cluster(via)
            .member_add(MemberAddRequest {
                peer_ur_ls: vec![peer.clone()],
                is_learner: learner,
            })
            .await
            .expect("member add")
            .into_inner();
        let member = answer.member.expect("the new member");
        assert_eq!(member.peer_ur_ls, [peer]);
        assert!(member.is_learner, "a new member starts as a learner");
        assert!(answer.members.iter().any(|m| m.id == member.id));
        member.id
    }
}

/// Promotes learner `id` through member `via`, retrying while it is not ready yet.
async fn member_promote(cluster: &Cluster, via: usize, id: u64, with_etcdctl: bool) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let refused = if with_etcdctl {
            let done = etcdctl(
                &cluster.members[via].endpoint(),
                &["member", "promote", &format!("{id:x}")],
            )
            .await;
            if done.status.success() {
                assert!(done.stdout.contains("promoted"), "{}", done.stdout);
                return;
            }
            done.stderr
        } else {
            match cluster
                .cluster(via)
                .member_promote(MemberPromoteRequest { id })
                .await
            {
                Ok(_) => return,
                Err(s) => {
                    assert!(
                        matches!(s.code(), Code::FailedPrecondition | Code::Unavailable),
                        "{s:?}"
                    );
                    s.message().to_string()
                }
            }
        };
        assert!(
            Instant::now() < deadline,
            "promoting {id:x} kept failing for {STEP_TIMEOUT:?}; last: {refused}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every key on member `i`, read linearizably.
async fn all_keys(cluster: &Cluster, i: usize) -> BTreeMap<String, KvState> {
    let r = cluster
        .range(i, "\0", &[0])
        .await
        .unwrap_or_else(|e| panic!("reading everything on {}: {e:?}", cluster.members[i].name));
    kv_map(&r)
}

/// Every member in `which` holds the same keys, with every acknowledged write among them.
async fn assert_same_data(cluster: &Cluster, which: &[usize], acks: &[Ack]) {
    assert!(!acks.is_empty(), "the writer got nothing acknowledged");
    let first = all_keys(cluster, which[0]).await;
    assert_acked_present(&cluster.members[which[0]].name, &first, acks);
    for &i in &which[1..] {
        let other = all_keys(cluster, i).await;
        assert!(
            other == first,
            "{} and {} differ ({} and {} keys)",
            cluster.members[which[0]].name,
            cluster.members[i].name,
            first.len(),
            other.len()
        );
    }
}

/// A writer through member `via`: (stop flag, task).
fn writer(
    cluster: &Cluster,
    via: usize,
    prefix: &str,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<Ack>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let task = spawn_writer(cluster.kv(via), prefix.to_string(), Arc::clone(&stop));
    (stop, task)
}

/// Waits until the writer has tried `n` writes and one of its later ones is in (it numbers
/// its keys, a failed attempt too), bounded.
async fn let_writes_happen(cluster: &Cluster, via: usize, prefix: &str, n: usize) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let key = format!("{prefix}{n:05}");
    loop {
        if let Ok(r) = cluster
            .range(via, &key, &prefix_end(prefix.as_bytes()))
            .await
        {
            if !r.kvs.is_empty() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the writer did not reach {key} within {STEP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 3 members grow to 5 while a client writes: n4 with `member add --learner`, start,
/// `member promote`; n5 with a plain `member add` through a follower, promoted by the leader
/// once it has started. Then leadership moves to n5 (`move-leader`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_grows_from_three_to_five_members_while_writing() {
    let with_etcdctl = etcdctl_installed();
    bounded(Duration::from_secs(50), async {
        let mut cluster = Cluster::start(3).await;
        let leader = cluster.wait_leader(&[0, 1, 2]).await;
        let follower = (leader + 1) % 3;
        let (stop, task) = writer(&cluster, follower, "grow/");
        let_writes_happen(&cluster, follower, "grow/", 20).await;

        let n4 = cluster.add_member();
        let id4 = member_add(&cluster, leader, n4, true, with_etcdctl).await;
        let listed = list(&cluster, follower).await;
        assert!(
            listed[&id4].is_learner && listed[&id4].name.is_empty(),
            "an unstarted learner: {listed:?}"
        );
        // Not started yet: a promotion is refused with etcd's message.
        let early = cluster
            .cluster(leader)
            .member_promote(MemberPromoteRequest { id: id4 })
            .await;
        assert_eq!(
            refused("early promote", early, Code::FailedPrecondition),
            LEARNER_NOT_READY
        );
        cluster.restart(n4, State::Existing).await;
        // A learner cannot lead.
        let to_learner = cluster
            .maintenance(leader)
            .move_leader(MoveLeaderRequest { target_id: id4 })
            .await;
        assert_eq!(
            refused(
                "move-leader to a learner",
                to_learner,
                Code::FailedPrecondition
            ),
            BAD_LEADER_TRANSFEREE
        );
        member_promote(&cluster, follower, id4, with_etcdctl).await;
        wait_voter(&cluster, follower, id4).await;
        assert!(!cluster.status(n4).await.expect("status").is_learner);
        // A voter cannot be promoted.
        let again = cluster
            .cluster(leader)
            .member_promote(MemberPromoteRequest { id: id4 })
            .await;
        assert_eq!(
            refused("promote a voter", again, Code::FailedPrecondition),
            MEMBER_NOT_LEARNER
        );

        let n5 = cluster.add_member();
        let id5 = member_add(&cluster, follower, n5, false, false).await;
        cluster.restart(n5, State::Existing).await;
        wait_voter(&cluster, leader, id5).await;

        // move-leader: only the leader takes it (etcdctl finds it with Status first).
        let leader = cluster.wait_leader(&[0, 1, 2, n4, n5]).await;
        let on_follower = cluster
            .maintenance(follower)
            .move_leader(MoveLeaderRequest { target_id: id5 })
            .await;
        if follower != leader {
            assert_eq!(
                refused(
                    "move-leader on a follower",
                    on_follower,
                    Code::FailedPrecondition
                ),
                NOT_LEADER
            );
        }
        if with_etcdctl {
            let out = etcdctl_ok(
                &endpoints(&cluster, &[0, 1, 2, n4, n5]),
                &["move-leader", &format!("{id5:x}")],
            )
            .await;
            assert!(out.contains("Leadership transferred"), "move-leader: {out}");
        } else {
            cluster
                .maintenance(leader)
                .move_leader(MoveLeaderRequest { target_id: id5 })
                .await
                .expect("move leader");
        }
        assert_eq!(cluster.wait_leader(&[0, 1, 2, n4, n5]).await, n5);
        let_writes_happen(&cluster, follower, "grow/", 100).await;

        stop.store(true, Ordering::Relaxed);
        let acks = task.await.expect("the writer");
        let all = [0, 1, 2, n4, n5];
        assert_same_data(&cluster, &all, &acks).await;
        let members = list(&cluster, n4).await;
        assert_eq!(members.len(), 5, "{members:?}");
        for &i in &all {
            let m = &members[&id_of(&cluster, i).await];
            assert_eq!(
                (m.name.as_str(), m.is_learner, &m.client_ur_ls[..]),
                (
                    cluster.members[i].name.as_str(),
                    false,
                    &[cluster.members[i].client_url()][..]
                )
            );
        }
    })
    .await;
}

/// The leader is removed (`member remove` of its own id, sent to it) while a client writes
/// through a follower: it commits its removal, steps down and exits with status 0; the other
/// two go on. Its id cannot come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_is_removed_while_writing() {
    let with_etcdctl = etcdctl_installed();
    bounded(Duration::from_secs(50), async {
        let mut cluster = Cluster::start(3).await;
        let leader = cluster.wait_leader(&[0, 1, 2]).await;
        let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let (stop, task) = writer(&cluster, rest[0], "rm/");
        let_writes_happen(&cluster, rest[0], "rm/", 20).await;

        let id = id_of(&cluster, leader).await;
        if with_etcdctl {
            let out = etcdctl_ok(
                &cluster.members[leader].endpoint(),
                &["member", "remove", &format!("{id:x}")],
            )
            .await;
            assert!(out.contains("removed from cluster"), "member remove: {out}");
        } else {
            let answer = cluster
                .cluster(leader)
                .member_remove(MemberRemoveRequest { id })
                .await
                .expect("member remove")
                .into_inner();
            assert_eq!(answer.members.len(), 2);
        }
        let status = cluster.wait_exit(leader, EXIT_TIMEOUT).await;
        assert!(status.success(), "the removed leader exited with {status}");
        assert!(cluster.members[leader]
            .log_text()
            .contains("this member has been removed from the cluster"));
        cluster.wait_leader(&rest).await;
        let_writes_happen(&cluster, rest[0], "rm/", 100).await;

        stop.store(true, Ordering::Relaxed);
        let acks = task.await.expect("the writer");
        assert_same_data(&cluster, &rest, &acks).await;
        let members = list(&cluster, rest[1]).await;
        assert_eq!(members.len(), 2, "{members:?}");
        assert!(!members.contains_key(&id));
        // Removed for good: removing it again finds nothing, and its peer URL (hence its id)
        // cannot be added back.
        let again = cluster
            .cluster(rest[1])
            .member_remove(MemberRemoveRequest { id })
            .await;
        assert_eq!(
            refused("remove again", again, Code::NotFound),
            MEMBER_NOT_FOUND
        );
        let back = cluster
            .cluster(rest[0])
            .member_add(MemberAddRequest {
                peer_ur_ls: vec![cluster.members[leader].peer_url()],
                is_learner: true,
            })
            .await;
        assert!(refused("add back", back, Code::FailedPrecondition).contains("ID removed"));
    })
    .await;
}

/// A member is replaced while a client writes: n4 is added (a plain `member add`), catches up
/// by snapshot (the log is compacted), is promoted by the leader; then n2 is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_replaced_while_writing() {
    let with_etcdctl = etcdctl_installed();
    bounded(Duration::from_secs(50), async {
        let options = Options {
            flags: ["--snapshot-count", "50", "--snapshot-catchup-entries", "10"]
                .map(String::from)
                .to_vec(),
            ..Options::default()
        };
        let mut cluster = Cluster::start_with(3, options).await;
        let (stop, task) = writer(&cluster, 0, "replace/");
        // Enough writes that the log no longer starts at 1: n4 must catch up by snapshot.
        let_writes_happen(&cluster, 0, "replace/", 150).await;

        let n4 = cluster.add_member();
        let id4 = member_add(&cluster, 2, n4, false, with_etcdctl).await;
        cluster.restart(n4, State::Existing).await;
        wait_voter(&cluster, 0, id4).await;
        assert!(
            cluster.members[n4]
                .log_text()
                .contains("received a snapshot"),
            "n4 did not catch up by snapshot:\n{}",
            cluster.members[n4].log_text()
        );

        let id2 = id_of(&cluster, 1).await;
        if with_etcdctl {
            etcdctl_ok(
                &endpoints(&cluster, &[0, 2, n4]),
                &["member", "remove", &format!("{id2:x}")],
            )
            .await;
        } else {
            cluster
                .cluster(n4)
                .member_remove(MemberRemoveRequest { id: id2 })
                .await
                .expect("member remove");
        }
        let status = cluster.wait_exit(1, EXIT_TIMEOUT).await;
        assert!(status.success(), "the removed member exited with {status}");
        let rest = [0, 2, n4];
        cluster.wait_leader(&rest).await;
        let_writes_happen(&cluster, 0, "replace/", 250).await;

        stop.store(true, Ordering::Relaxed);
        let acks = task.await.expect("the writer");
        assert_same_data(&cluster, &rest, &acks).await;
        let members = list(&cluster, 2).await;
        let ids: Vec<u64> = members.keys().copied().collect();
        let mut expected = Vec::new();
        for &i in &rest {
            expected.push(id_of(&cluster, i).await);
        }
        expected.sort_unstable();
        assert_eq!(ids, expected);
    })
    .await;
}

/// `member update` moves a member to another peer URL: the others' transports follow, and the
/// member, restarted on the new URL, keeps its id (kept in its data directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_moves_to_another_peer_url() {
    bounded(Duration::from_secs(40), async {
        let mut cluster = Cluster::start(3).await;
        let leader = cluster.wait_leader(&[0, 1, 2]).await;
        let moved = (leader + 1) % 3;
        let other = (leader + 2) % 3;
        let id = id_of(&cluster, moved).await;
        cluster.put_retrying(other, "before", "1").await;

        // Bad input first: a URL in use, an unknown member, a URL that is not http://ip:port.
        let mut client = cluster.cluster(other);
        let taken = client
            .member_update(MemberUpdateRequest {
                id,
                peer_ur_ls: vec![cluster.members[leader].peer_url()],
            })
            .await;
        refused("a URL in use", taken, Code::FailedPrecondition);
        let unknown = client
            .member_update(MemberUpdateRequest {
                id: 12345,
                peer_ur_ls: vec!["http://127.0.0.1:1".into()],
            })
            .await;
        refused("an unknown member", unknown, Code::NotFound);
        let bad = client
            .member_update(MemberUpdateRequest {
                id,
                peer_ur_ls: vec!["127.0.0.1:1".into()],
            })
            .await;
        refused("a bad URL", bad, Code::InvalidArgument);

        let port = common::free_port();
        let url = format!("http://127.0.0.1:{port}");
        client
            .member_update(MemberUpdateRequest {
                id,
                peer_ur_ls: vec![url.clone()],
            })
            .await
            .expect("member update");
        cluster.kill(moved);
        cluster.set_peer_port(moved, port);
        cluster.restart(moved, State::Existing).await;
        assert_eq!(id_of(&cluster, moved).await, id, "the member kept its id");
        assert!(cluster.members[moved]
            .log_text()
            .contains("keeping the member id"));
        // It replicates on the new address: a write through it commits and it reads it back.
        cluster.put_retrying(moved, "after", "2").await;
        // With one of three down, the moved member is needed for every commit.
        cluster.kill(other);
        cluster.put_retrying(moved, "with two", "3").await;
        let members = list(&cluster, moved).await;
        assert_eq!(members[&id].peer_ur_ls, [url]);
    })
    .await;
}
