//! `cargo xtask`: the project's own scripts.
//!
//!   cargo xtask demo [--keep-running]   build, run the agent on the bundled default config,
//!                                       push traffic through it and show its stats
//!   cargo xtask test                    install test tools, fmt + clippy + every test
//!   cargo xtask deps [--bench]          install Debian packages the tests (and benches) need
//!   cargo xtask build-ebpf              build the eBPF object into target/bpf/plumb.bpf.o
//!   cargo xtask demo-xds                plumb driven by a control plane: config and a live update
//!   cargo xtask sim [--scenario F] [--duration D] [--seed N]
//!                                       simulated traffic through a fake cluster, with faults
//!                                       and invariants (docs/simulator.md)
//!   cargo xtask bench xds [--secs S]    config scale, update latency, memory, churn under traffic
//!   cargo xtask bench l4 [--secs S]     Plumb vs direct vs haproxy, side by side
//!   cargo xtask bench workers [--proxy-threads N] [--rounds R]
//!                                       per-core vs shared worker model vs haproxy
//!   cargo xtask bench redirect [--secs S]  pods: direct vs eBPF capture (± sk_msg) vs iptables
//!   cargo xtask bench upgrade [--secs S]   new connections: steady vs through 3 takeovers
//!   cargo xtask bench lb                 ns per pick and build time of each balancer, a
//!                                        circuit breaker tripping, an outlier ejected
//!
//! Everything here is idempotent and targets loopback only.

mod bench;
mod bench_config;
mod bench_http;
mod bench_lb;
mod bench_redirect;
mod bench_tls;
mod bench_upgrade;
mod bench_workers;
mod ebpf;
mod fuzz;
mod image;
mod sim;
mod util;

use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::Duration;
use util::{cargo, http_get, root_dir, run, wait_for};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("test") => test(),
        Some("deps") => deps(args.iter().any(|a| a == "--bench")),
        Some("bench") => bench::bench(&args[1..]),
        Some("build-ebpf") => ebpf::build().map(|_| ()),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("image") => image::build(args.iter().any(|a| a == "--release")).map(|_| ()),
        Some("demo-xds") => xds_tool("demo", &[]),
        Some("sim") => sim::sim(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <demo [--keep-running] | test | deps [--bench] | demo-xds | sim [--scenario F] [--duration D] | build-ebpf | bench l4|workers|redirect|xds|upgrade|config|http|lb [--secs S] | fuzz <target>|all [--secs N] [--runs N] | image [--release]>");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

/// Debian packages by the command they provide.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("promtool", "prometheus"),
    // Real HTTP clients through the connection manager (tests/tests/http.rs).
    ("curl", "curl"),
    ("h2load", "nghttp2-client"),
    // TLS clients and certificate tools (tests/tests/tls*.rs, bench tls).
    ("openssl", "openssl"),
    // The agent image is built and run for real (tests/tests/container.rs).
    ("podman", "podman"),
    ("runc", "runc"),
];
const BENCH_TOOLS: &[(&str, &str)] = &[
    ("haproxy", "haproxy"),
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
];

/// PyPI tools by the Python module they provide (pinned).
const PYPI_TOOLS: &[(&str, &str)] = &[
    ("kubernetes_validate", "kubernetes-validate==1.37.0"),
    // gRPC clients and servers through the connection manager (tests/tests/grpc.rs).
    ("grpc", "grpcio==1.76.0"),
    // A Python HTTP/1.1 and h2c client through the connection manager (tests/tests/http.rs).
    ("httpx", "httpx==0.28.1"),
    ("h2", "h2==4.3.0"),
];

pub fn deps(bench: bool) -> Result<()> {
    let mut wanted: Vec<(&str, &str)> = TEST_TOOLS.to_vec();
    if bench {
        wanted.extend_from_slice(BENCH_TOOLS);
    }
    util::ensure_debian_packages(&wanted)?;
    for (module, spec) in PYPI_TOOLS {
        let present = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            run(Command::new("python3").args(["-m", "pip", "install", "--quiet", spec]))?;
        }
    }
    Ok(())
}

