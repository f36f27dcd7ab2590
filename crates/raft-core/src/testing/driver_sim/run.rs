//! [`DriverSim`]: the simulated cluster of real drivers, its event loop, faults and checks.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::mpsc;
use parking_lot::Mutex;
use raftline_proto::{EntryPayload, LogIndex, Membership, Message, NodeId, SnapshotMeta, Term};

use super::backend::{LogBackend, MemBackend, WrittenView};
use super::clients::{
    no_effect, with_timeout, Admin, AdminStats, Client, Registry, Response, SharedHistory,
};
use super::executor::{Clock, Executor, TaskId};
use super::machine::Workload;
use super::world::{Event, SharedWorld, SimTransport, World};
use super::{
    DriverSimConfig, DriverSimFailure, DriverSimReport, CHECK_STEPS_MAX, INBOUND_QUEUE_MAX,
    TICKS_QUEUED_MAX, UNITS_PER_TICK,
};
use crate::driver::{Node, SnapshotSink, SnapshotSource, SnapshotStore, StateMachine};
use crate::testing::checker::{Checker, NodeView};
use crate::testing::linearizability::{self, Operation};
use crate::testing::MemSnapshotStore;
use crate::Rng;

/// What a state machine did, seen by the simulator, in order.
enum Observation {
    /// A fresh state machine started (the server started or restarted).
    Started(NodeId),
    Applied(NodeId, LogIndex, Bytes),
    /// The state machine restored this snapshot (with its data).
    Restored(NodeId, SnapshotMeta, Bytes),
}

type Observations = Arc<Mutex<Vec<Observation>>>;

/// Wraps a workload's state machine to report every apply and restore.
struct Observed<M> {
    inner: M,
    id: NodeId,
    seen: Observations,
    snapshots: MemSnapshotStore,
}

#[async_trait]
impl<M: StateMachine> StateMachine for Observed<M> {
    type Response = M::Response;

    async fn apply(&mut self, index: LogIndex, command: &Bytes) -> M::Response {
        let seen = Observation::Applied(self.id, index, command.clone());
        self.seen.lock().push(seen);
        self.inner.apply(index, command).await
    }

    async fn snapshot(&mut self, sink: &mut SnapshotSink<'_>) -> std::io::Result<()> {
        self.inner.snapshot(sink).await
    }

    async fn restore(&mut self, source: &mut SnapshotSource<'_>) -> std::io::Result<()> {
        self.inner.restore(source).await?;
        // The store opens only its newest snapshot: that is the one restored.
        let meta = self
            .snapshots
            .latest()
            .expect("restored from the newest snapshot");
        let data = self.snapshots.latest_data().unwrap_or_default();
        let restored = Observation::Restored(self.id, meta, data);
        self.seen.lock().push(restored);
        Ok(())
    }
}

