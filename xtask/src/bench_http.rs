//! `cargo xtask bench http`: one run measuring, side by side, the same fast upstream (nginx,
//! one worker, `return 200`) reached directly and through Plumb, nginx and haproxy (one
//! worker each, keep-alive upstream pools, access logs off): HTTP/1.1 with wrk (64
//! connections) and HTTP/2 with h2load (4 connections × 25 streams), in interleaved rounds,
//! then each proxy's CPU time and memory. Prints ratios to direct and to each peer.
//! Loopback only; every run is bounded in time.

use crate::util::{self, cpu_seconds, free_port, root_dir, rss_mib, KillOnDrop};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

struct Target {
    name: &'static str,
    port: u16,
    /// HTTP/2 prior knowledge (nginx and haproxy take it on a port of its own).
    h2_port: u16,
    pid: Option<u32>,
}

fn wait_http(port: u16) -> Result<()> {
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

fn start(cmd: &mut Command, log: &Path) -> Result<u32> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("start {:?}", cmd.get_program()))?;
    Ok(child.id())
}

/// Runs wrk; returns (req/s, p50 ms, p99 ms).
fn wrk(port: u16, secs: f64) -> Result<(f64, f64, f64)> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c64",
            &format!("-d{}s", secs.ceil() as u64),
            "--latency",
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    let pct = |p: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                let l = l.trim();
                let rest = l.strip_prefix(p)?.trim();
                let (n, unit) = rest.split_at(rest.find(|c: char| c.is_alphabetic())?);
                let n: f64 = n.parse().ok()?;
                Some(match unit {
                    "us" => n / 1000.0,
                    "ms" => n,
                    "s" => n * 1000.0,
                    _ => n,
                })
            })
            .unwrap_or(f64::NAN)
    };
    Ok((rps, pct("50%"), pct("99%")))
}

