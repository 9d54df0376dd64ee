//! xDS front door: Envoy v3 protos (Listener, Cluster, ClusterLoadAssignment) translated into
//! the same model as the bootstrap, through the same readers and field tables.
//!
//! Each proto is rendered as the JSON Envoy would print for it — supported fields with their
//! values, and every other field that is set as a presence marker — and then read exactly as
//! a bootstrap resource is, so the supported/ignored/rejected decisions and the error paths are
//! one and the same for both front doors.

// Control planes still send deprecated fields (dns_refresh_rate, http_protocol_options, …):
// they must be read and judged like any other.
#![allow(deprecated)]

mod cluster;
mod endpoint;
mod http;
mod listener;
pub mod reflect;
#[cfg(test)]
mod tests;

pub use cluster::cluster_from_proto;
pub use endpoint::endpoints_from_proto;
pub use listener::listener_from_proto;
#[allow(unused_imports)]
use {cluster::*, endpoint::*, listener::*};

use super::cluster::read_cluster;
use super::endpoint::{read_lb_endpoint, read_locality_endpoints};
use super::listener::read_listener;
use super::type_urls;
use super::walk::{Diag, Diagnostics};
use super::{
    Cluster, DiscoveryType, Endpoint, HealthStatus, Host, Listener, Locality, LocalityEndpoints,
};
use envoy_types::pb::envoy::config::cluster::v3 as pbc;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as pbe;
use envoy_types::pb::envoy::config::listener::v3 as pbl;
use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3 as connection_limit;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3 as local_ratelimit;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;
use serde_json::{json, Map, Value as Json};

pub const CLUSTER_TYPE: &str = type_urls::CLUSTER;
pub const LISTENER_TYPE: &str = type_urls::LISTENER;
pub const ENDPOINT_TYPE: &str = type_urls::ENDPOINT;
const TCP_PROXY_TYPE: &str = type_urls::TCP_PROXY;
const HCM_TYPE: &str = type_urls::HTTP_CONNECTION_MANAGER;
const CONNECTION_LIMIT_TYPE: &str = type_urls::CONNECTION_LIMIT;
const LOCAL_RATELIMIT_TYPE: &str = type_urls::LOCAL_RATELIMIT;

/// A translated resource, or why not (errors, with paths inside the resource).
pub type Translated<T> = Result<(T, Vec<Diag>), Vec<Diag>>;

fn finish<T>(
    v: Json,
    read: impl FnOnce(&super::yaml::Value, &mut Diagnostics) -> Option<T>,
) -> Translated<T> {
    let y = super::yaml::Value::from_json(&v);
    let mut d = Diagnostics::default();
    match read(&y, &mut d) {
        Some(t) if d.errors.is_empty() => Ok((t, d.warnings)),
        _ => {
            if d.errors.is_empty() {
                d.error("", "invalid resource");
            }
            Err(d.errors)
        }
    }
}

fn duration(d: &PbDuration) -> String {
    if d.nanos == 0 {
        format!("{}s", d.seconds)
    } else {
        let s = format!("{:.9}", d.seconds as f64 + d.nanos as f64 / 1e9);
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// Adds `key: {}` when a field Plumb does not read is set, so the field table decides.
fn mark(m: &mut Map<String, Json>, key: &str, set: bool) {
    if set {
        m.insert(key.into(), json!({}));
    }
}

fn address(a: &core::Address) -> Json {
    match &a.address {
        Some(core::address::Address::SocketAddress(sa)) => {
            let mut m = Map::new();
            m.insert("address".into(), json!(sa.address));
            match &sa.port_specifier {
                Some(core::socket_address::PortSpecifier::PortValue(p)) => {
                    m.insert("port_value".into(), json!(p));
                }
                Some(core::socket_address::PortSpecifier::NamedPort(n)) => {
                    m.insert("named_port".into(), json!(n));
                }
                None => {}
            }
            if sa.protocol != 0 {
                m.insert(
                    "protocol".into(),
                    json!(core::socket_address::Protocol::try_from(sa.protocol)
                        .map(|p| p.as_str_name())
                        .unwrap_or("UNKNOWN")),
                );
            }
            if sa.ipv4_compat {
                m.insert("ipv4_compat".into(), json!(true));
            }
            mark(&mut m, "resolver_name", !sa.resolver_name.is_empty());
            mark(
                &mut m,
                "network_namespace_filepath",
                !sa.network_namespace_filepath.is_empty(),
            );
            json!({ "socket_address": m })
        }
        Some(core::address::Address::Pipe(_)) => json!({"pipe": {}}),
        Some(core::address::Address::EnvoyInternalAddress(_)) => {
            json!({"envoy_internal_address": {}})
        }
        None => json!({}),
    }
}

/// RDS: a RouteConfiguration, printed by reflection and read by the route readers.
pub fn route_from_proto(any: &Any) -> Translated<super::http::RouteConfiguration> {
    let j = reflect::decode_json("envoy.config.route.v3.RouteConfiguration", &any.value).map_err(
        |e| {
            vec![Diag {
                path: String::new(),
                message: format!("undecodable: {e}"),
            }]
        },
    )?;
    finish(j, super::http::read_route_configuration)
}

/// SDS: a Secret, printed by reflection and read by the bootstrap's secret reader (the
/// certificate is loaded and checked against its key: a mismatch is an error with its path).
pub fn secret_from_proto(any: &Any) -> Translated<super::tls::Secret> {
    let j = reflect::decode_json(
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        &any.value,
    )
    .map_err(|e| {
        vec![Diag {
            path: String::new(),
            message: format!("undecodable: {e}"),
        }]
    })?;
    finish(j, |y, d| super::tls::read_secret(y, "", d))
}

/// Renders diagnostics as one line for a NACK's error_detail.
pub fn describe(what: &str, errors: &[Diag]) -> String {
    let parts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    format!("{what}: {}", parts.join("; "))
}

/// A nested message rendered by reflection (as Envoy prints it), so the bootstrap's reader
/// judges every field of it; a message that does not render becomes a presence marker.
pub(super) fn by_reflection(full_name: &str, m: &impl prost::Message) -> Json {
    reflect::decode_json(full_name, &m.encode_to_vec()).unwrap_or_else(|_| json!({}))
}
