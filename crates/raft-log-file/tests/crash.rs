//! Crash tests in the style of ALICE (Pillai et al., OSDI 2014).
//!
//! A workload of appends (some truncating), compactions, snapshot installations and hard-state
//! writes runs with every file operation recorded. At each crash point (after every
//! operation) the test builds the states a file system may leave behind: only what was synced;
//! everything issued; synced data plus random subsets of the unsynced writes at 512-byte and
//! 4 KiB granularity (and unsynced creations and removals applied or not); unsynced writes
//! turned to zeros; and a flipped bit inside the unsynced tail. Each state is opened: recovery
//! must succeed, and the log must equal the log as it was after the last acknowledged
//! operation or after the one in flight — never less than what was acknowledged durable —
//! and then take an append that survives another recovery.
//! Finally, a flipped bit in synced data before the tail must make opening fail.

use std::collections::BTreeMap;
use std::path::Path;

use raft_core::Rng;
use raft_log_file::{Error, LogFile, Op, Options, Recorder};
use raft_proto::{Entry, HardState, LogIndex, Membership, NodeId, Term};

/// The log as an acknowledged operation left it.
#[derive(Clone, Debug, PartialEq)]
struct Snapshot {
    first: LogIndex,
    /// The term at `first - 1`.
    base_term: Term,
    entries: Vec<Entry>,
    hard_state: HardState,
    membership: Membership,
}

fn snapshot(log: &LogFile) -> Snapshot {
    let state = log.initial_state();
    Snapshot {
        first: log.first_index(),
        base_term: log.term(log.first_index().prev()).unwrap(),
        entries: log
            .entries(log.first_index(), log.last_index().next(), usize::MAX)
            .unwrap(),
        hard_state: state.hard_state,
        membership: state.membership,
    }
}

/// Runs the workload; returns the recorded operations and, for each acknowledged operation,
/// how many file operations had been recorded when it returned and the log it left. Without
/// `zero_fill`, no segment is prepared ahead: rotations and snapshot installations create
/// theirs in line.
fn run_workload(dir: &Path, seed: u64, zero_fill: bool) -> (Vec<Op>, Vec<(usize, Snapshot)>) {
    let recorder = Recorder::default();
    let options = Options {
        segment_bytes_max: 1024,
        sync: false,
        zero_fill_segments: zero_fill,
        recorder: Some(recorder.clone()),
        ..Options::default()
    };
    let log = LogFile::open(dir, options).unwrap();
    let mut rng = Rng::new(seed);
    let mut checkpoints = vec![(recorder.len(), snapshot(&log))];
    let mut term = 1;
    let mut installs = 0;
    for _ in 0..40 {
        let last = log.last_index().0;
        match rng.below(12) {
            10 | 11 => {
                // Install a snapshot: past the end (a follower far behind), or at an index the
                // log holds with another term (a diverging suffix, not committed), or with the
                // same term (nothing changes).
                let first = log.first_index().0;
                let commit = log.initial_state().hard_state.commit.0;
                let low = first.max(commit).max(1);
                let (index, snapshot_term) = match rng.below(3) {
                    0 if low <= last => {
                        let i = low + rng.below(last - low + 1);
                        (i, log.term(LogIndex(i)).unwrap().0)
                    }
                    1 if low <= last => {
                        term += 1;
                        (low + rng.below(last - low + 1), term)
                    }
                    _ => {
                        term += 1;
                        (last + 1 + rng.below(30), term)
                    }
                };
                let voters = (1..=1 + rng.below(4)).map(NodeId);
                log.install_snapshot(
                    LogIndex(index),
                    Term(snapshot_term),
                    &Membership::with_voters(voters),
                )
                .unwrap();
                installs += 1;
            }
            0 => {
                let to = LogIndex(last.saturating_sub(3).max(log.first_index().0 - 1));
                log.compact(to).unwrap();
            }
            1 => {
                term += 1;
                log.set_hard_state(HardState {
                    term: Term(term),
                    vote: Some(NodeId(rng.below(3) + 1)),
                    commit: log.initial_state().hard_state.commit,
                })
                .unwrap();
            }
            2 => {
                // A commit-index change alone, which the store writes without a sync.
                let hs = log.initial_state().hard_state;
                let commit = LogIndex((hs.commit.0 + 1 + rng.below(3)).min(last));
                log.set_hard_state(HardState {
                    commit: commit.max(hs.commit),
                    ..hs
                })
                .unwrap();
            }
            _ => {
                let back = if rng.chance(0.2) {
                    rng.below(3).min(last - (log.first_index().0 - 1))
                } else {
                    0
                };
                if back > 0 {
                    term += 1;
                }
                let start = last + 1 - back;
                let count = 1 + rng.below(5);
                let entries: Vec<Entry> = (start..start + count)
                    .map(|i| {
                        let size = rng.below(300) as usize;
                        Entry::normal(Term(term), LogIndex(i), vec![(i % 256) as u8 ^ 0x5a; size])
                    })
                    .collect();
                log.append(&entries).unwrap();
            }
        }
        checkpoints.push((recorder.len(), snapshot(&log)));
    }
    assert!(installs > 0, "seed {seed} installs no snapshot");
    (recorder.ops(), checkpoints)
}

