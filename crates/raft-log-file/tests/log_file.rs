//! Behaviour of the log store: conformance, reopening, locking, zero-copy reads, corruption
//! handling, group commit and snapshot installation.

use std::sync::Arc;

use bytes::Bytes;
use raftline_core::testing::conformance;
use raftline_log::{Error, LogFile, Op, Options, Recorder};
use raftline_proto::{Entry, EntryPayload, HardState, LogIndex, Membership, NodeId, Term};

fn opts() -> Options {
    Options {
        segment_bytes_max: 1024,
        ..Options::default()
    }
}

fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to)
        .map(|i| {
            Entry::normal(
                Term(term),
                LogIndex(i),
                format!("entry {i} of term {term}").into_bytes(),
            )
        })
        .collect()
}

#[test]
fn passes_the_storage_conformance_suite() {
    let dirs = std::cell::RefCell::new(Vec::new());
    conformance::run_all(|membership| {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(
            dir.path(),
            Options {
                membership,
                ..opts()
            },
        )
        .unwrap();
        dirs.borrow_mut().push(dir);
        log
    });
}

#[test]
fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let m = Membership::with_voters([NodeId(1), NodeId(2)]);
    let hs = HardState {
        term: Term(3),
        vote: Some(NodeId(2)),
        commit: LogIndex(40),
    };
    let mut all = entries(1, 50, 1);
    all[9].payload = EntryPayload::Noop;
    all[10].payload = EntryPayload::Membership(m.clone());
    {
        let log = LogFile::open(
            dir.path(),
            Options {
                membership: m.clone(),
                ..opts()
            },
        )
        .unwrap();
        for chunk in all.chunks(7) {
            log.append(chunk).unwrap();
        }
        // Replace the suffix from 45 with entries of term 2.
        log.append(&entries(45, 60, 2)).unwrap();
        log.set_hard_state(hs).unwrap();
        assert!(log.segment_count() > 1, "small segments rotate");
    }
    let log = LogFile::open(dir.path(), opts()).unwrap();
    let state = log.initial_state();
    assert_eq!(state.hard_state, hs);
    assert_eq!(state.membership, m);
    assert_eq!(log.last_index(), LogIndex(60));
    let mut expected = all[..44].to_vec();
    expected.extend(entries(45, 60, 2));
    assert_eq!(
        log.entries(LogIndex(1), LogIndex(61), usize::MAX).unwrap(),
        expected
    );
    assert_eq!(log.recovery().torn_tail, None);
}

#[test]
fn a_second_opener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _log = LogFile::open(dir.path(), opts()).unwrap();
    match LogFile::open(dir.path(), opts()) {
        Err(Error::Locked { path }) => assert!(path.ends_with("LOCK")),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a second open succeeded"),
    }
}

#[test]
fn payloads_stay_valid_after_compaction_and_truncation_remove_their_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogFile::open(dir.path(), opts()).unwrap();
    for chunk in entries(1, 200, 1).chunks(10) {
        log.append(chunk).unwrap();
    }
    let held = log.entries(LogIndex(1), LogIndex(3), usize::MAX).unwrap();
    let segments = log.segment_count();
    log.append(&entries(150, 160, 2)).unwrap();
    log.compact(LogIndex(155)).unwrap();
    assert!(
        log.segment_count() < segments,
        "compaction removed whole segments"
    );
    assert_eq!(
        held,
        entries(1, 2, 1),
        "bytes held by a reader did not change"
    );
    assert_eq!(log.first_index(), LogIndex(156));
    assert_eq!(log.term(LogIndex(155)).unwrap(), Term(2));
    drop(log);
    let log = LogFile::open(dir.path(), opts()).unwrap();
    assert_eq!(log.first_index(), LogIndex(156));
    assert_eq!(log.last_index(), LogIndex(160));
    assert_eq!(
        log.entries(LogIndex(156), LogIndex(161), usize::MAX)
            .unwrap(),
        entries(156, 160, 2)
    );
}

