//! Rebuilding the index on open: one scan over every segment, in order.
//!
//! - Segments with an id below the state's first segment predate an installed snapshot: they
//!   are removed unread (their batches may even hold indexes past the compaction point, of an
//!   older log). The log starts at the compaction point plus one in the first segment kept.
//! - Zeros where a batch header should be end a segment's data.
//! - In the last segment, a batch that fails its checksum with no valid batch after it is a
//!   torn write (the one batch whose sync had not returned): it is zeroed and the log ends
//!   before it.
//! - A checksum failure anywhere else is corruption of synced data: opening stops with an
//!   error naming the file and offset, unless [`Options::repair`](crate::Options::repair) asks
//!   to truncate the log there (what was dropped is reported).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use raftline_proto::LogIndex;

use crate::error::{Error, Result};
use crate::format::{self, Parsed, BATCH_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::io::{Handle, Io};
use crate::mmap::SegmentMap;
use crate::state::StateRecord;
use crate::store::{parse_segment_name, Index, Options, Segment};

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files scanned.
    pub segments: usize,
    /// Batch records read.
    pub batches: u64,
    /// A torn tail that was cut off: file name, offset and bytes zeroed.
    pub torn_tail: Option<(String, u64, u64)>,
    /// With `repair`: what was dropped (file, offset, reason, later segments removed).
    pub repaired: Option<String>,
}

/// Where appends continue after recovery.
pub(crate) struct Tail {
    pub(crate) handle: Handle,
    pub(crate) id: u64,
    pub(crate) len: u64,
    pub(crate) offset: u64,
}

pub(crate) struct Recovered {
    pub(crate) index: Index,
    pub(crate) tail: Option<Tail>,
    pub(crate) report: RecoveryReport,
}

/// Zeroes are written in blocks of this size when cutting a torn tail.
const ZERO_BLOCK_BYTES: usize = 4096;

