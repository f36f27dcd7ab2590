//! The members of a jepsen run (raft-kv's, or etcd's: see [`super::etcd`]; both take the
//! same flags): started (in their namespaces, or on loopback),
//! killed with SIGKILL and restarted on the same data directory, paused with SIGSTOP and
//! continued, and asked who leads. Every member runs under `setpriv --pdeathsig KILL` in a
//! process group of its own; [`Nodes`]' `Drop` kills them all.
//!
//! Members sit in slots `n1`, `n2`, ... (a slot is an address: a namespace, or loopback
//! ports). With the membership nemesis one slot more than `--nodes` is made, and one slot at a
//! time is spare: not a member, nothing running. A slot re-added to the cluster starts a new
//! incarnation: a fresh data directory (`nI/gK` under the slot's home `nI`) and the next peer
//! port, so that its member id (derived from the peer URL and the token) is new, as raft-kv
//! refuses a removed id forever; it joins with `--initial-cluster-state existing`.

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

/// Client port of member 1 on loopback (member i: + 100 * (i - 1); peers one above, and one
/// more for each later incarnation).
const LOOPBACK_BASE_PORT: u16 = 22379;

/// The line that precedes each start of a member in its log.
pub const STARTING: &str = "==== cargo xtask jepsen: starting";

/// Incarnations a slot may have (each takes the next peer port: they stay below the next
/// slot's client port on loopback).
pub const MAX_INCARNATIONS: u16 = 90;

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

/// One slot: its address, its process if running, how it started.
struct Node {
    addr: Addr,
    child: Option<Child>,
    paused: bool,
    /// Whether the slot holds a member of the cluster (false: spare, nothing runs).
    member: bool,
    /// Which incarnation of the slot runs (0: the one of `--initial-cluster`).
    incarnation: u16,
    /// The `--initial-cluster` it starts with, and whether it joined (`existing`).
    initial_cluster: String,
    joined: bool,
}

/// The members of a run.
pub struct Nodes {
    nodes: Vec<Node>,
    binary: PathBuf,
    dir: PathBuf,
    /// Flags every member gets besides those of its address: the target's, then the disk
    /// nemesis' small segments.
    extra: Vec<String>,
}

impl Nodes {
    /// Starts the first `members` slots of `addrs` as a cluster of `server` (data under each
    /// slot's home in `dir`, logs in `dir`); the other slots stay spare. `extra`: more flags
    /// for every member, after the server's own.
    pub fn start(
        server: &Server,
        dir: &Path,
        addrs: Vec<Addr>,
        members: usize,
        extra: Vec<String>,
    ) -> Result<Nodes, String> {
        let initial_cluster = addrs[..members]
            .iter()
            .map(|a| format!("{}={}", a.name, a.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Nodes {
            nodes: addrs
                .into_iter()
                .enumerate()
                .map(|(i, addr)| Node {
                    addr,
                    child: None,
                    paused: false,
                    member: i < members,
                    incarnation: 0,
                    initial_cluster: initial_cluster.clone(),
                    joined: false,
                })
                .collect(),
            binary: server.binary.clone(),
            dir: dir.to_path_buf(),
            extra: server.extra.iter().cloned().chain(extra).collect(),
        };
        for i in 0..members {
            nodes.restart(i)?;
        }
        Ok(nodes)
    }

    /// How many slots (members and spare).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The slots that hold members, in order.
    pub fn members(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.nodes[i].member).collect()
    }

    /// The slots that hold no member.
    pub fn spares(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| !self.nodes[i].member).collect()
    }

    /// The home of slot `i` (`dir/nI`: the loop mount point with the disk nemesis).
    pub fn home(&self, i: usize) -> PathBuf {
        self.dir.join(&self.nodes[i].addr.name)
    }

