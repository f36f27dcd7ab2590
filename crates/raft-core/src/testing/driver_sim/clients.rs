//! Simulated clients: tasks that use the public [`NodeHandle`] API, with timeouts, against
//! whichever servers are up, and record what they saw as a history.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;

use futures::future::{select, Either};
use raftline_proto::NodeId;

use super::executor::Clock;
use super::machine::{Route, Workload};
use crate::driver::{NodeError, NodeHandle, StateMachine};
use crate::testing::linearizability::{Model, Operation};
use crate::{MembershipChange, Rng};

/// The response type of a workload's state machine.
pub type Response<W> = <<W as Workload>::Machine as StateMachine>::Response;
/// A workload's model input.
pub type Input<W> = <<W as Workload>::Model as Model>::Input;
/// A workload's model output.
pub type Output<W> = <<W as Workload>::Model as Model>::Output;

/// The clients' history: `None` where an operation certainly had no effect.
pub type SharedHistory<W> = Rc<RefCell<Vec<Option<Operation<Input<W>, Output<W>>>>>>;

/// The handles of the servers that are up, with the incarnation each belongs to.
pub struct Registry<R> {
    /// Node -> (handle, incarnation).
    pub handles: BTreeMap<NodeId, (NodeHandle<R>, u64)>,
}

impl<R> Default for Registry<R> {
    fn default() -> Self {
        Registry {
            handles: BTreeMap::new(),
        }
    }
}

impl<R: Send + 'static> Registry<R> {
    /// The live node that leads the highest term.
    pub fn leader(&self) -> Option<NodeId> {
        self.handles
            .iter()
            .map(|(&id, (h, _))| (id, h.status()))
            .filter(|(_, s)| s.is_leader)
            .max_by_key(|(_, s)| s.term)
            .map(|(id, _)| id)
    }
}

/// What the client learned of one operation.
enum Seen<O> {
    Done(O),
    /// It certainly had no effect (refused, or replaced by another leader's entry).
    NoEffect,
    /// It may or may not have taken effect.
    Unknown,
}

/// Errors after which the operation certainly did not take effect.
pub fn no_effect(e: &NodeError) -> bool {
    matches!(
        e,
        NodeError::NotLeader { .. }
            | NodeError::LeadershipLost
            | NodeError::ReadUnavailable
            | NodeError::Busy(_)
            | NodeError::MembershipRefused(_)
    )
}

/// Runs `fut` for at most `units`; `None` on timeout.
pub async fn with_timeout<T>(clock: &Clock, units: u64, fut: impl Future<Output = T>) -> Option<T> {
    let fut = std::pin::pin!(fut);
    match select(fut, clock.sleep(units)).await {
        Either::Left((value, _)) => Some(value),
        Either::Right(_) => None,
    }
}

/// What a client task needs.
pub struct Client<W: Workload> {
    /// The client's number (in the history).
    pub id: u64,
    /// The virtual clock.
    pub clock: Clock,
    /// The client's own randomness.
    pub rng: Rng,
    /// The workload (operations, commands, local reads).
    pub workload: Rc<RefCell<W>>,
    /// The servers that are up.
    pub registry: Rc<RefCell<Registry<Response<W>>>>,
    /// The history: each operation is entered when it is invoked (an operation still in
    /// flight when the run ends has an unknown outcome), and removed if it certainly had no
    /// effect.
    pub history: SharedHistory<W>,
    /// Operation ids, unique across clients.
    pub next_op: Rc<RefCell<u64>>,
    /// No new operation starts after this time.
    pub stop_at: u64,
    /// Pause between operations: 1 to this many units.
    pub think_units_max: u64,
    /// A request not answered in this many units is abandoned (outcome unknown).
    pub timeout_units: u64,
}

impl<W: Workload> Client<W> {
    /// Runs operations until `stop_at`.
    pub async fn run(mut self) {
        let mut hint: Option<NodeId> = None;
        while self.clock.now() < self.stop_at {
            let think = 1 + self.rng.below(self.think_units_max);
            self.clock.sleep(think).await;
            let Some((node, handle, incarnation)) = self.target(hint) else {
                continue;
            };
            let (input, route) = self.workload.borrow_mut().input(&mut self.rng);
            let at = self.history.borrow().len();
            self.history.borrow_mut().push(Some(Operation {
                client: self.id,
                input: input.clone(),
                call: self.clock.now(),
                ret: None,
                output: None,
            }));
            let seen = match route {
                Route::Log => self.propose(&handle, &input, &mut hint).await,
                Route::ReadBarrier => self.read(node, incarnation, &handle, &input).await,
            };
            let mut history = self.history.borrow_mut();
            match seen {
                Seen::Done(o) => {
                    let op = history[at].as_mut().expect("entered above");
                    op.ret = Some(self.clock.now());
                    op.output = Some(o);
                }
                Seen::NoEffect => history[at] = None,
                Seen::Unknown => {}
            }
        }
    }

