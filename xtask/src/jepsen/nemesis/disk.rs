//! The disk nemesis: a member's filesystem (a loop-mounted ext4 image, see
//! [`loopfs`]) filled with a ballast file for 3-5 s, then freed.
//!
//! raft-kv's log store is fail-stop: the first write or sync that fails (ENOSPC included)
//! makes it refuse every later write, and raft-kv exits with status 2. Writes into the blocks
//! of a segment prepared (zero-filled) before the fill still succeed; the next segment's
//! preparation is what fails. So a member under a full disk either keeps running (its writes
//! went to allocated blocks) or exits with status 2; after freeing the space the nemesis
//! restarts it, as kill does, and says so in the fault's detail. Any other end (a signal such
//! as SIGBUS, another status) is a crash: the run fails.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use raftline_core::Rng;

use super::super::loopfs;
use super::super::nodes::STARTING;
use super::Nemesis;

/// A full disk holds at least this long.
const HOLD_MS_MIN: u64 = 3000;

/// The chance that the full disk is the leader's.
const LEADER_CHANCE: f64 = 0.4;

/// raft-kv's exit status when its storage failed (fail-stop).
const STORAGE_FAILED_STATUS: i32 = 2;

/// Whether an exit under a full disk is the clean fail-stop (status 2).
fn clean_exit(status: ExitStatus) -> bool {
    status.code() == Some(STORAGE_FAILED_STATUS)
}

/// Whether the member's last run (what follows the last start line of its log) logged an
/// ENOSPC error.
fn enospc_logged(log: &str) -> bool {
    let last = log.rsplit(STARTING).next().unwrap_or(log);
    last.contains("No space left on device")
}

/// How an exit reads in a fault's detail.
fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(7)) => "killed by SIGBUS".into(),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

impl Nemesis<'_> {
    /// Fills a member's filesystem, holds, frees it, and restarts the member if it exited.
    pub(super) async fn disk(&self, rng: &mut Rng) -> Result<String, String> {
        let Some(_) = self.disks else {
            return Ok("disk skipped (no loop filesystems)".into());
        };
        let (i, why) = self.target(rng, LEADER_CHANCE).await;
        let name = self.name(i);
        let home = self.nodes.borrow().home(i);
        let ballast = loopfs::fill(&home)?;
        let mut detail = format!(
            "disk full on {name}{why} ({} MiB ballast; {} KiB free: ext4's metadata reserve)",
            ballast >> 20,
            loopfs::free_bytes(&home) >> 10
        );
        self.hold(rng, HOLD_MS_MIN, &detail).await;
        let exited = self.nodes.borrow_mut().take_exit(i);
        loopfs::free(&home)?;
        match exited {
            None => detail.push_str(": kept running"),
            Some(status) => {
                let how = describe_exit(status);
                if !clean_exit(status) {
                    let crash = format!("{name} {how} under a full disk (see {name}.log)");
                    self.crashes.borrow_mut().push(crash);
                }
                let log = std::fs::read_to_string(self.nodes.borrow().log_path(i));
                let cause = if log.is_ok_and(|l| enospc_logged(&l)) {
                    "ENOSPC in its log"
                } else {
                    "no ENOSPC in its log"
                };
                self.nodes.borrow_mut().restart(i)?;
                detail.push_str(&format!(": {how} ({cause}), restarted after freeing space"));
            }
        }
        Ok(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fail_stop_status_is_a_clean_exit() {
        let status = |raw| ExitStatus::from_raw(raw);
        assert!(clean_exit(status(2 << 8)));
        assert!(!clean_exit(status(1 << 8)));
        assert!(!clean_exit(status(7)), "SIGBUS");
        assert_eq!(describe_exit(status(7)), "killed by SIGBUS");
        assert_eq!(describe_exit(status(2 << 8)), "exited with status 2");
        assert_eq!(describe_exit(status(9)), "killed by signal 9");
    }

    #[test]
    fn enospc_counts_in_the_last_run_only() {
        let old = format!("{STARTING} n1 ====\nwrite: No space left on device (os error 28)\n");
        assert!(enospc_logged(&old));
        assert!(!enospc_logged(&format!("{old}{STARTING} n1 ====\nok\n")));
    }
}
