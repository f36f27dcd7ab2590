//! etcd's requests on keys (range, put, delete, transaction) as the log carries them, their
//! answers, and their validation.
//!
//! The types mirror etcd's `RangeRequest`, `PutRequest`, `DeleteRangeRequest`, `TxnRequest`
//! and `Compare`, in serde form (the server converts from and to the protobuf types).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{range_bounds, KeyValue, KvError};

/// The most compares, or operations in one branch, of a transaction (etcd's `--max-txn-ops`
/// default; see [`TxnReq::validate`]).
pub const TXN_OPS_MAX: usize = 128;

/// How a range's keys are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order (etcd's NONE), unless a sort target other than the key is given.
    #[default]
    None,
    /// Lowest first.
    Ascend,
    /// Highest first.
    Descend,
}

/// What a range is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// etcd's `RangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeReq {
    /// The first key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The range's end (etcd's encoding, see [`range_bounds`]).
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// At most this many keys (0: no limit).
    pub limit: i64,
    /// Read at this revision (0: current).
    pub revision: i64,
    /// The order.
    pub sort_order: SortOrder,
    /// The sort key.
    pub sort_target: SortTarget,
    /// Keys without values.
    pub keys_only: bool,
    /// Only the count.
    pub count_only: bool,
    /// Filters on mod and create revisions (0: none).
    pub min_mod_revision: i64,
    /// See `min_mod_revision`.
    pub max_mod_revision: i64,
    /// See `min_mod_revision`.
    pub min_create_revision: i64,
    /// See `min_mod_revision`.
    pub max_create_revision: i64,
}

/// etcd's `PutRequest` (fields in the order of the log's encoding before the MVCC store).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutReq {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The lease to attach (0: none).
    pub lease: i64,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
    /// Return the previous key-value.
    pub prev_kv: bool,
}

/// etcd's `DeleteRangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteReq {
    /// The first key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The range's end (etcd's encoding).
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// How a compare relates the key's field to the given value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// Equal.
    Equal,
    /// The key's field is greater.
    Greater,
    /// The key's field is less.
    Less,
    /// Not equal.
    NotEqual,
}

/// The field a compare looks at, with the value to compare it with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The version (0 for a missing key).
    Version(i64),
    /// The create revision (0 for a missing key).
    Create(i64),
    /// The mod revision (0 for a missing key).
    Mod(i64),
    /// The value (a missing key fails every value compare).
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The lease (0 for a missing key).
    Lease(i64),
}

/// etcd's `Compare`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The relation.
    pub result: CompareResult,
    /// The field and the value.
    pub target: CompareTarget,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// With a range end, every key of the range must satisfy the compare.
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A read.
    Range(RangeReq),
    /// A write.
    Put(PutReq),
    /// A delete.
    Delete(DeleteReq),
    /// A nested transaction.
    Txn(TxnReq),
}

/// etcd's `TxnRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnReq {
    /// All must hold for `success` to run; otherwise `failure` runs.
    pub compare: Vec<Compare>,
    /// Run when every compare holds.
    pub success: Vec<Op>,
    /// Run otherwise.
    pub failure: Vec<Op>,
}

/// etcd's `RangeResponse` (without the header).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResp {
    /// The keys (empty with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` allowed.
    pub more: bool,
    /// How many keys matched.
    pub count: i64,
}

/// etcd's `PutResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResp {
    /// The previous key-value, when asked for and it existed.
    pub prev: Option<KeyValue>,
}

/// etcd's `DeleteRangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResp {
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted key-values, when asked for.
    pub prev: Vec<KeyValue>,
}

/// An operation's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResp {
    /// A read's.
    Range(RangeResp),
    /// A write's.
    Put(PutResp),
    /// A delete's.
    Delete(DeleteResp),
    /// A nested transaction's.
    Txn(TxnResp),
}

/// etcd's `TxnResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResp {
    /// Whether every compare held.
    pub succeeded: bool,
    /// The answers of the branch that ran.
    pub responses: Vec<OpResp>,
}

impl TxnReq {
    /// Whether the transaction may write (either branch, nested ones too).
    pub fn writes(&self) -> bool {
        self.success.iter().chain(&self.failure).any(Op::writes)
    }

    /// etcd's validation before a transaction is proposed (`checkTxnRequest`, then
    /// `checkIntervals` of each branch): at most `ops_max` (at most [`TXN_OPS_MAX`]) compares
    /// and operations per branch, a nested transaction getting what its parent's longest list
    /// leaves of the bound; and no key written twice in a branch ([`KvError::DuplicateKey`]).
    pub fn validate(&self, ops_max: usize) -> Result<(), KvError> {
        self.count_ops(ops_max)?;
        for branch in [&self.success, &self.failure] {
            collect_writes(branch)?;
        }
        Ok(())
    }

