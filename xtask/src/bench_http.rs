//! `cargo xtask bench http`: one run measuring, side by side, the same fast upstreams reached
//! directly and through Plumb, nginx and haproxy (one worker each, keep-alive upstream pools):
//!
//! - HTTP/1.1 keep-alive with wrk (64 connections): req/s and p50/p99/p99.9, a small body and a
//!   16 KiB body, access logs off and then on (to a file) for all;
//! - the latency each proxy adds at a fixed moderate rate (`plumb-load http-rate`, paced);
//! - HTTP/2 with h2load (4 connections × 25 streams);
//! - gRPC unary with a Rust client (tonic, `plumb-load grpc`, 4 connections × 25 calls in
//!   flight) to a tonic server;
//! - each proxy's CPU time per HTTP/1.1 request and its memory: idle, after the load, and with
//!   10,000 idle keep-alive connections (`plumb-load hold`).
//!
//! Rounds are interleaved (every target once per round; best of the rounds is kept). Prints
//! ratios to direct and to each peer. Loopback only; every run is bounded in time.

use crate::util::{
    self, cpu_seconds_tree, free_port, root_dir, rss_mib_tree, KillOnDrop, KillTreeOnDrop,
};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The fixed rate of the added-latency run, and its connections.
const RATE: u32 = 4000;
const RATE_CONNS: u32 = 16;
/// Idle keep-alive connections held for the memory figure.
const IDLE_CONNS: u32 = 10_000;

struct Target {
    name: &'static str,
    /// HTTP/1.1 (and, for Plumb, h2c on the same port).
    h1: u16,
    h2: u16,
    grpc: u16,
    /// HTTP/1.1 with an access log to a file (`None`: the target has none).
    logged: Option<u16>,
    pid: Option<u32>,
}

#[derive(Clone, Copy, Default)]
pub(crate) struct Wrk {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

#[derive(Clone, Copy, Default)]
struct Row {
    small: Wrk,
    large: Wrk,
    logged: Wrk,
    h2: f64,
    grpc: f64,
    grpc_p99: f64,
    cpu_us: f64,
    rate: [f64; 3],
    rate_bad: u64,
}

pub(crate) fn wait_http(port: u16) -> Result<()> {
    util::wait_for(
        &format!("HTTP on 127.0.0.1:{port}"),
        Duration::from_secs(15),
        || {
            matches!(
                util::http_get(&format!("127.0.0.1:{port}"), "/"),
                Ok((200, _))
            )
        },
    )
}

pub(crate) fn start(cmd: &mut Command, stdout: Option<&Path>, log: &Path) -> Result<u32> {
    let out = match stdout {
        Some(p) => Stdio::from(std::fs::File::create(p)?),
        None => Stdio::null(),
    };
    let child = cmd
        .stdout(out)
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("start {:?}", cmd.get_program()))?;
    Ok(child.id())
}

/// Runs wrk (64 connections, one thread) with a script that prints exact percentiles.
pub(crate) fn wrk(port: u16, path: &str, secs: u64, script: &Path) -> Result<Wrk> {
    wrk_url(&format!("http://127.0.0.1:{port}{path}"), secs, script)
}

/// `wrk` on any URL (https too).
pub(crate) fn wrk_url(url: &str, secs: u64, script: &Path) -> Result<Wrk> {
    let out = Command::new("wrk")
        .args(["-t1", "-c64", &format!("-d{secs}s"), "-s"])
        .arg(script)
        .arg(url)
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    let lat: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("LATENCY_US "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let ms = |i: usize| lat.get(i).map_or(f64::NAN, |v| v / 1000.0);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("bench: wrk to {url} saw errors:\n{text}");
    }
    Ok(Wrk {
        rps,
        p50: ms(0),
        p99: ms(1),
        p999: ms(2),
    })
}

