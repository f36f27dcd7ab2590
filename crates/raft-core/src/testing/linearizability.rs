//! A linearizability checker for client histories.
//!
//! A history is what clients saw: each [`Operation`] was invoked at some time and either
//! completed later with an output or never came back (timeout, crash). The history is
//! *linearizable* against a sequential specification (a [`Model`]) if every operation can be
//! given a point in time inside its interval such that applying the operations in that order,
//! one at a time, to the model yields exactly the outputs the clients saw. Operations whose
//! outcome is unknown may take effect at any point after their call, or never.
//!
//! [`check`] implements the Wing & Gong search with Lowe's improvements (the "WGL" algorithm
//! used by Knossos and Porcupine):
//!
//! * the history becomes a doubly linked list of call and return events sorted by time;
//! * the search repeatedly picks an operation whose call comes before the first remaining
//!   return event (one that may go next in real-time order), applies it to the model and
//!   lifts both its events out of the list; reaching a return event whose operation is not
//!   yet linearized means the choices so far were wrong, and the search backtracks;
//! * a cache of visited `(set of linearized operations, model state)` configurations prunes
//!   every branch already explored from an equivalent configuration.
//!
//! The search is exponential in the worst case, so it runs under a step budget and answers
//! [`Outcome::Unknown`] when it runs out. To keep the searches small the history is split by
//! [`Model::partition`] (P-compositionality: a history is linearizable iff each of its
//! independent sub-histories is), and each partition is checked on its own.
//!
//! [`KvModel`] is a ready-made model of a key-value store whose partitions are its keys.
//!
//! ```
//! use raftline_core::testing::linearizability::{check, History, KvInput, KvModel, KvOutput, Outcome};
//!
//! let mut history = History::new();
//! let put = history.invoke(1, KvInput::Put { key: 7, value: 1 }, 0);
//! let get = history.invoke(2, KvInput::Get { key: 7 }, 5);
//! history.complete(put, 10, KvOutput::Ok);
//! history.complete(get, 12, KvOutput::Value(Some(1)));
//! assert_eq!(check(&KvModel, history.operations(), 10_000), Outcome::Linearizable);
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    /// The state of one partition of the specified object.
    type State: Clone + Eq + Hash + fmt::Debug;
    /// What a client asks for.
    type Input: Clone + fmt::Debug;
    /// What a client gets back.
    type Output: Clone + fmt::Debug;

    /// The state every partition starts in.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`; `Some(next)` if `output` is what the specification allows there
    /// (output `None` = outcome unknown: any output is allowed, e.g. a write that timed out).
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// The partition an input belongs to (P-compositionality); operations of different partitions
    /// never interact. Return 0 for everything to check the history as one.
    fn partition(&self, input: &Self::Input) -> u64;
}

/// One client operation as the client saw it: invoked at `call`, completed at `ret` with `output`.
/// `ret: None` means the client never learned the outcome (timeout, crash): the operation may
/// have taken effect at any point after `call`, or never.
///
/// An operation with a `ret` but no `output` completed at `ret` with an output nobody recorded:
/// it must be linearized before `ret`, with any output allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client that issued the operation (only used to describe it).
    pub client: u64,
    /// What the client asked for.
    pub input: I,
    /// When the client invoked it.
    pub call: u64,
    /// When the client learned the outcome, `None` if it never did.
    pub ret: Option<u64>,
    /// The outcome, `None` if unknown.
    pub output: Option<O>,
}

/// A history being recorded: `invoke` returns an id, `complete(id, time, output)` or `lose(id)`
/// (outcome unknown) closes it. Times are any monotonic u64 (virtual time of a simulator).
///
/// Operations neither completed nor lost when the history is checked count as lost.
#[derive(Clone, Debug)]
pub struct History<I, O> {
    ops: Vec<Operation<I, O>>,
}

impl<I, O> Default for History<I, O> {
    fn default() -> Self {
        Self { ops: Vec::new() }
    }
}

