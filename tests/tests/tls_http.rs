//! HTTPS and mTLS carrying HTTP: curl over HTTP/1.1 and HTTP/2 (ALPN) with client
//! certificates, RBAC per identity at L4 and per HTTP route, the TLS access-log operators,
//! and two Plumb agents speaking mTLS to each other (node A originates, node B terminates)
//! carrying HTTP/1.1, HTTP/2 and gRPC.

use plumb_tests::agent::{bootstrap, http_listener, static_cluster, tcp_listener, TestAgent};
use plumb_tests::servers::{self, Behavior};
use plumb_tests::tls::{self, Ca};
use plumb_tests::{grpc, http_client, http_upstream, TempDir};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

fn listener_stat(addr: SocketAddr, stat: &str) -> String {
    format!("listener.{}.{stat}", addr.to_string().replace(':', "_"))
}

fn h2_cluster(name: &str, endpoints: &[SocketAddr]) -> Value {
    let mut c = static_cluster(name, endpoints);
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}});
    c
}

/// A mTLS validation context trusting `ca`, requiring a client certificate.
fn mtls(ca: &Ca, extra: Value) -> Value {
    let mut v = json!({
        "require_client_certificate": true,
        "common_tls_context": {"validation_context": {"trusted_ca": tls::inline(&ca.pem)}},
    });
    tls::merge(&mut v, extra);
    v
}

