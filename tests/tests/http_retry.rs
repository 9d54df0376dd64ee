//! Retries and timeouts per route (issue 12, item 7), against a flaky real upstream: exact
//! attempt counts in headers and stats, body replay, per-try and route timeouts, the
//! x-envoy-* request headers, and retries that avoid the hosts already tried.

use plumb_tests::agent::{bootstrap, http_listener, static_cluster, TestAgent};
use plumb_tests::http_client::{request, H1};
use plumb_tests::http_upstream;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn vhost(routes: Value) -> Value {
    json!([{"name": "any", "domains": ["*"], "include_attempt_count_in_response": true, "routes": routes}])
}

async fn agent(routes: Value, clusters: Vec<Value>) -> (TestAgent, SocketAddr) {
    let a = TestAgent::start(&bootstrap(
        vec![http_listener("in", vhost(routes))],
        clusters,
    ))
    .await;
    let addr = a.listener("in");
    (a, addr)
}

async fn send(
    c: &mut H1,
    key: &str,
    times: &str,
    status: &str,
    body: &[u8],
) -> plumb_tests::http_client::Reply {
    let req = request(
        "POST",
        "x",
        "/",
        &[
            ("x-fail-key", key),
            ("x-fail-times", times),
            ("x-fail-status", status),
        ],
        body,
    );
    c.send(req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_route_policy_with_exact_attempt_counts() {
    let up = http_upstream::start("up").await;
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "up", "retry_policy": {
        "retry_on": "5xx", "num_retries": 2, "retry_back_off": {"base_interval": "0.001s"}}}}]);
    let (agent, addr) = agent(routes, vec![static_cluster("up", &[up.addr])]).await;
    let mut c = H1::connect(addr).await;

    // Two failures, then success on the third attempt.
    let r = send(&mut c, "a", "2", "503", b"").await;
    assert_eq!(
        (r.status, r.header("x-envoy-attempt-count")),
        (200, Some("3"))
    );
    assert_eq!(agent.stat("cluster.up.upstream_rq_retry"), 2);
    assert_eq!(agent.stat("cluster.up.upstream_rq_retry_success"), 1);
    assert_eq!(agent.stat("cluster.up.upstream_rq_503"), 2);
    assert_eq!(agent.stat("cluster.up.upstream_rq_200"), 1);
    assert_eq!(agent.stat("cluster.up.upstream_rq_total"), 3);
    // More failures than retries: the last answer goes back, counted as exhausted.
    let r = send(&mut c, "b", "5", "503", b"").await;
    assert_eq!(
        (r.status, r.header("x-envoy-attempt-count")),
        (503, Some("3"))
    );
    assert_eq!(agent.stat("cluster.up.upstream_rq_retry_limit_exceeded"), 1);
    // The body is replayed to the retry.
    let r = send(&mut c, "c", "1", "503", b"payload").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 7);
    // A connection closed without an answer is retried too (5xx covers resets).
    let r = send(&mut c, "d", "1", "reset", b"again").await;
    assert_eq!(
        (r.status, r.header("x-envoy-attempt-count")),
        (200, Some("2"))
    );
    assert_eq!(r.json()["body_len"], 5);
    // Not retriable under 5xx: a 404 is answered at once.
    let r = send(&mut c, "e", "1", "404", b"").await;
    assert_eq!(
        (r.status, r.header("x-envoy-attempt-count")),
        (404, Some("1"))
    );
    assert!(r.header("x-envoy-upstream-service-time").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_and_route_timeouts_bound_each_attempt_and_the_whole() {
    let up = http_upstream::start("up").await;
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "up", "timeout": "2s", "retry_policy": {
        "retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.2s",
        "retry_back_off": {"base_interval": "0.001s"}}}}]);
    let (agent, addr) = agent(routes, vec![static_cluster("up", &[up.addr])]).await;
    let mut c = H1::connect(addr).await;
    let started = Instant::now();
    let r = c
        .send(request("GET", "x", "/", &[("x-delay-ms", "1500")], b""))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.text(), "upstream request timeout");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1400),
        "{took:?}"
    );
    assert_eq!(agent.stat("cluster.up.upstream_rq_per_try_timeout"), 2);
    assert_eq!(agent.stat("cluster.up.upstream_rq_retry"), 1);
    // A quick answer is within both.
    let mut c = H1::connect(addr).await;
    let r = c
        .send(request("GET", "x", "/", &[("x-delay-ms", "10")], b""))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_envoy_request_headers_from_internal_clients_set_retries_and_timeouts() {
    let up = http_upstream::start("up").await;
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]);
    let (agent, addr) = agent(routes, vec![static_cluster("up", &[up.addr])]).await;
    let mut c = H1::connect(addr).await;
    let r = c
        .send(request(
            "GET",
            "x",
            "/",
            &[
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-max-retries", "1"),
                ("x-fail-key", "k"),
                ("x-fail-times", "1"),
            ],
            b"",
        ))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.header("x-envoy-attempt-count")),
        (200, Some("2"))
    );
    let j = r.json();
    assert!(
        j["headers"].get("x-envoy-retry-on").is_none()
            && j["headers"].get("x-envoy-max-retries").is_none(),
        "{j}"
    );
    assert_eq!(agent.stat("cluster.up.upstream_rq_retry"), 1);
    let r = c
        .send(request(
            "GET",
            "x",
            "/",
            &[
                ("x-envoy-upstream-rq-timeout-ms", "100"),
                ("x-delay-ms", "2000"),
            ],
            b"",
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_avoids_the_host_that_failed() {
    // One host closes every connection at once; the other answers.
    let bad = plumb_tests::servers::start(plumb_tests::servers::Behavior::CloseImmediately).await;
    let good = http_upstream::start("good").await;
    let mut cluster = static_cluster("pair", &[bad.addr, good.addr]);
    cluster["lb_policy"] = json!("RANDOM");
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "pair", "retry_policy": {
        "retry_on": "5xx", "num_retries": 1, "retry_back_off": {"base_interval": "0.001s"},
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
        "host_selection_retry_max_attempts": 20}}}]);
    let (agent, addr) = agent(routes, vec![cluster]).await;
    let mut c = H1::connect(addr).await;
    // With one retry, a retry that went back to the bad host would fail the request: each
    // request picks it first half of the time, so 40 successes show the retry avoided it.
    for _ in 0..40 {
        let r = c.send(request("GET", "x", "/", &[], b"")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let retries = agent.stat("cluster.pair.upstream_rq_retry");
    assert!(
        retries >= 5 && retries as usize == bad.accepted(),
        "{retries} retries, {} bad",
        bad.accepted()
    );
}
