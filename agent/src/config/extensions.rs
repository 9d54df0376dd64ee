//! Plumb's own bootstrap extension (`plumb.redirect`: eBPF capture): field tables and reader.

use super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::*;
#[allow(unused_imports)]
use super::{cluster::*, endpoint::*};

#[allow(unused_imports)]
use Field::{Ignored as I, Rejected as R, Supported as S};

pub(super) const BOOTSTRAP_EXTENSION: FieldTable = &[("name", S), ("typed_config", S)];

/// `@type` of Plumb's own bootstrap extension configuring eBPF redirection.
pub const REDIRECT_TYPE: &str = type_urls::REDIRECT;

pub(super) const REDIRECT: FieldTable = &[
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

pub(super) const CAPTURE_RULE: FieldTable = &[("cidr", S), ("ports", S), ("exclude", S)];

pub(super) fn read_redirect(
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
