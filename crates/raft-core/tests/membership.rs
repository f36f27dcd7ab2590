//! Membership scenarios (26 to 31 of the reference list), driven step by step on the
//! simulator's cluster with random faults off. Every safety invariant is still checked after
//! each event, including that each node's configuration is the one its log defines.

use std::collections::BTreeSet;

use raftline_core::testing::sim::{run_seed, Cluster, SimConfig};
use raftline_core::{MembershipChange, Role};
use raftline_proto::{LogIndex, NodeId};

fn n(id: u64) -> NodeId {
    NodeId(id)
}

fn set(ids: &[u64]) -> BTreeSet<NodeId> {
    ids.iter().map(|&i| NodeId(i)).collect()
}

fn cluster(seed: u64, nodes: usize) -> Cluster {
    Cluster::new(SimConfig::quiet(seed, nodes))
}

fn elect(c: &mut Cluster, id: NodeId) {
    c.campaign(id).unwrap();
    assert!(c.run_until(100, |c| is_leader(c, id)).unwrap(), "{id} won");
    // An entry of its term commits (its no-op), so it may change the configuration.
    let own_commit = |c: &Cluster| {
        let r = c.node(id).unwrap();
        r.term_at(r.commit_index()) == Some(r.term())
    };
    assert!(c.run_until(50, own_commit).unwrap());
}

fn is_leader(c: &Cluster, id: NodeId) -> bool {
    c.node(id).is_some_and(|r| r.role() == Role::Leader)
}

fn write(c: &mut Cluster, leader: NodeId, count: usize) {
    for _ in 0..count {
        c.propose(leader).unwrap().expect("the leader accepts");
        c.run_ticks(1).unwrap();
    }
}

/// Proposes `change` on `leader` and runs until it finished; returns whether it committed.
fn change(c: &mut Cluster, leader: NodeId, change: MembershipChange) -> bool {
    let (done, failed) = (c.report().changes_done, c.report().changes_failed);
    assert!(
        c.propose_membership(leader, change.clone()).unwrap(),
        "{leader} accepts {change:?}"
    );
    c.run_until(300, |c| {
        c.report().changes_done > done || c.report().changes_failed > failed
    })
    .unwrap();
    c.report().changes_done > done
}

fn voters(c: &Cluster, id: NodeId) -> BTreeSet<NodeId> {
    c.node(id).unwrap().membership().voters.clone()
}

/// Everything committed is applied on every listed node.
fn caught_up(c: &mut Cluster, ids: &[NodeId]) {
    let target = c.committed_index();
    let ok = c
        .run_until(300, |c| ids.iter().all(|&id| c.applied(id) >= target))
        .unwrap();
    assert!(ok, "not caught up to {target}");
}

#[test]
fn voters_are_added_and_removed_one_at_a_time() {
    let mut c = cluster(1, 3);
    elect(&mut c, n(1));
    write(&mut c, n(1), 5);
    let four = c.add_node();
    assert!(change(&mut c, n(1), MembershipChange::AddVoter(four)));
    assert_eq!(voters(&c, n(1)), set(&[1, 2, 3, 4]));
    assert!(change(&mut c, n(1), MembershipChange::Remove(n(2))));
    assert_eq!(voters(&c, n(1)), set(&[1, 3, 4]));
    write(&mut c, n(1), 5);
    caught_up(&mut c, &[n(1), n(3), four]);
    // The new voter counts: with 3 down, 1 and 4 still commit.
    c.crash(n(3));
    let before = c.committed_index();
    write(&mut c, n(1), 3);
    c.run_ticks(5).unwrap();
    assert!(c.committed_index() > before);
}

#[test]
fn removing_the_leader_commits_the_change_then_the_leader_steps_down() {
    let mut c = cluster(2, 3);
    elect(&mut c, n(1));
    write(&mut c, n(1), 3);
    assert!(change(&mut c, n(1), MembershipChange::Remove(n(1))));
    assert!(
        !is_leader(&c, n(1)),
        "stepped down once the change committed"
    );
    assert!(c
        .run_until(100, |c| is_leader(c, n(2)) || is_leader(c, n(3)))
        .unwrap());
    let leader = c.leader().unwrap();
    c.run_ticks(5).unwrap();
    write(&mut c, leader, 3);
    caught_up(&mut c, &[n(2), n(3)]);
    // n1 never campaigns again and, with no leader talking to it, reports its removal.
    assert!(c
        .run_until(200, |c| c.node(n(1)).unwrap().is_removed())
        .unwrap());
    assert_eq!(c.node(n(1)).unwrap().role(), Role::Follower);
}

