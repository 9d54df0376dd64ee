//! `envoy.filters.network.tcp_proxy`: connect to the cluster (with connect attempts), then
//! copy bytes both ways until both sides close, a timeout fires or the drain ends.

use crate::config;
use crate::copy::{self, DirectionStats, FlushObserver, Limits, Outcome, Side};
use crate::stats::{Counter, Gauge, Store};
use crate::transport::Downstream;
use crate::upstream::{ClusterManager, ConnectError, LbContext};
use std::sync::Arc;

/// Envoy's `tcp.<stat_prefix>.*` stats.
#[derive(Debug)]
pub struct TcpProxyStats {
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_no_route: Arc<Counter>,
    pub downstream_cx_rx_bytes_total: Arc<Counter>,
    pub downstream_cx_tx_bytes_total: Arc<Counter>,
    pub idle_timeout: Arc<Counter>,
    pub max_downstream_connection_duration: Arc<Counter>,
    pub upstream_flush_total: Arc<Counter>,
    pub upstream_flush_active: Arc<Gauge>,
}

impl FlushObserver for TcpProxyStats {
    fn flush_started(&self) {
        self.upstream_flush_total.inc();
        self.upstream_flush_active.inc();
    }
    fn flush_ended(&self) {
        self.upstream_flush_active.dec();
    }
}

/// A tcp_proxy filter bound to its cluster, built once per config.
#[derive(Debug)]
pub struct TcpProxy {
    pub config: config::TcpProxy,
    /// The cluster is looked up by name per connection: clusters come and go (xDS).
    clusters: Arc<ClusterManager>,
    pub stats: TcpProxyStats,
    loggers: Vec<crate::http::access_log::AccessLogger>,
}

/// What a connection's access log line says beyond its addresses and times.
#[derive(Default)]
struct Report {
    flag: Option<&'static str>,
    upstream_host: Option<std::net::SocketAddr>,
    failure_reason: Option<String>,
    attempts: u32,
    rx: std::sync::atomic::AtomicU64,
    tx: std::sync::atomic::AtomicU64,
}

