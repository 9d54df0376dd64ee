//! `RouteConfiguration`: virtual hosts, routes, matches and actions, read against Envoy's
//! field tables and compiled once (regexes, header formats).

use super::super::walk::{Diagnostics, Field, FieldTable, Obj, MAX_NAME_LEN};
use super::*;
use crate::config::yaml::Value;
use std::collections::HashMap;

use super::action::*;
#[cfg(test)]
use super::hash::*;
use super::headers::*;
use super::matchers::*;
use super::retry::{read_retry_policy, RETRY_POLICY};
use Field::{Ignored as I, Rejected as R, Supported as S};

pub(super) const TYPED_RETRY: &str = "use retry_policy";
const LATER_MIRROR: &str =
    "request mirroring is configured on the route (route.request_mirror_policies)";
pub(super) const NO_RATE_LIMIT_SERVICE: &str = "the global rate limit service is not supported";
pub(super) const NO_CORS: &str = "CORS is not supported";
pub(super) const NO_HEDGE: &str = "request hedging is not supported";

const ROUTE_CONFIGURATION: FieldTable = &[
    ("name", S),
    ("virtual_hosts", S),
    ("vhds", R("VHDS is not supported")),
    (
        "internal_only_headers",
        I("internal-only headers are not stripped"),
    ),
    ("response_headers_to_add", S),
    ("response_headers_to_remove", S),
    ("request_headers_to_add", S),
    ("request_headers_to_remove", S),
    (
        "most_specific_header_mutations_wins",
        R("header mutations apply from route to route configuration"),
    ),
    ("validate_clusters", S),
    (
        "max_direct_response_body_size_bytes",
        I("direct response bodies are limited to 4 KiB inline"),
    ),
    (
        "cluster_specifier_plugins",
        R("cluster specifier plugins are not supported"),
    ),
    ("request_mirror_policies", R(LATER_MIRROR)),
    ("ignore_port_in_host_matching", S),
    ("vhost_header", R("virtual hosts are chosen by :authority")),
    (
        "ignore_path_parameters_in_path_matching",
        R("path parameters are matched as part of the path"),
    ),
    ("metadata", I("metadata is informational here")),
    ("route_specifiers", R("route specifiers are not supported")),
];

const VIRTUAL_HOST: FieldTable = &[
    ("name", S),
    ("domains", S),
    ("routes", S),
    ("matcher", R("the matcher API is not supported; use routes")),
    ("require_tls", R("no TLS yet")),
    ("virtual_clusters", I("virtual cluster stats are not kept")),
    ("rate_limits", R(NO_RATE_LIMIT_SERVICE)),
    ("request_headers_to_add", S),
    ("request_headers_to_remove", S),
    ("response_headers_to_add", S),
    ("response_headers_to_remove", S),
    ("cors", R(NO_CORS)),
    ("typed_per_filter_config", S),
    ("include_request_attempt_count", S),
    ("include_attempt_count_in_response", S),
    ("retry_policy", S),
    ("retry_policy_typed_config", R(TYPED_RETRY)),
    ("hedge_policy", R(NO_HEDGE)),
    (
        "include_is_timeout_retry_header",
        R("x-envoy-is-timeout-retry is not sent"),
    ),
    ("per_request_buffer_limit_bytes", S),
    (
        "request_body_buffer_limit",
        R("use per_request_buffer_limit_bytes"),
    ),
    ("request_mirror_policies", R(LATER_MIRROR)),
    ("metadata", I("metadata is informational here")),
    ("route_specifiers", R("route specifiers are not supported")),
];

const ROUTE: FieldTable = &[
    ("name", S),
    ("match", S),
    ("route", S),
    ("redirect", S),
    ("direct_response", S),
    ("filter_action", R("filter actions are not supported")),
    (
        "non_forwarding_action",
        R("non-forwarding actions are not supported"),
    ),
    ("metadata", I("metadata is informational here")),
    ("decorator", I("tracing is not supported")),
    ("typed_per_filter_config", S),
    ("request_headers_to_add", S),
    ("request_headers_to_remove", S),
    ("response_headers_to_add", S),
    ("response_headers_to_remove", S),
    ("tracing", I("tracing is not supported")),
    ("per_request_buffer_limit_bytes", S),
    (
        "request_body_buffer_limit",
        R("use per_request_buffer_limit_bytes"),
    ),
    ("stat_prefix", I("per-route stats are not kept yet")),
    ("route_specifiers", R("route specifiers are not supported")),
];

