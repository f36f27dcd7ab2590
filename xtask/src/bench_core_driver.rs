//! `cargo xtask bench core --driver`: the async driver ([`Node`]) on the workload of openraft's
//! `benchmarks/minimal`, beside openraft itself with feature `anchor-openraft`.
//!
//! Three [`Node`]s run on one tokio multi-thread runtime (`--workers` worker threads, by
//! default the machine's available parallelism), each on its own [`MemStorage`] (which
//! persists synchronously) and [`MemSnapshotStore`], with a state machine that does nothing
//! and a transport that pushes each message into the addressee's bounded tokio channel, the
//! node's inbound stream. Ticks come from a tokio interval every [`TICK`].
//!
//! Node 1 campaigns and is elected before anything is measured. Then, for each row, `clients`
//! tokio tasks run closed loops against the leader's [`NodeHandle`]: each proposes an empty
//! command and waits until it is applied (the future of [`NodeHandle::propose`] resolves),
//! then proposes the next. With `cmds` > 1 a client proposes `cmds` commands at once and
//! waits for all of them (openraft's 0.9 API has no batch proposal; both systems are driven
//! the same way). Every row starts from a fresh runtime and cluster, warms up, measures for
//! a bounded time and drains; latency is from the first propose call of a round to the moment
//! its last command resolved, in an HDR histogram.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use raftline_core::driver::{
    DriverConfig, Node, NodeHandle, SnapshotSink, SnapshotSource, StateMachine, Transport,
};
use raftline_core::testing::MemSnapshotStore;
use raftline_core::{Config, MemStorage};
use raftline_proto::{LogIndex, Membership, Message, NodeId, Term};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// How often every node ticks (heartbeats every tick, elections after `election_ticks`).
const TICK: Duration = Duration::from_millis(100);

/// Messages waiting in a node's inbound channel; the transport drops what does not fit.
const INBOX_MAX: usize = 1 << 16;

/// Proposals waiting for the driver task (`DriverConfig::request_queue_max`): room for every
/// command of the largest row (4096 clients x 4), so that the queue never throttles a row.
const REQUEST_QUEUE_MAX: usize = 1 << 14;

/// Latency samples a client keeps before adding them to the shared histogram.
const SAMPLES_PER_FLUSH: usize = 256;

/// How long the cluster may take to elect node 1, and the clients to finish after a row.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// The phases of a row, shared with the client tasks.
const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const DRAIN: u8 = 2;

/// What one row of closed-loop clients measured.
pub(crate) struct Measured {
    /// Completed commands in the measured window.
    pub ops: u64,
    pub secs: f64,
    /// Latency per round (one command, or `cmds` commands at once) in nanoseconds.
    pub hist: Histogram<u64>,
}

