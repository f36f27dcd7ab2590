//! `cargo xtask jepsen`: raft-kv processes under real faults, their clients' histories checked.
//!
//! The run starts N members (each in a network namespace of its own when it can: see
//! [`net`]; on loopback otherwise), runs the workloads of `--workload` for `--time` seconds
//! while the nemesis ([`nemesis`]) kills, pauses and partitions members, heals everything,
//! measures how long the cluster takes to accept a write again, reads the results back on
//! every member, and checks them. The workloads (`all` runs the three at once, on separate key
//! prefixes):
//!
//! - `register` ([`workload`]): puts, gets and compare-and-swaps on a few keys; every key read
//!   on every member at the end, and each key's history checked with the workspace's checker
//!   (`raftline_core::testing::linearizability`);
//! - `watch` ([`watch`]): writers and watchers on every member, the watchers reconnecting and
//!   resuming after each fault; every watcher's events must be the committed history's, which
//!   every member's final watch from revision 1 must agree on;
//! - `lease` ([`lock`]): a lock by lease and Txn (etcd's Mutex recipe); no two critical
//!   sections whose leases provably lived through them may overlap.
//!
//! It prints a summary table and the verdicts and leaves the history, the members' logs and
//! data under `--out` (default `target/jepsen/seed-N-TIME`). Exit status 1 when a check fails
//! (`--plant` makes one fail on purpose).
//!
//! Outcomes: an answered operation is ok; a read that failed, or a write that could not even
//! connect, is failed (no effect, left out of the history); any other failed write (timeout,
//! `Unavailable`, `leader changed`, ...) is unknown: the checker lets it take effect at any
//! point after its call, or never. The clients move to fresh registers every `--key-secs`, so
//! that no key's history holds more unknown writes than the search can take.
//!
//! Not in this slice (issue 13): the membership and disk nemeses, latency and loss with tc
//! netem (this machine's kernel has no `sch_netem`).
//!
//! Cleanup: the members die with this process (`setpriv --pdeathsig KILL`), the namespaces
//! and the bridge are removed on every exit, Ctrl-C and SIGTERM included; `--cleanup`
//! removes the leftovers of a run that was itself killed.

mod html;
mod lock;
mod nemesis;
mod net;
mod nodes;
mod report;
mod watch;
mod workload;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use raftline_core::testing::linearizability::KvInput;
use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use tokio::signal::unix::{signal, SignalKind};

use nemesis::{Kind, Nemesis};
use net::Net;
use nodes::{Addr, Nodes};
use report::{Plant, RunLog};
use workload::Shared;

/// Options of `cargo xtask jepsen`.
#[derive(Args)]
pub struct JepsenArgs {
    /// Number of members (3 to 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(3..=5))]
    nodes: u16,
    /// Seconds of load under faults (then a final heal and the checks).
    #[arg(long, default_value_t = 30.0)]
    time: f64,
    /// Faults, comma-separated: kill, pause, partition, or all.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// The workloads, comma-separated: register, watch, lease, or all (the three at once).
    #[arg(long, default_value = "register")]
    workload: String,
    /// Seed of the nemesis schedule and of the clients' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Corrupt the recorded history before checking it: the run must then fail.
    #[arg(long, value_enum)]
    plant: Option<Plant>,
    /// Directory for the run's history, report and member data.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Registers at a time (etcd keys `jepsen/rK`).
    #[arg(long, default_value_t = 3)]
    keys: u64,
    /// Seconds before the clients move on to fresh registers (keeps each key's history
    /// small enough to check).
    #[arg(long, default_value_t = 5.0)]
    key_secs: f64,
    /// Register clients per member.
    #[arg(long, default_value_t = 2)]
    clients_per_member: u64,
    /// Watchers per member (watch workload; one writer per member too).
    #[arg(long, default_value_t = 2)]
    watchers_per_member: u64,
    /// Lock clients per member (lease workload).
    #[arg(long, default_value_t = 2)]
    lockers_per_member: u64,
    /// Run on loopback even when network namespaces could be made (no partitions).
    #[arg(long)]
    loopback: bool,
    /// Remove the namespaces, links and processes a killed run left behind, and exit.
    #[arg(long)]
    cleanup: bool,
}