#[derive(Clone, Copy, Debug)]
enum Variant {
    SyncedOnly,
    Everything,
    Subset { granularity: usize, seed: u64 },
    ZeroedTail,
    FlippedTail { seed: u64 },
}

/// Which operations of `ops` are durable: a write or length change once its file is synced, a
/// creation or removal once the directory is synced.
fn durable(ops: &[Op]) -> Vec<bool> {
    let mut out = vec![false; ops.len()];
    let mut synced_files: BTreeMap<&str, bool> = BTreeMap::new();
    let mut dir_synced = false;
    for (i, op) in ops.iter().enumerate().rev() {
        match op {
            Op::Sync(f) => {
                synced_files.insert(f, true);
                out[i] = true;
            }
            Op::SyncDir => {
                dir_synced = true;
                out[i] = true;
            }
            Op::Write { file, .. } | Op::SetLen(file, _) => {
                out[i] = synced_files.get(file.as_str()).copied().unwrap_or(false);
            }
            Op::Create(_) | Op::Remove(_) => out[i] = dir_synced,
        }
    }
    out
}

type Files = BTreeMap<String, Vec<u8>>;

fn write(files: &mut Files, file: &str, offset: u64, data: &[u8]) {
    if let Some(bytes) = files.get_mut(file) {
        let end = offset as usize + data.len();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[offset as usize..end].copy_from_slice(data);
    }
}

