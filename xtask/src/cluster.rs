//! `cargo xtask cluster`: a local raft-kv cluster on loopback, to talk to with `etcdctl`.
//!
//! The command builds `raft-kv` in release, starts 3 (or `--nodes`, up to 5) members under a
//! data directory (`target/cluster` by default), waits until every member answers
//! `Maintenance.Status` and all of them name the same leader, prints who is who and an
//! `etcdctl` command to paste, and then watches the members until Ctrl-C, SIGTERM, `--run-for`
//! seconds, or the unexpected death of a member (whose log tail it prints). Stopping sends
//! SIGTERM to every member and SIGKILL to those still running after a grace period.
//!
//! Ports: member `i` (from 1) serves clients on `base + 100 * (i - 1)` and peers one port
//! above, so the default `--base-port 12379` gives 12379/12380, 12479/12480, 12579/12580, ...
//! 12979/12980 for n1 to n7, and so on. Every port stays below 32768, where Linux's ephemeral
//! range (32768-60999, the ports outgoing connections take) begins: a port there may be held
//! by any outgoing connection when a member (re)starts, which then fails with "Address already
//! in use". A layout that would reach the range is refused.
//!
//! Readiness: a member is ready once it answers `Maintenance.Status` as the member this
//! command started (the member id raft-kv derives from its peer URL and the cluster token,
//! and the cluster id of the token); a port answered by another server (say, a member of
//! another cluster left running) fails the start at once, naming what answered.
//!
//! # Membership changes while it runs
//!
//! The running cluster reads commands on stdin, one per line: `add` (a new member), `remove
//! NAME` (`remove leader` for whichever member leads), `list`, `help`. For scripts the same
//! changes have flags, run once the cluster is ready, in this order: `--add N`, `--remove
//! NAME` (repeatable), `--remove-leader`; `--run-for` counts from when they are done. An added
//! member is a new raft-kv process (the next name, `n4`, `n5`, ...), added with etcd's
//! `MemberAdd` first, then started with `--initial-cluster-state existing`; the command waits
//! until the leader has promoted it to a voter. A removed member (`MemberRemove`) exits by
//! itself; its name and peer URL are never used again. Added and removed members are recorded
//! in the marker file, so that a restart on the same directory starts the members of the
//! cluster as it was left.
//!
//! Each member's data lives in `DIR/nI` and its stdout and stderr go to `DIR/nI.log`
//! (appended to, so that restarts keep the history). The directory holds a marker file naming
//! the layout it was made with; a restart with another layout, or `--clean` on a directory the
//! marker does not claim, is refused rather than mixing clusters or deleting someone's files.
//! Without `--clean` members restart on the data they have; `--initial-cluster-state new` is
//! what raft-kv expects for both a fresh and an existing data directory (`existing` for the
//! members added while running).
//!
//! Members run in their own process groups (so a terminal's Ctrl-C reaches only this command,
//! which then stops them in order) under `setpriv --pdeathsig TERM`, so that they are stopped
//! even if this command dies without cleaning up.
//!
//! The process handling ([`build_raft_kv`], [`layout`], [`Cluster`]) is shared with
//! `cargo xtask bench kv`, which also runs etcd with it: etcd takes the same flags.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use raftline_kv::proto::etcdserverpb::cluster_client::ClusterClient;
use raftline_kv::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftline_kv::proto::etcdserverpb::{
    Member as ApiMember, MemberAddRequest, MemberListRequest, MemberRemoveRequest, StatusRequest,
    StatusResponse,
};
use rustix::process::{kill_process, Pid, Signal};
use tokio::signal::unix::{signal, SignalKind};
use tonic::transport::{Channel, Endpoint};

use crate::child_exit::ExitWatch;

/// Options of `cargo xtask cluster`.
#[derive(Args)]
pub struct ClusterArgs {
    /// Number of members (1 to 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=5))]
    nodes: u16,
    /// Where the members keep their data and logs [default: `cluster` in the target directory].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Wipe the data directory first (otherwise members restart on the data they have).
    #[arg(long)]
    clean: bool,
    /// Client port of member 1; member i uses base + 100 * (i - 1) for clients and the next
    /// port for peers, all below Linux's ephemeral port range (32768 and up).
    #[arg(long, default_value_t = 12379)]
    base_port: u16,
    /// Stop this many seconds after the cluster is ready and the changes below are done (for
    /// CI and tests) instead of waiting for Ctrl-C.
    #[arg(long)]
    run_for: Option<f64>,
    /// Once the cluster is ready, add this many members, one after another: each with
    /// `MemberAdd`, then a new raft-kv process with `--initial-cluster-state existing`, waited
    /// for until the leader has promoted it to a voter.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=20))]
    add: u16,
    /// Then remove this member (by name, such as `n2`; repeatable) with `MemberRemove`; its
    /// process exits by itself.
    #[arg(long, value_name = "NAME")]
    remove: Vec<String>,
    /// Then remove whichever member leads at that point.
    #[arg(long)]
    remove_leader: bool,
    /// Seconds to wait for every member to answer and agree on a leader.
    #[arg(long, default_value_t = 30.0)]
    start_timeout: f64,
    /// The members' --log-level (error, warn, info or debug).
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// Time a stopping member gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Lines of a member's log shown when it fails.
const LOG_TAIL_LINES: usize = 20;

/// The file in a cluster directory that says this command made it, and with which layout.
const MARKER: &str = ".xtask-cluster";

/// The start of every `--initial-cluster-token` of `cargo xtask cluster`: each directory gets
/// a token of its own (`xtask-cluster-` and 16 hex digits, kept in the marker file), so that
/// the member ids and cluster id of two clusters never agree (the readiness check tells them
/// apart); a marker without a token line stands for this one.
const TOKEN: &str = "xtask-cluster";

/// How long an added member may take to start, catch up and be promoted.
const ADD_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a removed member may take to notice its removal and exit (it does after a few
/// election timeouts); it is stopped after that.
const REMOVED_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines typed on stdin waiting for the running cluster to read them.
const STDIN_QUEUE_LINES: usize = 16;

/// How often a wait asks the members over gRPC whether the cluster has settled, or whether an
/// added member was promoted. Their raft state lives in other processes, and etcd's API has
/// no stream of leader or membership changes: asking again is the only way. Every such wait
/// is bounded by a timeout.
const RPC_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// What the commands read on stdin do.
const HELP: &str = "commands (one per line on stdin):
  add            add a member: MemberAdd, start it with --initial-cluster-state existing, wait
                 until the leader has promoted it
  remove NAME    remove member NAME (as n2) with MemberRemove; it exits by itself
  remove leader  remove whichever member leads
  list           the members, their ids, client URLs and roles
  help           this text
Ctrl-C stops the cluster.";

/// Runs `cargo xtask cluster`. Returns false if it could not start or a member died.
pub fn run(args: ClusterArgs) -> bool {
    match run_cluster(&args) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("cargo xtask cluster: {e}");
            false
        }
    }
}

