//! How a filter chain is matched: `filter_chain_match` read and checked (overlapping
//! chains refused, bounded in combinations), and printed back as Envoy's JSON.

use super::super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::super::*;
use crate::config::yaml::Value;

use super::MAX_FILTER_CHAINS;
use Field::{Rejected as R, Supported as S};

pub(in crate::config) const FILTER_CHAIN_MATCH: FieldTable = &[
    ("destination_port", S),
    ("prefix_ranges", S),
    ("server_names", S),
    ("transport_protocol", S),
    ("application_protocols", S),
    ("direct_source_prefix_ranges", S),
    ("source_type", S),
    ("source_prefix_ranges", S),
    ("source_ports", S),
    (
        "address_suffix",
        R("not implemented (Envoy does not implement it either)"),
    ),
    (
        "suffix_len",
        R("not implemented (Envoy does not implement it either)"),
    ),
];

pub(in crate::config) const CIDR_RANGE: FieldTable = &[("address_prefix", S), ("prefix_len", S)];

const MAX_MATCH_COMBINATIONS: usize = 200_000;

fn scalar_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn read_cidrs(m: &Obj, key: &str, d: &mut Diagnostics) -> Vec<Cidr> {
    m.list(key, d)
        .into_iter()
        .filter_map(|(p, v)| read_cidr(v, &p, d))
        .collect()
}

/// One `CidrRange`.
pub(in crate::config) fn read_cidr(v: &Value, path: &str, d: &mut Diagnostics) -> Option<Cidr> {
    let c = Obj::new(v, path, CIDR_RANGE, d)?;
    let prefix = c.required_string("address_prefix", d)?;
    let Ok(ip) = prefix.trim().parse::<IpAddr>() else {
        d.error(
            c.at("address_prefix"),
            format!("\"{prefix}\" is not an IP address"),
        );
        return None;
    };
    let ip = ip.to_canonical();
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match c.uint("prefix_len", 0, max, d) {
        Some(l) => l as u8,
        None if c.get("prefix_len").is_some() => return None,
        // Envoy: an absent prefix_len is 0.
        None => 0,
    };
    Some(Cidr::new(ip, len))
}

pub(super) fn read_match(m: &Obj, d: &mut Diagnostics) -> FilterChainMatch {
    let destination_port = m.uint("destination_port", 1, 65535, d).map(|p| p as u16);
    let mut server_names = Vec::new();
    for (p, v) in m.list("server_names", d) {
        let Some(name) = v.as_str() else {
            d.error(p, "expected a string");
            continue;
        };
        let name = name.to_ascii_lowercase();
        if name.contains('*') && (!name.starts_with("*.") || name[1..].contains('*')) {
            d.error(
                p,
                format!("\"{name}\": partial wildcards are not supported in server_names (only a leading \"*.\")"),
            );
            continue;
        }
        if name.is_empty() {
            d.error(p, "must not be empty");
            continue;
        }
        server_names.push(name);
    }
    let mut application_protocols = Vec::new();
    for (p, v) in m.list("application_protocols", d) {
        match v.as_str() {
            Some(s) if !s.is_empty() => application_protocols.push(s.to_string()),
            _ => d.error(p, "expected a non-empty string"),
        }
    }
    let mut source_ports = Vec::new();
    for (p, v) in m.list("source_ports", d) {
        match scalar_u64(v) {
            Some(n) if (1..=65535).contains(&n) => source_ports.push(n as u16),
            _ => d.error(p, "expected a port in [1, 65535]"),
        }
    }
    let source_type = match m
        .enumeration(
            "source_type",
            &["ANY", "SAME_IP_OR_LOOPBACK", "EXTERNAL"],
            &[],
            d,
        )
        .as_deref()
    {
        Some("SAME_IP_OR_LOOPBACK") => SourceType::SameIpOrLoopback,
        Some("EXTERNAL") => SourceType::External,
        _ => SourceType::Any,
    };
    FilterChainMatch {
        destination_port,
        prefix_ranges: read_cidrs(m, "prefix_ranges", d),
        server_names,
        transport_protocol: m.string("transport_protocol", d).filter(|s| !s.is_empty()),
        application_protocols,
        direct_source_prefix_ranges: read_cidrs(m, "direct_source_prefix_ranges", d),
        source_type,
        source_prefix_ranges: read_cidrs(m, "source_prefix_ranges", d),
        source_ports,
    }
}

