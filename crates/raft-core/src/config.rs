//! Configuration of one Raft node.

use raftline_proto::{LogIndex, NodeId};

use crate::error::{ConfigError, Error, Result};

/// Everything that tunes one node. Times are in ticks: the caller decides how long a tick is.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id. Must not be 0.
    pub id: NodeId,
    /// A follower that hears nothing from a leader for a randomized timeout in
    /// `[election_ticks, 2 * election_ticks)` campaigns (§5.2).
    pub election_ticks: u32,
    /// The leader sends heartbeats every `heartbeat_ticks`. Must be less than `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Run a pre-vote round before a real election, so that a node cut off from the cluster
    /// cannot raise the term and depose a healthy leader when it returns (§9.6 of the
    /// dissertation).
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within `election_ticks` steps down, and
    /// followers that heard from a leader within `election_ticks` refuse to vote (§6.2).
    pub check_quorum: bool,
    /// The most append messages in flight to one follower in the replicate state.
    pub inflight_msgs_max: usize,
    /// The most entries in one append message.
    pub append_entries_max: usize,
    /// The most bytes of entries in one append message (at least one entry is always sent).
    pub msg_bytes_max: usize,
    /// The most entries handed to the application for applying in one `Ready`.
    pub apply_entries_max: usize,
    /// The leader refuses proposals while this many entries wait for commit.
    pub uncommitted_entries_max: u64,
    /// The most read-index requests the leader confirms at once; more are refused.
    pub read_requests_max: usize,
    /// How the leader serves linearizable reads: a heartbeat round per read
    /// ([`ReadMode::ReadIndex`], the default), or from its state while it holds a lease
    /// ([`ReadMode::Lease`], which assumes a bound on clock drift). Every member of a cluster
    /// must use the same mode: the lease is safe only if every node that may become leader
    /// defers its commits as the lease mode does.
    pub read_mode: ReadMode,
    /// The most bytes of snapshot data in one chunk of a snapshot transfer.
    pub snapshot_chunk_bytes_max: usize,
    /// The most snapshot chunks in flight to one follower (with 1 MiB chunks, 64 MiB: on
    /// loopback a smaller window leaves the link idle while acknowledgements travel).
    pub snapshot_chunks_inflight_max: usize,
    /// A learner being promoted must catch up within this many rounds of replication (a
    /// round brings it to the leader's last index at the round's start; it has caught up when
    /// a round takes less than an election timeout), or the promotion fails.
    pub catch_up_rounds_max: u32,
    /// A node that learns a configuration without itself reports that it was removed after
    /// this many election timeouts without a leader. It never campaigns while outside.
    pub removed_election_timeouts: u32,
    /// The index the application's state machine has already applied. Entries up to it are
    /// not handed out for applying again after a restart.
    pub applied: LogIndex,
    /// The seed of the node's random source (election timeouts, and where the driver's ids
    /// for forwarded proposals start). Give each node its own, and a new one each time it
    /// starts (from the process id or the clock): a node restarted with the same seed could
    /// take a late answer to a proposal it forwarded before the restart for the answer to
    /// one it forwarded after.
    pub seed: u64,
}

impl Config {
    /// A configuration with the defaults for `id`.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            inflight_msgs_max: 256,
            append_entries_max: 1024,
            msg_bytes_max: 1 << 20,
            apply_entries_max: 4096,
            uncommitted_entries_max: 1 << 16,
            read_requests_max: 4096,
            read_mode: ReadMode::ReadIndex,
            snapshot_chunk_bytes_max: 1 << 20,
            snapshot_chunks_inflight_max: 64,
            catch_up_rounds_max: 10,
            removed_election_timeouts: 3,
            applied: LogIndex(0),
            seed: id.0,
        }
    }

    /// Checks the bounds that the rest of the core relies on.
    pub fn validate(&self) -> Result<()> {
        if self.id == NodeId(0) {
            return Err(Error::Config(ConfigError::ZeroId));
        }
        let counts = [
            ("heartbeat_ticks", self.heartbeat_ticks as u64),
            ("inflight_msgs_max", self.inflight_msgs_max as u64),
            ("append_entries_max", self.append_entries_max as u64),
            ("apply_entries_max", self.apply_entries_max as u64),
            (
                "snapshot_chunk_bytes_max",
                self.snapshot_chunk_bytes_max as u64,
            ),
            (
                "snapshot_chunks_inflight_max",
                self.snapshot_chunks_inflight_max as u64,
            ),
            ("catch_up_rounds_max", self.catch_up_rounds_max as u64),
            ("uncommitted_entries_max", self.uncommitted_entries_max),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, value)| *value == 0) {
            return Err(Error::Config(ConfigError::Zero(name)));
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(Error::Config(ConfigError::ElectionNotAboveHeartbeat));
        }
        if let ReadMode::Lease(lease) = self.read_mode {
            lease.validate(self.election_ticks)?;
        }
        Ok(())
    }
}

