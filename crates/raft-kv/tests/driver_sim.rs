//! raft-kv's state machine ([`KvStateMachine`]: the store's apply, snapshot and restore, as a
//! member runs them) under raftline-core's driver simulator: real `driver::Node`s on a seeded
//! single-threaded executor with a virtual clock, crashes, partitions, a lossy network,
//! membership changes and snapshot transfers; the clients' histories are checked for
//! linearizability against a sequential model of etcd's key space.
//!
//! The clients send the commands the server proposes for etcd's requests (`Command` encoded
//! with postcard, as `Shared::execute` does):
//!
//! - `Put` (with or without `prev_kv`, with or without a lease) and `DeleteRange` of one key;
//! - a compare-and-swap: a `Txn` comparing the key's value (or its version with 0, for an
//!   absent key), putting the new value (with `prev_kv`) if it holds, else reading the key;
//! - a get through the log: a `Txn` whose only operation reads the key (the server serves
//!   such a read-only transaction locally, but the state machine applies it like any other);
//! - a linearizable get: a read barrier on whichever node the client reached, then
//!   `Store::read` of a `RangeReq` on that node's store, as `KV.Range` does;
//! - `LeaseGrant` with a client-chosen id, `LeaseRevoke` (which deletes the keys attached);
//! - `Compact` at about the current revision (reads at the current revision are unaffected).
//!
//! The model is per key (P-compositionality): each key has its own lease ids, so a revoke
//! only ever deletes its own key; compactions have a partition of their own where anything
//! goes. A key's state is its value, version and lease, and the leases of the key that are
//! granted; every answer is checked exactly (previous key-values, delete counts, compare
//! results, `LeaseNotFound`/`LeaseExists` failures). Leases never expire here: expiry is the
//! leader's clock's business, and no lessor runs.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use raftline_core::driver::{SnapshotSink, SnapshotSource, StateMachine};
use raftline_core::testing::driver_sim::{
    Clock, DriverSim, DriverSimConfig, DriverSimFailure, DriverSimReport, MemBackend, Route,
    Workload, UNITS_PER_TICK,
};
use raftline_core::testing::linearizability::Model;
use raftline_core::Rng;
use raftline_kv::store::txn::{
    Compare, CompareResult, CompareTarget, DeleteReq, Op, OpResp, PutReq, RangeReq, RangeResp,
    TxnReq,
};
use raftline_kv::store::{Command, KeyValue, KvError, Outcome, Store};
use raftline_kv::KvStateMachine;
use raftline_proto::{LogIndex, NodeId};

/// Seeds of the main test (they cycle through the simulator's four fault profiles); the
/// environment variable `DRIVER_SIM_SEEDS` may ask for more.
const SEEDS: u64 = 200;

/// The snapshot chunk size, in bytes, instead of the simulator's 24.
///
/// The simulator's profiles are sized for its own test state machine, whose snapshots are
/// about 60 bytes: 3 chunks. raft-kv's snapshots hold the key space's history, 300 to 900
/// bytes here: 15 to 40 chunks of 24 bytes. Such a transfer often does not finish within the
/// simulator's time budget: the follower drops every chunk that arrives out of order (the
/// simulated network reorders) and the leader resends only after about an election timeout
/// without progress; each lost chunk costs as much; and every newer snapshot the leader takes
/// (every 8 or 16 entries) restarts the transfer from the start. With 24-byte chunks 20 of
/// the 200 seeds fail their liveness check (7, 10, 11, 16, 31, 39, 42, 52, 66, 67, 90, 94,
/// 115, 127, 134, 146, 147, 154, 196, 199; replay one with `CHUNK=24 DRIVER_SIM_SEED=7` and
/// `replay_one_seed`), none a safety or linearizability check. With 256-byte chunks a
/// transfer takes 2 to 4 chunks, as in the simulator's own runs.
const SNAPSHOT_CHUNK_BYTES: usize = 256;

/// Lease ids per key.
const LEASES_PER_KEY: u64 = 3;

/// The partition of compactions (keys are numbered from 0).
const COMPACTIONS: u64 = u64::MAX;

fn key_bytes(key: u64) -> Vec<u8> {
    format!("k{key}").into_bytes()
}

