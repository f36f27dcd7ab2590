//! etcd's `Lease` service and the leader's lease clock.
//!
//! Grants and revokes go through raft (the store keeps each lease's TTL and keys). Whether a
//! lease has expired is decided only by the leader, with its monotonic clock, in the
//! [`Lessor`]: a lease's deadline is set to a full TTL when the leader first sees it (so a new
//! leader extends every lease before it may expire any, as etcd's lessor promotion does) and
//! on each keep-alive; [`expiry_loop`] proposes a revoke for each lease past its deadline, so
//! every member deletes the same keys at the same revision. A follower forwards keep-alives
//! and time-to-live questions to the leader.
//!
//! A leader paused or cut off may have been replaced without knowing it yet: it confirms its
//! leadership before answering a keep-alive, and proposes an expiry's revoke only as the
//! leader of the term its deadlines belong to (`NodeHandle::propose_in_term`, never
//! forwarded).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use futures::StreamExt;
use raftline_proto::Term;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::cluster::{at_leader, is_forwarded, onward};
use super::convert::kv_status;
#[allow(clippy::wildcard_imports)]
use super::*;
use crate::proto::etcdserverpb::lease_client::LeaseClient;

/// etcd's largest TTL, in seconds.
pub const LEASE_TTL_MAX: i64 = 9_000_000_000;

/// How often the leader looks for expired leases.
pub const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// The most leases revoked in one check (the rest wait for the next).
pub const LEASE_REVOKES_PER_CHECK_MAX: usize = 64;

/// The keep-alive answers a stream queues for its client.
pub const KEEPALIVE_RESPONSES_MAX: usize = 16;

/// etcd's message for a TTL above [`LEASE_TTL_MAX`].
pub const TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";

/// The leader's deadlines of the leases it has seen, for one term of leadership.
#[derive(Default)]
pub struct Lessor {
    state: Mutex<LessorState>,
    /// The next server-chosen lease id's counter.
    counter: AtomicI64,
}

#[derive(Default)]
struct LessorState {
    /// The term the deadlines belong to (deadlines are dropped when it changes).
    term: u64,
    deadlines: HashMap<i64, Instant>,
}

impl Lessor {
    /// Sets `id`'s deadline a full TTL from now (a keep-alive or a new lease), for `term`.
    fn renew(&self, term: u64, id: i64, ttl: i64) {
        let mut state = self.state.lock();
        state.for_term(term);
        state
            .deadlines
            .insert(id, Instant::now() + ttl_duration(ttl));
    }

    /// The time left before `id` expires, for the leader of `term` (a full TTL for a lease
    /// not seen yet).
    fn remaining(&self, term: u64, id: i64, ttl: i64) -> Duration {
        let mut state = self.state.lock();
        state.for_term(term);
        let deadline = *state
            .deadlines
            .entry(id)
            .or_insert_with(|| Instant::now() + ttl_duration(ttl));
        deadline.saturating_duration_since(Instant::now())
    }

    /// The leases of `leases` past their deadline, for the leader of `term`; leases seen for
    /// the first time get a full TTL, leases gone from the store are forgotten.
    fn expired(&self, term: u64, leases: &[(i64, i64)]) -> Vec<i64> {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.for_term(term);
        let live: std::collections::HashSet<i64> = leases.iter().map(|(id, _)| *id).collect();
        state.deadlines.retain(|id, _| live.contains(id));
        let mut expired = Vec::new();
        for &(id, ttl) in leases {
            let deadline = *state
                .deadlines
                .entry(id)
                .or_insert_with(|| now + ttl_duration(ttl));
            if deadline <= now && expired.len() < LEASE_REVOKES_PER_CHECK_MAX {
                expired.push(id);
            }
        }
        expired
    }

    /// Forgets every deadline (this member does not lead).
    fn clear(&self) {
        let mut state = self.state.lock();
        state.term = 0;
        state.deadlines.clear();
    }

    /// A new lease id: this member's id in the top bits, a counter below (never 0, never
    /// negative).
    fn next_id(&self, member: u64) -> i64 {
        let count = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let low = (clock << 12).wrapping_add(count) & ((1 << 48) - 1);
        ((member & 0x7fff) as i64) << 48 | low.max(1)
    }
}

