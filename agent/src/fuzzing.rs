//! Entry points for the fuzz targets in `fuzz/` (`cargo xtask fuzz <target>`): each takes
//! arbitrary bytes and runs one parser of outside input the way the agent runs it. Also run on
//! the committed corpora and regression inputs by `cargo test` (`fuzz_inputs_replay`), so a
//! finding stays fixed without the fuzzer.

use crate::config::xds::{cluster_from_proto, endpoints_from_proto, listener_from_proto};
use crate::config::{self, type_urls};
use crate::stats::Store;
use crate::upstream::ClusterManager;
use envoy_types::pb::envoy::config::cluster::v3 as pbc;
use envoy_types::pb::envoy::config::endpoint::v3 as pbe;
use envoy_types::pb::envoy::config::listener::v3 as pbl;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::sync::Arc;

/// The bootstrap reader and validator, as `check-config` and `run` use them.
pub fn bootstrap(data: &[u8]) {
    if data.len() as u64 > config::DEFAULT_MAX_CONFIG_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(snapshot) = config::parse_bootstrap(text, "fuzz.yaml") {
        // What the server builds from an accepted config, and what /config_dump shows.
        let store = Store::new();
        let cm = ClusterManager::new(&snapshot, &store);
        for c in cm.all() {
            let _ = c.config.to_envoy_json();
        }
        for l in &snapshot.listeners {
            let _ = l.to_envoy_json();
        }
        let _ = snapshot.bootstrap.to_json();
    }
}

/// An xDS response: the first byte picks state-of-the-world or delta, the rest is decoded as
/// that message; each resource is decoded and translated by its type, and the clusters and
/// endpoints that translate are applied to a cluster manager in one batch, as a response is.
pub fn xds_response(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let resources: Vec<Any> = if kind & 1 == 0 {
        match DiscoveryResponse::decode(rest) {
            Ok(r) => r.resources,
            Err(_) => return,
        }
    } else {
        match DeltaDiscoveryResponse::decode(rest) {
            Ok(r) => r.resources.into_iter().filter_map(|r| r.resource).collect(),
            Err(_) => return,
        }
    };
    let store = Store::new();
    let cm = ClusterManager::new(&empty_snapshot(), &store);
    let mut batch = cm.batch();
    for any in resources
        .iter()
        .take(crate::xds::MAX_RESOURCES_PER_RESPONSE)
    {
        match any.type_url.as_str() {
            type_urls::CLUSTER => {
                if let Ok(c) = pbc::Cluster::decode(any.value.as_slice()) {
                    if let Ok((model, _)) = cluster_from_proto(&c) {
                        let _ = model.to_envoy_json();
                        batch.upsert(Arc::new(model));
                    }
                }
            }
            type_urls::ENDPOINT => {
                if let Ok(cla) = pbe::ClusterLoadAssignment::decode(any.value.as_slice()) {
                    if let Ok((localities, _)) = endpoints_from_proto(&cla) {
                        batch.set_endpoints(&cla.cluster_name, &localities);
                    }
                }
            }
            type_urls::ROUTE => {
                if let Ok((rc, _)) = crate::config::xds::route_from_proto(any) {
                    let _ = crate::http::route::RouteTable::new(
                        Arc::new(rc),
                        &crate::stats::Store::new(),
                    );
                }
            }
            type_urls::LISTENER => {
                if let Ok(l) = pbl::Listener::decode(any.value.as_slice()) {
                    if let Ok((model, _)) = listener_from_proto(&l) {
                        let _ = model.to_envoy_json();
                    }
                }
            }
            _ => {}
        }
    }
    drop(batch);
    for c in cm.all() {
        let _ = c.hosts();
    }
}

fn empty_snapshot() -> config::Snapshot {
    config::parse_bootstrap("{}", "empty").expect("an empty bootstrap is valid")
}

/// One downstream HTTP connection's bytes at a connection manager (see
/// `http::fuzz_connection`).
pub fn http_request(data: &[u8]) {
    crate::http::fuzz_connection(data);
}

/// An upstream's HTTP/1.1 response as Plumb's own client reads it (see
/// `http::h1client::fuzz_response`).
pub fn http_response(data: &[u8]) {
    crate::http::h1client::fuzz_response(data);
}

