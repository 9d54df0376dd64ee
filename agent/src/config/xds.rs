//! xDS front door: Envoy v3 protos (Listener, Cluster, ClusterLoadAssignment) translated into
//! the same model as the bootstrap, through the same readers and field tables.
//!
//! Each proto is rendered as the JSON Envoy would print for it — supported fields with their
//! values, and every other field that is set as a presence marker — and then read exactly as
//! a bootstrap resource is, so the supported/ignored/rejected decisions and the error paths are
//! one and the same for both front doors.

// Control planes still send deprecated fields (dns_refresh_rate, http_protocol_options, …):
// they must be read and judged like any other.
#![allow(deprecated)]

use super::cluster::read_cluster;
use super::endpoint::{read_lb_endpoint, read_locality_endpoints};
use super::listener::read_listener;
use super::type_urls;
use super::walk::{Diag, Diagnostics};
use super::{
    Cluster, DiscoveryType, Endpoint, HealthStatus, Host, Listener, Locality, LocalityEndpoints,
};
use envoy_types::pb::envoy::config::cluster::v3 as pbc;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as pbe;
use envoy_types::pb::envoy::config::listener::v3 as pbl;
use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3 as connection_limit;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3 as local_ratelimit;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;
use serde_json::{json, Map, Value as Json};

pub const CLUSTER_TYPE: &str = type_urls::CLUSTER;
pub const LISTENER_TYPE: &str = type_urls::LISTENER;
pub const ENDPOINT_TYPE: &str = type_urls::ENDPOINT;
const TCP_PROXY_TYPE: &str = type_urls::TCP_PROXY;
const CONNECTION_LIMIT_TYPE: &str = type_urls::CONNECTION_LIMIT;
const LOCAL_RATELIMIT_TYPE: &str = type_urls::LOCAL_RATELIMIT;

/// A translated resource, or why not (errors, with paths inside the resource).
pub type Translated<T> = Result<(T, Vec<Diag>), Vec<Diag>>;

fn finish<T>(
    v: Json,
    read: impl FnOnce(&serde_yaml::Value, &mut Diagnostics) -> Option<T>,
) -> Translated<T> {
    let y: serde_yaml::Value = match serde_yaml::to_value(&v) {
        Ok(y) => y,
        Err(e) => {
            return Err(vec![Diag {
                path: String::new(),
                message: format!("cannot render resource: {e}"),
            }])
        }
    };
    let mut d = Diagnostics::default();
    match read(&y, &mut d) {
        Some(t) if d.errors.is_empty() => Ok((t, d.warnings)),
        _ => {
            if d.errors.is_empty() {
                d.error("", "invalid resource");
            }
            Err(d.errors)
        }
    }
}

