//! Outlier detection (issue 13, item 4) through real sockets: a host answering 5xx is ejected
//! after `consecutive_5xx` and gets no more requests; an L4 host refusing connections is
//! ejected after its connect failures and comes back after the ejection time.

use plumb_tests::agent::{
    any_host, bootstrap, http_listener, static_cluster, tcp_listener, TestAgent,
};
use plumb_tests::http_client::{request, H1};
use plumb_tests::http_upstream;
use plumb_tests::servers::{self, Behavior};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn with_outlier(mut cluster: Value, outlier: Value) -> Value {
    cluster["outlier_detection"] = outlier;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_answering_5xx_is_ejected_after_consecutive_5xx() {
    let (a, b) = (
        http_upstream::start("a").await,
        http_upstream::start("b").await,
    );
    let (bad, _) = servers::raw_http("bad", 503, Duration::ZERO).await;
    let cluster = with_outlier(
        static_cluster("up", &[a.addr, b.addr, bad]),
        json!({"consecutive_5xx": 3, "base_ejection_time": "30s", "max_ejection_percent": 50}),
    );
    let agent = TestAgent::start(&bootstrap(
        vec![http_listener(
            "in",
            any_host(json!([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}])),
        )],
        vec![cluster],
    ))
    .await;
    let mut c = H1::connect(agent.listener("in")).await;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let r = c.send(request("GET", "x", "/", &[], b"")).await.unwrap();
        statuses.push(r.status);
    }
    // Round robin over three hosts: the bad one answered three times, then was ejected.
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        3,
        "{statuses:?}"
    );
    assert!(statuses[15..].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(a.requests() + b.requests(), 27);
    let s = |n: &str| agent.stat(&format!("cluster.up.outlier_detection.{n}"));
    assert_eq!(s("ejections_enforced_consecutive_5xx"), 1);
    assert_eq!(s("ejections_enforced_total"), 1);
    assert_eq!(s("ejections_active"), 1);
    let clusters = plumb_tests::client::get(agent.admin(), "/clusters")
        .await
        .body;
    assert!(
        clusters.contains(&format!("up::{bad}::health_flags::/failed_outlier_check")),
        "{clusters}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l4_host_refusing_connections_is_ejected_and_comes_back() {
    let (e1, e2) = (
        servers::start(Behavior::Echo).await,
        servers::start(Behavior::Echo).await,
    );
    let refused = servers::closed_port();
    let cluster = with_outlier(
        static_cluster("echo", &[e1.addr, e2.addr, refused]),
        json!({"consecutive_5xx": 2, "interval": "0.1s", "base_ejection_time": "0.5s",
               "max_ejection_percent": 50}),
    );
    let agent = TestAgent::start(&bootstrap(vec![tcp_listener("in", "echo")], vec![cluster])).await;
    let addr = agent.listener("in");
    let roundtrip = || async move {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            return false;
        };
        if s.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && &buf == b"ping"
    };
    let mut failed = 0;
    for _ in 0..12 {
        if !roundtrip().await {
            failed += 1;
        }
    }
    // Two connect failures eject the host; the other connections all went through.
    assert_eq!(failed, 2);
    let s = |n: &str| agent.stat(&format!("cluster.echo.outlier_detection.{n}"));
    assert_eq!(s("ejections_enforced_consecutive_5xx"), 1);
    assert_eq!(agent.stat("cluster.echo.upstream_cx_connect_fail"), 2);
    // After the ejection time it is picked again (and, still refusing, ejected again).
    agent
        .wait_stat("cluster.echo.outlier_detection.ejections_active", |v| {
            v == 0
        })
        .await;
    let mut failed_again = 0;
    for _ in 0..12 {
        if !roundtrip().await {
            failed_again += 1;
        }
    }
    assert_eq!(failed_again, 2);
    assert_eq!(s("ejections_enforced_total"), 2);
}
