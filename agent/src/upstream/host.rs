//! A host: an immutable identity (address, hostname, priority, locality) and a live state
//! (health flags, weight, counters) that EDS, and later active health checks and outlier
//! detection, change in place. A `Host` survives health and weight changes, so its stats do
//! too; only a change of identity makes a new one.

use crate::config::{HealthStatus, Locality};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Why a host is not (fully) usable, as bits (Envoy's health flags).
pub mod health_flag {
    /// EDS says UNHEALTHY, DRAINING or TIMEOUT.
    pub const FAILED_EDS_HEALTH: u32 = 1 << 0;
    /// EDS says DEGRADED.
    pub const DEGRADED_EDS_HEALTH: u32 = 1 << 1;
    /// Failed its active health check (health checker, next issue).
    pub const FAILED_ACTIVE_HC: u32 = 1 << 2;
    /// Ejected by outlier detection (next issue).
    pub const FAILED_OUTLIER_CHECK: u32 = 1 << 3;
    /// Gone from EDS but kept while active health checking still passes it.
    pub const PENDING_DYNAMIC_REMOVAL: u32 = 1 << 4;
    /// New to a health-checked cluster: its first check has not run yet.
    pub const PENDING_ACTIVE_HC: u32 = 1 << 5;

    pub const FAILED: u32 = FAILED_EDS_HEALTH | FAILED_ACTIVE_HC | FAILED_OUTLIER_CHECK;
    pub const DEGRADED: u32 = DEGRADED_EDS_HEALTH;
}

/// The coarse health the load balancer acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

/// What happened to one connection or request attempt to a host: what outlier detection and
/// health reporting consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A connection was established (for HTTP, the response says how the request went).
    ConnectSuccess,
    /// A TCP proxy's connection was established: for it, the final outcome (outlier
    /// detection counts it as a success).
    ConnectSuccessFinal,
    ConnectFailure,
    Timeout,
    /// The upstream reset or closed the connection abnormally.
    Reset,
    /// An HTTP response status (5xx count as errors).
    HttpStatus(u16),
}

/// Per-host counters shown by `/clusters`.
#[derive(Debug, Default)]
pub struct HostStats {
    pub cx_active: AtomicU64,
    /// Connection slots taken (opening or open) under `per_host_thresholds`.
    pub cx_slots: AtomicU64,
    pub cx_total: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_timeout: AtomicU64,
    /// HTTP requests sent to the host (and in flight).
    pub rq_total: AtomicU64,
    pub rq_active: AtomicU64,
}

#[derive(Debug)]
pub struct Host {
    pub address: SocketAddr,
    pub hostname: String,
    pub priority: u32,
    pub locality: Locality,
    flags: AtomicU32,
    /// The EDS status as given (for `/clusters`), a `HealthStatus` index.
    eds_status: AtomicU8,
    weight: AtomicU32,
    /// Its locality's `load_balancing_weight` (0: none given).
    locality_weight: AtomicU32,
    /// EDS's canary flag (`metadata.filter_metadata."envoy.lb".canary`).
    canary: AtomicBool,
    /// Used since the last ORIGINAL_DST cleanup pass.
    used: AtomicBool,
    /// Shared with the host's connections, which must not keep the host itself alive.
    pub stats: std::sync::Arc<HostStats>,
    /// Pooled HTTP connections to this host, per worker.
    pub(crate) pool: super::pool::HostPool,
    /// Outlier detection's counters and ejection state.
    pub(crate) outlier: super::outlier::HostOutlier,
    /// The health checker's counts.
    pub(crate) health: super::health::HostHealth,
    /// Wakes the TCP proxy connections to this host that must close
    /// (`close_connections_on_host_health_failure`).
    close_all: tokio::sync::Notify,
    /// The cluster's connection-pool slot (`max_connection_pools`), taken on first use and
    /// held as long as the host.
    pool_slot: std::sync::OnceLock<super::Slot>,
    /// What ALPN negotiated with it (`auto_config` clusters): 0 not yet known, 1 HTTP/1.1,
    /// 2 HTTP/2.
    alpn: AtomicU8,
    /// Its `filter_metadata."envoy.transport_socket_match"` (the cluster's
    /// `transport_socket_matches` look at it), replaced when discovery changes it.
    socket_match: arc_swap::ArcSwap<Vec<(String, String)>>,
    /// `auto_sni` clusters: a pool per SNI (a connection's SNI is its request's host), at
    /// most `MAX_SNI_POOLS`; beyond, connections for other names are not pooled.
    sni_pools: std::sync::Mutex<Vec<(std::sync::Arc<str>, std::sync::Arc<super::pool::HostPool>)>>,
    /// One ALPN probe at a time (`auto_config`): the others wait for its answer.
    pub(crate) alpn_probe: tokio::sync::Mutex<()>,
    /// When the host's slow start began (added to a cluster that had hosts, or passed its
    /// first health check), with `slow_start_config`.
    slow_start: std::sync::Mutex<Option<tokio::time::Instant>>,
}

