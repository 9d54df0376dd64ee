//! `cargo xtask bench upgrade`: what a hand-over costs. New connections at full rate through
//! Plumb, once steady and once while new agents take over (`--takeover`) several times; side
//! by side: connections per second, failures, p50/p99 connect-exchange-close latency, and how
//! long each hand-over took (successor start → old agent released). Loopback only, bounded.

use crate::util::{self, free_port, root_dir, KillOnDrop};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TAKEOVERS: usize = 3;

fn connrate(bin: &Path, addr: &str, secs: f64) -> Result<Child> {
    Command::new(bin)
        .args(["connrate", "--addr", addr, "--conns", "16", "--secs"])
        .arg(format!("{secs}"))
        .stdout(Stdio::piped())
        .spawn()
        .context("start plumb-load connrate")
}

fn report(child: Child) -> Result<Value> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("plumb-load connrate failed");
    }
    serde_json::from_slice(&out.stdout).context("plumb-load output")
}

fn start_agent(
    plumb: &Path,
    cfg: &Path,
    sock: &Path,
    log: &Path,
    takeover: bool,
) -> Result<(Child, KillOnDrop)> {
    let log = std::fs::File::create(log)?;
    let mut c = Command::new(plumb);
    c.args([
        "run",
        "--log-level",
        "info",
        "--concurrency",
        "1",
        "--config",
    ])
    .arg(cfg)
    .arg("--upgrade-socket")
    .arg(sock)
    .args(["--drain-time-s", "10"]);
    if takeover {
        c.arg("--takeover");
    }
    let child = c
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start plumb")?;
    let guard = KillOnDrop(child.id());
    Ok((child, guard))
}

pub fn bench(secs: f64) -> Result<()> {
    util::build_release_bins()?;
    let dir = root_dir().join("target/bench/upgrade");
    std::fs::create_dir_all(&dir)?;
    let plumb = root_dir().join("target/release/plumb");
    let loadgen = root_dir().join("target/release/plumb-load");

    let (_backend_guard, echo_p, _) = util::start_backends(&loadgen)?;

    let (port, admin) = (free_port()?, free_port()?);
    let cfg = util::tcp_proxy_bootstrap(admin, &[("echo", port, echo_p)]);
    let cfg_path = dir.join("plumb.yaml");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)?)?;
    let sock = dir.join("upgrade.sock");
    let addr = format!("127.0.0.1:{port}");

    let mut agents = vec![start_agent(
        &plumb,
        &cfg_path,
        &sock,
        &dir.join("agent-0.log"),
        false,
    )?];
    let sa: std::net::SocketAddr = addr.parse()?;
    util::wait_for("plumb listening", Duration::from_secs(15), || {
        std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_ok()
    })?;
    util::wait_for("upgrade socket", Duration::from_secs(15), || sock.exists())?;

    eprintln!("xtask: steady: {secs} s of new connections");
    let steady = report(connrate(&loadgen, &addr, secs)?)?;

    eprintln!("xtask: the same with {TAKEOVERS} takeovers");
    let load = connrate(&loadgen, &addr, secs)?;
    let started = Instant::now();
    let mut handovers = Vec::new();
    for i in 1..=TAKEOVERS {
        let at = Duration::from_secs_f64(secs * i as f64 / (TAKEOVERS + 1) as f64);
        std::thread::sleep(at.saturating_sub(started.elapsed()));
        let log = dir.join(format!("agent-{i}.log"));
        let t = Instant::now();
        agents.push(start_agent(&plumb, &cfg_path, &sock, &log, true)?);
        util::wait_for("the old agent's release", Duration::from_secs(30), || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("the old agent released its sockets"))
        })?;
        handovers.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let during = report(load)?;
    // Old agents exit once drained; the last one is stopped by its guard.
    for (child, _) in agents.iter_mut().take(TAKEOVERS) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!();
    println!("Plumb through {TAKEOVERS} takeovers vs steady ({secs} s each, 16 connection loops, new connection per 64-byte exchange)");
    println!(
        "{:<22} {:>10} {:>8} {:>10} {:>10}",
        "", "conn/s", "errors", "p50 µs", "p99 µs"
    );
    for (name, r) in [("steady", &steady), ("during takeovers", &during)] {
        println!(
            "{:<22} {:>10.0} {:>8} {:>10.0} {:>10.0}",
            name,
            f(r, "cps"),
            r["errors"].as_u64().unwrap_or(0),
            f(r, "p50_us"),
            f(r, "p99_us")
        );
    }
    println!(
        "ratios (takeovers / steady): conn/s {:.2}, p99 {:.2}",
        f(&during, "cps") / f(&steady, "cps"),
        f(&during, "p99_us") / f(&steady, "p99_us")
    );
    let ms: Vec<String> = handovers.iter().map(|m| format!("{m:.0} ms")).collect();
    println!(
        "hand-over (successor start → old agent released): {}",
        ms.join(", ")
    );
    if during["errors"].as_u64() != Some(0) || steady["errors"].as_u64() != Some(0) {
        bail!("connections failed: steady {steady}, during takeovers {during}");
    }
    Ok(())
}
