//! The one safety checker of the workspace's simulators and test harnesses.
//!
//! [`Checker`] keeps what every node ever showed (leaders per term, every entry written,
//! the committed log, the state machine's digests) and checks Raft's safety properties
//! against it: Election Safety, Log Matching, Leader Completeness, State Machine Safety
//! (committed entries, applied entries, snapshots) and durability of the committed log.
//! The RawNode simulator ([`sim`](super::sim)), the driver simulator
//! ([`driver_sim`](super::driver_sim)) and the transcript harness feed it after every step.
//!
//! Each method returns the violated property, named, as `Err`.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use raftline_proto::{Entry, EntryPayload, LogIndex, Membership, NodeId, SnapshotMeta, Term};

use crate::{quorum, Role};
/// A configuration as a set key.
pub fn config_key(m: &Membership) -> Vec<u8> {
    format!("{m:?}").into_bytes()
}

/// The digest state machine: its digest after applying `entry` on top of `digest` (FNV-1a).
/// The simulators' test state machines keep it, so that snapshots can be checked against the
/// committed log.
pub fn digest_step(digest: u64, entry: &Entry) -> u64 {
    let mut h = digest ^ 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&entry.index.0.to_be_bytes());
    eat(&entry.term.0.to_be_bytes());
    match &entry.payload {
        EntryPayload::Normal(data) => eat(data),
        EntryPayload::Noop => eat(b"noop"),
        EntryPayload::Membership(m) => eat(format!("{m:?}").as_bytes()),
    }
    h
}

/// The simulated state machine's snapshot: applied index and digest, padded so that
/// snapshots span several chunks.
pub fn snapshot_data(index: LogIndex, digest: u64) -> Bytes {
    let mut data = Vec::new();
    data.extend_from_slice(&index.0.to_be_bytes());
    data.extend_from_slice(&digest.to_be_bytes());
    let pad = 8 + (index.0 * 7 + digest % 13) % 48;
    data.extend((0..pad).map(|i| (digest >> (i % 8 * 8)) as u8 ^ i as u8));
    Bytes::from(data)
}

/// The applied index and digest a snapshot holds.
pub fn parse_snapshot(data: &[u8]) -> Option<(LogIndex, u64)> {
    let index = u64::from_be_bytes(data.get(0..8)?.try_into().ok()?);
    let digest = u64::from_be_bytes(data.get(8..16)?.try_into().ok()?);
    Some((LogIndex(index), digest))
}

/// The global safety checker. Every method returns the violated property on failure.
#[derive(Default)]
pub struct Checker {
    /// Election Safety: the leader of each term.
    leaders: HashMap<Term, NodeId>,
    /// Log Matching: every (index, term) ever written, with the term before it and the payload.
    written: HashMap<(LogIndex, Term), (Term, EntryPayload)>,
    /// The committed log: the term of each committed index (index 1 at position 0).
    committed: Vec<Term>,
    /// For each committed index, a term at or after the one in which it was committed: the
    /// term of the node that first reported it, lowered to keep the list non-decreasing
    /// (an index is committed no later than any index after it).
    commit_terms: Vec<Term>,
    /// The state machine digest after applying each committed index, as far as computed.
    digests: Vec<u64>,
    /// The configuration of the latest configuration entry in the committed log (the
    /// initial one before any).
    committed_config: Membership,
    /// Every configuration a log entry ever defined, and the initial one.
    configs_written: BTreeSet<Vec<u8>>,
    /// How the state machine's digest follows the log.
    digest: DigestFn,
}

/// The digest function of the state machine under test.
#[derive(Clone, Copy)]
struct DigestFn(fn(u64, &Entry) -> u64);

impl Default for DigestFn {
    fn default() -> Self {
        DigestFn(digest_step)
    }
}

impl Checker {
    /// A checker for a cluster that starts with configuration `initial`.
    pub fn new(initial: &Membership) -> Checker {
        let mut checker = Checker {
            committed_config: initial.clone(),
            ..Checker::default()
        };
        checker.configs_written.insert(config_key(initial));
        checker
    }

    /// Checks snapshots against a state machine whose digest follows the log with `digest`
    /// instead of [`digest_step`].
    pub fn with_digest(mut self, digest: fn(u64, &Entry) -> u64) -> Checker {
        self.digest = DigestFn(digest);
        self
    }

