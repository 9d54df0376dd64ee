//! LEAST_REQUEST (issue 13, item 1): requests in flight steer picks away from a slow host.

use plumb_tests::agent::{any_host, bootstrap, http_listener, static_cluster, TestAgent};
use plumb_tests::http_client::{request, H1};
use plumb_tests::http_upstream;
use plumb_tests::servers;
use serde_json::json;
use std::sync::atomic::Ordering;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_sends_less_to_a_slow_host() {
    let fast = http_upstream::start("fast").await;
    let (slow, slow_count) =
        servers::raw_http("slow", 200, std::time::Duration::from_millis(100)).await;
    let mut cluster = static_cluster("up", &[fast.addr, slow]);
    cluster["lb_policy"] = json!("LEAST_REQUEST");
    cluster["least_request_lb_config"] = json!({"choice_count": 2});
    let agent = TestAgent::start(&bootstrap(
        vec![http_listener(
            "in",
            any_host(json!([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}])),
        )],
        vec![cluster],
    ))
    .await;
    let addr = agent.listener("in");
    // 8 clients, 10 requests each, all in flight together.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        set.spawn(async move {
            let mut c = H1::connect(addr).await;
            for _ in 0..10 {
                let r = c.send(request("GET", "x", "/", &[], b"")).await.unwrap();
                assert_eq!(r.status, 200);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let (f, s) = (fast.requests(), slow_count.load(Ordering::SeqCst));
    assert_eq!(f + s, 80);
    // Round robin would give the slow host half; it holds requests 100 ms, so it is busy
    // whenever it is compared with the fast one.
    eprintln!("slow host got {s} of 80 (fast {f})");
    assert!(s * 10 < 80 * 4, "slow host got {s} of 80 (fast {f})");
    // Nothing left in flight once the responses ended.
    let clusters = plumb_tests::client::get(agent.admin(), "/clusters")
        .await
        .body;
    assert!(
        clusters.contains(&format!("up::{slow}::rq_active::0")),
        "{clusters}"
    );
}
