//! What the services share beyond proposing: waiting until this member has applied a
//! revision, and the space quota checked before a write is proposed.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::store::{AlarmAction, AlarmType, KvError};

/// The answer to an outcome a request cannot have (a bug, reported rather than panicking).
pub(crate) fn unexpected(outcome: Outcome) -> Status {
    Status::internal(format!("unexpected outcome {outcome:?}"))
}

impl Shared {
    /// Waits until this member's store has reached `revision` (a write applied at the leader
    /// is then applied here: revisions are unique to the writes that make them). Bounded by
    /// the request timeout.
    pub(crate) async fn wait_applied(&self, revision: i64) -> Result<(), Status> {
        let mut revisions = self.revisions.clone();
        let reached = async move { revisions.wait_for(|r| *r >= revision).await.is_ok() };
        match tokio::time::timeout(self.config.request_timeout, reached).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Status::unavailable("etcdserver: server stopped")),
            Err(_) => Err(Status::unavailable("etcdserver: request timed out")),
        }
    }

    /// Waits until this member has applied a compaction at `revision` or later.
    pub(crate) async fn wait_compacted(&self, revision: i64) -> Result<(), Status> {
        let deadline = self.deadline();
        while self.store.read().compacted() < revision {
            if Instant::now() >= deadline {
                return Err(Status::unavailable("etcdserver: request timed out"));
            }
            let mut revisions = self.revisions.clone();
            let _ = tokio::time::timeout(COMPACT_POLL, revisions.changed()).await;
        }
        Ok(())
    }

    /// etcd's quota check before proposing a write that adds data: past
    /// `--quota-backend-bytes`, the NOSPACE alarm is raised (through raft) and the write
    /// fails with etcd's "database space exceeded".
    pub(crate) async fn check_quota(&self, command: &Command) -> Result<(), Status> {
        let cost = command_cost(command);
        if cost == 0 {
            return Ok(());
        }
        let used = self.store.read().size_bytes() as u64;
        if used + cost <= self.config.flags.quota_backend_bytes {
            return Ok(());
        }
        tracing::warn!(
            used,
            quota = self.config.flags.quota_backend_bytes,
            "the space quota is exhausted: raising the NOSPACE alarm"
        );
        let raise = Command::Alarm {
            action: AlarmAction::Activate,
            member: self.config.id.0,
            alarm: Some(AlarmType::NoSpace),
        };
        self.execute(raise).await?;
        Err(super::convert::kv_status(&KvError::NoSpace))
    }
}

/// How often [`Shared::wait_compacted`] looks again without a new revision.
const COMPACT_POLL: Duration = Duration::from_millis(20);

/// The bytes a command would add to the store (0 for one that adds nothing).
fn command_cost(command: &Command) -> u64 {
    use crate::store::mvcc::RECORD_OVERHEAD_BYTES;
    use crate::store::txn::Op;
    fn ops_cost(ops: &[Op]) -> usize {
        ops.iter()
            .map(|op| match op {
                Op::Put(p) => RECORD_OVERHEAD_BYTES + 2 * p.key.len() + p.value.len(),
                Op::Txn(t) => ops_cost(&t.success).max(ops_cost(&t.failure)),
                Op::Range(_) | Op::Delete(_) => 0,
            })
            .sum()
    }
    let bytes = match command {
        Command::Put(p) => RECORD_OVERHEAD_BYTES + 2 * p.key.len() + p.value.len(),
        Command::Txn(t) => ops_cost(&t.success).max(ops_cost(&t.failure)),
        Command::LeaseGrant { .. } => RECORD_OVERHEAD_BYTES,
        _ => 0,
    };
    bytes as u64
}

impl Shared {
    /// A channel to the leader's client URL, waiting for a leader until `deadline`; fails if
    /// this member leads (the caller handles that case itself) or the request was forwarded
    /// already.
    pub(crate) async fn leader_channel(
        &self,
        forwarded: bool,
        deadline: Instant,
    ) -> Result<Channel, Status> {
        match self.route(forwarded, deadline).await? {
            super::cluster::Route::Leader(channel) => Ok(channel),
            super::cluster::Route::Here => Err(Status::unavailable("etcdserver: leader changed")),
        }
    }
}
