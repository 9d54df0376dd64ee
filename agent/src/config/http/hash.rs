//! A route's `hash_policy`: the keys the hashing load balancers hash (a header, a cookie,
//! generated when the policy has a `ttl`, the source IP, a query parameter, a filter state
//! value), their field tables and reader.

use super::super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::*;
use crate::config::yaml::Value;

#[allow(unused_imports)]
use Field::{Ignored as I, Rejected as R, Supported as S};

pub(super) const HASH_POLICY: FieldTable = &[
    ("header", S),
    ("cookie", S),
    ("connection_properties", S),
    ("query_parameter", S),
    ("filter_state", S),
    ("terminal", S),
];

pub(super) const HASH_HEADER: FieldTable = &[
    ("header_name", S),
    (
        "regex_rewrite",
        R("rewriting the hashed header value is not supported"),
    ),
];

pub(super) const HASH_COOKIE: FieldTable =
    &[("name", S), ("ttl", S), ("path", S), ("attributes", S)];

pub(super) const COOKIE_ATTRIBUTE: FieldTable = &[("name", S), ("value", S)];

/// `hash_policy.cookie`: its name, and with `ttl` how to generate it.
fn read_hash_cookie(o: &Obj, d: &mut Diagnostics) -> Option<HashOn> {
    let c = o.object("cookie", HASH_COOKIE, d)?;
    let name = c.required_name("name", d)?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
    };
    if !token(&name) {
        d.error(c.at("name"), format!("{name:?} is not a valid cookie name"));
        return None;
    }
    let Some(ttl) = c.duration("ttl", d) else {
        for k in ["path", "attributes"] {
            if c.get(k).is_some() {
                d.warn(
                    c.at(k),
                    "ignored: only used when generating the cookie (with ttl)",
                );
            }
        }
        return Some(HashOn::Cookie(name, None));
    };
    let value_ok = |s: &str| http::HeaderValue::from_str(s).is_ok() && !s.contains(';');
    let path = c.string("path", d).filter(|p| !p.is_empty());
    if path.as_deref().is_some_and(|p| !value_ok(p)) {
        d.error(c.at("path"), "not a valid cookie path");
        return None;
    }
    let mut attributes = Vec::new();
    for (apath, v) in c.list("attributes", d) {
        let Some(a) = Obj::new(v, &apath, COOKIE_ATTRIBUTE, d) else {
            continue;
        };
        let Some(n) = a.required_name("name", d) else {
            continue;
        };
        let v = a.string("value", d).unwrap_or_default();
        if !token(&n) || !(v.is_empty() || value_ok(&v)) {
            d.error(apath, "not a valid cookie attribute");
            continue;
        }
        attributes.push((n, v));
    }
    Some(HashOn::Cookie(
        name,
        Some(std::sync::Arc::new(CookieGen {
            ttl,
            path,
            attributes,
        })),
    ))
}

pub(super) const HASH_CONNECTION: FieldTable = &[("source_ip", S)];

pub(super) const HASH_QUERY: FieldTable = &[("name", S)];

pub(super) const HASH_FILTER_STATE: FieldTable = &[("key", S)];

/// One `hash_policy` entry: exactly one of its kinds.
pub(super) fn read_hash_policy(v: &Value, path: &str, d: &mut Diagnostics) -> Option<HashPolicy> {
    let o = Obj::new(v, path, HASH_POLICY, d)?;
    let kinds = [
        "header",
        "cookie",
        "connection_properties",
        "query_parameter",
        "filter_state",
    ];
    if kinds.iter().filter(|k| o.get(k).is_some()).count() != 1 {
        d.error(
            path,
            "exactly one of header, cookie, connection_properties, query_parameter or filter_state is required",
        );
        return None;
    }
    let name = |t: FieldTable, key: &str, field: &str, d: &mut Diagnostics| {
        o.object(key, t, d).and_then(|x| x.required_name(field, d))
    };
    let kind = if o.get("header").is_some() {
        let n = name(HASH_HEADER, "header", "header_name", d)?;
        HashOn::Header(n.to_ascii_lowercase())
    } else if o.get("cookie").is_some() {
        read_hash_cookie(&o, d)?
    } else if o.get("query_parameter").is_some() {
        HashOn::QueryParameter(name(HASH_QUERY, "query_parameter", "name", d)?)
    } else if o.get("filter_state").is_some() {
        HashOn::FilterState(name(HASH_FILTER_STATE, "filter_state", "key", d)?)
    } else {
        let c = o.object("connection_properties", HASH_CONNECTION, d)?;
        if !c.boolean("source_ip", d).unwrap_or(false) {
            d.error(c.at("source_ip"), "must be true (nothing else to hash on)");
            return None;
        }
        HashOn::SourceIp
    };
    Some(HashPolicy {
        on: kind,
        terminal: o.boolean("terminal", d).unwrap_or(false),
    })
}
