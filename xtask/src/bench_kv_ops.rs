//! The txn (compare-and-swap) and linearizable range rows of `cargo xtask bench kv`.
//!
//! Both write their keys before the timed part (untimed, concurrently over the row's
//! connections) and check every answer: a wrong answer is counted apart from errors and fails
//! the row.

use std::sync::Arc;

use futures::future::join_all;
use raftline_kv::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use raftline_kv::proto::etcdserverpb::request_op::Request;
use raftline_kv::proto::etcdserverpb::response_op::Response;
use raftline_kv::proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use tonic::transport::Channel;

use crate::bench_kv::{random_bytes, RowCtx, Spec, VALUE_BYTES};
use crate::bench_kv_load::{drive, Client, Load, Op, OpError, RowError};

/// Keys the range rows read (written once before each range row).
pub const RANGE_KEYS: usize = 1000;

/// Runs a CAS row: `spec.clients` clients over `spec.keys` keys (client `c` on key
/// `c % keys`), then checks each key's final version against the swaps made on it.
pub async fn cas_row(ctx: &RowCtx<'_>, spec: Spec) -> Result<Load, RowError> {
    let channels = ctx.connect().await?;
    let prefix = format!("bench-kv/cas/{}/", ctx.row).into_bytes();
    let keys: Vec<Vec<u8>> = (0..spec.keys).map(|k| key_of(&prefix, k)).collect();
    let value = Arc::new(random_bytes(VALUE_BYTES));
    let revisions = prewrite(&channels, &keys, &value).await?;
    probe_txn(&channels[0], &keys[0], revisions[0]).await?;
    let clients: Vec<CasClient> = (0..spec.clients)
        .map(|c| CasClient {
            kv: KvClient::new(channels[c % channels.len()].clone()),
            key: keys[c % keys.len()].clone(),
            last: revisions[c % keys.len()],
            value: Arc::clone(&value),
            contended: spec.clients > spec.keys,
            swaps: 0,
        })
        .collect();
    let before = ctx.cpu();
    let (mut load, clients) = drive(clients, spec.ops, ctx.deadline)
        .await
        .map_err(RowError::Failed)?;
    load.cpu = ctx.cpu_since(before);
    let swaps: u64 = clients.iter().map(|c| c.swaps).sum();
    load.detail.push(format!(
        "{swaps} successful swaps, {} failed compares ({})",
        load.failed_compares,
        if spec.clients > spec.keys {
            format!("{} clients per key", spec.clients / spec.keys)
        } else {
            "contention-free: one key per client, so a failed compare is a wrong result".to_string()
        }
    ));
    check_versions(&channels[0], &prefix, &keys, &clients, &mut load).await;
    Ok(load)
}

/// `prefix` followed by `k` in 6 decimal digits.
fn key_of(prefix: &[u8], k: usize) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{k:06}").as_bytes());
    key
}

/// Requests in flight while a row writes its keys.
const PREWRITE_LANES: usize = 100;

/// Puts `value` to every key, [`PREWRITE_LANES`] at a time over `channels` (untimed);
/// returns each key's revision.
async fn prewrite(
    channels: &[Channel],
    keys: &[Vec<u8>],
    value: &[u8],
) -> Result<Vec<i64>, RowError> {
    let lanes = (0..PREWRITE_LANES.min(keys.len())).map(|lane| {
        let mut kv = KvClient::new(channels[lane % channels.len()].clone());
        async move {
            let mut out = Vec::new();
            for k in (lane..keys.len()).step_by(PREWRITE_LANES) {
                let request = PutRequest {
                    key: keys[k].clone(),
                    value: value.to_vec(),
                    ..PutRequest::default()
                };
                let answer = kv.put(request).await;
                let answer = answer.map_err(|e| RowError::from_status("writing the keys", &e))?;
                out.push((k, answer.into_inner().header.map_or(0, |h| h.revision)));
            }
            Ok::<_, RowError>(out)
        }
    });
    let mut revisions = vec![0; keys.len()];
    for lane in join_all(lanes).await {
        for (k, revision) in lane? {
            revisions[k] = revision;
        }
    }
    Ok(revisions)
}

/// A read-only Txn comparing `key`'s mod_revision with the one its put answered (untimed):
/// tells whether the system serves `KV.Txn` at all, and that the compare holds.
async fn probe_txn(channel: &Channel, key: &[u8], revision: i64) -> Result<(), RowError> {
    let request = TxnRequest {
        compare: vec![mod_equals(key, revision)],
        ..TxnRequest::default()
    };
    let answer = KvClient::new(channel.clone())
        .txn(request)
        .await
        .map_err(|e| RowError::from_status("first Txn", &e))?
        .into_inner();
    if answer.succeeded {
        Ok(())
    } else {
        Err(RowError::Failed(format!(
            "WRONG: Txn comparing mod_revision == {revision} (the revision its put answered) \
             failed"
        )))
    }
}

/// The compare `mod_revision(key) == revision`.
fn mod_equals(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::ModRevision(revision)),
        range_end: Vec::new(),
    }
}

/// A client of the CAS rows.
struct CasClient {
    kv: KvClient<Channel>,
    key: Vec<u8>,
    /// The key's mod_revision as this client last saw it.
    last: i64,
    value: Arc<Vec<u8>>,
    /// Other clients write the key too (else a failed compare is a wrong result).
    contended: bool,
    /// Successful swaps.
    swaps: u64,
}

impl Client for CasClient {
    /// `Txn(compare mod_revision(key) == last, success: put key, failure: get key)`.
    async fn op(&mut self, _: u64) -> Result<Op, OpError> {
        let request = TxnRequest {
            compare: vec![mod_equals(&self.key, self.last)],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: self.key.clone(),
                    value: self.value.to_vec(),
                    ..PutRequest::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: self.key.clone(),
                    ..RangeRequest::default()
                })),
            }],
        };
        let answer = self.kv.txn(request).await.map_err(OpError::Rpc)?;
        self.learn(answer.into_inner())
    }
}

