//! `envoy.filters.network.http_connection_manager`: its field table and reader, its protocol
//! options and its HTTP filters.

use super::super::rbac;
use super::super::type_urls;
use super::super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::route::read_route_configuration_obj;
use super::*;

use Field::{Ignored as I, Rejected as R, Supported as S};

const NO_ACCESS_LOG: &str = "upstream access logs are not written";
const FLUSH: &str = "lines are written as they come and flushed at least once a second";
const NO_TRACING: &str = "tracing is not supported";
const NO_ECDS: &str =
    "extension config discovery (ECDS) is not supported; configure the filter inline";

pub(in crate::config) const HCM_TABLE: FieldTable = &[
    ("@type", S),
    ("codec_type", S),
    ("stat_prefix", S),
    ("route_config", S),
    ("rds", S),
    ("scoped_routes", R("scoped routes are not supported")),
    ("http_filters", S),
    ("add_user_agent", I("user agent headers are not added")),
    ("tracing", R(NO_TRACING)),
    ("common_http_protocol_options", S),
    (
        "http1_safe_max_connection_duration",
        I("no max_connection_duration"),
    ),
    ("http_protocol_options", S),
    ("http2_protocol_options", S),
    ("http3_protocol_options", R("HTTP/3 is not supported")),
    ("server_name", S),
    (
        "server_header_transformation",
        I("the server header is always set to server_name"),
    ),
    (
        "scheme_header_transformation",
        I("the scheme is passed as received"),
    ),
    ("max_request_headers_kb", S),
    ("stream_idle_timeout", S),
    (
        "stream_flush_timeout",
        I("streams are bounded by stream_idle_timeout"),
    ),
    ("request_timeout", S),
    ("request_headers_timeout", S),
    ("drain_timeout", S),
    ("drain_timeout_jitter", I("no jitter on drain")),
    (
        "delayed_close_timeout",
        I("a connection closes once its last response is written"),
    ),
    ("access_log", S),
    ("access_log_flush_interval", I(FLUSH)),
    ("flush_access_log_on_new_request", I(FLUSH)),
    ("access_log_options", I(FLUSH)),
    ("use_remote_address", S),
    ("xff_num_trusted_hops", S),
    (
        "original_ip_detection_extensions",
        R("original IP detection extensions are not supported"),
    ),
    (
        "early_header_mutation_extensions",
        R("early header mutation extensions are not supported"),
    ),
    (
        "internal_address_config",
        I("internal addresses are only used for x-envoy-* header sanitising"),
    ),
    ("skip_xff_append", S),
    ("via", R("the via header is not supported")),
    ("generate_request_id", S),
    ("preserve_external_request_id", S),
    ("always_set_request_id_in_response", S),
    (
        "forward_client_cert_details",
        I("no TLS yet, so no client certificate to forward"),
    ),
    (
        "set_current_client_cert_details",
        I("no TLS yet, so no client certificate to forward"),
    ),
    ("forward_client_cert_matcher", I("no TLS yet")),
    ("proxy_100_continue", I("100-continue is answered by Plumb")),
    (
        "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
        R("IPv4 addresses are always written as IPv4"),
    ),
    ("upgrade_configs", S),
    ("normalize_path", R("path normalisation is not supported")),
    ("merge_slashes", R("path normalisation is not supported")),
    (
        "path_with_escaped_slashes_action",
        R("path normalisation is not supported"),
    ),
    (
        "path_normalization_options",
        R("path normalisation is not supported"),
    ),
    (
        "request_id_extension",
        R("only the built-in UUID request id is supported"),
    ),
    (
        "local_reply_config",
        R("local replies cannot be customised"),
    ),
    (
        "strip_matching_host_port",
        R("use ignore_port_in_host_matching on the route configuration"),
    ),
    (
        "strip_any_host_port",
        R("use ignore_port_in_host_matching on the route configuration"),
    ),
    (
        "stream_error_on_invalid_http_message",
        I("an invalid HTTP/1 message closes the connection after a 400"),
    ),
    (
        "strip_trailing_host_dot",
        R("host normalisation is not supported"),
    ),
    (
        "proxy_status_config",
        R("the proxy-status header is not supported"),
    ),
    (
        "typed_header_validation_config",
        R("header validators are not supported"),
    ),
    (
        "append_x_forwarded_port",
        R("x-forwarded-port is not supported"),
    ),
    ("append_local_overload", I("no overload header")),
    (
        "add_proxy_protocol_connection_state",
        I("no PROXY protocol state"),
    ),
    (
        "forward_proto_config",
        R("x-forwarded-proto rewriting is not supported"),
    ),
];

