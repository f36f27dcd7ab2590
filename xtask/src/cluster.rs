//! `cargo xtask cluster`: a local raft-kv cluster on loopback, to talk to with `etcdctl`.
//!
//! The command builds `raft-kv` in release, starts 3 (or `--nodes`, up to 5) members under a
//! data directory (`target/cluster` by default), waits until every member answers
//! `Maintenance.Status` and all of them name the same leader, prints who is who and an
//! `etcdctl` command to paste, and then watches the members until Ctrl-C, SIGTERM, `--run-for`
//! seconds, or the unexpected death of a member (whose log tail it prints). Stopping sends
//! SIGTERM to every member and SIGKILL to those still running after a grace period.
//!
//! Ports: member `i` (from 1) serves clients on `base + 10000 * (i - 1)` and peers one port
//! above, so the default `--base-port 12379` gives 12379/12380, 22379/22380, ... 52379/52380.
//!
//! Each member's data lives in `DIR/nI` and its stdout and stderr go to `DIR/nI.log`
//! (appended to, so that restarts keep the history). The directory holds a marker file naming
//! the layout it was made with; a restart with another layout, or `--clean` on a directory the
//! marker does not claim, is refused rather than mixing clusters or deleting someone's files.
//! Without `--clean` members restart on the data they have; `--initial-cluster-state new` is
//! what raft-kv expects for both a fresh and an existing data directory.
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
use raft_kv::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raft_kv::proto::etcdserverpb::{StatusRequest, StatusResponse};
use rustix::process::{kill_process, Pid, Signal};
use tokio::signal::unix::{signal, SignalKind};
use tonic::transport::Endpoint;

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
    /// Client port of member 1; member i uses base + 10000 * (i - 1) for clients and the next
    /// port for peers.
    #[arg(long, default_value_t = 12379)]
    base_port: u16,
    /// Stop after this many seconds (for CI and tests) instead of waiting for Ctrl-C.
    #[arg(long)]
    run_for: Option<f64>,
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

