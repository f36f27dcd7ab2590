//! `SyncWorker::Manual`: no thread is started, writes of the async interface wait until the
//! caller runs them, in order, and compaction and installation run them first. (A test binary
//! of its own, so that no other test's threads are in the process when it counts threads.)

use futures::FutureExt;
use raftline_core::driver::LogStore;
use raftline_log::{LogFile, Options, SyncWorker};
use raftline_proto::{Entry, HardState, LogIndex, Membership, NodeId, Term};

fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to)
        .map(|i| Entry::normal(Term(term), LogIndex(i), vec![i as u8; 700]))
        .collect()
}

fn hs(term: u64, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: Some(NodeId(1)),
        commit: LogIndex(commit),
    }
}

/// The names of this process's threads that the store would start.
fn store_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("raft-log"))
        .collect()
}

fn manual() -> Options {
    Options {
        segment_bytes_max: 4096,
        sync: false,
        sync_worker: SyncWorker::Manual,
        ..Options::default()
    }
}

#[test]
fn manual_mode_runs_queued_writes_in_order_on_the_callers_thread_and_starts_no_thread() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogFile::open(dir.path(), manual()).unwrap();
    let mut a = log.persist(entries(1, 4, 1), Some(hs(1, 0)));
    let mut b = log.persist(entries(5, 9, 1), None);
    // Truncates the write before.
    let mut c = log.persist(entries(8, 12, 2), Some(hs(2, 3)));
    assert_eq!(log.queued_jobs(), 3);
    assert!(
        (&mut a).now_or_never().is_none(),
        "nothing runs until asked"
    );
    assert_eq!(log.last_index(), LogIndex(0));
    assert_eq!(log.run_queued_job(), Some(Ok(())));
    assert_eq!(a.now_or_never(), Some(Ok(())));
    // Group commit: the first job wrote every entry submitted before it ran.
    assert_eq!(log.last_index(), LogIndex(12));
    assert_eq!(log.initial_state().hard_state, hs(1, 0));
    assert_eq!(log.run_queued_jobs(), 2);
    assert_eq!(log.run_queued_job(), None);
    assert_eq!((&mut b).now_or_never(), Some(Ok(())));
    assert_eq!((&mut c).now_or_never(), Some(Ok(())));
    assert_eq!(log.initial_state().hard_state, hs(2, 3));
    // 12 700-byte entries in one batch, larger than a 4 KiB segment: it got one of its own.
    assert!(log.segment_count() > 1, "{} segments", log.segment_count());
    let d = log.persist(entries(13, 20, 2), Some(hs(2, 12)));
    let e = log.persist(entries(21, 21, 2), None);
    // Compaction runs the queued writes in the call (no deadlock), then compacts.
    let compact = LogStore::compact(&log, LogIndex(18));
    assert_eq!(compact.now_or_never(), Some(Ok(())));
    assert_eq!(log.queued_jobs(), 0);
    assert_eq!(d.now_or_never(), Some(Ok(())));
    assert_eq!(e.now_or_never(), Some(Ok(())));
    assert_eq!(log.first_index(), LogIndex(19));
    let f = log.persist(entries(22, 23, 2), None);
    let install = LogStore::install_snapshot(&log, LogIndex(40), Term(3), Membership::default());
    assert_eq!(install.now_or_never(), Some(Ok(())));
    assert_eq!(f.now_or_never(), Some(Ok(())));
    assert_eq!(
        (log.first_index(), log.last_index()),
        (LogIndex(41), LogIndex(40))
    );
    assert_eq!(store_threads(), Vec::<String>::new());
    drop(log);
    let log = LogFile::open(dir.path(), manual()).unwrap();
    assert_eq!(
        (log.first_index(), log.last_index()),
        (LogIndex(41), LogIndex(40))
    );
    assert_eq!(log.initial_state().hard_state, hs(2, 12));
    assert_eq!(store_threads(), Vec::<String>::new());
    drop(log);
    // The control: the default mode starts its threads, and the count above would see them.
    let threaded = LogFile::open(
        dir.path(),
        Options {
            sync_worker: SyncWorker::Thread,
            ..manual()
        },
    )
    .unwrap();
    let write = threaded.persist(entries(41, 41, 3), None);
    assert_eq!(futures::executor::block_on(write), Ok(()));
    assert!(
        store_threads().iter().any(|t| t == "raft-log-sync"),
        "{:?}",
        store_threads()
    );
}

#[test]
fn writes_queued_when_the_store_is_dropped_fail() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogFile::open(dir.path(), manual()).unwrap();
    let write = log.persist(entries(1, 2, 1), None);
    drop(log);
    assert!(matches!(write.now_or_never(), Some(Err(_))));
    // The directory is free again.
    LogFile::open(dir.path(), manual()).unwrap();
}
