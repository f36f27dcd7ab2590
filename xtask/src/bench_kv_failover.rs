//! The failover row of `cargo xtask bench kv` (workload `failover`): under a steady write
//! load, SIGKILL the leader and measure the time from the kill to the first successful write
//! and to a new leader; restart the killed member on its data directory, wait for the cluster
//! to settle, and do it again (20 times at `--puts-scale 1`).
//!
//! Each round: the row's writers (closed-loop puts) run on connections to the two followers
//! for [`STEADY`], then the leader is killed. From the kill on, a probe put is sent every
//! [`PROBE_INTERVAL`] (alternating between the survivors, each probe on its own, not waiting
//! for the one before): the first probe answered with success gives the time to the first
//! write. Only puts sent after the kill count, so a put the old leader committed just before
//! dying cannot pass for a new leader's. Meanwhile the survivors' `Maintenance.Status` is
//! polled every [`LEADER_POLL`] for a leader other than the killed one. The row's latency
//! columns are the times to the first write; the times to a new leader are a line under it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use raftline_kv::proto::etcdserverpb::PutRequest;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::bench_kv::{connect, new_hist, random_bytes, Spec, SETTLE_TIMEOUT, VALUE_BYTES};
use crate::bench_kv_load::{Load, RowError};
use crate::cluster::{status, Cluster, MemberAddr, Server};

/// How long the writers run before each kill.
const STEADY: Duration = Duration::from_millis(500);
/// How often a probe put is sent after the kill.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Bound on one probe or writer put.
const FAILOVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Probes in flight at most (at one per [`PROBE_INTERVAL`], the request timeout keeps them
/// under 200).
const MAX_PROBES_IN_FLIGHT: usize = 256;
/// How often the survivors are asked who leads.
const LEADER_POLL: Duration = Duration::from_millis(10);
/// Bound on one round's wait for a write and a new leader.
const ROUND_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause of a writer after a failed put.
const WRITER_RETRY: Duration = Duration::from_millis(10);
/// The key every failover put writes.
const KEY: &[u8] = b"bench-kv/failover";

/// What one kill measured.
struct Round {
    /// From the kill to the first probe answered with success.
    to_write: Option<Duration>,
    /// From the kill to a survivor naming another leader.
    to_leader: Option<Duration>,
    /// The writers' puts answered and failed during the round.
    writes: (u64, u64),
}

/// Runs `spec.ops` kills of the leader; `spec.clients` writers on `spec.conns` connections.
pub async fn failover_row(
    cluster: &mut Cluster,
    server: &Server,
    dir: &Path,
    spec: Spec,
    deadline: Instant,
) -> Result<Load, RowError> {
    let start = Instant::now();
    let mut load = Load::new();
    let mut to_leader = new_hist();
    let (mut ok, mut failed) = (0, 0);
    for k in 1..=spec.ops {
        if Instant::now() + ROUND_TIMEOUT >= deadline {
            load.cut_short = true;
            break;
        }
        let r = round(cluster, server, dir, spec)
            .await
            .map_err(RowError::Failed)?;
        let ms = |d: Option<Duration>| {
            d.map_or_else(|| "none".to_string(), |d| format!("{} ms", d.as_millis()))
        };
        eprintln!(
            "failover {k}/{}: new leader after {}, first write after {}",
            spec.ops,
            ms(r.to_leader),
            ms(r.to_write)
        );
        match r.to_write {
            Some(d) => {
                load.hist.saturating_record(d.as_micros() as u64);
                load.ops += 1;
            }
            None => {
                load.error(|| format!("no write succeeded within {ROUND_TIMEOUT:?} of kill {k}"))
            }
        }
        if let Some(d) = r.to_leader {
            to_leader.saturating_record(d.as_micros() as u64);
        }
        ok += r.writes.0;
        failed += r.writes.1;
    }
    load.secs = start.elapsed().as_secs_f64();
    let q = |q: f64| to_leader.value_at_quantile(q) as f64 / 1000.0;
    load.detail.push(format!(
        "failover: latency columns = kill to first write; kill to new leader: p50 {:.0} ms, \
         p99 {:.0} ms, max {:.0} ms ({} of {} kills); writers' puts: {ok} answered, {failed} \
         failed",
        q(0.5),
        q(0.99),
        to_leader.max() as f64 / 1000.0,
        to_leader.len(),
        spec.ops
    ));
    Ok(load)
}

/// One kill: writers on the followers, kill the leader, time the first write and the new
/// leader, restart the killed member.
async fn round(
    cluster: &mut Cluster,
    server: &Server,
    dir: &Path,
    spec: Spec,
) -> Result<Round, String> {
    let settled = cluster.wait_settled(SETTLE_TIMEOUT).await?;
    let old = settled.ids[settled.leader];
    let survivors: Vec<MemberAddr> = (0..cluster.members.len())
        .filter(|&i| i != settled.leader)
        .map(|i| cluster.members[i].addr.clone())
        .collect();
    let endpoints: Vec<String> = (0..spec.conns.max(1))
        .map(|c| survivors[c % survivors.len()].endpoint())
        .collect();
    let channels = connect(&endpoints, Some(FAILOVER_REQUEST_TIMEOUT)).await?;
    let value = Arc::new(random_bytes(VALUE_BYTES));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..spec.clients)
        .map(|c| {
            let kv = KvClient::new(channels[c % channels.len()].clone());
            tokio::spawn(writer(kv, Arc::clone(&value), Arc::clone(&stop)))
        })
        .collect();
    tokio::time::sleep(STEADY).await;
    let killed_at = Instant::now();
    cluster.kill(settled.leader)?;
    let give_up = killed_at + ROUND_TIMEOUT;
    let (to_write, to_leader) = tokio::join!(
        first_write(&channels, &value, killed_at, give_up),
        new_leader(&survivors, old, killed_at, give_up)
    );
    stop.store(true, Ordering::Relaxed);
    let mut writes = (0, 0);
    for w in writers {
        let (a, f) = w.await.map_err(|e| format!("a writer failed: {e}"))?;
        writes = (writes.0 + a, writes.1 + f);
    }
    cluster.restart(settled.leader, server, dir)?;
    Ok(Round {
        to_write,
        to_leader,
        writes,
    })
}

