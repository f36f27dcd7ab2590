//! `cargo xtask bench kv`: writes per second and latency of a 3-member raft-kv cluster over
//! gRPC, beside a 3-member etcd cluster driven by the same client code in the same run.
//!
//! The workload is the one of etcd's `benchmark put` in etcd's performance documentation:
//! 8 B keys, 256 B values, sequential keys, run as
//! - 1 connection, 1 client, 10,000 puts, and
//! - 100 connections, 1000 clients, 100,000 puts.
//!
//! Each client is closed-loop: one `KV.Put` outstanding at a time, the next one sent as soon as
//! the answer arrives; client `c` uses connection `c % conns`. A shared counter hands out the
//! puts, and put `i` writes the 8 B big-endian key `i` (so keys are distinct and sequential)
//! with one 256 B random value, as etcd's tool writes one random value throughout. Latency runs
//! from sending a put to its answer and goes into an HDR histogram; writes/s is the puts
//! answered divided by the time from the first put to the last answer. Before timing, every
//! connection is opened and makes one put that is not counted. Each row also reports the CPU
//! time (user + system, from `/proc/PID/stat`, 10 ms resolution) that the leader, each follower
//! and the benchmark client used while it ran, and the members' CPU per put: a figure the
//! other processes on a shared machine disturb much less than writes/s.
//!
//! Each workload runs twice per system:
//! - `all members`: connections spread over every member's endpoint in turn, as etcd's
//!   benchmark does with `--endpoints` listing all members (it dials `endpoints[i % n]` for
//!   connection `i`). The list puts the followers first, so the 1-connection row talks to a
//!   follower, which forwards each write to the leader (raft-kv forwards over its `Internal`
//!   gRPC service; etcd forwards the proposal over raft);
//! - `leader only`: every connection to the member that leads.
//!
//! Both clusters run on loopback with the same flags (heartbeat 100 ms, election timeout
//! 1000 ms), their data directories are temporary directories under one parent (so on the same
//! file system), and they run one after the other, never at the same time. Both sync their
//! logs: raft-kv fdatasyncs every write batch of raft-log-file (group commit; there is no
//! switch to turn it off), etcd fdatasyncs its WAL for every raft batch (its default).
//!
//! `--puts-scale 0.01` shrinks the rows for a CI smoke run; `--timeout` bounds the whole run
//! (rows not started in time are skipped, a row running at the bound is cut short) and
//! `--row-secs` each row. A row with errors, cut short or skipped makes the command fail.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::machine::{cpu_model, file_system_of, mem_total, utc_now};
use clap::Args;
use hdrhistogram::Histogram;
use raft_kv::proto::etcdserverpb::kv_client::KvClient;
use raft_kv::proto::etcdserverpb::PutRequest;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::{
    build_raft_kv, layout, proc_cpu_secs, target_dir, Cluster, MemberAddr, Server, STOP_GRACE,
};

/// Options of `cargo xtask bench kv`.
#[derive(Args)]
pub struct KvArgs {
    /// Multiply every row's number of puts by this (e.g. 0.01 for a smoke run); each client
    /// still makes at least one put.
    #[arg(long, default_value_t = 1.0)]
    puts_scale: f64,
    /// Bound on the whole run, in seconds: rows not started by then are skipped, a row running
    /// then is cut short.
    #[arg(long, default_value_t = 900.0)]
    timeout: f64,
    /// Bound on one row, in seconds.
    #[arg(long, default_value_t = 180.0)]
    row_secs: f64,
    /// The etcd binary to compare with (skipped, with a note, if it does not exist).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Run raft-kv alone.
    #[arg(long)]
    no_etcd: bool,
    /// Parent of both clusters' temporary data directories [default: `bench-kv` in the
    /// target directory].
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// One line of etcd's `benchmark put` table.
#[derive(Clone, Copy)]
struct Workload {
    conns: usize,
    clients: usize,
    puts: u64,
}

/// The workloads of etcd's performance documentation.
const WORKLOADS: [Workload; 2] = [
    Workload {
        conns: 1,
        clients: 1,
        puts: 10_000,
    },
    Workload {
        conns: 100,
        clients: 1000,
        puts: 100_000,
    },
];

/// Where a row's connections go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Every member in turn, followers first.
    All,
    /// The leader only.
    Leader,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::All => "all members",
            Target::Leader => "leader only",
        }
    }
}

