//! The HTTP family of the configuration: the HTTP connection manager
//! (`envoy.filters.network.http_connection_manager`), its HTTP filters, and route
//! configurations (virtual hosts, routes, matches, actions). Field tables and readers are
//! shared by the bootstrap and xDS front doors; everything a request needs at run time
//! (regexes included) is compiled here, once per config.

pub mod access_log;
mod action;
pub mod filters;
mod hash;
mod hcm;
mod headers;
mod matchers;
mod retry;
mod route;
#[cfg(test)]
mod tests;
mod upstream;

pub use access_log::read_access_logs;
pub(super) use hcm::{read_hcm, HCM_TABLE};
pub(crate) use matchers::{read_header_matcher, read_string_matcher, STRING_MATCHER};
pub use retry::{parse_retry_on, retry_on, RetryPolicy};
pub use route::read_route_configuration;
pub(super) use upstream::read_upstream_http;
pub use upstream::{UpstreamHttp, UpstreamProtocol};
#[cfg(test)]
pub(crate) use {
    access_log::TABLES as LOG_TABLES, filters::TABLES as FILTER_TABLES,
    retry::TABLES as RETRY_TABLES,
};
#[cfg(test)]
pub(crate) use {
    hcm::TABLES as HCM_TABLES, route::TABLES as ROUTE_TABLES, upstream::TABLES as UPSTREAM_TABLES,
};

use serde_json::Value as Json;
use std::sync::Arc;
use std::time::Duration;

/// Envoy's `HttpConnectionManager.CodecType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecType {
    /// HTTP/2 when the client opens with the prior-knowledge preface, else HTTP/1.1.
    Auto,
    Http1,
    Http2,
}

/// Envoy's `headers_with_underscores_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoresAction {
    Allow,
    RejectRequest,
    DropHeader,
}

/// The HTTP/2 settings Plumb applies (`http2_protocol_options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Options {
    pub max_concurrent_streams: u32,
    pub initial_stream_window_size: u32,
    pub initial_connection_window_size: u32,
}

impl Default for Http2Options {
    /// Envoy's defaults.
    fn default() -> Self {
        Self {
            max_concurrent_streams: 2_147_483_647,
            initial_stream_window_size: 268_435_456,
            initial_connection_window_size: 268_435_456,
        }
    }
}

/// `envoy.filters.network.http_connection_manager`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec_type: CodecType,
    /// Inline `route_config`, or the name of a route configuration to fetch over RDS.
    pub routes: Routes,
    /// The `server` header of responses.
    pub server_name: String,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    /// Bytes of the request line and headers (Envoy's `max_request_headers_kb`, default 60).
    pub max_request_headers_bytes: usize,
    pub max_headers_count: usize,
    /// Connection idle timeout (`common_http_protocol_options.idle_timeout`, default 1 h).
    pub idle_timeout: Option<Duration>,
    pub max_stream_duration: Option<Duration>,
    pub headers_with_underscores_action: UnderscoresAction,
    pub http2: Http2Options,
    /// Default 5 minutes; `None` when disabled (`0s`).
    pub stream_idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub request_headers_timeout: Option<Duration>,
    /// How long HTTP/2 clients get between the first GOAWAY and the last (default 5 s).
    pub drain_timeout: Duration,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    /// Allow `Upgrade: websocket` (Envoy's `upgrade_configs` with `upgrade_type: websocket`).
    pub websocket: bool,
    /// The router's `suppress_envoy_headers`: no `x-envoy-upstream-service-time`.
    pub suppress_envoy_headers: bool,
    /// `envoy.filters.http.grpc_stats`, when in the filter chain.
    pub grpc_stats: Option<GrpcStatsConfig>,
    /// The other HTTP filters before the router, in order.
    pub http_filters: Vec<(String, filters::HttpFilterConfig)>,
    pub access_logs: Vec<access_log::AccessLog>,
    /// The config as given, for `/config_dump`.
    pub source: Json,
}

/// `envoy.filters.http.grpc_stats`: which gRPC calls get their own stats.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrpcStatsConfig {
    /// Stats per service and method for every call (only safe with trusted clients).
    pub all_methods: bool,
    /// Services (and their methods) with their own stats; other calls count together.
    pub allowlist: Vec<(String, Vec<String>)>,
    pub has_allowlist: bool,
    pub replace_dots: bool,
}

impl GrpcStatsConfig {
    /// The stat infix for a call to `/service/method`: `service.method`, or `None` when it
    /// counts in the aggregate (`cluster.<name>.grpc.*`).
    pub fn infix(&self, path: &str) -> Option<String> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return None;
        }
        let named = if self.has_allowlist {
            self.allowlist
                .iter()
                .any(|(s, ms)| s == service && ms.iter().any(|m| m == method))
        } else {
            self.all_methods
        };
        if !named {
            return None;
        }
        let service = if self.replace_dots {
            service.replace('.', "_")
        } else {
            service.to_string()
        };
        Some(format!("{service}.{method}"))
    }
}

