//! Active health checking (issue 13, item 3) on real sockets: an HTTP check keeps a host
//! answering 503 out of rotation from the start; a TCP check takes a host whose server went
//! away out, and back in once it listens again; send/receive payloads decide health; HTTP/2
//! checks; gRPC checks against real `grpc.health.v1` servers move hosts out and back in.

use plumb_tests::agent::{
    any_host, bootstrap, http_listener, static_cluster, tcp_listener, TestAgent,
};
use plumb_tests::http_client::{request, H1};
use plumb_tests::http_upstream;
use plumb_tests::servers::{self, Behavior};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The check on the cluster. Until a cluster has had a connection Envoy (and Plumb) check
/// every `no_traffic_interval` (60 s by default): these tests check at `interval` from the
/// start unless they say otherwise.
fn with_check(mut cluster: Value, mut check: Value) -> Value {
    if check.get("no_traffic_interval").is_none() {
        check["no_traffic_interval"] = check["interval"].clone();
    }
    cluster["health_checks"] = json!([check]);
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_keeps_a_failing_host_out_from_the_start() {
    let (a, b) = (
        http_upstream::start("a").await,
        http_upstream::start("b").await,
    );
    let (bad, _) = servers::raw_http("bad", 503, std::time::Duration::ZERO).await;
    let cluster = with_check(
        static_cluster("up", &[a.addr, b.addr, bad]),
        json!({"timeout": "1s", "interval": "0.1s", "unhealthy_threshold": 2, "healthy_threshold": 2,
               "http_health_check": {"path": "/healthz", "host": "hc.local"}}),
    );
    let agent = TestAgent::start(&bootstrap(
        vec![http_listener(
            "in",
            any_host(json!([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}])),
        )],
        vec![cluster],
    ))
    .await;
    agent
        .wait_stat("cluster.up.health_check.healthy", |v| v == 2)
        .await;
    let mut c = H1::connect(agent.listener("in")).await;
    for _ in 0..20 {
        let r = c.send(request("GET", "x", "/", &[], b"")).await.unwrap();
        assert_eq!(r.status, 200, "the failing host is never picked");
    }
    // The checks went to the path, with the Host asked for.
    let seen = a.seen();
    let check = seen
        .iter()
        .find(|j| j["path"] == "/healthz")
        .expect("a health check request");
    assert_eq!(check["headers"]["host"], "hc.local");
    assert_eq!(check["headers"]["user-agent"], "Envoy/HC");
    // The failing host's first check has run: failed, no longer pending.
    agent
        .wait_stat("cluster.up.health_check.failure", |v| v >= 1)
        .await;
    let clusters = plumb_tests::client::get(agent.admin(), "/clusters")
        .await
        .body;
    assert!(
        clusters.contains(&format!("up::{bad}::health_flags::/failed_active_hc\n")),
        "{clusters}"
    );
    assert!(agent.stat("cluster.up.health_check.attempt") >= 3);
    assert_eq!(agent.stat("cluster.up.health_check.network_failure"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_takes_a_host_out_and_back_in() {
    let keep = servers::start(Behavior::Echo).await;
    let flaky = servers::start(Behavior::Echo).await;
    let flaky_addr = flaky.addr;
    let cluster = with_check(
        static_cluster("echo", &[keep.addr, flaky_addr]),
        json!({"timeout": "0.5s", "interval": "0.1s", "unhealthy_threshold": 2, "healthy_threshold": 2,
               "tcp_health_check": {}}),
    );
    let agent = TestAgent::start(&bootstrap(vec![tcp_listener("in", "echo")], vec![cluster])).await;
    let addr = agent.listener("in");
    agent
        .wait_stat("cluster.echo.health_check.healthy", |v| v == 2)
        .await;
    // The server goes away: after two failed checks the host is out.
    drop(flaky);
    agent
        .wait_stat("cluster.echo.health_check.healthy", |v| v == 1)
        .await;
    assert!(agent.stat("cluster.echo.health_check.network_failure") >= 2);
    let before = keep.accepted();
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.unwrap();
    }
    // All ten went to the healthy host (health check connections come on top).
    assert!(keep.accepted() >= before + 10);
    // It listens again on the same address: two good checks bring it back.
    let back = tokio::net::TcpListener::bind(flaky_addr).await.unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a2 = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = back.accept().await {
            a2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    agent
        .wait_stat("cluster.echo.health_check.healthy", |v| v == 2)
        .await;
    // (A check passes at the kernel's handshake; the accept loop counts a moment later.)
    plumb_tests::wait_until(
        "two checks at the new listener",
        std::time::Duration::from_secs(5),
        || async { accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_payloads_decide_health() {
    let echo = servers::start(Behavior::Echo).await;
    let other = servers::start(Behavior::Echo).await;
    // "ping" sent; the echo server answers "ping": healthy when "ping" is expected...
    let ok = with_check(
        static_cluster("ok", &[echo.addr]),
        json!({"timeout": "0.5s", "interval": "0.1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
               "tcp_health_check": {"send": {"text": "70696E67"}, "receive": [{"text": "7069"}, {"text": "6E67"}]}}),
    );
    // ...and not when "pong" is.
    let bad = with_check(
        static_cluster("bad", &[other.addr]),
        json!({"timeout": "0.5s", "interval": "0.1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
               "tcp_health_check": {"send": {"text": "70696E67"}, "receive": [{"text": "706F6E67"}]}}),
    );
    let agent = TestAgent::start(&bootstrap(vec![tcp_listener("a", "ok")], vec![ok, bad])).await;
    agent
        .wait_stat("cluster.ok.health_check.healthy", |v| v == 1)
        .await;
    agent
        .wait_stat("cluster.bad.health_check.failure", |v| v >= 2)
        .await;
    assert_eq!(agent.stat("cluster.bad.health_check.healthy"), 0);
    assert_eq!(agent.stat("cluster.bad.health_check.success"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_health_check_brings_an_ejected_host_back_unless_told_not_to() {
    for uneject in [true, false] {
        let (a, b) = (
            http_upstream::start("a").await,
            http_upstream::start("b").await,
        );
        let mut cluster = static_cluster("up", &[a.addr, b.addr]);
        // Ejections would last a minute: only a health check can end one in this test.
        cluster["outlier_detection"] = json!({"consecutive_5xx": 2, "base_ejection_time": "60s",
            "max_ejection_percent": 50, "successful_active_health_check_uneject_host": uneject});
        cluster["health_checks"] = json!([{"timeout": "1s", "interval": "0.1s",
            "no_traffic_interval": "0.1s", "unhealthy_threshold": 3, "healthy_threshold": 1,
            "http_health_check": {"path": "/healthz"}}]);
        let agent = TestAgent::start(&bootstrap(
            vec![http_listener(
                "in",
                any_host(json!([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}])),
            )],
            vec![cluster],
        ))
        .await;
        agent
            .wait_stat("cluster.up.health_check.healthy", |v| v == 2)
            .await;
        // Traffic fails (the upstreams answer 503 when asked to); health checks pass.
        let mut c = H1::connect(agent.listener("in")).await;
        for _ in 0..4 {
            let r = c
                .send(request("GET", "x", "/", &[("x-status", "503")], b""))
                .await
                .unwrap();
            assert_eq!(r.status, 503);
        }
        agent
            .wait_stat(
                "cluster.up.outlier_detection.ejections_enforced_total",
                |v| v >= 1,
            )
            .await;
        if uneject {
            agent
                .wait_stat("cluster.up.outlier_detection.ejections_active", |v| v == 0)
                .await;
        } else {
            let attempts = agent.stat("cluster.up.health_check.attempt");
            agent
                .wait_stat("cluster.up.health_check.attempt", |v| v >= attempts + 6)
                .await;
            assert_eq!(
                agent.stat("cluster.up.outlier_detection.ejections_active"),
                1,
                "passing checks do not end the ejection when told not to"
            );
        }
    }
}

/// Whether `/clusters` shows `host` failing its active health check.
async fn failing(agent: &TestAgent, cluster: &str, host: std::net::SocketAddr) -> bool {
    plumb_tests::client::get(agent.admin(), "/clusters")
        .await
        .body
        .contains(&format!(
            "{cluster}::{host}::health_flags::/failed_active_hc"
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_check_speaks_http2_and_judges_the_status() {
    let (good, bad) = (
        http_upstream::start("good").await,
        http_upstream::start("bad").await,
    );
    // The bad host answers checks that carry its failure key with 503 (the fake upstream's
    // x-fail-* headers), so the check's own headers decide: each host gets its own cluster.
    let check = |fail: bool| {
        let mut headers = vec![json!({"header": {"key": "x-check", "value": "yes"}})];
        if fail {
            for (k, v) in [
                ("x-fail-key", "hc"),
                ("x-fail-times", "1000000"),
                ("x-fail-status", "503"),
            ] {
                headers.push(json!({"header": {"key": k, "value": v}}));
            }
        }
        json!({"timeout": "1s", "interval": "0.1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
               "http_health_check": {"path": "/healthz", "codec_client_type": "HTTP2",
                                     "request_headers_to_add": headers}})
    };
    let agent = TestAgent::start(&bootstrap(
        vec![],
        vec![
            with_check(static_cluster("good", &[good.addr]), check(false)),
            with_check(static_cluster("bad", &[bad.addr]), check(true)),
        ],
    ))
    .await;
    agent
        .wait_stat("cluster.good.health_check.healthy", |v| v == 1)
        .await;
    agent
        .wait_stat("cluster.bad.health_check.failure", |v| v >= 1)
        .await;
    assert_eq!(agent.stat("cluster.bad.health_check.healthy"), 0);
    assert!(failing(&agent, "bad", bad.addr).await);
    let seen = good.seen();
    let check = seen
        .iter()
        .find(|j| j["path"] == "/healthz")
        .expect("a check");
    assert_eq!(check["version"], "HTTP/2.0", "{check}");
    assert_eq!(check["headers"]["x-check"], "yes");
    assert_eq!(check["headers"]["user-agent"], "Envoy/HC");
}

/// A gRPC server with the standard health service; the overall status ("") is SERVING.
async fn grpc_health_server() -> (std::net::SocketAddr, tonic_health::server::HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    (addr, reporter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_follow_the_servers_serving_status() {
    use tonic_health::ServingStatus::{NotServing, Serving};
    let (a, ra) = grpc_health_server().await;
    let (b, rb) = grpc_health_server().await;
    ra.set_service_status("plumb.Svc", Serving).await;
    rb.set_service_status("plumb.Svc", NotServing).await;
    let cluster = with_check(
        static_cluster("g", &[a, b]),
        json!({"timeout": "1s", "interval": "0.1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
               "grpc_health_check": {"service_name": "plumb.Svc", "authority": "health.local",
                                     "initial_metadata": [{"header": {"key": "x-token", "value": "t"}}]}}),
    );
    let agent = TestAgent::start(&bootstrap(vec![], vec![cluster])).await;
    agent
        .wait_stat("cluster.g.health_check.healthy", |v| v == 1)
        .await;
    agent
        .wait_stat("cluster.g.health_check.failure", |v| v >= 1)
        .await;
    assert!(!failing(&agent, "g", a).await);
    assert!(failing(&agent, "g", b).await);
    // The servers change their minds: b comes in, a goes out.
    rb.set_service_status("plumb.Svc", Serving).await;
    ra.set_service_status("plumb.Svc", NotServing).await;
    plumb_tests::wait_until(
        "b in, a out",
        std::time::Duration::from_secs(10),
        || async { failing(&agent, "g", a).await && !failing(&agent, "g", b).await },
    )
    .await;
    // A service the server does not know is a failure (NOT_FOUND), not a pass.
    let unknown = with_check(
        static_cluster("u", &[a]),
        json!({"timeout": "1s", "interval": "0.1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
               "grpc_health_check": {"service_name": "no.Such"}}),
    );
    let overall = with_check(
        static_cluster("o", &[a]),
        json!({"timeout": "1s", "interval": "0.1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
               "grpc_health_check": {}}),
    );
    let agent = TestAgent::start(&bootstrap(vec![], vec![unknown, overall])).await;
    agent
        .wait_stat("cluster.o.health_check.healthy", |v| v == 1)
        .await;
    agent
        .wait_stat("cluster.u.health_check.failure", |v| v >= 1)
        .await;
    assert_eq!(agent.stat("cluster.u.health_check.healthy"), 0);
    assert_eq!(agent.stat("cluster.u.health_check.network_failure"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traffic_checks_wait_the_no_traffic_interval() {
    let s = servers::start(Behavior::Echo).await;
    let cluster = with_check(
        static_cluster("quiet", &[s.addr]),
        json!({"timeout": "1s", "interval": "0.05s", "no_traffic_interval": "1.5s",
               "unhealthy_threshold": 1, "healthy_threshold": 1, "tcp_health_check": {}}),
    );
    let agent = TestAgent::start(&bootstrap(vec![], vec![cluster])).await;
    agent
        .wait_stat("cluster.quiet.health_check.attempt", |v| v >= 1)
        .await;
    let first = std::time::Instant::now();
    agent
        .wait_stat("cluster.quiet.health_check.attempt", |v| v >= 2)
        .await;
    // Not every 50 ms: the cluster never had a connection.
    assert!(
        first.elapsed() >= std::time::Duration::from_millis(1200),
        "{:?}",
        first.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_events_go_to_the_event_log() {
    let keep = servers::start(Behavior::Echo).await;
    let flaky = servers::start(Behavior::Echo).await;
    let flaky_addr = flaky.addr;
    let dir = std::env::temp_dir().join(format!("plumb-hc-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("hc.log");
    let cluster = with_check(
        static_cluster("ev", &[keep.addr, flaky_addr]),
        json!({"timeout": "0.5s", "interval": "0.1s", "unhealthy_threshold": 1,
               "healthy_threshold": 1, "tcp_health_check": {},
               "event_log_path": log.display().to_string()}),
    );
    let agent = TestAgent::start(&bootstrap(vec![], vec![cluster])).await;
    agent
        .wait_stat("cluster.ev.health_check.healthy", |v| v == 2)
        .await;
    drop(flaky);
    agent
        .wait_stat("cluster.ev.health_check.healthy", |v| v == 1)
        .await;
    let events = |log: std::path::PathBuf| async move {
        let mut out: Vec<Value> = Vec::new();
        plumb_tests::wait_until("three events", std::time::Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            out = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let n = out.len();
            async move { n >= 3 }
        })
        .await;
        out
    };
    let ev = events(log).await;
    let _ = std::fs::remove_dir_all(&dir);
    let added: Vec<&Value> = ev
        .iter()
        .filter(|e| e.get("add_healthy_event").is_some())
        .collect();
    assert_eq!(added.len(), 2, "{ev:?}");
    assert_eq!(added[0]["add_healthy_event"]["first_check"], true);
    assert_eq!(added[0]["health_checker_type"], "TCP");
    assert_eq!(added[0]["cluster_name"], "ev");
    let out = ev
        .iter()
        .find(|e| e.get("eject_unhealthy_event").is_some())
        .expect("an unhealthy event");
    assert_eq!(out["eject_unhealthy_event"]["failure_type"], "NETWORK");
    assert_eq!(
        out["host"]["socket_address"]["port_value"],
        flaky_addr.port()
    );
}

/// `reuse_connection` (Envoy's default): checks share one connection per host; without it,
/// each check has its own (HTTP/1.1 with `connection: close`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_reuse_their_connection_unless_told_not_to() {
    for (reuse, http2) in [(true, false), (false, false), (true, true)] {
        let up = http_upstream::start("up").await;
        let codec = if http2 { "HTTP2" } else { "HTTP1" };
        let cluster = with_check(
            static_cluster("c", &[up.addr]),
            json!({"timeout": "1s", "interval": "0.05s", "unhealthy_threshold": 1,
                   "healthy_threshold": 1, "reuse_connection": reuse,
                   "http_health_check": {"path": "/healthz", "codec_client_type": codec}}),
        );
        let agent = TestAgent::start(&bootstrap(vec![], vec![cluster])).await;
        agent
            .wait_stat("cluster.c.health_check.success", |v| v >= 6)
            .await;
        let checks = up.seen().iter().filter(|j| j["path"] == "/healthz").count();
        if reuse {
            assert_eq!(
                up.connections(),
                1,
                "{codec}: {checks} checks on one connection"
            );
        } else {
            assert!(
                up.connections() >= 6,
                "one connection per check: {}",
                up.connections()
            );
            let seen = up.seen();
            assert_eq!(seen[0]["headers"]["connection"], "close");
        }
        assert_eq!(agent.stat("cluster.c.health_check.failure"), 0);
    }
}
