//! The file snapshot store: writing, reading, receiving, and recovery from crash leftovers.

use std::fs;
use std::path::Path;

use futures::executor::block_on;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use raftline_core::driver::SnapshotStore;
use raftline_core::SnapshotError;
use raftline_proto::{LogIndex, Membership, NodeId, SnapshotMeta, Term};
use raftline_snapshot::{FileSnapshotStore, Options};

fn open(dir: &Path) -> FileSnapshotStore {
    FileSnapshotStore::open(dir, Options::default()).unwrap()
}

fn membership() -> Membership {
    Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)])
}

/// Deterministic, not very compressible test data.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(store: &FileSnapshotStore, index: u64, term: u64, bytes: &[u8]) -> SnapshotMeta {
    block_on(async {
        let mut w = store.begin().await.unwrap();
        // Several writes, to go through the buffer more than once.
        for piece in bytes.chunks(777) {
            w.write_all(piece).await.unwrap();
        }
        w.finish(LogIndex(index), Term(term), membership())
            .await
            .unwrap()
    })
}

fn read_all(store: &FileSnapshotStore, meta: &SnapshotMeta) -> Vec<u8> {
    block_on(async {
        let mut r = store.open(meta).await.unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        out
    })
}

/// The file names in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn stem(index: u64, term: u64) -> String {
    format!("{index:020}-{term:020}")
}

/// Sends `meta` from `leader` to `follower` in chunks of `chunk` bytes, in order.
fn transfer(
    leader: &FileSnapshotStore,
    follower: &FileSnapshotStore,
    meta: &SnapshotMeta,
    chunk: usize,
) {
    block_on(async {
        let mut offset = 0;
        while offset < meta.size_bytes {
            let bytes = leader.read_chunk(meta, offset, chunk).await.unwrap();
            assert!(!bytes.is_empty());
            follower.write_chunk(meta, offset, &bytes).await.unwrap();
            offset += bytes.len() as u64;
        }
    });
}

#[test]
fn written_snapshot_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(100_000, 1);
    let store = open(dir.path());
    assert_eq!(store.latest(), None);
    let meta = write(&store, 10, 2, &bytes);
    assert_eq!(
        meta,
        SnapshotMeta {
            last_index: LogIndex(10),
            last_term: Term(2),
            membership: membership(),
            size_bytes: bytes.len() as u64,
            checksum: crc32c::crc32c(&bytes),
        }
    );
    assert_eq!(store.latest(), Some(meta.clone()));
    assert_eq!(read_all(&store, &meta), bytes);
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.latest(), Some(meta.clone()));
    assert_eq!(store.recovery(), &Default::default());
    assert_eq!(read_all(&store, &meta), bytes);
    assert_eq!(fs::read(store.latest_path().unwrap()).unwrap(), bytes);
    assert_eq!(
        files(dir.path()),
        [stem(10, 2) + ".meta", stem(10, 2) + ".snap"]
    );
}

#[test]
fn empty_snapshot_in_a_new_directory() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a/b");
    let store = open(&dir);
    let meta = write(&store, 1, 1, &[]);
    assert_eq!((meta.size_bytes, meta.checksum), (0, 0));
    let store = open(&dir);
    assert_eq!(store.latest(), Some(meta.clone()));
    assert!(read_all(&store, &meta).is_empty());
}

#[test]
fn newer_snapshot_removes_older() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = write(&store, 10, 2, &data(5000, 1));
    let second_bytes = data(7000, 2);
    let second = write(&store, 20, 3, &second_bytes);
    assert_eq!(store.latest(), Some(second.clone()));
    assert_eq!(
        files(dir.path()),
        [stem(20, 3) + ".meta", stem(20, 3) + ".snap"]
    );
    block_on(async {
        assert_eq!(
            store.open(&first).await.err(),
            Some(SnapshotError::NotFound(LogIndex(10)))
        );
        assert_eq!(
            store.read_chunk(&first, 0, 10).await.err(),
            Some(SnapshotError::NotFound(LogIndex(10)))
        );
    });
    assert_eq!(read_all(&store, &second), second_bytes);
}

