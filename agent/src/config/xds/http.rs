//! The HTTP protocol settings of a CDS Cluster, rendered for the cluster reader: the typed
//! `envoy.extensions.upstreams.http.v3.HttpProtocolOptions` and the legacy fields.

use super::*;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as uhttp;

fn common_json(o: &core::HttpProtocolOptions) -> Json {
    let mut m = Map::new();
    if let Some(t) = &o.idle_timeout {
        m.insert("idle_timeout".into(), json!(duration(t)));
    }
    if let Some(n) = &o.max_requests_per_connection {
        m.insert("max_requests_per_connection".into(), json!(n.value));
    }
    mark(
        &mut m,
        "max_connection_duration",
        o.max_connection_duration.is_some(),
    );
    mark(
        &mut m,
        "max_stream_duration",
        o.max_stream_duration.is_some(),
    );
    Json::Object(m)
}

fn http2_json(o: &core::Http2ProtocolOptions) -> Json {
    let mut m = Map::new();
    if let Some(n) = &o.max_concurrent_streams {
        m.insert("max_concurrent_streams".into(), json!(n.value));
    }
    mark(&mut m, "allow_connect", o.allow_connect);
    mark(&mut m, "allow_metadata", o.allow_metadata);
    mark(
        &mut m,
        "custom_settings_parameters",
        !o.custom_settings_parameters.is_empty(),
    );
    Json::Object(m)
}

fn http1_json(o: &core::Http1ProtocolOptions) -> Json {
    let mut m = Map::new();
    mark(&mut m, "header_key_format", o.header_key_format.is_some());
    mark(
        &mut m,
        "send_fully_qualified_url",
        o.send_fully_qualified_url,
    );
    Json::Object(m)
}

fn typed_options_json(any: &Any) -> Json {
    let Ok(po) = uhttp::HttpProtocolOptions::decode(any.value.as_slice()) else {
        return json!({"@type": any.type_url, "undecodable": {}});
    };
    let mut m = Map::new();
    m.insert("@type".into(), json!(any.type_url));
    if let Some(c) = &po.common_http_protocol_options {
        m.insert("common_http_protocol_options".into(), common_json(c));
    }
    use uhttp::http_protocol_options::explicit_http_config::ProtocolConfig;
    use uhttp::http_protocol_options::UpstreamProtocolOptions as U;
    match &po.upstream_protocol_options {
        Some(U::ExplicitHttpConfig(e)) => {
            let inner = match &e.protocol_config {
                Some(ProtocolConfig::HttpProtocolOptions(h)) => {
                    json!({"http_protocol_options": http1_json(h)})
                }
                Some(ProtocolConfig::Http2ProtocolOptions(h)) => {
                    json!({"http2_protocol_options": http2_json(h)})
                }
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    json!({"http3_protocol_options": {}})
                }
                None => json!({}),
            };
            m.insert("explicit_http_config".into(), inner);
        }
        Some(U::UseDownstreamProtocolConfig(u)) => {
            let mut d = Map::new();
            if let Some(h) = &u.http_protocol_options {
                d.insert("http_protocol_options".into(), http1_json(h));
            }
            if let Some(h) = &u.http2_protocol_options {
                d.insert("http2_protocol_options".into(), http2_json(h));
            }
            mark(
                &mut d,
                "http3_protocol_options",
                u.http3_protocol_options.is_some(),
            );
            m.insert("use_downstream_protocol_config".into(), Json::Object(d));
        }
        Some(U::AutoConfig(_)) => mark(&mut m, "auto_config", true),
        None => {}
    }
    mark(
        &mut m,
        "upstream_http_protocol_options",
        po.upstream_http_protocol_options.is_some(),
    );
    mark(&mut m, "http_filters", !po.http_filters.is_empty());
    mark(
        &mut m,
        "header_validation_config",
        po.header_validation_config.is_some(),
    );
    mark(&mut m, "outlier_detection", po.outlier_detection.is_some());
    mark(
        &mut m,
        "request_mirror_policies",
        !po.request_mirror_policies.is_empty(),
    );
    mark(&mut m, "hash_policy", !po.hash_policy.is_empty());
    mark(&mut m, "retry_policy", po.retry_policy.is_some());
    Json::Object(m)
}

/// Adds the cluster's HTTP settings to its JSON form.
pub(super) fn cluster_http_json(c: &pbc::Cluster, m: &mut Map<String, Json>) {
    if let Some(n) = &c.max_requests_per_connection {
        m.insert("max_requests_per_connection".into(), json!(n.value));
    }
    if let Some(o) = &c.common_http_protocol_options {
        m.insert("common_http_protocol_options".into(), common_json(o));
    }
    if let Some(o) = &c.http_protocol_options {
        m.insert("http_protocol_options".into(), http1_json(o));
    }
    if let Some(o) = &c.http2_protocol_options {
        m.insert("http2_protocol_options".into(), http2_json(o));
    }
    if c.protocol_selection != 0 {
        m.insert(
            "protocol_selection".into(),
            json!(
                pbc::cluster::ClusterProtocolSelection::try_from(c.protocol_selection)
                    .map(|p| p.as_str_name())
                    .unwrap_or("UNKNOWN")
            ),
        );
    }
    if !c.typed_extension_protocol_options.is_empty() {
        let typed: Map<String, Json> = c
            .typed_extension_protocol_options
            .iter()
            .map(|(k, any)| {
                let v = if any.type_url == type_urls::HTTP_PROTOCOL_OPTIONS {
                    typed_options_json(any)
                } else {
                    json!({"@type": any.type_url})
                };
                (k.clone(), v)
            })
            .collect();
        m.insert(
            "typed_extension_protocol_options".into(),
            Json::Object(typed),
        );
    }
}
