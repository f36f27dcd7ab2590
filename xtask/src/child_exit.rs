//! A child process's end as an event to wait on, instead of calling `try_wait` in a loop.
//!
//! A thread per child blocks in `waitid(WEXITED | WNOWAIT)` until the child ends, then wakes
//! whoever waits: blocking callers on a condition variable, async ones on a `Notify`.
//! `WNOWAIT` leaves the child unreaped, so `Child::try_wait` still reaps it and reads its
//! status. The thread waits on a pidfd where the kernel has them (Linux 5.3 and later), which
//! names the child exactly, and on the pid otherwise.

use std::os::fd::AsFd;
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use rustix::io::Errno;
use rustix::process::{pidfd_open, waitid, Pid, PidfdFlags, WaitId, WaitIdOptions};
use tokio::sync::Notify;

/// A child process whose end can be waited for.
#[derive(Clone)]
pub struct ExitWatch {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    ended: Mutex<bool>,
    /// For blocking waits.
    cond: Condvar,
    /// For async waits.
    notify: Notify,
}

impl Shared {
    fn ended(&self) -> bool {
        *self.ended.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ExitWatch {
    /// Watches `child`. Call it before the child is reaped, while its pid is still its own.
    pub fn new(child: &Child) -> std::io::Result<ExitWatch> {
        let pid = Pid::from_child(child);
        let pidfd = pidfd_open(pid, PidfdFlags::empty()).ok();
        let name = format!("exit-watch-{}", child.id());
        let shared = Arc::new(Shared::default());
        let watcher = Arc::clone(&shared);
        std::thread::Builder::new().name(name).spawn(move || {
            let id = match &pidfd {
                Some(fd) => WaitId::PidFd(fd.as_fd()),
                None => WaitId::Pid(pid),
            };
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
            // Any other answer than an interruption means the child is gone: it ended,
            // or it was reaped already (`ECHILD`).
            while let Err(Errno::INTR) = waitid(id.clone(), options) {}
            *watcher.ended.lock().unwrap_or_else(PoisonError::into_inner) = true;
            watcher.cond.notify_all();
            watcher.notify.notify_waiters();
        })?;
        Ok(ExitWatch { shared })
    }

    /// Blocks until the process has ended or `deadline` passes; returns whether it ended.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let ended = self
            .shared
            .ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let timeout = deadline.saturating_duration_since(Instant::now());
        let (ended, _) = self
            .shared
            .cond
            .wait_timeout_while(ended, timeout, |ended| !*ended)
            .unwrap_or_else(PoisonError::into_inner);
        *ended
    }

    /// Resolves once the process has ended.
    pub async fn ended(&self) {
        let notified = self.shared.notify.notified();
        tokio::pin!(notified);
        // Registered before the check, so that an end signalled in between still wakes it.
        notified.as_mut().enable();
        if self.shared.ended() {
            return;
        }
        notified.await;
    }
}