#[test]
fn reads_are_zero_copy() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogFile::open(dir.path(), opts()).unwrap();
    log.append(&entries(1, 2, 1)).unwrap();
    let a = log.entries(LogIndex(1), LogIndex(2), usize::MAX).unwrap();
    let b = log.entries(LogIndex(1), LogIndex(2), usize::MAX).unwrap();
    let (EntryPayload::Normal(x), EntryPayload::Normal(y)) = (&a[0].payload, &b[0].payload) else {
        panic!("normal entries")
    };
    assert_eq!(x.as_ptr(), y.as_ptr(), "two reads share the mapped bytes");
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn flip_bit(path: &std::path::Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_bit_before_the_tail_stops_opening_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogFile::open(dir.path(), Options::default()).unwrap();
        for chunk in entries(1, 30, 1).chunks(3) {
            log.append(chunk).unwrap();
        }
    }
    let seg = &segment_files(dir.path())[0];
    // The second batch's body: header 64 bytes, first batch, then the second batch's header.
    flip_bit(seg, 64 + 200);
    let err = LogFile::open(dir.path(), Options::default())
        .err()
        .expect("open must fail");
    match &err {
        Error::Corrupt { path, offset, .. } => {
            assert_eq!(path, seg);
            assert!(*offset >= 64 && *offset <= 264, "offset {offset}");
        }
        other => panic!("unexpected error {other}"),
    }
    let text = err.to_string();
    assert!(text.contains(".seg") && text.contains("offset"), "{text}");

    // repair truncates there and says what it dropped.
    let log = LogFile::open(
        dir.path(),
        Options {
            repair: true,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(log.last_index() < LogIndex(30));
    assert!(log
        .recovery()
        .repaired
        .as_ref()
        .unwrap()
        .contains("truncated"));
    let last = log.last_index();
    assert_eq!(
        log.entries(LogIndex(1), last.next(), usize::MAX).unwrap(),
        entries(1, last.0, 1)
    );
    // And the repaired log takes appends again.
    log.append(&entries(last.0 + 1, last.0 + 3, 2)).unwrap();
}

#[test]
fn corruption_in_an_older_segment_stops_opening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogFile::open(dir.path(), opts()).unwrap();
        for chunk in entries(1, 100, 1).chunks(5) {
            log.append(chunk).unwrap();
        }
    }
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 2);
    flip_bit(&segs[0], 100);
    match LogFile::open(dir.path(), opts()) {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, segs[0]),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("opened a corrupt log"),
    }
}

#[test]
fn a_torn_last_batch_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogFile::open(dir.path(), Options::default()).unwrap();
        log.append(&entries(1, 5, 1)).unwrap();
        log.append(&entries(6, 9, 1)).unwrap();
    }
    let seg = &segment_files(dir.path())[0];
    let bytes = std::fs::read(seg).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() as u64;
    flip_bit(seg, end - 3); // inside the last batch
    let log = LogFile::open(dir.path(), Options::default()).unwrap();
    assert_eq!(log.last_index(), LogIndex(5));
    let (file, _, zeroed) = log.recovery().torn_tail.clone().unwrap();
    assert!(file.ends_with(".seg") && zeroed > 0);
    log.append(&entries(6, 7, 2)).unwrap();
    drop(log);
    let log = LogFile::open(dir.path(), Options::default()).unwrap();
    assert_eq!(log.last_index(), LogIndex(7));
    assert_eq!(log.recovery().torn_tail, None);
}

#[test]
fn a_commit_index_past_the_log_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogFile::open(dir.path(), Options::default()).unwrap();
        log.append(&entries(1, 3, 1)).unwrap();
        log.set_hard_state(HardState {
            term: Term(1),
            vote: None,
            commit: LogIndex(9),
        })
        .unwrap();
    }
    let err = LogFile::open(dir.path(), Options::default()).err().unwrap();
    assert!(err.to_string().contains("commit index"), "{err}");
}

