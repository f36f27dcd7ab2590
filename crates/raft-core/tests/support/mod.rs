//! Shared test support: a small cluster of [`RawNode`]s driven one command at a time.
//!
//! [`Harness`] is the engine behind the transcript tests (`tests/transcripts.rs`, scripts in
//! `tests/testdata/*.txt`) and many scenario tests (`tests/scenarios.rs`). Unlike the
//! simulator in `raft_core::testing::sim`, nothing happens on its own: the test decides which
//! node ticks, which Ready is taken, when it becomes durable, and which message is delivered,
//! dropped, duplicated or reordered. Every node's durable state is a [`MemStorage`] that only
//! [`Harness::persist`] writes, so a crash loses exactly what was not persisted.
//!
//! After every step the harness checks Raft's safety properties across the cluster and
//! panics on a violation: at most one leader per term, the same index and term always hold
//! the same entry after the same prefix, a committed index never changes its entry, every
//! leader holds every committed entry of its term or before, a committed entry is durable on
//! a majority, and every state machine applies the committed entries in order, exactly once.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use raft_core::{
    Config, Error, MemStorage, PersistAck, ProgressState, RawNode, Ready, Role, Storage, StorageMut,
};
use raft_proto::{
    ConflictHint, Entry, EntryPayload, HardState, LogIndex, Membership, Message, MessageBody,
    NodeId, Term,
};

/// A Ready that was handed out and whose messages were sent, but that is not durable yet.
pub struct PendingWrite {
    /// Entries to append.
    pub entries: Vec<Entry>,
    /// Hard state to persist.
    pub hard_state: Option<HardState>,
    /// Messages to send once durable.
    pub persisted_messages: Vec<Message>,
    /// Entries to apply once durable.
    pub committed_entries: Vec<Entry>,
    ack: PersistAck,
}

/// One server: its Raft state while up, and what survives a crash.
pub struct Node {
    /// `None` while crashed.
    pub raw: Option<RawNode<MemStorage>>,
    /// The durable log and hard state.
    pub durable: MemStorage,
    /// Readies handed out and not yet durable, oldest first. A crash loses them.
    pub pending: VecDeque<PendingWrite>,
    /// The state machine: every entry applied, in order. It is durable (the application
    /// persists its applied index with its state), so a restart does not apply anything twice.
    pub applied: Vec<Entry>,
    /// How many times the node was restarted.
    pub incarnation: u64,
}

impl Node {
    fn applied_index(&self) -> LogIndex {
        LogIndex(self.applied.len() as u64)
    }
}

/// Selects messages of the network queue.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only messages from this node.
    pub from: Option<NodeId>,
    /// Only messages to this node.
    pub to: Option<NodeId>,
    /// Only messages of this kind (`MessageBody::kind`).
    pub kind: Option<String>,
    /// At most this many (the oldest first).
    pub count: Option<usize>,
}

impl Filter {
    /// Every message.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Messages to `to`.
    pub fn to(to: u64) -> Filter {
        Filter {
            to: Some(NodeId(to)),
            ..Filter::default()
        }
    }

    /// Messages from `from`.
    pub fn from(from: u64) -> Filter {
        Filter {
            from: Some(NodeId(from)),
            ..Filter::default()
        }
    }

    /// Whether `m` is selected.
    pub fn matches(&self, m: &Message) -> bool {
        self.from.is_none_or(|f| f == m.from)
            && self.to.is_none_or(|t| t == m.to)
            && self.kind.as_deref().is_none_or(|k| k == m.body.kind())
    }
}

/// The global safety checker; every method panics naming the violated property.
#[derive(Default)]
struct Checker {
    /// Election Safety: the leader of each term.
    leaders: HashMap<Term, NodeId>,
    /// Log Matching: every (index, term) ever handed out, with the term before it and the
    /// payload.
    written: HashMap<(LogIndex, Term), (Term, EntryPayload)>,
    /// The committed log: the term of each committed index (index 1 at position 0).
    committed: Vec<Term>,
}

impl Checker {
    fn committed_term(&self, index: LogIndex) -> Option<Term> {
        index
            .0
            .checked_sub(1)
            .and_then(|i| self.committed.get(i as usize).copied())
    }

    fn entry_written(&mut self, node: NodeId, entry: &Entry, prev_term: Term) {
        let known = self
            .written
            .entry((entry.index, entry.term))
            .or_insert_with(|| (prev_term, entry.payload.clone()));
        assert!(
            known.0 == prev_term && known.1 == entry.payload,
            "Log Matching: {node} wrote {}@{} after term {prev_term} with {:?}, but it was \
             written before after term {} with {:?}",
            entry.index,
            entry.term,
            entry.payload,
            known.0,
            known.1
        );
    }

    fn leader_seen(&mut self, node: NodeId, term: Term) {
        let first = *self.leaders.entry(term).or_insert(node);
        assert_eq!(
            first, node,
            "Election Safety: {first} and {node} both led term {term}"
        );
    }

    fn commit_seen(&mut self, node: NodeId, raw: &RawNode<MemStorage>) {
        let commit = raw.commit_index();
        let known = LogIndex(self.committed.len() as u64);
        for i in known.0 + 1..=commit.0 {
            let t = raw
                .term_at(LogIndex(i))
                .unwrap_or_else(|| panic!("{node} committed {i} but has no entry there"));
            self.committed.push(t);
        }
        let check = commit.min(known);
        if check > LogIndex(0) {
            let expected = self
                .committed_term(check)
                .expect("within the committed log");
            assert_eq!(
                raw.term_at(check),
                Some(expected),
                "State Machine Safety: {node} has {check} committed with another term"
            );
        }
    }

