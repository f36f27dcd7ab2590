//! `cargo xtask bench kv`: a 3-member raft-kv cluster over etcd's v3 gRPC API, beside a
//! 3-member etcd cluster driven by the same client code (raft-kv's generated gRPC clients) in
//! the same run. Every row prints operations per second, latency p50/p90/p99/p99.9/max (HDR
//! histogram), errors and wrong answers, and the CPU time the members and the client used;
//! a last table gives raft-kv's figures over etcd's, row by row.
//!
//! The workloads (`--workloads put,go-put,txn,range,go-range,watch,open,failover`, default
//! all):
//! - `put`, etcd's `benchmark put` of etcd's performance documentation: 8 B sequential keys
//!   (put `i` writes the big-endian key `i`, so keys are distinct), one 256 B random value
//!   throughout; 1 connection and 1 client making 10,000 puts, and 100 connections and 1000
//!   clients making 100,000. Latency runs from sending a put to its answer.
//! - `txn`, compare-and-swap: each client loops on `KV.Txn(compare mod_revision(key) ==
//!   last seen; success: put key (256 B); failure: get key)`, learning the key's new
//!   mod_revision from the answer (the header revision of a swap, the key the failure branch
//!   read otherwise). Rows: 1 client (10,000 txns); 1000 clients on 100 connections (50,000)
//!   with one key per client, contention-free, so every compare must succeed (a failed one is
//!   a wrong result); and the same with 100 keys, 10 clients per key, where compares fail
//!   under contention. Successful swaps and failed compares are counted apart; after the row,
//!   one range over the row's keys checks each key's version is 1 + the swaps made on it.
//! - `range`: single-key linearizable `KV.Range` (serializable = false) over 1000 keys written
//!   before the row, each answer checked to be that key with its value; 1 client (10,000
//!   reads) and 1000 clients on 100 connections (100,000).
//! - `watch`, fan-out: 1000 watchers, each a Watch stream of its own with one watcher on one
//!   key, spread over 100 connections and so over the members (followers first); one writer
//!   on a connection of its own to the leader puts to that key, closed-loop (2,000 puts) or at
//!   50 puts/s (500 puts). Each value carries its send time, so latency is put-to-event;
//!   ops/s is the events delivered (to all watchers) per second, from the first put to the
//!   last event. Every watcher must receive every put exactly once in revision order (see
//!   [`crate::bench_kv_watch`]); a violation is a wrong result.
//! - `go-put`, `go-range`: the put and range rows made with etcd's official Go client instead
//!   of the Rust one (see [`crate::bench_kv_go`]); left out with a note without Go.
//! - `open`: puts at the fixed rates of `--rates`, 5 s each, latency from each put's due time
//!   (see [`crate::bench_kv_open`]); drawn as SVG pictures in `--plot-dir`
//!   ([`crate::bench_kv_plot`]).
//! - `failover`: SIGKILL the leader under write load 20 times, time to the first write and
//!   to a new leader (see [`crate::bench_kv_failover`]); runs last, as it kills members.
//!
//! Clients of the put, txn and range rows are closed-loop: one request outstanding at a
//! time, the next sent as soon as the answer arrives; client `c` uses connection `c % conns`.
//! Before timing, every connection is opened and makes one put that is not counted (retried
//! while the system refuses it, as etcd does with "too many requests" while its apply catches
//! up after a heavy row), and the txn and range rows write their keys. Each row reports the
//! CPU time (user + system, from `/proc/PID/stat`, 10 ms resolution) that the leader, each
//! follower and the benchmark client used while it ran, and the members' CPU per operation:
//! a figure the other processes on a shared machine disturb much less than ops/s.
//!
//! The put, txn and range rows run twice per system:
//! - `all members`: connections spread over every member's endpoint in turn, as etcd's
//!   benchmark does with `--endpoints` listing all members (it dials `endpoints[i % n]` for
//!   connection `i`). The list puts the followers first, so the 1-connection row talks to a
//!   follower, which forwards each write to the leader (both forward the proposal over raft:
//!   raft-kv's driver sends it in a `Forward` message and gets the outcome back);
//! - `leader only`: every connection to the member that leads.
//!
//! The watch rows run once, watchers on all members.
//!
//! Both clusters run on loopback with the same flags (heartbeat 100 ms, election timeout
//! 1000 ms), their data directories are temporary directories under one parent (so on the same
//! file system), and they run one after the other, never at the same time. Both sync their
//! logs: raft-kv fdatasyncs every write batch of raftline-log (group commit; there is no
//! switch to turn it off), etcd fdatasyncs its WAL for every raft batch (its default).
//!
//! `--puts-scale 0.01` shrinks every row's operations (clients and watchers stay) for a CI
//! smoke run; `--timeout` bounds the whole run (rows not started in time are skipped, a row
//! running at the bound is cut short) and `--row-secs` each row. A raft-kv row with errors or
//! wrong answers, cut short or skipped makes the command fail (etcd's are reported, not
//! failed: the anchor's own refusals are not this project's bug); a row the system answers
//! with gRPC `Unimplemented` is reported `unserved` and does not.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bench_kv_failover::failover_row;
use crate::bench_kv_go::go_row;
use crate::bench_kv_load::{drive, Load, PutClient, RowError};
use crate::bench_kv_open::{open_row, OPEN_SECS};
use crate::bench_kv_ops::{cas_row, range_row, RANGE_KEYS};
use crate::bench_kv_plot::{Point, Series};
use crate::bench_kv_watch::{watch_row, WATCH_DRAIN};
use crate::machine::{cpu_model, file_system_of, mem_total, utc_now};
use clap::{Args, ValueEnum};
use futures::future::join_all;
use hdrhistogram::Histogram;
use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use raftline_kv::proto::etcdserverpb::PutRequest;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::{
    build_raft_kv, layout, proc_cpu_secs, target_dir, Cluster, MemberAddr, Server, STOP_GRACE,
};

