//! The deterministic cluster simulator.
//!
//! A cluster of [`RawNode`]s in one process, driven by one seed. Time is virtual: an event
//! queue orders ticks, message deliveries and disk completions. The network drops, duplicates,
//! reorders and delays messages and makes symmetric and one-way partitions; nodes crash and lose
//! everything not yet durable, then restart from their durable storage. Clients propose
//! throughout. After every event the [`Checker`] verifies Raft's safety properties across the
//! whole cluster; once faults stop, liveness is checked too. The same seed replays the same run.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use raftline_proto::{
    Entry, EntryPayload, HardState, LogIndex, Membership, Message, MessageBody, NodeId,
    SnapshotMeta, Term,
};

use super::checker::{digest_step, parse_snapshot, snapshot_data, Checker};
use crate::{
    Config, Lease, MemStorage, MembershipChange, PersistAck, RawNode, ReadMode, Ready, Rng, Role,
    SnapshotChunk, Storage, StorageMut,
};

/// Where the simulator keeps each node's durable state. A crash drops every handle the node
/// had and reopens the store with [`open`](StoreFactory::open), so a store with recovery
/// logic (a log file) runs it at every simulated crash.
pub trait StoreFactory {
    /// The store type.
    type Store: StorageMut + Clone;

    /// Opens node `id`'s durable store, creating it with `membership` the first time.
    fn open(&mut self, id: NodeId, membership: &Membership) -> Self::Store;
}

/// In-memory durable stores: a reopen returns the same log.
#[derive(Default)]
pub struct MemFactory {
    stores: BTreeMap<NodeId, MemStorage>,
}

impl StoreFactory for MemFactory {
    type Store = MemStorage;

    fn open(&mut self, id: NodeId, membership: &Membership) -> MemStorage {
        self.stores
            .entry(id)
            .or_insert_with(|| MemStorage::new(membership.clone()))
            .clone()
    }
}

/// Virtual time units per tick. Message and disk latencies are drawn in these units, so a
/// message may overtake another sent in the same tick.
pub const UNITS_PER_TICK: u64 = 10;

/// The lease of the lease-mode seeds: with election timeouts of 10 ticks and a drift bound of
/// 10%, the longest lease whose wait fits the election timeout.
pub const SIM_LEASE: Lease = Lease {
    lease_ticks: 8,
    drift_ppm: 100_000,
};

/// The spread of tick periods ([`SimConfig::tick_units_spread`]) that [`SIM_LEASE`]'s bound
/// allows: periods of 9, 10 and 11 units. Their rates lie within 10% of the nominal rate of
/// one tick per 9.9 units (11/9 = 1.1/0.9), so the fastest and slowest nodes sit at the
/// bound's extremes exactly: integral periods keep the drift exact, with no rounding.
pub const SPREAD_WITHIN_BOUND: u64 = 1;

/// A spread well beyond [`SIM_LEASE`]'s bound: periods of 5 to 15 units (3x apart).
pub const SPREAD_BEYOND_BOUND: u64 = 5;

/// Fault rates and durations of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: the same seed and configuration give the same run.
    pub seed: u64,
    /// Cluster size (3 or 5 are typical).
    pub nodes: usize,
    /// Ticks of the faulty phase.
    pub fault_ticks: u64,
    /// Ticks the cluster gets, once faults stop, to elect a leader and commit and apply a
    /// final set of proposals on every node.
    pub liveness_ticks: u64,
    /// Probability that a message is lost.
    pub drop_rate: f64,
    /// Probability that a message is delivered twice.
    pub duplicate_rate: f64,
    /// Maximum message latency in time units (latencies are uniform in `1..=max`).
    pub latency_units_max: u64,
    /// Maximum time a disk write takes, in time units.
    pub disk_units_max: u64,
    /// Per tick: probability that a new partition starts (when none is active).
    pub partition_rate: f64,
    /// Per tick: probability that a node crashes.
    pub crash_rate: f64,
    /// Per tick: probability that the current leader crashes (Figure 8 style churn).
    pub leader_crash_rate: f64,
    /// A crashed node restarts after 1 to this many ticks.
    pub down_ticks_max: u64,
    /// Instead of a timed restart, crashed nodes stay down until a majority is down; then a
    /// random one restarts (the churn of the MIT course's Figure 8 test).
    pub restart_only_for_quorum: bool,
    /// Per tick: probability that a client proposes a command.
    pub propose_rate: f64,
    /// Per tick: probability that a client asks a random node for a linearizable read.
    pub read_rate: f64,
    /// After a write that applied entries: probability that the node takes a snapshot and
    /// compacts its log behind it.
    pub snapshot_rate: f64,
    /// A compaction keeps up to this many entries behind the snapshot (drawn per compaction).
    pub trailing_entries_max: u64,
    /// Probability that a snapshot chunk is corrupted in transit (its checksum catches it).
    pub chunk_corrupt_rate: f64,
    /// Probability that a received snapshot is corrupt on disk when it is verified.
    pub snapshot_corrupt_rate: f64,
    /// Per tick: probability that a configuration change is proposed on the leader (add,
    /// remove, promote, replace through a joint configuration, remove the leader) or a
    /// leadership transfer is asked for.
    pub membership_rate: f64,
    /// Changes keep between this many voters...
    pub voters_min: usize,
    /// ...and this many.
    pub voters_max: usize,
    /// Each node ticks every `UNITS_PER_TICK ± spread` units, its own period drawn from the
    /// seed (0: every node ticks every `UNITS_PER_TICK`). Lease-mode seeds drift within the
    /// bound ([`SPREAD_WITHIN_BOUND`]).
    pub tick_units_spread: u64,
    /// Print every event.
    pub verbose: bool,
    /// The configuration template of every node (`id` and `seed` are set per node).
    pub node: Config,
}

