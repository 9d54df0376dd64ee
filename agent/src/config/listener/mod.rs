//! The listener family of the configuration: listeners, listener filters, filter chains and
//! their match, network filters (tcp_proxy, connection_limit, local_ratelimit). Field tables
//! and readers shared by the bootstrap and xDS (LDS) front doors.

use super::bootstrap::{read_address, ADDRESS, NO_ECDS};
use super::tls::{read_downstream_tls, TRANSPORT_SOCKET};
use super::type_urls;
use super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::*;
use crate::config::yaml::Value;

use Field::{Ignored as I, Rejected as R, Supported as S};

pub(super) const LISTENER: FieldTable = &[
    ("name", S),
    ("address", S),
    ("stat_prefix", S),
    ("filter_chains", S),
    ("tcp_backlog_size", S),
    (
        "per_connection_buffer_limit_bytes",
        I("copy buffers adapt between 4 KiB and 256 KiB"),
    ),
    ("metadata", I("metadata is informational here")),
    ("drain_type", I("listeners always drain fully")),
    ("listener_filters", S),
    ("listener_filters_timeout", S),
    ("continue_on_listener_filters_timeout", S),
    ("use_original_dst", S),
    ("transparent", R("transparent sockets are not supported")),
    ("freebind", R("freebind sockets are not supported")),
    ("socket_options", I("socket options are not applied")),
    (
        "tcp_fast_open_queue_length",
        I("TCP fast open is not enabled"),
    ),
    ("traffic_direction", I("informational")),
    (
        "connection_balance_config",
        I("the runtime balances accepted connections"),
    ),
    ("enable_reuse_port", I("one socket per listener")),
    ("access_log", I("access logs are not written yet")),
    ("bind_to_port", S),
    ("default_filter_chain", S),
    (
        "filter_chain_matcher",
        R("the matcher API is not supported; use filter_chain_match"),
    ),
    ("additional_addresses", R("one address per listener")),
    ("enable_mptcp", R("MPTCP is not supported")),
    (
        "ignore_global_conn_limit",
        I("no global connection limit yet"),
    ),
    (
        "max_connections_to_accept_per_socket_event",
        I("accept batching is automatic"),
    ),
    ("udp_listener_config", R("UDP is not supported")),
    ("api_listener", R("API listeners are not supported")),
    (
        "internal_listener",
        R("internal listeners are not supported"),
    ),
];

pub(super) const LISTENER_FILTER: FieldTable = &[
    ("name", S),
    ("typed_config", S),
    (
        "filter_disabled",
        R("listener filter matching is not supported"),
    ),
    ("config_discovery", R(NO_ECDS)),
];

const ORIGINAL_DST_FILTER_TYPE: &str = type_urls::ORIGINAL_DST_FILTER;

pub(super) const TYPED_ANY: FieldTable = &[("@type", S)];

pub(super) const TLS_INSPECTOR: FieldTable = &[
    ("@type", S),
    (
        "initial_read_buffer_size",
        I("the ClientHello is read up to 16 KiB as it arrives"),
    ),
    (
        "enable_ja3_fingerprinting",
        R("JA3 fingerprints are not computed"),
    ),
    (
        "enable_ja4_fingerprinting",
        R("JA4 fingerprints are not computed"),
    ),
];

pub(super) const FILTER_CHAIN: FieldTable = &[
    ("name", S),
    ("filters", S),
    ("filter_chain_match", S),
    ("transport_socket", S),
    ("transport_socket_connect_timeout", S),
    ("metadata", I("metadata is informational here")),
];

pub(super) const FILTER: FieldTable = &[
    ("name", S),
    ("typed_config", S),
    ("config_discovery", R(NO_ECDS)),
];

const TCP_PROXY_TYPE: &str = type_urls::TCP_PROXY;
const TCP_PROXY_NAMES: &[&str] = &["envoy.filters.network.tcp_proxy", "envoy.tcp_proxy"];
const HCM_TYPE: &str = type_urls::HTTP_CONNECTION_MANAGER;
const HCM_NAMES: &[&str] = &[
    "envoy.filters.network.http_connection_manager",
    "envoy.http_connection_manager",
];

pub(super) const TCP_HASH_POLICY: FieldTable = &[
    ("source_ip", S),
    (
        "filter_state",
        R("filter state is not supported; use source_ip"),
    ),
];

