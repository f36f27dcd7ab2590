//! Crash tests in the style of ALICE (Pillai et al., OSDI 2014), with the crash states built
//! by `raftline_log::testing::build_image`.
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

use std::path::Path;

use raftline_core::Rng;
use raftline_log::testing::{
    build_image, crash_image, crash_image_counted, write_image, CrashVariant, Files, SECTOR_BYTES,
};
use raftline_log::{Error, LogFile, Op, Options, Recorder};
use raftline_proto::{Entry, HardState, LogIndex, Membership, NodeId, Term};

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
/// theirs in line. Segments grow from 256 bytes to 1 KiB (batches larger than that get one
/// of their own), so crash states hold segments of mixed sizes; they are reopened with
/// other options (fixed 1 KiB segments), which must not matter.
fn run_workload(dir: &Path, seed: u64, zero_fill: bool) -> (Vec<Op>, Vec<(usize, Snapshot)>) {
    let recorder = Recorder::default();
    let options = Options {
        segment_bytes_initial: 256,
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
    let ops = recorder.ops();
    let sizes: std::collections::BTreeSet<u64> = ops
        .iter()
        .filter_map(|op| match op {
            Op::SetLen(file, len) if file.ends_with(".seg") => Some(*len),
            _ => None,
        })
        .collect();
    assert!(sizes.len() >= 3, "seed {seed}: segment sizes {sizes:?}");
    (ops, checkpoints)
}

/// The files a crash after `ops` (recorded from an empty directory) may leave, per `variant`.
fn build(ops: &[Op], variant: CrashVariant) -> Files {
    build_image(&Files::new(), ops, variant)
}

fn materialize(files: &Files) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_image(dir.path(), files).unwrap();
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
                CrashVariant::SyncedOnly,
                CrashVariant::Everything,
                CrashVariant::Subset {
                    granularity: 512,
                    seed: crash as u64,
                },
                CrashVariant::Subset {
                    granularity: 4096,
                    seed: crash as u64 + 1,
                },
                CrashVariant::ZeroedTail,
                CrashVariant::FlippedTail { seed: crash as u64 },
            ];
            let mut states_here: Vec<(String, Files)> = variants
                .iter()
                .map(|&v| (format!("{v:?}"), build(&ops[..crash], v)))
                .collect();
            // The simulator's random crash states: unsynced writes lost, whole or torn.
            for image_seed in [crash as u64, crash as u64 + 7919] {
                let files = crash_image(&Files::new(), &ops[..crash], &mut Rng::new(image_seed));
                states_here.push((format!("crash_image seed {image_seed}"), files));
            }
            for (variant, files) in states_here {
                let state_dir = materialize(&files);
                let log = open(state_dir.path()).unwrap_or_else(|e| {
                    panic!("seed {seed}, crash after op {crash} ({variant}): open failed: {e}")
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
                    panic!("seed {seed}, crash after op {crash} ({variant}): recovered {got:?}, expected one of {allowed:?}")
                };
                assert!(got.hard_state.commit <= matched.hard_state.commit);
                let last = got.first.prev().plus(got.entries.len() as u64);
                assert!(got.hard_state.commit <= last);
                // The recovered log goes on: an append lands where it should and survives
                // the next recovery.
                let next = Entry::normal(Term(1000), last.next(), b"after recovery".to_vec());
                log.append(std::slice::from_ref(&next)).unwrap_or_else(|e| {
                    panic!("seed {seed}, crash after op {crash} ({variant}): append after recovery failed: {e}")
                });
                drop(log);
                let log = open(state_dir.path()).unwrap_or_else(|e| {
                    panic!(
                        "seed {seed}, crash after op {crash} ({variant}): second open failed: {e}"
                    )
                });
                let mut expected = got.clone();
                expected.entries.push(next);
                assert_eq!(
                    snapshot(&log),
                    expected,
                    "seed {seed}, crash after op {crash} ({variant}): the append after recovery"
                );
                states += 1;
            }
        }
        assert!(states > 800, "only {states} crash states");
    }
}

#[test]
fn a_flipped_bit_in_synced_data_before_the_tail_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (ops, _) = run_workload(dir.path(), 7, true);
    let files = build(&ops, CrashVariant::Everything);
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

#[test]
fn a_crash_image_keeps_synced_writes_and_loses_or_tears_unsynced_ones() {
    let new = |byte: u8, len: usize| vec![byte; len];
    let write = |file: &str, offset: u64, data: Vec<u8>| Op::Write {
        file: file.to_string(),
        offset,
        data,
    };
    let ops = vec![
        Op::Create("a".into()),
        write("a", 0, new(1, 3 * SECTOR_BYTES)),
        Op::Sync("a".into()),
        Op::SyncDir,
        // Unsynced: four sectors, the first one partly, over the synced data and past it.
        write("a", 300, new(2, 3 * SECTOR_BYTES + 100)),
        Op::Create("b".into()),
    ];
    let (mut lost, mut whole, mut torn, mut b_created) = (0, 0, 0, 0);
    for seed in 0..200 {
        let (files, counts) = crash_image_counted(&Files::new(), &ops, &mut Rng::new(seed));
        assert_eq!(counts.unsynced_writes, 1);
        let a = &files["a"];
        b_created += usize::from(files.contains_key("b"));
        // Each sector of the unsynced write is all old or all new.
        let mut new_sectors = 0;
        for sector in [(300, 512), (512, 1024), (1024, 1536), (1536, 1936)] {
            let old: &[u8] = if sector.0 < 3 * SECTOR_BYTES {
                &[1, 0]
            } else {
                &[0]
            };
            let region = a.get(sector.0..sector.1.min(a.len())).unwrap_or(&[]);
            if !region.is_empty() && region.iter().all(|&b| b == 2) {
                new_sectors += 1;
            } else {
                assert!(
                    region.iter().all(|b| old.contains(b)),
                    "seed {seed}: sector {sector:?} is mixed"
                );
            }
        }
        assert_eq!(
            &a[..300],
            &new(1, 300)[..],
            "seed {seed}: synced data is gone"
        );
        match new_sectors {
            0 => lost += 1,
            4 => whole += 1,
            _ => torn += 1,
        }
        assert_eq!(counts.writes_torn, u64::from(new_sectors % 4 != 0));
    }
    assert!(
        lost > 20 && whole > 20 && torn > 20,
        "lost {lost}, whole {whole}, torn {torn}"
    );
    assert!(
        b_created > 50 && b_created < 150,
        "the unsynced creation survived {b_created} times"
    );
}
