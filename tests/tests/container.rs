//! The agent's container image run for real (issue 11, item 9): the image `cargo xtask test`
//! builds offline (`cargo xtask image`: a scratch root with the binary, its libraries and the
//! eBPF object), started by podman (runc) with exactly the DaemonSet's security context —
//! capabilities dropped to BPF, NET_ADMIN, SYS_ADMIN and SYS_RESOURCE, not privileged, no
//! privilege escalation, read-only root filesystem, host network, bpffs and cgroup2 mounted,
//! state and run directories from the host — answering its probes and capturing pod
//! connects end to end on the real kernel.

use plumb_tests::capture::{agent_config, roundtrip, unavailable, Scene, VIP};
use plumb_tests::client::{get, stat};
use plumb_tests::TempDir;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const IMAGE: &str = "localhost/plumb:test";

/// Capability numbers (linux/capability.h) the DaemonSet adds back.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_BPF: u32 = 39;

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("run podman")
}

/// Why the container cannot run here, if it cannot.
fn container_unavailable() -> Option<String> {
    if let Some(why) = unavailable() {
        return Some(why);
    }
    if plumb_tests::agent::which("podman").is_none() {
        return Some("podman is not installed (cargo xtask test installs podman and runc)".into());
    }
    if !podman(&["image", "exists", IMAGE]).status.success() {
        return Some(format!(
            "the image {IMAGE} is not built (cargo xtask image)"
        ));
    }
    None
}

/// Removes the container (by name) however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "2", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_with_the_daemonsets_security_context_and_captures() {
    if let Some(why) = container_unavailable() {
        plumb_tests::skip(&why);
        return;
    }
    let scene = Scene::new("container", &[(8080, 8090), (8081, 8091)]);
    let (node, client, server, pin) = (&scene.node, &scene.client, &scene.server, &scene.pin);
    let admin_port = plumb_tests::servers::closed_port().port();
    let mut config: Value = serde_json::from_str(&agent_config(node, server, pin, false)).unwrap();
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port.into();
    let dir = TempDir::new("container");
    let etc = dir.path.join("etc");
    let (state, run) = (dir.path.join("state"), dir.path.join("run"));
    for d in [&etc, &state, &run] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(etc.join("plumb.yaml"), config.to_string()).unwrap();
    let cgroup_root = plumb_tests::pods::cgroup2_root().expect("cgroup2");
    let cgroup_mount = format!("{0}:{0}:ro", cgroup_root.display());
    let name = format!("plumb-test-{}", std::process::id());
    let vol =
        |host: &std::path::Path, at: &str, mode: &str| format!("{}:{at}{mode}", host.display());
    let (etc_v, state_v, run_v) = (
        vol(&etc, "/etc/plumb", ":ro"),
        vol(&state, "/var/lib/plumb", ""),
        vol(&run, "/run/plumb", ""),
    );
    // Within what this process may grant (podman cannot raise a limit beyond its own).
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let nofile = format!("nofile={0}:{0}", lim.rlim_max.min(65536));
    let _container = Container(name.clone());
    // The DaemonSet's container, as podman spells it (crun refuses this hybrid host's
    // cgroups: runc; explicit ulimits, as the machine notes say).
    let out = podman(&[
        "run",
        "--runtime",
        "runc",
        "--detach",
        "--name",
        &name,
        "--network",
        "host",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "BPF,NET_ADMIN,SYS_ADMIN,SYS_RESOURCE",
        "--security-opt",
        "no-new-privileges",
        "--read-only",
        "--ulimit",
        &nofile,
        "--ulimit",
        "nproc=4096:4096",
        "--volume",
        "/sys/fs/bpf:/sys/fs/bpf",
        "--volume",
        &cgroup_mount,
        "--volume",
        &etc_v,
        "--volume",
        &state_v,
        "--volume",
        &run_v,
        IMAGE,
        "run",
        "--config=/etc/plumb/plumb.yaml",
        "--drain-time-s=1",
        "--xds-cache=/var/lib/plumb/xds.cache",
        "--upgrade-socket=/run/plumb/upgrade.sock",
    ]);
    assert!(
        out.status.success(),
        "podman run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = || {
        let o = podman(&["logs", &name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    // The readiness probe, then the liveness probe, as the kubelet would send them.
    plumb_tests::wait_until(
        "the readiness probe passes",
        Duration::from_secs(30),
        || async {
            plumb_tests::client::http("GET", admin, "/ready")
                .await
                .is_ok_and(|r| r.status == 200)
        },
    )
    .await;
    assert_eq!(get(admin, "/server_info").await.status, 200);
    assert_eq!(stat(admin, "redirect.active").await, 1, "{}", logs());

    // The process runs with exactly the four capabilities, no way to gain more, on a
    // read-only root.
    let pid = String::from_utf8(podman(&["inspect", "--format", "{{.State.Pid}}", &name]).stdout)
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    // What this machine can grant at all: a sandbox may lack some (this one's root has no
    // CAP_SYS_RESOURCE in its bounding set), and no container gets more than its host.
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = own
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let want: u64 = [CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SYS_RESOURCE, CAP_BPF]
        .iter()
        .map(|c| 1u64 << c)
        .sum::<u64>()
        & bounding;
    let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    assert_eq!(eff, want, "effective capabilities {eff:#x}");
    assert_eq!(field("NoNewPrivs:"), "1");
    let inspect = podman(&[
        "inspect",
        "--format",
        "{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.Privileged}}",
        &name,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "true false"
    );

    // Capture end to end: a VIP that exists nowhere reaches the server pod through the agent
    // in the container, and a passthrough destination keeps its original address.
    let r = roundtrip(client, &format!("{VIP}:80"), 100_000);
    assert_eq!(r["ok"], true, "{r}\n{}", logs());
    let r = roundtrip(client, &format!("{}:8081", server.ip), 5_000);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(stat(admin, "cluster.backend.upstream_cx_total").await, 1);
    assert_eq!(
        stat(admin, "cluster.passthrough.upstream_cx_total").await,
        1
    );
    assert!(
        pin.join("agent").exists() || std::fs::read_dir(pin).is_ok_and(|mut d| d.next().is_some()),
        "maps pinned on the host's bpffs"
    );

    // SIGTERM (podman stop) drains, detaches and unpins: capture fails open.
    let stop = podman(&["stop", "--time", "20", &name]);
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let exit = podman(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(
        String::from_utf8_lossy(&exit.stdout).trim(),
        "0",
        "{}",
        logs()
    );
    let r = roundtrip(client, &format!("{}:8081", server.ip), 1_000);
    assert_eq!(r["ok"], true, "direct again once the agent is gone: {r}");
}
