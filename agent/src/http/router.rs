//! The router: one request from route match to upstream response. Picks the cluster (named,
//! from a header, or weighted), the host (`Cluster::pick`), a pooled connection of the
//! cluster's protocol, and sends; local replies carry Envoy's texts and response flags.

use super::body::Replay;
use super::body::{Body, End, OnEnd, Timer};
use super::filters::Verdict;
use super::headers::{self, names, FormatContext};
use super::pick::{pick, request_hash};
use super::retry;
use super::rewrite::{redirect, rewrite_path};
use super::route::{is_grpc, RequestView};
use super::upstream::Sent;
use super::{ConnInfo, ConnectionManager};
use crate::config::http::{
    Action, ClusterSpecifier, HeaderMutations, HostRewrite, MirrorPolicy, UnderscoresAction,
    UpstreamProtocol,
};
use crate::upstream::{Cluster, Host, LbContext, Outcome, Priority, Resource, Slot};
use http::header::{HeaderValue, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
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
        }
    }
}

/// The books of one request, closed when its response body ends (or is dropped).
pub(super) struct Exchange {
    hcm: Arc<ConnectionManager>,
    conn: Arc<ConnInfo>,
    start: Instant,
    upstream: Option<UpstreamBooks>,
    /// The gRPC counters of a call Plumb answered itself after routing it to a cluster
    /// (a timeout, no healthy host...): counted as a failure, as Envoy's grpc_stats does.
    grpc_local: Option<Arc<super::stats::GrpcCounters>>,
    /// Why the exchange did not go as asked (for access logs).
    flag: Option<Flag>,
    /// What access logs need (only when the connection manager has some).
    log: Option<Box<LogInfo>>,
    /// Response headers the HTTP filters add.
    extra_headers: Vec<(http::header::HeaderName, HeaderValue)>,
    /// A gRPC call counted by the grpc_stats filter: its `service.method` stat infix (or the
    /// aggregate), and a `grpc-status` seen in the response headers (trailers-only).
    grpc_call: Option<(Option<String>, Option<u32>)>,
}

/// What an access log line needs beyond the exchange's books.
pub(super) struct LogInfo {
    method: http::Method,
    path: String,
    authority: String,
    protocol: &'static str,
    request_headers: HeaderMap,
    response_headers: Option<HeaderMap>,
    status: u16,
    details: &'static str,
    start: SystemTime,
    response_after: Option<std::time::Duration>,
    route_name: String,
    upstream_host: Option<std::net::SocketAddr>,
    upstream_cluster: Option<String>,
    failure_reason: Option<String>,
    attempts: u32,
    received: Received,
}

/// Where the request's body bytes are counted.
enum Received {
    Counter(Arc<std::sync::atomic::AtomicU64>),
    Replay(Arc<Replay>),
}

impl Received {
    fn get(&self) -> u64 {
        match self {
            Received::Counter(c) => c.load(Ordering::Relaxed),
            Received::Replay(r) => r.received(),
        }
    }
}

struct UpstreamBooks {
    cluster: Arc<Cluster>,
    host: Arc<Host>,
    sent: Instant,
    release: Release,
    /// The circuit breaker's request slot, given back when the response ends.
    _rq_slot: Option<Slot>,
    /// The host's request in flight, ended with the response.
    _in_flight: InFlight,
}

/// One request in flight to a host (`rq_active`, what LEAST_REQUEST compares), from the
/// send until the guard is dropped: with the response, a failure, a retry or a cancel.
struct InFlight(Arc<crate::upstream::HostStats>);

