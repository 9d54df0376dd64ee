//! gRPC through the connection manager (issue 12, item 6), with Python grpcio on both ends and
//! with tonic on both ends:
//! unary, server streaming, client streaming and bidi calls; `grpc-timeout` honoured
//! (`max_grpc_timeout`, `grpc_timeout_offset`) with Plumb's own DEADLINE_EXCEEDED; an
//! upstream gRPC error passing through in trailers; `grpc_stats` counters.

use plumb_tests::agent::{bootstrap, http_listener, static_cluster, TestAgent};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn grpcio() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success())
}

/// A child process killed and reaped when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_calls_of_every_kind_pass_with_deadlines_errors_and_stats() {
    if !grpcio() {
        return plumb_tests::skip("python3 grpcio is not installed (cargo xtask deps installs it)");
    }
    let mut server = Reaped(
        Command::new("python3")
            .arg(script("grpc_echo.py"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the gRPC server"),
    );
    let mut port = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", port.trim()).parse().unwrap();

    let mut cluster = static_cluster("echo", &[upstream]);
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}});
    let routes = json!([{"name": "any", "domains": ["*"], "routes": [{"match": {"prefix": "/", "grpc": {}},
        "route": {"cluster": "echo", "max_grpc_timeout": "0s", "grpc_timeout_offset": "0.5s"}}]}]);
    let mut listener = http_listener("in", routes);
    let tc = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
    tc["http_filters"] = json!([
        {"name": "envoy.filters.http.grpc_stats", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
            "stats_for_all_methods": true}},
        {"name": "envoy.filters.http.router"}]);
    let agent = TestAgent::start(&bootstrap(vec![listener], vec![cluster])).await;
    let addr = agent.listener("in");

    let out = tokio::process::Command::new("python3")
        .arg(script("grpc_client.py"))
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
    assert_eq!(r["unary"], "echo:hi");
    assert_eq!(r["server_stream"], json!(["0", "1", "2"]));
    assert_eq!(r["client_stream"], "a|b|c");
    assert_eq!(r["bidi"], json!(["bidi:x", "bidi:y"]));
    // The client's 1 s deadline, less the 0.5 s offset, made Plumb answer first.
    assert_eq!(
        r["deadline"],
        json!(["DEADLINE_EXCEEDED", "upstream request timeout"])
    );
    assert_eq!(agent.stat("cluster.echo.upstream_rq_timeout"), 1);
    // An upstream gRPC error passes through, status and message, in trailers.
    assert_eq!(r["fail"], json!(["UNAVAILABLE", "asked to fail"]));
    let s = |m: &str, k: &str| agent.stat(&format!("cluster.echo.grpc.test.Echo.{m}.{k}"));
    plumb_tests::wait_until("gRPC stats", std::time::Duration::from_secs(5), || async {
        s("Bidi", "total") == 1 && s("Unary", "total") == 3
    })
    .await;
    assert_eq!(
        (
            s("Unary", "total"),
            s("Unary", "success"),
            s("Unary", "failure")
        ),
        // The call Plumb answered with DEADLINE_EXCEEDED is a failure too, as in Envoy.
        (3, 1, 2)
    );
    assert_eq!(
        (
            s("ServerStream", "success"),
            s("ClientStream", "success"),
            s("Bidi", "success")
        ),
        (1, 1, 1)
    );
    assert_eq!(agent.stat("http.in.downstream_cx_http2_total"), 1);
}

/// The listener and cluster of both tests: an HTTP/2 upstream, gRPC routes with
/// `max_grpc_timeout: 0s` (the client's deadline) less a 0.5 s offset, and grpc_stats.
fn grpc_config(upstream: std::net::SocketAddr, upstream_http1: bool) -> String {
    let mut cluster = static_cluster("echo", &[upstream]);
    if !upstream_http1 {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}});
    }
    let routes = json!([{"name": "any", "domains": ["*"], "routes": [{"match": {"prefix": "/", "grpc": {}},
        "route": {"cluster": "echo", "max_grpc_timeout": "0s", "grpc_timeout_offset": "0.5s"}}]}]);
    let mut listener = http_listener("in", routes);
    let tc = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
    tc["http_filters"] = json!([
        {"name": "envoy.filters.http.grpc_stats", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
            "stats_for_all_methods": true}},
        {"name": "envoy.filters.http.router"}]);
    bootstrap(vec![listener], vec![cluster])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_calls_of_every_kind_pass_with_deadlines_errors_and_stats() {
    let (upstream, _server) = plumb_tests::grpc::serve().await;
    let agent = TestAgent::start(&grpc_config(upstream, false)).await;
    let mut c = plumb_tests::grpc::Client::connect(agent.listener("in"))
        .await
        .unwrap();
    assert_eq!(c.unary("hi", None).await.unwrap(), "echo:hi");
    assert_eq!(c.server_stream(3).await.unwrap(), ["0", "1", "2"]);
    assert_eq!(c.client_stream(&["a", "b", "c"]).await.unwrap(), "a|b|c");
    assert_eq!(c.bidi(&["x", "y"]).await.unwrap(), ["bidi:x", "bidi:y"]);
    // A 1 s deadline less the 0.5 s offset: Plumb answers DEADLINE_EXCEEDED before the
    // upstream's 3 s sleep ends, and well before the client's own deadline.
    let started = std::time::Instant::now();
    let e = c
        .unary("sleep:3000", Some(std::time::Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert_eq!(e.message(), "upstream request timeout");
    assert!(started.elapsed() < std::time::Duration::from_millis(950));
    assert_eq!(agent.stat("cluster.echo.upstream_rq_timeout"), 1);
    // An upstream gRPC error passes through, status and message, in trailers.
    let e = c.unary("fail", None).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::Unavailable, "asked to fail")
    );
    let s = |m: &str, k: &str| agent.stat(&format!("cluster.echo.grpc.test.Echo.{m}.{k}"));
    plumb_tests::wait_until("gRPC stats", std::time::Duration::from_secs(5), || async {
        s("Bidi", "total") == 1 && s("Unary", "total") == 3
    })
    .await;
    assert_eq!(
        (
            s("Unary", "total"),
            s("Unary", "success"),
            s("Unary", "failure")
        ),
        (3, 1, 2)
    );
    assert_eq!(
        (
            s("ServerStream", "success"),
            s("ClientStream", "success"),
            s("Bidi", "success")
        ),
        (1, 1, 1)
    );
    assert_eq!(agent.stat("http.in.downstream_cx_http2_total"), 1);
}

/// A tonic client through Plumb to a gRPC server on a cluster left at HTTP/1.1 (no HTTP/2
/// options, a common misconfiguration): the call fails at once with a gRPC status, not a hang
/// or an HTTP error the client cannot read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_to_an_http1_cluster_fails_with_a_grpc_status_not_a_hang() {
    let (upstream, _server) = plumb_tests::grpc::serve().await;
    let agent = TestAgent::start(&grpc_config(upstream, true)).await;
    let mut c = plumb_tests::grpc::Client::connect(agent.listener("in"))
        .await
        .unwrap();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        c.unary("hi", Some(std::time::Duration::from_secs(5))),
    )
    .await
    .expect("an answer, not a hang");
    let e = r.unwrap_err();
    // The upstream (HTTP/2 only) drops the HTTP/1.1 connection: Plumb's 503 UC as a
    // trailers-only gRPC answer, UNAVAILABLE.
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    plumb_tests::wait_until(
        "the failure counted",
        std::time::Duration::from_secs(5),
        || async { agent.stat("cluster.echo.grpc.test.Echo.Unary.failure") == 1 },
    )
    .await;
}