const ROUTE_MATCH: FieldTable = &[
    ("prefix", S),
    ("path", S),
    ("safe_regex", S),
    ("connect_matcher", R("CONNECT is not supported")),
    ("path_separated_prefix", S),
    (
        "path_match_policy",
        R("path match policies are not supported"),
    ),
    ("case_sensitive", S),
    ("runtime_fraction", S),
    ("headers", S),
    ("query_parameters", S),
    ("cookies", R("cookie matching is not supported")),
    ("grpc", S),
    ("tls_context", R("no TLS yet")),
    ("dynamic_metadata", R("dynamic metadata is not supported")),
    ("filter_state", R("filter state is not supported")),
];

const EMPTY: FieldTable = &[];

const RUNTIME_FRACTION: FieldTable = &[
    ("default_value", S),
    (
        "runtime_key",
        I("runtime overrides are not supported; default_value applies"),
    ),
];

const FRACTIONAL_PERCENT: FieldTable = &[("numerator", S), ("denominator", S)];

/// Reads a route configuration from RDS or a bootstrap (the name is required).
pub fn read_route_configuration(v: &Value, d: &mut Diagnostics) -> Option<RouteConfiguration> {
    read_route_configuration_obj(v, "", true, d)
}

pub(super) const MIRROR_POLICY: FieldTable = &[
    ("cluster", S),
    ("cluster_header", S),
    ("runtime_fraction", S),
    ("trace_sampled", I("tracing is not supported")),
    ("disable_shadow_host_suffix_append", S),
    (
        "request_headers_mutations",
        R("mirror header mutations are not supported"),
    ),
    ("host_rewrite_literal", S),
];

pub(super) fn read_mirror(v: &Value, path: &str, d: &mut Diagnostics) -> Option<MirrorPolicy> {
    let m = Obj::new(v, path, MIRROR_POLICY, d)?;
    let cluster = match (m.name("cluster", d), m.string("cluster_header", d)) {
        (Some(c), None) => ClusterSpecifier::Cluster(c),
        (None, Some(h)) => ClusterSpecifier::Header(h.to_ascii_lowercase()),
        _ => {
            d.error(path, "exactly one of cluster or cluster_header is required");
            return None;
        }
    };
    let fraction = match m.object("runtime_fraction", RUNTIME_FRACTION, d) {
        Some(rf) => rf
            .object("default_value", FRACTIONAL_PERCENT, d)
            .and_then(|fp| fractional_percent(&fp, d)),
        None => None,
    };
    Some(MirrorPolicy {
        cluster,
        fraction,
        shadow_suffix: !m
            .boolean("disable_shadow_host_suffix_append", d)
            .unwrap_or(false),
        host_rewrite_literal: m.string("host_rewrite_literal", d),
    })
}

pub(super) fn read_route_configuration_obj(
    v: &Value,
    path: &str,
    name_required: bool,
    d: &mut Diagnostics,
) -> Option<RouteConfiguration> {
    let rc = Obj::new(v, path, ROUTE_CONFIGURATION, d)?;
    let name = if name_required {
        rc.required_name("name", d)
    } else {
        Some(rc.name("name", d).unwrap_or_default())
    };
    let mut virtual_hosts = Vec::new();
    // Each domain may appear once across the virtual hosts (as in Envoy).
    let mut domains: HashMap<String, String> = HashMap::new();
    for (vpath, vv) in rc.list("virtual_hosts", d) {
        if let Some(vh) = read_virtual_host(vv, &vpath, &mut domains, d) {
            virtual_hosts.push(vh);
        }
    }
    let headers = read_header_mutations(&rc, d);
    let per_filter = read_per_filter(&rc, d);
    Some(RouteConfiguration {
        name: name?,
        virtual_hosts,
        headers,
        per_filter,
        ignore_port_in_host_matching: rc
            .boolean("ignore_port_in_host_matching", d)
            .unwrap_or(false),
        // Envoy's default: checked for inline route configurations, not for RDS.
        validate_clusters: rc.boolean("validate_clusters", d).unwrap_or(!name_required),
        source: v.to_json(),
    })
}