/// Envoy refuses a listener whose chains could both match one connection: an identical match,
/// or the same leaf (port, prefix, name, protocol, source…) reached by two chains.
pub(super) fn validate_chain_matches(chains: &[(String, FilterChain)], d: &mut Diagnostics) {
    if chains.len() > MAX_FILTER_CHAINS {
        if let Some((p, _)) = chains.get(MAX_FILTER_CHAINS) {
            d.error(
                p,
                format!("more than {MAX_FILTER_CHAINS} filter chains in one listener"),
            );
        }
        return;
    }
    let mut identical: std::collections::HashMap<&FilterChainMatch, &str> = Default::default();
    let mut leaves: std::collections::HashMap<Leaf, &str> = Default::default();
    let mut budget = MAX_MATCH_COMBINATIONS;
    for (path, c) in chains {
        let m = &c.filter_chain_match;
        let n = leaf_count(m);
        if n > budget {
            d.error(
                format!("{path}.filter_chain_match"),
                format!("the listener's filter chain matches expand to more than {MAX_MATCH_COMBINATIONS} combinations of ports, prefixes, names, protocols and sources; split it into several listeners"),
            );
            return;
        }
        budget -= n;
        if let Some(first) = identical.get(m) {
            d.error(
                format!("{path}.filter_chain_match"),
                format!("the same matching rules as {first} (filter chains must differ in what they match)"),
            );
            continue;
        }
        identical.insert(m, path);
        let mut overlap = None;
        for_each_leaf(m, |leaf| {
            if overlap.is_none() {
                if let Some(first) = leaves.get(&leaf) {
                    overlap = Some(first.to_string());
                } else {
                    leaves.insert(leaf, path);
                }
            }
        });
        if let Some(first) = overlap {
            d.error(
                format!("{path}.filter_chain_match"),
                format!("overlaps the matching rules of {first}: one connection could match both"),
            );
        }
    }
}

type Leaf = (
    Option<u16>,
    Option<Cidr>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Cidr>,
    SourceType,
    Option<Cidr>,
    Option<u16>,
);

fn opts<T: Clone>(v: &[T]) -> Vec<Option<T>> {
    if v.is_empty() {
        vec![None]
    } else {
        v.iter().cloned().map(Some).collect()
    }
}

/// IP ranges as leaves. As in Envoy, no ranges means 0.0.0.0/0 and ::/0, so a chain without
/// ranges overlaps one with an explicit /0.
fn cidr_opts(v: &[Cidr]) -> Vec<Option<Cidr>> {
    if v.is_empty() {
        let any = |ip: IpAddr| Some(Cidr::new(ip, 0));
        return vec![
            any(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            any(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
        ];
    }
    v.iter().copied().map(Some).collect()
}

/// How many leaves `for_each_leaf` visits for `m` (saturating).
fn leaf_count(m: &FilterChainMatch) -> usize {
    let cidrs = |v: &[Cidr]| if v.is_empty() { 2 } else { v.len() };
    [
        cidrs(&m.prefix_ranges),
        m.server_names.len().max(1),
        m.application_protocols.len().max(1),
        cidrs(&m.direct_source_prefix_ranges),
        cidrs(&m.source_prefix_ranges),
        m.source_ports.len().max(1),
    ]
    .iter()
    .fold(1usize, |acc, n| acc.saturating_mul(*n))
}

/// Calls `f` with each combination of single values a match stands for (an empty list is one
/// "any" value). The caller bounds the count with `leaf_count`.
fn for_each_leaf(m: &FilterChainMatch, mut f: impl FnMut(Leaf)) {
    let (dst, names, alpn) = (
        cidr_opts(&m.prefix_ranges),
        opts(&m.server_names),
        opts(&m.application_protocols),
    );
    let (direct, src, ports) = (
        cidr_opts(&m.direct_source_prefix_ranges),
        cidr_opts(&m.source_prefix_ranges),
        opts(&m.source_ports),
    );
    for a in &dst {
        for b in &names {
            for c in &alpn {
                for e in &direct {
                    for g in &src {
                        for h in &ports {
                            f((
                                m.destination_port,
                                *a,
                                b.clone(),
                                m.transport_protocol.clone(),
                                c.clone(),
                                *e,
                                m.source_type,
                                *g,
                                *h,
                            ));
                        }
                    }
                }
            }
        }
    }
}

fn cidrs_json(v: &[Cidr]) -> Json {
    json!(v
        .iter()
        .map(|c| json!({"address_prefix": c.net.to_string(), "prefix_len": c.len}))
        .collect::<Vec<_>>())
}

impl FilterChainMatch {
    /// Envoy v3 JSON of the set fields.
    pub fn to_envoy_json(&self) -> Json {
        let mut j = serde_json::Map::new();
        if let Some(p) = self.destination_port {
            j.insert("destination_port".into(), json!(p));
        }
        if !self.prefix_ranges.is_empty() {
            j.insert("prefix_ranges".into(), cidrs_json(&self.prefix_ranges));
        }
        if !self.server_names.is_empty() {
            j.insert("server_names".into(), json!(self.server_names));
        }
        if let Some(t) = &self.transport_protocol {
            j.insert("transport_protocol".into(), json!(t));
        }
        if !self.application_protocols.is_empty() {
            j.insert(
                "application_protocols".into(),
                json!(self.application_protocols),
            );
        }
        if !self.direct_source_prefix_ranges.is_empty() {
            j.insert(
                "direct_source_prefix_ranges".into(),
                cidrs_json(&self.direct_source_prefix_ranges),
            );
        }
        match self.source_type {
            SourceType::Any => {}
            SourceType::SameIpOrLoopback => {
                j.insert("source_type".into(), json!("SAME_IP_OR_LOOPBACK"));
            }
            SourceType::External => {
                j.insert("source_type".into(), json!("EXTERNAL"));
            }
        }
        if !self.source_prefix_ranges.is_empty() {
            j.insert(
                "source_prefix_ranges".into(),
                cidrs_json(&self.source_prefix_ranges),
            );
        }
        if !self.source_ports.is_empty() {
            j.insert("source_ports".into(), json!(self.source_ports));
        }
        Json::Object(j)
    }
}
