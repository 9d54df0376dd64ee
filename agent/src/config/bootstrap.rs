//! Translation of an Envoy v3 bootstrap (YAML or JSON) into the `Snapshot` model.
//!
//! The field tables below are the contract: each Envoy field Plumb reads, ignores on purpose
//! or rejects. `docs/configuration.md` mirrors them. All errors are collected, not just the
//! first, and each names its full field path.

use super::listener::read_listener;
#[cfg(test)]
use super::listener::{
    CIDR_RANGE, CONNECTION_LIMIT, FILTER, FILTER_CHAIN, FILTER_CHAIN_MATCH, LISTENER,
    LISTENER_FILTER, LOCAL_RATELIMIT, TCP_PROXY, TOKEN_BUCKET, TYPED_ANY,
};
use super::overrides::Overrides;
use super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::*;
use serde_yaml::Value;
use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use Field::{Ignored as I, Rejected as R, Supported as S};

/// The bundled default bootstrap (admin on 127.0.0.1:15000, a demo listener on :10000).
pub const DEFAULT_BOOTSTRAP: &str = include_str!("../../config/default.yaml");

const NOT_ENFORCED: &str = "accepted but not enforced yet";
pub(super) const NO_ECDS: &str =
    "extension config discovery (ECDS) is not supported; configure the filter inline";
pub(super) const NO_TLS: &str =
    "TLS is not implemented yet; refusing rather than sending plaintext";

const BOOTSTRAP: FieldTable = &[
    ("node", S),
    ("static_resources", S),
    ("admin", S),
    ("stats_flush_interval", S),
    ("dynamic_resources", S),
    (
        "cluster_manager",
        I("cluster manager settings (local cluster, outlier log) have no effect yet"),
    ),
    (
        "stats_config",
        I("custom tag extraction and stats matchers are not applied"),
    ),
    ("stats_sinks", I("stats are served on the admin port only")),
    (
        "stats_flush_on_admin",
        I("histogram intervals are flushed on a timer"),
    ),
    ("layered_runtime", I("runtime overrides are not read")),
    (
        "overload_manager",
        I("overload actions are not implemented"),
    ),
    ("watchdog", I("watchdog is not implemented")),
    ("watchdogs", I("watchdog is not implemented")),
    ("tracing", I("tracing is not implemented")),
    (
        "enable_dispatcher_stats",
        I("dispatcher stats are not produced"),
    ),
    ("use_tcp_for_dns_lookups", I("the system resolver is used")),
    ("dns_resolution_config", I("the system resolver is used")),
    (
        "typed_dns_resolver_config",
        I("the system resolver is used"),
    ),
    ("header_prefix", I("no HTTP filters yet")),
    ("bootstrap_extensions", S),
    ("hds_config", R("health discovery service is not supported")),
    ("flags_path", I("flags directory is not read")),
    ("fatal_actions", I("fatal actions are not supported")),
    (
        "default_socket_interface",
        R("custom socket interfaces are not supported"),
    ),
    ("certificate_provider_instances", R(NO_TLS)),
    (
        "node_context_params",
        I("xDS-TP context parameters are not sent"),
    ),
    ("inline_headers", I("no HTTP filters yet")),
    (
        "application_log_config",
        I("log format is set with --log-format"),
    ),
    ("default_regex_engine", I("Rust regex is used")),
];

const NODE: FieldTable = &[
    ("id", S),
    ("cluster", S),
    ("locality", S),
    ("metadata", S),
    (
        "dynamic_parameters",
        I("xDS-TP dynamic parameters are not sent"),
    ),
    ("user_agent_name", I("fixed to plumb")),
    ("user_agent_version", I("fixed to plumb's version")),
    ("user_agent_build_version", I("fixed to plumb's version")),
    ("extensions", I("informational")),
    ("client_features", I("informational")),
    ("listening_addresses", I("informational")),
];

const LOCALITY: FieldTable = &[("region", S), ("zone", S), ("sub_zone", S)];

const ADMIN: FieldTable = &[
    ("address", S),
    ("access_log", I("admin access logs are not written")),
    ("access_log_path", I("admin access logs are not written")),
    ("profile_path", I("no CPU profiler")),
    ("socket_options", I("socket options are not applied")),
    (
        "ignore_global_conn_limit",
        I("no global connection limit yet"),
    ),
];

const STATIC_RESOURCES: FieldTable = &[("listeners", S), ("clusters", S), ("secrets", R(NO_TLS))];

pub(super) const ADDRESS: FieldTable = &[
    ("socket_address", S),
    ("pipe", R("unix domain socket addresses are not supported")),
    (
        "envoy_internal_address",
        R("internal listeners are not supported"),
    ),
];

const SOCKET_ADDRESS: FieldTable = &[
    ("address", S),
    ("port_value", S),
    ("protocol", S),
    (
        "named_port",
        R("named ports are not supported; use port_value"),
    ),
    ("resolver_name", R("custom resolvers are not supported")),
    (
        "ipv4_compat",
        I("IPv4-mapped addresses follow the kernel default"),
    ),
    (
        "network_namespace_filepath",
        R("binding in another network namespace is not supported"),
    ),
];

const BOOTSTRAP_EXTENSION: FieldTable = &[("name", S), ("typed_config", S)];

/// `@type` of Plumb's own bootstrap extension configuring eBPF redirection.
pub const REDIRECT_TYPE: &str = type_urls::REDIRECT;

const REDIRECT: FieldTable = &[
    ("@type", S),
    ("listener", S),
    ("proxy_address", S),
    ("proxy_address_v6", S),
    ("cgroups", S),
    ("capture", S),
    ("sk_msg", S),
    ("bpf_object", S),
    ("pin_path", S),
    ("required", S),
    ("heartbeat_interval", S),
    ("fail_open_after", S),
];

const CAPTURE_RULE: FieldTable = &[("cidr", S), ("ports", S), ("exclude", S)];

