//! etcd's v3 API beyond put/get/delete, against `raft-kv`, driven through etcd's own clients
//! (the `etcdctl` binary, API v3) and through the gRPC client generated from etcd's protos:
//!
//! - `KV.Txn`: compare success and failure branches through `etcdctl txn` (plain and `-w
//!   json`), nested transactions through gRPC;
//! - the MVCC history: `get --rev`, `etcdctl compaction`, and what a compacted or future
//!   revision gets;
//! - `Watch`: `etcdctl watch` (one key, `--prefix`, `--prev-kv`, `-w json`, `--rev` replaying
//!   history, a watch from a compacted revision); several watches on one gRPC stream
//!   (ranges, `prev_kv`, filters, cancel, progress);
//! - `Lease`: grant, `put --lease`, time-to-live, keep-alive, revoke, list, expiry, and
//!   leases through a change of leader;
//! - `etcdctl lock` and `etcdctl elect` (etcd's concurrency recipes, built on leases, Txn and
//!   Watch);
//! - `Maintenance`: `endpoint hashkv`, `alarm list`, `defrag`;
//! - read-your-writes through a follower;
//! - bad requests, answered with etcd's own error texts.
//!
//! Every expected output below was taken from a real etcd 3.4.23 cluster of three members on
//! loopback (`--heartbeat-interval 50 --election-timeout 500`, the harness's timings) running
//! the same commands. To check the tests themselves against etcd, run them with
//! `RAFT_KV_TEST_AGAINST_ETCD=/usr/bin/etcd`: the same tests then start real etcd processes
//! instead of raft-kv.
//!
//! etcdctl comes from Debian's `etcd-client` package. Without it the tests print a notice and
//! pass, except under CI (the `CI` environment variable is set), where they fail and say what
//! to install.
//!
//! The harness is in `common/mod.rs`.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    bounded, channel, etcdctl, etcdctl_installed, etcdctl_ok, etcdctl_with_input, free_port,
    prefix_end, spawn_etcdctl, Background, Cluster, Finished,
};
use raftline_kv::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use raftline_kv::proto::etcdserverpb::kv_client::KvClient;
use raftline_kv::proto::etcdserverpb::lease_client::LeaseClient;
use raftline_kv::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftline_kv::proto::etcdserverpb::watch_client::WatchClient;
use raftline_kv::proto::etcdserverpb::{
    request_op, response_op, watch_request, CompactionRequest, Compare, DeleteRangeRequest,
    DeleteRangeResponse, HashRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, StatusRequest, TxnRequest, TxnResponse, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use raftline_kv::proto::mvccpb::KeyValue;
use tonic::transport::Channel;
use tonic::{Code, Status};

// ---------------------------------------------------------------------------------------------
// The servers under test: raft-kv, or (to check the tests) real etcd.

/// Set to the path of an etcd binary to run these tests against real etcd processes instead
/// of raft-kv (to check that the expectations are etcd's).
const AGAINST_ETCD_ENV: &str = "RAFT_KV_TEST_AGAINST_ETCD";

/// A running cluster: raft-kv members (the harness's [`Cluster`]) or etcd members.
struct Servers {
    ports: Vec<u16>,
    raft_kv: Option<Cluster>,
    etcd: Vec<Child>,
    etcd_logs: Vec<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Servers {
    /// Starts `n` members and waits until they have a leader.
    async fn start(n: usize) -> Servers {
        match std::env::var_os(AGAINST_ETCD_ENV) {
            None => {
                let cluster = Cluster::start(n).await;
                Servers {
                    ports: cluster.members.iter().map(|m| m.client_port).collect(),
                    raft_kv: Some(cluster),
                    etcd: Vec::new(),
                    etcd_logs: Vec::new(),
                    _dir: None,
                }
            }
            Some(bin) => Servers::start_etcd(n, &PathBuf::from(bin)).await,
        }
    }

    /// `n` etcd members with the harness's timings.
    async fn start_etcd(n: usize, bin: &std::path::Path) -> Servers {
        let dir = tempfile::Builder::new()
            .prefix("etcd-reference-")
            .tempdir()
            .expect("a temporary directory");
        let peers: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let initial = (0..n)
            .map(|i| format!("e{i}=http://127.0.0.1:{}", peers[i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Servers {
            ports: ports.clone(),
            raft_kv: None,
            etcd: Vec::new(),
            etcd_logs: Vec::new(),
            _dir: None,
        };
        for i in 0..n {
            let log = dir.path().join(format!("e{i}.log"));
            let peer = format!("http://127.0.0.1:{}", peers[i]);
            let client = format!("http://127.0.0.1:{}", ports[i]);
            let child = Command::new(bin)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("e{i}")))
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", &common::HEARTBEAT_MS.to_string()])
                .args(["--election-timeout", &common::ELECTION_MS.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("a log file"))
                .spawn()
                .expect("spawning etcd");
            servers.etcd.push(child);
            servers.etcd_logs.push(log);
        }
        servers._dir = Some(dir);
        let deadline = Instant::now() + common::LEADER_TIMEOUT;
        while servers.try_leader().await.is_none() {
            assert!(Instant::now() < deadline, "etcd did not elect a leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        servers
    }

    /// `127.0.0.1:<client port>` of member `i`, as etcdctl's `--endpoints` takes it.
    fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    /// Every member's endpoint, comma-separated.
    fn endpoints(&self) -> String {
        (0..self.ports.len())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(channel(self.ports[i]))
    }

    fn watch(&self, i: usize) -> WatchClient<Channel> {
        WatchClient::new(channel(self.ports[i]))
    }

    fn lease(&self, i: usize) -> LeaseClient<Channel> {
        LeaseClient::new(channel(self.ports[i]))
    }

    fn maintenance(&self, i: usize) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(channel(self.ports[i]))
    }

    /// The member every member names as leader, if they agree and it says so itself.
    async fn try_leader(&self) -> Option<usize> {
        let mut statuses = Vec::new();
        for i in 0..self.ports.len() {
            let s = self.maintenance(i).status(StatusRequest {}).await.ok()?;
            statuses.push(s.into_inner());
        }
        let leader = statuses[0].leader;
        if leader == 0 || statuses.iter().any(|s| s.leader != leader) {
            return None;
        }
        statuses
            .iter()
            .position(|s| s.header.as_ref().map(|h| h.member_id) == Some(leader))
    }

    async fn leader(&self) -> usize {
        self.try_leader().await.expect("an agreed leader")
    }

    /// SIGKILLs member `i`.
    fn kill(&mut self, i: usize) {
        match &mut self.raft_kv {
            Some(cluster) => cluster.kill(i),
            None => {
                let _ = self.etcd[i].kill();
                let _ = self.etcd[i].wait();
            }
        }
    }

    /// The leader among the members in `among`, once they agree on one of them.
    async fn wait_leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + common::LEADER_TIMEOUT;
        loop {
            let mut statuses = Vec::new();
            for &i in among {
                if let Ok(s) = self.maintenance(i).status(StatusRequest {}).await {
                    statuses.push((i, s.into_inner()));
                }
            }
            if statuses.len() == among.len() {
                let leader = statuses[0].1.leader;
                if leader != 0 && statuses.iter().all(|(_, s)| s.leader == leader) {
                    if let Some((i, _)) = statuses
                        .iter()
                        .find(|(_, s)| s.header.as_ref().map(|h| h.member_id) == Some(leader))
                    {
                        return *i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader among {among:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A member that is not the leader.
    async fn follower(&self) -> usize {
        let leader = self.leader().await;
        (leader + 1) % self.ports.len()
    }

    /// `Put` through member `i`; returns the revision.
    async fn put(&self, i: usize, key: &str, value: &str) -> i64 {
        let r = self
            .kv(i)
            .put(PutRequest {
                key: key.into(),
                value: value.into(),
                ..PutRequest::default()
            })
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
        revision(&r.into_inner().header)
    }

    /// A linearizable `Range` of one key or a range through member `i`.
    async fn range(&self, i: usize, key: &str, range_end: &[u8]) -> RangeResponse {
        self.kv(i)
            .range(RangeRequest {
                key: key.into(),
                range_end: range_end.to_vec(),
                ..RangeRequest::default()
            })
            .await
            .unwrap_or_else(|e| panic!("range {key}: {e:?}"))
            .into_inner()
    }

    /// A linearizable read of one key's value through member `i`.
    async fn get(&self, i: usize, key: &str) -> Option<String> {
        self.range(i, key, b"")
            .await
            .kvs
            .first()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    }

    /// The current revision, as member `i` reports it.
    async fn revision(&self, i: usize) -> i64 {
        revision(&self.range(i, "\0", b"").await.header)
    }

    /// Asserts that the cluster still serves a write and a linearizable read through every
    /// member (after a refused request).
    async fn still_serves(&self, after: &str) {
        for i in 0..self.ports.len() {
            let key = format!("still/{i}");
            let value = format!("serving after {after}");
            let r = self
                .kv(i)
                .put(PutRequest {
                    key: key.clone().into(),
                    value: value.clone().into(),
                    ..PutRequest::default()
                })
                .await;
            assert!(r.is_ok(), "after {after}, put through member {i}: {r:?}");
            assert_eq!(
                self.get(i, &key).await.as_deref(),
                Some(value.as_str()),
                "after {after}"
            );
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.etcd {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for log in &self.etcd_logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("---- {} (last lines)", log.display());
                for line in &lines[lines.len().saturating_sub(15)..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn revision(header: &Option<ResponseHeader>) -> i64 {
    header.as_ref().expect("a response header").revision
}

/// Asserts that etcdctl failed and that one line of its stderr is exactly `line` (etcdctl
/// also logs retries as JSON lines, which are not checked).
#[track_caller]
fn assert_failed_with(what: &str, done: &Finished, line: &str) {
    assert!(
        !done.status.success(),
        "{what}: etcdctl succeeded; stdout:\n{}",
        done.stdout
    );
    assert!(
        done.stderr.lines().any(|l| l == line),
        "{what}: no line {line:?} in etcdctl's stderr:\n{}",
        done.stderr
    );
}

/// Asserts a gRPC error: code and message exactly.
#[track_caller]
fn assert_status<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, Status>,
    code: Code,
    message: &str,
) {
    match result {
        Ok(v) => panic!("{what}: expected {code:?} {message:?}, got success {v:?}"),
        Err(s) => assert_eq!(
            (s.code(), s.message()),
            (code, message),
            "{what}: got {s:?}"
        ),
    }
}

/// Standard base64 (how etcdctl's `-w json` prints bytes).
fn b64(data: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = data.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Splits etcdctl's `-w json` answer `{"header":{...},REST}` into the header's revision and
/// `{REST}` (the header's ids differ between runs and clusters; the rest is compared whole).
#[track_caller]
fn split_header(json: &str) -> (i64, String) {
    let json = json.trim_end();
    let rest = json
        .strip_prefix("{\"header\":{")
        .unwrap_or_else(|| panic!("no header first in {json}"));
    let end = rest.find('}').expect("the header's end");
    let header = &rest[..end];
    let revision = json_number(header, "revision").unwrap_or(0);
    let after = &rest[end + 1..];
    let after = after.strip_prefix(',').unwrap_or(after);
    (revision, format!("{{{after}"))
}

/// The number after the first `"name":` in `json`.
fn json_number(json: &str, name: &str) -> Option<i64> {
    let pat = format!("\"{name}\":");
    let start = json.find(&pat)? + pat.len();
    let digits: String = json[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// The events of etcdctl's plain `watch` output, each as its lines joined (`PUT\nk\nv\n`).
fn watch_events(out: &str) -> Vec<String> {
    let mut events: Vec<String> = Vec::new();
    for line in out.split_inclusive('\n') {
        if line == "PUT\n" || line == "DELETE\n" || events.is_empty() {
            events.push(String::new());
        }
        events.last_mut().expect("an event").push_str(line);
    }
    events
}

/// The watch events of `out` that are not the synchronisation writes (`w/a` = `ready`).
fn without_sync(out: &str) -> (usize, String) {
    let events = watch_events(out);
    let is_sync = |e: &String| e.lines().skip(1).all(|l| l == "w/a" || l == "ready");
    let sync = events.iter().filter(|e| is_sync(e)).count();
    (sync, events.into_iter().filter(|e| !is_sync(e)).collect())
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..PutRequest::default()
        })),
    }
}

fn range_op(key: &str, range_end: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.into(),
            range_end: range_end.to_vec(),
            ..RangeRequest::default()
        })),
    }
}

fn delete_op(key: &str, range_end: &[u8], prev_kv: bool) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.into(),
                range_end: range_end.to_vec(),
                prev_kv,
            },
        )),
    }
}

fn txn_op(txn: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestTxn(txn)),
    }
}

fn compare(key: &str, result: CompareResult, target: TargetUnion) -> Compare {
    let t = match target {
        TargetUnion::Version(_) => CompareTarget::Version,
        TargetUnion::CreateRevision(_) => CompareTarget::Create,
        TargetUnion::ModRevision(_) => CompareTarget::Mod,
        TargetUnion::Value(_) => CompareTarget::Value,
        TargetUnion::Lease(_) => CompareTarget::Lease,
    };
    Compare {
        result: result as i32,
        target: t as i32,
        key: key.into(),
        range_end: Vec::new(),
        target_union: Some(target),
    }
}

fn key_value(key: &str, value: &str, create: i64, modified: i64, version: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
        create_revision: create,
        mod_revision: modified,
        version,
        lease: 0,
    }
}

/// The header etcd puts in the responses inside a Txn's answer: the revision only.
fn inner_header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

fn put_response(revision: i64) -> ResponseOp {
    ResponseOp {
        response: Some(response_op::Response::ResponsePut(PutResponse {
            header: inner_header(revision),
            prev_kv: None,
        })),
    }
}

fn range_response(revision: i64, kvs: Vec<KeyValue>) -> ResponseOp {
    ResponseOp {
        response: Some(response_op::Response::ResponseRange(RangeResponse {
            header: inner_header(revision),
            count: kvs.len() as i64,
            kvs,
            more: false,
        })),
    }
}

/// The lease id in `lease <16 hex digits> ...` (etcdctl's `%016x`).
#[track_caller]
fn lease_id_in(line: &str) -> i64 {
    let hex = line
        .strip_prefix("lease ")
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no lease id in {line:?}"));
    assert_eq!(hex.len(), 16, "not %016x: {line:?}");
    i64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// A watch stream through gRPC: sends `create`, returns the responses received until one is
/// canceled or `limit` passes.
async fn watch_responses(
    servers: &Servers,
    i: usize,
    create: WatchCreateRequest,
    limit: Duration,
    stop_after: usize,
) -> Vec<WatchResponse> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
    })
    .await
    .expect("queueing the create request");
    let mut stream = servers
        .watch(i)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("a watch stream")
        .into_inner();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while got.len() < stop_after {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => break,
            Ok(Err(e)) => panic!("watch stream failed: {e:?} after {got:?}"),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(r))) => {
                let canceled = r.canceled;
                got.push(r);
                if canceled {
                    break;
                }
            }
        }
    }
    drop(tx);
    got
}

