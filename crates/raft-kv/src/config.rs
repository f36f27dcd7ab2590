//! Command-line flags, in the style of etcd's, and the cluster they describe.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use raftline_core::{Lease, ReadMode};
use raftline_proto::NodeId;

/// Whether this member starts a new cluster or joins an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `--initial-cluster`.
    New,
    /// Join a running cluster that already lists this member (`etcdctl member add` first), or
    /// restart on a data directory that has joined. A new member starts with an empty
    /// configuration and learns the cluster's from the leader.
    Existing,
}

/// A replicated key-value server speaking a subset of etcd's v3 gRPC API.
#[derive(Clone, Debug, Parser)]
#[command(name = "raft-kv", version)]
pub struct Flags {
    /// Human-readable name of this member; must appear in --initial-cluster.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Directory for the raft log and state.
    #[arg(long, default_value = "default.raft-kv")]
    pub data_dir: PathBuf,
    /// URL to listen on for peer traffic (http://host:port).
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    pub listen_peer_urls: String,
    /// URL to listen on for client traffic (http://host:port).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,
    /// Client URL to advertise to the other members (defaults to --listen-client-urls).
    #[arg(long)]
    pub advertise_client_urls: Option<String>,
    /// Peer URL to advertise (defaults to --listen-peer-urls).
    #[arg(long)]
    pub initial_advertise_peer_urls: Option<String>,
    /// Every member of the initial cluster: name=peer-url,...
    #[arg(long, default_value = "default=http://127.0.0.1:2380")]
    pub initial_cluster: String,
    /// `new` to bootstrap; `existing` to join a running cluster after `etcdctl member add`
    /// (with an empty data directory), or to restart on a data directory that has joined.
    #[arg(long, value_enum, default_value_t = ClusterState::New)]
    pub initial_cluster_state: ClusterState,
    /// A token that tells clusters apart: the cluster id derives from it, and each member's
    /// id from it and the member's peer URL.
    #[arg(long, default_value = "raft-kv-cluster")]
    pub initial_cluster_token: String,
    /// Time of a heartbeat (one raft tick) in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Election timeout in milliseconds (a multiple of the heartbeat interval).
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// How linearizable reads (`Range` without `serializable`, read-only `Txn`) are served:
    /// `read-index` (default, as etcd: a heartbeat round to a majority per read) or `lease`
    /// (the leader answers from its state while it holds a LeaseGuard lease; assumes every
    /// member's tick clock runs within 10% of the others', pauses included). Every member
    /// must use the same mode.
    #[arg(long, value_enum, default_value_t = ReadModeFlag::ReadIndex)]
    pub read_mode: ReadModeFlag,
    /// How long a client request may wait for commit before it fails with Unavailable, in ms.
    #[arg(long, default_value_t = 5000)]
    pub request_timeout: u64,
    /// Applied entries between snapshots: a snapshot is taken whenever the applied index
    /// reaches a multiple of this, and the log is compacted behind it. The default is etcd's
    /// (100,000 since etcd 3.2): a snapshot encodes the whole store, so its cost per write is
    /// the store's size divided by this; at 10,000 it took a quarter of a member's CPU under
    /// load with ~100 MB of keys and values (BENCHMARKS.md, "where the time goes").
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_count: u64,
    /// Entries kept in the log behind a snapshot, so that a slightly lagging follower catches
    /// up from the log rather than by snapshot (etcd's
    /// --experimental-snapshot-catchup-entries).
    #[arg(long, default_value_t = 5_000)]
    pub snapshot_catchup_entries: u64,
    /// Raise the NOSPACE alarm, and refuse writes that add data, once the store's history
    /// takes more than this many bytes (etcd's flag; default 2 GiB, as etcd's).
    #[arg(long, default_value_t = 2 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub quota_backend_bytes: u64,
    /// Automatic compaction: `periodic` keeps the history of the last
    /// --auto-compaction-retention (a duration such as `1h`, `30m`, `90s`, or hours);
    /// `revision` keeps the last --auto-compaction-retention revisions (checked every 5
    /// minutes, as etcd does).
    #[arg(long, value_enum, default_value_t = CompactionMode::Periodic)]
    pub auto_compaction_mode: CompactionMode,
    /// What automatic compaction keeps (see --auto-compaction-mode); `0` turns it off.
    #[arg(long, default_value = "0")]
    pub auto_compaction_retention: String,
    /// The most operations in a transaction's branch (etcd's --max-txn-ops).
    #[arg(long, default_value_t = crate::store::txn::TXN_OPS_MAX as u64, value_parser = clap::value_parser!(u64).range(1..=(crate::store::txn::TXN_OPS_MAX as u64)))]
    pub max_txn_ops: u64,
    /// The most bytes of snapshot data in one chunk sent to a follower.
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..=(8 << 20)))]
    pub snapshot_chunk_bytes: u64,
    /// URL to serve Prometheus metrics on at `GET /metrics` (http://host:port, plain HTTP);
    /// no metrics listener when not given.
    #[arg(long)]
    pub listen_metrics_urls: Option<String>,
    /// The largest size the log's segment files are preallocated to, in bytes: segments start
    /// at raftline-log's `segment_bytes_initial` (1 MiB, or this size if smaller) and double
    /// up to it. Hidden: for tests that want many small segments; the default is
    /// raftline-log's 64 MiB.
    #[arg(long, hide = true, default_value_t = raftline_log::Options::default().segment_bytes_max, value_parser = clap::value_parser!(u64).range(4096..))]
    pub log_segment_bytes: u64,
    /// Log level: error, warn, info or debug.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// One member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    /// Its raft id, derived from its peer URL and the cluster token ([`member_id`]).
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its peer URL.
    pub peer_url: String,
}

