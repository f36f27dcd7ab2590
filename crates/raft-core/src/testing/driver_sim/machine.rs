//! What the simulated clients run against: the [`Workload`] trait (a state machine, its
//! sequential model, how client operations become commands and reads), and the test
//! workload: a key-value register map with a digest of everything applied.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt};
use parking_lot::Mutex;
use raftline_proto::{Entry, EntryPayload, LogIndex, NodeId};

use super::executor::Clock;
use crate::driver::{SnapshotSink, SnapshotSource, StateMachine};
use crate::testing::linearizability::{KvInput, KvModel, KvOutput, Model};
use crate::Rng;

/// A state machine under simulation, with the model its client histories are checked
/// against.
pub trait Workload: 'static {
    /// The state machine each node runs.
    type Machine: StateMachine;
    /// The sequential specification.
    type Model: Model;

    /// The model.
    fn model(&self) -> Self::Model;

    /// A fresh, empty state machine for `node` (at its first start and after each crash).
    fn machine(&mut self, node: NodeId) -> Self::Machine;

    /// A random client operation, and whether it goes through the log or is a read served
    /// locally after a read barrier.
    fn input(&mut self, rng: &mut Rng) -> (<Self::Model as Model>::Input, Route);

    /// The command that carries a write (`op` makes every command unique).
    fn command(&self, op: u64, input: &<Self::Model as Model>::Input) -> Bytes;

    /// What the client sees of the state machine's response.
    fn output(
        &self,
        input: &<Self::Model as Model>::Input,
        response: <Self::Machine as StateMachine>::Response,
    ) -> <Self::Model as Model>::Output;

    /// Serves a read from `node`'s state machine as it is now.
    fn read(
        &self,
        node: NodeId,
        input: &<Self::Model as Model>::Input,
    ) -> <Self::Model as Model>::Output;

    /// The digest a snapshot's data records, if this state machine keeps one (see
    /// [`command_digest`]); the simulator then checks it against the committed log.
    fn snapshot_digest(&self, data: &[u8]) -> Option<u64>;
}

/// How a client operation is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Proposed as a command; the response comes from applying it.
    Log,
    /// A read barrier on the node, then a read of its state machine.
    ReadBarrier,
}

/// The digest of a state machine that applied `entry` on top of `digest`: commands only
/// (FNV-1a of index and command), as a state machine sees them. The checker computes the
/// same over the committed log.
pub fn command_digest(digest: u64, entry: &Entry) -> u64 {
    match &entry.payload {
        EntryPayload::Normal(command) => fnv(digest, entry.index, command),
        _ => digest,
    }
}

fn fnv(digest: u64, index: LogIndex, command: &[u8]) -> u64 {
    let mut h = digest ^ 0xcbf2_9ce4_8422_2325;
    for &b in index.0.to_be_bytes().iter().chain(command) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The test state machine's state.
#[derive(Clone, Debug, Default)]
pub struct KvState {
    map: BTreeMap<u64, u64>,
    digest: u64,
}

impl KvState {
    fn apply(&mut self, input: &KvInput) -> KvOutput {
        match *input {
            KvInput::Put { key, value } => {
                self.map.insert(key, value);
                KvOutput::Ok
            }
            KvInput::Get { key } => KvOutput::Value(self.map.get(&key).copied()),
            KvInput::Cas { key, expected, new } => {
                let ok = self.map.get(&key).copied() == expected;
                if ok {
                    self.map.insert(key, new);
                }
                KvOutput::CasResult(ok)
            }
            KvInput::Delete { key } => {
                self.map.remove(&key);
                KvOutput::Ok
            }
        }
    }
}

/// A command of the test state machine: operation id, then the input.
fn encode(op: u64, input: &KvInput) -> Bytes {
    let mut out = Vec::with_capacity(33);
    out.extend_from_slice(&op.to_be_bytes());
    let (tag, a, b, c) = match *input {
        KvInput::Put { key, value } => (0u8, key, value, 0),
        KvInput::Get { key } => (1, key, 0, 0),
        KvInput::Cas { key, expected, new } => match expected {
            Some(e) => (2, key, e, new),
            None => (3, key, 0, new),
        },
        KvInput::Delete { key } => (4, key, 0, 0),
    };
    out.push(tag);
    for v in [a, b, c] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    Bytes::from(out)
}

fn decode(command: &[u8]) -> Option<KvInput> {
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_be_bytes(
            command.get(9 + 8 * i..17 + 8 * i)?.try_into().ok()?,
        ))
    };
    let (a, b, c) = (word(0)?, word(1)?, word(2)?);
    Some(match command.get(8)? {
        0 => KvInput::Put { key: a, value: b },
        1 => KvInput::Get { key: a },
        2 => KvInput::Cas {
            key: a,
            expected: Some(b),
            new: c,
        },
        3 => KvInput::Cas {
            key: a,
            expected: None,
            new: c,
        },
        4 => KvInput::Delete { key: a },
        _ => return None,
    })
}

/// The test state machine: registers on a few keys, and a digest of every command.
pub struct KvMachine {
    state: Arc<Mutex<KvState>>,
    /// Snapshots take this long in virtual time (a large state machine).
    snapshot_delay: Option<(Clock, u64)>,
    /// One command in four takes this long to apply.
    apply_delay: Option<(Clock, u64)>,
}

#[async_trait]
impl StateMachine for KvMachine {
    type Response = KvOutput;

    async fn apply(&mut self, index: LogIndex, command: &Bytes) -> KvOutput {
        if let Some((clock, units)) = &self.apply_delay {
            // One command in four is slow, so that work queues up behind it.
            if fnv(0, index, command).is_multiple_of(4) {
                clock.sleep(*units).await;
            }
        }
        let mut state = self.state.lock();
        state.digest = fnv(state.digest, index, command);
        let input = decode(command).expect("the simulator's clients encode every command");
        state.apply(&input)
    }