    /// The highest index known committed.
    pub fn committed_index(&self) -> LogIndex {
        LogIndex(self.committed.len() as u64)
    }

    /// The term of committed index `index`, if it is known committed.
    pub fn committed_term(&self, index: LogIndex) -> Option<Term> {
        index
            .0
            .checked_sub(1)
            .and_then(|i| self.committed.get(i as usize).copied())
    }

    /// Log Matching: the same index and term always mean the same entry after the same prefix.
    pub fn entry_written(
        &mut self,
        node: NodeId,
        entry: &Entry,
        prev_term: Term,
    ) -> Result<(), String> {
        match self.written.get(&(entry.index, entry.term)) {
            Some((p, payload)) => {
                if *p != prev_term || *payload != entry.payload {
                    return Err(format!(
                        "Log Matching: {node} wrote {}@{} after term {prev_term} with {:?}, \
                         but it was written before after term {p} with {payload:?}",
                        entry.index, entry.term, entry.payload
                    ));
                }
            }
            None => {
                if let EntryPayload::Membership(m) = &entry.payload {
                    self.configs_written.insert(config_key(m));
                }
                self.written.insert(
                    (entry.index, entry.term),
                    (prev_term, entry.payload.clone()),
                );
            }
        }
        Ok(())
    }

    /// Election Safety: at most one leader per term.
    pub fn leader_seen(&mut self, node: NodeId, term: Term) -> Result<(), String> {
        let first = *self.leaders.entry(term).or_insert(node);
        if first != node {
            return Err(format!(
                "Election Safety: {first} and {node} both led term {term}"
            ));
        }
        Ok(())
    }

    /// Records a node's commit index and checks it agrees with everything committed before.
    pub fn commit_seen(
        &mut self,
        node: NodeId,
        node_term: Term,
        commit: LogIndex,
        term_at: impl Fn(LogIndex) -> Option<Term>,
    ) -> Result<(), String> {
        self.commit_seen_above(node, node_term, commit, LogIndex(0), term_at)
    }

    /// [`commit_seen`](Self::commit_seen) for a node whose log is compacted up to `floor`
    /// (a snapshot covers it): indexes below it are not checked, nor learned from it.
    fn commit_seen_above(
        &mut self,
        node: NodeId,
        node_term: Term,
        commit: LogIndex,
        floor: LogIndex,
        term_at: impl Fn(LogIndex) -> Option<Term>,
    ) -> Result<(), String> {
        let known = self.committed_index();
        // Below the floor the node's log is compacted: the terms there come from the chain of
        // entries written before the floor's (each written entry names its predecessor's term).
        let chain = if known < floor {
            match term_at(floor).and_then(|t| self.chain_back(floor, t, known)) {
                Some(chain) => chain,
                None => return Ok(()), // not learnable from this node yet
            }
        } else {
            Vec::new()
        };
        let term_at = |i: LogIndex| match i.0.checked_sub(known.0 + 1) {
            Some(k) if i <= floor && !chain.is_empty() => chain.get(k as usize).copied(),
            _ => term_at(i),
        };
        if commit > known {
            let mut k = self.commit_terms.len();
            while k > 0 && self.commit_terms[k - 1] > node_term {
                self.commit_terms[k - 1] = node_term;
                k -= 1;
            }
        }
        for i in known.0 + 1..=commit.0 {
            let t = term_at(LogIndex(i))
                .ok_or_else(|| format!("{node} committed {i} but has no entry there"))?;
            self.committed.push(t);
            self.commit_terms.push(node_term);
            if let Some((_, EntryPayload::Membership(m))) = self.written.get(&(LogIndex(i), t)) {
                self.committed_config = m.clone();
            }
        }
        let check = commit.min(known);
        if check > LogIndex(0) && check >= floor {
            let expected = self
                .committed_term(check)
                .expect("within the committed log");
            if term_at(check) != Some(expected) {
                return Err(format!(
                    "State Machine Safety: {node} committed {check} with term {:?}, \
                     but term {expected} was committed there",
                    term_at(check)
                ));
            }
        }
        Ok(())
    }

    /// The terms of indexes `after + 1..=index`, walking back from entry (`index`, `term`)
    /// through the terms each written entry names for its predecessor.
    fn chain_back(&self, index: LogIndex, term: Term, after: LogIndex) -> Option<Vec<Term>> {
        let mut terms = vec![term];
        let (mut i, mut t) = (index, term);
        while i.0 > after.0 + 1 {
            let (prev, _) = self.written.get(&(i, t))?;
            t = *prev;
            i = i.prev();
            terms.push(t);
        }
        terms.reverse();
        Some(terms)
    }

