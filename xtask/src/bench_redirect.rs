//! `cargo xtask bench redirect`: how a workload's connections fare, side by side in one run:
//! direct, through a node Plumb captured by eBPF (with and without sk_msg), and through a
//! sidecar Plumb captured by iptables REDIRECT (the classic sidecar method). Two fake pods
//! (netns + veth + cgroup2) in 10.213.250.0/24; the client runs in the enrolled cgroup. Root
//! only. Everything created is removed at the end, also on error.

use crate::util::{self, root_dir, KillOnDrop};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NET: &str = "10.213.250";
const PROXY: &str = "10.213.250.1";
const SERVER_IP: &str = "10.213.250.10";
const CLIENT_NS: &str = "plumb-bench-client";
const SERVER_NS: &str = "plumb-bench-server";
const PIN: &str = "/sys/fs/bpf/plumb-bench";

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Everything the bench creates; removed on drop.
struct Testbed {
    cgroup: PathBuf,
    agent_cgroup: PathBuf,
    procs: Vec<Child>,
}

impl Testbed {
    fn new() -> Result<Self> {
        let root = cgroup2_root().context("no cgroup2 hierarchy mounted")?;
        let tb = Self {
            cgroup: root.join("plumb-bench"),
            agent_cgroup: root.join("plumb-bench-agent"),
            procs: Vec::new(),
        };
        tb.teardown_network(); // leftovers of an interrupted run
        std::fs::create_dir_all(tb.cgroup.join("client"))?;
        std::fs::create_dir_all(&tb.agent_cgroup)?;
        sh(&["ip", "addr", "add", &format!("{PROXY}/32"), "dev", "lo"])?;
        for (ns, host_if, k) in [(CLIENT_NS, "pbench-c", 1u8), (SERVER_NS, "pbench-s", 2u8)] {
            let gw = format!("{NET}.{}", 4 * k + 1);
            let ip = format!("{NET}.{}", 4 * k + 2);
            sh(&["ip", "netns", "add", ns])?;
            sh(&[
                "ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            sh(&["ip", "addr", "add", &format!("{gw}/30"), "dev", host_if])?;
            sh(&["ip", "link", "set", host_if, "up"])?;
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{host_if}/forwarding"), "1")?;
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/30"),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sh(&["ip", "-n", ns, "route", "add", "default", "via", &gw])?;
        }
        Ok(tb)
    }

    fn teardown_network(&self) {
        for ns in [CLIENT_NS, SERVER_NS] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{PROXY}/32"), "dev", "lo"])
            .output();
    }

    /// A command run in `ns`, moved into `cgroup` first (via a shell `exec`, so the PID is
    /// the program's).
    fn spawn_in(
        &mut self,
        ns: Option<&str>,
        cgroup: Option<&Path>,
        argv: &[String],
        log: &Path,
    ) -> Result<u32> {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &in_pod_script(ns, cgroup, argv)]);
        let f = std::fs::File::create(log)?;
        let child = cmd
            .stdout(f.try_clone()?)
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()?;
        let pid = child.id();
        self.procs.push(child);
        Ok(pid)
    }

    fn stop(&mut self, pid: u32) {
        if let Some(i) = self.procs.iter().position(|c| c.id() == pid) {
            let mut c = self.procs.remove(i);
            let _ = util::signal(pid, "TERM");
            if util::wait_child(&mut c, Duration::from_secs(20)).is_err() {
                drop(KillOnDrop(pid));
            }
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.teardown_network();
        for cg in [
            self.cgroup.join("client"),
            self.cgroup.clone(),
            self.agent_cgroup.clone(),
        ] {
            for _ in 0..100 {
                if std::fs::remove_dir(&cg).is_ok() || !cg.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(PIN);
    }
}

/// A shell script that joins `cgroup` (before entering the netns: `ip netns exec` remounts
/// /sys, hiding the cgroup tree) and then execs `argv` in `ns`.
fn in_pod_script(ns: Option<&str>, cgroup: Option<&Path>, argv: &[String]) -> String {
    let mut script = String::new();
    if let Some(cg) = cgroup {
        script.push_str(&format!("echo $$ > '{}/cgroup.procs' && ", cg.display()));
    }
    script.push_str("exec");
    if let Some(ns) = ns {
        script.push_str(&format!(" ip netns exec '{ns}'"));
    }
    for a in argv {
        script.push_str(&format!(" '{a}'"));
    }
    script
}

fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
}

fn tcp_proxy(prefix: &str, cluster: &str) -> Value {
    json!([{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": prefix, "cluster": cluster}}]}])
}

/// Node Plumb: captured by eBPF, passthrough to the original destination.
fn node_config(client_cgroup: &Path, sk_msg: bool) -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15900}}},
        "static_resources": {
            "listeners": [{"name": "outbound", "use_original_dst": true,
                "address": {"socket_address": {"address": PROXY, "port_value": 15001}},
                "filter_chains": tcp_proxy("outbound", "passthrough")}],
            "clusters": [{"name": "passthrough", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED"}],
        },
        "bootstrap_extensions": [{"name": "plumb.redirect", "typed_config": {
            "@type": "type.googleapis.com/plumb.redirect.v1.Redirect",
            "listener": "outbound", "cgroups": [client_cgroup.to_str().unwrap()],
            "capture": [{"cidr": format!("{SERVER_IP}/32"), "ports": [8080]}],
            "pin_path": PIN, "sk_msg": sk_msg, "required": true,
        }}],
    })
}

/// Sidecar Plumb: in the client's netns, fed by iptables REDIRECT (SO_ORIGINAL_DST).
fn sidecar_config() -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15900}}},
        "static_resources": {
            "listeners": [{"name": "outbound", "use_original_dst": true,
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15001}},
                "filter_chains": tcp_proxy("outbound", "passthrough")}],
            "clusters": [{"name": "passthrough", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED"}],
        },
    })
}

