//! The role logic: follower, pre-candidate, candidate and leader (§5 of the paper).
//!
//! Term handling happens once, in [`Raft::step`]; then a per-role function handles the message.
//! Every output for the application is queued in one [`Outbox`], which the next
//! [`Ready`](crate::Ready) takes whole: outgoing messages in two lists (`messages` may be sent
//! at once, `persisted_messages` only after the entries and hard state produced by the same
//! step are durable), finished reads and configuration changes, and snapshot work.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use raftline_proto::{
    AppendRequest, AppendResponse, ConflictHint, Entry, EntryPayload, HardState, HeartbeatRequest,
    HeartbeatResponse, InstallSnapshotRequest, InstallSnapshotResponse, LogIndex, Membership,
    Message, MessageBody, NodeId, ReadIndexRequest, ReadIndexResponse, SnapshotMeta, Term,
    VoteRequest, VoteResponse,
};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::RaftLog;
use crate::membership::{
    self, ChangeBlocked, ConfigLog, MembershipChange, MembershipError, MembershipResult, Refusal,
};
use crate::outbox::Outbox;
use crate::progress::{Progress, ProgressState};
use crate::quorum::{self, VoteResult};
use crate::rng::Rng;
use crate::snapshot::{self, Receiving, SnapshotChunk, SnapshotSend};
use crate::storage::Storage;

/// The role a node plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader; campaigns when it hears from none.
    Follower,
    /// Asks whether it could win before raising its term.
    PreCandidate,
    /// Campaigns in a new term.
    Candidate,
    /// Serves the term.
    Leader,
}

/// The outcome of a read-index request (§6.4 of the dissertation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The id the caller gave [`RawNode::read_index`](crate::RawNode::read_index).
    pub request_id: u64,
    /// Once the state machine has applied this index, a read reflects every write committed
    /// before the request. `None`: leadership could not be confirmed (no leader, or it lost
    /// its term); retry.
    pub index: Option<LogIndex>,
}

/// A read waiting for the leader to confirm it still leads.
struct PendingRead {
    from: NodeId,
    request_id: u64,
    index: LogIndex,
    /// Confirmed once a quorum answered a heartbeat with a context at least this one.
    context: u64,
}

pub(crate) struct Raft<S> {
    pub(crate) id: NodeId,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) role: Role,
    pub(crate) leader: Option<NodeId>,
    pub(crate) log: RaftLog<S>,
    /// The configuration in force: the latest in `configs`.
    pub(crate) membership: Membership,
    /// The configuration entries of the log, to revert one that is truncated.
    configs: ConfigLog,
    /// The leader's configuration change in progress.
    pending_change: Option<PendingChange>,
    /// The leader's leadership transfer in progress.
    transfer: Option<Transfer>,
    /// Election timeouts this node spent outside the configuration it knows.
    removed_timeouts: u32,
    /// This node learned a configuration without it and gave up after
    /// `removed_election_timeouts` election timeouts.
    pub(crate) removed: bool,
    /// The leader's progress for every member but itself.
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Votes received in the current (pre-)campaign, including our own once it is durable.
    votes: BTreeMap<NodeId, bool>,
    /// A candidate counts its own vote only once the vote is durable (see `on_persisted`).
    self_vote_pending: bool,
    /// Ticks since the last election timeout reset (follower: since we heard from a leader).
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_ticks: u32,
    pub(crate) cfg: Config,
    rng: Rng,
    /// Everything queued for the next Ready.
    pub(crate) outbox: Outbox,
    /// The commit index moved, or a follower acknowledged committed entries, since the last
    /// Ready: [`Raft::flush_commit_notices`] tells the followers that need it.
    commit_notices_due: bool,
    /// Reads the leader is confirming, oldest first. Bounded by `read_requests_max`.
    reads: VecDeque<PendingRead>,
    /// Reads that arrived before the leader committed an entry of its term (until then its
    /// commit index may lag the cluster's). Bounded by `read_requests_max`.
    reads_before_commit: Vec<(NodeId, u64)>,
    /// The heartbeat context of the newest read; heartbeats carry it.
    read_context: u64,
    /// The highest read context each peer has answered in this term.
    read_acked: BTreeMap<NodeId, u64>,
    /// Reads this node forwarded to the leader of the current term, awaiting an answer. A
    /// duplicated or stale answer matches nothing here and is dropped.
    reads_forwarded: std::collections::BTreeSet<u64>,
    /// The newest snapshot in the application's store: what a leader sends.
    pub(crate) snapshot: Option<SnapshotMeta>,
    /// The snapshot this follower is receiving.
    receiving: Option<Receiving>,
}

impl<S: Storage> Raft<S> {
    pub(crate) fn new(cfg: Config, storage: S) -> Result<Self> {
        cfg.validate()?;
        let init = storage.initial_state()?;
        let log = RaftLog::new(storage, init.hard_state.commit, cfg.applied)?;
        // The configuration in force is the latest configuration entry of the log.
        let mut configs = ConfigLog::new(init.membership);
        let mut next = log.first_index();
        while next <= log.last_index() {
            let batch = log.entries(next, log.last_index(), 4096, usize::MAX)?;
            for e in &batch {
                if let EntryPayload::Membership(m) = &e.payload {
                    configs.appended(e.index, m.clone());
                }
            }
            next = batch.last().map_or(next, |e| e.index).next();
        }
        let mut raft = Raft {
            id: cfg.id,
            term: init.hard_state.term,
            vote: init.hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            membership: configs.current().clone(),
            configs,
            pending_change: None,
            transfer: None,
            removed_timeouts: 0,
            removed: false,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            self_vote_pending: false,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks: cfg.election_ticks,
            rng: Rng::new(cfg.seed),
            cfg,
            outbox: Outbox::default(),
            commit_notices_due: false,
            reads: VecDeque::new(),
            reads_before_commit: Vec::new(),
            read_context: 0,
            read_acked: BTreeMap::new(),
            reads_forwarded: std::collections::BTreeSet::new(),
            snapshot: None,
            receiving: None,
        };
        raft.reset_election_timer();
        Ok(raft)
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    fn is_voter(&self) -> bool {
        self.membership.is_voter(self.id)
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let jitter = self.rng.below(u64::from(self.cfg.election_ticks)) as u32;
        self.randomized_election_ticks = self.cfg.election_ticks + jitter;
    }

    /// Moves to `term`, forgetting the vote of the old term.
    fn set_term(&mut self, term: Term) {
        assert!(
            term >= self.term,
            "terms never go back ({} -> {term})",
            self.term
        );
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
    }

    // ----- role transitions -------------------------------------------------------------

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.fail_reads();
        if let Some(change) = self.pending_change.take() {
            self.outbox.membership_results.push(MembershipResult {
                request_id: change.request_id,
                result: Err(MembershipError::LeadershipLost),
            });
        }
        self.transfer = None;
        self.set_term(term);
        self.role = Role::Follower;
        self.leader = leader;
        self.progress.clear();
        self.votes.clear();
        self.self_vote_pending = false;
        self.reset_election_timer();
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader does not pre-campaign");
        // A pre-campaign changes neither term nor vote.
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.self_vote_pending = false;
        self.reset_election_timer();
    }

    fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader does not campaign");
        self.fail_reads();
        let term = self.term.next();
        self.set_term(term);
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        // Our own vote counts once it is durable, so that a crash cannot make us vote twice in
        // this term (Election Safety).
        self.self_vote_pending = true;
        self.reset_election_timer();
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        // Leader Completeness: a winner's log holds every committed entry, in particular
        // everything up to its own commit index.
        assert!(
            self.log.committed <= self.log.last_index(),
            "Leader Completeness"
        );
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.reset_election_timer();
        let next = self.log.last_index().next();
        self.progress = self
            .membership
            .members()
            .into_iter()
            .filter(|&id| id != self.id)
            .map(|id| {
                let mut pr = Progress::new(next);
                pr.recent_active = true;
                (id, pr)
            })
            .collect();
        // A no-op of our term lets entries of earlier terms commit (§5.4.2, §8).
        self.append_own(vec![EntryPayload::Noop]);
        self.broadcast_append();
    }

    // ----- inputs -----------------------------------------------------------------------

    pub(crate) fn tick(&mut self) {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => {
                if self.election_elapsed >= self.randomized_election_ticks {
                    self.election_elapsed = 0;
                    let excluded =
                        !self.membership.is_empty() && !is_member(&self.membership, self.id);
                    if excluded {
                        // Removed (or never added): it does not campaign, and after a few
                        // election timeouts without a leader it reports it.
                        self.removed_timeouts += 1;
                        self.removed = self.removed_timeouts >= self.cfg.removed_election_timeouts;
                    }
                    if self.is_voter() {
                        self.campaign();
                    }
                }
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.tick_catch_up();
        if let Some(t) = &mut self.transfer {
            t.elapsed += 1;
            if t.elapsed >= self.cfg.election_ticks {
                // The target did not take over within an election timeout: give up.
                self.transfer = None;
            }
        }
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let id = self.id;
                let progress = &self.progress;
                let active = quorum::is_quorum(&self.membership, |n| {
                    n == id || progress.get(&n).is_some_and(|p| p.recent_active)
                });
                for pr in self.progress.values_mut() {
                    pr.recent_active = false;
                }
                if !active {
                    // §6.2: a leader that cannot reach a quorum steps down, so clients look
                    // for the leader elsewhere.
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Starts an election now (with a pre-vote round first when enabled).
    pub(crate) fn campaign(&mut self) {
        if self.role == Role::Leader || !self.is_voter() {
            return;
        }
        if self.cfg.pre_vote {
            self.become_pre_candidate();
            self.check_votes();
            if self.role == Role::PreCandidate {
                self.send_vote_requests(MessageBodyKind::PreVote, false);
            }
        } else {
            self.start_election(false);
        }
    }

    fn start_election(&mut self, transfer: bool) {
        self.become_candidate();
        self.send_vote_requests(MessageBodyKind::Vote, transfer);
    }

    fn send_vote_requests(&mut self, kind: MessageBodyKind, transfer: bool) {
        let req = VoteRequest {
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            transfer,
        };
        let term = match kind {
            MessageBodyKind::PreVote => self.term.next(),
            MessageBodyKind::Vote => self.term,
        };
        let voters: Vec<NodeId> = self
            .membership
            .voters
            .union(&self.membership.voters_outgoing)
            .copied()
            .filter(|&id| id != self.id)
            .collect();
        for to in voters {
            let body = match kind {
                MessageBodyKind::PreVote => MessageBody::PreVote(req.clone()),
                MessageBodyKind::Vote => MessageBody::Vote(req.clone()),
            };
            self.outbox.messages.push(Message {
                from: self.id,
                to,
                term,
                body,
            });
        }
    }

    pub(crate) fn propose(&mut self, commands: Vec<Bytes>) -> Result<LogIndex> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(t) = &self.transfer {
            return Err(Error::TransferInProgress { to: t.to });
        }
        let uncommitted = self.log.last_index().0 - self.log.committed.0;
        if uncommitted + commands.len() as u64 > self.cfg.uncommitted_entries_max {
            return Err(Error::Busy { uncommitted });
        }
        let last = self.append_own(commands.into_iter().map(EntryPayload::Normal).collect());
        self.broadcast_append();
        Ok(last)
    }

    /// Appends entries of the current term to the leader's own log. Leader Append-Only: the
    /// leader never overwrites or deletes its entries, it only appends.
    fn append_own(&mut self, payloads: Vec<EntryPayload>) -> LogIndex {
        let mut index = self.log.last_index();
        let term = self.term;
        let mut config = None;
        let entries: Vec<Entry> = payloads
            .into_iter()
            .map(|payload| {
                index = index.next();
                Entry {
                    term,
                    index,
                    payload,
                }
            })
            .collect();
        for e in &entries {
            if let EntryPayload::Membership(m) = &e.payload {
                config = Some((e.index, m.clone()));
            }
        }
        self.log.append(entries);
        if let Some((at, m)) = config {
            self.configs.appended(at, m);
            self.config_changed();
        }
        index
    }

    /// The application made the log durable up to (`index`, `term`) and the hard state up to
    /// `hard_state`.
    pub(crate) fn on_persisted(
        &mut self,
        last: Option<(LogIndex, Term)>,
        hard_state: Option<HardState>,
    ) {
        if let Some((index, term)) = last {
            self.log.stable_to(index, term);
        }
        if self.self_vote_pending
            && self.role == Role::Candidate
            && hard_state.is_some_and(|hs| hs.term == self.term && hs.vote == Some(self.id))
        {
            self.self_vote_pending = false;
            self.votes.insert(self.id, true);
            self.check_votes();
        }
        if self.role == Role::Leader {
            // The leader counts itself toward commit only for what is durable (§10.2.1 of
            // the dissertation).
            self.maybe_commit();
        }
    }

    // ----- step -------------------------------------------------------------------------

    pub(crate) fn step(&mut self, m: Message) {
        if m.to != self.id {
            return;
        }
        if m.term > self.term {
            match &m.body {
                // A pre-vote request carries the term the sender would campaign in; it must
                // not move our term.
                MessageBody::PreVote(_) => {}
                // A granted pre-vote response echoes our future term.
                MessageBody::PreVoteResponse(r) if r.granted => {}
                MessageBody::Vote(req) if self.in_lease() && !req.transfer => {
                    // We heard from a leader within the election timeout: ignore the
                    // disruptive candidate entirely (§6 of the dissertation).
                    return;
                }
                MessageBody::Append(_)
                | MessageBody::Heartbeat(_)
                | MessageBody::InstallSnapshot(_) => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            self.step_stale(m);
            return;
        }

        match m.body {
            MessageBody::PreVote(req) => self.handle_vote_request(m.from, m.term, req, true),
            MessageBody::Vote(req) => self.handle_vote_request(m.from, m.term, req, false),
            _ => match self.role {
                Role::Follower => self.step_follower(m),
                Role::PreCandidate | Role::Candidate => self.step_candidate(m),
                Role::Leader => self.step_leader(m),
            },
        }
    }

    /// A message from an older term (§5.1: it is rejected).
    fn step_stale(&mut self, m: Message) {
        match m.body {
            // Tell a stale leader about the newer term so it steps down. With pre-vote and
            // check-quorum a node never raises its term alone, so this cannot disrupt a
            // healthy cluster.
            MessageBody::Append(_) | MessageBody::Heartbeat(_) => {
                let body = MessageBody::AppendResponse(AppendResponse {
                    success: false,
                    index: LogIndex(0),
                    hint: None,
                });
                self.send_later(m.from, body);
            }
            MessageBody::PreVote(_) => {
                let body = MessageBody::PreVoteResponse(VoteResponse { granted: false });
                self.send_later(m.from, body);
            }
            _ => {}
        }
    }

    fn in_lease(&self) -> bool {
        (self.cfg.check_quorum || self.cfg.pre_vote)
            && self.leader.is_some()
            && self.election_elapsed < self.cfg.election_ticks
    }

    fn handle_vote_request(&mut self, from: NodeId, term: Term, req: VoteRequest, pre: bool) {
        let up_to_date = self
            .log
            .is_up_to_date(req.last_log_index, req.last_log_term);
        let can_vote = if pre {
            term > self.term && (!self.in_lease() || req.transfer)
        } else {
            self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none())
        };
        let granted = can_vote && up_to_date;
        if granted && !pre {
            // Election Safety: one vote per term, persisted before the reply.
            assert!(
                self.vote.is_none() || self.vote == Some(from),
                "Election Safety: double vote"
            );
            assert_eq!(term, self.term);
            self.vote = Some(from);
            self.election_elapsed = 0;
        }
        let response = VoteResponse { granted };
        let (body, reply_term) = if pre {
            (
                MessageBody::PreVoteResponse(response),
                if granted { term } else { self.term },
            )
        } else {
            (MessageBody::VoteResponse(response), self.term)
        };
        self.outbox.persisted_messages.push(Message {
            from: self.id,
            to: from,
            term: reply_term,
            body,
        });
    }

    fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::Append(req) => {
                self.hear_from_leader(m.from);
                if self.receiving.as_ref().is_some_and(|r| r.complete) {
                    // A received snapshot awaits its install, which may replace the log:
                    // take no entries until then (as if the message were lost).
                    return;
                }
                self.handle_append(m.from, req);
            }
            MessageBody::InstallSnapshot(req) => {
                self.hear_from_leader(m.from);
                self.handle_snapshot_chunk(m.from, req);
            }
            MessageBody::Heartbeat(req) => {
                self.hear_from_leader(m.from);
                self.handle_heartbeat(m.from, req);
            }
            MessageBody::TimeoutNow if self.is_voter() => self.start_election(true),
            MessageBody::ReadIndexResponse(r) => self.read_answered(r),
            // Not the leader (any more): the requester must retry elsewhere.
            MessageBody::ReadIndex(r) => self.answer_read(m.from, r.request_id, None),
            _ => {}
        }
    }

    fn hear_from_leader(&mut self, leader: NodeId) {
        self.election_elapsed = 0;
        self.leader = Some(leader);
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            // A leader of our term exists: follow it (§5.2).
            MessageBody::Append(_)
            | MessageBody::Heartbeat(_)
            | MessageBody::InstallSnapshot(_) => {
                let term = self.term;
                self.become_follower(term, Some(m.from));
                self.step_follower(m);
            }
            // Count answers to this pre-campaign (granted ones echo our next term) and
            // refusals.
            MessageBody::PreVoteResponse(r)
                if self.role == Role::PreCandidate
                    && (m.term == self.term.next() || !r.granted) =>
            {
                self.votes.entry(m.from).or_insert(r.granted);
                self.check_votes();
            }
            MessageBody::ReadIndex(r) => self.answer_read(m.from, r.request_id, None),
            MessageBody::ReadIndexResponse(r) => self.read_answered(r),
            MessageBody::VoteResponse(r) if self.role == Role::Candidate => {
                self.votes.entry(m.from).or_insert(r.granted);
                self.check_votes();
            }
            _ => {}
        }
    }

    fn check_votes(&mut self) {
        let votes = &self.votes;
        match quorum::joint_vote(&self.membership, |id| votes.get(&id).copied()) {
            VoteResult::Won => match self.role {
                Role::PreCandidate => self.start_election(false),
                Role::Candidate => self.become_leader(),
                _ => {}
            },
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, None);
            }
            VoteResult::Pending => {}
        }
    }

    fn handle_append(&mut self, from: NodeId, req: AppendRequest) {
        if req.prev_log_index < self.log.committed {
            // Everything up to our commit index matches the leader already.
            let index = self.log.committed;
            self.send_later(from, append_ok(index));
            return;
        }
        if !self.log.match_term(req.prev_log_index, req.prev_log_term) {
            let hint = self.conflict_hint(req.prev_log_index);
            let body = MessageBody::AppendResponse(AppendResponse {
                success: false,
                index: req.prev_log_index,
                hint: Some(hint),
            });
            self.send_later(from, body);
            return;
        }
        let last_new = req.prev_log_index.plus(req.entries.len() as u64);
        // Log Matching: skip the entries we already have; truncate at the first conflict.
        let conflict = req
            .entries
            .iter()
            .position(|e| !self.log.match_term(e.index, e.term));
        if let Some(at) = conflict {
            let new = &req.entries[at..];
            self.log.truncate_and_append(new);
            // A configuration takes effect when appended; one truncated away is undone.
            self.configs.truncate(new[0].index);
            for e in new {
                if let EntryPayload::Membership(m) = &e.payload {
                    self.configs.appended(e.index, m.clone());
                }
            }
            self.config_changed();
        }
        self.log.commit_to(req.leader_commit.min(last_new));
        self.send_later(from, append_ok(last_new));
    }

    fn conflict_hint(&self, rejected: LogIndex) -> ConflictHint {
        let last = self.log.last_index();
        if rejected > last {
            return ConflictHint {
                conflict_term: None,
                conflict_index: last.next(),
            };
        }
        ConflictHint {
            conflict_term: self.log.term(rejected),
            conflict_index: self.log.first_index_of_term(rejected),
        }
    }

    fn handle_heartbeat(&mut self, from: NodeId, req: HeartbeatRequest) {
        // The leader caps the commit index at our match index, so we hold that entry; the cap
        // at our last index only guards against a restart that lost unacknowledged entries.
        self.log
            .commit_to(req.leader_commit.min(self.log.last_index()));
        let body = MessageBody::HeartbeatResponse(HeartbeatResponse {
            context: req.context,
        });
        self.send_later(from, body);
    }

    fn step_leader(&mut self, m: Message) {
        let from = m.from;
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        match m.body {
            MessageBody::AppendResponse(r) => self.handle_append_response(from, r),
            MessageBody::InstallSnapshotResponse(r) => self.handle_snapshot_response(from, r),
            MessageBody::HeartbeatResponse(r) => {
                if r.context > 0 {
                    let acked = self.read_acked.entry(from).or_insert(0);
                    *acked = (*acked).max(r.context);
                    self.confirm_reads();
                }
                let inflight_max = self.cfg.inflight_msgs_max;
                let pr = self.progress.get_mut(&from).expect("checked above");
                if let Some(transfer) = &mut pr.snapshot {
                    // A transfer without progress for about an election timeout lost chunks
                    // or answers: probe again and resend from what the follower holds.
                    let stall = self.cfg.election_ticks / self.cfg.heartbeat_ticks + 1;
                    transfer.heartbeat_answered(stall);
                    self.send_snapshot_chunks(from);
                    return;
                }
                pr.probe_sent = false;
                if pr.state == ProgressState::Replicate && pr.inflight.len() >= inflight_max {
                    // An ack may have been lost: let one more append through so the window
                    // cannot stall for good.
                    pr.inflight.pop_front();
                }
                if pr.match_index < self.log.last_index() {
                    self.send_append(from, true);
                }
            }
            MessageBody::ReadIndex(r) => self.handle_read(from, r.request_id),
            _ => {}
        }
    }

    fn handle_append_response(&mut self, from: NodeId, r: AppendResponse) {
        let pr = self.progress.get_mut(&from).expect("caller checked");
        if r.success {
            let moved = pr.acked(r.index);
            if pr.state == ProgressState::Probe {
                // The follower's log matches ours up to its match index: stream from there.
                pr.become_replicate();
            }
            if moved {
                self.maybe_commit();
                if self.role != Role::Leader || self.forget_if_removed(from) {
                    return;
                }
            }
            self.send_appends_while_open(from);
            if moved {
                // Entries it acknowledged may be committed already (through the others):
                // tell it with this Ready rather than at the next heartbeat.
                self.commit_notices_due = true;
                self.maybe_send_timeout_now(from);
            }
            return;
        }
        // A rejection. Ignore it unless it answers the latest probe (or, when streaming, it
        // rejects something past the match index): older ones are stale.
        let stale = match pr.state {
            ProgressState::Probe => r.index != pr.next_index.prev(),
            ProgressState::Replicate => r.index <= pr.match_index,
            ProgressState::Snapshot => true,
        };
        if stale {
            return;
        }
        let next = match r.hint {
            Some(ConflictHint {
                conflict_term: Some(term),
                conflict_index,
            }) => {
                // If we have entries of the conflicting term, resume after our last one of
                // them; otherwise skip the follower's whole term.
                let ours = self.log.last_index_with_term_at_most(r.index, term);
                if self.log.term(ours) == Some(term) {
                    ours.next()
                } else {
                    conflict_index
                }
            }
            Some(ConflictHint {
                conflict_term: None,
                conflict_index,
            }) => conflict_index,
            None => r.index,
        };
        let pr = self.progress.get_mut(&from).expect("caller checked");
        pr.become_probe();
        pr.next_index = next.min(r.index).max(pr.match_index.next());
        self.send_append(from, true);
    }

    // ----- leader sending ---------------------------------------------------------------

    fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in peers {
            self.send_appends_while_open(id);
        }
    }

    /// Sends appends to `to` until its window is full or it has everything.
    fn send_appends_while_open(&mut self, to: NodeId) {
        while self.send_append(to, false) {}
    }

    /// Sends one append to `to` if flow control allows. With `allow_empty`, an append without
    /// entries is sent when there is nothing new (a probe of `next_index - 1`). Returns whether
    /// entries were sent and more may follow.
    fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let last = self.log.last_index();
        let inflight_max = self.cfg.inflight_msgs_max;
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if pr.state == ProgressState::Snapshot {
            self.send_snapshot_chunks(to);
            return false;
        }
        if pr.is_paused(inflight_max) {
            return false;
        }
        let next = pr.next_index;
        if next > last && !allow_empty {
            return false;
        }
        let prev_log_index = next.prev();
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            // The entries the follower needs were compacted (cornerstone's
            // `last_log_idx < starting_idx - 1`): send the snapshot instead.
            self.start_snapshot(to);
            return false;
        };
        let entries = match self.log.entries(
            next,
            last,
            self.cfg.append_entries_max,
            self.cfg.msg_bytes_max,
        ) {
            Ok(e) => e,
            Err(_) => {
                self.start_snapshot(to);
                return false;
            }
        };
        let sent_last = entries.last().map_or(prev_log_index, |e| e.index);
        let more = !entries.is_empty() && sent_last < last;
        let pr = self.progress.get_mut(&to).expect("checked above");
        pr.sent(sent_last, inflight_max);
        pr.commit_sent = pr.commit_sent.max(self.log.committed.min(sent_last));
        let body = MessageBody::Append(AppendRequest {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.log.committed,
        });
        self.outbox.messages.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
        more && pr.state == ProgressState::Replicate
    }

    /// Switches `to` to receiving the newest snapshot, if there is one that covers what the
    /// log no longer has.
    fn start_snapshot(&mut self, to: NodeId) {
        let Some(meta) = self.snapshot.clone() else {
            return;
        };
        if meta.last_index < self.log.first_index().prev() {
            // The log was compacted past the newest snapshot: the application broke the
            // rule that compaction follows snapshots. Nothing can bring this follower up.
            return;
        }
        let pr = self.progress.get_mut(&to).expect("caller checked");
        pr.become_snapshot(meta);
        self.send_snapshot_chunks(to);
    }

    /// Asks the application to send the next chunks of `to`'s snapshot transfer, as far as
    /// its window allows.
    fn send_snapshot_chunks(&mut self, to: NodeId) {
        let chunk_max = self.cfg.snapshot_chunk_bytes_max as u64;
        let window = self.cfg.snapshot_chunks_inflight_max;
        let (from, term) = (self.id, self.term);
        let Some(t) = self.progress.get_mut(&to).and_then(|p| p.snapshot.as_mut()) else {
            return;
        };
        let send = |offset: u64, len: u64, first: bool| SnapshotSend {
            from,
            to,
            term,
            meta: t.meta.clone(),
            offset,
            len: len as usize,
            first,
        };
        if t.probe_needed {
            self.outbox.snapshot_sends.push(send(0, 0, false));
            t.probe_needed = false;
            t.probing = true;
            return;
        }
        if t.probing {
            return;
        }
        let size = t.meta.size_bytes;
        let mut sends = Vec::new();
        while t.inflight.len() < window && t.sent < size {
            let len = chunk_max.min(size - t.sent);
            sends.push(send(t.sent, len, t.fresh));
            t.fresh = false;
            t.sent += len;
            t.inflight.push_back(t.sent);
        }
        self.outbox.snapshot_sends.extend(sends);
    }

    fn handle_snapshot_response(&mut self, from: NodeId, r: InstallSnapshotResponse) {
        let pr = self.progress.get_mut(&from).expect("caller checked");
        if r.installed {
            // The follower's log covers the snapshot and matches ours up to its end (a
            // snapshot holds committed entries only): continue from the log after it.
            let done = pr
                .snapshot
                .as_ref()
                .is_some_and(|t| t.meta.last_index <= r.last_index);
            if r.last_index <= self.log.last_index() {
                pr.acked(r.last_index);
            }
            if done {
                pr.become_probe();
                self.send_append(from, true);
            }
            self.maybe_commit();
            return;
        }
        match &mut pr.snapshot {
            Some(t) if t.meta.last_index == r.last_index => {
                t.answered(r.next_offset, r.rejected);
                self.send_snapshot_chunks(from);
            }
            _ => {}
        }
    }

    /// A follower's handling of one chunk. Chunks are accepted strictly in order; a chunk
    /// past the expected offset is dropped silently (an earlier one was lost: the leader's
    /// stall detection resends), an earlier one is answered with what we hold.
    fn handle_snapshot_chunk(&mut self, from: NodeId, req: InstallSnapshotRequest) {
        let meta = &req.meta;
        if meta.last_index <= self.log.committed {
            // Our log already covers it.
            if self
                .receiving
                .as_ref()
                .is_some_and(|r| r.meta == *meta && !r.complete)
            {
                self.receiving = None;
            }
            self.send_later(from, snapshot::installed(meta));
            return;
        }
        let same = self.receiving.as_ref().is_some_and(|r| r.meta == *meta);
        if !same {
            if self.receiving.as_ref().is_some_and(|r| r.complete) {
                // Another snapshot awaits its install; this one can come again later.
                return;
            }
            self.receiving = Some(Receiving {
                meta: meta.clone(),
                next: 0,
                complete: false,
            });
            if req.offset > 0 {
                // A transfer we know nothing of (we restarted): start it over.
                self.send_later(from, snapshot::response(meta, 0, true));
                return;
            }
        }
        let r = self.receiving.as_mut().expect("set above");
        if r.complete {
            self.send_later(from, snapshot::response(meta, meta.size_bytes, false));
            return;
        }
        if req.offset < r.next {
            let next = r.next;
            self.send_later(from, snapshot::response(meta, next, false));
            return;
        }
        if req.offset > r.next {
            return;
        }
        let end = req.offset + req.data.len() as u64;
        let valid = crc32c::crc32c(&req.data) == req.chunk_checksum
            && end <= meta.size_bytes
            && req.done == (end == meta.size_bytes);
        if !valid {
            let next = r.next;
            self.send_later(from, snapshot::response(meta, next, true));
            return;
        }
        if req.data.is_empty() && !req.done {
            // A probe: tell the leader where to resume.
            let next = r.next;
            self.send_later(from, snapshot::response(meta, next, false));
            return;
        }
        r.next = end;
        r.complete = req.done;
        self.outbox.snapshot_chunks.push(SnapshotChunk {
            meta: meta.clone(),
            offset: req.offset,
            data: req.data,
            last: req.done,
        });
        if !req.done {
            self.send_later(from, snapshot::response(meta, end, false));
        }
    }

    /// The application wrote the last chunk of `meta` and verified the whole snapshot
    /// (`valid`), or found it corrupt.
    pub(crate) fn on_snapshot_received(&mut self, meta: &SnapshotMeta, valid: bool) {
        if !self
            .receiving
            .as_ref()
            .is_some_and(|r| r.complete && r.meta == *meta)
        {
            return;
        }
        self.receiving = None;
        let leader = self.leader.filter(|_| self.role == Role::Follower);
        if !valid {
            if let Some(leader) = leader {
                // Start the transfer over.
                let body = snapshot::response(meta, 0, true);
                self.outbox.messages.push(Message {
                    from: self.id,
                    to: leader,
                    term: self.term,
                    body,
                });
            }
            return;
        }
        self.on_snapshot_stored(meta.clone());
        if meta.last_index > self.log.committed {
            if !self.log.restore(meta.last_index, meta.last_term) {
                // The log was replaced: the snapshot's configuration is in force.
                self.configs.reset(meta.membership.clone());
                self.config_changed();
            }
            self.outbox.snapshot = Some(meta.clone());
        }
        if let Some(leader) = leader {
            self.send_later(leader, snapshot::installed(meta));
        }
    }

    /// The application's store holds `meta` as its newest snapshot.
    pub(crate) fn on_snapshot_stored(&mut self, meta: SnapshotMeta) {
        if meta.last_index.next() >= self.log.first_index() {
            // It covers everything before the log's start: its configuration is the one in
            // force before the log's first entry.
            self.configs.set_base(meta.membership.clone());
            self.config_changed();
        }
        if self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.last_index >= meta.last_index)
        {
            return;
        }
        self.snapshot = Some(meta.clone());
        // Transfers of an older snapshot start over with this one (the store dropped the
        // old one).
        let restart: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(_, p)| p.state == ProgressState::Snapshot)
            .map(|(&id, _)| id)
            .collect();
        for id in restart {
            let pr = self.progress.get_mut(&id).expect("listed above");
            pr.become_snapshot(meta.clone());
            self.send_snapshot_chunks(id);
        }
    }

    fn broadcast_heartbeat(&mut self) {
        let commit = self.log.committed;
        let msgs: Vec<Message> = self
            .progress
            .iter()
            .map(|(&to, pr)| Message {
                from: self.id,
                to,
                term: self.term,
                body: MessageBody::Heartbeat(HeartbeatRequest {
                    leader_commit: commit.min(pr.match_index),
                    context: self.read_context,
                }),
            })
            .collect();
        self.outbox.messages.extend(msgs);
    }

    /// Advances the commit index to what a quorum has durably, if that entry is of the current
    /// term (§5.4.2, Figure 8: entries of older terms commit only indirectly).
    fn maybe_commit(&mut self) {
        let own = self.log.persisted;
        let id = self.id;
        let progress = &self.progress;
        let index = quorum::joint_index(&self.membership, |n| {
            if n == id {
                own
            } else {
                progress.get(&n).map_or(LogIndex(0), |p| p.match_index)
            }
        });
        if index > self.log.committed && self.log.term(index) == Some(self.term) {
            self.log.commit_to(index);
            for (from, request_id) in std::mem::take(&mut self.reads_before_commit) {
                self.handle_read(from, request_id);
            }
            self.config_committed();
            self.commit_notices_due = true;
        }
    }

    /// Tells the followers a new commit index with the next Ready (as etcd's `bcastAppend`
    /// after a commit does) instead of with a later append or heartbeat, so that they apply
    /// it, and answer the clients waiting on them, a one-way delay later rather than a
    /// heartbeat later. Called when the Ready is taken, so every commit advance since the
    /// last one costs at most one message per follower: appends of this term still in the
    /// outbox carry the new commit index (the leader's log holds their entries, so it is
    /// correct there); other followers that would learn something get a commit notice
    /// ([`Raft::send_commit_notice`]).
    pub(crate) fn flush_commit_notices(&mut self) {
        if !std::mem::take(&mut self.commit_notices_due) || self.role != Role::Leader {
            return;
        }
        let committed = self.log.committed;
        let term = self.term;
        for m in self.outbox.messages.iter_mut().filter(|m| m.term == term) {
            if let MessageBody::Append(a) = &mut m.body {
                a.leader_commit = committed;
                let last = a.entries.last().map_or(a.prev_log_index, |e| e.index);
                if let Some(pr) = self.progress.get_mut(&m.to) {
                    pr.commit_sent = pr.commit_sent.max(committed.min(last));
                }
            }
        }
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            self.send_commit_notice(to);
        }
    }

    /// Whether [`Raft::flush_commit_notices`] has something to do (for `has_ready`).
    pub(crate) fn commit_notices_wanted(&self) -> bool {
        self.commit_notices_due
            && self.role == Role::Leader
            && self.progress.iter().any(|(id, pr)| {
                *id != self.id && self.log.committed.min(pr.match_index) > pr.commit_sent
            })
    }

    /// Sends `to` an empty append at its match index carrying the commit index, if that
    /// tells it more than what was sent to it already. The follower holds its match index,
    /// so the append is never refused (one at the next index could overtake entries still in
    /// flight and be refused), and it commits up to the smaller of the commit index and its
    /// match index. Followers being probed or sent a snapshot, or whose window is full (a
    /// slow follower gets no more messages than `inflight_msgs_max`), hear it later.
    fn send_commit_notice(&mut self, to: NodeId) {
        let committed = self.log.committed;
        let inflight_max = self.cfg.inflight_msgs_max;
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        let learns = committed.min(pr.match_index);
        if to == self.id
            || pr.state != ProgressState::Replicate
            || pr.is_paused(inflight_max)
            || learns <= pr.commit_sent
        {
            return;
        }
        let prev_log_index = pr.match_index;
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            return; // compacted: the next append carries the commit index
        };
        pr.commit_sent = learns;
        let body = MessageBody::Append(AppendRequest {
            prev_log_index,
            prev_log_term,
            entries: Vec::new(),
            leader_commit: committed,
        });
        self.outbox.messages.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    // ----- configuration changes (§6, chapter 4 of the dissertation) -------------------

    /// The configuration in `configs` may have changed: take it up.
    fn config_changed(&mut self) {
        let current = self.configs.current();
        if *current != self.membership {
            self.membership = current.clone();
            if is_member(&self.membership, self.id) {
                self.removed = false;
                self.removed_timeouts = 0;
            }
        }
        if self.role == Role::Leader {
            self.sync_progress();
        }
    }

    /// The leader tracks every member of the configuration, and keeps replicating to members
    /// the latest configuration removed until they hold it, so that they learn of it.
    fn sync_progress(&mut self) {
        let next = self.log.last_index().next();
        for id in self.membership.members() {
            if id != self.id && !self.progress.contains_key(&id) {
                let mut pr = Progress::new(next);
                pr.recent_active = true;
                self.progress.insert(id, pr);
            }
        }
        let config_index = self.configs.current_index();
        if config_index <= self.log.committed {
            // A removed member is dropped once it holds the configuration that removes it
            // (so it knows, stops campaigning and reports its removal).
            let membership = &self.membership;
            self.progress
                .retain(|&id, p| is_member(membership, id) || p.match_index < config_index);
        }
    }

    /// Drops `id` if the committed configuration removed it and it now holds that
    /// configuration (see [`Raft::sync_progress`]): its acknowledgement may arrive after the
    /// commit, which is the other time the leader checks. Returns whether it was dropped.
    fn forget_if_removed(&mut self, id: NodeId) -> bool {
        if is_member(&self.membership, id) {
            return false;
        }
        self.sync_progress();
        !self.progress.contains_key(&id)
    }

    /// The commit index moved on the leader: finish or continue configuration work.
    fn config_committed(&mut self) {
        let committed = self.log.committed;
        if self.configs.current_index() > committed {
            return;
        }
        // Runs at every commit on the leader: drop removed members' progress only when there
        // is some (no allocation otherwise).
        let membership = &self.membership;
        if self.progress.keys().any(|&id| !is_member(membership, id)) {
            self.sync_progress();
        }
        if let Some(change) = &self.pending_change {
            if let Stage::Commit { index, then } = &change.stage {
                if *index <= committed {
                    let (request_id, then) = (change.request_id, *then);
                    match then {
                        Then::Done => {
                            self.pending_change = None;
                            self.outbox.membership_results.push(MembershipResult {
                                request_id,
                                result: Ok(self.membership.clone()),
                            });
                        }
                        Then::LeaveJoint => {
                            let index =
                                self.propose_config(membership::leave_joint(&self.membership));
                            self.pending_change = Some(PendingChange {
                                request_id,
                                stage: Stage::Commit {
                                    index,
                                    then: Then::Done,
                                },
                            });
                        }
                        Then::Promote(id) => self.start_catch_up(request_id, id),
                    }
                }
            }
        } else if self.membership.is_joint() {
            // A joint configuration left behind by an earlier leader: leave it.
            self.propose_config(membership::leave_joint(&self.membership));
            return;
        }
        if self.role == Role::Leader && !self.is_voter() {
            self.step_down_removed();
        }
    }

    /// The leader is not a voter of the committed configuration: hand over and step down.
    fn step_down_removed(&mut self) {
        let last = self.log.last_index();
        let best = self
            .progress
            .iter()
            .filter(|(id, _)| self.membership.is_voter(**id))
            .max_by_key(|(_, p)| p.match_index)
            .map(|(&id, p)| (id, p.match_index));
        if let Some((id, matched)) = best {
            if matched == last {
                // The most up-to-date voter campaigns at once instead of waiting for its
                // election timeout (§3.10 of the dissertation).
                self.outbox.messages.push(Message {
                    from: self.id,
                    to: id,
                    term: self.term,
                    body: MessageBody::TimeoutNow,
                });
            }
        }
        let term = self.term;
        self.become_follower(term, None);
    }

    /// Appends a configuration entry on the leader and sends it out.
    fn propose_config(&mut self, membership: Membership) -> LogIndex {
        let index = self.append_own(vec![EntryPayload::Membership(membership)]);
        self.broadcast_append();
        index
    }

    /// Starts a configuration change on the leader; its outcome comes in
    /// `membership_results` under `request_id`.
    pub(crate) fn propose_membership(
        &mut self,
        request_id: u64,
        change: MembershipChange,
    ) -> Result<()> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(t) = &self.transfer {
            return Err(Error::TransferInProgress { to: t.to });
        }
        if self.pending_change.is_some()
            || self.configs.current_index() > self.log.committed
            || self.membership.is_joint()
        {
            return Err(Error::MembershipChangePending(
                ChangeBlocked::ChangeInProgress,
            ));
        }
        if self.log.term(self.log.committed) != Some(self.term) {
            // Until an entry of its term commits, a new leader may not know the latest
            // committed configuration (the bug in the dissertation's single-server changes).
            return Err(Error::MembershipChangePending(
                ChangeBlocked::LeaderNotSettled,
            ));
        }
        let (next, last) =
            membership::plan(&self.membership, &change).map_err(Error::MembershipRefused)?;
        if let MembershipChange::Promote(id) = change {
            self.start_catch_up(request_id, id);
            return Ok(());
        }
        let then = match change {
            MembershipChange::AddVoter(id) => Then::Promote(id),
            _ if last => Then::Done,
            _ => Then::LeaveJoint,
        };
        let index = self.propose_config(next);
        self.pending_change = Some(PendingChange {
            request_id,
            stage: Stage::Commit { index, then },
        });
        Ok(())
    }

    /// Starts the rounds that bring learner `id` up to date before it votes.
    fn start_catch_up(&mut self, request_id: u64, id: NodeId) {
        self.pending_change = Some(PendingChange {
            request_id,
            stage: Stage::CatchUp(CatchUp {
                id,
                round_end: self.log.last_index(),
                round_ticks: 0,
                rounds: 1,
            }),
        });
        self.send_append(id, true);
    }

    /// One tick of a learner's catch-up: a round ends when the learner holds the leader's last
    /// index of the round's start. A round within an election timeout means it keeps up:
    /// promote it. A slower round starts the next one; after `catch_up_rounds_max`, give up.
    fn tick_catch_up(&mut self) {
        let Some(PendingChange {
            request_id,
            stage: Stage::CatchUp(c),
        }) = &mut self.pending_change
        else {
            return;
        };
        let request_id = *request_id;
        c.round_ticks += 1;
        let matched = self
            .progress
            .get(&c.id)
            .map_or(LogIndex(0), |p| p.match_index);
        let id = c.id;
        if matched >= c.round_end && c.round_ticks <= self.cfg.election_ticks {
            if !self.membership.learners.contains(&id) {
                // No longer a learner (cannot happen while this change is the one in
                // progress, but the caller must hear an outcome either way).
                self.pending_change = None;
                self.outbox.membership_results.push(MembershipResult {
                    request_id,
                    result: Err(MembershipError::NotALearner { id }),
                });
                return;
            }
            let (next, _) = membership::plan(&self.membership, &MembershipChange::Promote(id))
                .expect("a learner can be promoted");
            let index = self.propose_config(next);
            self.pending_change = Some(PendingChange {
                request_id,
                stage: Stage::Commit {
                    index,
                    then: Then::Done,
                },
            });
            return;
        }
        if matched >= c.round_end || c.round_ticks > self.cfg.election_ticks {
            c.rounds += 1;
            if c.rounds > self.cfg.catch_up_rounds_max {
                let rounds = c.rounds - 1;
                self.pending_change = None;
                self.outbox.membership_results.push(MembershipResult {
                    request_id,
                    result: Err(MembershipError::CatchUpFailed { id, rounds }),
                });
                return;
            }
            c.round_end = self.log.last_index();
            c.round_ticks = 0;
        }
    }

    // ----- leadership transfer (§3.10 of the dissertation) --------------------------------

    /// Hands leadership to `to`: no more proposals, bring `to` up to date, then TimeoutNow.
    pub(crate) fn transfer_leadership(&mut self, to: NodeId) -> Result<()> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id {
            return Ok(());
        }
        if !self.membership.voters.contains(&to) || !self.progress.contains_key(&to) {
            return Err(Error::MembershipRefused(Refusal::NotAVoter(to)));
        }
        self.transfer = Some(Transfer { to, elapsed: 0 });
        self.maybe_send_timeout_now(to);
        Ok(())
    }

    /// The index of the entry that defines the configuration in force (0: the base).
    pub(crate) fn membership_index(&self) -> LogIndex {
        self.configs.current_index()
    }

    /// The transfer target, if one is in progress.
    pub(crate) fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.as_ref().map(|t| t.to)
    }

    /// Sends TimeoutNow to the transfer target once it holds the whole log; else replicates.
    fn maybe_send_timeout_now(&mut self, to: NodeId) {
        if self.transfer.as_ref().map(|t| t.to) != Some(to) {
            return;
        }
        let last = self.log.last_index();
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.match_index == last);
        if caught_up {
            self.outbox.messages.push(Message {
                from: self.id,
                to,
                term: self.term,
                body: MessageBody::TimeoutNow,
            });
        } else {
            self.send_append(to, true);
        }
    }

    // ----- linearizable reads (§6.4 of the dissertation) ---------------------------------

    /// Starts a read-index request: on the leader, confirm leadership with a heartbeat round;
    /// elsewhere, ask the leader.
    pub(crate) fn read_index(&mut self, request_id: u64) {
        match (self.role, self.leader) {
            (Role::Leader, _) => self.handle_read(self.id, request_id),
            (_, Some(_)) if self.reads_forwarded.len() >= self.cfg.read_requests_max => {
                self.outbox.read_states.push(ReadState {
                    request_id,
                    index: None,
                });
            }
            (_, Some(leader)) => {
                self.reads_forwarded.insert(request_id);
                let body = MessageBody::ReadIndex(ReadIndexRequest { request_id });
                self.outbox.messages.push(Message {
                    from: self.id,
                    to: leader,
                    term: self.term,
                    body,
                });
            }
            (_, None) => self.outbox.read_states.push(ReadState {
                request_id,
                index: None,
            }),
        }
    }

    fn handle_read(&mut self, from: NodeId, request_id: u64) {
        debug_assert_eq!(self.role, Role::Leader);
        let queued = self.reads.len() + self.reads_before_commit.len();
        if queued >= self.cfg.read_requests_max {
            self.answer_read(from, request_id, None);
            return;
        }
        if self.log.term(self.log.committed) != Some(self.term) {
            // Until an entry of our term commits, our commit index may be behind what an
            // earlier leader committed.
            self.reads_before_commit.push((from, request_id));
            return;
        }
        self.read_context += 1;
        self.reads.push_back(PendingRead {
            from,
            request_id,
            index: self.log.committed,
            context: self.read_context,
        });
        self.confirm_reads();
        if !self.reads.is_empty() {
            self.broadcast_heartbeat();
        }
    }

    /// Answers every read whose heartbeat context a quorum has acknowledged.
    fn confirm_reads(&mut self) {
        while let Some(front) = self.reads.front() {
            let context = front.context;
            let (id, acked) = (self.id, &self.read_acked);
            let confirmed = quorum::is_quorum(&self.membership, |n| {
                n == id || acked.get(&n).is_some_and(|&c| c >= context)
            });
            if !confirmed {
                break;
            }
            let read = self.reads.pop_front().expect("front exists");
            self.answer_read(read.from, read.request_id, Some(read.index));
        }
    }

    fn answer_read(&mut self, from: NodeId, request_id: u64, index: Option<LogIndex>) {
        if from == self.id {
            self.outbox
                .read_states
                .push(ReadState { request_id, index });
        } else {
            let body = MessageBody::ReadIndexResponse(ReadIndexResponse {
                request_id,
                read_index: index,
            });
            self.outbox.messages.push(Message {
                from: self.id,
                to: from,
                term: self.term,
                body,
            });
        }
    }

    /// Leadership is lost or a new term begins: no pending read can be confirmed any more.
    fn fail_reads(&mut self) {
        let pending: Vec<(NodeId, u64)> = self
            .reads
            .drain(..)
            .map(|r| (r.from, r.request_id))
            .chain(self.reads_before_commit.drain(..))
            .collect();
        for (from, request_id) in pending {
            self.answer_read(from, request_id, None);
        }
        self.read_acked.clear();
        for request_id in std::mem::take(&mut self.reads_forwarded) {
            self.outbox.read_states.push(ReadState {
                request_id,
                index: None,
            });
        }
    }

    /// The leader answered a read this node forwarded.
    fn read_answered(&mut self, r: ReadIndexResponse) {
        if self.reads_forwarded.remove(&r.request_id) {
            self.outbox.read_states.push(ReadState {
                request_id: r.request_id,
                index: r.read_index,
            });
        }
    }

    fn send_later(&mut self, to: NodeId, body: MessageBody) {
        self.outbox.persisted_messages.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }
}

#[derive(Clone, Copy)]
enum MessageBodyKind {
    PreVote,
    Vote,
}

fn append_ok(index: LogIndex) -> MessageBody {
    MessageBody::AppendResponse(AppendResponse {
        success: true,
        index,
        hint: None,
    })
}

/// Whether `id` is a voter (of either half) or a learner of `membership`.
fn is_member(membership: &Membership, id: NodeId) -> bool {
    membership.is_voter(id) || membership.learners.contains(&id)
}

/// A configuration change the leader is carrying out.
struct PendingChange {
    request_id: u64,
    stage: Stage,
}

enum Stage {
    /// Waiting for the configuration entry at `index` to commit.
    Commit { index: LogIndex, then: Then },
    /// Bringing a learner up to date before it is promoted.
    CatchUp(CatchUp),
}

/// What follows once a configuration entry commits.
#[derive(Clone, Copy)]
enum Then {
    Done,
    LeaveJoint,
    Promote(NodeId),
}

struct CatchUp {
    id: NodeId,
    /// The round ends when the learner holds this index.
    round_end: LogIndex,
    round_ticks: u32,
    rounds: u32,
}

struct Transfer {
    to: NodeId,
    elapsed: u32,
}