    /// Leader Completeness (§5.4): an entry committed in term T is in the log of every
    /// leader of a term after T. A stale leader of an older term may lack entries that a newer
    /// leader committed, even entries of older terms, so the check uses the term in which each
    /// entry was committed (an upper bound of it), not the entry's own term.
    pub fn leader_complete(
        &self,
        node: NodeId,
        term: Term,
        first_index: LogIndex,
        term_at: impl Fn(LogIndex) -> Option<Term>,
    ) -> Result<(), String> {
        let upto = self.commit_terms.partition_point(|&t| t <= term);
        if upto == 0 {
            return Ok(());
        }
        let index = LogIndex(upto as u64);
        let expected = self.committed[upto - 1];
        if index < first_index {
            // Compacted into a snapshot, whose state was checked when it was taken.
            return Ok(());
        }
        if term_at(index) != Some(expected) {
            return Err(format!(
                "Leader Completeness: {node}, leader of {term}, has {:?} at committed index {index} (committed term {expected})",
                term_at(index)
            ));
        }
        Ok(())
    }

    /// The digest of a digest state machine ([`digest_step`]) that applied the committed log up to `index`.
    pub fn digest_at(&mut self, index: LogIndex) -> Result<u64, String> {
        while (self.digests.len() as u64) < index.0 {
            let i = LogIndex(self.digests.len() as u64 + 1);
            let term = self
                .committed_term(i)
                .ok_or_else(|| format!("a snapshot covers {i}, which is not committed"))?;
            let (_, payload) = self
                .written
                .get(&(i, term))
                .ok_or_else(|| format!("committed entry {i}@{term} was never written"))?;
            let entry = Entry {
                term,
                index: i,
                payload: payload.clone(),
            };
            let prev = self.digests.last().copied().unwrap_or(0);
            self.digests.push((self.digest.0)(prev, &entry));
        }
        Ok(match index.0 {
            0 => 0,
            i => self.digests[i as usize - 1],
        })
    }

    /// State Machine Safety for snapshots: a snapshot taken or restored at `index` holds the
    /// state of exactly the committed log up to `index`.
    pub fn snapshot_seen(
        &mut self,
        node: NodeId,
        what: &str,
        meta: &SnapshotMeta,
        data: &[u8],
    ) -> Result<(LogIndex, u64), String> {
        let (index, digest) = parse_snapshot(data)
            .ok_or_else(|| format!("{node} {what} an unreadable snapshot {meta:?}"))?;
        if index != meta.last_index || self.committed_term(index) != Some(meta.last_term) {
            return Err(format!(
                "State Machine Safety: {node} {what} a snapshot of {index} labelled {}@{}, but the committed term there is {:?}",
                meta.last_index,
                meta.last_term,
                self.committed_term(meta.last_index)
            ));
        }
        if digest != self.digest_at(index)? {
            return Err(format!(
                "State Machine Safety: {node} {what} a snapshot at {index} whose state differs from the committed log's"
            ));
        }
        Ok((index, digest))
    }

    /// State Machine Safety for snapshots of a state machine that records only its digest: a
    /// snapshot taken, received or restored at `meta` holds the state of exactly the
    /// committed log up to its index.
    pub fn snapshot_digest_seen(
        &mut self,
        node: NodeId,
        what: &str,
        meta: &SnapshotMeta,
        digest: u64,
    ) -> Result<(), String> {
        let index = meta.last_index;
        if self.committed_term(index) != Some(meta.last_term) {
            return Err(format!(
                "State Machine Safety: {node} {what} a snapshot labelled {index}@{}, but the committed term there is {:?}",
                meta.last_term,
                self.committed_term(index)
            ));
        }
        if digest != self.digest_at(index)? {
            return Err(format!(
                "State Machine Safety: {node} {what} a snapshot at {index} whose state differs from the committed log's"
            ));
        }
        Ok(())
    }