fn rbac_allow(principal_uri: &str) -> Value {
    json!({"action": "ALLOW", "policies": {"only": {
        "permissions": [{"any": true}],
        "principals": [{"authenticated": {"principal_name": {"exact": principal_uri}}}],
    }}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_https_over_http1_and_h2_with_rbac_per_route_and_tls_log_fields() {
    let Some(curl) = plumb_tests::agent::which("curl") else {
        return plumb_tests::skip("curl not installed (cargo xtask deps installs it)");
    };
    let ca = Ca::new("web ca");
    let server = ca.server(&["www.example"]);
    let client = ca.identity("spiffe://test/ns/web/sa/client");
    let dir = TempDir::new("tls-http");
    let (ca_file, cert_file, key_file) = (
        dir.write("ca.pem", &ca.pem),
        dir.write("client.pem", &client.cert),
        dir.write("client.key", &client.key),
    );
    let log = dir.path.join("access.log");
    let up = http_upstream::start("up").await;
    let routes = json!([{"name": "any", "domains": ["*"], "routes": [
        {"name": "admin", "match": {"prefix": "/admin"}, "route": {"cluster": "up"},
         "typed_per_filter_config": {"envoy.filters.http.rbac": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
            "rbac": {"rules": rbac_allow("spiffe://test/ns/ops/sa/admin")}}}},
        {"name": "open", "match": {"prefix": "/open"}, "route": {"cluster": "up"},
         "typed_per_filter_config": {"envoy.filters.http.rbac": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"}}},
        {"name": "rest", "match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]);
    let mut l = http_listener("in", routes);
    let hcm = &mut l["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["http_filters"] = json!([
        {"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": rbac_allow("spiffe://test/ns/web/sa/client"),
            "shadow_rules": {"action": "DENY", "policies": {"all": {
                "permissions": [{"any": true}], "principals": [{"any": true}]}}}}},
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
    ]);
    hcm["access_log"] = json!([{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": log.to_str().unwrap(),
        "log_format": {"text_format_source": {"inline_string":
            "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %PROTOCOL% %DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_PEER_URI_SAN% %REQUESTED_SERVER_NAME%\n"}},
    }}]);
    l["filter_chains"][0]["transport_socket"] = tls::downstream_tls(
        &[&server],
        mtls(
            &ca,
            json!({"common_tls_context": {"alpn_protocols": ["h2", "http/1.1"]}}),
        ),
    );
    let agent = TestAgent::start(&bootstrap(vec![l], vec![static_cluster("up", &[up.addr])])).await;
    let addr = agent.listener("in");
    let curl_get = |version: &'static str, path: &'static str| {
        let curl = curl.clone();
        let (ca_file, cert_file, key_file) = (ca_file.clone(), cert_file.clone(), key_file.clone());
        async move {
            let out = tokio::process::Command::new(&curl)
                .args([
                    "-sS",
                    "--max-time",
                    "10",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_version} %{http_code}",
                ])
                .arg(version)
                .arg("--cacert")
                .arg(&ca_file)
                .arg("--cert")
                .arg(&cert_file)
                .arg("--key")
                .arg(&key_file)
                .arg("--resolve")
                .arg(format!("www.example:{}:127.0.0.1", addr.port()))
                .arg(format!("https://www.example:{}{path}", addr.port()))
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    assert_eq!(curl_get("--http1.1", "/hello").await, "1.1 200");
    assert_eq!(curl_get("--http2", "/hello").await, "2 200");
    // The route's own policy admits only the ops identity.
    assert_eq!(curl_get("--http2", "/admin/x").await, "2 403");
    // RBACPerRoute without rbac: the filter is off for /open.
    assert_eq!(curl_get("--http1.1", "/open").await, "1.1 200");
    assert_eq!(up.requests(), 3);
    agent.wait_stat("http.in.rbac.allowed", |v| v == 2).await;
    assert_eq!(agent.stat("http.in.rbac.denied"), 1);
    // The route's own RBAC replaces the filter's whole config, shadow rules included.
    assert_eq!(agent.stat("http.in.rbac.shadow_denied"), 2);
    assert_eq!(agent.stat(&listener_stat(addr, "ssl.handshake")), 4);
    // One line per request, with the TLS fields.
    plumb_tests::wait_until("access log", Duration::from_secs(10), || {
        let log = log.clone();
        async move { std::fs::read_to_string(&log).is_ok_and(|s| s.lines().count() == 4) }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let id = "TLSv1.3 spiffe://test/ns/web/sa/client www.example";
    assert!(
        text.contains(&format!("/hello 200 - HTTP/1.1 {id}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("/hello 200 - HTTP/2 {id}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("/admin/x 403 RBAC HTTP/2 {id}")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_rbac_admits_one_spiffe_identity_and_closes_the_others() {
    let ca = Ca::new("mesh ca");
    let server = ca.server(&["db.mesh"]);
    let backend = servers::start(Behavior::Named("db".into())).await;
    let mut l = tcp_listener("db", "db");
    l["filter_chains"][0]["transport_socket"] =
        tls::downstream_tls(&[&server], mtls(&ca, json!({})));
    let filters = l["filter_chains"][0]["filters"].as_array().unwrap().clone();
    let mut with_rbac = vec![
        json!({"name": "envoy.filters.network.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
            "stat_prefix": "db",
            "rules": rbac_allow("spiffe://test/ns/app/sa/api"),
        }}),
    ];
    with_rbac.extend(filters);
    l["filter_chains"][0]["filters"] = json!(with_rbac);
    let agent = TestAgent::start(&bootstrap(
        vec![l],
        vec![static_cluster("db", &[backend.addr])],
    ))
    .await;
    let addr = agent.listener("db");
    let api = ca.identity("spiffe://test/ns/app/sa/api");
    let (got, _) = tls::fetch(
        addr,
        "db.mesh",
        tls::client_config(&ca.pem, &[], Some(&api)),
    )
    .await
    .unwrap();
    assert_eq!(got, b"db");
    let other = ca.identity("spiffe://test/ns/app/sa/web");
    let denied = tls::fetch(
        addr,
        "db.mesh",
        tls::client_config(&ca.pem, &[], Some(&other)),
    )
    .await;
    assert!(
        denied.map_or(true, |(g, _)| g.is_empty()),
        "denied got bytes"
    );
    agent.wait_stat("db.rbac.denied", |v| v == 1).await;
    assert_eq!(agent.stat("db.rbac.allowed"), 1);
    assert_eq!(
        backend.accepted(),
        1,
        "the denied connection never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_speak_mtls_carrying_http1_http2_and_grpc() {
    let ca = Ca::new("mesh ca");
    let b_cert = ca.leaf(plumb_tests::tls::LeafSpec {
        dns: &["b.mesh"],
        uris: &["spiffe://test/ns/b/sa/node"],
        ..Default::default()
    });
    let a_cert = ca.identity("spiffe://test/ns/a/sa/node");
    let up = http_upstream::start("up").await;
    let (grpc_addr, _grpc) = grpc::serve().await;

    // Node B terminates mTLS from node A only, and routes to its local services.
    let routes_b = json!([{"name": "any", "domains": ["*"], "routes": [
        {"match": {"prefix": "/test.Echo/"}, "route": {"cluster": "grpc"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]);
    let mut lb = http_listener("b-in", routes_b);
    lb["filter_chains"][0]["transport_socket"] = tls::downstream_tls(
        &[&b_cert],
        mtls(
            &ca,
            json!({"common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "validation_context": {"match_typed_subject_alt_names": [{"san_type": "URI",
                "matcher": {"exact": "spiffe://test/ns/a/sa/node"}}]}}}),
        ),
    );
    let node_b = TestAgent::start(&bootstrap(
        vec![lb],
        vec![
            static_cluster("up", &[up.addr]),
            h2_cluster("grpc", &[grpc_addr]),
        ],
    ))
    .await;
    let b_addr = node_b.listener("b-in");

    // Node A: plain HTTP in, mTLS out to node B (HTTP/2 and HTTP/1.1 clusters).
    let origin = tls::upstream_tls(json!({
        "sni": "b.mesh",
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": tls::inline(&a_cert.cert),
                "private_key": tls::inline(&a_cert.key)}],
            "validation_context": {"trusted_ca": tls::inline(&ca.pem),
                "match_typed_subject_alt_names": [{"san_type": "URI",
                    "matcher": {"exact": "spiffe://test/ns/b/sa/node"}}]},
        },
    }));
    let mut to_b = h2_cluster("to-b", &[b_addr]);
    to_b["transport_socket"] = origin.clone();
    let mut to_b_h1 = static_cluster("to-b-h1", &[b_addr]);
    to_b_h1["transport_socket"] = origin;
    let routes_a = json!([{"name": "any", "domains": ["*"], "routes": [
        {"match": {"prefix": "/h1/"}, "route": {"cluster": "to-b-h1"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "to-b"}}]}]);
    let node_a = TestAgent::start(&bootstrap(
        vec![http_listener("a-in", routes_a)],
        vec![to_b, to_b_h1],
    ))
    .await;
    let a_addr = node_a.listener("a-in");

    // HTTP/1.1 from the workload; HTTP/2 between the nodes.
    let r = http_client::get(a_addr, "svc", "/over-h2", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // HTTP/1.1 between the nodes (ALPN http/1.1).
    let r = http_client::get(a_addr, "svc", "/h1/over-h1", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Request bodies over mTLS on pooled HTTP/1.1 connections: large ones (more than the
    // TLS session buffers; the upload must flush them out) and small ones, on one
    // connection.
    let mut h1 = http_client::H1::connect(a_addr).await;
    let big = vec![b'u'; 8 << 20];
    for (i, body) in [&big[..], b"small", &big[..]].into_iter().enumerate() {
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            h1.send(http_client::request("POST", "svc", "/h1/upload", &[], body)),
        )
        .await
        .unwrap_or_else(|_| panic!("upload {i} hung"))
        .unwrap();
        assert_eq!(r.status, 200, "upload {i}");
        assert_eq!(
            up.seen().last().unwrap()["body_len"],
            body.len(),
            "upload {i}"
        );
    }

    // gRPC (h2c to node A, h2 over mTLS between the nodes, h2c to the service).
    let mut c = grpc::Client::connect(a_addr).await.unwrap();
    assert_eq!(c.unary("mesh", None).await.unwrap(), "echo:mesh");
    assert_eq!(c.server_stream(3).await.unwrap(), vec!["0", "1", "2"]);

    assert_eq!(up.requests(), 5);
    assert!(node_b.stat("http.b-in.downstream_rq_http2_total") >= 2);
    assert!(node_b.stat("http.b-in.downstream_rq_http1_total") >= 1);
    assert!(node_a.stat("cluster.to-b.ssl.handshake") >= 1);
    assert_eq!(node_a.stat("cluster.to-b-h1.ssl.handshake"), 1);
    assert!(node_b.stat(&listener_stat(b_addr, "ssl.handshake")) >= 2);
    assert_eq!(
        node_b.stat(&listener_stat(b_addr, "ssl.fail_verify_san")),
        0
    );
}

/// `auto_config` clusters: HTTP/2 to a server whose ALPN says `h2`, HTTP/1.1 to one that
/// only speaks `http/1.1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_config_clusters_speak_what_alpn_negotiates() {
    let ca = Ca::new("alpn ca");
    let cert = ca.server(&["b.mesh"]);
    let up = http_upstream::start("up").await;
    let routes = json!([{"name": "any", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]);
    let terminating = |name: &str, alpn: &[&str], ip: &str| {
        let mut l = http_listener(name, routes.clone());
        l["address"]["socket_address"]["address"] = json!(ip);
        l["filter_chains"][0]["transport_socket"] = tls::downstream_tls(
            &[&cert],
            json!({"common_tls_context": {"alpn_protocols": alpn}}),
        );
        l
    };
    let node_b = TestAgent::start(&bootstrap(
        vec![
            terminating("h2", &["h2", "http/1.1"], "127.0.0.1"),
            terminating("h1", &["http/1.1"], "127.0.0.2"),
        ],
        vec![static_cluster("up", &[up.addr])],
    ))
    .await;
    let auto = |name: &str, addr: SocketAddr| {
        let mut c = static_cluster(name, &[addr]);
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "auto_config": {"http2_protocol_options": {}}}});
        c["transport_socket"] = tls::upstream_tls(json!({"sni": "b.mesh",
            "common_tls_context": {"validation_context": {"trusted_ca": tls::inline(&ca.pem)}}}));
        c
    };
    let routes_a = json!([{"name": "any", "domains": ["*"], "routes": [
        {"match": {"prefix": "/to-h1"}, "route": {"cluster": "auto-h1"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "auto-h2"}}]}]);
    let node_a = TestAgent::start(&bootstrap(
        vec![http_listener("a-in", routes_a)],
        vec![
            auto("auto-h2", node_b.listener("h2")),
            auto("auto-h1", node_b.listener("h1")),
        ],
    ))
    .await;
    let a = node_a.listener("a-in");
    for path in ["/x", "/y", "/to-h1/x", "/to-h1/y"] {
        let r = http_client::get(a, "svc", path, &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    assert_eq!(node_b.stat("http.h2.downstream_rq_http2_total"), 2);
    assert_eq!(node_b.stat("http.h1.downstream_rq_http1_total"), 2);
    // One HTTP/2 connection per worker at most (the pools are per worker).
    assert!((1..=2).contains(&node_a.stat("cluster.auto-h2.upstream_cx_http2_total")));
    assert_eq!(node_a.stat("cluster.auto-h1.upstream_cx_http2_total"), 0);
    assert_eq!(up.requests(), 4);
}

/// `auto_sni`: each request's host is the SNI of its connection (pooled per name), and with
/// `auto_san_validation` the server certificate must be valid for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_sni_sends_the_request_host_and_validates_it() {
    let ca = Ca::new("sni ca");
    let a = ca.server(&["a.svc"]);
    let b = ca.server(&["b.svc"]);
    let up = http_upstream::start("up").await;
    let routes = json!([{"name": "any", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]);
    // The server picks its certificate by SNI: a.svc or b.svc.
    let mut l = http_listener("tls-in", routes);
    l["filter_chains"][0]["transport_socket"] = tls::downstream_tls(&[&a, &b], json!({}));
    let node_b =
        TestAgent::start(&bootstrap(vec![l], vec![static_cluster("up", &[up.addr])])).await;
    let mut c = static_cluster("out", &[node_b.listener("tls-in")]);
    c["transport_socket"] = tls::upstream_tls(json!({
        "common_tls_context": {"validation_context": {"trusted_ca": tls::inline(&ca.pem)}}}));
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "upstream_http_protocol_options": {"auto_sni": true, "auto_san_validation": true},
            "explicit_http_config": {"http_protocol_options": {}}}});
    let node_a = TestAgent::start(&bootstrap(
        vec![http_listener(
            "in",
            json!([{"name": "any", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "out"}}]}]),
        )],
        vec![c],
    ))
    .await;
    let addr = node_a.listener("in");
    for host in ["a.svc", "b.svc", "a.svc:8443"] {
        let r = http_client::get(addr, host, "/", &[]).await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
    }
    // A name neither certificate is valid for: the connection is refused (the server sends
    // its first certificate, which is not valid for c.svc).
    let r = http_client::get(addr, "c.svc", "/", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(up.requests(), 3);
    // One connection per name (a.svc reused; per worker at most two).
    let handshakes = node_a.stat("cluster.out.ssl.handshake");
    assert!((2..=4).contains(&handshakes), "{handshakes}");
    assert_eq!(node_a.stat("cluster.out.ssl.fail_verify_error"), 1);
}
