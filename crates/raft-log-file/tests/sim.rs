//! The deterministic cluster simulator, with every node's log in a `LogFile`: each simulated
//! crash closes the store and reopens it, so recovery runs hundreds of times while the
//! simulator checks every safety property after every step.

use raftline_core::testing::sim::{run_seed_with, SimConfig};
use raftline_log::testing::LogFileFactory;

#[test]
fn simulated_clusters_on_log_files_hold_every_invariant() {
    let mut failures = Vec::new();
    for seed in 0..100 {
        let dir = tempfile::tempdir().unwrap();
        if let Err(f) = run_seed_with(SimConfig::new(seed), LogFileFactory::new(dir.path())) {
            failures.push(f.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "failing seeds:\n{}",
        failures.join("\n")
    );
}
