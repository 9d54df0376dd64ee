//! Plumb's own HTTP/1.1 client for pooled upstream connections, for requests without a body
//! (most requests: GET, HEAD, DELETE...). hyper's client runs each connection in a task of
//! its own and hands every request over through a channel and every response back through
//! another; here the request's own task writes the request head and reads the response on
//! the connection it holds, and the response body gives the connection back to its pool as
//! soon as it has been read to its end. Requests with a body, and upgrades, still go through
//! hyper's client (`upstream.rs`).
//!
//! Responses are read as RFC 9112 says: a head of at most 60 KiB and 100 headers (Envoy's
//! `max_response_headers_kb` default), interim 1xx responses skipped, the body framed by
//! `transfer-encoding: chunked` (with trailers), `content-length` (every value the same), or
//! the connection's close; no body after `HEAD`, 204 and 304. A connection goes back to the
//! pool only when its response was framed, read to its end with nothing after it, and
//! neither side asked to close.

use super::body::Body;
use crate::transport::Stream;
use crate::upstream::pool::HostPool;
use crate::upstream::{Cluster, ConnGuard, Host};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

/// The largest response head (and trailer block) read: Envoy's default
/// `max_response_headers_kb`.
pub const MAX_HEAD: usize = 60 * 1024;
/// The most headers in a response head or trailer block.
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Read buffer growth step; a connection keeps one such buffer.
const READ_STEP: usize = 8192;

