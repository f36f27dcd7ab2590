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
//! - The segment the log ends in is synced: its last batch may be a write that a process crash
//!   left in the page cache, unsynced.
//! - Empty segments after the last one that holds data (prepared ahead of use, or whose
//!   creation a crash interrupted) are settled apart: see [`settle_empty_segments`].
//! - A segment's size is its file's length: segments of any mix of sizes reopen.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use raftline_proto::LogIndex;

use crate::error::{Error, Result};
use crate::format::{self, Parsed, BATCH_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::io::{Handle, Io};
use crate::mmap::SegmentMap;
use crate::state::StateRecord;
use crate::store::{parse_segment_name, Index, NewSegment, Options, Segment};

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
    /// An empty segment right after the tail, prepared before the store was closed: the
    /// next rotation uses it.
    pub(crate) prepared: Option<NewSegment>,
    pub(crate) report: RecoveryReport,
}

/// Zeroes are written in blocks of this size when cutting a torn tail.
const ZERO_BLOCK_BYTES: usize = 4096;

pub(crate) fn recover(io: &Io, options: &Options, state: &StateRecord) -> Result<Recovered> {
    let ids = live_segments(io, state)?;
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
    // Segments prepared ahead of use may follow the one being appended to: the log ends in
    // the last segment that holds anything, and the empty ones after it are settled apart.
    let mut has_data = Vec::with_capacity(ids.len());
    for (_, name) in &ids {
        has_data.push(segment_has_data(io, name)?);
    }
    let scanned = has_data.iter().rposition(|&d| d).map_or(0, |k| k + 1);
    let mut tail = None;
    for k in 0..scanned {
        let is_last = k + 1 == scanned;
        match scan_segment(io, options, &ids, k, is_last, &mut index, &mut report)? {
            Scanned::Whole => {}
            Scanned::Tail(t) => tail = Some(t),
            Scanned::Repaired(t) => {
                return Ok(Recovered {
                    index,
                    tail: Some(t),
                    prepared: None,
                    report,
                })
            }
        }
    }
    if let Some(t) = &tail {
        // A process crash leaves the last batch written in the page cache, maybe unsynced,
        // and it reads as valid: sync it before the log counts it as durable (as the state
        // file does with its newest slot).
        io.sync(&t.handle)?;
    }
    let prepared = settle_empty_segments(io, &ids[scanned..], &mut tail, &mut index)?;
    Ok(Recovered {
        index,
        tail,
        prepared,
        report,
    })
}

/// The segment files of the log, by id, after removing those an installed snapshot
/// discarded: the state write that made it so landed, the removal of the files may not have.
fn live_segments(io: &Io, state: &StateRecord) -> Result<Vec<(u64, String)>> {
    let mut ids: Vec<(u64, String)> = std::fs::read_dir(&io.dir)
        .map_err(|e| Error::io("list", &io.dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            parse_segment_name(&name).map(|id| (id, name))
        })
        .collect();
    ids.sort_unstable();
    let live = ids.partition_point(|(id, _)| *id < state.first_segment);
    if live > 0 {
        for (_, name) in ids.drain(..live) {
            io.remove(&name)?;
        }
        io.sync_dir()?;
    }
    Ok(ids)
}

/// How the scan of one segment ended.
enum Scanned {
    /// At its end; the log goes on in a later segment.
    Whole,
    /// At the end of the log, in this segment: appends continue here.
    Tail(Tail),
    /// At damage that `repair` cut off, with every later segment: the log ends here.
    Repaired(Tail),
}

/// A mapped segment file and its length.
fn open_mapped(io: &Io, name: &str) -> Result<(Handle, Arc<SegmentMap>, u64)> {
    let handle = io.open(name)?;
    let len = handle
        .file
        .metadata()
        .map_err(|e| Error::io("stat", &handle.path, e))?
        .len();
    let map = SegmentMap::new(&handle.file).map_err(|e| Error::io("map", &handle.path, e))?;
    Ok((handle, Arc::new(map), len))
}

/// Checks that segment `id`'s header is valid and names it.
fn check_header(handle: &Handle, bytes: &[u8], id: u64) -> Result<()> {
    let corrupt = |reason: String| Error::Corrupt {
        path: handle.path.clone(),
        offset: 0,
        reason,
    };
    match format::check_segment_header(bytes) {
        Ok(named) if named == id => Ok(()),
        Ok(named) => Err(corrupt(format!(
            "segment header names segment {named}, the file name {id}"
        ))),
        Err(reason) => Err(corrupt(reason)),
    }
}

