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

/// The first client id of the watch workload's writers (register clients are below).
pub const WRITER_CLIENTS: u64 = 100;
/// The first client id of the watch workload's watchers.
pub const WATCHER_CLIENTS: u64 = 200;
/// The first client id of the lease workload's lock clients.
pub const LOCK_CLIENTS: u64 = 300;
/// The first client id of the final reads and final watches (one per member).
pub const FINAL_CLIENTS: u64 = 1000;

/// The most operations of the watch and lease workloads kept (later ones are counted in
/// [`Shared::dropped`] only).
pub const OPS_MAX: usize = 500_000;

/// What an operation of the watch or lease workloads did (its workload and kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// A writer's put of `value` (unique) on watched key `key`; `revision` from the answer.
    WatchPut {
        key: u64,
        value: u64,
        revision: Option<i64>,
    },
    /// A writer's delete of watched key `key`.
    WatchDelete { key: u64 },
    /// One Watch stream of a watcher, opened from revision `from`, until it broke (failed)
    /// or the run stopped (ok).
    WatchStream { from: i64 },
    /// A lease grant (`lease` is 0 until answered).
    LeaseGrant { lease: i64 },
    /// One keep-alive (ok: the lease is alive; failed: no answer or TTL 0).
    KeepAlive { lease: i64 },
    /// The Txn putting the lock key of `lease` if absent.
    LockPut { lease: i64 },
    /// Waiting (polling the lock keys) until the lock key of `lease` is the oldest.
    LockWait { lease: i64 },
    /// The counter's compare-and-swap inside a critical section (ok: answered, whatever
    /// `swapped` says).
    LockCounter { lease: i64, swapped: Option<bool> },
    /// Deleting the lock key of `lease`.
    LockDelete { lease: i64 },
    /// Revoking `lease`.
    LeaseRevoke { lease: i64 },
}

impl What {
    /// The workload and the kind of operation (a row of the summary table).
    pub fn kind(&self) -> (&'static str, &'static str) {
        match self {
            What::WatchPut { .. } => ("watch", "put"),
            What::WatchDelete { .. } => ("watch", "delete"),
            What::WatchStream { .. } => ("watch", "stream"),
            What::LeaseGrant { .. } => ("lease", "grant"),
            What::KeepAlive { .. } => ("lease", "keepalive"),
            What::LockPut { .. } => ("lease", "lock-put"),
            What::LockWait { .. } => ("lease", "lock-wait"),
            What::LockCounter { .. } => ("lease", "counter"),
            What::LockDelete { .. } => ("lease", "unlock"),
            What::LeaseRevoke { .. } => ("lease", "revoke"),
        }
    }

    /// Whether it is one request that changes the store (for the recovery time).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            What::WatchStream { .. } | What::LockWait { .. } | What::KeepAlive { .. }
        )
    }
}

/// One operation of the watch or lease workloads (times in µs since the start).
#[derive(Clone, Debug)]
pub struct Op {
    /// The client (see [`WRITER_CLIENTS`], [`WATCHER_CLIENTS`], [`LOCK_CLIENTS`]).
    pub client: u64,
    /// The member it was sent to (from 0).
    pub member: usize,
    /// What it was.
    pub what: What,
    /// When it was sent.
    pub call: u64,
    /// When it ended.
    pub end: u64,
    /// How it ended (a write that may have taken effect is unknown).
    pub status: Status,
    /// The error, if any.
    pub error: Option<String>,
}

/// What the clients share: the records, the clock, the stop flag, unique values.
pub struct Shared {
    /// Every register operation so far.
    pub records: RefCell<Vec<Record>>,
    /// The watch and lease workloads' operations (at most [`OPS_MAX`]).
    pub ops: RefCell<Vec<Op>>,
    /// Operations not kept in `ops` (over [`OPS_MAX`]).
    pub dropped: Cell<u64>,
    /// What each watcher received.
    pub watchers: RefCell<Vec<super::watch::WatcherLog>>,
    /// The lock clients' critical sections (at most [`super::lock::SECTIONS_MAX`]).
    pub sections: RefCell<Vec<super::lock::Section>>,
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
            ops: RefCell::new(Vec::new()),
            dropped: Cell::new(0),
            watchers: RefCell::new(Vec::new()),
            sections: RefCell::new(Vec::new()),
            start: Instant::now(),
            stop: Cell::new(false),
            next_value: Cell::new(1),
        }
    }

    /// Microseconds since the start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// A value no other write of the run uses.
    pub fn unique(&self) -> u64 {
        let v = self.next_value.get();
        self.next_value.set(v + 1);
        v
    }

    /// Keeps `op` (or counts it, past [`OPS_MAX`]).
    pub fn push_op(&self, op: Op) {
        let mut ops = self.ops.borrow_mut();
        if ops.len() < OPS_MAX {
            ops.push(op);
        } else {
            self.dropped.set(self.dropped.get() + 1);
        }
    }

    /// Operations of every workload so far: (ok, unknown, failed).
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        let statuses = self
            .records
            .borrow()
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>();
        let ops = self.ops.borrow();
        for s in statuses.into_iter().chain(ops.iter().map(|o| o.status)) {
            match s {
                Status::Ok => c.0 += 1,
                Status::Unknown => c.1 += 1,
                Status::Failed => c.2 += 1,
            }
        }
        c
    }

    /// How long after `heal` the first write of any workload called after it succeeded.
    pub fn first_write_after(&self, heal: u64) -> Option<u64> {
        let register = self
            .records
            .borrow()
            .iter()
            .filter(|r| r.call >= heal && r.status == Status::Ok)
            .filter(|r| !matches!(r.input, KvInput::Get { .. }))
            .map(|r| r.end - heal)
            .min();
        let other = self
            .ops
            .borrow()
            .iter()
            .filter(|o| o.call >= heal && o.status == Status::Ok && o.what.is_write())
            .map(|o| o.end - heal)
            .min();
        register.into_iter().chain(other).min()
    }

    /// Waits until the clients are told to stop.
    pub async fn stopped(&self) {
        while !self.stop.get() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

/// A lazily connected channel to `url` for long streams (Watch): no deadline per call, and
/// HTTP/2 pings that break a connection to a member that is gone, paused or cut off.
pub fn stream_channel(url: &str) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .http2_keep_alive_interval(Duration::from_millis(500))
        .keep_alive_timeout(Duration::from_secs(1))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// A gRPC error as the records keep it.
pub fn status_text(e: &tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

/// The outcome of a failed write: failed if it was never sent, unknown otherwise.
pub fn write_failure(error: &str) -> Status {
    if never_sent(error) {
        Status::Failed
    } else {
        Status::Unknown
    }
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
    let code = |e: tonic::Status| status_text(&e);
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