    /// State Machine Safety: nodes apply the same entries in the same order, exactly once.
    pub fn applied(&self, node: NodeId, previous: LogIndex, entry: &Entry) -> Result<(), String> {
        if entry.index != previous.next() {
            return Err(format!(
                "State Machine Safety: {node} applied {} right after {previous}",
                entry.index
            ));
        }
        match self.committed_term(entry.index) {
            Some(t) if t == entry.term => {}
            other => {
                return Err(format!(
                    "State Machine Safety: {node} applied {}@{} but the committed term there is {other:?}",
                    entry.index, entry.term
                ))
            }
        }
        match self.written.get(&(entry.index, entry.term)) {
            Some((_, payload)) if *payload == entry.payload => Ok(()),
            _ => Err(format!(
                "State Machine Safety: {node} applied {}@{} with a payload never written there",
                entry.index, entry.term
            )),
        }
    }

    /// State Machine Safety, seen from a state machine that is not told terms: the command
    /// `node` applies at `index` is the committed entry's command there.
    pub fn applied_command(
        &self,
        node: NodeId,
        index: LogIndex,
        command: &Bytes,
    ) -> Result<(), String> {
        let term = self.committed_term(index).ok_or_else(|| {
            format!("State Machine Safety: {node} applied {index}, which is not committed")
        })?;
        match self.written.get(&(index, term)) {
            Some((_, EntryPayload::Normal(c))) if c == command => Ok(()),
            other => Err(format!(
                "State Machine Safety: {node} applied {command:?} at {index}, but {index}@{term} holds {:?}",
                other.map(|(_, p)| p)
            )),
        }
    }

    /// The configuration of the newest committed configuration entry.
    pub fn committed_config(&self) -> &Membership {
        &self.committed_config
    }

    /// How many terms had a leader.
    pub fn leader_terms(&self) -> usize {
        self.leaders.len()
    }

    /// The payload written at `index` in `term`, if any node ever wrote it.
    pub fn payload(&self, index: LogIndex, term: Term) -> Option<&EntryPayload> {
        self.written.get(&(index, term)).map(|(_, p)| p)
    }

    /// The checks on one node's state, after any step: Election Safety, the commit index
    /// agrees with the committed log, Leader Completeness, only voters campaign, and the
    /// configuration in force is one that some entry (or the start) defined.
    pub fn check_node(&mut self, node: &NodeView<'_>) -> Result<(), String> {
        let id = node.id;
        if node.role == Role::Leader {
            self.leader_seen(id, node.term)?;
        }
        let floor = node.first_index.prev();
        self.commit_seen_above(id, node.term, node.commit, floor, node.term_at)?;
        if node.role == Role::Leader {
            self.leader_complete(id, node.term, node.first_index, node.term_at)?;
        }
        if matches!(node.role, Role::PreCandidate | Role::Candidate)
            && !node.membership.is_voter(id)
        {
            return Err(format!(
                "{id} campaigns but is not a voter of its configuration {:?}",
                node.membership
            ));
        }
        self.check_config(node)
    }

    /// The configuration in force is the one the entry of its own log it names defines; when
    /// that entry is compacted or not known, one that some entry defines, or the initial one.
    fn check_config(&self, node: &NodeView<'_>) -> Result<(), String> {
        let (id, membership, at) = (node.id, node.membership, node.membership_index);
        if at == LogIndex(0) || at < node.first_index {
            let known = membership.is_empty()
                || membership == node.initial
                || self.configs_written.contains(&config_key(membership));
            if !known {
                return Err(format!(
                    "{id} uses a configuration no entry defines: {membership:?}"
                ));
            }
            return Ok(());
        }
        let Some(term) = (node.term_at)(at) else {
            return Err(format!(
                "{id} uses {membership:?} from index {at}, which its log does not hold"
            ));
        };
        // A leader's own configuration entry is in force as soon as it appends it, before a
        // Ready hands it out; it is checked from the first step after that.
        let Some(defined) = self.payload(at, term) else {
            return Ok(());
        };
        if *defined != EntryPayload::Membership(membership.clone()) {
            return Err(format!(
                "{id} uses {membership:?} from index {at}, where its log holds {defined:?}"
            ));
        }
        Ok(())
    }

