//! The async driver with three nodes in one thread: an in-memory transport, a counting state
//! machine and a hand-cranked tick stream, run on a futures `LocalPool` (no runtime needed).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::executor::LocalPool;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::task::LocalSpawnExt;
use futures::StreamExt;
use parking_lot::Mutex;
use raftline_core::driver::{
    Busy, DriverConfig, Node, NodeError, NodeHandle, SnapshotSink, SnapshotSource, StateMachine,
    Transport, Unknown,
};
use raftline_core::testing::MemSnapshotStore;
use raftline_core::{Config, MemStorage};
use raftline_proto::{LogIndex, Membership, Message, MessageBody, NodeId};

/// Delivers messages through channels; links in `cut` lose everything.
#[derive(Clone, Default)]
struct Network {
    inboxes: Arc<Mutex<BTreeMap<NodeId, mpsc::Sender<Message>>>>,
    cut: Arc<Mutex<BTreeSet<NodeId>>>,
    /// How many appends carrying entries each node was sent.
    appends_to: Arc<Mutex<BTreeMap<NodeId, usize>>>,
}

struct NetTransport {
    net: Network,
}

impl Transport for NetTransport {
    fn send(&self, messages: Vec<Message>) {
        let cut = self.net.cut.lock().clone();
        let mut inboxes = self.net.inboxes.lock();
        for m in messages {
            if cut.contains(&m.from) || cut.contains(&m.to) {
                continue;
            }
            if matches!(&m.body, MessageBody::Append(a) if !a.entries.is_empty()) {
                *self.net.appends_to.lock().entry(m.to).or_default() += 1;
            }
            if let Some(tx) = inboxes.get_mut(&m.to) {
                let _ = tx.try_send(m);
            }
        }
    }
}

/// Every command a node applied, with its index.
type Applied = Arc<Mutex<Vec<(LogIndex, Bytes)>>>;

/// Appends each command to a shared list; responds with the list's length.
struct Recorder(Applied);

#[async_trait]
impl StateMachine for Recorder {
    type Response = usize;

    async fn apply(&mut self, index: LogIndex, command: &Bytes) -> usize {
        let mut applied = self.0.lock();
        applied.push((index, command.clone()));
        applied.len()
    }

    /// The list as (index, length, bytes) records.
    async fn snapshot(&mut self, sink: &mut SnapshotSink<'_>) -> std::io::Result<()> {
        let mut out = Vec::new();
        for (index, command) in self.0.lock().iter() {
            out.extend_from_slice(&index.0.to_be_bytes());
            out.extend_from_slice(&(command.len() as u32).to_be_bytes());
            out.extend_from_slice(command);
        }
        sink.write_all(&out).await
    }

    async fn restore(&mut self, source: &mut SnapshotSource<'_>) -> std::io::Result<()> {
        let mut data = Vec::new();
        source.read_to_end(&mut data).await?;
        let mut list = Vec::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let index = u64::from_be_bytes(rest[..8].try_into().unwrap());
            let len = u32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize;
            list.push((LogIndex(index), Bytes::copy_from_slice(&rest[12..12 + len])));
            rest = &rest[12 + len..];
        }
        *self.0.lock() = list;
        Ok(())
    }
}

struct Cluster {
    pool: LocalPool,
    net: Network,
    ticks: Vec<mpsc::UnboundedSender<()>>,
    handles: Vec<NodeHandle<usize>>,
    applied: Vec<Applied>,
    /// The applied list of the node started last.
    applied_slot: Applied,
    stores: Vec<(MemStorage, MemSnapshotStore)>,
    config: Config,
    driver: DriverConfig,
}

const IDS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

impl Cluster {
    fn new() -> Cluster {
        Cluster::with(Config::new(NodeId(1)), DriverConfig::default())
    }

    /// A cluster whose nodes use `config` (with their own ids) and `driver`.
    fn with(config: Config, driver: DriverConfig) -> Cluster {
        let membership = Membership::with_voters(IDS);
        let mut cluster = Cluster {
            pool: LocalPool::new(),
            net: Network::default(),
            ticks: Vec::new(),
            handles: Vec::new(),
            applied: Vec::new(),
            applied_slot: Applied::default(),
            stores: Vec::new(),
            config,
            driver: DriverConfig {
                addresses: IDS.iter().map(|&n| (n, format!("node-{n}"))).collect(),
                ..driver
            },
        };
        for _ in IDS {
            let stores = (MemStorage::new(membership.clone()), MemSnapshotStore::new());
            cluster.stores.push(stores);
            cluster.ticks.push(mpsc::unbounded().0);
            let handle = cluster.start(cluster.stores.len() - 1);
            cluster.handles.push(handle);
            cluster.applied.push(Arc::clone(&cluster.applied_slot));
        }
        cluster
    }

