//! Retry policies (`RetryPolicy` on a route or virtual host) and the `retry_on` conditions
//! shared with the `x-envoy-retry-on` / `x-envoy-retry-grpc-on` request headers.

use super::super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::matchers::read_header_matcher;
use super::*;

use Field::{Ignored as I, Rejected as R, Supported as S};

/// `retry_on` conditions, as bits.
pub mod retry_on {
    pub const FIVE_XX: u32 = 1 << 0;
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    pub const RESET: u32 = 1 << 2;
    pub const CONNECT_FAILURE: u32 = 1 << 3;
    pub const RETRIABLE_4XX: u32 = 1 << 4;
    pub const REFUSED_STREAM: u32 = 1 << 5;
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 6;
    pub const RETRIABLE_HEADERS: u32 = 1 << 7;
    pub const RESET_BEFORE_REQUEST: u32 = 1 << 8;
    pub const GRPC_CANCELLED: u32 = 1 << 10;
    pub const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 11;
    pub const GRPC_INTERNAL: u32 = 1 << 12;
    pub const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 13;
    pub const GRPC_UNAVAILABLE: u32 = 1 << 14;

    /// Every condition by its Envoy name.
    pub const NAMES: &[(&str, u32)] = &[
        ("5xx", FIVE_XX),
        ("gateway-error", GATEWAY_ERROR),
        ("reset", RESET),
        ("connect-failure", CONNECT_FAILURE),
        ("retriable-4xx", RETRIABLE_4XX),
        ("refused-stream", REFUSED_STREAM),
        ("retriable-status-codes", RETRIABLE_STATUS_CODES),
        ("retriable-headers", RETRIABLE_HEADERS),
        ("reset-before-request", RESET_BEFORE_REQUEST),
        ("cancelled", GRPC_CANCELLED),
        ("deadline-exceeded", GRPC_DEADLINE_EXCEEDED),
        ("internal", GRPC_INTERNAL),
        ("resource-exhausted", GRPC_RESOURCE_EXHAUSTED),
        ("unavailable", GRPC_UNAVAILABLE),
    ];

    /// Conditions Envoy knows that Plumb does not act on.
    pub const UNSUPPORTED: &[(&str, &str)] = &[
        (
            "envoy-ratelimited",
            "rate limiting by a global service is not supported",
        ),
        ("http3-post-connect-failure", "HTTP/3 is not supported"),
    ];
}

