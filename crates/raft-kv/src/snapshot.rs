//! The store's snapshot format, and helpers that write and read it through raftline-core's async
//! snapshot streams.
//!
//! A snapshot holds everything a [`Store`] holds: its revision, the member records (with the
//! removed ids and the members waiting for promotion), the compaction point, the leases with
//! their TTLs, the raised alarms, and the key space's whole history (every record since the
//! compaction point, and each key's newest put at or below it). Equal stores give identical
//! bytes (maps are written in key order and postcard's encoding is deterministic), so members
//! can compare snapshots by checksum.
//!
//! # Layout
//!
//! Integers are little-endian.
//!
//! | part    | bytes                                                                  |
//! | ------- | ---------------------------------------------------------------------- |
//! | header  | [`MAGIC`] (8), format version `u32` ([`FORMAT_VERSION`])               |
//! | records | each: body length `u32` (1 ..= [`RECORD_BYTES_MAX`]), postcard body   |
//! | end     | `u32` 0                                                                |
//! | trailer | record count `u64`, CRC-32C `u32` of every byte before the CRC itself  |
//!
//! The records come in a fixed order: first the store's revision, then the members by
//! ascending id, the removed ids, ascending, the ids waiting for promotion, ascending, the
//! compaction point, the leases by ascending id, the alarms in order, and the history in
//! revision order. A reader rejects anything else (a duplicate, a record out of order, bytes
//! after the trailer), so a snapshot that reads back is in canonical form and re-encodes to
//! the same bytes.
//!
//! # Older versions
//!
//! Versions 1 and 2 had no history: one record per current key instead. They still load:
//! each key becomes a put at its mod revision, and the compaction point is the snapshot's
//! revision (reads of older revisions fail as compacted, as they did then). The leases of
//! keys are kept, but those versions held no lease table, so such an id names no lease.
//!
//! # etcd's envelope
//!
//! etcd ends a `Maintenance.Snapshot` stream with the SHA-256 of the data before it, and
//! `etcdctl snapshot save` (3.4.23, the one tested, and later) refuses a stream whose length
//! is not a multiple of 512 plus those 32 bytes (a bbolt file is a whole number of pages). The
//! server therefore streams [`etcd_envelope`]: the snapshot, zero bytes up to a multiple of
//! [`ETCD_SNAPSHOT_ALIGN`], then the SHA-256 of both. [`read_etcd_snapshot`] reads such a
//! file back.

use std::io::{self, Read, Write};

use futures::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use parking_lot::RwLock;
use raftline_core::driver::{SnapshotSink, SnapshotSource};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::mvcc::{Record as HistoryRecord, Rev};
use crate::store::{Alarm, KeyValue, MemberInfo, Store, StoreParts};

/// The record kinds by [`rank`], for error messages.
const KINDS: [&str; 9] = [
    "revision",
    "member",
    "removed",
    "promotion",
    "key",
    "compaction",
    "lease",
    "alarm",
    "history",
];

/// The first bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"RAFTKVSS";

/// The format version written. Version 3 replaced the key records by the history and added the
/// compaction, lease and alarm records; version 2 added the removed and promotion records.
/// Versions 1 and 2 are still read (see the module's documentation).
pub const FORMAT_VERSION: u32 = 3;

/// The oldest format version read.
pub const FORMAT_VERSION_MIN: u32 = 1;

/// The largest record body accepted, in bytes. A record holds one key (key, value and
/// bookkeeping) or one member; the server accepts at most
/// [`REQUEST_BYTES_MAX`](crate::server::REQUEST_BYTES_MAX) of key plus value, far below this.
/// The bound keeps a corrupt length from making a reader wait for, or buffer, gigabytes.
pub const RECORD_BYTES_MAX: usize = 64 << 20;

/// The buffer [`read_store_snapshot`] reads its source through, in bytes.
pub const READ_BUFFER_BYTES: usize = 64 << 10;

/// The size of the writes [`write_store_snapshot`] hands its sink, in bytes.
pub const WRITE_CHUNK_BYTES: usize = 64 << 10;

/// [`etcd_envelope`] pads the snapshot to a multiple of this many bytes before the digest.
pub const ETCD_SNAPSHOT_ALIGN: usize = 512;

/// The length of the SHA-256 digest ending an [`etcd_envelope`].
pub const SHA256_BYTES: usize = 32;

const LEN_BYTES: usize = 4;
const TRAILER_BYTES: usize = 8 + 4;

