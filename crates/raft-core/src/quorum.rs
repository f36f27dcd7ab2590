//! Quorum arithmetic: majorities of votes and of match indexes, simple and joint (§6).
//!
//! Kept apart from the role logic so that it can be checked on its own: every decision that
//! needs "a majority of the cluster" goes through here.

use std::collections::BTreeSet;

use raftline_proto::{LogIndex, Membership, NodeId};

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority granted.
    Won,
    /// A majority can no longer be reached.
    Lost,
    /// Not decided yet.
    Pending,
}

/// The votes `granted(id)` reports (`Some(true)` granted, `Some(false)` refused, `None` not
/// heard) counted over one set of voters. An empty set wins: it places no constraint.
pub fn majority_vote(
    voters: &BTreeSet<NodeId>,
    granted: impl Fn(NodeId) -> Option<bool>,
) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let need = voters.len() / 2 + 1;
    let (mut yes, mut missing) = (0, 0);
    for &id in voters {
        match granted(id) {
            Some(true) => yes += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    if yes >= need {
        VoteResult::Won
    } else if yes + missing >= need {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// Votes counted over a (possibly joint) configuration: both halves must win.
pub fn joint_vote(membership: &Membership, granted: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    let incoming = majority_vote(&membership.voters, &granted);
    let outgoing = majority_vote(&membership.voters_outgoing, &granted);
    match (incoming, outgoing) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

/// Configurations of up to this many voters are ranked in an array on the stack: the commit
/// index is computed on every acknowledgement, without allocating.
const STACK_VOTERS_MAX: usize = 16;

/// The highest index that a majority of `voters` has (per `match_index`). An empty set gives
/// `LogIndex(u64::MAX)`, so that it never constrains a joint configuration.
pub fn majority_index(
    voters: &BTreeSet<NodeId>,
    match_index: impl Fn(NodeId) -> LogIndex,
) -> LogIndex {
    // With n voters, the (n/2 + 1)-th highest index is held by a majority.
    let rank = voters.len() / 2;
    if voters.is_empty() {
        LogIndex(u64::MAX)
    } else if voters.len() <= STACK_VOTERS_MAX {
        let mut matched = [LogIndex(0); STACK_VOTERS_MAX];
        for (slot, &id) in matched.iter_mut().zip(voters) {
            *slot = match_index(id);
        }
        nth_highest(&mut matched[..voters.len()], rank)
    } else {
        let mut matched: Vec<LogIndex> = voters.iter().map(|&id| match_index(id)).collect();
        nth_highest(&mut matched, rank)
    }
}

/// The `rank`-th highest of `indexes` (0 is the highest); reorders them.
fn nth_highest(indexes: &mut [LogIndex], rank: usize) -> LogIndex {
    *indexes.select_nth_unstable_by(rank, |a, b| b.cmp(a)).1
}

/// The highest index a majority of both halves of a joint configuration has.
pub fn joint_index(membership: &Membership, match_index: impl Fn(NodeId) -> LogIndex) -> LogIndex {
    let incoming = majority_index(&membership.voters, &match_index);
    let outgoing = majority_index(&membership.voters_outgoing, &match_index);
    incoming.min(outgoing)
}

/// Whether the nodes for which `active(id)` holds form a quorum of the configuration.
pub fn is_quorum(membership: &Membership, active: impl Fn(NodeId) -> bool) -> bool {
    joint_vote(membership, |id| Some(active(id))) == VoteResult::Won
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|&i| NodeId(i)).collect()
    }

    #[test]
    fn majority_index_is_the_median_from_the_top() {
        let voters = ids(&[1, 2, 3]);
        let m = |id: NodeId| LogIndex([0, 5, 7, 9][id.0 as usize]);
        assert_eq!(majority_index(&voters, m), LogIndex(7));
        let voters = ids(&[1, 2, 3, 4]);
        let m = |id: NodeId| LogIndex([0, 5, 7, 9, 1][id.0 as usize]);
        // 4 voters need 3: the third highest.
        assert_eq!(majority_index(&voters, m), LogIndex(5));
        assert_eq!(majority_index(&ids(&[1]), |_| LogIndex(4)), LogIndex(4));
    }

    #[test]
    fn majority_index_agrees_with_sorting_on_the_stack_and_beyond_it() {
        let mut rng = crate::Rng::new(7);
        for n in 1..=2 * STACK_VOTERS_MAX as u64 + 1 {
            let voters = ids(&(1..=n).collect::<Vec<_>>());
            let matched: Vec<LogIndex> = (0..=n).map(|_| LogIndex(rng.below(20))).collect();
            let mut sorted: Vec<LogIndex> = matched[1..].to_vec();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            let m = |id: NodeId| matched[id.0 as usize];
            assert_eq!(
                majority_index(&voters, m),
                sorted[n as usize / 2],
                "{n} voters"
            );
        }
    }

    #[test]
    fn joint_index_needs_both_halves() {
        let m = Membership {
            voters: ids(&[1, 2, 3]),
            voters_outgoing: ids(&[3, 4, 5]),
            ..Membership::default()
        };
        let idx = |id: NodeId| LogIndex([0, 9, 9, 9, 1, 1][id.0 as usize]);
        assert_eq!(joint_index(&m, idx), LogIndex(1));
        let idx = |id: NodeId| LogIndex([0, 9, 9, 2, 5, 1][id.0 as usize]);
        assert_eq!(joint_index(&m, idx), LogIndex(2));
        let simple = Membership::with_voters(ids(&[1, 2, 3]));
        assert_eq!(joint_index(&simple, idx), LogIndex(9));
    }

    #[test]
    fn votes() {
        let voters = ids(&[1, 2, 3, 4, 5]);
        let v = |yes: &'static [u64], no: &'static [u64]| {
            majority_vote(&voters, move |id| {
                if yes.contains(&id.0) {
                    Some(true)
                } else if no.contains(&id.0) {
                    Some(false)
                } else {
                    None
                }
            })
        };
        assert_eq!(v(&[1, 2, 3], &[]), VoteResult::Won);
        assert_eq!(v(&[1, 2], &[3]), VoteResult::Pending);
        assert_eq!(v(&[1, 2], &[3, 4, 5]), VoteResult::Lost);
        assert_eq!(v(&[1], &[2, 3]), VoteResult::Pending);
        assert_eq!(v(&[], &[1, 2, 3]), VoteResult::Lost);
    }

    #[test]
    fn joint_votes_need_both_halves_and_learners_never_count() {
        let m = Membership {
            voters: ids(&[1, 2, 3]),
            learners: ids(&[9]),
            voters_outgoing: ids(&[1, 4, 5]),
        };
        let yes = |set: &'static [u64]| move |id: NodeId| Some(set.contains(&id.0));
        assert_eq!(joint_vote(&m, yes(&[1, 2])), VoteResult::Lost);
        assert_eq!(joint_vote(&m, yes(&[1, 2, 4])), VoteResult::Won);
        assert_eq!(joint_vote(&m, yes(&[2, 3, 4, 5, 9])), VoteResult::Won);
        assert_eq!(joint_vote(&m, yes(&[2, 3, 9])), VoteResult::Lost);
        assert!(!is_quorum(
            &Membership::with_voters(ids(&[1, 2, 3])),
            |id| id.0 == 9 || id.0 == 1
        ));
    }
}
