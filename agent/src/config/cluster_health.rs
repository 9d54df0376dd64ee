//! Health of a cluster's hosts in the configuration: active health checks
//! (`health_checks`) and outlier detection (`outlier_detection`), their field tables and
//! readers, shared by the bootstrap and CDS; and the bootstrap's `cluster_manager`.

use super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::*;

#[allow(unused_imports)]
use Field::{Ignored as I, Rejected as R, Supported as S};

pub(super) const HEALTH_CHECK: FieldTable = &[
    ("timeout", S),
    ("interval", S),
    ("initial_jitter", S),
    ("interval_jitter", S),
    ("interval_jitter_percent", S),
    ("unhealthy_threshold", S),
    ("healthy_threshold", S),
    ("alt_port", R("checking another port is not supported")),
    ("reuse_connection", S),
    ("no_traffic_interval", S),
    ("no_traffic_healthy_interval", S),
    ("unhealthy_interval", S),
    ("unhealthy_edge_interval", S),
    ("healthy_edge_interval", S),
    ("event_log_path", S),
    ("event_logger", I("events are written to event_log_path")),
    ("always_log_health_check_failures", S),
    (
        "tls_options",
        I("checks use the cluster's transport socket and its ALPN"),
    ),
    (
        "transport_socket_match_criteria",
        R("health checks use each host's own transport socket"),
    ),
    ("http_health_check", S),
    ("tcp_health_check", S),
    ("grpc_health_check", S),
    (
        "custom_health_check",
        R("custom health checkers are not supported"),
    ),
    ("event_service", I("events are written to event_log_path")),
];

pub(super) const HTTP_HEALTH_CHECK: FieldTable = &[
    ("host", S),
    ("path", S),
    ("request_headers_to_add", S),
    ("expected_statuses", S),
    ("codec_client_type", S),
    (
        "send",
        R("request bodies are not supported; checks are GET"),
    ),
    ("receive", R("response body matching is not supported")),
    ("response_buffer_size", I("the body is not read")),
    (
        "request_headers_to_remove",
        R("header removal is not supported"),
    ),
    (
        "retriable_statuses",
        R("retriable statuses are not supported"),
    ),
    (
        "service_name_matcher",
        R("service name matching is not supported"),
    ),
    ("method", S),
];

pub(super) const GRPC_HEALTH_CHECK: FieldTable = &[
    ("service_name", S),
    ("authority", S),
    ("initial_metadata", S),
];

pub(super) const TCP_HEALTH_CHECK: FieldTable = &[("send", S), ("receive", S)];

pub(super) const HC_PAYLOAD: FieldTable = &[
    ("text", S),
    (
        "binary",
        R("binary payloads are not supported; use text (hex)"),
    ),
];

pub(super) const HC_HEADER_OPTION: FieldTable = &[
    ("header", S),
    ("append_action", I("headers are added")),
    ("append", I("headers are added")),
    ("keep_empty_value", I("headers are added")),
];

pub(super) const HC_HEADER: FieldTable = &[("key", S), ("value", S)];

pub(super) const INT64_RANGE: FieldTable = &[("start", S), ("end", S)];

fn hex_payload(p: &Obj, d: &mut Diagnostics) -> Option<Vec<u8>> {
    let t = p.string("text", d)?;
    let t: String = t.chars().filter(|c| !c.is_whitespace()).collect();
    if t.len() % 2 != 0 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        d.error(p.at("text"), "expected hexadecimal bytes");
        return None;
    }
    Some(
        (0..t.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&t[i..i + 2], 16).ok())
            .collect(),
    )
}

/// Header options (`request_headers_to_add`, `initial_metadata`): names and values that make
/// a valid HTTP header.
fn hc_headers(o: &Obj, key: &str, d: &mut Diagnostics) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    for (path, v) in o.list(key, d) {
        let Some(opt) = Obj::new(v, &path, HC_HEADER_OPTION, d) else {
            continue;
        };
        let Some(hv) = opt.object("header", HC_HEADER, d) else {
            continue;
        };
        let Some(k) = hv.string("key", d) else {
            continue;
        };
        let v = hv.string("value", d).unwrap_or_default();
        if ::http::HeaderName::from_bytes(k.as_bytes()).is_err() || k.starts_with(':') {
            d.error(hv.at("key"), format!("{k:?} is not a valid header name"));
        } else if ::http::HeaderValue::from_str(&v).is_err() {
            d.error(hv.at("value"), "not a valid header value");
        } else {
            headers.push((k.to_ascii_lowercase(), v));
        }
    }
    headers
}

