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
                host_identifier: Some(pbe::lb_endpoint::HostIdentifier::Endpoint(pbe::Endpoint {
                    address: Some(sock("10.0.0.1", 8080)),
                    ..Default::default()
                })),
                load_balancing_weight: Some(UInt32Value { value: 3 }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let (l, _) = endpoints_from_proto(&cla).unwrap();
    assert_eq!(l[0].endpoints[0].weight, 3);
    assert!(!l[0].endpoints[0].canary);
    // Envoy's canary flag in the endpoint's metadata.
    let mut canary = cla.clone();
    let flag = envoy_types::pb::google::protobuf::Struct {
        fields: [(
            "canary".to_string(),
            envoy_types::pb::google::protobuf::Value {
                kind: Some(envoy_types::pb::google::protobuf::value::Kind::BoolValue(
                    true,
                )),
            },
        )]
        .into_iter()
        .collect(),
    };
    canary.endpoints[0].lb_endpoints[0].metadata = Some(core::Metadata {
        filter_metadata: [("envoy.lb".to_string(), flag)].into_iter().collect(),
        ..Default::default()
    });
    let (l, w) = endpoints_from_proto(&canary).unwrap();
    assert!(l[0].endpoints[0].canary, "{w:?}");
    assert_eq!(l[0].endpoints[0].weight, 3);
}

