//! Reading HTTP/1.1 responses (RFC 9112): the head, with its framing and whether the
//! connection can be reused, and chunked bodies. Pure functions over buffers, so the fuzz
//! target and the tests reach them without a connection.

use super::Error;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::Frame;

/// The largest response head (and trailer block) read: Envoy's default
/// `max_response_headers_kb`.
pub const MAX_HEAD: usize = 60 * 1024;
/// The most headers in a response head or trailer block.
pub(super) const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (the connection is not reused).
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another exchange after this one (as far as the head says).
    pub reusable: bool,
}

/// Parses a response head at the start of `buf` and, once it is whole, splits it off:
/// `None` while more bytes are needed. The header values share the bytes read (no copy per
/// value), as hyper's do.
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
    if buf.is_empty() {
        // Asked before anything came (the response is awaited right after the request).
        return Ok(None);
    }
    // Where each field's name and value sit in the head (it is at most `MAX_HEAD`, 60 KiB,
    // long): the values are cut from the head once it is split off `buf`.
    let mut spans = [[0u16; 4]; MAX_HEADERS];
    let (n, status, version, count) = {
        // Not initialised: httparse fills what it uses (zeroing 100 slots cost more than
        // parsing a short head).
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut r, buf, &mut slots);
        let n = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(Error::Protocol("response headers too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Protocol("too many response headers"))
            }
            Err(_) => return Err(Error::Protocol("invalid response head")),
        };
        if n > MAX_HEAD {
            return Err(Error::Protocol("response headers too large"));
        }
        let status = r
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(Error::Protocol("invalid status code"))?;
        let version = if r.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let at = |s: &[u8]| (s.as_ptr() as usize - buf.as_ptr() as usize) as u16;
        for (span, h) in spans.iter_mut().zip(r.headers.iter()) {
            let name = h.name.as_bytes();
            *span = [
                at(name),
                name.len() as u16,
                at(h.value),
                h.value.len() as u16,
            ];
        }
        (n, status, version, r.headers.len())
    };
    let head = buf.split_to(n).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut length: Option<u64> = None;
    let (mut te, mut chunked_last) = (false, false);
    let (mut close, mut keep_alive) = (false, false);
    for &[name_at, name_len, value_at, value_len] in &spans[..count] {
        let (name_at, value_at) = (name_at as usize, value_at as usize);
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len as usize])
            .map_err(|_| Error::Protocol("invalid response header name"))?;
        let value_end = value_at + value_len as usize;
        let raw = &head[value_at..value_end];
        if name == http::header::CONTENT_LENGTH {
            // Every value (and every comma-separated item) the same number.
            for item in raw.split(|b| *b == b',') {
                let item = item.trim_ascii();
                if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                    return Err(Error::Protocol("invalid content-length"));
                }
                let v: u64 = std::str::from_utf8(item)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(Error::Protocol("invalid content-length"))?;
                if length.is_some_and(|l| l != v) {
                    return Err(Error::Protocol("conflicting content-length"));
                }
                length = Some(v);
            }
        } else if name == http::header::TRANSFER_ENCODING {
            te = true;
            chunked_last = raw
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == http::header::CONNECTION {
            for t in raw.split(|b| *b == b',') {
                let t = t.trim_ascii();
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_end))
            .map_err(|_| Error::Protocol("invalid response header value"))?;
        headers.append(name, value);
    }
    let no_body = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (no_body, te, length) {
        (true, ..) => Framing::Empty,
        (false, true, _) if chunked_last => Framing::Chunked,
        (false, true, _) => Framing::Close,
        (false, false, Some(0)) => Framing::Empty,
        (false, false, Some(l)) => Framing::Length(l),
        (false, false, None) => Framing::Close,
    };
    let reusable = framing != Framing::Close
        && !close
        // Both framings at once: read as chunked, but the message is suspect; so is a
        // transfer coding in HTTP/1.0 (RFC 9112 §6.1).
        && !(te && (length.is_some() || version == Version::HTTP_10))
        && (version == Version::HTTP_11 || keep_alive);
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        reusable,
    }))
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk: bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields, then the final CRLF.
    Trailers,
    /// After the trailer block.
    Done,
}