    /// The node to ask: the hinted leader if it is up, else a random live node.
    fn target(&mut self, hint: Option<NodeId>) -> Option<(NodeId, NodeHandle<Response<W>>, u64)> {
        let registry = self.registry.borrow();
        let ids: Vec<NodeId> = registry.handles.keys().copied().collect();
        if ids.is_empty() {
            return None;
        }
        let node = match hint {
            Some(h) if registry.handles.contains_key(&h) && !self.rng.chance(0.1) => h,
            _ => ids[self.rng.below(ids.len() as u64) as usize],
        };
        let (handle, incarnation) = registry.handles.get(&node)?.clone();
        Some((node, handle, incarnation))
    }

    async fn propose(
        &self,
        handle: &NodeHandle<Response<W>>,
        input: &Input<W>,
        hint: &mut Option<NodeId>,
    ) -> Seen<Output<W>> {
        let op = {
            let mut next = self.next_op.borrow_mut();
            *next += 1;
            *next
        };
        let command = self.workload.borrow().command(op, input);
        match with_timeout(&self.clock, self.timeout_units, handle.propose(command)).await {
            Some(Ok(response)) => Seen::Done(self.workload.borrow().output(input, response)),
            Some(Err(NodeError::NotLeader { leader, .. })) => {
                *hint = leader;
                Seen::NoEffect
            }
            Some(Err(e)) if no_effect(&e) => Seen::NoEffect,
            Some(Err(_)) | None => Seen::Unknown,
        }
    }

    async fn read(
        &self,
        node: NodeId,
        incarnation: u64,
        handle: &NodeHandle<Response<W>>,
        input: &Input<W>,
    ) -> Seen<Output<W>> {
        match with_timeout(&self.clock, self.timeout_units, handle.read_barrier()).await {
            Some(Ok(_)) => {
                // The node may have crashed and restarted while the client waited: its state
                // machine is another one now.
                let same = self
                    .registry
                    .borrow()
                    .handles
                    .get(&node)
                    .is_some_and(|(_, i)| *i == incarnation);
                if same {
                    Seen::Done(self.workload.borrow().read(node, input))
                } else {
                    Seen::NoEffect
                }
            }
            _ => Seen::NoEffect,
        }
    }
}

/// Counters of the administrator's requests.
#[derive(Clone, Debug, Default)]
pub struct AdminStats {
    /// Configuration changes that succeeded.
    pub changes_ok: u64,
    /// Configuration changes refused or failed.
    pub changes_failed: u64,
    /// Leadership transfers that succeeded.
    pub transfers_ok: u64,
    /// Leadership transfers that failed.
    pub transfers_failed: u64,
}

/// An operator changing the configuration and moving leadership while clients run.
pub struct Admin<R> {
    /// The virtual clock.
    pub clock: Clock,
    /// Its randomness.
    pub rng: Rng,
    /// The servers that are up.
    pub registry: Rc<RefCell<Registry<R>>>,
    /// Servers started empty, waiting to be added (each is added at most once).
    pub spares: Vec<NodeId>,
    /// Voters are never removed below this many.
    pub voters_min: usize,
    /// Time between requests: 1 to this many units.
    pub pause_units_max: u64,
    /// Requests are abandoned after this many units.
    pub timeout_units: u64,
    /// No request starts after this time.
    pub stop_at: u64,
    /// What happened.
    pub stats: Rc<RefCell<AdminStats>>,
}

impl<R: Send + 'static> Admin<R> {
    /// Runs requests until `stop_at`.
    pub async fn run(mut self) {
        while self.clock.now() < self.stop_at {
            let pause = 1 + self.rng.below(self.pause_units_max);
            self.clock.sleep(pause).await;
            let leader = self.registry.borrow().leader();
            let Some(leader) = leader else { continue };
            let handle = match self.registry.borrow().handles.get(&leader) {
                Some((h, _)) => h.clone(),
                None => continue,
            };
            let voters: Vec<NodeId> = handle.status().membership.voters.into_iter().collect();
            match self.rng.below(3) {
                0 if !self.spares.is_empty() => {
                    let spare = self.spares.remove(0);
                    self.change(&handle, MembershipChange::AddVoter(spare))
                        .await;
                }
                1 if voters.len() > self.voters_min => {
                    let victim = voters[self.rng.below(voters.len() as u64) as usize];
                    self.change(&handle, MembershipChange::Remove(victim)).await;
                }
                _ => {
                    let to = voters[self.rng.below(voters.len() as u64) as usize];
                    let done = with_timeout(
                        &self.clock,
                        self.timeout_units,
                        handle.transfer_leadership(to),
                    )
                    .await;
                    let mut stats = self.stats.borrow_mut();
                    match done {
                        Some(Ok(())) => stats.transfers_ok += 1,
                        _ => stats.transfers_failed += 1,
                    }
                }
            }
        }
    }

    async fn change(&self, handle: &NodeHandle<R>, change: MembershipChange) {
        let done = with_timeout(
            &self.clock,
            self.timeout_units,
            handle.change_membership(change),
        )
        .await;
        let mut stats = self.stats.borrow_mut();
        match done {
            Some(Ok(_)) => stats.changes_ok += 1,
            _ => stats.changes_failed += 1,
        }
    }
}
