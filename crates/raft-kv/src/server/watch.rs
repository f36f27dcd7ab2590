//! etcd's `Watch` service.
//!
//! Each stream runs one task that owns its watchers. A watcher is a key range with the next
//! revision it has to deliver (`next`): whenever this member applies a new revision (or a
//! watcher is behind), the task reads the watcher's events from `next` on out of the MVCC
//! history, at most [`WATCH_BATCH_EVENTS_MAX`] at a time (never splitting a revision), sends
//! them and moves `next` past them. Events therefore come in revision order, each exactly
//! once, with no gap, whether they happened before the watch was created (`start_revision`
//! in the past) or after. Nothing is buffered per watcher beyond one batch: a slow client
//! holds up its own stream (its responses wait in a channel of
//! [`WATCH_STREAM_RESPONSES_MAX`]), and its watchers catch up from the history when it reads
//! again, as etcd's unsynced watchers do. A watcher whose `next` falls below the compaction
//! point is canceled with `compact_revision`, as in etcd.

use std::collections::BTreeMap;

use futures::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::convert::event_to_proto;
#[allow(clippy::wildcard_imports)]
use super::*;
use crate::proto::mvccpb;
use crate::store::mvcc::EventKind;

/// The most events read from the history for one watcher at a time (one response, unless
/// `fragment` splits it; a revision's events are never split across batches).
pub const WATCH_BATCH_EVENTS_MAX: usize = 1000;

/// The responses a stream queues for its client before the stream's task waits.
pub const WATCH_STREAM_RESPONSES_MAX: usize = 64;

/// The most watchers on one stream.
pub const WATCHERS_PER_STREAM_MAX: usize = 10_000;

/// How often a watcher created with `progress_notify` hears the current revision when it had
/// no event (etcd's default interval).
pub const PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_secs(600);

/// etcd's reason for a watch on an empty range.
pub const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

/// etcd's reason for a watch id already used on the stream.
pub const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// The watch id of responses about the stream rather than a watcher (etcd's
/// `InvalidWatchID`).
const NO_WATCH_ID: i64 = -1;

/// `etcdserverpb.Watch`.
pub struct WatchService(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (out, responses) = mpsc::channel(WATCH_STREAM_RESPONSES_MAX);
        let stream = WatchStream {
            shared: Arc::clone(&self.0),
            watchers: BTreeMap::new(),
            next_id: 0,
            out,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(responses)))
    }
}

/// One watcher of a stream.
struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The next revision to deliver.
    next: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    fragment: bool,
    /// Send the current revision every [`PROGRESS_NOTIFY_INTERVAL`] without events.
    progress_notify: bool,
    /// When it last got a response.
    last_sent: Instant,
}

/// What reading a watcher's next batch found.
enum Batch {
    /// The watcher is at the current revision.
    UpToDate,
    /// Its next revision was compacted away.
    Compacted(i64),
    /// Events (maybe none after filtering) up to `through`.
    Events {
        events: Vec<mvccpb::Event>,
        through: i64,
        revision: i64,
    },
}

/// A watch stream's state, owned by its task.
struct WatchStream {
    shared: Arc<Shared>,
    watchers: BTreeMap<i64, Watcher>,
    /// The next automatic watch id (etcd starts at 0).
    next_id: i64,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
}

