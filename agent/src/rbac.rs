//! Role-based access control on identities: the policies of `envoy.filters.network.rbac`
//! and `envoy.filters.http.rbac`, checked against a connection (peer certificate SANs,
//! addresses, SNI) and, for HTTP, a request head. Compiled once per config: checking walks
//! the policy tree, no allocation.
//!
//! ALLOW: allowed when a policy matches; DENY: denied when one matches; LOG: always allowed.
//! Shadow rules are checked and counted, never enforced. Stats: `<prefix>rbac.allowed`,
//! `denied`, `shadow_allowed`, `shadow_denied` (Envoy's names).

use crate::config::rbac::{Permission, Policy, Principal, RbacAction, RbacConfig, RbacRules};
use crate::stats::{Counter, Scope};
use crate::tls::TlsInfo;
use http::HeaderMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the policies look at.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The socket's peer (`direct_remote_ip`).
    pub peer: SocketAddr,
    /// The original client (`remote_ip`): the peer, as Plumb does not trust forwarded
    /// addresses for authorization.
    pub remote: SocketAddr,
    /// Where the client connected (its original destination when redirected).
    pub destination: SocketAddr,
    pub server_name: Option<&'a str>,
    pub tls: Option<&'a TlsInfo>,
    /// HTTP only.
    pub headers: Option<&'a HeaderMap>,
    /// HTTP only: the path without its query.
    pub path: Option<&'a str>,
    /// HTTP only: the pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`) header
    /// matchers may name.
    pub pseudo: Option<crate::http::route::Pseudo<'a>>,
}

#[derive(Debug)]
struct Counters {
    allowed: Arc<Counter>,
    denied: Arc<Counter>,
    shadow_allowed: Arc<Counter>,
    shadow_denied: Arc<Counter>,
}

/// The policies of one RBAC configuration (a filter's, or a route's `RBACPerRoute`).
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Option<RbacRules>,
    shadow: Option<RbacRules>,
}

impl Rules {
    pub fn new(cfg: &RbacConfig) -> Self {
        Self {
            rules: cfg.rules.clone(),
            shadow: cfg.shadow_rules.clone(),
        }
    }
}

/// A compiled RBAC filter: its policies and its stats.
#[derive(Debug)]
pub struct Rbac {
    rules: Rules,
    counters: Counters,
}

fn permission(p: &Permission, s: &Subject) -> bool {
    match p {
        Permission::Any => true,
        Permission::And(v) => v.iter().all(|p| permission(p, s)),
        Permission::Or(v) => v.iter().any(|p| permission(p, s)),
        Permission::Not(p) => !permission(p, s),
        Permission::Header(h) => s
            .headers
            .is_some_and(|hs| crate::http::route::header_matches_with(h, hs, s.pseudo)),
        Permission::UrlPath(m) => s.path.is_some_and(|p| m.matches(p)),
        Permission::DestinationIp(c) => c.contains(s.destination.ip().to_canonical()),
        Permission::DestinationPort(p) => s.destination.port() == *p,
        Permission::DestinationPortRange(a, b) => {
            let p = s.destination.port() as u32;
            *a <= p && p < *b
        }
        Permission::RequestedServerName(m) => m.matches(s.server_name.unwrap_or("")),
    }
}

fn principal(p: &Principal, s: &Subject) -> bool {
    match p {
        Principal::Any => true,
        Principal::And(v) => v.iter().all(|p| principal(p, s)),
        Principal::Or(v) => v.iter().any(|p| principal(p, s)),
        Principal::Not(p) => !principal(p, s),
        Principal::Authenticated(m) => match (s.tls, m) {
            // Envoy: any TLS connection, with or without a peer certificate.
            (Some(_), None) => true,
            // Envoy: any URI SAN, then any DNS SAN, then the subject.
            (Some(t), Some(m)) => {
                t.peer_uri_sans.iter().any(|n| m.matches(n))
                    || t.peer_dns_sans.iter().any(|n| m.matches(n))
                    || t.peer_subject.as_deref().is_some_and(|n| m.matches(n))
            }
            (None, _) => false,
        },
        Principal::DirectRemoteIp(c) => c.contains(s.peer.ip().to_canonical()),
        Principal::RemoteIp(c) => c.contains(s.remote.ip().to_canonical()),
        Principal::Header(h) => s
            .headers
            .is_some_and(|hs| crate::http::route::header_matches_with(h, hs, s.pseudo)),
        Principal::UrlPath(m) => s.path.is_some_and(|p| m.matches(p)),
    }
}

