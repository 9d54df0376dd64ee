//! The route's forward action, once the connection manager has routed a request: the
//! cluster (named, from a header, or weighted), the upstream request's headers and timeouts,
//! the attempts (host pick, pooled connection, send, retries) and the response as it goes
//! back downstream. Mirrors are sent from here too.

use super::body::{Body, Replay, Timer};
use super::exchange::{Exchange, Failure, Flag, InFlight, Received, Release, UpstreamBooks};
use super::headers::{self, names, FormatContext};
use super::pick::{pick, request_hash};
use super::retry;
use super::rewrite::rewrite_path;
use super::upstream::Sent;
use super::{ConnInfo, ConnectionManager, Prefixed};
use crate::config::http::{
    ClusterSpecifier, Forward, HeaderMutations, HostRewrite, MirrorPolicy, RetryPolicy, Route,
    RouteConfiguration, UpstreamProtocol, VirtualHost,
};
use crate::upstream::{Cluster, Host, Outcome, Priority, Resource, Slot};
use http::header::{HeaderValue, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Instant;

/// A request the connection manager routed to a forward action: what `serve` decided
/// before the upstream side takes over.
pub(super) struct Routed<'a> {
    pub conn: &'a Arc<ConnInfo>,
    pub parts: http::request::Parts,
    pub body: Incoming,
    pub exchange: Exchange,
    pub grpc: bool,
    /// A WebSocket upgrade, and the downstream connection once the 101 is out.
    pub upgrade: bool,
    pub downstream_upgrade: Option<tokio::sync::oneshot::Receiver<Prefixed>>,
    pub authority: String,
    pub request_id: Option<HeaderValue>,
    pub rc: &'a RouteConfiguration,
    pub vh: &'a VirtualHost,
    pub route: &'a Route,
    pub forward: &'a Forward,
    pub fcx: FormatContext<'a>,
    /// Values set by `set_filter_state`, for `hash_policy.filter_state`.
    pub filter_state: Vec<(Arc<str>, String)>,
    pub start: Instant,
}

/// What every attempt of one request shares.
struct Plan<'a> {
    conn: &'a ConnInfo,
    cluster: &'a Arc<Cluster>,
    vh: &'a VirtualHost,
    method: &'a Method,
    grpc: bool,
    policy: Option<&'a RetryPolicy>,
    hash_key: Option<u64>,
    /// The cluster's protocol; with `auto`, learned per host.
    protocol: Version,
    auto: bool,
    host_rewrite: &'a HostRewrite,
    authority: &'a str,
    path_and_query: &'a PathAndQuery,
    priority: Priority,
    per_try: Option<std::time::Duration>,
    /// The route's timeout (or the stream's maximum duration), for every attempt together.
    deadline: Option<Instant>,
    /// `request_timeout`: bounds reading the request body.
    request_deadline: Option<Instant>,
}

/// The attempt that answered, with what its response holds until it ends.
struct Answer {
    host: Arc<Host>,
    resp: Response<Body>,
    release: Sent,
    sent: Instant,
    rq_slot: Option<Slot>,
    in_flight: Option<InFlight>,
}

/// Why no attempt answered.
enum NoAnswer {
    /// The last attempt's failure, and its host (none when no host could be picked).
    Failed(Failure, Option<Arc<Host>>),
    /// The host's authority does not make a valid request target.
    BadTarget,
}

/// The attempts made so far, and the retry slot held through the last one.
#[derive(Default)]
struct Tries {
    count: u32,
    retry_slot: Option<Slot>,
}