/// etcd 3.4.23 on this kind of machine, from `/work/shared/reference/performance.md`
/// (etcd's own `benchmark put`, not measured in this run): (clients, writes/s, p50 ms, p99 ms).
const ETCD_REFERENCE: [(usize, &str, &str, &str); 2] = [
    (1, "820 - 980", "0.9 - 1.1", "7 - 9"),
    (1000, "10,300 - 13,200", "87", "134 - 184"),
];

/// Client port of member 1 of the raft-kv cluster (others: +10000 each).
const RAFT_KV_BASE_PORT: u16 = 13379;
/// Client port of member 1 of the etcd cluster (others: +10000 each).
const ETCD_BASE_PORT: u16 = 14379;
/// Members per cluster.
const MEMBERS: u16 = 3;
/// Key and value sizes of the workload.
const KEY_BYTES: usize = 8;
const VALUE_BYTES: usize = 256;
/// A single put that takes longer than this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster may take to start and elect a leader.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the benchmark and prints its report. Returns false if a row failed.
pub fn run(args: KvArgs) -> bool {
    match run_bench(&args) {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("cargo xtask bench kv: {e}");
            false
        }
    }
}

fn run_bench(args: &KvArgs) -> Result<bool, String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.timeout.max(0.0));
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-kv"));
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    let binary = build_raft_kv()?;
    let etcd = if args.no_etcd {
        Err("--no-etcd".to_string())
    } else if args.etcd.is_file() {
        Ok(args.etcd.clone())
    } else {
        Err(format!(
            "{} not found (apt-get install etcd-server)",
            args.etcd.display()
        ))
    };
    let rows = rows(args.puts_scale);
    print_header(args, &base, &binary, etcd.as_ref(), &rows)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let limits = Limits {
        deadline,
        row: Duration::from_secs_f64(args.row_secs.max(0.0)),
    };
    // Members are spawned from this (the main) thread: `setpriv --pdeathsig` ties them to it.
    let ours = runtime.block_on(bench_system(
        "raft-kv",
        &Server {
            binary,
            log_level: "info".to_string(),
            token: "bench-raft-kv".to_string(),
        },
        &base,
        RAFT_KV_BASE_PORT,
        &rows,
        limits,
    ));
    let theirs = match &etcd {
        Ok(binary) => Some(runtime.block_on(bench_system(
            "etcd",
            &Server {
                binary: binary.clone(),
                log_level: "error".to_string(),
                token: "bench-etcd".to_string(),
            },
            &base,
            ETCD_BASE_PORT,
            &rows,
            limits,
        ))),
        Err(why) => {
            println!("\netcd: not run ({why})");
            None
        }
    };
    if let Some(theirs) = &theirs {
        print_ratios(&ours, theirs);
    }
    print_reference();
    println!("\ntotal time {:.1} s", started.elapsed().as_secs_f64());
    let ok = ours.ok() && theirs.as_ref().is_none_or(SystemRun::ok);
    if !ok {
        println!("FAILED: a row had errors, was cut short or skipped, or a cluster failed");
    }
    Ok(ok)
}

/// The rows of the run, with `--puts-scale` applied.
fn rows(scale: f64) -> Vec<(Workload, Target)> {
    WORKLOADS
        .iter()
        .flat_map(|w| {
            let puts = ((w.puts as f64 * scale).round() as u64).max(w.clients as u64);
            let w = Workload { puts, ..*w };
            [(w, Target::All), (w, Target::Leader)]
        })
        .collect()
}

/// The time bounds of a run.
#[derive(Clone, Copy)]
struct Limits {
    deadline: Instant,
    row: Duration,
}

/// One system's rows.
struct SystemRun {
    name: &'static str,
    rows: Vec<Row>,
    /// Why the cluster failed (to start, or during a row), if it did.
    failure: Option<String>,
}

impl SystemRun {
    fn ok(&self) -> bool {
        self.failure.is_none()
            && self
                .rows
                .iter()
                .all(|r| r.load.as_ref().is_ok_and(|l| l.errors == 0 && !l.cut_short))
    }

    fn row(&self, workload: Workload, target: Target) -> Option<&Load> {
        self.rows
            .iter()
            .find(|r| r.workload.clients == workload.clients && r.target == target)
            .and_then(|r| r.load.as_ref().ok())
    }
}

struct Row {
    workload: Workload,
    target: Target,
    load: Result<Load, String>,
}

