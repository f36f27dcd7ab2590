//! etcd's Cluster API: membership changes.
//!
//! Member changes run on the leader; a follower forwards them to the leader's client URL (the
//! leader never forwards a forwarded request again). Each change is a member record in the
//! store ([`Command::AddMember`], [`Command::RemoveMember`], [`Command::UpdateMember`]),
//! replicated so that every member's transport learns or forgets the peer's address when it
//! applies it, and a change of raft's configuration ([`NodeHandle::change_membership`]):
//!
//! - `MemberAdd` replicates the record first (so that transports can reach the new member),
//!   then adds it as a learner, and answers once that configuration is committed. Without
//!   `isLearner` the member is marked for promotion: the leader promotes it in the background
//!   once it has started (published its name) and caught up, retrying every
//!   [`PROMOTE_INTERVAL`] while it is a learner. etcd's users run `member add` before starting
//!   the member, so the call cannot wait for it to catch up.
//! - `MemberPromote` makes a learner a voter once it keeps up with the leader; one that does
//!   not fails with etcd's "can only promote a learner member which is in sync with leader".
//! - `MemberRemove` changes the configuration first, then replicates the record's removal (so
//!   that the removed member still receives the configuration that removes it). The removed
//!   id is kept and never accepted again: the peer URL gives the id, so a removed member's URL
//!   cannot be reused. Removing the leader works: it commits the change and steps down, and
//!   another member records the removal.
//! - `MemberUpdate` replicates new peer URLs; transports move to them when applying it.

#[allow(clippy::wildcard_imports)]
use super::*;

pub(crate) enum Route {
    /// Here: this member leads.
    Here,
    /// At the leader, through this channel to its client URL.
    Leader(Channel),
}

/// Whether a request carries the [`FORWARDED`] mark.
pub(crate) fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

/// A request to pass on: marked as forwarded when it goes to the leader, with the time left
/// until `deadline` as its gRPC timeout.
pub(crate) fn onward<T>(message: T, mark: bool, deadline: Instant) -> Request<T> {
    let mut request = Request::new(message);
    if mark {
        request
            .metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    }
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    request
}

/// The one peer URL of a `MemberAdd`/`MemberUpdate`, checked.
fn one_peer_url(urls: &[String]) -> Result<String, Status> {
    match urls {
        [url] => {
            parse_url("peerURLs", url).map_err(|e| {
                let e = crate::error_chain(&e);
                Status::invalid_argument(format!("{BAD_PEER_URLS} ({e})"))
            })?;
            Ok(url.trim_end_matches('/').to_string())
        }
        [] => Err(Status::invalid_argument(format!(
            "{BAD_PEER_URLS} (no peer URL given)"
        ))),
        _ => Err(Status::invalid_argument(format!(
            "{BAD_PEER_URLS} (raft-kv members have one peer URL each)"
        ))),
    }
}

/// Calls the leader with a timeout at `deadline`. A transport failure (the connection to the
/// leader broke) is etcd's `Unavailable` (see [`leader_call_status`]).
pub(crate) async fn at_leader<T>(
    deadline: Instant,
    call: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout_at(deadline, call)
        .await
        .map_err(|_| Status::unavailable("etcdserver: request timed out"))?
        .map(Response::into_inner)
        .map_err(leader_call_status)
}

impl Shared {
    /// Where a Cluster request goes: here if this member leads, else to the leader (waiting
    /// for one until `deadline`). A forwarded request is never forwarded again.
    pub(crate) async fn route(&self, forwarded: bool, deadline: Instant) -> Result<Route, Status> {
        let mut watch = self.node.watch();
        loop {
            let status = self.node.status();
            if status.is_leader {
                return Ok(Route::Here);
            }
            if forwarded {
                return Err(Status::unavailable("etcdserver: leader changed"));
            }
            if let Some(url) = status.leader.and_then(|l| self.leader_client_url(l)) {
                return Ok(Route::Leader(self.channel(&url)?));
            }
            if Instant::now() + NO_LEADER_RETRY >= deadline {
                return Err(Status::unavailable("etcdserver: no leader"));
            }
            // Again as soon as the leader changes (or after a pause: its address may come
            // with the member records).
            let seen = status.leader;
            let changed = watch.wait_for(|s| s.leader != seen || s.is_leader);
            if let Ok(Err(_)) = tokio::time::timeout(NO_LEADER_RETRY, changed).await {
                // The node stopped: no change will come; pause as before.
                tokio::time::sleep(NO_LEADER_RETRY).await;
            }
        }
    }

