//! The node's view of its log: the durable part in [`Storage`] plus the unstable tail that
//! has been appended in memory but not yet acknowledged durable by the application.

use raftline_proto::{Entry, LogIndex, Term};

use crate::error::StorageError;
use crate::storage::{limit_bytes, prefix_within, Storage};

/// The log of one node.
pub(crate) struct RaftLog<S> {
    pub(crate) storage: S,
    /// Entries from `unstable_offset` on, not yet known durable. They take precedence over
    /// whatever `storage` holds at the same indexes (a truncation the application has not
    /// persisted yet).
    unstable: Vec<Entry>,
    unstable_offset: LogIndex,
    /// The last unstable index already handed to the application in a `Ready`.
    /// Invariant: `unstable_offset - 1 <= handed <= last_index()`.
    handed: LogIndex,
    /// The highest index known durable and equal to this log.
    /// Invariant: `persisted <= last_index()`.
    pub(crate) persisted: LogIndex,
    /// Invariant: `committed <= last_index()`; it never decreases.
    pub(crate) committed: LogIndex,
    /// The last index handed out for applying. Invariant: `applied <= applying <= committed`.
    pub(crate) applying: LogIndex,
    /// The last index the application reported applied.
    pub(crate) applied: LogIndex,
    /// The last entry a snapshot covers, below which nothing is readable: the store's
    /// compaction point at start, or a snapshot installed since (which the store may not
    /// reflect until the install is persisted).
    floor: (LogIndex, Term),
}

impl<S: Storage> RaftLog<S> {
    pub(crate) fn new(
        storage: S,
        committed: LogIndex,
        applied: LogIndex,
    ) -> Result<Self, StorageError> {
        let last = storage.last_index()?;
        let first = storage.first_index()?;
        let floor_term = if first.prev() == LogIndex(0) {
            Term(0)
        } else {
            storage.term(first.prev())?
        };
        // Everything up to the compaction point, and everything the state machine applied
        // (restored from a snapshot), is committed.
        let applied = applied.max(first.prev());
        assert!(
            applied <= last,
            "the state machine applied {applied}, past the log's last index {last}: install the snapshot in the log store first"
        );
        let committed = committed.max(applied);
        assert!(
            committed <= last,
            "the persisted commit index {committed} is past the durable log's last index {last}"
        );
        Ok(RaftLog {
            floor: (first.prev(), floor_term),
            storage,
            unstable: Vec::new(),
            unstable_offset: last.next(),
            handed: last,
            persisted: last,
            committed,
            applying: applied,
            applied,
        })
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        if self.unstable.is_empty() {
            self.unstable_offset.prev()
        } else {
            self.unstable_offset.plus(self.unstable.len() as u64 - 1)
        }
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        let stored = self
            .storage
            .first_index()
            .unwrap_or_else(|e| panic!("storage failed: {e}"));
        stored.max(self.floor.0.next())
    }

    pub(crate) fn last_term(&self) -> Term {
        self.term(self.last_index())
            .expect("the last entry always has a term")
    }

    /// The term at `index`, or `None` when the index is compacted or past the end.
    pub(crate) fn term(&self, index: LogIndex) -> Option<Term> {
        if index >= self.unstable_offset {
            return self
                .unstable
                .get((index.0 - self.unstable_offset.0) as usize)
                .map(|e| e.term);
        }
        if index == LogIndex(0) {
            return Some(Term(0));
        }
        if index <= self.floor.0 {
            return (index == self.floor.0).then_some(self.floor.1);
        }
        match self.storage.term(index) {
            Ok(t) => Some(t),
            Err(StorageError::Compacted(_)) | Err(StorageError::Unavailable(_)) => None,
            Err(e) => panic!("storage failed: {e}"),
        }
    }

