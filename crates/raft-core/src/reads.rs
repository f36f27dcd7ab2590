//! Linearizable reads (§6.4 of the dissertation): the leader's queue of reads waiting for a
//! heartbeat round to confirm it still leads ([`LeaderReads`]), and a follower's reads
//! forwarded to the leader ([`ForwardedReads`]).
//!
//! These hold state and decide which reads are confirmed; `Raft` answers them (locally in
//! `Ready::read_states`, or to the follower that forwarded the read).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use raftline_proto::{LogIndex, Membership, NodeId};

use crate::quorum;

/// The outcome of a read-index request (§6.4 of the dissertation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The id the caller gave [`RawNode::read_index`](crate::RawNode::read_index).
    pub request_id: u64,
    /// Once the state machine has applied this index, a read reflects every write committed
    /// before the request. `None`: leadership could not be confirmed (no leader, or it lost
    /// its term); retry.
    pub index: Option<LogIndex>,
}

/// A read waiting for the leader to confirm it still leads.
pub(crate) struct PendingRead {
    /// Who asked: the leader itself or a follower that forwarded it.
    pub(crate) from: NodeId,
    pub(crate) request_id: u64,
    /// The commit index when the read arrived: the read point once confirmed.
    pub(crate) index: LogIndex,
    /// Confirmed once a quorum answered a heartbeat with a context at least this one.
    pub(crate) context: u64,
}

/// The leader's reads of this term. Bounded (together) by `read_requests_max`.
#[derive(Default)]
pub(crate) struct LeaderReads {
    /// Reads being confirmed, oldest first (contexts increase along the queue).
    queue: VecDeque<PendingRead>,
    /// Reads that arrived before the leader committed an entry of its term (until then its
    /// commit index may lag the cluster's).
    before_commit: Vec<(NodeId, u64)>,
    /// The highest read context each peer has answered in this term.
    acked: BTreeMap<NodeId, u64>,
}

impl LeaderReads {
    /// Reads queued, confirming or waiting for the first commit.
    pub(crate) fn len(&self) -> usize {
        self.queue.len() + self.before_commit.len()
    }

    /// Whether reads wait for a heartbeat round.
    pub(crate) fn confirming(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Holds a read until an entry of the leader's term commits.
    pub(crate) fn defer(&mut self, from: NodeId, request_id: u64) {
        self.before_commit.push((from, request_id));
    }

    /// The reads held until the first commit of the term, oldest first.
    pub(crate) fn take_deferred(&mut self) -> Vec<(NodeId, u64)> {
        std::mem::take(&mut self.before_commit)
    }

    /// Queues a read to confirm; its context must be above every queued one.
    pub(crate) fn push(&mut self, read: PendingRead) {
        debug_assert!(self.queue.back().is_none_or(|r| r.context < read.context));
        self.queue.push_back(read);
    }

    /// `from` answered a heartbeat carrying `context`.
    pub(crate) fn ack(&mut self, from: NodeId, context: u64) {
        let acked = self.acked.entry(from).or_insert(0);
        *acked = (*acked).max(context);
    }

    /// Takes the reads whose context a quorum (with the leader, `id`) has acknowledged,
    /// oldest first.
    pub(crate) fn take_confirmed(
        &mut self,
        membership: &Membership,
        id: NodeId,
    ) -> Vec<PendingRead> {
        let mut confirmed = Vec::new();
        while let Some(front) = self.queue.front() {
            let context = front.context;
            let acked = &self.acked;
            let quorum = quorum::is_quorum(membership, |n| {
                n == id || acked.get(&n).is_some_and(|&c| c >= context)
            });
            if !quorum {
                break;
            }
            confirmed.extend(self.queue.pop_front());
        }
        confirmed
    }

    /// Every read still waiting, confirming ones first: leadership is lost and none can be
    /// confirmed any more.
    pub(crate) fn into_waiting(self) -> Vec<(NodeId, u64)> {
        self.queue
            .into_iter()
            .map(|r| (r.from, r.request_id))
            .chain(self.before_commit)
            .collect()
    }
}

/// Reads a follower forwarded to the leader of the current term, awaiting an answer. A
/// duplicated or stale answer matches nothing here and is dropped. Bounded by
/// `read_requests_max`. A request or answer the network lost is asked again after an
/// election timeout ([`ForwardedReads::tick`]), so a lost message costs a read some delay,
/// never the read itself or its slot in the bound.
#[derive(Default)]
pub(crate) struct ForwardedReads {
    waiting: BTreeSet<u64>,
    /// Ticks since the waiting reads were last (re)sent.
    ticks: u32,
}

impl ForwardedReads {
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    pub(crate) fn insert(&mut self, request_id: u64) {
        if self.waiting.is_empty() {
            self.ticks = 0;
        }
        self.waiting.insert(request_id);
    }

