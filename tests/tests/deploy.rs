//! Deployment artifacts: Kubernetes manifests against the OpenAPI schema, the systemd unit
//! with `systemd-analyze verify`, the sd_notify protocol for real, and the Containerfile's
//! references.

use plumb_tests::agent::plumb_bin;
use plumb_tests::TempDir;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

const MANIFESTS: &[&str] = &[
    "namespace.yaml",
    "serviceaccount.yaml",
    "configmap.yaml",
    "daemonset.yaml",
];

#[test]
fn kubernetes_manifests_validate_strictly_against_the_schema() {
    let dir = repo().join("deploy/kubernetes");
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let listed: Vec<&str> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .collect();
    assert_eq!(listed, MANIFESTS, "kustomization.yaml lists every manifest");
    // The bootstrap shipped in the ConfigMap is valid Plumb configuration.
    let cm = std::fs::read_to_string(dir.join("configmap.yaml")).unwrap();
    let body: String = cm
        .split_once("plumb.yaml: |\n")
        .unwrap()
        .1
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    plumb::config::parse_bootstrap(&body, "configmap plumb.yaml")
        .expect("the ConfigMap bootstrap is valid");

    let installed = Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        plumb_tests::skip(
            "kubernetes-validate is not installed (cargo xtask deps installs it from PyPI)",
        );
        return;
    }
    let run = |files: &[PathBuf]| {
        Command::new("python3")
            .args([
                "-m",
                "kubernetes_validate",
                "--strict",
                "--kubernetes-version",
                "1.30.0",
            ])
            .args(files)
            .output()
            .unwrap()
    };
    let files: Vec<PathBuf> = MANIFESTS.iter().map(|f| dir.join(f)).collect();
    let out = run(&files);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator does catch unknown fields (so the check above means something).
    let tmp = TempDir::new("k8s");
    let ds = std::fs::read_to_string(dir.join("daemonset.yaml"))
        .unwrap()
        .replace(
            "      hostNetwork: true",
            "      hostNetwork: true\n      hostNetwrok: true",
        );
    let bad = tmp.write("bad.yaml", &ds);
    assert!(
        !run(&[bad]).status.success(),
        "an unknown field must fail validation"
    );
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/plumb.service")).unwrap();
    for needed in [
        "Type=notify",
        "ExecReload=",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "ReadWritePaths=/sys/fs/bpf",
        "WatchdogSec=",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
    let Some(analyze) = which("systemd-analyze") else {
        plumb_tests::skip("systemd-analyze is not installed");
        return;
    };
    // verify checks that ExecStart exists: point it at this build's binary.
    let tmp = TempDir::new("unit");
    let path = tmp.write(
        "plumb.service",
        &unit.replace("/usr/bin/plumb", plumb_bin().to_str().unwrap()),
    );
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "systemd-analyze verify:\n{report}"
    );
}

/// A systemd-style notification socket in `tmp`, and a `plumb run` command (admin only)
/// whose notifications go to it.
fn notified_agent(tmp: &TempDir) -> (UnixDatagram, Command) {
    let sock_path = tmp.path.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let config = tmp.write(
        "c.yaml",
        r#"admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }"#,
    );
    let mut cmd = Command::new(plumb_bin());
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path);
    (sock, cmd)
}

#[test]
fn sd_notify_reports_ready_watchdog_and_stopping() {
    let tmp = TempDir::new("notify");
    let (sock, mut cmd) = notified_agent(&tmp);
    let mut child = cmd
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen: Vec<String> = Vec::new();
    let wait_for = |what: &str, seen: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 256];
        while Instant::now() < deadline {
            if seen.iter().any(|m| m.contains(what)) {
                return;
            }
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        panic!("no {what} in {seen:?}");
    };
    wait_for("READY=1", &mut seen);
    wait_for("WATCHDOG=1", &mut seen);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_for("STOPPING=1", &mut seen);
    let st = child.wait().unwrap();
    assert!(st.success());
}

