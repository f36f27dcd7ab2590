//! The leader's state: replication progress per peer, reads being confirmed, the
//! configuration change and the leadership transfer in progress, the heartbeat timer.
//!
//! [`LeaderState`] exists only inside [`RoleState::Leader`](crate::role::RoleState): a node
//! becoming leader builds it fresh, and it is dropped when the node steps down, so no
//! progress, read, change or transfer of an earlier term can outlive that term's leadership.
//! It makes the leader's decisions that need only its own state and the configuration
//! (commit index, check-quorum, read quorums through [`LeaderReads`], catch-up rounds, whom
//! to hand over to); `Raft` calls them and sends what follows.

use std::collections::BTreeMap;

use raftline_proto::{LogIndex, Membership, NodeId};

use crate::lease::LeaderLease;
use crate::membership::is_member;
use crate::progress::{Progress, ProgressState};
use crate::quorum;
use crate::reads::LeaderReads;

/// What only the leader keeps.
pub(crate) struct LeaderState {
    /// Replication progress of every member but the leader, and of members the latest
    /// configuration removed until they hold it (see [`LeaderState::sync_progress`]).
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Reads being confirmed.
    pub(crate) reads: LeaderReads,
    /// The lease (lease reads) and the deferred commit of a new leader.
    pub(crate) lease: LeaderLease,
    /// The configuration change in progress. At most one at a time.
    pub(crate) change: Option<PendingChange>,
    /// The leadership transfer in progress: no proposals are taken meanwhile.
    pub(crate) transfer: Option<Transfer>,
    /// Ticks since the last heartbeat round.
    pub(crate) heartbeat_elapsed: u32,
    /// The commit index moved, or a follower acknowledged committed entries, since the last
    /// Ready: `Raft::flush_commit_notices` tells the followers that need it.
    pub(crate) commit_notices_due: bool,
    /// Entries were proposed since the last Ready: `Raft::flush_appends` sends them, so that
    /// everything proposed between two Readies travels in one append per follower.
    pub(crate) appends_due: bool,
}

impl LeaderState {
    /// A new leader `id` of `membership` whose log ends before `next`: every peer is probed
    /// from `next`, and counts as active for the first check-quorum round.
    pub(crate) fn new(
        id: NodeId,
        membership: &Membership,
        next: LogIndex,
        lease: LeaderLease,
    ) -> Self {
        let mut leader = LeaderState {
            progress: BTreeMap::new(),
            reads: LeaderReads::default(),
            lease,
            change: None,
            transfer: None,
            heartbeat_elapsed: 0,
            commit_notices_due: false,
            appends_due: false,
        };
        leader.track_members(id, membership, next);
        leader
    }

    /// Starts tracking the members of `membership` (other than `id`) that have no progress.
    fn track_members(&mut self, id: NodeId, membership: &Membership, next: LogIndex) {
        for member in membership.members() {
            if member != id && !self.progress.contains_key(&member) {
                let mut pr = Progress::new(next);
                pr.recent_active = true;
                self.progress.insert(member, pr);
            }
        }
    }

    /// Tracks every member of `membership`, and keeps replicating to members it removed until
    /// they hold it, so that they learn of it. Once the configuration (defined at
    /// `config_index`) is committed (`config_committed`), a removed member is dropped when
    /// it holds that entry: it then knows, stops campaigning and reports its removal.
    pub(crate) fn sync_progress(
        &mut self,
        id: NodeId,
        membership: &Membership,
        next: LogIndex,
        config_index: LogIndex,
        config_committed: bool,
    ) {
        self.track_members(id, membership, next);
        if config_committed {
            self.progress
                .retain(|&peer, p| is_member(membership, peer) || p.match_index < config_index);
        }
    }

    /// Whether some tracked peer is no member of `membership` (so `sync_progress` may drop it).
    pub(crate) fn tracks_removed(&self, membership: &Membership) -> bool {
        self.progress.keys().any(|&id| !is_member(membership, id))
    }

    /// The peers tracked, in id order.
    pub(crate) fn peers(&self) -> Vec<NodeId> {
        self.progress.keys().copied().collect()
    }

    /// The index a quorum of `membership` holds durably, counting the leader (`id`) with its
    /// durable index `own` (§10.2.1 of the dissertation: the leader may send entries before
    /// its own write finishes, but counts them only once durable).
    pub(crate) fn quorum_index(
        &self,
        id: NodeId,
        membership: &Membership,
        own: LogIndex,
    ) -> LogIndex {
        quorum::joint_index(membership, |n| {
            if n == id {
                own
            } else {
                self.progress.get(&n).map_or(LogIndex(0), |p| p.match_index)
            }
        })
    }