impl LessorState {
    fn for_term(&mut self, term: u64) {
        if self.term != term {
            self.term = term;
            self.deadlines.clear();
        }
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

/// The lowest TTL granted, in seconds: 1.5 election timeouts, rounded up (etcd's rule, so
/// that a lease survives a leader change).
pub fn min_ttl(shared: &Shared) -> i64 {
    let election = shared.config.tick * shared.config.election_ticks;
    ((election.as_millis() as u64 * 3 / 2).div_ceil(1000) as i64).max(1)
}

/// As the leader, every [`LEASE_CHECK_INTERVAL`]: revokes the leases past their deadline.
pub async fn expiry_loop(shared: Arc<Shared>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LEASE_CHECK_INTERVAL) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let status = shared.node.status();
        if !status.is_leader {
            shared.lessor.clear();
            continue;
        }
        let leases: Vec<(i64, i64)> = {
            let store = shared.store.read();
            store.leases().iter().map(|(id, l)| (*id, l.ttl)).collect()
        };
        for id in shared.lessor.expired(status.term.0, &leases) {
            match revoke_expired(&shared, status.term, id).await {
                Ok(_) => tracing::info!(lease = %format!("{id:x}"), "lease expired: revoked"),
                Err(e) => {
                    tracing::debug!(lease = %format!("{id:x}"), "revoking an expired lease: {e}")
                }
            }
        }
    }
}

/// Proposes the revoke of lease `id`, expired by the clock of the leader of `term`, only if
/// this member still leads in `term`: never forwarded, so a leader that was paused or cut off
/// and replaced without knowing it yet cannot have its stale deadlines carried out by its
/// successor (whose lessor gave every lease a full TTL when it took over).
async fn revoke_expired(shared: &Shared, term: Term, id: i64) -> Result<Outcome, Status> {
    let command = postcard::to_allocvec(&Command::LeaseRevoke { id })
        .map_err(|e| Status::internal(e.to_string()))?;
    let proposed = shared.node.propose_in_term(term, Bytes::from(command));
    match tokio::time::timeout_at(shared.deadline(), proposed).await {
        Err(_) => Err(Status::unavailable(ETCD_TIMED_OUT)),
        Ok(result) => result.map_err(node_error_status),
    }
}

/// `etcdserverpb.Lease`.
pub struct LeaseService(pub Arc<Shared>);

