//! A deterministic, sans-I/O Raft consensus core.
//!
//! New here? Read [the guide](guide): it builds a replicated counter from scratch, then
//! covers the [`Ready`] contract, writing a storage or a transport, snapshots, membership
//! changes, reads, tuning and the meaning of every error.
//!
//! [`RawNode`] holds one server's Raft state and role logic (follower, pre-candidate,
//! candidate, leader). It does no I/O, reads no clock, starts no thread and uses no global
//! randomness: time advances with [`RawNode::tick`], randomness comes from
//! [`Config::seed`], and everything the node wants done comes out of [`RawNode::ready`] as a
//! [`Ready`] whose contract is written on the type. Reads of the durable log go through the
//! [`Storage`] trait.
//!
//! ```
//! use raftline_core::{Config, MemStorage, RawNode, Role, StorageMut};
//! use raftline_proto::{Membership, NodeId};
//!
//! // A one-node cluster elects itself once its vote is durable.
//! let mut store = MemStorage::new(Membership::with_voters([NodeId(1)]));
//! let mut node = RawNode::new(Config::new(NodeId(1)), store.clone()).unwrap();
//! node.campaign();
//! while node.has_ready() {
//!     let ready = node.ready();
//!     store.append(&ready.entries).unwrap();
//!     if let Some(hs) = ready.hard_state {
//!         store.set_hard_state(hs).unwrap();
//!     }
//!     node.advance(&ready);
//! }
//! assert_eq!(node.role(), Role::Leader);
//! let index = node.propose("x".into()).unwrap();
//! assert!(node.has_ready());
//! # let _ = index;
//! ```
//!
//! Safety properties of the paper are asserted where they can be checked locally, with
//! messages naming the property (Election Safety, Leader Append-Only, Log Matching, Leader
//! Completeness, State Machine Safety); the simulator in the `testing` module (feature
//! `testing`) checks them globally after every step.
//!
//! # The async driver
//!
//! [`driver::Node`] runs a [`RawNode`] on any executor against three traits the application
//! provides: a [`driver::LogStore`], a [`driver::Transport`] and a [`driver::StateMachine`]
//! (with a [`driver::SnapshotStore`]). The other raftline crates implement them:
//!
//! - `raftline-proto`: the message and log entry types this crate speaks, and their wire
//!   encoding;
//! - `raftline-log`: a durable, memory-mapped log ([`Storage`] and [`driver::LogStore`]);
//! - `raftline-snapshot`: a crash-safe snapshot store on disk ([`driver::SnapshotStore`]);
//! - `raftline-tcp`: a TCP transport ([`driver::Transport`]);
//! - `raftline-kv`: the `raft-kv` server, an etcd-compatible key-value store built on all of
//!   them.
//!
//! # Features
//!
//! - `testing`: the storage conformance suite (run it against your own [`Storage`]) and the
//!   deterministic simulators of the core and of the driver.

#![deny(missing_docs)]

mod config;
pub mod driver;
mod error;
pub mod guide;
mod leader;
pub mod lease;
mod log;
mod membership;
mod node;
mod outbox;
mod progress;
pub mod quorum;
mod raft;
mod reads;
mod rng;
mod role;
mod snapshot;
mod storage;

#[cfg(feature = "testing")]
pub mod testing;

pub use config::{Config, Lease, ReadMode};
pub use error::{ConfigError, Error, Result, SnapshotError, StorageError};
pub use membership::{ChangeBlocked, MembershipChange, MembershipError, MembershipResult, Refusal};
pub use node::{PersistAck, RawNode, Ready, SoftState, Status};
pub use progress::{Progress, ProgressState, SnapshotTransfer};
pub use reads::ReadState;
pub use rng::Rng;
pub use role::Role;
pub use snapshot::{SnapshotChunk, SnapshotSend};
pub use storage::{limit_bytes, InitialState, MemStorage, Storage, StorageMut};

// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
