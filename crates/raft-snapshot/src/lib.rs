//! A crash-safe Raft snapshot store on disk, for any async runtime.
//!
//! [`FileSnapshotStore`] implements raftline-core's
//! [`SnapshotStore`](raftline_core::driver::SnapshotStore): a state machine streams its snapshot
//! into a [`FileSnapshotWriter`], a leader reads chunks of the latest snapshot to send, and a
//! follower writes received chunks into a partial copy that is checked and installed once
//! complete. Snapshots are streamed both ways, so they need not fit in memory.
//!
//! # Directory layout
//!
//! ```text
//! <dir>/
//!   00000000000000000120-00000000000000000003.snap   data of the latest snapshot
//!   00000000000000000120-00000000000000000003.meta   its metadata: present = complete
//!   write-7.tmp                                      being written by a state machine
//!   00000000000000000150-00000000000000000004.meta.tmp         metadata being written
//!   00000000000000000180-00000000000000000004-1a2b3c4d-8.partial   being received
//!                  <last index>-<last term>[-<crc32c of the data>-<n>]
//! ```
//!
//! Only the latest snapshot is kept. Temporary (`.tmp`) and partial (`.partial`) files are
//! leftovers once the store is reopened and are removed then, as is any `.snap` file without
//! a valid `.meta`.
//!
//! # Metadata file (little-endian)
//!
//! ```text
//! +------------+---------+-------------------------------+-----------------------------+
//! | "RAFTSNAP" | version | crc32c of (version, body)     | body: postcard(SnapshotMeta) |
//! | 8          | u32     | u32                           | rest of the file            |
//! +------------+---------+-------------------------------+-----------------------------+
//! ```
//!
//! [`SnapshotMeta::checksum`](raftline_proto::SnapshotMeta) is the CRC-32C of the whole data file.
//!
//! # Installing a snapshot
//!
//! Whether written by the state machine ([`SnapshotWriter::finish`]) or received
//! ([`SnapshotStore::finish_received`], which first checks the copy's size and checksum
//! against the leader's metadata and removes it if they differ), a snapshot is installed in
//! this order, each step durable before the next:
//!
//! 1. fdatasync the data file (still under its temporary name);
//! 2. rename it to `<key>.snap`, fsync the directory;
//! 3. write `<key>.meta.tmp`, fdatasync it, rename it to `<key>.meta`, fsync the directory:
//!    from here on the snapshot exists for a restart;
//! 4. make it the latest, then remove the previous snapshot's `.meta` and then its `.snap`.
//!
//! A crash before step 3 completes leaves a data file without metadata or a temporary file:
//! [`FileSnapshotStore::open`] removes them and the previous snapshot stays the latest. A
//! crash during step 4 leaves an older snapshot beside the new one: `open` removes it. A
//! metadata file that fails its checksum is rejected (and reported in
//! [`RecoveryReport::rejected`]); the newest older complete snapshot, if any, is the latest.
//!
//! # Threads
//!
//! The store never needs a particular runtime. Chunk reads and writes and the writer's
//! buffered writes happen inline. [`SnapshotWriter::finish`] and
//! [`SnapshotStore::finish_received`] fsync and (for a received copy) read the whole
//! snapshot, so they run on a short-lived thread of their own and the caller awaits a
//! channel.
//!
//! [`SnapshotWriter::finish`]: raftline_core::driver::SnapshotWriter::finish
//! [`SnapshotStore::finish_received`]: raftline_core::driver::SnapshotStore::finish_received

#![deny(missing_docs)]

mod error;
mod files;
mod format;
mod store;
mod writer;

pub use error::{Error, Result};
pub use format::FORMAT_VERSION;
pub use store::{FileSnapshotStore, Options, RecoveryReport};
pub use writer::FileSnapshotWriter;

// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
