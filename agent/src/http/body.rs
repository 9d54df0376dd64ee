//! The one body type of requests and responses that pass through Plumb: a received body
//! streamed on, a small body Plumb wrote itself, or nothing. A body can carry an end hook
//! (`OnEnd`) that runs when its last frame has been read: it hands an HTTP/1 connection back
//! to its pool and closes the request's books.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Called once when the body ended cleanly (`true`) or was dropped before its end (`false`).
pub trait OnEnd: Send + Sync + 'static {
    fn ended(&mut self, complete: bool);
}

pub struct Body {
    kind: Kind,
    on_end: Option<Box<dyn OnEnd>>,
    /// Data bytes read so far.
    pub(crate) bytes: u64,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            Kind::Empty => "Body::Empty",
            Kind::Full(_) => "Body::Full",
            Kind::Incoming(_) => "Body::Incoming",
        })
    }
}

impl Body {
    pub fn empty() -> Self {
        Self {
            kind: Kind::Empty,
            on_end: None,
            bytes: 0,
        }
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        Self {
            kind: if b.is_empty() {
                Kind::Empty
            } else {
                Kind::Full(Some(b))
            },
            on_end: None,
            bytes: 0,
        }
    }

    pub fn incoming(b: Incoming) -> Self {
        Self {
            kind: Kind::Incoming(b),
            on_end: None,
            bytes: 0,
        }
    }

    /// Runs `hook` when this body ends (or is dropped).
    pub fn with_on_end(mut self, hook: Box<dyn OnEnd>) -> Self {
        self.on_end = Some(hook);
        self
    }

    fn finish(&mut self, complete: bool) {
        if let Some(mut h) = self.on_end.take() {
            h.ended(complete);
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let complete = match &self.kind {
            Kind::Empty | Kind::Full(None) => true,
            Kind::Full(Some(_)) => false,
            Kind::Incoming(b) => b.is_end_stream(),
        };
        self.finish(complete);
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(b) => Pin::new(b).poll_frame(cx),
        };
        match &r {
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty | Kind::Full(None) => true,
            Kind::Full(Some(_)) => false,
            Kind::Incoming(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty | Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Incoming(b) => b.size_hint(),
        }
    }
}
