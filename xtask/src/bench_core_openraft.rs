//! The anchor of `cargo xtask bench core --driver` (feature `anchor-openraft`): openraft 0.9
//! from crates.io on the workload of its own `benchmarks/minimal`, written here: three
//! `Raft`s in one process on the same kind of tokio runtime as the driver, an in-memory log
//! (a `BTreeMap` behind a mutex, flushed as soon as it is appended), a state machine that
//! keeps only the last applied log id and membership, and a "network" that calls the target
//! `Raft`'s RPC methods directly. The configuration is the one of openraft's benchmark
//! (election timeout 200-2000 ms, `max_payload_entries` 1024, `purge_batch_size` 1024).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StoredMembership, Vote,
};

use crate::bench_core_driver::{closed_loop, runtime, Measured, RowPlan};

openraft::declare_raft_types!(
    /// The types of the benchmark: empty requests and responses.
    pub Bench: D = (), R = ()
);

type Raft = openraft::Raft<Bench>;
type NodeIdOf = u64;

/// How long the cluster may take to elect a leader, and the clients to finish after a row.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// The log
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct LogInner {
    vote: Option<Vote<NodeIdOf>>,
    committed: Option<LogId<NodeIdOf>>,
    last_purged: Option<LogId<NodeIdOf>>,
    entries: BTreeMap<u64, Entry<Bench>>,
}

/// An in-memory log; clones share it (the reader openraft asks for is a clone).
#[derive(Clone, Default)]
struct MemLog {
    inner: Arc<Mutex<LogInner>>,
}

impl MemLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().expect("log lock")
    }
}

impl RaftLogReader<Bench> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Bench>>, StorageError<NodeIdOf>> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        Ok(self
            .lock()
            .entries
            .range(bounds)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<Bench> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> Result<LogState<Bench>, StorageError<NodeIdOf>> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> MemLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeIdOf>) -> Result<(), StorageError<NodeIdOf>> {
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeIdOf>>, StorageError<NodeIdOf>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeIdOf>>,
    ) -> Result<(), StorageError<NodeIdOf>> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeIdOf>>, StorageError<NodeIdOf>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Bench>,
    ) -> Result<(), StorageError<NodeIdOf>>
    where
        I: IntoIterator<Item = Entry<Bench>> + Send,
        I::IntoIter: Send,
    {
        {
            let mut inner = self.lock();
            for e in entries {
                inner.entries.insert(e.log_id.index, e);
            }
        }
        // In memory: durable as soon as it is in the map.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeIdOf>) -> Result<(), StorageError<NodeIdOf>> {
        let mut inner = self.lock();
        let _dropped = inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeIdOf>) -> Result<(), StorageError<NodeIdOf>> {
        let mut inner = self.lock();
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        inner.last_purged = Some(log_id);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The state machine
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct MachineInner {
    applied: Option<LogId<NodeIdOf>>,
    membership: StoredMembership<NodeIdOf, BasicNode>,
    snapshots_taken: u64,
    current: Option<SnapshotMeta<NodeIdOf, BasicNode>>,
}

/// A state machine with no data: it records how far it applied and the membership, which is
/// all its (empty) snapshots carry. Clones share it (the snapshot builder is a clone).
#[derive(Clone, Default)]
struct NoopMachine {
    inner: Arc<Mutex<MachineInner>>,
}

impl NoopMachine {
    fn lock(&self) -> std::sync::MutexGuard<'_, MachineInner> {
        self.inner.lock().expect("state machine lock")
    }
}

