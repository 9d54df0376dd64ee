//! Graceful host removal (issue 13, item 7) through real sockets: a host EDS removes gets no
//! new requests, its in-flight requests finish and then its pooled connections close, while
//! the remaining host keeps its pool; an established TCP proxy connection to a removed host
//! keeps flowing; with `close_connections_on_host_health_failure`, a host failing its health
//! check has its TCP proxy connections closed.

use plumb_tests::agent::{bootstrap, static_cluster, tcp_listener, TestAgent};
use plumb_tests::http_client::{request, H1};
use plumb_tests::http_upstream;
use plumb_tests::servers::{self, Behavior};
use plumb_tests::xds::{
    ads_bootstrap, eds_cluster, endpoints, http_rds_listener, route_to, tcp_listener as xds_tcp,
    ControlPlane,
};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn roundtrip(s: &mut TcpStream, data: &[u8]) -> bool {
    if s.write_all(data).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; data.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && buf == data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_host_finishes_its_requests_then_its_pool_closes() {
    let (a, b) = (
        http_upstream::start("a").await,
        http_upstream::start("b").await,
    );
    let cp = ControlPlane::start().await;
    let front = servers::closed_port();
    cp.set(
        vec![eds_cluster("backend")],
        vec![http_rds_listener("in", front, "rc")],
        vec![endpoints("backend", &[a.addr, b.addr])],
    );
    cp.set_routes(vec![route_to("rc", "backend", "t")]);
    let agent = TestAgent::start(&ads_bootstrap(cp.addr, "GRPC")).await;
    plumb_tests::wait_until("endpoints", Duration::from_secs(10), || async {
        agent.stat("cluster.backend.membership_total") == 2
    })
    .await;
    plumb_tests::wait_until("the listener", Duration::from_secs(10), || async {
        TcpStream::connect(front).await.is_ok()
    })
    .await;
    // Slow requests on several connections: both hosts get some (round robin).
    let mut slow = tokio::task::JoinSet::new();
    for _ in 0..6 {
        slow.spawn(async move {
            let mut c = H1::connect(front).await;
            c.send(request("GET", "x", "/", &[("x-delay-ms", "700")], b""))
                .await
                .map(|r| r.status)
        });
    }
    plumb_tests::wait_until("both hosts busy", Duration::from_secs(10), || async {
        a.requests() >= 1 && b.requests() >= 1 && a.requests() + b.requests() == 6
    })
    .await;
    let a_before = a.requests();
    // EDS drops a while its requests are in flight.
    cp.set_endpoints(vec![endpoints("backend", &[b.addr])]);
    plumb_tests::wait_until("a removed", Duration::from_secs(10), || async {
        agent.stat("cluster.backend.membership_total") == 1
    })
    .await;
    while let Some(r) = slow.join_next().await {
        assert_eq!(r.unwrap().unwrap(), 200, "an in-flight request finishes");
    }
    // Then a's connections close (not taken back into the pool); b keeps its pooled ones.
    plumb_tests::wait_until(
        "a's connections closed",
        Duration::from_secs(10),
        || async { a.open() == 0 },
    )
    .await;
    assert!(b.open() >= 1, "b's idle connections stay pooled");
    // New requests only reach b.
    let mut c = H1::connect(front).await;
    for _ in 0..10 {
        let r = c.send(request("GET", "x", "/", &[], b"")).await.unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(a.requests(), a_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_established_tcp_connection_to_a_removed_host_keeps_flowing() {
    let echo = servers::start(Behavior::Echo).await;
    let other = servers::start(Behavior::Echo).await;
    let cp = ControlPlane::start().await;
    let front = servers::closed_port();
    cp.set(
        vec![eds_cluster("backend")],
        vec![xds_tcp("front", front, "backend")],
        vec![endpoints("backend", &[echo.addr])],
    );
    let agent = TestAgent::start(&ads_bootstrap(cp.addr, "GRPC")).await;
    plumb_tests::wait_until("endpoints", Duration::from_secs(10), || async {
        agent.stat("cluster.backend.membership_total") == 1
    })
    .await;
    let mut s = loop {
        if let Ok(s) = TcpStream::connect(front).await {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(roundtrip(&mut s, b"before").await);
    cp.set_endpoints(vec![endpoints("backend", &[other.addr])]);
    plumb_tests::wait_until("the endpoint replaced", Duration::from_secs(10), || async {
        agent.stat("cluster.backend.membership_change") >= 2
    })
    .await;
    assert!(roundtrip(&mut s, b"after the removal").await);
    assert_eq!(echo.accepted(), 1);
}

/// An echo server whose health (a TCP check sending "ping", expecting "pong") follows
/// `healthy`; every other connection echoes.
async fn switchable_echo(healthy: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let healthy = healthy.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if &buf[..n] == b"ping" {
                        if healthy.load(Ordering::SeqCst) {
                            let _ = s.write_all(b"pong").await;
                        }
                        continue;
                    }
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_health_check_closes_tcp_connections_when_asked() {
    for close in [true, false] {
        let healthy = Arc::new(AtomicBool::new(true));
        let host = switchable_echo(healthy.clone()).await;
        let mut cluster = static_cluster("c", &[host]);
        cluster["close_connections_on_host_health_failure"] = json!(close);
        cluster["health_checks"] = json!([{"timeout": "0.2s", "interval": "0.05s",
            "no_traffic_interval": "0.05s", "unhealthy_threshold": 1, "healthy_threshold": 1,
            "tcp_health_check": {"send": {"text": "70696e67"}, "receive": [{"text": "706f6e67"}]}}]);
        let agent =
            TestAgent::start(&bootstrap(vec![tcp_listener("in", "c")], vec![cluster])).await;
        agent
            .wait_stat("cluster.c.health_check.healthy", |v| v == 1)
            .await;
        let mut s = TcpStream::connect(agent.listener("in")).await.unwrap();
        assert!(roundtrip(&mut s, b"hello").await);
        healthy.store(false, Ordering::SeqCst);
        agent
            .wait_stat("cluster.c.health_check.healthy", |v| v == 0)
            .await;
        if close {
            // Closed by Plumb: the read ends.
            let mut buf = [0u8; 16];
            let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
        } else {
            assert!(roundtrip(&mut s, b"still here").await);
        }
    }
}
