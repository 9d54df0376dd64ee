//! A route's action, read against Envoy's field tables: forwarding (`RouteAction`: the
//! cluster or weighted clusters, timeouts, rewrites, retries, mirrors, hashing), redirects
//! and direct responses.

use super::super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::route::{read_mirror, NO_CORS, NO_HEDGE, NO_RATE_LIMIT_SERVICE, TYPED_RETRY};
use super::*;

use super::hash::*;
use super::headers::*;
use super::matchers::*;
use super::retry::{read_retry_policy, RETRY_POLICY};
use Field::{Ignored as I, Rejected as R, Supported as S};

pub(super) const ROUTE_ACTION: FieldTable = &[
    ("cluster", S),
    ("cluster_header", S),
    ("weighted_clusters", S),
    (
        "cluster_specifier_plugin",
        R("cluster specifier plugins are not supported"),
    ),
    (
        "inline_cluster_specifier_plugin",
        R("cluster specifier plugins are not supported"),
    ),
    ("cluster_not_found_response_code", S),
    (
        "metadata_match",
        R("subset load balancing is not supported"),
    ),
    ("prefix_rewrite", S),
    ("regex_rewrite", S),
    (
        "path_rewrite_policy",
        R("path rewrite policies are not supported"),
    ),
    (
        "path_rewrite",
        R("path_rewrite is not supported; use prefix_rewrite or regex_rewrite"),
    ),
    ("host_rewrite_literal", S),
    ("auto_host_rewrite", S),
    (
        "host_rewrite_header",
        R("host_rewrite_header is not supported"),
    ),
    (
        "host_rewrite_path_regex",
        R("host_rewrite_path_regex is not supported"),
    ),
    ("host_rewrite", R("host_rewrite is not supported")),
    (
        "append_x_forwarded_host",
        R("x-forwarded-host is not supported"),
    ),
    ("timeout", S),
    ("idle_timeout", S),
    ("flush_timeout", I("streams are bounded by idle_timeout")),
    ("early_data_policy", I("no early data")),
    ("retry_policy", S),
    ("retry_policy_typed_config", R(TYPED_RETRY)),
    ("request_mirror_policies", S),
    ("priority", S),
    ("rate_limits", R(NO_RATE_LIMIT_SERVICE)),
    ("include_vh_rate_limits", I(NO_RATE_LIMIT_SERVICE)),
    ("hash_policy", S),
    ("cors", R(NO_CORS)),
    ("max_grpc_timeout", S),
    ("grpc_timeout_offset", S),
    (
        "upgrade_configs",
        R("per-route upgrade configs are not supported"),
    ),
    (
        "internal_redirect_policy",
        R("internal redirects are not supported"),
    ),
    (
        "internal_redirect_action",
        R("internal redirects are not supported"),
    ),
    (
        "max_internal_redirects",
        R("internal redirects are not supported"),
    ),
    ("hedge_policy", R(NO_HEDGE)),
    (
        "max_stream_duration",
        R("per-route max_stream_duration is not supported yet"),
    ),
];

pub(super) const WEIGHTED_CLUSTER: FieldTable = &[
    ("clusters", S),
    ("total_weight", S),
    (
        "runtime_key_prefix",
        I("runtime overrides are not supported; weights apply"),
    ),
    (
        "header_name",
        R("weighted cluster selection by header is not supported"),
    ),
    (
        "use_hash_policy",
        R("weighted cluster selection by hash is not supported"),
    ),
];

pub(super) const CLUSTER_WEIGHT: FieldTable = &[
    ("name", S),
    (
        "cluster_header",
        R("cluster_header in weighted clusters is not supported"),
    ),
    ("weight", S),
    (
        "metadata_match",
        R("subset load balancing is not supported"),
    ),
    ("request_headers_to_add", S),
    ("request_headers_to_remove", S),
    ("response_headers_to_add", S),
    ("response_headers_to_remove", S),
    ("host_rewrite_literal", S),
    ("typed_per_filter_config", S),
];

pub(super) const REDIRECT: FieldTable = &[
    ("https_redirect", S),
    ("scheme_redirect", S),
    ("host_redirect", S),
    ("port_redirect", S),
    ("path_redirect", S),
    ("prefix_rewrite", S),
    (
        "regex_rewrite",
        R("regex_rewrite in redirects is not supported"),
    ),
    ("path_rewrite", R("path_rewrite is not supported")),
    ("response_code", S),
    ("strip_query", S),
];

