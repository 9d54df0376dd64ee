//! Active health checking (Envoy's `health_checks`): TCP (connect, optional send/receive
//! payloads), HTTP/1.1 or HTTP/2 (`GET path`, expected statuses) and gRPC
//! (`grpc.health.v1.Health/Check`, SERVING). One task per cluster keeps each host's next
//! check in a queue: a host is checked again an interval after its last check ended, the
//! interval chosen by its state as Envoy chooses it (`interval`, `unhealthy_interval`, the
//! edge intervals right after a change, `no_traffic_interval` until the cluster has had a
//! connection), plus jitter. Hosts arriving together (at start, or a large EDS update) have
//! their first checks spread over an interval, so a thousand hosts do not make a thousand
//! checks at once.
//!
//! A host added to a cluster with health checking starts `/failed_active_hc` and
//! `/pending_active_hc` (not routed) until its first check passes; after that it turns
//! unhealthy after `unhealthy_threshold` failures in a row, and healthy again after
//! `healthy_threshold` successes in a row. An HTTP answer outside `expected_statuses` turns it
//! unhealthy at once, as in Envoy.

use super::grpc_health::{grpc_check_request, grpc_serving_status, SERVING};
use super::{health_flag, Cluster, Host};
use crate::config::{HealthCheck, HealthCheckKind};
use crate::http::access_log::EventLog;
use crate::stats::{Counter, Gauge, Scope, Store};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// A host's checker state (in the host, so it survives EDS updates with the host).
#[derive(Default)]
pub struct HostHealth {
    successes: AtomicU32,
    failures: AtomicU32,
    /// The connection kept between checks (`reuse_connection`); closed with the host.
    kept: std::sync::Mutex<Option<Kept>>,
}

impl std::fmt::Debug for HostHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostHealth")
            .field("successes", &self.successes)
            .field("failures", &self.failures)
            .finish()
    }
}

/// A health check connection kept for the next check.
enum Kept {
    Tcp(crate::transport::Stream),
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// Why a check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckFailure {
    /// No connection, or no answer within the timeout (`network_failure`).
    Network(String),
    /// An answer, but not the expected one.
    Answer(String),
    /// An HTTP status outside `expected_statuses`: unhealthy at once.
    Status(u16),
}

#[derive(Debug)]
struct Stats {
    attempt: Arc<Counter>,
    success: Arc<Counter>,
    failure: Arc<Counter>,
    network_failure: Arc<Counter>,
    passive_failure: Arc<Counter>,
    verify_cluster: Arc<Counter>,
    healthy: Arc<Gauge>,
}

/// One cluster's health checker.
#[derive(Debug)]
pub struct Checker {
    cfg: HealthCheck,
    stats: Stats,
    events: Option<EventLog>,
}

/// What one check did to a host's health (Envoy's `HealthTransition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    /// Healthy or unhealthy now, from the other state.
    Changed,
    /// Toward the other state, under its threshold yet.
    ChangePending,
}

/// At most this much of an answer is read.
const MAX_ANSWER: usize = 64 * 1024;

impl Checker {
    pub fn new(cfg: &HealthCheck, scope: &Scope, store: &Store) -> Self {
        let c = |n: &str| scope.counter(&format!("health_check.{n}"));
        let stats = Stats {
            attempt: c("attempt"),
            success: c("success"),
            failure: c("failure"),
            network_failure: c("network_failure"),
            passive_failure: c("passive_failure"),
            verify_cluster: c("verify_cluster"),
            healthy: scope.gauge("health_check.healthy"),
        };
        // Created at zero, as Envoy shows them.
        let _ = (&stats.passive_failure, &stats.verify_cluster);
        Self {
            cfg: cfg.clone(),
            stats,
            events: cfg
                .event_log_path
                .as_deref()
                .map(|p| EventLog::open(p, store)),
        }
    }