/// Why a run stopped before its checks.
#[derive(Debug)]
enum Error {
    /// Bad options, or the cluster could not be set up.
    Setup(String),
    /// SIGINT or SIGTERM.
    Interrupted(&'static str),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Setup(why) => f.write_str(why),
            Error::Interrupted(signal) => write!(f, "interrupted ({signal}): cleaned up"),
        }
    }
}

impl From<String> for Error {
    fn from(why: String) -> Error {
        Error::Setup(why)
    }
}

/// How long the cluster may take to elect its first leader.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after the final heal a write must succeed.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `cargo xtask jepsen`; false if a check failed or the run could not be made.
pub fn run(args: JepsenArgs) -> bool {
    if args.cleanup {
        let removed = net::cleanup();
        println!("removed {} leftover(s)", removed.len());
        for r in removed {
            println!("  {r}");
        }
        return true;
    }
    match run_checked(&args) {
        Ok(passed) => passed,
        Err(e) => {
            eprintln!("cargo xtask jepsen: {e}");
            false
        }
    }
}

/// The workloads a run has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workloads {
    /// Puts, gets and compare-and-swaps checked for linearizability.
    pub register: bool,
    /// Watchers checked against the committed history.
    pub watch: bool,
    /// Locks by lease checked for mutual exclusion.
    pub lease: bool,
}

impl Workloads {
    /// Parses `register`, `watch`, `lease`, `all`, comma-separated.
    fn parse(list: &str) -> Result<Workloads, Error> {
        let mut w = Workloads::default();
        for name in list.split(',').map(str::trim) {
            match name {
                "register" => w.register = true,
                "watch" => w.watch = true,
                "lease" => w.lease = true,
                "all" => {
                    w = Workloads {
                        register: true,
                        watch: true,
                        lease: true,
                    }
                }
                other => {
                    return Err(Error::Setup(format!(
                        "unknown workload `{other}` (register, watch, lease, all)"
                    )))
                }
            }
        }
        Ok(w)
    }
}

