//! Shared test support: a small cluster of [`RawNode`]s driven one command at a time.
//!
//! [`Harness`] is the engine behind the transcript tests (`tests/transcripts.rs`, scripts in
//! `tests/testdata/*.txt`) and many scenario tests (`tests/scenarios.rs`). Unlike the
//! simulator in `raftline_core::testing::sim`, nothing happens on its own: the test decides which
//! node ticks, which Ready is taken, when it becomes durable, and which message is delivered,
//! dropped, duplicated or reordered. Every node's durable state is a [`MemStorage`] that only
//! [`Harness::persist`] writes, so a crash loses exactly what was not persisted.
//!
//! After every step the harness checks Raft's safety properties across the cluster with the
//! simulator's [`Checker`] and panics on a violation: at most one leader per term, the same
//! index and term always hold the same entry after the same prefix, a committed index never
//! changes its entry, every leader holds every committed entry of the terms before its own, a
//! committed entry is durable on enough nodes that every quorum holds it, every state machine
//! applies the committed entries in order, exactly once, snapshots hold the state of the
//! committed log, each node's configuration is one its log defines, and a read index is at
//! least what was committed when the read was asked.
//!
//! State machines are digests of what they applied
//! ([`digest_step`](raftline_core::testing::checker::digest_step)), so that their snapshots
//! ([`snapshot_data`]) can be checked against the committed log.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use raftline_core::testing::checker::{digest_step, snapshot_data, Checker};
use raftline_core::{
    Config, Error, MemStorage, MembershipChange, MembershipResult, PersistAck, ProgressState,
    RawNode, ReadState, Ready, Role, SnapshotChunk, SnapshotSend, SoftState, Storage, StorageMut,
};
use raftline_proto::{
    ConflictHint, Entry, EntryPayload, HardState, LogIndex, Membership, Message, MessageBody,
    NodeId, SnapshotMeta, Term,
};

/// A Ready that was handed out and whose messages were sent, but that is not durable yet.
pub struct PendingWrite {
    /// A received snapshot to install first.
    pub snapshot: Option<SnapshotMeta>,
    /// Received snapshot chunks to write.
    pub snapshot_chunks: Vec<SnapshotChunk>,
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
    /// The state machine: every entry applied after `restored`, in order. It is durable (the
    /// application persists its applied index with its state), so a restart does not apply
    /// anything twice.
    pub applied: Vec<Entry>,
    /// The snapshot the state machine was last restored from, if any: `applied` continues
    /// after it.
    pub restored: Option<(LogIndex, Term)>,
    /// The digest of the state machine ([`digest_step`]).
    digest: u64,
    /// The configuration in force at the applied index (what a snapshot records).
    applied_membership: Membership,
    /// The newest durable snapshot and its data.
    pub snapshot: Option<(SnapshotMeta, Bytes)>,
    /// A snapshot being received (lost in a crash).
    partial: Option<(SnapshotMeta, Vec<u8>)>,
    /// The configuration the node's store was created with.
    pub initial: Membership,
    /// How many times the node was restarted.
    pub incarnation: u64,
}

impl Node {
    /// A node that is down, with an empty state machine, whose store was created with
    /// `initial`.
    fn new(durable: MemStorage) -> Node {
        let initial = durable.initial_state().expect("readable").membership;
        Node {
            raw: None,
            durable,
            pending: VecDeque::new(),
            applied: Vec::new(),
            restored: None,
            digest: 0,
            applied_membership: initial.clone(),
            snapshot: None,
            partial: None,
            initial,
            incarnation: 0,
        }
    }

    /// The last index the state machine applied.
    pub fn applied_index(&self) -> LogIndex {
        match (self.applied.last(), self.restored) {
            (Some(e), _) => e.index,
            (None, Some((index, _))) => index,
            (None, None) => LogIndex(0),
        }
    }

    fn applied_term(&self) -> Term {
        match (self.applied.last(), self.restored) {
            (Some(e), _) => e.term,
            (None, Some((_, term))) => term,
            (None, None) => Term(0),
        }
    }

    /// Restores the state machine from snapshot `meta` (holding `index` and `digest`) and
    /// makes the log continue after it.
    fn restore(&mut self, meta: &SnapshotMeta, index: LogIndex, digest: u64) {
        self.applied.clear();
        self.restored = Some((index, meta.last_term));
        self.digest = digest;
        self.applied_membership = meta.membership.clone();
        self.durable
            .install_snapshot(meta.last_index, meta.last_term, &meta.membership)
            .expect("install the snapshot in the log");
    }

