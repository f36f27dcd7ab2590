//! etcd's `Maintenance` service.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::store::{Alarm, AlarmAction, AlarmType};

/// The store's alarm kind of an etcd alarm type (`None`: every kind).
fn alarm_type(t: pb::AlarmType) -> Option<AlarmType> {
    match t {
        pb::AlarmType::None => None,
        pb::AlarmType::Nospace => Some(AlarmType::NoSpace),
        pb::AlarmType::Corrupt => Some(AlarmType::Corrupt),
    }
}

fn alarm_to_proto(a: &Alarm) -> pb::AlarmMember {
    let alarm = match a.alarm {
        AlarmType::NoSpace => pb::AlarmType::Nospace,
        AlarmType::Corrupt => pb::AlarmType::Corrupt,
    };
    pb::AlarmMember {
        member_id: a.member,
        alarm: alarm as i32,
    }
}

/// etcd's text for a raised alarm in `Status.errors`.
fn alarm_error(a: &Alarm) -> String {
    let name = match a.alarm {
        AlarmType::NoSpace => "NOSPACE",
        AlarmType::Corrupt => "CORRUPT",
    };
    format!("memberID:{} alarm:{name} ", a.member)
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
        let (revision, in_use, errors) = {
            let store = self.0.store.read();
            let errors = store.alarms().iter().map(alarm_error).collect();
            (store.revision(), store.size_bytes() as i64, errors)
        };
        Ok(Response::new(pb::StatusResponse {
            header: self.0.header(revision),
            version: VERSION.to_string(),
            // On disk: the log segments, snapshots and state files.
            db_size: dir_bytes(&self.0.data_dir),
            leader: status.leader.map_or(0, |l| l.0),
            raft_index: status.commit_index.0,
            raft_term: status.term.0,
            raft_applied_index: status.applied_index.0,
            errors,
            // What `--quota-backend-bytes` is checked against: the MVCC history's size.
            db_size_in_use: in_use,
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

    /// Lists alarms (after a read barrier), or raises or clears one through raft.
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction as A;
        let r = request.into_inner();
        let kind = alarm_type(r.alarm());
        let action = match r.action() {
            A::Get => {
                self.0.read_barrier().await?;
                let store = self.0.store.read();
                return Ok(Response::new(pb::AlarmResponse {
                    header: self.0.header(store.revision()),
                    alarms: store.alarms().iter().map(alarm_to_proto).collect(),
                }));
            }
            A::Activate => AlarmAction::Activate,
            A::Deactivate => AlarmAction::Deactivate,
        };
        let command = Command::Alarm {
            action,
            member: r.member_id,
            alarm: kind,
        };
        match self.0.execute(command).await? {
            Outcome::Alarms { revision, alarms } => Ok(Response::new(pb::AlarmResponse {
                header: self.0.header(revision),
                alarms: alarms.iter().map(alarm_to_proto).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    /// Nothing to defragment: the store lives in memory and the log compacts itself.
    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let revision = self.0.store.read().revision();
        Ok(Response::new(pb::DefragmentResponse {
            header: self.0.header(revision),
        }))
    }

    /// A CRC-32C of everything the store holds.
    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let store = self.0.store.read();
        Ok(Response::new(pb::HashResponse {
            header: self.0.header(store.revision()),
            hash: store.hash(),
        }))
    }

    /// A CRC-32C of the key space's history up to a revision (0: the current one): equal on
    /// every member at the same revision.
    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let store = self.0.store.read();
        let at = store
            .kv()
            .check_read(revision, store.revision())
            .map_err(|e| super::convert::kv_status(&e))?;
        Ok(Response::new(pb::HashKvResponse {
            header: self.0.header(at),
            hash: store.kv().hash(at),
            compact_revision: store.compacted(),
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
