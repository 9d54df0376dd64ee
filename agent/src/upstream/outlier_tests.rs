use super::*;
use crate::config::{self, Endpoint, HealthStatus, LocalityEndpoints};
use crate::stats::Store;
use crate::upstream::{ClusterManager, LbContext};

/// A static cluster `c` of `n` hosts (ports 10, 11, …) with this outlier_detection.
fn cluster(n: u16, outlier: &str) -> (ClusterManager, Arc<Cluster>, Store) {
    cluster_with(n, outlier, "")
}

/// The same, with more top-level bootstrap fields (`"key": value,`).
fn cluster_with(n: u16, outlier: &str, top: &str) -> (ClusterManager, Arc<Cluster>, Store) {
    let snap = config::parse_bootstrap(
        &format!(
            r#"{{{top} "static_resources": {{"clusters": [{{"name": "c",
                "load_assignment": {{"cluster_name": "c", "endpoints": [{{"lb_endpoints": [
                {{"endpoint": {{"address": {{"socket_address": {{"address": "127.0.0.1", "port_value": 1}}}}}}}}]}}]}},
                "outlier_detection": {outlier}}}]}}}}"#
        ),
        "test",
    )
    .unwrap();
    let store = Store::new();
    let cm = ClusterManager::new(&snap, &store);
    cm.set_endpoints(
        "c",
        vec![LocalityEndpoints {
            endpoints: (0..n)
                .map(|i| Endpoint {
                    host: config::Host::Ip("127.0.0.1".parse().unwrap()),
                    port: 10 + i,
                    hostname: None,
                    weight: 1,
                    health_status: HealthStatus::Healthy,
                    canary: false,
                    socket_match: Vec::new(),
                })
                .collect(),
            ..Default::default()
        }],
    );
    let c = cm.get("c").unwrap();
    (cm, c, store)
}

fn host(c: &Cluster, port: u16) -> Arc<Host> {
    c.hosts()
        .all()
        .iter()
        .find(|h| h.address.port() == port)
        .cloned()
        .unwrap()
}

fn ejected(h: &Host) -> bool {
    h.health_flags() & health_flag::FAILED_OUTLIER_CHECK != 0
}

