//! `cargo xtask bench core`: the throughput and latency of the bare consensus core.
//!
//! The workload is the one of openraft's `benchmarks/minimal` (`--driver` runs it through the
//! async driver, beside openraft itself: `bench_core_driver.rs`); here it is
//! three [`RawNode`]s in one process, each on its own [`MemStorage`], a state machine that does
//! nothing, and a "network" that moves each [`Message`] out of one node's [`Ready`] straight
//! into the addressee's [`RawNode::step`]. There are no threads, no async runtime and no clock
//! inside the core; the benchmark is a single loop on one core.
//!
//! Node 1 is elected with [`RawNode::campaign`] before anything is measured. Then, for each
//! row, `clients` closed-loop clients run against the leader: each has exactly one command
//! (or one batch of `cmds` commands, proposed with [`RawNode::propose_batch`]) outstanding. A
//! command completes when the leader's `Ready` hands the entry at the index `propose` returned
//! back in `committed_entries`; its client then proposes the next one at once. Latency runs
//! from just before the propose call to the moment the leader applies the entry, and goes into
//! an HDR histogram. Every row starts from a fresh cluster, warms up, measures for a bounded
//! time and drains.
//!
//! The loop honours the [`Ready`] contract: `messages` are queued for delivery first, then
//! `entries` and `hard_state` go into the node's `MemStorage`, then `persisted_messages` are
//! queued, then `committed_entries` are applied, then [`RawNode::advance`]. Nodes take turns:
//! each one steps everything queued for it and then handles one `Ready`, so whatever piled up
//! while the other nodes ran is persisted, sent and applied together (group commit).
//!
//! With feature `anchor-raft-rs`, every row is run again right after ours on TiKV's raft-rs
//! `RawNode` with the same loop (`bench_core_raftrs.rs`), and the table gives the ratio.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::machine::{cpu_model, utc_now};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use raftline_core::{Config, MemStorage, RawNode, Ready, Role, StorageMut};
use raftline_proto::{LogIndex, Membership, Message, NodeId, Term};

/// Options of `cargo xtask bench core`.
#[derive(Args)]
pub struct CoreArgs {
    /// Seconds measured per row.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Seconds of warm-up per row before measuring (same workload, not recorded).
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Run a single row with this many clients instead of the standard table.
    #[arg(long)]
    clients: Option<usize>,
    /// Commands per proposal of the single row chosen with --clients.
    #[arg(long, default_value_t = 1, requires = "clients")]
    cmds: usize,
    /// Bytes of each command's payload.
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// Override `Config::inflight_msgs_max` (append messages in flight per follower).
    #[arg(long)]
    inflight: Option<usize>,
    /// Override `Config::append_entries_max` (entries per append message).
    #[arg(long)]
    append_entries_max: Option<usize>,
    /// Benchmark the async driver (`driver::Node` on a tokio multi-thread runtime) instead
    /// of the single-threaded `RawNode` loop; beside openraft with feature `anchor-openraft`.
    #[arg(long)]
    driver: bool,
    /// Worker threads of the tokio runtime of `--driver` (default: available parallelism).
    #[arg(long, requires = "driver")]
    workers: Option<usize>,
}

/// The rows of the standard table: (clients, commands per proposal).
const ROWS: [(usize, usize); 5] = [(1, 1), (64, 1), (256, 1), (4096, 1), (4096, 4)];

/// The leader the benchmark elects.
const LEADER: NodeId = NodeId(1);

/// Nodes in the cluster.
const NODES: u64 = 3;

/// Compact the stores once this many entries are applied everywhere beyond the last
/// compaction, so that long runs keep a bounded log in memory.
const COMPACT_EVERY: u64 = 1 << 16;

