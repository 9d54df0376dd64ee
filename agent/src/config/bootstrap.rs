//! Translation of an Envoy v3 bootstrap (YAML or JSON) into the `Snapshot` model.
//!
//! The field tables below are the contract: each Envoy field Plumb reads, ignores on purpose
//! or rejects. `docs/configuration.md` mirrors them. All errors are collected, not just the
//! first, and each names its full field path.

use super::cluster_health::*;
use super::listener::read_listener;
use super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::yaml::Value;
use super::*;
use super::{cluster::*, extensions::*, overload::*};
use std::collections::{HashMap, HashSet};

use Field::{Ignored as I, Rejected as R, Supported as S};

/// The bundled default bootstrap (admin on 127.0.0.1:15000, a demo listener on :10000).
pub const DEFAULT_BOOTSTRAP: &str = include_str!("../../config/default.yaml");

pub(super) const NO_ECDS: &str =
    "extension config discovery (ECDS) is not supported; configure the filter inline";

pub(super) const BOOTSTRAP: FieldTable = &[
    ("node", S),
    ("static_resources", S),
    ("admin", S),
    ("stats_flush_interval", S),
    ("dynamic_resources", S),
    ("cluster_manager", S),
    (
        "stats_config",
        I("custom tag extraction and stats matchers are not applied"),
    ),
    ("stats_sinks", I("stats are served on the admin port only")),
    (
        "stats_flush_on_admin",
        I("histogram intervals are flushed on a timer"),
    ),
    ("layered_runtime", S),
    ("overload_manager", S),
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
    (
        "certificate_provider_instances",
        R("certificate providers are not supported; use secrets or SDS"),
    ),
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

pub(super) const NODE: FieldTable = &[
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

pub(super) const LOCALITY: FieldTable = &[("region", S), ("zone", S), ("sub_zone", S)];

pub(super) const ADMIN: FieldTable = &[
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

pub(super) const STATIC_RESOURCES: FieldTable =
    &[("listeners", S), ("clusters", S), ("secrets", S)];

pub(super) const ADDRESS: FieldTable = &[
    ("socket_address", S),
    ("pipe", R("unix domain socket addresses are not supported")),
    (
        "envoy_internal_address",
        R("internal listeners are not supported"),
    ),
];

pub(super) const SOCKET_ADDRESS: FieldTable = &[
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

pub(super) const ONLY_ADS: &str = "Plumb takes xDS over ADS only: use {ads: {}}";

pub(super) const CONFIG_SOURCE: FieldTable = &[
    ("ads", S),
    ("resource_api_version", S),
    ("initial_fetch_timeout", S),
    ("api_config_source", R(ONLY_ADS)),
    ("path", R(ONLY_ADS)),
    ("path_config_source", R(ONLY_ADS)),
    ("self", R(ONLY_ADS)),
    ("authorities", I("xDS-TP authorities are not used")),
];

pub(super) const DYNAMIC_RESOURCES: FieldTable = &[
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

pub(super) const RATE_LIMIT_SETTINGS: FieldTable = &[("max_tokens", S), ("fill_rate", S)];

pub(super) const API_CONFIG_SOURCE: FieldTable = &[
    ("api_type", S),
    ("transport_api_version", S),
    ("grpc_services", S),
    (
        "set_node_on_first_message_only",
        I("the node is sent on the first message of each stream"),
    ),
    ("rate_limit_settings", S),
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

pub(super) const GRPC_SERVICE: FieldTable = &[
    ("envoy_grpc", S),
    ("google_grpc", R("use envoy_grpc naming a static cluster")),
    ("timeout", I("the ADS stream has no deadline")),
    (
        "initial_metadata",
        R("gRPC metadata (e.g. credentials) is not sent yet"),
    ),
    ("retry_policy", I("the stream reconnects with backoff")),
];

pub(super) const ENVOY_GRPC: FieldTable = &[
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

pub(super) fn translate(value: &Value, d: &mut Diagnostics) -> Option<Snapshot> {
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
        if let Host::Ip(ip) = host {
            if !ip.to_canonical().is_loopback() {
                d.warn(
                    a.at("address"),
                    format!("admin listens on {ip}, not loopback: whoever reaches it can stop the proxy (/quitquitquit), fail its health checks or change its logging; prefer 127.0.0.1"),
                );
            }
        }
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
    let mut secrets: Vec<tls::Secret> = Vec::new();
    if let Some(sr) = root.object("static_resources", STATIC_RESOURCES, d) {
        for (path, v) in sr.list("secrets", d) {
            if let Some(s) = tls::read_secret(v, &path, d) {
                if secrets.iter().any(|o| o.name == s.name) {
                    d.error(
                        format!("{path}.name"),
                        format!("duplicate secret name \"{}\"", s.name),
                    );
                } else {
                    secrets.push(s);
                }
            }
        }
        for (path, v) in sr.list("clusters", d) {
            if let Some(c) = read_cluster(v, &path, d) {
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
            Some((path, c)) if c.tls.as_ref().is_some_and(|t| match &t.common.validation {
                None => true,
                Some(tls::SecretRef::Inline(v)) => v.trusted_ca.is_none(),
                Some(_) => false,
            }) => d.error(
                format!("{path}.transport_socket.typed_config.common_tls_context.validation_context"),
                "the control plane's certificate must be verified: give a validation context with trusted_ca",
            ),
            Some((_, c)) if !matches!(c.discovery, DiscoveryType::Static | DiscoveryType::StrictDns | DiscoveryType::LogicalDns) => d.error(
                "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                format!("the control plane cluster \"{}\" must be STATIC, STRICT_DNS or LOGICAL_DNS", x.cluster),
            ),
            _ => {}
        }
    }
    let needs_ads = |common: &tls::CommonTls| xds.is_none() && !common.sds_names().is_empty();
    const SDS_NEEDS_ADS: &str =
        "secrets with sds_config {ads: {}} come over ADS: configure dynamic_resources.ads_config";
    for (path, c) in &clusters {
        let sockets = c
            .tls
            .iter()
            .map(|t| (format!("{path}.transport_socket"), t))
            .chain(c.tls_matches.iter().enumerate().filter_map(|(i, m)| {
                m.tls.as_ref().map(|t| {
                    (
                        format!("{path}.transport_socket_matches[{i}].transport_socket"),
                        t,
                    )
                })
            }));
        for (at, t) in sockets {
            if let Err(e) = tls::check_names(&t.common, &secrets) {
                d.error(&at, e);
            }
            if needs_ads(&t.common) {
                d.error(&at, SDS_NEEDS_ADS);
            }
        }
    }
    for (path, l) in &listeners {
        for (i, fc) in l
            .filter_chains
            .iter()
            .chain(&l.default_filter_chain)
            .enumerate()
        {
            if let Some(t) = &fc.tls {
                let at = if i < l.filter_chains.len() {
                    format!("{path}.filter_chains[{i}].transport_socket")
                } else {
                    format!("{path}.default_filter_chain.transport_socket")
                };
                if let Err(e) = tls::check_names(&t.common, &secrets) {
                    d.error(&at, e);
                }
                if needs_ads(&t.common) {
                    d.error(&at, SDS_NEEDS_ADS);
                }
            }
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
    validate_wildcard_overlaps(&listeners, d);
    let cluster_names: HashSet<&str> = clusters.iter().map(|(_, c)| c.name.as_str()).collect();
    let mut defined: Option<String> = None;
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
                if let NetworkFilter::HttpConnectionManager(h) = f {
                    let crate::config::http::Routes::Inline(rc) = &h.routes else {
                        if xds.is_none() {
                            d.error(
                                format!("{cpath}.filters[{fi}].typed_config.rds"),
                                "RDS needs an ADS control plane (dynamic_resources.ads_config)",
                            );
                        }
                        continue;
                    };
                    if !rc.validate_clusters {
                        continue;
                    }
                    for (at, name) in rc.cluster_refs() {
                        if !cluster_names.contains(name) {
                            d.error(
                                format!("{cpath}.filters[{fi}].typed_config.route_config.{at}"),
                                format!(
                                    "unknown cluster \"{name}\" (defined clusters: {}; set validate_clusters: false to allow it)",
                                    defined.get_or_insert_with(|| some_names(&cluster_names))
                                ),
                            );
                        }
                    }
                    continue;
                }
                let NetworkFilter::TcpProxy(tp) = f else {
                    continue;
                };
                if !cluster_names.contains(tp.cluster.as_str()) {
                    d.error(
                        format!("{cpath}.filters[{fi}].typed_config.cluster"),
                        format!(
                            "unknown cluster \"{}\" (defined clusters: {})",
                            tp.cluster,
                            defined.get_or_insert_with(|| some_names(&cluster_names))
                        ),
                    );
                }
            }
        }
    }
    let overload = root
        .object("overload_manager", OVERLOAD_MANAGER, d)
        .map(|o| read_overload_manager(&o, d));
    let runtime = root
        .object("layered_runtime", LAYERED_RUNTIME, d)
        .map(|r| read_layered_runtime(&r, d))
        .unwrap_or_default();
    let cluster_manager = root
        .object("cluster_manager", CLUSTER_MANAGER, d)
        .map(|o| read_cluster_manager(&o, d))
        .unwrap_or_default();
    if let Some(local) = &cluster_manager.local_cluster_name {
        // As Envoy: the local cluster is a static one.
        if !cluster_names.contains(local.as_str()) {
            d.error(
                "cluster_manager.local_cluster_name",
                format!("\"{local}\" is not a cluster of static_resources"),
            );
        }
    }
    Some(Snapshot {
        node,
        admin,
        cluster_manager,
        stats_flush_interval,
        overload,
        runtime,
        listeners: listeners.into_iter().map(|(_, l)| Arc::new(l)).collect(),
        clusters: clusters.into_iter().map(|(_, c)| Arc::new(c)).collect(),
        secrets,
        bootstrap: BootstrapSource::default(),
        redirect,
        xds,
        warnings: Vec::new(),
    })
}

/// A ConfigSource: must be ADS (`{ads: {}}`); returns its initial fetch timeout.
pub(super) fn read_config_source(src: &Obj, d: &mut Diagnostics) -> Option<Duration> {
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

pub(super) fn read_dynamic_resources(dr: &Obj, d: &mut Diagnostics) -> Option<XdsConfig> {
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
                Some(e) => cluster = e.required_name("cluster_name", d),
                None => d.error(g.at("envoy_grpc"), "missing required field"),
            }
        }
    }
    let rate_limit = ads
        .object("rate_limit_settings", RATE_LIMIT_SETTINGS, d)
        .map(|r| read_rate_limit(&r, d));
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
        rate_limit,
    })
}

/// `rate_limit_settings` with Envoy's defaults; `fill_rate` must be a positive number.
fn read_rate_limit(r: &Obj, d: &mut Diagnostics) -> XdsRateLimit {
    let max_tokens = r
        .uint("max_tokens", 1, u32::MAX as u64, d)
        .map_or(100, |v| v as u32);
    let fill_rate = match r.get("fill_rate") {
        None => 10.0,
        Some(v) => {
            let n = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match n {
                Some(n) if n.is_finite() && n > 0.0 => n,
                _ => {
                    d.error(
                        r.at("fill_rate"),
                        format!(
                            "expected a positive number of requests per second, got {}",
                            match v {
                                Value::Number(n) => n.to_string(),
                                Value::String(s) => format!("\"{s}\""),
                                _ => super::walk::kind(v).to_string(),
                            }
                        ),
                    );
                    10.0
                }
            }
        }
    };
    XdsRateLimit {
        max_tokens,
        fill_rate,
    }
}

/// A listener bound to the any-address and another bound to a specific address of the same
/// family on the same port cannot both bind (EADDRINUSE at run): say so at check time. A
/// dual-stack `::` (ipv4_compat) covers IPv4 too.
fn validate_wildcard_overlaps(listeners: &[(String, Listener)], d: &mut Diagnostics) {
    let bound: Vec<&(String, Listener)> = listeners
        .iter()
        .filter(|(_, l)| l.bind_to_port && l.address.port() != 0)
        .collect();
    for (i, (path, l)) in bound.iter().enumerate() {
        for (other_path, o) in &bound[..i] {
            if l.address.port() != o.address.port() || l.address == o.address {
                continue;
            }
            let covers = |w: &Listener, s: &Listener| {
                w.address.ip().is_unspecified()
                    && (w.address.is_ipv4() == s.address.is_ipv4()
                        || (w.ipv4_compat && s.address.is_ipv4()))
            };
            if covers(l, o) || covers(o, l) {
                d.error(
                    format!("{path}.address"),
                    format!(
                        "{} overlaps {} of {other_path}: the two cannot both bind port {}",
                        l.address,
                        o.address,
                        l.address.port()
                    ),
                );
            }
        }
    }
}

/// Up to ten of `names`, sorted, for an error message ("a, b, … and 9990 more").
fn some_names(names: &HashSet<&str>) -> String {
    if names.is_empty() {
        return "none".to_string();
    }
    let mut sorted: Vec<&str> = names.iter().copied().collect();
    sorted.sort_unstable();
    let mut out = sorted[..sorted.len().min(10)].join(", ");
    if sorted.len() > 10 {
        out.push_str(&format!(", … and {} more", sorted.len() - 10));
    }
    out
}

pub(super) fn validate_unique<T>(
    items: &[(String, T)],
    key: impl Fn(&T) -> String,
    field: &str,
    what: &str,
    d: &mut Diagnostics,
) {
    let mut seen: HashMap<String, &str> = HashMap::with_capacity(items.len());
    for (path, item) in items {
        match seen.entry(key(item)) {
            std::collections::hash_map::Entry::Occupied(first) => d.error(
                format!("{path}.{field}"),
                format!(
                    "duplicate {what} \"{}\" (first at {})",
                    first.key(),
                    first.get()
                ),
            ),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(path);
            }
        }
    }
}

pub(super) fn read_node(n: &Obj, d: &mut Diagnostics) -> Node {
    Node {
        id: n.string("id", d).unwrap_or_default(),
        cluster: n.string("cluster", d).unwrap_or_default(),
        locality: n
            .object("locality", LOCALITY, d)
            .map(|l| read_locality(&l, d))
            .unwrap_or_default(),
        metadata: match n.get("metadata").map(Value::to_json) {
            None | Some(serde_json::Value::Null) => serde_json::Map::new(),
            Some(serde_json::Value::Object(m)) => m,
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

pub(super) fn read_locality(l: &Obj, d: &mut Diagnostics) -> Locality {
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

pub(super) fn is_hostname(s: &str) -> bool {
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

#[cfg(test)]
#[path = "bootstrap_tests.rs"]
mod tests;
