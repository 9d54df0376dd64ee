//! HTTP access logs (issue 12, item 8): Envoy's default format, custom text and JSON
//! formats with response flags, filters, and reopening on SIGUSR1 for log rotation.

use plumb_tests::agent::{bootstrap, http_listener, static_cluster, AgentProcess, TestAgent};
use plumb_tests::http_client::{get, request, H1};
use plumb_tests::http_upstream;
use plumb_tests::TempDir;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

fn file_log(path: &Path, log_format: Option<Value>, filter: Option<Value>) -> Value {
    let mut tc = json!({
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path.to_str().unwrap(),
    });
    if let Some(f) = log_format {
        tc["log_format"] = f;
    }
    let mut l = json!({"name": "envoy.access_loggers.file", "typed_config": tc});
    if let Some(f) = filter {
        l["filter"] = f;
    }
    l
}

fn with_logs(up: std::net::SocketAddr, logs: Vec<Value>) -> String {
    let routes = json!([{"name": "any", "domains": ["*"], "routes": [
        {"name": "refused", "match": {"prefix": "/refused"}, "route": {"cluster": "refused"}},
        {"name": "to-up", "match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]);
    let mut l = http_listener("in", routes);
    l["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = json!(logs);
    // A port nothing listens on.
    let refused = plumb_tests::servers::closed_port();
    bootstrap(
        vec![l],
        vec![
            static_cluster("up", &[up]),
            static_cluster("refused", &[refused]),
        ],
    )
}

async fn lines(path: &Path, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    plumb_tests::wait_until(
        &format!("{n} lines in {}", path.display()),
        Duration::from_secs(10),
        || {
            got = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            let ok = got.len() >= n;
            async move { ok }
        },
    )
    .await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_follow_envoys_formats_with_flags_and_filters() {
    let up = http_upstream::start("up").await;
    let dir = TempDir::new("access-log");
    let default = dir.path.join("default.log");
    let json_log = dir.path.join("json.log");
    let errors = dir.path.join("errors.log");
    let json_format = json!({"json_format": {
        "status": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%", "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "bytes_in": "%BYTES_RECEIVED%",
        "bytes_out": "%BYTES_SENT%", "upstream": {"host": "%UPSTREAM_HOST%", "cluster": "%UPSTREAM_CLUSTER%"},
        "route": "%ROUTE_NAME%", "id": "%REQ(X-REQUEST-ID)%", "ua": "%REQ(USER-AGENT):4%",
        "details": "%RESPONSE_CODE_DETAILS%", "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"}});
    let only_errors = json!({"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 500, "runtime_key": "x"}}}});
    let agent = TestAgent::start(&with_logs(
        up.addr,
        vec![
            file_log(&default, None, None),
            file_log(&json_log, Some(json_format), None),
            file_log(&errors, Some(json!({"text_format_source": {"inline_string": "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n"}})), Some(only_errors)),
        ],
    ))
    .await;
    let addr = agent.listener("in");
    let mut c = H1::connect(addr).await;
    let r = c
        .send(request(
            "POST",
            "svc.local",
            "/hello?x=1",
            &[("user-agent", "curlish/1"), ("x-request-id", "req-1")],
            b"12345",
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let body_len = r.body.len();
    let r = c
        .send(request(
            "GET",
            "svc.local",
            "/fail",
            &[("x-fail-key", "f"), ("x-fail-times", "1")],
            b"",
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 503);

    let d = lines(&default, 2).await;
    // [START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS RX TX DURATION SERVICE-TIME "XFF" "UA" "ID" "AUTHORITY" "UPSTREAM"
    let first = &d[0];
    assert!(first.starts_with('['), "{first}");
    let want = format!("] \"POST /hello?x=1 HTTP/1.1\" 200 - 5 {body_len} ");
    assert!(first.contains(&want), "{first}\nwant: {want}");
    assert!(
        first.ends_with(&format!(
            "\"-\" \"curlish/1\" \"req-1\" \"svc.local\" \"{}\"",
            up.addr
        )),
        "{first}"
    );
    let j: Vec<Value> = lines(&json_log, 2)
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(j[0]["status"], 200);
    assert_eq!(j[0]["flags"], Value::Null);
    assert_eq!(j[0]["method"], "POST");
    assert_eq!(j[0]["path"], "/hello?x=1");
    assert_eq!(j[0]["bytes_in"], 5);
    assert_eq!(j[0]["bytes_out"], body_len as u64);
    assert_eq!(j[0]["upstream"]["cluster"], "up");
    assert_eq!(j[0]["upstream"]["host"], up.addr.to_string());
    assert_eq!(j[0]["route"], "to-up");
    assert_eq!(j[0]["id"], "req-1");
    assert_eq!(j[0]["ua"], "curl");
    assert_eq!(j[0]["details"], "via_upstream");
    assert_eq!(j[0]["attempts"], 1);
    assert_eq!(j[1]["status"], 503);
    // Only the error reached the filtered log.
    let e = lines(&errors, 1).await;
    assert_eq!(e, vec!["503 - -"]);

    // A local reply carries its flag and the transport failure.
    let r = get(addr, "svc.local", "/refused", &[]).await;
    assert_eq!(r.status, 503);
    let e = lines(&errors, 2).await;
    assert!(e[1].starts_with("503 UF connect to "), "{e:?}");
    assert_eq!(agent.stat("access_log.dropped"), 0);
    // The writer takes queued lines every 20 ms: the other logs' last lines may still be
    // on their way when the error log's arrived.
    agent.wait_stat("access_log.written", |v| v >= 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_after_rotation() {
    let up = http_upstream::start("up").await;
    let dir = TempDir::new("access-log-rotate");
    let log = dir.path.join("access.log");
    let fmt = json!({"text_format": "%REQ(:PATH)%\n"});
    let mut agent = AgentProcess::spawn(
        &with_logs(up.addr, vec![file_log(&log, Some(fmt), None)]),
        &[],
    )
    .await;
    let addr = agent.listener("in").await;
    assert_eq!(get(addr, "x", "/one", &[]).await.status, 200);
    assert_eq!(lines(&log, 1).await, vec!["/one"]);
    let rotated = dir.path.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    agent.signal(libc::SIGUSR1);
    // The reopen happens on the writer's next turn; requests meanwhile may still land in the
    // rotated file, so keep asking until one reaches the new file.
    plumb_tests::wait_until(
        "a line in the new file",
        Duration::from_secs(10),
        || async {
            let _ = get(addr, "x", "/two", &[]).await;
            std::fs::read_to_string(&log).is_ok_and(|s| s.contains("/two"))
        },
    )
    .await;
    assert!(std::fs::read_to_string(&rotated)
        .unwrap()
        .starts_with("/one\n"));
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).await.is_some());
}

/// The TCP proxy writes access log lines too (issue 12, item 8): the same formats, HTTP fields
/// as `-`, bytes each way, the upstream, and the flags of connections that failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_connections_are_logged_with_bytes_upstream_and_flags() {
    use plumb_tests::agent::tcp_listener;
    use plumb_tests::servers::{self, Behavior};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = servers::start(Behavior::Echo).await;
    let dir = TempDir::new("tcp-access-log");
    let text = dir.path.join("tcp.log");
    let json_path = dir.path.join("tcp.json");
    let logs = json!([
        file_log(&text, None, None),
        file_log(
            &json_path,
            Some(json!({"json_format": {
            "flags": "%RESPONSE_FLAGS%", "rx": "%BYTES_RECEIVED%", "tx": "%BYTES_SENT%",
            "upstream": "%UPSTREAM_HOST%", "cluster": "%UPSTREAM_CLUSTER%",
            "code": "%RESPONSE_CODE%", "method": "%REQ(:METHOD)%"}})),
            None
        ),
    ]);
    let mut ok = tcp_listener("ok", "echo");
    ok["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = logs.clone();
    let mut refused = tcp_listener("refused", "refused");
    refused["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = logs;
    refused["address"]["socket_address"]["address"] = json!("127.0.0.2");
    let closed = plumb_tests::servers::closed_port();
    let agent = TestAgent::start(&bootstrap(
        vec![ok, refused],
        vec![
            static_cluster("echo", &[echo.addr]),
            static_cluster("refused", &[closed]),
        ],
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(agent.listener("ok"))
        .await
        .unwrap();
    s.write_all(b"hello plumb").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello plumb");
    let j = lines(&json_path, 1).await;
    let first: Value = serde_json::from_str(&j[0]).unwrap();
    assert_eq!(
        first,
        json!({"flags": null, "rx": 11, "tx": 11, "upstream": echo.addr.to_string(),
               "cluster": "echo", "code": 0, "method": null})
    );
    let t = lines(&text, 1).await;
    assert!(
        t[0].contains("\"- - -\" 0 - 11 11 ") && t[0].contains(&format!("\"{}\"", echo.addr)),
        "{}",
        t[0]
    );
    // A connect failure: UF, no bytes.
    let mut s = tokio::net::TcpStream::connect(agent.listener("refused"))
        .await
        .unwrap();
    let mut none = Vec::new();
    let _ = s.read_to_end(&mut none).await;
    let j = lines(&json_path, 2).await;
    let second: Value = serde_json::from_str(&j[1]).unwrap();
    assert_eq!(second["flags"], "UF");
    assert_eq!(second["rx"], 0);
    assert_eq!(second["upstream"], closed.to_string());
}
