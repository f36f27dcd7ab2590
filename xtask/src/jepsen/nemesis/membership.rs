//! The membership nemesis, through etcd's Cluster API (and `Maintenance.MoveLeader`), while
//! the load runs. One step is either
//!
//! - a replacement: the spare slot joins as a fresh member (`MemberAdd` of its next
//!   incarnation's peer URL, then started with `--initial-cluster-state existing`): half the
//!   time as a learner that the nemesis promotes (`MemberPromote`, retried while the learner
//!   catches up), otherwise as a voter that the leader promotes by itself once caught up; once
//!   it votes, a member (the leader 40 % of the time) is removed (`MemberRemove`): it exits by
//!   itself, and its slot becomes the spare. The voters go 3 -> 4 -> 3 (with `--nodes 3`),
//!   never below where they started. If the new member does not become a voter in time, no
//!   member is removed;
//! - or a leadership move to a random other voter (`MoveLeader`, sent to the leader).
//!
//! Each action is a fault of its own (`add n4 (learner, promoted)`, `remove n2 (leader)`,
//! `move-leader n1 -> n3`). A removed member's clients keep calling its address: their
//! operations fail (or are unknown) until the slot's next incarnation answers there.

use std::time::{Duration, Instant};

use raftline_core::Rng;
use raftline_kv::proto::etcdserverpb::cluster_client::ClusterClient;
use raftline_kv::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftline_kv::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MoveLeaderRequest,
};
use tonic::transport::{Channel, Endpoint};

use super::{Kind, Nemesis};

/// How long one step (an add with its promotion, a removal) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(12);

/// The pause between two tries of a request that may succeed later.
const RETRY: Duration = Duration::from_millis(300);

/// The deadline of one Cluster API request (raft-kv's request timeout is 5 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(6);

/// How long to connect to a member.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a removed member may take to notice and exit by itself before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the exit of a removed member is checked.
const EXIT_POLL: Duration = Duration::from_millis(100);

/// The chance that a step is a replacement (when a slot is spare), else a leadership move.
const REPLACE_CHANCE: f64 = 0.6;

/// The chance that a new member joins as a learner promoted by the nemesis.
const LEARNER_CHANCE: f64 = 0.5;

/// The chance that the removed member is the leader.
const LEADER_CHANCE: f64 = 0.4;

/// A channel to a member's client URL.
fn channel(url: &str) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .connect_lazy())
}

/// A gRPC error as `Code: message`.
fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Whether `id` is among `members` as a voter that has started (published its name).
fn is_started_voter(members: &[Member], id: u64) -> bool {
    members
        .iter()
        .any(|m| m.id == id && !m.is_learner && !m.name.is_empty())
}

