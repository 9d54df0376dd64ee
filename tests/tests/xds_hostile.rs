//! A control plane that sends too much, or the same bad thing again and again: the agent
//! refuses it with a clear NACK, keeps serving what it has, and does not spend unbounded time,
//! memory or log lines on it.

use plumb_tests::agent::TestAgent;
use plumb_tests::client::roundtrip;
use plumb_tests::servers::{self, Behavior};
use plumb_tests::xds::{ads_bootstrap, eds_cluster, endpoints, tcp_listener, ControlPlane};
use std::time::Duration;

/// Issue 11, item 3: a response with more than 100,000 resources is NACKed whole, naming the
/// limit, and the configuration in force keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_too_many_resources_is_refused_whole() {
    let echo = servers::start(Behavior::Echo).await;
    let cp = ControlPlane::start().await;
    let front = servers::closed_port();
    cp.set(
        vec![eds_cluster("backend")],
        vec![tcp_listener("front", front, "backend")],
        vec![endpoints("backend", &[echo.addr])],
    );
    let agent = TestAgent::start(&ads_bootstrap(cp.addr, "GRPC")).await;
    agent
        .wait_stat("cluster.backend.membership_total", |v| v == 1)
        .await;
    let clusters: Vec<_> = (0..100_001)
        .map(|i| eds_cluster(&format!("c{i}")))
        .collect();
    cp.set(
        clusters,
        vec![tcp_listener("front", front, "backend")],
        vec![endpoints("backend", &[echo.addr])],
    );
    plumb_tests::wait_until("the NACK", Duration::from_secs(30), || async {
        cp.nacks().iter().any(|r| {
            r.error.as_deref().is_some_and(|e| {
                e.contains("carries 100001 resources, more than the limit of 100000")
            })
        })
    })
    .await;
    assert!(agent.stat("cluster_manager.cds.update_rejected") >= 1);
    assert_eq!(agent.stat("cluster_manager.active_clusters"), 2);
    assert_eq!(roundtrip(front, b"still").await.unwrap(), b"still");
}

/// Issue 11, item 4: `control_plane.connected_state` is 1 as soon as the stream is open, as
/// Envoy reports it, even when the server sends nothing — not even response headers, as
/// grpcio does until its first message — in both protocols. It drops to 0 when the
/// connection goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_state_is_one_while_a_silent_server_holds_the_stream() {
    for api in ["GRPC", "DELTA_GRPC"] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (opened_tx, mut opened) = tokio::sync::mpsc::channel::<String>(4);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            let mut held = Vec::new();
            while let Some(Ok((req, respond))) = conn.accept().await {
                let _ = opened_tx.send(req.uri().path().to_string()).await;
                // Neither headers nor messages: the stream stays open, silent.
                held.push((req, respond));
            }
        });
        let agent = TestAgent::start_unready(&ads_bootstrap(addr, api), Default::default());
        let path = tokio::time::timeout(Duration::from_secs(10), opened.recv())
            .await
            .expect("the agent opens the ADS stream")
            .unwrap();
        assert!(path.ends_with("AggregatedResources"), "{path}");
        agent
            .wait_stat("control_plane.connected_state", |v| v == 1)
            .await;
        server.abort();
        let _ = server.await;
        agent
            .wait_stat("control_plane.connected_state", |v| v == 0)
            .await;
    }
}

/// A cluster Plumb refuses (extension LB policies are not supported).
fn bad_cluster(name: &str) -> envoy_types::pb::envoy::config::cluster::v3::Cluster {
    let mut c = eds_cluster(name);
    c.lb_policy =
        envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::LoadBalancingPolicyConfig
            as i32;
    c
}

