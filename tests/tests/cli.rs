//! The real `plumb` binary: check-config errors, run with an Envoy bootstrap, signals and drain.

use plumb_tests::agent::{plumb_cmd, AgentProcess};
use plumb_tests::client::{get, post, roundtrip};
use plumb_tests::servers::{self, Behavior};
use plumb_tests::TempDir;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An Envoy-style TCP proxy bootstrap, in the YAML shape users copy from Envoy's docs.
fn envoy_yaml(upstream_port: u16) -> String {
    format!(
        r#"
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: listener_0
    address:
      socket_address: {{ address: 127.0.0.1, port_value: 0 }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: destination
          cluster: cluster_0
  clusters:
  - name: cluster_0
    connect_timeout: 0.25s
    type: STATIC
    lb_policy: ROUND_ROBIN
    circuit_breakers:
      thresholds:
      - max_connections: 1000
    load_assignment:
      cluster_name: cluster_0
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: 127.0.0.1
                port_value: {upstream_port}
"#
    )
}

fn check(yaml: &str) -> (i32, String, String) {
    let dir = TempDir::new("check");
    let path = dir.write("bad.yaml", yaml);
    let (st, out, err) = plumb_cmd(&["check-config", path.to_str().unwrap()]);
    assert!(!err.contains("panicked"), "plumb panicked:\n{err}");
    (st.code().unwrap_or(-1), out, err)
}

#[test]
fn check_config_accepts_an_envoy_bootstrap_and_summarizes_it() {
    let (code, out, err) = check(&envoy_yaml(8080));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": OK\n"), "{out}");
    assert!(
        out.contains("listener_0 127.0.0.1:0 tcp_proxy -> cluster cluster_0"),
        "{out}"
    );
    assert!(
        out.contains("cluster_0 STATIC ROUND_ROBIN endpoints=1"),
        "{out}"
    );
    // Circuit breakers are enforced now: no warning about them.
    assert!(!out.contains("circuit_breakers"), "{out}");
}

#[test]
fn check_config_names_the_field_path_of_each_error() {
    let good = envoy_yaml(8080);
    let cases: Vec<(String, &str)> = vec![
        ("static_resources:\n  listeners: [\n".to_string(), "invalid YAML"),
        (
            good.replace("cluster: cluster_0", "cluster: nope"),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.cluster: unknown cluster \"nope\"",
        ),
        (
            good.replace("port_value: 8080", "port_value: 99999"),
            "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: 99999 is out of range [0, 65535]",
        ),
        (
            good.replace("          stat_prefix: destination\n", ""),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.stat_prefix: missing required field",
        ),
        (
            good.replace("lb_policy: ROUND_ROBIN", "lb_policy: FASTEST"),
            "static_resources.clusters[0].lb_policy: unknown value \"FASTEST\"",
        ),
        (
            good.replace("connect_timeout: 0.25s", "connect_timeout: 250ms"),
            "static_resources.clusters[0].connect_timeout: invalid duration \"250ms\"",
        ),
        (
            good.replace("    type: STATIC", "    type: STATIC\n    colour: blue"),
            "static_resources.clusters[0].colour: unknown field \"colour\"",
        ),
        (String::new(), "the configuration is empty"),
    ];
    for (yaml, want) in cases {
        let (code, out, err) = check(&yaml);
        assert_eq!(code, 1, "expected failure for {want:?}; stdout:\n{out}");
        assert!(err.contains(want), "expected {want:?} in:\n{err}");
        assert!(err.starts_with("error: "), "{err}");
    }
}

#[test]
fn check_config_on_a_missing_file_fails_cleanly() {
    let (st, _, err) = plumb_cmd(&["check-config", "/nonexistent/plumb.yaml"]);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("cannot read /nonexistent/plumb.yaml"), "{err}");
}

