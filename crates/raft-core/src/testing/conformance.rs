//! The storage conformance suite. Every log store runs it:
//!
//! ```
//! raftline_core::testing::conformance::run_all(|m| raftline_core::MemStorage::new(m));
//! ```

use raftline_proto::{Entry, HardState, LogIndex, Membership, NodeId, Term};

use crate::{StorageError, StorageMut};

fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to)
        .map(|i| Entry::normal(Term(term), LogIndex(i), vec![i as u8; (i % 7) as usize]))
        .collect()
}

fn membership() -> Membership {
    Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)])
}

/// Runs every check against fresh stores made by `make`.
pub fn run_all<S: StorageMut>(mut make: impl FnMut(Membership) -> S) {
    empty_store(make(membership()));
    append_and_read(make(membership()));
    append_truncates_conflicting_suffix(make(membership()));
    byte_limit_returns_at_least_one_entry(make(membership()));
    compaction_keeps_the_term_at_the_compaction_point(make(membership()));
    hard_state_round_trips(make(membership()));
    installing_a_snapshot_keeps_a_matching_log(make(membership()));
    installing_a_snapshot_replaces_a_diverging_log(make(membership()));
    out_of_range_reads_are_errors(make(membership()));
}

/// A new store is empty and starts from the given membership.
pub fn empty_store<S: StorageMut>(s: S) {
    assert_eq!(s.first_index().unwrap(), LogIndex(1));
    assert_eq!(s.last_index().unwrap(), LogIndex(0));
    assert_eq!(s.term(LogIndex(0)).unwrap(), Term(0));
    let init = s.initial_state().unwrap();
    assert_eq!(init.hard_state, HardState::default());
    assert_eq!(init.membership, membership());
    assert_eq!(
        s.entries(LogIndex(1), LogIndex(1), usize::MAX).unwrap(),
        vec![]
    );
}

/// Appended entries read back exactly, by range and by term.
pub fn append_and_read<S: StorageMut>(mut s: S) {
    let es = entries(1, 10, 1);
    s.append(&es[..4]).unwrap();
    s.append(&es[4..]).unwrap();
    assert_eq!(s.last_index().unwrap(), LogIndex(10));
    assert_eq!(
        s.entries(LogIndex(1), LogIndex(11), usize::MAX).unwrap(),
        es
    );
    assert_eq!(
        s.entries(LogIndex(3), LogIndex(6), usize::MAX).unwrap(),
        es[2..5].to_vec()
    );
    for e in &es {
        assert_eq!(s.term(e.index).unwrap(), e.term);
    }
}

/// Appending at an existing index discards the old suffix (Raft's conflict rule).
pub fn append_truncates_conflicting_suffix<S: StorageMut>(mut s: S) {
    s.append(&entries(1, 10, 1)).unwrap();
    s.append(&entries(6, 7, 2)).unwrap();
    assert_eq!(s.last_index().unwrap(), LogIndex(7));
    assert_eq!(s.term(LogIndex(5)).unwrap(), Term(1));
    assert_eq!(s.term(LogIndex(6)).unwrap(), Term(2));
    assert_eq!(s.term(LogIndex(7)).unwrap(), Term(2));
    assert!(matches!(
        s.term(LogIndex(8)),
        Err(StorageError::Unavailable(_))
    ));
    let mut expected = entries(1, 5, 1);
    expected.extend(entries(6, 7, 2));
    assert_eq!(
        s.entries(LogIndex(1), LogIndex(8), usize::MAX).unwrap(),
        expected
    );
    // Appending right after the end extends.
    s.append(&entries(8, 8, 3)).unwrap();
    assert_eq!(s.last_index().unwrap(), LogIndex(8));
}

/// The byte limit cuts a range short but never returns nothing for a non-empty range.
pub fn byte_limit_returns_at_least_one_entry<S: StorageMut>(mut s: S) {
    let es = entries(1, 10, 1);
    s.append(&es).unwrap();
    assert_eq!(
        s.entries(LogIndex(1), LogIndex(11), 0).unwrap(),
        es[..1].to_vec()
    );
    let two = es[0].size_bytes() + es[1].size_bytes();
    assert_eq!(
        s.entries(LogIndex(1), LogIndex(11), two).unwrap(),
        es[..2].to_vec()
    );
    assert_eq!(
        s.entries(LogIndex(1), LogIndex(11), two + 1).unwrap(),
        es[..2].to_vec()
    );
}

