//! Automatic compaction, as etcd's `--auto-compaction-mode` and
//! `--auto-compaction-retention` do it. Only the leader compacts (through raft, like a client's
//! `KV.Compact`).
//!
//! - `periodic`: the leader samples the revision every [`periodic_interval`] of the retention
//!   and compacts at the newest sample at least the retention old, so the history of the last
//!   retention period stays readable.
//! - `revision`: every [`REVISION_MODE_INTERVAL`], the leader compacts at the current
//!   revision minus the retention.

use std::collections::VecDeque;

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::config::Retention;

/// How often `revision` mode looks (etcd's interval).
pub const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(300);

/// The longest sampling interval of `periodic` mode (etcd's).
pub const PERIODIC_INTERVAL_MAX: Duration = Duration::from_secs(3600);

/// The samples `periodic` mode keeps (one retention's worth at one per interval, plus one).
const PERIODIC_SAMPLES_MAX: usize = 11;

/// `periodic` mode's sampling interval: a tenth of the retention, at most
/// [`PERIODIC_INTERVAL_MAX`].
pub fn periodic_interval(retention: Duration) -> Duration {
    (retention / 10).min(PERIODIC_INTERVAL_MAX)
}

/// Revisions sampled over time; which one is old enough to compact at.
#[derive(Debug, Default)]
pub struct Samples {
    samples: VecDeque<(Instant, i64)>,
}

impl Samples {
    /// Records the revision at `now`; returns the newest revision sampled at least
    /// `retention` before `now` (removing it and older samples), if any.
    pub fn record(&mut self, now: Instant, revision: i64, retention: Duration) -> Option<i64> {
        self.samples.push_back((now, revision));
        let mut due = None;
        while let Some(&(at, rev)) = self.samples.front() {
            if now.saturating_duration_since(at) < retention {
                break;
            }
            due = Some(rev);
            self.samples.pop_front();
        }
        while self.samples.len() > PERIODIC_SAMPLES_MAX {
            self.samples.pop_front();
        }
        due
    }

    /// Forgets every sample (leadership moved).
    pub fn clear(&mut self) {
        self.samples.clear();
    }
}

/// Runs automatic compaction until `stopped`.
pub async fn compaction_loop(shared: Arc<Shared>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let (interval, retention) = match shared.config.retention {
        Retention::Off => return,
        Retention::Period(p) => (periodic_interval(p), shared.config.retention),
        Retention::Revisions(_) => (REVISION_MODE_INTERVAL, shared.config.retention),
    };
    let mut samples = Samples::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval.max(Duration::from_millis(100))) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        if !shared.node.status().is_leader {
            samples.clear();
            continue;
        }
        let (current, compacted) = {
            let store = shared.store.read();
            (store.revision(), store.compacted())
        };
        let target = match retention {
            Retention::Period(p) => samples.record(Instant::now(), current, p),
            Retention::Revisions(n) => Some(current - n),
            Retention::Off => None,
        };
        if let Some(revision) = target.filter(|r| *r > compacted) {
            match shared.execute(Command::Compact { revision }).await {
                Ok(Outcome::Compacted { .. }) => {
                    tracing::info!(revision, "automatic compaction")
                }
                Ok(other) => tracing::debug!("automatic compaction at {revision}: {other:?}"),
                Err(e) => tracing::debug!("automatic compaction at {revision}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_compacts_at_the_newest_sample_a_retention_old() {
        let start = Instant::now();
        let retention = Duration::from_secs(10);
        let step = periodic_interval(retention);
        assert_eq!(step, Duration::from_secs(1));
        let mut samples = Samples::default();
        let mut due = Vec::new();
        for i in 0..25u32 {
            let now = start + step * i;
            if let Some(rev) = samples.record(now, 100 + i64::from(i), retention) {
                due.push((i, rev));
            }
        }
        // At second i (from 10 on), the sample of second i - 10 is exactly a retention old.
        assert_eq!(due.first(), Some(&(10, 100)));
        assert!(due.iter().all(|&(i, rev)| rev == 100 + i64::from(i) - 10));
        assert_eq!(
            periodic_interval(Duration::from_secs(72 * 3600)),
            PERIODIC_INTERVAL_MAX
        );
    }
}
