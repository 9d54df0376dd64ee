//! The HTTP connection manager end to end (issue 12): real HTTP/1.1 and HTTP/2 clients and
//! upstreams on loopback, through Plumb's listener, routes and router.

use plumb_tests::agent::{any_host, bootstrap, http_listener, static_cluster, TestAgent};
use plumb_tests::http_client::{self, request, H1, H2};
use plumb_tests::http_upstream;
use plumb_tests::servers::{self, Behavior};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn h2_cluster(name: &str, endpoints: &[SocketAddr]) -> Value {
    let mut c = static_cluster(name, endpoints);
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}});
    c
}

fn route(prefix: &str, cluster: &str) -> Value {
    json!({"match": {"prefix": prefix}, "route": {"cluster": cluster}})
}

/// A fake upstream's read of one request head (and whatever came with it); `None` if the
/// connection closed first.
async fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut b = [0u8; 2048];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => got.extend_from_slice(&b[..k]),
        }
    }
    Some(got)
}

async fn agent_for(routes: Value, clusters: Vec<Value>) -> (TestAgent, SocketAddr) {
    let agent = TestAgent::start(&bootstrap(
        vec![http_listener("in", any_host(routes))],
        clusters,
    ))
    .await;
    let addr = agent.listener("in");
    (agent, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_reuse_one_upstream_connection_and_bridge_protocols() {
    let h1 = http_upstream::start("h1").await;
    let h2 = http_upstream::start("h2").await;
    let (agent, addr) = agent_for(
        json!([route("/two", "h2"), route("/", "h1")]),
        vec![
            static_cluster("h1", &[h1.addr]),
            h2_cluster("h2", &[h2.addr]),
        ],
    )
    .await;

    // HTTP/1.1 downstream, HTTP/1.1 upstream: one pooled connection for five requests.
    let mut c = H1::connect(addr).await;
    for i in 0..5 {
        let r = c
            .send(request("POST", "svc", &format!("/x?i={i}"), &[], b"hello"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let j = r.json();
        assert_eq!(j["path"], format!("/x?i={i}"));
        assert_eq!(j["version"], "HTTP/1.1");
        assert_eq!(j["body_len"], 5);
        assert_eq!(j["headers"]["host"], "svc");
        assert!(j["headers"]["x-request-id"]
            .as_str()
            .is_some_and(|id| id.len() == 36));
        assert_eq!(r.header("server"), Some("plumb"));
    }
    // Pools are per worker: the connection's task may move to the agent's other worker
    // between requests, so at most one upstream connection per worker (two).
    assert!(h1.connections() <= 2, "the upstream connection is reused");
    assert!(agent.stat("cluster.h1.upstream_cx_http1_total") <= 2);
    assert_eq!(agent.stat("cluster.h1.upstream_rq_200"), 5);
    assert_eq!(agent.stat("cluster.h1.upstream_rq_2xx"), 5);

    // HTTP/2 downstream (prior knowledge), 20 concurrent streams, to HTTP/1.1 and HTTP/2.
    let c2 = H2::connect(addr).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c2 = c2.clone();
        let path = if i % 2 == 0 {
            format!("/two/{i}")
        } else {
            format!("/one/{i}")
        };
        tasks.push(tokio::spawn(async move {
            let r = c2
                .send(request("GET", "svc", &path, &[], b""))
                .await
                .unwrap();
            (path, r)
        }));
    }
    for t in tasks {
        let (path, r) = t.await.unwrap();
        assert_eq!(r.status, 200, "{path}");
        let j = r.json();
        assert_eq!(j["path"], path);
        let want = if path.starts_with("/two") {
            "HTTP/2.0"
        } else {
            "HTTP/1.1"
        };
        assert_eq!(j["version"], want, "{path}");
        assert_eq!(
            j["server"],
            if path.starts_with("/two") { "h2" } else { "h1" }
        );
    }
    // One multiplexed connection per worker (the agent runs two), not one per stream.
    let h2_conns = agent.stat("cluster.h2.upstream_cx_http2_total");
    assert!((1..=2).contains(&h2_conns), "{h2_conns} HTTP/2 connections");
    assert_eq!(h2.connections() as i64, h2_conns);
    // HTTP/1.1 downstream to the HTTP/2 upstream.
    let r = c
        .send(request("GET", "svc", "/two/x", &[], b""))
        .await
        .unwrap();
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(
        r.json()["headers"]["host"],
        serde_json::Value::Null,
        "authority, not host, on HTTP/2"
    );
    assert_eq!(agent.stat("http.in.downstream_rq_2xx"), 26);
    assert_eq!(agent.stat("http.in.downstream_cx_http1_total"), 1);
    assert_eq!(agent.stat("http.in.downstream_cx_http2_total"), 1);
    assert_eq!(agent.stat("http.in.downstream_rq_http2_total"), 20);
    agent
        .wait_stat("http.in.downstream_rq_active", |v| v == 0)
        .await;
    agent
        .wait_stat("cluster.h1.upstream_rq_active", |v| v == 0)
        .await;
    // Per host in /clusters: 5 HTTP/1.1 and 10 HTTP/2 requests went to h1.
    let clusters = plumb_tests::client::get(agent.admin(), "/clusters")
        .await
        .body;
    for l in [
        "rq_total::15",
        "rq_success::15",
        "rq_error::0",
        "rq_active::0",
    ] {
        assert!(
            clusters.contains(&format!("h1::{}::{l}\n", h1.addr)),
            "{l}: {clusters}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_hosts_routes_rewrites_and_header_mutations() {
    let a = http_upstream::start("a").await;
    let b = http_upstream::start("b").await;
    let vhosts = json!([
        {"name": "api", "domains": ["api.example.com", "api.example.com:8080"],
         "request_headers_to_add": [{"header": {"key": "x-vhost", "value": "api"}}],
         "response_headers_to_add": [{"header": {"key": "x-served-by", "value": "%UPSTREAM_REMOTE_ADDRESS%"}}],
         "routes": [
            {"match": {"prefix": "/v1/"}, "route": {"cluster": "a", "prefix_rewrite": "/internal/"},
             "request_headers_to_add": [
                {"header": {"key": "x-client", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}},
                {"header": {"key": "x-copy", "value": "%REQ(x-orig)%"}}],
             "request_headers_to_remove": ["x-secret"]},
            {"match": {"safe_regex": {"regex": "/items/([0-9]+)"}},
             "route": {"cluster": "b", "regex_rewrite": {"pattern": {"regex": "/items/([0-9]+)"}, "substitution": "/item?id=\\1"}}},
            {"match": {"prefix": "/", "headers": [{"name": "x-canary", "exact_match": "yes"}]}, "route": {"cluster": "b", "host_rewrite_literal": "canary.internal"}},
            {"match": {"prefix": "/old"}, "redirect": {"path_redirect": "/new", "response_code": "PERMANENT_REDIRECT"}},
            {"match": {"path": "/healthz"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}},
            {"match": {"prefix": "/"}, "route": {"cluster": "a"}},
         ]},
        {"name": "wild", "domains": ["*.example.com"], "routes": [route("/", "b")]},
    ]);
    let agent = TestAgent::start(&bootstrap(
        vec![http_listener("in", vhosts)],
        vec![
            static_cluster("a", &[a.addr]),
            static_cluster("b", &[b.addr]),
        ],
    ))
    .await;
    let addr = agent.listener("in");
    let get =
        |host: &'static str, path: &'static str, h: &'static [(&'static str, &'static str)]| {
            http_client::get(addr, host, path, h)
        };

    let r = get(
        "api.example.com",
        "/v1/users?x=1",
        &[("x-orig", "o"), ("x-secret", "s")],
    )
    .await;
    let j = r.json();
    assert_eq!(j["server"], "a");
    assert_eq!(j["path"], "/internal/users?x=1");
    assert_eq!(j["headers"]["x-envoy-original-path"], "/v1/users?x=1");
    assert_eq!(j["headers"]["x-vhost"], "api");
    assert_eq!(j["headers"]["x-client"], "127.0.0.1");
    assert_eq!(j["headers"]["x-copy"], "o");
    assert!(j["headers"].get("x-secret").is_none());
    assert_eq!(r.header("x-served-by"), Some(a.addr.to_string().as_str()));

    let j = get("API.example.com:8080", "/items/42", &[]).await.json();
    assert_eq!(
        (j["server"].as_str(), j["path"].as_str()),
        (Some("b"), Some("/item?id=42"))
    );

    let j = get("api.example.com", "/anything", &[("x-canary", "yes")])
        .await
        .json();
    assert_eq!(
        (j["server"].as_str(), j["headers"]["host"].as_str()),
        (Some("b"), Some("canary.internal"))
    );

    let r = get("api.example.com", "/old/page?q=1", &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("http://api.example.com/new?q=1"));

    let r = get("api.example.com", "/healthz", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));

    assert_eq!(get("www.example.com", "/", &[]).await.json()["server"], "b");
    // No virtual host: 404 with no body, counted as no_route.
    let r = get("other.org", "/", &[]).await;
    assert_eq!((r.status, r.body.len()), (404, 0));
    assert_eq!(agent.stat("http.in.no_route"), 1);
    assert_eq!(agent.stat("http.in.rq_redirect"), 1);
    assert_eq!(agent.stat("http.in.rq_direct_response"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_carry_envoys_statuses_texts_and_grpc_codes() {
    let slow = http_upstream::start("slow").await;
    let closes = servers::start(Behavior::CloseImmediately).await;
    // A port with nothing listening.
    let refused = plumb_tests::servers::closed_port();
    let mut none_healthy = static_cluster("empty", &[]);
    none_healthy["load_assignment"]["endpoints"] = json!([]);
    let routes = json!([
        {"match": {"prefix": "/slow"}, "route": {"cluster": "slow", "timeout": "0.2s"}},
        route("/refused", "refused"),
        route("/closes", "closes"),
        route("/empty", "empty"),
        {"match": {"prefix": "/gone"}, "route": {"cluster": "gone"}},
    ]);
    let mut listener = http_listener("in", any_host(routes));
    listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
        ["validate_clusters"] = json!(false);
    let agent = TestAgent::start(&bootstrap(
        vec![listener],
        vec![
            static_cluster("slow", &[slow.addr]),
            static_cluster("refused", &[refused]),
            static_cluster("closes", &[closes.addr]),
            none_healthy,
        ],
    ))
    .await;
    let addr = agent.listener("in");
    let cases: [(&str, u16, &str, &str); 5] = [
        ("/slow", 504, "upstream request timeout", "cluster.slow.upstream_rq_timeout"),
        ("/refused", 503, "upstream connect error or disconnect/reset before headers. reset reason: connection failure", "cluster.refused.upstream_cx_connect_fail"),
        ("/closes", 503, "upstream connect error or disconnect/reset before headers. reset reason: connection termination", "cluster.closes.upstream_rq_rx_reset"),
        ("/empty", 503, "no healthy upstream", "cluster.empty.upstream_cx_none_healthy"),
        ("/gone", 503, "", "http.in.no_cluster"),
    ];
    for (path, status, text, stat) in cases {
        let r = http_client::get(addr, "x", path, &[("x-delay-ms", "2000")]).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(r.text().starts_with(text), "{path}: {}", r.text());
        assert_eq!(agent.stat(stat), 1, "{path}: {stat}");
    }
    assert_eq!(agent.stat("cluster.slow.upstream_rq_504"), 1);
    // gRPC clients get a gRPC status instead.
    let mut c2 = H2::connect(addr).await;
    for (path, code) in [("/slow", "4"), ("/empty", "14"), ("/nothing-here", "14")] {
        let r = c2
            .send(request(
                "POST",
                "x",
                path,
                &[("content-type", "application/grpc"), ("x-delay-ms", "2000")],
                b"",
            ))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("grpc-status"),
            Some(if path == "/nothing-here" { "12" } else { code }),
            "{path}"
        );
    }
    assert_eq!(agent.stat("http.in.downstream_rq_5xx"), 5);
    assert_eq!(agent.stat("http.in.downstream_rq_4xx"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_clusters_split_traffic_in_proportion() {
    let stable = http_upstream::start("stable").await;
    let canary = http_upstream::start("canary").await;
    let routes = json!([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "stable", "weight": 90},
        {"name": "canary", "weight": 10, "request_headers_to_add": [{"header": {"key": "x-canary", "value": "1"}}]}]}}}]);
    let (_agent, addr) = agent_for(
        routes,
        vec![
            static_cluster("stable", &[stable.addr]),
            static_cluster("canary", &[canary.addr]),
        ],
    )
    .await;
    let mut c = H1::connect(addr).await;
    let mut to_canary = 0;
    for _ in 0..2000 {
        let j = c
            .send(request("GET", "x", "/", &[], b""))
            .await
            .unwrap()
            .json();
        if j["server"] == "canary" {
            assert_eq!(j["headers"]["x-canary"], "1");
            to_canary += 1;
        }
    }
    // 200 expected; the binomial standard deviation is ~13.4: allow 5 either side.
    assert!(
        (133..=267).contains(&to_canary),
        "{to_canary} of 2000 went to the canary"
    );
}

/// Sends raw bytes on a new connection and returns what comes back until close or timeout.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_payloads_are_refused_and_pipelining_keeps_order() {
    let up = http_upstream::start("up").await;
    let (agent, addr) = agent_for(
        json!([route("/", "up")]),
        vec![static_cluster("up", &[up.addr])],
    )
    .await;
    // Both framings: read as chunked (RFC 9112 6.3), Content-Length dropped, and the
    // connection closed after one response, so what follows is never read as a request.
    let both: [(&str, &[u8], u64); 2] = [
        ("CL.TE", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 0),
        ("TE.CL", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 8),
    ];
    for (name, payload, body_len) in both {
        let out = raw(addr, payload).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{name}: {out:?}");
        assert_eq!(
            out.matches("HTTP/1.1 ").count(),
            1,
            "{name}: one response: {out:?}"
        );
        assert!(
            out.contains(&format!("\"body_len\":{body_len},")),
            "{name}: {out:?}"
        );
        assert!(out.contains("\r\nconnection: close\r\n"), "{name}: {out:?}");
        assert!(
            !out.contains("content-length\":"),
            "{name}: no Content-Length upstream: {out:?}"
        );
    }
    assert_eq!(up.requests(), 2, "nothing smuggled reached the upstream");
    let smuggling: [(&str, &[u8]); 3] = [
        ("TE.TE", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n"),
        ("two lengths", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
    ];
    let before = up.requests();
    for (name, payload) in smuggling {
        let out = raw(addr, payload).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{name}: {out:?}");
        assert!(
            !out.contains("SMUGGLED") && out.matches("HTTP/1.1").count() == 1,
            "{name}: {out:?}"
        );
    }
    assert_eq!(up.requests(), before, "nothing reached the upstream");
    // Pipelined requests are answered in order.
    let out = raw(
        addr,
        b"GET /1 HTTP/1.1\r\nHost: x\r\nx-delay-ms: 100\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let order: Vec<usize> = ["\"path\":\"/1\"", "\"path\":\"/2\"", "\"path\":\"/3\""]
        .iter()
        .map(|p| out.find(p).unwrap_or_else(|| panic!("{p} missing: {out}")))
        .collect();
    assert!(order[0] < order[1] && order[1] < order[2], "{out}");
    // A header section beyond max_request_headers_kb (60) is refused with 431.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let out = raw(addr, big.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(200)]
    );
    let _ = agent;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_and_bodies_pass_end_to_end_over_http2() {
    let up = http_upstream::start("up").await;
    let (_agent, addr) = agent_for(
        json!([route("/", "up")]),
        vec![h2_cluster("up", &[up.addr])],
    )
    .await;
    let mut c = H2::connect(addr).await;
    let r = c
        .send(request(
            "POST",
            "x",
            "/t",
            &[
                ("x-trailer", "done"),
                ("x-body-bytes", "100000"),
                ("te", "trailers"),
            ],
            &[7u8; 50_000],
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100_000);
    assert_eq!(
        r.trailers
            .as_ref()
            .and_then(|t| t.get("x-trailer"))
            .and_then(|v| v.to_str().ok()),
        Some("done")
    );
    // Request trailers reach the upstream too.
    let mut c = H2::connect(addr).await;
    let r = c.send(request("GET", "x", "/t", &[], b"")).await.unwrap();
    assert_eq!(r.json()["version"], "HTTP/2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_cluster_closes_its_pooled_connections() {
    let up = http_upstream::start("up").await;
    let boot = |with: bool| {
        let (routes, clusters) = if with {
            (
                json!([route("/", "up")]),
                vec![static_cluster("up", &[up.addr])],
            )
        } else {
            (
                json!([{"match": {"prefix": "/"}, "direct_response": {"status": 204}}]),
                vec![],
            )
        };
        bootstrap(vec![http_listener("in", any_host(routes))], clusters)
    };
    let agent = TestAgent::start(&boot(true)).await;
    let addr = agent.listener("in");
    for _ in 0..3 {
        assert_eq!(http_client::get(addr, "x", "/", &[]).await.status, 200);
    }
    plumb_tests::wait_until(
        "a pooled upstream connection",
        Duration::from_secs(5),
        || async { up.open() >= 1 },
    )
    .await;
    assert!(agent.reload(&boot(false)).is_empty());
    plumb_tests::wait_until(
        "the pool to close with its cluster",
        Duration::from_secs(10),
        || async { up.open() == 0 },
    )
    .await;
    assert_eq!(http_client::get(addr, "x", "/", &[]).await.status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_answers_in_flight_requests_with_connection_close() {
    let up = http_upstream::start("up").await;
    let (agent, addr) = agent_for(
        json!([route("/", "up")]),
        vec![static_cluster("up", &[up.addr])],
    )
    .await;
    let mut c = H1::connect(addr).await;
    assert_eq!(
        c.send(request("GET", "x", "/", &[], b""))
            .await
            .unwrap()
            .status,
        200
    );
    // A second keep-alive connection, idle when the drain starts.
    let mut idle = H1::connect(addr).await;
    assert_eq!(
        idle.send(request("GET", "x", "/", &[], b""))
            .await
            .unwrap()
            .status,
        200
    );
    let in_flight = tokio::spawn(async move {
        let r = c
            .send(request("GET", "x", "/", &[("x-delay-ms", "300")], b""))
            .await
            .unwrap();
        (r, c)
    });
    plumb_tests::wait_until(
        "the slow request at the upstream",
        Duration::from_secs(5),
        || async { up.requests() == 3 },
    )
    .await;
    agent.shutdown(plumb::server::ShutdownKind::Graceful);
    let (r, c) = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    // The idle connection is not closed under its client: its next request is answered,
    // with Connection: close.
    let r = idle.send(request("GET", "x", "/", &[], b"")).await.unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    plumb_tests::wait_until(
        "the client connection to close",
        Duration::from_secs(5),
        || async { c.is_closed() },
    )
    .await;
    agent.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_h2load_speak_http1_and_h2c_through_plumb() {
    let (Some(curl), Some(h2load)) = (
        plumb_tests::agent::which("curl"),
        plumb_tests::agent::which("h2load"),
    ) else {
        return plumb_tests::skip("curl or h2load not installed (cargo xtask deps installs them)");
    };
    let up = http_upstream::start("up").await;
    let (agent, addr) = agent_for(
        json!([route("/", "up")]),
        vec![static_cluster("up", &[up.addr])],
    )
    .await;
    let url = format!("http://{addr}/hello?x=1");
    for args in [
        vec!["--http1.1"],
        vec!["--http2-prior-knowledge"],
        vec!["--http2"],
    ] {
        let out = tokio::process::Command::new(&curl)
            .args(["-sS", "--max-time", "10", "-D", "-", "-H", "x-from: curl"])
            .args(&args)
            .arg(&url)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = if args[0] == "--http2-prior-knowledge" {
            "HTTP/2 200"
        } else {
            "HTTP/1.1 200"
        };
        assert!(text.starts_with(want), "{args:?}: {text}");
        assert!(
            text.contains("\"x-from\":\"curl\"") && text.contains("\"path\":\"/hello?x=1\""),
            "{args:?}: {text}"
        );
    }
    // h2load: 2,000 requests, 4 connections x 25 streams, all answered 2xx.
    let out = tokio::process::Command::new(&h2load)
        .args(["-n", "2000", "-c", "4", "-m", "25", "-T", "10"])
        .arg(format!("http://{addr}/load"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2000 succeeded") && text.contains("2000 2xx"),
        "{text}"
    );
    assert_eq!(agent.stat("http.in.downstream_rq_http2_total"), 2001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_httpx_speaks_http1_and_h2c_through_plumb() {
    let has_httpx = std::process::Command::new("python3")
        .args(["-c", "import httpx, h2"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_httpx {
        return plumb_tests::skip(
            "python3 httpx/h2 is not installed (cargo xtask deps installs it)",
        );
    }
    let up = http_upstream::start("up").await;
    let routes = json!([route("/h1/", "up"), route("/h2/", "up")]);
    let (agent, addr) = agent_for(routes, vec![static_cluster("up", &[up.addr])]).await;
    let out = tokio::process::Command::new("python3")
        .arg(format!(
            "{}/scripts/httpx_client.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(addr.to_string())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (tag, version) in [("h1", "HTTP/1.1"), ("h2", "HTTP/2")] {
        let s = &r[if tag == "h1" { "http1" } else { "http2" }];
        for (i, g) in s["gets"].as_array().unwrap().iter().enumerate() {
            assert_eq!(g["status"], 200, "{g}");
            assert_eq!(g["version"], version, "{g}");
            assert_eq!(g["path"], format!("/{tag}/{i}?q=1"), "{g}");
            assert_eq!((&g["server"], &g["method"]), (&json!("up"), &json!("GET")));
            // Plumb generated a request ID and kept the authority as the Host.
            assert_eq!(g["request_id"], true, "{g}");
            assert_eq!(g["host"], addr.to_string(), "{g}");
        }
        assert_eq!(
            (&s["post"]["status"], &s["post"]["body_len"]),
            (&json!(200), &json!(100_000))
        );
        // A body of unknown length (chunked from httpx over HTTP/1.1, DATA frames over
        // HTTP/2) arrives whole; the HTTP/1.1 upstream gets it chunked.
        let st = &s["streamed"];
        assert_eq!(
            (&st["status"], &st["body_len"]),
            (&json!(200), &json!(10_000))
        );
        assert_eq!(st["te"], "chunked", "{st}");
        assert_eq!(s["missing"], json!([404, version, ""]));
    }
    assert_eq!(up.requests(), 14);
    assert_eq!(agent.stat("http.in.downstream_cx_http2_total"), 1);
    assert!(agent.stat("http.in.downstream_cx_http1_total") >= 1);
    assert_eq!(agent.stat("http.in.no_route"), 2);
    assert_eq!(agent.stat("cluster.up.upstream_rq_200"), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_tunnelled_when_allowed_and_refused_otherwise() {
    let up = http_upstream::start("ws").await;
    let mut l = http_listener("in", any_host(json!([route("/", "ws")])));
    l["filter_chains"][0]["filters"][0]["typed_config"]["upgrade_configs"] =
        json!([{"upgrade_type": "websocket"}]);
    let mut plain = http_listener("plain", any_host(json!([route("/", "ws")])));
    plain["address"]["socket_address"]["address"] = json!("127.0.0.2");
    let agent = TestAgent::start(&bootstrap(
        vec![l, plain],
        vec![static_cluster("ws", &[up.addr])],
    ))
    .await;
    let handshake = b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut s = TcpStream::connect(agent.listener("in")).await.unwrap();
    s.write_all(handshake).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // The tunnel carries bytes both ways (frames are opaque to it).
    for msg in [
        &b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"[..],
        &[7u8; 20_000][..],
    ] {
        s.write_all(msg).await.unwrap();
        let mut echo = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echo, msg);
    }
    // Without upgrade_configs: 403.
    let refused = String::from_utf8_lossy(handshake)
        .replace("Connection: Upgrade", "Connection: Upgrade, close");
    let out = raw(agent.listener("plain"), refused.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert_eq!(agent.stat("http.plain.downstream_rq_ws_on_non_ws_route"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_max_stream_duration_and_route_timeout_cut_stalled_responses() {
    let up = http_upstream::start("up").await;
    let routes = json!([
        {"match": {"prefix": "/idle"}, "route": {"cluster": "up", "idle_timeout": "0.2s"}},
        {"match": {"prefix": "/short"}, "route": {"cluster": "up", "timeout": "0.5s"}},
        route("/", "up"),
    ]);
    let mut l = http_listener("in", any_host(routes));
    l["filter_chains"][0]["filters"][0]["typed_config"]["common_http_protocol_options"] =
        json!({"max_stream_duration": "1s"});
    let agent = TestAgent::start(&bootstrap(vec![l], vec![static_cluster("up", &[up.addr])])).await;
    let addr = agent.listener("in");
    // Chunks every 50 ms are within the idle timeout; one after 500 ms is not.
    let mut c = H1::connect(addr).await;
    let r = c
        .send(request("GET", "x", "/idle", &[("x-drip", "4,50")], b""))
        .await
        .unwrap();
    assert_eq!(r.body.len(), 40);
    let mut c = H1::connect(addr).await;
    assert!(c
        .send(request("GET", "x", "/idle", &[("x-drip", "3,500")], b""))
        .await
        .is_err());
    agent
        .wait_stat("http.in.downstream_rq_idle_timeout", |v| v == 1)
        .await;
    // 20 chunks at 100 ms each outlast the 1 s max_stream_duration.
    let mut c = H2::connect(addr).await;
    let started = std::time::Instant::now();
    assert!(c
        .send(request("GET", "x", "/long", &[("x-drip", "20,100")], b""))
        .await
        .is_err());
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
    agent
        .wait_stat("http.in.downstream_rq_max_duration_reached", |v| v == 1)
        .await;
    // The route timeout covers the whole response, as in Envoy: headers at once, then a
    // body that drips past the route's 0.5 s is cut (and counted as the route's timeout).
    let mut c = H1::connect(addr).await;
    let started = std::time::Instant::now();
    assert!(c
        .send(request("GET", "x", "/short", &[("x-drip", "10,100")], b""))
        .await
        .is_err());
    assert!(started.elapsed() < Duration::from_millis(950));
    agent
        .wait_stat("cluster.up.upstream_rq_timeout", |v| v == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_get_a_copy_with_a_shadow_host_and_never_hold_the_request_back() {
    let main = http_upstream::start("main").await;
    let shadow = http_upstream::start("shadow").await;
    // The shadow cluster's second endpoint refuses connections: mirrors that fail do not
    // touch the main request.
    let refused = plumb_tests::servers::closed_port();
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "main",
        "request_mirror_policies": [{"cluster": "shadow"}, {"cluster": "dead"}]}}]);
    let (agent, addr) = agent_for(
        routes,
        vec![
            static_cluster("main", &[main.addr]),
            static_cluster("shadow", &[shadow.addr]),
            static_cluster("dead", &[refused]),
        ],
    )
    .await;
    let mut c = H1::connect(addr).await;
    for i in 0..10 {
        let r = c
            .send(request(
                "POST",
                "api.example:8080",
                &format!("/m/{i}"),
                &[],
                b"mirrored body",
            ))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["server"], "main");
    }
    // `seen` is filled once a request's body has been read (`requests` counts arrivals).
    plumb_tests::wait_until("10 mirrored requests", Duration::from_secs(10), || async {
        shadow.seen().len() == 10
    })
    .await;
    assert_eq!(main.requests(), 10);
    // What the shadow saw: the same request, to the -shadow host, with the body.
    let seen = shadow.seen();
    assert!(
        seen.iter()
            .all(|j| j["headers"]["host"] == "api.example-shadow:8080"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .all(|j| j["body_len"] == 13 && j["method"] == "POST"),
        "{seen:?}"
    );
    let paths: std::collections::BTreeSet<String> = seen
        .iter()
        .map(|j| j["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths.len(), 10);
    agent
        .wait_stat("cluster.shadow.upstream_rq_200", |v| v == 10)
        .await;
    agent
        .wait_stat("cluster.dead.upstream_cx_connect_fail", |v| v == 10)
        .await;
    assert_eq!(agent.stat("cluster.main.upstream_rq_200"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limit_and_fault_filters_act_before_the_router() {
    let up = http_upstream::start("up").await;
    let mut l = http_listener("in", any_host(json!([route("/", "up")])));
    l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = json!([
        {"name": "envoy.filters.http.fault", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "abort": {"header_abort": {}, "percentage": {"numerator": 100}},
            "delay": {"header_delay": {}, "percentage": {"numerator": 100}}}},
        {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "edge",
            "token_bucket": {"max_tokens": 3, "tokens_per_fill": 1, "fill_interval": "60s"},
            "filter_enabled": {"default_value": {"numerator": 100}},
            "filter_enforced": {"default_value": {"numerator": 100}},
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "response_headers_to_add": [{"header": {"key": "x-limited", "value": "yes"}}]}},
        {"name": "envoy.filters.http.router"}]);
    let agent = TestAgent::start(&bootstrap(vec![l], vec![static_cluster("up", &[up.addr])])).await;
    let addr = agent.listener("in");
    // A fault the request asks for: aborted before any token is taken.
    let r = http_client::get(addr, "x", "/", &[("x-envoy-fault-abort-request", "503")]).await;
    assert_eq!((r.status, r.text().as_str()), (503, "fault filter abort"));
    assert_eq!(up.requests(), 0);
    let started = std::time::Instant::now();
    let r = http_client::get(addr, "x", "/", &[("x-envoy-fault-delay-request", "200")]).await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
    for _ in 0..2 {
        assert_eq!(http_client::get(addr, "x", "/", &[]).await.status, 200);
    }
    let r = http_client::get(addr, "x", "/", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (429, "local_rate_limited"));
    assert_eq!(r.header("x-limited"), Some("yes"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(agent.stat("edge.http_local_rate_limit.rate_limited"), 1);
    assert_eq!(agent.stat("http.in.fault.aborts_injected"), 1);
    assert_eq!(agent.stat("http.in.fault.delays_injected"), 1);
    assert_eq!(up.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_filter_answers_probes_and_follows_healthcheck_fail() {
    let up = http_upstream::start("up").await;
    let mut l = http_listener("in", any_host(json!([route("/", "up")])));
    l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = json!([
        {"name": "envoy.filters.http.health_check", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck",
            "pass_through_mode": false,
            "headers": [{"name": ":path", "string_match": {"exact": "/healthz"}}]}},
        {"name": "envoy.filters.http.router"}]);
    let agent = TestAgent::start(&bootstrap(vec![l], vec![static_cluster("up", &[up.addr])])).await;
    let addr = agent.listener("in");
    assert_eq!(
        http_client::get(addr, "x", "/healthz", &[]).await.status,
        200
    );
    assert_eq!(
        http_client::get(addr, "x", "/other", &[]).await.json()["server"],
        "up"
    );
    assert_eq!(up.requests(), 1, "probes are not passed through");
    let r = plumb_tests::client::post(agent.admin(), "/healthcheck/fail").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        http_client::get(addr, "x", "/healthz", &[]).await.status,
        503
    );
    assert_eq!(
        http_client::get(addr, "x", "/other", &[]).await.status,
        200,
        "traffic still flows"
    );
    plumb_tests::client::post(agent.admin(), "/healthcheck/ok").await;
    assert_eq!(
        http_client::get(addr, "x", "/healthz", &[]).await.status,
        200
    );
}

/// Reads `n` whole responses (Content-Length framed) from `s`; returns their status lines.
async fn responses(s: &mut TcpStream, n: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                out.push(head.lines().next().unwrap_or("").to_string());
                buf.drain(..end + 4 + len);
                continue;
            }
        }
        let k = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("responses within 10 s")
            .unwrap();
        assert!(k > 0, "closed after {} responses", out.len());
        buf.extend_from_slice(&chunk[..k]);
    }
    out
}

/// An idle HTTP/1.1 keep-alive connection gives its codec buffers back (parks) and is served
/// again when its next request comes, whole, split across writes, or pipelined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_parks_and_serves_what_comes_next() {
    let up = http_upstream::start("up").await;
    let (agent, addr) = agent_for(
        json!([route("/", "up")]),
        vec![static_cluster("up", &[up.addr])],
    )
    .await;
    let parked = || agent.stat("http.in.downstream_cx_http1_parked");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(get).await.unwrap();
    assert_eq!(responses(&mut s, 1).await, ["HTTP/1.1 200 OK"]);
    plumb_tests::wait_until("parked", Duration::from_secs(5), || async { parked() == 1 }).await;
    // The next request in two writes: the first wakes the connection with half a request.
    s.write_all(&get[..10]).await.unwrap();
    plumb_tests::wait_until("awake", Duration::from_secs(5), || async { parked() == 0 }).await;
    s.write_all(&get[10..]).await.unwrap();
    assert_eq!(responses(&mut s, 1).await, ["HTTP/1.1 200 OK"]);
    plumb_tests::wait_until("parked again", Duration::from_secs(5), || async {
        parked() == 1
    })
    .await;
    // Three pipelined requests at once, answered in order.
    let three = [&get[..], &get[..], &get[..]].concat();
    s.write_all(&three).await.unwrap();
    assert_eq!(responses(&mut s, 3).await.len(), 3);
    assert_eq!(agent.stat("http.in.downstream_cx_total"), 1);
    assert_eq!(agent.stat("http.in.downstream_rq_2xx"), 5);
    plumb_tests::wait_until("parked at the end", Duration::from_secs(5), || async {
        parked() == 1
    })
    .await;
    // The client closes a parked connection: it ends, and nothing stays counted.
    drop(s);
    plumb_tests::wait_until("closed", Duration::from_secs(5), || async {
        parked() == 0 && agent.stat("http.in.downstream_cx_active") == 0
    })
    .await;
}

/// Per-route local rate limits (`typed_per_filter_config`): a route's own bucket, a virtual
/// host's bucket shared by its routes, a route that disables the filter, and the connection
/// manager's filter (no bucket of its own) letting everything else through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limits_per_route_and_per_virtual_host() {
    let up = http_upstream::start("up").await;
    let rl = |prefix: &str, tokens: u32| {
        json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": prefix,
            "token_bucket": {"max_tokens": tokens, "tokens_per_fill": 1, "fill_interval": "3600s"},
            "filter_enabled": {"default_value": {"numerator": 100}},
            "filter_enforced": {"default_value": {"numerator": 100}}})
    };
    let mut own = route("/own", "up");
    own["typed_per_filter_config"] = json!({"envoy.filters.http.local_ratelimit": rl("own", 1)});
    let mut off = route("/off", "up");
    off["typed_per_filter_config"] = json!({"envoy.filters.http.local_ratelimit": {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true}});
    let vhosts = json!([
        {"name": "limited", "domains": ["limited"], "routes": [own, off, route("/", "up")],
         "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "config": rl("vhost", 2)}}},
        {"name": "free", "domains": ["*"], "routes": [route("/", "up")]}]);
    let mut l = http_listener("in", vhosts);
    l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = json!([
        {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "hcm"}},
        {"name": "envoy.filters.http.router"}]);
    let agent = TestAgent::start(&bootstrap(vec![l], vec![static_cluster("up", &[up.addr])])).await;
    let addr = agent.listener("in");
    let status = |host: &'static str, path: &'static str| async move {
        http_client::get(addr, host, path, &[]).await.status
    };
    // The route's own bucket: one token.
    assert_eq!(status("limited", "/own").await, 200);
    assert_eq!(status("limited", "/own").await, 429);
    // The virtual host's bucket (two tokens) covers its other routes together.
    assert_eq!(status("limited", "/a").await, 200);
    assert_eq!(status("limited", "/b").await, 200);
    assert_eq!(status("limited", "/c").await, 429);
    // Disabled on this route; and the connection manager's filter has no bucket.
    for _ in 0..5 {
        assert_eq!(status("limited", "/off").await, 200);
        assert_eq!(status("other", "/").await, 200);
    }
    assert_eq!(agent.stat("own.http_local_rate_limit.rate_limited"), 1);
    assert_eq!(agent.stat("vhost.http_local_rate_limit.rate_limited"), 1);
    assert_eq!(agent.stat("vhost.http_local_rate_limit.ok"), 2);
    assert_eq!(agent.stat("http.in.downstream_rq_4xx"), 2);
}

/// A WebSocket tunnel counts for the drain: it keeps running while the agent drains, and
/// ends at the drain's close phase (the drain time), so the agent stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_tunnel_lasts_through_the_drain_and_ends_at_its_close() {
    use plumb::server::ShutdownKind;
    let up = http_upstream::start("ws").await;
    let mut l = http_listener("in", any_host(json!([route("/", "ws")])));
    l["filter_chains"][0]["filters"][0]["typed_config"]["upgrade_configs"] =
        json!([{"upgrade_type": "websocket"}]);
    let agent = TestAgent::start_with(
        &bootstrap(vec![l], vec![static_cluster("ws", &[up.addr])]),
        plumb::server::Options {
            concurrency: 1,
            drain_time: Duration::from_millis(1500),
            ..Default::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(agent.listener("in")).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let started = std::time::Instant::now();
    agent.shutdown(ShutdownKind::Graceful);
    // Still tunnelling while the agent drains.
    let mut echo = [0u8; 3];
    s.write_all(b"abc").await.unwrap();
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"abc");
    // Closed at the end of the drain time.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the tunnel closes at the drain's end")
        .ok();
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "closed early"
    );
    tokio::time::timeout(Duration::from_secs(10), agent.join())
        .await
        .expect("the agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_cut_by_the_route_timeout_is_given_back() {
    let up = http_upstream::start("h2").await;
    let mut cluster = h2_cluster("up", &[up.addr]);
    // One stream per connection: a stream never given back would force a second connection.
    cluster["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
        ["http2_protocol_options"] = json!({"max_concurrent_streams": 1});
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "0.2s"}}]);
    // One worker: pools are per worker, so this one connection is the only one.
    let agent = TestAgent::start_with(
        &bootstrap(vec![http_listener("in", any_host(routes))], vec![cluster]),
        plumb::server::Options {
            concurrency: 1,
            ..plumb::server::Options::default()
        },
    )
    .await;
    let addr = agent.listener("in");
    let mut c = H1::connect(addr).await;
    let r = c
        .send(request("GET", "x", "/slow", &[("x-delay-ms", "1000")], b""))
        .await
        .unwrap();
    assert_eq!(r.status, 504);
    for _ in 0..3 {
        let r = c.send(request("GET", "x", "/", &[], b"")).await.unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.connections(), 1, "the cut stream was given back");
}

/// Plumb's own HTTP/1.1 client (requests without a body): a pooled connection the upstream
/// closed while it was idle is not used again — the next request goes on a new connection
/// and succeeds — and chunked responses with trailers and responses delimited by the
/// connection's close come through whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_closed_by_the_upstream_are_not_reused() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel::<usize>();
    tokio::spawn(async move {
        let mut n = 0usize;
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            n += 1;
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let Some(got) = read_head(&mut s).await else {
                    return;
                };
                let text = String::from_utf8_lossy(&got).into_owned();
                let reply: &[u8] = if text.starts_with("GET /chunked") {
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n"
                } else if text.starts_with("GET /eof") {
                    b"HTTP/1.1 200 OK\r\n\r\nuntil the close"
                } else {
                    // Keep-alive by the head, but the upstream closes once it has answered.
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                };
                let _ = s.write_all(reply).await;
                let _ = s.shutdown().await;
                drop(s);
                let _ = closed_tx.send(n);
            });
        }
    });
    let (agent, addr) =
        agent_for(json!([route("/", "up")]), vec![static_cluster("up", &[up])]).await;
    for i in 1..=3usize {
        let r = http_client::get(addr, "x", "/", &[]).await;
        assert_eq!(
            (r.status, r.body.as_ref()),
            (200, b"ok".as_slice()),
            "request {i}"
        );
        // The upstream has closed this connection before the next request.
        assert_eq!(closed.recv().await, Some(i));
    }
    let r = http_client::get(addr, "x", "/chunked", &[]).await;
    assert_eq!((r.status, r.body.as_ref()), (200, b"abcde".as_slice()));
    let r = http_client::get(addr, "x", "/eof", &[]).await;
    assert_eq!(
        (r.status, r.body.as_ref()),
        (200, b"until the close".as_slice())
    );
    assert_eq!(agent.stat("cluster.up.upstream_cx_total"), 5);
    assert_eq!(agent.stat("cluster.up.upstream_rq_503"), 0);
}

/// A pooled connection of the own HTTP/1.1 client that its upstream closes while no
/// traffic flows gives back its socket and its slot at once, not at the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_closed_by_the_upstream_are_closed_at_once() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        if read_head(&mut s).await.is_none() {
            return;
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
        // Keep-alive, until the test says: then the upstream closes the idle connection.
        let _ = close_rx.await;
        drop(s);
    });
    let (agent, addr) =
        agent_for(json!([route("/", "up")]), vec![static_cluster("up", &[up])]).await;
    let r = http_client::get(addr, "x", "/", &[]).await;
    assert_eq!((r.status, r.body.as_ref()), (200, b"ok".as_slice()));
    agent
        .wait_stat("cluster.up.upstream_cx_active", |v| v == 1)
        .await;
    close_tx.send(()).unwrap();
    agent
        .wait_stat("cluster.up.upstream_cx_active", |v| v == 0)
        .await;
    assert_eq!(agent.stat("cluster.up.upstream_cx_destroy"), 1);
}

/// Requests with and without a body go through Plumb's own HTTP/1.1 client and share its
/// pooled connections: with `max_connections: 1`, one upstream connection carries them all,
/// bodies whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_and_without_bodies_share_pooled_connections() {
    let up = http_upstream::start("up").await;
    let mut cluster = static_cluster("up", &[up.addr]);
    cluster["circuit_breakers"] = json!({"thresholds": [{"max_connections": 1}]});
    let (agent, addr) = agent_for(json!([route("/", "up")]), vec![cluster]).await;
    let mut c = H1::connect(addr).await;
    let big = vec![b'b'; 300_000];
    for (i, method) in ["GET", "POST", "GET", "PUT", "DELETE", "POST"]
        .iter()
        .enumerate()
    {
        let body: &[u8] = match (*method, i) {
            ("POST", 1) => b"payload",
            ("PUT", _) | ("POST", _) => &big,
            _ => b"",
        };
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            c.send(request(method, "x", "/", &[], body)),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} ({method}) waited for a connection"))
        .unwrap();
        assert_eq!(r.status, 200, "request {i} ({method})");
        let seen = up.seen();
        assert_eq!(seen[i]["body_len"], body.len(), "request {i} ({method})");
    }
    // One connection for all (the limit may still be met for a moment: a request's task
    // can run on another thread than the one whose pool slot has the idle connection).
    assert_eq!(up.connections(), 1);
    assert_eq!(agent.stat("cluster.up.upstream_cx_total"), 1);
}

/// A request body without a length (chunked from an HTTP/1.1 client) goes upstream chunked,
/// with its trailers; an HTTP/2 request without a length likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_without_a_length_go_upstream_chunked_with_trailers() {
    let up = http_upstream::start("up").await;
    let (_agent, addr) = agent_for(
        json!([route("/", "up")]),
        vec![static_cluster("up", &[up.addr])],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let seen = &up.seen()[0];
    assert_eq!(seen["body_len"], 11);
    assert_eq!(seen["headers"]["transfer-encoding"], "chunked", "{seen}");
    assert_eq!(seen["trailers"], json!(["x-t=1"]), "{seen}");
}

/// An upstream that answers before it has read the request's body (a 413, keeping the
/// connection open) gets its answer to the client at once; the rest of the body is not
/// sent, and the connection, out of step, is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_stops_the_upload() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!")
                    .await;
                // Keeps the connection, reading nothing more, until the proxy closes it.
                let _ = s.readable().await;
                let mut rest = [0u8; 1];
                while matches!(s.try_read(&mut rest), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
                {
                    let _ = s.readable().await;
                }
            });
        }
    });
    let (agent, addr) =
        agent_for(json!([route("/", "up")]), vec![static_cluster("up", &[up])]).await;
    let answer_to = |len: usize| async move {
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        // The client sends its body as long as it is taken; the answer comes meanwhile.
        let upload = tokio::spawn(async move {
            let head = format!("POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n\r\n");
            let _ = wr.write_all(head.as_bytes()).await;
            let _ = wr.write_all(&vec![b'b'; len]).await;
            wr
        });
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        while !got.ends_with(b"big!") {
            let n = tokio::time::timeout(Duration::from_secs(10), rd.read(&mut b))
                .await
                .expect("the early answer came through")
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
        upload.abort();
        String::from_utf8_lossy(&got).into_owned()
    };
    let first = answer_to(32 << 20).await;
    assert!(first.starts_with("HTTP/1.1 413"), "{first}");
    // The first connection is not reused: the upstream still waits for that body.
    let second = answer_to(10).await;
    assert!(second.starts_with("HTTP/1.1 413"), "{second}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(agent.stat("cluster.up.upstream_rq_413"), 2);
    assert_eq!(agent.stat("cluster.up.upstream_rq_503"), 0);
    agent
        .wait_stat("cluster.up.upstream_cx_destroy", |v| v >= 1)
        .await;
}

/// A client that goes away in the middle of its request body fails that request as the
/// client's doing: answered 400 with flag DC, not counted as the upstream's failure (no
/// 503, no reset, nothing for outlier detection) and not retried; to an HTTP/1.1 upstream
/// (the own client) and to an HTTP/2 one (hyper's, which resets the stream) alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_body_is_not_the_upstreams_failure() {
    for h2 in [false, true] {
        client_gone_mid_body(h2).await;
    }
}