impl Measured {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

/// The timing of a row.
#[derive(Clone, Copy)]
pub(crate) struct RowPlan {
    pub clients: usize,
    pub cmds: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

/// A tokio multi-thread runtime with `workers` worker threads, like the ones both systems run
/// on in this benchmark.
pub(crate) fn runtime(workers: usize) -> Result<Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("bench-core")
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

/// Runs `plan.clients` closed-loop client tasks, each calling `propose` (`plan.cmds` at once)
/// until the measured window is over, and measures them. Call inside the runtime.
pub(crate) async fn closed_loop<P, F>(plan: RowPlan, propose: P) -> Result<Measured, String>
where
    P: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<(), String>> + Send + 'static,
{
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let ops = Arc::new(AtomicU64::new(0));
    let hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let hist = Arc::new(Mutex::new(hist));
    let mut tasks = Vec::with_capacity(plan.clients);
    for _ in 0..plan.clients {
        let client = Client {
            phase: Arc::clone(&phase),
            ops: Arc::clone(&ops),
            hist: Arc::clone(&hist),
            cmds: plan.cmds,
        };
        tasks.push(tokio::spawn(client.run(propose.clone())));
    }
    tokio::time::sleep(plan.warmup).await;
    phase.store(MEASURE, Ordering::SeqCst);
    let ops_before = ops.load(Ordering::SeqCst);
    let start = Instant::now();
    tokio::time::sleep(plan.measure).await;
    phase.store(DRAIN, Ordering::SeqCst);
    let secs = start.elapsed().as_secs_f64();
    let ops_measured = ops.load(Ordering::SeqCst) - ops_before;
    let joined = tokio::time::timeout(SETTLE_TIMEOUT, futures::future::join_all(tasks))
        .await
        .map_err(|_| format!("clients still waiting {SETTLE_TIMEOUT:?} after the row"))?;
    for result in joined {
        result.map_err(|e| format!("client task: {e}"))??;
    }
    let hist = std::mem::replace(
        &mut *hist.lock().expect("histogram lock"),
        Histogram::new(1).expect("histogram"),
    );
    Ok(Measured {
        ops: ops_measured,
        secs,
        hist,
    })
}

/// One closed-loop client.
struct Client {
    phase: Arc<AtomicU8>,
    ops: Arc<AtomicU64>,
    hist: Arc<Mutex<Histogram<u64>>>,
    cmds: usize,
}

impl Client {
    async fn run<P, F>(self, propose: P) -> Result<(), String>
    where
        P: Fn() -> F,
        F: Future<Output = Result<(), String>>,
    {
        let mut samples = Vec::with_capacity(SAMPLES_PER_FLUSH);
        while self.phase.load(Ordering::Relaxed) != DRAIN {
            let start = Instant::now();
            if self.cmds == 1 {
                propose().await?;
            } else {
                futures::future::try_join_all((0..self.cmds).map(|_| propose())).await?;
            }
            if self.phase.load(Ordering::Relaxed) == MEASURE {
                self.ops.fetch_add(self.cmds as u64, Ordering::Relaxed);
                samples.push(start.elapsed().as_nanos() as u64);
                if samples.len() == SAMPLES_PER_FLUSH {
                    self.flush(&mut samples);
                }
            }
        }
        self.flush(&mut samples);
        Ok(())
    }

    fn flush(&self, samples: &mut Vec<u64>) {
        let mut hist = self.hist.lock().expect("histogram lock");
        for nanos in samples.drain(..) {
            hist.saturating_record(nanos);
        }
    }
}

/// A state machine that does nothing.
struct Noop;

#[async_trait]
impl StateMachine for Noop {
    type Response = ();

    async fn apply(&mut self, _index: LogIndex, _command: &Bytes) {}

    async fn snapshot(&mut self, _sink: &mut SnapshotSink<'_>) -> std::io::Result<()> {
        Ok(())
    }

    async fn restore(&mut self, _source: &mut SnapshotSource<'_>) -> std::io::Result<()> {
        Ok(())
    }
}

/// Pushes each message into its addressee's inbound channel (node `n` at `inboxes[n - 1]`).
struct ChannelTransport {
    inboxes: Arc<Vec<mpsc::Sender<Message>>>,
}

impl Transport for ChannelTransport {
    fn send(&self, messages: Vec<Message>) {
        for m in messages {
            let inbox =
                m.to.0
                    .checked_sub(1)
                    .and_then(|i| self.inboxes.get(i as usize));
            if let Some(inbox) = inbox {
                // Full or closed: dropped, as the contract allows (Raft resends).
                let _ = inbox.try_send(m);
            }
        }
    }
}

/// Three running driver nodes with node 1 elected.
struct DriverCluster {
    handles: Vec<NodeHandle<()>>,
}

impl DriverCluster {
    /// Starts three nodes on `rt` and waits until node 1 leads and everyone applied its no-op.
    async fn elected(config: impl Fn(NodeId) -> Config) -> Result<DriverCluster, String> {
        let membership = Membership::with_voters((1..=3).map(NodeId));
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..3).map(|_| mpsc::channel::<Message>(INBOX_MAX)).unzip();
        let inboxes = Arc::new(senders);
        let driver = DriverConfig {
            request_queue_max: REQUEST_QUEUE_MAX,
            ..DriverConfig::default()
        };
        let mut handles = Vec::new();
        for (i, mut rx) in receivers.into_iter().enumerate() {
            let id = NodeId(i as u64 + 1);
            let transport = ChannelTransport {
                inboxes: Arc::clone(&inboxes),
            };
            let (node, handle) = Node::new(
                config(id),
                driver.clone(),
                MemStorage::new(membership.clone()),
                Noop,
                MemSnapshotStore::new(),
                transport,
            )
            .await
            .map_err(|e| format!("node {id}: {e}"))?;
            let inbound = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).fuse();
            let ticks = tokio_interval(TICK).fuse();
            let (ready_loop, applier) = node.into_tasks(inbound, ticks);
            tokio::spawn(ready_loop);
            tokio::spawn(applier);
            handles.push(handle);
        }
        handles[0]
            .campaign()
            .await
            .map_err(|e| format!("campaign: {e}"))?;
        let cluster = DriverCluster { handles };
        tokio::time::timeout(SETTLE_TIMEOUT, cluster.settle())
            .await
            .map_err(|_| format!("node 1 not elected within {SETTLE_TIMEOUT:?}"))??;
        Ok(cluster)
    }