impl WatchStream {
    async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>) {
        let mut revisions = self.shared.revisions.clone();
        let mut progress = tokio::time::interval(PROGRESS_NOTIFY_INTERVAL / 10);
        loop {
            let behind = self.behind();
            tokio::select! {
                biased;
                request = inbound.next() => match request {
                    Some(Ok(request)) => {
                        if self.handle(request).await.is_err() {
                            return;
                        }
                    }
                    // The client closed its side or the connection broke.
                    _ => return,
                },
                changed = revisions.changed(), if !behind => {
                    if changed.is_err() {
                        return; // the member is shutting down
                    }
                }
                _ = progress.tick() => {
                    if self.notify_progress().await.is_err() {
                        return;
                    }
                }
                () = std::future::ready(()), if behind => {}
            }
            if self.deliver().await.is_err() {
                return;
            }
        }
    }

    fn current(&self) -> i64 {
        self.shared.store.read().revision()
    }

    /// Whether a watcher has revisions to deliver.
    fn behind(&self) -> bool {
        let current = self.current();
        self.watchers.values().any(|w| w.next <= current)
    }

    /// Sends a response; fails once the client is gone.
    async fn send(&self, response: pb::WatchResponse) -> Result<(), ()> {
        self.out.send(Ok(response)).await.map_err(|_| ())
    }

    fn response(&self, watch_id: i64, revision: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: self.shared.header(revision),
            watch_id,
            ..pb::WatchResponse::default()
        }
    }

    async fn handle(&mut self, request: pb::WatchRequest) -> Result<(), ()> {
        use pb::watch_request::RequestUnion;
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    let mut response = self.response(cancel.watch_id, self.current());
                    response.canceled = true;
                    self.send(response).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // etcd answers only once every watcher has caught up.
                while self.behind() {
                    self.deliver().await?;
                }
                let response = self.response(NO_WATCH_ID, self.current());
                self.send(response).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> Result<(), ()> {
        use pb::watch_create_request::FilterType;
        let current = self.current();
        let refuse = |why: &str| {
            let mut response = self.response(NO_WATCH_ID, current);
            response.created = true;
            response.canceled = true;
            response.cancel_reason = why.to_string();
            response
        };
        let ends_before = !create.range_end.is_empty()
            && create.range_end != [0]
            && create.key.as_slice() >= create.range_end.as_slice();
        if ends_before {
            return self.send(refuse(EMPTY_RANGE)).await;
        }
        if self.watchers.len() >= WATCHERS_PER_STREAM_MAX {
            let why = format!("raft-kv: at most {WATCHERS_PER_STREAM_MAX} watchers per stream");
            return self.send(refuse(&why)).await;
        }
        let id = match create.watch_id {
            0 => self.auto_id(),
            id if self.watchers.contains_key(&id) => return self.send(refuse(DUPLICATE_ID)).await,
            id => id,
        };
        let has = |f: FilterType| create.filters.contains(&(f as i32));
        let (no_put, no_delete) = (has(FilterType::Noput), has(FilterType::Nodelete));
        let watcher = Watcher {
            next: if create.start_revision > 0 {
                create.start_revision
            } else {
                current + 1
            },
            no_put,
            no_delete,
            key: create.key,
            range_end: create.range_end,
            prev_kv: create.prev_kv,
            fragment: create.fragment,
            progress_notify: create.progress_notify,
            last_sent: Instant::now(),
        };
        self.watchers.insert(id, watcher);
        let mut response = self.response(id, current);
        response.created = true;
        self.send(response).await
    }

    /// The lowest id from the automatic counter that no watcher has (etcd's rule).
    fn auto_id(&mut self) -> i64 {
        while self.watchers.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        self.next_id += 1;
        self.next_id - 1
    }

    /// One batch for every watcher that is behind.
    async fn deliver(&mut self) -> Result<(), ()> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(batch) = self.watchers.get(&id).map(|w| self.read(w)) else {
                continue;
            };
            match batch {
                Batch::UpToDate => {}
                Batch::Compacted(compacted) => {
                    self.watchers.remove(&id);
                    let mut response = self.response(id, self.current());
                    response.canceled = true;
                    response.compact_revision = compacted;
                    self.send(response).await?;
                }
                Batch::Events {
                    events,
                    through,
                    revision,
                } => self.send_events(id, events, through, revision).await?,
            }
        }
        Ok(())
    }

    /// Reads a watcher's next batch from the history.
    fn read(&self, w: &Watcher) -> Batch {
        let store = self.shared.store.read();
        let current = store.revision();
        if w.next > current {
            return Batch::UpToDate;
        }
        if w.next < store.compacted() {
            return Batch::Compacted(store.compacted());
        }
        let kv = store.kv();
        let found = kv.events(&w.key, &w.range_end, w.next, WATCH_BATCH_EVENTS_MAX);
        let through = match found.last() {
            Some(last) if found.len() >= WATCH_BATCH_EVENTS_MAX => last.rev.main,
            _ => current,
        };
        let events = found
            .into_iter()
            .filter(|e| match e.kind {
                EventKind::Put => !w.no_put,
                EventKind::Delete => !w.no_delete,
            })
            .map(|e| {
                let prev = if w.prev_kv {
                    kv.before(&e.kv.key, e.rev).cloned()
                } else {
                    None
                };
                event_to_proto(e, prev)
            })
            .collect();
        Batch::Events {
            events,
            through,
            revision: current,
        }
    }

    async fn send_events(
        &mut self,
        id: i64,
        events: Vec<mvccpb::Event>,
        through: i64,
        revision: i64,
    ) -> Result<(), ()> {
        let Some(w) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        w.next = through + 1;
        if events.is_empty() {
            return Ok(());
        }
        w.last_sent = Instant::now();
        let pieces = if w.fragment {
            fragments(events)
        } else {
            vec![events]
        };
        let last = pieces.len() - 1;
        for (i, events) in pieces.into_iter().enumerate() {
            let mut response = self.response(id, revision);
            response.events = events;
            response.fragment = i < last;
            self.send(response).await?;
        }
        Ok(())
    }

    /// Sends the current revision to idle watchers that asked for progress notifications.
    async fn notify_progress(&mut self) -> Result<(), ()> {
        let current = self.current();
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| {
                w.progress_notify
                    && w.next > current
                    && w.last_sent.elapsed() >= PROGRESS_NOTIFY_INTERVAL
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(w) = self.watchers.get_mut(&id) {
                w.last_sent = Instant::now();
            }
            let response = self.response(id, current);
            self.send(response).await?;
        }
        Ok(())
    }
}

