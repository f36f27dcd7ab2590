//! Forwarding: a follower passes a proposal to the leader over the raft transport and
//! resolves its caller with the leader's answer (cornerstone's `send_msg_to_leader`).
//!
//! The follower's side is [`Forwarder`]: the proposals it sent and waits for, each with a
//! deadline in ticks. The leader's side is [`outcome`] and [`refusal`]: a forwarded
//! proposal is proposed like a local one, and whatever resolves it goes back as a
//! [`ForwardResponse`].
//!
//! Invariants: a forwarded proposal is answered at most once, and every one is answered:
//! by the leader, by the deadline, or when the node stops. The leader proposes each
//! forwarded request once, however often the transport delivers it ([`Seen`], over the
//! last `forwards_remembered_max` requests).

use std::collections::{BTreeMap, HashSet, VecDeque};

use bytes::Bytes;
use futures::channel::oneshot;
use raftline_proto::{
    ForwardOutcome, ForwardRefusal, ForwardRequest, ForwardResponse, Message, MessageBody, NodeId,
    Term,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{Busy, NodeError, Unknown};
use crate::error::Error;
use crate::rng::Rng;

/// Where the answer to a proposal goes.
pub(super) type Reply<R> = oneshot::Sender<Result<R, NodeError>>;

/// A forwarded proposal waiting for the leader's answer.
struct Pending<R> {
    leader: NodeId,
    deadline: u64,
    reply: Reply<R>,
}

/// The follower's side: proposals forwarded and not answered yet.
pub(super) struct Forwarder<R> {
    /// By request id; ids grow with time, so the first has the earliest deadline.
    pending: BTreeMap<u64, Pending<R>>,
    next_id: u64,
    /// Ticks seen.
    now: u64,
    timeout_ticks: u64,
    pending_max: usize,
    /// The last leader this node knew of.
    leader: Option<NodeId>,
}

impl<R: DeserializeOwned> Forwarder<R> {
    /// A forwarder whose request ids start at a point drawn from `seed`: a node restarted
    /// with another seed does not take an answer meant for its previous run for one of its
    /// own.
    pub(super) fn new(seed: u64, timeout_ticks: u64, pending_max: usize) -> Self {
        Forwarder {
            pending: BTreeMap::new(),
            next_id: Rng::new(seed ^ 0xF0_4A4D).next_u64() >> 1,
            now: 0,
            timeout_ticks,
            pending_max,
            leader: None,
        }
    }

    /// The message that forwards `command` from `from` (in `term`) to `leader`, or the
    /// caller's reply back when too many forwards wait already.
    pub(super) fn forward(
        &mut self,
        (from, term): (NodeId, Term),
        leader: NodeId,
        command: Bytes,
        reply: Reply<R>,
    ) -> Option<Message> {
        if self.pending.len() >= self.pending_max {
            let max = self.pending_max;
            let _ = reply.send(Err(NodeError::Busy(Busy::Forwards { max })));
            return None;
        }
        self.next_id += 1;
        let deadline = self.now + self.timeout_ticks;
        let pending = Pending {
            leader,
            deadline,
            reply,
        };
        self.pending.insert(self.next_id, pending);
        let body = MessageBody::Forward(ForwardRequest {
            request_id: self.next_id,
            command,
        });
        Some(Message {
            from,
            to: leader,
            term,
            body,
        })
    }

    /// A tick: forwards past their deadline resolve as unanswered (their outcome is unknown).
    pub(super) fn tick(&mut self) {
        self.now += 1;
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().deadline > self.now {
                break;
            }
            let p = entry.remove();
            let leader = p.leader;
            let _ = p
                .reply
                .send(Err(NodeError::OutcomeUnknown(Unknown::ForwardUnanswered {
                    leader,
                })));
        }
    }

    /// This node now knows `leader` leads (or no leader). Once another leader than the one a
    /// proposal went to is known, that one's answer is not waited for: the proposal may
    /// still commit under the new leader, or never; its caller hears that the outcome is
    /// unknown now rather than at the deadline.
    pub(super) fn leader_is(&mut self, leader: Option<NodeId>) {
        if leader.is_none() || leader == self.leader {
            return;
        }
        self.leader = leader;
        let stale: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| Some(p.leader) != leader)
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            let p = self.pending.remove(&id).expect("listed above");
            let unknown = Unknown::LeaderChanged { leader: p.leader };
            let _ = p.reply.send(Err(NodeError::OutcomeUnknown(unknown)));
        }
    }

    /// The leader's answer. One from another node than the one asked is ignored.
    pub(super) fn answered(
        &mut self,
        from: NodeId,
        response: ForwardResponse,
        addresses: &BTreeMap<NodeId, String>,
    ) {
        let id = response.request_id;
        if self.pending.get(&id).is_none_or(|p| p.leader != from) {
            return;
        }
        let p = self.pending.remove(&id).expect("checked above");
        let leader = p.leader;
        let result = match response.outcome {
            ForwardOutcome::Applied(bytes) => postcard::from_bytes(&bytes)
                .map_err(|_| NodeError::OutcomeUnknown(Unknown::UndecodableResponse { leader })),
            ForwardOutcome::Refused(refusal) => Err(refused(refusal, addresses)),
            ForwardOutcome::Unknown => Err(NodeError::OutcomeUnknown(Unknown::AtLeader { leader })),
        };
        let _ = p.reply.send(result);
    }

    /// Answers every waiting caller with `error` (the node stops).
    pub(super) fn fail_all(&mut self, error: &NodeError) {
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(error.clone()));
        }
    }
}