#[test]
fn snapshot_not_newer_than_latest_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let latest = write(&store, 20, 3, &data(5000, 1));
    assert_eq!(write(&store, 20, 3, &data(10, 2)), latest);
    assert_eq!(write(&store, 5, 1, &data(10, 3)), latest);
    assert_eq!(store.latest(), Some(latest));
    assert_eq!(
        files(dir.path()),
        [stem(20, 3) + ".meta", stem(20, 3) + ".snap"]
    );
}

#[test]
fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    block_on(async {
        let mut w = store.begin().await.unwrap();
        w.write_all(&data(10_000, 1)).await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(files(dir.path()).len(), 1);
    });
    assert!(files(dir.path()).is_empty());
    assert_eq!(store.latest(), None);
}

#[test]
fn crash_leftovers_are_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let older = write(&store, 5, 1, &data(3000, 1));
    let kept_bytes = data(4000, 2);
    // Write a second complete snapshot elsewhere and copy it in: a crash after installing it
    // but before removing the older one.
    let scratch = tempfile::tempdir().unwrap();
    let other = open(scratch.path());
    let kept = write(&other, 8, 1, &kept_bytes);
    for name in files(scratch.path()) {
        fs::copy(scratch.path().join(&name), dir.path().join(&name)).unwrap();
    }
    drop(store);

    // A newer snapshot whose metadata fails its checksum.
    let corrupt = write(&other, 30, 2, &data(2000, 3));
    let meta_path = scratch.path().join(stem(30, 2) + ".meta");
    let mut meta_bytes = fs::read(&meta_path).unwrap();
    let last = meta_bytes.len() - 1;
    meta_bytes[last] ^= 1;
    fs::write(dir.path().join(stem(30, 2) + ".meta"), meta_bytes).unwrap();
    fs::copy(
        scratch.path().join(stem(30, 2) + ".snap"),
        dir.path().join(stem(30, 2) + ".snap"),
    )
    .unwrap();
    // A newer one with valid metadata whose data file was cut short.
    let truncated = write(&other, 40, 2, &data(2000, 4));
    fs::copy(
        scratch.path().join(stem(40, 2) + ".meta"),
        dir.path().join(stem(40, 2) + ".meta"),
    )
    .unwrap();
    fs::write(dir.path().join(stem(40, 2) + ".snap"), data(100, 4)).unwrap();
    // A data file renamed into place without its metadata, and temporary files.
    let leftovers = [
        stem(50, 3) + ".snap",
        stem(50, 3) + ".meta.tmp",
        "write-0.tmp".to_string(),
        format!("{}-{:08x}-3.partial", stem(60, 3), 0xabcd_u32),
    ];
    for name in &leftovers {
        fs::write(dir.path().join(name), b"half written").unwrap();
    }
    fs::write(dir.path().join("notes.txt"), b"not ours").unwrap();

    let store = open(dir.path());
    assert_eq!(store.latest(), Some(kept.clone()));
    assert_eq!(read_all(&store, &kept), kept_bytes);
    let report = store.recovery();
    let rejected: Vec<_> = report.rejected.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(
        rejected,
        [
            dir.path().join(stem(40, 2) + ".meta"),
            dir.path().join(stem(30, 2) + ".meta")
        ]
    );
    assert!(report.rejected[0]
        .1
        .contains("has 100 bytes, expected 2000"));
    assert!(report.rejected[1].1.contains("checksum mismatch"));
    assert_eq!(report.removed.len(), 4 + 2 + leftovers.len());
    assert_eq!(
        files(dir.path()),
        [
            stem(8, 1) + ".meta",
            stem(8, 1) + ".snap",
            "notes.txt".to_string()
        ]
    );
    let _ = (older, corrupt, truncated);

    // Nothing left to clean the second time.
    let store = open(dir.path());
    assert_eq!(store.latest(), Some(kept));
    assert_eq!(store.recovery(), &Default::default());
}

#[test]
fn only_corrupt_metadata_means_no_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write(&store, 5, 1, &data(3000, 1));
    drop(store);
    let meta_path = dir.path().join(stem(5, 1) + ".meta");
    let mut bytes = fs::read(&meta_path).unwrap();
    bytes[9] ^= 0xff; // the format version
    fs::write(&meta_path, bytes).unwrap();

    let store = open(dir.path());
    assert_eq!(store.latest(), None);
    assert!(store.recovery().rejected[0]
        .1
        .contains("unsupported format version"));
    assert!(files(dir.path()).is_empty());
}

