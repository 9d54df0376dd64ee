//! The admin API: Envoy's paths, formats and semantics, over real HTTP.

use plumb_tests::agent::{bootstrap, static_cluster, tcp_listener, TestAgent};
use plumb_tests::client::{get, post, roundtrip, stat};
use plumb_tests::servers::{self, Behavior};
use serde_json::Value;
use std::time::Duration;

async fn agent_with_traffic() -> (TestAgent, servers::FakeServer) {
    let echo = servers::start(Behavior::Echo).await;
    let agent = TestAgent::start(&bootstrap(
        vec![tcp_listener("front", "backend")],
        vec![static_cluster("backend", &[echo.addr])],
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            roundtrip(agent.listener("front"), b"hello").await.unwrap(),
            b"hello"
        );
    }
    agent
        .wait_stat("cluster.backend.upstream_cx_destroy", |v| v == 3)
        .await;
    (agent, echo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_text_lists_envoy_names_and_histogram_quantiles() {
    let (agent, _echo) = agent_with_traffic().await;
    let r = get(agent.admin(), "/stats").await;
    assert_eq!(r.status, 200);
    for line in [
        "cluster.backend.upstream_cx_total: 3\n",
        "cluster.backend.upstream_cx_rx_bytes_total: 15\n",
        "cluster.backend.upstream_cx_tx_bytes_total: 15\n",
        "tcp.front.downstream_cx_total: 3\n",
        "tcp.front.downstream_cx_no_route: 0\n",
        "tcp.front.upstream_flush_total: 0\n",
        "server.live: 1\n",
        "server.concurrency: 2\n",
    ] {
        assert!(r.body.contains(line), "missing {line:?} in:\n{}", r.body);
    }
    for h in [
        "cluster.backend.upstream_cx_connect_ms: P0(",
        "cluster.backend.upstream_cx_length_ms: P0(",
    ] {
        let line = r
            .body
            .lines()
            .find(|l| l.starts_with(h))
            .unwrap_or_else(|| panic!("no {h}"));
        for q in ["P50(", "P90(", "P99(", "P99.9("] {
            assert!(line.contains(q), "{line}");
        }
    }
    assert!(r.body.contains("server.memory_allocated: "));
    assert!(r.body.contains("server.uptime: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_filter_usedonly_and_json() {
    let (agent, _echo) = agent_with_traffic().await;
    let admin = agent.admin();
    let r = get(
        admin,
        "/stats?filter=%5Ecluster%5C.backend%5C.upstream_cx_(total%7Cconnect_fail)%24",
    )
    .await;
    assert_eq!(
        r.body,
        "cluster.backend.upstream_cx_connect_fail: 0\ncluster.backend.upstream_cx_total: 3\n"
    );
    let r = get(admin, "/stats?usedonly&filter=upstream_cx_connect").await;
    assert!(!r.body.contains("upstream_cx_connect_fail"), "{}", r.body);
    assert!(r.body.contains("upstream_cx_connect_ms"));
    let j = get(admin, "/stats?format=json").await.json();
    let stats = j["stats"].as_array().unwrap();
    assert!(stats
        .iter()
        .any(|s| s["name"] == "cluster.backend.upstream_cx_total" && s["value"] == 3));
    let hist = stats
        .iter()
        .find_map(|s| s.get("histograms"))
        .expect("histograms");
    assert_eq!(hist["supported_quantiles"].as_array().unwrap().len(), 10);
    assert!(hist["computed_quantiles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["name"] == "cluster.backend.upstream_cx_connect_ms"));
    assert_eq!(get(admin, "/stats?filter=(").await.status, 400);
    assert_eq!(get(admin, "/stats?format=xml").await.status, 400);
    assert_eq!(stat(admin, "cluster.backend.upstream_cx_total").await, 3);
}

/// Lint findings that Envoy's own `/stats/prometheus` output has too: its metric names are a
/// de-facto standard (no `_total` suffix on counters, `_ms` units, no HELP text).
const ENVOY_NAMING_LINTS: &[&str] = &[
    "no help text",
    "counter metrics should have \"_total\" suffix",
    "non-counter metrics should not have \"_total\" suffix",
    "metric names should not contain abbreviated units",
    // Envoy's server.days_until_first_cert_expiring counts days.
    "use base unit \"seconds\" instead of \"days\"",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_output_passes_promtool() {
    let (agent, _echo) = agent_with_traffic().await;
    let r = get(agent.admin(), "/stats/prometheus").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    assert!(r
        .body
        .contains("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"backend\"} 3\n"));
    assert!(r
        .body
        .contains("# TYPE envoy_cluster_upstream_cx_connect_ms histogram\n"));
    assert!(r.body.contains(
        "envoy_cluster_upstream_cx_connect_ms_count{envoy_cluster_name=\"backend\"} 3\n"
    ));
    assert!(r
        .body
        .contains("envoy_tcp_downstream_cx_total{envoy_tcp_prefix=\"front\"} 3\n"));

    let Some(promtool) = which("promtool") else {
        plumb_tests::skip("promtool not installed (cargo xtask deps installs it)");
        return;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(r.body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // Exit 0: clean; 3: lint findings only; anything else: the exposition did not parse.
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(3)),
        "promtool failed ({code:?}):\n{report}"
    );
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            ENVOY_NAMING_LINTS.iter().any(|l| line.ends_with(l)),
            "unexpected promtool finding: {line}\n{}",
            r.body
        );
    }
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_healthcheck_fail_and_ok() {
    let (agent, _echo) = agent_with_traffic().await;
    let admin = agent.admin();
    assert_eq!(get(admin, "/ready").await.body, "LIVE\n");
    let r = get(admin, "/healthcheck/fail").await;
    assert_eq!(r.status, 405, "mutating endpoints need POST");
    assert_eq!(post(admin, "/healthcheck/fail").await.status, 200);
    let r = get(admin, "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (503, "DRAINING\n"));
    assert_eq!(stat(admin, "server.live").await, 0);
    // Traffic still flows: failing health checks only tells load balancers to go away.
    assert_eq!(
        roundtrip(agent.listener("front"), b"x").await.unwrap(),
        b"x"
    );
    assert_eq!(post(admin, "/healthcheck/ok").await.status, 200);
    assert_eq!(get(admin, "/ready").await.status, 200);
    assert_eq!(stat(admin, "server.live").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_is_404_with_endpoint_list() {
    let (agent, _echo) = agent_with_traffic().await;
    let r = get(agent.admin(), "/nope").await;
    assert_eq!(r.status, 404);
    for p in [
        "/stats",
        "/stats/prometheus",
        "/clusters",
        "/listeners",
        "/config_dump",
        "/ready",
        "/quitquitquit",
    ] {
        assert!(
            r.body.contains(&format!("  {p}")),
            "{p} not listed:\n{}",
            r.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_listeners_config_dump_and_server_info() {
    let (agent, echo) = agent_with_traffic().await;
    let admin = agent.admin();
    let r = get(admin, "/clusters").await;
    let p = format!("backend::{}::", echo.addr);
    for l in [
        "cx_total::3",
        "cx_active::0",
        "health_flags::healthy",
        "weight::1",
        "rq_total::0",
    ] {
        assert!(
            r.body.contains(&format!("{p}{l}\n")),
            "missing {p}{l}:\n{}",
            r.body
        );
    }
    let j = get(admin, "/clusters?format=json").await.json();
    let host = &j["cluster_statuses"][0]["host_statuses"][0];
    assert_eq!(
        host["address"]["socket_address"]["port_value"],
        echo.addr.port()
    );
    assert_eq!(host["weight"], 1);

    let front = agent.listener("front");
    assert_eq!(
        get(admin, "/listeners").await.body,
        format!("front::{front}\n")
    );
    let j = get(admin, "/listeners?format=json").await.json();
    assert_eq!(
        j["listener_statuses"][0]["local_address"]["socket_address"]["port_value"],
        front.port()
    );

    let j = get(admin, "/config_dump").await.json();
    let configs = j["configs"].as_array().unwrap();
    let by_type = |t: &str| -> &Value {
        configs
            .iter()
            .find(|c| c["@type"].as_str().unwrap().ends_with(t))
            .unwrap_or_else(|| panic!("no {t}"))
    };
    assert_eq!(
        by_type("BootstrapConfigDump")["bootstrap"]["node"]["id"],
        "test-node"
    );
    let cluster = &by_type("ClustersConfigDump")["static_clusters"][0]["cluster"];
    assert_eq!(cluster["name"], "backend");
    assert_eq!(cluster["connect_timeout"], "1s");
    assert_eq!(cluster["lb_policy"], "ROUND_ROBIN");
    let listener = &by_type("ListenersConfigDump")["static_listeners"][0]["listener"];
    assert_eq!(
        listener["filter_chains"][0]["filters"][0]["typed_config"]["cluster"],
        "backend"
    );
    assert_eq!(
        listener["filter_chains"][0]["filters"][0]["typed_config"]["idle_timeout"],
        "3600s"
    );

    let j = get(admin, "/server_info").await.json();
    assert_eq!(j["state"], "LIVE");
    assert_eq!(j["node"]["id"], "test-node");
    assert!(j["version"].as_str().unwrap().starts_with("plumb/"));
    let j = get(admin, "/memory").await.json();
    assert!(j["allocated"].as_str().unwrap().parse::<u64>().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_listeners_stops_accepting_and_keeps_established_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (agent, echo) = agent_with_traffic().await;
    let front = agent.listener("front");
    let mut held = tokio::net::TcpStream::connect(front).await.unwrap();
    held.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(post(agent.admin(), "/drain_listeners").await.status, 200);
    plumb_tests::wait_until("listener closed", Duration::from_secs(5), || async move {
        tokio::net::TcpStream::connect(front).await.is_err()
    })
    .await;
    assert_eq!(get(agent.admin(), "/ready").await.status, 503);
    held.write_all(b"during").await.unwrap();
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"during");
    // A listener added while draining is refused, not bound to queue connects nobody takes.
    let late_addr = servers::closed_port();
    let mut late = tcp_listener("late", "backend");
    late["address"]["socket_address"]["port_value"] = serde_json::json!(late_addr.port());
    let problems = agent.reload(&bootstrap(
        vec![tcp_listener("front", "backend"), late],
        vec![static_cluster("backend", &[echo.addr])],
    ));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("\"late\"") && p.contains("draining")),
        "{problems:?}"
    );
    assert!(tokio::net::TcpStream::connect(late_addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_stops_the_server() {
    let (agent, _echo) = agent_with_traffic().await;
    assert_eq!(post(agent.admin(), "/quitquitquit").await.status, 200);
    tokio::time::timeout(Duration::from_secs(10), agent.join())
        .await
        .expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_without_global_logger_says_so() {
    let (agent, _echo) = agent_with_traffic().await;
    // In-process agents do not own the global logger; the subprocess test covers changes.
    assert_eq!(get(agent.admin(), "/logging").await.status, 503);
}

/// Idle or slow admin clients cannot pile up: beyond `max_connections` a connection is closed
/// at once (and counted), and one that does not send its request headers in time is closed;
/// the admin API keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_capped_and_slow_clients_timed_out() {
    use plumb::server::{AdminLimits, Options};
    use tokio::io::AsyncReadExt;
    let agent = TestAgent::start_with(
        &plumb_tests::agent::bootstrap(vec![], vec![]),
        Options {
            concurrency: 1,
            admin_limits: AdminLimits {
                max_connections: 4,
                header_read_timeout: Duration::from_millis(300),
                max_connection_age: Duration::from_secs(60),
            },
            ..Options::default()
        },
    )
    .await;
    let admin = agent.admin();
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    agent
        .wait_stat("http.admin.downstream_cx_overflow", |v| v == 6)
        .await;
    // Every one of them ends: six at once, four at their header deadline.
    for mut s in idle {
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            r.is_ok(),
            "an idle admin connection is closed (or answered), not held"
        );
    }
    assert_eq!(get(admin, "/ready").await.status, 200);
}

/// Issue 11, items 3 and 5: the admin server bounds what it reads (request target 4 KiB →
/// 414, request head 16 KiB → 431) and refuses state-changing requests a web page could
/// send (cross-site `Origin`, `Sec-Fetch-Site`, or a DNS name as Host with an Origin), while
/// tools without those headers and same-origin requests by IP work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bounds_requests_and_refuses_cross_site_mutations() {
    use plumb_tests::client::http_with;
    let (agent, _echo) = agent_with_traffic().await;
    let admin = agent.admin();
    let long = format!("/stats?filter={}", "a".repeat(5000));
    assert_eq!(get(admin, &long).await.status, 414);
    let big = "b".repeat(20 * 1024);
    let r = http_with("GET", admin, "/ready", &[("x-big", &big)])
        .await
        .unwrap();
    assert_eq!(r.status, 431);

    let fail = "/healthcheck/fail";
    let own = format!("http://{admin}");
    for headers in [
        vec![("Origin", "http://evil.example")],
        vec![("Origin", "null")],
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Origin", own.as_str()), ("Sec-Fetch-Site", "same-site")],
    ] {
        let r = http_with("POST", admin, fail, &headers).await.unwrap();
        assert_eq!(r.status, 403, "{headers:?}: {}", r.body);
        assert!(r.body.contains("not accepted from web pages"), "{}", r.body);
    }
    assert_eq!(
        get(admin, "/ready").await.status,
        200,
        "nothing was changed"
    );
    // Reads are not refused: a dashboard may show /stats.
    let r = http_with("GET", admin, "/ready", &[("Origin", "http://evil.example")]).await;
    assert_eq!(r.unwrap().status, 200);
    // Same origin, by IP: a browser on the admin page itself.
    let r = http_with("POST", admin, fail, &[("Origin", &own)])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(post(admin, "/healthcheck/ok").await.status, 200);
}

/// Issue 11, item 7: after a reload that applies only in part, `/config_dump` describes what
/// serves: a listener that could not move keeps its old address there (as in `/listeners`)
/// with an `error_state`; a new listener that could not bind shows only its failure; a
/// changed admin address is refused with a message and not shown; `last_updated` changes only
/// for what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_describes_what_serves_after_a_partial_reload() {
    use plumb_tests::agent::{bootstrap, static_cluster, tcp_listener};
    let echo = servers::start(Behavior::Echo).await;
    let at = |name: &str, port: u16| {
        let mut l = tcp_listener(name, "echo");
        l["address"]["socket_address"]["port_value"] = serde_json::json!(port);
        l
    };
    let (p1, p2) = (servers::closed_port().port(), servers::closed_port().port());
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p3 = busy.local_addr().unwrap().port();
    let busy2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p4 = busy2.local_addr().unwrap().port();
    let first = bootstrap(
        vec![at("moved", p1), at("same", p2)],
        vec![static_cluster("echo", &[echo.addr])],
    );
    let agent = TestAgent::start(&first).await;
    let admin = agent.admin();
    let before = get(admin, "/config_dump").await.json();
    let mut second: serde_json::Value = serde_json::from_str(&bootstrap(
        vec![at("moved", p3), at("same", p2), at("new", p4)],
        vec![{
            let mut c = static_cluster("echo", &[echo.addr]);
            c["connect_timeout"] = serde_json::json!("2s");
            c
        }],
    ))
    .unwrap();
    second["admin"]["address"]["socket_address"]["port_value"] = serde_json::json!(p1);
    let problems = agent.reload(&second.to_string());
    let all = problems.join("\n");
    assert!(
        all.contains("admin address changes need a restart"),
        "{all}"
    );
    assert!(
        all.contains("\"moved\"") && all.contains("\"new\""),
        "{all}"
    );

    let listeners = get(admin, "/listeners").await.body;
    assert!(
        listeners.contains(&format!("moved::127.0.0.1:{p1}")),
        "{listeners}"
    );
    assert!(!listeners.contains("new::"), "{listeners}");
    let dump = get(admin, "/config_dump").await.json();
    let section = |d: &serde_json::Value, t: &str| {
        d["configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["@type"].as_str().unwrap().ends_with(t))
            .cloned()
            .unwrap()
    };
    let statics = section(&dump, "ListenersConfigDump")["static_listeners"].clone();
    let entry = |name: &str| {
        statics
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["listener"]["name"] == name || l["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {statics}"))
    };
    let moved = entry("moved");
    assert_eq!(
        moved["listener"]["address"]["socket_address"]["port_value"], p1,
        "the address that serves"
    );
    assert_eq!(
        moved["error_state"]["failed_configuration"]["address"]["socket_address"]["port_value"],
        p3
    );
    let details = moved["error_state"]["details"].as_str().unwrap();
    assert!(details.contains("in use"), "{details}");
    let new = entry("new");
    assert!(
        new.get("listener").is_none() && new["error_state"].is_object(),
        "{new}"
    );
    let old_same = section(&before, "ListenersConfigDump")["static_listeners"][1].clone();
    assert_eq!(
        entry("same")["last_updated"],
        old_same["last_updated"],
        "unchanged"
    );
    let cluster = &section(&dump, "ClustersConfigDump")["static_clusters"][0];
    assert_eq!(cluster["cluster"]["connect_timeout"], "2s");
    assert_ne!(
        cluster["last_updated"],
        section(&before, "ClustersConfigDump")["static_clusters"][0]["last_updated"]
    );
    let boot = &section(&dump, "BootstrapConfigDump")["bootstrap"];
    assert_eq!(
        boot["admin"]["address"]["socket_address"]["port_value"], 0,
        "the admin address in force, not the refused one"
    );
    drop((busy, busy2));
}