/// The `--initial-cluster-token` of `cargo xtask cluster`.
const TOKEN: &str = "xtask-cluster";

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
    let addrs = layout(args.nodes, args.base_port)?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| target_dir().join("cluster"));
    prepare_dir(&dir, args)?;
    let binary = build_raft_kv()?;
    let server = Server {
        binary,
        log_level: args.log_level.clone(),
        token: TOKEN.to_string(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    runtime.block_on(serve(args, &server, &dir, &addrs))
}

/// Starts the members, reports them, and watches them until it is time to stop.
async fn serve(
    args: &ClusterArgs,
    server: &Server,
    dir: &Path,
    addrs: &[MemberAddr],
) -> Result<(), String> {
    // Installed before the members start, so that a Ctrl-C at any point stops them in order.
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let started = Instant::now();
    let stop_at = args
        .run_for
        .map(|secs| started + Duration::from_secs_f64(secs.max(0.0)));

    let mut cluster = Cluster::start(server, dir, addrs)?;
    let settled = tokio::select! {
        s = cluster.wait_settled(Duration::from_secs_f64(args.start_timeout)) => s,
        _ = interrupt.recv() => Err("interrupted (SIGINT) while starting".to_string()),
        _ = terminate.recv() => Err("terminated (SIGTERM) while starting".to_string()),
    };
    let settled = match settled {
        Ok(s) => s,
        Err(e) => {
            cluster.stop(STOP_GRACE);
            return Err(e);
        }
    };
    print_cluster(&cluster, &settled, dir, started.elapsed());
    match stop_at {
        Some(_) => println!(
            "Stopping after --run-for {} s (or on Ctrl-C).",
            args.run_for.unwrap_or_default()
        ),
        None => println!("Press Ctrl-C to stop the cluster."),
    }

    let until = async {
        match stop_at {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    let mut watch = tokio::time::interval(Duration::from_millis(200));
    let outcome = loop {
        tokio::select! {
            _ = interrupt.recv() => break Ok("SIGINT"),
            _ = terminate.recv() => break Ok("SIGTERM"),
            _ = &mut until => break Ok("--run-for elapsed"),
            _ = watch.tick() => {
                if let Err(e) = cluster.check_alive() {
                    break Err(e);
                }
            }
        }
    };
    match outcome {
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

/// Creates (or, with `--clean`, wipes) the cluster directory, refusing directories this
/// command did not make and layouts other than the one the data was made with.
fn prepare_dir(dir: &Path, args: &ClusterArgs) -> Result<(), String> {
    let marker = dir.join(MARKER);
    let wanted = format!("nodes {}\nbase-port {}\n", args.nodes, args.base_port);
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
        if had != wanted {
            return Err(format!(
                "{} holds a cluster made with another layout ({}); rerun with the same \
                 --nodes and --base-port, or add --clean to start afresh",
                dir.display(),
                had.trim().replace('\n', ", ")
            ));
        }
        println!("restarting the members on their data in {}", dir.display());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(&marker, wanted).map_err(|e| format!("cannot write {}: {e}", marker.display()))
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

/// The addresses of `nodes` members: member `i` (from 1) on `base + 10000 * (i - 1)` for
/// clients and the port above for peers.
pub fn layout(nodes: u16, base_port: u16) -> Result<Vec<MemberAddr>, String> {
    (0..u32::from(nodes))
        .map(|i| {
            let client = u32::from(base_port) + 10_000 * i;
            if base_port == 0 || client + 1 > u32::from(u16::MAX) {
                return Err(format!(
                    "--base-port {base_port} does not leave room for {nodes} members \
                     (member i uses base + 10000 * (i - 1) and the port above; at most {})",
                    u32::from(u16::MAX) - 1 - 10_000 * (u32::from(nodes) - 1)
                ));
            }
            Ok(MemberAddr {
                name: format!("n{}", i + 1),
                client_port: client as u16,
                peer_port: (client + 1) as u16,
            })
        })
        .collect()
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
    eprintln!("building raft-kv (cargo build --release -p raft-kv)");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "raft-kv", "--bin", "raft-kv"])
        .current_dir(workspace)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !status.success() {
        return Err(format!(
            "cargo build --release -p raft-kv failed ({status})"
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
}

/// One running (or exited) member.
pub struct Member {
    /// Its name and ports.
    pub addr: MemberAddr,
    /// The file its stdout and stderr go to.
    pub log: PathBuf,
    child: Child,
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
        let initial_cluster = addrs
            .iter()
            .map(|a| format!("{}={}", a.name, a.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let setpriv = Path::new("/usr/bin/setpriv");
        if !setpriv.exists() {
            eprintln!(
                "warning: /usr/bin/setpriv (util-linux) not found: members will outlive this \
                 command if it is killed without cleaning up"
            );
        }
        let mut cluster = Cluster {
            members: Vec::new(),
        };
        for a in addrs {
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
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &server.token])
                .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
                .args(["--log-level", &server.log_level]);
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
            let child = command
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", server.binary.display()))?;
            cluster.members.push(Member {
                addr: a.clone(),
                log,
                child,
                exited: None,
            });
        }
        Ok(cluster)
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
    /// failing early if a member exits and after `timeout` with what each member last said.
    pub async fn wait_settled(&mut self, timeout: Duration) -> Result<Settled, String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let answers = self.statuses().await;
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
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
        let deadline = Instant::now() + grace;
        loop {
            let mut running = false;
            for m in &mut self.members {
                if m.exited.is_none() {
                    m.exited = m.child.try_wait().unwrap_or(None);
                    running |= m.exited.is_none();
                }
            }
            if !running {
                break;
            }
            if Instant::now() >= deadline {
                for (m, h) in self.members.iter_mut().zip(&mut how) {
                    if m.exited.is_none() {
                        let _ = m.child.kill();
                        m.exited = m.child.wait().ok();
                        *h = How::Killed;
                    }
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
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
async fn status(addr: &MemberAddr) -> Result<StatusResponse, String> {
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
