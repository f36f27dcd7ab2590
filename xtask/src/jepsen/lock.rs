//! The lease workload: a lock by lease and Txn, etcd's recipe (clientv3/concurrency's Mutex).
//! Each lock client (`--lockers-per-member` on every member) grants a lease of
//! [`TTL_SECS`], keeps it alive every [`KEEPALIVE_EVERY`], puts `jepsen/lock/<lease>` with the
//! lease by a Txn if its `create_revision` is 0, then polls the lock keys (linearizable
//! ranges) until its key is the oldest (the lowest `create_revision`): it holds the lock.
//! Inside the critical section it increments a counter by compare-and-swap and waits (a short
//! time, or now and then longer than the TTL), then deletes its key and revokes its lease.
//!
//! Each critical section is recorded from the answer that showed the key oldest to the moment
//! the release began. A section is *unknown* (left out of the check, but counted) when its
//! client cannot prove its lease lived through it: a keep-alive said the lease was gone, or the
//! release began after the lease's last known expiry, the send time of the last answered
//! keep-alive (or of the grant) plus the TTL (the leader set its deadline a full TTL from a
//! moment after that). [`check_sections`]: no two known sections overlap.

use std::cell::Cell;
use std::fmt;
use std::time::Duration;

use raftline_core::Rng;
use raftline_kv::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use raftline_kv::proto::etcdserverpb::lease_client::LeaseClient;
use raftline_kv::proto::etcdserverpb::request_op::Request;
use raftline_kv::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use tonic::transport::Channel;

use super::workload::{self, Op, Shared, Status, What, OP_TIMEOUT};

/// The lock keys' prefix.
pub const PREFIX: &str = "jepsen/lock/";
/// The counter the critical sections increment (outside the lock prefix).
const COUNTER: &str = "jepsen/lock-counter";
/// The TTL asked for each lease, in seconds.
pub const TTL_SECS: i64 = 3;
/// How often a lease is kept alive.
const KEEPALIVE_EVERY: Duration = Duration::from_millis(1000);
/// How often a waiting client reads the lock keys.
const POLL: Duration = Duration::from_millis(50);
/// How long a client waits for the lock before it gives up (and revokes its lease).
const WAIT_MAX: Duration = Duration::from_secs(15);
/// The bounds of a long critical section, in ms (2 in 10 are long, at times longer than the TTL, so
/// that only keep-alives during the section keep the lease alive).
const LONG_HOLD_MS: (u64, u64) = (1000, 4000);
/// The most critical sections kept.
pub const SECTIONS_MAX: usize = 100_000;
/// The most overlaps listed.
pub const OVERLAPS_SHOWN_MAX: usize = 10;

/// One critical section (times in µs since the start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The lock client.
    pub client: u64,
    /// Its member (from 0).
    pub member: usize,
    /// Its lease.
    pub lease: i64,
    /// When the answer showing its key oldest came.
    pub acquired: u64,
    /// When its release began.
    pub released: u64,
    /// Why its lease may not have lived through it (`None`: it did).
    pub unknown: Option<String>,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {} (n{}, lease {:x}) held {:.3}-{:.3} s",
            self.client,
            self.member + 1,
            self.lease,
            self.acquired as f64 / 1e6,
            self.released as f64 / 1e6
        )
    }
}

/// Pairs of known sections (indices into `sections`) that overlap: the later one was
/// acquired before the earlier one was released. At most [`OVERLAPS_SHOWN_MAX`].
pub fn check_sections(sections: &[Section]) -> Vec<(usize, usize)> {
    let mut known: Vec<usize> = (0..sections.len())
        .filter(|&i| sections[i].unknown.is_none())
        .collect();
    known.sort_by_key(|&i| sections[i].acquired);
    let mut overlaps = Vec::new();
    let mut latest: Option<usize> = None;
    for i in known {
        if let Some(l) = latest {
            if sections[i].acquired < sections[l].released {
                overlaps.push((l, i));
                if overlaps.len() >= OVERLAPS_SHOWN_MAX {
                    break;
                }
            }
            if sections[i].released <= sections[l].released {
                continue;
            }
        }
        latest = Some(i);
    }
    overlaps
}

