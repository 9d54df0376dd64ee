//! A route's rewrites of the request's path (`prefix_rewrite`, `regex_rewrite`) and its
//! redirects (`redirect`: the `Location` answer).

use super::body::Body;
use super::headers::names;
use crate::config::http::{Forward, Redirect};
use http::header::HeaderValue;
use http::{HeaderMap, Response, StatusCode, Uri};

/// The upstream path: `prefix_rewrite` or `regex_rewrite` applied (the original kept in
/// `x-envoy-original-path`).
pub(super) fn rewrite_path(
    f: &Forward,
    route: &crate::config::http::Route,
    uri: &Uri,
    h: &mut HeaderMap,
) -> Option<String> {
    let path = uri.path();
    let query = uri.query();
    let rewritten = if let Some(p) = &f.prefix_rewrite {
        let matched = match &route.matcher.path {
            crate::config::http::PathMatch::Prefix(m)
            | crate::config::http::PathMatch::SeparatedPrefix(m)
            | crate::config::http::PathMatch::Path(m) => m.len(),
            crate::config::http::PathMatch::Regex(_) => path.len(),
        };
        format!("{p}{}", path.get(matched..).unwrap_or(""))
    } else {
        let (re, sub) = f.regex_rewrite.as_ref()?;
        re.regex.replace_all(path, sub.as_str()).into_owned()
    };
    if let Ok(v) = HeaderValue::from_str(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")) {
        h.insert(names::X_ENVOY_ORIGINAL_PATH, v);
    }
    let path = if rewritten.is_empty() {
        "/".to_string()
    } else {
        rewritten
    };
    Some(match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    })
}

pub(super) fn redirect(
    rd: &Redirect,
    uri: &Uri,
    authority: &str,
    route: &crate::config::http::Route,
) -> Response<Body> {
    let scheme = rd.scheme.as_deref().unwrap_or("http");
    let (host, port) = match (&rd.host, rd.port) {
        (Some(h), Some(p)) => (h.clone(), Some(p)),
        (Some(h), None) => (h.clone(), None),
        (None, p) => {
            let bare = super::route::strip_port(authority).to_string();
            let kept = if rd.scheme.is_none() {
                authority
                    .strip_prefix(&bare)
                    .and_then(|r| r.strip_prefix(':'))
                    .and_then(|p| p.parse().ok())
            } else {
                None
            };
            (bare, p.or(kept))
        }
    };
    let path = if let Some(p) = &rd.path {
        p.clone()
    } else if let Some(p) = &rd.prefix_rewrite {
        let matched = match &route.matcher.path {
            crate::config::http::PathMatch::Prefix(m)
            | crate::config::http::PathMatch::SeparatedPrefix(m)
            | crate::config::http::PathMatch::Path(m) => m.len(),
            crate::config::http::PathMatch::Regex(_) => uri.path().len(),
        };
        format!("{p}{}", uri.path().get(matched..).unwrap_or(""))
    } else {
        uri.path().to_string()
    };
    let mut location = format!("{scheme}://{host}");
    let default_port = if scheme == "https" { 443 } else { 80 };
    if let Some(p) = port.filter(|p| *p != default_port) {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(&path);
    if !rd.strip_query && !path.contains('?') {
        if let Some(q) = uri.query() {
            location.push('?');
            location.push_str(q);
        }
    }
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::from_u16(rd.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r.headers_mut()
        .insert("content-length", HeaderValue::from_static("0"));
    r
}
