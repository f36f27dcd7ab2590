//! The cluster's member records, kept in the store like etcd's membership store.

use super::{Command, MemberInfo, Outcome, Store};

/// etcd's message for a member id that is not a member.
pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";

/// etcd's message for a peer URL that another member has.
pub const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";

/// The message for adding back a removed member id (etcd's ids are random and never repeat;
/// raft-kv's derive from the peer URL, so a removed member's URL cannot be reused).
pub const ID_REMOVED: &str = "etcdserver: ID removed: a member with this peer URL was removed \
    from the cluster, and a removed id never comes back (its old data could still exist); \
    give the new member another peer URL";

impl Store {
    /// Applies a member record command (the caller dispatches only those here).
    pub(super) fn apply_member(&mut self, command: Command) -> Outcome {
        match command {
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
                    return Outcome::MemberRefused(MEMBER_NOT_FOUND.into());
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
            other => Outcome::Rejected(format!("not a member command: {other:?}")),
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
}
