//! [`LogFileBackend`]: raftline-core's driver simulator with every server's log in a [`LogFile`],
//! written through its real async path (`impl LogStore for LogFile`) and recovered after
//! every crash from a [crash image](super::crash_image) of what the crash left on disk.
//!
//! Each store runs with [`SyncWorker::Manual`]: no thread is started, and the simulator
//! decides when the queued writes run. A `persist` is timed like raftline-core's in-memory
//! `SimLog`: it joins the next group commit, which completes after a random latency with an
//! [`Event::DiskDone`]; at that event the store's queued jobs of the completed syncs run.
//! `compact` and `install_snapshot` run in the call, after every queued job, as the store
//! does them.
//!
//! The driver reads its log through the [`LogFile`] itself, which shows only what its
//! completed writes made durable. The simulator's checker takes a node's log to be everything
//! handed to the store, durable or not: the backend keeps a copy of that, a shadow
//! [`MemStorage`] per server, and answers [`LogBackend::written`] from it. Whenever no write
//! is queued, the store must read exactly as that copy (a mismatch panics, which fails the
//! run; it never changes what the driver reads).
//!
//! A second shadow per server holds what completed writes made durable. After a crash the
//! store must reopen and hold every entry of it (or have it compacted), with a hard state no
//! older than its; the writes in flight at the crash may or may not have landed.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use raftline_core::driver::LogStore;
use raftline_core::testing::driver_sim::{
    run_driver_seed_with, DriverSimConfig, DriverSimFailure, DriverSimReport, Event, LogBackend,
    World, WrittenView,
};
use raftline_core::{InitialState, MemStorage, Rng, Storage, StorageError, StorageMut};
use raftline_proto::{Entry, HardState, LogIndex, Membership, NodeId, Term};

use super::image::{crash_image_counted, durable, write_image, Files};
use crate::store::Inner;
use crate::{LogFile, Op, Options, Recorder, SyncWorker};

/// The simulator's shared world.
type SharedWorld = Arc<Mutex<World>>;

/// A bug planted on purpose, to show that the simulator catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// A crash also loses the newest synced batch write to a segment, as a disk that lies
    /// about `fdatasync` would.
    LoseSyncedWrite,
}

/// What the crashes of a run did to the logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashStats {
    /// Crashes.
    pub crashes: u64,
    /// Crashes with queued writes, which they interrupted (see
    /// [`LogFileBackend::crash_mid_write`]).
    pub mid_write: u64,
    /// Unsynced writes at crashes: each one lost, written whole or torn.
    pub unsynced_writes: u64,
    /// Unsynced writes a crash tore (some sectors written, others not).
    pub torn_writes: u64,
    /// Recoveries that cut off a torn batch at the end of the log.
    pub torn_tails: u64,
    /// Recoveries.
    pub recoveries: u64,
}

/// Every simulated server's log in a [`LogFile`] in its own directory under one root.
pub struct LogFileBackend {
    root: PathBuf,
    /// Removed when the backend is dropped.
    _temp: Option<tempfile::TempDir>,
    /// The first segment's size, smaller still, so that runs have segments of mixed sizes.
    pub segment_bytes_initial: u64,
    /// The segment size, small so that runs rotate and compact segments.
    pub segment_bytes_max: u64,
    /// Whether the stores call `fdatasync`. The crash model does not need it (it follows the
    /// recorded syncs), and it makes runs slower.
    pub sync: bool,
    /// At a crash, the writes queued and not run yet start running and the crash interrupts
    /// them at a random file operation (possibly before the first): the disk was in the
    /// middle of them. Otherwise they are lost before any of their data reaches the disk.
    pub crash_mid_write: bool,
    /// A bug to plant (to test the test).
    pub planted: Option<PlantedBug>,
    stats: Arc<Mutex<CrashStats>>,
    nodes: BTreeMap<NodeId, NodeDisk>,
}

/// One server's directory and what the backend knows of it.
struct NodeDisk {
    dir: PathBuf,
    /// Records the file operations since `base`.
    recorder: Recorder,
    /// The files the recorded operations started from (durable).
    base: Files,
    /// The backend's handle while the server is up (to run its queued writes).
    log: Option<LogFile>,
    state: Arc<Mutex<NodeState>>,
    /// Bumped at each crash.
    incarnation: u64,
    /// The entries of the writes in flight at the last crash: any prefix of them may have
    /// landed.
    in_flight: Vec<Vec<Entry>>,
    /// A problem found at the crash, reported when the server reopens.
    failure: Option<String>,
}

