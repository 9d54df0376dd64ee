//! The cluster family of the configuration: clusters, their circuit breakers, outlier
//! detection and EDS config (upstream TLS is in `tls`). Field tables and
//! readers shared by the bootstrap and xDS (CDS) front doors.

use super::bootstrap::*;
use super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::yaml::Value;
use super::*;
#[allow(unused_imports)]
use super::{cluster_health::*, cluster_lb::*, endpoint::*, extensions::*, tls::*};
use std::collections::BTreeSet;

#[allow(unused_imports)]
use Field::{Ignored as I, Rejected as R, Supported as S};

pub(super) const CLUSTER: FieldTable = &[
    ("name", S),
    ("type", S),
    ("connect_timeout", S),
    ("lb_policy", S),
    ("load_assignment", S),
    ("dns_refresh_rate", S),
    ("dns_lookup_family", S),
    (
        "respect_dns_ttl",
        I("DNS is re-resolved every dns_refresh_rate"),
    ),
    (
        "dns_failure_refresh_rate",
        I("DNS is re-resolved every dns_refresh_rate"),
    ),
    ("dns_jitter", I("no DNS jitter")),
    ("dns_resolvers", I("the system resolver is used")),
    ("dns_resolution_config", I("the system resolver is used")),
    (
        "typed_dns_resolver_config",
        I("the system resolver is used"),
    ),
    ("use_tcp_for_dns_lookups", I("the system resolver is used")),
    ("circuit_breakers", S),
    ("outlier_detection", S),
    ("health_checks", S),
    ("common_lb_config", S),
    ("round_robin_lb_config", S),
    ("least_request_lb_config", S),
    (
        "per_connection_buffer_limit_bytes",
        I("copy buffers adapt between 4 KiB and 256 KiB"),
    ),
    ("typed_extension_protocol_options", S),
    ("http_protocol_options", S),
    ("http2_protocol_options", S),
    ("common_http_protocol_options", S),
    ("upstream_http_protocol_options", S),
    ("protocol_selection", S),
    ("max_requests_per_connection", S),
    (
        "upstream_connection_options",
        I("TCP keepalive is not configured"),
    ),
    ("cleanup_interval", S),
    ("alt_stat_name", I("stats use the cluster name")),
    ("metadata", I("metadata is informational here")),
    ("track_timeout_budgets", I("no HTTP upstreams yet")),
    ("track_cluster_stats", I("no HTTP upstreams yet")),
    ("preconnect_policy", I("no connection pools yet")),
    (
        "connection_pool_per_downstream_connection",
        I("no connection pools yet"),
    ),
    ("close_connections_on_host_health_failure", S),
    ("ignore_health_on_host_removal", S),
    (
        "wait_for_warm_on_init",
        I("static clusters are warm at start"),
    ),
    ("lrs_server", I("load reporting is not supported")),
    ("transport_socket", S),
    ("transport_socket_matches", S),
    (
        "transport_socket_matcher",
        R("the matcher API is not supported; use transport_socket_matches"),
    ),
    ("eds_cluster_config", S),
    ("cluster_type", R("custom cluster types are not supported")),
    (
        "lb_subset_config",
        R("subset load balancing is not supported"),
    ),
    ("ring_hash_lb_config", S),
    ("maglev_lb_config", S),
    (
        "original_dst_lb_config",
        R("HTTP-header and port-override options of ORIGINAL_DST are not supported"),
    ),
    (
        "upstream_bind_config",
        R("binding upstream source addresses is not supported"),
    ),
    ("filters", R("upstream network filters are not supported")),
    ("load_balancing_policy", S),
];

pub(super) const CIRCUIT_BREAKERS: FieldTable = &[("thresholds", S), ("per_host_thresholds", S)];

pub(super) const THRESHOLDS: FieldTable = &[
    ("priority", S),
    ("max_connections", S),
    ("max_pending_requests", S),
    ("max_requests", S),
    ("max_retries", S),
    ("track_remaining", S),
    ("retry_budget", S),
    ("max_connection_pools", S),
];

