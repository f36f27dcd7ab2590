//! Configuration of one Raft node.

use raftline_proto::{LogIndex, NodeId};

use crate::error::{ConfigError, Error, Result};

/// Everything that tunes one node. Times are in ticks: the caller decides how long a tick is.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id. Must not be 0.
    pub id: NodeId,
    /// A follower that hears nothing from a leader for a randomized timeout in
    /// `[election_ticks, 2 * election_ticks)` campaigns (§5.2).
    pub election_ticks: u32,
    /// The leader sends heartbeats every `heartbeat_ticks`. Must be less than `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Run a pre-vote round before a real election, so that a node cut off from the cluster
    /// cannot raise the term and depose a healthy leader when it returns (§9.6 of the
    /// dissertation).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within `election_ticks` steps down, and
    /// followers that heard from a leader within `election_ticks` refuse to vote (§6.2).
    pub check_quorum: bool,
    /// The most append messages in flight to one follower in the replicate state.
    pub inflight_msgs_max: usize,
    /// The most entries in one append message.
    pub append_entries_max: usize,
    /// The most bytes of entries in one append message (at least one entry is always sent).
    pub msg_bytes_max: usize,
    /// The most entries handed to the application for applying in one `Ready`.
    pub apply_entries_max: usize,
    /// The leader refuses proposals while this many entries wait for commit.
    pub uncommitted_entries_max: u64,
    /// The most read-index requests the leader confirms at once; more are refused.
    pub read_requests_max: usize,
    /// The most bytes of snapshot data in one chunk of a snapshot transfer.
    pub snapshot_chunk_bytes_max: usize,
    /// The most snapshot chunks in flight to one follower (with 1 MiB chunks, 64 MiB: on
    /// loopback a smaller window leaves the link idle while acknowledgements travel).
    pub snapshot_chunks_inflight_max: usize,
    /// A learner being promoted must catch up within this many rounds of replication (a
    /// round brings it to the leader's last index at the round's start; it has caught up when
    /// a round takes less than an election timeout), or the promotion fails.
    pub catch_up_rounds_max: u32,
    /// A node that learns a configuration without itself reports that it was removed after
    /// this many election timeouts without a leader. It never campaigns while outside.
    pub removed_election_timeouts: u32,
    /// The index the application's state machine has already applied. Entries up to it are
    /// not handed out for applying again after a restart.
    pub applied: LogIndex,
    /// The seed of the node's random source (election timeouts, and where the driver's ids
    /// for forwarded proposals start). Give each node its own, and a new one each time it
    /// starts (from the process id or the clock): a node restarted with the same seed could
    /// take a late answer to a proposal it forwarded before the restart for the answer to
    /// one it forwarded after.
    pub seed: u64,
}

impl Config {
    /// A configuration with the defaults for `id`.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            inflight_msgs_max: 256,
            append_entries_max: 1024,
            msg_bytes_max: 1 << 20,
            apply_entries_max: 4096,
            uncommitted_entries_max: 1 << 16,
            read_requests_max: 4096,
            snapshot_chunk_bytes_max: 1 << 20,
            snapshot_chunks_inflight_max: 64,
            catch_up_rounds_max: 10,
            removed_election_timeouts: 3,
            applied: LogIndex(0),
            seed: id.0,
        }
    }

    /// Checks the bounds that the rest of the core relies on.
    pub fn validate(&self) -> Result<()> {
        if self.id == NodeId(0) {
            return Err(Error::Config(ConfigError::ZeroId));
        }
        let counts = [
            ("heartbeat_ticks", self.heartbeat_ticks as u64),
            ("inflight_msgs_max", self.inflight_msgs_max as u64),
            ("append_entries_max", self.append_entries_max as u64),
            ("apply_entries_max", self.apply_entries_max as u64),
            (
                "snapshot_chunk_bytes_max",
                self.snapshot_chunk_bytes_max as u64,
            ),
            (
                "snapshot_chunks_inflight_max",
                self.snapshot_chunks_inflight_max as u64,
            ),
            ("catch_up_rounds_max", self.catch_up_rounds_max as u64),
            ("uncommitted_entries_max", self.uncommitted_entries_max),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, value)| *value == 0) {
            return Err(Error::Config(ConfigError::Zero(name)));
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(Error::Config(ConfigError::ElectionNotAboveHeartbeat));
        }
        Ok(())
    }
}