fn value_bytes(value: u64) -> Vec<u8> {
    format!("v{value}").into_bytes()
}

/// Key `key`'s `j`th lease id: every key has its own, so that a revoke stays in its key's
/// partition.
fn lease_id(key: u64, j: u64) -> i64 {
    ((key + 1) * 100 + j) as i64
}

// ---------------------------------------------------------------------------------------
// The model.

/// What a read shows of a key (revisions are global, so left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Val {
    value: u64,
    version: i64,
    lease: i64,
}

/// One key's state: its current key-value and the leases of the key that are granted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct KeyState {
    val: Option<Val>,
    leases: BTreeSet<i64>,
}

/// A client operation.
#[derive(Clone, Debug)]
enum Input {
    /// `Put`, `lease` 0 for none; the answer holds the previous key-value if `prev_kv`.
    Put {
        key: u64,
        value: u64,
        lease: i64,
        prev_kv: bool,
    },
    /// `DeleteRange` of one key.
    Delete { key: u64, prev_kv: bool },
    /// A read of one key (through the log or a read barrier, as the route says).
    Get { key: u64 },
    /// A transaction: if the value is `expected` (`None`: version 0, absent) put `new`,
    /// else read the key.
    Cas {
        key: u64,
        expected: Option<u64>,
        new: u64,
    },
    /// `LeaseGrant`.
    Grant { key: u64, lease: i64, ttl: i64 },
    /// `LeaseRevoke`.
    Revoke { key: u64, lease: i64 },
    /// `Compact`.
    Compact { revision: i64 },
}

/// What the client saw.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Output {
    /// A put: the previous key-value if asked for.
    Put {
        prev: Option<Val>,
    },
    /// A delete: how many keys it removed, and the removed key-value if asked for.
    Deleted {
        deleted: i64,
        prev: Option<Val>,
    },
    /// A read.
    Value(Option<Val>),
    /// A compare-and-swap: whether it swapped, and the key-value it saw (the put's previous
    /// one, or the failure branch's read).
    Cas {
        succeeded: bool,
        seen: Option<Val>,
    },
    Granted,
    Revoked,
    Compacted,
    Failed(KvError),
    /// An answer of the wrong shape: no model state allows it.
    Unexpected(String),
}

/// etcd's key space, per key.
struct EtcdModel;

impl EtcdModel {
    /// The next state and the one answer the specification allows.
    fn apply(s: &KeyState, input: &Input) -> (KeyState, Output) {
        let mut next = s.clone();
        let output = match *input {
            Input::Put {
                value,
                lease,
                prev_kv,
                ..
            } => {
                if lease != 0 && !s.leases.contains(&lease) {
                    return (next, Output::Failed(KvError::LeaseNotFound));
                }
                next.val = Some(Val {
                    value,
                    version: s.val.map_or(1, |v| v.version + 1),
                    lease,
                });
                Output::Put {
                    prev: s.val.filter(|_| prev_kv),
                }
            }
            Input::Delete { prev_kv, .. } => {
                next.val = None;
                Output::Deleted {
                    deleted: i64::from(s.val.is_some()),
                    prev: s.val.filter(|_| prev_kv),
                }
            }
            Input::Get { .. } => Output::Value(s.val),
            Input::Cas { expected, new, .. } => {
                let holds = match expected {
                    Some(e) => s.val.is_some_and(|v| v.value == e),
                    None => s.val.is_none(),
                };
                if holds {
                    next.val = Some(Val {
                        value: new,
                        version: s.val.map_or(1, |v| v.version + 1),
                        lease: 0,
                    });
                }
                Output::Cas {
                    succeeded: holds,
                    seen: s.val,
                }
            }
            Input::Grant { lease, .. } => {
                if !next.leases.insert(lease) {
                    return (next, Output::Failed(KvError::LeaseExists));
                }
                Output::Granted
            }
            Input::Revoke { lease, .. } => {
                if !next.leases.remove(&lease) {
                    return (next, Output::Failed(KvError::LeaseNotFound));
                }
                if s.val.is_some_and(|v| v.lease == lease) {
                    next.val = None;
                }
                Output::Revoked
            }
            Input::Compact { .. } => unreachable!("compactions are not applied to a key"),
        };
        (next, output)
    }
}

