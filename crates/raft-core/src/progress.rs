//! The leader's view of each follower's replication (§5.3), with flow control.

use std::collections::VecDeque;

use raftline_proto::{LogIndex, SnapshotMeta};

/// How the leader sends to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The follower's match index is unknown: send one append at a time and wait for the answer
    /// before the next, backtracking with the conflict hints.
    Probe,
    /// The follower accepted the last probe: stream appends optimistically, up to
    /// `inflight_msgs_max` unacknowledged messages.
    Replicate,
    /// The entries the follower needs were compacted away: a snapshot is being sent in
    /// chunks (see [`SnapshotTransfer`]); no appends go out until it is installed.
    Snapshot,
}

/// A chunked snapshot transfer to one follower (cornerstone's `snapshot_sync_ctx`).
///
/// The leader first sends a probe (an empty chunk at offset 0) and learns from the answer how
/// much of this snapshot the follower already holds, so a transfer interrupted by a dropped
/// connection or a leader change resumes where it stopped. Then it streams chunks of at most
/// `snapshot_chunk_bytes_max` bytes, at most `snapshot_chunks_inflight_max` unacknowledged.
#[derive(Clone, Debug)]
pub struct SnapshotTransfer {
    /// The snapshot being sent.
    pub meta: SnapshotMeta,
    /// The follower holds the snapshot's bytes `0..acked`.
    pub acked: u64,
    /// Bytes `0..sent` were sent. Invariant: `acked <= sent <= meta.size_bytes`, except that
    /// an answer may report more than was sent (the follower held more from before).
    pub sent: u64,
    /// The end offset of every chunk in flight, oldest first. Bounded by
    /// `snapshot_chunks_inflight_max`.
    pub inflight: VecDeque<u64>,
    /// A probe must go out before more chunks.
    pub probe_needed: bool,
    /// A probe is out; its answer sets `acked` and `sent` exactly.
    pub probing: bool,
    /// Heartbeat answers seen since `acked` last moved.
    pub(crate) stalled: u32,
    /// No chunk with data was sent yet.
    pub(crate) fresh: bool,
}

impl SnapshotTransfer {
    fn new(meta: SnapshotMeta) -> SnapshotTransfer {
        SnapshotTransfer {
            meta,
            acked: 0,
            sent: 0,
            inflight: VecDeque::new(),
            probe_needed: true,
            probing: false,
            stalled: 0,
            fresh: true,
        }
    }

    /// The follower answered with `next_offset`: it holds `0..next_offset`. A rejection or
    /// the answer to a probe is exact (the follower may hold less than before: it restarted or
    /// a chunk failed its checksum); any other answer only acknowledges.
    pub(crate) fn answered(&mut self, next_offset: u64, rejected: bool) {
        let next_offset = next_offset.min(self.meta.size_bytes);
        if rejected || self.probing {
            self.probing = false;
            self.stalled = 0;
            self.acked = next_offset;
            self.sent = next_offset;
            self.inflight.clear();
        } else {
            if next_offset > self.acked {
                self.stalled = 0;
            }
            self.acked = self.acked.max(next_offset);
            while self.inflight.front().is_some_and(|&end| end <= next_offset) {
                self.inflight.pop_front();
            }
            if next_offset > self.sent {
                // The follower holds more than this transfer sent (from an earlier leader).
                self.sent = next_offset;
                self.inflight.clear();
            }
        }
    }

    /// A heartbeat answer arrived. After `stall_heartbeats` of them without progress, chunks
    /// or their answers were lost: probe again and resend from what the follower holds.
    pub(crate) fn heartbeat_answered(&mut self, stall_heartbeats: u32) {
        self.stalled += 1;
        if self.stalled >= stall_heartbeats {
            self.stalled = 0;
            self.sent = self.acked;
            self.inflight.clear();
            self.probing = false;
            self.probe_needed = true;
            // The next chunk with data tells whether the transfer resumes or starts over.
            self.fresh = true;
        }
    }
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
    /// The snapshot transfer, in the snapshot state.
    pub snapshot: Option<SnapshotTransfer>,
    /// The highest commit index the follower learns from what was sent to it (each append
    /// tells the smaller of the leader's commit index and the append's last index): the
    /// leader sends a commit notice only when the follower would otherwise wait for a
    /// heartbeat to learn more.
    pub commit_sent: LogIndex,
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
            snapshot: None,
            commit_sent: LogIndex(0),
        }
    }

    /// Whether the leader must wait before sending more appends.
    pub(crate) fn is_paused(&self, inflight_msgs_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= inflight_msgs_max,
            ProgressState::Snapshot => true,
        }
    }

    /// Starts sending snapshot `meta` instead of entries.
    pub(crate) fn become_snapshot(&mut self, meta: SnapshotMeta) {
        self.state = ProgressState::Snapshot;
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot = Some(SnapshotTransfer::new(meta));
    }

    pub(crate) fn become_probe(&mut self) {
        self.snapshot = None;
        self.state = ProgressState::Probe;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflight.clear();
        // The follower may have restarted and forgotten what it was told.
        self.commit_sent = LogIndex(0);
    }

    pub(crate) fn become_replicate(&mut self) {
        self.snapshot = None;
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Records that an append ending at `last` was sent.
    pub(crate) fn sent(&mut self, last: LogIndex, inflight_msgs_max: usize) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
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