impl SimConfig {
    /// The fault mix for `seed`. Seeds cycle through five profiles so that every range of
    /// seeds covers each: a mixed default, churn (frequent crashes and partitions, one entry
    /// per append), a lossy and slow network, frequent partitions with a window of one
    /// message (half of them without check-quorum), and Figure 8 (leaders crash soon after
    /// they start replicating).
    pub fn new(seed: u64) -> SimConfig {
        let mut node = Config::new(NodeId(1));
        node.election_ticks = 10;
        node.heartbeat_ticks = 2;
        node.append_entries_max = 8;
        node.inflight_msgs_max = 4;
        node.snapshot_chunk_bytes_max = 16;
        node.snapshot_chunks_inflight_max = 3;
        let mut cfg = SimConfig {
            seed,
            nodes: if seed.is_multiple_of(2) { 3 } else { 5 },
            fault_ticks: 600,
            liveness_ticks: 400,
            drop_rate: 0.05,
            duplicate_rate: 0.02,
            latency_units_max: 25,
            disk_units_max: 15,
            partition_rate: 0.01,
            crash_rate: 0.004,
            leader_crash_rate: 0.0,
            down_ticks_max: 40,
            restart_only_for_quorum: false,
            propose_rate: 0.6,
            read_rate: 0.3,
            // Every third seed runs without snapshots; the others compact often, so followers
            // that fall behind are brought up by snapshot.
            snapshot_rate: if seed.is_multiple_of(3) { 0.0 } else { 0.03 },
            trailing_entries_max: 4,
            chunk_corrupt_rate: 0.01,
            snapshot_corrupt_rate: 0.02,
            // Every other pair of seeds changes the configuration as it runs.
            membership_rate: if (seed / 10).is_multiple_of(2) {
                0.02
            } else {
                0.0
            },
            voters_min: 3,
            voters_max: 6,
            tick_units_spread: 0,
            verbose: false,
            node,
        };
        // Every other pair of seeds serves lease reads on drifting clocks; the pairs cover
        // both cluster sizes, every profile below and both membership settings.
        if (seed / 2) % 2 == 1 {
            cfg.node.read_mode = ReadMode::Lease(SIM_LEASE);
            cfg.tick_units_spread = SPREAD_WITHIN_BOUND;
        }
        if cfg.membership_rate > 0.0 {
            // Servers added late start empty and may need a snapshot over a slow, lossy
            // link before the final proposals reach them.
            cfg.liveness_ticks = 800;
        }
        match (seed / 2) % 5 {
            0 => {}
            1 => {
                cfg.node.append_entries_max = 1;
                cfg.node.snapshot_chunks_inflight_max = 1;
                cfg.crash_rate = 0.02;
                cfg.partition_rate = 0.03;
                cfg.latency_units_max = 40;
            }
            2 => {
                cfg.drop_rate = 0.25;
                cfg.duplicate_rate = 0.1;
                cfg.latency_units_max = 60;
                cfg.disk_units_max = 40;
                cfg.node.snapshot_chunk_bytes_max = 7;
                cfg.chunk_corrupt_rate = 0.05;
            }
            3 => {
                // Without check-quorum an isolated leader keeps believing it leads: reads it
                // serves must still never be stale.
                cfg.partition_rate = 0.05;
                cfg.node.append_entries_max = 2;
                cfg.node.inflight_msgs_max = 1;
                cfg.node.check_quorum = seed % 4 != 1;
            }
            _ => {
                // Figure 8 of the paper: leaders crash soon after they start replicating, so
                // logs diverge across terms and entries of older terms get re-replicated.
                cfg.nodes = 5;
                cfg.node.append_entries_max = 1;
                cfg.leader_crash_rate = 0.25;
                cfg.restart_only_for_quorum = true;
                cfg.membership_rate = 0.0;
                cfg.crash_rate = 0.0;
                cfg.partition_rate = 0.0;
                cfg.drop_rate = 0.02;
                cfg.latency_units_max = 30;
                cfg.propose_rate = 1.0;
            }
        }
        cfg
    }
}

impl SimConfig {
    /// A run without random faults, proposals, reads or snapshots: a test drives it.
    pub fn quiet(seed: u64, nodes: usize) -> SimConfig {
        let mut cfg = SimConfig::new(seed);
        cfg.nodes = nodes;
        cfg.drop_rate = 0.0;
        cfg.duplicate_rate = 0.0;
        cfg.partition_rate = 0.0;
        cfg.crash_rate = 0.0;
        cfg.leader_crash_rate = 0.0;
        cfg.restart_only_for_quorum = false;
        cfg.propose_rate = 0.0;
        cfg.read_rate = 0.0;
        cfg.snapshot_rate = 0.0;
        cfg.chunk_corrupt_rate = 0.0;
        cfg.snapshot_corrupt_rate = 0.0;
        cfg.membership_rate = 0.0;
        cfg.read_index()
    }

    /// ReadIndex reads with every node ticking every `UNITS_PER_TICK`: the setting of a test
    /// that changes the election timeout or counts ticks, whatever the seed.
    pub fn read_index(mut self) -> SimConfig {
        self.node.read_mode = ReadMode::ReadIndex;
        self.tick_units_spread = 0;
        self
    }

    /// Lease reads with tick periods that drift beyond the lease's bound: stale reads can
    /// happen, and the read check must catch them.
    pub fn drift_beyond_bound(mut self) -> SimConfig {
        self.node.read_mode = ReadMode::Lease(SIM_LEASE);
        self.tick_units_spread = SPREAD_BEYOND_BOUND;
        self
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Events processed.
    pub steps: u64,
    /// Distinct terms that had a leader.
    pub leaders: usize,
    /// The highest index committed.
    pub committed: u64,
    /// Proposals accepted by a leader.
    pub proposals: u64,
    /// Crashes.
    pub crashes: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost to drops, partitions or crashed receivers.
    pub lost: u64,
    /// Read-index requests answered with a read point.
    pub reads_ok: u64,
    /// Read-index requests refused (no leader, leadership lost).
    pub reads_failed: u64,
    /// Reads the node asked answered in the same step, without a round trip (lease reads
    /// on the leader).
    pub reads_at_once: u64,
    /// Snapshots nodes took of their own state machines.
    pub snapshots_taken: u64,
    /// Snapshot chunks sent (probes included).
    pub snapshot_chunks_sent: u64,
    /// Received snapshots that failed verification.
    pub snapshots_rejected: u64,
    /// Received snapshots installed.
    pub snapshots_installed: u64,
    /// Snapshot transfers that began at offset 0 after their probe.
    pub snapshot_transfers: u64,
    /// Snapshot transfers that resumed at an offset the follower already held.
    pub snapshot_resumes: u64,
    /// Chunk answers that rejected a chunk (bad checksum, or a transfer the follower lost).
    pub snapshot_chunk_rejects: u64,
    /// Configuration changes the leader accepted, and how many of them finished.
    pub changes_proposed: u64,
    /// Configuration changes that committed.
    pub changes_done: u64,
    /// Configuration changes that failed after they were accepted (catch-up, lost leader).
    pub changes_failed: u64,
    /// Leadership transfers asked for, and how many a leader accepted.
    pub transfers: u64,
    /// Nodes that reported they were removed.
    pub removed_reported: u64,
}

/// A violated property, with where it happened.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The seed that reproduces it.
    pub seed: u64,
    /// The event number at which it was detected.
    pub step: u64,
    /// The virtual time, in ticks.
    pub tick: u64,
    /// What went wrong.
    pub reason: String,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at step {} (tick {}): {}",
            self.seed, self.step, self.tick, self.reason
        )
    }
}