/// What a server's [`SimLogFile`] handles share with the backend.
struct NodeState {
    /// Every write handed to the log, durable or not: the node's log as the checker sees it
    /// ([`LogBackend::written`]), and the term before each appended entry. After a crash,
    /// what recovery found.
    written: MemStorage,
    /// The first index written since the store was last checked against `written`.
    unchecked_from: Option<LogIndex>,
    /// A write or an operation of the store failed: the store stopped following `written`
    /// (and refuses later writes), so it is no longer checked against it.
    store_failed: bool,
    /// What completed writes made durable.
    durable: MemStorage,
    /// Persists queued in the store and not run yet, in order.
    pending: VecDeque<Pending>,
    /// The last group commit: when its sync starts and ends.
    last_sync: (u64, u64),
    incarnation: u64,
    /// Every entry handed to the log, with the term of the entry before it.
    appended: Vec<(Entry, Term)>,
    /// Why the shadows no longer follow the store, if they do not: every later write fails.
    broken: Option<String>,
}

impl NodeState {
    /// Runs the oldest job queued in `log`, the write `p` (the oldest pending one).
    fn run_job(&mut self, log: &LogFile, p: &Pending) {
        match log.run_queued_job() {
            Some(Ok(())) => {
                if let Err(e) = apply_persist(&mut self.durable, &p.entries, p.hard_state) {
                    self.broken.get_or_insert(e.to_string());
                }
            }
            Some(Err(_)) => self.store_failed = true,
            None => {}
        }
    }

    /// Checks that `log` reads exactly as what was written to it, when no write is queued
    /// (then it holds every write): the same first and last index, compaction point, hard
    /// state and membership, and the same entries where written since the last check.
    /// Panics if not, which fails the run: the checker's view ([`LogBackend::written`]) would
    /// not be the node's log, or the store reads what was not written. Changes nothing.
    fn check_store(&mut self, id: NodeId, log: &LogFile) {
        if !self.pending.is_empty() || log.queued_jobs() > 0 {
            return;
        }
        if self.broken.is_some() || self.store_failed {
            return;
        }
        let from = self.unchecked_from.take();
        if let Err(e) = reads_as(log, &self.written, from) {
            panic!("{id}'s log does not read as what was written to it: {e}");
        }
    }
}

/// Whether `log` reads as `written`: see [`NodeState::check_store`]. Entries are compared
/// from `from` on (none if `None`).
fn reads_as(log: &LogFile, written: &MemStorage, from: Option<LogIndex>) -> Result<(), String> {
    let (first, last) = (log.first_index(), log.last_index());
    let want = (
        written.first_index().map_err(|e| e.to_string())?,
        written.last_index().map_err(|e| e.to_string())?,
    );
    if (first, last) != want {
        return Err(format!(
            "it holds {first}..={last}, what was written {}..={}",
            want.0, want.1
        ));
    }
    let (got, want) = (log.term(first.prev()), written.term(first.prev()));
    if got != want {
        return Err(format!(
            "the term of its compaction point {} is {got:?}, what was written says {want:?}",
            first.prev()
        ));
    }
    let (got, want) = (log.initial_state(), written.initial_state());
    if Ok(&got) != want.as_ref() {
        return Err(format!(
            "its hard state and membership are {got:?}, what was written says {want:?}"
        ));
    }
    let Some(from) = from
        .map(|from| from.max(first))
        .filter(|&from| from <= last)
    else {
        return Ok(());
    };
    let (got, want) = (
        log.entries(from, last.next(), usize::MAX),
        written.entries(from, last.next(), usize::MAX),
    );
    if got != want {
        return Err(format!(
            "its entries {from}..={last} are {got:?}, what was written says {want:?}"
        ));
    }
    Ok(())
}

/// A queued persist.
struct Pending {
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
    /// When its group commit's sync completes.
    done_at: u64,
}

impl LogFileBackend {
    /// Logs under `root` (a directory per server), which the backend keeps until dropped.
    pub fn new(root: tempfile::TempDir) -> LogFileBackend {
        let mut backend = LogFileBackend::in_dir(root.path());
        backend._temp = Some(root);
        backend
    }

    /// Logs under a new temporary directory, removed when the backend is dropped.
    pub fn in_temp_dir() -> std::io::Result<LogFileBackend> {
        Ok(LogFileBackend::new(tempfile::tempdir()?))
    }

