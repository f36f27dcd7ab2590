//! The leader's view of each follower's replication (§5.3), with flow control.

use std::collections::VecDeque;

use raft_proto::LogIndex;

/// How the leader sends to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The follower's match index is unknown: send one append at a time and wait for the answer
    /// before the next, backtracking with the conflict hints.
    Probe,
    /// The follower accepted the last probe: stream appends optimistically, up to
    /// `inflight_msgs_max` unacknowledged messages.
    Replicate,
}

/// One follower's replication progress, kept by the leader.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to be replicated on the follower. Invariant: `match_index <
    /// next_index`.
    pub match_index: LogIndex,
    /// The index of the next entry to send.
    pub next_index: LogIndex,
    /// Probe or replicate.
    pub state: ProgressState,
    /// In probe state: a probe is outstanding, wait for its answer (or a heartbeat answer).
    pub probe_sent: bool,
    /// The last index of every append in flight, oldest first. Bounded by `inflight_msgs_max`.
    pub inflight: VecDeque<LogIndex>,
    /// Whether the follower was heard from since the last check-quorum round.
    pub recent_active: bool,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex(0),
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
        }
    }

    /// Whether the leader must wait before sending more appends.
    pub(crate) fn is_paused(&self, inflight_msgs_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= inflight_msgs_max,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Records that an append ending at `last` was sent.
    pub(crate) fn sent(&mut self, last: LogIndex, inflight_msgs_max: usize) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Replicate => {
                if last >= self.next_index {
                    self.next_index = last.next();
                    debug_assert!(self.inflight.len() < inflight_msgs_max);
                    self.inflight.push_back(last);
                }
            }
        }
    }

    /// The follower has everything up to `index`. Returns whether the match index moved.
    pub(crate) fn acked(&mut self, index: LogIndex) -> bool {
        while self.inflight.front().is_some_and(|&i| i <= index) {
            self.inflight.pop_front();
        }
        self.probe_sent = false;
        if index <= self.match_index {
            return false;
        }
        self.match_index = index;
        self.next_index = self.next_index.max(index.next());
        true
    }
}
