//! The gRPC services and the path of a client request through raft.
//!
//! - [`kv`]: `KV` (Range, Put, DeleteRange, Txn, Compact).
//! - [`cluster`]: `Cluster` (etcd's membership API) and its forwarding to the leader.
//! - [`compaction`]: automatic compaction by the leader (`--auto-compaction-*`).
//! - [`lease`]: `Lease`, and the leader's lease clock that revokes expired leases.
//! - [`watch`]: `Watch`: watchers read their events from the MVCC history.
//! - [`maintenance`]: `Maintenance` (Status, Snapshot, MoveLeader, Alarm, Hash, HashKV,
//!   Defragment).
//! - [`auth`]: `Auth`, not served (every method answers `Unimplemented`, naming itself).
//! - [`health`]: gRPC's health service and `/health`: healthy while a leader is known.
//! - [`paths`]: an `Unimplemented` answer to a path nobody serves names the path.
//! - [`authority`]: client connections whose `:authority` is a URL (etcdctl's `http://`
//!   endpoints), rewritten so that the HTTP/2 server takes them.
//! - this module: what every service shares ([`Shared`]): proposing a command here or at the
//!   leader, read barriers, and the mapping of raft's errors to etcd's.

pub mod auth;
pub mod authority;
pub mod cluster;
pub mod compaction;
pub mod convert;
pub mod health;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod paths;
mod progress;
pub mod watch;

pub(crate) use progress::unexpected;

pub use auth::AuthService;
pub use cluster::ClusterService;
pub use kv::KvService;
pub use lease::LeaseService;
pub use maintenance::MaintenanceService;
pub use watch::WatchService;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use raftline_core::driver::{NodeError, NodeHandle, Unknown};
use raftline_core::MembershipChange;
use raftline_proto::{Membership, NodeId};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::config::{member_id, parse_url, ServerConfig};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::cluster_client::ClusterClient;
use crate::store::{Command, Outcome, Store, PEER_URL_EXISTS};

/// The largest request accepted (etcd's default limit), in bytes of key plus value.
pub const REQUEST_BYTES_MAX: usize = 3 * 512 * 1024;

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

pub use crate::store::MEMBER_NOT_FOUND;

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
    /// The store's revision after each apply here (watchers and read-your-writes wait on it).
    pub revisions: tokio::sync::watch::Receiver<i64>,
    /// The leader's lease deadlines.
    pub lessor: lease::Lessor,
}

impl Shared {
    /// Shared state for the services of one member.
    pub fn new(
        node: NodeHandle<Outcome>,
        store: Arc<RwLock<Store>>,
        config: ServerConfig,
        revisions: tokio::sync::watch::Receiver<i64>,
    ) -> Shared {
        Shared {
            node,
            store,
            data_dir: config.flags.data_dir.clone(),
            config,
            channels: Mutex::new(HashMap::new()),
            revisions,
            lessor: lease::Lessor::default(),
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
            raft_term: self.node.term().0,
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

    /// Runs a command through raft: the driver proposes it here if this member leads, or
    /// forwards it to the leader over the raft transport; waits for the result until the
    /// request deadline. Every failure is etcd's: `Unavailable` with etcd's message when the
    /// command may not have been applied (no leader, a leader change, the deadline).
    pub async fn execute(&self, command: Command) -> Result<Outcome, Status> {
        let deadline = self.deadline();
        let encoded = Bytes::from(
            postcard::to_allocvec(&command).map_err(|e| Status::internal(e.to_string()))?,
        );
        loop {
            let proposed = tokio::time::timeout_at(deadline, self.node.propose(encoded.clone()));
            match proposed.await {
                Err(_) => return Err(Status::unavailable(ETCD_TIMED_OUT)),
                Ok(Ok(outcome)) => return Ok(outcome),
                // Not applied: no leader is known, or the member it was passed to no longer
                // leads. An election is under way; try again once it is over.
                Ok(Err(NodeError::NotLeader { .. })) => {}
                Ok(Err(e)) => return Err(node_error_status(e)),
            }
            if Instant::now() + NO_LEADER_RETRY >= deadline {
                return Err(Status::unavailable(ETCD_NO_LEADER));
            }
            self.leader_change_or_pause().await;
        }
    }

    /// Waits until the leader this member knows changes, or `NO_LEADER_RETRY` passes: what a
    /// request that found no reachable leader waits for before it tries again.
    async fn leader_change_or_pause(&self) {
        let mut watch = self.node.watch();
        let seen = watch.current().leader;
        let changed = watch.wait_for(|s| s.leader != seen);
        if let Ok(Err(_)) = tokio::time::timeout(NO_LEADER_RETRY, changed).await {
            // The node stopped: no change will come; pause as before.
            tokio::time::sleep(NO_LEADER_RETRY).await;
        }
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
                    self.leader_change_or_pause().await;
                }
                Ok(Err(e)) => return Err(node_error_status(e)),
            }
        }
    }
}

/// etcd's message for a request that found no leader.
pub const ETCD_NO_LEADER: &str = "etcdserver: no leader";

/// etcd's message for a request that did not finish within the request timeout.
pub const ETCD_TIMED_OUT: &str = "etcdserver: request timed out";

/// etcd's message for a request that lost its leader (leadership moved while it waited).
pub const ETCD_LEADER_CHANGED: &str = "etcdserver: leader changed";

