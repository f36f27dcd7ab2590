//! Lease reads after LeaseGuard (Davis et al., SIGMOD 2026: "the log is the lease"), in
//! ticks, with an explicit clock-drift bound ([`ReadMode::Lease`]).
//!
//! # The protocol
//!
//! Every node counts its ticks since it started (`t`, never reset while it runs) and
//! remembers `heard`, its tick when it last took a message from a leader (an append, a
//! heartbeat or a snapshot chunk of its current term). A start counts as hearing: `heard =
//! 0` at `t = 0`.
//!
//! - **The log is the lease.** The leader remembers, in memory, the tick at which it created
//!   each entry of its term. When an entry it created at tick `c` commits, it holds the lease
//!   until `c + L` (`L` = [`Lease::lease_ticks`]): while `t < c +
//!   L` it answers a read (its own or one a follower forwarded) at once with its commit
//!   index. Heartbeats do not extend a lease; only commits do. Without a lease it falls back
//!   to the ReadIndex round. A read that finds the lease more than half spent, with no entry
//!   of the term waiting for commit, appends one no-op to renew it (so at most one renewal is
//!   ever in flight, and none during a leadership transfer).
//! - **Deferred commit.** A leader elected at term `T` advances its commit index only once
//!   `t > heard + W`, with `W` = [`Lease::wait_ticks`] `=
//!   ceil(L (1 + ρ) / (1 − ρ))`. It appends and replicates meanwhile; only the commit
//!   waits. Its reads wait too (a leader answers reads only after committing an entry of its
//!   term). [`Config::validate`](crate::Config::validate) requires `W <= election_ticks`, so
//!   a leader elected after an election timeout of silence does not wait at all; one elected
//!   by a leadership transfer (TimeoutNow) waits, since it heard from the old leader a moment
//!   ago.
//!
//! # Why no lease read is stale
//!
//! Drift bound: there is a nominal rate `r` such that every node ticks at a rate within
//! `[r (1 − ρ), r (1 + ρ)]`, so `n` consecutive tick periods of one node last at most `n /
//! (r (1 − ρ))` and at least `n / (r (1 + ρ))` of real time.
//!
//! Take a read that leader `A` of term `T₁` answers at real time `R` from the lease of an
//! entry `e` it created at real time `C`, at its tick `c`, and a write committed at real time
//! `M` by a leader `B` of a term `T₂ > T₁`. We show `M > R`; writes committed by `A` itself
//! are at most `A`'s commit index, which the read returns, and reads forwarded by a follower
//! were asked before `R`.
//!
//! 1. `A` answered at its tick `n` with `n < c + L`, so `R` lies before `A`'s tick `n + 1 <=
//!    c + L` and `C` after its tick `c`: `R − C < L` periods of `A <= L / (r (1 − ρ))`.
//! 2. `e` is committed, so `B`'s log holds it (Leader Completeness). `B` took `e` from a
//!    leader after `e` was created, and updated `heard` then or later, or restarted later:
//!    `B`'s `heard` was set at a real time `H > C`, at `B`'s tick `h`.
//! 3. `B` commits at its tick `m > h + W`, so `M` lies at or after its tick `m >= h + W + 1`
//!    and `H` before its tick `h + 1`: `M − H > W` periods of `B >= W / (r (1 + ρ))`.
//! 4. `W >= L (1 + ρ) / (1 − ρ)`, so `M − H > L / (r (1 − ρ)) > R − C`, and with `H > C`,
//!    `M > R`.
//!
//! Every leader after `T₁` thus commits nothing until `A`'s lease has run out, whatever it
//! heard in between. A restarted node lost `heard`; counting the start as hearing keeps step
//! 2 true. The argument needs nothing on the wire: only the leader's own entries grant it a
//! lease, and only a node's own clock defers its commits.
//!
//! The simulator (`testing::sim`, feature `testing`) runs every other seed in lease mode with
//! each node ticking at its own rate within the bound, at its extremes, and checks every
//! read against the highest index committed anywhere when the read was asked; its tests
//! show that the same check catches a stale read once the drift exceeds the bound.

use std::collections::VecDeque;

use raftline_proto::LogIndex;

use crate::config::{Lease, ReadMode};

