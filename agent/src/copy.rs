//! Bidirectional byte copying with half-close, adaptive buffers, idle timeout and stats.
//!
//! Both directions run in the connection's one task. A direction starts with a 4 KiB buffer
//! and doubles it (up to 256 KiB) after consecutive reads that fill it, so interactive
//! connections stay small and bulk flows get large reads. The only allocations are those
//! growth steps. A FIN read on one side is forwarded as a write shutdown on the other while
//! the opposite direction keeps flowing.

use crate::stats::Counter;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const INITIAL_BUF: usize = 4 * 1024;
pub const MAX_BUF: usize = 256 * 1024;
/// Consecutive full reads before a buffer doubles.
const GROW_AFTER: u32 = 2;

/// Counters a direction adds to for every chunk it moves.
pub struct DirectionStats<'a> {
    pub counters: [&'a Counter; 2],
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

async fn one_way<R, W>(
    reader: &mut R,
    writer: &mut W,
    from: Side,
    stats: DirectionStats<'_>,
    activity: &Activity,
) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let to = match from {
        Side::Downstream => Side::Upstream,
        Side::Upstream => Side::Downstream,
    };
    let mut buf = vec![0u8; INITIAL_BUF];
    let mut full_reads = 0u32;
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|source| CopyError { side: from, source })?;
        if n == 0 {
            writer
                .shutdown()
                .await
                .map_err(|source| CopyError { side: to, source })?;
            return Ok(total);
        }
        activity.touch();
        // Written piecewise so a slow but progressing peer counts as activity (Envoy's idle
        // timer also resets on bytes sent).
        let mut off = 0;
        while off < n {
            let w = writer
                .write(&buf[off..n])
                .await
                .map_err(|source| CopyError { side: to, source })?;
            if w == 0 {
                return Err(CopyError {
                    side: to,
                    source: io::Error::new(io::ErrorKind::WriteZero, "peer accepts no more data"),
                });
            }
            off += w;
            activity.touch();
        }
        total += n as u64;
        for c in stats.counters {
            c.add(n as u64);
        }
        if n == buf.len() && buf.len() < MAX_BUF {
            full_reads += 1;
            if full_reads >= GROW_AFTER {
                buf.resize(buf.len() * 2, 0);
                full_reads = 0;
            }
        } else {
            full_reads = 0;
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
        tokio::time::sleep_until(deadline.into()).await;
    }
}

async fn max_duration(start: Instant, limit: Option<Duration>) {
    match limit {
        Some(l) => tokio::time::sleep_until((start + l).into()).await,
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

/// Proxies until both directions are closed, a limit fires or `closing` resolves.
pub async fn proxy(
    downstream: &mut TcpStream,
    upstream: &mut TcpStream,
    down_to_up: DirectionStats<'_>,
    up_to_down: DirectionStats<'_>,
    limits: Limits,
    closing: impl std::future::Future<Output = ()>,
    flush: &(dyn FlushObserver + Sync),
) -> Outcome {
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (mut dr, mut dw) = downstream.split();
    let (mut ur, mut uw) = upstream.split();
    let d2u = one_way(&mut dr, &mut uw, Side::Downstream, down_to_up, &activity);
    let u2d = one_way(&mut ur, &mut dw, Side::Upstream, up_to_down, &activity);
    tokio::pin!(d2u, u2d, closing);
    let idle_fut = idle(&activity, limits.idle_timeout);
    let max_fut = max_duration(activity.start, limits.max_duration);
    tokio::pin!(idle_fut, max_fut);

    let mut d2u_done = false;
    let mut u2d_done = false;
    let mut first_eof = None;
    let mut flushing = false;
    let outcome = loop {
        tokio::select! {
            r = &mut d2u, if !d2u_done => match r {
                Ok(_) => {
                    d2u_done = true;
                    first_eof.get_or_insert(Side::Downstream);
                }
                Err(e) => break Outcome::Error(e),
            },
            r = &mut u2d, if !u2d_done => match r {
                Ok(_) => {
                    u2d_done = true;
                    first_eof.get_or_insert(Side::Upstream);
                }
                // The downstream is gone but data it sent may still be on its way upstream:
                // let that direction finish (Envoy's "upstream flush").
                Err(e) if e.side == Side::Downstream && !d2u_done => {
                    u2d_done = true;
                    first_eof.get_or_insert(Side::Downstream);
                    flushing = true;
                    flush.flush_started();
                }
                Err(e) => break Outcome::Error(e),
            },
            _ = &mut idle_fut => break Outcome::IdleTimeout,
            _ = &mut max_fut => break Outcome::MaxDuration,
            _ = &mut closing => break Outcome::Drained,
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
