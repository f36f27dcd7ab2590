//! The key space with its history, as etcd's MVCC store keeps it.
//!
//! Every change is a [`Record`] at a [`Rev`]: the main revision of the request that made it
//! (one per put, delete, revoke or transaction that changes something) and a sub-revision
//! counting the changes within that request. `history` holds the records in revision order;
//! `index` lists, per key, the revisions of its records (puts and tombstones), ascending.
//!
//! Invariants (checked by `KeySpace::check` in tests):
//! - every revision in `index` names a record of the same key in `history`, and every record
//!   of `history` is listed in `index` under its key;
//! - every revision is at most the current revision, and above the compaction point unless
//!   it is a key's newest put at or below it (kept so that reads at the compaction point
//!   still see the key).
//!
//! Reads at a revision `r` see, per key, its newest record at or below `r`; a read below the
//! compaction point fails with [`KvError::Compacted`], above the current revision with
//! [`KvError::FutureRevision`].

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::{range_bounds, KeyValue, KvError};

/// A position in the history: the request's main revision and the change's place in it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Rev {
    /// The store's revision after the request.
    pub main: i64,
    /// The change's position within the request (from 0).
    pub sub: i64,
}

/// One change to a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The key's state after a put.
    Put(KeyValue),
    /// The key was deleted.
    Tombstone(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Record {
    /// The key the record is about.
    pub fn key(&self) -> &[u8] {
        match self {
            Record::Put(kv) => &kv.key,
            Record::Tombstone(key) => key,
        }
    }

    /// The key-value after the change, if it is a put.
    pub fn put(&self) -> Option<&KeyValue> {
        match self {
            Record::Put(kv) => Some(kv),
            Record::Tombstone(_) => None,
        }
    }

    /// Bytes the record accounts for in [`KeySpace::size_bytes`].
    fn cost(&self) -> usize {
        RECORD_OVERHEAD_BYTES
            + match self {
                Record::Put(kv) => 2 * kv.key.len() + kv.value.len(),
                Record::Tombstone(key) => 2 * key.len(),
            }
    }
}

/// The bookkeeping bytes counted per record on top of its key (twice: history and index)
/// and value, for the space quota.
pub const RECORD_OVERHEAD_BYTES: usize = 64;

/// A change as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Where it happened.
    pub rev: Rev,
    /// What happened: for a delete, a key-value holding the key, with `mod_revision` the
    /// delete's revision (as etcd reports it).
    pub kind: EventKind,
    /// The key-value after a put; for a delete, only key and mod_revision are set.
    pub kv: KeyValue,
}

/// A put or a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was written.
    Put,
    /// The key was deleted.
    Delete,
}

/// Every key with its history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySpace {
    history: BTreeMap<Rev, Record>,
    index: BTreeMap<Vec<u8>, Vec<Rev>>,
    /// The compaction point (0: never compacted).
    compacted: i64,
    /// The sum of the records' costs.
    bytes: usize,
}

impl KeySpace {
    /// The compaction point: reads below it fail.
    pub fn compacted(&self) -> i64 {
        self.compacted
    }

