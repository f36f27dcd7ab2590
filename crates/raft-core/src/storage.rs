//! What the core reads from stable storage, and an in-memory store.
//!
//! The core never writes: the application persists what a [`Ready`](crate::Ready) hands it
//! (through [`StorageMut`] or its own means) and the core reads the log back through
//! [`Storage`]. Entries the core holds that are not yet durable live in the core's own
//! unstable buffer, not here.

use std::sync::Arc;

use parking_lot::RwLock;
use raftline_proto::{Entry, HardState, LogIndex, Membership, Term};

use crate::error::StorageError;

/// The state a node starts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    /// The persisted term, vote and commit index.
    pub hard_state: HardState,
    /// The cluster configuration.
    pub membership: Membership,
}

/// Read access to a durable Raft log.
///
/// Indexes: the store keeps entries `first_index()..=last_index()`; `term(first_index() - 1)`
/// is also answered (it is the term of the last entry a snapshot covers, or 0 for an empty
/// log). An empty log has `first_index() == last_index() + 1`.
pub trait Storage {
    /// The hard state and membership to start from.
    fn initial_state(&self) -> Result<InitialState, StorageError>;

    /// The entries `low..high` (`high` exclusive), stopping early once their total
    /// [`size_bytes`](Entry::size_bytes) would exceed `bytes_max`; at least one entry is
    /// returned when the range is not empty. `Compacted` if `low < first_index()`,
    /// `Unavailable` if `high > last_index() + 1`.
    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StorageError>;

    /// The term of the entry at `index`, for `first_index() - 1 <= index <= last_index()`.
    fn term(&self, index: LogIndex) -> Result<Term, StorageError>;

    /// The index of the first entry kept.
    fn first_index(&self) -> Result<LogIndex, StorageError>;

    /// The index of the last entry kept (`first_index() - 1` when empty).
    fn last_index(&self) -> Result<LogIndex, StorageError>;
}

/// The write side of a store: what an application does with a `Ready`.
pub trait StorageMut: Storage {
    /// Appends `entries` (consecutive indexes). If `entries[0].index` is not past the last
    /// index, the suffix from there is discarded first (Raft's conflict rule). The entries
    /// must start at most at `last_index() + 1`. Durable when this returns.
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;

    /// Persists the hard state. Durable when this returns.
    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError>;

    /// Discards the entries up to and including `up_to` (a snapshot covers them); the term at
    /// `up_to` is remembered. `up_to` must be at most `last_index()`.
    fn compact(&mut self, up_to: LogIndex) -> Result<(), StorageError>;

    /// A snapshot covering everything up to (`index`, `term`) was installed: make the log
    /// continue after it. If the log holds that entry, or is compacted past `index`, nothing
    /// changes (the entries agree with the snapshot). Otherwise every entry is discarded, the
    /// log continues at `index + 1` with `term(index) == term`, and the store's membership
    /// becomes `membership`. Durable when this returns.
    fn install_snapshot(
        &mut self,
        index: LogIndex,
        term: Term,
        membership: &Membership,
    ) -> Result<(), StorageError>;
}

/// An in-memory store. Cloning shares the same log, so a simulator can keep a handle on what a
/// node has persisted.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    inner: Arc<RwLock<MemLog>>,
}

#[derive(Debug, Default)]
struct MemLog {
    state: InitialState,
    /// Index and term of the last compacted entry (0, 0 when nothing was compacted).
    base_index: LogIndex,
    base_term: Term,
    /// Invariant: `entries[i].index == base_index + 1 + i`.
    entries: Vec<Entry>,
}

impl MemLog {
    fn last_index(&self) -> LogIndex {
        self.base_index.plus(self.entries.len() as u64)
    }

    fn position(&self, index: LogIndex) -> usize {
        (index.0 - self.base_index.0 - 1) as usize
    }
}

