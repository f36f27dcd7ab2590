//! `cargo xtask jepsen`: raft-kv processes (or etcd's, `--target etcd`, or both one after the
//! other, `--target both`: see [`etcd`]) under real faults, their clients' histories checked,
//! and their availability measured ([`availability`]).
//!
//! The run starts N members (each in a network namespace of its own when it can: see
//! [`net`]; on loopback otherwise; with the disk nemesis each on a small loop-mounted
//! filesystem: see [`loopfs`]), runs the workloads of `--workload` for `--time` seconds while
//! the nemesis ([`nemesis`]) kills, pauses, partitions (and cuts links, drops packets, delays
//! them) members, changes the membership and fills disks, heals everything, measures how long
//! the cluster takes to accept a write again, reads the results back on every current
//! member, and checks them. The workloads (`all` runs the three at once, on separate key
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
//! data under `--out` (default `target/jepsen/seed-N-TIME`; with `--target both`, its
//! `raft-kv/` and `etcd/`). Exit status 1 when a check fails (`--plant` makes one fail on
//! purpose).
//!
//! Availability, from the records: successful operations per second over the load, outside
//! faults and during them (per kind too), the longest time without a successful operation,
//! and the recovery after the final heal. `--target both` ends with a side-by-side table of
//! these figures, raft-kv's over etcd's, from the same seed on the same machine.
//!
//! Outcomes: an answered operation is ok; a read that failed, or a write that could not even
//! connect, is failed (no effect, left out of the history); any other failed write (timeout,
//! `Unavailable`, `leader changed`, ...) is unknown: the checker lets it take effect at any
//! point after its call, or never. The clients move to fresh registers every `--key-secs`, so
//! that no key's history holds more unknown writes than the search can take.
//!
//! `--nemesis all` is every kind this machine allows: partition needs namespaces and
//! nftables, disk needs loop devices (root, `mkfs.ext4`); a kind that cannot run is left out
//! with one line on stderr. Latency needs the kernel's `sch_netem` (without it, loss is made
//! with nftables and latency is skipped, said once at the start).
//!
//! Not in this slice (issue 13): the watch and lease workloads, `--workload all`.
//!
//! Cleanup: the members die with this process (`setpriv --pdeathsig KILL`), the namespaces,
//! the bridge and the loop mounts are removed on every exit, Ctrl-C, SIGTERM and panic
//! included (their guards' `Drop`); `--cleanup` removes the leftovers of a run that was itself
//! killed.

mod availability;
mod etcd;
mod html;
mod lock;
mod loopfs;
mod nemesis;
mod net;
mod nodes;
mod report;
mod shrink;
mod watch;
mod workload;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use raftline_core::testing::linearizability::KvInput;
use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use tokio::signal::unix::{signal, SignalKind};

use etcd::{Outcome, Server, Target};
use loopfs::Disks;
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
    /// Faults, comma-separated: kill, pause, partition, membership, disk; or all (every kind
    /// this machine allows); or none.
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
    /// Remove the namespaces, links, loop mounts and processes a killed run left behind, and
    /// exit.
    #[arg(long)]
    cleanup: bool,
    /// What the members are: raft-kv, etcd, or both (one after the other, same seed, then a
    /// side-by-side table).
    #[arg(long, value_enum, default_value_t = Target::RaftKv)]
    target: Target,
    /// The etcd binary of `--target etcd` and `both`.
    #[arg(long, default_value = etcd::DEFAULT_ETCD)]
    etcd: PathBuf,
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

/// Raft log segment size with the disk nemesis (raft-kv's hidden `--log-segment-bytes`):
/// small, so that segments are prepared (zero-filled) often and a full disk is met within a
/// fault's few seconds rather than once per 64 MiB.
const DISK_LOG_SEGMENT_BYTES: u64 = 64 << 10;

/// `--snapshot-count` with the disk nemesis: snapshots (and the log compaction after them)
/// happen during a short run, so a full disk can meet them too.
const DISK_SNAPSHOT_COUNT: u64 = 2000;

