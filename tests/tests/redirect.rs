//! eBPF redirection end to end on the real kernel: fake pods (netns + veth + cgroup2) whose
//! connects are captured into Plumb, fail open when it dies, and resume when it returns.
//! Needs root, cgroup2, bpffs and the built eBPF object (`cargo xtask build-ebpf`); without
//! them the tests skip with the reason, or fail under PLUMB_TEST_STRICT.

use plumb_tests::agent::{load_bin, plumb_cmd, AgentProcess};
use plumb_tests::capture::{
    agent_config, own_agent_cgroup, pin_dir, roundtrip, tcp_proxy, unavailable, PinCleanup,
    PodServer, Scene, VIP,
};
use plumb_tests::churn::Churn;
use plumb_tests::client::get;
use plumb_tests::pods::{self, Node};
use plumb_tests::TempDir;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

macro_rules! require_kernel_env {
    () => {
        if let Some(why) = unavailable() {
            plumb_tests::skip(&why);
            return;
        }
    };
}

async fn stat(admin: SocketAddr, name: &str) -> i64 {
    plumb_tests::client::stat(admin, name).await
}

/// Adds ADS (state of the world, CDS only) to an agent config, to a control plane on
/// 127.0.0.1:`port`, with that initial fetch timeout.
fn with_ads(config: &mut Value, port: u16, initial_fetch_timeout: &str) {
    config["dynamic_resources"] = json!({
        "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                       "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
        "cds_config": {"ads": {}, "resource_api_version": "V3",
                       "initial_fetch_timeout": initial_fetch_timeout},
    });
    config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(
            json!({"name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}}}}]}]}}),
        );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_connects_are_captured_and_reach_the_upstream_plumb_picks() {
    require_kernel_env!();
    let scene = Scene::new("capture", &[(8080, 8090), (8081, 8091)]);
    let (node, client, server, pin) = (&scene.node, &scene.client, &scene.server, &scene.pin);
    let agent = AgentProcess::spawn(&agent_config(node, server, pin, false), &[]).await;
    let admin = agent.admin;
    assert_eq!(stat(admin, "redirect.active").await, 1, "{}", agent.logs());

    // A VIP that exists nowhere: only Plumb can connect it to the server pod.
    let r = roundtrip(client, &format!("{VIP}:80"), 100_000);
    assert_eq!(r["ok"], true, "{r}\n{}", agent.logs());
    assert_eq!(
        stat(admin, "listener.10.96.0.10_80.downstream_cx_total").await,
        1
    );
    assert_eq!(stat(admin, "cluster.backend.upstream_cx_total").await, 1);

    // Passthrough capture: the original destination (IPv4) is recovered exactly.
    let r = roundtrip(client, &format!("{}:8081", server.ip), 5_000);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        stat(admin, "cluster.passthrough.upstream_cx_total").await,
        1
    );
    assert_eq!(stat(admin, "redirect.orig_dst_found").await, 2);

    // A destination no rule captures is untouched.
    let r = roundtrip(client, &format!("{}:8080", server.ip), 5_000);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(stat(admin, "cluster.backend.upstream_cx_total").await, 1);
    assert_eq!(
        stat(admin, "listener.10.213.0.0_0.downstream_cx_total").await,
        0
    );

    // Exactly the two captured pod connects were redirected: the agent's own upstream
    // connects (to a captured destination, in passthrough) were not, so nothing looped.
    plumb_tests::wait_until("kernel counters", Duration::from_secs(5), || async move {
        stat(admin, "redirect.connect_redirected").await == 2
    })
    .await;
    assert!(stat(admin, "redirect.connect_not_captured").await >= 1);
    let s = get(admin, "/stats?filter=%5Eredirect%5C.").await.body;
    assert!(s.contains("redirect.orig_dst_recorded: 2\n"), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_fails_open_and_a_restart_resumes_capture() {
    kill_9(false).await;
}

/// The same with sk_msg: sockets already in the sockhash must not keep new connects captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_sk_msg_fails_open_and_a_restart_resumes_capture() {
    kill_9(true).await;
}

async fn kill_9(sk_msg: bool) {
    require_kernel_env!();
    let scene = Scene::new(
        if sk_msg { "failopen-skmsg" } else { "failopen" },
        &[(8081, 8091), (8080, 8090)],
    );
    let (node, client, server, pin) = (&scene.node, &scene.client, &scene.server, &scene.pin);
    let config = agent_config(node, server, pin, sk_msg);
    let target = format!("{}:8081", server.ip);
    let agent_cg = sk_msg.then(|| own_agent_cgroup(node));
    let cg = agent_cg.as_ref().map(|c| c.path.as_path());

    let agent = AgentProcess::spawn_in(&config, &[], cg).await;
    assert_eq!(roundtrip(client, &target, 1000)["ok"], true);
    assert_eq!(
        stat(agent.admin, "cluster.passthrough.upstream_cx_total").await,
        1
    );

    // SIGKILL: no clean-up code runs. New connects must reach the destination directly.
    agent.signal(libc::SIGKILL);
    let killed = Instant::now();
    let mut agent = agent;
    agent
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("killed");
    loop {
        if roundtrip(client, &target, 1000)["ok"] == true {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "captured connects did not fail open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("fail-open after SIGKILL took {:?}", killed.elapsed());
    drop(agent);

    // A new agent (same pin path: maps are reused) captures again.
    let agent = AgentProcess::spawn_in(&config, &[], cg).await;
    assert_eq!(roundtrip(client, &target, 1000)["ok"], true);
    assert_eq!(
        stat(agent.admin, "cluster.passthrough.upstream_cx_total").await,
        1
    );
    let r = roundtrip(client, &format!("{VIP}:80"), 1000);
    assert_eq!(r["ok"], true, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_detaches_unpins_and_fails_open() {
    require_kernel_env!();
    let scene = Scene::new("sigterm", &[(8081, 8091)]);
    let (node, client, server, pin) = (&scene.node, &scene.client, &scene.server, &scene.pin);
    let mut agent = AgentProcess::spawn(&agent_config(node, server, pin, false), &[]).await;
    assert!(
        pin.join("PLUMB_AGENT").exists(),
        "maps are pinned under {}",
        pin.display()
    );
    agent.signal(libc::SIGTERM);
    let st = agent
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits");
    assert_eq!(st.code(), Some(0), "{}", agent.logs());
    assert!(!pin.exists(), "pin directory {} left behind", pin.display());
    // Immediately direct: the programs are gone.
    let r = roundtrip(client, &format!("{}:8081", server.ip), 1000);
    assert_eq!(r["ok"], true, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sk_msg_moves_bytes_between_local_sockets_intact() {
    require_kernel_env!();
    let scene = Scene::new("skmsg", &[(8080, 8090)]);
    let (node, client, server, pin) = (&scene.node, &scene.client, &scene.server, &scene.pin);
    // The agent's accepted sockets join the sockhash from its own cgroup.
    let agent_cg = own_agent_cgroup(node);
    let agent = AgentProcess::spawn_in(
        &agent_config(node, server, pin, true),
        &[],
        Some(&agent_cg.path),
    )
    .await;
    for size in [1usize, 1000, 64 * 1024, 4 * 1024 * 1024] {
        let r = roundtrip(client, &format!("{VIP}:80"), size);
        assert_eq!(r["ok"], true, "size {size}: {r}\n{}", agent.logs());
    }
    let admin = agent.admin;
    plumb_tests::wait_until(
        "sockhash insertions",
        Duration::from_secs(5),
        || async move { stat(admin, "redirect.sockhash_inserted").await >= 8 },
    )
    .await;
    assert!(stat(admin, "redirect.sk_msg_redirected").await > 0);
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_connect_hooks_on_enrolled_cgroups_are_reported() {
    require_kernel_env!();
    let mut node = Node::new();
    let server = node.add_pod("server");
    let pin1 = pin_dir("conflict1");
    let pin2 = pin_dir("conflict2");
    let _c1 = PinCleanup(pin1.clone());
    let _c2 = PinCleanup(pin2.clone());
    let first = AgentProcess::spawn(&agent_config(&node, &server, &pin1, false), &[]).await;
    assert_eq!(stat(first.admin, "redirect.conflicting_programs").await, 0);
    // A second agent (another proxy address) on the same cgroup sees the first one's hooks.
    let second_config = agent_config(&node, &server, &pin2, false).replace("15001", "15002");
    let second = AgentProcess::spawn(&second_config, &[]).await;
    assert_eq!(
        stat(second.admin, "redirect.conflicting_programs").await,
        2,
        "{}",
        second.logs()
    );
    assert!(
        second.logs().contains("connect4 program"),
        "{}",
        second.logs()
    );
}

#[test]
fn an_agent_inside_an_enrolled_cgroup_refuses_to_start() {
    if let Some(why) = unavailable() {
        plumb_tests::skip(&why);
        return;
    }
    let own = plumb::redirect::own_cgroup().expect("own cgroup");
    let dir = TempDir::new("enrolled");
    let config = json!({
        "static_resources": {
            "listeners": [{"name": "outbound", "use_original_dst": true,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": tcp_proxy("outbound", "passthrough")}],
            "clusters": [{"name": "passthrough", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED"}],
        },
        "bootstrap_extensions": [{"name": "plumb.redirect", "typed_config": {
            "@type": "type.googleapis.com/plumb.redirect.v1.Redirect",
            "listener": "outbound", "cgroups": [own.to_str().unwrap()], "required": true,
            "pin_path": pin_dir("enrolled").to_str().unwrap(),
        }}],
    });
    let path = dir.write("c.yaml", &config.to_string());
    let (st, _, err) = plumb_cmd(&["check-config", path.to_str().unwrap()]);
    assert!(!st.success(), "port 0 redirect listener must be rejected");
    assert!(err.contains("needs a fixed port"), "{err}");
    let fixed = config
        .to_string()
        .replace("\"port_value\":0", "\"port_value\":15999");
    let path = dir.write("c2.yaml", &fixed);
    let (st, _, err) = plumb_cmd(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("runs in enrolled cgroup"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_and_ipv4_through_one_dual_stack_listener() {
    require_kernel_env!();
    let mut node = Node::new();
    let client = node.add_pod("client");
    let server = node.add_pod("server");
    let _echo4 = PodServer::start(&server, 8080, 8090);
    // An IPv6 echo server (the tool takes any socket address).
    let mut echo6 = server
        .command(load_bin())
        .args([
            "serve",
            "--echo",
            &format!("[{}]:8081", server.ip6),
            "--sink",
            &format!("[{}]:8091", server.ip6),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(echo6.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let _echo6 = PodServer(echo6);
    let pin = pin_dir("ipv6");
    let _cleanup = PinCleanup(pin.clone());
    let port = 18000 + node.net as u16;
    let config = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {"name": "outbound", "use_original_dst": true,
                 "address": {"socket_address": {"address": "::", "port_value": port, "ipv4_compat": true}},
                 "filter_chains": tcp_proxy("outbound", "passthrough")},
                {"name": "vip6", "bind_to_port": false,
                 "address": {"socket_address": {"address": "fd00:96::10", "port_value": 80}},
                 "filter_chains": tcp_proxy("vip6", "backend")},
            ],
            "clusters": [
                {"name": "passthrough", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED"},
                {"name": "backend", "type": "STATIC",
                 "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
                     {"endpoint": {"address": {"socket_address": {"address": server.ip.to_string(), "port_value": 8080}}}}]}]}},
            ],
        },
        "bootstrap_extensions": [{"name": "plumb.redirect", "typed_config": {
            "@type": "type.googleapis.com/plumb.redirect.v1.Redirect",
            "listener": "outbound",
            "proxy_address": node.proxy_ip.to_string(),
            "proxy_address_v6": node.proxy_ip6.to_string(),
            "cgroups": [node.cgroup.to_str().unwrap()],
            "capture": [
                {"cidr": format!("{}/128", server.ip6), "ports": [8081]},
                {"cidr": format!("{}/32", server.ip), "ports": [8080]},
            ],
            "pin_path": pin.to_str().unwrap(),
            "required": true,
        }}],
    })
    .to_string();
    let agent = AgentProcess::spawn(&config, &[]).await;
    let admin = agent.admin;
    // IPv6 passthrough: the original IPv6 destination is recovered exactly.
    let r = roundtrip(&client, &format!("[{}]:8081", server.ip6), 50_000);
    assert_eq!(r["ok"], true, "{r}\n{}", agent.logs());
    assert_eq!(
        stat(admin, "cluster.passthrough.upstream_cx_total").await,
        1
    );
    // An IPv6 VIP handed to its listener, which proxies to an IPv4 upstream.
    let r = roundtrip(&client, "[fd00:96::10]:80", 50_000);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(stat(admin, "cluster.backend.upstream_cx_total").await, 1);
    // IPv4 through the same dual-stack listener.
    let r = roundtrip(&client, &format!("{}:8080", server.ip), 5_000);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        stat(admin, "cluster.passthrough.upstream_cx_total").await,
        2
    );
    assert_eq!(stat(admin, "redirect.orig_dst_found").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_inside_the_enrolled_subtree_does_not_capture_itself() {
    require_kernel_env!();
    in_the_enrolled_subtree("subtree", false).await;
}

/// An agent in a cgroup below the enrolled one (placed there, and with `cgroupns` in a cgroup
/// namespace of its own): a captured pod connect is redirected once, and the agent's own
/// upstream connect to the same captured destination goes out directly (no loop).
async fn in_the_enrolled_subtree(tag: &str, cgroupns: bool) {
    let scene = Scene::new(tag, &[(8081, 8091), (8080, 8090)]);
    let (node, client, server, pin) = (&scene.node, &scene.client, &scene.server, &scene.pin);
    // Like a DaemonSet pod under kubepods: the agent's cgroup is below the enrolled one.
    let agent_cg = pods::CgroupDir::new(node.cgroup.join("agent"));
    let config = agent_config(node, server, pin, false);
    let agent = if cgroupns {
        AgentProcess::spawn_in_cgroupns(&config, &[], &agent_cg.path).await
    } else {
        AgentProcess::spawn_in(&config, &[], Some(&agent_cg.path)).await
    };
    // Passthrough to a captured destination: the agent's own upstream connect to it must go
    // out directly, or it would loop back into itself.
    let r = roundtrip(client, &format!("{}:8081", server.ip), 10_000);
    assert_eq!(r["ok"], true, "{r}\n{}", agent.logs());
    let admin = agent.admin;
    plumb_tests::wait_until("kernel counters", Duration::from_secs(5), || async move {
        stat(admin, "redirect.connect_redirected").await == 1
    })
    .await;
    assert_eq!(
        stat(admin, "cluster.passthrough.upstream_cx_total").await,
        1
    );
    drop(agent);
}

/// Creates and pins an array map (`value_size` bytes per value) with raw bpf(2) calls, as an
/// older build with another layout would have left behind.
fn pin_array_map(path: &std::path::Path, value_size: u32) {
    let mut attr = [0u64; 16];
    let w = attr.as_mut_ptr().cast::<u32>();
    // SAFETY: BPF_MAP_CREATE attr: map_type, key_size, value_size, max_entries.
    let fd = unsafe {
        *w.add(0) = 2; // BPF_MAP_TYPE_ARRAY
        *w.add(1) = 4;
        *w.add(2) = value_size;
        *w.add(3) = 1;
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut attr = [0u64; 16];
    attr[0] = cpath.as_ptr() as u64;
    // SAFETY: BPF_OBJ_PIN attr: pathname (u64 pointer), bpf_fd (u32).
    let rc = unsafe {
        *attr.as_mut_ptr().cast::<u32>().add(2) = fd as u32;
        libc::syscall(
            libc::SYS_bpf,
            6,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: closing the fd we created; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_with_an_old_layout_are_recreated() {
    require_kernel_env!();
    let scene = Scene::new("oldlayout", &[(8081, 8091), (8080, 8090)]);
    let (node, client, server, pin) = (&scene.node, &scene.client, &scene.server, &scene.pin);
    std::fs::create_dir_all(pin).unwrap();
    pin_array_map(&pin.join("PLUMB_AGENT"), 48);
    let agent = AgentProcess::spawn(&agent_config(node, server, pin, false), &[]).await;
    assert!(
        agent.logs().contains("pinned maps have another layout"),
        "{}",
        agent.logs()
    );
    let r = roundtrip(client, &format!("{}:8081", server.ip), 1000);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        stat(agent.admin, "cluster.passthrough.upstream_cx_total").await,
        1
    );
}

/// Upgrades under captured load: each new agent takes the sockets and the eBPF links of the
/// running one (`--takeover`), swaps its programs in and takes over the heartbeat. Pod
/// connects to a VIP that exists nowhere must all succeed: a single lapse in capture, a
/// refused connect or a broken established connection would fail the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeovers_keep_capture_continuous_and_drop_nothing() {
    takeovers_under_captured_load(false).await;
}

/// The same with sk_msg: the successor attaches its splice program to the shared sockhash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeovers_with_sk_msg_drop_nothing() {
    takeovers_under_captured_load(true).await;
}

async fn takeovers_under_captured_load(sk_msg: bool) {
    require_kernel_env!();
    let tag = if sk_msg { "takeover-skmsg" } else { "takeover" };
    let scene = Scene::new(tag, &[(8080, 8090), (8081, 8091)]);
    let (node, client, server, pin) = (&scene.node, &scene.client, &scene.server, &scene.pin);
    let dir = TempDir::new(tag);
    let sock = dir.path.join("upgrade.sock");
    let config = agent_config(node, server, pin, sk_msg);
    let base = [
        "--upgrade-socket",
        sock.to_str().unwrap(),
        "--drain-time-s",
        "60",
    ];
    let mut takeover = base.to_vec();
    takeover.push("--takeover");
    let vip_conns = "listener.10.96.0.10_80.downstream_cx_total";
    // With sk_msg the agents' accepted sockets join the sockhash from their own cgroup: give
    // them one (shared by every generation, as under systemd).
    let agent_cg = sk_msg.then(|| own_agent_cgroup(node));
    let cg = agent_cg.as_ref().map(|c| c.path.as_path());

    let first = AgentProcess::spawn_in(&config, &base, cg).await;
    let churn = Churn::start_with(client.command(load_bin()), &format!("{VIP}:80"), &dir);
    let admin = first.admin;
    plumb_tests::wait_until("captured traffic", Duration::from_secs(20), || async move {
        stat(admin, vip_conns).await > 100
    })
    .await;

    let mut agents = vec![first];
    for round in 0..3 {
        let new = AgentProcess::spawn_in(&config, &takeover, cg).await;
        let a = new.admin;
        assert_eq!(stat(a, "redirect.active").await, 1, "round {round}");
        plumb_tests::wait_until(
            "the new agent carries the load",
            Duration::from_secs(20),
            || async move { stat(a, vip_conns).await > 100 },
        )
        .await;
        // Passthrough: the new agent finds original destinations in the inherited maps.
        let r = roundtrip(client, &format!("{}:8081", server.ip), 1000);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(stat(a, "cluster.passthrough.upstream_cx_total").await, 1);
        let prev = agents.last().unwrap();
        assert!(
            prev.logs().contains("eBPF redirection handed over"),
            "{}",
            prev.logs()
        );
        agents.push(new);
    }

    let r = churn.finish();
    eprintln!("captured churn through 3 takeovers: {r}");
    assert_eq!(r["failures"], 0, "{r}");
    assert!(r["held_exchanges"].as_u64().unwrap() > 0, "{r}");

    // The old agents drain and exit without detaching: capture goes on.
    let mut current = agents.pop().unwrap();
    if sk_msg {
        // The splice really carried bytes (the counters live in the shared maps).
        assert!(stat(current.admin, "redirect.sk_msg_redirected").await > 0);
    }
    for (i, mut a) in agents.into_iter().enumerate() {
        let st = a
            .wait_exit(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("old agent {i} still running:\n{}", a.logs()));
        assert_eq!(st.code(), Some(0), "old agent {i}:\n{}", a.logs());
    }
    let r = roundtrip(client, &format!("{VIP}:80"), 10_000);
    assert_eq!(r["ok"], true, "{r}\n{}", current.logs());
    assert!(pin.join("PLUMB_AGENT").exists());

    // The last agent's SIGTERM detaches and unpins as usual.
    current.signal(libc::SIGTERM);
    let st = current.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert_eq!(st.code(), Some(0), "{}", current.logs());
    assert!(!pin.exists(), "pins left behind");
    let r = roundtrip(client, &format!("{}:8081", server.ip), 1000);
    assert_eq!(r["ok"], true, "direct after the last agent stopped: {r}");
}

/// A successor whose configuration has no redirection: the old agent must fail open at the
/// hand-over (not leave capture pointing at a port nobody serves), and clean up when it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_without_redirection_makes_the_old_agent_fail_open() {
    require_kernel_env!();
    let scene = Scene::new("nocapture", &[(8081, 8091)]);
    let (node, client, server, pin) = (&scene.node, &scene.client, &scene.server, &scene.pin);
    let dir = TempDir::new("nocapture");
    let sock = dir.path.join("upgrade.sock");
    let base = ["--upgrade-socket", sock.to_str().unwrap()];
    let mut old = AgentProcess::spawn(&agent_config(node, server, pin, false), &base).await;
    let target = format!("{}:8081", server.ip);
    assert_eq!(roundtrip(client, &target, 1000)["ok"], true);
    assert_eq!(
        stat(old.admin, "cluster.passthrough.upstream_cx_total").await,
        1
    );

    // The successor: no redirect extension and no redirect listener.
    let plain = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    })
    .to_string();
    let mut takeover = base.to_vec();
    takeover.push("--takeover");
    let _new = AgentProcess::spawn(&plain, &takeover).await;
    // At once, not after fail_open_after: connects go direct.
    let r = roundtrip(client, &target, 1000);
    assert_eq!(r["ok"], true, "{r}\n{}", old.logs());
    assert!(
        old.logs().contains("the successor does not capture"),
        "{}",
        old.logs()
    );
    let st = old.wait_exit(Duration::from_secs(20)).await.expect("exits");
    assert_eq!(st.code(), Some(0), "{}", old.logs());
    assert!(
        !pin.exists(),
        "the old agent unpins when nobody took capture over"
    );
}

/// A successor stopped before it is ready (a rollback deleting the new pod) must leave the
/// running agent exactly as it was: capture rules, registration, pins and admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_stopped_before_ready_leaves_capture_to_the_running_agent() {
    require_kernel_env!();
    let scene = Scene::new("abandon", &[(8080, 8090)]);
    let (node, client, server, pin) = (&scene.node, &scene.client, &scene.server, &scene.pin);
    let dir = TempDir::new("abandon");
    let sock = dir.path.join("upgrade.sock");
    let base = ["--upgrade-socket", sock.to_str().unwrap()];
    let config = agent_config(node, server, pin, false);
    let old = AgentProcess::spawn(&config, &base).await;
    let vip = format!("{VIP}:80");
    assert_eq!(roundtrip(client, &vip, 1000)["ok"], true);

    // The successor: without the VIP listener (its rules must not replace the running
    // agent's early), and waiting for a control plane that never answers.
    let mut successor: Value = serde_json::from_str(&config).unwrap();
    successor["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
        .retain(|l| l["name"] != "vip");
    let dead = plumb_tests::servers::closed_port();
    with_ads(&mut successor, dead.port(), "60s");
    let mut takeover = base.to_vec();
    takeover.push("--takeover");
    let mut new = AgentProcess::spawn_starting(&successor.to_string(), &takeover, None).await;
    assert_eq!(
        new.admin, old.admin,
        "the admin socket moved to the successor"
    );
    plumb_tests::wait_until("offer sent", Duration::from_secs(10), || {
        let sent = old.logs().contains("a successor is taking over");
        async move { sent }
    })
    .await;
    // Still the running agent's capture, rules included.
    let r = roundtrip(client, &vip, 1000);
    assert_eq!(r["ok"], true, "{r}\n{}", new.logs());

    new.signal(libc::SIGTERM);
    let st = new.wait_exit(Duration::from_secs(20)).await.expect("exits");
    assert_eq!(st.code(), Some(0), "{}", new.logs());
    assert!(new
        .logs()
        .contains("stopping before the takeover completed"));
    plumb_tests::wait_until(
        "the running agent carries on",
        Duration::from_secs(10),
        || {
            let resumed = old
                .logs()
                .contains("hand-over aborted; this agent carries on");
            async move { resumed }
        },
    )
    .await;
    let admin = old.admin;
    plumb_tests::wait_until("admin back", Duration::from_secs(10), || async move {
        matches!(plumb_tests::client::http("GET", admin, "/ready").await, Ok(r) if r.status == 200)
    })
    .await;
    assert_eq!(stat(admin, "redirect.active").await, 1);
    assert!(pin.join("PLUMB_AGENT").exists(), "pins kept");
    let r = roundtrip(client, &vip, 1000);
    assert_eq!(r["ok"], true, "{r}\n{}", old.logs());
    assert!(!old.logs().contains("handed over"), "{}", old.logs());
}

/// One bootstrap for every node (a ConfigMap): the redirect listener binds the wildcard
/// address and each node's proxy address comes from the command line (the downward API's
/// host IP in the DaemonSet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_address_can_come_from_the_command_line() {
    require_kernel_env!();
    let scene = Scene::new("proxyflag", &[(8081, 8091)]);
    let (node, client, server, pin) = (&scene.node, &scene.client, &scene.server, &scene.pin);
    let port = 18500 + node.net as u16;
    let config = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {"name": "outbound", "use_original_dst": true,
                 "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
                 "filter_chains": tcp_proxy("outbound", "passthrough")},
            ],
            "clusters": [
                {"name": "passthrough", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED"},
            ],
        },
        "bootstrap_extensions": [{"name": "plumb.redirect", "typed_config": {
            "@type": "type.googleapis.com/plumb.redirect.v1.Redirect",
            "listener": "outbound",
            "cgroups": [node.cgroup.to_str().unwrap()],
            "capture": [{"cidr": format!("{}/32", server.ip), "ports": [8081]}],
            "pin_path": pin.to_str().unwrap(),
            "required": true,
        }}],
    })
    .to_string();
    // Without the flag the wildcard listener leaves the address unknown: refused up front.
    let dir = TempDir::new("proxyflag");
    let path = dir.write("c.yaml", &config);
    let (st, _, err) = plumb_cmd(&["check-config", path.to_str().unwrap()]);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("binds a wildcard address"), "{err}");

    let flag = format!("--redirect-proxy-address={}", node.proxy_ip);
    // check-config takes the same overrides, so the shared file checks as it will run.
    let (st, out, err) = plumb_cmd(&["check-config", path.to_str().unwrap(), &flag]);
    assert_eq!(st.code(), Some(0), "{out}{err}");
    let agent = AgentProcess::spawn(&config, &[&flag]).await;
    let r = roundtrip(client, &format!("{}:8081", server.ip), 5_000);
    assert_eq!(r["ok"], true, "{r}\n{}", agent.logs());
    assert_eq!(
        stat(agent.admin, "cluster.passthrough.upstream_cx_total").await,
        1
    );
}

/// Container runtimes on cgroup v2 give a pod a cgroup namespace of its own: the agent sees
/// its cgroup as `/`. It must still find its real cgroup (and id), or it would capture its
/// own connects inside the enrolled subtree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_in_its_own_cgroup_namespace_still_excludes_itself() {
    require_kernel_env!();
    in_the_enrolled_subtree("cgroupns", true).await;
}

/// `/drain_listeners` (a preStop hook's favourite) closes the listeners: captured connects must
/// fail open first, not be refused by the closed redirect listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_listeners_fails_capture_open_first() {
    require_kernel_env!();
    let scene = Scene::new("drainlisteners", &[(8081, 8091)]);
    let (node, client, server, pin) = (&scene.node, &scene.client, &scene.server, &scene.pin);
    let agent = AgentProcess::spawn(&agent_config(node, server, pin, false), &[]).await;
    let target = format!("{}:8081", server.ip);
    assert_eq!(roundtrip(client, &target, 1000)["ok"], true);
    let r = plumb_tests::client::post(agent.admin, "/drain_listeners").await;
    assert_eq!(r.status, 200);
    // Straight away: direct, not refused.
    let r = roundtrip(client, &target, 1000);
    assert_eq!(r["ok"], true, "{r}\n{}", agent.logs());
    assert_eq!(stat(agent.admin, "redirect.active").await, 0);
    assert_eq!(
        stat(agent.admin, "cluster.passthrough.upstream_cx_total").await,
        1
    );
}

/// Both agents run inside the enrolled subtree (two DaemonSet pods during a surge) and the
/// control plane's address is captured: the successor's own xDS connects, made while it
/// starts, must not be captured (the old agent excludes its cgroup at Hello), nor the old
/// agent's. The kernel counters (shared maps) show no redirected connect at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successors_own_connects_are_not_captured_during_the_hand_over() {
    require_kernel_env!();
    let mut node = Node::new();
    let server = node.add_pod("server");
    let _echo = PodServer::start(&server, 8081, 8091);
    let cp = plumb_tests::xds::ControlPlane::start().await;
    cp.set(vec![], vec![], vec![]);
    let pin = pin_dir("selfcapture");
    let _cleanup = PinCleanup(pin.clone());
    let dir = TempDir::new("selfcapture");
    let sock = dir.path.join("upgrade.sock");
    let mut config: Value =
        serde_json::from_str(&agent_config(&node, &server, &pin, false)).unwrap();
    with_ads(&mut config, cp.addr.port(), "5s");
    // Capture the control plane's address too.
    config["bootstrap_extensions"][0]["typed_config"]["capture"]
        .as_array_mut()
        .unwrap()
        .push(json!({"cidr": "127.0.0.1/32", "ports": [cp.addr.port()]}));
    let config = config.to_string();
    let base = ["--upgrade-socket", sock.to_str().unwrap()];
    let cg_old = pods::CgroupDir::new(node.cgroup.join("agent-old"));
    let cg_new = pods::CgroupDir::new(node.cgroup.join("agent-new"));
    let old = AgentProcess::spawn_in(&config, &base, Some(&cg_old.path)).await;
    let mut takeover = base.to_vec();
    takeover.push("--takeover");
    let new = AgentProcess::spawn_in(&config, &takeover, Some(&cg_new.path)).await;
    plumb_tests::wait_until("hand-over done", Duration::from_secs(10), || {
        let done = old.logs().contains("handed over; draining");
        async move { done }
    })
    .await;
    // Both agents talked to the control plane (one stream each, at least).
    let streams = cp.requests().iter().filter(|r| r.has_node).count();
    assert!(streams >= 2, "{streams} streams");
    let admin = new.admin;
    assert_eq!(
        stat(admin, "redirect.connect_redirected").await,
        0,
        "{}",
        new.logs()
    );
    assert_eq!(
        stat(admin, "cluster.passthrough.upstream_cx_total").await,
        0
    );
}

/// `curl` from inside `pod`: the body.
fn pod_get(pod: &pods::Pod, url: &str) -> String {
    let out = pod
        .command("curl")
        .args(["-s", "--max-time", "5", url])
        .output()
        .expect("run curl in the pod");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl` from inside `pod`: the status code, or 0 when nothing answered.
fn pod_curl(pod: &pods::Pod, url: &str) -> u16 {
    let out = pod
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .expect("run curl in the pod");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Captured HTTP (issue 12, item 2): a pod's requests to a VIP reach a `bind_to_port: false`
/// listener with an HTTP connection manager; captured passthrough traffic that the HTTP
/// inspector recognises goes through a connection manager to its original destination
/// (ORIGINAL_DST), while other captured traffic stays TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_http_is_routed_by_the_connection_manager() {
    require_kernel_env!();
    if plumb_tests::agent::which("curl").is_none() {
        return plumb_tests::skip("curl is not installed (cargo xtask deps installs it)");
    }
    let scene = Scene::new("http-capture", &[]);
    let (node, client, server, pin) = (&scene.node, &scene.client, &scene.server, &scene.pin);
    // In the server pod: HTTP on 8080 and 8081, echo on 8082.
    let ip = server.ip.to_string();
    let mut child = server
        .command(load_bin())
        .args([
            "serve",
            "--echo",
            &format!("{ip}:8082"),
            "--sink",
            &format!("{ip}:8092"),
        ])
        .args([
            "--http",
            &format!("{ip}:8080"),
            "--http",
            &format!("{ip}:8081"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the pod servers");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let servers = PodServer(child);
    let mut config: Value = serde_json::from_str(&agent_config(node, server, pin, false)).unwrap();
    let hcm = |prefix: &str, cluster: &str| {
        json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": prefix,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": cluster},
                 "request_headers_to_add": [{"header": {"key": "x-via", "value": "plumb"}}]}]}]},
            "http_filters": [{"name": "envoy.filters.http.router"}]}})
    };
    let listeners = config["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap();
    // outbound: the HTTP inspector picks the connection manager for HTTP, tcp_proxy otherwise.
    listeners[0]["listener_filters"] = json!([{"name": "envoy.filters.listener.http_inspector",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}]);
    let tcp = listeners[0]["filter_chains"][0].clone();
    listeners[0]["filter_chains"] = json!([
        {"filter_chain_match": {"application_protocols": ["http/1.1", "h2c"]}, "filters": [hcm("outbound_http", "passthrough")]},
        tcp,
    ]);
    // The VIP: HTTP only.
    listeners[1]["filter_chains"] = json!([{"filters": [hcm("vip_http", "backend")]}]);
    config["bootstrap_extensions"][0]["typed_config"]["capture"] =
        json!([{"cidr": format!("{}/32", server.ip), "ports": [8081, 8082]}]);
    let agent = AgentProcess::spawn(&config.to_string(), &[]).await;
    let admin = agent.admin;
    assert_eq!(stat(admin, "redirect.active").await, 1, "{}", agent.logs());

    // The VIP exists nowhere: only the connection manager can route it to the server pod.
    assert_eq!(
        pod_curl(client, "http://10.96.0.10/"),
        200,
        "{}",
        agent.logs()
    );
    let body = pod_get(client, "http://10.96.0.10/");
    assert_eq!(body, "port=8080 host=10.96.0.10 via=plumb\n");
    assert_eq!(stat(admin, "http.vip_http.downstream_rq_2xx").await, 2);
    assert_eq!(stat(admin, "cluster.backend.upstream_rq_200").await, 2);
    // Captured passthrough HTTP: routed to its original destination.
    let body = pod_get(client, &format!("http://{}:8081/", server.ip));
    assert_eq!(
        body,
        format!("port=8081 host={}:8081 via=plumb\n", server.ip)
    );
    assert_eq!(stat(admin, "http.outbound_http.downstream_rq_2xx").await, 1);
    assert_eq!(stat(admin, "cluster.passthrough.upstream_rq_200").await, 1);
    // Captured non-HTTP traffic stays TCP (echo).
    let r = roundtrip(client, &format!("{}:8082", server.ip), 10_000);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(stat(admin, "tcp.outbound.downstream_cx_total").await, 1);
    drop(servers);
}
