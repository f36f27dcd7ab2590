//! The replicated state machine: keys and values with etcd's revision bookkeeping.
//!
//! The store keeps one cluster-wide `revision`, starting at 1 and raised by one for every
//! put and for every delete that removes something; each key carries its `create_revision`,
//! `mod_revision` and `version` (puts since creation), as in etcd. There is no history: a read
//! at an older revision gets etcd's "compacted" error.
//!
//! It also keeps the cluster's member records (like etcd's membership store): each member's
//! peer URLs (from `MemberAdd`/`MemberUpdate`, or from the member's first publication for the
//! members of `--initial-cluster`), its name and client URLs (published by the member when it
//! starts), the ids removed (which never come back), and the members added as voters that
//! wait for their promotion. Which members vote is raft's configuration, not the store's: the
//! records only describe members.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

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
    /// The lease id given with the last put (leases are not enforced).
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

/// A command in the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set a key.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The new value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Lease id to record.
        lease: i64,
        /// Keep the current value (etcd's `ignore_value`).
        ignore_value: bool,
        /// Keep the current lease (etcd's `ignore_lease`).
        ignore_lease: bool,
        /// Return the previous key-value pair.
        prev_kv: bool,
    },
    /// Delete the keys of a range.
    DeleteRange {
        /// The range's first key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The range's end, as in etcd (empty: just `key`; `[0]`: everything from `key`).
        #[serde(with = "serde_bytes")]
        range_end: Vec<u8>,
        /// Return the deleted key-value pairs (otherwise only their number).
        prev_kv: bool,
    },
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
}

/// The result of applying a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A put: the store's revision after it and the previous value, if any.
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
}

/// etcd's message for a peer URL that another member has.
pub const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";

/// The message for adding back a removed member id (etcd's ids are random and never repeat;
/// raft-kv's derive from the peer URL, so a removed member's URL cannot be reused).
pub const ID_REMOVED: &str = "etcdserver: ID removed: a member with this peer URL was removed \
    from the cluster, and a removed id never comes back (its old data could still exist); \
    give the new member another peer URL";

/// The state: every key, the revision and the member records.
///
/// Two stores are equal when they hold the same revision, keys and member records; equal
/// stores write identical snapshots ([`Store::write_snapshot`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    revision: i64,
    data: BTreeMap<Vec<u8>, KeyValue>,
    members: BTreeMap<u64, MemberInfo>,
    removed: BTreeSet<u64>,
    promotions: BTreeSet<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            revision: 1,
            data: BTreeMap::new(),
            members: BTreeMap::new(),
            removed: BTreeSet::new(),
            promotions: BTreeSet::new(),
        }
    }
}

/// The parts of a [`Store`], as the snapshot reader collects them.
#[derive(Debug, Default)]
pub(crate) struct StoreParts {
    pub(crate) revision: i64,
    pub(crate) data: BTreeMap<Vec<u8>, KeyValue>,
    pub(crate) members: BTreeMap<u64, MemberInfo>,
    pub(crate) removed: BTreeSet<u64>,
    pub(crate) promotions: BTreeSet<u64>,
}

