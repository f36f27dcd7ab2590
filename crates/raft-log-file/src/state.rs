//! The hard state and compaction point, stored crash-atomically in two checksummed slots.
//!
//! The file `state` holds two 4 KiB slots. Each write goes to the spare slot (the one that
//! does not hold the last synced record), with a sequence number one higher than the newest.
//! On open the valid slot with the higher sequence number wins, so a write torn by a crash
//! leaves the last synced record in force.
//!
//! A change of the commit index alone is written without a sync: losing it only makes the
//! node relearn its commit index from the leader. Term, vote, compaction point, membership
//! and first-segment changes are synced before the write returns, and the slot holding the
//! last synced record is never overwritten.
//!
//! Slot layout versions: version 1 records lack [`StateRecord::first_segment`] (read as 0);
//! this build writes version 2.

use raftline_proto::{HardState, LogIndex, Membership, Term};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{Handle, Io};

pub(crate) const STATE_FILE: &str = "state";
const SLOT_BYTES: usize = 4096;
const SLOT_MAGIC: u32 = 0x5441_5453; // "STAT"
const SLOT_HEADER_BYTES: usize = 24;
/// The layout version of the records this build writes.
const STATE_VERSION: u32 = 2;
/// The layout before [`StateRecord::first_segment`] existed; still read.
const STATE_VERSION_V1: u32 = 1;

/// What the state file records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateRecord {
    pub(crate) hard_state: HardState,
    /// Entries up to this index were compacted away.
    pub(crate) compacted_index: LogIndex,
    /// The term of the entry at `compacted_index`.
    pub(crate) compacted_term: Term,
    pub(crate) membership: Membership,
    /// Segment files with a lower id hold nothing of the log: they predate an installed
    /// snapshot (which discarded every entry) and are removed on open. 0 until the first
    /// installation.
    pub(crate) first_segment: u64,
}

/// A record in the version 1 layout.
#[derive(Deserialize)]
struct StateRecordV1 {
    hard_state: HardState,
    compacted_index: LogIndex,
    compacted_term: Term,
    membership: Membership,
}

pub(crate) struct StateFile {
    handle: Handle,
    /// The sequence number of the newest record written.
    seq: u64,
    /// The slot (0 or 1) holding the last synced record.
    synced_slot: u64,
    /// The last synced record.
    synced: StateRecord,
    /// The newest record (synced or not).
    pub(crate) record: StateRecord,
}

fn encode_slot(seq: u64, record: &StateRecord) -> Result<Vec<u8>> {
    let body =
        postcard::to_allocvec(record).map_err(|e| Error::Invalid(format!("state record: {e}")))?;
    if body.len() > SLOT_BYTES - SLOT_HEADER_BYTES {
        return Err(Error::Invalid(format!(
            "state record of {} bytes exceeds the {}-byte slot",
            body.len(),
            SLOT_BYTES - SLOT_HEADER_BYTES
        )));
    }
    let mut slot = vec![0u8; SLOT_HEADER_BYTES + body.len()];
    slot[0..4].copy_from_slice(&SLOT_MAGIC.to_le_bytes());
    slot[8..16].copy_from_slice(&seq.to_le_bytes());
    slot[16..20].copy_from_slice(&(body.len() as u32).to_le_bytes());
    slot[20..24].copy_from_slice(&STATE_VERSION.to_le_bytes());
    slot[SLOT_HEADER_BYTES..].copy_from_slice(&body);
    let crc = crc32c::crc32c(&slot[8..]);
    slot[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(slot)
}

fn decode_slot(bytes: &[u8]) -> Result<(u64, StateRecord), String> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(0) != SLOT_MAGIC {
        return Err("bad magic".to_string());
    }
    let len = u32_at(16) as usize;
    if len > SLOT_BYTES - SLOT_HEADER_BYTES {
        return Err("bad length".to_string());
    }
    if crc32c::crc32c(&bytes[8..SLOT_HEADER_BYTES + len]) != u32_at(4) {
        return Err("checksum mismatch".to_string());
    }
    let seq = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let body = &bytes[SLOT_HEADER_BYTES..SLOT_HEADER_BYTES + len];
    let undecodable = |e: postcard::Error| format!("undecodable record: {e}");
    let record = match u32_at(20) {
        STATE_VERSION => postcard::from_bytes(body).map_err(undecodable)?,
        STATE_VERSION_V1 => {
            let v1: StateRecordV1 = postcard::from_bytes(body).map_err(undecodable)?;
            StateRecord {
                hard_state: v1.hard_state,
                compacted_index: v1.compacted_index,
                compacted_term: v1.compacted_term,
                membership: v1.membership,
                first_segment: 0,
            }
        }
        version => {
            return Err(format!(
                "state format version {version}; this build reads versions {STATE_VERSION_V1} and {STATE_VERSION}"
            ))
        }
    };
    Ok((seq, record))
}

impl StateFile {
    /// Creates the state file of a new directory.
    pub(crate) fn create(io: &Io, record: StateRecord) -> Result<StateFile> {
        let handle = io.create(STATE_FILE)?;
        io.set_len(&handle, 2 * SLOT_BYTES as u64)?;
        let mut state = StateFile {
            handle,
            seq: 0,
            synced_slot: 0,
            synced: StateRecord::default(),
            record: StateRecord::default(),
        };
        state.write(io, record)?;
        io.sync_dir()?;
        Ok(state)
    }

