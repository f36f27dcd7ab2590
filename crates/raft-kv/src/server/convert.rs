//! Conversions between etcd's protobuf messages and the store's request and answer types,
//! and the gRPC status of each store error.

use tonic::{Code, Status};

use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;
use crate::store::mvcc::{Event, EventKind};
use crate::store::txn::{
    Compare, CompareResult, CompareTarget, DeleteReq, DeleteResp, Op, OpResp, PutReq, PutResp,
    RangeReq, RangeResp, SortOrder, SortTarget, TxnReq, TxnResp,
};
use crate::store::{KeyValue, KvError};

/// etcd's message for a request without a key.
pub const KEY_NOT_PROVIDED: &str = "etcdserver: key is not provided";

/// etcd's message for a put with `ignore_value` and a value.
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";

/// etcd's message for a put with `ignore_lease` and a lease.
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";

/// The gRPC status etcd answers a store error with (etcd's `rpctypes`).
pub fn kv_status(e: &KvError) -> Status {
    let code = match e {
        KvError::Compacted | KvError::FutureRevision => Code::OutOfRange,
        KvError::KeyNotFound | KvError::DuplicateKey | KvError::TooManyOps => Code::InvalidArgument,
        KvError::LeaseNotFound => Code::NotFound,
        KvError::LeaseExists => Code::FailedPrecondition,
        KvError::NoSpace => Code::ResourceExhausted,
    };
    Status::new(code, e.to_string())
}

/// A store key-value as etcd's.
pub fn kv_to_proto(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A change as etcd's watch event, with the key's previous value if wanted.
pub fn event_to_proto(e: Event, prev: Option<KeyValue>) -> mvccpb::Event {
    let kind = match e.kind {
        EventKind::Put => mvccpb::event::EventType::Put,
        EventKind::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(kv_to_proto(e.kv)),
        prev_kv: prev.map(kv_to_proto),
    }
}

/// etcd's checks of a range request before it is served.
pub fn range_from_proto(r: pb::RangeRequest) -> Result<RangeReq, Status> {
    if r.key.is_empty() {
        return Err(Status::invalid_argument(KEY_NOT_PROVIDED));
    }
    if r.limit < 0 {
        return Err(Status::invalid_argument(
            "etcdserver: limit must not be negative",
        ));
    }
    let sort_order = match r.sort_order() {
        pb::range_request::SortOrder::None => SortOrder::None,
        pb::range_request::SortOrder::Ascend => SortOrder::Ascend,
        pb::range_request::SortOrder::Descend => SortOrder::Descend,
    };
    let sort_target = match r.sort_target() {
        pb::range_request::SortTarget::Key => SortTarget::Key,
        pb::range_request::SortTarget::Version => SortTarget::Version,
        pb::range_request::SortTarget::Create => SortTarget::Create,
        pb::range_request::SortTarget::Mod => SortTarget::Mod,
        pb::range_request::SortTarget::Value => SortTarget::Value,
    };
    Ok(RangeReq {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order,
        sort_target,
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    })
}

/// etcd's checks of a put request before it is proposed.
pub fn put_from_proto(r: pb::PutRequest) -> Result<PutReq, Status> {
    if r.key.is_empty() {
        return Err(Status::invalid_argument(KEY_NOT_PROVIDED));
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Status::invalid_argument(VALUE_PROVIDED));
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Status::invalid_argument(LEASE_PROVIDED));
    }
    Ok(PutReq {
        key: r.key,
        value: r.value,
        lease: r.lease,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
        prev_kv: r.prev_kv,
    })
}

/// etcd's checks of a delete request before it is proposed.
pub fn delete_from_proto(r: pb::DeleteRangeRequest) -> Result<DeleteReq, Status> {
    if r.key.is_empty() {
        return Err(Status::invalid_argument(KEY_NOT_PROVIDED));
    }
    Ok(DeleteReq {
        key: r.key,
        range_end: r.range_end,
        prev_kv: r.prev_kv,
    })
}

