//! The admin HTTP server (Envoy's admin API, same paths and formats), on its own thread and
//! runtime so it answers even when the data path is saturated. Endpoints that change server
//! state require POST, as in Envoy.

use crate::state::{Shared, ShutdownKind};
use crate::stats::{self, StatsFilter};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;

mod clusters;
use clusters::clusters;

type Body = Full<Bytes>;

/// (path, mutates server state, help)
const ENDPOINTS: &[(&str, bool, &str)] = &[
    ("/", false, "this list"),
    (
        "/clusters",
        false,
        "upstream clusters and per-host status (?format=json)",
    ),
    (
        "/certs",
        false,
        "the certificates of every TLS context (serial, SANs, validity)",
    ),
    ("/config_dump", false, "the active configuration as JSON"),
    (
        "/drain_listeners",
        true,
        "stop accepting on all listeners; connections continue",
    ),
    (
        "/healthcheck/fail",
        true,
        "report the server as failing (/ready answers 503)",
    ),
    ("/healthcheck/ok", true, "undo /healthcheck/fail"),
    (
        "/listeners",
        false,
        "listeners and their bound addresses (?format=json)",
    ),
    (
        "/logging",
        false,
        "list log levels; POST ?level=L or ?<logger>=L or ?paths=a:L,b:L to change",
    ),
    ("/memory", false, "memory usage as JSON"),
    ("/quitquitquit", true, "exit now, without draining"),
    ("/ready", false, "200 LIVE when serving, 503 otherwise"),
    (
        "/server_info",
        false,
        "version, state, uptime, command line, node",
    ),
    (
        "/stats",
        false,
        "all stats (?filter=REGEX, ?usedonly, ?format=json|prometheus)",
    ),
    (
        "/stats/prometheus",
        false,
        "stats in Prometheus exposition format",
    ),
];

/// Serves admin requests on `socket` until `stop` turns true.
/// Serves the admin API on `socket` until `stop`; while `paused` (a successor agent is
/// taking over the same socket) it does not accept.
pub fn run(
    socket: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut paused: watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the admin runtime");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register the admin listener");
                return;
            }
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(address = %addr, "admin listening");
        }
        let limits = shared.options.admin_limits;
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        let overflow = shared
            .store
            .tagged_scope("http", "envoy_http_conn_manager_prefix", "admin")
            .counter("downstream_cx_overflow");
        loop {
            if *paused.borrow_and_update() {
                tokio::select! {
                    _ = paused.changed() => continue,
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            let (stream, _) = tokio::select! {
                _ = paused.changed() => continue,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = stop.wait_for(|s| *s) => break,
            };
            // A bounded number of connections, each with a header deadline and a bounded
            // life: idle or slow clients (a neighbour's, or many) cannot pile up here and
            // take the file descriptors the data path needs.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                overflow.inc();
                drop(stream);
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(req, &shared)) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    // Request head at most 16 KiB (431 beyond), 64 headers.
                    .max_buf_size(MAX_ADMIN_HEAD_BYTES)
                    .max_headers(MAX_ADMIN_HEADERS)
                    .serve_connection(io, svc);
                match tokio::time::timeout(limits.max_connection_age, conn).await {
                    Ok(Err(e)) => tracing::debug!(error = %e, "admin connection error"),
                    Err(_) => tracing::debug!("admin connection closed: reached its maximum age"),
                    Ok(Ok(())) => {}
                }
            });
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
}

fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache, max-age=0"),
    );
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    response(status, "text/plain; charset=UTF-8", body)
}

