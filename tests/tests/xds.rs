//! xDS end to end: Plumb started with only an ADS bootstrap, driven by a real gRPC control
//! plane (state-of-the-world and delta), with traffic flowing through what it sends.

use plumb_tests::agent::TestAgent;
use plumb_tests::churn::Churn;
use plumb_tests::client::{get, roundtrip};
use plumb_tests::servers::{self, Behavior};
use plumb_tests::xds::{
    ads_bootstrap, eds_cluster, endpoints, tcp_listener, ControlPlane, Resources, CLUSTER,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Options for an in-process agent that keeps its xDS cache in `cache`.
fn with_cache(cache: &std::path::Path) -> plumb::server::Options {
    plumb::server::Options {
        concurrency: 2,
        drain_time: Duration::from_secs(1),
        xds_cache: Some(cache.to_path_buf()),
        ..plumb::server::Options::default()
    }
}

fn free_addr() -> SocketAddr {
    servers::closed_port()
}

async fn basic(api: &str) {
    let echo = servers::start(Behavior::Echo).await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    set_one_service(&cp, front, echo.addr);
    let agent = TestAgent::start(&ads_bootstrap(cp.addr, api)).await;
    plumb_tests::wait_until("endpoints arrive", Duration::from_secs(10), || async {
        agent.stat("cluster.backend.membership_total") == 1
    })
    .await;
    assert_eq!(roundtrip(front, b"via xds").await.unwrap(), b"via xds");
    assert_eq!(agent.stat("control_plane.connected_state"), 1);
    assert!(agent.stat("cluster_manager.cds.update_success") >= 1);
    assert!(agent.stat("listener_manager.lds.update_success") >= 1);
    let reqs = cp.requests();
    assert!(
        reqs.first().is_some_and(|r| r.has_node),
        "the node is sent first"
    );
    assert!(
        reqs.iter().all(|r| r.error.is_none()),
        "no NACKs: {:?}",
        cp.nacks()
    );
    if api == "GRPC" {
        assert!(
            reqs.iter()
                .any(|r| r.type_url == CLUSTER && r.version_info == "1" && !r.nonce.is_empty()),
            "CDS was ACKed with version 1"
        );
    }
    let dump = get(agent.admin(), "/config_dump").await.json();
    let text = dump.to_string();
    assert!(text.contains("dynamic_active_clusters"), "{text}");
    assert!(text.contains("\"version_info\":\"1\""), "{text}");

    // Removing the listener over LDS closes its socket.
    cp.set(
        vec![eds_cluster("backend")],
        vec![],
        vec![endpoints("backend", &[echo.addr])],
    );
    plumb_tests::wait_until("listener removed", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(front).await.is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_sotw_delivers_listeners_clusters_endpoints_and_traffic_flows() {
    basic("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_delta_delivers_listeners_clusters_endpoints_and_traffic_flows() {
    basic("DELTA_GRPC").await;
}

async fn nack(api: &str) {
    let a = servers::start(Behavior::Named("a".into())).await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    set_one_service(&cp, front, a.addr);
    let agent = TestAgent::start(&ads_bootstrap(cp.addr, api)).await;
    plumb_tests::wait_until("endpoints", Duration::from_secs(10), || async {
        agent.stat("cluster.backend.membership_total") == 1
    })
    .await;
    // An update with a field that cannot be honoured must be refused.
    let mut bad = eds_cluster("backend");
    bad.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 9,
        nanos: 0,
    });
    bad.transport_socket_matcher = Some(Default::default());
    cp.set(
        vec![bad],
        vec![tcp_listener("front", front, "backend")],
        vec![endpoints("backend", &[a.addr])],
    );
    plumb_tests::wait_until("NACK", Duration::from_secs(10), || async {
        !cp.nacks().is_empty()
    })
    .await;
    let n = &cp.nacks()[0];
    let err = n.error.as_deref().unwrap();
    assert!(
        err.contains("cluster \"backend\": transport_socket_matcher: not supported"),
        "{err}"
    );
    if api == "GRPC" {
        assert_eq!(
            n.version_info, "1",
            "a NACK carries the last accepted version"
        );
    }
    assert_eq!(agent.stat("cluster_manager.cds.update_rejected"), 1);
    // The previous version keeps serving.
    assert_eq!(
        plumb_tests::client::read_all(front, Duration::from_secs(5))
            .await
            .unwrap(),
        b"a"
    );
    let dump = get(agent.admin(), "/config_dump").await.json().to_string();
    assert!(
        dump.contains("transport_socket_matcher: not supported"),
        "{dump}"
    );
    assert!(
        dump.contains("\"connect_timeout\":\"1s\""),
        "the old cluster is still active: {dump}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_resources_are_nacked_and_the_old_version_serves_sotw() {
    nack("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_resources_are_nacked_and_the_old_version_serves_delta() {
    nack("DELTA_GRPC").await;
}

async fn churn(api: &str) {
    let servers = [
        servers::start(Behavior::Echo).await,
        servers::start(Behavior::Echo).await,
        servers::start(Behavior::Echo).await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let cp = ControlPlane::start().await;
    let front = free_addr();
    cp.set(
        vec![eds_cluster("backend")],
        vec![tcp_listener("front", front, "backend")],
        vec![endpoints("backend", &addrs)],
    );
    let agent = TestAgent::start(&ads_bootstrap(cp.addr, api)).await;
    plumb_tests::wait_until("endpoints", Duration::from_secs(10), || async {
        agent.stat("cluster.backend.membership_total") == 3
    })
    .await;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..4 {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        clients.spawn(async move {
            let data = plumb_tests::pattern(1000 + i);
            // Bounded: at most 10 000 connections per client.
            for _ in 0..10_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match roundtrip(front, &data).await {
                    Ok(got) if got == data => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    // 100 endpoint updates, every 20 ms: each a different non-empty subset of live servers.
    let subsets: [&[usize]; 6] = [&[0], &[1, 2], &[0, 2], &[2], &[0, 1], &[0, 1, 2]];
    for i in 0..100 {
        let set: Vec<SocketAddr> = subsets[i % subsets.len()]
            .iter()
            .map(|&j| addrs[j])
            .collect();
        cp.set_endpoints(vec![endpoints("backend", &set)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{api}: {ok} connections during churn, {failed} failed");
    assert_eq!(failed, 0, "connections failed during endpoint churn");
    assert!(ok > 100, "too little traffic to mean anything: {ok}");
    assert!(cp.nacks().is_empty());
    assert!(agent.stat("cluster.backend.membership_change") >= 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_fails_no_connection_sotw() {
    churn("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_fails_no_connection_delta() {
    churn("DELTA_GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_outage_keeps_the_last_good_config_and_recovers() {
    let a = servers::start(Behavior::Named("a".into())).await;
    let b = servers::start(Behavior::Named("b".into())).await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    set_one_service(&cp, front, a.addr);
    let agent = TestAgent::start(&ads_bootstrap(cp.addr, "GRPC")).await;
    plumb_tests::wait_until("endpoints", Duration::from_secs(10), || async {
        agent.stat("cluster.backend.membership_total") == 1
    })
    .await;
    let addr = cp.addr;
    let Resources {
        version,
        clusters,
        listeners,
        ..
    } = cp.stop().await;
    plumb_tests::wait_until("disconnected", Duration::from_secs(10), || async {
        agent.stat("control_plane.connected_state") == 0
    })
    .await;
    // Down: the last good config keeps serving.
    assert_eq!(
        plumb_tests::client::read_all(front, Duration::from_secs(5))
            .await
            .unwrap(),
        b"a"
    );
    // Back, with new endpoints: the agent reconnects (with backoff) and applies them.
    let cp = ControlPlane::start_on(
        addr,
        Resources {
            version,
            clusters,
            listeners,
            endpoints: vec![],
            routes: vec![],
            secrets: vec![],
        },
    )
    .await;
    cp.set_endpoints(vec![endpoints("backend", &[b.addr])]);
    plumb_tests::wait_until("reconnected and updated", Duration::from_secs(20), || async {
        matches!(plumb_tests::client::read_all(front, Duration::from_secs(5)).await, Ok(v) if v == b"b")
    })
    .await;
    assert_eq!(agent.stat("control_plane.connected_state"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_the_control_plane_is_down_serves_the_cached_config() {
    use plumb::server::ShutdownKind;
    let a = servers::start(Behavior::Named("a".into())).await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    set_one_service(&cp, front, a.addr);
    let dir = plumb_tests::TempDir::new("xds-cache");
    let cache = dir.path.join("xds.cache");
    let options = || with_cache(&cache);
    let bootstrap = ads_bootstrap(cp.addr, "GRPC");
    let agent = TestAgent::start_with(&bootstrap, options()).await;
    // Endpoints and the listener arrive in separate responses: wait for the proxied answer.
    plumb_tests::wait_until("the listener proxies", Duration::from_secs(10), || async {
        plumb_tests::client::read_all(front, Duration::from_secs(5))
            .await
            .is_ok_and(|b| b == b"a")
    })
    .await;
    agent.shutdown(ShutdownKind::Immediate);
    agent.join().await;
    cp.stop().await;
    assert!(cache.exists(), "the cache was written");

    // The control plane is gone; the new agent comes up from the cache.
    let agent = TestAgent::start_with(&bootstrap, options()).await;
    assert_eq!(agent.stat("control_plane.connected_state"), 0);
    plumb_tests::wait_until("cached endpoints", Duration::from_secs(10), || async {
        agent.stat("cluster.backend.membership_total") == 1
    })
    .await;
    assert_eq!(
        plumb_tests::client::read_all(front, Duration::from_secs(5))
            .await
            .unwrap(),
        b"a"
    );
    let dump = get(agent.admin(), "/config_dump").await.json().to_string();
    assert!(dump.contains("\"version_info\":\"1\""), "{dump}");
}

/// The same with an HTTP listener whose routes come over RDS: it warmed until its routes
/// came, then activated with no further LDS update — and must be in the cache all the same
/// (it was not: a restart from the cache came up without it, found by plumb-sim's hand-over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_the_cache_serves_a_listener_that_warmed_for_its_routes() {
    use plumb::server::ShutdownKind;
    let up = plumb_tests::http_upstream::start("a").await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    cp.set(
        vec![eds_cluster("backend")],
        vec![plumb_tests::xds::http_rds_listener("front", front, "r")],
        vec![endpoints("backend", &[up.addr])],
    );
    cp.set_routes(vec![plumb_tests::xds::route_to("r", "backend", "t")]);
    let dir = plumb_tests::TempDir::new("xds-cache-rds");
    let cache = dir.path.join("xds.cache");
    let bootstrap = ads_bootstrap(cp.addr, "GRPC");
    let ok = || async move {
        matches!(plumb_tests::client::http("GET", front, "/").await, Ok(r) if r.status == 200)
    };
    let agent = TestAgent::start_with(&bootstrap, with_cache(&cache)).await;
    plumb_tests::wait_until("the listener routes", Duration::from_secs(10), ok).await;
    agent.shutdown(ShutdownKind::Immediate);
    agent.join().await;
    cp.stop().await;

    // Ready means the cached listener is there and its cached routes too: no waiting.
    let agent = TestAgent::start_with(&bootstrap, with_cache(&cache)).await;
    assert_eq!(agent.stat("control_plane.connected_state"), 0);
    let r = plumb_tests::client::http("GET", front, "/").await;
    assert!(
        matches!(&r, Ok(r) if r.status == 200),
        "the cached HTTP listener serves at once: {:?}",
        r.map(|r| r.status)
    );
}

fn with_tls(bootstrap: &str, ca_file: &std::path::Path, sni: &str) -> String {
    let mut b: serde_json::Value = serde_json::from_str(bootstrap).unwrap();
    b["static_resources"]["clusters"][0]["transport_socket"] = serde_json::json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": sni,
            "common_tls_context": {"validation_context": {"trusted_ca": {"filename": ca_file.to_str().unwrap()}}},
        },
    });
    b.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_over_tls_verifies_the_control_plane() {
    let ck = rcgen::generate_simple_self_signed(vec!["xds.test".to_string()]).unwrap();
    let cp = ControlPlane::start_tls(&ck.cert.pem(), &ck.signing_key.serialize_pem()).await;
    let dir = plumb_tests::TempDir::new("xds-tls");
    let ca = dir.write("ca.pem", &ck.cert.pem());
    let echo = servers::start(Behavior::Echo).await;
    let front = free_addr();
    set_one_service(&cp, front, echo.addr);
    let agent = TestAgent::start(&with_tls(&ads_bootstrap(cp.addr, "GRPC"), &ca, "xds.test")).await;
    plumb_tests::wait_until("endpoints over TLS", Duration::from_secs(10), || async {
        agent.stat("cluster.backend.membership_total") == 1
    })
    .await;
    assert_eq!(roundtrip(front, b"tls").await.unwrap(), b"tls");
    assert_eq!(agent.stat("control_plane.connected_state"), 1);
    drop(agent);

    // A certificate that does not match the name is refused: nothing is applied.
    let other = free_addr();
    cp.set(
        vec![eds_cluster("backend")],
        vec![tcp_listener("other", other, "backend")],
        vec![endpoints("backend", &[echo.addr])],
    );
    let agent = TestAgent::start(&with_tls(
        &ads_bootstrap(cp.addr, "GRPC"),
        &ca,
        "wrong.test",
    ))
    .await;
    plumb_tests::wait_until("TLS failures counted", Duration::from_secs(10), || async {
        agent.stat("cluster_manager.cds.update_failure") >= 1
    })
    .await;
    assert_eq!(agent.stat("control_plane.connected_state"), 0);
    assert!(tokio::net::TcpStream::connect(other).await.is_err());
}

#[test]
fn the_control_plane_cluster_must_verify_its_server() {
    let ck = rcgen::generate_simple_self_signed(vec!["xds.test".to_string()]).unwrap();
    let dir = plumb_tests::TempDir::new("xds-tls-config");
    let ca = dir.write("ca.pem", &ck.cert.pem());
    let b = with_tls(
        &ads_bootstrap("127.0.0.1:1".parse().unwrap(), "GRPC"),
        &ca,
        "x",
    );
    plumb::config::parse_bootstrap(&b, "t").expect("TLS to the ADS cluster is accepted");
    let mut v: serde_json::Value = serde_json::from_str(&b).unwrap();
    v["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
        ["common_tls_context"] = serde_json::json!({});
    let e = plumb::config::parse_bootstrap(&v.to_string(), "t")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("common_tls_context.validation_context: the control plane's certificate must be verified"),
        "{e}"
    );
    // A CA file that is not there is named.
    let b = with_tls(
        &ads_bootstrap("127.0.0.1:1".parse().unwrap(), "GRPC"),
        std::path::Path::new("/nonexistent/ca.pem"),
        "x",
    );
    let e = plumb::config::parse_bootstrap(&b, "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("trusted_ca: read /nonexistent/ca.pem"), "{e}");
}

/// A takeover of an xDS-driven agent: the successor's listeners arrive over LDS and take the
/// inherited sockets (binding fresh would fail: the old agent holds them), and it starts
/// accepting only once its configuration is in. Traffic through the upgrade: no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_hands_lds_listener_sockets_to_the_successor() {
    use plumb::server::Options;
    let echo = servers::start(Behavior::Echo).await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    set_one_service(&cp, front, echo.addr);
    let dir = plumb_tests::TempDir::new("xds-takeover");
    let options = |takeover: bool| Options {
        concurrency: 2,
        drain_time: Duration::from_secs(30),
        upgrade_socket: Some(dir.path.join("upgrade.sock")),
        takeover,
        ..Options::default()
    };
    let bootstrap = ads_bootstrap(cp.addr, "DELTA_GRPC");
    let old = TestAgent::start_with(&bootstrap, options(false)).await;
    plumb_tests::wait_until("endpoints", Duration::from_secs(10), || async {
        old.stat("cluster.backend.membership_total") == 1
    })
    .await;
    let churn = Churn::start(front, &dir);
    let served = format!(
        "listener.{}.downstream_cx_total",
        front.to_string().replace(':', "_")
    );
    plumb_tests::wait_until("traffic", Duration::from_secs(10), || async {
        old.stat(&served) > 100
    })
    .await;
    plumb_tests::wait_until("hand-overs served", Duration::from_secs(10), || async {
        dir.path.join("upgrade.sock").exists()
    })
    .await;

    let new = TestAgent::start_with(&bootstrap, options(true)).await;
    plumb_tests::wait_until("the successor serves", Duration::from_secs(10), || async {
        new.stat(&served) > 100
    })
    .await;
    assert_eq!(new.stat("listener_manager.lds.update_rejected"), 0);
    assert_eq!(new.stat("listener_manager.listener_create_failure"), 0);
    let r = churn.finish();
    eprintln!("churn through an xDS takeover: {r}");
    assert_eq!(r["failures"], 0, "{r}");
    // The old agent drained (its held connections ended with the churn) and stopped.
    old.join().await;
}

/// The control plane sees the node as configured: id, locality and metadata (a Struct), with
/// command-line-style overrides already applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_with_its_metadata_reaches_the_control_plane() {
    use envoy_types::pb::google::protobuf::value::Kind;
    let cp = ControlPlane::start().await;
    cp.set(vec![], vec![], vec![]);
    let mut b: serde_json::Value = serde_json::from_str(&ads_bootstrap(cp.addr, "GRPC")).unwrap();
    b["node"]["metadata"] =
        serde_json::json!({"team": "net", "weights": [1, 2], "nested": {"on": true}});
    let overrides = plumb::config::Overrides {
        node_zone: Some("zone-b".into()),
        node_metadata: vec![("HOST_IP".into(), "10.0.0.9".into())],
        ..Default::default()
    };
    let snapshot = plumb::config::parse_bootstrap_with(&b.to_string(), "test", &overrides).unwrap();
    let handle = plumb::server::start(snapshot, plumb::server::Options::default(), None).unwrap();
    plumb_tests::wait_until("the first request", Duration::from_secs(10), || async {
        cp.requests().iter().any(|r| r.node.is_some())
    })
    .await;
    let node = cp.requests().into_iter().find_map(|r| r.node).unwrap();
    assert_eq!(node.id, "test-node");
    assert_eq!(node.locality.unwrap().zone, "zone-b");
    let md = node.metadata.expect("metadata sent").fields;
    let s = |k: &str| match md.get(k).and_then(|v| v.kind.clone()) {
        Some(Kind::StringValue(s)) => s,
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(s("team"), "net");
    assert_eq!(s("HOST_IP"), "10.0.0.9");
    assert!(matches!(md["weights"].kind, Some(Kind::ListValue(ref l)) if l.values.len() == 2));
    assert!(
        matches!(md["nested"].kind, Some(Kind::StructValue(ref n)) if n.fields.contains_key("on"))
    );
    handle.shutdown(plumb::server::ShutdownKind::Immediate);
    tokio::task::spawn_blocking(move || handle.wait())
        .await
        .unwrap()
        .unwrap();
}

/// Services come and go: the endpoints of a service no cluster uses any more are forgotten
/// (not kept in memory and `/config_dump` forever), and come back with a new subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_of_removed_clusters_are_forgotten() {
    for api in ["GRPC", "DELTA_GRPC"] {
        let echo = servers::start(Behavior::Echo).await;
        let cp = ControlPlane::start().await;
        cp.set(
            vec![eds_cluster("keep"), eds_cluster("gone")],
            vec![],
            vec![
                endpoints("keep", &[echo.addr]),
                endpoints("gone", &[echo.addr]),
            ],
        );
        let agent = TestAgent::start(&ads_bootstrap(cp.addr, api)).await;
        let admin = agent.admin();
        let dump = || async move { get(admin, "/config_dump").await.json().to_string() };
        plumb_tests::wait_until(
            "both services' endpoints",
            Duration::from_secs(10),
            || async {
                let d = dump().await;
                d.contains("\"cluster_name\":\"keep\"") && d.contains("\"cluster_name\":\"gone\"")
            },
        )
        .await;
        cp.set(
            vec![eds_cluster("keep")],
            vec![],
            vec![
                endpoints("keep", &[echo.addr]),
                endpoints("gone", &[echo.addr]),
            ],
        );
        plumb_tests::wait_until(
            &format!("{api}: endpoints of \"gone\" forgotten"),
            Duration::from_secs(10),
            || async { !dump().await.contains("\"cluster_name\":\"gone\"") },
        )
        .await;
        assert!(dump().await.contains("\"cluster_name\":\"keep\""));
        // Back again: subscribed anew, the endpoints return.
        cp.set(
            vec![eds_cluster("keep"), eds_cluster("gone")],
            vec![],
            vec![
                endpoints("keep", &[echo.addr]),
                endpoints("gone", &[echo.addr]),
            ],
        );
        plumb_tests::wait_until(
            &format!("{api}: \"gone\" back"),
            Duration::from_secs(10),
            || async { agent.stat("cluster.gone.membership_total") == 1 },
        )
        .await;
    }
}

/// One EDS service "backend" at `addr`, behind listener "front".
fn set_one_service(cp: &ControlPlane, front: SocketAddr, addr: SocketAddr) {
    cp.set(
        vec![eds_cluster("backend")],
        vec![tcp_listener("front", front, "backend")],
        vec![endpoints("backend", &[addr])],
    );
}

/// Two EDS services, both at `addr`: "backend" behind listener "front", and "other".
fn set_two_services(cp: &ControlPlane, front: SocketAddr, addr: SocketAddr) {
    cp.set(
        vec![eds_cluster("backend"), eds_cluster("other")],
        vec![tcp_listener("front", front, "backend")],
        vec![endpoints("backend", &[addr]), endpoints("other", &[addr])],
    );
}

/// Delta: after a reconnect the agent reports each resource's own version
/// (`initial_resource_versions`), so the control plane re-sends only what changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_reconnect_downloads_only_what_changed() {
    let a = servers::start(Behavior::Named("a".into())).await;
    let b = servers::start(Behavior::Named("b".into())).await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    set_two_services(&cp, front, a.addr);
    let agent = TestAgent::start(&ads_bootstrap(cp.addr, "DELTA_GRPC")).await;
    plumb_tests::wait_until("endpoints", Duration::from_secs(10), || async {
        agent.stat("cluster.backend.membership_total") == 1
            && agent.stat("cluster.other.membership_total") == 1
    })
    .await;
    assert_eq!(cp.delta_resources_sent(), 5);
    let addr = cp.addr;
    let resources = cp.stop().await;
    plumb_tests::wait_until("disconnected", Duration::from_secs(10), || async {
        agent.stat("control_plane.connected_state") == 0
    })
    .await;
    // Back with the same resources but one endpoint set changed.
    let cp = ControlPlane::start_on(addr, resources).await;
    cp.set_endpoints(vec![
        endpoints("backend", &[b.addr]),
        endpoints("other", &[a.addr]),
    ]);
    plumb_tests::wait_until("reconnected and updated", Duration::from_secs(20), || async {
        matches!(plumb_tests::client::read_all(front, Duration::from_secs(5)).await, Ok(v) if v == b"b")
    })
    .await;
    // Only the changed endpoints travelled again: not the 2 clusters, the listener or the
    // unchanged endpoints.
    assert_eq!(cp.delta_resources_sent(), 1);
    let dump = get(agent.admin(), "/config_dump").await.json().to_string();
    assert!(!dump.contains("\"version_info\":\"\""), "{dump}");
}

/// The cache keeps each resource's delta version: an agent restarted from it reconnects
/// saying what it has, and the control plane re-sends only what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_the_cache_resumes_delta_without_re_downloading() {
    use plumb::server::ShutdownKind;
    let a = servers::start(Behavior::Named("a".into())).await;
    let b = servers::start(Behavior::Named("b".into())).await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    set_two_services(&cp, front, a.addr);
    let dir = plumb_tests::TempDir::new("delta-cache");
    let cache = dir.path.join("xds.cache");
    let options = || with_cache(&cache);
    let bootstrap = ads_bootstrap(cp.addr, "DELTA_GRPC");
    let agent = TestAgent::start_with(&bootstrap, options()).await;
    plumb_tests::wait_until("endpoints", Duration::from_secs(10), || async {
        agent.stat("cluster.other.membership_total") == 1
    })
    .await;
    agent.shutdown(ShutdownKind::Immediate);
    agent.join().await;
    let addr = cp.addr;
    let resources = cp.stop().await;
    let cp = ControlPlane::start_on(addr, resources).await;
    let agent = TestAgent::start_with(&bootstrap, options()).await;
    cp.set_endpoints(vec![
        endpoints("backend", &[b.addr]),
        endpoints("other", &[a.addr]),
    ]);
    plumb_tests::wait_until("updated", Duration::from_secs(20), || async {
        matches!(plumb_tests::client::read_all(front, Duration::from_secs(5)).await, Ok(v) if v == b"b")
    })
    .await;
    assert_eq!(cp.delta_resources_sent(), 1);
    drop(agent);
}

/// Like Envoy's init manager, the agent is not ready until the EDS clusters of its initial
/// configuration have endpoints: a server (or a takeover successor) that said ready earlier
/// would close the connections sent to a cluster that is still empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_initial_eds_clusters_have_endpoints() {
    for api in ["GRPC", "DELTA_GRPC"] {
        let echo = servers::start(Behavior::Echo).await;
        let cp = ControlPlane::start().await;
        let front = free_addr();
        // Clusters and listeners, but no endpoints yet.
        cp.set(
            vec![eds_cluster("backend")],
            vec![tcp_listener("front", front, "backend")],
            vec![],
        );
        let agent = TestAgent::start_unready(&ads_bootstrap(cp.addr, api), quick_stop(2));
        let admin = agent.admin();
        agent
            .wait_stat("listener_manager.lds.update_success", |v| v >= 1)
            .await;
        agent
            .wait_stat("cluster_manager.cds.update_success", |v| v >= 1)
            .await;
        assert_eq!(
            get(admin, "/ready").await.status,
            503,
            "{api}: ready without endpoints"
        );
        cp.set_endpoints(vec![endpoints("backend", &[echo.addr])]);
        plumb_tests::wait_until(
            &format!("{api}: ready"),
            Duration::from_secs(10),
            || async { get(admin, "/ready").await.status == 200 },
        )
        .await;
        assert_eq!(roundtrip(front, b"warm").await.unwrap(), b"warm");
    }
}

/// Options for an in-process agent that tests start without waiting for `/ready`.
fn quick_stop(concurrency: usize) -> plumb::server::Options {
    plumb::server::Options {
        concurrency,
        drain_time: Duration::from_secs(1),
        ..plumb::server::Options::default()
    }
}

/// A control plane that answers once and then drops every stream is retried with a growing
/// delay (0.5 s doubling, jittered), not hammered about twice a second: the backoff resets only
/// after a stream stayed up 30 s. Over 6 s that allows at most 5 streams (the delays sum to at
/// least 0.25 + 0.5 + 1 + 2 + 4 s); resetting after each response would open 8 or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_that_drops_streams_after_one_response_is_backed_off() {
    let echo = servers::start(Behavior::Echo).await;
    let cp = ControlPlane::start().await;
    set_one_service(&cp, free_addr(), echo.addr);
    cp.end_streams_after_first_response();
    let _agent = TestAgent::start_unready(&ads_bootstrap(cp.addr, "GRPC"), quick_stop(1));
    let streams = || cp.requests().iter().filter(|r| r.has_node).count();
    plumb_tests::wait_until("the first stream", Duration::from_secs(10), || async {
        streams() >= 1
    })
    .await;
    // Observing a rate needs a window of time; no state to wait on instead.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let n = streams();
    assert!(
        n <= 5,
        "{n} streams in 6 s: the backoff was reset after each one-response stream"
    );
    assert!(n >= 2, "the client did reconnect ({n})");
}