const PROTOCOL_OPTIONS: FieldTable = &[
    ("idle_timeout", S),
    (
        "max_connection_duration",
        R("max_connection_duration is not supported yet"),
    ),
    (
        "max_connection_duration_jitter",
        R("max_connection_duration is not supported yet"),
    ),
    ("max_headers_count", S),
    (
        "max_response_headers_kb",
        I("upstream response headers are limited by the codec (60 KiB)"),
    ),
    ("max_stream_duration", S),
    ("headers_with_underscores_action", S),
    (
        "max_requests_per_connection",
        R("max_requests_per_connection is not supported downstream"),
    ),
];

const HTTP1_OPTIONS: FieldTable = &[
    ("allow_absolute_url", I("absolute URLs are always accepted")),
    ("accept_http_10", I("HTTP/1.0 is always accepted")),
    (
        "default_host_for_http_10",
        R("HTTP/1.0 requests need a Host header"),
    ),
    ("header_key_format", R("header case is not preserved")),
    (
        "enable_trailers",
        I("HTTP/1.1 trailers are forwarded when the response declares them in a Trailer header"),
    ),
    (
        "allow_chunked_length",
        R("Content-Length with chunked is refused"),
    ),
    (
        "override_stream_error_on_invalid_http_message",
        I("an invalid HTTP/1 message closes the connection after a 400"),
    ),
    (
        "send_fully_qualified_url",
        R("upstream requests use origin form"),
    ),
    ("use_balsa_parser", I("Plumb has one HTTP/1 parser")),
    (
        "allow_custom_methods",
        I("any token is accepted as a method"),
    ),
    (
        "ignore_http_11_upgrade",
        R("upgrades follow upgrade_configs"),
    ),
];

const HTTP2_OPTIONS: FieldTable = &[
    (
        "hpack_table_size",
        I("the HPACK table size is the codec's (4 KiB)"),
    ),
    ("max_concurrent_streams", S),
    ("initial_stream_window_size", S),
    ("initial_connection_window_size", S),
    ("allow_connect", R("CONNECT over HTTP/2 is not supported")),
    ("allow_metadata", R("METADATA frames are not supported")),
    ("max_outbound_frames", I("the codec bounds its queues")),
    (
        "max_outbound_control_frames",
        I("the codec bounds its queues"),
    ),
    (
        "max_consecutive_inbound_frames_with_empty_payload",
        I("the codec has its own flood protection"),
    ),
    (
        "max_inbound_priority_frames_per_stream",
        I("the codec has its own flood protection"),
    ),
    (
        "max_inbound_window_update_frames_per_data_frame_sent",
        I("the codec has its own flood protection"),
    ),
    (
        "stream_error_on_invalid_http_messaging",
        I("invalid messages reset the stream"),
    ),
    (
        "override_stream_error_on_invalid_http_message",
        I("invalid messages reset the stream"),
    ),
    (
        "custom_settings_parameters",
        R("custom SETTINGS are not supported"),
    ),
    (
        "connection_keepalive",
        R("HTTP/2 PING keepalive is not supported yet"),
    ),
    ("use_oghttp2_codec", I("Plumb has one HTTP/2 codec")),
    ("max_metadata_size", I("METADATA frames are not supported")),
    ("enable_huffman_encoding", I("the codec decides")),
    (
        "max_header_field_size_kb",
        I("max_request_headers_kb bounds headers"),
    ),
    ("disallow_obs_text", I("obs-text is refused")),
    (
        "stream_reset_burst",
        I("the codec has its own reset flood protection"),
    ),
    (
        "stream_reset_rate",
        I("the codec has its own reset flood protection"),
    ),
];

