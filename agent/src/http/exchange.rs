//! The books of one request (`Exchange`): its stats, its access-log fields and the upstream
//! connection it holds, closed when the response body ends; Envoy's response flags, and the
//! local replies Plumb answers itself.

use super::body::{Body, End, OnEnd, Replay};
use super::headers::names;
use super::{ConnInfo, ConnectionManager};
use crate::upstream::{Cluster, Host, Slot};
use http::header::HeaderValue;
use http::{HeaderMap, Response, StatusCode};
use hyper::client::conn::http1;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Envoy's response flags for what Plumb answered itself or why an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// No route (NR).
    NoRoute,
    /// The route's cluster does not exist (NC).
    NoCluster,
    /// No healthy upstream host (UH).
    NoHealthyUpstream,
    /// Upstream connection failure (UF).
    UpstreamConnectionFailure,
    /// Upstream request timeout (UT).
    UpstreamRequestTimeout,
    /// Upstream connection termination (UC).
    UpstreamConnectionTermination,
    /// Invalid request headers (DPE, downstream protocol error).
    DownstreamProtocolError,
    /// Retries exhausted on a retriable outcome (URX).
    UpstreamRetryLimitExceeded,
    /// Refused by the local rate limit (RL).
    RateLimited,
    /// Aborted by the fault filter (FI).
    FaultInjected,
    /// Answered by the health check filter (not a failure; no flag in logs).
    HealthCheck,
    /// Refused by a circuit breaker (UO).
    UpstreamOverflow,
    /// Denied by an RBAC policy (RBAC).
    Rbac,
    /// The request body failed: the client went away or sent less than it said (DC).
    DownstreamConnectionTermination,
    /// The request body idled past `stream_idle_timeout` (SI).
    StreamIdleTimeout,
    /// The request passed `max_stream_duration` (DT).
    DurationTimeout,
}

impl Flag {
    /// Envoy's response code details for a local reply with this flag.
    pub fn details(self) -> &'static str {
        match self {
            Flag::NoRoute => "route_not_found",
            Flag::NoCluster => "cluster_not_found",
            Flag::NoHealthyUpstream => "no_healthy_upstream",
            Flag::UpstreamConnectionFailure => {
                "upstream_reset_before_response_started{connection_failure}"
            }
            Flag::UpstreamRequestTimeout => "upstream_response_timeout",
            Flag::UpstreamConnectionTermination => {
                "upstream_reset_before_response_started{connection_termination}"
            }
            Flag::DownstreamProtocolError => "protocol_error",
            Flag::UpstreamRetryLimitExceeded => "via_upstream",
            Flag::RateLimited => "local_rate_limited",
            Flag::FaultInjected => "fault_filter_abort",
            Flag::HealthCheck => "health_check",
            Flag::UpstreamOverflow => "upstream_reset_before_response_started{overflow}",
            Flag::Rbac => "rbac_access_denied_matched_policy[none]",
            Flag::DownstreamConnectionTermination => "downstream_remote_disconnect",
            Flag::StreamIdleTimeout => "stream_idle_timeout",
            Flag::DurationTimeout => "max_duration_timeout",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Flag::NoRoute => "NR",
            Flag::NoCluster => "NC",
            Flag::NoHealthyUpstream => "UH",
            Flag::UpstreamConnectionFailure => "UF",
            Flag::UpstreamRequestTimeout => "UT",
            Flag::UpstreamConnectionTermination => "UC",
            Flag::DownstreamProtocolError => "DPE",
            Flag::UpstreamRetryLimitExceeded => "URX",
            Flag::RateLimited => "RL",
            Flag::FaultInjected => "FI",
            Flag::HealthCheck => "-",
            Flag::UpstreamOverflow => "UO",
            Flag::Rbac => "RBAC",
            Flag::DownstreamConnectionTermination => "DC",
            Flag::StreamIdleTimeout => "SI",
            Flag::DurationTimeout => "DT",
        }
    }
}