    /// Changes raft's configuration (this member leads), retrying while the leader refuses
    /// for now, until `deadline`. A change that times out may still complete.
    async fn change(
        &self,
        change: MembershipChange,
        deadline: Instant,
    ) -> Result<Membership, Status> {
        loop {
            let error = match tokio::time::timeout_at(
                deadline,
                self.node.change_membership(change.clone()),
            )
            .await
            {
                Err(_) => return Err(Status::unavailable("etcdserver: request timed out")),
                Ok(Ok(membership)) => return Ok(membership),
                Ok(Err(e)) => e,
            };
            // Another change in progress or a leader new to its term (MembershipPending), or a
            // leadership transfer (Busy); all pass.
            let transient = matches!(error, NodeError::MembershipPending(_) | NodeError::Busy(_));
            if !transient || Instant::now() + CHANGE_RETRY >= deadline {
                return Err(node_error_status(error));
            }
            tokio::time::sleep(CHANGE_RETRY).await;
        }
    }

    /// Runs a member record command through raft; a refusal becomes etcd's error.
    async fn execute_member(&self, command: Command) -> Result<(), Status> {
        match self.execute(command).await? {
            Outcome::MemberChanged { .. } => Ok(()),
            Outcome::MemberRefused(why) if why == MEMBER_NOT_FOUND => Err(Status::not_found(why)),
            Outcome::MemberRefused(why) => Err(Status::failed_precondition(why)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// etcd's `Member`s of a configuration: names and client URLs as the members published
    /// them, peer URLs from the member records (for a member of `--initial-cluster` that has
    /// not published yet, from there).
    fn members(&self, membership: &Membership) -> Vec<pb::Member> {
        let store = self.store.read();
        membership
            .members()
            .into_iter()
            .map(|id| {
                let record = store.members().get(&id.0);
                let initial = self.config.members.iter().find(|m| m.id == id);
                pb::Member {
                    id: id.0,
                    name: record
                        .map(|r| r.name.clone())
                        .filter(|n| !n.is_empty())
                        .or_else(|| initial.map(|m| m.name.clone()))
                        .unwrap_or_default(),
                    peer_ur_ls: record
                        .map(|r| r.peer_urls.clone())
                        .filter(|u| !u.is_empty())
                        .or_else(|| initial.map(|m| vec![m.peer_url.clone()]))
                        .unwrap_or_default(),
                    client_ur_ls: record.map(|r| r.client_urls.clone()).unwrap_or_default(),
                    is_learner: membership.learners.contains(&id),
                }
            })
            .collect()
    }

    /// The configuration in force here.
    fn membership(&self) -> Membership {
        self.node.status().membership
    }

    /// `MemberAdd` on the leader: the record, then the learner. Returns the new id and the
    /// configuration.
    async fn add_member(
        &self,
        url: String,
        is_learner: bool,
        deadline: Instant,
    ) -> Result<(u64, Membership), Status> {
        let id = member_id(&url, &self.config.flags.initial_cluster_token);
        {
            let store = self.store.read();
            if store.removed().contains(&id.0) {
                return Err(Status::failed_precondition(crate::store::ID_REMOVED));
            }
            if self.membership().members().contains(&id)
                || store
                    .peer_url_owner(std::slice::from_ref(&url), id.0)
                    .is_some()
            {
                return Err(Status::failed_precondition(PEER_URL_EXISTS));
            }
        }
        self.execute_member(Command::AddMember {
            id: id.0,
            peer_urls: vec![url.clone()],
            promote: !is_learner,
        })
        .await?;
        let membership = self
            .change(MembershipChange::AddLearner(id), deadline)
            .await?;
        tracing::info!(
            member = %format!("{:x}", id.0),
            peer = %url,
            learner = is_learner,
            "added a member as a learner{}",
            if is_learner { "" } else { "; it is promoted once it has started and caught up" }
        );
        Ok((id.0, membership))
    }

    /// `MemberRemove` on the leader: the configuration, then the record.
    async fn remove_member(&self, id: u64, deadline: Instant) -> Result<Membership, Status> {
        let membership = self.membership();
        let in_config = membership.members().contains(&NodeId(id));
        {
            let store = self.store.read();
            if store.removed().contains(&id) || (!in_config && !store.members().contains_key(&id)) {
                return Err(Status::not_found(MEMBER_NOT_FOUND));
            }
        }
        let membership = if in_config {
            let m = self
                .change(MembershipChange::Remove(NodeId(id)), deadline)
                .await?;
            tracing::info!(member = %format!("{id:x}"), "removed a member from the configuration");
            m
        } else {
            // An earlier removal changed the configuration but not the record: finish it.
            membership
        };
        if NodeId(id) == self.config.id {
            // This leader removed itself and steps down: a remaining member records it.
            self.finish_removal_elsewhere(id, &membership).await?;
        } else {
            self.execute_member(Command::RemoveMember { id }).await?;
        }
        Ok(membership)
    }

    /// Has a voter of `membership` finish the removal of `id` (this member) through its
    /// leader: `MemberRemove` of an id the configuration no longer holds records the removal.
    async fn finish_removal_elsewhere(
        &self,
        id: u64,
        membership: &Membership,
    ) -> Result<(), Status> {
        let deadline = self.deadline();
        let urls: Vec<String> = {
            let store = self.store.read();
            membership
                .voters
                .iter()
                .filter_map(|v| store.members().get(&v.0)?.client_urls.first().cloned())
                .collect()
        };
        loop {
            for url in &urls {
                let mut client = ClusterClient::new(self.channel(url)?);
                let request = onward(pb::MemberRemoveRequest { id }, false, deadline);
                match tokio::time::timeout_at(deadline, client.member_remove(request)).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(s)) if s.code() == tonic::Code::NotFound => return Ok(()),
                    _ => {}
                }
            }
            if Instant::now() + NO_LEADER_RETRY >= deadline {
                return Err(Status::unavailable(
                    "etcdserver: request timed out (this member left the configuration, but its \
                     record is not removed yet: run member remove again through another member)",
                ));
            }
            tokio::time::sleep(NO_LEADER_RETRY).await;
        }
    }

    /// `MemberUpdate` on the leader.
    async fn update_member(&self, id: u64, url: String) -> Result<Membership, Status> {
        let membership = self.membership();
        {
            let store = self.store.read();
            let known =
                membership.members().contains(&NodeId(id)) || store.members().contains_key(&id);
            if store.removed().contains(&id) || !known {
                return Err(Status::not_found(MEMBER_NOT_FOUND));
            }
            // Another member at this URL: by its record, or by the id the URL gives (a
            // member of --initial-cluster that has not published its record yet).
            let url_id = member_id(&url, &self.config.flags.initial_cluster_token);
            if store
                .peer_url_owner(std::slice::from_ref(&url), id)
                .is_some()
                || (url_id.0 != id && membership.members().contains(&url_id))
            {
                return Err(Status::failed_precondition(PEER_URL_EXISTS));
            }
        }
        self.execute_member(Command::UpdateMember {
            id,
            peer_urls: vec![url.clone()],
        })
        .await?;
        tracing::info!(member = %format!("{id:x}"), peer = %url, "updated a member's peer URL");
        Ok(membership)
    }

    /// `MemberPromote` on the leader.
    async fn promote_member(&self, id: u64, deadline: Instant) -> Result<Membership, Status> {
        let membership = self.membership();
        if self.store.read().removed().contains(&id) || !membership.members().contains(&NodeId(id))
        {
            return Err(Status::not_found(MEMBER_NOT_FOUND));
        }
        if !membership.learners.contains(&NodeId(id)) {
            return Err(Status::failed_precondition(MEMBER_NOT_LEARNER));
        }
        if !self.has_started(id) {
            // It has not published its name: not running, or far behind.
            return Err(Status::failed_precondition(LEARNER_NOT_READY));
        }
        let membership = self
            .change(MembershipChange::Promote(NodeId(id)), deadline)
            .await?;
        tracing::info!(member = %format!("{id:x}"), "promoted a learner to a voter");
        Ok(membership)
    }

    /// Whether member `id` has published its name (it runs and has caught up at least to
    /// its own publication).
    pub(crate) fn has_started(&self, id: u64) -> bool {
        self.store
            .read()
            .members()
            .get(&id)
            .is_some_and(|m| !m.name.is_empty())
    }

    /// Once, as the leader: promotes each learner that was added as a voter and has started
    /// (see [`PROMOTE_INTERVAL`]); logs the outcomes. The caller bounds the time.
    pub(crate) async fn promote_waiting_learners(&self) {
        let status = self.node.status();
        if !status.is_leader {
            return;
        }
        let waiting: Vec<u64> = self
            .store
            .read()
            .promotions()
            .iter()
            .copied()
            .filter(|id| status.membership.learners.contains(&NodeId(*id)))
            .collect();
        for id in waiting {
            if !self.has_started(id) {
                tracing::debug!(member = %format!("{id:x}"), "the learner has not started yet");
                continue;
            }
            match self
                .node
                .change_membership(MembershipChange::Promote(NodeId(id)))
                .await
            {
                Ok(_) => {
                    tracing::info!(member = %format!("{id:x}"), "promoted the learner to a voter")
                }
                Err(NodeError::CatchUpFailed { rounds, .. }) => tracing::info!(
                    member = %format!("{id:x}"),
                    rounds,
                    "the learner has not caught up yet; retrying in {PROMOTE_INTERVAL:?}"
                ),
                Err(e) => tracing::info!(
                    member = %format!("{id:x}"),
                    "promoting the learner failed; retrying in {PROMOTE_INTERVAL:?}: {e}"
                ),
            }
        }
    }
}

/// Whether a forwarding call failed before anything reached the leader (no connection).
/// `etcdserverpb.Cluster`.
pub struct ClusterService(pub Arc<Shared>);

impl ClusterService {
    /// The header of an answer from this member, whether or not the leader did the work:
    /// `etcdctl member add` compares it with the header of the `MemberList` it sends next.
    fn header(&self) -> Option<pb::ResponseHeader> {
        self.0.header(self.0.store.read().revision())
    }

