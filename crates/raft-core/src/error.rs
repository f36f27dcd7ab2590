//! Errors of the core.

use raftline_proto::{LogIndex, NodeId};

/// Why a storage read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The requested index lies before the first index the store keeps: a snapshot replaced it.
    #[error("index {0} is compacted")]
    Compacted(LogIndex),
    /// The requested index lies after the last index the store has.
    #[error("index {0} is not available")]
    Unavailable(LogIndex),
    /// The store failed. The core treats this as fatal.
    #[error("storage failed: {0}")]
    Other(String),
}

/// Why a snapshot operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot named is not (or no longer) in the store.
    #[error("snapshot at index {0} not found")]
    NotFound(LogIndex),
    /// The data does not match its checksum or size, or is not a snapshot the state machine
    /// understands.
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    /// Reading or writing failed.
    #[error("snapshot I/O failed: {0}")]
    Io(String),
}

/// Why the core refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Only the leader takes proposals. `leader` is the leader this node knows of, if any.
    #[error("not the leader (leader is {leader:?})")]
    NotLeader {
        /// The current leader as far as this node knows.
        leader: Option<NodeId>,
    },
    /// The leader already holds `uncommitted_entries_max` uncommitted entries.
    #[error("too many uncommitted entries ({uncommitted}); retry after some commit")]
    Busy {
        /// How many entries are waiting for commit.
        uncommitted: u64,
    },
    /// A leadership transfer is in progress: the leader takes no proposals until it ends.
    #[error("leadership is being transferred to {to}")]
    TransferInProgress {
        /// The transfer's target.
        to: NodeId,
    },
    /// A configuration change cannot start yet (another one is in progress, or this leader
    /// has not committed an entry of its term); retry shortly.
    #[error("configuration change not possible yet: {0}")]
    MembershipChangePending(String),
    /// A configuration change was refused; the message says why.
    #[error("configuration change refused: {0}")]
    MembershipChange(String),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Reading the log failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Reading or restoring a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// The result type of the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
