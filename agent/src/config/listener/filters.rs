//! Network filters of a chain: which one a `filters[]` entry names, and the readers of
//! tcp_proxy, connection_limit and local_ratelimit (and their config dump form).

use super::*;
use crate::config::rbac;

/// Which network filter a `filters[]` entry names, by `@type` (else by name).
pub(super) fn filter_kind(f: &Obj) -> Option<&'static str> {
    let type_url = f
        .get("typed_config")
        .and_then(|tc| tc.get("@type"))
        .and_then(|t| t.as_str());
    let name = f.get("name").and_then(|n| n.as_str()).unwrap_or_default();
    match type_url {
        Some(TCP_PROXY_TYPE) => Some("tcp_proxy"),
        Some(HCM_TYPE) => Some("http_connection_manager"),
        Some(CONNECTION_LIMIT_TYPE) => Some("connection_limit"),
        Some(LOCAL_RATELIMIT_TYPE) => Some("local_ratelimit"),
        Some(rbac::NETWORK_RBAC_TYPE) => Some("rbac"),
        Some(_) => None,
        None if TCP_PROXY_NAMES.contains(&name) => Some("tcp_proxy"),
        None if HCM_NAMES.contains(&name) => Some("http_connection_manager"),
        None if name == CONNECTION_LIMIT_NAME => Some("connection_limit"),
        None if name == LOCAL_RATELIMIT_NAME => Some("local_ratelimit"),
        None if name == rbac::NETWORK_RBAC_NAME => Some("rbac"),
        None => None,
    }
}