/// What one row measured.
struct Load {
    puts: u64,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    /// Latency of the successful puts, µs.
    hist: Histogram<u64>,
    cut_short: bool,
    conns_on_leader: usize,
    /// CPU seconds the leader, each follower and the client used during the row.
    cpu: Option<Vec<f64>>,
}

impl Load {
    fn writes_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.puts as f64 / self.secs
        } else {
            0.0
        }
    }

    /// CPU time of all members per put answered, µs.
    fn members_cpu_us_per_put(&self) -> Option<f64> {
        let cpu = self.cpu.as_ref()?;
        let members: f64 = cpu[..cpu.len() - 1].iter().sum();
        (self.puts > 0).then(|| members * 1e6 / self.puts as f64)
    }

    /// Latency at quantile `q`, ms.
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Starts a 3-member cluster of `server`, runs every row against it, prints its table as the
/// rows finish, and stops it.
async fn bench_system(
    name: &'static str,
    server: &Server,
    base: &Path,
    base_port: u16,
    rows: &[(Workload, Target)],
    limits: Limits,
) -> SystemRun {
    let mut run = SystemRun {
        name,
        rows: Vec::new(),
        failure: None,
    };
    println!("\n## {name}\n");
    let dir = match tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(base)
    {
        Ok(d) => d,
        Err(e) => {
            run.failure = Some(format!(
                "cannot make a directory in {}: {e}",
                base.display()
            ));
            println!("FAILED: {}", run.failure.as_deref().unwrap_or_default());
            return run;
        }
    };
    let result = match layout(MEMBERS, base_port) {
        Ok(addrs) => run_rows(server, dir.path(), &addrs, rows, limits, &mut run).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        println!("FAILED: {e}");
        println!("(data and logs kept in {})", dir.keep().display());
        run.failure = Some(e);
    }
    run
}

/// The body of [`bench_system`] once the directory exists.
async fn run_rows(
    server: &Server,
    dir: &Path,
    addrs: &[MemberAddr],
    rows: &[(Workload, Target)],
    limits: Limits,
    run: &mut SystemRun,
) -> Result<(), String> {
    let t0 = Instant::now();
    let mut cluster = Cluster::start(server, dir, addrs)?;
    let settled = cluster.wait_settled(SETTLE_TIMEOUT).await?;
    let version = cluster
        .statuses()
        .await
        .into_iter()
        .find_map(Result::ok)
        .map_or_else(|| "?".to_string(), |s| s.version);
    println!(
        "{} members on 127.0.0.1:{}, ... ready in {:.1} s; version {version}; leader {} \
         (term {}); data in {}",
        addrs.len(),
        addrs[0].client_port,
        t0.elapsed().as_secs_f64(),
        addrs[settled.leader].name,
        settled.term,
        dir.display()
    );
    print_table_head();
    for &(workload, target) in rows {
        let load = if Instant::now() >= limits.deadline {
            Err("skipped: --timeout reached".to_string())
        } else {
            // The leader may have changed since the last row: ask again.
            let settled = cluster.wait_settled(SETTLE_TIMEOUT).await?;
            let endpoints = endpoints(addrs, settled.leader, target, workload.conns);
            let conns_on_leader = endpoints
                .iter()
                .filter(|e| **e == addrs[settled.leader].endpoint())
                .count();
            let deadline = limits.deadline.min(Instant::now() + limits.row);
            match connect(&endpoints).await {
                Err(e) => Err(e),
                Ok(channels) => {
                    let before = cpu_snapshot(&cluster, settled.leader);
                    let mut load = drive(&channels, workload, deadline).await;
                    let after = cpu_snapshot(&cluster, settled.leader);
                    if let Ok(l) = &mut load {
                        l.conns_on_leader = conns_on_leader;
                        l.cpu = before
                            .zip(after)
                            .map(|(b, a)| a.iter().zip(&b).map(|(a, b)| a - b).collect());
                    }
                    load
                }
            }
        };
        print_row(workload, target, &load);
        run.rows.push(Row {
            workload,
            target,
            load,
        });
        cluster.check_alive()?;
    }
    let stopped = cluster.stop(STOP_GRACE);
    println!("\nstopped: {}", stopped.join("; "));
    Ok(())
}