/// Options of `cargo xtask bench kv`.
#[derive(Args)]
pub struct KvArgs {
    /// Multiply every row's number of operations (puts, txns, reads, the watch writer's puts)
    /// by this (e.g. 0.01 for a smoke run); each client still makes at least one.
    #[arg(long, default_value_t = 1.0)]
    puts_scale: f64,
    /// The workloads to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_values = ["put", "go-put", "txn", "range", "go-range", "watch", "open", "failover"]
    )]
    workloads: Vec<Kind>,
    /// The rates of the open-loop rows, puts per second, comma-separated (one row each).
    #[arg(long, value_delimiter = ',', default_values_t = [1000.0, 2000.0, 4000.0, 8000.0, 12000.0, 16000.0])]
    rates: Vec<f64>,
    /// Where the latency-vs-throughput pictures of the open-loop rows go [default: `bench`
    /// in the workspace, beside BENCHMARKS.md].
    #[arg(long)]
    plot_dir: Option<PathBuf>,
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
    /// A raft-kv binary to run instead of building the workspace's (e.g. an older build).
    #[arg(long)]
    raft_kv: Option<PathBuf>,
    /// raft-kv's `--read-mode` (how its linearizable reads are served; etcd has only
    /// read-index): `lease` measures lease reads beside etcd's read-index reads.
    #[arg(long, default_value = "read-index", value_parser = ["read-index", "lease"])]
    read_mode: String,
    /// Parent of both clusters' temporary data directories [default: `bench-kv` in the
    /// target directory].
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// A workload of `--workloads`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Kind {
    /// etcd's `benchmark put`.
    Put,
    /// The put rows with etcd's Go client (clientv3) instead of the Rust one.
    GoPut,
    /// Compare-and-swap with `KV.Txn`.
    Txn,
    /// Single-key linearizable `KV.Range`.
    Range,
    /// The range rows with etcd's Go client.
    GoRange,
    /// One writer, 1000 watchers.
    Watch,
    /// Open-loop puts at the fixed rates of `--rates`.
    Open,
    /// SIGKILL the leader under write load, 20 times: time to the first write.
    Failover,
}

/// One row's workload.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Spec {
    pub kind: Kind,
    /// Connections (watch: the watchers'; the writer has one more).
    pub conns: usize,
    /// Closed-loop clients (watch: watchers).
    pub clients: usize,
    /// Operations in all (watch: the writer's puts).
    pub ops: u64,
    /// Keys the clients share (txn).
    pub keys: usize,
    /// Puts per second of the watch writer or of an open-loop row (`None`: closed-loop).
    pub rate: Option<f64>,
}

impl Spec {
    const fn new(kind: Kind, conns: usize, clients: usize, ops: u64) -> Spec {
        Spec {
            kind,
            conns,
            clients,
            ops,
            keys: clients,
            rate: None,
        }
    }

