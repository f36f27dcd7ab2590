//! Starting a member: the log, the transport, the raft driver, the gRPC server.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::RwLock;
use raft_core::driver::{
    DriverConfig, Node, NodeError, SnapshotSink, SnapshotSource, StateMachine,
};
use raft_core::Config;
use raft_log_file::{LogFile, Options};
use raft_proto::{LogIndex, Membership};
use raft_snapshot::FileSnapshotStore;
use raft_transport_tcp::{TcpTransport, TransportConfig};
use tokio::sync::watch;
use tokio_stream::wrappers::IntervalStream;

use crate::config::{ClusterState, ServerConfig};
use crate::proto::etcdserverpb::{cluster_server, kv_server, maintenance_server};
use crate::proto::raftkv::internal_server;
use crate::server::{ClusterService, InternalService, KvService, MaintenanceService, Shared};
use crate::snapshot::{read_store_snapshot, write_store_snapshot};
use crate::store::{Command, MemberInfo, Outcome, Store};

/// The state machine: decodes each committed command and applies it to the shared store.
struct KvStateMachine {
    store: Arc<RwLock<Store>>,
}

#[async_trait]
impl StateMachine for KvStateMachine {
    type Response = Outcome;

    async fn apply(&mut self, _index: LogIndex, command: &Bytes) -> Outcome {
        match postcard::from_bytes::<Command>(command) {
            Ok(c) => self.store.write().apply(c),
            Err(e) => Outcome::Rejected(format!("undecodable command: {e}")),
        }
    }

    async fn snapshot(&mut self, sink: &mut SnapshotSink<'_>) -> std::io::Result<()> {
        write_store_snapshot(&self.store, sink).await
    }

    async fn restore(&mut self, source: &mut SnapshotSource<'_>) -> std::io::Result<()> {
        let restored = read_store_snapshot(source).await?;
        *self.store.write() = restored;
        Ok(())
    }
}

/// A running member.
pub struct Running {
    /// What the services share (node handle, store).
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    transport: TcpTransport,
}

impl Running {
    /// Stops serving and shuts the node down.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.shared.node.shutdown().await;
        self.transport.shutdown().await;
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts a member and returns once it serves clients.
pub async fn run(config: ServerConfig) -> Result<Running, String> {
    let data_dir = &config.flags.data_dir;
    let log_dir = data_dir.join("log");
    let fresh = !log_dir.join("state").exists();
    if fresh && config.flags.initial_cluster_state == ClusterState::Existing {
        return Err(format!(
            "--initial-cluster-state existing, but {} holds no member data; joining a running cluster as a new member arrives with membership changes",
            data_dir.display()
        ));
    }
    let membership = Membership::with_voters(config.members.iter().map(|m| m.id));
    let log = LogFile::open(
        &log_dir,
        Options {
            membership,
            segment_bytes_max: config.flags.log_segment_bytes,
            ..Options::default()
        },
    )
    .map_err(|e| format!("cannot open the log: {e}"))?;
    if let Some(report) = &log.recovery().torn_tail {
        tracing::warn!(file = %report.0, offset = report.1, "cut a torn write off the log tail");
    }
    let snap_dir = data_dir.join("snap");
    let snapshots = FileSnapshotStore::open(&snap_dir, raft_snapshot::Options::default())
        .map_err(|e| format!("cannot open the snapshot store: {e}"))?;
    for (path, why) in &snapshots.recovery().rejected {
        tracing::warn!(file = %path.display(), "ignored a damaged snapshot: {why}");
    }
    for path in &snapshots.recovery().removed {
        tracing::info!(file = %path.display(), "removed a snapshot file left by a crash");
    }

    let mut transport_config = TransportConfig::new(config.id, config.cluster_id, config.peer_addr);
    for m in config.members.iter().filter(|m| m.id != config.id) {
        let addr = m
            .peer_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        transport_config = transport_config.with_peer(m.id, addr);
    }
    let (transport, inbound) = TcpTransport::start(transport_config)
        .await
        .map_err(|e| format!("cannot listen for peers on {}: {e}", config.peer_addr))?;

    let store = Arc::new(RwLock::new(Store::default()));
    let mut raft = Config::new(config.id);
    raft.election_ticks = config.election_ticks;
    raft.heartbeat_ticks = 1;
    raft.seed = config.id.0 ^ std::process::id() as u64;
    raft.snapshot_chunk_bytes_max = config.flags.snapshot_chunk_bytes as usize;
    let driver = DriverConfig {
        snapshot_entries: config.flags.snapshot_count,
        snapshot_trailing_entries: config.flags.snapshot_catchup_entries,
        addresses: config
            .members
            .iter()
            .map(|m| (m.id, m.name.clone()))
            .collect(),
        ..DriverConfig::default()
    };
    let (node, handle) = Node::new(
        raft,
        driver,
        log,
        KvStateMachine {
            store: Arc::clone(&store),
        },
        snapshots,
        transport.clone(),
    )
    .await
    .map_err(|e| format!("cannot start raft: {e}"))?;

    let shared = Arc::new(Shared::new(handle, Arc::clone(&store), config.clone()));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();

    let mut interval = tokio::time::interval(config.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ticks = IntervalStream::new(interval).map(|_| ()).fuse();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = node.run(inbound, ticks).await {
            tracing::error!("raft node stopped: {e}");
            if matches!(e, NodeError::Storage(_)) {
                // Fail-stop: a storage failure must not leave a member answering clients.
                std::process::exit(2);
            }
        }
    }));

    tasks.push(tokio::spawn(publish_loop(
        Arc::clone(&shared),
        stopped.clone(),
    )));

    if let Some(addr) = config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
        let node = shared.node.clone();
        tasks.push(tokio::spawn(crate::metrics::serve(
            listener,
            move || node.status(),
            stopped.clone(),
        )));
        tracing::info!(addr = %addr, "serving metrics at /metrics");
    }

    let listener = tokio::net::TcpListener::bind(config.client_addr)
        .await
        .map_err(|e| format!("cannot listen for clients on {}: {e}", config.client_addr))?;
    // Client sockets get TCP_NODELAY: without it a small response can wait ~40 ms for
    // Nagle's algorithm (tonic does not set it on an incoming stream we hand it).
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    let router = tonic::transport::Server::builder()
        .add_service(kv_server::KvServer::new(KvService(Arc::clone(&shared))))
        .add_service(maintenance_server::MaintenanceServer::new(
            MaintenanceService(Arc::clone(&shared)),
        ))
        .add_service(cluster_server::ClusterServer::new(ClusterService(
            Arc::clone(&shared),
        )))
        .add_service(internal_server::InternalServer::new(InternalService(
            Arc::clone(&shared),
        )));
    let mut stopped_server = stopped;
    tasks.push(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped_server.wait_for(|s| *s).await;
        };
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!("client server stopped: {e}");
        }
    }));
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
        tasks,
        transport,
    })
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
            .find(|m| m.id == shared.config.id)
            .map(|m| m.peer_url.clone())
            .unwrap_or_default()],
        client_urls: vec![shared.config.client_url.clone()],
    };
    loop {
        let published = shared.store.read().members().get(&me.id) == Some(&me);
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