    /// After the leader answered a forwarded change: waits (for at most an election timeout)
    /// until this member has applied what the leader committed, so that a `MemberList` here
    /// shows the change. Best effort: the change is done either way.
    async fn caught_up(&self) {
        let limit = self.0.config.tick * self.0.config.election_ticks;
        if let Ok(Err(e)) = tokio::time::timeout(limit, self.0.node.read_barrier()).await {
            tracing::debug!("no read barrier after a forwarded member change: {e}");
        }
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    /// The members of the configuration in force on this member (voters and learners); with
    /// `linearizable`, after a read barrier.
    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.0.read_barrier().await?;
        }
        let members = self.0.members(&self.0.membership());
        Ok(Response::new(pb::MemberListResponse {
            header: self.header(),
            members,
        }))
    }

    /// Adds a member with one peer URL: its id is [`member_id`] of the URL. Answers once it
    /// is a learner in the committed configuration; without `isLearner` the leader promotes
    /// it later, once it has started and caught up (see the module's documentation).
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let r = request.into_inner();
        let url = one_peer_url(&r.peer_ur_ls)?;
        let deadline = self.0.deadline();
        if let Route::Leader(channel) = self.0.route(forwarded, deadline).await? {
            let mut client = ClusterClient::new(channel);
            let answer = at_leader(deadline, client.member_add(onward(r, true, deadline))).await?;
            self.caught_up().await;
            return Ok(Response::new(pb::MemberAddResponse {
                header: self.header(),
                ..answer
            }));
        }
        let (id, membership) = self.0.add_member(url, r.is_learner, deadline).await?;
        let members = self.0.members(&membership);
        let member = members.iter().find(|m| m.id == id).cloned();
        Ok(Response::new(pb::MemberAddResponse {
            header: self.header(),
            member,
            members,
        }))
    }

    /// Removes a member (the leader too: it commits its removal and steps down).
    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let r = request.into_inner();
        let deadline = self.0.deadline();
        if let Route::Leader(channel) = self.0.route(forwarded, deadline).await? {
            let mut client = ClusterClient::new(channel);
            let answer =
                at_leader(deadline, client.member_remove(onward(r, true, deadline))).await?;
            // No read barrier here: this member may be the one removed, which no longer
            // hears from the leader.
            return Ok(Response::new(pb::MemberRemoveResponse {
                header: self.header(),
                ..answer
            }));
        }
        let membership = self.0.remove_member(r.id, deadline).await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.header(),
            members: self.0.members(&membership),
        }))
    }

    /// Gives a member a new peer URL; every member's transport moves to it.
    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let r = request.into_inner();
        let url = one_peer_url(&r.peer_ur_ls)?;
        let deadline = self.0.deadline();
        if let Route::Leader(channel) = self.0.route(forwarded, deadline).await? {
            let mut client = ClusterClient::new(channel);
            let answer =
                at_leader(deadline, client.member_update(onward(r, true, deadline))).await?;
            self.caught_up().await;
            return Ok(Response::new(pb::MemberUpdateResponse {
                header: self.header(),
                ..answer
            }));
        }
        let membership = self.0.update_member(r.id, url).await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.header(),
            members: self.0.members(&membership),
        }))
    }

    /// Makes a learner a voter, once it keeps up with the leader.
    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let r = request.into_inner();
        let deadline = self.0.deadline();
        if let Route::Leader(channel) = self.0.route(forwarded, deadline).await? {
            let mut client = ClusterClient::new(channel);
            let answer =
                at_leader(deadline, client.member_promote(onward(r, true, deadline))).await?;
            self.caught_up().await;
            return Ok(Response::new(pb::MemberPromoteResponse {
                header: self.header(),
                ..answer
            }));
        }
        let membership = self.0.promote_member(r.id, deadline).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.header(),
            members: self.0.members(&membership),
        }))
    }
}
