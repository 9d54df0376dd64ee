//! The overload manager end to end (issue 11, item 6): the global connection limit, a
//! listener's runtime connection limit, and the stop-accepting and reject actions driven by
//! the connection monitor's pressure — with real connections through a tcp_proxy listener.

use plumb_tests::agent::{bootstrap, static_cluster, tcp_listener, TestAgent};
use plumb_tests::servers::{self, Behavior};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MONITOR: &str = "envoy.resource_monitors.global_downstream_max_connections";

fn with_overload(echo: SocketAddr, overload: Value, runtime: Option<Value>) -> String {
    let mut b: Value = serde_json::from_str(&bootstrap(
        vec![tcp_listener("front", "echo")],
        vec![static_cluster("echo", &[echo])],
    ))
    .unwrap();
    b["overload_manager"] = overload;
    if let Some(r) = runtime {
        b["layered_runtime"] = r;
    }
    b.to_string()
}

fn monitor(max: u64) -> Value {
    json!({"name": MONITOR, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
        "max_active_downstream_connections": max}})
}

/// An echoed connection, held open.
async fn echoed(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .unwrap();
    s
}

/// A connection the agent closes without serving: EOF or reset, within the deadline.
async fn refused(addr: SocketAddr) {
    // The reset may even beat the connect's completion.
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = s.write_all(b"hi").await;
    let mut buf = [0u8; 2];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

/// Whether a new connection is served (echoed); until a slot frees, the connect itself may
/// be reset.
async fn served(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let _ = s.write_all(b"hi").await;
    let mut buf = [0u8; 2];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_connection_limit_closes_connections_beyond_it() {
    let echo = servers::start(Behavior::Echo).await;
    let agent = TestAgent::start(&with_overload(
        echo.addr,
        json!({"resource_monitors": [monitor(2)]}),
        None,
    ))
    .await;
    let front = agent.listener("front");
    let a = echoed(front).await;
    let _b = echoed(front).await;
    refused(front).await;
    let name = format!(
        "listener.{}.downstream_global_cx_overflow",
        front.to_string().replace(':', "_")
    );
    agent.wait_stat(&name, |v| v == 1).await;
    drop(a);
    // The slot frees when the proxied connection ends.
    plumb_tests::wait_until("a slot frees", Duration::from_secs(5), || served(front)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_runtime_connection_limit_is_enforced() {
    let echo = servers::start(Behavior::Echo).await;
    let agent = TestAgent::start(&with_overload(
        echo.addr,
        json!({}),
        Some(json!({"layers": [{"name": "static", "static_layer": {
            "envoy.resource_limits.listener.front.connection_limit": 1}}]})),
    ))
    .await;
    let front = agent.listener("front");
    let held = echoed(front).await;
    refused(front).await;
    let name = format!(
        "listener.{}.downstream_cx_overflow",
        front.to_string().replace(':', "_")
    );
    agent.wait_stat(&name, |v| v == 1).await;
    drop(held);
    plumb_tests::wait_until(
        "the listener has room again",
        Duration::from_secs(5),
        || served(front),
    )
    .await;
}

/// At 50 % of 4 connections, `stop_accepting_connections` pauses accepting: a new
/// connection waits in the kernel's queue, unserved, and is served once a held one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_accepting_holds_new_connections_in_the_queue_until_pressure_falls() {
    let echo = servers::start(Behavior::Echo).await;
    let agent = TestAgent::start(&with_overload(
        echo.addr,
        json!({"refresh_interval": "0.02s", "resource_monitors": [monitor(4)], "actions": [{
            "name": "envoy.overload_actions.stop_accepting_connections",
            "triggers": [{"name": MONITOR, "threshold": {"value": 0.5}}]}]}),
        None,
    ))
    .await;
    let front = agent.listener("front");
    let a = echoed(front).await;
    let _b = echoed(front).await;
    agent
        .wait_stat(
            "overload.envoy.overload_actions.stop_accepting_connections.active",
            |v| v == 1,
        )
        .await;
    assert_eq!(
        agent.stat(&format!("overload.{MONITOR}.pressure")),
        50,
        "2 of 4"
    );
    let mut waiting = TcpStream::connect(front)
        .await
        .expect("queued by the kernel");
    waiting.write_all(b"q").await.unwrap();
    let mut buf = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), waiting.read_exact(&mut buf))
            .await
            .is_err(),
        "not served while accepting is stopped"
    );
    drop(a);
    tokio::time::timeout(Duration::from_secs(5), waiting.read_exact(&mut buf))
        .await
        .expect("served once pressure falls")
        .unwrap();
    assert_eq!(&buf, b"q");
    agent
        .wait_stat(
            "overload.envoy.overload_actions.stop_accepting_connections.active",
            |v| v == 0,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_incoming_resets_new_connections_under_pressure() {
    let echo = servers::start(Behavior::Echo).await;
    let agent = TestAgent::start(&with_overload(
        echo.addr,
        json!({"refresh_interval": "0.02s", "resource_monitors": [monitor(4)], "actions": [{
            "name": "envoy.overload_actions.reject_incoming_connections",
            "triggers": [{"name": MONITOR, "scaled": {"scaling_threshold": 0.25, "saturation_threshold": 0.5}}]}]}),
        None,
    ))
    .await;
    let front = agent.listener("front");
    let a = echoed(front).await;
    let _b = echoed(front).await;
    agent
        .wait_stat(
            "overload.envoy.overload_actions.reject_incoming_connections.active",
            |v| v == 1,
        )
        .await;
    refused(front).await;
    let name = format!(
        "listener.{}.downstream_cx_overload_reject",
        front.to_string().replace(':', "_")
    );
    agent.wait_stat(&name, |v| v >= 1).await;
    drop(a);
    agent
        .wait_stat(
            "overload.envoy.overload_actions.reject_incoming_connections.active",
            |v| v == 0,
        )
        .await;
    echoed(front).await;
}

/// Issue 11, item 5: with a small open-files limit (300) and no configured limit, the data
/// path takes at most (300 − 256) / 2 = 22 connections; more are closed at accept, the admin
/// server keeps answering with 50 idle admin connections open, and nothing logs
/// "Too many open files".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_path_leaves_descriptors_for_admin_and_the_control_plane() {
    use plumb_tests::client::get;
    let echo = servers::start(Behavior::Echo).await;
    let dir = plumb_tests::TempDir::new("fd-reserve");
    let cfg = dir.write(
        "bootstrap.json",
        &bootstrap(
            vec![tcp_listener("front", "echo")],
            vec![static_cluster("echo", &[echo.addr])],
        ),
    );
    let addr_file = dir.path.join("admin-address");
    let log = dir.path.join("stderr");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 300 && exec {} run --config {} --admin-address-path {} 2> {}",
            plumb_tests::agent::plumb_bin().display(),
            cfg.display(),
            addr_file.display(),
            log.display()
        ))
        .spawn()
        .unwrap();
    let _kill = plumb_tests::agent::KillOnDrop(child.id());
    plumb_tests::wait_until("agent started", Duration::from_secs(20), || {
        let f = addr_file.clone();
        async move { std::fs::read_to_string(&f).is_ok_and(|s| !s.trim().is_empty()) }
    })
    .await;
    let admin: SocketAddr = std::fs::read_to_string(&addr_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    plumb_tests::wait_until("ready", Duration::from_secs(20), || async move {
        plumb_tests::client::http("GET", admin, "/ready")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    let listeners = get(admin, "/listeners?format=json").await.json();
    let front: SocketAddr = listeners["listener_statuses"][0]["local_address"]["socket_address"]
        .as_object()
        .map(|a| {
            format!(
                "{}:{}",
                a["address"].as_str().unwrap(),
                a["port_value"].as_u64().unwrap()
            )
        })
        .unwrap()
        .parse()
        .unwrap();
    let mut idle_admin = Vec::new();
    for _ in 0..50 {
        idle_admin.push(TcpStream::connect(admin).await.unwrap());
    }
    let mut served = Vec::new();
    let mut closed = 0;
    for _ in 0..60 {
        let Ok(mut s) = TcpStream::connect(front).await else {
            closed += 1;
            continue;
        };
        let _ = s.write_all(b"hi").await;
        let mut buf = [0u8; 2];
        match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => served.push(s),
            Ok(Err(_)) => closed += 1,
            Err(_) => panic!("a data connection neither served nor closed"),
        }
    }
    assert_eq!(
        served.len(),
        22,
        "(300 - 256) / 2 connections, {closed} closed"
    );
    assert_eq!(closed, 38);
    let r = get(admin, "/ready").await;
    assert_eq!(r.status, 200, "admin still answers");
    let stats = get(admin, "/stats?filter=downstream_global_cx_overflow")
        .await
        .body;
    assert!(
        stats.contains("downstream_global_cx_overflow: 38"),
        "{stats}"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(log.contains("data-path connections limited"), "{log}");
    let _ = child.kill();
    let _ = child.wait();
}