    /// One check-quorum round (§6.2): whether a quorum, with the leader `id`, was heard from
    /// since the last round. Starts the next round.
    pub(crate) fn check_quorum(&mut self, id: NodeId, membership: &Membership) -> bool {
        let progress = &self.progress;
        let active = quorum::is_quorum(membership, |n| {
            n == id || progress.get(&n).is_some_and(|p| p.recent_active)
        });
        for pr in self.progress.values_mut() {
            pr.recent_active = false;
        }
        active
    }

    /// One tick of the transfer in progress: a target that did not take over within an
    /// election timeout (`election_ticks`) is given up.
    pub(crate) fn tick_transfer(&mut self, election_ticks: u32) {
        if let Some(t) = &mut self.transfer {
            t.elapsed += 1;
            if t.elapsed >= election_ticks {
                self.transfer = None;
            }
        }
    }

    /// The transfer target, if a transfer is in progress.
    pub(crate) fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.as_ref().map(|t| t.to)
    }

    /// Whether `to` holds the leader's whole log (which ends at `last`).
    pub(crate) fn caught_up(&self, to: NodeId, last: LogIndex) -> bool {
        self.progress
            .get(&to)
            .is_some_and(|p| p.match_index == last)
    }

    /// The voter to hand over to when the leader leaves the configuration: the most
    /// up-to-date one, if it holds the whole log (which ends at `last`).
    pub(crate) fn successor(&self, membership: &Membership, last: LogIndex) -> Option<NodeId> {
        self.progress
            .iter()
            .filter(|(id, _)| membership.is_voter(**id))
            .max_by_key(|(_, p)| p.match_index)
            .filter(|(_, p)| p.match_index == last)
            .map(|(&id, _)| id)
    }

    /// The peers being sent a snapshot.
    pub(crate) fn snapshot_peers(&self) -> Vec<NodeId> {
        self.progress
            .iter()
            .filter(|(_, p)| p.state == ProgressState::Snapshot)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Whether a commit notice would tell some peer more than was sent to it (the leader is
    /// `id`, its commit index `committed`).
    pub(crate) fn commit_notices_wanted(&self, id: NodeId, committed: LogIndex) -> bool {
        self.commit_notices_due
            && self
                .progress
                .iter()
                .any(|(&peer, pr)| peer != id && committed.min(pr.match_index) > pr.commit_sent)
    }
}

/// A configuration change the leader is carrying out.
pub(crate) struct PendingChange {
    /// The id its outcome is reported under.
    pub(crate) request_id: u64,
    pub(crate) stage: Stage,
}

impl PendingChange {
    /// What follows, if the change waits for a configuration entry that is now committed (up
    /// to `committed`).
    pub(crate) fn committed(&self, committed: LogIndex) -> Option<Then> {
        match self.stage {
            Stage::Commit { index, then } if index <= committed => Some(then),
            _ => None,
        }
    }
}

/// Where a configuration change stands.
pub(crate) enum Stage {
    /// Waiting for the configuration entry at `index` to commit.
    Commit { index: LogIndex, then: Then },
    /// Bringing a learner up to date before it is promoted.
    CatchUp(CatchUp),
}

/// What follows once a configuration entry commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Then {
    /// The change is complete.
    Done,
    /// The joint configuration is committed: propose the final one.
    LeaveJoint,
    /// The learner was added: catch it up, then promote it.
    Promote(NodeId),
}

/// The rounds that bring learner `id` up to date before it votes (§4.2.1 of the
/// dissertation).
pub(crate) struct CatchUp {
    pub(crate) id: NodeId,
    /// The round ends when the learner holds this index.
    round_end: LogIndex,
    round_ticks: u32,
    rounds: u32,
}

/// What a tick of catch-up decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CatchUpStep {
    /// Keep replicating.
    Wait,
    /// The learner keeps up: promote it.
    Promote,
    /// The learner did not keep up within the allowed rounds.
    Failed { rounds: u32 },
}

impl CatchUp {
    /// The first round, ending at the leader's last index `last`.
    pub(crate) fn new(id: NodeId, last: LogIndex) -> Self {
        CatchUp {
            id,
            round_end: last,
            round_ticks: 0,
            rounds: 1,
        }
    }

    /// One tick, the learner holding `matched` and the leader's log ending at `last`. A round
    /// ends when the learner holds the leader's last index of the round's start. A round
    /// within an election timeout (`election_ticks`) means it keeps up; a slower one starts
    /// the next round; after `rounds_max` rounds, give up.
    pub(crate) fn tick(
        &mut self,
        matched: LogIndex,
        last: LogIndex,
        election_ticks: u32,
        rounds_max: u32,
    ) -> CatchUpStep {
        self.round_ticks += 1;
        let round_done = matched >= self.round_end;
        if round_done && self.round_ticks <= election_ticks {
            return CatchUpStep::Promote;
        }
        if round_done || self.round_ticks > election_ticks {
            self.rounds += 1;
            if self.rounds > rounds_max {
                return CatchUpStep::Failed {
                    rounds: self.rounds - 1,
                };
            }
            self.round_end = last;
            self.round_ticks = 0;
        }
        CatchUpStep::Wait
    }
}

