//! Bootstrap translation: defaults, field paths in errors, the documented field tables.
use super::super::cluster_lb::*;
use super::super::endpoint::*;
use super::super::listener::{
    CIDR_RANGE, CONNECTION_LIMIT, FILTER, FILTER_CHAIN, FILTER_CHAIN_MATCH, LISTENER,
    LISTENER_FILTER, LOCAL_RATELIMIT, TCP_HASH_POLICY, TCP_PROXY, TLS_INSPECTOR, TOKEN_BUCKET,
    TYPED_ANY,
};
use super::*;

fn errors(yaml: &str) -> Vec<String> {
    match parse_bootstrap(yaml, "test.yaml") {
        Ok(_) => vec![],
        Err(e) => e.errors.iter().map(|d| d.to_string()).collect(),
    }
}

const GOOD: &str = r#"
admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }
static_resources:
  listeners:
  - name: l1
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: p
          cluster: c1
  clusters:
  - name: c1
    connect_timeout: 0.5s
    load_assignment:
      cluster_name: c1
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9 } } }
"#;

#[test]
fn every_field_table_entry_is_documented() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/configuration.md"
    ))
    .expect("docs/configuration.md");
    let rows: usize = TABLES.iter().map(|(_, t)| t.len()).sum();
    let tables = doc
        .split_once("## Field tables")
        .expect("a Field tables section")
        .1;
    let doc_rows = tables.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(
        doc_rows, rows,
        "docs/configuration.md field tables are out of date"
    );
    for (msg, table) in TABLES {
        for (field, how) in table.iter() {
            let want = match how {
                Field::Supported => format!("| `{field}` | supported |"),
                Field::Ignored(why) => format!("| `{field}` | ignored: {why} |"),
                Field::Rejected(why) => format!("| `{field}` | **rejected**: {why} |"),
            };
            assert!(
                doc.contains(&want),
                "{msg}.{field} is not documented as: {want}"
            );
        }
    }
}

#[test]
fn bundled_default_is_valid() {
    let s = parse_bootstrap(DEFAULT_BOOTSTRAP, "default").expect("default config");
    assert_eq!(s.listeners.len(), 2);
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
}

#[test]
fn minimal_tcp_proxy_bootstrap_parses_with_envoy_defaults() {
    let s = parse_bootstrap(GOOD, "t").unwrap();
    let c = s.cluster("c1").unwrap();
    assert_eq!(c.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(c.discovery, DiscoveryType::Static);
    let NetworkFilter::TcpProxy(tp) = &s.listeners[0].filter_chains[0].filters[0] else {
        panic!("tcp_proxy")
    };
    assert_eq!(tp.idle_timeout, Some(Duration::from_secs(3600)));
    assert_eq!(tp.max_connect_attempts, 1);
}

#[test]
fn unknown_cluster_reference_names_the_field_path() {
    let e = errors(&GOOD.replace("cluster: c1", "cluster: nope"));
    assert_eq!(
        e,
        vec!["static_resources.listeners[0].filter_chains[0].filters[0].typed_config.cluster: unknown cluster \"nope\" (defined clusters: c1)"]
    );
}

#[test]
fn port_out_of_range_is_rejected() {
    let e = errors(&GOOD.replace("port_value: 9 ", "port_value: 70000 "));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with(
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: 70000 is out of range"
    ), "{e:?}");
}

#[test]
fn missing_field_and_unknown_field_are_both_reported() {
    let y = GOOD.replace("stat_prefix: p", "bogus_field: 1");
    let e = errors(&y);
    assert!(e.iter().any(|m| m.starts_with(
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.bogus_field: unknown field"
    )), "{e:?}");
    assert!(e.contains(
        &"static_resources.listeners[0].filter_chains[0].filters[0].typed_config.stat_prefix: missing required field".to_string()
    ), "{e:?}");
}