/// The endpoint of each of `conns` connections: every member in turn (followers first) or the
/// leader only.
fn endpoints(addrs: &[MemberAddr], leader: usize, target: Target, conns: usize) -> Vec<String> {
    let order: Vec<&MemberAddr> = match target {
        Target::All => addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, a)| a)
            .chain(std::iter::once(&addrs[leader]))
            .collect(),
        Target::Leader => vec![&addrs[leader]],
    };
    (0..conns)
        .map(|c| order[c % order.len()].endpoint())
        .collect()
}

/// What one client did.
struct ClientResult {
    hist: Histogram<u64>,
    puts: u64,
    errors: u64,
    first_error: Option<String>,
    cut_short: bool,
}

/// CPU seconds used so far by the leader, the followers (in member order) and this process.
fn cpu_snapshot(cluster: &Cluster, leader: usize) -> Option<Vec<f64>> {
    let mut secs = vec![cluster.members[leader].cpu_secs()?];
    for (i, m) in cluster.members.iter().enumerate() {
        if i != leader {
            secs.push(m.cpu_secs()?);
        }
    }
    secs.push(proc_cpu_secs("/proc/self/stat")?);
    Some(secs)
}

/// Opens one connection per endpoint and makes one untimed put on each.
async fn connect(endpoints: &[String]) -> Result<Vec<Channel>, String> {
    let value = random_bytes(VALUE_BYTES);
    let mut channels: Vec<Channel> = Vec::new();
    for ep in endpoints {
        let channel = Endpoint::from_shared(format!("http://{ep}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(REQUEST_TIMEOUT)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {ep}: {e}"))?;
        KvClient::new(channel.clone())
            .put(PutRequest {
                key: b"bench-kv-warm-up".to_vec(),
                value: value.clone(),
                ..PutRequest::default()
            })
            .await
            .map_err(|e| format!("warm-up put on {ep}: {}: {}", e.code(), e.message()))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Runs one row: the clients loop until the puts are all handed out or `deadline` passes.
async fn drive(channels: &[Channel], w: Workload, deadline: Instant) -> Result<Load, String> {
    let value = random_bytes(VALUE_BYTES);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(w.clients);
    for c in 0..w.clients {
        let mut kv = KvClient::new(channels[c % channels.len()].clone());
        let next = Arc::clone(&next);
        let value = value.clone();
        let total = w.puts;
        tasks.push(tokio::spawn(async move {
            let mut r = ClientResult {
                hist: new_hist(),
                puts: 0,
                errors: 0,
                first_error: None,
                cut_short: false,
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                if Instant::now() >= deadline {
                    r.cut_short = true;
                    break;
                }
                let request = PutRequest {
                    key: i.to_be_bytes().to_vec(),
                    value: value.clone(),
                    ..PutRequest::default()
                };
                let t0 = Instant::now();
                match kv.put(request).await {
                    Ok(_) => {
                        r.hist.saturating_record(t0.elapsed().as_micros() as u64);
                        r.puts += 1;
                    }
                    Err(e) => {
                        r.errors += 1;
                        r.first_error
                            .get_or_insert_with(|| format!("{}: {}", e.code(), e.message()));
                    }
                }
            }
            r
        }));
    }
    let mut load = Load {
        puts: 0,
        errors: 0,
        first_error: None,
        secs: 0.0,
        hist: new_hist(),
        cut_short: false,
        conns_on_leader: 0,
        cpu: None,
    };
    for t in tasks {
        let r = t.await.map_err(|e| format!("a client task failed: {e}"))?;
        load.hist
            .add(&r.hist)
            .map_err(|e| format!("merging histograms: {e}"))?;
        load.puts += r.puts;
        load.errors += r.errors;
        load.cut_short |= r.cut_short;
        if load.first_error.is_none() {
            load.first_error = r.first_error;
        }
    }
    load.secs = start.elapsed().as_secs_f64();
    Ok(load)
}

fn print_table_head() {
    println!();
    println!(
        "| target      | conns | clients |    puts | conns on leader | seconds |  writes/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | members' CPU µs/put | CPU s: leader / followers / client |"
    );
    println!(
        "|-------------|------:|--------:|--------:|----------------:|--------:|----------:|-------:|-------:|---------:|-------:|-------:|--------------------:|------------------------------------|"
    );
}

fn print_row(w: Workload, target: Target, load: &Result<Load, String>) {
    let head = format!(
        "| {:<11} | {:>5} | {:>7} | {:>7} |",
        target.label(),
        w.conns,
        w.clients,
        w.puts
    );
    match load {
        Err(e) => println!("{head} {e}"),
        Ok(l) => {
            println!(
                "{head} {:>15} | {:>7.2} | {:>9.0} | {:>6.2} | {:>6.2} | {:>8.2} | {:>6.2} | {:>6} | {:>19} | {:<34} |{}",
                format!("{} / {}", l.conns_on_leader, w.conns),
                l.secs,
                l.writes_per_sec(),
                l.ms(0.5),
                l.ms(0.99),
                l.ms(0.999),
                l.hist.max() as f64 / 1000.0,
                l.errors,
                l.members_cpu_us_per_put()
                    .map_or_else(|| "?".to_string(), |us| format!("{us:.0}")),
                l.cpu.as_ref().map_or_else(
                    || "?".to_string(),
                    |c| c
                        .iter()
                        .map(|s| format!("{s:.2}"))
                        .collect::<Vec<_>>()
                        .join(" / ")
                ),
                if l.cut_short {
                    format!(" CUT SHORT at the time bound after {} puts", l.puts)
                } else {
                    String::new()
                }
            );
            if let Some(e) = &l.first_error {
                println!("  first error: {e}");
            }
        }
    }
}

/// raft-kv's figures over etcd's, row by row.
fn print_ratios(ours: &SystemRun, theirs: &SystemRun) {
    println!(
        "\n## raft-kv / etcd (same run, same client; writes/s above 1 and latency below 1 \
         favour raft-kv, as does members' CPU per put below 1)\n"
    );
    println!(
        "| target      | clients | raft-kv writes/s | etcd writes/s | writes/s ratio | p50 ratio | p99 ratio | p99.9 ratio | CPU/put ratio |"
    );
    println!(
        "|-------------|--------:|-----------------:|--------------:|---------------:|----------:|----------:|------------:|--------------:|"
    );
    for w in WORKLOADS {
        for target in [Target::All, Target::Leader] {
            let (Some(a), Some(b)) = (ours.row(w, target), theirs.row(w, target)) else {
                println!(
                    "| {:<11} | {:>7} | (a row is missing: see above)",
                    target.label(),
                    w.clients
                );
                continue;
            };
            let ratio = |x: f64, y: f64| {
                if y > 0.0 && x.is_finite() {
                    format!("{:.2}x", x / y)
                } else {
                    "-".to_string()
                }
            };
            println!(
                "| {:<11} | {:>7} | {:>16.0} | {:>13.0} | {:>14} | {:>9} | {:>9} | {:>11} | {:>13} |",
                target.label(),
                w.clients,
                a.writes_per_sec(),
                b.writes_per_sec(),
                ratio(a.writes_per_sec(), b.writes_per_sec()),
                ratio(a.ms(0.5), b.ms(0.5)),
                ratio(a.ms(0.99), b.ms(0.99)),
                ratio(a.ms(0.999), b.ms(0.999)),
                ratio(
                    a.members_cpu_us_per_put().unwrap_or(f64::NAN),
                    b.members_cpu_us_per_put().unwrap_or(0.0)
                ),
            );
        }
    }
    for s in [ours, theirs] {
        if let Some(f) = &s.failure {
            println!("{}: {f}", s.name);
        }
    }
}

fn print_reference() {
    println!(
        "\nReference, not measured in this run (performance.md: etcd 3.4.23 with its own \
         `benchmark put`, 3 members on loopback, this kind of machine):"
    );
    for (clients, writes, p50, p99) in ETCD_REFERENCE {
        println!("  {clients:>4} client(s): {writes} writes/s, p50 {p50} ms, p99 {p99} ms");
    }
}

/// Prints the machine, build, storage and workload facts, with two probes measured now.
fn print_header(
    args: &KvArgs,
    base: &Path,
    raft_kv: &Path,
    etcd: Result<&PathBuf, &String>,
    rows: &[(Workload, Target)],
) -> Result<(), String> {
    let client_build = if cfg!(debug_assertions) {
        "debug (debug assertions on): client figures are not representative"
    } else {
        "release"
    };
    println!("# cargo xtask bench kv");
    println!("date (UTC):   {}", utc_now());
    println!("cpu:          {}", cpu_model());
    println!(
        "cores:        {} (available parallelism; the 3 members, and the client on 2 tokio \
         workers, share them)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("memory:       {}", mem_total());
    println!(
        "kernel:       {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string())
    );
    println!(
        "build:        raft-kv release ({}), benchmark client {client_build}",
        raft_kv.display()
    );
    match etcd {
        Ok(path) => println!("etcd:         {} ({})", etcd_version(path), path.display()),
        Err(why) => println!("etcd:         not run: {why}"),
    }
    println!("directory:    {} (both clusters' data)", base.display());
    println!("file system:  {}", file_system_of(base));
    println!(
        "fsync:        on for both: raft-kv fdatasyncs every raft-log-file write batch (group \
         commit), etcd its WAL for every raft batch (default)"
    );
    let sync = fdatasync_probe(base)?;
    println!(
        "fdatasync:    256 B appends + fdatasync in that directory for 1 s: p50 {:.2} ms, p99 \
         {:.2} ms, max {:.2} ms ({} syncs)",
        sync.value_at_quantile(0.5) as f64 / 1000.0,
        sync.value_at_quantile(0.99) as f64 / 1000.0,
        sync.max() as f64 / 1000.0,
        sync.len()
    );
    let rtt = loopback_probe()?;
    println!(
        "loopback:     TCP_NODELAY round trip of 256 B: p50 {} µs, p99 {} µs ({} trips)",
        rtt.value_at_quantile(0.5),
        rtt.value_at_quantile(0.99),
        rtt.len()
    );
    println!(
        "members:      3 per cluster on 127.0.0.1, --heartbeat-interval 100 \
         --election-timeout 1000; raft-kv client ports {RAFT_KV_BASE_PORT}/{}/{}, etcd {ETCD_BASE_PORT}/{}/{}",
        u32::from(RAFT_KV_BASE_PORT) + 10_000,
        u32::from(RAFT_KV_BASE_PORT) + 20_000,
        u32::from(ETCD_BASE_PORT) + 10_000,
        u32::from(ETCD_BASE_PORT) + 20_000,
    );
    println!(
        "workload:     etcd `benchmark put`: {KEY_BYTES} B sequential keys, {VALUE_BYTES} B \
         values, closed-loop clients, gRPC KV.Put; puts per row {} (--puts-scale {})",
        rows.iter()
            .map(|(w, _)| w.puts.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        args.puts_scale
    );
    println!(
        "targets:      `all members` = connection i to endpoint i % 3, followers first; \
         `leader only` = every connection to the leader"
    );
    println!(
        "cpu columns:  user + system CPU of each member process and of this client during the \
         row (/proc/PID/stat, 10 ms ticks)"
    );
    println!(
        "bounds:       {} s per put, {} s per row, {} s in all; one untimed put per \
         connection before each row",
        REQUEST_TIMEOUT.as_secs(),
        args.row_secs,
        args.timeout
    );
    Ok(())
}

/// 256 B appends, each followed by `fdatasync`, for one second in `dir`: latency in µs.
fn fdatasync_probe(dir: &Path) -> Result<Histogram<u64>, String> {
    let path = dir.join("fdatasync-probe.dat");
    let mut file = std::fs::File::create(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let record = random_bytes(VALUE_BYTES);
    let mut hist = new_hist();
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        let t0 = Instant::now();
        file.write_all(&record)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        hist.saturating_record(t0.elapsed().as_micros() as u64);
    }
    drop(file);
    std::fs::remove_file(&path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    Ok(hist)
}

/// 2000 round trips of 256 B over loopback TCP with TCP_NODELAY: latency in µs.
fn loopback_probe() -> Result<Histogram<u64>, String> {
    const TRIPS: usize = 2000;
    let err = |e: std::io::Error| format!("loopback probe: {e}");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; VALUE_BYTES];
        for _ in 0..TRIPS {
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut s = std::net::TcpStream::connect(addr).map_err(err)?;
    s.set_nodelay(true).map_err(err)?;
    let mut buf = [7u8; VALUE_BYTES];
    let mut hist = new_hist();
    for _ in 0..TRIPS {
        let t0 = Instant::now();
        s.write_all(&buf).map_err(err)?;
        s.read_exact(&mut buf).map_err(err)?;
        hist.saturating_record(t0.elapsed().as_micros() as u64);
    }
    echo.join()
        .map_err(|_| "loopback probe: the echo thread panicked".to_string())?
        .map_err(err)?;
    Ok(hist)
}

/// A histogram of latencies in µs, up to 10 minutes.
fn new_hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// `len` pseudo-random bytes (SplitMix64 from the clock), like the random value etcd's
/// benchmark writes.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The first line of `etcd --version`.
fn etcd_version(path: &Path) -> String {
    std::process::Command::new(path)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "version unknown".to_string())
}
