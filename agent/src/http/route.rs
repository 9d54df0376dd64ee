//! A route configuration compiled for lookups: virtual hosts by `:authority` with Envoy's
//! precedence (exact, then the longest `*suffix`, then the longest `prefix*`, then `*`), and
//! each host's routes in order. Built once per configuration; a lookup allocates nothing
//! unless a route matches on query parameters.

use crate::config::http::{
    HeaderCheck, HeaderMatcher, PathMatch, QueryParameterMatcher, Route, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use http::HeaderMap;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
pub struct RouteTable {
    pub config: Arc<RouteConfiguration>,
    exact: HashMap<String, usize>,
    /// (suffix length, suffix → virtual host), longest first.
    suffixes: Vec<(usize, HashMap<String, usize>)>,
    /// (prefix length, prefix → virtual host), longest first.
    prefixes: Vec<(usize, HashMap<String, usize>)>,
    default: Option<usize>,
    /// The per-route HTTP filter settings in force for each route that has any
    /// (`typed_per_filter_config` of the route, else its virtual host, else the route
    /// configuration), by (virtual host, route) index.
    per_route: HashMap<(usize, usize), Arc<RouteFilters>>,
}

/// What one route says to the connection manager's HTTP filters, by filter name.
#[derive(Debug, Default)]
pub struct RouteFilters(Vec<(String, RouteFilter)>);

impl RouteFilters {
    pub fn get(&self, filter: &str) -> Option<&RouteFilter> {
        self.0.iter().find(|(n, _)| n == filter).map(|(_, f)| f)
    }
}

#[derive(Debug, Clone)]
pub enum RouteFilter {
    /// Skip the filter for this route.
    Disabled,
    /// Run this instead of the connection manager's filter (its own bucket and stats).
    Replace(Arc<dyn super::filters::HttpFilter>),
    /// The route's own RBAC policies (`RBACPerRoute`), counted under the filter's stats.
    Rbac(Arc<crate::rbac::Rules>),
}

/// Builds one level's per-filter settings (each level's rate limiter is shared by the
/// requests of all the routes it covers, as in Envoy).
fn build_level(
    cfg: &[(String, crate::config::http::PerFilterConfig)],
    store: &crate::stats::Store,
) -> Vec<(String, RouteFilter)> {
    use crate::config::http::PerFilterConfig as P;
    cfg.iter()
        .map(|(name, c)| {
            let f = match c {
                P::Disabled => RouteFilter::Disabled,
                P::LocalRateLimit(rl) => {
                    RouteFilter::Replace(Arc::new(super::filters::LocalRateLimit::new(rl, store)))
                }
                P::Rbac(r) => RouteFilter::Rbac(Arc::new(crate::rbac::Rules::new(r))),
            };
            (name.clone(), f)
        })
        .collect()
}

fn by_length(m: HashMap<usize, HashMap<String, usize>>) -> Vec<(usize, HashMap<String, usize>)> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    v
}

