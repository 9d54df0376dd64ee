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
        self.publish_active(cluster);
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
        self.publish_active(cluster);
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

impl Detector {
    /// `ejections_active`, from the hosts' flags.
    fn publish_active(&self, cluster: &Cluster) {
        self.stats
            .ejections_active
            .set(ejected_count(cluster.hosts().all()) as i64);
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
        self.publish_active(cluster);
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
        self.publish_active(cluster);
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
#[path = "outlier_tests.rs"]
mod tests;