fn duration(d: &PbDuration) -> String {
    if d.nanos == 0 {
        format!("{}s", d.seconds)
    } else {
        let s = format!("{:.9}", d.seconds as f64 + d.nanos as f64 / 1e9);
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// Adds `key: {}` when a field Plumb does not read is set, so the field table decides.
fn mark(m: &mut Map<String, Json>, key: &str, set: bool) {
    if set {
        m.insert(key.into(), json!({}));
    }
}

fn address(a: &core::Address) -> Json {
    match &a.address {
        Some(core::address::Address::SocketAddress(sa)) => {
            let mut m = Map::new();
            m.insert("address".into(), json!(sa.address));
            match &sa.port_specifier {
                Some(core::socket_address::PortSpecifier::PortValue(p)) => {
                    m.insert("port_value".into(), json!(p));
                }
                Some(core::socket_address::PortSpecifier::NamedPort(n)) => {
                    m.insert("named_port".into(), json!(n));
                }
                None => {}
            }
            if sa.protocol != 0 {
                m.insert(
                    "protocol".into(),
                    json!(core::socket_address::Protocol::try_from(sa.protocol)
                        .map(|p| p.as_str_name())
                        .unwrap_or("UNKNOWN")),
                );
            }
            if sa.ipv4_compat {
                m.insert("ipv4_compat".into(), json!(true));
            }
            mark(&mut m, "resolver_name", !sa.resolver_name.is_empty());
            mark(
                &mut m,
                "network_namespace_filepath",
                !sa.network_namespace_filepath.is_empty(),
            );
            json!({ "socket_address": m })
        }
        Some(core::address::Address::Pipe(_)) => json!({"pipe": {}}),
        Some(core::address::Address::EnvoyInternalAddress(_)) => {
            json!({"envoy_internal_address": {}})
        }
        None => json!({}),
    }
}

fn endpoints_json(cla: &pbe::ClusterLoadAssignment) -> Json {
    let localities: Vec<Json> = cla
        .endpoints
        .iter()
        .map(|l| {
            let mut m = Map::new();
            if let Some(loc) = &l.locality {
                m.insert(
                    "locality".into(),
                    json!({"region": loc.region, "zone": loc.zone, "sub_zone": loc.sub_zone}),
                );
            }
            if let Some(w) = &l.load_balancing_weight {
                m.insert("load_balancing_weight".into(), json!(w.value));
            }
            if l.priority != 0 {
                m.insert("priority".into(), json!(l.priority));
            }
            mark(&mut m, "metadata", l.metadata.is_some());
            mark(&mut m, "proximity", l.proximity.is_some());
            mark(
                &mut m,
                "leds_cluster_locality_config",
                l.lb_config.is_some(),
            );
            let lbs: Vec<Json> = l
                .lb_endpoints
                .iter()
                .map(|e| {
                    let mut em = Map::new();
                    match &e.host_identifier {
                        Some(pbe::lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                            let mut ep_m = Map::new();
                            if let Some(a) = &ep.address {
                                ep_m.insert("address".into(), address(a));
                            }
                            if !ep.hostname.is_empty() {
                                ep_m.insert("hostname".into(), json!(ep.hostname));
                            }
                            mark(
                                &mut ep_m,
                                "health_check_config",
                                ep.health_check_config.is_some(),
                            );
                            mark(
                                &mut ep_m,
                                "additional_addresses",
                                !ep.additional_addresses.is_empty(),
                            );
                            em.insert("endpoint".into(), Json::Object(ep_m));
                        }
                        Some(pbe::lb_endpoint::HostIdentifier::EndpointName(_)) => {
                            em.insert("endpoint_name".into(), json!({}));
                        }
                        None => {}
                    }
                    if e.health_status != 0 {
                        em.insert(
                            "health_status".into(),
                            json!(core::HealthStatus::try_from(e.health_status)
                                .map(|h| h.as_str_name())
                                .unwrap_or("UNKNOWN")),
                        );
                    }
                    if let Some(w) = &e.load_balancing_weight {
                        em.insert("load_balancing_weight".into(), json!(w.value));
                    }
                    mark(&mut em, "metadata", e.metadata.is_some());
                    Json::Object(em)
                })
                .collect();
            m.insert("lb_endpoints".into(), json!(lbs));
            Json::Object(m)
        })
        .collect();
    let mut m = Map::new();
    m.insert("cluster_name".into(), json!(cla.cluster_name));
    m.insert("endpoints".into(), json!(localities));
    mark(&mut m, "named_endpoints", !cla.named_endpoints.is_empty());
    mark(&mut m, "policy", cla.policy.is_some());
    Json::Object(m)
}

/// The common LbEndpoint — an IP and port, maybe a weight, health status and hostname —
/// translated directly: EDS updates with 10 000 endpoints must not build 10 000 JSON trees.
/// Anything else returns `None` and goes through the field tables.
fn fast_lb_endpoint(e: &pbe::LbEndpoint) -> Option<Endpoint> {
    if e.metadata.is_some() {
        return None;
    }
    let Some(pbe::lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
        return None;
    };
    if ep.health_check_config.is_some() || !ep.additional_addresses.is_empty() {
        return None;
    }
    let Some(core::address::Address::SocketAddress(sa)) = ep.address.as_ref()?.address.as_ref()
    else {
        return None;
    };
    if sa.protocol != 0
        || !sa.resolver_name.is_empty()
        || sa.ipv4_compat
        || !sa.network_namespace_filepath.is_empty()
    {
        return None;
    }
    let Some(core::socket_address::PortSpecifier::PortValue(port @ 1..=65535)) = sa.port_specifier
    else {
        return None;
    };
    let ip: std::net::IpAddr = sa.address.parse().ok()?;
    let weight = match &e.load_balancing_weight {
        None => 1,
        Some(w) if w.value >= 1 => w.value,
        Some(_) => return None,
    };
    let health_status = match e.health_status {
        0 => HealthStatus::Unknown,
        1 => HealthStatus::Healthy,
        2 => HealthStatus::Unhealthy,
        3 => HealthStatus::Draining,
        4 => HealthStatus::Timeout,
        5 => HealthStatus::Degraded,
        _ => return None,
    };
    Some(Endpoint {
        host: Host::Ip(ip),
        port: port as u16,
        hostname: (!ep.hostname.is_empty()).then(|| ep.hostname.clone()),
        weight,
        health_status,
    })
}

/// EDS: a ClusterLoadAssignment's endpoints.
pub fn endpoints_from_proto(
    cla: &pbe::ClusterLoadAssignment,
) -> Translated<Vec<LocalityEndpoints>> {
    let mut d = Diagnostics::default();
    if !cla.named_endpoints.is_empty() {
        d.error(
            "named_endpoints",
            "not supported: named endpoints are not supported",
        );
    }
    if cla.policy.is_some() {
        d.warn(
            "policy",
            "ignored: drop_overloads and a custom overprovisioning_factor are not applied (Envoy's default factor 1.4 is)",
        );
    }
    let mut out = Vec::with_capacity(cla.endpoints.len());
    for (i, l) in cla.endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        let simple = l.metadata.is_none()
            && l.proximity.is_none()
            && l.lb_config.is_none()
            && l.priority <= 127
            && l.load_balancing_weight
                .as_ref()
                .is_none_or(|w| w.value >= 1);
        if !simple {
            // Unusual locality: the whole locality goes through the tables.
            let one = pbe::ClusterLoadAssignment {
                endpoints: vec![l.clone()],
                ..Default::default()
            };
            let j = endpoints_json(&one);
            match finish(j["endpoints"][0].clone(), |y, d| {
                read_locality_endpoints(y, &path, DiscoveryType::Static, d)
            }) {
                Ok((loc, w)) => {
                    d.warnings.extend(w);
                    out.push(loc);
                }
                Err(e) => d.errors.extend(e),
            }
            continue;
        }
        let locality = l
            .locality
            .as_ref()
            .map(|loc| Locality {
                region: loc.region.clone(),
                zone: loc.zone.clone(),
                sub_zone: loc.sub_zone.clone(),
            })
            .unwrap_or_default();
        let mut endpoints = Vec::with_capacity(l.lb_endpoints.len());
        for (j, e) in l.lb_endpoints.iter().enumerate() {
            if let Some(ep) = fast_lb_endpoint(e) {
                endpoints.push(ep);
                continue;
            }
            let one = pbe::ClusterLoadAssignment {
                endpoints: vec![pbe::LocalityLbEndpoints {
                    lb_endpoints: vec![e.clone()],
                    ..Default::default()
                }],
                ..Default::default()
            };
            let jv = endpoints_json(&one);
            let epath = format!("{path}.lb_endpoints[{j}]");
            match finish(jv["endpoints"][0]["lb_endpoints"][0].clone(), |y, d| {
                read_lb_endpoint(y, &epath, DiscoveryType::Static, d)
            }) {
                Ok((ep, w)) => {
                    d.warnings.extend(w);
                    endpoints.push(ep);
                }
                Err(e) => d.errors.extend(e),
            }
        }
        out.push(LocalityEndpoints {
            locality,
            priority: l.priority,
            load_balancing_weight: l.load_balancing_weight.as_ref().map(|w| w.value),
            endpoints,
        });
    }
    if d.errors.is_empty() {
        Ok((out, d.warnings))
    } else {
        Err(d.errors)
    }
}

pub fn cluster_from_proto(c: &pbc::Cluster) -> Translated<Cluster> {
    if c.transport_socket.is_some()
        || !c.transport_socket_matches.is_empty()
        || c.transport_socket_matcher.is_some()
    {
        return Err(vec![Diag {
            path: "transport_socket".into(),
            message:
                "not supported: TLS is not implemented yet; refusing rather than sending plaintext"
                    .into(),
        }]);
    }
    let mut m = Map::new();
    m.insert("name".into(), json!(c.name));
    match &c.cluster_discovery_type {
        Some(pbc::cluster::ClusterDiscoveryType::Type(t)) => {
            m.insert(
                "type".into(),
                json!(pbc::cluster::DiscoveryType::try_from(*t)
                    .map(|t| t.as_str_name())
                    .unwrap_or("UNKNOWN")),
            );
        }
        Some(pbc::cluster::ClusterDiscoveryType::ClusterType(_)) => {
            mark(&mut m, "cluster_type", true)
        }
        None => {}
    }
    if let Some(t) = &c.connect_timeout {
        m.insert("connect_timeout".into(), json!(duration(t)));
    }
    m.insert(
        "lb_policy".into(),
        json!(pbc::cluster::LbPolicy::try_from(c.lb_policy)
            .map(|p| p.as_str_name())
            .unwrap_or("UNKNOWN")),
    );
    if let Some(cla) = &c.load_assignment {
        m.insert("load_assignment".into(), endpoints_json(cla));
    }
    if let Some(eds) = &c.eds_cluster_config {
        let mut e = Map::new();
        if let Some(src) = &eds.eds_config {
            let mut s = Map::new();
            match &src.config_source_specifier {
                Some(core::config_source::ConfigSourceSpecifier::Ads(_)) => {
                    s.insert("ads".into(), json!({}));
                }
                Some(core::config_source::ConfigSourceSpecifier::ApiConfigSource(_)) => {
                    mark(&mut s, "api_config_source", true)
                }
                Some(core::config_source::ConfigSourceSpecifier::Path(_)) => {
                    mark(&mut s, "path", true)
                }
                Some(core::config_source::ConfigSourceSpecifier::PathConfigSource(_)) => {
                    mark(&mut s, "path_config_source", true)
                }
                Some(core::config_source::ConfigSourceSpecifier::Self_(_)) => {
                    mark(&mut s, "self", true)
                }
                None => {}
            }
            if let Some(t) = &src.initial_fetch_timeout {
                s.insert("initial_fetch_timeout".into(), json!(duration(t)));
            }
            e.insert("eds_config".into(), Json::Object(s));
        }
        if !eds.service_name.is_empty() {
            e.insert("service_name".into(), json!(eds.service_name));
        }
        m.insert("eds_cluster_config".into(), Json::Object(e));
    }
    if let Some(r) = &c.dns_refresh_rate {
        m.insert("dns_refresh_rate".into(), json!(duration(r)));
    }
    if c.dns_lookup_family != 0 {
        m.insert(
            "dns_lookup_family".into(),
            json!(pbc::cluster::DnsLookupFamily::try_from(c.dns_lookup_family)
                .map(|f| f.as_str_name())
                .unwrap_or("UNKNOWN")),
        );
    }

    mark(&mut m, "alt_stat_name", !c.alt_stat_name.is_empty());
    mark(
        &mut m,
        "per_connection_buffer_limit_bytes",
        c.per_connection_buffer_limit_bytes.is_some(),
    );
    mark(&mut m, "health_checks", !c.health_checks.is_empty());
    mark(
        &mut m,
        "max_requests_per_connection",
        c.max_requests_per_connection.is_some(),
    );
    if let Some(cb) = &c.circuit_breakers {
        let thresholds: Vec<Json> = cb
            .thresholds
            .iter()
            .map(|t| {
                let mut tm = Map::new();
                if t.priority != 0 {
                    tm.insert(
                        "priority".into(),
                        json!(core::RoutingPriority::try_from(t.priority)
                            .map(|p| p.as_str_name())
                            .unwrap_or("UNKNOWN")),
                    );
                }
                for (k, v) in [
                    ("max_connections", &t.max_connections),
                    ("max_pending_requests", &t.max_pending_requests),
                    ("max_requests", &t.max_requests),
                    ("max_retries", &t.max_retries),
                ] {
                    if let Some(v) = v {
                        tm.insert(k.into(), json!(v.value));
                    }
                }
                if t.track_remaining {
                    tm.insert("track_remaining".into(), json!(true));
                }
                mark(&mut tm, "retry_budget", t.retry_budget.is_some());
                mark(
                    &mut tm,
                    "max_connection_pools",
                    t.max_connection_pools.is_some(),
                );
                Json::Object(tm)
            })
            .collect();
        let mut cm = Map::new();
        cm.insert("thresholds".into(), json!(thresholds));
        mark(
            &mut cm,
            "per_host_thresholds",
            !cb.per_host_thresholds.is_empty(),
        );
        m.insert("circuit_breakers".into(), Json::Object(cm));
    }
    mark(
        &mut m,
        "upstream_http_protocol_options",
        c.upstream_http_protocol_options.is_some(),
    );
    mark(
        &mut m,
        "common_http_protocol_options",
        c.common_http_protocol_options.is_some(),
    );
    mark(
        &mut m,
        "http_protocol_options",
        c.http_protocol_options.is_some(),
    );
    mark(
        &mut m,
        "typed_extension_protocol_options",
        !c.typed_extension_protocol_options.is_empty(),
    );
    mark(&mut m, "dns_jitter", c.dns_jitter.is_some());
    mark(
        &mut m,
        "dns_failure_refresh_rate",
        c.dns_failure_refresh_rate.is_some(),
    );
    mark(&mut m, "respect_dns_ttl", c.respect_dns_ttl);
    mark(&mut m, "dns_resolvers", !c.dns_resolvers.is_empty());
    mark(&mut m, "use_tcp_for_dns_lookups", c.use_tcp_for_dns_lookups);
    mark(
        &mut m,
        "dns_resolution_config",
        c.dns_resolution_config.is_some(),
    );
    mark(
        &mut m,
        "typed_dns_resolver_config",
        c.typed_dns_resolver_config.is_some(),
    );
    mark(
        &mut m,
        "wait_for_warm_on_init",
        c.wait_for_warm_on_init.is_some(),
    );
    if let Some(o) = &c.outlier_detection {
        let mut om = Map::new();
        for (k, v) in [
            ("consecutive_5xx", &o.consecutive_5xx),
            ("max_ejection_percent", &o.max_ejection_percent),
            ("enforcing_consecutive_5xx", &o.enforcing_consecutive_5xx),
            (
                "consecutive_gateway_failure",
                &o.consecutive_gateway_failure,
            ),
            (
                "enforcing_consecutive_gateway_failure",
                &o.enforcing_consecutive_gateway_failure,
            ),
            (
                "consecutive_local_origin_failure",
                &o.consecutive_local_origin_failure,
            ),
            (
                "enforcing_consecutive_local_origin_failure",
                &o.enforcing_consecutive_local_origin_failure,
            ),
        ] {
            if let Some(v) = v {
                om.insert(k.into(), json!(v.value));
            }
        }
        for (k, v) in [
            ("interval", &o.interval),
            ("base_ejection_time", &o.base_ejection_time),
            ("max_ejection_time", &o.max_ejection_time),
        ] {
            if let Some(v) = v {
                om.insert(k.into(), json!(duration(v)));
            }
        }
        if o.split_external_local_origin_errors {
            om.insert("split_external_local_origin_errors".into(), json!(true));
        }
        mark(
            &mut om,
            "enforcing_success_rate",
            o.enforcing_success_rate.is_some(),
        );
        mark(
            &mut om,
            "success_rate_minimum_hosts",
            o.success_rate_minimum_hosts.is_some(),
        );
        mark(
            &mut om,
            "success_rate_request_volume",
            o.success_rate_request_volume.is_some(),
        );
        mark(
            &mut om,
            "success_rate_stdev_factor",
            o.success_rate_stdev_factor.is_some(),
        );
        mark(
            &mut om,
            "enforcing_local_origin_success_rate",
            o.enforcing_local_origin_success_rate.is_some(),
        );
        mark(
            &mut om,
            "failure_percentage_threshold",
            o.failure_percentage_threshold.is_some(),
        );
        mark(
            &mut om,
            "enforcing_failure_percentage",
            o.enforcing_failure_percentage.is_some(),
        );
        mark(
            &mut om,
            "enforcing_failure_percentage_local_origin",
            o.enforcing_failure_percentage_local_origin.is_some(),
        );
        mark(
            &mut om,
            "failure_percentage_minimum_hosts",
            o.failure_percentage_minimum_hosts.is_some(),
        );
        mark(
            &mut om,
            "failure_percentage_request_volume",
            o.failure_percentage_request_volume.is_some(),
        );
        mark(
            &mut om,
            "max_ejection_time_jitter",
            o.max_ejection_time_jitter.is_some(),
        );
        mark(
            &mut om,
            "successful_active_health_check_uneject_host",
            o.successful_active_health_check_uneject_host.is_some(),
        );
        mark(&mut om, "monitors", !o.monitors.is_empty());
        mark(
            &mut om,
            "always_eject_one_host",
            o.always_eject_one_host.is_some(),
        );
        mark(
            &mut om,
            "detect_degraded_hosts",
            o.detect_degraded_hosts.is_some(),
        );
        m.insert("outlier_detection".into(), Json::Object(om));
    }
    if let Some(i) = &c.cleanup_interval {
        m.insert("cleanup_interval".into(), json!(duration(i)));
    }
    mark(
        &mut m,
        "upstream_bind_config",
        c.upstream_bind_config.is_some(),
    );
    mark(&mut m, "lb_subset_config", c.lb_subset_config.is_some());
    mark(&mut m, "common_lb_config", c.common_lb_config.is_some());
    mark(&mut m, "metadata", c.metadata.is_some());
    mark(&mut m, "protocol_selection", c.protocol_selection != 0);
    mark(
        &mut m,
        "upstream_connection_options",
        c.upstream_connection_options.is_some(),
    );
    mark(
        &mut m,
        "close_connections_on_host_health_failure",
        c.close_connections_on_host_health_failure,
    );
    mark(
        &mut m,
        "ignore_health_on_host_removal",
        c.ignore_health_on_host_removal,
    );
    mark(&mut m, "filters", !c.filters.is_empty());
    mark(
        &mut m,
        "load_balancing_policy",
        c.load_balancing_policy.is_some(),
    );
    mark(&mut m, "lrs_server", c.lrs_server.is_some());
    mark(&mut m, "track_timeout_budgets", c.track_timeout_budgets);
    mark(
        &mut m,
        "track_cluster_stats",
        c.track_cluster_stats.is_some(),
    );
    mark(&mut m, "preconnect_policy", c.preconnect_policy.is_some());
    mark(
        &mut m,
        "connection_pool_per_downstream_connection",
        c.connection_pool_per_downstream_connection,
    );
    match &c.lb_config {
        Some(pbc::cluster::LbConfig::RingHashLbConfig(_)) => {
            mark(&mut m, "ring_hash_lb_config", true)
        }
        Some(pbc::cluster::LbConfig::MaglevLbConfig(_)) => mark(&mut m, "maglev_lb_config", true),
        Some(pbc::cluster::LbConfig::OriginalDstLbConfig(_)) => {
            mark(&mut m, "original_dst_lb_config", true)
        }
        Some(pbc::cluster::LbConfig::LeastRequestLbConfig(_)) => {
            mark(&mut m, "least_request_lb_config", true)
        }
        Some(pbc::cluster::LbConfig::RoundRobinLbConfig(_)) => {
            mark(&mut m, "round_robin_lb_config", true)
        }
        None => {}
    }
    finish(Json::Object(m), |y, d| read_cluster(y, "", None, d))
}

fn tcp_proxy_json(any: &Any) -> Json {
    let Ok(tp) = tcp::TcpProxy::decode(any.value.as_slice()) else {
        return json!({"@type": any.type_url, "stat_prefix": {}, "undecodable": {}});
    };
    let mut m = Map::new();
    m.insert("@type".into(), json!(TCP_PROXY_TYPE));
    m.insert("stat_prefix".into(), json!(tp.stat_prefix));
    match &tp.cluster_specifier {
        Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c)) => {
            m.insert("cluster".into(), json!(c));
        }
        Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(_)) => {
            mark(&mut m, "weighted_clusters", true)
        }
        None => {}
    }
    if let Some(t) = &tp.idle_timeout {
        m.insert("idle_timeout".into(), json!(duration(t)));
    }
    if let Some(n) = &tp.max_connect_attempts {
        m.insert("max_connect_attempts".into(), json!(n.value));
    }
    if let Some(t) = &tp.max_downstream_connection_duration {
        m.insert(
            "max_downstream_connection_duration".into(),
            json!(duration(t)),
        );
    }
    mark(&mut m, "on_demand", tp.on_demand.is_some());
    mark(&mut m, "metadata_match", tp.metadata_match.is_some());
    mark(
        &mut m,
        "downstream_idle_timeout",
        tp.downstream_idle_timeout.is_some(),
    );
    mark(
        &mut m,
        "upstream_idle_timeout",
        tp.upstream_idle_timeout.is_some(),
    );
    mark(&mut m, "access_log", !tp.access_log.is_empty());
    mark(&mut m, "backoff_options", tp.backoff_options.is_some());
    mark(&mut m, "hash_policy", !tp.hash_policy.is_empty());
    mark(&mut m, "tunneling_config", tp.tunneling_config.is_some());
    mark(
        &mut m,
        "access_log_flush_interval",
        tp.access_log_flush_interval.is_some(),
    );
    mark(
        &mut m,
        "flush_access_log_on_connected",
        tp.flush_access_log_on_connected,
    );
    mark(
        &mut m,
        "access_log_options",
        tp.access_log_options.is_some(),
    );
    mark(
        &mut m,
        "proxy_protocol_tlvs",
        !tp.proxy_protocol_tlvs.is_empty(),
    );
    Json::Object(m)
}

