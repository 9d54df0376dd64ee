//! The one body type of requests and responses that pass through Plumb: a received body
//! streamed on, a small body Plumb wrote itself, or nothing. A body can carry an end hook
//! (`OnEnd`) that runs when its last frame has been read: it hands an HTTP/1 connection back
//! to its pool and closes the request's books.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Called once when the body ended cleanly (`true`) or was dropped before its end (`false`).
pub trait OnEnd: Send + Sync + 'static {
    fn ended(&mut self, end: End);
}

/// How a body ended.
#[derive(Debug, Clone, Copy)]
pub struct End {
    /// Read to its end (else dropped before).
    pub complete: bool,
    /// Data bytes read.
    pub bytes: u64,
    /// The `grpc-status` of its trailers, if any.
    pub grpc_status: Option<u32>,
}

pub struct Body {
    kind: Kind,
    on_end: Option<Box<dyn OnEnd>>,
    /// Data bytes read so far.
    pub(crate) bytes: u64,
    /// Also counts the data bytes here (a request body, for access logs).
    counter: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The `grpc-status` of the trailers that went through.
    grpc_status: Option<u32>,
    /// Idle and overall bounds (a streamed response).
    timer: Option<Box<Timer>>,
    /// Where this body's failure is told (a request body sent by hyper's client, which
    /// reports it as its own reset).
    failed: Option<Arc<std::sync::OnceLock<super::h1client::BodyFailure>>>,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    H1(Box<super::h1client::Incoming1>),
    /// One attempt's view of a request body kept for replay.
    Replay(Arc<Replay>, Cursor),
}

/// A request body read once and kept (up to a limit) so a retry can send it again: each
/// attempt replays the chunks read so far, then goes on reading the original. Chunks are
/// shared (`Bytes`), not copied. A new attempt retires the previous one's body (it ends),
/// so only the current attempt reads the original.
pub struct Replay {
    state: Mutex<ReplayState>,
    limit: usize,
    hint: SizeHint,
}

struct ReplayState {
    source: Option<Incoming>,
    chunks: Vec<Bytes>,
    size: usize,
    trailers: Option<http::HeaderMap>,
    /// More than `limit` bytes came (or the read failed): it can no longer be replayed.
    overflowed: bool,
    /// The current attempt.
    generation: u32,
}

/// Where one attempt is in a replayed body.
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    generation: u32,
    pos: usize,
    done: bool,
}

impl Replay {
    pub fn new(body: Incoming, limit: usize) -> Arc<Self> {
        Arc::new(Self {
            hint: body.size_hint(),
            state: Mutex::new(ReplayState {
                source: Some(body),
                chunks: Vec::new(),
                size: 0,
                trailers: None,
                overflowed: false,
                generation: 0,
            }),
            limit,
        })
    }

    /// The whole body, when it has been read to its end and kept (for a mirror).
    pub fn snapshot(&self) -> Option<Body> {
        let st = self.lock();
        let read_all = st.source.as_ref().is_none_or(|s| s.is_end_stream());
        if !read_all || st.overflowed {
            return None;
        }
        let mut all = bytes::BytesMut::with_capacity(st.size);
        for c in &st.chunks {
            all.extend_from_slice(c);
        }
        Some(Body::full(all.freeze()))
    }

    /// Bytes read from the original body.
    pub fn received(&self) -> u64 {
        self.lock().size as u64
    }

    /// Whether another attempt can send the whole body again.
    pub fn replayable(&self) -> bool {
        !self.lock().overflowed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplayState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The body of the next attempt.
    pub fn attempt(self: &Arc<Self>) -> Body {
        let mut st = self.lock();
        st.generation += 1;
        let generation = st.generation;
        drop(st);
        Body::of(Kind::Replay(
            self.clone(),
            Cursor {
                generation,
                pos: 0,
                done: false,
            },
        ))
    }

    fn poll_at(
        &self,
        at: &mut Cursor,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut st = self.lock();
        if at.done || at.generation != st.generation {
            at.done = true;
            return Poll::Ready(None);
        }
        if let Some(c) = st.chunks.get(at.pos) {
            at.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(c.clone()))));
        }
        let Some(src) = st.source.as_mut() else {
            at.done = true;
            return Poll::Ready(st.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        };
        match Pin::new(src).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                st.source = None;
                at.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                st.source = None;
                st.overflowed = true;
                at.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    st.size += d.len();
                    if !st.overflowed {
                        if st.size > self.limit {
                            st.overflowed = true;
                            st.chunks = Vec::new();
                        } else {
                            st.chunks.push(d.clone());
                            at.pos += 1;
                        }
                    }
                } else if let Some(t) = f.trailers_ref() {
                    st.trailers = Some(t.clone());
                    st.source = None;
                    at.done = true;
                }
                Poll::Ready(Some(Ok(f)))
            }
        }
    }

    fn at_end(&self, at: &Cursor) -> bool {
        let st = self.lock();
        at.done || (st.source.is_none() && at.pos >= st.chunks.len() && st.trailers.is_none())
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            Kind::Empty => "Body::Empty",
            Kind::Full(_) => "Body::Full",
            Kind::Incoming(_) => "Body::Incoming",
            Kind::H1(_) => "Body::H1",
            Kind::Replay(..) => "Body::Replay",
        })
    }
}

impl Body {
    /// A body of `kind`, with no hooks, counters or bounds yet.
    fn of(kind: Kind) -> Self {
        Self {
            kind,
            on_end: None,
            bytes: 0,
            counter: None,
            grpc_status: None,
            timer: None,
            failed: None,
        }
    }

