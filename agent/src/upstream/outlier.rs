//! Outlier detection (Envoy's `outlier_detection`): the consecutive-failure detectors
//! (`consecutive_5xx`, `consecutive_gateway_failure` and, with
//! `split_external_local_origin_errors`, `consecutive_local_origin_failure`), which act on the
//! failure that reaches their threshold, and the statistical ones (`success_rate`,
//! `failure_percentage`, each for external and, with the split, local-origin outcomes), which
//! act once per `interval` on what every host did during it.
//!
//! Every connection or request outcome reported for a host (`Cluster::report`) moves the
//! host's counters (atomics in the host, no lock). When a consecutive count reaches its
//! threshold, the host is ejected if `max_ejection_percent` and the `enforcing_*` percentage
//! allow it: flagged `FAILED_OUTLIER_CHECK`, so the balancer, rebuilt off the data path, no
//! longer picks it. Every `interval` a task per cluster brings back the hosts whose ejection
//! time is over (`base_ejection_time` × the number of times the host was ejected in a row,
//! capped by `max_ejection_time`, plus up to `max_ejection_time_jitter`; the multiplier goes
//! down by one for each interval a host stays in), then runs the statistical detectors on
//! the interval's counts.
//!
//! Without the split, local-origin failures count as gateway errors, as in Envoy: a connect
//! failure or reset as 503, a timeout as 504; a TCP proxy's successful connect as a 200.

use super::{health_flag, Cluster, Host, Outcome};
use crate::config::OutlierDetection;
use crate::http::access_log::EventLog;
use crate::stats::{Counter, Gauge, Scope};
use serde_json::json;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// A success rate not measured (too few requests in the last interval).
const NO_RATE: u64 = u64::MAX;

/// What a host's detector counts (in the host, so it survives EDS updates with the host).
#[derive(Debug)]
pub struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// Ejections in a row: the multiplier of `base_ejection_time`.
    backoff: AtomicU32,
    /// When the current ejection began (ms since the detector's epoch, plus one); 0 when
    /// not ejected.
    ejected_at: AtomicU64,
    /// The random part of the current ejection's length (ms).
    jitter_ms: AtomicU64,
    /// When the host was last ejected or brought back (as `ejected_at`); 0: never.
    last_action: AtomicU64,
    /// This interval's outcomes, `requests << 32 | successes`: external (all of them
    /// without the split) and local origin. Taken at each interval.
    window_external: AtomicU64,
    window_local: AtomicU64,
    /// The last interval's success rates in percent (f64 bits), `NO_RATE` when the host had
    /// fewer requests than `success_rate_request_volume`.
    success_rate: AtomicU64,
    local_success_rate: AtomicU64,
}

impl Default for HostOutlier {
    fn default() -> Self {
        Self {
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            consecutive_local: AtomicU32::new(0),
            backoff: AtomicU32::new(0),
            ejected_at: AtomicU64::new(0),
            jitter_ms: AtomicU64::new(0),
            last_action: AtomicU64::new(0),
            window_external: AtomicU64::new(0),
            window_local: AtomicU64::new(0),
            success_rate: AtomicU64::new(NO_RATE),
            local_success_rate: AtomicU64::new(NO_RATE),
        }
    }
}

impl HostOutlier {
    /// The external-origin success rate of the last interval (`/clusters` `success_rate`).
    pub fn success_rate(&self) -> Option<f64> {
        rate(&self.success_rate)
    }

    /// The local-origin success rate of the last interval (with the split).
    pub fn local_origin_success_rate(&self) -> Option<f64> {
        rate(&self.local_success_rate)
    }

    fn clear_counts(&self) {
        self.consecutive_5xx.store(0, Ordering::Release);
        self.consecutive_gateway.store(0, Ordering::Release);
        self.consecutive_local.store(0, Ordering::Release);
    }
}

fn rate(a: &AtomicU64) -> Option<f64> {
    match a.load(Ordering::Relaxed) {
        NO_RATE => None,
        bits => Some(f64::from_bits(bits)),
    }
}

/// Counts one outcome in an interval window.
fn count(window: &AtomicU64, success: bool) {
    window.fetch_add((1 << 32) | u64::from(success), Ordering::Relaxed);
}

/// Why a host was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    LocalOriginSuccessRate,
    FailurePercentage,
    LocalOriginFailurePercentage,
}