impl Model for EtcdModel {
    type State = KeyState;
    type Input = Input;
    type Output = Output;

    fn init(&self) -> KeyState {
        KeyState::default()
    }

    fn step(&self, s: &KeyState, input: &Input, output: Option<&Output>) -> Option<KeyState> {
        if let Input::Compact { .. } = input {
            // Whether it succeeds depends on the global revision: any answer of its kind.
            return match output {
                None
                | Some(Output::Compacted)
                | Some(Output::Failed(KvError::Compacted | KvError::FutureRevision)) => {
                    Some(s.clone())
                }
                Some(_) => None,
            };
        }
        let (next, expected) = EtcdModel::apply(s, input);
        match output {
            None => Some(next),
            Some(o) if *o == expected => Some(next),
            Some(_) => None,
        }
    }

    fn partition(&self, input: &Input) -> u64 {
        match *input {
            Input::Put { key, .. }
            | Input::Delete { key, .. }
            | Input::Get { key }
            | Input::Cas { key, .. }
            | Input::Grant { key, .. }
            | Input::Revoke { key, .. } => key,
            Input::Compact { .. } => COMPACTIONS,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Commands and answers, as the server makes and reads them.

fn range(key: u64) -> RangeReq {
    RangeReq {
        key: key_bytes(key),
        ..RangeReq::default()
    }
}

/// The command the server would propose for `input`.
fn command(input: &Input) -> Command {
    match *input {
        Input::Put {
            key,
            value,
            lease,
            prev_kv,
        } => Command::Put(PutReq {
            key: key_bytes(key),
            value: value_bytes(value),
            lease,
            ignore_value: false,
            ignore_lease: false,
            prev_kv,
        }),
        Input::Delete { key, prev_kv } => Command::DeleteRange(DeleteReq {
            key: key_bytes(key),
            range_end: Vec::new(),
            prev_kv,
        }),
        Input::Get { key } => Command::Txn(TxnReq {
            compare: Vec::new(),
            success: vec![Op::Range(range(key))],
            failure: Vec::new(),
        }),
        Input::Cas { key, expected, new } => {
            let target = match expected {
                Some(e) => CompareTarget::Value(value_bytes(e)),
                None => CompareTarget::Version(0),
            };
            Command::Txn(TxnReq {
                compare: vec![Compare {
                    result: CompareResult::Equal,
                    target,
                    key: key_bytes(key),
                    range_end: Vec::new(),
                }],
                success: vec![Op::Put(PutReq {
                    key: key_bytes(key),
                    value: value_bytes(new),
                    prev_kv: true,
                    ..PutReq::default()
                })],
                failure: vec![Op::Range(range(key))],
            })
        }
        Input::Grant { lease, ttl, .. } => Command::LeaseGrant { id: lease, ttl },
        Input::Revoke { lease, .. } => Command::LeaseRevoke { id: lease },
        Input::Compact { revision } => Command::Compact { revision },
    }
}

/// A key-value of `key` as the model sees it.
fn val(key: u64, kv: &KeyValue) -> Result<Val, String> {
    let value = std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|v| v.strip_prefix('v')?.parse().ok());
    match value {
        Some(value) if kv.key == key_bytes(key) => Ok(Val {
            value,
            version: kv.version,
            lease: kv.lease,
        }),
        _ => Err(format!("a key-value not of key {key}: {kv:?}")),
    }
}

/// At most one key-value of `key`.
fn one(key: u64, kvs: &[KeyValue]) -> Result<Option<Val>, String> {
    match kvs {
        [] => Ok(None),
        [kv] => val(key, kv).map(Some),
        _ => Err(format!("more than one key-value for key {key}: {kvs:?}")),
    }
}

fn read_output(key: u64, r: &RangeResp) -> Output {
    match one(key, &r.kvs) {
        Ok(v) if r.count == r.kvs.len() as i64 && !r.more => Output::Value(v),
        Ok(_) => Output::Unexpected(format!("a range with a wrong count: {r:?}")),
        Err(e) => Output::Unexpected(e),
    }
}

/// What the client makes of the state machine's answer to `input`.
fn output(input: &Input, outcome: Outcome) -> Output {
    let key = EtcdModel.partition(input);
    let seen = match (input, &outcome) {
        (_, Outcome::Failed { error, .. }) => Ok(Output::Failed(error.clone())),
        (Input::Put { .. }, Outcome::Put { prev, .. }) => prev
            .as_ref()
            .map(|kv| val(key, kv))
            .transpose()
            .map(|prev| Output::Put { prev }),
        (Input::Delete { .. }, Outcome::Deleted { deleted, prev, .. }) => {
            one(key, prev).map(|prev| Output::Deleted {
                deleted: *deleted,
                prev,
            })
        }
        (Input::Get { .. }, Outcome::Txn { response, .. }) => {
            match (response.succeeded, response.responses.as_slice()) {
                (true, [OpResp::Range(r)]) => Ok(read_output(key, r)),
                _ => Err(String::new()),
            }
        }
        (Input::Cas { .. }, Outcome::Txn { response, .. }) => {
            match (response.succeeded, response.responses.as_slice()) {
                (true, [OpResp::Put(p)]) => {
                    p.prev
                        .as_ref()
                        .map(|kv| val(key, kv))
                        .transpose()
                        .map(|seen| Output::Cas {
                            succeeded: true,
                            seen,
                        })
                }
                (false, [OpResp::Range(r)]) => match read_output(key, r) {
                    Output::Value(seen) => Ok(Output::Cas {
                        succeeded: false,
                        seen,
                    }),
                    other => Ok(other),
                },
                _ => Err(String::new()),
            }
        }
        (Input::Grant { .. }, Outcome::LeaseGranted { .. }) => Ok(Output::Granted),
        (Input::Revoke { .. }, Outcome::LeaseRevoked { .. }) => Ok(Output::Revoked),
        (Input::Compact { .. }, Outcome::Compacted { .. }) => Ok(Output::Compacted),
        _ => Err(String::new()),
    };
    match seen {
        Ok(o) => o,
        Err(e) if e.is_empty() => Output::Unexpected(format!("{outcome:?}")),
        Err(e) => Output::Unexpected(e),
    }
}

// ---------------------------------------------------------------------------------------
// The workload.

/// raft-kv's state machine (made by `make` on a fresh store) with etcd's key operations.
struct RaftKvWorkload<M> {
    keys: u64,
    /// Each node's store, as the server's services share it with the state machine.
    stores: BTreeMap<NodeId, Arc<RwLock<Store>>>,
    next_value: u64,
    make: fn(Arc<RwLock<Store>>) -> M,
    /// Snapshots take this long (the fault profile's `snapshot_ticks`), if at all.
    snapshot_delay: Option<(Clock, u64)>,
    /// How many answers of each kind the clients got (shared with the test).
    answers: Answers,
}

/// Answers by kind.
type Answers = Rc<RefCell<BTreeMap<&'static str, u64>>>;

impl<M> RaftKvWorkload<M> {
    fn new(keys: u64, make: fn(Arc<RwLock<Store>>) -> M) -> Self {
        RaftKvWorkload {
            keys: keys.max(1),
            stores: BTreeMap::new(),
            next_value: 0,
            make,
            snapshot_delay: None,
            answers: Answers::default(),
        }
    }

    /// Counts an answer (`barrier`: a read served after a read barrier).
    fn count(&self, barrier: bool, output: &Output) {
        let kind = match output {
            _ if barrier => "get after a read barrier",
            Output::Put { .. } => "put",
            Output::Deleted { deleted: 0, .. } => "delete of nothing",
            Output::Deleted { .. } => "delete",
            Output::Value(None) => "get of nothing",
            Output::Value(Some(_)) => "get",
            Output::Cas {
                succeeded: true, ..
            } => "cas swapped",
            Output::Cas { .. } => "cas not swapped",
            Output::Granted => "lease granted",
            Output::Revoked => "lease revoked",
            Output::Compacted => "compacted",
            Output::Failed(KvError::LeaseNotFound) => "lease not found",
            Output::Failed(KvError::LeaseExists) => "lease exists",
            Output::Failed(KvError::Compacted | KvError::FutureRevision) => "compaction refused",
            Output::Failed(_) => "other failure",
            Output::Unexpected(_) => "unexpected",
        };
        *self.answers.borrow_mut().entry(kind).or_default() += 1;
    }

    /// A random node's store (the stores of nodes that never started are not there).
    fn some_store(&self, rng: &mut Rng) -> Option<&Arc<RwLock<Store>>> {
        if self.stores.is_empty() {
            return None;
        }
        self.stores
            .values()
            .nth(rng.below(self.stores.len() as u64) as usize)
    }

    /// The value of `key` in some node's store now (perhaps stale): a likely expectation.
    fn peek(&self, key: u64, rng: &mut Rng) -> Option<u64> {
        let store = self.some_store(rng)?.read();
        let k = key_bytes(key);
        let kv = store.range(&k, &[]).next()?;
        val(key, kv).ok().map(|v| v.value)
    }
}

impl<M: StateMachine<Response = Outcome>> Workload for RaftKvWorkload<M> {
    type Machine = SlowSnapshots<M>;
    type Model = EtcdModel;

    fn model(&self) -> EtcdModel {
        EtcdModel
    }

    fn machine(&mut self, node: NodeId) -> SlowSnapshots<M> {
        let store = Arc::new(RwLock::new(Store::default()));
        self.stores.insert(node, Arc::clone(&store));
        SlowSnapshots {
            inner: (self.make)(store),
            delay: self.snapshot_delay.clone(),
        }
    }

    fn input(&mut self, rng: &mut Rng) -> (Input, Route) {
        let key = rng.below(self.keys);
        self.next_value += 1;
        let value = self.next_value;
        let lease = lease_id(key, rng.below(LEASES_PER_KEY));
        let kind = rng.below(100);
        let input = match kind {
            0..=24 => Input::Put {
                key,
                value,
                lease: if rng.chance(0.3) { lease } else { 0 },
                prev_kv: rng.chance(0.5),
            },
            25..=34 => Input::Delete {
                key,
                prev_kv: rng.chance(0.5),
            },
            35..=59 => Input::Get { key },
            60..=79 => {
                let expected = match rng.below(10) {
                    0..=6 => self.peek(key, rng),
                    7 => None,
                    _ => Some(value.saturating_sub(1 + rng.below(5))),
                };
                Input::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
            80..=87 => Input::Grant {
                key,
                lease,
                ttl: 5 + rng.below(60) as i64,
            },
            88..=94 => Input::Revoke { key, lease },
            _ => {
                let current = self.some_store(rng).map_or(1, |s| s.read().revision());
                Input::Compact {
                    revision: (current - rng.below(3) as i64).max(1),
                }
            }
        };
        let route = match input {
            Input::Get { .. } if rng.chance(0.5) => Route::ReadBarrier,
            _ => Route::Log,
        };
        (input, route)
    }

    fn command(&self, _op: u64, input: &Input) -> Bytes {
        Bytes::from(postcard::to_allocvec(&command(input)).expect("commands encode"))
    }

    fn output(&self, input: &Input, response: Outcome) -> Output {
        let output = output(input, response);
        self.count(false, &output);
        output
    }

    /// `KV.Range` after its read barrier: `Store::read` on the node's store.
    fn read(&self, node: NodeId, input: &Input) -> Output {
        let Input::Get { key } = *input else {
            unreachable!("only gets go through read barriers")
        };
        let store = self
            .stores
            .get(&node)
            .expect("a node that runs has a store");
        let output = match store.read().read(&range(key)) {
            Ok(r) => read_output(key, &r),
            Err(e) => Output::Failed(e),
        };
        self.count(true, &output);
        output
    }

    fn snapshot_digest(&self, _data: &[u8]) -> Option<u64> {
        None
    }
}

/// A state machine whose snapshots take some virtual time, as a large store's would (the
/// fault profiles' `snapshot_ticks`, which the simulator gives its own state machine): half
/// before the store is written, half after, so a crash may come in between.
struct SlowSnapshots<M> {
    inner: M,
    delay: Option<(Clock, u64)>,
}

#[async_trait]
impl<M: StateMachine> StateMachine for SlowSnapshots<M> {
    type Response = M::Response;

    async fn apply(&mut self, index: LogIndex, command: &Bytes) -> M::Response {
        self.inner.apply(index, command).await
    }

    async fn snapshot(&mut self, sink: &mut SnapshotSink<'_>) -> std::io::Result<()> {
        let Some((clock, units)) = self.delay.clone() else {
            return self.inner.snapshot(sink).await;
        };
        clock.sleep(units / 2).await;
        self.inner.snapshot(sink).await?;
        clock.sleep(units - units / 2).await;
        Ok(())
    }

    async fn restore(&mut self, source: &mut SnapshotSource<'_>) -> std::io::Result<()> {
        self.inner.restore(source).await
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

/// The simulator's configuration for `seed`, with chunks sized for raft-kv's snapshots.
fn config(seed: u64) -> DriverSimConfig {
    let mut cfg = DriverSimConfig::new(seed);
    cfg.node.snapshot_chunk_bytes_max = SNAPSHOT_CHUNK_BYTES;
    cfg
}

/// Runs `cfg` with the state machines `make` makes (on each node's fresh store): what
/// `run_workload` does, and also snapshots as slow as the fault profile says.
fn run<M: StateMachine<Response = Outcome>>(
    cfg: DriverSimConfig,
    make: fn(Arc<RwLock<Store>>) -> M,
    answers: &Answers,
) -> Result<DriverSimReport, DriverSimFailure> {
    let slow = cfg.snapshot_ticks * UNITS_PER_TICK;
    let mut workload = RaftKvWorkload::new(cfg.keys, make);
    workload.answers = Rc::clone(answers);
    let mut sim = DriverSim::new(cfg, workload, MemBackend::default());
    let clock = sim.clock();
    sim.with_workload(|w| {
        w.snapshot_delay = (slow > 0).then_some((clock, slow));
    });
    sim.run()
}

#[test]
fn raft_kv_state_machine_under_the_driver_simulator() {
    let seeds = std::env::var("DRIVER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS);
    let started = Instant::now();
    let mut ops = 0;
    let mut unknown = 0;
    let mut crashes = 0;
    let mut partitions = 0;
    let mut taken = 0;
    let mut installed = 0;
    let mut changes = 0;
    let mut undecided = 0;
    let mut committed = 0;
    let answers = Answers::default();
    for seed in 0..seeds {
        let report =
            run(config(seed), KvStateMachine::detached, &answers).unwrap_or_else(|f| panic!("{f}"));
        ops += report.ops_checked;
        unknown += report.ops_unknown;
        crashes += report.crashes;
        partitions += report.partitions;
        taken += report.snapshots_taken;
        installed += report.snapshots_installed;
        changes += report.admin.changes_ok;
        undecided += report.histories_undecided;
        committed += report.committed;
    }
    println!(
        "{seeds} seeds in {:.1?}: {ops} ops checked ({unknown} of unknown outcome), \
         {committed} entries committed, {crashes} crashes, {partitions} partitions, \
         {changes} configuration changes, {taken} snapshots taken, {installed} installed, \
         {undecided} histories undecided; answers by kind: {:?}",
        started.elapsed(),
        answers.borrow()
    );
    assert!(ops > seeds * 20, "{ops} client operations checked");
    assert!(
        installed > 0,
        "no snapshot was ever installed from a leader"
    );
    assert!(crashes > 0, "no crash");
    // Every kind of answer the model tells apart came up.
    let answers = answers.borrow();
    for kind in [
        "put",
        "delete",
        "delete of nothing",
        "get",
        "get of nothing",
        "get after a read barrier",
        "cas swapped",
        "cas not swapped",
        "lease granted",
        "lease revoked",
        "lease not found",
        "lease exists",
        "compacted",
    ] {
        assert!(
            answers.get(kind).is_some_and(|&n| n > 0),
            "no {kind}: {answers:?}"
        );
    }
    assert!(
        undecided < seeds / 10,
        "{undecided} histories too ambiguous to decide"
    );
}

/// raft-kv's state machine, except that every fifth put it applies does nothing (and says it
/// did).
struct DropsPuts {
    inner: KvStateMachine,
    store: Arc<RwLock<Store>>,
    puts: u64,
}

impl DropsPuts {
    fn new(store: Arc<RwLock<Store>>) -> DropsPuts {
        DropsPuts {
            inner: KvStateMachine::detached(Arc::clone(&store)),
            store,
            puts: 0,
        }
    }
}

#[async_trait]
impl StateMachine for DropsPuts {
    type Response = Outcome;

    async fn apply(&mut self, index: LogIndex, command: &Bytes) -> Outcome {
        if let Ok(Command::Put(p)) = postcard::from_bytes::<Command>(command) {
            self.puts += 1;
            if self.puts.is_multiple_of(5) {
                let store = self.store.read();
                let prev = store.range(&p.key, &[]).next().filter(|_| p.prev_kv);
                return Outcome::Put {
                    revision: store.revision(),
                    prev: prev.cloned(),
                };
            }
        }
        self.inner.apply(index, command).await
    }

    async fn snapshot(&mut self, sink: &mut SnapshotSink<'_>) -> std::io::Result<()> {
        self.inner.snapshot(sink).await
    }

    async fn restore(&mut self, source: &mut SnapshotSource<'_>) -> std::io::Result<()> {
        self.inner.restore(source).await
    }
}

/// raft-kv's state machine, except that the store reads are served from lags one command
/// behind the one it applies commands to.
struct LagsReads {
    inner: KvStateMachine,
    store: Arc<RwLock<Store>>,
    /// What reads see.
    seen: Arc<RwLock<Store>>,
    /// The command applied to `store` but not yet to `seen`.
    pending: Option<Command>,
}

impl LagsReads {
    fn new(seen: Arc<RwLock<Store>>) -> LagsReads {
        let store = Arc::new(RwLock::new(Store::default()));
        LagsReads {
            inner: KvStateMachine::detached(Arc::clone(&store)),
            store,
            seen,
            pending: None,
        }
    }
}

#[async_trait]
impl StateMachine for LagsReads {
    type Response = Outcome;

    async fn apply(&mut self, index: LogIndex, command: &Bytes) -> Outcome {
        let outcome = self.inner.apply(index, command).await;
        let next = postcard::from_bytes::<Command>(command).ok();
        if let Some(c) = std::mem::replace(&mut self.pending, next) {
            self.seen.write().apply(c);
        }
        outcome
    }

    async fn snapshot(&mut self, sink: &mut SnapshotSink<'_>) -> std::io::Result<()> {
        self.inner.snapshot(sink).await
    }

    async fn restore(&mut self, source: &mut SnapshotSource<'_>) -> std::io::Result<()> {
        self.inner.restore(source).await?;
        *self.seen.write() = self.store.read().clone();
        self.pending = None;
        Ok(())
    }
}

/// The first failure among the first 50 seeds with the state machines `make` makes.
fn first_failure<M: StateMachine<Response = Outcome>>(
    make: fn(Arc<RwLock<Store>>) -> M,
) -> Option<DriverSimFailure> {
    (0..50).find_map(|seed| run(config(seed), make, &Answers::default()).err())
}

#[test]
fn the_model_catches_a_state_machine_that_drops_puts() {
    let failure = first_failure(DropsPuts::new).expect("no seed noticed the dropped puts");
    println!("{failure}");
    assert!(
        failure.reason.starts_with("linearizability"),
        "not a linearizability violation: {failure}"
    );
}

#[test]
fn the_model_catches_stale_reads() {
    let failure = first_failure(LagsReads::new).expect("no seed noticed the stale reads");
    println!("{failure}");
    assert!(
        failure.reason.starts_with("linearizability"),
        "not a linearizability violation: {failure}"
    );
}

/// Replays one seed, printing every event (unless `DRIVER_SIM_QUIET` is set), with chunks of
/// `CHUNK` bytes if given: `DRIVER_SIM_SEED=7 cargo test -p raftline-kv --test driver_sim
/// replay_one_seed -- --ignored --nocapture`.
#[test]
#[ignore = "a debugging aid: replays the seed in DRIVER_SIM_SEED"]
fn replay_one_seed() {
    let seed = std::env::var("DRIVER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("DRIVER_SIM_SEED");
    let mut cfg = config(seed);
    cfg.verbose = std::env::var_os("DRIVER_SIM_QUIET").is_none();
    if let Some(c) = std::env::var("CHUNK").ok().and_then(|s| s.parse().ok()) {
        cfg.node.snapshot_chunk_bytes_max = c;
    }
    match run(cfg, KvStateMachine::detached, &Answers::default()) {
        Ok(report) => println!("{report:?}"),
        Err(f) => panic!("{f}"),
    }
}
