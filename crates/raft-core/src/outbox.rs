//! [`Outbox`]: every output the role logic queues for the next [`Ready`](crate::Ready).
//!
//! The role logic in [`raft`](crate::raft) pushes what it wants done here, and
//! [`RawNode::ready`](crate::RawNode::ready) takes the whole outbox at once with
//! [`std::mem::take`]. [`Outbox::is_empty`] and `ready` destructure it, so a new field that
//! one of them forgets does not compile. What the Ready gets from elsewhere: entries and
//! committed entries come from the log, soft and hard state from the node's state, and commit
//! notices become `messages` when the Ready is taken.

use raftline_proto::{Message, SnapshotMeta};

use crate::membership::MembershipResult;
use crate::reads::ReadState;
use crate::snapshot::{SnapshotChunk, SnapshotSend};

/// Outputs queued since the last [`Ready`](crate::Ready); each field becomes the Ready field
/// of the same name.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Messages that may be sent at once.
    pub(crate) messages: Vec<Message>,
    /// Messages to send only once the entries and hard state of the same step are durable
    /// (votes, acknowledgements).
    pub(crate) persisted_messages: Vec<Message>,
    /// Finished read-index requests.
    pub(crate) read_states: Vec<ReadState>,
    /// A received snapshot to install (restore the state machine, reset the log store).
    pub(crate) snapshot: Option<SnapshotMeta>,
    /// Received chunks for the application to write.
    pub(crate) snapshot_chunks: Vec<SnapshotChunk>,
    /// Chunks for the application to read and send.
    pub(crate) snapshot_sends: Vec<SnapshotSend>,
    /// Finished configuration changes.
    pub(crate) membership_results: Vec<MembershipResult>,
}

impl Outbox {
    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        let Outbox {
            messages,
            persisted_messages,
            read_states,
            snapshot,
            snapshot_chunks,
            snapshot_sends,
            membership_results,
        } = self;
        messages.is_empty()
            && persisted_messages.is_empty()
            && read_states.is_empty()
            && snapshot.is_none()
            && snapshot_chunks.is_empty()
            && snapshot_sends.is_empty()
            && membership_results.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_with_any_output_is_not_empty() {
        assert!(Outbox::default().is_empty());
        let read = Outbox {
            read_states: vec![ReadState {
                request_id: 1,
                index: None,
            }],
            ..Outbox::default()
        };
        assert!(!read.is_empty());
        let results = Outbox {
            membership_results: vec![MembershipResult {
                request_id: 1,
                result: Ok(raftline_proto::Membership::default()),
            }],
            ..Outbox::default()
        };
        assert!(!results.is_empty());
    }
}