const RDS: FieldTable = &[("config_source", S), ("route_config_name", S)];

const UPGRADE_CONFIG: FieldTable = &[
    ("upgrade_type", S),
    ("filters", R("per-upgrade filter chains are not supported")),
    ("enabled", S),
];

const HTTP_FILTER: FieldTable = &[
    ("name", S),
    ("typed_config", S),
    ("config_discovery", R(NO_ECDS)),
    ("is_optional", S),
    ("disabled", R("disabled filters are not supported")),
];

const ROUTER: FieldTable = &[
    ("@type", S),
    (
        "dynamic_stats",
        I("per-route dynamic stats are always kept"),
    ),
    ("start_child_span", I(NO_TRACING)),
    ("upstream_log", R(NO_ACCESS_LOG)),
    ("upstream_log_options", I(NO_ACCESS_LOG)),
    ("suppress_envoy_headers", S),
    (
        "strict_check_headers",
        I("x-envoy-* request headers are not read yet"),
    ),
    (
        "respect_expected_rq_timeout",
        I("x-envoy-expected-rq-timeout-ms is not read"),
    ),
    (
        "suppress_grpc_request_failure_code_stats",
        I("no per-gRPC-code stats yet"),
    ),
    (
        "upstream_http_filters",
        R("upstream HTTP filters are not supported"),
    ),
    ("reject_connect_request_early_data", I("no early data")),
];

const ROUTER_NAMES: &[&str] = &["envoy.filters.http.router", "envoy.router"];

const GRPC_STATS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig";
const GRPC_STATS_NAMES: &[&str] = &["envoy.filters.http.grpc_stats", "envoy.grpc_stats"];

const GRPC_STATS: FieldTable = &[
    ("@type", S),
    ("emit_filter_state", I("filter state is not kept")),
    ("individual_method_stats_allowlist", S),
    ("stats_for_all_methods", S),
    (
        "enable_upstream_stats",
        I("upstream gRPC timing is in cluster.<name>.upstream_rq_time"),
    ),
    ("replace_dots_in_grpc_service_name", S),
];

const GRPC_METHOD_LIST: FieldTable = &[("services", S)];
const GRPC_SERVICE_METHODS: FieldTable = &[("name", S), ("method_names", S)];

fn read_grpc_stats(f: &Obj, d: &mut Diagnostics) -> GrpcStatsConfig {
    let mut c = GrpcStatsConfig::default();
    let Some(tc) = f.object("typed_config", GRPC_STATS, d) else {
        return c;
    };
    c.all_methods = tc.boolean("stats_for_all_methods", d).unwrap_or(false);
    c.replace_dots = tc
        .boolean("replace_dots_in_grpc_service_name", d)
        .unwrap_or(false);
    if let Some(l) = tc.object("individual_method_stats_allowlist", GRPC_METHOD_LIST, d) {
        for (p, v) in l.list("services", d) {
            let Some(s) = Obj::new(v, &p, GRPC_SERVICE_METHODS, d) else {
                continue;
            };
            let Some(name) = s.required_string("name", d) else {
                continue;
            };
            let methods = s
                .list("method_names", d)
                .into_iter()
                .filter_map(|(_, m)| m.as_str().map(str::to_string))
                .collect();
            c.allowlist.push((name, methods));
        }
        c.has_allowlist = true;
    }
    c
}

/// Kilobytes of request headers: Envoy's default and maximum.
const DEFAULT_MAX_HEADERS_KB: u64 = 60;
const MAX_HEADERS_KB: u64 = 8192;

fn optional_timeout(
    o: &Obj,
    key: &str,
    default: Option<Duration>,
    d: &mut Diagnostics,
) -> Option<Duration> {
    match o.duration(key, d) {
        Some(t) if t.is_zero() => None,
        Some(t) => Some(t),
        None => default,
    }
}