#[test]
fn bad_yaml_reports_line() {
    let e = errors("static_resources: [\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("line "), "{e:?}");
}

#[test]
fn ignored_fields_warn_and_rejected_fields_fail() {
    let y = GOOD.replace(
        "connect_timeout: 0.5s",
        "connect_timeout: 0.5s\n    alt_stat_name: x",
    );
    let s = parse_bootstrap(&y, "t").unwrap();
    assert_eq!(s.warnings.len(), 1);
    assert_eq!(
        s.warnings[0].path,
        "static_resources.clusters[0].alt_stat_name"
    );
    let y = GOOD.replace(
        "connect_timeout: 0.5s",
        "connect_timeout: 0.5s\n    transport_socket_matcher: {}",
    );
    let e = errors(&y);
    assert!(
        e[0].starts_with("static_resources.clusters[0].transport_socket_matcher: not supported"),
        "{e:?}"
    );
}

#[test]
fn camel_case_fields_are_accepted() {
    let y = GOOD
        .replace("port_value: 9", "portValue: 9")
        .replace("connect_timeout", "connectTimeout");
    parse_bootstrap(&y, "t").unwrap();
}

#[test]
fn static_cluster_rejects_hostnames_and_dns_accepts_them() {
    let y = GOOD.replace(
        "address: 127.0.0.1, port_value: 9",
        "address: localhost, port_value: 9",
    );
    assert!(errors(&y)[0].contains("needs type STRICT_DNS"));
    let y = y.replace(
        "connect_timeout: 0.5s",
        "connect_timeout: 0.5s\n    type: STRICT_DNS",
    );
    parse_bootstrap(&y, "t").unwrap();
}

#[test]
fn duplicate_names_are_rejected() {
    let y = GOOD.replace(
        "  clusters:\n",
        "  clusters:\n  - name: c1\n    load_assignment: { cluster_name: c1 }\n",
    );
    let e = errors(&y);
    assert!(e.iter().any(|m| m == "static_resources.clusters[1].name: duplicate cluster name \"c1\" (first at static_resources.clusters[0])"), "{e:?}");
}

#[test]
fn names_with_control_characters_or_too_long_are_refused() {
    let e = errors(&GOOD.replace("name: c1", "name: \"c\\n1\""));
    assert!(
        e.iter().any(|x| x
            .contains("static_resources.clusters[0].name: contains the control character '\\n'")),
        "{e:?}"
    );
    let long = "x".repeat(2000);
    let e = errors(&GOOD.replace("stat_prefix: p", &format!("stat_prefix: {long}")));
    assert!(
        e.iter()
            .any(|x| x
                .ends_with("typed_config.stat_prefix: 2000 bytes long; names are limited to 1024")),
        "{e:?}"
    );
}

#[test]
fn an_admin_address_off_loopback_is_warned_about() {
    let s = parse_bootstrap(
        &GOOD.replace(
            "address: 127.0.0.1, port_value: 0 } } }",
            "address: 0.0.0.0, port_value: 0 } } }",
        ),
        "t",
    )
    .unwrap();
    assert!(
        s.warnings.iter().any(|w| w
            .to_string()
            .starts_with("admin.address: admin listens on 0.0.0.0, not loopback")),
        "{:?}",
        s.warnings
    );
    assert!(parse_bootstrap(GOOD, "t").unwrap().warnings.is_empty());
}

#[test]
fn out_of_range_values_say_what_is_wrong() {
    let e = errors(&GOOD.replace("connect_timeout: 0.5s", "connect_timeout: -5s"));
    assert!(e.iter().any(|x| x.ends_with("connect_timeout: invalid duration \"-5s\": must not be negative")), "{e:?}");
    let e = errors(&GOOD.replace(
        "connect_timeout: 0.5s",
        "connect_timeout: 99999999999999999999s",
    ));
    assert!(
        e.iter()
            .any(|x| x.contains("larger than the maximum, 315576000000s")),
        "{e:?}"
    );
    let e = errors(&GOOD.replace(
        "connect_timeout: 0.5s",
        "dns_refresh_rate: 99999999999999999999999",
    ));
    assert!(
        e.iter().any(|x| x.contains(
            "dns_refresh_rate: integer out of range (the largest accepted is 18446744073709551615)"
        )),
        "{e:?}"
    );
}

#[test]
fn a_wildcard_listener_overlapping_a_specific_one_on_the_same_port_is_refused() {
    let tp = r#"filter_chains: [{filters: [{name: envoy.filters.network.tcp_proxy, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: c}}]}]"#;
    let yaml = |a: &str, b: &str, compat: bool| {
        format!(
            "static_resources:\n  listeners:\n  - name: a\n    address: {{ socket_address: {{ address: \"{a}\", port_value: 9000, ipv4_compat: {compat} }} }}\n    {tp}\n  - name: b\n    address: {{ socket_address: {{ address: \"{b}\", port_value: 9000 }} }}\n    {tp}\n  clusters:\n  - name: c\n    load_assignment: {{ cluster_name: c, endpoints: [] }}\n"
        )
    };
    let e = errors(&yaml("0.0.0.0", "127.0.0.1", false));
    assert_eq!(e, vec!["static_resources.listeners[1].address: 127.0.0.1:9000 overlaps 0.0.0.0:9000 of static_resources.listeners[0]: the two cannot both bind port 9000"]);
    // Different families do not overlap, unless the IPv6 one is dual-stack.
    assert!(errors(&yaml("::", "127.0.0.1", false)).is_empty());
    assert_eq!(errors(&yaml("::", "127.0.0.1", true)).len(), 1);
}

#[test]
fn ads_rate_limit_settings_take_envoys_defaults_and_refuse_bad_rates() {
    let with = |settings: &str| {
        format!(
            r#"
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
    {settings}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    connect_timeout: 1s
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9 }} }} }}
"#
        )
    };
    let limit = |settings: &str| {
        parse_bootstrap(&with(settings), "t.yaml")
            .unwrap()
            .xds
            .unwrap()
            .rate_limit
    };
    assert_eq!(limit(""), None);
    assert_eq!(
        limit("rate_limit_settings: {}"),
        Some(XdsRateLimit {
            max_tokens: 100,
            fill_rate: 10.0
        })
    );
    assert_eq!(
        limit("rate_limit_settings: {max_tokens: 5, fill_rate: 0.5}"),
        Some(XdsRateLimit {
            max_tokens: 5,
            fill_rate: 0.5
        })
    );
    let e = errors(&with("rate_limit_settings: {fill_rate: -1}"));
    assert_eq!(
        e,
        vec!["dynamic_resources.ads_config.rate_limit_settings.fill_rate: expected a positive number of requests per second, got -1"]
    );
}

