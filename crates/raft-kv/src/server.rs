//! The gRPC services and the path of a client request through raft.
//!
//! # Membership changes (etcd's Cluster API)
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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use raft_core::driver::{NodeError, NodeHandle};
use raft_core::MembershipChange;
use raft_proto::{Membership, NodeId};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::config::{member_id, parse_url, ServerConfig};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::cluster_client::ClusterClient;
use crate::proto::mvccpb;
use crate::proto::raftkv;
use crate::store::{Command, KeyValue, Outcome, Store, PEER_URL_EXISTS};

/// The largest request accepted (etcd's default limit), in bytes of key plus value.
pub const REQUEST_BYTES_MAX: usize = 3 * 512 * 1024;

/// The largest answer a follower accepts from the leader when forwarding (a delete with
/// `prev_kv` returns every removed pair).
pub const FORWARD_RESPONSE_BYTES_MAX: usize = 256 << 20;

/// How long to wait before retrying while no leader is known.
const NO_LEADER_RETRY: Duration = Duration::from_millis(50);

/// How long to wait before retrying a configuration change the leader refused for now
/// (another change in progress, a leadership transfer, or a new leader that has not committed
/// an entry of its term yet).
const CHANGE_RETRY: Duration = Duration::from_millis(100);

/// How often the leader looks for learners added as voters to promote.
pub const PROMOTE_INTERVAL: Duration = Duration::from_secs(2);

/// The gRPC channels kept to other members' client URLs (for forwarding); the cache is
/// cleared when it would grow beyond this (members come and go).
const CHANNELS_MAX: usize = 64;

/// The metadata key marking a Cluster request a follower forwarded to the leader: the
/// receiver handles it itself or fails, never forwards it again (two members that each think
/// the other leads would pass it back and forth).
const FORWARDED: &str = "raft-kv-forwarded";

/// etcd's message for a member id that is not a member.
pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";

/// etcd's message for promoting a voter.
pub const MEMBER_NOT_LEARNER: &str = "etcdserver: can only promote a learner member";

/// etcd's message for promoting a learner that does not keep up with the leader.
pub const LEARNER_NOT_READY: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";

/// etcd's message for `MoveLeader` sent to a follower.
pub const NOT_LEADER: &str = "etcdserver: not leader";

/// etcd's message for `MoveLeader` to a member that cannot lead.
pub const BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";

/// etcd's message for a leadership transfer that did not finish in time.
pub const LEADER_TRANSFER_TIMEOUT: &str =
    "etcdserver: request timed out, leader transfer took too long";

/// etcd's message for peer URLs that are not valid.
pub const BAD_PEER_URLS: &str = "etcdserver: given member URLs are invalid";

/// The version reported by `Maintenance.Status`: the etcd API level served, with raft-kv's
/// own version as build metadata.
pub const VERSION: &str = concat!("3.4.0+raft-kv.", env!("CARGO_PKG_VERSION"));

/// What every service shares.
pub struct Shared {
    /// The raft node.
    pub node: NodeHandle<Outcome>,
    /// The state machine's state.
    pub store: Arc<RwLock<Store>>,
    /// Ids, addresses, timeouts.
    pub config: ServerConfig,
    /// The data directory, for `Status.dbSize`.
    pub data_dir: PathBuf,
    /// Channels to other members' client URLs (at most [`CHANNELS_MAX`]).
    channels: Mutex<HashMap<String, Channel>>,
}

impl Shared {
    /// Shared state for the services of one member.
    pub fn new(
        node: NodeHandle<Outcome>,
        store: Arc<RwLock<Store>>,
        config: ServerConfig,
    ) -> Shared {
        Shared {
            node,
            store,
            data_dir: config.flags.data_dir.clone(),
            config,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A (lazily connecting) channel to a member's client URL.
    fn channel(&self, url: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(url) {
            return Ok(c.clone());
        }
        let channel = Channel::from_shared(url.to_string())
            .map_err(|e| Status::internal(format!("member URL {url}: {e}")))?
            .connect_lazy();
        if channels.len() >= CHANNELS_MAX {
            channels.clear();
        }
        channels.insert(url.to_string(), channel.clone());
        Ok(channel)
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.config.cluster_id,
            member_id: self.config.id.0,
            revision,
            raft_term: self.node.status().term.0,
        })
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.config.request_timeout
    }