fn json_response(v: &serde_json::Value) -> Response<Body> {
    let body = serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".into());
    response(StatusCode::OK, "application/json", body + "\n")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn endpoint_list() -> String {
    let mut s = String::from("admin commands are:\n");
    for (path, mutates, help) in ENDPOINTS {
        let _ = writeln!(
            s,
            "  {path}{}: {help}",
            if *mutates { " (POST)" } else { "" }
        );
    }
    s
}

/// The longest request target (path and query) the admin server reads.
pub const MAX_ADMIN_URI_BYTES: usize = 4096;
/// The largest request head (request line and headers) the admin server reads.
pub const MAX_ADMIN_HEAD_BYTES: usize = 16 * 1024;
/// The most request headers the admin server reads.
pub const MAX_ADMIN_HEADERS: usize = 64;

/// Handles one admin request.
pub fn handle<B>(req: Request<B>, shared: &Shared) -> Response<Body> {
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_ADMIN_URI_BYTES {
        return text(
            StatusCode::URI_TOO_LONG,
            format!("the request target is {target} bytes, longer than the limit of {MAX_ADMIN_URI_BYTES}\n"),
        );
    }
    let path = req.uri().path().to_string();
    let mutates = ENDPOINTS.iter().any(|(p, m, _)| *p == path && *m);
    if mutates {
        if let Some(why) = cross_site(req.headers()) {
            return text(
                StatusCode::FORBIDDEN,
                format!("{path} refused: {why}; state-changing admin requests are not accepted from web pages\n"),
            );
        }
    }
    let query = parse_query(req.uri().query());
    route(req.method(), &path, &query, shared)
}

/// Why a request looks as if a web page in a browser sent it to another site (a page on the
/// node must not be able to drain or stop the proxy): `Sec-Fetch-Site` other than
/// `same-origin`/`none`, or an `Origin` whose host and port differ from `Host`. Tools such as
/// curl send neither header.
fn cross_site(headers: &hyper::HeaderMap) -> Option<String> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("?");
        if site != "same-origin" && site != "none" {
            return Some(format!("Sec-Fetch-Site is {site}"));
        }
    }
    let origin = headers.get(hyper::header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("null");
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match origin_host {
        // Same origin, and addressed by IP or as localhost: a page that reached this port
        // through a DNS name it controls (DNS rebinding) is same-origin with it too.
        Some(o) if !host.is_empty() && o.eq_ignore_ascii_case(host) && literal_host(host) => None,
        _ => Some(format!(
            "Origin {origin} is not this server addressed by IP or localhost (Host {host})"
        )),
    }
}

/// `127.0.0.1:9901`, `[::1]:9901`, `localhost:9901` (with or without the port).
fn literal_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn route(
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    shared: &Shared,
) -> Response<Body> {
    let Some((_, mutates, _)) = ENDPOINTS.iter().find(|(p, _, _)| *p == path) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("unknown admin path \"{path}\"\n{}", endpoint_list()),
        );
    };
    if *mutates && method != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} changes server state and requires POST\n"),
        );
    }
    match path {
        "/" => text(StatusCode::OK, endpoint_list()),
        "/stats" => stats_endpoint(query, shared, query.get("format").map(String::as_str)),
        "/stats/prometheus" => stats_endpoint(query, shared, Some("prometheus")),
        "/clusters" => clusters(query, shared),
        "/listeners" => listeners(query, shared),
        "/config_dump" => config_dump(shared),
        "/certs" => json_response(&json!({"certificates": shared
            .tls_contexts()
            .iter()
            .map(|c| c.to_json())
            .collect::<Vec<_>>()})),
        "/ready" => {
            let state = shared.state();
            let code = if state == crate::state::ServerState::Live {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(code, format!("{}\n", state.as_str()))
        }
        "/server_info" => server_info(shared),
        "/memory" => {
            let m = crate::state::memory_usage();
            json_response(&json!({
                "allocated": m.allocated.to_string(),
                "heap_size": m.heap_size.to_string(),
                "physical": m.physical.to_string(),
            }))
        }
        "/healthcheck/fail" => {
            shared.health_check_failed.store(true, Ordering::Relaxed);
            shared.refresh_server_stats();
            text(StatusCode::OK, "OK\n")
        }
        "/healthcheck/ok" => {
            shared.health_check_failed.store(false, Ordering::Relaxed);
            shared.refresh_server_stats();
            text(StatusCode::OK, "OK\n")
        }
        "/drain_listeners" => {
            shared.stop_listening();
            shared.refresh_server_stats();
            text(StatusCode::OK, "OK\n")
        }
        "/quitquitquit" => {
            shared.request_shutdown(ShutdownKind::Immediate);
            text(StatusCode::OK, "OK\n")
        }
        "/logging" => logging(method, query, shared),
        _ => text(StatusCode::NOT_FOUND, endpoint_list()),
    }
}