#[test]
fn overload_manager_and_runtime_limits_are_read_with_field_paths() {
    let yaml = format!(
        "{GOOD}{}",
        r#"
overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 1000
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: 1073741824
  actions:
  - name: envoy.overload_actions.shrink_heap
    triggers: [{name: envoy.resource_monitors.fixed_heap, threshold: {value: 0.9}}]
  - name: envoy.overload_actions.reject_incoming_connections
    triggers:
    - name: envoy.resource_monitors.global_downstream_max_connections
      scaled: {scaling_threshold: 0.8, saturation_threshold: 0.95}
layered_runtime:
  layers:
  - name: static
    static_layer:
      envoy.resource_limits.listener.l1.connection_limit: 10
      envoy: {resource_limits: {listener: {l2: {connection_limit: "20"}}}}
      some.other.key: true
"#
    );
    let s = parse_bootstrap(&yaml, "t.yaml").unwrap();
    let o = s.overload.unwrap();
    assert_eq!(o.refresh_interval, Duration::from_millis(250));
    assert_eq!(o.max_downstream_connections, Some(1000));
    assert_eq!(o.max_heap_bytes, Some(1 << 30));
    assert_eq!(o.actions.len(), 2);
    assert_eq!(o.actions[1].kind, ActionKind::RejectIncomingConnections);
    assert_eq!(
        o.actions[1].triggers[0].kind,
        TriggerKind::Scaled {
            scaling: 0.8,
            saturation: 0.95
        }
    );
    assert_eq!(s.runtime.listener_connections.get("l1"), Some(&10));
    assert_eq!(s.runtime.listener_connections.get("l2"), Some(&20));
    assert!(s
        .warnings
        .iter()
        .any(|w| w.path == "layered_runtime.layers[0].static_layer.some.other.key"));

    let bad = format!(
        "{GOOD}{}",
        r#"
overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.cgroup_memory
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config: {max_active_downstream_connections: 10}
  actions:
  - name: envoy.overload_actions.stop_accepting_connections
    triggers: [{name: envoy.resource_monitors.fixed_heap, threshold: {value: 0.9}}]
  - name: envoy.overload_actions.reject_incoming_connections
    triggers: [{name: envoy.resource_monitors.global_downstream_max_connections, scaled: {scaling_threshold: 0.9, saturation_threshold: 0.5}}]
  - name: envoy.overload_actions.nope
    triggers: []
"#
    );
    let e = errors(&bad).join("\n");
    assert!(e.contains("overload_manager.resource_monitors[0].name: unsupported resource monitor \"envoy.resource_monitors.cgroup_memory\""), "{e}");
    assert!(e.contains("overload_manager.actions[0].triggers[0].name: no resource monitor \"envoy.resource_monitors.fixed_heap\" is configured"), "{e}");
    assert!(e.contains("overload_manager.actions[1].triggers[0].scaled.scaling_threshold: must be below saturation_threshold"), "{e}");
    assert!(e.contains("overload_manager.actions[2].name: unknown overload action \"envoy.overload_actions.nope\""), "{e}");
}