/// Runs h2load (HTTP/2 prior knowledge, 4 connections × 25 streams); returns req/s.
fn h2load(port: u16, secs: u64) -> Result<f64> {
    let out = Command::new("h2load")
        .args(["-c", "4", "-m", "25", "-D", &secs.to_string()])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("run h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("finished in")?;
            rest.split(',')
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("h2load output: {text}"))
}

pub(crate) fn load(args: &[String]) -> Result<Value> {
    let bin = root_dir().join("target/release/plumb-load");
    let out = Command::new(&bin)
        .args(args)
        .output()
        .context("run plumb-load")?;
    if !out.status.success() {
        bail!(
            "plumb-load {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("plumb-load output")
}

/// Opens IDLE_CONNS keep-alive connections to `port` and returns (open, the target's RSS while
/// they are held). The holder is killed (by PID) when measured.
fn idle_rss(port: u16, pid: u32) -> Result<(u64, f64)> {
    let mut child = Command::new(root_dir().join("target/release/plumb-load"))
        .args([
            "hold",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--conns",
            &IDLE_CONNS.to_string(),
            "--secs",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start plumb-load hold")?;
    let _guard = KillOnDrop(child.id());
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("hold stdout")?).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line).with_context(|| format!("hold said {line:?}"))?;
    // Let the target settle its per-connection buffers.
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_mib_tree(pid).unwrap_or(f64::NAN);
    let _ = child.kill();
    let _ = child.wait();
    Ok((v["open"].as_u64().unwrap_or(0), rss))
}

pub(crate) fn nginx_conf(dir: &Path, name: &str, body: &str) -> Result<PathBuf> {
    let d = dir.display();
    let p = dir.join(format!("{name}.conf"));
    std::fs::write(
        &p,
        format!(
            "worker_processes 1;\nworker_rlimit_nofile 20000;\ndaemon off;\npid {d}/{name}.pid;\n\
             error_log {d}/{name}.err;\nevents {{ worker_connections 16384; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n{body}\n}}\n"
        ),
    )?;
    Ok(p)
}

pub fn bench(secs: f64, rounds: usize) -> Result<()> {
    crate::deps(true)?;
    util::build_release_bins()?;
    let secs = secs.ceil() as u64;
    let dir = root_dir().join("target/bench-http");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let d = dir.display().to_string();
    let nginx = util::which("nginx").context("nginx not found")?;
    let haproxy = util::which("haproxy").context("haproxy not found")?;
    let port = || free_port();
    let (up, up2, upg) = (port()?, port()?, port()?);
    let (pn, pn2, png, pnl) = (port()?, port()?, port()?, port()?);
    let (ph, ph2, phg, phl) = (port()?, port()?, port()?, port()?);
    let (pp, ppg, ppl, admin) = (port()?, port()?, port()?, port()?);
    std::fs::write(dir.join("16k.bin"), vec![b'x'; 16 * 1024])?;
    let script = dir.join("latency.lua");
    std::fs::write(
        &script,
        "done = function(summary, latency, requests)\n  io.write(string.format(\"LATENCY_US %d %d %d\\n\", latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))\nend\n",
    )?;

    // The upstreams: nginx for HTTP (`/` a 3-byte body, `/16k` 16 KiB), tonic for gRPC.
    let up_conf = nginx_conf(
        &dir,
        "upstream",
        &format!(
            "  server {{ listen 127.0.0.1:{up} backlog=4096; listen 127.0.0.1:{up2} http2;\n    \
             location = /16k {{ default_type application/octet-stream; alias {d}/16k.bin; }}\n    \
             location / {{ return 200 \"ok\\n\"; }} }}"
        ),
    )?;
    let up_pid = start(
        Command::new(&nginx)
            .arg("-c")
            .arg(&up_conf)
            .arg("-p")
            .arg(&dir),
        None,
        &dir.join("upstream.log"),
    )?;
    let _up = KillTreeOnDrop(up_pid);
    let grpc_pid = start(
        Command::new(root_dir().join("target/release/plumb-load")).args([
            "serve",
            "--threads",
            "1",
            "--grpc",
            &format!("127.0.0.1:{upg}"),
        ]),
        None,
        &dir.join("grpc-upstream.log"),
    )?;
    let _grpc = KillOnDrop(grpc_pid);

    // nginx as a proxy.
    let proxy_conf = nginx_conf(
        &dir,
        "proxy",
        &format!(
            "  upstream up {{ server 127.0.0.1:{up}; keepalive 128; }}\n  \
             upstream g {{ server 127.0.0.1:{upg}; keepalive 32; }}\n  \
             server {{ listen 127.0.0.1:{pn} backlog=4096; listen 127.0.0.1:{pn2} http2;\n    \
             location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n  \
             server {{ listen 127.0.0.1:{pnl} backlog=4096; access_log {d}/nginx-access.log;\n    \
             location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n  \
             server {{ listen 127.0.0.1:{png} http2; location / {{ grpc_pass grpc://g; }} }}"
        ),
    )?;
    let nginx_pid = start(
        Command::new(&nginx)
            .arg("-c")
            .arg(&proxy_conf)
            .arg("-p")
            .arg(&dir),
        None,
        &dir.join("proxy.log"),
    )?;
    let _ng = KillTreeOnDrop(nginx_pid);

    // haproxy, one thread; its access log goes to stdout (a file).
    let ha_cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &ha_cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 9990\n  log stdout format raw local0\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 30s\n  option http-keep-alive\n\
             frontend f\n  bind 127.0.0.1:{ph}\n  bind 127.0.0.1:{ph2} proto h2\n  default_backend b\n\
             frontend fl\n  bind 127.0.0.1:{phl}\n  log global\n  option httplog\n  default_backend b\n\
             frontend fg\n  bind 127.0.0.1:{phg} proto h2\n  default_backend g\n\
             backend b\n  http-reuse always\n  server s1 127.0.0.1:{up}\n\
             backend g\n  http-reuse always\n  server g1 127.0.0.1:{upg} proto h2\n"
        ),
    )?;
    let ha_pid = start(
        Command::new(&haproxy).args(["-db", "-f"]).arg(&ha_cfg),
        Some(&dir.join("haproxy-access.log")),
        &dir.join("haproxy.log"),
    )?;
    let _ha = KillOnDrop(ha_pid);

    // Plumb: one worker; HTTP/1.1 and h2c on one port (codec AUTO).
    let hcm = |prefix: &str, cluster: &str, log: bool| {
        let mut tc = serde_json::json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": prefix, "generate_request_id": false,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                "suppress_envoy_headers": true}}]});
        if log {
            tc["access_log"] = serde_json::json!([{"name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": format!("{d}/plumb-access.log")}}]);
        }
        tc
    };
    let listener = |name: &str, port: u16, tc: Value| {
        serde_json::json!({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": tc}]}]})
    };
    let cluster = |name: &str, port: u16, h2: bool| {
        let mut c = serde_json::json!({"name": name, "connect_timeout": "1s", "load_assignment": {"cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}});
        if h2 {
            c["typed_extension_protocol_options"] = serde_json::json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}});
        }
        c
    };
    let plumb_cfg = dir.join("plumb.yaml");
    std::fs::write(
        &plumb_cfg,
        serde_json::json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            // The derived limit ((open files − 256) / 2) is under 10,000 at this machine's
            // 20,000 descriptors; the idle connections hold one each (nginx and haproxy are
            // given their limits too).
            "overload_manager": {"resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": 12000}}]},
            "static_resources": {
                "listeners": [
                    listener("http", pp, hcm("bench", "up", false)),
                    listener("logged", ppl, hcm("logged", "up", true)),
                    listener("grpc", ppg, hcm("grpc", "grpc", false)),
                ],
                "clusters": [cluster("up", up, false), cluster("grpc", upg, true)],
            },
        })
        .to_string(),
    )?;
    let plumb_pid = start(
        Command::new(root_dir().join("target/release/plumb"))
            .args([
                "run",
                "--log-level",
                "warn",
                "--concurrency",
                "1",
                "--config",
            ])
            .arg(&plumb_cfg),
        None,
        &dir.join("plumb.log"),
    )?;
    let _pl = KillOnDrop(plumb_pid);
    for p in [up, pn, ph, pp, pnl, phl, ppl] {
        wait_http(p)?;
    }
    let targets = [
        Target {
            name: "direct",
            h1: up,
            h2: up2,
            grpc: upg,
            logged: None,
            pid: None,
        },
        Target {
            name: "plumb",
            h1: pp,
            h2: pp,
            grpc: ppg,
            logged: Some(ppl),
            pid: Some(plumb_pid),
        },
        Target {
            name: "nginx",
            h1: pn,
            h2: pn2,
            grpc: png,
            logged: Some(pnl),
            pid: Some(nginx_pid),
        },
        Target {
            name: "haproxy",
            h1: ph,
            h2: ph2,
            grpc: phg,
            logged: Some(phl),
            pid: Some(ha_pid),
        },
    ];
    let idle: Vec<f64> = targets
        .iter()
        .map(|t| t.pid.and_then(rss_mib_tree).unwrap_or(f64::NAN))
        .collect();

    let mut rows = vec![Row::default(); targets.len()];
    let best = |cur: &mut Wrk, new: Wrk| {
        if new.rps > cur.rps {
            *cur = new;
        }
    };
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let r = &mut rows[i];
            let before = t.pid.and_then(cpu_seconds_tree).unwrap_or(0.0);
            let w = wrk(t.h1, "/", secs, &script)?;
            let after = t.pid.and_then(cpu_seconds_tree).unwrap_or(0.0);
            if w.rps > r.small.rps {
                r.cpu_us = (after - before) / (w.rps * secs as f64) * 1e6;
            }
            best(&mut r.small, w);
            best(&mut r.large, wrk(t.h1, "/16k", secs, &script)?);
            if let Some(p) = t.logged {
                best(&mut r.logged, wrk(p, "/", secs, &script)?);
            }
            let h2 = h2load(t.h2, secs).unwrap_or(f64::NAN);
            if h2 > r.h2 || r.h2 == 0.0 {
                r.h2 = h2;
            }
            let g = load(&[
                "grpc".into(),
                "--addr".into(),
                format!("127.0.0.1:{}", t.grpc),
                "--conns".into(),
                "4".into(),
                "--streams".into(),
                "25".into(),
                "--secs".into(),
                secs.to_string(),
            ])?;
            let grps = g["rps"].as_f64().unwrap_or(0.0);
            if grps > r.grpc {
                r.grpc = grps;
                r.grpc_p99 = g["p99_us"].as_f64().unwrap_or(f64::NAN) / 1000.0;
            }
            let o = load(&[
                "http-rate".into(),
                "--addr".into(),
                format!("127.0.0.1:{}", t.h1),
                "--rate".into(),
                RATE.to_string(),
                "--conns".into(),
                RATE_CONNS.to_string(),
                "--secs".into(),
                secs.to_string(),
            ])?;
            let q = |k: &str| o[k].as_f64().unwrap_or(f64::NAN) / 1000.0;
            // The lowest p99 of the rounds: the least disturbed run.
            if round == 0 || q("p99_us") < r.rate[1] {
                r.rate = [q("p50_us"), q("p99_us"), q("p999_us")];
                r.rate_bad = o["errors"].as_u64().unwrap_or(0) + o["late"].as_u64().unwrap_or(0);
            }
            eprintln!(
                "round {round}: {}: HTTP/1.1 {:.0} req/s, 16 KiB {:.0}, logged {:.0}, HTTP/2 {h2:.0}, gRPC {grps:.0}, at {RATE}/s p99 {:.3} ms",
                t.name, w.rps, r.large.rps, r.logged.rps, q("p99_us")
            );
        }
    }
    let after_load: Vec<f64> = targets
        .iter()
        .map(|t| t.pid.and_then(rss_mib_tree).unwrap_or(f64::NAN))
        .collect();
    let mut held = vec![(0u64, f64::NAN); targets.len()];
    for (i, t) in targets.iter().enumerate() {
        if let Some(pid) = t.pid {
            held[i] = idle_rss(t.h1, pid)?;
        }
    }

    let f = |v: f64, p: usize| {
        if v.is_nan() || v == 0.0 {
            "-".to_string()
        } else {
            format!("{v:.p$}")
        }
    };
    println!("\ncargo xtask bench http: {secs} s per run, best of {rounds} interleaved rounds, 1 worker each\n");
    println!("HTTP/1.1 keep-alive (wrk, 64 connections), HTTP/2 (h2load, 4 × 25 streams), gRPC unary (tonic, 4 × 25 in flight):\n");
    println!("| target | HTTP/1.1 req/s | p50 ms | p99 ms | p99.9 ms | 16 KiB req/s | 16 KiB p99.9 ms | logs on req/s | HTTP/2 req/s | gRPC req/s | gRPC p99 ms | CPU µs/req |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (t, r) in targets.iter().zip(&rows) {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t.name,
            f(r.small.rps, 0),
            f(r.small.p50, 2),
            f(r.small.p99, 2),
            f(r.small.p999, 2),
            f(r.large.rps, 0),
            f(r.large.p999, 2),
            f(r.logged.rps, 0),
            f(r.h2, 0),
            f(r.grpc, 0),
            f(r.grpc_p99, 2),
            if t.pid.is_some() {
                f(r.cpu_us, 1)
            } else {
                "-".into()
            },
        );
    }
    println!("\nLatency at a fixed {RATE} req/s over {RATE_CONNS} keep-alive connections (paced; added = target − direct):\n");
    println!(
        "| target | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | errors + late |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let direct = rows[0].rate;
    for (t, r) in targets.iter().zip(&rows) {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {} | {} | {} |",
            t.name,
            r.rate[0],
            r.rate[1],
            r.rate[2],
            if t.pid.is_some() {
                format!("{:.3}", r.rate[0] - direct[0])
            } else {
                "-".into()
            },
            if t.pid.is_some() {
                format!("{:.3}", r.rate[1] - direct[1])
            } else {
                "-".into()
            },
            r.rate_bad
        );
    }
    println!("\nMemory (RSS MiB, the process and its workers):\n");
    println!("| target | idle | after the load | with {IDLE_CONNS} idle keep-alive connections | connections held |");
    println!("| --- | --- | --- | --- | --- |");
    for (i, t) in targets.iter().enumerate().skip(1) {
        println!(
            "| {} | {} | {} | {} | {} |",
            t.name,
            f(idle[i], 1),
            f(after_load[i], 1),
            f(held[i].1, 1),
            held[i].0
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!();
    for (j, peer) in [(2, "nginx"), (3, "haproxy"), (0, "direct")] {
        let (p, q) = (&rows[1], &rows[j]);
        println!(
            "Plumb / {peer}: HTTP/1.1 {:.2}x, 16 KiB {:.2}x, logs on {:.2}x, HTTP/2 {:.2}x, gRPC {:.2}x; p99.9 {:.2} vs {:.2} ms",
            ratio(p.small.rps, q.small.rps),
            ratio(p.large.rps, q.large.rps),
            ratio(p.logged.rps, q.logged.rps),
            ratio(p.h2, q.h2),
            ratio(p.grpc, q.grpc),
            p.small.p999,
            q.small.p999,
        );
    }
    if rows.iter().any(|r| r.small.rps <= 0.0) {
        bail!("a target answered nothing; see {}", dir.display());
    }
    Ok(())
}
