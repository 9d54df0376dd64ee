//! The active cluster configuration as Envoy's v3 `Cluster` JSON, for `/config_dump`.

use super::*;

pub(super) fn socket_address_json(host: &str, port: u16) -> Json {
    json!({"socket_address": {"address": host, "port_value": port}})
}

pub(super) fn duration_json(d: Duration) -> String {
    let s = format!("{:.9}", d.as_secs_f64());
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}s")
}

impl Cluster {
    /// Envoy v3 `Cluster` JSON of the active (translated) config, for `/config_dump`.
    pub fn to_envoy_json(&self) -> Json {
        let endpoints: Vec<Json> = self
            .localities
            .iter()
            .map(|l| {
                let lbs: Vec<Json> = l
                    .endpoints
                    .iter()
                    .map(|e| {
                        let mut ep = json!({"address": socket_address_json(&e.host.to_string(), e.port)});
                        if let Some(h) = &e.hostname {
                            ep["hostname"] = json!(h);
                        }
                        json!({
                            "endpoint": ep,
                            "health_status": e.health_status.as_str(),
                            "load_balancing_weight": e.weight,
                        })
                    })
                    .collect();
                let mut j = json!({"locality": l.locality.to_json(), "priority": l.priority, "lb_endpoints": lbs});
                if let Some(w) = l.load_balancing_weight {
                    j["load_balancing_weight"] = json!(w);
                }
                j
            })
            .collect();
        let mut j = json!({
            "name": self.name,
            "type": self.discovery.as_str(),
            "connect_timeout": duration_json(self.connect_timeout),
            "lb_policy": self.lb_policy.as_str(),
            "load_assignment": {"cluster_name": self.name, "endpoints": endpoints},
        });
        match self.lb_policy {
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } => {
                j["ring_hash_lb_config"] = json!({
                    "minimum_ring_size": min_ring_size,
                    "maximum_ring_size": max_ring_size,
                    "hash_function": "XX_HASH",
                });
            }
            LbPolicy::Maglev { table_size } => {
                j["maglev_lb_config"] = json!({"table_size": table_size});
            }
            LbPolicy::LeastRequest {
                choice_count,
                bias_milli,
            } => {
                j["least_request_lb_config"] = json!({
                    "choice_count": choice_count,
                    "active_request_bias": {"default_value": f64::from(bias_milli) / 1000.0},
                });
            }
            _ => {}
        }
        if let Some(h) = &self.health_check {
            let mut hc = json!({
                "timeout": duration_json(h.timeout),
                "interval": duration_json(h.interval),
                "unhealthy_threshold": h.unhealthy_threshold,
                "healthy_threshold": h.healthy_threshold,
                "no_traffic_interval": duration_json(h.no_traffic_interval),
                "no_traffic_healthy_interval": duration_json(h.no_traffic_healthy_interval),
                "unhealthy_interval": duration_json(h.unhealthy_interval),
                "unhealthy_edge_interval": duration_json(h.unhealthy_edge_interval),
                "healthy_edge_interval": duration_json(h.healthy_edge_interval),
            });
            if !h.reuse_connection {
                hc["reuse_connection"] = json!(false);
            }
            if let Some(p) = &h.event_log_path {
                hc["event_log_path"] = json!(p.display().to_string());
            }
            match &h.kind {
                HealthCheckKind::Tcp { send, receive } => {
                    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
                    hc["tcp_health_check"] = json!({
                        "send": send.as_deref().map(|s| json!({"text": hex(s)})),
                        "receive": receive.iter().map(|r| json!({"text": hex(r)})).collect::<Vec<_>>(),
                    });
                }
                HealthCheckKind::Http {
                    host,
                    path,
                    expected,
                    http2,
                    ..
                } => {
                    hc["http_health_check"] = json!({
                        "host": host,
                        "path": path,
                        "expected_statuses": expected.iter().map(|(s, e)| json!({"start": s, "end": e})).collect::<Vec<_>>(),
                        "codec_client_type": if *http2 { "HTTP2" } else { "HTTP1" },
                    });
                }
                HealthCheckKind::Grpc {
                    service_name,
                    authority,
                    ..
                } => {
                    hc["grpc_health_check"] = json!({
                        "service_name": service_name,
                        "authority": authority,
                    });
                }
            }
            j["health_checks"] = json!([hc]);
        }
        if let Some(t) = &self.tls {
            j["transport_socket"] = t.to_envoy_json();
        }
        if !self.tls_matches.is_empty() {
            j["transport_socket_matches"] = json!(self
                .tls_matches
                .iter()
                .map(|m| {
                    let criteria: serde_json::Map<String, Json> = m
                        .criteria
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(v)))
                        .collect();
                    json!({
                        "name": m.name,
                        "match": criteria,
                        "transport_socket": m.tls.as_ref().map_or_else(
                            || json!({"name": "envoy.transport_sockets.raw_buffer"}),
                            |t| t.to_envoy_json(),
                        ),
                    })
                })
                .collect::<Vec<_>>());
        }
        if let Some(cb) = &self.circuit_breakers {
            let t: Vec<Json> = cb
                .thresholds
                .iter()
                .map(|t| {
                    json!({
                        "priority": if t.high_priority { "HIGH" } else { "DEFAULT" },
                        "max_connections": t.max_connections,
                        "max_pending_requests": t.max_pending_requests,
                        "max_requests": t.max_requests,
                        "max_retries": t.max_retries,
                        "max_connection_pools": (t.max_connection_pools != u32::MAX).then_some(t.max_connection_pools),
                        "track_remaining": t.track_remaining,
                        "retry_budget": t.retry_budget.map(|b| json!({
                            "budget_percent": {"value": b.budget_percent},
                            "min_retry_concurrency": b.min_retry_concurrency,
                        })),
                    })
                })
                .collect();
            j["circuit_breakers"] = json!({"thresholds": t});
            if let Some(m) = cb.per_host_max_connections {
                j["circuit_breakers"]["per_host_thresholds"] = json!([{"max_connections": m}]);
            }
        }
        if let Some(o) = &self.outlier_detection {
            let mut od = json!({
                "success_rate_minimum_hosts": o.success_rate_minimum_hosts,
                "success_rate_request_volume": o.success_rate_request_volume,
                "success_rate_stdev_factor": o.success_rate_stdev_factor,
                "enforcing_success_rate": o.enforcing_success_rate,
                "enforcing_local_origin_success_rate": o.enforcing_local_origin_success_rate,
                "failure_percentage_threshold": o.failure_percentage_threshold,
                "failure_percentage_minimum_hosts": o.failure_percentage_minimum_hosts,
                "failure_percentage_request_volume": o.failure_percentage_request_volume,
                "enforcing_failure_percentage": o.enforcing_failure_percentage,
                "enforcing_failure_percentage_local_origin": o.enforcing_failure_percentage_local_origin,
                "max_ejection_time_jitter": duration_json(o.max_ejection_time_jitter),
                "successful_active_health_check_uneject_host": o.successful_active_health_check_uneject_host,
            });
            let consecutive = json!({
                "consecutive_5xx": o.consecutive_5xx,
                "interval": duration_json(o.interval),
                "base_ejection_time": duration_json(o.base_ejection_time),
                "max_ejection_time": duration_json(o.max_ejection_time),
                "max_ejection_percent": o.max_ejection_percent,
                "enforcing_consecutive_5xx": o.enforcing_consecutive_5xx,
                "consecutive_gateway_failure": o.consecutive_gateway_failure,
                "enforcing_consecutive_gateway_failure": o.enforcing_consecutive_gateway_failure,
                "split_external_local_origin_errors": o.split_external_local_origin_errors,
                "consecutive_local_origin_failure": o.consecutive_local_origin_failure,
                "enforcing_consecutive_local_origin_failure": o.enforcing_consecutive_local_origin_failure,
            });
            if let (Some(od), Some(c)) = (od.as_object_mut(), consecutive.as_object()) {
                od.extend(c.clone());
            }
            j["outlier_detection"] = od;
        }
        j["common_lb_config"] = common_lb_json(&self.common_lb);
        if let Some(ss) = &self.common_lb.slow_start {
            let key = match self.lb_policy {
                LbPolicy::LeastRequest { .. } => "least_request_lb_config",
                _ => "round_robin_lb_config",
            };
            j[key]["slow_start_config"] = json!({
                "slow_start_window": duration_json(ss.window),
                "aggression": {"default_value": ss.aggression},
                "min_weight_percent": {"value": ss.min_weight_percent},
            });
        }
        if self.close_connections_on_host_health_failure {
            j["close_connections_on_host_health_failure"] = json!(true);
        }
        if self.ignore_health_on_host_removal {
            j["ignore_health_on_host_removal"] = json!(true);
        }
        if self.discovery == DiscoveryType::Eds {
            j["eds_cluster_config"] = json!({
                "eds_config": {"ads": {}},
                "service_name": self.eds_service_name.clone().unwrap_or_default(),
            });
            if let Some(o) = j.as_object_mut() {
                o.remove("load_assignment");
            }
        }
        if matches!(
            self.discovery,
            DiscoveryType::StrictDns | DiscoveryType::LogicalDns
        ) {
            j["dns_refresh_rate"] = json!(duration_json(self.dns_refresh_rate));
            j["dns_lookup_family"] = json!(self.dns_lookup_family.as_str());
        }
        if self.discovery == DiscoveryType::OriginalDst {
            j["cleanup_interval"] = json!(duration_json(self.cleanup_interval));
        }
        j
    }
}