const STATUSES: [HealthStatus; 6] = [
    HealthStatus::Unknown,
    HealthStatus::Healthy,
    HealthStatus::Unhealthy,
    HealthStatus::Draining,
    HealthStatus::Timeout,
    HealthStatus::Degraded,
];

fn status_index(s: HealthStatus) -> u8 {
    STATUSES.iter().position(|x| *x == s).unwrap_or(0) as u8
}

fn eds_flags(s: HealthStatus) -> u32 {
    match s {
        HealthStatus::Unknown | HealthStatus::Healthy => 0,
        HealthStatus::Degraded => health_flag::DEGRADED_EDS_HEALTH,
        HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout => {
            health_flag::FAILED_EDS_HEALTH
        }
    }
}

/// Most per-SNI pools a host keeps (`auto_sni`).
const MAX_SNI_POOLS: usize = 32;

const EDS_FLAGS: u32 = health_flag::FAILED_EDS_HEALTH | health_flag::DEGRADED_EDS_HEALTH;

impl Host {
    pub fn new(
        address: SocketAddr,
        hostname: String,
        priority: u32,
        locality: Locality,
        weight: u32,
        eds: HealthStatus,
    ) -> Self {
        Self {
            address,
            hostname,
            priority,
            locality,
            flags: AtomicU32::new(eds_flags(eds)),
            eds_status: AtomicU8::new(status_index(eds)),
            weight: AtomicU32::new(weight.max(1)),
            locality_weight: AtomicU32::new(0),
            canary: AtomicBool::new(false),
            used: AtomicBool::new(true),
            stats: Default::default(),
            pool: Default::default(),
            outlier: Default::default(),
            health: Default::default(),
            close_all: tokio::sync::Notify::new(),
            slow_start: std::sync::Mutex::new(None),
            pool_slot: std::sync::OnceLock::new(),
            alpn: AtomicU8::new(0),
            socket_match: arc_swap::ArcSwap::from_pointee(Vec::new()),
            sni_pools: std::sync::Mutex::new(Vec::new()),
            alpn_probe: tokio::sync::Mutex::new(()),
        }
    }

