//! The messages servers exchange.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{Entry, LogIndex, Membership, NodeId, Term};

/// One protocol message from one server to another.
///
/// `term` is the sender's current term, except in a pre-vote request, where it is the term the
/// sender would campaign in (its own term plus one), and in a pre-vote response, where it echoes
/// the request's term when granted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The term the message belongs to (see the type's documentation).
    pub term: Term,
    /// The message proper.
    pub body: MessageBody,
}

/// The kinds of message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Would you vote for me if I campaigned? Changes no state on the receiver (§9.6).
    PreVote(VoteRequest),
    /// The answer to a [`MessageBody::PreVote`].
    PreVoteResponse(VoteResponse),
    /// RequestVote (§5.2).
    Vote(VoteRequest),
    /// The answer to a [`MessageBody::Vote`].
    VoteResponse(VoteResponse),
    /// AppendEntries with entries (§5.3).
    Append(AppendRequest),
    /// The answer to a [`MessageBody::Append`].
    AppendResponse(AppendResponse),
    /// An empty AppendEntries that asserts leadership and carries the commit index.
    Heartbeat(HeartbeatRequest),
    /// The answer to a [`MessageBody::Heartbeat`].
    HeartbeatResponse(HeartbeatResponse),
    /// One chunk of a snapshot (§7).
    InstallSnapshot(InstallSnapshotRequest),
    /// The answer to a [`MessageBody::InstallSnapshot`].
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// Leadership transfer: campaign now, without waiting for the election timeout (§3.10 of
    /// the dissertation).
    TimeoutNow,
    /// A request to confirm leadership for a linearizable read (§6.4 of the dissertation).
    ReadIndex(ReadIndexRequest),
    /// The answer to a [`MessageBody::ReadIndex`].
    ReadIndexResponse(ReadIndexResponse),
    /// A proposal a follower passes to the leader it knows, for the leader to propose and
    /// answer (the driver's forwarding; the core never sees it).
    Forward(ForwardRequest),
    /// The leader's answer to a [`MessageBody::Forward`].
    ForwardResponse(ForwardResponse),
}

impl MessageBody {
    /// A short name for logs and statistics.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::PreVote(_) => "pre-vote",
            MessageBody::PreVoteResponse(_) => "pre-vote-resp",
            MessageBody::Vote(_) => "vote",
            MessageBody::VoteResponse(_) => "vote-resp",
            MessageBody::Append(_) => "append",
            MessageBody::AppendResponse(_) => "append-resp",
            MessageBody::Heartbeat(_) => "heartbeat",
            MessageBody::HeartbeatResponse(_) => "heartbeat-resp",
            MessageBody::InstallSnapshot(_) => "snapshot",
            MessageBody::InstallSnapshotResponse(_) => "snapshot-resp",
            MessageBody::TimeoutNow => "timeout-now",
            MessageBody::ReadIndex(_) => "read-index",
            MessageBody::ReadIndexResponse(_) => "read-index-resp",
            MessageBody::Forward(_) => "forward",
            MessageBody::ForwardResponse(_) => "forward-resp",
        }
    }

    /// Whether this is a forwarded proposal or its answer: traffic between drivers that the
    /// Raft core does not take part in.
    pub fn is_forwarding(&self) -> bool {
        matches!(
            self,
            MessageBody::Forward(_) | MessageBody::ForwardResponse(_)
        )
    }
}

/// RequestVote and PreVote arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    /// The index of the candidate's last log entry (§5.4.1).
    pub last_log_index: LogIndex,
    /// The term of the candidate's last log entry.
    pub last_log_term: Term,
    /// Set when the campaign follows a leadership transfer: voters ignore their leader lease.
    pub transfer: bool,
}

/// RequestVote and PreVote results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteResponse {
    /// Whether the vote was granted.
    pub granted: bool,
}

/// AppendEntries arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRequest {
    /// The index of the entry immediately preceding `entries`.
    pub prev_log_index: LogIndex,
    /// The term of the entry at `prev_log_index`.
    pub prev_log_term: Term,
    /// Entries to append, in index order, starting at `prev_log_index + 1`.
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub leader_commit: LogIndex,
}

