//! Scenario tests of the core that read better in Rust than as transcripts: properties over
//! every role or many seeded runs, round-trip counts, and memory bounds.
//!
//! Each test names the scenario of `test-scenarios.md` it covers. The transcripts in
//! `tests/testdata/` cover the same scenarios step by step; the tests here check the
//! properties over many cases. Both drive the cluster through [`support::Harness`], which
//! checks Raft's safety properties after every step, or through the simulator
//! [`raftline_core::testing::sim::Cluster`], which does the same after every event.

mod support;

use bytes::Bytes;
use raftline_core::testing::sim::{run_seed, Cluster, SimConfig};
use raftline_core::{Config, MemStorage, RawNode, Rng, Role, StorageMut};
use raftline_proto::{
    AppendRequest, AppendResponse, Entry, HardState, HeartbeatRequest, HeartbeatResponse, LogIndex,
    Membership, Message, MessageBody, NodeId, Term, VoteRequest, VoteResponse,
};
use support::{Filter, Harness};

// ----- helpers ------------------------------------------------------------------------------

fn config(pre_vote: bool, check_quorum: bool) -> Config {
    let mut cfg = Config::new(NodeId(1));
    cfg.pre_vote = pre_vote;
    cfg.check_quorum = check_quorum;
    cfg
}

fn voters(n: u64) -> Membership {
    Membership::with_voters((1..=n).map(NodeId))
}

/// Entries `from..=to` of `term`, each carrying its index as data.
fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to)
        .map(|i| Entry::normal(Term(term), LogIndex(i), i.to_string()))
        .collect()
}

fn store_with(membership: &Membership, log: &[Entry], hard_state: HardState) -> MemStorage {
    let mut store = MemStorage::new(membership.clone());
    store.append(log).expect("append");
    store.set_hard_state(hard_state).expect("hard state");
    store
}

/// Persists, sends nothing, and acknowledges every Ready of a lone node.
fn drain(node: &mut RawNode<MemStorage>, store: &mut MemStorage) -> Vec<Message> {
    let mut sent = Vec::new();
    while node.has_ready() {
        let ready = node.ready();
        store.append(&ready.entries).expect("append");
        if let Some(hs) = ready.hard_state {
            store.set_hard_state(hs).expect("hard state");
        }
        sent.extend(ready.messages.iter().cloned());
        sent.extend(ready.persisted_messages.iter().cloned());
        node.advance(&ready);
    }
    sent
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    }
}

fn log_terms(node: &RawNode<MemStorage>) -> Vec<Option<Term>> {
    (1..=node.last_index().0)
        .map(|i| node.term_at(LogIndex(i)))
        .collect()
}

/// Runs the harness clock: every tick, every node that is up ticks, then the cluster
/// stabilizes.
fn run(h: &mut Harness, ticks: u64) {
    for _ in 0..ticks {
        for id in h.ids() {
            if h.is_up(id.0) {
                h.tick(id.0);
            }
        }
        h.stabilize(&[]);
    }
}

fn quiet_harness(n: u64, cfg: Config) -> Harness {
    let mut h = Harness::new(n, cfg);
    h.quiet = true;
    h
}

fn elect(h: &mut Harness, id: u64) {
    h.campaign(id);
    h.stabilize(&[]);
    assert_eq!(h.raw(id).role(), Role::Leader, "n{id} won its election");
}

// ----- Scenario 1 ---------------------------------------------------------------------------

/// Node 1 of a three-node cluster in `role`, with the log i1@t1 i2@t2 and term 2 (3 once it
/// campaigned). Everything it had to do is done.
fn node_in(role: Role) -> (RawNode<MemStorage>, MemStorage) {
    let log = [entries(1, 1, 1), entries(2, 2, 2)].concat();
    let hs = HardState {
        term: Term(2),
        vote: None,
        commit: LogIndex(1),
    };
    let mut store = store_with(&voters(3), &log, hs);
    let cfg = config(role == Role::PreCandidate, false);
    let mut node = RawNode::new(cfg, store.clone()).expect("valid");
    if role != Role::Follower {
        node.campaign();
    }
    drain(&mut node, &mut store);
    if role == Role::Leader {
        let granted = MessageBody::VoteResponse(VoteResponse { granted: true });
        node.step(msg(2, 1, node.term().0, granted));
        drain(&mut node, &mut store);
    }
    assert_eq!(node.role(), role);
    (node, store)
}

