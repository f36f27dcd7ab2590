//! The open-loop rows of `cargo xtask bench kv` (workload `open`, one row per rate of
//! `--rates`): puts issued on a fixed schedule whatever the answers do, as `etcdctl check
//! perf` does, so that a slow answer cannot hold back the requests behind it (coordinated
//! omission).
//!
//! Put `i` is due at `start + i / rate`. A scheduler hands each due put to a bounded queue
//! that the row's clients (the workers, spread over the connections) take from; each put's
//! latency runs from when it was due, not from when a worker got to send it, so a backlog
//! (every worker busy, the queue filling, the scheduler held up) counts in full. The one
//! exception is the scheduler's own timer: tokio's timer wakes in 1 ms steps, so up to
//! [`TIMER_SLACK`] of lateness is not counted (it is this client's, not the server's).

use std::sync::Arc;
use std::time::{Duration, Instant};

use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use tokio::sync::{mpsc, Mutex};

use crate::bench_kv::{random_bytes, RowCtx, Spec, VALUE_BYTES};
use crate::bench_kv_load::{Client, Load, OpError, PutClient, RowError};

/// Seconds of schedule per rate (before `--puts-scale`).
pub const OPEN_SECS: f64 = 5.0;
/// Due puts waiting for a worker, at most (the scheduler waits when it is full, and the
/// waiting counts in the latency of the puts behind).
const SCHEDULE_QUEUE: usize = 65_536;
/// Lateness of the scheduler's wake-ups not counted in the latency (tokio's timer tick).
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// A put handed to a worker: its number and when it counts from.
type Due = (u64, Instant);

/// Runs an open-loop put row at `spec.rate` puts per second, `spec.ops` puts in all.
pub async fn open_row(ctx: &RowCtx<'_>, spec: Spec) -> Result<Load, RowError> {
    let rate = spec
        .rate
        .filter(|r| *r > 0.0)
        .ok_or_else(|| RowError::Failed("an open-loop row needs a rate above 0".to_string()))?;
    let channels = ctx.connect().await?;
    let value = Arc::new(random_bytes(VALUE_BYTES));
    let (tx, rx) = mpsc::channel::<Due>(SCHEDULE_QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    let before = ctx.cpu();
    let start = Instant::now();
    let workers: Vec<_> = (0..spec.clients)
        .map(|c| {
            let client = PutClient {
                kv: KvClient::new(channels[c % channels.len()].clone()),
                value: Arc::clone(&value),
            };
            tokio::spawn(worker(client, Arc::clone(&rx), ctx.deadline))
        })
        .collect();
    let cut_short = schedule(tx, spec.ops, rate, start, ctx.deadline).await;
    let mut load = Load::new();
    for w in workers {
        let r = w
            .await
            .map_err(|e| RowError::Failed(format!("a worker failed: {e}")))?;
        load.merge(r).map_err(RowError::Failed)?;
    }
    load.secs = start.elapsed().as_secs_f64();
    load.cut_short |= cut_short;
    load.cpu = ctx.cpu_since(before);
    load.detail.push(format!(
        "open loop: {rate:.0} puts/s asked, {:.0} answered per second; latency from each \
         put's due time",
        load.ops_per_sec()
    ));
    Ok(load)
}

/// Hands out puts `0..ops` as they fall due; true if the row's deadline cut it short.
async fn schedule(
    tx: mpsc::Sender<Due>,
    ops: u64,
    rate: f64,
    start: Instant,
    deadline: Instant,
) -> bool {
    for i in 0..ops {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due >= deadline {
            return true;
        }
        tokio::time::sleep_until(due.into()).await;
        let counted_from = due.max(Instant::now() - TIMER_SLACK);
        if tx.send((i, counted_from)).await.is_err() {
            return true;
        }
    }
    false
}

/// One worker: takes due puts until the scheduler is done, sends each, and records its
/// latency from its due time.
async fn worker(
    mut client: PutClient,
    queue: Arc<Mutex<mpsc::Receiver<Due>>>,
    deadline: Instant,
) -> Load {
    let mut r = Load::new();
    loop {
        let next = queue.lock().await.recv().await;
        let Some((i, due)) = next else {
            return r;
        };
        if Instant::now() >= deadline {
            // Drain the queue without sending: the row is over.
            r.cut_short = true;
            continue;
        }
        match client.op(i).await {
            Ok(_) => {
                r.hist.saturating_record(due.elapsed().as_micros() as u64);
                r.ops += 1;
            }
            Err(OpError::Rpc(e)) => r.error(|| format!("{}: {}", e.code(), e.message())),
            Err(OpError::Wrong(w)) => r.wrong(|| w),
        }
    }
}
