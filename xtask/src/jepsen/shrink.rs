//! The smallest failing sub-history of a register whose history is not linearizable, as text
//! and as a picture.
//!
//! Only steps that keep a sub-history failing *because the whole history fails* are taken,
//! so what is shown is a real violation, not one the shrinking made:
//! - a prefix in real time: the history cut at a time `t` (operations called later dropped,
//!   those still running at `t` left without an answer); every prefix of a linearizable
//!   history is linearizable, so a failing prefix proves the whole history fails. The
//!   shortest failing prefix is found by bisection.
//! - operations that only constrain: reads, and compare-and-swaps that did not swap.
//!   Dropping one removes a constraint and never creates a violation; they are dropped in
//!   chunks (halves, quarters, ... single operations) while the rest still fails.
//!
//! Writes (puts, swaps that swapped, writes of unknown outcome) are never dropped: a read may
//! depend on one. Every check is bounded ([`SHRINK_BUDGET`]), and so is their number
//! ([`SHRINK_CHECKS_MAX`]).

use std::fmt::Write as _;

use raftline_core::testing::linearizability::{
    check, KvInput, KvModel, KvOutput, Operation, Outcome,
};

/// One operation of a register's history.
pub type Op = Operation<KvInput, KvOutput>;

/// The most linearizability checks one shrink makes.
pub const SHRINK_CHECKS_MAX: usize = 400;

/// Search steps each check of a shrink may take (a check that runs out counts as passing, so
/// that the shrink only keeps what it proved failing).
pub const SHRINK_BUDGET: u64 = 200_000;

/// A shrink's checks, bounded.
struct Checks(usize);

impl Checks {
    /// Whether `ops` is proven not linearizable; false once the checks are used up.
    fn fails(&mut self, ops: &[Op]) -> bool {
        if self.0 >= SHRINK_CHECKS_MAX {
            return false;
        }
        self.0 += 1;
        matches!(
            check(&KvModel, ops, SHRINK_BUDGET),
            Outcome::NotLinearizable { .. }
        )
    }
}

/// A smaller history that fails whenever `ops` (not linearizable) does; `ops` itself if no
/// step could be proven.
pub fn shrink(ops: &[Op]) -> Vec<Op> {
    let mut checks = Checks(0);
    let shortest = shortest_failing_prefix(ops, &mut checks);
    drop_constraints(shortest, &mut checks)
}

/// `ops` cut at time `t`: operations called after it dropped, those answered after it left
/// without an answer.
pub fn prefix(ops: &[Op], t: u64) -> Vec<Op> {
    ops.iter()
        .filter(|o| o.call <= t)
        .map(|o| {
            let mut o = o.clone();
            if o.ret.is_some_and(|r| r > t) {
                o.ret = None;
                o.output = None;
            }
            o
        })
        .collect()
}

/// The shortest prefix of `ops` proven failing, by bisection over the times at which
/// something happened.
fn shortest_failing_prefix(ops: &[Op], checks: &mut Checks) -> Vec<Op> {
    let mut times: Vec<u64> = ops
        .iter()
        .flat_map(|o| [Some(o.call), o.ret])
        .flatten()
        .collect();
    times.sort_unstable();
    times.dedup();
    // times[hi] is known to fail (the whole history), times[lo] not known to.
    let (mut lo, mut hi) = (0, times.len().saturating_sub(1));
    let mut best = ops.to_vec();
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let cut = prefix(ops, times[mid]);
        if checks.fails(&cut) {
            (hi, best) = (mid, cut);
        } else {
            lo = mid + 1;
        }
    }
    best
}

/// Whether dropping `op` can only remove constraints: a read, or a swap that did not swap.
fn only_constrains(op: &Op) -> bool {
    matches!(op.input, KvInput::Get { .. }) || matches!(op.output, Some(KvOutput::CasResult(false)))
}

