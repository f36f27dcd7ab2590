//! etcd's `KV` service.


#[allow(clippy::wildcard_imports)]
use super::*;

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

    async fn txn(
        &self,
        _request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        Err(unserved("KV.Txn"))
    }

    async fn compact(
        &self,
        _request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        Err(unserved("KV.Compact"))
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