/// Where a connection manager's routes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Routes {
    Inline(Arc<RouteConfiguration>),
    /// Fetched over ADS by name; a listener naming it warms until it arrives or
    /// `initial_fetch_timeout` (0: no limit) passes.
    Rds {
        name: String,
        initial_fetch_timeout: Duration,
    },
}

impl HttpConnectionManager {
    /// The RDS route configuration this connection manager names, if any.
    pub fn rds_name(&self) -> Option<&str> {
        match &self.routes {
            Routes::Rds { name, .. } => Some(name),
            Routes::Inline(_) => None,
        }
    }
}

/// A compiled regular expression; equal when the source is.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub source: String,
    pub regex: regex::Regex,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Pattern {
    /// Envoy's `safe_regex` (RE2 syntax) matches the whole value.
    pub fn full_match(&self, s: &str) -> bool {
        self.regex
            .find(s)
            .is_some_and(|m| m.start() == 0 && m.end() == s.len())
    }
}

/// `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone, PartialEq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Pattern),
}

#[derive(Debug, Clone, PartialEq)]
pub struct StringMatcher {
    pub kind: StringMatch,
    /// Patterns are stored lower-cased when set (not for regexes).
    pub ignore_case: bool,
}

impl StringMatcher {
    pub fn matches(&self, value: &str) -> bool {
        let lowered;
        let v = if self.ignore_case && !matches!(self.kind, StringMatch::Regex(_)) {
            lowered = value.to_ascii_lowercase();
            lowered.as_str()
        } else {
            value
        };
        match &self.kind {
            StringMatch::Exact(s) => v == s,
            StringMatch::Prefix(s) => v.starts_with(s.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Contains(s) => v.contains(s.as_str()),
            StringMatch::Regex(p) => p.full_match(v),
        }
    }
}

/// What a header matcher checks.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderCheck {
    String(StringMatcher),
    Present(bool),
    /// `[start, end)` of the value as a signed integer.
    Range(i64, i64),
}

/// `envoy.config.route.v3.HeaderMatcher`. Several values of one header are matched as
/// Envoy does: joined with `,`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatcher {
    /// Lower-cased.
    pub name: String,
    pub check: HeaderCheck,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

/// `envoy.config.route.v3.QueryParameterMatcher`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryParameterMatcher {
    pub name: String,
    /// `None`: present.
    pub value: Option<StringMatcher>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    Prefix(String),
    Path(String),
    Regex(Pattern),
    /// `/api` matches `/api`, `/api/…`, `/api?…`, not `/apiv2`.
    SeparatedPrefix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query_parameters: Vec<QueryParameterMatcher>,
    /// Only gRPC requests (`content-type: application/grpc…`).
    pub grpc: bool,
    /// Matches this fraction of requests (parts per million).
    pub runtime_fraction: Option<u32>,
}

/// One header to add (`HeaderValueOption`), with `%VAR%` values expanded per request.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderToAdd {
    /// Lower-cased and valid as an HTTP header name.
    pub name: String,
    pub value: HeaderFormat,
    pub append: AppendAction,
    pub keep_empty_value: bool,
}

/// Envoy's `HeaderValueOption.HeaderAppendAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

/// A header value with Envoy's `%VARIABLE%` substitutions, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderFormat {
    pub parts: Vec<FormatPart>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FormatPart {
    Literal(String),
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    Protocol,
    UpstreamRemoteAddress,
    Hostname,
    StartTime,
    RequestHeader(String),
}

/// Header mutations of one level (route, virtual host, route configuration, weighted cluster).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeaderMutations {
    pub request_add: Vec<HeaderToAdd>,
    pub request_remove: Vec<String>,
    pub response_add: Vec<HeaderToAdd>,
    pub response_remove: Vec<String>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
    pub headers: HeaderMutations,
    pub host_rewrite_literal: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClusterSpecifier {
    Cluster(String),
    /// The cluster named by a request header.
    Header(String),
    Weighted {
        clusters: Vec<WeightedCluster>,
        total: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum HostRewrite {
    None,
    Literal(String),
    /// The upstream host's hostname (STRICT_DNS/LOGICAL_DNS clusters), else its address.
    Auto,
}

/// `RouteAction`: forward to a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub cluster: ClusterSpecifier,
    /// 503 or 404 when the cluster does not exist (`cluster_not_found_response_code`).
    pub cluster_not_found_status: u16,
    /// Route timeout: the whole exchange up to the end of the response headers (default
    /// 15 s; `None`: disabled).
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// When set, a gRPC request's `grpc-timeout` becomes its timeout, capped by this value
    /// (`0s`: no cap).
    pub max_grpc_timeout: Option<Duration>,
    /// Taken off `grpc-timeout` (for the time the response takes back to the client).
    pub grpc_timeout_offset: Option<Duration>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Pattern, String)>,
    pub host_rewrite: HostRewrite,
    /// The route's retry policy, else its virtual host's.
    pub retry_policy: Option<RetryPolicy>,
    /// Copies of each request sent, fire and forget, to shadow clusters.
    pub mirrors: Vec<MirrorPolicy>,
    /// What a request's hash for hashing load balancers is made of (`hash_policy`).
    pub hash_policy: Vec<HashPolicy>,
    /// `priority: HIGH`: the cluster's high-priority circuit breaker thresholds apply.
    pub high_priority: bool,
}