    /// The workload column of the tables.
    fn label(&self) -> String {
        match (self.kind, self.rate) {
            (Kind::Put, _) => "put".to_string(),
            (Kind::GoPut, _) => "put, Go client".to_string(),
            (Kind::GoRange, _) => "range, Go client".to_string(),
            (Kind::Open, Some(r)) => format!("put open-loop {r:.0}/s"),
            (Kind::Open, None) => "put open-loop".to_string(),
            (Kind::Failover, _) => "failover, ms to 1st write".to_string(),
            (Kind::Txn, _) if self.keys < self.clients => {
                format!("txn CAS, {} clients/key", self.clients / self.keys)
            }
            (Kind::Txn, _) => "txn CAS, 1 key/client".to_string(),
            (Kind::Range, _) => "range, linearizable".to_string(),
            (Kind::Watch, None) => "watch, writer closed-loop".to_string(),
            (Kind::Watch, Some(r)) => format!("watch, writer {r:.0} puts/s"),
        }
    }

    /// The operations the row counts in its ops column: watch events expected, else `ops`.
    fn expected_ops(&self) -> u64 {
        match self.kind {
            Kind::Watch => self.ops * self.clients as u64,
            _ => self.ops,
        }
    }
}

/// Watchers of the watch rows.
const WATCHERS: usize = 1000;
/// Puts per second of the watch row with a paced writer: below what either system's writer
/// sustains closed-loop here, so latency is delivery's, not a backlog's.
const WATCH_RATE: f64 = 50.0;

/// Kills of the failover row (before `--puts-scale`).
const KILLS: u64 = 20;

/// Every row's workload but the open-loop ones, before `--puts-scale`, in the order they run
/// (the failover row last: it kills members).
const SPECS: [Spec; 15] = [
    Spec::new(Kind::Put, 1, 1, 10_000),
    Spec::new(Kind::Put, 100, 1000, 100_000),
    Spec::new(Kind::GoPut, 1, 1, 10_000),
    Spec::new(Kind::GoPut, 100, 1000, 100_000),
    Spec::new(Kind::Txn, 1, 1, 10_000),
    Spec::new(Kind::Txn, 100, 1000, 50_000),
    Spec {
        keys: 100,
        ..Spec::new(Kind::Txn, 100, 1000, 50_000)
    },
    Spec::new(Kind::Range, 1, 1, 10_000),
    Spec::new(Kind::Range, 100, 1000, 100_000),
    Spec::new(Kind::GoRange, 1, 1, 10_000),
    Spec::new(Kind::GoRange, 100, 1000, 100_000),
    Spec::new(Kind::Watch, 100, WATCHERS, 2_000),
    Spec {
        rate: Some(WATCH_RATE),
        ..Spec::new(Kind::Watch, 100, WATCHERS, 500)
    },
    // The open-loop rows, here one per rate of `--rates` (`rows` makes them from this one):
    // 1000 workers on 100 connections, `OPEN_SECS` of schedule each.
    Spec::new(Kind::Open, 100, 1000, 0),
    // 10 writers on 10 connections to the two followers.
    Spec::new(Kind::Failover, 10, 10, KILLS),
];

/// Where a row's connections go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
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

/// Client port of member 1 of the raft-kv cluster (others: +100 each, `cluster::layout`).
const RAFT_KV_BASE_PORT: u16 = 13379;
/// Client port of member 1 of the etcd cluster (others: +100 each).
const ETCD_BASE_PORT: u16 = 14379;
/// Members per cluster.
const MEMBERS: u16 = 3;
/// Key and value sizes of the put workload (values of every workload).
const KEY_BYTES: usize = 8;
pub const VALUE_BYTES: usize = 256;
/// A single request that takes longer than this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection's untimed first put may be retried.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between retries of that put. Retrying is the only way to learn that the server (a
/// separate process, raft-kv or etcd) accepts writes again: it announces no such event.
const WARM_UP_RETRY: Duration = Duration::from_millis(100);
/// How long a cluster may take to start and elect a leader.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

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
    let limits = Limits {
        deadline: started + Duration::from_secs_f64(args.timeout.max(0.0)),
        row: Duration::from_secs_f64(args.row_secs.max(0.0)),
    };
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-kv"));
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    let binary = match &args.raft_kv {
        Some(path) => path.clone(),
        None => build_raft_kv()?,
    };
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
    let mut rows = rows(args.puts_scale, &args.workloads, &args.rates);
    let go_client = go_client(&mut rows);
    print_header(args, &base, &binary, etcd.as_ref(), &rows)?;
    if let Err(why) = &go_client {
        println!("Go client:    rows left out: {why}");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let systems = [
        Ok(("raft-kv", binary, "info", RAFT_KV_BASE_PORT)),
        etcd.map(|b| ("etcd", b, "error", ETCD_BASE_PORT)),
    ];
    let raft_kv_args = vec!["--read-mode".to_string(), args.read_mode.clone()];
    let extra_args = |name: &str| match name {
        "raft-kv" => raft_kv_args.clone(),
        _ => Vec::new(),
    };
    let mut runs = Vec::new();
    for system in systems {
        let (name, binary, log_level, port) = match system {
            Ok(s) => s,
            Err(why) => {
                println!("\netcd: not run ({why})");
                continue;
            }
        };
        let server = Server {
            binary,
            log_level: log_level.to_string(),
            token: format!("bench-{name}"),
            extra_args: extra_args(name),
        };
        // Members are spawned from this (the main) thread: `setpriv --pdeathsig` ties them to it.
        let env = Env {
            server: &server,
            limits,
            go_client: go_client.as_deref().ok(),
        };
        runs.push(runtime.block_on(bench_system(name, &env, &base, port, &rows)));
    }
    if let [ours, theirs] = &runs[..] {
        print_ratios(ours, theirs, &rows);
    }
    plot(args, &runs);
    print_reference();
    println!("\ntotal time {:.1} s", started.elapsed().as_secs_f64());
    // raft-kv's problems fail the command; the anchor's are reported (etcd refuses
    // requests with "too many requests" under the heaviest rows) but fail nothing.
    let ok = runs.first().is_some_and(SystemRun::ok);
    if !ok {
        println!(
            "FAILED: a raft-kv row had errors or wrong answers, was cut short or skipped, or \
             its cluster failed"
        );
    }
    if runs.get(1).is_some_and(|etcd| !etcd.ok()) {
        println!("note: an etcd row had errors or was cut short (see its table); not a failure");
    }
    Ok(ok)
}

