//! Configuration changes (§6 of the paper, chapter 4 of the dissertation): what a change asks
//! for, how it is planned, and which configuration is in force on a node.
//!
//! A configuration takes effect on a node as soon as its entry is in the node's log,
//! committed or not; a truncated configuration entry reverts to the one before it.
//! [`ConfigLog`] keeps the configuration entries of the log for that.

use std::collections::BTreeSet;

use raftline_proto::{LogIndex, Membership, NodeId};

/// A change to the cluster's configuration, proposed on the leader with
/// [`RawNode::propose_membership`](crate::RawNode::propose_membership).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a server as a learner: it receives the log but never votes.
    AddLearner(NodeId),
    /// Add a server as a voter: first as a learner; the leader promotes it once it has caught
    /// up (see [`Promote`](Self::Promote)).
    AddVoter(NodeId),
    /// Make a learner a voter once it has caught up: rounds of replication, each bringing it
    /// to the leader's last index at the round's start, until one round takes less than an
    /// election timeout. After `catch_up_rounds_max` rounds the change fails.
    Promote(NodeId),
    /// Remove a voter or a learner. Removing the leader is allowed: it commits the new
    /// configuration, then steps down.
    Remove(NodeId),
    /// Any new configuration. New voters must already be members (add them as learners
    /// first). When more than one voter changes, the change goes through the joint
    /// configuration (old and new voters must both agree) and the leader leaves it once it is
    /// committed; a change of at most one voter takes one step.
    Replace {
        /// The voters of the new configuration.
        voters: BTreeSet<NodeId>,
        /// The learners of the new configuration.
        learners: BTreeSet<NodeId>,
    },
}

/// The outcome of a change, reported in [`Ready::membership_results`](crate::Ready).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipResult {
    /// The id the caller gave the change.
    pub request_id: u64,
    /// The configuration in force once the change committed, or why it failed.
    pub result: Result<Membership, MembershipError>,
}

/// Why a configuration change failed after it was accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The learner did not catch up within `catch_up_rounds_max` rounds; it stays a learner.
    #[error("{id} did not catch up within {rounds} rounds of replication; it stays a learner")]
    CatchUpFailed {
        /// The learner.
        id: NodeId,
        /// The rounds tried.
        rounds: u32,
    },
    /// The server to promote is no longer a learner.
    #[error("{id} is no longer a learner")]
    NotALearner {
        /// The server.
        id: NodeId,
    },
    /// Leadership was lost before the change finished; a configuration entry already in the
    /// log may still commit under the next leader.
    #[error("leadership lost before the change finished; it may still take effect")]
    LeadershipLost,
}

/// Why a configuration change cannot start yet. Retry once the condition passes (a few
/// heartbeats at most, unless a learner is still catching up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeBlocked {
    /// Another configuration change is in progress (or the joint configuration of the last
    /// one has not been left yet).
    #[error("another configuration change is in progress; retry once it is done")]
    ChangeInProgress,
    /// This leader has not committed an entry of its term yet, so it may not know the latest
    /// committed configuration (the bug in the dissertation's single-server changes).
    #[error("this leader has not committed an entry of its term yet; retry shortly")]
    LeaderNotSettled,
}

/// Why a configuration change, or a leadership transfer, was refused: as asked, it cannot
/// succeed in the current configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The server to add is already a member.
    #[error("{0} is already a member")]
    AlreadyMember(NodeId),
    /// The server to promote is not a learner.
    #[error("{0} is not a learner")]
    NotALearner(NodeId),
    /// The server to remove is not a member.
    #[error("{0} is not a member")]
    NotAMember(NodeId),
    /// The new configuration names a server as both voter and learner.
    #[error("{0} cannot be both a voter and a learner")]
    VoterAndLearner(NodeId),
    /// A new voter is not a member yet: add it as a learner first, so that it catches up
    /// before it votes.
    #[error(
        "{0} is not a member yet: add it as a learner first, so that it catches up before it votes"
    )]
    NewVoter(NodeId),
    /// A voter cannot become a learner in one step: remove it first.
    #[error("{0} is a voter: remove it before adding it back as a learner")]
    VoterToLearner(NodeId),
    /// The configuration would have no voter.
    #[error("the configuration must keep at least one voter")]
    NoVoters,
    /// Leadership goes to voters only, and the target is not one.
    #[error("{0} is not a voter of the configuration; leadership goes to voters only")]
    NotAVoter(NodeId),
}

