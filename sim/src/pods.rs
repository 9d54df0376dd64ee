//! The node: Plumb in the host's network namespace capturing with eBPF, and "pods" — network
//! namespaces with their own cgroup2 directory, joined to the host by a veth pair — running
//! the replicas and the clients as processes (`plumb-sim pod-serve`, `plumb-sim pod-flow`).
//! They reach services by virtual IP; the agent's connect4 hook steers those connects into
//! it. Each pod process writes its records to stdout (`records::Wire`), which is read back
//! into the run's records; a replica takes fault commands on stdin.
//!
//! Addresses: the pods of a node take one /24 of 10.213.0.0/16 (`plumb_tests::pods`); the
//! services' virtual IPs are `10.213.254.<k>:80`.

use crate::records::Records;
use crate::scenario::Protocol;
use crate::service::Knobs;
use anyhow::{bail, Context, Result};
use plumb_tests::pods::{Node, Pod};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The port replicas listen on in their pods.
pub const POD_PORT: u16 = 8080;

/// Service `k`'s virtual IP.
pub fn vip(k: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 213, 254, (k + 1) as u8), 80))
}

/// Why the pod mode cannot run here, if it cannot.
pub fn unavailable(plumb: &std::path::Path) -> Option<String> {
    if let Some(why) = plumb_tests::pods::unavailable() {
        return Some(why);
    }
    if bpf_object(plumb).is_none() {
        return Some(
            "the eBPF object target/bpf/plumb.bpf.o is missing (cargo xtask build-ebpf)".into(),
        );
    }
    None
}

/// The eBPF object beside the build: `target/bpf/plumb.bpf.o`.
pub fn bpf_object(plumb: &std::path::Path) -> Option<PathBuf> {
    let p = plumb.parent()?.parent()?.join("bpf/plumb.bpf.o");
    p.is_file().then_some(p)
}

/// The host answers connects to a virtual IP that nothing captured (the agent killed, capture
/// failed open) with "unreachable" instead of routing them off the machine.
struct VipRoute {
    added: bool,
}

const VIP_RANGE: &str = "10.213.254.0/24";

impl VipRoute {
    fn add() -> Self {
        let added = std::process::Command::new("ip")
            .args(["route", "add", "unreachable", VIP_RANGE])
            .status()
            .is_ok_and(|s| s.success());
        Self { added }
    }
}

impl Drop for VipRoute {
    fn drop(&mut self) {
        if self.added {
            let _ = std::process::Command::new("ip")
                .args(["route", "del", "unreachable", VIP_RANGE])
                .status();
        }
    }
}

/// The node and the pods not in use (a replica that left gives its pod back).
pub struct PodPool {
    _vips: VipRoute,
    pub node: Node,
    free: Vec<Pod>,
    made: usize,
    pub bin: PathBuf,
    pub scenario: PathBuf,
    pub logs: PathBuf,
    pub records: Arc<Records>,
    /// mTLS: where the replicas' certificates are (`<service>.pem`, `.key`, `ca.pem`).
    pub tls_dir: Option<PathBuf>,
}

impl PodPool {
    pub fn new(bin: PathBuf, scenario: PathBuf, logs: PathBuf, records: Arc<Records>) -> Self {
        Self {
            _vips: VipRoute::add(),
            node: Node::new(),
            free: Vec::new(),
            made: 0,
            bin,
            scenario,
            logs,
            records,
            tls_dir: None,
        }
    }

    pub fn take(&mut self) -> Result<Pod> {
        if let Some(p) = self.free.pop() {
            return Ok(p);
        }
        if self.made >= 58 {
            bail!("a node holds at most 58 pods");
        }
        self.made += 1;
        Ok(self.node.add_pod(&format!("p{}", self.made)))
    }

    pub fn give_back(&mut self, pod: Pod) {
        self.free.push(pod);
    }
}

/// A replica's process in its pod.
pub struct PodProc {
    pub pod: Pod,
    args: Vec<String>,
    child: Option<Child>,
    pool: Arc<Mutex<PodPool>>,
}