/// Drops constraint-only operations of `ops` (failing) in ever smaller chunks while what is
/// left still fails.
fn drop_constraints(mut ops: Vec<Op>, checks: &mut Checks) -> Vec<Op> {
    let mut chunk = ops
        .iter()
        .filter(|o| only_constrains(o))
        .count()
        .div_ceil(2);
    while chunk > 0 {
        let candidates: Vec<usize> = (0..ops.len())
            .filter(|&i| only_constrains(&ops[i]))
            .collect();
        let mut dropped_any = false;
        for group in candidates.chunks(chunk).rev() {
            let trial: Vec<Op> = ops
                .iter()
                .enumerate()
                .filter(|(i, _)| !group.contains(i))
                .map(|(_, o)| o.clone())
                .collect();
            if checks.fails(&trial) {
                ops = trial;
                dropped_any = true;
            }
        }
        if !dropped_any {
            chunk /= 2;
        }
    }
    ops
}

/// One line per operation, in call order: client, interval (seconds), input and outcome.
pub fn text(ops: &[Op]) -> String {
    let mut sorted: Vec<&Op> = ops.iter().collect();
    sorted.sort_by_key(|o| (o.call, o.client));
    let mut out = String::new();
    for o in sorted {
        let end = o
            .ret
            .map_or("...".to_string(), |r| format!("{:.6}", secs(r)));
        let _ = writeln!(
            out,
            "client {:>4}  [{:.6} s, {end}]  {}  -> {}",
            o.client,
            secs(o.call),
            input_text(&o.input),
            output_text(o.output.as_ref())
        );
    }
    out
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// `put 17`, `get`, `cas 3 -> 4`.
pub fn input_text(input: &KvInput) -> String {
    match input {
        KvInput::Put { value, .. } => format!("put {value}"),
        KvInput::Get { .. } => "get".into(),
        KvInput::Cas { expected, new, .. } => {
            let from = expected.map_or("absent".into(), |v| v.to_string());
            format!("cas {from} -> {new}")
        }
        KvInput::Delete { .. } => "delete".into(),
    }
}

/// `ok`, `17`, `absent`, `swapped`, `not swapped`, `unknown`.
pub fn output_text(output: Option<&KvOutput>) -> String {
    match output {
        None => "unknown".into(),
        Some(KvOutput::Ok) => "ok".into(),
        Some(KvOutput::Value(v)) => v.map_or("absent".into(), |v| v.to_string()),
        Some(KvOutput::CasResult(true)) => "swapped".into(),
        Some(KvOutput::CasResult(false)) => "not swapped".into(),
    }
}

/// Pixels of the picture.
const WIDTH: f64 = 1000.0;
const LANE: f64 = 26.0;
const LEFT: f64 = 90.0;

/// An SVG picture of `ops`: a lane per client, a bar per operation from call to answer
/// (to the right edge, dashed, when it never came), labelled with input and outcome.
pub fn svg(ops: &[Op]) -> String {
    let mut clients: Vec<u64> = ops.iter().map(|o| o.client).collect();
    clients.sort_unstable();
    clients.dedup();
    let start = ops.iter().map(|o| o.call).min().unwrap_or(0);
    let end = ops
        .iter()
        .flat_map(|o| [Some(o.call), o.ret])
        .flatten()
        .max()
        .unwrap_or(1);
    let scale = (WIDTH - LEFT - 10.0) / (end - start).max(1) as f64;
    let x = |t: u64| LEFT + (t - start) as f64 * scale;
    let height = LANE * clients.len() as f64 + 30.0;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}' \
         font-family='sans-serif' font-size='11'>"
    );
    for (lane, c) in clients.iter().enumerate() {
        let y = 10.0 + LANE * lane as f64;
        let _ = write!(s, "<text x='4' y='{}'>client {c}</text>", y + 14.0);
        for o in ops.iter().filter(|o| o.client == *c) {
            let (x0, x1) = (x(o.call), o.ret.map_or(WIDTH - 10.0, x));
            let dash = if o.ret.is_none() {
                " stroke-dasharray='4 2'"
            } else {
                ""
            };
            let label = format!(
                "{} → {}",
                input_text(&o.input),
                output_text(o.output.as_ref())
            );
            let _ = write!(
                s,
                "<rect x='{x0:.1}' y='{y:.1}' width='{:.1}' height='18' fill='#bbdefb' \
                 stroke='#1565c0'{dash}/><text x='{:.1}' y='{:.1}'>{label}</text>",
                (x1 - x0).max(2.0),
                x0 + 2.0,
                y + 13.0
            );
        }
    }
    let _ = write!(
        s,
        "<text x='{LEFT}' y='{:.1}'>{:.6} s … {:.6} s</text></svg>",
        height - 6.0,
        secs(start),
        secs(end)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, input: KvInput, call: u64, ret: Option<u64>, output: KvOutput) -> Op {
        Operation {
            client,
            input,
            call,
            ret,
            output: ret.map(|_| output),
        }
    }

    fn put(client: u64, value: u64, call: u64, ret: u64) -> Op {
        op(
            client,
            KvInput::Put { key: 0, value },
            call,
            Some(ret),
            KvOutput::Ok,
        )
    }

    fn get(client: u64, value: Option<u64>, call: u64, ret: u64) -> Op {
        op(
            client,
            KvInput::Get { key: 0 },
            call,
            Some(ret),
            KvOutput::Value(value),
        )
    }

    /// A long good history with one stale read in the middle, and more after it.
    fn history_with_a_stale_read() -> Vec<Op> {
        let mut ops = Vec::new();
        for i in 0..40u64 {
            let t = i * 100;
            ops.push(put(1, i + 1, t, t + 10));
            ops.push(get(2, Some(i + 1), t + 20, t + 30));
            if i == 20 {
                // Reads the value of write 20 after write 21 finished: stale.
                ops.push(get(3, Some(20), t + 50, t + 60));
            }
        }
        ops
    }

    #[test]
    fn the_shrunk_history_still_fails_and_keeps_the_stale_read_and_the_writes_it_needs() {
        let ops = history_with_a_stale_read();
        assert!(!check(&KvModel, &ops, SHRINK_BUDGET).is_linearizable());
        let small = shrink(&ops);
        assert!(!check(&KvModel, &small, SHRINK_BUDGET).is_linearizable());
        // The writes up to the violation stay (a read may depend on any of them); of the 42
        // reads, at most the stale one and one other do.
        let reads = small.iter().filter(|o| only_constrains(o)).count();
        assert!(reads <= 2, "{}", text(&small));
        assert!(small.len() <= 22 + 2, "{}", text(&small));
        assert!(
            small.iter().any(|o| o.client == 3),
            "the stale read stays: {}",
            text(&small)
        );
        assert!(
            small.iter().all(|o| o.call <= 2050),
            "cut after the violation"
        );
    }

    #[test]
    fn a_prefix_leaves_operations_running_at_the_cut_unanswered() {
        let ops = vec![put(1, 1, 0, 10), get(2, Some(1), 5, 20), put(1, 2, 30, 40)];
        let cut = prefix(&ops, 15);
        assert_eq!(cut.len(), 2);
        assert_eq!(cut[1].ret, None);
        assert_eq!(cut[1].output, None);
    }

    #[test]
    fn writes_are_never_dropped() {
        let w = put(1, 1, 0, 10);
        let swapped = op(
            1,
            KvInput::Cas {
                key: 0,
                expected: Some(1),
                new: 2,
            },
            20,
            Some(30),
            KvOutput::CasResult(true),
        );
        assert!(!only_constrains(&w) && !only_constrains(&swapped));
        assert!(only_constrains(&get(2, None, 0, 1)));
    }

    #[test]
    fn the_text_and_the_picture_name_every_operation() {
        let ops = vec![put(1, 7, 0, 10), get(2, Some(7), 20, 30)];
        let t = text(&ops);
        assert!(t.contains("put 7  -> ok") && t.contains("get  -> 7"), "{t}");
        let p = svg(&ops);
        assert!(p.contains("client 1") && p.contains("put 7 → ok") && p.ends_with("</svg>"));
    }
}