fn run_cluster(args: &ClusterArgs) -> Result<(), String> {
    layout(args.nodes, args.base_port)?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| target_dir().join("cluster"));
    let roster = prepare_dir(&dir, args)?;
    let binary = build_raft_kv()?;
    let server = Server {
        binary,
        log_level: args.log_level.clone(),
        token: roster.token.clone(),
        extra_args: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    runtime.block_on(serve(args, &server, &dir, roster))
}

/// Starts the members, reports them, makes the scripted membership changes, and watches them
/// (and stdin for commands) until it is time to stop.
async fn serve(
    args: &ClusterArgs,
    server: &Server,
    dir: &Path,
    mut roster: Roster,
) -> Result<(), String> {
    // Installed before the members start, so that a Ctrl-C at any point stops them in order.
    let mut signals = Signals::install()?;
    let mut cluster = Cluster {
        members: Vec::new(),
        identity: Some(Identity::raft_kv(&roster.token)),
    };
    warn_without_setpriv();
    if let Err(e) = start_members(&mut cluster, args, server, dir, &roster, &mut signals).await {
        cluster.stop(STOP_GRACE);
        return Err(e);
    }
    // The scripted changes, in order; a failure or a signal stops the cluster.
    let scripted = run_script(&mut cluster, args, &mut roster, server, dir, &mut signals).await;
    if let Err(e) = scripted {
        eprintln!("\n{e}\nstopping the cluster");
        for line in cluster.stop(STOP_GRACE) {
            eprintln!("  {line}");
        }
        return Err(e);
    }
    match watch(&mut cluster, args, &mut roster, server, dir, &mut signals).await {
        Ok(why) => {
            println!("\n{why}: stopping the cluster");
            for line in cluster.stop(STOP_GRACE) {
                println!("  {line}");
            }
            Ok(())
        }
        Err(death) => {
            eprintln!("\n{death}\nstopping the other members");
            for line in cluster.stop(STOP_GRACE) {
                eprintln!("  {line}");
            }
            Err("a member died".to_string())
        }
    }
}

/// SIGINT and SIGTERM, caught while the cluster runs.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())
                .map_err(|e| format!("cannot handle SIGINT: {e}"))?,
            terminate: signal(SignalKind::terminate())
                .map_err(|e| format!("cannot handle SIGTERM: {e}"))?,
        })
    }

    /// The next signal: `"SIGINT"` or `"SIGTERM"`.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// What a signal did, for an error message: `interrupted (SIGINT)`.
fn caught(signal: &str) -> String {
    let did = if signal == "SIGINT" {
        "interrupted"
    } else {
        "terminated"
    };
    format!("{did} ({signal})")
}

/// Starts the roster's members, waits until they settle (or a signal), and reports them.
async fn start_members(
    cluster: &mut Cluster,
    args: &ClusterArgs,
    server: &Server,
    dir: &Path,
    roster: &Roster,
    signals: &mut Signals,
) -> Result<(), String> {
    let started = Instant::now();
    let members = roster.members()?;
    let initial_cluster = initial_cluster(members.iter().map(|(a, _)| a));
    for (a, joined) in &members {
        let state = if *joined { "existing" } else { "new" };
        cluster.spawn(server, dir, a, &initial_cluster, state)?;
    }
    let timeout = Duration::from_secs_f64(args.start_timeout);
    let settled = tokio::select! {
        s = cluster.wait_settled(timeout) => s?,
        signal = signals.next() => return Err(format!("{} while starting", caught(signal))),
    };
    print_cluster(cluster, &settled, dir, started.elapsed());
    Ok(())
}

/// Makes the membership changes of --add, --remove and --remove-leader, in order.
async fn run_script(
    cluster: &mut Cluster,
    args: &ClusterArgs,
    roster: &mut Roster,
    server: &Server,
    dir: &Path,
    signals: &mut Signals,
) -> Result<(), String> {
    let mut script: Vec<Change> = vec![Change::Add; usize::from(args.add)];
    script.extend(args.remove.iter().map(|n| Change::Remove(n.clone())));
    if args.remove_leader {
        script.push(Change::Remove("leader".into()));
    }
    for change in script {
        tokio::select! {
            r = apply_change(cluster, roster, server, dir, &change) => r?,
            signal = signals.next() => {
                return Err(format!("{} during a membership change", caught(signal)));
            }
        }
    }
    Ok(())
}