impl<I, O> History<I, O> {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client` invoked `input` at `time`; returns the operation's id.
    pub fn invoke(&mut self, client: u64, input: I, time: u64) -> usize {
        self.ops.push(Operation {
            client,
            input,
            call: time,
            ret: None,
            output: None,
        });
        self.ops.len() - 1
    }

    /// Records that operation `id` completed at `time` with `output`. A lost operation may
    /// still complete (a late reply is still a fact about the system).
    ///
    /// # Panics
    ///
    /// If `id` is unknown, already completed, or `time` is before its call.
    pub fn complete(&mut self, id: usize, time: u64, output: O) {
        let op = &mut self.ops[id];
        assert!(op.ret.is_none(), "operation {id} completed twice");
        assert!(
            time >= op.call,
            "operation {id} completed at {time}, before its call at {}",
            op.call
        );
        op.ret = Some(time);
        op.output = Some(output);
    }

    /// Records that the outcome of operation `id` will never be known: it may have taken
    /// effect at any point after its call, or never.
    ///
    /// # Panics
    ///
    /// If `id` is unknown or already completed.
    pub fn lose(&mut self, id: usize) {
        assert!(
            self.ops[id].ret.is_none(),
            "operation {id} lost after it completed"
        );
    }

    /// The operations recorded so far, indexed by id.
    pub fn operations(&self) -> &[Operation<I, O>] {
        &self.ops
    }

    /// The recorded operations, indexed by id.
    pub fn into_operations(self) -> Vec<Operation<I, O>> {
        self.ops
    }

    /// How many operations were invoked.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation was invoked.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The verdict of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every partition has a linearization.
    Linearizable,
    /// A partition has no linearization.
    NotLinearizable {
        /// The smallest partition without a linearization.
        partition: u64,
        /// A human-readable description of the partition's operations and of the longest
        /// linearizable prefix found.
        explanation: String,
    },
    /// The search exceeded its budget.
    Unknown {
        /// The first (smallest) partition whose search ran out of budget.
        partition: u64,
    },
}

impl Outcome {
    /// Whether the history was found linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Outcome::Linearizable)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Linearizable => write!(f, "linearizable"),
            Outcome::NotLinearizable { explanation, .. } => {
                write!(f, "not linearizable: {explanation}")
            }
            Outcome::Unknown { partition } => write!(
                f,
                "unknown: the search of partition {partition} ran out of budget"
            ),
        }
    }
}

type Op<M> = Operation<<M as Model>::Input, <M as Model>::Output>;

/// Checks that `ops` is linearizable with respect to `model`.
///
/// The history is split by [`Model::partition`] and each partition is searched on its own,
/// smallest first, with at most `budget_steps` search steps each. The first partition found
/// without a linearization is reported as [`Outcome::NotLinearizable`]; if none is but some
/// search ran out of budget, the answer is [`Outcome::Unknown`].
///
/// Real-time order is strict: `a` must be linearized before `b` only if `a.ret < b.call`;
/// operations whose intervals touch are concurrent. Operations without `ret` return at
/// infinity and need not be linearized at all.
///
/// # Panics
///
/// If an operation returns before its call.
pub fn check<M: Model>(model: &M, ops: &[Op<M>], budget_steps: u64) -> Outcome {
    let mut partitions: BTreeMap<u64, Vec<&Op<M>>> = BTreeMap::new();
    for op in ops {
        if let Some(ret) = op.ret {
            assert!(
                ret >= op.call,
                "operation returns at {ret}, before its call at {}: {op:?}",
                op.call
            );
        }
        partitions
            .entry(model.partition(&op.input))
            .or_default()
            .push(op);
    }
    let mut partitions: Vec<_> = partitions.into_iter().collect();
    partitions.sort_by_key(|(partition, ops)| (ops.len(), *partition));
    let mut unknown = None;
    for (partition, part_ops) in partitions {
        match Search::new(model, &part_ops, budget_steps).run() {
            SearchResult::Linearizable => {}
            SearchResult::OutOfBudget => unknown = unknown.or(Some(partition)),
            SearchResult::Violation(witness) => {
                return Outcome::NotLinearizable {
                    partition,
                    explanation: explain::<M>(partition, &part_ops, &witness),
                }
            }
        }
    }
    match unknown {
        Some(partition) => Outcome::Unknown { partition },
        None => Outcome::Linearizable,
    }
}

/// A fixed-size set of operation indices.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(len: usize) -> Self {
        Bitset(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The end of the event list.
const NIL: usize = usize::MAX;
/// The sentinel node before the first event.
const HEAD: usize = 0;

fn call_node(op: usize) -> usize {
    2 * op + 1
}

fn return_node(op: usize) -> usize {
    2 * op + 2
}

fn is_call(node: usize) -> bool {
    node % 2 == 1
}

fn node_op(node: usize) -> usize {
    (node - 1) / 2
}

/// The call and return events of a partition's operations, as a doubly linked list sorted by
/// time. Node 0 is a sentinel head; operation `i`'s call is node `2i + 1`, its return node
/// `2i + 2`. Lifted operations keep their own links so that they can be put back (in the
/// reverse order of lifting).
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl EventList {
    fn new<I, O>(ops: &[&Operation<I, O>]) -> Self {
        // Sort key: (returns at infinity, time, returns after calls at equal times, node).
        let mut events = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push(((false, op.call, 0u8), call_node(i)));
            let ret = (op.ret.is_none(), op.ret.unwrap_or(0), 1u8);
            events.push((ret, return_node(i)));
        }
        events.sort_unstable();
        let mut list = EventList {
            next: vec![NIL; 2 * ops.len() + 1],
            prev: vec![NIL; 2 * ops.len() + 1],
        };
        let mut last = HEAD;
        for (_, node) in events {
            list.next[last] = node;
            list.prev[node] = last;
            last = node;
        }
        list
    }

    fn first(&self) -> usize {
        self.next[HEAD]
    }

    fn lift(&mut self, op: usize) {
        self.remove(call_node(op));
        self.remove(return_node(op));
    }

    fn unlift(&mut self, op: usize) {
        self.restore(return_node(op));
        self.restore(call_node(op));
    }

    fn remove(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn restore(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }
}

/// The longest linearizable prefix a failed search found, and the state after it.
struct Witness<S> {
    prefix: Vec<usize>,
    state: S,
}

enum SearchResult<S> {
    Linearizable,
    Violation(Witness<S>),
    OutOfBudget,
}

/// The WGL search over one partition.
struct Search<'a, M: Model> {
    model: &'a M,
    ops: &'a [&'a Op<M>],
    list: EventList,
    budget: u64,
    state: M::State,
    linearized: Bitset,
    /// Linearized operations in order, with the state before each.
    stack: Vec<(usize, M::State)>,
    /// Completed operations linearized so far (lost ones need not be).
    completed: usize,
    cache: HashSet<(Bitset, M::State)>,
    best: Witness<M::State>,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(model: &'a M, ops: &'a [&'a Op<M>], budget: u64) -> Self {
        let state = model.init();
        Search {
            model,
            ops,
            list: EventList::new(ops),
            budget,
            linearized: Bitset::new(ops.len()),
            stack: Vec::new(),
            completed: 0,
            cache: HashSet::new(),
            best: Witness {
                prefix: Vec::new(),
                state: state.clone(),
            },
            state,
        }
    }

    fn run(mut self) -> SearchResult<M::State> {
        let required = self.ops.iter().filter(|op| op.ret.is_some()).count();
        let mut entry = self.list.first();
        let mut steps = 0u64;
        while self.completed < required {
            if steps >= self.budget {
                return SearchResult::OutOfBudget;
            }
            steps += 1;
            if entry != NIL && is_call(entry) {
                let op = node_op(entry);
                entry = if self.try_linearize(op) {
                    self.list.first()
                } else {
                    self.list.next[entry]
                };
            } else {
                // A return event of an operation not yet linearized (the list never runs out
                // before one): every choice from here failed, undo the last one.
                let Some(op) = self.backtrack() else {
                    return SearchResult::Violation(self.best);
                };
                entry = self.list.next[call_node(op)];
            }
        }
        SearchResult::Linearizable
    }

    /// Linearizes `op` next if the model allows it and the resulting configuration was never
    /// explored.
    fn try_linearize(&mut self, op: usize) -> bool {
        let operation = self.ops[op];
        let Some(next) = self
            .model
            .step(&self.state, &operation.input, operation.output.as_ref())
        else {
            return false;
        };
        if operation.ret.is_none() && next == self.state {
            // An operation that need not be linearized at all gains nothing by being
            // linearized without effect: everything reachable after it is reachable without it.
            return false;
        }
        self.linearized.set(op);
        if !self.cache.insert((self.linearized.clone(), next.clone())) {
            self.linearized.clear(op);
            return false;
        }
        let previous = std::mem::replace(&mut self.state, next);
        self.stack.push((op, previous));
        self.list.lift(op);
        if operation.ret.is_some() {
            self.completed += 1;
        }
        if self.stack.len() > self.best.prefix.len() {
            self.best = Witness {
                prefix: self.stack.iter().map(|(op, _)| *op).collect(),
                state: self.state.clone(),
            };
        }
        true
    }

    /// Undoes the last linearized operation and returns it; `None` if there is none.
    fn backtrack(&mut self) -> Option<usize> {
        let (op, previous) = self.stack.pop()?;
        self.state = previous;
        self.linearized.clear(op);
        self.list.unlift(op);
        if self.ops[op].ret.is_some() {
            self.completed -= 1;
        }
        Some(op)
    }
}

/// One operation as `client 3 [call 120, ret 140] Put{key:1,value:7} -> Ok`.
fn describe<I: fmt::Debug, O: fmt::Debug>(op: &Operation<I, O>) -> String {
    let ret = op.ret.map_or_else(|| "lost".to_owned(), |t| t.to_string());
    let output = op
        .output
        .as_ref()
        .map_or_else(|| "?".to_owned(), |o| format!("{o:?}"));
    format!(
        "client {} [call {}, ret {}] {:?} -> {}",
        op.client, op.call, ret, op.input, output
    )
}

fn explain<M: Model>(partition: u64, ops: &[&Op<M>], witness: &Witness<M::State>) -> String {
    use fmt::Write as _;
    let mut by_call: Vec<usize> = (0..ops.len()).collect();
    by_call.sort_by_key(|&i| (ops[i].call, i));
    let mut out = format!(
        "partition {partition}: no linearization of its {} operations\noperations by call time:\n",
        ops.len()
    );
    for i in by_call {
        let _ = writeln!(out, "  {}", describe(ops[i]));
    }
    let _ = writeln!(
        out,
        "longest linearizable prefix found ({} of {} operations), ending in state {:?}:",
        witness.prefix.len(),
        ops.len(),
        witness.state
    );
    for &i in &witness.prefix {
        let _ = writeln!(out, "  {}", describe(ops[i]));
    }
    out
}

/// A key-value store: a map from `u64` keys to `u64` values, partitioned by key.
///
/// Since partitions are checked independently, the state is the value of the partition's
/// single key (`None` = absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvModel;

/// A request to [`KvModel`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Sets `key` to `value`; answers [`KvOutput::Ok`].
    Put {
        /// The key.
        key: u64,
        /// The new value.
        value: u64,
    },
    /// Reads `key`; answers [`KvOutput::Value`].
    Get {
        /// The key.
        key: u64,
    },
    /// Sets `key` to `new` if its value is `expected` (`None` = absent); answers
    /// [`KvOutput::CasResult`] with whether it did.
    Cas {
        /// The key.
        key: u64,
        /// The value the key must have for the swap to happen.
        expected: Option<u64>,
        /// The new value.
        new: u64,
    },
    /// Removes `key`; answers [`KvOutput::Ok`].
    Delete {
        /// The key.
        key: u64,
    },
}

impl KvInput {
    /// The key the request is about.
    pub fn key(&self) -> u64 {
        match self {
            KvInput::Put { key, .. }
            | KvInput::Get { key }
            | KvInput::Cas { key, .. }
            | KvInput::Delete { key } => *key,
        }
    }
}

/// Compact, for explanations: `Put{key:1,value:7}`.
impl fmt::Debug for KvInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvInput::Put { key, value } => write!(f, "Put{{key:{key},value:{value}}}"),
            KvInput::Get { key } => write!(f, "Get{{key:{key}}}"),
            KvInput::Cas { key, expected, new } => {
                write!(f, "Cas{{key:{key},expected:{expected:?},new:{new}}}")
            }
            KvInput::Delete { key } => write!(f, "Delete{{key:{key}}}"),
        }
    }
}

/// An answer from [`KvModel`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum KvOutput {
    /// A put or delete was applied.
    Ok,
    /// The value read (`None` = absent).
    Value(Option<u64>),
    /// Whether a compare-and-swap swapped.
    CasResult(bool),
}

impl Model for KvModel {
    type State = Option<u64>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(
        &self,
        state: &Option<u64>,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> Option<Option<u64>> {
        match (input, output) {
            (KvInput::Put { value, .. }, None | Some(KvOutput::Ok)) => Some(Some(*value)),
            (KvInput::Delete { .. }, None | Some(KvOutput::Ok)) => Some(None),
            (KvInput::Get { .. }, None) => Some(*state),
            (KvInput::Get { .. }, Some(KvOutput::Value(seen))) => (seen == state).then_some(*state),
            (KvInput::Cas { expected, new, .. }, None) => Some(if state == expected {
                Some(*new)
            } else {
                *state
            }),
            (KvInput::Cas { expected, new, .. }, Some(KvOutput::CasResult(swapped))) => {
                match (state == expected, swapped) {
                    (true, true) => Some(Some(*new)),
                    (false, false) => Some(*state),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn partition(&self, input: &KvInput) -> u64 {
        input.key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use KvInput::{Cas, Delete, Get, Put};
    use KvOutput::{CasResult, Value};

    const BUDGET: u64 = 1_000_000;

    /// A completed operation.
    fn op(
        client: u64,
        input: KvInput,
        call: u64,
        ret: u64,
        output: KvOutput,
    ) -> Operation<KvInput, KvOutput> {
        Operation {
            client,
            input,
            call,
            ret: Some(ret),
            output: Some(output),
        }
    }

    /// An operation whose outcome is unknown.
    fn lost(client: u64, input: KvInput, call: u64) -> Operation<KvInput, KvOutput> {
        Operation {
            client,
            input,
            call,
            ret: None,
            output: None,
        }
    }

    fn assert_linearizable(ops: &[Operation<KvInput, KvOutput>]) {
        let outcome = check(&KvModel, ops, BUDGET);
        assert_eq!(outcome, Outcome::Linearizable, "{outcome}");
    }

    /// Asserts a violation in `partition`; returns the explanation.
    fn assert_violation(ops: &[Operation<KvInput, KvOutput>], partition: u64) -> String {
        match check(&KvModel, ops, BUDGET) {
            Outcome::NotLinearizable {
                partition: p,
                explanation,
            } => {
                assert_eq!(p, partition, "{explanation}");
                explanation
            }
            other => panic!("expected a violation in partition {partition}, got {other}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&[]);
    }

    #[test]
    fn sequential_history_is_linearizable() {
        assert_linearizable(&[
            op(1, Get { key: 1 }, 0, 5, Value(None)),
            op(1, Put { key: 1, value: 7 }, 10, 20, KvOutput::Ok),
            op(2, Get { key: 1 }, 30, 40, Value(Some(7))),
            op(
                2,
                Cas {
                    key: 1,
                    expected: Some(7),
                    new: 8,
                },
                50,
                60,
                CasResult(true),
            ),
            op(
                1,
                Cas {
                    key: 1,
                    expected: Some(7),
                    new: 9,
                },
                70,
                80,
                CasResult(false),
            ),
            op(3, Get { key: 1 }, 90, 95, Value(Some(8))),
            op(3, Delete { key: 1 }, 100, 110, KvOutput::Ok),
            op(1, Get { key: 1 }, 120, 130, Value(None)),
            op(
                2,
                Cas {
                    key: 1,
                    expected: None,
                    new: 3,
                },
                140,
                150,
                CasResult(true),
            ),
            op(2, Get { key: 1 }, 160, 170, Value(Some(3))),
        ]);
    }

    #[test]
    fn concurrent_writes_and_reads_seeing_either_are_linearizable() {
        // Both writes overlap both reads; the reads see the two orders of the writes at
        // different points: 1 then 2 is the only order where both reads fit.
        assert_linearizable(&[
            op(1, Put { key: 1, value: 1 }, 0, 100, KvOutput::Ok),
            op(2, Put { key: 1, value: 2 }, 0, 100, KvOutput::Ok),
            op(3, Get { key: 1 }, 10, 20, Value(Some(1))),
            op(4, Get { key: 1 }, 30, 40, Value(Some(2))),
            op(5, Get { key: 1 }, 110, 120, Value(Some(2))),
        ]);
        // The same, with the other order.
        assert_linearizable(&[
            op(1, Put { key: 1, value: 1 }, 0, 100, KvOutput::Ok),
            op(2, Put { key: 1, value: 2 }, 0, 100, KvOutput::Ok),
            op(3, Get { key: 1 }, 10, 20, Value(Some(2))),
            op(4, Get { key: 1 }, 30, 40, Value(Some(1))),
            op(5, Get { key: 1 }, 110, 120, Value(Some(1))),
        ]);
    }

    #[test]
    fn touching_intervals_are_concurrent() {
        // The read returns at 10, when the write is invoked: it may come after the write.
        assert_linearizable(&[
            op(1, Put { key: 1, value: 1 }, 10, 20, KvOutput::Ok),
            op(2, Get { key: 1 }, 0, 10, Value(Some(1))),
        ]);
    }

    #[test]
    fn lost_write_later_observed_is_linearizable() {
        assert_linearizable(&[
            op(1, Put { key: 1, value: 1 }, 0, 10, KvOutput::Ok),
            lost(2, Put { key: 1, value: 2 }, 20),
            op(3, Get { key: 1 }, 30, 40, Value(Some(1))),
            op(3, Get { key: 1 }, 1000, 1010, Value(Some(2))),
        ]);
    }

    #[test]
    fn lost_write_never_observed_is_linearizable() {
        assert_linearizable(&[
            op(1, Put { key: 1, value: 1 }, 0, 10, KvOutput::Ok),
            lost(2, Put { key: 1, value: 2 }, 20),
            lost(
                2,
                Cas {
                    key: 1,
                    expected: Some(1),
                    new: 3,
                },
                25,
            ),
            op(3, Get { key: 1 }, 30, 40, Value(Some(1))),
            op(3, Get { key: 1 }, 1000, 1010, Value(Some(1))),
        ]);
    }

    #[test]
    fn lost_write_cannot_take_effect_before_its_call() {
        assert_violation(
            &[
                op(1, Get { key: 1 }, 0, 10, Value(Some(2))),
                lost(2, Put { key: 1, value: 2 }, 20),
            ],
            1,
        );
    }

    #[test]
    fn pending_operations_count_as_lost() {
        let mut history = History::new();
        let put = history.invoke(1, Put { key: 1, value: 5 }, 0);
        let get = history.invoke(2, Get { key: 1 }, 10);
        let pending = history.invoke(3, Put { key: 1, value: 6 }, 15);
        history.complete(get, 20, Value(Some(5)));
        history.lose(put);
        let late = history.invoke(2, Get { key: 1 }, 30);
        history.complete(late, 40, Value(Some(6)));
        assert_eq!(history.len(), 4);
        assert!(!history.is_empty());
        assert_eq!(history.operations()[pending].ret, None);
        assert_linearizable(history.operations());
        history.complete(put, 50, KvOutput::Ok);
        assert_eq!(history.operations()[put].ret, Some(50));
        assert_linearizable(&history.into_operations());
    }

    #[test]
    fn many_keys_are_linearizable() {
        let mut ops = Vec::new();
        for key in 0..20 {
            let t = key * 3;
            ops.push(op(
                key,
                Put {
                    key,
                    value: key + 100,
                },
                t,
                t + 50,
                KvOutput::Ok,
            ));
            ops.push(op(key + 20, Get { key }, t + 1, t + 60, Value(None)));
            ops.push(op(
                key + 40,
                Get { key },
                t + 2,
                t + 60,
                Value(Some(key + 100)),
            ));
            ops.push(op(key, Delete { key }, t + 70, t + 80, KvOutput::Ok));
            ops.push(op(key + 20, Get { key }, t + 90, t + 95, Value(None)));
        }
        assert_linearizable(&ops);
    }

    #[test]
    fn stale_read_after_completed_write_is_not_linearizable() {
        let explanation = assert_violation(
            &[
                op(1, Put { key: 1, value: 1 }, 0, 10, KvOutput::Ok),
                op(1, Put { key: 1, value: 2 }, 20, 30, KvOutput::Ok),
                op(2, Get { key: 1 }, 40, 50, Value(Some(1))),
            ],
            1,
        );
        assert!(
            explanation.contains("no linearization of its 3 operations"),
            "{explanation}"
        );
        assert!(
            explanation.contains(
                "longest linearizable prefix found (2 of 3 operations), ending in state Some(2)"
            ),
            "{explanation}"
        );
    }

    #[test]
    fn read_of_a_value_never_written_is_not_linearizable() {
        assert_violation(
            &[
                op(1, Put { key: 4, value: 1 }, 0, 100, KvOutput::Ok),
                op(2, Get { key: 4 }, 10, 20, Value(Some(3))),
            ],
            4,
        );
    }

    #[test]
    fn sequential_reads_going_backwards_are_not_linearizable() {
        assert_violation(
            &[
                op(1, Put { key: 1, value: 1 }, 0, 10, KvOutput::Ok),
                op(2, Put { key: 1, value: 2 }, 20, 100, KvOutput::Ok),
                op(3, Get { key: 1 }, 30, 40, Value(Some(2))),
                op(3, Get { key: 1 }, 50, 60, Value(Some(1))),
            ],
            1,
        );
    }

    #[test]
    fn cas_succeeding_twice_on_the_same_expected_value_is_not_linearizable() {
        assert_violation(
            &[
                op(1, Put { key: 1, value: 0 }, 0, 10, KvOutput::Ok),
                op(
                    2,
                    Cas {
                        key: 1,
                        expected: Some(0),
                        new: 1,
                    },
                    20,
                    30,
                    CasResult(true),
                ),
                op(
                    3,
                    Cas {
                        key: 1,
                        expected: Some(0),
                        new: 2,
                    },
                    40,
                    50,
                    CasResult(true),
                ),
            ],
            1,
        );
    }

    #[test]
    fn violation_on_one_key_names_that_key() {
        let mut ops = Vec::new();
        for key in 0..10 {
            ops.push(op(1, Put { key, value: 1 }, 0, 10, KvOutput::Ok));
            ops.push(op(2, Get { key }, 20, 30, Value(Some(1))));
        }
        // Key 6 goes backwards.
        ops.push(op(3, Put { key: 6, value: 2 }, 40, 50, KvOutput::Ok));
        ops.push(op(3, Get { key: 6 }, 60, 70, Value(Some(1))));
        let explanation = assert_violation(&ops, 6);
        assert!(explanation.starts_with("partition 6:"), "{explanation}");
        assert!(!explanation.contains("key:5"), "{explanation}");
    }

    #[test]
    fn smallest_failing_partition_is_reported() {
        let mut ops = vec![
            op(1, Get { key: 9 }, 0, 10, Value(Some(1))),
            op(1, Put { key: 2, value: 1 }, 0, 10, KvOutput::Ok),
            op(2, Put { key: 2, value: 2 }, 20, 30, KvOutput::Ok),
        ];
        ops.push(op(3, Get { key: 2 }, 40, 50, Value(Some(1))));
        assert_violation(&ops, 9);
    }

    #[test]
    fn explanation_lists_operations_by_call_time() {
        let explanation = assert_violation(
            &[
                op(4, Get { key: 1 }, 150, 160, Value(None)),
                op(3, Put { key: 1, value: 7 }, 120, 140, KvOutput::Ok),
                lost(
                    5,
                    Cas {
                        key: 1,
                        expected: None,
                        new: 2,
                    },
                    100,
                ),
            ],
            1,
        );
        let expected = "operations by call time:\n\
            \x20 client 5 [call 100, ret lost] Cas{key:1,expected:None,new:2} -> ?\n\
            \x20 client 3 [call 120, ret 140] Put{key:1,value:7} -> Ok\n\
            \x20 client 4 [call 150, ret 160] Get{key:1} -> Value(None)\n";
        assert!(explanation.contains(expected), "{explanation}");
    }

    /// Twenty concurrent writes of distinct values and a read of a value none of them wrote:
    /// the exhaustive search would visit about 2^20 configurations.
    fn ambiguous(key: u64) -> Vec<Operation<KvInput, KvOutput>> {
        let mut ops: Vec<_> = (0..20)
            .map(|i| op(i, Put { key, value: i }, i, 1000 + i, KvOutput::Ok))
            .collect();
        ops.push(op(99, Get { key }, 500, 600, Value(Some(12345))));
        ops
    }

    #[test]
    fn tiny_budget_gives_unknown() {
        assert_eq!(
            check(&KvModel, &ambiguous(3), 1000),
            Outcome::Unknown { partition: 3 }
        );
        // Too small to even linearize a linearizable history.
        let ops = [
            op(1, Put { key: 1, value: 1 }, 0, 10, KvOutput::Ok),
            op(1, Get { key: 1 }, 20, 30, Value(Some(1))),
        ];
        assert_eq!(check(&KvModel, &ops, 1), Outcome::Unknown { partition: 1 });
        assert_eq!(check(&KvModel, &ops, 2), Outcome::Linearizable);
    }

    #[test]
    fn unknown_does_not_hide_a_violation_elsewhere() {
        let mut ops = ambiguous(3);
        ops.push(op(1, Put { key: 8, value: 1 }, 0, 10, KvOutput::Ok));
        ops.push(op(2, Get { key: 8 }, 20, 30, Value(None)));
        assert_violation(&ops, 8);
    }

    /// xorshift64: a small deterministic generator for the property test.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random request on one of `keys` keys; written values are fresh (from `next_value`).
    fn random_input(
        rng: &mut XorShift,
        keys: u64,
        values: &[Option<u64>],
        next_value: &mut u64,
    ) -> KvInput {
        let key = rng.below(keys);
        let previous = *next_value;
        *next_value += 1;
        let fresh = *next_value;
        match rng.below(5) {
            0 => Put { key, value: fresh },
            1 | 2 => Get { key },
            3 => {
                let expected = match rng.below(3) {
                    0 => values[key as usize],
                    1 => None,
                    _ => Some(rng.below(previous + 1)),
                };
                Cas {
                    key,
                    expected,
                    new: fresh,
                }
            }
            _ => Delete { key },
        }
    }

    /// Runs `input` against a real map at its linearization point; returns the output.
    fn apply(values: &mut [Option<u64>], input: &KvInput) -> KvOutput {
        let value = &mut values[input.key() as usize];
        match *input {
            Put { value: v, .. } => {
                *value = Some(v);
                KvOutput::Ok
            }
            Get { .. } => Value(*value),
            Cas { expected, new, .. } => {
                let swapped = *value == expected;
                if swapped {
                    *value = Some(new);
                }
                CasResult(swapped)
            }
            Delete { .. } => {
                *value = None;
                KvOutput::Ok
            }
        }
    }

    /// A history with a linearization by construction: operation `i` takes effect at time
    /// `100 + 10 i` and its interval is widened randomly around that point (by up to `widen`).
    /// One operation in `lost_one_in` is lost, and half the lost ones never take effect.
    fn random_history(
        rng: &mut XorShift,
        len: u64,
        keys: u64,
        widen: u64,
        lost_one_in: u64,
    ) -> Vec<Operation<KvInput, KvOutput>> {
        let mut values = vec![None; keys as usize];
        let mut next_value = 0;
        (0..len)
            .map(|i| {
                let point = 100 + 10 * i;
                let input = random_input(rng, keys, &values, &mut next_value);
                let call = point - rng.below(widen + 1);
                let client = rng.below(8);
                if rng.below(lost_one_in) == 0 {
                    if rng.below(2) == 0 {
                        apply(&mut values, &input);
                    }
                    return lost(client, input, call);
                }
                let output = apply(&mut values, &input);
                op(client, input, call, point + rng.below(widen + 1), output)
            })
            .collect()
    }

    #[test]
    fn random_linearizable_histories_pass_and_corrupted_reads_fail() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..60 {
            // A few rounds on one key with much concurrency, most spread over several keys.
            // (Lost writes are what makes the search expensive: each may take effect anywhere
            // after its call, or never.)
            let (len, keys, widen, lost_one_in) = if round % 3 == 0 {
                (80, 1, 35, 20)
            } else {
                (120, 4, 80, 10)
            };
            let mut ops = random_history(&mut rng, len, keys, widen, lost_one_in);
            let outcome = check(&KvModel, &ops, BUDGET);
            assert_eq!(outcome, Outcome::Linearizable, "round {round}: {outcome}");

            let reads: Vec<usize> = (0..ops.len())
                .filter(|&i| matches!(ops[i].input, Get { .. }) && ops[i].ret.is_some())
                .collect();
            if reads.is_empty() {
                continue;
            }
            let read = reads[rng.below(reads.len() as u64) as usize];
            ops[read].output = Some(Value(Some(u64::MAX)));
            let key = ops[read].input.key();
            let explanation = assert_violation(&ops, key);
            assert!(
                explanation.contains(&format!("Get{{key:{key}}} -> Value(Some({}))", u64::MAX)),
                "{explanation}"
            );
        }
    }
}
