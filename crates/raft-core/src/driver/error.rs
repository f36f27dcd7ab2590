//! [`NodeError`]: why a request to a running node failed, and whether its command may have
//! been applied.

use raftline_proto::{LogIndex, NodeId};

use crate::error::{ConfigError, SnapshotError, StorageError};
use crate::membership::{ChangeBlocked, Refusal};

/// Why a request failed.
///
/// For a proposal, each variant says whether the command may have been applied: only
/// [`OutcomeUnknown`](Self::OutcomeUnknown) leaves that open (and the stopping failures,
/// [`ShuttingDown`](Self::ShuttingDown), [`Storage`](Self::Storage) and
/// [`Restore`](Self::Restore), for a proposal already in the log); every other failure
/// means it was not applied and may be proposed again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// This node does not lead and did not pass the proposal on (forwarding is off, or no
    /// leader is known, or the node it forwarded to no longer leads). Retry on `leader` (at
    /// `address`) if known, or after an election.
    #[error("not the leader; {}", leader_hint(*leader, address.as_deref()))]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
        /// Its address, if the driver was told.
        address: Option<String>,
    },
    /// The proposal was accepted but leadership was lost before it committed, and another
    /// entry took its place. It was not applied.
    #[error("leadership lost before the proposal committed")]
    LeadershipLost,
    /// The node could not confirm a read point (no leader, or leadership changed).
    #[error("no read point: leadership could not be confirmed")]
    ReadUnavailable,
    /// A queue is full; retry after some of it drains.
    #[error("busy: {0}")]
    Busy(Busy),
    /// The node is shutting down or has stopped.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The command may or may not have been applied.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(Unknown),
    /// Taking a snapshot failed; the node goes on (the log keeps growing until a later
    /// snapshot works).
    #[error("snapshot failed: {0}")]
    Snapshot(#[source] SnapshotError),
    /// A configuration change cannot start yet; retry shortly.
    #[error("membership change not possible yet: {0}")]
    MembershipPending(ChangeBlocked),
    /// The configuration change (or leadership transfer) was refused before it started: as
    /// asked, it cannot succeed.
    #[error("membership change refused: {0}")]
    MembershipRefused(Refusal),
    /// The learner did not catch up within `rounds` rounds of replication; it stays a
    /// learner.
    #[error("{id} did not catch up within {rounds} rounds of replication; it stays a learner")]
    CatchUpFailed {
        /// The learner.
        id: NodeId,
        /// The rounds tried.
        rounds: u32,
    },
    /// The leadership transfer did not happen.
    #[error("leadership transfer failed: {0}")]
    TransferFailed(TransferFailure),
    /// The log store failed; the node stopped (fail-stop). Displayed as the
    /// [`StorageError`] itself (`storage failed: ...`), not wrapped in a second prefix.
    #[error(transparent)]
    Storage(StorageError),
    /// Restoring the state machine from the received snapshot at `index` failed; the node
    /// stopped.
    #[error("restoring the snapshot at {index} failed: {source}")]
    Restore {
        /// The snapshot's last index.
        index: LogIndex,
        /// What failed.
        #[source]
        source: SnapshotError,
    },
    /// The node's configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(ConfigError),
}

/// Which queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// The leader holds `uncommitted_entries_max` uncommitted entries.
    #[error("{uncommitted} entries wait for commit")]
    Uncommitted {
        /// How many entries wait for commit.
        uncommitted: u64,
    },
    /// The leader is handing leadership to `to` and takes no proposals until it ends.
    #[error("leadership is being transferred to {to}")]
    TransferInProgress {
        /// The transfer's target.
        to: NodeId,
    },
    /// [`DriverConfig::reads_waiting_max`](super::DriverConfig::reads_waiting_max) reads
    /// wait already.
    #[error("{max} reads wait already")]
    Reads {
        /// The bound.
        max: usize,
    },
    /// [`DriverConfig::forwards_pending_max`](super::DriverConfig::forwards_pending_max)
    /// forwarded proposals wait for the leader's answer already.
    #[error("{max} forwarded proposals wait for the leader already")]
    Forwards {
        /// The bound.
        max: usize,
    },
}

/// Why a proposal's outcome is not known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unknown {
    /// This node installed a snapshot that covers the proposal's entry, and a snapshot does
    /// not carry responses.
    #[error("a snapshot covered the proposal's entry")]
    SnapshotCovered,
    /// The proposal was forwarded to `leader`, which did not answer within
    /// [`DriverConfig::forward_timeout_ticks`](super::DriverConfig::forward_timeout_ticks)
    /// (it, or the network, failed, or it is slow).
    #[error("{leader} did not answer the forwarded proposal in time")]
    ForwardUnanswered {
        /// The leader it was forwarded to.
        leader: NodeId,
    },
    /// The proposal was forwarded to `leader`, and another leader took over before `leader`
    /// answered: the proposal may still commit under the new leader, or never.
    #[error("leadership moved away from {leader} before it answered the forwarded proposal")]
    LeaderChanged {
        /// The leader it was forwarded to.
        leader: NodeId,
    },
    /// The proposal was forwarded to `leader`, which could not tell its outcome (it stopped,
    /// or a snapshot covered the entry there), or applied it but could not encode the
    /// response.
    #[error("{leader} could not tell what became of the forwarded proposal")]
    AtLeader {
        /// The leader it was forwarded to.
        leader: NodeId,
    },
    /// Leadership was lost before the configuration change finished: its entry may still
    /// commit under the next leader, or never. Look at the configuration once a leader is
    /// known.
    #[error("leadership was lost before the configuration change finished")]
    ChangeInterrupted,
    /// `leader` applied the forwarded proposal, but its response could not be decoded here
    /// (the nodes run different versions of the state machine).
    #[error("{leader} applied the forwarded proposal, but its response is undecodable")]
    UndecodableResponse {
        /// The leader it was forwarded to.
        leader: NodeId,
    },
}

/// Why a leadership transfer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferFailure {
    /// Another transfer was asked for before this one ended.
    #[error("another transfer was asked for")]
    Superseded,
    /// `to` did not take over within an election timeout; this node still leads.
    #[error("{to} did not take over within an election timeout")]
    TimedOut {
        /// The transfer's target.
        to: NodeId,
    },
    /// Another node than the target leads now.
    #[error("{leader} leads instead of {to}")]
    OtherLeader {
        /// The node that leads.
        leader: NodeId,
        /// The transfer's target.
        to: NodeId,
    },
}

/// "the leader is 2 at 10.0.0.2:2380", or what is known of it.
fn leader_hint(leader: Option<NodeId>, address: Option<&str>) -> String {
    match (leader, address) {
        (Some(id), Some(address)) => format!("the leader is {id} at {address}"),
        (Some(id), None) => format!("the leader is {id}"),
        (None, _) => "no leader is known".to_string(),
    }
}