    /// Waits until every node follows node 1 and applied its commit index.
    async fn settle(&self) -> Result<(), String> {
        let mut watch = self.handles[0].watch();
        let leader = watch
            .wait_for(|s| s.is_leader && s.applied_index >= s.commit_index && s.commit_index.0 > 0)
            .await
            .map_err(|e| format!("node 1: {e}"))?;
        for h in &self.handles[1..] {
            h.watch()
                .wait_for(|s| s.leader == Some(NodeId(1)) && s.applied_index >= leader.commit_index)
                .await
                .map_err(|e| format!("follower: {e}"))?;
        }
        Ok(())
    }

    /// Node 1's term while it leads.
    fn leader_term(&self) -> Option<Term> {
        let s = self.handles[0].status();
        s.is_leader.then_some(s.term)
    }

    async fn shutdown(self) {
        for h in &self.handles {
            h.shutdown().await;
        }
    }
}

/// A stream that yields once per `period`.
fn tokio_interval(period: Duration) -> futures::stream::BoxStream<'static, ()> {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures::stream::unfold(interval, |mut interval| async move {
        interval.tick().await;
        Some(((), interval))
    })
    .boxed()
}

/// Runs one row against the driver on a fresh runtime of `workers` threads.
pub(crate) fn driver_row(
    plan: RowPlan,
    workers: usize,
    config: impl Fn(NodeId) -> Config,
) -> Result<Measured, String> {
    let rt = runtime(workers)?;
    let result = rt.block_on(async {
        let cluster = DriverCluster::elected(config).await?;
        let term = cluster.leader_term();
        // Shared, not cloned per proposal: cloning a handle clones its request sender.
        let leader = Arc::new(cluster.handles[0].clone());
        let measured = closed_loop(plan, move || {
            let leader = Arc::clone(&leader);
            async move {
                leader
                    .propose(Bytes::new())
                    .await
                    .map_err(|e| format!("propose: {e}"))
            }
        })
        .await;
        let term_after = cluster.leader_term();
        cluster.shutdown().await;
        let measured = measured?;
        if term.is_none() || term != term_after {
            return Err(format!(
                "leadership changed during the row: {term:?} -> {term_after:?}"
            ));
        }
        Ok(measured)
    });
    rt.shutdown_timeout(SETTLE_TIMEOUT);
    result
}

/// One row of the driver's table: ours, and openraft's when the anchor is built.
struct DriverRow {
    plan: RowPlan,
    ours: Measured,
    anchor: Option<Measured>,
}

