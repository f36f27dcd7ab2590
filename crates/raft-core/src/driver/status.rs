//! [`StatusWatch`]: the node's status as a watch, so callers wait for a condition (a leader
//! known, an index applied, a configuration) instead of polling.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use raftline_proto::{LogIndex, Membership, NodeId};

use super::error::NodeError;
use super::node::NodeStatus;

/// The status the driver publishes after every event, and the watchers waiting for it to
/// change.
#[derive(Default)]
pub(crate) struct StatusCell {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    status: NodeStatus,
    /// Bumped at every publication.
    version: u64,
    /// The node stopped: no publication will come.
    closed: bool,
    /// Watchers waiting for the next publication. Bounded by the number of watchers polled
    /// since the last publication: each registers at most once per publication.
    wakers: Vec<Waker>,
}

impl StatusCell {
    /// A copy of the status.
    pub(crate) fn get(&self) -> NodeStatus {
        self.inner.lock().status.clone()
    }

    /// Reads a part of the status without copying the rest.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&NodeStatus) -> T) -> T {
        f(&self.inner.lock().status)
    }

    /// Changes the status and wakes every watcher.
    pub(crate) fn publish(&self, f: impl FnOnce(&mut NodeStatus)) {
        let wakers = {
            let mut inner = self.inner.lock();
            f(&mut inner.status);
            inner.version += 1;
            std::mem::take(&mut inner.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// The node stopped: watchers get [`NodeError::ShuttingDown`].
    pub(crate) fn close(&self) {
        let wakers = {
            let mut inner = self.inner.lock();
            inner.closed = true;
            std::mem::take(&mut inner.wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// A watch of a node's [`NodeStatus`], from [`NodeHandle::watch`](super::NodeHandle::watch).
///
/// ```ignore
/// let mut watch = handle.watch();
/// let leader = watch.leader().await?;           // a leader is known
/// watch.applied(index).await?;                  // this node applied `index`
/// watch.wait_for(|s| s.membership.is_voter(id)).await?;
/// ```
pub struct StatusWatch {
    cell: Arc<StatusCell>,
    /// The publication this watch last saw.
    seen: u64,
}

impl StatusWatch {
    pub(crate) fn new(cell: Arc<StatusCell>) -> StatusWatch {
        let seen = cell.inner.lock().version;
        StatusWatch { cell, seen }
    }

    /// The status now.
    pub fn current(&self) -> NodeStatus {
        self.cell.get()
    }

    /// Waits for the next publication after the last one this watch saw.
    pub async fn changed(&mut self) -> Result<(), NodeError> {
        Changed { watch: self }.await
    }

    /// Waits until `condition` holds of the status (at once if it holds now) and returns
    /// that status. Fails with [`NodeError::ShuttingDown`] if the node stops first.
    pub async fn wait_for(
        &mut self,
        mut condition: impl FnMut(&NodeStatus) -> bool,
    ) -> Result<NodeStatus, NodeError> {
        loop {
            let status = self.cell.get();
            if condition(&status) {
                return Ok(status);
            }
            self.changed().await?;
        }
    }

    /// Waits until this node knows a leader, and returns it.
    pub async fn leader(&mut self) -> Result<NodeId, NodeError> {
        let status = self.wait_for(|s| s.leader.is_some()).await?;
        Ok(status.leader.expect("waited for it"))
    }

    /// Waits until this node has applied `index`.
    pub async fn applied(&mut self, index: LogIndex) -> Result<NodeStatus, NodeError> {
        self.wait_for(|s| s.applied_index >= index).await
    }

    /// Waits until the configuration in force on this node satisfies `condition`.
    pub async fn membership(
        &mut self,
        mut condition: impl FnMut(&Membership) -> bool,
    ) -> Result<Membership, NodeError> {
        let status = self.wait_for(|s| condition(&s.membership)).await?;
        Ok(status.membership)
    }
}

/// The future of [`StatusWatch::changed`].
struct Changed<'a> {
    watch: &'a mut StatusWatch,
}

impl Future for Changed<'_> {
    type Output = Result<(), NodeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut inner = this.watch.cell.inner.lock();
        if inner.version != this.watch.seen {
            this.watch.seen = inner.version;
            return Poll::Ready(Ok(()));
        }
        if inner.closed {
            return Poll::Ready(Err(NodeError::ShuttingDown));
        }
        if !inner.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            inner.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn a_waiter_wakes_when_its_condition_holds_and_not_before() {
        let cell = Arc::new(StatusCell::default());
        let mut pool = LocalPool::new();
        let got = Rc::new(RefCell::new(None));
        let (mut watch, out) = (StatusWatch::new(Arc::clone(&cell)), Rc::clone(&got));
        pool.spawner()
            .spawn_local(async move {
                *out.borrow_mut() = Some(watch.applied(LogIndex(5)).await.map(|s| s.term));
            })
            .unwrap();
        pool.run_until_stalled();
        cell.publish(|s| s.applied_index = LogIndex(4));
        pool.run_until_stalled();
        assert!(got.borrow().is_none(), "index 4 is not 5");
        cell.publish(|s| {
            s.applied_index = LogIndex(5);
            s.term = raftline_proto::Term(3);
        });
        pool.run_until_stalled();
        assert_eq!(*got.borrow(), Some(Ok(raftline_proto::Term(3))));
    }

    #[test]
    fn a_condition_that_holds_already_returns_at_once_and_a_stop_ends_the_wait() {
        let cell = Arc::new(StatusCell::default());
        cell.publish(|s| s.leader = Some(NodeId(2)));
        let mut watch = StatusWatch::new(Arc::clone(&cell));
        assert_eq!(futures::executor::block_on(watch.leader()), Ok(NodeId(2)));
        let mut pool = LocalPool::new();
        let got = Rc::new(RefCell::new(None));
        let out = Rc::clone(&got);
        pool.spawner()
            .spawn_local(async move {
                *out.borrow_mut() = Some(watch.membership(|m| m.is_voter(NodeId(9))).await);
            })
            .unwrap();
        pool.run_until_stalled();
        cell.close();
        pool.run_until_stalled();
        assert_eq!(*got.borrow(), Some(Err(NodeError::ShuttingDown)));
    }
}