pub(super) const TCP_PROXY: FieldTable = &[
    ("@type", S),
    ("stat_prefix", S),
    ("cluster", S),
    ("idle_timeout", S),
    ("max_connect_attempts", S),
    ("max_downstream_connection_duration", S),
    (
        "weighted_clusters",
        R("weighted clusters are not supported yet; use cluster"),
    ),
    (
        "metadata_match",
        R("subset load balancing is not supported"),
    ),
    ("hash_policy", S),
    ("tunneling_config", R("HTTP tunneling is not supported yet")),
    (
        "on_demand",
        R("on-demand cluster discovery is not supported"),
    ),
    ("access_log", S),
    (
        "access_log_options",
        I("lines are written when each connection ends"),
    ),
    (
        "access_log_flush_interval",
        I("lines are written when each connection ends"),
    ),
    (
        "flush_access_log_on_connected",
        I("lines are written when each connection ends"),
    ),
    (
        "backoff_options",
        I("connect attempts are retried immediately"),
    ),
    ("proxy_protocol_tlvs", R("PROXY protocol is not supported")),
    ("downstream_idle_timeout", R("use idle_timeout")),
    ("upstream_idle_timeout", R("use idle_timeout")),
];

pub(crate) fn read_listener(v: &Value, path: &str, d: &mut Diagnostics) -> Option<Listener> {
    let l = Obj::new(v, path, LISTENER, d)?;
    let address = match l.required("address", d) {
        Some(_) => l
            .object("address", ADDRESS, d)
            .and_then(|a| read_address(&a, d)),
        None => None,
    };
    let address = match address {
        Some((Host::Ip(ip), port)) => Some(SocketAddr::new(ip, port)),
        Some((Host::Name(n), _)) => {
            d.error(
                l.at("address.socket_address.address"),
                format!("a listener must bind an IP address, not the hostname \"{n}\""),
            );
            None
        }
        None => None,
    };
    // Envoy's ipv4_compat: a `::` listener that also accepts IPv4 (as v4-mapped addresses).
    let ipv4_compat = l
        .get("address")
        .and_then(|a| a.get("socket_address"))
        .and_then(|sa| sa.get("ipv4_compat").or_else(|| sa.get("ipv4Compat")))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if ipv4_compat && address.is_none_or(|a| a.ip() != IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
    {
        d.error(
            l.at("address.socket_address.ipv4_compat"),
            "only a listener on the IPv6 any-address \"::\" can accept IPv4 too",
        );
    }
    let stat_prefix = l.name("stat_prefix", d);
    let mut use_original_dst = l.boolean("use_original_dst", d).unwrap_or(false);
    let mut listener_filters = Vec::new();
    for (fpath, fv) in l.list("listener_filters", d) {
        if let Some(f) = read_listener_filter(fv, &fpath, d) {
            if f == ListenerFilter::OriginalDst {
                use_original_dst = true;
            }
            if !listener_filters.contains(&f) {
                listener_filters.push(f);
            }
        }
    }
    if use_original_dst && !listener_filters.contains(&ListenerFilter::OriginalDst) {
        listener_filters.insert(0, ListenerFilter::OriginalDst);
    }
    let listener_filters_timeout = match l.duration("listener_filters_timeout", d) {
        Some(t) if t.is_zero() => None,
        Some(t) => Some(t),
        None => Some(Duration::from_secs(15)),
    };
    let continue_on_listener_filters_timeout = l
        .boolean("continue_on_listener_filters_timeout", d)
        .unwrap_or(false);
    let bind_to_port = l.boolean("bind_to_port", d).unwrap_or(true);
    let tcp_backlog_size = l
        .uint("tcp_backlog_size", 1, u32::MAX as u64, d)
        .unwrap_or(1024) as u32;
    let mut chains = Vec::new();
    let chain_items = l.list("filter_chains", d);
    for (cpath, cv) in &chain_items {
        if let Some(fc) = read_filter_chain(cv, cpath, true, d) {
            chains.push((cpath.clone(), fc));
        }
    }
    let default_filter_chain = l
        .get("default_filter_chain")
        .and_then(|v| read_filter_chain(v, &l.at("default_filter_chain"), false, d));
    if chain_items.is_empty() && l.get("default_filter_chain").is_none() {
        d.error(
            l.at("filter_chains"),
            "no filter chains specified: give filter_chains or default_filter_chain",
        );
    }
    validate_chain_matches(&chains, d);
    let chains: Vec<FilterChain> = chains.into_iter().map(|(_, c)| c).collect();
    let address = address?;
    let name = l.name("name", d).unwrap_or_else(|| address.to_string());
    if !bind_to_port && address.port() == 0 {
        d.error(
            l.at("address.socket_address.port_value"),
            "a listener with bind_to_port: false names a destination and needs its port",
        );
    }
    if !bind_to_port && use_original_dst {
        d.error(
            l.at("use_original_dst"),
            "a listener that does not bind its port cannot receive redirected connections",
        );
    }
    Some(Listener {
        name,
        address,
        stat_prefix,
        tcp_backlog_size,
        filter_chains: chains,
        default_filter_chain,
        listener_filters,
        listener_filters_timeout,
        continue_on_listener_filters_timeout,
        use_original_dst,
        bind_to_port,
        ipv4_compat,
    })
}

const CONNECTION_LIMIT_TYPE: &str = type_urls::CONNECTION_LIMIT;
const CONNECTION_LIMIT_NAME: &str = "envoy.filters.network.connection_limit";

pub(super) const CONNECTION_LIMIT: FieldTable = &[
    ("@type", S),
    ("stat_prefix", S),
    ("max_connections", S),
    ("delay", S),
    (
        "runtime_enabled",
        I("no runtime: the filter is always enabled"),
    ),
];

const LOCAL_RATELIMIT_TYPE: &str = type_urls::LOCAL_RATELIMIT;
const LOCAL_RATELIMIT_NAME: &str = "envoy.filters.network.local_ratelimit";

pub(super) const LOCAL_RATELIMIT: FieldTable = &[
    ("@type", S),
    ("stat_prefix", S),
    ("token_bucket", S),
    (
        "runtime_enabled",
        I("no runtime: the filter is always enabled"),
    ),
    (
        "share_key",
        R("buckets shared between filters are not supported yet"),
    ),
];

pub(super) const TOKEN_BUCKET: FieldTable = &[
    ("max_tokens", S),
    ("tokens_per_fill", S),
    ("fill_interval", S),
];

/// Most filter chains a listener may have, and most leaf combinations all its chains' matches
/// may expand to when checking for overlaps: bounds on load time and memory for hostile input.
const MAX_FILTER_CHAINS: usize = 10_000;

const HTTP_INSPECTOR_NAME: &str = "envoy.filters.listener.http_inspector";
const TLS_INSPECTOR_NAME: &str = "envoy.filters.listener.tls_inspector";

fn read_listener_filter(v: &Value, path: &str, d: &mut Diagnostics) -> Option<ListenerFilter> {
    let f = Obj::new(v, path, LISTENER_FILTER, d)?;
    let name = f.string("name", d).unwrap_or_default();
    let type_url = f
        .get("typed_config")
        .and_then(|tc| tc.get("@type"))
        .and_then(|t| t.as_str())
        .map(str::to_string);
    let kind = match type_url.as_deref() {
        Some(ORIGINAL_DST_FILTER_TYPE) => Some(ListenerFilter::OriginalDst),
        Some(type_urls::HTTP_INSPECTOR) => Some(ListenerFilter::HttpInspector),
        Some(type_urls::TLS_INSPECTOR) => Some(ListenerFilter::TlsInspector),
        Some(_) => None,
        None if name == "envoy.filters.listener.original_dst" => Some(ListenerFilter::OriginalDst),
        None if name == HTTP_INSPECTOR_NAME => Some(ListenerFilter::HttpInspector),
        None if name == TLS_INSPECTOR_NAME || name == "envoy.listener.tls_inspector" => {
            Some(ListenerFilter::TlsInspector)
        }
        None => None,
    };
    match kind {
        Some(k) => {
            let table = if k == ListenerFilter::TlsInspector {
                TLS_INSPECTOR
            } else {
                TYPED_ANY
            };
            let _ = f.object("typed_config", table, d);
            Some(k)
        }
        None => {
            d.error(
                path,
                format!(
                    "unsupported listener filter \"{}\" (supported: envoy.filters.listener.original_dst, {HTTP_INSPECTOR_NAME}, {TLS_INSPECTOR_NAME})",
                    type_url.unwrap_or(name)
                ),
            );
            None
        }
    }
}

/// `with_match`: a chain of `filter_chains` (a `default_filter_chain`'s match is ignored, as
/// Envoy does).
fn read_filter_chain(
    v: &Value,
    path: &str,
    with_match: bool,
    d: &mut Diagnostics,
) -> Option<FilterChain> {
    let fc = Obj::new(v, path, FILTER_CHAIN, d)?;
    let filter_chain_match = match fc.object("filter_chain_match", FILTER_CHAIN_MATCH, d) {
        Some(m) if with_match => read_match(&m, d),
        _ => FilterChainMatch::default(),
    };
    let items = fc.list("filters", d);
    if items.is_empty() {
        d.error(
            fc.at("filters"),
            "must have at least one network filter, the last one terminal (envoy.filters.network.tcp_proxy or envoy.filters.network.http_connection_manager)",
        );
    }
    let mut filters = Vec::new();
    let last = items.len().saturating_sub(1);
    for (i, (fpath, fv)) in items.iter().enumerate() {
        let Some(f) = read_filter(fv, fpath, d) else {
            continue;
        };
        if i < last && f.is_terminal() {
            d.error(
                fpath,
                "a terminal filter (tcp_proxy, http_connection_manager) must be the last filter in the chain",
            );
        } else if i == last && !f.is_terminal() {
            d.error(
                fpath,
                "the last filter in a chain must be a terminal filter (envoy.filters.network.tcp_proxy or envoy.filters.network.http_connection_manager)",
            );
        }
        filters.push(f);
    }
    let handshake_timeout = fc.duration("transport_socket_connect_timeout", d);
    let tls = fc
        .object("transport_socket", TRANSPORT_SOCKET, d)
        .and_then(|ts| read_downstream_tls(&ts, handshake_timeout.filter(|t| !t.is_zero()), d));
    Some(FilterChain {
        name: fc.name("name", d).unwrap_or_default(),
        filter_chain_match,
        filters,
        tls,
    })
}

impl FilterChain {
    pub fn to_envoy_json(&self) -> Json {
        let mut j = json!({
            "name": self.name,
            "filters": self.filters.iter().map(NetworkFilter::to_envoy_json).collect::<Vec<_>>(),
        });
        let m = self.filter_chain_match.to_envoy_json();
        if m.as_object().is_some_and(|o| !o.is_empty()) {
            j["filter_chain_match"] = m;
        }
        if let Some(t) = &self.tls {
            j["transport_socket"] = t.to_envoy_json();
            if t.handshake_timeout != super::tls::DEFAULT_HANDSHAKE_TIMEOUT {
                j["transport_socket_connect_timeout"] = json!(duration_json(t.handshake_timeout));
            }
        }
        j
    }
}

impl Listener {
    /// Envoy v3 `Listener` JSON of the active (translated) config, for `/config_dump`.
    pub fn to_envoy_json(&self) -> Json {
        let mut j = json!({
            "name": self.name,
            "address": socket_address_json(&self.address.ip().to_string(), self.address.port()),
            "filter_chains": self.filter_chains.iter().map(FilterChain::to_envoy_json).collect::<Vec<_>>(),
            "tcp_backlog_size": self.tcp_backlog_size,
        });
        if let Some(fc) = &self.default_filter_chain {
            j["default_filter_chain"] = fc.to_envoy_json();
        }
        if let Some(p) = &self.stat_prefix {
            j["stat_prefix"] = json!(p);
        }
        if !self.listener_filters.is_empty() {
            j["listener_filters"] = json!(self
                .listener_filters
                .iter()
                .map(|f| match f {
                    ListenerFilter::OriginalDst => json!({
                        "name": "envoy.filters.listener.original_dst",
                        "typed_config": {"@type": ORIGINAL_DST_FILTER_TYPE},
                    }),
                    ListenerFilter::HttpInspector => json!({
                        "name": HTTP_INSPECTOR_NAME,
                        "typed_config": {"@type": type_urls::HTTP_INSPECTOR},
                    }),
                    ListenerFilter::TlsInspector => json!({
                        "name": TLS_INSPECTOR_NAME,
                        "typed_config": {"@type": type_urls::TLS_INSPECTOR},
                    }),
                })
                .collect::<Vec<_>>());
        }
        j["listener_filters_timeout"] = json!(duration_json(
            self.listener_filters_timeout.unwrap_or_default()
        ));
        if self.continue_on_listener_filters_timeout {
            j["continue_on_listener_filters_timeout"] = json!(true);
        }
        if self.use_original_dst {
            j["use_original_dst"] = json!(true);
        }
        if !self.bind_to_port {
            j["bind_to_port"] = json!(false);
        }
        j
    }

    /// Every chain, the default last.
    pub fn all_chains(&self) -> impl Iterator<Item = &FilterChain> {
        self.filter_chains
            .iter()
            .chain(self.default_filter_chain.as_ref())
    }
}

mod chain_match;
mod filters;

pub(super) use chain_match::read_cidr;
use chain_match::*;
#[cfg(test)]
pub(super) use chain_match::{CIDR_RANGE, FILTER_CHAIN_MATCH};
use filters::*;

#[cfg(test)]
mod tests;
