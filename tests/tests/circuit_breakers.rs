//! Circuit breakers (issue 13, item 5) through real sockets: `max_requests` and
//! `max_pending_requests` refuse at once with 503 UO and `x-envoy-overloaded`, `max_connections`
//! makes HTTP requests wait for a pooled connection and closes L4 connections at once,
//! `max_retries` stops retries; gauges and overflow counters as Envoy's; `/clusters` prints the
//! thresholds.

use plumb_tests::agent::{
    any_host, bootstrap, http_listener, static_cluster, tcp_listener, TestAgent,
};
use plumb_tests::http_client::{request, H1};
use plumb_tests::http_upstream;
use plumb_tests::servers::{self, Behavior};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn with_breakers(mut cluster: Value, thresholds: Value) -> Value {
    cluster["circuit_breakers"] = json!({"thresholds": [thresholds]});
    cluster
}

async fn http_agent(cluster: Value, route: Value) -> (TestAgent, std::net::SocketAddr) {
    let agent = TestAgent::start(&bootstrap(
        vec![http_listener("in", any_host(json!([route])))],
        vec![cluster],
    ))
    .await;
    let addr = agent.listener("in");
    (agent, addr)
}

/// Sends a slow request (the upstream answers after `ms`) on a connection of its own.
fn slow(addr: std::net::SocketAddr, ms: u64) -> tokio::task::JoinHandle<(u16, Option<String>)> {
    tokio::spawn(async move {
        let mut c = H1::connect(addr).await;
        let delay = ms.to_string();
        let r = c
            .send(request("GET", "x", "/", &[("x-delay-ms", &delay)], b""))
            .await
            .unwrap();
        (r.status, r.header("x-envoy-overloaded").map(str::to_string))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_refuses_at_once_and_recovers() {
    let up = http_upstream::start("up").await;
    let cluster = with_breakers(
        static_cluster("up", &[up.addr]),
        json!({"max_requests": 2, "track_remaining": true}),
    );
    let (agent, addr) = http_agent(
        cluster,
        json!({"match": {"prefix": "/"}, "route": {"cluster": "up"}}),
    )
    .await;
    let g = |n: &str| agent.stat(&format!("cluster.up.circuit_breakers.default.{n}"));
    assert_eq!((g("rq_open"), g("remaining_rq")), (0, 2));
    // Two slow requests take both slots...
    let held = [slow(addr, 2_000), slow(addr, 2_000)];
    plumb_tests::wait_until(
        "two requests at the upstream",
        Duration::from_secs(5),
        || async { up.requests() == 2 },
    )
    .await;
    assert_eq!((g("rq_open"), g("remaining_rq")), (1, 0));
    // ...so the next ones are refused without waiting for them (they hold 2 s).
    for _ in 0..4 {
        let (status, overloaded) = slow(addr, 0).await.unwrap();
        assert_eq!((status, overloaded.as_deref()), (503, Some("true")));
    }
    assert_eq!(
        up.requests(),
        2,
        "refused requests never reach the upstream"
    );
    assert_eq!(agent.stat("cluster.up.upstream_rq_pending_overflow"), 4);
    assert_eq!(agent.stat("cluster.up.upstream_rq_503"), 4);
    for h in held {
        assert_eq!(h.await.unwrap().0, 200);
    }
    // The slots are back: requests pass again.
    agent
        .wait_stat("cluster.up.circuit_breakers.default.remaining_rq", |v| {
            v == 2
        })
        .await;
    assert_eq!(g("rq_open"), 0);
    assert_eq!(slow(addr, 0).await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_makes_requests_wait_and_max_pending_refuses() {
    let up = http_upstream::start("up").await;
    let cluster = with_breakers(
        static_cluster("up", &[up.addr]),
        json!({"max_connections": 1, "max_pending_requests": 1}),
    );
    let (agent, addr) = http_agent(
        cluster,
        json!({"match": {"prefix": "/"}, "route": {"cluster": "up"}}),
    )
    .await;
    let first = slow(addr, 500);
    plumb_tests::wait_until(
        "the first request at the upstream",
        Duration::from_secs(5),
        || async { up.requests() == 1 },
    )
    .await;
    // The second needs a connection it may not open: it waits (pending)...
    let second = slow(addr, 0);
    agent
        .wait_stat("cluster.up.upstream_rq_pending_active", |v| v == 1)
        .await;
    assert_eq!(agent.stat("cluster.up.upstream_cx_overflow"), 1);
    assert_eq!(agent.stat("cluster.up.circuit_breakers.default.cx_open"), 1);
    assert_eq!(
        agent.stat("cluster.up.circuit_breakers.default.rq_pending_open"),
        1
    );
    // ...and a third finds the pending queue full: refused at once.
    let (status, overloaded) = slow(addr, 0).await.unwrap();
    assert_eq!((status, overloaded.as_deref()), (503, Some("true")));
    assert_eq!(agent.stat("cluster.up.upstream_rq_pending_overflow"), 1);
    // The waiting request goes on the first one's connection once it is idle.
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(second.await.unwrap().0, 200);
    assert_eq!(up.connections(), 1);
    assert_eq!(agent.stat("cluster.up.upstream_rq_pending_total"), 2);
    assert_eq!(agent.stat("cluster.up.upstream_rq_pending_active"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_stops_retries_and_counts_the_overflow() {
    let up = http_upstream::start("up").await;
    let cluster = with_breakers(static_cluster("up", &[up.addr]), json!({"max_retries": 0}));
    let (agent, addr) = http_agent(
        cluster,
        json!({"match": {"prefix": "/"}, "route": {"cluster": "up", "retry_policy": {
            "retry_on": "5xx", "num_retries": 3}}}),
    )
    .await;
    let mut c = H1::connect(addr).await;
    let r = c
        .send(request("GET", "x", "/", &[("x-status", "503")], b""))
        .await
        .unwrap();
    // The upstream's own answer comes back, not retried.
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-envoy-overloaded"), None);
    assert_eq!(up.requests(), 1);
    assert_eq!(agent.stat("cluster.up.upstream_rq_retry_overflow"), 1);
    assert_eq!(agent.stat("cluster.up.upstream_rq_retry"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_route_uses_the_high_thresholds() {
    let up = http_upstream::start("up").await;
    let mut cluster = static_cluster("up", &[up.addr]);
    cluster["circuit_breakers"] = json!({"thresholds": [
        {"priority": "DEFAULT", "max_requests": 1},
        {"priority": "HIGH", "max_requests": 5}]});
    let agent = TestAgent::start(&bootstrap(
        vec![http_listener(
            "in",
            any_host(json!([
                {"match": {"prefix": "/high"}, "route": {"cluster": "up", "priority": "HIGH"}},
                {"match": {"prefix": "/"}, "route": {"cluster": "up"}}])),
        )],
        vec![cluster],
    ))
    .await;
    let addr = agent.listener("in");
    let held = slow(addr, 1_000);
    plumb_tests::wait_until("the held request", Duration::from_secs(5), || async {
        up.requests() == 1
    })
    .await;
    assert_eq!(slow(addr, 0).await.unwrap().0, 503);
    let mut c = H1::connect(addr).await;
    let r = c
        .send(request("GET", "x", "/high", &[], b""))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(held.await.unwrap().0, 200);
    // /clusters prints both sets of thresholds.
    let clusters = plumb_tests::client::get(agent.admin(), "/clusters")
        .await
        .body;
    assert!(
        clusters.contains("up::default_priority::max_requests::1"),
        "{clusters}"
    );
    assert!(
        clusters.contains("up::high_priority::max_requests::5"),
        "{clusters}"
    );
    assert!(
        clusters.contains("up::high_priority::max_retries::3"),
        "{clusters}"
    );
    assert!(clusters.contains("up::added_via_api::false"), "{clusters}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l4_connection_beyond_max_connections_is_closed_at_once() {
    let echo = servers::start(Behavior::Echo).await;
    let cluster = with_breakers(
        static_cluster("echo", &[echo.addr]),
        json!({"max_connections": 1}),
    );
    let agent = TestAgent::start(&bootstrap(vec![tcp_listener("in", "echo")], vec![cluster])).await;
    let addr = agent.listener("in");
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    first.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"one");
    // The second connection is accepted, then closed without reaching the upstream.
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = second.write_all(b"two").await;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut rest))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(echo.accepted(), 1);
    assert_eq!(agent.stat("cluster.echo.upstream_cx_overflow"), 1);
    // Once the first closes, its slot is free again.
    drop(first);
    agent
        .wait_stat("cluster.echo.circuit_breakers.default.cx_open", |v| v == 0)
        .await;
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    third.write_all(b"three").await.unwrap();
    let mut buf = [0u8; 5];
    third.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"three");
}

/// `per_host_thresholds` `max_connections`: each host takes at most that many connections;
/// with two hosts and a limit of one, a third connection is closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_host_max_connections_caps_each_host() {
    let (a, b) = (
        servers::start(Behavior::Echo).await,
        servers::start(Behavior::Echo).await,
    );
    let mut cluster = static_cluster("echo", &[a.addr, b.addr]);
    cluster["circuit_breakers"] = json!({"per_host_thresholds": [{"max_connections": 1}]});
    let agent = TestAgent::start(&bootstrap(vec![tcp_listener("in", "echo")], vec![cluster])).await;
    let addr = agent.listener("in");
    let echo = |data: &'static [u8]| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(data).await;
        let mut buf = vec![0u8; data.len()];
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && buf == data;
        (s, ok)
    };
    // Picks alternate or not; keep connecting until both hosts hold one (bounded).
    let mut held = Vec::new();
    for _ in 0..10 {
        let (s, ok) = echo(b"x").await;
        if ok {
            held.push(s);
        }
        if held.len() == 2 {
            break;
        }
    }
    assert_eq!(held.len(), 2);
    assert_eq!((a.accepted(), b.accepted()), (1, 1));
    // Both hosts full: the next connection is closed at once, whichever host it picks.
    let (_s, ok) = echo(b"y").await;
    assert!(!ok);
    assert_eq!((a.accepted(), b.accepted()), (1, 1));
    assert!(agent.stat("cluster.echo.upstream_cx_overflow") >= 1);
}

/// `max_connection_pools: 1`: only the first host used gets a pool; a connection picking the
/// other is closed at once (`upstream_cx_pool_overflow`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_pools_limits_the_hosts_in_use() {
    let (a, b) = (
        servers::start(Behavior::Echo).await,
        servers::start(Behavior::Echo).await,
    );
    let cluster = with_breakers(
        static_cluster("echo", &[a.addr, b.addr]),
        json!({"max_connection_pools": 1}),
    );
    let agent = TestAgent::start(&bootstrap(vec![tcp_listener("in", "echo")], vec![cluster])).await;
    let addr = agent.listener("in");
    let mut ok = 0;
    for _ in 0..8 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(b"z").await;
        let mut buf = [0u8; 1];
        if matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) {
            ok += 1;
        }
    }
    // One host served; round robin sent about half the connections to the other.
    assert!(
        a.accepted() == 0 || b.accepted() == 0,
        "{} {}",
        a.accepted(),
        b.accepted()
    );
    assert_eq!(ok, a.accepted() + b.accepted());
    assert!((1..8).contains(&ok), "{ok}");
    assert_eq!(
        agent.stat("cluster.echo.upstream_cx_pool_overflow"),
        8 - ok as i64
    );
    assert_eq!(
        agent.stat("cluster.echo.circuit_breakers.default.cx_pool_open"),
        1
    );
}

/// A retry storm under a retry budget: 40 concurrent requests to a slow failing host, each
/// allowed 3 retries; the budget (10 % of the requests active and pending, at least 2) lets
/// only a few retries run at once and counts the others as overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_budget_caps_a_retry_storm() {
    let (bad, count) = servers::raw_http("bad", 503, Duration::from_millis(100)).await;
    let cluster = with_breakers(
        static_cluster("up", &[bad]),
        json!({"retry_budget": {"budget_percent": {"value": 10}, "min_retry_concurrency": 2}}),
    );
    let (agent, addr) = http_agent(
        cluster,
        json!({"match": {"prefix": "/"}, "route": {"cluster": "up", "retry_policy": {
            "retry_on": "5xx", "num_retries": 3,
            "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.002s"}}}}),
    )
    .await;
    let mut storm = tokio::task::JoinSet::new();
    for _ in 0..40 {
        storm.spawn(async move {
            let mut c = H1::connect(addr).await;
            c.send(request("GET", "x", "/", &[], b""))
                .await
                .unwrap()
                .status
        });
    }
    while let Some(r) = storm.join_next().await {
        assert_eq!(r.unwrap(), 503);
    }
    let retries = agent.stat("cluster.up.upstream_rq_retry");
    let overflow = agent.stat("cluster.up.upstream_rq_retry_overflow");
    eprintln!("retry storm: {retries} retries, {overflow} refused by the budget");
    // Without a budget: 40 × 3 = 120 retries. With it, most are refused.
    assert!(overflow > 0, "retries {retries}, overflow {overflow}");
    assert!(retries < 60, "retries {retries}, overflow {overflow}");
    assert_eq!(
        count.load(std::sync::atomic::Ordering::Relaxed) as i64,
        40 + retries
    );
}
