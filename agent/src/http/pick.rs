//! What a request is routed to: its hash from the route's `hash_policy` (Envoy's keys and
//! combination, a generated cookie, filter state) and the pick of a host for each attempt
//! (avoiding hosts already tried when the retry policy asks).

use super::ConnInfo;
use crate::upstream::{Cluster, LbContext};
use http::header::HeaderValue;
use http::{HeaderMap, Uri};
use std::sync::Arc;

/// xxHash64 (seed 0) over the parts in order, as Envoy hashes `hash_policy` inputs: the
/// same hash across restarts, hand-overs and Envoy itself, so hashing balancers agree.
pub(super) fn xxhash(parts: &[&[u8]]) -> u64 {
    let mut h = xxhash_rust::xxh64::Xxh64::new(0);
    for p in parts {
        h.update(p);
    }
    h.digest()
}

/// The request's hash from the route's `hash_policy` (Envoy's combination: each new hash
/// folded into the previous one rotated by a bit; a `terminal` policy that produced one ends
/// the list). `None` when no policy produced a hash. A cookie policy with `ttl` whose cookie
/// is absent generates it (as Envoy: the hex of the xxHash64 of the client's address and
/// port), hashes that, and adds its `Set-Cookie` to `set_cookies`.
pub(super) fn request_hash(
    policies: &[crate::config::http::HashPolicy],
    headers: &HeaderMap,
    uri: &Uri,
    peer: std::net::SocketAddr,
    filter_state: &[(Arc<str>, String)],
    set_cookies: &mut Vec<HeaderValue>,
) -> Option<u64> {
    use crate::config::http::HashOn;
    let mut acc: Option<u64> = None;
    for p in policies {
        let new = match &p.on {
            HashOn::Header(name) => {
                // Sorted, as Envoy sorts them: the same values in any order hash alike.
                let mut values: Vec<&[u8]> = headers
                    .get_all(name.as_str())
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                values.sort_unstable();
                (!values.is_empty()).then(|| xxhash(&values))
            }
            HashOn::Cookie(name, generate) => {
                let sent = headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|c| {
                        let (k, v) = c.trim().split_once('=')?;
                        // A quoted value hashes without its quotes (Envoy).
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or(v);
                        (k == name).then(|| xxhash(&[v.as_bytes()]))
                    });
                match (sent, generate) {
                    (Some(h), _) => Some(h),
                    (None, Some(g)) => {
                        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
                        let value = format!("{:016x}", xxhash(&[peer.to_string().as_bytes()]));
                        if let Some(c) = set_cookie(name, &value, g) {
                            set_cookies.push(c);
                        }
                        Some(xxhash(&[value.as_bytes()]))
                    }
                    (None, None) => None,
                }
            }
            // Envoy hashes the address as text.
            HashOn::SourceIp => Some(xxhash(&[peer.ip().to_canonical().to_string().as_bytes()])),
            // The last value set under the key (a later filter overrides an earlier one).
            HashOn::FilterState(key) => filter_state
                .iter()
                .rev()
                .find(|(k, _)| **k == **key)
                .map(|(_, v)| xxhash(&[v.as_bytes()])),
            HashOn::QueryParameter(name) => uri.query().and_then(|q| {
                q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then(|| xxhash(&[v.as_bytes()]))
                })
            }),
        };
        if let Some(x) = new {
            acc = Some(acc.map_or(x, |a| a.rotate_left(1) ^ x));
            if p.terminal {
                break;
            }
        }
    }
    acc
}

/// Envoy's generated cookie: `name="value"; Max-Age=ttl; Path=path; attributes; HttpOnly`
/// (no `Max-Age` for a zero `ttl`: a session cookie).
fn set_cookie(name: &str, value: &str, g: &crate::config::http::CookieGen) -> Option<HeaderValue> {
    let mut c = format!("{name}=\"{value}\"");
    if !g.ttl.is_zero() {
        c.push_str(&format!("; Max-Age={}", g.ttl.as_secs()));
    }
    if let Some(p) = &g.path {
        c.push_str(&format!("; Path={p}"));
    }
    for (k, v) in &g.attributes {
        if v.is_empty() {
            c.push_str(&format!("; {k}"));
        } else {
            c.push_str(&format!("; {k}={v}"));
        }
    }
    c.push_str("; HttpOnly");
    HeaderValue::from_str(&c).ok()
}