fn policy(p: &Policy, s: &Subject) -> bool {
    p.permissions.iter().any(|x| permission(x, s)) && p.principals.iter().any(|x| principal(x, s))
}

/// The first policy that matches, by name.
fn matched<'r>(rules: &'r RbacRules, s: &Subject) -> Option<&'r str> {
    rules
        .policies
        .iter()
        .find(|(_, p)| policy(p, s))
        .map(|(n, _)| n.as_str())
}

fn allows(rules: &RbacRules, s: &Subject) -> bool {
    let hit = matched(rules, s).is_some();
    match rules.action {
        RbacAction::Allow => hit,
        RbacAction::Deny => !hit,
        RbacAction::Log => true,
    }
}

impl Rbac {
    /// `scope`: where the filter's stats go (`<prefix>rbac.` is added here).
    pub fn new(cfg: &RbacConfig, scope: &Scope) -> Self {
        let p = &cfg.rules_stat_prefix;
        let sp = &cfg.shadow_rules_stat_prefix;
        Self {
            rules: Rules::new(cfg),
            counters: Counters {
                allowed: scope.counter(&format!("rbac.{p}allowed")),
                denied: scope.counter(&format!("rbac.{p}denied")),
                shadow_allowed: scope.counter(&format!("rbac.{sp}shadow_allowed")),
                shadow_denied: scope.counter(&format!("rbac.{sp}shadow_denied")),
            },
        }
    }

    /// Whether `s` may go on; counts the decision (and the shadow rules' one).
    pub fn check(&self, s: &Subject) -> bool {
        self.check_with(&self.rules, s)
    }

    /// The same with other policies (a route's own), counted under this filter's stats.
    pub fn check_with(&self, rules: &Rules, s: &Subject) -> bool {
        if let Some(shadow) = &rules.shadow {
            if allows(shadow, s) {
                self.counters.shadow_allowed.inc();
            } else {
                self.counters.shadow_denied.inc();
            }
        }
        let Some(rules) = &rules.rules else {
            return true;
        };
        let ok = allows(rules, s);
        if ok {
            self.counters.allowed.inc();
        } else {
            self.counters.denied.inc();
            tracing::debug!(peer = %s.peer, "rbac: denied");
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;

    /// An HTTP RBAC filter read from its YAML, as the bootstrap would.
    fn rbac(yaml: &str) -> Rbac {
        let cfg = crate::config::rbac::parse_http_rbac(yaml).unwrap();
        Rbac::new(&cfg, &Store::new().root_scope("t"))
    }

    fn subject<'a>(tls: Option<&'a TlsInfo>, headers: &'a HeaderMap, path: &'a str) -> Subject<'a> {
        Subject {
            peer: "10.1.2.3:5000".parse().unwrap(),
            remote: "10.1.2.3:5000".parse().unwrap(),
            destination: "10.0.0.9:8443".parse().unwrap(),
            server_name: Some("api.example"),
            tls,
            headers: Some(headers),
            path: Some(path),
            pseudo: None,
        }
    }