    /// How long after a check of a host the next one runs: Envoy's choice by the host's
    /// state and the check's transition, plus jitter.
    pub fn next_interval(&self, had_traffic: bool, healthy: bool, t: Transition) -> Duration {
        let c = &self.cfg;
        let base = if !had_traffic {
            if healthy && t != Transition::ChangePending {
                c.no_traffic_healthy_interval
            } else {
                c.no_traffic_interval
            }
        } else if healthy {
            if t == Transition::Changed {
                c.healthy_edge_interval
            } else {
                c.interval
            }
        } else if t == Transition::Changed {
            c.unhealthy_edge_interval
        } else {
            c.unhealthy_interval
        };
        base + self.jitter(base)
    }

    /// Envoy's jitter: up to `interval_jitter`, plus up to `interval_jitter_percent` of the
    /// interval.
    fn jitter(&self, base: Duration) -> Duration {
        let c = &self.cfg;
        let mut d = Duration::ZERO;
        if !c.interval_jitter.is_zero() {
            d += Duration::from_micros(fastrand::u64(..=c.interval_jitter.as_micros() as u64));
        }
        if c.interval_jitter_percent > 0 {
            let max = base.as_micros() as u64 * u64::from(c.interval_jitter_percent) / 100;
            d += Duration::from_micros(fastrand::u64(..=max));
        }
        d
    }

