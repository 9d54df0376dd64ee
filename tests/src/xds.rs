//! A real gRPC ADS control plane for tests (state-of-the-world and delta), built on the same
//! envoy-types server traits a production control plane would use. Tests set the resources;
//! connected agents get them pushed, and every request (ACKs, NACKs with their error detail)
//! is recorded.

use envoy_types::pb::envoy::config::cluster::v3 as pbc;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as pbe;
use envoy_types::pb::envoy::config::listener::v3 as pbl;
use envoy_types::pb::envoy::config::route::v3 as pbr;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pbt;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The resources served, with one version for all of them.
#[derive(Clone, Default)]
pub struct Resources {
    pub version: u64,
    pub clusters: Vec<pbc::Cluster>,
    pub listeners: Vec<pbl::Listener>,
    pub endpoints: Vec<pbe::ClusterLoadAssignment>,
    pub routes: Vec<pbr::RouteConfiguration>,
    pub secrets: Vec<pbt::Secret>,
}

impl Resources {
    fn of_type(&self, type_url: &str) -> Vec<(String, Any)> {
        let pack = |name: String, type_url: &str, bytes: Vec<u8>| {
            (
                name,
                Any {
                    type_url: type_url.to_string(),
                    value: bytes,
                },
            )
        };
        match type_url {
            CLUSTER => self
                .clusters
                .iter()
                .map(|c| pack(c.name.clone(), CLUSTER, c.encode_to_vec()))
                .collect(),
            LISTENER => self
                .listeners
                .iter()
                .map(|l| pack(l.name.clone(), LISTENER, l.encode_to_vec()))
                .collect(),
            ENDPOINT => self
                .endpoints
                .iter()
                .map(|e| pack(e.cluster_name.clone(), ENDPOINT, e.encode_to_vec()))
                .collect(),
            ROUTE => self
                .routes
                .iter()
                .map(|r| pack(r.name.clone(), ROUTE, r.encode_to_vec()))
                .collect(),
            SECRET => self
                .secrets
                .iter()
                .map(|s| pack(s.name.clone(), SECRET, s.encode_to_vec()))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A request the agent sent.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub type_url: String,
    pub version_info: String,
    pub nonce: String,
    pub names: Vec<String>,
    pub error: Option<String>,
    pub has_node: bool,
    /// The node, when the request carried one (the first of a stream).
    pub node: Option<core::Node>,
    pub delta: bool,
}

struct Inner {
    resources: Mutex<Resources>,
    changed: watch::Sender<u64>,
    requests: Mutex<Vec<SeenRequest>>,
    nonce: std::sync::atomic::AtomicU64,
    streams: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Resources sent in delta responses (to see what a reconnect re-sends).
    delta_sent: std::sync::atomic::AtomicUsize,
    /// Misbehave: end each SotW stream right after its first response.
    end_after_first_response: std::sync::atomic::AtomicBool,
    resend_on_nack: std::sync::atomic::AtomicBool,
}

/// A delta resource's version: a digest of its bytes, as many control planes use.
fn content_version(bytes: &[u8]) -> String {
    format!("{:016x}", crate::fnv1a(bytes))
}

/// Requests kept for `requests()` (a long simulation must not grow without bound).
const MAX_SEEN: usize = 50_000;

impl Inner {
    fn record(&self, r: SeenRequest) {
        let mut seen = self.requests.lock().unwrap();
        if seen.len() >= MAX_SEEN {
            seen.drain(..MAX_SEEN / 2);
        }
        seen.push(r);
    }

    fn nonce(&self) -> String {
        self.nonce
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .to_string()
    }
}

#[derive(Clone)]
struct Service(Arc<Inner>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let inner = self.0.clone();
        let task = tokio::spawn(async move {
            // type → (subscribed names, content last sent, names last sent). Like a real
            // control plane, a type is resent only when its resources changed.
            let mut subs: HashMap<String, (Vec<String>, Option<Vec<u8>>, Vec<String>)> =
                HashMap::new();
            let mut changed = inner.changed.subscribe();
            loop {
                tokio::select! {
                    msg = incoming.message() => {
                        let Ok(Some(r)) = msg else { break };
                        inner.record(SeenRequest {
                            type_url: r.type_url.clone(),
                            version_info: r.version_info.clone(),
                            nonce: r.response_nonce.clone(),
                            names: r.resource_names.clone(),
                            error: r.error_detail.as_ref().map(|e| e.message.clone()),
                            has_node: r.node.is_some(),
                            node: r.node.clone(),
                            delta: false,
                        });
                        let e = subs.entry(r.type_url.clone()).or_insert((vec![], None, vec![]));
                        e.0 = r.resource_names.clone();
                        if r.error_detail.is_some()
                            && inner.resend_on_nack.load(std::sync::atomic::Ordering::Relaxed)
                        {
                            // Answer the NACK with the same resources again.
                            e.1 = None;
                        }
                    }
                    _ = changed.changed() => {}
                }
                let res = inner.resources.lock().unwrap().clone();
                for (t, (names, sent, sent_names)) in subs.iter_mut() {
                    let resources: Vec<Any> = res
                        .of_type(t)
                        .into_iter()
                        .filter(|(n, _)| names.is_empty() || names.contains(n))
                        .map(|(_, a)| a)
                        .collect();
                    let content: Vec<u8> = resources
                        .iter()
                        .flat_map(|a| a.value.iter().copied())
                        .collect();
                    if sent.as_ref() == Some(&content) && *sent_names == *names {
                        continue;
                    }
                    let resp = DiscoveryResponse {
                        version_info: res.version.to_string(),
                        resources,
                        type_url: t.clone(),
                        nonce: inner.nonce(),
                        ..Default::default()
                    };
                    *sent = Some(content);
                    *sent_names = names.clone();
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                    if inner
                        .end_after_first_response
                        .load(std::sync::atomic::Ordering::Relaxed)
                    {
                        return;
                    }
                }
            }
        });
        self.0.streams.lock().unwrap().push(task);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let inner = self.0.clone();
        let task = tokio::spawn(async move {
            // type → (wildcard, subscribed names, name → encoded bytes last sent)
            let mut subs: HashMap<String, (bool, HashSet<String>, HashMap<String, Vec<u8>>)> =
                HashMap::new();
            let mut changed = inner.changed.subscribe();
            loop {
                tokio::select! {
                    msg = incoming.message() => {
                        let Ok(Some(r)) = msg else { break };
                        inner.record(SeenRequest {
                            type_url: r.type_url.clone(),
                            version_info: String::new(),
                            nonce: r.response_nonce.clone(),
                            names: r.resource_names_subscribe.clone(),
                            error: r.error_detail.as_ref().map(|e| e.message.clone()),
                            has_node: r.node.is_some(),
                            node: r.node.clone(),
                            delta: true,
                        });
                        let e = subs.entry(r.type_url.clone()).or_default();
                        for n in &r.resource_names_subscribe {
                            if n == "*" { e.0 = true } else { e.1.insert(n.clone()); }
                        }
                        for n in &r.resource_names_unsubscribe {
                            e.1.remove(n);
                        }
                        // The agent has these: what it has at the current version needs no
                        // resend; anything else is compared by content on the next push.
                        let res = inner.resources.lock().unwrap().clone();
                        let current: HashMap<String, Any> = res.of_type(&r.type_url).into_iter().collect();
                        for (n, v) in &r.initial_resource_versions {
                            match current.get(n) {
                                Some(a) if content_version(&a.value) == *v => {
                                    e.2.insert(n.clone(), a.value.clone());
                                }
                                _ => {
                                    e.2.entry(n.clone()).or_default();
                                }
                            }
                        }
                    }
                    _ = changed.changed() => {}
                }
                let res = inner.resources.lock().unwrap().clone();
                for (t, (wildcard, names, sent)) in subs.iter_mut() {
                    let current: Vec<(String, Any)> = res
                        .of_type(t)
                        .into_iter()
                        .filter(|(n, _)| *wildcard || names.contains(n))
                        .collect();
                    let mut changed_res = Vec::new();
                    for (n, a) in &current {
                        if sent.get(n) != Some(&a.value) {
                            changed_res.push(Resource {
                                name: n.clone(),
                                version: content_version(&a.value),
                                resource: Some(a.clone()),
                                ..Default::default()
                            });
                            sent.insert(n.clone(), a.value.clone());
                        }
                    }
                    let removed: Vec<String> = sent
                        .keys()
                        .filter(|n| !current.iter().any(|(c, _)| c == *n))
                        .cloned()
                        .collect();
                    for n in &removed {
                        sent.remove(n);
                    }
                    if changed_res.is_empty() && removed.is_empty() {
                        continue;
                    }
                    inner
                        .delta_sent
                        .fetch_add(changed_res.len(), std::sync::atomic::Ordering::SeqCst);
                    let resp = DeltaDiscoveryResponse {
                        system_version_info: res.version.to_string(),
                        resources: changed_res,
                        type_url: t.clone(),
                        removed_resources: removed,
                        nonce: inner.nonce(),
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
        });
        self.0.streams.lock().unwrap().push(task);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A running control plane on 127.0.0.1.
pub struct ControlPlane {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl ControlPlane {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), Resources::default()).await
    }

    /// Starts on `addr` (e.g. the address of a stopped one) serving `resources`.
    pub async fn start_on(addr: SocketAddr, resources: Resources) -> Self {
        Self::start_with(addr, resources, None).await
    }

    /// Serves over TLS with this certificate and key (PEM).
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_with(
            "127.0.0.1:0".parse().unwrap(),
            Resources::default(),
            Some((cert_pem.to_string(), key_pem.to_string())),
        )
        .await
    }

    async fn start_with(
        addr: SocketAddr,
        resources: Resources,
        tls: Option<(String, String)>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind control plane");
        let addr = listener.local_addr().unwrap();
        let (changed, _) = watch::channel(resources.version);
        let inner = Arc::new(Inner {
            resources: Mutex::new(resources),
            changed,
            requests: Mutex::new(Vec::new()),
            nonce: std::sync::atomic::AtomicU64::new(1),
            streams: Mutex::new(Vec::new()),
            delta_sent: std::sync::atomic::AtomicUsize::new(0),
            end_after_first_response: std::sync::atomic::AtomicBool::new(false),
            resend_on_nack: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let svc = AggregatedDiscoveryServiceServer::new(Service(inner.clone()));
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let mut builder = tonic::transport::Server::builder();
            if let Some((cert, key)) = tls {
                builder = builder
                    .tls_config(
                        tonic::transport::ServerTlsConfig::new()
                            .identity(tonic::transport::Identity::from_pem(cert, key)),
                    )
                    .expect("server TLS config");
            }
            let _ = builder
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            addr,
            inner,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    /// Replaces every resource; bumps the version and pushes to connected agents.
    pub fn set(
        &self,
        clusters: Vec<pbc::Cluster>,
        listeners: Vec<pbl::Listener>,
        endpoints: Vec<pbe::ClusterLoadAssignment>,
    ) -> u64 {
        let mut r = self.inner.resources.lock().unwrap();
        r.version += 1;
        r.clusters = clusters;
        r.listeners = listeners;
        r.endpoints = endpoints;
        let v = r.version;
        drop(r);
        let _ = self.inner.changed.send(v);
        v
    }

    /// Replaces only the route configurations (RDS).
    pub fn set_routes(&self, routes: Vec<pbr::RouteConfiguration>) -> u64 {
        let mut r = self.inner.resources.lock().unwrap();
        r.version += 1;
        r.routes = routes;
        let v = r.version;
        drop(r);
        let _ = self.inner.changed.send(v);
        v
    }

    /// Replaces only the secrets (SDS).
    pub fn set_secrets(&self, secrets: Vec<pbt::Secret>) -> u64 {
        let mut r = self.inner.resources.lock().unwrap();
        r.version += 1;
        r.secrets = secrets;
        let v = r.version;
        drop(r);
        let _ = self.inner.changed.send(v);
        v
    }

    /// Replaces only the endpoints.
    pub fn set_endpoints(&self, endpoints: Vec<pbe::ClusterLoadAssignment>) -> u64 {
        let r = self.resources();
        self.set(r.clusters, r.listeners, endpoints)
    }

    pub fn resources(&self) -> Resources {
        self.inner.resources.lock().unwrap().clone()
    }

    /// Resources this control plane has sent in delta responses.
    pub fn delta_resources_sent(&self) -> usize {
        self.inner
            .delta_sent
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Makes every SotW stream end right after its first response (a flapping control plane).
    pub fn end_streams_after_first_response(&self) {
        self.inner
            .end_after_first_response
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// While set, every SotW NACK is answered with the same resources again (a control plane
    /// stuck in a NACK loop).
    pub fn resend_on_nack(&self, on: bool) {
        self.inner
            .resend_on_nack
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn nacks(&self) -> Vec<SeenRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.error.is_some())
            .collect()
    }

    /// Stops serving and cuts every stream (as a crashed control plane would).
    pub async fn stop(mut self) -> Resources {
        for t in self.inner.streams.lock().unwrap().drain(..) {
            t.abort();
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.server.take() {
            s.abort();
            let _ = s.await;
        }
        self.resources()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for t in self.inner.streams.lock().unwrap().drain(..) {
            t.abort();
        }
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

// ---- resource builders ----

fn sock(addr: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                addr.port() as u32
            )),
            ..Default::default()
        })),
    }
}

/// An EDS cluster (endpoints from ADS).
pub fn eds_cluster(name: &str) -> pbc::Cluster {
    pbc::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(pbc::cluster::ClusterDiscoveryType::Type(
            pbc::cluster::DiscoveryType::Eds as i32,
        )),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        eds_cluster_config: Some(pbc::cluster::EdsClusterConfig {
            eds_config: Some(core::ConfigSource {
                config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                    Default::default(),
                )),
                resource_api_version: core::ApiVersion::V3 as i32,
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

pub fn endpoints(cluster: &str, addrs: &[SocketAddr]) -> pbe::ClusterLoadAssignment {
    pbe::ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![pbe::LocalityLbEndpoints {
            lb_endpoints: addrs
                .iter()
                .map(|a| pbe::LbEndpoint {
                    host_identifier: Some(pbe::lb_endpoint::HostIdentifier::Endpoint(
                        pbe::Endpoint {
                            address: Some(sock(*a)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A tcp_proxy listener on `addr` to `cluster`.
pub fn tcp_listener(name: &str, addr: SocketAddr, cluster: &str) -> pbl::Listener {
    let tp = tcp::TcpProxy {
        stat_prefix: name.into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    pbl::Listener {
        name: name.into(),
        address: Some(sock(addr)),
        filter_chains: vec![pbl::FilterChain {
            filters: vec![pbl::Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(pbl::filter::ConfigType::TypedConfig(Any {
                    type_url:
                        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
                            .into(),
                    value: tp.encode_to_vec(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A STATIC cluster with one endpoint.
pub fn static_cluster(name: &str, addr: SocketAddr) -> pbc::Cluster {
    pbc::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(pbc::cluster::ClusterDiscoveryType::Type(
            pbc::cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        load_assignment: Some(endpoints(name, &[addr])),
        ..Default::default()
    }
}

/// A listener on `addr` with an HTTP connection manager whose routes come over RDS as
/// `route_config`.
pub fn http_rds_listener(name: &str, addr: SocketAddr, route_config: &str) -> pbl::Listener {
    http_rds_listener_with(name, addr, route_config, |_| {})
}

/// `http_rds_listener`, with the connection manager adjusted by `f` (codec, access logs...).
pub fn http_rds_listener_with(
    name: &str,
    addr: SocketAddr,
    route_config: &str,
    f: impl FnOnce(&mut hcm::HttpConnectionManager),
) -> pbl::Listener {
    let mut h = hcm::HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                route_config_name: route_config.into(),
                config_source: Some(core::ConfigSource {
                    config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                        Default::default(),
                    )),
                    resource_api_version: core::ApiVersion::V3 as i32,
                    ..Default::default()
                }),
            },
        )),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    .into(),
                value: vec![],
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    f(&mut h);
    pbl::Listener {
        name: name.into(),
        address: Some(sock(addr)),
        filter_chains: vec![pbl::FilterChain {
            filters: vec![pbl::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(pbl::filter::ConfigType::TypedConfig(Any {
                    type_url: "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager".into(),
                    value: h.encode_to_vec(),
                })),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A route configuration sending every request for any host to `cluster`, adding header
/// `x-route: <tag>`.
pub fn route_to(name: &str, cluster: &str, tag: &str) -> pbr::RouteConfiguration {
    let mut r = catch_all_route(
        name,
        pbr::RouteAction {
            cluster_specifier: Some(pbr::route_action::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        },
    );
    r.virtual_hosts[0].routes[0].request_headers_to_add = vec![core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: "x-route".into(),
            value: tag.into(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    r
}

/// A route configuration with one virtual host for any domain and one route, prefix `/`,
/// taking `action`.
pub fn catch_all_route(name: &str, action: pbr::RouteAction) -> pbr::RouteConfiguration {
    pbr::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![pbr::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![pbr::Route {
                r#match: Some(pbr::RouteMatch {
                    path_specifier: Some(pbr::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(pbr::route::Action::Route(action)),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A bootstrap with only ADS: admin on an ephemeral port, the control plane as a static
/// cluster, CDS and LDS over ADS (`api_type` GRPC or DELTA_GRPC).
pub fn ads_bootstrap(control_plane: SocketAddr, api_type: &str) -> String {
    serde_json::json!({
        "node": {"id": "test-node", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "stats_flush_interval": "0.1s",
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "5s"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "xds", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": control_plane.ip().to_string(), "port_value": control_plane.port()}}}}]}]},
        }]},
    })
    .to_string()
}

/// An SDS `tls_certificate` secret with inline PEM.
pub fn certificate_secret(name: &str, cert_pem: &str, key_pem: &str) -> pbt::Secret {
    use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
    let inline = |s: &str| DataSource {
        specifier: Some(Specifier::InlineString(s.to_string())),
        ..Default::default()
    };
    pbt::Secret {
        name: name.to_string(),
        r#type: Some(pbt::secret::Type::TlsCertificate(pbt::TlsCertificate {
            certificate_chain: Some(inline(cert_pem)),
            private_key: Some(inline(key_pem)),
            ..Default::default()
        })),
    }
}

/// `tcp_listener` whose chain terminates TLS with SDS secret `secret` (over ADS).
pub fn tls_tcp_listener(
    name: &str,
    addr: SocketAddr,
    cluster: &str,
    secret: &str,
) -> pbl::Listener {
    let mut l = tcp_listener(name, addr, cluster);
    let ads = core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    };
    let ctx = pbt::DownstreamTlsContext {
        common_tls_context: Some(pbt::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![pbt::SdsSecretConfig {
                name: secret.into(),
                sds_config: Some(ads),
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    l.filter_chains[0].transport_socket = Some(core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(Any {
            type_url:
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
                    .into(),
            value: ctx.encode_to_vec(),
        })),
    });
    l
}