impl RaftSnapshotBuilder<Bench> for NoopMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Bench>, StorageError<NodeIdOf>> {
        let mut inner = self.lock();
        inner.snapshots_taken += 1;
        let meta = SnapshotMeta {
            last_log_id: inner.applied,
            last_membership: inner.membership.clone(),
            snapshot_id: format!("snapshot-{}", inner.snapshots_taken),
        };
        inner.current = Some(meta.clone());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl RaftStateMachine<Bench> for NoopMachine {
    type SnapshotBuilder = NoopMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeIdOf>>,
            StoredMembership<NodeIdOf, BasicNode>,
        ),
        StorageError<NodeIdOf>,
    > {
        let inner = self.lock();
        Ok((inner.applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<NodeIdOf>>
    where
        I: IntoIterator<Item = Entry<Bench>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        let mut responses = Vec::new();
        for e in entries {
            inner.applied = Some(e.log_id);
            if let EntryPayload::Membership(m) = e.payload {
                inner.membership = StoredMembership::new(Some(e.log_id), m);
            }
            responses.push(());
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> NoopMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeIdOf>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeIdOf, BasicNode>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeIdOf>> {
        let mut inner = self.lock();
        inner.applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.current = Some(meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<Bench>>, StorageError<NodeIdOf>> {
        Ok(self.lock().current.clone().map(|meta| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        }))
    }
}

// ---------------------------------------------------------------------------------------
// The network: RPCs are calls on the target's `Raft`
// ---------------------------------------------------------------------------------------

/// The nodes by id, filled in as they are created.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<RwLock<BTreeMap<NodeIdOf, Raft>>>,
}

impl Router {
    fn get(&self, target: NodeIdOf) -> Option<Raft> {
        self.nodes
            .read()
            .expect("router lock")
            .get(&target)
            .cloned()
    }
}

/// The error of an RPC to a node that is not (or no longer) in the router.
fn not_running<E: std::error::Error>(target: NodeIdOf) -> RPCError<NodeIdOf, BasicNode, E> {
    let why = std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        format!("node {target} is not running"),
    );
    RPCError::Network(NetworkError::new(&why))
}

impl RaftNetworkFactory<Bench> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeIdOf, _node: &BasicNode) -> Connection {
        Connection {
            router: self.clone(),
            target,
        }
    }
}

/// A "connection" to one target.
struct Connection {
    router: Router,
    target: NodeIdOf,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeIdOf, BasicNode, RaftError<NodeIdOf, E>>>;

impl RaftNetwork<Bench> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Bench>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeIdOf>> {
        let raft = self
            .router
            .get(self.target)
            .ok_or_else(|| not_running(self.target))?;
        let target = self.target;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Bench>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeIdOf>, InstallSnapshotError> {
        let raft = self
            .router
            .get(self.target)
            .ok_or_else(|| not_running(self.target))?;
        let target = self.target;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeIdOf>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeIdOf>> {
        let raft = self
            .router
            .get(self.target)
            .ok_or_else(|| not_running(self.target))?;
        let target = self.target;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(target, e)))
    }
}

// ---------------------------------------------------------------------------------------
// The row
// ---------------------------------------------------------------------------------------

/// Three `Raft`s, initialized by node 1, with a leader elected and its entry applied.
async fn elected() -> Result<(Router, Raft), String> {
    let config = openraft::Config {
        election_timeout_min: 200,
        election_timeout_max: 2000,
        purge_batch_size: 1024,
        max_payload_entries: 1024,
        ..Default::default()
    }
    .validate()
    .map_err(|e| format!("openraft config: {e}"))?;
    let config = Arc::new(config);
    let router = Router::default();
    for id in 1..=3 {
        let raft = Raft::new(
            id,
            Arc::clone(&config),
            router.clone(),
            MemLog::default(),
            NoopMachine::default(),
        )
        .await
        .map_err(|e| format!("openraft node {id}: {e}"))?;
        router.nodes.write().expect("router lock").insert(id, raft);
    }
    let first = router.get(1).ok_or("openraft node 1 is not running")?;
    let members: BTreeMap<NodeIdOf, BasicNode> =
        (1..=3).map(|id| (id, BasicNode::default())).collect();
    first
        .initialize(members)
        .await
        .map_err(|e| format!("openraft initialize: {e}"))?;
    let metrics = first
        .wait(Some(SETTLE_TIMEOUT))
        .metrics(
            |m| {
                m.current_leader.is_some()
                    && m.last_log_index.is_some()
                    && m.last_applied.map(|l| l.index) == m.last_log_index
            },
            "a leader with its entry applied",
        )
        .await
        .map_err(|e| format!("openraft election: {e}"))?;
    let leader_id = metrics.current_leader.expect("waited for it");
    let leader = router
        .get(leader_id)
        .ok_or("openraft's leader is not running")?;
    Ok((router, leader))
}

/// The leader's id and term now.
fn leader_term(leader: &Raft) -> (Option<NodeIdOf>, u64) {
    let m = leader.metrics().borrow().clone();
    (m.current_leader, m.current_term)
}

/// Runs one row against openraft on a fresh runtime of `workers` threads.
pub(crate) fn openraft_row(plan: RowPlan, workers: usize) -> Result<Measured, String> {
    let rt = runtime(workers)?;
    let result = rt.block_on(async {
        let (router, leader) = elected().await?;
        let before = leader_term(&leader);
        let client = leader.clone();
        let measured = closed_loop(plan, move || {
            let client = client.clone();
            async move {
                client
                    .client_write(())
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("openraft client_write: {e}"))
            }
        })
        .await;
        let after = leader_term(&leader);
        let nodes: Vec<Raft> = router
            .nodes
            .read()
            .expect("router lock")
            .values()
            .cloned()
            .collect();
        for raft in nodes {
            let _ = raft.shutdown().await;
        }
        let measured = measured?;
        if before != after {
            return Err(format!(
                "openraft leadership changed: {before:?} -> {after:?}"
            ));
        }
        Ok(measured)
    });
    rt.shutdown_timeout(SETTLE_TIMEOUT);
    result
}
