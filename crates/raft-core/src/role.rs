//! The state each role keeps of its own, apart from what every node keeps (term, vote, log,
//! configuration, election timer, the snapshot being received) in `Raft`.
//!
//! [`RoleState`] has one variant per [`Role`], and each variant holds only what that role
//! uses: a follower its forwarded reads, a (pre-)candidate its votes, a leader its
//! [`LeaderState`]. The types hold state and make the decisions that need nothing else
//! (counting votes here; commit index, check-quorum and catch-up in [`leader`](crate::leader);
//! read quorums in [`reads`](crate::reads)); `Raft` calls them and does the sending.
//!
//! **Invariant**: becoming a role constructs its state fresh, so nothing of an earlier
//! campaign or leadership survives a role change: a leader that steps down drops its
//! progress, reads, configuration change and transfer with its `LeaderState` (after failing
//! what callers wait on), and a new leader starts with none. The one thing carried over is a
//! follower's forwarded reads into its pre-campaign, which keeps the term.

use std::collections::BTreeMap;

use raftline_proto::{Membership, NodeId};

use crate::leader::LeaderState;
use crate::progress::Progress;
use crate::quorum::{self, VoteResult};
use crate::reads::ForwardedReads;

/// The role a node plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader; campaigns when it hears from none.
    Follower,
    /// Asks whether it could win before raising its term.
    PreCandidate,
    /// Campaigns in a new term.
    Candidate,
    /// Serves the term.
    Leader,
}

/// The role a node plays, with the state only that role keeps.
pub(crate) enum RoleState {
    /// Follows the leader of the term (if it knows one).
    Follower(FollowerState),
    /// Pre-campaigns. The term is unchanged, so the reads it forwarded as a follower of this
    /// term may still be answered: they carry over.
    PreCandidate {
        /// What it kept from following.
        follower: FollowerState,
        /// The pre-votes.
        votes: CandidateState,
    },
    /// Campaigns in its own term.
    Candidate(CandidateState),
    /// Serves the term.
    Leader(Box<LeaderState>),
}

impl Default for RoleState {
    fn default() -> Self {
        RoleState::Follower(FollowerState::default())
    }
}

impl RoleState {
    /// The role, without its state.
    pub(crate) fn role(&self) -> Role {
        match self {
            RoleState::Follower(_) => Role::Follower,
            RoleState::PreCandidate { .. } => Role::PreCandidate,
            RoleState::Candidate(_) => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    /// The leader's state, on the leader.
    pub(crate) fn leader(&self) -> Option<&LeaderState> {
        match self {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }
    }

    /// The leader's state, on the leader.
    pub(crate) fn leader_mut(&mut self) -> Option<&mut LeaderState> {
        match self {
            RoleState::Leader(l) => Some(l),
            _ => None,
        }
    }

    /// The leader's progress for `id`, on the leader.
    pub(crate) fn progress(&self, id: NodeId) -> Option<&Progress> {
        self.leader().and_then(|l| l.progress.get(&id))
    }

    /// The leader's progress for `id`, on the leader.
    pub(crate) fn progress_mut(&mut self, id: NodeId) -> Option<&mut Progress> {
        self.leader_mut().and_then(|l| l.progress.get_mut(&id))
    }

    /// The votes of the campaign, on a pre-candidate or candidate.
    pub(crate) fn candidate(&self) -> Option<&CandidateState> {
        match self {
            RoleState::PreCandidate { votes, .. } | RoleState::Candidate(votes) => Some(votes),
            _ => None,
        }
    }

    /// The votes of the campaign, on a pre-candidate or candidate.
    pub(crate) fn candidate_mut(&mut self) -> Option<&mut CandidateState> {
        match self {
            RoleState::PreCandidate { votes, .. } | RoleState::Candidate(votes) => Some(votes),
            _ => None,
        }
    }

    /// The reads forwarded to the leader, on a follower or pre-candidate.
    pub(crate) fn forwarded_mut(&mut self) -> Option<&mut ForwardedReads> {
        match self {
            RoleState::Follower(f) | RoleState::PreCandidate { follower: f, .. } => {
                Some(&mut f.forwarded)
            }
            _ => None,
        }
    }
}

/// What a follower keeps of its own.
#[derive(Default)]
pub(crate) struct FollowerState {
    /// Reads forwarded to the leader of the current term, awaiting an answer.
    pub(crate) forwarded: ForwardedReads,
}

/// The votes of one (pre-)campaign.
pub(crate) struct CandidateState {
    /// Answers received, including our own vote once it counts. The first answer of each
    /// voter counts; a duplicate changes nothing.
    votes: BTreeMap<NodeId, bool>,
    /// A candidate counts its own vote only once the vote is durable (Election Safety: a
    /// crash must not let it vote twice in this term).
    self_vote_pending: bool,
}

impl CandidateState {
    /// A pre-campaign: it changes neither term nor vote, so our own pre-vote counts at once.
    pub(crate) fn pre_campaign(id: NodeId) -> Self {
        CandidateState {
            votes: BTreeMap::from([(id, true)]),
            self_vote_pending: false,
        }
    }

    /// A campaign in a new term: our own vote counts once it is durable.
    pub(crate) fn campaign() -> Self {
        CandidateState {
            votes: BTreeMap::new(),
            self_vote_pending: true,
        }
    }

    /// Records `from`'s answer, unless it answered already.
    pub(crate) fn record(&mut self, from: NodeId, granted: bool) {
        self.votes.entry(from).or_insert(granted);
    }

    /// Our vote for ourselves (`id`) is durable: count it. Returns whether it was pending.
    pub(crate) fn own_vote_durable(&mut self, id: NodeId) -> bool {
        if !std::mem::take(&mut self.self_vote_pending) {
            return false;
        }
        self.votes.insert(id, true);
        true
    }

    /// The outcome so far, over both halves of a joint configuration.
    pub(crate) fn result(&self, membership: &Membership) -> VoteResult {
        quorum::joint_vote(membership, |id| self.votes.get(&id).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(ids: &[u64]) -> Membership {
        Membership::with_voters(ids.iter().map(|&i| NodeId(i)))
    }

    #[test]
    fn a_candidate_counts_its_own_vote_only_once_durable() {
        let m = voters(&[1, 2, 3]);
        let mut c = CandidateState::campaign();
        c.record(NodeId(2), true);
        assert_eq!(c.result(&m), VoteResult::Pending);
        assert!(c.own_vote_durable(NodeId(1)));
        assert_eq!(c.result(&m), VoteResult::Won);
        assert!(!c.own_vote_durable(NodeId(1)), "counted once");
    }

    #[test]
    fn a_pre_candidate_counts_its_own_vote_at_once_and_the_first_answer_wins() {
        let m = voters(&[1, 2, 3]);
        let mut c = CandidateState::pre_campaign(NodeId(1));
        assert!(!c.own_vote_durable(NodeId(1)));
        c.record(NodeId(2), false);
        c.record(NodeId(2), true);
        assert_eq!(c.result(&m), VoteResult::Pending);
        c.record(NodeId(3), false);
        assert_eq!(c.result(&m), VoteResult::Lost);
    }
}