fn cidrs_json(v: &[core::CidrRange]) -> Json {
    json!(v
        .iter()
        .map(|c| {
            let mut j = Map::new();
            j.insert("address_prefix".into(), json!(c.address_prefix));
            if let Some(l) = &c.prefix_len {
                j.insert("prefix_len".into(), json!(l.value));
            }
            Json::Object(j)
        })
        .collect::<Vec<_>>())
}

fn filter_chain_match_json(fcm: &pbl::FilterChainMatch) -> Json {
    let mut m = Map::new();
    if let Some(p) = &fcm.destination_port {
        m.insert("destination_port".into(), json!(p.value));
    }
    if !fcm.prefix_ranges.is_empty() {
        m.insert("prefix_ranges".into(), cidrs_json(&fcm.prefix_ranges));
    }
    if !fcm.server_names.is_empty() {
        m.insert("server_names".into(), json!(fcm.server_names));
    }
    if !fcm.transport_protocol.is_empty() {
        m.insert("transport_protocol".into(), json!(fcm.transport_protocol));
    }
    if !fcm.application_protocols.is_empty() {
        m.insert(
            "application_protocols".into(),
            json!(fcm.application_protocols),
        );
    }
    if !fcm.direct_source_prefix_ranges.is_empty() {
        m.insert(
            "direct_source_prefix_ranges".into(),
            cidrs_json(&fcm.direct_source_prefix_ranges),
        );
    }
    if fcm.source_type != 0 {
        m.insert(
            "source_type".into(),
            json!(
                pbl::filter_chain_match::ConnectionSourceType::try_from(fcm.source_type)
                    .map(|t| t.as_str_name())
                    .unwrap_or("UNKNOWN")
            ),
        );
    }
    if !fcm.source_prefix_ranges.is_empty() {
        m.insert(
            "source_prefix_ranges".into(),
            cidrs_json(&fcm.source_prefix_ranges),
        );
    }
    if !fcm.source_ports.is_empty() {
        m.insert("source_ports".into(), json!(fcm.source_ports));
    }
    mark(&mut m, "address_suffix", !fcm.address_suffix.is_empty());
    mark(&mut m, "suffix_len", fcm.suffix_len.is_some());
    Json::Object(m)
}