/// Everything the flags say, checked.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The flags as given.
    pub flags: Flags,
    /// This member's id.
    pub id: NodeId,
    /// The cluster id, derived from the cluster token alone ([`cluster_id`]), so that a member
    /// joining later computes the same one.
    pub cluster_id: u64,
    /// The initial members, in --initial-cluster order.
    pub members: Vec<InitialMember>,
    /// Where peers are served.
    pub peer_addr: SocketAddr,
    /// Where clients are served.
    pub client_addr: SocketAddr,
    /// The client URL advertised.
    pub client_url: String,
    /// Where Prometheus metrics are served, if anywhere (`--listen-metrics-urls`).
    pub metrics_addr: Option<SocketAddr>,
    /// One raft tick.
    pub tick: Duration,
    /// Ticks in an election timeout.
    pub election_ticks: u32,
    /// The client request deadline.
    pub request_timeout: Duration,
    /// What automatic compaction keeps.
    pub retention: Retention,
    /// How the core serves linearizable reads.
    pub read_mode: ReadMode,
}

/// The clock-drift bound of `--read-mode lease`: 10%, in millionths.
pub const LEASE_DRIFT_PPM: u32 = 100_000;

/// The values of `--read-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReadModeFlag {
    /// A heartbeat round per read (ReadIndex).
    ReadIndex,
    /// Lease reads (LeaseGuard): the longest lease whose wait, scaled by the drift bound
    /// ([`LEASE_DRIFT_PPM`]), fits the election timeout.
    Lease,
}

impl ReadModeFlag {
    /// The core's read mode for an election timeout of `election_ticks` (at least 5, as
    /// [`ServerConfig::from_flags`] checks).
    pub fn read_mode(self, election_ticks: u32) -> ReadMode {
        match self {
            ReadModeFlag::ReadIndex => ReadMode::ReadIndex,
            ReadModeFlag::Lease => ReadMode::Lease(
                Lease::within_election(election_ticks, LEASE_DRIFT_PPM)
                    .expect("an election timeout of 5 ticks or more fits a lease"),
            ),
        }
    }
}

/// FNV-1a, 64 bits: a stable id from names and URLs (never 0).
pub fn stable_id(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    h.max(1)
}

/// The raft id of the member with peer URL `peer_url` in the cluster of token `token`: what
/// every member, and the leader handling `MemberAdd` (which gets only peer URLs), computes
/// alike. The id stays the member's after a `MemberUpdate` changes its URL: the member keeps
/// it in its data directory.
pub fn member_id(peer_url: &str, token: &str) -> NodeId {
    NodeId(stable_id(&[peer_url, token]))
}

/// The id of the cluster of token `token`.
pub fn cluster_id(token: &str) -> u64 {
    stable_id(&[token])
}

