//! Upgrades without drops: a new agent started with `--takeover` inherits the running agent's
//! listening sockets (and admin socket) over the upgrade socket while traffic flows; the old
//! agent drains its established connections. Nothing may fail: not a connect, not an
//! exchange on a connection established before the upgrade.

use plumb_tests::agent::{bootstrap, static_cluster, tcp_listener, AgentProcess};
use plumb_tests::churn::Churn;
use plumb_tests::servers::{self, Behavior};
use plumb_tests::TempDir;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn config(echo: SocketAddr) -> String {
    bootstrap(
        vec![tcp_listener("l4", "echo")],
        vec![static_cluster("echo", &[echo])],
    )
}

async fn stat(admin: SocketAddr, name: &str) -> i64 {
    plumb_tests::client::stat(admin, name).await
}

async fn wait_log(agent: &AgentProcess, text: &str) {
    plumb_tests::wait_until(
        &format!("log line {text:?}"),
        Duration::from_secs(20),
        || {
            let found = agent.logs().contains(text);
            async move { found }
        },
    )
    .await;
}

fn upgrade_args(sock: &Path) -> Vec<String> {
    vec![
        "--upgrade-socket".into(),
        sock.display().to_string(),
        "--drain-time-s".into(),
        "60".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_takeovers_under_load_drop_nothing() {
    let echo = servers::start(Behavior::Echo).await;
    let dir = TempDir::new("upgrade");
    let sock = dir.path.join("upgrade.sock");
    let cfg = config(echo.addr);
    let args = upgrade_args(&sock);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut takeover_args = args.clone();
    takeover_args.push("--takeover");

    let first = AgentProcess::spawn(&cfg, &args).await;
    let admin = first.admin;
    let addr = first.listener("l4").await;
    let churn = Churn::start(addr, &dir);
    // Traffic flows through the first agent before the first upgrade.
    let served = format!("listener.127.0.0.1_{}.downstream_cx_total", addr.port());
    plumb_tests::wait_until("traffic", Duration::from_secs(20), || {
        let served = served.clone();
        async move { stat(admin, &served).await > 100 }
    })
    .await;

    let mut old = vec![first];
    for round in 0..3 {
        let new = AgentProcess::spawn(&cfg, &takeover_args).await;
        // The same sockets: same admin and listener addresses.
        assert_eq!(new.admin, admin, "round {round}: admin address kept");
        assert_eq!(
            new.listener("l4").await,
            addr,
            "round {round}: listener kept"
        );
        // Envoy's hot-restart generation counts the line of agents.
        assert_eq!(
            stat(new.admin, "server.hot_restart_generation").await,
            round + 1
        );
        let info = plumb_tests::client::get(new.admin, "/server_info")
            .await
            .json();
        assert_eq!(info["command_line_options"]["restart_epoch"], round + 1);
        assert_eq!(info["hot_restart_version"], "plumb.handover.1");
        let previous = old.last().unwrap();
        wait_log(previous, "handed over; draining").await;
        assert!(
            new.logs().contains("the old agent released its sockets"),
            "{}",
            new.logs()
        );
        // The new agent serves new connections.
        let a = new.admin;
        plumb_tests::wait_until("new agent serves", Duration::from_secs(20), || {
            let served = served.clone();
            async move { stat(a, &served).await > 100 }
        })
        .await;
        old.push(new);
    }

    let r = churn.finish();
    eprintln!("churn through 3 takeovers: {r}");
    assert_eq!(r["failures"], 0, "{r}");
    assert!(r["requests"].as_u64().unwrap() > 400, "{r}");
    assert!(r["held_exchanges"].as_u64().unwrap() > 0, "{r}");

    // With their connections closed, the old agents finish draining and exit cleanly.
    let mut current = old.pop().unwrap();
    for (i, mut a) in old.into_iter().enumerate() {
        let st = a
            .wait_exit(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("old agent {i} still running:\n{}", a.logs()));
        assert_eq!(st.code(), Some(0), "old agent {i}:\n{}", a.logs());
    }
    // The current agent owns the upgrade socket; a clean stop removes it.
    assert!(sock.exists());
    current.signal(libc::SIGTERM);
    let st = current.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert_eq!(st.code(), Some(0), "{}", current.logs());
    assert!(!sock.exists(), "upgrade socket left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_with_no_agent_running_starts_fresh() {
    let echo = servers::start(Behavior::Echo).await;
    let dir = TempDir::new("fresh");
    let sock = dir.path.join("upgrade.sock");
    let mut args = upgrade_args(&sock);
    args.push("--takeover".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = AgentProcess::spawn(&config(echo.addr), &args).await;
    assert!(agent.logs().contains("no running agent to take over"));
    let addr = agent.listener("l4").await;
    let back = plumb_tests::client::roundtrip(addr, b"fresh")
        .await
        .unwrap();
    assert_eq!(back, b"fresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_vanishes_before_ready_leaves_the_old_agent_serving() {
    let echo = servers::start(Behavior::Echo).await;
    let dir = TempDir::new("vanish");
    let sock = dir.path.join("upgrade.sock");
    let args = upgrade_args(&sock);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = AgentProcess::spawn(&config(echo.addr), &args).await;
    let addr = agent.listener("l4").await;
    wait_log(&agent, "serving hand-overs").await;

    // A successor that receives the sockets and goes away without saying Ready.
    let got = plumb::handover::take_over(&sock, Duration::from_secs(5), 0, Duration::from_secs(60))
        .expect("offer");
    assert_eq!(got.listeners.len(), 1);
    assert_eq!(got.listeners[0].0.bound, addr);
    assert!(got.admin.is_some());
    // While the hand-over is open, a reload that needs a new socket must not bind it (the
    // successor could not inherit it): it is refused, and applies after the abort.
    let extra = servers::closed_port();
    let with_extra = |echo: SocketAddr| {
        let mut l = tcp_listener("extra", "echo");
        l["address"]["socket_address"]["port_value"] = extra.port().into();
        bootstrap(
            vec![tcp_listener("l4", "echo"), l],
            vec![static_cluster("echo", &[echo])],
        )
    };
    std::fs::write(agent.dir.path.join("bootstrap.yaml"), with_extra(echo.addr)).unwrap();
    agent.signal(libc::SIGHUP);
    wait_log(&agent, "a hand-over to a successor agent is in progress").await;
    assert!(tokio::net::TcpStream::connect(extra).await.is_err());
    drop(got);
    wait_log(&agent, "hand-over aborted; this agent carries on").await;
    agent.signal(libc::SIGHUP);
    plumb_tests::wait_until(
        "extra listener bound",
        Duration::from_secs(10),
        || async move { tokio::net::TcpStream::connect(extra).await.is_ok() },
    )
    .await;

    // Admin answers again and traffic still flows.
    let admin = agent.admin;
    plumb_tests::wait_until("admin resumes", Duration::from_secs(10), || async move {
        matches!(plumb_tests::client::http("GET", admin, "/ready").await, Ok(r) if r.status == 200)
    })
    .await;
    let back = plumb_tests::client::roundtrip(addr, b"still here")
        .await
        .unwrap();
    assert_eq!(back, b"still here");

    // And a real successor can still take over afterwards.
    let mut takeover = args.clone();
    takeover.push("--takeover");
    let new = AgentProcess::spawn(&config(echo.addr), &takeover).await;
    assert_eq!(new.listener("l4").await, addr);
    wait_log(&agent, "handed over; draining").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_takeover_wait_keeps_the_old_agent_until_sigterm() {
    let echo = servers::start(Behavior::Echo).await;
    let dir = TempDir::new("wait");
    let sock = dir.path.join("upgrade.sock");
    let mut args = upgrade_args(&sock);
    args.extend(["--after-takeover".into(), "wait".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut old = AgentProcess::spawn(&config(echo.addr), &args).await;
    let mut takeover = args.clone();
    takeover.push("--takeover");
    let _new = AgentProcess::spawn(&config(echo.addr), &takeover).await;
    wait_log(&old, "waiting for SIGTERM").await;
    assert!(old.try_wait().is_none(), "exited without SIGTERM");
    old.signal(libc::SIGTERM);
    let st = old.wait_exit(Duration::from_secs(10)).await.expect("exits");
    assert_eq!(st.code(), Some(0), "{}", old.logs());
    // The old agent leaves the successor's upgrade socket alone.
    assert!(sock.exists());
}

/// PIDs of `pid`'s children (from /proc).
fn children(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                v.extend(c.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    v
}

/// A process this test did not spawn directly (a successor started by an agent): signalled
/// by PID on drop.
struct Adopted(i32);

impl Adopted {
    fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the PID exists.
        let exists = unsafe { libc::kill(self.0, 0) } == 0;
        let zombie = std::fs::read_to_string(format!("/proc/{}/stat", self.0))
            .unwrap_or_default()
            .contains(") Z ");
        exists && !zombie
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        if self.alive() {
            // SAFETY: kill(2) on the successor this test caused to start.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

/// SIGUSR2, as for nginx: the agent starts its own binary with `--takeover`, which takes
/// over; the old one drains and exits. Twice in a row, under load, nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_a_successor_that_takes_over_under_load() {
    let echo = servers::start(Behavior::Echo).await;
    let dir = TempDir::new("usr2");
    let sock = dir.path.join("upgrade.sock");
    let args = upgrade_args(&sock);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = AgentProcess::spawn(&config(echo.addr), &args).await;
    let admin = first.admin;
    let addr = first.listener("l4").await;
    wait_log(&first, "serving hand-overs").await;
    let churn = Churn::start(addr, &dir);
    let served = format!("listener.127.0.0.1_{}.downstream_cx_total", addr.port());
    let wait_served = |min: i64| {
        let served = served.clone();
        plumb_tests::wait_until(
            "traffic through the current agent",
            Duration::from_secs(20),
            move || {
                let served = served.clone();
                async move { stat(admin, &served).await > min }
            },
        )
    };
    wait_served(100).await;

    // First upgrade: the test's child starts a successor.
    first.signal(libc::SIGUSR2);
    let mut successor = None;
    plumb_tests::wait_until("a successor process", Duration::from_secs(10), || {
        let c = children(first.pid());
        if let Some(p) = c.first() {
            successor = Some(*p);
        }
        let found = !c.is_empty();
        async move { found }
    })
    .await;
    let second = Adopted(successor.unwrap());
    wait_log(&first, "handed over; draining").await;
    // The admin port now answers from the successor: its counters start from zero.
    plumb_tests::wait_until("successor live", Duration::from_secs(20), || async move {
        plumb_tests::client::http("GET", admin, "/ready")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    wait_served(100).await;

    // Second upgrade, signalled to the successor.
    // SAFETY: kill(2) on the successor's PID.
    assert_eq!(unsafe { libc::kill(second.0, libc::SIGUSR2) }, 0);
    let mut third_pid = None;
    plumb_tests::wait_until("a second successor", Duration::from_secs(10), || {
        let c = children(second.0);
        if let Some(p) = c.first() {
            third_pid = Some(*p);
        }
        let found = !c.is_empty();
        async move { found }
    })
    .await;
    let third = Adopted(third_pid.unwrap());
    wait_log(&first, &format!("successor_pid={}", third.0)).await;
    wait_served(100).await;

    let r = churn.finish();
    eprintln!("churn through 2 SIGUSR2 upgrades: {r}");
    assert_eq!(r["failures"], 0, "{r}");
    assert!(r["held_exchanges"].as_u64().unwrap() > 0, "{r}");

    let st = first
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("first exits");
    assert_eq!(st.code(), Some(0), "{}", first.logs());
    plumb_tests::wait_until("second exits", Duration::from_secs(20), || {
        let alive = second.alive();
        async move { !alive }
    })
    .await;
    assert!(third.alive());
}

/// A running agent that refuses the takeover (it gave up waiting for the successor, or it is
/// draining) makes the successor stop, serving nothing and touching nothing shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_successor_stops_with_an_error() {
    use plumb::handover::{Epoch, Listener, Message};
    let echo = servers::start(Behavior::Echo).await;
    let dir = TempDir::new("refused");
    let sock = dir.path.join("upgrade.sock");
    // A fake running agent: offers nothing, then refuses.
    let old = Listener::bind(&sock).unwrap();
    let fake = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let ch = old.accept(deadline).unwrap().expect("successor connects");
        let (hello, _) = ch.recv(Some(deadline)).unwrap().unwrap();
        assert!(matches!(hello, Message::Hello { .. }), "{hello:?}");
        ch.send_offer(0, Epoch::default(), &[], &[]).unwrap();
        let (ready, _) = ch.recv(Some(deadline)).unwrap().unwrap();
        assert!(matches!(ready, Message::Ready { .. }), "{ready:?}");
        ch.send(
            &Message::Refused {
                reason: "test says no".into(),
            },
            &[],
        )
        .unwrap();
    });
    let mut args = upgrade_args(&sock);
    args.push("--takeover".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut successor = AgentProcess::spawn_starting(&config(echo.addr), &args, None).await;
    let Some(st) = successor.wait_exit(Duration::from_secs(20)).await else {
        panic!(
            "the refused successor did not exit within 20 s; its logs:\n{}",
            successor.logs()
        );
    };
    fake.join().unwrap();
    assert_eq!(st.code(), Some(1), "{}", successor.logs());
    let logs = successor.logs();
    assert!(
        logs.contains("takeover refused by the running agent: test says no"),
        "{logs}"
    );
    assert!(!logs.contains("plumb is live"), "{logs}");
}

/// Issue 12: a hand-over under HTTP keep-alive load fails no request. The old agent's
/// connections answer their next request with `Connection: close`; clients then reconnect and
/// reach the new agent through the inherited listening socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_under_http_keep_alive_load_fails_no_request() {
    use plumb_tests::agent::{any_host, http_listener};
    use plumb_tests::http_client::{request, H1};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let up = plumb_tests::http_upstream::start("up").await;
    let dir = TempDir::new("upgrade-http");
    let sock = dir.path.join("upgrade.sock");
    let routes = serde_json::json!([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]);
    let cfg = bootstrap(
        vec![http_listener("web", any_host(routes))],
        vec![static_cluster("up", &[up.addr])],
    );
    let args = upgrade_args(&sock);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut takeover_args = args.clone();
    takeover_args.push("--takeover");
    let first = AgentProcess::spawn(&cfg, &args).await;
    let addr = first.listener("web").await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, reconnects) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, reconnects) =
            (stop.clone(), ok.clone(), failed.clone(), reconnects.clone());
        clients.push(tokio::spawn(async move {
            let mut c = H1::connect(addr).await;
            // Bounded: at most 200,000 requests per client.
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if c.is_closed() {
                    c = H1::connect(addr).await;
                    reconnects.fetch_add(1, Ordering::Relaxed);
                }
                match c.send(request("GET", "x", "/", &[], b"")).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if r.header("connection") == Some("close") {
                            c = H1::connect(addr).await;
                            reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        c = H1::connect(addr).await;
                    }
                }
            }
        }));
    }
    plumb_tests::wait_until(
        "load through the first agent",
        Duration::from_secs(20),
        || {
            let ok = ok.clone();
            async move { ok.load(Ordering::Relaxed) > 200 }
        },
    )
    .await;
    let new = AgentProcess::spawn(&cfg, &takeover_args).await;
    wait_log(&first, "handed over; draining").await;
    let a = new.admin;
    plumb_tests::wait_until(
        "the new agent serves HTTP",
        Duration::from_secs(20),
        || async move { stat(a, "http.web.downstream_rq_total").await > 200 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed, reconnects) = (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        reconnects.load(Ordering::Relaxed),
    );
    eprintln!("HTTP through a takeover: {ok} ok, {failed} failed, {reconnects} reconnects");
    assert_eq!(failed, 0);
    assert!(
        reconnects >= 4,
        "every client moved to the new agent: {reconnects}"
    );
    let mut first = first;
    let st = first
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the old agent exits");
    assert_eq!(st.code(), Some(0), "{}", first.logs());
    let mut new = new;
    new.signal(libc::SIGTERM);
    assert_eq!(
        new.wait_exit(Duration::from_secs(20))
            .await
            .and_then(|s| s.code()),
        Some(0)
    );
}

/// Outlier ejections and active health verdicts pass to the successor (issue 13, item 8):
/// it neither sends traffic back to an ejected host nor waits for its own first checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejections_and_health_verdicts_pass_to_the_successor() {
    use plumb_tests::agent::{any_host, http_listener};
    use plumb_tests::http_client::{request, H1};
    use serde_json::json;
    let good = plumb_tests::http_upstream::start("good").await;
    let (bad, bad_count) = servers::raw_http("bad", 503, Duration::ZERO).await;
    // A host that accepts but never answers the check's payload: failing after the timeout.
    let silent = servers::start(Behavior::Silent).await;
    let echo = servers::start(Behavior::Echo).await;
    let mut up = static_cluster("up", &[good.addr, bad]);
    up["outlier_detection"] = json!({"consecutive_5xx": 2, "base_ejection_time": "300s",
        "max_ejection_percent": 50});
    let mut checked = static_cluster("checked", &[echo.addr, silent.addr]);
    checked["health_checks"] = json!([{"timeout": "2s", "interval": "0.1s",
        "no_traffic_interval": "0.1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
        "tcp_health_check": {"send": {"text": "70696e67"}, "receive": [{"text": "70696e67"}]}}]);
    let cfg = bootstrap(
        vec![http_listener(
            "in",
            any_host(json!([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}])),
        )],
        vec![up, checked],
    );
    let dir = TempDir::new("upgrade-health");
    let sock = dir.path.join("upgrade.sock");
    let args = upgrade_args(&sock);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut takeover_args = args.clone();
    takeover_args.push("--takeover");
    let first = AgentProcess::spawn(&cfg, &args).await;
    let addr = first.listener("in").await;
    let mut c = H1::connect(addr).await;
    for _ in 0..6 {
        c.send(request("GET", "x", "/", &[], b"")).await.unwrap();
    }
    drop(c);
    assert_eq!(
        stat(first.admin, "cluster.up.outlier_detection.ejections_active").await,
        1
    );
    plumb_tests::wait_until(
        "the silent host failed",
        Duration::from_secs(20),
        || async { stat(first.admin, "cluster.checked.health_check.failure").await >= 1 },
    )
    .await;
    let new = AgentProcess::spawn(&cfg, &takeover_args).await;
    wait_log(&first, "handed over; draining").await;
    // At once in the successor: the ejection and both verdicts (the silent host would
    // otherwise be pending its first check for two seconds).
    let clusters = plumb_tests::client::get(new.admin, "/clusters").await.body;
    assert!(
        clusters.contains(&format!("up::{bad}::health_flags::/failed_outlier_check\n")),
        "{clusters}"
    );
    assert!(
        clusters.contains(&format!(
            "checked::{}::health_flags::/failed_active_hc\n",
            silent.addr
        )),
        "{clusters}"
    );
    assert!(
        clusters.contains(&format!("checked::{}::health_flags::healthy\n", echo.addr)),
        "{clusters}"
    );
    let before = bad_count.load(std::sync::atomic::Ordering::Relaxed);
    let mut c = H1::connect(addr).await;
    for _ in 0..10 {
        let r = c.send(request("GET", "x", "/", &[], b"")).await.unwrap();
        assert_eq!(r.status, 200, "the ejected host gets nothing");
    }
    assert_eq!(bad_count.load(std::sync::atomic::Ordering::Relaxed), before);
    // The ejection and the silent host's verdict at least (the echo host's own first check
    // may pass before the hand-over's verdict arrives).
    assert!(
        new.logs().contains("applied=3") || new.logs().contains("applied=2"),
        "{}",
        new.logs()
    );
}
