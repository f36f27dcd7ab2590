//! Prometheus metrics over plain HTTP/1.1 (`--listen-metrics-urls`, as in etcd).
//!
//! `GET /metrics` (or `HEAD`) answers `200` with the node's status in Prometheus' text
//! exposition format ([`render`]): raft's term, leadership and indexes as gauges, and what the
//! driver did with snapshots as counters (since the process started). As etcd's, `GET /health`
//! answers `200` with `{"health":"true","reason":""}` while the member knows a leader, else
//! `503` with `{"health":"false","reason":"RAFT NO LEADER"}`
//! ([`crate::server::health`]), and `GET /version` answers
//! `{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}` (the etcd API level served). Any other path
//! answers `404`, another method on these paths `405`. Every connection carries one request
//! and is closed after the answer.
//!
//! The responder is written by hand and reads at most [`REQUEST_HEAD_BYTES_MAX`] bytes of
//! request head, for at most [`REQUEST_READ_TIMEOUT`], and gives up on a client that does not
//! read its answer within [`ANSWER_WRITE_TIMEOUT`]. A request that is not HTTP/1.x
//! answers `400`, a head that does not fit `431`, a client too slow to send its head `408`;
//! each of these closes only that connection. At most [`CONNECTIONS_MAX`] connections are
//! served at once; more wait in the kernel's accept queue.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use raftline_core::driver::NodeStatus;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// The most bytes of request line and headers read from one connection.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 << 10;
/// How long a client may take to send its request head.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections served at once.
pub const CONNECTIONS_MAX: usize = 64;
/// How long writing an answer may take (a client that does not read is cut off).
pub const ANSWER_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After answering, how long the rest of a request (a body, pipelined requests) is read and
/// discarded before the connection closes, so that the client receives the answer instead
/// of a reset.
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// The most bytes read and discarded after answering.
pub const LINGER_BYTES_MAX: usize = 64 << 10;
/// How long the listener pauses after a failed accept (out of file descriptors, say).
pub const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The path metrics are served on.
pub const METRICS_PATH: &str = "/metrics";
/// The `Content-Type` of the metrics: Prometheus' text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The path of etcd's health check.
pub const HEALTH_PATH: &str = "/health";
/// The path of etcd's version report.
pub const VERSION_PATH: &str = "/version";
/// The body of `/version`: the etcd API level served, as etcd reports its versions.
pub const VERSION_JSON: &str = r#"{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}"#;
/// The `Content-Type` of `/health` and `/version`.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A Prometheus metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

/// One metric: its name (without the `raft_kv_` prefix), help text, type and how to read it.
struct Metric {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    value: fn(&NodeStatus) -> u64,
}

/// The prefix of every metric's name.
const PREFIX: &str = "raft_kv_";

const METRICS: &[Metric] = &[
    Metric {
        name: "term",
        help: "The current raft term.",
        kind: Kind::Gauge,
        value: |s| s.term.0,
    },
    Metric {
        name: "is_leader",
        help: "1 if this member is the leader, 0 otherwise.",
        kind: Kind::Gauge,
        value: |s| u64::from(s.is_leader),
    },
    Metric {
        name: "commit_index",
        help: "The highest log index known to be committed.",
        kind: Kind::Gauge,
        value: |s| s.commit_index.0,
    },
    Metric {
        name: "applied_index",
        help: "The highest log index applied to the key-value store.",
        kind: Kind::Gauge,
        value: |s| s.applied_index.0,
    },
    Metric {
        name: "first_index",
        help:
            "The first index the log still holds (entries before it are compacted into a snapshot).",
        kind: Kind::Gauge,
        value: |s| s.first_index.0,
    },
    Metric {
        name: "last_index",
        help: "The last index of the log.",
        kind: Kind::Gauge,
        value: |s| s.last_index.0,
    },
    Metric {
        name: "snapshot_last_index",
        help: "The last index the newest snapshot covers (0: no snapshot).",
        kind: Kind::Gauge,
        value: |s| s.snapshots.last_index.0,
    },
    Metric {
        name: "snapshots_taken_total",
        help: "Snapshots taken of this member's store.",
        kind: Kind::Counter,
        value: |s| s.snapshots.taken,
    },
    Metric {
        name: "snapshot_transfers_started_total",
        help: "Snapshot transfers to a follower started from offset 0.",
        kind: Kind::Counter,
        value: |s| s.snapshots.transfers_started,
    },
    Metric {
        name: "snapshot_transfers_resumed_total",
        help: "Snapshot transfers to a follower resumed at an offset the follower acknowledged.",
        kind: Kind::Counter,
        value: |s| s.snapshots.transfers_resumed,
    },
    Metric {
        name: "snapshot_chunks_sent_total",
        help: "Snapshot chunks sent to followers.",
        kind: Kind::Counter,
        value: |s| s.snapshots.chunks_sent,
    },
    Metric {
        name: "snapshot_bytes_sent_total",
        help: "Bytes of snapshot data sent to followers.",
        kind: Kind::Counter,
        value: |s| s.snapshots.bytes_sent,
    },
    Metric {
        name: "snapshot_chunks_received_total",
        help: "Snapshot chunks received from a leader and written.",
        kind: Kind::Counter,
        value: |s| s.snapshots.chunks_received,
    },
    Metric {
        name: "snapshots_installed_total",
        help: "Snapshots received from a leader and installed.",
        kind: Kind::Counter,
        value: |s| s.snapshots.installed,
    },
    Metric {
        name: "snapshots_rejected_total",
        help: "Snapshots received from a leader that failed verification.",
        kind: Kind::Counter,
        value: |s| s.snapshots.rejected,
    },
];

