//! The role logic: follower, pre-candidate, candidate and leader (§5 of the paper).
//!
//! Term handling happens once, in [`Raft::step`]; then a per-role function handles the message.
//! `Raft` keeps what every node keeps (term, vote, log, configuration, election timer, the
//! snapshot being received); what one role keeps lives in its variant of
//! [`RoleState`], built fresh by the `become_*` functions (see [`role`](crate::role)).
//! Every output for the application is queued in one [`Outbox`], which the next
//! [`Ready`](crate::Ready) takes whole: outgoing messages in two lists (`messages` may be sent
//! at once, `persisted_messages` only after the entries and hard state produced by the same
//! step are durable), finished reads and configuration changes, and snapshot work.

use bytes::Bytes;
use raftline_proto::{
    AppendRequest, AppendResponse, ConflictHint, Entry, EntryPayload, HardState, HeartbeatRequest,
    HeartbeatResponse, InstallSnapshotRequest, InstallSnapshotResponse, LogIndex, Membership,
    Message, MessageBody, NodeId, ReadIndexRequest, ReadIndexResponse, SnapshotMeta, Term,
    VoteRequest, VoteResponse,
};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::leader::{CatchUp, CatchUpStep, LeaderState, PendingChange, Stage, Then, Transfer};
use crate::lease::LeaderLease;
use crate::log::RaftLog;
use crate::membership::{
    self, is_member, ChangeBlocked, ConfigLog, MembershipChange, MembershipError, MembershipResult,
    Refusal,
};
use crate::outbox::Outbox;
use crate::progress::{Progress, ProgressState};
use crate::quorum::VoteResult;
use crate::reads::{PendingRead, ReadState};
use crate::rng::Rng;
use crate::role::{CandidateState, FollowerState, Role, RoleState};
use crate::snapshot::{self, Receiving, SnapshotChunk, SnapshotSend};
use crate::storage::Storage;

pub(crate) struct Raft<S> {
    pub(crate) id: NodeId,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    /// The role, with the state only that role keeps.
    role: RoleState,
    pub(crate) leader: Option<NodeId>,
    pub(crate) log: RaftLog<S>,
    /// The configuration in force: the latest in `configs`.
    pub(crate) membership: Membership,
    /// The configuration entries of the log, to revert one that is truncated.
    configs: ConfigLog,
    /// Election timeouts this node spent outside the configuration it knows.
    removed_timeouts: u32,
    /// This node learned a configuration without it and gave up after
    /// `removed_election_timeouts` election timeouts.
    pub(crate) removed: bool,
    /// Ticks since the last election timeout reset (follower: since we heard from a leader).
    election_elapsed: u32,
    randomized_election_ticks: u32,
    pub(crate) cfg: Config,
    rng: Rng,
    /// Everything queued for the next Ready.
    pub(crate) outbox: Outbox,
    /// The heartbeat context of the leader's newest read; heartbeats carry it. Numbered over
    /// the node's life rather than per term (contexts need only grow within a term), so it
    /// is the one piece of reading state that outlives a leadership.
    read_context: u64,
    /// The newest snapshot in the application's store: what a leader sends.
    pub(crate) snapshot: Option<SnapshotMeta>,
    /// The snapshot this follower is receiving.
    receiving: Option<Receiving>,
    /// Ticks since this node started (the lease's clock; see [`lease`](crate::lease)).
    ticks: u64,
    /// `ticks` when this node last took a message from a leader (a start counts as one).
    heard: u64,
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
            role: RoleState::default(),
            leader: None,
            log,
            membership: configs.current().clone(),
            configs,
            removed_timeouts: 0,
            removed: false,
            election_elapsed: 0,
            randomized_election_ticks: cfg.election_ticks,
            rng: Rng::new(cfg.seed),
            cfg,
            outbox: Outbox::default(),
            read_context: 0,
            snapshot: None,
            receiving: None,
            ticks: 0,
            heard: 0,
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