/// One simulated server.
struct Server<L> {
    /// Its log handle while it is up (the checker reads the log through it).
    log: Option<L>,
    /// Bumped at each crash.
    incarnation: u64,
    snapshots: MemSnapshotStore,
    /// The driver task while the server is up.
    task: Option<TaskId>,
    inbound: Option<mpsc::Sender<Message>>,
    ticks: Option<mpsc::Sender<()>>,
    /// The configuration its store was created with.
    initial: Membership,
    /// The newest snapshot the checker saw in its store.
    snapshot_seen: Option<SnapshotMeta>,
    /// The last index its state machine applied or restored to.
    applied: LogIndex,
    /// Snapshots it holds or restored, checked once the checker knows their index committed.
    unchecked: Vec<(&'static str, SnapshotMeta, Bytes)>,
}

/// A simulated cluster of [`Node`]s running a workload, with logs kept by a [`LogBackend`].
pub struct DriverSim<W: Workload, B: LogBackend = MemBackend> {
    backend: B,
    cfg: DriverSimConfig,
    exec: Executor,
    clock: Clock,
    world: SharedWorld,
    rng: Rng,
    workload: Rc<RefCell<W>>,
    servers: BTreeMap<NodeId, Server<B::Log>>,
    registry: Rc<RefCell<Registry<Response<W>>>>,
    history: SharedHistory<W>,
    observed: Observations,
    /// Observations not checked yet, in order.
    observations: std::collections::VecDeque<Observation>,
    /// Errors of driver tasks (a failed start, a storage failure).
    task_errors: Rc<RefCell<Vec<String>>>,
    admin: Rc<RefCell<AdminStats>>,
    checker: Checker,
    report: DriverSimReport,
    /// Set once faults stop: the write that must reach every member.
    liveness: Rc<RefCell<Option<LogIndex>>>,
}

type Step = Result<(), String>;

impl<W: Workload, B: LogBackend> DriverSim<W, B> {
    /// A cluster of `cfg.nodes` voters and `cfg.spares` empty servers, not started yet.
    pub fn new(cfg: DriverSimConfig, workload: W, backend: B) -> DriverSim<W, B> {
        let exec = Executor::new(cfg.seed ^ 0x005E_ED0F_E8EC);
        let clock = exec.clock();
        let world = World::new(cfg.seed, clock.clone(), cfg.net.clone(), cfg.disk_units_max);
        let voters = (1..=cfg.nodes as u64).map(NodeId);
        let membership = Membership::with_voters(voters);
        let mut sim = DriverSim {
            backend,
            exec,
            clock,
            world: Arc::new(Mutex::new(world)),
            rng: Rng::new(cfg.seed ^ 0xC1_1E47),
            workload: Rc::new(RefCell::new(workload)),
            servers: BTreeMap::new(),
            registry: Rc::default(),
            history: Rc::default(),
            observed: Arc::default(),
            observations: std::collections::VecDeque::new(),
            task_errors: Rc::default(),
            admin: Rc::default(),
            checker: Checker::new(&membership).with_digest(super::command_digest),
            report: DriverSimReport {
                seed: cfg.seed,
                ..DriverSimReport::default()
            },
            liveness: Rc::default(),
            cfg,
        };
        let all = (sim.cfg.nodes + sim.cfg.spares) as u64;
        for id in (1..=all).map(NodeId) {
            let initial = if membership.is_voter(id) {
                membership.clone()
            } else {
                Membership::default()
            };
            sim.servers.insert(
                id,
                Server {
                    log: None,
                    incarnation: 0,
                    snapshots: MemSnapshotStore::new(),
                    task: None,
                    inbound: None,
                    ticks: None,
                    initial,
                    snapshot_seen: None,
                    applied: LogIndex(0),
                    unchecked: Vec::new(),
                },
            );
        }
        sim
    }

    /// The virtual clock of the run.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// Changes the workload before the run starts (e.g. to slow its snapshots down).
    pub fn with_workload(&mut self, change: impl FnOnce(&mut W)) {
        change(&mut self.workload.borrow_mut());
    }

    fn trace(&mut self, what: impl FnOnce() -> String) {
        let now = self.clock.now();
        if self.cfg.verbose {
            println!(
                "[{:>5}.{}] {}",
                now / UNITS_PER_TICK,
                now % UNITS_PER_TICK,
                what()
            );
        }
    }

    /// Folds `value` into the run's trace digest.
    fn fold(&mut self, value: u64) {
        let d = self.report.trace_digest ^ value;
        self.report.trace_digest = d.wrapping_mul(0x0100_0000_01b3).rotate_left(7);
    }

    /// Starts server `id`'s driver from what its disk and snapshot store hold.
    fn start(&mut self, id: NodeId) -> Step {
        let server = self.servers.get_mut(&id).expect("known server");
        let incarnation = server.incarnation;
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE_MAX);
        let (tick_tx, tick_rx) = mpsc::channel(TICKS_QUEUED_MAX);
        server.inbound = Some(in_tx);
        server.ticks = Some(tick_tx);
        let mut config = self.cfg.node.clone();
        config.id = id;
        config.seed = self.cfg.seed ^ (id.0 << 32) ^ incarnation.wrapping_mul(0x9E37_79B9);
        let log = self.backend.open(id, &server.initial, &self.world)?;
        server.log = Some(log.clone());
        self.observed.lock().push(Observation::Started(id));
        let machine = Observed {
            inner: self.workload.borrow_mut().machine(id),
            id,
            seen: Arc::clone(&self.observed),
            snapshots: server.snapshots.clone(),
        };
        let transport = SimTransport {
            world: Arc::clone(&self.world),
        };
        let (snapshots, driver) = (server.snapshots.clone(), self.cfg.driver.clone());
        let (registry, errors) = (Rc::clone(&self.registry), Rc::clone(&self.task_errors));
        let spawner = self.exec.spawner();
        // The server's tasks (starting, then the Ready loop and the applier) share its group.
        let task = self.exec.spawn_in(
            id.0,
            Box::pin(async move {
                match Node::new(config, driver, log, machine, snapshots, transport).await {
                    Ok((node, handle)) => {
                        registry
                            .borrow_mut()
                            .handles
                            .insert(id, (handle, incarnation));
                        let (ready_loop, applier) = node.into_tasks(in_rx, tick_rx);
                        spawner.spawn(id.0, applier);
                        if let Err(e) = ready_loop.await {
                            errors.borrow_mut().push(format!("{id} stopped: {e}"));
                        }
                    }
                    Err(e) => errors
                        .borrow_mut()
                        .push(format!("{id} could not start: {e}")),
                }
            }),
        );
        self.servers.get_mut(&id).expect("known").task = Some(task);
        Ok(())
    }