#[test]
fn a_partitioned_voter_is_removed_and_cannot_disrupt_the_cluster_when_it_returns() {
    let mut c = cluster(3, 5);
    elect(&mut c, n(1));
    write(&mut c, n(1), 3);
    c.partition(&[n(5)]);
    assert!(change(&mut c, n(1), MembershipChange::Remove(n(5))));
    write(&mut c, n(1), 5);
    // Cut off, n5 never learned its removal: it keeps asking for pre-votes, which are
    // refused, so its term never rises and the leader is undisturbed.
    c.run_ticks(100).unwrap();
    let term = c.node(n(1)).unwrap().term();
    c.heal();
    c.run_ticks(100).unwrap();
    assert!(is_leader(&c, n(1)));
    assert_eq!(c.node(n(1)).unwrap().term(), term);
    assert_ne!(c.node(n(5)).unwrap().role(), Role::Leader);
}

#[test]
fn while_joint_both_majorities_are_needed() {
    // Without check-quorum, the leader keeps leading while cut off from the old voters.
    let mut cfg = SimConfig::quiet(4, 3);
    cfg.node.check_quorum = false;
    let mut c = Cluster::new(cfg);
    elect(&mut c, n(1));
    let (four, five) = (c.add_node(), c.add_node());
    assert!(change(&mut c, n(1), MembershipChange::AddLearner(four)));
    assert!(change(&mut c, n(1), MembershipChange::AddLearner(five)));
    caught_up(&mut c, &[four, five]);
    // The old voters 2 and 3 go away: {1,2,3} -> {1,4,5}, two voters change. Each is cut
    // off alone, so that neither can win an election meanwhile.
    c.partition(&[n(2)]);
    c.partition(&[n(3)]);
    let replace = MembershipChange::Replace {
        voters: [n(1), four, five].into(),
        learners: BTreeSet::new(),
    };
    assert!(c.propose_membership(n(1), replace).unwrap());
    let joint = c.node(n(1)).unwrap().membership().clone();
    assert!(joint.is_joint(), "{joint:?}");
    assert_eq!(joint.voters_outgoing, set(&[1, 2, 3]));
    // 1, 4 and 5 are a majority of the new voters but not of the old: nothing commits.
    let stuck = c.committed_index();
    write(&mut c, n(1), 3);
    c.run_ticks(20).unwrap();
    assert_eq!(
        c.committed_index(),
        stuck,
        "a majority of the old voters is missing"
    );
    assert!(
        c.node(four).unwrap().membership().is_joint(),
        "joint on append"
    );
    // Old voters back: the joint configuration commits, the leader leaves it by itself.
    c.heal();
    assert!(c.run_until(200, |c| c.report().changes_done >= 3).unwrap());
    let last = c.node(n(1)).unwrap().membership().clone();
    assert!(!last.is_joint());
    assert_eq!(last.voters, set(&[1, 4, 5]));
    // 2 and 3 are out: 1, 4 and 5 commit alone.
    c.partition(&[n(2), n(3)]);
    let before = c.committed_index();
    write(&mut c, n(1), 3);
    c.run_ticks(10).unwrap();
    assert!(c.committed_index() > before);
}

#[test]
fn one_change_at_a_time() {
    let mut c = cluster(5, 3);
    elect(&mut c, n(1));
    let four = c.add_node();
    let five = c.add_node();
    assert!(c
        .propose_membership(n(1), MembershipChange::AddLearner(four))
        .unwrap());
    assert!(
        !c.propose_membership(n(1), MembershipChange::AddLearner(five))
            .unwrap(),
        "a second change waits for the first"
    );
    assert!(c.run_until(50, |c| c.report().changes_done == 1).unwrap());
    assert!(c
        .propose_membership(n(1), MembershipChange::AddLearner(five))
        .unwrap());
}