    /// Logs under `root`, which the caller owns; segments from 4 KiB to 16 KiB, crashes that may interrupt
    /// a write, no `fdatasync`, no planted bug.
    pub fn in_dir(root: impl AsRef<Path>) -> LogFileBackend {
        LogFileBackend {
            root: root.as_ref().to_path_buf(),
            _temp: None,
            segment_bytes_initial: 4 << 10,
            segment_bytes_max: 16 << 10,
            sync: false,
            crash_mid_write: true,
            planted: None,
            stats: Arc::default(),
            nodes: BTreeMap::new(),
        }
    }

    /// What the crashes did so far; the handle stays valid after the simulator drops the
    /// backend.
    pub fn stats(&self) -> Arc<Mutex<CrashStats>> {
        Arc::clone(&self.stats)
    }

    /// With a planted bug.
    pub fn with_bug(mut self, bug: PlantedBug) -> LogFileBackend {
        self.planted = Some(bug);
        self
    }

    /// How a server's store is opened.
    fn options(&self, membership: &Membership, recorder: &Recorder) -> Options {
        Options {
            segment_bytes_initial: self.segment_bytes_initial,
            segment_bytes_max: self.segment_bytes_max,
            sync: self.sync,
            membership: membership.clone(),
            recorder: Some(recorder.clone()),
            sync_worker: SyncWorker::Manual,
            ..Options::default()
        }
    }
}

impl NodeDisk {
    fn new(dir: PathBuf, membership: &Membership) -> NodeDisk {
        let empty = MemStorage::new(membership.clone());
        NodeDisk {
            dir,
            recorder: Recorder::default(),
            base: Files::new(),
            log: None,
            state: Arc::new(Mutex::new(NodeState {
                written: empty.deep_clone(),
                unchecked_from: None,
                store_failed: false,
                durable: empty,
                pending: VecDeque::new(),
                last_sync: (0, 0),
                incarnation: 0,
                appended: Vec::new(),
                broken: None,
            })),
            incarnation: 0,
            in_flight: Vec::new(),
            failure: None,
        }
    }
}

impl LogBackend for LogFileBackend {
    type Log = SimLogFile;

    fn open(
        &mut self,
        id: NodeId,
        membership: &Membership,
        world: &SharedWorld,
    ) -> Result<SimLogFile, String> {
        let dir = self.root.join(format!("n{}", id.0));
        let recorder = self
            .nodes
            .entry(id)
            .or_insert_with(|| NodeDisk::new(dir, membership))
            .recorder
            .clone();
        let options = self.options(membership, &recorder);
        let node = self.nodes.get_mut(&id).expect("inserted above");
        if let Some(failure) = node.failure.take() {
            return Err(failure);
        }
        let log = LogFile::open(&node.dir, options)
            .map_err(|e| format!("{id}'s log does not open after its crash: {e}"))?;
        {
            let state = node.state.lock();
            check_recovered(&log, &state.durable, &node.in_flight)
                .map_err(|e| format!("{id}'s log lost a durable write in its crash: {e}"))?;
        }
        let mirror = mirror(&log).map_err(|e| format!("{id}'s log cannot be read: {e}"))?;
        {
            let mut state = node.state.lock();
            state.written = mirror.deep_clone();
            state.unchecked_from = None;
            state.store_failed = false;
            state.durable = mirror;
            state.pending.clear();
            state.last_sync = (0, 0);
            state.incarnation = node.incarnation;
            state.broken = None;
        }
        node.in_flight.clear();
        if node.incarnation > 0 {
            let mut stats = self.stats.lock();
            stats.recoveries += 1;
            stats.torn_tails += u64::from(log.recovery().torn_tail.is_some());
        }
        node.log = Some(log.clone());
        Ok(SimLogFile {
            id,
            log,
            state: Arc::clone(&node.state),
            world: Arc::clone(world),
        })
    }

