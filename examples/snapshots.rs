//! A state machine with snapshots: a key-value map that streams its snapshot out record by
//! record (`StateMachine::snapshot` writes into an `AsyncWrite`) and back in (`restore` reads
//! an `AsyncRead`), never building an encoded copy of the whole map. raftline-snapshot keeps
//! the snapshots on disk.
//!
//! Three voters, but node 3 is down while the other two apply 300 writes, take a snapshot
//! every 50 entries and compact their logs behind it. When node 3 starts, with nothing, the
//! entries it lacks are gone from the leader's log: it receives the snapshot in chunks,
//! restores its map from it, and catches up from the log.
//!
//! `cargo run -p raftline-examples --example snapshots`

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::lock::Mutex as AsyncMutex;
use futures::StreamExt;
use parking_lot::Mutex;
use raftline_core::driver::{
    DriverConfig, Node, NodeHandle, SnapshotSink, SnapshotSource, StateMachine, Transport,
};
use raftline_core::{Config, MemStorage};
use raftline_proto::{LogIndex, Membership, Message, NodeId};
use raftline_snapshot::FileSnapshotStore;
use tokio::time::{interval, timeout};
use tokio_stream::wrappers::IntervalStream;

/// The replicated map. An async mutex: `snapshot` holds it while it streams.
type Map = Arc<AsyncMutex<BTreeMap<String, String>>>;

/// The state machine: commands are `key=value`; each answers the key's previous value.
struct KvMap(Map);

#[async_trait]
impl StateMachine for KvMap {
    type Response = Option<String>;

    async fn apply(&mut self, _index: LogIndex, command: &Bytes) -> Option<String> {
        let command = String::from_utf8_lossy(command);
        let (key, value) = command.split_once('=')?;
        self.0.lock().await.insert(key.into(), value.into())
    }

    /// The map as records: a count (u64), then per entry the key and the value, each a
    /// length (u32) and its bytes, in key order (so every node writes the same bytes for the
    /// same state). The sink buffers; a large map streams through in pieces.
    async fn snapshot(&mut self, sink: &mut SnapshotSink<'_>) -> std::io::Result<()> {
        let map = self.0.lock().await;
        sink.write_all(&(map.len() as u64).to_le_bytes()).await?;
        for (key, value) in map.iter() {
            for field in [key, value] {
                sink.write_all(&(field.len() as u32).to_le_bytes()).await?;
                sink.write_all(field.as_bytes()).await?;
            }
        }
        Ok(())
    }

    /// Reads the records back one by one into a new map, then replaces the old one.
    async fn restore(&mut self, source: &mut SnapshotSource<'_>) -> std::io::Result<()> {
        let mut count = [0; 8];
        source.read_exact(&mut count).await?;
        let mut map = BTreeMap::new();
        for _ in 0..u64::from_le_bytes(count) {
            let key = read_field(source).await?;
            let value = read_field(source).await?;
            map.insert(key, value);
        }
        println!("  restored a map of {} keys from a snapshot", map.len());
        *self.0.lock().await = map;
        Ok(())
    }
}

/// One length-prefixed UTF-8 field of a snapshot.
async fn read_field(source: &mut SnapshotSource<'_>) -> std::io::Result<String> {
    let mut len = [0; 4];
    source.read_exact(&mut len).await?;
    let mut bytes = vec![0; u32::from_le_bytes(len) as usize];
    source.read_exact(&mut bytes).await?;
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// An in-process network: each connected node's inbox. Messages to a node not connected (a
/// node that is down) are lost, as they would be on a real network.
#[derive(Clone, Default)]
struct Network(Arc<Mutex<BTreeMap<NodeId, mpsc::Sender<Message>>>>);

impl Transport for Network {
    fn send(&self, messages: Vec<Message>) {
        let mut inboxes = self.0.lock();
        for message in messages {
            if let Some(inbox) = inboxes.get_mut(&message.to) {
                let _ = inbox.try_send(message); // a full inbox drops: Raft resends
            }
        }
    }
}

const IDS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
const WRITES: usize = 300;

/// Starts node `id` with an empty log and an empty snapshot store in `dir`.
async fn start(
    id: NodeId,
    network: &Network,
    dir: &std::path::Path,
) -> Result<(NodeHandle<Option<String>>, Map), Box<dyn Error>> {
    let mut config = Config::new(id);
    config.snapshot_chunk_bytes_max = 1024; // small chunks, to see a transfer in several
    let driver = DriverConfig {
        snapshot_entries: 50,          // a snapshot at every 50th entry...
        snapshot_trailing_entries: 10, // ...and the log keeps only 10 entries behind it
        ..DriverConfig::default()
    };
    let log = MemStorage::new(Membership::with_voters(IDS));
    let snapshots = FileSnapshotStore::open(dir.join(format!("snap-{id}")), Default::default())?;
    let map = Map::default();
    let machine = KvMap(Arc::clone(&map));
    let (node, handle) =
        Node::new(config, driver, log, machine, snapshots, network.clone()).await?;
    let (inbox, inbound) = mpsc::channel(1024);
    network.0.lock().insert(id, inbox);
    // A tick every 10 ms: an election timeout (10 ticks) is 100 to 200 ms.
    let ticks = IntervalStream::new(interval(Duration::from_millis(10)));
    tokio::spawn(node.run(inbound, ticks.map(|_| ()).fuse()));
    Ok((handle, map))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    timeout(Duration::from_secs(20), run())
        .await
        .map_err(|_| "the example did not finish within 20 s")?
}

async fn run() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let network = Network::default();
    println!("starting n1 and n2; n3 is down");
    let mut nodes = vec![
        start(IDS[0], &network, dir.path()).await?,
        start(IDS[1], &network, dir.path()).await?,
    ];
    let leader = nodes[0].0.watch().leader().await?;
    let leader = nodes[if leader == IDS[0] { 0 } else { 1 }].0.clone();
    for i in 0..WRITES {
        let command = format!("key{:03}=value{i}", i % 100);
        leader.propose(command.into()).await?;
    }
    let index = leader.read_barrier().await?; // a read point after every write
    let status = leader.status();
    println!(
        "{} applied {WRITES} writes, took {} snapshots (the last at {}), and its log starts at {}",
        status.id, status.snapshots.taken, status.snapshots.last_index, status.first_index
    );
    if status.snapshots.taken == 0 || status.first_index <= LogIndex(1) {
        return Err("the leader took no snapshot or did not compact its log".into());
    }
    println!("starting n3 with an empty log: it needs the snapshot");
    nodes.push(start(IDS[2], &network, dir.path()).await?);
    nodes[2].0.watch().applied(index).await?;
    let stats = nodes[2].0.status().snapshots;
    println!(
        "n3 caught up to {}: received {} chunks, installed {} snapshot(s)",
        index, stats.chunks_received, stats.installed
    );
    if stats.installed == 0 {
        return Err("n3 caught up without installing a snapshot".into());
    }
    check_maps(&nodes, index).await
}

/// Every node's map, once it applied `index`, holds the same 100 keys.
async fn check_maps(
    nodes: &[(NodeHandle<Option<String>>, Map)],
    index: LogIndex,
) -> Result<(), Box<dyn Error>> {
    let mut maps = Vec::new();
    for (handle, map) in nodes {
        handle.watch().applied(index).await?;
        maps.push(map.lock().await.clone());
        handle.shutdown().await;
    }
    if maps.iter().any(|map| map.len() != 100 || *map != maps[0]) {
        return Err("the nodes' maps differ".into());
    }
    println!("the three maps are equal: 100 keys");
    Ok(())
}
