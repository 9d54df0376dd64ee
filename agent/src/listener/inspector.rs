//! `envoy.filters.listener.tls_inspector` and `envoy.filters.listener.http_inspector`.
//!
//! The TLS inspector peeks at the client's first bytes and, when they are a ClientHello,
//! sets the transport protocol `tls`, the server name (SNI) and the application protocols
//! (ALPN) the filter chain match sees. The bytes stay in the socket: a chain that
//! terminates TLS handshakes with them, one that does not forwards them untouched
//! (passthrough by SNI).
//!
//! `http_inspector`: peeks at the client's first bytes (without
//! consuming them) and, when they are an HTTP/1.x request line or the HTTP/2 connection
//! preface, sets the application protocol the filter chain match sees: `http/1.0`, `http/1.1`
//! or `h2c`. Anything else is left alone. It gives up early on bytes no request line starts
//! with (TLS, binary protocols), so only a silent client waits, bounded by the listener's
//! `listener_filters_timeout`.

use crate::stats::{Counter, Store};
use crate::transport::Downstream;
use std::sync::Arc;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Most bytes looked at for a request line (Envoy's inspector reads up to 64 KiB).
const MAX_INSPECT: usize = 64 * 1024;
const INITIAL_INSPECT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    NeedMore,
    Http10,
    Http11,
    H2c,
    NotHttp,
}

/// Classifies what the client sent so far.
pub fn detect(data: &[u8]) -> Detected {
    let n = data.len().min(H2_PREFACE.len());
    if data[..n] == H2_PREFACE[..n] && !data.is_empty() {
        return if data.len() >= H2_PREFACE.len() {
            Detected::H2c
        } else {
            Detected::NeedMore
        };
    }
    // METHOD SP request-target SP HTTP/1.x CRLF; the method is an upper-case token.
    let line_end = data.windows(2).position(|w| w == b"\r\n");
    let line = &data[..line_end.unwrap_or(data.len())];
    let method_len = line
        .iter()
        .position(|b| !(b.is_ascii_uppercase() || *b == b'-' || *b == b'_'))
        .unwrap_or(line.len());
    match line.get(method_len) {
        None if line_end.is_none() && method_len < 32 => return Detected::NeedMore,
        Some(b' ') if method_len > 0 => {}
        _ => return Detected::NotHttp,
    }
    let Some(end) = line_end else {
        // The request line is still arriving; a control byte means it is not one.
        return if line.iter().any(|b| b.is_ascii_control()) {
            Detected::NotHttp
        } else {
            Detected::NeedMore
        };
    };
    let _ = end;
    let rest = &line[method_len + 1..];
    match rest.iter().rposition(|b| *b == b' ') {
        Some(sp) if sp > 0 => match &rest[sp + 1..] {
            b"HTTP/1.1" => Detected::Http11,
            b"HTTP/1.0" => Detected::Http10,
            _ => Detected::NotHttp,
        },
        _ => Detected::NotHttp,
    }
}

/// Envoy's `http_inspector.*` stats.
#[derive(Debug)]
pub struct HttpInspector {
    http10_found: Arc<Counter>,
    http11_found: Arc<Counter>,
    http2_found: Arc<Counter>,
    http_not_found: Arc<Counter>,
    read_error: Arc<Counter>,
}

impl HttpInspector {
    pub fn new(store: &Store) -> Self {
        let s = store.root_scope("http_inspector");
        Self {
            http10_found: s.counter("http10_found"),
            http11_found: s.counter("http11_found"),
            http2_found: s.counter("http2_found"),
            http_not_found: s.counter("http_not_found"),
            read_error: s.counter("read_error"),
        }
    }

    /// Peeks until the bytes decide; sets `application_protocols` when they are HTTP. Returns
    /// `false` when the connection should be closed (a read error).
    pub async fn inspect(&self, ds: &mut Downstream) -> bool {
        // TLS is not for this filter.
        if ds.transport_protocol != crate::transport::RAW_BUFFER {
            return true;
        }
        let mut buf = vec![0u8; INITIAL_INSPECT];
        let mut seen = 0;
        let found = loop {
            let (n, closed) = match ds.io.peek_more(&mut buf, seen).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(peer = %ds.peer, error = %e, "http_inspector: read error");
                    self.read_error.inc();
                    return false;
                }
            };
            match detect(&buf[..n]) {
                // The client closed, or no more room: not HTTP as far as we can tell.
                Detected::NeedMore if closed => break Detected::NotHttp,
                Detected::NeedMore if n == buf.len() && buf.len() >= MAX_INSPECT => {
                    break Detected::NotHttp
                }
                Detected::NeedMore if n == buf.len() => {
                    buf.resize((buf.len() * 4).min(MAX_INSPECT), 0);
                }
                Detected::NeedMore => {}
                d => break d,
            }
            seen = n;
        };
        let (counter, alpn) = match found {
            Detected::Http10 => (&self.http10_found, Some("http/1.0")),
            Detected::Http11 => (&self.http11_found, Some("http/1.1")),
            Detected::H2c => (&self.http2_found, Some("h2c")),
            _ => (&self.http_not_found, None),
        };
        counter.inc();
        if let Some(p) = alpn {
            ds.application_protocols = vec![p.to_string()];
        }
        true
    }
}

