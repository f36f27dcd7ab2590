//! The simulator over many seeds: every safety invariant after every step, liveness at the end.

use raftline_core::testing::sim::{run_seed, SimConfig};

/// Seeds the test suite runs; `.ci/run` runs many more in release mode through `cargo xtask sim`.
const SEEDS: u64 = 500;

#[test]
fn seeds_hold_every_invariant() {
    let mut failures = Vec::new();
    let (mut taken, mut installed, mut rejected, mut chunks) = (0, 0, 0, 0);
    let (mut changes, mut failed, mut transfers, mut removed) = (0, 0, 0, 0);
    for seed in 0..SEEDS {
        match run_seed(SimConfig::new(seed)) {
            Ok(r) => {
                taken += r.snapshots_taken;
                installed += r.snapshots_installed;
                rejected += r.snapshots_rejected;
                chunks += r.snapshot_chunks_sent;
                changes += r.changes_done;
                failed += r.changes_failed;
                transfers += r.transfers;
                removed += r.removed_reported;
            }
            Err(f) => failures.push(f.to_string()),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing seeds:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The runs exercised snapshots: taken, sent in chunks, rejected when corrupt, installed.
    println!("snapshots: {taken} taken, {chunks} chunks sent, {rejected} rejected, {installed} installed");
    assert!(taken > 100 && chunks > 100 && installed > 10 && rejected > 0);
    // And configuration changes: committed, failed, leadership transfers, removed servers.
    println!("membership: {changes} changes committed, {failed} failed, {transfers} transfers, {removed} removed servers reported");
    assert!(changes > 100 && failed > 0 && transfers > 50 && removed > 10);
}
