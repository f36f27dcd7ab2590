//! The replicated state machine: etcd's MVCC key space with its history, leases, alarms, and
//! the cluster's member records.
//!
//! - [`mvcc`]: the key space — every revision of every key until compaction, reads at any
//!   revision since, and the change events watchers read.
//! - [`txn`]: etcd's key requests (range, put, delete, transaction with compares) as the log
//!   carries them, their answers and their validation.
//! - `exec`: applying a [`Command`]; every command's changes take one main revision
//!   (sub-revisions within it), a command that changes nothing keeps the revision.
//! - leases: id, granted TTL and attached keys. Whether a lease has expired is not the store's
//!   business: only the leader decides, with its clock, and proposes a revoke
//!   ([`Command::LeaseRevoke`]), so every member deletes the same keys at the same revision.
//! - alarms: raised and cleared through the log; while NOSPACE is raised, writes that add
//!   data fail with [`KvError::NoSpace`].
//! - `members`: member records (which members vote is raft's configuration, not the store's).
//!
//! Applying is deterministic: equal stores given equal commands stay equal, and write
//! identical snapshots.

mod members;
pub mod mvcc;
pub mod txn;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

pub use members::{ID_REMOVED, MEMBER_NOT_FOUND, PEER_URL_EXISTS};
use mvcc::KeySpace;
use txn::{DeleteReq, DeleteResp, OpResp, PutReq, PutResp, RangeReq, RangeResp, TxnReq, TxnResp};

/// A key's value and its revisions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The revision of the put that created the key.
    pub create_revision: i64,
    /// The revision of the last put to the key.
    pub mod_revision: i64,
    /// Puts to the key since it was created.
    pub version: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

/// A member's record: what others need to reach it.
///
/// `peer_urls` is set by `MemberAdd` and `MemberUpdate` (for the members of
/// `--initial-cluster`, by their first publication); `name` and `client_urls` are published by
/// the member itself when it starts (both empty until then: an "unstarted" member).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member's raft id.
    pub id: u64,
    /// The member's name (`--name`).
    pub name: String,
    /// Where its peers reach it.
    pub peer_urls: Vec<String>,
    /// Where clients reach it.
    pub client_urls: Vec<String>,
}

/// etcd's alarm kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmType {
    /// The space quota is exhausted.
    NoSpace,
    /// The store is corrupt.
    Corrupt,
}

/// What an alarm command does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmAction {
    /// List alarms (through the log, so that the answer is linearizable).
    Get,
    /// Raise an alarm for a member.
    Activate,
    /// Clear an alarm of a member.
    Deactivate,
}

/// A raised alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Alarm {
    /// The member it concerns.
    pub member: u64,
    /// Its kind.
    pub alarm: AlarmType,
}

/// A lease as the store keeps it (its expiry is the leader's business).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// The TTL granted, in seconds.
    pub ttl: i64,
    /// The keys attached.
    pub keys: BTreeSet<Vec<u8>>,
}

/// A failed key, lease or alarm command, with etcd's message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// A read below the compaction point.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// A read above the current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// `ignore_value`/`ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// An unknown lease id.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease id granted twice.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A transaction writing a key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A transaction with more than [`txn::TXN_OPS_MAX`] operations in a branch.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A write while the NOSPACE alarm is raised.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
}

/// A command in the replicated log. The first six variants keep the order and fields they
/// had before the MVCC store, so logs written then still decode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set a key.
    Put(PutReq),
    /// Delete the keys of a range.
    DeleteRange(DeleteReq),
    /// A member publishes its name and client URLs (and, if its record has none yet, its
    /// peer URLs). Ignored for a removed member.
    Publish(MemberInfo),
    /// Record a new member before raft's configuration adds it (`MemberAdd`), so that every
    /// member's transport learns its address when applying this.
    AddMember {
        /// Its raft id ([`member_id`](crate::config::member_id) of its peer URL).
        id: u64,
        /// Its peer URLs.
        peer_urls: Vec<String>,
        /// Added as a voter: the leader promotes it once it has started and caught up.
        promote: bool,
    },
    /// Forget a member that raft's configuration no longer holds (`MemberRemove`), and
    /// remember its id as removed.
    RemoveMember {
        /// Its raft id.
        id: u64,
    },
    /// Give a member new peer URLs (`MemberUpdate`).
    UpdateMember {
        /// Its raft id.
        id: u64,
        /// The new peer URLs.
        peer_urls: Vec<String>,
    },
    /// A transaction.
    Txn(TxnReq),
    /// Drop the history below a revision.
    Compact {
        /// The new compaction point.
        revision: i64,
    },
    /// Create a lease (its id chosen by the proposer when the client gave none).
    LeaseGrant {
        /// The lease id (not 0).
        id: i64,
        /// The TTL in seconds.
        ttl: i64,
    },
    /// Delete a lease and every key attached to it, in one revision.
    LeaseRevoke {
        /// The lease id.
        id: i64,
    },
    /// Raise, clear or list alarms.
    Alarm {
        /// What to do.
        action: AlarmAction,
        /// The member concerned (0 with `Deactivate`: every member).
        member: u64,
        /// The kind (`None`: every kind, for `Get` and `Deactivate`).
        alarm: Option<AlarmType>,
    },
}