/// The keys `[key, range_end)` in etcd's encoding of ranges.
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
    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.revision
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

    /// Every key, in key order.
    pub fn key_values(&self) -> impl DoubleEndedIterator<Item = &KeyValue> + '_ {
        self.data.values()
    }

    /// A store holding exactly this (the snapshot reader checks the maps' consistency).
    pub(crate) fn from_parts(parts: StoreParts) -> Store {
        Store {
            revision: parts.revision,
            data: parts.data,
            members: parts.members,
            removed: parts.removed,
            promotions: parts.promotions,
        }
    }

    /// Writes a snapshot of the whole store into `w`: a header (magic bytes, format version),
    /// one record per item (the revision, each member, each key), and a trailer (record count
    /// and CRC-32C); the layout is in [`crate::snapshot`]. Equal stores write identical bytes.
    ///
    /// Writes go straight to `w`, a few per record: give a buffered writer for a file or
    /// socket. Errors: `w`'s, or [`io::ErrorKind::InvalidInput`] for a record above
    /// [`RECORD_BYTES_MAX`](crate::snapshot::RECORD_BYTES_MAX).
    pub fn write_snapshot(&self, w: &mut impl io::Write) -> io::Result<()> {
        crate::snapshot::write(self, w)
    }

    /// Reads a store from a snapshot written by [`Store::write_snapshot`], record by record
    /// (the encoded snapshot is never held whole). It must end exactly at the trailer.
    ///
    /// Rejects a wrong magic, an unknown format version, truncated data, a bad checksum or
    /// record count, records out of their canonical order, and bytes after the trailer, with
    /// an error saying which; never panics on garbage. Reads go straight to `r`, a few per
    /// record: give a buffered reader for a file or socket.
    pub fn read_snapshot(
        r: &mut impl io::Read,
    ) -> Result<Store, crate::snapshot::SnapshotFormatError> {
        crate::snapshot::read(r)
    }

    /// The keys of a range, in key order. `range_end` is etcd's (see [`range_bounds`]);
    /// an empty range (end before start) has no keys.
    pub fn range<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> impl DoubleEndedIterator<Item = &'a KeyValue> + 'a {
        let (lo, hi) = range_bounds(key, range_end);
        let empty = matches!(hi, Bound::Excluded(end) if end <= key);
        let bounds = if empty {
            (Bound::Included(key), Bound::Excluded(key))
        } else {
            (lo, hi)
        };
        self.data.range::<[u8], _>(bounds).map(|(_, kv)| kv)
    }

    /// Applies a command.
    pub fn apply(&mut self, command: Command) -> Outcome {
        match command {
            Command::Put {
                key,
                value,
                lease,
                ignore_value,
                ignore_lease,
                prev_kv,
            } => {
                let prev = if prev_kv {
                    self.data.get(&key).cloned()
                } else {
                    None
                };
                self.revision += 1;
                let revision = self.revision;
                let kv = self.data.entry(key.clone()).or_insert_with(|| KeyValue {
                    key,
                    create_revision: revision,
                    ..KeyValue::default()
                });
                if !ignore_value {
                    kv.value = value;
                }
                if !ignore_lease {
                    kv.lease = lease;
                }
                kv.mod_revision = revision;
                kv.version += 1;
                Outcome::Put { revision, prev }
            }
            Command::DeleteRange {
                key,
                range_end,
                prev_kv,
            } => {
                let doomed: Vec<Vec<u8>> = self
                    .range(&key, &range_end)
                    .map(|kv| kv.key.clone())
                    .collect();
                let removed: Vec<KeyValue> =
                    doomed.iter().filter_map(|k| self.data.remove(k)).collect();
                if !removed.is_empty() {
                    self.revision += 1;
                }
                Outcome::Deleted {
                    revision: self.revision,
                    deleted: removed.len() as i64,
                    prev: if prev_kv { removed } else { Vec::new() },
                }
            }
            Command::Publish(member) => {
                if !self.removed.contains(&member.id) {
                    match self.members.get_mut(&member.id) {
                        Some(record) => {
                            record.name = member.name;
                            record.client_urls = member.client_urls;
                            if record.peer_urls.is_empty() {
                                record.peer_urls = member.peer_urls;
                            }
                        }
                        None => {
                            self.members.insert(member.id, member);
                        }
                    }
                }
                Outcome::Published {
                    revision: self.revision,
                }
            }
            Command::AddMember {
                id,
                peer_urls,
                promote,
            } => {
                if self.removed.contains(&id) {
                    return Outcome::MemberRefused(ID_REMOVED.into());
                }
                if self.peer_url_owner(&peer_urls, id).is_some() {
                    return Outcome::MemberRefused(PEER_URL_EXISTS.into());
                }
                let record = self.members.entry(id).or_insert_with(|| MemberInfo {
                    id,
                    ..MemberInfo::default()
                });
                record.peer_urls = peer_urls;
                if promote {
                    self.promotions.insert(id);
                }
                self.member_changed()
            }
            Command::RemoveMember { id } => {
                self.members.remove(&id);
                self.promotions.remove(&id);
                self.removed.insert(id);
                self.member_changed()
            }
            Command::UpdateMember { id, peer_urls } => {
                if self.removed.contains(&id) {
                    return Outcome::MemberRefused(crate::server::MEMBER_NOT_FOUND.into());
                }
                if self.peer_url_owner(&peer_urls, id).is_some() {
                    return Outcome::MemberRefused(PEER_URL_EXISTS.into());
                }
                self.members
                    .entry(id)
                    .or_insert_with(|| MemberInfo {
                        id,
                        ..MemberInfo::default()
                    })
                    .peer_urls = peer_urls;
                self.member_changed()
            }
        }
    }

    fn member_changed(&self) -> Outcome {
        Outcome::MemberChanged {
            revision: self.revision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &mut Store, k: &str, v: &str) -> Outcome {
        s.apply(Command::Put {
            key: k.into(),
            value: v.into(),
            lease: 0,
            ignore_value: false,
            ignore_lease: false,
            prev_kv: true,
        })
    }

    #[test]
    fn revisions_follow_etcd() {
        let mut s = Store::default();
        assert_eq!(s.revision(), 1);
        assert_eq!(
            put(&mut s, "a", "1"),
            Outcome::Put {
                revision: 2,
                prev: None
            }
        );
        let Outcome::Put {
            revision: 3,
            prev: Some(prev),
        } = put(&mut s, "a", "2")
        else {
            panic!("second put")
        };
        assert_eq!(
            (
                prev.value.as_slice(),
                prev.version,
                prev.create_revision,
                prev.mod_revision
            ),
            (&b"1"[..], 1, 2, 2)
        );
        put(&mut s, "b", "x");
        let a = s.range(b"a", b"").next().unwrap();
        assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 3, 2));
        // A delete of nothing does not raise the revision; a delete of two keys raises it once.
        let Outcome::Deleted {
            revision: 4, prev, ..
        } = s.apply(Command::DeleteRange {
            key: "z".into(),
            range_end: vec![],
            prev_kv: true,
        })
        else {
            panic!("empty delete")
        };
        assert!(prev.is_empty());
        let Outcome::Deleted {
            revision: 5, prev, ..
        } = s.apply(Command::DeleteRange {
            key: "a".into(),
            range_end: vec![0],
            prev_kv: true,
        })
        else {
            panic!("delete all")
        };
        assert_eq!(prev.len(), 2);
        // A key created again starts a new version history.
        put(&mut s, "a", "3");
        let a = s.range(b"a", b"").next().unwrap();
        assert_eq!((a.create_revision, a.version), (6, 1));
    }

    fn info(id: u64, name: &str, peer: &str, client: &str) -> MemberInfo {
        MemberInfo {
            id,
            name: name.into(),
            peer_urls: vec![peer.into()],
            client_urls: if client.is_empty() {
                vec![]
            } else {
                vec![client.into()]
            },
        }
    }

    #[test]
    fn member_records_follow_adds_updates_publications_and_removals() {
        let mut s = Store::default();
        let changed = Outcome::MemberChanged { revision: 1 };
        // An initial member's first publication creates its record.
        s.apply(Command::Publish(info(1, "n1", "http://a:1", "http://a:2")));
        assert_eq!(s.members()[&1], info(1, "n1", "http://a:1", "http://a:2"));
        // An added member is unstarted until it publishes; its record keeps the peer URLs it
        // was added with.
        let add = |id: u64, url: &str, promote: bool| Command::AddMember {
            id,
            peer_urls: vec![url.into()],
            promote,
        };
        assert_eq!(s.apply(add(2, "http://b:1", true)), changed);
        assert_eq!(s.members()[&2], info(2, "", "http://b:1", ""));
        assert!(s.promotions().contains(&2));
        // Adding again (a retried MemberAdd) is harmless; another member's URL is refused.
        assert_eq!(s.apply(add(2, "http://b:1", true)), changed);
        assert_eq!(
            s.apply(add(3, "http://a:1", false)),
            Outcome::MemberRefused(PEER_URL_EXISTS.into())
        );
        s.apply(Command::Publish(info(
            2,
            "n2",
            "http://ignored:1",
            "http://b:2",
        )));
        assert_eq!(s.members()[&2], info(2, "n2", "http://b:1", "http://b:2"));
        // An update moves the peer URL; publications do not move it back.
        assert_eq!(
            s.apply(Command::UpdateMember {
                id: 2,
                peer_urls: vec!["http://b:9".into()]
            }),
            changed
        );
        s.apply(Command::Publish(info(2, "n2", "http://b:1", "http://b:2")));
        assert_eq!(s.members()[&2].peer_urls, ["http://b:9"]);
        assert_eq!(
            s.apply(Command::UpdateMember {
                id: 2,
                peer_urls: vec!["http://a:1".into()]
            }),
            Outcome::MemberRefused(PEER_URL_EXISTS.into())
        );
        // A removed id is gone for good: no record, no promotion, no publication, no add.
        assert_eq!(s.apply(Command::RemoveMember { id: 2 }), changed);
        assert!(!s.members().contains_key(&2));
        assert!(s.removed().contains(&2) && s.promotions().is_empty());
        s.apply(Command::Publish(info(2, "n2", "http://b:9", "http://b:2")));
        assert!(!s.members().contains_key(&2));
        assert_eq!(
            s.apply(add(2, "http://b:1", false)),
            Outcome::MemberRefused(ID_REMOVED.into())
        );
        assert!(matches!(
            s.apply(Command::UpdateMember {
                id: 2,
                peer_urls: vec!["http://c:1".into()]
            }),
            Outcome::MemberRefused(_)
        ));
        // Its URL is free again for a member with another id.
        assert_eq!(s.apply(add(4, "http://b:9", false)), changed);
        assert_eq!(s.revision(), 1, "member changes leave the revision alone");
    }

    #[test]
    fn ranges_follow_etcd() {
        let mut s = Store::default();
        for k in ["a", "ab", "abc", "b", "c"] {
            put(&mut s, k, k);
        }
        let keys = |k: &[u8], e: &[u8]| {
            s.range(k, e)
                .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(b"ab", b""), ["ab"]);
        assert_eq!(keys(b"a", b"b"), ["a", "ab", "abc"]);
        assert_eq!(keys(b"b", &[0]), ["b", "c"]);
        assert_eq!(keys(&[0], &[0]), ["a", "ab", "abc", "b", "c"]);
        assert!(keys(b"c", b"a").is_empty());
    }
}
