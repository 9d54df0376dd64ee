//! EDS: ClusterLoadAssignment → the endpoint model (common shapes translated directly).

use super::*;

pub(super) fn endpoints_json(cla: &pbe::ClusterLoadAssignment) -> Json {
    let localities: Vec<Json> = cla
        .endpoints
        .iter()
        .map(|l| {
            let mut m = Map::new();
            if let Some(loc) = &l.locality {
                m.insert(
                    "locality".into(),
                    json!({"region": loc.region, "zone": loc.zone, "sub_zone": loc.sub_zone}),
                );
            }
            if let Some(w) = &l.load_balancing_weight {
                m.insert("load_balancing_weight".into(), json!(w.value));
            }
            if l.priority != 0 {
                m.insert("priority".into(), json!(l.priority));
            }
            mark(&mut m, "metadata", l.metadata.is_some());
            mark(&mut m, "proximity", l.proximity.is_some());
            mark(
                &mut m,
                "leds_cluster_locality_config",
                l.lb_config.is_some(),
            );
            let lbs: Vec<Json> = l
                .lb_endpoints
                .iter()
                .map(|e| {
                    let mut em = Map::new();
                    match &e.host_identifier {
                        Some(pbe::lb_endpoint::HostIdentifier::Endpoint(ep)) => {
                            let mut ep_m = Map::new();
                            if let Some(a) = &ep.address {
                                ep_m.insert("address".into(), address(a));
                            }
                            if !ep.hostname.is_empty() {
                                ep_m.insert("hostname".into(), json!(ep.hostname));
                            }
                            mark(
                                &mut ep_m,
                                "health_check_config",
                                ep.health_check_config.is_some(),
                            );
                            mark(
                                &mut ep_m,
                                "additional_addresses",
                                !ep.additional_addresses.is_empty(),
                            );
                            em.insert("endpoint".into(), Json::Object(ep_m));
                        }
                        Some(pbe::lb_endpoint::HostIdentifier::EndpointName(_)) => {
                            em.insert("endpoint_name".into(), json!({}));
                        }
                        None => {}
                    }
                    if e.health_status != 0 {
                        em.insert(
                            "health_status".into(),
                            json!(core::HealthStatus::try_from(e.health_status)
                                .map(|h| h.as_str_name())
                                .unwrap_or("UNKNOWN")),
                        );
                    }
                    if let Some(w) = &e.load_balancing_weight {
                        em.insert("load_balancing_weight".into(), json!(w.value));
                    }
                    if let Some(md) = &e.metadata {
                        em.insert(
                            "metadata".into(),
                            super::reflect::decode_json(
                                "envoy.config.core.v3.Metadata",
                                &prost::Message::encode_to_vec(md),
                            )
                            .unwrap_or_else(|_| json!({})),
                        );
                    }
                    Json::Object(em)
                })
                .collect();
            m.insert("lb_endpoints".into(), json!(lbs));
            Json::Object(m)
        })
        .collect();
    let mut m = Map::new();
    m.insert("cluster_name".into(), json!(cla.cluster_name));
    m.insert("endpoints".into(), json!(localities));
    mark(&mut m, "named_endpoints", !cla.named_endpoints.is_empty());
    mark(&mut m, "policy", cla.policy.is_some());
    Json::Object(m)
}