const CLUSTER: FieldTable = &[
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
    ("health_checks", I(NOT_ENFORCED)),
    (
        "common_lb_config",
        I("panic threshold and locality-weighted LB are not applied yet"),
    ),
    ("round_robin_lb_config", I("slow start is not applied")),
    ("least_request_lb_config", I("choice count is fixed at 2")),
    (
        "per_connection_buffer_limit_bytes",
        I("copy buffers adapt between 4 KiB and 256 KiB"),
    ),
    (
        "typed_extension_protocol_options",
        I("no HTTP upstreams yet"),
    ),
    ("http_protocol_options", I("no HTTP upstreams yet")),
    ("http2_protocol_options", I("no HTTP upstreams yet")),
    ("common_http_protocol_options", I("no HTTP upstreams yet")),
    ("upstream_http_protocol_options", I("no HTTP upstreams yet")),
    ("protocol_selection", I("no HTTP upstreams yet")),
    ("max_requests_per_connection", I("no HTTP upstreams yet")),
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
    (
        "close_connections_on_host_health_failure",
        I("no health checks yet"),
    ),
    ("ignore_health_on_host_removal", I("no health checks yet")),
    (
        "wait_for_warm_on_init",
        I("static clusters are warm at start"),
    ),
    ("lrs_server", I("load reporting is not supported")),
    ("transport_socket", S),
    ("transport_socket_matches", R(NO_TLS)),
    ("eds_cluster_config", S),
    ("cluster_type", R("custom cluster types are not supported")),
    (
        "lb_subset_config",
        R("subset load balancing is not supported"),
    ),
    ("ring_hash_lb_config", R("RING_HASH is not supported")),
    ("maglev_lb_config", R("MAGLEV is not supported")),
    (
        "original_dst_lb_config",
        R("HTTP-header and port-override options of ORIGINAL_DST are not supported"),
    ),
    (
        "upstream_bind_config",
        R("binding upstream source addresses is not supported"),
    ),
    ("filters", R("upstream network filters are not supported")),
    (
        "load_balancing_policy",
        R("extension LB policies are not supported; use lb_policy"),
    ),
];

const CIRCUIT_BREAKERS: FieldTable = &[("thresholds", S), ("per_host_thresholds", I(NOT_ENFORCED))];

const THRESHOLDS: FieldTable = &[
    ("priority", S),
    ("max_connections", S),
    ("max_pending_requests", S),
    ("max_requests", S),
    ("max_retries", S),
    ("track_remaining", S),
    ("retry_budget", I(NOT_ENFORCED)),
    ("max_connection_pools", I(NOT_ENFORCED)),
];

const OUTLIER_DETECTION: FieldTable = &[
    ("consecutive_5xx", S),
    ("interval", S),
    ("base_ejection_time", S),
    ("max_ejection_percent", S),
    ("enforcing_consecutive_5xx", S),
    ("consecutive_gateway_failure", S),
    ("enforcing_consecutive_gateway_failure", S),
    ("split_external_local_origin_errors", S),
    ("consecutive_local_origin_failure", S),
    ("enforcing_consecutive_local_origin_failure", S),
    ("max_ejection_time", S),
    ("enforcing_success_rate", I(NOT_ENFORCED)),
    ("success_rate_minimum_hosts", I(NOT_ENFORCED)),
    ("success_rate_request_volume", I(NOT_ENFORCED)),
    ("success_rate_stdev_factor", I(NOT_ENFORCED)),
    ("enforcing_local_origin_success_rate", I(NOT_ENFORCED)),
    ("failure_percentage_threshold", I(NOT_ENFORCED)),
    ("enforcing_failure_percentage", I(NOT_ENFORCED)),
    ("enforcing_failure_percentage_local_origin", I(NOT_ENFORCED)),
    ("failure_percentage_minimum_hosts", I(NOT_ENFORCED)),
    ("failure_percentage_request_volume", I(NOT_ENFORCED)),
    ("max_ejection_time_jitter", I(NOT_ENFORCED)),
    (
        "successful_active_health_check_uneject_host",
        I(NOT_ENFORCED),
    ),
    ("monitors", I(NOT_ENFORCED)),
    ("always_eject_one_host", I(NOT_ENFORCED)),
    ("detect_degraded_hosts", I(NOT_ENFORCED)),
];

const TRANSPORT_SOCKET: FieldTable = &[("name", S), ("typed_config", S)];

const UPSTREAM_TLS_TYPE: &str = type_urls::UPSTREAM_TLS;

const UPSTREAM_TLS_CONTEXT: FieldTable = &[
    ("@type", S),
    ("sni", S),
    ("common_tls_context", S),
    ("allow_renegotiation", I("renegotiation is never used")),
    (
        "max_session_keys",
        I("session resumption follows rustls defaults"),
    ),
    ("enforce_rsa_key_usage", I("rustls enforces key usage")),
    ("auto_host_sni", R("set sni")),
    ("auto_sni_san_validation", R("set sni")),
];

const COMMON_TLS_CONTEXT: FieldTable = &[
    ("validation_context", S),
    ("tls_certificates", S),
    (
        "tls_params",
        I("TLS 1.2 and 1.3 with rustls' cipher suites"),
    ),
    ("alpn_protocols", I("h2 is negotiated for gRPC")),
    ("key_log", I("keys are never logged")),
    (
        "tls_certificate_sds_secret_configs",
        R("SDS is not implemented yet"),
    ),
    (
        "validation_context_sds_secret_config",
        R("SDS is not implemented yet"),
    ),
    (
        "combined_validation_context",
        R("SDS is not implemented yet"),
    ),
    (
        "tls_certificate_provider_instance",
        R("certificate providers are not supported"),
    ),
    (
        "custom_handshaker",
        R("custom handshakers are not supported"),
    ),
];