/// Picks a host for an attempt; a retry with `previous_hosts` re-picks (up to
/// `host_selection_retry_max_attempts` times) to avoid the hosts already tried.
pub(super) fn pick(
    cluster: &Cluster,
    conn: &ConnInfo,
    policy: Option<&crate::config::http::RetryPolicy>,
    tried: &[Arc<crate::upstream::Host>],
    attempt: u32,
    hash_key: Option<u64>,
) -> Option<Arc<crate::upstream::Host>> {
    let ctx = LbContext {
        hash_key,
        attempt,
        original_dst: conn.original_dst,
        tried,
    };
    let mut host = cluster.pick(&ctx).ok()?;
    if let Some(p) = policy.filter(|p| p.avoid_previous_hosts) {
        for _ in 0..p.host_selection_retry_max_attempts {
            if !tried.iter().any(|t| Arc::ptr_eq(t, &host)) {
                break;
            }
            host = cluster.pick(&ctx).ok()?;
        }
    }
    Some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_policies_hash_what_they_name_and_stop_at_a_terminal_one() {
        use crate::config::http::{HashOn, HashPolicy};
        let p = |on: HashOn, terminal: bool| HashPolicy { on, terminal };
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        h.insert(http::header::COOKIE, "a=1; session=s42".parse().unwrap());
        let uri: Uri = "/p?id=7&x".parse().unwrap();
        let ip: std::net::SocketAddr = "10.0.0.1:5555".parse().unwrap();
        let one = |on: HashOn| request_hash(&[p(on, false)], &h, &uri, ip, &[], &mut Vec::new());
        // The same input hashes the same; what is absent gives nothing.
        assert_eq!(
            one(HashOn::Header("x-user".into())),
            Some(xxhash(&[b"alice"]))
        );
        assert_eq!(
            one(HashOn::Cookie("session".into(), None)),
            Some(xxhash(&[b"s42"]))
        );
        assert_eq!(
            one(HashOn::QueryParameter("id".into())),
            Some(xxhash(&[b"7"]))
        );
        assert_eq!(one(HashOn::SourceIp), Some(xxhash(&[b"10.0.0.1"])));
        assert_eq!(one(HashOn::Header("x-none".into())), None);
        assert_eq!(one(HashOn::Cookie("none".into(), None)), None);
        // Two policies fold together; a terminal one that hashed ends the list; a missing
        // terminal one does not.
        let a = xxhash(&[b"alice"]);
        let b = xxhash(&[b"10.0.0.1"]);
        let both = [
            p(HashOn::Header("x-user".into()), false),
            p(HashOn::SourceIp, false),
        ];
        assert_eq!(
            request_hash(&both, &h, &uri, ip, &[], &mut Vec::new()),
            Some(a.rotate_left(1) ^ b)
        );
        let stop = [
            p(HashOn::Header("x-user".into()), true),
            p(HashOn::SourceIp, false),
        ];
        assert_eq!(
            request_hash(&stop, &h, &uri, ip, &[], &mut Vec::new()),
            Some(a)
        );
        let skip = [
            p(HashOn::Header("x-none".into()), true),
            p(HashOn::SourceIp, false),
        ];
        assert_eq!(
            request_hash(&skip, &h, &uri, ip, &[], &mut Vec::new()),
            Some(b)
        );
    }

    #[test]
    fn a_cookie_policy_with_a_ttl_generates_the_missing_cookie() {
        use crate::config::http::{CookieGen, HashOn, HashPolicy};
        let gen = std::sync::Arc::new(CookieGen {
            ttl: std::time::Duration::from_secs(3600),
            path: Some("/app".into()),
            attributes: vec![
                ("SameSite".into(), "Strict".into()),
                ("Secure".into(), String::new()),
            ],
        });
        let policy = [HashPolicy {
            on: HashOn::Cookie("route".into(), Some(gen)),
            terminal: false,
        }];
        let uri: Uri = "/".parse().unwrap();
        let peer: std::net::SocketAddr = "10.0.0.1:5555".parse().unwrap();
        let mut set = Vec::new();
        let first = request_hash(&policy, &HeaderMap::new(), &uri, peer, &[], &mut set);
        let value = format!("{:016x}", xxhash(&[b"10.0.0.1:5555"]));
        assert_eq!(first, Some(xxhash(&[value.as_bytes()])));
        assert_eq!(
            set[0].to_str().unwrap(),
            format!(
                "route=\"{value}\"; Max-Age=3600; Path=/app; SameSite=Strict; Secure; HttpOnly"
            )
        );
        // The client sends it back (quoted, as set): the same hash, nothing set again.
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            format!("route=\"{value}\"").parse().unwrap(),
        );
        let mut again = Vec::new();
        let other_peer: std::net::SocketAddr = "10.0.0.2:1".parse().unwrap();
        assert_eq!(
            request_hash(&policy, &h, &uri, other_peer, &[], &mut again),
            first
        );
        assert!(again.is_empty());
    }
}