/// Runs the cluster, taking commands on stdin, until a signal or the end of --run-for (`Ok`,
/// saying which) or a member's death (`Err`, saying whose). A member's exit is an event (see
/// `child_exit`): nothing polls for it.
async fn watch(
    cluster: &mut Cluster,
    args: &ClusterArgs,
    roster: &mut Roster,
    server: &Server,
    dir: &Path,
    signals: &mut Signals,
) -> Result<&'static str, String> {
    let stop_at = args
        .run_for
        .map(|secs| Instant::now() + Duration::from_secs_f64(secs.max(0.0)));
    match stop_at {
        Some(_) => println!(
            "Stopping after --run-for {} s (or on Ctrl-C).",
            args.run_for.unwrap_or_default()
        ),
        None => println!("Press Ctrl-C to stop the cluster."),
    }
    println!("Membership changes: type `help` (commands: add, remove NAME, list).");
    let mut stdin = Some(spawn_stdin_reader());
    let until = async {
        match stop_at {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    loop {
        let line = async {
            match &mut stdin {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let line = tokio::select! {
            signal = signals.next() => return Ok(signal),
            _ = &mut until => return Ok("--run-for elapsed"),
            () = cluster.any_ended() => {
                cluster.check_alive()?;
                continue;
            }
            line = line => line,
        };
        let Some(line) = line else {
            // End of stdin (a script's, or /dev/null): no more commands.
            stdin = None;
            continue;
        };
        let command = match parse_command(&line) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                println!("{e}");
                continue;
            }
        };
        tokio::select! {
            // A refused or failed change leaves the cluster running; a dead member is noticed
            // next time round.
            r = run_command(cluster, roster, server, dir, command) => {
                if let Err(e) = r {
                    println!("failed: {e}");
                }
            }
            signal = signals.next() => return Ok(signal),
        }
    }
}

/// Creates (or, with `--clean`, wipes) the cluster directory, refusing directories this
/// command did not make and layouts other than the one the data was made with. Returns the
/// members as the marker records them.
fn prepare_dir(dir: &Path, args: &ClusterArgs) -> Result<Roster, String> {
    let marker = dir.join(MARKER);
    let wanted = format!(
        "nodes {}\nbase-port {}\nport-step {MEMBER_PORT_STEP}\n",
        args.nodes, args.base_port
    );
    let non_empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if non_empty && !marker.exists() {
        return Err(format!(
            "{} is not empty and was not made by cargo xtask cluster (no {MARKER} file): \
             refusing to use or wipe it; pick another --data-dir",
            dir.display()
        ));
    }
    if args.clean && non_empty {
        std::fs::remove_dir_all(dir).map_err(|e| format!("cannot wipe {}: {e}", dir.display()))?;
        println!("wiped {}", dir.display());
    } else if non_empty {
        let had = std::fs::read_to_string(&marker).unwrap_or_default();
        let Some(changes) = had.strip_prefix(&wanted) else {
            let layout: Vec<&str> = had.lines().take(3).collect();
            return Err(format!(
                "{} holds a cluster made with another layout ({}); rerun with the same \
                 --nodes and --base-port (a directory made before members sat \
                 {MEMBER_PORT_STEP} ports apart cannot be reused), or add --clean to start \
                 afresh",
                dir.display(),
                layout.join(", ")
            ));
        };
        let roster = Roster::parse(args.nodes, args.base_port, marker.clone(), changes)?;
        println!("restarting the members on their data in {}", dir.display());
        return Ok(roster);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let token = format!("token {}\n", new_token(dir));
    std::fs::write(&marker, format!("{wanted}{token}"))
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Roster::parse(args.nodes, args.base_port, marker, &token)
}

/// A cluster token of its own for a new cluster in `dir` (see [`TOKEN`]).
fn new_token(dir: &Path) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let unique = raftline_kv::config::stable_id(&[
        &dir.display().to_string(),
        &now.to_string(),
        &std::process::id().to_string(),
    ]);
    format!("{TOKEN}-{unique:016x}")
}

/// The members of a cluster directory: the initial ones and those added and removed while
/// running, as the marker file records them (`added nK`, `removed nK` lines after the layout),
/// and the cluster's token (a `token T` line).
struct Roster {
    nodes: u16,
    base_port: u16,
    /// The members' `--initial-cluster-token`.
    token: String,
    /// Indexes (`K` of `nK`) of members added while running.
    added: Vec<u32>,
    /// Indexes of members removed (never used again).
    removed: Vec<u32>,
    marker: PathBuf,
}

impl Roster {
    /// The roster of a directory made with `--nodes nodes --base-port base_port` whose
    /// marker file, `marker`, holds the lines `changes` after the layout.
    fn parse(nodes: u16, base_port: u16, marker: PathBuf, changes: &str) -> Result<Roster, String> {
        let mut roster = Roster {
            nodes,
            base_port,
            token: TOKEN.to_string(),
            added: Vec::new(),
            removed: Vec::new(),
            marker,
        };
        for line in changes.lines().filter(|l| !l.trim().is_empty()) {
            let read = line.split_once(' ').and_then(|(what, word)| {
                match (what, member_index(word)) {
                    ("added", Some(index)) => roster.added.push(index),
                    ("removed", Some(index)) => roster.removed.push(index),
                    ("token", _) if word.starts_with(TOKEN) => roster.token = word.to_string(),
                    _ => return None,
                }
                Some(())
            });
            if read.is_none() {
                return Err(format!(
                    "{}: cannot read the line {line:?} (expected `added nK`, `removed nK` or \
                     `token {TOKEN}-...`); add --clean to start afresh",
                    roster.marker.display()
                ));
            }
        }
        Ok(roster)
    }

    /// The members to run, in index order, with whether each joined while running.
    fn members(&self) -> Result<Vec<(MemberAddr, bool)>, String> {
        let initial = (1..=u32::from(self.nodes)).map(|i| (i, false));
        let added = self.added.iter().map(|&i| (i, true));
        initial
            .chain(added)
            .filter(|(i, _)| !self.removed.contains(i))
            .map(|(i, joined)| Ok((member_addr(i, self.base_port)?, joined)))
            .collect()
    }

    /// The index of the next member to add (names are never reused).
    fn next_index(&self) -> u32 {
        self.added
            .iter()
            .copied()
            .chain(std::iter::once(u32::from(self.nodes)))
            .max()
            .unwrap_or(0)
            + 1
    }

    /// Records a change in the marker file (appended, so that a crash keeps what was done).
    fn record(&mut self, added: bool, index: u32) -> Result<(), String> {
        let line = format!("{} n{index}\n", if added { "added" } else { "removed" });
        OpenOptions::new()
            .append(true)
            .open(&self.marker)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| format!("cannot write {}: {e}", self.marker.display()))?;
        if added {
            self.added.push(index);
        } else {
            self.removed.push(index);
        }
        Ok(())
    }
}

/// `K` of a member name `nK`.
fn member_index(name: &str) -> Option<u32> {
    name.strip_prefix('n')?.parse().ok().filter(|&i| i > 0)
}

/// Prints members, leader, log files and the `etcdctl` commands to paste.
fn print_cluster(cluster: &Cluster, settled: &Settled, dir: &Path, took: Duration) {
    println!(
        "\nraft-kv cluster of {} members ready in {:.1} s (data in {}):\n",
        cluster.members.len(),
        took.as_secs_f64(),
        dir.display()
    );
    println!("| member | id               | client URL             | role     | log");
    println!("|--------|------------------|------------------------|----------|----");
    for (i, m) in cluster.members.iter().enumerate() {
        let role = if i == settled.leader {
            "leader"
        } else {
            "follower"
        };
        println!(
            "| {:<6} | {:016x} | {:<22} | {role:<8} | {}",
            m.addr.name,
            settled.ids[i],
            m.addr.client_url(),
            m.log.display()
        );
    }
    println!(
        "\nleader: {} (term {})\n",
        cluster.members[settled.leader].addr.name, settled.term
    );
    let endpoints = cluster
        .members
        .iter()
        .map(|m| m.addr.endpoint())
        .collect::<Vec<_>>()
        .join(",");
    println!("Try:");
    for cmd in ["put hello world", "get hello", "endpoint status -w table"] {
        println!("  ETCDCTL_API=3 etcdctl --endpoints={endpoints} {cmd}");
    }
    println!();
}