// ---------------------------------------------------------------------------------------------
// KV.Txn

/// `etcdctl txn` reads compares, a blank line, the success requests, a blank line, the
/// failure requests and a blank line; it prints SUCCESS or FAILURE, then each response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_through_etcdctl_takes_the_branch_the_compares_choose() {
    if !etcdctl_installed() {
        return;
    }
    bounded(Duration::from_secs(45), async {
        let servers = Servers::start(3).await;
        let e = servers.endpoints();
        assert_eq!(etcdctl_ok(&e, &["put", "t/a", "1"]).await, "OK\n"); // revision 2
        assert_eq!(etcdctl_ok(&e, &["put", "t/b", "2"]).await, "OK\n"); // revision 3

        // Both compares hold: the success branch runs; its `get` sees the put before it.
        // Each member takes one transaction (followers pass it on).
        let done = etcdctl_with_input(
            &servers.endpoint(0),
            &["txn"],
            "value(\"t/a\") = \"1\"\nmod(\"t/b\") > \"0\"\n\n\
             put t/c 3\nget --prefix t/\ndel t/a\n\n\
             put t/z no\n\n",
        )
        .await;
        assert!(done.status.success(), "txn: {}", done.stderr);
        assert_eq!(
            done.stdout,
            "SUCCESS\n\nOK\n\nt/a\n1\nt/b\n2\nt/c\n3\n\n1\n"
        ); // revision 4

        // t/a is gone: value("t/a") = "1" is false (a missing key's value never compares
        // equal), so the failure branch runs.
        let done = etcdctl_with_input(
            &servers.endpoint(1),
            &["txn"],
            "value(\"t/a\") = \"1\"\n\n\
             put t/c 30\n\n\
             put t/z no\nget --prefix t/\ndel t/b\n\n",
        )
        .await;
        assert!(done.status.success(), "txn: {}", done.stderr);
        assert_eq!(
            done.stdout,
            "FAILURE\n\nOK\n\nt/b\n2\nt/c\n3\nt/z\nno\n\n1\n"
        ); // revision 5
        for i in 0..3 {
            assert_eq!(
                etcdctl_ok(&servers.endpoint(i), &["get", "--prefix", "t/"]).await,
                "t/c\n3\nt/z\nno\n",
                "member {i}"
            );
        }

        // A missing key has version 0 and create revision 0.
        let done = etcdctl_with_input(
            &servers.endpoint(2),
            &["txn", "-w", "json"],
            "version(\"t/none\") = \"0\"\ncreate(\"t/none\") = \"0\"\ncreate(\"t/c\") < \"100\"\n\n\
             put t/d 4\nget t/d\n\n\
             put t/z never\n\n",
        )
        .await;
        assert!(done.status.success(), "txn -w json: {}", done.stderr);
        let (rev, rest) = split_header(&done.stdout);
        assert_eq!(rev, 6, "{}", done.stdout);
        assert_eq!(
            rest,
            format!(
                "{{\"succeeded\":true,\"responses\":[\
                 {{\"Response\":{{\"ResponsePut\":{{\"header\":{{\"revision\":6}}}}}}}},\
                 {{\"Response\":{{\"ResponseRange\":{{\"header\":{{\"revision\":6}},\"kvs\":[\
                 {{\"key\":\"{}\",\"create_revision\":6,\"mod_revision\":6,\"version\":1,\"value\":\"{}\"}}\
                 ],\"count\":1}}}}}}]}}",
                b64("t/d"),
                b64("4")
            )
        );

        // The failure branch in JSON: `succeeded` false is omitted; deleting nothing answers
        // deleted 0 (omitted).
        let done = etcdctl_with_input(
            &e,
            &["txn", "-w", "json"],
            "value(\"t/c\") = \"nope\"\n\n\
             put t/e 5\n\n\
             put t/c 33\ndel t/none\nget t/c\n\n",
        )
        .await;
        assert!(done.status.success(), "txn -w json: {}", done.stderr);
        let (rev, rest) = split_header(&done.stdout);
        assert_eq!(rev, 7, "{}", done.stdout);
        assert_eq!(
            rest,
            format!(
                "{{\"responses\":[\
                 {{\"Response\":{{\"ResponsePut\":{{\"header\":{{\"revision\":7}}}}}}}},\
                 {{\"Response\":{{\"ResponseDeleteRange\":{{\"header\":{{\"revision\":7}}}}}}}},\
                 {{\"Response\":{{\"ResponseRange\":{{\"header\":{{\"revision\":7}},\"kvs\":[\
                 {{\"key\":\"{}\",\"create_revision\":4,\"mod_revision\":7,\"version\":2,\"value\":\"{}\"}}\
                 ],\"count\":1}}}}}}]}}",
                b64("t/c"),
                b64("33")
            )
        );

        // A read-only transaction does not move the revision; an empty one succeeds.
        let done = etcdctl_with_input(&e, &["txn", "-w", "json"], "\nget t/e\n\n\n").await;
        let (rev, rest) = split_header(&done.stdout);
        assert_eq!(
            (rev, rest.as_str()),
            (
                7,
                "{\"succeeded\":true,\"responses\":[{\"Response\":{\"ResponseRange\":{\"header\":{\"revision\":7}}}}]}"
            )
        );
        let done = etcdctl_with_input(&e, &["txn"], "\n\n\n").await;
        assert_eq!((done.status.success(), done.stdout.as_str()), (true, "SUCCESS\n"));

        // Two puts of one key in a branch are refused, and nothing is written.
        let done = etcdctl_with_input(
            &e,
            &["txn"],
            "\nput t/dup 1\nput t/dup 2\n\n\n",
        )
        .await;
        assert_failed_with(
            "txn putting a key twice",
            &done,
            "Error: etcdserver: duplicate key given in txn request",
        );
        assert_eq!(etcdctl_ok(&e, &["get", "t/dup"]).await, "");
        assert_eq!(servers.revision(0).await, 7);
    })
    .await;
}