fn error_states(dump: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for cfg in dump["configs"].as_array().unwrap() {
        for c in cfg["dynamic_active_clusters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(e) = c.get("error_state") {
                let name = c
                    .get("name")
                    .or_else(|| c["cluster"].get("name"))
                    .and_then(|n| n.as_str())
                    .unwrap_or("?");
                out.push((
                    name.to_string(),
                    e["version_info"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Issue 11, item 4: a control plane re-sending a resource already rejected gets the same
/// NACK without the resource being translated again (`update_rejected_repeat`), and the
/// error state follows the latest attempt; rejections of resources the control plane stopped
/// sending are forgotten, so 20 rounds of new bad names leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_resources_are_remembered_then_forgotten() {
    use plumb_tests::client::get;
    let echo = servers::start(Behavior::Echo).await;
    let cp = ControlPlane::start().await;
    let front = servers::closed_port();
    let good = || {
        (
            vec![eds_cluster("backend")],
            vec![tcp_listener("front", front, "backend")],
            vec![endpoints("backend", &[echo.addr])],
        )
    };
    let (c, l, e) = good();
    cp.set(c, l, e);
    let agent = TestAgent::start(&ads_bootstrap(cp.addr, "GRPC")).await;
    agent
        .wait_stat("cluster.backend.membership_total", |v| v == 1)
        .await;
    let with_bad = |names: &[String]| {
        let (mut c, l, e) = good();
        c.extend(names.iter().map(|n| bad_cluster(n)));
        cp.set(c, l, e)
    };
    let bad = vec!["bad".to_string()];
    // A control plane stuck in a NACK loop: each NACK answered with the same bad cluster.
    cp.resend_on_nack(true);
    let v = with_bad(&bad);
    agent
        .wait_stat("cluster_manager.cds.update_rejected_repeat", |v| v >= 50)
        .await;
    cp.resend_on_nack(false);
    // The control plane records each NACK as it reads it: it may be a few behind the agent.
    plumb_tests::wait_until(
        "the control plane saw the NACKs",
        Duration::from_secs(10),
        || async { cp.nacks().len() > 50 },
    )
    .await;
    let nacks = cp.nacks();
    assert!(nacks.len() > 50);
    assert!(nacks[0]
        .error
        .as_deref()
        .unwrap()
        .contains("LOAD_BALANCING_POLICY_CONFIG"));
    assert!(
        nacks.iter().all(|n| n.error == nacks[0].error),
        "the same message each time"
    );
    let admin = agent.admin();
    let dump = get(admin, "/config_dump").await.json();
    assert_eq!(
        error_states(&dump),
        vec![("bad".to_string(), v.to_string())]
    );

    // Bad names that come and go leave no rejection behind.
    for round in 0..20 {
        let names: Vec<String> = (0..50).map(|i| format!("bad-{round}-{i}")).collect();
        let v = with_bad(&names).to_string();
        let mut want: Vec<(String, String)> = names.into_iter().map(|n| (n, v.clone())).collect();
        want.sort();
        let want = &want;
        plumb_tests::wait_until(
            "only this round's rejections",
            Duration::from_secs(10),
            || async move { error_states(&get(admin, "/config_dump").await.json()) == *want },
        )
        .await;
    }
    let (c, l, e) = good();
    cp.set(c, l, e);
    agent
        .wait_stat("cluster_manager.cds.update_success", |v| v >= 2)
        .await;
    let dump = get(agent.admin(), "/config_dump").await.json();
    assert_eq!(error_states(&dump), vec![], "nothing in error any more");
    assert_eq!(roundtrip(front, b"ok").await.unwrap(), b"ok");
}

/// Issue 11, item 4: with `rate_limit_settings`, a NACK loop meets Envoy's token bucket: the
/// requests beyond the bucket wait (`control_plane.rate_limit_enforced`), the loop goes on at
/// the fill rate, and traffic is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_settings_bound_a_nack_loop() {
    let echo = servers::start(Behavior::Echo).await;
    let cp = ControlPlane::start().await;
    let front = servers::closed_port();
    cp.set(
        vec![eds_cluster("backend")],
        vec![tcp_listener("front", front, "backend")],
        vec![endpoints("backend", &[echo.addr])],
    );
    let mut bootstrap: serde_json::Value =
        serde_json::from_str(&ads_bootstrap(cp.addr, "GRPC")).unwrap();
    bootstrap["dynamic_resources"]["ads_config"]["rate_limit_settings"] =
        serde_json::json!({"max_tokens": 5, "fill_rate": 50});
    let agent = TestAgent::start(&bootstrap.to_string()).await;
    agent
        .wait_stat("cluster.backend.membership_total", |v| v == 1)
        .await;
    cp.resend_on_nack(true);
    cp.set(
        vec![eds_cluster("backend"), bad_cluster("bad")],
        vec![tcp_listener("front", front, "backend")],
        vec![endpoints("backend", &[echo.addr])],
    );
    agent
        .wait_stat("control_plane.rate_limit_enforced", |v| v >= 20)
        .await;
    let repeats = agent.stat("cluster_manager.cds.update_rejected_repeat");
    agent
        .wait_stat("cluster_manager.cds.update_rejected_repeat", |v| {
            v > repeats + 10
        })
        .await;
    cp.resend_on_nack(false);
    assert!(agent.stat("control_plane.pending_requests") <= 1);
    assert_eq!(roundtrip(front, b"fine").await.unwrap(), b"fine");
}