const KINDS: [Ejection; 7] = [
    Ejection::Consecutive5xx,
    Ejection::ConsecutiveGatewayFailure,
    Ejection::ConsecutiveLocalOriginFailure,
    Ejection::SuccessRate,
    Ejection::LocalOriginSuccessRate,
    Ejection::FailurePercentage,
    Ejection::LocalOriginFailurePercentage,
];

impl Ejection {
    /// The stat suffix (`ejections_enforced_<name>`).
    fn name(self) -> &'static str {
        match self {
            Ejection::Consecutive5xx => "consecutive_5xx",
            Ejection::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Ejection::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            Ejection::SuccessRate => "success_rate",
            Ejection::LocalOriginSuccessRate => "local_origin_success_rate",
            Ejection::FailurePercentage => "failure_percentage",
            Ejection::LocalOriginFailurePercentage => "local_origin_failure_percentage",
        }
    }

    /// Envoy's `OutlierEjectionType`, for the event log.
    fn event_type(self) -> &'static str {
        match self {
            Ejection::Consecutive5xx => "CONSECUTIVE_5XX",
            Ejection::ConsecutiveGatewayFailure => "CONSECUTIVE_GATEWAY_FAILURE",
            Ejection::ConsecutiveLocalOriginFailure => "CONSECUTIVE_LOCAL_ORIGIN_FAILURE",
            Ejection::SuccessRate => "SUCCESS_RATE",
            Ejection::LocalOriginSuccessRate => "SUCCESS_RATE_LOCAL_ORIGIN",
            Ejection::FailurePercentage => "FAILURE_PERCENTAGE",
            Ejection::LocalOriginFailurePercentage => "FAILURE_PERCENTAGE_LOCAL_ORIGIN",
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
    detected: [Arc<Counter>; 7],
    enforced: [Arc<Counter>; 7],
}

/// What the success-rate detector found at its last run for one origin (`/clusters`
/// `outlier::success_rate_average` and `outlier::success_rate_ejection_threshold`).
#[derive(Debug)]
struct ClusterRates {
    average: AtomicU64,
    threshold: AtomicU64,
}

impl Default for ClusterRates {
    fn default() -> Self {
        Self {
            average: AtomicU64::new(NO_RATE),
            threshold: AtomicU64::new(NO_RATE),
        }
    }
}

/// The detail of an ejection for the event log.
#[derive(Debug, Clone, Copy)]
enum Detail {
    Consecutive,
    SuccessRate {
        host: f64,
        average: f64,
        threshold: f64,
    },
    FailurePercentage {
        host: f64,
    },
}

/// One cluster's detector: its settings and stats (host state lives in the hosts).
#[derive(Debug)]
pub struct Detector {
    cfg: OutlierDetection,
    stats: Stats,
    /// What ejection times count from (this detector's clock: paused time in unit tests).
    epoch: Instant,
    external: ClusterRates,
    local: ClusterRates,
    events: Option<EventLog>,
    /// Serialises ejection decisions (rare: only when a detector fires), so two hosts
    /// ejected at once cannot both pass the `max_ejection_percent` check.
    ejecting: std::sync::Mutex<()>,
}

impl Detector {
    pub fn new(cfg: &OutlierDetection, scope: &Scope, events: Option<EventLog>) -> Self {
        let c = |n: &str| scope.counter(&format!("outlier_detection.{n}"));
        // The clock starts as far back as an ejection can last, so one handed over by a
        // previous agent keeps its start (marks are never below 1).
        let span = cfg.max_ejection_time.max(cfg.base_ejection_time)
            + cfg.max_ejection_time_jitter
            + Duration::from_secs(1);
        let now = Instant::now();
        Self {
            cfg: cfg.clone(),
            epoch: now.checked_sub(span).unwrap_or(now),
            stats: Stats {
                ejections_active: scope.gauge("outlier_detection.ejections_active"),
                ejections_enforced_total: c("ejections_enforced_total"),
                ejections_overflow: c("ejections_overflow"),
                detected: KINDS.map(|k| c(&format!("ejections_detected_{}", k.name()))),
                enforced: KINDS.map(|k| c(&format!("ejections_enforced_{}", k.name()))),
            },
            external: ClusterRates::default(),
            local: ClusterRates::default(),
            events,
            ejecting: std::sync::Mutex::new(()),
        }
    }