    /// What ALPN negotiated with the host, once known: `Some(true)` for `h2`.
    pub fn speaks_h2(&self) -> Option<bool> {
        match self.alpn.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v == 2),
        }
    }

    pub fn set_speaks_h2(&self, h2: bool) {
        self.alpn.store(if h2 { 2 } else { 1 }, Ordering::Relaxed);
    }

    /// Whether the host may have a connection pool: it has one, or takes one of the
    /// cluster's `max_connection_pools` slots now (once; a lost race gives the extra back).
    pub fn has_pool(&self, breakers: &std::sync::Arc<super::Breakers>) -> bool {
        if self.pool_slot.get().is_some() {
            return true;
        }
        match breakers.try_acquire(super::Priority::Default, super::Resource::ConnectionPools) {
            Some(slot) => {
                let _ = self.pool_slot.set(slot);
                true
            }
            None => self.pool_slot.get().is_some(),
        }
    }

    /// Starts (or starts again) the host's slow start window now.
    pub fn start_slow_start(&self) {
        *self.slow_start.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(tokio::time::Instant::now());
    }

    /// When its slow start began, if it did.
    pub fn slow_start_since(&self) -> Option<tokio::time::Instant> {
        *self.slow_start.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the host's connections: TCP proxy connections at once, pooled HTTP ones
    /// gracefully (`HostPool::drain`).
    pub fn close_connections(&self) {
        self.drain_pools();
        self.close_all.notify_waiters();
    }

    /// Drains the host's pools (its own and its per-SNI ones).
    pub fn drain_pools(&self) {
        self.pool.drain();
        let pools = self.sni_pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.iter().for_each(|(_, p)| p.drain());
    }

    /// Resolves when `close_connections` is called (after this future is first polled).
    pub async fn closing(&self) {
        self.close_all.notified().await
    }

    /// Same identity: the same host, whatever its health or weight.
    pub fn same_identity(&self, other: &Host) -> bool {
        self.address == other.address
            && self.priority == other.priority
            && self.hostname == other.hostname
            && self.locality == other.locality
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// With its locality's `load_balancing_weight` (EDS or `load_assignment`).
    pub fn with_locality_weight(self, w: Option<u32>) -> Self {
        self.locality_weight
            .store(w.unwrap_or(0), Ordering::Relaxed);
        self
    }

    /// The pool for connections with `sni` (`auto_sni`): its own per name, `None` for the
    /// host's pool (no SNI of the request's own).
    pub fn sni_pool(&self, sni: &std::sync::Arc<str>) -> std::sync::Arc<super::pool::HostPool> {
        let mut pools = self.sni_pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, p)) = pools.iter().find(|(n, _)| n == sni) {
            return p.clone();
        }
        let p = std::sync::Arc::new(super::pool::HostPool::default());
        if pools.len() < MAX_SNI_POOLS {
            pools.push((sni.clone(), p.clone()));
        }
        p
    }

    /// With the metadata transport socket matches look at.
    pub fn with_socket_match(self, m: Vec<(String, String)>) -> Self {
        self.socket_match.store(std::sync::Arc::new(m));
        self
    }

    /// The metadata transport socket matches look at, now.
    pub fn socket_match(&self) -> std::sync::Arc<Vec<(String, String)>> {
        self.socket_match.load_full()
    }

    /// Takes new metadata from discovery.
    pub(crate) fn set_socket_match(&self, m: std::sync::Arc<Vec<(String, String)>>) {
        self.socket_match.store(m);
    }

    /// With EDS's canary flag.
    pub fn with_canary(self, canary: bool) -> Self {
        self.canary.store(canary, Ordering::Relaxed);
        self
    }

    pub fn canary(&self) -> bool {
        self.canary.load(Ordering::Relaxed)
    }

    /// Takes a new canary flag from discovery.
    pub(crate) fn set_canary(&self, canary: bool) {
        self.canary.store(canary, Ordering::Relaxed);
    }

    /// Its locality's `load_balancing_weight`; 0 when none was given.
    pub fn locality_weight(&self) -> u32 {
        self.locality_weight.load(Ordering::Relaxed)
    }

    pub fn eds_health_status(&self) -> HealthStatus {
        STATUSES[self.eds_status.load(Ordering::Relaxed) as usize % STATUSES.len()]
    }

    pub fn health_flags(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }

    pub fn health(&self) -> Health {
        let f = self.health_flags();
        if f & health_flag::FAILED != 0 {
            Health::Unhealthy
        } else if f & health_flag::DEGRADED != 0 {
            Health::Degraded
        } else {
            Health::Healthy
        }
    }

    /// Left out of balancing altogether, even in panic, and not counted in a level's size:
    /// draining by EDS (as Envoy), or waiting for its first active health check (Envoy's
    /// `ignore_new_hosts_until_first_hc`, always on here).
    pub fn excluded(&self) -> bool {
        self.health_flags() & health_flag::PENDING_ACTIVE_HC != 0
            || self.eds_health_status() == HealthStatus::Draining
    }

    /// Whether the load balancer may pick it.
    pub fn routable(&self) -> bool {
        self.health() != Health::Unhealthy
    }

    /// Sets or clears flag bits; returns whether the coarse health changed (the cluster then
    /// rebuilds its balancer over the same hosts).
    pub fn set_flags(&self, bits: u32, on: bool) -> bool {
        let before = self.health();
        if on {
            self.flags.fetch_or(bits, Ordering::AcqRel);
        } else {
            self.flags.fetch_and(!bits, Ordering::AcqRel);
        }
        before != self.health()
    }

    /// Takes EDS's weight and status; returns whether anything the balancer uses changed.
    pub(crate) fn update_from_eds(
        &self,
        weight: u32,
        locality_weight: u32,
        eds: HealthStatus,
    ) -> bool {
        let weight = weight.max(1);
        let old_locality_weight = self
            .locality_weight
            .swap(locality_weight, Ordering::Relaxed);
        let old_weight = self.weight.swap(weight, Ordering::Relaxed);
        let old_status = self.eds_status.swap(status_index(eds), Ordering::Relaxed);
        let want = eds_flags(eds);
        let old_flags = self
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                Some((f & !EDS_FLAGS) | want)
            })
            .unwrap_or_default();
        old_weight != weight
            || old_locality_weight != locality_weight
            || old_status != status_index(eds)
            || old_flags & EDS_FLAGS != want
    }

    /// The one reporting hook: every connection or request attempt's result lands here.
    pub fn record(&self, outcome: Outcome) {
        let s = &self.stats;
        // Every request attempt (HTTP) counts in rq_total, answered or not.
        if matches!(
            outcome,
            Outcome::Timeout | Outcome::Reset | Outcome::HttpStatus(_)
        ) {
            s.rq_total.fetch_add(1, Ordering::Relaxed);
        }
        match outcome {
            // Counted by cx_total; detectors consume it.
            Outcome::ConnectSuccess | Outcome::ConnectSuccessFinal => 0,
            Outcome::ConnectFailure => s.cx_connect_fail.fetch_add(1, Ordering::Relaxed),
            Outcome::Timeout => {
                s.rq_timeout.fetch_add(1, Ordering::Relaxed);
                s.rq_error.fetch_add(1, Ordering::Relaxed)
            }
            Outcome::Reset => s.rq_error.fetch_add(1, Ordering::Relaxed),
            Outcome::HttpStatus(code) if code >= 500 => s.rq_error.fetch_add(1, Ordering::Relaxed),
            Outcome::HttpStatus(_) => s.rq_success.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub(crate) fn touch(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Clears the used mark; returns whether it was set.
    pub(crate) fn take_used(&self) -> bool {
        self.used.swap(false, Ordering::Relaxed)
    }

    /// Envoy's `/clusters` health_flags: `healthy`, or each reason as `/name`.
    pub fn health_flags_string(&self) -> String {
        const NAMES: [(u32, &str); 6] = [
            (health_flag::FAILED_ACTIVE_HC, "/failed_active_hc"),
            (health_flag::PENDING_ACTIVE_HC, "/pending_active_hc"),
            (health_flag::FAILED_OUTLIER_CHECK, "/failed_outlier_check"),
            (health_flag::FAILED_EDS_HEALTH, "/failed_eds_health"),
            (health_flag::DEGRADED_EDS_HEALTH, "/degraded_eds_health"),
            (
                health_flag::PENDING_DYNAMIC_REMOVAL,
                "/pending_dynamic_removal",
            ),
        ];
        let f = self.health_flags();
        if f == 0 {
            return "healthy".to_string();
        }
        NAMES
            .iter()
            .filter(|(bit, _)| f & bit != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(status: HealthStatus) -> Host {
        Host::new(
            "127.0.0.1:1".parse().unwrap(),
            String::new(),
            0,
            Locality::default(),
            1,
            status,
        )
    }

    #[test]
    fn eds_status_maps_to_flags_and_detector_flags_combine() {
        let h = host(HealthStatus::Healthy);
        assert_eq!(h.health(), Health::Healthy);
        assert!(h.update_from_eds(1, 0, HealthStatus::Degraded));
        assert_eq!(h.health(), Health::Degraded);
        assert!(h.set_flags(health_flag::FAILED_OUTLIER_CHECK, true));
        assert_eq!(h.health(), Health::Unhealthy);
        // EDS turning healthy does not undo an ejection.
        h.update_from_eds(1, 0, HealthStatus::Healthy);
        assert_eq!(h.health(), Health::Unhealthy);
        assert!(h.set_flags(health_flag::FAILED_OUTLIER_CHECK, false));
        assert!(h.routable());
        assert!(!h.update_from_eds(1, 0, HealthStatus::Healthy), "no change");
        assert!(
            h.update_from_eds(5, 0, HealthStatus::Healthy),
            "weight change"
        );
        assert_eq!(h.weight(), 5);
        assert_eq!(host(HealthStatus::Draining).health(), Health::Unhealthy);
    }

    #[test]
    fn outcomes_are_counted() {
        let h = host(HealthStatus::Unknown);
        for o in [
            Outcome::ConnectSuccess,
            Outcome::HttpStatus(200),
            Outcome::HttpStatus(503),
            Outcome::Timeout,
            Outcome::Reset,
            Outcome::ConnectFailure,
        ] {
            h.record(o);
        }
        let s = &h.stats;
        assert_eq!(s.rq_success.load(Ordering::Relaxed), 1);
        assert_eq!(s.rq_error.load(Ordering::Relaxed), 3);
        assert_eq!(s.rq_timeout.load(Ordering::Relaxed), 1);
        assert_eq!(s.cx_connect_fail.load(Ordering::Relaxed), 1);
    }
}