async fn client_gone_mid_body(h2: bool) {
    let up = http_upstream::start("up").await;
    let mut r = route("/", "up");
    r["route"]["retry_policy"] = json!({"retry_on": "5xx,reset", "num_retries": 3});
    let mut cluster = static_cluster("up", &[up.addr]);
    if h2 {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}});
    }
    let (agent, addr) = agent_for(json!([r]), vec![cluster]).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    // Wait until the request is on its way upstream, then leave.
    agent
        .wait_stat("cluster.up.upstream_cx_active", |v| v == 1)
        .await;
    assert_eq!(agent.stat("cluster.up.upstream_rq_total"), 1);
    drop(s);
    agent
        .wait_stat("http.in.downstream_rq_4xx", |v| v == 1)
        .await;
    assert_eq!(agent.stat("cluster.up.upstream_rq_503"), 0, "h2: {h2}");
    assert_eq!(agent.stat("cluster.up.upstream_rq_rx_reset"), 0, "h2: {h2}");
    assert_eq!(agent.stat("cluster.up.upstream_rq_retry"), 0, "h2: {h2}");
    assert!(up.requests() <= 1, "not retried (h2: {h2})");
}

/// The cluster's `idle_timeout` closes a pooled connection that idled that long even when no
/// request comes (`upstream_cx_idle_timeout`), and the next request connects anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_close_after_the_idle_timeout() {
    let up = http_upstream::start("up").await;
    let mut cluster = static_cluster("up", &[up.addr]);
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "common_http_protocol_options": {"idle_timeout": "0.3s"},
            "explicit_http_config": {"http_protocol_options": {}}}});
    let (agent, addr) = agent_for(json!([route("/", "up")]), vec![cluster]).await;
    for round in 1..=2 {
        let r = http_client::get(addr, "x", "/", &[]).await;
        assert_eq!(r.status, 200, "round {round}");
        agent
            .wait_stat("cluster.up.upstream_cx_idle_timeout", |v| v == round)
            .await;
        agent
            .wait_stat("cluster.up.upstream_cx_active", |v| v == 0)
            .await;
        assert_eq!(up.connections(), round as usize);
    }
}
