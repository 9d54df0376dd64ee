use super::*;

#[test]
fn the_next_check_waits_as_envoy_chooses() {
    let s = |ms: u64| Duration::from_millis(ms);
    let cfg = HealthCheck {
        timeout: s(1000),
        interval: s(10),
        initial_jitter: Duration::ZERO,
        interval_jitter: Duration::ZERO,
        interval_jitter_percent: 0,
        unhealthy_threshold: 2,
        healthy_threshold: 2,
        always_log_health_check_failures: false,
        no_traffic_interval: s(60),
        no_traffic_healthy_interval: s(70),
        unhealthy_interval: s(20),
        unhealthy_edge_interval: s(30),
        healthy_edge_interval: s(40),
        event_log_path: None,
        reuse_connection: true,
        kind: HealthCheckKind::Tcp {
            send: None,
            receive: vec![],
        },
    };
    let store = Store::new();
    let c = Checker::new(&cfg, &store.root_scope("t"), &store);
    use Transition::*;
    // No traffic yet: the no-traffic intervals.
    assert_eq!(c.next_interval(false, true, Unchanged), s(70));
    assert_eq!(c.next_interval(false, true, ChangePending), s(60));
    assert_eq!(c.next_interval(false, false, Changed), s(60));
    // With traffic: by state, the edge intervals right after a change.
    assert_eq!(c.next_interval(true, true, Unchanged), s(10));
    assert_eq!(c.next_interval(true, true, ChangePending), s(10));
    assert_eq!(c.next_interval(true, true, Changed), s(40));
    assert_eq!(c.next_interval(true, false, Unchanged), s(20));
    assert_eq!(c.next_interval(true, false, ChangePending), s(20));
    assert_eq!(c.next_interval(true, false, Changed), s(30));
    // Jitter: up to interval_jitter plus a percentage of the interval.
    let c = Checker::new(
        &HealthCheck {
            interval_jitter: s(5),
            interval_jitter_percent: 50,
            ..cfg
        },
        &store.root_scope("t"),
        &store,
    );
    for _ in 0..100 {
        let d = c.next_interval(true, true, Unchanged);
        assert!(d >= s(10) && d <= s(20), "{d:?}");
    }
}

/// A thousand hosts arriving at once: their first checks are spread over the interval
/// (about ten per 100 ms at 10 s), not a thousand connections at once.
#[tokio::test(start_paused = true)]
async fn a_thousand_new_hosts_are_checked_spread_over_the_interval() {
    use crate::config::{self, Endpoint, HealthStatus, LocalityEndpoints};
    use crate::upstream::{ClusterManager, Connector};
    let snap = config::parse_bootstrap(
        r#"{"static_resources": {"clusters": [{"name": "c", "type": "STATIC",
            "load_assignment": {"cluster_name": "c", "endpoints": []},
            "health_checks": [{"timeout": "1s", "interval": "10s", "no_traffic_interval": "10s",
                "unhealthy_threshold": 1, "healthy_threshold": 1, "tcp_health_check": {}}]}]}}"#,
        "t",
    )
    .unwrap();
    let connects: Arc<std::sync::Mutex<Vec<Instant>>> = Default::default();
    let log = connects.clone();
    let connector = Connector::Memory(Arc::new(move |_| {
        log.lock().unwrap().push(Instant::now());
        Box::pin(async {
            let (a, _b) = tokio::io::duplex(64);
            Ok(crate::transport::Stream::Memory(a))
        })
    }));
    let store = Store::new();
    let cm = ClusterManager::with_connector(&snap, &store, connector);
    let hosts = (0..1000u16)
        .map(|i| Endpoint {
            host: config::Host::Ip(
                format!("10.213.{}.{}", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap(),
            ),
            port: 80,
            hostname: None,
            weight: 1,
            health_status: HealthStatus::Healthy,
            canary: false,
            socket_match: Vec::new(),
        })
        .collect();
    cm.set_endpoints(
        "c",
        vec![LocalityEndpoints {
            endpoints: hosts,
            ..Default::default()
        }],
    );
    let c = cm.get("c").unwrap();
    let drain = crate::drain::Drain::new();
    let start = Instant::now();
    let task = tokio::spawn(run(Arc::downgrade(&c), Duration::ZERO, drain.watch()));
    for _ in 0..110 {
        tokio::time::advance(Duration::from_millis(100)).await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    task.abort();
    let mut times = connects.lock().unwrap().clone();
    times.sort();
    assert!(times.len() >= 1000, "{}", times.len());
    // The thousandth connection within the interval (time moves in 100 ms steps here).
    let first_round = &times[..1000];
    assert!(first_round[999] - start <= Duration::from_millis(10_100));
    let mut per_window = std::collections::BTreeMap::new();
    for t in first_round {
        *per_window
            .entry((*t - start).as_millis() / 100)
            .or_insert(0) += 1;
    }
    let busiest = per_window.values().max().copied().unwrap_or(0);
    assert!(
        busiest <= 15,
        "at most ~10 checks per 100 ms, saw {busiest}"
    );
    assert_eq!(store.value("cluster.c.health_check.healthy"), Some(1000));
}
