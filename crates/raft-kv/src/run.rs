//! Starting a member: the log, the transport, the raft driver, the gRPC server.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::RwLock;
use raftline_core::driver::{
    DriverConfig, Node, NodeError, SnapshotSink, SnapshotSource, StateMachine,
};
use raftline_core::{Config, ReadMode};
use raftline_log::{LogFile, Options};
use raftline_proto::{LogIndex, Membership, NodeId};
use raftline_snapshot::FileSnapshotStore;
use raftline_tcp::{TcpTransport, TransportConfig};
use tokio::sync::watch;
use tokio_stream::wrappers::IntervalStream;

use crate::config::{ClusterState, ServerConfig};
use crate::proto::etcdserverpb::{
    auth_server, cluster_server, kv_server, lease_server, maintenance_server, watch_server,
};
use crate::server::authority::AuthorityFix;
use crate::server::health::{is_healthy, report_health, set_health};
use crate::server::paths::NameUnservedLayer;
use crate::server::{
    AuthService, ClusterService, KvService, LeaseService, MaintenanceService, Shared, WatchService,
    PROMOTE_INTERVAL,
};
use crate::snapshot::{read_store_snapshot, write_store_snapshot};
use crate::store::{Command, MemberInfo, Outcome, Store};

/// The file in the data directory that keeps this member's id (hex): the id derives from the
/// peer URL when the member starts for the first time, and stays after `MemberUpdate` moves
/// the member to another URL.
const MEMBER_ID_FILE: &str = "member_id";

/// How long [`Running::shutdown`] waits for client connections to finish and close (a
/// client that keeps its connection open would otherwise hold the shutdown up).
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// A removed member stays a transport peer for this many election timeouts after its record's
/// removal is applied, so that it still receives the configuration that removes it (the
/// leader replicates to it until it holds that).
const REMOVED_PEER_GRACE_ELECTIONS: u32 = 3;

/// Keeps the transport's peers in step with the store's member records: a member's address
/// is added when its record is, moved when its record's peer URL changes, and dropped a grace
/// period after its removal. Applied the same way when replaying the log and restoring a
/// snapshot, so a restarted member reaches every member its store knows of.
struct PeerSync {
    transport: TcpTransport,
    me: NodeId,
    /// The address last given to the transport for each peer (one entry per member known).
    known: HashMap<NodeId, String>,
    /// How long a removed peer stays (see [`REMOVED_PEER_GRACE_ELECTIONS`]).
    grace: Duration,
}

/// `host:port` of a peer URL.
fn peer_addr(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

impl PeerSync {
    /// Member `id`'s record, or its removal, was applied.
    fn sync(&mut self, store: &Store, id: u64) {
        let node = NodeId(id);
        if node == self.me {
            return;
        }
        if store.removed().contains(&id) {
            if self.known.remove(&node).is_some() {
                let transport = self.transport.clone();
                let grace = self.grace;
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    transport.remove_peer(node);
                });
            }
            return;
        }
        let Some(addr) = store
            .members()
            .get(&id)
            .and_then(|m| m.peer_urls.first())
            .map(|u| peer_addr(u))
        else {
            return;
        };
        if self.known.get(&node) != Some(&addr) {
            tracing::info!(peer = %format!("{id:x}"), addr = %addr, "peer address");
            self.transport.add_peer(node, &addr);
            self.known.insert(node, addr);
        }
    }

    /// The whole store was replaced (a snapshot restored).
    fn sync_all(&mut self, store: &Store) {
        let ids: Vec<u64> = store
            .members()
            .keys()
            .chain(store.removed())
            .copied()
            .collect();
        for id in ids {
            self.sync(store, id);
        }
    }
}

/// The member a command changes the record of, if any.
fn member_of(command: &Command) -> Option<u64> {
    match command {
        Command::Publish(m) => Some(m.id),
        Command::AddMember { id, .. }
        | Command::RemoveMember { id }
        | Command::UpdateMember { id, .. } => Some(*id),
        _ => None,
    }
}