/// The rows of the run for `kinds`, with `--puts-scale` applied: put, txn and range rows
/// (Rust and Go clients) against all members then the leader; watch, open-loop (one per rate
/// of `rates`) and failover rows against all members.
fn rows(scale: f64, kinds: &[Kind], rates: &[f64]) -> Vec<(Spec, Target)> {
    SPECS
        .iter()
        .filter(|s| kinds.contains(&s.kind))
        .flat_map(|s| match s.kind {
            Kind::Open => rates
                .iter()
                .map(|&r| Spec {
                    ops: (r * OPEN_SECS).round() as u64,
                    rate: Some(r),
                    ..*s
                })
                .collect(),
            _ => vec![*s],
        })
        .flat_map(|s| {
            let least = match s.kind {
                Kind::Watch | Kind::Open | Kind::Failover => 1,
                _ => s.clients as u64,
            };
            let spec = Spec {
                ops: ((s.ops as f64 * scale).round() as u64).max(least),
                ..s
            };
            let targets: &[Target] = match s.kind {
                Kind::Watch | Kind::Open | Kind::Failover => &[Target::All],
                _ => &[Target::All, Target::Leader],
            };
            targets.iter().map(move |&t| (spec, t))
        })
        .collect()
}

/// The time bounds of a run.
#[derive(Clone, Copy)]
struct Limits {
    deadline: Instant,
    row: Duration,
}

/// What the rows of one system's run need besides its cluster.
struct Env<'a> {
    /// How to start (and restart) a member.
    server: &'a Server,
    limits: Limits,
    /// The Go load program, if built.
    go_client: Option<&'a Path>,
}

/// Builds the Go load program if `rows` has Go rows; if it cannot, takes them out of `rows`
/// and says why.
fn go_client(rows: &mut Vec<(Spec, Target)>) -> Result<PathBuf, String> {
    let is_go = |s: &Spec| matches!(s.kind, Kind::GoPut | Kind::GoRange);
    if !rows.iter().any(|(s, _)| is_go(s)) {
        return Err("not asked for (--workloads)".to_string());
    }
    let built = crate::bench_kv_go::build().map_err(|e| e.to_string());
    if built.is_err() {
        rows.retain(|(s, _)| !is_go(s));
    }
    built
}

/// Draws the open-loop rows of each system, if any, as SVG pictures.
fn plot(args: &KvArgs, runs: &[SystemRun]) {
    let series: Vec<Series> = runs
        .iter()
        .map(|r| Series {
            name: r.name,
            points: r
                .rows
                .iter()
                .filter(|row| row.spec.kind == Kind::Open)
                .filter_map(|row| Some((row.spec.rate?, row.load.as_ref().ok()?)))
                .map(|(asked, l)| Point {
                    asked,
                    ops_per_sec: l.ops_per_sec(),
                    ms: [l.ms(0.5), l.ms(0.99), l.ms(0.999)],
                })
                .collect(),
        })
        .collect();
    let dir = args
        .plot_dir
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench"));
    match crate::bench_kv_plot::write(&dir, &series) {
        Ok(paths) => {
            for p in paths {
                println!("picture: {}", p.display());
            }
        }
        Err(e) => println!("pictures not drawn: {e}"),
    }
}