/// Every message kind a peer can send, in `term`.
fn every_kind(term: u64) -> Vec<Message> {
    let vote_req = VoteRequest {
        last_log_index: LogIndex(9),
        last_log_term: Term(9),
        transfer: false,
    };
    let bodies = vec![
        MessageBody::PreVote(vote_req.clone()),
        MessageBody::PreVoteResponse(VoteResponse { granted: true }),
        MessageBody::Vote(vote_req),
        MessageBody::VoteResponse(VoteResponse { granted: true }),
        MessageBody::Append(AppendRequest {
            prev_log_index: LogIndex(1),
            prev_log_term: Term(1),
            entries: entries(2, 3, term),
            leader_commit: LogIndex(3),
        }),
        MessageBody::AppendResponse(AppendResponse {
            success: true,
            index: LogIndex(2),
            hint: None,
        }),
        MessageBody::Heartbeat(HeartbeatRequest {
            leader_commit: LogIndex(2),
            context: 0,
        }),
        MessageBody::HeartbeatResponse(HeartbeatResponse { context: 0 }),
        MessageBody::TimeoutNow,
    ];
    bodies.into_iter().map(|b| msg(2, 1, term, b)).collect()
}

// Scenario 1: a message of an older term changes nothing, in any role; the sender of an
// append or heartbeat learns the newer term, and a pre-vote is refused (§5.1).
#[test]
fn scenario_1_stale_term_messages_change_nothing_in_any_role() {
    for role in [
        Role::Follower,
        Role::PreCandidate,
        Role::Candidate,
        Role::Leader,
    ] {
        let term = node_in(role).0.term().0;
        for stale in every_kind(term - 1) {
            let (mut node, _store) = node_in(role);
            let before = (node.status().hard_state, node.role(), log_terms(&node));
            let kind = stale.body.kind();
            node.step(stale);
            let after = (node.status().hard_state, node.role(), log_terms(&node));
            assert_eq!(before, after, "{role:?}: a stale {kind} changed the node");
            let ready = node.ready();
            assert!(
                ready.soft_state.is_none() && ready.hard_state.is_none(),
                "{role:?}: a stale {kind} changed the node's state"
            );
            assert!(ready.entries.is_empty(), "{role:?}: stale {kind} appended");
            let out: Vec<&Message> = ready
                .messages
                .iter()
                .chain(&ready.persisted_messages)
                .collect();
            for m in &out {
                assert_eq!(m.term, Term(term), "{role:?}: answers carry the newer term");
                let refusal = matches!(
                    m.body,
                    MessageBody::AppendResponse(AppendResponse { success: false, .. })
                        | MessageBody::PreVoteResponse(VoteResponse { granted: false })
                );
                assert!(refusal, "{role:?}: stale {kind} got {:?}", m.body);
            }
            let expect_answer = matches!(kind, "append" | "heartbeat" | "pre-vote");
            assert_eq!(
                out.len(),
                usize::from(expect_answer),
                "{role:?}: answers to a stale {kind}"
            );
        }
    }
}

// Scenario 1: any message of a newer term (but a pre-vote request) makes the node a follower
// of that term; a pre-vote request does not move its term (§5.1, §9.6 of the dissertation).
#[test]
fn scenario_1_a_higher_term_makes_every_role_step_down() {
    for role in [
        Role::Follower,
        Role::PreCandidate,
        Role::Candidate,
        Role::Leader,
    ] {
        let term = node_in(role).0.term().0;
        for newer in every_kind(term + 1) {
            let kind = newer.body.kind();
            if kind == "pre-vote-resp" || kind == "timeout-now" {
                // A granted pre-vote echoes a future term by design; TimeoutNow is only ever
                // sent by the leader of the receiver's own term.
                continue;
            }
            let (mut node, _store) = node_in(role);
            node.step(newer);
            if kind == "pre-vote" {
                assert_eq!(
                    node.term(),
                    Term(term),
                    "{role:?}: a pre-vote moved the term"
                );
                assert_eq!(node.role(), role, "{role:?}: a pre-vote changed the role");
            } else {
                assert_eq!(node.term(), Term(term + 1), "{role:?} after a newer {kind}");
                assert_eq!(node.role(), Role::Follower, "{role:?} after a newer {kind}");
            }
        }
        // A refused pre-vote that reveals a newer term also makes a pre-candidate step down.
        if role == Role::PreCandidate {
            let (mut node, _store) = node_in(role);
            let refusal = MessageBody::PreVoteResponse(VoteResponse { granted: false });
            node.step(msg(2, 1, term + 1, refusal));
            assert_eq!((node.role(), node.term()), (Role::Follower, Term(term + 1)));
        }
    }
}

// ----- Scenario 2 ---------------------------------------------------------------------------