    /// The role this node plays.
    pub(crate) fn role(&self) -> Role {
        self.role.role()
    }

    /// The leader's state. Only for paths that run on the leader alone.
    fn leader_state(&mut self) -> &mut LeaderState {
        self.role.leader_mut().expect("only the leader gets here")
    }

    /// The leader's replication progress for `peer` (`None` on non-leaders).
    pub(crate) fn progress(&self, peer: NodeId) -> Option<&Progress> {
        self.role.progress(peer)
    }

    fn is_voter(&self) -> bool {
        self.membership.is_voter(self.id)
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
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
    //
    // Each `become_*` builds the new role's state fresh (see `role`): what the old role kept
    // is dropped here, after `end_role` has failed whatever callers were waiting on.

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let old = std::mem::take(&mut self.role);
        self.end_role(old);
        self.set_term(term);
        self.leader = leader;
        self.reset_election_timer();
    }

    fn become_pre_candidate(&mut self) {
        // A pre-campaign changes neither term nor vote: the reads forwarded as a follower of
        // this term may still be answered.
        let follower = match std::mem::take(&mut self.role) {
            RoleState::Follower(f) | RoleState::PreCandidate { follower: f, .. } => f,
            RoleState::Candidate(_) => FollowerState::default(),
            RoleState::Leader(_) => panic!("a leader does not pre-campaign"),
        };
        self.role = RoleState::PreCandidate {
            follower,
            votes: CandidateState::pre_campaign(self.id),
        };
        self.leader = None;
        self.reset_election_timer();
    }