/// Why the flags do not describe a member that can start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A `--listen-*-urls` flag gives more than one URL.
    #[error("only one URL in {flag} is supported, not {urls:?}")]
    ManyUrls {
        /// The flag.
        flag: &'static str,
        /// What it gives.
        urls: String,
    },
    /// A URL is not `http://` (TLS is not supported).
    #[error("{flag}: {url:?} must start with http:// (TLS is not supported)")]
    NotHttp {
        /// The flag (or request field) giving the URL.
        flag: &'static str,
        /// The URL.
        url: String,
    },
    /// A URL is not `http://ip:port`.
    #[error("{flag}: {url:?} is not http://ip:port")]
    NotIpPort {
        /// The flag (or request field) giving the URL.
        flag: &'static str,
        /// The URL.
        url: String,
        /// Why its address does not parse.
        #[source]
        source: std::net::AddrParseError,
    },
    /// An `--initial-cluster` entry is not `name=url`.
    #[error("--initial-cluster: {entry:?} is not name=url")]
    NotNameUrl {
        /// The entry.
        entry: String,
    },
    /// `--initial-cluster` names a member twice.
    #[error("--initial-cluster names {name:?} twice")]
    NameTwice {
        /// The name.
        name: String,
    },
    /// `--initial-cluster` gives a peer URL twice.
    #[error("--initial-cluster gives the peer URL {url} twice")]
    PeerUrlTwice {
        /// The URL.
        url: String,
    },
    /// `--name` is not in `--initial-cluster`.
    #[error("--name {name:?} does not appear in --initial-cluster {initial_cluster:?}")]
    NameNotInCluster {
        /// `--name`.
        name: String,
        /// `--initial-cluster`.
        initial_cluster: String,
    },
    /// `--initial-cluster` gives this member another peer URL than the one it advertises.
    #[error(
        "--initial-cluster gives {name} the peer URL {listed}, but it advertises {advertised}"
    )]
    AdvertisedPeerUrl {
        /// This member's name.
        name: String,
        /// Its peer URL in `--initial-cluster`.
        listed: String,
        /// `--initial-advertise-peer-urls` (or `--listen-peer-urls`).
        advertised: String,
    },
    /// `--log-level` is not a level.
    #[error("--log-level {level:?}: use error, warn, info, debug or trace")]
    LogLevel {
        /// What was given.
        level: String,
    },
    /// `--request-timeout 0`.
    #[error("--request-timeout must be above 0")]
    RequestTimeout,
    /// The election timeout is under 5 heartbeats (or one of them is 0).
    #[error(
        "--election-timeout must be at least 5 times --heartbeat-interval (and both above 0): \
         --election-timeout {election_timeout}, --heartbeat-interval {heartbeat_interval}"
    )]
    ElectionTimeout {
        /// `--election-timeout`, in ms.
        election_timeout: u64,
        /// `--heartbeat-interval`, in ms.
        heartbeat_interval: u64,
    },
    /// `--auto-compaction-retention` is not what `--auto-compaction-mode` takes.
    #[error(
        "invalid --auto-compaction-retention {text:?} for --auto-compaction-mode {mode} \
         (it takes {})",
        mode.retention_syntax()
    )]
    Retention {
        /// The mode.
        mode: CompactionMode,
        /// `--auto-compaction-retention`.
        text: String,
    },
}

/// Parses `http://host:port` into a socket address; `flag` names where the URL comes from.
pub fn parse_url(flag: &'static str, url: &str) -> Result<SocketAddr, ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ConfigError::NotHttp {
            flag,
            url: url.to_string(),
        })?;
    let rest = rest.trim_end_matches('/');
    rest.parse().map_err(|source| ConfigError::NotIpPort {
        flag,
        url: url.to_string(),
        source,
    })
}