    /// Slot `i`'s log file (every incarnation's output, each after a `starting` line).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.nodes[i].addr.name))
    }

    /// The data directory slot `i`'s incarnation uses.
    fn data_dir(&self, i: usize) -> PathBuf {
        self.home(i).join(format!("g{}", self.nodes[i].incarnation))
    }

    /// Makes slot `i` (spare) a fresh member joining the cluster: the next incarnation, a
    /// fresh data directory (the previous one's removed), the next peer port; started with
    /// `--initial-cluster-state existing` and the current members in `--initial-cluster`.
    /// Add it (`MemberAdd` with [`Addr::peer_url`] of [`Nodes::addr`]) first.
    pub fn next_incarnation(&mut self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        if node.member || node.incarnation + 1 >= MAX_INCARNATIONS {
            return Err(format!("{} cannot join again", node.addr.name));
        }
        let old = self.data_dir(i);
        let _ = std::fs::remove_dir_all(&old);
        let node = &mut self.nodes[i];
        node.incarnation += 1;
        node.addr.peer_port += 1;
        Ok(())
    }

    /// Starts slot `i`'s new incarnation (after [`Nodes::next_incarnation`] and `MemberAdd`).
    pub fn join(&mut self, i: usize) -> Result<(), String> {
        let entries: Vec<String> = self
            .members()
            .into_iter()
            .chain([i])
            .map(|j| {
                format!(
                    "{}={}",
                    self.nodes[j].addr.name,
                    self.nodes[j].addr.peer_url()
                )
            })
            .collect();
        let node = &mut self.nodes[i];
        node.initial_cluster = entries.join(",");
        node.joined = true;
        node.member = true;
        self.restart(i)
    }

    /// Marks slot `i` as no longer a member (removed: its process exits by itself, see
    /// [`Nodes::take_exit`], or is killed).
    pub fn set_removed(&mut self, i: usize) {
        self.nodes[i].member = false;
    }

    /// Whether slot `i` runs a process.
    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Slot `i`'s exit status if its process exited by itself (reaped here, so that
    /// [`Nodes::crashed`] does not report it).
    pub fn take_exit(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let status = self.nodes[i].child.as_mut()?.try_wait().ok()??;
        self.nodes[i].child = None;
        self.nodes[i].paused = false;
        Some(status)
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
        let log = self.log_path(i);
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
        let _ = writeln!(out, "{STARTING} {} ====", a.name);
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let data_dir = self.data_dir(i);
        let node = &self.nodes[i];
        let state = if node.joined { "existing" } else { "new" };
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
            .arg(&data_dir)
            .args(["--listen-peer-urls", &a.peer_url()])
            .args(["--initial-advertise-peer-urls", &a.peer_url()])
            .args(["--listen-client-urls", &a.client_url()])
            .args(["--advertise-client-urls", &a.client_url()])
            .args(["--initial-cluster", &node.initial_cluster])
            .args(["--initial-cluster-state", state])
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

    /// Continues every paused member and restarts every killed one (spare slots stay
    /// empty).
    pub fn heal(&mut self) -> Result<(), String> {
        for i in 0..self.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            if self.nodes[i].member {
                self.restart(i)?;
            }
        }
        Ok(())
    }

    /// Members that exited by themselves (not killed by the nemesis), with their status.
    /// Spare slots are the membership nemesis' business.
    pub fn crashed(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        for n in self.nodes.iter_mut().filter(|n| n.member) {
            if let Some(child) = &mut n.child {
                if let Ok(Some(status)) = child.try_wait() {
                    dead.push(format!("{} exited by itself: {status}", n.addr.name));
                    n.child = None;
                }
            }
        }
        dead
    }

    /// Every slot's address, `None` for those killed, paused or spare (for
    /// [`find_leader`]).
    pub fn live(&self) -> Vec<Option<Addr>> {
        self.nodes
            .iter()
            .map(|n| (n.member && n.child.is_some() && !n.paused).then(|| n.addr.clone()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_joins_again_with_a_fresh_data_dir_the_next_peer_port_and_a_new_id() {
        let dir = tempfile::tempdir().unwrap();
        let addrs = Addr::layout(4, false);
        // No member started: every slot is spare.
        let server = Server {
            binary: "/nonexistent".into(),
            extra: Vec::new(),
        };
        let mut nodes =
            Nodes::start(&server, dir.path(), addrs, 0, vec![]).expect("nothing to start");
        assert_eq!(nodes.spares(), vec![0, 1, 2, 3]);
        let before = nodes.addr(3).clone();
        std::fs::create_dir_all(nodes.data_dir(3)).unwrap();
        nodes.next_incarnation(3).unwrap();
        assert!(
            !dir.path().join("n4/g0").exists(),
            "the old data is removed"
        );
        assert_eq!(nodes.data_dir(3), dir.path().join("n4").join("g1"));
        assert_eq!(nodes.addr(3).peer_port, before.peer_port + 1);
        assert_eq!(nodes.addr(3).client_port, before.client_port);
        assert_ne!(nodes.addr(3).member_id(), before.member_id());
    }

    #[test]
    fn every_incarnation_stays_below_the_next_slot_on_loopback() {
        let addrs = Addr::layout(5, false);
        for pair in addrs.windows(2) {
            let last_peer = pair[0].peer_port + MAX_INCARNATIONS - 1;
            assert!(last_peer < pair[1].client_port, "{pair:?}");
        }
        let ns = Addr::layout(2, true);
        assert!(ns[0].peer_port > ns[0].client_port && ns[0].ip != ns[1].ip);
    }
}