    /// Adds node `IDS.len() + k` to the simulation (not to the cluster) with empty stores,
    /// as a server started to join; returns its position.
    fn add_node(&mut self) -> usize {
        self.stores.push((
            MemStorage::new(Membership::default()),
            MemSnapshotStore::new(),
        ));
        self.ticks.push(mpsc::unbounded().0);
        let i = self.stores.len() - 1;
        let handle = self.start(i);
        self.handles.push(handle);
        self.applied.push(Arc::clone(&self.applied_slot));
        i
    }

    /// Starts node `i` from its stores (a restart after a crash: the partial copy of a
    /// snapshot being received is lost).
    fn start(&mut self, i: usize) -> NodeHandle<usize> {
        let id = NodeId(i as u64 + 1);
        let (inbox_tx, inbox_rx) = mpsc::channel(1024);
        self.net.inboxes.lock().insert(id, inbox_tx);
        let (tick_tx, tick_rx) = mpsc::unbounded();
        let applied = Arc::new(Mutex::new(Vec::new()));
        let (log, snapshots) = self.stores[i].clone();
        snapshots.restart();
        let mut config = self.config.clone();
        config.id = id;
        config.seed = id.0;
        let (node, handle) = self
            .pool
            .run_until(Node::new(
                config,
                self.driver.clone(),
                log,
                Recorder(Arc::clone(&applied)),
                snapshots,
                NetTransport {
                    net: self.net.clone(),
                },
            ))
            .unwrap();
        self.pool
            .spawner()
            .spawn_local(async move {
                let _ = node.run(inbox_rx.fuse(), tick_rx.fuse()).await;
            })
            .unwrap();
        self.ticks[i] = tick_tx;
        self.applied_slot = applied;
        handle
    }

    /// Crashes node `i` and starts it again from its stores.
    fn restart(&mut self, i: usize) {
        let h = self.handles[i].clone();
        self.spawn(async move { h.shutdown().await });
        self.handles[i] = self.start(i);
        self.applied[i] = Arc::clone(&self.applied_slot);
        self.pool.run_until_stalled();
    }

    fn tick(&mut self, n: usize) {
        for _ in 0..n {
            for t in &self.ticks {
                let _ = t.unbounded_send(());
            }
            self.pool.run_until_stalled();
        }
    }

    fn leader(&self) -> Option<usize> {
        self.handles.iter().position(|h| h.status().is_leader)
    }

    fn elect(&mut self) -> usize {
        for _ in 0..100 {
            if let Some(l) = self.leader() {
                return l;
            }
            self.tick(1);
        }
        panic!("no leader after 100 ticks");
    }

    /// Spawns `fut` and returns a slot that holds its output once it finishes.
    fn spawn<T: 'static>(
        &mut self,
        fut: impl std::future::Future<Output = T> + 'static,
    ) -> Rc<RefCell<Option<T>>> {
        let slot = Rc::new(RefCell::new(None));
        let out = Rc::clone(&slot);
        self.pool
            .spawner()
            .spawn_local(async move {
                *out.borrow_mut() = Some(fut.await);
            })
            .unwrap();
        self.pool.run_until_stalled();
        slot
    }
}