// Scenario 2: a vote survives a crash once its Ready is durable, and never leaves before.
// Every crash point of the voter, for every order of two candidates in one term.
#[test]
fn scenario_2_a_voter_never_votes_twice_in_a_term_across_crashes() {
    for crash_before_persist in [false, true] {
        let mut h = quiet_harness(3, config(false, false));
        h.campaign(1);
        h.campaign(3);
        h.process_ready(1);
        h.process_ready(3);
        // 2 gets 1's request first and votes; it may crash before that vote is durable.
        h.deliver(&Filter {
            from: Some(NodeId(1)),
            to: Some(NodeId(2)),
            ..Filter::default()
        });
        assert!(h.ready(2));
        let vote_sent = |h: &Harness, to: u64| {
            h.queue.iter().any(|m| {
                m.from == NodeId(2)
                    && m.to == NodeId(to)
                    && matches!(
                        m.body,
                        MessageBody::VoteResponse(VoteResponse { granted: true })
                    )
            })
        };
        assert!(!vote_sent(&h, 1), "the vote left before it was durable");
        if !crash_before_persist {
            assert!(h.persist(2));
            assert!(vote_sent(&h, 1), "the vote leaves once durable");
        }
        h.crash(2);
        h.restart(2);
        h.deliver(&Filter::to(2));
        h.stabilize(&[]);
        let leader = h.leader().expect("a leader of term 1");
        assert_eq!(h.raw(leader).term(), Term(1));
        // Without a durable vote, 2 was free to vote for 3; with one, 1 wins and 3 cannot.
        let expected = if crash_before_persist { 3 } else { 1 };
        assert_eq!(
            leader, expected,
            "crash before persist: {crash_before_persist}"
        );
    }
}

// ----- Scenario 3 ---------------------------------------------------------------------------

fn quiet_sim(seed: u64, nodes: usize, pre_vote: bool) -> SimConfig {
    let mut cfg = SimConfig::new(seed).read_index();
    cfg.nodes = nodes;
    cfg.drop_rate = 0.0;
    cfg.duplicate_rate = 0.0;
    cfg.partition_rate = 0.0;
    cfg.crash_rate = 0.0;
    cfg.leader_crash_rate = 0.0;
    cfg.propose_rate = 0.0;
    cfg.latency_units_max = 5;
    cfg.node.pre_vote = pre_vote;
    cfg
}

// Scenario 3: when every node campaigns at once, term 1 splits; randomized election
// timeouts resolve it within a few timeouts (MIT 6.824 2A).
#[test]
fn scenario_3_split_votes_resolve() {
    for seed in 0..30 {
        let mut c = Cluster::new(quiet_sim(seed, 5, false));
        for id in c.ids() {
            c.campaign(id).unwrap();
        }
        let elected = c.run_until(100, |c| c.leader().is_some()).unwrap();
        assert!(
            elected,
            "seed {seed}: no leader 100 ticks after a split vote"
        );
        let leader = c.leader().expect("elected");
        assert!(
            c.node(leader).expect("up").term() > Term(1),
            "seed {seed}: term 1 must split when all five campaign at once"
        );
    }
}

// Scenario 3: no leader without a quorum, with or without pre-vote; a quorum elects one.
#[test]
fn scenario_3_no_leader_without_a_quorum() {
    for seed in 0..10 {
        let mut c = Cluster::new(quiet_sim(seed, 5, seed & 1 == 0));
        for id in [3, 4, 5] {
            c.crash(NodeId(id));
        }
        for _ in 0..200 {
            c.run_ticks(1).unwrap();
            assert_eq!(
                c.leader(),
                None,
                "seed {seed}: a leader with two of five up"
            );
        }
        c.restart(NodeId(3)).unwrap();
        let elected = c.run_until(100, |c| c.leader().is_some()).unwrap();
        assert!(elected, "seed {seed}: three of five up elect a leader");
    }
}

// ----- Scenario 4 ---------------------------------------------------------------------------

// Scenario 4: at most one leader per term, checked by the simulator after every event, in
// runs made of election storms: short timeouts, no pre-vote or check-quorum, slow and lossy
// links, partitions and crashes.
#[test]
fn scenario_4_one_leader_per_term_under_election_storms() {
    let mut terms_with_leader = 0;
    for seed in 0..60 {
        // Election timeouts of 5 ticks leave no room for the simulator's lease.
        let mut cfg = SimConfig::new(seed).read_index();
        cfg.fault_ticks = 300;
        cfg.node.election_ticks = 5;
        cfg.node.heartbeat_ticks = 1;
        cfg.node.pre_vote = false;
        cfg.node.check_quorum = false;
        cfg.latency_units_max = 30;
        cfg.partition_rate = 0.05;
        cfg.crash_rate = 0.01;
        let report = run_seed(cfg).unwrap_or_else(|f| panic!("{f}"));
        terms_with_leader += report.leaders;
    }
    assert!(
        terms_with_leader > 60 * 5,
        "the storms elected only {terms_with_leader} leaders in 60 runs"
    );
}

// ----- Scenario 5 ---------------------------------------------------------------------------

/// A quiet 5-node simulation with an elected leader: (cluster, leader, its term).
fn settled(seed: u64, pre_vote: bool, check_quorum: bool) -> (Cluster, NodeId, Term) {
    let mut cfg = quiet_sim(seed, 5, pre_vote);
    cfg.node.check_quorum = check_quorum;
    let mut c = Cluster::new(cfg);
    assert!(c.run_until(100, |c| c.leader().is_some()).unwrap());
    let leader = c.leader().expect("elected");
    let term = c.node(leader).expect("up").term();
    (c, leader, term)
}