#[test]
fn a_new_leader_refuses_a_change_until_an_entry_of_its_term_commits() {
    let mut c = cluster(6, 3);
    c.campaign(n(1)).unwrap();
    assert!(c.run_until(100, |c| is_leader(c, n(1))).unwrap());
    // Its followers' acknowledgements are lost from now on: the no-op cannot commit.
    c.block(n(2), n(1));
    c.block(n(3), n(1));
    let r = c.node(n(1)).unwrap();
    assert_ne!(
        r.term_at(r.commit_index()),
        Some(r.term()),
        "nothing of its term committed"
    );
    let four = c.add_node();
    assert!(!c
        .propose_membership(n(1), MembershipChange::AddLearner(four))
        .unwrap());
    c.heal();
    c.run_ticks(5).unwrap();
    assert!(c
        .propose_membership(n(1), MembershipChange::AddLearner(four))
        .unwrap());
}

#[test]
fn learners_never_vote_nor_count_toward_a_quorum() {
    let mut c = cluster(7, 3);
    elect(&mut c, n(1));
    let four = c.add_node();
    assert!(change(&mut c, n(1), MembershipChange::AddLearner(four)));
    caught_up(&mut c, &[four]);
    // Leader plus learner is no quorum of {1,2,3}.
    c.partition(&[n(2), n(3)]);
    let before = c.committed_index();
    write(&mut c, n(1), 3);
    c.run_ticks(10).unwrap();
    assert_eq!(c.committed_index(), before);
    // A learner cut off from everyone never campaigns.
    c.heal();
    c.run_ticks(30).unwrap();
    c.partition(&[four]);
    let term = c.node(four).unwrap().term();
    c.run_ticks(200).unwrap();
    assert_eq!(c.node(four).unwrap().role(), Role::Follower);
    assert_eq!(c.node(four).unwrap().term(), term, "it never campaigned");
}

#[test]
fn a_voter_is_added_only_after_catching_up_as_a_learner() {
    let mut c = cluster(8, 3);
    elect(&mut c, n(1));
    write(&mut c, n(1), 30);
    let four = c.add_node();
    assert!(c
        .propose_membership(n(1), MembershipChange::AddVoter(four))
        .unwrap());
    c.run_ticks(1).unwrap();
    assert!(
        c.node(n(1)).unwrap().membership().learners.contains(&four),
        "a learner first"
    );
    assert!(c.run_until(300, |c| c.report().changes_done == 1).unwrap());
    assert!(voters(&c, n(1)).contains(&four));
    assert!(c.applied(four) >= LogIndex(30), "caught up before it votes");
}

#[test]
fn a_learner_that_cannot_catch_up_is_not_promoted() {
    let mut c = cluster(9, 3);
    elect(&mut c, n(1));
    let four = c.add_node();
    assert!(change(&mut c, n(1), MembershipChange::AddLearner(four)));
    c.crash(four);
    assert!(
        !change(&mut c, n(1), MembershipChange::Promote(four)),
        "the promotion fails"
    );
    assert_eq!(c.report().changes_failed, 1);
    let m = c.node(n(1)).unwrap().membership().clone();
    assert!(m.learners.contains(&four) && !m.voters.contains(&four));
}

#[test]
fn leadership_transfer_hands_over_and_refuses_learners_and_strangers() {
    let mut c = cluster(10, 3);
    elect(&mut c, n(1));
    write(&mut c, n(1), 5);
    assert!(c.transfer_leadership(n(1), n(3)).unwrap());
    // No proposals while transferring.
    assert_eq!(c.propose(n(1)).unwrap(), None);
    assert!(c.run_until(50, |c| is_leader(c, n(3))).unwrap());
    c.run_ticks(5).unwrap();
    let four = c.add_node();
    assert!(change(&mut c, n(3), MembershipChange::AddLearner(four)));
    assert!(!c.transfer_leadership(n(3), four).unwrap(), "a learner");
    assert!(!c.transfer_leadership(n(3), n(9)).unwrap(), "a stranger");
    // A transfer to an unreachable voter is abandoned after an election timeout.
    c.partition(&[n(2)]);
    assert!(c.transfer_leadership(n(3), n(2)).unwrap());
    c.run_ticks(12).unwrap();
    assert!(is_leader(&c, n(3)));
    assert!(c.propose(n(3)).unwrap().is_some(), "proposals resume");
}

#[test]
fn reconfiguration_during_partitions_and_crashes_keeps_every_invariant() {
    let mut changes = 0;
    for seed in 0..60 {
        let mut cfg = SimConfig::new(seed * 2);
        cfg.membership_rate = 0.08;
        let report = run_seed(cfg).unwrap_or_else(|f| panic!("{f}"));
        changes += report.changes_done;
    }
    assert!(changes > 100, "{changes} changes committed");
}
