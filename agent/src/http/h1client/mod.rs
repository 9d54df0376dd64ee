//! Plumb's own HTTP/1.1 client for pooled upstream connections, for every request but
//! upgrades. hyper's client runs each connection in a task of its own and hands every
//! request over through a channel and every response back through another; here the
//! request's own task writes the request head (with what its body has at once) and reads
//! the response on the connection it holds, sending the rest of the body meanwhile; the
//! response body gives the connection back to its pool as soon as it has been read to its
//! end. Upgrades (and HTTP/2) still go through hyper's client (`upstream.rs`).
//!
//! Request bodies are framed by the request's `content-length` (never more bytes than it
//! says), else by the body's exact size, else chunked (with trailers). An answer that comes
//! before the body is sent whole is passed on, and the body goes on with the response's;
//! if the response ends first, or the upstream stopped reading, the connection closes.
//!
//! Responses are read as RFC 9112 says: a head of at most 60 KiB and 100 headers (Envoy's
//! `max_response_headers_kb` default), interim 1xx responses skipped, the body framed by
//! `transfer-encoding: chunked` (with trailers), `content-length` (every value the same), or
//! the connection's close; no body after `HEAD`, 204 and 304. A connection goes back to the
//! pool only when its response was framed, read to its end with nothing after it, and
//! neither side asked to close.

mod codec;
#[cfg(test)]
mod tests;
mod upload;

pub use codec::{decode_chunked, parse_head, Chunked, Framing, Head, Step, MAX_HEAD};
pub use upload::{BodyFailure, Upload};
use upload::{UploadError, WITH_HEAD};

use super::body::Body;
use crate::transport::Stream;
use crate::upstream::pool::HostPool;
use crate::upstream::{Cluster, ConnGuard, Host};
use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

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
    /// The request body failed (the downstream went away, or its own timeout) before the
    /// response's head came.
    Body(BodyFailure),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) | Error::NotSent(e) => write!(f, "{e}"),
            Error::Closed => f.write_str("connection closed before the end of the response"),
            Error::Protocol(why) => write!(f, "protocol error: {why}"),
            Error::Body(why) => write!(f, "request body: {why}"),
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
    /// Registered with the reactor while the connection idles in its pool (`Watch`); made
    /// at its first hand-back.
    watch: Option<Waker>,
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
            watch: None,
        })
    }

    /// Whether an idle connection can take a request: nothing came while it was idle (no
    /// close, no stray bytes). No system call unless the reactor saw the socket readable.
    /// A usable connection stays watched: its pool hears when it turns readable.
    pub fn idle_usable(&mut self) -> bool {
        let watch = self.watch.take();
        let usable = self.usable(watch.as_ref().unwrap_or(Waker::noop()));
        self.watch = watch;
        usable
    }

    /// The same for a connection taken out of its pool for a request: no longer watched
    /// (the request's reads wake its own task).
    pub fn usable_for_request(&mut self) -> bool {
        self.usable(Waker::noop())
    }

    fn usable(&mut self, waker: &Waker) -> bool {
        if !self.buf.is_empty() || self.io.tls_holds_input() {
            return false;
        }
        let mut cx = Context::from_waker(waker);
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

/// Where a connection goes back when its response has been read to its end.
pub struct ReturnTo {
    pub host: Arc<Host>,
    /// The per-SNI pool it came from (`auto_sni`); `None`: the host's own.
    pub sni_pool: Option<Arc<HostPool>>,
    pub cluster: Arc<Cluster>,
    /// The pool's epoch when the connection was taken (or made): a drain since closes it.
    pub epoch: u64,
}

/// The waker an idle connection leaves with the reactor: when its socket turns readable
/// (the upstream closed it, or sent bytes it should not have), its pool closes the idle
/// connections that are no longer usable. So a connection an upstream closes while no
/// traffic flows gives back its socket and its circuit-breaker slot at once, as hyper's
/// connection task does, without a task per connection. Holds the pool weakly: a removed
/// host's connections close with it.
struct Watch(PoolRef);

impl Watch {
    fn waker(to: &ReturnTo) -> Waker {
        Waker::from(Arc::new(Watch(PoolRef::of(to))))
    }
}

impl std::task::Wake for Watch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.with(HostPool::sweep_own);
    }
}