/// Stretches a known section over the next known one of another client; describes it.
pub fn plant_overlap(sections: &mut [Section]) -> Result<String, String> {
    let mut known: Vec<usize> = (0..sections.len())
        .filter(|&i| sections[i].unknown.is_none())
        .collect();
    known.sort_by_key(|&i| sections[i].acquired);
    let (a, b) = known
        .windows(2)
        .map(|w| (w[0], w[1]))
        .find(|&(a, b)| sections[a].client != sections[b].client)
        .ok_or("no two known sections of different clients: nothing to plant")?;
    let next = &sections[b];
    let end = next.acquired + (next.released - next.acquired) / 2 + 1;
    sections[a].released = end;
    Ok(format!(
        "planted LockOverlap: the section of client {} now ends at {:.3} s, inside client {}'s",
        sections[a].client,
        end as f64 / 1e6,
        sections[b].client
    ))
}

/// The lease of one round and what its keep-alives proved.
struct Lease {
    id: i64,
    /// Its last known expiry (µs).
    expiry: Cell<u64>,
    /// Why it is gone, if a keep-alive said so.
    lost: Cell<Option<&'static str>>,
}

impl Lease {
    fn key(&self) -> Vec<u8> {
        format!("{PREFIX}{:016x}", self.id).into_bytes()
    }
}

/// One lock client's connections.
struct Locker<'a> {
    shared: &'a Shared,
    id: u64,
    member: usize,
    kv: KvClient<Channel>,
    leases: LeaseClient<Channel>,
}

