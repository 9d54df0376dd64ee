//! Access logs of the connection manager (`access_log`): the file, stdout and stderr
//! loggers, their formats (Envoy's command operators, text or JSON) parsed once, and
//! their filters.

use super::super::walk::{Diagnostics, Field, FieldTable, Obj};
use crate::config::yaml::Value;
use std::path::PathBuf;

use Field::{Ignored as I, Rejected as R, Supported as S};

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogSink {
    File(PathBuf),
    Stdout,
    Stderr,
}

/// One command operator of a log format.
#[derive(Debug, Clone, PartialEq)]
pub enum LogOp {
    StartTime,
    /// `%REQ(X?Y):Z%`: header X, else Y, at most Z characters.
    RequestHeader(String, Option<String>, Option<usize>),
    ResponseHeader(String, Option<String>, Option<usize>),
    ResponseTrailer(String, Option<String>, Option<usize>),
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    BytesReceived,
    BytesSent,
    Duration,
    ResponseDuration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamTransportFailureReason,
    UpstreamRequestAttemptCount,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamLocalPort,
    Protocol,
    RouteName,
    Hostname,
    ConnectionId,
    /// TLS of the downstream connection, when the chain terminated it.
    DownstreamPeerUriSan,
    DownstreamPeerDnsSan,
    DownstreamTlsVersion,
    DownstreamTlsCipher,
    /// The SNI the client asked for (read by tls_inspector or the handshake).
    RequestedServerName,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogToken {
    Literal(String),
    Op(LogOp),
}

#[derive(Debug, Clone, PartialEq)]
pub enum JsonField {
    Format(Vec<LogToken>),
    Object(Vec<(String, JsonField)>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogFormat {
    Text(Vec<LogToken>),
    Json(Vec<(String, JsonField)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Eq,
    Ge,
    Le,
    Ne,
}

impl Comparison {
    pub fn holds(self, value: u64, bound: u64) -> bool {
        match self {
            Comparison::Eq => value == bound,
            Comparison::Ge => value >= bound,
            Comparison::Le => value <= bound,
            Comparison::Ne => value != bound,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogFilter {
    StatusCode(Comparison, u64),
    /// Milliseconds.
    Duration(Comparison, u64),
    /// Any of these flags (empty: any flag at all).
    ResponseFlags(Vec<String>),
    NotHealthCheck,
    And(Vec<LogFilter>),
    Or(Vec<LogFilter>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLog {
    pub sink: LogSink,
    pub format: LogFormat,
    pub filter: Option<LogFilter>,
}

/// Envoy's default access log format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

const FILE_TYPE: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_TYPE: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

pub(super) const ACCESS_LOG: FieldTable = &[("name", S), ("filter", S), ("typed_config", S)];

pub(super) const FILE_ACCESS_LOG: FieldTable = &[
    ("@type", S),
    ("path", S),
    ("format", S),
    ("json_format", S),
    ("typed_json_format", R("use json_format")),
    ("log_format", S),
];

pub(super) const STREAM_ACCESS_LOG: FieldTable = &[("@type", S), ("log_format", S)];

pub(super) const LOG_FORMAT: FieldTable = &[
    ("text_format", S),
    ("json_format", S),
    ("text_format_source", S),
    ("omit_empty_values", R("empty values are written as a dash")),
    ("content_type", I("only for local replies")),
    ("formatters", R("formatter extensions are not supported")),
    (
        "json_format_options",
        I("JSON keys are written in the order given"),
    ),
];

pub(super) const INLINE_SOURCE: FieldTable = &[
    ("inline_string", S),
    ("inline_bytes", R("use inline_string")),
    ("filename", R("use inline_string")),
    ("environment_variable", R("use inline_string")),
    ("watched_directory", R("use inline_string")),
];

pub(super) const ACCESS_LOG_FILTER: FieldTable = &[
    ("status_code_filter", S),
    ("duration_filter", S),
    ("not_health_check_filter", S),
    ("traceable_filter", R("tracing is not supported")),
    ("runtime_filter", R("runtime sampling is not supported")),
    ("and_filter", S),
    ("or_filter", S),
    ("header_filter", R("header filters are not supported yet")),
    ("response_flag_filter", S),
    (
        "grpc_status_filter",
        R("gRPC status filters are not supported yet"),
    ),
    ("extension_filter", R("filter extensions are not supported")),
    ("metadata_filter", R("dynamic metadata is not supported")),
    ("log_type_filter", R("log types are not supported")),
];

pub(super) const COMPARISON_FILTER: FieldTable = &[("comparison", S)];
pub(super) const COMPARISON: FieldTable = &[("op", S), ("value", S)];
pub(super) const RUNTIME_UINT32: FieldTable = &[
    ("default_value", S),
    (
        "runtime_key",
        I("runtime overrides are not supported; default_value applies"),
    ),
];
pub(super) const FILTER_LIST: FieldTable = &[("filters", S)];
pub(super) const RESPONSE_FLAG_FILTER: FieldTable = &[("flags", S)];
pub(super) const NOT_HEALTH_CHECK: FieldTable = &[];

/// Envoy's response flags, by short name.
pub const RESPONSE_FLAGS: &[&str] = &[
    "UH", "UF", "UO", "NR", "URX", "UT", "LR", "UC", "DC", "DI", "FI", "RL", "UAEX", "RLSE", "UR",
    "IH", "SI", "DPE", "UPE", "UMSDR", "OM", "DF", "NC", "DO",
];

fn header_arg(arg: &str, path: &str, d: &mut Diagnostics) -> Option<(String, Option<String>)> {
    let (main, alt) = match arg.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (arg, None),
    };
    let check = |h: &str, d: &mut Diagnostics| {
        let lower = h.to_ascii_lowercase();
        let ok = if let Some(p) = lower.strip_prefix(':') {
            matches!(p, "method" | "path" | "authority" | "scheme" | "status")
        } else {
            http::HeaderName::from_bytes(lower.as_bytes()).is_ok()
        };
        if !ok {
            d.error(path, format!("\"{h}\" is not a header name"));
        }
        ok.then_some(lower)
    };
    let main = check(main, d)?;
    let alt = match alt {
        Some(a) => Some(check(a, d)?),
        None => None,
    };
    Some((main, alt))
}

/// Parses a format string of Envoy's command operators.
pub fn parse_log_format(s: &str, path: &str, d: &mut Diagnostics) -> Option<Vec<LogToken>> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        lit.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            lit.push('%');
            rest = r;
            continue;
        }
        // NAME, then (ARG) with anything but ')' inside, then :LEN, then '%'.
        let name_len = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..name_len];
        let mut after = &rest[name_len..];
        let mut arg = None;
        if let Some(r) = after.strip_prefix('(') {
            let Some(close) = r.find(')') else {
                d.error(path, format!("%{name}(: missing )"));
                return None;
            };
            arg = Some(&r[..close]);
            after = &r[close + 1..];
        }
        let mut max_len = None;
        if let Some(r) = after.strip_prefix(':') {
            let digits = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            match r[..digits].parse::<usize>() {
                Ok(n) => max_len = Some(n),
                Err(_) => {
                    d.error(path, format!("%{name}: a length must follow the colon"));
                    return None;
                }
            }
            after = &r[digits..];
        }
        let Some(r) = after.strip_prefix('%') else {
            d.error(path, format!("unterminated command operator in \"{s}\""));
            return None;
        };
        let cmd = &rest[..rest.len() - r.len() - 1];
        rest = r;
        if name == "ENVIRONMENT" {
            // Read once, with the configuration, as Envoy does; `-` when unset.
            let Some(var) = arg.filter(|a| !a.is_empty()) else {
                d.error(
                    path,
                    format!("%{cmd}%: name the variable: %ENVIRONMENT(NAME)%"),
                );
                return None;
            };
            let value = std::env::var(var).unwrap_or_else(|_| "-".into());
            lit.extend(value.chars().take(max_len.unwrap_or(usize::MAX)));
            continue;
        }
        let op = match (name, arg) {
            ("REQ", Some(a)) => {
                let (m, alt) = header_arg(a, path, d)?;
                LogOp::RequestHeader(m, alt, max_len)
            }
            ("RESP", Some(a)) => {
                let (m, alt) = header_arg(a, path, d)?;
                LogOp::ResponseHeader(m, alt, max_len)
            }
            ("TRAILER", Some(a)) => {
                let (m, alt) = header_arg(a, path, d)?;
                LogOp::ResponseTrailer(m, alt, max_len)
            }
            ("START_TIME", None) => LogOp::StartTime,
            ("START_TIME", Some(_)) => {
                d.error(
                    path,
                    format!("%{cmd}%: custom time formats are not supported; use %START_TIME%"),
                );
                return None;
            }
            ("RESPONSE_CODE", None) => LogOp::ResponseCode,
            ("RESPONSE_FLAGS", None) => LogOp::ResponseFlags,
            ("RESPONSE_CODE_DETAILS", None) => LogOp::ResponseCodeDetails,
            ("BYTES_RECEIVED", None) => LogOp::BytesReceived,
            ("BYTES_SENT", None) => LogOp::BytesSent,
            ("DURATION", None) => LogOp::Duration,
            ("RESPONSE_DURATION", None) => LogOp::ResponseDuration,
            ("UPSTREAM_HOST", None) => LogOp::UpstreamHost,
            ("UPSTREAM_CLUSTER", None) => LogOp::UpstreamCluster,
            ("UPSTREAM_TRANSPORT_FAILURE_REASON", None) => LogOp::UpstreamTransportFailureReason,
            ("UPSTREAM_REQUEST_ATTEMPT_COUNT", None) => LogOp::UpstreamRequestAttemptCount,
            ("DOWNSTREAM_REMOTE_ADDRESS", None) => LogOp::DownstreamRemoteAddress,
            ("DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", None) => {
                LogOp::DownstreamRemoteAddressWithoutPort
            }
            ("DOWNSTREAM_LOCAL_ADDRESS", None) => LogOp::DownstreamLocalAddress,
            ("DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", None) => {
                LogOp::DownstreamLocalAddressWithoutPort
            }
            ("DOWNSTREAM_LOCAL_PORT", None) => LogOp::DownstreamLocalPort,
            ("PROTOCOL", None) => LogOp::Protocol,
            ("ROUTE_NAME", None) => LogOp::RouteName,
            ("HOSTNAME", None) => LogOp::Hostname,
            ("CONNECTION_ID", None) => LogOp::ConnectionId,
            ("DOWNSTREAM_PEER_URI_SAN", None) => LogOp::DownstreamPeerUriSan,
            ("DOWNSTREAM_PEER_DNS_SAN", None) => LogOp::DownstreamPeerDnsSan,
            ("DOWNSTREAM_TLS_VERSION", None) => LogOp::DownstreamTlsVersion,
            ("DOWNSTREAM_TLS_CIPHER", None) => LogOp::DownstreamTlsCipher,
            ("REQUESTED_SERVER_NAME", None) => LogOp::RequestedServerName,
            _ => {
                d.error(
                    path,
                    format!("unsupported command operator %{cmd}% (see docs/http.md, Access logs)"),
                );
                return None;
            }
        };
        if !lit.is_empty() {
            out.push(LogToken::Literal(std::mem::take(&mut lit)));
        }
        out.push(LogToken::Op(op));
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        out.push(LogToken::Literal(lit));
    }
    Some(out)
}

fn read_json_format(
    v: &Value,
    path: &str,
    d: &mut Diagnostics,
) -> Option<Vec<(String, JsonField)>> {
    let Value::Mapping(m) = v else {
        d.error(path, "expected a mapping of keys to format strings");
        return None;
    };
    let mut out = Vec::new();
    for (k, v) in m.iter() {
        let Some(k) = k.as_str() else {
            d.error(path, "keys must be strings");
            continue;
        };
        let p = format!("{path}.{k}");
        let f = match v {
            Value::String(s) => JsonField::Format(parse_log_format(s, &p, d)?),
            Value::Mapping(_) => JsonField::Object(read_json_format(v, &p, d)?),
            Value::Number(n) => JsonField::Format(vec![LogToken::Literal(n.to_string())]),
            Value::Bool(b) => JsonField::Format(vec![LogToken::Literal(b.to_string())]),
            _ => {
                d.error(p, "expected a format string or a mapping");
                continue;
            }
        };
        out.push((k.to_string(), f));
    }
    Some(out)
}

fn read_log_format(o: &Obj, d: &mut Diagnostics) -> Option<LogFormat> {
    let f = o.object("log_format", LOG_FORMAT, d)?;
    if let Some(v) = f.get("json_format") {
        return read_json_format(v, &f.at("json_format"), d).map(LogFormat::Json);
    }
    let text = match (
        f.string("text_format", d),
        f.object("text_format_source", INLINE_SOURCE, d),
    ) {
        (Some(t), _) => t,
        (None, Some(src)) => src.string("inline_string", d).unwrap_or_default(),
        (None, None) => DEFAULT_FORMAT.to_string(),
    };
    parse_log_format(&text, &f.at("text_format"), d).map(LogFormat::Text)
}

fn read_comparison(o: &Obj, key: &str, d: &mut Diagnostics) -> Option<(Comparison, u64)> {
    let f = o.object(key, COMPARISON_FILTER, d)?;
    let c = f.object("comparison", COMPARISON, d)?;
    let op = match c
        .enumeration("op", &["EQ", "GE", "LE", "NE"], &[], d)
        .as_deref()
    {
        Some("GE") => Comparison::Ge,
        Some("LE") => Comparison::Le,
        Some("NE") => Comparison::Ne,
        _ => Comparison::Eq,
    };
    let value = c
        .object("value", RUNTIME_UINT32, d)
        .and_then(|v| v.uint("default_value", 0, u32::MAX as u64, d))
        .unwrap_or(0);
    Some((op, value))
}

fn read_filter(v: &Value, path: &str, d: &mut Diagnostics) -> Option<LogFilter> {
    let f = Obj::new(v, path, ACCESS_LOG_FILTER, d)?;
    let set: Vec<&str> = [
        "status_code_filter",
        "duration_filter",
        "not_health_check_filter",
        "and_filter",
        "or_filter",
        "response_flag_filter",
    ]
    .into_iter()
    .filter(|k| f.get(k).is_some())
    .collect();
    if set.len() != 1 {
        d.error(path, "exactly one filter is required");
        return None;
    }
    match set[0] {
        "status_code_filter" => {
            read_comparison(&f, "status_code_filter", d).map(|(c, v)| LogFilter::StatusCode(c, v))
        }
        "duration_filter" => {
            read_comparison(&f, "duration_filter", d).map(|(c, v)| LogFilter::Duration(c, v))
        }
        "not_health_check_filter" => {
            let _ = f.object("not_health_check_filter", NOT_HEALTH_CHECK, d);
            Some(LogFilter::NotHealthCheck)
        }
        "response_flag_filter" => {
            let r = f.object("response_flag_filter", RESPONSE_FLAG_FILTER, d)?;
            let mut flags = Vec::new();
            for (p, v) in r.list("flags", d) {
                match v.as_str() {
                    Some(s) if RESPONSE_FLAGS.contains(&s) => flags.push(s.to_string()),
                    _ => d.error(
                        p,
                        format!(
                            "unknown response flag (known: {})",
                            RESPONSE_FLAGS.join(", ")
                        ),
                    ),
                }
            }
            Some(LogFilter::ResponseFlags(flags))
        }
        key => {
            let l = f.object(key, FILTER_LIST, d)?;
            let mut subs = Vec::new();
            for (p, v) in l.list("filters", d) {
                subs.push(read_filter(v, &p, d)?);
            }
            if subs.len() < 2 {
                d.error(l.at("filters"), "at least two filters are required");
            }
            Some(if key == "and_filter" {
                LogFilter::And(subs)
            } else {
                LogFilter::Or(subs)
            })
        }
    }
}

/// Reads `access_log` entries of a connection manager.
pub fn read_access_logs(o: &Obj, d: &mut Diagnostics) -> Vec<AccessLog> {
    let mut out = Vec::new();
    for (path, v) in o.list("access_log", d) {
        let Some(a) = Obj::new(v, &path, ACCESS_LOG, d) else {
            continue;
        };
        let name = a.string("name", d).unwrap_or_default();
        let type_url = a
            .get("typed_config")
            .and_then(|t| t.get("@type"))
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_string();
        let filter = match a.get("filter") {
            Some(f) => match read_filter(f, &a.at("filter"), d) {
                Some(f) => Some(f),
                None => continue,
            },
            None => None,
        };
        let (sink, format) = match type_url.as_str() {
            FILE_TYPE => {
                let Some(tc) = a.object("typed_config", FILE_ACCESS_LOG, d) else {
                    continue;
                };
                let Some(p) = tc.required_string("path", d) else {
                    continue;
                };
                if p.is_empty() || p.contains('\0') {
                    d.error(tc.at("path"), "must be a file path");
                    continue;
                }
                let sink = match p.as_str() {
                    "/dev/stdout" => LogSink::Stdout,
                    "/dev/stderr" => LogSink::Stderr,
                    _ => LogSink::File(PathBuf::from(p)),
                };
                let format = if let Some(f) = tc.string("format", d) {
                    parse_log_format(&f, &tc.at("format"), d).map(LogFormat::Text)
                } else if let Some(j) = tc.get("json_format") {
                    read_json_format(j, &tc.at("json_format"), d).map(LogFormat::Json)
                } else if tc.get("log_format").is_some() {
                    read_log_format(&tc, d)
                } else {
                    parse_log_format(DEFAULT_FORMAT, &tc.at("log_format"), d).map(LogFormat::Text)
                };
                (sink, format)
            }
            STDOUT_TYPE | STDERR_TYPE => {
                let Some(tc) = a.object("typed_config", STREAM_ACCESS_LOG, d) else {
                    continue;
                };
                let format = if tc.get("log_format").is_some() {
                    read_log_format(&tc, d)
                } else {
                    parse_log_format(DEFAULT_FORMAT, &tc.at("log_format"), d).map(LogFormat::Text)
                };
                let sink = if type_url == STDOUT_TYPE {
                    LogSink::Stdout
                } else {
                    LogSink::Stderr
                };
                (sink, format)
            }
            _ => {
                let what = if type_url.is_empty() { name } else { type_url };
                d.error(
                    &path,
                    format!("unsupported access logger \"{what}\" (supported: envoy.access_loggers.file, envoy.access_loggers.stdout, envoy.access_loggers.stderr)"),
                );
                continue;
            }
        };
        if let Some(format) = format {
            out.push(AccessLog {
                sink,
                format,
                filter,
            });
        }
    }
    out
}

#[cfg(test)]
pub(crate) const TABLES: &[(&str, FieldTable)] = &[
    ("AccessLog", ACCESS_LOG),
    ("FileAccessLog", FILE_ACCESS_LOG),
    ("StdoutAccessLog / StderrAccessLog", STREAM_ACCESS_LOG),
    ("SubstitutionFormatString", LOG_FORMAT),
    ("DataSource (text_format_source)", INLINE_SOURCE),
    ("AccessLogFilter", ACCESS_LOG_FILTER),
    ("StatusCodeFilter / DurationFilter", COMPARISON_FILTER),
    ("ComparisonFilter", COMPARISON),
    ("RuntimeUInt32", RUNTIME_UINT32),
    ("AndFilter / OrFilter", FILTER_LIST),
    ("ResponseFlagFilter", RESPONSE_FLAG_FILTER),
    ("NotHealthCheckFilter", NOT_HEALTH_CHECK),
];
