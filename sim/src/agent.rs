//! The agent under test: the real `plumb run` binary, driven by the simulator's control plane,
//! started with a hand-over socket and an xDS cache as a DaemonSet would run it. Hand-overs
//! start a successor with `--takeover`; a kill is SIGKILL and a fresh start. Each
//! generation's log is kept for the report; memory and file descriptors are sampled.

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Agent {
    pub bin: PathBuf,
    pub dir: PathBuf,
    bootstrap: PathBuf,
    pub current: Generation,
    /// Earlier generations still draining after a hand-over.
    pub draining: Vec<Generation>,
    generations: u32,
}

pub struct Generation {
    pub n: u32,
    pub child: Child,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Generation {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The bootstrap: only ADS (CDS and LDS, which bring RDS, EDS and SDS), the control plane as
/// a static cluster, admin on an ephemeral port — the tests' ADS bootstrap, with a node of
/// its own and 10 s initial fetch timeouts.
pub fn bootstrap(control_plane: SocketAddr, delta: bool) -> String {
    let api = if delta { "DELTA_GRPC" } else { "GRPC" };
    let mut b: serde_json::Value =
        serde_json::from_str(&plumb_tests::xds::ads_bootstrap(control_plane, api))
            .expect("the tests' bootstrap is JSON");
    b["node"] = serde_json::json!({"id": "plumb-sim-node", "cluster": "plumb-sim"});
    b["stats_flush_interval"] = "1s".into();
    for t in ["cds_config", "lds_config"] {
        b["dynamic_resources"][t]["initial_fetch_timeout"] = "10s".into();
    }
    b.to_string()
}

/// The bootstrap of the pod mode: the same, plus eBPF capture of the node's pods into an
/// `outbound` listener on the node's proxy address, which hands each connection to the
/// service listener of its virtual IP (connections to anything else pass through).
pub fn bootstrap_pods(
    control_plane: SocketAddr,
    delta: bool,
    node: &plumb_tests::pods::Node,
    pin: &Path,
    bpf_object: &Path,
) -> String {
    let mut b: serde_json::Value = serde_json::from_str(&bootstrap(control_plane, delta)).unwrap();
    b["static_resources"]["listeners"] = serde_json::json!([{
        "name": "outbound", "use_original_dst": true,
        "address": {"socket_address": {"address": node.proxy_ip.to_string(), "port_value": 15001}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "passthrough", "cluster": "passthrough"}}]}],
    }]);
    b["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(
            serde_json::json!({"name": "passthrough", "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s"}),
        );
    b["bootstrap_extensions"] = serde_json::json!([{"name": "plumb.redirect", "typed_config": {
        "@type": "type.googleapis.com/plumb.redirect.v1.Redirect",
        "listener": "outbound",
        "cgroups": [node.cgroup.to_str().unwrap()],
        "pin_path": pin.to_str().unwrap(),
        "bpf_object": bpf_object.to_str().unwrap(),
        "required": true,
        "heartbeat_interval": "0.1s",
        "fail_open_after": "0.5s",
    }}]);
    b.to_string()
}

