//! A request body going upstream on a connection of the own client: framed by a length or
//! chunked, queued as encoded, and written while the response may already come.

use super::Body;
use crate::http::body::BodyError;
use crate::transport::Stream;
use bytes::{Buf, Bytes};
use http_body::Frame;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A request body to send after the head. It stays with the caller until its head was
/// written: a pooled connection found closed then (`Error::NotSent`) leaves it whole, with
/// the frame already read from it, for another connection.
pub struct Upload {
    pub(super) body: Body,
    /// How the body is framed, decided at the first head written: `None`, by the request's
    /// `content-length`; else the length added to the head (the body's exact size), or
    /// chunked (`u64::MAX`: an HTTP/2 request without a length, say).
    pub(super) added: Option<Option<u64>>,
    pub(super) chunked: bool,
    /// Bytes still to send when framed by a length: the upload is complete once they are
    /// out, whether or not the body has said it ended.
    pub(super) remaining: Option<u64>,
    /// Read from the body before the head was written.
    pub(super) read_first: bool,
    /// Encoded and not yet written.
    pub(super) queue: std::collections::VecDeque<Bytes>,
    /// The body has ended (its last chunk is queued); what is queued is then flushed.
    pub(super) ended: bool,
}

/// What is queued of the body when the head is written goes in the same write up to this
/// size.
pub(super) const WITH_HEAD: usize = 16 * 1024;

impl Upload {
    pub fn new(body: Body) -> Self {
        Self {
            body,
            added: None,
            chunked: false,
            remaining: None,
            read_first: false,
            queue: std::collections::VecDeque::new(),
            ended: false,
        }
    }

    /// Queues a frame: a data chunk (as is with a length, in a chunk when chunked), or the
    /// trailers (only chunked framing carries them).
    pub(super) fn encode(&mut self, f: Frame<Bytes>) {
        match f.into_data() {
            Ok(d) if d.is_empty() => {}
            Ok(d) if self.chunked => {
                self.queue
                    .push_back(Bytes::from(format!("{:x}\r\n", d.len())));
                self.queue.push_back(d);
                self.queue.push_back(Bytes::from_static(b"\r\n"));
            }
            Ok(mut d) => {
                if let Some(left) = self.remaining.as_mut() {
                    // Never more than the length said (the stream would desynchronise).
                    d.truncate((*left).min(d.len() as u64) as usize);
                    *left -= d.len() as u64;
                    if *left == 0 {
                        self.ended = true;
                    }
                }
                if !d.is_empty() {
                    self.queue.push_back(d);
                }
            }
            Err(f) => {
                if let (Ok(trailers), true) = (f.into_trailers(), self.chunked) {
                    let mut t = b"0\r\n".to_vec();
                    for (k, v) in &trailers {
                        t.extend_from_slice(k.as_str().as_bytes());
                        t.extend_from_slice(b": ");
                        t.extend_from_slice(v.as_bytes());
                        t.extend_from_slice(b"\r\n");
                    }
                    t.extend_from_slice(b"\r\n");
                    self.queue.push_back(Bytes::from(t));
                    self.ended = true;
                }
            }
        }
    }

    /// The body has ended: its last chunk is queued. A body shorter than its length would
    /// leave the upstream waiting for the rest (and the connection out of step).
    pub(super) fn end(&mut self) -> Result<(), BodyFailure> {
        if let Some(left @ 1..) = self.remaining.filter(|_| !self.ended) {
            return Err(BodyFailure::Failed(format!(
                "the request body ended {left} bytes short of its content-length"
            )));
        }
        if !self.ended && self.chunked {
            self.queue.push_back(Bytes::from_static(b"0\r\n\r\n"));
        }
        self.ended = true;
        Ok(())
    }

    /// Sends what the body has: `Ready(Ok)` once all of it is written and flushed.
    pub(super) fn poll_send(
        &mut self,
        io: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UploadError>> {
        use http_body::Body as _;
        use tokio::io::AsyncWrite;
        loop {
            while let Some(front) = self.queue.front_mut() {
                match Pin::new(&mut *io).poll_write(cx, front) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(UploadError::Write(
                            std::io::ErrorKind::WriteZero.into(),
                        )))
                    }
                    Poll::Ready(Ok(n)) => {
                        front.advance(n);
                        if front.is_empty() {
                            self.queue.pop_front();
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(UploadError::Write(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // Written is not sent yet over TLS: the session may still hold the records.
            match Pin::new(&mut *io).poll_flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(UploadError::Write(e))),
                Poll::Pending => return Poll::Pending,
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => self.encode(f),
                Poll::Ready(None) => self.end().map_err(UploadError::Body)?,
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(UploadError::Body(BodyFailure::from(&e))))
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

pub(super) enum UploadError {
    /// The upstream stopped taking the body (it may still answer).
    Write(std::io::Error),
    Body(BodyFailure),
}

/// Why a request body failed on its way upstream: the downstream's doing, not the
/// upstream's (not retried, not held against the host).
#[derive(Debug, Clone)]
pub enum BodyFailure {
    /// `stream_idle_timeout` (or the route's `idle_timeout`) passed without a frame.
    IdleTimeout,
    /// `max_stream_duration` passed.
    MaxDuration,
    /// The client went away, sent a bad body, or less than its `content-length` said.
    Failed(String),
}

impl From<&BodyError> for BodyFailure {
    fn from(e: &BodyError) -> Self {
        match e {
            BodyError::IdleTimeout => BodyFailure::IdleTimeout,
            BodyError::MaxDuration => BodyFailure::MaxDuration,
            e => BodyFailure::Failed(e.to_string()),
        }
    }
}

impl std::fmt::Display for BodyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyFailure::IdleTimeout => f.write_str("stream idle timeout"),
            BodyFailure::MaxDuration => f.write_str("max stream duration"),
            BodyFailure::Failed(why) => f.write_str(why),
        }
    }
}
