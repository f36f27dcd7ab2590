//! What a row of `cargo xtask bench kv` measured, and the closed-loop clients of the put, txn
//! and range rows: each client has one request outstanding at a time and sends the next as
//! soon as the answer arrives; a shared counter hands out the operations.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use raftline_kv::proto::etcdserverpb::PutRequest;
use tonic::transport::Channel;

use crate::bench_kv::new_hist;

/// Why a row has no figures.
pub enum RowError {
    /// The system answered the row's first request with gRPC `Unimplemented`: it does not
    /// serve the method (reported, not a failure of the run).
    Unserved(String),
    /// The row could not run (setup failed, skipped at the time bound, ...).
    Failed(String),
}

impl RowError {
    /// `Unserved` if `status` is `Unimplemented`, else `Failed`; `what` names the request.
    pub fn from_status(what: &str, status: &tonic::Status) -> RowError {
        let text = format!("{what}: {}: {}", status.code(), status.message());
        if status.code() == tonic::Code::Unimplemented {
            RowError::Unserved(text)
        } else {
            RowError::Failed(text)
        }
    }
}

/// The answer to one operation that was answered.
pub enum Op {
    /// Done as asked: a put, a read, a successful swap.
    Done,
    /// A compare-and-swap whose compare failed (the key had changed).
    CompareFailed,
}

/// An operation that was not answered, or answered wrongly.
pub enum OpError {
    /// The request failed (a gRPC error or the request timeout).
    Rpc(tonic::Status),
    /// The answer broke a guarantee of the API: a wrong result.
    Wrong(String),
}

/// One closed-loop client of a row.
pub trait Client: Send + 'static {
    /// Makes operation `i` (from the shared counter) and waits for its answer.
    fn op(&mut self, i: u64) -> impl Future<Output = Result<Op, OpError>> + Send;
}

/// What one row (or one client of it) measured.
pub struct Load {
    /// Operations answered (puts, reads, swaps and failed compares; watch events delivered).
    pub ops: u64,
    /// CAS compares that failed (counted in `ops` too).
    pub failed_compares: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Answers that broke a guarantee (for watch rows: watchers with a gap, duplicate or
    /// out-of-order event).
    pub wrong: u64,
    pub first_error: Option<String>,
    pub first_wrong: Option<String>,
    /// From the first request to the last answer (event).
    pub secs: f64,
    /// Latency of the answered operations (watch: put to event), µs.
    pub hist: Histogram<u64>,
    pub cut_short: bool,
    pub conns_on_leader: usize,
    /// CPU seconds the leader, each follower and the client used during the row.
    pub cpu: Option<Vec<f64>>,
    /// Lines printed under the row (swap counts, writer figures, checks made).
    pub detail: Vec<String>,
}

impl Load {
    /// An empty load.
    pub fn new() -> Load {
        Load {
            ops: 0,
            failed_compares: 0,
            errors: 0,
            wrong: 0,
            first_error: None,
            first_wrong: None,
            secs: 0.0,
            hist: new_hist(),
            cut_short: false,
            conns_on_leader: 0,
            cpu: None,
            detail: Vec::new(),
        }
    }

    /// Adds another client's counts and latencies to this one's.
    pub fn merge(&mut self, other: Load) -> Result<(), String> {
        self.hist
            .add(&other.hist)
            .map_err(|e| format!("merging histograms: {e}"))?;
        self.ops += other.ops;
        self.failed_compares += other.failed_compares;
        self.errors += other.errors;
        self.wrong += other.wrong;
        self.cut_short |= other.cut_short;
        self.first_error = self.first_error.take().or(other.first_error);
        self.first_wrong = self.first_wrong.take().or(other.first_wrong);
        Ok(())
    }

    /// Counts a failed request.
    pub fn error(&mut self, e: impl FnOnce() -> String) {
        self.errors += 1;
        self.first_error.get_or_insert_with(e);
    }

    /// Counts a wrong answer.
    pub fn wrong(&mut self, e: impl FnOnce() -> String) {
        self.wrong += 1;
        self.first_wrong.get_or_insert_with(e);
    }

    /// No errors, no wrong answers, not cut short.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.wrong == 0 && !self.cut_short
    }

    /// Operations (events) answered per second.
    pub fn ops_per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }

    /// CPU time of all members per operation answered, µs.
    pub fn members_cpu_us_per_op(&self) -> Option<f64> {
        let cpu = self.cpu.as_ref()?;
        let members: f64 = cpu[..cpu.len() - 1].iter().sum();
        (self.ops > 0).then(|| members * 1e6 / self.ops as f64)
    }

    /// Latency at quantile `q`, ms.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs `clients` until `total` operations are handed out or `deadline` passes; returns the
/// row's load and the clients (for checks on what they did).
pub async fn drive<C: Client>(
    clients: Vec<C>,
    total: u64,
    deadline: Instant,
) -> Result<(Load, Vec<C>), String> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(client_loop(c, Arc::clone(&next), total, deadline)))
        .collect();
    let mut load = Load::new();
    let mut back = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (client, r) = t.await.map_err(|e| format!("a client task failed: {e}"))?;
        load.merge(r)?;
        back.push(client);
    }
    load.secs = start.elapsed().as_secs_f64();
    Ok((load, back))
}

/// One client's loop.
async fn client_loop<C: Client>(
    mut client: C,
    next: Arc<AtomicU64>,
    total: u64,
    deadline: Instant,
) -> (C, Load) {
    let mut r = Load::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        if Instant::now() >= deadline {
            r.cut_short = true;
            break;
        }
        let t0 = Instant::now();
        match client.op(i).await {
            Ok(op) => {
                r.hist.saturating_record(t0.elapsed().as_micros() as u64);
                r.ops += 1;
                if let Op::CompareFailed = op {
                    r.failed_compares += 1;
                }
            }
            Err(OpError::Rpc(e)) => r.error(|| format!("{}: {}", e.code(), e.message())),
            Err(OpError::Wrong(w)) => r.wrong(|| w),
        }
    }
    (client, r)
}

/// A client of the put rows: put `i` writes the 8 B big-endian key `i` with the row's value.
pub struct PutClient {
    pub kv: KvClient<Channel>,
    pub value: Arc<Vec<u8>>,
}

impl Client for PutClient {
    async fn op(&mut self, i: u64) -> Result<Op, OpError> {
        let request = PutRequest {
            key: i.to_be_bytes().to_vec(),
            value: self.value.to_vec(),
            ..PutRequest::default()
        };
        self.kv.put(request).await.map_err(OpError::Rpc)?;
        Ok(Op::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::RowError;

    #[test]
    fn only_unimplemented_is_unserved() {
        let unserved = RowError::from_status("Txn", &tonic::Status::unimplemented("KV.Txn"));
        assert!(matches!(unserved, RowError::Unserved(m) if m.contains("KV.Txn")));
        let failed = RowError::from_status("Txn", &tonic::Status::unavailable("down"));
        assert!(matches!(failed, RowError::Failed(_)));
    }
}