// Scenario 5: with pre-vote and check-quorum, a follower that was cut off for many election
// timeouts rejoins without raising its term or deposing the leader. Without them, the same
// run does depose the leader, which shows the test can fail.
#[test]
fn scenario_5_a_rejoining_node_cannot_depose_a_healthy_leader() {
    let mut disrupted_without = 0;
    for seed in 0..20 {
        for protected in [true, false] {
            let (mut c, leader, term) = settled(seed, protected, protected);
            let victim = c
                .ids()
                .into_iter()
                .find(|&id| id != leader)
                .expect("a follower");
            c.partition(&[victim]);
            c.run_ticks(100).unwrap();
            c.heal();
            c.run_ticks(50).unwrap();
            let stable = c.leader() == Some(leader)
                && c.ids()
                    .iter()
                    .all(|&id| c.node(id).expect("up").term() == term);
            if protected {
                assert!(
                    stable,
                    "seed {seed}: {victim} disrupted the leader {leader}"
                );
            } else if !stable {
                disrupted_without += 1;
            }
        }
    }
    assert!(
        disrupted_without > 10,
        "without pre-vote the rejoin disrupts"
    );
}

// Scenario 5: a leader cut off from its quorum steps down within two election timeouts, and
// the majority elects a new leader.
#[test]
fn scenario_5_a_leader_that_loses_its_quorum_steps_down() {
    for seed in 0..20 {
        let (mut c, leader, _) = settled(seed, true, true);
        c.partition(&[leader]);
        let election_ticks = u64::from(Config::new(NodeId(1)).election_ticks);
        c.run_ticks(2 * election_ticks + 1).unwrap();
        let old = c.node(leader).expect("up");
        assert_ne!(
            old.role(),
            Role::Leader,
            "seed {seed}: {leader} still leads alone"
        );
        let others = c.run_until(100, |c| c.leader().is_some_and(|l| l != leader));
        assert!(
            others.unwrap(),
            "seed {seed}: the majority elects a new leader"
        );
    }
}

// Scenario 5: one-way partitions do not stall the cluster: with each of these links cut in
// one direction only, proposals keep committing.
#[test]
fn scenario_5_one_way_partitions_do_not_stall_the_cluster() {
    for seed in 0..10 {
        for pattern in 0..4 {
            let (mut c, leader, _) = settled(seed, true, true);
            let ids = c.ids();
            let follower = *ids.iter().find(|&&id| id != leader).expect("a follower");
            match pattern {
                0 => c.block(leader, follower),
                1 => c.block(follower, leader),
                2 => {
                    // The leader hears everyone but reaches nobody.
                    for &id in &ids {
                        if id != leader {
                            c.block(leader, id);
                        }
                    }
                }
                _ => {
                    // The leader reaches everyone but hears nobody.
                    for &id in &ids {
                        if id != leader {
                            c.block(id, leader);
                        }
                    }
                }
            }
            c.run_ticks(60).unwrap();
            let before = c.committed_index();
            // Propose through whoever leads now, until something new commits.
            let mut done = false;
            for _ in 0..100 {
                if let Some(l) = c.leader() {
                    c.propose(l).unwrap();
                }
                c.run_ticks(1).unwrap();
                if c.committed_index() > before {
                    done = true;
                    break;
                }
            }
            assert!(done, "seed {seed} pattern {pattern}: the cluster stalled");
        }
    }
}

// ----- Scenario 7 ---------------------------------------------------------------------------

/// Elects node 1 of `stores` (node 3 votes for it), lets it replicate to node 2, and returns
/// how many appends node 2 rejected before its log matched.
fn backtrack(stores: Vec<MemStorage>) -> (usize, Harness) {
    let mut h = Harness::from_stores(config(false, false), stores);
    h.quiet = true;
    h.record = true;
    elect(&mut h, 1);
    run(&mut h, 3);
    let rejections = h
        .sent
        .iter()
        .filter(|m| {
            m.from == NodeId(2)
                && matches!(
                    m.body,
                    MessageBody::AppendResponse(AppendResponse { success: false, .. })
                )
        })
        .count();
    let leader_log = log_terms(h.raw(1));
    assert_eq!(
        log_terms(h.raw(2)),
        leader_log,
        "the follower ends with the leader's log"
    );
    (rejections, h)
}