#[test]
fn containerfile_copies_what_the_build_produces() {
    let cf = std::fs::read_to_string(repo().join("deploy/Containerfile")).unwrap();
    assert!(
        cf.contains("cargo xtask build-ebpf"),
        "the image builds the eBPF object"
    );
    let mut copies = 0;
    for line in cf
        .lines()
        .filter(|l| l.starts_with("COPY --from=build /src/"))
    {
        let src = line
            .split_whitespace()
            .nth(2)
            .unwrap()
            .trim_start_matches("/src/");
        copies += 1;
        match src {
            // Produced by the build stage (cargo build --release; cargo xtask build-ebpf).
            "target/release/plumb" => {}
            "target/bpf/plumb.bpf.o" => {
                let xtask = std::fs::read_to_string(repo().join("xtask/src/ebpf.rs")).unwrap();
                assert!(
                    xtask.contains("target/bpf/plumb.bpf.o"),
                    "build-ebpf writes {src}"
                );
            }
            other => assert!(
                repo().join(other).exists(),
                "Containerfile copies missing file {other}"
            ),
        }
    }
    assert_eq!(copies, 3, "binary, eBPF object and default config");
    // The default ENTRYPOINT config path is where the image puts the config.
    assert!(cf.contains("/etc/plumb/plumb.yaml"));
}

/// Under systemd a SIGUSR2 upgrade changes the main PID: the successor announces itself with
/// MAINPID= (the unit sets NotifyAccess=all for it) and READY=1; the old agent exits 0.
#[test]
fn a_sigusr2_successor_tells_systemd_its_pid() {
    let tmp = TempDir::new("notify-usr2");
    let (sock, mut cmd) = notified_agent(&tmp);
    let mut child = cmd
        .arg("--upgrade-socket")
        .arg(tmp.path.join("upgrade.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let next = |pred: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 256];
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if pred(&m) {
                    return m;
                }
            }
        }
        panic!("no matching sd_notify message");
    };
    let pid_of = |m: &str| -> i32 {
        m.lines()
            .find_map(|l| l.strip_prefix("MAINPID="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no MAINPID in {m:?}"))
    };
    let first = next(&|m| m.contains("READY=1"));
    assert_eq!(pid_of(&first), child.id() as i32);
    // Ready for hand-overs once the upgrade socket exists (its file appears once it listens).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tmp.path.join("upgrade.sock").exists() {
        assert!(Instant::now() < deadline, "no upgrade socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR2) };
    // The running agent hands over first, naming its successor: a successor that started
    // beside it instead (found no agent to take over from) fails here, not in a hang below.
    let told = next(&|m| m.contains("MAINPID=") && !m.contains("READY=1"));
    let successor = pid_of(&told);
    assert_ne!(successor, child.id() as i32);
    let ready = next(&|m| m.contains("READY=1"));
    assert_eq!(pid_of(&ready), successor, "{ready:?}");
    /// Kills the successor by PID if the test fails before it stops.
    struct Reap(i32);
    impl Drop for Reap {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the successor's PID (ESRCH once it is gone).
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _reap = Reap(successor);
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent that handed over did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success());
    // SAFETY: kill(2) on the successor our child started; it then exits by itself.
    unsafe { libc::kill(successor, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    // SAFETY: signal 0 only probes the PID.
    while unsafe { libc::kill(successor, 0) } == 0
        && !std::fs::read_to_string(format!("/proc/{successor}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
    {
        assert!(
            Instant::now() < deadline,
            "successor {successor} did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The command lines in the unit and the DaemonSet use flags (and values) the agent accepts.
#[test]
fn deployed_command_lines_parse() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/plumb.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/usr/bin/plumb "))
        .expect("ExecStart");
    let ds = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let args_block = ds.split_once("        args:\n").unwrap().1;
    let ds_args: Vec<String> = args_block
        .lines()
        .take_while(|l| l.starts_with("        - ") || l.trim_start().starts_with('#'))
        .filter_map(|l| l.strip_prefix("        - "))
        .map(|a| {
            a.replace("$(NODE_NAME)", "node-1")
                .replace("$(HOST_IP)", "10.0.0.1")
                .replace("$(NODE_ZONE)", "zone-a")
        })
        .collect();
    assert!(ds_args.iter().any(|a| a == "--takeover"), "{ds_args:?}");
    assert!(
        ds_args.iter().all(|a| !a.contains("$(")),
        "every downward-API variable is substituted here: {ds_args:?}"
    );
    for (what, args) in [
        (
            "ExecStart",
            exec.split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>(),
        ),
        ("DaemonSet args", ds_args),
    ] {
        // `--help` last: clap rejects any unknown flag or bad value before it.
        let out = Command::new(plumb_bin())
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