fn read_virtual_host(
    v: &Value,
    path: &str,
    seen: &mut HashMap<String, String>,
    d: &mut Diagnostics,
) -> Option<VirtualHost> {
    let vh = Obj::new(v, path, VIRTUAL_HOST, d)?;
    let name = vh.required_name("name", d);
    let mut domains = Vec::new();
    let list = vh.list("domains", d);
    if list.is_empty() {
        d.error(vh.at("domains"), "at least one domain is required");
    }
    for (dpath, dv) in list {
        let Some(dom) = dv.as_str() else {
            d.error(dpath, "expected a string");
            continue;
        };
        let dom = dom.to_ascii_lowercase();
        let stars = dom.matches('*').count();
        let valid = !dom.is_empty()
            && dom.len() <= MAX_NAME_LEN
            && !dom.chars().any(|c| c.is_control() || c.is_whitespace())
            && (stars == 0
                || dom == "*"
                || (stars == 1 && (dom.starts_with('*') || dom.ends_with('*'))));
        if !valid {
            d.error(
                &dpath,
                format!("invalid domain \"{dom}\": a host name, optionally with one * at its start or end"),
            );
            continue;
        }
        if let Some(other) = seen.get(&dom) {
            d.error(
                &dpath,
                format!("domain \"{dom}\" is also in virtual host \"{other}\" (each domain may appear once)"),
            );
            continue;
        }
        seen.insert(dom.clone(), name.clone().unwrap_or_default());
        domains.push(dom);
    }
    // The virtual host's retry policy and buffer limit apply to routes without their own.
    let retry = vh
        .object("retry_policy", RETRY_POLICY, d)
        .and_then(|p| read_retry_policy(&p, d));
    let limit = vh.uint("per_request_buffer_limit_bytes", 0, u32::MAX as u64, d);
    let mut routes = Vec::new();
    for (rpath, rv) in vh.list("routes", d) {
        if let Some(mut r) = read_route(rv, &rpath, d) {
            if let Action::Forward(f) = &mut r.action {
                if f.retry_policy.is_none() {
                    f.retry_policy = retry.clone();
                }
            }
            if r.buffer_limit.is_none() {
                r.buffer_limit = limit.map(|l| l as u32);
            }
            routes.push(r);
        }
    }
    let headers = read_header_mutations(&vh, d);
    let per_filter = read_per_filter(&vh, d);
    Some(VirtualHost {
        name: name?,
        domains,
        routes,
        headers,
        per_filter,
        include_request_attempt_count: vh
            .boolean("include_request_attempt_count", d)
            .unwrap_or(false),
        include_attempt_count_in_response: vh
            .boolean("include_attempt_count_in_response", d)
            .unwrap_or(false),
    })
}

fn read_route(v: &Value, path: &str, d: &mut Diagnostics) -> Option<Route> {
    let r = Obj::new(v, path, ROUTE, d)?;
    let name = r.name("name", d).unwrap_or_default();
    let matcher = match r.required("match", d) {
        Some(_) => read_route_match(&r.object("match", ROUTE_MATCH, d)?, d),
        None => None,
    };
    let actions = ["route", "redirect", "direct_response"]
        .iter()
        .filter(|k| r.get(k).is_some())
        .count();
    if actions != 1 {
        d.error(
            path,
            "exactly one of route, redirect or direct_response is required",
        );
        return None;
    }
    let action = if let Some(a) = r.object("route", ROUTE_ACTION, d) {
        read_forward(&a, d).map(|f| Action::Forward(Box::new(f)))
    } else if let Some(a) = r.object("redirect", REDIRECT, d) {
        read_redirect(&a, d).map(Action::Redirect)
    } else if let Some(a) = r.object("direct_response", DIRECT_RESPONSE, d) {
        read_direct_response(&a, d)
    } else {
        None
    };
    let headers = read_header_mutations(&r, d);
    let per_filter = read_per_filter(&r, d);
    Some(Route {
        name,
        matcher: matcher?,
        action: action?,
        headers,
        per_filter,
        buffer_limit: r
            .uint("per_request_buffer_limit_bytes", 0, u32::MAX as u64, d)
            .map(|l| l as u32),
    })
}