pub(super) fn read_filter(v: &Value, path: &str, d: &mut Diagnostics) -> Option<NetworkFilter> {
    let f = Obj::new(v, path, FILTER, d)?;
    let name = f.required_string("name", d);
    let Some(kind) = filter_kind(&f) else {
        let what = f
            .get("typed_config")
            .and_then(|tc| tc.get("@type"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .or(name)
            .unwrap_or_default();
        d.error(
            path,
            format!("unsupported network filter \"{what}\" (supported: envoy.filters.network.tcp_proxy, envoy.filters.network.http_connection_manager, envoy.filters.network.connection_limit, envoy.filters.network.local_ratelimit, envoy.filters.network.rbac)"),
        );
        return None;
    };
    if f.get("typed_config").is_none() {
        d.error(f.at("typed_config"), "missing required field");
        return None;
    }
    let (table, type_url) = match kind {
        "tcp_proxy" => (TCP_PROXY, TCP_PROXY_TYPE),
        "http_connection_manager" => (http::HCM_TABLE, HCM_TYPE),
        "connection_limit" => (CONNECTION_LIMIT, CONNECTION_LIMIT_TYPE),
        "rbac" => (rbac::NETWORK_RBAC, rbac::NETWORK_RBAC_TYPE),
        _ => (LOCAL_RATELIMIT, LOCAL_RATELIMIT_TYPE),
    };
    let tc = f.object("typed_config", table, d)?;
    if tc.get("@type").is_none() {
        d.error(
            tc.at("@type"),
            format!("missing required field (expected {type_url})"),
        );
    }
    match kind {
        "tcp_proxy" => read_tcp_proxy(&tc, d),
        "http_connection_manager" => {
            let mut hcm = http::read_hcm(&tc, d)?;
            hcm.source = f
                .get("typed_config")
                .map(|v| v.to_json())
                .unwrap_or_default();
            Some(NetworkFilter::HttpConnectionManager(Box::new(hcm)))
        }
        "connection_limit" => read_connection_limit(&tc, d),
        "rbac" => {
            let mut r = rbac::read_network_rbac(&tc, d)?;
            r.source = f
                .get("typed_config")
                .map(|v| v.to_json())
                .unwrap_or_default();
            Some(NetworkFilter::Rbac(Box::new(r)))
        }
        _ => read_local_ratelimit(&tc, d),
    }
}

pub(super) fn read_tcp_proxy(tc: &Obj, d: &mut Diagnostics) -> Option<NetworkFilter> {
    let stat_prefix = tc.required_name("stat_prefix", d);
    let cluster = if tc.get("cluster").is_none() {
        if tc.get("weighted_clusters").is_none() {
            d.error(tc.at("cluster"), "missing required field");
        }
        None
    } else {
        tc.required_name("cluster", d)
    };
    let idle_timeout = match tc.duration("idle_timeout", d) {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(Duration::from_secs(3600)),
    };
    let max_connect_attempts = tc.uint("max_connect_attempts", 1, 100, d).unwrap_or(1) as u32;
    let max_downstream_connection_duration = tc
        .duration("max_downstream_connection_duration", d)
        .filter(|d| !d.is_zero());
    // Envoy's type.v3.HashPolicy: source_ip (the only kind a TCP proxy can hash here).
    let mut hash_source_ip = false;
    for (path, v) in tc.list("hash_policy", d) {
        let Some(p) = Obj::new(v, &path, TCP_HASH_POLICY, d) else {
            continue;
        };
        if p.get("source_ip").is_some() {
            hash_source_ip = true;
        } else {
            d.error(path, "expected source_ip");
        }
    }
    Some(NetworkFilter::TcpProxy(TcpProxy {
        stat_prefix: stat_prefix?,
        cluster: cluster?,
        idle_timeout,
        max_connect_attempts,
        max_downstream_connection_duration,
        access_logs: crate::config::http::read_access_logs(tc, d),
        hash_source_ip,
    }))
}

pub(super) fn read_connection_limit(tc: &Obj, d: &mut Diagnostics) -> Option<NetworkFilter> {
    let stat_prefix = tc.required_name("stat_prefix", d);
    let max_connections = match tc.required("max_connections", d) {
        Some(_) => tc.uint("max_connections", 1, u64::MAX, d),
        None => None,
    };
    let delay = tc.duration("delay", d).filter(|d| !d.is_zero());
    Some(NetworkFilter::ConnectionLimit(ConnectionLimit {
        stat_prefix: stat_prefix?,
        max_connections: max_connections?,
        delay,
    }))
}

pub(super) fn read_local_ratelimit(tc: &Obj, d: &mut Diagnostics) -> Option<NetworkFilter> {
    let stat_prefix = tc.required_name("stat_prefix", d);
    tc.required("token_bucket", d)?;
    let tb = tc.object("token_bucket", TOKEN_BUCKET, d)?;
    let max_tokens = match tb.required("max_tokens", d) {
        Some(_) => tb.uint("max_tokens", 1, u32::MAX as u64, d),
        None => None,
    };
    let tokens_per_fill = tb
        .uint("tokens_per_fill", 1, u32::MAX as u64, d)
        .unwrap_or(1) as u32;
    let fill_interval = match tb.required("fill_interval", d) {
        Some(_) => match tb.duration("fill_interval", d) {
            Some(i) if i < Duration::from_millis(50) => {
                d.error(
                    tb.at("fill_interval"),
                    "must be at least 50ms (as in Envoy)",
                );
                None
            }
            other => other,
        },
        None => None,
    };
    Some(NetworkFilter::LocalRateLimit(LocalRateLimit {
        stat_prefix: stat_prefix?,
        max_tokens: max_tokens? as u32,
        tokens_per_fill,
        fill_interval: fill_interval?,
    }))
}

impl NetworkFilter {
    pub fn to_envoy_json(&self) -> Json {
        match self {
            NetworkFilter::TcpProxy(tp) => {
                let mut cfg = json!({
                    "@type": TCP_PROXY_TYPE,
                    "stat_prefix": tp.stat_prefix,
                    "cluster": tp.cluster,
                    "idle_timeout": duration_json(tp.idle_timeout.unwrap_or_default()),
                    "max_connect_attempts": tp.max_connect_attempts,
                });
                if let Some(d) = tp.max_downstream_connection_duration {
                    cfg["max_downstream_connection_duration"] = json!(duration_json(d));
                }
                json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": cfg})
            }
            NetworkFilter::HttpConnectionManager(hcm) => {
                let mut cfg = hcm.source.clone();
                if let Some(m) = cfg.as_object_mut() {
                    m.insert("@type".into(), json!(HCM_TYPE));
                }
                json!({"name": HCM_NAMES[0], "typed_config": cfg})
            }
            NetworkFilter::ConnectionLimit(cl) => {
                let mut cfg = json!({
                    "@type": CONNECTION_LIMIT_TYPE,
                    "stat_prefix": cl.stat_prefix,
                    "max_connections": cl.max_connections.to_string(),
                });
                if let Some(d) = cl.delay {
                    cfg["delay"] = json!(duration_json(d));
                }
                json!({"name": CONNECTION_LIMIT_NAME, "typed_config": cfg})
            }
            NetworkFilter::Rbac(r) => {
                let mut cfg = r.source.clone();
                if let Some(m) = cfg.as_object_mut() {
                    m.insert("@type".into(), json!(rbac::NETWORK_RBAC_TYPE));
                }
                json!({"name": rbac::NETWORK_RBAC_NAME, "typed_config": cfg})
            }
            NetworkFilter::LocalRateLimit(rl) => json!({
                "name": LOCAL_RATELIMIT_NAME,
                "typed_config": {
                    "@type": LOCAL_RATELIMIT_TYPE,
                    "stat_prefix": rl.stat_prefix,
                    "token_bucket": {
                        "max_tokens": rl.max_tokens,
                        "tokens_per_fill": rl.tokens_per_fill,
                        "fill_interval": duration_json(rl.fill_interval),
                    },
                },
            }),
        }
    }
}
