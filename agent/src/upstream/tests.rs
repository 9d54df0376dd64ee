//! Cluster-level behaviour: host state across EDS updates, ORIGINAL_DST host reuse, picks.

use super::*;
use crate::config::{Endpoint, HealthStatus, Host as CfgHost, LocalityEndpoints};

fn snapshot(cluster_type: &str) -> config::Snapshot {
    let lb = if cluster_type == "ORIGINAL_DST" {
        r#""lb_policy": "CLUSTER_PROVIDED""#
    } else {
        r#""load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]}"#
    };
    config::parse_bootstrap(
        &format!(r#"{{"static_resources": {{"clusters": [{{"name": "c", "type": "{cluster_type}", {lb}}}]}}}}"#),
        "test",
    )
    .unwrap()
}

fn endpoints(hosts: &[(u16, u32, HealthStatus)]) -> Vec<LocalityEndpoints> {
    vec![LocalityEndpoints {
        endpoints: hosts
            .iter()
            .map(|&(port, weight, health_status)| Endpoint {
                host: CfgHost::Ip("127.0.0.1".parse().unwrap()),
                port,
                hostname: None,
                weight,
                health_status,
                canary: false,
                socket_match: Vec::new(),
            })
            .collect(),
        ..Default::default()
    }]
}

fn host_on(c: &Cluster, port: u16) -> Arc<Host> {
    c.hosts()
        .all()
        .iter()
        .find(|h| h.address.port() == port)
        .cloned()
        .expect("host")
}

#[test]
fn an_eds_health_flip_keeps_the_host_its_stats_and_detector_flags() {
    let store = Store::new();
    let cm = ClusterManager::new(&snapshot("STATIC"), &store);
    let c = cm.get("c").unwrap();
    cm.set_endpoints(
        "c",
        endpoints(&[
            (10, 1, HealthStatus::Healthy),
            (11, 1, HealthStatus::Healthy),
        ]),
    );
    let before = host_on(&c, 10);
    before.stats.cx_total.fetch_add(7, Ordering::Relaxed);
    before.set_flags(health_flag::FAILED_OUTLIER_CHECK, true);
    let changes = c.stats.membership_change.value();

    cm.set_endpoints(
        "c",
        endpoints(&[
            (10, 3, HealthStatus::Degraded),
            (11, 1, HealthStatus::Unhealthy),
        ]),
    );
    let after = host_on(&c, 10);
    assert!(
        Arc::ptr_eq(&before, &after),
        "same Host after a health and weight change"
    );
    assert_eq!(after.stats.cx_total.load(Ordering::Relaxed), 7);
    assert_eq!(after.weight(), 3);
    assert_eq!(after.eds_health_status(), HealthStatus::Degraded);
    assert_eq!(
        after.health_flags(),
        health_flag::FAILED_OUTLIER_CHECK | health_flag::DEGRADED_EDS_HEALTH,
        "the outlier ejection survives an EDS update"
    );
    assert_eq!(
        c.stats.membership_change.value(),
        changes,
        "health is not membership"
    );
    assert_eq!(c.stats.membership_healthy.value(), 0);
    // Detector clears its flag: the balancer is rebuilt over the same hosts.
    after.set_flags(health_flag::FAILED_OUTLIER_CHECK, false);
    c.hosts_health_changed();
    assert_eq!(c.pick(&LbContext::default()).unwrap().address.port(), 10);
    assert_eq!(c.stats.membership_healthy.value(), 1);
    // A host that leaves and comes back is a new one.
    cm.set_endpoints("c", endpoints(&[(11, 1, HealthStatus::Healthy)]));
    cm.set_endpoints(
        "c",
        endpoints(&[
            (10, 1, HealthStatus::Healthy),
            (11, 1, HealthStatus::Healthy),
        ]),
    );
    assert!(!Arc::ptr_eq(&before, &host_on(&c, 10)));
    assert_eq!(c.stats.membership_change.value(), changes + 2);
}

#[test]
fn original_dst_hosts_are_reused_per_destination_and_shown() {
    let store = Store::new();
    let cm = ClusterManager::new(&snapshot("ORIGINAL_DST"), &store);
    let c = cm.get("c").unwrap();
    let dst: SocketAddr = "10.213.0.7:8080".parse().unwrap();
    let ctx = LbContext {
        original_dst: Some(dst),
        ..LbContext::default()
    };
    let a = c.pick(&ctx).unwrap();
    let b = c.pick(&ctx).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.address, dst);
    // Published for /clusters by the cleanup pass, off the data path.
    c.cleanup_original_dst();
    assert_eq!(c.hosts().all().len(), 1, "/clusters lists it");
    assert_eq!(c.stats.membership_total.value(), 1);
    assert!(matches!(
        c.pick(&LbContext::default()),
        Err(ConnectError::NoOriginalDestination(_))
    ));
    // A sweep without use forgets it.
    c.cleanup_original_dst();
    assert_eq!(c.stats.membership_total.value(), 0);
    assert!(!Arc::ptr_eq(&a, &c.pick(&ctx).unwrap()));
}

