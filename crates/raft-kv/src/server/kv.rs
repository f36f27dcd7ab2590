//! etcd's `KV` service: reads served here after a read barrier (or at once when
//! serializable), writes proposed through raft (forwarded by a follower to the leader), and
//! answered once this member has applied them too, so that a serializable read on the member
//! that answered a write sees it (etcd's read-your-writes).

use super::convert::{
    delete_from_proto, delete_to_proto, kv_status, put_from_proto, put_to_proto, range_from_proto,
    range_to_proto, txn_from_proto, txn_to_proto,
};
#[allow(clippy::wildcard_imports)]
use super::*;
use crate::store::KvError;
use prost::Message;

/// `etcdserverpb.KV`.
pub struct KvService(pub Arc<Shared>);

/// Whether every read of a transaction is serializable (then it needs no read barrier).
fn serializable(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(r)) => r.serializable,
            Some(Request::RequestTxn(inner)) => serializable(inner),
            _ => true,
        })
}

impl KvService {
    /// Runs a write through raft; the outcome once applied here too.
    async fn write(&self, command: Command) -> Result<Outcome, Status> {
        self.0.check_quota(&command).await?;
        let outcome = self.0.execute(command).await?;
        self.0.wait_applied(outcome.revision()).await?;
        match outcome {
            Outcome::Failed { error, .. } => Err(kv_status(&error)),
            outcome => Ok(outcome),
        }
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let r = request.into_inner();
        let serializable = r.serializable;
        let r = range_from_proto(r)?;
        if !serializable {
            self.0.read_barrier().await?;
        }
        let store = self.0.store.read();
        let answer = store.read(&r).map_err(|e| kv_status(&e))?;
        Ok(Response::new(range_to_proto(
            answer,
            self.0.header(store.revision()),
        )))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let r = request.into_inner();
        if r.key.len() + r.value.len() > REQUEST_BYTES_MAX {
            return Err(Status::invalid_argument("etcdserver: request is too large"));
        }
        match self.write(Command::Put(put_from_proto(r)?)).await? {
            Outcome::Put { revision, prev } => Ok(Response::new(put_to_proto(
                crate::store::txn::PutResp { prev },
                self.0.header(revision),
            ))),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let command = Command::DeleteRange(delete_from_proto(request.into_inner())?);
        match self.write(command).await? {
            Outcome::Deleted {
                revision,
                deleted,
                prev,
            } => Ok(Response::new(delete_to_proto(
                crate::store::txn::DeleteResp { deleted, prev },
                self.0.header(revision),
            ))),
            other => Err(unexpected(other)),
        }
    }

    /// A transaction that may write goes through raft; one that only reads is served here
    /// (after a read barrier unless all its reads are serializable).
    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let r = request.into_inner();
        if r.encoded_len() > REQUEST_BYTES_MAX {
            return Err(Status::invalid_argument("etcdserver: request is too large"));
        }
        let reads_serializable = serializable(&r);
        let t = txn_from_proto(r, self.0.config.flags.max_txn_ops as usize)?;
        if !t.writes() {
            if !reads_serializable {
                self.0.read_barrier().await?;
            }
            let store = self.0.store.read();
            let answer = store.read_txn(&t).map_err(|e| kv_status(&e))?;
            return Ok(Response::new(txn_to_proto(
                answer,
                self.0.header(store.revision()),
            )));
        }
        match self.write(Command::Txn(t)).await? {
            Outcome::Txn { revision, response } => Ok(Response::new(txn_to_proto(
                response,
                self.0.header(revision),
            ))),
            other => Err(unexpected(other)),
        }
    }

    /// Compaction goes through raft; the answer comes once this member has applied it (the
    /// history is in memory, so "physical" compaction is done by then too).
    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let revision = request.into_inner().revision;
        {
            let store = self.0.store.read();
            if revision > store.revision() {
                return Err(kv_status(&KvError::FutureRevision));
            }
            if revision <= store.compacted() {
                return Err(kv_status(&KvError::Compacted));
            }
        }
        match self.write(Command::Compact { revision }).await? {
            Outcome::Compacted { revision: current } => {
                self.0.wait_compacted(revision).await?;
                Ok(Response::new(pb::CompactionResponse {
                    header: self.0.header(current),
                }))
            }
            other => Err(unexpected(other)),
        }
    }
}