/// Compaction drops a prefix; the term at the compaction point stays readable.
pub fn compaction_keeps_the_term_at_the_compaction_point<S: StorageMut>(mut s: S) {
    s.append(&entries(1, 5, 1)).unwrap();
    s.append(&entries(6, 10, 2)).unwrap();
    s.compact(LogIndex(6)).unwrap();
    assert_eq!(s.first_index().unwrap(), LogIndex(7));
    assert_eq!(s.last_index().unwrap(), LogIndex(10));
    assert_eq!(s.term(LogIndex(6)).unwrap(), Term(2));
    assert!(matches!(
        s.term(LogIndex(5)),
        Err(StorageError::Compacted(_))
    ));
    assert!(matches!(
        s.entries(LogIndex(5), LogIndex(8), usize::MAX),
        Err(StorageError::Compacted(_))
    ));
    assert_eq!(
        s.entries(LogIndex(7), LogIndex(11), usize::MAX).unwrap(),
        entries(7, 10, 2)
    );
    // Compacting again to an older point changes nothing.
    s.compact(LogIndex(3)).unwrap();
    assert_eq!(s.first_index().unwrap(), LogIndex(7));
    // Compacting everything leaves an empty log that still knows where it ends.
    s.compact(LogIndex(10)).unwrap();
    assert_eq!(s.first_index().unwrap(), LogIndex(11));
    assert_eq!(s.last_index().unwrap(), LogIndex(10));
    assert_eq!(s.term(LogIndex(10)).unwrap(), Term(2));
    s.append(&entries(11, 12, 3)).unwrap();
    assert_eq!(s.last_index().unwrap(), LogIndex(12));
}

/// A snapshot whose last entry the log holds leaves the log as it is.
pub fn installing_a_snapshot_keeps_a_matching_log<S: StorageMut>(mut s: S) {
    s.append(&entries(1, 5, 1)).unwrap();
    s.append(&entries(6, 10, 2)).unwrap();
    let other = Membership::with_voters([NodeId(1)]);
    s.install_snapshot(LogIndex(7), Term(2), &other).unwrap();
    assert_eq!(s.first_index().unwrap(), LogIndex(1));
    assert_eq!(s.last_index().unwrap(), LogIndex(10));
    assert_eq!(
        s.entries(LogIndex(1), LogIndex(11), usize::MAX)
            .unwrap()
            .len(),
        10
    );
    assert_eq!(s.initial_state().unwrap().membership, membership());
    // A snapshot behind the compaction point changes nothing either.
    s.compact(LogIndex(8)).unwrap();
    s.install_snapshot(LogIndex(4), Term(9), &other).unwrap();
    assert_eq!(s.first_index().unwrap(), LogIndex(9));
    assert_eq!(s.last_index().unwrap(), LogIndex(10));
}

/// A snapshot past the log's end, or whose last entry conflicts, replaces the whole log.
pub fn installing_a_snapshot_replaces_a_diverging_log<S: StorageMut>(mut s: S) {
    s.append(&entries(1, 5, 1)).unwrap();
    let other = Membership::with_voters([NodeId(1), NodeId(4)]);
    // Conflicting term at index 4.
    s.install_snapshot(LogIndex(4), Term(3), &other).unwrap();
    assert_eq!(s.first_index().unwrap(), LogIndex(5));
    assert_eq!(s.last_index().unwrap(), LogIndex(4));
    assert_eq!(s.term(LogIndex(4)).unwrap(), Term(3));
    assert!(matches!(
        s.term(LogIndex(3)),
        Err(StorageError::Compacted(_))
    ));
    assert_eq!(s.initial_state().unwrap().membership, other);
    s.append(&entries(5, 6, 3)).unwrap();
    assert_eq!(s.last_index().unwrap(), LogIndex(6));
    // Past the end.
    s.install_snapshot(LogIndex(20), Term(4), &membership())
        .unwrap();
    assert_eq!(s.first_index().unwrap(), LogIndex(21));
    assert_eq!(s.last_index().unwrap(), LogIndex(20));
    assert_eq!(s.term(LogIndex(20)).unwrap(), Term(4));
    assert_eq!(s.initial_state().unwrap().membership, membership());
    s.append(&entries(21, 21, 4)).unwrap();
    assert_eq!(s.last_index().unwrap(), LogIndex(21));
}

/// The hard state reads back as written.
pub fn hard_state_round_trips<S: StorageMut>(mut s: S) {
    let hs = HardState {
        term: Term(7),
        vote: Some(NodeId(2)),
        commit: LogIndex(0),
    };
    s.set_hard_state(hs).unwrap();
    assert_eq!(s.initial_state().unwrap().hard_state, hs);
    let hs2 = HardState { vote: None, ..hs };
    s.set_hard_state(hs2).unwrap();
    assert_eq!(s.initial_state().unwrap().hard_state, hs2);
}

/// Reads outside the log are errors, not panics or empty answers.
pub fn out_of_range_reads_are_errors<S: StorageMut>(mut s: S) {
    s.append(&entries(1, 3, 1)).unwrap();
    assert!(matches!(
        s.term(LogIndex(4)),
        Err(StorageError::Unavailable(_))
    ));
    assert!(matches!(
        s.entries(LogIndex(2), LogIndex(6), usize::MAX),
        Err(StorageError::Unavailable(_))
    ));
}