#[test]
fn a_retry_pick_avoids_hosts_already_tried() {
    let store = Store::new();
    let cm = ClusterManager::new(&snapshot("STATIC"), &store);
    let c = cm.get("c").unwrap();
    cm.set_endpoints(
        "c",
        endpoints(&[
            (10, 1, HealthStatus::Healthy),
            (11, 1, HealthStatus::Healthy),
        ]),
    );
    let first = c.pick(&LbContext::default()).unwrap();
    for _ in 0..20 {
        let tried = [first.clone()];
        let ctx = LbContext {
            tried: &tried,
            attempt: 2,
            ..LbContext::default()
        };
        assert!(!Arc::ptr_eq(&c.pick(&ctx).unwrap(), &first));
    }
}

/// Issue 11, item 2: a batch of many changes copies the cluster map once and publishes it
/// once (one copy per change made reloads quadratic): readers see the old map until the
/// batch ends, then every change at once; the gauges are right.
#[test]
fn a_batch_publishes_once() {
    let store = Store::new();
    let cm = ClusterManager::new(&snapshot("STATIC"), &store);
    let before = cm.clusters.load_full();
    let mut batch = cm.batch();
    for i in 0..1000 {
        let mut cfg = (*cm.get("c").unwrap().config).clone();
        cfg.name = format!("c{i}");
        assert_eq!(batch.upsert(Arc::new(cfg)), Upsert::Added);
        assert!(
            batch.get(&format!("c{i}")).is_some(),
            "the batch sees its own changes"
        );
    }
    assert!(batch.remove("c"));
    assert!(
        Arc::ptr_eq(&before, &cm.clusters.load_full()),
        "nothing published before the batch ends"
    );
    assert!(cm.get("c0").is_none() && cm.get("c").is_some());
    drop(batch);
    assert_eq!(cm.all().len(), 1000);
    assert!(cm.get("c").is_none());
    assert_eq!(store.value("cluster_manager.active_clusters"), Some(1000));
    assert_eq!(store.value("cluster_manager.cluster_added"), Some(1001));
    assert_eq!(store.value("cluster_manager.cluster_removed"), Some(1));
    // A batch without changes publishes nothing.
    let now = cm.clusters.load_full();
    drop(cm.batch());
    assert!(Arc::ptr_eq(&now, &cm.clusters.load_full()));
}

/// A STATIC cluster `c` with a TCP health check (`extra`: more cluster fields).
fn checked(extra: &str) -> (ClusterManager, Arc<Cluster>) {
    let snap = config::parse_bootstrap(
        &format!(
            r#"{{"static_resources": {{"clusters": [{{"name": "c", "type": "STATIC", {extra}
                "load_assignment": {{"cluster_name": "c", "endpoints": []}},
                "health_checks": [{{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
                    "healthy_threshold": 1, "tcp_health_check": {{}}}}]}}]}}}}"#
        ),
        "test",
    )
    .unwrap();
    let cm = ClusterManager::new(&snap, &Store::new());
    let c = cm.get("c").unwrap();
    (cm, c)
}

