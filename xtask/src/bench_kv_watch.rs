//! The watch fan-out rows of `cargo xtask bench kv`: one writer puts to one key, and every
//! watcher, each on a Watch stream of its own with one watcher on that key, must receive each
//! put exactly once, in revision order.
//!
//! Each put's value starts with the time it was sent (ns since the row began, big-endian), so
//! a watcher measures put-to-event latency as it receives the event. The writer records the
//! revision each put answered; after the row every watcher's revisions are compared with the
//! writer's: an event missing before the watcher's last one, a duplicate, one out of order or
//! one no put made is a wrong result; events still missing [`WATCH_DRAIN`] after the last put
//! answered make the row "cut short".

use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::StreamExt;
use hdrhistogram::Histogram;
use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use raftline_kv::proto::etcdserverpb::watch_client::WatchClient;
use raftline_kv::proto::etcdserverpb::watch_request::RequestUnion;
use raftline_kv::proto::etcdserverpb::{
    PutRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use raftline_kv::proto::mvccpb::event::EventType;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::bench_kv::{new_hist, random_bytes, RowCtx, Spec, VALUE_BYTES};
use crate::bench_kv_load::{Load, RowError};

/// How long after the last put answered the watchers may take to receive the last events.
pub const WATCH_DRAIN: Duration = Duration::from_secs(30);
/// How long opening all the watch streams may take.
const WATCH_SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// When the writer has finished: the revision of its last put and when watchers stop
/// waiting for it.
type Finish = Option<(i64, Instant)>;

/// Runs a watch row: `spec.clients` watchers over the row's connections, one writer on a
/// connection of its own to the leader making `spec.ops` puts (closed-loop, or at
/// `spec.rate` puts/s).
pub async fn watch_row(ctx: &RowCtx<'_>, spec: Spec) -> Result<Load, RowError> {
    let channels = ctx.connect_streaming().await?;
    let writer = ctx.connect_leader().await?;
    let key = format!("bench-kv/watch/{}", ctx.row).into_bytes();
    let streams = open_watchers(&channels, spec.clients, &key).await?;
    let epoch = Instant::now();
    let (finish_tx, finish_rx) = watch::channel::<Finish>(None);
    let watchers: Vec<_> = streams
        .into_iter()
        .map(|s| {
            let key = key.clone();
            let rx = finish_rx.clone();
            tokio::spawn(watch_loop(s, key, epoch, rx, ctx.deadline))
        })
        .collect();
    let before = ctx.cpu();
    let written = write(writer, &key, spec, epoch, ctx.deadline).await;
    let last = written.revisions.last().copied().unwrap_or(0);
    let _ = finish_tx.send(Some((last, Instant::now() + WATCH_DRAIN)));
    let mut load = Load::new();
    let (mut last_event, mut late) = (epoch, 0);
    for w in watchers {
        let w = w
            .await
            .map_err(|e| RowError::Failed(format!("a watcher task failed: {e}")))?;
        last_event = last_event.max(w.last_event.unwrap_or(epoch));
        let missing = account(&mut load, w, &written)?;
        late += usize::from(missing > 0);
    }
    drop(finish_tx);
    if late > 0 {
        load.cut_short = true;
        load.detail.push(format!(
            "{late} watchers still lacked their last events {} s after the last put (or at the \
             row's time bound)",
            WATCH_DRAIN.as_secs()
        ));
    }
    load.cpu = ctx.cpu_since(before);
    load.secs = (last_event - epoch).as_secs_f64();
    written.report(&mut load, spec.clients);
    Ok(load)
}

/// Opens `n` Watch streams, stream `w` on `channels[w % len]`, each with one watcher on
/// `key` from the next revision, and waits until every one is created.
async fn open_watchers(
    channels: &[Channel],
    n: usize,
    key: &[u8],
) -> Result<Vec<Streaming<WatchResponse>>, RowError> {
    let opens = (0..n).map(|w| {
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.to_vec(),
                ..WatchCreateRequest::default()
            })),
        };
        // One request, then the request stream stays open (closing it ends the watch).
        let requests =
            futures::stream::once(async move { create }).chain(futures::stream::pending());
        let mut client = WatchClient::new(channels[w % channels.len()].clone());
        async move {
            let mut stream = client
                .watch(requests)
                .await
                .map_err(|e| RowError::from_status("opening a Watch stream", &e))?
                .into_inner();
            match stream.message().await {
                Ok(Some(r)) if r.created && !r.canceled => Ok(stream),
                Ok(r) => Err(RowError::Failed(format!(
                    "WRONG: the first answer on a Watch stream does not say created: {r:?}"
                ))),
                Err(e) => Err(RowError::from_status("creating a watcher", &e)),
            }
        }
    });
    let opened = tokio::time::timeout(WATCH_SETUP_TIMEOUT, join_all(opens))
        .await
        .map_err(|_| {
            RowError::Failed(format!(
                "{n} watchers not created within {} s",
                WATCH_SETUP_TIMEOUT.as_secs()
            ))
        })?;
    opened.into_iter().collect()
}

