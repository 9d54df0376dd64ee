//! The HTTP connection manager (`envoy.filters.network.http_connection_manager`): a
//! terminal network filter that serves HTTP/1.1 and HTTP/2 (prior knowledge) on a
//! downstream connection with hyper, routes each request (`route`) and forwards it through
//! the router (`router`) to pooled upstream connections (`upstream::pool`).
//!
//! Per connection: one task runs the codec; HTTP/2 streams run as their own tasks. The
//! connection closes after `idle_timeout` without requests, and on drain (listener removal,
//! SIGTERM, hand-over) HTTP/1.1 answers its in-flight request with `Connection: close` and
//! HTTP/2 sends GOAWAY; in-flight requests finish until the drain's close phase.

pub mod access_log;
pub mod body;
mod exchange;
pub mod filters;
mod forward;
pub mod h1client;
pub mod headers;
mod mirror;
mod pick;
pub mod rds;
mod retry;
mod rewrite;
pub mod route;
pub mod router;
pub mod stats;
mod upstream;

use crate::config;
use crate::stats::Store;
use crate::transport::Downstream;
use crate::upstream::ClusterManager;
use body::Body;
use bytes::Bytes;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use route::RouteTable;
use stats::HttpStats;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// hyper's smallest read buffer limit; the header size limit is also checked per request.
const MIN_BUF: usize = 8192;

/// An HTTP/1.1 connection idle this long gives its codec buffers back (about 16 KiB of hyper
/// state) and waits for its next request with none: 10,000 idle keep-alive connections cost
/// their sockets, not their buffers.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// With more than PARK_SOON_ABOVE HTTP/1.1 connections open on a connection manager, idle
/// ones park after PARK_SOON: a burst of thousands of new keep-alive connections then never
/// holds thousands of codec buffers at once (which would also leave the heap fragmented).
const PARK_SOON: Duration = Duration::from_millis(20);
const PARK_SOON_ABOVE: i64 = 1000;

/// The HTTP/2 connection preface: what `codec_type: AUTO` tells HTTP/2 by.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Where a connection manager finds its route table for each request.
enum RouteSource {
    Inline(Arc<RouteTable>),
    /// The slot RDS fills (held, so RDS keeps the name subscribed), and its stats.
    Rds(Arc<rds::RouteSlot>, #[allow(dead_code)] Arc<rds::RdsStats>),
}

pub struct ConnectionManager {
    pub config: Box<config::http::HttpConnectionManager>,
    routes: RouteSource,
    clusters: Arc<ClusterManager>,
    pub stats: HttpStats,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    loggers: Vec<access_log::AccessLogger>,
    /// The HTTP filters before the router.
    filters: Vec<(String, Box<dyn filters::HttpFilter>)>,
    /// `server_name` as a header value, made once (`None`: not a valid value).
    server_header: Option<http::HeaderValue>,
    /// The request and response headers the access logs read (a request keeps only these).
    log_headers: (Vec<http::HeaderName>, Vec<http::HeaderName>),
}

impl std::fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("stat_prefix", &self.config.stat_prefix)
            .finish()
    }
}