/// A hand-over message from the agent on the other end of the upgrade socket.
pub fn handover_message(data: &[u8]) {
    crate::handover::fuzz_message(data);
}

/// A request to the admin server (see `admin::fuzz_request`).
pub fn admin_request(data: &[u8]) {
    crate::admin::fuzz_request(data);
}

/// Values read back from the eBPF maps (see `redirect::fuzz_map_values`).
pub fn ebpf_values(data: &[u8]) {
    crate::redirect::fuzz_map_values(data);
}

/// The client's first bytes as the TLS inspector reads them (`tls::client_hello`), and a
/// peer certificate's SANs as the TLS verifiers read them (`tls::san`).
pub fn tls_client_hello(data: &[u8]) {
    use crate::tls::client_hello::{needed, parse, Parsed};
    // Never asks for fewer bytes than could decide, nor for more than a hello can hold.
    assert!(needed(data) <= crate::tls::client_hello::MAX_PEEK.max(data.len()));
    match parse(data) {
        Parsed::Hello(h) => {
            if let Some(sni) = &h.server_name {
                assert!(!sni.is_empty() && sni.len() <= 255);
                assert_eq!(*sni, sni.to_ascii_lowercase());
            }
            // More bytes after a complete hello do not change it.
            let mut more = data.to_vec();
            more.extend_from_slice(b"\x17\x03\x03\x00\x01x");
            assert_eq!(parse(&more), Parsed::Hello(h));
        }
        Parsed::NeedMore => assert!(data.len() <= crate::tls::client_hello::MAX_PEEK + 5),
        Parsed::NotTls | Parsed::TooLarge => {}
    }
    if let Some(s) = crate::tls::san::sans(data) {
        let _ = s.valid_for("a.example");
    }
}

/// A fuzz target: arbitrary bytes in, a panic out if something is wrong.
pub type Target = fn(&[u8]);

/// Every target by name, for the replay test and `cargo xtask fuzz`.
pub const TARGETS: &[(&str, Target)] = &[
    ("bootstrap", bootstrap),
    ("xds_response", xds_response),
    ("admin_request", admin_request),
    ("http_request", http_request),
    ("http_response", http_response),
    ("handover_message", handover_message),
    ("ebpf_values", ebpf_values),
    ("tls_client_hello", tls_client_hello),
];

