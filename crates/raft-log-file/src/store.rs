//! [`LogFile`]: the store, its group commit, compaction and reads.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};
use raftline_core::{InitialState, Storage, StorageError, StorageMut};
use raftline_proto::{Entry, HardState, LogIndex, Membership, Term};

use crate::error::{Error, Result};
use crate::format::{self, EntryPos, SEGMENT_HEADER_BYTES};
use crate::io::{Handle, Io, Recorder};
use crate::mmap::{self, SegmentMap};
use crate::persist::Worker;
use crate::recovery::{self, RecoveryReport};
use crate::state::{StateFile, StateRecord, STATE_FILE};

const LOCK_FILE: &str = "LOCK";

/// How to open a log directory.
#[derive(Clone, Debug)]
pub struct Options {
    /// The size of the first segment file of a log. Each later segment is preallocated to
    /// twice the size of the one before it, up to [`segment_bytes_max`](Self::segment_bytes_max):
    /// with the defaults, 1, 2, 4, ... 64 MiB. A value above `segment_bytes_max` means
    /// `segment_bytes_max` (every segment the same size, as before this option existed).
    ///
    /// The trade-off: a segment is preallocated (and, with
    /// [`zero_fill_segments`](Self::zero_fill_segments), written with zeros) when it is
    /// created, so its whole size is taken on disk before the log needs it. Small segments
    /// keep an empty or lightly used log small; large ones mean fewer segment files to
    /// create, fill, sync and sync the directory for, and fewer files in the directory. Growing
    /// from a small first segment gives a small log the first, and a busy one the second
    /// after a few rotations.
    pub segment_bytes_initial: u64,
    /// The largest size a segment file is preallocated to (see
    /// [`segment_bytes_initial`](Self::segment_bytes_initial)). A batch larger than the next
    /// segment would be gets a segment of its own, sized to fit.
    pub segment_bytes_max: u64,
    /// Sync writes (fdatasync). Turn off only for tests that model process crashes, not
    /// machine crashes.
    pub sync: bool,
    /// On a checksum failure before the tail, truncate the log there (and say what was
    /// dropped in [`LogFile::recovery`]) instead of refusing to open.
    pub repair: bool,
    /// The membership a new directory starts with. Ignored when the directory exists.
    pub membership: Membership,
    /// Fill each new segment with zeros (and sync it) before use, in a background thread
    /// that prepares the next segment ahead of time. Appends then overwrite allocated blocks
    /// instead of allocating at every write, which makes each sync cheaper.
    pub zero_fill_segments: bool,
    /// Record every file operation (for crash tests).
    pub recorder: Option<Recorder>,
    /// Who runs the writes of the async [`LogStore`](raftline_core::driver::LogStore) interface
    /// and prepares segments ahead of use: background threads, or the caller.
    pub sync_worker: SyncWorker,
}

/// Who does a store's background work: the writes of the async
/// [`LogStore`](raftline_core::driver::LogStore) interface, and preparing the next segment when
/// [`Options::zero_fill_segments`] is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncWorker {
    /// Background threads: a sync thread started on first use of the async interface, and a
    /// thread that prepares each next segment.
    #[default]
    Thread,
    /// No thread is ever started. Writes of the async interface are queued in call order
    /// until [`LogFile::run_queued_jobs`] (or [`LogFile::run_queued_job`]) runs them on the
    /// caller's thread; `compact` and `install_snapshot` of that interface run the queued
    /// writes first, in the call. Segments are prepared in line, when the previous one is
    /// put to use. For deterministic simulations.
    Manual,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes_initial: 1 << 20,
            segment_bytes_max: 64 << 20,
            sync: true,
            repair: false,
            membership: Membership::default(),
            zero_fill_segments: true,
            recorder: None,
            sync_worker: SyncWorker::Thread,
        }
    }
}

impl Options {
    /// The size of the first segment of a log.
    pub(crate) fn first_segment_bytes(&self) -> u64 {
        self.segment_bytes_initial.min(self.segment_bytes_max)
    }