pub(super) fn read_health_check(h: &Obj, d: &mut Diagnostics) -> Option<HealthCheck> {
    let timeout = h.duration("timeout", d);
    let interval = h.duration("interval", d);
    for (k, v) in [("timeout", &timeout), ("interval", &interval)] {
        match v {
            None if h.get(k).is_none() => d.error(h.at(k), "missing required field"),
            Some(t) if t.is_zero() => d.error(h.at(k), "must be greater than 0s"),
            _ => {}
        }
    }
    let threshold = |k: &str, d: &mut Diagnostics| {
        if h.get(k).is_none() {
            d.error(h.at(k), "missing required field");
        }
        h.uint(k, 1, 1_000_000, d).map(|v| v as u32)
    };
    let unhealthy_threshold = threshold("unhealthy_threshold", d);
    let healthy_threshold = threshold("healthy_threshold", d);
    let kind = if let Some(t) = h.object("tcp_health_check", TCP_HEALTH_CHECK, d) {
        let send = t
            .object("send", HC_PAYLOAD, d)
            .and_then(|p| hex_payload(&p, d));
        let mut receive = Vec::new();
        for (path, v) in t.list("receive", d) {
            if let Some(b) = Obj::new(v, &path, HC_PAYLOAD, d).and_then(|p| hex_payload(&p, d)) {
                receive.push(b);
            }
        }
        Some(HealthCheckKind::Tcp { send, receive })
    } else if let Some(x) = h.object("http_health_check", HTTP_HEALTH_CHECK, d) {
        let http2 = x.enumeration(
            "codec_client_type",
            &["HTTP1", "HTTP2"],
            &[("HTTP3", "HTTP/3 is not supported")],
            d,
        ) == Some("HTTP2".to_string());
        x.enumeration("method", &["GET", "METHOD_UNSPECIFIED"], &[], d);
        let path = x.string("path", d);
        match &path {
            None => d.error(x.at("path"), "missing required field"),
            Some(p) if !p.starts_with('/') => d.error(x.at("path"), "must start with /"),
            _ => {}
        }
        let mut expected: Vec<(u16, u16)> = Vec::new();
        for (path, v) in x.list("expected_statuses", d) {
            let Some(r) = Obj::new(v, &path, INT64_RANGE, d) else {
                continue;
            };
            let (lo, hi) = (r.uint("start", 100, 599, d), r.uint("end", 101, 600, d));
            match (lo, hi) {
                (Some(lo), Some(hi)) if lo < hi => expected.push((lo as u16, hi as u16)),
                (Some(_), Some(_)) => d.error(path, "start must be below end"),
                _ => {}
            }
        }
        if expected.is_empty() {
            expected.push((200, 201));
        }
        Some(HealthCheckKind::Http {
            host: x.string("host", d).filter(|s| !s.is_empty()),
            path: path.unwrap_or_default(),
            expected,
            headers: hc_headers(&x, "request_headers_to_add", d),
            http2,
        })
    } else if let Some(g) = h.object("grpc_health_check", GRPC_HEALTH_CHECK, d) {
        Some(HealthCheckKind::Grpc {
            service_name: g.string("service_name", d).unwrap_or_default(),
            authority: g.string("authority", d).filter(|s| !s.is_empty()),
            metadata: hc_headers(&g, "initial_metadata", d),
        })
    } else {
        d.error(
            h.path.clone(),
            "one of tcp_health_check, http_health_check or grpc_health_check is required",
        );
        None
    };
    let positive = |k: &str, d: &mut Diagnostics| {
        let v = h.duration(k, d);
        if v.is_some_and(|v| v.is_zero()) {
            d.error(h.at(k), "must be greater than 0s");
            return None;
        }
        v
    };
    let no_traffic_interval = positive("no_traffic_interval", d).unwrap_or(Duration::from_secs(60));
    let no_traffic_healthy_interval =
        positive("no_traffic_healthy_interval", d).unwrap_or(no_traffic_interval);
    let every = interval.unwrap_or(Duration::from_secs(1));
    let unhealthy_interval = positive("unhealthy_interval", d).unwrap_or(every);
    let unhealthy_edge_interval =
        positive("unhealthy_edge_interval", d).unwrap_or(unhealthy_interval);
    let healthy_edge_interval = positive("healthy_edge_interval", d).unwrap_or(every);
    let event_log_path = h
        .string("event_log_path", d)
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from);
    Some(HealthCheck {
        reuse_connection: h.boolean("reuse_connection", d).unwrap_or(true),
        no_traffic_interval,
        no_traffic_healthy_interval,
        unhealthy_interval,
        unhealthy_edge_interval,
        healthy_edge_interval,
        event_log_path,
        timeout: timeout?,
        interval: interval?,
        initial_jitter: h.duration("initial_jitter", d).unwrap_or_default(),
        interval_jitter: h.duration("interval_jitter", d).unwrap_or_default(),
        interval_jitter_percent: h.uint("interval_jitter_percent", 0, 100, d).unwrap_or(0) as u32,
        unhealthy_threshold: unhealthy_threshold?,
        healthy_threshold: healthy_threshold?,
        always_log_health_check_failures: h
            .boolean("always_log_health_check_failures", d)
            .unwrap_or(false),
        kind: kind?,
    })
}

