//! `cargo xtask bench workers`: the worker-model comparison behind `--worker-model`. Runs, at
//! the same time, Plumb per-core, Plumb shared (work-stealing), optionally a baseline Plumb
//! binary, and haproxy, each with N worker threads, in front of one echo backend; then
//! measures 64-connection request/response (64-byte messages, closed loop) on each target in
//! turn, round after round, so that a noisy neighbour hits every target alike. Reports the
//! median request rate and p99/p99.9 over the rounds, as ratios to haproxy. Loopback only;
//! every measurement is bounded in time.

use crate::util::{self, cpu_seconds, free_port, root_dir, KillOnDrop};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

struct Target {
    name: String,
    addr: String,
    pid: u32,
    _guard: KillOnDrop,
}

fn start_plumb(
    bin: &Path,
    tag: &str,
    threads: usize,
    extra: &[&str],
    backend: u16,
    dir: &Path,
) -> Result<Target> {
    let (port, admin) = (free_port()?, free_port()?);
    let cfg = util::tcp_proxy_bootstrap(admin, &[("echo", port, backend)]);
    let path = dir.join(format!("{tag}.yaml"));
    std::fs::write(&path, serde_json::to_string_pretty(&cfg)?)?;
    let log = std::fs::File::create(dir.join(format!("{tag}.log")))?;
    let child = Command::new(bin)
        .args(["run", "--log-level", "warn", "--concurrency"])
        .arg(threads.to_string())
        .args(extra)
        .arg("--config")
        .arg(&path)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let pid = child.id();
    Ok(Target {
        name: tag.into(),
        addr: format!("127.0.0.1:{port}"),
        pid,
        _guard: KillOnDrop(pid),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

pub fn bench(secs: f64, rounds: usize, threads: usize, baseline: Option<&Path>) -> Result<()> {
    crate::deps(true)?;
    util::build_release_bins()?;
    let dir = root_dir().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let plumb: PathBuf = root_dir().join("target/release/plumb");
    let loadgen = root_dir().join("target/release/plumb-load");

    let (_backend_guard, echo_p, _) = util::start_backends(&loadgen)?;

    let mut targets = vec![
        start_plumb(
            &plumb,
            "per-core",
            threads,
            &["--worker-model", "per-core"],
            echo_p,
            &dir,
        )?,
        start_plumb(
            &plumb,
            "shared",
            threads,
            &["--worker-model", "shared"],
            echo_p,
            &dir,
        )?,
    ];
    if let Some(b) = baseline {
        targets.push(start_plumb(b, "baseline", threads, &[], echo_p, &dir)?);
    }
    let hp = free_port()?;
    let ha_cfg = dir.join("haproxy-workers.cfg");
    std::fs::write(
        &ha_cfg,
        format!(
            "global\n  nbthread {threads}\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n\
             frontend echo\n  bind 127.0.0.1:{hp}\n  default_backend echo\nbackend echo\n  server s1 127.0.0.1:{echo_p}\n"
        ),
    )?;
    let ha = Command::new(util::which("haproxy").context("haproxy not found")?)
        .arg("-db")
        .arg("-f")
        .arg(&ha_cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy-workers.log"))?)
        .spawn()
        .context("start haproxy")?;
    let ha_pid = ha.id();
    targets.push(Target {
        name: "haproxy".into(),
        addr: format!("127.0.0.1:{hp}"),
        pid: ha_pid,
        _guard: KillOnDrop(ha_pid),
    });
    for t in &targets {
        let sa: std::net::SocketAddr = t.addr.parse()?;
        util::wait_for(&t.addr, Duration::from_secs(15), || {
            std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_ok()
        })?;
    }

    let s = format!("{secs}");
    // Load generator threads: as many as the proxies have, so the client is not the limit.
    let load_threads = threads.to_string();
    let mut samples: Vec<Vec<Value>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        eprintln!("xtask: round {}/{rounds}", round + 1);
        for (i, t) in targets.iter().enumerate() {
            let cpu0 = cpu_seconds(t.pid);
            let out = Command::new(&loadgen)
                .args(["latency", "--addr", &t.addr, "--conns", "64", "--secs", &s])
                .args(["--size", "64", "--threads", &load_threads])
                .output()
                .context("run plumb-load")?;
            if !out.status.success() {
                bail!("plumb-load: {}", String::from_utf8_lossy(&out.stderr));
            }
            let mut v: Value = serde_json::from_slice(&out.stdout)?;
            if v["errors"].as_u64() != Some(0) {
                bail!("{}: {} request errors", t.name, v["errors"]);
            }
            if let (Some(a), Some(b)) = (cpu0, cpu_seconds(t.pid)) {
                v["cpu_s"] = json!(b - a);
            }
            samples[i].push(v);
        }
    }
    let rows: Vec<Value> = targets
        .iter()
        .zip(&samples)
        .map(|(t, s)| {
            let m = |k: &str| median(s.iter().filter_map(|v| v[k].as_f64()).collect());
            json!({"target": t.name, "rps": m("rps"), "p50_us": m("p50_us"), "p99_us": m("p99_us"),
                   "p999_us": m("p999_us"), "cpu_s": m("cpu_s"),
                   "rps_all": s.iter().map(|v| v["rps"].clone()).collect::<Vec<_>>()})
        })
        .collect();
    let ha_row = rows.last().cloned().unwrap_or_default();
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "\nWorker models: {threads} worker thread(s) each, 64 connections, 64-byte request/response, \
         median of {rounds} interleaved rounds of {secs}s; ratios to haproxy\n"
    );
    println!(
        "{:<9} {:>16} {:>15} {:>15} {:>15} {:>8}",
        "target", "req/s", "p50 us", "p99 us", "p99.9 us", "CPU s"
    );
    for r in &rows {
        let cell = |k: &str| format!("{:.0} ({:.2}x)", f(r, k), f(r, k) / f(&ha_row, k));
        println!(
            "{:<9} {:>16} {:>15} {:>15} {:>15} {:>8.1}",
            r["target"].as_str().unwrap_or("?"),
            cell("rps"),
            cell("p50_us"),
            cell("p99_us"),
            cell("p999_us"),
            f(r, "cpu_s"),
        );
    }
    let out = dir.join(format!("workers-{threads}.json"));
    std::fs::write(&out, serde_json::to_string_pretty(&rows)?)?;
    eprintln!("xtask: raw results in {}", out.display());
    Ok(())
}