    /// The size of the segment that follows one of `len` bytes: twice as large, within
    /// [`first_segment_bytes`](Self::first_segment_bytes) and `segment_bytes_max`. Segment
    /// sizes are read back from the files' lengths on open, so any mix of sizes reopens.
    pub(crate) fn segment_bytes_after(&self, len: u64) -> u64 {
        len.saturating_mul(2)
            .clamp(self.first_segment_bytes(), self.segment_bytes_max)
    }
}

/// A segment file, mapped.
pub(crate) struct Segment {
    pub(crate) name: String,
    pub(crate) map: Arc<SegmentMap>,
    /// The highest index any record in it has (superseded or not).
    pub(crate) max_index: LogIndex,
}

/// Where each entry is. Readers take it shared; the writer and compaction take it exclusive.
pub(crate) struct Index {
    /// The index of the first entry kept (compacted index + 1).
    pub(crate) first: LogIndex,
    /// The term of the entry at `first - 1`.
    pub(crate) base_term: Term,
    /// `slots[i]` locates entry `first + i`.
    pub(crate) slots: VecDeque<(u64, EntryPos)>,
    pub(crate) segments: BTreeMap<u64, Segment>,
}

impl Index {
    pub(crate) fn last(&self) -> LogIndex {
        self.first.plus(self.slots.len() as u64).prev()
    }

    /// Applies a batch: truncate from `first_index` (keeping nothing compacted in mind), then
    /// append. Returns an error for a gap.
    pub(crate) fn apply_batch(
        &mut self,
        seg: u64,
        first_index: LogIndex,
        entries: &[EntryPos],
    ) -> Result<(), String> {
        let last = self.last();
        if first_index > last.next() {
            return Err(format!(
                "batch starts at {first_index} but the log ends at {last}"
            ));
        }
        let max = first_index.plus(entries.len() as u64 - 1);
        if let Some(s) = self.segments.get_mut(&seg) {
            s.max_index = s.max_index.max(max);
        }
        // The batch replaces the log from `first_index` on. Entries at or before the
        // compaction point are gone whatever the batch says, but the truncation still holds.
        let from = first_index.max(self.first);
        self.slots.truncate((from.0 - self.first.0) as usize);
        let skip = (from.0 - first_index.0) as usize;
        if skip < entries.len() {
            self.slots.extend(entries[skip..].iter().map(|p| (seg, *p)));
        }
        Ok(())
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index.next() == self.first {
            return Ok(self.base_term);
        }
        if index < self.first {
            return Err(StorageError::Compacted(index));
        }
        self.slots
            .get((index.0 - self.first.0) as usize)
            .map(|(_, p)| p.term)
            .ok_or(StorageError::Unavailable(index))
    }
}

/// The segment being appended to.
struct Writer {
    segment: Handle,
    segment_id: u64,
    segment_len: u64,
    offset: u64,
    buf: Vec<u8>,
}

/// A place in the queue of appends; see [`LogFile::submit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// Appends waiting for the next sync (group commit).
#[derive(Default)]
struct Group {
    /// The merged batch of every append since the last write started.
    pending: Vec<Entry>,
    /// The last index once `pending` is written (the durable last index when empty).
    last: LogIndex,
    /// Tickets of appends waiting; `done` is the first ticket not yet durable.
    next_ticket: u64,
    done: u64,
    writing: bool,
    failed: Option<String>,
}

pub(crate) struct Inner {
    io: Io,
    options: Options,
    index: RwLock<Index>,
    state: Mutex<StateFile>,
    writer: Mutex<Writer>,
    group: Mutex<Group>,
    group_cond: Condvar,
    recovery: RecoveryReport,
    /// Where the jobs of the async [`LogStore`](raftline_core::driver::LogStore) interface go:
    /// the sync thread (started on first use) or the manual queue.
    pub(crate) worker: Mutex<Worker>,
    /// Held while a job of the manual queue runs.
    pub(crate) running: Mutex<()>,
    /// The next segment being prepared (in the background, or ready), and its id.
    preparing: Mutex<Option<(u64, Preparing)>>,
    _lock: File,
}

