//! The L4 proxy core end to end on loopback: real clients, real fake upstreams, Plumb in-process.

use plumb_tests::agent::{bootstrap, static_cluster, tcp_listener, tcp_proxy_of, TestAgent};
use plumb_tests::client::{read_all, roundtrip};
use plumb_tests::servers::{self, Behavior, Blackhole};
use plumb_tests::{fnv1a, pattern};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn agent_for(endpoints: &[std::net::SocketAddr]) -> TestAgent {
    TestAgent::start(&bootstrap(
        vec![tcp_listener("front", "backend")],
        vec![static_cluster("backend", endpoints)],
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_bytes_intact_both_ways_small_and_large() {
    let echo = servers::start(Behavior::Echo).await;
    let agent = agent_for(&[echo.addr]).await;
    let front = agent.listener("front");
    for size in [1usize, 1000, 64 * 1024 + 7, 8 * 1024 * 1024] {
        let data = pattern(size);
        let got = roundtrip(front, &data).await.expect("roundtrip");
        assert_eq!(got.len(), data.len(), "size {size}");
        assert!(got == data, "payload of {size} bytes corrupted");
    }
    agent
        .wait_stat("cluster.backend.upstream_cx_destroy", |v| v == 4)
        .await;
    let sent: i64 = [1i64, 1000, 64 * 1024 + 7, 8 * 1024 * 1024].iter().sum();
    assert_eq!(
        agent.stat("cluster.backend.upstream_cx_tx_bytes_total"),
        sent
    );
    assert_eq!(
        agent.stat("cluster.backend.upstream_cx_rx_bytes_total"),
        sent
    );
    assert_eq!(agent.stat("tcp.front.downstream_cx_rx_bytes_total"), sent);
    assert_eq!(agent.stat("tcp.front.downstream_cx_tx_bytes_total"), sent);
    assert_eq!(agent.stat("tcp.front.downstream_cx_total"), 4);
    assert_eq!(agent.stat("cluster.backend.upstream_cx_total"), 4);
    let l = format!(
        "listener.{}.downstream_cx_total",
        front.to_string().replace(':', "_")
    );
    assert_eq!(agent.stat(&l), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_the_other_direction_open() {
    // The sink answers only after it reads EOF: the reply must still reach the client.
    let sink = servers::start(Behavior::Sink).await;
    let agent = agent_for(&[sink.addr]).await;
    let data = pattern(3 * 1024 * 1024 + 11);
    let reply = roundtrip(agent.listener("front"), &data)
        .await
        .expect("roundtrip");
    let reply = String::from_utf8(reply).unwrap();
    assert_eq!(reply, format!("{} {:016x}\n", data.len(), fnv1a(&data)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_from_upstream_arrives_intact() {
    let len = 16 * 1024 * 1024;
    let source = servers::start(Behavior::Source(len)).await;
    let agent = agent_for(&[source.addr]).await;
    let got = read_all(agent.listener("front"), Duration::from_secs(30))
        .await
        .expect("download");
    assert_eq!(got.len(), len);
    assert_eq!(fnv1a(&got), fnv1a(&pattern(len)));
    agent
        .wait_stat("cluster.backend.upstream_cx_destroy_remote", |v| v == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_connections_evenly() {
    let a = servers::start(Behavior::Named("a".into())).await;
    let b = servers::start(Behavior::Named("b".into())).await;
    let c = servers::start(Behavior::Named("c".into())).await;
    let agent = agent_for(&[a.addr, b.addr, c.addr]).await;
    let front = agent.listener("front");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..30 {
        let got = read_all(front, Duration::from_secs(5)).await.expect("read");
        *seen.entry(String::from_utf8(got).unwrap()).or_default() += 1;
    }
    // Each of the agent's two workers round-robins with its own cursor (no atomic shared
    // between workers, as Envoy): every worker's share is exact, so a host's total is within
    // one per worker of a third.
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert_eq!(seen.values().sum::<usize>(), 30);
    assert!(seen.values().all(|n| (8..=12).contains(n)), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_closes_downstream_and_counts() {
    let hole = Blackhole::new();
    let mut cluster = static_cluster("backend", &[hole.addr]);
    cluster["connect_timeout"] = json!("0.2s");
    let agent = TestAgent::start(&bootstrap(
        vec![tcp_listener("front", "backend")],
        vec![cluster],
    ))
    .await;
    let got = read_all(agent.listener("front"), Duration::from_secs(10)).await;
    assert!(
        matches!(got, Ok(ref v) if v.is_empty()),
        "downstream should see a close, got {got:?}"
    );
    agent
        .wait_stat("cluster.backend.upstream_cx_connect_timeout", |v| v == 1)
        .await;
    assert_eq!(agent.stat("cluster.backend.upstream_cx_connect_fail"), 1);
    assert_eq!(agent.stat("cluster.backend.upstream_cx_active"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_endpoint_falls_through_to_the_next_attempt() {
    let echo = servers::start(Behavior::Echo).await;
    let dead = servers::closed_port();
    let mut listener = tcp_listener("front", "backend");
    tcp_proxy_of(&mut listener)["max_connect_attempts"] = json!(2);
    let agent = TestAgent::start(&bootstrap(
        vec![listener],
        vec![static_cluster("backend", &[dead, echo.addr])],
    ))
    .await;
    for i in 0..10 {
        let got = roundtrip(agent.listener("front"), b"ping")
            .await
            .expect("roundtrip");
        assert_eq!(got, b"ping", "connection {i}");
    }
    // Each worker's round robin alternates, so most connections' first attempt hits the
    // dead endpoint (a worker whose cursor starts on the live one skips it once).
    let fails = agent.stat("cluster.backend.upstream_cx_connect_fail");
    assert!((1..=10).contains(&fails), "{fails} connect failures");
    assert_eq!(
        agent.stat("cluster.backend.upstream_cx_connect_attempts_exceeded"),
        0
    );
    assert_eq!(echo.accepted(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_connect_attempts_close_downstream() {
    let dead = servers::closed_port();
    let mut listener = tcp_listener("front", "backend");
    tcp_proxy_of(&mut listener)["max_connect_attempts"] = json!(3);
    let agent = TestAgent::start(&bootstrap(
        vec![listener],
        vec![static_cluster("backend", &[dead])],
    ))
    .await;
    let got = read_all(agent.listener("front"), Duration::from_secs(10)).await;
    assert!(matches!(got, Ok(ref v) if v.is_empty()), "got {got:?}");
    agent
        .wait_stat(
            "cluster.backend.upstream_cx_connect_attempts_exceeded",
            |v| v == 1,
        )
        .await;
    assert_eq!(agent.stat("cluster.backend.upstream_cx_connect_fail"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_early_closes_downstream() {
    let closer = servers::start(Behavior::CloseImmediately).await;
    let agent = agent_for(&[closer.addr]).await;
    let got = read_all(agent.listener("front"), Duration::from_secs(10)).await;
    assert!(got.is_ok_and(|v| v.is_empty()));
    agent
        .wait_stat("cluster.backend.upstream_cx_destroy", |v| v == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_is_propagated_as_reset() {
    let reset = servers::start(Behavior::Reset).await;
    let agent = agent_for(&[reset.addr]).await;
    let mut s = TcpStream::connect(agent.listener("front")).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("read returns");
    match r {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
    agent
        .wait_stat("cluster.backend.upstream_cx_destroy_remote", |v| v == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_quiet_connections() {
    let silent = servers::start(Behavior::Silent).await;
    let mut listener = tcp_listener("front", "backend");
    tcp_proxy_of(&mut listener)["idle_timeout"] = json!("1s");
    let agent = TestAgent::start(&bootstrap(
        vec![listener],
        vec![static_cluster("backend", &[silent.addr])],
    ))
    .await;
    let mut s = TcpStream::connect(agent.listener("front")).await.unwrap();
    // Activity keeps it open (gaps well under the timeout, even on a loaded machine)...
    for _ in 0..3 {
        s.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(agent.stat("tcp.front.idle_timeout"), 0);
    // ...silence closes it.
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed by idle timeout");
    assert!(matches!(n, Ok(0) | Err(_)));
    agent.wait_stat("tcp.front.idle_timeout", |v| v == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_duration_closes_busy_connections() {
    let echo = servers::start(Behavior::Echo).await;
    let mut listener = tcp_listener("front", "backend");
    tcp_proxy_of(&mut listener)["max_downstream_connection_duration"] = json!("0.3s");
    let agent = TestAgent::start(&bootstrap(
        vec![listener],
        vec![static_cluster("backend", &[echo.addr])],
    ))
    .await;
    let mut s = TcpStream::connect(agent.listener("front")).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("closed by max duration")
        .ok();
    assert_eq!(got, b"hi");
    agent
        .wait_stat("tcp.front.max_downstream_connection_duration", |v| v == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_endpoints_are_not_used() {
    let good = servers::start(Behavior::Named("good".into())).await;
    let bad = servers::start(Behavior::Named("bad".into())).await;
    let mut cluster = static_cluster("backend", &[bad.addr, good.addr]);
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["health_status"] =
        json!("UNHEALTHY");
    let agent = TestAgent::start(&bootstrap(
        vec![tcp_listener("front", "backend")],
        vec![cluster],
    ))
    .await;
    for _ in 0..4 {
        let got = read_all(agent.listener("front"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, b"good");
    }
    assert_eq!(bad.accepted(), 0);
    assert_eq!(agent.stat("cluster.backend.membership_healthy"), 1);
    assert_eq!(agent.stat("cluster.backend.membership_total"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_upstream_closes_connection_and_counts() {
    let s = servers::start(Behavior::Echo).await;
    let mut cluster = static_cluster("backend", &[s.addr]);
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["health_status"] =
        json!("DRAINING");
    let agent = TestAgent::start(&bootstrap(
        vec![tcp_listener("front", "backend")],
        vec![cluster],
    ))
    .await;
    let got = read_all(agent.listener("front"), Duration::from_secs(5)).await;
    assert!(got.is_ok_and(|v| v.is_empty()));
    agent
        .wait_stat("cluster.backend.upstream_cx_none_healthy", |v| v == 1)
        .await;
    assert_eq!(s.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_dns_cluster_resolves_and_proxies() {
    let echo = servers::start(Behavior::Echo).await;
    let cluster = json!({
        "name": "backend",
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_ONLY",
        "dns_refresh_rate": "0.2s",
        "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "localhost", "port_value": echo.addr.port()}}}}
        ]}]},
    });
    let agent = TestAgent::start(&bootstrap(
        vec![tcp_listener("front", "backend")],
        vec![cluster],
    ))
    .await;
    let got = roundtrip(agent.listener("front"), b"dns").await.unwrap();
    assert_eq!(got, b"dns");
    assert_eq!(agent.stat("cluster.backend.membership_total"), 1);
    // The first resolution populates the cluster; later refreshes keep happening without
    // changing membership.
    assert_eq!(agent.stat("cluster.backend.membership_change"), 1);
    agent
        .wait_stat("cluster.backend.update_success", |v| v >= 3)
        .await;
    assert_eq!(agent.stat("cluster.backend.membership_change"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections_all_complete() {
    let echo = servers::start(Behavior::Echo).await;
    let agent = agent_for(&[echo.addr]).await;
    let front = agent.listener("front");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..128u32 {
        set.spawn(async move {
            let data = pattern(10_000 + i as usize);
            let got = roundtrip(front, &data).await.expect("roundtrip");
            assert!(got == data, "connection {i} corrupted");
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    agent
        .wait_stat("cluster.backend.upstream_cx_destroy", |v| v == 128)
        .await;
    agent
        .wait_stat("server.total_connections", |v| v == 0)
        .await;
    assert_eq!(agent.stat("cluster.backend.upstream_cx_active"), 0);
}

/// The per-core worker model: every worker accepts on the listening socket and runs what it
/// accepted; traffic flows, every connection is counted once, and a graceful stop drains all
/// workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_workers_proxy_and_drain() {
    use plumb::server::{Options, ShutdownKind, WorkerModel};
    let echo = servers::start(Behavior::Echo).await;
    let agent = TestAgent::start_with(
        &bootstrap(
            vec![tcp_listener("front", "backend")],
            vec![static_cluster("backend", &[echo.addr])],
        ),
        Options {
            concurrency: 3,
            worker_model: WorkerModel::PerCore,
            drain_time: Duration::from_secs(5),
            ..Options::default()
        },
    )
    .await;
    let front = agent.listener("front");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40usize {
        tasks.spawn(async move {
            let data = pattern(1000 + i);
            roundtrip(front, &data).await.map(|got| got == data)
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert!(r.unwrap().expect("roundtrip"), "payload intact");
    }
    agent
        .wait_stat("cluster.backend.upstream_cx_destroy", |v| v == 40)
        .await;
    assert_eq!(agent.stat("tcp.front.downstream_cx_total"), 40);
    assert_eq!(agent.stat("server.concurrency"), 3);
    // A connection held open across the stop is drained, then the server exits.
    let mut held = TcpStream::connect(front).await.unwrap();
    held.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).await.unwrap();
    agent.shutdown(ShutdownKind::Graceful);
    drop(held);
    agent.join().await;
}

/// A connection the agent has accepted but that is still in its listener filters (here a TLS
/// inspector waiting for the client's first bytes) is in flight: a graceful stop (or a
/// hand-over) waits for it as for any other, instead of finding nothing to drain and closing
/// it with the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_in_its_listener_filters_is_drained_not_cut() {
    use plumb::server::{Options, ShutdownKind};
    let echo = servers::start(Behavior::Echo).await;
    let mut front = tcp_listener("front", "backend");
    front["listener_filters"] = json!([{"name": "envoy.filters.listener.tls_inspector"}]);
    front["listener_filters_timeout"] = json!("60s");
    let agent = TestAgent::start_with(
        &bootstrap(vec![front], vec![static_cluster("backend", &[echo.addr])]),
        Options {
            concurrency: 2,
            drain_time: Duration::from_secs(60),
            ..Options::default()
        },
    )
    .await;
    let addr = agent.listener("front");
    let mut quiet = TcpStream::connect(addr).await.unwrap();
    plumb_tests::wait_until(
        "the quiet connection counted as in flight",
        Duration::from_secs(10),
        || async { agent.in_flight() == 1 },
    )
    .await;
    agent.shutdown(ShutdownKind::Graceful);
    plumb_tests::wait_until("the listener closed", Duration::from_secs(10), || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    // Draining, with the connection still open: it says what it is and is served.
    quiet.write_all(b"still here").await.unwrap();
    let mut got = [0u8; 10];
    quiet
        .read_exact(&mut got)
        .await
        .expect("served while draining");
    assert_eq!(&got, b"still here");
    // Once it ends, so does the drain (well before its 60 s).
    drop(quiet);
    tokio::time::timeout(Duration::from_secs(20), agent.join())
        .await
        .expect("the drain ends with its last connection");
}