/// One system's rows.
struct SystemRun {
    name: &'static str,
    rows: Vec<Row>,
    /// Why the cluster failed (to start, or during a row), if it did.
    failure: Option<String>,
}

impl SystemRun {
    /// Every row clean or unserved, and the cluster did not fail.
    fn ok(&self) -> bool {
        self.failure.is_none()
            && self.rows.iter().all(|r| match &r.load {
                Ok(l) => l.clean(),
                Err(RowError::Unserved(_)) => true,
                Err(RowError::Failed(_)) => false,
            })
    }

    fn row(&self, spec: Spec, target: Target) -> Option<&Result<Load, RowError>> {
        self.rows
            .iter()
            .find(|r| r.spec == spec && r.target == target)
            .map(|r| &r.load)
    }
}

struct Row {
    spec: Spec,
    target: Target,
    load: Result<Load, RowError>,
}

/// What a row's workload needs of the run: its connections, bounds and CPU meter.
pub struct RowCtx<'a> {
    /// The row's number in the run (keys of different rows differ).
    pub row: usize,
    /// When the row must end.
    pub deadline: Instant,
    /// The endpoint of each of the row's connections.
    endpoints: Vec<String>,
    cluster: &'a Cluster,
    leader: usize,
}

impl RowCtx<'_> {
    /// The endpoint (host:port) of each of the row's connections.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The row's connections, each with the request timeout and one untimed put made.
    pub async fn connect(&self) -> Result<Vec<Channel>, RowError> {
        connect(&self.endpoints, Some(REQUEST_TIMEOUT))
            .await
            .map_err(RowError::Failed)
    }

    /// The row's connections without a request timeout (for streams that last the row).
    pub async fn connect_streaming(&self) -> Result<Vec<Channel>, RowError> {
        connect(&self.endpoints, None)
            .await
            .map_err(RowError::Failed)
    }

    /// One more connection, to the leader, with the request timeout.
    pub async fn connect_leader(&self) -> Result<Channel, RowError> {
        let leader = [self.cluster.members[self.leader].addr.endpoint()];
        let mut channels = connect(&leader, Some(REQUEST_TIMEOUT))
            .await
            .map_err(RowError::Failed)?;
        Ok(channels.remove(0))
    }

    /// CPU seconds used so far by the leader, the followers and this process.
    pub fn cpu(&self) -> Option<Vec<f64>> {
        cpu_snapshot(self.cluster, self.leader)
    }

    /// CPU seconds used since `before` (from [`RowCtx::cpu`]).
    pub fn cpu_since(&self, before: Option<Vec<f64>>) -> Option<Vec<f64>> {
        let after = self.cpu()?;
        Some(after.iter().zip(&before?).map(|(a, b)| a - b).collect())
    }
}

/// Starts a 3-member cluster of `server`, runs every row against it, prints its table as the
/// rows finish, and stops it.
async fn bench_system(
    name: &'static str,
    env: &Env<'_>,
    base: &Path,
    base_port: u16,
    rows: &[(Spec, Target)],
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
        Ok(addrs) => run_rows(env, dir.path(), &addrs, rows, &mut run).await,
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
    env: &Env<'_>,
    dir: &Path,
    addrs: &[MemberAddr],
    rows: &[(Spec, Target)],
    run: &mut SystemRun,
) -> Result<(), String> {
    let t0 = Instant::now();
    let mut cluster = Cluster::start(env.server, dir, addrs)?;
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
    for (n, &(spec, target)) in rows.iter().enumerate() {
        let load = measure_row(&mut cluster, env, dir, n, (spec, target)).await?;
        print_row(spec, target, &load);
        run.rows.push(Row { spec, target, load });
        cluster.check_alive()?;
    }
    let stopped = cluster.stop(STOP_GRACE);
    println!("\nstopped: {}", stopped.join("; "));
    Ok(())
}