#[test]
fn proposals_resolve_with_the_state_machine_response_on_every_node() {
    let mut c = Cluster::new();
    let leader = c.elect();
    let h = c.handles[leader].clone();
    let first = c.spawn(async move { h.propose(Bytes::from_static(b"a")).await });
    c.tick(3);
    assert_eq!(*first.borrow(), Some(Ok(1)));
    let h = c.handles[leader].clone();
    let second = c.spawn(async move { h.propose(Bytes::from_static(b"b")).await });
    c.tick(3);
    assert_eq!(*second.borrow(), Some(Ok(2)));
    for applied in &c.applied {
        let commands: Vec<Bytes> = applied.lock().iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(
            commands,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
    }
}

#[test]
fn proposals_queued_together_leave_in_one_append_per_follower() {
    let mut c = Cluster::new();
    let leader = c.elect();
    c.tick(3);
    c.net.appends_to.lock().clear();
    let h = c.handles[leader].clone();
    let proposals = (0..64u8).map(move |i| {
        let h = h.clone();
        async move { h.propose(Bytes::from(vec![i])).await }
    });
    let all = c.spawn(futures::future::join_all(proposals));
    c.tick(3);
    let results = all.borrow_mut().take().expect("all resolved");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let appends = c.net.appends_to.lock().clone();
    let followers: Vec<NodeId> = IDS.iter().copied().filter(|&n| n != IDS[leader]).collect();
    for f in followers {
        assert_eq!(
            appends.get(&f),
            Some(&1),
            "{f} got the 64 entries in one append"
        );
    }
}

#[test]
fn proposals_through_one_handle_all_resolve_when_the_request_queue_is_full() {
    let driver = DriverConfig {
        request_queue_max: 1,
        ..DriverConfig::default()
    };
    let mut c = Cluster::with(Config::new(NodeId(1)), driver);
    let leader = c.elect();
    // One handle shared by every caller (not a clone each): most find the queue full and
    // wait for room.
    let h = Rc::new(c.handles[leader].clone());
    let proposals = (0..64u8).map(move |i| {
        let h = Rc::clone(&h);
        async move { h.propose(Bytes::from(vec![i])).await }
    });
    let all = c.spawn(futures::future::join_all(proposals));
    c.tick(3);
    let results = all.borrow_mut().take().expect("all resolved");
    let mut responses: Vec<usize> = results
        .into_iter()
        .map(|r| r.expect("proposal applied"))
        .collect();
    responses.sort_unstable();
    assert_eq!(responses, (1..=64).collect::<Vec<_>>(), "each applied once");
    let mut commands: Vec<u8> = c.applied[leader].lock().iter().map(|(_, b)| b[0]).collect();
    commands.sort_unstable();
    assert_eq!(commands, (0..64u8).collect::<Vec<_>>());
}

#[test]
fn a_proposal_in_a_term_is_taken_only_by_the_leader_of_that_term_and_never_forwarded() {
    let mut c = Cluster::new();
    let leader = c.elect();
    let term = c.handles[leader].status().term;
    let follower = (leader + 1) % 3;
    let h = c.handles[leader].clone();
    let here = c.spawn(async move { h.propose_in_term(term, Bytes::from_static(b"a")).await });
    let h = c.handles[leader].clone();
    let stale = raftline_proto::Term(term.0 - 1);
    let old = c.spawn(async move { h.propose_in_term(stale, Bytes::from_static(b"b")).await });
    let h = c.handles[follower].clone();
    let there = c.spawn(async move { h.propose_in_term(term, Bytes::from_static(b"c")).await });
    c.tick(3);
    assert_eq!(*here.borrow(), Some(Ok(1)));
    for refused in [old, there] {
        let refused = refused.borrow_mut().take().expect("answered");
        assert!(
            matches!(refused, Err(NodeError::NotLeader { .. })),
            "{refused:?}"
        );
    }
    let applied: Vec<Bytes> = c.applied[leader]
        .lock()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(
        applied,
        vec![Bytes::from_static(b"a")],
        "nothing else proposed"
    );
}

#[test]
fn without_forwarding_a_follower_refuses_proposals_naming_the_leader_and_its_address() {
    let driver = DriverConfig {
        forward_proposals: false,
        ..DriverConfig::default()
    };
    let mut c = Cluster::with(Config::new(NodeId(1)), driver);
    let leader = c.elect();
    c.tick(2);
    let follower = (leader + 1) % 3;
    let h = c.handles[follower].clone();
    let result = c.spawn(async move { h.propose(Bytes::from_static(b"x")).await });
    let leader_id = NodeId(leader as u64 + 1);
    assert_eq!(
        result.borrow().clone().unwrap(),
        Err(NodeError::NotLeader {
            leader: Some(leader_id),
            address: Some(format!("node-{leader_id}")),
        })
    );
}

#[test]
fn a_follower_forwards_proposals_and_resolves_them_with_the_leaders_response() {
    let mut c = Cluster::new();
    let leader = c.elect();
    c.tick(2);
    let follower = (leader + 1) % 3;
    let h = c.handles[follower].clone();
    let first = c.spawn(async move { h.propose(Bytes::from_static(b"f1")).await });
    let h = c.handles[leader].clone();
    let second = c.spawn(async move { h.propose(Bytes::from_static(b"l2")).await });
    c.tick(3);
    // The leader's state machine answers: the length of its list when each applied.
    assert_eq!(*first.borrow(), Some(Ok(1)));
    assert_eq!(*second.borrow(), Some(Ok(2)));
    for applied in &c.applied {
        let commands: Vec<Bytes> = applied.lock().iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(
            commands,
            vec![Bytes::from_static(b"f1"), Bytes::from_static(b"l2")]
        );
    }
}

#[test]
fn a_forward_the_leader_never_answers_fails_as_unknown_after_its_timeout() {
    let driver = DriverConfig {
        forward_timeout_ticks: 5,
        ..DriverConfig::default()
    };
    let mut c = Cluster::with(Config::new(NodeId(1)), driver);
    let leader = c.elect();
    c.tick(2);
    let follower = (leader + 1) % 3;
    let leader_id = NodeId(leader as u64 + 1);
    // The leader is cut off: the forward is lost on the way.
    c.net.cut.lock().insert(leader_id);
    let h = c.handles[follower].clone();
    let result = c.spawn(async move { h.propose(Bytes::from_static(b"x")).await });
    c.tick(4);
    assert_eq!(*result.borrow(), None, "still waiting before the deadline");
    c.tick(1);
    assert_eq!(
        *result.borrow(),
        Some(Err(NodeError::OutcomeUnknown(Unknown::ForwardUnanswered {
            leader: leader_id
        })))
    );
}

#[test]
fn a_forward_to_a_leader_that_was_replaced_fails_as_unknown_once_the_new_leader_is_known() {
    let driver = DriverConfig {
        forward_timeout_ticks: 1000,
        ..DriverConfig::default()
    };
    let mut c = Cluster::with(Config::new(NodeId(1)), driver);
    let leader = c.elect();
    c.tick(2);
    let old = NodeId(leader as u64 + 1);
    c.net.cut.lock().insert(old);
    let follower = (leader + 1) % 3;
    let h = c.handles[follower].clone();
    let result = c.spawn(async move { h.propose(Bytes::from_static(b"x")).await });
    for _ in 0..100 {
        let known = c.handles[follower].status().leader;
        if known.is_some_and(|l| l != old) {
            break;
        }
        c.tick(1);
    }
    assert_ne!(c.handles[follower].status().leader, Some(old));
    assert_eq!(
        *result.borrow(),
        Some(Err(NodeError::OutcomeUnknown(Unknown::LeaderChanged {
            leader: old
        })))
    );
}

#[test]
fn forwards_beyond_the_bound_are_refused_as_busy() {
    let driver = DriverConfig {
        forwards_pending_max: 2,
        ..DriverConfig::default()
    };
    let mut c = Cluster::with(Config::new(NodeId(1)), driver);
    let leader = c.elect();
    c.tick(2);
    let leader_id = NodeId(leader as u64 + 1);
    c.net.cut.lock().insert(leader_id);
    let follower = (leader + 1) % 3;
    let results: Vec<_> = (0..3)
        .map(|_| {
            let h = c.handles[follower].clone();
            c.spawn(async move { h.propose(Bytes::from_static(b"x")).await })
        })
        .collect();
    assert_eq!(*results[0].borrow(), None);
    assert_eq!(*results[1].borrow(), None);
    assert_eq!(
        *results[2].borrow(),
        Some(Err(NodeError::Busy(Busy::Forwards { max: 2 })))
    );
}

#[test]
fn a_read_barrier_on_a_follower_waits_for_the_write_before_it() {
    let mut c = Cluster::new();
    let leader = c.elect();
    let h = c.handles[leader].clone();
    let write = c.spawn(async move { h.propose(Bytes::from_static(b"w")).await });
    c.tick(3);
    assert!(matches!(*write.borrow(), Some(Ok(_))));
    let follower = (leader + 1) % 3;
    let h = c.handles[follower].clone();
    let read = c.spawn(async move { h.read_barrier().await });
    c.tick(3);
    let index = read.borrow().clone().unwrap().unwrap();
    assert!(c.applied[follower]
        .lock()
        .iter()
        .any(|(i, b)| *i <= index && b == "w"));
}

#[test]
fn a_follower_asks_again_for_a_read_whose_request_was_lost() {
    let mut c = Cluster::new();
    let leader = c.elect();
    c.tick(2);
    let follower = (leader + 1) % 3;
    let follower_id = NodeId(follower as u64 + 1);
    // The read-index request to the leader is lost; the link comes back at once.
    c.net.cut.lock().insert(follower_id);
    let h = c.handles[follower].clone();
    let read = c.spawn(async move { h.read_barrier().await });
    c.net.cut.lock().clear();
    c.tick(2);
    assert!(read.borrow().is_none(), "the request was lost");
    // Within an election timeout (10 ticks) the follower asks again, and the read completes.
    c.tick(12);
    assert!(matches!(*read.borrow(), Some(Ok(_))), "{:?}", read.borrow());
    assert_eq!(
        c.handles[follower].status().leader,
        Some(NodeId(leader as u64 + 1))
    );
}

#[test]
fn a_deposed_leaders_proposal_fails_with_leadership_lost_and_reads_fail() {
    let mut c = Cluster::new();
    let old = c.elect();
    c.tick(2);
    let old_id = NodeId(old as u64 + 1);
    c.net.cut.lock().insert(old_id);
    let h = c.handles[old].clone();
    let lost = c.spawn(async move { h.propose(Bytes::from_static(b"lost")).await });
    let h = c.handles[old].clone();
    let read = c.spawn(async move { h.read_barrier().await });
    // The others elect a new leader and commit something at the same index.
    let mut new = None;
    for _ in 0..200 {
        c.tick(1);
        new = c
            .handles
            .iter()
            .position(|h| h.status().is_leader && h.status().id != old_id);
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("a new leader");
    let h = c.handles[new].clone();
    let won = c.spawn(async move { h.propose(Bytes::from_static(b"won")).await });
    c.tick(5);
    assert!(matches!(*won.borrow(), Some(Ok(_))));
    c.net.cut.lock().clear();
    c.tick(30);
    assert_eq!(*lost.borrow(), Some(Err(NodeError::LeadershipLost)));
    assert_eq!(read.borrow().clone(), Some(Err(NodeError::ReadUnavailable)));
    for applied in &c.applied {
        assert!(applied.lock().iter().all(|(_, b)| b != "lost"));
    }
}

#[test]
fn shutdown_fails_pending_requests() {
    let mut c = Cluster::new();
    let leader = c.elect();
    c.net.cut.lock().insert(NodeId(leader as u64 + 1));
    let h = c.handles[leader].clone();
    let pending = c.spawn(async move { h.propose(Bytes::from_static(b"p")).await });
    let h = c.handles[leader].clone();
    c.spawn(async move { h.shutdown().await });
    assert_eq!(*pending.borrow(), Some(Err(NodeError::ShuttingDown)));
    let h = c.handles[leader].clone();
    let after = c.spawn(async move { h.propose(Bytes::from_static(b"q")).await });
    assert_eq!(*after.borrow(), Some(Err(NodeError::ShuttingDown)));
}

/// Proposes `n` commands one at a time on the leader, ticking until each resolves.
fn write(c: &mut Cluster, leader: usize, n: usize, tag: &str) {
    for k in 0..n {
        let h = c.handles[leader].clone();
        let command = Bytes::from(format!("{tag}{k}"));
        let done = c.spawn(async move { h.propose(command).await });
        for _ in 0..10 {
            if done.borrow().is_some() {
                break;
            }
            c.tick(1);
        }
        assert!(
            matches!(*done.borrow(), Some(Ok(_))),
            "{tag}{k}: {:?}",
            done.borrow()
        );
    }
}

fn small_snapshots() -> Cluster {
    let mut config = Config::new(NodeId(1));
    config.snapshot_chunk_bytes_max = 64;
    config.snapshot_chunks_inflight_max = 2;
    let driver = DriverConfig {
        snapshot_entries: 10,
        snapshot_trailing_entries: 3,
        ..DriverConfig::default()
    };
    Cluster::with(config, driver)
}

#[test]
fn a_follower_behind_the_compaction_point_catches_up_by_snapshot_then_by_log() {
    let mut c = small_snapshots();
    let leader = c.elect();
    let lagging = (leader + 1) % 3;
    c.net.cut.lock().insert(IDS[lagging]);
    write(&mut c, leader, 45, "a");
    let status = c.handles[leader].status();
    assert!(status.snapshots.taken >= 4, "{status:?}");
    assert!(status.first_index > LogIndex(30), "compacted: {status:?}");
    c.net.cut.lock().clear();
    c.tick(20);
    write(&mut c, leader, 3, "b");
    c.tick(5);
    let lagging_status = c.handles[lagging].status();
    assert_eq!(lagging_status.snapshots.installed, 1, "{lagging_status:?}");
    let leader_status = c.handles[leader].status();
    assert!(
        leader_status.snapshots.chunks_sent > 2,
        "several chunks: {leader_status:?}"
    );
    assert_eq!(leader_status.snapshots.transfers_started, 1);
    let expected = c.applied[leader].lock().clone();
    assert_eq!(expected.len(), 48);
    for applied in &c.applied {
        assert_eq!(*applied.lock(), expected);
    }
}

#[test]
fn a_restart_applies_the_log_after_the_snapshot_only() {
    let mut c = small_snapshots();
    let leader = c.elect();
    write(&mut c, leader, 25, "a");
    let follower = (leader + 1) % 3;
    c.restart(follower);
    c.tick(5);
    write(&mut c, leader, 2, "b");
    c.tick(5);
    let restarted = c.handles[follower].status();
    assert_eq!(
        restarted.snapshots.last_index,
        LogIndex(20),
        "{restarted:?}"
    );
    let expected = c.applied[leader].lock().clone();
    assert_eq!(expected.len(), 27);
    assert_eq!(
        *c.applied[follower].lock(),
        expected,
        "each command exactly once"
    );
}

#[test]
fn a_snapshot_on_request_compacts_the_log() {
    let mut c = Cluster::with(
        Config::new(NodeId(1)),
        DriverConfig {
            snapshot_entries: 0,
            snapshot_trailing_entries: 1,
            ..DriverConfig::default()
        },
    );
    let leader = c.elect();
    write(&mut c, leader, 5, "a");
    assert_eq!(c.handles[leader].status().snapshots.taken, 0);
    let h = c.handles[leader].clone();
    let meta = c.spawn(async move { h.snapshot().await });
    let meta = meta.borrow().clone().unwrap().unwrap();
    assert_eq!(meta.last_index, c.handles[leader].status().applied_index);
    c.tick(1);
    assert_eq!(c.handles[leader].status().first_index, meta.last_index);
}

#[test]
fn a_new_server_joins_as_a_learner_and_is_promoted_once_caught_up() {
    let mut c = small_snapshots();
    let leader = c.elect();
    write(&mut c, leader, 25, "a");
    let new = c.add_node();
    let new_id = NodeId(new as u64 + 1);
    let h = c.handles[leader].clone();
    let added = c.spawn(async move {
        h.change_membership(raftline_core::MembershipChange::AddVoter(new_id))
            .await
    });
    for _ in 0..100 {
        if added.borrow().is_some() {
            break;
        }
        c.tick(1);
    }
    let membership = added.borrow().clone().expect("resolved").expect("added");
    assert!(membership.voters.contains(&new_id), "{membership:?}");
    write(&mut c, leader, 2, "b");
    c.tick(3);
    // It caught up (by snapshot: the log was compacted) and applies like the others.
    assert_eq!(*c.applied[new].lock(), *c.applied[leader].lock());
    assert_eq!(c.handles[new].status().membership, membership);
}

#[test]
fn leadership_moves_on_request_and_learners_are_refused() {
    let mut c = Cluster::new();
    let leader = c.elect();
    c.tick(2);
    let target = NodeId(((leader + 1) % 3) as u64 + 1);
    let h = c.handles[leader].clone();
    let moved = c.spawn(async move { h.transfer_leadership(target).await });
    c.tick(5);
    assert_eq!(moved.borrow().clone(), Some(Ok(())));
    assert!(c.handles[target.0 as usize - 1].status().is_leader);
    let new_leader = target.0 as usize - 1;
    let h = c.handles[new_leader].clone();
    let refused = c.spawn(async move { h.transfer_leadership(NodeId(9)).await });
    assert!(matches!(
        refused.borrow().clone(),
        Some(Err(NodeError::MembershipRefused(_)))
    ));
}

#[test]
fn a_removed_leader_commits_its_removal_then_steps_down() {
    let mut c = Cluster::new();
    let leader = c.elect();
    write(&mut c, leader, 2, "a");
    let leader_id = NodeId(leader as u64 + 1);
    let h = c.handles[leader].clone();
    let removed = c.spawn(async move {
        h.change_membership(raftline_core::MembershipChange::Remove(leader_id))
            .await
    });
    c.tick(30);
    let membership = removed
        .borrow()
        .clone()
        .expect("resolved")
        .expect("removed");
    assert!(!membership.is_voter(leader_id));
    let status = c.handles[leader].status();
    assert!(!status.is_leader, "{status:?}");
    let new = c.leader().expect("the others elect a leader");
    assert_ne!(new, leader);
    write(&mut c, new, 2, "b");
    // The old leader is out: it applies nothing more and, after a few election timeouts
    // without a leader, reports that it was removed.
    c.tick(60);
    assert!(c.handles[leader].status().removed);
    assert!(c.applied[leader].lock().len() < c.applied[new].lock().len());
}
