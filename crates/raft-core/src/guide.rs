//! The guide: how to build a replicated service on raftline, chapter by chapter.
//!
//! The chapters are the Markdown files in the crate's `docs/guide` directory (also reachable
//! as `docs/` at the root of the repository); each is one module here, so that rustdoc
//! renders it and `cargo test --doc` compiles and runs its examples.
//!
//! 1. [Getting started](getting_started): a 3-node replicated counter on the driver,
//!    raftline-log, raftline-snapshot and raftline-tcp; which crates you need; the tick;
//!    where the initial membership comes from; the cluster id; reading the state from
//!    outside.
//! 2. [The Ready contract](ready_contract): driving a [`RawNode`](crate::RawNode) yourself,
//!    step by step, and what breaks if you reorder the steps.
//! 3. [Writing a storage](storage): [`Storage`](crate::Storage),
//!    [`StorageMut`](crate::StorageMut) and [`LogStore`](crate::driver::LogStore), and the
//!    conformance suite.
//! 4. [Writing a transport](transport): [`Transport`](crate::driver::Transport) and the
//!    inbound stream.
//! 5. [Snapshots](snapshots): when they are taken, how they travel, how a node restores them.
//! 6. [Membership changes and learners](membership): adding, promoting and removing
//!    members, joint consensus, leadership transfer.
//! 7. [Reads](reads): ReadIndex, follower reads, LeaseGuard lease reads and their clock
//!    assumption.
//! 8. [Tuning](tuning): ticks, batch and window bounds, with their defaults.
//! 9. [Errors](errors): the failure semantics of every error: what happened, whether the
//!    command may have been applied, what to do.
//!
//! The guide documents this version of the code; where a default or a bound is quoted, it is
//! the value in [`Config::new`](crate::Config::new) or
//! [`DriverConfig::default`](crate::driver::DriverConfig).

#[doc = include_str!("../docs/guide/01-getting-started.md")]
pub mod getting_started {}

#[doc = include_str!("../docs/guide/02-ready-contract.md")]
pub mod ready_contract {}

#[doc = include_str!("../docs/guide/03-storage.md")]
pub mod storage {}

#[doc = include_str!("../docs/guide/04-transport.md")]
pub mod transport {}

#[doc = include_str!("../docs/guide/05-snapshots.md")]
pub mod snapshots {}

#[doc = include_str!("../docs/guide/06-membership.md")]
pub mod membership {}

#[doc = include_str!("../docs/guide/07-reads.md")]
pub mod reads {}

#[doc = include_str!("../docs/guide/08-tuning.md")]
pub mod tuning {}

#[doc = include_str!("../docs/guide/09-errors.md")]
pub mod errors {}