/// Runs row `n` unless the run's time is up. Fails (the whole system's run) only if the
/// cluster does not settle.
async fn measure_row(
    cluster: &mut Cluster,
    env: &Env<'_>,
    dir: &Path,
    n: usize,
    (spec, target): (Spec, Target),
) -> Result<Result<Load, RowError>, String> {
    let limits = env.limits;
    if Instant::now() >= limits.deadline {
        return Ok(Err(RowError::Failed(
            "skipped: --timeout reached".to_string(),
        )));
    }
    let deadline = limits.deadline.min(Instant::now() + limits.row);
    if spec.kind == Kind::Failover {
        return Ok(failover_row(cluster, env.server, dir, spec, deadline).await);
    }
    // The leader may have changed since the last row: ask again.
    let leader = cluster.wait_settled(SETTLE_TIMEOUT).await?.leader;
    let addrs: Vec<MemberAddr> = cluster.members.iter().map(|m| m.addr.clone()).collect();
    let endpoints = endpoints(&addrs, leader, target, spec.conns);
    let conns_on_leader = endpoints
        .iter()
        .filter(|e| **e == addrs[leader].endpoint())
        .count();
    let ctx = RowCtx {
        row: n,
        deadline,
        endpoints,
        cluster,
        leader,
    };
    let mut load = match spec.kind {
        Kind::Put => put_row(&ctx, spec).await,
        Kind::Txn => cas_row(&ctx, spec).await,
        Kind::Range => range_row(&ctx, spec).await,
        Kind::Watch => watch_row(&ctx, spec).await,
        Kind::Open => open_row(&ctx, spec).await,
        Kind::GoPut | Kind::GoRange => match env.go_client {
            Some(go) => go_row(&ctx, spec, go).await,
            None => Err(RowError::Failed("the Go client was not built".to_string())),
        },
        Kind::Failover => Err(RowError::Failed(
            "a failover row in the wrong place".to_string(),
        )),
    };
    if let Ok(l) = &mut load {
        l.conns_on_leader = conns_on_leader;
    }
    Ok(load)
}

/// Runs a put row: put `i` writes the 8 B big-endian key `i` with one 256 B random value.
async fn put_row(ctx: &RowCtx<'_>, spec: Spec) -> Result<Load, RowError> {
    let channels = ctx.connect().await?;
    let value = Arc::new(random_bytes(VALUE_BYTES));
    let clients: Vec<PutClient> = (0..spec.clients)
        .map(|c| PutClient {
            kv: KvClient::new(channels[c % channels.len()].clone()),
            value: Arc::clone(&value),
        })
        .collect();
    let before = ctx.cpu();
    let (mut load, _) = drive(clients, spec.ops, ctx.deadline)
        .await
        .map_err(RowError::Failed)?;
    load.cpu = ctx.cpu_since(before);
    Ok(load)
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

/// Opens one connection per endpoint, all at once, and makes one untimed put on each;
/// `timeout` bounds every request on them (`None` for connections carrying streams that last
/// a row).
pub async fn connect(
    endpoints: &[String],
    timeout: Option<Duration>,
) -> Result<Vec<Channel>, String> {
    let value = random_bytes(VALUE_BYTES);
    join_all(endpoints.iter().map(|ep| connect_one(ep, timeout, &value)))
        .await
        .into_iter()
        .collect()
}

/// One connection of [`connect`].
async fn connect_one(ep: &str, timeout: Option<Duration>, value: &[u8]) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(format!("http://{ep}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {ep}: {e}"))?;
    warm_up(&channel, ep, value).await?;
    Ok(channel)
}

/// The untimed put of a new connection, retried for up to [`WARM_UP_TIMEOUT`] while the
/// system refuses it (etcd refuses proposals with "too many requests" while its apply lags
/// its commit, as after a heavy row: the next row waits for that backlog).
async fn warm_up(channel: &Channel, ep: &str, value: &[u8]) -> Result<(), String> {
    let deadline = Instant::now() + WARM_UP_TIMEOUT;
    let mut kv = KvClient::new(channel.clone());
    loop {
        let put = kv.put(PutRequest {
            key: b"bench-kv-warm-up".to_vec(),
            value: value.to_vec(),
            ..PutRequest::default()
        });
        let e = match tokio::time::timeout(REQUEST_TIMEOUT, put).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => format!("{}: {}", e.code(), e.message()),
            Err(_) => format!("no answer in {REQUEST_TIMEOUT:?}"),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "warm-up put on {ep}, retried for {} s: {e}",
                WARM_UP_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(WARM_UP_RETRY).await;
    }
}

fn print_table_head() {
    println!();
    println!(
        "| workload                  | target      | conns | clients |     ops | conns on leader | seconds |     ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | wrong | members' CPU µs/op | CPU s: leader / followers / client |"
    );
    println!(
        "|---------------------------|-------------|------:|--------:|--------:|----------------:|--------:|----------:|-------:|-------:|-------:|---------:|-------:|-------:|------:|-------------------:|------------------------------------|"
    );
}