    fn count_ops(&self, ops_max: usize) -> Result<(), KvError> {
        let n = self
            .success
            .len()
            .max(self.failure.len())
            .max(self.compare.len());
        let Some(left) = ops_max.checked_sub(n) else {
            return Err(KvError::TooManyOps);
        };
        for op in self.success.iter().chain(&self.failure) {
            if let Op::Txn(t) = op {
                t.count_ops(left)?;
            }
        }
        Ok(())
    }
}

impl Op {
    fn writes(&self) -> bool {
        match self {
            Op::Range(_) => false,
            Op::Put(_) | Op::Delete(_) => true,
            Op::Txn(t) => t.writes(),
        }
    }
}

/// The keys put and the ranges deleted by `ops`, nested transactions included (etcd's
/// `checkIntervals`). A duplicate key: one put twice, a put in a range this level deletes,
/// or a nested put in a range an earlier nested transaction deletes. The two branches of a
/// nested transaction exclude each other: they may put the same key, and one's deletes do not
/// conflict with the other's puts.
#[allow(clippy::type_complexity)]
fn collect_writes(ops: &[Op]) -> Result<(BTreeSet<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>), KvError> {
    let mut deletes: Vec<(Vec<u8>, Vec<u8>)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Delete(d) => Some((d.key.clone(), d.range_end.clone())),
            _ => None,
        })
        .collect();
    let deleted = |deletes: &[(Vec<u8>, Vec<u8>)], k: &[u8]| {
        deletes.iter().any(|(key, end)| in_range(k, key, end))
    };
    let mut puts = BTreeSet::new();
    for op in ops {
        let Op::Txn(t) = op else { continue };
        let (then_puts, then_deletes) = collect_writes(&t.success)?;
        let (else_puts, else_deletes) = collect_writes(&t.failure)?;
        let clash = |k: &Vec<u8>, own_branch: &BTreeSet<Vec<u8>>| {
            (puts.contains(k) && !own_branch.contains(k)) || deleted(&deletes, k)
        };
        if then_puts.iter().any(|k| clash(k, &BTreeSet::new()))
            || else_puts.iter().any(|k| clash(k, &then_puts))
        {
            return Err(KvError::DuplicateKey);
        }
        puts.extend(then_puts);
        puts.extend(else_puts);
        deletes.extend(then_deletes);
        deletes.extend(else_deletes);
    }
    for op in ops {
        let Op::Put(p) = op else { continue };
        if deleted(&deletes, &p.key) || !puts.insert(p.key.clone()) {
            return Err(KvError::DuplicateKey);
        }
    }
    Ok((puts, deletes))
}

/// Whether `k` lies in etcd's range `[key, end)`.
pub fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    use std::ops::RangeBounds;
    RangeBounds::<[u8]>::contains(&range_bounds(key, end), k)
}

impl Compare {
    /// Whether the compare holds for one key's current state (`None`: missing).
    pub fn holds(&self, kv: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ordering = match (&self.target, kv) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
            (CompareTarget::Create(v), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(v),
            (CompareTarget::Mod(v), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(v),
            (CompareTarget::Lease(v), kv) => kv.map_or(0, |kv| kv.lease).cmp(v),
        };
        match self.result {
            CompareResult::Equal => ordering == Ordering::Equal,
            CompareResult::Greater => ordering == Ordering::Greater,
            CompareResult::Less => ordering == Ordering::Less,
            CompareResult::NotEqual => ordering != Ordering::Equal,
        }
    }
}

/// Sorts a range's keys as etcd does: a sort target other than the key with no order sorts
/// ascending; descending by key reverses the key order.
pub fn sort(kvs: &mut [&KeyValue], order: SortOrder, target: SortTarget) {
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
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

impl RangeReq {
    /// Whether `kv` passes the revision filters.
    pub fn admits(&self, kv: &KeyValue) -> bool {
        let within = |v: i64, min: i64, max: i64| (min == 0 || v >= min) && (max == 0 || v <= max);
        within(
            kv.mod_revision,
            self.min_mod_revision,
            self.max_mod_revision,
        ) && within(
            kv.create_revision,
            self.min_create_revision,
            self.max_create_revision,
        )
    }

    /// The answer from the keys of the range (in key order), after filtering, sorting and
    /// limiting. As in etcd, `count` counts the range's keys before the revision filters, and
    /// `count_only` answers with `more` false.
    pub fn answer(&self, mut kvs: Vec<&KeyValue>) -> RangeResp {
        let count = kvs.len() as i64;
        kvs.retain(|kv| self.admits(kv));
        sort(&mut kvs, self.sort_order, self.sort_target);
        let limit = if self.limit > 0 {
            self.limit as usize
        } else {
            usize::MAX
        };
        // etcd counts without fetching for `count_only`, so nothing is cut and `more` is false.
        let more = !self.count_only && kvs.len() > limit;
        let kvs = if self.count_only {
            Vec::new()
        } else {
            kvs.into_iter()
                .take(limit)
                .map(|kv| {
                    let mut kv = kv.clone();
                    if self.keys_only {
                        kv.value = Vec::new();
                    }
                    kv
                })
                .collect()
        };
        RangeResp { kvs, more, count }
    }
}