#[derive(Debug)]
enum Event {
    Tick(NodeId),
    Deliver(Message),
    DiskDone(NodeId, u64),
    Restart(NodeId),
    HealPartition,
}

/// A write a node handed out and the disk has not finished.
struct PendingWrite {
    /// A received snapshot to install first.
    install: Option<SnapshotMeta>,
    /// Received snapshot chunks to write.
    chunks: Vec<SnapshotChunk>,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
    persisted_messages: Vec<Message>,
    committed_entries: Vec<Entry>,
    ack: PersistAck,
}

struct SimNode<S> {
    /// `None` while crashed.
    raw: Option<RawNode<S>>,
    /// What survives a crash.
    durable: S,
    pending: VecDeque<PendingWrite>,
    /// Disk writes complete in order: the time the last one completes.
    disk_busy_until: u64,
    /// Bumped at each crash so that events of an earlier life are ignored.
    incarnation: u64,
    /// The state machine: the last applied index and its term, and a digest of everything
    /// applied. Restored from the newest snapshot and the log after a restart.
    applied: LogIndex,
    applied_term: Term,
    digest: u64,
    /// The newest durable snapshot and its data.
    snapshot: Option<(SnapshotMeta, Bytes)>,
    /// A snapshot being received (volatile: lost in a crash).
    partial: Option<(SnapshotMeta, Vec<u8>)>,
    /// The configuration the store was created with (empty for a node added later).
    initial: Membership,
    /// The configuration in force at the applied index (what a snapshot records).
    applied_membership: Membership,
    /// Whether the node already reported that it was removed.
    removed_reported: bool,
    /// Virtual time units between two of its ticks (its clock's rate).
    tick_units: u64,
}

impl<S> SimNode<S> {
    /// A node that is down, with its store created with `initial`.
    fn new(durable: S, initial: Membership) -> SimNode<S> {
        SimNode {
            raw: None,
            durable,
            pending: VecDeque::new(),
            disk_busy_until: 0,
            incarnation: 0,
            applied: LogIndex(0),
            applied_term: Term(0),
            digest: 0,
            snapshot: None,
            partial: None,
            applied_membership: initial.clone(),
            initial,
            removed_reported: false,
            tick_units: UNITS_PER_TICK,
        }
    }
}

/// A simulated cluster.
pub struct Cluster<F: StoreFactory = MemFactory> {
    factory: F,
    membership: Membership,
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    nodes: BTreeMap<NodeId, SimNode<F::Store>>,
    /// Directed links that currently lose every message.
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Whether the faulty phase is over.
    quiet: bool,
    checker: Checker,
    next_command: u64,
    /// Read requests in flight: the node asked, the committed index when it was asked, and
    /// the step it was asked at.
    reads: HashMap<u64, (NodeId, LogIndex, u64)>,
    next_read: u64,
    /// The id the next added node gets.
    next_node: u64,
    next_change: u64,
    report: SimReport,
}

impl Cluster<MemFactory> {
    /// A cluster of `cfg.nodes` voters with in-memory stores, all followers at term 0.
    pub fn new(cfg: SimConfig) -> Cluster<MemFactory> {
        Cluster::with_factory(cfg, MemFactory::default())
    }
}

impl<F: StoreFactory> Cluster<F> {
    /// A cluster of `cfg.nodes` voters whose stores come from `factory`.
    pub fn with_factory(cfg: SimConfig, mut factory: F) -> Cluster<F> {
        let ids: Vec<NodeId> = (1..=cfg.nodes as u64).map(NodeId).collect();
        let membership = Membership::with_voters(ids.iter().copied());
        let stores: Vec<F::Store> = ids
            .iter()
            .map(|&id| factory.open(id, &membership))
            .collect();
        let checker = Checker::new(&membership);
        let mut cluster = Cluster {
            factory,
            membership,
            rng: Rng::new(cfg.seed),
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes: BTreeMap::new(),
            blocked: BTreeSet::new(),
            quiet: false,
            checker,
            next_command: 0,
            reads: HashMap::new(),
            next_read: 0,
            next_node: cfg.nodes as u64 + 1,
            next_change: 0,
            report: SimReport {
                seed: cfg.seed,
                ..SimReport::default()
            },
            cfg,
        };
        for (&id, durable) in ids.iter().zip(stores) {
            let mut node = SimNode::new(durable, cluster.membership.clone());
            node.tick_units = cluster.draw_tick_units();
            cluster.nodes.insert(id, node);
            cluster.start_node(id);
            // Stagger the tick phases so nodes do not tick in lockstep.
            let phase = cluster.rng.below(UNITS_PER_TICK);
            cluster.schedule(phase, Event::Tick(id));
        }
        cluster
    }

    fn start_node(&mut self, id: NodeId) {
        let mut config = self.cfg.node.clone();
        config.id = id;
        let node = self.nodes.get_mut(&id).expect("known node");
        config.seed = self.cfg.seed ^ (id.0 << 32) ^ node.incarnation.wrapping_mul(0x9E37_79B9);
        // The state machine starts from the newest snapshot (the log continues after it: a
        // crash may have come between keeping a received snapshot and installing it).
        node.partial = None;
        (node.applied, node.applied_term, node.digest) = (LogIndex(0), Term(0), 0);
        node.applied_membership = node.initial.clone();
        if let Some((meta, data)) = &node.snapshot {
            let (index, digest) = parse_snapshot(data).expect("the simulator wrote it");
            (node.applied, node.applied_term, node.digest) = (index, meta.last_term, digest);
            node.applied_membership = meta.membership.clone();
            node.durable
                .install_snapshot(meta.last_index, meta.last_term, &meta.membership)
                .expect("install the snapshot in the log");
            config.applied = index;
        }
        let mut raw = RawNode::new(config, node.durable.clone()).expect("valid config");
        if let Some((meta, _)) = &node.snapshot {
            raw.on_snapshot_stored(meta.clone());
        }
        node.raw = Some(raw);
    }

    /// A node's tick period: `UNITS_PER_TICK`, or drawn within the configured spread.
    fn draw_tick_units(&mut self) -> u64 {
        let spread = self.cfg.tick_units_spread.min(UNITS_PER_TICK - 1);
        if spread == 0 {
            return UNITS_PER_TICK;
        }
        UNITS_PER_TICK - spread + self.rng.below(2 * spread + 1)
    }

