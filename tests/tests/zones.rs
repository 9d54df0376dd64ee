//! Priorities, panic and zones through real sockets (issue 13, item 2): zone-aware routing
//! keeps the expected local share (all of it when the local zone has the capacity, upstream
//! share / local share when not); below the panic threshold every host gets traffic, with
//! the threshold at 0 only the usable ones do.

use plumb_tests::agent::{any_host, bootstrap, http_listener, TestAgent};
use plumb_tests::http_client::{request, H1};
use plumb_tests::http_upstream::{self, HttpUpstream as Upstream};
use serde_json::{json, Value};
use std::net::SocketAddr;

/// A STATIC cluster with one locality per `(zone, hosts)`; `health` marks endpoints.
fn zoned_cluster(name: &str, zones: &[(&str, &[SocketAddr])], extra: Value) -> Value {
    let endpoints: Vec<Value> = zones
        .iter()
        .map(|(zone, addrs)| {
            let lb: Vec<Value> = addrs
                .iter()
                .map(|a| {
                    json!({"endpoint": {"address": {"socket_address": {
                        "address": a.ip().to_string(), "port_value": a.port()}}}})
                })
                .collect();
            json!({"locality": {"region": "r", "zone": zone}, "lb_endpoints": lb})
        })
        .collect();
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": endpoints},
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(extra.clone());
    }
    c
}

fn zoned_bootstrap(clusters: Vec<Value>) -> String {
    json!({
        "node": {"id": "n", "cluster": "test", "locality": {"region": "r", "zone": "a"}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "cluster_manager": {"local_cluster_name": "local"},
        "static_resources": {
            "listeners": [http_listener(
                "in",
                any_host(json!([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}])),
            )],
            "clusters": clusters,
        },
    })
    .to_string()
}

async fn upstreams(n: usize) -> Vec<Upstream> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(http_upstream::start("u").await);
    }
    v
}

fn addrs(u: &[Upstream]) -> Vec<SocketAddr> {
    u.iter().map(|u| u.addr).collect()
}

fn served(u: &[Upstream]) -> usize {
    u.iter().map(|u| u.requests()).sum()
}

async fn send(agent: &TestAgent, n: usize) {
    let mut c = H1::connect(agent.listener("in")).await;
    for _ in 0..n {
        let r = c.send(request("GET", "x", "/", &[], b"")).await.unwrap();
        assert_eq!(r.status, 200);
    }
}

/// The local cluster's hosts only count (nothing is sent to them): addresses in the
/// documentation range do.
fn local_hosts(zone_a: usize, zone_b: usize) -> Value {
    let ip = |i: usize| SocketAddr::from(([192, 0, 2, (i + 1) as u8], 80));
    let a: Vec<SocketAddr> = (0..zone_a).map(ip).collect();
    let b: Vec<SocketAddr> = (zone_a..zone_a + zone_b).map(ip).collect();
    zoned_cluster("local", &[("a", &a), ("b", &b)], json!({}))
}

