//! Starting Plumb for tests: in-process (fast, direct access to stats) or as a subprocess
//! (signals, exit codes, the real binary). Plus builders for bootstrap configs as JSON, which
//! is valid YAML.

use crate::client;
use crate::TempDir;
use plumb::server::{self, Options, ServerHandle, ShutdownKind};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A listener on 127.0.0.1 with an ephemeral port and a tcp_proxy to `cluster`.
pub fn tcp_listener(name: &str, cluster: &str) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": name,
                "cluster": cluster,
            }
        }]}]
    })
}

/// A listener on 127.0.0.1 with an ephemeral port and an HTTP connection manager whose
/// inline route configuration has `virtual_hosts`.
pub fn http_listener(name: &str, virtual_hosts: Value) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"name": name, "virtual_hosts": virtual_hosts},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            }
        }]}]
    })
}

/// One virtual host for every domain, with `routes`.
pub fn any_host(routes: Value) -> Value {
    json!([{"name": "any", "domains": ["*"], "routes": routes}])
}

/// The tcp_proxy `typed_config` of a listener built by `tcp_listener`, for tweaking.
pub fn tcp_proxy_of(listener: &mut Value) -> &mut Value {
    &mut listener["filter_chains"][0]["filters"][0]["typed_config"]
}

/// A STATIC cluster with one endpoint per address.
pub fn static_cluster(name: &str, endpoints: &[SocketAddr]) -> Value {
    let lb: Vec<Value> = endpoints
        .iter()
        .map(|a| {
            json!({"endpoint": {"address": {"socket_address": {
                "address": a.ip().to_string(), "port_value": a.port()
            }}}})
        })
        .collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb}]},
    })
}

/// A bootstrap with admin on an ephemeral loopback port.
pub fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>) -> String {
    json!({
        "node": {"id": "test-node", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "stats_flush_interval": "0.1s",
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
    .to_string()
}

/// Plumb running in this process (own runtimes and threads).
pub struct TestAgent {
    handle: Option<ServerHandle>,
}

impl TestAgent {
    pub async fn start(bootstrap: &str) -> Self {
        Self::start_with(
            bootstrap,
            Options {
                concurrency: 2,
                drain_time: Duration::from_secs(5),
                ..Options::default()
            },
        )
        .await
    }

    pub async fn start_with(bootstrap: &str, options: Options) -> Self {
        let agent = Self::start_unready(bootstrap, options);
        let admin = agent.admin();
        crate::wait_until("agent /ready", Duration::from_secs(10), || async move {
            matches!(client::http("GET", admin, "/ready").await, Ok(r) if r.status == 200)
        })
        .await;
        agent
    }

    /// Starts without waiting for `/ready` (for tests of readiness and of start-up itself).
    pub fn start_unready(bootstrap: &str, options: Options) -> Self {
        let snapshot = plumb::config::parse_bootstrap(bootstrap, "test bootstrap")
            .unwrap_or_else(|e| panic!("test bootstrap is invalid:\n{e}\n{bootstrap}"));
        let handle = server::start(snapshot, options, None).expect("start plumb");
        Self {
            handle: Some(handle),
        }
    }

    fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("agent running")
    }

    pub fn admin(&self) -> SocketAddr {
        self.handle().admin_address().expect("admin configured")
    }

    pub fn listener(&self, name: &str) -> SocketAddr {
        self.handle()
            .listener_address(name)
            .unwrap_or_else(|| panic!("no listener named {name}"))
    }

    /// Applies `bootstrap` as a reload (SIGHUP) does; returns the problems it reports.
    pub fn reload(&self, bootstrap: &str) -> Vec<String> {
        let snapshot = plumb::config::parse_bootstrap(bootstrap, "reloaded bootstrap")
            .unwrap_or_else(|e| panic!("reloaded bootstrap is invalid:\n{e}"));
        self.handle().shared().apply(&snapshot)
    }

    /// A counter or gauge by its full Envoy name, read directly from the store.
    pub fn stat(&self, name: &str) -> i64 {
        self.handle().shared().store.value(name).unwrap_or(0)
    }

    /// Waits until stat `name` satisfies `pred`.
    pub async fn wait_stat(&self, name: &str, pred: impl Fn(i64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.stat(name);
            if pred(v) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting on stat {name} (last value {v})");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Connections the drain counts as in flight (what a stop or a hand-over waits for).
    pub fn in_flight(&self) -> usize {
        self.handle().shared().drain.active()
    }

    pub fn shutdown(&self, kind: ShutdownKind) {
        self.handle().shutdown(kind);
    }

    /// Waits (off the async workers) for the server to finish shutting down.
    pub async fn join(mut self) {
        let h = self.handle.take().expect("agent running");
        tokio::task::spawn_blocking(move || h.wait())
            .await
            .expect("join")
            .expect("server exits cleanly");
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown(ShutdownKind::Immediate);
            let _ = h.wait();
        }
    }
}

/// Path to the `plumb` binary of this build, building it if needed.
pub fn plumb_bin() -> PathBuf {
    built_bin("plumb", "plumb")
}

/// Path to the `plumb-load` client/server tool, building it if needed.
pub fn load_bin() -> PathBuf {
    built_bin("plumb-tests", "plumb-load")
}

/// Path to the `plumb-sim` simulator, building it if needed.
pub fn sim_bin() -> PathBuf {
    built_bin("plumb-sim", "plumb-sim")
}

fn built_bin(package: &str, bin: &str) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<std::collections::HashMap<String, PathBuf>>> =
        OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.get(bin) {
        return p.clone();
    }
    // target/<profile>/deps/<test-binary> → target/<profile>/<bin>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(bin);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Build exactly what `cargo test --workspace` builds (every package, with the test
    // targets and so the dev-dependencies' features), so Cargo unifies features the same way
    // and this is a no-op after the test build instead of a second variant of everything.
    let _ = package;
    cmd.args(["build", "--quiet", "--workspace", "--bins", "--tests"]);
    // The profile the tests were built with (its directory's name: `debug` is `dev`).
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    // Always ask cargo: it is a no-op when the binary is fresh, and never runs stale code.
    // The variables Cargo sets for this test process must not reach the nested build: build
    // scripts watch some of them, and a changed value makes both builds recompile each other.
    // (xtask's `cargo()` strips the same list; xtask depends on nothing in the workspace.)
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
            cmd.env_remove(&k);
        }
    }
    let status = cmd.status().expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p {package} --bin {bin} failed"
    );
    assert!(path.exists(), "{} missing after build", path.display());
    built.insert(bin.to_string(), path.clone());
    path
}

