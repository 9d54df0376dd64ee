//! How a cluster speaks HTTP to its hosts: `typed_extension_protocol_options`
//! (`envoy.extensions.upstreams.http.v3.HttpProtocolOptions`) and the legacy cluster fields
//! `http2_protocol_options`, `http_protocol_options`, `common_http_protocol_options` and
//! `protocol_selection`.

use super::super::type_urls;
use super::super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::*;

use Field::{Ignored as I, Rejected as R, Supported as S};

/// The protocol of upstream requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// The protocol the downstream request arrived with.
    Downstream,
    /// `auto_config`: HTTP/2 when ALPN says `h2` (TLS clusters offer `h2` and `http/1.1`,
    /// learned once per host), else HTTP/1.1.
    Auto,
}

/// A cluster's HTTP settings (used only when an HTTP route sends to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamHttp {
    pub protocol: UpstreamProtocol,
    /// Pooled connections unused for this long are closed (default 1 h; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// Requests per connection before it is retired (`None`: unlimited).
    pub max_requests_per_connection: Option<u32>,
    /// Streams Plumb opens at once on one HTTP/2 connection (default 1024, at most what the
    /// server allows) before it opens another.
    pub max_concurrent_streams: u32,
    /// `upstream_http_protocol_options.auto_sni`: over TLS, the SNI is the request's host.
    pub auto_sni: bool,
    /// `upstream_http_protocol_options.auto_san_validation`: the server certificate must be
    /// valid for that name.
    pub auto_san_validation: bool,
}

impl Default for UpstreamHttp {
    fn default() -> Self {
        Self {
            protocol: UpstreamProtocol::Http1,
            idle_timeout: Some(Duration::from_secs(3600)),
            max_requests_per_connection: None,
            max_concurrent_streams: 1024,
            auto_sni: false,
            auto_san_validation: false,
        }
    }
}

const PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

const HTTP_PROTOCOL_OPTIONS: FieldTable = &[
    ("@type", S),
    ("common_http_protocol_options", S),
    ("upstream_http_protocol_options", S),
    ("explicit_http_config", S),
    ("use_downstream_protocol_config", S),
    ("auto_config", S),
    ("http_filters", R("upstream HTTP filters are not supported")),
    (
        "header_validation_config",
        R("header validators are not supported"),
    ),
    (
        "outlier_detection",
        I("HTTP outlier classification arrives with the cluster manager issue"),
    ),
    (
        "request_mirror_policies",
        R("cluster-level request mirroring is not supported"),
    ),
    (
        "hash_policy",
        I("cluster-level hash policies are not read; use the route's hash_policy"),
    ),
    (
        "retry_policy",
        R("cluster-level retry policies are not supported"),
    ),
];

pub(crate) const UPSTREAM_HTTP_OPTIONS: FieldTable = &[
    ("auto_sni", S),
    ("auto_san_validation", S),
    (
        "override_auto_sni_header",
        R("the SNI is the request's host (:authority)"),
    ),
];

fn read_upstream_http_options(o: &Obj, out: &mut UpstreamHttp, d: &mut Diagnostics) {
    out.auto_sni = o.boolean("auto_sni", d).unwrap_or(false);
    out.auto_san_validation = o.boolean("auto_san_validation", d).unwrap_or(false);
}

const AUTO: FieldTable = &[
    ("http_protocol_options", S),
    ("http2_protocol_options", S),
    ("http3_protocol_options", R("HTTP/3 is not supported")),
    (
        "alternate_protocols_cache_options",
        R("alternate protocols (HTTP/3) are not supported"),
    ),
];

const EXPLICIT: FieldTable = &[
    ("http_protocol_options", S),
    ("http2_protocol_options", S),
    ("http3_protocol_options", R("HTTP/3 is not supported")),
];

const COMMON: FieldTable = &[
    ("idle_timeout", S),
    (
        "max_connection_duration",
        R("max_connection_duration is not supported yet"),
    ),
    (
        "max_connection_duration_jitter",
        R("max_connection_duration is not supported yet"),
    ),
    (
        "max_headers_count",
        I("response headers are limited by the codec"),
    ),
    (
        "max_response_headers_kb",
        I("response headers are limited by the codec (60 KiB)"),
    ),
    (
        "max_stream_duration",
        R("upstream max_stream_duration is not supported yet"),
    ),
    (
        "headers_with_underscores_action",
        I("upstream response headers are passed as received"),
    ),
    ("max_requests_per_connection", S),
];