fn connection_limit_json(any: &Any) -> Json {
    let Ok(cl) = connection_limit::ConnectionLimit::decode(any.value.as_slice()) else {
        return json!({"@type": any.type_url, "stat_prefix": {}, "undecodable": {}});
    };
    let mut m = Map::new();
    m.insert("@type".into(), json!(any.type_url));
    m.insert("stat_prefix".into(), json!(cl.stat_prefix));
    if let Some(n) = &cl.max_connections {
        m.insert("max_connections".into(), json!(n.value));
    }
    if let Some(t) = &cl.delay {
        m.insert("delay".into(), json!(duration(t)));
    }
    mark(&mut m, "runtime_enabled", cl.runtime_enabled.is_some());
    Json::Object(m)
}

fn local_ratelimit_json(any: &Any) -> Json {
    let Ok(rl) = local_ratelimit::LocalRateLimit::decode(any.value.as_slice()) else {
        return json!({"@type": any.type_url, "stat_prefix": {}, "undecodable": {}});
    };
    let mut m = Map::new();
    m.insert("@type".into(), json!(any.type_url));
    m.insert("stat_prefix".into(), json!(rl.stat_prefix));
    if let Some(tb) = &rl.token_bucket {
        let mut t = Map::new();
        t.insert("max_tokens".into(), json!(tb.max_tokens));
        if let Some(n) = &tb.tokens_per_fill {
            t.insert("tokens_per_fill".into(), json!(n.value));
        }
        if let Some(i) = &tb.fill_interval {
            t.insert("fill_interval".into(), json!(duration(i)));
        }
        m.insert("token_bucket".into(), Json::Object(t));
    }
    mark(&mut m, "runtime_enabled", rl.runtime_enabled.is_some());
    mark(&mut m, "share_key", !rl.share_key.is_empty());
    Json::Object(m)
}