fn stats_endpoint(
    query: &BTreeMap<String, String>,
    shared: &Shared,
    format: Option<&str>,
) -> Response<Body> {
    shared.refresh_server_stats();
    stats_of(query, &shared.store, format)
}

/// Bytes a compiled `/stats?filter=` regex may take (the regex crate's
/// default is 10 MiB): a filter is a few words, and a 4 KiB URI could
/// otherwise spend tens of milliseconds of the admin thread compiling
/// `\w{100}`-style blow-ups.
const FILTER_REGEX_SIZE_LIMIT: usize = 1 << 20;

/// `/stats` of `store` with the query's filter and format.
fn stats_of(
    query: &BTreeMap<String, String>,
    store: &stats::Store,
    format: Option<&str>,
) -> Response<Body> {
    let regex = match query.get("filter").filter(|f| !f.is_empty()) {
        Some(f) => match regex::RegexBuilder::new(f)
            .size_limit(FILTER_REGEX_SIZE_LIMIT)
            .dfa_size_limit(FILTER_REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(r) => Some(r),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("invalid regex in filter: {e}\n"),
                )
            }
        },
        None => None,
    };
    let filter = StatsFilter {
        regex,
        used_only: query.contains_key("usedonly"),
    };
    let snap = store.snapshot();
    match format {
        None | Some("text") => text(StatusCode::OK, stats::render_text(&snap, &filter)),
        Some("json") => json_response(&stats::render_json(&snap, &filter)),
        Some("prometheus") => response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            stats::render_prometheus(&snap, &filter),
        ),
        Some(other) => text(
            StatusCode::BAD_REQUEST,
            format!("unknown stats format \"{other}\" (text, json, prometheus)\n"),
        ),
    }
}

fn listeners(query: &BTreeMap<String, String>, shared: &Shared) -> Response<Body> {
    if query.get("format").map(String::as_str) == Some("json") {
        let list: Vec<_> = shared
            .listeners
            .all()
            .iter()
            .map(|l| {
                json!({
                    "name": l.config.name,
                    "local_address": {"socket_address": {
                        "address": l.local_address.ip().to_string(),
                        "port_value": l.local_address.port(),
                    }},
                })
            })
            .collect();
        return json_response(&json!({"listener_statuses": list}));
    }
    let mut out = String::new();
    for l in shared.listeners.all().iter() {
        let _ = writeln!(out, "{}::{}", l.config.name, l.local_address);
    }
    text(StatusCode::OK, out)
}

use crate::xds::rfc3339;

