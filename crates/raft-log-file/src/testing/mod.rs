//! Test support (feature `testing`):
//! - [`LogFileFactory`]: raftline-core's core simulator with each node's log in a [`LogFile`];
//! - [`LogFileBackend`]: raftline-core's driver simulator with each server's log in a [`LogFile`]
//!   written through its async path, and machine crashes that lose unsynced writes
//!   ([`run_driver_seed_on_files`]);
//! - crash images: the files a crash may leave after recorded file operations
//!   ([`crash_image`], [`build_image`], [`write_image`]).

mod backend;
mod image;

pub use backend::{run_driver_seed_on_files, CrashStats, LogFileBackend, PlantedBug, SimLogFile};
pub use image::{
    build_image, crash_image, crash_image_counted, durable, read_image, write_image, CrashVariant,
    Files, ImageCounts, SECTOR_BYTES,
};

use std::path::PathBuf;

use raftline_core::testing::sim::StoreFactory;
use raftline_proto::{Membership, NodeId};

use crate::{LogFile, Options};

/// Opens `root/n<id>` for each simulated node. Every simulated crash closes the log and opens
/// it again, so recovery runs at each one.
pub struct LogFileFactory {
    /// The directory holding one sub-directory per node.
    pub root: PathBuf,
    /// The first segment's size, smaller still, so that runs have segments of mixed sizes.
    pub segment_bytes_initial: u64,
    /// The segment size, small so that runs rotate and compact segments.
    pub segment_bytes_max: u64,
}

impl LogFileFactory {
    /// A factory under `root` with segments from 4 KiB to 16 KiB.
    pub fn new(root: impl Into<PathBuf>) -> LogFileFactory {
        LogFileFactory {
            root: root.into(),
            segment_bytes_initial: 4 << 10,
            segment_bytes_max: 16 << 10,
        }
    }
}

impl StoreFactory for LogFileFactory {
    type Store = LogFile;

    fn open(&mut self, id: NodeId, membership: &Membership) -> LogFile {
        let options = Options {
            segment_bytes_initial: self.segment_bytes_initial,
            segment_bytes_max: self.segment_bytes_max,
            // The simulator models process crashes: the page cache survives them.
            sync: false,
            membership: membership.clone(),
            ..Options::default()
        };
        let dir = self.root.join(id.to_string());
        LogFile::open(&dir, options)
            .unwrap_or_else(|e| panic!("{} does not reopen: {e}", dir.display()))
    }
}