/// What a request is matched on.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The path with its query (`:path`).
    pub path_and_query: &'a str,
    pub authority: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl RouteTable {
    pub fn new(config: Arc<RouteConfiguration>, store: &crate::stats::Store) -> Self {
        let mut exact = HashMap::new();
        let mut suffixes: HashMap<usize, HashMap<String, usize>> = HashMap::new();
        let mut prefixes: HashMap<usize, HashMap<String, usize>> = HashMap::new();
        let mut default = None;
        for (i, vh) in config.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                if d == "*" {
                    default.get_or_insert(i);
                } else if let Some(s) = d.strip_prefix('*') {
                    suffixes
                        .entry(s.len())
                        .or_default()
                        .entry(s.to_string())
                        .or_insert(i);
                } else if let Some(p) = d.strip_suffix('*') {
                    prefixes
                        .entry(p.len())
                        .or_default()
                        .entry(p.to_string())
                        .or_insert(i);
                } else {
                    exact.entry(d.clone()).or_insert(i);
                }
            }
        }
        // Per-route filter settings: built once per level, then each route gets the most
        // specific one for each filter name.
        let mut per_route = HashMap::new();
        let top = build_level(&config.per_filter, store);
        for (vi, vh) in config.virtual_hosts.iter().enumerate() {
            let mid = build_level(&vh.per_filter, store);
            for (ri, r) in vh.routes.iter().enumerate() {
                let mut merged = build_level(&r.per_filter, store);
                for (name, f) in mid.iter().chain(top.iter()) {
                    if !merged.iter().any(|(n, _)| n == name) {
                        merged.push((name.clone(), f.clone()));
                    }
                }
                if !merged.is_empty() {
                    per_route.insert((vi, ri), Arc::new(RouteFilters(merged)));
                }
            }
        }
        Self {
            per_route,
            exact,
            suffixes: by_length(suffixes),
            prefixes: by_length(prefixes),
            default,
            config,
        }
    }

    /// The virtual host for `authority` (lower-cased by the caller when needed).
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        self.config
            .virtual_hosts
            .get(self.virtual_host_index(authority)?)
    }

    fn virtual_host_index(&self, authority: &str) -> Option<usize> {
        let mut host = authority;
        if self.config.ignore_port_in_host_matching {
            host = strip_port(host);
        }
        let lowered;
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            host = &lowered;
        }
        let i = self
            .exact
            .get(host)
            .or_else(|| {
                // A wildcard matches at least one character.
                self.suffixes
                    .iter()
                    .filter(|(len, _)| *len < host.len())
                    .find_map(|(len, m)| m.get(&host[host.len() - len..]))
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .filter(|(len, _)| *len < host.len())
                    .find_map(|(len, m)| host.get(..*len).and_then(|p| m.get(p)))
            })
            .copied()
            .or(self.default)?;
        Some(i)
    }

    /// The virtual host and the first of its routes that matches the request.
    pub fn route(&self, req: &RequestView) -> Option<(&VirtualHost, &Route)> {
        self.route_with_filters(req).map(|(vh, r, _)| (vh, r))
    }

    /// The virtual host, the route, and what the route says to the HTTP filters.
    pub fn route_with_filters(
        &self,
        req: &RequestView,
    ) -> Option<(&VirtualHost, &Route, Option<&RouteFilters>)> {
        let vi = self.virtual_host_index(req.authority)?;
        let vh = self.config.virtual_hosts.get(vi)?;
        let mut query: Option<Vec<(String, String)>> = None;
        let ri = vh
            .routes
            .iter()
            .position(|r| matches(&r.matcher, req, &mut query))?;
        let filters = if self.per_route.is_empty() {
            None
        } else {
            self.per_route.get(&(vi, ri)).map(|f| &**f)
        };
        Some((vh, &vh.routes[ri], filters))
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i)
            if host[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && host[..i].find(':').is_none() =>
        {
            &host[..i]
        }
        _ => host,
    }
}

fn path_matches(m: &RouteMatch, path: &str) -> bool {
    let eq = |a: &str, b: &str| {
        if m.case_sensitive {
            a == b
        } else {
            a.eq_ignore_ascii_case(b)
        }
    };
    let starts = |p: &str| {
        path.len() >= p.len() && path.is_char_boundary(p.len()) && eq(&path[..p.len()], p)
    };
    match &m.path {
        PathMatch::Prefix(p) => starts(p),
        PathMatch::Path(p) => eq(path, p),
        PathMatch::Regex(r) => r.full_match(path),
        PathMatch::SeparatedPrefix(p) => {
            starts(p) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
        }
    }
}

fn header_value<'h>(headers: &'h HeaderMap, name: &str, joined: &'h mut String) -> Option<&'h str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let first = first.to_str().unwrap_or("");
    let Some(second) = values.next() else {
        return Some(first);
    };
    // Several values are matched as one, joined by commas (as Envoy does).
    joined.push_str(first);
    joined.push(',');
    joined.push_str(second.to_str().unwrap_or(""));
    for v in values {
        joined.push(',');
        joined.push_str(v.to_str().unwrap_or(""));
    }
    Some(joined.as_str())
}

