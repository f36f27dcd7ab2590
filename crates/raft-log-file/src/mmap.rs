//! The only module with `unsafe` code: read-only memory maps of segment files, and the
//! [`Bytes`] owners that keep a map alive while a caller holds an entry.

#![allow(unsafe_code)]

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::Mmap;

/// A read-only map of a whole segment file.
#[derive(Debug)]
pub(crate) struct SegmentMap {
    map: Mmap,
}

impl SegmentMap {
    /// Maps `file`, whose length must never shrink while the map lives.
    pub(crate) fn new(file: &File) -> std::io::Result<SegmentMap> {
        // SAFETY: memmap2 requires that the file is not truncated or modified in ways that
        // break Rust's aliasing rules while mapped. The store never shrinks a segment file
        // (each is preallocated at its full length when created, keeps it, and is only ever
        // removed whole, which leaves
        // existing maps valid on Unix), and it never rewrites bytes that a reader may hold:
        // records are only appended past the durable end, and a truncation of the log appends
        // new records instead of overwriting old ones. One process per directory is enforced
        // by the lock file.
        let map = unsafe { Mmap::map(file)? };
        Ok(SegmentMap { map })
    }

    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }
}

/// A slice of a mapped segment that owns a reference to the map.
struct MapSlice {
    map: Arc<SegmentMap>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map.bytes()[self.start..self.end]
    }
}

/// Zero-copy bytes `start..end` of the map. They stay valid as long as they are held, even
/// after the store drops the map or removes the file.
pub(crate) fn slice(map: &Arc<SegmentMap>, start: usize, end: usize) -> Bytes {
    assert!(
        start <= end && end <= map.bytes().len(),
        "slice {start}..{end} outside the map"
    );
    Bytes::from_owner(MapSlice {
        map: Arc::clone(map),
        start,
        end,
    })
}
