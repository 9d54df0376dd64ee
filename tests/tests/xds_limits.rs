//! A control plane that sends too much, or the same bad thing again and again: the agent
//! refuses it with a clear NACK, keeps serving what it has, and does not spend unbounded time,
//! memory or log lines on it.

use plumb_tests::agent::TestAgent;
use plumb_tests::client::roundtrip;
use plumb_tests::servers::{self, Behavior};
use plumb_tests::xds::{ads_bootstrap, eds_cluster, endpoints, tcp_listener, ControlPlane};
use std::time::Duration;

/// Issue 11, item 3: a response with more than 100,000 resources is NACKed whole, naming the
/// limit, and the configuration in force keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_too_many_resources_is_refused_whole() {
    let echo = servers::start(Behavior::Echo).await;
    let cp = ControlPlane::start().await;
    let front = servers::closed_port();
    cp.set(
        vec![eds_cluster("backend")],
        vec![tcp_listener("front", front, "backend")],
        vec![endpoints("backend", &[echo.addr])],
    );
    let agent = TestAgent::start(&ads_bootstrap(cp.addr, "GRPC")).await;
    agent
        .wait_stat("cluster.backend.membership_total", |v| v == 1)
        .await;
    let clusters: Vec<_> = (0..100_001)
        .map(|i| eds_cluster(&format!("c{i}")))
        .collect();
    cp.set(
        clusters,
        vec![tcp_listener("front", front, "backend")],
        vec![endpoints("backend", &[echo.addr])],
    );
    plumb_tests::wait_until("the NACK", Duration::from_secs(30), || async {
        cp.nacks().iter().any(|r| {
            r.error.as_deref().is_some_and(|e| {
                e.contains("carries 100001 resources, more than the limit of 100000")
            })
        })
    })
    .await;
    assert!(agent.stat("cluster_manager.cds.update_rejected") >= 1);
    assert_eq!(agent.stat("cluster_manager.active_clusters"), 2);
    assert_eq!(roundtrip(front, b"still").await.unwrap(), b"still");
}
