//! The listener family's readers: every match field, overlaps, bounds, terminal filters.
use super::*;

const TP: &str = r#"{name: envoy.filters.network.tcp_proxy, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: c}}"#;

/// A bootstrap whose one listener has `chains` (YAML flow list items) and `extra` fields.
fn with_chains(chains: &[String], extra: &str) -> String {
    format!(
        r#"
static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: 80 }} }}
    filter_chains: [{}]
    {extra}
  clusters:
  - name: c
    load_assignment: {{ cluster_name: c, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9 }} }} }} }}] }}] }}
"#,
        chains.join(", ")
    )
}

fn chain(m: &str) -> String {
    format!("{{filter_chain_match: {m}, filters: [{TP}]}}")
}

fn errors(yaml: &str) -> Vec<String> {
    match parse_bootstrap(yaml, "t") {
        Ok(_) => vec![],
        Err(e) => e.errors.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn every_match_field_is_read() {
    let s = parse_bootstrap(
        &with_chains(
            &[chain(
                r#"{destination_port: 443, prefix_ranges: [{address_prefix: 10.1.2.3, prefix_len: 16}],
                    server_names: ["*.Example.com", a.b], transport_protocol: tls,
                    application_protocols: [h2, http/1.1],
                    direct_source_prefix_ranges: [{address_prefix: "fd00::1", prefix_len: 64}],
                    source_type: EXTERNAL, source_prefix_ranges: [{address_prefix: 192.168.0.0}],
                    source_ports: [1000, "2000"]}"#,
            )],
            "",
        ),
        "t",
    )
    .unwrap();
    let m = &s.listeners[0].filter_chains[0].filter_chain_match;
    assert_eq!(m.destination_port, Some(443));
    assert_eq!(
        m.prefix_ranges,
        vec![Cidr::new("10.1.0.0".parse().unwrap(), 16)]
    );
    assert_eq!(m.server_names, vec!["*.example.com", "a.b"]);
    assert_eq!(m.transport_protocol.as_deref(), Some("tls"));
    assert_eq!(m.application_protocols, vec!["h2", "http/1.1"]);
    assert_eq!(
        m.direct_source_prefix_ranges,
        vec![Cidr::new("fd00::".parse().unwrap(), 64)]
    );
    assert_eq!(m.source_type, SourceType::External);
    assert_eq!(
        m.source_prefix_ranges,
        vec![Cidr::new("0.0.0.0".parse().unwrap(), 0)]
    );
    assert_eq!(m.source_ports, vec![1000, 2000]);
    // And back out through /config_dump.
    let j = s.listeners[0].to_envoy_json();
    assert_eq!(
        j["filter_chains"][0]["filter_chain_match"]["destination_port"],
        443
    );
    assert_eq!(j["listener_filters_timeout"], "15s");
}

#[test]
fn identical_or_overlapping_matches_are_rejected_with_both_paths() {
    let e = errors(&with_chains(
        &[
            chain("{destination_port: 1}"),
            chain("{destination_port: 1}"),
        ],
        "",
    ));
    assert_eq!(
        e,
        vec!["static_resources.listeners[0].filter_chains[1].filter_chain_match: the same matching rules as static_resources.listeners[0].filter_chains[0] (filter chains must differ in what they match)"]
    );
    let e = errors(&with_chains(
        &[
            chain("{server_names: [a.com, b.com]}"),
            chain("{server_names: [B.com]}"),
        ],
        "",
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("filter_chains[1].filter_chain_match: overlaps the matching rules of static_resources.listeners[0].filter_chains[0]"), "{e:?}");
    // Nested but different prefixes are not an overlap.
    assert_eq!(
        errors(&with_chains(
            &[
                chain("{prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}"),
                chain("{prefix_ranges: [{address_prefix: 10.1.0.0, prefix_len: 16}]}"),
            ],
            "",
        )),
        Vec::<String>::new()
    );
}

#[test]
fn no_ranges_and_an_explicit_zero_prefix_overlap() {
    let e = errors(&with_chains(
        &[
            chain("{destination_port: 1}"),
            chain("{destination_port: 1, source_prefix_ranges: [{address_prefix: 0.0.0.0, prefix_len: 0}]}"),
        ],
        "",
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("filter_chains[1].filter_chain_match: overlaps"),
        "{e:?}"
    );
}

#[test]
fn match_combinations_are_bounded_per_listener() {
    // 600 names × 600 ports = 360 000 combinations in one chain: refused, with the reason.
    let names: Vec<String> = (0..600).map(|i| format!("n{i}.example.com")).collect();
    let ports: Vec<String> = (1..=600).map(|p| p.to_string()).collect();
    let m = format!(
        "{{server_names: [{}], source_ports: [{}]}}",
        names.join(", "),
        ports.join(", ")
    );
    let e = errors(&with_chains(&[chain(&m)], ""));
    assert!(
        e.iter()
            .any(|x| x.contains("expand to more than 200000 combinations")),
        "{e:?}"
    );
}

#[test]
fn bad_match_values_name_their_field() {
    let e = errors(&with_chains(
        &[chain(
            r#"{server_names: ["w*.x.com"], destination_port: 0, source_type: LOCAL, address_suffix: x,
                prefix_ranges: [{address_prefix: nope}]}"#,
        )],
        "",
    ));
    let has = |s: &str| e.iter().any(|x| x.contains(s));
    assert!(
        has("filter_chain_match.server_names[0]: \"w*.x.com\": partial wildcards"),
        "{e:?}"
    );
    assert!(
        has("filter_chain_match.destination_port: 0 is out of range [1, 65535]"),
        "{e:?}"
    );
    assert!(
        has("filter_chain_match.source_type: unknown value \"LOCAL\""),
        "{e:?}"
    );
    assert!(
        has("filter_chain_match.address_suffix: not supported"),
        "{e:?}"
    );
    assert!(
        has("filter_chain_match.prefix_ranges[0].address_prefix: \"nope\" is not an IP address"),
        "{e:?}"
    );
}

#[test]
fn terminal_filter_must_come_last_and_only_last() {
    let cl = r#"{name: envoy.filters.network.connection_limit, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit, stat_prefix: cl, max_connections: 5, delay: 1s}}"#;
    let ok = parse_bootstrap(
        &with_chains(&[format!("{{filters: [{cl}, {TP}]}}")], ""),
        "t",
    )
    .unwrap();
    assert_eq!(ok.listeners[0].filter_chains[0].filters.len(), 2);
    assert_eq!(
        ok.listeners[0].filter_chains[0].filters[0],
        NetworkFilter::ConnectionLimit(ConnectionLimit {
            stat_prefix: "cl".into(),
            max_connections: 5,
            delay: Some(Duration::from_secs(1)),
        })
    );
    let e = errors(&with_chains(&[format!("{{filters: [{TP}, {cl}]}}")], ""));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].ends_with(
            "filters[0]: a terminal filter (tcp_proxy, http_connection_manager) must be the last filter in the chain"
        ),
        "{e:?}"
    );
    assert!(e[1].ends_with("filters[1]: the last filter in a chain must be a terminal filter (envoy.filters.network.tcp_proxy or envoy.filters.network.http_connection_manager)"), "{e:?}");
}

