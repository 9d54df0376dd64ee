//! Clusters and their hosts: membership (static or DNS), load balancing, and connecting with
//! timeouts and stats. The data path reads a cluster's host set through an `ArcSwap` and picks
//! a host with atomics only; DNS refresh builds a new host set off the data path.

pub mod breaker;
mod carry;
mod dns;
mod grpc_health;
mod hash_lb;
pub mod health;
mod host;
mod lb;
pub mod locality;
mod original_dst;
pub mod outlier;
pub mod pool;

pub use breaker::{Breakers, Priority, Resource, Slot};
pub use host::{health_flag, Health, Host, HostStats, Outcome};
pub use lb::HostSet;
pub use locality::{Balancing, LbStats, Zones};

use crate::config::{self, DiscoveryType};
use crate::stats::{Counter, Gauge, Histogram, Store};
use crate::transport::Stream;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::TcpStream;

/// What a pick may take into account: a hash key (RING_HASH/MAGLEV), the hosts an earlier
/// attempt of the same request or connection already tried, the attempt number, and the
/// original destination (ORIGINAL_DST clusters).
#[derive(Debug, Default)]
pub struct LbContext<'a> {
    pub hash_key: Option<u64>,
    pub tried: &'a [Arc<Host>],
    pub attempt: u32,
    pub original_dst: Option<SocketAddr>,
}

/// Envoy's `cluster.<name>.*` stats for what the L4 core does.
#[derive(Debug)]
pub struct ClusterStats {
    scope: crate::stats::Scope,
    pub upstream_cx_total: Arc<Counter>,
    pub upstream_cx_active: Arc<Gauge>,
    pub upstream_cx_connect_fail: Arc<Counter>,
    pub upstream_cx_connect_timeout: Arc<Counter>,
    pub upstream_cx_connect_attempts_exceeded: Arc<Counter>,
    pub upstream_cx_none_healthy: Arc<Counter>,
    /// A connection the circuit breaker's `max_connections` did not allow.
    pub upstream_cx_overflow: Arc<Counter>,
    pub upstream_cx_pool_overflow: Arc<Counter>,
    pub upstream_cx_destroy: Arc<Counter>,
    pub upstream_cx_destroy_local: Arc<Counter>,
    pub upstream_cx_destroy_remote: Arc<Counter>,
    pub upstream_cx_rx_bytes_total: Arc<Counter>,
    pub upstream_cx_tx_bytes_total: Arc<Counter>,
    pub upstream_cx_connect_ms: Arc<Histogram>,
    pub upstream_cx_length_ms: Arc<Histogram>,
    pub membership_total: Arc<Gauge>,
    pub membership_healthy: Arc<Gauge>,
    pub membership_change: Arc<Counter>,
    pub update_attempt: Arc<Counter>,
    pub update_success: Arc<Counter>,
    pub update_failure: Arc<Counter>,
    /// `lb_healthy_panic`, `lb_zone_*`, `lb_local_cluster_not_ok`.
    pub lb: LbStats,
}