impl MemStorage {
    /// An empty store whose cluster is `membership`.
    pub fn new(membership: Membership) -> MemStorage {
        let store = MemStorage::default();
        store.inner.write().state.membership = membership;
        store
    }

    /// A copy of every entry kept.
    pub fn all_entries(&self) -> Vec<Entry> {
        self.inner.read().entries.clone()
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> HardState {
        self.inner.read().state.hard_state
    }

    /// A deep copy that no longer shares the log with `self`.
    pub fn deep_clone(&self) -> MemStorage {
        let inner = self.inner.read();
        MemStorage {
            inner: Arc::new(RwLock::new(MemLog {
                state: inner.state.clone(),
                base_index: inner.base_index,
                base_term: inner.base_term,
                entries: inner.entries.clone(),
            })),
        }
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(self.inner.read().state.clone())
    }

    fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let log = self.inner.read();
        if low <= log.base_index {
            return Err(StorageError::Compacted(low));
        }
        if high > log.last_index().next() {
            return Err(StorageError::Unavailable(high.prev()));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let range = &log.entries[log.position(low)..log.position(high)];
        Ok(limit_bytes(range, bytes_max).to_vec())
    }

    fn term(&self, index: LogIndex) -> Result<Term, StorageError> {
        let log = self.inner.read();
        if index < log.base_index {
            return Err(StorageError::Compacted(index));
        }
        if index == log.base_index {
            return Ok(log.base_term);
        }
        if index > log.last_index() {
            return Err(StorageError::Unavailable(index));
        }
        Ok(log.entries[log.position(index)].term)
    }

    fn first_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.inner.read().base_index.next())
    }

    fn last_index(&self) -> Result<LogIndex, StorageError> {
        Ok(self.inner.read().last_index())
    }
}

impl StorageMut for MemStorage {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let mut log = self.inner.write();
        assert!(
            first.index > log.base_index,
            "append at {} before the compacted prefix ending at {}",
            first.index,
            log.base_index
        );
        assert!(
            first.index <= log.last_index().next(),
            "append at {} leaves a gap after {}",
            first.index,
            log.last_index()
        );
        let keep = log.position(first.index);
        log.entries.truncate(keep);
        log.entries.extend_from_slice(entries);
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StorageError> {
        self.inner.write().state.hard_state = hard_state;
        Ok(())
    }

    fn compact(&mut self, up_to: LogIndex) -> Result<(), StorageError> {
        let mut log = self.inner.write();
        if up_to <= log.base_index {
            return Ok(());
        }
        assert!(
            up_to <= log.last_index(),
            "compact to {up_to} beyond the last index {}",
            log.last_index()
        );
        let cut = log.position(up_to) + 1;
        log.base_term = log.entries[cut - 1].term;
        log.base_index = up_to;
        log.entries.drain(..cut);
        Ok(())
    }

    fn install_snapshot(
        &mut self,
        index: LogIndex,
        term: Term,
        membership: &Membership,
    ) -> Result<(), StorageError> {
        if index <= self.inner.read().base_index || self.term(index).ok() == Some(term) {
            return Ok(());
        }
        let mut log = self.inner.write();
        log.entries.clear();
        log.base_index = index;
        log.base_term = term;
        log.state.membership = membership.clone();
        Ok(())
    }
}

/// The longest prefix of `entries` whose total size stays within `bytes_max`, but at least one
/// entry.
pub fn limit_bytes(entries: &[Entry], bytes_max: usize) -> &[Entry] {
    let fitting = prefix_within(entries, bytes_max);
    &entries[..fitting.len().max(entries.len().min(1))]
}

/// The longest prefix of `entries` whose total size stays within `bytes_max` (possibly empty).
pub(crate) fn prefix_within(entries: &[Entry], bytes_max: usize) -> &[Entry] {
    let mut total = 0usize;
    for (i, e) in entries.iter().enumerate() {
        total += e.size_bytes();
        if total > bytes_max {
            return &entries[..i];
        }
    }
    entries
}
