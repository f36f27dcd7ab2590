//! Lease reads (LeaseGuard, `raftline_core::lease`) under drifting clocks: a crafted
//! schedule where the old leader, cut off with a slow clock, keeps serving lease reads while a
//! new leader with a fast clock takes over and commits. Within the drift bound the new leader
//! commits only after the old lease ran out, and the simulator's read check passes; beyond
//! the bound the same schedule yields a stale read, and the check catches it (so it can fail).

use raftline_core::testing::sim::{Cluster, SimConfig, SIM_LEASE};
use raftline_core::{ReadMode, Role};
use raftline_proto::NodeId;

/// What the schedule showed.
struct Outcome {
    /// The simulator's verdict: an error names the violated property.
    result: Result<(), String>,
    /// Reads the cut-off old leader answered at once (from its lease) after the cut.
    lease_reads_after_cut: u64,
    /// Whether a new leader committed an entry of its term while the run lasted.
    new_leader_committed: bool,
}

/// Node 1 leads with a clock ticking every `old_units` virtual units; nodes 2 and 3 tick
/// every `new_units`. Node 1 commits a write, is cut off, and is asked for a read every tick
/// while 2 or 3 takes over and is given writes.
fn cut_off_slow_leader(old_units: u64, new_units: u64) -> Outcome {
    let mut cfg = SimConfig::quiet(1, 3);
    cfg.node.read_mode = ReadMode::Lease(SIM_LEASE);
    let mut c = Cluster::new(cfg);
    c.set_tick_units(NodeId(1), old_units);
    c.set_tick_units(NodeId(2), new_units);
    c.set_tick_units(NodeId(3), new_units);
    c.campaign(NodeId(1)).unwrap();
    let elected = c
        .run_until(200, |c| {
            c.leader() == Some(NodeId(1))
                && c.node(NodeId(1))
                    .is_some_and(|n| n.status().hard_state.commit.0 >= 1)
        })
        .unwrap();
    assert!(elected, "node 1 leads and committed its no-op");
    let index = c.propose(NodeId(1)).unwrap().expect("node 1 leads");
    let committed = c.run_until(20, |c| c.committed_index() >= index).unwrap();
    assert!(committed, "the write commits");
    c.partition(&[NodeId(1)]);
    let old_term = c.node(NodeId(1)).unwrap().term();
    let before = c.report().reads_at_once;
    let mut new_leader_committed = false;
    let result = (|| {
        for _ in 0..60 {
            c.read(NodeId(1))?;
            for id in [NodeId(2), NodeId(3)] {
                let Some(n) = c.node(id) else { continue };
                if n.role() == Role::Leader {
                    let term = n.term();
                    let commit = n.status().hard_state.commit;
                    new_leader_committed |= n.term_at(commit) == Some(term) && term > old_term;
                    c.propose(id)?;
                }
            }
            c.run_ticks(1)?;
        }
        Ok(())
    })();
    Outcome {
        result,
        lease_reads_after_cut: c.report().reads_at_once - before,
        new_leader_committed,
    }
}

#[test]
fn drift_within_the_bound_keeps_every_lease_read_fresh() {
    // Periods 11 and 9: rates 10% below and above the nominal one, the bound's extremes.
    let out = cut_off_slow_leader(11, 9);
    out.result.unwrap();
    assert!(
        out.lease_reads_after_cut > 0,
        "the old leader served lease reads after the cut"
    );
    assert!(
        out.new_leader_committed,
        "a new leader took over and committed"
    );
}

#[test]
fn drift_beyond_the_bound_shows_a_stale_read_and_the_check_catches_it() {
    // The old leader's clock runs 8x slower than the others': far beyond the 10% bound.
    let out = cut_off_slow_leader(40, 5);
    let err = out.result.expect_err("a stale read");
    assert!(err.contains("linearizable read"), "{err}");
    assert!(out.lease_reads_after_cut > 0);
}