impl ClusterStats {
    fn new(store: &Store, name: &str) -> Self {
        let s = store.tagged_scope("cluster", "envoy_cluster_name", name);
        Self {
            scope: s.clone(),
            upstream_cx_total: s.counter("upstream_cx_total"),
            upstream_cx_active: s.gauge("upstream_cx_active"),
            upstream_cx_connect_fail: s.counter("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: s.counter("upstream_cx_connect_timeout"),
            upstream_cx_connect_attempts_exceeded: s
                .counter("upstream_cx_connect_attempts_exceeded"),
            upstream_cx_none_healthy: s.counter("upstream_cx_none_healthy"),
            upstream_cx_overflow: s.counter("upstream_cx_overflow"),
            upstream_cx_pool_overflow: s.counter("upstream_cx_pool_overflow"),
            upstream_cx_destroy: s.counter("upstream_cx_destroy"),
            upstream_cx_destroy_local: s.counter("upstream_cx_destroy_local"),
            upstream_cx_destroy_remote: s.counter("upstream_cx_destroy_remote"),
            upstream_cx_rx_bytes_total: s.counter("upstream_cx_rx_bytes_total"),
            upstream_cx_tx_bytes_total: s.counter("upstream_cx_tx_bytes_total"),
            upstream_cx_connect_ms: s.histogram("upstream_cx_connect_ms"),
            upstream_cx_length_ms: s.histogram("upstream_cx_length_ms"),
            membership_total: s.gauge("membership_total"),
            membership_healthy: s.gauge("membership_healthy"),
            membership_change: s.counter("membership_change"),
            update_attempt: s.counter("update_attempt"),
            update_success: s.counter("update_success"),
            update_failure: s.counter("update_failure"),
            lb: LbStats::new(&s),
        }
    }
}

fn balancing(config: &config::Cluster, zones: &Zones) -> Balancing {
    let zone_aware = matches!(
        config.common_lb.locality,
        config::LocalityLb::ZoneAware { .. }
    );
    Balancing {
        policy: config.lb_policy,
        common: config.common_lb.clone(),
        local: zone_aware.then(|| zones.current()).flatten(),
    }
}

/// One cluster: its config, current hosts and stats.
#[derive(Debug)]
pub struct Cluster {
    pub config: Arc<config::Cluster>,
    pub stats: ClusterStats,
    /// Circuit breakers (Envoy's defaults when not configured).
    pub breakers: Arc<Breakers>,
    /// Outlier detection, when configured.
    pub(crate) outlier: Option<outlier::Detector>,
    /// Active health checking, when configured.
    pub(crate) health: Option<health::Checker>,
    hosts: ArcSwap<HostSet>,
    /// Round-robin cursors, one per worker (own cache line): no shared hot atomic.
    rr_cursors: Box<[Cursor]>,
    /// ORIGINAL_DST: hosts by destination, reused across connections.
    original_dst: Option<original_dst::HostCache>,
    connector: Connector,
    /// TLS origination (failing connects while its secrets have not loaded).
    tls: Option<Arc<crate::tls::TlsConnector>>,
    /// `transport_socket_matches`: (the match, its TLS client or `None` for plain TCP).
    tls_matches: Vec<(
        config::tls::TransportSocketMatch,
        Option<Arc<crate::tls::TlsConnector>>,
    )>,
    /// The node's zone and the local cluster, for zone-aware balancing.
    zones: Arc<Zones>,
    /// Serialises host-set replacements (EDS, DNS, health changes); readers never take it.
    update: Mutex<()>,
    /// EDS clusters warm until their first endpoints arrive.
    warming: AtomicBool,
    /// Replaced or removed: background work for it (DNS refresh) stops.
    retired: AtomicBool,
    /// HTTP request stats, created when an HTTP route first sends here.
    http_stats: std::sync::OnceLock<crate::http::stats::ClusterHttpStats>,
}

/// A round-robin cursor on a cache line of its own.
#[derive(Debug)]
#[repr(align(64))]
struct Cursor(AtomicU64);

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no healthy upstream host in cluster {0}")]
    NoHealthyHost(String),
    #[error("cluster {0}: the circuit breaker's max_connections is reached")]
    Overflow(String),
    #[error("ORIGINAL_DST cluster {0}: the connection has no original destination")]
    NoOriginalDestination(String),
    #[error("connect to {addr} timed out after {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u128 },
    #[error("connect to {addr} failed: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (`reason` is Envoy's transport failure reason).
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
}

/// Why opening a transport to a host failed.
#[derive(Debug)]
pub(crate) enum OpenError {
    Connect(std::io::Error),
    Tls(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Connect(e) => write!(f, "{e}"),
            OpenError::Tls(r) => write!(f, "TLS handshake failed: {r}"),
        }
    }
}

/// An established upstream connection.
pub struct Upstream {
    pub stream: Stream,
    pub host: Arc<Host>,
    pub guard: ConnGuard,
}

/// The bookkeeping of one upstream connection: dropping it updates the host and cluster
/// gauges. It holds the counters, not the host or cluster, so a pooled connection does not
/// keep either alive (the pool lives in the host).
pub struct ConnGuard {
    /// The circuit breaker's connection slot, given back when the connection closes.
    _slot: Slot,
    host: Arc<HostStats>,
    active: Arc<Gauge>,
    destroy: Arc<Counter>,
    length: Arc<Histogram>,
    started: Instant,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.host.cx_active.fetch_sub(1, Ordering::Relaxed);
        self.active.dec();
        self.destroy.inc();
        self.length.record(self.started.elapsed());
    }
}

