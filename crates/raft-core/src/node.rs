//! [`RawNode`]: the public face of the core, and the [`Ready`] contract.

use bytes::Bytes;
use raftline_proto::{Entry, HardState, LogIndex, Membership, Message, NodeId, SnapshotMeta, Term};

use crate::config::Config;
use crate::error::Result;
use crate::membership::{MembershipChange, MembershipResult};
use crate::outbox::Outbox;
use crate::progress::Progress;
use crate::raft::Raft;
use crate::reads::ReadState;
use crate::role::Role;
use crate::snapshot::{SnapshotChunk, SnapshotSend};
use crate::storage::Storage;

/// Volatile state an application may want to observe: who leads, and in which role we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// Our role.
    pub role: Role,
    /// The leader we know of.
    pub leader: Option<NodeId>,
}

/// Everything the node needs from the application after some input.
///
/// # Contract
/// For each `Ready`, in this order:
/// 1. Send `messages` now. They do not depend on this Ready being durable: they are the
///    leader's appends and heartbeats (a leader may send entries before its own copy is
///    durable, §10.2.1 of the dissertation) and vote requests. For each of `snapshot_sends`,
///    read the chunk from the snapshot store and send
///    [`SnapshotSend::into_message`]; a chunk that cannot be read is skipped (the leader
///    resends after a stall).
/// 2. If `snapshot` is set, install it first: restore the state machine from that received
///    snapshot, then make the log continue after it
///    ([`StorageMut::install_snapshot`](crate::StorageMut::install_snapshot)).
/// 3. Write `snapshot_chunks` into the partial copy of their snapshot. After a chunk marked
///    `last`, make the copy durable, verify its whole checksum, keep it as the newest
///    snapshot if valid, and report with [`RawNode::on_snapshot_received`].
/// 4. Append `entries` to stable storage (if `entries[0].index` is at or below the stored last
///    index, discard the stored suffix from there first), then persist `hard_state` if set.
///    Entries before the hard state: the hard state's commit index may name them.
/// 5. Once all of that is done and durable, send `persisted_messages` (votes and
///    acknowledgements promise that something is on disk) and call
///    [`RawNode::on_persisted`] with [`Ready::persist_ack`].
/// 6. Apply `committed_entries` to the state machine in order, then call
///    [`RawNode::on_applied`] with the last one's index.
///
/// Several Readies may be outstanding at once, as long as each one's steps 2 to 4 complete in
/// the order the Readies were handed out. A synchronous application does 1 to 6 but, instead of
/// the two acknowledgements of steps 5 and 6, sends `persisted_messages` and calls
/// [`RawNode::advance`] once, with the Ready whole: `advance` reads `entries` and
/// `committed_entries` to know what to acknowledge, so take nothing out of the Ready but the
/// message lists.
#[derive(Debug, Default)]
#[must_use = "a Ready must be persisted, sent, applied and acknowledged"]
pub struct Ready {
    /// Set when the role or the known leader changed since the last Ready.
    pub soft_state: Option<SoftState>,
    /// Set when term, vote or commit index changed since the last Ready.
    pub hard_state: Option<HardState>,
    /// Entries to append durably.
    pub entries: Vec<Entry>,
    /// Messages to send at once.
    pub messages: Vec<Message>,
    /// Messages to send only after `entries` and `hard_state` are durable.
    pub persisted_messages: Vec<Message>,
    /// Committed entries to apply, in order. They are durable locally.
    pub committed_entries: Vec<Entry>,
    /// Finished read-index requests: serve each read once the state machine has applied its
    /// index.
    pub read_states: Vec<ReadState>,
    /// A received snapshot to install before anything else of this Ready is persisted.
    pub snapshot: Option<SnapshotMeta>,
    /// Received snapshot chunks to write.
    pub snapshot_chunks: Vec<SnapshotChunk>,
    /// Snapshot chunks to read and send.
    pub snapshot_sends: Vec<SnapshotSend>,
    /// Finished configuration changes (see [`RawNode::propose_membership`]).
    pub membership_results: Vec<MembershipResult>,
}

/// What [`RawNode::on_persisted`] acknowledges: the durable end of one [`Ready`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistAck {
    /// The index and term of the Ready's last entry.
    pub last_entry: Option<(LogIndex, Term)>,
    /// The Ready's hard state.
    pub hard_state: Option<HardState>,
}

impl Ready {
    /// The acknowledgement to pass to [`RawNode::on_persisted`] once this Ready is durable.
    pub fn persist_ack(&self) -> PersistAck {
        PersistAck {
            last_entry: self.entries.last().map(|e| (e.index, e.term)),
            hard_state: self.hard_state,
        }
    }