/// The request's pseudo-headers, for header matchers that name them.
#[derive(Debug, Clone, Copy)]
pub struct Pseudo<'a> {
    /// `http`, or `https` on a connection whose TLS Plumb terminated.
    pub scheme: &'a str,
    pub method: &'a str,
    /// The path with its query, as `:path` is.
    pub path: &'a str,
    pub authority: &'a str,
}

pub fn header_matches(h: &HeaderMatcher, headers: &HeaderMap) -> bool {
    header_matches_with(h, headers, None)
}

/// As `header_matches`, with `:method`, `:path`, `:authority` and `:scheme` read from
/// `pseudo` (without it, they are absent).
pub fn header_matches_with(h: &HeaderMatcher, headers: &HeaderMap, pseudo: Option<Pseudo>) -> bool {
    let mut joined = String::new();
    let value = match (h.name.as_str(), pseudo) {
        (":method", Some(p)) => Some(p.method),
        (":path", Some(p)) => Some(p.path),
        (":authority", Some(p)) => Some(p.authority),
        (":scheme", Some(p)) => Some(p.scheme),
        (n, _) if n.starts_with(':') => None,
        _ => header_value(headers, &h.name, &mut joined),
    };
    if let HeaderCheck::Present(p) = h.check {
        return (value.is_some() == p) != h.invert;
    }
    let value = match value {
        Some(v) => v,
        None if h.treat_missing_as_empty => "",
        None => return false,
    };
    let ok = match &h.check {
        HeaderCheck::String(s) => s.matches(value),
        HeaderCheck::Range(start, end) => value
            .trim()
            .parse::<i64>()
            .is_ok_and(|n| n >= *start && n < *end),
        HeaderCheck::Present(_) => unreachable!("handled above"),
    };
    ok != h.invert
}

fn query_matches(q: &QueryParameterMatcher, params: &[(String, String)]) -> bool {
    match params.iter().find(|(k, _)| *k == q.name) {
        None => false,
        Some((_, v)) => q.value.as_ref().is_none_or(|m| m.matches(v)),
    }
}

/// Decodes `a=1&b=%20x` (first value of each name wins, as Envoy does).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k);
        if out.iter().any(|(x, _)| *x == k) {
            continue;
        }
        out.push((k, percent_decode(v)));
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn matches(m: &RouteMatch, req: &RequestView, query: &mut Option<Vec<(String, String)>>) -> bool {
    if !path_matches(m, req.path) {
        return false;
    }
    if m.grpc && !is_grpc(req.headers) {
        return false;
    }
    let pseudo = Pseudo {
        scheme: "http",
        method: req.method,
        path: req.path_and_query,
        authority: req.authority,
    };
    if !m
        .headers
        .iter()
        .all(|h| header_matches_with(h, req.headers, Some(pseudo)))
    {
        return false;
    }
    if !m.query_parameters.is_empty() {
        let params = query.get_or_insert_with(|| parse_query(req.query.unwrap_or("")));
        if !m.query_parameters.iter().all(|q| query_matches(q, params)) {
            return false;
        }
    }
    if let Some(ppm) = m.runtime_fraction {
        if fastrand::u32(..1_000_000) >= ppm {
            return false;
        }
    }
    true
}