/// A connection's `%CONNECTION_ID%`: unique across the agent's HTTP and TCP connections.
pub fn next_connection_id() -> u64 {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// What the requests of one connection share.
pub struct ConnInfo {
    /// Unique per connection (`%CONNECTION_ID%`).
    pub id: u64,
    /// The drain this connection follows (the health check filter answers 503 once it drains).
    pub watch: crate::drain::Watch,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub original_dst: Option<SocketAddr>,
    /// What the TLS handshake established (a chain that terminates TLS).
    pub tls: Option<Box<crate::tls::TlsInfo>>,
    /// The SNI the client asked for.
    pub server_name: Option<String>,
    started: Instant,
    active: AtomicUsize,
    /// When the last request ended, in ms since `started`.
    last_end_ms: AtomicU64,
    counted: AtomicBool,
    http2: AtomicBool,
    /// The drain began: HTTP/1.1 responses say `Connection: close`.
    pub draining: AtomicBool,
    /// A WebSocket upgrade answered 101: the connection, once hyper hands it back, goes here.
    upgrade: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Prefixed>>>,
}

impl ConnInfo {
    fn request_started(&self, v: Version, s: &HttpStats) {
        self.active.fetch_add(1, Ordering::Relaxed);
        if v == Version::HTTP_2 {
            s.downstream_rq_http2_total.inc();
        } else {
            s.downstream_rq_http1_total.inc();
        }
        // The codec is known from the first request.
        if !self.counted.swap(true, Ordering::Relaxed) {
            if v == Version::HTTP_2 {
                self.http2.store(true, Ordering::Relaxed);
                s.downstream_cx_http2_total.inc();
                s.downstream_cx_http2_active.inc();
            } else {
                s.downstream_cx_http1_total.inc();
                s.downstream_cx_http1_active.inc();
            }
        }
    }

    pub(super) fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    fn request_ended(&self) {
        self.last_end_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Where the downstream connection of a WebSocket upgrade will arrive, once its 101 is out.
    pub(super) fn expect_upgrade(&self) -> tokio::sync::oneshot::Receiver<Prefixed> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.upgrade.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// When the connection has been idle long enough to close, or `None` while busy.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
        Some(self.started + last + timeout)
    }
}

/// hyper's HTTP/1.1 header count limit when none is set.
const HYPER_MAX_HEADERS: usize = 100;

impl ConnectionManager {
    pub fn new(
        cfg: &config::http::HttpConnectionManager,
        ctx: &crate::filters::BuildContext,
    ) -> Arc<Self> {
        let (clusters, registry, store) = (ctx.clusters.clone(), &ctx.routes, &ctx.store);
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .keep_alive(true)
            .max_buf_size(cfg.max_request_headers_bytes.max(MIN_BUF))
            .header_read_timeout(cfg.request_headers_timeout);
        // hyper's own limit is Envoy's default, 100, and setting it (even to 100) makes hyper
        // fill a header array per request instead of using its inline one.
        if cfg.max_headers_count != HYPER_MAX_HEADERS {
            h1.max_headers(cfg.max_headers_count);
        }
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(cfg.http2.max_concurrent_streams)
            .initial_stream_window_size(cfg.http2.initial_stream_window_size)
            .initial_connection_window_size(cfg.http2.initial_connection_window_size)
            .max_header_list_size(cfg.max_request_headers_bytes as u32);
        let loggers: Vec<access_log::AccessLogger> = cfg
            .access_logs
            .iter()
            .map(|l| access_log::AccessLogger::new(l, store))
            .collect();
        let log_headers = access_log::referenced_headers(&loggers);
        Arc::new(Self {
            routes: match &cfg.routes {
                config::http::Routes::Inline(rc) => {
                    RouteSource::Inline(Arc::new(RouteTable::new(rc.clone(), store)))
                }
                config::http::Routes::Rds { name, .. } => {
                    let slot = registry.slot(name);
                    let stats = slot.watch(store, &cfg.stat_prefix);
                    RouteSource::Rds(slot, stats)
                }
            },
            config: Box::new(cfg.clone()),
            server_header: http::HeaderValue::from_str(&cfg.server_name).ok(),
            loggers,
            log_headers,
            clusters,
            stats: HttpStats::new(store, &cfg.stat_prefix),
            h1,
            h2,
            filters: filters::build(
                &cfg.http_filters,
                store,
                &cfg.stat_prefix,
                &ctx.health_check_failed,
            ),
        })
    }

    /// The route table for a request: fixed, or RDS's current one (`None` before it came).
    fn route_table(&self) -> Option<Arc<RouteTable>> {
        match &self.routes {
            RouteSource::Inline(t) => Some(t.clone()),
            RouteSource::Rds(slot, _) => slot.table(),
        }
    }

    /// Serves the connection until the client closes it, it idles out, or the drain ends.
    pub async fn handle(self: &Arc<Self>, mut ds: Downstream) {
        let s = &self.stats;
        s.downstream_cx_total.inc();
        s.downstream_cx_active.inc();
        let conn = Arc::new(ConnInfo {
            id: next_connection_id(),
            watch: ds.watch.clone(),
            peer: ds.peer,
            local: ds.local,
            original_dst: ds.original_dst,
            tls: ds.tls.take(),
            server_name: ds.server_name.take(),
            started: Instant::now(),
            active: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            counted: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            upgrade: std::sync::Mutex::new(None),
            draining: AtomicBool::new(false),
        });
        ds.io.set_nodelay();
        let hcm = self.clone();
        let info = conn.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let hcm = hcm.clone();
            let info = info.clone();
            // Boxed: hyper keeps a slot for the service future for the life of the connection,
            // so an idle keep-alive connection holds 16 bytes for it, not the whole exchange.
            // Built in its box (8 KB, of which a new request sets 280 bytes), not on the stack
            // and copied.
            let fut: std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>,
            > = boxed_in_place(move || async move { Ok(hcm.serve(&info, req).await) });
            fut
        });
        let mut d = Driver {
            hcm: self,
            conn: &conn,
            draining: ds.watch.clone(),
            closing: ds.watch.clone(),
            drain_deadline: None,
            shutting_down: false,
        };
        let mut io = Prefixed::new(Bytes::new(), ds.io);
        let h2 = match self.config.codec_type {
            config::http::CodecType::Http1 => false,
            config::http::CodecType::Http2 => true,
            config::http::CodecType::Auto => match Box::pin(d.sniff(&mut io)).await {
                Some(h2) => h2,
                None => return d.ended(),
            },
        };
        if h2 {
            // Boxed: an HTTP/1.1 connection's task keeps no room for HTTP/2's codec.
            let mut served = Box::pin(self.h2.serve_connection(TokioIo::new(io), svc));
            let _ = d.drive(served.as_mut(), |c| c.graceful_shutdown()).await;
        } else {
            d.serve_h1(io, svc).await;
        }
        d.ended();
    }
}