// Scenario 7: a follower whose divergent suffix spans many terms (it led each of them and
// crashed before replicating) is repaired in one round trip per term, not one per entry.
#[test]
fn scenario_7_fast_backtracking_skips_a_whole_term_per_round_trip() {
    let m = voters(3);
    let follower_terms = 20u64;
    let per_term = 50u64;
    let mut follower_log = entries(1, 1, 1);
    for t in 2..=follower_terms {
        let from = follower_log.len() as u64 + 1;
        follower_log.extend(entries(from, from + per_term - 1, t));
    }
    let leader_term = follower_terms + 1;
    let leader_log = [entries(1, 1, 1), entries(2, 1201, leader_term)].concat();
    let committed = HardState {
        term: Term(leader_term),
        vote: Some(NodeId(1)),
        commit: LogIndex(1201),
    };
    let follower = HardState {
        term: Term(follower_terms),
        vote: Some(NodeId(2)),
        commit: LogIndex(1),
    };
    let stores = vec![
        store_with(&m, &leader_log, committed),
        store_with(&m, &follower_log, follower),
        store_with(&m, &leader_log, committed),
    ];
    let (rejections, _) = backtrack(stores);
    let divergent_entries = follower_log.len() - 1;
    // One rejection for the follower's shorter log, then one per divergent term.
    assert!(
        rejections <= follower_terms as usize + 1,
        "{rejections} rejections for {} divergent terms ({divergent_entries} entries)",
        follower_terms - 1
    );
    assert!(rejections >= 2, "the logs did diverge");
}

// Scenario 7: a follower with a long tail of one old term, behind a leader whose log holds
// a few entries of that term and then many newer terms: the leader skips to its own last
// entry of the follower's term at once.
#[test]
fn scenario_7_fast_backtracking_uses_the_leaders_entries_of_the_conflicting_term() {
    let m = voters(3);
    let mut leader_log = [entries(1, 1, 1), entries(2, 11, 2)].concat();
    for t in 3..=12 {
        let from = leader_log.len() as u64 + 1;
        leader_log.extend(entries(from, from + 99, t));
    }
    let last = leader_log.len() as u64;
    let follower_log = [entries(1, 1, 1), entries(2, 1001, 2)].concat();
    let committed = HardState {
        term: Term(12),
        vote: Some(NodeId(1)),
        commit: LogIndex(last),
    };
    let follower = HardState {
        term: Term(2),
        vote: Some(NodeId(2)),
        commit: LogIndex(11),
    };
    let stores = vec![
        store_with(&m, &leader_log, committed),
        store_with(&m, &follower_log, follower),
        store_with(&m, &leader_log, committed),
    ];
    let (rejections, _) = backtrack(stores);
    assert!(
        rejections <= 2,
        "{rejections} rejections for a 990-entry tail of one term"
    );
}

// ----- Scenario 8 ---------------------------------------------------------------------------

// Scenario 8: Figure 8 of the paper, many times: leaders crash soon after they start
// replicating (one entry per append), crashed nodes come back only when a majority is down,
// and slow, lossy, duplicating links reorder everything. The simulator checks that every
// committed entry stays committed and every leader holds all of them, after every event.
#[test]
fn scenario_8_figure_8_many_times_with_leader_crashes_and_reordering() {
    let mut leaders = 0;
    let mut committed = 0;
    for seed in 0..80 {
        let mut cfg = SimConfig::new(seed);
        cfg.nodes = if seed & 3 == 0 { 3 } else { 5 };
        cfg.fault_ticks = 300;
        cfg.node.append_entries_max = 1;
        cfg.leader_crash_rate = 0.2;
        cfg.restart_only_for_quorum = true;
        cfg.crash_rate = 0.0;
        cfg.partition_rate = 0.0;
        cfg.drop_rate = 0.05;
        cfg.duplicate_rate = 0.05;
        cfg.latency_units_max = 50;
        cfg.propose_rate = 1.0;
        let report = run_seed(cfg).unwrap_or_else(|f| panic!("{f}"));
        leaders += report.leaders;
        committed += report.committed;
    }
    assert!(
        leaders > 80 * 5,
        "only {leaders} leaders: the churn did not happen"
    );
    assert!(
        committed > 80 * 10,
        "only {committed} entries committed in all"
    );
}

// ----- Scenario 9 ---------------------------------------------------------------------------

// Scenario 9: a leader commits only when a majority has the entry: with 0 to 4 of its 4
// followers reachable, a 5-node leader commits exactly when it reaches 2 or more.
#[test]
fn scenario_9_no_commit_without_a_majority() {
    for reachable in 0..=4u64 {
        let mut h = quiet_harness(5, config(true, false));
        elect(&mut h, 1);
        let before = h.raw(1).commit_index();
        let group: Vec<u64> = (1..=1 + reachable).collect();
        h.partition(&group);
        for i in 0..5 {
            h.propose(1, format!("x{i}")).expect("leader");
        }
        run(&mut h, 20);
        let committed = h.raw(1).commit_index() > before;
        assert_eq!(
            committed,
            reachable >= 2,
            "{reachable} followers reachable: commit {} -> {}",
            before,
            h.raw(1).commit_index()
        );
    }
}

// ----- Scenario 10, 13, 14, 16 --------------------------------------------------------------