/// A membership change, from a flag or a command on stdin.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    /// Add the next member.
    Add,
    /// Remove the member of this name, or the leader for `leader`.
    Remove(String),
}

/// A command read on stdin.
#[derive(Debug, PartialEq, Eq)]
enum Cmd {
    /// A membership change.
    Change(Change),
    /// Print the members.
    List,
    /// Print the commands.
    Help,
}

/// Parses one line of stdin (`None` for an empty line).
fn parse_command(line: &str) -> Result<Option<Cmd>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    Ok(Some(match words[..] {
        [] => return Ok(None),
        ["add"] => Cmd::Change(Change::Add),
        ["remove", name] => Cmd::Change(Change::Remove(name.to_string())),
        ["list"] => Cmd::List,
        ["help"] => Cmd::Help,
        _ => return Err(format!("unknown command {:?}; {HELP}", line.trim())),
    }))
}

/// Runs a command read on stdin.
async fn run_command(
    cluster: &mut Cluster,
    roster: &mut Roster,
    server: &Server,
    dir: &Path,
    command: Cmd,
) -> Result<(), String> {
    match command {
        Cmd::Change(change) => apply_change(cluster, roster, server, dir, &change).await,
        Cmd::List => print_members(cluster).await,
        Cmd::Help => {
            println!("{HELP}");
            Ok(())
        }
    }
}

/// Reads stdin on a thread of its own (a blocking read cannot be cancelled, and must not
/// hold up the runtime's shutdown) into a queue of [`STDIN_QUEUE_LINES`]. The queue ends at
/// the end of stdin.
fn spawn_stdin_reader() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(STDIN_QUEUE_LINES);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Makes one membership change and reports it.
async fn apply_change(
    cluster: &mut Cluster,
    roster: &mut Roster,
    server: &Server,
    dir: &Path,
    change: &Change,
) -> Result<(), String> {
    match change {
        Change::Add => add_member(cluster, roster, server, dir).await,
        Change::Remove(name) => remove_member(cluster, roster, name).await,
    }
}

/// A Cluster API client to member `m`, with short timeouts.
async fn cluster_client(addr: &MemberAddr) -> Result<ClusterClient<Channel>, String> {
    let channel = Endpoint::from_shared(addr.client_url())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", addr.name))?;
    Ok(ClusterClient::new(channel))
}

/// Sends a Cluster request to the members in turn until one answers (a follower passes it
/// to the leader), member `last` (if any) last; a refusal (not Unavailable) is final.
async fn on_some_member<T, F, Fut>(
    cluster: &Cluster,
    last: Option<usize>,
    mut call: F,
) -> Result<T, String>
where
    F: FnMut(ClusterClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut why = String::from("no member runs");
    let order = (0..cluster.members.len())
        .filter(|&i| Some(i) != last)
        .chain(last);
    for m in order.map(|i| &cluster.members[i]) {
        let client = match cluster_client(&m.addr).await {
            Ok(c) => c,
            Err(e) => {
                why = e;
                continue;
            }
        };
        match call(client).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                why = format!("{}: {}", m.addr.name, s.message());
            }
            Err(s) => return Err(s.message().to_string()),
        }
    }
    Err(why)
}

/// Adds the next member: `MemberAdd`, then its process with `--initial-cluster-state
/// existing`; waits until the leader has promoted it.
async fn add_member(
    cluster: &mut Cluster,
    roster: &mut Roster,
    server: &Server,
    dir: &Path,
) -> Result<(), String> {
    let started = Instant::now();
    let index = roster.next_index();
    let addr = member_addr(index, roster.base_port)?;
    println!("adding {} (peer URL {})", addr.name, addr.peer_url());
    let request = MemberAddRequest {
        peer_ur_ls: vec![addr.peer_url()],
        is_learner: false,
    };
    let added = on_some_member(cluster, None, |mut c| {
        let request = request.clone();
        async move { c.member_add(request).await }
    })
    .await
    .map_err(|e| format!("MemberAdd of {}: {e}", addr.name))?;
    let id = added.member.map_or(0, |m| m.id);
    roster.record(true, index)?;
    let mut all: Vec<MemberAddr> = cluster.members.iter().map(|m| m.addr.clone()).collect();
    all.push(addr.clone());
    cluster.spawn(server, dir, &addr, &initial_cluster(all.iter()), "existing")?;
    println!(
        "  {} ({id:016x}) is a learner; started it with --initial-cluster-state existing",
        addr.name
    );
    let deadline = Instant::now() + ADD_TIMEOUT;
    loop {
        cluster.check_alive()?;
        let members = list_members(cluster).await;
        if let Ok(members) = &members {
            if members
                .iter()
                .any(|m| m.id == id && !m.is_learner && !m.name.is_empty())
            {
                break;
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not become a voter within {:.0} s (it stays a learner; the leader \
                 keeps trying); last lines of {}:\n{}",
                addr.name,
                ADD_TIMEOUT.as_secs_f64(),
                dir.join(format!("{}.log", addr.name)).display(),
                log_tail(&dir.join(format!("{}.log", addr.name)))
            ));
        }
        tokio::time::sleep(RPC_POLL_INTERVAL).await;
    }
    println!(
        "  {} caught up and was promoted to a voter ({:.1} s); {} members",
        addr.name,
        started.elapsed().as_secs_f64(),
        cluster.members.len()
    );
    Ok(())
}

