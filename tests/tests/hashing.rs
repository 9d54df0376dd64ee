//! Hashing load balancers (issue 13, item 1) end to end: RING_HASH and MAGLEV clusters with a
//! route's `hash_policy` send each user's requests to one host, and different users to
//! different hosts.

use plumb_tests::agent::{any_host, bootstrap, http_listener, static_cluster, TestAgent};
use plumb_tests::http_client::{request, H1};
use plumb_tests::http_upstream;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// Three rounds of requests from 30 users (`x-user`) on one connection: the hosts that
/// answered each user.
async fn hosts_by_user(agent: &TestAgent) -> BTreeMap<String, BTreeSet<String>> {
    let mut c = H1::connect(agent.listener("in")).await;
    let mut by_user: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for round in 0..3 {
        for u in 0..30 {
            let user = format!("user-{u}");
            let path = format!("/{round}");
            let r = c
                .send(request("GET", "x", &path, &[("x-user", &user)], b""))
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            by_user
                .entry(user)
                .or_default()
                .insert(r.json()["server"].as_str().unwrap().to_string());
        }
    }
    by_user
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_and_maglev_keep_a_user_on_one_host() {
    let ups = [
        http_upstream::start("a").await,
        http_upstream::start("b").await,
        http_upstream::start("c").await,
    ];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    for (policy, extra) in [
        (
            "RING_HASH",
            json!({"ring_hash_lb_config": {"minimum_ring_size": 2048}}),
        ),
        ("MAGLEV", json!({"maglev_lb_config": {"table_size": 65537}})),
    ] {
        let mut cluster = static_cluster("up", &addrs);
        cluster["lb_policy"] = json!(policy);
        for (k, v) in extra.as_object().unwrap() {
            cluster[k] = v.clone();
        }
        let agent = TestAgent::start(&bootstrap(
            vec![http_listener(
                "in",
                any_host(json!([{"match": {"prefix": "/"}, "route": {"cluster": "up",
                    "hash_policy": [{"header": {"header_name": "x-user"}}]}}])),
            )],
            vec![cluster],
        ))
        .await;
        let by_user = hosts_by_user(&agent).await;
        assert!(
            by_user.values().all(|s| s.len() == 1),
            "{policy}: a user went to more than one host: {by_user:?}"
        );
        let used: BTreeSet<_> = by_user.values().flatten().collect();
        assert_eq!(
            used.len(),
            3,
            "{policy}: 30 users over 3 hosts: {by_user:?}"
        );
        // /config_dump shows the policy and its settings.
        let dump = plumb_tests::client::get(agent.admin(), "/config_dump")
            .await
            .body;
        assert!(
            dump.contains(&format!("\"lb_policy\": \"{policy}\"")),
            "{dump}"
        );
        let settings = if policy == "RING_HASH" {
            "\"minimum_ring_size\": 2048"
        } else {
            "\"table_size\": 65537"
        };
        assert!(dump.contains(settings), "{dump}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_proxy_hashing_the_source_ip_keeps_a_client_on_one_host() {
    use plumb_tests::agent::{tcp_listener, tcp_proxy_of};
    use plumb_tests::servers::{self, Behavior};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echoes = [
        servers::start(Behavior::Echo).await,
        servers::start(Behavior::Echo).await,
        servers::start(Behavior::Echo).await,
    ];
    let addrs: Vec<_> = echoes.iter().map(|e| e.addr).collect();
    let mut cluster = static_cluster("echo", &addrs);
    cluster["lb_policy"] = json!("MAGLEV");
    let mut l = tcp_listener("in", "echo");
    tcp_proxy_of(&mut l)["hash_policy"] = json!([{"source_ip": {}}]);
    let agent = TestAgent::start(&bootstrap(vec![l], vec![cluster])).await;
    let addr = agent.listener("in");
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.unwrap();
    }
    let mut counts: Vec<usize> = echoes.iter().map(|e| e.accepted()).collect();
    counts.sort();
    assert_eq!(counts, vec![0, 0, 10], "one client, one host");
}

/// A cookie hash policy with a `ttl`: a client without the cookie gets one (Set-Cookie, as
/// Envoy generates it) and, sending it back, stays on one host; each new client (a new
/// connection, a new address) gets its own cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_cookie_keeps_a_client_on_one_host() {
    let ups = [
        http_upstream::start("a").await,
        http_upstream::start("b").await,
        http_upstream::start("c").await,
    ];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let mut cluster = static_cluster("up", &addrs);
    cluster["lb_policy"] = json!("RING_HASH");
    let agent = TestAgent::start(&bootstrap(
        vec![http_listener(
            "in",
            any_host(json!([{"match": {"prefix": "/"}, "route": {"cluster": "up",
                "hash_policy": [{"cookie": {"name": "route", "ttl": "60s", "path": "/"}}]}}])),
        )],
        vec![cluster],
    ))
    .await;
    let mut cookies = BTreeSet::new();
    let mut servers = BTreeSet::new();
    for _ in 0..12 {
        let mut c = H1::connect(agent.listener("in")).await;
        let first = c.send(request("GET", "x", "/", &[], b"")).await.unwrap();
        let set = first
            .header("set-cookie")
            .expect("a generated cookie")
            .to_string();
        assert!(set.starts_with("route=\""), "{set}");
        assert!(set.ends_with("; Max-Age=60; Path=/; HttpOnly"), "{set}");
        let pair = set.split(';').next().unwrap().to_string();
        let server = first.json()["server"].as_str().unwrap().to_string();
        for _ in 0..5 {
            let r = c
                .send(request("GET", "x", "/", &[("cookie", &pair)], b""))
                .await
                .unwrap();
            assert!(r.header("set-cookie").is_none(), "sent back: not set again");
            assert_eq!(r.json()["server"], server.as_str());
        }
        cookies.insert(pair);
        servers.insert(server);
    }
    assert_eq!(cookies.len(), 12, "one cookie per client address");
    assert!(servers.len() >= 2, "12 clients over 3 hosts: {servers:?}");
}

/// `envoy.filters.http.set_filter_state` copies a header into the request's filter state and
/// a route's `hash_policy.filter_state` hashes it: each user stays on one host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_state_value_keeps_a_user_on_one_host() {
    let ups = [
        http_upstream::start("a").await,
        http_upstream::start("b").await,
        http_upstream::start("c").await,
    ];
    let addrs: Vec<_> = ups.iter().map(|u| u.addr).collect();
    let mut cluster = static_cluster("up", &addrs);
    cluster["lb_policy"] = json!("MAGLEV");
    let mut listener = http_listener(
        "in",
        any_host(json!([{"match": {"prefix": "/"}, "route": {"cluster": "up",
            "hash_policy": [{"filter_state": {"key": "plumb.user"}}]}}])),
    );
    let filters = &mut listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
    let router = filters[0].clone();
    *filters = json!([{"name": "envoy.filters.http.set_filter_state", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
        "on_request_headers": [{"object_key": "plumb.user",
            "format_string": {"text_format_source": {"inline_string": "%REQ(x-user)%"}},
            "skip_if_empty": true}]}}, router]);
    let agent = TestAgent::start(&bootstrap(vec![listener], vec![cluster])).await;
    let by_user = hosts_by_user(&agent).await;
    assert!(by_user.values().all(|s| s.len() == 1), "{by_user:?}");
    let used: BTreeSet<_> = by_user.values().flatten().collect();
    assert_eq!(used.len(), 3, "30 users over 3 hosts: {by_user:?}");
}