/// Runs one lock client until `shared.stop`.
pub async fn client(shared: &Shared, id: u64, member: usize, url: String, seed: u64) {
    let Ok(channel) = workload::channel(&url) else {
        return;
    };
    let locker = Locker {
        shared,
        id,
        member,
        kv: KvClient::new(channel.clone()),
        leases: LeaseClient::new(channel),
    };
    let mut rng = Rng::new(seed ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    while !shared.stop.get() {
        let Some(lease) = locker.grant().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tokio::select! {
            () = locker.keep_alive(&lease) => {}
            () = locker.hold(&lease, &mut rng) => {}
        }
        locker.revoke(lease.id).await;
    }
}

/// An operation's end as recorded: ok, or failed / unknown (`write`) with the error.
fn outcome<T>(
    answer: Result<Result<T, tonic::Status>, tokio::time::error::Elapsed>,
    write: bool,
) -> (Option<T>, Status, Option<String>) {
    match answer {
        Ok(Ok(t)) => (Some(t), Status::Ok, None),
        Ok(Err(e)) => {
            let e = workload::status_text(&e);
            let status = if write {
                workload::write_failure(&e)
            } else {
                Status::Failed
            };
            (None, status, Some(e))
        }
        Err(_) => {
            let status = if write {
                Status::Unknown
            } else {
                Status::Failed
            };
            (None, status, Some("client timeout".into()))
        }
    }
}

impl Locker<'_> {
    /// Records an operation that began at `call`.
    fn record(&self, what: What, call: u64, status: Status, error: Option<String>) {
        self.shared.push_op(Op {
            client: self.id,
            member: self.member,
            what,
            call,
            end: self.shared.now(),
            status,
            error,
        });
    }

    /// Keeps a section (at most [`SECTIONS_MAX`]).
    fn keep(&self, section: Section) {
        let mut sections = self.shared.sections.borrow_mut();
        if sections.len() < SECTIONS_MAX {
            sections.push(section);
        }
    }

    async fn grant(&self) -> Option<Lease> {
        let call = self.shared.now();
        let request = LeaseGrantRequest {
            ttl: TTL_SECS,
            id: 0,
        };
        let answer =
            tokio::time::timeout(OP_TIMEOUT, self.leases.clone().lease_grant(request)).await;
        let (answer, status, error) = outcome(answer, true);
        let answer = answer.map(tonic::Response::into_inner);
        let lease = answer.as_ref().map_or(0, |a| a.id);
        self.record(What::LeaseGrant { lease }, call, status, error);
        let a = answer?;
        Some(Lease {
            id: a.id,
            expiry: Cell::new(call + a.ttl.max(0) as u64 * 1_000_000),
            lost: Cell::new(None),
        })
    }

    /// Keeps `lease` alive until dropped, moving its known expiry on each answer.
    async fn keep_alive(&self, lease: &Lease) {
        loop {
            tokio::time::sleep(KEEPALIVE_EVERY).await;
            let call = self.shared.now();
            let request = LeaseKeepAliveRequest { id: lease.id };
            let mut leases = self.leases.clone();
            let once = async move {
                let mut answers = leases
                    .lease_keep_alive(futures::stream::iter([request]))
                    .await?
                    .into_inner();
                answers
                    .message()
                    .await?
                    .ok_or_else(|| tonic::Status::unavailable("keep-alive stream ended"))
            };
            let answer = tokio::time::timeout(OP_TIMEOUT, once).await;
            let (answer, mut status, mut error) = outcome(answer, false);
            if let Some(a) = answer {
                if a.ttl > 0 {
                    let until = call + a.ttl as u64 * 1_000_000;
                    lease.expiry.set(lease.expiry.get().max(until));
                } else {
                    lease
                        .lost
                        .set(Some("a keep-alive answered TTL 0: the lease is gone"));
                    (status, error) = (Status::Failed, Some("TTL 0".into()));
                }
            }
            self.record(What::KeepAlive { lease: lease.id }, call, status, error);
        }
    }

    /// Whether the lease still may be alive (and the run goes on).
    fn alive(&self, lease: &Lease) -> bool {
        !self.shared.stop.get()
            && lease.lost.get().is_none()
            && self.shared.now() < lease.expiry.get()
    }

    /// Takes the lock, holds it briefly, releases it; records the section.
    async fn hold(&self, lease: &Lease, rng: &mut Rng) {
        if !self.put_key(lease).await {
            return;
        }
        let Some(acquired) = self.wait_oldest(lease).await else {
            self.delete_key(lease).await;
            return;
        };
        self.increment(lease).await;
        // Mostly short; now and then longer than the TTL, kept alive all along.
        let hold = if rng.below(10) < 2 {
            LONG_HOLD_MS.0 + rng.below(LONG_HOLD_MS.1 - LONG_HOLD_MS.0)
        } else {
            50 + rng.below(200)
        };
        tokio::time::sleep(Duration::from_millis(hold)).await;
        let released = self.shared.now();
        let unknown = match lease.lost.get() {
            Some(why) => Some(why.to_string()),
            None if released >= lease.expiry.get() => Some(format!(
                "the release began {:.3} s after the lease's last known expiry",
                (released - lease.expiry.get()) as f64 / 1e6
            )),
            None => None,
        };
        self.keep(Section {
            client: self.id,
            member: self.member,
            lease: lease.id,
            acquired,
            released,
            unknown,
        });
        self.delete_key(lease).await;
    }

    /// Puts the lock key if absent (again after an unknown outcome); whether it is there.
    async fn put_key(&self, lease: &Lease) -> bool {
        let key = lease.key();
        let request = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: key.clone(),
                target_union: Some(TargetUnion::CreateRevision(0)),
                range_end: Vec::new(),
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key,
                    value: self.id.to_string().into_bytes(),
                    lease: lease.id,
                    ..PutRequest::default()
                })),
            }],
            failure: Vec::new(),
        };
        while self.alive(lease) {
            let call = self.shared.now();
            let answer =
                tokio::time::timeout(OP_TIMEOUT, self.kv.clone().txn(request.clone())).await;
            let (answer, status, error) = outcome(answer, true);
            self.record(What::LockPut { lease: lease.id }, call, status, error);
            if answer.is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Polls the lock keys until this lease's is the oldest: when that answer came (µs), or
    /// `None` if the key is gone, the lease is lost or the wait too long.
    async fn wait_oldest(&self, lease: &Lease) -> Option<u64> {
        let call = self.shared.now();
        let give_up = call + WAIT_MAX.as_micros() as u64;
        let mine = lease.key();
        let mut end = PREFIX.as_bytes().to_vec();
        *end.last_mut().expect("not empty") += 1;
        let request = RangeRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: end,
            keys_only: true,
            ..RangeRequest::default()
        };
        let mut why = "the wait was too long";
        while self.alive(lease) && self.shared.now() < give_up {
            let answer =
                tokio::time::timeout(OP_TIMEOUT, self.kv.clone().range(request.clone())).await;
            if let Ok(Ok(r)) = answer {
                let kvs = r.into_inner().kvs;
                let oldest = kvs.iter().min_by_key(|kv| kv.create_revision);
                if !kvs.iter().any(|kv| kv.key == mine) {
                    why = "the lock key is gone";
                    break;
                }
                if oldest.is_some_and(|kv| kv.key == mine) {
                    let acquired = self.shared.now();
                    self.record(What::LockWait { lease: lease.id }, call, Status::Ok, None);
                    return Some(acquired);
                }
            }
            tokio::time::sleep(POLL).await;
        }
        if !self.alive(lease) {
            why = "the lease may have expired, or the run stopped";
        }
        let error = Some(why.to_string());
        self.record(
            What::LockWait { lease: lease.id },
            call,
            Status::Failed,
            error,
        );
        None
    }

    /// Increments the counter by compare-and-swap on its mod revision.
    async fn increment(&self, lease: &Lease) {
        let call = self.shared.now();
        let read = RangeRequest {
            key: COUNTER.as_bytes().to_vec(),
            ..RangeRequest::default()
        };
        let answer = tokio::time::timeout(OP_TIMEOUT, self.kv.clone().range(read)).await;
        let (answer, status, error) = outcome(answer, false);
        let Some(answer) = answer else {
            let what = What::LockCounter {
                lease: lease.id,
                swapped: None,
            };
            return self.record(what, call, status, error);
        };
        let current = answer.into_inner().kvs.into_iter().next();
        let (target, union, value) = match &current {
            Some(kv) => {
                let v: u64 = String::from_utf8_lossy(&kv.value).parse().unwrap_or(0);
                (
                    CompareTarget::Mod,
                    TargetUnion::ModRevision(kv.mod_revision),
                    v,
                )
            }
            None => (CompareTarget::Create, TargetUnion::CreateRevision(0), 0),
        };
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: target as i32,
                key: COUNTER.as_bytes().to_vec(),
                target_union: Some(union),
                range_end: Vec::new(),
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: COUNTER.as_bytes().to_vec(),
                    value: (value + 1).to_string().into_bytes(),
                    ..PutRequest::default()
                })),
            }],
            failure: Vec::new(),
        };
        let answer = tokio::time::timeout(OP_TIMEOUT, self.kv.clone().txn(txn)).await;
        let (answer, status, error) = outcome(answer, true);
        let swapped = answer.map(|a| a.into_inner().succeeded);
        self.record(
            What::LockCounter {
                lease: lease.id,
                swapped,
            },
            call,
            status,
            error,
        );
    }

    async fn delete_key(&self, lease: &Lease) {
        let call = self.shared.now();
        let request = DeleteRangeRequest {
            key: lease.key(),
            ..DeleteRangeRequest::default()
        };
        let answer = tokio::time::timeout(OP_TIMEOUT, self.kv.clone().delete_range(request)).await;
        let (_, status, error) = outcome(answer, true);
        self.record(What::LockDelete { lease: lease.id }, call, status, error);
    }

    async fn revoke(&self, lease: i64) {
        let call = self.shared.now();
        let request = LeaseRevokeRequest { id: lease };
        let answer =
            tokio::time::timeout(OP_TIMEOUT, self.leases.clone().lease_revoke(request)).await;
        let (_, status, error) = outcome(answer, true);
        self.record(What::LeaseRevoke { lease }, call, status, error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(client: u64, acquired: u64, released: u64) -> Section {
        Section {
            client,
            member: 0,
            lease: client as i64,
            acquired,
            released,
            unknown: None,
        }
    }

    #[test]
    fn disjoint_sections_pass_and_overlapping_ones_fail() {
        let disjoint = vec![section(1, 0, 10), section(2, 10, 20), section(1, 25, 30)];
        assert!(check_sections(&disjoint).is_empty());
        let overlap = vec![section(1, 0, 10), section(2, 9, 20)];
        assert_eq!(check_sections(&overlap), [(0, 1)]);
        // A long section overlaps one that begins after a short one inside it ended.
        let nested = vec![section(1, 0, 100), section(2, 10, 20), section(3, 50, 60)];
        assert_eq!(check_sections(&nested), [(0, 1), (0, 2)]);
    }

    #[test]
    fn unknown_sections_are_left_out() {
        let mut sections = vec![section(1, 0, 10), section(2, 5, 20)];
        sections[1].unknown = Some("keep-alive failed".into());
        assert!(check_sections(&sections).is_empty());
        sections[1].unknown = None;
        assert_eq!(check_sections(&sections).len(), 1);
    }

    #[test]
    fn the_planted_overlap_fails_the_check() {
        let mut sections = vec![section(1, 0, 10), section(1, 12, 14), section(2, 20, 30)];
        plant_overlap(&mut sections).unwrap();
        assert_eq!(check_sections(&sections), [(1, 2)]);
        let mut one_client = vec![section(1, 0, 10), section(1, 20, 30)];
        assert!(plant_overlap(&mut one_client).is_err());
    }
}
