//! The one internal configuration model (`Snapshot`): validated, immutable, shared by `Arc`.
//!
//! Front doors only translate into it: the bootstrap file today (`bootstrap`), xDS later.
//! Nothing downstream of this module sees YAML or protobufs.

mod bootstrap;
mod cluster;
mod cluster_dump;
mod cluster_health;
mod cluster_lb;
mod listener_model;
pub mod rbac;
pub mod tls;
mod tls_dump;
mod tls_model;
mod tls_secrets;
use cluster_dump::{duration_json, socket_address_json};
pub use tls::{DownstreamTls, UpstreamTls};
mod endpoint;
mod extensions;
pub mod http;
mod listener;
mod overload;
mod overrides;
mod read;
pub mod type_urls;
mod walk;
pub mod xds;
pub mod yaml;

pub use bootstrap::DEFAULT_BOOTSTRAP;
pub use listener_model::*;
pub use overload::{
    ActionKind, Monitor, OverloadAction, OverloadConfig, RuntimeLimits, Trigger, TriggerKind,
};
pub use overrides::{parse_metadata_entry, Overrides};
pub use read::{
    parse_bootstrap, parse_bootstrap_file, parse_bootstrap_file_limited, parse_bootstrap_file_with,
    parse_bootstrap_with, DEFAULT_MAX_CONFIG_BYTES, MAX_YAML_DEPTH,
};
pub use walk::{parse_duration, Diag, Diagnostics};

use serde_json::{json, Value as Json};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Rejected configuration: every error found, each with its field path.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render_errors(.errors))]
pub struct ConfigError {
    pub source_name: String,
    pub errors: Vec<Diag>,
}

fn render_errors(errors: &[Diag]) -> String {
    let mut s = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&e.to_string());
    }
    s
}

/// A bootstrap's text and the command-line overrides applied to it.
#[derive(Debug, Clone, Default)]
pub struct BootstrapSource {
    text: Arc<str>,
    overrides: Overrides,
    /// Top-level sections shown from another bootstrap (the one in force), `None` = absent.
    sections: Vec<(String, Option<Json>)>,
}

impl BootstrapSource {
    pub fn new(text: &str, overrides: &Overrides) -> Self {
        Self {
            text: text.into(),
            overrides: overrides.clone(),
            sections: Vec::new(),
        }
    }

    /// This bootstrap, shown with `keys` (top-level sections) as `other` has them: a reload
    /// keeps sections that need a restart as they are in force.
    pub fn with_sections_from(&self, other: &BootstrapSource, keys: &[&str]) -> Self {
        let theirs = other.to_json();
        let mut out = self.clone();
        out.sections = keys
            .iter()
            .map(|k| (k.to_string(), theirs.get(*k).cloned()))
            .collect();
        out
    }