/// A pool, held weakly: the host's own, or one of its per-SNI pools.
#[derive(Clone)]
pub struct PoolRef {
    host: std::sync::Weak<Host>,
    sni_pool: Option<std::sync::Weak<HostPool>>,
}

impl PoolRef {
    fn of(to: &ReturnTo) -> Self {
        Self {
            host: Arc::downgrade(&to.host),
            sni_pool: to.sni_pool.as_ref().map(Arc::downgrade),
        }
    }

    /// A per-SNI pool, or one held by a test.
    pub fn pool(p: &Arc<HostPool>) -> Self {
        Self {
            host: std::sync::Weak::new(),
            sni_pool: Some(Arc::downgrade(p)),
        }
    }

    /// Runs `f` on the pool, if it still exists.
    pub fn with<T>(&self, f: impl FnOnce(&HostPool) -> T) -> Option<T> {
        match &self.sni_pool {
            Some(p) => p.upgrade().map(|p| f(&p)),
            None => self.host.upgrade().map(|h| f(&h.pool)),
        }
    }
}

/// Writes the request head into `wbuf`, with the framing its body needs: the request's
/// `content-length`, else the body's exact size, else chunked (decided once, so a retry on
/// another connection frames it the same).
fn write_head(
    wbuf: &mut Vec<u8>,
    parts: &http::request::Parts,
    upload: Option<&mut Upload>,
) -> Result<(), Error> {
    use http_body::Body as _;
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
    let length = || {
        parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()))
    };
    let Some(up) = upload else {
        // No body: a length other than 0 would leave the upstream waiting for one.
        if length().is_some_and(|n| n != Some(0)) {
            return Err(Error::Body(BodyFailure::Failed(
                "a content-length without a body".into(),
            )));
        }
        wbuf.extend_from_slice(b"\r\n");
        return Ok(());
    };
    let added = *up.added.get_or_insert_with(|| match length() {
        Some(_) => None,
        None => Some(up.body.size_hint().exact().unwrap_or(u64::MAX)),
    });
    up.chunked = added == Some(u64::MAX);
    if !up.read_first {
        up.remaining = match added {
            Some(u64::MAX) => None,
            Some(n) => Some(n),
            None => length().flatten(),
        };
        if up.remaining == Some(0) {
            up.ended = true;
        }
    }
    match added {
        Some(u64::MAX) => wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Some(n) => wbuf.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        None => {}
    }
    wbuf.extend_from_slice(b"\r\n");
    Ok(())
}

/// Adds what is queued of the body to the head's bytes when it is small (one write for a
/// small request): whether it did.
fn body_with_head(wbuf: &mut Vec<u8>, upload: Option<&Upload>) -> bool {
    let Some(u) = upload else { return false };
    let with_head = u.queue.iter().map(Bytes::len).sum::<usize>() <= WITH_HEAD;
    if with_head {
        for b in &u.queue {
            wbuf.extend_from_slice(b);
        }
    }
    with_head
}

