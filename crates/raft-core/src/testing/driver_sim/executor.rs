//! A deterministic, single-threaded executor with a virtual clock.
//!
//! Tasks are polled one at a time on the caller's thread. When several are ready, a seeded
//! [`Rng`] picks which one runs next, so the seed also decides the order in which ready
//! futures make progress. Time is virtual: it moves only when no task is ready, straight to
//! the next timer. No thread is started and the real clock is never read.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures::task::ArcWake;
use parking_lot::Mutex;

use crate::Rng;

/// A task's id: its position in spawn order.
pub type TaskId = u64;

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// What wakers and timers share with the executor.
#[derive(Default)]
struct Shared {
    /// Tasks woken since they were last polled.
    ready: BTreeSet<TaskId>,
    /// Virtual time, in the simulator's units.
    now: u64,
    /// Pending timers: (deadline, registration) -> the waker to wake then.
    timers: BTreeMap<(u64, u64), Waker>,
    next_timer: u64,
}

struct TaskWaker {
    id: TaskId,
    shared: Arc<Mutex<Shared>>,
}

impl ArcWake for TaskWaker {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.shared.lock().ready.insert(arc_self.id);
    }
}

/// The virtual clock: a cloneable handle that tells the time and makes timers.
#[derive(Clone)]
pub struct Clock {
    shared: Arc<Mutex<Shared>>,
}

impl Clock {
    /// The current virtual time.
    pub fn now(&self) -> u64 {
        self.shared.lock().now
    }

    /// A future that completes `units` after now.
    pub fn sleep(&self, units: u64) -> Sleep {
        Sleep {
            shared: Arc::clone(&self.shared),
            deadline: self.now() + units,
            registered: None,
        }
    }
}

/// The future of [`Clock::sleep`].
pub struct Sleep {
    shared: Arc<Mutex<Shared>>,
    deadline: u64,
    registered: Option<(u64, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut shared = this.shared.lock();
        if shared.now >= this.deadline {
            if let Some(key) = this.registered.take() {
                shared.timers.remove(&key);
            }
            return Poll::Ready(());
        }
        let key = match this.registered {
            Some(key) => key,
            None => {
                shared.next_timer += 1;
                let key = (this.deadline, shared.next_timer);
                this.registered = Some(key);
                key
            }
        };
        shared.timers.insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.registered.take() {
            self.shared.lock().timers.remove(&key);
        }
    }
}

/// A group of tasks that stop together (one simulated server's tasks).
pub type Group = u64;

/// Spawns tasks from inside other tasks; they join the executor before its next poll.
#[derive(Clone, Default)]
pub struct Spawner {
    queued: Rc<RefCell<Vec<(Group, Task)>>>,
}

impl Spawner {
    /// Adds a task to `group`.
    pub fn spawn(&self, group: Group, task: impl Future<Output = ()> + 'static) {
        self.queued.borrow_mut().push((group, Box::pin(task)));
    }
}

/// The executor: its tasks and the clock they share.
pub struct Executor {
    shared: Arc<Mutex<Shared>>,
    tasks: BTreeMap<TaskId, (Group, Task)>,
    next_id: TaskId,
    rng: Rng,
    spawner: Spawner,
}

impl Executor {
    /// An executor whose choices among ready tasks follow `seed`.
    pub fn new(seed: u64) -> Executor {
        Executor {
            shared: Arc::default(),
            tasks: BTreeMap::new(),
            next_id: 0,
            rng: Rng::new(seed),
            spawner: Spawner::default(),
        }
    }