    /// Whether the node holds the committed entry `index`@`term` durably, in its log or
    /// covered by its snapshot.
    fn holds(&self, index: LogIndex, term: Term) -> bool {
        self.durable.term(index).ok() == Some(term)
            || self
                .snapshot
                .as_ref()
                .is_some_and(|(m, _)| m.last_index >= index)
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
    /// Read-index requests asked and not answered: who asked, and the index committed then.
    reads: HashMap<u64, (NodeId, LogIndex)>,
    /// The request id of the next configuration change.
    next_change: u64,
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
        let initial = stores
            .first()
            .map(|s| s.initial_state().expect("readable").membership)
            .unwrap_or_default();
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
            checker: Checker::new(&initial),
            reads: HashMap::new(),
            next_change: 1,
        };
        for (i, durable) in stores.into_iter().enumerate() {
            let id = NodeId(i as u64 + 1);
            h.nodes.insert(id, Node::new(durable));
            h.start(id);
        }
        // Entries the stores start with count as written.
        for (&id, node) in &h.nodes {
            let mut prev_term = Term(0);
            for e in node.durable.all_entries() {
                h.checker
                    .entry_written(id, &e, prev_term)
                    .unwrap_or_else(|v| panic!("{v}"));
                prev_term = e.term;
            }
        }
        h
    }

    /// Starts a new server with an empty store that knows no configuration (as a server
    /// started to join a running cluster); it is no member until a change adds it. Returns
    /// its id.
    pub fn add_node(&mut self) -> u64 {
        let id = self.nodes.keys().last().map_or(1, |n| n.0 + 1);
        let durable = MemStorage::new(Membership::default());
        self.nodes.insert(NodeId(id), Node::new(durable));
        self.start(NodeId(id));
        self.check();
        id
    }

    /// The default configuration of the tests: pre-vote and check-quorum on, an election
    /// timeout of 10 ticks and a heartbeat every tick.
    pub fn config() -> Config {
        Config::new(NodeId(1))
    }

    fn start(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.partial = None;
        if let Some((meta, data)) = node.snapshot.clone() {
            if meta.last_index > node.applied_index() {
                // A received snapshot was kept but not installed before the crash: the state
                // machine starts from it, and the log continues after it.
                let (index, digest) = self
                    .checker
                    .snapshot_seen(id, "restored", &meta, &data)
                    .unwrap_or_else(|v| panic!("{v}"));
                node.restore(&meta, index, digest);
            }
        }
        let mut cfg = self.template.clone();
        cfg.id = id;
        cfg.seed = id.0 + 1000 * node.incarnation;
        cfg.applied = node.applied_index();
        let mut raw = RawNode::new(cfg, node.durable.clone()).expect("valid config");
        if let Some((meta, _)) = &node.snapshot {
            raw.on_snapshot_stored(meta.clone());
        }
        node.raw = Some(raw);
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

    /// The entries the node's state machine applied (after the snapshot it was last restored
    /// from, if any).
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
        self.checker.committed_index()
    }

    /// How many terms had a leader.
    pub fn leader_terms(&self) -> usize {
        self.checker.leader_terms()
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

    /// Proposes a configuration change on node `id`; returns its request id if accepted.
    pub fn propose_membership(&mut self, id: u64, change: MembershipChange) -> Result<u64, Error> {
        let request_id = self.next_change;
        let r = self
            .raw_mut(NodeId(id))
            .propose_membership(request_id, change);
        if r.is_ok() {
            self.next_change += 1;
        }
        self.check();
        r.map(|()| request_id)
    }

    /// Asks node `id` for a read index under `request_id`.
    pub fn read_index(&mut self, id: u64, request_id: u64) {
        let committed = self.committed_index();
        self.reads.insert(request_id, (NodeId(id), committed));
        self.raw_mut(NodeId(id)).read_index(request_id);
        self.check();
    }

    /// Asks leader `id` to hand leadership to `to`.
    pub fn transfer_leadership(&mut self, id: u64, to: u64) -> Result<(), Error> {
        let r = self.raw_mut(NodeId(id)).transfer_leadership(NodeId(to));
        self.check();
        r
    }

    /// Node `id` snapshots its state machine at its applied index and compacts its durable
    /// log behind the snapshot, keeping up to `trailing` entries. Returns the snapshot taken,
    /// or `None` when its newest snapshot already covers the applied index.
    pub fn take_snapshot(&mut self, id: u64, trailing: u64) -> Option<SnapshotMeta> {
        let nid = NodeId(id);
        let node = &self.nodes[&nid];
        let index = node.applied_index();
        if index == LogIndex(0)
            || node
                .snapshot
                .as_ref()
                .is_some_and(|s| s.0.last_index >= index)
        {
            return None;
        }
        let data = snapshot_data(index, node.digest);
        let meta = SnapshotMeta {
            last_index: index,
            last_term: node.applied_term(),
            membership: node.applied_membership.clone(),
            size_bytes: data.len() as u64,
            checksum: crc32c::crc32c(&data),
        };
        self.checker
            .snapshot_seen(nid, "took", &meta, &data)
            .unwrap_or_else(|v| panic!("{v}"));
        let node = self.nodes.get_mut(&nid).expect("known node");
        node.snapshot = Some((meta.clone(), data));
        node.raw
            .as_mut()
            .expect("up")
            .on_snapshot_stored(meta.clone());
        let durable_last = node.durable.last_index().expect("readable");
        let up_to = LogIndex(index.0.saturating_sub(trailing)).min(durable_last);
        if up_to >= node.durable.first_index().expect("readable") {
            node.durable.compact(up_to).expect("compact");
        }
        self.check();
        Some(meta)
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
        self.check_ready(id, &ready);
        if !self.quiet {
            let text = format_ready(id, header, &ready);
            self.out.push_str(&text);
        }
        let ack = ready.persist_ack();
        let Ready {
            soft_state: _,
            hard_state,
            entries,
            messages,
            persisted_messages,
            committed_entries,
            read_states: _,
            snapshot,
            snapshot_chunks,
            snapshot_sends,
            membership_results: _,
        } = ready;
        let chunks = self.read_snapshot_chunks(id, snapshot_sends);
        self.nodes
            .get_mut(&id)
            .expect("known")
            .pending
            .push_back(PendingWrite {
                snapshot,
                snapshot_chunks,
                entries,
                hard_state,
                persisted_messages,
                committed_entries,
                ack,
            });
        for m in messages.into_iter().chain(chunks) {
            self.send(m);
        }
        self.check();
        true
    }

    /// The checks on a Ready as it is handed out: nothing that promises durability leaves
    /// before the Ready is durable, its entries are registered with the checker (Log
    /// Matching), and its read states answer reads asked of this node with an index at least
    /// what was committed when they were asked.
    fn check_ready(&mut self, id: NodeId, ready: &Ready) {
        let raw = self.nodes[&id].raw.as_ref().expect("up");
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
            self.checker
                .entry_written(id, e, prev_term)
                .unwrap_or_else(|v| panic!("{v}"));
        }
        for rs in &ready.read_states {
            let (asked, committed) = self
                .reads
                .remove(&rs.request_id)
                .unwrap_or_else(|| panic!("{id} answered read {} nobody asked", rs.request_id));
            assert_eq!(
                asked, id,
                "read {} asked of {asked} answered by {id}",
                rs.request_id
            );
            assert!(
                rs.index.is_none_or(|i| i >= committed),
                "linearizable read: {id} answered read {} with {:?}, but {committed} was \
                 committed when it was asked",
                rs.request_id,
                rs.index
            );
        }
    }

    /// The messages carrying the snapshot chunks a Ready asks to send, read from the node's
    /// newest snapshot (a chunk of a snapshot it no longer holds is skipped).
    fn read_snapshot_chunks(&self, id: NodeId, sends: Vec<SnapshotSend>) -> Vec<Message> {
        let node = &self.nodes[&id];
        sends
            .into_iter()
            .filter_map(|send| {
                let (meta, data) = node.snapshot.as_ref().filter(|s| s.0 == send.meta)?;
                debug_assert_eq!(data.len() as u64, meta.size_bytes);
                let at = send.offset as usize;
                let chunk = data.slice(at..at + send.len);
                Some(send.into_message(chunk))
            })
            .collect()
    }

    /// Makes node `id`'s oldest pending Ready durable: installs its snapshot, writes its
    /// snapshot chunks, appends its entries and hard state to storage, acknowledges it,
    /// applies its committed entries and sends its persisted messages. Returns whether there
    /// was one.
    pub fn persist(&mut self, id: u64) -> bool {
        self.persist_one(NodeId(id), true)
    }

    fn persist_one(&mut self, id: NodeId, print: bool) -> bool {
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(w) = node.pending.pop_front() else {
            return false;
        };
        let mut notes = Vec::new();
        if let Some(meta) = &w.snapshot {
            self.install_snapshot(id, meta);
            notes.push(format!("installed snapshot {}", format_meta(meta)));
        }
        for chunk in &w.snapshot_chunks {
            notes.extend(self.write_chunk(id, chunk));
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        node.durable.append(&w.entries).expect("append");
        if let Some(hs) = w.hard_state {
            node.durable.set_hard_state(hs).expect("hard state");
        }
        let raw = node.raw.as_mut().expect("a node with pending writes is up");
        raw.on_persisted(w.ack);
        self.apply(id, &w.committed_entries);
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
            for note in notes {
                self.say(|| format!("  {note}"));
            }
            self.say_list("sends", w.persisted_messages.iter().map(format_message));
            self.say_list("applies", w.committed_entries.iter().map(format_entry));
        }
        for m in w.persisted_messages {
            self.send(m);
        }
        self.check();
        true
    }

    /// Applies committed entries to node `id`'s state machine, skipping those that the
    /// snapshot it was restored from covers (handed out before the snapshot was installed).
    fn apply(&mut self, id: NodeId, entries: &[Entry]) {
        let node = self.nodes.get_mut(&id).expect("known node");
        for e in entries {
            if node.restored.is_some_and(|(index, _)| e.index <= index) {
                continue;
            }
            let previous = node.applied_index();
            self.checker
                .applied(id, previous, e)
                .unwrap_or_else(|v| panic!("{v}"));
            node.digest = digest_step(node.digest, e);
            if let EntryPayload::Membership(m) = &e.payload {
                node.applied_membership = m.clone();
            }
            node.applied.push(e.clone());
        }
        if let Some(last) = entries.last() {
            node.raw.as_mut().expect("up").on_applied(last.index);
        }
    }

    /// Restores node `id`'s state machine from its newest snapshot, which must be `meta`.
    fn install_snapshot(&mut self, id: NodeId, meta: &SnapshotMeta) {
        let node = &self.nodes[&id];
        let (stored, data) = node
            .snapshot
            .clone()
            .unwrap_or_else(|| panic!("{id} was told to install {meta:?} but holds no snapshot"));
        assert_eq!(
            stored, *meta,
            "{id} was told to install a snapshot that is not its newest"
        );
        let (index, digest) = self
            .checker
            .snapshot_seen(id, "restored", meta, &data)
            .unwrap_or_else(|v| panic!("{v}"));
        let node = self.nodes.get_mut(&id).expect("known node");
        node.restore(meta, index, digest);
    }

    /// Writes a received chunk into node `id`'s partial copy; after the last one, verifies
    /// the copy, keeps it if valid and reports it. Returns what it did, to print.
    fn write_chunk(&mut self, id: NodeId, chunk: &SnapshotChunk) -> Option<String> {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.partial.as_ref().is_none_or(|p| p.0 != chunk.meta) {
            node.partial = Some((chunk.meta.clone(), Vec::new()));
        }
        let (_, data) = node.partial.as_mut().expect("set above");
        let at = chunk.offset as usize;
        data.resize(at, 0);
        data.extend_from_slice(&chunk.data);
        if !chunk.last {
            return None;
        }
        let (meta, data) = node.partial.take().expect("set above");
        let valid = raftline_core::testing::data_matches(&meta, &data);
        let newer = node
            .snapshot
            .as_ref()
            .is_none_or(|s| s.0.last_index < meta.last_index);
        if valid && newer {
            node.snapshot = Some((meta.clone(), Bytes::from(data)));
        }
        node.raw
            .as_mut()
            .expect("up")
            .on_snapshot_received(&meta, valid);
        let verdict = if valid { "valid" } else { "corrupt" };
        Some(format!(
            "received snapshot {}: {verdict}",
            format_meta(&meta)
        ))
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
        node.partial = None;
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
        for node in self.nodes.values() {
            if let Some(raw) = node.raw.as_ref() {
                self.checker
                    .check_raw_node(raw, &node.initial)
                    .unwrap_or_else(|v| panic!("{v}"));
            }
        }
        // No committed entry may be lost to crashes: every quorum holds it durably.
        let nodes = &self.nodes;
        let holds = |id: NodeId, index: LogIndex, term: Term| {
            nodes.get(&id).is_some_and(|n| n.holds(index, term))
        };
        let ids = self.ids();
        self.checker
            .check_durability(&ids, holds)
            .unwrap_or_else(|v| panic!("{v}"));
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
        let durable: BTreeMap<LogIndex, Entry> = node
            .durable
            .all_entries()
            .into_iter()
            .map(|e| (e.index, e))
            .collect();
        let mut lines: Vec<String> = Vec::new();
        let durable_first = node.durable.first_index().expect("readable");
        let (first, last) = match node.raw.as_ref() {
            None => (durable_first, node.durable.last_index().expect("readable")),
            Some(raw) => (raw.first_index(), raw.last_index()),
        };
        if first > LogIndex(1) {
            let base = first.prev();
            let term = match node.raw.as_ref() {
                None => node.durable.term(base).ok(),
                Some(raw) => raw.term_at(base),
            };
            let term = term.map_or("?".into(), |t| t.to_string());
            lines.push(format!("(compacted up to {base}@{term})"));
        }
        for i in first.0..=last.0 {
            let i = LogIndex(i);
            let t = match node.raw.as_ref() {
                None => durable[&i].term,
                Some(raw) => raw.term_at(i).expect("in the log"),
            };
            match durable.get(&i) {
                Some(e) if e.term == t => lines.push(format_entry(e)),
                _ => lines.push(format!("{i}@{t} (not yet durable)")),
            }
        }
        for e in durable.range(last.next()..).map(|(_, e)| e) {
            lines.push(format!(
                "{} (durable, truncated in memory)",
                format_entry(e)
            ));
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
                if let Some(t) = &pr.snapshot {
                    let inflight: Vec<String> = t.inflight.iter().map(u64::to_string).collect();
                    write!(
                        s,
                        " snapshot={}@{} acked={} sent={} inflight=[{}]{}",
                        t.meta.last_index,
                        t.meta.last_term,
                        t.acked,
                        t.sent,
                        inflight.join(" "),
                        if t.probing { " probing" } else { "" }
                    )
                    .unwrap();
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
    ///   [inflight-max=N] [max-entries=N] [msg-bytes-max=N] [snapshot-chunk-bytes=N]
    ///   [snapshot-window=N] [catch-up-rounds=N]`: voters 1..=N (once, first).
    /// - `campaign ID`; `propose ID DATA [count=K] [size=BYTES]` (K proposals `DATA1..DATAK`).
    /// - `tick IDS [count=N]`, `tick-heartbeat IDS`: tick the nodes together; print role or
    ///   term changes. `tick-election IDS`: tick them together until one changes role or term.
    /// - `run count=N`: N times, tick every node that is up and stabilize, quietly; print
    ///   role and term changes.
    /// - `ready ID`: take the Ready, send its `messages` and snapshot chunks, keep the rest
    ///   pending. `persist ID [all]`: complete the oldest pending write (or all): install,
    ///   write chunks, store, acknowledge, apply, send the persisted messages.
    ///   `process-ready IDS`: both, synchronously.
    /// - `deliver-msgs`, `drop-msgs`, `dup-msgs`, `hold-msgs` with `[from=ID] [to=ID]
    ///   [type=KIND] [count=N]` (and `order=reverse` to deliver newest first): act on the
    ///   queued messages selected. `release-msgs` requeues the held ones; `msgs` lists the
    ///   queue. `stabilize [IDS]`: process Readies and deliver until nothing changes.
    /// - `partition IDS` (cut them off from the rest, both ways), `block FROM TO`, `heal`.
    /// - `crash IDS` (lose the Raft state, every pending write and any partly received
    ///   snapshot), `restart IDS`.
    /// - `snapshot ID [trailing=N]`: snapshot the state machine at its applied index and
    ///   compact the durable log behind it, keeping up to N entries (0 by default).
    /// - `add-node`: start a new, empty server that is no member yet. `add-learner ID NEW`,
    ///   `add-voter ID NEW`, `promote ID LEARNER`, `remove ID MEMBER`, `replace ID
    ///   voters=A,B,.. [learners=C,..]`: propose a configuration change on node ID (request
    ///   ids count from 1).
    /// - `read-index ID REQ`: ask node ID for a read index under request id REQ.
    ///   `transfer ID TO`: ask leader ID to hand leadership to TO.
    /// - `status [IDS]`, `log [IDS]`, `progress ID`, `applied [IDS]`, `membership [IDS]`.
    pub fn run_command(h: &mut Option<Harness>, line: &str) -> Result<String, String> {
        let c = Command::parse(line)?;
        if c.name == "add-nodes" {
            if h.is_some() {
                return Err("add-nodes may run once per transcript".into());
            }
            let n = *c.ids.first().ok_or("add-nodes needs a count")?;
            let cfg = parse_config(&c.opts)?;
            *h = Some(Harness::new(n, cfg));
            return Ok("ok".into());
        }
        let h = h.as_mut().ok_or("add-nodes first")?;
        for &id in &c.ids {
            if !h.nodes.contains_key(&NodeId(id)) {
                return Err(format!("no node {id}"));
            }
        }
        let known = h.run_clock_command(&c)?
            || h.run_io_command(&c)?
            || h.run_network_command(&c)?
            || h.run_cluster_command(&c)?
            || h.run_query_command(&c)?;
        if !known {
            return Err(format!("unknown command {:?}", c.name));
        }
        let out = h.take_output();
        Ok(if out.is_empty() {
            "ok".into()
        } else {
            out.trim_end().to_string()
        })
    }

    /// `campaign`, `tick`, `tick-heartbeat`, `tick-election`, `run`; false for others.
    fn run_clock_command(&mut self, c: &Command<'_>) -> Result<bool, String> {
        let targets = c.targets(self);
        match c.name {
            "campaign" => self.campaign(c.one()?),
            "tick" | "tick-heartbeat" => {
                let count = match c.name {
                    "tick-heartbeat" => u64::from(self.template.heartbeat_ticks),
                    _ => c.num("count")?.unwrap_or(1),
                };
                let before: Vec<_> = targets.iter().map(|&i| state_of(self, i)).collect();
                for _ in 0..count {
                    for &id in &targets {
                        if self.is_up(id) {
                            self.tick(id);
                        }
                    }
                }
                self.say_changes(&targets, before, "> ");
            }
            "tick-election" => self.tick_election(&targets),
            "run" => {
                let count = c.num("count")?.ok_or("run needs count=N")?;
                self.run_quietly(count);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Ticks `targets` together until one of them changes role or term.
    fn tick_election(&mut self, targets: &[u64]) {
        let before: Vec<_> = targets.iter().map(|&i| state_of(self, i)).collect();
        let rounds_max = 2 * self.template.election_ticks + 1;
        let mut rounds = 0;
        while rounds < rounds_max {
            rounds += 1;
            for &id in targets {
                if self.is_up(id) {
                    self.tick(id);
                }
            }
            let now: Vec<_> = targets.iter().map(|&i| state_of(self, i)).collect();
            if now != before {
                break;
            }
        }
        self.say(|| format!("> ticked {rounds} times"));
        self.say_changes(targets, before, "> ");
    }

    /// Every tick: every node that is up ticks, then the cluster stabilizes, quietly. Only
    /// role and term changes are printed.
    fn run_quietly(&mut self, count: u64) {
        let all = self.ids().into_iter().map(|i| i.0).collect::<Vec<_>>();
        for t in 1..=count {
            let before: Vec<_> = all.iter().map(|&i| state_of(self, i)).collect();
            for &id in &all {
                if self.is_up(id) {
                    self.tick(id);
                }
            }
            let quiet = std::mem::replace(&mut self.quiet, true);
            self.stabilize(&[]);
            self.quiet = quiet;
            self.say_changes(&all, before, &format!("tick {t}: "));
        }
    }

    /// `propose`, `ready`, `persist`, `process-ready`, `stabilize`, `snapshot`; false for
    /// others.
    fn run_io_command(&mut self, c: &Command<'_>) -> Result<bool, String> {
        match c.name {
            "propose" => self.propose_command(c)?,
            "ready" => {
                let id = c.one()?;
                if !self.ready(id) {
                    self.say(|| format!("> {id} has no Ready"));
                }
            }
            "persist" => {
                let id = c.one()?;
                let mut any = false;
                while self.persist(id) {
                    any = true;
                    if !c.args.contains(&"all") {
                        break;
                    }
                }
                if !any {
                    self.say(|| format!("> {id} has nothing to persist"));
                }
            }
            "process-ready" => {
                for id in c.targets(self) {
                    self.process_ready(id);
                }
            }
            "stabilize" => self.stabilize(&c.ids),
            "snapshot" => {
                let id = c.one()?;
                let trailing = c.num("trailing")?.unwrap_or(0);
                let line = match self.take_snapshot(id, trailing) {
                    None => format!("> {id} has nothing new to snapshot"),
                    Some(meta) => {
                        let first = self.durable(id).first_index().expect("readable");
                        format!(
                            "> {id} took snapshot {}; its log starts at {first}",
                            format_meta(&meta)
                        )
                    }
                };
                self.say(|| line);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn propose_command(&mut self, c: &Command<'_>) -> Result<(), String> {
        let id = *c.ids.first().ok_or("propose needs a node id")?;
        let data = c.args.first().ok_or("propose needs data")?.to_string();
        let proposals: Vec<String> = match c.num("count")? {
            None => vec![data],
            Some(k) => (1..=k).map(|i| format!("{data}{i}")).collect(),
        };
        let size = c.num("size")?;
        for p in proposals {
            let bytes: Bytes = match size {
                Some(s) => {
                    let mut v = p.clone().into_bytes();
                    v.resize(s as usize, b'.');
                    v.into()
                }
                None => p.clone().into(),
            };
            match self.propose(id, bytes) {
                Ok(i) => self.say(|| format!("> {id} proposed {p:?} at {i}")),
                Err(e) => self.say(|| format!("> {id} refused {p:?}: {e}")),
            }
        }
        Ok(())
    }

    /// The message and failure commands; false for others.
    fn run_network_command(&mut self, c: &Command<'_>) -> Result<bool, String> {
        match c.name {
            "release-msgs" => {
                let held = std::mem::take(&mut self.held);
                if held.is_empty() {
                    self.say(|| "no messages".to_string());
                }
                for m in held {
                    self.say(|| format!("released {}", format_message(&m)));
                    self.queue.push_back(m);
                }
            }
            "deliver-msgs" | "drop-msgs" | "dup-msgs" | "hold-msgs" => self.message_command(c)?,
            "msgs" => {
                let lines: Vec<String> = self.queue.iter().map(format_message).collect();
                if lines.is_empty() {
                    self.say(|| "no messages".to_string());
                }
                for l in compact(lines) {
                    self.say(|| l);
                }
            }
            "partition" => self.partition(&c.ids),
            "block" => match c.ids.as_slice() {
                [from, to] => self.block(*from, *to),
                _ => return Err("block needs FROM TO".into()),
            },
            "heal" => self.heal(),
            "crash" => {
                for &id in &c.ids {
                    self.crash(id);
                }
            }
            "restart" => {
                for &id in &c.ids {
                    self.restart(id);
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `deliver-msgs`, `drop-msgs`, `dup-msgs`, `hold-msgs`.
    fn message_command(&mut self, c: &Command<'_>) -> Result<(), String> {
        let filter = Filter {
            from: c.num("from")?.map(NodeId),
            to: c.num("to")?.map(NodeId),
            kind: c.opts.get("type").map(|s| s.to_string()),
            count: c.num("count")?.map(|n| n as usize),
        };
        let reverse = match c.opts.get("order").copied() {
            None | Some("sent") => false,
            Some("reverse") => true,
            Some(o) => return Err(format!("unknown order={o}")),
        };
        let n = match c.name {
            "deliver-msgs" => self.deliver_ordered(&filter, reverse),
            "drop-msgs" => self.drop_messages(&filter),
            "hold-msgs" => {
                let taken = self.take_queued(&filter);
                for m in &taken {
                    self.say(|| format!("held {}", format_message(m)));
                }
                let n = taken.len();
                self.held.extend(taken);
                n
            }
            _ => self.duplicate_messages(&filter),
        };
        if n == 0 {
            self.say(|| "no messages".to_string());
        }
        Ok(())
    }

    /// Membership changes, reads and leadership transfers; false for other commands.
    fn run_cluster_command(&mut self, c: &Command<'_>) -> Result<bool, String> {
        let change = match c.name {
            "add-node" => {
                let id = self.add_node();
                let line = format!("> {id} started, empty: {}", self.status_line(NodeId(id)));
                self.say(|| line);
                return Ok(true);
            }
            "read-index" => {
                let id = c.one()?;
                let req = c.args.first().and_then(|r| r.parse().ok());
                self.read_index(id, req.ok_or("read-index needs ID REQ")?);
                return Ok(true);
            }
            "transfer" => {
                let (id, to) = c.two()?;
                if let Err(e) = self.transfer_leadership(id, to) {
                    self.say(|| format!("> {id} refused the transfer to {to}: {e}"));
                }
                return Ok(true);
            }
            "add-learner" => MembershipChange::AddLearner(NodeId(c.two()?.1)),
            "add-voter" => MembershipChange::AddVoter(NodeId(c.two()?.1)),
            "promote" => MembershipChange::Promote(NodeId(c.two()?.1)),
            "remove" => MembershipChange::Remove(NodeId(c.two()?.1)),
            "replace" => MembershipChange::Replace {
                voters: c.id_set("voters")?,
                learners: c.id_set("learners")?,
            },
            _ => return Ok(false),
        };
        let id = *c.ids.first().ok_or("a change needs the leader's id")?;
        let what = format_change(&change);
        match self.propose_membership(id, change) {
            Ok(req) => self.say(|| format!("> {id} started change {req}: {what}")),
            Err(e) => self.say(|| format!("> {id} refused {what}: {e}")),
        }
        Ok(true)
    }

    /// `status`, `log`, `progress`, `applied`, `membership`; false for others.
    fn run_query_command(&mut self, c: &Command<'_>) -> Result<bool, String> {
        let targets = c.targets(self);
        match c.name {
            "status" => {
                for id in targets {
                    let line = format!("{id}: {}", self.status_line(NodeId(id)));
                    self.say(|| line);
                }
            }
            "log" => {
                for id in targets {
                    self.print_log(NodeId(id));
                }
            }
            "progress" => self.print_progress(NodeId(c.one()?)),
            "applied" => {
                for id in targets {
                    let node = &self.nodes[&NodeId(id)];
                    let restored = node.restored.map(|(i, t)| format!("snapshot {i}@{t}"));
                    let entries: Vec<String> = restored
                        .into_iter()
                        .chain(node.applied.iter().map(format_entry))
                        .collect();
                    self.say(|| format!("{id}: [{}]", entries.join(", ")));
                }
            }
            "membership" => {
                for id in targets {
                    let line = self.membership_line(NodeId(id));
                    self.say(|| format!("{id}: {line}"));
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The configuration node `id` uses, and where it comes from.
    fn membership_line(&self, id: NodeId) -> String {
        let Some(raw) = self.nodes[&id].raw.as_ref() else {
            return "down".into();
        };
        let mut s = format_membership(raw.membership());
        match raw.membership_index() {
            LogIndex(0) => s.push_str(" (initial or snapshot)"),
            i => write!(s, " (entry {i})").unwrap(),
        }
        if let Some(to) = raw.transfer_target() {
            write!(s, ", transferring to {}", to.0).unwrap();
        }
        if raw.is_removed() {
            s.push_str(", removed");
        }
        s
    }
}

/// One parsed transcript command: `NAME [IDS] [WORDS] [KEY=VALUE ...]`.
struct Command<'a> {
    name: &'a str,
    /// The numbers: node ids (for `propose` and `read-index`, only the first).
    ids: Vec<u64>,
    /// The other words.
    args: Vec<&'a str>,
    opts: BTreeMap<&'a str, &'a str>,
}

impl<'a> Command<'a> {
    fn parse(line: &'a str) -> Result<Command<'a>, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (&name, rest) = words.split_first().ok_or("empty command")?;
        // `propose ID DATA`, `read-index ID REQ`: what follows the id may look like a number.
        let one_id = matches!(name, "propose" | "read-index");
        let mut c = Command {
            name,
            ids: Vec::new(),
            args: Vec::new(),
            opts: BTreeMap::new(),
        };
        for &w in rest {
            if let Some((k, v)) = w.split_once('=') {
                c.opts.insert(k, v);
            } else if let (Ok(n), false) = (w.parse::<u64>(), one_id && !c.ids.is_empty()) {
                c.ids.push(n);
            } else {
                c.args.push(w);
            }
        }
        Ok(c)
    }

    /// The number of option `k`, if given.
    fn num(&self, k: &str) -> Result<Option<u64>, String> {
        self.opts
            .get(k)
            .map(|v| v.parse::<u64>().map_err(|e| format!("{k}={v}: {e}")))
            .transpose()
    }

    /// The node ids of option `k`, a comma-separated list (empty if not given).
    fn id_set(&self, k: &str) -> Result<BTreeSet<NodeId>, String> {
        let Some(list) = self.opts.get(k) else {
            return Ok(BTreeSet::new());
        };
        list.split(',')
            .map(|v| v.parse::<u64>().map(NodeId))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{k}={list}: {e}"))
    }

    fn one(&self) -> Result<u64, String> {
        match self.ids.as_slice() {
            [id] => Ok(*id),
            _ => Err(format!("{} needs exactly one node id", self.name)),
        }
    }

    fn two(&self) -> Result<(u64, u64), String> {
        match self.ids.as_slice() {
            [a, b] => Ok((*a, *b)),
            _ => Err(format!("{} needs two node ids", self.name)),
        }
    }

    /// The node ids given, or every node.
    fn targets(&self, h: &Harness) -> Vec<u64> {
        if self.ids.is_empty() {
            h.ids().into_iter().map(|i| i.0).collect()
        } else {
            self.ids.clone()
        }
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

/// `add learner 4`, `replace with voters=(1 2 4)`.
fn format_change(change: &MembershipChange) -> String {
    match change {
        MembershipChange::AddLearner(id) => format!("add learner {}", id.0),
        MembershipChange::AddVoter(id) => format!("add voter {}", id.0),
        MembershipChange::Promote(id) => format!("promote {}", id.0),
        MembershipChange::Remove(id) => format!("remove {}", id.0),
        MembershipChange::Replace { voters, learners } => {
            let m = Membership {
                voters: voters.clone(),
                learners: learners.clone(),
                ..Membership::default()
            };
            format!("replace with {}", format_membership(&m))
        }
    }
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
            "snapshot-chunk-bytes" => cfg.snapshot_chunk_bytes_max = int()? as usize,
            "snapshot-window" => cfg.snapshot_chunks_inflight_max = int()? as usize,
            "catch-up-rounds" => cfg.catch_up_rounds_max = int()? as u32,
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
        EntryPayload::Membership(m) => format!("membership {}", format_membership(m)),
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

/// `voters=(1 2 3) learners=(4)`, with `outgoing=(...)` while joint; `(none)` when empty.
pub fn format_membership(m: &Membership) -> String {
    if *m == Membership::default() {
        return "(none)".into();
    }
    let set = |ids: &BTreeSet<NodeId>| {
        let ids: Vec<String> = ids.iter().map(|i| i.0.to_string()).collect();
        format!("({})", ids.join(" "))
    };
    let mut s = format!("voters={}", set(&m.voters));
    if !m.learners.is_empty() {
        write!(s, " learners={}", set(&m.learners)).unwrap();
    }
    if m.is_joint() {
        write!(s, " outgoing={}", set(&m.voters_outgoing)).unwrap();
    }
    s
}

/// `i5@t1 (40 bytes)`: a snapshot's last entry and size.
pub fn format_meta(meta: &SnapshotMeta) -> String {
    format!(
        "{}@{} ({} bytes)",
        meta.last_index, meta.last_term, meta.size_bytes
    )
}

/// `bytes=0..16/40`: a chunk's range of its snapshot.
fn format_range(offset: u64, len: usize, meta: &SnapshotMeta) -> String {
    format!(
        "bytes={offset}..{}/{}",
        offset + len as u64,
        meta.size_bytes
    )
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
        MessageBody::Heartbeat(r) => {
            format!(
                "heartbeat commit={}{}",
                r.leader_commit.0,
                format_context(r.context)
            )
        }
        MessageBody::HeartbeatResponse(r) => format!("heartbeat-resp{}", format_context(r.context)),
        MessageBody::InstallSnapshot(r) => format!(
            "snapshot {}@{} {}{}",
            r.meta.last_index,
            r.meta.last_term,
            format_range(r.offset, r.data.len(), &r.meta),
            match (r.done, r.data.is_empty()) {
                (true, _) => " done",
                (false, true) => " probe",
                (false, false) => "",
            }
        ),
        MessageBody::InstallSnapshotResponse(r) => format!(
            "snapshot-resp i{} next={}{}{}",
            r.last_index.0,
            r.next_offset,
            if r.rejected { " rejected" } else { "" },
            if r.installed { " installed" } else { "" }
        ),
        MessageBody::TimeoutNow => "timeout-now".to_string(),
        MessageBody::ReadIndex(r) => format!("read-index req={}", r.request_id),
        MessageBody::ReadIndexResponse(r) => format!(
            "read-index-resp req={} index={}",
            r.request_id,
            r.read_index.map_or("none".into(), |i| i.0.to_string())
        ),
        MessageBody::Forward(r) => format!("forward req={} {}B", r.request_id, r.command.len()),
        MessageBody::ForwardResponse(r) => {
            format!("forward-resp req={} {:?}", r.request_id, r.outcome)
        }
    };
    format!("{}->{} {} {body}", m.from.0, m.to.0, m.term)
}

/// The read-index context of a heartbeat, when it carries one.
fn format_context(context: u64) -> String {
    match context {
        0 => String::new(),
        c => format!(" ctx={c}"),
    }
}

/// `req=3 index=5`, or `req=3 index=none` when the read must be retried.
fn format_read_state(rs: &ReadState) -> String {
    let index = rs.index.map_or("none".into(), |i| i.0.to_string());
    format!("req={} index={index}", rs.request_id)
}

/// `change 1 ok: voters=(1 2 3)` or `change 1 failed: why`.
fn format_membership_result(r: &MembershipResult) -> String {
    match &r.result {
        Ok(m) => format!("change {} ok: {}", r.request_id, format_membership(m)),
        Err(e) => format!("change {} failed: {e}", r.request_id),
    }
}

/// `1->2 i5@t1 bytes=0..16/40`, with `first` on the first chunk with data of a transfer (or
/// of its resumption) and `probe` on an empty one.
fn format_snapshot_send(send: &SnapshotSend) -> String {
    let tag = match (send.len, send.first) {
        (0, _) => " probe",
        (_, true) => " first",
        _ => "",
    };
    format!(
        "{}->{} {}@{} {}{tag}",
        send.from.0,
        send.to.0,
        send.meta.last_index,
        send.meta.last_term,
        format_range(send.offset, send.len, &send.meta)
    )
}

/// `i5@t1 bytes=16..32/40`, with `last` on the chunk that completes the snapshot.
fn format_snapshot_chunk(c: &SnapshotChunk) -> String {
    format!(
        "{}@{} {}{}",
        c.meta.last_index,
        c.meta.last_term,
        format_range(c.offset, c.data.len(), &c.meta),
        if c.last { " last" } else { "" }
    )
}

/// Every field of a Ready that is set, one section each, in the order of the Ready contract's
/// steps (the destructuring makes a new field impossible to forget).
fn format_ready(id: NodeId, header: &str, r: &Ready) -> String {
    let Ready {
        soft_state,
        hard_state,
        entries,
        messages,
        persisted_messages,
        committed_entries,
        read_states,
        snapshot,
        snapshot_chunks,
        snapshot_sends,
        membership_results,
    } = r;
    let mut s = format!("> {} {header}\n", id.0);
    if let Some(SoftState { role, leader }) = soft_state {
        let leader = leader.map_or("none".into(), |l| l.0.to_string());
        writeln!(s, "  soft-state: {role:?} leader={leader}").unwrap();
    }
    if let Some(hs) = hard_state {
        writeln!(s, "  hard-state: {}", format_hard_state(hs)).unwrap();
    }
    let list = |s: &mut String, title: &str, items: Vec<String>| {
        if !items.is_empty() {
            writeln!(s, "  {title}:").unwrap();
            for line in compact(items) {
                writeln!(s, "    {line}").unwrap();
            }
        }
    };
    list(
        &mut s,
        "entries",
        entries.iter().map(format_entry).collect(),
    );
    list(
        &mut s,
        "messages",
        messages.iter().map(format_message).collect(),
    );
    let sends = snapshot_sends.iter().map(format_snapshot_send).collect();
    list(&mut s, "snapshot-sends", sends);
    if let Some(meta) = snapshot {
        let config = format_membership(&meta.membership);
        writeln!(s, "  snapshot: install {} {config}", format_meta(meta)).unwrap();
    }
    let chunks = snapshot_chunks.iter().map(format_snapshot_chunk).collect();
    list(&mut s, "snapshot-chunks", chunks);
    let persisted = persisted_messages.iter().map(format_message).collect();
    list(&mut s, "persisted-messages", persisted);
    let committed = committed_entries.iter().map(format_entry).collect();
    list(&mut s, "committed", committed);
    let reads = read_states.iter().map(format_read_state).collect();
    list(&mut s, "read-states", reads);
    let results = membership_results.iter().map(format_membership_result);
    list(&mut s, "membership-results", results.collect());
    s
}
