//! `envoy.filters.network.tcp_proxy`: connect to the cluster (with connect attempts), then
//! copy bytes both ways until both sides close, a timeout fires or the drain ends.

use crate::config;
use crate::copy::{self, DirectionStats, FlushObserver, Limits, Outcome, Side};
use crate::stats::{Counter, Gauge, Store};
use crate::transport::Downstream;
use crate::upstream::{ClusterManager, ConnectError};
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
        Self {
            config,
            clusters,
            stats,
        }
    }

    /// Connects to the cluster (for ORIGINAL_DST clusters: the connection's original
    /// destination) and proxies until both sides close, a limit fires or the drain ends.
    pub async fn handle(&self, mut ds: Downstream) {
        self.stats.downstream_cx_total.inc();
        let Some(cluster) = self.clusters.get(&self.config.cluster) else {
            self.stats.downstream_cx_no_route.inc();
            return;
        };
        let peer = ds.peer;
        let original_dst = ds.original_dst;
        let mut watch = ds.watch.clone();
        let cluster = &cluster;
        let attempts = self.config.max_connect_attempts.max(1);
        let mut upstream = None;
        for attempt in 1..=attempts {
            let r = tokio::select! {
                r = cluster.connect(original_dst) => r,
                _ = watch.closing() => return,
            };
            match r {
                Ok(u) => {
                    upstream = Some(u);
                    break;
                }
                Err(
                    e @ (ConnectError::NoHealthyHost(_) | ConnectError::NoOriginalDestination(_)),
                ) => {
                    tracing::debug!(%peer, cluster = cluster.name(), error = %e, "no upstream");
                    return;
                }
                Err(e) => {
                    tracing::debug!(%peer, cluster = cluster.name(), attempt, error = %e, "upstream connect failed");
                    if attempt == attempts && attempts > 1 {
                        cluster.stats.upstream_cx_connect_attempts_exceeded.inc();
                    }
                }
            }
        }
        let Some(mut upstream) = upstream else { return };
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
            },
            DirectionStats {
                counters: [
                    &cs.upstream_cx_rx_bytes_total,
                    &ts.downstream_cx_tx_bytes_total,
                ],
            },
            Limits {
                idle_timeout: self.config.idle_timeout,
                max_duration: self.config.max_downstream_connection_duration,
            },
            watch.closing(),
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
            Outcome::IdleTimeout => ts.idle_timeout.inc(),
            Outcome::MaxDuration => ts.max_downstream_connection_duration.inc(),
            Outcome::Error(e) => {
                tracing::debug!(%peer, side = ?e.side, error = %e.source, "connection ended with error");
                // Abort rather than close gracefully: each peer must learn the stream is broken.
                ds.io.set_abort_on_close();
                upstream.stream.set_abort_on_close();
            }
            _ => {}
        }
    }
}