impl ServerConfig {
    /// Checks the flags and derives ids and addresses.
    pub fn from_flags(flags: Flags) -> Result<ServerConfig, ConfigError> {
        for (flag, urls) in [
            ("--listen-peer-urls", &flags.listen_peer_urls),
            ("--listen-client-urls", &flags.listen_client_urls),
        ] {
            if urls.contains(',') {
                return Err(ConfigError::ManyUrls {
                    flag,
                    urls: urls.clone(),
                });
            }
        }
        let peer_addr = parse_url("--listen-peer-urls", &flags.listen_peer_urls)?;
        let client_addr = parse_url("--listen-client-urls", &flags.listen_client_urls)?;
        let client_url = flags
            .advertise_client_urls
            .clone()
            .unwrap_or_else(|| flags.listen_client_urls.clone());
        parse_url("--advertise-client-urls", &client_url)?;
        let metrics_addr = match &flags.listen_metrics_urls {
            Some(url) if url.contains(',') => {
                return Err(ConfigError::ManyUrls {
                    flag: "--listen-metrics-urls",
                    urls: url.clone(),
                })
            }
            Some(url) => Some(parse_url("--listen-metrics-urls", url)?),
            None => None,
        };
        let mut members = Vec::new();
        for part in flags.initial_cluster.split(',').filter(|p| !p.is_empty()) {
            let (name, url) = part
                .split_once('=')
                .ok_or_else(|| ConfigError::NotNameUrl {
                    entry: part.to_string(),
                })?;
            parse_url("--initial-cluster", url)?;
            // etcdctl's `member add` prints unstarted members with an empty name: allow those.
            if !name.is_empty() && members.iter().any(|m: &InitialMember| m.name == name) {
                return Err(ConfigError::NameTwice {
                    name: name.to_string(),
                });
            }
            if members.iter().any(|m: &InitialMember| m.peer_url == url) {
                return Err(ConfigError::PeerUrlTwice {
                    url: url.to_string(),
                });
            }
            members.push(InitialMember {
                id: member_id(url, &flags.initial_cluster_token),
                name: name.to_string(),
                peer_url: url.to_string(),
            });
        }
        let me = members
            .iter()
            .find(|m| m.name == flags.name)
            .ok_or_else(|| ConfigError::NameNotInCluster {
                name: flags.name.clone(),
                initial_cluster: flags.initial_cluster.clone(),
            })?;
        let advertised = flags
            .initial_advertise_peer_urls
            .clone()
            .unwrap_or_else(|| flags.listen_peer_urls.clone());
        if advertised != me.peer_url {
            return Err(ConfigError::AdvertisedPeerUrl {
                name: me.name.clone(),
                listed: me.peer_url.clone(),
                advertised,
            });
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&flags.log_level.as_str()) {
            return Err(ConfigError::LogLevel {
                level: flags.log_level.clone(),
            });
        }
        if flags.request_timeout == 0 {
            return Err(ConfigError::RequestTimeout);
        }
        if flags.heartbeat_interval == 0 || flags.election_timeout < 5 * flags.heartbeat_interval {
            return Err(ConfigError::ElectionTimeout {
                election_timeout: flags.election_timeout,
                heartbeat_interval: flags.heartbeat_interval,
            });
        }
        let retention =
            parse_retention(flags.auto_compaction_mode, &flags.auto_compaction_retention)?;
        let election_ticks = (flags.election_timeout / flags.heartbeat_interval) as u32;
        Ok(ServerConfig {
            retention,
            read_mode: flags.read_mode.read_mode(election_ticks),
            id: me.id,
            cluster_id: cluster_id(&flags.initial_cluster_token),
            peer_addr,
            client_addr,
            client_url,
            metrics_addr,
            tick: Duration::from_millis(flags.heartbeat_interval),
            election_ticks,
            request_timeout: Duration::from_millis(flags.request_timeout),
            members,
            flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_mode_takes_the_longest_lease_that_fits_the_election_timeout() {
        let lease = |lease_ticks| {
            ReadMode::Lease(Lease {
                lease_ticks,
                drift_ppm: LEASE_DRIFT_PPM,
            })
        };
        assert_eq!(ReadModeFlag::Lease.read_mode(10), lease(8));
        assert_eq!(ReadModeFlag::Lease.read_mode(5), lease(4));
        assert_eq!(ReadModeFlag::ReadIndex.read_mode(5), ReadMode::ReadIndex);
    }

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("raft-kv").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn a_three_member_cluster_parses() {
        let f = flags(&[
            "--name",
            "n2",
            "--listen-peer-urls",
            "http://127.0.0.1:22380",
            "--listen-client-urls",
            "http://127.0.0.1:22379",
            "--initial-cluster",
            "n1=http://127.0.0.1:12380,n2=http://127.0.0.1:22380,n3=http://127.0.0.1:32380",
        ]);
        let c = ServerConfig::from_flags(f).unwrap();
        assert_eq!(c.members.len(), 3);
        assert_eq!(c.id, c.members[1].id);
        assert_eq!(c.election_ticks, 10);
        assert_eq!(c.read_mode, ReadMode::ReadIndex);
        assert_ne!(c.members[0].id, c.members[1].id);
    }

    #[test]
    fn bad_flags_are_explained() {
        let err = |args: &[&str]| ServerConfig::from_flags(flags(args)).unwrap_err();
        let e = err(&["--name", "x"]);
        assert!(matches!(&e, ConfigError::NameNotInCluster { name, .. } if name == "x"));
        assert!(e.to_string().contains("does not appear"));
        let e = err(&["--listen-client-urls", "https://127.0.0.1:1"]);
        assert!(matches!(
            e,
            ConfigError::NotHttp {
                flag: "--listen-client-urls",
                ..
            }
        ));
        assert!(e.to_string().contains("TLS"));
        let e = err(&["--initial-cluster", "default"]);
        assert!(matches!(&e, ConfigError::NotNameUrl { entry } if entry == "default"));
        assert!(e.to_string().contains("name=url"));
        assert!(Flags::try_parse_from(["raft-kv", "--no-such-flag"]).is_err());
        let e = err(&["--listen-metrics-urls", "127.0.0.1:2381"]);
        assert!(e.to_string().contains("--listen-metrics-urls"));
        // The address's own error is the source, not flattened into the message.
        let e = err(&["--listen-peer-urls", "http://localhost:2380"]);
        assert!(matches!(
            e,
            ConfigError::NotIpPort {
                flag: "--listen-peer-urls",
                ..
            }
        ));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            crate::error_chain(&e),
            "--listen-peer-urls: \"http://localhost:2380\" is not http://ip:port: \
             invalid socket address syntax"
        );
        let e = err(&[
            "--listen-peer-urls",
            "http://127.0.0.1:1,http://127.0.0.1:2",
        ]);
        assert!(matches!(
            e,
            ConfigError::ManyUrls {
                flag: "--listen-peer-urls",
                ..
            }
        ));
        let e = err(&["--heartbeat-interval", "50", "--election-timeout", "100"]);
        assert_eq!(
            e,
            ConfigError::ElectionTimeout {
                election_timeout: 100,
                heartbeat_interval: 50
            }
        );
    }

    #[test]
    fn ids_come_from_the_peer_url_and_the_token_only() {
        let three = "n1=http://127.0.0.1:12380,n2=http://127.0.0.1:22380,n3=http://127.0.0.1:32380";
        let c = ServerConfig::from_flags(flags(&[
            "--name",
            "n1",
            "--listen-peer-urls",
            "http://127.0.0.1:12380",
            "--initial-cluster",
            three,
        ]))
        .unwrap();
        // A member joining later, under another name and with a longer --initial-cluster (as
        // `etcdctl member add` prints it, unstarted members without a name), computes the same
        // ids for the same peer URLs, and the same cluster id.
        let joined = ServerConfig::from_flags(flags(&[
            "--name",
            "n4",
            "--listen-peer-urls",
            "http://127.0.0.1:42380",
            "--initial-cluster-state",
            "existing",
            "--initial-cluster",
            "other=http://127.0.0.1:12380,=http://127.0.0.1:22380,=http://127.0.0.1:52380,\
             n4=http://127.0.0.1:42380,n3=http://127.0.0.1:32380",
        ]))
        .unwrap();
        assert_eq!(joined.cluster_id, c.cluster_id);
        assert_eq!(joined.members[0].id, c.members[0].id);
        assert_eq!(joined.members[1].id, c.members[1].id);
        assert_eq!(joined.members[4].id, c.members[2].id);
        assert_eq!(
            joined.id,
            member_id("http://127.0.0.1:42380", "raft-kv-cluster")
        );
        assert_eq!(c.id, member_id("http://127.0.0.1:12380", "raft-kv-cluster"));
        // Another token: other ids, another cluster.
        let other = ServerConfig::from_flags(flags(&[
            "--name",
            "n1",
            "--listen-peer-urls",
            "http://127.0.0.1:12380",
            "--initial-cluster",
            three,
            "--initial-cluster-token",
            "another",
        ]))
        .unwrap();
        assert_ne!(other.id, c.id);
        assert_ne!(other.cluster_id, c.cluster_id);
    }

    #[test]
    fn the_initial_cluster_must_be_consistent() {
        let err = |args: &[&str]| ServerConfig::from_flags(flags(args)).unwrap_err();
        assert!(matches!(
            err(&[
                "--initial-cluster",
                "default=http://127.0.0.1:2380,other=http://127.0.0.1:2380",
            ]),
            ConfigError::PeerUrlTwice { url } if url == "http://127.0.0.1:2380"
        ));
        let e = err(&[
            "--initial-cluster",
            "default=http://127.0.0.1:2380,default=http://127.0.0.1:3380",
        ]);
        assert!(e.to_string().contains("names \"default\" twice"));
        // The member's own entry must be the URL it advertises.
        assert!(err(&["--initial-cluster", "default=http://127.0.0.1:3380"])
            .to_string()
            .contains("but it advertises http://127.0.0.1:2380"));
        assert!(matches!(
            err(&[
                "--initial-cluster",
                "default=http://127.0.0.1:3380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:4380",
            ]),
            ConfigError::AdvertisedPeerUrl { listed, advertised, .. }
                if listed == "http://127.0.0.1:3380" && advertised == "http://127.0.0.1:4380"
        ));
    }

    #[test]
    fn the_metrics_listener_is_optional() {
        let c = ServerConfig::from_flags(flags(&[])).unwrap();
        assert_eq!(c.metrics_addr, None);
        let f = flags(&["--listen-metrics-urls", "http://127.0.0.1:2381"]);
        let c = ServerConfig::from_flags(f).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:2381".parse().unwrap()));
    }
}

/// etcd's automatic compaction modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompactionMode {
    /// Keep a span of time.
    Periodic,
    /// Keep a number of revisions.
    Revision,
}

impl CompactionMode {
    /// What `--auto-compaction-retention` takes in this mode.
    fn retention_syntax(self) -> &'static str {
        match self {
            CompactionMode::Periodic => "a duration such as 90s, 30m or 2h, or a number of hours",
            CompactionMode::Revision => "a number of revisions",
        }
    }
}