    fn leader_client_url(&self, leader: NodeId) -> Option<String> {
        self.store
            .read()
            .members()
            .get(&leader.0)
            .and_then(|m| m.client_urls.first().cloned())
    }

    /// Runs a command through raft: proposes it here if this member leads, or forwards it to
    /// the leader; waits for the result until the request deadline.
    pub async fn execute(&self, command: Command) -> Result<Outcome, Status> {
        let deadline = self.deadline();
        let encoded = Bytes::from(
            postcard::to_allocvec(&command).map_err(|e| Status::internal(e.to_string()))?,
        );
        loop {
            let proposed =
                tokio::time::timeout_at(deadline, self.node.propose(encoded.clone())).await;
            let error = match proposed {
                Err(_) => return Err(Status::unavailable("etcdserver: request timed out")),
                Ok(Ok(outcome)) => return Ok(outcome),
                Ok(Err(e)) => e,
            };
            match error {
                NodeError::NotLeader {
                    leader: Some(leader),
                    ..
                } => {
                    if let Some(url) = self.leader_client_url(leader) {
                        match self.forward(&url, encoded.clone(), deadline).await {
                            // The leader could not be reached at all, so the command was not
                            // sent: wait for a new leader, as when none is known.
                            Err(status) if is_connect_error(&status) => {}
                            other => return other,
                        }
                    }
                }
                NodeError::NotLeader { leader: None, .. } => {}
                other => return Err(node_error_status(other)),
            }
            // No leader (or its address, or a connection to it) yet: an election is under way.
            if Instant::now() + NO_LEADER_RETRY >= deadline {
                return Err(Status::unavailable("etcdserver: no leader"));
            }
            tokio::time::sleep(NO_LEADER_RETRY).await;
        }
    }

    async fn forward(
        &self,
        url: &str,
        command: Bytes,
        deadline: Instant,
    ) -> Result<Outcome, Status> {
        let mut client = raftkv::internal_client::InternalClient::new(self.channel(url)?)
            .max_decoding_message_size(FORWARD_RESPONSE_BYTES_MAX);
        let request = raftkv::ForwardRequest {
            command: command.to_vec(),
        };
        let response = tokio::time::timeout_at(deadline, client.forward(request))
            .await
            .map_err(|_| Status::unavailable("etcdserver: request timed out"))??;
        postcard::from_bytes(&response.into_inner().outcome)
            .map_err(|e| Status::internal(format!("undecodable answer from the leader: {e}")))
    }

    /// Waits for a linearizable read point to be applied here.
    async fn read_barrier(&self) -> Result<(), Status> {
        let deadline = self.deadline();
        loop {
            match tokio::time::timeout_at(deadline, self.node.read_barrier()).await {
                Err(_) => return Err(Status::unavailable("etcdserver: request timed out")),
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(NodeError::ReadUnavailable))
                    if Instant::now() + NO_LEADER_RETRY < deadline =>
                {
                    tokio::time::sleep(NO_LEADER_RETRY).await;
                }
                Ok(Err(e)) => return Err(node_error_status(e)),
            }
        }
    }
}

/// Where a Cluster request is handled.
enum Route {
    /// Here: this member leads.
    Here,
    /// At the leader, through this channel to its client URL.
    Leader(Channel),
}

/// Whether a request carries the [`FORWARDED`] mark.
fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