/// `Box::pin(make())`, with `make`'s value written straight into the box: the box is
/// allocated first, so the optimiser can have `make` return into it (a future's size is that
/// of its largest state, while a future not yet polled sets only its captures; `Box::pin`
/// of a value copies all of it from the stack).
#[inline(always)]
pub(crate) fn boxed_in_place<F, M: FnOnce() -> F>(make: M) -> std::pin::Pin<Box<F>> {
    let mut b = Box::<F>::new_uninit();
    b.write(make());
    // SAFETY: written on the line above.
    Box::into_pin(unsafe { b.assume_init() })
}

/// What ended one hyper HTTP/1.1 codec run.
enum Ran {
    /// The client closed, an error, keep-alive off, a drain or idle close: the connection ends.
    Done,
    /// Idle for PARK_AFTER: hyper gave the connection back, buffers freed.
    Parked,
}

/// Drives one downstream connection's codec with the connection manager's timers: idle
/// timeout, drain (HTTP/1.1 `Connection: close` then close after drain_timeout; HTTP/2 GOAWAY),
/// the drain's close phase, and parking idle HTTP/1.1 connections.
struct Driver<'a> {
    hcm: &'a Arc<ConnectionManager>,
    conn: &'a Arc<ConnInfo>,
    draining: crate::drain::Watch,
    closing: crate::drain::Watch,
    drain_deadline: Option<Instant>,
    shutting_down: bool,
}

