//! The simulator over many seeds: every safety invariant after every step, liveness at the end.

use raft_core::testing::sim::{run_seed, SimConfig};

/// Seeds the test suite runs; `.ci/run` runs many more in release mode through `cargo xtask sim`.
const SEEDS: u64 = 500;

#[test]
fn seeds_hold_every_invariant() {
    let mut failures = Vec::new();
    for seed in 0..SEEDS {
        if let Err(f) = run_seed(SimConfig::new(seed)) {
            failures.push(f.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing seeds:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