fn print_row(spec: Spec, target: Target, load: &Result<Load, RowError>) {
    let head = format!(
        "| {:<25} | {:<11} | {:>5} | {:>7} | {:>7} |",
        spec.label(),
        target.label(),
        spec.conns,
        spec.clients,
        spec.expected_ops()
    );
    let l = match load {
        Err(RowError::Unserved(e)) => return println!("{head} unserved ({e})"),
        Err(RowError::Failed(e)) => return println!("{head} {e}"),
        Ok(l) => l,
    };
    println!(
        "{head} {:>15} | {:>7.2} | {:>9} | {:>6.2} | {:>6.2} | {:>6.2} | {:>8.2} | {:>6.2} | {:>6} | {:>5} | {:>18} | {:<34} |{}",
        format!("{} / {}", l.conns_on_leader, spec.conns),
        l.secs,
        rate_cell(spec, l),
        l.ms(0.5),
        l.ms(0.9),
        l.ms(0.99),
        l.ms(0.999),
        l.hist.max() as f64 / 1000.0,
        l.errors,
        l.wrong,
        l.members_cpu_us_per_op()
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
            format!(" CUT SHORT after {} ops", l.ops)
        } else {
            String::new()
        }
    );
    for d in &l.detail {
        println!("  {d}");
    }
    if let Some(e) = &l.first_error {
        println!("  first error: {e}");
    }
    if let Some(e) = &l.first_wrong {
        println!("  WRONG RESULT: {e}");
    }
}

/// raft-kv's figures over etcd's, row by row.
fn print_ratios(ours: &SystemRun, theirs: &SystemRun, rows: &[(Spec, Target)]) {
    println!(
        "\n## raft-kv / etcd (same run, same client; ops/s above 1 and latency below 1 \
         favour raft-kv, as does members' CPU per op below 1)\n"
    );
    println!(
        "| workload                  | target      | clients | raft-kv ops/s | etcd ops/s | ops/s ratio | p50 ratio | p90 ratio | p99 ratio | p99.9 ratio | CPU/op ratio |"
    );
    println!(
        "|---------------------------|-------------|--------:|--------------:|-----------:|------------:|----------:|----------:|----------:|------------:|-------------:|"
    );
    for &(spec, target) in rows {
        let head = format!(
            "| {:<25} | {:<11} | {:>7} |",
            spec.label(),
            target.label(),
            spec.clients
        );
        match (ours.row(spec, target), theirs.row(spec, target)) {
            (Some(Ok(a)), Some(Ok(b))) => println!("{head} {}", ratio_cells(spec, a, b)),
            (Some(Err(RowError::Unserved(_))), _) => println!("{head} raft-kv: unserved"),
            (_, Some(Err(RowError::Unserved(_)))) => println!("{head} etcd: unserved"),
            _ => println!("{head} (a row is missing or failed: see above)"),
        }
    }
    for s in [ours, theirs] {
        if let Some(f) = &s.failure {
            println!("{}: {f}", s.name);
        }
    }
}

/// The ops/s cell of a row: `-` for the failover row (its operations are kills).
fn rate_cell(spec: Spec, l: &Load) -> String {
    if spec.kind == Kind::Failover {
        "-".to_string()
    } else {
        format!("{:.0}", l.ops_per_sec())
    }
}

/// The cells of a ratio row: `a`'s figures, `b`'s, and their ratios.
fn ratio_cells(spec: Spec, a: &Load, b: &Load) -> String {
    let kills = spec.kind == Kind::Failover;
    let ratio = |x: f64, y: f64| {
        if y > 0.0 && x.is_finite() {
            format!("{:.2}x", x / y)
        } else {
            "-".to_string()
        }
    };
    format!(
        "{:>13} | {:>10} | {:>11} | {:>9} | {:>9} | {:>9} | {:>11} | {:>12} |",
        rate_cell(spec, a),
        rate_cell(spec, b),
        if kills {
            "-".to_string()
        } else {
            ratio(a.ops_per_sec(), b.ops_per_sec())
        },
        ratio(a.ms(0.5), b.ms(0.5)),
        ratio(a.ms(0.9), b.ms(0.9)),
        ratio(a.ms(0.99), b.ms(0.99)),
        ratio(a.ms(0.999), b.ms(0.999)),
        ratio(
            a.members_cpu_us_per_op().unwrap_or(f64::NAN),
            b.members_cpu_us_per_op().unwrap_or(0.0)
        ),
    )
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
    rows: &[(Spec, Target)],
) -> Result<(), String> {
    println!("# cargo xtask bench kv");
    print_machine(raft_kv, args.raft_kv.is_some(), etcd);
    println!("directory:    {} (both clusters' data)", base.display());
    println!("file system:  {}", file_system_of(base));
    println!(
        "fsync:        on for both: raft-kv fdatasyncs every raftline-log write batch (group \
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
        u32::from(RAFT_KV_BASE_PORT) + crate::cluster::MEMBER_PORT_STEP,
        u32::from(RAFT_KV_BASE_PORT) + 2 * crate::cluster::MEMBER_PORT_STEP,
        u32::from(ETCD_BASE_PORT) + crate::cluster::MEMBER_PORT_STEP,
        u32::from(ETCD_BASE_PORT) + 2 * crate::cluster::MEMBER_PORT_STEP,
    );
    print_workloads(args, rows);
    Ok(())
}