#[test]
fn appends_with_gaps_or_into_the_compacted_prefix_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogFile::open(dir.path(), Options::default()).unwrap();
    log.append(&entries(1, 5, 1)).unwrap();
    assert!(matches!(
        log.append(&entries(7, 8, 1)),
        Err(Error::Invalid(_))
    ));
    let mut bad = entries(6, 8, 1);
    bad.swap(1, 2);
    assert!(matches!(log.append(&bad), Err(Error::Invalid(_))));
    log.compact(LogIndex(3)).unwrap();
    assert!(matches!(
        log.append(&entries(2, 4, 2)),
        Err(Error::Invalid(_))
    ));
    assert_eq!(log.last_index(), LogIndex(5));
}

#[test]
fn concurrent_appends_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let log = LogFile::open(
        dir.path(),
        Options {
            recorder: Some(recorder.clone()),
            ..Options::default()
        },
    )
    .unwrap();
    let order = Arc::new(parking_lot::Mutex::new(0u64));
    let threads = 4;
    let per_thread = 50;
    std::thread::scope(|s| {
        for _ in 0..threads {
            let log = log.clone();
            let order = Arc::clone(&order);
            s.spawn(move || {
                for _ in 0..per_thread {
                    let ticket = {
                        let mut next = order.lock();
                        *next += 1;
                        log.submit(&[Entry::normal(
                            Term(1),
                            LogIndex(*next),
                            Bytes::from_static(b"x"),
                        )])
                        .unwrap()
                    };
                    log.wait_durable(ticket).unwrap();
                }
            });
        }
    });
    let total = threads * per_thread;
    assert_eq!(log.last_index(), LogIndex(total));
    let syncs = recorder
        .ops()
        .iter()
        .filter(|op| matches!(op, Op::Sync(f) if f.ends_with(".seg")))
        .count() as u64;
    // One sync per segment creation, plus the batches.
    assert!(
        syncs < total,
        "{syncs} syncs for {total} appends: no group commit"
    );
}

#[test]
fn a_failed_sync_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let log = LogFile::open(
        dir.path(),
        Options {
            recorder: Some(recorder.clone()),
            ..Options::default()
        },
    )
    .unwrap();
    log.append(&entries(1, 2, 1)).unwrap();
    recorder.fail_syncs_after(0);
    let err = log.append(&entries(3, 4, 1)).unwrap_err();
    assert!(err.to_string().contains("injected sync failure"), "{err}");
    assert_eq!(
        log.last_index(),
        LogIndex(2),
        "nothing unsynced is published"
    );
    // Even once syncs would work again, the store refuses writes: the kernel may have
    // dropped the dirty pages, so a retry could report lost data as durable.
    recorder.fail_syncs_after(usize::MAX);
    assert!(matches!(
        log.append(&entries(3, 4, 1)),
        Err(Error::Failed(_))
    ));
    drop(log);
    let log = LogFile::open(dir.path(), Options::default()).unwrap();
    assert!(log.last_index() >= LogIndex(2));
}

#[test]
fn the_async_log_store_persists_in_call_order() {
    use raftline_core::driver::LogStore;
    let dir = tempfile::tempdir().unwrap();
    let log = LogFile::open(dir.path(), Options::default()).unwrap();
    let hs = |t| HardState {
        term: Term(t),
        vote: Some(NodeId(1)),
        commit: LogIndex(0),
    };
    // Issue three writes before waiting on any: the third truncates the second.
    let a = log.persist(entries(1, 3, 1), Some(hs(1)));
    let b = log.persist(entries(4, 6, 1), None);
    let c = log.persist(entries(5, 5, 2), Some(hs(2)));
    futures::executor::block_on(async {
        a.await.unwrap();
        b.await.unwrap();
        c.await.unwrap();
    });
    assert_eq!(log.last_index(), LogIndex(5));
    assert_eq!(log.term(LogIndex(5)).unwrap(), Term(2));
    assert_eq!(log.initial_state().hard_state, hs(2));
    drop(log);
    let log = LogFile::open(dir.path(), Options::default()).unwrap();
    let mut expected = entries(1, 4, 1);
    expected.extend(entries(5, 5, 2));
    assert_eq!(
        log.entries(LogIndex(1), LogIndex(6), usize::MAX).unwrap(),
        expected
    );
}

