//! The driver simulator: the real `driver::Node` under the deterministic executor, with the
//! clients' histories checked for linearizability (see `raftline_core::testing::driver_sim`).
//!
//! `cargo xtask sim --driver --seeds N` runs many more seeds in release mode; a failing seed
//! replays with `cargo xtask sim --driver --seed S --verbose`.

use raftline_core::testing::driver_sim::{
    run_driver_seed, DriverSim, DriverSimConfig, KvWorkload, MemBackend, UNITS_PER_TICK,
};
use raftline_proto::NodeId;

/// Seeds the test suite runs; CI runs thousands more through xtask.
const SEEDS: u64 = 300;

#[test]
fn driver_seeds_hold_every_invariant_and_histories_are_linearizable() {
    let mut totals = (0u64, 0u64, 0u64, 0u64, 0u64);
    for seed in 0..SEEDS {
        let report = run_driver_seed(DriverSimConfig::new(seed)).unwrap_or_else(|f| panic!("{f}"));
        totals.0 += report.ops_checked;
        totals.1 += report.crashes;
        totals.2 += report.snapshots_installed;
        totals.3 += report.admin.changes_ok;
        totals.4 += report.committed;
    }
    let (ops, crashes, installs, changes, committed) = totals;
    println!("{SEEDS} seeds: {ops} ops checked, {crashes} crashes, {installs} snapshot installs, {changes} configuration changes, {committed} entries committed");
    // The runs exercise what they claim to: these fail if a profile stops producing faults.
    assert!(ops > SEEDS * 20, "{ops} client operations checked");
    assert!(crashes > SEEDS / 4, "{crashes} crashes");
    assert!(installs > 0, "no snapshot was ever installed from a leader");
    assert!(changes > 0, "no configuration change ever succeeded");
}

#[test]
fn a_seed_replays_event_for_event() {
    for seed in [3, 8] {
        let a = run_driver_seed(DriverSimConfig::new(seed)).unwrap();
        let b = run_driver_seed(DriverSimConfig::new(seed)).unwrap();
        assert_eq!(a.trace_digest, b.trace_digest, "seed {seed}");
        assert_eq!(a.steps, b.steps);
        assert_eq!(a.ops_checked, b.ops_checked);
    }
    let a = run_driver_seed(DriverSimConfig::new(3)).unwrap();
    let c = run_driver_seed(DriverSimConfig::new(7)).unwrap();
    assert_ne!(a.trace_digest, c.trace_digest);
}

/// A state machine whose snapshots take five election timeouts (a large one) does not stop
/// the Ready loop: the applier writes the snapshot while ticks, heartbeats and appends go
/// on, so no follower times out and the first leader stays for the whole run. One server
/// at a time is slow (when all are, all would stall together and nobody would notice):
/// in one of the runs it is the leader.
#[test]
fn a_slow_snapshot_triggers_no_election() {
    for slow in 1..=3 {
        let mut cfg = DriverSimConfig::quiet(11, 3);
        cfg.driver.snapshot_entries = 8;
        let units = 5 * u64::from(cfg.node.election_ticks) * UNITS_PER_TICK;
        let mut sim = DriverSim::new(cfg, KvWorkload::new(3), MemBackend::default());
        let clock = sim.clock();
        sim.with_workload(|w| {
            w.slow_snapshots(clock, units);
            w.slow_only_on(NodeId(slow));
        });
        let report = sim.run().unwrap_or_else(|f| panic!("{f}"));
        assert!(report.snapshots_taken >= 6, "{report:?}");
        assert!(report.ops_checked > 50, "{report:?}");
        assert_eq!(
            report.leaders, 1,
            "n{slow}'s snapshot let an election happen: {report:?}"
        );
    }
}