/// What the writer did.
struct Written {
    /// The revision each answered put made, in order.
    revisions: Vec<i64>,
    /// Put latency, µs.
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    cut_short: bool,
    secs: f64,
}

impl Written {
    /// Adds the writer's figures to the row's.
    fn report(self, load: &mut Load, watchers: usize) {
        let puts = self.revisions.len();
        load.detail.push(format!(
            "writer: {puts} puts in {:.2} s ({:.0} puts/s, put p50 {:.2} ms, p99 {:.2} ms); \
             {} events delivered of {} expected ({watchers} watchers x {puts} puts)",
            self.secs,
            puts as f64 / self.secs.max(1e-9),
            self.hist.value_at_quantile(0.5) as f64 / 1000.0,
            self.hist.value_at_quantile(0.99) as f64 / 1000.0,
            load.ops,
            watchers * puts
        ));
        load.errors += self.errors;
        load.first_error = load.first_error.take().or(self.first_error);
        load.cut_short |= self.cut_short;
    }
}

/// Makes the writer's puts: closed-loop, or put `i` sent no earlier than `i / rate` s after
/// the start. Each value starts with its send time (ns since `epoch`).
async fn write(
    channel: Channel,
    key: &[u8],
    spec: Spec,
    epoch: Instant,
    deadline: Instant,
) -> Written {
    let mut kv = KvClient::new(channel);
    let mut value = random_bytes(VALUE_BYTES);
    let mut w = Written {
        revisions: Vec::with_capacity(spec.ops as usize),
        hist: new_hist(),
        errors: 0,
        first_error: None,
        cut_short: false,
        secs: 0.0,
    };
    let start = Instant::now();
    for i in 0..spec.ops {
        if let Some(rate) = spec.rate {
            tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate)).into())
                .await;
        }
        let now = Instant::now();
        if now >= deadline {
            w.cut_short = true;
            break;
        }
        value[..8].copy_from_slice(&((now - epoch).as_nanos() as u64).to_be_bytes());
        let request = PutRequest {
            key: key.to_vec(),
            value: value.clone(),
            ..PutRequest::default()
        };
        match kv.put(request).await {
            Ok(answer) => {
                w.hist.saturating_record(now.elapsed().as_micros() as u64);
                w.revisions
                    .push(answer.into_inner().header.map_or(0, |h| h.revision));
            }
            Err(e) => {
                w.errors += 1;
                w.first_error
                    .get_or_insert_with(|| format!("writer: {}: {}", e.code(), e.message()));
            }
        }
    }
    w.secs = start.elapsed().as_secs_f64();
    w
}

/// What one watcher received.
struct Watcher {
    /// The mod_revision of each event, in the order received.
    revisions: Vec<i64>,
    /// Put-to-event latency, µs.
    hist: Histogram<u64>,
    last_event: Option<Instant>,
    /// Why the watcher stopped early: the stream failed or ended (an error) ...
    error: Option<String>,
    /// ... or was canceled or carried an event no put made (a wrong result).
    wrong: Option<String>,
}

/// Receives events until the writer's last revision arrives, the drain time after the
/// writer's end passes, or the row's deadline.
async fn watch_loop(
    mut stream: Streaming<WatchResponse>,
    key: Vec<u8>,
    epoch: Instant,
    mut finish: watch::Receiver<Finish>,
    deadline: Instant,
) -> Watcher {
    let mut w = Watcher {
        revisions: Vec::new(),
        hist: new_hist(),
        last_event: None,
        error: None,
        wrong: None,
    };
    loop {
        let bound = match *finish.borrow_and_update() {
            Some((last, _)) if w.revisions.last().is_some_and(|&r| r >= last) || last == 0 => break,
            Some((_, drain)) => drain.min(deadline),
            None => deadline,
        };
        tokio::select! {
            m = stream.message() => {
                match m {
                    Ok(Some(answer)) => if let Err(e) = w.absorb(answer, &key, epoch) {
                        w.wrong = Some(e);
                        break;
                    },
                    Ok(None) => {
                        w.error = Some("the server ended the Watch stream".to_string());
                        break;
                    }
                    Err(e) => {
                        w.error = Some(format!("Watch stream: {}: {}", e.code(), e.message()));
                        break;
                    }
                }
            }
            changed = finish.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep_until(bound.into()) => break,
        }
    }
    w
}

