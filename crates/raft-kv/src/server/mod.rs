//! The gRPC services and the path of a client request through raft.
//!
//! - [`kv`]: `KV` (Range, Put, DeleteRange, Txn, Compact).
//! - [`cluster`]: `Cluster` (etcd's membership API) and its forwarding to the leader.
//! - [`maintenance`]: `Maintenance` (Status, Snapshot, MoveLeader, Alarm, Hash, HashKV,
//!   Defragment).
//! - this module: what every service shares ([`Shared`]): proposing a command here or at the
//!   leader, read barriers, and the mapping of raft's errors to etcd's.

pub mod cluster;
pub mod kv;
pub mod maintenance;

pub use cluster::ClusterService;
pub use kv::KvService;
pub use maintenance::MaintenanceService;

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
fn is_connect_error(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && (status.message().contains("connect") || status.message().contains("Connection refused"))
}

/// The answer to a method raft-kv does not serve: gRPC `Unimplemented`, naming it.
pub(crate) fn unserved(method: &str) -> Status {
    Status::unimplemented(format!("raft-kv does not serve {method}"))
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