impl Driver<'_> {
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(86_400)
    }

    /// Reads until the HTTP/2 preface is seen or ruled out (`codec_type: AUTO`); `None` when
    /// the connection ends first.
    async fn sniff(&mut self, io: &mut Prefixed) -> Option<bool> {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::with_capacity(H2_PREFACE.len());
        let idle = self.hcm.config.idle_timeout;
        let wake = Instant::now() + idle.unwrap_or(Duration::from_secs(86_400));
        loop {
            let n = buf.len();
            if n > 0 && !H2_PREFACE.starts_with(&buf) {
                io.prefix = buf.into();
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                io.prefix = buf.into();
                return Some(true);
            }
            let mut chunk = [0u8; 24];
            tokio::select! {
                r = io.read(&mut chunk[..H2_PREFACE.len() - n]) => match r {
                    Ok(0) | Err(_) => return None,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                },
                _ = self.closing.closing() => return None,
                _ = self.draining.draining() => {
                    // Nothing was asked yet: nothing to answer.
                    self.hcm.stats.downstream_cx_drain_close.inc();
                    return None;
                }
                _ = tokio::time::sleep_until(wake.into()), if idle.is_some() => {
                    self.hcm.stats.downstream_cx_idle_timeout.inc();
                    return None;
                }
            }
        }
    }

    /// Serves HTTP/1.1 on `io`: hyper's codec while requests come, none while the connection
    /// idles (parked), until it ends.
    async fn serve_h1<S>(&mut self, mut io: Prefixed, svc: S)
    where
        S: hyper::service::HttpService<Incoming, ResBody = Body> + Clone + Unpin + Send + 'static,
        S::Future: Unpin + Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // In-memory streams (tests, fuzzing) cannot wait for readability without reading.
        let can_park = matches!(io.io, crate::transport::Stream::Tcp(_));
        loop {
            // Boxed, in a block of its own: the box is freed before the connection parks
            // (moving out with `*c` keeps the allocation until the box goes out of scope).
            let (ran, parts) = {
                let mut c = Box::new(self.hcm.h1.serve_connection(TokioIo::new(io), svc.clone()));
                let ran = Box::pin(self.run(&mut c, can_park)).await;
                (ran, (*c).into_parts())
            };
            let mut back = parts.io.into_inner();
            back.unread(parts.read_buf);
            // A 101 went out: the connection belongs to the tunnel now.
            let tunnel = self
                .conn
                .upgrade
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .filter(|tx| !tx.is_closed());
            if let Some(tx) = tunnel {
                let _ = tx.send(back);
                return;
            }
            match ran {
                Ran::Parked => {
                    io = back;
                    let parked = &self.hcm.stats.downstream_cx_http1_parked;
                    parked.inc();
                    let more = Box::pin(self.park(&mut io)).await;
                    parked.dec();
                    if !more {
                        return;
                    }
                }
                Ran::Done => {
                    use tokio::io::AsyncWriteExt;
                    let _ = Box::pin(tokio::time::timeout(
                        Duration::from_secs(1),
                        back.shutdown(),
                    ))
                    .await;
                    return;
                }
            }
        }
    }

    /// Waits, holding no codec state, until the parked connection has bytes to read (`true`)
    /// or must end: the client closed, idle timeout, drain timeout, the drain's close phase.
    async fn park(&mut self, io: &mut Prefixed) -> bool {
        if !io.prefix.is_empty() {
            return true;
        }
        let crate::transport::Stream::Tcp(tcp) = &io.io else {
            return true;
        };
        let idle = self.hcm.config.idle_timeout;
        loop {
            // One timer for both ends a parked connection may reach (it lives as long as the
            // connection idles).
            let idle_at = idle.and_then(|t| self.conn.idle_deadline(t));
            let wake = match (idle_at, self.drain_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                r = tcp.readable() => return r.is_ok(),
                _ = self.closing.closing() => return false,
                _ = self.draining.draining(), if self.drain_deadline.is_none() => self.start_drain(),
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Self::far).into()), if wake.is_some() => {
                    let now = Instant::now();
                    if self.drain_deadline.is_some_and(|d| d <= now) {
                        return false;
                    }
                    if idle_at.is_some_and(|d| d <= now) {
                        self.hcm.stats.downstream_cx_idle_timeout.inc();
                        return false;
                    }
                }
            }
        }
    }

    fn start_drain(&mut self) {
        self.hcm.stats.downstream_cx_drain_close.inc();
        self.conn.draining.store(true, Ordering::Relaxed);
        self.drain_deadline = Some(Instant::now() + self.hcm.config.drain_timeout);
    }

    /// HTTP/2: hyper's codec until the connection ends.
    async fn drive<F>(
        &mut self,
        mut served: std::pin::Pin<&mut F>,
        mut graceful: impl FnMut(std::pin::Pin<&mut F>),
    ) -> Ran
    where
        F: std::future::Future<Output = hyper::Result<()>>,
    {
        // The same loop as HTTP/1.1, without parking; GOAWAY at drain start.
        let s = &self.hcm.stats;
        let idle = self.hcm.config.idle_timeout;
        loop {
            let wake = idle
                .map(|t| {
                    self.conn
                        .idle_deadline(t)
                        .unwrap_or_else(|| Instant::now() + t)
                })
                .unwrap_or_else(Self::far);
            tokio::select! {
                r = served.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(target: "http", peer = %self.conn.peer, error = %e, "connection ended with error");
                        s.downstream_cx_protocol_error.inc();
                    }
                    return Ran::Done;
                }
                _ = self.draining.draining(), if !self.shutting_down => {
                    s.downstream_cx_drain_close.inc();
                    self.conn.draining.store(true, Ordering::Relaxed);
                    graceful(served.as_mut());
                    self.shutting_down = true;
                }
                _ = self.closing.closing() => return Ran::Done,
                _ = tokio::time::sleep_until(wake.into()), if idle.is_some() && !self.shutting_down => {
                    let t = idle.unwrap_or_default();
                    if self.conn.idle_deadline(t).is_some_and(|d| d <= Instant::now()) {
                        s.downstream_cx_idle_timeout.inc();
                        graceful(served.as_mut());
                        self.shutting_down = true;
                    }
                }
            }
        }
    }

    /// HTTP/1.1: hyper's codec until the connection ends or parks.
    async fn run<S>(
        &mut self,
        c: &mut http1::Connection<TokioIo<Prefixed>, S>,
        can_park: bool,
    ) -> Ran
    where
        S: hyper::service::HttpService<Incoming, ResBody = Body> + Unpin,
        S::Future: Unpin,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let s = &self.hcm.stats;
        let idle = self.hcm.config.idle_timeout;
        let mut parking = false;
        loop {
            // One timer for the deadlines this round may reach (the task polls every branch
            // at each wake-up): the drain's end, the idle timeout, parking.
            let drain_wake = self.drain_deadline.filter(|_| !self.shutting_down);
            let idle_wake = idle.filter(|_| !self.shutting_down).map(|t| {
                self.conn
                    .idle_deadline(t)
                    .unwrap_or_else(|| Instant::now() + t)
            });
            let park_after = if s.downstream_cx_http1_active.value() > PARK_SOON_ABOVE {
                PARK_SOON
            } else {
                PARK_AFTER
            };
            let park_wake = (can_park && !parking && !self.shutting_down).then(|| {
                self.conn
                    .idle_deadline(park_after)
                    .unwrap_or_else(|| Instant::now() + park_after)
            });
            let wake = [drain_wake, idle_wake, park_wake]
                .into_iter()
                .flatten()
                .min();
            // One wait for the drain's phases: past `Running` until this connection drains,
            // then past `Draining` (the close phase).
            let seen = if self.shutting_down || self.drain_deadline.is_some() {
                crate::drain::Phase::Draining
            } else {
                crate::drain::Phase::Running
            };
            tokio::select! {
                // Polled afresh each round (select! drops it before a handler runs, so the
                // handlers may reach `c` too).
                r = std::future::poll_fn(|cx| c.poll_without_shutdown(cx)) => {
                    if let Err(e) = r {
                        tracing::debug!(target: "http", peer = %self.conn.peer, error = %e, "connection ended with error");
                        s.downstream_cx_protocol_error.inc();
                        return Ran::Done;
                    }
                    return if parking { Ran::Parked } else { Ran::Done };
                }
                phase = self.closing.beyond(seen) => {
                    if phase >= crate::drain::Phase::Closing {
                        return Ran::Done;
                    }
                    // HTTP/1.1 in a drain: the next response says `Connection: close` (so a
                    // client never sends on a connection closed under it); an idle connection
                    // closes after drain_timeout.
                    self.start_drain();
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Self::far).into()), if wake.is_some() => {
                    // (Not shutting down: the timer is off then.)
                    let now = Instant::now();
                    let drain_due = drain_wake.is_some_and(|d| d <= now);
                    let idle_due = !drain_due
                        && idle.is_some_and(|t| self.conn.idle_deadline(t).is_some_and(|d| d <= now));
                    if drain_due || idle_due {
                        if idle_due {
                            s.downstream_cx_idle_timeout.inc();
                        }
                        parking = false;
                        std::pin::Pin::new(&mut *c).graceful_shutdown();
                        self.shutting_down = true;
                    } else if park_wake.is_some()
                        && self.conn.idle_deadline(park_after).is_some_and(|d| d <= now)
                    {
                        // Idle (no request in flight, none half-read: hyper closes only an idle
                        // codec; a partial request stays in its buffer and comes back to us).
                        parking = true;
                        std::pin::Pin::new(&mut *c).graceful_shutdown();
                    }
                }
            }
        }
    }

    fn ended(&self) {
        let s = &self.hcm.stats;
        let conn = self.conn;
        s.downstream_cx_active.dec();
        s.downstream_cx_destroy.inc();
        s.downstream_cx_length_ms.record(conn.started.elapsed());
        if conn.counted.load(Ordering::Relaxed) {
            if conn.http2.load(Ordering::Relaxed) {
                s.downstream_cx_http2_active.dec();
            } else {
                s.downstream_cx_http1_active.dec();
            }
        }
    }
}

