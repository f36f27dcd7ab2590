//! Snapshot scenarios (21 to 25 of the reference list), driven step by step on the
//! simulator's cluster with random faults off: every safety invariant is still checked after
//! each event, and the simulated state machine's snapshots are checked against the committed
//! log whenever one is taken or restored.

use raftline_core::testing::sim::{Cluster, SimConfig};
use raftline_core::Role;
use raftline_proto::{LogIndex, NodeId};

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);

fn cluster(seed: u64, chunk_bytes: usize, window: usize) -> Cluster {
    let mut cfg = SimConfig::quiet(seed, 3);
    cfg.node.snapshot_chunk_bytes_max = chunk_bytes;
    cfg.node.snapshot_chunks_inflight_max = window;
    Cluster::new(cfg)
}

fn elect(c: &mut Cluster, id: NodeId) {
    c.campaign(id).unwrap();
    assert!(c
        .run_until(100, |c| c
            .node(id)
            .is_some_and(|r| r.role() == Role::Leader))
        .unwrap());
}

fn write(c: &mut Cluster, leader: NodeId, n: usize) {
    for _ in 0..n {
        c.propose(leader).unwrap().expect("the leader accepts");
        c.run_ticks(1).unwrap();
    }
    c.run_ticks(5).unwrap();
}

/// Runs until every live node applied everything the leader applied.
fn settle(c: &mut Cluster, leader: NodeId) {
    let caught_up = c
        .run_until(400, |c| {
            let target = c.applied(leader);
            c.ids()
                .iter()
                .all(|&id| c.node(id).is_none() || c.applied(id) >= target)
        })
        .unwrap();
    let states: Vec<_> = c.ids().iter().map(|&id| (id, c.applied(id))).collect();
    assert!(caught_up, "not caught up: {states:?}");
}

#[test]
fn a_crashed_follower_behind_the_compaction_point_gets_a_snapshot_then_the_log() {
    let mut c = cluster(1, 8, 2);
    elect(&mut c, N1);
    c.crash(N3);
    write(&mut c, N1, 30);
    c.snapshot(N1, 0).unwrap();
    write(&mut c, N1, 5);
    let first = c.node(N1).unwrap().first_index();
    assert!(first > LogIndex(30), "compacted: first index {first}");
    c.restart(N3).unwrap();
    settle(&mut c, N1);
    let r = c.report();
    assert_eq!(r.snapshots_installed, 1, "{r:?}");
    assert!(r.snapshot_chunks_sent > 3, "sent in chunks: {r:?}");
    // The log after the snapshot came by append.
    assert_eq!(c.applied(N3), c.applied(N1));
    assert!(c.node(N3).unwrap().last_index() > c.snapshot_meta(N3).unwrap().last_index);
}

#[test]
fn a_snapshot_reaches_a_partitioned_follower_over_lossy_links() {
    let mut c = cluster(2, 5, 3);
    elect(&mut c, N1);
    c.partition(&[N2]);
    write(&mut c, N1, 40);
    c.snapshot(N1, 2).unwrap();
    c.config_mut().drop_rate = 0.3;
    c.config_mut().duplicate_rate = 0.2;
    c.config_mut().latency_units_max = 40;
    c.heal();
    c.run_ticks(100).unwrap();
    c.config_mut().drop_rate = 0.0;
    c.config_mut().duplicate_rate = 0.0;
    let leader = c.leader().unwrap();
    settle(&mut c, leader);
    assert_eq!(c.report().snapshots_installed, 1, "{:?}", c.report());
}

#[test]
fn a_follower_with_a_conflicting_log_discards_it_for_the_snapshot() {
    let mut c = cluster(3, 16, 2);
    elect(&mut c, N1);
    write(&mut c, N1, 3);
    // The old leader, cut off, takes entries that never commit.
    c.partition(&[N1]);
    for _ in 0..5 {
        c.propose(N1).unwrap().expect("still believes it leads");
    }
    let old_last = c.node(N1).unwrap().last_index();
    c.run_ticks(40).unwrap();
    let leader = c.leader().expect("the majority elects a leader");
    assert_ne!(leader, N1);
    write(&mut c, leader, 20);
    c.snapshot(leader, 0).unwrap();
    c.heal();
    settle(&mut c, leader);
    assert_eq!(c.report().snapshots_installed, 1);
    let meta = c
        .snapshot_meta(N1)
        .expect("n1 kept the snapshot it installed");
    assert!(meta.last_index > old_last);
    // The snapshot carried the configuration.
    assert_eq!(c.node(N1).unwrap().status().membership, meta.membership);
    // n1's log now agrees with the leader's (the checker verified every step).
    let at = meta.last_index;
    assert_eq!(
        c.node(N1).unwrap().term_at(at),
        c.node(leader).unwrap().term_at(at)
    );
}

#[test]
fn a_transfer_resumes_on_the_new_leader_at_the_acknowledged_offset() {
    // One small chunk in flight at a time, so the transfer takes many round trips.
    let mut c = cluster(4, 4, 1);
    elect(&mut c, N1);
    c.crash(N3);
    write(&mut c, N1, 30);
    settle(&mut c, N1);
    // Both survivors snapshot at the same index: the same state gives the same bytes.
    c.snapshot(N1, 0).unwrap();
    c.snapshot(N2, 0).unwrap();
    assert_eq!(c.snapshot_meta(N1), c.snapshot_meta(N2));
    c.restart(N3).unwrap();
    assert!(c
        .run_until(200, |c| c.report().snapshot_chunks_sent >= 4)
        .unwrap());
    assert_eq!(c.report().snapshots_installed, 0, "still in transfer");
    c.crash(N1);
    c.run_ticks(5).unwrap();
    elect(&mut c, N2);
    settle(&mut c, N2);
    let r = c.report();
    assert_eq!(r.snapshots_installed, 1, "{r:?}");
    // The new leader resumed (a stall may re-probe and resume more than once).
    assert!(r.snapshot_resumes >= 1, "the new leader resumed: {r:?}");
    assert_eq!(
        r.snapshot_transfers, 1,
        "only the first transfer began at 0: {r:?}"
    );
}