#[test]
fn version_prints_the_crate_version() {
    let (st, out, _) = plumb_cmd(&["version"]);
    assert!(st.success());
    assert_eq!(out, format!("plumb {}\n", plumb::VERSION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_an_invalid_config_exits_non_zero_without_starting() {
    let dir = TempDir::new("badrun");
    let path = dir.write(
        "bad.yaml",
        &envoy_yaml(8080).replace("cluster: cluster_0", "cluster: x"),
    );
    let (st, _, err) = plumb_cmd(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("unknown cluster \"x\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_proxies_traffic_with_an_envoy_bootstrap() {
    let echo = servers::start(Behavior::Echo).await;
    let agent = AgentProcess::spawn(&envoy_yaml(echo.addr.port()), &["--concurrency", "2"]).await;
    let front = agent.listener("listener_0").await;
    assert_eq!(
        roundtrip(front, b"through plumb").await.unwrap(),
        b"through plumb"
    );
    let admin = agent.admin;
    plumb_tests::wait_until(
        "stats count the connection",
        Duration::from_secs(10),
        || async move {
            get(admin, "/stats")
                .await
                .body
                .contains("tcp.destination.downstream_cx_total: 1\n")
        },
    )
    .await;
    let r = get(admin, "/stats").await;
    assert!(
        r.body.contains("cluster.cluster_0.upstream_cx_total: 1\n"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_established_connections_then_exits_zero() {
    let echo = servers::start(Behavior::Echo).await;
    let mut agent =
        AgentProcess::spawn(&envoy_yaml(echo.addr.port()), &["--drain-time-s", "30"]).await;
    let front = agent.listener("listener_0").await;
    let mut held = tokio::net::TcpStream::connect(front).await.unwrap();
    held.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    held.read_exact(&mut buf).await.unwrap();

    agent.signal(libc::SIGTERM);
    // New connections are refused once the listener closes...
    plumb_tests::wait_until("listener closed", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(front).await.is_err()
    })
    .await;
    // ...while the admin port reports the drain and the held connection still works.
    let r = get(agent.admin, "/ready").await;
    assert_eq!((r.status, r.body.as_str()), (503, "DRAINING\n"));
    held.write_all(b"two").await.unwrap();
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"two");
    assert!(
        agent.wait_exit(Duration::from_millis(200)).await.is_none(),
        "exited before drain"
    );

    // Closing the last connection ends the drain early.
    let started = Instant::now();
    drop(held);
    let st = agent
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits after drain");
    assert_eq!(st.code(), Some(0), "{}", agent.logs());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_time_bounds_shutdown_with_stuck_connections() {
    let silent = servers::start(Behavior::Silent).await;
    let mut agent =
        AgentProcess::spawn(&envoy_yaml(silent.addr.port()), &["--drain-time-s", "1"]).await;
    let front = agent.listener("listener_0").await;
    let mut held = tokio::net::TcpStream::connect(front).await.unwrap();
    held.write_all(b"x").await.unwrap();
    let admin = agent.admin;
    plumb_tests::wait_until(
        "connection established upstream",
        Duration::from_secs(10),
        || async move {
            get(admin, "/stats")
                .await
                .body
                .contains("cluster.cluster_0.upstream_cx_active: 1\n")
        },
    )
    .await;
    let started = Instant::now();
    agent.signal(libc::SIGTERM);
    let st = agent
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits after drain time");
    assert_eq!(st.code(), Some(0), "{}", agent.logs());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the drain time"
    );
    // The stuck connection was closed by the agent.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf))
        .await
        .expect("closed");
    assert!(matches!(n, Ok(0) | Err(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_levels_change_at_runtime() {
    let echo = servers::start(Behavior::Echo).await;
    let agent = AgentProcess::spawn(&envoy_yaml(echo.addr.port()), &["--log-level", "info"]).await;
    let r = get(agent.admin, "/logging").await;
    assert!(r.body.contains("  upstream: info\n"), "{}", r.body);
    assert_eq!(get(agent.admin, "/logging?level=debug").await.status, 405);
    let r = post(agent.admin, "/logging?upstream=debug").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("  upstream: debug\n") && r.body.contains("  admin: info\n"),
        "{}",
        r.body
    );
    let r = post(agent.admin, "/logging?level=warning").await;
    assert!(r.body.contains("  upstream: warn\n"), "{}", r.body);
    let r = post(agent.admin, "/logging?nosuch=debug").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("unknown logger \"nosuch\""));
    drop(agent);
    // A debug line from the tcp_proxy filter shows up once its logger is set to debug, and
    // --log-format json writes one JSON object per line.
    let dead = servers::closed_port();
    let agent = AgentProcess::spawn(
        &envoy_yaml(dead.port()),
        &["--log-level", "info", "--log-format", "json"],
    )
    .await;
    post(agent.admin, "/logging?filters=debug").await;
    let front = agent.listener("listener_0").await;
    let _ = roundtrip(front, b"x").await;
    let logs_have = |agent: &AgentProcess| agent.logs().contains("upstream connect failed");
    plumb_tests::wait_until_blocking("debug log line", Duration::from_secs(10), || {
        logs_have(&agent)
    });
    let line = agent
        .logs()
        .lines()
        .find(|l| l.contains("upstream connect failed"))
        .unwrap()
        .to_string();
    let j: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(j["level"], "DEBUG");
}

#[test]
fn bundled_default_config_is_valid() {
    let dir = TempDir::new("default");
    let path = dir.write("default.yaml", plumb::config::DEFAULT_BOOTSTRAP);
    let (st, out, err) = plumb_cmd(&["check-config", path.to_str().unwrap()]);
    assert!(st.success(), "{err}");
    assert!(
        out.contains("demo 127.0.0.1:10000 tcp_proxy -> cluster admin_loopback"),
        "{out}"
    );
    assert!(
        out.contains("http 127.0.0.1:10001 http_connection_manager http_demo (1 virtual hosts)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_listeners_and_clusters_without_dropping_connections() {
    use plumb_tests::agent::{bootstrap, static_cluster, tcp_listener};
    let echo = servers::start(Behavior::Echo).await;
    let named = servers::start(Behavior::Named("b".into())).await;
    // Fixed ports so the reloaded config names the same listener addresses.
    let port0 = servers::closed_port().port();
    let port1 = servers::closed_port().port();
    let listener = |name: &str, cluster: &str, port: u16| {
        let mut l = tcp_listener(name, cluster);
        l["address"]["socket_address"]["port_value"] = serde_json::json!(port);
        l
    };
    let config_a = bootstrap(
        vec![listener("l0", "echo", port0)],
        vec![
            static_cluster("echo", &[echo.addr]),
            static_cluster("named", &[named.addr]),
        ],
    );
    let mut agent = AgentProcess::spawn(&config_a, &[]).await;
    let path = agent.dir.path.join("bootstrap.yaml");
    let l0: std::net::SocketAddr = format!("127.0.0.1:{port0}").parse().unwrap();
    let mut held = tokio::net::TcpStream::connect(l0).await.unwrap();
    held.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    held.read_exact(&mut buf).await.unwrap();

    // l0 now goes to "named", l1 appears.
    let config_b = bootstrap(
        vec![
            listener("l0", "named", port0),
            listener("l1", "echo", port1),
        ],
        vec![
            static_cluster("echo", &[echo.addr]),
            static_cluster("named", &[named.addr]),
        ],
    );
    std::fs::write(&path, config_b).unwrap();
    agent.signal(libc::SIGHUP);
    let admin = agent.admin;
    plumb_tests::wait_until("reload applied", Duration::from_secs(10), || async move {
        plumb_tests::client::stat(admin, "server.reload_success").await == 1
    })
    .await;
    let got = plumb_tests::client::read_all(l0, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got, b"b", "new connections use the new chain");
    let l1: std::net::SocketAddr = format!("127.0.0.1:{port1}").parse().unwrap();
    assert_eq!(roundtrip(l1, b"added").await.unwrap(), b"added");
    held.write_all(b"two").await.unwrap();
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"two", "the established connection kept its chain");

    // An invalid file changes nothing.
    std::fs::write(&path, "static_resources: { listeners: [ {name: x} ] }").unwrap();
    agent.signal(libc::SIGHUP);
    plumb_tests::wait_until("reload rejected", Duration::from_secs(10), || async move {
        plumb_tests::client::stat(admin, "server.reload_failure").await == 1
    })
    .await;
    assert_eq!(roundtrip(l1, b"still").await.unwrap(), b"still");

    // Removing l1 closes its socket; l0 keeps working.
    std::fs::write(
        &path,
        bootstrap(
            vec![listener("l0", "named", port0)],
            vec![static_cluster("named", &[named.addr])],
        ),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    plumb_tests::wait_until("l1 removed", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(l1).await.is_err()
    })
    .await;
    assert_eq!(
        plumb_tests::client::read_all(l0, Duration::from_secs(5))
            .await
            .unwrap(),
        b"b"
    );
    held.write_all(b"end").await.unwrap();
    held.read_exact(&mut buf).await.unwrap();
    assert_eq!(
        &buf, b"end",
        "a removed cluster's established connection still works"
    );
    let st = {
        agent.signal(libc::SIGTERM);
        drop(held);
        agent.wait_exit(Duration::from_secs(10)).await
    };
    assert_eq!(st.and_then(|s| s.code()), Some(0));
}

/// Node identity from the command line (the Kubernetes downward API fills these in): node id,
/// cluster, zone and metadata end up in `/server_info` and in the bootstrap `/config_dump`
/// shows (and in the xDS node, `tests/tests/xds.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_identity_and_metadata_come_from_the_command_line() {
    let cfg = plumb_tests::agent::bootstrap(vec![], vec![]);
    let agent = AgentProcess::spawn(
        &cfg,
        &[
            "--service-node=node-7",
            "--service-cluster=edge",
            "--service-zone=zone-b",
            "--node-metadata=HOST_IP=10.0.0.9",
            "--node-metadata=ROLE=a=b",
            "--redirect-proxy-address=10.0.0.9",
        ],
    )
    .await;
    let info = plumb_tests::client::get(agent.admin, "/server_info")
        .await
        .json();
    let node = &info["node"];
    assert_eq!(node["id"], "node-7");
    assert_eq!(node["cluster"], "edge");
    assert_eq!(node["locality"]["zone"], "zone-b");
    assert_eq!(node["metadata"]["HOST_IP"], "10.0.0.9");
    assert_eq!(node["metadata"]["ROLE"], "a=b");
    let dump = plumb_tests::client::get(agent.admin, "/config_dump")
        .await
        .json()
        .to_string();
    assert!(dump.contains("\"HOST_IP\":\"10.0.0.9\""), "{dump}");
    // Nothing to apply the proxy address to: said, not fatal.
    assert!(
        agent
            .logs()
            .contains("ignored: the configuration has no plumb.redirect extension"),
        "{}",
        agent.logs()
    );

    let (st, _, err) = plumb_tests::agent::plumb_cmd(&["run", "--node-metadata", "novalue"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("expected KEY=VALUE"), "{err}");
}

#[test]
fn version_flag_and_subcommand_both_print_the_version() {
    for args in [&["--version"][..], &["version"][..]] {
        let (st, out, err) = plumb_cmd(args);
        assert!(st.success(), "{args:?}: {err}");
        assert!(out.starts_with("plumb 0."), "{args:?}: {out}");
    }
}

#[test]
fn concurrency_zero_is_an_error_not_silently_one() {
    let (st, _, err) = plumb_cmd(&["run", "--concurrency", "0"]);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("'--concurrency"), "{err}");
    assert!(err.contains("0 is not in 1..=1024"), "{err}");
}

/// `plumb check-config big.yaml | head -1`: the reader goes away; plumb stops quietly (as any
/// CLI tool does on SIGPIPE) instead of panicking with exit code 101.
#[test]
fn check_config_into_a_closed_pipe_stops_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = TempDir::new("epipe");
    let clusters: Vec<String> = (0..20_000)
        .map(|i| {
            format!(
                r#"{{"name": "c{i}", "load_assignment": {{"cluster_name": "c{i}", "endpoints": []}}}}"#
            )
        })
        .collect();
    let path = dir.write(
        "big.json",
        &format!(
            r#"{{"static_resources": {{"clusters": [{}]}}}}"#,
            clusters.join(",")
        ),
    );
    let mut child = Command::new(plumb_tests::agent::plumb_bin())
        .arg("check-config")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.ends_with("OK\n"), "{first}");
    // The read end is closed here (dropped with the reader).
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

/// A port already taken: one clear error, the OS reason once, exit code 1.
#[test]
fn a_bind_error_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new("bind-error");
    let cfg = envoy_yaml(1).replacen("port_value: 0 }", &format!("port_value: {port} }}"), 2);
    // The first `port_value: 0` is admin's; make it ephemeral again.
    let cfg = cfg.replacen(&format!("port_value: {port} }}"), "port_value: 0 }", 1);
    let path = dir.write("bootstrap.yaml", &cfg);
    let (st, _, err) = plumb_cmd(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "listener \"listener_0\": cannot bind 127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    drop(taken);
}

/// `plumb run` raises its soft open-files limit to the hard one (each proxied connection
/// holds two descriptors) and says so.
#[test]
fn run_raises_the_open_files_limit() {
    let dir = TempDir::new("nofile");
    let cfg = dir.write("bootstrap.yaml", &envoy_yaml(1));
    let addr_file = dir.path.join("admin-address");
    let plumb = plumb_tests::agent::plumb_bin();
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -S -n 256 && ulimit -H -n 4096 && exec {} run --config {} --admin-address-path {}",
            plumb.display(),
            cfg.display(),
            addr_file.display()
        ))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Ends the agent (by PID) however the test ends.
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: signalling the child this test started, by PID.
            unsafe {
                libc::kill(self.0 as i32, libc::SIGKILL);
            }
        }
    }
    let kill = Kill(pid);
    plumb_tests::wait_until_blocking("agent started", Duration::from_secs(20), || {
        addr_file.exists()
    });
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    drop(kill);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[3..5], &["4096", "4096"], "{line}");
    assert!(
        err.contains("raised the open files limit")
            && err.contains("from=256")
            && err.contains("to=4096"),
        "{err}"
    );
}

/// Issue 11, item 3: a bootstrap larger than `--max-config-bytes` (default 64 MiB) is refused
/// without being read further, with the limit named; `/dev/zero` ends at once.
#[test]
fn oversized_bootstrap_files_are_refused_with_the_limit() {
    let dir = TempDir::new("cli-size");
    let path = dir.write("plumb.yaml", &envoy_yaml(9));
    let file = path.to_str().unwrap();
    let (st, _, err) = plumb_cmd(&["check-config", "--max-config-bytes", "100", file]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("larger than the limit of 100 bytes (--max-config-bytes)"),
        "{err}"
    );
    let (st, _, err) = plumb_cmd(&["check-config", "--max-config-bytes", "100000", file]);
    assert!(st.success(), "{err}");
    let (st, _, err) = plumb_cmd(&["check-config", "/dev/zero"]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("limit of 67108864 bytes"), "{err}");
    let (st, _, err) = plumb_cmd(&["run", "--max-config-bytes", "100", "--config", file]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("--max-config-bytes"), "{err}");
}

/// Issue 11, item 3: nesting deeper than 128 levels is refused at once with its position,
/// in flow style (which the YAML parser would read in full first, for minutes) and in block
/// style.
#[test]
fn deeply_nested_yaml_is_refused_quickly() {
    let (st, _, err) = check(&format!(
        "node: {}1{}\n",
        "{a: ".repeat(100_000),
        "}".repeat(100_000)
    ));
    assert_eq!(st, 1, "{err}");
    assert!(
        err.contains("line 1 column 519: nesting deeper than 128 levels (the limit)"),
        "{err}"
    );
    let block: String = (1..200).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
    let (st, _, err) = check(&format!("node:\n{block}{}1\n", " ".repeat(200)));
    assert_eq!(st, 1, "{err}");
    assert!(err.contains("nesting deeper than 128 levels"), "{err}");
    // Brackets in quoted strings and comments do not count.
    let (st, _, err) = check(&format!(
        "node: {{id: \"{}\", cluster: '{}'}} # {}\nadmin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}\n",
        "[".repeat(500),
        "{".repeat(500),
        "[".repeat(500),
    ));
    assert_eq!(st, 0, "{err}");
}