pub(super) const RETRY_BUDGET: FieldTable = &[
    ("budget_percent", S),
    ("min_retry_concurrency", S),
    (
        "budget_interval",
        I("the budget follows the requests in flight at each retry"),
    ),
];

pub(super) const PERCENT: FieldTable = &[("value", S)];

pub(super) const TRANSPORT_SOCKET_MATCH: FieldTable =
    &[("name", S), ("match", S), ("transport_socket", S)];

pub(super) const EDS_CLUSTER_CONFIG: FieldTable = &[("eds_config", S), ("service_name", S)];

pub(crate) fn read_cluster(v: &Value, path: &str, d: &mut Diagnostics) -> Option<Cluster> {
    let c = Obj::new(v, path, CLUSTER, d)?;
    let name = c.required_name("name", d);
    let discovery = match c
        .enumeration(
            "type",
            &["STATIC", "STRICT_DNS", "LOGICAL_DNS", "ORIGINAL_DST", "EDS"],
            &[],
            d,
        )
        .as_deref()
    {
        Some("STRICT_DNS") => DiscoveryType::StrictDns,
        Some("LOGICAL_DNS") => DiscoveryType::LogicalDns,
        Some("ORIGINAL_DST") => DiscoveryType::OriginalDst,
        Some("EDS") => DiscoveryType::Eds,
        _ => DiscoveryType::Static,
    };
    let connect_timeout = c
        .duration("connect_timeout", d)
        .unwrap_or(Duration::from_secs(5));
    if connect_timeout.is_zero() {
        d.error(c.at("connect_timeout"), "must be greater than 0s");
    }
    let (lb_policy, common_lb) = read_lb(&c, d);
    let close_connections_on_host_health_failure = c
        .boolean("close_connections_on_host_health_failure", d)
        .unwrap_or(false);
    let ignore_health_on_host_removal = c
        .boolean("ignore_health_on_host_removal", d)
        .unwrap_or(false);
    match (discovery, lb_policy) {
        (DiscoveryType::OriginalDst, LbPolicy::RoundRobin) if c.get("lb_policy").is_none() => {}
        (DiscoveryType::OriginalDst, LbPolicy::ClusterProvided) => {}
        (DiscoveryType::OriginalDst, other) => d.error(
            c.at("lb_policy"),
            format!(
                "ORIGINAL_DST clusters take lb_policy CLUSTER_PROVIDED, not {}",
                other.as_str()
            ),
        ),
        (_, LbPolicy::ClusterProvided) => d.error(
            c.at("lb_policy"),
            "CLUSTER_PROVIDED is only valid with type ORIGINAL_DST",
        ),
        _ => {}
    }
    let lb_policy = if discovery == DiscoveryType::OriginalDst {
        LbPolicy::ClusterProvided
    } else {
        lb_policy
    };
    let http = super::http::read_upstream_http(&c, d);
    let cleanup_interval = c
        .duration("cleanup_interval", d)
        .unwrap_or(Duration::from_secs(5));
    if cleanup_interval < Duration::from_millis(1) {
        d.error(c.at("cleanup_interval"), "must be at least 0.001s");
    }
    let dns_refresh_rate = c
        .duration("dns_refresh_rate", d)
        .unwrap_or(Duration::from_secs(5));
    if dns_refresh_rate < Duration::from_millis(1) {
        d.error(c.at("dns_refresh_rate"), "must be at least 0.001s");
    }
    let dns_lookup_family = match c
        .enumeration(
            "dns_lookup_family",
            &["AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL"],
            &[],
            d,
        )
        .as_deref()
    {
        Some("V4_ONLY") => DnsLookupFamily::V4Only,
        Some("V6_ONLY") => DnsLookupFamily::V6Only,
        Some("V4_PREFERRED") => DnsLookupFamily::V4Preferred,
        Some("ALL") => DnsLookupFamily::All,
        _ => DnsLookupFamily::Auto,
    };
    let mut localities = Vec::new();
    if let Some(la) = c.object("load_assignment", LOAD_ASSIGNMENT, d) {
        if let (Some(cn), Some(n)) = (la.name("cluster_name", d), &name) {
            if cn != *n {
                d.warn(
                    la.at("cluster_name"),
                    format!("\"{cn}\" differs from the cluster name \"{n}\"; ignored"),
                );
            }
        }
        for (lpath, lv) in la.list("endpoints", d) {
            if let Some(l) = read_locality_endpoints(lv, &lpath, discovery, d) {
                localities.push(l);
            }
        }
    }
    let priorities: BTreeSet<u32> = localities.iter().map(|l| l.priority).collect();
    if let Some(max) = priorities.iter().next_back() {
        if *max as usize + 1 != priorities.len() {
            d.error(
                c.at("load_assignment.endpoints"),
                format!("priorities must be contiguous from 0; found {priorities:?}"),
            );
        }
    }
    if discovery == DiscoveryType::OriginalDst && !localities.is_empty() {
        d.error(
            c.at("load_assignment"),
            "ORIGINAL_DST clusters take no endpoints: the upstream is each connection's original destination",
        );
    }
    if discovery == DiscoveryType::LogicalDns {
        let n: usize = localities.iter().map(|l| l.endpoints.len()).sum();
        if n != 1 {
            d.error(
                c.at("load_assignment"),
                format!("LOGICAL_DNS clusters take exactly one endpoint, found {n}"),
            );
        }
    }
    let tls = c
        .object("transport_socket", TRANSPORT_SOCKET, d)
        .and_then(|ts| read_upstream_tls(&ts, d));
    let mut tls_matches: Vec<TransportSocketMatch> = Vec::new();
    for (mpath, mv) in c.list("transport_socket_matches", d) {
        let Some(m) = Obj::new(mv, &mpath, TRANSPORT_SOCKET_MATCH, d) else {
            continue;
        };
        let name = m.required_name("name", d).unwrap_or_default();
        if tls_matches.iter().any(|x| x.name == name) {
            d.error(m.at("name"), format!("duplicate match name \"{name}\""));
        }
        let mut criteria = Vec::new();
        match m.get("match") {
            None => {}
            Some(Value::Mapping(map)) => {
                for (k, v) in map.iter() {
                    match (k, super::endpoint::scalar_string(v)) {
                        (Value::String(k), Some(v)) => criteria.push((k.clone(), v)),
                        _ => d.error(m.at("match"), "expected keys with scalar values"),
                    }
                }
            }
            Some(_) => d.error(
                m.at("match"),
                "expected a mapping of metadata keys to values",
            ),
        }
        let tls = match m.object("transport_socket", TRANSPORT_SOCKET, d) {
            Some(ts) => read_upstream_tls(&ts, d),
            None => {
                d.error(m.at("transport_socket"), "missing required field");
                continue;
            }
        };
        tls_matches.push(TransportSocketMatch {
            name,
            criteria,
            tls,
        });
    }
    let circuit_breakers = c.object("circuit_breakers", CIRCUIT_BREAKERS, d).map(|cb| {
        let mut thresholds: Vec<Thresholds> = Vec::new();
        for (tpath, tv) in cb.list("thresholds", d) {
            let Some(t) = Obj::new(tv, &tpath, THRESHOLDS, d) else {
                continue;
            };
            let high = t
                .enumeration("priority", &["DEFAULT", "HIGH"], &[], d)
                .as_deref()
                == Some("HIGH");
            let limit = |k: &str, def: u32, d: &mut Diagnostics| {
                t.uint(k, 0, u32::MAX as u64, d)
                    .map(|v| v as u32)
                    .unwrap_or(def)
            };
            let retry_budget = t
                .object("retry_budget", RETRY_BUDGET, d)
                .map(|b| RetryBudget {
                    budget_percent: b
                        .object("budget_percent", PERCENT, d)
                        .and_then(|p| p.float("value", 0.0, 100.0, d))
                        .unwrap_or(20.0),
                    min_retry_concurrency: b
                        .uint("min_retry_concurrency", 0, u32::MAX as u64, d)
                        .map(|v| v as u32)
                        .unwrap_or(3),
                });
            if thresholds.iter().any(|x| x.high_priority == high) {
                d.error(
                    t.at("priority"),
                    format!(
                        "a second set of thresholds for priority {}",
                        if high { "HIGH" } else { "DEFAULT" }
                    ),
                );
                continue;
            }
            thresholds.push(Thresholds {
                high_priority: high,
                max_connections: limit("max_connections", 1024, d),
                max_pending_requests: limit("max_pending_requests", 1024, d),
                max_requests: limit("max_requests", 1024, d),
                max_retries: limit("max_retries", 3, d),
                max_connection_pools: limit("max_connection_pools", u32::MAX, d),
                track_remaining: t.boolean("track_remaining", d).unwrap_or(false),
                retry_budget,
            });
        }
        // Per host, Envoy honours max_connections only: the other limits are refused
        // rather than silently ignored.
        let mut per_host_max_connections = None;
        for (tpath, tv) in cb.list("per_host_thresholds", d) {
            let Some(t) = Obj::new(tv, &tpath, THRESHOLDS, d) else {
                continue;
            };
            for k in [
                "max_pending_requests",
                "max_requests",
                "max_retries",
                "retry_budget",
                "max_connection_pools",
            ] {
                if t.get(k).is_some() {
                    d.error(
                        t.at(k),
                        "per host, only max_connections is supported (as Envoy)",
                    );
                }
            }
            if t.enumeration("priority", &["DEFAULT", "HIGH"], &[], d)
                .as_deref()
                == Some("HIGH")
            {
                d.error(
                    t.at("priority"),
                    "per-host thresholds apply to every request: give them without a priority",
                );
            }
            if per_host_max_connections.is_some() {
                d.error(tpath.clone(), "a second set of per-host thresholds");
            }
            per_host_max_connections = t
                .uint("max_connections", 0, u32::MAX as u64, d)
                .map(|v| v as u32);
        }
        CircuitBreakers {
            thresholds,
            per_host_max_connections,
        }
    });
    let checks = c.list("health_checks", d);
    if checks.len() > 1 {
        d.error(
            c.at("health_checks"),
            "only one health check per cluster is supported",
        );
    }
    let health_check = checks
        .first()
        .and_then(|(path, v)| Obj::new(v, path, HEALTH_CHECK, d))
        .and_then(|h| read_health_check(&h, d));
    let outlier_detection = c
        .object("outlier_detection", OUTLIER_DETECTION, d)
        .map(|o| read_outlier_detection(&o, d));
    let mut eds_service_name = None;
    if let Some(eds) = c.object("eds_cluster_config", EDS_CLUSTER_CONFIG, d) {
        if let Some(src) = eds.object("eds_config", CONFIG_SOURCE, d) {
            read_config_source(&src, d);
        }
        eds_service_name = eds.name("service_name", d).filter(|s| !s.is_empty());
    }
    if discovery == DiscoveryType::Eds && !localities.is_empty() {
        d.error(
            c.at("load_assignment"),
            "EDS clusters get their endpoints from EDS, not load_assignment",
        );
    }
    if discovery != DiscoveryType::Eds && c.get("eds_cluster_config").is_some() {
        d.error(c.at("eds_cluster_config"), "only valid with type EDS");
    }
    Some(Cluster {
        name: name?,
        tls,
        tls_matches,
        eds_service_name,
        circuit_breakers,
        health_check,
        outlier_detection,
        discovery,
        connect_timeout,
        lb_policy,
        common_lb,
        ignore_health_on_host_removal,
        close_connections_on_host_health_failure,
        dns_refresh_rate,
        cleanup_interval,
        dns_lookup_family,
        localities,
        http,
    })
}
