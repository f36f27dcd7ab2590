//! Segment sizes: a new log takes one small segment, later segments double up to
//! `segment_bytes_max`, a batch larger than a segment gets one of its own, and logs of mixed
//! sizes (also ones written by builds with fixed 64 MiB segments) reopen.

use std::os::unix::fs::FileExt;
use std::path::Path;

use raftline_log::{LogFile, Options, FORMAT_VERSION};
use raftline_proto::{Entry, LogIndex, Term};

const MIB: u64 = 1 << 20;

fn entry(index: u64, bytes: usize) -> Entry {
    Entry::normal(Term(1), LogIndex(index), vec![(index % 251) as u8; bytes])
}

/// The lengths of the segment files, in id order.
fn segment_lengths(dir: &Path) -> Vec<u64> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect()
}

/// The sum of the lengths of every file in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Checks that the log holds `expected`, from index 1.
fn assert_holds(log: &LogFile, expected: &[Entry]) {
    assert_eq!(log.first_index(), LogIndex(1));
    assert_eq!(log.last_index(), LogIndex(expected.len() as u64));
    let got = log
        .entries(LogIndex(1), log.last_index().next(), usize::MAX)
        .unwrap();
    assert!(got == expected, "the log does not hold what was appended");
}

fn sized(initial: u64, max: u64) -> Options {
    Options {
        segment_bytes_initial: initial,
        segment_bytes_max: max,
        sync: false,
        ..Options::default()
    }
}

#[test]
fn a_new_log_takes_one_small_segment_and_reopening_adds_none() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogFile::open(dir.path(), Options::default()).unwrap();
    assert_eq!(segment_lengths(dir.path()), [MIB]);
    // The segment, the state file's two 4 KiB slots and the empty lock file.
    assert_eq!(dir_bytes(dir.path()), MIB + 8192);
    drop(log);
    for _ in 0..3 {
        drop(LogFile::open(dir.path(), Options::default()).unwrap());
    }
    assert_eq!(
        segment_lengths(dir.path()),
        [MIB],
        "reopening prepares nothing"
    );

    // The first batch in a segment has the next one prepared, twice as large.
    let mut all = vec![entry(1, 100)];
    let log = LogFile::open(dir.path(), Options::default()).unwrap();
    log.append(&all).unwrap();
    drop(log);
    assert_eq!(segment_lengths(dir.path()), [MIB, 2 * MIB]);
    // Reopening keeps the prepared segment for later and prepares no other.
    for i in 2..5 {
        let log = LogFile::open(dir.path(), Options::default()).unwrap();
        all.push(entry(i, 100));
        log.append(&all[all.len() - 1..]).unwrap();
        assert_holds(&log, &all);
    }
    assert_eq!(segment_lengths(dir.path()), [MIB, 2 * MIB]);
}

#[test]
fn segments_double_from_the_initial_size_up_to_the_max() {
    let dir = tempfile::tempdir().unwrap();
    let options = sized(4096, 32 << 10);
    let log = LogFile::open(dir.path(), options.clone()).unwrap();
    // 900-byte entries, one per batch: about 950 bytes a record, four to the first segment.
    let all: Vec<Entry> = (1..=200).map(|i| entry(i, 900)).collect();
    for e in &all {
        log.append(std::slice::from_ref(e)).unwrap();
    }
    drop(log);
    let lengths = segment_lengths(dir.path());
    assert!(lengths.len() >= 7, "{lengths:?}");
    let expected: Vec<u64> = (0..lengths.len())
        .map(|i| (4096 << i).min(32 << 10))
        .collect();
    assert_eq!(lengths, expected);

    let log = LogFile::open(dir.path(), options).unwrap();
    assert_holds(&log, &all);
    log.append(&[entry(201, 900)]).unwrap();
    // Compaction removes whole segments of any size.
    log.compact(LogIndex(150)).unwrap();
    assert!(segment_lengths(dir.path()).len() < lengths.len());
    assert_eq!(log.first_index(), LogIndex(151));
}