/// A random schedule of ticks, proposals, Readies, disk completions, deliveries in any order,
/// duplicates, drops, partitions, crashes (losing every write not yet durable) and restarts.
/// The harness checks every safety property after each step. Afterwards, with faults
/// stopped, every node must apply the same log. Returns how many entries committed.
fn chaos(seed: u64, nodes: u64, steps: u32) -> u64 {
    let mut cfg = config(!matches!(seed % 3, 0), seed & 1 == 0);
    cfg.election_ticks = 8;
    cfg.append_entries_max = 3;
    cfg.inflight_msgs_max = 3;
    let mut h = quiet_harness(nodes, cfg);
    let mut rng = Rng::new(seed);
    let pick = |rng: &mut Rng, n: u64| rng.below(n) + 1;
    let mut command = 0u64;
    for _ in 0..steps {
        let id = pick(&mut rng, nodes);
        match rng.below(1000) {
            0..=59 => {
                if h.is_up(id) {
                    h.tick(id);
                }
            }
            60..=159 => {
                let target = h.leader().unwrap_or(id);
                if h.is_up(target) {
                    command += 1;
                    let _ = h.propose(target, format!("c{command}"));
                }
            }
            160..=359 => {
                h.ready(id);
            }
            360..=559 => {
                h.persist(id);
            }
            560..=919 => {
                if !h.queue.is_empty() {
                    let i = rng.below(h.queue.len() as u64) as usize;
                    h.deliver_one(i);
                }
            }
            920..=949 => {
                if !h.queue.is_empty() {
                    let i = rng.below(h.queue.len() as u64) as usize;
                    let copy = h.queue[i].clone();
                    h.queue.push_back(copy);
                }
            }
            950..=979 => {
                if !h.queue.is_empty() {
                    let i = rng.below(h.queue.len() as u64) as usize;
                    h.queue.remove(i);
                }
            }
            980..=981 => {
                if h.is_up(id) {
                    h.crash(id);
                }
            }
            982..=992 => {
                if !h.is_up(id) {
                    h.restart(id);
                }
            }
            993 => {
                h.heal();
                h.partition(&[id]);
            }
            _ => h.heal(),
        }
    }
    // Faults stop: everyone is up and connected; a leader commits a last command.
    h.heal();
    for id in 1..=nodes {
        if !h.is_up(id) {
            h.restart(id);
        }
    }
    let mut marker = None;
    for _ in 0..300 {
        run(&mut h, 1);
        if let Some(l) = h.leader() {
            if marker.is_none_or(|(lead, term, _)| {
                h.raw(lead).role() != Role::Leader || h.raw(lead).term() != term
            }) {
                let index = h.propose(l, "marker").expect("leader takes a proposal");
                marker = Some((l, h.raw(l).term(), index));
            }
        }
        if let Some((_, _, index)) = marker {
            if (1..=nodes).all(|id| h.applied(id).len() as u64 >= index.0) {
                break;
            }
        }
    }
    let (_, _, index) = marker.unwrap_or_else(|| panic!("seed {seed}: no leader after faults"));
    for id in 1..=nodes {
        let applied = h.applied(id).len();
        assert!(
            applied >= index.0 as usize,
            "seed {seed}: n{id} applied {applied} of {}",
            index.0
        );
    }
    let reference = h.applied(1)[..index.0 as usize].to_vec();
    for id in 2..=nodes {
        let applied = h.applied(id);
        assert_eq!(
            applied[..index.0 as usize],
            reference[..],
            "seed {seed}: n{id} applied another log"
        );
    }
    h.committed_index().0
}

// Scenarios 10, 13, 14 and 16: dropped, duplicated and reordered messages, crashes of any
// node at any point (each loses every write not yet durable) and restarts. Nothing committed
// ever changes, every node applies the committed entries in order and exactly once, every
// leader holds every committed entry (the harness checks this after every step), and once
// the faults stop every node applies the same log.
#[test]
fn scenarios_10_13_14_16_random_faults_keep_every_committed_entry() {
    let mut committed = 0;
    for seed in 0..200 {
        committed += chaos(seed, if seed & 1 == 0 { 3 } else { 5 }, 4000);
    }
    assert!(
        committed > 200 * 50,
        "only {committed} entries committed in all"
    );
}