/// Runs `cargo xtask jepsen`; false if a check failed or the run could not be made.
pub fn run(args: JepsenArgs) -> bool {
    if args.cleanup {
        let mut removed = loopfs::cleanup();
        removed.extend(net::cleanup());
        println!("removed {} leftover(s)", removed.len());
        for r in removed {
            println!("  {r}");
        }
        return true;
    }
    run_targets(&args)
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

/// Runs each target of `--target` in turn (in subdirectories of `--out` when there are two),
/// then prints and writes the side-by-side table; false if a run failed or could not be made.
fn run_targets(args: &JepsenArgs) -> bool {
    let out = args.out.clone().unwrap_or_else(|| default_out(args.seed));
    let targets = args.target.runs();
    if let Err(e) = prepare_out(&out) {
        eprintln!("cargo xtask jepsen: {e}");
        return false;
    }
    let mut outcomes = Vec::new();
    for &target in &targets {
        let dir = if targets.len() > 1 {
            out.join(target.name())
        } else {
            out.clone()
        };
        match run_checked(args, target, &dir) {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                eprintln!("cargo xtask jepsen --target {}: {e}", target.name());
                return false;
            }
        }
    }
    if targets.len() > 1 {
        let table = etcd::table(&outcomes);
        println!(
            "\n--nemesis {} --seed {} --time {}:\n{table}",
            args.nemesis, args.seed, args.time
        );
        let _ = std::fs::write(out.join("availability.md"), table);
    }
    outcomes.iter().all(|o| o.passed)
}

/// One run of `target`, its files under `out`: whether its checks passed, its figures.
fn run_checked(args: &JepsenArgs, target: Target, out: &Path) -> Result<Outcome, Error> {
    let workloads = Workloads::parse(&args.workload)?;
    let mut kinds = parse_nemesis(&args.nemesis)?;
    if target == Target::Etcd {
        raft_kv_only(&mut kinds);
    }
    // A killed run's mounts would keep its directory from being wiped.
    loopfs::cleanup();
    prepare_out(out)?;
    let server = etcd::server(target, &args.etcd)?;
    eprintln!(
        "target {}: {}",
        target.name(),
        etcd::version(&server.binary)
    );
    let slots = usize::from(args.nodes) + usize::from(kinds.contains(&Kind::Membership));
    let net = make_net(args, slots);
    check_partition(&mut kinds, net.as_ref());
    let disks = make_disks(&mut kinds, out, slots);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let log = runtime.block_on(with_signals(drive(
        args,
        workloads,
        &kinds,
        &server,
        out,
        net.as_ref(),
        disks.as_ref(),
    )));
    drop(disks);
    drop(net);
    let mut log = log?;
    let passed = finish(args, target, out, &mut log);
    let availability = availability::Availability::of(&log);
    Ok(Outcome {
        target,
        passed,
        availability,
    })
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

/// Leaves out the partition nemesis without namespaces or nftables (saying so), and says how
/// loss and latency will be made.
/// Leaves out the nemeses that need raft-kv (said once): the membership nemesis derives
/// member ids as raft-kv does, and the disk nemesis gives raft-kv's log flags.
fn raft_kv_only(kinds: &mut Vec<Kind>) {
    let before = kinds.len();
    kinds.retain(|k| !matches!(k, Kind::Membership | Kind::Disk));
    if kinds.len() < before {
        eprintln!("target etcd: running without the membership and disk nemeses (raft-kv's only)");
    }
}

fn check_partition(kinds: &mut Vec<Kind>, net: Option<&Net>) {
    if !kinds.contains(&Kind::Partition) {
        return;
    }
    let Some(net) = net else {
        eprintln!("no network namespaces: running without the partition nemesis");
        kinds.retain(|k| *k != Kind::Partition);
        return;
    };
    if let Err(e) = net::nft_available() {
        eprintln!("{e}: running without the partition nemesis");
        kinds.retain(|k| *k != Kind::Partition);
    } else if !net.has_netem() {
        eprintln!("no sch_netem in this kernel: packet loss by nftables, no latency faults");
    }
}

/// The loop filesystems of the disk nemesis, one per slot; without them (said once) the run
/// goes without the disk nemesis.
fn make_disks(kinds: &mut Vec<Kind>, out: &Path, slots: usize) -> Option<Disks> {
    if !kinds.contains(&Kind::Disk) {
        return None;
    }
    let homes: Vec<PathBuf> = (1..=slots).map(|i| out.join(format!("n{i}"))).collect();
    match Disks::create(out, &homes) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("cannot make loop filesystems ({e}): running without the disk nemesis");
            kinds.retain(|k| *k != Kind::Disk);
            None
        }
    }
}

