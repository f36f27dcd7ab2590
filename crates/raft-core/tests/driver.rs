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
use futures::task::LocalSpawnExt;
use futures::StreamExt;
use parking_lot::Mutex;
use raft_core::driver::{DriverConfig, Node, NodeError, NodeHandle, StateMachine, Transport};
use raft_core::{Config, MemStorage};
use raft_proto::{LogIndex, Membership, Message, NodeId};

/// Delivers messages through channels; links in `cut` lose everything.
#[derive(Clone, Default)]
struct Network {
    inboxes: Arc<Mutex<BTreeMap<NodeId, mpsc::Sender<Message>>>>,
    cut: Arc<Mutex<BTreeSet<NodeId>>>,
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
}

struct Cluster {
    pool: LocalPool,
    net: Network,
    ticks: Vec<mpsc::UnboundedSender<()>>,
    handles: Vec<NodeHandle<usize>>,
    applied: Vec<Applied>,
}

impl Cluster {
    fn new() -> Cluster {
        let pool = LocalPool::new();
        let net = Network::default();
        let ids = [NodeId(1), NodeId(2), NodeId(3)];
        let membership = Membership::with_voters(ids);
        let mut cluster = Cluster {
            pool,
            net: net.clone(),
            ticks: Vec::new(),
            handles: Vec::new(),
            applied: Vec::new(),
        };
        for id in ids {
            let (inbox_tx, inbox_rx) = mpsc::channel(1024);
            net.inboxes.lock().insert(id, inbox_tx);
            let (tick_tx, tick_rx) = mpsc::unbounded();
            let applied = Arc::new(Mutex::new(Vec::new()));
            let driver = DriverConfig {
                addresses: ids.iter().map(|&n| (n, format!("node-{n}"))).collect(),
                ..DriverConfig::default()
            };
            let (node, handle) = Node::new(
                Config::new(id),
                driver,
                MemStorage::new(membership.clone()),
                Recorder(Arc::clone(&applied)),
                NetTransport { net: net.clone() },
            )
            .unwrap();
            cluster
                .pool
                .spawner()
                .spawn_local(async move {
                    let _ = node.run(inbox_rx.fuse(), tick_rx.fuse()).await;
                })
                .unwrap();
            cluster.ticks.push(tick_tx);
            cluster.handles.push(handle);
            cluster.applied.push(applied);
        }
        cluster
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
fn a_follower_refuses_proposals_naming_the_leader_and_its_address() {
    let mut c = Cluster::new();
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