impl Agent {
    /// Starts the first generation and waits until it is ready.
    pub async fn start(bin: PathBuf, dir: PathBuf, bootstrap_text: &str) -> Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let bootstrap = dir.join("bootstrap.json");
        std::fs::write(&bootstrap, bootstrap_text)?;
        let current = spawn(&bin, &dir, &bootstrap, 1).await?;
        Ok(Self {
            bin,
            dir,
            bootstrap,
            current,
            draining: Vec::new(),
            generations: 1,
        })
    }

    /// A hand-over: a successor takes the sockets over; the old generation drains and exits.
    /// With `kill_old`, the old one is killed once the successor is ready (a broken hand-over,
    /// to prove the checks see it).
    pub async fn handover(&mut self, kill_old: bool) -> Result<()> {
        self.generations += 1;
        let next = spawn(&self.bin, &self.dir, &self.bootstrap, self.generations).await?;
        let old = std::mem::replace(&mut self.current, next);
        if kill_old {
            drop(old);
        } else {
            self.draining.push(old);
        }
        Ok(())
    }

    /// SIGKILL, as the OOM killer or a crash would.
    pub fn kill(&mut self) {
        // SAFETY: kill(2) on our own child, by its PID.
        unsafe { libc::kill(self.current.pid(), libc::SIGKILL) };
        let _ = self.current.child.wait();
    }

    /// A fresh start after a kill (it finds nobody to take over from).
    pub async fn restart(&mut self) -> Result<()> {
        self.generations += 1;
        self.current = spawn(&self.bin, &self.dir, &self.bootstrap, self.generations).await?;
        Ok(())
    }

    /// Drops drained generations that have exited; true if one exited with an error.
    pub fn reap(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        self.draining.retain_mut(|g| match g.child.try_wait() {
            Ok(Some(st)) => {
                if !st.success() {
                    problems.push(format!(
                        "generation {} exited with {st} after its hand-over",
                        g.n
                    ));
                }
                false
            }
            _ => true,
        });
        problems
    }

    /// Memory (kB) and open file descriptors of the current generation.
    pub fn sample(&self) -> Option<(u64, u64)> {
        let pid = self.current.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
        Some((rss, fds))
    }

    /// Terminates every generation (SIGTERM, then SIGKILL after 10 s).
    pub async fn stop(mut self) {
        let mut all: Vec<Generation> = std::mem::take(&mut self.draining);
        all.push(std::mem::replace(
            &mut self.current,
            Generation {
                n: 0,
                child: Command::new("true").spawn().expect("spawn true"),
                admin: "127.0.0.1:0".parse().unwrap(),
                log: PathBuf::new(),
            },
        ));
        for g in &all {
            // SAFETY: kill(2) on our own children, by PID.
            unsafe { libc::kill(g.pid(), libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for mut g in all {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = g.child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn spawn(bin: &Path, dir: &Path, bootstrap: &Path, n: u32) -> Result<Generation> {
    let admin_file = dir.join(format!("admin-address-{n}"));
    let log = dir.join(format!("plumb-{n}.log"));
    let out = std::fs::File::create(&log)?;
    let child = Command::new(bin)
        // Its access-log lines say which generation wrote them (%ENVIRONMENT(...)%).
        .env("PLUMB_SIM_GENERATION", n.to_string())
        .arg("run")
        .arg("--config")
        .arg(bootstrap)
        .arg("--admin-address-path")
        .arg(&admin_file)
        .arg("--upgrade-socket")
        .arg(dir.join("upgrade.sock"))
        .arg("--takeover")
        .arg("--xds-cache")
        .arg(dir.join("xds-cache.bin"))
        .args(["--drain-time-s", "5", "--concurrency", "1"])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut g = Generation {
        n,
        child,
        admin: "127.0.0.1:0".parse().unwrap(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(st)) = g.child.try_wait() {
            bail!(
                "plumb (generation {n}) exited early with {st}; its log: {}",
                g.log.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "plumb (generation {n}) was not ready within 60 s; its log: {}",
                g.log.display()
            );
        }
        if let Some(a) = std::fs::read_to_string(&admin_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            g.admin = a;
            if let Ok(r) = plumb_tests::client::http("GET", a, "/ready").await {
                if r.status == 200 {
                    return Ok(g);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every counter and gauge of an agent, or `None` if it does not answer.
pub async fn stats(admin: SocketAddr) -> Option<std::collections::HashMap<String, i64>> {
    let r = plumb_tests::client::http("GET", admin, "/stats?format=json")
        .await
        .ok()?;
    if r.status != 200 {
        return None;
    }
    let j: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    Some(
        j["stats"]
            .as_array()?
            .iter()
            .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["value"].as_i64()?)))
            .collect(),
    )
}