impl ConnectionManager {
    /// Forwards a routed request: its cluster, its upstream request, the attempts, and the
    /// response as it goes back (or the local reply that says why there is none).
    pub(super) async fn forward(self: &Arc<Self>, r: Routed<'_>) -> Response<Body> {
        let Routed {
            conn,
            mut parts,
            body,
            mut exchange,
            grpc,
            upgrade,
            downstream_upgrade,
            authority,
            request_id,
            rc,
            vh,
            route,
            forward,
            fcx,
            filter_state,
            start,
        } = r;
        let s = &self.stats;
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
            return self.reply(exchange, status, "", Flag::NoCluster, None, grpc);
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
            Some(Err(_)) => return self.bad_target(exchange, grpc),
        };
        let host_rewrite = weighted
            .and_then(|w| w.host_rewrite_literal.clone())
            .map(HostRewrite::Literal)
            .unwrap_or_else(|| forward.host_rewrite.clone());
        let hs = cluster.http_stats();
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
            // Decided per host, in each attempt.
            UpstreamProtocol::Auto => Version::HTTP_11,
        };
        if protocol == Version::HTTP_2 {
            uh.remove(HOST);
        }
        let plan = Plan {
            conn,
            cluster: &cluster,
            vh,
            method: &parts.method,
            grpc,
            policy: policy.as_ref(),
            hash_key,
            protocol,
            auto: cluster.config.http.protocol == UpstreamProtocol::Auto && !upgrade,
            host_rewrite: &host_rewrite,
            authority: &authority,
            path_and_query: &path_and_query,
            priority: if forward.high_priority {
                Priority::High
            } else {
                Priority::Default
            },
            per_try,
            deadline,
            request_deadline: self.config.request_timeout.map(|t| start + t),
        };
        let mut tries = Tries::default();
        let outcome = self
            .attempts(&plan, uh, &mut body, &mut exchange, &mut tries)
            .await;
        let mirror = |host: Option<&Arc<Host>>| {
            if let (Some(h), Some(_)) = (mirror_headers, host) {
                self.mirror(
                    &mirrors,
                    &parts,
                    path_and_query.as_str(),
                    &authority,
                    h,
                    &body,
                );
            }
        };
        let a = match outcome {
            Ok(a) => a,
            Err(NoAnswer::BadTarget) => {
                return self.bad_target(exchange, grpc);
            }
            Err(NoAnswer::Failed(f, host)) => {
                if let (Some(l), Some(h)) = (exchange.log.as_mut(), &host) {
                    l.upstream_host = Some(h.address);
                    l.attempts = tries.count;
                }
                mirror(host.as_ref());
                return self.upstream_failure(exchange, f, grpc, &cluster);
            }
        };
        mirror(Some(&a.host));
        if let Some(l) = exchange.log.as_mut() {
            l.upstream_host = Some(a.host.address);
            l.attempts = tries.count;
            l.details = "via_upstream";
        }
        let Answer {
            host,
            resp,
            release,
            sent,
            rq_slot,
            in_flight,
        } = a;
        let status = resp.status();
        if tries.count > 1 && status.as_u16() < 500 {
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
        let release = match release {
            // (The own client decides on reuse as it reads the response.)
            Sent::H1(p) => Release::H1 {
                tx: p.tx,
                epoch: p.epoch,
                sni_pool: p.sni_pool,
                served: p.served + 1,
                reusable: !tunnel
                    && !connection_close(&rparts.headers)
                    && cluster
                        .config
                        .http
                        .max_requests_per_connection
                        .is_none_or(|m| p.served + 1 < m),
            },
            Sent::H2(stream) => Release::H2(stream),
            Sent::Own => Release::Own,
        };
        drop(tries.retry_slot);
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
                .insert(names::X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(tries.count));
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
        let r = Response::from_parts(rparts, rbody.with_timer(timer));
        self.finish(r, exchange, request_id)
    }

    /// A request whose target (rewritten, or with the upstream's authority) is not valid.
    fn bad_target(&self, ex: Exchange, grpc: bool) -> Response<Body> {
        let flag = Flag::DownstreamProtocolError;
        self.reply(
            ex,
            StatusCode::BAD_REQUEST,
            "invalid request target",
            flag,
            None,
            grpc,
        )
    }

    /// The attempts of one request: each picks a host (not one tried before when the retry
    /// policy says so), sends on a pooled or new connection within the per-try timeout or
    /// what is left of the route's, and is retried while the policy, the body, the time
    /// left and the retry circuit breaker allow.
    async fn attempts(
        &self,
        plan: &Plan<'_>,
        mut uh: HeaderMap,
        body: &mut Source,
        exchange: &mut Exchange,
        tries: &mut Tries,
    ) -> Result<Answer, NoAnswer> {
        let (cluster, s) = (plan.cluster, &self.stats);
        let hs = cluster.http_stats();
        let mut tried: Vec<Arc<Host>> = Vec::new();
        loop {
            tries.count += 1;
            let attempt = tries.count;
            hs.upstream_rq_total.inc();
            let Some(host) = pick(
                cluster,
                plan.conn,
                plan.policy,
                &tried,
                attempt,
                plan.hash_key,
            ) else {
                return Err(NoAnswer::Failed(Failure::NoHealthy, None));
            };
            // auto_config: what ALPN negotiated with this host (learned on first use). A probe
            // that could not connect is this attempt's connect failure.
            let mut probe_failed = None;
            let protocol = if plan.auto {
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
                plan.protocol
            };
            let upstream_authority: std::borrow::Cow<'_, str> = match plan.host_rewrite {
                HostRewrite::None => plan.authority.into(),
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
                    .path_and_query(plan.path_and_query.clone())
                    .build()
            } else {
                // The client's own Host header goes on as it is.
                let keep = matches!(plan.host_rewrite, HostRewrite::None) && uh.contains_key(HOST);
                if !keep {
                    if let Ok(v) = HeaderValue::from_str(&upstream_authority) {
                        uh.insert(HOST, v);
                    }
                }
                Ok(Uri::from(plan.path_and_query.clone()))
            };
            let Ok(uri) = uri else {
                return Err(NoAnswer::BadTarget);
            };
            let mut headers = if plan.policy.is_some() {
                uh.clone()
            } else {
                std::mem::take(&mut uh)
            };
            if plan.vh.include_request_attempt_count {
                headers.insert(names::X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(attempt));
            }
            if plan.auto && protocol == Version::HTTP_2 {
                headers.remove(HOST);
            }
            let mut ureq = Request::new(body.attempt().with_timer(Timer::new(
                None,
                plan.request_deadline,
                s.downstream_rq_idle_timeout.clone(),
                s.downstream_rq_timeout.clone(),
            )));
            *ureq.method_mut() = plan.method.clone();
            *ureq.uri_mut() = uri;
            *ureq.version_mut() = protocol;
            *ureq.headers_mut() = headers;
            let sent = Instant::now();
            // This attempt's bound: the per-try timeout or what is left of the route's.
            let left = plan.deadline.map(|d| d.saturating_duration_since(sent));
            let (bound, per_try_bound) = match (plan.per_try, left) {
                (Some(p), Some(l)) if p < l => (Some(p), true),
                (Some(p), None) => (Some(p), true),
                (_, l) => (l, false),
            };
            // The circuit breaker's max_requests: one slot per attempt, held until its
            // response ends.
            let rq_slot = cluster
                .breakers
                .try_acquire(plan.priority, Resource::Requests);
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
                        self.send(cluster, &host, ureq, protocol, plan.priority, sni.as_ref()),
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
                    self.send(cluster, &host, ureq, protocol, plan.priority, sni.as_ref())
                        .await
                }
            };
            let retriable = match (plan.policy, &result) {
                (Some(p), Ok((r, _))) => retry::retriable_response(p, r),
                (Some(p), Err(f)) => retry::retriable_failure(p, f),
                (None, _) => false,
            };
            // A breaker's refusal or the request body's failure says nothing about the
            // host; a connect failure was reported by the connect itself.
            let outcome = match &result {
                Ok(_) | Err(Failure::Overflow | Failure::Connect(_) | Failure::Downstream(_)) => {
                    None
                }
                Err(Failure::Timeout | Failure::PerTryTimeout) => Some(Outcome::Timeout),
                Err(_) => Some(Outcome::Reset),
            };
            if let Some(o) = outcome {
                cluster.report(&host, o);
            }
            let retries = plan.policy.map_or(0, |p| p.num_retries);
            if retriable && attempt > retries {
                hs.upstream_rq_retry_limit_exceeded.inc();
                exchange.flag = Some(Flag::UpstreamRetryLimitExceeded);
            }
            let wait = plan
                .policy
                .map(|p| retry::back_off(p, attempt))
                .unwrap_or_default();
            let time_left = plan.deadline.is_none_or(|d| Instant::now() + wait < d);
            let may_retry = retriable && attempt <= retries && body.replayable() && time_left;
            // The circuit breaker's max_retries (or retry budget): a retry it does not allow
            // is not made, and the outcome goes back as it is.
            let may_retry = may_retry
                && match cluster
                    .breakers
                    .try_acquire(plan.priority, Resource::Retries)
                {
                    Some(s) => {
                        tries.retry_slot = Some(s);
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
                    cluster.report(
                        &host,
                        Outcome::HttpStatus(retry::outlier_status(r, plan.grpc)),
                    );
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
            return match result {
                Ok((resp, release)) => Ok(Answer {
                    host,
                    resp,
                    release,
                    sent,
                    rq_slot,
                    in_flight,
                }),
                Err(f) => Err(NoAnswer::Failed(f, Some(host))),
            };
        }
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
pub(super) enum Source {
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
