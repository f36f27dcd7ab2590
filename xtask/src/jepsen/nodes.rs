//! The members of a jepsen run (raft-kv's, or etcd's: see [`super::etcd`]; both take the
//! same flags): started (in their namespaces, or on loopback),
//! killed with SIGKILL and restarted on the same data directory, paused with SIGSTOP and
//! continued, and asked who leads. Every member runs under `setpriv --pdeathsig KILL` in a
//! process group of its own; [`Nodes`]' `Drop` kills them all.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use raftline_kv::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftline_kv::proto::etcdserverpb::StatusRequest;
use rustix::process::{kill_process, Pid, Signal};
use tonic::transport::Endpoint;

use super::etcd::Server;
use super::net;

/// The `--initial-cluster-token` of every jepsen cluster.
pub const TOKEN: &str = "xtask-jepsen";

/// Client port of member 1 on loopback (member i: + 100 * (i - 1); peers one above).
const LOOPBACK_BASE_PORT: u16 = 22379;

/// Where one member listens.
#[derive(Clone, Debug)]
pub struct Addr {
    /// `n1`, `n2`, ...
    pub name: String,
    /// Its IP address.
    pub ip: String,
    /// Client port.
    pub client_port: u16,
    /// Peer port.
    pub peer_port: u16,
    /// Its network namespace, if it has one.
    pub namespace: Option<String>,
}

impl Addr {
    /// The addresses of `nodes` members, in namespaces or on loopback.
    pub fn layout(nodes: usize, namespaces: bool) -> Vec<Addr> {
        (1..=nodes)
            .map(|i| {
                if namespaces {
                    Addr {
                        name: format!("n{i}"),
                        ip: net::member_ip(i),
                        client_port: 2379,
                        peer_port: 2380,
                        namespace: Some(net::namespace(i)),
                    }
                } else {
                    let client = LOOPBACK_BASE_PORT + 100 * (i as u16 - 1);
                    Addr {
                        name: format!("n{i}"),
                        ip: "127.0.0.1".into(),
                        client_port: client,
                        peer_port: client + 1,
                        namespace: None,
                    }
                }
            })
            .collect()
    }

    /// `http://IP:PORT` of the client port.
    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.client_port)
    }

    /// `http://IP:PORT` of the peer port.
    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.peer_port)
    }

    /// The member id raft-kv derives from the peer URL and the token.
    pub fn member_id(&self) -> u64 {
        raftline_kv::config::member_id(&self.peer_url(), TOKEN).0
    }
}

/// One member: its process, if running.
struct Node {
    addr: Addr,
    child: Option<Child>,
    paused: bool,
}

/// The members of a run.
pub struct Nodes {
    nodes: Vec<Node>,
    binary: PathBuf,
    /// Flags of the target after the common ones.
    extra: Vec<String>,
    dir: PathBuf,
    initial_cluster: String,
}