#[test]
fn hashing_policies_are_read_and_bad_settings_named() {
    // GOOD's cluster c1, with lines added after its connect_timeout.
    let with = |extra: &str| {
        GOOD.replace(
            "    connect_timeout: 0.5s\n",
            &format!("    connect_timeout: 0.5s\n{extra}"),
        )
    };
    let snap = parse_bootstrap(
        &with("    lb_policy: RING_HASH\n    ring_hash_lb_config: {minimum_ring_size: 64, maximum_ring_size: 4096}\n"),
        "t",
    )
    .unwrap();
    assert_eq!(
        snap.clusters[0].lb_policy,
        LbPolicy::RingHash {
            min_ring_size: 64,
            max_ring_size: 4096
        }
    );
    let snap = parse_bootstrap(&with("    lb_policy: MAGLEV\n"), "t").unwrap();
    assert_eq!(
        snap.clusters[0].lb_policy,
        LbPolicy::Maglev { table_size: 65537 }
    );
    let p = "static_resources.clusters[0]";
    assert_eq!(
        errors(&with(
            "    lb_policy: MAGLEV\n    maglev_lb_config: {table_size: 1000}\n"
        )),
        vec![format!(
            "{p}.maglev_lb_config.table_size: 1000 is not a prime number"
        )]
    );
    assert_eq!(
        errors(&with("    lb_policy: RING_HASH\n    ring_hash_lb_config: {hash_function: MURMUR_HASH_2}\n")),
        vec![format!("{p}.ring_hash_lb_config.hash_function: MURMUR_HASH_2 is not supported: only XX_HASH is supported")]
    );
    assert_eq!(
        errors(&with("    lb_policy: RING_HASH\n    ring_hash_lb_config: {minimum_ring_size: 100, maximum_ring_size: 10}\n")),
        vec![format!("{p}.ring_hash_lb_config.minimum_ring_size: 100 is above maximum_ring_size 10")]
    );
    assert_eq!(
        errors(&with("    maglev_lb_config: {table_size: 65537}\n")),
        vec![format!(
            "{p}.maglev_lb_config: only valid with lb_policy MAGLEV"
        )]
    );
}

#[test]
fn typed_load_balancing_policies_take_the_first_supported() {
    let with = |extra: &str| {
        GOOD.replace(
            "    connect_timeout: 0.5s\n",
            &format!("    connect_timeout: 0.5s\n{extra}"),
        )
    };
    let lr = "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest";
    let cswrr = "type.googleapis.com/envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin";
    let yaml = with(&format!(
        "    load_balancing_policy:\n      policies:\n      - typed_extension_config: {{name: a, typed_config: {{'@type': {cswrr}}}}}\n      - typed_extension_config:\n          name: b\n          typed_config:\n            '@type': {lr}\n            choice_count: 3\n            slow_start_config: {{slow_start_window: 5s}}\n            locality_lb_config: {{locality_weighted_lb_config: {{}}}}\n"
    ));
    let snap = parse_bootstrap(&yaml, "t").unwrap();
    let c = &snap.clusters[0];
    assert_eq!(
        c.lb_policy,
        LbPolicy::LeastRequest {
            choice_count: 3,
            bias_milli: 1000
        }
    );
    assert_eq!(
        c.common_lb.slow_start.unwrap().window,
        std::time::Duration::from_secs(5)
    );
    assert_eq!(c.common_lb.locality, crate::config::LocalityLb::Weighted);
    // The unsupported first policy is skipped with a warning naming it.
    assert!(
        snap.warnings
            .iter()
            .any(|w| w.message.contains("ClientSideWeightedRoundRobin")),
        "{:?}",
        snap.warnings
    );
    let p = "static_resources.clusters[0].load_balancing_policy";
    let only_unsupported = with(&format!(
        "    load_balancing_policy: {{policies: [{{typed_extension_config: {{name: a, typed_config: {{'@type': {cswrr}}}}}}}]}}\n"
    ));
    let e = errors(&only_unsupported);
    assert!(
        e[0].starts_with(&format!("{p}.policies: none of the policies is supported")),
        "{e:?}"
    );
    let maglev = "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev";
    let snap = parse_bootstrap(
        &with(&format!(
            "    load_balancing_policy: {{policies: [{{typed_extension_config: {{name: m, typed_config: {{'@type': {maglev}, table_size: 7}}}}}}]}}\n"
        )),
        "t",
    )
    .unwrap();
    assert_eq!(
        snap.clusters[0].lb_policy,
        LbPolicy::Maglev { table_size: 7 }
    );
}