    /// Durability: no committed entry is lost to crashes. The last committed entry is durable
    /// on enough nodes (`holds` says which) that every quorum of the committed configuration
    /// includes one of them. (Not "a majority holds it": a leader may commit with a majority
    /// of a configuration one voter away, which for an even-sized committed configuration can
    /// be exactly half of it.)
    pub fn check_durability(
        &self,
        ids: &[NodeId],
        holds: impl Fn(NodeId, LogIndex, Term) -> bool,
    ) -> Result<(), String> {
        let index = self.committed_index();
        let Some(term) = self.committed_term(index) else {
            return Ok(());
        };
        let config = &self.committed_config;
        if quorum::is_quorum(config, |id| !holds(id, index, term)) {
            let holders: Vec<NodeId> = ids
                .iter()
                .copied()
                .filter(|&id| holds(id, index, term))
                .collect();
            return Err(format!(
                "durability: committed entry {index}@{term} is durable only on {holders:?}; the others are a quorum of {config:?}"
            ));
        }
        Ok(())
    }
}

impl Checker {
    /// [`check_node`](Self::check_node) for a `RawNode` the caller holds (the RawNode
    /// simulator and the transcript harness), whose store was created with `initial`.
    pub fn check_raw_node<S: crate::Storage>(
        &mut self,
        raw: &crate::RawNode<S>,
        initial: &Membership,
    ) -> Result<(), String> {
        let term_at = |i| raw.term_at(i);
        self.check_node(&NodeView {
            id: raw.id(),
            role: raw.role(),
            term: raw.term(),
            commit: raw.commit_index(),
            first_index: raw.first_index(),
            membership: raw.membership(),
            membership_index: raw.membership_index(),
            initial,
            term_at: &term_at,
        })
    }
}

/// What the checker needs to see of one live node.
pub struct NodeView<'a> {
    /// The node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// Its commit index.
    pub commit: LogIndex,
    /// The first index its log holds.
    pub first_index: LogIndex,
    /// The configuration in force on it.
    pub membership: &'a Membership,
    /// The index of the entry that defined it (0: not from a log entry, or not known).
    pub membership_index: LogIndex,
    /// The configuration its store was created with.
    pub initial: &'a Membership,
    /// The term of each index of its log (written, durable or not).
    pub term_at: &'a dyn Fn(LogIndex) -> Option<Term>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index: LogIndex(index),
            term: Term(term),
            payload: EntryPayload::Normal(Bytes::from(vec![index as u8])),
        }
    }

    fn view<'a>(
        initial: &'a Membership,
        first: u64,
        commit: u64,
        term_at: &'a dyn Fn(LogIndex) -> Option<Term>,
    ) -> NodeView<'a> {
        NodeView {
            id: NodeId(1),
            role: Role::Follower,
            term: Term(2),
            commit: LogIndex(commit),
            first_index: LogIndex(first),
            membership: initial,
            membership_index: LogIndex(0),
            initial,
            term_at,
        }
    }

    /// A node whose log is compacted past everything the checker knows committed still
    /// teaches it the committed terms, from the chain of written entries; a node that shows
    /// another term at a committed index is then caught.
    #[test]
    fn commits_are_learned_through_a_compacted_log_and_checked_after() {
        let initial = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        let mut c = Checker::new(&initial);
        for (i, t) in [(1, 1), (2, 1), (3, 2), (4, 2)] {
            let prev = if i == 1 {
                0
            } else if i <= 3 {
                1
            } else {
                2
            };
            c.entry_written(NodeId(2), &entry(i, t), Term(prev))
                .unwrap();
        }
        // Compacted up to 3 (its term is kept), entry 4 in the log, commit 4.
        let compacted = |i: LogIndex| match i.0 {
            3 | 4 => Some(Term(2)),
            _ => None,
        };
        c.check_node(&view(&initial, 4, 4, &compacted)).unwrap();
        assert_eq!(c.committed_index(), LogIndex(4));
        assert_eq!(c.committed_term(LogIndex(1)), Some(Term(1)));
        assert_eq!(c.committed_term(LogIndex(3)), Some(Term(2)));
        let other = |i: LogIndex| (i.0 <= 4).then_some(Term(1));
        let err = c.check_node(&view(&initial, 1, 4, &other)).unwrap_err();
        assert!(err.starts_with("State Machine Safety"), "{err}");
    }

    /// Without a written chain down to what is known, nothing is learned and nothing fails.
    #[test]
    fn a_compacted_log_with_no_written_chain_teaches_nothing() {
        let initial = Membership::with_voters([NodeId(1)]);
        let mut c = Checker::new(&initial);
        let compacted = |i: LogIndex| (i.0 == 9 || i.0 == 10).then_some(Term(3));
        c.check_node(&view(&initial, 10, 10, &compacted)).unwrap();
        assert_eq!(c.committed_index(), LogIndex(0));
    }
}
