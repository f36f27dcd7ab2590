//! `cargo xtask sim --driver`: the real driver under the deterministic executor, many seeds
//! in parallel with a progress line (the runner is in `seeds.rs`), or one seed replayed.

use raftline_core::testing::driver_sim::{
    run_driver_seed, DriverSimConfig, DriverSimFailure, DriverSimReport,
};
use raftline_log::testing::run_driver_seed_on_files;

use crate::seeds;
use crate::sim::SimArgs;

/// Runs one seed with the logs the arguments ask for.
fn run_seed(args: &SimArgs, seed: u64) -> Result<DriverSimReport, DriverSimFailure> {
    let cfg = configure(args, seed);
    if args.on_files() {
        run_driver_seed_on_files(cfg)
    } else {
        run_driver_seed(cfg)
    }
}

fn configure(args: &SimArgs, seed: u64) -> DriverSimConfig {
    let mut cfg = DriverSimConfig::new(seed);
    cfg.verbose = args.verbose();
    if let Some(t) = args.fault_ticks() {
        cfg.fault_ticks = t;
    }
    cfg
}

/// Adds one run's counters to the totals.
fn add(t: &mut DriverSimReport, r: &DriverSimReport) {
    t.steps += r.steps;
    t.ticks += r.ticks;
    t.crashes += r.crashes;
    t.partitions += r.partitions;
    t.committed += r.committed;
    t.leaders += r.leaders;
    t.ops_checked += r.ops_checked;
    t.ops_unknown += r.ops_unknown;
    t.snapshots_taken += r.snapshots_taken;
    t.snapshots_installed += r.snapshots_installed;
    t.histories_undecided += r.histories_undecided;
    t.admin.changes_ok += r.admin.changes_ok;
    t.admin.changes_failed += r.admin.changes_failed;
    t.admin.transfers_ok += r.admin.transfers_ok;
    t.admin.transfers_failed += r.admin.transfers_failed;
}

fn describe(r: &DriverSimReport) -> String {
    format!(
        "{} steps, {} ticks, {} crashes, {} partitions, {} entries committed, {} leader terms, {} client ops checked ({} with unknown outcome, {} histories undecided), {} snapshots taken, {} installed, {} configuration changes ({} failed), {} leadership transfers ({} failed)",
        r.steps, r.ticks, r.crashes, r.partitions, r.committed, r.leaders, r.ops_checked, r.ops_unknown,
        r.histories_undecided, r.snapshots_taken, r.snapshots_installed, r.admin.changes_ok,
        r.admin.changes_failed, r.admin.transfers_ok, r.admin.transfers_failed
    )
}

pub fn run(args: &SimArgs) -> bool {
    if let Some(seed) = args.one_seed() {
        return match run_seed(args, seed) {
            Ok(r) => {
                println!("driver seed {seed}: ok; {}", describe(&r));
                println!("trace digest {:016x}", r.trace_digest);
                true
            }
            Err(f) => {
                eprintln!("FAIL {f}");
                false
            }
        };
    }
    let range = args.seed_range();
    let outcome = seeds::run(range, |seed| run_seed(args, seed), add);
    println!(
        "{} driver seeds ({}..{}) in {:.1}s on {} threads: {} failed",
        range.count,
        range.start,
        range.end(),
        outcome.elapsed.as_secs_f64(),
        range.threads,
        outcome.failures.len()
    );
    println!("totals: {}", describe(&outcome.totals));
    outcome.print_failures(&args.replay_command());
    outcome.failures.is_empty()
}