    fn leader_complete(&self, node: NodeId, raw: &RawNode<MemStorage>) {
        let upto = self.committed.partition_point(|&t| t <= raw.term());
        if upto == 0 {
            return;
        }
        let index = LogIndex(upto as u64);
        assert_eq!(
            raw.term_at(index),
            Some(self.committed[upto - 1]),
            "Leader Completeness: {node}, leader of {}, lacks committed entry {index}",
            raw.term()
        );
    }

    fn applied(&self, node: NodeId, previous: LogIndex, entry: &Entry) {
        assert_eq!(
            entry.index,
            previous.next(),
            "State Machine Safety: {node} applied {} right after {previous} (in order, once)",
            entry.index
        );
        assert_eq!(
            self.committed_term(entry.index),
            Some(entry.term),
            "State Machine Safety: {node} applied {}@{} but that is not the committed entry",
            entry.index,
            entry.term
        );
        let written = self.written.get(&(entry.index, entry.term));
        assert!(
            written.is_some_and(|(_, p)| *p == entry.payload),
            "State Machine Safety: {node} applied {}@{} with a payload never written there",
            entry.index,
            entry.term
        );
    }
}

/// A cluster of nodes driven step by step. See the module documentation.
pub struct Harness {
    /// The configuration every node starts from (`id` and `seed` are set per node).
    pub template: Config,
    /// The servers.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Messages in flight, oldest first.
    pub queue: VecDeque<Message>,
    /// Messages held back by the network, to be released (late) later.
    pub held: Vec<Message>,
    /// Directed links that lose every message.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// With `record`, every message ever sent, in order.
    pub sent: Vec<Message>,
    /// Whether to keep `sent`.
    pub record: bool,
    /// Without output, for the long randomized tests.
    pub quiet: bool,
    out: String,
    checker: Checker,
}

impl Harness {
    /// A cluster of voters `1..=n`, all followers at term 0 with empty logs.
    pub fn new(n: u64, template: Config) -> Harness {
        let membership = Membership::with_voters((1..=n).map(NodeId));
        let stores = (1..=n)
            .map(|_| MemStorage::new(membership.clone()))
            .collect();
        Harness::from_stores(template, stores)
    }

    /// A cluster whose node `i + 1` starts from `stores[i]` (a log and hard state built by
    /// the test; the stores name the membership).
    pub fn from_stores(template: Config, stores: Vec<MemStorage>) -> Harness {
        let mut h = Harness {
            template,
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            held: Vec::new(),
            blocked: BTreeSet::new(),
            sent: Vec::new(),
            record: false,
            quiet: false,
            out: String::new(),
            checker: Checker::default(),
        };
        for (i, durable) in stores.into_iter().enumerate() {
            let id = NodeId(i as u64 + 1);
            h.nodes.insert(
                id,
                Node {
                    raw: None,
                    durable,
                    pending: VecDeque::new(),
                    applied: Vec::new(),
                    incarnation: 0,
                },
            );
            h.start(id);
        }
        // Entries the stores start with count as written.
        for (&id, node) in &h.nodes {
            let mut prev_term = Term(0);
            for e in node.durable.all_entries() {
                h.checker.entry_written(id, &e, prev_term);
                prev_term = e.term;
            }
        }
        h
    }

    /// The default configuration of the tests: pre-vote and check-quorum on, an election
    /// timeout of 10 ticks and a heartbeat every tick.
    pub fn config() -> Config {
        Config::new(NodeId(1))
    }

    fn start(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let mut cfg = self.template.clone();
        cfg.id = id;
        cfg.seed = id.0 + 1000 * node.incarnation;
        cfg.applied = node.applied_index();
        node.raw = Some(RawNode::new(cfg, node.durable.clone()).expect("valid config"));
    }

    fn say(&mut self, line: impl FnOnce() -> String) {
        if !self.quiet {
            self.out.push_str(&line());
            self.out.push('\n');
        }
    }

    /// Takes the output printed so far.
    pub fn take_output(&mut self) -> String {
        std::mem::take(&mut self.out)
    }

    // ----- accessors ----------------------------------------------------------------------

    /// The ids of all nodes.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Whether node `id` is up.
    pub fn is_up(&self, id: u64) -> bool {
        self.nodes[&NodeId(id)].raw.is_some()
    }

    /// The Raft state of a node that is up.
    pub fn raw(&self, id: u64) -> &RawNode<MemStorage> {
        self.nodes[&NodeId(id)]
            .raw
            .as_ref()
            .unwrap_or_else(|| panic!("n{id} is down"))
    }