impl Cluster {
    fn new(config: Arc<config::Cluster>, env: &manager::Env) -> Arc<Self> {
        let (store, connector) = (&env.store, env.connector.clone());
        let outlier_log = env.outlier_log.clone();
        let stats = ClusterStats::new(store, &config.name);
        let breakers = Breakers::new(config.circuit_breakers.as_ref(), &stats.scope);
        let outlier = config
            .outlier_detection
            .as_ref()
            .map(|o| outlier::Detector::new(o, &stats.scope, outlier_log));
        let health = config
            .health_check
            .as_ref()
            .map(|h| health::Checker::new(h, &stats.scope, store));
        let balancing = balancing(&config, &env.zones);
        let hosts = match config.discovery {
            DiscoveryType::Static => HostSet::hosts_of(&config.localities),
            // Filled by the first DNS resolution or EDS update.
            _ => Vec::new(),
        };
        if let Some(h) = &health {
            // Not routed until their first check passes.
            hosts.iter().for_each(|host| h.new_host(host));
        }
        let hosts = HostSet::build(&balancing, hosts);
        let warming = config.discovery == DiscoveryType::Eds;
        let original_dst =
            (config.discovery == DiscoveryType::OriginalDst).then(original_dst::HostCache::default);
        let tls = config.tls.as_ref().map(|t| {
            let control_plane = env.ads_cluster.as_deref() == Some(config.name.as_str());
            // The cluster's upstream_http_protocol_options ask the same as the context's
            // auto_host_sni and auto_sni_san_validation.
            let mut t = t.clone();
            t.auto_host_sni |= config.http.auto_sni;
            t.auto_sni_san_validation |= config.http.auto_san_validation;
            crate::tls::TlsConnector::new(
                &t,
                &env.secrets,
                crate::tls::SslStats::new(&stats.scope),
                control_plane,
                format!("cluster \"{}\"", config.name),
            )
        });
        let tls_matches = config
            .tls_matches
            .iter()
            .map(|m| {
                let connector = m.tls.as_ref().map(|t| {
                    crate::tls::TlsConnector::new(
                        t,
                        &env.secrets,
                        crate::tls::SslStats::new(&stats.scope),
                        false,
                        format!("cluster \"{}\" match \"{}\"", config.name, m.name),
                    )
                });
                (m.clone(), connector)
            })
            .collect();
        let c = Arc::new(Self {
            config,
            stats,
            breakers,
            outlier,
            health,
            hosts: ArcSwap::from_pointee(hosts),
            // Worker i starts at host i: the workers do not all begin on the same host.
            rr_cursors: (0..pool::worker_slot().1.max(1))
                .map(|i| Cursor(AtomicU64::new(i as u64)))
                .collect(),
            original_dst,
            connector,
            tls,
            tls_matches,
            zones: env.zones.clone(),
            update: Mutex::new(()),
            warming: AtomicBool::new(warming),
            retired: AtomicBool::new(false),
            http_stats: std::sync::OnceLock::new(),
        });
        c.publish_membership();
        if matches!(
            c.config.common_lb.locality,
            config::LocalityLb::ZoneAware { .. }
        ) {
            c.zones.subscribe(&c);
        }
        c
    }