/// Why bytes could not be read as a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFormatError {
    /// The data does not start with [`MAGIC`].
    #[error("not a raft-kv snapshot: the data does not start with the snapshot magic bytes")]
    BadMagic,
    /// The header names a format version this build does not read.
    #[error(
        "unsupported raft-kv snapshot format version {0} (this build reads versions {FORMAT_VERSION_MIN} to {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u32),
    /// The data ends before the trailer does.
    #[error("the snapshot is truncated: the data ends before its trailer")]
    Truncated,
    /// A record's length is above [`RECORD_BYTES_MAX`].
    #[error(
        "snapshot record {index} claims {len} bytes, more than the limit of {RECORD_BYTES_MAX}"
    )]
    RecordTooLarge {
        /// The record's position (0 for the first).
        index: u64,
        /// The length it claims.
        len: u64,
    },
    /// A record does not decode, or breaks the record order.
    #[error("snapshot record {index} is invalid: {reason}")]
    BadRecord {
        /// The record's position (0 for the first).
        index: u64,
        /// What is wrong with it.
        #[source]
        reason: RecordError,
    },
    /// The trailer's checksum is not that of the data.
    #[error(
        "snapshot checksum mismatch: the trailer says {stored:#010x}, the data gives {computed:#010x}"
    )]
    Checksum {
        /// The CRC-32C in the trailer.
        stored: u32,
        /// The CRC-32C of the data read.
        computed: u32,
    },
    /// The trailer's record count is not the number of records read.
    #[error("the snapshot trailer counts {stored} records, but {read} were read")]
    RecordCount {
        /// The count in the trailer.
        stored: u64,
        /// The records read.
        read: u64,
    },
    /// The snapshot has no revision record.
    #[error("the snapshot holds no revision record")]
    NoRevision,
    /// Bytes follow the trailer (in an [`etcd_envelope`]: other than its zero padding).
    #[error("data follows the snapshot's trailer")]
    TrailingData,
    /// An [`etcd_envelope`]'s length is not a multiple of [`ETCD_SNAPSHOT_ALIGN`] plus
    /// [`SHA256_BYTES`].
    #[error("no SHA-256 digest at the end of the snapshot file ({len} bytes)")]
    NoDigest {
        /// The file's length.
        len: usize,
    },
    /// An [`etcd_envelope`]'s SHA-256 is not that of its data.
    #[error("the snapshot file's SHA-256 does not match its data")]
    DigestMismatch,
    /// Reading failed.
    #[error("reading the snapshot: {0}")]
    Io(#[source] io::Error),
}

/// What is wrong with a snapshot record ([`SnapshotFormatError::BadRecord`]).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Bytes follow the record's body within its length.
    #[error("{len} bytes follow its body")]
    TrailingBytes {
        /// How many.
        len: usize,
    },
    /// The body does not decode.
    #[error("undecodable: {0}")]
    Undecodable(#[source] postcard::Error),
    /// A record of a kind that comes earlier in a snapshot.
    #[error("a {kind} record after the {after} records")]
    OutOfRank {
        /// The record's kind.
        kind: &'static str,
        /// The kind of the records before it.
        after: &'static str,
    },
    /// A second revision record.
    #[error("a second revision record")]
    SecondRevision,
    /// The first record is not the revision record.
    #[error("the first record is not the revision")]
    FirstNotRevision,
    /// A record's id does not follow the previous one of its kind (ascending, no duplicates).
    #[error("{kind} {id} does not follow {last}")]
    NotAscending {
        /// The record's kind.
        kind: &'static str,
        /// Its id (as `Debug` shows it: the kinds' ids have different types).
        id: String,
        /// The previous record's id.
        last: String,
    },
    /// A key record (versions 1 and 2) in a version 3 snapshot.
    #[error("a key record in a version 3 snapshot")]
    KeyInVersion3,
    /// A key record whose key does not follow the previous one's.
    #[error("keys out of order")]
    KeysOutOfOrder,
    /// A record only version 3 has, in an earlier version's snapshot.
    #[error("a version 3 record in a version {version} snapshot")]
    Version3Record {
        /// The snapshot's format version.
        version: u32,
    },
}

impl From<SnapshotFormatError> for io::Error {
    /// An I/O error stays what it was; every format error is [`io::ErrorKind::InvalidData`]
    /// with the error as its message and source.
    fn from(e: SnapshotFormatError) -> io::Error {
        match e {
            SnapshotFormatError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// A record as written (borrowing from the store).
#[derive(Serialize)]
enum RecordRef<'a> {
    Revision(i64),
    Member(&'a MemberInfo),
    #[cfg_attr(not(test), allow(dead_code))]
    Key(&'a KeyValue),
    Removed(u64),
    Promotion(u64),
    Compacted(i64),
    Lease {
        id: i64,
        ttl: i64,
    },
    Alarm(Alarm),
    History(Rev, &'a HistoryRecord),
}

/// A record as read. The variants must stay in [`RecordRef`]'s order: postcard encodes the
/// variant's position (new kinds go at the end).
#[derive(Deserialize)]
enum Record {
    Revision(i64),
    Member(MemberInfo),
    Key(KeyValue),
    Removed(u64),
    Promotion(u64),
    Compacted(i64),
    Lease { id: i64, ttl: i64 },
    Alarm(Alarm),
    History(Rev, HistoryRecord),
}

/// Where a record kind goes in the canonical order.
fn rank(record: &Record) -> u8 {
    match record {
        Record::Revision(_) => 0,
        Record::Member(_) => 1,
        Record::Removed(_) => 2,
        Record::Promotion(_) => 3,
        Record::Key(_) => 4,
        Record::Compacted(_) => 5,
        Record::Lease { .. } => 6,
        Record::Alarm(_) => 7,
        Record::History(..) => 8,
    }
}

/// Writes `store`'s snapshot into `w`. See [`Store::write_snapshot`].
pub(crate) fn write(store: &Store, w: &mut impl Write) -> io::Result<()> {
    let mut out = Checksummed { inner: w, crc: 0 };
    out.put(&MAGIC)?;
    out.put(&FORMAT_VERSION.to_le_bytes())?;
    let mut body = Vec::new();
    let mut count = 0u64;
    let records = std::iter::once(RecordRef::Revision(store.revision()))
        .chain(store.members().values().map(RecordRef::Member))
        .chain(store.removed().iter().map(|&id| RecordRef::Removed(id)))
        .chain(
            store
                .promotions()
                .iter()
                .map(|&id| RecordRef::Promotion(id)),
        )
        .chain(std::iter::once(RecordRef::Compacted(store.compacted())))
        .chain(
            store
                .leases()
                .iter()
                .map(|(&id, l)| RecordRef::Lease { id, ttl: l.ttl }),
        )
        .chain(store.alarms().iter().map(|&a| RecordRef::Alarm(a)))
        .chain(
            store
                .kv()
                .records()
                .map(|(&rev, r)| RecordRef::History(rev, r)),
        );
    for record in records {
        body.clear();
        body = postcard::to_extend(&record, body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if body.len() > RECORD_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "snapshot record {count} takes {} bytes, more than the limit of {RECORD_BYTES_MAX}",
                    body.len()
                ),
            ));
        }
        out.put(&(body.len() as u32).to_le_bytes())?;
        out.put(&body)?;
        count += 1;
    }
    out.put(&0u32.to_le_bytes())?;
    out.put(&count.to_le_bytes())?;
    let crc = out.crc;
    out.inner.write_all(&crc.to_le_bytes())
}

/// A writer that keeps the CRC-32C of what went through it.
struct Checksummed<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Checksummed<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.inner.write_all(bytes)
    }
}