fn stat(store: &Store, name: &str) -> i64 {
    store
        .value(&format!("cluster.c.outlier_detection.{name}"))
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn consecutive_5xx_ejects_then_the_host_comes_back_after_base_times_n() {
    let (_cm, c, store) = cluster(
        4,
        r#"{"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "10s",
            "max_ejection_percent": 50}"#,
    );
    let bad = host(&c, 10);
    // A success in between starts the count again.
    c.report(&bad, Outcome::HttpStatus(500));
    c.report(&bad, Outcome::HttpStatus(500));
    c.report(&bad, Outcome::HttpStatus(200));
    c.report(&bad, Outcome::HttpStatus(500));
    c.report(&bad, Outcome::HttpStatus(500));
    assert!(!ejected(&bad));
    c.report(&bad, Outcome::HttpStatus(500));
    assert!(ejected(&bad));
    assert_eq!(bad.health_flags_string(), "/failed_outlier_check");
    assert_eq!(stat(&store, "ejections_enforced_consecutive_5xx"), 1);
    assert_eq!(stat(&store, "ejections_detected_consecutive_5xx"), 1);
    assert_eq!(stat(&store, "ejections_active"), 1);
    // The balancer no longer picks it.
    for _ in 0..50 {
        assert_ne!(c.pick(&LbContext::default()).unwrap().address.port(), 10);
    }
    let d = c.outlier.as_ref().unwrap();
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(d.tick(&c), 0);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(d.tick(&c), 1);
    assert!(!ejected(&bad));
    assert_eq!(stat(&store, "ejections_active"), 0);
    // Ejected again at once: twice the base time now.
    for _ in 0..3 {
        c.report(&bad, Outcome::HttpStatus(503));
    }
    assert!(ejected(&bad));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(d.tick(&c), 0, "the second ejection lasts 20 s");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(d.tick(&c), 1);
    // Each interval in lowers the multiplier again.
    assert_eq!(bad.outlier.backoff.load(Ordering::Relaxed), 2);
    d.tick(&c);
    d.tick(&c);
    assert_eq!(bad.outlier.backoff.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_and_enforcing_are_respected() {
    let (_cm, c, store) = cluster(
        4,
        r#"{"consecutive_5xx": 2, "max_ejection_percent": 25,
            "consecutive_gateway_failure": 2}"#,
    );
    let (a, b) = (host(&c, 10), host(&c, 11));
    // Gateway failures are detected, but enforcing_consecutive_gateway_failure is 0 by
    // default; the 5xx detector (enforced at 100 %) ejects on the same count.
    c.report(&a, Outcome::HttpStatus(502));
    c.report(&a, Outcome::HttpStatus(502));
    assert!(ejected(&a));
    assert_eq!(
        stat(&store, "ejections_detected_consecutive_gateway_failure"),
        1
    );
    assert_eq!(
        stat(&store, "ejections_enforced_consecutive_gateway_failure"),
        0
    );
    assert_eq!(stat(&store, "ejections_enforced_consecutive_5xx"), 1);
    // 25 % of 4 hosts: a second ejection would be 50 %.
    c.report(&b, Outcome::HttpStatus(500));
    c.report(&b, Outcome::HttpStatus(500));
    assert!(!ejected(&b));
    assert_eq!(stat(&store, "ejections_overflow"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_detection_not_enforced_starts_the_count_again() {
    let (_cm, c, store) = cluster(
        4,
        r#"{"consecutive_5xx": 2, "enforcing_consecutive_5xx": 0}"#,
    );
    let a = host(&c, 10);
    for _ in 0..5 {
        c.report(&a, Outcome::HttpStatus(500));
    }
    // Detected at the 2nd and the 4th failure (Envoy resets the count each time).
    assert_eq!(stat(&store, "ejections_detected_consecutive_5xx"), 2);
    assert!(!ejected(&a));
}

#[tokio::test(start_paused = true)]
async fn one_host_may_always_be_ejected_and_local_origin_failures_count() {
    // 2 hosts at the default 10 %: the first ejection is still allowed. Without the
    // split, connect failures count as 503s.
    let (_cm, c, _store) = cluster(2, r#"{"consecutive_5xx": 2}"#);
    let a = host(&c, 10);
    c.report(&a, Outcome::ConnectFailure);
    c.report(&a, Outcome::ConnectSuccess);
    c.report(&a, Outcome::ConnectFailure);
    assert!(
        ejected(&a),
        "an HTTP connect success does not reset the count"
    );
    let b = host(&c, 11);
    c.report(&b, Outcome::ConnectFailure);
    c.report(&b, Outcome::ConnectSuccessFinal);
    c.report(&b, Outcome::ConnectFailure);
    assert_eq!(
        b.outlier.consecutive_5xx.load(Ordering::Relaxed),
        1,
        "a TCP proxy's connect is its final outcome: it starts the count again"
    );
}

#[tokio::test(start_paused = true)]
async fn split_mode_counts_local_origin_failures_apart() {
    let (_cm, c, store) = cluster(
        4,
        r#"{"split_external_local_origin_errors": true, "consecutive_local_origin_failure": 2,
            "consecutive_5xx": 2}"#,
    );
    let a = host(&c, 10);
    // Local-origin failures do not feed the 5xx detector...
    c.report(&a, Outcome::HttpStatus(500));
    c.report(&a, Outcome::Timeout);
    c.report(&a, Outcome::ConnectSuccess);
    c.report(&a, Outcome::Reset);
    assert!(!ejected(&a));
    // ...but their own.
    c.report(&a, Outcome::ConnectFailure);
    assert!(ejected(&a));
    assert_eq!(
        stat(
            &store,
            "ejections_enforced_consecutive_local_origin_failure"
        ),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn the_interval_task_ends_with_its_cluster() {
    let (cm, c, _store) = cluster(2, r#"{"interval": "1s"}"#);
    let drain = crate::drain::Drain::new();
    let task = tokio::spawn(run(
        Arc::downgrade(&c),
        Duration::from_secs(1),
        drain.watch(),
    ));
    tokio::time::advance(Duration::from_secs(3)).await;
    assert!(!task.is_finished());
    drop(c);
    let mut batch = cm.batch();
    assert!(batch.remove("c"));
    drop(batch);
    tokio::time::advance(Duration::from_secs(2)).await;
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends once the cluster is gone")
        .unwrap();
}

/// `n` outcomes for `h`, `failures` of them 500s (spread, so no consecutive detector
/// sees a long run).
fn requests(c: &Cluster, h: &Host, n: u32, failures: u32) {
    for i in 0..n {
        let code = if (i + 1) * failures / n > i * failures / n {
            500
        } else {
            200
        };
        c.report(h, Outcome::HttpStatus(code));
    }
}

fn failed(w: &HostOutlier) -> (u64, u64) {
    let v = w.window_external.load(Ordering::Relaxed);
    (v >> 32, v & 0xffff_ffff)
}

#[tokio::test(start_paused = true)]
async fn success_rate_ejects_the_one_host_far_below_the_others() {
    let (_cm, c, store) = cluster(
        10,
        r#"{"success_rate_request_volume": 20, "consecutive_5xx": 1000,
            "max_ejection_percent": 50}"#,
    );
    for port in 10..19 {
        requests(&c, &host(&c, port), 20, 0);
    }
    let bad = host(&c, 19);
    requests(&c, &bad, 20, 10);
    assert_eq!(failed(&bad.outlier), (20, 10));
    // A host under the request volume is not measured.
    let d = c.outlier.as_ref().unwrap();
    d.tick(&c);
    // Nine at 100 %, one at 50 %: mean 95, stdev 15, threshold 95 - 1.9 × 15 = 66.5.
    assert!(ejected(&bad));
    assert_eq!(stat(&store, "ejections_enforced_success_rate"), 1);
    assert_eq!(stat(&store, "ejections_detected_success_rate"), 1);
    let [(average, threshold), (local, _)] = d.cluster_rates();
    assert_eq!(average, Some(95.0));
    assert!((threshold.unwrap() - 66.5).abs() < 1e-9);
    assert_eq!(local, None, "no local-origin figures without the split");
    assert_eq!(bad.outlier.success_rate(), Some(50.0));
    assert_eq!(host(&c, 10).outlier.success_rate(), Some(100.0));
    assert_eq!(failed(&bad.outlier), (0, 0), "the window starts again");
    // The next interval without traffic measures nothing.
    d.tick(&c);
    assert_eq!(host(&c, 10).outlier.success_rate(), None);
    assert_eq!(d.cluster_rates()[0], (None, None));
}

#[tokio::test(start_paused = true)]
async fn success_rate_needs_enough_hosts_with_enough_requests() {
    let (_cm, c, store) = cluster(
        10,
        r#"{"success_rate_request_volume": 20, "consecutive_5xx": 1000}"#,
    );
    // Only four hosts reach the volume (the default minimum is five).
    for port in 10..13 {
        requests(&c, &host(&c, port), 20, 0);
    }
    for port in 13..19 {
        requests(&c, &host(&c, port), 19, 0);
    }
    requests(&c, &host(&c, 19), 20, 20);
    c.outlier.as_ref().unwrap().tick(&c);
    assert!(!ejected(&host(&c, 19)));
    assert_eq!(stat(&store, "ejections_detected_success_rate"), 0);
    assert_eq!(host(&c, 13).outlier.success_rate(), None);
    assert_eq!(host(&c, 19).outlier.success_rate(), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_ejects_hosts_over_the_threshold_when_enforced() {
    let cfg = r#"{"failure_percentage_request_volume": 10, "consecutive_5xx": 1000,
        "failure_percentage_threshold": 50, "max_ejection_percent": 100,
        "success_rate_minimum_hosts": 100, "enforcing_failure_percentage": ENF}"#;
    for (enforcing, want) in [(0, false), (100, true)] {
        let (_cm, c, store) = cluster(5, &cfg.replace("ENF", &enforcing.to_string()));
        for port in 10..13 {
            requests(&c, &host(&c, port), 10, 4);
        }
        requests(&c, &host(&c, 13), 10, 5);
        requests(&c, &host(&c, 14), 10, 10);
        c.outlier.as_ref().unwrap().tick(&c);
        // 40 % failed stays; 50 % and 100 % reach the threshold.
        assert!(!ejected(&host(&c, 10)));
        assert_eq!(ejected(&host(&c, 13)), want);
        assert_eq!(ejected(&host(&c, 14)), want);
        assert_eq!(stat(&store, "ejections_detected_failure_percentage"), 2);
        assert_eq!(
            stat(&store, "ejections_enforced_failure_percentage"),
            if want { 2 } else { 0 }
        );
    }
}

#[tokio::test(start_paused = true)]
async fn local_origin_rates_are_apart_with_the_split() {
    let (_cm, c, store) = cluster(
        5,
        r#"{"split_external_local_origin_errors": true, "consecutive_local_origin_failure": 1000,
            "success_rate_request_volume": 10, "enforcing_failure_percentage_local_origin": 100,
            "failure_percentage_request_volume": 10, "max_ejection_percent": 100}"#,
    );
    for port in 10..14 {
        let h = host(&c, port);
        for _ in 0..10 {
            c.report(&h, Outcome::ConnectSuccess);
            c.report(&h, Outcome::HttpStatus(200));
        }
    }
    let bad = host(&c, 14);
    for _ in 0..10 {
        c.report(&bad, Outcome::ConnectFailure);
    }
    let d = c.outlier.as_ref().unwrap();
    d.tick(&c);
    // The success-rate detector runs first (as Envoy's) and ejects it (mean 80, stdev
    // 40, threshold 80 - 1.9 × 40 = 4); the failure-percentage detector then finds it
    // ejected already.
    assert!(ejected(&bad));
    assert_eq!(
        stat(&store, "ejections_enforced_local_origin_success_rate"),
        1
    );
    assert_eq!(
        stat(&store, "ejections_detected_local_origin_failure_percentage"),
        1
    );
    assert_eq!(
        stat(&store, "ejections_enforced_local_origin_failure_percentage"),
        0
    );
    assert_eq!(stat(&store, "ejections_detected_success_rate"), 0);
    assert_eq!(bad.outlier.local_origin_success_rate(), Some(0.0));
    assert_eq!(bad.outlier.success_rate(), None);
    assert_eq!(
        host(&c, 10).outlier.local_origin_success_rate(),
        Some(100.0)
    );
    assert_eq!(host(&c, 10).outlier.success_rate(), Some(100.0));
    assert_eq!(d.cluster_rates()[1].0, Some(80.0));
}

#[tokio::test(start_paused = true)]
async fn the_ejection_time_jitter_adds_at_most_its_maximum() {
    let (_cm, c, _store) = cluster(
        4,
        r#"{"consecutive_5xx": 1, "base_ejection_time": "10s",
            "max_ejection_time_jitter": "5s"}"#,
    );
    let h = host(&c, 10);
    c.report(&h, Outcome::HttpStatus(500));
    assert!(ejected(&h));
    let jitter = h.outlier.jitter_ms.load(Ordering::Relaxed);
    assert!(jitter <= 5000);
    let d = c.outlier.as_ref().unwrap();
    tokio::time::advance(Duration::from_millis(10_000 + jitter - 1)).await;
    d.tick(&c);
    assert!(ejected(&h));
    tokio::time::advance(Duration::from_millis(1)).await;
    d.tick(&c);
    assert!(!ejected(&h));
}

#[test]
fn ejections_and_returns_go_to_the_outlier_log() {
    let dir = std::env::temp_dir().join(format!("plumb-outlier-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("outlier.log");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let (_cm, c, _store) = cluster_with(
            4,
            r#"{"consecutive_5xx": 2, "base_ejection_time": "1s"}"#,
            &format!(
                r#""cluster_manager": {{"outlier_detection": {{"event_log_path": "{}"}}}},"#,
                path.display()
            ),
        );
        let h = host(&c, 11);
        c.report(&h, Outcome::HttpStatus(503));
        c.report(&h, Outcome::HttpStatus(503));
        tokio::time::advance(Duration::from_secs(1)).await;
        c.outlier.as_ref().unwrap().tick(&c);
    });
    // The writer thread batches lines: wait for both, with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 2 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (eject, back) = (&lines[0], &lines[1]);
    assert_eq!(eject["action"], "EJECT");
    assert_eq!(eject["type"], "CONSECUTIVE_5XX");
    assert_eq!(eject["cluster_name"], "c");
    assert_eq!(eject["upstream_url"], "127.0.0.1:11");
    assert_eq!(eject["enforced"], true);
    assert_eq!(eject["num_ejections"], 1);
    assert!(eject.get("secs_since_last_action").is_none());
    assert!(eject["eject_consecutive_event"].is_object());
    assert_eq!(back["action"], "UNEJECT");
    assert_eq!(back["secs_since_last_action"], "1");
}

#[tokio::test(start_paused = true)]
async fn an_ejection_handed_to_a_successor_ends_when_it_would_have() {
    let cfg = r#"{"consecutive_5xx": 1, "base_ejection_time": "10s"}"#;
    let (old_cm, old, _) = cluster(4, cfg);
    let h = host(&old, 11);
    old.report(&h, Outcome::HttpStatus(500));
    tokio::time::advance(Duration::from_secs(4)).await;
    let states = old_cm.host_states();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].ejected, Some((4000, 1)));
    assert_eq!(states[0].healthy, None, "no active health check here");
    // The successor: same cluster, fresh hosts.
    let (new_cm, new, store) = cluster(4, cfg);
    assert_eq!(new_cm.apply_host_states(&states), 1);
    let h2 = host(&new, 11);
    assert!(ejected(&h2));
    assert_eq!(stat(&store, "ejections_active"), 1);
    for _ in 0..20 {
        assert_ne!(new.pick(&LbContext::default()).unwrap().address.port(), 11);
    }
    // Six more seconds and it is back, as it would have been.
    let d = new.outlier.as_ref().unwrap();
    tokio::time::advance(Duration::from_millis(5999)).await;
    assert_eq!(d.tick(&new), 0);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(d.tick(&new), 1);
    // Unknown clusters and hosts are skipped.
    let mut other = states.clone();
    other[0].cluster = "nope".into();
    assert_eq!(new_cm.apply_host_states(&other), 0);
}

#[test]
fn concurrent_ejections_never_pass_max_ejection_percent() {
    // 10 hosts at 20 %: two may go. Eight threads eject eight different hosts at once.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _g = rt.enter();
    for _ in 0..50 {
        let (_cm, c, _store) = cluster(10, r#"{"max_ejection_percent": 20}"#);
        let d = c.outlier.as_ref().unwrap();
        std::thread::scope(|s| {
            for port in 10..18 {
                let (c, h) = (&c, host(&c, port));
                s.spawn(move || d.eject(c, &h, Ejection::Consecutive5xx));
            }
        });
        assert_eq!(ejected_count(c.hosts().all()), 2);
    }
}