/// The result of applying a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A put: the store's revision after it and the previous value, if asked for.
    Put {
        /// The revision after the put.
        revision: i64,
        /// The key before the put.
        prev: Option<KeyValue>,
    },
    /// A delete: the revision after it and the keys it removed.
    Deleted {
        /// The revision after the delete.
        revision: i64,
        /// How many keys it removed.
        deleted: i64,
        /// The removed keys, when the command asked for them.
        prev: Vec<KeyValue>,
    },
    /// A publish.
    Published {
        /// The store's revision (unchanged).
        revision: i64,
    },
    /// A command that could not be decoded (never produced by raft-kv itself).
    Rejected(String),
    /// A member record was added, removed or updated.
    MemberChanged {
        /// The store's revision (unchanged).
        revision: i64,
    },
    /// A member record change was refused; the message is etcd's error for it.
    MemberRefused(String),
    /// A transaction's answer.
    Txn {
        /// The revision after it.
        revision: i64,
        /// The answers.
        response: TxnResp,
    },
    /// A compaction was applied.
    Compacted {
        /// The store's revision.
        revision: i64,
    },
    /// A lease was granted.
    LeaseGranted {
        /// The store's revision.
        revision: i64,
    },
    /// A lease was revoked, its keys deleted.
    LeaseRevoked {
        /// The revision after the deletes.
        revision: i64,
    },
    /// The alarms raised after an alarm command (for `Activate`/`Deactivate`, the ones the
    /// command concerned).
    Alarms {
        /// The store's revision.
        revision: i64,
        /// The alarms.
        alarms: Vec<Alarm>,
    },
    /// A key, lease or alarm command failed; nothing changed.
    Failed {
        /// The store's revision (unchanged).
        revision: i64,
        /// Why.
        error: KvError,
    },
}

impl Outcome {
    /// The store's revision after the command.
    pub fn revision(&self) -> i64 {
        match self {
            Outcome::Put { revision, .. }
            | Outcome::Deleted { revision, .. }
            | Outcome::Published { revision }
            | Outcome::MemberChanged { revision }
            | Outcome::Txn { revision, .. }
            | Outcome::Compacted { revision }
            | Outcome::LeaseGranted { revision }
            | Outcome::LeaseRevoked { revision }
            | Outcome::Alarms { revision, .. }
            | Outcome::Failed { revision, .. } => *revision,
            Outcome::Rejected(_) | Outcome::MemberRefused(_) => 0,
        }
    }
}

/// The state: the key space, leases, alarms and member records.
///
/// Two stores are equal when they hold the same revision, history, leases, alarms and member
/// records; equal stores write identical snapshots ([`Store::write_snapshot`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    revision: i64,
    kv: KeySpace,
    leases: BTreeMap<i64, Lease>,
    alarms: BTreeSet<Alarm>,
    members: BTreeMap<u64, MemberInfo>,
    removed: BTreeSet<u64>,
    promotions: BTreeSet<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Store::from_parts(StoreParts::default())
    }
}

/// The parts of a [`Store`], as the snapshot reader collects them.
#[derive(Debug, Default)]
pub(crate) struct StoreParts {
    pub(crate) revision: i64,
    pub(crate) kv: KeySpace,
    /// Lease ids with their TTLs (the keys attached are found from the key space).
    pub(crate) leases: BTreeMap<i64, i64>,
    pub(crate) alarms: BTreeSet<Alarm>,
    pub(crate) members: BTreeMap<u64, MemberInfo>,
    pub(crate) removed: BTreeSet<u64>,
    pub(crate) promotions: BTreeSet<u64>,
}

/// The keys `[key, range_end)` in etcd's encoding of ranges: an empty end means just `key`,
/// `[0]` means every key from `key` on.
pub fn range_bounds<'a>(key: &'a [u8], range_end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    if range_end.is_empty() {
        (Bound::Included(key), Bound::Included(key))
    } else if range_end == [0] {
        (Bound::Included(key), Bound::Unbounded)
    } else {
        (Bound::Included(key), Bound::Excluded(range_end))
    }
}

impl Store {
    /// The current revision (1 for an empty store, as in etcd).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The key space with its history.
    pub fn kv(&self) -> &KeySpace {
        &self.kv
    }

    /// The compaction point (0: never compacted).
    pub fn compacted(&self) -> i64 {
        self.kv.compacted()
    }

    /// The leases, by id.
    pub fn leases(&self) -> &BTreeMap<i64, Lease> {
        &self.leases
    }

    /// The raised alarms.
    pub fn alarms(&self) -> &BTreeSet<Alarm> {
        &self.alarms
    }

    /// The member records, by id.
    pub fn members(&self) -> &BTreeMap<u64, MemberInfo> {
        &self.members
    }