#[test]
fn rejected_fields_are_named_in_errors() {
    let c = pbc::Cluster {
        name: "tls".into(),
        transport_socket_matcher: Some(Default::default()),
        ..Default::default()
    };
    let e = cluster_from_proto(&c).unwrap_err();
    assert_eq!(e[0].path, "transport_socket_matcher");
    assert!(e[0].message.contains("not supported"), "{e:?}");
    let bad = pbe::ClusterLoadAssignment {
        cluster_name: "x".into(),
        endpoints: vec![pbe::LocalityLbEndpoints {
            lb_endpoints: vec![pbe::LbEndpoint {
                host_identifier: Some(pbe::lb_endpoint::HostIdentifier::Endpoint(pbe::Endpoint {
                    address: Some(sock("not-an-ip", 80)),
                    ..Default::default()
                })),
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
            per_host_thresholds: vec![pbc::circuit_breakers::Thresholds {
                max_connections: Some(UInt32Value { value: 2 }),
                ..Default::default()
            }],
        }),
        outlier_detection: Some(pbc::OutlierDetection {
            consecutive_5xx: Some(UInt32Value { value: 3 }),
            interval: Some(PbDuration {
                seconds: 2,
                nanos: 0,
            }),
            success_rate_request_volume: Some(UInt32Value { value: 20 }),
            enforcing_failure_percentage: Some(UInt32Value { value: 50 }),
            max_ejection_time_jitter: Some(PbDuration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        }),
        common_lb_config: Some(pbc::cluster::CommonLbConfig {
            healthy_panic_threshold: Some(envoy_types::pb::envoy::r#type::v3::Percent {
                value: 30.0,
            }),
            locality_config_specifier: Some(
                pbc::cluster::common_lb_config::LocalityConfigSpecifier::ZoneAwareLbConfig(
                    pbc::cluster::common_lb_config::ZoneAwareLbConfig {
                        min_cluster_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                            value: 3,
                        }),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        lb_config: Some(pbc::cluster::LbConfig::RoundRobinLbConfig(
            pbc::cluster::RoundRobinLbConfig {
                slow_start_config: Some(pbc::cluster::SlowStartConfig {
                    slow_start_window: Some(PbDuration {
                        seconds: 30,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
            },
        )),
        close_connections_on_host_health_failure: true,
        ignore_health_on_host_removal: true,
        ..Default::default()
    };
    let (m, warnings) = cluster_from_proto(&c).unwrap();
    assert_eq!(m.common_lb.healthy_panic_threshold, 30.0);
    assert_eq!(
        m.common_lb.locality,
        crate::config::LocalityLb::ZoneAware {
            routing_enabled: 100.0,
            min_cluster_size: 3
        }
    );
    assert_eq!(
        m.common_lb.slow_start.unwrap().window,
        std::time::Duration::from_secs(30)
    );
    assert!(m.close_connections_on_host_health_failure && m.ignore_health_on_host_removal);
    let t = &m.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!((t.max_connections, t.max_requests), (7, 1024));
    assert_eq!(
        m.circuit_breakers
            .as_ref()
            .unwrap()
            .per_host_max_connections,
        Some(2)
    );
    let o = m.outlier_detection.as_ref().unwrap();
    assert_eq!(
        (o.consecutive_5xx, o.interval),
        (3, std::time::Duration::from_secs(2))
    );
    assert_eq!(o.base_ejection_time, std::time::Duration::from_secs(30));
    assert_eq!(
        (
            o.success_rate_request_volume,
            o.enforcing_failure_percentage,
            o.max_ejection_time_jitter
        ),
        (20, 50, std::time::Duration::from_secs(1))
    );
    // Both are enforced: nothing to warn about.
    assert!(warnings.is_empty(), "{warnings:?}");
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
                cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
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
                max_connections: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 3 }),
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

#[test]
fn cds_http_protocol_options_choose_the_upstream_protocol() {
    use envoy_types::pb::envoy::extensions::upstreams::http::v3 as uhttp;
    use uhttp::http_protocol_options as hpo;
    let options = |u: hpo::UpstreamProtocolOptions, max_requests: Option<u32>| {
        let po = uhttp::HttpProtocolOptions {
            upstream_protocol_options: Some(u),
            common_http_protocol_options: max_requests.map(|n| core::HttpProtocolOptions {
                max_requests_per_connection: Some(UInt32Value { value: n }),
                ..Default::default()
            }),
            ..Default::default()
        };
        pbc::Cluster {
            name: "h".into(),
            typed_extension_protocol_options: [(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
                Any {
                    type_url: type_urls::HTTP_PROTOCOL_OPTIONS.into(),
                    value: po.encode_to_vec(),
                },
            )]
            .into(),
            ..Default::default()
        }
    };
    let h2 = options(
        hpo::UpstreamProtocolOptions::ExplicitHttpConfig(hpo::ExplicitHttpConfig {
            protocol_config: Some(
                hpo::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                    core::Http2ProtocolOptions {
                        max_concurrent_streams: Some(UInt32Value { value: 9 }),
                        ..Default::default()
                    },
                ),
            ),
        }),
        Some(5),
    );
    let (c, _) = cluster_from_proto(&h2).unwrap();
    assert_eq!(c.http.protocol, super::super::http::UpstreamProtocol::Http2);
    assert_eq!(c.http.max_concurrent_streams, 9);
    assert_eq!(c.http.max_requests_per_connection, Some(5));
    let auto = options(
        hpo::UpstreamProtocolOptions::AutoConfig(Default::default()),
        None,
    );
    let (c, _) = cluster_from_proto(&auto).unwrap();
    assert_eq!(c.http.protocol, super::super::http::UpstreamProtocol::Auto);
    let legacy = pbc::Cluster {
        name: "l".into(),
        http2_protocol_options: Some(Default::default()),
        ..Default::default()
    };
    let (c, _) = cluster_from_proto(&legacy).unwrap();
    assert_eq!(c.http.protocol, super::super::http::UpstreamProtocol::Http2);
}

/// A listener whose one chain is an HTTP connection manager with `hcm` (the router added).
fn hcm_listener(
    mut hcm: envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager,
) -> pbl::Listener {
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as h;
    hcm.http_filters.push(h::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(h::http_filter::ConfigType::TypedConfig(Any {
            type_url: type_urls::ROUTER.into(),
            value: vec![],
        })),
        ..Default::default()
    });
    pbl::Listener {
        name: "web".into(),
        address: Some(sock("127.0.0.1", 8080)),
        filter_chains: vec![pbl::FilterChain {
            filters: vec![pbl::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(pbl::filter::ConfigType::TypedConfig(Any {
                    type_url: type_urls::HTTP_CONNECTION_MANAGER.into(),
                    value: hcm.encode_to_vec(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn lds_http_connection_manager_translates_by_reflection() {
    use envoy_types::pb::envoy::config::route::v3 as r;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as h;
    let route = r::Route {
        name: "api".into(),
        r#match: Some(r::RouteMatch {
            path_specifier: Some(r::route_match::PathSpecifier::Prefix("/api".into())),
            headers: vec![r::HeaderMatcher {
                name: "x-canary".into(),
                header_match_specifier: Some(
                    r::header_matcher::HeaderMatchSpecifier::PresentMatch(true),
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        action: Some(r::route::Action::Route(r::RouteAction {
            cluster_specifier: Some(r::route_action::ClusterSpecifier::Cluster("web".into())),
            timeout: Some(PbDuration {
                seconds: 2,
                nanos: 500_000_000,
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    let hcm = h::HttpConnectionManager {
        stat_prefix: "ingress".into(),
        codec_type: h::http_connection_manager::CodecType::Http1 as i32,
        route_specifier: Some(h::http_connection_manager::RouteSpecifier::RouteConfig(
            r::RouteConfiguration {
                name: "local".into(),
                virtual_hosts: vec![r::VirtualHost {
                    name: "all".into(),
                    domains: vec!["*".into()],
                    routes: vec![route],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        use_remote_address: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
        ..Default::default()
    };
    let (m, warnings) = listener_from_proto(&hcm_listener(hcm.clone())).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let super::super::NetworkFilter::HttpConnectionManager(h) = &m.filter_chains[0].filters[0]
    else {
        panic!("an HTTP connection manager")
    };
    assert_eq!(h.stat_prefix, "ingress");
    assert_eq!(h.codec_type, super::super::http::CodecType::Http1);
    assert!(h.use_remote_address);
    let super::super::http::Routes::Inline(rc) = &h.routes else {
        panic!()
    };
    let r = &rc.virtual_hosts[0].routes[0];
    assert_eq!(r.matcher.headers[0].name, "x-canary");
    let super::super::http::Action::Forward(f) = &r.action else {
        panic!()
    };
    assert_eq!(f.timeout, Some(std::time::Duration::from_millis(2500)));
    // Routes from LDS are not checked against clusters (they may arrive later over CDS).
    assert_eq!(
        h.source["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
        "web"
    );

    // RDS needs a config source: without one the field is named.
    let mut rds = hcm.clone();
    rds.route_specifier = Some(h::http_connection_manager::RouteSpecifier::Rds(h::Rds {
        route_config_name: "r".into(),
        ..Default::default()
    }));
    let e = describe("l", &listener_from_proto(&hcm_listener(rds)).unwrap_err());
    assert!(
        e.contains(
            "filter_chains[0].filters[0].typed_config.rds.config_source: missing required field"
        ),
        "{e}"
    );
    // An HTTP filter of a type Plumb does not know is named.
    let mut unknown = hcm;
    unknown.http_filters.push(h::HttpFilter {
        name: "acme.auth".into(),
        config_type: Some(h::http_filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/acme.Auth".into(),
            value: vec![1, 2, 3],
        })),
        ..Default::default()
    });
    let e = describe(
        "l",
        &listener_from_proto(&hcm_listener(unknown)).unwrap_err(),
    );
    assert!(e.contains("\"type.googleapis.com/acme.Auth\""), "{e}");
}

#[test]
fn cds_health_checks_balancer_settings_and_retry_budgets_translate() {
    use envoy_types::pb::google::protobuf::{BoolValue, Duration as PbDuration, UInt64Value};
    let secs = |s: i64| {
        Some(PbDuration {
            seconds: s,
            nanos: 0,
        })
    };
    let c = pbc::Cluster {
        name: "hc".into(),
        lb_policy: pbc::cluster::LbPolicy::RingHash as i32,
        lb_config: Some(pbc::cluster::LbConfig::RingHashLbConfig(
            pbc::cluster::RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: 64 }),
                ..Default::default()
            },
        )),
        health_checks: vec![core::HealthCheck {
            timeout: secs(1),
            interval: secs(5),
            unhealthy_threshold: Some(UInt32Value { value: 3 }),
            healthy_threshold: Some(UInt32Value { value: 2 }),
            health_checker: Some(core::health_check::HealthChecker::HttpHealthCheck(
                core::health_check::HttpHealthCheck {
                    path: "/ready".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }],
        circuit_breakers: Some(pbc::CircuitBreakers {
            thresholds: vec![pbc::circuit_breakers::Thresholds {
                retry_budget: Some(pbc::circuit_breakers::thresholds::RetryBudget {
                    budget_percent: Some(envoy_types::pb::envoy::r#type::v3::Percent {
                        value: 30.0,
                    }),
                    min_retry_concurrency: Some(UInt32Value { value: 5 }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        outlier_detection: Some(pbc::OutlierDetection {
            successful_active_health_check_uneject_host: Some(BoolValue { value: false }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (m, warnings) = cluster_from_proto(&c).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        m.lb_policy,
        crate::config::LbPolicy::RingHash {
            min_ring_size: 64,
            max_ring_size: 8 * 1024 * 1024
        }
    );
    let h = m.health_check.as_ref().unwrap();
    assert_eq!((h.unhealthy_threshold, h.healthy_threshold), (3, 2));
    assert!(
        matches!(&h.kind, crate::config::HealthCheckKind::Http { path, .. } if path == "/ready")
    );
    let b = m.circuit_breakers.as_ref().unwrap().thresholds[0]
        .retry_budget
        .unwrap();
    assert_eq!((b.budget_percent, b.min_retry_concurrency), (30.0, 5));
    assert!(
        !m.outlier_detection
            .as_ref()
            .unwrap()
            .successful_active_health_check_uneject_host
    );
}

#[test]
fn a_typed_load_balancing_policy_arrives_by_reflection() {
    use envoy_types::pb::envoy::extensions::load_balancing_policies::maglev::v3::Maglev;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;
    let c = pbc::Cluster {
        name: "typed".into(),
        load_balancing_policy: Some(pbc::LoadBalancingPolicy {
            policies: vec![pbc::load_balancing_policy::Policy {
                typed_extension_config: Some(core::TypedExtensionConfig {
                    name: "maglev".into(),
                    typed_config: Some(Any {
                        type_url: "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev".into(),
                        value: Maglev {
                            table_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                                value: 13,
                            }),
                            ..Default::default()
                        }
                        .encode_to_vec(),
                    }),
                }),
            }],
        }),
        ..Default::default()
    };
    let (m, _) = cluster_from_proto(&c).unwrap();
    assert_eq!(
        m.lb_policy,
        crate::config::LbPolicy::Maglev { table_size: 13 }
    );
}

#[test]
fn cds_upstream_tls_arrives_by_reflection_with_sds_names_and_san_matchers() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pbt;
    use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
    let ads = core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            Default::default(),
        )),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    };
    let ctx = pbt::UpstreamTlsContext {
        sni: "db.mesh".into(),
        common_tls_context: Some(pbt::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![pbt::SdsSecretConfig {
                name: "default".into(),
                sds_config: Some(ads.clone()),
            }],
            alpn_protocols: vec!["h2".into()],
            validation_context_type: Some(
                pbt::common_tls_context::ValidationContextType::CombinedValidationContext(
                    pbt::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(pbt::CertificateValidationContext {
                            match_typed_subject_alt_names: vec![pbt::SubjectAltNameMatcher {
                                san_type: pbt::subject_alt_name_matcher::SanType::Uri as i32,
                                matcher: Some(matcher::StringMatcher {
                                    match_pattern: Some(
                                        matcher::string_matcher::MatchPattern::Exact(
                                            "spiffe://mesh/ns/db/sa/db".into(),
                                        ),
                                    ),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }],
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(pbt::SdsSecretConfig {
                            name: "ROOTCA".into(),
                            sds_config: Some(ads),
                        }),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let c = pbc::Cluster {
        name: "db".into(),
        transport_socket: Some(core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(Any {
                type_url: type_urls::UPSTREAM_TLS.into(),
                value: ctx.encode_to_vec(),
            })),
        }),
        ..Default::default()
    };
    let (cluster, w) = cluster_from_proto(&c).unwrap();
    assert!(w.is_empty(), "{w:?}");
    let tls = cluster.tls.unwrap();
    assert_eq!(tls.sni.as_deref(), Some("db.mesh"));
    assert_eq!(tls.common.alpn, vec!["h2"]);
    let names: Vec<String> = tls.common.sds_names().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["default", "ROOTCA"]);
    assert_eq!(tls.common.extra_san_matchers.len(), 1);
    // A transport socket Plumb does not know is refused with its path.
    let mut bad = c.clone();
    bad.transport_socket = Some(core::TransportSocket {
        name: "envoy.transport_sockets.alts".into(),
        config_type: None,
    });
    let e = cluster_from_proto(&bad).unwrap_err();
    assert_eq!(e[0].path, "transport_socket.typed_config", "{e:?}");
}

#[test]
fn cds_transport_socket_matches_arrive_by_reflection() {
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
    let mut fields = std::collections::HashMap::new();
    fields.insert(
        "tlsMode".to_string(),
        PbValue {
            kind: Some(Kind::StringValue("istio".into())),
        },
    );
    let c = pbc::Cluster {
        name: "m".into(),
        transport_socket_matches: vec![
            pbc::cluster::TransportSocketMatch {
                name: "tlsMode-istio".into(),
                r#match: Some(Struct { fields }),
                transport_socket: Some(core::TransportSocket {
                    name: "envoy.transport_sockets.tls".into(),
                    config_type: Some(core::transport_socket::ConfigType::TypedConfig(Any {
                        type_url: type_urls::UPSTREAM_TLS.into(),
                        value: Vec::new(),
                    })),
                }),
            },
            pbc::cluster::TransportSocketMatch {
                name: "tlsMode-disabled".into(),
                r#match: Some(Struct::default()),
                transport_socket: Some(core::TransportSocket {
                    name: "envoy.transport_sockets.raw_buffer".into(),
                    config_type: None,
                }),
            },
        ],
        ..Default::default()
    };
    let (cluster, w) = cluster_from_proto(&c).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(cluster.tls_matches.len(), 2);
    assert_eq!(
        cluster.tls_matches[0].criteria,
        vec![("tlsMode".to_string(), "istio".to_string())]
    );
    assert!(cluster.tls_matches[0].tls.is_some());
    assert!(cluster.tls_matches[1].tls.is_none());
    assert!(cluster.tls_matches[1].matches(&[]));
}
