//! Header work of the connection manager and router: hop-by-hop headers, header mutations
//! with `%VARIABLE%` values, `x-forwarded-for`, request IDs.

use crate::config::http::{AppendAction, FormatPart, HeaderMutations, HeaderToAdd};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use std::fmt::Write;
use std::net::SocketAddr;

/// Header names the data path looks up, parsed once (a `&str` name is parsed and hashed at
/// every lookup).
pub mod names {
    use http::header::HeaderName;
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    pub const X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
    pub const X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
    pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
    pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
    pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    pub const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    pub const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
}

/// Headers that describe one hop's connection and are never forwarded. A `static`: a `const`
/// array of `HeaderName`s is built and dropped again at every use.
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    http::header::CONNECTION,
    names::KEEP_ALIVE,
    names::PROXY_CONNECTION,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    names::HTTP2_SETTINGS,
    http::header::TE,
];

/// How many HOP_BY_HOP has: one bit each in `strip_hop_by_hop`, `connection` first.
const HOP_BY_HOP_COUNT: usize = 7;
const _: () = assert!(HOP_BY_HOP_COUNT <= u8::BITS as usize);
const CONNECTION_BIT: u8 = 1;

/// `name`'s bit in `strip_hop_by_hop`'s set, if it is one of HOP_BY_HOP.
fn hop_bit(name: &HeaderName) -> u8 {
    HOP_BY_HOP
        .iter()
        .position(|n| n == name)
        .map_or(0, |i| 1 << i)
}

/// Removes hop-by-hop headers, and the headers `Connection` names. `te: trailers` is kept
/// (gRPC needs it); `upgrade` is kept when the exchange is an upgrade.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // One scan of the names, no hashing: which hop-by-hop names the message has (most have
    // none, a response from an HTTP/1.1 upstream often just `connection`). Only those are
    // removed: each removal hashes its name.
    let mut present = h.keys().fold(0u8, |set, k| set | hop_bit(k));
    if present == 0 {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        // Every `Connection` field (it may come more than once). `close`, `keep-alive` and
        // the like name no header to remove (beyond the fixed ones): no parse, no allocation
        // for them.
        let named: Vec<HeaderName> = h
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|c| c.to_str().unwrap_or("").split(','))
            .map(str::trim)
            .filter(|n| {
                !(n.eq_ignore_ascii_case("close")
                    || n.eq_ignore_ascii_case("keep-alive")
                    || n.eq_ignore_ascii_case("upgrade")
                    || n.eq_ignore_ascii_case("te")
                    || n.is_empty())
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for n in named {
            // A fixed hop-by-hop name that `Connection` names is removed below.
            match hop_bit(&n) {
                0 => {
                    h.remove(n);
                }
                bit => present |= bit,
            }
        }
    }
    let trailers = h
        .get(http::header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) == 0
            || keep_upgrade && (name == http::header::UPGRADE || name == http::header::CONNECTION)
        {
            continue;
        }
        h.remove(name);
    }
    if trailers {
        h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
}

/// What `%VARIABLE%`s expand to for one request.
pub struct FormatContext<'a> {
    pub downstream_remote: SocketAddr,
    pub downstream_local: SocketAddr,
    pub protocol: &'a str,
    pub upstream_remote: Option<SocketAddr>,
    pub request_headers: Option<&'a HeaderMap>,
    pub start: std::time::SystemTime,
}

pub(super) fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is valid for its length; gethostname NUL-terminates on success.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return String::new();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    })
}

/// `own`: the map being changed, read for `%REQ(…)%` when the context has no request.
fn expand(h: &HeaderToAdd, cx: &FormatContext, own: &HeaderMap, out: &mut String) {
    expand_format(&h.value, cx, own, out)
}

/// A header format's value in this context (`%REQ(…)%` from `own` when the context has no
/// request).
pub fn expand_format(
    f: &crate::config::http::HeaderFormat,
    cx: &FormatContext,
    own: &HeaderMap,
    out: &mut String,
) {
    for p in &f.parts {
        match p {
            FormatPart::Literal(s) => out.push_str(s),
            FormatPart::DownstreamRemoteAddress => {
                let _ = write!(out, "{}", cx.downstream_remote);
            }
            FormatPart::DownstreamRemoteAddressWithoutPort => {
                let _ = write!(out, "{}", cx.downstream_remote.ip());
            }
            FormatPart::DownstreamLocalAddress => {
                let _ = write!(out, "{}", cx.downstream_local);
            }
            FormatPart::DownstreamLocalAddressWithoutPort => {
                let _ = write!(out, "{}", cx.downstream_local.ip());
            }
            FormatPart::DownstreamLocalPort => {
                let _ = write!(out, "{}", cx.downstream_local.port());
            }
            FormatPart::Protocol => out.push_str(cx.protocol),
            FormatPart::UpstreamRemoteAddress => {
                if let Some(a) = cx.upstream_remote {
                    let _ = write!(out, "{a}");
                }
            }
            FormatPart::Hostname => out.push_str(hostname()),
            FormatPart::StartTime => out.push_str(&crate::xds::rfc3339(cx.start)),
            FormatPart::RequestHeader(name) => {
                if let Some(v) = cx
                    .request_headers
                    .unwrap_or(own)
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                {
                    out.push_str(v);
                }
            }
        }
    }
}