/// A closed-loop writer until `stop`: (puts answered, puts failed).
async fn writer(
    mut kv: KvClient<Channel>,
    value: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let (mut ok, mut failed) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        match kv.put(put_request(&value)).await {
            Ok(_) => ok += 1,
            Err(_) => {
                failed += 1;
                tokio::time::sleep(WRITER_RETRY).await;
            }
        }
    }
    (ok, failed)
}

fn put_request(value: &[u8]) -> PutRequest {
    PutRequest {
        key: KEY.to_vec(),
        value: value.to_vec(),
        ..PutRequest::default()
    }
}

/// Sends a probe put every [`PROBE_INTERVAL`] until one succeeds (its time since `killed_at`)
/// or `give_up` passes (`None`).
async fn first_write(
    channels: &[Channel],
    value: &Arc<Vec<u8>>,
    killed_at: Instant,
    give_up: Instant,
) -> Option<Duration> {
    let mut probes = JoinSet::new();
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    let mut sent = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() >= give_up {
                    return None;
                }
                if probes.len() < MAX_PROBES_IN_FLIGHT {
                    let mut kv = KvClient::new(channels[sent % channels.len()].clone());
                    let request = put_request(value);
                    probes.spawn(async move { kv.put(request).await.is_ok() });
                    sent += 1;
                }
            }
            Some(done) = probes.join_next() => {
                if matches!(done, Ok(true)) {
                    return Some(killed_at.elapsed());
                }
            }
        }
    }
}

/// Polls the survivors every [`LEADER_POLL`] until one names a leader other than `old` (the
/// time since `killed_at`) or `give_up` passes (`None`).
async fn new_leader(
    survivors: &[MemberAddr],
    old: u64,
    killed_at: Instant,
    give_up: Instant,
) -> Option<Duration> {
    while Instant::now() < give_up {
        for s in survivors {
            if let Ok(st) = status(s).await {
                if st.leader != 0 && st.leader != old {
                    return Some(killed_at.elapsed());
                }
            }
        }
        tokio::time::sleep(LEADER_POLL).await;
    }
    None
}