/// Any field of Envoy's Http1ProtocolOptions / Http2ProtocolOptions: the protocol is what
/// matters upstream; the settings that would change behaviour are named.
const HTTP1: FieldTable = &[
    ("allow_absolute_url", I("upstream requests use origin form")),
    ("accept_http_10", I("upstream requests are HTTP/1.1")),
    (
        "default_host_for_http_10",
        I("upstream requests are HTTP/1.1"),
    ),
    ("header_key_format", R("header case is not preserved")),
    (
        "enable_trailers",
        I("HTTP/1.1 trailers are forwarded when the response declares them in a Trailer header"),
    ),
    ("allow_chunked_length", I("responses with both are refused")),
    (
        "override_stream_error_on_invalid_http_message",
        I("an invalid response is a 503"),
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
        I("upgrades follow upgrade_configs"),
    ),
];

const HTTP2: FieldTable = &[
    ("hpack_table_size", I("the codec's default")),
    ("max_concurrent_streams", S),
    (
        "initial_stream_window_size",
        I("the codec's default window"),
    ),
    (
        "initial_connection_window_size",
        I("the codec's default window"),
    ),
    ("allow_connect", R("CONNECT over HTTP/2 is not supported")),
    ("allow_metadata", R("METADATA frames are not supported")),
    ("max_outbound_frames", I("the codec bounds its queues")),
    (
        "max_outbound_control_frames",
        I("the codec bounds its queues"),
    ),
    (
        "max_consecutive_inbound_frames_with_empty_payload",
        I("the codec's flood protection"),
    ),
    (
        "max_inbound_priority_frames_per_stream",
        I("the codec's flood protection"),
    ),
    (
        "max_inbound_window_update_frames_per_data_frame_sent",
        I("the codec's flood protection"),
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
        I("HTTP/2 PING keepalive is not sent yet"),
    ),
    ("use_oghttp2_codec", I("Plumb has one HTTP/2 codec")),
    ("max_metadata_size", I("METADATA frames are not supported")),
    ("enable_huffman_encoding", I("the codec decides")),
    ("max_header_field_size_kb", I("the codec's limit")),
    ("disallow_obs_text", I("obs-text is refused")),
    (
        "stream_reset_burst",
        I("the codec's reset flood protection"),
    ),
    ("stream_reset_rate", I("the codec's reset flood protection")),
];

fn read_common(o: &Obj, out: &mut UpstreamHttp, d: &mut Diagnostics) {
    if let Some(t) = o.duration("idle_timeout", d) {
        out.idle_timeout = (!t.is_zero()).then_some(t);
    }
    if let Some(n) = o.uint("max_requests_per_connection", 0, u32::MAX as u64, d) {
        out.max_requests_per_connection = (n > 0).then_some(n as u32);
    }
}

fn read_http2(o: &Obj, out: &mut UpstreamHttp, d: &mut Diagnostics) {
    if let Some(n) = o.uint("max_concurrent_streams", 1, 2_147_483_647, d) {
        out.max_concurrent_streams = n as u32;
    }
}