fn read_route_match(m: &Obj, d: &mut Diagnostics) -> Option<RouteMatch> {
    let specifiers = ["prefix", "path", "safe_regex", "path_separated_prefix"];
    let given: Vec<&str> = specifiers
        .iter()
        .copied()
        .filter(|k| m.get(k).is_some())
        .collect();
    if given.len() != 1 {
        d.error(
            &m.path,
            "exactly one of prefix, path, safe_regex or path_separated_prefix is required",
        );
        return None;
    }
    let case_sensitive = m.boolean("case_sensitive", d).unwrap_or(true);
    let fold = |s: String| {
        if case_sensitive {
            s
        } else {
            s.to_ascii_lowercase()
        }
    };
    let path = match given[0] {
        "prefix" => PathMatch::Prefix(fold(m.string("prefix", d)?)),
        "path" => PathMatch::Path(fold(m.string("path", d)?)),
        "safe_regex" => PathMatch::Regex(pattern(m, "safe_regex", d)?),
        _ => {
            let p = m.string("path_separated_prefix", d)?;
            if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) || p.contains(['?', '#']) {
                d.error(
                    m.at("path_separated_prefix"),
                    "must start with / and not end with / nor contain ? or #",
                );
                return None;
            }
            PathMatch::SeparatedPrefix(fold(p))
        }
    };
    let mut headers = Vec::new();
    for (hpath, hv) in m.list("headers", d) {
        if let Some(h) = read_header_matcher(hv, &hpath, d) {
            headers.push(h);
        }
    }
    let mut query_parameters = Vec::new();
    for (qpath, qv) in m.list("query_parameters", d) {
        let Some(q) = Obj::new(qv, &qpath, QUERY_PARAMETER_MATCHER, d) else {
            continue;
        };
        let Some(name) = q.required_string("name", d) else {
            continue;
        };
        let value = match q.object("string_match", STRING_MATCHER, d) {
            Some(s) => Some(read_string_matcher(&s, d)?),
            None => None,
        };
        query_parameters.push(QueryParameterMatcher { name, value });
    }
    if m.get("grpc").is_some() {
        let _ = m.object("grpc", EMPTY, d);
    }
    let runtime_fraction = match m.object("runtime_fraction", RUNTIME_FRACTION, d) {
        Some(rf) => rf
            .object("default_value", FRACTIONAL_PERCENT, d)
            .and_then(|fp| fractional_percent(&fp, d)),
        None => None,
    };
    Some(RouteMatch {
        path,
        case_sensitive,
        headers,
        query_parameters,
        grpc: m.get("grpc").is_some(),
        runtime_fraction,
    })
}

/// A `FractionalPercent` as parts per million.
pub(super) fn fractional_percent(fp: &Obj, d: &mut Diagnostics) -> Option<u32> {
    let numerator = fp.uint("numerator", 0, u32::MAX as u64, d).unwrap_or(0);
    let scale = match fp
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
    Some((numerator.saturating_mul(scale)).min(1_000_000) as u32)
}

#[cfg(test)]
pub(crate) const TABLES: &[(&str, FieldTable)] = &[
    ("RouteConfiguration", ROUTE_CONFIGURATION),
    ("VirtualHost", VIRTUAL_HOST),
    ("Route", ROUTE),
    ("RouteMatch", ROUTE_MATCH),
    ("GrpcRouteMatchOptions", EMPTY),
    ("RuntimeFractionalPercent", RUNTIME_FRACTION),
    ("FractionalPercent", FRACTIONAL_PERCENT),
    ("RouteAction", ROUTE_ACTION),
    ("RequestMirrorPolicy", MIRROR_POLICY),
    ("WeightedCluster", WEIGHTED_CLUSTER),
    ("ClusterWeight", CLUSTER_WEIGHT),
    ("RedirectAction", REDIRECT),
    ("DirectResponseAction", DIRECT_RESPONSE),
    ("DataSource", DATA_SOURCE),
    ("HeaderMatcher", HEADER_MATCHER),
    ("StringMatcher", STRING_MATCHER),
    ("RegexMatcher", REGEX_MATCHER),
    ("RegexMatchAndSubstitute", REGEX_REWRITE),
    ("Int64Range", INT64_RANGE),
    ("QueryParameterMatcher", QUERY_PARAMETER_MATCHER),
    ("HeaderValueOption", HEADER_VALUE_OPTION),
    ("HeaderValue", HEADER_VALUE),
    ("FilterConfig", FILTER_CONFIG),
    ("HashPolicy", HASH_POLICY),
    ("Header (hash_policy.header)", HASH_HEADER),
    ("Cookie (hash_policy.cookie)", HASH_COOKIE),
    ("CookieAttribute (cookie.attributes[])", COOKIE_ATTRIBUTE),
    (
        "ConnectionProperties (hash_policy.connection_properties)",
        HASH_CONNECTION,
    ),
    ("QueryParameter (hash_policy.query_parameter)", HASH_QUERY),
    ("FilterState (hash_policy.filter_state)", HASH_FILTER_STATE),
];

