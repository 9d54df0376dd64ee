//! A bounded reader of the TLS ClientHello for `envoy.filters.listener.tls_inspector`: from
//! the client's first bytes (peeked, not consumed) it tells whether the connection is TLS and
//! reads the server name (SNI) and the ALPN protocols. The hello may span several records,
//! each arriving in any number of pieces; at most `MAX_HELLO` bytes of handshake are read.
//! Anything malformed is "not TLS", never a panic (fuzzed: `fuzz_targets/client_hello.rs`).

/// Most handshake bytes of a ClientHello accepted (Envoy's inspector: 16 KiB by default).
pub const MAX_HELLO: usize = 16 * 1024;
/// Bytes to peek to hold the largest accepted hello with its record headers.
pub const MAX_PEEK: usize = MAX_HELLO + 5 * (MAX_HELLO / 512 + 2);

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The host name of the server_name extension, lower-cased.
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Looks like a ClientHello so far; more bytes are needed.
    NeedMore,
    /// Not a TLS ClientHello (or a malformed one).
    NotTls,
    /// A ClientHello larger than `MAX_HELLO`.
    TooLarge,
    Hello(Hello),
}

/// A cursor over a byte slice; every read is bounds-checked.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }
    /// A vector with a length prefix of `len_bytes` (1 or 2).
    fn vec(&mut self, len_bytes: usize) -> Option<Reader<'a>> {
        let n = if len_bytes == 1 {
            self.u8()? as usize
        } else {
            self.u16()? as usize
        };
        self.take(n).map(|b| Reader { b })
    }
    fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
}

/// How many bytes `parse` needs before it can say more than `NeedMore`: the end of the
/// first incomplete record (so a ClientHello arriving a byte at a time is parsed once per
/// record, not once per byte). Anything that is not a handshake record needs no more.
pub fn needed(data: &[u8]) -> usize {
    let mut pos = 0;
    loop {
        let Some(header) = data.get(pos..pos + 5) else {
            // The next record's header is incomplete (or the first byte already decides).
            return match data.get(pos) {
                Some(&b) if b != HANDSHAKE => data.len(),
                _ => (pos + 5).min(MAX_PEEK),
            };
        };
        if header[0] != HANDSHAKE {
            return data.len();
        }
        let end = pos + 5 + u16::from_be_bytes([header[3], header[4]]) as usize;
        if data.len() < end {
            return end.min(MAX_PEEK);
        }
        if end == data.len() {
            return data.len();
        }
        pos = end;
    }
}

