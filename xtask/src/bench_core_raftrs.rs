//! The anchor of `cargo xtask bench core` (feature `anchor-raft-rs`): TiKV's raft-rs 0.7
//! (crates.io) `RawNode`s on raft-rs's `MemStorage`, driven by the same single-threaded loop as
//! ours in `bench_core.rs`: nodes take turns, each steps everything queued for it and handles
//! one `Ready` (messages out, entries and hard state into the store, persisted messages out,
//! committed entries applied, `advance`, then the `LightReady`'s commit, messages and
//! committed entries, `advance_apply`). Clients, phases, compaction and the checks are those
//! of our loop; the configuration is ours translated (election 10 ticks, heartbeat 1, pre-vote
//! and check-quorum as ours, the same in-flight append limit, the same bytes per message).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use raft::eraftpb::{ConfState, Entry, Message, MessageType};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole, NO_LIMIT};

use crate::bench_core_driver::Measured;

/// The leader the benchmark elects.
const LEADER: u64 = 1;

/// Nodes in the cluster.
const NODES: u64 = 3;

/// Compact the stores once this many entries are applied everywhere beyond the last
/// compaction (as in our loop).
const COMPACT_EVERY: u64 = 1 << 16;

/// The knobs of ours that raft-rs has too.
#[derive(Clone, Copy)]
pub(crate) struct RsConfig {
    pub inflight_msgs_max: usize,
    pub msg_bytes_max: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
}

fn config(id: u64, c: RsConfig) -> raft::Config {
    raft::Config {
        id,
        election_tick: 10,
        heartbeat_tick: 1,
        max_inflight_msgs: c.inflight_msgs_max,
        max_size_per_msg: c.msg_bytes_max,
        max_uncommitted_size: NO_LIMIT,
        pre_vote: c.pre_vote,
        check_quorum: c.check_quorum,
        ..Default::default()
    }
}

struct Cluster {
    nodes: Vec<RawNode<MemStorage>>,
    /// Messages waiting to be stepped, by addressee (`inbox[id - 1]`).
    inbox: Vec<Vec<Message>>,
    spare: Vec<Message>,
    applied: Vec<u64>,
    compacted: u64,
}

impl Cluster {
    fn elected(c: RsConfig) -> Result<Cluster, String> {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let store = MemStorage::new_with_conf_state(ConfState::from((
                (1..=NODES).collect::<Vec<_>>(),
                vec![],
            )));
            let node = RawNode::new(&config(id, c), store, &logger)
                .map_err(|e| format!("raft-rs node {id}: {e}"))?;
            nodes.push(node);
        }
        let mut cluster = Cluster {
            nodes,
            inbox: (0..NODES).map(|_| Vec::new()).collect(),
            spare: Vec::new(),
            applied: vec![0; NODES as usize],
            compacted: 0,
        };
        cluster.nodes[0]
            .campaign()
            .map_err(|e| format!("raft-rs campaign: {e}"))?;
        while cluster.pump(|_, _| {}) {}
        cluster.nodes[0].tick();
        while cluster.pump(|_, _| {}) {}
        let commit = cluster.nodes[0].raft.raft_log.committed;
        if cluster.nodes[0].raft.state != StateRole::Leader {
            return Err("raft-rs node 1 did not become leader".into());
        }
        for (n, &applied) in cluster.nodes.iter().zip(&cluster.applied) {
            if n.raft.leader_id != LEADER || applied < commit {
                return Err(format!("raft-rs node {} did not settle", n.raft.id));
            }
        }
        Ok(cluster)
    }

    /// One turn of every node; `on_leader(leader, last_applied)` after each leader Ready.
    fn pump(&mut self, mut on_leader: impl FnMut(&mut RawNode<MemStorage>, Option<u64>)) -> bool {
        let mut progressed = false;
        for i in 0..self.nodes.len() {
            if !self.inbox[i].is_empty() {
                progressed = true;
                std::mem::swap(&mut self.inbox[i], &mut self.spare);
                for m in self.spare.drain(..) {
                    // Messages of a stale term or a removed peer are refused; Raft copes.
                    let _ = self.nodes[i].step(m);
                }
            }
            if !self.nodes[i].has_ready() {
                continue;
            }
            progressed = true;
            let last = self.handle_ready(i);
            if let Some(index) = last {
                self.applied[i] = index;
            }
            if self.nodes[i].raft.id == LEADER {
                on_leader(&mut self.nodes[i], last);
            }
        }
        progressed
    }

    /// Handles node `i`'s Ready; returns the last index it applied, if any.
    fn handle_ready(&mut self, i: usize) -> Option<u64> {
        let node = &mut self.nodes[i];
        let mut ready = node.ready();
        for m in ready.take_messages() {
            self.inbox[(m.to - 1) as usize].push(m);
        }
        {
            let mut store = node.mut_store().wl();
            store
                .append(ready.entries())
                .expect("raft-rs MemStorage append");
            if let Some(hs) = ready.hs() {
                store.set_hardstate(hs.clone());
            }
        }
        for m in ready.take_persisted_messages() {
            self.inbox[(m.to - 1) as usize].push(m);
        }
        let mut last = ready.committed_entries().last().map(|e| e.index);
        let mut light = node.advance(ready);
        if let Some(commit) = light.commit_index() {
            node.mut_store().wl().mut_hard_state().set_commit(commit);
        }
        for m in light.take_messages() {
            self.inbox[(m.to - 1) as usize].push(m);
        }
        if let Some(e) = light.committed_entries().last() {
            last = Some(e.index);
        }
        node.advance_apply();
        last
    }

    fn maybe_compact(&mut self) {
        let mut floor = u64::MAX;
        for (n, &applied) in self.nodes.iter().zip(&self.applied) {
            floor = floor.min(applied);
            if let Some(p) = self.nodes[0].raft.prs().get(n.raft.id) {
                floor = floor.min(p.matched);
            }
        }
        if floor < self.compacted + COMPACT_EVERY {
            return;
        }
        for n in &mut self.nodes {
            n.mut_store()
                .wl()
                .compact(floor)
                .expect("raft-rs MemStorage compact");
        }
        self.compacted = floor;
    }

    fn leader_term(&self) -> (StateRole, u64) {
        (self.nodes[0].raft.state, self.nodes[0].raft.term)
    }
}