/// etcd's message for a request whose connection to the leader was lost: it may or may not
/// have been applied.
pub const ETCD_CONNECTION_LOST: &str =
    "etcdserver: request timed out, possibly due to connection lost";

/// etcd's message for a request whose leader failed while it waited: it may or may not have
/// been applied.
pub const ETCD_LEADER_FAIL: &str =
    "etcdserver: request timed out, possibly due to previous leader failure";

/// Whether a request that failed in transport reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// Certainly not: no connection was made, or the server refused the stream unprocessed.
    NotSent,
    /// Perhaps: the connection broke after the request may have gone out.
    MaybeSent,
}

/// What the transport errors in a failed request's source chain say about its delivery;
/// `None` if there are none (the status is the server's answer). tonic keeps the error a
/// status was made from as the status's source.
fn transport_delivery(status: &Status) -> Option<Delivery> {
    let mut source = std::error::Error::source(status);
    let first = source?;
    while let Some(error) = source {
        if let Some(delivery) = delivery_of(error) {
            return Some(delivery);
        }
        source = error.source();
    }
    tracing::debug!("forwarding failed in transport: {first}");
    Some(Delivery::MaybeSent)
}

/// What one error of a source chain says about delivery, if it says anything.
fn delivery_of(error: &(dyn std::error::Error + 'static)) -> Option<Delivery> {
    if error.is::<tonic::ConnectError>() {
        return Some(Delivery::NotSent);
    }
    if let Some(e) = error.downcast_ref::<hyper::Error>() {
        // hyper hands back a request it never wrote (the connection was not ready, or
        // closed first) as canceled.
        return e.is_canceled().then_some(Delivery::NotSent);
    }
    if let Some(e) = error.downcast_ref::<h2::Error>() {
        // REFUSED_STREAM, and a GOAWAY naming a last stream below ours, both mean that the
        // server did not process the request (RFC 9113, sections 8.7 and 6.8).
        let refused = e.reason() == Some(h2::Reason::REFUSED_STREAM);
        let above_goaway = e.is_go_away() && e.is_remote();
        return (refused || above_goaway).then_some(Delivery::NotSent);
    }
    if let Some(e) = error.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::{
            AddrNotAvailable, ConnectionRefused, HostUnreachable, NetworkUnreachable,
        };
        let at_connect = matches!(
            e.kind(),
            ConnectionRefused | AddrNotAvailable | HostUnreachable | NetworkUnreachable
        );
        return Some(if at_connect {
            Delivery::NotSent
        } else {
            Delivery::MaybeSent
        });
    }
    None
}

/// The client's answer when a call passed on to the leader (a Cluster or Lease request)
/// failed: a transport failure, whether or not the request reached the leader, is etcd's
/// `Unavailable` "request timed out, possibly due to connection lost"; the leader's own
/// answer passes unchanged.
pub(crate) fn leader_call_status(status: Status) -> Status {
    match transport_delivery(&status) {
        Some(_) => Status::unavailable(ETCD_CONNECTION_LOST),
        None => status,
    }
}

/// The answer to a method raft-kv does not serve: gRPC `Unimplemented`, naming it.
pub(crate) fn unserved(method: &str) -> Status {
    Status::unimplemented(format!("raft-kv does not serve {method}"))
}

fn node_error_status(e: NodeError) -> Status {
    match e {
        NodeError::LeadershipLost => Status::unavailable(ETCD_LEADER_CHANGED),
        NodeError::ReadUnavailable | NodeError::NotLeader { .. } => {
            Status::unavailable(ETCD_NO_LEADER)
        }
        NodeError::Busy(why) => {
            Status::unavailable(format!("etcdserver: too many requests ({why})"))
        }
        NodeError::MembershipPending(why) => {
            Status::unavailable(format!("etcdserver: too many requests ({why})"))
        }
        NodeError::ShuttingDown => Status::unavailable("etcdserver: server stopped"),
        // The leader got no answer back to this member in time: etcd's follower times out.
        NodeError::OutcomeUnknown(Unknown::ForwardUnanswered { .. }) => {
            Status::unavailable(ETCD_TIMED_OUT)
        }
        NodeError::OutcomeUnknown(Unknown::UndecodableResponse { leader }) => {
            Status::internal(format!(
                "etcdserver: the leader ({:x}) answered in a format this member cannot read",
                leader.0
            ))
        }
        // etcd's answer when it cannot tell whether a proposal was applied (the leader lost
        // leadership, and a snapshot from the next leader covered the entry).
        NodeError::OutcomeUnknown(_) => Status::unavailable(ETCD_LEADER_FAIL),
        NodeError::MembershipRefused(why) => {
            Status::failed_precondition(format!("etcdserver: {why}"))
        }
        // etcd's messages exactly: etcd's client library maps them to typed errors.
        NodeError::CatchUpFailed { id, rounds } => {
            tracing::info!(member = %format!("{:x}", id.0), rounds, "promotion refused: the learner has not caught up");
            Status::failed_precondition(LEARNER_NOT_READY)
        }
        NodeError::TransferFailed(why) => {
            tracing::info!("leadership transfer failed: {why}");
            Status::unavailable(LEADER_TRANSFER_TIMEOUT)
        }
        e @ (NodeError::Snapshot(_)
        | NodeError::Storage(_)
        | NodeError::Restore { .. }
        | NodeError::Config(_)) => Status::internal(format!("etcdserver: {e}")),
    }
}
