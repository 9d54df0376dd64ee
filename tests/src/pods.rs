//! Fake "pods" on the real kernel: a network namespace joined to the host by a veth pair, plus
//! its own cgroup2 directory, so eBPF programs attached to a parent cgroup see the pod's
//! sockets exactly as they would a Kubernetes pod's.
//!
//! Addresses come from 10.213.0.0/16 only: each `Node` takes one /24 (`10.213.N.0/24`); the
//! proxy address is `10.213.N.1` (on the host's `lo`), pod k gets the /30 `10.213.N.4k` with
//! the host side at `.4k+1` and the pod at `.4k+2`. IPv6 mirrors it in `fd00:213::/32`
//! (ULA): proxy `fd00:213:N::1`, pod k `fd00:213:N:k::2/64` behind `fd00:213:N:k::1`.
//! Everything is removed on drop.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Root of the cgroup2 hierarchy on this machine (hybrid hosts mount it at `unified`).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
}

/// Why pod tests cannot run here, if they cannot (not root, no cgroup2, no `ip`).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("pod tests need root (network namespaces, cgroups, BPF)".into());
    }
    if cgroup2_root().is_none() {
        return Some("no cgroup2 hierarchy is mounted".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("the `ip` command (iproute2) is missing".into());
    }
    None
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

static NEXT_NODE: AtomicU32 = AtomicU32::new(0);

/// A test "node": a /24, a proxy address, a cgroup that pods live under.
pub struct Node {
    pub net: u8,
    pub proxy_ip: Ipv4Addr,
    pub proxy_ip6: Ipv6Addr,
    /// The parent cgroup of all pods: the one to enroll (like `kubepods`).
    pub cgroup: PathBuf,
    pods: Vec<PodState>,
    tag: String,
}

struct PodState {
    netns: String,
    cgroup: PathBuf,
}

/// A pod on a `Node`.
#[derive(Clone)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub cgroup: PathBuf,
}

impl Node {
    /// Creates the node. Call `unavailable()` first.
    pub fn new() -> Self {
        let n = NEXT_NODE.fetch_add(1, Ordering::SeqCst);
        // Spread across /24s by process so concurrent test binaries do not collide.
        let net = (10 + (std::process::id() % 40) * 6 + n) as u8;
        let tag = format!("pt{}x{}", std::process::id() % 100_000, n);
        let proxy_ip = Ipv4Addr::new(10, 213, net, 1);
        ip(&["addr", "add", &format!("{proxy_ip}/32"), "dev", "lo"]);
        let proxy_ip6 = Ipv6Addr::new(0xfd00, 0x213, net as u16, 0, 0, 0, 0, 1);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{proxy_ip6}/128"),
            "dev",
            "lo",
            "nodad",
        ]);
        let cgroup = cgroup2_root()
            .expect("cgroup2")
            .join(format!("plumb-test-{tag}"));
        std::fs::create_dir_all(&cgroup).expect("create node cgroup");
        Self {
            net,
            proxy_ip,
            proxy_ip6,
            cgroup,
            pods: Vec::new(),
            tag,
        }
    }

    pub fn add_pod(&mut self, name: &str) -> Pod {
        let k = self.pods.len() as u8 + 1;
        assert!(k < 60, "too many pods");
        let netns = format!("{}-{name}", self.tag);
        let host_if = format!("{}h{k}", self.tag);
        let host_if = host_if[host_if.len().saturating_sub(15)..].to_string();
        let gateway = Ipv4Addr::new(10, 213, self.net, 4 * k + 1);
        let pod_ip = Ipv4Addr::new(10, 213, self.net, 4 * k + 2);
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&["addr", "add", &format!("{gateway}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        // Pod-to-pod traffic is routed by the host: forward what arrives on this veth (a
        // per-interface setting, gone with the interface; the global switch is untouched).
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{host_if}/forwarding"), "1")
            .expect("enable forwarding on the pod's veth");
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{pod_ip}/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            "default",
            "via",
            &gateway.to_string(),
        ]);
        let gateway6 = Ipv6Addr::new(0xfd00, 0x213, self.net as u16, k as u16, 0, 0, 0, 1);
        let pod_ip6 = Ipv6Addr::new(0xfd00, 0x213, self.net as u16, k as u16, 0, 0, 0, 2);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("{gateway6}/64"),
            "dev",
            &host_if,
            "nodad",
        ]);
        ip(&[
            "-n",
            &netns,
            "-6",
            "addr",
            "add",
            &format!("{pod_ip6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&[
            "-n",
            &netns,
            "-6",
            "route",
            "add",
            "default",
            "via",
            &gateway6.to_string(),
        ]);
        let cgroup = self.cgroup.join(name);
        std::fs::create_dir_all(&cgroup).expect("create pod cgroup");
        self.pods.push(PodState {
            netns: netns.clone(),
            cgroup: cgroup.clone(),
        });
        Pod {
            name: name.to_string(),
            netns,
            ip: pod_ip,
            gateway,
            ip6: pod_ip6,
            cgroup,
        }
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

/// A cgroup2 directory created for a test, emptied and removed on drop.
pub struct CgroupDir {
    pub path: PathBuf,
}

impl CgroupDir {
    pub fn new(path: PathBuf) -> Self {
        std::fs::create_dir_all(&path).expect("create cgroup");
        Self { path }
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        kill_cgroup(&self.path);
    }
}

fn kill_cgroup(cgroup: &Path) {
    if let Ok(procs) = std::fs::read_to_string(cgroup.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on processes the test started in its own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // Wait briefly for the kernel to empty the cgroup, then remove it.
    for _ in 0..200 {
        if std::fs::remove_dir(cgroup).is_ok() || !cgroup.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for p in &self.pods {
            kill_cgroup(&p.cgroup);
            let _ = Command::new("ip").args(["netns", "del", &p.netns]).output();
        }
        kill_cgroup(&self.cgroup);
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.proxy_ip), "dev", "lo"])
            .output();
        let _ = Command::new("ip")
            .args([
                "-6",
                "addr",
                "del",
                &format!("{}/128", self.proxy_ip6),
                "dev",
                "lo",
            ])
            .output();
    }
}

impl Pod {
    /// A command that runs inside this pod: its network namespace and its cgroup.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let ns = std::fs::File::open(format!("/var/run/netns/{}", self.netns)).expect("open netns");
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.cgroup.join("cgroup.procs"))
            .expect("open cgroup.procs");
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe syscalls (setns, write) run between fork and exec;
        // the files stay alive because the closure owns them.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}