    #[test]
    fn policies_combine_permissions_and_principals_as_envoy_does() {
        let r = rbac(
            r#"
rules:
  action: ALLOW
  policies:
    reader:
      permissions:
      - and_rules: {rules: [{destination_port: 8443}, {url_path: {path: {prefix: /read}}}]}
      - requested_server_name: {exact: other.example}
      principals:
      - authenticated: {principal_name: {prefix: "spiffe://test/ns/r/"}}
    admin:
      permissions: [{not_rule: {header: {name: x-dry-run, present_match: true}}}]
      principals:
      - and_ids: {ids: [{direct_remote_ip: {address_prefix: 10.1.0.0, prefix_len: 16}},
                        {header: {name: x-role, string_match: {exact: admin}}}]}
"#,
        );
        let reader = TlsInfo {
            peer_uri_sans: vec!["spiffe://test/ns/r/sa/x".into()],
            peer_certificate: true,
            ..TlsInfo::default()
        };
        let none = HeaderMap::new();
        assert!(r.check(&subject(Some(&reader), &none, "/read/1")));
        // Wrong path and no other permission: the reader policy does not match.
        assert!(!r.check(&subject(Some(&reader), &none, "/write")));
        // No certificate: not authenticated.
        assert!(!r.check(&subject(None, &none, "/read/1")));
        let mut admin = HeaderMap::new();
        admin.insert("x-role", "admin".parse().unwrap());
        assert!(r.check(&subject(None, &admin, "/anything")));
        admin.insert("x-dry-run", "1".parse().unwrap());
        assert!(!r.check(&subject(None, &admin, "/anything")));
        let deny = rbac(
            "rules: {action: DENY, policies: {p: {permissions: [{destination_port_range: {start: 8000, end: 9000}}], principals: [{any: true}]}}}",
        );
        assert!(!deny.check(&subject(None, &none, "/")));
        let log = rbac(
            "rules: {action: LOG, policies: {p: {permissions: [{any: true}], principals: [{any: true}]}}}",
        );
        assert!(log.check(&subject(None, &none, "/")));
        // No rules: nothing enforced.
        assert!(rbac("{}").check(&subject(None, &none, "/")));
    }

    #[test]
    fn pseudo_headers_and_every_san_kind_are_seen() {
        let deny_delete = rbac(
            "rules: {action: DENY, policies: {p: {permissions: [{header: {name: ':method', string_match: {exact: DELETE}}}], principals: [{any: true}]}}}",
        );
        let none = HeaderMap::new();
        let mut s = subject(None, &none, "/x");
        s.pseudo = Some(crate::http::route::Pseudo {
            scheme: "https",
            method: "DELETE",
            path: "/x",
            authority: "api.example",
        });
        assert!(!deny_delete.check(&s));
        s.pseudo = Some(crate::http::route::Pseudo {
            method: "GET",
            ..s.pseudo.unwrap()
        });
        assert!(deny_delete.check(&s));
        // principal_name: any URI SAN, then any DNS SAN, then the subject.
        let by_dns = rbac(
            "rules: {action: ALLOW, policies: {p: {permissions: [{any: true}], principals: [{authenticated: {principal_name: {exact: db.example}}}]}}}",
        );
        let peer = TlsInfo {
            peer_uri_sans: vec!["spiffe://x/ns/a/sa/b".into()],
            peer_dns_sans: vec!["db.example".into()],
            peer_certificate: true,
            ..TlsInfo::default()
        };
        assert!(by_dns.check(&subject(Some(&peer), &none, "/")));
        // authenticated without a name: any TLS connection.
        let any_tls = rbac(
            "rules: {action: ALLOW, policies: {p: {permissions: [{any: true}], principals: [{authenticated: {}}]}}}",
        );
        assert!(any_tls.check(&subject(Some(&TlsInfo::default()), &none, "/")));
        assert!(!any_tls.check(&subject(None, &none, "/")));
        // Empty sets are refused, as Envoy refuses them.
        let e = crate::config::rbac::parse_http_rbac(
            "rules: {policies: {p: {permissions: [{and_rules: {rules: []}}], principals: [{any: true}]}}}",
        )
        .unwrap_err();
        assert!(e[0].message.contains("at least one"), "{e:?}");
    }
}