/// The files a crash after `ops` may leave, per `variant`, and the unsynced regions written.
fn build(ops: &[Op], variant: Variant) -> Files {
    let durable = durable(ops);
    let mut rng = Rng::new(match variant {
        Variant::Subset { seed, .. } | Variant::FlippedTail { seed } => seed,
        _ => 0,
    });
    let mut files = Files::new();
    let mut unsynced_regions = Vec::new();
    for (op, &is_durable) in ops.iter().zip(&durable) {
        let apply = match variant {
            Variant::SyncedOnly | Variant::ZeroedTail => is_durable,
            Variant::Everything | Variant::FlippedTail { .. } => true,
            Variant::Subset { .. } => is_durable || rng.chance(0.5),
        };
        match op {
            Op::Create(f) if apply => {
                files.insert(f.clone(), Vec::new());
            }
            Op::Remove(f) if apply => {
                files.remove(f);
            }
            Op::SetLen(f, len) if apply => {
                if let Some(b) = files.get_mut(f) {
                    b.resize(*len as usize, 0);
                }
            }
            Op::Write { file, offset, data } => match variant {
                Variant::Subset { granularity, .. } if !is_durable => {
                    // Each aligned chunk of an unsynced write may or may not have reached disk.
                    let mut at = *offset as usize;
                    let end = at + data.len();
                    while at < end {
                        let chunk_end = ((at / granularity + 1) * granularity).min(end);
                        if rng.chance(0.5) {
                            write(
                                &mut files,
                                file,
                                at as u64,
                                &data[at - *offset as usize..chunk_end - *offset as usize],
                            );
                        }
                        at = chunk_end;
                    }
                }
                Variant::ZeroedTail if !is_durable => {
                    write(&mut files, file, *offset, &vec![0u8; data.len()]);
                }
                _ if apply => {
                    write(&mut files, file, *offset, data);
                    if !is_durable {
                        unsynced_regions.push((file.clone(), *offset, data.len()));
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    if let Variant::FlippedTail { .. } = variant {
        let candidates: Vec<_> = unsynced_regions
            .iter()
            .filter(|(f, _, len)| *len > 0 && files.contains_key(f))
            .collect();
        if !candidates.is_empty() {
            let (f, offset, len) = candidates[rng.below(candidates.len() as u64) as usize];
            let at = *offset as usize + rng.below(*len as u64) as usize;
            let bytes = files.get_mut(f).expect("present");
            if at < bytes.len() {
                bytes[at] ^= 1 << rng.below(8);
            }
        }
    }
    files
}

fn materialize(files: &Files) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}

fn open(dir: &Path) -> Result<LogFile, Error> {
    LogFile::open(
        dir,
        Options {
            segment_bytes_max: 1024,
            sync: false,
            ..Options::default()
        },
    )
}

#[test]
fn every_crash_state_recovers_what_was_acknowledged() {
    for seed in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let (ops, checkpoints) = run_workload(dir.path(), seed, seed != 1);
        assert!(
            ops.len() > 100,
            "the workload is too small: {} operations",
            ops.len()
        );
        let mut states = 0;
        for crash in checkpoints[0].0..=ops.len() {
            // The last acknowledged operation before the crash, and the one in flight.
            let acked = checkpoints
                .iter()
                .rposition(|(n, _)| *n <= crash)
                .expect("the first checkpoint");
            let allowed: Vec<&Snapshot> = checkpoints[acked..(acked + 2).min(checkpoints.len())]
                .iter()
                .map(|(_, s)| s)
                .collect();
            let variants = [
                Variant::SyncedOnly,
                Variant::Everything,
                Variant::Subset {
                    granularity: 512,
                    seed: crash as u64,
                },
                Variant::Subset {
                    granularity: 4096,
                    seed: crash as u64 + 1,
                },
                Variant::ZeroedTail,
                Variant::FlippedTail { seed: crash as u64 },
            ];
            for variant in variants {
                let files = build(&ops[..crash], variant);
                let state_dir = materialize(&files);
                let log = open(state_dir.path()).unwrap_or_else(|e| {
                    panic!("seed {seed}, crash after op {crash} ({variant:?}): open failed: {e}")
                });
                // The commit index alone may go back (it is written without a sync); term and
                // vote may not, nor any entry.
                let without_commit = |s: &Snapshot| Snapshot {
                    hard_state: HardState {
                        commit: LogIndex(0),
                        ..s.hard_state
                    },
                    ..s.clone()
                };
                let got = snapshot(&log);
                let matched = allowed
                    .iter()
                    .find(|a| without_commit(a) == without_commit(&got));
                let Some(matched) = matched else {
                    panic!("seed {seed}, crash after op {crash} ({variant:?}): recovered {got:?}, expected one of {allowed:?}")
                };
                assert!(got.hard_state.commit <= matched.hard_state.commit);
                let last = got.first.prev().plus(got.entries.len() as u64);
                assert!(got.hard_state.commit <= last);
                // The recovered log goes on: an append lands where it should and survives
                // the next recovery.
                let next = Entry::normal(Term(1000), last.next(), b"after recovery".to_vec());
                log.append(std::slice::from_ref(&next)).unwrap_or_else(|e| {
                    panic!("seed {seed}, crash after op {crash} ({variant:?}): append after recovery failed: {e}")
                });
                drop(log);
                let log = open(state_dir.path()).unwrap_or_else(|e| {
                    panic!("seed {seed}, crash after op {crash} ({variant:?}): second open failed: {e}")
                });
                let mut expected = got.clone();
                expected.entries.push(next);
                assert_eq!(
                    snapshot(&log),
                    expected,
                    "seed {seed}, crash after op {crash} ({variant:?}): the append after recovery"
                );
                states += 1;
            }
        }
        assert!(states > 600, "only {states} crash states");
    }
}

#[test]
fn a_flipped_bit_in_synced_data_before_the_tail_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (ops, _) = run_workload(dir.path(), 7, true);
    let files = build(&ops, Variant::Everything);
    // Every batch write to a surviving segment, except the last one written: that one is the
    // tail, where damage is indistinguishable from a torn write. (Segments prepared ahead by
    // the background thread may come after it, empty.)
    let mut batch_writes: Vec<(String, u64, usize)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Write { file, offset, data }
                if file.ends_with(".seg") && *offset >= 64 && data.iter().any(|&b| b != 0) =>
            {
                Some((file.clone(), *offset, data.len()))
            }
            _ => None,
        })
        .filter(|(f, _, _)| files.contains_key(f))
        .collect();
    batch_writes.pop().expect("the workload wrote batches");
    let mut checked = 0;
    for (file, offset, len) in batch_writes {
        let mut damaged = files.clone();
        damaged.get_mut(&file).unwrap()[offset as usize + len / 2] ^= 0x04;
        let state_dir = materialize(&damaged);
        match open(state_dir.path()) {
            Err(Error::Corrupt { path, .. }) => {
                assert!(path.ends_with(&file), "{path:?} is not {file}")
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(log) => {
                // The only acceptable open is one where the damaged batch was superseded or
                // compacted away entirely, so it was never read as live data.
                let untouched = open(materialize(&files).path())
                    .map(|l| snapshot(&l))
                    .unwrap();
                assert_eq!(
                    snapshot(&log),
                    untouched,
                    "a damaged batch in {file} at {offset} was silently dropped"
                );
                continue;
            }
        }
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} damaged states refused");
}