fn run_checked(args: &JepsenArgs) -> Result<bool, Error> {
    let workloads = Workloads::parse(&args.workload)?;
    let mut kinds = parse_nemesis(&args.nemesis)?;
    let out = args.out.clone().unwrap_or_else(|| default_out(args.seed));
    prepare_out(&out)?;
    let binary = crate::cluster::build_raft_kv()?;
    let net = make_net(args);
    if kinds.contains(&Kind::Partition) {
        if net.is_none() {
            eprintln!("no network namespaces: running without the partition nemesis");
            kinds.retain(|k| *k != Kind::Partition);
        } else if let Err(e) = net::nft_available() {
            eprintln!("{e}: running without the partition nemesis");
            kinds.retain(|k| *k != Kind::Partition);
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let log = runtime.block_on(with_signals(drive(
        args,
        workloads,
        &kinds,
        &binary,
        &out,
        net.as_ref(),
    )));
    drop(net);
    let mut log = log?;
    Ok(finish(args, &out, &mut log))
}

/// Runs `work` until it ends or SIGINT / SIGTERM arrives (dropping it: its members die).
async fn with_signals<T>(
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    tokio::select! {
        r = work => r,
        _ = int.recv() => Err(Error::Interrupted("SIGINT")),
        _ = term.recv() => Err(Error::Interrupted("SIGTERM")),
    }
}

fn parse_nemesis(list: &str) -> Result<Vec<Kind>, Error> {
    if list == "all" {
        return Ok(vec![Kind::Kill, Kind::Pause, Kind::Partition]);
    }
    if list == "none" {
        return Ok(Vec::new());
    }
    list.split(',')
        .map(|s| Kind::parse(s.trim()).map_err(Error::Setup))
        .collect()
}

/// The file that marks a directory as a jepsen run's (and so safe to wipe).
const MARKER: &str = ".xtask-jepsen";

/// Makes `out` empty for a new run: creates it, or wipes a previous run's; refuses a
/// directory with other contents.
fn prepare_out(out: &Path) -> Result<(), Error> {
    let fail = |e: std::io::Error| Error::Setup(format!("{}: {e}", out.display()));
    if out.join(MARKER).exists() {
        std::fs::remove_dir_all(out).map_err(fail)?;
    } else if out.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::Setup(format!(
            "{} is not empty and not a jepsen run's directory: pick another --out",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(fail)?;
    std::fs::write(out.join(MARKER), "cargo xtask jepsen\n").map_err(fail)
}

fn default_out(seed: u64) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::cluster::target_dir()
        .join("jepsen")
        .join(format!("seed-{seed}-{now}"))
}

/// The namespaces, or why there are none (said on stderr).
fn make_net(args: &JepsenArgs) -> Option<Net> {
    if args.loopback {
        return None;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("network namespaces need root: running the members on loopback");
        return None;
    }
    match Net::create(usize::from(args.nodes)) {
        Ok(net) => Some(net),
        Err(e) => {
            eprintln!("cannot make network namespaces ({e}): running the members on loopback");
            None
        }
    }
}

/// Starts the members, runs the load under the nemesis, heals, reads every key everywhere.
async fn drive(
    args: &JepsenArgs,
    workloads: Workloads,
    kinds: &[Kind],
    binary: &Path,
    out: &Path,
    net: Option<&Net>,
) -> Result<RunLog, Error> {
    let n = usize::from(args.nodes);
    let addrs = Addr::layout(n, net.is_some());
    let names = addrs.iter().map(|a| a.name.clone()).collect();
    let urls: Vec<String> = addrs.iter().map(Addr::client_url).collect();
    let nodes = RefCell::new(Nodes::start(binary, out, addrs)?);
    wait_leader(&nodes).await?;
    eprintln!("cluster up ({}): load for {} s", urls.join(" "), args.time);
    let shared = Shared::new();
    let until = Instant::now() + Duration::from_secs_f64(args.time);
    let nemesis = Nemesis {
        until,
        nodes: &nodes,
        net,
        shared: &shared,
        current: RefCell::new(String::new()),
        faults: RefCell::new(Vec::new()),
    };
    let clients = clients(args, workloads, &shared, &urls);
    let control = control(&nemesis, kinds, args.seed);
    let progress = progress(&shared, &nemesis, args.time);
    let (_, control, ()) = tokio::join!(clients, control, progress);
    let (heal, recovery) = control?;
    let load_end = shared.now();
    let crashes = nodes.borrow_mut().crashed();
    let used = shared
        .records
        .borrow()
        .iter()
        .map(|r| r.input.key() + 1)
        .max();
    let finals = final_reads(&shared, &urls, used.unwrap_or(0)).await;
    let mut final_watch = Vec::new();
    if workloads.watch {
        for url in &urls {
            final_watch.push(watch::final_history(url).await);
        }
    }
    let faults = nemesis.faults.take();
    Ok(RunLog {
        workloads,
        records: shared.records.take(),
        ops: shared.ops.take(),
        dropped: shared.dropped.get(),
        watchers: shared.watchers.take(),
        final_watch,
        sections: shared.sections.take(),
        faults,
        load_end,
        heal,
        recovery,
        finals,
        crashes,
        names,
    })
}

/// Every client of the chosen workloads, run until `shared.stop`: client `c` of a kind is
/// bound to member `c % n`.
async fn clients(args: &JepsenArgs, workloads: Workloads, shared: &Shared, urls: &[String]) {
    use futures::future::{join_all, LocalBoxFuture};
    let n = urls.len() as u64;
    let at = |c: u64| ((c % n) as usize, urls[(c % n) as usize].clone());
    let space = workload::KeySpace {
        keys: args.keys.max(1),
        key_us: (args.key_secs.max(0.1) * 1e6) as u64,
    };
    let seed = args.seed;
    let mut all: Vec<LocalBoxFuture<'_, ()>> = Vec::new();
    if workloads.register {
        for c in 0..n * args.clients_per_member {
            let (m, url) = at(c);
            all.push(Box::pin(workload::client(shared, c, m, url, space, seed)));
        }
    }
    if workloads.watch {
        for c in 0..n {
            let (m, url) = at(c);
            let id = workload::WRITER_CLIENTS + c;
            all.push(Box::pin(watch::writer(shared, id, m, url, seed)));
        }
        for c in 0..n * args.watchers_per_member {
            let (m, url) = at(c);
            let id = workload::WATCHER_CLIENTS + c;
            all.push(Box::pin(watch::watcher(shared, id, m, url)));
        }
    }
    if workloads.lease {
        for c in 0..n * args.lockers_per_member {
            let (m, url) = at(c);
            let id = workload::LOCK_CLIENTS + c;
            all.push(Box::pin(lock::client(shared, id, m, url, seed)));
        }
    }
    join_all(all).await;
}

/// The nemesis, then the final heal and the wait for the first write after it; stops the
/// clients. Returns the heal time and the recovery time (µs).
async fn control(
    nemesis: &Nemesis<'_>,
    kinds: &[Kind],
    seed: u64,
) -> Result<(u64, Option<u64>), Error> {
    let ran = nemesis.run(kinds, seed).await;
    if let Some(net) = nemesis.net {
        net.heal();
    }
    let healed = nemesis.nodes.borrow_mut().heal();
    let shared = nemesis.shared;
    let heal = shared.now();
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    let recovery = loop {
        let first = shared.first_write_after(heal);
        if first.is_some() || Instant::now() >= deadline {
            break first;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    shared.stop.set(true);
    ran?;
    healed?;
    Ok((heal, recovery))
}

/// A progress line on stderr every second until the clients stop.
async fn progress(shared: &Shared, nemesis: &Nemesis<'_>, total: f64) {
    while !shared.stop.get() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (ok, unknown, failed) = shared.counts();
        let fault = nemesis.current.borrow();
        eprint!(
            "\r[{:5.1}/{total:.0} s] ok {ok} unknown {unknown} failed {failed} | {:<40}",
            shared.start.elapsed().as_secs_f64(),
            if fault.is_empty() {
                "no fault"
            } else {
                fault.as_str()
            }
        );
    }
    eprintln!();
}

/// Waits until a majority of the members name a leader.
async fn wait_leader(nodes: &RefCell<Nodes>) -> Result<(), Error> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let crashed = nodes.borrow_mut().crashed();
        if !crashed.is_empty() {
            return Err(Error::Setup(crashed.join("; ")));
        }
        let live = nodes.borrow().live();
        if nodes::find_leader(live).await.is_some() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Setup("no leader within 30 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every key read (linearizably) on every member, a few tries each; recorded as operations
/// of clients 1000 + member.
async fn final_reads(shared: &Shared, urls: &[String], keys: u64) -> Vec<Vec<Option<Option<u64>>>> {
    let mut finals = Vec::new();
    for (m, url) in urls.iter().enumerate() {
        let mut row = Vec::new();
        let Ok(channel) = workload::channel(url) else {
            finals.push(vec![None; keys as usize]);
            continue;
        };
        let mut kv = KvClient::new(channel);
        for key in 0..keys {
            let mut value = None;
            for _ in 0..20 {
                let client = workload::FINAL_CLIENTS + m as u64;
                let r = workload::perform(shared, &mut kv, client, m, KvInput::Get { key }).await;
                let out = r.output.clone();
                shared.records.borrow_mut().push(r);
                if let Some(raftline_core::testing::linearizability::KvOutput::Value(v)) = out {
                    value = Some(v);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            row.push(value);
        }
        finals.push(row);
    }
    finals
}

/// Plants, checks, prints and writes the run's files; whether every check passed.
fn finish(args: &JepsenArgs, out: &Path, log: &mut RunLog) -> bool {
    let planted = args.plant.map(|p| report::plant(log, p));
    if let Err(e) = report::write_history(out, log) {
        eprintln!("cannot write {}: {e}", out.join("history.txt").display());
    }
    let mut text = report::summary(log);
    let (lines, mut ok) = report::verdicts(log, out);
    text.push_str("\nverdicts:\n");
    match &planted {
        Some(Ok(what)) => text.push_str(&format!("  {what}\n")),
        Some(Err(why)) => {
            ok = false;
            text.push_str(&format!("  could not plant: {why}\n"));
        }
        None => {}
    }
    for l in lines {
        text.push_str(&format!("  {l}\n"));
    }
    let verdict = if ok { "PASS" } else { "FAIL" };
    text.push_str(&format!(
        "\n{verdict}: {} members {}, seed {}, history in {}\n",
        log.names.len(),
        log.names.join(" "),
        args.seed,
        out.display()
    ));
    print!("{text}");
    let _ = std::fs::write(out.join("summary.txt"), &text);
    if let Err(e) = html::write(out, log, &text) {
        eprintln!("cannot write {}: {e}", out.join("report.html").display());
    }
    ok
}