impl TcpProxy {
    pub fn new(config: config::TcpProxy, clusters: Arc<ClusterManager>, store: &Store) -> Self {
        let s = store.tagged_scope("tcp", "envoy_tcp_prefix", &config.stat_prefix);
        let stats = TcpProxyStats {
            downstream_cx_total: s.counter("downstream_cx_total"),
            downstream_cx_no_route: s.counter("downstream_cx_no_route"),
            downstream_cx_rx_bytes_total: s.counter("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: s.counter("downstream_cx_tx_bytes_total"),
            idle_timeout: s.counter("idle_timeout"),
            max_downstream_connection_duration: s.counter("max_downstream_connection_duration"),
            upstream_flush_total: s.counter("upstream_flush_total"),
            upstream_flush_active: s.gauge("upstream_flush_active"),
        };
        let loggers = config
            .access_logs
            .iter()
            .map(|l| crate::http::access_log::AccessLogger::new(l, store))
            .collect();
        Self {
            config,
            clusters,
            stats,
            loggers,
        }
    }

    /// Proxies the connection, then writes its access log lines (Envoy's fields; the HTTP
    /// ones are `-`, the response code 0).
    pub async fn handle(&self, mut ds: Downstream) {
        let start = std::time::SystemTime::now();
        let began = std::time::Instant::now();
        let mut report = Report::default();
        self.proxy(&mut ds, &mut report).await;
        if self.loggers.is_empty() {
            return;
        }
        let headers = http::HeaderMap::new();
        let flags: Vec<&'static str> = report.flag.into_iter().collect();
        let entry = crate::http::access_log::Entry {
            start,
            duration: began.elapsed(),
            response_duration: None,
            method: "",
            path: "",
            authority: "",
            protocol: "-",
            request_headers: &headers,
            status: 0,
            response_headers: None,
            flags: &flags,
            details: "",
            bytes_received: report.rx.load(std::sync::atomic::Ordering::Relaxed),
            bytes_sent: report.tx.load(std::sync::atomic::Ordering::Relaxed),
            upstream_host: report.upstream_host,
            upstream_cluster: Some(&self.config.cluster),
            failure_reason: report.failure_reason.as_deref(),
            attempts: report.attempts,
            peer: ds.peer,
            local: ds.local,
            route_name: "",
            connection_id: crate::http::next_connection_id(),
            tls: ds.tls.as_deref(),
            server_name: ds.server_name.as_deref(),
        };
        for l in &self.loggers {
            l.log(&entry);
        }
    }

    /// Connects to the cluster (for ORIGINAL_DST clusters: the connection's original
    /// destination) and proxies until both sides close, a limit fires or the drain ends.
    async fn proxy(&self, ds: &mut Downstream, report: &mut Report) {
        self.stats.downstream_cx_total.inc();
        let Some(cluster) = self.clusters.get(&self.config.cluster) else {
            self.stats.downstream_cx_no_route.inc();
            report.flag = Some("NC");
            return;
        };
        let peer = ds.peer;
        let original_dst = ds.original_dst;
        let mut watch = ds.watch.clone();
        let cluster = &cluster;
        let attempts = self.config.max_connect_attempts.max(1);
        // RING_HASH / MAGLEV: the client's IP as text, xxHash64, as Envoy hashes it.
        let hash_key = self
            .config
            .hash_source_ip
            .then(|| xxhash_rust::xxh64::xxh64(peer.ip().to_canonical().to_string().as_bytes(), 0));
        let mut upstream = None;
        // Hosts whose connect failed: a later attempt re-picks a few times to avoid them when
        // the cluster has others. Envoy's per-worker round robin moves on by itself between
        // attempts; here a connection's task may move to another worker (another cursor)
        // while it connects, and could be handed the same refused host again.
        let mut tried: Vec<Arc<crate::upstream::Host>> = Vec::new();
        for attempt in 1..=attempts {
            let ctx = LbContext {
                attempt,
                original_dst,
                hash_key,
                tried: &tried,
            };
            report.attempts = attempt;
            let host = match cluster.pick(&ctx) {
                Ok(h) => h,
                Err(e) => {
                    tracing::debug!(%peer, cluster = cluster.name(), error = %e, "no upstream");
                    report.flag = Some("UH");
                    return;
                }
            };
            report.upstream_host = Some(host.address);
            let retry_from = (attempt < attempts).then(|| host.clone());
            let r = tokio::select! {
                r = cluster.connect(host) => r,
                _ = watch.closing() => return,
            };
            match r {
                Ok(u) => {
                    // For a TCP proxy the connection is the outcome (outlier detection).
                    cluster.report(&u.host, crate::upstream::Outcome::ConnectSuccessFinal);
                    upstream = Some(u);
                    break;
                }
                // The circuit breaker: the connection is closed at once (Envoy's UO), no
                // other attempt.
                Err(e @ ConnectError::Overflow(_)) => {
                    tracing::debug!(%peer, cluster = cluster.name(), error = %e, "upstream overflow");
                    report.flag = Some("UO");
                    report.failure_reason = Some(e.to_string());
                    return;
                }
                Err(e) => {
                    tracing::debug!(%peer, cluster = cluster.name(), attempt, error = %e, "upstream connect failed");
                    report.failure_reason = Some(e.to_string());
                    tried.extend(retry_from);
                    if attempt == attempts && attempts > 1 {
                        cluster.stats.upstream_cx_connect_attempts_exceeded.inc();
                    }
                }
            }
        }
        let Some(mut upstream) = upstream else {
            report.flag = Some("UF");
            return;
        };
        report.failure_reason = None;
        let host = upstream.host.clone();
        let cs = &cluster.stats;
        let ts = &self.stats;
        let outcome = copy::proxy(
            &mut ds.io,
            &mut upstream.stream,
            DirectionStats {
                counters: [
                    &ts.downstream_cx_rx_bytes_total,
                    &cs.upstream_cx_tx_bytes_total,
                ],
                bytes: &report.rx,
            },
            DirectionStats {
                counters: [
                    &cs.upstream_cx_rx_bytes_total,
                    &ts.downstream_cx_tx_bytes_total,
                ],
                bytes: &report.tx,
            },
            Limits {
                idle_timeout: self.config.idle_timeout,
                max_duration: self.config.max_downstream_connection_duration,
            },
            async {
                // With close_connections_on_host_health_failure, a failed health check
                // closes the connection as a drain does.
                if cluster.config.close_connections_on_host_health_failure {
                    tokio::select! {
                        _ = watch.closing() => {}
                        _ = host.closing() => {}
                    }
                } else {
                    watch.closing().await
                }
            },
            ts,
        )
        .await;
        let remote_closed = match &outcome {
            Outcome::Closed { first_eof } => *first_eof == Side::Upstream,
            Outcome::Error(e) => e.side == Side::Upstream,
            _ => false,
        };
        if remote_closed {
            cs.upstream_cx_destroy_remote.inc();
        } else {
            cs.upstream_cx_destroy_local.inc();
        }
        match outcome {
            Outcome::IdleTimeout => {
                ts.idle_timeout.inc();
                // Envoy's flag for a TCP idle timeout: stream idle timeout.
                report.flag = Some("SI");
            }
            Outcome::MaxDuration => ts.max_downstream_connection_duration.inc(),
            Outcome::Error(e) => {
                tracing::debug!(%peer, side = ?e.side, error = %e.source, "connection ended with error");
                if e.side == Side::Upstream {
                    report.flag = Some("UC");
                }
                // Abort rather than close gracefully: each peer must learn the stream is broken.
                ds.io.set_abort_on_close();
                upstream.stream.set_abort_on_close();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! tcp_proxy with in-memory streams and paused time: retries and timeouts without
    //! sockets or sleeps.
    use super::*;
    use crate::drain;
    use crate::transport::Stream;
    use crate::upstream::{Connector, MemoryConnect};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CLUSTER: &str = r#"{"static_resources": {"clusters": [{"name": "c", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}},
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 2}}}}]}]}}]}}"#;

    /// Port 1 never answers a connect; port 2 is an in-memory echo server.
    fn connector() -> Connector {
        Connector::Memory(Arc::new(|addr: std::net::SocketAddr| -> MemoryConnect {
            Box::pin(async move {
                if addr.port() == 1 {
                    std::future::pending::<()>().await;
                }
                let (near, mut far) = tokio::io::duplex(1024);
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = far.read(&mut buf).await {
                        if n == 0 || far.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                Ok(Stream::Memory(near))
            })
        }))
    }

    fn proxy(attempts: u32, idle: Option<Duration>) -> (TcpProxy, Arc<ClusterManager>, Store) {
        let store = Store::new();
        let snap = crate::config::parse_bootstrap(CLUSTER, "test").unwrap();
        let cm = Arc::new(ClusterManager::with_connector(&snap, &store, connector()));
        let tp = TcpProxy::new(
            config::TcpProxy {
                stat_prefix: "t".into(),
                cluster: "c".into(),
                idle_timeout: idle,
                max_connect_attempts: attempts,
                max_downstream_connection_duration: None,
                access_logs: vec![],
                hash_source_ip: false,
            },
            cm.clone(),
            &store,
        );
        (tp, cm, store)
    }

    fn downstream(drain: &drain::Drain) -> (Downstream, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(1024);
        let a = "127.0.0.1:5000".parse().unwrap();
        (
            Downstream::new(Stream::Memory(server), a, a, drain.watch()),
            client,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_timeout_is_retried_on_the_next_host() {
        let (tp, cm, _store) = proxy(2, None);
        let drain = drain::Drain::new();
        let (ds, mut client) = downstream(&drain);
        let task = tokio::spawn(async move { tp.handle(ds).await });
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        let c = cm.get("c").unwrap();
        assert_eq!(c.stats.upstream_cx_connect_timeout.value(), 1);
        assert_eq!(c.stats.upstream_cx_connect_attempts_exceeded.value(), 0);
        assert_eq!(c.stats.upstream_cx_active.value(), 1);
        drop(client);
        task.await.unwrap();
        assert_eq!(c.stats.upstream_cx_active.value(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_attempt_to_a_silent_host_gives_up_after_connect_timeout() {
        let (tp, cm, _store) = proxy(1, None);
        let drain = drain::Drain::new();
        let (ds, mut client) = downstream(&drain);
        let started = tokio::time::Instant::now();
        tp.handle(ds).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the downstream is closed");
        let c = cm.get("c").unwrap();
        assert_eq!(c.stats.upstream_cx_connect_fail.value(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_closes_a_quiet_connection_and_activity_defers_it() {
        let (tp, _cm, _store) = proxy(2, Some(Duration::from_secs(10)));
        let drain = drain::Drain::new();
        let (ds, mut client) = downstream(&drain);
        let stats = Arc::new(tp);
        let tp2 = stats.clone();
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(async move { tp2.handle(ds).await });
        // Connected after the 1 s timeout on the first host; then 8 s of quiet, a byte, and
        // the idle timer starts over.
        tokio::time::sleep(Duration::from_secs(9)).await;
        client.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        client.read_exact(&mut one).await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        task.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(19));
        assert_eq!(stats.stats.idle_timeout.value(), 1);
    }
}