const CERT_VALIDATION_CONTEXT: FieldTable = &[
    ("trusted_ca", S),
    (
        "match_typed_subject_alt_names",
        R("the certificate is verified against sni; SAN matchers are not supported yet"),
    ),
    (
        "match_subject_alt_names",
        R("the certificate is verified against sni; SAN matchers are not supported yet"),
    ),
    ("verify_certificate_spki", R("pinning is not supported")),
    ("verify_certificate_hash", R("pinning is not supported")),
    ("crl", R("CRLs are not supported")),
    (
        "allow_expired_certificate",
        R("expired certificates are never accepted"),
    ),
    (
        "trust_chain_verification",
        R("the chain is always verified"),
    ),
];

const TLS_CERTIFICATE: FieldTable = &[
    ("certificate_chain", S),
    ("private_key", S),
    ("password", R("encrypted keys are not supported")),
    (
        "private_key_provider",
        R("private key providers are not supported"),
    ),
    ("pkcs12", R("use PEM certificate_chain and private_key")),
    ("ocsp_staple", I("no OCSP stapling for client certificates")),
    (
        "signed_certificate_timestamp",
        I("no SCTs for client certificates"),
    ),
    ("watched_directory", I("files are read at each connect")),
];

const DATA_SOURCE: FieldTable = &[
    ("filename", S),
    ("inline_string", S),
    ("inline_bytes", R("use inline_string (PEM)")),
    ("environment_variable", R("use filename or inline_string")),
];

fn read_data_source(o: &Obj, d: &mut Diagnostics) -> Option<DataSource> {
    match (o.string("filename", d), o.string("inline_string", d)) {
        (Some(f), None) => Some(DataSource::File(std::path::PathBuf::from(f))),
        (None, Some(s)) => Some(DataSource::Inline(s)),
        _ => {
            d.error(&o.path, "expected exactly one of filename or inline_string");
            None
        }
    }
}

/// `transport_socket` with an UpstreamTlsContext (only the ADS cluster may use it today).
fn read_upstream_tls(ts: &Obj, d: &mut Diagnostics) -> Option<UpstreamTls> {
    let name = ts.string("name", d).unwrap_or_default();
    let tc = ts.get("typed_config");
    let type_url = tc.and_then(|t| t.get("@type")).and_then(|t| t.as_str());
    if type_url != Some(UPSTREAM_TLS_TYPE) {
        d.error(
            ts.at("typed_config"),
            format!(
                "unsupported transport socket \"{}\" (supported: envoy.transport_sockets.tls with @type {UPSTREAM_TLS_TYPE})",
                type_url.unwrap_or(&name)
            ),
        );
        return None;
    }
    let u = ts.object("typed_config", UPSTREAM_TLS_CONTEXT, d)?;
    let sni = u.string("sni", d).filter(|s| !s.is_empty());
    let mut trusted_ca = None;
    let mut client_cert = None;
    if let Some(ctx) = u.object("common_tls_context", COMMON_TLS_CONTEXT, d) {
        if let Some(vc) = ctx.object("validation_context", CERT_VALIDATION_CONTEXT, d) {
            trusted_ca = vc
                .object("trusted_ca", DATA_SOURCE, d)
                .and_then(|ds| read_data_source(&ds, d));
        }
        let certs = ctx.list("tls_certificates", d);
        if certs.len() > 1 {
            d.error(ctx.at("tls_certificates"), "at most one client certificate");
        }
        if let Some((cpath, cv)) = certs.first() {
            if let Some(c) = Obj::new(cv, cpath, TLS_CERTIFICATE, d) {
                let chain = c
                    .object("certificate_chain", DATA_SOURCE, d)
                    .and_then(|o| read_data_source(&o, d));
                let key = c
                    .object("private_key", DATA_SOURCE, d)
                    .and_then(|o| read_data_source(&o, d));
                match (chain, key) {
                    (Some(chain), Some(key)) => client_cert = Some((chain, key)),
                    _ => d.error(
                        cpath,
                        "a client certificate needs certificate_chain and private_key",
                    ),
                }
            }
        }
    }
    if trusted_ca.is_none() {
        d.error(
            u.at("common_tls_context.validation_context.trusted_ca"),
            "missing required field: the control plane's certificate must be verified against a CA",
        );
    }
    let Some(sni) = sni else {
        d.error(
            u.at("sni"),
            "missing required field: the name the control plane's certificate is verified against",
        );
        return None;
    };
    Some(UpstreamTls {
        sni,
        trusted_ca: trusted_ca?,
        client_cert,
    })
}

const EDS_CLUSTER_CONFIG: FieldTable = &[("eds_config", S), ("service_name", S)];

const ONLY_ADS: &str = "Plumb takes xDS over ADS only: use {ads: {}}";

const CONFIG_SOURCE: FieldTable = &[
    ("ads", S),
    ("resource_api_version", S),
    ("initial_fetch_timeout", S),
    ("api_config_source", R(ONLY_ADS)),
    ("path", R(ONLY_ADS)),
    ("path_config_source", R(ONLY_ADS)),
    ("self", R(ONLY_ADS)),
    ("authorities", I("xDS-TP authorities are not used")),
];

const DYNAMIC_RESOURCES: FieldTable = &[
    ("ads_config", S),
    ("cds_config", S),
    ("lds_config", S),
    (
        "cds_resources_locator",
        R("xDS-TP resource locators are not supported"),
    ),
    (
        "lds_resources_locator",
        R("xDS-TP resource locators are not supported"),
    ),
    ("default_config_source", I("every config source is ADS")),
];

const API_CONFIG_SOURCE: FieldTable = &[
    ("api_type", S),
    ("transport_api_version", S),
    ("grpc_services", S),
    (
        "set_node_on_first_message_only",
        I("the node is sent on the first message of each stream"),
    ),
    ("rate_limit_settings", I("requests are not rate limited")),
    ("refresh_delay", I("only for REST, which is not supported")),
    (
        "request_timeout",
        I("only for REST, which is not supported"),
    ),
    ("cluster_names", R("only for REST; use grpc_services")),
    (
        "config_validators",
        R("config validators are not supported"),
    ),
];