    /// A spawner for tasks to start other tasks.
    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    /// The clock of this executor.
    pub fn clock(&self) -> Clock {
        Clock {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Adds a task (in group 0); it is ready at once.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + 'static) -> TaskId {
        self.spawn_in(0, Box::pin(task))
    }

    /// Adds a task to `group`; it is ready at once.
    pub fn spawn_in(&mut self, group: Group, task: Pin<Box<dyn Future<Output = ()>>>) -> TaskId {
        self.next_id += 1;
        let id = self.next_id;
        self.tasks.insert(id, (group, task));
        self.shared.lock().ready.insert(id);
        id
    }

    /// Drops a task: its future is dropped where it stands, as a crash would stop it.
    pub fn cancel(&mut self, id: TaskId) {
        self.tasks.remove(&id);
        self.shared.lock().ready.remove(&id);
    }

    /// Drops every task of `group`.
    pub fn cancel_group(&mut self, group: Group) {
        self.absorb_spawned();
        let ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, (g, _))| *g == group)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.cancel(id);
        }
    }

    /// Whether the task is still running.
    pub fn is_running(&self, id: TaskId) -> bool {
        self.tasks.contains_key(&id)
    }

    fn absorb_spawned(&mut self) {
        let queued = std::mem::take(&mut *self.spawner.queued.borrow_mut());
        for (group, task) in queued {
            self.spawn_in(group, task);
        }
    }

    /// Polls one ready task, picked by the seeded rng, and returns its id; `None` when no
    /// task is ready.
    pub fn poll_one(&mut self) -> Option<TaskId> {
        self.absorb_spawned();
        let id = {
            let mut shared = self.shared.lock();
            let ready: Vec<TaskId> = shared.ready.iter().copied().collect();
            if ready.is_empty() {
                return None;
            }
            let id = ready[self.rng.below(ready.len() as u64) as usize];
            shared.ready.remove(&id);
            id
        };
        let Some((_, task)) = self.tasks.get_mut(&id) else {
            return Some(id); // woken after it was cancelled
        };
        let waker = futures::task::waker(Arc::new(TaskWaker {
            id,
            shared: Arc::clone(&self.shared),
        }));
        if task
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
        {
            self.tasks.remove(&id);
        }
        Some(id)
    }

    /// The earliest timer's deadline.
    pub fn next_timer(&self) -> Option<u64> {
        self.shared.lock().timers.keys().next().map(|&(at, _)| at)
    }

    /// Moves the clock to `at` (never backwards) and wakes every timer due by then.
    pub fn advance_to(&mut self, at: u64) {
        let due = {
            let mut shared = self.shared.lock();
            shared.now = shared.now.max(at);
            let now = shared.now;
            let later = shared.timers.split_off(&(now + 1, 0));
            std::mem::replace(&mut shared.timers, later)
        };
        for (_, waker) in due {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Runs every task to completion, advancing time when all wait.
    fn run(exec: &mut Executor) {
        loop {
            while exec.poll_one().is_some() {}
            match exec.next_timer() {
                Some(at) => exec.advance_to(at),
                None => break,
            }
        }
    }

    fn order(seed: u64) -> Vec<u32> {
        let mut exec = Executor::new(seed);
        let log = Rc::new(RefCell::new(Vec::new()));
        for i in 0..8u32 {
            let (log, clock) = (Rc::clone(&log), exec.clock());
            exec.spawn(async move {
                clock.sleep(u64::from(i % 3) * 10).await;
                log.borrow_mut().push(i);
            });
        }
        run(&mut exec);
        let order = log.borrow().clone();
        order
    }

    #[test]
    fn same_seed_same_order_and_timers_in_time_order() {
        assert_eq!(order(7), order(7));
        let o = order(7);
        assert_eq!(o.len(), 8);
        // Tasks that sleep longer finish later, whatever the seed.
        let pos = |i: u32| o.iter().position(|&x| x == i).unwrap();
        assert!(pos(0) < pos(1) && pos(1) < pos(2));
        assert!((0..20).map(order).collect::<BTreeSet<_>>().len() > 1);
    }

    #[test]
    fn cancelled_task_never_runs_again_and_time_only_moves_forward() {
        let mut exec = Executor::new(1);
        let clock = exec.clock();
        let hits = Rc::new(RefCell::new(0));
        let h = Rc::clone(&hits);
        let id = exec.spawn(async move {
            clock.sleep(100).await;
            *h.borrow_mut() += 1;
        });
        while exec.poll_one().is_some() {}
        exec.cancel(id);
        assert_eq!(
            exec.next_timer(),
            None,
            "the dropped sleep removes its timer"
        );
        exec.advance_to(200);
        exec.advance_to(50);
        assert_eq!(exec.clock().now(), 200);
        assert_eq!(*hits.borrow(), 0);
        assert!(!exec.is_running(id));
    }
}
