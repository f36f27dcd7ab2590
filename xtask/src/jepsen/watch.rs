//! The watch workload: writers (one per member) put unique values on, and now and then
//! delete, a few keys under `jepsen/w/`; watchers (`--watchers-per-member` on every member)
//! watch that prefix over etcd's gRPC Watch API from revision 1. A watcher whose stream
//! breaks (the member died, was paused or cut off: HTTP/2 pings notice) reconnects to the same
//! member with backoff and resumes from the revision after its last event.
//!
//! After the final heal, every member's history of the prefix is read back with a watch from
//! revision 1 (after a linearizable read there, and up to a progress notification, so it holds
//! every revision that member applied). The checks ([`check_watcher`], [`check_finals`],
//! [`check_writes`]): the members' histories agree; every watcher received exactly the
//! authoritative history's first events, in revision order, with no gap, no duplicate and the
//! same keys, values and event types (a watcher cut off at the end holds a prefix); every
//! acknowledged put is in the history at the revision its answer named, a put that was never
//! sent is not, and no put appears that nobody sent.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use raftline_core::Rng;
use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use raftline_kv::proto::etcdserverpb::watch_client::WatchClient;
use raftline_kv::proto::etcdserverpb::watch_request::RequestUnion;
use raftline_kv::proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse,
};
use raftline_kv::proto::mvccpb;
use tonic::transport::Channel;

use super::workload::{self, Op, Shared, Status, What, OP_TIMEOUT};

/// The watched prefix.
pub const PREFIX: &str = "jepsen/w/";
/// Keys the writers write under [`PREFIX`].
const KEYS: u64 = 5;
/// The most events a watcher keeps (it stops watching once it has them).
pub const EVENTS_PER_WATCHER_MAX: usize = 200_000;
/// The most events a final read-back keeps.
pub const FINAL_EVENTS_MAX: usize = 2 * EVENTS_PER_WATCHER_MAX;
/// The first and the longest wait before a watcher reconnects.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a final read-back of one member may take.
const FINAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The tries of a member's final read-back.
const FINAL_TRIES: usize = 20;
/// The faults a checker lists at most per check.
pub const FAULTS_SHOWN_MAX: usize = 10;
/// How long watchers go on after the clients are told to stop, to catch up with the last
/// writes (so that their tails are checked too).
const DRAIN: Duration = Duration::from_secs(2);
/// The pause between a writer's operations.
const WRITE_PAUSE: Duration = Duration::from_millis(5);

/// One watch event as the checks compare them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The revision of the change (the key's `mod_revision`).
    pub revision: i64,
    /// The key, after [`PREFIX`].
    pub key: String,
    /// The value put, `None` for a delete.
    pub value: Option<u64>,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            Some(v) => write!(f, "rev {} put {}={v}", self.revision, self.key),
            None => write!(f, "rev {} delete {}", self.revision, self.key),
        }
    }
}

/// What one watcher received, in the order it arrived.
#[derive(Clone, Debug)]
pub struct WatcherLog {
    /// Its client id.
    pub client: u64,
    /// The member it watches (from 0).
    pub member: usize,
    /// The events (at most [`EVENTS_PER_WATCHER_MAX`]).
    pub events: Vec<Event>,
    /// When it lost its stream (µs), and why.
    pub breaks: Vec<(u64, String)>,
    /// Streams the server canceled (it must not: compaction is off).
    pub canceled: Vec<String>,
}

/// A member's history of the prefix after the final heal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalHistory {
    /// Every event, in revision order.
    pub events: Vec<Event>,
    /// The revision it covers (its progress notification's).
    pub through: i64,
}

/// Why a watcher's events are not the committed history's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchFault {
    /// The event at `index` is not the history's next one, which came later: events missed.
    Gap {
        index: usize,
        missed: Event,
        got: Event,
    },
    /// The event at `index` was already received.
    Duplicate { index: usize, event: Event },
    /// The event at `index` came before `late`, which the history has first (and which came
    /// later).
    Reorder {
        index: usize,
        early: Event,
        late: Event,
    },
    /// The event at `index` differs from the history's at that revision.
    Wrong {
        index: usize,
        expected: Event,
        got: Event,
    },
    /// The event at `index` is past the end of the history.
    Extra { index: usize, event: Event },
}