/// Runs h2load (HTTP/2 prior knowledge); returns req/s.
fn h2load(port: u16, secs: f64) -> Result<f64> {
    let out = Command::new("h2load")
        .args([
            "-c",
            "4",
            "-m",
            "25",
            "-D",
            &format!("{}", secs.ceil() as u64),
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("run h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("finished in")?;
            let rps = rest.split(',').nth(1)?.split_whitespace().next()?;
            rps.parse().ok()
        })
        .with_context(|| format!("h2load output: {text}"))
}

pub fn bench(secs: f64, rounds: usize) -> Result<()> {
    crate::deps(true)?;
    util::build_release_bins()?;
    let dir = root_dir().join("target/bench-http");
    std::fs::create_dir_all(&dir)?;
    let nginx = util::which("nginx").context("nginx not found")?;
    let haproxy = util::which("haproxy").context("haproxy not found")?;
    let (up, pn, ph, pp, admin) = (
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
    );
    let (up2, pn2, ph2) = (free_port()?, free_port()?, free_port()?);
    let d = dir.display();
    let nginx_conf = |name: &str, body: &str| -> Result<std::path::PathBuf> {
        let p = dir.join(format!("{name}.conf"));
        std::fs::write(
            &p,
            format!(
                "worker_processes 1;\ndaemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}.err;\n\
                 events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n{body}\n}}\n"
            ),
        )?;
        Ok(p)
    };
    let up_conf = nginx_conf(
        "upstream",
        &format!("  server {{ listen 127.0.0.1:{up} backlog=4096; listen 127.0.0.1:{up2} http2; keepalive_requests 1000000; location / {{ return 200 \"ok\\n\"; }} }}"),
    )?;
    let proxy_conf = nginx_conf(
        "proxy",
        &format!(
            "  upstream up {{ server 127.0.0.1:{up}; keepalive 128; }}\n  server {{ listen 127.0.0.1:{pn} backlog=4096; listen 127.0.0.1:{pn2} http2; keepalive_requests 1000000;\n    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
        ),
    )?;
    let up_pid = start(
        Command::new(&nginx)
            .args(["-c"])
            .arg(&up_conf)
            .args(["-p"])
            .arg(&dir),
        &dir.join("upstream.log"),
    )?;
    let _up = KillOnDrop(up_pid);
    let nginx_pid = start(
        Command::new(&nginx)
            .args(["-c"])
            .arg(&proxy_conf)
            .args(["-p"])
            .arg(&dir),
        &dir.join("proxy.log"),
    )?;
    let _ng = KillOnDrop(nginx_pid);
    let ha_cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &ha_cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 9000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n\
             frontend f\n  bind 127.0.0.1:{ph}\n  bind 127.0.0.1:{ph2} proto h2\n  default_backend b\nbackend b\n  http-reuse always\n  server s1 127.0.0.1:{up}\n"
        ),
    )?;
    let ha_pid = start(
        Command::new(&haproxy).args(["-db", "-f"]).arg(&ha_cfg),
        &dir.join("haproxy.log"),
    )?;
    let _ha = KillOnDrop(ha_pid);
    let plumb_cfg = dir.join("plumb.yaml");
    std::fs::write(
        &plumb_cfg,
        serde_json::json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [{"name": "http", "address": {"socket_address": {"address": "127.0.0.1", "port_value": pp}},
                  "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "bench", "generate_request_id": false,
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                        "suppress_envoy_headers": true}}]}}]}]}],
                "clusters": [{"name": "up", "connect_timeout": "1s", "load_assignment": {"cluster_name": "up",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": up}}}}]}]}}],
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
        &dir.join("plumb.log"),
    )?;
    let _pl = KillOnDrop(plumb_pid);
    for p in [up, pn, ph, pp] {
        wait_http(p)?;
    }
    let targets = [
        Target {
            name: "direct",
            port: up,
            h2_port: up2,
            pid: None,
        },
        Target {
            name: "plumb",
            port: pp,
            h2_port: pp,
            pid: Some(plumb_pid),
        },
        Target {
            name: "nginx",
            port: pn,
            h2_port: pn2,
            pid: Some(nginx_pid),
        },
        Target {
            name: "haproxy",
            port: ph,
            h2_port: ph2,
            pid: Some(ha_pid),
        },
    ];
    // Best of the interleaved rounds.
    let mut h1: Vec<(f64, f64, f64)> = vec![(0.0, f64::NAN, f64::NAN); targets.len()];
    let mut h2: Vec<f64> = vec![0.0; targets.len()];
    let mut cpu: Vec<f64> = vec![0.0; targets.len()];
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let before = t.pid.and_then(cpu_seconds).unwrap_or(0.0);
            let r = wrk(t.port, secs)?;
            let after = t.pid.and_then(cpu_seconds).unwrap_or(0.0);
            if r.0 > h1[i].0 {
                h1[i] = r;
                cpu[i] = (after - before) / (r.0 * secs.ceil()) * 1e6;
            }
            eprintln!("round {round}: {} HTTP/1.1 {:.0} req/s", t.name, r.0);
            let r2 = h2load(t.h2_port, secs).unwrap_or(f64::NAN);
            eprintln!("round {round}: {} HTTP/2 {:.0} req/s", t.name, r2);
            if r2 > h2[i] || h2[i].is_nan() {
                h2[i] = r2;
            }
        }
    }
    println!("\ncargo xtask bench http: {secs:.0} s per run, best of {rounds} interleaved rounds, 1 worker each\n");
    println!("| target | HTTP/1.1 req/s | p50 ms | p99 ms | HTTP/2 req/s | CPU µs/req (HTTP/1.1) | RSS MiB |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (i, t) in targets.iter().enumerate() {
        let rss = t
            .pid
            .and_then(rss_mib)
            .map_or("-".to_string(), |r| format!("{r:.1}"));
        let cpu = if t.pid.is_some() {
            format!("{:.1}", cpu[i])
        } else {
            "-".into()
        };
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.0} | {cpu} | {rss} |",
            t.name, h1[i].0, h1[i].1, h1[i].2, h2[i]
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    println!(
        "\nPlumb / nginx: HTTP/1.1 {:.2}x, HTTP/2 {:.2}x; Plumb / haproxy: HTTP/1.1 {:.2}x, HTTP/2 {:.2}x; Plumb / direct: HTTP/1.1 {:.2}x",
        ratio(h1[1].0, h1[2].0),
        ratio(h2[1], h2[2]),
        ratio(h1[1].0, h1[3].0),
        ratio(h2[1], h2[3]),
        ratio(h1[1].0, h1[0].0),
    );
    if h1.iter().any(|r| r.0 <= 0.0) {
        bail!("a target answered nothing; see {}", dir.display());
    }
    Ok(())
}
