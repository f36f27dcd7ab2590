//! What a [`Ready`](crate::Ready) asks of the application's snapshot store: chunks to read
//! and send (on a leader), chunks to write (on a follower receiving a snapshot).

use bytes::Bytes;
use raftline_proto::{
    InstallSnapshotRequest, InstallSnapshotResponse, Message, MessageBody, NodeId, SnapshotMeta,
    Term,
};

/// A chunk the leader wants sent: read `len` bytes of snapshot `meta` from `offset` and send
/// them with [`into_message`](Self::into_message). A `len` of 0 is a probe: it asks the
/// follower how much of the snapshot it already holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSend {
    /// The leader (this node).
    pub from: NodeId,
    /// The follower.
    pub to: NodeId,
    /// The leader's term when it asked.
    pub term: Term,
    /// The snapshot.
    pub meta: SnapshotMeta,
    /// Where the chunk starts.
    pub offset: u64,
    /// How many bytes to read (the chunk never passes the snapshot's end).
    pub len: usize,
    /// The first chunk with data of a transfer: at offset 0 the transfer starts, past 0 it
    /// resumes a copy the follower already partly holds (logs and metrics tell them apart).
    pub first: bool,
}

impl SnapshotSend {
    /// The message carrying `data` (the `len` bytes read at `offset`), with its checksum.
    pub fn into_message(self, data: Bytes) -> Message {
        debug_assert_eq!(data.len(), self.len, "a chunk carries the bytes asked for");
        let done = self.offset + data.len() as u64 == self.meta.size_bytes;
        Message {
            from: self.from,
            to: self.to,
            term: self.term,
            body: MessageBody::InstallSnapshot(InstallSnapshotRequest {
                chunk_checksum: crc32c::crc32c(&data),
                meta: self.meta,
                offset: self.offset,
                data,
                done,
            }),
        }
    }
}

/// A chunk received from the leader, checked against its checksum: write `data` at `offset`
/// into the partial copy of snapshot `meta`. After the `last` chunk, make the copy durable,
/// verify its whole checksum and report with
/// [`RawNode::on_snapshot_received`](crate::RawNode::on_snapshot_received).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The snapshot.
    pub meta: SnapshotMeta,
    /// Where `data` goes.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
    /// Whether this chunk completes the snapshot.
    pub last: bool,
}

/// A follower's progress receiving one snapshot.
#[derive(Clone, Debug)]
pub(crate) struct Receiving {
    pub(crate) meta: SnapshotMeta,
    /// The offset of the next byte to accept: everything before it was handed out to be
    /// written.
    pub(crate) next: u64,
    /// The last chunk was handed out: waiting for the application to verify and report.
    pub(crate) complete: bool,
}

/// The answer to a chunk.
pub(crate) fn response(meta: &SnapshotMeta, next_offset: u64, rejected: bool) -> MessageBody {
    MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
        last_index: meta.last_index,
        next_offset,
        rejected,
        installed: false,
    })
}

/// The answer saying the follower's log now covers `meta`.
pub(crate) fn installed(meta: &SnapshotMeta) -> MessageBody {
    MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
        last_index: meta.last_index,
        next_offset: meta.size_bytes,
        rejected: false,
        installed: true,
    })
}