impl fmt::Display for WatchFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WatchFault::Gap { index, missed, got } => {
                write!(f, "GAP at event {index}: got {got}, missed {missed}")
            }
            WatchFault::Duplicate { index, event } => {
                write!(f, "DUPLICATE at event {index}: {event} again")
            }
            WatchFault::Reorder { index, early, late } => {
                write!(f, "REORDER at event {index}: {early} came before {late}")
            }
            WatchFault::Wrong {
                index,
                expected,
                got,
            } => {
                write!(
                    f,
                    "WRONG at event {index}: got {got}, the history has {expected}"
                )
            }
            WatchFault::Extra { index, event } => {
                write!(f, "EXTRA at event {index}: {event} is not in the history")
            }
        }
    }
}

/// Checks that `received` (from revision 1) is exactly the first `received.len()` events of
/// `history`.
pub fn check_watcher(received: &[Event], history: &[Event]) -> Result<(), WatchFault> {
    for (index, got) in received.iter().enumerate() {
        if let Some(before) = index.checked_sub(1).map(|i| &received[i]) {
            // Only an event not above the one before can repeat one (the search stays rare).
            if got.revision <= before.revision && received[..index].contains(got) {
                return Err(WatchFault::Duplicate {
                    index,
                    event: got.clone(),
                });
            }
            if got.revision < before.revision {
                return Err(WatchFault::Reorder {
                    index: index - 1,
                    early: before.clone(),
                    late: got.clone(),
                });
            }
        }
        let Some(expected) = history.get(index) else {
            return Err(WatchFault::Extra {
                index,
                event: got.clone(),
            });
        };
        if got == expected {
            continue;
        }
        let (expected, got) = (expected.clone(), got.clone());
        return Err(if received[index..].contains(&expected) {
            WatchFault::Reorder {
                index,
                early: got,
                late: expected,
            }
        } else if got.revision > expected.revision {
            WatchFault::Gap {
                index,
                missed: expected,
                got,
            }
        } else {
            WatchFault::Wrong {
                index,
                expected,
                got,
            }
        });
    }
    Ok(())
}

/// The authoritative history: the one covering the most revisions, once every member's
/// agrees with it up to the lowest revision they all cover. Errors name the members (`n1`,
/// ...) that did not answer or disagree.
pub fn check_finals(finals: &[Option<FinalHistory>]) -> Result<FinalHistory, String> {
    let missing: Vec<String> = (0..finals.len())
        .filter(|&m| finals[m].is_none())
        .map(|m| format!("n{}", m + 1))
        .collect();
    if !missing.is_empty() {
        return Err(format!("no final history from {}", missing.join(", ")));
    }
    let all: Vec<&FinalHistory> = finals.iter().flatten().collect();
    let best = *all.iter().max_by_key(|h| h.through).ok_or("no members")?;
    let common = all.iter().map(|h| h.through).min().unwrap_or(0);
    let upto = |h: &FinalHistory| -> Vec<Event> {
        h.events
            .iter()
            .filter(|e| e.revision <= common)
            .cloned()
            .collect()
    };
    let reference = upto(best);
    for (m, h) in all.iter().enumerate() {
        if upto(h) != reference {
            return Err(format!(
                "n{}'s history up to revision {common} differs from the longest one's \
                 ({} events against {})",
                m + 1,
                upto(h).len(),
                reference.len()
            ));
        }
    }
    Ok(best.clone())
}

/// What a writer's operation says about the history: `(key, value, revision, status)` of
/// each put.
pub fn puts(ops: &[Op]) -> Vec<(u64, u64, Option<i64>, Status)> {
    ops.iter()
        .filter_map(|o| match o.what {
            What::WatchPut {
                key,
                value,
                revision,
            } => Some((key, value, revision, o.status)),
            _ => None,
        })
        .collect()
}

