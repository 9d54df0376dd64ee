//! Bidirectional byte copying with half-close, adaptive buffers, idle timeout and stats.
//!
//! Both directions run in the connection's one task. A direction starts with a 4 KiB buffer
//! and doubles it (up to 256 KiB) after consecutive reads that fill it, so interactive
//! connections stay small and bulk flows get large reads. The only allocations are those
//! growth steps. A FIN read on one side is forwarded as a write shutdown on the other while
//! the opposite direction keeps flowing.

use crate::stats::Counter;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;
// Tokio's clock, so paused-time tests drive the idle and duration timers.
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

pub const INITIAL_BUF: usize = 4 * 1024;
pub const MAX_BUF: usize = 256 * 1024;
/// Consecutive full reads before a buffer doubles.
const GROW_AFTER: u32 = 2;

/// Counters a direction adds to for every chunk it moves.
pub struct DirectionStats<'a> {
    pub counters: [&'a Counter; 2],
    /// This connection's own count (for its access log line).
    pub bytes: &'a std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

/// Which socket failed, and how.
#[derive(Debug)]
pub struct CopyError {
    pub side: Side,
    pub source: io::Error,
}

/// How a proxied connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// Both directions saw EOF and forwarded it.
    Closed {
        first_eof: Side,
    },
    IdleTimeout,
    MaxDuration,
    /// The server's drain time ran out.
    Drained,
    Error(CopyError),
}

struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    #[inline]
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Downstream => Side::Upstream,
            Side::Upstream => Side::Downstream,
        }
    }
}

/// One direction's state: a buffer that is either being filled (empty) or drained.
struct Pump {
    from: Side,
    buf: Vec<u8>,
    /// `buf[pos..cap]` is read but not yet written.
    pos: usize,
    cap: usize,
    read_eof: bool,
    /// Bytes were written since the last flush (a no-op for TCP; TLS buffers records).
    need_flush: bool,
    full_reads: u32,
}

impl Pump {
    fn new(from: Side) -> Self {
        Self {
            from,
            buf: vec![0u8; INITIAL_BUF],
            pos: 0,
            cap: 0,
            read_eof: false,
            need_flush: false,
            full_reads: 0,
        }
    }

    fn err(side: Side) -> impl FnOnce(io::Error) -> CopyError {
        move |source| CopyError { side, source }
    }

    /// Moves bytes until the reader's EOF has been forwarded as a write shutdown (`Ok`), a
    /// side fails, or neither side can make progress (`Pending`, both wakers registered).
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        stats: &DirectionStats<'_>,
        activity: &Activity,
    ) -> Poll<Result<(), CopyError>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let to = self.from.other();
        loop {
            if self.pos == self.cap && !self.read_eof {
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        // Nothing more to read now: push out what a buffering writer holds.
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx)).map_err(Self::err(to))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(r) => r.map_err(Self::err(self.from))?,
                }
                let n = rb.filled().len();
                if n == 0 {
                    self.read_eof = true;
                } else {
                    activity.touch();
                    self.pos = 0;
                    self.cap = n;
                }
            }
            // Written piecewise so a slow but progressing peer counts as activity (Envoy's
            // idle timer also resets on bytes sent).
            while self.pos < self.cap {
                let w =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.cap]))
                        .map_err(Self::err(to))?;
                if w == 0 {
                    return Poll::Ready(Err(CopyError {
                        side: to,
                        source: io::Error::new(
                            io::ErrorKind::WriteZero,
                            "peer accepts no more data",
                        ),
                    }));
                }
                self.pos += w;
                self.need_flush = true;
                activity.touch();
            }
            if self.cap > 0 {
                let n = self.cap;
                for c in stats.counters {
                    c.add(n as u64);
                }
                stats
                    .bytes
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                if n == self.buf.len() && self.buf.len() < MAX_BUF {
                    self.full_reads += 1;
                    if self.full_reads >= GROW_AFTER {
                        self.buf.resize(self.buf.len() * 2, 0);
                        self.full_reads = 0;
                    }
                } else {
                    self.full_reads = 0;
                }
                self.pos = 0;
                self.cap = 0;
            }
            if self.read_eof {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx)).map_err(Self::err(to))?;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

