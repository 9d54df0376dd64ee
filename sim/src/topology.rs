//! The fake cluster's state — which replicas of each service are up, where Plumb listens for
//! each service, the canary's share — and the xDS resources it compiles to, published through
//! the project's own ADS control plane (LDS, RDS, CDS, EDS). The control plane can be
//! restarted or taken down; what changes meanwhile is published when it comes back.

use crate::records::Records;
use crate::scenario::Protocol;
use crate::service::{Replica, ServiceCtx};
use envoy_types::pb::envoy::config::accesslog::v3 as pba;
use envoy_types::pb::envoy::config::cluster::v3 as pbc;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as pbe;
use envoy_types::pb::envoy::config::listener::v3 as pbl;
use envoy_types::pb::envoy::config::route::v3 as pbr;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3 as pbf;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pbt;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as pbu;
use envoy_types::pb::google::protobuf::{
    value::Kind, Any, Duration as PbDuration, Struct, UInt32Value, Value as PbValue,
};
use plumb_tests::xds::{ControlPlane, Resources};
use prost::Message;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What the access log records for each request (JSON lines), read back by the checks.
pub const LOG_FIELDS: &[(&str, &str)] = &[
    ("start", "%START_TIME%"),
    ("id", "%REQ(X-REQUEST-ID)%"),
    ("flow", "%REQ(X-PLUMB-SIM)%"),
    ("status", "%RESPONSE_CODE%"),
    ("flags", "%RESPONSE_FLAGS%"),
    ("upstream", "%UPSTREAM_HOST%"),
    ("cluster", "%UPSTREAM_CLUSTER%"),
    ("duration_ms", "%DURATION%"),
    ("attempts", "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"),
    ("gen", "%ENVIRONMENT(PLUMB_SIM_GENERATION)%"),
];

/// Deliberate mistakes, to prove the checks catch them (`--sabotage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// Routes are published without their retry policies.
    Retries,
    /// A hand-over kills the old agent instead of letting it drain.
    Handover,
}

pub struct ServiceState {
    pub ctx: Arc<ServiceCtx>,
    /// Plumb's listener for this service (what its callers dial).
    pub listen: SocketAddr,
    pub main: Vec<Replica>,
    pub canary: Vec<Replica>,
    /// Percentage of requests sent to the canary.
    pub canary_weight: u32,
    next: usize,
    /// The node's pods, when replicas run in pods.
    pub pool: Option<Arc<std::sync::Mutex<crate::pods::PodPool>>>,
}

impl ServiceState {
    pub fn new(ctx: Arc<ServiceCtx>, listen: SocketAddr) -> Self {
        Self {
            ctx,
            listen,
            main: Vec::new(),
            canary: Vec::new(),
            canary_weight: 0,
            next: 0,
            pool: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.ctx.spec.name
    }

    /// Starts one more replica (of the canary when `canary`) on a new port.
    pub async fn add_replica(&mut self, canary: bool) -> std::io::Result<String> {
        let name = if canary {
            format!("{}-canary-{}", self.name(), self.canary.len())
        } else {
            let n = format!("{}-{}", self.name(), self.next);
            self.next += 1;
            n
        };
        let r = match &self.pool {
            None => {
                Replica::start(
                    self.ctx.clone(),
                    name.clone(),
                    "127.0.0.1:0".parse().unwrap(),
                )
                .await?
            }
            Some(pool) => {
                let pod = pool.lock().unwrap().take().map_err(std::io::Error::other)?;
                let targets = crate::pods::encode_targets(&self.ctx.targets);
                let proc =
                    crate::pods::PodProc::new(pool.clone(), pod, self.name(), &name, &targets);
                Replica::start_in_pod(self.ctx.clone(), name.clone(), proc)
                    .map_err(std::io::Error::other)?
            }
        };
        if canary {
            self.canary.push(r);
        } else {
            self.main.push(r);
        }
        Ok(name)
    }
}

/// mTLS from the agent to every replica: one CA; the agent's client certificate (a SPIFFE
/// identity, rotated by the `cert-rotation` fault) and the CA go to the agent over SDS.
pub struct Mtls {
    pub ca: plumb_tests::tls::Ca,
    pub agent: plumb_tests::tls::Leaf,
    pub generation: u32,
}

impl Mtls {
    pub fn new() -> Self {
        let ca = plumb_tests::tls::Ca::new("plumb-sim CA");
        let agent = ca.identity(&Self::identity(1));
        Self {
            ca,
            agent,
            generation: 1,
        }
    }

    pub fn identity(generation: u32) -> String {
        format!("spiffe://plumb-sim/agent/{generation}")
    }

