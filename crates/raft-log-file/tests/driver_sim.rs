//! raftline-core's driver simulator (real `driver::Node`s on a seeded single-threaded executor)
//! with every server's log in a `LogFile`, written through its real async path
//! (`impl LogStore for LogFile`, manual sync worker) and recovered after each machine crash
//! from a crash image: synced data survives, unsynced writes survive or not, torn at sector
//! granularity (see `raftline_log::testing::LogFileBackend`). The driver reads the
//! `LogFile` unchanged; the checker sees each node's log as written, durable or not, from the
//! backend's copy (`LogBackend::written`), which the store must read as whenever no write is
//! queued.
//!
//! `cargo xtask sim --driver --store file` runs many more seeds.

use raftline_core::testing::driver_sim::{DriverSim, DriverSimConfig, KvWorkload};
use raftline_log::testing::{run_driver_seed_on_files, CrashStats, LogFileBackend, PlantedBug};

/// Seeds the test runs.
const SEEDS: u64 = 100;

fn run(
    seed: u64,
    backend: LogFileBackend,
) -> Result<raftline_core::testing::driver_sim::DriverSimReport, String> {
    let cfg = DriverSimConfig::new(seed);
    let keys = cfg.keys;
    DriverSim::new(cfg, KvWorkload::new(keys), backend)
        .run()
        .map_err(|f| f.to_string())
}

#[test]
fn driver_seeds_on_log_files_survive_crashes_and_stay_linearizable() {
    let mut failures = Vec::new();
    let (mut ops, mut crashes, mut installs, mut committed) = (0, 0, 0, 0);
    let mut disk = CrashStats::default();
    for seed in 0..SEEDS {
        let backend = LogFileBackend::in_temp_dir().unwrap();
        let stats = backend.stats();
        match run(seed, backend) {
            Ok(r) => {
                ops += r.ops_checked;
                crashes += r.crashes;
                installs += r.snapshots_installed;
                committed += r.committed;
            }
            Err(f) => failures.push(f),
        }
        let s = stats.lock().clone();
        disk.crashes += s.crashes;
        disk.mid_write += s.mid_write;
        disk.unsynced_writes += s.unsynced_writes;
        disk.torn_writes += s.torn_writes;
        disk.torn_tails += s.torn_tails;
        disk.recoveries += s.recoveries;
    }
    println!("{SEEDS} seeds on log files: {ops} ops checked, {crashes} crashes, {installs} snapshot installs, {committed} entries committed; {disk:?}");
    assert!(
        failures.is_empty(),
        "failing seeds:\n{}",
        failures.join("\n")
    );
    // The runs exercise what they claim to.
    assert!(ops > SEEDS * 20, "only {ops} client operations checked");
    assert!(crashes > SEEDS / 4, "only {crashes} crashes");
    assert!(installs > 0, "no snapshot was ever installed from a leader");
    assert!(disk.recoveries > SEEDS / 4, "{disk:?}");
    // Crashes interrupt writes and find unsynced ones. (Torn writes are rare here: the
    // workload's batches seldom cross a 512-byte sector. tests/crash.rs tears them all.)
    assert!(disk.mid_write > 0 && disk.unsynced_writes > 0, "{disk:?}");
}

#[test]
fn a_seed_on_log_files_replays_event_for_event() {
    let seed = 5;
    let a = run_driver_seed_on_files(DriverSimConfig::new(seed)).unwrap();
    let b = run_driver_seed_on_files(DriverSimConfig::new(seed)).unwrap();
    assert!(a.crashes > 0, "seed {seed} has no crash");
    assert_eq!(a.trace_digest, b.trace_digest);
    assert_eq!(a.steps, b.steps);
    assert_eq!(a.ops_checked, b.ops_checked);
    assert_eq!(a.committed, b.committed);
}

#[test]
fn a_disk_that_loses_a_synced_write_is_caught() {
    // The planted bug: each crash also loses the newest synced batch write. The check that
    // catches it is the backend's recovery check in `LogBackend::open`: after the crash a
    // durable entry (or the hard state) is missing from the recovered log ("lost a durable
    // write in its crash").
    let caught = (0..SEEDS).find_map(|seed| {
        let backend = LogFileBackend::in_temp_dir()
            .unwrap()
            .with_bug(PlantedBug::LoseSyncedWrite);
        run(seed, backend)
            .err()
            .filter(|f| f.contains("lost a durable write in its crash"))
    });
    let failure = caught.expect("no seed caught a disk that loses synced writes");
    println!("caught: {failure}");
}