/// The reading side, fed piece by piece by a sync or an async driver.
#[derive(Default)]
struct Decoder {
    crc: u32,
    records: u64,
    revision: Option<i64>,
    /// The rank of the last record's kind ([`rank`]).
    last_rank: u8,
    /// The format version of the header.
    version: u32,
    /// The key records of a version 1 or 2 snapshot, in key order.
    keys: Vec<KeyValue>,
    parts: StoreParts,
}

impl Decoder {
    fn absorb(&mut self, bytes: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
    }

    fn magic(&mut self, magic: &[u8; MAGIC.len()]) -> Result<(), SnapshotFormatError> {
        self.absorb(magic);
        if *magic != MAGIC {
            return Err(SnapshotFormatError::BadMagic);
        }
        Ok(())
    }

    fn version(&mut self, version: &[u8; 4]) -> Result<(), SnapshotFormatError> {
        self.absorb(version);
        self.version = u32::from_le_bytes(*version);
        match self.version {
            FORMAT_VERSION_MIN..=FORMAT_VERSION => Ok(()),
            other => Err(SnapshotFormatError::UnsupportedVersion(other)),
        }
    }

    /// The length of the next record's body, or `None` at the end of the records.
    fn record_len(&mut self, len: &[u8; LEN_BYTES]) -> Result<Option<usize>, SnapshotFormatError> {
        self.absorb(len);
        match u32::from_le_bytes(*len) as usize {
            0 => Ok(None),
            n if n > RECORD_BYTES_MAX => Err(SnapshotFormatError::RecordTooLarge {
                index: self.records,
                len: n as u64,
            }),
            n => Ok(Some(n)),
        }
    }

    fn record(&mut self, body: &[u8]) -> Result<(), SnapshotFormatError> {
        self.absorb(body);
        let index = self.records;
        self.records += 1;
        let bad = |reason: RecordError| SnapshotFormatError::BadRecord { index, reason };
        let record = match postcard::take_from_bytes::<Record>(body) {
            Ok((record, [])) => record,
            Ok((_, rest)) => return Err(bad(RecordError::TrailingBytes { len: rest.len() })),
            Err(e) => return Err(bad(RecordError::Undecodable(e))),
        };
        let rank = rank(&record);
        if rank < self.last_rank {
            return Err(bad(RecordError::OutOfRank {
                kind: KINDS[usize::from(rank)],
                after: KINDS[usize::from(self.last_rank)],
            }));
        }
        self.last_rank = rank;
        match (record, self.revision) {
            (Record::Revision(revision), None) => self.revision = Some(revision),
            (Record::Revision(_), Some(_)) => return Err(bad(RecordError::SecondRevision)),
            (_, None) => return Err(bad(RecordError::FirstNotRevision)),
            (record, Some(_)) => self.add(record).map_err(bad)?,
        }
        Ok(())
    }

    /// Adds a record that follows the revision record to the parts.
    fn add(&mut self, record: Record) -> Result<(), RecordError> {
        /// Whether `id`, of a record of `kind`, follows the last id of an ascending set.
        fn ascending<T: Ord + std::fmt::Debug>(
            kind: &'static str,
            last: Option<&T>,
            id: &T,
        ) -> Result<(), RecordError> {
            match last {
                Some(last) if id <= last => Err(RecordError::NotAscending {
                    kind,
                    id: format!("{id:?}"),
                    last: format!("{last:?}"),
                }),
                _ => Ok(()),
            }
        }
        let v3 = self.version >= 3;
        let parts = &mut self.parts;
        match record {
            Record::Revision(_) => unreachable!("handled by the caller"),
            Record::Member(member) => {
                ascending("member", parts.members.keys().next_back(), &member.id)?;
                parts.members.insert(member.id, member);
            }
            Record::Removed(id) => {
                ascending("removed id", parts.removed.last(), &id)?;
                parts.removed.insert(id);
            }
            Record::Promotion(id) => {
                ascending("promotion", parts.promotions.last(), &id)?;
                parts.promotions.insert(id);
            }
            Record::Key(_) if v3 => return Err(RecordError::KeyInVersion3),
            Record::Key(kv) => {
                if self.keys.last().is_some_and(|last| kv.key <= last.key) {
                    return Err(RecordError::KeysOutOfOrder);
                }
                self.keys.push(kv);
            }
            Record::Compacted(_)
            | Record::Lease { .. }
            | Record::Alarm(_)
            | Record::History(..)
                if !v3 =>
            {
                return Err(RecordError::Version3Record {
                    version: self.version,
                });
            }
            Record::Compacted(revision) => parts.kv.restore_compacted(revision),
            Record::Lease { id, ttl } => {
                ascending("lease", parts.leases.keys().next_back(), &id)?;
                parts.leases.insert(id, ttl);
            }
            Record::Alarm(alarm) => {
                ascending("alarm", parts.alarms.last(), &alarm)?;
                parts.alarms.insert(alarm);
            }
            Record::History(rev, record) => {
                let last = parts.kv.last_rev();
                ascending("history revision", last.as_ref(), &rev)?;
                parts.kv.restore_record(rev, record);
            }
        }
        Ok(())
    }

