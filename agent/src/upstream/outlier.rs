//! Outlier detection (Envoy's `outlier_detection`), the consecutive-failure detectors:
//! `consecutive_5xx`, `consecutive_gateway_failure` and, with
//! `split_external_local_origin_errors`, `consecutive_local_origin_failure`.
//!
//! Every connection or request outcome reported for a host (`Cluster::report`) moves the
//! host's counters (atomics in the host, no lock). When one reaches its threshold, the host
//! is ejected if `max_ejection_percent` and the `enforcing_*` percentage allow it: flagged
//! `FAILED_OUTLIER_CHECK`, so the balancer, rebuilt off the data path, no longer picks it.
//! Every `interval` a task per cluster brings back the hosts whose ejection time is over:
//! `base_ejection_time` × the number of times the host was ejected in a row, capped by
//! `max_ejection_time`; that multiplier goes down by one for each interval a host stays in.
//!
//! Without the split, local-origin failures count as gateway errors, as in Envoy: a connect
//! failure or reset as 503, a timeout as 504; a TCP proxy's successful connect as a 200.

use super::{health_flag, Cluster, Host, Outcome};
use crate::config::OutlierDetection;
use crate::stats::{Counter, Gauge, Scope};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// What a host's detector counts (in the host, so it survives EDS updates with the host).
#[derive(Debug, Default)]
pub struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// Ejections in a row: the multiplier of `base_ejection_time`.
    backoff: AtomicU32,
    /// When the current ejection began (ms since `epoch()`, plus one); 0 when not ejected.
    ejected_at: AtomicU64,
}

/// Why a host was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
}

impl Ejection {
    fn name(self) -> &'static str {
        match self {
            Ejection::Consecutive5xx => "consecutive_5xx",
            Ejection::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Ejection::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
        }
    }
}

/// `cluster.<name>.outlier_detection.*`.
#[derive(Debug)]
struct Stats {
    ejections_active: Arc<Gauge>,
    ejections_enforced_total: Arc<Counter>,
    ejections_overflow: Arc<Counter>,
    /// `ejections_detected_<kind>` and `ejections_enforced_<kind>`, by `Ejection`.
    detected: [Arc<Counter>; 3],
    enforced: [Arc<Counter>; 3],
}

/// One cluster's detector: its settings and stats (host state lives in the hosts).
#[derive(Debug)]
pub struct Detector {
    cfg: OutlierDetection,
    stats: Stats,
    /// What ejection times count from (this detector's clock: paused time in unit tests).
    epoch: Instant,
}

const KINDS: [Ejection; 3] = [
    Ejection::Consecutive5xx,
    Ejection::ConsecutiveGatewayFailure,
    Ejection::ConsecutiveLocalOriginFailure,
];

impl Detector {
    pub fn new(cfg: &OutlierDetection, scope: &Scope) -> Self {
        let c = |n: &str| scope.counter(&format!("outlier_detection.{n}"));
        Self {
            cfg: cfg.clone(),
            epoch: Instant::now(),
            stats: Stats {
                ejections_active: scope.gauge("outlier_detection.ejections_active"),
                ejections_enforced_total: c("ejections_enforced_total"),
                ejections_overflow: c("ejections_overflow"),
                detected: KINDS.map(|k| c(&format!("ejections_detected_{}", k.name()))),
                enforced: KINDS.map(|k| c(&format!("ejections_enforced_{}", k.name()))),
            },
        }
    }