/// Reads the HTTP protocol settings of cluster `c`.
pub(in crate::config) fn read_upstream_http(c: &Obj, d: &mut Diagnostics) -> UpstreamHttp {
    let mut out = UpstreamHttp::default();
    // Legacy fields first; the typed extension, when given, wins (as in Envoy).
    if let Some(o) = c.object("common_http_protocol_options", COMMON, d) {
        read_common(&o, &mut out, d);
    }
    if let Some(n) = c.uint("max_requests_per_connection", 0, u32::MAX as u64, d) {
        out.max_requests_per_connection = (n > 0).then_some(n as u32);
    }
    let _ = c.object("http_protocol_options", HTTP1, d);
    if let Some(o) = c.object("upstream_http_protocol_options", UPSTREAM_HTTP_OPTIONS, d) {
        read_upstream_http_options(&o, &mut out, d);
    }
    if let Some(o) = c.object("http2_protocol_options", HTTP2, d) {
        out.protocol = UpstreamProtocol::Http2;
        read_http2(&o, &mut out, d);
    }
    if let Some(sel) = c.enumeration(
        "protocol_selection",
        &["USE_CONFIGURED_PROTOCOL", "USE_DOWNSTREAM_PROTOCOL"],
        &[],
        d,
    ) {
        if sel == "USE_DOWNSTREAM_PROTOCOL" {
            out.protocol = UpstreamProtocol::Downstream;
        }
    }
    let Some(map) = c.get("typed_extension_protocol_options") else {
        return out;
    };
    let path = c.at("typed_extension_protocol_options");
    let crate::config::yaml::Value::Mapping(m) = map else {
        d.error(path, "expected a mapping of extension name to config");
        return out;
    };
    for (k, v) in m.iter() {
        let key = k.as_str().unwrap_or_default();
        let kpath = format!("{path}.{key}");
        let type_url = v.get("@type").and_then(|t| t.as_str());
        if key != PROTOCOL_OPTIONS_KEY && type_url != Some(type_urls::HTTP_PROTOCOL_OPTIONS) {
            d.error(
                kpath,
                format!(
                    "unsupported protocol options \"{key}\" (supported: {PROTOCOL_OPTIONS_KEY})"
                ),
            );
            continue;
        }
        let Some(po) = Obj::new(v, &kpath, HTTP_PROTOCOL_OPTIONS, d) else {
            continue;
        };
        if let Some(o) = po.object("common_http_protocol_options", COMMON, d) {
            read_common(&o, &mut out, d);
        }
        if let Some(o) = po.object("upstream_http_protocol_options", UPSTREAM_HTTP_OPTIONS, d) {
            read_upstream_http_options(&o, &mut out, d);
        }
        let explicit = po.object("explicit_http_config", EXPLICIT, d);
        let downstream = po.get("use_downstream_protocol_config").is_some();
        let auto = po.get("auto_config").is_some();
        match [explicit.is_some(), downstream, auto].iter().filter(|b| **b).count() {
            1 => {}
            0 => d.error(
                &kpath,
                "one of explicit_http_config, use_downstream_protocol_config or auto_config is required",
            ),
            _ => d.error(
                &kpath,
                "explicit_http_config, use_downstream_protocol_config and auto_config are mutually exclusive",
            ),
        }
        if let Some(a) = po.object("auto_config", AUTO, d) {
            out.protocol = UpstreamProtocol::Auto;
            let _ = a.object("http_protocol_options", HTTP1, d);
            if let Some(o) = a.object("http2_protocol_options", HTTP2, d) {
                read_http2(&o, &mut out, d);
            }
        }
        if let Some(e) = explicit {
            let h1 = e.object("http_protocol_options", HTTP1, d);
            let h2 = e.object("http2_protocol_options", HTTP2, d);
            match (h1, h2) {
                (Some(_), Some(_)) => d.error(&e.path, "give one protocol"),
                (_, Some(o)) => {
                    out.protocol = UpstreamProtocol::Http2;
                    read_http2(&o, &mut out, d);
                }
                (Some(_), None) => out.protocol = UpstreamProtocol::Http1,
                (None, None) if e.get("http3_protocol_options").is_none() => d.error(
                    &e.path,
                    "one of http_protocol_options or http2_protocol_options is required",
                ),
                _ => {}
            }
        }
        if let Some(u) = po.object("use_downstream_protocol_config", EXPLICIT, d) {
            out.protocol = UpstreamProtocol::Downstream;
            let _ = u.object("http_protocol_options", HTTP1, d);
            if let Some(o) = u.object("http2_protocol_options", HTTP2, d) {
                read_http2(&o, &mut out, d);
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) const TABLES: &[(&str, FieldTable)] = &[
    ("HttpProtocolOptions", HTTP_PROTOCOL_OPTIONS),
    ("ExplicitHttpConfig", EXPLICIT),
    ("AutoHttpConfig", AUTO),
    ("UpstreamHttpProtocolOptions", UPSTREAM_HTTP_OPTIONS),
    ("CommonHttpProtocolOptions", COMMON),
    ("Http1ProtocolOptions", HTTP1),
    ("Http2ProtocolOptions", HTTP2),
];