pub(crate) const FILTER_CONFIG_TYPE: &str =
    "type.googleapis.com/envoy.config.route.v3.FilterConfig";

pub(super) const FILTER_CONFIG: FieldTable = &[
    ("@type", S),
    ("config", S),
    ("is_optional", S),
    ("disabled", S),
];

/// `typed_per_filter_config`: settings for the connection manager's HTTP filters by filter
/// name. A `LocalRateLimit` (bare or in a `FilterConfig`) and `FilterConfig { disabled: true }`
/// are supported; a per-route fault is refused (its settings would be lost); other types are
/// ignored with a warning (their filters are not supported, so nothing of theirs runs).
pub(super) fn read_per_filter(o: &Obj, d: &mut Diagnostics) -> Vec<(String, PerFilterConfig)> {
    use super::filters as hf;
    let mut out = Vec::new();
    let Some(v) = o.get("typed_per_filter_config") else {
        return out;
    };
    let path = o.at("typed_per_filter_config");
    let Value::Mapping(map) = v else {
        d.error(
            path,
            "expected a mapping from HTTP filter names to configurations",
        );
        return out;
    };
    for (k, v) in map.iter() {
        let Value::String(name) = k else {
            d.error(&path, "filter names must be strings");
            continue;
        };
        let fpath = super::super::walk::join(&path, name);
        let type_of = |v: &Value| v.get("@type").and_then(|t| t.as_str()).map(str::to_string);
        let mut config = v;
        let mut config_path = fpath.clone();
        let mut optional = false;
        if type_of(v).as_deref() == Some(FILTER_CONFIG_TYPE) {
            let Some(fc) = Obj::new(v, &fpath, FILTER_CONFIG, d) else {
                continue;
            };
            optional = fc.boolean("is_optional", d).unwrap_or(false);
            if fc.boolean("disabled", d).unwrap_or(false) {
                out.push((name.clone(), PerFilterConfig::Disabled));
                continue;
            }
            let Some(inner) = fc.get("config") else {
                d.error(
                    fc.at("config"),
                    "missing required field (or disabled: true)",
                );
                continue;
            };
            config = inner;
            config_path = fc.at("config");
        }
        match type_of(config).as_deref() {
            Some(hf::LOCAL_RATELIMIT_TYPE) => {
                if let Some(rl) = Obj::new(config, &config_path, hf::LOCAL_RATELIMIT, d)
                    .and_then(|tc| hf::read_local_ratelimit(&tc, d))
                {
                    out.push((name.clone(), PerFilterConfig::LocalRateLimit(rl)));
                }
            }
            Some(super::super::rbac::HTTP_RBAC_PER_ROUTE_TYPE) => {
                use super::super::rbac;
                let Some(pr) = Obj::new(config, &config_path, rbac::HTTP_RBAC_PER_ROUTE, d) else {
                    continue;
                };
                // No `rbac`: the filter is off for this route (Envoy).
                match pr.object("rbac", rbac::HTTP_RBAC, d) {
                    Some(r) => {
                        if let Some(cfg) = rbac::read_http_rbac(&r, d) {
                            out.push((name.clone(), PerFilterConfig::Rbac(cfg)));
                        }
                    }
                    None => out.push((name.clone(), PerFilterConfig::Disabled)),
                }
            }
            Some(hf::FAULT_TYPE) if !optional => d.error(
                config_path,
                "not supported: per-route fault settings (the connection manager's fault filter applies to every route)",
            ),
            Some(t) => d.warn(
                config_path,
                format!("ignored: per-route configuration of type {t} (that filter is not supported)"),
            ),
            None => d.error(config_path, "missing @type"),
        }
    }
    out
}
