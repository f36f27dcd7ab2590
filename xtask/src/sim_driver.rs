//! `cargo xtask sim --driver`: the real driver under the deterministic executor, many seeds
//! in parallel with a progress line, or one seed replayed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftline_core::testing::driver_sim::{
    run_driver_seed, DriverSimConfig, DriverSimFailure, DriverSimReport,
};
use raftline_log::testing::run_driver_seed_on_files;

use crate::sim::SimArgs;

/// How often the progress line is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

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
    let (start, seeds) = args.seeds();
    let threads = args.threads();
    let next = AtomicU64::new(start);
    let done = AtomicU64::new(0);
    let end = start + seeds;
    let failures = Mutex::new(Vec::new());
    let totals = Mutex::new(DriverSimReport::default());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                match run_seed(args, seed) {
                    Ok(r) => add(&mut totals.lock().unwrap(), &r),
                    Err(f) => {
                        eprintln!("FAIL {f}");
                        failures.lock().unwrap().push(f.seed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        s.spawn(|| progress(&done, seeds, &failures, started));
    });
    let failures = failures.into_inner().unwrap();
    let t = totals.into_inner().unwrap();
    println!(
        "{seeds} driver seeds ({start}..{end}) in {:.1}s on {threads} threads: {} failed",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    println!("totals: {}", describe(&t));
    if !failures.is_empty() {
        let mut sorted = failures.clone();
        sorted.sort_unstable();
        let shown: Vec<u64> = sorted.iter().copied().take(50).collect();
        println!(
            "failing seeds ({} in all, first 50): {shown:?}",
            sorted.len()
        );
        println!(
            "replay one with: cargo xtask sim --driver --seed {} --verbose",
            sorted[0]
        );
    }
    failures.is_empty()
}

/// Prints seeds done, failures, seeds/s and the time left, until every seed is done.
fn progress(done: &AtomicU64, seeds: u64, failures: &Mutex<Vec<u64>>, started: Instant) {
    let mut last = Instant::now();
    loop {
        let n = done.load(Ordering::Relaxed);
        if n >= seeds {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() < PROGRESS_EVERY {
            continue;
        }
        last = Instant::now();
        let secs = started.elapsed().as_secs_f64();
        let rate = n as f64 / secs.max(1e-9);
        let eta = (seeds - n) as f64 / rate.max(1e-9);
        eprintln!(
            "progress: {n}/{seeds} seeds, {} failed, {rate:.1} seeds/s, ETA {eta:.0}s",
            failures.lock().unwrap().len()
        );
    }
}