// Scenario 10: every message ever sent, delivered again in random order (stale terms,
// duplicates, reordering), changes nothing that is committed, and the cluster still
// converges afterwards.
#[test]
fn scenario_10_replaying_every_old_message_changes_nothing_committed() {
    for seed in 0..10 {
        let mut h = quiet_harness(3, config(true, true));
        h.record = true;
        elect(&mut h, 1);
        for i in 0..10 {
            h.propose(1, format!("a{i}")).expect("leader");
        }
        h.stabilize(&[]);
        // A new leader in a new term, with more entries.
        h.crash(1);
        run(&mut h, 30);
        h.restart(1);
        run(&mut h, 3);
        let leader = h.leader().expect("a new leader");
        for i in 0..10 {
            h.propose(leader, format!("b{i}")).expect("leader");
        }
        run(&mut h, 3);
        let committed: Vec<(u64, Vec<Option<Term>>)> = (1..=3)
            .map(|id| {
                let raw = h.raw(id);
                let commit = raw.commit_index().0;
                (commit, log_terms(raw)[..commit as usize].to_vec())
            })
            .collect();
        let mut old = h.sent.clone();
        let mut rng = Rng::new(seed);
        for i in (1..old.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            old.swap(i, j);
        }
        for m in old {
            h.step(m.clone());
            if rng.chance(0.3) {
                h.step(m);
            }
            for (id, (commit, terms)) in (1..=3).zip(&committed) {
                let raw = h.raw(id);
                assert!(
                    raw.commit_index().0 >= *commit,
                    "seed {seed}: n{id} commit went back"
                );
                assert_eq!(
                    log_terms(raw)[..*commit as usize],
                    terms[..],
                    "seed {seed}: n{id} changed a committed entry"
                );
            }
        }
        h.queue.clear();
        run(&mut h, 30);
        let leader = h.leader().expect("a leader after the replay");
        let index = h.propose(leader, "after").expect("leader");
        run(&mut h, 3);
        for id in 1..=3 {
            assert!(
                h.applied(id).len() as u64 >= index.0,
                "seed {seed}: n{id} is stuck after the replay"
            );
        }
    }
}

// ----- Scenario 11 --------------------------------------------------------------------------

/// Checks the flow-control bounds on everything node 1 sent since `from`, and returns the
/// number of appends among them addressed to `to`.
fn check_appends(h: &Harness, from: usize, cfg: &Config, to: u64) -> usize {
    let mut count = 0;
    for m in &h.sent[from..] {
        if let MessageBody::Append(a) = &m.body {
            assert!(
                a.entries.len() <= cfg.append_entries_max,
                "too many entries"
            );
            let bytes: usize = a.entries.iter().map(Entry::size_bytes).sum();
            assert!(
                a.entries.len() <= 1 || bytes <= cfg.msg_bytes_max,
                "an append of {bytes} bytes, over {}",
                cfg.msg_bytes_max
            );
            if m.to == NodeId(to) {
                count += 1;
            }
        }
    }
    count
}

// Scenario 11: a follower that acknowledges nothing (a slow link that holds every message
// both ways) cannot make the leader send or keep more than `inflight_msgs_max` appends for
// it, however much the others commit; each append respects the entry and byte bounds; and
// when the link recovers, the follower catches up within the same bounds.
#[test]
fn scenario_11_a_slow_follower_cannot_grow_the_leaders_memory() {
    let mut cfg = config(true, false);
    cfg.inflight_msgs_max = 4;
    cfg.append_entries_max = 8;
    cfg.msg_bytes_max = 600;
    let mut h = quiet_harness(3, cfg.clone());
    h.record = true;
    elect(&mut h, 1);
    let start = h.sent.len();
    let mut held = Vec::new();
    for round in 0..100 {
        for i in 0..20 {
            let data = Bytes::from(vec![b'a' + (i % 26) as u8; 50 + i as usize * 7]);
            h.propose(1, data).expect("leader");
        }
        h.tick(1);
        // The slow link: every message to or from 3 is held, never delivered.
        let (slow, fast): (Vec<Message>, Vec<Message>) = std::mem::take(&mut h.queue)
            .into_iter()
            .partition(|m| m.to == NodeId(3) || m.from == NodeId(3));
        held.extend(slow);
        h.queue = fast.into();
        h.stabilize(&[1, 2]);
        let pr = h.raw(1).progress(NodeId(3)).expect("leader").clone();
        assert!(
            pr.inflight.len() <= cfg.inflight_msgs_max,
            "round {round}: {} appends in flight to the slow follower",
            pr.inflight.len()
        );
        let appends_to_3 = check_appends(&h, start, &cfg, 3);
        assert!(
            appends_to_3 <= cfg.inflight_msgs_max,
            "round {round}: {appends_to_3} appends sent to the slow follower"
        );
    }
    assert!(h.raw(1).commit_index().0 > 1900, "1 and 2 kept committing");
    // The link recovers: 3 catches up within the same bounds.
    h.queue.extend(held);
    let resumed = h.sent.len();
    run(&mut h, 20);
    check_appends(&h, resumed, &cfg, 3);
    let last = h.raw(1).last_index();
    assert_eq!(h.raw(3).last_index(), last, "the slow follower caught up");
    assert_eq!(h.applied(3).len() as u64, h.raw(1).commit_index().0);
}

// ----- Scenario 12 --------------------------------------------------------------------------