/// Runs `plumb` with `args` to completion; returns (exit status, stdout, stderr).
pub fn plumb_cmd(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(plumb_bin())
        .args(args)
        .output()
        .expect("run plumb");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The real `plumb run` binary as a child process. Killed (by PID) on drop.
pub struct AgentProcess {
    child: Child,
    pub admin: SocketAddr,
    pub dir: TempDir,
}

impl AgentProcess {
    /// Starts `plumb run --config <bootstrap>` plus `args`, and waits for `/ready`.
    pub async fn spawn(bootstrap: &str, args: &[&str]) -> Self {
        Self::spawn_in(bootstrap, args, None).await
    }

    /// As `spawn`, with the process placed in `cgroup` (a cgroup2 directory) before exec.
    pub async fn spawn_in(
        bootstrap: &str,
        args: &[&str],
        cgroup: Option<&std::path::Path>,
    ) -> Self {
        Self::spawn_starting(bootstrap, args, cgroup)
            .await
            .ready()
            .await
    }

    /// Waits until `/ready` answers 200.
    async fn ready(self) -> Self {
        let admin = self.admin;
        crate::wait_until(
            "subprocess /ready",
            Duration::from_secs(20),
            || async move {
                matches!(client::http("GET", admin, "/ready").await, Ok(r) if r.status == 200)
            },
        )
        .await;
        self
    }

    /// Starts the agent and returns once it has written its admin address, without waiting
    /// for it to be ready.
    pub async fn spawn_starting(
        bootstrap: &str,
        args: &[&str],
        cgroup: Option<&std::path::Path>,
    ) -> Self {
        Self::spawn_placed(bootstrap, args, cgroup, false).await
    }

    /// As `spawn_in`, and in a cgroup namespace of its own rooted at `cgroup` (as container
    /// runtimes do on cgroup v2): `/proc/self/cgroup` then reads `0::/`.
    pub async fn spawn_in_cgroupns(
        bootstrap: &str,
        args: &[&str],
        cgroup: &std::path::Path,
    ) -> Self {
        Self::spawn_placed(bootstrap, args, Some(cgroup), true)
            .await
            .ready()
            .await
    }

    async fn spawn_placed(
        bootstrap: &str,
        args: &[&str],
        cgroup: Option<&std::path::Path>,
        cgroupns: bool,
    ) -> Self {
        let dir = TempDir::new("agent");
        let config = dir.write("bootstrap.yaml", bootstrap);
        let admin_file = dir.path.join("admin-address");
        let log = std::fs::File::create(dir.path.join("plumb.log")).expect("log file");
        let mut cmd = Command::new(plumb_bin());
        if let Some(cg) = cgroup {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let procs = std::fs::OpenOptions::new()
                .write(true)
                .open(cg.join("cgroup.procs"))
                .expect("open cgroup.procs");
            // SAFETY: only write(2) and unshare(2) run between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if cgroupns && libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn plumb");
        let mut p = Self {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let admin = loop {
            if let Ok(s) = std::fs::read_to_string(&admin_file) {
                if let Ok(a) = s.trim().parse::<SocketAddr>() {
                    break a;
                }
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("plumb exited early ({st}):\n{}", p.logs());
            }
            if Instant::now() > deadline {
                panic!("plumb did not write its admin address:\n{}", p.logs());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        p.admin = admin;
        p
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its status.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("plumb.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's PID.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Bound address of listener `name`, from `/listeners?format=json`.
    pub async fn listener(&self, name: &str) -> SocketAddr {
        let j = client::get(self.admin, "/listeners?format=json")
            .await
            .json();
        let l = j["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name} in {j}"));
        let sa = &l["local_address"]["socket_address"];
        format!("{}:{}", sa["address"].as_str().unwrap(), sa["port_value"])
            .parse()
            .unwrap()
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Kills a child process by PID when dropped (however the test ends).
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling a child this test started, by its PID.
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}

/// A program on PATH (or in /usr/sbin, /sbin), if installed.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