/// A created, synced and mapped segment file.
pub(crate) type NewSegment = (Handle, Segment, u64);

/// The next segment, prepared ahead of use.
enum Preparing {
    /// By a background thread ([`SyncWorker::Thread`]).
    Thread(std::thread::JoinHandle<Result<NewSegment>>),
    /// In line ([`SyncWorker::Manual`]).
    Ready(Result<NewSegment>),
}

impl Preparing {
    /// The prepared segment, once it is ready.
    fn wait(self) -> Result<NewSegment> {
        match self {
            Preparing::Thread(preparer) => preparer
                .join()
                .map_err(|_| Error::Failed("the segment preparer panicked".into()))?,
            Preparing::Ready(prepared) => prepared,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Do not leave a thread creating files in a directory nobody holds the lock of.
        if let Some((_, Preparing::Thread(preparer))) = self.preparing.get_mut().take() {
            let _ = preparer.join();
        }
    }
}

/// A durable Raft log in a directory: segment files of batch records, and a state file.
///
/// Cloning gives another handle to the same store. All methods take `&self` and may be called
/// from several threads; appends that arrive while a sync runs are written and synced together
/// by the next one.
#[derive(Clone)]
pub struct LogFile {
    inner: Arc<Inner>,
}

fn segment_name(id: u64) -> String {
    format!("{id:020}.seg")
}

impl LogFile {
    pub(crate) fn from_inner(inner: Arc<Inner>) -> LogFile {
        LogFile { inner }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Opens (or creates) the log in `dir`, recovering from whatever a crash left.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<LogFile> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let lock = lock_dir(dir)?;
        let io = Io::new(dir, options.recorder.clone(), options.sync);
        let mut state = if io.path(STATE_FILE).exists() {
            StateFile::open(&io)?
        } else {
            StateFile::create(
                &io,
                StateRecord {
                    membership: options.membership.clone(),
                    ..StateRecord::default()
                },
            )?
        };
        let recovered = recovery::recover(&io, &options, &state.record)?;
        let mut index = recovered.index;
        let report = recovered.report;
        let (segment, segment_id, segment_len, offset) = match recovered.tail {
            Some(t) => (t.handle, t.id, t.len, t.offset),
            None => {
                // Never below the first segment of the log: lower ids are what an installed
                // snapshot discarded.
                let id = index
                    .segments
                    .keys()
                    .next_back()
                    .map_or(state.record.first_segment.max(1), |id| id + 1);
                let size = options.first_segment_bytes();
                let (handle, seg, len) = create_segment(&io, id, size, false)?;
                index.segments.insert(id, seg);
                (handle, id, len, SEGMENT_HEADER_BYTES as u64)
            }
        };
        let last = index.last();
        check_commit(&io, &mut state, last, options.repair)?;
        let log = LogFile {
            inner: Arc::new(Inner {
                io,
                index: RwLock::new(index),
                state: Mutex::new(state),
                writer: Mutex::new(Writer {
                    segment,
                    segment_id,
                    segment_len,
                    offset,
                    buf: Vec::new(),
                }),
                group: Mutex::new(Group {
                    last,
                    ..Group::default()
                }),
                group_cond: Condvar::new(),
                recovery: report,
                worker: Mutex::new(Worker::new(options.sync_worker)),
                running: Mutex::new(()),
                preparing: Mutex::new(None),
                options,
                _lock: lock,
            }),
        };
        log.resume_preparing(recovered.prepared);
        Ok(log)
    }