const GRPC_SERVICE: FieldTable = &[
    ("envoy_grpc", S),
    ("google_grpc", R("use envoy_grpc naming a static cluster")),
    ("timeout", I("the ADS stream has no deadline")),
    (
        "initial_metadata",
        R("gRPC metadata (e.g. credentials) is not sent yet"),
    ),
    ("retry_policy", I("the stream reconnects with backoff")),
];

const ENVOY_GRPC: FieldTable = &[
    ("cluster_name", S),
    (
        "authority",
        I("the authority is the control plane's address"),
    ),
    ("retry_policy", I("the stream reconnects with backoff")),
    (
        "max_receive_message_length",
        I("messages up to 64 MiB are accepted"),
    ),
    ("skip_envoy_headers", I("no Envoy headers are sent")),
];

const LOAD_ASSIGNMENT: FieldTable = &[
    ("cluster_name", S),
    ("endpoints", S),
    (
        "policy",
        I("drop_overloads and a custom overprovisioning_factor are not applied (Envoy's default factor 1.4 is)"),
    ),
    ("named_endpoints", R("named endpoints are not supported")),
];

const LOCALITY_LB_ENDPOINTS: FieldTable = &[
    ("locality", S),
    ("lb_endpoints", S),
    ("load_balancing_weight", S),
    ("priority", S),
    ("proximity", I("proximity is not used")),
    ("metadata", I("metadata is informational here")),
    (
        "leds_cluster_locality_config",
        R("LEDS is not supported; use EDS (eds_cluster_config)"),
    ),
];

const LB_ENDPOINT: FieldTable = &[
    ("endpoint", S),
    ("health_status", S),
    ("load_balancing_weight", S),
    ("metadata", I("metadata is informational here")),
    ("endpoint_name", R("named endpoints are not supported")),
];

const ENDPOINT: FieldTable = &[
    ("address", S),
    ("hostname", S),
    ("health_check_config", I("no health checks yet")),
    (
        "additional_addresses",
        I("only the primary address is used"),
    ),
];

/// Every field table, by Envoy message, for documentation checks.
#[cfg(test)]
pub(crate) const TABLES: &[(&str, FieldTable)] = &[
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
    ("EdsClusterConfig", EDS_CLUSTER_CONFIG),
    ("TransportSocket", TRANSPORT_SOCKET),
    ("UpstreamTlsContext", UPSTREAM_TLS_CONTEXT),
    ("CommonTlsContext", COMMON_TLS_CONTEXT),
    ("CertificateValidationContext", CERT_VALIDATION_CONTEXT),
    ("TlsCertificate", TLS_CERTIFICATE),
    ("DataSource", DATA_SOURCE),
    ("CircuitBreakers", CIRCUIT_BREAKERS),
    ("Thresholds", THRESHOLDS),
    ("OutlierDetection", OUTLIER_DETECTION),
    ("ConfigSource", CONFIG_SOURCE),
    ("DynamicResources", DYNAMIC_RESOURCES),
    ("ApiConfigSource", API_CONFIG_SOURCE),
    ("GrpcService", GRPC_SERVICE),
    ("EnvoyGrpc", ENVOY_GRPC),
    ("OriginalDstFilter", TYPED_ANY),
    ("BootstrapExtension", BOOTSTRAP_EXTENSION),
    ("Redirect", REDIRECT),
    ("CaptureRule", CAPTURE_RULE),
    ("TcpProxy", TCP_PROXY),
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

/// Reads and translates a bootstrap file.
pub fn parse_bootstrap_file(path: &Path) -> Result<Snapshot, ConfigError> {
    parse_bootstrap_file_with(path, &Overrides::default())
}

/// As `parse_bootstrap_file`, with command-line overrides applied before validation.
pub fn parse_bootstrap_file_with(
    path: &Path,
    overrides: &Overrides,
) -> Result<Snapshot, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        source_name: name.clone(),
        errors: vec![Diag {
            path: String::new(),
            message: format!("cannot read {name}: {e}"),
        }],
    })?;
    parse_bootstrap_with(&text, &name, overrides)
}

/// Translates bootstrap text (YAML; JSON is YAML too). `source_name` labels errors.
pub fn parse_bootstrap(text: &str, source_name: &str) -> Result<Snapshot, ConfigError> {
    parse_bootstrap_with(text, source_name, &Overrides::default())
}

/// As `parse_bootstrap`, with command-line overrides applied before validation.
pub fn parse_bootstrap_with(
    text: &str,
    source_name: &str,
    overrides: &Overrides,
) -> Result<Snapshot, ConfigError> {
    let fail = |errors| ConfigError {
        source_name: source_name.to_string(),
        errors,
    };
    let mut value: Value = serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("line {} column {}", l.line(), l.column()))
            .unwrap_or_default();
        fail(vec![Diag {
            path: at,
            message: format!("invalid YAML: {e}"),
        }])
    })?;
    let override_warnings = overrides.apply(&mut value);
    let mut d = Diagnostics::default();
    let snapshot = translate(&value, &mut d);
    match snapshot {
        Some(mut s) if d.errors.is_empty() => {
            s.warnings = d.warnings;
            s.warnings.extend(override_warnings);
            Ok(s)
        }
        _ => {
            if d.errors.is_empty() {
                d.error("", "invalid configuration");
            }
            Err(fail(d.errors))
        }
    }
}