    /// The index of the last committed entry to apply, if any.
    pub fn last_committed_index(&self) -> Option<LogIndex> {
        self.committed_entries.last().map(|e| e.index)
    }
}

/// A read-only summary of a node.
#[derive(Clone, Debug)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// Role and known leader.
    pub soft_state: SoftState,
    /// The last index of the log, durable or not.
    pub last_index: LogIndex,
    /// The last index known durable.
    pub persisted_index: LogIndex,
    /// The last index the application reported applied.
    pub applied_index: LogIndex,
    /// The configuration in force.
    pub membership: Membership,
    /// This node learned a configuration without itself and gave up campaigning (after
    /// `removed_election_timeouts` election timeouts without a leader).
    pub removed: bool,
}

/// One Raft node as a deterministic state machine: no I/O, no clock, no threads.
///
/// Inputs are [`tick`](Self::tick), [`step`](Self::step), [`propose`](Self::propose) and
/// [`campaign`](Self::campaign); outputs come out of [`ready`](Self::ready).
pub struct RawNode<S> {
    raft: Raft<S>,
    prev_soft: SoftState,
    prev_hard: HardState,
}

impl<S: Storage> RawNode<S> {
    /// A node started from what `storage` holds.
    pub fn new(config: Config, storage: S) -> Result<Self> {
        let raft = Raft::new(config, storage)?;
        let prev_hard = raft.hard_state();
        Ok(RawNode {
            prev_soft: SoftState {
                role: raft.role(),
                leader: raft.leader,
            },
            prev_hard,
            raft,
        })
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Hands the node a message from a peer. Messages from older terms, duplicates and
    /// reordered messages are all safe to deliver.
    pub fn step(&mut self, message: Message) {
        // Forwarded proposals are traffic between drivers; the core takes no part in them.
        if !message.body.is_forwarding() {
            self.raft.step(message);
        }
    }

    /// Proposes a command. On the leader, returns the index the entry will have; elsewhere,
    /// [`Error::NotLeader`](crate::Error::NotLeader) with the leader this node knows.
    pub fn propose(&mut self, command: Bytes) -> Result<LogIndex> {
        self.raft.propose(vec![command])
    }

    /// Proposes several commands as consecutive entries; returns the last one's index.
    pub fn propose_batch(&mut self, commands: Vec<Bytes>) -> Result<LogIndex> {
        self.raft.propose(commands)
    }

    /// Asks for a linearizable read point. The answer comes in [`Ready::read_states`] with the
    /// same `request_id`: the leader confirms it still leads with a heartbeat round (followers
    /// ask the leader), then gives its commit index; a read served after applying that index
    /// sees every write committed before this call.
    pub fn read_index(&mut self, request_id: u64) {
        self.raft.read_index(request_id);
    }

    /// Starts a configuration change; this node must be the leader, with no other change in
    /// progress and an entry of its term committed. Refusals come back at once
    /// ([`Error::MembershipRefused`](crate::Error::MembershipRefused),
    /// [`Error::MembershipChangePending`](crate::Error::MembershipChangePending), `NotLeader`,
    /// `TransferInProgress`); the outcome of an accepted change comes in
    /// [`Ready::membership_results`] under `request_id`, once the final configuration is
    /// committed (a joint change is left automatically) or the change failed.
    ///
    /// Configurations take effect on each node when their entry is appended, not when it
    /// commits.
    pub fn propose_membership(&mut self, request_id: u64, change: MembershipChange) -> Result<()> {
        self.raft.propose_membership(request_id, change)
    }

    /// Hands leadership to voter `to`: the leader stops taking proposals, brings `to` up to
    /// date and tells it to campaign at once (TimeoutNow; its election skips pre-vote and the
    /// followers' lease). Abandoned after an election timeout. Learners and unknown nodes are
    /// refused.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<()> {
        self.raft.transfer_leadership(to)
    }

