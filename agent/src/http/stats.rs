//! Envoy's HTTP stats: `http.<stat_prefix>.*` of a connection manager (with its router's
//! `no_route`, `rq_direct_response`, `rq_redirect`, `no_cluster`), and the
//! `cluster.<name>.upstream_rq_*` / `upstream_cx_http*` stats of a cluster that HTTP routes
//! send to (created on its first request, so L4-only clusters do not carry them).

use crate::stats::{Counter, Gauge, Histogram, Scope, Store};
use std::sync::{Arc, OnceLock};

/// Counters by status class: 1xx … 5xx.
#[derive(Debug)]
pub struct ByClass(pub [Arc<Counter>; 5]);

impl ByClass {
    fn new(s: &Scope, prefix: &str) -> Self {
        Self(std::array::from_fn(|i| {
            s.counter(&format!("{prefix}_{}xx", i + 1))
        }))
    }

    pub fn record(&self, status: u16) {
        if let Some(c) = self.0.get((status / 100).wrapping_sub(1) as usize) {
            c.inc();
        }
    }
}

#[derive(Debug)]
pub struct HttpStats {
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_active: Arc<Gauge>,
    pub downstream_cx_http1_total: Arc<Counter>,
    pub downstream_cx_http2_total: Arc<Counter>,
    pub downstream_cx_http1_active: Arc<Gauge>,
    pub downstream_cx_http2_active: Arc<Gauge>,
    pub downstream_cx_destroy: Arc<Counter>,
    pub downstream_cx_idle_timeout: Arc<Counter>,
    /// Plumb's own: idle HTTP/1.1 connections holding no codec buffers right now.
    pub downstream_cx_http1_parked: Arc<Gauge>,
    pub downstream_cx_drain_close: Arc<Counter>,
    pub downstream_cx_protocol_error: Arc<Counter>,
    pub downstream_cx_length_ms: Arc<Histogram>,
    pub downstream_rq_total: Arc<Counter>,
    pub downstream_rq_http1_total: Arc<Counter>,
    pub downstream_rq_http2_total: Arc<Counter>,
    pub downstream_rq_active: Arc<Gauge>,
    pub downstream_rq_completed: Arc<Counter>,
    pub downstream_rq_time: Arc<Histogram>,
    pub downstream_rq_xx: ByClass,
    pub downstream_rq_rx_reset: Arc<Counter>,
    pub downstream_rq_tx_reset: Arc<Counter>,
    pub downstream_rq_timeout: Arc<Counter>,
    pub downstream_rq_idle_timeout: Arc<Counter>,
    pub downstream_rq_max_duration_reached: Arc<Counter>,
    pub downstream_rq_ws_on_non_ws_route: Arc<Counter>,
    pub downstream_rq_too_large: Arc<Counter>,
    // The router's stats, under the same prefix.
    pub no_route: Arc<Counter>,
    pub no_cluster: Arc<Counter>,
    pub rq_direct_response: Arc<Counter>,
    pub rq_redirect: Arc<Counter>,
    pub rq_total: Arc<Counter>,
    pub rq_reset_after_downstream_response_started: Arc<Counter>,
}

impl HttpStats {
    pub fn new(store: &Store, prefix: &str) -> Self {
        let s = store.tagged_scope("http", "envoy_http_conn_manager_prefix", prefix);
        Self {
            downstream_cx_total: s.counter("downstream_cx_total"),
            downstream_cx_active: s.gauge("downstream_cx_active"),
            downstream_cx_http1_total: s.counter("downstream_cx_http1_total"),
            downstream_cx_http2_total: s.counter("downstream_cx_http2_total"),
            downstream_cx_http1_active: s.gauge("downstream_cx_http1_active"),
            downstream_cx_http2_active: s.gauge("downstream_cx_http2_active"),
            downstream_cx_destroy: s.counter("downstream_cx_destroy"),
            downstream_cx_idle_timeout: s.counter("downstream_cx_idle_timeout"),
            downstream_cx_http1_parked: s.gauge("downstream_cx_http1_parked"),
            downstream_cx_drain_close: s.counter("downstream_cx_drain_close"),
            downstream_cx_protocol_error: s.counter("downstream_cx_protocol_error"),
            downstream_cx_length_ms: s.histogram("downstream_cx_length_ms"),
            downstream_rq_total: s.counter("downstream_rq_total"),
            downstream_rq_http1_total: s.counter("downstream_rq_http1_total"),
            downstream_rq_http2_total: s.counter("downstream_rq_http2_total"),
            downstream_rq_active: s.gauge("downstream_rq_active"),
            downstream_rq_completed: s.counter("downstream_rq_completed"),
            downstream_rq_time: s.histogram("downstream_rq_time"),
            downstream_rq_xx: ByClass::new(&s, "downstream_rq"),
            downstream_rq_rx_reset: s.counter("downstream_rq_rx_reset"),
            downstream_rq_tx_reset: s.counter("downstream_rq_tx_reset"),
            downstream_rq_timeout: s.counter("downstream_rq_timeout"),
            downstream_rq_idle_timeout: s.counter("downstream_rq_idle_timeout"),
            downstream_rq_max_duration_reached: s.counter("downstream_rq_max_duration_reached"),
            downstream_rq_ws_on_non_ws_route: s.counter("downstream_rq_ws_on_non_ws_route"),
            downstream_rq_too_large: s.counter("downstream_rq_too_large"),
            no_route: s.counter("no_route"),
            no_cluster: s.counter("no_cluster"),
            rq_direct_response: s.counter("rq_direct_response"),
            rq_redirect: s.counter("rq_redirect"),
            rq_total: s.counter("rq_total"),
            rq_reset_after_downstream_response_started: s
                .counter("rq_reset_after_downstream_response_started"),
        }
    }
}