    /// Sets up the next segment after opening: the one recovery found prepared ahead, or,
    /// if the segment appended to already holds data, a new one. An empty log prepares
    /// nothing: its next segment is prepared once this one takes its first batch (see
    /// `write_batch`).
    fn resume_preparing(&self, prepared: Option<NewSegment>) {
        let (id, len, offset) = {
            let w = self.inner.writer.lock();
            (w.segment_id, w.segment_len, w.offset)
        };
        match prepared {
            Some(prepared) => {
                *self.inner.preparing.lock() = Some((id + 1, Preparing::Ready(Ok(prepared))));
            }
            None if offset > SEGMENT_HEADER_BYTES as u64 => {
                self.prepare_next(id + 1, self.inner.options.segment_bytes_after(len));
            }
            None => {}
        }
    }

    /// What recovery found and did when this store was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.inner.io.dir
    }

    /// Appends `entries` (consecutive indexes) durably. If the first index is at or below the
    /// last index, the log from there is replaced (Raft's conflict rule). Returns once the
    /// entries are synced; appends from other threads that arrive meanwhile share one sync.
    pub fn append(&self, entries: &[Entry]) -> Result<()> {
        let ticket = self.submit(entries)?;
        self.wait_durable(ticket)
    }

    /// Queues `entries` for the next sync and returns at once. The order of `submit` calls is
    /// the order of the log. [`wait_durable`](Self::wait_durable) with the ticket returns once
    /// they are synced. A pipelined caller submits the next batch while one is being synced.
    pub fn submit(&self, entries: &[Entry]) -> Result<Ticket> {
        check_consecutive(entries)?;
        let inner = &*self.inner;
        let mut g = inner.group.lock();
        if let Some(why) = &g.failed {
            return Err(Error::Failed(why.clone()));
        }
        if let Some(first) = entries.first().map(|e| e.index) {
            let compacted = inner.index.read().first.prev();
            if first > g.last.next() {
                return Err(Error::Invalid(format!(
                    "append at {first} leaves a gap after {}",
                    g.last
                )));
            }
            if first <= compacted {
                return Err(Error::Invalid(format!(
                    "append at {first} rewrites the compacted prefix up to {compacted}"
                )));
            }
            merge_pending(&mut g.pending, entries);
            g.last = entries.last().expect("not empty").index;
        }
        let ticket = Ticket(g.next_ticket);
        g.next_ticket += 1;
        Ok(ticket)
    }

    /// Waits until the entries of `ticket` (and every earlier one) are synced, doing the
    /// write and sync itself if no other thread is.
    pub fn wait_durable(&self, ticket: Ticket) -> Result<()> {
        let inner = &*self.inner;
        let mut g = inner.group.lock();
        loop {
            if g.done > ticket.0 {
                return match &g.failed {
                    Some(why) => Err(Error::Failed(why.clone())),
                    None => Ok(()),
                };
            }
            if !g.writing {
                g.writing = true;
                let batch = std::mem::take(&mut g.pending);
                let upto = g.next_ticket;
                drop(g);
                let result = if batch.is_empty() {
                    Ok(())
                } else {
                    self.write_batch(&batch)
                };
                g = inner.group.lock();
                g.writing = false;
                g.done = upto;
                if let Err(e) = result {
                    // Fail-stop: a failed write or sync is never retried.
                    g.failed = Some(e.to_string());
                }
                inner.group_cond.notify_all();
                continue;
            }
            inner.group_cond.wait(&mut g);
        }
    }

    /// Writes one batch record and syncs it, then publishes the entries to readers.
    fn write_batch(&self, entries: &[Entry]) -> Result<()> {
        let inner = &*self.inner;
        let mut w = inner.writer.lock();
        let w = &mut *w;
        w.buf.clear();
        format::encode_batch(entries, &mut w.buf);
        let len = w.buf.len() as u64;
        if w.offset + len > w.segment_len {
            self.rotate(w, len)?;
        }
        let first_in_segment = w.offset == SEGMENT_HEADER_BYTES as u64;
        inner.io.write_at(&w.segment, w.offset, &w.buf)?;
        inner.io.sync(&w.segment)?;
        // Read the record back through the map: what readers will see is what was meant.
        let map = Arc::clone(&inner.index.read().segments[&w.segment_id].map);
        let view = match format::parse_batch(map.bytes(), w.offset as usize) {
            format::Parsed::Batch(v) => v,
            other => {
                return Err(Error::Corrupt {
                    path: w.segment.path.clone(),
                    offset: w.offset,
                    reason: format!("a batch read back right after writing is invalid: {other:?}"),
                })
            }
        };
        debug_assert_eq!(view.len as u64, len);
        let mut index = inner.index.write();
        index
            .apply_batch(w.segment_id, view.first_index, &view.entries)
            .map_err(Error::Invalid)?;
        drop(index);
        w.offset += len;
        if first_in_segment {
            // Prepared only once the segment is in use, so that an empty log (and every
            // reopening of one) takes one segment, not two.
            let size = inner.options.segment_bytes_after(w.segment_len);
            self.prepare_next(w.segment_id + 1, size);
        }
        Ok(())
    }