    /// Makes `id` tick every `units` virtual time units from its next tick on (a test's
    /// drifting clock).
    pub fn set_tick_units(&mut self, id: NodeId, units: u64) {
        assert!(units > 0, "a node must tick");
        self.nodes.get_mut(&id).expect("known node").tick_units = units;
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), event);
    }

    fn trace(&self, line: impl FnOnce() -> String) {
        if self.cfg.verbose {
            println!(
                "[{:>6}.{}] {}",
                self.now / UNITS_PER_TICK,
                self.now % UNITS_PER_TICK,
                line()
            );
        }
    }

    /// The current virtual time in ticks.
    pub fn tick_now(&self) -> u64 {
        self.now / UNITS_PER_TICK
    }

    /// The node that is leader of the highest term, among the live nodes.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| n.raw.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    /// The node's raft state, if it is up.
    pub fn node(&self, id: NodeId) -> Option<&RawNode<F::Store>> {
        self.nodes.get(&id).and_then(|n| n.raw.as_ref())
    }

    /// What the node's state machine has applied.
    pub fn applied(&self, id: NodeId) -> LogIndex {
        self.nodes[&id].applied
    }

    /// The node's durable storage.
    pub fn durable(&self, id: NodeId) -> &F::Store {
        &self.nodes[&id].durable
    }

    /// The ids of all nodes.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The fault rates and settings of the run; a test may change them between steps.
    pub fn config_mut(&mut self) -> &mut SimConfig {
        &mut self.cfg
    }

    /// What the run did so far.
    pub fn report(&self) -> &SimReport {
        &self.report
    }

    /// The newest snapshot `id` holds durably.
    pub fn snapshot_meta(&self, id: NodeId) -> Option<SnapshotMeta> {
        self.nodes[&id].snapshot.as_ref().map(|s| s.0.clone())
    }

    /// Makes `id` snapshot its state machine now and compact its log behind the snapshot,
    /// keeping `trailing` entries.
    pub fn snapshot(&mut self, id: NodeId, trailing: u64) -> Result<(), String> {
        if self.nodes[&id].raw.is_none() {
            return Ok(());
        }
        self.take_snapshot_keeping(id, trailing)?;
        self.drain(id)
    }

    /// The highest index known committed anywhere.
    pub fn committed_index(&self) -> LogIndex {
        self.checker.committed_index()
    }

    /// Cuts every link between `group` and the other nodes, both ways.
    pub fn partition(&mut self, group: &[NodeId]) {
        let ids = self.ids();
        for &a in group {
            for &b in &ids {
                if !group.contains(&b) {
                    self.blocked.insert((a, b));
                    self.blocked.insert((b, a));
                }
            }
        }
    }

    /// Cuts the link from `from` to `to` only.
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Crashes a node: it loses its volatile state and every write not yet durable.
    pub fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.raw.take().is_some() {
            node.pending.clear();
            node.incarnation += 1;
            node.disk_busy_until = 0;
            // Drop every handle on the store, then reopen it: what the node finds on restart
            // is what recovery makes of its durable state.
            self.reopen_store(id);
            self.report.crashes += 1;
            self.trace(|| format!("{id} crashes"));
        }
    }

    fn reopen_store(&mut self, id: NodeId) {
        let mut node = self.nodes.remove(&id).expect("known node");
        debug_assert!(
            node.raw.is_none(),
            "reopen only the store of a crashed node"
        );
        // The old handle goes first: a store may refuse a second opener.
        drop(node.durable);
        node.durable = self.factory.open(id, &node.initial);
        self.nodes.insert(id, node);
    }

    /// Restarts a crashed node from its durable storage.
    pub fn restart(&mut self, id: NodeId) -> Result<(), String> {
        if self.nodes[&id].raw.is_none() {
            self.start_node(id);
            self.trace(|| format!("{id} restarts"));
            self.drain(id)?;
        }
        Ok(())
    }

    /// Proposes a fresh command on `id`. Returns the index if `id` accepted it as leader.
    pub fn propose(&mut self, id: NodeId) -> Result<Option<LogIndex>, String> {
        self.next_command += 1;
        let command = Bytes::copy_from_slice(&self.next_command.to_be_bytes());
        let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) else {
            return Ok(None);
        };
        let index = raw.propose(command).ok();
        if let Some(index) = index {
            self.report.proposals += 1;
            self.trace(|| format!("{id} accepts command at {index}"));
        }
        self.drain(id)?;
        Ok(index)
    }

    /// Asks `id` for a linearizable read point. When it answers, the simulator checks that the
    /// point covers everything committed when the read was asked (linearizability of reads:
    /// no stale read from a deposed leader).
    pub fn read(&mut self, id: NodeId) -> Result<(), String> {
        let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) else {
            return Ok(());
        };
        self.next_read += 1;
        raw.read_index(self.next_read);
        let asked = (id, self.checker.committed_index(), self.report.steps);
        self.reads.insert(self.next_read, asked);
        self.drain(id)
    }

    /// Makes `id` campaign now.
    pub fn campaign(&mut self, id: NodeId) -> Result<(), String> {
        if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
            raw.campaign();
        }
        self.drain(id)
    }

    /// Runs events until virtual time reaches `ticks` more ticks from now, checking every
    /// invariant after each event.
    pub fn run_ticks(&mut self, ticks: u64) -> Result<(), String> {
        let until = self.now + ticks * UNITS_PER_TICK;
        while let Some((&(at, seq), _)) = self.queue.first_key_value() {
            if at > until {
                break;
            }
            let event = self.queue.remove(&(at, seq)).expect("present");
            self.now = at;
            self.report.steps += 1;
            self.handle(event)?;
            self.check()?;
        }
        self.now = until;
        Ok(())
    }

    /// Runs until `done` holds or `ticks_max` ticks pass; returns whether it held.
    pub fn run_until(
        &mut self,
        ticks_max: u64,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<bool, String> {
        for _ in 0..ticks_max {
            if done(self) {
                return Ok(true);
            }
            self.run_ticks(1)?;
        }
        Ok(done(self))
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Tick(id) => {
                self.schedule(self.nodes[&id].tick_units, Event::Tick(id));
                if let Some(raw) = self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()) {
                    raw.tick();
                    self.drain(id)?;
                }
            }
            Event::Deliver(msg) => {
                let to = msg.to;
                if self.nodes[&to].raw.is_none() {
                    self.report.lost += 1;
                    return Ok(());
                }
                self.report.delivered += 1;
                if self.cfg.verbose {
                    let line = format!("{} -> {} {} {:?}", msg.from, msg.to, msg.term, msg.body);
                    self.trace(|| line);
                }
                let raw = self
                    .nodes
                    .get_mut(&to)
                    .and_then(|n| n.raw.as_mut())
                    .expect("checked");
                raw.step(msg);
                self.drain(to)?;
            }
            Event::DiskDone(id, incarnation) => {
                if self.nodes[&id].incarnation == incarnation {
                    self.complete_write(id)?;
                    self.drain(id)?;
                }
            }
            Event::Restart(id) => self.restart(id)?,
            Event::HealPartition => {
                self.heal();
                self.trace(|| "partition heals".to_string());
            }
        }
        Ok(())
    }

    /// Takes every Ready the node has: registers its entries, sends its immediate messages and
    /// queues its write.
    fn drain(&mut self, id: NodeId) -> Result<(), String> {
        loop {
            let node = self.nodes.get_mut(&id).expect("known node");
            let Some(raw) = node.raw.as_mut() else {
                return Ok(());
            };
            if !raw.has_ready() {
                return Ok(());
            }
            let ready: Ready = raw.ready();
            for (i, e) in ready.entries.iter().enumerate() {
                let prev_term = if i > 0 {
                    ready.entries[i - 1].term
                } else {
                    raw.term_at(e.index.prev()).ok_or_else(|| {
                        format!("{id} handed out {} without the entry before it", e.index)
                    })?
                };
                self.checker.entry_written(id, e, prev_term)?;
            }
            // A configuration takes effect when its entry is appended.
            if let Some(config_at) = ready
                .entries
                .iter()
                .rev()
                .find(|e| matches!(e.payload, EntryPayload::Membership(_)))
                .map(|e| e.index)
            {
                if raw.membership_index() < config_at {
                    return Err(format!(
                        "{id} appended a configuration at {config_at} but uses the one at {}",
                        raw.membership_index()
                    ));
                }
            }
            for r in &ready.membership_results {
                match &r.result {
                    Ok(_) => self.report.changes_done += 1,
                    Err(_) => self.report.changes_failed += 1,
                }
                self.trace(|| format!("{id}: change {} finished: {:?}", r.request_id, r.result));
            }
            for rs in &ready.read_states {
                let Some((asked, committed, step)) = self.reads.remove(&rs.request_id) else {
                    return Err(format!(
                        "{id} answered read {} that nobody asked it",
                        rs.request_id
                    ));
                };
                if asked != id {
                    return Err(format!(
                        "read {} asked of {asked} was answered by {id}",
                        rs.request_id
                    ));
                }
                match rs.index {
                    Some(index) if index < committed => {
                        return Err(format!(
                            "linearizable read: {id} answered read {} with index {index}, but {committed} was committed when it was asked",
                            rs.request_id
                        ))
                    }
                    Some(_) => {
                        self.report.reads_ok += 1;
                        if step == self.report.steps {
                            self.report.reads_at_once += 1;
                        }
                    }
                    None => self.report.reads_failed += 1,
                }
            }
            if let Some(soft) = ready.soft_state {
                self.trace(|| format!("{id} is now {:?} (leader {:?})", soft.role, soft.leader));
            }
            let ack = ready.persist_ack();
            let mut chunk_messages = Vec::new();
            for send in ready.snapshot_sends {
                if send.first {
                    if send.offset == 0 {
                        self.report.snapshot_transfers += 1;
                    } else {
                        self.report.snapshot_resumes += 1;
                        self.trace(|| {
                            format!(
                                "{id} resumes the transfer to {} at {}",
                                send.to, send.offset
                            )
                        });
                    }
                }
                let node = &self.nodes[&id];
                // A chunk of a snapshot the store no longer has is skipped.
                if let Some((meta, data)) = node.snapshot.as_ref().filter(|s| s.0 == send.meta) {
                    debug_assert_eq!(data.len() as u64, meta.size_bytes);
                    let at = send.offset as usize;
                    let chunk = data.slice(at..at + send.len);
                    chunk_messages.push(send.into_message(chunk));
                    self.report.snapshot_chunks_sent += 1;
                }
            }
            let delay = 1 + self.rng.below(self.cfg.disk_units_max);
            let node = self.nodes.get_mut(&id).expect("known node");
            let done_at = node.disk_busy_until.max(self.now + delay);
            node.disk_busy_until = done_at;
            let incarnation = node.incarnation;
            node.pending.push_back(PendingWrite {
                install: ready.snapshot,
                chunks: ready.snapshot_chunks,
                entries: ready.entries,
                hard_state: ready.hard_state,
                persisted_messages: ready.persisted_messages,
                committed_entries: ready.committed_entries,
                ack,
            });
            for m in ready.messages.into_iter().chain(chunk_messages) {
                self.send(m);
            }
            self.schedule(done_at - self.now, Event::DiskDone(id, incarnation));
        }
    }

    /// The oldest write of `id` becomes durable.
    fn complete_write(&mut self, id: NodeId) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(write) = node.pending.pop_front() else {
            return Ok(());
        };
        if let Some(meta) = &write.install {
            self.install_snapshot(id, meta)?;
        }
        for chunk in write.chunks {
            self.write_chunk(id, chunk)?;
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        node.durable
            .append(&write.entries)
            .map_err(|e| e.to_string())?;
        if let Some(hs) = write.hard_state {
            node.durable.set_hard_state(hs).map_err(|e| e.to_string())?;
        }
        let raw = node.raw.as_mut().expect("a node with pending writes is up");
        raw.on_persisted(write.ack);
        let (mut applied, mut digest, mut applied_term) =
            (node.applied, node.digest, node.applied_term);
        for e in &write.committed_entries {
            if e.index <= applied {
                // Handed out before a snapshot that covers it was installed.
                continue;
            }
            self.checker.applied(id, applied, e)?;
            (applied, applied_term) = (e.index, e.term);
            digest = digest_step(digest, e);
            if let EntryPayload::Membership(m) = &e.payload {
                self.nodes
                    .get_mut(&id)
                    .expect("known node")
                    .applied_membership = m.clone();
            }
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        let moved = applied > node.applied;
        (node.applied, node.digest, node.applied_term) = (applied, digest, applied_term);
        if let Some(last) = write.committed_entries.last() {
            node.raw.as_mut().expect("up").on_applied(last.index);
        }
        for m in write.persisted_messages {
            self.send(m);
        }
        if moved && self.rng.chance(self.cfg.snapshot_rate) {
            self.take_snapshot(id)?;
        }
        Ok(())
    }

    /// Restores `id`'s state machine from its newest snapshot, which must be `meta`, and makes
    /// its log continue after it.
    fn install_snapshot(&mut self, id: NodeId, meta: &SnapshotMeta) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some((stored, data)) = node.snapshot.clone() else {
            return Err(format!(
                "{id} was told to install {meta:?}, but holds no snapshot"
            ));
        };
        if stored != *meta {
            return Err(format!(
                "{id} was told to install {meta:?}, but its newest snapshot is {stored:?}"
            ));
        }
        let (index, digest) = self.checker.snapshot_seen(id, "restored", meta, &data)?;
        let node = self.nodes.get_mut(&id).expect("known node");
        (node.applied, node.applied_term, node.digest) = (index, meta.last_term, digest);
        node.applied_membership = meta.membership.clone();
        node.durable
            .install_snapshot(meta.last_index, meta.last_term, &meta.membership)
            .map_err(|e| e.to_string())?;
        self.report.snapshots_installed += 1;
        self.trace(|| format!("{id} installs the snapshot at {index}"));
        Ok(())
    }

    /// Writes a received chunk; after the last one, verifies the snapshot and keeps it.
    fn write_chunk(&mut self, id: NodeId, chunk: SnapshotChunk) -> Result<(), String> {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.partial.as_ref().is_none_or(|p| p.0 != chunk.meta) {
            node.partial = Some((chunk.meta.clone(), Vec::new()));
        }
        let (_, data) = node.partial.as_mut().expect("set above");
        let at = chunk.offset as usize;
        if data.len() < at {
            data.resize(at, 0);
        }
        data.truncate(at);
        data.extend_from_slice(&chunk.data);
        if !chunk.last {
            return Ok(());
        }
        let (meta, mut data) = node.partial.take().expect("set above");
        if !self.quiet && self.rng.chance(self.cfg.snapshot_corrupt_rate) && !data.is_empty() {
            let at = self.rng.below(data.len() as u64) as usize;
            data[at] ^= 0x10;
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        let valid = crate::testing::data_matches(&meta, &data);
        let newer = node
            .snapshot
            .as_ref()
            .is_none_or(|s| s.0.last_index < meta.last_index);
        if valid && newer {
            node.snapshot = Some((meta.clone(), Bytes::from(data)));
        }
        node.raw
            .as_mut()
            .expect("up")
            .on_snapshot_received(&meta, valid);
        if !valid {
            self.report.snapshots_rejected += 1;
        }
        self.trace(|| {
            format!(
                "{id} received the snapshot at {} (valid: {valid})",
                meta.last_index
            )
        });
        Ok(())
    }

    /// `id` snapshots its state machine and compacts its log behind the snapshot.
    fn take_snapshot(&mut self, id: NodeId) -> Result<(), String> {
        let trailing = self.rng.below(self.cfg.trailing_entries_max + 1);
        self.take_snapshot_keeping(id, trailing)
    }

    fn take_snapshot_keeping(&mut self, id: NodeId, trailing: u64) -> Result<(), String> {
        let node = &self.nodes[&id];
        let index = node.applied;
        if node
            .snapshot
            .as_ref()
            .is_some_and(|s| s.0.last_index >= index)
        {
            return Ok(());
        }
        let data = snapshot_data(index, node.digest);
        let meta = SnapshotMeta {
            last_index: index,
            last_term: node.applied_term,
            membership: node.applied_membership.clone(),
            size_bytes: data.len() as u64,
            checksum: crc32c::crc32c(&data),
        };
        self.checker.snapshot_seen(id, "took", &meta, &data)?;
        let node = self.nodes.get_mut(&id).expect("known node");
        node.snapshot = Some((meta.clone(), data));
        node.raw.as_mut().expect("up").on_snapshot_stored(meta);
        let durable_last = node.durable.last_index().map_err(|e| e.to_string())?;
        let up_to = LogIndex(index.0.saturating_sub(trailing)).min(durable_last);
        let first = node.durable.first_index().map_err(|e| e.to_string())?;
        if up_to >= first {
            node.durable.compact(up_to).map_err(|e| e.to_string())?;
        }
        self.report.snapshots_taken += 1;
        self.trace(|| format!("{id} snapshots at {index}, compacts to {up_to}"));
        Ok(())
    }

    fn send(&mut self, m: Message) {
        if self.blocked.contains(&(m.from, m.to)) {
            self.report.lost += 1;
            return;
        }
        if !self.quiet && self.rng.chance(self.cfg.drop_rate) {
            self.report.lost += 1;
            return;
        }
        let mut m = m;
        if let MessageBody::InstallSnapshotResponse(r) = &m.body {
            if r.rejected {
                self.report.snapshot_chunk_rejects += 1;
            }
        }
        if let MessageBody::InstallSnapshot(req) = &mut m.body {
            if !self.quiet && !req.data.is_empty() && self.rng.chance(self.cfg.chunk_corrupt_rate) {
                let mut data = req.data.to_vec();
                let at = self.rng.below(data.len() as u64) as usize;
                data[at] ^= 0x01;
                req.data = Bytes::from(data);
            }
        }
        if !self.quiet && self.rng.chance(self.cfg.duplicate_rate) {
            let delay = 1 + self.rng.below(self.cfg.latency_units_max);
            self.schedule(delay, Event::Deliver(m.clone()));
        }
        let delay = 1 + self.rng.below(self.cfg.latency_units_max);
        self.schedule(delay, Event::Deliver(m));
    }

    /// Checks every global invariant.
    pub fn check(&mut self) -> Result<(), String> {
        for node in self.nodes.values() {
            if let Some(raw) = node.raw.as_ref() {
                self.checker.check_raw_node(raw, &node.initial)?;
            }
        }
        for node in self.nodes.values_mut() {
            let removed = node.raw.as_ref().is_some_and(|r| r.is_removed());
            if removed && !node.removed_reported {
                node.removed_reported = true;
                self.report.removed_reported += 1;
            }
        }
        let holds = |id: NodeId, index: LogIndex, term: Term| {
            self.nodes.get(&id).is_some_and(|n| {
                n.durable.term(index).ok() == Some(term)
                    || n.snapshot.as_ref().is_some_and(|s| s.0.last_index >= index)
            })
        };
        self.checker.check_durability(&self.ids(), holds)
    }

    fn inject_faults(&mut self) -> Result<(), String> {
        let ids = self.ids();
        if self.blocked.is_empty() && self.rng.chance(self.cfg.partition_rate) {
            self.report.partitions += 1;
            let kind = self.rng.below(3);
            let a = ids[self.rng.below(ids.len() as u64) as usize];
            match kind {
                0 => {
                    // Isolate the leader if there is one, else a random node.
                    let victim = self.leader().unwrap_or(a);
                    self.partition(&[victim]);
                    self.trace(|| format!("partition isolates {victim}"));
                }
                1 => {
                    let group: Vec<NodeId> = ids
                        .iter()
                        .copied()
                        .filter(|_| self.rng.chance(0.5))
                        .collect();
                    self.trace(|| format!("partition splits off {group:?}"));
                    self.partition(&group);
                }
                _ => {
                    let b = ids[self.rng.below(ids.len() as u64) as usize];
                    if a != b {
                        self.block(a, b);
                        self.trace(|| format!("one-way partition {a} -/-> {b}"));
                    }
                }
            }
            let heal_in = (5 + self.rng.below(60)) * UNITS_PER_TICK;
            self.schedule(heal_in, Event::HealPartition);
        }
        let leader = self.leader();
        for id in ids {
            let rate = if Some(id) == leader {
                self.cfg.crash_rate + self.cfg.leader_crash_rate
            } else {
                self.cfg.crash_rate
            };
            if self.nodes[&id].raw.is_some() && self.rng.chance(rate) {
                self.crash(id);
                if !self.cfg.restart_only_for_quorum {
                    let back_in = (1 + self.rng.below(self.cfg.down_ticks_max)) * UNITS_PER_TICK;
                    self.schedule(back_in, Event::Restart(id));
                }
            }
        }
        if self.cfg.membership_rate > 0.0 && self.rng.chance(self.cfg.membership_rate) {
            self.change_membership()?;
        }
        if self.cfg.restart_only_for_quorum {
            let down: Vec<NodeId> = self
                .ids()
                .into_iter()
                .filter(|id| self.nodes[id].raw.is_none())
                .collect();
            if self.nodes.len() - down.len() <= self.nodes.len() / 2 {
                let pick = down[self.rng.below(down.len() as u64) as usize];
                self.restart(pick)?;
            }
        }
        Ok(())
    }

    /// Adds a node to the simulation (not to the cluster): it starts with an empty store that
    /// knows no configuration, as a server started to join a running cluster.
    pub fn add_node(&mut self) -> NodeId {
        let id = NodeId(self.next_node);
        self.next_node += 1;
        let initial = Membership::default();
        let durable = self.factory.open(id, &initial);
        let mut node = SimNode::new(durable, initial);
        node.tick_units = self.draw_tick_units();
        self.nodes.insert(id, node);
        self.start_node(id);
        let phase = self.rng.below(UNITS_PER_TICK);
        self.schedule(phase, Event::Tick(id));
        self.trace(|| format!("{id} starts, empty"));
        id
    }

    /// Proposes `change` on `leader`; returns whether it accepted it.
    pub fn propose_membership(
        &mut self,
        leader: NodeId,
        change: MembershipChange,
    ) -> Result<bool, String> {
        self.next_change += 1;
        let request_id = self.next_change;
        let Some(raw) = self.nodes.get_mut(&leader).and_then(|n| n.raw.as_mut()) else {
            return Ok(false);
        };
        let result = raw.propose_membership(request_id, change.clone());
        let accepted = result.is_ok();
        self.trace(|| format!("{leader}: change {request_id} {change:?}: {result:?}"));
        if accepted {
            self.report.changes_proposed += 1;
        }
        self.drain(leader)?;
        Ok(accepted)
    }

    /// Asks `leader` to hand leadership to `to`; returns whether it accepted.
    pub fn transfer_leadership(&mut self, leader: NodeId, to: NodeId) -> Result<bool, String> {
        let Some(raw) = self.nodes.get_mut(&leader).and_then(|n| n.raw.as_mut()) else {
            return Ok(false);
        };
        let result = raw.transfer_leadership(to);
        let accepted = result.is_ok();
        self.report.transfers += 1;
        self.trace(|| format!("{leader}: transfer leadership to {to}: {result:?}"));
        self.drain(leader)?;
        Ok(accepted)
    }

    /// A random configuration change or leadership transfer on the current leader.
    fn change_membership(&mut self) -> Result<(), String> {
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let m = self.node(leader).expect("up").membership().clone();
        let pick = |rng: &mut Rng, set: &BTreeSet<NodeId>| -> Option<NodeId> {
            let v: Vec<NodeId> = set.iter().copied().collect();
            (!v.is_empty()).then(|| v[rng.below(v.len() as u64) as usize])
        };
        let voters = m.voters.len();
        let change = match self.rng.below(6) {
            0 if voters < self.cfg.voters_max => MembershipChange::AddVoter(self.add_node()),
            1 if m.learners.len() < 2 => MembershipChange::AddLearner(self.add_node()),
            2 => match pick(&mut self.rng, &m.learners) {
                Some(id) => MembershipChange::Promote(id),
                None => return Ok(()),
            },
            3 if voters > self.cfg.voters_min => {
                // Any voter, the leader included.
                let id = pick(&mut self.rng, &m.voters).expect("voters exist");
                MembershipChange::Remove(id)
            }
            3 => match pick(&mut self.rng, &m.learners) {
                Some(id) => MembershipChange::Remove(id),
                None => return Ok(()),
            },
            4 => {
                // Replace a voter by a learner: two voters change, through the joint
                // configuration.
                let (Some(learner), Some(voter)) = (
                    pick(&mut self.rng, &m.learners),
                    pick(&mut self.rng, &m.voters),
                ) else {
                    return Ok(());
                };
                let mut voters = m.voters.clone();
                voters.remove(&voter);
                voters.insert(learner);
                let mut learners = m.learners.clone();
                learners.remove(&learner);
                MembershipChange::Replace { voters, learners }
            }
            5 => {
                let others: BTreeSet<NodeId> =
                    m.voters.iter().copied().filter(|&v| v != leader).collect();
                if let Some(to) = pick(&mut self.rng, &others) {
                    self.transfer_leadership(leader, to)?;
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        self.propose_membership(leader, change)?;
        Ok(())
    }

    /// The members of the configuration the current leader uses (every node without a
    /// leader).
    fn members_now(&self) -> BTreeSet<NodeId> {
        match self.leader().and_then(|l| self.node(l)) {
            Some(raw) => raw.membership().members(),
            None => self.ids().into_iter().collect(),
        }
    }

    /// The faulty phase, then the quiet phase with its liveness check.
    pub fn run(mut self) -> Result<SimReport, SimFailure> {
        match self.run_phases() {
            Ok(()) => {
                self.report.leaders = self.checker.leader_terms();
                self.report.committed = self.checker.committed_index().0;
                Ok(self.report)
            }
            Err(reason) => Err(SimFailure {
                seed: self.cfg.seed,
                step: self.report.steps,
                tick: self.tick_now(),
                reason,
            }),
        }
    }

    fn run_phases(&mut self) -> Result<(), String> {
        for _ in 0..self.cfg.fault_ticks {
            self.inject_faults()?;
            if self.rng.chance(self.cfg.propose_rate) {
                let target = self.leader().unwrap_or_else(|| {
                    let ids = self.ids();
                    ids[self.rng.below(ids.len() as u64) as usize]
                });
                self.propose(target)?;
            }
            if self.rng.chance(self.cfg.read_rate) {
                let ids = self.ids();
                let target = ids[self.rng.below(ids.len() as u64) as usize];
                self.read(target)?;
            }
            self.run_ticks(1)?;
        }
        self.settle()
    }

    /// Liveness: with faults stopped, a leader is elected and a final set of proposals is
    /// committed and applied on every node within `liveness_ticks`.
    fn settle(&mut self) -> Result<(), String> {
        self.quiet = true;
        self.heal();
        self.queue.retain(|_, e| !matches!(e, Event::HealPartition));
        for id in self.ids() {
            self.restart(id)?;
        }
        self.trace(|| "faults stop".to_string());
        let deadline = self.tick_now() + self.cfg.liveness_ticks;
        let markers = 3;
        let mut accepted: Vec<(NodeId, Term, LogIndex)> = Vec::new();
        while self.tick_now() < deadline {
            // Forget markers whose leader lost its term before committing them.
            accepted.retain(|&(id, term, index)| {
                let raw = self.node(id).expect("all nodes are up");
                (raw.role() == Role::Leader && raw.term() == term) || raw.commit_index() >= index
            });
            if accepted.len() < markers {
                if let Some(leader) = self.leader() {
                    let term = self.node(leader).expect("up").term();
                    if let Some(index) = self.propose(leader)? {
                        accepted.push((leader, term, index));
                    }
                }
            }
            let target = accepted.iter().map(|a| a.2).max().unwrap_or(LogIndex(0));
            let members = self.members_now();
            if accepted.len() == markers && members.iter().all(|&id| self.applied(id) >= target) {
                return Ok(());
            }
            self.run_ticks(1)?;
        }
        let states: Vec<String> = self
            .ids()
            .iter()
            .map(|&id| {
                let raw = self.node(id).expect("up");
                format!(
                    "{id}: {:?} term {} commit {} last {} applied {}",
                    raw.role(),
                    raw.term(),
                    raw.commit_index(),
                    raw.last_index(),
                    self.applied(id)
                )
            })
            .collect();
        Err(format!(
            "liveness: {} ticks after faults stopped, {} of {markers} final proposals are applied everywhere; {}",
            self.cfg.liveness_ticks,
            accepted.len(),
            states.join("; ")
        ))
    }
}

/// Runs one seed with in-memory stores. A panic inside the core (a failed assertion) is
/// reported as a failure too, with the step at which it happened.
pub fn run_seed(cfg: SimConfig) -> Result<SimReport, SimFailure> {
    run_seed_with(cfg, MemFactory::default())
}

/// Runs one seed with the stores `factory` opens.
pub fn run_seed_with<F: StoreFactory>(cfg: SimConfig, factory: F) -> Result<SimReport, SimFailure> {
    let mut cluster = Cluster::with_factory(cfg, factory);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cluster.run_phases()));
    let reason = match outcome {
        Ok(Ok(())) => {
            cluster.report.leaders = cluster.checker.leader_terms();
            cluster.report.committed = cluster.checker.committed_index().0;
            return Ok(cluster.report);
        }
        Ok(Err(reason)) => reason,
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            format!("panic: {text}")
        }
    };
    Err(SimFailure {
        seed: cluster.cfg.seed,
        step: cluster.report.steps,
        tick: cluster.tick_now(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &'static [u8]) -> Entry {
        Entry::normal(Term(term), LogIndex(index), Bytes::from_static(data))
    }

    #[test]
    fn checker_rejects_two_leaders_in_one_term() {
        let mut c = Checker::default();
        c.leader_seen(NodeId(1), Term(3)).unwrap();
        c.leader_seen(NodeId(1), Term(3)).unwrap();
        let err = c.leader_seen(NodeId(2), Term(3)).unwrap_err();
        assert!(err.starts_with("Election Safety"), "{err}");
    }

    #[test]
    fn checker_rejects_diverging_entries() {
        let mut c = Checker::default();
        c.entry_written(NodeId(1), &entry(1, 1, b"a"), Term(0))
            .unwrap();
        c.entry_written(NodeId(2), &entry(1, 1, b"a"), Term(0))
            .unwrap();
        let err = c
            .entry_written(NodeId(3), &entry(1, 1, b"b"), Term(0))
            .unwrap_err();
        assert!(err.starts_with("Log Matching"), "{err}");
        c.entry_written(NodeId(1), &entry(2, 2, b"c"), Term(1))
            .unwrap();
        let err = c
            .entry_written(NodeId(2), &entry(2, 2, b"c"), Term(2))
            .unwrap_err();
        assert!(err.starts_with("Log Matching"), "{err}");
    }

    #[test]
    fn checker_rejects_changed_commits_incomplete_leaders_and_bad_applies() {
        let mut c = Checker::default();
        let log_a = |i: LogIndex| {
            [Some(Term(0)), Some(Term(1)), Some(Term(1)), Some(Term(2))]
                .get(i.0 as usize)
                .copied()
                .flatten()
        };
        let log_b = |i: LogIndex| {
            [Some(Term(0)), Some(Term(1)), Some(Term(3))]
                .get(i.0 as usize)
                .copied()
                .flatten()
        };
        c.entry_written(NodeId(1), &entry(1, 1, b"x"), Term(0))
            .unwrap();
        c.entry_written(NodeId(1), &entry(2, 1, b"y"), Term(1))
            .unwrap();
        c.commit_seen(NodeId(1), Term(2), LogIndex(2), log_a)
            .unwrap();
        let err = c
            .commit_seen(NodeId(2), Term(3), LogIndex(2), log_b)
            .unwrap_err();
        assert!(err.starts_with("State Machine Safety"), "{err}");
        // A leader of term 3 must hold index 2 of term 1; a leader of term 0 need not.
        let err = c
            .leader_complete(NodeId(2), Term(3), LogIndex(1), log_b)
            .unwrap_err();
        assert!(err.starts_with("Leader Completeness"), "{err}");
        c.leader_complete(NodeId(1), Term(2), LogIndex(1), log_a)
            .unwrap();
        c.leader_complete(NodeId(2), Term(0), LogIndex(1), log_b)
            .unwrap();
        // Applying out of order, an uncommitted index, or another payload fails.
        c.applied(NodeId(1), LogIndex(0), &entry(1, 1, b"x"))
            .unwrap();
        assert!(c
            .applied(NodeId(1), LogIndex(0), &entry(2, 1, b"y"))
            .is_err());
        assert!(c
            .applied(NodeId(1), LogIndex(2), &entry(3, 2, b"z"))
            .is_err());
        assert!(c
            .applied(NodeId(1), LogIndex(1), &entry(2, 1, b"other"))
            .is_err());
    }

    #[test]
    fn a_seed_replays_exactly() {
        let a = run_seed(SimConfig::new(7)).unwrap();
        let b = run_seed(SimConfig::new(7)).unwrap();
        assert_eq!(
            (a.steps, a.committed, a.delivered, a.lost, a.crashes),
            (b.steps, b.committed, b.delivered, b.lost, b.crashes)
        );
        assert!(
            a.committed > 0 && a.crashes + a.partitions > 0,
            "the run did something: {a:?}"
        );
    }
}
