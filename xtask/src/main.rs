//! `cargo xtask`: the project's automation. Run `cargo xtask --help`.

mod bench_core;
mod bench_core_driver;
#[cfg(feature = "anchor-openraft")]
mod bench_core_openraft;
#[cfg(feature = "anchor-raft-rs")]
mod bench_core_raftrs;
mod bench_kv;
mod bench_kv_failover;
mod bench_kv_go;
mod bench_kv_load;
mod bench_kv_open;
mod bench_kv_ops;
mod bench_kv_plot;
mod bench_kv_watch;
mod bench_log;
mod bench_snapshot;
mod child_exit;
mod cluster;
mod jepsen;
mod machine;
mod seeds;
mod sim;
mod sim_driver;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Simulation, benchmarks and local clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the deterministic cluster simulator over many seeds, or replay one.
    Sim(sim::SimArgs),
    /// Start a local raft-kv cluster on loopback (for etcdctl) and run it until Ctrl-C; add and
    /// remove members while it runs (commands on stdin, or --add/--remove/--remove-leader).
    Cluster(cluster::ClusterArgs),
    /// Run raft-kv members under real faults (kill, pause, partition in network namespaces)
    /// and check the clients' histories for linearizability.
    Jepsen(jepsen::JepsenArgs),
    /// Run a benchmark and print a table with percentiles.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// 3 raftline-core nodes in one process, in-memory storage, messages by function call.
    Core(bench_core::CoreArgs),
    /// raftline-log appends, reads and open time, beside a plain write + fdatasync loop.
    Log(bench_log::LogArgs),
    /// A 3-member raft-kv cluster over gRPC (put, txn, range, watch; Go client; open loop;
    /// leader failover), beside etcd.
    Kv(bench_kv::KvArgs),
    /// A 1 GiB raft snapshot sent between two members on loopback, beside a plain TCP copy.
    Snapshot(bench_snapshot::SnapshotArgs),
}

fn main() {
    let cli = Cli::parse();
    let ok = match cli.command {
        Command::Sim(args) => sim::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Jepsen(args) => jepsen::run(args),
        Command::Bench { which } => match which {
            Bench::Core(args) => bench_core::run(args),
            Bench::Log(args) => bench_log::run(args),
            Bench::Kv(args) => bench_kv::run(args),
            Bench::Snapshot(args) => bench_snapshot::run(args),
        },
    };
    if !ok {
        std::process::exit(1);
    }
}