fn add(headers: &mut HeaderMap, list: &[HeaderToAdd], cx: &FormatContext) {
    let mut buf = String::new();
    for h in list {
        buf.clear();
        expand(h, cx, headers, &mut buf);
        if buf.is_empty() && !h.keep_empty_value {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&buf),
        ) else {
            continue;
        };
        match h.append {
            AppendAction::AppendIfExistsOrAdd => {
                headers.append(name, value);
            }
            AppendAction::AddIfAbsent => {
                if !headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            AppendAction::OverwriteIfExistsOrAdd => {
                headers.insert(name, value);
            }
            AppendAction::OverwriteIfExists => {
                if headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
        }
    }
}

/// Applies the request mutations of each level, most specific first.
pub fn mutate_request(headers: &mut HeaderMap, levels: &[&HeaderMutations], cx: &FormatContext) {
    for m in levels {
        for r in &m.request_remove {
            headers.remove(r.as_str());
        }
        add(headers, &m.request_add, cx);
    }
}

/// Applies the response mutations of each level, most specific first.
pub fn mutate_response(headers: &mut HeaderMap, levels: &[&HeaderMutations], cx: &FormatContext) {
    for m in levels {
        for r in &m.response_remove {
            headers.remove(r.as_str());
        }
        add(headers, &m.response_add, cx);
    }
}

/// A random (version 4) UUID, as Envoy's request IDs.
pub fn uuid4() -> HeaderValue {
    let mut b = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{byte:02x}");
    }
    HeaderValue::from_str(&s).expect("hex and dashes are a valid header value")
}

/// Appends `ip` to `x-forwarded-for`.
pub fn append_xff(headers: &mut HeaderMap, ip: std::net::IpAddr) {
    let ip = ip.to_canonical();
    let v = match headers
        .get(names::X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&v) {
        headers.insert(names::X_FORWARDED_FOR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields (appended in order) after `strip_hop_by_hop`.
    fn stripped(fields: &[(&'static str, &'static str)], keep_upgrade: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(*n, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h, keep_upgrade);
        h
    }

    /// Its names, sorted.
    fn sorted_names(h: &HeaderMap) -> Vec<&str> {
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        left
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_go() {
        let h = stripped(
            &[
                ("connection", "keep-alive, x-private"),
                ("keep-alive", "timeout=5"),
                ("x-private", "1"),
                ("te", "trailers, deflate"),
                ("x-kept", "1"),
            ],
            false,
        );
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["te"], "trailers");
        assert!(h.contains_key("x-kept"));

        // Only `connection` (a keep-alive upstream's response); nothing else goes.
        let h = stripped(
            &[("connection", "keep-alive"), ("content-length", "2")],
            false,
        );
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("content-length"));

        // An upgrade keeps `connection` and `upgrade`, still drops the others and what
        // `connection` names, including a fixed hop-by-hop name it lists.
        let h = stripped(
            &[
                ("connection", "upgrade, x-private, proxy-connection"),
                ("upgrade", "websocket"),
                ("x-private", "1"),
                ("proxy-connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
                ("x-kept", "1"),
            ],
            true,
        );
        assert_eq!(sorted_names(&h), ["connection", "upgrade", "x-kept"]);

        // `Connection` more than once: what each field names goes.
        let h = stripped(
            &[
                ("connection", "keep-alive"),
                ("connection", "x-one, x-two"),
                ("x-one", "1"),
                ("x-two", "2"),
                ("x-kept", "1"),
            ],
            false,
        );
        assert_eq!(sorted_names(&h), ["x-kept"]);

        // Nothing hop-by-hop: untouched.
        let h = stripped(&[("x-kept", "1")], false);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn uuids_are_version_4() {
        let u = uuid4();
        let s = u.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(uuid4(), u);
    }

    #[test]
    fn xff_is_appended() {
        let mut h = HeaderMap::new();
        append_xff(&mut h, "10.0.0.1".parse().unwrap());
        append_xff(&mut h, "::ffff:10.0.0.2".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
    }
}