fn translate(value: &Value, d: &mut Diagnostics) -> Option<Snapshot> {
    if value.is_null() {
        d.error("", "the configuration is empty");
        return None;
    }
    let root = Obj::new(value, "", BOOTSTRAP, d)?;
    let node = root
        .object("node", NODE, d)
        .map(|n| read_node(&n, d))
        .unwrap_or_default();
    let admin = root.object("admin", ADMIN, d).and_then(|a| {
        let addr = a.object("address", ADDRESS, d);
        if addr.is_none() && a.get("address").is_none() {
            d.error(a.at("address"), "missing required field");
        }
        let (host, port) = read_address(&addr?, d)?;
        match host {
            Host::Ip(ip) => Some(Admin {
                address: SocketAddr::new(ip, port),
            }),
            Host::Name(n) => {
                d.error(
                    a.at("address.socket_address.address"),
                    format!("\"{n}\" is not an IP address"),
                );
                None
            }
        }
    });
    let stats_flush_interval = root
        .duration("stats_flush_interval", d)
        .unwrap_or(Duration::from_secs(5));
    if !(Duration::from_millis(1)..=Duration::from_secs(300)).contains(&stats_flush_interval) {
        d.error(
            root.at("stats_flush_interval"),
            "must be between 0.001s and 300s",
        );
    }

    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    let xds = root
        .object("dynamic_resources", DYNAMIC_RESOURCES, d)
        .and_then(|dr| read_dynamic_resources(&dr, d));
    let ads_cluster = xds.as_ref().map(|x| x.cluster.as_str());
    if let Some(sr) = root.object("static_resources", STATIC_RESOURCES, d) {
        for (path, v) in sr.list("clusters", d) {
            if let Some(c) = read_cluster(v, &path, ads_cluster, d) {
                clusters.push((path, c));
            }
        }
        for (path, v) in sr.list("listeners", d) {
            if let Some(l) = read_listener(v, &path, d) {
                listeners.push((path, l));
            }
        }
    }
    if let Some(x) = &xds {
        match clusters.iter().find(|(_, c)| c.name == x.cluster) {
            None => d.error(
                "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                format!("unknown cluster \"{}\": the control plane must be a static cluster", x.cluster),
            ),
            Some((_, c)) if !matches!(c.discovery, DiscoveryType::Static | DiscoveryType::StrictDns | DiscoveryType::LogicalDns) => d.error(
                "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                format!("the control plane cluster \"{}\" must be STATIC, STRICT_DNS or LOGICAL_DNS", x.cluster),
            ),
            _ => {}
        }
    }
    for (path, c) in &clusters {
        if c.discovery == DiscoveryType::Eds && xds.is_none() {
            d.error(
                format!("{path}.type"),
                "EDS clusters need dynamic_resources.ads_config",
            );
        }
    }
    let mut redirect = None;
    for (epath, ev) in root.list("bootstrap_extensions", d) {
        let Some(e) = Obj::new(ev, &epath, BOOTSTRAP_EXTENSION, d) else {
            continue;
        };
        let type_url = e
            .get("typed_config")
            .and_then(|tc| tc.get("@type"))
            .and_then(|t| t.as_str());
        if type_url != Some(REDIRECT_TYPE) {
            d.error(
                &epath,
                format!(
                    "unsupported bootstrap extension \"{}\" (supported: {REDIRECT_TYPE})",
                    type_url
                        .or(e.get("name").and_then(|n| n.as_str()))
                        .unwrap_or("")
                ),
            );
            continue;
        }
        if redirect.is_some() {
            d.error(&epath, "only one plumb.redirect extension may be given");
            continue;
        }
        if let Some(tc) = e.object("typed_config", REDIRECT, d) {
            redirect = read_redirect(&tc, &listeners, d);
        }
    }
    validate_unique(&clusters, |c| c.name.clone(), "name", "cluster name", d);
    validate_unique(&listeners, |l| l.name.clone(), "name", "listener name", d);
    validate_unique(
        &listeners,
        |l| l.address.to_string(),
        "address",
        "listener address",
        d,
    );
    let cluster_names: HashSet<&str> = clusters.iter().map(|(_, c)| c.name.as_str()).collect();
    for (lpath, l) in &listeners {
        let chains = l
            .filter_chains
            .iter()
            .enumerate()
            .map(|(ci, fc)| (format!("{lpath}.filter_chains[{ci}]"), fc))
            .chain(
                l.default_filter_chain
                    .iter()
                    .map(|fc| (format!("{lpath}.default_filter_chain"), fc)),
            );
        for (cpath, fc) in chains {
            for (fi, f) in fc.filters.iter().enumerate() {
                let NetworkFilter::TcpProxy(tp) = f else {
                    continue;
                };
                if !cluster_names.contains(tp.cluster.as_str()) {
                    d.error(
                        format!("{cpath}.filters[{fi}].typed_config.cluster"),
                        format!(
                            "unknown cluster \"{}\" (defined clusters: {})",
                            tp.cluster,
                            {
                                let mut names: Vec<&str> = cluster_names.iter().copied().collect();
                                names.sort_unstable();
                                if names.is_empty() {
                                    "none".to_string()
                                } else {
                                    names.join(", ")
                                }
                            }
                        ),
                    );
                }
            }
        }
    }
    Some(Snapshot {
        node,
        admin,
        stats_flush_interval,
        listeners: listeners.into_iter().map(|(_, l)| Arc::new(l)).collect(),
        clusters: clusters.into_iter().map(|(_, c)| Arc::new(c)).collect(),
        bootstrap: serde_json::to_value(value).unwrap_or(Json::Null),
        redirect,
        xds,
        warnings: Vec::new(),
    })
}

/// A ConfigSource: must be ADS (`{ads: {}}`); returns its initial fetch timeout.
fn read_config_source(src: &Obj, d: &mut Diagnostics) -> Option<Duration> {
    if src.get("ads").is_none() {
        d.error(src.at("ads"), ONLY_ADS);
    }
    if let Some(v) = src.enumeration(
        "resource_api_version",
        &["V3"],
        &[("V2", "the v2 API is gone")],
        d,
    ) {
        debug_assert_eq!(v, "V3");
    }
    src.duration("initial_fetch_timeout", d)
}