    pub fn empty() -> Self {
        Self::of(Kind::Empty)
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        Self::of(if b.is_empty() {
            Kind::Empty
        } else {
            Kind::Full(Some(b))
        })
    }

    /// A response body read by Plumb's own HTTP/1.1 client.
    pub fn h1(b: Box<super::h1client::Incoming1>) -> Self {
        Self::of(Kind::H1(b))
    }

    pub fn incoming(b: Incoming) -> Self {
        Self::of(Kind::Incoming(b))
    }

    /// Bounds this body in time.
    pub fn with_timer(mut self, t: Timer) -> Self {
        if t.idle.is_some() || t.deadline.is_some() {
            self.timer = Some(Box::new(t));
        }
        self
    }

    /// Counts this body's data bytes into `c` too.
    pub fn with_counter(mut self, c: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.counter = Some(c);
        self
    }

    /// Where this body's failure will be told, if it fails.
    pub fn watch_failure(&mut self) -> Arc<std::sync::OnceLock<super::h1client::BodyFailure>> {
        self.failed.get_or_insert_with(Default::default).clone()
    }

    /// Runs `hook` when this body ends (or is dropped).
    pub fn with_on_end(mut self, hook: Box<dyn OnEnd>) -> Self {
        self.on_end = Some(hook);
        self
    }

    fn finish(&mut self, complete: bool) {
        if let Some(mut h) = self.on_end.take() {
            h.ended(End {
                complete,
                bytes: self.bytes,
                grpc_status: self.grpc_status,
            });
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let complete = match &self.kind {
            Kind::Empty | Kind::Full(None) => true,
            Kind::Full(Some(_)) => false,
            Kind::Incoming(b) => b.is_end_stream(),
            Kind::H1(b) => b.is_end(),
            Kind::Replay(r, at) => r.at_end(at),
        };
        self.finish(complete);
    }
}

/// Why a body stopped.
#[derive(Debug)]
pub enum BodyError {
    Hyper(hyper::Error),
    /// An upstream HTTP/1.1 response body read by Plumb's own client.
    H1(super::h1client::Error),
    /// `stream_idle_timeout` (or the route's `idle_timeout`) passed without a frame.
    IdleTimeout,
    /// `max_stream_duration` passed.
    MaxDuration,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Hyper(e) => e.fmt(f),
            BodyError::H1(e) => e.fmt(f),
            BodyError::IdleTimeout => f.write_str("stream idle timeout"),
            BodyError::MaxDuration => f.write_str("max stream duration reached"),
        }
    }
}

impl std::error::Error for BodyError {}

/// Bounds on a streamed body: time without a frame, and an overall deadline. The timer is
/// armed only when the body has to wait, so a body that is ready at once costs nothing.
pub struct Timer {
    pub idle: Option<Duration>,
    pub deadline: Option<Instant>,
    pub on_idle: Arc<crate::stats::Counter>,
    pub on_deadline: Arc<crate::stats::Counter>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Timer {
    pub fn new(
        idle: Option<Duration>,
        deadline: Option<Instant>,
        on_idle: Arc<crate::stats::Counter>,
        on_deadline: Arc<crate::stats::Counter>,
    ) -> Self {
        Self {
            idle,
            deadline,
            on_idle,
            on_deadline,
            sleep: None,
        }
    }

    fn next_deadline(&self) -> Option<(Instant, bool)> {
        let idle = self.idle.map(|t| Instant::now() + t);
        match (idle, self.deadline) {
            (Some(i), Some(d)) if d <= i => Some((d, true)),
            (Some(i), _) => Some((i, false)),
            (None, Some(d)) => Some((d, true)),
            (None, None) => None,
        }
    }

    /// Polled when the body is waiting: `Some` when a bound has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<BodyError> {
        let (at, overall) = self.next_deadline()?;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
        if sleep.as_mut().poll(cx).is_ready() {
            self.sleep = None;
            // Which one: the overall deadline if it has passed, else the idle bound.
            if overall || self.deadline.is_some_and(|d| d <= Instant::now()) {
                self.on_deadline.inc();
                return Some(BodyError::MaxDuration);
            }
            self.on_idle.inc();
            return Some(BodyError::IdleTimeout);
        }
        None
    }

    /// A frame came: the idle bound starts over.
    fn activity(&mut self) {
        if self.idle.is_some() {
            self.sleep = None;
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let r = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::Hyper),
            Kind::H1(b) => b.poll_frame(cx).map_err(BodyError::H1),
            Kind::Replay(r, at) => r.poll_at(at, cx).map_err(BodyError::Hyper),
        };
        let r = match (r, this.timer.as_mut()) {
            (Poll::Pending, Some(t)) => match t.poll_expired(cx) {
                Some(e) => Poll::Ready(Some(Err(e))),
                None => Poll::Pending,
            },
            (Poll::Ready(x), Some(t)) => {
                t.activity();
                Poll::Ready(x)
            }
            (r, None) => r,
        };
        match &r {
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                    if let Some(c) = &this.counter {
                        c.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                } else if let Some(t) = f.trailers_ref() {
                    this.grpc_status = t
                        .get(super::headers::names::GRPC_STATUS)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(f) = &this.failed {
                    let _ = f.set(super::h1client::BodyFailure::from(e));
                }
                this.finish(false)
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty | Kind::Full(None) => true,
            Kind::Full(Some(_)) => false,
            Kind::Incoming(b) => b.is_end_stream(),
            Kind::H1(b) => b.is_end(),
            Kind::Replay(r, at) => r.at_end(at),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty | Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Incoming(b) => b.size_hint(),
            Kind::H1(b) => b.size_hint(),
            Kind::Replay(r, _) => r.hint,
        }
    }
}