#[test]
fn a_commit_only_hard_state_change_is_not_synced_but_term_and_vote_are() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::default();
    let log = LogFile::open(
        dir.path(),
        Options {
            recorder: Some(recorder.clone()),
            ..Options::default()
        },
    )
    .unwrap();
    log.append(&entries(1, 5, 1)).unwrap();
    let state_syncs = || {
        recorder
            .ops()
            .iter()
            .filter(|op| matches!(op, Op::Sync(f) if f == "state"))
            .count()
    };
    let hs = HardState {
        term: Term(2),
        vote: Some(NodeId(1)),
        commit: LogIndex(1),
    };
    let before = state_syncs();
    log.set_hard_state(hs).unwrap();
    assert_eq!(state_syncs(), before + 1, "a new term and vote are synced");
    log.set_hard_state(HardState {
        commit: LogIndex(4),
        ..hs
    })
    .unwrap();
    assert_eq!(state_syncs(), before + 1, "a commit-only change is not");
    log.set_hard_state(HardState {
        vote: Some(NodeId(2)),
        ..hs
    })
    .unwrap();
    assert_eq!(state_syncs(), before + 2, "a vote change is synced again");
    drop(log);
    let log = LogFile::open(dir.path(), Options::default()).unwrap();
    assert_eq!(log.initial_state().hard_state.vote, Some(NodeId(2)));
}

fn voters(ids: impl IntoIterator<Item = u64>) -> Membership {
    Membership::with_voters(ids.into_iter().map(NodeId))
}

#[test]
fn a_snapshot_past_the_end_restarts_the_log_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = voters([1, 2, 3]);
    let installed = voters([1, 2, 3, 4]);
    {
        let log = LogFile::open(
            dir.path(),
            Options {
                membership: first.clone(),
                ..opts()
            },
        )
        .unwrap();
        for chunk in entries(1, 80, 1).chunks(4) {
            log.append(chunk).unwrap();
        }
        assert!(log.segment_count() > 2);
        assert!(segment_files(dir.path()).len() > 2);
        // A follower far behind gets a snapshot up to 1000.
        log.install_snapshot(LogIndex(1000), Term(3), &installed)
            .unwrap();
        assert_eq!(log.first_index(), LogIndex(1001));
        assert_eq!(log.last_index(), LogIndex(1000));
        assert_eq!(log.term(LogIndex(1000)).unwrap(), Term(3));
        assert!(matches!(
            log.entries(LogIndex(40), LogIndex(41), usize::MAX),
            Err(raftline_core::StorageError::Compacted(_))
        ));
        assert_eq!(log.initial_state().membership, installed);
        assert_eq!(log.segment_count(), 1, "every old segment is dropped");
        // Only the fresh segment and, maybe, the one prepared after it remain.
        assert!(segment_files(dir.path()).len() <= 2);
        log.append(&entries(1001, 1003, 3)).unwrap();
    }
    let log = LogFile::open(dir.path(), opts()).unwrap();
    assert_eq!(log.first_index(), LogIndex(1001));
    assert_eq!(log.last_index(), LogIndex(1003));
    assert_eq!(log.term(LogIndex(1000)).unwrap(), Term(3));
    assert_eq!(
        log.entries(LogIndex(1001), LogIndex(1004), usize::MAX)
            .unwrap(),
        entries(1001, 1003, 3)
    );
    assert_eq!(log.initial_state().membership, installed);
    // And it goes on across rotations.
    for chunk in entries(1004, 1040, 3).chunks(4) {
        log.append(chunk).unwrap();
    }
    drop(log);
    let log = LogFile::open(dir.path(), opts()).unwrap();
    assert_eq!(
        log.entries(LogIndex(1001), LogIndex(1041), usize::MAX)
            .unwrap(),
        entries(1001, 1040, 3)
    );
}

