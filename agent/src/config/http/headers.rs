//! Header mutations of a route configuration (`*_headers_to_add`, `*_headers_to_remove`)
//! and Envoy's `%VARIABLE%` header value formats, parsed once.

use super::super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::*;

use Field::{Rejected as R, Supported as S};

pub(super) const HEADER_VALUE_OPTION: FieldTable = &[
    ("header", S),
    ("append", S),
    ("append_action", S),
    ("keep_empty_value", S),
];

pub(super) const HEADER_VALUE: FieldTable =
    &[("key", S), ("value", S), ("raw_value", R("use value"))];

pub(super) fn read_header_mutations(o: &Obj, d: &mut Diagnostics) -> HeaderMutations {
    HeaderMutations {
        request_add: read_headers_to_add(o, "request_headers_to_add", d),
        request_remove: read_headers_to_remove(o, "request_headers_to_remove", d),
        response_add: read_headers_to_add(o, "response_headers_to_add", d),
        response_remove: read_headers_to_remove(o, "response_headers_to_remove", d),
    }
}

pub(super) fn read_headers_to_remove(o: &Obj, key: &str, d: &mut Diagnostics) -> Vec<String> {
    let mut out = Vec::new();
    for (path, v) in o.list(key, d) {
        match v.as_str().map(str::to_ascii_lowercase) {
            Some(h)
                if http::HeaderName::from_bytes(h.as_bytes()).is_ok()
                    && !h.starts_with(':')
                    && h != "host" =>
            {
                out.push(h)
            }
            Some(h) => d.error(path, format!("\"{h}\" is not a header that can be removed")),
            None => d.error(path, "expected a header name"),
        }
    }
    out
}

pub(super) fn read_headers_to_add(o: &Obj, key: &str, d: &mut Diagnostics) -> Vec<HeaderToAdd> {
    let mut out = Vec::new();
    for (path, v) in o.list(key, d) {
        let Some(opt) = Obj::new(v, &path, HEADER_VALUE_OPTION, d) else {
            continue;
        };
        let Some(h) = opt.object("header", HEADER_VALUE, d) else {
            d.error(opt.at("header"), "missing required field");
            continue;
        };
        let Some(name) = h.required_string("key", d).map(|k| k.to_ascii_lowercase()) else {
            continue;
        };
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || name.starts_with(':')
            || name == "host"
        {
            d.error(
                h.at("key"),
                format!("\"{name}\" is not a header that can be added"),
            );
            continue;
        }
        let raw = h.string("value", d).unwrap_or_default();
        let Some(value) = parse_header_format(&raw, &h.at("value"), d) else {
            continue;
        };
        let append = match (opt.boolean("append", d), opt.get("append_action")) {
            (Some(_), Some(_)) => {
                d.error(&path, "append and append_action are mutually exclusive");
                continue;
            }
            (Some(true), None) => AppendAction::AppendIfExistsOrAdd,
            (Some(false), None) => AppendAction::OverwriteIfExistsOrAdd,
            _ => match opt
                .enumeration(
                    "append_action",
                    &[
                        "APPEND_IF_EXISTS_OR_ADD",
                        "ADD_IF_ABSENT",
                        "OVERWRITE_IF_EXISTS_OR_ADD",
                        "OVERWRITE_IF_EXISTS",
                    ],
                    &[],
                    d,
                )
                .as_deref()
            {
                Some("ADD_IF_ABSENT") => AppendAction::AddIfAbsent,
                Some("OVERWRITE_IF_EXISTS_OR_ADD") => AppendAction::OverwriteIfExistsOrAdd,
                Some("OVERWRITE_IF_EXISTS") => AppendAction::OverwriteIfExists,
                _ => AppendAction::AppendIfExistsOrAdd,
            },
        };
        out.push(HeaderToAdd {
            name,
            value,
            append,
            keep_empty_value: opt.boolean("keep_empty_value", d).unwrap_or(false),
        });
    }
    out
}

/// Parses Envoy's `%VARIABLE%` header formats (`%%` is a literal `%`).
pub(super) fn parse_header_format(
    s: &str,
    path: &str,
    d: &mut Diagnostics,
) -> Option<HeaderFormat> {
    if s.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        d.error(path, "header values must not contain CR, LF or NUL");
        return None;
    }
    let mut parts = Vec::new();
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
        let Some(end) = rest.find('%') else {
            d.error(path, format!("unterminated %VARIABLE% in \"{s}\""));
            return None;
        };
        let var = &rest[..end];
        rest = &rest[end + 1..];
        let part = match var {
            "DOWNSTREAM_REMOTE_ADDRESS" => FormatPart::DownstreamRemoteAddress,
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
                FormatPart::DownstreamRemoteAddressWithoutPort
            }
            "DOWNSTREAM_LOCAL_ADDRESS" => FormatPart::DownstreamLocalAddress,
            "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => {
                FormatPart::DownstreamLocalAddressWithoutPort
            }
            "DOWNSTREAM_LOCAL_PORT" => FormatPart::DownstreamLocalPort,
            "PROTOCOL" => FormatPart::Protocol,
            "UPSTREAM_REMOTE_ADDRESS" => FormatPart::UpstreamRemoteAddress,
            "HOSTNAME" => FormatPart::Hostname,
            "START_TIME" => FormatPart::StartTime,
            v if v.starts_with("REQ(") && v.ends_with(')') => {
                let h = v[4..v.len() - 1].to_ascii_lowercase();
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    d.error(path, format!("%{v}%: \"{h}\" is not a header name"));
                    return None;
                }
                FormatPart::RequestHeader(h)
            }
            other => {
                d.error(
                    path,
                    format!("unsupported variable %{other}% (supported: DOWNSTREAM_REMOTE_ADDRESS[_WITHOUT_PORT], DOWNSTREAM_LOCAL_ADDRESS[_WITHOUT_PORT], DOWNSTREAM_LOCAL_PORT, PROTOCOL, UPSTREAM_REMOTE_ADDRESS, HOSTNAME, START_TIME, REQ(header))"),
                );
                return None;
            }
        };
        if !lit.is_empty() {
            parts.push(FormatPart::Literal(std::mem::take(&mut lit)));
        }
        parts.push(part);
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(FormatPart::Literal(lit));
    }
    Some(HeaderFormat { parts })
}