#[test]
fn chunked_receive_in_order() {
    let (ldir, fdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = open(ldir.path());
    let bytes = data(10_000, 7);
    let meta = write(&leader, 12, 4, &bytes);
    let follower = open(fdir.path());
    transfer(&leader, &follower, &meta, 999);
    assert_eq!(follower.latest(), None);
    block_on(follower.finish_received(&meta)).unwrap();
    assert_eq!(follower.latest(), Some(meta.clone()));
    assert_eq!(read_all(&follower, &meta), bytes);
    assert_eq!(files(fdir.path()), files(ldir.path()));

    let follower = open(fdir.path());
    assert_eq!(follower.latest(), Some(meta.clone()));
    assert_eq!(read_all(&follower, &meta), bytes);
}

#[test]
fn chunked_receive_with_resends_and_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = data(10_000, 8);
    let meta = SnapshotMeta {
        last_index: LogIndex(9),
        last_term: Term(2),
        membership: membership(),
        size_bytes: bytes.len() as u64,
        checksum: crc32c::crc32c(&bytes),
    };
    block_on(async {
        // Garbage first at some offsets, then every chunk backwards, some twice.
        store.write_chunk(&meta, 3000, &[0xee; 2500]).await.unwrap();
        let chunks: Vec<(usize, &[u8])> = bytes.chunks(1000).enumerate().collect();
        for &(i, chunk) in chunks.iter().rev() {
            store
                .write_chunk(&meta, i as u64 * 1000, chunk)
                .await
                .unwrap();
        }
        store
            .write_chunk(&meta, 5000, &bytes[5000..6000])
            .await
            .unwrap();
        store.finish_received(&meta).await.unwrap();
    });
    assert_eq!(store.latest(), Some(meta.clone()));
    assert_eq!(read_all(&store, &meta), bytes);
}

#[test]
fn corrupt_received_snapshot_fails_and_leaves_nothing() {
    let (ldir, fdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = open(ldir.path());
    let bytes = data(10_000, 9);
    let meta = write(&leader, 12, 4, &bytes);
    let follower = open(fdir.path());

    // One byte flipped.
    let mut bad = bytes.clone();
    bad[4321] ^= 0x40;
    block_on(follower.write_chunk(&meta, 0, &bad)).unwrap();
    let err = block_on(follower.finish_received(&meta)).unwrap_err();
    let SnapshotError::Corrupt(msg) = err else {
        panic!("expected Corrupt, got {err:?}");
    };
    assert!(
        msg.contains(".partial") && msg.contains("expected"),
        "{msg}"
    );
    assert!(files(fdir.path()).is_empty());
    assert_eq!(follower.latest(), None);

    // The last chunk missing: the size is wrong.
    block_on(follower.write_chunk(&meta, 0, &bytes[..9000])).unwrap();
    let err = block_on(follower.finish_received(&meta)).unwrap_err();
    assert!(
        matches!(&err, SnapshotError::Corrupt(m) if m.contains("received 9000 bytes, expected 10000")),
        "{err:?}"
    );
    assert!(files(fdir.path()).is_empty());

    // Nothing left to finish.
    assert_eq!(
        block_on(follower.finish_received(&meta)),
        Err(SnapshotError::NotFound(LogIndex(12)))
    );
}

#[test]
fn chunk_past_the_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let meta = SnapshotMeta {
        last_index: LogIndex(3),
        size_bytes: 100,
        ..Default::default()
    };
    assert!(matches!(
        block_on(store.write_chunk(&meta, 90, &[0; 11])),
        Err(SnapshotError::Corrupt(_))
    ));
    assert!(matches!(
        block_on(store.write_chunk(&meta, u64::MAX, &[0; 1])),
        Err(SnapshotError::Corrupt(_))
    ));
    block_on(store.write_chunk(&meta, 90, &[0; 10])).unwrap();
}