#[test]
fn a_newer_snapshot_restarts_the_transfer_and_is_the_one_installed() {
    let mut c = cluster(5, 4, 1);
    elect(&mut c, N1);
    c.crash(N3);
    write(&mut c, N1, 20);
    c.snapshot(N1, 0).unwrap();
    let older = c.snapshot_meta(N1).unwrap();
    c.restart(N3).unwrap();
    assert!(c
        .run_until(200, |c| c.report().snapshot_chunks_sent >= 3)
        .unwrap());
    write(&mut c, N1, 10);
    c.snapshot(N1, 0).unwrap();
    let newer = c.snapshot_meta(N1).unwrap();
    assert!(newer.last_index > older.last_index);
    settle(&mut c, N1);
    assert_eq!(c.snapshot_meta(N3), Some(newer));
    assert_eq!(c.report().snapshots_installed, 1);
    assert!(c.report().snapshot_transfers >= 2, "{:?}", c.report());
}

#[test]
fn corrupt_chunks_are_rejected_and_resent() {
    let mut c = cluster(6, 4, 2);
    elect(&mut c, N1);
    c.crash(N3);
    write(&mut c, N1, 20);
    c.snapshot(N1, 0).unwrap();
    c.config_mut().chunk_corrupt_rate = 0.3;
    c.restart(N3).unwrap();
    settle(&mut c, N1);
    let r = c.report();
    assert!(r.snapshot_chunk_rejects > 0, "{r:?}");
    assert_eq!(r.snapshots_installed, 1, "{r:?}");
}

#[test]
fn a_corrupt_received_file_fails_verification_and_the_transfer_starts_over() {
    let mut c = cluster(7, 8, 2);
    elect(&mut c, N1);
    c.crash(N3);
    write(&mut c, N1, 20);
    c.snapshot(N1, 0).unwrap();
    c.config_mut().snapshot_corrupt_rate = 1.0;
    c.restart(N3).unwrap();
    assert!(c
        .run_until(200, |c| c.report().snapshots_rejected >= 1)
        .unwrap());
    c.config_mut().snapshot_corrupt_rate = 0.0;
    settle(&mut c, N1);
    let r = c.report();
    assert_eq!(r.snapshots_installed, 1, "{r:?}");
    // The follower asked to start over, and every chunk went out again.
    assert!(r.snapshot_chunk_rejects >= 1, "{r:?}");
    let chunks = c.snapshot_meta(N1).unwrap().size_bytes.div_ceil(8);
    assert!(r.snapshot_chunks_sent >= 2 * chunks, "{r:?}");
}

#[test]
fn a_follower_that_crashes_mid_transfer_starts_it_over_and_installs() {
    let mut c = cluster(8, 4, 1);
    elect(&mut c, N1);
    c.crash(N3);
    write(&mut c, N1, 25);
    c.snapshot(N1, 0).unwrap();
    c.restart(N3).unwrap();
    assert!(c
        .run_until(200, |c| c.report().snapshot_chunks_sent >= 4)
        .unwrap());
    c.crash(N3);
    c.run_ticks(3).unwrap();
    c.restart(N3).unwrap();
    settle(&mut c, N1);
    let r = c.report();
    assert_eq!(r.snapshots_installed, 1, "{r:?}");
    // The partial copy died with the crash: the transfer began at 0 a second time.
    assert!(r.snapshot_transfers >= 2, "{r:?}");
}

#[test]
fn the_log_stays_bounded_when_snapshots_follow_the_writes() {
    let mut c = cluster(9, 16, 2);
    elect(&mut c, N1);
    for _ in 0..10 {
        write(&mut c, N1, 20);
        settle(&mut c, N1);
        for id in [N1, N2, N3] {
            c.snapshot(id, 5).unwrap();
        }
        for id in [N1, N2, N3] {
            // Compaction follows the snapshot: at most 5 applied entries stay behind it.
            let first = c.node(id).unwrap().first_index();
            assert!(
                first.0 + 5 >= c.applied(id).0,
                "{id} keeps the log from {first}"
            );
        }
    }
    // The last writes may still be in flight when the followers caught up with the leader.
    c.run_until(100, |c| c.committed_index() >= LogIndex(200))
        .unwrap();
    assert!(
        c.committed_index() >= LogIndex(200),
        "{}",
        c.committed_index()
    );
}

#[test]
fn chunks_in_flight_stay_within_the_window() {
    let mut c = cluster(11, 4, 2);
    elect(&mut c, N1);
    c.crash(N3);
    write(&mut c, N1, 30);
    c.snapshot(N1, 0).unwrap();
    c.restart(N3).unwrap();
    let mut most = 0;
    let installed = c
        .run_until(300, |c| {
            let transfer = c
                .node(N1)
                .and_then(|r| r.progress(N3))
                .and_then(|p| p.snapshot.as_ref());
            if let Some(t) = transfer {
                most = most.max(t.inflight.len());
                assert!(t.acked <= t.sent && t.sent <= t.meta.size_bytes, "{t:?}");
            }
            c.report().snapshots_installed == 1
        })
        .unwrap();
    assert!(installed);
    assert_eq!(
        most, 2,
        "the window of 2 chunks was used and never exceeded"
    );
}
