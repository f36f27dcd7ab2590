//! `cargo xtask sim`: many seeds in parallel, or one seed replayed step by step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Args;
use raftline_core::testing::sim::{run_seed, run_seed_with, SimConfig, SimFailure, SimReport};
use raftline_log::testing::LogFileFactory;

#[derive(Args)]
pub struct SimArgs {
    /// How many seeds to run (starting at --start).
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Replay this one seed (with --verbose, every event is printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Print every event of the run.
    #[arg(long)]
    verbose: bool,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Ticks of the faulty phase of each run.
    #[arg(long)]
    fault_ticks: Option<u64>,
    /// Where nodes keep their log: `mem` (in memory) or `file` (raftline-log in a temporary
    /// directory, reopened and recovered at every simulated crash; with --driver, through its
    /// async write path, and a crash loses unsynced writes and tears sectors).
    #[arg(long, value_enum, default_value_t = Store::Mem)]
    store: Store,
    /// Run the real async driver (`driver::Node`) under the deterministic executor, with
    /// clients whose histories are checked for linearizability, instead of the RawNode
    /// simulator.
    #[arg(long)]
    driver: bool,
}

impl SimArgs {
    pub fn seeds(&self) -> (u64, u64) {
        (self.start, self.seeds)
    }

    pub fn one_seed(&self) -> Option<u64> {
        self.seed
    }

    pub fn verbose(&self) -> bool {
        self.verbose
    }

    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    pub fn fault_ticks(&self) -> Option<u64> {
        self.fault_ticks
    }

    pub fn on_files(&self) -> bool {
        self.store == Store::File
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Store {
    Mem,
    File,
}

fn run_one(cfg: SimConfig, store: Store) -> Result<SimReport, SimFailure> {
    match store {
        Store::Mem => run_seed(cfg),
        Store::File => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            run_seed_with(cfg, LogFileFactory::new(dir.path()))
        }
    }
}

pub fn run(args: SimArgs) -> bool {
    if args.driver {
        return crate::sim_driver::run(&args);
    }
    let configure = |seed: u64| {
        let mut cfg = SimConfig::new(seed);
        cfg.verbose = args.verbose;
        if let Some(t) = args.fault_ticks {
            cfg.fault_ticks = t;
        }
        cfg
    };
    if let Some(seed) = args.seed {
        return match run_one(configure(seed), args.store) {
            Ok(r) => {
                print_report(&r);
                true
            }
            Err(f) => {
                eprintln!("FAIL {f}");
                false
            }
        };
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let next = AtomicU64::new(args.start);
    let end = args.start + args.seeds;
    let failures = Mutex::new(Vec::new());
    let totals = Mutex::new(SimReport::default());
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                match run_one(configure(seed), args.store) {
                    Ok(r) => {
                        let mut t = totals.lock().unwrap();
                        t.steps += r.steps;
                        t.leaders += r.leaders;
                        t.committed += r.committed;
                        t.proposals += r.proposals;
                        t.crashes += r.crashes;
                        t.partitions += r.partitions;
                        t.delivered += r.delivered;
                        t.lost += r.lost;
                        t.reads_ok += r.reads_ok;
                        t.reads_failed += r.reads_failed;
                        t.snapshots_taken += r.snapshots_taken;
                        t.snapshots_installed += r.snapshots_installed;
                        t.snapshot_resumes += r.snapshot_resumes;
                        t.snapshots_rejected += r.snapshots_rejected;
                        t.changes_done += r.changes_done;
                        t.changes_failed += r.changes_failed;
                        t.transfers += r.transfers;
                        t.removed_reported += r.removed_reported;
                    }
                    Err(f) => {
                        eprintln!("FAIL {f}");
                        failures.lock().unwrap().push(f.seed);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let t = totals.into_inner().unwrap();
    println!(
        "{} seeds ({}..{}) in {:.1}s on {threads} threads: {} failed",
        args.seeds,
        args.start,
        end,
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    println!(
        "totals: {} steps, {} leader terms, {} entries committed, {} proposals, {} reads ({} refused), {} crashes, {} partitions, {} messages delivered, {} lost",
        t.steps, t.leaders, t.committed, t.proposals, t.reads_ok + t.reads_failed, t.reads_failed, t.crashes, t.partitions, t.delivered, t.lost
    );
    println!(
        "snapshots: {} taken, {} installed, {} transfers resumed, {} corrupt ones rejected; configuration: {} changes committed, {} failed, {} leadership transfers asked, {} removed servers reported",
        t.snapshots_taken, t.snapshots_installed, t.snapshot_resumes, t.snapshots_rejected, t.changes_done, t.changes_failed, t.transfers, t.removed_reported
    );
    if !failures.is_empty() {
        let mut sorted = failures.clone();
        sorted.sort_unstable();
        let shown: Vec<u64> = sorted.iter().copied().take(50).collect();
        println!(
            "failing seeds ({} in all, first 50): {shown:?}",
            sorted.len()
        );
        println!(
            "replay one with: cargo xtask sim --seed {} --verbose",
            sorted[0]
        );
    }
    failures.is_empty()
}

fn print_report(r: &SimReport) {
    println!(
        "seed {}: ok; {} steps, {} leader terms, {} committed, {} proposals, {} reads ({} refused), {} crashes, {} partitions, {} delivered, {} lost",
        r.seed, r.steps, r.leaders, r.committed, r.proposals, r.reads_ok + r.reads_failed, r.reads_failed, r.crashes, r.partitions, r.delivered, r.lost
    );
    println!(
        "  snapshots: {} taken, {} installed, {} resumed; configuration: {} changes committed, {} failed, {} transfers, {} removed",
        r.snapshots_taken, r.snapshots_installed, r.snapshot_resumes, r.changes_done, r.changes_failed, r.transfers, r.removed_reported
    );
}