fn client_run(loadgen: &Path, cgroup: &Path, args: &[&str]) -> Result<Value> {
    let argv: Vec<String> = std::iter::once(loadgen.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect();
    let out = Command::new("sh")
        .args(["-c", &in_pod_script(Some(CLIENT_NS), Some(cgroup), &argv)])
        .output()
        .context("run the client in its pod")?;
    if !out.status.success() {
        bail!(
            "client {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("client output: {}", String::from_utf8_lossy(&out.stdout)))
}

fn wait_ready(loadgen: &Path, ns: Option<&str>, admin: &str) -> Result<()> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(loadgen);
            c
        }
        None => Command::new(loadgen),
    };
    let st = cmd
        .args([
            "wait-http",
            "--addr",
            admin,
            "--path",
            "/ready",
            "--secs",
            "15",
        ])
        .status()?;
    if !st.success() {
        bail!("plumb at {admin} did not become ready");
    }
    Ok(())
}

pub fn bench(secs: f64) -> Result<()> {
    if !Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
    {
        bail!("bench redirect needs root (network namespaces, cgroups, eBPF)");
    }
    util::ensure_debian_packages(&[("iptables", "iptables")])?;
    crate::ebpf::build()?;
    util::build_release_bins()?;
    let plumb = root_dir().join("target/release/plumb");
    let loadgen = root_dir().join("target/release/plumb-load");
    let dir = root_dir().join("target/bench");
    std::fs::create_dir_all(&dir)?;

    let mut tb = Testbed::new()?;
    let client_cg = tb.cgroup.join("client");
    let s = |v: &str| v.to_string();
    tb.spawn_in(
        Some(SERVER_NS),
        None,
        &[
            s(loadgen.to_str().unwrap()),
            s("serve"),
            s("--echo"),
            format!("{SERVER_IP}:8080"),
            s("--sink"),
            format!("{SERVER_IP}:8090"),
        ],
        &dir.join("redirect-server.log"),
    )?;
    let target = format!("{SERVER_IP}:8080");
    wait_port_in_ns(&loadgen, &target)?;
    let secs_s = format!("{secs}");
    let measure = |name: &str| -> Result<Value> {
        eprintln!("xtask: measuring {name} ({secs}s per test)...");
        let cr = client_run(
            &loadgen,
            &client_cg,
            &[
                "connrate", "--addr", &target, "--conns", "16", "--secs", &secs_s,
            ],
        )?;
        let lat = client_run(
            &loadgen,
            &client_cg,
            &[
                "latency", "--addr", &target, "--conns", "64", "--secs", &secs_s, "--size", "64",
            ],
        )?;
        if cr["errors"].as_u64() != Some(0) || lat["errors"].as_u64() != Some(0) {
            bail!(
                "{name}: errors (connrate {}, latency {})",
                cr["errors"],
                lat["errors"]
            );
        }
        Ok(
            json!({"target": name, "cps": cr["cps"], "conn_p50_us": cr["p50_us"], "conn_p99_us": cr["p99_us"],
                  "rps": lat["rps"], "p50_us": lat["p50_us"], "p99_us": lat["p99_us"]}),
        )
    };
    let mut results = vec![measure("direct")?];

    for (name, sk_msg) in [("plumb eBPF", false), ("plumb eBPF+sk_msg", true)] {
        let cfg = dir.join("redirect-node.yaml");
        std::fs::write(
            &cfg,
            serde_json::to_string_pretty(&node_config(&client_cg, sk_msg))?,
        )?;
        let agent_cg = tb.agent_cgroup.clone();
        let pid = tb.spawn_in(
            None,
            Some(&agent_cg),
            &[
                s(plumb.to_str().unwrap()),
                s("run"),
                s("--log-level"),
                s("warn"),
                s("--concurrency"),
                s("1"),
                s("--config"),
                s(cfg.to_str().unwrap()),
            ],
            &dir.join(format!("redirect-node-{sk_msg}.log")),
        )?;
        wait_ready(&loadgen, None, "127.0.0.1:15900")?;
        let mut r = measure(name)?;
        let (_, stats) = util::http_get(
            "127.0.0.1:15900",
            "/stats?filter=%5Eredirect%5C.(connect_redirected%7Csk_msg_redirected)",
        )?;
        r["captured"] = json!(stats.lines().next().unwrap_or("").to_string());
        if !stats.contains("redirect.connect_redirected: ")
            || stats.contains("redirect.connect_redirected: 0\n")
        {
            bail!("{name}: nothing was captured ({stats})");
        }
        results.push(r);
        tb.stop(pid);
    }

    // Sidecar: Plumb in the client's netns, iptables REDIRECT for the client's cgroup only.
    let cfg = dir.join("redirect-sidecar.yaml");
    std::fs::write(&cfg, serde_json::to_string_pretty(&sidecar_config())?)?;
    let agent_cg = tb.agent_cgroup.clone();
    let pid = tb.spawn_in(
        Some(CLIENT_NS),
        Some(&agent_cg),
        &[
            s(plumb.to_str().unwrap()),
            s("run"),
            s("--log-level"),
            s("warn"),
            s("--concurrency"),
            s("1"),
            s("--config"),
            s(cfg.to_str().unwrap()),
        ],
        &dir.join("redirect-sidecar.log"),
    )?;
    wait_ready(&loadgen, Some(CLIENT_NS), "127.0.0.1:15900")?;
    let rel = client_cg
        .strip_prefix(cgroup2_root().unwrap_or_default())
        .unwrap_or(&client_cg)
        .display()
        .to_string();
    sh(&[
        "ip",
        "netns",
        "exec",
        CLIENT_NS,
        "iptables",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        SERVER_IP,
        "--dport",
        "8080",
        "-m",
        "cgroup",
        "--path",
        &rel,
        "-j",
        "REDIRECT",
        "--to-ports",
        "15001",
    ])?;
    results.push(measure("plumb iptables")?);
    tb.stop(pid);
    drop(tb);

    print_table(&results, secs);
    std::fs::write(
        dir.join("redirect.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    eprintln!(
        "xtask: raw results in {}",
        dir.join("redirect.json").display()
    );
    Ok(())
}

fn wait_port_in_ns(loadgen: &Path, target: &str) -> Result<()> {
    util::wait_for(target, Duration::from_secs(10), || {
        Command::new("ip")
            .args(["netns", "exec", CLIENT_NS])
            .arg(loadgen)
            .args(["roundtrip", "--addr", target, "--bytes", "10"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("\"ok\":true"))
            .unwrap_or(false)
    })
}

fn print_table(results: &[Value], secs: f64) {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let d = &results[0];
    println!("\nRedirect benchmark: {secs}s per test; client pod → server pod (veth), Plumb with 1 worker");
    println!("ratios are to direct (rates: higher is better; latencies: lower is better)\n");
    println!(
        "{:<18} {:>16} {:>16} {:>16} {:>16} {:>16} {:>16}",
        "path",
        "new conns/s",
        "conn p50 us",
        "conn p99 us",
        "req/s (64 conns)",
        "req p50 us",
        "req p99 us"
    );
    for r in results {
        let cell = |k: &str| {
            if r["target"] == "direct" {
                format!("{:.0}", f(r, k))
            } else {
                format!("{:.0} ({:.2}x)", f(r, k), f(r, k) / f(d, k))
            }
        };
        println!(
            "{:<18} {:>16} {:>16} {:>16} {:>16} {:>16} {:>16}",
            r["target"].as_str().unwrap_or("?"),
            cell("cps"),
            cell("conn_p50_us"),
            cell("conn_p99_us"),
            cell("rps"),
            cell("p50_us"),
            cell("p99_us"),
        );
    }
}