    /// Now, in ms since `epoch`, plus one (0 means "not ejected").
    fn now_mark(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    pub fn interval(&self) -> Duration {
        self.cfg.interval.max(Duration::from_millis(1))
    }

    /// The cluster's success-rate average and ejection threshold at the last interval,
    /// external and local origin (`None` when too few hosts had enough requests).
    pub fn cluster_rates(&self) -> [(Option<f64>, Option<f64>); 2] {
        [&self.external, &self.local].map(|r| (rate(&r.average), rate(&r.threshold)))
    }

    /// Moves the host's counters by `outcome`; returns the detectors that fired (the
    /// gateway one first, as Envoy runs them).
    pub fn put(&self, host: &Host, outcome: Outcome) -> [Option<Ejection>; 2] {
        let o = &host.outlier;
        let split = self.cfg.split_external_local_origin_errors;
        let code = match outcome {
            Outcome::HttpStatus(code) => Some(code),
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout if split => {
                count(&o.window_local, false);
                let n = o.consecutive_local.fetch_add(1, Ordering::AcqRel) + 1;
                let fired = n == self.cfg.consecutive_local_origin_failure;
                return [
                    fired.then_some(Ejection::ConsecutiveLocalOriginFailure),
                    None,
                ];
            }
            Outcome::ConnectSuccess | Outcome::ConnectSuccessFinal if split => {
                count(&o.window_local, true);
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
        let failed = (500..600).contains(&code);
        count(&o.window_external, !failed);
        if !failed {
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
        let c = &self.cfg;
        match kind {
            Ejection::Consecutive5xx => c.enforcing_consecutive_5xx,
            Ejection::ConsecutiveGatewayFailure => c.enforcing_consecutive_gateway_failure,
            Ejection::ConsecutiveLocalOriginFailure => c.enforcing_consecutive_local_origin_failure,
            Ejection::SuccessRate => c.enforcing_success_rate,
            Ejection::LocalOriginSuccessRate => c.enforcing_local_origin_success_rate,
            Ejection::FailurePercentage => c.enforcing_failure_percentage,
            Ejection::LocalOriginFailurePercentage => c.enforcing_failure_percentage_local_origin,
        }
    }

    /// A consecutive-failure detector fired: ejects `host` from `cluster` for `kind` if the
    /// limits allow; `true` when ejected.
    pub fn eject(&self, cluster: &Cluster, host: &Host, kind: Ejection) -> bool {
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
            _ => {}
        }
        self.eject_with(cluster, host, kind, Detail::Consecutive)
    }

    fn eject_with(&self, cluster: &Cluster, host: &Host, kind: Ejection, detail: Detail) -> bool {
        let i = kind as usize;
        self.stats.detected[i].inc();
        let o = &host.outlier;
        if host.health_flags() & health_flag::FAILED_OUTLIER_CHECK != 0 {
            return false;
        }
        let one_at_a_time = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
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
            self.log_event(
                cluster,
                host,
                kind,
                detail,
                false,
                o.last_action.load(Ordering::Relaxed),
            );
            return false;
        }
        // One ejection per host even when workers detect at once.
        let now = self.now_mark();
        if o.ejected_at
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let jitter = self.cfg.max_ejection_time_jitter.as_millis() as u64;
        o.jitter_ms
            .store(fastrand::u64(0..=jitter), Ordering::Relaxed);
        let last = o.last_action.swap(now, Ordering::Relaxed);
        o.backoff.fetch_add(1, Ordering::AcqRel);
        self.stats.enforced[i].inc();
        self.stats.ejections_enforced_total.inc();
        host.set_flags(health_flag::FAILED_OUTLIER_CHECK, true);
        drop(one_at_a_time);
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
        self.log_event(cluster, host, kind, detail, true, last);
        true
    }

    /// Writes an `EJECT` event (Envoy's `OutlierDetectionEvent`) to `outlier_log_path`.
    fn log_event(
        &self,
        cluster: &Cluster,
        host: &Host,
        kind: Ejection,
        detail: Detail,
        enforced: bool,
        last_action: u64,
    ) {
        let Some(log) = &self.events else { return };
        let mut e = self.event_base(cluster, host, "EJECT", last_action);
        e["type"] = json!(kind.event_type());
        e["enforced"] = json!(enforced);
        match detail {
            Detail::Consecutive => e["eject_consecutive_event"] = json!({}),
            Detail::SuccessRate {
                host,
                average,
                threshold,
            } => {
                e["eject_success_rate_event"] = json!({
                    "host_success_rate": host.round() as u32,
                    "cluster_average_success_rate": average.round() as u32,
                    "cluster_success_rate_ejection_threshold": threshold.max(0.0).round() as u32,
                })
            }
            Detail::FailurePercentage { host } => {
                e["eject_failure_percentage_event"] =
                    json!({"host_success_rate": host.round() as u32})
            }
        }
        log.write(&e);
    }

    fn event_base(
        &self,
        cluster: &Cluster,
        host: &Host,
        action: &str,
        last: u64,
    ) -> serde_json::Value {
        let mut e = json!({
            "timestamp": crate::xds::rfc3339(std::time::SystemTime::now()),
            "cluster_name": cluster.name(),
            "upstream_url": host.address.to_string(),
            "action": action,
            "num_ejections": host.outlier.backoff.load(Ordering::Relaxed),
        });
        if last != 0 {
            let secs = self.now_mark().saturating_sub(last) / 1000;
            e["secs_since_last_action"] = json!(secs.to_string());
        }
        e
    }

    /// Brings `host` back (its ejection is over or a health check passed it).
    fn uneject(&self, cluster: &Cluster, host: &Host, why: &str) {
        let o = &host.outlier;
        o.clear_counts();
        host.set_flags(health_flag::FAILED_OUTLIER_CHECK, false);
        let last = o.last_action.swap(self.now_mark(), Ordering::Relaxed);
        tracing::info!(
            cluster = cluster.name(),
            host = %host.address,
            "outlier detection: host unejected{why}"
        );
        if let Some(log) = &self.events {
            // Envoy's UNEJECT events carry the type of the ejection they end; the last
            // ejection's kind is not kept, so the consecutive 5xx type stands in.
            let mut e = self.event_base(cluster, host, "UNEJECT", last);
            e["type"] = json!("CONSECUTIVE_5XX");
            e["enforced"] = json!(true);
            log.write(&e);
        }
    }

    /// One interval: brings back hosts whose ejection time is over, lowers the multiplier
    /// of hosts that stayed in, then runs the success-rate and failure-percentage
    /// detectors on the interval's counts. Returns how many hosts came back.
    pub fn tick(&self, cluster: &Cluster) -> usize {
        let now = self.now_mark();
        let base = self.cfg.base_ejection_time;
        let cap = self.cfg.max_ejection_time.max(base);
        let mut back = 0;
        let hosts = cluster.hosts();
        let mut windows = Vec::with_capacity(hosts.all().len());
        for host in hosts.all() {
            let o = &host.outlier;
            windows.push((
                host,
                o.window_external.swap(0, Ordering::Relaxed),
                o.window_local.swap(0, Ordering::Relaxed),
            ));
            o.success_rate.store(NO_RATE, Ordering::Relaxed);
            o.local_success_rate.store(NO_RATE, Ordering::Relaxed);
            let at = o.ejected_at.load(Ordering::Acquire);
            if at == 0 {
                let b = o.backoff.load(Ordering::Relaxed);
                if b > 0 {
                    o.backoff.store(b - 1, Ordering::Relaxed);
                }
                continue;
            }
            let times = o.backoff.load(Ordering::Relaxed).max(1);
            let ejected_for = base.saturating_mul(times).min(cap)
                + Duration::from_millis(o.jitter_ms.load(Ordering::Relaxed));
            if Duration::from_millis(now.saturating_sub(at)) < ejected_for {
                continue;
            }
            if o.ejected_at
                .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.uneject(cluster, host, "");
                back += 1;
            }
        }
        if back > 0 {
            cluster.hosts_health_changed();
        }
        let ext = windows.iter().map(|(h, e, _)| (*h, *e));
        self.rates(cluster, ext.collect(), false);
        if self.cfg.split_external_local_origin_errors {
            let local = windows.iter().map(|(h, _, l)| (*h, *l));
            self.rates(cluster, local.collect(), true);
        }
        self.stats
            .ejections_active
            .set(ejected_count(cluster.hosts().all()) as i64);
        back
    }

    /// Envoy's success-rate and failure-percentage detectors over one origin's interval
    /// counts (`requests << 32 | successes` per host).
    fn rates(&self, cluster: &Cluster, windows: Vec<(&Arc<Host>, u64)>, local: bool) {
        let c = &self.cfg;
        let out = if local { &self.local } else { &self.external };
        out.average.store(NO_RATE, Ordering::Relaxed);
        out.threshold.store(NO_RATE, Ordering::Relaxed);
        let hosts = windows.len();
        if hosts < c.success_rate_minimum_hosts as usize
            && hosts < c.failure_percentage_minimum_hosts as usize
        {
            return;
        }
        let (sr_volume, fp_volume) = (
            u64::from(c.success_rate_request_volume.max(1)),
            u64::from(c.failure_percentage_request_volume.max(1)),
        );
        let mut sr_hosts = Vec::new();
        let mut fp_hosts = Vec::new();
        let mut sum = 0.0;
        for (host, w) in windows {
            // An ejected host is not measured.
            if host.health_flags() & health_flag::FAILED_OUTLIER_CHECK != 0 {
                continue;
            }
            let (requests, successes) = (w >> 32, w & 0xffff_ffff);
            if requests == 0 {
                continue;
            }
            let r = 100.0 * successes as f64 / requests as f64;
            if requests >= sr_volume {
                sr_hosts.push((host, r));
                sum += r;
                let slot = if local {
                    &host.outlier.local_success_rate
                } else {
                    &host.outlier.success_rate
                };
                slot.store(r.to_bits(), Ordering::Relaxed);
            }
            if requests >= fp_volume {
                fp_hosts.push((host, r));
            }
        }
        if !sr_hosts.is_empty() && sr_hosts.len() >= c.success_rate_minimum_hosts as usize {
            let n = sr_hosts.len() as f64;
            let mean = sum / n;
            let variance = sr_hosts
                .iter()
                .map(|(_, r)| (r - mean).powi(2))
                .sum::<f64>()
                / n;
            let threshold =
                mean - f64::from(c.success_rate_stdev_factor) / 1000.0 * variance.sqrt();
            out.average.store(mean.to_bits(), Ordering::Relaxed);
            out.threshold.store(threshold.to_bits(), Ordering::Relaxed);
            let kind = if local {
                Ejection::LocalOriginSuccessRate
            } else {
                Ejection::SuccessRate
            };
            for (host, r) in &sr_hosts {
                if *r < threshold {
                    let detail = Detail::SuccessRate {
                        host: *r,
                        average: mean,
                        threshold,
                    };
                    self.eject_with(cluster, host, kind, detail);
                }
            }
        }
        if !fp_hosts.is_empty() && fp_hosts.len() >= c.failure_percentage_minimum_hosts as usize {
            let kind = if local {
                Ejection::LocalOriginFailurePercentage
            } else {
                Ejection::FailurePercentage
            };
            for (host, r) in &fp_hosts {
                if 100.0 - r >= f64::from(c.failure_percentage_threshold) {
                    self.eject_with(cluster, host, kind, Detail::FailurePercentage { host: *r });
                }
            }
        }
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
        self.uneject(cluster, host, " by a passing health check");
        self.stats
            .ejections_active
            .set(ejected_count(cluster.hosts().all()) as i64);
        true
    }
}

impl Detector {
    /// The host's ejection to hand to a successor agent: ms since it began, and the
    /// ejections in a row.
    pub fn export(&self, host: &Host) -> Option<(u64, u32)> {
        let o = &host.outlier;
        let at = o.ejected_at.load(Ordering::Acquire);
        (at != 0).then(|| {
            (
                self.now_mark().saturating_sub(at),
                o.backoff.load(Ordering::Relaxed),
            )
        })
    }

    /// Takes over an ejection from the previous agent: it ends when it would have there.
    /// `true` when the host was ejected by it.
    pub fn import(&self, cluster: &Cluster, host: &Host, elapsed_ms: u64, ejections: u32) -> bool {
        let o = &host.outlier;
        let at = self.now_mark().saturating_sub(elapsed_ms).max(1);
        if o.ejected_at
            .compare_exchange(0, at, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        o.backoff.store(ejections.max(1), Ordering::Relaxed);
        host.set_flags(health_flag::FAILED_OUTLIER_CHECK, true);
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
}