#[cfg(test)]
mod tests {
    /// Replays every committed corpus and regression input through its target: a finding,
    /// once fixed and kept in `fuzz/regressions/<target>/`, stays fixed in `cargo test`.
    #[test]
    fn fuzz_inputs_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut replayed = 0;
        for (name, target) in super::TARGETS {
            for dir in ["corpus", "regressions"] {
                let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                    continue;
                };
                for e in entries.flatten() {
                    let data = std::fs::read(e.path()).unwrap();
                    target(&data);
                    replayed += 1;
                }
            }
        }
        assert!(
            replayed > 0,
            "no fuzz corpus found under {}",
            root.display()
        );
    }

    /// The seed corpora: each seed runs through its target here; with
    /// `PLUMB_WRITE_FUZZ_SEEDS=1` they are (re)written under `fuzz/corpus/` (when the seeds
    /// change: `PLUMB_WRITE_FUZZ_SEEDS=1 cargo test -p plumb fuzz_seeds`).
    #[test]
    fn fuzz_seeds() {
        let write_files = std::env::var("PLUMB_WRITE_FUZZ_SEEDS").is_ok_and(|v| v == "1");
        use envoy_types::pb::envoy::service::discovery::v3::{
            DeltaDiscoveryResponse, DiscoveryResponse, Resource,
        };
        use prost::Message as _;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let write = |target: &str, name: &str, data: &[u8]| {
            let run = super::TARGETS.iter().find(|(t, _)| *t == target).unwrap().1;
            run(data);
            if write_files {
                let dir = root.join(target);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(name), data).unwrap();
            }
        };
        // Every bootstrap seed but the deliberately odd last one is a valid configuration.
        let n = super::seeds::BOOTSTRAPS.len();
        for yaml in &super::seeds::BOOTSTRAPS[..n - 1] {
            crate::config::parse_bootstrap(yaml, "seed").unwrap();
        }
        for (i, yaml) in super::seeds::BOOTSTRAPS.iter().enumerate() {
            write("bootstrap", &format!("seed-{i}.yaml"), yaml.as_bytes());
        }
        let resources = super::seeds::xds_resources();
        let sotw = DiscoveryResponse {
            version_info: "1".into(),
            resources: resources.clone(),
            type_url: "mixed".into(),
            nonce: "n".into(),
            ..Default::default()
        };
        let mut data = vec![0u8];
        data.extend(sotw.encode_to_vec());
        write("xds_response", "seed-sotw", &data);
        for (i, any) in resources.iter().enumerate() {
            let one = DiscoveryResponse {
                resources: vec![any.clone()],
                type_url: any.type_url.clone(),
                ..Default::default()
            };
            let mut data = vec![0u8];
            data.extend(one.encode_to_vec());
            write("xds_response", &format!("seed-one-{i}"), &data);
        }
        let delta = DeltaDiscoveryResponse {
            system_version_info: "1".into(),
            resources: resources
                .iter()
                .enumerate()
                .map(|(i, a)| Resource {
                    name: format!("r{i}"),
                    version: "1".into(),
                    resource: Some(a.clone()),
                    ..Default::default()
                })
                .collect(),
            removed_resources: vec!["gone".into()],
            nonce: "n".into(),
            ..Default::default()
        };
        let mut data = vec![1u8];
        data.extend(delta.encode_to_vec());
        write("xds_response", "seed-delta", &data);
        for (i, r) in [
            "/stats?filter=%5Ecluster%5C.&usedonly\nHost: 127.0.0.1:9901",
            "/stats?format=json&filter=(a|b)*c\n",
            "/stats/prometheus?filter=upstream\nOrigin: http://127.0.0.1:9901\nHost: 127.0.0.1:9901",
            "/stats?format=prometheus\nSec-Fetch-Site: cross-site",
            "/quitquitquit\nOrigin: null",
            "/clusters?format=json&a=%zz&b=%4\n",
        ]
        .iter()
        .enumerate()
        {
            write("admin_request", &format!("seed-{i}"), r.as_bytes());
        }
        for (i, r) in [
            "GET /direct HTTP/1.1\r\nHost: a.example\r\n\r\n".to_string(),
            "GET /rest?q=Xy&z HTTP/1.1\r\nHost: x.b.example\r\nX_Drop: 1\r\n\r\nGET /v1/a HTTP/1.1\r\nHost: c.d\r\nx-h: 12\r\n\r\n".to_string(),
            "POST /api/x HTTP/1.1\r\nHost: a.example\r\nx-cluster: none\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_string(),
            "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc".to_string(),
            "GET / HTTP/1.1\r\nHost: other\r\nContent-Type: application/grpc\r\nx-envoy-retry-on: 5xx\r\n\r\n".to_string(),
            // HTTP/2 prior knowledge preface, then a SETTINGS frame.
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_string(),
        ]
        .iter()
        .enumerate()
        {
            write("http_request", &format!("seed-{i}"), r.as_bytes());
        }
        // http_response: a method byte (odd: HEAD), a piece-size byte, then the response.
        for (i, r) in [
            &b"\x00\x00HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"[..],
            b"\x00\x03HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
            b"\x00\x01HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            b"\x01\x00HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
            b"\x00\x07HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\nuntil the close",
        ]
        .iter()
        .enumerate()
        {
            write("http_response", &format!("seed-{i}"), r);
        }
        for (i, (sni, alpn)) in [
            ("api.example.com", &["h2", "http/1.1"][..]),
            ("127.0.0.1", &[][..]),
            ("a.b.example", &["istio-peer-exchange", "istio"][..]),
        ]
        .iter()
        .enumerate()
        {
            write(
                "tls_client_hello",
                &format!("seed-{i}"),
                &crate::tls::client_hello::sample(sni, alpn),
            );
        }
        use crate::handover::{Epoch, Message, OfferedLink, OfferedSocket};
        let msgs = [
            Message::Hello {
                protocol: 1,
                pid: 7,
                version: "0.1.0".into(),
                agent_cgroup_id: 42,
                ready_within_ms: 20_000,
            },
            Message::Offer {
                protocol: 1,
                pid: 8,
                version: "0.1.0".into(),
                agent_cgroup_id: 43,
                epoch: Epoch {
                    generation: 2,
                    first_started_unix_ms: 1_700_000_000_000,
                },
                sockets: vec![OfferedSocket {
                    name: Some("front".into()),
                    configured: "127.0.0.1:0".parse().unwrap(),
                    bound: "127.0.0.1:15001".parse().unwrap(),
                }],
                links: vec![OfferedLink {
                    program: "plumb_connect4".into(),
                    cgroup: "/sys/fs/cgroup/unified/pods".into(),
                }],
                last: true,
            },
            Message::Refused {
                reason: "draining".into(),
            },
            Message::Ready { capture: true },
            Message::Released {
                hosts: vec![crate::handover::HostState {
                    cluster: "backend".into(),
                    address: "10.213.0.2:8080".parse().unwrap(),
                    healthy: Some(false),
                    ejected: Some((1500, 2)),
                }],
            },
        ];
        for (i, m) in msgs.iter().enumerate() {
            write(
                "handover_message",
                &format!("seed-{i}.json"),
                &serde_json::to_vec(m).unwrap(),
            );
        }
        let mut orig = vec![2u8, 0, 0, 0, 0x1f, 0x90, 0, 0, 10, 213, 0, 1];
        orig.resize(24, 0);
        write("ebpf_values", "seed-v4", &orig);
        let mut orig6 = vec![10u8, 0, 0, 0, 0, 80, 0, 0];
        orig6.extend(
            [0xfd, 0, 2, 0x13]
                .iter()
                .chain([0u8; 11].iter())
                .chain([1u8].iter()),
        );
        write("ebpf_values", "seed-v6", &orig6);
        write("ebpf_values", "seed-counters", &[0xff; 64]);
    }
}