    fn raw_mut(&mut self, id: NodeId) -> &mut RawNode<MemStorage> {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.raw.as_mut())
            .unwrap_or_else(|| panic!("{id} is down"))
    }

    /// The node's state machine.
    pub fn applied(&self, id: u64) -> &[Entry] {
        &self.nodes[&NodeId(id)].applied
    }

    /// The node's durable storage.
    pub fn durable(&self, id: u64) -> &MemStorage {
        &self.nodes[&NodeId(id)].durable
    }

    /// The live leader of the highest term.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .filter_map(|n| n.raw.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id().0)
    }

    /// The highest index committed anywhere so far.
    pub fn committed_index(&self) -> LogIndex {
        LogIndex(self.checker.committed.len() as u64)
    }

    /// How many terms had a leader.
    pub fn leader_terms(&self) -> usize {
        self.checker.leaders.len()
    }

    // ----- inputs ---------------------------------------------------------------------------

    /// Ticks node `id` once.
    pub fn tick(&mut self, id: u64) {
        self.raw_mut(NodeId(id)).tick();
        self.check();
    }

    /// Makes node `id` campaign.
    pub fn campaign(&mut self, id: u64) {
        self.raw_mut(NodeId(id)).campaign();
        self.check();
    }

    /// Proposes `data` on node `id`.
    pub fn propose(&mut self, id: u64, data: impl Into<Bytes>) -> Result<LogIndex, Error> {
        let r = self.raw_mut(NodeId(id)).propose(data.into());
        self.check();
        r
    }

    /// Hands a message to its recipient directly (if it is up), bypassing the network.
    pub fn step(&mut self, m: Message) {
        if let Some(raw) = self.nodes.get_mut(&m.to).and_then(|n| n.raw.as_mut()) {
            raw.step(m);
        }
        self.check();
    }

    fn send(&mut self, m: Message) {
        if self.record {
            self.sent.push(m.clone());
        }
        self.queue.push_back(m);
    }

    // ----- Ready handling -------------------------------------------------------------------

    /// Takes node `id`'s Ready if it has one: sends its messages at once and keeps the rest
    /// pending until [`persist`](Self::persist). Returns whether there was one.
    pub fn ready(&mut self, id: u64) -> bool {
        self.ready_with_header(NodeId(id), "Ready (not yet persisted)")
    }

    fn ready_with_header(&mut self, id: NodeId, header: &str) -> bool {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(raw) = node.raw.as_mut() else {
            return false;
        };
        if !raw.has_ready() {
            return false;
        }
        let ready: Ready = raw.ready();
        // The Ready contract: a vote or an append acknowledgement promises that something is
        // durable, so it may only leave once the Ready is persisted (§5.2, Figure 2).
        for m in &ready.messages {
            assert!(
                !matches!(
                    m.body,
                    MessageBody::VoteResponse(_) | MessageBody::AppendResponse(_)
                ),
                "{id} handed out {} for sending before its Ready is durable",
                format_message(m)
            );
        }
        for (i, e) in ready.entries.iter().enumerate() {
            let prev_term = if i > 0 {
                ready.entries[i - 1].term
            } else {
                raw.term_at(e.index.prev())
                    .unwrap_or_else(|| panic!("{id} handed out {} without its prefix", e.index))
            };
            self.checker.entry_written(id, e, prev_term);
        }
        if !self.quiet {
            let text = format_ready(id, header, &ready);
            self.out.push_str(&text);
        }
        let ack = ready.persist_ack();
        let Ready {
            entries,
            hard_state,
            messages,
            persisted_messages,
            committed_entries,
            ..
        } = ready;
        self.nodes
            .get_mut(&id)
            .expect("known")
            .pending
            .push_back(PendingWrite {
                entries,
                hard_state,
                persisted_messages,
                committed_entries,
                ack,
            });
        for m in messages {
            self.send(m);
        }
        self.check();
        true
    }

    /// Makes node `id`'s oldest pending Ready durable: appends its entries and hard state to
    /// storage, acknowledges it, applies its committed entries and sends its persisted
    /// messages. Returns whether there was one.
    pub fn persist(&mut self, id: u64) -> bool {
        self.persist_one(NodeId(id), true)
    }

    fn persist_one(&mut self, id: NodeId, print: bool) -> bool {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(w) = node.pending.pop_front() else {
            return false;
        };
        node.durable.append(&w.entries).expect("append");
        if let Some(hs) = w.hard_state {
            node.durable.set_hard_state(hs).expect("hard state");
        }
        let raw = node.raw.as_mut().expect("a node with pending writes is up");
        raw.on_persisted(w.ack);
        let mut previous = node.applied_index();
        for e in &w.committed_entries {
            self.checker.applied(id, previous, e);
            previous = e.index;
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        node.applied.extend(w.committed_entries.iter().cloned());
        if let Some(last) = w.committed_entries.last() {
            node.raw.as_mut().expect("up").on_applied(last.index);
        }
        if print && !self.quiet {
            let mut s = format!("> {} persisted", id.0);
            match w.ack.last_entry {
                Some((i, t)) => write!(s, " entries up to {i}@{t}").unwrap(),
                None => s.push_str(" no entries"),
            }
            if let Some(hs) = w.hard_state {
                write!(s, ", {}", format_hard_state(&hs)).unwrap();
            }
            self.say(|| s);
            self.say_list("sends", w.persisted_messages.iter().map(format_message));
            self.say_list("applies", w.committed_entries.iter().map(format_entry));
        }
        for m in w.persisted_messages {
            self.send(m);
        }
        self.check();
        true
    }

    /// Takes node `id`'s Ready, makes it and every earlier pending Ready durable, applies and
    /// acknowledges them (the synchronous application loop). Returns whether it did anything.
    pub fn process_ready(&mut self, id: u64) -> bool {
        let id = NodeId(id);
        if self.nodes[&id].raw.is_none() {
            return false;
        }
        let took = self.ready_with_header(id, "handling Ready");
        let mut persisted = false;
        while self.persist_one(id, false) {
            persisted = true;
        }
        took || persisted
    }

    fn has_work(&self, id: NodeId) -> bool {
        let node = &self.nodes[&id];
        node.raw.as_ref().is_some_and(|r| r.has_ready()) || !node.pending.is_empty()
    }

    // ----- network --------------------------------------------------------------------------

    /// Delivers the queued messages `filter` selects, grouped by recipient (each recipient
    /// gets its messages in the order they were sent). Messages to a down node or over a
    /// blocked link are lost. Returns how many were taken from the queue.
    pub fn deliver(&mut self, filter: &Filter) -> usize {
        self.deliver_ordered(filter, false)
    }

    /// Like [`deliver`](Self::deliver); with `reverse`, each recipient gets its messages
    /// newest first.
    pub fn deliver_ordered(&mut self, filter: &Filter, reverse: bool) -> usize {
        let mut taken = self.take_queued(filter);
        if reverse {
            taken.reverse();
        }
        let count = taken.len();
        let mut by_to: BTreeMap<NodeId, Vec<Message>> = BTreeMap::new();
        for m in taken {
            by_to.entry(m.to).or_default().push(m);
        }
        for (to, msgs) in by_to {
            self.say(|| format!("> {} receiving messages", to.0));
            for m in msgs {
                let lost = if self.nodes.get(&m.to).is_none_or(|n| n.raw.is_none()) {
                    Some("recipient down")
                } else if self.blocked.contains(&(m.from, m.to)) {
                    Some("partitioned")
                } else {
                    None
                };
                match lost {
                    Some(why) => self.say(|| format!("  {} LOST ({why})", format_message(&m))),
                    None => {
                        self.say(|| format!("  {}", format_message(&m)));
                        self.step(m);
                    }
                }
            }
        }
        count
    }

    /// Delivers the `i`-th queued message alone (if its recipient is up and the link is not
    /// blocked; otherwise it is lost).
    pub fn deliver_one(&mut self, i: usize) {
        let Some(m) = self.queue.remove(i) else {
            return;
        };
        if self.is_up(m.to.0) && !self.blocked.contains(&(m.from, m.to)) {
            self.step(m);
        }
    }

    /// Removes the queued messages `filter` selects without delivering them.
    pub fn drop_messages(&mut self, filter: &Filter) -> usize {
        let taken = self.take_queued(filter);
        for m in &taken {
            self.say(|| format!("dropped {}", format_message(m)));
        }
        taken.len()
    }

    fn take_queued(&mut self, filter: &Filter) -> Vec<Message> {
        let mut budget = filter.count.unwrap_or(usize::MAX);
        let (taken, kept): (Vec<Message>, Vec<Message>) =
            std::mem::take(&mut self.queue).into_iter().partition(|m| {
                let take = budget > 0 && filter.matches(m);
                if take {
                    budget -= 1;
                }
                take
            });
        self.queue = kept.into();
        taken
    }

    /// Queues a second copy of every queued message `filter` selects, after all others.
    pub fn duplicate_messages(&mut self, filter: &Filter) -> usize {
        let copies: Vec<Message> = self
            .queue
            .iter()
            .filter(|m| filter.matches(m))
            .take(filter.count.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        for m in &copies {
            self.say(|| format!("duplicated {}", format_message(m)));
        }
        let n = copies.len();
        self.queue.extend(copies);
        n
    }

    /// Processes Readies and delivers messages on `ids` (every node when empty) until
    /// nothing changes.
    pub fn stabilize(&mut self, ids: &[u64]) {
        let ids: Vec<NodeId> = if ids.is_empty() {
            self.ids()
        } else {
            ids.iter().copied().map(NodeId).collect()
        };
        for _round in 0..10_000 {
            let mut busy = false;
            for &id in &ids {
                if self.has_work(id) {
                    self.process_ready(id.0);
                    busy = true;
                }
            }
            for &id in &ids {
                if self.queue.iter().any(|m| m.to == id) {
                    self.deliver(&Filter {
                        to: Some(id),
                        ..Filter::default()
                    });
                    busy = true;
                }
            }
            if !busy {
                return;
            }
        }
        panic!("stabilize did not converge in 10000 rounds");
    }

    /// Cuts every link between `group` and the other nodes, both ways.
    pub fn partition(&mut self, group: &[u64]) {
        let group: Vec<NodeId> = group.iter().copied().map(NodeId).collect();
        for a in &group {
            for b in self.ids() {
                if !group.contains(&b) {
                    self.blocked.insert((*a, b));
                    self.blocked.insert((b, *a));
                }
            }
        }
    }

    /// Cuts the link from `from` to `to` only.
    pub fn block(&mut self, from: u64, to: u64) {
        self.blocked.insert((NodeId(from), NodeId(to)));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    // ----- crashes --------------------------------------------------------------------------

    /// Crashes node `id`: its Raft state and every Ready not yet durable are lost. Its durable
    /// storage and state machine survive. Messages in flight to it are lost if they arrive
    /// while it is down.
    pub fn crash(&mut self, id: u64) {
        let id = NodeId(id);
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(node.raw.take().is_some(), "{id} is already down");
        let lost: Vec<PendingWrite> = node.pending.drain(..).collect();
        if !self.quiet {
            let mut s = format!("> {} crashed", id.0);
            let entries: Vec<String> = lost
                .iter()
                .flat_map(|w| w.entries.iter().map(format_entry_id))
                .collect();
            let hard: Vec<String> = lost
                .iter()
                .filter_map(|w| w.hard_state.as_ref().map(format_hard_state))
                .collect();
            if !entries.is_empty() {
                write!(s, "; lost unpersisted entries {}", entries.join(" ")).unwrap();
            }
            if !hard.is_empty() {
                write!(s, "; lost unpersisted {}", hard.join(", ")).unwrap();
            }
            self.say(|| s);
        }
        self.check();
    }

    /// Restarts a crashed node from its durable storage.
    pub fn restart(&mut self, id: u64) {
        let nid = NodeId(id);
        let node = self.nodes.get_mut(&nid).expect("known node");
        assert!(node.raw.is_none(), "{nid} is up");
        node.incarnation += 1;
        self.start(nid);
        let line = format!("> {id} restarted: {}", self.status_line(nid));
        self.say(|| line);
        self.check();
    }

    // ----- invariants -----------------------------------------------------------------------

    /// Checks every global safety property; panics on a violation.
    pub fn check(&mut self) {
        for (&id, node) in &self.nodes {
            let Some(raw) = node.raw.as_ref() else {
                continue;
            };
            if raw.role() == Role::Leader {
                self.checker.leader_seen(id, raw.term());
            }
            self.checker.commit_seen(id, raw);
            if raw.role() == Role::Leader {
                self.checker.leader_complete(id, raw);
            }
        }
        // No committed entry may be lost to crashes: a majority holds it durably.
        let index = self.committed_index();
        if let Some(term) = self.checker.committed_term(index) {
            let holders = self
                .nodes
                .values()
                .filter(|n| n.durable.term(index).ok() == Some(term))
                .count();
            assert!(
                holders > self.nodes.len() / 2,
                "durability: committed entry {index}@{term} is durable on {holders} of {} nodes",
                self.nodes.len()
            );
        }
    }

    // ----- printing -------------------------------------------------------------------------

    fn say_list(&mut self, title: &str, items: impl Iterator<Item = String>) {
        let items: Vec<String> = items.collect();
        if !items.is_empty() && !self.quiet {
            writeln!(self.out, "  {title}:").unwrap();
            for line in compact(items) {
                writeln!(self.out, "    {line}").unwrap();
            }
        }
    }

    /// One line describing node `id`.
    pub fn status_line(&self, id: NodeId) -> String {
        let node = &self.nodes[&id];
        match node.raw.as_ref() {
            None => {
                let hs = node.durable.hard_state();
                format!(
                    "down (durable: {}, last={})",
                    format_hard_state(&hs),
                    node.durable.last_index().expect("readable").0
                )
            }
            Some(raw) => {
                let st = raw.status();
                format!(
                    "{:?} term={} vote={} leader={} commit={} last={} persisted={} applied={}",
                    st.soft_state.role,
                    st.hard_state.term.0,
                    st.hard_state
                        .vote
                        .map_or("none".into(), |v| v.0.to_string()),
                    st.soft_state
                        .leader
                        .map_or("none".into(), |v| v.0.to_string()),
                    st.hard_state.commit.0,
                    st.last_index.0,
                    st.persisted_index.0,
                    st.applied_index.0
                )
            }
        }
    }

    fn print_log(&mut self, id: NodeId) {
        let node = &self.nodes[&id];
        let durable = node.durable.all_entries();
        let mut lines: Vec<String> = Vec::new();
        match node.raw.as_ref() {
            None => lines.extend(durable.iter().map(format_entry)),
            Some(raw) => {
                let last = raw.last_index().0;
                for i in 1..=last {
                    let t = raw.term_at(LogIndex(i)).expect("in the log");
                    match durable.get(i as usize - 1) {
                        Some(e) if e.term == t => lines.push(format_entry(e)),
                        _ => lines.push(format!("i{i}@{t} (not yet durable)")),
                    }
                }
                for e in durable.iter().skip(last as usize) {
                    lines.push(format!(
                        "{} (durable, truncated in memory)",
                        format_entry(e)
                    ));
                }
            }
        }
        self.say(|| format!("> {} log", id.0));
        if lines.is_empty() {
            self.say(|| "  (empty)".to_string());
        }
        for line in compact(lines) {
            self.say(|| format!("  {line}"));
        }
    }

    fn print_progress(&mut self, id: NodeId) {
        let raw = self.raw(id.0);
        let mut lines = Vec::new();
        for peer in self.ids() {
            if let Some(pr) = raw.progress(peer) {
                let mut s = format!(
                    "{}: {:?} match={} next={}",
                    peer.0, pr.state, pr.match_index.0, pr.next_index.0
                );
                if pr.state == ProgressState::Probe && pr.probe_sent {
                    s.push_str(" probe-sent");
                }
                if pr.state == ProgressState::Replicate {
                    let inflight: Vec<String> =
                        pr.inflight.iter().map(|i| i.0.to_string()).collect();
                    write!(s, " inflight=[{}]", inflight.join(" ")).unwrap();
                }
                lines.push(s);
            }
        }
        if lines.is_empty() {
            self.say(|| format!("> {} is not the leader", id.0));
        } else {
            self.say(|| format!("> {} progress", id.0));
            for l in lines {
                self.say(|| format!("  {l}"));
            }
        }
    }

    // ----- the command language -------------------------------------------------------------

    /// Runs one transcript command and returns what it printed (`ok` when nothing).
    /// Usage errors are `Err`. Node ids are plain numbers; `IDS` means any number of them,
    /// every node when none is given.
    ///
    /// - `add-nodes N [pre-vote=B] [check-quorum=B] [election-ticks=N] [heartbeat-ticks=N]
    ///   [inflight-max=N] [max-entries=N] [msg-bytes-max=N]`: voters 1..=N (once, first).
    /// - `campaign ID`; `propose ID DATA [count=K] [size=BYTES]` (K proposals `DATA1..DATAK`).
    /// - `tick IDS [count=N]`, `tick-heartbeat IDS`: tick the nodes together; print role or
    ///   term changes. `tick-election IDS`: tick them together until one changes role or term.
    /// - `run count=N`: N times, tick every node that is up and stabilize, quietly; print
    ///   role and term changes.
    /// - `ready ID`: take the Ready, send its `messages`, keep the rest pending.
    ///   `persist ID [all]`: complete the oldest pending write (or all): store, acknowledge,
    ///   apply, send the persisted messages. `process-ready IDS`: both, synchronously.
    /// - `deliver-msgs`, `drop-msgs`, `dup-msgs`, `hold-msgs` with `[from=ID] [to=ID]
    ///   [type=KIND] [count=N]` (and `order=reverse` to deliver newest first): act on the
    ///   queued messages selected. `release-msgs` requeues the held ones; `msgs` lists the
    ///   queue. `stabilize [IDS]`: process Readies and deliver until nothing changes.
    /// - `partition IDS` (cut them off from the rest, both ways), `block FROM TO`, `heal`.
    /// - `crash IDS` (lose the Raft state and every pending write), `restart IDS`.
    /// - `status [IDS]`, `log [IDS]`, `progress ID`, `applied [IDS]`.
    pub fn run_command(h: &mut Option<Harness>, line: &str) -> Result<String, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (&cmd, rest) = words.split_first().ok_or("empty command")?;
        let mut ids: Vec<u64> = Vec::new();
        let mut args: Vec<&str> = Vec::new();
        let mut opts: BTreeMap<&str, &str> = BTreeMap::new();
        for w in rest {
            if let Some((k, v)) = w.split_once('=') {
                opts.insert(k, v);
            } else if let Ok(n) = w.parse::<u64>() {
                ids.push(n);
            } else {
                args.push(w);
            }
        }
        if cmd == "propose" {
            // `propose ID DATA`: the data may look like a number.
            ids.truncate(1);
            args = rest
                .iter()
                .skip(1)
                .filter(|w| !w.contains('='))
                .copied()
                .collect();
        }
        if cmd == "add-nodes" {
            if h.is_some() {
                return Err("add-nodes may run once per transcript".into());
            }
            let n = *ids.first().ok_or("add-nodes needs a count")?;
            let cfg = parse_config(&opts)?;
            *h = Some(Harness::new(n, cfg));
            return Ok("ok".into());
        }
        let h = h.as_mut().ok_or("add-nodes first")?;
        let num = |k: &str| -> Result<Option<u64>, String> {
            opts.get(k)
                .map(|v| v.parse::<u64>().map_err(|e| format!("{k}={v}: {e}")))
                .transpose()
        };
        let all = h.ids().into_iter().map(|i| i.0).collect::<Vec<_>>();
        let targets = if ids.is_empty() { all } else { ids.clone() };
        let one = || -> Result<u64, String> {
            match ids.as_slice() {
                [id] => Ok(*id),
                _ => Err(format!("{cmd} needs exactly one node id")),
            }
        };
        for &id in &ids {
            if !h.nodes.contains_key(&NodeId(id)) {
                return Err(format!("no node {id}"));
            }
        }
        match cmd {
            "campaign" => h.campaign(one()?),
            "tick" | "tick-heartbeat" => {
                let count = match cmd {
                    "tick-heartbeat" => u64::from(h.template.heartbeat_ticks),
                    _ => num("count")?.unwrap_or(1),
                };
                let before: Vec<_> = targets.iter().map(|&i| state_of(h, i)).collect();
                for _ in 0..count {
                    for &id in &targets {
                        if h.is_up(id) {
                            h.tick(id);
                        }
                    }
                }
                h.say_changes(&targets, before, "> ");
            }
            "tick-election" => {
                // Tick the nodes together until one of them changes role or term.
                let before: Vec<_> = targets.iter().map(|&i| state_of(h, i)).collect();
                let rounds_max = 2 * h.template.election_ticks + 1;
                let mut rounds = 0;
                while rounds < rounds_max {
                    rounds += 1;
                    for &id in &targets {
                        if h.is_up(id) {
                            h.tick(id);
                        }
                    }
                    let now: Vec<_> = targets.iter().map(|&i| state_of(h, i)).collect();
                    if now != before {
                        break;
                    }
                }
                h.say(|| format!("> ticked {rounds} times"));
                h.say_changes(&targets, before, "> ");
            }
            "run" => {
                // Every tick: every node that is up ticks, then the cluster stabilizes,
                // quietly. Only role and term changes are printed.
                let count = num("count")?.ok_or("run needs count=N")?;
                let all = h.ids().into_iter().map(|i| i.0).collect::<Vec<_>>();
                for t in 1..=count {
                    let before: Vec<_> = all.iter().map(|&i| state_of(h, i)).collect();
                    for &id in &all {
                        if h.is_up(id) {
                            h.tick(id);
                        }
                    }
                    let quiet = std::mem::replace(&mut h.quiet, true);
                    h.stabilize(&[]);
                    h.quiet = quiet;
                    h.say_changes(&all, before, &format!("tick {t}: "));
                }
            }
            "propose" => {
                let id = *ids.first().ok_or("propose needs a node id")?;
                let data = args.first().ok_or("propose needs data")?.to_string();
                let count = num("count")?;
                let proposals: Vec<String> = match count {
                    None => vec![data],
                    Some(c) => (1..=c).map(|i| format!("{data}{i}")).collect(),
                };
                let size = num("size")?;
                for p in proposals {
                    let bytes: Bytes = match size {
                        Some(s) => {
                            let mut v = p.clone().into_bytes();
                            v.resize(s as usize, b'.');
                            v.into()
                        }
                        None => p.clone().into(),
                    };
                    match h.propose(id, bytes) {
                        Ok(i) => h.say(|| format!("> {id} proposed {p:?} at {i}")),
                        Err(e) => h.say(|| format!("> {id} refused {p:?}: {e}")),
                    }
                }
            }
            "ready" => {
                let id = one()?;
                if !h.ready(id) {
                    h.say(|| format!("> {id} has no Ready"));
                }
            }
            "persist" => {
                let id = one()?;
                let mut any = false;
                while h.persist(id) {
                    any = true;
                    if !args.contains(&"all") {
                        break;
                    }
                }
                if !any {
                    h.say(|| format!("> {id} has nothing to persist"));
                }
            }
            "process-ready" => {
                for id in targets {
                    h.process_ready(id);
                }
            }
            "stabilize" => h.stabilize(&ids),
            "release-msgs" => {
                let held = std::mem::take(&mut h.held);
                if held.is_empty() {
                    h.say(|| "no messages".to_string());
                }
                for m in held {
                    h.say(|| format!("released {}", format_message(&m)));
                    h.queue.push_back(m);
                }
            }
            "deliver-msgs" | "drop-msgs" | "dup-msgs" | "hold-msgs" => {
                let filter = Filter {
                    from: num("from")?.map(NodeId),
                    to: num("to")?.map(NodeId),
                    kind: opts.get("type").map(|s| s.to_string()),
                    count: num("count")?.map(|c| c as usize),
                };
                let reverse = match opts.get("order").copied() {
                    None | Some("sent") => false,
                    Some("reverse") => true,
                    Some(o) => return Err(format!("unknown order={o}")),
                };
                let n = match cmd {
                    "deliver-msgs" => h.deliver_ordered(&filter, reverse),
                    "drop-msgs" => h.drop_messages(&filter),
                    "hold-msgs" => {
                        let taken = h.take_queued(&filter);
                        for m in &taken {
                            h.say(|| format!("held {}", format_message(m)));
                        }
                        let n = taken.len();
                        h.held.extend(taken);
                        n
                    }
                    _ => h.duplicate_messages(&filter),
                };
                if n == 0 {
                    h.say(|| "no messages".to_string());
                }
            }
            "msgs" => {
                let lines: Vec<String> = h.queue.iter().map(format_message).collect();
                if lines.is_empty() {
                    h.say(|| "no messages".to_string());
                }
                for l in compact(lines) {
                    h.say(|| l);
                }
            }
            "partition" => {
                h.partition(&ids);
            }
            "block" => match ids.as_slice() {
                [from, to] => h.block(*from, *to),
                _ => return Err("block needs FROM TO".into()),
            },
            "heal" => h.heal(),
            "crash" => {
                for id in ids {
                    h.crash(id);
                }
            }
            "restart" => {
                for id in ids {
                    h.restart(id);
                }
            }
            "status" => {
                for id in targets {
                    let line = format!("{id}: {}", h.status_line(NodeId(id)));
                    h.say(|| line);
                }
            }
            "log" => {
                for id in targets {
                    h.print_log(NodeId(id));
                }
            }
            "progress" => h.print_progress(NodeId(one()?)),
            "applied" => {
                for id in targets {
                    let entries: Vec<String> = h.applied(id).iter().map(format_entry).collect();
                    h.say(|| format!("{id}: [{}]", entries.join(", ")));
                }
            }
            _ => return Err(format!("unknown command {cmd:?}")),
        }
        let out = h.take_output();
        Ok(if out.is_empty() {
            "ok".into()
        } else {
            out.trim_end().to_string()
        })
    }
}

impl Harness {
    fn say_changes(&mut self, ids: &[u64], before: Vec<Option<(Role, Term)>>, prefix: &str) {
        for (&id, old) in ids.iter().zip(before) {
            if state_of(self, id) != old {
                let line = format!("{prefix}{id} is now {}", self.status_line(NodeId(id)));
                self.say(|| line);
            }
        }
    }
}

fn state_of(h: &Harness, id: u64) -> Option<(Role, Term)> {
    h.nodes[&NodeId(id)]
        .raw
        .as_ref()
        .map(|r| (r.role(), r.term()))
}

fn parse_config(opts: &BTreeMap<&str, &str>) -> Result<Config, String> {
    let mut cfg = Harness::config();
    for (&k, &v) in opts {
        let int = || v.parse::<u64>().map_err(|e| format!("{k}={v}: {e}"));
        let flag = || v.parse::<bool>().map_err(|e| format!("{k}={v}: {e}"));
        match k {
            "pre-vote" => cfg.pre_vote = flag()?,
            "check-quorum" => cfg.check_quorum = flag()?,
            "election-ticks" => cfg.election_ticks = int()? as u32,
            "heartbeat-ticks" => cfg.heartbeat_ticks = int()? as u32,
            "inflight-max" => cfg.inflight_msgs_max = int()? as usize,
            "max-entries" => cfg.append_entries_max = int()? as usize,
            "msg-bytes-max" => cfg.msg_bytes_max = int()? as usize,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

// ----- formatting -------------------------------------------------------------------------

/// At most 8 lines: long lists keep their first 6 and last line.
fn compact(lines: Vec<String>) -> Vec<String> {
    if lines.len() <= 8 {
        return lines;
    }
    let n = lines.len();
    let mut out: Vec<String> = lines[..6].to_vec();
    out.push(format!("... ({} more)", n - 7));
    out.push(lines[n - 1].clone());
    out
}

/// `i3@t2`.
pub fn format_entry_id(e: &Entry) -> String {
    format!("{}@{}", e.index, e.term)
}

/// `i3@t2 "data"`, `i1@t1 noop`.
pub fn format_entry(e: &Entry) -> String {
    let payload = match &e.payload {
        EntryPayload::Noop => "noop".to_string(),
        EntryPayload::Normal(data) => {
            let text = String::from_utf8_lossy(data);
            if data.len() > 16 {
                format!(
                    "{:?} ({} bytes)",
                    text.chars().take(8).collect::<String>(),
                    data.len()
                )
            } else {
                format!("{text:?}")
            }
        }
        EntryPayload::Membership(m) => format!("membership {m:?}"),
    };
    format!("{} {payload}", format_entry_id(e))
}

fn format_entries(entries: &[Entry]) -> String {
    match entries {
        [] => "[]".into(),
        [a] => format!("[{}]", format_entry(a)),
        [a, b] => format!("[{}, {}]", format_entry(a), format_entry(b)),
        [a, .., z] => format!(
            "[{} .. {} ({} entries)]",
            format_entry(a),
            format_entry(z),
            entries.len()
        ),
    }
}

/// `term=2 vote=1 commit=5`.
pub fn format_hard_state(hs: &HardState) -> String {
    format!(
        "term={} vote={} commit={}",
        hs.term.0,
        hs.vote.map_or("none".into(), |v| v.0.to_string()),
        hs.commit.0
    )
}

fn format_hint(h: &Option<ConflictHint>) -> String {
    match h {
        None => " hint=none".to_string(),
        Some(ConflictHint {
            conflict_term: Some(t),
            conflict_index,
        }) => format!(" hint=(term {t} from {conflict_index})"),
        Some(ConflictHint {
            conflict_term: None,
            conflict_index,
        }) => format!(" hint=(log ends before {conflict_index})"),
    }
}

/// One message on one line: `1->2 t3 append prev=i4@t2 commit=4 [i5@t3 noop]`.
pub fn format_message(m: &Message) -> String {
    let body = match &m.body {
        MessageBody::PreVote(r) | MessageBody::Vote(r) => format!(
            "{} last={}@{}{}",
            m.body.kind(),
            r.last_log_index,
            r.last_log_term,
            if r.transfer { " transfer" } else { "" }
        ),
        MessageBody::PreVoteResponse(r) | MessageBody::VoteResponse(r) => format!(
            "{} {}",
            m.body.kind(),
            if r.granted { "granted" } else { "rejected" }
        ),
        MessageBody::Append(r) => format!(
            "append prev={}@{} commit={} {}",
            r.prev_log_index,
            r.prev_log_term,
            r.leader_commit.0,
            format_entries(&r.entries)
        ),
        MessageBody::AppendResponse(r) if r.success => {
            format!("append-resp ok match={}", r.index.0)
        }
        MessageBody::AppendResponse(r) => format!(
            "append-resp reject prev={}{}",
            r.index.0,
            format_hint(&r.hint)
        ),
        MessageBody::Heartbeat(r) => format!("heartbeat commit={}", r.leader_commit.0),
        MessageBody::HeartbeatResponse(_) => "heartbeat-resp".to_string(),
        other => format!("{other:?}"),
    };
    format!("{}->{} {} {body}", m.from.0, m.to.0, m.term)
}

fn format_ready(id: NodeId, header: &str, r: &Ready) -> String {
    let mut s = format!("> {} {header}\n", id.0);
    if let Some(soft) = &r.soft_state {
        let leader = soft.leader.map_or("none".into(), |l| l.0.to_string());
        writeln!(s, "  soft-state: {:?} leader={leader}", soft.role).unwrap();
    }
    if let Some(hs) = &r.hard_state {
        writeln!(s, "  hard-state: {}", format_hard_state(hs)).unwrap();
    }
    let mut list = |title: &str, items: Vec<String>| {
        if !items.is_empty() {
            writeln!(s, "  {title}:").unwrap();
            for line in compact(items) {
                writeln!(s, "    {line}").unwrap();
            }
        }
    };
    list("entries", r.entries.iter().map(format_entry).collect());
    list("messages", r.messages.iter().map(format_message).collect());
    list(
        "persisted-messages",
        r.persisted_messages.iter().map(format_message).collect(),
    );
    list(
        "committed",
        r.committed_entries.iter().map(format_entry).collect(),
    );
    s
}