impl std::fmt::Display for CompactionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CompactionMode::Periodic => "periodic",
            CompactionMode::Revision => "revision",
        })
    }
}

/// What automatic compaction keeps, from `--auto-compaction-mode` and
/// `--auto-compaction-retention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// No automatic compaction.
    Off,
    /// The history of this long.
    Period(Duration),
    /// This many revisions.
    Revisions(i64),
}

/// Parses `--auto-compaction-retention` for a mode, as etcd does: a bare number means hours
/// in periodic mode and revisions in revision mode; periodic also takes `90s`, `30m`, `2h`.
pub fn parse_retention(mode: CompactionMode, text: &str) -> Result<Retention, ConfigError> {
    let bad = || ConfigError::Retention {
        mode,
        text: text.to_string(),
    };
    let text = text.trim();
    if mode == CompactionMode::Revision {
        let n: i64 = text.parse().map_err(|_| bad())?;
        return Ok(if n <= 0 {
            Retention::Off
        } else {
            Retention::Revisions(n)
        });
    }
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "h"),
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Ok(if secs == 0.0 {
        Retention::Off
    } else {
        Retention::Period(Duration::from_secs_f64(secs))
    })
}

#[cfg(test)]
mod retention_tests {
    use super::*;

    #[test]
    fn retention_parses_as_etcd_reads_it() {
        let p = |t| parse_retention(CompactionMode::Periodic, t);
        assert_eq!(p("0"), Ok(Retention::Off));
        assert_eq!(p("1"), Ok(Retention::Period(Duration::from_secs(3600))));
        assert_eq!(p("30m"), Ok(Retention::Period(Duration::from_secs(1800))));
        assert_eq!(p("90s"), Ok(Retention::Period(Duration::from_secs(90))));
        assert!(p("5d").is_err() && p("-1h").is_err() && p("x").is_err());
        let r = |t| parse_retention(CompactionMode::Revision, t);
        assert_eq!(r("1000"), Ok(Retention::Revisions(1000)));
        assert_eq!(r("0"), Ok(Retention::Off));
        assert_eq!(
            r("10m"),
            Err(ConfigError::Retention {
                mode: CompactionMode::Revision,
                text: "10m".into()
            })
        );
    }
}
