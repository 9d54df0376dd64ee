//! Helpers for xtask: running commands, installing Debian packages, a blocking HTTP client,
//! process control by PID.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

pub fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root_dir());
    // `cargo xtask` runs this program with the variables Cargo sets for a binary
    // (CARGO_MANIFEST_DIR=…/xtask, CARGO_PKG_*, …). Build scripts watch some of them (ring
    // reruns when CARGO_MANIFEST_DIR changes), so passing them on would make these builds
    // differ from a plain `cargo build` — and from the test harness's, which strips the same
    // list — recompiling ring, rustls, tonic and Plumb each time (~45 s).
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
                "CARGO_MANIFEST_LINKS",
            ]
            .contains(&k.as_str())
        {
            c.env_remove(&k);
        }
    }
    // A CI build is built once and thrown away: incremental state would only cost disk
    // (gigabytes for the workspace's test binaries).
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0") {
        c.env("CARGO_INCREMENTAL", "0");
    }
    c
}

/// Release builds of the agent and the test tools (load generator, control plane) for benches.
pub fn build_release_bins() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "plumb",
        "-p",
        "plumb-tests",
        "--bins",
    ]))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs the Debian packages whose commands are missing; does nothing when all are present.
pub fn ensure_debian_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    install_debian(&missing)
}

fn install_debian(missing: &[&str]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || which("apt-get").is_none() {
        bail!(
            "missing Debian packages {missing:?}; install them with: sudo apt-get install -y {}",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages {missing:?}");
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs Debian packages by name unless dpkg already has them.
pub fn ensure_debian_packages_named(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    install_debian(&missing)
}

/// A blocking HTTP/1.1 GET with `Connection: close`; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let sa: std::net::SocketAddr = addr.parse()?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed status line")?;
    Ok((status, body.to_string()))
}

pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Sends a signal to one process by PID.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    run(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string()))
}

pub fn wait_child(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "process {} did not exit within {timeout:?}; killed",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a process by PID when dropped (error paths must not leave processes behind).
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(self.0.to_string())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The direct children of a process (from /proc/<pid>/stat's ppid field).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Kills a process and its direct children (nginx's workers outlive a killed master).
pub struct KillTreeOnDrop(pub u32);

impl Drop for KillTreeOnDrop {
    fn drop(&mut self) {
        // The master first (a live nginx master respawns a killed worker), then the workers
        // it had.
        let workers = children(self.0);
        for p in std::iter::once(self.0).chain(workers) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(p.to_string())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// CPU seconds of a process and its direct children (see `cpu_seconds`).
pub fn cpu_seconds_tree(pid: u32) -> Option<f64> {
    let own = cpu_seconds(pid)?;
    Some(
        own + children(pid)
            .into_iter()
            .filter_map(cpu_seconds)
            .sum::<f64>(),
    )
}

/// Resident memory of a process and its direct children in MiB (see `rss_mib`).
pub fn rss_mib_tree(pid: u32) -> Option<f64> {
    let own = rss_mib(pid)?;
    Some(own + children(pid).into_iter().filter_map(rss_mib).sum::<f64>())
}

/// User+system CPU seconds a process has used so far (from /proc/<pid>/stat).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Resident memory of a process in MiB (VmRSS).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A free loopback port (bound then released; the small race is acceptable for benches).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `plumb-load serve` with an echo and a sink server on free loopback ports; returns the
/// guard that stops it and the two ports.
pub fn start_backends(loadgen: &Path) -> Result<(KillOnDrop, u16, u16)> {
    use std::io::{BufRead, BufReader};
    let (echo_p, sink_p) = (free_port()?, free_port()?);
    let mut backend = Command::new(loadgen)
        .args(["serve", "--echo", &format!("127.0.0.1:{echo_p}")])
        .args(["--sink", &format!("127.0.0.1:{sink_p}")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("start backends")?;
    let guard = KillOnDrop(backend.id());
    let mut line = String::new();
    BufReader::new(backend.stdout.take().context("backend stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        anyhow::bail!("backends did not start: {line:?}");
    }
    Ok((guard, echo_p, sink_p))
}

/// A bootstrap with admin on `admin_port` and, per `(name, listen_port, backend_port)`, a
/// loopback tcp_proxy listener `name` to a STATIC cluster `name` (the benches' proxy config).
pub fn tcp_proxy_bootstrap(admin_port: u16, routes: &[(&str, u16, u16)]) -> serde_json::Value {
    use serde_json::json;
    let sock = |port: u16| json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    let listeners: Vec<_> = routes
        .iter()
        .map(|(name, listen, _)| {
            json!({"name": name, "address": sock(*listen),
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": name, "cluster": name}}]}]})
        })
        .collect();
    let clusters: Vec<_> = routes
        .iter()
        .map(|(name, _, backend)| {
            json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": sock(*backend)}}]}]}})
        })
        .collect();
    json!({
        "admin": {"address": sock(admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}
