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
    plumb_tests::servers::closed_port().port()
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

/// `http_inspector` (a listener filter reading the client's first bytes) feeds the chain match
/// its application protocol: HTTP/1.1, HTTP/2 prior knowledge and anything else reach three
/// different clusters; the bytes it looked at are still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_inspector_selects_chains_by_application_protocol() {
    use plumb_tests::client::roundtrip;
    let (h1, h2, other) = (
        servers::start(Behavior::Echo).await,
        servers::start(Behavior::Echo).await,
        servers::start(Behavior::Echo).await,
    );
    let listener = json!({
        "name": "front",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "listener_filters": [{"name": "envoy.filters.listener.http_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}],
        "filter_chains": [
            chain(json!({"application_protocols": ["http/1.1", "http/1.0"]}), "h1"),
            chain(json!({"application_protocols": ["h2c"]}), "h2"),
        ],
        "default_filter_chain": {"filters": [tcp_proxy("other", "other")]},
    });
    let agent = TestAgent::start(&bootstrap(
        vec![listener],
        vec![
            static_cluster("h1", &[h1.addr]),
            static_cluster("h2", &[h2.addr]),
            static_cluster("other", &[other.addr]),
        ],
    ))
    .await;
    let front = agent.listener("front");
    let get = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    assert_eq!(roundtrip(front, &get).await.unwrap(), get);
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec();
    assert_eq!(roundtrip(front, &preface).await.unwrap(), preface);
    let tls_like = b"\x16\x03\x01\x00\x05hello".to_vec();
    assert_eq!(roundtrip(front, &tls_like).await.unwrap(), tls_like);
    // A request line cut short by the client's FIN is decided at once (not after the 15 s
    // listener_filters_timeout): not HTTP, default chain, bytes delivered.
    let partial = tokio::time::timeout(Duration::from_secs(10), roundtrip(front, b"GE"))
        .await
        .expect("decided on FIN, not held until the listener filter timeout");
    assert_eq!(partial.unwrap(), b"GE");
    assert_eq!((h1.accepted(), h2.accepted(), other.accepted()), (1, 1, 2));
    assert_eq!(agent.stat("http_inspector.http11_found"), 1);
    assert_eq!(agent.stat("http_inspector.http2_found"), 1);
    assert_eq!(agent.stat("http_inspector.http_not_found"), 2);
}

/// A client that sends nothing (a server-speaks-first protocol) is held only until
/// `listener_filters_timeout`: then closed and counted, or — with
/// `continue_on_listener_filters_timeout` — matched with what is known (here: the default
/// chain), so the server can speak first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_filters_timeout_closes_or_continues() {
    let greeter = named("greeting").await;
    let listener = |name: &str, addr: &str, cont: bool| {
        json!({
            "name": name,
            "address": {"socket_address": {"address": addr, "port_value": 0}},
            "listener_filters": [{"name": "envoy.filters.listener.http_inspector"}],
            "listener_filters_timeout": "0.2s",
            "continue_on_listener_filters_timeout": cont,
            "filter_chains": [chain(json!({"application_protocols": ["http/1.1"]}), "greeter")],
            "default_filter_chain": {"filters": [tcp_proxy("default", "greeter")]},
        })
    };
    let agent = TestAgent::start(&bootstrap(
        vec![
            listener("strict", "127.0.0.1", false),
            listener("lenient", "127.0.0.2", true),
        ],
        vec![static_cluster("greeter", &[greeter.addr])],
    ))
    .await;
    let strict = agent.listener("strict");
    let got = read_from("127.0.0.1", strict).await;
    assert!(
        matches!(got, Ok(ref v) if v.is_empty()) || got.is_err(),
        "{got:?}"
    );
    agent
        .wait_stat(&listener_stat(strict, "downstream_pre_cx_timeout"), |v| {
            v == 1
        })
        .await;
    assert_eq!(agent.stat(&listener_stat(strict, "downstream_cx_total")), 0);
    let lenient = agent.listener("lenient");
    assert_eq!(read_from("127.0.0.1", lenient).await.unwrap(), b"greeting");
    assert_eq!(
        agent.stat(&listener_stat(lenient, "downstream_pre_cx_timeout")),
        1
    );
    assert_eq!(greeter.accepted(), 1);
}