#[test]
fn a_snapshot_the_log_holds_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = voters([1, 2, 3]);
    let log = LogFile::open(
        dir.path(),
        Options {
            membership: m.clone(),
            ..opts()
        },
    )
    .unwrap();
    for chunk in entries(1, 30, 1).chunks(5) {
        log.append(chunk).unwrap();
    }
    log.compact(LogIndex(10)).unwrap();
    let segments = log.segment_count();
    // The log holds (20, 1); and (5, 9) is behind the compaction point.
    log.install_snapshot(LogIndex(20), Term(1), &voters([7]))
        .unwrap();
    log.install_snapshot(LogIndex(5), Term(9), &voters([8]))
        .unwrap();
    log.install_snapshot(LogIndex(10), Term(9), &voters([8]))
        .unwrap();
    let check = |log: &LogFile| {
        assert_eq!(log.first_index(), LogIndex(11));
        assert_eq!(log.last_index(), LogIndex(30));
        assert_eq!(
            log.entries(LogIndex(11), LogIndex(31), usize::MAX).unwrap(),
            entries(11, 30, 1)
        );
        assert_eq!(log.initial_state().membership, m);
    };
    check(&log);
    assert_eq!(log.segment_count(), segments);
    drop(log);
    check(&LogFile::open(dir.path(), opts()).unwrap());
}

#[test]
fn a_snapshot_with_a_conflicting_term_replaces_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let installed = voters([2, 3]);
    {
        let log = LogFile::open(dir.path(), opts()).unwrap();
        for chunk in entries(1, 40, 1).chunks(4) {
            log.append(chunk).unwrap();
        }
        let segments = log.segment_count();
        // Entry 20 has term 1 here; the snapshot says 2: everything goes, also 21..40.
        log.install_snapshot(LogIndex(20), Term(2), &installed)
            .unwrap();
        assert!(log.segment_count() < segments);
        assert_eq!(log.first_index(), LogIndex(21));
        assert_eq!(log.last_index(), LogIndex(20));
        assert_eq!(log.term(LogIndex(20)).unwrap(), Term(2));
        assert!(matches!(
            log.entries(LogIndex(21), LogIndex(22), usize::MAX),
            Err(raftline_core::StorageError::Unavailable(_))
        ));
        // An append into the old suffix's indexes is an append at the end now.
        log.append(&entries(21, 25, 2)).unwrap();
    }
    let log = LogFile::open(dir.path(), opts()).unwrap();
    assert_eq!(log.initial_state().membership, installed);
    assert_eq!(log.first_index(), LogIndex(21));
    assert_eq!(log.last_index(), LogIndex(25));
    assert_eq!(log.term(LogIndex(20)).unwrap(), Term(2));
    assert_eq!(
        log.entries(LogIndex(21), LogIndex(26), usize::MAX).unwrap(),
        entries(21, 25, 2)
    );
}