    /// The bootstrap as JSON, with the overrides applied (as it was validated).
    pub fn to_json(&self) -> Json {
        match yaml::parse(&self.text, MAX_YAML_DEPTH) {
            Ok(mut v) => {
                self.overrides.apply(&mut v);
                let mut j = v.to_json();
                tls::redact(&mut j);
                if let Json::Object(m) = &mut j {
                    for (k, v) in &self.sections {
                        match v {
                            Some(v) => m.insert(k.clone(), v.clone()),
                            None => m.remove(k),
                        };
                    }
                }
                j
            }
            Err(_) => Json::Null,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub node: Node,
    pub admin: Option<Admin>,
    pub stats_flush_interval: Duration,
    /// `overload_manager`, if configured.
    pub overload: Option<OverloadConfig>,
    /// Connection limits from `layered_runtime` static layers.
    pub runtime: RuntimeLimits,
    pub listeners: Vec<Arc<Listener>>,
    pub clusters: Vec<Arc<Cluster>>,
    /// `static_resources.secrets`: certificates and validation contexts by name.
    pub secrets: Vec<tls::Secret>,
    /// The bootstrap as given, for `/config_dump`: kept as text (a fraction of the memory
    /// of its parsed form) and parsed again when dumped.
    pub bootstrap: BootstrapSource,
    /// Fields accepted but ignored on purpose.
    pub warnings: Vec<Diag>,
    /// eBPF redirection (Plumb's `plumb.redirect` bootstrap extension), if configured.
    pub redirect: Option<RedirectConfig>,
    /// Dynamic configuration over ADS (`dynamic_resources`), if configured.
    pub xds: Option<XdsConfig>,
    /// The bootstrap's `cluster_manager`.
    pub cluster_manager: ClusterManagerConfig,
}

/// The bootstrap's `cluster_manager`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterManagerConfig {
    /// `outlier_detection.event_log_path`: ejection events as JSON lines.
    pub outlier_log_path: Option<std::path::PathBuf>,
    /// `local_cluster_name`: the cluster whose hosts, by locality, say how big the local
    /// zone is for zone-aware routing.
    pub local_cluster_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdsApi {
    /// State of the world.
    Sotw,
    /// Incremental.
    Delta,
}

#[derive(Debug, Clone, PartialEq)]
pub struct XdsConfig {
    pub api: XdsApi,
    /// The static cluster the control plane is reached through.
    pub cluster: String,
    /// Clusters over ADS (`cds_config: {ads: {}}`).
    pub cds: bool,
    /// Listeners over ADS (`lds_config: {ads: {}}`).
    pub lds: bool,
    /// How long a new EDS cluster waits for endpoints before it is used anyway.
    pub initial_fetch_timeout: Duration,
    /// `ads_config.rate_limit_settings`: requests to the control plane through a token
    /// bucket. `None`: not limited (Envoy's default).
    pub rate_limit: Option<XdsRateLimit>,
}

/// Envoy's `RateLimitSettings`: a bucket of `max_tokens` (default 100) refilled at
/// `fill_rate` per second (default 10).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct XdsRateLimit {
    pub max_tokens: u32,
    pub fill_rate: f64,
}

/// Where and what to capture with eBPF, and where to send it.
#[derive(Debug, Clone)]
pub struct RedirectConfig {
    /// The `use_original_dst` listener that captured connections are redirected to.
    pub listener: String,
    /// Address connects are rewritten to (reachable from the workloads' network namespaces).
    pub proxy_v4: Option<std::net::Ipv4Addr>,
    pub proxy_v6: Option<std::net::Ipv6Addr>,
    /// cgroup2 directories whose processes are captured.
    pub cgroups: Vec<std::path::PathBuf>,
    /// Rules beyond the destinations of `bind_to_port: false` listeners.
    pub capture: Vec<CaptureRule>,
    pub sk_msg: bool,
    pub bpf_object: Option<std::path::PathBuf>,
    pub pin_path: std::path::PathBuf,
    /// Fail startup when redirection cannot be set up (default: proxy explicitly addressed
    /// traffic only, and say why).
    pub required: bool,
    pub heartbeat_interval: Duration,
    /// With no heartbeat for this long, captured connects go to their original destination.
    pub fail_open_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRule {
    pub net: IpAddr,
    pub prefix_len: u8,
    /// Empty: every port.
    pub ports: Vec<u16>,
    pub exclude: bool,
}

impl Snapshot {
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
}

impl Locality {
    pub fn to_json(&self) -> Json {
        json!({"region": self.region, "zone": self.zone, "sub_zone": self.sub_zone})
    }
}

#[derive(Debug, Clone, Default)]
pub struct Node {
    pub id: String,
    pub cluster: String,
    pub locality: Locality,
    /// Opaque to Plumb; sent to the control plane (a google.protobuf.Struct).
    pub metadata: serde_json::Map<String, Json>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub address: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryType {
    Static,
    StrictDns,
    LogicalDns,
    OriginalDst,
    /// Endpoints from EDS (xDS only).
    Eds,
}

impl DiscoveryType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "STATIC",
            Self::StrictDns => "STRICT_DNS",
            Self::LogicalDns => "LOGICAL_DNS",
            Self::OriginalDst => "ORIGINAL_DST",
            Self::Eds => "EDS",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    /// `choice_count` hosts drawn at random, the least loaded taken; with unequal weights the
    /// load is (active requests + 1) ^ `active_request_bias` / weight (bias in thousandths).
    LeastRequest {
        choice_count: u32,
        bias_milli: u32,
    },
    Random,
    ClusterProvided,
    /// Envoy's ring hash (`ring_hash_lb_config`; xxHash).
    RingHash {
        min_ring_size: u64,
        max_ring_size: u64,
    },
    /// Envoy's Maglev (`maglev_lb_config`).
    Maglev {
        table_size: u64,
    },
}

impl LbPolicy {
    /// LEAST_REQUEST with Envoy's defaults: two choices, a bias of 1.0.
    pub const fn least_request() -> Self {
        Self::LeastRequest {
            choice_count: 2,
            bias_milli: 1000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "ROUND_ROBIN",
            Self::LeastRequest { .. } => "LEAST_REQUEST",
            Self::Random => "RANDOM",
            Self::ClusterProvided => "CLUSTER_PROVIDED",
            Self::RingHash { .. } => "RING_HASH",
            Self::Maglev { .. } => "MAGLEV",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsLookupFamily {
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

impl DnsLookupFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "AUTO",
            Self::V4Only => "V4_ONLY",
            Self::V6Only => "V6_ONLY",
            Self::V4Preferred => "V4_PREFERRED",
            Self::All => "ALL",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    /// EDS: the name endpoints are requested under (`eds_cluster_config.service_name`, or the
    /// cluster name).
    pub eds_service_name: Option<String>,
    /// TLS origination (`transport_socket` with an UpstreamTlsContext).
    pub tls: Option<UpstreamTls>,
    /// `transport_socket_matches`: another transport socket for the endpoints whose
    /// metadata matches, first match wins; the others use `tls`.
    pub tls_matches: Vec<tls::TransportSocketMatch>,
    /// Carried from the config (and shown by `/config_dump`); enforcement arrives with the
    /// resilience work.
    pub circuit_breakers: Option<CircuitBreakers>,
    pub health_check: Option<HealthCheck>,
    pub outlier_detection: Option<OutlierDetection>,
    pub discovery: DiscoveryType,
    pub connect_timeout: Duration,
    pub lb_policy: LbPolicy,
    /// `common_lb_config`: panic threshold, locality-weighted or zone-aware balancing.
    pub common_lb: CommonLb,
    /// A host discovery removes goes at once, even while it passes its health checks
    /// (otherwise it stays, flagged `/pending_dynamic_removal`, until it fails one).
    pub ignore_health_on_host_removal: bool,
    /// A host that fails its active health check has its connections closed (TCP proxy
    /// connections at once, pooled HTTP ones as they finish).
    pub close_connections_on_host_health_failure: bool,
    pub dns_refresh_rate: Duration,
    /// ORIGINAL_DST: hosts unused for this long are forgotten (Envoy's default 5 s).
    pub cleanup_interval: Duration,
    pub dns_lookup_family: DnsLookupFamily,
    /// How HTTP routes speak to the hosts.
    pub http: http::UpstreamHttp,
    pub localities: Vec<LocalityEndpoints>,
}

/// A cluster's `common_lb_config`, with Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct CommonLb {
    /// `healthy_panic_threshold` (percent, default 50; 0 turns panic mode off): below this
    /// share of usable hosts, a priority level balances over all its hosts.
    pub healthy_panic_threshold: f64,
    /// `zone_aware_lb_config.fail_traffic_on_panic`: in panic, no host instead of all.
    pub fail_traffic_on_panic: bool,
    pub locality: LocalityLb,
    /// `slow_start_config` (ROUND_ROBIN, LEAST_REQUEST): new hosts' weight ramps up.
    pub slow_start: Option<SlowStart>,
}

/// Envoy's slow start: a host's weight × max(`min_weight_percent`, (time since it was added
/// or passed its first health check / `window`) ^ (1 / `aggression`)) during the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    pub window: Duration,
    pub aggression: f64,
    pub min_weight_percent: f64,
}

impl Default for CommonLb {
    fn default() -> Self {
        Self {
            healthy_panic_threshold: 50.0,
            fail_traffic_on_panic: false,
            locality: LocalityLb::None,
            slow_start: None,
        }
    }
}

/// How a priority level's traffic is shared between its localities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LocalityLb {
    /// Over all the level's hosts, whatever their locality.
    None,
    /// `locality_weighted_lb_config`: by the localities' `load_balancing_weight` scaled by
    /// their share of usable hosts.
    Weighted,
    /// `zone_aware_lb_config`: as much as possible to the local zone (Envoy's algorithm).
    ZoneAware {
        /// Percent of requests zone-aware routing applies to (default 100).
        routing_enabled: f64,
        /// Fewer usable hosts than this: no zone-aware routing (default 6).
        min_cluster_size: u64,
    },
}

/// PEM material, from a file (re-read when it changes) or inline. Its `Debug` never shows
/// inline content (it may be a private key).
#[derive(Clone, PartialEq)]
pub enum DataSource {
    File(std::path::PathBuf),
    Inline(String),
}

impl std::fmt::Debug for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSource::File(p) => f.debug_tuple("File").field(p).finish(),
            DataSource::Inline(s) => write!(f, "Inline(<{} bytes>)", s.len()),
        }
    }
}