const ZONE_AWARE: &str =
    r#"{"common_lb_config": {"zone_aware_lb_config": {"min_cluster_size": 4}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_aware_routing_stays_in_the_zone_when_it_has_the_capacity() {
    // Upstream: 3 of 6 hosts in zone a (50 %); the local cluster: 2 of 4 in a (50 %).
    let (a, b) = (upstreams(3).await, upstreams(3).await);
    let up = zoned_cluster(
        "up",
        &[("a", &addrs(&a)), ("b", &addrs(&b))],
        serde_json::from_str(ZONE_AWARE).unwrap(),
    );
    let agent = TestAgent::start(&zoned_bootstrap(vec![up, local_hosts(2, 2)])).await;
    send(&agent, 60).await;
    assert_eq!(served(&a), 60);
    assert_eq!(served(&b), 0);
    assert_eq!(agent.stat("cluster.up.lb_zone_routing_all_directly"), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_aware_routing_keeps_the_local_share_and_spills_the_rest() {
    // Upstream: 2 of 6 hosts in zone a (33 %); local cluster: 3 of 4 in a (75 %). Zone a
    // keeps 33/75 = 44 % of the requests; the rest cross to b.
    let (a, b) = (upstreams(2).await, upstreams(4).await);
    let up = zoned_cluster(
        "up",
        &[("a", &addrs(&a)), ("b", &addrs(&b))],
        serde_json::from_str(ZONE_AWARE).unwrap(),
    );
    let agent = TestAgent::start(&zoned_bootstrap(vec![up, local_hosts(3, 1)])).await;
    let n = 600;
    send(&agent, n).await;
    let local = served(&a) as f64 / n as f64;
    assert!((0.36..0.53).contains(&local), "local share {local}");
    let sampled = agent.stat("cluster.up.lb_zone_routing_sampled");
    let cross = agent.stat("cluster.up.lb_zone_routing_cross_zone");
    assert_eq!(sampled + cross, n as i64);
    assert_eq!(sampled as usize, served(&a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_panic_threshold_every_host_gets_traffic() {
    let hosts = upstreams(3).await;
    // Two of three marked unhealthy by their endpoint status: 33 % usable.
    let cluster = |threshold: f64| {
        let lb: Vec<Value> = hosts
            .iter()
            .enumerate()
            .map(|(i, u)| {
                json!({"endpoint": {"address": {"socket_address": {
                    "address": u.addr.ip().to_string(), "port_value": u.addr.port()}}},
                    "health_status": if i == 0 { "HEALTHY" } else { "UNHEALTHY" }})
            })
            .collect();
        json!({"name": "up", "type": "STATIC", "connect_timeout": "1s",
               "common_lb_config": {"healthy_panic_threshold": {"value": threshold}},
               "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": lb}]}})
    };
    let listener = || {
        vec![http_listener(
            "in",
            any_host(json!([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}])),
        )]
    };
    let agent = TestAgent::start(&bootstrap(listener(), vec![cluster(50.0)])).await;
    send(&agent, 30).await;
    // Round robin over all three (per worker: each gets some).
    assert!(
        hosts.iter().all(|u| u.requests() >= 5),
        "{:?}",
        hosts.iter().map(|u| u.requests()).collect::<Vec<_>>()
    );
    assert_eq!(agent.stat("cluster.up.lb_healthy_panic"), 30);
    drop(agent);
    let before: Vec<usize> = hosts.iter().map(|u| u.requests()).collect();
    let agent = TestAgent::start(&bootstrap(listener(), vec![cluster(0.0)])).await;
    send(&agent, 30).await;
    assert_eq!(hosts[0].requests() - before[0], 30);
    assert_eq!(hosts[1].requests(), before[1]);
    assert_eq!(agent.stat("cluster.up.lb_healthy_panic"), 0);
}

/// `/clusters` shows each host's canary flag from its endpoint metadata (Envoy's
/// `filter_metadata."envoy.lb".canary`) and its locality.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_shows_canary_and_locality() {
    let (a, b) = (
        http_upstream::start("a").await,
        http_upstream::start("b").await,
    );
    let ep = |u: &Upstream, canary: bool| {
        json!({"endpoint": {"address": {"socket_address": {
            "address": u.addr.ip().to_string(), "port_value": u.addr.port()}}},
            "metadata": {"filter_metadata": {"envoy.lb": {"canary": canary}}}})
    };
    let cluster = json!({"name": "up", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "up", "endpoints": [{
            "locality": {"region": "r", "zone": "z1", "sub_zone": "s"},
            "lb_endpoints": [ep(&a, true), ep(&b, false)]}]}});
    let agent = TestAgent::start(&bootstrap(vec![], vec![cluster])).await;
    let text = plumb_tests::client::get(agent.admin(), "/clusters")
        .await
        .body;
    assert!(
        text.contains(&format!("up::{}::canary::true\n", a.addr)),
        "{text}"
    );
    assert!(
        text.contains(&format!("up::{}::canary::false\n", b.addr)),
        "{text}"
    );
    assert!(
        text.contains(&format!("up::{}::zone::z1\n", a.addr)),
        "{text}"
    );
    let json = plumb_tests::client::get(agent.admin(), "/clusters?format=json")
        .await
        .json();
    let hosts = &json["cluster_statuses"][0]["host_statuses"];
    assert_eq!(hosts[0]["canary"], true, "{json}");
}