/// Reads an HCM `typed_config` (already checked against `HCM_TABLE`).
pub(in crate::config) fn read_hcm(tc: &Obj, d: &mut Diagnostics) -> Option<HttpConnectionManager> {
    let stat_prefix = tc.required_name("stat_prefix", d);
    let codec_type = match tc
        .enumeration(
            "codec_type",
            &["AUTO", "HTTP1", "HTTP2"],
            &[("HTTP3", "HTTP/3 is not supported")],
            d,
        )
        .as_deref()
    {
        Some("HTTP1") => CodecType::Http1,
        Some("HTTP2") => CodecType::Http2,
        _ => CodecType::Auto,
    };
    let routes = match (tc.get("route_config"), tc.object("rds", RDS, d)) {
        (Some(_), Some(_)) => {
            d.error(&tc.path, "route_config and rds are mutually exclusive");
            None
        }
        (Some(v), None) => read_route_configuration_obj(v, &tc.at("route_config"), false, d)
            .map(|rc| Routes::Inline(Arc::new(rc))),
        (None, Some(rds)) => {
            let name = rds.required_name("route_config_name", d);
            let timeout = match rds.required("config_source", d) {
                Some(_) => rds
                    .object("config_source", super::super::bootstrap::CONFIG_SOURCE, d)
                    .and_then(|cs| super::super::bootstrap::read_config_source(&cs, d)),
                None => None,
            };
            name.map(|name| Routes::Rds {
                name,
                initial_fetch_timeout: timeout.unwrap_or(Duration::from_secs(15)),
            })
        }
        (None, None) => {
            if tc.get("scoped_routes").is_none() {
                d.error(
                    tc.at("route_config"),
                    "missing required field (one of route_config or rds)",
                );
            }
            None
        }
    };
    let server_name = tc
        .string("server_name", d)
        .unwrap_or_else(|| "plumb".to_string());
    if server_name.chars().any(|c| c.is_control()) {
        d.error(tc.at("server_name"), "must not contain control characters");
    }
    let max_request_headers_bytes = tc
        .uint("max_request_headers_kb", 1, MAX_HEADERS_KB, d)
        .unwrap_or(DEFAULT_MAX_HEADERS_KB) as usize
        * 1024;
    let mut max_headers_count = 100usize;
    let mut idle_timeout = Some(Duration::from_secs(3600));
    let mut max_stream_duration = None;
    let mut headers_with_underscores_action = UnderscoresAction::Allow;
    if let Some(o) = tc.object("common_http_protocol_options", PROTOCOL_OPTIONS, d) {
        idle_timeout = optional_timeout(&o, "idle_timeout", idle_timeout, d);
        max_headers_count = o.uint("max_headers_count", 1, 10_000, d).unwrap_or(100) as usize;
        max_stream_duration = optional_timeout(&o, "max_stream_duration", None, d);
        headers_with_underscores_action = match o
            .enumeration(
                "headers_with_underscores_action",
                &["ALLOW", "REJECT_REQUEST", "DROP_HEADER"],
                &[],
                d,
            )
            .as_deref()
        {
            Some("REJECT_REQUEST") => UnderscoresAction::RejectRequest,
            Some("DROP_HEADER") => UnderscoresAction::DropHeader,
            _ => UnderscoresAction::Allow,
        };
    }
    let _ = tc.object("http_protocol_options", HTTP1_OPTIONS, d);
    let mut http2 = Http2Options::default();
    if let Some(o) = tc.object("http2_protocol_options", HTTP2_OPTIONS, d) {
        if let Some(n) = o.uint("max_concurrent_streams", 1, 2_147_483_647, d) {
            http2.max_concurrent_streams = n as u32;
        }
        if let Some(n) = o.uint("initial_stream_window_size", 65_535, 2_147_483_647, d) {
            http2.initial_stream_window_size = n as u32;
        }
        if let Some(n) = o.uint("initial_connection_window_size", 65_535, 2_147_483_647, d) {
            http2.initial_connection_window_size = n as u32;
        }
    }
    let mut websocket = false;
    for (path, v) in tc.list("upgrade_configs", d) {
        let Some(u) = Obj::new(v, &path, UPGRADE_CONFIG, d) else {
            continue;
        };
        let kind = u.required_string("upgrade_type", d).unwrap_or_default();
        let enabled = u.boolean("enabled", d).unwrap_or(true);
        if kind.eq_ignore_ascii_case("websocket") {
            websocket = enabled;
        } else {
            d.error(
                u.at("upgrade_type"),
                format!("upgrade type \"{kind}\" is not supported (supported: websocket)"),
            );
        }
    }
    let (suppress_envoy_headers, grpc_stats, http_filters) = read_http_filters(tc, d);
    let hcm = HttpConnectionManager {
        stat_prefix: stat_prefix?,
        codec_type,
        routes: routes?,
        server_name,
        use_remote_address: tc.boolean("use_remote_address", d).unwrap_or(false),
        xff_num_trusted_hops: tc.uint("xff_num_trusted_hops", 0, 64, d).unwrap_or(0) as u32,
        skip_xff_append: tc.boolean("skip_xff_append", d).unwrap_or(false),
        max_request_headers_bytes,
        max_headers_count,
        idle_timeout,
        max_stream_duration,
        headers_with_underscores_action,
        http2,
        stream_idle_timeout: optional_timeout(
            tc,
            "stream_idle_timeout",
            Some(Duration::from_secs(300)),
            d,
        ),
        request_timeout: optional_timeout(tc, "request_timeout", None, d),
        request_headers_timeout: optional_timeout(tc, "request_headers_timeout", None, d),
        drain_timeout: tc
            .duration("drain_timeout", d)
            .unwrap_or(Duration::from_secs(5)),
        generate_request_id: tc.boolean("generate_request_id", d).unwrap_or(true),
        preserve_external_request_id: tc
            .boolean("preserve_external_request_id", d)
            .unwrap_or(false),
        always_set_request_id_in_response: tc
            .boolean("always_set_request_id_in_response", d)
            .unwrap_or(false),
        websocket,
        suppress_envoy_headers,
        grpc_stats,
        http_filters,
        access_logs: super::access_log::read_access_logs(tc, d),
        source: serde_json::Value::Null,
    };
    Some(hcm)
}