impl DataSource {
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            DataSource::File(p) => std::fs::read(p),
            DataSource::Inline(s) => Ok(s.as_bytes().to_vec()),
        }
    }
}

/// Envoy's `circuit_breakers` (per routing priority), with Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreakers {
    pub thresholds: Vec<Thresholds>,
    /// `per_host_thresholds[].max_connections` (the only per-host limit, as in Envoy).
    pub per_host_max_connections: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub high_priority: bool,
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// Hosts with a connection pool (HTTP, or TCP proxy connections); unlimited by default.
    pub max_connection_pools: u32,
    pub track_remaining: bool,
    /// Concurrent retries as a share of the requests in flight (replaces `max_retries`).
    pub retry_budget: Option<RetryBudget>,
}

impl Thresholds {
    /// Envoy's defaults: 1,024 connections, pending requests and requests; 3 retries.
    pub fn defaults(high_priority: bool) -> Self {
        Self {
            high_priority,
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            max_connection_pools: u32::MAX,
            track_remaining: false,
            retry_budget: None,
        }
    }
}

/// One of a cluster's `health_checks` (Envoy's core.v3.HealthCheck), with Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub timeout: Duration,
    pub interval: Duration,
    pub initial_jitter: Duration,
    pub interval_jitter: Duration,
    pub interval_jitter_percent: u32,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub always_log_health_check_failures: bool,
    /// Until the cluster has had a connection: `no_traffic_interval` (default 60 s), and for
    /// a healthy host `no_traffic_healthy_interval` (default: `no_traffic_interval`).
    pub no_traffic_interval: Duration,
    pub no_traffic_healthy_interval: Duration,
    /// An unhealthy host's interval (default: `interval`), and the first one right after a
    /// host turned unhealthy (default: `unhealthy_interval`) or healthy (default: `interval`).
    pub unhealthy_interval: Duration,
    pub unhealthy_edge_interval: Duration,
    pub healthy_edge_interval: Duration,
    /// `event_log_path`: health events as JSON lines.
    pub event_log_path: Option<std::path::PathBuf>,
    /// Keep each host's check connection for the next check (Envoy's default: yes).
    pub reuse_connection: bool,
    pub kind: HealthCheckKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheckKind {
    /// Connect; then optionally send bytes and expect blocks back (in order).
    Tcp {
        send: Option<Vec<u8>>,
        receive: Vec<Vec<u8>>,
    },
    /// `GET path` over HTTP/1.1 (or HTTP/2, prior knowledge); healthy when the status is in
    /// one of the [start, end) ranges.
    Http {
        host: Option<String>,
        path: String,
        expected: Vec<(u16, u16)>,
        headers: Vec<(String, String)>,
        http2: bool,
    },
    /// `grpc.health.v1.Health/Check` over HTTP/2; healthy when the answer is SERVING.
    Grpc {
        service_name: String,
        authority: Option<String>,
        metadata: Vec<(String, String)>,
    },
}

