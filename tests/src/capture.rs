//! The capture stage shared by the eBPF end-to-end suites (`redirect.rs`, `container.rs`):
//! a node with a client and a server pod, echo servers in the server pod, the agent config
//! that captures a VIP and a passthrough port, and round trips run from inside a pod.

use crate::agent::load_bin;
use crate::pods::{self, Node, Pod};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

pub const VIP: &str = "10.96.0.10";

/// Why these tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if let Some(why) = pods::unavailable() {
        return Some(why);
    }
    let obj = std::env::current_exe().ok().and_then(|e| {
        e.parent()?
            .parent()?
            .parent()
            .map(|t| t.join("bpf/plumb.bpf.o"))
    });
    match obj {
        Some(p) if p.is_file() => None,
        _ => Some(
            "the eBPF object target/bpf/plumb.bpf.o is missing (run `cargo xtask build-ebpf`)"
                .into(),
        ),
    }
}

/// Echo servers inside a pod, killed on drop.
pub struct PodServer(pub Child);

impl PodServer {
    pub fn start(pod: &Pod, echo_port: u16, sink_port: u16) -> Self {
        let mut child = pod
            .command(load_bin())
            .args([
                "serve",
                "--echo",
                &format!("{}:{echo_port}", pod.ip),
                "--sink",
                &format!("{}:{sink_port}", pod.ip),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start pod server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "pod server did not start");
        Self(child)
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs one echo round trip from inside `pod`; returns the tool's JSON report.
pub fn roundtrip(pod: &Pod, addr: &str, bytes: usize) -> Value {
    let out = pod
        .command(load_bin())
        .args(["roundtrip", "--addr", addr, "--bytes", &bytes.to_string()])
        .output()
        .expect("run roundtrip in pod");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "bad roundtrip output: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

pub fn tcp_proxy(name: &str, cluster: &str) -> Value {
    json!([{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": name, "cluster": cluster}}]}])
}

/// The agent config: a redirect listener on the node's proxy address with ORIGINAL_DST
/// passthrough, a VIP listener (bind_to_port: false) for `VIP:80` → server pod's 8080, and a
/// capture rule for the server pod's port 8081 (passthrough).
pub fn agent_config(node: &Node, server: &Pod, pin: &std::path::Path, sk_msg: bool) -> String {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "stats_flush_interval": "0.1s",
        "static_resources": {
            "listeners": [
                {"name": "outbound", "use_original_dst": true,
                 "address": {"socket_address": {"address": node.proxy_ip.to_string(), "port_value": 15001}},
                 "filter_chains": tcp_proxy("outbound", "passthrough")},
                {"name": "vip", "bind_to_port": false,
                 "address": {"socket_address": {"address": VIP, "port_value": 80}},
                 "filter_chains": tcp_proxy("vip", "backend")},
            ],
            "clusters": [
                {"name": "passthrough", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "2s"},
                {"name": "backend", "type": "STATIC", "connect_timeout": "2s",
                 "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
                     {"endpoint": {"address": {"socket_address": {"address": server.ip.to_string(), "port_value": 8080}}}}]}]}},
            ],
        },
        "bootstrap_extensions": [{"name": "plumb.redirect", "typed_config": {
            "@type": "type.googleapis.com/plumb.redirect.v1.Redirect",
            "listener": "outbound",
            "cgroups": [node.cgroup.to_str().unwrap()],
            "capture": [{"cidr": format!("{}/32", server.ip), "ports": [8081]}],
            "pin_path": pin.to_str().unwrap(),
            "sk_msg": sk_msg,
            "required": true,
            "heartbeat_interval": "0.1s",
            "fail_open_after": "0.5s",
        }}],
    })
    .to_string()
}

/// The usual stage: a node with a client and a server pod, echo servers (echo, sink port
/// pairs) in the server pod, and a pin directory removed afterwards.
pub struct Scene {
    _cleanup: PinCleanup,
    _servers: Vec<PodServer>,
    pub client: Pod,
    pub server: Pod,
    pub node: Node,
    pub pin: std::path::PathBuf,
}

impl Scene {
    pub fn new(tag: &str, echo: &[(u16, u16)]) -> Self {
        let mut node = Node::new();
        let client = node.add_pod("client");
        let server = node.add_pod("server");
        let servers = echo
            .iter()
            .map(|(e, s)| PodServer::start(&server, *e, *s))
            .collect();
        let pin = pin_dir(tag);
        Self {
            _cleanup: PinCleanup(pin.clone()),
            _servers: servers,
            client,
            server,
            node,
            pin,
        }
    }
}

/// A cgroup of the agent's own beside the node's enrolled one (not inside it): sk_msg attaches
/// sockops to the agent's cgroup, which must hold nothing else.
pub fn own_agent_cgroup(node: &Node) -> pods::CgroupDir {
    pods::CgroupDir::new(node.cgroup.with_file_name(format!(
        "{}-agent",
        node.cgroup.file_name().unwrap().to_str().unwrap()
    )))
}

pub fn pin_dir(tag: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!(
        "/sys/fs/bpf/plumb-test-{tag}-{}",
        std::process::id()
    ))
}

/// Removes a pin directory a killed agent left behind.
pub struct PinCleanup(pub std::path::PathBuf);

impl Drop for PinCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