/// A gRPC request: `content-type: application/grpc` or `application/grpc+…`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.strip_prefix("application/grpc").is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::http::{Action, HeaderMutations};

    fn table(vhosts: &str) -> RouteTable {
        let text = format!(r#"{{"name": "r", "virtual_hosts": {vhosts}}}"#);
        let v = crate::config::yaml::parse_test(&text).unwrap();
        let mut d = crate::config::Diagnostics::default();
        let rc = crate::config::http::read_route_configuration(&v, &mut d)
            .unwrap_or_else(|| panic!("{:?}", d.errors));
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        RouteTable::new(Arc::new(rc), &crate::stats::Store::new())
    }

    fn vh(name: &str, domains: &str) -> String {
        format!(
            r#"{{"name": "{name}", "domains": {domains}, "routes": [{{"match": {{"prefix": "/"}}, "direct_response": {{"status": 200}}}}]}}"#
        )
    }

    #[test]
    fn virtual_hosts_follow_envoys_precedence() {
        let t = table(&format!(
            "[{}, {}, {}, {}, {}, {}]",
            vh("exact", r#"["api.example.com", "api.example.com:8080"]"#),
            vh("suffix", r#"["*.example.com"]"#),
            vh("longer-suffix", r#"["*.eu.example.com"]"#),
            vh("prefix", r#"["api.*"]"#),
            vh("dash", r#"["*-svc.example.org"]"#),
            vh("default", r#"["*"]"#),
        ));
        let name = |host: &str| {
            t.virtual_host(host)
                .map(|v| v.name.clone())
                .unwrap_or_default()
        };
        assert_eq!(name("api.example.com"), "exact");
        assert_eq!(name("API.Example.com"), "exact");
        assert_eq!(name("api.example.com:8080"), "exact");
        assert_eq!(name("www.example.com"), "suffix");
        assert_eq!(name("a.eu.example.com"), "longer-suffix");
        // A wildcard stands for at least one character.
        assert_eq!(name(".example.com"), "default");
        assert_eq!(name("example.com"), "default");
        assert_eq!(name("api.other.net"), "prefix");
        assert_eq!(name("my-svc.example.org"), "dash");
        // Ports are part of the host unless ignored.
        assert_eq!(name("www.example.com:80"), "default");
        assert_eq!(name("nothing.else"), "default");
    }

    #[test]
    fn ports_can_be_ignored_and_no_default_means_no_host() {
        let text = format!(
            r#"{{"name": "r", "ignore_port_in_host_matching": true, "virtual_hosts": [{}]}}"#,
            vh("a", r#"["a.com"]"#)
        );
        let v = crate::config::yaml::parse_test(&text).unwrap();
        let mut d = crate::config::Diagnostics::default();
        let t = RouteTable::new(
            Arc::new(crate::config::http::read_route_configuration(&v, &mut d).unwrap()),
            &crate::stats::Store::new(),
        );
        assert!(t.virtual_host("a.com:9000").is_some());
        assert!(t.virtual_host("[::1]:9000").is_none());
        assert_eq!(strip_port("[::1]:9000"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }

    fn routes(list: &str) -> RouteTable {
        table(&format!(
            r#"[{{"name": "v", "domains": ["*"], "routes": {list}}}]"#
        ))
    }

    fn which(t: &RouteTable, path_and_query: &str, headers: &[(&str, &str)]) -> Option<u16> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let view = RequestView {
            method: "GET",
            path_and_query,
            authority: "x",
            path,
            query,
            headers: &h,
        };
        t.route(&view).map(|(_, r)| match r.action {
            Action::DirectResponse { status, .. } => status,
            _ => 0,
        })
    }

    fn r(m: &str, status: u16) -> String {
        format!(r#"{{"match": {m}, "direct_response": {{"status": {status}}}}}"#)
    }

    #[test]
    fn path_matches() {
        let t = routes(&format!(
            "[{}, {}, {}, {}, {}]",
            r(r#"{"path": "/exact"}"#, 201),
            r(r#"{"path_separated_prefix": "/api"}"#, 202),
            r(r#"{"safe_regex": {"regex": "/v[0-9]+/.*"}}"#, 203),
            r(r#"{"prefix": "/CI", "case_sensitive": false}"#, 204),
            r(r#"{"prefix": "/p"}"#, 205),
        ));
        assert_eq!(which(&t, "/exact", &[]), Some(201));
        assert_eq!(which(&t, "/exact?x=1", &[]), Some(201));
        assert_eq!(which(&t, "/exact/", &[]), None);
        assert_eq!(which(&t, "/api", &[]), Some(202));
        assert_eq!(which(&t, "/api/x", &[]), Some(202));
        assert_eq!(which(&t, "/api?q", &[]), Some(202));
        assert_eq!(which(&t, "/apiv2", &[]), None);
        assert_eq!(which(&t, "/v12/a", &[]), Some(203));
        // The regex must match the whole path.
        assert_eq!(which(&t, "/x/v12/a", &[]), None);
        assert_eq!(which(&t, "/ci/z", &[]), Some(204));
        assert_eq!(which(&t, "/pq", &[]), Some(205));
    }

    #[test]
    fn header_query_and_grpc_matches() {
        let t = routes(&format!(
            "[{}, {}, {}, {}, {}, {}, {}]",
            r(
                r#"{"prefix": "/", "headers": [{"name": "x-canary", "exact_match": "1"}]}"#,
                201
            ),
            r(
                r#"{"prefix": "/", "headers": [{"name": "x-v", "range_match": {"start": 10, "end": 20}}]}"#,
                202
            ),
            r(
                r#"{"prefix": "/", "headers": [{"name": "x-absent", "present_match": false}, {"name": "x-must", "present_match": true}]}"#,
                203
            ),
            r(
                r#"{"prefix": "/", "headers": [{"name": "x-inv", "string_match": {"prefix": "a"}, "invert_match": true}]}"#,
                204
            ),
            r(
                r#"{"prefix": "/", "query_parameters": [{"name": "debug", "string_match": {"exact": "on"}}]}"#,
                205
            ),
            r(r#"{"prefix": "/", "grpc": {}}"#, 206),
            r(
                r#"{"prefix": "/", "headers": [{"name": "x-multi", "string_match": {"exact": "a,b"}}]}"#,
                207
            ),
        ));
        assert_eq!(which(&t, "/", &[("x-canary", "1")]), Some(201));
        assert_eq!(which(&t, "/", &[("x-canary", "2")]), None);
        assert_eq!(which(&t, "/", &[("x-v", "15")]), Some(202));
        assert_eq!(which(&t, "/", &[("x-v", "20")]), None);
        assert_eq!(which(&t, "/", &[("x-must", "")]), Some(203));
        assert_eq!(which(&t, "/", &[("x-must", ""), ("x-absent", "y")]), None);
        assert_eq!(which(&t, "/", &[("x-inv", "b")]), Some(204));
        assert_eq!(which(&t, "/", &[("x-inv", "a")]), None);
        // A missing header never matches a string matcher, inverted or not.
        assert_eq!(which(&t, "/?debug=on", &[]), Some(205));
        assert_eq!(which(&t, "/?debug=%6Fn&x", &[]), Some(205));
        assert_eq!(which(&t, "/?debug=off", &[]), None);
        assert_eq!(
            which(&t, "/", &[("content-type", "application/grpc+proto")]),
            Some(206)
        );
        assert_eq!(
            which(&t, "/", &[("content-type", "application/grpcx")]),
            None
        );
        assert_eq!(
            which(&t, "/", &[("x-multi", "a"), ("x-multi", "b")]),
            Some(207)
        );
    }

    #[test]
    fn runtime_fraction_matches_about_its_share() {
        let t = routes(&format!(
            "[{}, {}]",
            r(
                r#"{"prefix": "/", "runtime_fraction": {"default_value": {"numerator": 25, "denominator": "HUNDRED"}}}"#,
                201
            ),
            r(r#"{"prefix": "/"}"#, 202),
        ));
        let hits = (0..4000)
            .filter(|_| which(&t, "/", &[]) == Some(201))
            .count();
        // 1000 expected; 6 standard deviations (~27 each) either side.
        assert!((840..=1160).contains(&hits), "{hits}");
        let _ = HeaderMutations::default();
    }
}