impl Nemesis<'_> {
    /// One membership step: a replacement or a leadership move.
    pub(super) async fn membership(&self, rng: &mut Rng) -> Result<(), String> {
        let spare = self.nodes.borrow().spares().first().copied();
        match spare {
            Some(s) if rng.chance(REPLACE_CHANCE) => self.replace(rng, s).await,
            _ => self.move_leader(rng).await,
        }
    }

    /// Adds slot `s` as a fresh member; once it votes, removes another member.
    async fn replace(&self, rng: &mut Rng, s: usize) -> Result<(), String> {
        let start = self.shared.now();
        let learner = rng.chance(LEARNER_CHANCE);
        let (voter, detail) = self.add(s, learner).await?;
        self.record(Kind::Membership, detail, start);
        if !voter {
            return Ok(());
        }
        let start = self.shared.now();
        let (victim, why) = loop {
            let (v, why) = self.target(rng, LEADER_CHANCE).await;
            if v != s {
                break (v, why);
            }
        };
        let detail = self.remove(victim, why).await?;
        self.record(Kind::Membership, detail, start);
        Ok(())
    }

    /// Clients of the live members, the leader's first.
    async fn clients(&self) -> Vec<(usize, String)> {
        let live = self.nodes.borrow().live();
        let leader = super::super::nodes::find_leader(live.clone()).await;
        let mut urls: Vec<(usize, String)> = live
            .iter()
            .enumerate()
            .filter_map(|(i, a)| Some((i, a.as_ref()?.client_url())))
            .collect();
        urls.sort_by_key(|(i, _)| Some(*i) != leader);
        urls
    }

    /// The members as the first live member that answers lists them (linearizably).
    async fn member_list(&self) -> Option<Vec<Member>> {
        for (_, url) in self.clients().await {
            let Ok(ch) = channel(&url) else { continue };
            let request = MemberListRequest { linearizable: true };
            if let Ok(r) = ClusterClient::new(ch).member_list(request).await {
                return Some(r.into_inner().members);
            }
        }
        None
    }

    /// Adds slot `s`'s next incarnation and starts it; promotes it if `learner`. Returns
    /// whether it is a voter, and the detail.
    async fn add(&self, s: usize, learner: bool) -> Result<(bool, String), String> {
        self.nodes.borrow_mut().next_incarnation(s)?;
        let addr = self.nodes.borrow().addr(s).clone();
        let (id, url) = (addr.member_id(), addr.peer_url());
        let mut detail = format!(
            "add {} (fresh, peer {url}{})",
            addr.name,
            if learner { ", learner" } else { "" }
        );
        self.current.replace(detail.clone());
        let deadline = Instant::now() + STEP_TIMEOUT;
        if let Err(e) = self.member_add(id, &url, learner, deadline).await {
            detail.push_str(&format!(": not added ({e})"));
            return Ok((false, detail));
        }
        self.nodes.borrow_mut().join(s)?;
        if learner {
            match self.promote(id, deadline).await {
                Ok(()) => detail.push_str(", promoted"),
                Err(e) => detail.push_str(&format!(", not promoted ({e})")),
            }
        }
        let voter = self.wait_voter(id, deadline).await;
        detail.push_str(if voter {
            ": voter"
        } else {
            ": not a started voter in time"
        });
        Ok((voter, detail))
    }

    /// `MemberAdd` until it succeeds (or the member list shows `id`: an earlier try that
    /// timed out went through) or `deadline`.
    async fn member_add(
        &self,
        id: u64,
        url: &str,
        learner: bool,
        deadline: Instant,
    ) -> Result<(), String> {
        let mut last = String::from("no member answered");
        while Instant::now() < deadline {
            for (_, via) in self.clients().await {
                let request = MemberAddRequest {
                    peer_ur_ls: vec![url.to_string()],
                    is_learner: learner,
                };
                match ClusterClient::new(channel(&via)?).member_add(request).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = status_text(&e),
                }
                if self
                    .member_list()
                    .await
                    .is_some_and(|m| m.iter().any(|m| m.id == id))
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(RETRY).await;
        }
        Err(last)
    }

    /// `MemberPromote` of learner `id` until it succeeds (it is refused while the learner
    /// catches up) or `deadline`.
    async fn promote(&self, id: u64, deadline: Instant) -> Result<(), String> {
        let mut last = String::from("no member answered");
        while Instant::now() < deadline {
            for (_, via) in self.clients().await {
                let request = MemberPromoteRequest { id };
                match ClusterClient::new(channel(&via)?)
                    .member_promote(request)
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(e) => last = status_text(&e),
                }
                if self
                    .member_list()
                    .await
                    .is_some_and(|m| is_started_voter(&m, id))
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(RETRY).await;
        }
        Err(last)
    }

    /// Waits until the members list `id` as a started voter, or `deadline`.
    async fn wait_voter(&self, id: u64, deadline: Instant) -> bool {
        loop {
            if self
                .member_list()
                .await
                .is_some_and(|m| is_started_voter(&m, id))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Removes the member in slot `v` (`why`: ` (leader)` or nothing) and waits for it to
    /// exit by itself (killing it after [`EXIT_TIMEOUT`]). Returns the detail.
    async fn remove(&self, v: usize, why: &str) -> Result<String, String> {
        let addr = self.nodes.borrow().addr(v).clone();
        let id = addr.member_id();
        let mut detail = format!("remove {}{why}", addr.name);
        self.current.replace(detail.clone());
        let deadline = Instant::now() + STEP_TIMEOUT;
        let removed = self.member_remove(id, deadline).await;
        let listed = self.member_list().await;
        if let Err(e) = removed {
            if listed.is_none_or(|m| m.iter().any(|m| m.id == id)) {
                detail.push_str(&format!(": not removed ({e})"));
                return Ok(detail);
            }
        }
        self.nodes.borrow_mut().set_removed(v);
        detail.push_str(&self.wait_exit(v).await);
        Ok(detail)
    }

    /// `MemberRemove` until it succeeds (or the member is not found: an earlier try went
    /// through) or `deadline`.
    async fn member_remove(&self, id: u64, deadline: Instant) -> Result<(), String> {
        let mut last = String::from("no member answered");
        while Instant::now() < deadline {
            for (_, via) in self.clients().await {
                let request = MemberRemoveRequest { id };
                match ClusterClient::new(channel(&via)?)
                    .member_remove(request)
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(e) if e.code() == tonic::Code::NotFound => return Ok(()),
                    Err(e) => last = status_text(&e),
                }
            }
            tokio::time::sleep(RETRY).await;
        }
        Err(last)
    }

    /// Waits for removed slot `v`'s process to exit by itself; kills it after
    /// [`EXIT_TIMEOUT`]. Returns how it ended, for the detail.
    async fn wait_exit(&self, v: usize) -> String {
        let began = Instant::now();
        while began.elapsed() < EXIT_TIMEOUT {
            if !self.nodes.borrow().running(v) {
                return ": it was not running".into();
            }
            if let Some(status) = self.nodes.borrow_mut().take_exit(v) {
                let secs = began.elapsed().as_secs_f64();
                return format!(": it exited by itself ({status}) after {secs:.1} s");
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        self.nodes.borrow_mut().kill(v);
        format!(": it still ran after {} s: killed", EXIT_TIMEOUT.as_secs())
    }

    /// Moves leadership to a random other voter.
    async fn move_leader(&self, rng: &mut Rng) -> Result<(), String> {
        let start = self.shared.now();
        let live = self.nodes.borrow().live();
        let Some(leader) = super::super::nodes::find_leader(live).await else {
            self.record(Kind::Membership, "move-leader: no leader".into(), start);
            return Ok(());
        };
        let listed = self.member_list().await.unwrap_or_default();
        let others: Vec<usize> = {
            let nodes = self.nodes.borrow();
            let voter = |i: usize| {
                listed
                    .iter()
                    .any(|m| m.id == nodes.addr(i).member_id() && !m.is_learner)
            };
            nodes
                .members()
                .into_iter()
                .filter(|&i| i != leader && voter(i))
                .collect()
        };
        if others.is_empty() {
            return Ok(());
        }
        let to = others[rng.below(others.len() as u64) as usize];
        let (from_url, target_id) = {
            let nodes = self.nodes.borrow();
            (nodes.addr(leader).client_url(), nodes.addr(to).member_id())
        };
        let mut detail = format!("move-leader {} -> {}", self.name(leader), self.name(to));
        self.current.replace(detail.clone());
        let request = MoveLeaderRequest { target_id };
        let answer = MaintenanceClient::new(channel(&from_url)?)
            .move_leader(request)
            .await;
        if let Err(e) = answer {
            detail.push_str(&format!(": failed ({})", status_text(&e)));
        }
        self.record(Kind::Membership, detail, start);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voter_counts_once_it_has_started() {
        let member = |id, name: &str, is_learner| Member {
            id,
            name: name.into(),
            is_learner,
            ..Member::default()
        };
        let members = vec![
            member(1, "n1", false),
            member(2, "", false),
            member(3, "n3", true),
        ];
        assert!(is_started_voter(&members, 1));
        assert!(!is_started_voter(&members, 2), "not started");
        assert!(!is_started_voter(&members, 3), "a learner");
        assert!(!is_started_voter(&members, 4), "not a member");
    }
}