impl Watcher {
    /// Records the events of one answer.
    fn absorb(&mut self, answer: WatchResponse, key: &[u8], epoch: Instant) -> Result<(), String> {
        let now = Instant::now();
        let since_epoch = (now - epoch).as_nanos() as u64;
        if answer.canceled || answer.compact_revision != 0 {
            return Err(format!(
                "watcher canceled (compact_revision {}): {}",
                answer.compact_revision, answer.cancel_reason
            ));
        }
        for event in answer.events {
            let kv = event.kv.unwrap_or_default();
            if event.r#type != EventType::Put as i32 || kv.key != key || kv.value.len() < 8 {
                return Err(format!(
                    "an event that no put of the writer made (type {}, key {:?}, {} B value)",
                    event.r#type,
                    String::from_utf8_lossy(&kv.key),
                    kv.value.len()
                ));
            }
            let sent = u64::from_be_bytes(kv.value[..8].try_into().expect("8 bytes"));
            self.hist
                .saturating_record(since_epoch.saturating_sub(sent) / 1000);
            self.revisions.push(kv.mod_revision);
            self.last_event = Some(now);
        }
        Ok(())
    }
}

/// Adds one watcher's events to the row and checks them against the writer's revisions;
/// returns how many of the last events it lacks (it gave up waiting for them).
fn account(load: &mut Load, w: Watcher, written: &Written) -> Result<usize, RowError> {
    load.ops += w.revisions.len() as u64;
    load.hist
        .add(&w.hist)
        .map_err(|e| RowError::Failed(format!("merging histograms: {e}")))?;
    let checked = match w.wrong {
        Some(e) => Err(e),
        // A put that failed may have been applied: its event is then no stranger.
        None => check(&w.revisions, &written.revisions, written.errors > 0),
    };
    match (checked, w.error) {
        (Err(e), _) => load.wrong(|| e),
        (Ok(_), Some(e)) => load.error(|| e),
        (Ok(missing), None) => return Ok(missing),
    }
    Ok(0)
}

/// Compares the revisions a watcher received with the ones the writer made (increasing):
/// `Ok(n)` if they are the first `len - n` of them exactly once in order, else what is wrong.
/// With `failed_puts`, events at revisions the writer does not know are let through (a put
/// that failed may have been applied).
fn check(got: &[i64], sent: &[i64], failed_puts: bool) -> Result<usize, String> {
    let mut next = 0;
    for (n, &r) in got.iter().enumerate() {
        if n > 0 && r <= got[n - 1] {
            return Err(format!(
                "event {n} has revision {r} after revision {}: a duplicate or out of order",
                got[n - 1]
            ));
        }
        match sent[next..].iter().position(|&s| s == r) {
            Some(0) => next += 1,
            Some(skipped) => {
                return Err(format!(
                    "missed {skipped} event(s) before revision {r} (first missed: revision {})",
                    sent[next]
                ))
            }
            None if failed_puts => {}
            None => {
                return Err(format!(
                    "an event at revision {r} that no put of the writer made"
                ))
            }
        }
    }
    Ok(sent.len() - next)
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn check_accepts_every_event_once_in_order_and_counts_the_late_ones() {
        let sent = [5, 7, 8, 12];
        assert_eq!(check(&[5, 7, 8, 12], &sent, false), Ok(0));
        assert_eq!(check(&[5, 7], &sent, false), Ok(2));
        assert_eq!(check(&[], &sent, false), Ok(4));
    }

    #[test]
    fn check_rejects_gaps_duplicates_reordering_and_events_no_put_made() {
        let sent = [5, 7, 8, 12];
        assert!(check(&[5, 8, 12], &sent, false)
            .unwrap_err()
            .contains("missed 1 event"));
        assert!(check(&[5, 7, 7, 8], &sent, false)
            .unwrap_err()
            .contains("duplicate"));
        // An event ahead of its turn shows first as a gap; one behind, as out of order.
        assert!(check(&[5, 8, 7], &sent, false)
            .unwrap_err()
            .contains("missed 1 event"));
        assert!(check(&[5, 7, 8, 7], &sent, false)
            .unwrap_err()
            .contains("out of order"));
        assert!(check(&[5, 6], &sent, false).unwrap_err().contains("no put"));
        // Unless a put failed (it may have applied): then only gaps count.
        assert_eq!(check(&[5, 6, 7], &sent, true), Ok(2));
        assert!(check(&[5, 6, 8], &sent, true).is_err());
    }
}