impl InFlight {
    fn new(host: &Host) -> Self {
        host.stats.rq_active.fetch_add(1, Ordering::Relaxed);
        Self(host.stats.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.rq_active.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Release {
    H1 {
        tx: http1::SendRequest<Body>,
        served: u32,
        reusable: bool,
        epoch: u64,
        /// The per-SNI pool it goes back to (`auto_sni`); `None`: the host's own.
        sni_pool: Option<Arc<crate::upstream::pool::HostPool>>,
    },
    H2(super::upstream::Stream),
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
fn local_reply(
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
}

impl ConnectionManager {
    /// Serves one request: the connection manager's checks, then the route's action.
    pub(super) async fn serve(
        self: &Arc<Self>,
        conn: &Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let s = &self.stats;
        let start = Instant::now();
        let started_at = SystemTime::now();
        conn.request_started(req.version(), s);
        s.downstream_rq_total.inc();
        s.downstream_rq_active.inc();
        s.rq_total.inc();
        let mut exchange = Exchange {
            hcm: self.clone(),
            conn: conn.clone(),
            start,
            upstream: None,
            flag: None,
            log: None,
            grpc_call: None,
            grpc_local: None,
            extra_headers: Vec::new(),
        };
        let (mut parts, body) = req.into_parts();
        let grpc = is_grpc(&parts.headers);
        if grpc {
            if let Some(g) = &self.config.grpc_stats {
                exchange.grpc_call = Some((g.infix(parts.uri.path()), None));
            }
        }
        if !self.loggers.is_empty() {
            let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
            exchange.log = Some(Box::new(LogInfo {
                method: parts.method.clone(),
                path: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default(),
                authority: parts
                    .uri
                    .authority()
                    .map(|a| a.as_str())
                    .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
                    .unwrap_or_default()
                    .to_string(),
                protocol: protocol_name(parts.version),
                request_headers: super::access_log::select_headers(
                    &parts.headers,
                    &self.log_headers.0,
                ),
                response_headers: None,
                status: 0,
                details: "",
                start: started_at,
                response_after: None,
                route_name: String::new(),
                upstream_host: None,
                upstream_cluster: None,
                failure_reason: None,
                attempts: 0,
                received: Received::Counter(counter),
            }));
        }
        let reply = |mut ex: Exchange,
                     status: StatusCode,
                     text: &str,
                     flag: Flag,
                     grpc_status: Option<u32>| {
            tracing::debug!(target: "http", peer = %ex.conn.peer, status = status.as_u16(), flag = flag.short(), "local reply: {text}");
            ex.flag = Some(flag);
            if let Some(l) = ex.log.as_mut() {
                l.details = flag.details();
            }
            self.finish(local_reply(status, text, grpc, grpc_status), ex, None)
        };
        if let Err((status, why)) = self.check_request(&mut parts.headers) {
            return reply(exchange, status, why, Flag::DownstreamProtocolError, None);
        }
        // A WebSocket upgrade: tunnelled when upgrade_configs allows it, else refused (403).
        let upgrade = parts.version == Version::HTTP_11 && websocket_requested(&parts.headers);
        if upgrade && !self.config.websocket {
            s.downstream_rq_ws_on_non_ws_route.inc();
            return reply(
                exchange,
                StatusCode::FORBIDDEN,
                "upgrade failed",
                Flag::DownstreamProtocolError,
                None,
            );
        }
        // The connection comes back from the codec once the 101 is out (see `serve_h1`).
        let downstream_upgrade = upgrade.then(|| conn.expect_upgrade());
        let authority: Option<String> = match parts.uri.authority() {
            Some(a) => Some(a.as_str().to_string()),
            None => parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string),
        };
        let request_id = self.request_id(&mut parts.headers);
        if let (Some(l), Some(id)) = (exchange.log.as_mut(), &request_id) {
            l.request_headers.insert(names::X_REQUEST_ID, id.clone());
        }
        // The route is chosen before the HTTP filters run: they follow its
        // `typed_per_filter_config`. Its absence is answered after them (a health check
        // probe needs no route).
        let routes = self.route_table();
        let matched = match (&routes, &authority) {
            (Some(t), Some(a)) => t.route_with_filters(&RequestView {
                method: parts.method.as_str(),
                path_and_query: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/"),
                authority: a,
                path: parts.uri.path(),
                query: parts.uri.query(),
                headers: &parts.headers,
            }),
            _ => None,
        };
        // The HTTP filters before the router, in order.
        let head = super::filters::RequestHead {
            headers: &parts.headers,
            method: parts.method.as_str(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
            grpc,
            draining: conn.watch.phase() != crate::drain::Phase::Running,
            peer: conn.peer,
            local: conn.local,
            destination: conn.original_dst.unwrap_or(conn.local),
            protocol: protocol_name(parts.version),
            tls: conn.tls.as_deref(),
            authority: authority.as_deref().unwrap_or(""),
            server_name: conn.server_name.as_deref(),
        };
        // Values set by `set_filter_state`, for `hash_policy.filter_state`.
        let mut filter_state: Vec<(Arc<str>, String)> = Vec::new();
        let per_route = matched.and_then(|m| m.2);
        for (name, f) in &self.filters {
            let verdict = match per_route.and_then(|p| p.get(name)) {
                Some(super::route::RouteFilter::Disabled) => continue,
                Some(super::route::RouteFilter::Replace(own)) => own.on_request(&head),
                Some(super::route::RouteFilter::Rbac(rules)) => {
                    f.on_request_with_rbac(&head, rules)
                }
                None => f.on_request(&head),
            };
            match verdict {
                Verdict::Continue(h) => exchange.extra_headers.extend(h),
                Verdict::State(v) => filter_state.extend(v),
                Verdict::Delay(t, active) => {
                    tokio::time::sleep(t).await;
                    drop(active);
                }
                Verdict::Reply(r) => {
                    let status =
                        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    exchange.extra_headers.extend(r.headers);
                    return reply(exchange, status, r.text, r.flag, r.grpc_status);
                }
            }
        }
        let Some(authority) = authority else {
            return reply(
                exchange,
                StatusCode::BAD_REQUEST,
                "missing host header",
                Flag::DownstreamProtocolError,
                None,
            );
        };
        let (Some(routes), Some((vh, route, _))) = (&routes, matched) else {
            s.no_route.inc();
            return reply(exchange, StatusCode::NOT_FOUND, "", Flag::NoRoute, None);
        };
        let rc = &routes.config;
        if let Some(l) = exchange.log.as_mut() {
            l.route_name = route.name.clone();
        }
        let fcx = FormatContext {
            downstream_remote: conn.peer,
            downstream_local: conn.local,
            protocol: protocol_name(parts.version),
            upstream_remote: None,
            request_headers: None,
            start: started_at,
        };
        let forward = match &route.action {
            Action::DirectResponse { status, body } => {
                s.rq_direct_response.inc();
                if let Some(l) = exchange.log.as_mut() {
                    l.details = "direct_response";
                }
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
                let mut r = Response::new(match body {
                    Some(b) => Body::full(b.clone()),
                    None => Body::empty(),
                });
                *r.status_mut() = status;
                if let Some(b) = body {
                    r.headers_mut()
                        .insert("content-length", HeaderValue::from(b.len()));
                    r.headers_mut()
                        .insert("content-type", HeaderValue::from_static("text/plain"));
                }
                headers::mutate_response(
                    r.headers_mut(),
                    &[&route.headers, &vh.headers, &rc.headers],
                    &fcx,
                );
                return self.finish(r, exchange, request_id);
            }
            Action::Redirect(rd) => {
                s.rq_redirect.inc();
                if let Some(l) = exchange.log.as_mut() {
                    l.details = "direct_response";
                }
                let r = redirect(rd, &parts.uri, &authority, route);
                let mut r = r;
                headers::mutate_response(
                    r.headers_mut(),
                    &[&route.headers, &vh.headers, &rc.headers],
                    &fcx,
                );
                return self.finish(r, exchange, request_id);
            }
            Action::Forward(f) => f,
        };
        // The cluster: named, from a request header, or one of the weighted clusters.
        let (cluster_name, weighted): (std::borrow::Cow<'_, str>, _) = match &forward.cluster {
            ClusterSpecifier::Cluster(c) => (c.as_str().into(), None),
            ClusterSpecifier::Header(h) => (
                parts
                    .headers
                    .get(h.as_str())
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
                    .into(),
                None,
            ),
            ClusterSpecifier::Weighted { clusters, total } => {
                let mut r = fastrand::u64(..*total);
                let w = clusters
                    .iter()
                    .find(|c| {
                        if r < c.weight as u64 {
                            true
                        } else {
                            r -= c.weight as u64;
                            false
                        }
                    })
                    .unwrap_or(&clusters[clusters.len() - 1]);
                (w.name.as_str().into(), Some(w))
            }
        };
        let Some(cluster) = self.clusters.get(&cluster_name) else {
            s.no_cluster.inc();
            let status = StatusCode::from_u16(forward.cluster_not_found_status)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return reply(exchange, status, "", Flag::NoCluster, None);
        };
        // The upstream request.
        let (with_weighted, without);
        let levels: &[&HeaderMutations] = match weighted {
            Some(w) => {
                with_weighted = [&route.headers, &w.headers, &vh.headers, &rc.headers];
                &with_weighted
            }
            None => {
                without = [&route.headers, &vh.headers, &rc.headers];
                &without
            }
        };
        // For hashing load balancers (carried in the pick; the cluster's policy uses it).
        // A hash policy's generated cookie goes on the response.
        let mut set_cookies = Vec::new();
        let hash_key = if forward.hash_policy.is_empty() {
            None
        } else {
            request_hash(
                &forward.hash_policy,
                &parts.headers,
                &parts.uri,
                conn.peer,
                &filter_state,
                &mut set_cookies,
            )
        };
        let mut uh = std::mem::take(&mut parts.headers);
        headers::mutate_request(&mut uh, levels, &fcx);
        headers::strip_hop_by_hop(&mut uh, upgrade);
        uh.remove(http::header::EXPECT);
        if self.config.use_remote_address && !self.config.skip_xff_append {
            headers::append_xff(&mut uh, conn.peer.ip());
        }
        if self.config.use_remote_address || !uh.contains_key(names::X_FORWARDED_PROTO) {
            uh.insert(names::X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        if let Some(id) = &request_id {
            uh.insert(names::X_REQUEST_ID, id.clone());
        }
        let path_and_query = match rewrite_path(forward, route, &parts.uri, &mut uh)
            .map(|p| p.parse::<PathAndQuery>())
        {
            None => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            Some(Ok(p)) => p,
            Some(Err(_)) => {
                return reply(
                    exchange,
                    StatusCode::BAD_REQUEST,
                    "invalid request target",
                    Flag::DownstreamProtocolError,
                    None,
                )
            }
        };
        let host_rewrite = weighted
            .and_then(|w| w.host_rewrite_literal.clone())
            .map(HostRewrite::Literal)
            .unwrap_or_else(|| forward.host_rewrite.clone());
        let hs = cluster.http_stats();
        let priority = if forward.high_priority {
            Priority::High
        } else {
            Priority::Default
        };
        // Retries: the route's policy, adjusted by x-envoy-* headers of internal clients.
        let internal = retry::is_internal(conn.peer.ip());
        let (mut policy, overrides) =
            retry::effective(forward.retry_policy.as_ref(), &mut uh, internal);
        if upgrade {
            // A tunnel is not replayed.
            policy = None;
        }
        let timeout = overrides.timeout.unwrap_or(match forward.max_grpc_timeout {
            // gRPC: the client's deadline (none: no timeout), capped, less the offset.
            Some(max) if grpc => {
                let cap = (!max.is_zero()).then_some(max);
                match (grpc_timeout(&uh), cap) {
                    (Some(t), cap) => {
                        let t = cap.map_or(t, |c| t.min(c));
                        Some(match forward.grpc_timeout_offset {
                            Some(o) if o < t => t - o,
                            _ => t,
                        })
                    }
                    (None, cap) => cap,
                }
            }
            _ => forward.timeout,
        });
        let per_try = overrides
            .per_try_timeout
            .or(policy.as_ref().and_then(|p| p.per_try_timeout));
        // The route timeout, within what max_stream_duration leaves.
        let stream_deadline = self.config.max_stream_duration.map(|d| start + d);
        let deadline = match (timeout.map(|t| Instant::now() + t), stream_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // request_timeout bounds reading the request body.
        let request_deadline = self.config.request_timeout.map(|t| start + t);
        // Mirrors of this request (sampled now), sent when the main exchange has its answer.
        let mirrors: Vec<&MirrorPolicy> = if upgrade {
            Vec::new()
        } else {
            forward
                .mirrors
                .iter()
                .filter(|m| {
                    m.fraction
                        .is_none_or(|ppm| fastrand::u32(..1_000_000) < ppm)
                })
                .collect()
        };
        let mirror_headers = (!mirrors.is_empty()).then(|| uh.clone());
        let mut body = match (&policy, mirrors.is_empty()) {
            (None, true) => Source::Once(
                Some(body),
                exchange.log.as_ref().and_then(|l| match &l.received {
                    Received::Counter(c) => Some(c.clone()),
                    Received::Replay(_) => None,
                }),
            ),
            _ => {
                let r = Replay::new(
                    body,
                    route.buffer_limit.unwrap_or(DEFAULT_BUFFER_LIMIT) as usize,
                );
                if let Some(l) = exchange.log.as_mut() {
                    l.received = Received::Replay(r.clone());
                }
                Source::Replay(r)
            }
        };
        if let Some(l) = exchange.log.as_mut() {
            l.upstream_cluster = Some(cluster_name.to_string());
        }
        let protocol = match cluster.config.http.protocol {
            // A WebSocket upgrade goes upstream as HTTP/1.1.
            _ if upgrade => Version::HTTP_11,
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::Http2 => Version::HTTP_2,
            UpstreamProtocol::Downstream if parts.version == Version::HTTP_2 => Version::HTTP_2,
            UpstreamProtocol::Downstream => Version::HTTP_11,
            // Decided per host, below.
            UpstreamProtocol::Auto => Version::HTTP_11,
        };
        let auto = cluster.config.http.protocol == UpstreamProtocol::Auto && !upgrade;
        if protocol == Version::HTTP_2 {
            uh.remove(HOST);
        }
        let mut tried: Vec<Arc<crate::upstream::Host>> = Vec::new();
        let mut attempt = 0u32;
        // The circuit breaker's retry slot, held through the retried attempt.
        let mut retry_slot: Option<Slot> = None;
        let (host, resp, release, sent, rq_slot, in_flight) = loop {
            attempt += 1;
            hs.upstream_rq_total.inc();
            let Some(host) = pick(&cluster, conn, policy.as_ref(), &tried, attempt, hash_key)
            else {
                return self.upstream_failure(exchange, Failure::NoHealthy, grpc, &cluster);
            };
            // auto_config: what ALPN negotiated with this host (learned on first use). A probe
            // that could not connect is this attempt's connect failure.
            let mut probe_failed = None;
            let protocol = if auto {
                if let Err(e) = cluster.learn_protocol(&host).await {
                    probe_failed = Some(match e {
                        crate::upstream::ConnectError::Overflow(_) => Failure::Overflow,
                        e => Failure::Connect(e.to_string()),
                    });
                }
                if host.speaks_h2() == Some(true) {
                    Version::HTTP_2
                } else {
                    Version::HTTP_11
                }
            } else {
                protocol
            };
            let upstream_authority: std::borrow::Cow<'_, str> = match &host_rewrite {
                HostRewrite::None => authority.as_str().into(),
                HostRewrite::Literal(h) => h.as_str().into(),
                HostRewrite::Auto if !host.hostname.is_empty() => host.hostname.as_str().into(),
                HostRewrite::Auto => host.address.to_string().into(),
            };
            // auto_sni: the SNI of the connection is the request's host (its port aside).
            let sni: Option<Arc<str>> = cluster
                .auto_sni()
                .then(|| Arc::from(super::route::strip_port(&upstream_authority)));
            let uri = if protocol == Version::HTTP_2 {
                Uri::builder()
                    .scheme("http")
                    .authority(upstream_authority.as_ref())
                    .path_and_query(path_and_query.clone())
                    .build()
            } else {
                // The client's own Host header goes on as it is.
                let keep = matches!(host_rewrite, HostRewrite::None) && uh.contains_key(HOST);
                if !keep {
                    if let Ok(v) = HeaderValue::from_str(&upstream_authority) {
                        uh.insert(HOST, v);
                    }
                }
                Ok(Uri::from(path_and_query.clone()))
            };
            let Ok(uri) = uri else {
                return reply(
                    exchange,
                    StatusCode::BAD_REQUEST,
                    "invalid request target",
                    Flag::DownstreamProtocolError,
                    None,
                );
            };
            let mut headers = if policy.is_some() {
                uh.clone()
            } else {
                std::mem::take(&mut uh)
            };
            if vh.include_request_attempt_count {
                headers.insert(names::X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(attempt));
            }
            if auto && protocol == Version::HTTP_2 {
                headers.remove(HOST);
            }
            let mut ureq = Request::new(body.attempt().with_timer(Timer::new(
                None,
                request_deadline,
                s.downstream_rq_idle_timeout.clone(),
                s.downstream_rq_timeout.clone(),
            )));
            *ureq.method_mut() = parts.method.clone();
            *ureq.uri_mut() = uri;
            *ureq.version_mut() = protocol;
            *ureq.headers_mut() = headers;
            let sent = Instant::now();
            // This attempt's bound: the per-try timeout or what is left of the route's.
            let left = deadline.map(|d| d.saturating_duration_since(sent));
            let (bound, per_try_bound) = match (per_try, left) {
                (Some(p), Some(l)) if p < l => (Some(p), true),
                (Some(p), None) => (Some(p), true),
                (_, l) => (l, false),
            };
            // The circuit breaker's max_requests: one slot per attempt, held until its
            // response ends.
            let rq_slot = cluster.breakers.try_acquire(priority, Resource::Requests);
            // In flight from the send (least request counts it), until the response ends.
            let in_flight = rq_slot.is_some().then(|| InFlight::new(&host));
            // No named local for the send future: it would be kept next to the timeout's copy
            // of it in this (per request, moved) future.
            let result = match (bound, &rq_slot) {
                _ if probe_failed.is_some() => Err(probe_failed.take().expect("checked")),
                (_, None) => {
                    hs.upstream_rq_pending_overflow.inc();
                    Err(Failure::Overflow)
                }
                (Some(t), Some(_)) => {
                    match tokio::time::timeout(
                        t,
                        self.send(&cluster, &host, ureq, protocol, priority, sni.as_ref()),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) if per_try_bound => {
                            hs.upstream_rq_per_try_timeout.inc();
                            Err(Failure::PerTryTimeout)
                        }
                        Err(_) => Err(Failure::Timeout),
                    }
                }
                (None, Some(_)) => {
                    self.send(&cluster, &host, ureq, protocol, priority, sni.as_ref())
                        .await
                }
            };
            let retriable = match (&policy, &result) {
                (Some(p), Ok((r, _))) => retry::retriable_response(p, r),
                (Some(p), Err(f)) => retry::retriable_failure(p, f),
                (None, _) => false,
            };
            // A breaker's refusal says nothing about the host; a connect failure was
            // reported by the connect itself.
            let outcome = match &result {
                Ok(_) | Err(Failure::Overflow | Failure::Connect(_)) => None,
                Err(Failure::Timeout | Failure::PerTryTimeout) => Some(Outcome::Timeout),
                Err(_) => Some(Outcome::Reset),
            };
            if let Some(o) = outcome {
                cluster.report(&host, o);
            }
            let retries = policy.as_ref().map_or(0, |p| p.num_retries);
            if retriable && attempt > retries {
                hs.upstream_rq_retry_limit_exceeded.inc();
                exchange.flag = Some(Flag::UpstreamRetryLimitExceeded);
            }
            let wait = policy
                .as_ref()
                .map(|p| retry::back_off(p, attempt))
                .unwrap_or_default();
            let time_left = deadline.is_none_or(|d| Instant::now() + wait < d);
            let may_retry = retriable && attempt <= retries && body.replayable() && time_left;
            // The circuit breaker's max_retries (or retry budget): a retry it does not allow
            // is not made, and the outcome goes back as it is.
            let may_retry = may_retry
                && match cluster.breakers.try_acquire(priority, Resource::Retries) {
                    Some(s) => {
                        retry_slot = Some(s);
                        true
                    }
                    None => {
                        hs.upstream_rq_retry_overflow.inc();
                        false
                    }
                };
            if may_retry {
                if let Ok((r, _)) = &result {
                    hs.record_status(r.status().as_u16());
                    cluster.report(&host, Outcome::HttpStatus(retry::outlier_status(r, grpc)));
                }
                hs.upstream_rq_retry.inc();
                // (A retried attempt's HTTP/2 stream is given back as its result drops.)
                drop(result);
                tried.push(host);
                tokio::time::sleep(wait).await;
                continue;
            }
            if retriable && attempt <= retries && !body.replayable() {
                hs.retry_or_shadow_abandoned.inc();
            }
            match result {
                Ok((r, release)) => break (host, r, release, sent, rq_slot, in_flight),
                Err(f) => {
                    if let Some(l) = exchange.log.as_mut() {
                        l.upstream_host = Some(host.address);
                        l.attempts = attempt;
                    }
                    if let Some(h) = mirror_headers {
                        self.mirror(
                            &mirrors,
                            &parts,
                            path_and_query.as_str(),
                            &authority,
                            h,
                            &body,
                        );
                    }
                    return self.upstream_failure(exchange, f, grpc, &cluster);
                }
            }
        };
        if let Some(h) = mirror_headers {
            self.mirror(
                &mirrors,
                &parts,
                path_and_query.as_str(),
                &authority,
                h,
                &body,
            );
        }
        if let Some(l) = exchange.log.as_mut() {
            l.upstream_host = Some(host.address);
            l.attempts = attempt;
            l.details = "via_upstream";
        }
        let status = resp.status();
        if attempt > 1 && status.as_u16() < 500 {
            hs.upstream_rq_retry_success.inc();
        }
        hs.upstream_rq_active.inc();
        hs.record_status(status.as_u16());
        cluster.report(
            &host,
            Outcome::HttpStatus(retry::outlier_status(&resp, grpc)),
        );
        let mut resp = resp;
        let tunnel = upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if tunnel {
            // Both ends hand over their connections once the 101 is out: splice them.
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            if let Some(down) = downstream_upgrade {
                // The tunnel counts as a connection for the drain (which waits for it up to
                // the drain time) and ends at the drain's close phase.
                let mut closing = conn.watch.clone();
                let guard = conn.watch.track();
                tokio::spawn(async move {
                    let _guard = guard;
                    if let (Ok(mut d), Ok(u)) = tokio::join!(down, upstream_upgrade) {
                        let mut u = TokioIo::new(u);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut d, &mut u) => {}
                            _ = closing.closing() => {}
                        }
                    }
                });
            }
        }
        let (mut rparts, rbody) = resp.into_parts();
        let reusable = !connection_close(&rparts.headers) && !tunnel;
        let release = match release {
            Sent::H1(p) => Release::H1 {
                tx: p.tx,
                epoch: p.epoch,
                sni_pool: p.sni_pool,
                served: p.served + 1,
                reusable: reusable
                    && cluster
                        .config
                        .http
                        .max_requests_per_connection
                        .is_none_or(|m| p.served + 1 < m),
            },
            Sent::H2(stream) => Release::H2(stream),
        };
        drop(retry_slot);
        exchange.upstream = Some(UpstreamBooks {
            cluster: cluster.clone(),
            host: host.clone(),
            sent,
            release,
            _rq_slot: rq_slot,
            _in_flight: in_flight.unwrap_or_else(|| InFlight::new(&host)),
        });
        headers::strip_hop_by_hop(&mut rparts.headers, tunnel);
        let fcx = FormatContext {
            upstream_remote: Some(host.address),
            ..fcx
        };
        headers::mutate_response(&mut rparts.headers, levels, &fcx);
        for c in set_cookies {
            rparts.headers.append(http::header::SET_COOKIE, c);
        }
        if !self.config.suppress_envoy_headers {
            rparts.headers.insert(
                "x-envoy-upstream-service-time",
                HeaderValue::from(sent.elapsed().as_millis() as u64),
            );
        }
        if vh.include_attempt_count_in_response {
            rparts
                .headers
                .insert(names::X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(attempt));
        }
        rparts.version = Version::HTTP_11;
        // The response streams within the stream's idle timeout, and within the route timeout
        // (which, as in Envoy, covers the whole response) or the max stream duration,
        // whichever ends first; each counts its own stat when it cuts the body.
        let route_cuts = match (deadline, stream_deadline) {
            (Some(d), Some(m)) => d < m,
            (Some(_), None) => true,
            _ => false,
        };
        let timer = Timer::new(
            forward.idle_timeout.or(self.config.stream_idle_timeout),
            deadline,
            s.downstream_rq_idle_timeout.clone(),
            if route_cuts {
                hs.upstream_rq_timeout.clone()
            } else {
                s.downstream_rq_max_duration_reached.clone()
            },
        );
        let r = Response::from_parts(rparts, Body::incoming(rbody).with_timer(timer));
        self.finish(r, exchange, request_id)
    }

    /// Adds the connection manager's response headers, counts the status and hooks the books
    /// to the end of the body.
    fn finish(
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

    fn upstream_failure(
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
        let (status, text, flag, grpc_status) = match f {
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
        hs.record_status(status.as_u16());
        tracing::debug!(target: "http", peer = %ex.conn.peer, cluster = cluster.name(), status = status.as_u16(), flag = flag.short(), "{text}");
        let r = local_reply(status, &text, grpc, grpc_status);
        self.finish(r, ex, None)
    }

    /// Checks what the codec does not: header count (HTTP/2), size, underscores.
    fn check_request(&self, h: &mut HeaderMap) -> Result<(), (StatusCode, &'static str)> {
        let c = &self.config;
        if h.len() > c.max_headers_count {
            self.stats.downstream_rq_too_large.inc();
            return Err((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many headers",
            ));
        }
        let size: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        if size > c.max_request_headers_bytes {
            self.stats.downstream_rq_too_large.inc();
            return Err((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request headers too large",
            ));
        }
        match c.headers_with_underscores_action {
            UnderscoresAction::Allow => {}
            UnderscoresAction::RejectRequest => {
                if h.keys().any(|k| k.as_str().contains('_')) {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "header names with underscores are not allowed",
                    ));
                }
            }
            UnderscoresAction::DropHeader => {
                let drop: Vec<_> = h
                    .keys()
                    .filter(|k| k.as_str().contains('_'))
                    .cloned()
                    .collect();
                for k in drop {
                    h.remove(k);
                }
            }
        }
        Ok(())
    }

    /// The request's `x-request-id`: kept, or generated (Envoy's rules: an edge proxy,
    /// `use_remote_address`, replaces a client's ID unless told to preserve it).
    fn request_id(&self, h: &mut HeaderMap) -> Option<HeaderValue> {
        let c = &self.config;
        let existing = h
            .get(names::X_REQUEST_ID)
            .filter(|v| !v.is_empty())
            .cloned();
        match existing {
            Some(id) if !c.use_remote_address || c.preserve_external_request_id => Some(id),
            _ if c.generate_request_id => {
                let id = headers::uuid4();
                h.insert(names::X_REQUEST_ID, id.clone());
                Some(id)
            }
            other => other,
        }
    }
}

impl ConnectionManager {
    /// Sends a copy of the request to each mirror's cluster, fire and forget: the main
    /// exchange never waits for, nor fails because of, a mirror. The host gets `-shadow`
    /// appended (unless disabled). A body is copied only when it was read whole and kept;
    /// otherwise the mirror is skipped (`retry_or_shadow_abandoned`).
    fn mirror(
        self: &Arc<Self>,
        mirrors: &[&MirrorPolicy],
        parts: &http::request::Parts,
        path_and_query: &str,
        authority: &str,
        headers: HeaderMap,
        body: &Source,
    ) {
        for m in mirrors {
            let name = match &m.cluster {
                ClusterSpecifier::Cluster(c) => c.clone(),
                ClusterSpecifier::Header(h) => {
                    match headers.get(h.as_str()).and_then(|v| v.to_str().ok()) {
                        Some(v) => v.to_string(),
                        None => continue,
                    }
                }
                ClusterSpecifier::Weighted { .. } => continue,
            };
            let Some(cluster) = self.clusters.get(&name) else {
                continue;
            };
            let mbody = match body {
                Source::Replay(r) => r.snapshot(),
                Source::Once(..) => None,
            };
            let Some(mbody) = mbody else {
                cluster.http_stats().retry_or_shadow_abandoned.inc();
                continue;
            };
            let mut host = m
                .host_rewrite_literal
                .clone()
                .unwrap_or_else(|| authority.to_string());
            if m.shadow_suffix {
                // Before any port: `a.example:8080` → `a.example-shadow:8080`.
                let bare = super::route::strip_port(&host).len();
                host = format!("{}-shadow{}", &host[..bare], &host[bare..]);
            }
            let mut headers = headers.clone();
            let h2 = cluster.config.http.protocol == UpstreamProtocol::Http2;
            let uri = if h2 {
                headers.remove(HOST);
                Uri::builder()
                    .scheme("http")
                    .authority(host.as_str())
                    .path_and_query(path_and_query)
                    .build()
                    .ok()
            } else {
                let Ok(hv) = HeaderValue::from_str(&host) else {
                    continue;
                };
                headers.insert(HOST, hv);
                path_and_query.parse::<Uri>().ok()
            };
            let Some(uri) = uri else { continue };
            let sni: Option<Arc<str>> = cluster
                .auto_sni()
                .then(|| Arc::from(super::route::strip_port(&host)));
            let version = if h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            let mut req = Request::new(mbody);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri;
            *req.headers_mut() = headers;
            *req.version_mut() = version;
            let hcm = self.clone();
            tokio::spawn(async move {
                let hs = cluster.http_stats();
                hs.upstream_rq_total.inc();
                let ctx = LbContext::default();
                let Ok(host) = cluster.pick(&ctx) else { return };
                // Bounded: a mirror that does not answer in 15 s is dropped.
                let sent = tokio::time::timeout(
                    std::time::Duration::from_secs(15),
                    hcm.send(
                        &cluster,
                        &host,
                        req,
                        version,
                        Priority::Default,
                        sni.as_ref(),
                    ),
                )
                .await;
                match sent {
                    Ok(Ok((r, _))) => {
                        hs.record_status(r.status().as_u16());
                        cluster.report(&host, Outcome::HttpStatus(r.status().as_u16()));
                    }
                    Ok(Err(_)) => cluster.report(&host, Outcome::Reset),
                    Err(_) => hs.upstream_rq_timeout.inc(),
                }
            });
        }
    }
}

/// Whether the request asks for a WebSocket upgrade (HTTP/1.1).
fn websocket_requested(h: &HeaderMap) -> bool {
    h.get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    }
}

fn connection_close(h: &HeaderMap) -> bool {
    h.get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
}

/// Request bytes kept for replay on a retry when the route does not say (Envoy's default).
const DEFAULT_BUFFER_LIMIT: u32 = 1024 * 1024;

/// The request body of each attempt: the original once, or replayed.
enum Source {
    Once(Option<Incoming>, Option<Arc<std::sync::atomic::AtomicU64>>),
    Replay(Arc<Replay>),
}

impl Source {
    fn attempt(&mut self) -> Body {
        match self {
            Source::Once(b, counter) => match (b.take(), counter) {
                (Some(b), Some(c)) => Body::incoming(b).with_counter(c.clone()),
                (Some(b), None) => Body::incoming(b),
                (None, _) => Body::empty(),
            },
            Source::Replay(r) => r.attempt(),
        }
    }

    fn replayable(&self) -> bool {
        match self {
            Source::Once(..) => false,
            Source::Replay(r) => r.replayable(),
        }
    }
}

/// A request's `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub(super) fn grpc_timeout(h: &HeaderMap) -> Option<std::time::Duration> {
    let v = h.get(names::GRPC_TIMEOUT)?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    use std::time::Duration as D;
    Some(match unit {
        "H" => D::from_secs(n.checked_mul(3600)?),
        "M" => D::from_secs(n.checked_mul(60)?),
        "S" => D::from_secs(n),
        "m" => D::from_millis(n),
        "u" => D::from_micros(n),
        "n" => D::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let t = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(t("100m"), Some(std::time::Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(std::time::Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(std::time::Duration::from_secs(3600)));
        assert_eq!(t("5n"), Some(std::time::Duration::from_nanos(5)));
        for bad in ["", "m", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }
}
