//! Endpoints (`load_assignment`, EDS `ClusterLoadAssignment`): field tables and readers shared
//! by the bootstrap and xDS (EDS) front doors.

use super::bootstrap::*;
use super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::yaml::Value;
use super::*;
#[allow(unused_imports)]
use super::{cluster::*, extensions::*};

#[allow(unused_imports)]
use Field::{Ignored as I, Rejected as R, Supported as S};

pub(super) const LOAD_ASSIGNMENT: FieldTable = &[
    ("cluster_name", S),
    ("endpoints", S),
    (
        "policy",
        I("drop_overloads and a custom overprovisioning_factor are not applied (Envoy's default factor 1.4 is)"),
    ),
    ("named_endpoints", R("named endpoints are not supported")),
];

pub(super) const LOCALITY_LB_ENDPOINTS: FieldTable = &[
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

pub(super) const LB_ENDPOINT: FieldTable = &[
    ("endpoint", S),
    ("health_status", S),
    ("load_balancing_weight", S),
    // Read for `filter_metadata."envoy.lb".canary`; other keys are informational.
    ("metadata", S),
    ("endpoint_name", R("named endpoints are not supported")),
];

pub(super) const ENDPOINT: FieldTable = &[
    ("address", S),
    ("hostname", S),
    ("health_check_config", I("no health checks yet")),
    (
        "additional_addresses",
        I("only the primary address is used"),
    ),
];

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
    // Envoy's canary flag: `metadata.filter_metadata."envoy.lb".canary`.
    let canary = lb
        .get("metadata")
        .and_then(|m| m.get("filter_metadata"))
        .and_then(|f| f.get("envoy.lb"))
        .and_then(|e| e.get("canary"))
        .and_then(|c| c.as_bool())
        .unwrap_or(false);
    // `metadata.filter_metadata."envoy.transport_socket_match"`: what the cluster's
    // transport_socket_matches look at (scalar values, as strings).
    let mut socket_match: Vec<(String, String)> = Vec::new();
    if let Some(Value::Mapping(m)) = lb
        .get("metadata")
        .and_then(|m| m.get("filter_metadata"))
        .and_then(|f| f.get("envoy.transport_socket_match"))
    {
        for (k, v) in m.iter() {
            let (Value::String(k), Some(v)) = (k, scalar_string(v)) else {
                continue;
            };
            if socket_match.len() < 64 {
                socket_match.push((k.clone(), v));
            }
        }
    }
    Some(Endpoint {
        host,
        port,
        hostname,
        weight,
        health_status,
        canary,
        socket_match,
    })
}

/// A scalar metadata value as a string (what a transport socket match compares).
pub(super) fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
