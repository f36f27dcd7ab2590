//! `cargo xtask sim`: many seeds in parallel (the runner and its progress line are in
//! `seeds.rs`), or one seed replayed step by step.

use clap::Args;
use raftline_core::testing::sim::{run_seed, run_seed_with, SimConfig, SimFailure, SimReport};
use raftline_log::testing::LogFileFactory;

use crate::seeds::{self, SeedRange};

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
    /// Run every seed in lease-read mode with tick rates drifting beyond the lease's bound
    /// (periods 5 to 15 units for a 10% bound): stale reads become possible, and the
    /// simulator is expected to report them. Shows that the read check can fail.
    #[arg(long, conflicts_with = "driver")]
    drift_beyond_bound: bool,
}

impl SimArgs {
    /// The seeds to run and the threads to run them on.
    pub fn seed_range(&self) -> SeedRange {
        SeedRange {
            start: self.start,
            count: self.seeds,
            threads: self.threads(),
        }
    }

    /// The command that replays one seed of this run, without the seed.
    pub fn replay_command(&self) -> String {
        let mode = match (self.driver, self.drift_beyond_bound) {
            (true, _) => " --driver",
            (false, true) => " --drift-beyond-bound",
            (false, false) => "",
        };
        let store = match self.store {
            Store::Mem => "",
            Store::File => " --store file",
        };
        format!("cargo xtask sim{mode}{store} --seed")
    }

    pub fn one_seed(&self) -> Option<u64> {
        self.seed
    }

    pub fn verbose(&self) -> bool {
        self.verbose
    }

    fn threads(&self) -> usize {
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
    if let Some(seed) = args.seed {
        return match run_one(configure(&args, seed), args.store) {
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
    let range = args.seed_range();
    let outcome = seeds::run(
        range,
        |seed| run_one(configure(&args, seed), args.store),
        add,
    );
    let t = &outcome.totals;
    println!(
        "{} seeds ({}..{}) in {:.1}s on {} threads: {} failed",
        range.count,
        range.start,
        range.end(),
        outcome.elapsed.as_secs_f64(),
        range.threads,
        outcome.failures.len()
    );
    println!(
        "totals: {} steps, {} leader terms, {} entries committed, {} proposals, {} reads ({} refused, {} answered at once by a lease), {} crashes, {} partitions, {} messages delivered, {} lost",
        t.steps, t.leaders, t.committed, t.proposals, t.reads_ok + t.reads_failed, t.reads_failed, t.reads_at_once, t.crashes, t.partitions, t.delivered, t.lost
    );
    println!(
        "snapshots: {} taken, {} installed, {} transfers resumed, {} corrupt ones rejected; configuration: {} changes committed, {} failed, {} leadership transfers asked, {} removed servers reported",
        t.snapshots_taken, t.snapshots_installed, t.snapshot_resumes, t.snapshots_rejected, t.changes_done, t.changes_failed, t.transfers, t.removed_reported
    );
    outcome.print_failures(&args.replay_command());
    outcome.failures.is_empty()
}

fn configure(args: &SimArgs, seed: u64) -> SimConfig {
    let mut cfg = SimConfig::new(seed);
    if args.drift_beyond_bound {
        cfg = cfg.drift_beyond_bound();
    }
    cfg.verbose = args.verbose;
    if let Some(t) = args.fault_ticks {
        cfg.fault_ticks = t;
    }
    cfg
}

/// Adds one run's counters to the totals.
fn add(t: &mut SimReport, r: &SimReport) {
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
    t.reads_at_once += r.reads_at_once;
    t.snapshots_taken += r.snapshots_taken;
    t.snapshots_installed += r.snapshots_installed;
    t.snapshot_resumes += r.snapshot_resumes;
    t.snapshots_rejected += r.snapshots_rejected;
    t.changes_done += r.changes_done;
    t.changes_failed += r.changes_failed;
    t.transfers += r.transfers;
    t.removed_reported += r.removed_reported;
}

fn print_report(r: &SimReport) {
    println!(
        "seed {}: ok; {} steps, {} leader terms, {} committed, {} proposals, {} reads ({} refused, {} at once), {} crashes, {} partitions, {} delivered, {} lost",
        r.seed, r.steps, r.leaders, r.committed, r.proposals, r.reads_ok + r.reads_failed, r.reads_failed, r.reads_at_once, r.crashes, r.partitions, r.delivered, r.lost
    );
    println!(
        "  snapshots: {} taken, {} installed, {} resumed; configuration: {} changes committed, {} failed, {} transfers, {} removed",
        r.snapshots_taken, r.snapshots_installed, r.snapshot_resumes, r.changes_done, r.changes_failed, r.transfers, r.removed_reported
    );
}