#[test]
fn local_ratelimit_fields_and_limits() {
    let rl = |tb: &str| {
        format!(
            r#"{{filters: [{{name: envoy.filters.network.local_ratelimit, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit, stat_prefix: rl, token_bucket: {tb}}}}}, {TP}]}}"#
        )
    };
    let s = parse_bootstrap(
        &with_chains(&[rl("{max_tokens: 10, fill_interval: 1s}")], ""),
        "t",
    )
    .unwrap();
    assert_eq!(
        s.listeners[0].filter_chains[0].filters[0],
        NetworkFilter::LocalRateLimit(LocalRateLimit {
            stat_prefix: "rl".into(),
            max_tokens: 10,
            tokens_per_fill: 1,
            fill_interval: Duration::from_secs(1),
        })
    );
    let e = errors(&with_chains(
        &[rl("{max_tokens: 10, fill_interval: 0.01s}")],
        "",
    ));
    assert!(
        e[0].ends_with("token_bucket.fill_interval: must be at least 50ms (as in Envoy)"),
        "{e:?}"
    );
    let e = errors(&with_chains(&[rl("{fill_interval: 1s}")], ""));
    assert!(
        e[0].ends_with("token_bucket.max_tokens: missing required field"),
        "{e:?}"
    );
}

#[test]
fn default_chain_alone_is_enough_and_its_match_is_ignored() {
    let yaml = with_chains(&[], &format!("default_filter_chain: {{filter_chain_match: {{destination_port: 9}}, filters: [{TP}]}}"));
    let s = parse_bootstrap(&yaml, "t").unwrap();
    let l = &s.listeners[0];
    assert!(l.filter_chains.is_empty());
    assert_eq!(
        l.default_filter_chain.as_ref().unwrap().filter_chain_match,
        FilterChainMatch::default()
    );
    let e = errors(&with_chains(&[], ""));
    assert_eq!(
        e,
        vec!["static_resources.listeners[0].filter_chains: no filter chains specified: give filter_chains or default_filter_chain"]
    );
    // The default's tcp_proxy cluster is checked like any other.
    let e = errors(&yaml.replace("cluster: c}}]}", "cluster: nope}}]}"));
    assert!(e[0].starts_with("static_resources.listeners[0].default_filter_chain.filters[0].typed_config.cluster: unknown cluster \"nope\""), "{e:?}");
}

#[test]
fn listener_filters_timeout_zero_disables() {
    let s = parse_bootstrap(
        &with_chains(&[chain("{}")], "listener_filters_timeout: 0s"),
        "t",
    )
    .unwrap();
    assert_eq!(s.listeners[0].listener_filters_timeout, None);
}
