//! The harness shared by raft-kv's integration tests: real `raft-kv` processes on free
//! loopback ports, each member with its own temporary data directory, all killed with SIGKILL
//! when the [`Cluster`] guard is dropped (also when a test panics or times out).
//!
//! Timings are short (`--heartbeat-interval 50 --election-timeout 500 --request-timeout 2000`)
//! so that elections and failed requests take at most a few seconds. Each member's stderr goes
//! to a log file per start (`<tmp>/n1.0.log`, `<tmp>/n1.1.log`, ...); if a test fails, the
//! tail of every log is printed with the test's output (and the whole logs are copied to the
//! directory named by `RAFT_KV_TEST_KEEP_LOGS`, if set).

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftline_kv::proto::etcdserverpb::cluster_client::ClusterClient;
use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use raftline_kv::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftline_kv::proto::etcdserverpb::{
    PutRequest, PutResponse, RangeRequest, RangeResponse, StatusRequest, StatusResponse,
};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// The server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_raft-kv");
/// `--heartbeat-interval`, in ms.
pub const HEARTBEAT_MS: u64 = 50;
/// `--election-timeout`, in ms.
pub const ELECTION_MS: u64 = 500;
/// `--request-timeout`: how long the server lets a request wait for commit.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(2000);
/// The client's own bound on one RPC: well above the server's request timeout, so that a
/// server that answers in time is never cut off, and a server that hangs is noticed.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(6);
/// How long a member may take from spawn to "ready to serve client requests".
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster may take to agree on a leader (many election timeouts).
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a test body with a time bound; when it expires the body is dropped (which kills its
/// processes) and the test fails.
pub async fn bounded<T>(limit: Duration, body: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, body).await {
        Ok(v) => v,
        Err(_) => panic!("the test did not finish within {limit:?}"),
    }
}

/// Ports already handed out by this process (never handed out twice).
static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A free loopback port, below Linux's ephemeral range (32768 and up) so that no outgoing
/// connection can take a port a killed member will be restarted on. The scan starts at an
/// offset derived from the process id (so concurrent test binaries use different ports), hands
/// out each port once per process (tests in one binary run in parallel), and checks that the
/// port is free by binding it.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if !TAKEN.lock().unwrap().insert(port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

/// A gRPC channel to a client port; connects lazily (and reconnects after a restart).
pub fn channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(1))
        .timeout(RPC_TIMEOUT)
        .connect_lazy()
}

/// Asserts that a result is a gRPC error with the given code, naming the request.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(what: &str, result: Result<T, Status>, code: Code) {
    match result {
        Ok(v) => panic!("{what}: expected {code:?}, got success {v:?}"),
        Err(s) => assert_eq!(s.code(), code, "{what}: got {s:?}"),
    }
}

/// Whether a member starts with `--initial-cluster-state new` or `existing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// `--initial-cluster-state new`.
    New,
    /// `--initial-cluster-state existing`.
    Existing,
}

impl State {
    fn flag(self) -> &'static str {
        match self {
            State::New => "new",
            State::Existing => "existing",
        }
    }
}

/// One member: its ports, data directory and (while it runs) its process.
pub struct Member {
    /// `--name`.
    pub name: String,
    /// The port of `--listen-peer-urls`.
    pub peer_port: u16,
    /// The port the other members reach it at: its entry in `--initial-cluster` and its
    /// `--initial-advertise-peer-urls`. `peer_port` unless a proxy stands in front of it.
    pub advertised_peer_port: u16,
    /// The port of `--listen-metrics-urls`, if it serves metrics.
    pub metrics_port: Option<u16>,
    /// The port of `--listen-client-urls`.
    pub client_port: u16,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    logs: Vec<PathBuf>,
    child: Option<Child>,
}