/// Acknowledged puts missing from `history` (or at another revision), puts never sent that
/// are in it, and puts in it that nobody sent; at most [`FAULTS_SHOWN_MAX`].
pub fn check_writes(puts: &[(u64, u64, Option<i64>, Status)], history: &[Event]) -> Vec<String> {
    let mut faults = Vec::new();
    let by_value: HashMap<u64, &Event> = history
        .iter()
        .filter_map(|e| e.value.map(|v| (v, e)))
        .collect();
    for &(key, value, revision, status) in puts {
        let found = by_value.get(&value).copied();
        let fault = match (status, found) {
            (Status::Ok, None) => Some(format!("LOST: acknowledged put k{key}={value}")),
            (Status::Ok, Some(e)) if Some(e.revision) != revision || e.key != key_name(key) => {
                Some(format!("MOVED: put k{key}={value} acknowledged at revision {revision:?}, in the history as {e}"))
            }
            (Status::Failed, Some(e)) => Some(format!("APPLIED: put never sent is in the history: {e}")),
            _ => None,
        };
        faults.extend(fault);
    }
    let sent: HashSet<u64> = puts
        .iter()
        .filter(|p| p.3 != Status::Failed)
        .map(|p| p.1)
        .collect();
    for e in history {
        if let Some(v) = e.value {
            if !sent.contains(&v) {
                faults.push(format!("PHANTOM: {e} was never written"));
            }
        }
    }
    faults.truncate(FAULTS_SHOWN_MAX);
    faults
}

/// The name of watched key `k` in events.
fn key_name(k: u64) -> String {
    format!("k{k}")
}

/// The etcd range of [`PREFIX`]: `(key, range_end)`.
fn prefix_range() -> (Vec<u8>, Vec<u8>) {
    let key = PREFIX.as_bytes().to_vec();
    let mut end = key.clone();
    *end.last_mut().expect("not empty") += 1;
    (key, end)
}

/// An event as received, or why it cannot be one of the writers'.
fn event(e: &mvccpb::Event) -> Event {
    let kv = e.kv.clone().unwrap_or_default();
    let key = String::from_utf8_lossy(&kv.key);
    let key = key.strip_prefix(PREFIX).unwrap_or(&key).to_string();
    let value = (e.r#type != mvccpb::event::EventType::Delete as i32).then(|| {
        std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX)
    });
    Event {
        revision: kv.mod_revision,
        key,
        value,
    }
}