fn test() -> Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    if let Err(e) = deps(false) {
        if ci {
            return Err(e);
        }
        eprintln!("xtask: warning: {e:#}; tests needing these tools will be skipped");
    }
    // The eBPF object for the kernel end-to-end suite (needs its toolchain; see build-ebpf).
    if let Err(e) = ebpf::build() {
        if ci {
            return Err(e.context("building the eBPF object"));
        }
        eprintln!(
            "xtask: warning: cannot build the eBPF object ({e:#}); eBPF tests will be skipped"
        );
    }
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Build the binaries (and test targets) first so subprocess tests find them fresh — the
    // same build the test harness asks for, so its own `cargo build` is a no-op.
    run(cargo().args(["build", "--workspace", "--bins", "--tests"]))?;
    // The container image the container test runs (from the binary just built).
    if let Err(e) = image::build(false) {
        if ci {
            return Err(e.context("building the agent image"));
        }
        eprintln!("xtask: warning: cannot build the agent image ({e:#}); the container test will be skipped");
    }
    let mut t = cargo();
    t.args(["test", "--workspace"]);
    if ci {
        // Under CI a test that would skip for a missing tool or privilege fails instead.
        t.env("PLUMB_TEST_STRICT", "1");
    }
    run_tests_with_summary(&mut t)?;
    // Every fuzz target for a short while: a parser change that crashes on the corpus or
    // on what a few seconds of mutation find fails the run.
    let secs = if ci { 30 } else { 10 };
    match fuzz::build() {
        Ok(()) => {
            for target in fuzz::TARGETS {
                fuzz::run_target(target, secs, None)?;
            }
            Ok(())
        }
        Err(e) if !ci => {
            eprintln!("xtask: warning: cannot build the fuzz targets ({e:#}); fuzzing skipped");
            Ok(())
        }
        Err(e) => Err(e.context("building the fuzz targets")),
    }
}