    /// The ids of removed members (never members again).
    pub fn removed(&self) -> &BTreeSet<u64> {
        &self.removed
    }

    /// The members added as voters (`MemberAdd` without `isLearner`): the leader promotes
    /// each while raft's configuration holds it as a learner. Removal clears the mark.
    pub fn promotions(&self) -> &BTreeSet<u64> {
        &self.promotions
    }

    /// The member other than `id` whose record has one of `peer_urls`, if any.
    pub fn peer_url_owner(&self, peer_urls: &[String], id: u64) -> Option<u64> {
        self.members
            .values()
            .find(|m| m.id != id && m.peer_urls.iter().any(|u| peer_urls.contains(u)))
            .map(|m| m.id)
    }

    /// Every current key, in key order.
    pub fn key_values(&self) -> impl DoubleEndedIterator<Item = &KeyValue> + '_ {
        self.kv.range(b"", &[0])
    }

    /// The current keys of a range, in key order. `range_end` is etcd's (see
    /// [`range_bounds`]); an empty range (end before start) has no keys.
    pub fn range<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> impl DoubleEndedIterator<Item = &'a KeyValue> + 'a {
        self.kv.range(key, range_end)
    }

    /// Serves a range request from the current state (the caller decides whether a read
    /// barrier came first).
    pub fn read(&self, r: &RangeReq) -> Result<RangeResp, KvError> {
        let at = self.kv.check_read(r.revision, self.revision)?;
        Ok(r.answer(self.kv.range_at(&r.key, &r.range_end, at).collect()))
    }

    /// Serves a transaction that only reads (no put or delete in either branch) from the
    /// current state, without going through the log.
    pub fn read_txn(&self, t: &TxnReq) -> Result<TxnResp, KvError> {
        debug_assert!(!t.writes());
        exec::ReadOnly(self).txn(t)
    }

    /// Bytes the history accounts for (the space quota's measure).
    pub fn size_bytes(&self) -> usize {
        self.kv.size_bytes()
    }

    /// A store holding exactly this (the snapshot reader checks the maps' consistency).
    pub(crate) fn from_parts(parts: StoreParts) -> Store {
        let mut leases: BTreeMap<i64, Lease> = parts
            .leases
            .into_iter()
            .map(|(id, ttl)| {
                let lease = Lease {
                    ttl,
                    keys: BTreeSet::new(),
                };
                (id, lease)
            })
            .collect();
        for kv in parts.kv.range(b"", &[0]) {
            if let Some(lease) = leases.get_mut(&kv.lease) {
                lease.keys.insert(kv.key.clone());
            }
        }
        Store {
            revision: parts.revision.max(1),
            kv: parts.kv,
            leases,
            alarms: parts.alarms,
            members: parts.members,
            removed: parts.removed,
            promotions: parts.promotions,
        }
    }

    /// Writes a snapshot of the whole store into `w` (layout in [`crate::snapshot`]). Equal
    /// stores write identical bytes.
    ///
    /// Writes go straight to `w`, a few per record: give a buffered writer for a file or
    /// socket. Errors: `w`'s, or [`io::ErrorKind::InvalidInput`] for a record above
    /// [`RECORD_BYTES_MAX`](crate::snapshot::RECORD_BYTES_MAX).
    pub fn write_snapshot(&self, w: &mut impl io::Write) -> io::Result<()> {
        crate::snapshot::write(self, w)
    }

    /// Reads a store from a snapshot written by [`Store::write_snapshot`] (or by an older
    /// version of raft-kv), record by record. It must end exactly at the trailer.
    ///
    /// Rejects a wrong magic, an unknown format version, truncated data, a bad checksum or
    /// record count, records out of their canonical order, and bytes after the trailer, with
    /// an error saying which; never panics on garbage.
    pub fn read_snapshot(
        r: &mut impl io::Read,
    ) -> Result<Store, crate::snapshot::SnapshotFormatError> {
        crate::snapshot::read(r)
    }

    /// A CRC-32C of everything the store holds (etcd's `Maintenance.Hash`).
    pub fn hash(&self) -> u32 {
        let mut w = exec::CrcWriter(0);
        // Writing into memory cannot fail but for a record above the bound.
        let _ = self.write_snapshot(&mut w);
        w.0
    }

    /// Applies a command.
    pub fn apply(&mut self, command: Command) -> Outcome {
        match command {
            Command::Put(p) => self.apply_put(p),
            Command::DeleteRange(d) => self.apply_delete(d),
            Command::Txn(t) => self.apply_txn(t),
            Command::Compact { revision } => self.apply_compact(revision),
            Command::LeaseGrant { id, ttl } => self.apply_grant(id, ttl),
            Command::LeaseRevoke { id } => self.apply_revoke(id),
            Command::Alarm {
                action,
                member,
                alarm,
            } => self.apply_alarm(action, member, alarm),
            member => self.apply_member(member),
        }
    }
}

mod exec;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