    /// A version 1 or 2 snapshot's keys as history: each a put at its mod revision, the
    /// compaction point at the snapshot's revision.
    fn keys_to_history(&mut self, revision: i64) {
        let mut keys = std::mem::take(&mut self.keys);
        keys.sort_by_key(|kv| kv.mod_revision);
        let mut last = Rev::default();
        for kv in keys {
            let rev = if kv.mod_revision == last.main {
                Rev {
                    main: last.main,
                    sub: last.sub + 1,
                }
            } else {
                Rev {
                    main: kv.mod_revision,
                    sub: 0,
                }
            };
            last = rev;
            self.parts.kv.restore_record(rev, HistoryRecord::Put(kv));
        }
        self.parts.kv.restore_compacted(revision);
    }

    fn trailer(mut self, trailer: &[u8; TRAILER_BYTES]) -> Result<Store, SnapshotFormatError> {
        let (count, crc) = trailer.split_at(8);
        let computed = crc32c::crc32c_append(self.crc, count);
        let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if stored != computed {
            return Err(SnapshotFormatError::Checksum { stored, computed });
        }
        let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
        if count != self.records {
            return Err(SnapshotFormatError::RecordCount {
                stored: count,
                read: self.records,
            });
        }
        let revision = self.revision.ok_or(SnapshotFormatError::NoRevision)?;
        if self.version < 3 {
            self.keys_to_history(revision);
        }
        let mut parts = self.parts;
        parts.revision = revision;
        Ok(Store::from_parts(parts))
    }
}

/// An I/O error while reading: the end of the data means the snapshot is truncated.
fn read_error(e: io::Error) -> SnapshotFormatError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        SnapshotFormatError::Truncated
    } else {
        SnapshotFormatError::Io(e)
    }
}

/// Reads a snapshot from `r`. See [`Store::read_snapshot`].
pub(crate) fn read(r: &mut impl Read) -> Result<Store, SnapshotFormatError> {
    let store = read_to_trailer(r)?;
    let mut extra = [0; 1];
    loop {
        match r.read(&mut extra) {
            Ok(0) => return Ok(store),
            Ok(_) => return Err(SnapshotFormatError::TrailingData),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SnapshotFormatError::Io(e)),
        }
    }
}

/// Reads a snapshot up to the end of its trailer.
fn read_to_trailer(r: &mut impl Read) -> Result<Store, SnapshotFormatError> {
    let mut decoder = Decoder::default();
    let mut magic = [0; MAGIC.len()];
    r.read_exact(&mut magic).map_err(read_error)?;
    decoder.magic(&magic)?;
    let mut version = [0; 4];
    r.read_exact(&mut version).map_err(read_error)?;
    decoder.version(&version)?;
    let mut body = Vec::new();
    loop {
        let mut len = [0; LEN_BYTES];
        r.read_exact(&mut len).map_err(read_error)?;
        let Some(len) = decoder.record_len(&len)? else {
            break;
        };
        body.clear();
        // Grows with the data actually read: a corrupt length cannot allocate up front.
        (&mut *r)
            .take(len as u64)
            .read_to_end(&mut body)
            .map_err(read_error)?;
        if body.len() < len {
            return Err(SnapshotFormatError::Truncated);
        }
        decoder.record(&body)?;
    }
    let mut trailer = [0; TRAILER_BYTES];
    r.read_exact(&mut trailer).map_err(read_error)?;
    decoder.trailer(&trailer)
}

/// Wraps an encoded snapshot ([`Store::write_snapshot`]'s output) the way etcd ends a
/// `Maintenance.Snapshot` stream: zero bytes up to a multiple of [`ETCD_SNAPSHOT_ALIGN`], then
/// the SHA-256 ([`SHA256_BYTES`]) of the padded data. Adds at most
/// `ETCD_SNAPSHOT_ALIGN - 1 + SHA256_BYTES` bytes.
pub fn etcd_envelope(mut snapshot: Vec<u8>) -> Vec<u8> {
    let padded = snapshot.len().div_ceil(ETCD_SNAPSHOT_ALIGN) * ETCD_SNAPSHOT_ALIGN;
    snapshot.reserve_exact(padded - snapshot.len() + SHA256_BYTES);
    snapshot.resize(padded, 0);
    let digest = Sha256::digest(&snapshot);
    snapshot.extend_from_slice(&digest);
    snapshot
}

