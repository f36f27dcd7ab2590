//! A replicated counter: one member per process, its log in raftline-log, snapshots in
//! raftline-snapshot, TCP to its peers with raftline-tcp. Run three (`--id 1`, 2, 3), e.g.
//! `counter --id 1 --dir /tmp/c1 --peers 1=127.0.0.1:17101,2=127.0.0.1:17102,3=127.0.0.1:17103`;
//! kill one (even with SIGKILL) and restart it on its `--dir`: it recovers and catches up.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use raftline_core::driver::{DriverConfig, Node, SnapshotSink, SnapshotSource, StateMachine};
use raftline_proto::{LogIndex, Membership, NodeId};
use raftline_snapshot::FileSnapshotStore;
use raftline_tcp::{TcpTransport, TransportConfig};
use tokio::time::interval;
use tokio_stream::wrappers::IntervalStream;

/// The replicated state machine: a command is an increment (u64, little-endian).
struct Counter(u64);

#[async_trait]
impl StateMachine for Counter {
    type Response = u64; // the value after the increment

    async fn apply(&mut self, index: LogIndex, command: &Bytes) -> u64 {
        self.0 += <[u8; 8]>::try_from(&command[..]).map_or(0, u64::from_le_bytes);
        println!("applied #{}: counter = {}", index.0, self.0);
        self.0
    }
    async fn snapshot(&mut self, sink: &mut SnapshotSink<'_>) -> std::io::Result<()> {
        sink.write_all(&self.0.to_le_bytes()).await
    }
    async fn restore(&mut self, source: &mut SnapshotSource<'_>) -> std::io::Result<()> {
        let mut bytes = [0; 8];
        source.read_exact(&mut bytes).await?;
        self.0 = u64::from_le_bytes(bytes);
        println!("restored a snapshot: counter = {}", self.0);
        Ok(())
    }
}

/// The driver's clock: one tick every 50 ms, so an election timeout (10 ticks) is 0.5 to 1 s.
const TICK: Duration = Duration::from_millis(50);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: counter --id N --peers ID=HOST:PORT,... --dir DIR [--incr K]";
    let flag = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    let me = NodeId(flag("--id").ok_or(usage)?.parse()?);
    let dir = std::path::PathBuf::from(flag("--dir").ok_or(usage)?);
    let incr: u64 = flag("--incr").map_or(Ok(1), |k| k.parse())?;
    let mut peers = BTreeMap::new();
    for peer in flag("--peers").ok_or(usage)?.split(',') {
        let (id, addr) = peer.split_once('=').ok_or(usage)?;
        peers.insert(NodeId(id.parse()?), addr.to_string());
    }
    let listen = peers.get(&me).ok_or("--id is not in --peers")?.parse()?;
    // A new log starts with this membership; an existing one keeps the membership it holds.
    let options = raftline_log::Options {
        membership: Membership::with_voters(peers.keys().copied()),
        segment_bytes_max: 1 << 20, // 1 MiB files: this log stays small
        ..Default::default()
    };
    let log = raftline_log::LogFile::open(dir.join("log"), options)?;
    let snapshots = FileSnapshotStore::open(dir.join("snap"), Default::default())?;
    // The cluster id: any number the members share and no other cluster on their network uses
    // (a peer naming another is refused). A real deployment draws one when it creates the cluster.
    let mut net = TransportConfig::new(me, 0xC0FFEE, listen);
    net.peers = peers; // its own entry is ignored
    let (transport, inbound) = TcpTransport::start(net).await?;
    // A snapshot every 20 entries, keeping 5 behind it: a member away longer gets the snapshot.
    let driver = DriverConfig {
        snapshot_entries: 20,
        snapshot_trailing_entries: 5,
        ..Default::default()
    };
    let mut config = raftline_core::Config::new(me);
    config.seed = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64; // new each start
    let (node, handle) = Node::new(config, driver, log, Counter(0), snapshots, transport).await?;
    let ticks = IntervalStream::new(interval(TICK)).map(|_| ()).fuse();
    let running = tokio::spawn(node.run(inbound, ticks));
    let increment = Bytes::copy_from_slice(&incr.to_le_bytes());
    while !running.is_finished() {
        // Any member may propose (a follower forwards to the leader). On an error, retry: after
        // an "outcome unknown" one it may count twice (real clients make commands idempotent).
        match handle.propose(increment.clone()).await {
            Ok(value) => println!("proposed +{incr}: counter = {value}"),
            Err(e) => eprintln!("propose failed ({e}); retrying"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(running.await??) // the node stopped: why
}