/// The state machine: decodes each committed command and applies it to the shared store;
/// member record changes also reach the transport.
pub struct KvStateMachine {
    store: Arc<RwLock<Store>>,
    /// `None` only for a state machine without a transport ([`KvStateMachine::detached`]).
    peers: Option<PeerSync>,
    /// The store's revision after each apply (watchers and read-your-writes wait on it).
    revisions: watch::Sender<i64>,
}

impl KvStateMachine {
    /// A state machine applying committed commands to `store` as a member's does (the same
    /// decoding, apply, snapshot and restore), but with no transport to keep in step with the
    /// member records: for tests that run it without a network, e.g. under raftline-core's
    /// driver simulator.
    pub fn detached(store: Arc<RwLock<Store>>) -> KvStateMachine {
        let (revisions, _) = watch::channel(store.read().revision());
        KvStateMachine {
            store,
            peers: None,
            revisions,
        }
    }
}

#[async_trait]
impl StateMachine for KvStateMachine {
    type Response = Outcome;

    async fn apply(&mut self, _index: LogIndex, command: &Bytes) -> Outcome {
        match postcard::from_bytes::<Command>(command) {
            Ok(c) => {
                let member = member_of(&c);
                let mut store = self.store.write();
                let outcome = store.apply(c);
                if let (Some(id), Some(peers)) = (member, self.peers.as_mut()) {
                    peers.sync(&store, id);
                }
                self.revisions.send_if_modified(|r| {
                    let changed = *r != store.revision();
                    *r = store.revision();
                    changed
                });
                outcome
            }
            Err(e) => Outcome::Rejected(format!("undecodable command: {e}")),
        }
    }

    async fn snapshot(&mut self, sink: &mut SnapshotSink<'_>) -> std::io::Result<()> {
        write_store_snapshot(&self.store, sink).await
    }

    async fn restore(&mut self, source: &mut SnapshotSource<'_>) -> std::io::Result<()> {
        let restored = read_store_snapshot(source).await?;
        let mut store = self.store.write();
        *store = restored;
        if let Some(peers) = self.peers.as_mut() {
            peers.sync_all(&store);
        }
        self.revisions.send_replace(store.revision());
        Ok(())
    }
}