#[test]
fn health_checks_are_read_and_bad_ones_named() {
    let with = |extra: &str| {
        GOOD.replace(
            "    connect_timeout: 0.5s\n",
            &format!("    connect_timeout: 0.5s\n{extra}"),
        )
    };
    let snap = parse_bootstrap(
        &with("    health_checks:\n    - {timeout: 1s, interval: 5s, unhealthy_threshold: 3, healthy_threshold: 2, http_health_check: {path: /healthz, expected_statuses: [{start: 200, end: 300}]}}\n"),
        "t",
    )
    .unwrap();
    let h = snap.clusters[0].health_check.as_ref().unwrap();
    assert_eq!(
        (
            h.timeout,
            h.interval,
            h.unhealthy_threshold,
            h.healthy_threshold
        ),
        (
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(5),
            3,
            2
        )
    );
    assert_eq!(
        h.kind,
        HealthCheckKind::Http {
            host: None,
            path: "/healthz".into(),
            expected: vec![(200, 300)],
            headers: vec![],
            http2: false,
        }
    );
    let p = "static_resources.clusters[0].health_checks[0]";
    assert_eq!(
        errors(&with("    health_checks:\n    - {interval: 5s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}\n")),
        vec![format!("{p}.timeout: missing required field")]
    );
    let e = errors(&with("    health_checks:\n    - {timeout: 1s, interval: 5s, unhealthy_threshold: 1, healthy_threshold: 1, grpc_health_check: {initial_metadata: [{header: {key: 'bad key', value: x}}]}}\n"));
    assert_eq!(
        e,
        vec![format!("{p}.grpc_health_check.initial_metadata[0].header.key: \"bad key\" is not a valid header name")]
    );
    assert_eq!(
        errors(&with("    health_checks:\n    - {timeout: 1s, interval: 5s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {send: {text: zz}}}\n")),
        vec![format!("{p}.tcp_health_check.send.text: expected hexadecimal bytes")]
    );
    let two = "    - {timeout: 1s, interval: 5s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}\n";
    assert_eq!(
        errors(&with(&format!("    health_checks:\n{two}{two}"))),
        vec!["static_resources.clusters[0].health_checks: only one health check per cluster is supported".to_string()]
    );
}