impl CasClient {
    /// Learns the key's new mod_revision from a Txn's answer, checking it.
    fn learn(&mut self, answer: TxnResponse) -> Result<Op, OpError> {
        let last = self.last;
        if answer.succeeded {
            let revision = answer.header.map_or(0, |h| h.revision);
            if revision <= last {
                return Err(OpError::Wrong(format!(
                    "a swap of mod_revision {last} answered with header revision {revision}"
                )));
            }
            self.last = revision;
            self.swaps += 1;
            return Ok(Op::Done);
        }
        let current = match answer.responses.first().and_then(|r| r.response.as_ref()) {
            Some(Response::ResponseRange(range)) => range.kvs.first().map(|kv| kv.mod_revision),
            _ => None,
        };
        let Some(current) = current else {
            return Err(OpError::Wrong(format!(
                "a failed compare's answer has no range response with the key (mod_revision \
                 compared: {last})"
            )));
        };
        self.last = current;
        if current == last {
            Err(OpError::Wrong(format!(
                "compare mod_revision == {last} failed, yet the failure branch read mod_revision \
                 {current}"
            )))
        } else if !self.contended {
            Err(OpError::Wrong(format!(
                "compare mod_revision == {last} failed on a key only this client writes (its \
                 mod_revision is {current}: the last swap's header revision was not it?)"
            )))
        } else {
            Ok(Op::CompareFailed)
        }
    }
}

/// Checks that each key's version is 1 + the swaps made on it (no lost or extra swap), from
/// one range over the row's keys; skipped if a request failed (it may have been applied).
async fn check_versions(
    channel: &Channel,
    prefix: &[u8],
    keys: &[Vec<u8>],
    clients: &[CasClient],
    load: &mut Load,
) {
    if load.errors > 0 {
        load.detail
            .push("final versions not checked: a request failed, it may have applied".into());
        return;
    }
    let mut expected = vec![1_i64; keys.len()];
    for (c, client) in clients.iter().enumerate() {
        expected[c % keys.len()] += client.swaps as i64;
    }
    let mut range_end = prefix.to_vec();
    *range_end.last_mut().expect("a non-empty prefix") += 1;
    let request = RangeRequest {
        key: prefix.to_vec(),
        range_end,
        keys_only: true,
        ..RangeRequest::default()
    };
    let kvs = match KvClient::new(channel.clone()).range(request).await {
        Ok(answer) => answer.into_inner().kvs,
        Err(e) => return load.error(|| format!("final range: {}: {}", e.code(), e.message())),
    };
    let found: Vec<(&Vec<u8>, i64)> = kvs.iter().map(|kv| (&kv.key, kv.version)).collect();
    let wanted: Vec<(&Vec<u8>, i64)> = keys.iter().zip(expected).collect();
    if found == wanted {
        load.detail.push(format!(
            "final versions checked: each of the {} keys has version 1 + its swaps",
            keys.len()
        ));
    } else {
        let bad = wanted.iter().find(|w| !found.contains(w));
        load.wrong(|| {
            format!(
                "final versions: {} keys found, {} expected; first mismatch: {:?}",
                found.len(),
                keys.len(),
                bad.map(|(k, v)| (String::from_utf8_lossy(k), v))
            )
        });
    }
}

/// Runs a range row: single-key linearizable `Range`s (serializable = false) over
/// [`RANGE_KEYS`] keys written before, read `i % RANGE_KEYS` in turn; checks each answer
/// holds exactly that key with its value.
pub async fn range_row(ctx: &RowCtx<'_>, spec: Spec) -> Result<Load, RowError> {
    let channels = ctx.connect().await?;
    let prefix = format!("bench-kv/range/{}/", ctx.row).into_bytes();
    let keys: Arc<Vec<Vec<u8>>> = Arc::new((0..RANGE_KEYS).map(|k| key_of(&prefix, k)).collect());
    let value = Arc::new(random_bytes(VALUE_BYTES));
    prewrite(&channels, &keys, &value).await?;
    let clients: Vec<RangeClient> = (0..spec.clients)
        .map(|c| RangeClient {
            kv: KvClient::new(channels[c % channels.len()].clone()),
            keys: Arc::clone(&keys),
            value: Arc::clone(&value),
        })
        .collect();
    let before = ctx.cpu();
    let (mut load, _) = drive(clients, spec.ops, ctx.deadline)
        .await
        .map_err(RowError::Failed)?;
    load.cpu = ctx.cpu_since(before);
    Ok(load)
}

/// A client of the range rows.
struct RangeClient {
    kv: KvClient<Channel>,
    keys: Arc<Vec<Vec<u8>>>,
    value: Arc<Vec<u8>>,
}

impl Client for RangeClient {
    async fn op(&mut self, i: u64) -> Result<Op, OpError> {
        let key = &self.keys[(i % self.keys.len() as u64) as usize];
        let request = RangeRequest {
            key: key.clone(),
            serializable: false,
            ..RangeRequest::default()
        };
        let answer = self.kv.range(request).await.map_err(OpError::Rpc)?;
        let kvs = answer.into_inner().kvs;
        match kvs.as_slice() {
            [kv] if kv.key == *key && kv.value == *self.value => Ok(Op::Done),
            _ => Err(OpError::Wrong(format!(
                "Range of {} answered {} key(s) (first: {:?}) instead of the key with the \
                 value written",
                String::from_utf8_lossy(key),
                kvs.len(),
                kvs.first()
                    .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            ))),
        }
    }
}