fn filter_chain_json(fc: &pbl::FilterChain) -> Json {
    let mut c = Map::new();
    if !fc.name.is_empty() {
        c.insert("name".into(), json!(fc.name));
    }
    if let Some(fcm) = &fc.filter_chain_match {
        c.insert("filter_chain_match".into(), filter_chain_match_json(fcm));
    }
    let filters: Vec<Json> = fc
        .filters
        .iter()
        .map(|f| {
            let mut fj = Map::new();
            fj.insert("name".into(), json!(f.name));
            match &f.config_type {
                Some(pbl::filter::ConfigType::TypedConfig(any)) => {
                    let tc = match any.type_url.as_str() {
                        TCP_PROXY_TYPE => tcp_proxy_json(any),
                        CONNECTION_LIMIT_TYPE => connection_limit_json(any),
                        LOCAL_RATELIMIT_TYPE => local_ratelimit_json(any),
                        _ => json!({"@type": any.type_url}),
                    };
                    fj.insert("typed_config".into(), tc);
                }
                Some(pbl::filter::ConfigType::ConfigDiscovery(_)) => {
                    mark(&mut fj, "config_discovery", true)
                }
                None => {}
            }
            Json::Object(fj)
        })
        .collect();
    c.insert("filters".into(), json!(filters));
    mark(&mut c, "transport_socket", fc.transport_socket.is_some());
    mark(
        &mut c,
        "transport_socket_connect_timeout",
        fc.transport_socket_connect_timeout.is_some(),
    );
    mark(&mut c, "metadata", fc.metadata.is_some());
    Json::Object(c)
}