/// The leader's memory of the forwarded proposals it took, so that a duplicated message is
/// not proposed twice (a transport may deliver a message more than once).
pub(super) struct Seen {
    set: HashSet<(NodeId, u64)>,
    /// Oldest first; the oldest is forgotten past `max`.
    order: VecDeque<(NodeId, u64)>,
    max: usize,
}

impl Seen {
    pub(super) fn new(max: usize) -> Seen {
        Seen {
            set: HashSet::new(),
            order: VecDeque::new(),
            max,
        }
    }

    /// Whether request `id` from `from` is new; remembers it.
    pub(super) fn first_time(&mut self, from: NodeId, id: u64) -> bool {
        if !self.set.insert((from, id)) {
            return false;
        }
        self.order.push_back((from, id));
        if self.order.len() > self.max {
            let oldest = self.order.pop_front().expect("longer than max");
            self.set.remove(&oldest);
        }
        true
    }
}

/// The caller's error for the leader's refusal.
fn refused(refusal: ForwardRefusal, addresses: &BTreeMap<NodeId, String>) -> NodeError {
    match refusal {
        ForwardRefusal::NotLeader { leader } => NodeError::NotLeader {
            leader,
            address: leader.and_then(|id| addresses.get(&id).cloned()),
        },
        ForwardRefusal::Busy { uncommitted } => NodeError::Busy(Busy::Uncommitted { uncommitted }),
        ForwardRefusal::TransferInProgress { to } => {
            NodeError::Busy(Busy::TransferInProgress { to })
        }
        ForwardRefusal::LeadershipLost => NodeError::LeadershipLost,
    }
}

/// The leader's answer for a forwarded proposal that resolved with `result`.
pub(super) fn outcome<R: Serialize>(result: Result<R, NodeError>) -> ForwardOutcome {
    match result {
        Ok(response) => match postcard::to_allocvec(&response) {
            Ok(bytes) => ForwardOutcome::Applied(Bytes::from(bytes)),
            // Applied, but the response cannot travel: the follower cannot know it.
            Err(_) => ForwardOutcome::Unknown,
        },
        Err(NodeError::LeadershipLost) => ForwardOutcome::Refused(ForwardRefusal::LeadershipLost),
        Err(_) => ForwardOutcome::Unknown,
    }
}