fn pass(c: &Cluster, h: &Host, ok: bool) {
    let checker = c.health.as_ref().unwrap();
    let r = if ok {
        Ok(())
    } else {
        Err(health::CheckFailure::Network("refused".into()))
    };
    checker.record(c, h, r);
    c.hosts_health_changed();
}

#[test]
fn a_host_discovery_drops_stays_while_it_passes_its_checks() {
    let (cm, c) = checked("");
    let two = endpoints(&[
        (10, 1, HealthStatus::Healthy),
        (11, 1, HealthStatus::Healthy),
    ]);
    cm.set_endpoints("c", two.clone());
    let (a, b) = (host_on(&c, 10), host_on(&c, 11));
    pass(&c, &a, true);
    pass(&c, &b, false);
    // Discovery drops both: the one passing its checks stays, flagged, and is still picked;
    // the failing one goes at once.
    cm.set_endpoints("c", endpoints(&[]));
    assert_eq!(c.hosts().all().len(), 1);
    assert_eq!(a.health_flags_string(), "/pending_dynamic_removal");
    assert!(Arc::ptr_eq(&c.pick(&LbContext::default()).unwrap(), &a));
    // Back in discovery: the flag goes.
    cm.set_endpoints("c", two.clone());
    assert!(Arc::ptr_eq(&host_on(&c, 10), &a));
    assert_eq!(a.health_flags_string(), "healthy");
    // Dropped again, then a failed check: it goes.
    cm.set_endpoints("c", endpoints(&[(11, 1, HealthStatus::Healthy)]));
    assert_eq!(c.hosts().all().len(), 2);
    pass(&c, &a, false);
    c.remove_pending_host(&a);
    assert_eq!(c.hosts().all().len(), 1);
    assert_eq!(c.hosts().all()[0].address.port(), 11);
}

#[test]
fn ignore_health_on_host_removal_drops_hosts_at_once() {
    let (cm, c) = checked(r#""ignore_health_on_host_removal": true,"#);
    cm.set_endpoints("c", endpoints(&[(10, 1, HealthStatus::Healthy)]));
    pass(&c, &host_on(&c, 10), true);
    cm.set_endpoints("c", endpoints(&[]));
    assert!(c.hosts().all().is_empty());
}

#[test]
fn hosts_joining_a_cluster_with_slow_start_ramp_up_and_the_first_do_not() {
    let snap = config::parse_bootstrap(
        r#"{"static_resources": {"clusters": [{"name": "c", "type": "STATIC",
            "round_robin_lb_config": {"slow_start_config": {"slow_start_window": "60s"}},
            "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]}}]}}"#,
        "test",
    )
    .unwrap();
    let cm = ClusterManager::new(&snap, &Store::new());
    let c = cm.get("c").unwrap();
    assert!(host_on(&c, 1).slow_start_since().is_none());
    cm.set_endpoints(
        "c",
        endpoints(&[(1, 1, HealthStatus::Healthy), (2, 1, HealthStatus::Healthy)]),
    );
    assert!(host_on(&c, 1).slow_start_since().is_none(), "kept, not new");
    assert!(host_on(&c, 2).slow_start_since().is_some());
}

#[test]
fn a_kept_host_takes_its_new_transport_socket_match_metadata() {
    let store = Store::new();
    let cm = ClusterManager::new(&snapshot("STATIC"), &store);
    let c = cm.get("c").unwrap();
    let with = |m: Vec<(String, String)>| {
        let mut e = endpoints(&[(10, 1, HealthStatus::Healthy)]);
        e[0].endpoints[0].socket_match = m;
        e
    };
    cm.set_endpoints("c", with(vec![]));
    let before = host_on(&c, 10);
    assert!(before.socket_match().is_empty());
    cm.set_endpoints("c", with(vec![("tlsMode".into(), "istio".into())]));
    let after = host_on(&c, 10);
    assert!(Arc::ptr_eq(&before, &after), "the same host is kept");
    assert_eq!(
        *after.socket_match(),
        vec![("tlsMode".to_string(), "istio".to_string())]
    );
}