/// The common LbEndpoint — an IP and port, maybe a weight, health status and hostname —
/// translated directly: EDS updates with 10 000 endpoints must not build 10 000 JSON trees.
/// Anything else returns `None` and goes through the field tables.
pub(super) fn fast_lb_endpoint(e: &pbe::LbEndpoint) -> Option<Endpoint> {
    if e.metadata.is_some() {
        return None;
    }
    let Some(pbe::lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
        return None;
    };
    if ep.health_check_config.is_some() || !ep.additional_addresses.is_empty() {
        return None;
    }
    let Some(core::address::Address::SocketAddress(sa)) = ep.address.as_ref()?.address.as_ref()
    else {
        return None;
    };
    if sa.protocol != 0
        || !sa.resolver_name.is_empty()
        || sa.ipv4_compat
        || !sa.network_namespace_filepath.is_empty()
    {
        return None;
    }
    let Some(core::socket_address::PortSpecifier::PortValue(port @ 1..=65535)) = sa.port_specifier
    else {
        return None;
    };
    let ip: std::net::IpAddr = sa.address.parse().ok()?;
    let weight = match &e.load_balancing_weight {
        None => 1,
        Some(w) if w.value >= 1 => w.value,
        Some(_) => return None,
    };
    let health_status = match e.health_status {
        0 => HealthStatus::Unknown,
        1 => HealthStatus::Healthy,
        2 => HealthStatus::Unhealthy,
        3 => HealthStatus::Draining,
        4 => HealthStatus::Timeout,
        5 => HealthStatus::Degraded,
        _ => return None,
    };
    Some(Endpoint {
        host: Host::Ip(ip),
        port: port as u16,
        hostname: (!ep.hostname.is_empty()).then(|| ep.hostname.clone()),
        weight,
        health_status,
        canary: false,
        socket_match: Vec::new(),
    })
}

/// EDS: a ClusterLoadAssignment's endpoints.
pub fn endpoints_from_proto(
    cla: &pbe::ClusterLoadAssignment,
) -> Translated<Vec<LocalityEndpoints>> {
    let mut d = Diagnostics::default();
    if !cla.named_endpoints.is_empty() {
        d.error(
            "named_endpoints",
            "not supported: named endpoints are not supported",
        );
    }
    if cla.policy.is_some() {
        d.warn(
            "policy",
            "ignored: drop_overloads and a custom overprovisioning_factor are not applied (Envoy's default factor 1.4 is)",
        );
    }
    let mut out = Vec::with_capacity(cla.endpoints.len());
    for (i, l) in cla.endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        let simple = l.metadata.is_none()
            && l.proximity.is_none()
            && l.lb_config.is_none()
            && l.priority <= 127
            && l.load_balancing_weight
                .as_ref()
                .is_none_or(|w| w.value >= 1);
        if !simple {
            // Unusual locality: the whole locality goes through the tables.
            let one = pbe::ClusterLoadAssignment {
                endpoints: vec![l.clone()],
                ..Default::default()
            };
            let j = endpoints_json(&one);
            match finish(j["endpoints"][0].clone(), |y, d| {
                read_locality_endpoints(y, &path, DiscoveryType::Static, d)
            }) {
                Ok((loc, w)) => {
                    d.warnings.extend(w);
                    out.push(loc);
                }
                Err(e) => d.errors.extend(e),
            }
            continue;
        }
        let locality = l
            .locality
            .as_ref()
            .map(|loc| Locality {
                region: loc.region.clone(),
                zone: loc.zone.clone(),
                sub_zone: loc.sub_zone.clone(),
            })
            .unwrap_or_default();
        let mut endpoints = Vec::with_capacity(l.lb_endpoints.len());
        for (j, e) in l.lb_endpoints.iter().enumerate() {
            if let Some(ep) = fast_lb_endpoint(e) {
                endpoints.push(ep);
                continue;
            }
            let one = pbe::ClusterLoadAssignment {
                endpoints: vec![pbe::LocalityLbEndpoints {
                    lb_endpoints: vec![e.clone()],
                    ..Default::default()
                }],
                ..Default::default()
            };
            let jv = endpoints_json(&one);
            let epath = format!("{path}.lb_endpoints[{j}]");
            match finish(jv["endpoints"][0]["lb_endpoints"][0].clone(), |y, d| {
                read_lb_endpoint(y, &epath, DiscoveryType::Static, d)
            }) {
                Ok((ep, w)) => {
                    d.warnings.extend(w);
                    endpoints.push(ep);
                }
                Err(e) => d.errors.extend(e),
            }
        }
        out.push(LocalityEndpoints {
            locality,
            priority: l.priority,
            load_balancing_weight: l.load_balancing_weight.as_ref().map(|w| w.value),
            endpoints,
        });
    }
    if d.errors.is_empty() {
        Ok((out, d.warnings))
    } else {
        Err(d.errors)
    }
}