    /// What a host set of this cluster is balanced by now.
    pub(crate) fn balancing(&self) -> Balancing {
        balancing(&self.config, &self.zones)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The cluster's `upstream_rq_*` stats (created on first use).
    pub fn http_stats(&self) -> &crate::http::stats::ClusterHttpStats {
        self.http_stats
            .get_or_init(|| crate::http::stats::ClusterHttpStats::new(&self.stats.scope))
    }

    /// Waiting for its first endpoints (EDS) or for the SDS secrets of its TLS client.
    pub fn is_warming(&self) -> bool {
        self.warming.load(Ordering::Acquire) || self.tls_clients().any(|t| !t.ready())
    }

    /// Every TLS client of the cluster: its transport socket's and its matches'.
    pub fn tls_clients(&self) -> impl Iterator<Item = &Arc<crate::tls::TlsConnector>> {
        self.tls
            .iter()
            .chain(self.tls_matches.iter().filter_map(|(_, c)| c.as_ref()))
    }

    /// The TLS client for `host` (`None`: plain TCP): the first transport socket match its
    /// metadata satisfies, else the cluster's own.
    fn tls_for(&self, host: &Host) -> Option<&Arc<crate::tls::TlsConnector>> {
        match self
            .tls_matches
            .iter()
            .find(|(m, _)| m.matches(&host.socket_match()))
        {
            Some((_, c)) => c.as_ref(),
            None => self.tls.as_ref(),
        }
    }

    fn warm(&self) {
        self.warming.store(false, Ordering::Release);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Takes over a replaced cluster's hosts (same discovery type, membership from outside).
    fn adopt_hosts(&self, old: &Cluster) {
        let hosts = old.hosts.load();
        if self.health.is_none() {
            hosts.all().iter().for_each(|h| {
                h.set_flags(
                    health_flag::FAILED_ACTIVE_HC | health_flag::PENDING_ACTIVE_HC,
                    false,
                );
            });
        }
        if self.outlier.is_none() {
            // Nothing here would bring an ejected host back.
            hosts.all().iter().for_each(|h| outlier::forget(h));
        }
        self.set_hosts(hosts.all().to_vec());
        if !old.is_warming() {
            self.warm();
        }
    }

    pub fn hosts(&self) -> Arc<HostSet> {
        self.hosts.load_full()
    }

    /// Replaces the host set. Hosts that stay (same identity) keep their `Host`, so their
    /// stats and detector flags; EDS health and weight changes update them in place.
    pub(crate) fn set_hosts(&self, mut hosts: Vec<Arc<Host>>) {
        // Serialised with health-driven rebuilds, so neither stores a rebuild of a stale set.
        let _u = self.update.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.hosts.load();
        old.adopt_into(&mut hosts);
        if self.health.is_some() && !self.config.ignore_health_on_host_removal {
            self.keep_removed_healthy_hosts(&old, &mut hosts);
        }
        // Hosts new to the cluster wait for their first check, and with slow start ramp up
        // (unless they are the cluster's first: those all start together).
        let known: std::collections::HashSet<*const Host> =
            old.all().iter().map(Arc::as_ptr).collect();
        let ramp = self.config.common_lb.slow_start.is_some() && !old.all().is_empty();
        for h in hosts.iter().filter(|h| !known.contains(&Arc::as_ptr(h))) {
            if ramp {
                h.start_slow_start();
            }
            if let Some(c) = &self.health {
                c.new_host(h);
            }
        }
        // The balancer is built once, over the hosts' state as it is now.
        let new = HostSet::build(&self.balancing(), hosts);
        let changed = !new.same_members(&old);
        if changed {
            // Hosts that left: no new picks (they are not in the new set) and their pooled
            // connections drain; TCP proxy connections to them keep flowing.
            let staying: std::collections::HashSet<*const Host> =
                new.all().iter().map(Arc::as_ptr).collect();
            old.all()
                .iter()
                .filter(|h| !staying.contains(&Arc::as_ptr(h)))
                .for_each(|h| h.drain_pools());
        }
        self.hosts.store(Arc::new(new));
        if changed {
            self.stats.membership_change.inc();
        }
        self.publish_membership();
        drop(_u);
        self.tell_zones();
    }

    /// Envoy's eventual consistency between discovery and health checking: a host that
    /// discovery dropped but that passes its checks stays (routed, flagged
    /// `/pending_dynamic_removal`) until it fails one. One that comes back loses the flag.
    fn keep_removed_healthy_hosts(&self, old: &HostSet, new: &mut Vec<Arc<Host>>) {
        let present: std::collections::HashSet<*const Host> = new.iter().map(Arc::as_ptr).collect();
        let mut kept = Vec::new();
        for h in old.all() {
            if present.contains(&Arc::as_ptr(h)) {
                h.set_flags(health_flag::PENDING_DYNAMIC_REMOVAL, false);
            } else if h.health_flags() & health_flag::FAILED_ACTIVE_HC == 0 {
                h.set_flags(health_flag::PENDING_DYNAMIC_REMOVAL, true);
                kept.push(h.clone());
            }
        }
        new.extend(kept);
    }

    /// A host pending removal failed its health check: it goes now.
    pub(crate) fn remove_pending_host(&self, host: &Host) {
        let _u = self.update.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.hosts.load();
        let rest: Vec<Arc<Host>> = current
            .all()
            .iter()
            .filter(|h| !std::ptr::eq(Arc::as_ptr(h), host))
            .cloned()
            .collect();
        if rest.len() == current.all().len() {
            return;
        }
        host.drain_pools();
        self.hosts
            .store(Arc::new(HostSet::build(&self.balancing(), rest)));
        self.stats.membership_change.inc();
        self.publish_membership();
        drop(_u);
        self.tell_zones();
    }

    fn publish_membership(&self) {
        let h = self.hosts.load();
        self.stats.membership_total.set(h.all().len() as i64);
        self.stats
            .membership_healthy
            .set(h.all().iter().filter(|h| h.routable()).count() as i64);
    }

    /// Rebuilds the balancer over the same hosts after a host's health flags changed (an
    /// active health check or outlier detection flipped it).
    pub fn hosts_health_changed(&self) {
        let _u = self.update.lock().unwrap_or_else(|p| p.into_inner());
        let set = HostSet::build(&self.balancing(), self.hosts.load().all().to_vec());
        self.hosts.store(Arc::new(set));
        self.publish_membership();
        drop(_u);
        self.tell_zones();
    }

    /// The local cluster (`cluster_manager.local_cluster_name`) tells the zone-aware
    /// clusters what it looks like now.
    fn tell_zones(&self) {
        if self.zones.is_local_cluster(self.name()) && !self.is_retired() {
            self.zones.local_hosts_changed(self.hosts.load().all());
        }
    }

    /// Picks a host: by the LB policy, or for ORIGINAL_DST the (cached) host of the
    /// connection's original destination. Counts `upstream_cx_none_healthy` when none.
    pub fn pick(&self, ctx: &LbContext) -> Result<Arc<Host>, ConnectError> {
        if let Some(cache) = &self.original_dst {
            let Some(addr) = ctx.original_dst else {
                self.stats.upstream_cx_none_healthy.inc();
                return Err(ConnectError::NoOriginalDestination(
                    self.config.name.clone(),
                ));
            };
            return Ok(cache.get_or_insert(addr));
        }
        let (worker, _) = pool::worker_slot();
        let cursor = &self.rr_cursors[worker % self.rr_cursors.len()].0;
        match self.hosts.load().pick(cursor, ctx, &self.stats.lb) {
            Some(h) => Ok(h),
            None => {
                self.stats.upstream_cx_none_healthy.inc();
                Err(ConnectError::NoHealthyHost(self.config.name.clone()))
            }
        }
    }

    fn publish_original_dst(&self, cache: &original_dst::HostCache) {
        let _p = cache.publish.lock().unwrap_or_else(|p| p.into_inner());
        self.set_hosts(cache.hosts());
    }

    /// ORIGINAL_DST: forgets hosts unused since the last pass (Envoy's cleanup_interval).
    fn cleanup_original_dst(&self) {
        if let Some(cache) = &self.original_dst {
            if cache.sweep() {
                self.publish_original_dst(cache);
            }
        }
    }

    /// The one outcome hook for this cluster's hosts (the TCP proxy and the router):
    /// per-host counters, and outlier detection (which may eject the host).
    pub fn report(&self, host: &Host, outcome: Outcome) {
        host.record(outcome);
        if let Some(d) = &self.outlier {
            for kind in d.put(host, outcome).into_iter().flatten() {
                d.eject(self, host, kind);
            }
        }
    }

    /// Connects to `host` within `connect_timeout` if the circuit breaker allows another
    /// connection (default priority), recording stats and the outcome.
    pub async fn connect(self: &Arc<Self>, host: Arc<Host>) -> Result<Upstream, ConnectError> {
        if !host.has_pool(&self.breakers) {
            self.stats.upstream_cx_pool_overflow.inc();
            return Err(ConnectError::Overflow(self.config.name.clone()));
        }
        let Some(slot) = self
            .breakers
            .try_acquire_connection(Priority::Default, &host)
        else {
            self.stats.upstream_cx_overflow.inc();
            return Err(ConnectError::Overflow(self.config.name.clone()));
        };
        self.connect_with(host, slot, &[], None).await
    }

    /// A transport to `addr`: the TCP (or in-memory) stream, with TLS when the cluster
    /// originates it.
    /// `sni`: the request's host, for `auto_sni` clusters.
    pub(crate) async fn open(
        &self,
        host: &Host,
        alpn: &'static [&'static str],
        sni: Option<&str>,
    ) -> Result<Stream, OpenError> {
        let addr = host.address;
        let stream = self
            .connector
            .connect(addr)
            .await
            .map_err(OpenError::Connect)?;
        match self.tls_for(host) {
            None => Ok(stream),
            Some(tls) => match stream {
                Stream::Tcp(tcp) => tls
                    .connect(tcp, addr.ip(), alpn, sni)
                    .await
                    .map_err(|e| OpenError::Tls(e.to_string())),
                _ => Err(OpenError::Tls("TLS needs a TCP connection".into())),
            },
        }
    }

    /// `auto_config`: learns which protocol `host` speaks, by a TLS connection offering `h2`
    /// and `http/1.1` (once per host, one probe at a time; without TLS, HTTP/1.1). A failed
    /// probe leaves it unknown and is the attempt's connect failure (counted once).
    pub async fn learn_protocol(self: &Arc<Self>, host: &Arc<Host>) -> Result<(), ConnectError> {
        if host.speaks_h2().is_some() {
            return Ok(());
        }
        if self.tls_for(host).is_none() {
            host.set_speaks_h2(false);
            return Ok(());
        }
        let _probe = host.alpn_probe.lock().await;
        if host.speaks_h2().is_some() {
            return Ok(());
        }
        let Some(slot) = self
            .breakers
            .try_acquire_connection(Priority::Default, host)
        else {
            self.stats.upstream_cx_overflow.inc();
            return Err(ConnectError::Overflow(self.config.name.clone()));
        };
        let up = self
            .connect_with(host.clone(), slot, &["h2", "http/1.1"], None)
            .await?;
        host.set_speaks_h2(up.stream.alpn() == Some(b"h2".as_slice()));
        Ok(())
    }

    /// Whether HTTP requests set the SNI (`auto_host_sni`, `auto_sni`): their connections
    /// are then pooled per name.
    pub fn auto_sni(&self) -> bool {
        self.config.http.auto_sni || self.config.tls.as_ref().is_some_and(|t| t.auto_host_sni)
    }

    /// The cluster's TLS client, when it originates TLS and its configuration loaded.
    pub fn tls(&self) -> Option<&Arc<crate::tls::TlsConnector>> {
        self.tls.as_ref()
    }

    /// Connects to `host` with a connection slot already taken. `alpn`: the protocols the
    /// connection may speak (`h2`, `http/1.1`), offered over TLS when the cluster's context
    /// names none (Envoy's ALPN fallback of its HTTP pools).
    pub async fn connect_with(
        self: &Arc<Self>,
        host: Arc<Host>,
        slot: Slot,
        alpn: &'static [&'static str],
        sni: Option<&str>,
    ) -> Result<Upstream, ConnectError> {
        let s = &self.stats;
        s.upstream_cx_total.inc();
        host.stats.cx_total.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let timeout = self.config.connect_timeout;
        // The connect timeout covers the TLS handshake too, as in Envoy.
        match tokio::time::timeout(timeout, self.open(&host, alpn, sni)).await {
            Err(_) => {
                s.upstream_cx_connect_timeout.inc();
                s.upstream_cx_connect_fail.inc();
                self.report(&host, Outcome::ConnectFailure);
                Err(ConnectError::Timeout {
                    addr: host.address,
                    timeout_ms: timeout.as_millis(),
                })
            }
            Ok(Err(e)) => {
                s.upstream_cx_connect_fail.inc();
                self.report(&host, Outcome::ConnectFailure);
                Err(match e {
                    OpenError::Connect(source) => ConnectError::Io {
                        addr: host.address,
                        source,
                    },
                    OpenError::Tls(reason) => ConnectError::Tls {
                        addr: host.address,
                        reason,
                    },
                })
            }
            Ok(Ok(stream)) => {
                s.upstream_cx_connect_ms.record(started.elapsed());
                stream.set_nodelay();
                s.upstream_cx_active.inc();
                host.stats.cx_active.fetch_add(1, Ordering::Relaxed);
                self.report(&host, Outcome::ConnectSuccess);
                Ok(Upstream {
                    stream,
                    guard: ConnGuard {
                        _slot: slot,
                        host: host.stats.clone(),
                        active: s.upstream_cx_active.clone(),
                        destroy: s.upstream_cx_destroy.clone(),
                        length: s.upstream_cx_length_ms.clone(),
                        started: Instant::now(),
                    },
                    host,
                })
            }
        }
    }
}

/// How upstream connections are made: TCP, or a function returning in-memory streams (unit
/// tests of retries and timeouts without sockets; paused time works with it).
#[derive(Clone, Default)]
pub enum Connector {
    #[default]
    Tcp,
    Memory(Arc<dyn Fn(SocketAddr) -> MemoryConnect + Send + Sync>),
}

pub type MemoryConnect =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Stream>> + Send>>;

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connector::Tcp => "Tcp",
            Connector::Memory(_) => "Memory",
        })
    }
}

impl Connector {
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Stream> {
        match self {
            Connector::Tcp => TcpStream::connect(addr).await.map(Stream::Tcp),
            Connector::Memory(f) => f(addr).await,
        }
    }
}

/// Awaits all futures concurrently without pulling in the `futures` crate.
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

mod manager;
pub use manager::{ClusterBatch, ClusterManager, Upsert};

#[cfg(test)]
mod tests;