/// Runs the benchmark and prints its report. Returns false if a row failed its checks.
pub fn run(args: CoreArgs) -> bool {
    let rows: Vec<(usize, usize)> = match args.clients {
        Some(c) => vec![(c, args.cmds.max(1))],
        None => ROWS.to_vec(),
    };
    if args.driver {
        let workers = args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        return crate::bench_core_driver::run(
            &rows,
            Duration::from_secs_f64(args.warmup_secs),
            Duration::from_secs_f64(args.secs),
            workers,
            |id| bench_config(id, &args),
        );
    }
    let cfg = bench_config(NodeId(1), &args);
    print_header(&args, &cfg);

    for &(clients, cmds) in &rows {
        match run_row(clients, cmds, &args).and_then(|r| Ok((anchor_row(clients, cmds, &args)?, r)))
        {
            Ok((anchor, r)) => print_row(&r, anchor.as_ref()),
            Err(why) => {
                println!("| {clients:>7} | {cmds:>13} | FAILED: {why}");
                return false;
            }
        }
    }
    true
}

/// raft-rs's figures on the same row: ops/s, p50 and p99 in µs.
struct AnchorFigures {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

/// raft-rs on the same row, when it is built (feature `anchor-raft-rs`).
fn anchor_row(
    clients: usize,
    cmds: usize,
    args: &CoreArgs,
) -> Result<Option<AnchorFigures>, String> {
    #[cfg(feature = "anchor-raft-rs")]
    {
        let cfg = bench_config(NodeId(1), args);
        let c = crate::bench_core_raftrs::RsConfig {
            inflight_msgs_max: cfg.inflight_msgs_max,
            msg_bytes_max: cfg.msg_bytes_max as u64,
            pre_vote: cfg.pre_vote,
            check_quorum: cfg.check_quorum,
        };
        let r = crate::bench_core_raftrs::run_row(
            clients,
            cmds,
            args.payload,
            Duration::from_secs_f64(args.warmup_secs),
            Duration::from_secs_f64(args.secs),
            c,
        )?;
        let us = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
        Ok(Some(AnchorFigures {
            ops_per_sec: r.ops_per_sec(),
            p50_us: us(0.5),
            p99_us: us(0.99),
        }))
    }
    #[cfg(not(feature = "anchor-raft-rs"))]
    {
        let _ = (clients, cmds, args);
        Ok(None)
    }
}

/// The configuration of node `id`: the defaults, with every bound that could throttle 4096
/// clients (or 16384 uncommitted entries) raised well out of the way.
fn bench_config(id: NodeId, args: &CoreArgs) -> Config {
    let mut cfg = Config::new(id);
    cfg.uncommitted_entries_max = 1 << 24;
    cfg.append_entries_max = args.append_entries_max.unwrap_or(1 << 16);
    cfg.msg_bytes_max = 64 << 20;
    cfg.apply_entries_max = 1 << 16;
    cfg.inflight_msgs_max = args.inflight.unwrap_or(cfg.inflight_msgs_max.max(1024));
    cfg
}

/// What one row measured.
struct RowResult {
    clients: usize,
    cmds: usize,
    ops: u64,
    secs: f64,
    /// Latency per command in nanoseconds.
    hist: Histogram<u64>,
    /// Readies handled by the leader, and entries it persisted, in the measured window.
    leader_readies: u64,
    leader_entries: u64,
    /// The share of the measured wall time this thread spent on a CPU (below 1 when other
    /// processes took the core away), if the platform tells.
    on_cpu: Option<f64>,
}

impl RowResult {
    /// Completed commands per second of the measured window.
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

/// Three nodes, their stores and the messages in flight to each.
struct Cluster {
    nodes: Vec<RawNode<MemStorage>>,
    stores: Vec<MemStorage>,
    /// Messages waiting to be stepped, by addressee (`inbox[id - 1]`).
    inbox: Vec<Vec<Message>>,
    /// A spare buffer swapped with an inbox while its messages are stepped.
    spare: Vec<Message>,
    /// The last index each node's state machine applied (`applied[id - 1]`), tracked here
    /// rather than read from [`RawNode::status`], which clones the membership.
    applied: Vec<LogIndex>,
    /// Everything up to here is compacted away in every store.
    compacted: LogIndex,
}

impl Cluster {
    /// A fresh cluster of [`NODES`] nodes with node 1 elected leader.
    fn elected(args: &CoreArgs) -> Result<Cluster, String> {
        let membership = Membership::with_voters((1..=NODES).map(NodeId));
        let mut nodes = Vec::new();
        let mut stores = Vec::new();
        for id in 1..=NODES {
            let store = MemStorage::new(membership.clone());
            let node = RawNode::new(bench_config(NodeId(id), args), store.clone())
                .map_err(|e| format!("node {id}: {e}"))?;
            nodes.push(node);
            stores.push(store);
        }
        let mut cluster = Cluster {
            nodes,
            stores,
            inbox: (0..NODES).map(|_| Vec::new()).collect(),
            spare: Vec::new(),
            applied: vec![LogIndex(0); NODES as usize],
            compacted: LogIndex(0),
        };
        cluster.nodes[0].campaign();
        while cluster.pump(|_, _| {}) {}
        // One heartbeat round (heartbeat_ticks is 1) carries the commit index of the leader's
        // no-op to the followers. No tick happens after this.
        cluster.nodes[0].tick();
        while cluster.pump(|_, _| {}) {}
        let leader = &cluster.nodes[0];
        if leader.role() != Role::Leader {
            return Err(format!("node 1 is {:?} after campaigning", leader.role()));
        }
        // Stable: the leader's no-op is committed and applied on every node.
        let commit = leader.commit_index();
        for n in &cluster.nodes {
            if n.leader() != Some(LEADER) || n.status().applied_index < commit {
                return Err(format!("node {} did not settle", n.id()));
            }
        }
        Ok(cluster)
    }