/// Fuzzing entry: `data` arrives as one downstream connection's bytes (then EOF) at a
/// connection manager with routes of every kind; the connection must end, without a panic,
/// within 10 s. Upstream clusters have no hosts, so nothing leaves the process.
#[doc(hidden)]
pub fn fuzz_connection(data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BOOTSTRAP: &str = r#"{"static_resources": {
        "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
          "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
              "stat_prefix": "fuzz", "max_request_headers_kb": 8,
              "common_http_protocol_options": {"max_headers_count": 50, "headers_with_underscores_action": "DROP_HEADER"},
              "route_config": {"virtual_hosts": [
                {"name": "a", "domains": ["a.example", "*.b.example", "c.*"],
                 "request_headers_to_add": [{"header": {"key": "x-v", "value": "%REQ(x-in)% %DOWNSTREAM_REMOTE_ADDRESS%"}}],
                 "routes": [
                  {"match": {"path": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}},
                  {"match": {"prefix": "/r", "query_parameters": [{"name": "q", "string_match": {"prefix": "x", "ignore_case": true}}]},
                   "redirect": {"prefix_rewrite": "/s", "response_code": "FOUND"}},
                  {"match": {"safe_regex": {"regex": "/v[0-9]+/(.*)"}, "headers": [{"name": "x-h", "range_match": {"start": 1, "end": 9}, "invert_match": true}]},
                   "route": {"cluster": "none", "regex_rewrite": {"pattern": {"regex": "/v([0-9]+)/"}, "substitution": "/\\1/"}}},
                  {"match": {"prefix": "/", "grpc": {}}, "route": {"cluster": "missing", "cluster_not_found_response_code": "NOT_FOUND"}},
                  {"match": {"path_separated_prefix": "/api"}, "route": {"cluster_header": "x-cluster"}},
                  {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [{"name": "none", "weight": 1}, {"name": "missing", "weight": 1}]},
                   "retry_policy": {"retry_on": "5xx,reset", "num_retries": 2, "retry_back_off": {"base_interval": "0.001s"}}}}]},
                {"name": "any", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "none", "timeout": "1s"}}]}],
               "validate_clusters": false},
              "http_filters": [{"name": "envoy.filters.http.router"}]}}]}]}],
        "clusters": [{"name": "none", "connect_timeout": "1s", "load_assignment": {"cluster_name": "none", "endpoints": []}}]}}"#;
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        static HCM: Arc<ConnectionManager> = {
            let snap = config::parse_bootstrap(BOOTSTRAP, "fuzz").expect("the fuzz bootstrap is valid");
            let store = Store::new();
            let clusters = Arc::new(ClusterManager::new(&snap, &store));
            let config::NetworkFilter::HttpConnectionManager(h) = &snap.listeners[0].filter_chains[0].filters[0] else {
                unreachable!("the fuzz bootstrap has a connection manager")
            };
            ConnectionManager::new(
                h,
                &crate::filters::BuildContext {
                    clusters,
                    routes: Default::default(),
                    health_check_failed: Default::default(),
                    store,
                },
            )
        };
    }
    let hcm = HCM.with(|h| h.clone());
    let data = data.to_vec();
    RT.with(|rt| {
        rt.block_on(async move {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let drain = crate::drain::Drain::new();
            let addr: SocketAddr = "127.0.0.1:1".parse().expect("an address");
            let ds = Downstream::new(
                crate::transport::Stream::Memory(server),
                addr,
                addr,
                drain.watch(),
            );
            let served = tokio::spawn(async move { hcm.handle(ds).await });
            let (mut rd, mut wr) = tokio::io::split(&mut client);
            let write = async {
                let _ = wr.write_all(&data).await;
                let _ = wr.shutdown().await;
            };
            let read = async {
                let mut sink = [0u8; 16 * 1024];
                while let Ok(n) = rd.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let all = async {
                tokio::join!(write, read);
                let _ = served.await;
            };
            if tokio::time::timeout(Duration::from_secs(10), all)
                .await
                .is_err()
            {
                panic!("the connection did not end within 10 s of EOF");
            }
        })
    });
}

/// A downstream stream with bytes already read from it in front (the preface sniffed for
/// `codec_type: AUTO`, or what hyper had read past its last request when it parked).
pub struct Prefixed {
    prefix: Bytes,
    io: crate::transport::Stream,
}

impl Prefixed {
    fn new(prefix: Bytes, io: crate::transport::Stream) -> Self {
        Self { prefix, io }
    }

    /// Puts `b` back in front of what is still unread.
    fn unread(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if self.prefix.is_empty() {
            self.prefix = b;
        } else {
            let mut v = Vec::with_capacity(b.len() + self.prefix.len());
            v.extend_from_slice(&b);
            v.extend_from_slice(&self.prefix);
            self.prefix = v.into();
        }
    }
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