/// Every field table the bootstrap reads, as documented in docs/configuration.md.
const TABLES: &[(&str, FieldTable)] = &[
    ("Bootstrap", BOOTSTRAP),
    ("Node", NODE),
    ("Locality", LOCALITY),
    ("Admin", ADMIN),
    ("StaticResources", STATIC_RESOURCES),
    ("Address", ADDRESS),
    ("SocketAddress", SOCKET_ADDRESS),
    ("Listener", LISTENER),
    ("FilterChain", FILTER_CHAIN),
    ("Filter", FILTER),
    ("ListenerFilter", LISTENER_FILTER),
    ("TlsInspector", TLS_INSPECTOR),
    ("EdsClusterConfig", EDS_CLUSTER_CONFIG),
    ("TransportSocketMatch", TRANSPORT_SOCKET_MATCH),
    ("CircuitBreakers", CIRCUIT_BREAKERS),
    ("Thresholds", THRESHOLDS),
    (
        "RetryBudget (circuit_breakers.thresholds.retry_budget)",
        RETRY_BUDGET,
    ),
    ("Percent (retry_budget.budget_percent)", PERCENT),
    ("CommonLbConfig", COMMON_LB_CONFIG),
    ("RoundRobinLbConfig", ROUND_ROBIN_LB_CONFIG),
    ("SlowStartConfig", SLOW_START_CONFIG),
    ("LoadBalancingPolicy", LOAD_BALANCING_POLICY),
    ("LoadBalancingPolicy.Policy", LB_POLICY_ENTRY),
    ("TypedExtensionConfig", TYPED_EXTENSION_CONFIG),
    ("LocalityLbConfig", LOCALITY_LB_CONFIG),
    ("RoundRobin", TYPED_ROUND_ROBIN),
    ("LeastRequest", TYPED_LEAST_REQUEST),
    ("Random", TYPED_RANDOM),
    ("RingHash", TYPED_RING_HASH),
    ("Maglev", TYPED_MAGLEV),
    ("ClusterProvided", TYPED_CLUSTER_PROVIDED),
    ("ZoneAwareLbConfig", ZONE_AWARE_LB_CONFIG),
    ("LocalityWeightedLbConfig", LOCALITY_WEIGHTED_LB_CONFIG),
    (
        "RingHashLbConfig (ring_hash_lb_config)",
        RING_HASH_LB_CONFIG,
    ),
    ("MaglevLbConfig (maglev_lb_config)", MAGLEV_LB_CONFIG),
    (
        "LeastRequestLbConfig (least_request_lb_config)",
        LEAST_REQUEST_LB_CONFIG,
    ),
    ("RuntimeDouble (active_request_bias)", RUNTIME_DOUBLE),
    ("HealthCheck (health_checks[])", HEALTH_CHECK),
    ("HttpHealthCheck (http_health_check)", HTTP_HEALTH_CHECK),
    ("TcpHealthCheck (tcp_health_check)", TCP_HEALTH_CHECK),
    ("GrpcHealthCheck (grpc_health_check)", GRPC_HEALTH_CHECK),
    ("Payload (send, receive[])", HC_PAYLOAD),
    (
        "HeaderValueOption (request_headers_to_add[])",
        HC_HEADER_OPTION,
    ),
    ("HeaderValue (header)", HC_HEADER),
    ("Int64Range (expected_statuses[])", INT64_RANGE),
    ("OutlierDetection", OUTLIER_DETECTION),
    ("ClusterManager", CLUSTER_MANAGER),
    ("ClusterManager.OutlierDetection", CM_OUTLIER_DETECTION),
    ("ConfigSource", CONFIG_SOURCE),
    ("DynamicResources", DYNAMIC_RESOURCES),
    ("ApiConfigSource", API_CONFIG_SOURCE),
    ("RateLimitSettings", RATE_LIMIT_SETTINGS),
    ("OverloadManager", OVERLOAD_MANAGER),
    ("ResourceMonitor", RESOURCE_MONITOR),
    ("DownstreamConnectionsConfig", DOWNSTREAM_CONNECTIONS),
    ("FixedHeapConfig", FIXED_HEAP),
    ("OverloadAction", OVERLOAD_ACTION),
    ("Trigger", TRIGGER),
    ("ThresholdTrigger", THRESHOLD_TRIGGER),
    ("ScaledTrigger", SCALED_TRIGGER),
    ("LayeredRuntime", LAYERED_RUNTIME),
    ("RuntimeLayer", RUNTIME_LAYER),
    ("GrpcService", GRPC_SERVICE),
    ("EnvoyGrpc", ENVOY_GRPC),
    ("OriginalDstFilter", TYPED_ANY),
    ("BootstrapExtension", BOOTSTRAP_EXTENSION),
    ("Redirect", REDIRECT),
    ("CaptureRule", CAPTURE_RULE),
    ("TcpProxy", TCP_PROXY),
    ("HashPolicy (tcp_proxy hash_policy[])", TCP_HASH_POLICY),
    ("FilterChainMatch", FILTER_CHAIN_MATCH),
    ("CidrRange", CIDR_RANGE),
    ("ConnectionLimit", CONNECTION_LIMIT),
    ("LocalRateLimit", LOCAL_RATELIMIT),
    ("TokenBucket", TOKEN_BUCKET),
    ("Cluster", CLUSTER),
    ("ClusterLoadAssignment", LOAD_ASSIGNMENT),
    ("LocalityLbEndpoints", LOCALITY_LB_ENDPOINTS),
    ("LbEndpoint", LB_ENDPOINT),
    ("Endpoint", ENDPOINT),
];
