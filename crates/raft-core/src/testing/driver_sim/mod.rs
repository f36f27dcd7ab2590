//! The driver simulator: the code that ships, [`driver::Node`](crate::driver::Node), run
//! unchanged under a deterministic single-threaded [`Executor`] with a virtual clock.
//!
//! Each simulated server is one `Node` task with a simulated transport ([`SimTransport`]:
//! drops, duplicates, reordering, latency, symmetric and one-way partitions), log store
//! ([`SimLog`]: writes durable after a latency, in order; a crash loses what was not
//! durable), snapshot store ([`MemSnapshotStore`](crate::testing::MemSnapshotStore): a crash loses a partial transfer) and
//! state machine (a [`Workload`]'s). Clients call the public [`NodeHandle`] API with
//! timeouts; an operator changes the configuration and moves leadership. After every poll of
//! a task the [`Checker`](crate::testing::checker::Checker) verifies Raft's safety properties from what the nodes show (their
//! status, logs, snapshots and applied commands); at the end the clients' history is checked
//! for linearizability, and once faults stop the cluster must commit and apply again.
//! The same seed gives the same run, event for event: [`DriverSimReport::trace_digest`].
//!
//! [`NodeHandle`]: crate::driver::NodeHandle

mod backend;
mod clients;
mod executor;
mod machine;
mod run;
mod world;

pub use backend::{LogBackend, MemBackend, WrittenView};
pub use clients::AdminStats;
pub use executor::{Clock, Executor, Sleep, TaskId};
pub use machine::{command_digest, KvMachine, KvWorkload, Route, Workload};
pub use run::{run_driver_seed, run_driver_seed_with, run_workload, DriverSim};
pub use world::{Disk, Event, NetFaults, SimLog, SimTransport, World};

use crate::driver::DriverConfig;
use crate::Config;

/// Virtual time units per tick.
pub const UNITS_PER_TICK: u64 = 10;

/// Messages queued for a node's driver before the network drops them.
pub const INBOUND_QUEUE_MAX: usize = 1024;

/// Ticks queued for a node's driver before later ones are skipped.
pub const TICKS_QUEUED_MAX: usize = 4;

/// The search budget of the linearizability check, per key.
pub const CHECK_STEPS_MAX: u64 = 2_000_000;

/// Fault rates and sizes of one run.
#[derive(Clone, Debug)]
pub struct DriverSimConfig {
    /// The seed.
    pub seed: u64,
    /// Voters at the start.
    pub nodes: usize,
    /// Servers started empty, which the operator may add.
    pub spares: usize,
    /// Ticks with faults.
    pub fault_ticks: u64,
    /// Ticks the cluster gets, once faults stop, to commit and apply a write on every member.
    pub liveness_ticks: u64,
    /// The network's fault rates.
    pub net: NetFaults,
    /// A disk write takes 1 to this many units.
    pub disk_units_max: u64,
    /// Per tick: probability that a partition starts (when none is active).
    pub partition_rate: f64,
    /// Per tick and node: probability of a crash.
    pub crash_rate: f64,
    /// Per tick: extra probability that the leader crashes.
    pub leader_crash_rate: f64,
    /// A crashed node restarts after 1 to this many ticks.
    pub down_ticks_max: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys the clients use.
    pub keys: u64,
    /// A client waits 1 to this many ticks between operations.
    pub think_ticks_max: u64,
    /// A client abandons a request after this many ticks (outcome unknown).
    pub timeout_ticks: u64,
    /// How long the test state machine takes to write a snapshot, in ticks (0: at once).
    pub snapshot_ticks: u64,
    /// How long one command in four takes to apply, in ticks (0: at once).
    pub apply_ticks: u64,
    /// Whether an operator changes the configuration and moves leadership.
    pub membership: bool,
    /// The operator waits 1 to this many ticks between requests.
    pub admin_pause_ticks_max: u64,
    /// Print every event.
    pub verbose: bool,
    /// Every node's core configuration (`id` and `seed` are set per node).
    pub node: Config,
    /// Every node's driver configuration.
    pub driver: DriverConfig,
}