/// Parses a comma-separated `retry_on` value.
pub fn parse_retry_on(s: &str) -> Result<u32, String> {
    let mut bits = 0;
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((_, b)) = retry_on::NAMES.iter().find(|(n, _)| *n == part) {
            bits |= b;
        } else if let Some((_, why)) = retry_on::UNSUPPORTED.iter().find(|(n, _)| *n == part) {
            return Err(format!("retry_on \"{part}\" is not supported: {why}"));
        } else {
            return Err(format!(
                "unknown retry_on condition \"{part}\" (known: {})",
                retry_on::NAMES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(bits)
}

/// Envoy's `RetryPolicy`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub retry_on: u32,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub per_try_idle_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    pub retriable_headers: Vec<HeaderMatcher>,
    /// Only requests matching these are retried (empty: all).
    pub retriable_request_headers: Vec<HeaderMatcher>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    /// `envoy.retry_host_predicates.previous_hosts`: a retry avoids the hosts tried.
    pub avoid_previous_hosts: bool,
    pub host_selection_retry_max_attempts: u32,
}

impl Default for RetryPolicy {
    /// What a request's `x-envoy-retry-on` header enables on a route without a policy.
    fn default() -> Self {
        Self {
            retry_on: 0,
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            retriable_status_codes: Vec::new(),
            retriable_headers: Vec::new(),
            retriable_request_headers: Vec::new(),
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
            avoid_previous_hosts: false,
            host_selection_retry_max_attempts: 1,
        }
    }
}

pub(super) const RETRY_POLICY: FieldTable = &[
    ("retry_on", S),
    ("num_retries", S),
    ("per_try_timeout", S),
    ("per_try_idle_timeout", S),
    (
        "retry_priority",
        R("retry priority plugins are not supported"),
    ),
    ("retry_host_predicate", S),
    (
        "retry_options_predicates",
        R("retry options predicates are not supported"),
    ),
    ("host_selection_retry_max_attempts", S),
    ("retriable_status_codes", S),
    ("retry_back_off", S),
    (
        "rate_limited_retry_back_off",
        R("rate-limited back-off (Retry-After) is not supported"),
    ),
    ("retriable_headers", S),
    ("retriable_request_headers", S),
    (
        "refresh_cluster_on_retry",
        I("the cluster is looked up once per request"),
    ),
];

pub(super) const RETRY_BACK_OFF: FieldTable = &[("base_interval", S), ("max_interval", S)];

pub(super) const RETRY_HOST_PREDICATE: FieldTable = &[("name", S), ("typed_config", S)];

const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_HOSTS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

pub(super) fn read_retry_policy(o: &Obj, d: &mut Diagnostics) -> Option<RetryPolicy> {
    let mut p = RetryPolicy::default();
    if let Some(s) = o.string("retry_on", d) {
        match parse_retry_on(&s) {
            Ok(bits) => p.retry_on = bits,
            Err(e) => d.error(o.at("retry_on"), e),
        }
    }
    p.num_retries = o.uint("num_retries", 0, 100, d).unwrap_or(1) as u32;
    let timeout = |k: &str, d: &mut Diagnostics| o.duration(k, d).filter(|t| !t.is_zero());
    p.per_try_timeout = timeout("per_try_timeout", d);
    p.per_try_idle_timeout = timeout("per_try_idle_timeout", d);
    for (path, v) in o.list("retriable_status_codes", d) {
        match v.as_u64() {
            Some(c @ 100..=599) => p.retriable_status_codes.push(c as u16),
            _ => d.error(path, "expected an HTTP status code (100-599)"),
        }
    }
    for (key, out) in [
        ("retriable_headers", &mut p.retriable_headers),
        (
            "retriable_request_headers",
            &mut p.retriable_request_headers,
        ),
    ] {
        for (path, v) in o.list(key, d) {
            if let Some(h) = read_header_matcher(v, &path, d) {
                out.push(h);
            }
        }
    }
    if let Some(b) = o.object("retry_back_off", RETRY_BACK_OFF, d) {
        match b.duration("base_interval", d) {
            Some(t) if t.is_zero() => d.error(b.at("base_interval"), "must be greater than 0s"),
            Some(t) => {
                p.base_interval = t;
                p.max_interval = t * 10;
            }
            None => d.error(b.at("base_interval"), "missing required field"),
        }
        if let Some(m) = b.duration("max_interval", d) {
            if m < p.base_interval {
                d.error(b.at("max_interval"), "must not be less than base_interval");
            }
            p.max_interval = m;
        }
    }
    for (path, v) in o.list("retry_host_predicate", d) {
        let Some(pred) = Obj::new(v, &path, RETRY_HOST_PREDICATE, d) else {
            continue;
        };
        let name = pred.string("name", d).unwrap_or_default();
        let type_url = pred
            .get("typed_config")
            .and_then(|t| t.get("@type"))
            .and_then(|t| t.as_str());
        if name == PREVIOUS_HOSTS || type_url == Some(PREVIOUS_HOSTS_TYPE) {
            p.avoid_previous_hosts = true;
        } else {
            d.error(
                path,
                format!(
                    "unsupported retry host predicate \"{name}\" (supported: {PREVIOUS_HOSTS})"
                ),
            );
        }
    }
    p.host_selection_retry_max_attempts = o
        .uint("host_selection_retry_max_attempts", 1, 100, d)
        .unwrap_or(1) as u32;
    Some(p)
}

#[cfg(test)]
pub(crate) const TABLES: &[(&str, FieldTable)] = &[
    ("RetryPolicy", RETRY_POLICY),
    ("RetryBackOff", RETRY_BACK_OFF),
    ("RetryHostPredicate", RETRY_HOST_PREDICATE),
];