/// A leadership transfer in progress (§3.10 of the dissertation).
pub(crate) struct Transfer {
    pub(crate) to: NodeId,
    /// Ticks since it started.
    pub(crate) elapsed: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReadMode;

    fn voters(ids: &[u64]) -> Membership {
        Membership::with_voters(ids.iter().map(|&i| NodeId(i)))
    }

    #[test]
    fn a_new_leader_tracks_every_other_member_as_active() {
        let m = voters(&[1, 2, 3]);
        let mut l = LeaderState::new(
            NodeId(1),
            &m,
            LogIndex(5),
            LeaderLease::new(ReadMode::ReadIndex, 0),
        );
        assert_eq!(l.peers(), [NodeId(2), NodeId(3)]);
        assert!(l.progress.values().all(|p| p.next_index == LogIndex(5)));
        assert!(
            l.check_quorum(NodeId(1), &m),
            "all count as heard in the first round"
        );
        assert!(!l.check_quorum(NodeId(1), &m), "nobody was heard since");
    }

    #[test]
    fn the_quorum_index_counts_the_leaders_durable_index() {
        let m = voters(&[1, 2, 3]);
        let mut l = LeaderState::new(
            NodeId(1),
            &m,
            LogIndex(1),
            LeaderLease::new(ReadMode::ReadIndex, 0),
        );
        l.progress.get_mut(&NodeId(2)).unwrap().acked(LogIndex(4));
        assert_eq!(l.quorum_index(NodeId(1), &m, LogIndex(3)), LogIndex(3));
        assert_eq!(l.quorum_index(NodeId(1), &m, LogIndex(9)), LogIndex(4));
    }

    #[test]
    fn a_removed_member_is_dropped_once_it_holds_the_committed_configuration() {
        let mut l = LeaderState::new(
            NodeId(1),
            &voters(&[1, 2, 3]),
            LogIndex(1),
            LeaderLease::new(ReadMode::ReadIndex, 0),
        );
        let m = voters(&[1, 2]);
        l.sync_progress(NodeId(1), &m, LogIndex(6), LogIndex(5), false);
        assert!(l.tracks_removed(&m));
        l.sync_progress(NodeId(1), &m, LogIndex(6), LogIndex(5), true);
        assert!(l.tracks_removed(&m), "node 3 does not hold index 5 yet");
        l.progress.get_mut(&NodeId(3)).unwrap().acked(LogIndex(5));
        l.sync_progress(NodeId(1), &m, LogIndex(6), LogIndex(5), true);
        assert_eq!(l.peers(), [NodeId(2)]);
    }

    #[test]
    fn catch_up_promotes_after_a_fast_round_and_gives_up_after_the_last() {
        let mut c = CatchUp::new(NodeId(4), LogIndex(10));
        assert_eq!(c.tick(LogIndex(3), LogIndex(12), 2, 3), CatchUpStep::Wait);
        assert_eq!(c.tick(LogIndex(3), LogIndex(12), 2, 3), CatchUpStep::Wait);
        // Too slow: the next round ends at 12.
        assert_eq!(c.tick(LogIndex(10), LogIndex(12), 2, 3), CatchUpStep::Wait);
        assert_eq!(
            c.tick(LogIndex(12), LogIndex(12), 2, 3),
            CatchUpStep::Promote
        );
        let mut slow = CatchUp::new(NodeId(4), LogIndex(10));
        let steps: Vec<_> = (0..9)
            .map(|_| slow.tick(LogIndex(0), LogIndex(10), 2, 3))
            .collect();
        assert_eq!(steps.last(), Some(&CatchUpStep::Failed { rounds: 3 }));
    }

    #[test]
    fn the_successor_is_the_most_up_to_date_voter_if_it_holds_everything() {
        let m = voters(&[1, 2, 3]);
        let mut l = LeaderState::new(
            NodeId(1),
            &m,
            LogIndex(1),
            LeaderLease::new(ReadMode::ReadIndex, 0),
        );
        l.progress.get_mut(&NodeId(2)).unwrap().acked(LogIndex(7));
        l.progress.get_mut(&NodeId(3)).unwrap().acked(LogIndex(8));
        assert_eq!(l.successor(&m, LogIndex(8)), Some(NodeId(3)));
        assert_eq!(l.successor(&m, LogIndex(9)), None);
    }
}