/// Writes a request on `conn` (its head, then its body, `upload`, if it has one) and reads
/// the response head; a body still being sent then goes on with the response's. The
/// response's body reads on from the connection and gives it back (`back`; none: closes it)
/// at its end.
pub async fn send(
    mut conn: Box<Conn>,
    parts: &http::request::Parts,
    upload: &mut Option<Upload>,
    back: Option<ReturnTo>,
) -> Result<Response<Body>, Error> {
    use http_body::Body as _;
    let Conn { io, buf, wbuf, .. } = &mut *conn;
    write_head(wbuf, parts, upload.as_mut())?;
    if let Some(up) = upload.as_mut().filter(|u| !u.read_first) {
        // What the body has at once goes in the head's write.
        up.read_first = true;
        let first = std::future::poll_fn(|cx| match Pin::new(&mut up.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Ok(Some(Some(f)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(Error::Body(BodyFailure::from(&e)))),
            Poll::Ready(None) => Poll::Ready(Ok(None)),
            Poll::Pending => Poll::Ready(Ok(Some(None))),
        })
        .await?;
        match first {
            Some(Some(f)) => up.encode(f),
            Some(None) => {}
            None => up.end().map_err(Error::Body)?,
        }
        if !up.ended && up.body.is_end_stream() {
            up.end().map_err(Error::Body)?;
        }
    }
    let with_head = body_with_head(wbuf, upload.as_ref());
    io.write_all(wbuf).await.map_err(Error::NotSent)?;
    io.flush().await.map_err(Error::NotSent)?;
    // From here on, the body belongs to this exchange.
    let mut up = upload.take().map(|mut u| {
        if with_head {
            u.queue.clear();
        }
        u
    });
    // The head (and any body frame with it) is out: send the rest of the body while the
    // response may already come (an early answer such as a 413 stops the upload).
    let mut write_failed: Option<std::io::Error> = None;
    let head = std::future::poll_fn(|cx| loop {
        if let Some(u) = up.as_mut() {
            match u.poll_send(io, cx) {
                Poll::Ready(Ok(())) => up = None,
                Poll::Ready(Err(UploadError::Body(e))) => return Poll::Ready(Err(Error::Body(e))),
                Poll::Ready(Err(UploadError::Write(e))) => {
                    // The upstream may have answered before it stopped reading.
                    write_failed = Some(e);
                    up = None;
                }
                Poll::Pending => {}
            }
        }
        while let Some(head) = parse_head(buf, &parts.method)? {
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return Poll::Ready(Err(Error::Protocol("101 without an upgrade request")));
            }
            if head.status.is_informational() {
                // 100 Continue, 102, 103 Early Hints: the final response follows.
                continue;
            }
            return Poll::Ready(Ok(head));
        }
        match poll_fill(io, buf, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(n)) if n > 0 => {}
            // No answer: the write's failure says more than the close after it.
            Poll::Ready(r) => {
                return Poll::Ready(Err(match (write_failed.take(), r) {
                    (Some(e), _) | (None, Err(e)) => Error::Io(e),
                    (None, Ok(_)) => Error::Closed,
                }))
            }
        }
    })
    .await?;
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
        reusable: head.reusable && write_failed.is_none(),
        upload: up.map(Box::new),
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
    /// The request body, while still being sent.
    upload: Option<Box<Upload>>,
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
        // A request body not sent whole leaves the upstream waiting for the rest (a last
        // look first: the body's end may have come with the response's).
        if let Some(mut up) = self.upload.take() {
            let mut cx = Context::from_waker(Waker::noop());
            if !matches!(up.poll_send(&mut c.io, &mut cx), Poll::Ready(Ok(()))) {
                self.reusable = false;
            }
        }
        if self.reusable && c.buf.is_empty() && max.is_none_or(|m| c.served < m) {
            c.idle_since = std::time::Instant::now();
            if c.watch.is_none() {
                c.watch = Some(Watch::waker(&b));
            }
            let pool: &HostPool = b.sni_pool.as_deref().unwrap_or(&b.host.pool);
            let idle = b.cluster.config.http.idle_timeout;
            pool.put_own(c, b.epoch, idle);
            if let Some(idle) = idle {
                pool.arm_reaper(idle, || {
                    (
                        PoolRef::of(&b),
                        b.cluster.http_stats().upstream_cx_idle_timeout.clone(),
                    )
                });
            }
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
            if let Some(up) = self.upload.as_mut() {
                match up.poll_send(&mut c.io, cx) {
                    Poll::Ready(Ok(())) => self.upload = None,
                    // The response goes on; the connection is not reused (`release`).
                    Poll::Ready(Err(_)) => {
                        self.upload = None;
                        self.reusable = false;
                    }
                    Poll::Pending => {}
                }
            }
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
            let parts = req.into_parts().0;
            if let Ok(r) = send(Conn::new(client.into(), None), &parts, &mut None, None).await {
                use http_body_util::BodyExt;
                let _ = r.into_body().collect().await;
            }
            upstream.abort();
        })
    });
}