impl LeaseService {
    /// Renews a lease here (this member leads) or at the leader; the lease's TTL, 0 for an
    /// unknown lease (etcd's answer).
    async fn keep_alive(&self, id: i64, forwarded: bool) -> Result<i64, Status> {
        let deadline = self.0.deadline();
        let status = self.0.node.status();
        if status.is_leader {
            // A leader that was paused or cut off may have been replaced without knowing it
            // yet: it confirms its leadership (a heartbeat round) before it promises the client
            // a full TTL, as etcd does (`ensureLeadership`).
            self.0.read_barrier().await?;
            let now = self.0.node.status();
            if now.is_leader && now.term == status.term {
                let ttl = self.0.store.read().leases().get(&id).map(|l| l.ttl);
                let Some(ttl) = ttl else { return Ok(0) };
                self.0.lessor.renew(status.term.0, id, ttl);
                return Ok(ttl);
            }
        }
        let channel = self.0.leader_channel(forwarded, deadline).await?;
        let mut client = LeaseClient::new(channel);
        let request = futures::stream::iter([pb::LeaseKeepAliveRequest { id }]);
        let mut responses = at_leader(
            deadline,
            client.lease_keep_alive(onward(request, true, deadline)),
        )
        .await?;
        match tokio::time::timeout_at(deadline, responses.next()).await {
            Ok(Some(Ok(r))) => Ok(r.ttl),
            Ok(Some(Err(status))) => Err(status),
            _ => Err(Status::unavailable("etcdserver: request timed out")),
        }
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let r = request.into_inner();
        if r.ttl > LEASE_TTL_MAX {
            return Err(Status::out_of_range(TTL_TOO_LARGE));
        }
        // Like etcd, a TTL below the minimum (0 or negative included) is raised to it.
        let ttl = r.ttl.max(min_ttl(&self.0));
        let id = match r.id {
            0 => self.0.lessor.next_id(self.0.config.id.0),
            id => id,
        };
        let command = Command::LeaseGrant { id, ttl };
        self.0.check_quota(&command).await?;
        match self.0.execute(command).await? {
            Outcome::LeaseGranted { revision } => Ok(Response::new(pb::LeaseGrantResponse {
                header: self.0.header(revision),
                id,
                ttl,
                error: String::new(),
            })),
            Outcome::Failed { error, .. } => Err(kv_status(&error)),
            other => Err(unexpected(other)),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        match self.0.execute(Command::LeaseRevoke { id }).await? {
            Outcome::LeaseRevoked { revision } => {
                self.0.wait_applied(revision).await?;
                Ok(Response::new(pb::LeaseRevokeResponse {
                    header: self.0.header(revision),
                }))
            }
            Outcome::Failed { error, .. } => Err(kv_status(&error)),
            other => Err(unexpected(other)),
        }
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let forwarded = is_forwarded(&request);
        let mut inbound = request.into_inner();
        let (out, responses) = mpsc::channel(KEEPALIVE_RESPONSES_MAX);
        let service = LeaseService(Arc::clone(&self.0));
        tokio::spawn(async move {
            while let Some(Ok(r)) = inbound.next().await {
                let answer = match service.keep_alive(r.id, forwarded).await {
                    Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                        header: service.0.header(service.0.store.read().revision()),
                        id: r.id,
                        ttl,
                    }),
                    Err(status) => Err(status),
                };
                let failed = answer.is_err();
                if out.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(responses)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let r = request.into_inner();
        let status = self.0.node.status();
        if !status.is_leader {
            let deadline = self.0.deadline();
            let mut client = LeaseClient::new(self.0.leader_channel(forwarded, deadline).await?);
            let answer = at_leader(
                deadline,
                client.lease_time_to_live(onward(r, true, deadline)),
            )
            .await?;
            return Ok(Response::new(answer));
        }
        let store = self.0.store.read();
        let header = self.0.header(store.revision());
        let Some(lease) = store.leases().get(&r.id) else {
            // etcd's answer for an unknown (or expired) lease.
            return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                ..Default::default()
            }));
        };
        let left = self.0.lessor.remaining(status.term.0, r.id, lease.ttl);
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header,
            id: r.id,
            // Whole seconds left, truncated as etcd does.
            ttl: left.as_secs() as i64,
            granted_ttl: lease.ttl,
            keys: if r.keys {
                lease.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.0.read_barrier().await?;
        let store = self.0.store.read();
        let leases = store
            .leases()
            .keys()
            .map(|&id| pb::LeaseStatus { id })
            .collect();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.0.header(store.revision()),
            leases,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_gives_a_lease_it_first_sees_a_full_ttl_and_forgets_on_a_new_term() {
        let lessor = Lessor::default();
        // Seen for the first time: a full TTL, so not expired (a TTL of 0 is due at once).
        assert_eq!(lessor.expired(1, &[(7, 100), (8, 0)]), [8]);
        assert!(lessor.remaining(1, 7, 100) > Duration::from_secs(99));
        // A lease gone from the store is forgotten; one renewed gets its TTL again.
        assert!(lessor.expired(1, &[(7, 100)]).is_empty());
        lessor.renew(1, 7, 0);
        assert_eq!(lessor.expired(1, &[(7, 100)]), [7]);
        // A new term (a new leadership) starts every lease over with a full TTL.
        assert!(lessor.expired(2, &[(7, 100)]).is_empty());
        lessor.clear();
        assert!(lessor.expired(3, &[(7, 100)]).is_empty());
    }

    #[test]
    fn server_chosen_ids_are_positive_and_distinct() {
        let lessor = Lessor::default();
        let ids: std::collections::BTreeSet<i64> =
            (0..1000).map(|_| lessor.next_id(0xabcd)).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|&id| id > 0));
    }
}