    /// Starts a new segment big enough for a record of `need` bytes.
    fn rotate(&self, w: &mut Writer, need: u64) -> Result<()> {
        let inner = &*self.inner;
        let mut id = w.segment_id + 1;
        let fits = |len: u64| len >= SEGMENT_HEADER_BYTES as u64 + need;
        let (handle, seg, len) = match self.take_prepared(id)? {
            Some(p) if fits(p.2) => p,
            other => {
                if let Some((_, empty, _)) = other {
                    // Too small for this batch: keep it as an empty segment, use the next id.
                    inner.index.write().segments.insert(id, empty);
                    id += 1;
                }
                let size = inner
                    .options
                    .segment_bytes_after(w.segment_len)
                    .max(SEGMENT_HEADER_BYTES as u64 + need);
                create_segment(&inner.io, id, size, false)?
            }
        };
        inner.index.write().segments.insert(id, seg);
        w.segment = handle;
        w.segment_id = id;
        w.segment_len = len;
        w.offset = SEGMENT_HEADER_BYTES as u64;
        Ok(())
    }

    /// The segment prepared in the background, if it is segment `id` (waiting until it is
    /// ready). A preparation of another id is waited for and dropped.
    fn take_prepared(&self, id: u64) -> Result<Option<NewSegment>> {
        let preparing = self.inner.preparing.lock().take();
        match preparing {
            Some((pid, preparer)) if pid == id => Ok(Some(preparer.wait()?)),
            Some((_, preparer)) => {
                let _ = preparer.wait();
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Runs `op` with the log to itself, after every append submitted before the call: those
    /// are written and synced first, and no append is written or submitted until `op`
    /// returns (`op` may move the end of the log, [`Group::last`]). A failure of `op` other
    /// than [`Error::Invalid`] is fatal, like a failed append: the store refuses later writes.
    fn exclusive<T>(&self, op: impl FnOnce(&mut Group) -> Result<T>) -> Result<T> {
        let inner = &*self.inner;
        let mut g = inner.group.lock();
        // Holding the group lock while no batch is being written: nobody else writes until it
        // is released (a writer marks itself under this lock), and `submit` waits for it.
        while g.writing {
            inner.group_cond.wait(&mut g);
        }
        if let Some(why) = &g.failed {
            return Err(Error::Failed(why.clone()));
        }
        let batch = std::mem::take(&mut g.pending);
        let flushed = if batch.is_empty() {
            Ok(())
        } else {
            self.write_batch(&batch)
        };
        // Every ticket issued so far is now durable, or failed with the batch.
        g.done = g.next_ticket;
        let result = match flushed {
            Ok(()) => op(&mut g),
            Err(e) => {
                g.failed = Some(e.to_string());
                Err(e)
            }
        };
        if let Err(e) = &result {
            if !matches!(e, Error::Invalid(_)) && g.failed.is_none() {
                g.failed = Some(e.to_string());
            }
        }
        inner.group_cond.notify_all();
        result
    }

    /// Starts preparing segment `id` of `size` bytes (zero-filled and synced), so that the
    /// next rotation only swaps files: in the background, or in line with
    /// [`SyncWorker::Manual`]. Nothing happens if a segment is already prepared or being
    /// prepared (one kept from before a reopen).
    fn prepare_next(&self, id: u64, size: u64) {
        let inner = &*self.inner;
        let mut slot = inner.preparing.lock();
        if !inner.options.zero_fill_segments || slot.is_some() {
            return;
        }
        let io = inner.io.clone();
        let preparing = match inner.options.sync_worker {
            SyncWorker::Manual => Preparing::Ready(create_segment(&io, id, size, true)),
            SyncWorker::Thread => {
                let preparer = std::thread::Builder::new()
                    .name("raft-log-prepare".into())
                    .spawn(move || create_segment(&io, id, size, true));
                // Preparing ahead is an optimisation: without a thread, rotation creates the
                // segment itself.
                match preparer {
                    Ok(handle) => Preparing::Thread(handle),
                    Err(_) => return,
                }
            }
        };
        *slot = Some((id, preparing));
    }
}

impl LogFile {
    /// The first index kept (the compacted index plus one).
    pub fn first_index(&self) -> LogIndex {
        self.inner.index.read().first
    }

    /// The last durable index.
    pub fn last_index(&self) -> LogIndex {
        self.inner.index.read().last()
    }

    /// The term of the entry at `index`; `first_index() - 1` answers the compaction point's
    /// term.
    pub fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        if index == LogIndex(0) {
            return Ok(Term(0));
        }
        self.inner.index.read().term(index)
    }

    /// The entries `low..high` (`high` exclusive), cut after about `bytes_max` bytes (at least
    /// one entry). Payloads point into the mapped segment (no copy) and stay valid while held,
    /// even after compaction or truncation.
    pub fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let index = self.inner.index.read();
        if low < index.first {
            return Err(StorageError::Compacted(low));
        }
        if high > index.last().next() {
            return Err(StorageError::Unavailable(high.prev()));
        }
        let mut out = Vec::with_capacity((high.0.saturating_sub(low.0)) as usize);
        let mut total = 0usize;
        for i in low.0..high.0 {
            let (seg, pos) = &index.slots[(i - index.first.0) as usize];
            let map = &index.segments[seg].map;
            let start = pos.offset as usize;
            let payload = mmap::slice(map, start, start + pos.len as usize);
            let entry =
                format::decode_entry(LogIndex(i), pos, payload).map_err(StorageError::other)?;
            total += entry.size_bytes();
            if total > bytes_max && !out.is_empty() {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// The persisted hard state and membership.
    pub fn initial_state(&self) -> InitialState {
        let state = self.inner.state.lock();
        InitialState {
            hard_state: state.record.hard_state,
            membership: state.record.membership.clone(),
        }
    }

    /// Persists the hard state (crash-atomically, synced).
    pub fn set_hard_state(&self, hard_state: HardState) -> Result<()> {
        self.update_state(|r| r.hard_state = hard_state)
    }

    /// Persists the membership (crash-atomically, synced).
    pub fn set_membership(&self, membership: Membership) -> Result<()> {
        self.update_state(|r| r.membership = membership)
    }

    fn update_state(&self, change: impl FnOnce(&mut StateRecord)) -> Result<()> {
        let mut state = self.inner.state.lock();
        let mut record = state.record.clone();
        change(&mut record);
        state.write(&self.inner.io, record)
    }

    /// Drops the entries up to and including `up_to`, which a snapshot covers. Entries
    /// submitted before are synced first, and appends wait while it runs. The compaction
    /// point and its term are recorded durably first; then whole segments that hold nothing
    /// past `up_to` are deleted, oldest first.
    pub fn compact(&self, up_to: LogIndex) -> Result<()> {
        self.exclusive(|_| self.compact_exclusive(up_to))
    }

    fn compact_exclusive(&self, up_to: LogIndex) -> Result<()> {
        let inner = &*self.inner;
        // Lock order: writer, then state, then index.
        let writer = inner.writer.lock();
        let (first, term) = {
            let index = inner.index.read();
            if up_to < index.first {
                return Ok(());
            }
            if up_to > index.last() {
                return Err(Error::Invalid(format!(
                    "compact to {up_to} past the last index {}",
                    index.last()
                )));
            }
            (index.first, index.term(up_to).expect("within the log"))
        };
        debug_assert!(first <= up_to);
        self.update_state(|r| {
            r.compacted_index = up_to;
            r.compacted_term = term;
        })?;
        let removable: Vec<(u64, String)> = {
            let mut index = inner.index.write();
            let drop = (up_to.0 - index.first.0 + 1) as usize;
            index.slots.drain(..drop);
            index.first = up_to.next();
            index.base_term = term;
            index
                .segments
                .iter()
                .take_while(|(&id, s)| id != writer.segment_id && s.max_index <= up_to)
                .map(|(&id, s)| (id, s.name.clone()))
                .collect()
        };
        if removable.is_empty() {
            return Ok(());
        }
        for (_, name) in &removable {
            inner.io.remove(name)?;
        }
        inner.io.sync_dir()?;
        let mut index = inner.index.write();
        for (id, _) in removable {
            index.segments.remove(&id);
        }
        Ok(())
    }

    /// Makes the log continue after an installed snapshot that covers everything up to
    /// (`index`, `term`) and whose cluster configuration is `membership`. Entries submitted
    /// before are synced first, and appends wait while it runs.
    ///
    /// If the log holds that entry (same index and term), or is compacted past `index`
    /// (`index < first_index()`), nothing changes: the entries agree with the snapshot.
    /// Otherwise every entry is discarded, and the log continues at `index + 1` with
    /// `term(index) == term` and `membership` as the persisted membership. `index` may be
    /// anywhere past the compaction point, also far past the last index. Durable at return.
    ///
    /// On disk, one synced state write records the new compaction point, the membership and
    /// the id of a fresh segment from which the log now starts: every older segment is dead
    /// from then on (recovery deletes them, whatever they hold). Then the writer moves to that
    /// fresh segment, the old segment files are removed and the directory is synced. A crash
    /// before the state write lands reopens the old log; after it, the empty log after the
    /// snapshot.
    ///
    /// Refused ([`Error::Invalid`]) when it would discard committed entries: the persisted
    /// commit index is past `index` and the log's entry at `index` has another term.
    pub fn install_snapshot(
        &self,
        index: LogIndex,
        term: Term,
        membership: &Membership,
    ) -> Result<()> {
        let inner = &*self.inner;
        self.exclusive(|g| {
            // Lock order: writer, then state, then index.
            let mut w = inner.writer.lock();
            {
                let log = inner.index.read();
                if index < log.first || log.term(index).ok() == Some(term) {
                    return Ok(());
                }
            }
            let commit = inner.state.lock().record.hard_state.commit;
            if commit > index {
                return Err(Error::Invalid(format!(
                    "installing a snapshot at index {index} (term {term}) would discard the committed entries up to {commit}"
                )));
            }
            let fresh = w.segment_id + 1;
            self.update_state(|r| {
                r.compacted_index = index;
                r.compacted_term = term;
                r.membership = membership.clone();
                r.first_segment = fresh;
            })?;
            let (handle, seg, len) = match self.take_prepared(fresh)? {
                Some(prepared) => prepared,
                None => {
                    let size = inner.options.segment_bytes_after(w.segment_len);
                    create_segment(&inner.io, fresh, size, false)?
                }
            };
            let stale: Vec<String> = {
                let mut log = inner.index.write();
                log.slots.clear();
                log.first = index.next();
                log.base_term = term;
                let old = std::mem::take(&mut log.segments);
                log.segments.insert(fresh, seg);
                old.into_values().map(|s| s.name).collect()
            };
            w.segment = handle;
            w.segment_id = fresh;
            w.segment_len = len;
            w.offset = SEGMENT_HEADER_BYTES as u64;
            g.last = index;
            // Readers holding entries of these keep their maps; the files go.
            for name in &stale {
                inner.io.remove(name)?;
            }
            inner.io.sync_dir()?;
            // The next segment is prepared once the fresh one takes its first batch.
            Ok(())
        })
    }

    /// How many segment files the store has.
    pub fn segment_count(&self) -> usize {
        self.inner.index.read().segments.len()
    }
}

fn to_storage_error(e: Error) -> StorageError {
    StorageError::other(e)
}

impl Storage for LogFile {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(LogFile::initial_state(self))
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        LogFile::entries(self, low, high, bytes_max)
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        LogFile::term(self, index)
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(LogFile::first_index(self))
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(LogFile::last_index(self))
    }
}

impl StorageMut for LogFile {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        LogFile::append(self, entries).map_err(to_storage_error)
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        LogFile::set_hard_state(self, hard_state).map_err(to_storage_error)
    }

    fn compact(&mut self, up_to: LogIndex) -> Result<(), StorageError> {
        LogFile::compact(self, up_to).map_err(to_storage_error)
    }

    fn install_snapshot(
        &mut self,
        index: LogIndex,
        term: Term,
        membership: &Membership,
    ) -> Result<(), StorageError> {
        LogFile::install_snapshot(self, index, term, membership).map_err(to_storage_error)
    }
}

/// Refuses a commit index past the last entry of the recovered log (committed entries are
/// missing), or with `repair` moves it back to that entry.
fn check_commit(io: &Io, state: &mut StateFile, last: LogIndex, repair: bool) -> Result<()> {
    if state.record.hard_state.commit <= last {
        return Ok(());
    }
    if !repair {
        return Err(Error::Corrupt {
            path: io.path(STATE_FILE),
            offset: 0,
            reason: format!(
                "the commit index {} is past the last entry {last} in the log: committed entries are missing",
                state.record.hard_state.commit
            ),
        });
    }
    let mut record = state.record.clone();
    record.hard_state.commit = last;
    state.write(io, record)
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path: PathBuf = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked { path }),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
    }
}

