//! Filter chains end to end on loopback: chain selection by `filter_chain_match`, the default
//! chain, no match, and several network filters in one chain.

use plumb_tests::agent::{bootstrap, static_cluster, TestAgent};
use plumb_tests::servers::{self, Behavior};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": stat_prefix,
            "cluster": cluster,
        }
    })
}

fn chain(m: Value, cluster: &str) -> Value {
    json!({"filter_chain_match": m, "filters": [tcp_proxy(cluster, cluster)]})
}

/// A port free on 127.0.0.1 right now (the chain match needs to know it in advance).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

/// Connects from `src` (any 127/8 address) and reads until EOF.
async fn read_from(src: &str, addr: SocketAddr) -> std::io::Result<Vec<u8>> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src.parse::<IpAddr>().unwrap(), 0))?;
    let mut s = sock.connect(addr).await?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
    Ok(got)
}

async fn named(name: &str) -> servers::FakeServer {
    servers::start(Behavior::Named(name.into())).await
}

fn listener_stat(addr: SocketAddr, stat: &str) -> String {
    format!("listener.{}.{stat}", addr.to_string().replace(':', "_"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_selected_by_destination_port_and_source_prefix_reach_their_clusters() {
    let (a, b, other) = (named("a").await, named("b").await, named("other").await);
    let port = free_port();
    let listener = json!({
        "name": "front",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            chain(json!({"destination_port": port}), "a"),
            chain(json!({"destination_port": port,
                "source_prefix_ranges": [{"address_prefix": "127.0.0.2", "prefix_len": 32}]}), "b"),
            // Another port: never chosen for connections to this listener.
            chain(json!({"destination_port": port.wrapping_add(1).max(1)}), "other"),
        ],
    });
    let agent = TestAgent::start(&bootstrap(
        vec![listener],
        vec![
            static_cluster("a", &[a.addr]),
            static_cluster("b", &[b.addr]),
            static_cluster("other", &[other.addr]),
        ],
    ))
    .await;
    let front = agent.listener("front");
    assert_eq!(read_from("127.0.0.1", front).await.unwrap(), b"a");
    assert_eq!(read_from("127.0.0.2", front).await.unwrap(), b"b");
    assert_eq!(read_from("127.0.0.3", front).await.unwrap(), b"a");
    assert_eq!(other.accepted(), 0);
    assert_eq!(agent.stat("tcp.a.downstream_cx_total"), 2);
    assert_eq!(agent.stat("tcp.b.downstream_cx_total"), 1);
    assert_eq!(
        agent.stat(&listener_stat(front, "no_filter_chain_match")),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_chain_closes_the_connection_and_counts_it_unless_a_default_exists() {
    let (a, d) = (named("a").await, named("default").await);
    let only_10 =
        json!({"source_prefix_ranges": [{"address_prefix": "127.0.0.10", "prefix_len": 32}]});
    let strict = json!({
        "name": "strict",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [chain(only_10.clone(), "a")],
    });
    let with_default = json!({
        "name": "with_default",
        "address": {"socket_address": {"address": "127.0.0.5", "port_value": 0}},
        "filter_chains": [chain(only_10, "a")],
        "default_filter_chain": {"filters": [tcp_proxy("default", "default")]},
    });
    let agent = TestAgent::start(&bootstrap(
        vec![strict, with_default],
        vec![
            static_cluster("a", &[a.addr]),
            static_cluster("default", &[d.addr]),
        ],
    ))
    .await;
    let strict = agent.listener("strict");
    let got = read_from("127.0.0.1", strict).await;
    assert!(
        matches!(got, Ok(ref v) if v.is_empty()) || got.is_err(),
        "no chain: the connection is closed without data, got {got:?}"
    );
    agent
        .wait_stat(&listener_stat(strict, "no_filter_chain_match"), |v| v == 1)
        .await;
    assert_eq!(agent.stat(&listener_stat(strict, "downstream_cx_total")), 0);
    assert_eq!(read_from("127.0.0.10", strict).await.unwrap(), b"a");

    let wd = agent.listener("with_default");
    assert_eq!(read_from("127.0.0.1", wd).await.unwrap(), b"default");
    assert_eq!(read_from("127.0.0.10", wd).await.unwrap(), b"a");
    assert_eq!(agent.stat(&listener_stat(wd, "no_filter_chain_match")), 0);
    assert_eq!(a.accepted(), 2);
    assert_eq!(d.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_and_local_ratelimit_run_before_tcp_proxy_in_one_chain() {
    let echo = servers::start(Behavior::Echo).await;
    let listener = json!({
        "name": "front",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.connection_limit", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
                "stat_prefix": "cl", "max_connections": 1}},
            {"name": "envoy.filters.network.local_ratelimit", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "rl",
                "token_bucket": {"max_tokens": 2, "fill_interval": "3600s"}}},
            tcp_proxy("front", "echo"),
        ]}],
    });
    let agent = TestAgent::start(&bootstrap(
        vec![listener],
        vec![static_cluster("echo", &[echo.addr])],
    ))
    .await;
    let front = agent.listener("front");
    let echo_once = |mut s: TcpStream| async move {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>((s, buf))
    };
    // First connection: admitted by both, proxied, held open.
    let (held, buf) = echo_once(TcpStream::connect(front).await.unwrap())
        .await
        .unwrap();
    assert_eq!(&buf, b"ping");
    // Second, while the first is open: over the connection limit, closed; no token taken.
    let got = read_from("127.0.0.1", front).await;
    assert!(
        matches!(got, Ok(ref v) if v.is_empty()) || got.is_err(),
        "{got:?}"
    );
    agent
        .wait_stat("connection_limit.cl.limited_connections", |v| v == 1)
        .await;
    drop(held);
    agent
        .wait_stat("connection_limit.cl.active_connections", |v| v == 0)
        .await;
    // Third: the second token.
    let (s, buf) = echo_once(TcpStream::connect(front).await.unwrap())
        .await
        .unwrap();
    assert_eq!(&buf, b"ping");
    drop(s);
    agent
        .wait_stat("connection_limit.cl.active_connections", |v| v == 0)
        .await;
    // Fourth: under the connection limit but out of tokens.
    let got = read_from("127.0.0.1", front).await;
    assert!(
        matches!(got, Ok(ref v) if v.is_empty()) || got.is_err(),
        "{got:?}"
    );
    agent
        .wait_stat("local_rate_limit.rl.rate_limited", |v| v == 1)
        .await;
    assert_eq!(agent.stat("connection_limit.cl.limited_connections"), 1);
    assert_eq!(agent.stat("tcp.front.downstream_cx_total"), 2);
    assert_eq!(echo.accepted(), 2);
}
