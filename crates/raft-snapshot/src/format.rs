//! File names and the metadata file's encoding.

use raftline_proto::{LogIndex, SnapshotMeta, Term};

/// The version of the metadata file format this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"RAFTSNAP";
const HEADER_BYTES: usize = 16;

/// What names a snapshot on disk: its last index and term.
pub(crate) type Key = (LogIndex, Term);

pub(crate) fn key(meta: &SnapshotMeta) -> Key {
    (meta.last_index, meta.last_term)
}

/// Whether `a` and `b` describe the same snapshot data (the membership is not compared).
pub(crate) fn same(a: &SnapshotMeta, b: &SnapshotMeta) -> bool {
    key(a) == key(b) && a.size_bytes == b.size_bytes && a.checksum == b.checksum
}

fn stem((index, term): Key) -> String {
    format!("{:020}-{:020}", index.0, term.0)
}

pub(crate) fn data_name(key: Key) -> String {
    stem(key) + ".snap"
}

pub(crate) fn meta_name(key: Key) -> String {
    stem(key) + ".meta"
}

/// The temporary name the metadata is written under before its rename.
pub(crate) fn meta_temp_name(key: Key) -> String {
    stem(key) + ".meta.tmp"
}

/// The temporary name of the data a state machine writes (`seq` makes it unique).
pub(crate) fn write_temp_name(seq: u64) -> String {
    format!("write-{seq}.tmp")
}

/// The name of the partial copy of a received snapshot (`seq` makes it unique).
pub(crate) fn partial_name(meta: &SnapshotMeta, seq: u64) -> String {
    format!("{}-{:08x}-{seq}.partial", stem(key(meta)), meta.checksum)
}

/// Whether `name` is a leftover of an interrupted write: a temporary or partial file.
pub(crate) fn is_leftover(name: &str) -> bool {
    name.ends_with(".tmp") || name.ends_with(".partial")
}

/// Parses `<index:020>-<term:020>` followed by `suffix`.
pub(crate) fn parse_name(name: &str, suffix: &str) -> Option<Key> {
    let (index, term) = name.strip_suffix(suffix)?.split_once('-')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(term) {
        return None;
    }
    Some((LogIndex(index.parse().ok()?), Term(term.parse().ok()?)))
}

/// Encodes a metadata file:
/// `"RAFTSNAP" | version u32 LE | crc32c u32 LE of (version, body) | body: postcard(meta)`.
pub(crate) fn encode_meta(meta: &SnapshotMeta) -> Vec<u8> {
    let body = postcard::to_stdvec(meta).expect("SnapshotMeta always encodes");
    let version = FORMAT_VERSION.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&version), &body);
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a metadata file, or says what is wrong with it.
pub(crate) fn decode_meta(bytes: &[u8]) -> Result<SnapshotMeta, String> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err(format!(
            "not a snapshot metadata file ({} bytes, bad magic or too short)",
            bytes.len()
        ));
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let (version, stored, body) = (word(8), word(12), &bytes[HEADER_BYTES..]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "unsupported format version {version} (this build reads {FORMAT_VERSION})"
        ));
    }
    let actual = crc32c::crc32c_append(crc32c::crc32c(&bytes[8..12]), body);
    if actual != stored {
        return Err(format!(
            "checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"
        ));
    }
    postcard::from_bytes(body).map_err(|e| format!("undecodable metadata: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftline_proto::{Membership, NodeId};

    #[test]
    fn meta_round_trips_and_detects_flips() {
        let meta = SnapshotMeta {
            last_index: LogIndex(7),
            last_term: Term(3),
            membership: Membership::with_voters([NodeId(1), NodeId(2)]),
            size_bytes: 1234,
            checksum: 0xdead_beef,
        };
        let bytes = encode_meta(&meta);
        assert_eq!(decode_meta(&bytes), Ok(meta));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode_meta(&bad).is_err(), "flip at {i} went unnoticed");
        }
        assert!(decode_meta(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn names_parse() {
        let key = (LogIndex(42), Term(5));
        assert_eq!(parse_name(&data_name(key), ".snap"), Some(key));
        assert_eq!(parse_name(&meta_name(key), ".meta"), Some(key));
        assert_eq!(parse_name(&meta_name(key), ".snap"), None);
        assert_eq!(parse_name("42-5.snap", ".snap"), None);
        assert!(is_leftover(&meta_temp_name(key)) && is_leftover(&write_temp_name(1)));
    }
}