/// Envoy's `tls_inspector.*` stats.
#[derive(Debug)]
pub struct TlsInspector {
    tls_found: Arc<Counter>,
    tls_not_found: Arc<Counter>,
    sni_found: Arc<Counter>,
    sni_not_found: Arc<Counter>,
    alpn_found: Arc<Counter>,
    alpn_not_found: Arc<Counter>,
    client_hello_too_large: Arc<Counter>,
    read_error: Arc<Counter>,
}

impl TlsInspector {
    pub fn new(store: &Store) -> Self {
        let s = store.root_scope("tls_inspector");
        Self {
            tls_found: s.counter("tls_found"),
            tls_not_found: s.counter("tls_not_found"),
            sni_found: s.counter("sni_found"),
            sni_not_found: s.counter("sni_not_found"),
            alpn_found: s.counter("alpn_found"),
            alpn_not_found: s.counter("alpn_not_found"),
            client_hello_too_large: s.counter("client_hello_too_large"),
            read_error: s.counter("read_error"),
        }
    }

    /// Peeks until the bytes decide. `false`: close the connection (a read error, or a
    /// ClientHello over the size limit, as Envoy closes it).
    pub async fn inspect(&self, ds: &mut Downstream) -> bool {
        use crate::tls::client_hello::{needed, parse, Parsed, MAX_PEEK};
        let mut buf = vec![0u8; 2048];
        let mut seen = 0;
        let parsed = loop {
            let (n, closed) = match ds.io.peek_more(&mut buf, seen).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(peer = %ds.peer, error = %e, "tls_inspector: read error");
                    self.read_error.inc();
                    return false;
                }
            };
            // Parsed only once the bytes can decide something: a ClientHello trickled a byte
            // at a time costs one parse per record, not one per byte.
            if !closed && n < buf.len() && n < needed(&buf[..n]) {
                seen = n;
                continue;
            }
            match parse(&buf[..n]) {
                Parsed::NeedMore if closed => break Parsed::NotTls,
                Parsed::NeedMore if n == buf.len() && buf.len() >= MAX_PEEK => {
                    break Parsed::TooLarge
                }
                Parsed::NeedMore if n == buf.len() => buf.resize((buf.len() * 4).min(MAX_PEEK), 0),
                Parsed::NeedMore => {}
                p => break p,
            }
            seen = n;
        };
        match parsed {
            Parsed::Hello(h) => {
                self.tls_found.inc();
                ds.transport_protocol = crate::transport::TLS;
                match h.server_name {
                    Some(sni) => {
                        self.sni_found.inc();
                        ds.server_name = Some(sni);
                    }
                    None => self.sni_not_found.inc(),
                }
                if h.alpn.is_empty() {
                    self.alpn_not_found.inc();
                } else {
                    self.alpn_found.inc();
                    ds.application_protocols = h.alpn;
                }
                true
            }
            Parsed::TooLarge => {
                self.client_hello_too_large.inc();
                tracing::debug!(peer = %ds.peer, "tls_inspector: ClientHello too large");
                false
            }
            _ => {
                self.tls_not_found.inc();
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_request_lines_and_the_h2_preface() {
        let cases: &[(&[u8], Detected)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Detected::Http11),
            (b"POST /x?y=1 HTTP/1.0\r\n", Detected::Http10),
            (b"M-SEARCH * HTTP/1.1\r\n", Detected::Http11),
            (H2_PREFACE, Detected::H2c),
            (b"PRI * HTTP/2", Detected::NeedMore),
            (b"GE", Detected::NeedMore),
            (b"GET /long/path/still/arriving", Detected::NeedMore),
            (b"", Detected::NeedMore),
            (b"GET / HTTP/2.0\r\n", Detected::NotHttp),
            (b"get / HTTP/1.1\r\n", Detected::NotHttp),
            (b"\x16\x03\x01\x02\x00", Detected::NotHttp),
            (b"SSH-2.0-OpenSSH_9.2\r\n", Detected::NotHttp),
            (b"GET\x00 / HTTP/1.1\r\n", Detected::NotHttp),
            (b"GET / HTTP/1.1", Detected::NeedMore),
            (b"GET /\x01", Detected::NotHttp),
            (b"GET HTTP/1.1\r\n", Detected::NotHttp),
        ];
        for (input, want) in cases {
            assert_eq!(detect(input), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }
}