/// The machine and build lines of the header.
fn print_machine(raft_kv: &Path, given: bool, etcd: Result<&PathBuf, &String>) {
    let client_build = if cfg!(debug_assertions) {
        "debug (debug assertions on): client figures are not representative"
    } else {
        "release"
    };
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
        "build:        raft-kv {} ({}), benchmark client {client_build}",
        if given {
            "given by --raft-kv"
        } else {
            "release"
        },
        raft_kv.display()
    );
    match etcd {
        Ok(path) => println!("etcd:         {} ({})", etcd_version(path), path.display()),
        Err(why) => println!("etcd:         not run: {why}"),
    }
}

/// The workload lines of the header.
fn print_workloads(args: &KvArgs, rows: &[(Spec, Target)]) {
    let kinds: Vec<String> = args
        .workloads
        .iter()
        .filter_map(|k| Some(k.to_possible_value()?.get_name().to_string()))
        .collect();
    println!(
        "workloads:    {} (--workloads), operations per row {} (--puts-scale {})",
        kinds.join(", "),
        rows.iter()
            .map(|(s, _)| s.ops.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        args.puts_scale
    );
    println!(
        "              put: etcd `benchmark put`, {KEY_BYTES} B sequential keys, {VALUE_BYTES} B \
         values; txn: CAS loop on KV.Txn (compare mod_revision, put / else get); range: \
         single-key linearizable Range over {RANGE_KEYS} keys; watch: {WATCHERS} watchers, \
         one Watch stream each, on one key, one writer on the leader (ops = events, latency \
         put to event)"
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
        "bounds:       {} s per request, {} s per row, {} s in all, watch events {} s after \
         the last put; one untimed put per connection before each row (retried up to {} s)",
        REQUEST_TIMEOUT.as_secs(),
        args.row_secs,
        args.timeout,
        WATCH_DRAIN.as_secs(),
        WARM_UP_TIMEOUT.as_secs()
    );
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
pub fn new_hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// `len` pseudo-random bytes (SplitMix64 from the clock), like the random value etcd's
/// benchmark writes.
pub fn random_bytes(len: usize) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    use super::{rows, Kind, Target};

    #[test]
    fn rows_follow_the_workloads_and_the_scale() {
        let rates = [1000.0, 2000.0];
        let all = rows(
            1.0,
            &[Kind::Put, Kind::Txn, Kind::Range, Kind::Watch],
            &rates,
        );
        assert_eq!(all.len(), 16);
        let watch = rows(0.01, &[Kind::Watch], &rates);
        assert_eq!(watch.len(), 2);
        assert!(watch.iter().all(|(s, t)| *t == Target::All && s.ops >= 1));
        assert_eq!(watch[0].0.ops, 20);
        let txn = rows(0.01, &[Kind::Txn], &rates);
        assert_eq!(txn.len(), 6);
        // Every client makes at least one operation.
        assert!(txn.iter().all(|(s, _)| s.ops >= s.clients as u64));
        // One open-loop row per rate, OPEN_SECS of schedule each, then the failover row.
        let open = rows(1.0, &[Kind::Failover, Kind::Open], &rates);
        let kinds: Vec<(Kind, Option<f64>, u64)> =
            open.iter().map(|(s, _)| (s.kind, s.rate, s.ops)).collect();
        assert_eq!(
            kinds,
            [
                (Kind::Open, Some(1000.0), 5000),
                (Kind::Open, Some(2000.0), 10_000),
                (Kind::Failover, None, 20)
            ]
        );
        assert!(open.iter().all(|(_, t)| *t == Target::All));
        assert_eq!(rows(0.01, &[Kind::Failover], &rates)[0].0.ops, 1);
        let go = rows(1.0, &[Kind::GoPut, Kind::GoRange], &rates);
        assert_eq!(go.len(), 8);
    }
}
