//! The on-disk format of segments: segment headers and batch records. (The state file's slots
//! are in `state.rs`.)
//!
//! All integers are little-endian; every structure starts at an 8-byte aligned offset.

use bytes::Bytes;
use raftline_proto::{Entry, EntryPayload, LogIndex, Membership, Term};

/// The format version written in every segment header. (State slots carry a version of
/// their own.)
pub const FORMAT_VERSION: u32 = 1;

/// Segment header: 64 bytes.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"RAFTSEGM";
pub(crate) const SEGMENT_HEADER_BYTES: usize = 64;

/// Batch header: 32 bytes.
pub(crate) const BATCH_MAGIC: u32 = 0x4241_5431; // "1TAB" in little-endian bytes
pub(crate) const BATCH_HEADER_BYTES: usize = 32;
/// Entry header inside a batch body: 16 bytes.
pub(crate) const ENTRY_HEADER_BYTES: usize = 16;

const KIND_NORMAL: u8 = 1;
const KIND_NOOP: u8 = 2;
const KIND_MEMBERSHIP: u8 = 3;

pub(crate) fn align8(n: usize) -> usize {
    (n + 7) & !7
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Encodes a segment header for segment `id`.
pub(crate) fn segment_header(id: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header; returns the segment id.
pub(crate) fn check_segment_header(h: &[u8]) -> Result<u64, String> {
    if h.len() < SEGMENT_HEADER_BYTES {
        return Err(format!(
            "segment shorter than its {SEGMENT_HEADER_BYTES}-byte header"
        ));
    }
    if &h[0..8] != SEGMENT_MAGIC {
        return Err("not a segment file (bad magic)".to_string());
    }
    if crc32c::crc32c(&h[0..24]) != u32_at(h, 24) {
        return Err("segment header checksum mismatch".to_string());
    }
    let version = u32_at(h, 8);
    if version != FORMAT_VERSION {
        return Err(format!(
            "segment format version {version}; this build reads version {FORMAT_VERSION}"
        ));
    }
    Ok(u64_at(h, 16))
}

/// Encodes entries (consecutive indexes) as one batch record, appended to `out`.
pub(crate) fn encode_batch(entries: &[Entry], out: &mut Vec<u8>) {
    let first = entries.first().expect("a batch has entries");
    let start = out.len();
    out.resize(start + BATCH_HEADER_BYTES, 0);
    let body_start = out.len();
    for e in entries {
        let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match &e.payload {
            EntryPayload::Normal(data) => (KIND_NORMAL, data.as_ref().into()),
            EntryPayload::Noop => (KIND_NOOP, (&[][..]).into()),
            EntryPayload::Membership(m) => (KIND_MEMBERSHIP, raftline_proto::encode(m).into()),
        };
        out.extend_from_slice(&e.term.0.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&[kind, 0, 0, 0]);
        out.extend_from_slice(&payload);
        out.resize(align8(out.len()), 0);
    }
    let body_len = out.len() - body_start;
    let body_crc = crc32c::crc32c(&out[body_start..]);
    let h = &mut out[start..body_start];
    h[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    h[8..12].copy_from_slice(&(body_len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&first.index.0.to_le_bytes());
    h[24..28].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&h[8..32]);
    h[4..8].copy_from_slice(&header_crc.to_le_bytes());
}

/// What a batch record holds, as positions within the segment.
#[derive(Debug)]
pub(crate) struct BatchView {
    pub(crate) first_index: LogIndex,
    /// Total bytes of the record (header and body).
    pub(crate) len: usize,
    pub(crate) entries: Vec<EntryPos>,
}

/// Where one entry's payload lies in its segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryPos {
    pub(crate) term: Term,
    pub(crate) kind: u8,
    pub(crate) offset: u32,
    pub(crate) len: u32,
}

/// The outcome of reading the bytes at an offset where a batch may start.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A valid batch.
    Batch(BatchView),
    /// Zeros: the end of the written data.
    End,
    /// Something that is neither: a torn write or corruption.
    Bad(String),
}

/// Reads the batch at `offset` of `seg` (the whole mapped segment).
pub(crate) fn parse_batch(seg: &[u8], offset: usize) -> Parsed {
    let Some(h) = seg.get(offset..offset + BATCH_HEADER_BYTES) else {
        return Parsed::End; // no room for another batch
    };
    if h.iter().all(|&b| b == 0) {
        return Parsed::End;
    }
    if u32_at(h, 0) != BATCH_MAGIC {
        return Parsed::Bad("bad batch magic".to_string());
    }
    if crc32c::crc32c(&h[8..32]) != u32_at(h, 4) {
        return Parsed::Bad("batch header checksum mismatch".to_string());
    }
    let body_len = u32_at(h, 8) as usize;
    let count = u32_at(h, 12) as usize;
    let first_index = LogIndex(u64_at(h, 16));
    let body_start = offset + BATCH_HEADER_BYTES;
    let Some(body) = seg.get(body_start..body_start + body_len) else {
        return Parsed::Bad(format!(
            "batch body of {body_len} bytes runs past the segment end"
        ));
    };
    if crc32c::crc32c(body) != u32_at(h, 24) {
        return Parsed::Bad("batch body checksum mismatch".to_string());
    }
    if count == 0 || first_index == LogIndex(0) {
        return Parsed::Bad("empty batch or index 0".to_string());
    }
    let mut entries = Vec::with_capacity(count);
    let mut at = 0usize;
    for _ in 0..count {
        let Some(eh) = body.get(at..at + ENTRY_HEADER_BYTES) else {
            return Parsed::Bad("entry header past the batch end".to_string());
        };
        let term = Term(u64_at(eh, 0));
        let len = u32_at(eh, 8) as usize;
        let kind = eh[12];
        if !matches!(kind, KIND_NORMAL | KIND_NOOP | KIND_MEMBERSHIP) {
            return Parsed::Bad(format!("unknown entry kind {kind}"));
        }
        let payload_at = at + ENTRY_HEADER_BYTES;
        if payload_at + len > body.len() {
            return Parsed::Bad("entry payload past the batch end".to_string());
        }
        entries.push(EntryPos {
            term,
            kind,
            offset: (body_start + payload_at) as u32,
            len: len as u32,
        });
        at = align8(payload_at + len);
    }
    if at != body_len {
        return Parsed::Bad("batch body length does not match its entries".to_string());
    }
    Parsed::Batch(BatchView {
        first_index,
        len: BATCH_HEADER_BYTES + body_len,
        entries,
    })
}

/// Builds the entry at `index` from its position and its payload bytes.
pub(crate) fn decode_entry(
    index: LogIndex,
    pos: &EntryPos,
    payload: Bytes,
) -> Result<Entry, String> {
    let payload = match pos.kind {
        KIND_NORMAL => EntryPayload::Normal(payload),
        KIND_NOOP => EntryPayload::Noop,
        KIND_MEMBERSHIP => EntryPayload::Membership(
            raftline_proto::decode::<Membership>(&payload)
                .map_err(|e| format!("membership entry {index}: {e}"))?,
        ),
        k => return Err(format!("unknown entry kind {k}")),
    };
    Ok(Entry {
        term: pos.term,
        index,
        payload,
    })
}
