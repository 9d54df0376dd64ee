//! `/clusters`: every cluster's circuit breaker thresholds, outlier detection figures and
//! hosts with their counters and health, as text (Envoy's `name::host::key::value` lines)
//! or `?format=json`.

use super::{json_response, text, Body};
use crate::state::Shared;
use crate::upstream::health_flag;
use hyper::{Response, StatusCode};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

pub(super) fn clusters(query: &BTreeMap<String, String>, shared: &Shared) -> Response<Body> {
    let as_json = query.get("format").map(String::as_str) == Some("json");
    let mut out = String::new();
    let mut statuses = Vec::new();
    // Clusters of the bootstrap are static; the others came over CDS.
    let snap = shared.snapshot.load_full();
    let statics: std::collections::HashSet<&str> =
        snap.clusters.iter().map(|c| c.name.as_str()).collect();
    for c in shared.clusters.all() {
        let name = c.name();
        let via_api = !statics.contains(name);
        let hosts = c.hosts();
        if !as_json {
            // Envoy prints the circuit breakers' thresholds first.
            for (priority, key, max) in c.breakers.thresholds() {
                let _ = writeln!(out, "{name}::{priority}::{key}::{max}");
            }
            let _ = writeln!(out, "{name}::observability_name::{name}");
            let _ = writeln!(out, "{name}::added_via_api::{via_api}");
            // As Envoy: -1 until the success-rate detector has had enough hosts with
            // enough requests in an interval.
            if let Some(d) = &c.outlier {
                let [ext, local] = d.cluster_rates();
                for (prefix, (average, threshold)) in [("", ext), ("local_origin_", local)] {
                    let _ = writeln!(
                        out,
                        "{name}::outlier::{prefix}success_rate_average::{}",
                        average.unwrap_or(-1.0)
                    );
                    let _ = writeln!(
                        out,
                        "{name}::outlier::{prefix}success_rate_ejection_threshold::{}",
                        threshold.unwrap_or(-1.0)
                    );
                }
            }
        }
        let mut host_json = Vec::new();
        for h in hosts.all() {
            let addr = h.address;
            let cx_active = h.stats.cx_active.load(Ordering::Relaxed);
            let cx_total = h.stats.cx_total.load(Ordering::Relaxed);
            let cx_connect_fail = h.stats.cx_connect_fail.load(Ordering::Relaxed);
            let flags = h.health_flags_string();
            let rq = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed).to_string();
            let (rq_success, rq_error, rq_timeout, rq_total, rq_active) = (
                rq(&h.stats.rq_success),
                rq(&h.stats.rq_error),
                rq(&h.stats.rq_timeout),
                rq(&h.stats.rq_total),
                rq(&h.stats.rq_active),
            );
            let success_rate = h.outlier.success_rate();
            let local_rate = h.outlier.local_origin_success_rate();
            if as_json {
                let mut host = json!({
                    "address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}},
                    "stats": [
                        {"name": "cx_active", "type": "GAUGE", "value": cx_active.to_string()},
                        {"name": "cx_total", "value": cx_total.to_string()},
                        {"name": "cx_connect_fail", "value": cx_connect_fail.to_string()},
                        {"name": "rq_success", "value": rq_success},
                        {"name": "rq_error", "value": rq_error},
                        {"name": "rq_timeout", "value": rq_timeout},
                        {"name": "rq_total", "value": rq_total},
                        {"name": "rq_active", "type": "GAUGE", "value": rq_active},
                    ],
                    "health_status": {
                        "eds_health_status": h.eds_health_status().as_str(),
                        "failed_outlier_check": h.health_flags() & health_flag::FAILED_OUTLIER_CHECK != 0,
                        "failed_active_health_check": h.health_flags() & health_flag::FAILED_ACTIVE_HC != 0,
                    },
                    "weight": h.weight(),
                    "canary": h.canary(),
                    "priority": h.priority,
                    "hostname": h.hostname,
                    "locality": h.locality.to_json(),
                });
                if let Some(r) = success_rate {
                    host["success_rate"] = json!({ "value": r });
                }
                if let Some(r) = local_rate {
                    host["local_origin_success_rate"] = json!({ "value": r });
                }
                host_json.push(host);
            } else {
                let p = format!("{name}::{addr}");
                for (k, v) in [
                    ("cx_active", cx_active.to_string()),
                    ("cx_connect_fail", cx_connect_fail.to_string()),
                    ("cx_total", cx_total.to_string()),
                    ("rq_error", rq_error.clone()),
                    ("rq_success", rq_success.clone()),
                    ("rq_timeout", rq_timeout.clone()),
                    ("rq_total", rq_total.clone()),
                    ("rq_active", rq_active.clone()),
                    ("hostname", h.hostname.clone()),
                    ("health_flags", flags),
                    ("weight", h.weight().to_string()),
                    ("region", h.locality.region.clone()),
                    ("zone", h.locality.zone.clone()),
                    ("sub_zone", h.locality.sub_zone.clone()),
                    ("canary", h.canary().to_string()),
                    ("priority", h.priority.to_string()),
                ] {
                    let _ = writeln!(out, "{p}::{k}::{v}");
                }
                // Only when measured in the last interval, as Envoy.
                for (k, v) in [
                    ("success_rate", success_rate),
                    ("local_origin_success_rate", local_rate),
                ] {
                    if let Some(v) = v {
                        let _ = writeln!(out, "{p}::{k}::{v}");
                    }
                }
            }
        }
        if as_json {
            let thresholds: Vec<_> = ["default_priority", "high_priority"]
                .iter()
                .map(|p| {
                    let mut t =
                        json!({"priority": if *p == "high_priority" { "HIGH" } else { "DEFAULT" }});
                    for (priority, key, max) in c.breakers.thresholds() {
                        if priority == *p {
                            t[key] = json!(max);
                        }
                    }
                    t
                })
                .collect();
            let mut status = json!({
                "name": name,
                "observability_name": name,
                "added_via_api": via_api,
                "circuit_breakers": {"thresholds": thresholds},
                "host_statuses": host_json,
            });
            if let Some(d) = &c.outlier {
                let [(_, ext), (_, local)] = d.cluster_rates();
                if let Some(t) = ext {
                    status["success_rate_ejection_threshold"] = json!({ "value": t });
                }
                if let Some(t) = local {
                    status["local_origin_success_rate_ejection_threshold"] = json!({ "value": t });
                }
            }
            statuses.push(status);
        }
    }
    if as_json {
        json_response(&json!({"cluster_statuses": statuses}))
    } else {
        text(StatusCode::OK, out)
    }
}