    /// Whether `request_id` was waiting (it no longer is).
    pub(crate) fn remove(&mut self, request_id: u64) -> bool {
        self.waiting.remove(&request_id)
    }

    /// A tick: every `every` ticks while reads wait, the ones to ask the leader again. Asking
    /// twice is safe: the leader confirms each request anew, and the second answer matches
    /// nothing here.
    pub(crate) fn tick(&mut self, every: u32) -> Vec<u64> {
        if self.waiting.is_empty() {
            return Vec::new();
        }
        self.ticks += 1;
        if self.ticks < every {
            return Vec::new();
        }
        self.ticks = 0;
        self.waiting.iter().copied().collect()
    }

    /// The reads still waiting, by request id: none will be answered any more.
    pub(crate) fn into_waiting(self) -> impl Iterator<Item = u64> {
        self.waiting.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(context: u64) -> PendingRead {
        PendingRead {
            from: NodeId(1),
            request_id: context,
            index: LogIndex(7),
            context,
        }
    }

    #[test]
    fn reads_are_confirmed_in_order_once_a_quorum_acknowledged_their_context() {
        let m = Membership::with_voters([1, 2, 3].map(NodeId));
        let mut reads = LeaderReads::default();
        reads.push(read(1));
        reads.push(read(2));
        assert!(reads.take_confirmed(&m, NodeId(1)).is_empty());
        reads.ack(NodeId(2), 1);
        let done = reads.take_confirmed(&m, NodeId(1));
        assert_eq!(done.iter().map(|r| r.context).collect::<Vec<_>>(), [1]);
        // An older answer does not lower what a peer acknowledged.
        reads.ack(NodeId(3), 2);
        reads.ack(NodeId(3), 1);
        assert_eq!(reads.take_confirmed(&m, NodeId(1)).len(), 1);
        assert!(!reads.confirming());
    }

    #[test]
    fn forwarded_reads_are_asked_again_every_election_timeout_while_they_wait() {
        let mut reads = ForwardedReads::default();
        assert!(reads.tick(3).is_empty());
        reads.insert(7);
        reads.insert(9);
        assert!(reads.tick(3).is_empty());
        assert!(reads.tick(3).is_empty());
        assert_eq!(reads.tick(3), [7, 9]);
        assert!(reads.remove(7));
        assert!(!reads.remove(7), "a second answer matches nothing");
        assert!(reads.tick(3).is_empty());
        assert!(reads.tick(3).is_empty());
        assert_eq!(reads.tick(3), [9]);
        assert!(reads.remove(9));
        assert!(reads.tick(1).is_empty());
    }

    #[test]
    fn waiting_reads_come_back_confirming_first() {
        let mut reads = LeaderReads::default();
        reads.defer(NodeId(2), 10);
        reads.push(read(3));
        assert_eq!(reads.len(), 2);
        assert_eq!(reads.into_waiting(), [(NodeId(1), 3), (NodeId(2), 10)]);
    }
}