    fn checker_type(&self) -> &'static str {
        match self.cfg.kind {
            HealthCheckKind::Tcp { .. } => "TCP",
            HealthCheckKind::Http { .. } => "HTTP",
            HealthCheckKind::Grpc { .. } => "GRPC",
        }
    }

    /// Writes one of Envoy's `HealthCheckEvent`s to `event_log_path`.
    fn log_event(&self, cluster: &Cluster, host: &Host, key: &str, body: serde_json::Value) {
        let Some(log) = &self.events else { return };
        let mut e = json!({
            "health_checker_type": self.checker_type(),
            "host": {"socket_address": {
                "protocol": "TCP",
                "address": host.address.ip().to_string(),
                "port_value": host.address.port(),
            }},
            "cluster_name": cluster.name(),
            "timestamp": crate::xds::rfc3339(std::time::SystemTime::now()),
        });
        e[key] = body;
        log.write(&e);
    }

    /// Flags a host new to the cluster: not routed until its first check passes.
    pub fn new_host(&self, host: &Host) {
        host.set_flags(
            health_flag::FAILED_ACTIVE_HC | health_flag::PENDING_ACTIVE_HC,
            true,
        );
    }

    /// Runs one check of `host` (bounded by the timeout), on the connection kept from the
    /// last one when `reuse_connection` (Envoy's default) and it is still open. A failed or
    /// timed-out check closes its connection.
    pub async fn check(&self, cluster: &Cluster, host: &Host) -> Result<(), CheckFailure> {
        let reuse = self.cfg.reuse_connection;
        let kept = if reuse {
            host.health
                .kept
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
        } else {
            None
        };
        let timeout = self.cfg.timeout;
        match tokio::time::timeout(timeout, self.check_inner(cluster, host, kept)).await {
            Ok((r, back)) => {
                if r.is_ok() && reuse {
                    *host.health.kept.lock().unwrap_or_else(|p| p.into_inner()) = back;
                }
                r
            }
            Err(_) => Err(CheckFailure::Network(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    async fn connect(
        &self,
        cluster: &Cluster,
        host: &Host,
    ) -> Result<crate::transport::Stream, CheckFailure> {
        // Over the cluster's transport socket (TLS too), as Envoy checks.
        cluster
            .open(host, &[], None)
            .await
            .map_err(|e| CheckFailure::Network(e.to_string()))
    }

    /// An HTTP/1.1 sender: the kept one if still usable, else a new connection.
    async fn h1(
        &self,
        cluster: &Cluster,
        host: &Host,
        kept: Option<Kept>,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, CheckFailure> {
        if let Some(Kept::H1(mut tx)) = kept {
            if tx.ready().await.is_ok() {
                return Ok(tx);
            }
        }
        let s = self.connect(cluster, host).await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .map_err(|e| CheckFailure::Network(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(tx)
    }

    /// An HTTP/2 sender (prior knowledge): the kept one if still usable, else a new one.
    async fn h2(
        &self,
        cluster: &Cluster,
        host: &Host,
        kept: Option<Kept>,
    ) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>, CheckFailure> {
        if let Some(Kept::H2(mut tx)) = kept {
            if tx.ready().await.is_ok() {
                return Ok(tx);
            }
        }
        let s = self.connect(cluster, host).await?;
        let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(s))
            .await
            .map_err(|e| CheckFailure::Network(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(tx)
    }

    async fn check_inner(
        &self,
        cluster: &Cluster,
        host: &Host,
        kept: Option<Kept>,
    ) -> (Result<(), CheckFailure>, Option<Kept>) {
        match &self.cfg.kind {
            HealthCheckKind::Tcp { send, receive } => {
                // Without a payload the check is the connect itself: always a new one.
                let kept = match kept {
                    Some(Kept::Tcp(s)) if send.is_some() => Some(s),
                    _ => None,
                };
                let mut s = match kept {
                    Some(s) => s,
                    None => match self.connect(cluster, host).await {
                        Ok(s) => s,
                        Err(e) => return (Err(e), None),
                    },
                };
                let r = tcp_check(&mut s, send.as_deref(), receive).await;
                (r, send.is_some().then_some(Kept::Tcp(s)))
            }
            HealthCheckKind::Http {
                host: authority,
                path,
                expected,
                headers,
                http2,
            } => {
                let authority = authority.as_deref().unwrap_or(&cluster.config.name);
                let mut b = http::Request::get(format!("http://{authority}{path}"))
                    .header("user-agent", "Envoy/HC");
                if !*http2 {
                    b = b
                        .version(http::Version::HTTP_11)
                        .header(http::header::HOST, authority);
                    if !self.cfg.reuse_connection {
                        b = b.header(http::header::CONNECTION, "close");
                    }
                }
                for (k, v) in headers {
                    b = b.header(k.as_str(), v.as_str());
                }
                let req = match b.body(Full::new(Bytes::new())) {
                    Ok(r) => r,
                    Err(e) => return (Err(CheckFailure::Answer(e.to_string())), None),
                };
                let (answer, back) = if *http2 {
                    match self.h2(cluster, host, kept).await {
                        Ok(mut tx) => (exchange2(&mut tx, req).await, Some(Kept::H2(tx))),
                        Err(e) => (Err(e), None),
                    }
                } else {
                    match self.h1(cluster, host, kept).await {
                        Ok(mut tx) => (exchange1(&mut tx, req).await, Some(Kept::H1(tx))),
                        Err(e) => (Err(e), None),
                    }
                };
                let r = answer.and_then(|(parts, _, _)| {
                    let status = parts.status.as_u16();
                    if expected.iter().any(|(lo, hi)| (*lo..*hi).contains(&status)) {
                        Ok(())
                    } else {
                        Err(CheckFailure::Status(status))
                    }
                });
                (r, back)
            }
            HealthCheckKind::Grpc {
                service_name,
                authority,
                metadata,
            } => {
                let authority = authority.as_deref().unwrap_or(&cluster.config.name);
                let mut b =
                    http::Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
                        .header("content-type", "application/grpc")
                        .header("te", "trailers")
                        .header("user-agent", "Envoy/HC");
                for (k, v) in metadata {
                    b = b.header(k.as_str(), v.as_str());
                }
                let req = match b.body(Full::new(grpc_check_request(service_name))) {
                    Ok(r) => r,
                    Err(e) => return (Err(CheckFailure::Answer(e.to_string())), None),
                };
                let mut tx = match self.h2(cluster, host, kept).await {
                    Ok(tx) => tx,
                    Err(e) => return (Err(e), None),
                };
                let r = exchange2(&mut tx, req).await.and_then(grpc_verdict);
                (r, Some(Kept::H2(tx)))
            }
        }
    }

    /// Applies one check's result to the host: whether the balancer must be rebuilt (its
    /// health flipped, or the check ended an outlier ejection) and the transition.
    pub fn record(
        &self,
        cluster: &Cluster,
        host: &Host,
        result: Result<(), CheckFailure>,
    ) -> (bool, Transition) {
        let s = &self.stats;
        let h = &host.health;
        s.attempt.inc();
        let flags = host.health_flags();
        let failed = flags & health_flag::FAILED_ACTIVE_HC != 0;
        let pending = flags & health_flag::PENDING_ACTIVE_HC != 0;
        match result {
            Ok(()) => {
                s.success.inc();
                let unejected = cluster
                    .outlier
                    .as_ref()
                    .is_some_and(|d| d.health_check_passed(cluster, host));
                h.failures.store(0, Ordering::Relaxed);
                let n = h.successes.fetch_add(1, Ordering::Relaxed) + 1;
                if !failed {
                    return (unejected, Transition::Unchanged);
                }
                // The first check of a new host needs one success (Envoy).
                if pending || n >= self.cfg.healthy_threshold {
                    host.set_flags(
                        health_flag::FAILED_ACTIVE_HC | health_flag::PENDING_ACTIVE_HC,
                        false,
                    );
                    tracing::info!(cluster = cluster.name(), host = %host.address, "health check: host healthy");
                    if cluster.config.common_lb.slow_start.is_some() {
                        // Slow start counts from the check that let it in (Envoy).
                        host.start_slow_start();
                    }
                    self.log_event(
                        cluster,
                        host,
                        "add_healthy_event",
                        json!({"first_check": pending}),
                    );
                    (true, Transition::Changed)
                } else {
                    (unejected, Transition::ChangePending)
                }
            }
            Err(why) => {
                s.failure.inc();
                let network = matches!(why, CheckFailure::Network(_));
                if network {
                    s.network_failure.inc();
                }
                h.successes.store(0, Ordering::Relaxed);
                let n = h.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if pending {
                    host.set_flags(health_flag::PENDING_ACTIVE_HC, false);
                }
                let failure_type = if network { "NETWORK" } else { "ACTIVE" };
                // A failure that does not change the host's health, when asked for.
                let log_failure = || {
                    if self.cfg.always_log_health_check_failures {
                        tracing::warn!(cluster = cluster.name(), host = %host.address, reason = ?why, "health check failed");
                        self.log_event(
                            cluster,
                            host,
                            "health_check_failure_event",
                            json!({"failure_type": failure_type, "first_check": pending}),
                        );
                    }
                };
                if failed {
                    log_failure();
                    // A pending host leaves the excluded set: the balancer counts it now.
                    return (pending, Transition::Unchanged);
                }
                if n >= self.cfg.unhealthy_threshold || matches!(why, CheckFailure::Status(_)) {
                    host.set_flags(health_flag::FAILED_ACTIVE_HC, true);
                    tracing::warn!(cluster = cluster.name(), host = %host.address, reason = ?why, "health check: host unhealthy");
                    self.log_event(
                        cluster,
                        host,
                        "eject_unhealthy_event",
                        json!({"failure_type": failure_type}),
                    );
                    (true, Transition::Changed)
                } else {
                    log_failure();
                    (false, Transition::ChangePending)
                }
            }
        }
    }

    fn publish(&self, cluster: &Cluster) {
        let healthy = cluster
            .hosts()
            .all()
            .iter()
            .filter(|h| h.health_flags() & health_flag::FAILED_ACTIVE_HC == 0)
            .count();
        self.stats.healthy.set(healthy as i64);
    }
}

type Answer = (http::response::Parts, Bytes, Option<http::HeaderMap>);

async fn exchange1(
    tx: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> Result<Answer, CheckFailure> {
    let resp = tx
        .send_request(req)
        .await
        .map_err(|e| CheckFailure::Network(e.to_string()))?;
    read_answer(resp).await
}

async fn exchange2(
    tx: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> Result<Answer, CheckFailure> {
    let resp = tx
        .send_request(req)
        .await
        .map_err(|e| CheckFailure::Network(e.to_string()))?;
    read_answer(resp).await
}

/// The answer's head, body (at most `MAX_ANSWER`: read to its end, so the connection can
/// serve the next check) and trailers.
async fn read_answer(resp: http::Response<hyper::body::Incoming>) -> Result<Answer, CheckFailure> {
    use http_body_util::BodyExt;
    let (parts, mut body) = resp.into_parts();
    let mut data = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame
            .map_err(|e| CheckFailure::Network(e.to_string()))?
            .into_data()
        {
            Ok(d) => {
                if data.len() + d.len() > MAX_ANSWER {
                    return Err(CheckFailure::Answer("the answer is too large".into()));
                }
                data.extend_from_slice(&d);
            }
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    Ok((parts, data.freeze(), trailers))
}

/// A gRPC health answer: HTTP 200, `grpc-status: 0` (trailers, or the headers of a
/// trailers-only answer) and a `HealthCheckResponse` saying SERVING.
fn grpc_verdict((parts, body, trailers): Answer) -> Result<(), CheckFailure> {
    if parts.status != http::StatusCode::OK {
        return Err(CheckFailure::Answer(format!(
            "HTTP status {}",
            parts.status.as_u16()
        )));
    }
    let grpc_status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if grpc_status != "0" {
        return Err(CheckFailure::Answer(format!("grpc-status {grpc_status:?}")));
    }
    match grpc_serving_status(&body) {
        Some(SERVING) => Ok(()),
        Some(n) => Err(CheckFailure::Answer(format!("serving status {n}"))),
        None => Err(CheckFailure::Answer(
            "not a grpc.health.v1.HealthCheckResponse".into(),
        )),
    }
}

/// A TCP check on `s`: writes `send`, then waits for each `receive` block, in order, not
/// necessarily contiguous (Envoy's fuzzy match).
async fn tcp_check(
    s: &mut crate::transport::Stream,
    send: Option<&[u8]>,
    receive: &[Vec<u8>],
) -> Result<(), CheckFailure> {
    if let Some(p) = send {
        s.write_all(p)
            .await
            .map_err(|e| CheckFailure::Network(e.to_string()))?;
    }
    if receive.is_empty() {
        return Ok(());
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if contains_in_order(&got, receive) {
            return Ok(());
        }
        let n = s
            .read(&mut buf)
            .await
            .map_err(|e| CheckFailure::Network(e.to_string()))?;
        if n == 0 || got.len() + n > MAX_ANSWER {
            return Err(CheckFailure::Answer(
                "the expected payload did not arrive".into(),
            ));
        }
        got.extend_from_slice(&buf[..n]);
    }
}

fn contains_in_order(haystack: &[u8], blocks: &[Vec<u8>]) -> bool {
    let mut rest = haystack;
    for b in blocks {
        if b.is_empty() {
            continue;
        }
        match rest.windows(b.len()).position(|w| w == b.as_slice()) {
            Some(i) => rest = &rest[i + b.len()..],
            None => return false,
        }
    }
    true
}

/// The checker task of one cluster: each host's next check in a queue, due an interval after
/// its last check ended. Holds the cluster weakly while it waits; ends when the cluster is
/// removed or replaced, or at shutdown.
pub async fn run(
    cluster: Weak<Cluster>,
    initial_jitter: Duration,
    mut shutdown: crate::drain::Watch,
) {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};
    // The cluster's hosts by address in memory, each with the generation of its schedule:
    // a queued entry or a finished check of another generation (a host that left, or one
    // that reuses a departed host's memory) is dropped. Memory follows the current hosts.
    let mut hosts: HashMap<usize, (Arc<Host>, u64)> = HashMap::new();
    // (due, generation, host key); generations are unique, so entries never tie.
    let mut queue: BinaryHeap<Reverse<(Instant, u64, usize)>> = BinaryHeap::new();
    let mut set_seen = 0usize;
    let mut generation = 0u64;
    let mut checks: tokio::task::JoinSet<(usize, u64, Transition)> = tokio::task::JoinSet::new();
    let mut first = true;
    loop {
        let Some(c) = cluster.upgrade() else { return };
        if c.is_retired() {
            return;
        }
        let Some(checker) = c.health.as_ref() else {
            return;
        };
        let set = c.hosts();
        if Arc::as_ptr(&set) as usize != set_seen {
            set_seen = Arc::as_ptr(&set) as usize;
            let key = |h: &Arc<Host>| Arc::as_ptr(h) as usize;
            let current: std::collections::HashSet<usize> = set.all().iter().map(key).collect();
            hosts.retain(|k, _| current.contains(k));
            // Hosts new to the set get their first check, spread over an interval (the
            // very first batch after `initial_jitter`).
            let fresh: Vec<&Arc<Host>> = set
                .all()
                .iter()
                .filter(|h| !hosts.contains_key(&key(h)))
                .collect();
            let now = Instant::now();
            let n = fresh.len().max(1) as u32;
            let spread = checker.cfg.interval.min(Duration::from_secs(60));
            for (i, h) in fresh.into_iter().enumerate() {
                let mut due = now + spread * i as u32 / n;
                if first && !initial_jitter.is_zero() {
                    due +=
                        Duration::from_micros(fastrand::u64(..=initial_jitter.as_micros() as u64));
                }
                generation += 1;
                hosts.insert(key(h), (h.clone(), generation));
                queue.push(Reverse((due, generation, key(h))));
            }
            first = false;
        }
        // Due checks start now.
        let now = Instant::now();
        while let Some(Reverse((due, g, k))) = queue.peek().copied() {
            if due > now {
                break;
            }
            queue.pop();
            let Some((h, _)) = hosts.get(&k).filter(|(_, hg)| *hg == g) else {
                continue;
            };
            let (h, c) = (h.clone(), c.clone());
            checks.spawn(async move {
                let Some(checker) = c.health.as_ref() else {
                    return (k, g, Transition::Unchanged);
                };
                let r = checker.check(&c, &h).await;
                let (rebuild, t) = checker.record(&c, &h, r);
                let flags = h.health_flags();
                if flags & health_flag::PENDING_DYNAMIC_REMOVAL != 0
                    && flags & health_flag::FAILED_ACTIVE_HC != 0
                {
                    // Discovery dropped it and now it fails: it goes.
                    c.remove_pending_host(&h);
                } else if rebuild {
                    // Rebuilt at once: an unhealthy host gets no more picks.
                    c.hosts_health_changed();
                }
                if t == Transition::Changed
                    && flags & health_flag::FAILED_ACTIVE_HC != 0
                    && c.config.close_connections_on_host_health_failure
                {
                    h.close_connections();
                }
                checker.publish(&c);
                (k, g, t)
            });
        }
        // Bounded by the hosts: one entry per host, stale ones dropped as they come due.
        if queue.len() > 2 * hosts.len() + 64 {
            queue.retain(|Reverse((_, g, k))| hosts.get(k).is_some_and(|(_, hg)| hg == g));
        }
        let next = queue.peek().map(|Reverse((due, _, _))| *due);
        drop((set, c));
        // Wait for the next due check, a check to end, or (at most a second) for the
        // cluster's hosts to change.
        let limit = Instant::now() + Duration::from_secs(1);
        let wake = next.map_or(limit, |n| n.min(limit));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            Some(done) = checks.join_next(), if !checks.is_empty() => {
                let Ok((k, g, t)) = done else { continue };
                let Some((h, _)) = hosts.get(&k).filter(|(_, hg)| *hg == g) else { continue };
                let Some(c) = cluster.upgrade() else { return };
                let Some(checker) = c.health.as_ref() else { return };
                let healthy = h.health_flags() & health_flag::FAILED_ACTIVE_HC == 0;
                let had_traffic = c.stats.upstream_cx_total.value() > 0;
                let due = Instant::now() + checker.next_interval(had_traffic, healthy, t);
                queue.push(Reverse((due, g, k)));
            }
            _ = shutdown.draining() => return,
        }
    }
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