/// A transaction inside a transaction (gRPC only: etcdctl cannot write one). All compares,
/// the nested ones too, are evaluated against the store as it was before the transaction;
/// the requests then run in order (a range sees the puts before it) at one new revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_txn_through_grpc() {
    bounded(Duration::from_secs(30), async {
        let servers = Servers::start(1).await;
        let mut kv = servers.kv(0);
        assert_eq!(servers.put(0, "n/x", "1").await, 2);

        let request = TxnRequest {
            compare: vec![compare(
                "n/x",
                CompareResult::Equal,
                TargetUnion::Value(b"1".to_vec()),
            )],
            success: vec![
                put_op("n/a", "a1"),
                // n/a did not exist before the transaction: version 0 holds.
                txn_op(TxnRequest {
                    compare: vec![compare(
                        "n/a",
                        CompareResult::Equal,
                        TargetUnion::Version(0),
                    )],
                    success: vec![put_op("n/b", "b1"), range_op("n/a", b"")],
                    failure: vec![put_op("n/b", "wrong")],
                }),
                txn_op(TxnRequest {
                    compare: vec![compare(
                        "n/x",
                        CompareResult::Greater,
                        TargetUnion::ModRevision(2),
                    )],
                    success: vec![put_op("n/c", "wrong")],
                    failure: vec![
                        delete_op("n/x", b"", true),
                        range_op("n/", &prefix_end(b"n/")),
                    ],
                }),
            ],
            failure: vec![put_op("n/fail", "1")],
        };
        let mut r = kv.txn(request).await.expect("the nested txn").into_inner();
        assert_eq!(revision(&r.header), 3, "{r:?}");
        r.header = None;
        let expected = TxnResponse {
            header: None,
            succeeded: true,
            responses: vec![
                put_response(3),
                ResponseOp {
                    response: Some(response_op::Response::ResponseTxn(TxnResponse {
                        // etcd leaves a nested txn's header empty.
                        header: Some(ResponseHeader::default()),
                        succeeded: true,
                        responses: vec![
                            put_response(3),
                            range_response(3, vec![key_value("n/a", "a1", 3, 3, 1)]),
                        ],
                    })),
                },
                ResponseOp {
                    response: Some(response_op::Response::ResponseTxn(TxnResponse {
                        // etcd leaves a nested txn's header empty.
                        header: Some(ResponseHeader::default()),
                        succeeded: false,
                        responses: vec![
                            ResponseOp {
                                response: Some(response_op::Response::ResponseDeleteRange(
                                    DeleteRangeResponse {
                                        header: inner_header(3),
                                        deleted: 1,
                                        prev_kvs: vec![key_value("n/x", "1", 2, 2, 1)],
                                    },
                                )),
                            },
                            range_response(
                                3,
                                vec![
                                    key_value("n/a", "a1", 3, 3, 1),
                                    key_value("n/b", "b1", 3, 3, 1),
                                ],
                            ),
                        ],
                    })),
                },
            ],
        };
        assert_eq!(r, expected);
        let all = servers.range(0, "n/", &prefix_end(b"n/")).await;
        assert_eq!(revision(&all.header), 3);
        assert_eq!(
            all.kvs,
            vec![
                key_value("n/a", "a1", 3, 3, 1),
                key_value("n/b", "b1", 3, 3, 1)
            ]
        );

        // The outer compare fails: only the failure branch runs (its nested txn too).
        let r = kv
            .txn(TxnRequest {
                compare: vec![compare(
                    "n/x",
                    CompareResult::Equal,
                    TargetUnion::Value(b"1".to_vec()),
                )],
                success: vec![put_op("n/never", "1")],
                failure: vec![txn_op(TxnRequest {
                    compare: vec![],
                    success: vec![put_op("n/c", "c1")],
                    failure: vec![],
                })],
            })
            .await
            .expect("a txn")
            .into_inner();
        assert_eq!((r.succeeded, revision(&r.header)), (false, 4), "{r:?}");
        assert_eq!(servers.get(0, "n/c").await.as_deref(), Some("c1"));
        assert_eq!(servers.get(0, "n/never").await, None);

        // A key put by the outer transaction and again by a nested one is a duplicate; so
        // is a put inside a range the same branch deletes.
        let r = kv
            .txn(TxnRequest {
                compare: vec![],
                success: vec![
                    put_op("n/a", "again"),
                    txn_op(TxnRequest {
                        compare: vec![],
                        success: vec![put_op("n/a", "twice")],
                        failure: vec![],
                    }),
                ],
                failure: vec![],
            })
            .await;
        assert_status(
            "a nested put of the key the outer txn puts",
            r,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        );
        let r = kv
            .txn(TxnRequest {
                compare: vec![],
                success: vec![
                    delete_op("n/", &prefix_end(b"n/"), false),
                    put_op("n/z", "1"),
                ],
                failure: vec![],
            })
            .await;
        assert_status(
            "a put inside a deleted range",
            r,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        );
        // The same key in the success and the failure branch is fine.
        let r = kv
            .txn(TxnRequest {
                compare: vec![],
                success: vec![put_op("n/same", "s")],
                failure: vec![put_op("n/same", "f")],
            })
            .await
            .expect("one key in both branches")
            .into_inner();
        assert_eq!((r.succeeded, revision(&r.header)), (true, 5));
        servers.still_serves("the refused nested txns").await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Watch

/// `etcdctl watch` while another client writes through other members: the exact events, for
/// one key, a prefix, with `--prev-kv`, as JSON (a revision's events in one response), and
/// `--rev` replaying the history then going on live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_prints_every_event() {
    if !etcdctl_installed() {
        return;
    }
    bounded(Duration::from_secs(45), async {
        let servers = Servers::start(3).await;
        let mut prefix = spawn_etcdctl(&servers.endpoint(0), &["watch", "--prefix", "w/"]);
        let mut one = spawn_etcdctl(&servers.endpoint(2), &["watch", "w/a"]);
        let mut prev = spawn_etcdctl(
            &servers.endpoint(1),
            &["watch", "--prev-kv", "--prefix", "w/"],
        );
        let mut json = spawn_etcdctl(
            &servers.endpoint(0),
            &["watch", "-w", "json", "--prefix", "w/"],
        );

        // The watchers are in place once each has seen a write of w/a = ready.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            servers.put(1, "w/a", "ready").await;
            tokio::time::sleep(Duration::from_millis(150)).await;
            let seen = |b: &Background| b.stdout().contains("w/a\nready\n");
            if [&prefix, &one, &prev].iter().all(|b| seen(b))
                && json.stdout().contains(&b64("ready"))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the watchers saw no write within 10 s:\n{}\n{}\n{}\n{}",
                prefix.stderr(),
                one.stderr(),
                prev.stderr(),
                json.stderr()
            );
        }

        let first = servers.put(1, "w/a", "1").await;
        servers.put(2, "w/b", "2").await;
        let mut kv = servers.kv(1);
        let r = kv
            .delete_range(DeleteRangeRequest {
                key: "w/a".into(),
                ..DeleteRangeRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.deleted, 1);
        servers.put(2, "w/a", "two words").await;
        let txn = kv
            .txn(TxnRequest {
                compare: vec![],
                success: vec![put_op("w/a", "3"), put_op("w/c", "4")],
                failure: vec![],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(txn.succeeded);
        let r = kv
            .delete_range(DeleteRangeRequest {
                key: "w/".into(),
                range_end: prefix_end(b"w/"),
                prev_kv: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.deleted, 3);
        servers.put(2, "x/outside", "1").await;
        let last = servers.put(0, "w/end", "1").await;
        assert_eq!(last, first + 7);

        let expected_prefix = "PUT\nw/a\n1\nPUT\nw/b\n2\nDELETE\nw/a\n\nPUT\nw/a\ntwo words\n\
                               PUT\nw/a\n3\nPUT\nw/c\n4\n\
                               DELETE\nw/a\n\nDELETE\nw/b\n\nDELETE\nw/c\n\nPUT\nw/end\n1\n";
        let limit = Duration::from_secs(5);
        let out = prefix
            .wait_stdout(limit, "the put of w/end", |o| o.contains("w/end\n1\n"))
            .await;
        let (sync, events) = without_sync(&out);
        assert!(sync >= 1);
        assert_eq!(
            events, expected_prefix,
            "watch --prefix w/; whole output:\n{out}"
        );

        let expected_one =
            "PUT\nw/a\n1\nDELETE\nw/a\n\nPUT\nw/a\ntwo words\nPUT\nw/a\n3\nDELETE\nw/a\n\n";
        let out = one
            .wait_stdout(limit, "5 events", |o| {
                without_sync(o).1.len() >= expected_one.len()
            })
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(one.stdout(), out, "more events on w/a");
        assert_eq!(
            without_sync(&out).1,
            expected_one,
            "watch w/a; whole output:\n{out}"
        );

        // --prev-kv: the key's previous version before the new one (nothing before a
        // creation); a deletion shows the deleted version, then the key with no value.
        let out = prev
            .wait_stdout(limit, "the put of w/end", |o| o.contains("w/end\n1\n"))
            .await;
        assert_eq!(
            without_sync(&out).1,
            "PUT\nw/a\nready\nw/a\n1\nPUT\nw/b\n2\nDELETE\nw/a\n1\nw/a\n\n\
             PUT\nw/a\ntwo words\nPUT\nw/a\ntwo words\nw/a\n3\nPUT\nw/c\n4\n\
             DELETE\nw/a\n3\nw/a\n\nDELETE\nw/b\n2\nw/b\n\nDELETE\nw/c\n4\nw/c\n\n\
             PUT\nw/end\n1\n",
            "watch --prev-kv --prefix w/; whole output:\n{out}"
        );

        // -w json: one line per WatchResponse; a revision's events come together.
        let out = json
            .wait_stdout(limit, "the put of w/end", |o| o.contains(&b64("w/end")))
            .await;
        let lines: Vec<(i64, usize)> = out
            .lines()
            .filter(|l| !l.contains(&b64("ready")))
            .map(|l| {
                let (rev, rest) = split_header(&l.replacen("\"Header\"", "\"header\"", 1));
                (rev, rest.matches("\"kv\":").count())
            })
            .collect();
        let f = first;
        assert_eq!(
            lines,
            [
                (f, 1),
                (f + 1, 1),
                (f + 2, 1),
                (f + 3, 1),
                (f + 4, 2),
                (f + 5, 3),
                (f + 7, 1)
            ],
            "watch -w json: (header revision, events) per line:\n{out}"
        );
        assert!(
            out.lines()
                .filter(|l| !l.contains(&b64("ready")))
                .all(|l| l
                    .ends_with("],\"CompactRevision\":0,\"Canceled\":false,\"Created\":false}")),
            "{out}"
        );
        // A deletion event carries the key and its deletion revision only.
        assert!(
            out.contains(&format!(
                "{{\"type\":1,\"kv\":{{\"key\":\"{}\",\"mod_revision\":{}}}}}",
                b64("w/a"),
                f + 2
            )),
            "{out}"
        );
        for w in [&mut prefix, &mut one, &mut prev, &mut json] {
            let (_, err) = w.kill();
            assert_eq!(err, "", "{} wrote to stderr", w.what);
        }

        // --rev replays the history from that revision, then goes on live.
        let mut replay = spawn_etcdctl(
            &servers.endpoint(2),
            &["watch", "--prefix", "w/", &format!("--rev={first}")],
        );
        replay
            .wait_stdout(limit, "the history", |o| o.contains("w/end\n1\n"))
            .await;
        servers.put(1, "w/live", "5").await;
        let out = replay
            .wait_stdout(limit, "the live put", |o| o.contains("w/live\n5\n"))
            .await;
        assert_eq!(out, format!("{expected_prefix}PUT\nw/live\n5\n"));
        replay.kill();

        // From a revision in the middle, one key.
        let mut middle = spawn_etcdctl(
            &servers.endpoint(1),
            &["watch", "w/a", &format!("--rev={}", first + 3)],
        );
        let expected_middle = "PUT\nw/a\ntwo words\nPUT\nw/a\n3\nDELETE\nw/a\n\n";
        middle
            .wait_stdout(limit, "the history", |o| o.len() >= expected_middle.len())
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(middle.stdout(), expected_middle);
        middle.kill();

        // From a revision still to come: only the events from it on.
        let now = servers.revision(0).await;
        let mut future = spawn_etcdctl(
            &servers.endpoint(0),
            &["watch", "w/f", &format!("--rev={}", now + 2)],
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        servers.put(1, "w/f", "early").await;
        servers.put(2, "w/f", "on time").await;
        servers.put(1, "w/f", "late").await;
        let out = future
            .wait_stdout(limit, "two events", |o| o.contains("late\n"))
            .await;
        assert_eq!(out, "PUT\nw/f\non time\nPUT\nw/f\nlate\n");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// History and compaction

/// `get --rev` reads the past; `etcdctl compaction` drops what is older than its revision:
/// reads and watches from before it fail with etcd's message, reads from it on still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_compaction() {
    if !etcdctl_installed() {
        return;
    }
    bounded(Duration::from_secs(45), async {
        let servers = Servers::start(3).await;
        let e = servers.endpoints();
        let leader = servers.leader().await;
        assert_eq!(servers.put(leader, "c/k", "v1").await, 2);
        assert_eq!(servers.put(leader, "c/k", "v2").await, 3);
        assert_eq!(servers.put(leader, "c/other", "x").await, 4);
        assert_eq!(servers.put(leader, "c/k", "v3").await, 5);
        let r = servers
            .kv(leader)
            .delete_range(DeleteRangeRequest {
                key: "c/other".into(),
                ..DeleteRangeRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(revision(&r.header), 6);

        for i in 0..3 {
            let ep = servers.endpoint(i);
            assert_eq!(
                etcdctl_ok(&ep, &["get", "--rev=2", "c/k"]).await,
                "c/k\nv1\n"
            );
            assert_eq!(
                etcdctl_ok(&ep, &["get", "--rev=3", "c/k"]).await,
                "c/k\nv2\n"
            );
            assert_eq!(
                etcdctl_ok(&ep, &["get", "--rev=4", "--prefix", "c/"]).await,
                "c/k\nv2\nc/other\nx\n"
            );
            assert_eq!(
                etcdctl_ok(&ep, &["get", "--rev=6", "--prefix", "c/"]).await,
                "c/k\nv3\n"
            );
            assert_eq!(etcdctl_ok(&ep, &["get", "--rev=1", "c/k"]).await, "");
            assert_eq!(
                etcdctl_ok(&ep, &["get", "--rev=3", "--consistency=s", "c/k"]).await,
                "c/k\nv2\n"
            );
            assert_failed_with(
                "get --rev=7",
                &etcdctl(&ep, &["get", "--rev=7", "c/k"]).await,
                "Error: etcdserver: mvcc: required revision is a future revision",
            );
        }
        // Range options at a past revision: count, limit, sort, revision filters.
        let ep = servers.endpoint(1);
        let counted = servers
            .kv(1)
            .range(RangeRequest {
                key: "c/".into(),
                range_end: prefix_end(b"c/"),
                revision: 4,
                count_only: true,
                ..RangeRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                revision(&counted.header),
                counted.count,
                counted.kvs.len(),
                counted.more
            ),
            (6, 2, 0, false)
        );
        let limited = [
            "get",
            "--rev=4",
            "--prefix",
            "c/",
            "--limit=1",
            "-w",
            "json",
        ];
        let (_, rest) = split_header(&etcdctl_ok(&ep, &limited).await);
        assert_eq!(
            rest,
            format!(
                "{{\"kvs\":[{{\"key\":\"{}\",\"create_revision\":2,\"mod_revision\":3,\
                 \"version\":2,\"value\":\"{}\"}}],\"more\":true,\"count\":2}}",
                b64("c/k"),
                b64("v2")
            )
        );
        assert_eq!(
            etcdctl_ok(
                &ep,
                &[
                    "get",
                    "--rev=4",
                    "--prefix",
                    "c/",
                    "--sort-by=MODIFY",
                    "--order=DESCEND"
                ]
            )
            .await,
            "c/other\nx\nc/k\nv2\n"
        );
        let filtered = |revision: i64, min_mod: i64, max_create: i64| {
            let mut kv = servers.kv(2);
            async move {
                let r = kv
                    .range(RangeRequest {
                        key: "c/".into(),
                        range_end: prefix_end(b"c/"),
                        revision,
                        min_mod_revision: min_mod,
                        max_create_revision: max_create,
                        ..RangeRequest::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let keys: Vec<String> = r
                    .kvs
                    .iter()
                    .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                    .collect();
                (keys, r.count)
            }
        };
        // (etcd counts the keys before these filters.)
        assert_eq!(filtered(4, 4, 0).await, (vec!["c/other".to_string()], 2));
        assert_eq!(filtered(5, 0, 3).await, (vec!["c/k".to_string()], 2));
        // The old version's own bookkeeping.
        let old = servers
            .kv(1)
            .range(RangeRequest {
                key: "c/k".into(),
                revision: 3,
                ..RangeRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            revision(&old.header),
            6,
            "the header has the current revision"
        );
        assert_eq!(old.kvs, vec![key_value("c/k", "v2", 2, 3, 2)]);

        assert_eq!(
            etcdctl_ok(&e, &["compaction", "4"]).await,
            "compacted revision 4\n"
        );
        for i in 0..3 {
            let ep = servers.endpoint(i);
            assert_failed_with(
                "get --rev=3 after compaction 4",
                &etcdctl(&ep, &["get", "--rev=3", "c/k"]).await,
                "Error: etcdserver: mvcc: required revision has been compacted",
            );
            // The compaction revision itself is kept.
            assert_eq!(
                etcdctl_ok(&ep, &["get", "--rev=4", "--prefix", "c/"]).await,
                "c/k\nv2\nc/other\nx\n"
            );
            assert_eq!(
                etcdctl_ok(&ep, &["get", "--rev=5", "c/k"]).await,
                "c/k\nv3\n"
            );
        }
        assert_failed_with(
            "compaction 4 again",
            &etcdctl(&e, &["compaction", "4"]).await,
            "Error: etcdserver: mvcc: required revision has been compacted",
        );
        assert_failed_with(
            "compaction 3",
            &etcdctl(&e, &["compaction", "3"]).await,
            "Error: etcdserver: mvcc: required revision has been compacted",
        );
        assert_failed_with(
            "compaction 100",
            &etcdctl(&e, &["compaction", "100"]).await,
            "Error: etcdserver: mvcc: required revision is a future revision",
        );

        // A watch from before the compaction is canceled; etcdctl says why and exits.
        let done = etcdctl(&servers.endpoint(2), &["watch", "--rev=3", "c/k"]).await;
        assert_eq!(
            (
                done.status.code(),
                done.stdout.as_str(),
                done.stderr.as_str()
            ),
            (
                Some(5),
                "",
                "watch was canceled (etcdserver: mvcc: required revision has been compacted)\n\
                 Error: watch is canceled by the server\n"
            )
        );
        // Through gRPC: created, then canceled with the compaction revision.
        let responses = watch_responses(
            &servers,
            1,
            WatchCreateRequest {
                key: "c/k".into(),
                start_revision: 2,
                ..WatchCreateRequest::default()
            },
            Duration::from_secs(5),
            3,
        )
        .await;
        let summary: Vec<_> = responses
            .iter()
            .map(|r| {
                (
                    r.created,
                    r.canceled,
                    r.compact_revision,
                    r.cancel_reason.as_str(),
                    r.events.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (true, false, 0, "", 0),
                (
                    false, true, 4,
                    // etcd 3.4 gives no reason: the client library turns a cancel with a
                    // compact revision into "required revision has been compacted".
                    "", 0
                )
            ],
            "{responses:?}"
        );
        assert_eq!(responses[0].watch_id, responses[1].watch_id);
        // From the compaction revision on, the history is there.
        let mut watch = spawn_etcdctl(
            &servers.endpoint(0),
            &["watch", "--rev=4", "--prefix", "c/"],
        );
        let out = watch
            .wait_stdout(Duration::from_secs(5), "three events", |o| {
                o.matches('\n').count() >= 9
            })
            .await;
        assert_eq!(out, "PUT\nc/other\nx\nPUT\nc/k\nv3\nDELETE\nc/other\n\n");

        // A compaction through gRPC: the answer carries the revision it was made at.
        let r = servers
            .kv(1)
            .compact(CompactionRequest {
                revision: 5,
                physical: true,
            })
            .await
            .expect("compact 5")
            .into_inner();
        assert_eq!(revision(&r.header), 6);
        let r = servers
            .kv(0)
            .range(RangeRequest {
                key: "c/k".into(),
                revision: 4,
                ..RangeRequest::default()
            })
            .await;
        assert_status(
            "range at revision 4 after compaction 5",
            r,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        // A watcher that had caught up goes on through the compaction.
        servers.put(2, "c/after", "y").await;
        let out = watch
            .wait_stdout(
                Duration::from_secs(5),
                "the put after the compaction",
                |o| o.contains("c/after"),
            )
            .await;
        assert_eq!(
            out,
            "PUT\nc/other\nx\nPUT\nc/k\nv3\nDELETE\nc/other\n\nPUT\nc/after\ny\n"
        );
        let (_, err) = watch.kill();
        assert_eq!(err, "");
        servers.still_serves("compactions").await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Leases

/// The lease commands: grant, put --lease, timetolive (--keys), list, keep-alive --once,
/// revoke (which deletes the attached keys), and what each says about a lease that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_commands() {
    if !etcdctl_installed() {
        return;
    }
    bounded(Duration::from_secs(45), async {
        let servers = Servers::start(3).await;
        let e = servers.endpoints();

        let out = etcdctl_ok(&servers.endpoint(0), &["lease", "grant", "60"]).await;
        let id = lease_id_in(&out);
        assert!(id > 0, "{out}");
        assert_eq!(out, format!("lease {id:016x} granted with TTL(60s)\n"));
        let out = etcdctl_ok(
            &servers.endpoint(1),
            &["lease", "grant", "600", "-w", "json"],
        )
        .await;
        let other = json_number(&out, "ID").unwrap_or_else(|| panic!("no ID in {out}"));
        assert!(other > 0 && other != id, "{out}");
        assert!(
            out.ends_with(&format!(",\"ID\":{other},\"TTL\":600,\"Error\":\"\"}}\n")),
            "{out}"
        );

        let lease = format!("--lease={id:x}");
        assert_eq!(
            etcdctl_ok(&servers.endpoint(1), &["put", &lease, "l/a", "1"]).await,
            "OK\n"
        );
        assert_eq!(
            etcdctl_ok(&servers.endpoint(2), &["put", &lease, "l/b", "2"]).await,
            "OK\n"
        );
        assert_eq!(etcdctl_ok(&e, &["put", "l/free", "3"]).await, "OK\n");
        let r = servers.range(2, "l/", &prefix_end(b"l/")).await;
        let leases: Vec<i64> = r.kvs.iter().map(|kv| kv.lease).collect();
        assert_eq!(leases, [id, id, 0]);
        let out = etcdctl_ok(&e, &["get", "l/a", "-w", "json"]).await;
        assert!(out.contains(&format!(",\"lease\":{id}}}]")), "{out}");

        // Time to live: granted and remaining (etcd truncates: 59 s just after a grant of
        // 60 s).
        for i in 0..3 {
            let out = etcdctl_ok(
                &servers.endpoint(i),
                &["lease", "timetolive", &format!("{id:x}")],
            )
            .await;
            let head = format!("lease {id:016x} granted with TTL(60s), remaining(");
            let remaining: i64 = out
                .strip_prefix(&head)
                .and_then(|r| r.strip_suffix("s)\n"))
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("timetolive through member {i}: {out:?}"));
            assert!((50..=59).contains(&remaining), "{out}");
        }
        let out = etcdctl_ok(&e, &["lease", "timetolive", "--keys", &format!("{id:x}")]).await;
        let keys = out
            .split_once(", attached keys([")
            .and_then(|(_, k)| k.strip_suffix("])\n"))
            .unwrap_or_else(|| panic!("timetolive --keys: {out:?}"));
        let keys: BTreeSet<&str> = keys.split(' ').collect();
        assert_eq!(keys, BTreeSet::from(["l/a", "l/b"]), "{out}");
        let out = etcdctl_ok(
            &e,
            &[
                "lease",
                "timetolive",
                "--keys",
                "-w",
                "json",
                &format!("{id:x}"),
            ],
        )
        .await;
        assert!(out.contains(&format!(",\"id\":{id},\"ttl\":")), "{out}");
        assert!(out.contains(",\"granted-ttl\":60,\"keys\":["), "{out}");

        let out = etcdctl_ok(&e, &["lease", "list"]).await;
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("found 2 leases"), "{out}");
        let listed: BTreeSet<String> = lines.map(str::to_string).collect();
        assert_eq!(
            listed,
            BTreeSet::from([format!("{id:016x}"), format!("{other:016x}")]),
            "{out}"
        );

        assert_eq!(
            etcdctl_ok(
                &servers.endpoint(2),
                &["lease", "keep-alive", "--once", &format!("{id:x}")]
            )
            .await,
            format!("lease {id:016x} keepalived with TTL(60)\n")
        );

        // A put without a lease detaches the key from its lease.
        assert_eq!(
            etcdctl_ok(&servers.endpoint(0), &["put", "l/b", "22"]).await,
            "OK\n"
        );
        let out = etcdctl_ok(&e, &["lease", "timetolive", "--keys", &format!("{id:x}")]).await;
        assert!(
            out.ends_with("s), attached keys([l/a])\n"),
            "timetolive --keys after l/b was put without the lease: {out:?}"
        );

        // Revoking deletes the attached keys, on every member.
        assert_eq!(
            etcdctl_ok(
                &servers.endpoint(1),
                &["lease", "revoke", &format!("{id:x}")]
            )
            .await,
            format!("lease {id:016x} revoked\n")
        );
        for i in 0..3 {
            assert_eq!(
                etcdctl_ok(&servers.endpoint(i), &["get", "--prefix", "l/"]).await,
                "l/b\n22\nl/free\n3\n",
                "member {i}"
            );
        }

        // A lease that is gone.
        let hex = format!("{id:x}");
        assert_eq!(
            etcdctl_ok(&e, &["lease", "timetolive", &hex]).await,
            format!("lease {id:016x} already expired\n")
        );
        assert_failed_with(
            "revoke again",
            &etcdctl(&e, &["lease", "revoke", &hex]).await,
            "Error: failed to revoke lease (etcdserver: requested lease not found)",
        );
        let done = etcdctl(&e, &["lease", "keep-alive", "--once", &hex]).await;
        assert_failed_with(
            "keep-alive --once of a revoked lease",
            &done,
            "Error: etcdserver: requested lease not found",
        );
        assert_eq!(done.status.code(), Some(2));
        assert_failed_with(
            "put --lease of a revoked lease",
            &etcdctl(&e, &["put", &lease, "l/c", "3"]).await,
            "Error: etcdserver: requested lease not found",
        );
        assert_failed_with(
            "put --lease of a lease never granted",
            &etcdctl(&e, &["put", "--lease=1234abcd", "l/c", "3"]).await,
            "Error: etcdserver: requested lease not found",
        );
        assert_eq!(etcdctl_ok(&e, &["get", "l/c"]).await, "");
        assert_eq!(
            etcdctl_ok(&e, &["lease", "list"]).await,
            format!("found 1 leases\n{other:016x}\n")
        );
        assert_eq!(
            etcdctl_ok(&e, &["lease", "revoke", &format!("{other:x}")]).await,
            format!("lease {other:016x} revoked\n")
        );
        assert_eq!(etcdctl_ok(&e, &["lease", "list"]).await, "found 0 leases\n");
    })
    .await;
}

/// A key belongs to the lease of its last put: a put with another lease moves it, a put
/// without one detaches it, `--ignore-lease` keeps it, `--ignore-value` changes only the
/// lease; a lease's keys go in one revision when it is revoked, also keys put in a txn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_belongs_to_the_lease_of_its_last_put() {
    if !etcdctl_installed() {
        return;
    }
    bounded(Duration::from_secs(45), async {
        let servers = Servers::start(3).await;
        let e = servers.endpoints();
        let grant = |ep: String| async move {
            lease_id_in(&etcdctl_ok(&ep, &["lease", "grant", "60"]).await)
        };
        let one = grant(servers.endpoint(0)).await;
        let two = grant(servers.endpoint(1)).await;
        let (one_hex, two_hex) = (format!("{one:x}"), format!("{two:x}"));
        let keys_of = |hex: String| {
            let e = e.clone();
            async move {
                let out = etcdctl_ok(&e, &["lease", "timetolive", "--keys", &hex]).await;
                out.split_once(", attached keys(")
                    .map(|(_, k)| k.to_string())
                    .unwrap_or_else(|| panic!("timetolive --keys {hex}: {out:?}"))
            }
        };
        let lease_of = |key: &'static str| {
            let kv = servers.kv(2);
            async move {
                let mut kv = kv;
                let r = kv
                    .range(RangeRequest {
                        key: key.into(),
                        ..RangeRequest::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                r.kvs
                    .first()
                    .map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.lease))
            }
        };

        let put = |args: Vec<String>| {
            let e = e.clone();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                etcdctl(&e, &args).await
            }
        };
        let ok = |done: Finished| {
            assert!(done.status.success(), "{}", done.stderr);
            done.stdout
        };
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ok(put(args(&["put", &format!("--lease={one_hex}"), "la/k", "1"])).await),
            "OK\n"
        );
        assert_eq!(lease_of("la/k").await, Some(("1".into(), one)));
        assert_eq!(keys_of(one_hex.clone()).await, "[la/k])\n");
        // Another lease: the key moves.
        assert_eq!(
            ok(put(args(&["put", &format!("--lease={two_hex}"), "la/k", "2"])).await),
            "OK\n"
        );
        assert_eq!(lease_of("la/k").await, Some(("2".into(), two)));
        assert_eq!(keys_of(one_hex.clone()).await, "[])\n");
        assert_eq!(keys_of(two_hex.clone()).await, "[la/k])\n");
        // --ignore-lease keeps it; --ignore-value changes the lease only.
        assert_eq!(
            ok(put(args(&["put", "--ignore-lease", "la/k", "3"])).await),
            "OK\n"
        );
        assert_eq!(lease_of("la/k").await, Some(("3".into(), two)));
        assert_eq!(
            ok(put(args(&[
                "put",
                "--ignore-value",
                &format!("--lease={one_hex}"),
                "la/k"
            ]))
            .await),
            "OK\n"
        );
        assert_eq!(lease_of("la/k").await, Some(("3".into(), one)));
        assert_eq!(keys_of(two_hex.clone()).await, "[])\n");
        // --ignore-value of a missing key.
        assert_failed_with(
            "put --ignore-value of a missing key",
            &put(args(&["put", "--ignore-value", "la/none"])).await,
            "Error: etcdserver: key not found",
        );
        // A put without a lease detaches.
        assert_eq!(ok(put(args(&["put", "la/d", "x"])).await), "OK\n");
        assert_eq!(
            ok(put(args(&["put", &format!("--lease={two_hex}"), "la/d", "y"])).await),
            "OK\n"
        );
        assert_eq!(ok(put(args(&["put", "la/d", "z"])).await), "OK\n");
        assert_eq!(lease_of("la/d").await, Some(("z".into(), 0)));
        assert_eq!(keys_of(two_hex.clone()).await, "[])\n");

        // Keys put with a lease in a transaction.
        let done = etcdctl_with_input(
            &e,
            &["txn"],
            &format!("\nput --lease={one_hex} la/t1 a\nput --lease={one_hex} la/t2 b\n\n\n"),
        )
        .await;
        assert_eq!(ok(done), "SUCCESS\n\nOK\n\nOK\n");
        let out = etcdctl_ok(&e, &["lease", "timetolive", "--keys", &one_hex]).await;
        let keys = out
            .split_once(", attached keys([")
            .and_then(|(_, k)| k.strip_suffix("])\n"))
            .unwrap_or_else(|| panic!("{out:?}"));
        let keys: BTreeSet<&str> = keys.split(' ').collect();
        assert_eq!(keys, BTreeSet::from(["la/k", "la/t1", "la/t2"]));

        // Revoking deletes its three keys at one revision; revoking a lease without keys
        // writes nothing.
        let before = servers.revision(0).await;
        assert_eq!(
            etcdctl_ok(&e, &["lease", "revoke", &one_hex]).await,
            format!("lease {one:016x} revoked\n")
        );
        assert_eq!(servers.revision(1).await, before + 1);
        assert_eq!(
            etcdctl_ok(&e, &["get", "--prefix", "la/"]).await,
            "la/d\nz\n"
        );
        assert_eq!(
            etcdctl_ok(&e, &["lease", "revoke", &two_hex]).await,
            format!("lease {two:016x} revoked\n")
        );
        assert_eq!(servers.revision(2).await, before + 1);
        assert_eq!(
            etcdctl_ok(&e, &["get", "--prefix", "la/"]).await,
            "la/d\nz\n"
        );
    })
    .await;
}

/// A lease kept alive by `etcdctl lease keep-alive` outlives its TTL; one left alone
/// expires (the leader revokes it) and its keys vanish from every member within TTL + a few
/// seconds, never before about its TTL; a watcher sees the deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_unless_kept_alive() {
    if !etcdctl_installed() {
        return;
    }
    bounded(Duration::from_secs(45), async {
        let servers = Servers::start(3).await;
        let e = servers.endpoints();
        let grant = |ttl: i64| {
            let mut lease = servers.lease(0);
            async move {
                lease
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await
                    .expect("a grant")
                    .into_inner()
            }
        };
        let kept = grant(2).await;
        assert_eq!(kept.ttl, 2);
        let mut keep_alive = spawn_etcdctl(
            &servers.endpoint(1),
            &["lease", "keep-alive", &format!("{:x}", kept.id)],
        );
        let mut watch = spawn_etcdctl(&servers.endpoint(2), &["watch", "k/expiring"]);
        let lease_put = |key: &'static str, lease: i64| {
            let mut kv = servers.kv(1);
            async move {
                kv.put(PutRequest {
                    key: key.into(),
                    value: "v".into(),
                    lease,
                    ..PutRequest::default()
                })
                .await
                .expect("a put with a lease")
            }
        };
        lease_put("k/kept", kept.id).await;
        tokio::time::sleep(Duration::from_millis(500)).await; // the watcher settles

        let expiring = grant(2).await;
        let granted = Instant::now();
        lease_put("k/expiring", expiring.id).await;

        // Present for about its TTL, then gone everywhere within TTL + 3 s.
        let mut vanished = None;
        while vanished.is_none() {
            let elapsed = granted.elapsed();
            let present = servers.get(0, "k/expiring").await.is_some();
            if !present {
                vanished = Some(elapsed);
            } else {
                assert!(
                    elapsed < Duration::from_secs(5),
                    "k/expiring (lease of 2 s, never kept alive) still there after {elapsed:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let vanished = vanished.unwrap();
        eprintln!("the key of a lease of 2 s vanished {vanished:?} after the grant");
        assert!(
            vanished >= Duration::from_millis(1500),
            "the key of a lease of 2 s vanished after {vanished:?}"
        );
        for i in 0..3 {
            assert_eq!(servers.get(i, "k/expiring").await, None, "member {i}");
        }
        assert_eq!(
            etcdctl_ok(&e, &["lease", "timetolive", &format!("{:x}", expiring.id)]).await,
            format!("lease {:016x} already expired\n", expiring.id)
        );
        let out = watch
            .wait_stdout(Duration::from_secs(3), "the deletion", |o| {
                o.contains("DELETE")
            })
            .await;
        assert_eq!(out, "PUT\nk/expiring\nv\nDELETE\nk/expiring\n\n");

        // The kept lease outlives its TTL twice over; keep-alive reports each renewal.
        let left = Duration::from_millis(4500).saturating_sub(granted.elapsed());
        tokio::time::sleep(left).await;
        for i in 0..3 {
            assert_eq!(
                servers.get(i, "k/kept").await.as_deref(),
                Some("v"),
                "member {i}"
            );
        }
        let (out, err) = keep_alive.kill();
        let killed = Instant::now();
        let line = format!("lease {:016x} keepalived with TTL(2)", kept.id);
        assert!(out.lines().count() >= 4, "keep-alive:\n{out}\n{err}");
        assert!(out.lines().all(|l| l == line), "keep-alive:\n{out}\n{err}");
        let out = etcdctl_ok(&e, &["lease", "list"]).await;
        assert_eq!(out, format!("found 1 leases\n{:016x}\n", kept.id));

        // Once nobody keeps it alive, it expires too.
        loop {
            if servers.get(2, "k/kept").await.is_none() {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(5),
                "k/kept still there {:?} after its keep-alive was killed",
                killed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "after the keep-alive stopped, the key vanished in {:?}",
            killed.elapsed()
        );
        assert_eq!(etcdctl_ok(&e, &["lease", "list"]).await, "found 0 leases\n");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Concurrency recipes: lock and elect

/// `etcdctl lock`: a second contender waits while the first holds the lock, and gets it when
/// the first's command ends, when the first is killed (its lease expires: `--ttl=2`), or when
/// the first is stopped (SIGTERM: it revokes its lease at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_excludes_and_hands_over() {
    if !etcdctl_installed() {
        return;
    }
    bounded(Duration::from_secs(45), async {
        let servers = Servers::start(3).await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("order");
        let f = file.to_str().unwrap();

        // A command run under the lock: B's starts after A's ended.
        let a_cmd = format!("echo A-start >> {f}; sleep 1.5; echo A-end >> {f}");
        let mut a = spawn_etcdctl(
            &servers.endpoint(0),
            &["lock", "lk/exec", "--", "sh", "-c", &a_cmd],
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains("A-start")
        {
            assert!(
                Instant::now() < deadline,
                "A did not get the lock: {}",
                a.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let b_cmd = format!("echo B >> {f}");
        let mut b = spawn_etcdctl(
            &servers.endpoint(1),
            &["lock", "lk/exec", "--", "sh", "-c", &b_cmd],
        );
        let status = b.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "B: {status}: {}", b.stderr());
        let status = a.wait_exit(Duration::from_secs(5)).await;
        assert!(status.success(), "A: {status}: {}", a.stderr());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "A-start\nA-end\nB\n"
        );
        assert_eq!((a.stdout(), b.stdout()), (String::new(), String::new()));
        // The command's failure is etcdctl's.
        let done = etcdctl(
            &servers.endpoint(2),
            &["lock", "lk/exec", "--", "sh", "-c", "exit 3"],
        )
        .await;
        assert_eq!(done.status.code(), Some(1));
        assert_eq!(done.stderr, "Error: exit status 3\n");

        // A holder that is killed: its session's lease (2 s) has to expire.
        let mut holder = spawn_etcdctl(&servers.endpoint(0), &["lock", "--ttl=2", "lk/kill"]);
        let out = holder
            .wait_stdout(Duration::from_secs(5), "the lock key", |o| {
                o.ends_with("\n\n")
            })
            .await;
        let held = out.strip_suffix("\n\n").unwrap().to_string();
        assert!(held.starts_with("lk/kill/"), "{out:?}");
        let mut waiter = spawn_etcdctl(&servers.endpoint(1), &["lock", "lk/kill"]);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(
            waiter.stdout(),
            "",
            "the second contender got the lock the first holds"
        );
        let keys = servers.range(2, "lk/kill/", &prefix_end(b"lk/kill/")).await;
        assert_eq!(keys.kvs.len(), 2, "a key per contender: {keys:?}");
        // The holder is the contender with the oldest key; each key is named by its lease.
        let mut contenders = keys.kvs.clone();
        contenders.sort_by_key(|kv| kv.create_revision);
        assert_eq!(String::from_utf8_lossy(&contenders[0].key), held);
        for kv in &contenders {
            assert_eq!(kv.key, format!("lk/kill/{:x}", kv.lease).into_bytes());
        }
        holder.kill();
        let killed = Instant::now();
        let out = waiter
            .wait_stdout(Duration::from_secs(6), "the lock key", |o| {
                o.ends_with("\n\n")
            })
            .await;
        let took = killed.elapsed();
        eprintln!("the lock passed {took:?} after its holder was killed");
        let second = out.strip_suffix("\n\n").unwrap().to_string();
        assert!(second.starts_with("lk/kill/") && second != held, "{out:?}");
        assert!(
            took >= Duration::from_millis(500),
            "the lock passed {took:?} after its holder was killed, before its lease could expire"
        );

        // A holder that is stopped releases at once (its session's lease is revoked, long
        // before its 10 s TTL).
        let mut third = spawn_etcdctl(&servers.endpoint(2), &["lock", "lk/kill"]);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(third.stdout(), "");
        waiter.signal("TERM");
        let stopped = Instant::now();
        let out = third
            .wait_stdout(Duration::from_secs(3), "the lock key", |o| {
                o.ends_with("\n\n")
            })
            .await;
        assert!(
            out.starts_with("lk/kill/") && !out.contains(&second),
            "{out:?}"
        );
        eprintln!(
            "the lock passed {:?} after its holder was stopped",
            stopped.elapsed()
        );
        waiter.wait_exit(Duration::from_secs(3)).await;
    })
    .await;
}

/// `etcdctl elect`: one leader at a time; an observer (`elect -l`) sees each leader; the
/// second candidate leads once the first resigns (SIGTERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_has_one_leader_at_a_time() {
    if !etcdctl_installed() {
        return;
    }
    bounded(Duration::from_secs(45), async {
        let servers = Servers::start(3).await;
        let limit = Duration::from_secs(5);
        let mut observer = spawn_etcdctl(&servers.endpoint(2), &["elect", "-l", "el"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(observer.stdout(), "", "a leader before any candidate");

        let mut first = spawn_etcdctl(&servers.endpoint(0), &["elect", "el", "p1"]);
        let out = first
            .wait_stdout(limit, "leadership", |o| o.ends_with("\np1\n"))
            .await;
        let key1 = out.strip_suffix("\np1\n").unwrap().to_string();
        assert!(key1.starts_with("el/"), "{out:?}");
        let mut second = spawn_etcdctl(&servers.endpoint(1), &["elect", "el", "p2"]);
        let seen = observer
            .wait_stdout(limit, "the first leader", |o| o.ends_with("\np1\n"))
            .await;
        assert_eq!(seen, format!("{key1}\np1\n"));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(second.stdout(), "", "two leaders at once");
        // A late observer sees the current leader at once.
        let mut late = spawn_etcdctl(&servers.endpoint(1), &["elect", "-l", "el"]);
        let seen = late
            .wait_stdout(limit, "the leader", |o| o.ends_with("\np1\n"))
            .await;
        assert_eq!(seen, format!("{key1}\np1\n"));
        late.kill();

        first.signal("TERM");
        let resigned = Instant::now();
        let out = second
            .wait_stdout(limit, "leadership", |o| o.ends_with("\np2\n"))
            .await;
        eprintln!("p2 leads {:?} after p1 resigned", resigned.elapsed());
        let key2 = out.strip_suffix("\np2\n").unwrap().to_string();
        assert!(key2.starts_with("el/") && key2 != key1, "{out:?}");
        assert!(resigned.elapsed() < Duration::from_secs(3));
        let seen = observer
            .wait_stdout(limit, "the second leader", |o| o.ends_with("\np2\n"))
            .await;
        assert_eq!(seen, format!("{key1}\np1\n{key2}\np2\n"));
        first.wait_exit(Duration::from_secs(3)).await;
        let left = servers.range(0, "el/", &prefix_end(b"el/")).await;
        assert_eq!(left.kvs.len(), 1, "{left:?}");
        assert_eq!(String::from_utf8_lossy(&left.kvs[0].key), key2);
        assert_eq!(left.kvs[0].value, b"p2");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Maintenance

/// `endpoint hashkv` agrees on every member (by endpoint and with `--cluster`), also at a past
/// revision after more writes; `alarm list` prints nothing; `defrag` reports each member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashkv_alarm_and_defrag() {
    if !etcdctl_installed() {
        return;
    }
    bounded(Duration::from_secs(45), async {
        let servers = Servers::start(3).await;
        let e = servers.endpoints();
        let leader = servers.leader().await;
        for n in 0..20 {
            servers.put(n % 3, &format!("h/{n:02}"), &format!("value {n}")).await;
        }
        let mut kv = servers.kv(leader);
        kv.delete_range(DeleteRangeRequest {
            key: "h/1".into(),
            range_end: "h/2".into(),
            prev_kv: false,
        })
        .await
        .unwrap();
        let middle = servers.put(1, "h/00", "changed").await;

        // `<endpoint>, <hash>` per member, in the order given; with --cluster, every member's
        // client URL (from the member list).
        let hashes = |out: &str| -> Vec<(String, u32)> {
            out.lines()
                .map(|l| {
                    let (ep, hash) = l
                        .split_once(", ")
                        .unwrap_or_else(|| panic!("not `endpoint, hash`: {l:?}"));
                    (ep.to_string(), hash.parse().unwrap_or_else(|e| panic!("{l:?}: {e}")))
                })
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let hash = loop {
            let out = etcdctl_ok(&servers.endpoint(0), &["endpoint", "hashkv", "--cluster"]).await;
            let got = hashes(&out);
            let urls: BTreeSet<String> = got.iter().map(|(u, _)| u.clone()).collect();
            let expected: BTreeSet<String> = (0..3).map(|i| servers.client_url(i)).collect();
            assert_eq!(urls, expected, "{out}");
            if got.iter().all(|(_, h)| *h == got[0].1) {
                break got[0].1;
            }
            assert!(Instant::now() < deadline, "hashes differ for 5 s:\n{out}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let out = etcdctl_ok(&e, &["endpoint", "hashkv"]).await;
        let expected: Vec<(String, u32)> = (0..3).map(|i| (servers.endpoint(i), hash)).collect();
        assert_eq!(hashes(&out), expected, "{out}");
        let out = etcdctl_ok(&e, &["endpoint", "hashkv", "-w", "json"]).await;
        assert_eq!(out.matches(&format!("\"hash\":{hash}")).count(), 3, "{out}");

        // The hash at a past revision does not change with later writes.
        let rev = format!("--rev={middle}");
        let out = etcdctl_ok(&e, &["endpoint", "hashkv", &rev]).await;
        let at_middle = hashes(&out)[0].1;
        assert!(hashes(&out).iter().all(|(_, h)| *h == at_middle), "{out}");
        let out = etcdctl_ok(&e, &["endpoint", "hashkv", &format!("--rev={}", middle - 1)]).await;
        assert!(hashes(&out).iter().all(|(_, h)| *h != at_middle), "{out}");
        servers.put(2, "h/later", "1").await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = etcdctl_ok(&e, &["endpoint", "hashkv", &rev]).await;
            let got = hashes(&out);
            if got.iter().all(|(_, h)| *h == at_middle) {
                break;
            }
            assert!(Instant::now() < deadline, "the hash at {rev} changed:\n{out}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let done = etcdctl(&e, &["endpoint", "hashkv", "--rev=1000"]).await;
        assert_failed_with(
            "hashkv --rev=1000",
            &done,
            "Error: etcdserver: mvcc: required revision is a future revision",
        );
        assert!(
            done.stderr.contains(&format!(
                "Failed to get the hash of endpoint {} (etcdserver: mvcc: required revision is a future revision)",
                servers.endpoint(0)
            )),
            "{}",
            done.stderr
        );

        // Maintenance.Hash answers on every member.
        for i in 0..3 {
            let r = servers.maintenance(i).hash(HashRequest {}).await;
            assert!(r.is_ok(), "Hash on member {i}: {r:?}");
        }

        // No alarm.
        assert_eq!(etcdctl_ok(&e, &["alarm", "list"]).await, "");
        assert_eq!(etcdctl_ok(&e, &["alarm", "disarm"]).await, "");

        // Defragmentation: one line per member; the data stays.
        let out = etcdctl_ok(&e, &["defrag"]).await;
        let expected: String = (0..3)
            .map(|i| format!("Finished defragmenting etcd member[{}]\n", servers.endpoint(i)))
            .collect();
        assert_eq!(out, expected);
        let out = etcdctl_ok(&servers.endpoint(1), &["defrag", "--cluster"]).await;
        let lines: BTreeSet<&str> = out.lines().collect();
        let expected: Vec<String> = (0..3)
            .map(|i| format!("Finished defragmenting etcd member[{}]", servers.client_url(i)))
            .collect();
        assert_eq!(
            lines,
            expected.iter().map(String::as_str).collect::<BTreeSet<_>>(),
            "{out}"
        );
        assert_eq!(
            etcdctl_ok(&e, &["get", "h/00"]).await,
            "h/00\nchanged\n"
        );
        let out = etcdctl_ok(&e, &["endpoint", "hashkv", &rev]).await;
        assert!(hashes(&out).iter().all(|(_, h)| *h == at_middle), "{out}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Read-your-writes through a follower

/// A put through a follower, then at once a serializable get from that same follower, 300
/// times: the follower answers the put only once it has applied it, so the get sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reads_its_own_writes() {
    bounded(Duration::from_secs(45), async {
        let servers = Servers::start(3).await;
        let follower = servers.follower().await;
        let mut kv = servers.kv(follower);
        let mut stale = Vec::new();
        for n in 0..300 {
            let key = format!("ryw/{}", n % 7);
            let value = format!("value {n}");
            let put = kv
                .put(PutRequest {
                    key: key.clone().into(),
                    value: value.clone().into(),
                    ..PutRequest::default()
                })
                .await
                .unwrap_or_else(|e| panic!("put {n}: {e:?}"))
                .into_inner();
            let get = kv
                .range(RangeRequest {
                    key: key.clone().into(),
                    serializable: true,
                    ..RangeRequest::default()
                })
                .await
                .unwrap_or_else(|e| panic!("get {n}: {e:?}"))
                .into_inner();
            let seen = get
                .kvs
                .first()
                .map(|kv| (kv.value.clone(), kv.mod_revision));
            if seen != Some((value.clone().into_bytes(), revision(&put.header))) {
                stale.push((n, revision(&put.header), revision(&get.header), seen));
            }
        }
        assert!(
            stale.is_empty(),
            "{} of 300 serializable reads on the follower missed the write just acknowledged \
             there: (iteration, put revision, read revision, (value, mod_revision) read) {:?}",
            stale.len(),
            &stale[..stale.len().min(10)]
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Bad requests

/// Requests etcd refuses, refused with etcd's error code and text (or answered as etcd
/// answers them); the member goes on serving after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_etcds_answers() {
    bounded(Duration::from_secs(30), async {
        let servers = Servers::start(1).await;
        let mut kv = servers.kv(0);
        let mut lease = servers.lease(0);
        let start = servers.revision(0).await;

        // At most 128 requests per branch (etcd's --max-txn-ops default).
        let puts = |n: usize| {
            (0..n)
                .map(|i| put_op(&format!("many/{i:03}"), "v"))
                .collect()
        };
        let r = kv
            .txn(TxnRequest {
                compare: vec![],
                success: puts(128),
                failure: vec![],
            })
            .await;
        assert!(r.is_ok(), "a txn of 128 puts: {r:?}");
        for (what, txn) in [
            (
                "129 puts",
                TxnRequest {
                    compare: vec![],
                    success: puts(129),
                    failure: vec![],
                },
            ),
            (
                "129 failure requests",
                TxnRequest {
                    compare: vec![],
                    success: vec![],
                    failure: puts(129),
                },
            ),
        ] {
            assert_status(
                what,
                kv.txn(txn).await,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            );
            servers.still_serves(what).await;
        }
        assert_status(
            "a txn putting one key twice",
            kv.txn(TxnRequest {
                compare: vec![],
                success: vec![put_op("dup", "1"), put_op("dup", "2")],
                failure: vec![],
            })
            .await,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        );
        assert_eq!(servers.get(0, "dup").await, None);
        servers.still_serves("a duplicate key").await;

        // A watch whose range ends before its key: created and canceled at once.
        let responses = watch_responses(
            &servers,
            0,
            WatchCreateRequest {
                key: "b".into(),
                range_end: "a".into(),
                ..WatchCreateRequest::default()
            },
            Duration::from_secs(3),
            2,
        )
        .await;
        let summary: Vec<_> = responses
            .iter()
            .map(|r| (r.watch_id, r.created, r.canceled, r.cancel_reason.as_str()))
            .collect();
        assert_eq!(
            summary,
            [(-1, true, true, "mvcc: watcher range is empty")],
            "{responses:?}"
        );
        servers.still_serves("an empty watch range").await;

        // Leases: a TTL under the minimum (negative too) is raised to it (1 s with these
        // timings: 1.5 election timeouts, rounded up); an absurd one is refused.
        for ttl in [-5, 0] {
            let r = lease
                .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                .await
                .unwrap_or_else(|e| panic!("a grant of TTL {ttl}: {e:?}"))
                .into_inner();
            assert_eq!((r.ttl, r.error.as_str()), (1, ""), "TTL {ttl}: {r:?}");
            assert!(r.id > 0);
        }
        assert_status(
            "a TTL of 10^10 s",
            lease
                .lease_grant(LeaseGrantRequest {
                    ttl: 10_000_000_000,
                    id: 0,
                })
                .await,
            Code::OutOfRange,
            "etcdserver: too large lease TTL",
        );
        let mine = lease
            .lease_grant(LeaseGrantRequest {
                ttl: 60,
                id: 0x1234,
            })
            .await
            .expect("a grant with a chosen id")
            .into_inner();
        assert_eq!((mine.id, mine.ttl), (0x1234, 60));
        assert_status(
            "a grant of an id in use",
            lease
                .lease_grant(LeaseGrantRequest {
                    ttl: 60,
                    id: 0x1234,
                })
                .await,
            Code::FailedPrecondition,
            "etcdserver: lease already exists",
        );
        servers.still_serves("lease grants").await;

        let unknown = 0x7777_0000_i64;
        assert_status(
            "revoke of an unknown lease",
            lease.lease_revoke(LeaseRevokeRequest { id: unknown }).await,
            Code::NotFound,
            "etcdserver: requested lease not found",
        );
        // Time to live of an unknown lease: TTL -1, no error.
        let r = lease
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: unknown,
                keys: true,
            })
            .await
            .expect("time to live of an unknown lease")
            .into_inner();
        assert_eq!(
            (r.id, r.ttl, r.granted_ttl, r.keys.len()),
            (unknown, -1, 0, 0),
            "{r:?}"
        );
        // Keep-alive of an unknown lease: an answer with TTL 0 (the client library turns it
        // into "requested lease not found").
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(LeaseKeepAliveRequest { id: unknown })
            .await
            .unwrap();
        let mut stream = lease
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("a keep-alive stream")
            .into_inner();
        let r = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a keep-alive answer within 5 s")
            .expect("a keep-alive answer")
            .expect("a keep-alive answer");
        assert_eq!((r.id, r.ttl), (unknown, 0), "{r:?}");
        drop(tx);
        servers
            .still_serves("requests about an unknown lease")
            .await;

        // A put with an unknown lease, alone or in a txn.
        assert_status(
            "put with an unknown lease",
            kv.put(PutRequest {
                key: "leased".into(),
                value: "v".into(),
                lease: unknown,
                ..PutRequest::default()
            })
            .await,
            Code::NotFound,
            "etcdserver: requested lease not found",
        );
        let mut op = put_op("leased", "v");
        if let Some(request_op::Request::RequestPut(p)) = &mut op.request {
            p.lease = unknown;
        }
        assert_status(
            "a txn putting with an unknown lease",
            kv.txn(TxnRequest {
                compare: vec![],
                success: vec![put_op("other", "v"), op],
                failure: vec![],
            })
            .await,
            Code::NotFound,
            "etcdserver: requested lease not found",
        );
        assert_eq!(servers.get(0, "leased").await, None);
        assert_eq!(servers.get(0, "other").await, None);
        servers.still_serves("puts with an unknown lease").await;

        // Revisions that are not there.
        let now = servers.revision(0).await;
        assert_status(
            "range at a future revision",
            kv.range(RangeRequest {
                key: "k".into(),
                revision: now + 1,
                ..RangeRequest::default()
            })
            .await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
        assert_status(
            "compaction at a future revision",
            kv.compact(CompactionRequest {
                revision: now + 1,
                physical: false,
            })
            .await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
        kv.compact(CompactionRequest {
            revision: start + 1,
            physical: false,
        })
        .await
        .expect("a compaction");
        assert_status(
            "range at a compacted revision",
            kv.range(RangeRequest {
                key: "k".into(),
                revision: start,
                ..RangeRequest::default()
            })
            .await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        assert_status(
            "compaction at a compacted revision",
            kv.compact(CompactionRequest {
                revision: start,
                physical: false,
            })
            .await,
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        servers
            .still_serves("requests for revisions that are not there")
            .await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// More of Watch and Lease

/// Several watches on one gRPC stream: each is created with its own id (0, 1, 2 in order),
/// gets exactly the events of its range (with the previous version if asked, without
/// deletions if filtered), a transaction's events in one response; a canceled watch says so
/// and gets nothing more; a progress request is answered with the current revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_share_a_grpc_stream() {
    async fn next_watch(stream: &mut tonic::Streaming<WatchResponse>) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("a watch response within 5 s")
            .expect("a watch response")
            .expect("the stream open")
    }
    bounded(Duration::from_secs(30), async {
        let servers = Servers::start(1).await;
        let create = |c: WatchCreateRequest| WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(c)),
        };
        let creates = [
            WatchCreateRequest {
                key: "g/a".into(),
                ..WatchCreateRequest::default()
            },
            WatchCreateRequest {
                key: "g/".into(),
                range_end: prefix_end(b"g/"),
                prev_kv: true,
                filters: vec![
                    raftline_kv::proto::etcdserverpb::watch_create_request::FilterType::Nodelete
                        as i32,
                ],
                ..WatchCreateRequest::default()
            },
            WatchCreateRequest {
                key: "g/b".into(),
                range_end: "g/d".into(),
                ..WatchCreateRequest::default()
            },
        ];
        let start = servers.revision(0).await;
        // (The stream opens once the server answers, which it does to a first request.)
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut creates = creates.into_iter();
        tx.send(create(creates.next().unwrap())).await.unwrap();
        let mut stream = servers
            .watch(0)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("a watch stream")
            .into_inner();
        for (id, c) in std::iter::once(None).chain(creates.map(Some)).enumerate() {
            if let Some(c) = c {
                tx.send(create(c)).await.unwrap();
            }
            let r = next_watch(&mut stream).await;
            assert_eq!(
                (r.watch_id, r.created, r.canceled, r.events.len()),
                (id as i64, true, false, 0),
                "{r:?}"
            );
            assert_eq!(revision(&r.header), start);
        }

        let r = start;
        assert_eq!(servers.put(0, "g/a", "1").await, r + 1);
        servers.put(0, "g/b", "2").await;
        servers.put(0, "g/c", "3").await;
        servers
            .kv(0)
            .delete_range(DeleteRangeRequest {
                key: "g/a".into(),
                ..DeleteRangeRequest::default()
            })
            .await
            .unwrap();
        servers.put(0, "g/d", "4").await;
        servers
            .kv(0)
            .txn(TxnRequest {
                compare: vec![],
                success: vec![put_op("g/a", "5"), put_op("g/b", "6")],
                failure: vec![],
            })
            .await
            .unwrap();
        assert_eq!(servers.revision(0).await, r + 6);

        // (watch id, header revision, events as (type, key, value, previous value, revision))
        type Seen = (i64, i64, Vec<(i32, String, String, Option<String>, i64)>);
        let summary = |w: &WatchResponse| -> Seen {
            let events = w
                .events
                .iter()
                .map(|e| {
                    let kv = e.kv.as_ref().expect("an event's kv");
                    (
                        e.r#type,
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                        e.prev_kv
                            .as_ref()
                            .map(|p| String::from_utf8_lossy(&p.value).into_owned()),
                        kv.mod_revision,
                    )
                })
                .collect();
            (w.watch_id, revision(&w.header), events)
        };
        let ev = |t: i32, k: &str, v: &str, p: Option<&str>, rev: i64| {
            (t, k.to_string(), v.to_string(), p.map(str::to_string), rev)
        };
        let mut got: Vec<Seen> = Vec::new();
        // 3 + 5 + 3 responses.
        while got.len() < 11 {
            got.push(summary(&next_watch(&mut stream).await));
        }
        let of = |id: i64| -> Vec<Seen> { got.iter().filter(|s| s.0 == id).cloned().collect() };
        assert_eq!(
            of(0),
            vec![
                (0, r + 1, vec![ev(0, "g/a", "1", None, r + 1)]),
                (0, r + 4, vec![ev(1, "g/a", "", None, r + 4)]),
                (0, r + 6, vec![ev(0, "g/a", "5", None, r + 6)]),
            ],
            "watch 0 (g/a); all: {got:?}"
        );
        assert_eq!(
            of(1),
            vec![
                (1, r + 1, vec![ev(0, "g/a", "1", None, r + 1)]),
                (1, r + 2, vec![ev(0, "g/b", "2", None, r + 2)]),
                (1, r + 3, vec![ev(0, "g/c", "3", None, r + 3)]),
                (1, r + 5, vec![ev(0, "g/d", "4", None, r + 5)]),
                (
                    1,
                    r + 6,
                    vec![
                        ev(0, "g/a", "5", None, r + 6),
                        ev(0, "g/b", "6", Some("2"), r + 6)
                    ]
                ),
            ],
            "watch 1 (g/ with prev_kv, no deletes); all: {got:?}"
        );
        assert_eq!(
            of(2),
            vec![
                (2, r + 2, vec![ev(0, "g/b", "2", None, r + 2)]),
                (2, r + 3, vec![ev(0, "g/c", "3", None, r + 3)]),
                (2, r + 6, vec![ev(0, "g/b", "6", None, r + 6)]),
            ],
            "watch 2 ([g/b, g/d)); all: {got:?}"
        );

        // Cancel watch 0.
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CancelRequest(
                raftline_kv::proto::etcdserverpb::WatchCancelRequest { watch_id: 0 },
            )),
        })
        .await
        .unwrap();
        let c = next_watch(&mut stream).await;
        assert_eq!(
            (
                c.watch_id,
                c.created,
                c.canceled,
                c.cancel_reason.as_str(),
                c.events.len()
            ),
            (0, false, true, "", 0),
            "{c:?}"
        );
        servers.put(0, "g/a", "7").await;
        let w = summary(&next_watch(&mut stream).await);
        assert_eq!(w, (1, r + 7, vec![ev(0, "g/a", "7", Some("5"), r + 7)]));

        // Progress: the current revision, on no watch in particular.
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                raftline_kv::proto::etcdserverpb::WatchProgressRequest {},
            )),
        })
        .await
        .unwrap();
        let p = next_watch(&mut stream).await;
        assert_eq!(
            (
                p.watch_id,
                p.created,
                p.canceled,
                p.events.len(),
                revision(&p.header)
            ),
            (-1, false, false, 0, r + 7),
            "{p:?}"
        );
        // Nothing else arrives (watch 0 is gone).
        let more = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
        assert!(more.is_err(), "unexpected: {more:?}");
    })
    .await;
}

/// Leases live through a change of leader: a kept-alive lease stays, one left alone still
/// expires (the new leader expires it), and new grants work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_outlive_a_leader_change() {
    if !etcdctl_installed() {
        return;
    }
    bounded(Duration::from_secs(45), async {
        let mut servers = Servers::start(3).await;
        let leader = servers.leader().await;
        let a = (leader + 1) % 3;
        let b = (leader + 2) % 3;
        let lease_a = servers.lease(a);
        let grant = |ttl: i64| {
            let mut lease = lease_a.clone();
            async move {
                lease
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await
                    .expect("a grant")
                    .into_inner()
            }
        };
        let kept = grant(2).await;
        let left = grant(2).await;
        let mut kv = servers.kv(a);
        for (key, lease) in [("lc/kept", kept.id), ("lc/left", left.id)] {
            kv.put(PutRequest {
                key: key.into(),
                value: "v".into(),
                lease,
                ..PutRequest::default()
            })
            .await
            .expect("a put with a lease");
        }
        let mut keep_alive = spawn_etcdctl(
            &servers.endpoint(a),
            &["lease", "keep-alive", &format!("{:x}", kept.id)],
        );
        keep_alive
            .wait_stdout(Duration::from_secs(5), "a keep-alive", |o| {
                o.contains("TTL(2)")
            })
            .await;

        servers.kill(leader);
        let killed = Instant::now();
        let new_leader = servers.wait_leader(&[a, b]).await;
        eprintln!("new leader after {:?}", killed.elapsed());

        // The lease left alone expires under the new leader.
        loop {
            let r = servers
                .kv(b)
                .range(RangeRequest {
                    key: "lc/left".into(),
                    ..RangeRequest::default()
                })
                .await;
            match r {
                Ok(r) if r.get_ref().kvs.is_empty() => break,
                _ => {}
            }
            assert!(
                killed.elapsed() < Duration::from_secs(8),
                "lc/left (lease of 2 s) still there {:?} after the leader was killed",
                killed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "lc/left vanished {:?} after the leader was killed",
            killed.elapsed()
        );
        // The kept one stays (keep-alives reach the new leader), for more than its TTL.
        let wait = Duration::from_secs(5).saturating_sub(killed.elapsed());
        tokio::time::sleep(wait).await;
        for i in [a, b] {
            assert_eq!(
                servers.get(i, "lc/kept").await.as_deref(),
                Some("v"),
                "member {i}, {:?} after the leader was killed; keep-alive:\n{}{}",
                killed.elapsed(),
                keep_alive.stdout(),
                keep_alive.stderr()
            );
        }
        let r = servers
            .lease(new_leader)
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: kept.id,
                keys: true,
            })
            .await
            .expect("time to live")
            .into_inner();
        assert_eq!(
            (r.granted_ttl, r.keys.clone()),
            (2, vec![b"lc/kept".to_vec()]),
            "{r:?}"
        );
        assert!((0..=2).contains(&r.ttl), "{r:?}");
        let fresh = grant(5).await;
        assert_eq!(fresh.ttl, 5);
        keep_alive.kill();
    })
    .await;
}