/// A request to pass on: marked as forwarded when it goes to the leader, with the time left
/// until `deadline` as its gRPC timeout.
fn onward<T>(message: T, mark: bool, deadline: Instant) -> Request<T> {
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
            parse_url("peerURLs", url)
                .map_err(|e| Status::invalid_argument(format!("{BAD_PEER_URLS} ({e})")))?;
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

/// Calls the leader with a timeout at `deadline`.
async fn at_leader<T>(
    deadline: Instant,
    call: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout_at(deadline, call)
        .await
        .map_err(|_| Status::unavailable("etcdserver: request timed out"))?
        .map(Response::into_inner)
}

impl Shared {
    /// Where a Cluster request goes: here if this member leads, else to the leader (waiting
    /// for one until `deadline`). A forwarded request is never forwarded again.
    async fn route(&self, forwarded: bool, deadline: Instant) -> Result<Route, Status> {
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
            tokio::time::sleep(NO_LEADER_RETRY).await;
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
            // Busy: another change in progress, a leader new to its term, or a leadership
            // transfer; all pass.
            let transient = matches!(error, NodeError::Busy(_));
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
                Err(NodeError::CatchUpFailed(why)) => tracing::info!(
                    member = %format!("{id:x}"),
                    "the learner has not caught up yet; retrying in {PROMOTE_INTERVAL:?}: {why}"
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
fn is_connect_error(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && (status.message().contains("connect") || status.message().contains("Connection refused"))
}

fn node_error_status(e: NodeError) -> Status {
    match e {
        NodeError::LeadershipLost => Status::unavailable("etcdserver: leader changed"),
        NodeError::ReadUnavailable | NodeError::NotLeader { .. } => {
            Status::unavailable("etcdserver: no leader")
        }
        NodeError::Busy(why) => {
            Status::unavailable(format!("etcdserver: too many requests ({why})"))
        }
        NodeError::ShuttingDown => Status::unavailable("etcdserver: server stopped"),
        // etcd's answer when it cannot tell whether a proposal was applied.
        NodeError::OutcomeUnknown => {
            Status::unavailable("etcdserver: request timed out, possibly due to leader change")
        }
        NodeError::Snapshot(why) => Status::internal(format!("etcdserver: snapshot failed: {why}")),
        NodeError::MembershipRefused(why) => {
            Status::failed_precondition(format!("etcdserver: {why}"))
        }
        // etcd's messages exactly: etcd's client library maps them to typed errors.
        NodeError::CatchUpFailed(why) => {
            tracing::info!("promotion refused: {why}");
            Status::failed_precondition(LEARNER_NOT_READY)
        }
        NodeError::TransferFailed(why) => {
            tracing::info!("leadership transfer failed: {why}");
            Status::unavailable(LEADER_TRANSFER_TIMEOUT)
        }
        NodeError::Storage(why) => Status::internal(format!("etcdserver: storage failed: {why}")),
    }
}

fn to_proto(kv: &KeyValue, keys_only: bool) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.clone(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: if keys_only {
            Vec::new()
        } else {
            kv.value.clone()
        },
        lease: kv.lease,
    }
}

/// `etcdserverpb.KV`.
pub struct KvService(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        if r.limit < 0 {
            return Err(Status::invalid_argument(
                "etcdserver: limit must not be negative",
            ));
        }
        if !r.serializable {
            self.0.read_barrier().await?;
        }
        let store = self.0.store.read();
        if r.revision > store.revision() {
            return Err(Status::out_of_range(
                "etcdserver: mvcc: required revision is a future revision",
            ));
        }
        if r.revision > 0 && r.revision < store.revision() {
            return Err(Status::out_of_range(
                "etcdserver: mvcc: required revision has been compacted",
            ));
        }
        let mut kvs: Vec<&KeyValue> = store
            .range(&r.key, &r.range_end)
            .filter(|kv| r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
            .filter(|kv| r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
            .filter(|kv| r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
            .filter(|kv| r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            .collect();
        sort(&mut kvs, r.sort_order(), r.sort_target());
        let count = kvs.len() as i64;
        let limit = if r.limit > 0 {
            r.limit as usize
        } else {
            usize::MAX
        };
        let more = kvs.len() > limit;
        let kvs = if r.count_only {
            Vec::new()
        } else {
            kvs.iter()
                .take(limit)
                .map(|kv| to_proto(kv, r.keys_only))
                .collect()
        };
        Ok(Response::new(pb::RangeResponse {
            header: self.0.header(store.revision()),
            kvs,
            more,
            count,
        }))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        if r.key.len() + r.value.len() > REQUEST_BYTES_MAX {
            return Err(Status::invalid_argument("etcdserver: request is too large"));
        }
        let command = Command::Put {
            key: r.key,
            value: r.value,
            lease: r.lease,
            ignore_value: r.ignore_value,
            ignore_lease: r.ignore_lease,
            prev_kv: r.prev_kv,
        };
        match self.0.execute(command).await? {
            Outcome::Put { revision, prev } => Ok(Response::new(pb::PutResponse {
                header: self.0.header(revision),
                prev_kv: prev.map(|kv| to_proto(&kv, false)),
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let r = request.into_inner();
        if r.key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        let command = Command::DeleteRange {
            key: r.key,
            range_end: r.range_end,
            prev_kv: r.prev_kv,
        };
        match self.0.execute(command).await? {
            Outcome::Deleted {
                revision,
                deleted,
                prev,
            } => Ok(Response::new(pb::DeleteRangeResponse {
                header: self.0.header(revision),
                deleted,
                prev_kvs: prev.iter().map(|kv| to_proto(kv, false)).collect(),
            })),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }
}

fn sort(
    kvs: &mut [&KeyValue],
    order: pb::range_request::SortOrder,
    target: pb::range_request::SortTarget,
) {
    use pb::range_request::{SortOrder, SortTarget};
    if order == SortOrder::None {
        return; // already in key order
    }
    match target {
        SortTarget::Key => {}
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}

/// `etcdserverpb.Maintenance`.
pub struct MaintenanceService(pub Arc<Shared>);

/// The most snapshot bytes in one `SnapshotResponse` of `Maintenance.Snapshot` (etcd's chunk
/// size).
pub const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;

/// The messages of a `Maintenance.Snapshot` stream.
pub type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

/// Splits an encoded snapshot into `Maintenance.Snapshot` responses of at most
/// [`SNAPSHOT_CHUNK_BYTES`], each with `remaining_bytes` counting the bytes still to come
/// after it (0 in the last). Made lazily, one chunk at a time, as the stream is polled.
fn snapshot_responses(
    encoded: Bytes,
    header: Option<pb::ResponseHeader>,
) -> impl Iterator<Item = Result<pb::SnapshotResponse, Status>> + Send + 'static {
    let total = encoded.len();
    (0..total.div_ceil(SNAPSHOT_CHUNK_BYTES)).map(move |i| {
        let start = i * SNAPSHOT_CHUNK_BYTES;
        let end = (start + SNAPSHOT_CHUNK_BYTES).min(total);
        Ok(pb::SnapshotResponse {
            header,
            remaining_bytes: (total - end) as u64,
            blob: encoded[start..end].to_vec(),
            version: VERSION.to_string(),
        })
    })
}

/// Bytes the directory's files occupy on disk (the log's segments are preallocated and
/// zero-filled ahead of use, so a fresh member already occupies one segment).
fn dir_bytes(dir: &std::path::Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => (m.blocks() * 512) as i64,
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for MaintenanceService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.0.node.status();
        let revision = self.0.store.read().revision();
        let size = dir_bytes(&self.0.data_dir);
        Ok(Response::new(pb::StatusResponse {
            header: self.0.header(revision),
            version: VERSION.to_string(),
            db_size: size,
            leader: status.leader.map_or(0, |l| l.0),
            raft_index: status.commit_index.0,
            raft_term: status.term.0,
            raft_applied_index: status.applied_index.0,
            errors: Vec::new(),
            db_size_in_use: size,
            is_learner: status.membership.learners.contains(&self.0.config.id),
        }))
    }

    /// Hands leadership to voter `targetID`. Like etcd, only the leader takes it (etcdctl
    /// `move-leader` looks for the leader among its endpoints with `Status` first).
    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let target = NodeId(request.into_inner().target_id);
        let status = self.0.node.status();
        if !status.is_leader {
            return Err(Status::failed_precondition(NOT_LEADER));
        }
        if !status.membership.voters.contains(&target) {
            return Err(Status::failed_precondition(BAD_LEADER_TRANSFEREE));
        }
        let deadline = self.0.deadline();
        match tokio::time::timeout_at(deadline, self.0.node.transfer_leadership(target)).await {
            Err(_) => return Err(Status::unavailable(LEADER_TRANSFER_TIMEOUT)),
            Ok(Err(e)) => return Err(node_error_status(e)),
            Ok(Ok(())) => {}
        }
        tracing::info!(to = %format!("{:x}", target.0), "leadership moved");
        let revision = self.0.store.read().revision();
        Ok(Response::new(pb::MoveLeaderResponse {
            header: self.0.header(revision),
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// Streams this member's state in raft-kv's snapshot format (see [`crate::snapshot`]),
    /// after a linearizable read barrier: the snapshot holds every write acknowledged before
    /// the request. The blobs concatenated are [`Store::write_snapshot`]'s output in etcd's
    /// envelope ([`etcd_envelope`]: zero padding to a multiple of 512 bytes, then a SHA-256),
    /// which `etcdctl snapshot save` requires; [`read_etcd_snapshot`] reads the saved file.
    /// (It is not a bbolt database: `etcdctl snapshot status/restore` cannot use it.) The
    /// encoded snapshot is held in memory once while it streams.
    ///
    /// [`etcd_envelope`]: crate::snapshot::etcd_envelope
    /// [`read_etcd_snapshot`]: crate::snapshot::read_etcd_snapshot
    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.0.read_barrier().await?;
        let (encoded, revision) = {
            let store = self.0.store.read();
            let mut encoded = Vec::new();
            store
                .write_snapshot(&mut encoded)
                .map_err(|e| Status::internal(format!("etcdserver: snapshot failed: {e}")))?;
            (encoded, store.revision())
        };
        let encoded = crate::snapshot::etcd_envelope(encoded);
        let responses = snapshot_responses(Bytes::from(encoded), self.0.header(revision));
        Ok(Response::new(Box::pin(futures::stream::iter(responses))))
    }
}

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

/// `raftkv.Internal`: the leader's side of forwarding.
pub struct InternalService(pub Arc<Shared>);

#[tonic::async_trait]
impl raftkv::internal_server::Internal for InternalService {
    async fn forward(
        &self,
        request: Request<raftkv::ForwardRequest>,
    ) -> Result<Response<raftkv::ForwardResponse>, Status> {
        let command = Bytes::from(request.into_inner().command);
        if postcard::from_bytes::<Command>(&command).is_err() {
            return Err(Status::invalid_argument("undecodable command"));
        }
        // Propose here only: forwarding again could loop between two members that each think
        // the other leads.
        let outcome =
            tokio::time::timeout(self.0.config.request_timeout, self.0.node.propose(command))
                .await
                .map_err(|_| Status::unavailable("etcdserver: request timed out"))?
                .map_err(node_error_status)?;
        let outcome =
            postcard::to_allocvec(&outcome).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(raftkv::ForwardResponse {
            outcome,
            raft_term: self.0.node.status().term.0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_responses_count_down_to_zero() {
        let total = 2 * SNAPSHOT_CHUNK_BYTES + 5;
        let encoded: Vec<u8> = (0..total).map(|i| i as u8).collect();
        let responses: Vec<pb::SnapshotResponse> =
            snapshot_responses(Bytes::from(encoded.clone()), None)
                .map(|r| r.expect("a response"))
                .collect();
        let remaining: Vec<u64> = responses.iter().map(|r| r.remaining_bytes).collect();
        assert_eq!(
            remaining,
            [total - SNAPSHOT_CHUNK_BYTES, 5, 0].map(|n| n as u64)
        );
        let joined: Vec<u8> = responses.iter().flat_map(|r| r.blob.clone()).collect();
        assert_eq!(joined, encoded);
        assert!(responses.iter().all(|r| r.version == VERSION));
        // Exactly one chunk when it fits.
        let one: Vec<_> = snapshot_responses(Bytes::from_static(b"abc"), None).collect();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].as_ref().unwrap().remaining_bytes, 0);
    }
}
