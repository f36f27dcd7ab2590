//! etcd compatibility at the edges of the API:
//!
//! - etcdctl with endpoints written as URLs (`--endpoints=http://127.0.0.1:PORT`, what
//!   `--cluster` uses too): every command works, Maintenance calls included (etcdctl dials
//!   those with the URL as the HTTP/2 `:authority`, which raft-kv's HTTP/2 server would
//!   refuse unless rewritten);
//! - a path nobody serves, and the `Auth` service, answer `Unimplemented` naming what is not
//!   served;
//! - health: gRPC's `grpc.health.v1.Health` and `GET /health` on the metrics listener say
//!   SERVING / healthy while a leader is known, NOT_SERVING / 503 on a member left alone;
//!   `GET /version` answers as etcd's.
//!
//! The harness is in `common/mod.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{bounded, call, etcdctl, etcdctl_installed, etcdctl_ok, table, Cluster, Options};
use raftline_kv::proto::etcdserverpb::MemberListRequest;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long a member left alone may take to notice that it has no leader (a few election
/// timeouts).
const NO_LEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one plain HTTP request to the metrics listener may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a member's health may lag its knowledge of a leader (it is looked at every tick).
const HEALTH_LAG: Duration = Duration::from_secs(2);
/// How long members may take to publish their client URLs after the cluster has a leader.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until every member's record lists its client URLs (what `--cluster` reads).
async fn wait_published(cluster: &Cluster) {
    let deadline = Instant::now() + PUBLISH_TIMEOUT;
    loop {
        let list = cluster
            .cluster(0)
            .member_list(MemberListRequest::default())
            .await
            .expect("member list")
            .into_inner();
        if list.members.iter().all(|m| !m.client_ur_ls.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "members unpublished: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ENDPOINT and IS LEADER columns of `etcdctl endpoint status -w table`, sorted.
fn endpoint_rows(status: &str) -> Vec<(String, String)> {
    let (header, rows) = table(status);
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no {name} column in\n{status}"))
    };
    let (endpoint, leader) = (column("ENDPOINT"), column("IS LEADER"));
    let mut rows: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r[endpoint].clone(), r[leader].clone()))
        .collect();
    rows.sort();
    rows
}

/// etcdctl with every endpoint written as a URL: KV, Cluster and Maintenance calls
/// (`endpoint status`, with `--cluster` too, and `move-leader`) all work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_with_url_endpoints() {
    if !etcdctl_installed() {
        return;
    }
    bounded(Duration::from_secs(60), async {
        let cluster = Cluster::start(3).await;
        wait_published(&cluster).await;
        let urls: Vec<String> = cluster.members.iter().map(|m| m.client_url()).collect();
        let e = urls.join(",");
        assert_eq!(etcdctl_ok(&e, &["put", "url", "endpoint"]).await, "OK\n");
        assert_eq!(etcdctl_ok(&e, &["get", "url"]).await, "url\nendpoint\n");

        // One row per endpoint, each as given, one leader.
        for args in [
            &["endpoint", "status", "-w", "table"][..],
            &["endpoint", "status", "--cluster", "-w", "table"],
        ] {
            let first = &urls[0];
            let endpoints = if args.contains(&"--cluster") {
                first
            } else {
                &e
            };
            let status = etcdctl_ok(endpoints, args).await;
            let rows = endpoint_rows(&status);
            let listed: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
            let mut expected: Vec<&str> = urls.iter().map(String::as_str).collect();
            expected.sort_unstable();
            assert_eq!(listed, expected, "{args:?}:\n{status}");
            let leaders = rows.iter().filter(|r| r.1 == "true").count();
            assert_eq!(leaders, 1, "{args:?}:\n{status}");
        }

        let members = etcdctl_ok(&e, &["member", "list"]).await;
        assert_eq!(members.lines().count(), 3, "member list:\n{members}");

        // move-leader asks each endpoint for its status, then the leader to move.
        let leader = cluster.wait_leader(&[0, 1, 2]).await;
        let target = (leader + 1) % 3;
        let target_id = cluster
            .status(target)
            .await
            .unwrap()
            .header
            .unwrap()
            .member_id;
        let moved = etcdctl_ok(&e, &["move-leader", &format!("{target_id:x}")]).await;
        assert!(
            moved.contains(&format!("to {target_id:x}")),
            "move-leader:\n{moved}"
        );
        assert_eq!(cluster.wait_leader(&[0, 1, 2]).await, target);
    })
    .await;
}

