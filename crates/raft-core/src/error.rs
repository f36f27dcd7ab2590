//! Errors of the core.

use std::sync::Arc;

use raftline_proto::{LogIndex, NodeId};

use crate::membership::{ChangeBlocked, Refusal};

/// Why a storage operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The requested index lies before the first index the store keeps: a snapshot replaced it.
    #[error("index {0} is compacted")]
    Compacted(LogIndex),
    /// The requested index lies after the last index the store has.
    #[error("index {0} is not available")]
    Unavailable(LogIndex),
    /// The store failed; the source says how. The core treats this as fatal.
    #[error("storage failed: {0}")]
    Other(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl StorageError {
    /// A failure of the store, keeping `error` as the source (a `String` or `&str` works
    /// too).
    pub fn other(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StorageError {
        StorageError::Other(Arc::from(error.into()))
    }
}

/// Two failures are equal when they say the same (the sources are compared by their text).
impl PartialEq for StorageError {
    fn eq(&self, other: &StorageError) -> bool {
        match (self, other) {
            (StorageError::Compacted(a), StorageError::Compacted(b)) => a == b,
            (StorageError::Unavailable(a), StorageError::Unavailable(b)) => a == b,
            (StorageError::Other(a), StorageError::Other(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for StorageError {}

/// Why a snapshot operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot named is not (or no longer) in the store.
    #[error("snapshot at index {0} not found")]
    NotFound(LogIndex),
    /// The data does not match its checksum or size, or is not a snapshot the state machine
    /// understands; the text names what did not match, and where.
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    /// No entry has been applied yet: there is no state to snapshot.
    #[error("nothing applied yet: no state to snapshot")]
    NothingApplied,
    /// Reading or writing failed; the source says how (and, from a store that knows, on
    /// which file).
    #[error("snapshot I/O failed: {0}")]
    Io(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl SnapshotError {
    /// An I/O failure, keeping `error` as the source (a `String` or `&str` works too).
    pub fn io(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> SnapshotError {
        SnapshotError::Io(Arc::from(error.into()))
    }
}

impl From<std::io::Error> for SnapshotError {
    fn from(error: std::io::Error) -> SnapshotError {
        SnapshotError::io(error)
    }
}

/// Two failures are equal when they say the same (sources are compared by their text).
impl PartialEq for SnapshotError {
    fn eq(&self, other: &SnapshotError) -> bool {
        match (self, other) {
            (SnapshotError::NotFound(a), SnapshotError::NotFound(b)) => a == b,
            (SnapshotError::Corrupt(a), SnapshotError::Corrupt(b)) => a == b,
            (SnapshotError::NothingApplied, SnapshotError::NothingApplied) => true,
            (SnapshotError::Io(a), SnapshotError::Io(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for SnapshotError {}

/// Why the core refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Only the leader takes proposals. `leader` is the leader this node knows of, if any.
    #[error("not the leader ({})", match leader { Some(id) => format!("the leader is {id}"), None => "no leader is known".into() })]
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
    /// A configuration change cannot start yet; retry shortly.
    #[error("configuration change not possible yet: {0}")]
    MembershipChangePending(ChangeBlocked),
    /// A configuration change (or a leadership transfer) was refused: it can never succeed
    /// as asked.
    #[error("configuration change refused: {0}")]
    MembershipRefused(Refusal),
    /// The node's [`Config`](crate::Config) is invalid.
    #[error("invalid configuration: {0}")]
    Config(ConfigError),
    /// Reading the log failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Reading or restoring a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// Which bound of a [`Config`](crate::Config) is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `id` is 0, which means "no node".
    #[error("id must not be 0")]
    ZeroId,
    /// A count that must be at least 1 is 0; the field is named.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// `election_ticks` is not greater than `heartbeat_ticks`: followers would time out
    /// between heartbeats.
    #[error("election_ticks must be greater than heartbeat_ticks")]
    ElectionNotAboveHeartbeat,
    /// The lease's wait (`lease_ticks` scaled by the drift bound,
    /// [`Lease::wait_ticks`](crate::Lease::wait_ticks)) exceeds `election_ticks`: every
    /// failover would wait for the old lease past the election.
    #[error("the lease, scaled by the drift bound, must fit within election_ticks")]
    LeaseNotBelowElection,
    /// `drift_ppm` is above [`Lease::DRIFT_PPM_MAX`](crate::Lease::DRIFT_PPM_MAX).
    #[error("drift_ppm must be at most 500000")]
    DriftAboveMax,
}

/// The result type of the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