#[cfg(test)]
mod seeds {
    use envoy_types::pb::envoy::config::cluster::v3 as pbc;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::config::endpoint::v3 as pbe;
    use envoy_types::pb::envoy::config::listener::v3 as pbl;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
    use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
    use prost::Message;

    pub const BOOTSTRAPS: &[&str] = &[
        include_str!("../config/default.yaml"),
        r#"{"node": {"id": "n", "cluster": "c", "locality": {"zone": "z"}},
 "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
 "stats_flush_interval": "0.1s",
 "dynamic_resources": {"ads_config": {"api_type": "DELTA_GRPC", "transport_api_version": "V3",
   "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
   "rate_limit_settings": {"max_tokens": 5, "fill_rate": 2.5}},
  "cds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "5s"},
  "lds_config": {"ads": {}, "resource_api_version": "V3"}},
 "static_resources": {"clusters": [{"name": "xds", "type": "STRICT_DNS", "connect_timeout": "1s",
   "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
     {"endpoint": {"address": {"socket_address": {"address": "localhost", "port_value": 18000}}}}]}]}}]}}"#,
        r#"
static_resources:
  listeners:
  - name: chains
    address: {socket_address: {address: "::", port_value: 15001, ipv4_compat: true}}
    use_original_dst: true
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}
    - name: envoy.filters.listener.http_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}
    listener_filters_timeout: 0.5s
    continue_on_listener_filters_timeout: true
    filter_chains:
    - filter_chain_match: {destination_port: 80, prefix_ranges: [{address_prefix: 10.213.0.0, prefix_len: 16}], application_protocols: [http/1.1, h2c]}
      filters:
      - name: envoy.filters.network.connection_limit
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit, stat_prefix: cl, max_connections: 10, delay: 0.1s}
      - name: envoy.filters.network.local_ratelimit
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit, stat_prefix: rl, token_bucket: {max_tokens: 5, tokens_per_fill: 1, fill_interval: 1s}}
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: web, cluster: web, idle_timeout: 30s, max_connect_attempts: 3}
    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: passthrough, cluster: passthrough}
  clusters:
  - name: web
    connect_timeout: 0.25s
    lb_policy: LEAST_REQUEST
    load_assignment:
      cluster_name: web
      endpoints:
      - locality: {zone: a}
        priority: 0
        load_balancing_weight: 2
        lb_endpoints:
        - endpoint: {address: {socket_address: {address: 10.213.0.2, port_value: 80}}}
          health_status: HEALTHY
          load_balancing_weight: 3
      - priority: 1
        lb_endpoints:
        - endpoint: {address: {socket_address: {address: "fd00:213::2", port_value: 80}}}
  - name: passthrough
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    cleanup_interval: 5s
    circuit_breakers: {thresholds: [{max_connections: 100}]}
    outlier_detection: {consecutive_5xx: 5}