/// The node's status in Prometheus' text exposition format, each metric with its `# HELP`
/// and `# TYPE` lines. Counters count since this process started.
pub fn render(status: &NodeStatus) -> String {
    let mut out = String::with_capacity(METRICS.len() * 160);
    for m in METRICS {
        let kind = match m.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let value = (m.value)(status);
        out.push_str(&format!(
            "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} {kind}\n{PREFIX}{name} {value}\n",
            name = m.name,
            help = m.help,
        ));
    }
    out
}

/// What a request head asks for, or why it is refused.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// `GET` (body wanted) or `HEAD` of a path.
    Fetch { path: String, body: bool },
    /// Another method.
    OtherMethod { path: String },
}

/// An HTTP answer: status code, reason phrase, extra header lines, body.
struct Answer {
    code: u16,
    reason: &'static str,
    headers: &'static str,
    content_type: &'static str,
    body: String,
    send_body: bool,
}

impl Answer {
    fn error(code: u16, reason: &'static str) -> Answer {
        Answer {
            code,
            reason,
            headers: "",
            content_type: "text/plain; charset=utf-8",
            body: format!("{code} {reason}\n"),
            send_body: true,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
            self.code,
            self.reason,
            self.content_type,
            self.body.len(),
            self.headers,
        )
        .into_bytes();
        if self.send_body {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Whether `s` is an HTTP token (a method or header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a request head (without the blank line that ends it).
fn parse_head(head: &[u8]) -> Result<Request, &'static str> {
    let head = std::str::from_utf8(head).map_err(|_| "the request head is not UTF-8")?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or("no request line")?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the request line is not `METHOD target HTTP/1.x`");
    };
    if !is_token(method) {
        return Err("the method is not a token");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err("not HTTP/1.0 or HTTP/1.1");
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err("the request target is not an absolute path");
    }
    for line in lines {
        let valid = line.split_once(':').is_some_and(|(name, _)| is_token(name));
        if !valid {
            return Err("a header line is not `name: value`");
        }
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    Ok(match method {
        "GET" => Request::Fetch { path, body: true },
        "HEAD" => Request::Fetch { path, body: false },
        _ => Request::OtherMethod { path },
    })
}

/// Where the head ends: the offset of its blank line and the offset after it.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4));
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| (p, p + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// How reading a request head ended.
enum Head {
    /// The head, without its ending blank line.
    Complete(Vec<u8>),
    /// The client closed the connection before sending anything.
    Empty,
    /// The client closed the connection within the head.
    Truncated,
    /// No blank line within [`REQUEST_HEAD_BYTES_MAX`] bytes.
    TooLarge,
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut piece = [0u8; 1024];
    loop {
        let n = stream.read(&mut piece).await?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                Head::Empty
            } else {
                Head::Truncated
            });
        }
        // Search from a little before the new bytes: the blank line may straddle reads.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&piece[..n]);
        if let Some((end, _)) = head_end(&buf[from..]) {
            buf.truncate(from + end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() >= REQUEST_HEAD_BYTES_MAX {
            return Ok(Head::TooLarge);
        }
    }
}

/// The answer to a well-formed request. `status` is called only for the metrics and the
/// health check.
fn answer<F: Fn() -> NodeStatus>(request: Request, status: &F) -> Answer {
    match request {
        Request::Fetch { path, body } => {
            let (code, reason, content_type, text) = match path.as_str() {
                METRICS_PATH => (200, "OK", CONTENT_TYPE, render(&status())),
                HEALTH_PATH => {
                    let healthy = crate::server::health::is_healthy(&status());
                    let (code, reason) = if healthy {
                        (200, "OK")
                    } else {
                        (503, "Service Unavailable")
                    };
                    let json = crate::server::health::health_json(healthy);
                    (code, reason, JSON_CONTENT_TYPE, json)
                }
                VERSION_PATH => (200, "OK", JSON_CONTENT_TYPE, VERSION_JSON.to_string()),
                _ => {
                    return Answer {
                        send_body: body,
                        ..Answer::error(404, "Not Found")
                    }
                }
            };
            Answer {
                code,
                reason,
                headers: "",
                content_type,
                body: text,
                send_body: body,
            }
        }
        Request::OtherMethod { path }
            if [METRICS_PATH, HEALTH_PATH, VERSION_PATH].contains(&path.as_str()) =>
        {
            Answer {
                headers: "Allow: GET, HEAD\r\n",
                ..Answer::error(405, "Method Not Allowed")
            }
        }
        Request::OtherMethod { .. } => Answer::error(404, "Not Found"),
    }
}

/// Serves one connection: reads one request head, answers it, closes. `status` is called
/// only for a request of the metrics or the health check.
pub async fn handle_connection<S, F>(stream: S, status: F) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn() -> NodeStatus,
{
    handle_connection_within(stream, status, REQUEST_READ_TIMEOUT).await
}

/// [`handle_connection`] with the time allowed for the request head as a parameter.
async fn handle_connection_within<S, F>(
    mut stream: S,
    status: F,
    read_timeout: Duration,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn() -> NodeStatus,
{
    let head = match tokio::time::timeout(read_timeout, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => {
            // Best effort: a client this slow may not read either.
            let answer = Answer::error(408, "Request Timeout");
            let _ = tokio::time::timeout(ANSWER_WRITE_TIMEOUT, stream.write_all(&answer.encode()))
                .await;
            return Ok(());
        }
    };
    let answer = match head {
        Head::Empty => return Ok(()),
        Head::Truncated => Answer::error(400, "Bad Request"),
        Head::TooLarge => Answer::error(431, "Request Header Fields Too Large"),
        Head::Complete(head) => match parse_head(&head) {
            Err(why) => {
                tracing::debug!("metrics: refused a malformed request: {why}");
                Answer::error(400, "Bad Request")
            }
            Ok(request) => answer(request, &status),
        },
    };
    let write = async {
        stream.write_all(&answer.encode()).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(ANSWER_WRITE_TIMEOUT, write).await {
        Ok(written) => written?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client does not read",
            ))
        }
    }
    // Lingering close: read what the client still sends (up to a bound), so that closing with
    // unread bytes does not reset the connection before the client has read the answer.
    let _ = tokio::time::timeout(LINGER_TIMEOUT, async {
        let mut discarded = 0;
        let mut piece = [0u8; 1024];
        while discarded < LINGER_BYTES_MAX {
            match stream.read(&mut piece).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
    Ok(())
}

/// Serves metrics on `listener` until `stopped` turns true: each connection gets
/// [`handle_connection`] with the status `status` returns at the time of the request.
pub async fn serve<F>(listener: TcpListener, status: F, stopped: watch::Receiver<bool>)
where
    F: Fn() -> NodeStatus + Send + Sync + 'static,
{
    let status = Arc::new(status);
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut stopped = stopped;
    let stop = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    loop {
        let accept = async {
            let permit = Arc::clone(&slots)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            (permit, listener.accept().await)
        };
        let (permit, accepted) = tokio::select! {
            a = accept => a,
            () = &mut stop => return,
        };
        match accepted {
            Ok((stream, remote)) => {
                let status = Arc::clone(&status);
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = handle_connection(stream, || (*status)()).await {
                        tracing::debug!(%remote, "metrics connection: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftline_proto::{LogIndex, NodeId, Term};

    fn status() -> NodeStatus {
        // raftline-core does not name `SnapshotStats` outside its driver: set its fields in place.
        let mut s = NodeStatus {
            id: NodeId(7),
            term: Term(3),
            leader: Some(NodeId(7)),
            is_leader: true,
            commit_index: LogIndex(250),
            applied_index: LogIndex(249),
            last_index: LogIndex(251),
            first_index: LogIndex(191),
            ..NodeStatus::default()
        };
        s.snapshots.last_index = LogIndex(200);
        s.snapshots.taken = 2;
        s.snapshots.transfers_started = 4;
        s.snapshots.transfers_resumed = 5;
        s.snapshots.chunks_sent = 6;
        s.snapshots.bytes_sent = 24_576;
        s.snapshots.chunks_received = 8;
        s.snapshots.installed = 9;
        s.snapshots.rejected = 10;
        s
    }

    /// The sample lines of a rendering, by name.
    fn samples(text: &str) -> std::collections::BTreeMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (name, value) = l.split_once(' ').expect("name value");
                (name.to_string(), value.to_string())
            })
            .collect()
    }

    #[test]
    fn every_metric_has_help_type_and_a_value_from_the_status() {
        let text = render(&status());
        let expected = [
            ("raft_kv_term", "gauge", "3"),
            ("raft_kv_is_leader", "gauge", "1"),
            ("raft_kv_commit_index", "gauge", "250"),
            ("raft_kv_applied_index", "gauge", "249"),
            ("raft_kv_first_index", "gauge", "191"),
            ("raft_kv_last_index", "gauge", "251"),
            ("raft_kv_snapshot_last_index", "gauge", "200"),
            ("raft_kv_snapshots_taken_total", "counter", "2"),
            ("raft_kv_snapshot_transfers_started_total", "counter", "4"),
            ("raft_kv_snapshot_transfers_resumed_total", "counter", "5"),
            ("raft_kv_snapshot_chunks_sent_total", "counter", "6"),
            ("raft_kv_snapshot_bytes_sent_total", "counter", "24576"),
            ("raft_kv_snapshot_chunks_received_total", "counter", "8"),
            ("raft_kv_snapshots_installed_total", "counter", "9"),
            ("raft_kv_snapshots_rejected_total", "counter", "10"),
        ];
        let got = samples(&text);
        assert_eq!(got.len(), expected.len(), "{text}");
        for (name, kind, value) in expected {
            assert_eq!(got.get(name).map(String::as_str), Some(value), "{name}");
            assert!(
                text.contains(&format!("\n# TYPE {name} {kind}\n"))
                    || text.starts_with(&format!("# TYPE {name} {kind}\n")),
                "{name} has no TYPE {kind} line:\n{text}"
            );
            let help = format!("# HELP {name} ");
            let at = text
                .find(&help)
                .unwrap_or_else(|| panic!("no HELP for {name}"));
            // HELP, then TYPE, then the sample.
            let block: Vec<&str> = text[at..].lines().take(3).collect();
            assert!(block[1].starts_with("# TYPE "), "{block:?}");
            assert!(block[2].starts_with(&format!("{name} ")), "{block:?}");
        }
        assert!(text.ends_with('\n'));

        let follower = NodeStatus {
            is_leader: false,
            ..NodeStatus::default()
        };
        let got = samples(&render(&follower));
        assert_eq!(got["raft_kv_is_leader"], "0");
        assert!(got.values().all(|v| v == "0"));
    }

    /// Sends `request` to a handler over an in-memory pipe and returns the whole answer.
    async fn exchange(request: &[u8]) -> String {
        exchange_with(request, status).await
    }

    /// [`exchange`] with a handler whose node is in the state `status` returns.
    async fn exchange_with(request: &[u8], status: fn() -> NodeStatus) -> String {
        let (mut client, server) = tokio::io::duplex(64 << 10);
        let handler = tokio::spawn(handle_connection(server, status));
        client.write_all(request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        handler.await.unwrap().unwrap();
        String::from_utf8(answer).unwrap()
    }

    fn status_line(answer: &str) -> &str {
        answer.split("\r\n").next().unwrap_or("")
    }

    fn body(answer: &str) -> &str {
        answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
    }

    #[tokio::test]
    async fn get_metrics_answers_200_with_the_rendering() {
        let answer =
            exchange(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        assert!(answer.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")));
        let rendered = render(&status());
        assert!(answer.contains(&format!("Content-Length: {}\r\n", rendered.len())));
        assert_eq!(body(&answer), rendered);
        // A query string and HTTP/1.0 are fine; HEAD has the headers only.
        let answer = exchange(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert_eq!(body(&answer), rendered);
        let answer = exchange(b"HEAD /metrics HTTP/1.1\n\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        assert!(answer.contains(&format!("Content-Length: {}\r\n", rendered.len())));
        assert_eq!(body(&answer), "");
    }

    #[tokio::test]
    async fn health_and_version_answer_as_etcd_does() {
        let answer = exchange(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        assert!(answer.contains("Content-Type: application/json\r\n"));
        assert_eq!(body(&answer), r#"{"health":"true","reason":""}"#);
        // A member that knows no leader is unhealthy.
        let answer = exchange_with(b"GET /health HTTP/1.1\r\n\r\n", NodeStatus::default).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 503 Service Unavailable");
        assert_eq!(
            body(&answer),
            r#"{"health":"false","reason":"RAFT NO LEADER"}"#
        );
        let answer = exchange_with(b"GET /version HTTP/1.1\r\n\r\n", NodeStatus::default).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
        assert_eq!(
            body(&answer),
            r#"{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}"#
        );
        let answer = exchange(b"POST /health HTTP/1.1\r\n\r\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 405 Method Not Allowed");
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused() {
        let answer = exchange(b"GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 404 Not Found");
        let answer = exchange(b"GET /metricsx HTTP/1.1\r\n\r\n").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 404 Not Found");
        let answer = exchange(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").await;
        assert_eq!(status_line(&answer), "HTTP/1.1 405 Method Not Allowed");
        assert!(answer.contains("Allow: GET, HEAD\r\n"));
    }

    #[tokio::test]
    async fn malformed_requests_answer_400() {
        for request in [
            &b"hello\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"G(T /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n",
            b"GET /m\xffetrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
        ] {
            let answer = exchange(request).await;
            assert_eq!(
                status_line(&answer),
                "HTTP/1.1 400 Bad Request",
                "{:?}",
                String::from_utf8_lossy(request)
            );
        }
        // Nothing sent: closed without an answer.
        assert_eq!(exchange(b"").await, "");
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused_after_the_bound() {
        let mut request = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while request.len() <= REQUEST_HEAD_BYTES_MAX {
            request.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        request.extend_from_slice(b"\r\n");
        let answer = exchange(&request).await;
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
    }

    #[tokio::test]
    async fn a_client_that_sends_no_head_in_time_is_cut_off() {
        let (mut client, server) = tokio::io::duplex(1024);
        let handler = tokio::spawn(handle_connection_within(
            server,
            status,
            Duration::from_millis(100),
        ));
        client
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        handler.await.unwrap().unwrap();
        let answer = String::from_utf8(answer).unwrap();
        assert_eq!(status_line(&answer), "HTTP/1.1 408 Request Timeout");
    }

    /// Over TCP: a bad request closes only its own connection; the server keeps serving.
    #[tokio::test]
    async fn the_server_survives_bad_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, status, stopped));
        let fetch = |request: &'static [u8]| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(request).await.unwrap();
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).await.unwrap();
            String::from_utf8(answer).unwrap()
        };
        // A connection held open without a request does not block others.
        let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let bad = fetch(b"\x16\x03\x01 not http\r\n\r\n").await;
        assert_eq!(status_line(&bad), "HTTP/1.1 400 Bad Request");
        let good = fetch(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_line(&good), "HTTP/1.1 200 OK");
        assert_eq!(body(&good), render(&status()));
        drop(idle);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops")
            .unwrap();
    }
}