impl Member {
    /// `http://127.0.0.1:<client port>`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:<advertised peer port>`: its entry in `--initial-cluster`.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.advertised_peer_port)
    }

    /// `127.0.0.1:<client port>`, as etcdctl's `--endpoints` takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Whether the process runs (was started and not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The stderr log of each start so far, oldest first.
    pub fn logs(&self) -> &[PathBuf] {
        &self.logs
    }

    /// What the current (or last) run has logged so far.
    pub fn log_text(&self) -> String {
        self.logs
            .last()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Sends a signal by name (`STOP`, `CONT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("a running member").id();
        let status = Command::new("kill")
            .args(["-s", name, &pid.to_string()])
            .status()
            .expect("running kill(1)");
        assert!(status.success(), "kill -s {name} {pid}: {status}");
    }

    /// SIGKILL (no shutdown path runs) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How [`Cluster::with_options`] sets members up beyond the harness's defaults.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Flags added to every member's command line, after the harness's own (which they must
    /// not repeat).
    pub flags: Vec<String>,
    /// Give every member a metrics port (`--listen-metrics-urls`), read with
    /// [`Cluster::metrics`].
    pub metrics: bool,
    /// Per member, the port the others reach it at instead of its peer port (say, a proxy in
    /// front of it): its entry in everyone's `--initial-cluster` and its
    /// `--initial-advertise-peer-urls`, while it still listens on its own peer port.
    pub advertised_peer_ports: Option<Vec<u16>>,
}

/// How long [`Cluster::metrics`] waits for an answer.
pub const METRICS_TIMEOUT: Duration = Duration::from_secs(2);

/// A cluster of `raft-kv` processes. Dropping it kills every member.
pub struct Cluster {
    /// The members, `n1`, `n2`, ... in `--initial-cluster` order.
    pub members: Vec<Member>,
    initial_cluster: String,
    extra_flags: Vec<String>,
    // Dropped after `members`, so the processes are dead before their directories go.
    dir: TempDir,
}

impl Cluster {
    /// Ports and directories for `n` members; nothing runs yet.
    pub fn new(n: usize) -> Cluster {
        Cluster::with_options(n, Options::default())
    }

    /// Ports and directories for `n` members set up as `options` says; nothing runs yet.
    pub fn with_options(n: usize, options: Options) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("raft-kv-test-")
            .tempdir()
            .expect("a temporary directory");
        if let Some(ports) = &options.advertised_peer_ports {
            assert_eq!(ports.len(), n, "one advertised peer port per member");
        }
        let members: Vec<Member> = (1..=n)
            .map(|i| {
                let peer_port = free_port();
                Member {
                    name: format!("n{i}"),
                    peer_port,
                    advertised_peer_port: options
                        .advertised_peer_ports
                        .as_ref()
                        .map_or(peer_port, |p| p[i - 1]),
                    metrics_port: options.metrics.then(free_port),
                    client_port: free_port(),
                    data_dir: dir.path().join(format!("n{i}")),
                    logs: Vec::new(),
                    child: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.advertised_peer_port))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            members,
            initial_cluster,
            extra_flags: options.flags,
            dir,
        }
    }

    /// Starts `n` new members and waits until they have elected a leader.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, Options::default()).await
    }

    /// Starts `n` new members set up as `options` says and waits until they have elected a
    /// leader.
    pub async fn start_with(n: usize, options: Options) -> Cluster {
        let mut cluster = Cluster::with_options(n, options);
        let all: Vec<usize> = (0..n).collect();
        cluster.start_members(&all, State::New).await;
        cluster.wait_leader(&all).await;
        cluster
    }

    /// The temporary directory holding data directories and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The command-line flags of member `i`.
    pub fn args(&self, i: usize, state: State) -> Vec<String> {
        let m = &self.members[i];
        [
            "--name",
            &m.name,
            "--data-dir",
            m.data_dir.to_str().expect("a UTF-8 temporary path"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{}", m.peer_port),
            "--listen-client-urls",
            &m.client_url(),
            "--initial-cluster",
            &self.initial_cluster,
            "--initial-cluster-state",
            state.flag(),
            "--heartbeat-interval",
            &HEARTBEAT_MS.to_string(),
            "--election-timeout",
            &ELECTION_MS.to_string(),
            "--request-timeout",
            &REQUEST_TIMEOUT.as_millis().to_string(),
            "--log-level",
            "info",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(
            (m.advertised_peer_port != m.peer_port)
                .then(|| {
                    [
                        "--initial-advertise-peer-urls".to_string(),
                        format!("http://127.0.0.1:{}", m.advertised_peer_port),
                    ]
                })
                .into_iter()
                .flatten(),
        )
        .chain(
            m.metrics_port
                .map(|port| {
                    [
                        "--listen-metrics-urls".to_string(),
                        format!("http://127.0.0.1:{port}"),
                    ]
                })
                .into_iter()
                .flatten(),
        )
        .chain(self.extra_flags.iter().cloned())
        .collect()
    }

    /// Spawns member `i` (which must not be running) without waiting for it.
    pub fn spawn(&mut self, i: usize, state: State) {
        assert!(
            !self.members[i].is_running(),
            "{} already runs",
            self.members[i].name
        );
        let args = self.args(i, state);
        let m = &mut self.members[i];
        let log = self
            .dir
            .path()
            .join(format!("{}.{}.log", m.name, m.logs.len()));
        let stderr = std::fs::File::create(&log).expect("a log file");
        let child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawning raft-kv");
        m.logs.push(log);
        m.child = Some(child);
    }

    /// Waits until member `i` logs "ready to serve client requests" in its current run.
    pub async fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let m = &mut self.members[i];
            let log = m.logs.last().expect("spawned").clone();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("ready to serve client requests") {
                return;
            }
            if let Some(status) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{} exited ({status}) before it was ready:\n{text}", m.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {START_TIMEOUT:?}:\n{text}",
                m.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the given members together and waits until each serves clients.
    pub async fn start_members(&mut self, which: &[usize], state: State) {
        for &i in which {
            self.spawn(i, state);
        }
        for &i in which {
            self.wait_ready(i).await;
        }
    }

    /// (Re)starts member `i` on its data directory and waits until it serves clients.
    pub async fn restart(&mut self, i: usize, state: State) {
        self.start_members(&[i], state).await;
    }

    /// Pauses member `i` (SIGSTOP): to its peers and clients it looks cut off.
    pub fn pause(&self, i: usize) {
        self.members[i].signal("STOP");
    }

    /// Resumes member `i` (SIGCONT) after [`Cluster::pause`].
    pub fn resume(&self, i: usize) {
        self.members[i].signal("CONT");
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Member `i`'s metrics (`GET /metrics` on its `--listen-metrics-urls`), by name.
    pub async fn metrics(
        &self,
        i: usize,
    ) -> Result<std::collections::BTreeMap<String, u64>, String> {
        let port = self.members[i]
            .metrics_port
            .expect("a cluster started with Options::metrics");
        let fetch = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .await
                .map_err(|e| format!("sending: {e}"))?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer)
                .await
                .map_err(|e| format!("reading: {e}"))?;
            String::from_utf8(answer).map_err(|e| format!("not UTF-8: {e}"))
        };
        let answer = tokio::time::timeout(METRICS_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("no answer within {METRICS_TIMEOUT:?}"))??;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("not an HTTP answer: {answer:?}"))?;
        if !head.starts_with("HTTP/1.1 200 ") {
            return Err(format!("answered {head:?}"));
        }
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l
                    .split_once(' ')
                    .ok_or_else(|| format!("bad sample line {l:?}"))?;
                let value = value
                    .parse()
                    .map_err(|e| format!("bad value in {l:?}: {e}"))?;
                Ok((name.to_string(), value))
            })
            .collect()
    }

    /// One metric of member `i`; panics if it cannot be read.
    pub async fn metric(&self, i: usize, name: &str) -> u64 {
        let all = self
            .metrics(i)
            .await
            .unwrap_or_else(|e| panic!("metrics of {}: {e}", self.members[i].name));
        *all.get(name)
            .unwrap_or_else(|| panic!("{} has no metric {name}", self.members[i].name))
    }

    /// Waits up to `limit` until member `i`'s metric `name` satisfies `ok`; returns its value.
    pub async fn wait_metric(
        &self,
        i: usize,
        name: &str,
        limit: Duration,
        ok: impl Fn(u64) -> bool,
    ) -> u64 {
        let deadline = Instant::now() + limit;
        let mut last: Result<std::collections::BTreeMap<String, u64>, String> =
            Err(String::from("not read yet"));
        loop {
            if let Ok(all) = &last {
                if let Some(&v) = all.get(name) {
                    if ok(v) {
                        return v;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{}'s {name} not as wanted within {limit:?}; last read: {:?}",
                self.members[i].name,
                last.map(|all| all.get(name).copied())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            last = self.metrics(i).await;
        }
    }

    /// Ports and a data directory for one more member (`n<k>`), not running yet; later
    /// members' `--initial-cluster` lists it. Add it to the cluster (`MemberAdd`) and start it
    /// with [`State::Existing`] to have it join. Returns its index.
    pub fn add_member(&mut self) -> usize {
        let i = self.members.len();
        let peer_port = free_port();
        let name = format!("n{}", i + 1);
        let m = Member {
            data_dir: self.dir.path().join(&name),
            name,
            peer_port,
            advertised_peer_port: peer_port,
            metrics_port: None,
            client_port: free_port(),
            logs: Vec::new(),
            child: None,
        };
        self.initial_cluster
            .push_str(&format!(",{}={}", m.name, m.peer_url()));
        self.members.push(m);
        i
    }

    /// Moves member `i` (not running) to another peer port, in its own flags and everyone's
    /// `--initial-cluster` from now on (after a `MemberUpdate`).
    pub fn set_peer_port(&mut self, i: usize, port: u16) {
        assert!(!self.members[i].is_running(), "stop the member first");
        let old = format!("{}={}", self.members[i].name, self.members[i].peer_url());
        self.members[i].peer_port = port;
        self.members[i].advertised_peer_port = port;
        let new = format!("{}={}", self.members[i].name, self.members[i].peer_url());
        self.initial_cluster = self
            .initial_cluster
            .split(',')
            .map(|e| if e == old { new.as_str() } else { e })
            .collect::<Vec<_>>()
            .join(",");
    }

    /// Waits up to `limit` for member `i`'s process to exit by itself and reaps it; panics
    /// if it still runs then.
    pub async fn wait_exit(&mut self, i: usize, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            let m = &mut self.members[i];
            let child = m.child.as_mut().expect("a running member");
            if let Some(status) = child.try_wait().expect("waiting for a child") {
                m.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still runs after {limit:?}:\n{}",
                m.name,
                m.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The indexes of the running members.
    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .collect()
    }

    /// A KV client to member `i`.
    pub fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(channel(self.members[i].client_port))
    }

    /// A Maintenance client to member `i`.
    pub fn maintenance(&self, i: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(channel(self.members[i].client_port))
    }

    /// A Cluster client to member `i`.
    pub fn cluster(&self, i: usize) -> ClusterClient<Channel> {
        ClusterClient::new(channel(self.members[i].client_port))
    }

    /// `Put key=value` through member `i`.
    pub async fn put(&self, i: usize, key: &str, value: &str) -> Result<PutResponse, Status> {
        self.kv(i)
            .put(PutRequest {
                key: key.into(),
                value: value.into(),
                ..PutRequest::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// `Put key=value` through member `i`, retried while the cluster answers Unavailable (an
    /// election is under way) for up to `LEADER_TIMEOUT`.
    pub async fn put_retrying(&self, i: usize, key: &str, value: &str) -> PutResponse {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            match self.put(i, key, value).await {
                Ok(r) => return r,
                Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => panic!("put {key} through {}: {s:?}", self.members[i].name),
            }
        }
    }

    /// A linearizable `Range` of one key (`range_end` empty) or of a range on member `i`.
    pub async fn range(
        &self,
        i: usize,
        key: &str,
        range_end: &[u8],
    ) -> Result<RangeResponse, Status> {
        self.kv(i)
            .range(RangeRequest {
                key: key.into(),
                range_end: range_end.to_vec(),
                ..RangeRequest::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// A linearizable `Range` of every key starting with `prefix` on member `i`.
    pub async fn range_prefix(&self, i: usize, prefix: &str) -> Result<RangeResponse, Status> {
        self.range(i, prefix, &prefix_end(prefix.as_bytes())).await
    }

    /// `Maintenance.Status` of member `i`.
    pub async fn status(&self, i: usize) -> Result<StatusResponse, Status> {
        self.maintenance(i)
            .status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
    }

    /// Waits until every member in `among` names the same leader, and that leader is one of
    /// them and says so itself (`Status.leader == header.member_id`). Returns its index.
    pub async fn wait_leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        let mut last = String::new();
        loop {
            let mut statuses = Vec::new();
            for &i in among {
                match self.status(i).await {
                    Ok(s) => statuses.push((i, s)),
                    Err(e) => last = format!("{}: {e:?}", self.members[i].name),
                }
            }
            if statuses.len() == among.len() {
                let leader = statuses[0].1.leader;
                let agreed = leader != 0 && statuses.iter().all(|(_, s)| s.leader == leader);
                let me = statuses
                    .iter()
                    .find(|(_, s)| s.header.as_ref().map(|h| h.member_id) == Some(leader));
                if let (true, Some((i, _))) = (agreed, me) {
                    return *i;
                }
                last = format!(
                    "leaders seen: {:?}",
                    statuses.iter().map(|(_, s)| s.leader).collect::<Vec<_>>()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?} within {LEADER_TIMEOUT:?} ({last})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until member `i`'s `raft_applied_index` reaches that of every other running
    /// member (and all of them have applied what they committed).
    pub async fn wait_caught_up(&self, i: usize) {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let mut applied = Vec::new();
            for j in self.running() {
                if let Ok(s) = self.status(j).await {
                    applied.push((j, s.raft_applied_index, s.raft_index));
                }
            }
            let mine = applied.iter().find(|a| a.0 == i).map(|a| a.1);
            if let Some(mine) = mine {
                if applied.len() == self.running().len()
                    && applied.iter().all(|&(_, a, c)| a <= mine && a == c)
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not catch up within {LEADER_TIMEOUT:?}: (member, applied, commit) {applied:?}",
                self.members[i].name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Set to a directory to have every member's log copied there when a test fails
/// (`<dir>/<temporary directory name>/n1.0.log`, ...), for a look at the whole logs.
pub const KEEP_LOGS_ENV: &str = "RAFT_KV_TEST_KEEP_LOGS";

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Some(keep) = std::env::var_os(KEEP_LOGS_ENV) {
            let to = Path::new(&keep).join(self.dir.path().file_name().unwrap_or_default());
            if std::fs::create_dir_all(&to).is_ok() {
                for log in self.members.iter().flat_map(|m| &m.logs) {
                    if let Some(name) = log.file_name() {
                        let _ = std::fs::copy(log, to.join(name));
                    }
                }
                eprintln!("---- whole logs kept in {}", to.display());
            }
        }
        for m in &self.members {
            for log in &m.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!("---- {} (last {} lines)", log.display(), tail.len());
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// etcd's `range_end` for "every key with this prefix": the prefix with its last byte below
/// 0xff raised by one.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What a finished process left: exit status, stdout, stderr.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs a command to completion within `limit` (SIGKILL and panic past it), with `input` as
/// its stdin and its output captured through files (so a chatty process cannot block on a
/// full pipe).
pub fn run_bounded(command: &mut Command, input: &str, limit: Duration) -> Finished {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stdin = dir.path().join("stdin");
    let out = dir.path().join("stdout");
    let err = dir.path().join("stderr");
    std::fs::write(&stdin, input).expect("a file");
    let mut child = command
        .stdin(std::fs::File::open(&stdin).expect("a file"))
        .stdout(std::fs::File::create(&out).expect("a file"))
        .stderr(std::fs::File::create(&err).expect("a file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {command:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} did not finish within {limit:?}; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Finished {
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// A write the cluster acknowledged.
#[derive(Clone, Debug)]
pub struct Ack {
    /// The key (each written once).
    pub key: String,
    /// The value written.
    pub value: String,
    /// The revision of the put (the key's `mod_revision` from then on).
    pub revision: i64,
    /// When the acknowledgement arrived.
    pub at: Instant,
}

/// A client task that writes `<prefix><n>` for n = 0, 1, ... one after another through one
/// member until `stop` is set, pausing briefly after each failure, and returns what was
/// acknowledged.
pub fn spawn_writer(
    mut client: KvClient<Channel>,
    prefix: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Ack>> {
    tokio::spawn(async move {
        let mut acks = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("{prefix}{n:05}");
            let value = format!("value of {key}");
            n += 1;
            let put = client.put(PutRequest {
                key: key.clone().into(),
                value: value.clone().into(),
                ..PutRequest::default()
            });
            match put.await {
                Ok(r) => acks.push(Ack {
                    key,
                    value,
                    revision: r.into_inner().header.expect("a header").revision,
                    at: Instant::now(),
                }),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        acks
    })
}

/// A key's bookkeeping as `Range` returns it: (value, create_revision, mod_revision, version).
pub type KvState = (String, i64, i64, i64);

/// The keys of a `Range` answer, by key.
pub fn kv_map(r: &RangeResponse) -> std::collections::BTreeMap<String, KvState> {
    r.kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                (
                    String::from_utf8_lossy(&kv.value).into_owned(),
                    kv.create_revision,
                    kv.mod_revision,
                    kv.version,
                ),
            )
        })
        .collect()
}

/// Asserts that every acknowledged write is in `kvs` with its value, and with the revision of
/// its acknowledgement as `mod_revision`. (`create_revision` and `version` are not checked: a
/// put retried after an Unavailable answer may have been applied twice, which is allowed.)
#[track_caller]
pub fn assert_acked_present(
    who: &str,
    kvs: &std::collections::BTreeMap<String, KvState>,
    acks: &[Ack],
) {
    for a in acks {
        match kvs.get(&a.key) {
            None => panic!(
                "{who}: acknowledged write {} (revision {}) is lost",
                a.key, a.revision
            ),
            Some((value, create, modified, version)) => {
                assert_eq!(
                    (value.as_str(), *modified),
                    (a.value.as_str(), a.revision),
                    "{who}: acknowledged write {} changed",
                    a.key
                );
                assert!(
                    *create <= *modified && *version >= 1,
                    "{who}: {}: create_revision {create}, mod_revision {modified}, version {version}",
                    a.key
                );
            }
        }
    }
}

/// Whether `etcdctl` runs here; fails under CI if it does not (CI must run the etcdctl parts
/// of the tests), else prints a notice saying that they are skipped.
pub fn etcdctl_installed() -> bool {
    match Command::new("etcdctl").arg("version").output() {
        Ok(out) if out.status.success() => true,
        result => {
            let why = match result {
                Ok(out) => format!("`etcdctl version` failed: {}", out.status),
                Err(e) => format!("etcdctl cannot be run: {e}"),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "{why}; CI must have it: install the etcd-client package (apt-get install etcd-client)"
            );
            eprintln!("notice: {why}; skipping the etcdctl parts (install the etcd-client package to run them)");
            false
        }
    }
}

/// How long one `etcdctl` command may take.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs `etcdctl` (API v3) against `endpoints` off the async threads, bounded in time.
pub async fn etcdctl(endpoints: &str, args: &[&str]) -> Finished {
    etcdctl_with_input(endpoints, args, "").await
}

/// [`etcdctl`] with `input` on its stdin.
pub async fn etcdctl_with_input(endpoints: &str, args: &[&str], input: &str) -> Finished {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args);
    let input = input.to_string();
    tokio::task::spawn_blocking(move || run_bounded(&mut command, &input, ETCDCTL_TIMEOUT))
        .await
        .expect("etcdctl runner")
}

/// Runs `etcdctl` and returns its stdout, failing unless it succeeds.
pub async fn etcdctl_ok(endpoints: &str, args: &[&str]) -> String {
    let done = etcdctl(endpoints, args).await;
    assert!(
        done.status.success(),
        "etcdctl {args:?} failed ({}):\n{}",
        done.status,
        done.stderr
    );
    done.stdout
}

/// A process left running in the background (say `etcdctl watch` or `etcdctl lock`), its
/// stdout and stderr going to files read at any time. Dropping it SIGKILLs the process.
pub struct Background {
    /// What runs, for messages.
    pub what: String,
    /// When it was spawned.
    pub started: Instant,
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
    _dir: TempDir,
}

/// Spawns `etcdctl` (API v3, the same timeouts as [`etcdctl`]) against `endpoints` in the
/// background, with an empty stdin.
pub fn spawn_etcdctl(endpoints: &str, args: &[&str]) -> Background {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args);
    Background::spawn(command, &format!("etcdctl {}", args.join(" ")))
}

impl Background {
    /// Spawns `command` with an empty stdin and its output going to files.
    pub fn spawn(mut command: Command, what: &str) -> Background {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let out = dir.path().join("stdout");
        let err = dir.path().join("stderr");
        let child = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("a file"))
            .stderr(std::fs::File::create(&err).expect("a file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        Background {
            what: what.to_string(),
            started: Instant::now(),
            child: Some(child),
            out,
            err,
            _dir: dir,
        }
    }

    /// The process id (while it runs).
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("a running process").id()
    }

    /// What it has written to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits up to `limit` until its stdout satisfies `ok`, and returns that stdout; panics
    /// (showing both outputs) if it does not by then.
    pub async fn wait_stdout(
        &mut self,
        limit: Duration,
        wanted: &str,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.stdout();
            if ok(&out) {
                return out;
            }
            if Instant::now() >= deadline {
                let exited = self.try_exit();
                panic!(
                    "{}: no {wanted} on stdout within {limit:?} (exit status: {exited:?})\n\
                     stdout:\n{out}\nstderr:\n{}",
                    self.what,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its exit status if it has exited (reaping it), else `None`.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait().expect("waiting for a child") {
            Some(status) => {
                self.child = None;
                Some(status)
            }
            None => None,
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`) with kill(1).
    pub fn signal(&self, name: &str) {
        let pid = self.id();
        let status = Command::new("kill")
            .args(["-s", name, &pid.to_string()])
            .status()
            .expect("running kill(1)");
        assert!(status.success(), "kill -s {name} {pid}: {status}");
    }

    /// Waits up to `limit` for the process to exit and reaps it; panics if it still runs.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let mut last = None;
        while Instant::now() < deadline {
            let child = self.child.as_mut().expect("a running process");
            if let Some(status) = child.try_wait().expect("waiting for a child") {
                last = Some(status);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match last {
            Some(status) => {
                self.child = None;
                status
            }
            None => panic!(
                "{} still runs after {limit:?}; stdout:\n{}\nstderr:\n{}",
                self.what,
                self.stdout(),
                self.stderr()
            ),
        }
    }

    /// SIGKILLs the process (if it still runs) and reaps it; returns its output.
    pub fn kill(&mut self) -> (String, String) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        (self.stdout(), self.stderr())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The cells of etcdctl's `-w table` output: the header row, then one row per data line.
pub fn table(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut rows = text.lines().filter(|l| l.starts_with('|')).map(|l| {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect::<Vec<_>>()
    });
    let header = rows.next().expect("a header row");
    (header, rows.collect())
}

/// A unary call to any method path on member port `port`, carrying an empty message (what
/// the body holds does not matter to a server that does not know the method).
pub async fn call(port: u16, path: &'static str) -> Result<RangeResponse, Status> {
    let mut grpc = tonic::client::Grpc::new(channel(port));
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("not ready: {e}")))?;
    let codec = tonic_prost::ProstCodec::<RangeRequest, RangeResponse>::default();
    grpc.unary(
        tonic::Request::new(RangeRequest::default()),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
}