pub(super) const DIRECT_RESPONSE: FieldTable = &[
    ("status", S),
    ("body", S),
    ("body_format", R("body formats are not supported")),
];

pub(super) const DATA_SOURCE: FieldTable = &[
    ("inline_string", S),
    ("inline_bytes", R("use inline_string")),
    (
        "filename",
        R("direct response bodies from files are not supported"),
    ),
    ("environment_variable", R("use inline_string")),
    ("watched_directory", R("use inline_string")),
];

/// Longest inline direct-response body (Envoy's default `max_direct_response_body_size_bytes`).
const MAX_DIRECT_BODY: usize = 4096;

pub(super) fn optional_timeout(
    o: &Obj,
    key: &str,
    default: Option<Duration>,
    d: &mut Diagnostics,
) -> Option<Duration> {
    match o.duration(key, d) {
        Some(t) if t.is_zero() => None,
        Some(t) => Some(t),
        None => default,
    }
}

pub(super) fn read_forward(a: &Obj, d: &mut Diagnostics) -> Option<Forward> {
    let specs = ["cluster", "cluster_header", "weighted_clusters"];
    let given: Vec<&str> = specs
        .iter()
        .copied()
        .filter(|k| a.get(k).is_some())
        .collect();
    if given.len() != 1 {
        d.error(
            &a.path,
            "exactly one of cluster, cluster_header or weighted_clusters is required",
        );
        return None;
    }
    let cluster = match given[0] {
        "cluster" => ClusterSpecifier::Cluster(a.required_name("cluster", d)?),
        "cluster_header" => {
            let h = a.string("cluster_header", d)?.to_ascii_lowercase();
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                d.error(
                    a.at("cluster_header"),
                    format!("\"{h}\" is not a valid header name"),
                );
                return None;
            }
            ClusterSpecifier::Header(h)
        }
        _ => read_weighted_clusters(&a.object("weighted_clusters", WEIGHTED_CLUSTER, d)?, d)?,
    };
    let cluster_not_found_status = match a
        .enumeration(
            "cluster_not_found_response_code",
            &["SERVICE_UNAVAILABLE", "NOT_FOUND", "INTERNAL_SERVER_ERROR"],
            &[],
            d,
        )
        .as_deref()
    {
        Some("NOT_FOUND") => 404,
        Some("INTERNAL_SERVER_ERROR") => 500,
        _ => 503,
    };
    let regex_rewrite = match a.object("regex_rewrite", REGEX_REWRITE, d) {
        Some(rr) => {
            let p = pattern(&rr, "pattern", d)?;
            let sub = rr.string("substitution", d).unwrap_or_default();
            Some((p, re2_substitution(&sub)))
        }
        None => None,
    };
    let prefix_rewrite = a.string("prefix_rewrite", d);
    if prefix_rewrite.is_some() && regex_rewrite.is_some() {
        d.error(
            &a.path,
            "prefix_rewrite and regex_rewrite are mutually exclusive",
        );
    }
    let host_rewrite = match (
        a.string("host_rewrite_literal", d),
        a.boolean("auto_host_rewrite", d),
    ) {
        (Some(_), Some(true)) => {
            d.error(
                &a.path,
                "host_rewrite_literal and auto_host_rewrite are mutually exclusive",
            );
            return None;
        }
        (Some(h), _) => HostRewrite::Literal(valid_host(a, "host_rewrite_literal", h, d)?),
        (None, Some(true)) => HostRewrite::Auto,
        _ => HostRewrite::None,
    };
    Some(Forward {
        cluster,
        cluster_not_found_status,
        timeout: optional_timeout(a, "timeout", Some(Duration::from_secs(15)), d),
        idle_timeout: optional_timeout(a, "idle_timeout", None, d),
        max_grpc_timeout: a.duration("max_grpc_timeout", d),
        grpc_timeout_offset: a
            .duration("grpc_timeout_offset", d)
            .filter(|t| !t.is_zero()),
        prefix_rewrite,
        regex_rewrite,
        host_rewrite,
        retry_policy: a
            .object("retry_policy", RETRY_POLICY, d)
            .and_then(|p| read_retry_policy(&p, d)),
        mirrors: a
            .list("request_mirror_policies", d)
            .into_iter()
            .filter_map(|(p, v)| read_mirror(v, &p, d))
            .collect(),
        hash_policy: a
            .list("hash_policy", d)
            .into_iter()
            .filter_map(|(p, v)| read_hash_policy(v, &p, d))
            .collect(),
        high_priority: a
            .enumeration("priority", &["DEFAULT", "HIGH"], &[], d)
            .as_deref()
            == Some("HIGH"),
    })
}