/// Runs `cargo xtask bench core --driver` over `rows` and prints its report. Returns false if
/// a row failed.
pub(crate) fn run(
    rows: &[(usize, usize)],
    warmup: Duration,
    measure: Duration,
    workers: usize,
    config: impl Fn(NodeId) -> Config + Copy,
) -> bool {
    print_header(workers, warmup, measure, &config(NodeId(1)));
    for &(clients, cmds) in rows {
        let plan = RowPlan {
            clients,
            cmds,
            warmup,
            measure,
        };
        let row = driver_row(plan, workers, config).and_then(|ours| {
            let anchor = anchor_row(plan, workers)?;
            Ok(DriverRow { plan, ours, anchor })
        });
        match row {
            Ok(row) => print_row(&row),
            Err(why) => {
                println!("| {clients:>7} | {cmds:>10} | FAILED: {why}");
                return false;
            }
        }
    }
    true
}

/// openraft on the same row, when it is built.
fn anchor_row(plan: RowPlan, workers: usize) -> Result<Option<Measured>, String> {
    #[cfg(feature = "anchor-openraft")]
    return crate::bench_core_openraft::openraft_row(plan, workers).map(Some);
    #[cfg(not(feature = "anchor-openraft"))]
    {
        let _ = (plan, workers);
        Ok(None)
    }
}

fn print_header(workers: usize, warmup: Duration, measure: Duration, cfg: &Config) {
    println!("# cargo xtask bench core --driver");
    println!("date (UTC):   {}", crate::machine::utc_now());
    println!("cpu:          {}", crate::machine::cpu_model());
    println!(
        "cores:        {} (available parallelism)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "build:        {}",
        if cfg!(debug_assertions) {
            "debug (debug assertions on): figures are not representative"
        } else {
            "release"
        }
    );
    println!(
        "runtime:      tokio multi-thread, {workers} worker threads, a fresh runtime per row and \
         system; clients are tasks on the same runtime"
    );
    println!(
        "ours:         3 driver::Node, MemStorage (synchronous), channel transport (tokio mpsc, \
         {INBOX_MAX} per inbox), no-op state machine, tick every {TICK:?}; \
         inflight_msgs_max={} append_entries_max={}",
        cfg.inflight_msgs_max, cfg.append_entries_max
    );
    if cfg!(feature = "anchor-openraft") {
        println!(
            "anchor:       openraft 0.9 (crates.io), BTreeMap log, no-op state machine, RPCs as \
             calls on the target Raft, its benchmark's config (max_payload_entries=1024)"
        );
    } else {
        println!("anchor:       not built (run with --features anchor-openraft)");
    }
    println!(
        "per row:      fresh cluster, {warmup:?} warm-up, {measure:?} measured; closed-loop \
         clients on the leader, `cmds` proposals at once per round, empty commands"
    );
    println!();
    println!(
        "| clients | cmds/round |   ours ops/s | p50 µs | p99 µs | p99.9 µs | openraft ops/s | p50 µs | p99 µs | ours / openraft |"
    );
    println!(
        "|--------:|-----------:|-------------:|-------:|-------:|---------:|---------------:|-------:|-------:|----------------:|"
    );
}

fn print_row(row: &DriverRow) {
    let us = |m: &Measured, q: f64| m.hist.value_at_quantile(q) as f64 / 1000.0;
    let o = &row.ours;
    let (a_ops, a_p50, a_p99, ratio) = match &row.anchor {
        Some(a) => (
            format!("{:.0}", a.ops_per_sec()),
            format!("{:.1}", us(a, 0.5)),
            format!("{:.1}", us(a, 0.99)),
            format!("{:.2}x", o.ops_per_sec() / a.ops_per_sec().max(1e-9)),
        ),
        None => ("-".into(), "-".into(), "-".into(), "-".into()),
    };
    println!(
        "| {:>7} | {:>10} | {:>12.0} | {:>6.1} | {:>6.1} | {:>8.1} | {a_ops:>14} | {a_p50:>6} | {a_p99:>6} | {ratio:>15} |",
        row.plan.clients,
        row.plan.cmds,
        o.ops_per_sec(),
        us(o, 0.5),
        us(o, 0.99),
        us(o, 0.999),
    );
}