    fn crash(&mut self, id: NodeId, rng: &mut Rng) {
        let (crash_mid_write, planted) = (self.crash_mid_write, self.planted);
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.incarnation += 1;
        {
            let mut state = node.state.lock();
            node.in_flight = state.pending.drain(..).map(|p| p.entries).collect();
            state.incarnation = node.incarnation;
        }
        let mut ops = node.recorder.ops();
        if let Some(log) = node.log.take() {
            if crash_mid_write && log.queued_jobs() > 0 {
                ops = interrupted_writes(&log, &node.recorder, ops.len(), rng);
                self.stats.lock().mid_write += 1;
            }
            let weak: Weak<Inner> = Arc::downgrade(log.inner());
            drop(log);
            if weak.upgrade().is_some() {
                node.failure = Some(format!("a handle to {id}'s log outlived its crash"));
                return;
            }
        }
        if planted == Some(PlantedBug::LoseSyncedWrite) {
            lose_newest_synced_batch(&mut ops);
        }
        let (image, counts) = crash_image_counted(&node.base, &ops, rng);
        {
            let mut stats = self.stats.lock();
            stats.crashes += 1;
            stats.unsynced_writes += counts.unsynced_writes;
            stats.torn_writes += counts.writes_torn;
        }
        if let Err(e) = write_image(&node.dir, &image) {
            node.failure = Some(format!("cannot write {id}'s crash image: {e}"));
        }
        node.base = image;
        node.recorder = Recorder::default();
    }

    fn sync_due(&mut self, id: NodeId, incarnation: u64, now: u64) {
        let Some(node) = self.nodes.get(&id) else {
            return;
        };
        let Some(log) = &node.log else { return };
        let mut state = node.state.lock();
        if state.incarnation != incarnation {
            return;
        }
        while state.pending.front().is_some_and(|p| p.done_at <= now) {
            let p = state.pending.pop_front().expect("checked");
            state.run_job(log, &p);
        }
        state.check_store(id, log);
    }

    fn durable_term(&self, id: NodeId, index: LogIndex) -> Option<Term> {
        self.nodes.get(&id)?.state.lock().durable.term(index).ok()
    }

    /// From the copy of what was written to `id`'s log (which `log` shares with the backend):
    /// every write handed to the store, durable or not, applied in order, with the
    /// compactions and snapshot installations the store did; after a crash, what recovery
    /// found.
    fn written(&self, _: NodeId, log: &SimLogFile, index: LogIndex) -> WrittenView {
        let state = log.state.lock();
        let written = &state.written;
        WrittenView {
            first: written.first_index().unwrap_or(LogIndex(1)),
            last: written.last_index().unwrap_or(LogIndex(0)),
            term: written.term(index).ok(),
        }
    }

    fn take_appended(&mut self, id: NodeId) -> Vec<(Entry, Term)> {
        self.nodes
            .get(&id)
            .map(|n| std::mem::take(&mut n.state.lock().appended))
            .unwrap_or_default()
    }
}

/// Runs the writes queued in `log` and returns the operations recorded, cut after the first
/// `completed` ones: a crash in the middle of those writes. Half the time the cut is anywhere
/// (also before the first of them, or after the last), half the time right after one of
/// their writes to a segment (if any), which is then in flight (not synced).
fn interrupted_writes(
    log: &LogFile,
    recorder: &Recorder,
    completed: usize,
    rng: &mut Rng,
) -> Vec<Op> {
    log.run_queued_jobs();
    let mut ops = recorder.ops();
    let after_writes: Vec<usize> = (completed..ops.len())
        .filter(|&i| matches!(&ops[i], Op::Write { file, .. } if file.ends_with(".seg")))
        .map(|i| i + 1)
        .collect();
    let cut = if !after_writes.is_empty() && rng.chance(0.5) {
        after_writes[rng.below(after_writes.len() as u64) as usize]
    } else {
        completed + rng.below((ops.len() - completed + 1) as u64) as usize
    };
    ops.truncate(cut);
    ops
}

/// Drops the newest synced write of a batch record to a segment (the planted bug).
fn lose_newest_synced_batch(ops: &mut Vec<Op>) {
    let durable = durable(ops);
    let newest = ops.iter().zip(&durable).rposition(|(op, &synced)| {
        synced
            && matches!(op, Op::Write { file, offset, data }
                if file.ends_with(".seg") && *offset >= 64 && data.iter().any(|&b| b != 0))
    });
    if let Some(at) = newest {
        ops.remove(at);
    }
}