impl Nodes {
    /// Starts every member of `server` (data and logs under `dir`).
    pub fn start(server: &Server, dir: &Path, addrs: Vec<Addr>) -> Result<Nodes, String> {
        let initial_cluster = addrs
            .iter()
            .map(|a| format!("{}={}", a.name, a.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Nodes {
            nodes: addrs
                .into_iter()
                .map(|addr| Node {
                    addr,
                    child: None,
                    paused: false,
                })
                .collect(),
            binary: server.binary.clone(),
            extra: server.extra.clone(),
            dir: dir.to_path_buf(),
            initial_cluster,
        };
        for i in 0..nodes.len() {
            nodes.restart(i)?;
        }
        Ok(nodes)
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Member `i`'s address (from 0).
    pub fn addr(&self, i: usize) -> &Addr {
        &self.nodes[i].addr
    }

    /// Starts member `i` (from 0) if it is not running, on the data it has.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].child.is_some() {
            return Ok(());
        }
        let a = self.nodes[i].addr.clone();
        let log = self.dir.join(format!("{}.log", a.name));
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let _ = writeln!(out, "==== cargo xtask jepsen: starting {} ====", a.name);
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = match &a.namespace {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "setpriv"]);
                c
            }
            None => Command::new("setpriv"),
        };
        command
            .args(["--pdeathsig", "KILL", "--"])
            .arg(&self.binary)
            .args(["--name", &a.name])
            .arg("--data-dir")
            .arg(self.dir.join(&a.name))
            .args(["--listen-peer-urls", &a.peer_url()])
            .args(["--initial-advertise-peer-urls", &a.peer_url()])
            .args(["--listen-client-urls", &a.client_url()])
            .args(["--advertise-client-urls", &a.client_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", TOKEN])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--log-level", "info"])
            .args(&self.extra);
        let child = crate::cluster::spawn_logged(&mut command, out, err, &self.binary)?;
        self.nodes[i].child = Some(child);
        self.nodes[i].paused = false;
        Ok(())
    }

    /// SIGKILLs member `i` (continuing it if paused, so nothing stays stopped).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes[i].paused = false;
    }

    /// SIGSTOPs member `i`.
    pub fn pause(&mut self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            let _ = kill_process(Pid::from_child(child), Signal::STOP);
            self.nodes[i].paused = true;
        }
    }

    /// SIGCONTs member `i`.
    pub fn resume(&mut self, i: usize) {
        if let Some(child) = &self.nodes[i].child {
            let _ = kill_process(Pid::from_child(child), Signal::CONT);
        }
        self.nodes[i].paused = false;
    }

    /// Continues every paused member and restarts every killed one.
    pub fn heal(&mut self) -> Result<(), String> {
        for i in 0..self.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            self.restart(i)?;
        }
        Ok(())
    }

    /// Members that exited by themselves (not killed by the nemesis), with their status.
    pub fn crashed(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        for n in &mut self.nodes {
            if let Some(child) = &mut n.child {
                if let Ok(Some(status)) = child.try_wait() {
                    dead.push(format!("{} exited by itself: {status}", n.addr.name));
                    n.child = None;
                }
            }
        }
        dead
    }

    /// Every member's address, `None` for those killed or paused (for [`find_leader`]).
    pub fn live(&self) -> Vec<Option<Addr>> {
        self.nodes
            .iter()
            .map(|n| (n.child.is_some() && !n.paused).then(|| n.addr.clone()))
            .collect()
    }
}

/// The member (from 0) that the most answering members of `live` (from [`Nodes::live`])
/// name leader. A member's id is the one its answer's header gives (etcd derives ids its own
/// way), raft-kv's derivation for members that did not answer.
pub async fn find_leader(live: Vec<Option<Addr>>) -> Option<usize> {
    let mut ids: Vec<u64> = live
        .iter()
        .map(|a| a.as_ref().map_or(0, Addr::member_id))
        .collect();
    let mut leaders = Vec::new();
    for (i, addr) in live.iter().enumerate() {
        let Some(addr) = addr else { continue };
        let Some((id, leader)) = status_leader(addr).await else {
            continue;
        };
        ids[i] = id;
        leaders.push(leader);
    }
    let mut votes = vec![0usize; live.len()];
    for leader in leaders {
        if let Some(j) = ids.iter().position(|&id| id == leader) {
            votes[j] += 1;
        }
    }
    let (best, count) = votes.iter().enumerate().max_by_key(|(_, c)| **c)?;
    (*count > 0).then_some(best)
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.kill(i);
        }
    }
}

/// The id of member `addr` and the leader it names in `Maintenance.Status`, if it answers
/// soon and knows a leader.
async fn status_leader(addr: &Addr) -> Option<(u64, u64)> {
    let channel = Endpoint::from_shared(addr.client_url())
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .ok()?;
    let s = MaintenanceClient::new(channel)
        .status(StatusRequest {})
        .await
        .ok()?
        .into_inner();
    let id = s.header.map_or(0, |h| h.member_id);
    (s.leader != 0).then_some((id, s.leader))
}