/// Removes member `name` (`leader`: whichever leads) with `MemberRemove`; waits for its
/// process to exit.
async fn remove_member(
    cluster: &mut Cluster,
    roster: &mut Roster,
    name: &str,
) -> Result<(), String> {
    let pos = if name == "leader" {
        let answers = cluster.statuses().await;
        settle(&answers)
            .ok_or("no leader that every member names: try again in a moment")?
            .leader
    } else {
        cluster
            .members
            .iter()
            .position(|m| m.addr.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = cluster
                    .members
                    .iter()
                    .map(|m| m.addr.name.as_str())
                    .collect();
                format!(
                    "no running member is named {name:?} (members: {})",
                    names.join(", ")
                )
            })?
    };
    let addr = cluster.members[pos].addr.clone();
    let id = match status(&addr).await {
        Ok(s) => s.header.map_or(0, |h| h.member_id),
        Err(_) => raftline_kv::config::member_id(&addr.peer_url(), &roster.token).0,
    };
    println!("removing {} ({id:016x})", addr.name);
    // Through another member first: the removed one stops answering once it knows.
    on_some_member(cluster, Some(pos), |mut c| async move {
        c.member_remove(MemberRemoveRequest { id }).await
    })
    .await
    .map_err(|e| format!("MemberRemove of {}: {e}", addr.name))?;
    if let Some(index) = member_index(&addr.name) {
        roster.record(false, index)?;
    }
    let how = cluster.retire(pos, REMOVED_EXIT_TIMEOUT).await;
    println!("  {} removed; its process {how}", addr.name);
    let settled = cluster
        .wait_settled(Duration::from_secs(30))
        .await
        .map_err(|e| format!("after removing {}: {e}", addr.name))?;
    println!(
        "  {} members; leader {}",
        cluster.members.len(),
        cluster.members[settled.leader].addr.name
    );
    Ok(())
}

/// The members of the configuration, as the first member that answers lists them.
async fn list_members(cluster: &Cluster) -> Result<Vec<ApiMember>, String> {
    on_some_member(cluster, None, |mut c| async move {
        c.member_list(MemberListRequest { linearizable: true })
            .await
    })
    .await
    .map(|r| r.members)
}

/// Prints the members (`list`).
async fn print_members(cluster: &Cluster) -> Result<(), String> {
    let mut members = list_members(cluster).await?;
    // By name (n1, n2, ..., n10), unstarted members last.
    members.sort_by_key(|m| member_index(&m.name).unwrap_or(u32::MAX));
    let answers = cluster.statuses().await;
    let leader = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|s| s.leader)
        .find(|&l| l != 0);
    println!("| member | id               | client URL             | role     | log");
    println!("|--------|------------------|------------------------|----------|----");
    for m in &members {
        let role = if m.is_learner {
            "learner"
        } else if Some(m.id) == leader {
            "leader"
        } else {
            "follower"
        };
        let name = if m.name.is_empty() {
            "(unstarted)"
        } else {
            &m.name
        };
        let log = cluster
            .members
            .iter()
            .find(|x| x.addr.name == m.name)
            .map_or_else(String::new, |x| x.log.display().to_string());
        println!(
            "| {name:<6} | {:016x} | {:<22} | {role:<8} | {log}",
            m.id,
            m.client_ur_ls.first().map_or("", String::as_str)
        );
    }
    Ok(())
}

/// Where one member listens.
#[derive(Clone, Debug)]
pub struct MemberAddr {
    /// `n1`, `n2`, ...
    pub name: String,
    /// Client port on 127.0.0.1.
    pub client_port: u16,
    /// Peer port on 127.0.0.1.
    pub peer_port: u16,
}

impl MemberAddr {
    /// `127.0.0.1:PORT` of the client port, as `etcdctl --endpoints` takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:PORT` of the client port.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:PORT` of the peer port.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// The ports between one member's and the next's (client and peer port each).
pub const MEMBER_PORT_STEP: u32 = 100;

/// The first port of Linux's default ephemeral range (`net.ipv4.ip_local_port_range`,
/// 32768-60999): outgoing connections take their local ports there, so a member listening
/// there may find its port taken when it (re)starts. Every member port stays below it.
pub const EPHEMERAL_PORT_LOW: u32 = 32_768;

/// The addresses of `nodes` members: member `i` (from 1) as [`member_addr`] places it.
pub fn layout(nodes: u16, base_port: u16) -> Result<Vec<MemberAddr>, String> {
    (1..=u32::from(nodes))
        .map(|i| member_addr(i, base_port))
        .collect()
}

/// Where member `nI` listens: clients on `base + 100 * (i - 1)`, peers on the port above;
/// refused if that reaches Linux's ephemeral port range ([`EPHEMERAL_PORT_LOW`]).
pub fn member_addr(index: u32, base_port: u16) -> Result<MemberAddr, String> {
    let client = u32::from(base_port) + MEMBER_PORT_STEP * index.saturating_sub(1);
    let peer = client + 1;
    if base_port == 0 || peer >= EPHEMERAL_PORT_LOW {
        return Err(format!(
            "--base-port {base_port} does not leave room for member n{index} (member i uses \
             base + {MEMBER_PORT_STEP} * (i - 1) and the port above, which must stay below \
             {EPHEMERAL_PORT_LOW}, where Linux's ephemeral port range begins)"
        ));
    }
    Ok(MemberAddr {
        name: format!("n{index}"),
        client_port: client as u16,
        peer_port: peer as u16,
    })
}

/// Who should answer on a member's client port: raft-kv's member of that peer URL in the
/// cluster of this token.
#[derive(Clone, Debug)]
pub struct Identity {
    token: String,
}

/// A server answering on a member's client port that is not that member.
#[derive(Debug, PartialEq, Eq)]
pub struct ForeignMember {
    /// The member expected there.
    pub name: String,
    /// Its client endpoint.
    pub endpoint: String,
    /// The member id and cluster id expected.
    pub expected: (u64, u64),
    /// The member id and cluster id that answered.
    pub answered: (u64, u64),
}

impl std::fmt::Display for ForeignMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is answered by member {:016x} of cluster {:016x}, not by {} (member {:016x} \
             of cluster {:016x}): another cluster or program holds the port; stop it, or \
             pick another --base-port",
            self.endpoint,
            self.answered.0,
            self.answered.1,
            self.name,
            self.expected.0,
            self.expected.1
        )
    }
}

impl std::error::Error for ForeignMember {}

impl Identity {
    /// raft-kv's members of the cluster of `token` (`--initial-cluster-token`).
    pub fn raft_kv(token: &str) -> Identity {
        Identity {
            token: token.to_string(),
        }
    }

    /// The member id and cluster id the member at `addr` has.
    fn expected(&self, addr: &MemberAddr) -> (u64, u64) {
        let member = raftline_kv::config::member_id(&addr.peer_url(), &self.token).0;
        (member, raftline_kv::config::cluster_id(&self.token))
    }

    /// Checks every answer (in member order) against the member it should come from.
    pub fn check(
        &self,
        addrs: &[&MemberAddr],
        answers: &[Result<StatusResponse, String>],
    ) -> Result<(), ForeignMember> {
        for (addr, answer) in addrs.iter().zip(answers) {
            let Some(header) = answer.as_ref().ok().and_then(|s| s.header.as_ref()) else {
                continue;
            };
            let expected = self.expected(addr);
            let answered = (header.member_id, header.cluster_id);
            if answered != expected {
                return Err(ForeignMember {
                    name: addr.name.clone(),
                    endpoint: addr.endpoint(),
                    expected,
                    answered,
                });
            }
        }
        Ok(())
    }
}