impl DriverSimConfig {
    /// The fault mix for `seed`; seeds cycle through four profiles: mixed, churn (crashes
    /// and partitions), a lossy slow network, and membership changes with snapshots.
    pub fn new(seed: u64) -> DriverSimConfig {
        let mut node = Config::new(raftline_proto::NodeId(1));
        node.election_ticks = 10;
        node.heartbeat_ticks = 2;
        node.append_entries_max = 8;
        node.inflight_msgs_max = 4;
        node.snapshot_chunk_bytes_max = 24;
        node.snapshot_chunks_inflight_max = 3;
        let driver = DriverConfig {
            snapshot_entries: 16,
            snapshot_trailing_entries: 4,
            ..DriverConfig::default()
        };
        let mut cfg = DriverSimConfig {
            seed,
            nodes: if seed.is_multiple_of(2) { 3 } else { 5 },
            spares: 0,
            fault_ticks: 400,
            liveness_ticks: 300,
            net: NetFaults {
                drop_rate: 0.05,
                duplicate_rate: 0.02,
                latency_units_max: 15,
                chunk_corrupt_rate: 0.02,
            },
            disk_units_max: 8,
            partition_rate: 0.01,
            crash_rate: 0.002,
            leader_crash_rate: 0.004,
            down_ticks_max: 40,
            clients: 3,
            keys: 3,
            think_ticks_max: 6,
            timeout_ticks: 60,
            membership: false,
            snapshot_ticks: 0,
            apply_ticks: 0,
            admin_pause_ticks_max: 60,
            verbose: false,
            node,
            driver,
        };
        cfg.profile(seed % 4);
        // Every other group of four seeds (so every profile) serves lease reads, on clocks
        // that tick together (drift 0, within any bound): the clients' histories check that
        // lease reads, and the deferred commits of new leaders, keep them linearizable.
        if (seed / 4) % 2 == 1 {
            cfg.node.read_mode = crate::ReadMode::Lease(crate::testing::sim::SIM_LEASE);
        }
        cfg
    }

    fn profile(&mut self, which: u64) {
        match which {
            1 => {
                self.crash_rate = 0.006;
                self.leader_crash_rate = 0.01;
                self.partition_rate = 0.03;
                self.down_ticks_max = 20;
                self.snapshot_ticks = 4;
                self.apply_ticks = 1;
                // Slow applies fill the applier's queue: the Ready loop must wait for room.
                self.driver.apply_queue_max = 2;
            }
            2 => {
                self.net.drop_rate = 0.2;
                self.net.duplicate_rate = 0.1;
                self.net.latency_units_max = 40;
                self.disk_units_max = 25;
                self.driver.snapshot_entries = 8;
            }
            3 => {
                self.membership = true;
                self.spares = 2;
                // Snapshots in progress across applies, received snapshots and crashes.
                self.snapshot_ticks = 15;
                self.apply_ticks = 1;
                self.driver.snapshot_entries = 8;
                self.driver.snapshot_trailing_entries = 0;
            }
            _ => {}
        }
    }

    /// Fault-free and quick, for tests that want a working cluster.
    pub fn quiet(seed: u64, nodes: usize) -> DriverSimConfig {
        let mut cfg = DriverSimConfig::new(seed);
        cfg.nodes = nodes;
        cfg.spares = 0;
        cfg.membership = false;
        cfg.net.drop_rate = 0.0;
        cfg.net.duplicate_rate = 0.0;
        cfg.net.chunk_corrupt_rate = 0.0;
        cfg.partition_rate = 0.0;
        cfg.crash_rate = 0.0;
        cfg.leader_crash_rate = 0.0;
        cfg
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct DriverSimReport {
    /// The seed.
    pub seed: u64,
    /// Task polls and events processed.
    pub steps: u64,
    /// Virtual ticks the run lasted.
    pub ticks: u64,
    /// Crashes.
    pub crashes: u64,
    /// Partitions started.
    pub partitions: u64,
    /// The highest index committed.
    pub committed: u64,
    /// Terms that had a leader.
    pub leaders: usize,
    /// Messages sent, and lost to drops, partitions, full queues or crashed receivers.
    pub messages_sent: u64,
    /// See `messages_sent`.
    pub messages_lost: u64,
    /// Client operations in the checked history.
    pub ops_checked: u64,
    /// Operations whose outcome the client never learned.
    pub ops_unknown: u64,
    /// Snapshots taken by state machines.
    pub snapshots_taken: u64,
    /// Received snapshots installed.
    pub snapshots_installed: u64,
    /// Configuration changes and leadership transfers.
    pub admin: AdminStats,
    /// Keys whose history was too ambiguous to decide within the budget.
    pub histories_undecided: u64,
    /// A digest of everything that happened, in order: two runs of one seed must agree.
    pub trace_digest: u64,
}

/// A violated property, with where it happened.
#[derive(Clone, Debug)]
pub struct DriverSimFailure {
    /// The seed that reproduces it.
    pub seed: u64,
    /// The step at which it was detected.
    pub step: u64,
    /// The virtual time in ticks.
    pub tick: u64,
    /// What went wrong.
    pub reason: String,
}

impl std::fmt::Display for DriverSimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "driver seed {} failed at step {} (tick {}): {}",
            self.seed, self.step, self.tick, self.reason
        )
    }
}