    /// Crashes server `id`: its task stops where it stands, unfinished writes and a partial
    /// snapshot transfer are lost.
    fn crash(&mut self, id: NodeId) {
        let server = self.servers.get_mut(&id).expect("known server");
        if server.task.take().is_none() {
            return;
        }
        self.exec.cancel_group(id.0);
        if let Some((handle, _)) = self.registry.borrow_mut().handles.remove(&id) {
            let stats = handle.status().snapshots;
            self.report.snapshots_taken += stats.taken;
            self.report.snapshots_installed += stats.installed;
        }
        server.inbound = None;
        server.ticks = None;
        server.log = None;
        server.incarnation += 1;
        self.backend.crash(id, &mut self.rng);
        server.snapshots.restart();
        self.report.crashes += 1;
        self.trace(|| format!("{id} crashes"));
    }

    fn is_up(&self, id: NodeId) -> bool {
        self.servers.get(&id).is_some_and(|s| s.task.is_some())
    }

    fn handle(&mut self, event: Event) -> Step {
        let (kind, node) = match &event {
            Event::Deliver(m) => (1, m.to),
            Event::Tick(id) => (2, *id),
            Event::DiskDone(id, _) => (3, *id),
            Event::Restart(id) => (4, *id),
            Event::Heal => (5, NodeId(0)),
            Event::Faults => (6, NodeId(0)),
        };
        self.fold(self.clock.now() << 16 ^ kind << 8 ^ node.0);
        match event {
            Event::Deliver(m) => self.deliver(m),
            Event::Tick(id) => {
                self.world.lock().schedule(UNITS_PER_TICK, Event::Tick(id));
                if let Some(ticks) = self.servers.get_mut(&id).and_then(|s| s.ticks.as_mut()) {
                    let _ = ticks.try_send(()); // a full queue skips the tick, as a late timer would
                }
            }
            Event::DiskDone(id, incarnation) => {
                self.backend.sync_due(id, incarnation, self.clock.now());
            }
            Event::Restart(id) => {
                if !self.is_up(id) {
                    self.trace(|| format!("{id} restarts"));
                    self.start(id)?;
                }
            }
            Event::Heal => {
                self.world.lock().blocked.clear();
                self.trace(|| "partitions heal".into());
            }
            Event::Faults => {
                self.world.lock().schedule(UNITS_PER_TICK, Event::Faults);
                if !self.world.lock().quiet {
                    self.inject_faults();
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, m: Message) {
        // Every byte of every message delivered goes into the trace digest.
        let bytes = raftline_proto::encode(&m);
        let digest = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        self.fold(digest);
        if self.cfg.verbose {
            let line = format!("{} -> {} {} {:?}", m.from, m.to, m.term, m.body);
            self.trace(|| line);
        }
        let delivered = self
            .servers
            .get_mut(&m.to)
            .and_then(|s| s.inbound.as_mut())
            .is_some_and(|tx| tx.try_send(m).is_ok());
        if !delivered {
            self.world.lock().lost += 1;
        }
    }

    fn inject_faults(&mut self) {
        let ids: Vec<NodeId> = self.servers.keys().copied().collect();
        let partition =
            self.world.lock().blocked.is_empty() && self.rng.chance(self.cfg.partition_rate);
        if partition {
            self.partition(&ids);
        }
        let leader = self.registry.borrow().leader();
        for id in ids {
            let mut rate = self.cfg.crash_rate;
            if Some(id) == leader {
                rate += self.cfg.leader_crash_rate;
            }
            if self.is_up(id) && self.rng.chance(rate) {
                self.crash(id);
                let back = (1 + self.rng.below(self.cfg.down_ticks_max)) * UNITS_PER_TICK;
                self.world.lock().schedule(back, Event::Restart(id));
            }
        }
    }

    /// Starts a partition: the leader isolated, a random split, or a one-way link cut.
    fn partition(&mut self, ids: &[NodeId]) {
        self.report.partitions += 1;
        let kind = self.rng.below(3);
        let a = ids[self.rng.below(ids.len() as u64) as usize];
        let b = ids[self.rng.below(ids.len() as u64) as usize];
        let group: Vec<NodeId> = match kind {
            0 => vec![self.registry.borrow().leader().unwrap_or(a)],
            1 => ids
                .iter()
                .copied()
                .filter(|_| self.rng.chance(0.5))
                .collect(),
            _ => Vec::new(),
        };
        let mut world = self.world.lock();
        if kind == 2 {
            world.blocked.insert((a, b));
        }
        for &x in &group {
            for &y in ids.iter().filter(|y| !group.contains(y)) {
                world.blocked.insert((x, y));
                world.blocked.insert((y, x));
            }
        }
        let heal = (5 + self.rng.below(60)) * UNITS_PER_TICK;
        world.schedule(heal, Event::Heal);
        drop(world);
        self.trace(|| format!("partition {kind}: {group:?} / {a}-/->{b}"));
    }
}

impl<W: Workload, B: LogBackend> DriverSim<W, B> {
    /// Checks every invariant after a step.
    fn check(&mut self) -> Step {
        if let Some(e) = self.task_errors.borrow_mut().pop() {
            return Err(e);
        }
        self.check_logs()?;
        self.check_nodes()?;
        self.check_applied()?;
        self.check_snapshots()?;
        let (servers, backend) = (&self.servers, &self.backend);
        let holds = |id: NodeId, index: LogIndex, term: Term| {
            backend.durable_term(id, index) == Some(term)
                || servers
                    .get(&id)
                    .is_some_and(|s| s.snapshots.latest().is_some_and(|m| m.last_index >= index))
        };
        let ids: Vec<NodeId> = servers.keys().copied().collect();
        self.checker.check_durability(&ids, holds)
    }

    /// Log Matching over every entry any node handed to its disk.
    fn check_logs(&mut self) -> Step {
        let ids: Vec<NodeId> = self.servers.keys().copied().collect();
        for id in ids {
            for (entry, prev_term) in self.backend.take_appended(id) {
                self.checker.entry_written(id, &entry, prev_term)?;
            }
        }
        Ok(())
    }

    /// Election Safety, commit agreement, Leader Completeness and configurations, from each
    /// live node's status and log.
    fn check_nodes(&mut self) -> Step {
        let registry = self.registry.borrow();
        for (&id, (handle, _)) in &registry.handles {
            let status = handle.status();
            let server = &self.servers[&id];
            let Some(log) = server.log.as_ref() else {
                continue;
            };
            let backend = &self.backend;
            let WrittenView { first, last, .. } = backend.written(id, log, LogIndex(0));
            let term_at = |i: LogIndex| backend.written(id, log, i).term;
            let view = NodeView {
                id,
                role: status.role,
                term: status.term,
                commit: status.commit_index.min(last),
                first_index: first,
                membership: &status.membership,
                membership_index: LogIndex(0),
                initial: &server.initial,
                term_at: &term_at,
            };
            self.checker.check_node(&view).map_err(|e| {
                format!("{e} (its log holds {first}..={last}, its status is {status:?})")
            })?;
        }
        Ok(())
    }

    /// State Machine Safety of what state machines applied: committed commands, in order,
    /// once, none skipped.
    fn check_applied(&mut self) -> Step {
        let seen = std::mem::take(&mut *self.observed.lock());
        self.observations.extend(seen);
        // An apply is checked once the checker knows its index committed (a node may apply
        // before the status that shows its commit index is published).
        while let Some(observation) = self.observations.pop_front() {
            match observation {
                Observation::Applied(_, index, _) if index > self.checker.committed_index() => {
                    self.observations.push_front(observation);
                    break;
                }
                Observation::Applied(id, index, command) => {
                    self.checker.applied_command(id, index, &command)?;
                    let after = self.servers[&id].applied;
                    self.no_command_skipped(id, after, index)?;
                    self.servers.get_mut(&id).expect("known").applied = index;
                }
                Observation::Started(id) => {
                    self.servers.get_mut(&id).expect("known").applied = LogIndex(0);
                }
                Observation::Restored(id, meta, data) => {
                    let server = self.servers.get_mut(&id).expect("known");
                    server.applied = meta.last_index;
                    server.unchecked.push(("restored", meta, data));
                }
            }
        }
        Ok(())
    }

    fn no_command_skipped(&self, id: NodeId, after: LogIndex, index: LogIndex) -> Step {
        if index <= after {
            return Err(format!(
                "State Machine Safety: {id} applied {index} after it had applied {after}"
            ));
        }
        for i in after.0 + 1..index.0 {
            let i = LogIndex(i);
            let term = self.checker.committed_term(i);
            let payload = term.and_then(|t| self.checker.payload(i, t));
            if matches!(payload, Some(EntryPayload::Normal(_)) | None) {
                return Err(format!(
                    "State Machine Safety: {id} applied {index} after {after}, skipping {i} ({payload:?})"
                ));
            }
        }
        Ok(())
    }

    /// A snapshot a node holds or restored has the state of the committed log at its index
    /// (checked once that index is known committed).
    fn check_snapshots(&mut self) -> Step {
        let ids: Vec<NodeId> = self.servers.keys().copied().collect();
        for id in ids {
            let server = self.servers.get_mut(&id).expect("known");
            let latest = server.snapshots.latest();
            if latest.is_some() && latest != server.snapshot_seen {
                let data = server.snapshots.latest_data().unwrap_or_default();
                server
                    .unchecked
                    .push(("holds", latest.clone().expect("checked"), data));
                server.snapshot_seen = latest;
            }
            let committed = self.checker.committed_index();
            let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut server.unchecked)
                .into_iter()
                .partition(|(_, meta, _)| meta.last_index <= committed);
            server.unchecked = later;
            for (what, meta, data) in ready {
                if let Some(digest) = self.workload.borrow().snapshot_digest(&data) {
                    self.checker.snapshot_digest_seen(id, what, &meta, digest)?;
                }
            }
        }
        Ok(())
    }
}

impl<W: Workload, B: LogBackend> DriverSim<W, B> {
    fn spawn_clients(&mut self) {
        let stop_at = (self.cfg.fault_ticks + self.cfg.liveness_ticks / 2) * UNITS_PER_TICK;
        let next_op = Rc::new(RefCell::new(0));
        for c in 0..self.cfg.clients as u64 {
            let client = Client {
                id: c + 1,
                clock: self.clock.clone(),
                rng: Rng::new(self.cfg.seed ^ (c + 1).wrapping_mul(0xA24B_AED4_963E_E407)),
                workload: Rc::clone(&self.workload),
                registry: Rc::clone(&self.registry),
                history: Rc::clone(&self.history),
                next_op: Rc::clone(&next_op),
                stop_at,
                think_units_max: self.cfg.think_ticks_max * UNITS_PER_TICK,
                timeout_units: self.cfg.timeout_ticks * UNITS_PER_TICK,
            };
            self.exec.spawn(client.run());
        }
        if self.cfg.membership {
            let admin = Admin {
                clock: self.clock.clone(),
                rng: Rng::new(self.cfg.seed ^ 0xAD_0131),
                registry: Rc::clone(&self.registry),
                spares: (self.cfg.nodes + 1..=self.cfg.nodes + self.cfg.spares)
                    .map(|i| NodeId(i as u64))
                    .collect(),
                voters_min: 3,
                pause_units_max: self.cfg.admin_pause_ticks_max * UNITS_PER_TICK,
                timeout_units: self.cfg.timeout_ticks * UNITS_PER_TICK,
                stop_at: self.cfg.fault_ticks * UNITS_PER_TICK,
                stats: Rc::clone(&self.admin),
            };
            self.exec.spawn(admin.run());
        }
    }

    /// Faults stop: partitions heal, every server comes back, and a probe writes until a
    /// write commits; then every member must apply it.
    fn go_quiet(&mut self) -> Step {
        {
            let mut world = self.world.lock();
            world.quiet = true;
            world.blocked.clear();
        }
        let down: Vec<NodeId> = self
            .servers
            .keys()
            .copied()
            .filter(|&id| !self.is_up(id))
            .collect();
        for id in down {
            self.start(id)?;
        }
        self.trace(|| "faults stop".into());
        let (registry, workload, clock) = (
            Rc::clone(&self.registry),
            Rc::clone(&self.workload),
            self.clock.clone(),
        );
        let (liveness, mut rng) = (Rc::clone(&self.liveness), Rng::new(self.cfg.seed ^ 0x11FE));
        let history = Rc::clone(&self.history);
        let timeout = self.cfg.timeout_ticks * UNITS_PER_TICK;
        self.exec.spawn(async move {
            loop {
                clock.sleep(UNITS_PER_TICK).await;
                let leader = registry.borrow().leader();
                let Some(handle) = leader.and_then(|l| registry.borrow().handles.get(&l).cloned())
                else {
                    continue;
                };
                let (input, _) = workload.borrow_mut().input(&mut rng);
                let command = workload
                    .borrow()
                    .command(u64::MAX - rng.below(1 << 20), &input);
                // Entered before it is sent: an attempt that times out may still commit.
                let at = history.borrow().len();
                history.borrow_mut().push(Some(Operation {
                    client: 0,
                    input: input.clone(),
                    call: clock.now(),
                    ret: None,
                    output: None,
                }));
                // A leader that is removed or deposed may never answer: retry elsewhere.
                let answer = with_timeout(&clock, timeout, handle.0.propose(command)).await;
                if let Some(Err(e)) = &answer {
                    if no_effect(e) {
                        history.borrow_mut()[at] = None;
                    }
                }
                if let Some(Ok(response)) = answer {
                    let output = workload.borrow().output(&input, response);
                    if let Some(op) = history.borrow_mut()[at].as_mut() {
                        op.ret = Some(clock.now());
                        op.output = Some(output);
                    }
                    *liveness.borrow_mut() = Some(handle.0.status().commit_index);
                    return;
                }
            }
        });
        Ok(())
    }

    /// Who leads, the probe's index, and each node's term, role, commit and applied index.
    fn liveness_detail(&self) -> String {
        let registry = self.registry.borrow();
        let mut out = format!("probe committed at {:?};", *self.liveness.borrow());
        for (id, (h, _)) in &registry.handles {
            let s = h.status();
            out += &format!(
                " {id}: {:?} {} commit {} applied {} members {:?};",
                s.role,
                s.term,
                s.commit_index,
                s.applied_index,
                s.membership.members()
            );
        }
        out
    }

    /// Whether every member of the leader's configuration applied the probe's write.
    fn live(&self) -> bool {
        let Some(target) = *self.liveness.borrow() else {
            return false;
        };
        let registry = self.registry.borrow();
        let Some(leader) = registry.leader() else {
            return false;
        };
        let membership = registry.handles[&leader].0.status().membership;
        membership.members().into_iter().all(|id| {
            registry
                .handles
                .get(&id)
                .is_some_and(|(h, _)| h.status().applied_index >= target)
        })
    }
}

impl<W: Workload, B: LogBackend> DriverSim<W, B> {
    /// Runs the whole simulation and checks the history.
    /// A panic anywhere in the run (an assertion of the core, the driver or a store) is a
    /// failure of this seed too, with the step it happened at.
    pub fn run(mut self) -> Result<DriverSimReport, DriverSimFailure> {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_inner()));
        let outcome = outcome.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            Err(format!("panicked: {message}"))
        });
        match outcome {
            Ok(()) => Ok(self.finish()),
            Err(reason) => Err(DriverSimFailure {
                seed: self.cfg.seed,
                step: self.report.steps,
                tick: self.clock.now() / UNITS_PER_TICK,
                reason,
            }),
        }
    }

    fn run_inner(&mut self) -> Step {
        let ids: Vec<NodeId> = self.servers.keys().copied().collect();
        for id in ids {
            self.start(id)?;
            let phase = self.rng.below(UNITS_PER_TICK);
            self.world.lock().schedule(phase, Event::Tick(id));
        }
        self.world.lock().schedule(UNITS_PER_TICK, Event::Faults);
        self.spawn_clients();
        let faults_end = self.cfg.fault_ticks * UNITS_PER_TICK;
        let end = faults_end + self.cfg.liveness_ticks * UNITS_PER_TICK;
        loop {
            if let Some(task) = self.exec.poll_one() {
                self.report.steps += 1;
                self.fold(task);
                self.check()?;
                continue;
            }
            let quiet = self.world.lock().quiet;
            if quiet && self.live() {
                break;
            }
            let next_event = self.world.lock().next_event();
            let next = match (self.exec.next_timer(), next_event) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).ok_or("nothing left to run")?,
            };
            if next > end {
                return Err(format!(
                    "liveness: {} ticks after faults stopped, no write committed and applied on every member ({})",
                    self.cfg.liveness_ticks,
                    self.liveness_detail()
                ));
            }
            if !quiet && next >= faults_end {
                self.exec.advance_to(faults_end);
                self.go_quiet()?;
                continue;
            }
            self.exec.advance_to(next);
            loop {
                let event = self.world.lock().pop_due(next);
                let Some(event) = event else { break };
                self.report.steps += 1;
                self.handle(event)?;
            }
        }
        if let Some(Observation::Applied(id, index, _)) = self.observations.front() {
            return Err(format!(
                "State Machine Safety: {id} applied {index}, which was never committed"
            ));
        }
        self.check_history()
    }

    fn check_history(&mut self) -> Step {
        let history: Vec<_> = self.history.borrow().iter().flatten().cloned().collect();
        self.report.ops_checked = history.len() as u64;
        self.report.ops_unknown = history.iter().filter(|o| o.ret.is_none()).count() as u64;
        let model = self.workload.borrow().model();
        match linearizability::check(&model, &history, CHECK_STEPS_MAX) {
            linearizability::Outcome::Linearizable => Ok(()),
            linearizability::Outcome::Unknown { .. } => {
                self.report.histories_undecided += 1;
                Ok(())
            }
            linearizability::Outcome::NotLinearizable {
                partition,
                explanation,
            } => Err(format!(
                "linearizability: the history of key {partition} is not linearizable:\n{explanation}"
            )),
        }
    }

    fn finish(mut self) -> DriverSimReport {
        let registry = self.registry.borrow();
        for (handle, _) in registry.handles.values() {
            let stats = handle.status().snapshots;
            self.report.snapshots_taken += stats.taken;
            self.report.snapshots_installed += stats.installed;
        }
        drop(registry);
        self.report.ticks = self.clock.now() / UNITS_PER_TICK;
        self.report.committed = self.checker.committed_index().0;
        self.report.leaders = self.checker.leader_terms();
        let world = self.world.lock();
        (self.report.messages_sent, self.report.messages_lost) = (world.sent, world.lost);
        drop(world);
        self.report.admin = self.admin.borrow().clone();
        let history_len = self.report.ops_checked;
        self.fold(history_len);
        self.report
    }
}