/// Zeros are written in chunks of this size when a segment is filled before use.
const ZERO_FILL_CHUNK_BYTES: u64 = 1 << 20;

/// Creates, preallocates (sparse, or zero-filled when `zero_fill`) and syncs a segment file
/// with its header, and maps it.
pub(crate) fn create_segment(io: &Io, id: u64, size: u64, zero_fill: bool) -> Result<NewSegment> {
    let name = segment_name(id);
    let handle = io.create(&name)?;
    io.set_len(&handle, size)?;
    if zero_fill {
        let zeros = vec![0u8; ZERO_FILL_CHUNK_BYTES.min(size) as usize];
        let mut at = 0;
        while at < size {
            let n = (size - at).min(zeros.len() as u64) as usize;
            io.write_at(&handle, at, &zeros[..n])?;
            at += n as u64;
        }
    }
    io.write_at(&handle, 0, &format::segment_header(id))?;
    io.sync(&handle)?;
    io.sync_dir()?;
    let map = SegmentMap::new(&handle.file).map_err(|e| Error::io("map", &handle.path, e))?;
    let segment = Segment {
        name,
        map: Arc::new(map),
        max_index: LogIndex(0),
    };
    Ok((handle, segment, size))
}

pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
}

fn check_consecutive(entries: &[Entry]) -> Result<()> {
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index.next() {
            return Err(Error::Invalid(format!(
                "entries must have consecutive indexes: {} follows {}",
                pair[1].index, pair[0].index
            )));
        }
    }
    Ok(())
}

/// Merges an append into the pending batch with Raft's conflict rule, so that one sync writes
/// one batch record whatever the number of appends it covers.
fn merge_pending(pending: &mut Vec<Entry>, entries: &[Entry]) {
    let first = entries[0].index;
    match pending.first().map(|e| e.index) {
        Some(start) if first >= start => pending.truncate((first.0 - start.0) as usize),
        _ => pending.clear(),
    }
    pending.extend_from_slice(entries);
}