/// `--initial-cluster` for these members.
fn initial_cluster<'a>(addrs: impl Iterator<Item = &'a MemberAddr>) -> String {
    addrs
        .map(|a| format!("{}={}", a.name, a.peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs each member under `setpriv --pdeathsig TERM` when it exists.
const SETPRIV: &str = "/usr/bin/setpriv";

/// Warns that members would outlive this command without setpriv.
fn warn_without_setpriv() {
    if !Path::new(SETPRIV).exists() {
        eprintln!(
            "warning: {SETPRIV} (util-linux) not found: members will outlive this command if \
             it is killed without cleaning up"
        );
    }
}

/// The target directory this binary was built in (`target/release/xtask` -> `target`), or
/// `target` beside the workspace when that cannot be told.
pub fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Builds `raft-kv` in release with the cargo that runs this command and returns its path.
pub fn build_raft_kv() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    eprintln!("building raft-kv (cargo build --release -p raftline-kv)");
    let status = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "raftline-kv",
            "--bin",
            "raft-kv",
        ])
        .current_dir(workspace)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !status.success() {
        return Err(format!(
            "cargo build --release -p raftline-kv failed ({status})"
        ));
    }
    let binary = target_dir().join("release").join("raft-kv");
    if !binary.is_file() {
        return Err(format!("the build did not produce {}", binary.display()));
    }
    Ok(binary)
}

/// How to start a member: raft-kv or etcd, which take the same flags.
pub struct Server {
    /// The executable.
    pub binary: PathBuf,
    /// Its `--log-level`.
    pub log_level: String,
    /// Its `--initial-cluster-token`.
    pub token: String,
    /// More flags for every member (e.g. raft-kv's `--read-mode lease`).
    pub extra_args: Vec<String>,
}

/// One running (or exited) member.
pub struct Member {
    /// Its name and ports.
    pub addr: MemberAddr,
    /// The file its stdout and stderr go to.
    pub log: PathBuf,
    child: Child,
    /// Its end, as an event.
    exit: ExitWatch,
    /// Set once the child has been reaped (its pid may then belong to another process).
    exited: Option<ExitStatus>,
}

impl Member {
    /// CPU time (user + system) the member has used so far, in seconds, while it runs.
    pub fn cpu_secs(&self) -> Option<f64> {
        if self.exited.is_some() {
            return None;
        }
        proc_cpu_secs(&format!("/proc/{}/stat", self.child.id()))
    }
}