pub fn listener_from_proto(l: &pbl::Listener) -> Translated<Listener> {
    let mut m = Map::new();
    if !l.name.is_empty() {
        m.insert("name".into(), json!(l.name));
    }
    if let Some(a) = &l.address {
        m.insert("address".into(), address(a));
    }
    if !l.stat_prefix.is_empty() {
        m.insert("stat_prefix".into(), json!(l.stat_prefix));
    }
    let chains: Vec<Json> = l.filter_chains.iter().map(filter_chain_json).collect();
    m.insert("filter_chains".into(), json!(chains));
    if let Some(b) = &l.use_original_dst {
        m.insert("use_original_dst".into(), json!(b.value));
    }
    if let Some(b) = &l.bind_to_port {
        m.insert("bind_to_port".into(), json!(b.value));
    }
    if let Some(n) = &l.tcp_backlog_size {
        m.insert("tcp_backlog_size".into(), json!(n.value));
    }
    let lfs: Vec<Json> = l
        .listener_filters
        .iter()
        .map(|f| {
            let mut fj = Map::new();
            fj.insert("name".into(), json!(f.name));
            match &f.config_type {
                Some(pbl::listener_filter::ConfigType::TypedConfig(any)) => {
                    fj.insert("typed_config".into(), json!({"@type": any.type_url}));
                }
                Some(pbl::listener_filter::ConfigType::ConfigDiscovery(_)) => {
                    mark(&mut fj, "config_discovery", true)
                }
                None => {}
            }
            mark(&mut fj, "filter_disabled", f.filter_disabled.is_some());
            Json::Object(fj)
        })
        .collect();
    if !lfs.is_empty() {
        m.insert("listener_filters".into(), json!(lfs));
    }
    mark(
        &mut m,
        "additional_addresses",
        !l.additional_addresses.is_empty(),
    );
    mark(
        &mut m,
        "filter_chain_matcher",
        l.filter_chain_matcher.is_some(),
    );
    if let Some(fc) = &l.default_filter_chain {
        m.insert("default_filter_chain".into(), filter_chain_json(fc));
    }
    mark(
        &mut m,
        "per_connection_buffer_limit_bytes",
        l.per_connection_buffer_limit_bytes.is_some(),
    );
    mark(&mut m, "metadata", l.metadata.is_some());
    mark(&mut m, "drain_type", l.drain_type != 0);
    if let Some(t) = &l.listener_filters_timeout {
        m.insert("listener_filters_timeout".into(), json!(duration(t)));
    }
    if l.continue_on_listener_filters_timeout {
        m.insert("continue_on_listener_filters_timeout".into(), json!(true));
    }
    mark(&mut m, "transparent", l.transparent.is_some());
    mark(&mut m, "freebind", l.freebind.is_some());
    mark(&mut m, "socket_options", !l.socket_options.is_empty());
    mark(
        &mut m,
        "tcp_fast_open_queue_length",
        l.tcp_fast_open_queue_length.is_some(),
    );
    mark(&mut m, "traffic_direction", l.traffic_direction != 0);
    mark(
        &mut m,
        "udp_listener_config",
        l.udp_listener_config.is_some(),
    );
    mark(&mut m, "api_listener", l.api_listener.is_some());
    mark(
        &mut m,
        "connection_balance_config",
        l.connection_balance_config.is_some(),
    );
    mark(&mut m, "enable_reuse_port", l.enable_reuse_port.is_some());
    mark(&mut m, "access_log", !l.access_log.is_empty());
    mark(
        &mut m,
        "max_connections_to_accept_per_socket_event",
        l.max_connections_to_accept_per_socket_event.is_some(),
    );
    mark(&mut m, "enable_mptcp", l.enable_mptcp);
    mark(
        &mut m,
        "ignore_global_conn_limit",
        l.ignore_global_conn_limit,
    );
    finish(Json::Object(m), |y, d| read_listener(y, "", d))
}

