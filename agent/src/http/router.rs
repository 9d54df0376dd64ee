//! The router: one request from the connection manager's checks through route match and the
//! HTTP filters to the route's action — a direct response, a redirect, or forwarding
//! (`forward.rs`); local replies carry Envoy's texts and response flags (`exchange.rs`).

use super::body::Body;
use super::exchange::{local_reply, Exchange, Flag, LogInfo, Received};
use super::filters::Verdict;
use super::forward::Routed;
use super::headers::{self, names, FormatContext};
use super::rewrite::redirect;
use super::route::{is_grpc, RequestView};
use super::{ConnInfo, ConnectionManager};
use crate::config::http::{Action, UnderscoresAction};
use http::header::{HeaderValue, HOST};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

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
        if let Err((status, why)) = self.check_request(&mut parts.headers) {
            return self.reply(
                exchange,
                status,
                why,
                Flag::DownstreamProtocolError,
                None,
                grpc,
            );
        }
        // A WebSocket upgrade: tunnelled when upgrade_configs allows it, else refused (403).
        let upgrade = parts.version == Version::HTTP_11 && websocket_requested(&parts.headers);
        if upgrade && !self.config.websocket {
            s.downstream_rq_ws_on_non_ws_route.inc();
            return self.reply(
                exchange,
                StatusCode::FORBIDDEN,
                "upgrade failed",
                Flag::DownstreamProtocolError,
                None,
                grpc,
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
                    return self.reply(exchange, status, r.text, r.flag, r.grpc_status, grpc);
                }
            }
        }
        let Some(authority) = authority else {
            return self.reply(
                exchange,
                StatusCode::BAD_REQUEST,
                "missing host header",
                Flag::DownstreamProtocolError,
                None,
                grpc,
            );
        };
        let (Some(routes), Some((vh, route, _))) = (&routes, matched) else {
            s.no_route.inc();
            return self.reply(
                exchange,
                StatusCode::NOT_FOUND,
                "",
                Flag::NoRoute,
                None,
                grpc,
            );
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
        self.forward(Routed {
            conn,
            parts,
            body,
            exchange,
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
        })
        .await
    }

    /// A local reply (logged at debug, flagged for access logs), with the connection
    /// manager's response headers.
    pub(super) fn reply(
        &self,
        mut ex: Exchange,
        status: StatusCode,
        text: &str,
        flag: Flag,
        grpc_status: Option<u32>,
        grpc: bool,
    ) -> Response<Body> {
        tracing::debug!(target: "http", peer = %ex.conn.peer, status = status.as_u16(), flag = flag.short(), "local reply: {text}");
        ex.flag = Some(flag);
        if let Some(l) = ex.log.as_mut() {
            l.details = flag.details();
        }
        self.finish(local_reply(status, text, grpc, grpc_status), ex, None)
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