/// Classifies the bytes the client sent so far.
pub fn parse(data: &[u8]) -> Parsed {
    // Reassemble the handshake message from consecutive handshake records.
    let mut hs: Vec<u8> = Vec::new();
    let mut rest = data;
    let mut want: Option<usize> = None;
    loop {
        if rest.is_empty() {
            return Parsed::NeedMore;
        }
        if rest[0] != HANDSHAKE {
            return Parsed::NotTls;
        }
        if rest.len() >= 2 && rest[1] != 3 {
            return Parsed::NotTls;
        }
        if rest.len() < 5 {
            return Parsed::NeedMore;
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        // Records carry at most 2^14 bytes; an empty handshake record is not allowed.
        if len == 0 || len > 16384 {
            return Parsed::NotTls;
        }
        let body = &rest[5..];
        let have = body.len().min(len);
        hs.extend_from_slice(&body[..have]);
        if want.is_none() && hs.len() >= 4 {
            if hs[0] != CLIENT_HELLO {
                return Parsed::NotTls;
            }
            let n = (hs[1] as usize) << 16 | (hs[2] as usize) << 8 | hs[3] as usize;
            if n > MAX_HELLO {
                return Parsed::TooLarge;
            }
            want = Some(4 + n);
        }
        if let Some(w) = want {
            if hs.len() >= w {
                hs.truncate(w);
                break;
            }
        }
        if hs.len() > MAX_HELLO + 4 {
            return Parsed::TooLarge;
        }
        if have < len {
            return Parsed::NeedMore;
        }
        rest = &body[len..];
    }
    match hello(&hs) {
        Some(h) => Parsed::Hello(h),
        None => Parsed::NotTls,
    }
}

fn hello(hs: &[u8]) -> Option<Hello> {
    let mut r = Reader { b: hs };
    if r.u8()? != CLIENT_HELLO {
        return None;
    }
    let n = r.u24()?;
    let mut body = Reader { b: r.take(n)? };
    let version = body.u16()?;
    if version >> 8 != 3 {
        return None;
    }
    body.take(32)?; // random
    body.vec(1)?; // session id
    let suites = body.vec(2)?;
    if suites.b.is_empty() || suites.b.len() % 2 != 0 {
        return None;
    }
    body.vec(1)?; // compression methods
    let mut out = Hello {
        server_name: None,
        alpn: Vec::new(),
    };
    if body.is_empty() {
        // A hello without extensions (TLS 1.0-era clients): TLS, no SNI, no ALPN.
        return Some(out);
    }
    let mut exts = body.vec(2)?;
    while !exts.is_empty() {
        let kind = exts.u16()?;
        let mut data = exts.vec(2)?;
        match kind {
            EXT_SERVER_NAME => {
                let mut list = data.vec(2)?;
                while !list.is_empty() {
                    let name_type = list.u8()?;
                    let name = list.vec(2)?;
                    if name_type == 0 && out.server_name.is_none() {
                        let s = std::str::from_utf8(name.b).ok()?;
                        if s.is_empty() || s.len() > 255 {
                            return None;
                        }
                        out.server_name = Some(s.to_ascii_lowercase());
                    }
                }
            }
            EXT_ALPN => {
                let mut list = data.vec(2)?;
                while !list.is_empty() {
                    let p = list.vec(1)?;
                    if p.b.is_empty() {
                        return None;
                    }
                    // Protocol names are opaque bytes; the chain match compares strings.
                    out.alpn.push(String::from_utf8_lossy(p.b).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(out)
}

/// A ClientHello as rustls sends it (fuzz seeds and tests).
pub fn sample(sni: &str, alpn: &[&str]) -> Vec<u8> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS 1.2 and 1.3")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("a server name");
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).expect("a client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("written to memory");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rustls_hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        sample(sni, alpn)
    }

    #[test]
    fn reads_sni_and_alpn_from_a_real_hello_in_any_split() {
        let h = rustls_hello("API.example.com", &["h2", "http/1.1"]);
        let want = Parsed::Hello(Hello {
            server_name: Some("api.example.com".into()),
            alpn: vec!["h2".into(), "http/1.1".into()],
        });
        assert_eq!(parse(&h), want);
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Parsed::NeedMore, "cut at {cut}");
            // Until the record is complete, nothing new can be said.
            assert!(cut >= 5 || needed(&h[..cut]) <= 5, "cut at {cut}");
            if cut >= 5 {
                assert_eq!(needed(&h[..cut]), h.len(), "cut at {cut}");
            }
        }
        assert_eq!(needed(&h), h.len());
        assert_eq!(needed(b"GET /"), 5);
        // Split into 1-byte handshake records: still one hello.
        let body = &h[5..];
        let mut split = Vec::new();
        for b in body {
            split.extend_from_slice(&[22, 3, 1, 0, 1, *b]);
        }
        assert_eq!(parse(&split), want);
        // An IP address sends no SNI.
        let h = rustls_hello("127.0.0.1", &[]);
        assert_eq!(
            parse(&h),
            Parsed::Hello(Hello {
                server_name: None,
                alpn: vec![]
            })
        );
    }

    #[test]
    fn anything_else_is_not_tls() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x02\x00\x00\x05",
            b"\x16\x03\x01\x00\x00",
            b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",
            b"SSH-2.0-x\r\n",
            b"\x00",
        ] {
            assert_eq!(parse(bad), Parsed::NotTls, "{bad:?}");
        }
        assert_eq!(
            parse(b"\x16\x03\x01\x00\x04\x01\xff\xff\xff"),
            Parsed::TooLarge
        );
        // A hello whose declared lengths overrun it.
        let mut h = rustls_hello("a.example", &[]);
        let n = h.len();
        h[n - 1] ^= 0xff;
        let _ = parse(&h);
    }
}