fn compare_from_proto(c: pb::Compare) -> Result<Compare, Status> {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    if c.key.is_empty() {
        return Err(Status::invalid_argument(KEY_NOT_PROVIDED));
    }
    let result = match c.result() {
        R::Equal => CompareResult::Equal,
        R::Greater => CompareResult::Greater,
        R::Less => CompareResult::Less,
        R::NotEqual => CompareResult::NotEqual,
    };
    // etcd reads the field named by `target`; a missing union compares with zero.
    let union = c.target_union.clone();
    let int = |pick: fn(&U) -> Option<i64>| union.as_ref().and_then(pick).unwrap_or(0);
    let target = match c.target() {
        T::Version => CompareTarget::Version(int(|u| match u {
            U::Version(v) => Some(*v),
            _ => None,
        })),
        T::Create => CompareTarget::Create(int(|u| match u {
            U::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        T::Mod => CompareTarget::Mod(int(|u| match u {
            U::ModRevision(v) => Some(*v),
            _ => None,
        })),
        T::Lease => CompareTarget::Lease(int(|u| match u {
            U::Lease(v) => Some(*v),
            _ => None,
        })),
        T::Value => CompareTarget::Value(match union {
            Some(U::Value(v)) => v,
            _ => Vec::new(),
        }),
    };
    Ok(Compare {
        result,
        target,
        key: c.key,
        range_end: c.range_end,
    })
}

fn op_from_proto(op: pb::RequestOp) -> Result<Op, Status> {
    use pb::request_op::Request;
    match op.request {
        Some(Request::RequestRange(r)) => Ok(Op::Range(range_from_proto(r)?)),
        Some(Request::RequestPut(r)) => Ok(Op::Put(put_from_proto(r)?)),
        Some(Request::RequestDeleteRange(r)) => Ok(Op::Delete(delete_from_proto(r)?)),
        Some(Request::RequestTxn(t)) => Ok(Op::Txn(txn_from_proto(t, usize::MAX)?)),
        None => Err(Status::invalid_argument(
            "etcdserver: a transaction operation has no request",
        )),
    }
}

/// etcd's checks of a transaction before it is proposed (each request's, at most `ops_max`
/// operations per branch, and duplicate keys).
pub fn txn_from_proto(t: pb::TxnRequest, ops_max: usize) -> Result<TxnReq, Status> {
    let ops = |ops: Vec<pb::RequestOp>| -> Result<Vec<Op>, Status> {
        ops.into_iter().map(op_from_proto).collect()
    };
    let txn = TxnReq {
        compare: t
            .compare
            .into_iter()
            .map(compare_from_proto)
            .collect::<Result<_, _>>()?,
        success: ops(t.success)?,
        failure: ops(t.failure)?,
    };
    txn.validate(ops_max).map_err(|e| kv_status(&e))?;
    Ok(txn)
}

/// A range answer as etcd's.
pub fn range_to_proto(r: RangeResp, header: Option<pb::ResponseHeader>) -> pb::RangeResponse {
    pb::RangeResponse {
        header,
        kvs: r.kvs.into_iter().map(kv_to_proto).collect(),
        more: r.more,
        count: r.count,
    }
}

/// A put answer as etcd's.
pub fn put_to_proto(r: PutResp, header: Option<pb::ResponseHeader>) -> pb::PutResponse {
    pb::PutResponse {
        header,
        prev_kv: r.prev.map(kv_to_proto),
    }
}

/// A delete answer as etcd's.
pub fn delete_to_proto(
    r: DeleteResp,
    header: Option<pb::ResponseHeader>,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header,
        deleted: r.deleted,
        prev_kvs: r.prev.into_iter().map(kv_to_proto).collect(),
    }
}

/// A transaction answer as etcd's: the answers inside carry a header with the revision only,
/// and a nested transaction's own header is empty, as etcd leaves them.
pub fn txn_to_proto(t: TxnResp, header: Option<pb::ResponseHeader>) -> pb::TxnResponse {
    let revision = header.map_or(0, |h| h.revision);
    pb::TxnResponse {
        header,
        succeeded: t.succeeded,
        responses: inner_responses(t.responses, revision),
    }
}

fn inner_responses(responses: Vec<OpResp>, revision: i64) -> Vec<pb::ResponseOp> {
    use pb::response_op::Response;
    let inner = Some(pb::ResponseHeader {
        revision,
        ..pb::ResponseHeader::default()
    });
    responses
        .into_iter()
        .map(|r| pb::ResponseOp {
            response: Some(match r {
                OpResp::Range(r) => Response::ResponseRange(range_to_proto(r, inner)),
                OpResp::Put(r) => Response::ResponsePut(put_to_proto(r, inner)),
                OpResp::Delete(r) => Response::ResponseDeleteRange(delete_to_proto(r, inner)),
                OpResp::Txn(t) => Response::ResponseTxn(pb::TxnResponse {
                    header: Some(pb::ResponseHeader::default()),
                    succeeded: t.succeeded,
                    responses: inner_responses(t.responses, revision),
                }),
            }),
        })
        .collect()
}