async fn idle(activity: &Activity, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    loop {
        let last = Duration::from_millis(activity.last_ms.load(Ordering::Relaxed));
        let deadline = activity.start + last + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

async fn max_duration(start: Instant, limit: Option<Duration>) {
    match limit {
        Some(l) => tokio::time::sleep_until(start + l).await,
        None => std::future::pending().await,
    }
}

pub struct Limits {
    pub idle_timeout: Option<Duration>,
    pub max_duration: Option<Duration>,
}

/// What happened to flushing when the downstream went away first.
pub trait FlushObserver {
    fn flush_started(&self);
    fn flush_ended(&self);
}

/// Proxies until both directions are closed, a limit fires or `closing` resolves. Both
/// directions are polled from the calling task, without splitting the streams, so any
/// `Stream` (plain, TLS, in-memory) works.
#[allow(clippy::too_many_arguments)]
pub async fn proxy<D, U>(
    downstream: &mut D,
    upstream: &mut U,
    down_to_up: DirectionStats<'_>,
    up_to_down: DirectionStats<'_>,
    limits: Limits,
    closing: impl std::future::Future<Output = ()>,
    flush: &(dyn FlushObserver + Sync),
) -> Outcome
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let mut d2u = Pump::new(Side::Downstream);
    let mut u2d = Pump::new(Side::Upstream);
    tokio::pin!(closing);
    let idle_fut = idle(&activity, limits.idle_timeout);
    let max_fut = max_duration(activity.start, limits.max_duration);
    tokio::pin!(idle_fut, max_fut);

    let mut d2u_done = false;
    let mut u2d_done = false;
    let mut first_eof = None;
    let mut flushing = false;
    // Which direction goes first alternates, so a direction whose data is always ready cannot
    // spend the task's whole cooperative budget and starve the other.
    let mut upstream_first = false;
    let outcome = loop {
        let pumped = std::future::poll_fn(|cx| {
            upstream_first = !upstream_first;
            for side in [upstream_first, !upstream_first] {
                if side && !u2d_done {
                    if let Poll::Ready(r) =
                        u2d.poll(cx, upstream, downstream, &up_to_down, &activity)
                    {
                        return Poll::Ready((Side::Upstream, r));
                    }
                } else if !side && !d2u_done {
                    if let Poll::Ready(r) =
                        d2u.poll(cx, downstream, upstream, &down_to_up, &activity)
                    {
                        return Poll::Ready((Side::Downstream, r));
                    }
                }
            }
            Poll::Pending
        });
        let (from, r) = tokio::select! {
            ev = pumped => ev,
            _ = &mut idle_fut => break Outcome::IdleTimeout,
            _ = &mut max_fut => break Outcome::MaxDuration,
            _ = &mut closing => break Outcome::Drained,
        };
        match (from, r) {
            (Side::Downstream, Ok(())) => {
                d2u_done = true;
                first_eof.get_or_insert(Side::Downstream);
            }
            (Side::Upstream, Ok(())) => {
                u2d_done = true;
                first_eof.get_or_insert(Side::Upstream);
            }
            // The downstream is gone but data it sent may still be on its way upstream:
            // let that direction finish (Envoy's "upstream flush").
            (Side::Upstream, Err(e)) if e.side == Side::Downstream && !d2u_done => {
                u2d_done = true;
                first_eof.get_or_insert(Side::Downstream);
                flushing = true;
                flush.flush_started();
            }
            (_, Err(e)) => break Outcome::Error(e),
        }
        if d2u_done && u2d_done {
            break Outcome::Closed {
                first_eof: first_eof.unwrap_or(Side::Downstream),
            };
        }
    };
    if flushing {
        flush.flush_ended();
    }
    outcome
}