    /// One turn of every node: step what is queued for it, then handle one `Ready`.
    /// `on_leader_apply(leader, ready)` sees each of the leader's Readies after its entries
    /// are persisted and before it is advanced. Returns whether anything happened.
    fn pump(&mut self, mut on_leader_apply: impl FnMut(&mut RawNode<MemStorage>, &Ready)) -> bool {
        let mut progressed = false;
        for i in 0..self.nodes.len() {
            if !self.inbox[i].is_empty() {
                progressed = true;
                std::mem::swap(&mut self.inbox[i], &mut self.spare);
                for m in self.spare.drain(..) {
                    self.nodes[i].step(m);
                }
            }
            if !self.nodes[i].has_ready() {
                continue;
            }
            progressed = true;
            let mut ready = self.nodes[i].ready();
            // 1. Messages that need nothing durable go out at once.
            for m in ready.messages.drain(..) {
                self.inbox[(m.to.0 - 1) as usize].push(m);
            }
            // 2. Entries, then the hard state, into stable storage.
            let store = &mut self.stores[i];
            store.append(&ready.entries).expect("MemStorage append");
            if let Some(hs) = ready.hard_state {
                store.set_hard_state(hs).expect("MemStorage set_hard_state");
            }
            // 3. Now that they are durable, the acknowledgements and votes.
            for m in ready.persisted_messages.drain(..) {
                self.inbox[(m.to.0 - 1) as usize].push(m);
            }
            // 4. Apply (the state machine is a no-op; the leader's clients learn of it).
            if self.nodes[i].id() == LEADER {
                on_leader_apply(&mut self.nodes[i], &ready);
            }
            if let Some(index) = ready.last_committed_index() {
                self.applied[i] = index;
            }
            self.nodes[i].advance(&ready);
        }
        progressed
    }

    /// Discards, in every store, the entries every node has applied and the leader knows every
    /// follower holds, once there are at least [`COMPACT_EVERY`] of them.
    fn maybe_compact(&mut self) {
        let mut floor = LogIndex(u64::MAX);
        for (n, &applied) in self.nodes.iter().zip(&self.applied) {
            floor = floor.min(applied);
            if let Some(p) = self.nodes[0].progress(n.id()) {
                floor = floor.min(p.match_index);
            }
        }
        if floor.0 < self.compacted.0 + COMPACT_EVERY {
            return;
        }
        for s in &mut self.stores {
            s.compact(floor).expect("MemStorage compact");
        }
        self.compacted = floor;
    }