    /// The approximate memory the history takes, in bytes (the space quota's measure).
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }

    /// Every record, in revision order.
    pub fn records(&self) -> impl Iterator<Item = (&Rev, &Record)> {
        self.history.iter()
    }

    /// The revision of the newest record, if any.
    pub fn last_rev(&self) -> Option<Rev> {
        self.history.last_key_value().map(|(rev, _)| *rev)
    }

    /// Adds a record read back from a snapshot (records must come in revision order).
    pub(crate) fn restore_record(&mut self, rev: Rev, record: Record) {
        self.index
            .entry(record.key().to_vec())
            .or_default()
            .push(rev);
        self.bytes += record.cost();
        self.history.insert(rev, record);
    }

    /// Sets the compaction point read back from a snapshot.
    pub(crate) fn restore_compacted(&mut self, compacted: i64) {
        self.compacted = compacted;
    }

    fn newest_at(&self, revs: &[Rev], at: i64) -> Option<&Record> {
        let n = revs.partition_point(|r| r.main <= at);
        let rev = revs.get(n.checked_sub(1)?)?;
        self.history.get(rev)
    }

    /// The key's current value, if it exists.
    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        let revs = self.index.get(key)?;
        self.history.get(revs.last()?)?.put()
    }

    /// Whether a read at `revision` (0: current) is possible, given the current revision.
    pub fn check_read(&self, revision: i64, current: i64) -> Result<i64, KvError> {
        match revision {
            r if r <= 0 => Ok(current),
            r if r > current => Err(KvError::FutureRevision),
            r if r < self.compacted => Err(KvError::Compacted),
            r => Ok(r),
        }
    }

    /// The keys of `[key, range_end)` as of main revision `at`, in key order.
    pub fn range_at<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
        at: i64,
    ) -> impl DoubleEndedIterator<Item = &'a KeyValue> + 'a {
        self.index
            .range::<[u8], _>(key_bounds(key, range_end))
            .filter_map(move |(_, revs)| self.newest_at(revs, at)?.put())
    }

    /// The current keys of `[key, range_end)`, in key order.
    pub fn range<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> impl DoubleEndedIterator<Item = &'a KeyValue> + 'a {
        self.range_at(key, range_end, i64::MAX)
    }

    /// Writes `kv` (its revisions already set by the caller) at `rev`.
    pub fn put(&mut self, rev: Rev, kv: KeyValue) {
        self.insert(rev, Record::Put(kv));
    }

    /// Deletes `key` at `rev`; returns its last value, if it existed.
    pub fn delete(&mut self, rev: Rev, key: &[u8]) -> Option<KeyValue> {
        let prev = self.get(key)?.clone();
        self.insert(rev, Record::Tombstone(key.to_vec()));
        Some(prev)
    }

    fn insert(&mut self, rev: Rev, record: Record) {
        debug_assert!(
            self.history
                .last_key_value()
                .is_none_or(|(last, _)| *last < rev),
            "revisions only grow"
        );
        self.bytes += record.cost();
        match self.index.get_mut(record.key()) {
            Some(revs) => revs.push(rev),
            None => {
                self.index.insert(record.key().to_vec(), vec![rev]);
            }
        }
        self.history.insert(rev, record);
    }

    /// Drops the history below `revision` (which the caller checked is at most the current
    /// one): each key keeps its newest record at or below it if that is a put, and nothing
    /// older. Reads at `revision` and later see the same as before.
    pub fn compact(&mut self, revision: i64) {
        let mut emptied = Vec::new();
        for (key, revs) in &mut self.index {
            let n = revs.partition_point(|r| r.main <= revision);
            let keep_from = match n.checked_sub(1) {
                Some(last) if matches!(self.history.get(&revs[last]), Some(Record::Put(_))) => last,
                _ => n,
            };
            for rev in revs.drain(..keep_from) {
                if let Some(record) = self.history.remove(&rev) {
                    self.bytes -= record.cost();
                }
            }
            if revs.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.index.remove(&key);
        }
        self.compacted = self.compacted.max(revision);
    }

    /// The changes of `[key, range_end)` from revision `from` (inclusive), in revision order,
    /// at most `max` of them (whole requests are never split: the last request's changes all
    /// come, even past `max`). The caller checks `from` against the compaction point.
    pub fn events(&self, key: &[u8], range_end: &[u8], from: i64, max: usize) -> Vec<Event> {
        let bounds = key_bounds(key, range_end);
        let mut events: Vec<Event> = Vec::new();
        for (rev, record) in self.history.range(Rev { main: from, sub: 0 }..) {
            if events.len() >= max && events.last().is_some_and(|e| e.rev.main != rev.main) {
                break;
            }
            if !contains(bounds, record.key()) {
                continue;
            }
            events.push(event(*rev, record));
        }
        events
    }

    /// The key's value before the request that made `rev` (at main revision `rev.main - 1`),
    /// if it existed then and that revision is not compacted: etcd's `prev_kv` for a watch
    /// event. (A transaction may put a key and then delete it; the delete's `prev_kv` is the
    /// value before the transaction, as in etcd.)
    pub fn before(&self, key: &[u8], rev: Rev) -> Option<&KeyValue> {
        let revs = self.index.get(key)?;
        let n = revs.partition_point(|r| r.main < rev.main);
        self.history.get(revs.get(n.checked_sub(1)?)?)?.put()
    }

    /// A CRC-32C of the history up to main revision `at` (every record's revision, key and
    /// value), and of the compaction point: members that applied the same log give the same.
    pub fn hash(&self, at: i64) -> u32 {
        let mut crc = crc32c::crc32c(&self.compacted.to_le_bytes());
        for (rev, record) in self.history.range(
            ..Rev {
                main: at + 1,
                sub: 0,
            },
        ) {
            crc = crc32c::crc32c_append(crc, &rev.main.to_le_bytes());
            crc = crc32c::crc32c_append(crc, &rev.sub.to_le_bytes());
            crc = crc32c::crc32c_append(crc, record.key());
            if let Some(kv) = record.put() {
                crc = crc32c::crc32c_append(crc, &kv.value);
                crc = crc32c::crc32c_append(crc, &kv.lease.to_le_bytes());
            }
        }
        crc
    }

    /// Checks the invariants of the module's documentation (for tests).
    #[cfg(test)]
    pub fn check(&self, current: i64) {
        let mut listed = 0;
        for (key, revs) in &self.index {
            assert!(!revs.is_empty(), "empty index entry");
            assert!(revs.windows(2).all(|w| w[0] < w[1]), "index not ascending");
            for rev in revs {
                let record = self.history.get(rev).expect("indexed record exists");
                assert_eq!(record.key(), key.as_slice());
                assert!(rev.main <= current);
                listed += 1;
            }
        }
        assert_eq!(listed, self.history.len(), "every record indexed");
        let cost: usize = self.history.values().map(Record::cost).sum();
        assert_eq!(cost, self.bytes);
    }
}

fn event(rev: Rev, record: &Record) -> Event {
    match record {
        Record::Put(kv) => Event {
            rev,
            kind: EventKind::Put,
            kv: kv.clone(),
        },
        Record::Tombstone(key) => Event {
            rev,
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.clone(),
                mod_revision: rev.main,
                ..KeyValue::default()
            },
        },
    }
}

/// [`range_bounds`], with a range whose end is not after its start made empty.
fn key_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    let (lo, hi) = range_bounds(key, range_end);
    if matches!(hi, Bound::Excluded(end) if end <= key) {
        (Bound::Included(key), Bound::Excluded(key))
    } else {
        (lo, hi)
    }
}

fn contains(bounds: (Bound<&[u8]>, Bound<&[u8]>), key: &[u8]) -> bool {
    let above = match bounds.0 {
        Bound::Included(lo) => key >= lo,
        Bound::Excluded(lo) => key > lo,
        Bound::Unbounded => true,
    };
    let below = match bounds.1 {
        Bound::Included(hi) => key <= hi,
        Bound::Excluded(hi) => key < hi,
        Bound::Unbounded => true,
    };
    above && below
}