/// AppendEntries results.
///
/// On success `index` is the last index the follower now has in common with the leader. On
/// rejection `index` is the `prev_log_index` that was rejected and `hint` lets the leader skip a
/// whole term of conflicting entries per round trip instead of one index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    /// Whether the entries were appended.
    pub success: bool,
    /// Match index on success, rejected `prev_log_index` on failure.
    pub index: LogIndex,
    /// The conflict hint of a rejection.
    pub hint: Option<ConflictHint>,
}

/// Where a follower's log diverges from the leader's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictHint {
    /// The term of the follower's entry at the rejected index, or `None` when the follower's
    /// log is shorter than the rejected index.
    pub conflict_term: Option<Term>,
    /// The first index of `conflict_term` in the follower's log, or the follower's last index
    /// plus one when `conflict_term` is `None`.
    pub conflict_index: LogIndex,
}

/// Heartbeat arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// The leader's commit index, capped at what the follower is known to have.
    pub leader_commit: LogIndex,
    /// An opaque context echoed in the response (read-index rounds use it).
    pub context: u64,
}

/// Heartbeat results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The context of the request.
    pub context: u64,
}

/// Metadata of a snapshot: what prefix of the log it replaces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The index of the last entry the snapshot covers.
    pub last_index: LogIndex,
    /// The term of that entry.
    pub last_term: Term,
    /// The configuration in force at `last_index`.
    pub membership: Membership,
    /// The total size of the snapshot's data in bytes.
    pub size_bytes: u64,
    /// The CRC-32C (Castagnoli) of the whole snapshot data.
    pub checksum: u32,
}

/// One chunk of a snapshot transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotRequest {
    /// Which snapshot this chunk belongs to.
    pub meta: SnapshotMeta,
    /// The byte offset of `data` within the snapshot.
    pub offset: u64,
    /// The chunk's bytes.
    #[serde(deserialize_with = "crate::wire::shared_bytes")]
    pub data: Bytes,
    /// The CRC-32C (Castagnoli) of `data`.
    pub chunk_checksum: u32,
    /// Whether this is the last chunk.
    pub done: bool,
}

/// The answer to a snapshot chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotResponse {
    /// The snapshot's last index, to tell which transfer this answers.
    pub last_index: LogIndex,
    /// The offset up to which the follower holds the snapshot durably.
    pub next_offset: u64,
    /// Whether the chunk was rejected (bad checksum or unexpected offset).
    pub rejected: bool,
    /// Whether the snapshot is installed.
    pub installed: bool,
}

/// A request to confirm leadership for a read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexRequest {
    /// An id chosen by the requester to match the response.
    pub request_id: u64,
}

/// The answer to a [`ReadIndexRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexResponse {
    /// The id of the request.
    pub request_id: u64,
    /// The commit index to wait for before reading, or `None` if leadership was not confirmed.
    pub read_index: Option<LogIndex>,
}

/// A proposal forwarded to the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRequest {
    /// An id chosen by the follower to match the answer.
    pub request_id: u64,
    /// The command, as the follower's caller proposed it.
    #[serde(deserialize_with = "crate::wire::shared_bytes")]
    pub command: Bytes,
}

/// The leader's answer to a [`ForwardRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardResponse {
    /// The id of the request.
    pub request_id: u64,
    /// What became of the command.
    pub outcome: ForwardOutcome,
}

/// What became of a forwarded command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardOutcome {
    /// Committed and applied on the leader: the state machine's response, encoded by the
    /// driver.
    Applied(#[serde(deserialize_with = "crate::wire::shared_bytes")] Bytes),
    /// Not applied: the leader refused it, or lost leadership before it committed. The
    /// follower's caller may propose it again.
    Refused(ForwardRefusal),
    /// It may or may not have been applied (the leader stopped, or a snapshot covered the
    /// entry before the leader learned its outcome).
    Unknown,
}

/// Why the leader did not apply a forwarded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardRefusal {
    /// The receiver does not lead (any more); `leader` is the one it knows of.
    NotLeader {
        /// The leader the receiver knows of.
        leader: Option<NodeId>,
    },
    /// The leader holds its maximum of uncommitted entries.
    Busy {
        /// How many entries wait for commit.
        uncommitted: u64,
    },
    /// The leader is handing leadership to `to` and takes no proposals until it ends.
    TransferInProgress {
        /// The transfer's target.
        to: NodeId,
    },
    /// The leader lost leadership before the entry committed, and another entry replaced it.
    LeadershipLost,
}
