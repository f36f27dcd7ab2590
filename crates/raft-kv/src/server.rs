//! The gRPC services and the path of a client request through raft.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use raft_core::driver::{NodeError, NodeHandle};
use raft_proto::NodeId;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::config::ServerConfig;
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;
use crate::proto::raftkv;
use crate::store::{Command, KeyValue, Outcome, Store};

/// The largest request accepted (etcd's default limit), in bytes of key plus value.
pub const REQUEST_BYTES_MAX: usize = 3 * 512 * 1024;

/// The largest answer a follower accepts from the leader when forwarding (a delete with
/// `prev_kv` returns every removed pair).
pub const FORWARD_RESPONSE_BYTES_MAX: usize = 256 << 20;

/// How long to wait before retrying while no leader is known.
const NO_LEADER_RETRY: Duration = Duration::from_millis(50);

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
    forward_clients: Mutex<HashMap<String, raftkv::internal_client::InternalClient<Channel>>>,
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
            forward_clients: Mutex::new(HashMap::new()),
        }
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
        let mut client = {
            let mut clients = self.forward_clients.lock();
            match clients.get(url) {
                Some(c) => c.clone(),
                None => {
                    let channel = Channel::from_shared(url.to_string())
                        .map_err(|e| Status::internal(format!("leader URL {url}: {e}")))?
                        .connect_lazy();
                    let c = raftkv::internal_client::InternalClient::new(channel)
                        .max_decoding_message_size(FORWARD_RESPONSE_BYTES_MAX);
                    clients.insert(url.to_string(), c.clone());
                    c
                }
            }
        };
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
        NodeError::CatchUpFailed(why) => Status::failed_precondition(format!(
            "etcdserver: can only promote a learner member which is in sync with leader ({why})"
        )),
        NodeError::TransferFailed(why) => {
            Status::unavailable(format!("etcdserver: leader transfer failed ({why})"))
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
            is_learner: false,
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

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let store = self.0.store.read();
        let members = self
            .0
            .config
            .members
            .iter()
            .map(|m| pb::Member {
                id: m.id.0,
                name: m.name.clone(),
                peer_ur_ls: vec![m.peer_url.clone()],
                client_ur_ls: store
                    .members()
                    .get(&m.id.0)
                    .map(|p| p.client_urls.clone())
                    .unwrap_or_default(),
                is_learner: false,
            })
            .collect();
        Ok(Response::new(pb::MemberListResponse {
            header: self.0.header(store.revision()),
            members,
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