    /// A new client certificate for the agent; returns its identity.
    pub fn rotate(&mut self) -> String {
        self.generation += 1;
        let id = Self::identity(self.generation);
        self.agent = self.ca.identity(&id);
        id
    }

    /// A replica's server certificate (DNS SAN: the service) and its rustls configuration,
    /// requiring a client certificate from the CA.
    pub fn server(&self, service: &str) -> plumb_tests::tls::Leaf {
        self.ca.server(&[service])
    }
}

impl Default for Mtls {
    fn default() -> Self {
        Self::new()
    }
}

pub const AGENT_CERT: &str = "plumb-sim-agent";
pub const CA_SECRET: &str = "plumb-sim-ca";

pub struct Topology {
    pub services: Vec<ServiceState>,
    pub cp: Option<ControlPlane>,
    pub cp_addr: SocketAddr,
    pub access_log: PathBuf,
    pub sabotage: Sabotage,
    pub records: Arc<Records>,
    /// Listeners are virtual IPs the agent captures (`bind_to_port: false`), not bound ports.
    pub vips: bool,
    pub mtls: Option<Mtls>,
    /// Resources published while the control plane was down, served when it is back.
    pending: bool,
}

impl Topology {
    pub fn new(
        services: Vec<ServiceState>,
        cp: ControlPlane,
        access_log: PathBuf,
        sabotage: Sabotage,
        records: Arc<Records>,
    ) -> Self {
        Self {
            services,
            cp_addr: cp.addr,
            cp: Some(cp),
            access_log,
            sabotage,
            records,
            vips: false,
            mtls: None,
            pending: false,
        }
    }

    pub fn service(&mut self, name: &str) -> &mut ServiceState {
        self.services
            .iter_mut()
            .find(|s| s.name() == name)
            .expect("scenario references are checked when it is read")
    }

    /// Everything the control plane serves for the current state.
    pub fn resources(&self) -> Resources {
        let mut r = Resources::default();
        for s in &self.services {
            let spec = &s.ctx.spec;
            r.listeners.push(listener(
                spec.name.as_str(),
                s.listen,
                &self.access_log,
                self.vips,
            ));
            r.routes.push(route(s, self.sabotage));
            r.clusters.push(cluster(&spec.name, s, self.mtls.is_some()));
            r.endpoints
                .push(endpoints(&spec.name, s.main.iter().map(|x| x.addr)));
            if spec.canary_replicas > 0 {
                let c = format!("{}-canary", spec.name);
                r.clusters.push(cluster(&c, s, self.mtls.is_some()));
                r.endpoints
                    .push(endpoints(&c, s.canary.iter().map(|x| x.addr)));
            }
        }
        if let Some(m) = &self.mtls {
            r.secrets.push(plumb_tests::xds::certificate_secret(
                AGENT_CERT,
                &m.agent.cert,
                &m.agent.key,
            ));
            r.secrets.push(pbt::Secret {
                name: CA_SECRET.into(),
                r#type: Some(pbt::secret::Type::ValidationContext(
                    pbt::CertificateValidationContext {
                        trusted_ca: Some(core::DataSource {
                            specifier: Some(core::data_source::Specifier::InlineString(
                                m.ca.pem.clone(),
                            )),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )),
            });
        }
        r
    }

    /// Publishes the current state (or keeps it for when the control plane is back).
    pub fn publish(&mut self) {
        let r = self.resources();
        match &self.cp {
            Some(cp) => {
                cp.set_secrets(r.secrets);
                cp.set(r.clusters, r.listeners, r.endpoints);
                cp.set_routes(r.routes);
            }
            None => self.pending = true,
        }
    }

    /// Stops the control plane: connected agents lose their stream.
    pub async fn stop_control_plane(&mut self) {
        if let Some(cp) = self.cp.take() {
            cp.stop().await;
        }
    }

    /// Starts it again on the same address, serving the current state.
    pub async fn start_control_plane(&mut self) {
        if self.cp.is_none() {
            let mut r = self.resources();
            r.version = 1_000_000 + self.records.now() as u64;
            self.cp = Some(ControlPlane::start_on(self.cp_addr, r).await);
            self.pending = false;
        }
    }
}

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: format!("type.googleapis.com/{type_url}"),
        value: m.encode_to_vec(),
    }
}

fn dur(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

fn ads() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            Default::default(),
        )),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// An HTTP listener (codec AUTO: HTTP/1.1 and h2c) for one service, its routes over RDS,