    /// Opens an existing state file and picks its newest valid slot.
    pub(crate) fn open(io: &Io) -> Result<StateFile> {
        let handle = io.open(STATE_FILE)?;
        let mut bytes = vec![0u8; 2 * SLOT_BYTES];
        let len = handle
            .file
            .metadata()
            .map_err(|e| Error::io("stat", &handle.path, e))?
            .len() as usize;
        let readable = len.min(bytes.len());
        std::os::unix::fs::FileExt::read_exact_at(&handle.file, &mut bytes[..readable], 0)
            .map_err(|e| Error::io("read", &handle.path, e))?;
        let a = decode_slot(&bytes[..SLOT_BYTES]);
        let b = decode_slot(&bytes[SLOT_BYTES..]);
        let (seq, record) = match (a, b) {
            (Ok(a), Ok(b)) => {
                if a.0 >= b.0 {
                    a
                } else {
                    b
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(ea), Err(eb)) => {
                return Err(Error::Corrupt {
                    path: handle.path.clone(),
                    offset: 0,
                    reason: format!("both state slots are invalid (slot 0: {ea}; slot 1 at offset {SLOT_BYTES}: {eb})"),
                })
            }
        };
        // What was read may be an unsynced write that survived a process crash in the page
        // cache: sync it, so the slot it is in can be treated as the synced one.
        io.sync(&handle)?;
        Ok(StateFile {
            handle,
            seq,
            synced_slot: seq % 2,
            synced: record.clone(),
            record,
        })
    }

    /// Makes `record` the state: durable at return, unless only the commit index changed
    /// since the last synced record.
    pub(crate) fn write(&mut self, io: &Io, record: StateRecord) -> Result<()> {
        let same_but_commit = StateRecord {
            hard_state: raftline_proto::HardState {
                commit: self.synced.hard_state.commit,
                ..record.hard_state
            },
            ..record.clone()
        } == self.synced;
        let seq = self.seq + 1;
        let slot = encode_slot(seq, &record)?;
        let spare = 1 - self.synced_slot;
        io.write_at(&self.handle, spare * SLOT_BYTES as u64, &slot)?;
        self.seq = seq;
        self.record = record.clone();
        if !same_but_commit || seq == 1 {
            io.sync(&self.handle)?;
            self.synced_slot = spare;
            self.synced = record;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use raftline_proto::NodeId;

    use super::*;

    /// The version 1 layout, as the builds before `first_segment` wrote it.
    #[derive(Serialize)]
    struct WrittenV1 {
        hard_state: HardState,
        compacted_index: LogIndex,
        compacted_term: Term,
        membership: Membership,
    }

    #[test]
    fn a_version_1_record_reads_with_no_first_segment() {
        let v1 = WrittenV1 {
            hard_state: HardState {
                term: Term(4),
                vote: Some(NodeId(2)),
                commit: LogIndex(9),
            },
            compacted_index: LogIndex(7),
            compacted_term: Term(3),
            membership: Membership::with_voters([NodeId(1), NodeId(2)]),
        };
        let body = postcard::to_allocvec(&v1).unwrap();
        let mut slot = vec![0u8; SLOT_BYTES];
        slot[0..4].copy_from_slice(&SLOT_MAGIC.to_le_bytes());
        slot[8..16].copy_from_slice(&5u64.to_le_bytes());
        slot[16..20].copy_from_slice(&(body.len() as u32).to_le_bytes());
        slot[20..24].copy_from_slice(&STATE_VERSION_V1.to_le_bytes());
        slot[SLOT_HEADER_BYTES..SLOT_HEADER_BYTES + body.len()].copy_from_slice(&body);
        let crc = crc32c::crc32c(&slot[8..SLOT_HEADER_BYTES + body.len()]);
        slot[4..8].copy_from_slice(&crc.to_le_bytes());
        let (seq, record) = decode_slot(&slot).unwrap();
        assert_eq!(seq, 5);
        assert_eq!(
            record,
            StateRecord {
                hard_state: v1.hard_state,
                compacted_index: v1.compacted_index,
                compacted_term: v1.compacted_term,
                membership: v1.membership,
                first_segment: 0,
            }
        );
    }

    #[test]
    fn a_record_round_trips_and_an_unknown_version_is_refused() {
        let record = StateRecord {
            compacted_index: LogIndex(12),
            compacted_term: Term(2),
            first_segment: 6,
            ..StateRecord::default()
        };
        let mut slot = encode_slot(3, &record).unwrap();
        slot.resize(SLOT_BYTES, 0);
        assert_eq!(decode_slot(&slot).unwrap(), (3, record.clone()));
        slot[20..24].copy_from_slice(&9u32.to_le_bytes());
        let len = SLOT_HEADER_BYTES + u32::from_le_bytes(slot[16..20].try_into().unwrap()) as usize;
        let crc = crc32c::crc32c(&slot[8..len]);
        slot[4..8].copy_from_slice(&crc.to_le_bytes());
        let err = decode_slot(&slot).unwrap_err();
        assert!(err.contains("version 9"), "{err}");
    }
}