/// Runs `cargo test`, passing its output through, and ends with one total line
/// (`tests: N passed, N failed, N ignored`) summed over every test binary.
fn run_tests_with_summary(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().context("test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut w = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (w.next(), w.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    let st = child.wait()?;
    println!("\ntests: {passed} passed, {failed} failed, {ignored} skipped");
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

fn demo(args: &[String]) -> Result<()> {
    let keep = args.iter().any(|a| a == "--keep-running");
    if let Err(e) = ebpf::build() {
        eprintln!(
            "xtask: warning: cannot build the eBPF object ({e:#}); the demo does not need it"
        );
    }
    run(cargo().args(["build", "--release", "-p", "plumb"]))?;
    let bin = root_dir().join("target/release/plumb");
    for port in [15000u16, 10000, 10001] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("127.0.0.1:{port} is in use; the bundled default config needs ports 15000 (admin), 10000 (TCP demo listener) and 10001 (HTTP demo listener)");
        }
    }
    let log_path = root_dir().join("target/plumb-demo.log");
    let log = std::fs::File::create(&log_path).context("create demo log")?;
    let mut child = Command::new(&bin)
        .args(["run", "--concurrency", "2"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start plumb")?;
    let guard = util::KillOnDrop(child.id());
    let admin = "127.0.0.1:15000";
    wait_for("plumb /ready", Duration::from_secs(15), || {
        matches!(http_get(admin, "/ready"), Ok((200, _)))
    })?;
    println!(
        "\nplumb is live with its bundled default configuration (logs: {}):",
        log_path.display()
    );
    println!("  admin           http://127.0.0.1:15000/");
    println!(
        "  listener demo   127.0.0.1:10000 --tcp_proxy--> cluster admin_loopback (127.0.0.1:15000)"
    );
    println!("  listener http   127.0.0.1:10001 --HTTP routes--> /hello: answered by plumb; /admin/*: cluster admin_loopback\n");

    let proxied = "127.0.0.1:10000";
    let n = 20;
    let mut ok = 0;
    for _ in 0..n {
        if let Ok((200, _)) = http_get(proxied, "/server_info") {
            ok += 1;
        }
    }
    println!("sent {n} HTTP requests through the proxy (127.0.0.1:10000): {ok} answered 200\n");
    if ok != n {
        bail!(
            "only {ok}/{n} requests made it through the proxy; see {}",
            log_path.display()
        );
    }
    // HTTP: routed requests, each written to the access log (stdout, here the demo log).
    let http = "127.0.0.1:10001";
    let (code, hello) = http_get(http, "/hello")?;
    println!(
        "GET {http}/hello -> {code} {:?} (a direct response from the route table)",
        hello.trim()
    );
    let mut routed = 0;
    for _ in 0..n {
        if let Ok((200, _)) = http_get(http, "/admin/server_info") {
            routed += 1;
        }
    }
    let (missing, _) = http_get(http, "/nowhere")?;
    println!("GET {http}/admin/server_info x{n} -> {routed} answered 200 (prefix rewritten to /server_info, sent to the admin cluster)");
    println!("GET {http}/nowhere -> {missing} (no route: flag NR)\n");
    if code != 200 || routed != n || missing != 404 {
        bail!(
            "the HTTP listener did not answer as expected; see {}",
            log_path.display()
        );
    }
    let filter = "%5Ehttp%5C.http_demo%5C.%28downstream_rq_%5B0-9%5Dxx%7Cdownstream_rq_total%7Cno_route%7Crq_direct_response%29%7C%5Ecluster%5C.admin_loopback%5C.upstream_rq_200";
    let (_, stats) = http_get(admin, &format!("/stats?usedonly&filter={filter}"))?;
    println!("HTTP stats (GET {admin}/stats?usedonly&filter=...):\n");
    for line in stats.lines() {
        println!("  {line}");
    }
    wait_for("access log lines", Duration::from_secs(5), || {
        std::fs::read_to_string(&log_path)
            .is_ok_and(|l| l.contains("\"GET /nowhere HTTP/1.1\" 404 NR"))
    })?;
    let logged = std::fs::read_to_string(&log_path)?;
    println!(
        "\naccess log lines (stdout of plumb, in {}):\n",
        log_path.display()
    );
    for line in logged.lines().filter(|l| l.starts_with('[')).take(2) {
        println!("  {line}");
    }
    if let Some(l) = logged.lines().find(|l| l.contains("/nowhere")) {
        println!("  {l}");
    }
    println!();
    let filter = "%5E%28listener%5C.127%5C.0%5C.0%5C.1_10000%7Ccluster%5C.admin_loopback%7Ctcp%5C.demo%29%5C.";
    let (_, stats) = http_get(proxied, &format!("/stats?usedonly&filter={filter}"))?;
    println!("its stats, fetched through the proxy itself (GET 127.0.0.1:10000/stats?usedonly&filter=...):\n");
    for line in stats.lines() {
        println!("  {line}");
    }
    println!(
        "\ntry: curl -s 127.0.0.1:10000/stats | less     curl -s 127.0.0.1:15000/stats/prometheus"
    );
    println!("     curl -s 127.0.0.1:15000/clusters          curl -s 127.0.0.1:15000/config_dump");
    println!("     curl -s 127.0.0.1:10001/hello             curl -s --http2-prior-knowledge 127.0.0.1:10001/admin/ready");
    if !keep {
        demo_tls(&bin)?;
    }
    if keep {
        println!(
            "\nplumb keeps running (pid {}); Ctrl-C drains and stops it.",
            child.id()
        );
        let st = child.wait()?;
        std::mem::forget(guard);
        println!("plumb exited: {st}");
        return Ok(());
    }
    println!("\nstopping plumb with SIGTERM (graceful drain)...");
    util::signal(child.id(), "TERM")?;
    let st = util::wait_child(&mut child, Duration::from_secs(40))?;
    std::mem::forget(guard);
    if !st.success() {
        bail!("plumb exited with {st}; see {}", log_path.display());
    }
    println!("plumb drained and exited cleanly ({st}).");
    Ok(())
}

/// The TLS part of the demo: a second, short-lived agent terminating mTLS with a throw-away
/// CA (made with openssl), an RBAC filter admitting one SPIFFE identity, and curl as the
/// client with and without its certificate.
fn demo_tls(bin: &std::path::Path) -> Result<()> {
    util::ensure_debian_packages(&[("openssl", "openssl"), ("curl", "curl")])?;
    for port in [15001u16, 10443] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("127.0.0.1:{port} is in use; the TLS demo needs ports 15001 (admin) and 10443 (HTTPS)");
        }
    }
    let dir = root_dir().join("target/demo-tls");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let identity = "spiffe://demo.plumb/ns/web/sa/client";
    bench_tls::certificates(&dir, "demo.plumb", identity)?;
    let d = dir.display().to_string();
    let config = format!(
        r#"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 15001}}}}}}
static_resources:
  listeners:
  - name: https
    address: {{socket_address: {{address: 127.0.0.1, port_value: 10443}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{filename: {d}/server.pem}}
              private_key: {{filename: {d}/server.key}}
            validation_context:
              trusted_ca: {{filename: {d}/ca.pem}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: https_demo
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {{text_format_source: {{inline_string: "[%START_TIME%] %REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% tls=%DOWNSTREAM_TLS_VERSION% peer=%DOWNSTREAM_PEER_URI_SAN% sni=%REQUESTED_SERVER_NAME%\n"}}}}
          route_config:
            virtual_hosts:
            - name: demo
              domains: ["*"]
              routes:
              - match: {{path: /hello}}
                direct_response: {{status: 200, body: {{inline_string: "hello over mTLS\n"}}}}
              - match: {{prefix: /admin-only}}
                direct_response: {{status: 200, body: {{inline_string: "admins only\n"}}}}
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
                    rbac: {{rules: {{action: ALLOW, policies: {{admins: {{permissions: [{{any: true}}],
                      principals: [{{authenticated: {{principal_name: {{exact: "spiffe://demo.plumb/ns/ops/sa/admin"}}}}}}]}}}}}}}}
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  web: {{permissions: [{{any: true}}], principals: [{{authenticated: {{principal_name: {{exact: "{identity}"}}}}}}]}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    );
    let cfg = dir.join("tls.yaml");
    std::fs::write(&cfg, config)?;
    let log_path = dir.join("plumb.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = Command::new(bin)
        .args(["run", "--concurrency", "1", "--config"])
        .arg(&cfg)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start plumb (TLS demo)")?;
    let guard = util::KillOnDrop(child.id());
    let admin = "127.0.0.1:15001";
    wait_for("plumb (TLS) /ready", Duration::from_secs(15), || {
        matches!(http_get(admin, "/ready"), Ok((200, _)))
    })?;
    println!(
        "
TLS: a second plumb terminates mTLS on 127.0.0.1:10443 (config and throw-away CA in {d}):"
    );
    let curl = |args: &[&str], path: &str| -> Result<(bool, String)> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(dir.join("ca.pem"))
            .args([
                "--resolve",
                "demo.plumb:10443:127.0.0.1",
                "-w",
                " [%{http_version} %{http_code}]",
            ])
            .args(args)
            .arg(format!("https://demo.plumb:10443{path}"))
            .output()
            .context("run curl")?;
        let text = String::from_utf8_lossy(&out.stdout)
            .trim()
            .replace('\n', " ")
            + String::from_utf8_lossy(&out.stderr).trim();
        Ok((out.status.success(), text))
    };
    let cert = dir.join("client.pem").display().to_string();
    let key = dir.join("client.key").display().to_string();
    let with_cert = ["--cert", cert.as_str(), "--key", key.as_str()];
    let (ok1, h1) = curl(&[&with_cert[..], &["--http1.1"]].concat(), "/hello")?;
    let (ok2, h2) = curl(&[&with_cert[..], &["--http2"]].concat(), "/hello")?;
    let (ok3, denied) = curl(&[&with_cert[..], &["--http2"]].concat(), "/admin-only")?;
    let (ok4, no_cert) = curl(&["--http1.1"], "/hello")?;
    println!("  curl --cert client.pem (identity {identity}) --http1.1 /hello -> {h1}");
    println!("  the same over HTTP/2 (ALPN h2)                -> {h2}");
    println!("  /admin-only (RBAC per route: another identity) -> {denied}");
    println!("  curl without a client certificate             -> refused ({no_cert})");
    let logged = std::fs::read_to_string(&log_path).unwrap_or_default();
    for l in logged.lines().filter(|l| l.starts_with('[')).take(3) {
        println!("  access log: {l}");
    }
    let filter =
        "ssl%5C.%28handshake%7Cfail_verify_no_cert%7Cversions%29%7Crbac%5C.%28allowed%7Cdenied%29";
    let (_, stats) = http_get(admin, &format!("/stats?usedonly&filter={filter}"))?;
    for l in stats.lines() {
        println!("  {l}");
    }
    let (_, certs) = http_get(admin, "/certs")?;
    let days = serde_json::from_str::<serde_json::Value>(&certs)
        .ok()
        .and_then(|v| {
            v["certificates"][0]["cert_chain"][0]["days_until_expiration"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into());
    println!("  /certs: the server certificate expires in {days} days; try curl -s 127.0.0.1:15001/certs");
    util::signal(child.id(), "TERM")?;
    let st = util::wait_child(&mut child, Duration::from_secs(40))?;
    std::mem::forget(guard);
    let expected = ok1
        && ok2
        && h1.ends_with("[1.1 200]")
        && h2.ends_with("[2 200]")
        && ok3
        && denied.ends_with("403]")
        && !ok4;
    if !expected || !st.success() {
        bail!(
            "the TLS demo did not behave as expected; see {}",
            log_path.display()
        );
    }
    Ok(())
}

/// Runs the control-plane tool (tests/src/bin/plumb-xds-bench.rs) against a release plumb.
pub fn xds_tool(mode: &str, extra: &[&str]) -> Result<()> {
    util::build_release_bins()?;
    let tool = util::root_dir().join("target/release/plumb-xds-bench");
    let plumb = util::root_dir().join("target/release/plumb");
    run(Command::new(tool)
        .arg(mode)
        .arg("--plumb")
        .arg(plumb)
        .args(extra))
}