#[test]
fn an_entry_larger_than_a_segment_gets_one_sized_to_fit() {
    let dir = tempfile::tempdir().unwrap();
    let options = sized(4096, 16 << 10);
    let log = LogFile::open(dir.path(), options.clone()).unwrap();
    // Larger than the first segment (but not the max), then larger than the max.
    let all = vec![
        entry(1, 100),
        entry(2, 10_000),
        entry(3, 50_000),
        entry(4, 100),
    ];
    for e in &all {
        log.append(std::slice::from_ref(e)).unwrap();
    }
    assert_holds(&log, &all);
    drop(log);
    let lengths = segment_lengths(dir.path());
    assert!(
        lengths.iter().any(|&len| len > 50_000),
        "no segment holds the 50 KB entry: {lengths:?}"
    );
    let log = LogFile::open(dir.path(), options).unwrap();
    assert_holds(&log, &all);
}

#[test]
fn a_log_of_fixed_64_mib_segments_opens_with_the_default_options() {
    // As builds before `segment_bytes_initial` wrote it (sparse here, to keep the test small).
    let dir = tempfile::tempdir().unwrap();
    let old = Options {
        zero_fill_segments: false,
        ..sized(64 * MIB, 64 * MIB)
    };
    let mut all: Vec<Entry> = (1..=10).map(|i| entry(i, 200)).collect();
    let log = LogFile::open(dir.path(), old).unwrap();
    log.append(&all).unwrap();
    drop(log);
    assert_eq!(segment_lengths(dir.path()), [64 * MIB]);

    let log = LogFile::open(dir.path(), Options::default()).unwrap();
    assert_holds(&log, &all);
    all.push(entry(11, 200));
    log.append(&all[10..]).unwrap();
    drop(log);
    let log = LogFile::open(dir.path(), Options::default()).unwrap();
    assert_holds(&log, &all);
    // Appends went on in the old segment. The next one was prepared, as large as the max
    // allows after a 64 MiB segment, once, not at each reopening.
    assert_eq!(segment_lengths(dir.path()), [64 * MIB, 64 * MIB]);
}

#[test]
fn mixed_sizes_reopen_and_grow_from_the_last_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<Entry> = Vec::new();
    // Fixed 16 KiB segments, then segments from 1 KiB to 64 KiB: growth continues from the
    // size of the last segment, whatever the options said when it was made.
    for (options, batches) in [
        (sized(16 << 10, 16 << 10), 40),
        (sized(1024, 64 << 10), 150),
    ] {
        let log = LogFile::open(dir.path(), options.clone()).unwrap();
        assert_holds(&log, &all);
        for _ in 0..batches {
            let next = all.len() as u64 + 1;
            all.push(entry(next, 900));
            log.append(&all[all.len() - 1..]).unwrap();
        }
        drop(log);
        let log = LogFile::open(dir.path(), options).unwrap();
        assert_holds(&log, &all);
    }
    let lengths = segment_lengths(dir.path());
    let first_grown = lengths.iter().position(|&len| len != 16 << 10).unwrap();
    assert!(first_grown >= 2, "{lengths:?}");
    assert_eq!(
        lengths[first_grown..first_grown + 2],
        [32 << 10, 64 << 10],
        "{lengths:?}"
    );
}

/// Writes an empty segment file with a valid header, as a build that prepared a segment at
/// every reopening left them.
fn write_empty_segment(dir: &Path, id: u64, len: u64) {
    let mut header = [0u8; 64];
    header[0..8].copy_from_slice(b"RAFTSEGM");
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    let file = std::fs::File::create_new(dir.join(format!("{id:020}.seg"))).unwrap();
    file.set_len(len).unwrap();
    file.write_all_at(&header, 0).unwrap();
}

#[test]
fn empty_segments_past_the_next_one_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        zero_fill_segments: false,
        ..sized(4096, 4096)
    };
    let mut all: Vec<Entry> = (1..=3).map(|i| entry(i, 200)).collect();
    let log = LogFile::open(dir.path(), options.clone()).unwrap();
    log.append(&all).unwrap();
    drop(log);
    assert_eq!(segment_lengths(dir.path()), [4096]);
    for id in 2..=4 {
        write_empty_segment(dir.path(), id, 8192);
    }
    let log = LogFile::open(dir.path(), options).unwrap();
    assert_holds(&log, &all);
    // The data segment, and the one after it kept as the next segment.
    assert_eq!(segment_lengths(dir.path()), [4096, 8192]);
    // Rotation uses the kept segment.
    for i in 4..=10 {
        all.push(entry(i, 900));
        log.append(&all[all.len() - 1..]).unwrap();
    }
    assert_holds(&log, &all);
    assert_eq!(segment_lengths(dir.path())[..2], [4096, 8192]);
    assert_eq!(log.segment_count(), segment_lengths(dir.path()).len());
}