/// Whether a recovered store holds what was durable before its crash: every entry of
/// `durable` (or a compaction past it), unless a write in flight at the crash replaced it
/// (then the log must match `durable` with some prefix of `in_flight` applied); a compaction
/// point and a hard state (term and vote; a commit index alone is written without a sync) no
/// older than `durable`'s.
fn check_recovered(
    log: &LogFile,
    durable: &MemStorage,
    in_flight: &[Vec<Entry>],
) -> Result<(), String> {
    let (got, want) = (log.initial_state().hard_state, durable.hard_state());
    if got.term < want.term
        || (got.term == want.term && want.vote.is_some() && got.vote != want.vote)
    {
        return Err(format!("its hard state went back from {want:?} to {got:?}"));
    }
    let first = durable.first_index().map_err(|e| e.to_string())?;
    if log.first_index() < first {
        return Err(format!(
            "its log starts at {} again, after a compaction up to {}",
            log.first_index(),
            first.prev()
        ));
    }
    let mut expected: BTreeMap<u64, Term> = durable
        .all_entries()
        .iter()
        .map(|e| (e.index.0, e.term))
        .collect();
    let mut first_mismatch = None;
    for landed in 0..=in_flight.len() {
        match mismatch(log, &expected) {
            None => return Ok(()),
            Some(m) => {
                first_mismatch.get_or_insert(m);
            }
        }
        if let Some(write) = in_flight.get(landed) {
            if let Some(start) = write.first() {
                expected.split_off(&start.index.0);
                expected.extend(write.iter().map(|e| (e.index.0, e.term)));
            }
        }
    }
    Err(first_mismatch.expect("at least one comparison"))
}

/// The first entry of `expected` (index to term) that `log` neither holds nor compacted.
fn mismatch(log: &LogFile, expected: &BTreeMap<u64, Term>) -> Option<String> {
    let first = log.first_index();
    expected.iter().find_map(|(&i, &term)| {
        let index = LogIndex(i);
        match log.term(index) {
            _ if index < first => None,
            Ok(t) if t == term => None,
            got => Some(format!(
                "the durable entry {index} (term {term}) is {got:?} after recovery (the log holds {first}..={})",
                log.last_index()
            )),
        }
    })
}

/// A [`MemStorage`] holding what `log` holds.
fn mirror(log: &LogFile) -> Result<MemStorage, StorageError> {
    let InitialState {
        hard_state,
        membership,
    } = log.initial_state();
    let mut mem = MemStorage::new(membership.clone());
    let first = log.first_index();
    StorageMut::install_snapshot(&mut mem, first.prev(), log.term(first.prev())?, &membership)?;
    mem.append(&log.entries(first, log.last_index().next(), usize::MAX)?)?;
    mem.set_hard_state(hard_state)?;
    Ok(mem)
}

/// Applies a persist to a shadow store; refuses what [`MemStorage`] would panic on.
fn apply_persist(
    store: &mut MemStorage,
    entries: &[Entry],
    hard_state: Option<HardState>,
) -> Result<(), StorageError> {
    if let Some(e) = entries.first() {
        let (first, last) = (store.first_index()?, store.last_index()?);
        if e.index < first || e.index > last.next() {
            return Err(StorageError::other(format!(
                "the shadow log {first}..={last} cannot take an append at {}",
                e.index
            )));
        }
        store.append(entries)?;
    }
    match hard_state {
        Some(hs) => store.set_hard_state(hs),
        None => Ok(()),
    }
}

/// A server's log in the simulator: a [`LogFile`] (reads and writes go to its own
/// implementations) whose queued writes run when the simulated disk's sync completes.
#[derive(Clone)]
pub struct SimLogFile {
    id: NodeId,
    log: LogFile,
    state: Arc<Mutex<NodeState>>,
    world: SharedWorld,
}

impl SimLogFile {
    /// The store.
    pub fn log_file(&self) -> &LogFile {
        &self.log
    }

    /// When a write submitted now completes: with the next group commit, as raftline-core's
    /// `SimLog` times it, scheduling an [`Event::DiskDone`] for each new sync.
    fn group_commit(&self, state: &mut NodeState) -> u64 {
        let mut world = self.world.lock();
        let now = world.now();
        let (start, end) = state.last_sync;
        if now < start {
            return end; // the next sync has not started: this write joins it
        }
        let max = world.disk_units_max.max(1);
        let start = now.max(end);
        let end = start + 1 + world.rng.below(max);
        state.last_sync = (start, end);
        world.schedule(end - now, Event::DiskDone(self.id, state.incarnation));
        end
    }

    /// Runs every queued write (they complete, in order), as the store's barrier would.
    fn run_queued(&self, state: &mut NodeState) {
        while let Some(p) = state.pending.pop_front() {
            state.run_job(&self.log, &p);
        }
        self.log.run_queued_jobs();
    }