/// The bootstrap and static resources from the snapshot; the dynamic ones are the xDS
/// client's to describe (each resource type its own section).
fn config_dump(shared: &Shared) -> Response<Body> {
    let snap = shared.snapshot.load_full();
    let started = rfc3339(shared.started_wall);
    let status = shared
        .static_status
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let updated = |kind: &'static str, name: &str| {
        status
            .last_updated
            .get(&(kind, name.to_string()))
            .map_or_else(|| started.clone(), |t| rfc3339(*t))
    };
    let error_state = |f: &crate::state::FailedUpdate| {
        json!({
            "failed_configuration": f.config,
            "last_update_attempt": rfc3339(f.at),
            "details": f.details,
        })
    };
    let mut listeners: Vec<_> = snap
        .listeners
        .iter()
        .map(|l| {
            let mut j = json!({"listener": l.to_envoy_json(), "last_updated": updated("listener", &l.name)});
            if let Some(f) = status.failed_listeners.get(&l.name) {
                j["error_state"] = error_state(f);
            }
            j
        })
        .collect();
    // A new listener the reload could not start: only its failure.
    for (name, f) in &status.failed_listeners {
        if !snap.listeners.iter().any(|l| l.name == *name) {
            listeners.push(json!({"name": name, "error_state": error_state(f)}));
        }
    }
    let clusters: Vec<_> = snap
        .clusters
        .iter()
        .map(|c| json!({"cluster": c.to_envoy_json(), "last_updated": updated("cluster", &c.name)}))
        .collect();
    let updated = status
        .bootstrap_updated
        .map_or_else(|| started.clone(), rfc3339);
    drop(status);
    let mut configs = vec![
        json!({
            "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "bootstrap": snap.bootstrap.to_json(),
            "last_updated": updated,
        }),
        json!({
            "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "static_clusters": clusters,
        }),
        json!({
            "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "static_listeners": listeners,
        }),
    ];
    if !snap.secrets.is_empty() {
        // Private keys and generic secrets as Envoy shows them: `[redacted]`.
        configs.push(json!({
            "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
            "static_secrets": snap.secrets.iter().map(|s| json!({
                "name": s.name,
                "last_updated": started,
                "secret": s.to_envoy_json(),
            })).collect::<Vec<_>>(),
        }));
    }
    if let Some(x) = &shared.xds {
        let (clusters, listeners) = configs.split_at_mut(2);
        let mut extra = Vec::new();
        x.dump(&mut clusters[1], &mut listeners[0], &mut extra);
        configs.extend(extra);
    }
    json_response(&json!({ "configs": configs }))
}

fn server_info(shared: &Shared) -> Response<Body> {
    let snapshot = shared.snapshot.load_full();
    let node = &snapshot.node;
    let uptime = shared.started.elapsed().as_secs();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let uptime_all = now_ms.saturating_sub(shared.epoch.first_started_unix_ms) / 1000;
    json_response(&json!({
        "version": format!("plumb/{}", crate::VERSION),
        "state": shared.state().as_str(),
        "uptime_current_epoch": format!("{uptime}s"),
        "uptime_all_epochs": format!("{}s", uptime_all.max(uptime)),
        "hot_restart_version": if shared.options.upgrade_socket.is_some() {
            format!("plumb.handover.{}", crate::handover::PROTOCOL)
        } else {
            "disabled".to_string()
        },
        "command_line_options": {
            "restart_epoch": shared.epoch.generation,
            "concurrency": shared.options.concurrency,
            "drain_time": format!("{}s", shared.options.drain_time.as_secs()),
            "config_path": shared.options.config_source,
            "args": shared.options.command_line,
        },
        "node": {
            "id": node.id,
            "cluster": node.cluster,
            "locality": node.locality.to_json(),
            "metadata": node.metadata,
            "user_agent_name": "plumb",
        },
    }))
}

fn logging(method: &Method, query: &BTreeMap<String, String>, shared: &Shared) -> Response<Body> {
    let Some(log) = &shared.log else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "log levels are not controllable in this process (no global logger installed)\n",
        );
    };
    if query.is_empty() {
        return text(StatusCode::OK, log.describe());
    }
    if method != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "/logging changes server state when given parameters and requires POST\n",
        );
    }
    let mut result = Ok(());
    for (k, v) in query {
        result =
            match k.as_str() {
                "level" => log.set_all(v),
                "paths" => v.split(',').filter(|p| !p.is_empty()).try_for_each(|p| {
                    match p.split_once(':') {
                        Some((c, l)) => log.set_component(c, l),
                        None => Err(format!("paths entry \"{p}\" is not <logger>:<level>")),
                    }
                }),
                component => log.set_component(component, v),
            };
        if result.is_err() {
            break;
        }
    }
    match result {
        Ok(()) => text(StatusCode::OK, log.describe()),
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n{}", log.describe())),
    }
}