    async fn snapshot(&mut self, sink: &mut SnapshotSink<'_>) -> std::io::Result<()> {
        let data = {
            let state = self.state.lock();
            let mut data = state.digest.to_be_bytes().to_vec();
            for (k, v) in &state.map {
                data.extend_from_slice(&k.to_be_bytes());
                data.extend_from_slice(&v.to_be_bytes());
            }
            data
        };
        if let Some((clock, units)) = &self.snapshot_delay {
            // Half before the first byte, half before the rest: a crash may come in between.
            clock.sleep(units / 2).await;
            sink.write_all(&data[..8]).await?;
            clock.sleep(units - units / 2).await;
            return sink.write_all(&data[8..]).await;
        }
        sink.write_all(&data).await?;
        sink.flush().await
    }

    async fn restore(&mut self, source: &mut SnapshotSource<'_>) -> std::io::Result<()> {
        let mut data = Vec::new();
        source.read_to_end(&mut data).await?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad kv snapshot");
        if data.len() < 8 || (data.len() - 8) % 16 != 0 {
            return Err(bad());
        }
        let word = |at: usize| u64::from_be_bytes(data[at..at + 8].try_into().expect("8 bytes"));
        let mut state = KvState {
            digest: word(0),
            map: BTreeMap::new(),
        };
        for at in (8..data.len()).step_by(16) {
            state.map.insert(word(at), word(at + 8));
        }
        *self.state.lock() = state;
        Ok(())
    }
}

/// The test workload: puts, gets, compare-and-sets and deletes on `keys` keys, half of the
/// gets through the log and half through read barriers.
pub struct KvWorkload {
    keys: u64,
    snapshot_delay: Option<(Clock, u64)>,
    apply_delay: Option<(Clock, u64)>,
    /// Only this server's snapshots are slow (all when `None`).
    slow_node: Option<NodeId>,
    states: BTreeMap<NodeId, Arc<Mutex<KvState>>>,
    next_value: u64,
}

impl KvWorkload {
    /// Operations spread over `keys` keys.
    pub fn new(keys: u64) -> KvWorkload {
        KvWorkload {
            keys: keys.max(1),
            snapshot_delay: None,
            apply_delay: None,
            slow_node: None,
            states: BTreeMap::new(),
            next_value: 0,
        }
    }
}

impl KvWorkload {
    /// Every snapshot takes `units` of virtual time on `clock`, as a large state machine's
    /// would: the driver must keep ticking, heartbeating and appending meanwhile.
    pub fn slow_snapshots(&mut self, clock: Clock, units: u64) {
        self.snapshot_delay = (units > 0).then_some((clock, units));
    }

    /// One command in four takes `units` of virtual time to apply (work queues up behind
    /// it: a restarted server replaying its log while a snapshot arrives, for example).
    pub fn slow_applies(&mut self, clock: Clock, units: u64) {
        self.apply_delay = (units > 0).then_some((clock, units));
    }

    /// Makes only `node`'s snapshots slow.
    pub fn slow_only_on(&mut self, node: NodeId) {
        self.slow_node = Some(node);
    }
}

impl Workload for KvWorkload {
    type Machine = KvMachine;
    type Model = KvModel;

    fn model(&self) -> KvModel {
        KvModel
    }

    fn machine(&mut self, node: NodeId) -> KvMachine {
        let state = Arc::new(Mutex::new(KvState::default()));
        self.states.insert(node, Arc::clone(&state));
        KvMachine {
            state,
            snapshot_delay: self
                .snapshot_delay
                .clone()
                .filter(|_| self.slow_node.is_none_or(|n| n == node)),
            apply_delay: self.apply_delay.clone(),
        }
    }

    fn input(&mut self, rng: &mut Rng) -> (KvInput, Route) {
        let key = rng.below(self.keys);
        self.next_value += 1;
        let value = self.next_value;
        let input = match rng.below(10) {
            0..=3 => KvInput::Put { key, value },
            4..=6 => KvInput::Get { key },
            7 | 8 => KvInput::Cas {
                key,
                expected: (rng.below(3) > 0).then(|| value.saturating_sub(1 + rng.below(3))),
                new: value,
            },
            _ => KvInput::Delete { key },
        };
        let route = match input {
            KvInput::Get { .. } if rng.chance(0.6) => Route::ReadBarrier,
            _ => Route::Log,
        };
        (input, route)
    }

    fn command(&self, op: u64, input: &KvInput) -> Bytes {
        encode(op, input)
    }

    fn output(&self, _: &KvInput, response: KvOutput) -> KvOutput {
        response
    }

    fn read(&self, node: NodeId, input: &KvInput) -> KvOutput {
        let state = self
            .states
            .get(&node)
            .expect("a node that runs has a state");
        let mut copy = state.lock().clone();
        copy.apply(input)
    }

    fn snapshot_digest(&self, data: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(data.get(..8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let inputs = [
            KvInput::Put { key: 1, value: 2 },
            KvInput::Get { key: 3 },
            KvInput::Cas {
                key: 4,
                expected: Some(5),
                new: 6,
            },
            KvInput::Cas {
                key: 4,
                expected: None,
                new: 6,
            },
            KvInput::Delete { key: 7 },
        ];
        for input in inputs {
            let back = decode(&encode(9, &input)).unwrap();
            assert_eq!(format!("{back:?}"), format!("{input:?}"));
        }
        assert!(decode(b"short").is_none());
    }
}
