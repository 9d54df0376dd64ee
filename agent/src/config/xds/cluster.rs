//! CDS: Cluster → the cluster model.

use super::*;

pub fn cluster_from_proto(c: &pbc::Cluster) -> Translated<Cluster> {
    let mut m = Map::new();
    if let Some(ts) = &c.transport_socket {
        m.insert(
            "transport_socket".into(),
            by_reflection("envoy.config.core.v3.TransportSocket", ts),
        );
    }
    if !c.transport_socket_matches.is_empty() {
        let matches: Vec<Json> = c
            .transport_socket_matches
            .iter()
            .map(|tm| by_reflection("envoy.config.cluster.v3.Cluster.TransportSocketMatch", tm))
            .collect();
        m.insert("transport_socket_matches".into(), json!(matches));
    }
    mark(
        &mut m,
        "transport_socket_matcher",
        c.transport_socket_matcher.is_some(),
    );
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
    if !c.health_checks.is_empty() {
        let checks: Vec<Json> = c
            .health_checks
            .iter()
            .map(|h| by_reflection("envoy.config.core.v3.HealthCheck", h))
            .collect();
        m.insert("health_checks".into(), json!(checks));
    }
    if let Some(cb) = &c.circuit_breakers {
        m.insert(
            "circuit_breakers".into(),
            by_reflection("envoy.config.cluster.v3.CircuitBreakers", cb),
        );
    }
    if let Some(u) = &c.upstream_http_protocol_options {
        m.insert(
            "upstream_http_protocol_options".into(),
            by_reflection("envoy.config.core.v3.UpstreamHttpProtocolOptions", u),
        );
    }
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
        m.insert(
            "outlier_detection".into(),
            by_reflection("envoy.config.cluster.v3.OutlierDetection", o),
        );
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
    if let Some(l) = &c.common_lb_config {
        m.insert(
            "common_lb_config".into(),
            by_reflection("envoy.config.cluster.v3.Cluster.CommonLbConfig", l),
        );
    }
    mark(&mut m, "metadata", c.metadata.is_some());
    super::http::cluster_http_json(c, &mut m);
    mark(
        &mut m,
        "upstream_connection_options",
        c.upstream_connection_options.is_some(),
    );
    for (k, on) in [
        (
            "close_connections_on_host_health_failure",
            c.close_connections_on_host_health_failure,
        ),
        (
            "ignore_health_on_host_removal",
            c.ignore_health_on_host_removal,
        ),
    ] {
        if on {
            m.insert(k.into(), json!(true));
        }
    }
    mark(&mut m, "filters", !c.filters.is_empty());
    if let Some(p) = &c.load_balancing_policy {
        m.insert(
            "load_balancing_policy".into(),
            by_reflection("envoy.config.cluster.v3.LoadBalancingPolicy", p),
        );
    }
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
        Some(pbc::cluster::LbConfig::RingHashLbConfig(r)) => {
            m.insert(
                "ring_hash_lb_config".into(),
                by_reflection("envoy.config.cluster.v3.Cluster.RingHashLbConfig", r),
            );
        }
        Some(pbc::cluster::LbConfig::MaglevLbConfig(r)) => {
            m.insert(
                "maglev_lb_config".into(),
                by_reflection("envoy.config.cluster.v3.Cluster.MaglevLbConfig", r),
            );
        }
        Some(pbc::cluster::LbConfig::OriginalDstLbConfig(_)) => {
            mark(&mut m, "original_dst_lb_config", true)
        }
        Some(pbc::cluster::LbConfig::LeastRequestLbConfig(r)) => {
            m.insert(
                "least_request_lb_config".into(),
                by_reflection("envoy.config.cluster.v3.Cluster.LeastRequestLbConfig", r),
            );
        }
        Some(pbc::cluster::LbConfig::RoundRobinLbConfig(r)) => {
            m.insert(
                "round_robin_lb_config".into(),
                by_reflection("envoy.config.cluster.v3.Cluster.RoundRobinLbConfig", r),
            );
        }
        None => {}
    }
    finish(Json::Object(m), |y, d| read_cluster(y, "", d))
}