/// Splits events into responses of at most [`REQUEST_BYTES_MAX`] encoded bytes each (an
/// event larger than that alone in its response).
fn fragments(events: Vec<mvccpb::Event>) -> Vec<Vec<mvccpb::Event>> {
    let mut pieces: Vec<Vec<mvccpb::Event>> = vec![Vec::new()];
    let mut bytes = 0;
    for event in events {
        let len = event.encoded_len();
        let current = pieces.last_mut().expect("never empty");
        if !current.is_empty() && bytes + len > REQUEST_BYTES_MAX {
            pieces.push(Vec::new());
            bytes = 0;
        }
        bytes += len;
        pieces.last_mut().expect("never empty").push(event);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(value_bytes: usize) -> mvccpb::Event {
        mvccpb::Event {
            kv: Some(mvccpb::KeyValue {
                key: b"k".to_vec(),
                value: vec![0; value_bytes],
                ..mvccpb::KeyValue::default()
            }),
            ..mvccpb::Event::default()
        }
    }

    #[test]
    fn fragments_stay_within_the_request_bound_and_keep_every_event_in_order() {
        let big = REQUEST_BYTES_MAX / 3;
        let events: Vec<mvccpb::Event> = (0..7).map(|i| event(big + i)).collect();
        let pieces = fragments(events.clone());
        assert!(pieces.len() > 1, "split");
        for piece in &pieces {
            let bytes: usize = piece.iter().map(Message::encoded_len).sum();
            assert!(piece.len() == 1 || bytes <= REQUEST_BYTES_MAX, "{bytes}");
        }
        assert_eq!(pieces.concat(), events);
        // An event larger than the bound travels alone; small ones stay together.
        let huge = fragments(vec![event(2 * REQUEST_BYTES_MAX), event(1), event(1)]);
        assert_eq!(huge.iter().map(Vec::len).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(fragments(vec![event(1), event(1)]).len(), 1);
    }
}
