//! Whether this member is healthy, as etcd judges it: it knows a leader.
//!
//! Reported two ways: gRPC's health service, `grpc.health.v1.Health` ([`report_health`]
//! keeps tonic-health's reporter in step: `SERVING` for the server as a whole, `""`, and for
//! each of etcd's services in [`HEALTH_SERVICES`] while a leader is known, `NOT_SERVING`
//! otherwise), and `GET /health` on the metrics listener ([`crate::metrics`], answered with
//! [`health_json`]).

use std::time::Duration;

use raftline_core::driver::{NodeHandle, NodeStatus};
use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::proto::etcdserverpb::{
    auth_server, cluster_server, kv_server, lease_server, maintenance_server, watch_server,
};

/// The services whose health is reported: the server as a whole (`""`) and etcd's.
pub const HEALTH_SERVICES: [&str; 7] = [
    "",
    kv_server::SERVICE_NAME,
    watch_server::SERVICE_NAME,
    lease_server::SERVICE_NAME,
    cluster_server::SERVICE_NAME,
    maintenance_server::SERVICE_NAME,
    auth_server::SERVICE_NAME,
];

/// etcd's reason for an unhealthy member that knows no leader.
pub const NO_LEADER_REASON: &str = "RAFT NO LEADER";

/// Whether a member in this state is healthy: it knows a leader.
pub fn is_healthy(status: &NodeStatus) -> bool {
    status.leader.is_some()
}

/// The body of etcd's `/health` answer: `{"health":"true","reason":""}`, or
/// `{"health":"false","reason":"RAFT NO LEADER"}`.
pub fn health_json(healthy: bool) -> String {
    let (health, reason) = if healthy {
        ("true", "")
    } else {
        ("false", NO_LEADER_REASON)
    };
    format!("{{\"health\":\"{health}\",\"reason\":\"{reason}\"}}")
}

/// Sets every service of [`HEALTH_SERVICES`] to `SERVING` or `NOT_SERVING`.
pub async fn set_health(reporter: &HealthReporter, healthy: bool) {
    let status = if healthy {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in HEALTH_SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Keeps the reporter in step with the node, looking every `every`, until `stopped` turns
/// true.
pub async fn report_health<R: Send + 'static>(
    node: NodeHandle<R>,
    reporter: HealthReporter,
    every: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut reported = None;
    loop {
        let healthy = is_healthy(&node.status());
        if reported != Some(healthy) {
            tracing::debug!(healthy, "health changed");
            set_health(&reporter, healthy).await;
            reported = Some(healthy);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftline_proto::NodeId;

    #[test]
    fn healthy_only_with_a_leader() {
        let mut status = NodeStatus::default();
        assert!(!is_healthy(&status));
        status.leader = Some(NodeId(3));
        assert!(is_healthy(&status));
        assert_eq!(health_json(true), r#"{"health":"true","reason":""}"#);
        assert_eq!(
            health_json(false),
            r#"{"health":"false","reason":"RAFT NO LEADER"}"#
        );
    }
}