/// One `hash_policy` entry of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct HashPolicy {
    pub on: HashOn,
    /// Stop at this policy when it produced a hash.
    pub terminal: bool,
}

/// How a hashing cookie is generated (Envoy's `hash_policy.cookie` with `ttl`).
#[derive(Debug, Clone, PartialEq)]
pub struct CookieGen {
    /// `Max-Age`; zero makes a session cookie.
    pub ttl: std::time::Duration,
    pub path: Option<String>,
    /// Extra `name=value` attributes.
    pub attributes: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HashOn {
    /// A request header (lower-cased name); every value counts.
    Header(String),
    /// A cookie the client sends; with a generator (`ttl`), one Plumb sets on the response
    /// when the request has none.
    Cookie(String, Option<std::sync::Arc<CookieGen>>),
    /// The downstream address's IP.
    SourceIp,
    /// A query parameter's first value.
    QueryParameter(String),
    /// A value `envoy.filters.http.set_filter_state` set for the request under this key.
    FilterState(String),
}

/// `RequestMirrorPolicy`.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorPolicy {
    /// A named cluster, or one named by a request header.
    pub cluster: ClusterSpecifier,
    /// Mirrors this fraction of requests (parts per million; `None`: all).
    pub fraction: Option<u32>,
    /// Append `-shadow` to the host (Envoy's default).
    pub shadow_suffix: bool,
    pub host_rewrite_literal: Option<String>,
}

/// `RedirectAction`.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub status: u16,
    pub strip_query: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Forward(Box<Forward>),
    Redirect(Redirect),
    DirectResponse { status: u16, body: Option<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub headers: HeaderMutations,
    /// `typed_per_filter_config`, by HTTP filter name.
    pub per_filter: Vec<(String, PerFilterConfig)>,
    /// Request bytes kept for replay on a retry (`per_request_buffer_limit_bytes`, from the
    /// route or its virtual host; default 1 MiB).
    pub buffer_limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    pub name: String,
    /// Lower-cased.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub headers: HeaderMutations,
    /// Send `x-envoy-attempt-count` upstream / in the response.
    pub include_request_attempt_count: bool,
    pub include_attempt_count_in_response: bool,
    /// `typed_per_filter_config`, by HTTP filter name.
    pub per_filter: Vec<(String, PerFilterConfig)>,
}

/// What a route, virtual host or route configuration says to one of the connection manager's
/// HTTP filters (`typed_per_filter_config`); the most specific level wins.
#[derive(Debug, Clone, PartialEq)]
pub enum PerFilterConfig {
    /// `envoy.config.route.v3.FilterConfig` with `disabled: true`: the filter is skipped.
    Disabled,
    /// A `LocalRateLimit` of its own: its own token bucket, shared by the requests of that
    /// level (route, virtual host or route configuration).
    LocalRateLimit(filters::HttpLocalRateLimit),
    /// `RBACPerRoute` with its `rbac`: the route's own policies.
    Rbac(super::rbac::RbacConfig),
}

impl RouteConfiguration {
    /// Every cluster a route names, with the path of the field inside the configuration.
    pub fn cluster_refs(&self) -> impl Iterator<Item = (String, &str)> {
        self.virtual_hosts.iter().enumerate().flat_map(|(vi, vh)| {
            vh.routes.iter().enumerate().flat_map(move |(ri, r)| {
                let at = format!("virtual_hosts[{vi}].routes[{ri}].route");
                let mut names: Vec<(String, &str)> = match &r.action {
                    Action::Forward(f) => match &f.cluster {
                        ClusterSpecifier::Cluster(c) => vec![(format!("{at}.cluster"), c.as_str())],
                        ClusterSpecifier::Weighted { clusters, .. } => clusters
                            .iter()
                            .enumerate()
                            .map(|(i, w)| {
                                (
                                    format!("{at}.weighted_clusters.clusters[{i}].name"),
                                    w.name.as_str(),
                                )
                            })
                            .collect(),
                        ClusterSpecifier::Header(_) => vec![],
                    },
                    _ => vec![],
                };
                if let Action::Forward(f) = &r.action {
                    for (mi, m) in f.mirrors.iter().enumerate() {
                        if let ClusterSpecifier::Cluster(c) = &m.cluster {
                            names.push((
                                format!("{at}.request_mirror_policies[{mi}].cluster"),
                                c.as_str(),
                            ));
                        }
                    }
                }
                names
            })
        })
    }
}

/// `envoy.config.route.v3.RouteConfiguration`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfiguration {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    pub headers: HeaderMutations,
    /// `typed_per_filter_config`, by HTTP filter name.
    pub per_filter: Vec<(String, PerFilterConfig)>,
    pub ignore_port_in_host_matching: bool,
    /// Refuse the configuration when a route names a cluster that does not exist (else
    /// such a route answers `cluster_not_found_response_code`).
    pub validate_clusters: bool,
    /// The config as given, for `/config_dump`.
    pub source: Json,
}