/// Unknown services and methods, and every method of `Auth`, answer `Unimplemented` with a
/// message naming what is not served; etcdctl shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unserved_paths_and_auth_say_what_is_not_served() {
    bounded(Duration::from_secs(30), async {
        let cluster = Cluster::start(1).await;
        let port = cluster.members[0].client_port;
        for (path, message) in [
            (
                "/etcdserverpb.Foo/Bar",
                "raft-kv does not serve etcdserverpb.Foo/Bar",
            ),
            (
                "/v3lockpb.Lock/Lock",
                "raft-kv does not serve v3lockpb.Lock/Lock",
            ),
            (
                "/etcdserverpb.KV/Foo",
                "raft-kv does not serve etcdserverpb.KV/Foo",
            ),
            (
                "/etcdserverpb.Auth/UserAdd",
                "raft-kv does not serve Auth.UserAdd",
            ),
            (
                "/etcdserverpb.Auth/AuthEnable",
                "raft-kv does not serve Auth.AuthEnable",
            ),
        ] {
            match call(port, path).await {
                Err(s) => assert_eq!((s.code(), s.message()), (Code::Unimplemented, message)),
                Ok(r) => panic!("{path} answered {r:?}"),
            }
        }
        if !etcdctl_installed() {
            return;
        }
        let e = cluster.members[0].endpoint();
        for (args, method) in [
            (&["auth", "enable"][..], "Auth.AuthEnable"),
            (
                &["user", "add", "x", "--new-user-password=pw"],
                "Auth.UserAdd",
            ),
        ] {
            let done = etcdctl(&e, args).await;
            assert!(!done.status.success(), "{args:?} succeeded");
            let expected = format!("code = Unimplemented desc = raft-kv does not serve {method}");
            assert!(
                done.stderr.contains(&expected),
                "{args:?}:\n{}",
                done.stderr
            );
        }
    })
    .await;
}

/// `GET path` on a local port: the status code and the body.
async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .expect("an answer in time")
        .expect("an HTTP exchange");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_string())
}

/// Waits until the gRPC health of `service` on member `i` is `wanted`, for at most `limit`.
async fn wait_health(
    cluster: &Cluster,
    i: usize,
    service: &str,
    wanted: ServingStatus,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let status = grpc_health(cluster, i, service).await;
        if status == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {i}, service {service:?}: still {status:?} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// gRPC health of `service` on member `i`.
async fn grpc_health(cluster: &Cluster, i: usize, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(common::channel(cluster.members[i].client_port));
    let answer = client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("Health.Check")
        .into_inner();
    ServingStatus::try_from(answer.status).expect("a known status")
}

/// The services a member reports the health of.
const SERVICES: [&str; 4] = [
    "",
    "etcdserverpb.KV",
    "etcdserverpb.Maintenance",
    "etcdserverpb.Cluster",
];

/// With a leader every member is healthy; a member whose two peers are killed turns
/// unhealthy (gRPC NOT_SERVING, `/health` 503 "RAFT NO LEADER") once it knows no leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_whether_a_leader_is_known() {
    bounded(Duration::from_secs(40), async {
        let options = Options {
            metrics: true,
            ..Options::default()
        };
        let mut cluster = Cluster::start_with(3, options).await;
        for i in 0..3 {
            for service in SERVICES {
                wait_health(&cluster, i, service, ServingStatus::Serving, HEALTH_LAG).await;
            }
            let port = cluster.members[i].metrics_port.expect("a metrics port");
            let health = http_get(port, "/health").await;
            assert_eq!(
                health,
                (200, r#"{"health":"true","reason":""}"#.to_string())
            );
            let version = http_get(port, "/version").await;
            let expected = r#"{"etcdserver":"3.4.0","etcdcluster":"3.4.0"}"#;
            assert_eq!(version, (200, expected.to_string()));
        }

        // Member 0 left alone: its leader (if another) is gone, and no election can succeed.
        cluster.kill(1);
        cluster.kill(2);
        let port = cluster.members[0].metrics_port.expect("a metrics port");
        wait_health(
            &cluster,
            0,
            "",
            ServingStatus::NotServing,
            NO_LEADER_TIMEOUT,
        )
        .await;
        for service in SERVICES {
            assert_eq!(
                grpc_health(&cluster, 0, service).await,
                ServingStatus::NotServing
            );
        }
        let unhealthy = r#"{"health":"false","reason":"RAFT NO LEADER"}"#;
        assert_eq!(
            http_get(port, "/health").await,
            (503, unhealthy.to_string())
        );
        let status = cluster.status(0).await.expect("Maintenance.Status");
        assert_eq!(status.leader, 0, "NOT_SERVING while a leader is known");
    })
    .await;
}