fn common_lb_json(c: &CommonLb) -> Json {
    let mut j = json!({"healthy_panic_threshold": {"value": c.healthy_panic_threshold}});
    match c.locality {
        LocalityLb::None => {}
        LocalityLb::Weighted => j["locality_weighted_lb_config"] = json!({}),
        LocalityLb::ZoneAware {
            routing_enabled,
            min_cluster_size,
        } => {
            j["zone_aware_lb_config"] = json!({
                "routing_enabled": {"value": routing_enabled},
                "min_cluster_size": min_cluster_size,
                "fail_traffic_on_panic": c.fail_traffic_on_panic,
            })
        }
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `/config_dump` shows of a cluster reads back as the same cluster.
    #[test]
    fn the_dump_reads_back_as_the_same_cluster() {
        let cluster = r#"{"name": "c", "type": "STATIC", "connect_timeout": "1s",
            "lb_policy": "LEAST_REQUEST",
            "least_request_lb_config": {"choice_count": 3,
                "slow_start_config": {"slow_start_window": "30s", "aggression": {"default_value": 2},
                                      "min_weight_percent": {"value": 20}}},
            "common_lb_config": {"healthy_panic_threshold": {"value": 40},
                "zone_aware_lb_config": {"routing_enabled": {"value": 80}, "min_cluster_size": 3,
                                         "fail_traffic_on_panic": true}},
            "close_connections_on_host_health_failure": true,
            "ignore_health_on_host_removal": true,
            "circuit_breakers": {"thresholds": [{"max_connections": 7}],
                                 "per_host_thresholds": [{"max_connections": 2}]},
            "outlier_detection": {"consecutive_5xx": 3, "success_rate_request_volume": 20,
                "enforcing_failure_percentage": 50, "max_ejection_time_jitter": "2s",
                "successful_active_health_check_uneject_host": false},
            "health_checks": [{"timeout": "1s", "interval": "2s", "unhealthy_threshold": 2,
                "healthy_threshold": 1, "no_traffic_interval": "5s", "unhealthy_edge_interval": "3s",
                "reuse_connection": false,
                "tcp_health_check": {}}],
            "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]}}"#;
        let parse = |c: &str| {
            let snap = parse_bootstrap(
                &format!(r#"{{"static_resources": {{"clusters": [{c}]}}}}"#),
                "t",
            )
            .unwrap_or_else(|e| panic!("{e}"));
            snap.clusters[0].clone()
        };
        let original = parse(cluster);
        let dumped = original.to_envoy_json();
        let again = parse(&dumped.to_string());
        assert_eq!(*again, *original, "{dumped:#}");
        assert_eq!(
            dumped["common_lb_config"]["healthy_panic_threshold"]["value"],
            40.0
        );
        assert_eq!(
            dumped["outlier_detection"]["success_rate_request_volume"],
            20
        );
    }
}