/// Runs one writer until `shared.stop`: puts (90 %) and deletes on the watched keys.
pub async fn writer(shared: &Shared, id: u64, member: usize, url: String, seed: u64) {
    let Ok(channel) = workload::channel(&url) else {
        return;
    };
    let mut kv = KvClient::new(channel);
    let mut rng = Rng::new(seed ^ (id + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    while !shared.stop.get() {
        let key = rng.below(KEYS);
        let what = if rng.below(10) == 0 {
            What::WatchDelete { key }
        } else {
            What::WatchPut {
                key,
                value: shared.unique(),
                revision: None,
            }
        };
        let op = write(shared, &mut kv, id, member, what).await;
        let pause = if op.status == Status::Ok {
            WRITE_PAUSE
        } else {
            Duration::from_millis(50)
        };
        shared.push_op(op);
        tokio::time::sleep(pause).await;
    }
}

/// Sends one writer's operation.
async fn write(
    shared: &Shared,
    kv: &mut KvClient<Channel>,
    client: u64,
    member: usize,
    mut what: What,
) -> Op {
    let call = shared.now();
    let key_of = |k: u64| format!("{PREFIX}{}", key_name(k)).into_bytes();
    let sent = async {
        match &mut what {
            What::WatchPut {
                key,
                value,
                revision,
            } => {
                let request = PutRequest {
                    key: key_of(*key),
                    value: value.to_string().into_bytes(),
                    ..PutRequest::default()
                };
                let answer = kv.put(request).await?.into_inner();
                *revision = answer.header.map(|h| h.revision);
            }
            What::WatchDelete { key } => {
                let request = DeleteRangeRequest {
                    key: key_of(*key),
                    ..DeleteRangeRequest::default()
                };
                kv.delete_range(request).await?;
            }
            _ => {}
        }
        Ok::<(), tonic::Status>(())
    };
    let answer = tokio::time::timeout(OP_TIMEOUT + Duration::from_millis(200), sent).await;
    let (status, error) = match answer {
        Ok(Ok(())) => (Status::Ok, None),
        Ok(Err(e)) => {
            let e = workload::status_text(&e);
            (workload::write_failure(&e), Some(e))
        }
        Err(_) => (Status::Unknown, Some("client timeout".to_string())),
    };
    Op {
        client,
        member,
        what,
        call,
        end: shared.now(),
        status,
        error,
    }
}

/// Runs one watcher until [`DRAIN`] after `shared.stop` (or until it holds
/// [`EVENTS_PER_WATCHER_MAX`] events): a stream from the revision after its last event,
/// reopened whenever it breaks.
pub async fn watcher(shared: &Shared, id: u64, member: usize, url: String) {
    let Ok(channel) = workload::stream_channel(&url) else {
        return;
    };
    let slot = {
        let mut logs = shared.watchers.borrow_mut();
        logs.push(WatcherLog {
            client: id,
            member,
            events: Vec::new(),
            breaks: Vec::new(),
            canceled: Vec::new(),
        });
        logs.len() - 1
    };
    let mut backoff = BACKOFF_MIN;
    let mut stop = false;
    let drained = async {
        shared.stopped().await;
        tokio::time::sleep(DRAIN).await;
    };
    let mut drained = std::pin::pin!(drained);
    loop {
        let (from, before) = {
            let log = &shared.watchers.borrow()[slot];
            let last = log.events.last().map_or(0, |e| e.revision);
            (last + 1, log.events.len())
        };
        if before >= EVENTS_PER_WATCHER_MAX {
            return;
        }
        let call = shared.now();
        let ended = tokio::select! {
            r = stream(shared, slot, channel.clone(), from) => r,
            () = &mut drained => {
                stop = true;
                Ok(())
            }
        };
        let status = record_stream(shared, slot, (id, member), from, call, ended.err());
        if shared.watchers.borrow()[slot].events.len() > before {
            backoff = BACKOFF_MIN;
        }
        if stop {
            return;
        }
        if status == Status::Failed {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = &mut drained => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Records one stream of watcher `slot` (client `who.0` on member `who.1`), opened at `call`
/// from revision `from`, and the error that ended it (none: the run stopped); its status.
fn record_stream(
    shared: &Shared,
    slot: usize,
    who: (u64, usize),
    from: i64,
    call: u64,
    error: Option<StreamError>,
) -> Status {
    let end = shared.now();
    if let Some(e) = &error {
        let mut logs = shared.watchers.borrow_mut();
        logs[slot].breaks.push((end, e.to_string()));
        if let StreamError::Canceled(why) = e {
            logs[slot].canceled.push(why.clone());
        }
    }
    let status = if error.is_some() {
        Status::Failed
    } else {
        Status::Ok
    };
    shared.push_op(Op {
        client: who.0,
        member: who.1,
        what: What::WatchStream { from },
        call,
        end,
        status,
        error: error.map(|e| e.to_string()),
    });
    status
}

/// Why a watch stream ended.
#[derive(Debug)]
enum StreamError {
    /// The stream could not be opened or broke.
    Broken(String),
    /// The server refused or canceled the watcher.
    Canceled(String),
    /// The stream ended without an error (the member closed it).
    Ended,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Broken(why) => write!(f, "broken: {why}"),
            StreamError::Canceled(why) => write!(f, "canceled by the server: {why}"),
            StreamError::Ended => f.write_str("ended by the server"),
        }
    }
}

/// Opens a Watch stream on the prefix from `from` and, after `progress`, a progress request.
async fn open(
    channel: Channel,
    from: i64,
    progress: bool,
) -> Result<tonic::Streaming<WatchResponse>, StreamError> {
    let (key, range_end) = prefix_range();
    let mut requests = vec![WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key,
            range_end,
            start_revision: from,
            ..WatchCreateRequest::default()
        })),
    }];
    if progress {
        requests.push(WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
        });
    }
    // The request side stays open: closing it would end the watch.
    let requests = futures::stream::iter(requests).chain(futures::stream::pending());
    let broken = |e: tonic::Status| StreamError::Broken(workload::status_text(&e));
    let mut stream = WatchClient::new(channel)
        .watch(requests)
        .await
        .map_err(broken)?
        .into_inner();
    match stream.message().await.map_err(broken)? {
        Some(r) if r.created && !r.canceled => Ok(stream),
        Some(r) => Err(StreamError::Canceled(format!("not created: {r:?}"))),
        None => Err(StreamError::Ended),
    }
}