"#,
        "node: {a: [1, {b: 'x'}], c: \"[{\"}\nadmin: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n",
    ];

    fn any<M: Message>(type_url: &str, m: &M) -> Any {
        Any {
            type_url: type_url.into(),
            value: m.encode_to_vec(),
        }
    }

    fn addr(ip: &str, port: u32) -> core::Address {
        core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: ip.into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }
    }

    pub fn xds_resources() -> Vec<Any> {
        let eds = pbc::Cluster {
            name: "backend".into(),
            cluster_discovery_type: Some(pbc::cluster::ClusterDiscoveryType::Type(
                pbc::cluster::DiscoveryType::Eds as i32,
            )),
            connect_timeout: Some(Duration {
                seconds: 1,
                nanos: 0,
            }),
            eds_cluster_config: Some(pbc::cluster::EdsClusterConfig {
                eds_config: Some(core::ConfigSource {
                    config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                        Default::default(),
                    )),
                    ..Default::default()
                }),
                service_name: "svc".into(),
            }),
            ..Default::default()
        };
        let cla = pbe::ClusterLoadAssignment {
            cluster_name: "backend".into(),
            endpoints: vec![pbe::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    zone: "z".into(),
                    ..Default::default()
                }),
                load_balancing_weight: Some(UInt32Value { value: 2 }),
                lb_endpoints: vec![pbe::LbEndpoint {
                    host_identifier: Some(pbe::lb_endpoint::HostIdentifier::Endpoint(
                        pbe::Endpoint {
                            address: Some(addr("10.213.0.9", 8080)),
                            ..Default::default()
                        },
                    )),
                    health_status: core::HealthStatus::Degraded as i32,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let tp = tcp::TcpProxy {
            stat_prefix: "front".into(),
            cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster("backend".into())),
            ..Default::default()
        };
        let listener = pbl::Listener {
            name: "front".into(),
            address: Some(addr("127.0.0.1", 15000)),
            filter_chains: vec![pbl::FilterChain {
                filter_chain_match: Some(pbl::FilterChainMatch {
                    destination_port: Some(UInt32Value { value: 15000 }),
                    source_ports: vec![1, 2],
                    ..Default::default()
                }),
                filters: vec![pbl::Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(pbl::filter::ConfigType::TypedConfig(any(
                        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        &tp,
                    ))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        use envoy_types::pb::envoy::config::route::v3 as r;
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as h;
        let routes = r::RouteConfiguration {
            name: "routes".into(),
            virtual_hosts: vec![r::VirtualHost {
                name: "all".into(),
                domains: vec!["*".into(), "a.example:8080".into()],
                routes: vec![r::Route {
                    r#match: Some(r::RouteMatch {
                        path_specifier: Some(r::route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(r::route::Action::Route(r::RouteAction {
                        cluster_specifier: Some(r::route_action::ClusterSpecifier::Cluster(
                            "backend".into(),
                        )),
                        timeout: Some(Duration {
                            seconds: 1,
                            nanos: 5,
                        }),
                        retry_policy: Some(r::RetryPolicy {
                            retry_on: "5xx".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let hcm = h::HttpConnectionManager {
            stat_prefix: "web".into(),
            route_specifier: Some(h::http_connection_manager::RouteSpecifier::RouteConfig(
                routes.clone(),
            )),
            http_filters: vec![h::HttpFilter {
                name: "envoy.filters.http.router".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let web = pbl::Listener {
            name: "web".into(),
            address: Some(addr("127.0.0.1", 15080)),
            filter_chains: vec![pbl::FilterChain {
                filters: vec![pbl::Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(pbl::filter::ConfigType::TypedConfig(any(
                        super::type_urls::HTTP_CONNECTION_MANAGER,
                        &hcm,
                    ))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        vec![
            any(super::type_urls::CLUSTER, &eds),
            any(super::type_urls::ENDPOINT, &cla),
            any(super::type_urls::LISTENER, &listener),
            any(super::type_urls::LISTENER, &web),
            any(super::type_urls::ROUTE, &routes),
        ]
    }
}