pub(super) const OUTLIER_DETECTION: FieldTable = &[
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
    ("enforcing_success_rate", S),
    ("success_rate_minimum_hosts", S),
    ("success_rate_request_volume", S),
    ("success_rate_stdev_factor", S),
    ("enforcing_local_origin_success_rate", S),
    ("failure_percentage_threshold", S),
    ("enforcing_failure_percentage", S),
    ("enforcing_failure_percentage_local_origin", S),
    ("failure_percentage_minimum_hosts", S),
    ("failure_percentage_request_volume", S),
    ("max_ejection_time_jitter", S),
    ("successful_active_health_check_uneject_host", S),
    (
        "monitors",
        R("outlier detection monitor extensions are not supported; use the built-in detectors"),
    ),
    (
        "always_eject_one_host",
        I("always on: one host may be ejected whatever max_ejection_percent says"),
    ),
    // Only `false` (the default) is accepted: see read_outlier_detection.
    ("detect_degraded_hosts", S),
];

pub(super) fn read_outlier_detection(o: &Obj, d: &mut Diagnostics) -> OutlierDetection {
    if o.boolean("detect_degraded_hosts", d) == Some(true) {
        d.error(
            o.at("detect_degraded_hosts"),
            "degraded hosts (x-envoy-degraded) are not detected",
        );
    }
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
        enforcing_consecutive_gateway_failure: pct("enforcing_consecutive_gateway_failure", 0, d),
        split_external_local_origin_errors: o
            .boolean("split_external_local_origin_errors", d)
            .unwrap_or(false),
        consecutive_local_origin_failure: n("consecutive_local_origin_failure", 5, d),
        enforcing_consecutive_local_origin_failure: pct(
            "enforcing_consecutive_local_origin_failure",
            100,
            d,
        ),
        successful_active_health_check_uneject_host: o
            .boolean("successful_active_health_check_uneject_host", d)
            .unwrap_or(true),
        success_rate_minimum_hosts: n("success_rate_minimum_hosts", 5, d),
        success_rate_request_volume: n("success_rate_request_volume", 100, d),
        success_rate_stdev_factor: n("success_rate_stdev_factor", 1900, d),
        enforcing_success_rate: pct("enforcing_success_rate", 100, d),
        enforcing_local_origin_success_rate: pct("enforcing_local_origin_success_rate", 100, d),
        failure_percentage_threshold: pct("failure_percentage_threshold", 85, d),
        failure_percentage_minimum_hosts: n("failure_percentage_minimum_hosts", 5, d),
        failure_percentage_request_volume: n("failure_percentage_request_volume", 50, d),
        enforcing_failure_percentage: pct("enforcing_failure_percentage", 0, d),
        enforcing_failure_percentage_local_origin: pct(
            "enforcing_failure_percentage_local_origin",
            0,
            d,
        ),
        max_ejection_time_jitter: o
            .duration("max_ejection_time_jitter", d)
            .unwrap_or_default(),
    }
}

pub(super) const CLUSTER_MANAGER: FieldTable = &[
    ("local_cluster_name", S),
    ("outlier_detection", S),
    (
        "upstream_bind_config",
        R("binding upstream source addresses is not supported"),
    ),
    ("load_stats_config", I("load reporting is not supported")),
    (
        "enable_deferred_cluster_creation",
        I("clusters are created when configured"),
    ),
];

pub(super) const CM_OUTLIER_DETECTION: FieldTable = &[
    ("event_log_path", S),
    ("event_service", I("events are written to event_log_path")),
];

pub(super) fn read_cluster_manager(o: &Obj, d: &mut Diagnostics) -> ClusterManagerConfig {
    let outlier_log_path = o
        .object("outlier_detection", CM_OUTLIER_DETECTION, d)
        .and_then(|od| {
            let p = od.string("event_log_path", d)?;
            if p.is_empty() {
                d.error(od.at("event_log_path"), "must not be empty");
                return None;
            }
            Some(std::path::PathBuf::from(p))
        });
    let local_cluster_name = o.string("local_cluster_name", d).filter(|n| !n.is_empty());
    ClusterManagerConfig {
        outlier_log_path,
        local_cluster_name,
    }
}
