//! HTTP filters other than the router: `envoy.filters.http.local_ratelimit` and
//! `envoy.filters.http.fault` (their field tables and readers). `grpc_stats` is read in
//! `hcm`.

use super::super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::headers::read_headers_to_add;
use super::matchers::read_header_matcher;
use super::*;

use Field::{Ignored as I, Rejected as R, Supported as S};

pub const LOCAL_RATELIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
pub const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
pub const HEALTH_CHECK_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck";
pub const HEALTH_CHECK_NAMES: &[&str] = &["envoy.filters.http.health_check", "envoy.health_check"];
pub const LOCAL_RATELIMIT_NAMES: &[&str] = &["envoy.filters.http.local_ratelimit"];
pub const FAULT_NAMES: &[&str] = &["envoy.filters.http.fault", "envoy.fault"];
pub const SET_FILTER_STATE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config";
pub const SET_FILTER_STATE_NAMES: &[&str] = &["envoy.filters.http.set_filter_state"];

/// `envoy.filters.http.set_filter_state`: string values computed from each request (the
/// header format's `%VARIABLE%`s), kept for that request under their keys; a route's
/// `hash_policy.filter_state` hashes them.
#[derive(Debug, Clone, PartialEq)]
pub struct SetFilterState {
    pub values: Vec<FilterStateValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilterStateValue {
    pub key: std::sync::Arc<str>,
    pub format: HeaderFormat,
    pub skip_if_empty: bool,
}

pub(super) const SET_FILTER_STATE: FieldTable = &[
    ("@type", S),
    ("on_request_headers", S),
    (
        "clear_route_cache",
        I("the route is chosen before the filters run; filter state does not change it"),
    ),
];

pub(super) const FILTER_STATE_VALUE: FieldTable = &[
    ("object_key", S),
    (
        "factory_key",
        R("only string values are kept (no object factories)"),
    ),
    ("format_string", S),
    ("read_only", I("values are only set by this filter")),
    (
        "shared_with_upstream",
        I("filter state stays in this proxy"),
    ),
    ("skip_if_empty", S),
];

pub(super) const FILTER_STATE_FORMAT: FieldTable = &[
    ("text_format", S),
    ("text_format_source", S),
    ("json_format", R("only text formats make a string value")),
    ("omit_empty_values", I("a value is one string")),
    ("content_type", I("a value is one string")),
    ("formatters", R("formatter extensions are not supported")),
    (
        "json_format_options",
        I("only text formats make a string value"),
    ),
];

pub(super) const FILTER_STATE_SOURCE: FieldTable = &[
    ("inline_string", S),
    ("filename", R("give the format inline")),
    ("inline_bytes", R("give the format as inline_string")),
    ("environment_variable", R("give the format inline")),
];

pub(super) fn read_set_filter_state(tc: &Obj, d: &mut Diagnostics) -> Option<SetFilterState> {
    let mut values = Vec::new();
    for (path, v) in tc.list("on_request_headers", d) {
        let Some(o) = Obj::new(v, &path, FILTER_STATE_VALUE, d) else {
            continue;
        };
        let Some(key) = o.required_name("object_key", d) else {
            continue;
        };
        let Some(f) = o.object("format_string", FILTER_STATE_FORMAT, d) else {
            d.error(o.at("format_string"), "missing required field");
            continue;
        };
        let text = match (
            f.string("text_format", d),
            f.object("text_format_source", FILTER_STATE_SOURCE, d),
        ) {
            (Some(t), None) => Some((t, f.at("text_format"))),
            (None, Some(src)) => src
                .string("inline_string", d)
                .map(|t| (t, src.at("inline_string"))),
            (Some(_), Some(_)) => {
                d.error(
                    f.path.clone(),
                    "text_format and text_format_source are exclusive",
                );
                None
            }
            (None, None) => {
                d.error(
                    f.path.clone(),
                    "a text_format or text_format_source is required",
                );
                None
            }
        };
        let Some((text, at)) = text else { continue };
        let Some(format) = super::headers::parse_header_format(&text, &at, d) else {
            continue;
        };
        values.push(FilterStateValue {
            key: key.into(),
            format,
            skip_if_empty: o.boolean("skip_if_empty", d).unwrap_or(false),
        });
    }
    Some(SetFilterState { values })
}

/// `envoy.filters.http.local_ratelimit`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLocalRateLimit {
    pub stat_prefix: String,
    /// `(max_tokens, tokens_per_fill, fill_interval)`; `None`: only per-route buckets.
    pub bucket: Option<(u32, u32, Duration)>,
    /// Parts per million of requests checked (`filter_enabled`, default 0).
    pub enabled: u32,
    /// Parts per million of checked requests refused when over (`filter_enforced`, default 0).
    pub enforced: u32,
    pub status: u16,
    pub response_headers: Vec<HeaderToAdd>,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`.
    pub x_ratelimit_headers: bool,
}

/// What a fault injects: a fixed delay or one the request asks for in a header.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultDelay {
    Fixed(Duration),
    Header,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FaultAbort {
    Http(u16),
    Grpc(u32),
    Header,
}

/// `envoy.filters.http.fault`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<(FaultDelay, u32)>,
    pub abort: Option<(FaultAbort, u32)>,
    /// Only requests matching all of these.
    pub headers: Vec<HeaderMatcher>,
    pub max_active_faults: Option<u32>,
}

/// `envoy.filters.http.health_check` (not pass-through): answers the requests matching
/// `headers` itself, 200 while the server is healthy, 503 once it drains or
/// `/healthcheck/fail` was posted.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub headers: Vec<HeaderMatcher>,
}

/// The HTTP filters of a connection manager, in order, before the router.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpFilterConfig {
    LocalRateLimit(HttpLocalRateLimit),
    Fault(Fault),
    HealthCheck(HealthCheck),
    SetFilterState(SetFilterState),
    Rbac(crate::config::rbac::RbacConfig),
}

pub(super) const HEALTH_CHECK: FieldTable = &[
    ("@type", S),
    ("pass_through_mode", S),
    ("headers", S),
    ("cache_time", I("answers are not cached; each is computed")),
    (
        "cluster_min_healthy_percentages",
        R("cluster health percentages are not supported"),
    ),
];

pub(super) fn read_health_check(tc: &Obj, d: &mut Diagnostics) -> Option<HealthCheck> {
    if tc.boolean("pass_through_mode", d) == Some(true) {
        d.error(
            tc.at("pass_through_mode"),
            "pass-through health checks are not supported (the filter answers itself)",
        );
        return None;
    }
    let mut headers = Vec::new();
    for (p, v) in tc.list("headers", d) {
        if let Some(h) = read_header_matcher(v, &p, d) {
            headers.push(h);
        }
    }
    if headers.is_empty() {
        d.error(
            tc.at("headers"),
            "at least one header matcher (e.g. :path) is required",
        );
        return None;
    }
    Some(HealthCheck { headers })
}

pub(super) const LOCAL_RATELIMIT: FieldTable = &[
    ("@type", S),
    ("stat_prefix", S),
    ("status", S),
    ("token_bucket", S),
    ("filter_enabled", S),
    ("filter_enforced", S),
    (
        "request_headers_to_add_when_not_enforced",
        R("not supported yet"),
    ),
    ("response_headers_to_add", S),
    ("descriptors", R("rate limit descriptors are not supported")),
    ("stage", I("one stage")),
    (
        "local_rate_limit_per_downstream_connection",
        R("buckets are shared by every connection"),
    ),
    (
        "local_cluster_rate_limit",
        R("cluster-wide sharing is not supported"),
    ),
    ("enable_x_ratelimit_headers", S),
    ("vh_rate_limits", I("no route rate limit actions")),
    (
        "always_consume_default_token_bucket",
        I("one bucket per request"),
    ),
    ("rate_limited_as_resource_exhausted", S),
];

pub(super) const TOKEN_BUCKET: FieldTable = &[
    ("max_tokens", S),
    ("tokens_per_fill", S),
    ("fill_interval", S),
];

pub(super) const PERCENT_RUNTIME: FieldTable = &[
    ("default_value", S),
    (
        "runtime_key",
        I("runtime overrides are not supported; default_value applies"),
    ),
];

pub(super) const PERCENT: FieldTable = &[("numerator", S), ("denominator", S)];

pub(super) const HTTP_STATUS: FieldTable = &[("code", S)];

pub(super) const FAULT: FieldTable = &[
    ("@type", S),
    ("delay", S),
    ("abort", S),
    (
        "upstream_cluster",
        R("faults for one upstream cluster are not supported"),
    ),
    ("headers", S),
    (
        "downstream_nodes",
        R("downstream node matching is not supported"),
    ),
    ("max_active_faults", S),
    (
        "response_rate_limit",
        R("response rate limits are not supported"),
    ),
    (
        "delay_percent_runtime",
        I("runtime overrides are not supported"),
    ),
    (
        "abort_percent_runtime",
        I("runtime overrides are not supported"),
    ),
    (
        "delay_duration_runtime",
        I("runtime overrides are not supported"),
    ),
    (
        "abort_http_status_runtime",
        I("runtime overrides are not supported"),
    ),
    (
        "max_active_faults_runtime",
        I("runtime overrides are not supported"),
    ),
    (
        "response_rate_limit_percent_runtime",
        I("runtime overrides are not supported"),
    ),
    (
        "abort_grpc_status_runtime",
        I("runtime overrides are not supported"),
    ),
    (
        "disable_downstream_cluster_stats",
        I("no downstream cluster stats"),
    ),
    ("filter_metadata", I("metadata is informational here")),
];

pub(super) const FAULT_DELAY: FieldTable =
    &[("fixed_delay", S), ("header_delay", S), ("percentage", S)];

pub(super) const FAULT_ABORT: FieldTable = &[
    ("http_status", S),
    ("grpc_status", S),
    ("header_abort", S),
    ("percentage", S),
];

pub(super) const EMPTY_FAULT: FieldTable = &[];

/// Parts per million from a `FractionalPercent`.
fn percent(o: &Obj, key: &str, default: u32, d: &mut Diagnostics) -> u32 {
    let Some(p) = o.object(key, PERCENT, d) else {
        return default;
    };
    let n = p.uint("numerator", 0, u32::MAX as u64, d).unwrap_or(0);
    let scale = match p
        .enumeration(
            "denominator",
            &["HUNDRED", "TEN_THOUSAND", "MILLION"],
            &[],
            d,
        )
        .as_deref()
    {
        Some("TEN_THOUSAND") => 100,
        Some("MILLION") => 1,
        _ => 10_000,
    };
    n.saturating_mul(scale).min(1_000_000) as u32
}

fn runtime_percent(o: &Obj, key: &str, d: &mut Diagnostics) -> u32 {
    match o.object(key, PERCENT_RUNTIME, d) {
        Some(r) => percent(&r, "default_value", 0, d),
        None => 0,
    }
}

pub(super) fn read_local_ratelimit(tc: &Obj, d: &mut Diagnostics) -> Option<HttpLocalRateLimit> {
    let stat_prefix = tc.required_name("stat_prefix", d)?;
    let bucket = match tc.object("token_bucket", TOKEN_BUCKET, d) {
        Some(b) => {
            let max = b.uint("max_tokens", 1, u32::MAX as u64, d);
            if max.is_none() {
                d.error(b.at("max_tokens"), "missing required field");
            }
            let per_fill = b
                .uint("tokens_per_fill", 1, u32::MAX as u64, d)
                .unwrap_or(1);
            let interval = b.duration("fill_interval", d);
            match interval {
                Some(i) if i < Duration::from_millis(50) => {
                    d.error(b.at("fill_interval"), "must be at least 50ms (as in Envoy)");
                    None
                }
                None => {
                    d.error(b.at("fill_interval"), "missing required field");
                    None
                }
                Some(i) => max.map(|m| (m as u32, per_fill as u32, i)),
            }
        }
        None => None,
    };
    let status = match tc.object("status", HTTP_STATUS, d) {
        Some(s) => s.uint("code", 400, 599, d).unwrap_or(429) as u16,
        None => 429,
    };
    let x_ratelimit_headers = tc
        .enumeration(
            "enable_x_ratelimit_headers",
            &["OFF", "DRAFT_VERSION_03"],
            &[],
            d,
        )
        .is_some_and(|v| v == "DRAFT_VERSION_03");
    let _ = tc.boolean("rate_limited_as_resource_exhausted", d);
    Some(HttpLocalRateLimit {
        stat_prefix,
        bucket,
        enabled: runtime_percent(tc, "filter_enabled", d),
        enforced: runtime_percent(tc, "filter_enforced", d),
        status,
        response_headers: read_headers_to_add(tc, "response_headers_to_add", d),
        x_ratelimit_headers,
    })
}

pub(super) fn read_fault(tc: &Obj, d: &mut Diagnostics) -> Option<Fault> {
    let delay = match tc.object("delay", FAULT_DELAY, d) {
        Some(o) => {
            let kind = match (o.duration("fixed_delay", d), o.get("header_delay")) {
                (Some(t), None) => Some(FaultDelay::Fixed(t)),
                (None, Some(_)) => {
                    let _ = o.object("header_delay", EMPTY_FAULT, d);
                    Some(FaultDelay::Header)
                }
                _ => {
                    d.error(
                        &o.path,
                        "exactly one of fixed_delay or header_delay is required",
                    );
                    None
                }
            };
            kind.map(|k| (k, percent(&o, "percentage", 1_000_000, d)))
        }
        None => None,
    };
    let abort = match tc.object("abort", FAULT_ABORT, d) {
        Some(o) => {
            let kind = match (
                o.uint("http_status", 200, 599, d),
                o.uint("grpc_status", 0, 16, d),
                o.get("header_abort"),
            ) {
                (Some(s), None, None) => Some(FaultAbort::Http(s as u16)),
                (None, Some(g), None) => Some(FaultAbort::Grpc(g as u32)),
                (None, None, Some(_)) => {
                    let _ = o.object("header_abort", EMPTY_FAULT, d);
                    Some(FaultAbort::Header)
                }
                _ => {
                    d.error(
                        &o.path,
                        "exactly one of http_status, grpc_status or header_abort is required",
                    );
                    None
                }
            };
            kind.map(|k| (k, percent(&o, "percentage", 1_000_000, d)))
        }
        None => None,
    };
    let mut headers = Vec::new();
    for (p, v) in tc.list("headers", d) {
        if let Some(h) = read_header_matcher(v, &p, d) {
            headers.push(h);
        }
    }
    Some(Fault {
        delay,
        abort,
        headers,
        max_active_faults: tc
            .uint("max_active_faults", 0, u32::MAX as u64, d)
            .map(|n| n as u32),
    })
}

#[cfg(test)]
pub(crate) const TABLES: &[(&str, FieldTable)] = &[
    ("LocalRateLimit (HTTP)", LOCAL_RATELIMIT),
    ("TokenBucket (HTTP)", TOKEN_BUCKET),
    (
        "RuntimeFractionalPercent (filter_enabled, filter_enforced)",
        PERCENT_RUNTIME,
    ),
    ("FractionalPercent (HTTP filters)", PERCENT),
    ("HttpStatus", HTTP_STATUS),
    ("HTTPFault", FAULT),
    ("FaultDelay", FAULT_DELAY),
    ("FaultAbort", FAULT_ABORT),
    ("HeaderDelay / HeaderAbort", EMPTY_FAULT),
    ("HealthCheck", HEALTH_CHECK),
    ("SetFilterState", SET_FILTER_STATE),
    ("FilterStateValue", FILTER_STATE_VALUE),
    (
        "SubstitutionFormatString (format_string)",
        FILTER_STATE_FORMAT,
    ),
    ("DataSource (text_format_source)", FILTER_STATE_SOURCE),
];