#[test]
fn chunk_of_another_snapshot_discards_the_partial_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (data(3000, 1), data(4000, 2));
    let meta_of = |index, bytes: &[u8]| SnapshotMeta {
        last_index: LogIndex(index),
        last_term: Term(1),
        membership: membership(),
        size_bytes: bytes.len() as u64,
        checksum: crc32c::crc32c(bytes),
    };
    let (meta_a, meta_b) = (meta_of(10, &a), meta_of(20, &b));
    block_on(async {
        store.write_chunk(&meta_a, 0, &a[..1000]).await.unwrap();
        let names = files(dir.path());
        assert_eq!(names.len(), 1);
        assert!(names[0].starts_with(&format!("{}-{:08x}-", stem(10, 1), meta_a.checksum)));

        store.write_chunk(&meta_b, 0, &b).await.unwrap();
        let names = files(dir.path());
        assert_eq!(names.len(), 1);
        assert!(names[0].starts_with(&format!("{}-{:08x}-", stem(20, 1), meta_b.checksum)));
        assert_eq!(
            store.finish_received(&meta_a).await,
            Err(SnapshotError::NotFound(LogIndex(10)))
        );
        store.finish_received(&meta_b).await.unwrap();
    });
    assert_eq!(store.latest(), Some(meta_b.clone()));
    assert_eq!(read_all(&store, &meta_b), b);
}

#[test]
fn receiving_a_snapshot_not_newer_than_latest_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let latest = write(&store, 20, 3, &data(3000, 1));
    let old = data(500, 2);
    let old_meta = SnapshotMeta {
        last_index: LogIndex(15),
        last_term: Term(3),
        membership: membership(),
        size_bytes: old.len() as u64,
        checksum: crc32c::crc32c(&old),
    };
    block_on(async {
        store.write_chunk(&old_meta, 0, &old).await.unwrap();
        store.finish_received(&old_meta).await.unwrap();
        // Finishing the latest again (a retried install) is fine too.
        store.finish_received(&latest).await.unwrap();
    });
    assert_eq!(store.latest(), Some(latest));
    assert_eq!(files(dir.path()).len(), 2);
}

#[test]
fn read_chunk_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = data(1000, 3);
    let meta = write(&store, 4, 1, &bytes);
    block_on(async {
        for (offset, len, want) in [
            (0, 10, &bytes[..10]),
            (0, 1000, &bytes[..]),
            (0, 5000, &bytes[..]),
            (500, 100, &bytes[500..600]),
            (990, 10, &bytes[990..]),
            (997, 10, &bytes[997..]),
            (1000, 10, &[][..]),
            (2000, 10, &[][..]),
            (100, 0, &[][..]),
        ] {
            let got = store.read_chunk(&meta, offset, len).await.unwrap();
            assert_eq!(&got[..], want, "offset {offset} len {len}");
        }
    });
}

#[test]
fn large_snapshot_streams_both_ways() {
    const MIB: usize = 1 << 20;
    let (ldir, fdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = open(ldir.path());
    let block = data(MIB, 11);
    let mut crc = 0;
    let meta = block_on(async {
        let mut w = leader.begin().await.unwrap();
        for i in 0..64u8 {
            let mut piece = block.clone();
            piece[0] = i; // every MiB differs
            crc = crc32c::crc32c_append(crc, &piece);
            w.write_all(&piece).await.unwrap();
        }
        w.finish(LogIndex(1000), Term(7), membership())
            .await
            .unwrap()
    });
    assert_eq!((meta.size_bytes, meta.checksum), (64 * MIB as u64, crc));

    let follower = open(fdir.path());
    transfer(&leader, &follower, &meta, MIB);
    block_on(follower.finish_received(&meta)).unwrap();
    let follower = open(fdir.path());
    assert_eq!(follower.latest(), Some(meta.clone()));

    // Read back in pieces, never the whole snapshot at once.
    block_on(async {
        let mut r = follower.open(&meta).await.unwrap();
        let (mut buf, mut crc, mut total) = (vec![0; 64 * 1024], 0, 0);
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            total += n as u64;
        }
        assert_eq!((total, crc), (meta.size_bytes, meta.checksum));
    });
}