/// The books of one request, closed when its response body ends (or is dropped).
pub(super) struct Exchange {
    pub(super) hcm: Arc<ConnectionManager>,
    pub(super) conn: Arc<ConnInfo>,
    pub(super) start: Instant,
    pub(super) upstream: Option<UpstreamBooks>,
    /// The gRPC counters of a call Plumb answered itself after routing it to a cluster
    /// (a timeout, no healthy host...): counted as a failure, as Envoy's grpc_stats does.
    pub(super) grpc_local: Option<Arc<super::stats::GrpcCounters>>,
    /// Why the exchange did not go as asked (for access logs).
    pub(super) flag: Option<Flag>,
    /// What access logs need (only when the connection manager has some).
    pub(super) log: Option<Box<LogInfo>>,
    /// Response headers the HTTP filters add.
    pub(super) extra_headers: Vec<(http::header::HeaderName, HeaderValue)>,
    /// A gRPC call counted by the grpc_stats filter: its `service.method` stat infix (or the
    /// aggregate), and a `grpc-status` seen in the response headers (trailers-only).
    pub(super) grpc_call: Option<(Option<String>, Option<u32>)>,
}

/// What an access log line needs beyond the exchange's books.
pub(super) struct LogInfo {
    pub(super) method: http::Method,
    pub(super) path: String,
    pub(super) authority: String,
    pub(super) protocol: &'static str,
    pub(super) request_headers: HeaderMap,
    pub(super) response_headers: Option<HeaderMap>,
    pub(super) status: u16,
    pub(super) details: &'static str,
    pub(super) start: SystemTime,
    pub(super) response_after: Option<std::time::Duration>,
    pub(super) route_name: String,
    pub(super) upstream_host: Option<std::net::SocketAddr>,
    pub(super) upstream_cluster: Option<String>,
    pub(super) failure_reason: Option<String>,
    pub(super) attempts: u32,
    pub(super) received: Received,
}

/// Where the request's body bytes are counted.
pub(super) enum Received {
    Counter(Arc<std::sync::atomic::AtomicU64>),
    Replay(Arc<Replay>),
}

impl Received {
    pub(super) fn get(&self) -> u64 {
        match self {
            Received::Counter(c) => c.load(Ordering::Relaxed),
            Received::Replay(r) => r.received(),
        }
    }
}

pub(super) struct UpstreamBooks {
    pub(super) cluster: Arc<Cluster>,
    pub(super) host: Arc<Host>,
    pub(super) sent: Instant,
    pub(super) release: Release,
    /// The circuit breaker's request slot, given back when the response ends.
    pub(super) _rq_slot: Option<Slot>,
    /// The host's request in flight, ended with the response.
    pub(super) _in_flight: InFlight,
}

/// One request in flight to a host (`rq_active`, what LEAST_REQUEST compares), from the
/// send until the guard is dropped: with the response, a failure, a retry or a cancel.
pub(super) struct InFlight(Arc<crate::upstream::HostStats>);