/// Why a member did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {}", dir.display())]
    CreateDataDir {
        /// The data directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The member id file could not be read.
    #[error("cannot read the member id in {}", file.display())]
    ReadMemberId {
        /// The member id file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The member id file does not hold a member id (hex).
    #[error("{}: not a member id", file.display())]
    NotMemberId {
        /// The member id file.
        file: PathBuf,
        /// What it holds (trimmed).
        text: String,
        /// Why it does not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// The member id file could not be written.
    #[error("cannot write the member id to {}", file.display())]
    WriteMemberId {
        /// The member id file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The log could not be opened (or recovered).
    #[error("cannot open the log in {}", dir.display())]
    OpenLog {
        /// The log's directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: raftline_log::Error,
    },
    /// The snapshot store could not be opened.
    #[error("cannot open the snapshot store in {}", dir.display())]
    OpenSnapshots {
        /// The snapshot store's directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: raftline_snapshot::Error,
    },
    /// The peer transport could not listen.
    #[error("cannot listen for peers on {addr}")]
    ListenPeers {
        /// The address of `--listen-peer-urls`.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The raft node did not start (its log, snapshot or state machine failed).
    #[error("cannot start raft")]
    Node(#[source] raftline_core::Error),
    /// The metrics listener could not listen.
    #[error("cannot listen for metrics on {addr}")]
    ListenMetrics {
        /// The address of `--listen-metrics-urls`.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The client listener could not listen.
    #[error("cannot listen for clients on {addr}")]
    ListenClients {
        /// The address of `--listen-client-urls`.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// This member's id: the one kept in the data directory ([`MEMBER_ID_FILE`]), else the one
/// the flags give, which is then kept there.
fn adopt_member_id(config: &mut ServerConfig, data_dir: &Path) -> Result<(), StartError> {
    let file = data_dir.join(MEMBER_ID_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let text = text.trim();
            let kept = u64::from_str_radix(text, 16).map_err(|source| StartError::NotMemberId {
                file: file.clone(),
                text: text.to_string(),
                source,
            })?;
            if kept != config.id.0 {
                tracing::info!(
                    id = %format!("{kept:x}"),
                    "keeping the member id this data directory was made with (the peer URL changed since)"
                );
                let name = &config.flags.name;
                if let Some(me) = config.members.iter_mut().find(|m| &m.name == name) {
                    me.id = NodeId(kept);
                }
                config.id = NodeId(kept);
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(|source| StartError::CreateDataDir {
                dir: data_dir.to_path_buf(),
                source,
            })?;
            let tmp = data_dir.join(format!("{MEMBER_ID_FILE}.tmp"));
            let write = || -> io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                std::io::Write::write_all(&mut f, format!("{:x}\n", config.id.0).as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &file)?;
                std::fs::File::open(data_dir)?.sync_all()
            };
            write().map_err(|source| StartError::WriteMemberId { file, source })
        }
        Err(source) => Err(StartError::ReadMemberId { file, source }),
    }
}

/// A running member.
pub struct Running {
    /// What the services share (node handle, store).
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    removed: watch::Receiver<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    transport: TcpTransport,
}

impl Running {
    /// Resolves once this member has learned that it was removed from the cluster (it has
    /// logged "this member has been removed from the cluster"); it should then be shut down,
    /// as etcd does.
    pub async fn removed(&self) {
        let mut removed = self.removed.clone();
        if removed.wait_for(|r| *r).await.is_err() {
            // The watcher ended without a removal (shutting down): never resolves.
            std::future::pending::<()>().await;
        }
    }

    /// Stops serving and shuts the node down. Client connections get 2 s to finish their
    /// requests and close; what still runs then is cut off.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.shared.node.shutdown().await;
        self.transport.shutdown().await;
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
        for mut t in self.tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
    }
}

/// The tasks a member runs, and the signal that stops them.
struct Tasks {
    handles: Vec<tokio::task::JoinHandle<()>>,
    stopped: watch::Receiver<bool>,
}

impl Tasks {
    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.handles.push(tokio::spawn(task));
    }
}

/// Starts a member and returns once it serves clients.
///
/// With `--initial-cluster-state existing` and no data yet, the member joins a running
/// cluster that already lists it (`MemberAdd`): it starts with an empty configuration, knows
/// the peers of `--initial-cluster`, and waits for the leader to send it the log (or a
/// snapshot).
pub async fn run(config: ServerConfig) -> Result<Running, StartError> {
    let mut config = config;
    let (log, snapshots) = open_storage(&mut config)?;
    let (transport, inbound, known) = start_transport(&config).await?;
    let store = Arc::new(RwLock::new(Store::default()));
    let (revisions_tx, revisions) = watch::channel(store.read().revision());
    let machine = KvStateMachine {
        store: Arc::clone(&store),
        peers: Some(PeerSync {
            transport: transport.clone(),
            me: config.id,
            known,
            grace: config.tick * config.election_ticks * REMOVED_PEER_GRACE_ELECTIONS,
        }),
        revisions: revisions_tx,
    };
    let (raft, driver) = raft_configs(&config);
    let (node, handle) = Node::new(raft, driver, log, machine, snapshots, transport.clone())
        .await
        .map_err(StartError::Node)?;
    let shared = Arc::new(Shared::new(handle, store, config.clone(), revisions));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Tasks {
        handles: Vec::new(),
        stopped,
    };
    tasks.spawn(drive(node, inbound, ticking(&config)));
    let removed = spawn_loops(&shared, &mut tasks);
    if let Some(addr) = config.metrics_addr {
        serve_metrics(&shared, addr, &mut tasks).await?;
    }
    serve_clients(&shared, &mut tasks).await?;
    tracing::info!(
        name = %config.flags.name,
        id = config.id.0,
        peer = %config.peer_addr,
        client = %config.client_addr,
        "ready to serve client requests"
    );
    Ok(Running {
        shared,
        stop,
        removed,
        tasks: tasks.handles,
        transport,
    })
}

/// Opens the log (a new member joining a running cluster starts with an empty
/// configuration) and the snapshot store, reporting what recovery found.
fn open_storage(config: &mut ServerConfig) -> Result<(LogFile, FileSnapshotStore), StartError> {
    let data_dir = config.flags.data_dir.clone();
    let log_dir = data_dir.join("log");
    let fresh = !log_dir.join("state").exists();
    adopt_member_id(config, &data_dir)?;
    let joining = fresh && config.flags.initial_cluster_state == ClusterState::Existing;
    let membership = if joining {
        tracing::info!(
            "joining a running cluster as a new member: waiting for the leader to send the log"
        );
        Membership::default()
    } else {
        Membership::with_voters(config.members.iter().map(|m| m.id))
    };
    let options = Options {
        membership,
        segment_bytes_max: config.flags.log_segment_bytes,
        ..Options::default()
    };
    let log = LogFile::open(&log_dir, options).map_err(|source| StartError::OpenLog {
        dir: log_dir.clone(),
        source,
    })?;
    if let Some(report) = &log.recovery().torn_tail {
        tracing::warn!(file = %report.0, offset = report.1, "cut a torn write off the log tail");
    }
    let snap_dir = data_dir.join("snap");
    let snapshots = FileSnapshotStore::open(&snap_dir, raftline_snapshot::Options::default())
        .map_err(|source| StartError::OpenSnapshots {
            dir: snap_dir.clone(),
            source,
        })?;
    for (path, why) in &snapshots.recovery().rejected {
        tracing::warn!(file = %path.display(), "ignored a damaged snapshot: {why}");
    }
    for path in &snapshots.recovery().removed {
        tracing::info!(file = %path.display(), "removed a snapshot file left by a crash");
    }
    Ok((log, snapshots))
}

/// Starts the peer transport with the peers of `--initial-cluster`; returns it, its inbound
/// messages and the peer addresses given to it.
async fn start_transport(
    config: &ServerConfig,
) -> Result<(TcpTransport, Inbound, HashMap<NodeId, String>), StartError> {
    let mut transport_config = TransportConfig::new(config.id, config.cluster_id, config.peer_addr);
    let mut known = HashMap::new();
    for m in config.members.iter().filter(|m| m.id != config.id) {
        let addr = peer_addr(&m.peer_url);
        known.insert(m.id, addr.clone());
        transport_config = transport_config.with_peer(m.id, addr);
    }
    let (transport, inbound) = TcpTransport::start(transport_config)
        .await
        .map_err(|source| StartError::ListenPeers {
            addr: config.peer_addr,
            source,
        })?;
    Ok((transport, inbound, known))
}

/// The messages peers send this member.
type Inbound = futures::channel::mpsc::Receiver<raftline_proto::Message>;

/// raftline-core's and the driver's settings from the flags.
fn raft_configs(config: &ServerConfig) -> (Config, DriverConfig) {
    let mut raft = Config::new(config.id);
    raft.election_ticks = config.election_ticks;
    raft.heartbeat_ticks = 1;
    raft.read_mode = config.read_mode;
    // A new seed at each start (forwarded proposals' ids derive from it): the clock and the pid.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let nanos = now.map_or(0, |d| d.as_nanos() as u64);
    raft.seed = config.id.0 ^ nanos ^ (u64::from(std::process::id()) << 32);
    raft.snapshot_chunk_bytes_max = config.flags.snapshot_chunk_bytes as usize;
    let driver = DriverConfig {
        snapshot_entries: config.flags.snapshot_count,
        snapshot_trailing_entries: config.flags.snapshot_catchup_entries,
        // A forwarded write waits as long as the client's request does: the request's own
        // deadline answers first, with etcd's "request timed out".
        forward_timeout_ticks: forward_timeout_ticks(config),
        addresses: config
            .members
            .iter()
            .map(|m| (m.id, m.name.clone()))
            .collect(),
        ..DriverConfig::default()
    };
    (raft, driver)
}

/// Ticks in a request timeout, plus one.
fn forward_timeout_ticks(config: &ServerConfig) -> u64 {
    let tick = config.tick.as_millis().max(1);
    (config.request_timeout.as_millis() / tick + 1) as u64
}

/// The tick interval and what it does with ticks the process missed (paused, descheduled).
/// With lease reads every missed tick is delivered at once on resume (`Burst`), and the
/// driver takes ticks before messages and requests: a leader paused past its lease must count
/// the time it missed before it answers another read from that lease. Otherwise missed ticks
/// are dropped (`Delay`): a member that was stopped does not time out its peers the moment it
/// resumes, before it has read what they sent meanwhile.
fn ticking(config: &ServerConfig) -> (Duration, tokio::time::MissedTickBehavior) {
    let missed = match config.read_mode {
        ReadMode::Lease(_) => tokio::time::MissedTickBehavior::Burst,
        ReadMode::ReadIndex => tokio::time::MissedTickBehavior::Delay,
    };
    (config.tick, missed)
}

/// Runs the raft node with a tick every `tick`; a storage failure stops the process
/// (fail-stop: such a member must not go on answering clients).
async fn drive<L, M, T, P>(
    node: Node<L, M, T, P>,
    inbound: Inbound,
    (tick, missed): (Duration, tokio::time::MissedTickBehavior),
) where
    L: raftline_core::driver::LogStore + Clone,
    M: StateMachine,
    T: raftline_core::driver::Transport,
    P: raftline_core::driver::SnapshotStore,
{
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(missed);
    let ticks = IntervalStream::new(interval).map(|_| ()).fuse();
    // The applier (applies, snapshots, restores) runs as its own task: writing a snapshot
    // of a large store takes another core, not the Ready loop's time.
    let (ready_loop, applier) = node.into_tasks(inbound, ticks);
    let applier = tokio::spawn(applier);
    let result = ready_loop.await;
    let _ = applier.await;
    if let Err(e) = result {
        tracing::error!("raft node stopped: {e}");
        if matches!(e, NodeError::Storage(_)) {
            std::process::exit(2);
        }
    }
}

/// Starts the background loops (publishing this member's addresses, automatic compaction,
/// lease expiry, promotion of learners, watching for this member's removal); returns what
/// says that this member was removed.
fn spawn_loops(shared: &Arc<Shared>, tasks: &mut Tasks) -> watch::Receiver<bool> {
    let stopped = tasks.stopped.clone();
    tasks.spawn(publish_loop(Arc::clone(shared), stopped.clone()));
    tasks.spawn(crate::server::compaction::compaction_loop(
        Arc::clone(shared),
        stopped.clone(),
    ));
    tasks.spawn(crate::server::lease::expiry_loop(
        Arc::clone(shared),
        stopped.clone(),
    ));
    tasks.spawn(promote_loop(Arc::clone(shared), stopped.clone()));
    let (removed_tx, removed) = watch::channel(false);
    tasks.spawn(watch_removed(Arc::clone(shared), removed_tx, stopped));
    removed
}

/// Serves Prometheus metrics, `/health` and `/version` on `addr`.
async fn serve_metrics(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    tasks: &mut Tasks,
) -> Result<(), StartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::ListenMetrics { addr, source })?;
    let node = shared.node.clone();
    let stopped = tasks.stopped.clone();
    tasks.spawn(crate::metrics::serve(
        listener,
        move || node.status(),
        stopped,
    ));
    tracing::info!(addr = %addr, "serving metrics at /metrics");
    Ok(())
}

/// Serves the gRPC services on the client URL until stopped.
async fn serve_clients(shared: &Arc<Shared>, tasks: &mut Tasks) -> Result<(), StartError> {
    let addr = shared.config.client_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::ListenClients { addr, source })?;
    // Client sockets get TCP_NODELAY: without it a small response can wait ~40 ms for
    // Nagle's algorithm (tonic does not set it on an incoming stream we hand it). Each goes
    // through `AuthorityFix`, which makes requests whose `:authority` is a URL acceptable to
    // the HTTP/2 server (etcdctl's `http://` endpoints; see `server::authority`).
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.map(|stream| {
            let _ = stream.set_nodelay(true);
            AuthorityFix::new(stream)
        })
    });
    // gRPC's health service: SERVING while a leader is known (`server::health`).
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, is_healthy(&shared.node.status())).await;
    let stopped = tasks.stopped.clone();
    tasks.spawn(report_health(
        shared.node.clone(),
        health_reporter,
        shared.config.tick,
        stopped.clone(),
    ));
    let s = || Arc::clone(shared);
    // Unknown paths answer Unimplemented naming the path (`server::paths`).
    let router = tonic::transport::Server::builder()
        .layer(NameUnservedLayer)
        .add_service(health_service)
        .add_service(auth_server::AuthServer::new(AuthService))
        .add_service(kv_server::KvServer::new(KvService(s())))
        .add_service(watch_server::WatchServer::new(WatchService(s())))
        .add_service(lease_server::LeaseServer::new(LeaseService(s())))
        .add_service(maintenance_server::MaintenanceServer::new(
            MaintenanceService(s()),
        ))
        .add_service(cluster_server::ClusterServer::new(ClusterService(s())));
    let mut stopped = stopped;
    tasks.spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!("client server stopped: {e}");
        }
    });
    Ok(())
}