fn read_dynamic_resources(dr: &Obj, d: &mut Diagnostics) -> Option<XdsConfig> {
    let Some(ads) = dr.object("ads_config", API_CONFIG_SOURCE, d) else {
        d.error(
            dr.at("ads_config"),
            "missing required field: Plumb takes its dynamic configuration over ADS",
        );
        return None;
    };
    let api = match ads
        .enumeration(
            "api_type",
            &[
                "GRPC",
                "DELTA_GRPC",
                "AGGREGATED_GRPC",
                "AGGREGATED_DELTA_GRPC",
            ],
            &[("REST", "use GRPC or DELTA_GRPC")],
            d,
        )
        .as_deref()
    {
        Some("DELTA_GRPC") | Some("AGGREGATED_DELTA_GRPC") => XdsApi::Delta,
        Some(_) => XdsApi::Sotw,
        None => {
            if ads.get("api_type").is_none() {
                d.error(
                    ads.at("api_type"),
                    "missing required field (GRPC or DELTA_GRPC)",
                );
            }
            return None;
        }
    };
    if let Some(v) = ads.enumeration(
        "transport_api_version",
        &["V3"],
        &[("V2", "the v2 API is gone")],
        d,
    ) {
        debug_assert_eq!(v, "V3");
    }
    let services = ads.list("grpc_services", d);
    if services.len() != 1 {
        d.error(
            ads.at("grpc_services"),
            format!(
                "expected exactly one gRPC service, found {}",
                services.len()
            ),
        );
    }
    let mut cluster = None;
    if let Some((gpath, gv)) = services.first() {
        if let Some(g) = Obj::new(gv, gpath, GRPC_SERVICE, d) {
            match g.object("envoy_grpc", ENVOY_GRPC, d) {
                Some(e) => cluster = e.required_string("cluster_name", d),
                None => d.error(g.at("envoy_grpc"), "missing required field"),
            }
        }
    }
    let mut initial_fetch_timeout = Duration::from_secs(15);
    let mut cds = false;
    let mut lds = false;
    for (key, flag) in [("cds_config", &mut cds), ("lds_config", &mut lds)] {
        if let Some(src) = dr.object(key, CONFIG_SOURCE, d) {
            *flag = true;
            if let Some(t) = read_config_source(&src, d) {
                initial_fetch_timeout = t;
            }
        }
    }
    Some(XdsConfig {
        api,
        cluster: cluster?,
        cds,
        lds,
        initial_fetch_timeout,
    })
}

fn read_redirect(
    r: &Obj,
    listeners: &[(String, Listener)],
    d: &mut Diagnostics,
) -> Option<RedirectConfig> {
    let listener = r.required_string("listener", d);
    let target = listener.as_ref().and_then(|name| {
        let found = listeners.iter().find(|(_, l)| l.name == *name).map(|(_, l)| l);
        match found {
            None => d.error(r.at("listener"), format!("unknown listener \"{name}\"")),
            Some(l) if !l.use_original_dst => d.error(
                r.at("listener"),
                format!("listener \"{name}\" must set use_original_dst: true (or the original_dst listener filter) to receive redirected connections"),
            ),
            Some(l) if l.address.port() == 0 => d.error(
                r.at("listener"),
                format!("listener \"{name}\" needs a fixed port: connections are redirected to it"),
            ),
            _ => {}
        }
        found
    });
    let ip_field = |key: &str, d: &mut Diagnostics| -> Option<IpAddr> {
        let s = r.string(key, d)?;
        match s.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                d.error(r.at(key), format!("\"{s}\" is not an IP address"));
                None
            }
        }
    };
    let mut proxy_v4 = None;
    let mut proxy_v6 = None;
    match ip_field("proxy_address", d) {
        Some(IpAddr::V4(ip)) => proxy_v4 = Some(ip),
        Some(IpAddr::V6(_)) => d.error(
            r.at("proxy_address"),
            "must be IPv4; use proxy_address_v6 for IPv6",
        ),
        None => {}
    }
    match ip_field("proxy_address_v6", d) {
        Some(IpAddr::V6(ip)) => proxy_v6 = Some(ip),
        Some(IpAddr::V4(_)) => d.error(r.at("proxy_address_v6"), "must be IPv6"),
        None => {}
    }
    if let Some(l) = target {
        match l.address.ip() {
            IpAddr::V4(ip) if !ip.is_unspecified() => {
                proxy_v4.get_or_insert(ip);
            }
            IpAddr::V6(ip) if !ip.is_unspecified() => {
                proxy_v6.get_or_insert(ip);
            }
            _ => {}
        }
        if proxy_v4.is_none() && proxy_v6.is_none() {
            d.error(
                r.at("proxy_address"),
                format!("listener \"{}\" binds a wildcard address: say which address workloads are redirected to", l.name),
            );
        }
    }
    let mut cgroups = Vec::new();
    for (cpath, cv) in r.list("cgroups", d) {
        match cv.as_str() {
            Some(p) if p.starts_with('/') => cgroups.push(std::path::PathBuf::from(p)),
            _ => d.error(cpath, "expected an absolute cgroup2 directory path"),
        }
    }
    if cgroups.is_empty() {
        d.error(
            r.at("cgroups"),
            "name at least one cgroup2 directory whose workloads are captured",
        );
    }
    let mut capture = Vec::new();
    for (rpath, rv) in r.list("capture", d) {
        let Some(rule) = Obj::new(rv, &rpath, CAPTURE_RULE, d) else {
            continue;
        };
        let Some(cidr) = rule.required_string("cidr", d) else {
            continue;
        };
        let Some((net, prefix_len)) = parse_cidr(&cidr) else {
            d.error(
                rule.at("cidr"),
                format!("\"{cidr}\" is not a CIDR such as 10.96.0.0/12 or fd00::/64"),
            );
            continue;
        };
        let mut ports = Vec::new();
        for (ppath, pv) in rule.list("ports", d) {
            match pv.as_u64() {
                Some(p @ 1..=65535) => ports.push(p as u16),
                _ => d.error(ppath, "expected a port in [1, 65535]"),
            }
        }
        capture.push(CaptureRule {
            net,
            prefix_len,
            ports,
            exclude: rule.boolean("exclude", d).unwrap_or(false),
        });
    }
    let heartbeat_interval = r
        .duration("heartbeat_interval", d)
        .unwrap_or(Duration::from_millis(200));
    let fail_open_after = r
        .duration("fail_open_after", d)
        .unwrap_or(Duration::from_secs(1));
    if heartbeat_interval.is_zero() || fail_open_after < heartbeat_interval * 2 {
        d.error(
            r.at("fail_open_after"),
            "must be at least twice heartbeat_interval (and both above 0s)",
        );
    }
    Some(RedirectConfig {
        listener: listener?,
        proxy_v4,
        proxy_v6,
        cgroups,
        capture,
        sk_msg: r.boolean("sk_msg", d).unwrap_or(false),
        bpf_object: r.string("bpf_object", d).map(std::path::PathBuf::from),
        pin_path: r
            .string("pin_path", d)
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from("/sys/fs/bpf/plumb")),
        required: r.boolean("required", d).unwrap_or(false),
        heartbeat_interval,
        fail_open_after,
    })
}