#[test]
fn segments_left_by_a_crash_during_installation_are_removed_on_open() {
    // A crash after the installation's state write but before the old segments' removal
    // reached the disk: bring the old files back and reopen.
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    {
        let log = LogFile::open(dir.path(), opts()).unwrap();
        for chunk in entries(1, 40, 1).chunks(4) {
            log.append(chunk).unwrap();
        }
        for seg in segment_files(dir.path()) {
            std::fs::copy(&seg, saved.path().join(seg.file_name().unwrap())).unwrap();
        }
        log.install_snapshot(LogIndex(20), Term(2), &voters([1]))
            .unwrap();
        log.append(&entries(21, 22, 2)).unwrap();
    }
    let fresh = segment_files(dir.path());
    let mut stale = Vec::new();
    for seg in segment_files(saved.path()) {
        let to = dir.path().join(seg.file_name().unwrap());
        if !to.exists() {
            std::fs::copy(&seg, &to).unwrap();
            stale.push(to);
        }
    }
    assert!(segment_files(dir.path()).len() > fresh.len());
    let log = LogFile::open(dir.path(), opts()).unwrap();
    assert_eq!(log.first_index(), LogIndex(21));
    assert_eq!(log.last_index(), LogIndex(22));
    assert_eq!(
        log.entries(LogIndex(21), LogIndex(23), usize::MAX).unwrap(),
        entries(21, 22, 2)
    );
    // The stale files are gone and the fresh ones stay (the store may also have prepared
    // the next segment ahead, in the background).
    let now = segment_files(dir.path());
    assert!(
        stale.iter().all(|f| !now.contains(f)),
        "stale files remain: {now:?}"
    );
    assert!(
        fresh.iter().all(|f| now.contains(f)),
        "fresh files lost: {now:?}"
    );
}

#[test]
fn a_snapshot_that_would_discard_committed_entries_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogFile::open(dir.path(), opts()).unwrap();
    log.append(&entries(1, 10, 1)).unwrap();
    log.set_hard_state(HardState {
        term: Term(1),
        vote: None,
        commit: LogIndex(8),
    })
    .unwrap();
    let err = log
        .install_snapshot(LogIndex(5), Term(2), &voters([1]))
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(log.last_index(), LogIndex(10));
    // Not fatal: the store takes writes.
    log.append(&entries(11, 11, 1)).unwrap();
}

#[test]
fn the_async_log_store_orders_compaction_and_installation_with_persists() {
    use raftline_core::driver::LogStore;
    let dir = tempfile::tempdir().unwrap();
    let log = LogFile::open(dir.path(), opts()).unwrap();
    let hs = |t, commit| HardState {
        term: Term(t),
        vote: Some(NodeId(1)),
        commit: LogIndex(commit),
    };
    let m = voters([1, 2]);
    // Nothing is awaited before the last call: each operation must apply after the writes
    // issued before it, and before the ones issued after it.
    let writes = vec![
        log.persist(entries(1, 6, 1), Some(hs(1, 0))),
        // Compacts entries that were only submitted.
        LogStore::compact(&log, LogIndex(5)),
        log.persist(entries(7, 30, 1), Some(hs(1, 5))),
        // Conflicts with entry 20 of the write before.
        LogStore::install_snapshot(&log, LogIndex(20), Term(2), m.clone()),
        // Continues after the snapshot (a gap for the log before it).
        log.persist(entries(21, 23, 2), Some(hs(2, 20))),
        LogStore::install_snapshot(&log, LogIndex(100), Term(3), voters([3])),
        log.persist(entries(101, 101, 3), None),
        // Holds (101, 3): no change.
        LogStore::install_snapshot(&log, LogIndex(101), Term(3), m.clone()),
        LogStore::compact(&log, LogIndex(100)),
    ];
    futures::executor::block_on(async {
        for w in writes {
            w.await.unwrap();
        }
    });
    let check = |log: &LogFile| {
        assert_eq!(log.first_index(), LogIndex(101));
        assert_eq!(log.last_index(), LogIndex(101));
        assert_eq!(log.term(LogIndex(100)).unwrap(), Term(3));
        assert_eq!(
            log.entries(LogIndex(101), LogIndex(102), usize::MAX)
                .unwrap(),
            entries(101, 101, 3)
        );
        assert_eq!(log.initial_state().hard_state, hs(2, 20));
        assert_eq!(log.initial_state().membership, voters([3]));
    };
    check(&log);
    drop(log);
    check(&LogFile::open(dir.path(), opts()).unwrap());
}