/// The next configuration on the way to `target` from `current`, and whether it is the last
/// step. `Err` says why the change is refused.
pub(crate) fn plan(
    current: &Membership,
    change: &MembershipChange,
) -> Result<(Membership, bool), Refusal> {
    let mut voters = current.voters.clone();
    let mut learners = current.learners.clone();
    match change {
        MembershipChange::AddLearner(id) | MembershipChange::AddVoter(id) => {
            if current.members().contains(id) {
                return Err(Refusal::AlreadyMember(*id));
            }
            learners.insert(*id);
        }
        MembershipChange::Promote(id) => {
            if !current.learners.contains(id) {
                return Err(Refusal::NotALearner(*id));
            }
            learners.remove(id);
            voters.insert(*id);
        }
        MembershipChange::Remove(id) => {
            if !current.members().contains(id) {
                return Err(Refusal::NotAMember(*id));
            }
            voters.remove(id);
            learners.remove(id);
        }
        MembershipChange::Replace {
            voters: v,
            learners: l,
        } => {
            if let Some(id) = v.intersection(l).next() {
                return Err(Refusal::VoterAndLearner(*id));
            }
            if let Some(id) = v.iter().find(|id| !current.members().contains(id)) {
                return Err(Refusal::NewVoter(*id));
            }
            if let Some(id) = l.iter().find(|id| current.voters.contains(id)) {
                return Err(Refusal::VoterToLearner(*id));
            }
            voters = v.clone();
            learners = l.clone();
        }
    }
    if voters.is_empty() {
        return Err(Refusal::NoVoters);
    }
    let changed = voters.symmetric_difference(&current.voters).count();
    if changed <= 1 {
        // One voter at a time is safe without a joint configuration (§4.1 of the
        // dissertation), given one change at a time and the leader's own-term commit first.
        return Ok((
            Membership {
                voters,
                learners,
                voters_outgoing: BTreeSet::new(),
            },
            true,
        ));
    }
    Ok((
        Membership {
            voters,
            learners,
            voters_outgoing: current.voters.clone(),
        },
        false,
    ))
}

/// Whether `id` is a voter (of either half) or a learner of `membership`.
pub(crate) fn is_member(membership: &Membership, id: NodeId) -> bool {
    membership.is_voter(id) || membership.learners.contains(&id)
}

/// The configuration leaving a committed joint one: the incoming voters alone.
pub(crate) fn leave_joint(joint: &Membership) -> Membership {
    Membership {
        voters: joint.voters.clone(),
        learners: joint.learners.clone(),
        voters_outgoing: BTreeSet::new(),
    }
}

/// The configuration entries of a node's log, latest last, over the configuration in force
/// before them (from the snapshot or the store).
#[derive(Clone, Debug, Default)]
pub(crate) struct ConfigLog {
    base: Membership,
    /// Invariant: indexes strictly increase.
    entries: Vec<(LogIndex, Membership)>,
}

impl ConfigLog {
    pub(crate) fn new(base: Membership) -> ConfigLog {
        ConfigLog {
            base,
            entries: Vec::new(),
        }
    }

    /// The configuration in force: the latest entry's, else the base.
    pub(crate) fn current(&self) -> &Membership {
        self.entries.last().map_or(&self.base, |(_, m)| m)
    }

    /// The index of the latest configuration entry (0 when the base is in force).
    pub(crate) fn current_index(&self) -> LogIndex {
        self.entries.last().map_or(LogIndex(0), |(i, _)| *i)
    }

