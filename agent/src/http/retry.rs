//! Retry decisions for the router: the policy in force for one request (the route's,
//! adjusted by `x-envoy-*` request headers from internal clients), which outcomes are
//! retriable under it, and the jittered back-off between attempts.

use super::exchange::Failure;
use super::route::header_matches;
use crate::config::http::{parse_retry_on, retry_on, RetryPolicy};
use http::{HeaderMap, Response};
use std::net::IpAddr;
use std::time::Duration;

/// `x-envoy-*` request headers the router reads and never forwards.
const CONTROL_HEADERS: [&str; 5] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
];

/// A client Plumb trusts with `x-envoy-*` request headers: loopback or a private address
/// (Envoy's notion of an internal request).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(a) => a.is_loopback() || a.is_private() || a.is_link_local(),
        IpAddr::V6(a) => {
            a.is_loopback()
                || (a.segments()[0] & 0xfe00) == 0xfc00
                || (a.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// What the request's headers change about retries and timeouts.
#[derive(Debug, Default)]
pub struct HeaderOverrides {
    pub timeout: Option<Option<Duration>>,
    pub per_try_timeout: Option<Duration>,
}

fn millis(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The retry policy for one request, and timeout overrides; removes the control headers.
pub fn effective(
    route: Option<&RetryPolicy>,
    h: &mut HeaderMap,
    internal: bool,
) -> (Option<RetryPolicy>, HeaderOverrides) {
    let mut policy = route.cloned();
    let mut o = HeaderOverrides::default();
    // Most requests carry no x-envoy-* header: one scan of the names, no hashing.
    let any_control = h.keys().any(|k| k.as_str().starts_with("x-envoy-"));
    if internal && any_control {
        let mut bits = 0;
        for name in ["x-envoy-retry-on", "x-envoy-retry-grpc-on"] {
            if let Some(v) = h.get(name).and_then(|v| v.to_str().ok()) {
                // Unknown conditions in a header are ignored, as in Envoy.
                for part in v.split(',') {
                    bits |= parse_retry_on(part).unwrap_or(0);
                }
            }
        }
        if bits != 0 {
            policy.get_or_insert_with(RetryPolicy::default).retry_on |= bits;
        }
        if let (Some(n), Some(p)) = (millis(h, "x-envoy-max-retries"), policy.as_mut()) {
            p.num_retries = n.min(100) as u32;
        }
        if let Some(ms) = millis(h, "x-envoy-upstream-rq-timeout-ms") {
            o.timeout = Some((ms > 0).then(|| Duration::from_millis(ms)));
        }
        if let Some(ms) = millis(h, "x-envoy-upstream-rq-per-try-timeout-ms") {
            o.per_try_timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
    }
    if any_control {
        for name in CONTROL_HEADERS {
            h.remove(name);
        }
    }
    if let Some(p) = &policy {
        if !p.retriable_request_headers.is_empty()
            && !p
                .retriable_request_headers
                .iter()
                .any(|m| header_matches(m, h))
        {
            policy = None;
        }
    }
    (policy.filter(|p| p.num_retries > 0 && p.retry_on != 0), o)
}

/// The gRPC status of a trailers-only response.
fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get(super::headers::names::GRPC_STATUS)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The status outlier detection counts for a response: its HTTP status, or for a gRPC call
/// answered trailers-only the `grpc-status` mapped to HTTP as Envoy maps it (UNAVAILABLE is
/// 503), so a replica failing every call with UNAVAILABLE is ejected like one answering 503.
pub fn outlier_status<B>(resp: &Response<B>, grpc: bool) -> u16 {
    match grpc_status(resp.headers()).filter(|_| grpc) {
        Some(code) => grpc_to_http(code),
        None => resp.status().as_u16(),
    }
}

/// gRPC status → HTTP status (Envoy's `Grpc::Utility::grpcToHttpStatus`).
pub fn grpc_to_http(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// Whether `resp` is one `p` retries.
pub fn retriable_response<B>(p: &RetryPolicy, resp: &Response<B>) -> bool {
    let status = resp.status().as_u16();
    let on = p.retry_on;
    if on & retry_on::FIVE_XX != 0 && status >= 500 {
        return true;
    }
    if on & retry_on::GATEWAY_ERROR != 0 && matches!(status, 502..=504) {
        return true;
    }
    if on & retry_on::RETRIABLE_4XX != 0 && status == 409 {
        return true;
    }
    if on & retry_on::RETRIABLE_STATUS_CODES != 0 && p.retriable_status_codes.contains(&status) {
        return true;
    }
    if on & retry_on::RETRIABLE_HEADERS != 0
        && p.retriable_headers
            .iter()
            .any(|m| header_matches(m, resp.headers()))
    {
        return true;
    }
    let grpc = match grpc_status(resp.headers()) {
        Some(1) => retry_on::GRPC_CANCELLED,
        Some(4) => retry_on::GRPC_DEADLINE_EXCEEDED,
        Some(8) => retry_on::GRPC_RESOURCE_EXHAUSTED,
        Some(13) => retry_on::GRPC_INTERNAL,
        Some(14) => retry_on::GRPC_UNAVAILABLE,
        _ => 0,
    };
    on & grpc != 0
}

/// Whether an attempt that produced no response is one `p` retries.
pub fn retriable_failure(p: &RetryPolicy, f: &Failure) -> bool {
    let on = p.retry_on;
    let broad = retry_on::FIVE_XX | retry_on::GATEWAY_ERROR | retry_on::RESET;
    match f {
        Failure::Connect(_) => {
            on & (broad | retry_on::CONNECT_FAILURE | retry_on::RESET_BEFORE_REQUEST) != 0
        }
        Failure::Reset(_) | Failure::PerTryTimeout => on & broad != 0,
        Failure::NoHealthy | Failure::Timeout | Failure::Overflow | Failure::Downstream(_) => false,
    }
}

/// The wait before retry `n` (1-based): a random time up to `base × 2^(n-1)`, at most
/// `max` (full jitter, as Envoy).
pub fn back_off(p: &RetryPolicy, n: u32) -> Duration {
    let ceiling = p
        .base_interval
        .saturating_mul(1u32 << (n.saturating_sub(1)).min(20))
        .min(p.max_interval);
    let ms = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(fastrand::u64(..ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &str) -> RetryPolicy {
        RetryPolicy {
            retry_on: parse_retry_on(on).unwrap(),
            ..RetryPolicy::default()
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            r.headers_mut().insert(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        r
    }

    #[test]
    fn outlier_detection_sees_trailers_only_grpc_failures_as_http() {
        let unavailable = resp(200, &[("grpc-status", "14")]);
        assert_eq!(outlier_status(&unavailable, true), 503);
        // Not a gRPC call: the header means nothing.
        assert_eq!(outlier_status(&unavailable, false), 200);
        assert_eq!(
            outlier_status(&resp(200, &[("grpc-status", "0")]), true),
            200
        );
        assert_eq!(outlier_status(&resp(200, &[]), true), 200);
        assert_eq!(outlier_status(&resp(502, &[]), true), 502);
        assert_eq!(grpc_to_http(4), 504);
        assert_eq!(grpc_to_http(99), 500);
    }

    #[test]
    fn retry_on_conditions_classify_outcomes() {
        let p = policy("5xx");
        assert!(retriable_response(&p, &resp(500, &[])));
        assert!(!retriable_response(&p, &resp(404, &[])));
        assert!(retriable_failure(&p, &Failure::Connect("x".into())));
        assert!(retriable_failure(&p, &Failure::PerTryTimeout));
        assert!(!retriable_failure(&p, &Failure::Timeout));
        // The request body's failure is the client's: never retried.
        let gone = super::super::h1client::BodyFailure::Failed("client gone".into());
        assert!(!retriable_failure(&p, &Failure::Downstream(gone)));
        let g = policy("gateway-error");
        assert!(
            retriable_response(&g, &resp(503, &[])) && !retriable_response(&g, &resp(500, &[]))
        );
        let c = policy("connect-failure");
        assert!(retriable_failure(&c, &Failure::Connect("x".into())));
        assert!(!retriable_failure(&c, &Failure::Reset("x".into())));
        assert!(retriable_response(
            &policy("retriable-4xx"),
            &resp(409, &[])
        ));
        let mut codes = policy("retriable-status-codes");
        codes.retriable_status_codes = vec![418];
        assert!(retriable_response(&codes, &resp(418, &[])));
        let grpc = policy("unavailable,cancelled");
        assert!(retriable_response(
            &grpc,
            &resp(200, &[("grpc-status", "14")])
        ));
        assert!(!retriable_response(
            &grpc,
            &resp(200, &[("grpc-status", "13")])
        ));
        assert!(parse_retry_on("5xx,bogus").is_err());
        assert!(parse_retry_on("envoy-ratelimited")
            .unwrap_err()
            .contains("not supported"));
    }

    #[test]
    fn headers_from_internal_clients_adjust_the_policy_and_never_go_upstream() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-envoy-retry-on",
            "connect-failure,nonsense".parse().unwrap(),
        );
        h.insert("x-envoy-max-retries", "3".parse().unwrap());
        h.insert("x-envoy-upstream-rq-timeout-ms", "0".parse().unwrap());
        h.insert(
            "x-envoy-upstream-rq-per-try-timeout-ms",
            "250".parse().unwrap(),
        );
        let (p, o) = effective(None, &mut h.clone(), true);
        let p = p.unwrap();
        assert_eq!((p.retry_on, p.num_retries), (retry_on::CONNECT_FAILURE, 3));
        assert_eq!(o.timeout, Some(None));
        assert_eq!(o.per_try_timeout, Some(Duration::from_millis(250)));
        // From outside: ignored, and removed all the same.
        let (p, o) = effective(None, &mut h, false);
        assert!(p.is_none() && o.timeout.is_none());
        assert!(h.is_empty(), "{h:?}");
        assert!(is_internal("10.1.2.3".parse().unwrap()) && is_internal("::1".parse().unwrap()));
        assert!(!is_internal("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn back_off_is_jittered_and_capped() {
        let p = RetryPolicy::default();
        for n in 1..10 {
            let ceiling = (25u64 << (n - 1)).min(250);
            for _ in 0..50 {
                assert!(back_off(&p, n) < Duration::from_millis(ceiling));
            }
        }
    }
}