    /// Now, in ms since `epoch`, plus one (0 means "not ejected").
    fn now_mark(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    pub fn interval(&self) -> Duration {
        self.cfg.interval.max(Duration::from_millis(1))
    }

    /// Moves the host's counters by `outcome`; returns the detectors that fired (the
    /// gateway one first, as Envoy runs them).
    pub fn put(&self, host: &Host, outcome: Outcome) -> [Option<Ejection>; 2] {
        self.put_one(host, outcome)
    }

    fn put_one(&self, host: &Host, outcome: Outcome) -> [Option<Ejection>; 2] {
        let o = &host.outlier;
        let split = self.cfg.split_external_local_origin_errors;
        let code = match outcome {
            Outcome::HttpStatus(code) => Some(code),
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout if split => {
                let n = o.consecutive_local.fetch_add(1, Ordering::AcqRel) + 1;
                let fired = n == self.cfg.consecutive_local_origin_failure;
                return [
                    fired.then_some(Ejection::ConsecutiveLocalOriginFailure),
                    None,
                ];
            }
            Outcome::ConnectSuccess | Outcome::ConnectSuccessFinal if split => {
                o.consecutive_local.store(0, Ordering::Release);
                None
            }
            Outcome::ConnectFailure | Outcome::Reset => Some(503),
            Outcome::Timeout => Some(504),
            Outcome::ConnectSuccessFinal => Some(200),
            // An HTTP connection's success says nothing yet: its response will.
            Outcome::ConnectSuccess => None,
        };
        let Some(code) = code else {
            return [None, None];
        };
        if !(500..600).contains(&code) {
            o.consecutive_5xx.store(0, Ordering::Release);
            o.consecutive_gateway.store(0, Ordering::Release);
            return [None, None];
        }
        let mut gateway = None;
        if matches!(code, 502..=504) {
            let n = o.consecutive_gateway.fetch_add(1, Ordering::AcqRel) + 1;
            if n == self.cfg.consecutive_gateway_failure {
                gateway = Some(Ejection::ConsecutiveGatewayFailure);
            }
        } else {
            o.consecutive_gateway.store(0, Ordering::Release);
        }
        let n = o.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1;
        let five = (n == self.cfg.consecutive_5xx).then_some(Ejection::Consecutive5xx);
        // Both may fire at once: the 5xx detector then finds the host ejected already when
        // the gateway ejection was enforced.
        [gateway, five]
    }

    fn enforcing(&self, kind: Ejection) -> u32 {
        match kind {
            Ejection::Consecutive5xx => self.cfg.enforcing_consecutive_5xx,
            Ejection::ConsecutiveGatewayFailure => self.cfg.enforcing_consecutive_gateway_failure,
            Ejection::ConsecutiveLocalOriginFailure => {
                self.cfg.enforcing_consecutive_local_origin_failure
            }
        }
    }

    /// Ejects `host` from `cluster` for `kind` if the limits allow; `true` when ejected.
    pub fn eject(&self, cluster: &Cluster, host: &Host, kind: Ejection) -> bool {
        let i = kind as usize;
        self.stats.detected[i].inc();
        if host.health_flags() & health_flag::FAILED_OUTLIER_CHECK != 0 {
            return false;
        }
        // As Envoy: the detector's count starts again whether or not the ejection is
        // enforced, so the next bout of failures is detected too.
        let o = &host.outlier;
        match kind {
            Ejection::Consecutive5xx => o.consecutive_5xx.store(0, Ordering::Release),
            Ejection::ConsecutiveGatewayFailure => {
                o.consecutive_gateway.store(0, Ordering::Release)
            }
            Ejection::ConsecutiveLocalOriginFailure => {
                o.consecutive_local.store(0, Ordering::Release)
            }
        }
        let hosts = cluster.hosts();
        let total = hosts.all().len().max(1) as f64;
        let active = ejected_count(hosts.all());
        let percent = 100.0 * (active + 1) as f64 / total;
        // At least one host may always be ejected.
        if percent > f64::from(self.cfg.max_ejection_percent.min(100)) && active > 0 {
            self.stats.ejections_overflow.inc();
            return false;
        }
        if fastrand::u32(0..100) >= self.enforcing(kind) {
            return false;
        }
        // One ejection per host even when workers detect at once.
        if o.ejected_at
            .compare_exchange(0, self.now_mark(), Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        o.backoff.fetch_add(1, Ordering::AcqRel);
        self.stats.enforced[i].inc();
        self.stats.ejections_enforced_total.inc();
        host.set_flags(health_flag::FAILED_OUTLIER_CHECK, true);
        cluster.hosts_health_changed();
        self.stats
            .ejections_active
            .set(ejected_count(cluster.hosts().all()) as i64);
        tracing::info!(
            cluster = cluster.name(),
            host = %host.address,
            kind = kind.name(),
            ejections = o.backoff.load(Ordering::Relaxed),
            "outlier detection: host ejected"
        );
        true
    }

    /// One interval: brings back hosts whose ejection time is over, and lowers the
    /// multiplier of hosts that stayed in. Returns how many came back.
    pub fn tick(&self, cluster: &Cluster) -> usize {
        let now = self.now_mark();
        let base = self.cfg.base_ejection_time;
        let cap = self.cfg.max_ejection_time.max(base);
        let mut back = 0;
        for host in cluster.hosts().all() {
            let o = &host.outlier;
            let at = o.ejected_at.load(Ordering::Acquire);
            if at == 0 {
                let b = o.backoff.load(Ordering::Relaxed);
                if b > 0 {
                    o.backoff.store(b - 1, Ordering::Relaxed);
                }
                continue;
            }
            let times = o.backoff.load(Ordering::Relaxed).max(1);
            let ejected_for = base.saturating_mul(times).min(cap);
            if Duration::from_millis(now.saturating_sub(at)) < ejected_for {
                continue;
            }
            o.ejected_at.store(0, Ordering::Release);
            o.consecutive_5xx.store(0, Ordering::Release);
            o.consecutive_gateway.store(0, Ordering::Release);
            o.consecutive_local.store(0, Ordering::Release);
            host.set_flags(health_flag::FAILED_OUTLIER_CHECK, false);
            tracing::info!(
                cluster = cluster.name(),
                host = %host.address,
                "outlier detection: host unejected"
            );
            back += 1;
        }
        if back > 0 {
            cluster.hosts_health_changed();
        }
        self.stats
            .ejections_active
            .set(ejected_count(cluster.hosts().all()) as i64);
        back
    }
}

fn ejected_count(hosts: &[Arc<Host>]) -> usize {
    hosts
        .iter()
        .filter(|h| h.health_flags() & health_flag::FAILED_OUTLIER_CHECK != 0)
        .count()
}

impl Detector {
    /// A passing active health check: with `successful_active_health_check_uneject_host`
    /// (Envoy's default), an ejected host comes back at once. `true` when it did.
    pub fn health_check_passed(&self, cluster: &Cluster, host: &Host) -> bool {
        if !self.cfg.successful_active_health_check_uneject_host
            || host.outlier.ejected_at.swap(0, Ordering::AcqRel) == 0
        {
            return false;
        }
        host.outlier.consecutive_5xx.store(0, Ordering::Release);
        host.outlier.consecutive_gateway.store(0, Ordering::Release);
        host.outlier.consecutive_local.store(0, Ordering::Release);
        host.set_flags(health_flag::FAILED_OUTLIER_CHECK, false);
        tracing::info!(
            cluster = cluster.name(),
            host = %host.address,
            "outlier detection: host unejected by a passing health check"
        );
        self.stats
            .ejections_active
            .set(ejected_count(cluster.hosts().all()) as i64);
        true
    }
}

/// Clears an ejection a host carries from a cluster version with outlier detection into one
/// without it (nothing would ever bring it back).
pub fn forget(host: &Host) {
    if host.outlier.ejected_at.swap(0, Ordering::AcqRel) != 0 {
        host.set_flags(health_flag::FAILED_OUTLIER_CHECK, false);
    }
}

/// The interval task of one cluster: it holds the cluster weakly and ends when the cluster
/// is removed or replaced, or at shutdown.
pub async fn run(cluster: Weak<Cluster>, every: Duration, mut shutdown: crate::drain::Watch) {
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.draining() => return,
        }
        let Some(c) = cluster.upgrade() else { return };
        if c.is_retired() {
            return;
        }
        if let Some(d) = &c.outlier {
            d.tick(&c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, Endpoint, HealthStatus, LocalityEndpoints};
    use crate::stats::Store;
    use crate::upstream::{ClusterManager, LbContext};

    /// A static cluster `c` of `n` hosts (ports 10, 11, …) with this outlier_detection.
    fn cluster(n: u16, outlier: &str) -> (ClusterManager, Arc<Cluster>, Store) {
        let snap = config::parse_bootstrap(
            &format!(
                r#"{{"static_resources": {{"clusters": [{{"name": "c",
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
}