/// How the leader serves linearizable reads (the guide's [Reads](crate::guide::reads)
/// chapter compares them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// Each read confirms leadership with a heartbeat round to a majority (§6.4 of the
    /// dissertation). Assumes nothing about clocks.
    #[default]
    ReadIndex,
    /// LeaseGuard lease reads: while the leader holds a lease it answers reads from its commit
    /// index at once, without a round; otherwise it falls back to a ReadIndex round. New
    /// leaders defer their commits until any earlier lease has expired. Safe only while
    /// every node's tick rate stays within [`Lease::drift_ppm`] of a common rate (see
    /// [`lease`](crate::lease) for the argument).
    Lease(Lease),
}

/// The parameters of [`ReadMode::Lease`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// When an entry the leader created at its tick `t` commits, the leader holds the lease
    /// until its tick `t + lease_ticks` (exclusive).
    pub lease_ticks: u32,
    /// The clock-drift bound, in millionths: every node's tick rate stays within
    /// `drift_ppm / 1_000_000` of one nominal rate (above or below). Ticks include their
    /// jitter: a tick the executor delivers late makes that node's clock slow.
    pub drift_ppm: u32,
}

impl Lease {
    /// The largest drift bound accepted (50%).
    pub const DRIFT_PPM_MAX: u32 = 500_000;

    /// The ticks a new leader waits, after it last heard from a leader, before it commits:
    /// `ceil(lease_ticks * (1 + ρ) / (1 - ρ))` with `ρ = drift_ppm / 10⁶` (the old leader's
    /// clock may run slow by `ρ` while the new one's runs fast by `ρ`).
    pub fn wait_ticks(&self) -> u64 {
        let million = 1_000_000u64;
        let ppm = u64::from(self.drift_ppm.min(Self::DRIFT_PPM_MAX));
        let num = u64::from(self.lease_ticks) * (million + ppm);
        num.div_ceil(million - ppm)
    }

    /// The longest lease whose [wait](Lease::wait_ticks) fits in `election_ticks`, for
    /// `drift_ppm`: a new leader elected after an election timeout of silence then never
    /// waits. `None` if not even a lease of one tick fits.
    pub fn within_election(election_ticks: u32, drift_ppm: u32) -> Option<Lease> {
        (1..election_ticks)
            .rev()
            .map(|lease_ticks| Lease {
                lease_ticks,
                drift_ppm,
            })
            .find(|l| l.wait_ticks() <= u64::from(election_ticks))
    }

    fn validate(&self, election_ticks: u32) -> Result<()> {
        if self.lease_ticks == 0 {
            return Err(Error::Config(ConfigError::Zero("lease_ticks")));
        }
        if self.drift_ppm > Self::DRIFT_PPM_MAX {
            return Err(Error::Config(ConfigError::DriftAboveMax));
        }
        if self.wait_ticks() > u64::from(election_ticks) {
            return Err(Error::Config(ConfigError::LeaseNotBelowElection));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(lease_ticks: u32, drift_ppm: u32) -> Lease {
        Lease {
            lease_ticks,
            drift_ppm,
        }
    }

    #[test]
    fn the_wait_scales_the_lease_by_the_drift_ratio_rounded_up() {
        assert_eq!(lease(8, 0).wait_ticks(), 8);
        // 8 * 1.1 / 0.9 = 9.78
        assert_eq!(lease(8, 100_000).wait_ticks(), 10);
        // 9 * 1.1 / 0.9 = 11: exact, not rounded up.
        assert_eq!(lease(9, 100_000).wait_ticks(), 11);
        assert_eq!(lease(10, 500_000).wait_ticks(), 30);
    }

    #[test]
    fn the_longest_lease_within_the_election_timeout_is_found() {
        assert_eq!(Lease::within_election(10, 100_000), Some(lease(8, 100_000)));
        assert_eq!(Lease::within_election(10, 0), Some(lease(9, 0)));
        assert_eq!(Lease::within_election(2, 500_000), None);
    }

    #[test]
    fn a_lease_must_fit_the_election_timeout_and_the_drift_bound() {
        let mut cfg = Config::new(NodeId(1));
        cfg.read_mode = ReadMode::Lease(lease(8, 100_000));
        assert!(cfg.validate().is_ok());
        cfg.read_mode = ReadMode::Lease(lease(9, 100_000));
        let err = Error::Config(ConfigError::LeaseNotBelowElection);
        assert_eq!(cfg.validate(), Err(err));
        cfg.read_mode = ReadMode::Lease(lease(0, 100_000));
        assert_eq!(
            cfg.validate(),
            Err(Error::Config(ConfigError::Zero("lease_ticks")))
        );
        cfg.read_mode = ReadMode::Lease(lease(1, 500_001));
        let err = Error::Config(ConfigError::DriftAboveMax);
        assert_eq!(cfg.validate(), Err(err));
    }
}
