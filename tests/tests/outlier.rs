//! Outlier detection (issue 13, item 4) through real sockets: a host answering 5xx is ejected
//! after `consecutive_5xx` and gets no more requests; a slow failing host among ten is
//! ejected by the success-rate detector; an L4 host refusing connections is ejected after its
//! connect failures and comes back after the ejection time.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_rate_ejects_one_slow_failing_host_among_ten() {
    let mut good = Vec::new();
    for _ in 0..9 {
        good.push(http_upstream::start("good").await);
    }
    let (bad, bad_count) = servers::raw_http("bad", 500, Duration::from_millis(5)).await;
    let mut addrs: Vec<_> = good.iter().map(|u| u.addr).collect();
    addrs.push(bad);
    // The consecutive detectors are out of the way: only the success rate can eject.
    let cluster = with_outlier(
        static_cluster("up", &addrs),
        json!({"interval": "2s", "success_rate_request_volume": 5, "consecutive_5xx": 100000,
               "consecutive_gateway_failure": 100000, "base_ejection_time": "60s"}),
    );
    let agent = TestAgent::start(&bootstrap(
        vec![http_listener(
            "in",
            any_host(json!([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}])),
        )],
        vec![cluster],
    ))
    .await;
    let ejected = "cluster.up.outlier_detection.ejections_enforced_success_rate";
    let mut c = H1::connect(agent.listener("in")).await;
    // Rounds of 60 requests (six per host) until an interval has seen them all: bounded.
    for _ in 0..40 {
        if agent.stat(ejected) > 0 {
            break;
        }
        for _ in 0..60 {
            c.send(request("GET", "x", "/", &[], b"")).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.wait_stat(ejected, |v| v == 1).await;
    // The interval that ejected it measured every host: its figures stay until the next
    // one, two seconds later.
    let clusters = plumb_tests::client::get(agent.admin(), "/clusters")
        .await
        .body;
    assert!(
        clusters.contains(&format!("up::{bad}::health_flags::/failed_outlier_check")),
        "{clusters}"
    );
    assert!(
        clusters.contains(&format!("up::{bad}::success_rate::0\n")),
        "{clusters}"
    );
    assert!(
        clusters.contains(&format!("up::{}::success_rate::100\n", good[0].addr)),
        "{clusters}"
    );
    // Nine at 100 %, one at 0 %: mean 90, threshold 90 - 1.9 × 30 = 33.
    assert!(
        clusters.contains("up::outlier::success_rate_average::90\n"),
        "{clusters}"
    );
    assert!(
        clusters.contains("up::outlier::success_rate_ejection_threshold::33"),
        "{clusters}"
    );
    assert_eq!(
        agent.stat("cluster.up.outlier_detection.ejections_enforced_consecutive_5xx"),
        0
    );
    // Ejected: no more requests reach it.
    let before = bad_count.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..50 {
        let r = c.send(request("GET", "x", "/", &[], b"")).await.unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(bad_count.load(std::sync::atomic::Ordering::Relaxed), before);
}