/// Proposes `cmds` commands of `payload` bytes on the leader (one `MsgPropose` carrying them
/// all, like our `propose_batch`); returns the index of the last.
fn propose(leader: &mut RawNode<MemStorage>, cmds: usize, payload: &[u8]) -> Result<u64, String> {
    let result = if cmds == 1 {
        leader.propose(Vec::new(), payload.to_vec())
    } else {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = LEADER;
        let entries: Vec<Entry> = (0..cmds)
            .map(|_| Entry {
                data: payload.to_vec().into(),
                ..Default::default()
            })
            .collect();
        m.set_entries(entries.into());
        leader.step(m)
    };
    result.map_err(|e| format!("raft-rs propose: {e}"))?;
    Ok(leader.raft.raft_log.last_index())
}

/// Runs `clients` closed-loop clients with `cmds` commands per proposal on a fresh cluster.
pub(crate) fn run_row(
    clients: usize,
    cmds: usize,
    payload: usize,
    warmup: Duration,
    measure: Duration,
    c: RsConfig,
) -> Result<Measured, String> {
    let mut cluster = Cluster::elected(c)?;
    let term_before = cluster.leader_term();
    let payload = vec![0u8; payload];
    let mut pending: VecDeque<(u64, Instant)> = VecDeque::with_capacity(clients);
    let start = Instant::now();
    for _ in 0..clients {
        pending.push_back((propose(&mut cluster.nodes[0], cmds, &payload)?, start));
    }
    let mut state = RowState {
        hist: Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram"),
        phase: Phase::Warmup,
        phase_start: start,
        secs: 0.0,
        ops: 0,
        error: None,
    };
    while !(state.phase == Phase::Drain && pending.is_empty()) {
        let progressed = cluster.pump(|leader, last| {
            if let Some(last) = last {
                state.on_applied(
                    leader,
                    last,
                    &mut pending,
                    (cmds, &payload),
                    (warmup, measure),
                );
            }
        });
        if let Some(e) = state.error.take() {
            return Err(e);
        }
        if !progressed {
            return Err(format!(
                "raft-rs stalled with {} proposals outstanding",
                pending.len()
            ));
        }
        cluster.maybe_compact();
    }
    let term_after = cluster.leader_term();
    if term_after != term_before || term_after.0 != StateRole::Leader {
        return Err(format!(
            "raft-rs leadership changed: {term_before:?} -> {term_after:?}"
        ));
    }
    Ok(Measured {
        ops: state.ops,
        secs: state.secs,
        hist: state.hist,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
    Drain,
}

struct RowState {
    hist: Histogram<u64>,
    phase: Phase,
    phase_start: Instant,
    secs: f64,
    ops: u64,
    error: Option<String>,
}

impl RowState {
    /// The leader applied up to `last`: complete the clients waiting for it, move between
    /// phases, and let every completed client propose again.
    fn on_applied(
        &mut self,
        leader: &mut RawNode<MemStorage>,
        last: u64,
        pending: &mut VecDeque<(u64, Instant)>,
        (cmds, payload): (usize, &[u8]),
        (warmup, measure): (Duration, Duration),
    ) {
        let now = Instant::now();
        let mut done = 0usize;
        while pending.front().is_some_and(|&(index, _)| index <= last) {
            let (_, start) = pending.pop_front().expect("checked");
            if self.phase == Phase::Measure {
                self.hist
                    .saturating_record(now.duration_since(start).as_nanos() as u64);
                self.ops += cmds as u64;
            }
            done += 1;
        }
        let elapsed = now.duration_since(self.phase_start);
        match self.phase {
            Phase::Warmup if elapsed >= warmup => {
                self.phase = Phase::Measure;
                self.phase_start = now;
            }
            Phase::Measure if elapsed >= measure => {
                self.phase = Phase::Drain;
                self.secs = elapsed.as_secs_f64();
            }
            _ => {}
        }
        if self.phase == Phase::Drain {
            return;
        }
        for _ in 0..done {
            match propose(leader, cmds, payload) {
                Ok(index) => pending.push_back((index, now)),
                Err(e) => {
                    self.error.get_or_insert(e);
                }
            }
        }
    }
}
