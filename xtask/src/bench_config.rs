//! `cargo xtask bench config`: how config size costs time and memory. In one run, with the
//! release binary: start-up with a 20,000-cluster bootstrap, SIGHUP from 1 to 20,000 clusters
//! and back (each compared with the start-up time), and `check-config` of a ~50 MB bootstrap
//! (time and peak memory, compared with the file size). Loopback only; every wait is bounded.

use crate::util::{self, free_port, root_dir, KillOnDrop};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A bootstrap with `n` STATIC clusters (one endpoint each) and one tcp_proxy listener.
fn bootstrap(n: usize, admin_port: u16) -> String {
    let mut s = String::with_capacity(n * 240 + 1024);
    let _ = write!(
        s,
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}\n\
         static_resources:\n  listeners:\n  - name: front\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n    \
         filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        \
         typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: front, cluster: c0}}\n  clusters:\n"
    );
    for i in 0..n {
        let _ = write!(
            s,
            "  - name: c{i}\n    connect_timeout: 1s\n    type: STATIC\n    load_assignment:\n      cluster_name: c{i}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n",
            10000 + i % 50000
        );
    }
    s
}

fn stat(admin: &str, name: &str) -> Option<i64> {
    let (_, body) = util::http_get(admin, &format!("/stats?filter=^{name}$")).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs `plumb check-config file`; returns (seconds, peak RSS in MiB).
fn check_config(plumb: &Path, file: &Path) -> Result<(f64, f64)> {
    let t = Instant::now();
    let child = Command::new(plumb)
        .arg("check-config")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both pointers are valid for the call.
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let secs = t.elapsed().as_secs_f64();
    if rc < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("plumb check-config {} failed", file.display());
    }
    Ok((secs, usage.ru_maxrss as f64 / 1024.0))
}

pub fn bench() -> Result<()> {
    util::build_release_bins()?;
    let plumb = root_dir().join("target/release/plumb");
    let dir = root_dir().join("target/bench/config");
    std::fs::create_dir_all(&dir)?;
    let n = 20_000;
    let port = free_port()?;
    let admin = format!("127.0.0.1:{port}");
    let (big, small, cur) = (
        dir.join("20k.yaml"),
        dir.join("1.yaml"),
        dir.join("current.yaml"),
    );
    std::fs::write(&big, bootstrap(n, port))?;
    std::fs::write(&small, bootstrap(1, port))?;

    let start = |file: &Path| -> Result<(KillOnDrop, f64)> {
        let t = Instant::now();
        let child = Command::new(&plumb)
            .args(["run", "--log-level", "error", "--config"])
            .arg(file)
            .spawn()
            .context("start plumb")?;
        let guard = KillOnDrop(child.id());
        util::wait_for("plumb /ready", Duration::from_secs(120), || {
            matches!(util::http_get(&admin, "/ready"), Ok((200, _)))
        })?;
        Ok((guard, t.elapsed().as_secs_f64()))
    };
    let (guard, startup) = start(&big)?;
    drop(guard);
    util::wait_for("the agent to stop", Duration::from_secs(20), || {
        util::http_get(&admin, "/ready").is_err()
    })?;

    std::fs::copy(&small, &cur)?;
    let (guard, _) = start(&cur)?;
    let reload = |file: &Path, nth: i64, clusters: i64| -> Result<f64> {
        std::fs::copy(file, &cur)?;
        let t = Instant::now();
        util::signal(guard.0, "HUP")?;
        util::wait_for("the reload", Duration::from_secs(600), || {
            stat(&admin, "server.reload_success") == Some(nth)
        })?;
        let secs = t.elapsed().as_secs_f64();
        let active = stat(&admin, "cluster_manager.active_clusters");
        if active != Some(clusters) {
            bail!("after the reload: {active:?} clusters, expected {clusters}");
        }
        Ok(secs)
    };
    let up = reload(&big, 1, n as i64)?;
    let down = reload(&small, 2, 1)?;
    drop(guard);

    // About 50 MB: ~235 bytes per cluster.
    let huge = dir.join("50mb.yaml");
    std::fs::write(&huge, bootstrap(215_000, port))?;
    let size_mib = std::fs::metadata(&huge)?.len() as f64 / (1 << 20) as f64;
    let (cc_secs, cc_rss) = check_config(&plumb, &huge)?;
    let (cc20_secs, cc20_rss) = check_config(&plumb, &big)?;
    let big_mib = std::fs::metadata(&big)?.len() as f64 / (1 << 20) as f64;
    let _ = std::fs::remove_file(&huge);

    println!("config size (release build, {n} clusters unless said):");
    println!("  start-up to ready:          {startup:7.2} s");
    println!(
        "  SIGHUP 1 -> {n}:         {up:7.2} s  ({:.2}x start-up)",
        up / startup
    );
    println!(
        "  SIGHUP {n} -> 1:         {down:7.2} s  ({:.2}x start-up)",
        down / startup
    );
    println!(
        "  check-config {big_mib:5.1} MiB file:  {cc20_secs:7.2} s, peak {cc20_rss:7.1} MiB ({:.1}x the file)",
        cc20_rss / big_mib
    );
    println!(
        "  check-config {size_mib:5.1} MiB file:  {cc_secs:7.2} s, peak {cc_rss:7.1} MiB ({:.1}x the file, 215,000 clusters)",
        cc_rss / size_mib
    );
    Ok(())
}