    /// Node 1's role and term, to check that leadership did not move during a row.
    fn leader_term(&self) -> (Role, Term) {
        (self.nodes[0].role(), self.nodes[0].term())
    }
}

/// One outstanding proposal: the index `propose` returned and when it was proposed.
struct Outstanding {
    index: LogIndex,
    start: Instant,
}

/// The phases of a row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
    Drain,
}

/// Runs `clients` closed-loop clients with `cmds` commands per proposal on a fresh cluster.
fn run_row(clients: usize, cmds: usize, args: &CoreArgs) -> Result<RowResult, String> {
    let mut cluster = Cluster::elected(args)?;
    let term_before = cluster.leader_term();
    let payload = Bytes::from(vec![0u8; args.payload]);
    let commands: Vec<Bytes> = vec![payload.clone(); cmds];
    let propose = |node: &mut RawNode<MemStorage>| -> Result<LogIndex, String> {
        let r = if cmds == 1 {
            node.propose(payload.clone())
        } else {
            node.propose_batch(commands.clone())
        };
        r.map_err(|e| format!("propose failed: {e}"))
    };

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let mut pending: VecDeque<Outstanding> = VecDeque::with_capacity(clients);
    let start = Instant::now();
    for _ in 0..clients {
        let index = propose(&mut cluster.nodes[0])?;
        pending.push_back(Outstanding { index, start });
    }

    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let measure = Duration::from_secs_f64(args.secs);
    let mut phase = Phase::Warmup;
    let mut phase_start = start;
    let mut measured_secs = 0.0;
    let (mut cpu_start, mut cpu_secs) = (None, None);
    let mut ops = 0u64;
    let (mut leader_readies, mut leader_entries) = (0u64, 0u64);
    let mut error = None;

    while !(phase == Phase::Drain && pending.is_empty()) {
        let progressed = cluster.pump(|leader, ready| {
            if phase == Phase::Measure {
                leader_readies += 1;
                leader_entries += ready.entries.len() as u64;
            }
            let Some(last) = ready.last_committed_index() else {
                return;
            };
            let now = Instant::now();
            let mut done = 0usize;
            while pending.front().is_some_and(|o| o.index <= last) {
                let o = pending.pop_front().expect("checked");
                if phase == Phase::Measure {
                    let nanos = now.duration_since(o.start).as_nanos() as u64;
                    hist.saturating_record(nanos);
                    ops += cmds as u64;
                }
                done += 1;
            }
            // Move between phases on the clock of this apply.
            let elapsed = now.duration_since(phase_start);
            match phase {
                Phase::Warmup if elapsed >= warmup => {
                    phase = Phase::Measure;
                    phase_start = now;
                    cpu_start = thread_cpu_secs();
                }
                Phase::Measure if elapsed >= measure => {
                    phase = Phase::Drain;
                    measured_secs = elapsed.as_secs_f64();
                    cpu_secs = thread_cpu_secs().zip(cpu_start).map(|(b, a)| b - a);
                }
                _ => {}
            }
            if phase == Phase::Drain {
                return;
            }
            // Every client that completed proposes its next command at once.
            for _ in 0..done {
                match propose(leader) {
                    Ok(index) => pending.push_back(Outstanding { index, start: now }),
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
        });
        if let Some(e) = error.take() {
            return Err(e);
        }
        if !progressed {
            return Err(format!(
                "the cluster stalled with {} proposals outstanding",
                pending.len()
            ));
        }
        cluster.maybe_compact();
    }

    let term_after = cluster.leader_term();
    if term_after != term_before || term_after.0 != Role::Leader {
        return Err(format!(
            "leadership changed during the run: {term_before:?} -> {term_after:?}"
        ));
    }
    for n in &cluster.nodes {
        if n.leader() != Some(LEADER) {
            return Err(format!("node {} follows {:?}", n.id(), n.leader()));
        }
    }
    Ok(RowResult {
        clients,
        cmds,
        ops,
        secs: measured_secs,
        hist,
        leader_readies,
        leader_entries,
        on_cpu: cpu_secs.map(|c| c / measured_secs),
    })
}

/// User plus system CPU time of the calling thread in seconds, from
/// `/proc/thread-self/stat` (10 ms resolution: Linux reports it in ticks of 1/100 s).
fn thread_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Prints the machine, build and configuration facts and the table head.
fn print_header(args: &CoreArgs, cfg: &Config) {
    let profile = if cfg!(debug_assertions) {
        "debug (debug assertions on): figures are not representative"
    } else {
        "release (debug assertions off; the `cargo xtask` alias builds with --release)"
    };
    println!("# cargo xtask bench core");
    println!("date (UTC):   {}", utc_now());
    println!("cpu:          {}", cpu_model());
    println!(
        "cores:        {} (available parallelism; the benchmark runs on one thread)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("build:        {profile}");
    println!(
        "workload:     3 RawNode<MemStorage> in one process, function-call network, no-op state \
         machine, {} B commands, closed-loop clients on leader node 1",
        args.payload
    );
    println!("storage:      MemStorage, no fsync (the figures are CPU cost only)");
    println!(
        "per row:      fresh cluster, {} s warm-up, {} s measured; latency from propose to the \
         leader applying, one sample per proposal",
        args.warmup_secs, args.secs
    );
    println!(
        "config:       inflight_msgs_max={} append_entries_max={} msg_bytes_max={} \
         uncommitted_entries_max={} apply_entries_max={}",
        cfg.inflight_msgs_max,
        cfg.append_entries_max,
        cfg.msg_bytes_max,
        cfg.uncommitted_entries_max,
        cfg.apply_entries_max
    );
    println!(
        "              election_ticks={} heartbeat_ticks={} pre_vote={} check_quorum={} \
         (one heartbeat tick while settling, none while measuring)",
        cfg.election_ticks, cfg.heartbeat_ticks, cfg.pre_vote, cfg.check_quorum
    );
    if cfg!(feature = "anchor-raft-rs") {
        println!(
            "anchor:       raft-rs 0.7 (crates.io) RawNode<MemStorage>, the same loop, each row \
             right after ours (election 10 ticks, heartbeat 1, same in-flight and message bytes)"
        );
    } else {
        println!("anchor:       not built (run with --features anchor-raft-rs)");
    }
    println!();
    println!(
        "| clients | cmds/proposal |    total ops | seconds |        ops/s |   p50 µs |   p99 µs | p99.9 µs |   max µs | entries/leader Ready | on-CPU | raft-rs ops/s | raft-rs p50 µs | raft-rs p99 µs | ours / raft-rs |"
    );
    println!(
        "|--------:|--------------:|-------------:|--------:|-------------:|---------:|---------:|---------:|---------:|---------------------:|-------:|--------------:|---------------:|---------------:|---------------:|"
    );
}

/// Prints one row of the table.
fn print_row(r: &RowResult, anchor: Option<&AnchorFigures>) {
    let us = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
    let per_ready = if r.leader_readies == 0 {
        0.0
    } else {
        r.leader_entries as f64 / r.leader_readies as f64
    };
    let on_cpu = r
        .on_cpu
        .map_or_else(|| "?".to_string(), |c| format!("{:.0}%", c * 100.0));
    let (a_ops, a_p50, a_p99, ratio) = match anchor {
        Some(a) => (
            format!("{:.0}", a.ops_per_sec),
            format!("{:.1}", a.p50_us),
            format!("{:.1}", a.p99_us),
            format!("{:.2}x", r.ops_per_sec() / a.ops_per_sec.max(1e-9)),
        ),
        None => ("-".into(), "-".into(), "-".into(), "-".into()),
    };
    println!(
        "| {:>7} | {:>13} | {:>12} | {:>7.2} | {:>12.0} | {:>8.1} | {:>8.1} | {:>8.1} | {:>8.1} | {:>20.1} | {on_cpu:>6} | {a_ops:>13} | {a_p50:>14} | {a_p99:>14} | {ratio:>14} |",
        r.clients,
        r.cmds,
        r.ops,
        r.secs,
        r.ops_per_sec(),
        us(0.5),
        us(0.99),
        us(0.999),
        r.hist.max() as f64 / 1000.0,
        per_ready
    );
}