fn parse_nemesis(list: &str) -> Result<Vec<Kind>, Error> {
    if list == "all" {
        return Ok(Kind::ALL.to_vec());
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
/// directory with other contents. Keeps a directory this process marked (`--target both`'s,
/// holding the first target's run).
fn prepare_out(out: &Path) -> Result<(), Error> {
    let fail = |e: std::io::Error| Error::Setup(format!("{}: {e}", out.display()));
    let marker = std::fs::read_to_string(out.join(MARKER)).ok();
    if marker.as_deref() == Some(marker_text().as_str()) {
        return Ok(());
    }
    if marker.is_some() {
        std::fs::remove_dir_all(out).map_err(fail)?;
    } else if out.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::Setup(format!(
            "{} is not empty and not a jepsen run's directory: pick another --out",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(fail)?;
    std::fs::write(out.join(MARKER), marker_text()).map_err(fail)
}

/// What this process writes into its directories' marker.
fn marker_text() -> String {
    format!("cargo xtask jepsen (process {})\n", std::process::id())
}

fn default_out(seed: u64) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::cluster::target_dir()
        .join("jepsen")
        .join(format!("seed-{seed}-{now}"))
}

/// The namespaces of `slots` members, or why there are none (said on stderr).
fn make_net(args: &JepsenArgs, slots: usize) -> Option<Net> {
    if args.loopback {
        return None;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("network namespaces need root: running the members on loopback");
        return None;
    }
    match Net::create(slots) {
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
    server: &Server,
    out: &Path,
    net: Option<&Net>,
    disks: Option<&Disks>,
) -> Result<RunLog, Error> {
    let n = usize::from(args.nodes);
    let slots = n + usize::from(kinds.contains(&Kind::Membership));
    let addrs = Addr::layout(slots, net.is_some());
    let urls: Vec<String> = addrs.iter().map(Addr::client_url).collect();
    let extra = member_flags(disks.is_some());
    let nodes = RefCell::new(Nodes::start(server, out, addrs, n, extra)?);
    wait_leader(&nodes).await?;
    eprintln!(
        "cluster up ({}): load for {} s",
        urls[..n].join(" "),
        args.time
    );
    let shared = Shared::new();
    let until = Instant::now() + Duration::from_secs_f64(args.time);
    let nemesis = Nemesis {
        until,
        nodes: &nodes,
        net,
        disks,
        shared: &shared,
        current: RefCell::new(String::new()),
        faults: RefCell::new(Vec::new()),
        crashes: RefCell::new(Vec::new()),
    };
    let clients = clients(args, workloads, &shared, &urls);
    let control = control(&nemesis, kinds, args.seed);
    let progress = progress(&shared, &nemesis, args.time);
    let (_, control, ()) = tokio::join!(clients, control, progress);
    let (heal, recovery) = control?;
    let load_end = shared.now();
    let mut crashes = nemesis.crashes.take();
    crashes.extend(nodes.borrow_mut().crashed());
    let (members, names) = current_members(&nodes.borrow(), &urls);
    let used = shared
        .records
        .borrow()
        .iter()
        .map(|r| r.input.key() + 1)
        .max();
    let finals = final_reads(&shared, &members, used.unwrap_or(0)).await;
    let mut final_watch = Vec::new();
    if workloads.watch {
        for (_, url) in &members {
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

/// Flags every member gets besides its address: small log segments and frequent snapshots
/// with the disk nemesis.
fn member_flags(disks: bool) -> Vec<String> {
    if !disks {
        return Vec::new();
    }
    vec![
        format!("--log-segment-bytes={DISK_LOG_SEGMENT_BYTES}"),
        format!("--snapshot-count={DISK_SNAPSHOT_COUNT}"),
    ]
}

/// The members there are now, as (slot, client URL), and their names: the final reads go
/// to them (the membership nemesis may have replaced some).
fn current_members(nodes: &Nodes, urls: &[String]) -> (Vec<(usize, String)>, Vec<String>) {
    let members: Vec<(usize, String)> = nodes
        .members()
        .into_iter()
        .map(|i| (i, urls[i].clone()))
        .collect();
    let names = members
        .iter()
        .map(|&(i, _)| nodes.addr(i).name.clone())
        .collect();
    (members, names)
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

/// The progress line on stderr until the clients stop: rewritten in place every half second on
/// a terminal, a new line every few seconds in a log.
async fn progress(shared: &Shared, nemesis: &Nemesis<'_>, total: f64) {
    let line = crate::seeds::ProgressLine::for_stderr();
    while !shared.stop.get() {
        tokio::time::sleep(line.every).await;
        let (ok, unknown, failed) = shared.counts();
        let fault = nemesis.current.borrow();
        line.show(&format!(
            "[{:5.1}/{total:.0} s] ok {ok} unknown {unknown} failed {failed} | {}",
            shared.start.elapsed().as_secs_f64(),
            if fault.is_empty() {
                "no fault"
            } else {
                fault.as_str()
            }
        ));
    }
    line.clear();
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

/// Every key read (linearizably) on every member (slot, client URL), a few tries each;
/// recorded as operations of clients 1000 + slot.
async fn final_reads(
    shared: &Shared,
    members: &[(usize, String)],
    keys: u64,
) -> Vec<Vec<Option<Option<u64>>>> {
    let mut finals = Vec::new();
    for &(m, ref url) in members {
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
fn finish(args: &JepsenArgs, target: Target, out: &Path, log: &mut RunLog) -> bool {
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
        "\n{verdict}: {} {} members {}, seed {}, history in {}\n",
        log.names.len(),
        target.name(),
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