/// RE2's substitution syntax (`\1`, `\\`) in the regex crate's (`${1}`, `$$`).
pub(super) fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

fn valid_host(o: &Obj, key: &str, h: String, d: &mut Diagnostics) -> Option<String> {
    if h.is_empty() || http::HeaderValue::from_str(&h).is_err() || h.contains([' ', '/']) {
        d.error(o.at(key), format!("\"{h}\" is not a valid host"));
        return None;
    }
    Some(h)
}

fn read_weighted_clusters(w: &Obj, d: &mut Diagnostics) -> Option<ClusterSpecifier> {
    let mut clusters = Vec::new();
    for (cpath, cv) in w.list("clusters", d) {
        let Some(c) = Obj::new(cv, &cpath, CLUSTER_WEIGHT, d) else {
            continue;
        };
        let Some(name) = c.required_name("name", d) else {
            continue;
        };
        let weight = c.uint("weight", 0, u32::MAX as u64, d).unwrap_or(0) as u32;
        let host_rewrite_literal = match c.string("host_rewrite_literal", d) {
            Some(h) => Some(valid_host(&c, "host_rewrite_literal", h, d)?),
            None => None,
        };
        clusters.push(WeightedCluster {
            name,
            weight,
            headers: read_header_mutations(&c, d),
            host_rewrite_literal,
        });
    }
    if clusters.is_empty() {
        d.error(w.at("clusters"), "at least one cluster is required");
        return None;
    }
    let sum: u64 = clusters.iter().map(|c| c.weight as u64).sum();
    let total = match w.uint("total_weight", 1, u32::MAX as u64, d) {
        Some(t) if t != sum => {
            d.error(
                w.at("total_weight"),
                format!("{t} is not the sum of the cluster weights ({sum})"),
            );
            return None;
        }
        _ => sum,
    };
    if total == 0 {
        d.error(w.at("clusters"), "the weights must not all be 0");
        return None;
    }
    Some(ClusterSpecifier::Weighted { clusters, total })
}

pub(super) fn read_redirect(r: &Obj, d: &mut Diagnostics) -> Option<Redirect> {
    let https = r.boolean("https_redirect", d).unwrap_or(false);
    let scheme = if https {
        Some("https".to_string())
    } else {
        r.string("scheme_redirect", d)
            .map(|s| s.to_ascii_lowercase())
    };
    let path = r.string("path_redirect", d);
    let prefix_rewrite = r.string("prefix_rewrite", d);
    if path.is_some() && prefix_rewrite.is_some() {
        d.error(
            &r.path,
            "path_redirect and prefix_rewrite are mutually exclusive",
        );
    }
    let status = match r
        .enumeration(
            "response_code",
            &[
                "MOVED_PERMANENTLY",
                "FOUND",
                "SEE_OTHER",
                "TEMPORARY_REDIRECT",
                "PERMANENT_REDIRECT",
            ],
            &[],
            d,
        )
        .as_deref()
    {
        Some("FOUND") => 302,
        Some("SEE_OTHER") => 303,
        Some("TEMPORARY_REDIRECT") => 307,
        Some("PERMANENT_REDIRECT") => 308,
        _ => 301,
    };
    let host = match r.string("host_redirect", d) {
        Some(h) => Some(valid_host(r, "host_redirect", h, d)?),
        None => None,
    };
    Some(Redirect {
        scheme,
        host,
        port: r.uint("port_redirect", 1, 65535, d).map(|p| p as u16),
        path,
        prefix_rewrite,
        status,
        strip_query: r.boolean("strip_query", d).unwrap_or(false),
    })
}

pub(super) fn read_direct_response(a: &Obj, d: &mut Diagnostics) -> Option<Action> {
    let status = match a.required("status", d) {
        Some(_) => a.uint("status", 200, 599, d)? as u16,
        None => return None,
    };
    let body = match a.object("body", DATA_SOURCE, d) {
        Some(b) => {
            let s = b.string("inline_string", d).unwrap_or_default();
            if s.len() > MAX_DIRECT_BODY {
                d.error(
                    b.at("inline_string"),
                    format!(
                        "{} bytes is more than the {MAX_DIRECT_BODY} allowed",
                        s.len()
                    ),
                );
                return None;
            }
            Some(s)
        }
        None => None,
    };
    Some(Action::DirectResponse { status, body })
}