/// User + system CPU seconds from a `/proc/PID/stat` file (clock ticks of 1/100 s).
pub fn proc_cpu_secs(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// A cluster of member processes, stopped when dropped.
pub struct Cluster {
    /// The members, in `--initial-cluster` order.
    pub members: Vec<Member>,
    /// Who should answer on the members' ports, if known (raft-kv's members); checked while
    /// waiting for the cluster to settle.
    identity: Option<Identity>,
}

/// What a settled cluster looks like.
pub struct Settled {
    /// Each member's id, as its `Maintenance.Status` header says.
    pub ids: Vec<u64>,
    /// The position in [`Cluster::members`] of the member every member names as leader.
    pub leader: usize,
    /// The leader's term.
    pub term: u64,
}

impl Cluster {
    /// Starts one process per address, data in `dir/NAME`, output appended to `dir/NAME.log`.
    pub fn start(server: &Server, dir: &Path, addrs: &[MemberAddr]) -> Result<Cluster, String> {
        let initial_cluster = initial_cluster(addrs.iter());
        warn_without_setpriv();
        let mut cluster = Cluster {
            members: Vec::new(),
            identity: None,
        };
        for a in addrs {
            cluster.spawn(server, dir, a, &initial_cluster, "new")?;
        }
        Ok(cluster)
    }

    /// Starts one member process with `--initial-cluster-state state` (`new` or `existing`),
    /// data in `dir/NAME`, output appended to `dir/NAME.log`, and adds it to the members.
    pub fn spawn(
        &mut self,
        server: &Server,
        dir: &Path,
        a: &MemberAddr,
        initial_cluster: &str,
        state: &str,
    ) -> Result<(), String> {
        let setpriv = Path::new(SETPRIV);
        {
            let log = dir.join(format!("{}.log", a.name));
            let mut out = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
            let mut command = if setpriv.exists() {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "TERM", "--"]).arg(&server.binary);
                c
            } else {
                Command::new(&server.binary)
            };
            command
                .arg("--name")
                .arg(&a.name)
                .arg("--data-dir")
                .arg(dir.join(&a.name))
                .args(["--listen-peer-urls", &a.peer_url()])
                .args(["--initial-advertise-peer-urls", &a.peer_url()])
                .args(["--listen-client-urls", &a.client_url()])
                .args(["--advertise-client-urls", &a.client_url()])
                .args(["--initial-cluster", initial_cluster])
                .args(["--initial-cluster-state", state])
                .args(["--initial-cluster-token", &server.token])
                .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
                .args(["--log-level", &server.log_level])
                .args(&server.extra_args);
            let _ = writeln!(
                out,
                "==== cargo xtask: starting {} ({}) at unix time {} ====",
                a.name,
                server.binary.display(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            );
            let err: File = out
                .try_clone()
                .map_err(|e| format!("cannot share {}: {e}", log.display()))?;
            let child = spawn_logged(&mut command, out, err, &server.binary)?;
            self.members.push(Member {
                addr: a.clone(),
                log,
                exit: ExitWatch::new(&child)
                    .map_err(|e| format!("cannot watch {} for its exit: {e}", a.name))?,
                child,
                exited: None,
            });
        }
        Ok(())
    }

    /// SIGKILLs member `pos` (if it runs) and reaps it; it stays in [`Cluster::members`],
    /// exited, until [`Cluster::restart`].
    pub fn kill(&mut self, pos: usize) -> Result<(), String> {
        let m = &mut self.members[pos];
        if m.exited.is_none() {
            // `Child::kill` sends SIGKILL.
            m.child
                .kill()
                .map_err(|e| format!("cannot kill {}: {e}", m.addr.name))?;
            m.exited = Some(
                m.child
                    .wait()
                    .map_err(|e| format!("cannot reap {}: {e}", m.addr.name))?,
            );
        }
        Ok(())
    }

    /// Starts member `pos` again, on its data directory in `dir`, after it has exited (as
    /// [`Cluster::kill`] leaves it), keeping its place in [`Cluster::members`].
    pub fn restart(&mut self, pos: usize, server: &Server, dir: &Path) -> Result<(), String> {
        let addr = self.members[pos].addr.clone();
        if self.members[pos].exited.is_none() {
            return Err(format!("{} still runs: cannot restart it", addr.name));
        }
        let all = initial_cluster(self.members.iter().map(|m| &m.addr));
        // On an existing data directory, `--initial-cluster-state` is not read (raft-kv and
        // etcd both restart from what the directory holds).
        self.spawn(server, dir, &addr, &all, "new")?;
        if let Some(m) = self.members.pop() {
            self.members[pos] = m;
        }
        Ok(())
    }

    /// Takes member `pos` out of the cluster once its process has exited by itself (a
    /// removed member does), stopping it after `grace` if it has not. Says how it ended.
    pub async fn retire(&mut self, pos: usize, grace: Duration) -> String {
        let m = &mut self.members[pos];
        let _ = tokio::time::timeout(grace, m.exit.ended()).await;
        if m.exited.is_none() {
            m.exited = m.child.try_wait().unwrap_or(None);
        }
        let how = match m.exited {
            Some(status) => format!("exited by itself ({status})"),
            None => {
                let stopped = Cluster {
                    members: vec![self.members.remove(pos)],
                    identity: None,
                }
                .stop(STOP_GRACE);
                return format!(
                    "still running {:.0} s after its removal: {}",
                    grace.as_secs_f64(),
                    stopped.join("; ")
                );
            }
        };
        self.members.remove(pos);
        how
    }

    /// Fails, naming the member, its exit status and its log tail, if a member has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for m in &mut self.members {
            if m.exited.is_none() {
                m.exited = m.child.try_wait().unwrap_or(None);
                if let Some(status) = m.exited {
                    return Err(format!(
                        "member {} (pid {}) exited unexpectedly: {status}; last lines of {}:\n{}",
                        m.addr.name,
                        m.child.id(),
                        m.log.display(),
                        log_tail(&m.log)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Waits until every member answers `Maintenance.Status` and all name the same leader,
    /// failing early if a member exits or (when the cluster knows who should answer) another
    /// server answers on a member's port, and after `timeout` with what each member last said.
    pub async fn wait_settled(&mut self, timeout: Duration) -> Result<Settled, String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let answers = self.statuses().await;
            if let Some(identity) = &self.identity {
                let addrs: Vec<&MemberAddr> = self.members.iter().map(|m| &m.addr).collect();
                identity
                    .check(&addrs, &answers)
                    .map_err(|e| e.to_string())?;
            }
            let settled = settle(&answers);
            if let Some(s) = settled {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                let mut why = format!(
                    "the cluster did not settle within {:.0} s (every member answering \
                     Maintenance.Status and naming one leader):",
                    timeout.as_secs_f64()
                );
                for (m, a) in self.members.iter().zip(&answers) {
                    let said = match a {
                        Ok(s) => format!("answers, leader {:x}", s.leader),
                        Err(e) => format!("does not answer: {e}"),
                    };
                    why.push_str(&format!(
                        "\n- {} ({}) {said}; last lines of {}:\n{}",
                        m.addr.name,
                        m.addr.endpoint(),
                        m.log.display(),
                        log_tail(&m.log)
                    ));
                }
                return Err(why);
            }
            tokio::time::sleep(RPC_POLL_INTERVAL).await;
        }
    }

    /// Resolves once a member that has not been reaped yet has ended (never, without one).
    pub async fn any_ended(&self) {
        let running: Vec<_> = self
            .members
            .iter()
            .filter(|m| m.exited.is_none())
            .map(|m| Box::pin(m.exit.ended()))
            .collect();
        if running.is_empty() {
            std::future::pending::<()>().await;
        }
        futures::future::select_all(running).await;
    }

    /// Every member's `Maintenance.Status`, or why it did not answer.
    pub async fn statuses(&self) -> Vec<Result<StatusResponse, String>> {
        let mut answers = Vec::new();
        for m in &self.members {
            answers.push(status(&m.addr).await);
        }
        answers
    }

    /// Stops every member still running: SIGTERM, then SIGKILL after `grace`. Returns one
    /// line per member saying how it ended.
    pub fn stop(&mut self, grace: Duration) -> Vec<String> {
        #[derive(Clone, Copy)]
        enum How {
            AlreadyExited,
            Terminated,
            Killed,
        }
        let mut how = Vec::with_capacity(self.members.len());
        for m in &mut self.members {
            if m.exited.is_none() {
                m.exited = m.child.try_wait().unwrap_or(None);
            }
            if m.exited.is_none() {
                let _ = kill_process(Pid::from_child(&m.child), Signal::TERM);
                how.push(How::Terminated);
            } else {
                how.push(How::AlreadyExited);
            }
        }
        // Every member got its SIGTERM at once: waiting for each in turn up to one deadline
        // gives each the same grace.
        let deadline = Instant::now() + grace;
        for (m, h) in self.members.iter_mut().zip(&mut how) {
            if m.exited.is_none() && m.exit.wait_until(deadline) {
                m.exited = m.child.try_wait().unwrap_or(None);
            }
            if m.exited.is_none() {
                let _ = m.child.kill();
                m.exited = m.child.wait().ok();
                *h = How::Killed;
            }
        }
        self.members
            .iter()
            .zip(how)
            .map(|(m, h)| {
                let status = m
                    .exited
                    .map_or_else(|| "unknown exit".to_string(), |s| s.to_string());
                let name = &m.addr.name;
                match h {
                    How::AlreadyExited => format!("{name}: had already exited ({status})"),
                    How::Terminated => format!("{name}: stopped by SIGTERM ({status})"),
                    How::Killed => format!(
                        "{name}: still running {:.0} s after SIGTERM, killed ({status})",
                        grace.as_secs_f64()
                    ),
                }
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// The settled state the answers describe, if every member answered and all name the same
/// leader, which is one of them.
fn settle(answers: &[Result<StatusResponse, String>]) -> Option<Settled> {
    let mut ids = Vec::new();
    let mut leader = None;
    let mut term = 0;
    for a in answers {
        let s = a.as_ref().ok()?;
        let id = s.header.as_ref().map_or(0, |h| h.member_id);
        if s.leader == 0 || leader.is_some_and(|l| l != s.leader) {
            return None;
        }
        leader = Some(s.leader);
        if id == s.leader {
            term = s.raft_term;
        }
        ids.push(id);
    }
    let leader = ids.iter().position(|&id| Some(id) == leader)?;
    Some(Settled { ids, leader, term })
}

/// One member's `Maintenance.Status`, with a connection of its own and short timeouts.
pub async fn status(addr: &MemberAddr) -> Result<StatusResponse, String> {
    let channel = Endpoint::from_shared(addr.client_url())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    MaintenanceClient::new(channel)
        .status(StatusRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("{}: {}", e.code(), e.message()))
}

/// The last lines of a log file, indented, or why it cannot be read.
pub fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..]
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("    (cannot read it: {e})"),
    }
}

/// Starts a member process in its own process group, with no stdin and its output in `out`
/// and `err` (the files of its log).
pub fn spawn_logged(
    command: &mut Command,
    out: File,
    err: File,
    binary: &Path,
) -> Result<Child, String> {
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_sit_100_ports_apart_below_the_ephemeral_range() {
        let ports = |i, base| {
            let a = member_addr(i, base).unwrap();
            (a.name, a.client_port, a.peer_port)
        };
        assert_eq!(ports(1, 12379), ("n1".to_string(), 12379, 12380));
        assert_eq!(ports(2, 12379), ("n2".to_string(), 12479, 12480));
        assert_eq!(ports(5, 12379), ("n5".to_string(), 12779, 12780));
        assert_eq!(ports(12, 12379), ("n12".to_string(), 13479, 13480));
        // Every member of up to 7 with the default base port, and the 20 that `--add` can
        // add besides, stays below Linux's ephemeral range; none shares a port.
        let all = layout(27, 12379).unwrap();
        let mut taken: Vec<u16> = all
            .iter()
            .flat_map(|a| [a.client_port, a.peer_port])
            .collect();
        assert!(
            taken.iter().all(|&p| u32::from(p) < EPHEMERAL_PORT_LOW),
            "{taken:?}"
        );
        taken.sort_unstable();
        taken.dedup();
        assert_eq!(taken.len(), 2 * all.len());
        // CI's second cluster (base 14379) does not meet the first.
        let ci = layout(7, 14379).unwrap();
        assert!(ci.iter().all(|a| a.client_port > all[19].peer_port));
        // A layout reaching the ephemeral range is refused.
        assert_eq!(ports(8, 32000), ("n8".to_string(), 32700, 32701));
        let refused = member_addr(9, 32000).unwrap_err();
        assert!(
            refused.contains("n9") && refused.contains("32768"),
            "{refused}"
        );
        assert!(layout(3, 32679).is_err());
        assert!(member_addr(1, 0).is_err());
    }

    /// A `Maintenance.Status` answer from member `member` of cluster `cluster`.
    fn answer(member: u64, cluster: u64) -> Result<StatusResponse, String> {
        Ok(StatusResponse {
            header: Some(raftline_kv::proto::etcdserverpb::ResponseHeader {
                cluster_id: cluster,
                member_id: member,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn only_the_expected_members_count_as_ready() {
        let identity = Identity::raft_kv(TOKEN);
        let addrs = layout(3, 12379).unwrap();
        let addrs: Vec<&MemberAddr> = addrs.iter().collect();
        let cluster = raftline_kv::config::cluster_id(TOKEN);
        let id = |a: &MemberAddr| raftline_kv::config::member_id(&a.peer_url(), TOKEN).0;
        let ours: Vec<_> = addrs.iter().map(|a| answer(id(a), cluster)).collect();
        assert_eq!(identity.check(&addrs, &ours), Ok(()));
        // A member not answering yet is not a foreign one.
        let mut waiting = ours.clone();
        waiting[1] = Err("cannot connect".into());
        assert_eq!(identity.check(&addrs, &waiting), Ok(()));
        // Another cluster's member (another token) on n2's port.
        let other = Identity::raft_kv("another-cluster");
        let mut foreign = ours.clone();
        let (member, cluster_of_other) = other.expected(addrs[1]);
        foreign[1] = answer(member, cluster_of_other);
        let err = identity.check(&addrs, &foreign).unwrap_err();
        assert_eq!(err.name, "n2");
        assert_eq!(err.answered, (member, cluster_of_other));
        assert_eq!(err.expected, (id(addrs[1]), cluster));
        let text = err.to_string();
        assert!(
            text.contains("127.0.0.1:12479") && text.contains("another cluster"),
            "{text}"
        );
        // Our cluster, but the members' ports swapped.
        let swapped = vec![ours[1].clone(), ours[0].clone(), ours[2].clone()];
        assert_eq!(identity.check(&addrs, &swapped).unwrap_err().name, "n1");
    }

    #[test]
    fn the_marker_records_added_and_removed_members() {
        let roster = Roster::parse(
            3,
            12379,
            PathBuf::from("m"),
            "token xtask-cluster-00000000000000ab\nadded n4\nremoved n1\nadded n5\nremoved n4\n",
        )
        .unwrap();
        assert_eq!(roster.token, "xtask-cluster-00000000000000ab");
        let members: Vec<(String, bool)> = roster
            .members()
            .unwrap()
            .into_iter()
            .map(|(a, joined)| (a.name, joined))
            .collect();
        assert_eq!(
            members,
            [("n2", false), ("n3", false), ("n5", true)].map(|(n, j)| (n.to_string(), j))
        );
        assert_eq!(roster.next_index(), 6);
        let bad = Roster::parse(3, 12379, PathBuf::from("m"), "added four\n");
        assert!(bad.err().unwrap().contains("added four"));
        let bad = Roster::parse(3, 12379, PathBuf::from("m"), "token other\n");
        assert!(bad.err().unwrap().contains("token other"));
        // Each new cluster gets a token of its own.
        let (a, b) = (new_token(Path::new("d")), new_token(Path::new("d")));
        assert!(a.starts_with("xtask-cluster-") && a != b, "{a} {b}");
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command("  ").unwrap(), None);
        assert_eq!(
            parse_command("add").unwrap(),
            Some(Cmd::Change(Change::Add))
        );
        assert_eq!(
            parse_command("remove n2").unwrap(),
            Some(Cmd::Change(Change::Remove("n2".into())))
        );
        assert_eq!(parse_command("list").unwrap(), Some(Cmd::List));
        assert!(parse_command("remove")
            .unwrap_err()
            .contains("unknown command"));
    }
}