/// `"10.96.0.0/12"` → (network, prefix length); a bare address is a full-length prefix.
pub(super) fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
        None => (s.parse::<IpAddr>().ok()?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((addr, len))
}

fn validate_unique<T>(
    items: &[(String, T)],
    key: impl Fn(&T) -> String,
    field: &str,
    what: &str,
    d: &mut Diagnostics,
) {
    let mut seen: Vec<(String, &str)> = Vec::new();
    for (path, item) in items {
        let k = key(item);
        if let Some((_, first)) = seen.iter().find(|(s, _)| *s == k) {
            d.error(
                format!("{path}.{field}"),
                format!("duplicate {what} \"{k}\" (first at {first})"),
            );
        } else {
            seen.push((k, path));
        }
    }
}

fn read_node(n: &Obj, d: &mut Diagnostics) -> Node {
    Node {
        id: n.string("id", d).unwrap_or_default(),
        cluster: n.string("cluster", d).unwrap_or_default(),
        locality: n
            .object("locality", LOCALITY, d)
            .map(|l| read_locality(&l, d))
            .unwrap_or_default(),
        metadata: match n.get("metadata").map(serde_json::to_value) {
            None | Some(Ok(serde_json::Value::Null)) => serde_json::Map::new(),
            Some(Ok(serde_json::Value::Object(m))) => m,
            Some(_) => {
                d.error(
                    n.at("metadata"),
                    "must be a map of keys to values (google.protobuf.Struct)",
                );
                serde_json::Map::new()
            }
        },
    }
}

fn read_locality(l: &Obj, d: &mut Diagnostics) -> Locality {
    Locality {
        region: l.string("region", d).unwrap_or_default(),
        zone: l.string("zone", d).unwrap_or_default(),
        sub_zone: l.string("sub_zone", d).unwrap_or_default(),
    }
}

/// `Address` → (host, port). Hostnames are returned as `Host::Name`; callers decide if allowed.
pub(super) fn read_address(a: &Obj, d: &mut Diagnostics) -> Option<(Host, u16)> {
    let Some(sa) = a.object("socket_address", SOCKET_ADDRESS, d) else {
        if a.get("socket_address").is_none() {
            d.error(a.at("socket_address"), "missing required field");
        }
        return None;
    };
    if let Some(p) = sa.enumeration("protocol", &["TCP"], &[("UDP", "UDP is not supported")], d) {
        debug_assert_eq!(p, "TCP");
    }
    let addr = sa.required_string("address", d);
    let port = if sa.get("port_value").is_none() {
        d.error(sa.at("port_value"), "missing required field");
        None
    } else {
        sa.uint("port_value", 0, 65535, d).map(|p| p as u16)
    };
    let addr = addr?;
    let host = match addr.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) if is_hostname(&addr) => Host::Name(addr),
        Err(_) => {
            d.error(
                sa.at("address"),
                format!("\"{addr}\" is neither an IP address nor a valid hostname"),
            );
            return None;
        }
    };
    Some((host, port?))
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !label.starts_with('-')
        })
}

