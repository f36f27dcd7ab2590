//! The register workload: clients, each bound to one member, issue puts, linearizable gets
//! and compare-and-swaps (a `Txn` comparing the value, or `create_revision == 0` for an
//! absent key) on a few keys, one operation at a time, and record what they saw.
//!
//! Outcomes: an answer is `Ok`; an error on a read is `Failed` (a read changes nothing, so it
//! is left out of the history), and so is a write that could not connect (never sent); any
//! other error on a write, whatever it says, is `Unknown` (a write
//! refused by a member may still have been proposed, or forwarded: the checker lets it take
//! effect at any point after its call, or never).

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use raftline_core::testing::linearizability::{KvInput, KvOutput};
use raftline_core::Rng;
use raftline_kv::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use raftline_kv::proto::etcdserverpb::request_op::Request;
use raftline_kv::proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::transport::{Channel, Endpoint};

/// A client's deadline for one operation.
pub const OP_TIMEOUT: Duration = Duration::from_secs(1);

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Answered.
    Ok,
    /// A write whose effect is unknown (error or timeout).
    Unknown,
    /// A read that failed (no effect).
    Failed,
}

/// One operation as a client saw it (times in microseconds since the run's start).
#[derive(Clone, Debug)]
pub struct Record {
    /// The client (clients `c` talks to member `c % nodes`); final reads use 1000 + member.
    pub client: u64,
    /// The member it was sent to (from 0).
    pub member: usize,
    /// What was asked.
    pub input: KvInput,
    /// When it was sent.
    pub call: u64,
    /// When the answer or the error came.
    pub end: u64,
    /// The answer, if `Ok`.
    pub output: Option<KvOutput>,
    /// How it ended.
    pub status: Status,
    /// The error, if any.
    pub error: Option<String>,
}

/// What the clients share: the records, the clock, the stop flag, unique values.
pub struct Shared {
    /// Every operation so far.
    pub records: RefCell<Vec<Record>>,
    /// The run's start.
    pub start: Instant,
    /// Set to stop the clients.
    pub stop: Cell<bool>,
    next_value: Cell<u64>,
}

impl Shared {
    /// Starts the clock.
    pub fn new() -> Shared {
        Shared {
            records: RefCell::new(Vec::new()),
            start: Instant::now(),
            stop: Cell::new(false),
            next_value: Cell::new(1),
        }
    }

    /// Microseconds since the start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn unique(&self) -> u64 {
        let v = self.next_value.get();
        self.next_value.set(v + 1);
        v
    }
}

/// A lazily connected channel to `url` with the operation timeout.
pub fn channel(url: &str) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .timeout(OP_TIMEOUT)
        .connect_lazy())
}

/// The etcd key of register `k`.
fn key_bytes(k: u64) -> Vec<u8> {
    format!("jepsen/r{k}").into_bytes()
}

/// What the clients work on: `keys` registers at a time, replaced by fresh ones every
/// `key_us` microseconds (register `gen * keys + k` in generation `gen`), so that each key's
/// history stays small enough to check (the search grows with the writes of unknown outcome
/// pending at once).
#[derive(Clone, Copy)]
pub struct KeySpace {
    /// Registers at a time.
    pub keys: u64,
    /// Microseconds a generation of registers lasts.
    pub key_us: u64,
}

/// Runs one client until `shared.stop`.
pub async fn client(
    shared: &Shared,
    id: u64,
    member: usize,
    url: String,
    space: KeySpace,
    seed: u64,
) {
    let Ok(channel) = channel(&url) else { return };
    let mut kv = KvClient::new(channel);
    let mut rng = Rng::new(seed ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut seen: std::collections::HashMap<u64, Option<u64>> = Default::default();
    while !shared.stop.get() {
        let key = shared.now() / space.key_us.max(1) * space.keys + rng.below(space.keys);
        let input = match rng.below(10) {
            0..=3 => KvInput::Get { key },
            4..=6 => KvInput::Put {
                key,
                value: shared.unique(),
            },
            _ => KvInput::Cas {
                key,
                expected: seen.get(&key).copied().flatten(),
                new: shared.unique(),
            },
        };
        let record = perform(shared, &mut kv, id, member, input).await;
        if let Some(KvOutput::Value(v)) = record.output {
            seen.insert(key, v);
        }
        let failed = record.status != Status::Ok;
        shared.records.borrow_mut().push(record);
        if failed {
            // Do not hammer a member that is down.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends one operation and records it.
pub async fn perform(
    shared: &Shared,
    kv: &mut KvClient<Channel>,
    client: u64,
    member: usize,
    input: KvInput,
) -> Record {
    let call = shared.now();
    let answer = tokio::time::timeout(OP_TIMEOUT + Duration::from_millis(200), send(kv, &input))
        .await
        .unwrap_or_else(|_| Err("client timeout".into()));
    let end = shared.now();
    let is_read = matches!(input, KvInput::Get { .. });
    let (output, status, error) = match answer {
        Ok(out) => (Some(out), Status::Ok, None),
        Err(e) if is_read || never_sent(&e) => (None, Status::Failed, Some(e)),
        Err(e) => (None, Status::Unknown, Some(e)),
    };
    Record {
        client,
        member,
        input,
        call,
        end,
        output,
        status,
        error,
    }
}

/// Whether an error says the request never left this process: the connection to the member
/// could not be made (it is down, or paused with a full backlog), so nothing was proposed.
fn never_sent(error: &str) -> bool {
    error.contains("tcp connect error")
}

/// The etcd request for `input`, and its answer as the model's output.
async fn send(kv: &mut KvClient<Channel>, input: &KvInput) -> Result<KvOutput, String> {
    let code = |e: tonic::Status| format!("{:?}: {}", e.code(), e.message());
    match *input {
        KvInput::Get { key } => {
            let request = RangeRequest {
                key: key_bytes(key),
                ..RangeRequest::default()
            };
            let kvs = kv.range(request).await.map_err(code)?.into_inner().kvs;
            let value = match kvs.first() {
                None => None,
                Some(kv) => Some(parse(&kv.value)?),
            };
            Ok(KvOutput::Value(value))
        }
        KvInput::Put { key, value } => {
            kv.put(put(key, value)).await.map_err(code)?;
            Ok(KvOutput::Ok)
        }
        KvInput::Cas { key, expected, new } => {
            let request = TxnRequest {
                compare: vec![compare(key, expected)],
                success: vec![RequestOp {
                    request: Some(Request::RequestPut(put(key, new))),
                }],
                failure: Vec::new(),
            };
            let answer = kv.txn(request).await.map_err(code)?.into_inner();
            Ok(KvOutput::CasResult(answer.succeeded))
        }
        KvInput::Delete { .. } => Err("the register workload does not delete".into()),
    }
}

fn put(key: u64, value: u64) -> PutRequest {
    PutRequest {
        key: key_bytes(key),
        value: value.to_string().into_bytes(),
        ..PutRequest::default()
    }
}

/// `value == expected`, or `create_revision == 0` (absent) for `None`.
fn compare(key: u64, expected: Option<u64>) -> Compare {
    let (target, union) = match expected {
        Some(v) => (
            CompareTarget::Value,
            TargetUnion::Value(v.to_string().into_bytes()),
        ),
        None => (CompareTarget::Create, TargetUnion::CreateRevision(0)),
    };
    Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key: key_bytes(key),
        target_union: Some(union),
        range_end: Vec::new(),
    }
}

fn parse(bytes: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("WRONG: a value that is not a number: {bytes:?}"))
}
