//! LDS: Listener (filter chains, their match, network filters) → the listener model.

use super::*;

/// A typed_config whose bytes do not decode: the reader then reports the field.
fn undecodable(any: &Any) -> Json {
    json!({"@type": any.type_url, "stat_prefix": {}, "undecodable": {}})
}

pub(super) fn tcp_proxy_json(any: &Any) -> Json {
    let Ok(tp) = tcp::TcpProxy::decode(any.value.as_slice()) else {
        return undecodable(any);
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

pub(super) fn cidrs_json(v: &[core::CidrRange]) -> Json {
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

pub(super) fn filter_chain_match_json(fcm: &pbl::FilterChainMatch) -> Json {
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

pub(super) fn connection_limit_json(any: &Any) -> Json {
    let Ok(cl) = connection_limit::ConnectionLimit::decode(any.value.as_slice()) else {
        return undecodable(any);
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

pub(super) fn local_ratelimit_json(any: &Any) -> Json {
    let Ok(rl) = local_ratelimit::LocalRateLimit::decode(any.value.as_slice()) else {
        return undecodable(any);
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

pub(super) fn filter_chain_json(fc: &pbl::FilterChain) -> Json {
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
                        HCM_TYPE | crate::config::rbac::NETWORK_RBAC_TYPE => {
                            reflect::any_json(any).unwrap_or_else(|| undecodable(any))
                        }
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
    if let Some(ts) = &fc.transport_socket {
        c.insert(
            "transport_socket".into(),
            by_reflection("envoy.config.core.v3.TransportSocket", ts),
        );
    }
    if let Some(t) = &fc.transport_socket_connect_timeout {
        c.insert(
            "transport_socket_connect_timeout".into(),
            json!(duration(t)),
        );
    }
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
                    let tc =
                        reflect::any_json(any).unwrap_or_else(|| json!({"@type": any.type_url}));
                    fj.insert("typed_config".into(), tc);
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