/// Renders diagnostics as one line for a NACK's error_detail.
pub fn describe(what: &str, errors: &[Diag]) -> String {
    let parts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    format!("{what}: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn sock(ip: &str, port: u32) -> core::Address {
        core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: ip.into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn eds_cluster_and_assignment_translate() {
        let c = pbc::Cluster {
            name: "web".into(),
            cluster_discovery_type: Some(pbc::cluster::ClusterDiscoveryType::Type(
                pbc::cluster::DiscoveryType::Eds as i32,
            )),
            connect_timeout: Some(PbDuration {
                seconds: 0,
                nanos: 250_000_000,
            }),
            eds_cluster_config: Some(pbc::cluster::EdsClusterConfig {
                eds_config: Some(core::ConfigSource {
                    config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                        Default::default(),
                    )),
                    ..Default::default()
                }),
                service_name: "web-svc".into(),
            }),
            ..Default::default()
        };
        let (m, warnings) = cluster_from_proto(&c).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(m.discovery, DiscoveryType::Eds);
        assert_eq!(m.eds_service_name.as_deref(), Some("web-svc"));
        assert_eq!(m.connect_timeout, std::time::Duration::from_millis(250));

        let cla = pbe::ClusterLoadAssignment {
            cluster_name: "web-svc".into(),
            endpoints: vec![pbe::LocalityLbEndpoints {
                lb_endpoints: vec![pbe::LbEndpoint {
                    host_identifier: Some(pbe::lb_endpoint::HostIdentifier::Endpoint(
                        pbe::Endpoint {
                            address: Some(sock("10.0.0.1", 8080)),
                            ..Default::default()
                        },
                    )),
                    load_balancing_weight: Some(UInt32Value { value: 3 }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (l, _) = endpoints_from_proto(&cla).unwrap();
        assert_eq!(l[0].endpoints[0].weight, 3);
    }

    #[test]
    fn rejected_fields_are_named_in_errors() {
        let c = pbc::Cluster {
            name: "tls".into(),
            transport_socket: Some(Default::default()),
            ..Default::default()
        };
        let e = cluster_from_proto(&c).unwrap_err();
        assert_eq!(e[0].path, "transport_socket");
        assert!(e[0].message.contains("TLS"), "{e:?}");
        let bad = pbe::ClusterLoadAssignment {
            cluster_name: "x".into(),
            endpoints: vec![pbe::LocalityLbEndpoints {
                lb_endpoints: vec![pbe::LbEndpoint {
                    host_identifier: Some(pbe::lb_endpoint::HostIdentifier::Endpoint(
                        pbe::Endpoint {
                            address: Some(sock("not-an-ip", 80)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = endpoints_from_proto(&bad).unwrap_err();
        assert_eq!(
            e[0].path,
            "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"
        );
    }

    #[test]
    fn circuit_breakers_and_outlier_detection_are_carried() {
        let c = pbc::Cluster {
            name: "cb".into(),
            circuit_breakers: Some(pbc::CircuitBreakers {
                thresholds: vec![pbc::circuit_breakers::Thresholds {
                    max_connections: Some(UInt32Value { value: 7 }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            outlier_detection: Some(pbc::OutlierDetection {
                consecutive_5xx: Some(UInt32Value { value: 3 }),
                interval: Some(PbDuration {
                    seconds: 2,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (m, warnings) = cluster_from_proto(&c).unwrap();
        let t = &m.circuit_breakers.as_ref().unwrap().thresholds[0];
        assert_eq!((t.max_connections, t.max_requests), (7, 1024));
        let o = m.outlier_detection.as_ref().unwrap();
        assert_eq!(
            (o.consecutive_5xx, o.interval),
            (3, std::time::Duration::from_secs(2))
        );
        assert_eq!(o.base_ejection_time, std::time::Duration::from_secs(30));
        assert_eq!(warnings.len(), 2, "not enforced yet: {warnings:?}");
    }

    #[test]
    fn tcp_proxy_listener_translates() {
        let tp = tcp::TcpProxy {
            stat_prefix: "front".into(),
            cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster("web".into())),
            ..Default::default()
        };
        let l = pbl::Listener {
            name: "front".into(),
            address: Some(sock("127.0.0.1", 10000)),
            filter_chains: vec![pbl::FilterChain {
                filters: vec![pbl::Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(pbl::filter::ConfigType::TypedConfig(Any {
                        type_url: TCP_PROXY_TYPE.into(),
                        value: tp.encode_to_vec(),
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (m, _) = listener_from_proto(&l).unwrap();
        let super::super::NetworkFilter::TcpProxy(t) = &m.filter_chains[0].filters[0] else {
            panic!("tcp_proxy")
        };
        assert_eq!(t.cluster, "web");
        assert_eq!(m.address.port(), 10000);
    }

    #[test]
    fn filter_chain_match_default_chain_and_filters_translate() {
        let tp = |cluster: &str| pbl::Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(pbl::filter::ConfigType::TypedConfig(Any {
                type_url: TCP_PROXY_TYPE.into(),
                value: tcp::TcpProxy {
                    stat_prefix: cluster.into(),
                    cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
                        cluster.into(),
                    )),
                    ..Default::default()
                }
                .encode_to_vec(),
            })),
        };
        let cl = pbl::Filter {
            name: "envoy.filters.network.connection_limit".into(),
            config_type: Some(pbl::filter::ConfigType::TypedConfig(Any {
                type_url: CONNECTION_LIMIT_TYPE.into(),
                value: connection_limit::ConnectionLimit {
                    stat_prefix: "cl".into(),
                    max_connections: Some(envoy_types::pb::google::protobuf::UInt64Value {
                        value: 3,
                    }),
                    ..Default::default()
                }
                .encode_to_vec(),
            })),
        };
        let l = pbl::Listener {
            name: "front".into(),
            address: Some(sock("0.0.0.0", 10000)),
            filter_chains: vec![pbl::FilterChain {
                filter_chain_match: Some(pbl::FilterChainMatch {
                    destination_port: Some(UInt32Value { value: 443 }),
                    source_prefix_ranges: vec![core::CidrRange {
                        address_prefix: "10.0.0.0".into(),
                        prefix_len: Some(UInt32Value { value: 8 }),
                    }],
                    source_type: pbl::filter_chain_match::ConnectionSourceType::External as i32,
                    server_names: vec!["*.example.com".into()],
                    ..Default::default()
                }),
                filters: vec![cl, tp("a")],
                ..Default::default()
            }],
            default_filter_chain: Some(pbl::FilterChain {
                filters: vec![tp("b")],
                ..Default::default()
            }),
            listener_filters_timeout: Some(PbDuration {
                seconds: 2,
                nanos: 0,
            }),
            ..Default::default()
        };
        let (m, _) = listener_from_proto(&l).unwrap();
        let fcm = &m.filter_chains[0].filter_chain_match;
        assert_eq!(fcm.destination_port, Some(443));
        assert_eq!(fcm.source_prefix_ranges[0].to_string(), "10.0.0.0/8");
        assert_eq!(fcm.source_type, super::super::SourceType::External);
        assert_eq!(fcm.server_names, vec!["*.example.com"]);
        assert!(matches!(
            m.filter_chains[0].filters[0],
            super::super::NetworkFilter::ConnectionLimit(ref c) if c.max_connections == 3
        ));
        assert!(m.default_filter_chain.is_some());
        assert_eq!(
            m.listener_filters_timeout,
            Some(std::time::Duration::from_secs(2))
        );
        // A field Plumb cannot honour is refused, with its path.
        let mut bad = l.clone();
        bad.filter_chains[0]
            .filter_chain_match
            .as_mut()
            .unwrap()
            .address_suffix = "x".into();
        let e = listener_from_proto(&bad).unwrap_err();
        assert!(
            e[0].to_string()
                .starts_with("filter_chains[0].filter_chain_match.address_suffix: not supported"),
            "{e:?}"
        );
    }
}