/// logging every request as a JSON line; a virtual IP (not bound) in the pod mode.
fn listener(name: &str, addr: SocketAddr, log: &std::path::Path, vip: bool) -> pbl::Listener {
    let text = |v: &str| PbValue {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let fields = LOG_FIELDS
        .iter()
        .map(|(k, v)| (k.to_string(), text(v)))
        .chain([("service".to_string(), text(name))])
        .collect();
    let file = pbf::FileAccessLog {
        path: log.display().to_string(),
        access_log_format: Some(pbf::file_access_log::AccessLogFormat::LogFormat(
            core::SubstitutionFormatString {
                format: Some(core::substitution_format_string::Format::JsonFormat(
                    Struct { fields },
                )),
                ..Default::default()
            },
        )),
    };
    let mut l = plumb_tests::xds::http_rds_listener_with(name, addr, name, |h| {
        h.codec_type = hcm::http_connection_manager::CodecType::Auto as i32;
        h.access_log = vec![pba::AccessLog {
            name: "envoy.access_loggers.file".into(),
            config_type: Some(pba::access_log::ConfigType::TypedConfig(any(
                "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                &file,
            ))),
            ..Default::default()
        }];
    });
    if vip {
        l.bind_to_port = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
    }
    l
}

fn route(s: &ServiceState, sabotage: Sabotage) -> pbr::RouteConfiguration {
    let spec = &s.ctx.spec;
    let cluster_specifier = if spec.canary_replicas > 0 {
        let w = s.canary_weight.min(100);
        pbr::route_action::ClusterSpecifier::WeightedClusters(pbr::WeightedCluster {
            clusters: [
                (spec.name.clone(), 100 - w),
                (format!("{}-canary", spec.name), w),
            ]
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(name, w)| pbr::weighted_cluster::ClusterWeight {
                name,
                weight: u32v(w),
                ..Default::default()
            })
            .collect(),
            ..Default::default()
        })
    } else {
        pbr::route_action::ClusterSpecifier::Cluster(spec.name.clone())
    };
    let retry_policy = match (&spec.route.retries, sabotage) {
        (Some(r), s) if s != Sabotage::Retries => Some(pbr::RetryPolicy {
            retry_on: r.on.clone(),
            num_retries: u32v(r.num),
            per_try_timeout: r.per_try_timeout.map(dur),
            retry_host_predicate: vec![pbr::retry_policy::RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(pbr::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                    Any {
                        type_url: "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate".into(),
                        value: vec![],
                    },
                )),
            }],
            host_selection_retry_max_attempts: 3,
            ..Default::default()
        }),
        _ => None,
    };
    plumb_tests::xds::catch_all_route(
        &spec.name,
        pbr::RouteAction {
            cluster_specifier: Some(cluster_specifier),
            timeout: Some(dur(spec.route.timeout)),
            retry_policy,
            ..Default::default()
        },
    )
}

fn cluster(name: &str, s: &ServiceState, mtls: bool) -> pbc::Cluster {
    let spec = &s.ctx.spec;
    let mut c = plumb_tests::xds::eds_cluster(name);
    c.connect_timeout = Some(dur(Duration::from_secs(1)));
    if mtls {
        let sds = |name: &str| pbt::SdsSecretConfig {
            name: name.into(),
            sds_config: Some(ads()),
        };
        let ctx = pbt::UpstreamTlsContext {
            common_tls_context: Some(pbt::CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds(AGENT_CERT)],
                validation_context_type: Some(
                    pbt::common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                        sds(CA_SECRET),
                    ),
                ),
                alpn_protocols: vec![if spec.protocol == Protocol::Http1 {
                    "http/1.1".into()
                } else {
                    "h2".into()
                }],
                ..Default::default()
            }),
            sni: spec.name.clone(),
            ..Default::default()
        };
        c.transport_socket = Some(core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                &ctx,
            ))),
        });
    }
    if spec.protocol != Protocol::Http1 {
        let opts = pbu::HttpProtocolOptions {
            upstream_protocol_options: Some(
                pbu::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    pbu::http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            pbu::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                                Default::default(),
                            ),
                        ),
                    },
                ),
            ),
            ..Default::default()
        };
        c.typed_extension_protocol_options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
            any(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                &opts,
            ),
        );
    }
    if let Some(o) = &spec.outlier {
        c.outlier_detection = Some(pbc::OutlierDetection {
            consecutive_5xx: u32v(o.consecutive_5xx),
            interval: Some(dur(o.interval)),
            base_ejection_time: Some(dur(o.base_ejection_time)),
            max_ejection_percent: u32v(o.max_ejection_percent),
            ..Default::default()
        });
    }
    c
}

fn endpoints(cluster: &str, addrs: impl Iterator<Item = SocketAddr>) -> pbe::ClusterLoadAssignment {
    let addrs: Vec<SocketAddr> = addrs.collect();
    plumb_tests::xds::endpoints(cluster, &addrs)
}