/// `ads_cluster`: the control-plane cluster, the only one that may use TLS today.
pub(crate) fn read_cluster(
    v: &Value,
    path: &str,
    ads_cluster: Option<&str>,
    d: &mut Diagnostics,
) -> Option<Cluster> {
    let c = Obj::new(v, path, CLUSTER, d)?;
    let name = c.required_string("name", d);
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
    let lb_policy = match c
        .enumeration(
            "lb_policy",
            &["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "CLUSTER_PROVIDED"],
            &[
                ("RING_HASH", "consistent hashing is not supported yet"),
                ("MAGLEV", "consistent hashing is not supported yet"),
                (
                    "LOAD_BALANCING_POLICY_CONFIG",
                    "extension LB policies are not supported",
                ),
            ],
            d,
        )
        .as_deref()
    {
        Some("LEAST_REQUEST") => LbPolicy::LeastRequest,
        Some("RANDOM") => LbPolicy::Random,
        Some("CLUSTER_PROVIDED") => LbPolicy::ClusterProvided,
        _ => LbPolicy::RoundRobin,
    };
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
        if let (Some(cn), Some(n)) = (la.string("cluster_name", d), &name) {
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
    let tls = match (c.get("transport_socket"), &name) {
        (None, _) => None,
        (Some(_), Some(n)) if ads_cluster == Some(n.as_str()) => c
            .object("transport_socket", TRANSPORT_SOCKET, d)
            .and_then(|ts| read_upstream_tls(&ts, d)),
        (Some(_), _) => {
            d.error(
                c.at("transport_socket"),
                format!("not supported: {NO_TLS} (only the ADS control-plane cluster may use TLS today)"),
            );
            None
        }
    };
    let circuit_breakers = c.object("circuit_breakers", CIRCUIT_BREAKERS, d).map(|cb| {
        d.warn(
            cb.path.clone(),
            "carried into the configuration but not enforced yet",
        );
        let mut thresholds = Vec::new();
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
            thresholds.push(Thresholds {
                high_priority: high,
                max_connections: limit("max_connections", 1024, d),
                max_pending_requests: limit("max_pending_requests", 1024, d),
                max_requests: limit("max_requests", 1024, d),
                max_retries: limit("max_retries", 3, d),
                track_remaining: t.boolean("track_remaining", d).unwrap_or(false),
            });
        }
        CircuitBreakers { thresholds }
    });
    let outlier_detection = c
        .object("outlier_detection", OUTLIER_DETECTION, d)
        .map(|o| {
            d.warn(
                o.path.clone(),
                "carried into the configuration but not enforced yet",
            );
            let n = |k: &str, def: u32, d: &mut Diagnostics| {
                o.uint(k, 0, u32::MAX as u64, d)
                    .map(|v| v as u32)
                    .unwrap_or(def)
            };
            let pct = |k: &str, def: u32, d: &mut Diagnostics| {
                o.uint(k, 0, 100, d).map(|v| v as u32).unwrap_or(def)
            };
            OutlierDetection {
                consecutive_5xx: n("consecutive_5xx", 5, d),
                interval: o.duration("interval", d).unwrap_or(Duration::from_secs(10)),
                base_ejection_time: o
                    .duration("base_ejection_time", d)
                    .unwrap_or(Duration::from_secs(30)),
                max_ejection_time: o
                    .duration("max_ejection_time", d)
                    .unwrap_or(Duration::from_secs(300)),
                max_ejection_percent: pct("max_ejection_percent", 10, d),
                enforcing_consecutive_5xx: pct("enforcing_consecutive_5xx", 100, d),
                consecutive_gateway_failure: n("consecutive_gateway_failure", 5, d),
                enforcing_consecutive_gateway_failure: pct(
                    "enforcing_consecutive_gateway_failure",
                    0,
                    d,
                ),
                split_external_local_origin_errors: o
                    .boolean("split_external_local_origin_errors", d)
                    .unwrap_or(false),
                consecutive_local_origin_failure: n("consecutive_local_origin_failure", 5, d),
                enforcing_consecutive_local_origin_failure: pct(
                    "enforcing_consecutive_local_origin_failure",
                    100,
                    d,
                ),
            }
        });
    let mut eds_service_name = None;
    if let Some(eds) = c.object("eds_cluster_config", EDS_CLUSTER_CONFIG, d) {
        if let Some(src) = eds.object("eds_config", CONFIG_SOURCE, d) {
            read_config_source(&src, d);
        }
        eds_service_name = eds.string("service_name", d).filter(|s| !s.is_empty());
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
        eds_service_name,
        circuit_breakers,
        outlier_detection,
        discovery,
        connect_timeout,
        lb_policy,
        dns_refresh_rate,
        cleanup_interval,
        dns_lookup_family,
        localities,
    })
}

pub(crate) fn read_locality_endpoints(
    v: &Value,
    path: &str,
    discovery: DiscoveryType,
    d: &mut Diagnostics,
) -> Option<LocalityEndpoints> {
    let l = Obj::new(v, path, LOCALITY_LB_ENDPOINTS, d)?;
    let locality = l
        .object("locality", LOCALITY, d)
        .map(|o| read_locality(&o, d))
        .unwrap_or_default();
    let priority = l.uint("priority", 0, 127, d).unwrap_or(0) as u32;
    let load_balancing_weight = l
        .uint("load_balancing_weight", 1, u32::MAX as u64, d)
        .map(|w| w as u32);
    let mut endpoints = Vec::new();
    for (epath, ev) in l.list("lb_endpoints", d) {
        if let Some(e) = read_lb_endpoint(ev, &epath, discovery, d) {
            endpoints.push(e);
        }
    }
    Some(LocalityEndpoints {
        locality,
        priority,
        load_balancing_weight,
        endpoints,
    })
}

pub(crate) fn read_lb_endpoint(
    v: &Value,
    path: &str,
    discovery: DiscoveryType,
    d: &mut Diagnostics,
) -> Option<Endpoint> {
    let lb = Obj::new(v, path, LB_ENDPOINT, d)?;
    let health_status = match lb
        .enumeration(
            "health_status",
            &[
                "UNKNOWN",
                "HEALTHY",
                "UNHEALTHY",
                "DRAINING",
                "TIMEOUT",
                "DEGRADED",
            ],
            &[],
            d,
        )
        .as_deref()
    {
        Some("HEALTHY") => HealthStatus::Healthy,
        Some("UNHEALTHY") => HealthStatus::Unhealthy,
        Some("DRAINING") => HealthStatus::Draining,
        Some("TIMEOUT") => HealthStatus::Timeout,
        Some("DEGRADED") => HealthStatus::Degraded,
        _ => HealthStatus::Unknown,
    };
    let weight = lb
        .uint("load_balancing_weight", 1, u32::MAX as u64, d)
        .unwrap_or(1) as u32;
    if lb.get("endpoint").is_none() {
        d.error(lb.at("endpoint"), "missing required field");
        return None;
    }
    let ep = lb.object("endpoint", ENDPOINT, d)?;
    let hostname = ep.string("hostname", d);
    if ep.get("address").is_none() {
        d.error(ep.at("address"), "missing required field");
        return None;
    }
    let (host, port) = read_address(&ep.object("address", ADDRESS, d)?, d)?;
    if discovery == DiscoveryType::Static {
        if let Host::Name(n) = &host {
            d.error(
                ep.at("address.socket_address.address"),
                format!("STATIC clusters take IP addresses; \"{n}\" needs type STRICT_DNS or LOGICAL_DNS"),
            );
            return None;
        }
    }
    if port == 0 {
        d.error(
            ep.at("address.socket_address.port_value"),
            "an endpoint needs a non-zero port",
        );
        return None;
    }
    Some(Endpoint {
        host,
        port,
        hostname,
        weight,
        health_status,
    })
}

#[cfg(test)]
mod tests {
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
        assert_eq!(s.listeners.len(), 1);
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
            "connect_timeout: 0.5s\n    transport_socket: {}",
        );
        let e = errors(&y);
        assert!(
            e[0].starts_with("static_resources.clusters[0].transport_socket: not supported: TLS"),
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
}