/// The HTTP filter chain: the router, last. Other filters arrive with the filters step of the
/// HTTP issue; until then a filter marked `is_optional` is skipped with a warning and any
/// other is refused.
/// Returns the router's `suppress_envoy_headers`, the grpc_stats filter's config and the
/// other filters.
fn read_http_filters(
    tc: &Obj,
    d: &mut Diagnostics,
) -> (
    bool,
    Option<GrpcStatsConfig>,
    Vec<(String, super::filters::HttpFilterConfig)>,
) {
    use super::filters as hf;
    let mut suppress = false;
    let mut grpc_stats = None;
    let mut chain = Vec::new();
    let filters = tc.list("http_filters", d);
    if filters.is_empty() {
        d.error(
            tc.at("http_filters"),
            "missing required field: the last filter must be envoy.filters.http.router",
        );
        return (suppress, grpc_stats, chain);
    }
    let last = filters.len() - 1;
    for (i, (path, v)) in filters.iter().enumerate() {
        let Some(f) = Obj::new(v, path, HTTP_FILTER, d) else {
            continue;
        };
        let name = f.required_string("name", d).unwrap_or_default();
        let type_url = f
            .get("typed_config")
            .and_then(|t| t.get("@type"))
            .and_then(|t| t.as_str())
            .map(str::to_string);
        let is_router = match &type_url {
            Some(t) => t == type_urls::ROUTER,
            None => ROUTER_NAMES.contains(&name.as_str()),
        };
        if is_router {
            if let Some(r) = f.object("typed_config", ROUTER, d) {
                suppress = r.boolean("suppress_envoy_headers", d).unwrap_or(false);
            }
            if i != last {
                d.error(path, "the router must be the last HTTP filter");
            }
            continue;
        }
        let is_grpc_stats = match &type_url {
            Some(t) => t == GRPC_STATS_TYPE,
            None => GRPC_STATS_NAMES.contains(&name.as_str()),
        };
        if is_grpc_stats && i != last {
            grpc_stats = Some(read_grpc_stats(&f, d));
            continue;
        }
        let kind = match type_url.as_deref() {
            Some(hf::LOCAL_RATELIMIT_TYPE) => Some(0),
            Some(hf::FAULT_TYPE) => Some(1),
            Some(hf::HEALTH_CHECK_TYPE) => Some(2),
            Some(hf::SET_FILTER_STATE_TYPE) => Some(3),
            Some(rbac::HTTP_RBAC_TYPE) => Some(4),
            Some(_) => None,
            None if hf::LOCAL_RATELIMIT_NAMES.contains(&name.as_str()) => Some(0),
            None if hf::FAULT_NAMES.contains(&name.as_str()) => Some(1),
            None if hf::HEALTH_CHECK_NAMES.contains(&name.as_str()) => Some(2),
            None if hf::SET_FILTER_STATE_NAMES.contains(&name.as_str()) => Some(3),
            None if rbac::HTTP_RBAC_NAMES.contains(&name.as_str()) => Some(4),
            None => None,
        };
        if let (Some(k), true) = (kind, i != last) {
            let table = [
                hf::LOCAL_RATELIMIT,
                hf::FAULT,
                hf::HEALTH_CHECK,
                hf::SET_FILTER_STATE,
                rbac::HTTP_RBAC,
            ][k];
            match f.object("typed_config", table, d) {
                Some(tc) => {
                    let built = match k {
                        0 => hf::read_local_ratelimit(&tc, d)
                            .map(hf::HttpFilterConfig::LocalRateLimit),
                        1 => hf::read_fault(&tc, d).map(hf::HttpFilterConfig::Fault),
                        2 => hf::read_health_check(&tc, d).map(hf::HttpFilterConfig::HealthCheck),
                        3 => hf::read_set_filter_state(&tc, d)
                            .map(hf::HttpFilterConfig::SetFilterState),
                        _ => rbac::read_http_rbac(&tc, d).map(hf::HttpFilterConfig::Rbac),
                    };
                    chain.extend(built.map(|b| (name.clone(), b)));
                }
                None => d.error(f.at("typed_config"), "missing required field"),
            }
            continue;
        }
        let what = type_url.unwrap_or(name);
        if f.boolean("is_optional", d).unwrap_or(false) {
            d.warn(
                path,
                format!("ignored: optional HTTP filter \"{what}\" is not supported"),
            );
        } else if i == last {
            d.error(
                path,
                format!("the last HTTP filter must be envoy.filters.http.router, found \"{what}\""),
            );
        } else {
            d.error(
                path,
                format!("unsupported HTTP filter \"{what}\" (supported: envoy.filters.http.local_ratelimit, envoy.filters.http.fault, envoy.filters.http.health_check, envoy.filters.http.set_filter_state, envoy.filters.http.rbac, envoy.filters.http.grpc_stats, envoy.filters.http.router; mark a filter is_optional to skip it)"),
            );
        }
    }
    (suppress, grpc_stats, chain)
}

#[cfg(test)]
pub(crate) const TABLES: &[(&str, FieldTable)] = &[
    ("HttpConnectionManager", HCM_TABLE),
    ("HttpProtocolOptions", PROTOCOL_OPTIONS),
    ("Http1ProtocolOptions", HTTP1_OPTIONS),
    ("Http2ProtocolOptions", HTTP2_OPTIONS),
    ("UpgradeConfig", UPGRADE_CONFIG),
    ("Rds", RDS),
    ("HttpFilter", HTTP_FILTER),
    ("Router", ROUTER),
    ("GrpcStats", GRPC_STATS),
    ("GrpcMethodList", GRPC_METHOD_LIST),
    ("GrpcMethodList.Service", GRPC_SERVICE_METHODS),
];
