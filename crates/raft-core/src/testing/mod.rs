//! Test support, behind the `testing` feature: the storage conformance suite every store
//! must pass, and the deterministic cluster simulator.

pub mod checker;
pub mod conformance;
pub mod driver_sim;
pub mod linearizability;
mod mem_snapshots;
pub mod sim;

pub use mem_snapshots::{data_matches, MemSnapshotStore};