/// Reads the batches of segment `ids[k]`, which holds data, into `index`. `is_last`: no later
/// segment holds data, so a bad batch with nothing valid after it is a torn write.
fn scan_segment(
    io: &Io,
    options: &Options,
    ids: &[(u64, String)],
    k: usize,
    is_last: bool,
    index: &mut Index,
    report: &mut RecoveryReport,
) -> Result<Scanned> {
    let (id, name) = &ids[k];
    let (handle, map, len) = open_mapped(io, name)?;
    let bytes = map.bytes();
    check_header(&handle, bytes, *id)?;
    index.segments.insert(
        *id,
        Segment {
            name: name.clone(),
            map: Arc::clone(&map),
            max_index: LogIndex(0),
        },
    );
    let (offset, bad) = read_batches(*id, &handle, bytes, index, report)?;
    let tail = |handle, offset: usize| Tail {
        handle,
        id: *id,
        len,
        offset: offset as u64,
    };
    match bad {
        None => {}
        Some(_) if is_last && !has_valid_batch_after(bytes, offset) => {
            let zeroed = zero_tail(io, &handle, bytes, offset)?;
            report.torn_tail = Some((name.clone(), offset as u64, zeroed));
        }
        Some(reason) if !options.repair => {
            return Err(Error::Corrupt {
                path: handle.path.clone(),
                offset: offset as u64,
                reason: format!("{reason} (before the end of the log: synced data is damaged; open with repair to truncate here)"),
            });
        }
        Some(reason) => {
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
            return Ok(Scanned::Repaired(tail(handle, offset)));
        }
    }
    Ok(if is_last {
        Scanned::Tail(tail(handle, offset))
    } else {
        Scanned::Whole
    })
}

/// Applies the batches of segment `id` to `index`, from the first. Returns the offset where
/// they end and, if they end at a bad batch (a torn write or damage), what is wrong with it.
fn read_batches(
    id: u64,
    handle: &Handle,
    bytes: &[u8],
    index: &mut Index,
    report: &mut RecoveryReport,
) -> Result<(usize, Option<String>)> {
    let mut offset = SEGMENT_HEADER_BYTES;
    loop {
        match format::parse_batch(bytes, offset) {
            Parsed::Batch(view) => {
                index
                    .apply_batch(id, view.first_index, &view.entries)
                    .map_err(|reason| Error::Corrupt {
                        path: handle.path.clone(),
                        offset: offset as u64,
                        reason,
                    })?;
                report.batches += 1;
                offset += view.len;
            }
            Parsed::End => return Ok((offset, None)),
            Parsed::Bad(reason) => return Ok((offset, Some(reason))),
        }
    }
}

/// Settles the segments after the last one that holds data (`empty`, in id order): segments
/// prepared ahead of use and never written, or whose creation a crash interrupted.
///
/// - One with a bad header never held data (nothing is written to a segment before its
///   header is synced): it is removed.
/// - With no `tail` (no segment holds data), the first valid one becomes the tail.
/// - The one right after the tail is returned, to be used as the prepared next segment.
/// - The rest are removed: a store prepares one segment ahead, but builds before this one
///   prepared another at every reopening.
///
/// Their sizes are whatever their files' lengths are: mixed sizes are fine. (A segment whose
/// first batch position holds zeros holds no batch further on either: a batch is written only
/// after the one before it is synced.)
fn settle_empty_segments(
    io: &Io,
    empty: &[(u64, String)],
    tail: &mut Option<Tail>,
    index: &mut Index,
) -> Result<Option<NewSegment>> {
    let mut prepared = None;
    for (id, name) in empty {
        let (handle, map, len) = open_mapped(io, name)?;
        let header_ok = format::check_segment_header(map.bytes()).is_ok();
        if header_ok {
            check_header(&handle, map.bytes(), *id)?;
        }
        let next_id = tail.as_ref().map(|t| t.id + 1);
        let keep = header_ok && (next_id.is_none() || prepared.is_none() && next_id == Some(*id));
        if !keep {
            drop((handle, map));
            io.remove(name)?;
            continue;
        }
        // Its creation may be one a process crash left unsynced (the directory is synced
        // below).
        io.sync(&handle)?;
        let segment = Segment {
            name: name.clone(),
            map,
            max_index: LogIndex(0),
        };
        if next_id.is_none() {
            index.segments.insert(*id, segment);
            let offset = SEGMENT_HEADER_BYTES as u64;
            *tail = Some(Tail {
                handle,
                id: *id,
                len,
                offset,
            });
        } else {
            prepared = Some((handle, segment, len));
        }
    }
    if !empty.is_empty() {
        io.sync_dir()?;
    }
    Ok(prepared)
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