impl InFlight {
    pub(super) fn new(host: &Host) -> Self {
        host.stats.rq_active.fetch_add(1, Ordering::Relaxed);
        Self(host.stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.rq_active.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) enum Release {
    H1 {
        tx: http1::SendRequest<Body>,
        served: u32,
        reusable: bool,
        epoch: u64,
        /// The per-SNI pool it goes back to (`auto_sni`); `None`: the host's own.
        sni_pool: Option<Arc<crate::upstream::pool::HostPool>>,
    },
    H2(super::upstream::Stream),
    Own,
}

impl Exchange {
    fn write_logs(&self, bytes_sent: u64) {
        let Some(l) = &self.log else { return };
        let flags: Vec<&'static str> = self.flag.iter().map(|f| f.short()).collect();
        let e = super::access_log::Entry {
            start: l.start,
            duration: self.start.elapsed(),
            response_duration: l.response_after,
            method: l.method.as_str(),
            path: &l.path,
            authority: &l.authority,
            protocol: l.protocol,
            request_headers: &l.request_headers,
            status: l.status,
            response_headers: l.response_headers.as_ref(),
            flags: &flags,
            details: l.details,
            bytes_received: l.received.get(),
            bytes_sent,
            upstream_host: l.upstream_host,
            upstream_cluster: l.upstream_cluster.as_deref(),
            failure_reason: l.failure_reason.as_deref(),
            attempts: l.attempts,
            peer: self.conn.peer,
            local: self.conn.local,
            route_name: &l.route_name,
            connection_id: self.conn.id,
            tls: self.conn.tls.as_deref(),
            server_name: self.conn.server_name.as_deref(),
        };
        for logger in &self.hcm.loggers {
            logger.log(&e);
        }
    }
}

impl OnEnd for Exchange {
    fn ended(&mut self, end: End) {
        let (complete, bytes) = (end.complete, end.bytes);
        self.write_logs(bytes);
        if let Some(c) = self.grpc_local.take() {
            c.total.inc();
            c.failure.inc();
        } else if let (Some((infix, header_status)), Some(u)) = (&self.grpc_call, &self.upstream) {
            let c = u.cluster.http_stats().grpc(infix.as_deref());
            c.total.inc();
            if end.grpc_status.or(*header_status) == Some(0) {
                c.success.inc();
            } else {
                c.failure.inc();
            }
        }
        let s = &self.hcm.stats;
        s.downstream_rq_active.dec();
        s.downstream_rq_completed.inc();
        s.downstream_rq_time.record(self.start.elapsed());
        if !complete {
            s.downstream_rq_rx_reset.inc();
        }
        self.conn.request_ended();
        if let Some(u) = self.upstream.take() {
            let hs = u.cluster.http_stats();
            hs.upstream_rq_active.dec();
            hs.upstream_rq_completed.inc();
            hs.upstream_rq_time.record(u.sent.elapsed());
            match u.release {
                Release::H1 {
                    tx,
                    served,
                    reusable,
                    epoch,
                    sni_pool,
                } => {
                    if complete && reusable {
                        sni_pool
                            .as_deref()
                            .unwrap_or(&u.host.pool)
                            .put_h1(tx, served, epoch);
                        // A request waiting for a connection may take this one.
                        u.cluster.breakers.connection_idle();
                    }
                }
                Release::Own => {}
                Release::H2(stream) => {
                    drop(stream);
                    // A request waiting for a stream may take this one.
                    u.cluster.breakers.connection_idle();
                }
            }
        }
    }
}

/// Envoy's local reply: a short text body, or for gRPC requests a trailers-only gRPC
/// status.
pub(super) fn local_reply(
    status: StatusCode,
    text: &str,
    grpc: bool,
    grpc_status: Option<u32>,
) -> Response<Body> {
    let mut r = if grpc {
        let code = grpc_status.unwrap_or(match status.as_u16() {
            400 => 13,
            401 => 16,
            403 => 7,
            404 => 12,
            429 | 502 | 503 | 504 => 14,
            _ => 2,
        });
        let mut r = Response::new(Body::empty());
        let h = r.headers_mut();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h.insert(names::GRPC_STATUS, HeaderValue::from(code));
        if let Ok(v) = HeaderValue::from_str(text) {
            h.insert(names::GRPC_MESSAGE, v);
        }
        r
    } else {
        let mut r = Response::new(Body::full(text.to_string()));
        *r.status_mut() = status;
        if !text.is_empty() {
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("text/plain"));
        }
        r
    };
    if !text.is_empty() && !grpc {
        r.headers_mut()
            .insert("content-length", HeaderValue::from(text.len()));
    }
    r
}

/// What an upstream attempt ended with, when it did not produce a response.
pub(super) enum Failure {
    NoHealthy,
    Connect(String),
    Reset(String),
    /// The route's timeout.
    Timeout,
    /// The retry policy's per-try timeout.
    PerTryTimeout,
    /// A circuit breaker's limit (max_requests, max_pending_requests).
    Overflow,
    /// The request's body failed on its way upstream: the downstream's doing (not
    /// retried, not held against the host).
    Downstream(super::h1client::BodyFailure),
}

impl ConnectionManager {
    /// Adds the connection manager's response headers, counts the status and hooks the books
    /// to the end of the body.
    pub(super) fn finish(
        &self,
        mut r: Response<Body>,
        ex: Exchange,
        request_id: Option<HeaderValue>,
    ) -> Response<Body> {
        self.stats.downstream_rq_xx.record(r.status().as_u16());
        let mut ex = ex;
        if ex.conn.draining.load(Ordering::Relaxed)
            && !ex.conn.is_http2()
            && r.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            r.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        for (k, v) in ex.extra_headers.drain(..) {
            r.headers_mut().insert(k, v);
        }
        if let Some(l) = ex.log.as_mut() {
            l.status = r.status().as_u16();
            l.response_after = Some(ex.start.elapsed());
        }
        if let Some(v) = &self.server_header {
            r.headers_mut().insert(http::header::SERVER, v.clone());
        }
        if self.config.always_set_request_id_in_response {
            if let Some(id) = request_id {
                r.headers_mut().insert(names::X_REQUEST_ID, id);
            }
        }
        if let Some(l) = ex.log.as_mut() {
            l.response_headers = Some(super::access_log::select_headers(
                r.headers(),
                &self.log_headers.1,
            ));
        }
        if let Some((_, status)) = ex.grpc_call.as_mut() {
            *status = r
                .headers()
                .get(names::GRPC_STATUS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
        }
        let (parts, body) = r.into_parts();
        Response::from_parts(parts, body.with_on_end(Box::new(ex)))
    }

    pub(super) fn upstream_failure(
        &self,
        mut ex: Exchange,
        f: Failure,
        grpc: bool,
        cluster: &Cluster,
    ) -> Response<Body> {
        let hs = cluster.http_stats();
        if let Some((infix, _)) = &ex.grpc_call {
            ex.grpc_local = Some(hs.grpc(infix.as_deref()));
        }
        let reason = match &f {
            Failure::Connect(why) | Failure::Reset(why) => Some(why.clone()),
            _ => None,
        };
        // The request body's failure is the downstream's: not counted as the cluster's.
        let downstream = matches!(f, Failure::Downstream(_));
        let (status, text, flag, grpc_status) = match f {
            Failure::Downstream(why) => {
                use super::h1client::BodyFailure as B;
                let (status, flag) = match why {
                    B::IdleTimeout => (StatusCode::REQUEST_TIMEOUT, Flag::StreamIdleTimeout),
                    B::MaxDuration => (StatusCode::REQUEST_TIMEOUT, Flag::DurationTimeout),
                    B::Failed(_) => (StatusCode::BAD_REQUEST, Flag::DownstreamConnectionTermination),
                };
                (status, format!("request body: {why}"), flag, None)
            }
            Failure::NoHealthy => (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream".to_string(), Flag::NoHealthyUpstream, None),
            Failure::Connect(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: {why}"),
                Flag::UpstreamConnectionFailure,
                None,
            ),
            Failure::Reset(why) => {
                hs.upstream_rq_rx_reset.inc();
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("upstream connect error or disconnect/reset before headers. reset reason: connection termination ({why})"),
                    Flag::UpstreamConnectionTermination,
                    None,
                )
            }
            Failure::Timeout | Failure::PerTryTimeout => {
                hs.upstream_rq_timeout.inc();
                (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout".to_string(), Flag::UpstreamRequestTimeout, Some(4))
            }
            Failure::Overflow => {
                ex.extra_headers.push((
                    http::header::HeaderName::from_static("x-envoy-overloaded"),
                    HeaderValue::from_static("true"),
                ));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow".to_string(),
                    Flag::UpstreamOverflow,
                    None,
                )
            }
        };
        ex.flag = Some(flag);
        if let Some(l) = ex.log.as_mut() {
            l.details = flag.details();
            l.failure_reason = reason;
        }
        if !downstream {
            hs.record_status(status.as_u16());
        }
        tracing::debug!(target: "http", peer = %ex.conn.peer, cluster = cluster.name(), status = status.as_u16(), flag = flag.short(), "{text}");
        let r = local_reply(status, &text, grpc, grpc_status);
        self.finish(r, ex, None)
    }
}