    /// A configuration entry was appended at `index`.
    pub(crate) fn appended(&mut self, index: LogIndex, membership: Membership) {
        self.truncate(index);
        self.entries.push((index, membership));
    }

    /// The log was cut from `index` on: configurations defined there are gone.
    pub(crate) fn truncate(&mut self, index: LogIndex) {
        while self.entries.last().is_some_and(|(i, _)| *i >= index) {
            self.entries.pop();
        }
    }

    /// The log was replaced by a snapshot whose configuration is `membership`.
    pub(crate) fn reset(&mut self, membership: Membership) {
        self.base = membership;
        self.entries.clear();
    }

    /// The store's snapshot at or after the log's start has `membership`: it is the
    /// configuration before the first entry kept.
    pub(crate) fn set_base(&mut self, membership: Membership) {
        self.base = membership;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|&i| NodeId(i)).collect()
    }

    fn voters(v: &[u64]) -> Membership {
        Membership::with_voters(ids(v))
    }

    #[test]
    fn one_voter_changes_in_one_step_more_go_through_the_joint_configuration() {
        let m = Membership {
            learners: ids(&[4, 5]),
            ..voters(&[1, 2, 3])
        };
        let (next, last) = plan(&m, &MembershipChange::Promote(NodeId(4))).unwrap();
        assert!(last);
        assert_eq!(next.voters, ids(&[1, 2, 3, 4]));
        assert_eq!(next.learners, ids(&[5]));
        let replace = MembershipChange::Replace {
            voters: ids(&[1, 4, 5]),
            learners: ids(&[]),
        };
        let (joint, last) = plan(&m, &replace).unwrap();
        assert!(!last);
        assert!(joint.is_joint());
        assert_eq!(joint.voters, ids(&[1, 4, 5]));
        assert_eq!(joint.voters_outgoing, ids(&[1, 2, 3]));
        assert_eq!(leave_joint(&joint).voters, ids(&[1, 4, 5]));
        assert!(!leave_joint(&joint).is_joint());
    }

    #[test]
    fn refused_changes_say_why() {
        let m = Membership {
            learners: ids(&[4]),
            ..voters(&[1, 2, 3])
        };
        let refused = |c: MembershipChange| plan(&m, &c).unwrap_err();
        let n = NodeId;
        assert_eq!(
            refused(MembershipChange::AddLearner(n(2))),
            Refusal::AlreadyMember(n(2))
        );
        assert_eq!(
            refused(MembershipChange::Promote(n(3))),
            Refusal::NotALearner(n(3))
        );
        assert_eq!(
            refused(MembershipChange::Remove(n(9))),
            Refusal::NotAMember(n(9))
        );
        let unknown_voter = MembershipChange::Replace {
            voters: ids(&[1, 2, 9]),
            learners: ids(&[]),
        };
        assert_eq!(refused(unknown_voter), Refusal::NewVoter(n(9)));
        assert!(Refusal::NewVoter(n(9))
            .to_string()
            .contains("add it as a learner first"));
        let one = voters(&[1]);
        assert_eq!(
            plan(&one, &MembershipChange::Remove(n(1))),
            Err(Refusal::NoVoters)
        );
    }

    #[test]
    fn a_truncated_configuration_entry_reverts_to_the_one_before() {
        let mut log = ConfigLog::new(voters(&[1, 2, 3]));
        log.appended(LogIndex(5), voters(&[1, 2, 3, 4]));
        log.appended(LogIndex(9), voters(&[1, 2, 4]));
        assert_eq!(log.current(), &voters(&[1, 2, 4]));
        log.truncate(LogIndex(7));
        assert_eq!(log.current(), &voters(&[1, 2, 3, 4]));
        assert_eq!(log.current_index(), LogIndex(5));
        log.truncate(LogIndex(5));
        assert_eq!(log.current(), &voters(&[1, 2, 3]));
        assert_eq!(log.current_index(), LogIndex(0));
    }
}