    pub(crate) fn match_term(&self, index: LogIndex, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as up-to-date as this
    /// one (§5.4.1).
    pub(crate) fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index())
    }

    /// The entries `low..=high`, at most `count_max` of them and about `bytes_max` bytes (at
    /// least one). `Err(Compacted)` when `low` is compacted.
    pub(crate) fn entries(
        &self,
        low: LogIndex,
        high: LogIndex,
        count_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        if low > high {
            return Ok(Vec::new());
        }
        if low <= self.floor.0 {
            return Err(StorageError::Compacted(low));
        }
        let high = high.min(low.plus(count_max as u64 - 1));
        let mut out = Vec::new();
        if low < self.unstable_offset {
            let stored_high = high.min(self.unstable_offset.prev());
            out = self.storage.entries(low, stored_high.next(), bytes_max)?;
            if out.last().map(|e| e.index) != Some(stored_high) {
                return Ok(out); // the byte limit cut the stored part short
            }
        }
        if high >= self.unstable_offset {
            let from = low.max(self.unstable_offset);
            let a = (from.0 - self.unstable_offset.0) as usize;
            let b = (high.0 - self.unstable_offset.0) as usize + 1;
            let tail = &self.unstable[a..b];
            if out.is_empty() {
                out.extend_from_slice(limit_bytes(tail, bytes_max));
            } else {
                let used: usize = out.iter().map(Entry::size_bytes).sum();
                out.extend_from_slice(prefix_within(tail, bytes_max.saturating_sub(used)));
            }
        }
        Ok(out)
    }

    /// Appends entries that directly follow the last index (the leader's own proposals).
    pub(crate) fn append(&mut self, entries: Vec<Entry>) {
        if let Some(first) = entries.first() {
            assert_eq!(
                first.index,
                self.last_index().next(),
                "appended entries must follow the last index"
            );
            if self.unstable.is_empty() {
                self.unstable_offset = first.index;
            }
            self.unstable.extend(entries);
        }
    }

    /// Replaces the log from `entries[0].index` on. Truncating a committed entry would break
    /// State Machine Safety, so it is refused with a panic.
    pub(crate) fn truncate_and_append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let at = first.index;
        assert!(
            at > self.committed,
            "State Machine Safety: truncating at {at} would discard committed entries (commit index {})",
            self.committed
        );
        assert!(
            at <= self.last_index().next(),
            "append at {at} leaves a gap"
        );
        if at >= self.unstable_offset {
            self.unstable
                .truncate((at.0 - self.unstable_offset.0) as usize);
        } else {
            self.unstable.clear();
            self.unstable_offset = at;
        }
        if self.unstable.is_empty() {
            self.unstable_offset = at;
        }
        self.unstable.extend_from_slice(entries);
        self.handed = self.handed.min(at.prev());
        self.persisted = self.persisted.min(at.prev());
    }

    /// The unstable entries not yet handed to the application, marking them handed.
    pub(crate) fn take_unhanded(&mut self) -> Vec<Entry> {
        let from = self.handed.next().max(self.unstable_offset);
        let a = (from.0 - self.unstable_offset.0) as usize;
        let out = self.unstable[a.min(self.unstable.len())..].to_vec();
        self.handed = self.last_index();
        out
    }

    pub(crate) fn has_unhanded(&self) -> bool {
        self.handed < self.last_index()
    }

    /// The application made everything up to (`index`, `term`) durable.
    pub(crate) fn stable_to(&mut self, index: LogIndex, term: Term) {
        if self.term(index) != Some(term) {
            // A newer leader replaced the entry while it was being written; the replacement
            // will be acknowledged by a later Ready.
            return;
        }
        if index >= self.unstable_offset {
            let drop = (index.0 - self.unstable_offset.0 + 1) as usize;
            self.unstable.drain(..drop);
            self.unstable_offset = index.next();
        }
        self.persisted = self.persisted.max(index);
    }

    /// Raises the commit index; it never goes down.
    pub(crate) fn commit_to(&mut self, index: LogIndex) -> bool {
        if index <= self.committed {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit index {index} past the last index {}",
            self.last_index()
        );
        self.committed = index;
        true
    }

    /// Hands out the committed, durable entries not yet handed out for applying (at most
    /// `count_max`).
    pub(crate) fn take_committed(&mut self, count_max: usize) -> Vec<Entry> {
        let high = self.committed.min(self.persisted);
        if high <= self.applying {
            return Vec::new();
        }
        let out = self
            .entries(self.applying.next(), high, count_max, usize::MAX)
            .unwrap_or_else(|e| panic!("committed entries must be readable: {e}"));
        if let Some(last) = out.last() {
            self.applying = last.index;
        }
        out
    }

    pub(crate) fn has_next_committed(&self) -> bool {
        self.committed.min(self.persisted) > self.applying
    }

    /// The application applied everything up to `index`.
    pub(crate) fn applied_to(&mut self, index: LogIndex) {
        assert!(
            index <= self.applying,
            "State Machine Safety: applied {index} was never handed out (handed up to {})",
            self.applying
        );
        self.applied = self.applied.max(index);
    }

    /// A snapshot covering everything up to (`index`, `term`) was installed (the state
    /// machine holds it). If the log holds that entry, the entries after it stay; otherwise
    /// the whole log is discarded and continues at `index + 1`. Either way `index` is
    /// committed and applied. Returns whether the log was kept.
    pub(crate) fn restore(&mut self, index: LogIndex, term: Term) -> bool {
        assert!(
            index > self.committed,
            "a snapshot at {index} is already covered by the commit index {}",
            self.committed
        );
        let keep = self.match_term(index, term);
        if !keep {
            self.unstable.clear();
            self.unstable_offset = index.next();
            self.handed = index;
            self.persisted = index;
            self.floor = (index, term);
        }
        self.committed = index;
        self.applying = index;
        self.applied = index;
        keep
    }

    /// The first index of the run of entries that share the term at `index`, going back no
    /// further than the first index kept.
    pub(crate) fn first_index_of_term(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term(index) else {
            return index;
        };
        let floor = self.first_index();
        let mut i = index;
        while i > floor && self.term(i.prev()) == Some(term) {
            i = i.prev();
        }
        i
    }

    /// The last index at or below `index` whose term is at most `term`, used by the leader to
    /// skip a conflicting term in one round trip.
    pub(crate) fn last_index_with_term_at_most(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut i = index.min(self.last_index());
        while i > LogIndex(0) {
            match self.term(i) {
                Some(t) if t <= term => return i,
                Some(_) => i = i.prev(),
                None => return i,
            }
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use raftline_proto::{Entry, LogIndex, Membership, Term};

    use super::RaftLog;
    use crate::storage::{MemStorage, StorageMut};

    fn entry(i: u64) -> Entry {
        Entry::normal(Term(1), LogIndex(i), vec![0u8; 100])
    }

    #[test]
    fn entries_across_stable_and_unstable_respect_the_byte_limit() {
        let mut store = MemStorage::new(Membership::default());
        store.append(&[entry(1), entry(2)]).unwrap();
        let mut log = RaftLog::new(store, LogIndex(0), LogIndex(0)).unwrap();
        log.append(vec![entry(3), entry(4)]);
        let one = entry(1).size_bytes();
        let got = |bytes| {
            log.entries(LogIndex(1), LogIndex(4), 100, bytes)
                .unwrap()
                .len()
        };
        assert_eq!(got(0), 1, "at least one entry");
        assert_eq!(got(2 * one), 2, "the stored part alone fills the budget");
        assert_eq!(
            got(3 * one),
            3,
            "the budget continues into the unstable tail"
        );
        assert_eq!(got(usize::MAX), 4);
        // Starting inside the unstable tail still returns at least one entry.
        assert_eq!(
            log.entries(LogIndex(4), LogIndex(4), 100, 0).unwrap().len(),
            1
        );
        assert_eq!(
            log.entries(LogIndex(1), LogIndex(4), 3, usize::MAX)
                .unwrap()
                .len(),
            3
        );
    }
}