/// Why an exchange on a connection failed.
#[derive(Debug)]
pub enum Error {
    Io(std::io::Error),
    /// The request could not be written (the connection had closed): nothing reached the
    /// upstream, so the request can go on another connection.
    NotSent(std::io::Error),
    /// The connection closed before the response (or its body) was complete.
    Closed,
    /// The response is not valid HTTP/1.1.
    Protocol(&'static str),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) | Error::NotSent(e) => write!(f, "{e}"),
            Error::Closed => f.write_str("connection closed before the end of the response"),
            Error::Protocol(why) => write!(f, "protocol error: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// One upstream connection of this client, with its buffers.
pub struct Conn {
    io: Stream,
    /// The connection's books (none in unit tests).
    _guard: Option<ConnGuard>,
    /// Bytes read and not yet consumed; kept between exchanges (emptied at each end).
    buf: BytesMut,
    /// The request head being written.
    wbuf: Vec<u8>,
    /// Exchanges completed on this connection.
    pub served: u32,
    /// Since when it has been idle in its pool.
    pub idle_since: std::time::Instant,
}

impl Conn {
    pub fn new(io: Stream, guard: Option<ConnGuard>) -> Box<Self> {
        Box::new(Self {
            io,
            _guard: guard,
            buf: BytesMut::new(),
            wbuf: Vec::new(),
            served: 0,
            idle_since: std::time::Instant::now(),
        })
    }

    /// Whether an idle connection can take a request: nothing came while it was idle (no
    /// close, no stray bytes). No system call unless the reactor saw the socket readable.
    pub fn idle_usable(&mut self) -> bool {
        if !self.buf.is_empty() || self.io.tls_holds_input() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        if let Some(tcp) = self.io.tcp() {
            match tcp.poll_read_ready(&mut cx) {
                Poll::Pending => return true,
                Poll::Ready(Err(_)) => return false,
                Poll::Ready(Ok(())) => {}
            }
        }
        // Readable (or not a socket): a read says whether that was a close, bytes, or
        // nothing (TLS records such as session tickets, or a stale readiness).
        matches!(
            poll_fill(&mut self.io, &mut self.buf, &mut cx),
            Poll::Pending
        )
    }
}

/// Reads what is there into `buf`'s spare room (growing it by a step when little is left).
fn poll_fill(
    io: &mut Stream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_STEP);
    }
    let mut rb = ReadBuf::uninit(buf.spare_capacity_mut());
    match Pin::new(io).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

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

/// Parses a response head at the start of `buf`: its length and the head, or `None` when
/// more bytes are needed.
pub fn parse_head(buf: &[u8], method: &Method) -> Result<Option<(usize, Head)>, Error> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut slots);
    let n = match r.parse(buf) {
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
    let mut headers = HeaderMap::with_capacity(r.headers.len());
    let mut length: Option<u64> = None;
    let (mut te, mut chunked_last) = (false, false);
    let (mut close, mut keep_alive) = (false, false);
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Error::Protocol("invalid response header name"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| Error::Protocol("invalid response header value"))?;
        if name == http::header::CONTENT_LENGTH {
            // Every value (and every comma-separated item) the same number.
            for item in h.value.split(|b| *b == b',') {
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
            chunked_last = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == http::header::CONNECTION {
            for t in h.value.split(|b| *b == b',') {
                let t = t.trim_ascii();
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
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
    Ok(Some((
        n,
        Head {
            status,
            version,
            headers,
            framing,
            reusable,
        },
    )))
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

/// Where a connection goes back when its response has been read to its end.
pub struct ReturnTo {
    pub host: Arc<Host>,
    /// The per-SNI pool it came from (`auto_sni`); `None`: the host's own.
    pub sni_pool: Option<Arc<HostPool>>,
    pub cluster: Arc<Cluster>,
    /// The pool's epoch when the connection was taken (or made): a drain since closes it.
    pub epoch: u64,
}

/// Writes a request without a body on `conn` and reads the response head. The response's
/// body reads on from the connection and gives it back (`back`; none: closes it) at its end.
pub async fn send(
    mut conn: Box<Conn>,
    parts: &http::request::Parts,
    back: Option<ReturnTo>,
) -> Result<Response<Body>, Error> {
    let Conn { io, buf, wbuf, .. } = &mut *conn;
    wbuf.clear();
    wbuf.extend_from_slice(parts.method.as_str().as_bytes());
    wbuf.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    wbuf.extend_from_slice(target.as_bytes());
    wbuf.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in &parts.headers {
        wbuf.extend_from_slice(k.as_str().as_bytes());
        wbuf.extend_from_slice(b": ");
        wbuf.extend_from_slice(v.as_bytes());
        wbuf.extend_from_slice(b"\r\n");
    }
    wbuf.extend_from_slice(b"\r\n");
    io.write_all(wbuf).await.map_err(Error::NotSent)?;
    io.flush().await.map_err(Error::NotSent)?;
    let head = loop {
        if let Some((n, head)) = parse_head(buf, &parts.method)? {
            buf.advance(n);
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Error::Protocol("101 without an upgrade request"));
            }
            if head.status.is_informational() {
                // 100 Continue, 102, 103 Early Hints: the final response follows.
                continue;
            }
            break head;
        }
        let n = std::future::poll_fn(|cx| poll_fill(io, buf, cx))
            .await
            .map_err(Error::Io)?;
        if n == 0 {
            return Err(Error::Closed);
        }
    };
    conn.served += 1;
    let state = match head.framing {
        Framing::Empty => State::Done,
        Framing::Length(n) => State::Length(n),
        Framing::Chunked => State::Chunked(Chunked::Size),
        Framing::Close => State::Close,
    };
    let mut body = Incoming1 {
        conn: Some(conn),
        state,
        reusable: head.reusable,
        back,
    };
    if body.state == State::Done {
        body.release();
    }
    let mut r = Response::new(Body::h1(Box::new(body)));
    *r.status_mut() = head.status;
    *r.version_mut() = head.version;
    *r.headers_mut() = head.headers;
    Ok(r)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

/// A response body read from a connection of this client.
pub struct Incoming1 {
    conn: Option<Box<Conn>>,
    state: State,
    reusable: bool,
    back: Option<ReturnTo>,
}

impl Incoming1 {
    /// The body was read to its end: the connection goes back to its pool if it can carry
    /// another exchange, else it closes.
    fn release(&mut self) {
        let (Some(mut c), Some(b)) = (self.conn.take(), self.back.take()) else {
            return;
        };
        let max = b.cluster.config.http.max_requests_per_connection;
        if self.reusable && c.buf.is_empty() && max.is_none_or(|m| c.served < m) {
            c.idle_since = std::time::Instant::now();
            let pool: &HostPool = b.sni_pool.as_deref().unwrap_or(&b.host.pool);
            pool.put_own(c, b.epoch, b.cluster.config.http.idle_timeout);
        }
        // A request waiting for a connection may take this one, or open its own.
        b.cluster.breakers.connection_idle();
    }

    pub fn is_end(&self) -> bool {
        self.state == State::Done
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let Some(c) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.state {
                State::Done => {
                    self.release();
                    return Poll::Ready(None);
                }
                State::Length(left) => {
                    if !c.buf.is_empty() {
                        let n = (c.buf.len() as u64).min(*left) as usize;
                        let data = c.buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            self.state = State::Done;
                            self.release();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(st) => match decode_chunked(st, &mut c.buf) {
                    Ok(Step::Frame(f)) => {
                        if f.is_trailers() {
                            self.state = State::Done;
                            self.release();
                        }
                        return Poll::Ready(Some(Ok(f)));
                    }
                    Ok(Step::End) => {
                        self.state = State::Done;
                        continue;
                    }
                    Ok(Step::More) => {}
                    Err(e) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                State::Close => {
                    if !c.buf.is_empty() {
                        let data = c.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            let c = self.conn.as_mut().expect("checked above");
            match poll_fill(&mut c.io, &mut c.buf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if self.state == State::Close => {
                    self.reusable = false;
                    self.state = State::Done;
                }
                Poll::Ready(Ok(0)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Error::Closed)));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Error::Io(e))));
                }
            }
        }
    }
}

/// Fuzzing: the first byte picks the request's method (odd: HEAD, which has no body), the
/// second the size of the pieces the rest arrives in (0: at once); the rest is what the
/// upstream sends before it closes. The response head and its whole body are read; errors
/// are fine, a panic or a hang is not.
pub fn fuzz_response(data: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let [m, piece, rest @ ..] = data else { return };
    let method = if m & 1 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let piece = if *piece == 0 {
        rest.len().max(1)
    } else {
        *piece as usize
    };
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
    }
    RT.with(|rt| {
        rt.block_on(async {
            let (client, mut server) = tokio::io::duplex(256 * 1024);
            let rest = rest.to_vec();
            let upstream = tokio::spawn(async move {
                for p in rest.chunks(piece) {
                    if server.write_all(p).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
                let _ = server.shutdown().await;
            });
            let mut req = Request::new(Body::empty());
            *req.method_mut() = method;
            if let Ok(r) = send(Conn::new(client.into(), None), &req.into_parts().0, None).await {
                use http_body_util::BodyExt;
                let _ = r.into_body().collect().await;
            }
            upstream.abort();
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the fake upstream sends: its pieces, written one by one, then (optionally) a close.
    struct Upstream {
        pieces: Vec<Vec<u8>>,
        close: bool,
    }

    fn upstream(pieces: &[&[u8]], close: bool) -> Upstream {
        Upstream {
            pieces: pieces.iter().map(|p| p.to_vec()).collect(),
            close,
        }
    }

    /// Sends a request through the client to the fake upstream: the response (status,
    /// headers, body data, trailers) or the first error.
    async fn exchange(
        method: Method,
        up: Upstream,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>, Option<HeaderMap>), String> {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut b = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = server.read(&mut b).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&b[..n]);
            }
            for p in up.pieces {
                server.write_all(&p).await.unwrap();
                tokio::task::yield_now().await;
            }
            if up.close {
                server.shutdown().await.unwrap();
                drop(server);
                None
            } else {
                Some(server)
            }
        });
        let mut req = Request::new(Body::empty());
        *req.method_mut() = method;
        *req.uri_mut() = "/p?q=1".parse().unwrap();
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("a.example"));
        let result = async {
            let r = send(Conn::new(client.into(), None), &req.into_parts().0, None)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = r.into_parts();
            let collected = body.collect().await.map_err(|e| e.to_string())?;
            let trailers = collected.trailers().cloned();
            Ok((
                parts.status,
                parts.headers,
                collected.to_bytes().to_vec(),
                trailers,
            ))
        }
        .await;
        drop(served.await.unwrap());
        result
    }

    #[tokio::test]
    async fn a_request_without_a_body_is_written_as_one_head() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut req = Request::new(Body::empty());
        *req.uri_mut() = "/p?q=1".parse().unwrap();
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("a.example"));
        req.headers_mut()
            .append("x-a", HeaderValue::from_static("1"));
        req.headers_mut()
            .append("x-a", HeaderValue::from_static("2"));
        let parts = req.into_parts().0;
        let sent =
            tokio::spawn(async move { send(Conn::new(client.into(), None), &parts, None).await });
        let mut got = vec![0u8; 4096];
        let mut n = 0;
        while !got[..n].ends_with(b"\r\n\r\n") {
            n += server.read(&mut got[n..]).await.unwrap();
        }
        assert_eq!(
            &got[..n],
            b"GET /p?q=1 HTTP/1.1\r\nhost: a.example\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let r = sent.await.unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(http_body::Body::is_end_stream(r.body()));
    }

    #[tokio::test]
    async fn bodies_are_framed_by_length_chunks_or_close() {
        // content-length, the head and body split anywhere.
        let r = exchange(
            Method::GET,
            upstream(
                &[
                    b"HTTP/1.1 200 OK\r\ncontent-le",
                    b"ngth: 11\r\n\r\nhello",
                    b" world",
                ],
                false,
            ),
        )
        .await;
        let (status, headers, body, trailers) = r.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-length"], "11");
        assert_eq!(body, b"hello world");
        assert!(trailers.is_none());
        // chunked, with an extension and trailers.
        let r = exchange(
            Method::GET,
            upstream(
                &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\nx-t: 1\r\n\r\n"],
                false,
            ),
        )
        .await;
        let (_, _, body, trailers) = r.unwrap();
        assert_eq!(body, b"hello world");
        let t = trailers.unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["x-t"], "1");
        // Leading zeros, blanks before an extension, and a last chunk with an extension.
        let r = exchange(
            Method::GET,
            upstream(
                &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n00000000000000000003 ;a=b\r\nabc\r\n0;z\r\n\r\n"],
                false,
            ),
        )
        .await;
        assert_eq!(r.unwrap().2, b"abc");
        // A last chunk whose (empty) trailer block ends with a bare LF.
        let r = exchange(
            Method::GET,
            upstream(
                &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\n"],
                false,
            ),
        )
        .await;
        assert_eq!(r.unwrap().2, b"x");
        // chunked, one byte per write.
        let whole: &[u8] =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n";
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        let r = exchange(Method::GET, upstream(&bytes, false)).await;
        assert_eq!(r.unwrap().2, b"0123456789");
        // Until the close.
        let r = exchange(
            Method::GET,
            upstream(&[b"HTTP/1.1 200 OK\r\n\r\nuntil", b" the close"], true),
        )
        .await;
        assert_eq!(r.unwrap().2, b"until the close");
        // No body after HEAD, 204 and 304, whatever the head says.
        let r = exchange(
            Method::HEAD,
            upstream(&[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"], false),
        )
        .await;
        assert_eq!(r.unwrap().2, b"");
        let r = exchange(
            Method::GET,
            upstream(&[b"HTTP/1.1 204 No Content\r\n\r\n"], false),
        )
        .await;
        assert_eq!(r.unwrap().0, StatusCode::NO_CONTENT);
        // Interim responses are skipped.
        let r = exchange(
            Method::GET,
            upstream(
                &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"],
                false,
            ),
        )
        .await;
        let (status, headers, body, _) = r.unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert!(!headers.contains_key("link"));
        assert_eq!(body, b"ok");
    }

    #[tokio::test]
    async fn bad_responses_are_errors_not_panics() {
        let cases: &[(&[u8], bool, &str)] = &[
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
                false,
                "conflicting content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                false,
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
                false,
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                false,
                "invalid chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11111111111111111\r\n",
                false,
                "invalid chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY",
                false,
                "chunk not followed by CRLF",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nab\r\n",
                false,
                "invalid chunk size line",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                false,
                "101 without an upgrade request",
            ),
            (b"HTTP/1.1 2000 OK\r\n\r\n", false, "invalid response head"),
            (b"NOT HTTP\r\n\r\n", false, "invalid response head"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
                true,
                "connection closed before the end of the response",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
                true,
                "connection closed before the end of the response",
            ),
            (
                b"HTTP/1.1 200 O",
                true,
                "connection closed before the end of the response",
            ),
            (
                b"",
                true,
                "connection closed before the end of the response",
            ),
        ];
        for (bytes, close, why) in cases {
            let r = exchange(Method::GET, upstream(&[bytes], *close)).await;
            let e = r.expect_err(&String::from_utf8_lossy(bytes));
            assert!(
                e.contains(why),
                "{e} for {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // A head over the limit, and too many headers.
        let big = format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
            "a".repeat(MAX_HEAD + 1)
        );
        let r = exchange(Method::GET, upstream(&[big.as_bytes()], false)).await;
        assert!(r.unwrap_err().contains("too large"));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        let r = exchange(Method::GET, upstream(&[many.as_bytes()], false)).await;
        assert!(r.unwrap_err().contains("too many response headers"));
    }

    #[test]
    fn the_head_says_whether_the_connection_can_be_reused() {
        let head = |s: &str| parse_head(s.as_bytes(), &Method::GET).unwrap().unwrap().1;
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Length(1), true));
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: Close\r\n\r\n");
        assert!(!h.reusable);
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n");
        assert!(!h.reusable);
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n");
        assert!(h.reusable);
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Close, false));
        // Both framings: chunked wins, and the connection is not trusted again.
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, false));
        // A transfer coding that does not end with chunked: until the close.
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
        let h =
            head("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, false));
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(2));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le", &Method::GET)
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn an_idle_connection_is_usable_until_its_peer_closes_or_talks() {
        let (client, server) = tokio::io::duplex(1024);
        let mut c = Conn::new(client.into(), None);
        assert!(c.idle_usable());
        drop(server);
        assert!(!c.idle_usable());
        let (client, mut server) = tokio::io::duplex(1024);
        let mut c = Conn::new(client.into(), None);
        server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert!(!c.idle_usable());
        // A real socket: readiness comes from the reactor.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        let mut c = Conn::new(client.into(), None);
        assert!(c.idle_usable());
        drop(server);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while c.idle_usable() {
            assert!(
                std::time::Instant::now() < deadline,
                "the close was never seen"
            );
            tokio::task::yield_now().await;
        }
    }
}