/// The leader's lease state for its term ([`ReadMode::Lease`] only; inert otherwise).
pub(crate) struct LeaderLease {
    lease: Option<Lease>,
    /// For the entries of this term not yet committed: the last index created at each tick,
    /// oldest first. At most one per tick in which the leader appended, and never more than
    /// its uncommitted entries (proposals beyond `uncommitted_entries_max` are refused).
    created: VecDeque<(LogIndex, u64)>,
    /// The lease holds while the leader's tick is below this (0: never held).
    expires: u64,
    /// The leader may commit only at a tick above this (the deferred commit).
    commit_after: u64,
}

impl LeaderLease {
    /// The lease state of a leader elected when `heard` was its tick of last hearing from a
    /// leader.
    pub(crate) fn new(mode: ReadMode, heard: u64) -> Self {
        let lease = match mode {
            ReadMode::ReadIndex => None,
            ReadMode::Lease(lease) => Some(lease),
        };
        LeaderLease {
            lease,
            created: VecDeque::new(),
            expires: 0,
            commit_after: lease.map_or(0, |l| heard + l.wait_ticks()),
        }
    }

    /// Entries up to `last` were created at tick `now`.
    pub(crate) fn created(&mut self, last: LogIndex, now: u64) {
        if self.lease.is_none() {
            return;
        }
        match self.created.back_mut() {
            Some((index, at)) if *at == now => *index = last,
            _ => self.created.push_back((last, now)),
        }
    }

    /// Whether the leader may commit at tick `now` (every earlier leader's lease expired).
    pub(crate) fn may_commit(&self, now: u64) -> bool {
        self.lease.is_none() || now > self.commit_after
    }

    /// The commit index moved to `committed` at tick `now`: the newest entry of this term it
    /// covers grants the lease.
    pub(crate) fn committed(&mut self, committed: LogIndex, now: u64) {
        let Some(lease) = self.lease else {
            return;
        };
        assert!(
            self.may_commit(now),
            "LeaseGuard: a leader commits only after every earlier lease expired"
        );
        while let Some(&(index, at)) = self.created.front() {
            if index > committed {
                break;
            }
            self.created.pop_front();
            self.expires = self.expires.max(at + u64::from(lease.lease_ticks));
        }
    }

    /// Whether the leader holds the lease at tick `now`.
    pub(crate) fn holds(&self, now: u64) -> bool {
        now < self.expires
    }

    /// Whether a read at tick `now` should renew the lease with a no-op: lease mode, no entry
    /// of the term waits for commit (its commit renews the lease already), and at most half
    /// the lease is left.
    pub(crate) fn wants_renewal(&self, now: u64) -> bool {
        let Some(lease) = self.lease else {
            return false;
        };
        self.created.is_empty()
            && self.expires.saturating_sub(now) <= u64::from(lease.lease_ticks) / 2
    }

    /// Whether the deferral ends at tick `now` (the first tick the leader may commit).
    pub(crate) fn commit_opens_at(&self, now: u64) -> bool {
        self.lease.is_some() && now == self.commit_after + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease_mode() -> ReadMode {
        ReadMode::Lease(Lease {
            lease_ticks: 8,
            drift_ppm: 100_000,
        })
    }

    #[test]
    fn a_committed_entry_grants_the_lease_from_its_creation() {
        let mut l = LeaderLease::new(lease_mode(), 5);
        assert!(!l.may_commit(15), "waits 10 ticks after hearing at 5");
        assert!(l.may_commit(16));
        l.created(LogIndex(3), 14);
        l.created(LogIndex(4), 14);
        l.created(LogIndex(6), 17);
        assert!(!l.holds(16));
        l.committed(LogIndex(4), 18);
        // Created at 14: held until 22.
        assert!(l.holds(21) && !l.holds(22));
        assert!(!l.wants_renewal(21), "entry 6 waits for commit and renews");
        l.committed(LogIndex(6), 19);
        assert!(l.holds(24) && !l.holds(25));
        assert!(!l.wants_renewal(20));
        assert!(l.wants_renewal(21), "4 ticks left of 8");
    }

    #[test]
    #[should_panic(expected = "LeaseGuard")]
    fn committing_before_the_wait_is_over_is_caught() {
        let mut l = LeaderLease::new(lease_mode(), 5);
        l.committed(LogIndex(1), 15);
    }

    #[test]
    fn read_index_mode_neither_defers_nor_holds() {
        let mut l = LeaderLease::new(ReadMode::ReadIndex, 5);
        assert!(l.may_commit(0));
        l.created(LogIndex(1), 0);
        l.committed(LogIndex(1), 1);
        assert!(!l.holds(1));
        assert!(!l.wants_renewal(1));
    }
}
