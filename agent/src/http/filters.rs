//! HTTP filters before the router, built once per connection manager: each sees a request's
//! head and lets it go on (possibly adding response headers), delays it, or answers it.
//! One small trait; the connection manager runs the chain in order and the router last.

use super::exchange::Flag;
use crate::config::http::filters::{
    Fault, FaultAbort, FaultDelay, HttpFilterConfig, HttpLocalRateLimit,
};
use crate::filters::local_ratelimit::TokenBucket;
use crate::stats::{Counter, Gauge, Store};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a filter decided about a request.
#[derive(Debug)]
pub enum Verdict {
    /// Go on; add these headers to the response.
    Continue(Vec<(HeaderName, HeaderValue)>),
    /// Go on, with these values in the request's filter state.
    State(Vec<(Arc<str>, String)>),
    /// Hold the request this long, then go on (a fault's delay; the guard counts it active).
    Delay(Duration, Option<ActiveFault>),
    /// Answer now.
    Reply(LocalReply),
}

#[derive(Debug)]
pub struct LocalReply {
    pub status: u16,
    pub text: &'static str,
    /// For gRPC requests: this status instead of the one the HTTP status maps to.
    pub grpc_status: Option<u32>,
    pub flag: Flag,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// What a filter sees of a request.
pub struct RequestHead<'a> {
    pub headers: &'a HeaderMap,
    pub method: &'a str,
    /// The path with its query (`:path`).
    pub path: &'a str,
    pub grpc: bool,
    /// The server (or this connection's listener) is draining.
    pub draining: bool,
    pub peer: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
    /// Where the client connected (its original destination when redirected).
    pub destination: std::net::SocketAddr,
    /// `HTTP/1.1`, `HTTP/2`, …
    pub protocol: &'a str,
    /// The connection's TLS, when its chain terminated it.
    pub tls: Option<&'a crate::tls::TlsInfo>,
    /// `:authority` (or Host); empty when the request has none.
    pub authority: &'a str,
    /// The SNI the client asked for.
    pub server_name: Option<&'a str>,
}

/// One HTTP filter.
pub trait HttpFilter: Send + Sync + std::fmt::Debug {
    /// Sees the request's head before routing.
    fn on_request(&self, req: &RequestHead) -> Verdict;

    /// The same, under a route's own RBAC policies (`RBACPerRoute`); only the RBAC filter
    /// uses them.
    fn on_request_with_rbac(&self, req: &RequestHead, _rules: &crate::rbac::Rules) -> Verdict {
        self.on_request(req)
    }
}

/// `envoy.filters.http.rbac`: a denied request is answered 403 with flag RBAC.
#[derive(Debug)]
pub struct RbacFilter(crate::rbac::Rbac);

impl RbacFilter {
    fn subject<'a>(req: &'a RequestHead) -> crate::rbac::Subject<'a> {
        crate::rbac::Subject {
            peer: req.peer,
            remote: req.peer,
            destination: req.destination,
            server_name: req.server_name,
            tls: req.tls,
            headers: Some(req.headers),
            path: Some(req.path.split_once('?').map_or(req.path, |(p, _)| p)),
            pseudo: Some(super::route::Pseudo {
                scheme: if req.tls.is_some() { "https" } else { "http" },
                method: req.method,
                path: req.path,
                authority: req.authority,
            }),
        }
    }

    fn verdict(allowed: bool) -> Verdict {
        if allowed {
            return Verdict::Continue(Vec::new());
        }
        Verdict::Reply(LocalReply {
            status: 403,
            text: "RBAC: access denied",
            grpc_status: None,
            flag: Flag::Rbac,
            headers: Vec::new(),
        })
    }
}

impl HttpFilter for RbacFilter {
    fn on_request(&self, req: &RequestHead) -> Verdict {
        Self::verdict(self.0.check(&Self::subject(req)))
    }

    fn on_request_with_rbac(&self, req: &RequestHead, rules: &crate::rbac::Rules) -> Verdict {
        Self::verdict(self.0.check_with(rules, &Self::subject(req)))
    }
}

/// `envoy.filters.http.set_filter_state`: each value's format expanded for the request.
#[derive(Debug)]
struct SetFilterStateFilter(crate::config::http::filters::SetFilterState);