    /// The target of the leadership transfer in progress, if any.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.raft.transfer_target()
    }

    /// Whether this node learned a configuration without itself and gave up (see
    /// [`Config::removed_election_timeouts`]).
    pub fn is_removed(&self) -> bool {
        self.raft.removed
    }

    /// The configuration in force on this node.
    pub fn membership(&self) -> &Membership {
        &self.raft.membership
    }

    /// The index of the log entry that defines the configuration in force (0 when it comes
    /// from the snapshot or the store's initial state).
    pub fn membership_index(&self) -> LogIndex {
        self.raft.membership_index()
    }

    /// Starts an election now instead of waiting for the election timeout.
    pub fn campaign(&mut self) {
        self.raft.campaign();
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.raft.role(),
            leader: self.raft.leader,
        }
    }

    /// Whether [`ready`](Self::ready) has anything to hand out.
    pub fn has_ready(&self) -> bool {
        self.soft_state() != self.prev_soft
            || self.raft.hard_state() != self.prev_hard
            || self.raft.log.has_unhanded()
            || self.raft.commit_notices_wanted()
            || self.raft.appends_due()
            || self.raft.log.has_next_committed()
            || !self.raft.outbox.is_empty()
    }

    /// Takes what the application must persist, send and apply. See [`Ready`].
    pub fn ready(&mut self) -> Ready {
        // Proposals since the last Ready, then commit notices, become messages of the outbox
        // first (a notice rides on an append to the same follower when there is one).
        self.raft.flush_appends();
        self.raft.flush_commit_notices();
        let soft = self.soft_state();
        let hard = self.raft.hard_state();
        let soft_state = (soft != self.prev_soft).then_some(soft);
        let hard_state = (hard != self.prev_hard).then_some(hard);
        (self.prev_soft, self.prev_hard) = (soft, hard);
        let Outbox {
            messages,
            persisted_messages,
            read_states,
            snapshot,
            snapshot_chunks,
            snapshot_sends,
            membership_results,
        } = std::mem::take(&mut self.raft.outbox);
        Ready {
            soft_state,
            hard_state,
            entries: self.raft.log.take_unhanded(),
            messages,
            persisted_messages,
            committed_entries: self
                .raft
                .log
                .take_committed(self.raft.cfg.apply_entries_max),
            read_states,
            snapshot,
            snapshot_chunks,
            snapshot_sends,
            membership_results,
        }
    }

    /// The entries and hard state of a Ready are durable.
    pub fn on_persisted(&mut self, ack: PersistAck) {
        self.raft.on_persisted(ack.last_entry, ack.hard_state);
    }

    /// The state machine applied every committed entry up to `index`.
    pub fn on_applied(&mut self, index: LogIndex) {
        self.raft.log.applied_to(index);
    }

    /// The snapshot store holds `meta` as its newest snapshot: this node took it, or found it
    /// at startup. A leader sends it to followers whose entries were compacted away. The
    /// application compacts the log behind it (keeping some trailing entries, so that slightly
    /// lagging followers still replicate from the log).
    pub fn on_snapshot_stored(&mut self, meta: SnapshotMeta) {
        self.raft.on_snapshot_stored(meta);
    }

    /// The last chunk of a received snapshot was written: `valid` tells whether the whole
    /// snapshot matched its checksum (then the store keeps it as its newest). A valid snapshot
    /// past the commit index is installed: the next Ready carries it in
    /// [`Ready::snapshot`]. An invalid one makes the leader start the transfer over.
    pub fn on_snapshot_received(&mut self, meta: &SnapshotMeta, valid: bool) {
        self.raft.on_snapshot_received(meta, valid);
    }

    /// The newest snapshot this node knows of.
    pub fn snapshot(&self) -> Option<&SnapshotMeta> {
        self.raft.snapshot.as_ref()
    }

    /// Acknowledges a Ready that was fully persisted and applied.
    pub fn advance(&mut self, ready: &Ready) {
        self.on_persisted(ready.persist_ack());
        if let Some(index) = ready.last_committed_index() {
            self.on_applied(index);
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.raft.id
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.raft.role()
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.raft.term
    }

    /// The leader we know of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.leader
    }

    /// The commit index.
    pub fn commit_index(&self) -> LogIndex {
        self.raft.log.committed
    }

    /// The first index the log still holds (entries before it were compacted into a
    /// snapshot).
    pub fn first_index(&self) -> LogIndex {
        self.raft.log.first_index()
    }

    /// The last index of the log.
    pub fn last_index(&self) -> LogIndex {
        self.raft.log.last_index()
    }

    /// The term of the entry at `index`, if the log has it.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.raft.log.term(index)
    }

    /// The leader's replication progress for `peer` (`None` on non-leaders).
    pub fn progress(&self, peer: NodeId) -> Option<&Progress> {
        self.raft.progress(peer)
    }

    /// A summary of the node.
    pub fn status(&self) -> Status {
        Status {
            id: self.raft.id,
            hard_state: self.raft.hard_state(),
            soft_state: self.soft_state(),
            last_index: self.raft.log.last_index(),
            persisted_index: self.raft.log.persisted,
            applied_index: self.raft.log.applied,
            membership: self.raft.membership.clone(),
            removed: self.raft.removed,
        }
    }

    /// The storage the node reads from.
    pub fn storage(&self) -> &S {
        &self.raft.log.storage
    }
}