    /// Runs a compaction or snapshot installation of the store (after every queued write, in
    /// the call) and, if it succeeds, applies it to the shadows.
    fn in_call(
        &self,
        op: impl FnOnce(&LogFile) -> BoxFuture<'static, Result<(), StorageError>>,
        shadow: impl Fn(&mut MemStorage) -> Result<(), StorageError>,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let mut state = self.state.lock();
        if let Some(why) = &state.broken {
            return broken(why);
        }
        self.run_queued(&mut state);
        let Some(result) = op(&self.log).now_or_never() else {
            return futures::future::ready(Err(StorageError::other(
                "the store did not finish the operation in the call",
            )))
            .boxed();
        };
        match &result {
            Ok(()) => {
                let shadows = shadow(&mut state.durable).and_then(|()| shadow(&mut state.written));
                if let Err(e) = shadows {
                    state.broken.get_or_insert(e.to_string());
                    return broken(&e.to_string());
                }
                state.check_store(self.id, &self.log);
            }
            Err(_) => state.store_failed = true,
        }
        futures::future::ready(result).boxed()
    }
}

/// A write refused because the shadows no longer follow the store.
fn broken(why: &str) -> BoxFuture<'static, Result<(), StorageError>> {
    let e = format!("the simulator's shadow of the log is broken: {why}");
    futures::future::ready(Err(StorageError::other(e))).boxed()
}

/// Every read goes to the [`LogFile`], unchanged.
impl Storage for SimLogFile {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Storage::initial_state(&self.log)
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        Storage::entries(&self.log, low, high, bytes_max)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        Storage::term(&self.log, index)
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Storage::first_index(&self.log)
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Storage::last_index(&self.log)
    }
}

impl LogStore for SimLogFile {
    fn persist(
        &self,
        entries: Vec<Entry>,
        hard_state: Option<HardState>,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let mut state = self.state.lock();
        if let Some(why) = &state.broken {
            return broken(why);
        }
        if let Some(first) = entries.first() {
            let before = state.written.term(first.index.prev()).unwrap_or(Term(0));
            let prev = std::iter::once(before).chain(entries.iter().map(|e| e.term));
            let seen: Vec<(Entry, Term)> = entries.iter().cloned().zip(prev).collect();
            state.appended.extend(seen);
        }
        let queued = self.log.queued_jobs();
        let write = LogStore::persist(&self.log, entries.clone(), hard_state);
        if self.log.queued_jobs() == queued {
            return write; // refused at once
        }
        if let Err(e) = apply_persist(&mut state.written, &entries, hard_state) {
            state.broken.get_or_insert(e.to_string());
            return broken(&e.to_string());
        }
        if let Some(first) = entries.first() {
            let from = state
                .unchecked_from
                .map_or(first.index, |f| f.min(first.index));
            state.unchecked_from = Some(from);
        }
        let done_at = self.group_commit(&mut state);
        state.pending.push_back(Pending {
            entries,
            hard_state,
            done_at,
        });
        write
    }

    fn compact(&self, up_to: LogIndex) -> BoxFuture<'static, Result<(), StorageError>> {
        let shadow = |s: &mut MemStorage| match s.last_index()? {
            last if up_to > last => Err(StorageError::other(format!(
                "the store compacted to {up_to}, past the shadow log's last entry {last}"
            ))),
            _ => StorageMut::compact(s, up_to),
        };
        self.in_call(|log| LogStore::compact(log, up_to), shadow)
    }

    fn install_snapshot(
        &self,
        index: LogIndex,
        term: Term,
        membership: Membership,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let m = membership.clone();
        self.in_call(
            |log| LogStore::install_snapshot(log, index, term, membership),
            |s| StorageMut::install_snapshot(s, index, term, &m),
        )
    }
}

/// Runs one seed of raftline-core's driver simulator (its test workload and fault profile) with
/// every server's log in a [`LogFile`] under a fresh temporary directory, removed afterwards.
pub fn run_driver_seed_on_files(cfg: DriverSimConfig) -> Result<DriverSimReport, DriverSimFailure> {
    let backend = LogFileBackend::in_temp_dir().map_err(|e| DriverSimFailure {
        seed: cfg.seed,
        step: 0,
        tick: 0,
        reason: format!("cannot create a temporary directory: {e}"),
    })?;
    run_driver_seed_with(cfg, backend)
}