impl HttpFilter for SetFilterStateFilter {
    fn on_request(&self, req: &RequestHead) -> Verdict {
        let cx = super::headers::FormatContext {
            downstream_remote: req.peer,
            downstream_local: req.local,
            protocol: req.protocol,
            upstream_remote: None,
            request_headers: Some(req.headers),
            start: std::time::SystemTime::now(),
        };
        let mut out = Vec::with_capacity(self.0.values.len());
        for v in &self.0.values {
            let mut s = String::new();
            super::headers::expand_format(&v.format, &cx, req.headers, &mut s);
            if s.is_empty() && v.skip_if_empty {
                continue;
            }
            out.push((v.key.clone(), s));
        }
        Verdict::State(out)
    }
}

/// Builds the filters of a connection manager.
pub fn build(
    configs: &[(String, HttpFilterConfig)],
    store: &Store,
    prefix: &str,
    health_check_failed: &Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(String, Box<dyn HttpFilter>)> {
    configs
        .iter()
        .map(|(name, c)| -> (String, Box<dyn HttpFilter>) {
            let f: Box<dyn HttpFilter> = match c {
                HttpFilterConfig::SetFilterState(s) => Box::new(SetFilterStateFilter(s.clone())),
                HttpFilterConfig::LocalRateLimit(rl) => Box::new(LocalRateLimit::new(rl, store)),
                HttpFilterConfig::Fault(f) => Box::new(FaultFilter::new(f, store, prefix)),
                HttpFilterConfig::Rbac(r) => Box::new(RbacFilter(crate::rbac::Rbac::new(
                    r,
                    &store.tagged_scope("http", "envoy_http_conn_manager_prefix", prefix),
                ))),
                HttpFilterConfig::HealthCheck(h) => Box::new(HealthCheckFilter {
                    headers: h.headers.clone(),
                    failed: health_check_failed.clone(),
                }),
            };
            (name.clone(), f)
        })
        .collect()
}

fn sampled(ppm: u32) -> bool {
    ppm >= 1_000_000 || (ppm > 0 && fastrand::u32(..1_000_000) < ppm)
}

/// `envoy.filters.http.local_ratelimit`: a token bucket for the connection manager's
/// requests; over it, 429 (or the configured status) with flag RL.
#[derive(Debug)]
pub struct LocalRateLimit {
    cfg: HttpLocalRateLimit,
    bucket: Option<TokenBucket>,
    enabled: Arc<Counter>,
    enforced: Arc<Counter>,
    rate_limited: Arc<Counter>,
    ok: Arc<Counter>,
}

impl LocalRateLimit {
    pub fn new(cfg: &HttpLocalRateLimit, store: &Store) -> Self {
        let s = store.root_scope(&format!("{}.http_local_rate_limit", cfg.stat_prefix));
        Self {
            bucket: cfg.bucket.map(|(m, p, i)| TokenBucket::new(m, p, i)),
            enabled: s.counter("enabled"),
            enforced: s.counter("enforced"),
            rate_limited: s.counter("rate_limited"),
            ok: s.counter("ok"),
            cfg: cfg.clone(),
        }
    }

    fn x_headers(&self, bucket: &TokenBucket) -> Vec<(HeaderName, HeaderValue)> {
        if !self.cfg.x_ratelimit_headers {
            return Vec::new();
        }
        vec![
            (
                HeaderName::from_static("x-ratelimit-limit"),
                HeaderValue::from(bucket.max_tokens()),
            ),
            (
                HeaderName::from_static("x-ratelimit-remaining"),
                HeaderValue::from(bucket.remaining()),
            ),
            (
                HeaderName::from_static("x-ratelimit-reset"),
                HeaderValue::from(bucket.until_refill().as_secs_f64().ceil() as u64),
            ),
        ]
    }
}

impl HttpFilter for LocalRateLimit {
    fn on_request(&self, _req: &RequestHead) -> Verdict {
        let Some(bucket) = &self.bucket else {
            return Verdict::Continue(Vec::new());
        };
        if !sampled(self.cfg.enabled) {
            return Verdict::Continue(Vec::new());
        }
        self.enabled.inc();
        if bucket.try_take() {
            self.ok.inc();
            return Verdict::Continue(self.x_headers(bucket));
        }
        self.rate_limited.inc();
        if !sampled(self.cfg.enforced) {
            return Verdict::Continue(self.x_headers(bucket));
        }
        self.enforced.inc();
        let mut headers = self.x_headers(bucket);
        for h in &self.cfg.response_headers {
            let value: String = h
                .value
                .parts
                .iter()
                .filter_map(|p| match p {
                    crate::config::http::FormatPart::Literal(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect();
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.push((n, v));
            }
        }
        Verdict::Reply(LocalReply {
            status: self.cfg.status,
            text: "local_rate_limited",
            grpc_status: None,
            flag: Flag::RateLimited,
            headers,
        })
    }
}

/// A fault being injected; the filter's active count drops when it goes.
#[derive(Debug)]
pub struct ActiveFault(Arc<AtomicU32>, Arc<Gauge>);

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.dec();
    }
}

/// `envoy.filters.http.fault`: delays and aborts for a share of the requests (or as the
/// request's `x-envoy-fault-*` headers ask, when configured so).
#[derive(Debug)]
pub struct FaultFilter {
    cfg: Fault,
    active: Arc<AtomicU32>,
    active_faults: Arc<Gauge>,
    delays_injected: Arc<Counter>,
    aborts_injected: Arc<Counter>,
    faults_overflow: Arc<Counter>,
}

impl FaultFilter {
    pub fn new(cfg: &Fault, store: &Store, prefix: &str) -> Self {
        let s = store.tagged_scope(
            "http",
            "envoy_http_conn_manager_prefix",
            &format!("{prefix}.fault"),
        );
        Self {
            cfg: cfg.clone(),
            active: Default::default(),
            active_faults: s.gauge("active_faults"),
            delays_injected: s.counter("delays_injected"),
            aborts_injected: s.counter("aborts_injected"),
            faults_overflow: s.counter("faults_overflow"),
        }
    }

    fn number(h: &HeaderMap, name: &str) -> Option<u64> {
        h.get(name)?.to_str().ok()?.trim().parse().ok()
    }

    fn begin(&self) -> Option<ActiveFault> {
        let n = self.active.fetch_add(1, Ordering::Relaxed);
        if self.cfg.max_active_faults.is_some_and(|m| n >= m) {
            self.active.fetch_sub(1, Ordering::Relaxed);
            self.faults_overflow.inc();
            return None;
        }
        self.active_faults.inc();
        Some(ActiveFault(self.active.clone(), self.active_faults.clone()))
    }
}

impl HttpFilter for FaultFilter {
    fn on_request(&self, req: &RequestHead) -> Verdict {
        let (headers, grpc) = (req.headers, req.grpc);
        if !self
            .cfg
            .headers
            .iter()
            .all(|m| super::route::header_matches(m, headers))
        {
            return Verdict::Continue(Vec::new());
        }
        if let Some((kind, ppm)) = &self.cfg.abort {
            let abort = match kind {
                FaultAbort::Http(s) => Some((*s, None)),
                FaultAbort::Grpc(g) => Some((200, Some(*g))),
                FaultAbort::Header => match (
                    Self::number(headers, "x-envoy-fault-abort-request"),
                    Self::number(headers, "x-envoy-fault-abort-grpc-request"),
                ) {
                    (Some(s), _) if (200..600).contains(&s) => Some((s as u16, None)),
                    (_, Some(g)) if grpc && g <= 16 => Some((200, Some(g as u32))),
                    _ => None,
                },
            };
            if let Some((status, grpc_status)) = abort.filter(|_| sampled(*ppm)) {
                if let Some(_active) = self.begin() {
                    self.aborts_injected.inc();
                    return Verdict::Reply(LocalReply {
                        status,
                        text: "fault filter abort",
                        grpc_status,
                        flag: Flag::FaultInjected,
                        headers: Vec::new(),
                    });
                }
            }
        }
        if let Some((kind, ppm)) = &self.cfg.delay {
            let delay = match kind {
                FaultDelay::Fixed(t) => Some(*t),
                FaultDelay::Header => {
                    Self::number(headers, "x-envoy-fault-delay-request").map(Duration::from_millis)
                }
            };
            if let Some(t) = delay.filter(|t| !t.is_zero() && sampled(*ppm)) {
                if let Some(active) = self.begin() {
                    self.delays_injected.inc();
                    return Verdict::Delay(t, Some(active));
                }
            }
        }
        Verdict::Continue(Vec::new())
    }
}

/// `envoy.filters.http.health_check`: answers the matching requests itself.
#[derive(Debug)]
pub struct HealthCheckFilter {
    headers: Vec<crate::config::http::HeaderMatcher>,
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl HttpFilter for HealthCheckFilter {
    fn on_request(&self, req: &RequestHead) -> Verdict {
        let pseudo = super::route::Pseudo {
            scheme: if req.tls.is_some() { "https" } else { "http" },
            method: req.method,
            path: req.path,
            authority: req.authority,
        };
        let matches = self
            .headers
            .iter()
            .all(|m| super::route::header_matches_with(m, req.headers, Some(pseudo)));
        if !matches {
            return Verdict::Continue(Vec::new());
        }
        let healthy = !req.draining && !self.failed.load(Ordering::Relaxed);
        Verdict::Reply(LocalReply {
            status: if healthy { 200 } else { 503 },
            text: "",
            grpc_status: None,
            flag: Flag::HealthCheck,
            headers: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    //! Each filter against a fake next stage: the chain's verdicts as the connection manager
    //! would act on them.
    use super::*;

    /// A GET of `/` from 10.0.0.1:4000 to 10.0.0.2:80 over HTTP/1.1.
    fn head(headers: &HeaderMap, grpc: bool) -> RequestHead<'_> {
        RequestHead {
            headers,
            method: "GET",
            path: "/",
            grpc,
            draining: false,
            peer: "10.0.0.1:4000".parse().unwrap(),
            local: "10.0.0.2:80".parse().unwrap(),
            destination: "10.0.0.2:80".parse().unwrap(),
            protocol: "HTTP/1.1",
            tls: None,
            authority: "",
            server_name: None,
        }
    }

    /// The fake next stage: runs the chain like the connection manager and reports what
    /// reached the "router" (`Ok(extra response headers)`) or the reply/delay instead.
    fn run(
        chain: &[(String, Box<dyn HttpFilter>)],
        headers: &HeaderMap,
        grpc: bool,
    ) -> Result<usize, String> {
        let mut extra = 0;
        let head = head(headers, grpc);
        for (_, f) in chain {
            match f.on_request(&head) {
                Verdict::Continue(h) => extra += h.len(),
                Verdict::State(v) => extra += v.len(),
                Verdict::Delay(t, _) => return Err(format!("delay {}ms", t.as_millis())),
                Verdict::Reply(r) => {
                    return Err(format!(
                        "{} {} {}",
                        r.status,
                        r.flag.short(),
                        r.grpc_status.unwrap_or(99)
                    ))
                }
            }
        }
        Ok(extra)
    }

    #[tokio::test(start_paused = true)]
    async fn local_rate_limit_enforces_its_bucket_with_headers() {
        let store = Store::new();
        let cfg = HttpLocalRateLimit {
            stat_prefix: "rl".into(),
            bucket: Some((2, 1, Duration::from_secs(1))),
            enabled: 1_000_000,
            enforced: 1_000_000,
            status: 429,
            response_headers: Vec::new(),
            x_ratelimit_headers: true,
        };
        let chain = build(
            &[("rl".into(), HttpFilterConfig::LocalRateLimit(cfg.clone()))],
            &store,
            "in",
            &Default::default(),
        );
        let h = HeaderMap::new();
        assert_eq!(run(&chain, &h, false), Ok(3));
        assert_eq!(run(&chain, &h, false), Ok(3));
        assert_eq!(run(&chain, &h, false), Err("429 RL 99".into()));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(run(&chain, &h, false), Ok(3));
        assert_eq!(
            store.value("rl.http_local_rate_limit.rate_limited"),
            Some(1)
        );
        assert_eq!(store.value("rl.http_local_rate_limit.ok"), Some(3));
        // Enabled but not enforced: counted, not refused.
        let shadow = build(
            &[(
                "rl".into(),
                HttpFilterConfig::LocalRateLimit(HttpLocalRateLimit {
                    enforced: 0,
                    x_ratelimit_headers: false,
                    ..cfg
                }),
            )],
            &Store::new(),
            "in",
            &Default::default(),
        );
        for _ in 0..5 {
            assert_eq!(run(&shadow, &h, false), Ok(0));
        }
    }

    #[test]
    fn faults_abort_and_delay_as_configured_or_asked() {
        let store = Store::new();
        let always = |kind| {
            HttpFilterConfig::Fault(Fault {
                delay: None,
                abort: Some((kind, 1_000_000)),
                headers: Vec::new(),
                max_active_faults: None,
            })
        };
        let h = HeaderMap::new();
        assert_eq!(
            run(
                &build(
                    &[("f".into(), always(FaultAbort::Http(503)))],
                    &store,
                    "a",
                    &Default::default()
                ),
                &h,
                false
            ),
            Err("503 FI 99".into())
        );
        assert_eq!(
            run(
                &build(
                    &[("f".into(), always(FaultAbort::Grpc(14)))],
                    &store,
                    "b",
                    &Default::default()
                ),
                &h,
                true
            ),
            Err("200 FI 14".into())
        );
        let by_header = build(
            &[("f".into(), always(FaultAbort::Header))],
            &store,
            "c",
            &Default::default(),
        );
        assert_eq!(run(&by_header, &h, false), Ok(0), "no header, no fault");
        let mut asked = HeaderMap::new();
        asked.insert("x-envoy-fault-abort-request", "418".parse().unwrap());
        assert_eq!(run(&by_header, &asked, false), Err("418 FI 99".into()));
        let delay = build(
            &[(
                "fault".into(),
                HttpFilterConfig::Fault(Fault {
                    delay: Some((FaultDelay::Fixed(Duration::from_millis(250)), 1_000_000)),
                    abort: None,
                    headers: Vec::new(),
                    max_active_faults: Some(1),
                }),
            )],
            &store,
            "d",
            &Default::default(),
        );
        let first = delay[0].1.on_request(&head(&h, false));
        assert!(matches!(first, Verdict::Delay(t, Some(_)) if t == Duration::from_millis(250)));
        // The first delay is still active: the limit of one leaves the next untouched.
        assert_eq!(run(&delay, &h, false), Ok(0));
        assert_eq!(store.value("http.d.fault.faults_overflow"), Some(1));
        drop(first);
        assert!(run(&delay, &h, false).is_err());
        assert_eq!(store.value("http.d.fault.delays_injected"), Some(2));
        assert_eq!(store.value("http.a.fault.aborts_injected"), Some(1));
    }

    #[test]
    fn set_filter_state_expands_its_formats_for_the_request() {
        use crate::config::http::filters::{FilterStateValue, SetFilterState};
        use crate::config::http::{FormatPart, HeaderFormat};
        let v = |key: &str, parts: Vec<FormatPart>, skip: bool| FilterStateValue {
            key: key.into(),
            format: HeaderFormat { parts },
            skip_if_empty: skip,
        };
        let f = SetFilterStateFilter(SetFilterState {
            values: vec![
                v(
                    "user",
                    vec![
                        FormatPart::Literal("u-".into()),
                        FormatPart::RequestHeader("x-user".into()),
                    ],
                    false,
                ),
                v(
                    "peer",
                    vec![FormatPart::DownstreamRemoteAddressWithoutPort],
                    false,
                ),
                v(
                    "none",
                    vec![FormatPart::RequestHeader("x-none".into())],
                    true,
                ),
            ],
        });
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("alice"));
        let head = head(&h, false);
        let Verdict::State(state) = f.on_request(&head) else {
            panic!("a state verdict expected");
        };
        let state: Vec<(&str, &str)> = state.iter().map(|(k, v)| (&**k, v.as_str())).collect();
        assert_eq!(state, vec![("user", "u-alice"), ("peer", "10.0.0.1")]);
    }
}
