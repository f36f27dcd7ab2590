//! raft-kv: a replicated key-value store on raftline-core, serving a subset of etcd's v3 gRPC API
//! so that etcdctl and etcd's client libraries work against it.
//!
//! This package (`raftline-kv`) builds the `raft-kv` server binary (`cargo install
//! raftline-kv` installs it; `raft-kv --help` lists its etcd-style flags). This library is
//! that server's code: run a member inside another program with [`run`], talk to members with
//! the generated gRPC clients in [`proto`], or reuse the state machine ([`KvStateMachine`]).
//!
//! - [`store`]: the state machine (keys, values, etcd's revisions; member records).
//! - [`snapshot`]: the store's versioned, checksummed snapshot format and the helpers that
//!   write and read it through raftline-core's snapshot streams.
//! - [`server`]: the gRPC services (`KV.Range/Put/DeleteRange`,
//!   `Cluster.MemberList/Add/Remove/Update/Promote`, `Maintenance.Status/Snapshot/MoveLeader`)
//!   and the forwarding of writes and member changes from followers to the leader.
//! - [`config`]: etcd-style flags.
//! - [`run`]: wires raftline-core's driver, raftline-log and raftline-tcp together.
//!
//! Writes are proposed through raft on the leader (a follower forwards them); reads are
//! linearizable: served after a ReadIndex round confirms the leader and the local state
//! machine has applied the read point (`serializable` reads skip the round, as in etcd).

#![deny(missing_docs)]

pub mod config;
pub mod metrics;
pub mod server;
pub mod snapshot;
pub mod store;

mod run;

pub use run::{run, KvStateMachine, Running, StartError};

/// An error and its chain of sources on one line, `error: source: source's source...`, as
/// `raft-kv` prints why it did not start. A source whose text the line already holds (errors
/// that repeat their source in their own message) is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut next = error.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = source.source();
    }
    line
}

/// Code generated from `proto/` (etcd's API and raft-kv's internal forwarding service).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    /// etcd's `mvccpb` package.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// etcd's `etcdserverpb` package.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    /// etcd's `authpb` package.
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
}

// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