pub(crate) fn recover(io: &Io, options: &Options, state: &StateRecord) -> Result<Recovered> {
    let mut ids: Vec<(u64, String)> = std::fs::read_dir(&io.dir)
        .map_err(|e| Error::io("list", &io.dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            parse_segment_name(&name).map(|id| (id, name))
        })
        .collect();
    ids.sort_unstable();
    // What an installed snapshot discarded: the state write that made it so landed, the
    // removal of the files may not have.
    let live = ids.partition_point(|(id, _)| *id < state.first_segment);
    if live > 0 {
        for (_, name) in ids.drain(..live) {
            io.remove(&name)?;
        }
        io.sync_dir()?;
    }
    let mut index = Index {
        first: state.compacted_index.next(),
        base_term: state.compacted_term,
        slots: VecDeque::new(),
        segments: BTreeMap::new(),
    };
    let mut report = RecoveryReport {
        segments: ids.len(),
        ..RecoveryReport::default()
    };
    let mut tail = None;
    let count = ids.len();
    // Segments prepared ahead of use may follow the one being appended to: the tail of the log
    // is in the last segment that holds anything.
    let mut has_data = Vec::with_capacity(count);
    for (_, name) in &ids {
        has_data.push(segment_has_data(io, name)?);
    }
    let mut k = 0;
    while k < count {
        let (id, name) = &ids[k];
        let is_last = !has_data[k + 1..].iter().any(|&d| d);
        let handle = io.open(name)?;
        let len = handle
            .file
            .metadata()
            .map_err(|e| Error::io("stat", &handle.path, e))?
            .len();
        let map =
            Arc::new(SegmentMap::new(&handle.file).map_err(|e| Error::io("map", &handle.path, e))?);
        let bytes = map.bytes();
        let header_ok = format::check_segment_header(bytes);
        if let Err(reason) = &header_ok {
            // Nothing is written to a segment before its header is synced, so a last segment
            // with a bad header and no valid batch in it is one whose creation (or zero fill)
            // a crash interrupted: it never held data. Remove it; appends start a fresh one.
            if is_last && !has_valid_batch_after(bytes, SEGMENT_HEADER_BYTES - 8) {
                drop(handle);
                io.remove(name)?;
                io.sync_dir()?;
                break;
            }
            return Err(Error::Corrupt {
                path: handle.path.clone(),
                offset: 0,
                reason: reason.clone(),
            });
        }
        if header_ok.as_ref().ok() != Some(id) {
            return Err(Error::Corrupt {
                path: handle.path.clone(),
                offset: 0,
                reason: format!(
                    "segment header names segment {:?}, the file name {id}",
                    header_ok.ok()
                ),
            });
        }
        index.segments.insert(
            *id,
            Segment {
                name: name.clone(),
                map: Arc::clone(&map),
                max_index: LogIndex(0),
            },
        );
        let mut offset = SEGMENT_HEADER_BYTES;
        let end = loop {
            match format::parse_batch(bytes, offset) {
                Parsed::Batch(view) => {
                    index
                        .apply_batch(*id, view.first_index, &view.entries)
                        .map_err(|reason| Error::Corrupt {
                            path: handle.path.clone(),
                            offset: offset as u64,
                            reason,
                        })?;
                    report.batches += 1;
                    offset += view.len;
                }
                Parsed::End => break offset,
                Parsed::Bad(reason) => {
                    let valid_after = has_valid_batch_after(bytes, offset);
                    if is_last && !valid_after {
                        let zeroed = zero_tail(io, &handle, bytes, offset)?;
                        report.torn_tail = Some((name.clone(), offset as u64, zeroed));
                        break offset;
                    }
                    if !options.repair {
                        return Err(Error::Corrupt {
                            path: handle.path.clone(),
                            offset: offset as u64,
                            reason: format!("{reason} (before the end of the log: synced data is damaged; open with repair to truncate here)"),
                        });
                    }
                    zero_tail(io, &handle, bytes, offset)?;
                    let later: Vec<String> = ids[k + 1..].iter().map(|(_, n)| n.clone()).collect();
                    for n in &later {
                        io.remove(n)?;
                    }
                    io.sync_dir()?;
                    report.repaired = Some(format!(
                        "truncated {name} at offset {offset} ({reason}); removed later segments {later:?}; the log now ends at {}",
                        index.last()
                    ));
                    tail = Some(Tail {
                        handle,
                        id: *id,
                        len,
                        offset: offset as u64,
                    });
                    return Ok(Recovered {
                        index,
                        tail,
                        report,
                    });
                }
            }
        };
        if is_last {
            tail = Some(Tail {
                handle,
                id: *id,
                len,
                offset: end as u64,
            });
        }
        k += 1;
    }
    Ok(Recovered {
        index,
        tail,
        report,
    })
}

/// Whether a segment holds anything but its header and zeros.
fn segment_has_data(io: &Io, name: &str) -> Result<bool> {
    let handle = io.open(name)?;
    let map = SegmentMap::new(&handle.file).map_err(|e| Error::io("map", &handle.path, e))?;
    let bytes = map.bytes();
    Ok(match format::check_segment_header(bytes) {
        Ok(_) => !matches!(
            format::parse_batch(bytes, SEGMENT_HEADER_BYTES),
            Parsed::End
        ),
        Err(_) => has_valid_batch_after(bytes, SEGMENT_HEADER_BYTES - 8),
    })
}

/// Whether a valid batch record starts anywhere after `offset` (8-byte aligned positions).
fn has_valid_batch_after(bytes: &[u8], offset: usize) -> bool {
    let magic = format::BATCH_MAGIC.to_le_bytes();
    let mut at = offset + 8;
    while at + BATCH_HEADER_BYTES <= bytes.len() {
        if bytes[at..at + 4] == magic && matches!(format::parse_batch(bytes, at), Parsed::Batch(_))
        {
            return true;
        }
        at += 8;
    }
    false
}

/// Zeroes from `offset` up to the first all-zero block after it, then syncs. Returns the
/// bytes zeroed.
fn zero_tail(io: &Io, handle: &Handle, bytes: &[u8], offset: usize) -> Result<u64> {
    let mut end = offset;
    while end < bytes.len() {
        let block_end = ((end / ZERO_BLOCK_BYTES + 1) * ZERO_BLOCK_BYTES).min(bytes.len());
        if bytes[end..block_end].iter().all(|&b| b == 0) {
            break;
        }
        end = block_end;
    }
    if end > offset {
        io.write_at(handle, offset as u64, &vec![0u8; end - offset])?;
        io.sync(handle)?;
    }
    Ok((end - offset) as u64)
}