/// As the leader, promotes the learners added as voters, every [`PROMOTE_INTERVAL`] (see
/// [`crate::server`]). One round is bounded by the catch-up rounds of each promotion.
async fn promote_loop(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROMOTE_INTERVAL) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        tokio::select! {
            () = shared.promote_waiting_learners() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// Watches for this member's removal from the cluster (raftline-core reports it a few election
/// timeouts after the member holds a configuration without itself); then logs it and says
/// so through `removed`.
async fn watch_removed(
    shared: Arc<Shared>,
    removed: watch::Sender<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut watch = shared.node.watch();
    loop {
        tokio::select! {
            seen = watch.wait_for(|s| s.removed) => {
                if seen.is_err() {
                    return; // the node stopped
                }
            }
            _ = stopped.wait_for(|s| *s) => return,
        }
        if shared.node.status().removed {
            tracing::warn!(
                id = %format!("{:x}", shared.config.id.0),
                "this member has been removed from the cluster; shutting down (its data directory is of no further use)"
            );
            let _ = removed.send(true);
            return;
        }
    }
}

/// Publishes this member's addresses through raft until the store has them, so that
/// followers can forward writes to whichever member leads.
async fn publish_loop(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let me = MemberInfo {
        id: shared.config.id.0,
        name: shared.config.flags.name.clone(),
        peer_urls: vec![shared
            .config
            .members
            .iter()
            .find(|m| m.name == shared.config.flags.name)
            .map(|m| m.peer_url.clone())
            .unwrap_or_default()],
        client_urls: vec![shared.config.client_url.clone()],
    };
    loop {
        // The record's peer URLs are the cluster's (MemberAdd, MemberUpdate): compare the
        // rest.
        let published = shared
            .store
            .read()
            .members()
            .get(&me.id)
            .is_some_and(|r| r.name == me.name && r.client_urls == me.client_urls);
        if !published {
            if let Err(e) = shared.execute(Command::Publish(me.clone())).await {
                tracing::debug!("publishing this member's addresses: {e}");
            }
        }
        let pause = if published {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(100)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}