/// Envoy's `retry_budget`: at most `budget_percent` % of the active and pending requests may
/// be retries, and at least `min_retry_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub budget_percent: f64,
    pub min_retry_concurrency: u32,
}

/// Envoy's `outlier_detection`, with Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub enforcing_consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    /// A passing active health check brings an ejected host back (Envoy's default: yes).
    pub successful_active_health_check_uneject_host: bool,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    /// Thousandths: 1900 means 1.9 standard deviations.
    pub success_rate_stdev_factor: u32,
    pub enforcing_success_rate: u32,
    pub enforcing_local_origin_success_rate: u32,
    pub failure_percentage_threshold: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    pub enforcing_failure_percentage: u32,
    pub enforcing_failure_percentage_local_origin: u32,
    /// A random part of up to this much is added to each ejection.
    pub max_ejection_time_jitter: Duration,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocalityEndpoints {
    pub locality: Locality,
    pub priority: u32,
    pub load_balancing_weight: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    Unknown,
    Healthy,
    Unhealthy,
    Draining,
    Timeout,
    Degraded,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "UNKNOWN",
            Self::Healthy => "HEALTHY",
            Self::Unhealthy => "UNHEALTHY",
            Self::Draining => "DRAINING",
            Self::Timeout => "TIMEOUT",
            Self::Degraded => "DEGRADED",
        }
    }
    /// Whether the load balancer may pick a host with this EDS status.
    pub fn routable(self) -> bool {
        matches!(self, Self::Unknown | Self::Healthy | Self::Degraded)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub host: Host,
    pub port: u16,
    pub hostname: Option<String>,
    pub weight: u32,
    pub health_status: HealthStatus,
    /// `metadata.filter_metadata."envoy.lb".canary` (shown in `/clusters`).
    pub canary: bool,
    /// `metadata.filter_metadata."envoy.transport_socket_match"`: which of the cluster's
    /// `transport_socket_matches` applies to it.
    pub socket_match: Vec<(String, String)>,
}