/// Status codes with their own `upstream_rq_<code>` counter: 100–599.
const CODES: usize = 500;

#[derive(Debug)]
pub struct ClusterHttpStats {
    scope: Scope,
    pub upstream_rq_total: Arc<Counter>,
    pub upstream_rq_active: Arc<Gauge>,
    pub upstream_rq_completed: Arc<Counter>,
    pub upstream_rq_xx: ByClass,
    codes: Box<[OnceLock<Arc<Counter>>]>,
    pub upstream_rq_time: Arc<Histogram>,
    pub upstream_rq_timeout: Arc<Counter>,
    pub upstream_rq_per_try_timeout: Arc<Counter>,
    pub upstream_rq_retry: Arc<Counter>,
    pub upstream_rq_retry_success: Arc<Counter>,
    pub upstream_rq_retry_limit_exceeded: Arc<Counter>,
    pub upstream_rq_retry_overflow: Arc<Counter>,
    pub retry_or_shadow_abandoned: Arc<Counter>,
    pub upstream_rq_rx_reset: Arc<Counter>,
    pub upstream_rq_tx_reset: Arc<Counter>,
    pub upstream_rq_pending_total: Arc<Counter>,
    pub upstream_rq_pending_active: Arc<Gauge>,
    /// Refused by the circuit breaker (`max_pending_requests` or `max_requests`).
    pub upstream_rq_pending_overflow: Arc<Counter>,
    pub upstream_rq_pending_failure_eject: Arc<Counter>,
    pub upstream_cx_http1_total: Arc<Counter>,
    pub upstream_cx_http2_total: Arc<Counter>,
    pub upstream_cx_protocol_error: Arc<Counter>,
    pub upstream_cx_max_requests: Arc<Counter>,
    pub upstream_cx_idle_timeout: Arc<Counter>,
    /// `grpc.<service>.<method>.*` (and the aggregate `grpc.*` under ""), created on use.
    grpc: std::sync::Mutex<std::collections::HashMap<String, Arc<GrpcCounters>>>,
}

/// `envoy.filters.http.grpc_stats`'s counters of one service and method (or all calls).
#[derive(Debug)]
pub struct GrpcCounters {
    pub success: Arc<Counter>,
    pub failure: Arc<Counter>,
    pub total: Arc<Counter>,
}

impl ClusterHttpStats {
    pub fn new(s: &Scope) -> Self {
        Self {
            scope: s.clone(),
            upstream_rq_total: s.counter("upstream_rq_total"),
            upstream_rq_active: s.gauge("upstream_rq_active"),
            upstream_rq_completed: s.counter("upstream_rq_completed"),
            upstream_rq_xx: ByClass::new(s, "upstream_rq"),
            codes: (0..CODES).map(|_| OnceLock::new()).collect(),
            upstream_rq_time: s.histogram("upstream_rq_time"),
            upstream_rq_timeout: s.counter("upstream_rq_timeout"),
            upstream_rq_per_try_timeout: s.counter("upstream_rq_per_try_timeout"),
            upstream_rq_retry: s.counter("upstream_rq_retry"),
            upstream_rq_retry_success: s.counter("upstream_rq_retry_success"),
            upstream_rq_retry_limit_exceeded: s.counter("upstream_rq_retry_limit_exceeded"),
            upstream_rq_retry_overflow: s.counter("upstream_rq_retry_overflow"),
            retry_or_shadow_abandoned: s.counter("retry_or_shadow_abandoned"),
            upstream_rq_rx_reset: s.counter("upstream_rq_rx_reset"),
            upstream_rq_tx_reset: s.counter("upstream_rq_tx_reset"),
            upstream_rq_pending_total: s.counter("upstream_rq_pending_total"),
            upstream_rq_pending_active: s.gauge("upstream_rq_pending_active"),
            upstream_rq_pending_overflow: s.counter("upstream_rq_pending_overflow"),
            upstream_rq_pending_failure_eject: s.counter("upstream_rq_pending_failure_eject"),
            upstream_cx_http1_total: s.counter("upstream_cx_http1_total"),
            upstream_cx_http2_total: s.counter("upstream_cx_http2_total"),
            upstream_cx_protocol_error: s.counter("upstream_cx_protocol_error"),
            upstream_cx_max_requests: s.counter("upstream_cx_max_requests"),
            upstream_cx_idle_timeout: s.counter("upstream_cx_idle_timeout"),
            grpc: Default::default(),
        }
    }

    /// The gRPC counters of `infix` (`service.method`), or of all calls.
    pub fn grpc(&self, infix: Option<&str>) -> Arc<GrpcCounters> {
        let key = infix.unwrap_or("");
        let mut m = self.grpc.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get(key) {
            return c.clone();
        }
        let prefix = if key.is_empty() {
            "grpc.".to_string()
        } else {
            format!("grpc.{key}.")
        };
        let c = Arc::new(GrpcCounters {
            success: self.scope.counter(&format!("{prefix}success")),
            failure: self.scope.counter(&format!("{prefix}failure")),
            total: self.scope.counter(&format!("{prefix}total")),
        });
        m.insert(key.to_string(), c.clone());
        c
    }

    /// Counts a response status: `upstream_rq_<code>` and `upstream_rq_<N>xx`.
    pub fn record_status(&self, status: u16) {
        self.upstream_rq_xx.record(status);
        if let Some(slot) = self.codes.get((status as usize).wrapping_sub(100)) {
            slot.get_or_init(|| self.scope.counter(&format!("upstream_rq_{status}")))
                .inc();
        }
    }
}