/// What the chunked decoder made of the bytes it has.
#[derive(Debug)]
pub enum Step {
    Frame(Frame<Bytes>),
    /// More bytes are needed.
    More,
    /// The body ended (after its trailers, if any, were returned as a frame).
    End,
}

/// Decodes the next piece of a chunked body from `buf`, consuming what it used.
pub fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Step, Error> {
    loop {
        match *state {
            Chunked::Done => return Ok(Step::End),
            Chunked::Size => {
                let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(Error::Protocol("chunk size line too long"));
                    }
                    return Ok(Step::More);
                };
                if eol > MAX_CHUNK_LINE || eol == 0 || buf[eol - 1] != b'\r' {
                    return Err(Error::Protocol("invalid chunk size line"));
                }
                let line = &buf[..eol - 1];
                // Leading zeros do not count towards the size's 16 digits.
                let mut zeros = 0;
                while zeros + 1 < line.len()
                    && line[zeros] == b'0'
                    && line[zeros + 1].is_ascii_hexdigit()
                {
                    zeros += 1;
                }
                let line = &line[zeros..];
                let digits = line
                    .iter()
                    .position(|b| !b.is_ascii_hexdigit())
                    .unwrap_or(line.len());
                if digits == 0 || digits > 16 {
                    return Err(Error::Protocol("invalid chunk size"));
                }
                // What follows the size: nothing, or (after optional blanks) an extension.
                let rest = &line[digits..];
                let blanks = rest
                    .iter()
                    .take_while(|b| matches!(b, b' ' | b'\t'))
                    .count();
                let rest = &rest[blanks..];
                if !rest.is_empty() && rest[0] != b';' {
                    return Err(Error::Protocol("invalid chunk size"));
                }
                let size = line[..digits].iter().fold(0u64, |n, b| {
                    (n << 4) | (*b as char).to_digit(16).expect("hex digit") as u64
                });
                buf.advance(eol + 1);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (buf.len() as u64).min(left) as usize;
                let data = buf.split_to(n).freeze();
                *state = if left == n as u64 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left - n as u64)
                };
                return Ok(Step::Frame(Frame::data(data)));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Protocol("chunk not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers => {
                // The block's end: CRLF, or a bare LF (RFC 9112 §2.2 lets a recipient take
                // one as a line terminator, as httparse does within the block).
                if buf.first() == Some(&b'\n') {
                    buf.advance(1);
                    return Ok(Step::End);
                }
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] == b"\r\n" {
                    buf.advance(2);
                    return Ok(Step::End);
                }
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                // Rare (trailers), so the slots are simply zeroed.
                match httparse::parse_headers(buf, &mut slots) {
                    Ok(httparse::Status::Complete((n, fields))) => {
                        let mut trailers = HeaderMap::with_capacity(fields.len());
                        for h in fields {
                            let name = HeaderName::from_bytes(h.name.as_bytes())
                                .map_err(|_| Error::Protocol("invalid trailer name"))?;
                            let value = HeaderValue::from_bytes(h.value)
                                .map_err(|_| Error::Protocol("invalid trailer value"))?;
                            trailers.append(name, value);
                        }
                        if n > MAX_HEAD {
                            return Err(Error::Protocol("trailers too large"));
                        }
                        // The block ended with its empty line.
                        buf.advance(n);
                        *state = Chunked::Done;
                        return Ok(Step::Frame(Frame::trailers(trailers)));
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                        return Err(Error::Protocol("trailers too large"))
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::More),
                    Err(_) => return Err(Error::Protocol("invalid trailers")),
                }
            }
        }
    }
}