/// Runs one seed of the test workload with its fault profile (snapshots take
/// `cfg.snapshot_ticks` of virtual time, one command in four `cfg.apply_ticks`).
pub fn run_driver_seed(cfg: DriverSimConfig) -> Result<DriverSimReport, DriverSimFailure> {
    run_driver_seed_with(cfg, MemBackend::default())
}

/// [`run_driver_seed`] with the logs kept by `backend`.
pub fn run_driver_seed_with<B: LogBackend>(
    cfg: DriverSimConfig,
    backend: B,
) -> Result<DriverSimReport, DriverSimFailure> {
    let (keys, slow) = (cfg.keys, cfg.snapshot_ticks * UNITS_PER_TICK);
    let apply = cfg.apply_ticks * UNITS_PER_TICK;
    let mut sim = DriverSim::new(cfg, super::KvWorkload::new(keys), backend);
    let clock = sim.clock();
    sim.with_workload(|w| {
        w.slow_snapshots(clock.clone(), slow);
        w.slow_applies(clock, apply);
    });
    sim.run()
}

/// Runs one seed of any workload (another crate's state machine) with in-memory logs.
pub fn run_workload<W: Workload>(
    cfg: DriverSimConfig,
    workload: W,
) -> Result<DriverSimReport, DriverSimFailure> {
    DriverSim::new(cfg, workload, MemBackend::default()).run()
}
