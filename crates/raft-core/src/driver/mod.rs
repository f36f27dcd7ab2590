//! The async driver: runs a [`RawNode`](crate::RawNode) against a [`Transport`], a
//! [`LogStore`] and a [`StateMachine`], on any executor.
//!
//! The driver is a future ([`Node::run`]) that the application spawns on its runtime; it
//! names no runtime itself. Time comes from a tick stream the caller provides (an async
//! interval, another runtime's timer, or a simulator's clock), messages from an inbound
//! stream, and requests from [`NodeHandle`]s.
//!
//! Data path of a proposal: [`NodeHandle::propose`] -> `RawNode::propose` on the leader ->
//! `Ready`: messages to the transport at once, entries to [`LogStore::persist`] (the leader's
//! append runs in parallel with replication) -> followers persist and acknowledge -> commit ->
//! `Ready::committed_entries` -> [`StateMachine::apply`] -> the proposal's future resolves
//! with the state machine's response.

mod applier;
mod error;
mod forward;
mod node;
mod status;
mod traits;

pub use error::{Busy, NodeError, TransferFailure, Unknown};
pub use node::{DriverConfig, Node, NodeHandle, NodeStatus, SnapshotStats, Started};
pub use status::StatusWatch;
pub use traits::{
    LogStore, SnapshotSink, SnapshotSource, SnapshotStore, SnapshotWriter, StateMachine, Transport,
};