/// Reads a store from an [`etcd_envelope`], such as the file `etcdctl snapshot save` writes
/// from raft-kv's `Maintenance.Snapshot`: checks the length and the SHA-256, then reads the
/// snapshot inside, which only zero padding may follow.
pub fn read_etcd_snapshot(file: &[u8]) -> Result<Store, SnapshotFormatError> {
    if file.len() % ETCD_SNAPSHOT_ALIGN != SHA256_BYTES {
        return Err(SnapshotFormatError::NoDigest { len: file.len() });
    }
    let (mut data, digest) = file.split_at(file.len() - SHA256_BYTES);
    if Sha256::digest(data).as_slice() != digest {
        return Err(SnapshotFormatError::DigestMismatch);
    }
    let store = read_to_trailer(&mut data)?;
    if data.len() >= ETCD_SNAPSHOT_ALIGN || data.iter().any(|&b| b != 0) {
        return Err(SnapshotFormatError::TrailingData);
    }
    Ok(store)
}

/// Reads a snapshot from an async reader, record by record.
async fn read_async(
    r: &mut (impl futures::io::AsyncRead + Unpin + ?Sized),
) -> Result<Store, SnapshotFormatError> {
    let mut decoder = Decoder::default();
    let mut magic = [0; MAGIC.len()];
    r.read_exact(&mut magic).await.map_err(read_error)?;
    decoder.magic(&magic)?;
    let mut version = [0; 4];
    r.read_exact(&mut version).await.map_err(read_error)?;
    decoder.version(&version)?;
    let mut body = Vec::new();
    loop {
        let mut len = [0; LEN_BYTES];
        r.read_exact(&mut len).await.map_err(read_error)?;
        let Some(len) = decoder.record_len(&len)? else {
            break;
        };
        body.clear();
        // Grows with the data actually read: a corrupt length cannot allocate up front.
        (&mut *r)
            .take(len as u64)
            .read_to_end(&mut body)
            .await
            .map_err(read_error)?;
        if body.len() < len {
            return Err(SnapshotFormatError::Truncated);
        }
        decoder.record(&body)?;
    }
    let mut trailer = [0; TRAILER_BYTES];
    r.read_exact(&mut trailer).await.map_err(read_error)?;
    let store = decoder.trailer(&trailer)?;
    let mut extra = [0; 1];
    loop {
        match r.read(&mut extra).await {
            Ok(0) => return Ok(store),
            Ok(_) => return Err(SnapshotFormatError::TrailingData),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SnapshotFormatError::Io(e)),
        }
    }
}

/// Writes the store's snapshot into a raftline-core snapshot sink (for
/// [`StateMachine::snapshot`](raftline_core::driver::StateMachine::snapshot)).
///
/// The snapshot is encoded in one go under a read lock, into memory: the encoded snapshot is
/// held in memory once (about the size of the keys and values) while it is written. No lock is
/// held across an `.await`; the sink gets writes of at most [`WRITE_CHUNK_BYTES`] and is
/// flushed, not closed.
pub async fn write_store_snapshot(
    store: &RwLock<Store>,
    sink: &mut SnapshotSink<'_>,
) -> io::Result<()> {
    let encoded = {
        let store = store.read();
        let mut encoded = Vec::new();
        store.write_snapshot(&mut encoded)?;
        encoded
    };
    for chunk in encoded.chunks(WRITE_CHUNK_BYTES) {
        sink.write_all(chunk).await?;
    }
    sink.flush().await
}