impl PodProc {
    pub fn new(
        pool: Arc<Mutex<PodPool>>,
        pod: Pod,
        service: &str,
        replica: &str,
        targets: &str,
    ) -> Self {
        let (scenario, tls) = {
            let p = pool.lock().unwrap();
            (p.scenario.display().to_string(), p.tls_dir.clone())
        };
        let mut args = vec![
            "pod-serve".into(),
            "--scenario".into(),
            scenario,
            "--service".into(),
            service.into(),
            "--replica".into(),
            replica.into(),
            "--listen".into(),
            SocketAddr::from((pod.ip, POD_PORT)).to_string(),
            "--targets".into(),
            targets.into(),
        ];
        if let Some(d) = tls {
            args.push("--tls".into());
            args.push(d.display().to_string());
        }
        Self {
            pod,
            args,
            child: None,
            pool,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.pod.ip, POD_PORT))
    }

    /// Starts the process and waits for it to listen; its stdin goes to `knobs`.
    pub fn spawn(&mut self, knobs: &Knobs, name: &str) -> Result<()> {
        let (bin, logs, records) = {
            let p = self.pool.lock().unwrap();
            (p.bin.clone(), p.logs.clone(), p.records.clone())
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{name}.log")))?;
        let mut child = self
            .pod
            .command(&bin)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name} in its pod"))?;
        knobs.set_pipe(child.stdin.take());
        let out = child.stdout.take().context("pod stdout")?;
        self.child = Some(child);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if line.contains("\"ready\"") {
                    let _ = ready_tx.send(());
                } else {
                    records.take_line(&line);
                }
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => Ok(()),
            Err(_) => bail!("{name} did not start listening in its pod within 10 s"),
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Graceful: `stop` on stdin (the replica finishes what it serves), then the pod is given
    /// back to the pool.
    pub fn stop(mut self, knobs: &Knobs) {
        knobs.command("stop");
        if let Some(mut c) = self.child.take() {
            for _ in 0..800 {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let pod = self.pod.clone();
        self.pool.lock().unwrap().give_back(pod);
    }
}

impl Drop for PodProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a flow's clients in `pod`; their records go to `records`, and the count of
/// requests they left unfinished to `unfinished`.
#[allow(clippy::too_many_arguments)]
pub fn spawn_flow(
    pool: &PodPool,
    pod: &Pod,
    flow: &str,
    target: SocketAddr,
    protocol: Protocol,
    seed: u64,
    duration: Duration,
    max_inflight: usize,
    unfinished: Arc<AtomicUsize>,
) -> Result<std::thread::JoinHandle<()>> {
    let log = std::fs::File::create(pool.logs.join(format!("flow-{flow}.log")))?;
    let mut child = pod
        .command(&pool.bin)
        .args([
            "pod-flow",
            "--scenario",
            &pool.scenario.display().to_string(),
            "--flow",
            flow,
            "--target",
            &format!("{target}/{}", protocol_name(protocol)),
            "--seed",
            &seed.to_string(),
            "--start-wall",
            &pool.records.wall_origin().to_string(),
            "--duration",
            &format!("{}ms", duration.as_millis()),
            "--max-inflight",
            &max_inflight.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting flow {flow} in its pod"))?;
    let out = child.stdout.take().context("flow stdout")?;
    let records = pool.records.clone();
    Ok(std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
            if !records.take_line(&line) {
                if let Some(n) = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .filter(|v| v["k"] == "done")
                    .and_then(|v| v["unfinished"].as_u64())
                {
                    unfinished.fetch_add(n as usize, Ordering::Relaxed);
                }
            }
        }
        let _ = child.wait();
    }))
}

pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http1 => "http1",
        Protocol::Http2 => "http2",
        Protocol::Grpc => "grpc",
    }
}

pub fn parse_protocol(s: &str) -> Option<Protocol> {
    match s {
        "http1" => Some(Protocol::Http1),
        "http2" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        _ => None,
    }
}

/// `name=ip:port/protocol,...` (what `--targets` carries).
pub fn encode_targets(t: &crate::service::Targets) -> String {
    t.iter()
        .map(|(n, (a, p))| format!("{n}={a}/{}", protocol_name(*p)))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn decode_target(s: &str) -> Option<(SocketAddr, Protocol)> {
    let (a, p) = s.split_once('/')?;
    Some((a.parse().ok()?, parse_protocol(p)?))
}

pub fn decode_targets(s: &str) -> Option<crate::service::Targets> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| {
            let (n, t) = x.split_once('=')?;
            Some((n.to_string(), decode_target(t)?))
        })
        .collect()
}