    fn become_candidate(&mut self) {
        assert_ne!(self.role(), Role::Leader, "a leader does not campaign");
        let old = std::mem::take(&mut self.role);
        self.end_role(old);
        let term = self.term.next();
        self.set_term(term);
        self.vote = Some(self.id);
        // Our own vote counts once it is durable, so that a crash cannot make us vote twice in
        // this term (Election Safety).
        self.role = RoleState::Candidate(CandidateState::campaign());
        self.leader = None;
        self.reset_election_timer();
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role(),
            Role::Candidate,
            "only a candidate becomes leader"
        );
        // Leader Completeness: a winner's log holds every committed entry, in particular
        // everything up to its own commit index.
        assert!(
            self.log.committed <= self.log.last_index(),
            "Leader Completeness"
        );
        let next = self.log.last_index().next();
        let lease = LeaderLease::new(self.cfg.read_mode, self.heard);
        let leader = LeaderState::new(self.id, &self.membership, next, lease);
        self.role = RoleState::Leader(Box::new(leader));
        self.leader = Some(self.id);
        self.reset_election_timer();
        // A no-op of our term lets entries of earlier terms commit (§5.4.2, §8).
        self.append_own(vec![EntryPayload::Noop]);
        self.broadcast_append();
    }

    /// The role `old` ends (in the current term, before any new term is taken): nobody waiting
    /// on it may wait forever. A leader's pending reads and configuration change fail; so do
    /// the reads a follower forwarded.
    fn end_role(&mut self, old: RoleState) {
        match old {
            RoleState::Leader(leader) => {
                let LeaderState { reads, change, .. } = *leader;
                for (from, request_id) in reads.into_waiting() {
                    self.answer_read(from, request_id, None);
                }
                if let Some(change) = change {
                    self.outbox.membership_results.push(MembershipResult {
                        request_id: change.request_id,
                        result: Err(MembershipError::LeadershipLost),
                    });
                }
            }
            RoleState::Follower(f) | RoleState::PreCandidate { follower: f, .. } => {
                for request_id in f.forwarded.into_waiting() {
                    self.outbox.read_states.push(ReadState {
                        request_id,
                        index: None,
                    });
                }
            }
            RoleState::Candidate(_) => {}
        }
    }

    // ----- inputs -----------------------------------------------------------------------

    pub(crate) fn tick(&mut self) {
        self.ticks += 1;
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        match self.role() {
            Role::Leader => self.tick_leader(),
            _ => {
                self.resend_forwarded_reads();
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
        self.leader_state().heartbeat_elapsed += 1;
        let now = self.ticks;
        if self.leader_state().lease.commit_opens_at(now) {
            // The deferred commit ends: what a quorum holds may commit now.
            self.maybe_commit();
        }
        self.tick_catch_up();
        let election_ticks = self.cfg.election_ticks;
        self.leader_state().tick_transfer(election_ticks);
        if self.election_elapsed >= election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let leader = self.role.leader_mut().expect("leader");
                if !leader.check_quorum(self.id, &self.membership) {
                    // §6.2: a leader that cannot reach a quorum steps down, so clients look
                    // for the leader elsewhere.
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
            }
        }
        let heartbeat_ticks = self.cfg.heartbeat_ticks;
        let leader = self.leader_state();
        if leader.heartbeat_elapsed >= heartbeat_ticks {
            leader.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Starts an election now (with a pre-vote round first when enabled).
    pub(crate) fn campaign(&mut self) {
        if self.role() == Role::Leader || !self.is_voter() {
            return;
        }
        if self.cfg.pre_vote {
            self.become_pre_candidate();
            self.check_votes();
            if self.role() == Role::PreCandidate {
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
        let Some(leader) = self.role.leader() else {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        };
        if let Some(to) = leader.transfer_target() {
            return Err(Error::TransferInProgress { to });
        }
        let uncommitted = self.log.last_index().0 - self.log.committed.0;
        if uncommitted + commands.len() as u64 > self.cfg.uncommitted_entries_max {
            return Err(Error::Busy { uncommitted });
        }
        let last = self.append_own(commands.into_iter().map(EntryPayload::Normal).collect());
        // Sent by the next Ready (`flush_appends`), together with whatever else is proposed
        // before it: one append per follower instead of one per proposal.
        if let Some(leader) = self.role.leader_mut() {
            leader.appends_due = true;
        }
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
        let now = self.ticks;
        if let Some(leader) = self.role.leader_mut() {
            leader.lease.created(index, now);
        }
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
        let own_vote_durable =
            hard_state.is_some_and(|hs| hs.term == self.term && hs.vote == Some(self.id));
        if own_vote_durable {
            if let RoleState::Candidate(votes) = &mut self.role {
                if votes.own_vote_durable(self.id) {
                    self.check_votes();
                }
            }
        }
        if self.role() == Role::Leader {
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
            _ => match self.role() {
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
        self.heard = self.ticks;
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
                if self.role() == Role::PreCandidate
                    && (m.term == self.term.next() || !r.granted) =>
            {
                self.count_vote(m.from, r.granted);
            }
            MessageBody::ReadIndex(r) => self.answer_read(m.from, r.request_id, None),
            MessageBody::ReadIndexResponse(r) => self.read_answered(r),
            MessageBody::VoteResponse(r) if self.role() == Role::Candidate => {
                self.count_vote(m.from, r.granted);
            }
            _ => {}
        }
    }

    fn count_vote(&mut self, from: NodeId, granted: bool) {
        if let Some(votes) = self.role.candidate_mut() {
            votes.record(from, granted);
        }
        self.check_votes();
    }

    fn check_votes(&mut self) {
        let Some(votes) = self.role.candidate() else {
            return;
        };
        match votes.result(&self.membership) {
            VoteResult::Won => match self.role() {
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
        let Some(pr) = self.role.progress_mut(from) else {
            return;
        };
        pr.recent_active = true;
        match m.body {
            MessageBody::AppendResponse(r) => self.handle_append_response(from, r),
            MessageBody::InstallSnapshotResponse(r) => self.handle_snapshot_response(from, r),
            MessageBody::HeartbeatResponse(r) => self.handle_heartbeat_response(from, r),
            MessageBody::ReadIndex(r) => self.handle_read(from, r.request_id),
            _ => {}
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, r: HeartbeatResponse) {
        if r.context > 0 {
            self.leader_state().reads.ack(from, r.context);
            self.confirm_reads();
        }
        let inflight_max = self.cfg.inflight_msgs_max;
        let pr = self.role.progress_mut(from).expect("caller checked");
        if let Some(transfer) = &mut pr.snapshot {
            // A transfer without progress for about an election timeout lost chunks or
            // answers: probe again and resend from what the follower holds.
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

    fn handle_append_response(&mut self, from: NodeId, r: AppendResponse) {
        let pr = self.role.progress_mut(from).expect("caller checked");
        if r.success {
            let moved = pr.acked(r.index);
            if pr.state == ProgressState::Probe {
                // The follower's log matches ours up to its match index: stream from there.
                pr.become_replicate();
            }
            if moved {
                self.maybe_commit();
                if self.role() != Role::Leader || self.forget_if_removed(from) {
                    return;
                }
            }
            self.send_appends_while_open(from);
            if moved {
                // Entries it acknowledged may be committed already (through the others):
                // tell it with this Ready rather than at the next heartbeat.
                self.leader_state().commit_notices_due = true;
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
        let pr = self.role.progress_mut(from).expect("caller checked");
        pr.become_probe();
        pr.next_index = next.min(r.index).max(pr.match_index.next());
        self.send_append(from, true);
    }

    // ----- leader sending ---------------------------------------------------------------

    fn broadcast_append(&mut self) {
        let peers = self
            .role
            .leader()
            .map(LeaderState::peers)
            .unwrap_or_default();
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
        let Some(pr) = self.role.progress(to) else {
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
        let pr = self.role.progress_mut(to).expect("checked above");
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
        let pr = self.role.progress_mut(to).expect("caller checked");
        pr.become_snapshot(meta);
        self.send_snapshot_chunks(to);
    }

    /// Asks the application to send the next chunks of `to`'s snapshot transfer, as far as
    /// its window allows.
    fn send_snapshot_chunks(&mut self, to: NodeId) {
        let chunk_max = self.cfg.snapshot_chunk_bytes_max as u64;
        let window = self.cfg.snapshot_chunks_inflight_max;
        let (from, term) = (self.id, self.term);
        let Some(t) = self.role.progress_mut(to).and_then(|p| p.snapshot.as_mut()) else {
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
        let pr = self.role.progress_mut(from).expect("caller checked");
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
        let leader = self.leader.filter(|_| self.role() == Role::Follower);
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
        let restart = self
            .role
            .leader()
            .map(LeaderState::snapshot_peers)
            .unwrap_or_default();
        for id in restart {
            let pr = self.role.progress_mut(id).expect("listed above");
            pr.become_snapshot(meta.clone());
            self.send_snapshot_chunks(id);
        }
    }

    fn broadcast_heartbeat(&mut self) {
        let Some(leader) = self.role.leader() else {
            return;
        };
        let commit = self.log.committed;
        let msgs: Vec<Message> = leader
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
        let Some(leader) = self.role.leader() else {
            return;
        };
        let index = leader.quorum_index(self.id, &self.membership, self.log.persisted);
        let now = self.ticks;
        if index > self.log.committed && self.log.term(index) == Some(self.term) {
            if !leader.lease.may_commit(now) {
                // LeaseGuard's deferred commit: an earlier leader may still hold a lease
                // (see `lease`). The tick that ends the wait commits.
                return;
            }
            self.log.commit_to(index);
            self.leader_state().lease.committed(index, now);
            for (from, request_id) in self.leader_state().reads.take_deferred() {
                self.handle_read(from, request_id);
            }
            self.config_committed();
            // Unless the commit made this leader step down (it left the configuration).
            if let Some(leader) = self.role.leader_mut() {
                leader.commit_notices_due = true;
            }
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
        let Some(leader) = self.role.leader_mut() else {
            return;
        };
        if !std::mem::take(&mut leader.commit_notices_due) {
            return;
        }
        let committed = self.log.committed;
        let term = self.term;
        for m in self.outbox.messages.iter_mut().filter(|m| m.term == term) {
            if let MessageBody::Append(a) = &mut m.body {
                a.leader_commit = committed;
                let last = a.entries.last().map_or(a.prev_log_index, |e| e.index);
                if let Some(pr) = leader.progress.get_mut(&m.to) {
                    pr.commit_sent = pr.commit_sent.max(committed.min(last));
                }
            }
        }
        for to in leader.peers() {
            self.send_commit_notice(to);
        }
    }

    /// Whether [`Raft::flush_commit_notices`] has something to do (for `has_ready`).
    /// Sends what was proposed since the last Ready to every follower whose window is open.
    pub(crate) fn flush_appends(&mut self) {
        if self
            .role
            .leader_mut()
            .is_some_and(|l| std::mem::take(&mut l.appends_due))
        {
            self.broadcast_append();
        }
    }

    /// Whether proposals wait for [`flush_appends`](Self::flush_appends).
    pub(crate) fn appends_due(&self) -> bool {
        self.role.leader().is_some_and(|l| l.appends_due)
    }

    pub(crate) fn commit_notices_wanted(&self) -> bool {
        self.role
            .leader()
            .is_some_and(|l| l.commit_notices_wanted(self.id, self.log.committed))
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
        let Some(pr) = self.role.progress_mut(to) else {
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
        self.sync_progress();
    }

    /// On the leader, tracks the members of the configuration in force (see
    /// [`LeaderState::sync_progress`]).
    fn sync_progress(&mut self) {
        let next = self.log.last_index().next();
        let config_index = self.configs.current_index();
        let committed = config_index <= self.log.committed;
        if let Some(leader) = self.role.leader_mut() {
            leader.sync_progress(self.id, &self.membership, next, config_index, committed);
        }
    }

    /// Drops `id` if the committed configuration removed it and it now holds that
    /// configuration (see [`LeaderState::sync_progress`]): its acknowledgement may arrive
    /// after the commit, which is the other time the leader checks. Returns whether it was
    /// dropped.
    fn forget_if_removed(&mut self, id: NodeId) -> bool {
        if is_member(&self.membership, id) {
            return false;
        }
        self.sync_progress();
        self.role.progress(id).is_none()
    }

    /// The commit index moved on the leader: finish or continue configuration work.
    fn config_committed(&mut self) {
        let committed = self.log.committed;
        if self.configs.current_index() > committed {
            return;
        }
        let Some(leader) = self.role.leader() else {
            return;
        };
        // Runs at every commit on the leader: drop removed members' progress only when there
        // is some (no allocation otherwise).
        if leader.tracks_removed(&self.membership) {
            self.sync_progress();
        }
        let change = self.role.leader().and_then(|l| l.change.as_ref());
        match change.map(|c| (c.request_id, c.committed(committed))) {
            Some((request_id, Some(then))) => self.change_committed(request_id, then),
            Some((_, None)) => {}
            None if self.membership.is_joint() => {
                // A joint configuration left behind by an earlier leader: leave it.
                self.propose_config(membership::leave_joint(&self.membership));
                return;
            }
            None => {}
        }
        if self.role() == Role::Leader && !self.is_voter() {
            self.step_down_removed();
        }
    }

    /// The configuration entry of change `request_id` committed: do what follows (`then`).
    fn change_committed(&mut self, request_id: u64, then: Then) {
        match then {
            Then::Done => {
                self.leader_state().change = None;
                self.outbox.membership_results.push(MembershipResult {
                    request_id,
                    result: Ok(self.membership.clone()),
                });
            }
            Then::LeaveJoint => {
                let index = self.propose_config(membership::leave_joint(&self.membership));
                self.leader_state().change = Some(PendingChange {
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

    /// The leader is not a voter of the committed configuration: hand over and step down.
    fn step_down_removed(&mut self) {
        let last = self.log.last_index();
        let successor = self
            .role
            .leader()
            .and_then(|l| l.successor(&self.membership, last));
        if let Some(id) = successor {
            // The most up-to-date voter campaigns at once instead of waiting for its
            // election timeout (§3.10 of the dissertation).
            self.outbox.messages.push(Message {
                from: self.id,
                to: id,
                term: self.term,
                body: MessageBody::TimeoutNow,
            });
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
        let Some(leader) = self.role.leader() else {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        };
        if let Some(to) = leader.transfer_target() {
            return Err(Error::TransferInProgress { to });
        }
        if leader.change.is_some()
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
        self.leader_state().change = Some(PendingChange {
            request_id,
            stage: Stage::Commit { index, then },
        });
        Ok(())
    }

    /// Starts the rounds that bring learner `id` up to date before it votes.
    fn start_catch_up(&mut self, request_id: u64, id: NodeId) {
        let last = self.log.last_index();
        self.leader_state().change = Some(PendingChange {
            request_id,
            stage: Stage::CatchUp(CatchUp::new(id, last)),
        });
        self.send_append(id, true);
    }

    /// One tick of a learner's catch-up (see [`CatchUp::tick`]): promote it once it keeps up,
    /// or report that it could not.
    fn tick_catch_up(&mut self) {
        let last = self.log.last_index();
        let (election_ticks, rounds_max) = (self.cfg.election_ticks, self.cfg.catch_up_rounds_max);
        let leader = self.leader_state();
        let Some(PendingChange {
            request_id,
            stage: Stage::CatchUp(c),
        }) = &mut leader.change
        else {
            return;
        };
        let (request_id, id) = (*request_id, c.id);
        let matched = leader
            .progress
            .get(&id)
            .map_or(LogIndex(0), |p| p.match_index);
        let result = match c.tick(matched, last, election_ticks, rounds_max) {
            CatchUpStep::Wait => return,
            CatchUpStep::Failed { rounds } => Err(MembershipError::CatchUpFailed { id, rounds }),
            // No longer a learner (cannot happen while this change is the one in progress,
            // but the caller must hear an outcome either way).
            CatchUpStep::Promote if !self.membership.learners.contains(&id) => {
                Err(MembershipError::NotALearner { id })
            }
            CatchUpStep::Promote => {
                let (next, _) = membership::plan(&self.membership, &MembershipChange::Promote(id))
                    .expect("a learner can be promoted");
                let index = self.propose_config(next);
                self.leader_state().change = Some(PendingChange {
                    request_id,
                    stage: Stage::Commit {
                        index,
                        then: Then::Done,
                    },
                });
                return;
            }
        };
        self.leader_state().change = None;
        self.outbox
            .membership_results
            .push(MembershipResult { request_id, result });
    }

    // ----- leadership transfer (§3.10 of the dissertation) --------------------------------

    /// Hands leadership to `to`: no more proposals, bring `to` up to date, then TimeoutNow.
    pub(crate) fn transfer_leadership(&mut self, to: NodeId) -> Result<()> {
        let Some(leader) = self.role.leader_mut() else {
            return Err(Error::NotLeader {
                leader: self.leader,
            });
        };
        if to == self.id {
            return Ok(());
        }
        if !self.membership.voters.contains(&to) || !leader.progress.contains_key(&to) {
            return Err(Error::MembershipRefused(Refusal::NotAVoter(to)));
        }
        leader.transfer = Some(Transfer { to, elapsed: 0 });
        self.maybe_send_timeout_now(to);
        Ok(())
    }

    /// The index of the entry that defines the configuration in force (0: the base).
    pub(crate) fn membership_index(&self) -> LogIndex {
        self.configs.current_index()
    }

    /// The transfer target, if one is in progress.
    pub(crate) fn transfer_target(&self) -> Option<NodeId> {
        self.role.leader().and_then(LeaderState::transfer_target)
    }

    /// Sends TimeoutNow to the transfer target once it holds the whole log; else replicates.
    fn maybe_send_timeout_now(&mut self, to: NodeId) {
        if self.transfer_target() != Some(to) {
            return;
        }
        let last = self.log.last_index();
        if self.leader_state().caught_up(to, last) {
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
        if self.role() == Role::Leader {
            self.handle_read(self.id, request_id);
            return;
        }
        let max = self.cfg.read_requests_max;
        // Only a follower knows a leader: a (pre-)candidate forgot it.
        match (self.leader, self.role.forwarded_mut()) {
            (Some(leader), Some(forwarded)) if forwarded.len() < max => {
                forwarded.insert(request_id);
                self.ask_read(leader, request_id);
            }
            _ => self.outbox.read_states.push(ReadState {
                request_id,
                index: None,
            }),
        }
    }

    /// Asks the leader again for reads it has not answered within an election timeout (the
    /// request or the answer was lost).
    fn resend_forwarded_reads(&mut self) {
        let every = self.cfg.election_ticks;
        let (Some(leader), Some(forwarded)) = (self.leader, self.role.forwarded_mut()) else {
            return;
        };
        for request_id in forwarded.tick(every) {
            self.ask_read(leader, request_id);
        }
    }

    /// Sends the leader a read-index request.
    fn ask_read(&mut self, leader: NodeId, request_id: u64) {
        let body = MessageBody::ReadIndex(ReadIndexRequest { request_id });
        self.outbox.messages.push(Message {
            from: self.id,
            to: leader,
            term: self.term,
            body,
        });
    }

    fn handle_read(&mut self, from: NodeId, request_id: u64) {
        let (read_requests_max, committed) = (self.cfg.read_requests_max, self.log.committed);
        let settled = self.log.term(committed) == Some(self.term);
        // A lease read needs no slot: it is answered at once.
        if settled && self.lease_read(from, request_id) {
            return;
        }
        let reads = &mut self.role.leader_mut().expect("only the leader reads").reads;
        if reads.len() >= read_requests_max {
            self.answer_read(from, request_id, None);
            return;
        }
        if !settled {
            // Until an entry of our term commits, our commit index may be behind what an
            // earlier leader committed.
            reads.defer(from, request_id);
            return;
        }
        self.read_context += 1;
        reads.push(PendingRead {
            from,
            request_id,
            index: committed,
            context: self.read_context,
        });
        self.confirm_reads();
        if self.leader_state().reads.confirming() {
            self.broadcast_heartbeat();
        }
    }

    /// In lease mode: answers the read at once if the leader holds the lease (see
    /// [`lease`](crate::lease)), and renews a lease about to run out with a no-op. Returns
    /// whether the read was answered.
    fn lease_read(&mut self, from: NodeId, request_id: u64) -> bool {
        let (now, committed) = (self.ticks, self.log.committed);
        let leader = self.leader_state();
        let holds = leader.lease.holds(now);
        if leader.lease.wants_renewal(now) && leader.transfer.is_none() {
            leader.appends_due = true;
            self.append_own(vec![EntryPayload::Noop]);
        }
        if holds {
            self.answer_read(from, request_id, Some(committed));
        }
        holds
    }

    /// Answers every read whose heartbeat context a quorum has acknowledged.
    fn confirm_reads(&mut self) {
        let leader = self.role.leader_mut().expect("only the leader reads");
        for read in leader.reads.take_confirmed(&self.membership, self.id) {
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

    /// The leader answered a read this node forwarded.
    fn read_answered(&mut self, r: ReadIndexResponse) {
        let waited = self
            .role
            .forwarded_mut()
            .is_some_and(|f| f.remove(r.request_id));
        if waited {
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
