//! A durable, memory-mapped, segmented, append-only Raft log.
//!
//! [`LogFile`] stores a Raft log in a directory and implements raftline-core's
//! [`Storage`](raftline_core::Storage) and [`StorageMut`](raftline_core::StorageMut). Like goraft's
//! `Log`, it knows where every entry lies (segment and byte offset), so a read is a lookup in
//! an in-memory index, and the payload it returns points into the mapped file (no copy).
//!
//! # Directory layout
//!
//! ```text
//! LOCK                         held (flock) while a process has the log open
//! state                        two 4 KiB slots: hard state, compaction point, membership,
//!                              first segment of the log
//! 00000000000000000001.seg     segment files, each preallocated when created: the first to
//! 00000000000000000002.seg     `segment_bytes_initial`, each next one twice the size of the
//!                              one before, up to `segment_bytes_max`
//! ```
//!
//! # Segment sizes
//!
//! A segment file is preallocated to its full size when it is created and keeps that length
//! (it is mapped whole, so it never grows or shrinks; it is only ever removed whole), and with
//! [`Options::zero_fill_segments`] it is written with zeros ahead of use. Its size is its
//! file's length, read back on open, so a log may hold any mix of sizes. The first segment of
//! a log is [`Options::segment_bytes_initial`] (1 MiB by default); each next one is twice the
//! size of the one before, up to [`Options::segment_bytes_max`] (64 MiB): a new, empty log
//! takes one 1 MiB file, and a busy one reaches 64 MiB segments after six rotations. A batch
//! larger than the next segment gets one of its own, sized to fit.
//!
//! The next segment is prepared (created, zero-filled, synced) in the background once the
//! current one takes its first batch, so an idle log never has more than one segment it does
//! not use yet. On open, the empty segment after the last one that holds data is kept as the
//! prepared one; further empty ones are removed.
//!
//! The trade-off: larger segments mean fewer segment files to create, fill and sync, and
//! fewer directory syncs and files; smaller ones take less disk before the log needs it.
//! Setting `segment_bytes_initial` to `segment_bytes_max` gives every segment the same size
//! (the behaviour before the option existed).
//!
//! # Segment format (little-endian, every structure 8-byte aligned)
//!
//! ```text
//! segment header, 64 bytes
//! +----------+---------+----------+------------+-----------+---------+
//! | "RAFTSEGM" | version | reserved | segment id | crc32c    | zeros   |
//! | 8        | u32     | u32      | u64        | u32 (0..24) | 36    |
//! +----------+---------+----------+------------+-----------+---------+
//!
//! batch record: one per sync
//! +-------+------------+----------+-------+-------------+-----------+----------+
//! | magic | header crc | body len | count | first index | body crc  | reserved |
//! | u32   | u32 (8..32)| u32      | u32   | u64         | u32       | u32      |
//! +-------+------------+----------+-------+-------------+-----------+----------+
//! body: `count` entries, entry i has index `first index + i`
//! +------+-------------+------+-----+---------+-------------------+
//! | term | payload len | kind | pad | payload | pad to 8 bytes    |
//! | u64  | u32         | u8   | 3   | len     |                   |
//! +------+-------------+------+-----+---------+-------------------+
//! kind: 1 normal (payload is the command), 2 no-op, 3 membership (postcard)
//! ```
//!
//! A record is a whole batch: everything one sync made durable. Its header checksum guards the
//! lengths and the first index, its body checksum the entries. A write torn by a crash is the
//! last batch and nothing valid follows it, which tells it apart from damage to synced data
//! (a bad batch followed by a valid one). A batch whose first index is at or below the log's
//! last index replaces the log from there: truncation appends, it never overwrites, so bytes a
//! reader holds never change.
//!
//! # Compaction and snapshot installation
//!
//! [`LogFile::compact`] records the new compaction point (synced), then deletes whole
//! segments that hold nothing past it; recovery skips entries at or before the compaction
//! point in segments whose deletion a crash interrupted.
//!
//! [`LogFile::install_snapshot`] may have to discard every entry, including ones past the
//! snapshot's index (a diverging suffix), and restart the log after an index far past the
//! last one. One synced state write records the new compaction point, the snapshot's
//! membership and a *first segment*: the id of a fresh segment the log continues in. Every
//! segment with a lower id is dead from that moment, whatever it holds; recovery deletes such
//! segments unread. Then the writer moves to the fresh segment, the old files are removed and
//! the directory is synced. A crash before the state write lands reopens the old log; after
//! it, the empty log after the snapshot, which the next append continues at `index + 1`.
//!
//! # The async interface
//!
//! [`LogFile`] implements raftline-core's [`LogStore`](raftline_core::driver::LogStore): `persist`
//! submits its entries at call time (they join the next group commit) and queues a job for a
//! background sync thread, which waits for the entries to be synced and then writes the hard
//! state, job after job in call order. With [`SyncWorker::Manual`] no thread is started: the
//! jobs wait in a queue until [`LogFile::run_queued_jobs`] runs them, in order, on the
//! caller's thread, with the same code the sync thread runs (for deterministic simulations).
//!
//! `compact` and `install_snapshot` are ordered with those writes by running inside the call:
//! the call waits until the sync thread has finished every job queued before it (a barrier
//! job; in manual mode, the call runs the queued jobs itself), so every earlier persist,
//! entries and hard state, is durable and its future resolved; then it runs
//! [`LogFile::compact`] or [`LogFile::install_snapshot`], which hold off appends while they
//! run and are durable when they return. A `persist` called later submits only after that, so
//! it cannot overtake the operation. The returned future is ready at once. The price is that
//! these calls block the caller for the earlier syncs and their own; they are rare (once per
//! snapshot).
//!
//! # Guarantees
//! - [`LogFile::append`] returns once its entries are synced; appends that arrive during a
//!   sync share the next one (group commit).
//! - A failed write or sync is fatal: the store refuses every later write.
//! - Hard state and compaction point are written to alternating checksummed slots and synced.
//! - A snapshot installation is crash-atomic: a crash leaves the old log or the new one.
//! - New files are synced and their directory is synced before they are relied on; on open,
//!   the segment the log ends in is synced (a process crash may have left its last batch
//!   unsynced in the page cache), and so are the directory and the segment kept for later.
//! - One process per directory (the `LOCK` file).

#![deny(missing_docs)]

mod error;
mod format;
mod io;
mod mmap;
mod persist;
mod recovery;
mod state;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, Result};
pub use format::FORMAT_VERSION;
pub use io::{Op, Recorder};
pub use recovery::RecoveryReport;
pub use store::{LogFile, Options, SyncWorker, Ticket};

// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