// Scenario 12: the leader counts itself toward commit only for what it has durably. Its
// appends go out before its own write completes; one follower's acknowledgement is not a
// majority of three until the leader's write completes. Two followers' acknowledgements are
// a majority without the leader.
#[test]
fn scenario_12_the_leader_counts_itself_only_once_its_append_is_durable() {
    for acks in [1u64, 2] {
        let mut h = quiet_harness(3, config(true, true));
        elect(&mut h, 1);
        let before = h.raw(1).commit_index();
        let index = h.propose(1, "x").expect("leader");
        assert!(h.ready(1), "the leader hands out its append");
        let appends = h
            .queue
            .iter()
            .filter(|m| matches!(m.body, MessageBody::Append(_)))
            .count();
        assert_eq!(appends, 2, "the appends leave before the leader's write");
        for follower in 2..=1 + acks {
            h.deliver(&Filter::to(follower));
            h.process_ready(follower);
        }
        h.deliver(&Filter::to(1));
        assert_eq!(h.raw(1).status().persisted_index, LogIndex(index.0 - 1));
        if acks == 1 {
            assert_eq!(
                h.raw(1).commit_index(),
                before,
                "committed on one durable copy"
            );
        } else {
            assert_eq!(
                h.raw(1).commit_index(),
                index,
                "two followers are a majority"
            );
        }
        h.persist(1);
        assert_eq!(h.raw(1).commit_index(), index);
    }
}

// ----- Scenario 15 --------------------------------------------------------------------------

// Scenario 15: in a one-node cluster, a proposal is neither committed nor applied before its
// Ready is persisted and acknowledged; a crash before that loses it, and it is never applied.
#[test]
fn scenario_15_a_single_node_acknowledges_only_after_fsync() {
    let mut rng = Rng::new(15);
    let mut store = MemStorage::new(voters(1));
    let mut applied: Vec<Entry> = Vec::new();
    let new_node = |store: &MemStorage, applied: &[Entry]| {
        let mut cfg = Config::new(NodeId(1));
        cfg.applied = LogIndex(applied.len() as u64);
        let mut node = RawNode::new(cfg, store.clone()).expect("valid");
        node.campaign();
        node
    };
    let mut node = new_node(&store, &applied);
    let mut lost = Vec::new();
    for round in 0..200u64 {
        let proposed = node.propose(Bytes::from(round.to_string())).ok();
        if !node.has_ready() {
            continue;
        }
        let ready = node.ready();
        if let Some(index) = proposed {
            assert!(node.commit_index() < index, "committed before the write");
            assert!(
                ready.committed_entries.iter().all(|e| e.index < index),
                "applied before the write"
            );
        }
        if rng.chance(0.2) {
            // Crash before the write completes: everything in this Ready is lost.
            lost.extend(ready.entries.iter().map(|e| (e.index, e.term)));
            node = new_node(&store, &applied);
            continue;
        }
        store.append(&ready.entries).expect("append");
        if let Some(hs) = ready.hard_state {
            store.set_hard_state(hs).expect("hard state");
        }
        for e in &ready.committed_entries {
            assert_eq!(
                e.index.0,
                applied.len() as u64 + 1,
                "applied in order, once"
            );
            assert!(
                !lost.contains(&(e.index, e.term)),
                "applied an entry whose write was lost"
            );
            applied.push(e.clone());
        }
        node.advance(&ready);
    }
    assert!(applied.len() > 50, "only {} entries applied", applied.len());
    assert!(!lost.is_empty(), "some writes were lost to crashes");
}

// Followers learn a new commit index from the leader at once, not at the next heartbeat: a
// follower answers the clients waiting on it (raft-kv answers a forwarded write only once
// the follower that received it has applied it) a round trip after commit. Here no tick
// passes, so no heartbeat carries the commit index.
#[test]
fn followers_learn_the_commit_index_without_a_heartbeat() {
    let mut h = quiet_harness(3, config(true, false));
    elect(&mut h, 1);
    for round in 0..5 {
        h.propose(1, Bytes::from(format!("x{round}")))
            .expect("the leader accepts");
        h.stabilize(&[]);
        let commit = h.raw(1).commit_index();
        for id in [2, 3] {
            assert_eq!(
                h.raw(id).commit_index(),
                commit,
                "round {round}: n{id} knows the commit index without a heartbeat"
            );
            assert_eq!(h.applied(id).len() as u64, commit.0, "n{id} applied it");
        }
    }
}

#[test]
fn proposals_between_two_readies_travel_in_one_append_per_follower() {
    let mut h = quiet_harness(3, config(true, false));
    elect(&mut h, 1);
    h.record = true;
    h.sent.clear();
    for i in 0..5 {
        h.propose(1, Bytes::from(format!("p{i}")))
            .expect("the leader accepts");
    }
    assert!(h.raw(1).has_ready(), "the proposals wait for the Ready");
    h.process_ready(1);
    for to in [2, 3] {
        let appends: Vec<usize> = h
            .sent
            .iter()
            .filter(|m| m.to == NodeId(to))
            .filter_map(|m| match &m.body {
                MessageBody::Append(a) => Some(a.entries.len()),
                _ => None,
            })
            .collect();
        assert_eq!(
            appends,
            vec![5],
            "n{to} gets the five entries in one append"
        );
    }
    h.stabilize(&[]);
    for id in [2, 3] {
        assert_eq!(
            h.applied(id).len(),
            h.applied(1).len(),
            "n{id} applied them"
        );
    }
}
