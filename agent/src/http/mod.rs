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
pub mod filters;
pub mod headers;
pub mod rds;
mod retry;
pub mod route;
pub mod router;
pub mod stats;
mod upstream;

use crate::config;
use crate::stats::Store;
use crate::transport::Downstream;
use crate::upstream::ClusterManager;
use body::Body;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use route::RouteTable;
use stats::HttpStats;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// hyper's smallest read buffer limit; the header size limit is also checked per request.
const MIN_BUF: usize = 8192;

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
    builder: auto::Builder<TokioExecutor>,
    loggers: Vec<access_log::AccessLogger>,
    /// The HTTP filters before the router.
    filters: Vec<Box<dyn filters::HttpFilter>>,
    /// `server_name` as a header value, made once (`None`: not a valid value).
    server_header: Option<http::HeaderValue>,
}

impl std::fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("stat_prefix", &self.config.stat_prefix)
            .finish()
    }
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
    started: Instant,
    active: AtomicUsize,
    /// When the last request ended, in ms since `started`.
    last_end_ms: AtomicU64,
    counted: AtomicBool,
    http2: AtomicBool,
    /// The drain began: HTTP/1.1 responses say `Connection: close`.
    pub draining: AtomicBool,
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

    /// When the connection has been idle long enough to close, or `None` while busy.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.active.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
        Some(self.started + last + timeout)
    }
}

impl ConnectionManager {
    pub fn new(
        cfg: &config::http::HttpConnectionManager,
        ctx: &crate::filters::BuildContext,
    ) -> Arc<Self> {
        let (clusters, registry, store) = (ctx.clusters.clone(), &ctx.routes, &ctx.store);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        match cfg.codec_type {
            config::http::CodecType::Http1 => builder = builder.http1_only(),
            config::http::CodecType::Http2 => builder = builder.http2_only(),
            config::http::CodecType::Auto => {}
        }
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            .max_buf_size(cfg.max_request_headers_bytes.max(MIN_BUF))
            .max_headers(cfg.max_headers_count)
            .header_read_timeout(cfg.request_headers_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(cfg.http2.max_concurrent_streams)
            .initial_stream_window_size(cfg.http2.initial_stream_window_size)
            .initial_connection_window_size(cfg.http2.initial_connection_window_size)
            .max_header_list_size(cfg.max_request_headers_bytes as u32);
        Arc::new(Self {
            routes: match &cfg.routes {
                config::http::Routes::Inline(rc) => {
                    RouteSource::Inline(Arc::new(RouteTable::new(rc.clone())))
                }
                config::http::Routes::Rds { name, .. } => {
                    let slot = registry.slot(name);
                    let stats = slot.watch(store, &cfg.stat_prefix);
                    RouteSource::Rds(slot, stats)
                }
            },
            config: Box::new(cfg.clone()),
            server_header: http::HeaderValue::from_str(&cfg.server_name).ok(),
            clusters,
            stats: HttpStats::new(store, &cfg.stat_prefix),
            builder,
            filters: filters::build(
                &cfg.http_filters,
                store,
                &cfg.stat_prefix,
                &ctx.health_check_failed,
            ),
            loggers: cfg
                .access_logs
                .iter()
                .map(|l| access_log::AccessLogger::new(l, store))
                .collect(),
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
    pub async fn handle(self: &Arc<Self>, ds: Downstream) {
        let s = &self.stats;
        s.downstream_cx_total.inc();
        s.downstream_cx_active.inc();
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let conn = Arc::new(ConnInfo {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            watch: ds.watch.clone(),
            peer: ds.peer,
            local: ds.local,
            original_dst: ds.original_dst,
            started: Instant::now(),
            active: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            counted: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        });
        let mut draining = ds.watch.clone();
        let mut closing = ds.watch.clone();
        ds.io.set_nodelay();
        let hcm = self.clone();
        let info = conn.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let hcm = hcm.clone();
            let info = info.clone();
            async move { Ok::<Response<Body>, Infallible>(hcm.serve(&info, req).await) }
        });
        let served = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(ds.io), svc);
        tokio::pin!(served);
        let idle = self.config.idle_timeout;
        let mut shutting_down = false;
        // HTTP/1.1 in a drain: the next response says `Connection: close` (so a client never
        // sends on a connection closed under it); an idle connection closes after
        // drain_timeout. HTTP/2 gets GOAWAY at once.
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let wake = idle
                .map(|t| conn.idle_deadline(t).unwrap_or_else(|| Instant::now() + t))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            let drain_wake =
                drain_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                r = served.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(target: "http", peer = %conn.peer, error = %e, "connection ended with error");
                        s.downstream_cx_protocol_error.inc();
                    }
                    break;
                }
                _ = draining.draining(), if !shutting_down && drain_deadline.is_none() => {
                    s.downstream_cx_drain_close.inc();
                    conn.draining.store(true, Ordering::Relaxed);
                    if conn.http2.load(Ordering::Relaxed) {
                        served.as_mut().graceful_shutdown();
                        shutting_down = true;
                    } else {
                        drain_deadline = Some(Instant::now() + self.config.drain_timeout);
                    }
                }
                _ = tokio::time::sleep_until(drain_wake.into()), if drain_deadline.is_some() && !shutting_down => {
                    served.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
                _ = closing.closing() => break,
                _ = tokio::time::sleep_until(wake.into()), if idle.is_some() && !shutting_down => {
                    let t = idle.unwrap_or_default();
                    if conn.idle_deadline(t).is_some_and(|d| d <= Instant::now()) {
                        s.downstream_cx_idle_timeout.inc();
                        served.as_mut().graceful_shutdown();
                        shutting_down = true;
                    }
                }
            }
        }
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