/// One stream: its events appended to watcher `slot`'s log until it breaks or the log is full.
async fn stream(
    shared: &Shared,
    slot: usize,
    channel: Channel,
    from: i64,
) -> Result<(), StreamError> {
    let mut stream = open(channel, from, false).await?;
    loop {
        let r = next_response(&mut stream).await?;
        let mut logs = shared.watchers.borrow_mut();
        let events = &mut logs[slot].events;
        for e in &r.events {
            if events.len() >= EVENTS_PER_WATCHER_MAX {
                return Ok(());
            }
            events.push(event(e));
        }
    }
}

/// The stream's next response; an error, the stream's end or a cancel is a [`StreamError`].
async fn next_response(
    stream: &mut tonic::Streaming<WatchResponse>,
) -> Result<WatchResponse, StreamError> {
    let r = stream
        .message()
        .await
        .map_err(|e| StreamError::Broken(workload::status_text(&e)))?
        .ok_or(StreamError::Ended)?;
    if r.canceled {
        return Err(StreamError::Canceled(format!(
            "compact_revision {}, {}",
            r.compact_revision, r.cancel_reason
        )));
    }
    Ok(r)
}

/// Member `url`'s history of the prefix from revision 1: a linearizable read there first
/// (so it has applied every committed write), then a watch from 1 up to a progress
/// notification. A few tries.
pub async fn final_history(url: &str) -> Option<FinalHistory> {
    let channel = workload::stream_channel(url).ok()?;
    for _ in 0..FINAL_TRIES {
        let read = tokio::time::timeout(FINAL_TIMEOUT, read_back(channel.clone())).await;
        if let Ok(Ok(h)) = read {
            return Some(h);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

async fn read_back(channel: Channel) -> Result<FinalHistory, StreamError> {
    let (key, range_end) = prefix_range();
    let barrier = RangeRequest {
        key,
        range_end,
        count_only: true,
        ..RangeRequest::default()
    };
    KvClient::new(channel.clone())
        .range(barrier)
        .await
        .map_err(|e| StreamError::Broken(workload::status_text(&e)))?;
    let mut stream = open(channel, 1, true).await?;
    let mut events = Vec::new();
    loop {
        let r = next_response(&mut stream).await?;
        if r.watch_id == -1 && r.events.is_empty() {
            let through = r.header.map_or(0, |h| h.revision);
            return Ok(FinalHistory { events, through });
        }
        if events.len() + r.events.len() > FINAL_EVENTS_MAX {
            return Err(StreamError::Broken("too many events".into()));
        }
        events.extend(r.events.iter().map(event));
    }
}

/// Drops one event from the middle of the watcher with the most events; describes it.
pub fn plant_gap(watchers: &mut [WatcherLog]) -> Result<String, String> {
    let w = watchers
        .iter_mut()
        .filter(|w| w.events.len() >= 3)
        .max_by_key(|w| w.events.len())
        .ok_or("no watcher received 3 events: nothing to plant")?;
    let i = w.events.len() / 2;
    let dropped = w.events.remove(i);
    Ok(format!(
        "planted WatchGap: watcher {} lost its event {i} ({dropped})",
        w.client
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: i64, key: &str, value: u64) -> Event {
        Event {
            revision,
            key: key.into(),
            value: Some(value),
        }
    }

    fn history() -> Vec<Event> {
        vec![
            put(2, "k0", 1),
            put(5, "k1", 2),
            Event {
                revision: 6,
                key: "k0".into(),
                value: None,
            },
            put(9, "k0", 3),
        ]
    }

    #[test]
    fn a_watcher_with_the_history_or_a_prefix_of_it_passes() {
        let h = history();
        assert_eq!(check_watcher(&h, &h), Ok(()));
        assert_eq!(check_watcher(&h[..2], &h), Ok(()));
        assert_eq!(check_watcher(&[], &h), Ok(()));
    }

    #[test]
    fn gaps_duplicates_reorders_wrong_values_and_extras_fail() {
        let h = history();
        let gap = vec![h[0].clone(), h[2].clone()];
        assert!(matches!(
            check_watcher(&gap, &h),
            Err(WatchFault::Gap { index: 1, .. })
        ));
        let dup = vec![h[0].clone(), h[1].clone(), h[1].clone()];
        assert!(matches!(
            check_watcher(&dup, &h),
            Err(WatchFault::Duplicate { index: 2, .. })
        ));
        let reorder = vec![h[1].clone(), h[0].clone()];
        assert!(matches!(
            check_watcher(&reorder, &h),
            Err(WatchFault::Reorder { index: 0, .. })
        ));
        let late = vec![h[0].clone(), h[2].clone(), h[1].clone(), h[3].clone()];
        assert!(matches!(
            check_watcher(&late, &h),
            Err(WatchFault::Reorder { index: 1, .. })
        ));
        let mut wrong = h.clone();
        wrong[1].value = Some(7);
        assert!(matches!(
            check_watcher(&wrong, &h),
            Err(WatchFault::Wrong { index: 1, .. })
        ));
        let mut deleted = h.clone();
        deleted[3].value = None;
        assert!(matches!(
            check_watcher(&deleted, &h),
            Err(WatchFault::Wrong { index: 3, .. })
        ));
        let mut extra = h.clone();
        extra.push(put(10, "k1", 4));
        assert!(matches!(
            check_watcher(&extra, &h),
            Err(WatchFault::Extra { index: 4, .. })
        ));
    }

    #[test]
    fn members_histories_must_agree_up_to_the_revision_they_all_cover() {
        let h = history();
        let long = FinalHistory {
            events: h.clone(),
            through: 9,
        };
        let short = FinalHistory {
            events: h[..3].to_vec(),
            through: 7,
        };
        assert_eq!(
            check_finals(&[Some(short.clone()), Some(long.clone())]),
            Ok(long.clone())
        );
        let mut other = short.clone();
        other.events[1].value = Some(8);
        assert!(check_finals(&[Some(other), Some(long.clone())]).is_err());
        assert!(check_finals(&[Some(long), None]).is_err());
    }

    #[test]
    fn acknowledged_puts_must_be_in_the_history_and_unsent_ones_not() {
        let h = history();
        let good = [
            (0, 1, Some(2), Status::Ok),
            (1, 2, None, Status::Unknown),
            (0, 3, Some(9), Status::Ok),
            (1, 99, None, Status::Unknown),
        ];
        assert!(check_writes(&good, &h).is_empty());
        let lost = [(1, 50, Some(12), Status::Ok)];
        assert_eq!(check_writes(&lost, &h).len(), 4, "lost, and three phantoms");
        let moved = [
            (0, 1, Some(3), Status::Ok),
            (1, 2, None, Status::Failed),
            (0, 3, Some(9), Status::Ok),
        ];
        let faults = check_writes(&moved, &h);
        assert!(faults[0].starts_with("MOVED"), "{faults:?}");
        assert!(faults[1].starts_with("APPLIED"), "{faults:?}");
        assert!(faults[2].starts_with("PHANTOM"), "{faults:?}");
    }

    #[test]
    fn the_planted_gap_fails_the_check() {
        let h = history();
        let mut logs = vec![WatcherLog {
            client: 200,
            member: 0,
            events: h.clone(),
            breaks: Vec::new(),
            canceled: Vec::new(),
        }];
        plant_gap(&mut logs).unwrap();
        assert!(check_watcher(&logs[0].events, &h).is_err());
    }
}