/// Reads a store from a raftline-core snapshot source (for
/// [`StateMachine::restore`](raftline_core::driver::StateMachine::restore)), record by record
/// through a buffer of [`READ_BUFFER_BYTES`]: the encoded snapshot is never held whole.
///
/// Errors: the source's I/O errors as they are; a snapshot that is not valid (see
/// [`SnapshotFormatError`]) as [`io::ErrorKind::InvalidData`].
pub async fn read_store_snapshot(source: &mut SnapshotSource<'_>) -> io::Result<Store> {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, source);
    Ok(read_async(&mut reader).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Command, Outcome};
    use proptest::prelude::*;

    fn put(key: &[u8], value: &[u8], lease: i64) -> Command {
        Command::Put(crate::store::txn::PutReq {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            prev_kv: true,
            ..Default::default()
        })
    }

    fn member(id: u64) -> MemberInfo {
        MemberInfo {
            id,
            name: format!("n{id}"),
            peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
            client_urls: vec![format!("http://127.0.0.1:{}", 2379 + id)],
        }
    }

    /// A store with overwritten, deleted and recreated keys, binary keys and values, leases,
    /// an empty key, and members.
    fn sample() -> Store {
        let mut s = Store::default();
        for id in (3..50).step_by(3).chain([1, 7, 99]) {
            s.apply(Command::LeaseGrant { id, ttl: id + 5 });
        }
        s.apply(Command::LeaseRevoke { id: 99 });
        for i in 0..50u32 {
            s.apply(put(format!("k{i:03}").as_bytes(), &i.to_be_bytes(), 0));
        }
        for i in (0..50u32).step_by(3) {
            s.apply(put(format!("k{i:03}").as_bytes(), b"again", i64::from(i)));
        }
        s.apply(Command::DeleteRange(crate::store::txn::DeleteReq {
            key: b"k010".to_vec(),
            range_end: b"k020".to_vec(),
            prev_kv: false,
        }));
        s.apply(put(b"k012", b"back", 7));
        s.apply(put(&[0xff, 0, 1], &[0; 300], 0));
        s.apply(put(b"", b"empty key", 0));
        s.apply(put(b"no value", b"", 0));
        let compact_at = s.revision() - 20;
        s.apply(Command::Compact {
            revision: compact_at,
        });
        s.apply(Command::Alarm {
            action: crate::store::AlarmAction::Activate,
            member: 3,
            alarm: Some(crate::store::AlarmType::Corrupt),
        });
        s.apply(Command::Publish(member(3)));
        s.apply(Command::Publish(member(1)));
        s.apply(Command::Publish(MemberInfo {
            id: u64::MAX,
            ..MemberInfo::default()
        }));
        for (id, promote) in [(7, true), (9, false), (5, true), (11, true)] {
            s.apply(Command::AddMember {
                id,
                peer_urls: vec![format!("http://127.0.0.1:{}", 3000 + id)],
                promote,
            });
        }
        s.apply(Command::RemoveMember { id: 9 });
        s.apply(Command::RemoveMember { id: 11 });
        s.apply(Command::RemoveMember { id: 4 });
        s
    }

    fn encode(s: &Store) -> Vec<u8> {
        let mut out = Vec::new();
        s.write_snapshot(&mut out).expect("writing to memory");
        out
    }

    fn decode(bytes: &[u8]) -> Result<Store, SnapshotFormatError> {
        Store::read_snapshot(&mut &bytes[..])
    }

    /// Commands applied after a restore, to both stores.
    fn further() -> Vec<Command> {
        vec![
            put(b"k000", b"later", 1),
            put(b"new", b"key", 0),
            Command::DeleteRange(crate::store::txn::DeleteReq {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                prev_kv: true,
            }),
            Command::Publish(member(2)),
            put(b"k001", b"recreated", 0),
        ]
    }

    #[test]
    fn round_trip_restores_an_equal_store() {
        let mut original = sample();
        let bytes = encode(&original);
        let mut restored = decode(&bytes).expect("a valid snapshot");
        assert_eq!(restored, original);
        assert_eq!(restored.revision(), original.revision());
        assert_eq!(restored.members(), original.members());
        let all = |s: &Store| s.key_values().cloned().collect::<Vec<_>>();
        assert_eq!(all(&restored), all(&original));
        assert_eq!(
            restored.range(b"k", b"l").collect::<Vec<_>>(),
            original.range(b"k", b"l").collect::<Vec<_>>()
        );
        // Deterministic: the restored store encodes to the same bytes.
        assert_eq!(encode(&restored), bytes);
        // And it goes on exactly like the original.
        for command in further() {
            let a: Outcome = original.apply(command.clone());
            let b = restored.apply(command);
            assert_eq!(a, b);
        }
        assert_eq!(restored, original);
        assert_eq!(encode(&restored), encode(&original));
    }

    #[test]
    fn an_empty_store_round_trips() {
        let bytes = encode(&Store::default());
        assert_eq!(&bytes[..8], &MAGIC);
        assert_eq!(decode(&bytes).unwrap(), Store::default());
    }

    #[test]
    fn equal_stores_give_equal_bytes() {
        // Same state reached in a different order of publishes.
        let mut a = Store::default();
        a.apply(Command::Publish(member(1)));
        a.apply(Command::Publish(member(2)));
        a.apply(put(b"x", b"1", 0));
        let mut b = Store::default();
        b.apply(Command::Publish(member(2)));
        b.apply(Command::Publish(member(1)));
        b.apply(put(b"x", b"1", 0));
        assert_eq!(encode(&a), encode(&b));
        b.apply(put(b"x", b"1", 0));
        assert_ne!(encode(&a), encode(&b));
    }

    #[test]
    fn every_truncation_fails() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            match decode(&bytes[..len]) {
                Err(SnapshotFormatError::Truncated) => {}
                other => panic!("truncated to {len} of {}: {other:?}", bytes.len()),
            }
        }
    }

    #[test]
    fn every_flipped_byte_fails() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            for bit in [0x01, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= bit;
                let result = decode(&bad);
                assert!(
                    result.is_err(),
                    "flipping bit {bit:#x} of byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let bytes = encode(&sample());
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(decode(&bad), Err(SnapshotFormatError::BadMagic)));
        let mut bad = bytes.clone();
        bad[8..12].copy_from_slice(&4u32.to_le_bytes());
        let e = decode(&bad).unwrap_err();
        assert!(
            matches!(e, SnapshotFormatError::UnsupportedVersion(4)),
            "{e}"
        );
        assert!(e.to_string().contains("version 4"), "{e}");
        // A flipped byte in a value decodes, but the checksum catches it.
        let at = bytes
            .windows(5)
            .position(|w| w == b"again")
            .expect("a value");
        let mut bad = bytes.clone();
        bad[at] ^= 1;
        let e = decode(&bad).unwrap_err();
        assert!(matches!(e, SnapshotFormatError::Checksum { .. }), "{e}");
        assert!(e.to_string().contains("checksum"), "{e}");
        // A bad CRC in the trailer itself.
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode(&bad),
            Err(SnapshotFormatError::Checksum { .. })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode(&long),
            Err(SnapshotFormatError::TrailingData)
        ));
        // A huge record length is refused before anything is read for it.
        let mut huge = bytes[..12].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&huge),
            Err(SnapshotFormatError::RecordTooLarge { index: 0, .. })
        ));
        // As an io::Error: InvalidData, with the message.
        let e = io::Error::from(decode(&bad).unwrap_err());
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    /// Builds a snapshot from raw record bodies, with a valid trailer.
    fn assemble(records: &[Vec<u8>]) -> Vec<u8> {
        assemble_version(FORMAT_VERSION, records)
    }

    /// [`assemble`] with another format version in the header.
    fn assemble_version(version: u32, records: &[Vec<u8>]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        for r in records {
            out.extend_from_slice(&(r.len() as u32).to_le_bytes());
            out.extend_from_slice(r);
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(records.len() as u64).to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn records_out_of_canonical_order_are_refused() {
        let rec = |r: RecordRef<'_>| postcard::to_allocvec(&r).unwrap();
        let (m1, m2) = (member(1), member(2));
        let kv = |k: &[u8]| KeyValue {
            key: k.to_vec(),
            ..KeyValue::default()
        };
        let (a, b) = (kv(b"a"), kv(b"b"));
        let (ha, hb) = (
            HistoryRecord::Put(a.clone()),
            HistoryRecord::Tombstone(b"b".to_vec()),
        );
        let at = |main| Rev { main, sub: 0 };
        let valid = assemble(&[
            rec(RecordRef::Revision(5)),
            rec(RecordRef::Member(&m1)),
            rec(RecordRef::Member(&m2)),
            rec(RecordRef::Removed(3)),
            rec(RecordRef::Removed(4)),
            rec(RecordRef::Promotion(2)),
            rec(RecordRef::Compacted(2)),
            rec(RecordRef::Lease { id: 1, ttl: 5 }),
            rec(RecordRef::History(at(3), &ha)),
            rec(RecordRef::History(at(4), &hb)),
        ]);
        let store = decode(&valid).expect("valid");
        assert_eq!(store.revision(), 5);
        assert_eq!((store.compacted(), store.leases().len()), (2, 1));
        assert_eq!(store.kv().records().count(), 2);
        // History out of revision order is refused.
        let swapped = assemble(&[
            rec(RecordRef::Revision(5)),
            rec(RecordRef::History(at(4), &hb)),
            rec(RecordRef::History(at(3), &ha)),
        ]);
        assert!(decode(&swapped).is_err());
        // Version 2 keys become history at their mod revisions, compacted at the revision.
        let v2 = assemble_version(
            2,
            &[
                rec(RecordRef::Revision(5)),
                rec(RecordRef::Key(&a)),
                rec(RecordRef::Key(&b)),
            ],
        );
        let old = decode(&v2).expect("a version 2 snapshot");
        assert_eq!((old.compacted(), old.key_values().count()), (5, 2));
        assert_eq!(store.removed().iter().copied().collect::<Vec<_>>(), [3, 4]);
        assert_eq!(store.promotions().iter().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(encode(&store), valid);
        // Version 1 (no removed or promotion records) is still read.
        let v1 = assemble_version(
            1,
            &[
                rec(RecordRef::Revision(5)),
                rec(RecordRef::Member(&m1)),
                rec(RecordRef::Key(&a)),
            ],
        );
        let store = decode(&v1).expect("a version 1 snapshot");
        assert_eq!((store.revision(), store.members().len()), (5, 1));
        let cases: Vec<Vec<Vec<u8>>> = vec![
            vec![],
            vec![rec(RecordRef::Member(&m1))],
            vec![rec(RecordRef::Revision(5)), rec(RecordRef::Revision(5))],
            vec![
                rec(RecordRef::Revision(5)),
                rec(RecordRef::Member(&m2)),
                rec(RecordRef::Member(&m1)),
            ],
            vec![
                rec(RecordRef::Revision(5)),
                rec(RecordRef::Member(&m1)),
                rec(RecordRef::Member(&m1)),
            ],
            vec![
                rec(RecordRef::Revision(5)),
                rec(RecordRef::Key(&b)),
                rec(RecordRef::Key(&a)),
            ],
            vec![
                rec(RecordRef::Revision(5)),
                rec(RecordRef::Key(&a)),
                rec(RecordRef::Key(&a)),
            ],
            vec![
                rec(RecordRef::Revision(5)),
                rec(RecordRef::Key(&a)),
                rec(RecordRef::Member(&m1)),
            ],
            vec![
                rec(RecordRef::Revision(5)),
                rec(RecordRef::Removed(3)),
                rec(RecordRef::Member(&m1)),
            ],
            vec![
                rec(RecordRef::Revision(5)),
                rec(RecordRef::Promotion(3)),
                rec(RecordRef::Removed(3)),
            ],
            vec![
                rec(RecordRef::Revision(5)),
                rec(RecordRef::Key(&a)),
                rec(RecordRef::Promotion(3)),
            ],
            vec![
                rec(RecordRef::Revision(5)),
                rec(RecordRef::Removed(4)),
                rec(RecordRef::Removed(3)),
            ],
            vec![
                rec(RecordRef::Revision(5)),
                rec(RecordRef::Promotion(3)),
                rec(RecordRef::Promotion(3)),
            ],
            vec![{
                let mut r = rec(RecordRef::Revision(5));
                r.push(0);
                r
            }],
            vec![vec![9]],
        ];
        for records in cases {
            let result = decode(&assemble(&records));
            assert!(
                matches!(
                    result,
                    Err(SnapshotFormatError::BadRecord { .. } | SnapshotFormatError::NoRevision)
                ),
                "{records:?}: {result:?}"
            );
        }
    }

    #[test]
    fn a_reader_error_is_passed_on() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::PermissionDenied, "no"))
            }
        }
        let e = Store::read_snapshot(&mut Failing).unwrap_err();
        assert!(matches!(&e, SnapshotFormatError::Io(_)), "{e}");
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn async_helpers_round_trip() {
        let store = RwLock::new(sample());
        let mut sink = futures::io::Cursor::new(Vec::new());
        futures::executor::block_on(write_store_snapshot(&store, &mut sink)).unwrap();
        let bytes = sink.into_inner();
        assert_eq!(bytes, encode(&store.read()));
        let mut source = futures::io::Cursor::new(bytes.clone());
        let restored = futures::executor::block_on(read_store_snapshot(&mut source)).unwrap();
        assert_eq!(restored, *store.read());

        let mut bad = bytes.clone();
        bad.truncate(bytes.len() - 1);
        let mut source = futures::io::Cursor::new(bad);
        let e = futures::executor::block_on(read_store_snapshot(&mut source)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("truncated"), "{e}");
        let mut long = bytes;
        long.push(1);
        let mut source = futures::io::Cursor::new(long);
        let e = futures::executor::block_on(read_store_snapshot(&mut source)).unwrap_err();
        assert!(e.to_string().contains("follows"), "{e}");
    }

    #[test]
    fn the_etcd_envelope_round_trips_and_is_checked() {
        for store in [Store::default(), sample()] {
            let bytes = encode(&store);
            let file = etcd_envelope(bytes.clone());
            assert_eq!(file.len() % ETCD_SNAPSHOT_ALIGN, SHA256_BYTES);
            assert!(file.len() - bytes.len() < ETCD_SNAPSHOT_ALIGN + SHA256_BYTES);
            assert_eq!(&file[..bytes.len()], &bytes[..]);
            assert_eq!(read_etcd_snapshot(&file).unwrap(), store);
            // The plain reader does not take the padding.
            assert!(matches!(
                decode(&file),
                Err(SnapshotFormatError::TrailingData)
            ));
            for i in 0..file.len() {
                let mut bad = file.clone();
                bad[i] ^= 0x10;
                assert!(
                    matches!(
                        read_etcd_snapshot(&bad),
                        Err(SnapshotFormatError::DigestMismatch)
                    ),
                    "byte {i}"
                );
            }
            for len in 0..file.len() {
                assert!(read_etcd_snapshot(&file[..len]).is_err(), "{len}");
            }
        }
        // Exactly aligned data gets no padding.
        let aligned = vec![7; ETCD_SNAPSHOT_ALIGN];
        assert_eq!(
            etcd_envelope(aligned).len(),
            ETCD_SNAPSHOT_ALIGN + SHA256_BYTES
        );
        // Padding that is not zero, or a whole padding block, is refused even with a good
        // digest.
        let bytes = encode(&sample());
        let mut padded = bytes.clone();
        padded.resize(
            bytes.len().div_ceil(ETCD_SNAPSHOT_ALIGN) * ETCD_SNAPSHOT_ALIGN,
            0,
        );
        let mut nonzero = padded.clone();
        *nonzero.last_mut().unwrap() = 1;
        let redigest = |data: &[u8]| {
            let mut file = data.to_vec();
            file.extend_from_slice(&Sha256::digest(data));
            file
        };
        assert!(matches!(
            read_etcd_snapshot(&redigest(&nonzero)),
            Err(SnapshotFormatError::TrailingData)
        ));
        let mut extra_block = padded;
        extra_block.resize(extra_block.len() + ETCD_SNAPSHOT_ALIGN, 0);
        assert!(matches!(
            read_etcd_snapshot(&redigest(&extra_block)),
            Err(SnapshotFormatError::TrailingData)
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = decode(&bytes);
            let mut source = futures::io::Cursor::new(bytes);
            let _ = futures::executor::block_on(read_store_snapshot(&mut source));
        }

        #[test]
        fn arbitrary_envelopes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let _ = read_etcd_snapshot(&bytes);
            // With a valid digest, so that the snapshot inside is read.
            let _ = read_etcd_snapshot(&etcd_envelope(bytes));
        }

        #[test]
        fn a_valid_header_then_arbitrary_bytes_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            bytes.extend_from_slice(&tail);
            prop_assert!(decode(&bytes).is_err());
        }

        #[test]
        fn corrupted_snapshots_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = encode(&sample());
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_stores_round_trip(
            ops in proptest::collection::vec(
                (
                    0u8..8,
                    proptest::collection::vec(any::<u8>(), 0..4),
                    proptest::collection::vec(any::<u8>(), 0..8),
                ),
                0..40,
            ),
        ) {
            let mut s = Store::default();
            for (op, key, value) in ops {
                let command = match op {
                    0 => put(&key, &value, 0),
                    1 => Command::DeleteRange(crate::store::txn::DeleteReq {
                        key,
                        range_end: value,
                        prev_kv: false,
                    }),
                    5 => Command::LeaseGrant { id: i64::from(value.len() as u8), ttl: 5 },
                    6 => put(&key, &value, i64::from(value.len() as u8)),
                    7 => Command::Compact { revision: s.revision() - i64::from(key.len() as u8) },
                    2 => Command::Publish(MemberInfo {
                        id: u64::from(key.first().copied().unwrap_or(0)),
                        name: String::from_utf8_lossy(&value).into_owned(),
                        ..MemberInfo::default()
                    }),
                    3 => Command::AddMember {
                        id: u64::from(key.first().copied().unwrap_or(0)),
                        peer_urls: vec![String::from_utf8_lossy(&value).into_owned()],
                        promote: value.len() % 2 == 0,
                    },
                    _ => Command::RemoveMember {
                        id: u64::from(key.first().copied().unwrap_or(0)),
                    },
                };
                s.apply(command);
            }
            let bytes = encode(&s);
            let restored = decode(&bytes).unwrap();
            prop_assert_eq!(&restored, &s);
            prop_assert_eq!(encode(&restored), bytes);
        }
    }
}