/// Fuzzing entry (`fuzz/fuzz_targets/admin_request.rs`): `data` is a request target, a
/// newline, then header lines. Runs what the admin server does with outside input before it
/// touches server state: the cross-site check, the query parser, and `/stats` with the
/// query's filter and format over a store holding every kind of stat.
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (target, header_lines) = text.split_once('\n').unwrap_or((&text, ""));
    let mut headers = hyper::HeaderMap::new();
    for line in header_lines.lines().take(MAX_ADMIN_HEADERS) {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                hyper::header::HeaderName::from_bytes(k.trim().as_bytes()),
                hyper::header::HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    let _ = cross_site(&headers);
    if target.len() > MAX_ADMIN_URI_BYTES {
        return;
    }
    let Ok(uri) = target.parse::<hyper::Uri>() else {
        return;
    };
    let query = parse_query(uri.query());
    thread_local! {
        static STORE: stats::Store = {
            let store = stats::Store::new();
            let c = store.tagged_scope("cluster", "envoy_cluster_name", "a\"b");
            c.counter("upstream_cx_total").add(3);
            c.gauge("membership_healthy").set(-1);
            c.histogram("upstream_cx_connect_ms")
                .record(std::time::Duration::from_millis(7));
            store.root_scope("server").counter("unused");
            store.flush_intervals();
            store
        };
    }
    STORE.with(|store| {
        let _ = stats_of(&query, store, query.get("format").map(String::as_str));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_percent_decoded() {
        let q = parse_query(Some("filter=%5Ecluster%5C.&usedonly&a=b+c"));
        assert_eq!(q["filter"], "^cluster\\.");
        assert_eq!(q["usedonly"], "");
        assert_eq!(q["a"], "b c");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn cross_site_requests_are_recognised() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = hyper::HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            cross_site(&m)
        };
        assert_eq!(h(&[("host", "127.0.0.1:9901")]), None, "curl");
        assert_eq!(
            h(&[
                ("host", "127.0.0.1:9901"),
                ("origin", "http://127.0.0.1:9901")
            ]),
            None
        );
        assert_eq!(
            h(&[("host", "[::1]:9901"), ("origin", "http://[::1]:9901")]),
            None
        );
        assert_eq!(
            h(&[
                ("host", "localhost:9901"),
                ("origin", "http://localhost:9901/")
            ]),
            None
        );
        assert!(h(&[("host", "127.0.0.1:9901"), ("origin", "http://a.example")]).is_some());
        // DNS rebinding: same origin, but through a name the page controls.
        assert!(h(&[
            ("host", "a.example:9901"),
            ("origin", "http://a.example:9901")
        ])
        .is_some());
        assert!(h(&[("host", "127.0.0.1:9901"), ("sec-fetch-site", "cross-site")]).is_some());
        assert_eq!(
            h(&[("host", "127.0.0.1:9901"), ("sec-fetch-site", "none")]),
            None
        );
        assert!(literal_host("::1") && literal_host("10.0.0.1") && !literal_host("node-1:9901"));
    }

    #[test]
    fn stats_filters_have_a_compile_budget() {
        let store = stats::Store::new();
        store.root_scope("server").counter("live").inc();
        let q = |f: &str| parse_query(Some(&format!("filter={f}")));
        let ok = stats_of(&q("live"), &store, None);
        assert_eq!(ok.status(), StatusCode::OK);
        // Compiles under the regex crate's 10 MiB default, not under 1 MiB.
        let big = stats_of(&q("%5Cw%7B100%7D"), &store, None);
        assert_eq!(big.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
    }
}