/// The leader's answer for a forwarded proposal its core refused.
pub(super) fn refusal(error: &Error) -> ForwardOutcome {
    match *error {
        Error::NotLeader { leader } => {
            ForwardOutcome::Refused(ForwardRefusal::NotLeader { leader })
        }
        Error::Busy { uncommitted } => {
            ForwardOutcome::Refused(ForwardRefusal::Busy { uncommitted })
        }
        Error::TransferInProgress { to } => {
            ForwardOutcome::Refused(ForwardRefusal::TransferInProgress { to })
        }
        _ => ForwardOutcome::Unknown,
    }
}

/// A [`ForwardResponse`] message from `from` to `to`.
pub(super) fn response(
    (from, term): (NodeId, Term),
    to: NodeId,
    request_id: u64,
    outcome: ForwardOutcome,
) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::ForwardResponse(ForwardResponse {
            request_id,
            outcome,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::oneshot;

    fn forward(
        f: &mut Forwarder<u64>,
        leader: u64,
    ) -> (u64, oneshot::Receiver<Result<u64, NodeError>>) {
        let (tx, rx) = oneshot::channel();
        let m = f.forward((NodeId(2), Term(1)), NodeId(leader), Bytes::new(), tx);
        let MessageBody::Forward(req) = m.expect("under the bound").body else {
            panic!("a forward");
        };
        (req.request_id, rx)
    }

    fn applied(id: u64, value: u64) -> ForwardResponse {
        let bytes = Bytes::from(postcard::to_allocvec(&value).unwrap());
        ForwardResponse {
            request_id: id,
            outcome: ForwardOutcome::Applied(bytes),
        }
    }

    #[test]
    fn an_answer_from_another_node_than_the_one_asked_is_ignored() {
        let mut f = Forwarder::new(7, 10, 8);
        let (id, mut rx) = forward(&mut f, 1);
        f.answered(NodeId(3), applied(id, 5), &BTreeMap::new());
        assert_eq!(rx.try_recv().unwrap(), None);
        f.answered(NodeId(1), applied(id, 5), &BTreeMap::new());
        assert_eq!(rx.try_recv().unwrap(), Some(Ok(5)));
    }

    #[test]
    fn runs_with_other_seeds_draw_other_ids() {
        let (mut a, mut b) = (
            Forwarder::<u64>::new(1, 10, 8),
            Forwarder::<u64>::new(2, 10, 8),
        );
        assert_ne!(forward(&mut a, 1).0, forward(&mut b, 1).0);
    }

    #[test]
    fn a_new_leader_ends_only_the_forwards_sent_to_another() {
        let mut f = Forwarder::new(7, 10, 8);
        f.leader_is(Some(NodeId(1)));
        let (_, mut to_old) = forward(&mut f, 1);
        let (_, mut to_new) = forward(&mut f, 3);
        f.leader_is(None);
        assert_eq!(
            to_old.try_recv().unwrap(),
            None,
            "no leader yet: keep waiting"
        );
        f.leader_is(Some(NodeId(3)));
        let unknown = Unknown::LeaderChanged { leader: NodeId(1) };
        assert_eq!(
            to_old.try_recv().unwrap(),
            Some(Err(NodeError::OutcomeUnknown(unknown)))
        );
        assert_eq!(to_new.try_recv().unwrap(), None);
    }

    #[test]
    fn seen_drops_duplicates_and_forgets_the_oldest_past_its_bound() {
        let mut seen = Seen::new(2);
        assert!(seen.first_time(NodeId(2), 1));
        assert!(!seen.first_time(NodeId(2), 1));
        assert!(seen.first_time(NodeId(3), 1), "ids are per follower");
        assert!(seen.first_time(NodeId(2), 2));
        assert!(seen.first_time(NodeId(2), 1), "forgotten past the bound");
    }
}
