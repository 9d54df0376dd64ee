//! RBAC: `envoy.filters.network.rbac` and `envoy.filters.http.rbac` (and the HTTP filter's
//! per-route `RBACPerRoute`), their policies, permissions and principals. Field tables and
//! readers shared by the bootstrap and xDS; the policies are compiled once per config
//! (`crate::rbac`).

use super::http::{
    read_header_matcher, read_string_matcher, HeaderMatcher, StringMatcher, STRING_MATCHER,
};
use super::listener::read_cidr;
use super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::yaml::Value;
use super::Cidr;

use Field::{Ignored as I, Rejected as R, Supported as S};

pub const NETWORK_RBAC_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
pub const NETWORK_RBAC_NAME: &str = "envoy.filters.network.rbac";
pub const HTTP_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
pub const HTTP_RBAC_PER_ROUTE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
pub const HTTP_RBAC_NAMES: &[&str] = &["envoy.filters.http.rbac"];

pub(super) const NETWORK_RBAC: FieldTable = &[
    ("@type", S),
    ("stat_prefix", S),
    ("rules", S),
    ("shadow_rules", S),
    ("shadow_rules_stat_prefix", S),
    (
        "enforcement_type",
        I("policies are checked once, when the connection is accepted"),
    ),
    ("delay_deny", R("a denied connection is closed at once")),
    ("matcher", R("the matcher API is not supported; use rules")),
    (
        "shadow_matcher",
        R("the matcher API is not supported; use shadow_rules"),
    ),
];

pub(crate) const HTTP_RBAC: FieldTable = &[
    ("@type", S),
    ("rules", S),
    ("rules_stat_prefix", S),
    ("shadow_rules", S),
    ("shadow_rules_stat_prefix", S),
    (
        "track_per_rule_stats",
        I("only the allowed/denied totals are counted"),
    ),
    ("matcher", R("the matcher API is not supported; use rules")),
    (
        "shadow_matcher",
        R("the matcher API is not supported; use shadow_rules"),
    ),
];

pub(crate) const HTTP_RBAC_PER_ROUTE: FieldTable = &[("@type", S), ("rbac", S)];

pub(super) const RBAC_RULES: FieldTable = &[
    ("action", S),
    ("policies", S),
    (
        "audit_logging_options",
        R("audit loggers are not supported; use action LOG with access logs"),
    ),
];

pub(super) const POLICY: FieldTable = &[
    ("permissions", S),
    ("principals", S),
    ("condition", R("CEL conditions are not supported")),
    ("checked_condition", R("CEL conditions are not supported")),
];

pub(super) const PERMISSION: FieldTable = &[
    ("and_rules", S),
    ("or_rules", S),
    ("any", S),
    ("header", S),
    ("url_path", S),
    ("destination_ip", S),
    ("destination_port", S),
    ("destination_port_range", S),
    ("not_rule", S),
    ("requested_server_name", S),
    ("metadata", R("metadata matching is not supported")),
    ("matcher", R("extension matchers are not supported")),
    ("uri_template", R("URI templates are not supported")),
];

pub(super) const PRINCIPAL: FieldTable = &[
    ("and_ids", S),
    ("or_ids", S),
    ("any", S),
    ("authenticated", S),
    ("source_ip", S),
    ("direct_remote_ip", S),
    ("remote_ip", S),
    ("header", S),
    ("url_path", S),
    ("not_id", S),
    ("metadata", R("metadata matching is not supported")),
    ("filter_state", R("filter state matching is not supported")),
    ("custom", R("custom principals are not supported")),
];

pub(super) const SET: FieldTable = &[("rules", S), ("ids", S)];
pub(super) const AUTHENTICATED: FieldTable = &[("principal_name", S)];
pub(super) const PATH_MATCHER: FieldTable = &[("path", S)];
pub(super) const PORT_RANGE: FieldTable = &[("start", S), ("end", S)];

/// Deepest nesting of and/or/not accepted (evaluation recurses).
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacAction {
    Allow,
    Deny,
    /// Allowed; the match is only noted (access logs).
    Log,
}

/// One `RBAC` rule set: the action taken when a policy matches.
#[derive(Debug, Clone, PartialEq)]
pub struct RbacRules {
    pub action: RbacAction,
    pub policies: Vec<(String, Policy)>,
}

/// A policy matches when one of its permissions and one of its principals match.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatcher),
    UrlPath(StringMatcher),
    DestinationIp(Cidr),
    DestinationPort(u16),
    /// `[start, end)`, as Envoy's Int32Range.
    DestinationPortRange(u32, u32),
    RequestedServerName(StringMatcher),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// The peer presented a certificate; with a matcher, one of its URI SANs, else DNS SANs,
    /// must match.
    Authenticated(Option<StringMatcher>),
    DirectRemoteIp(Cidr),
    RemoteIp(Cidr),
    Header(HeaderMatcher),
    UrlPath(StringMatcher),
}

/// An RBAC filter's configuration (network or HTTP).
#[derive(Debug, Clone, PartialEq)]
pub struct RbacConfig {
    /// Network: `stat_prefix` (stats `<stat_prefix>.rbac.*`); HTTP: empty (the connection
    /// manager's `http.<prefix>.rbac.*`).
    pub stat_prefix: String,
    /// HTTP: `rules_stat_prefix`, put before the names of the enforced rules' stats.
    pub rules_stat_prefix: String,
    /// `None`: nothing is enforced.
    pub rules: Option<RbacRules>,
    pub shadow_rules: Option<RbacRules>,
    pub shadow_rules_stat_prefix: String,
    /// The typed_config as given, for `/config_dump`.
    pub source: serde_json::Value,
}

fn one_of<'v>(o: &Obj<'v>, kinds: &[&'static str], d: &mut Diagnostics) -> Option<&'static str> {
    let given: Vec<&'static str> = kinds
        .iter()
        .copied()
        .filter(|k| o.get(k).is_some())
        .collect();
    if given.len() != 1 {
        d.error(
            &o.path,
            format!("exactly one of {} is required", kinds.join(", ")),
        );
        return None;
    }
    Some(given[0])
}

fn path_matcher(o: &Obj, key: &str, d: &mut Diagnostics) -> Option<StringMatcher> {
    let p = o.object(key, PATH_MATCHER, d)?;
    let m = p
        .required("path", d)
        .and_then(|_| p.object("path", STRING_MATCHER, d))?;
    read_string_matcher(&m, d)
}

fn read_permission(v: &Value, path: &str, depth: usize, d: &mut Diagnostics) -> Option<Permission> {
    let o = Obj::new(v, path, PERMISSION, d)?;
    if depth > MAX_DEPTH {
        d.error(path, format!("nested deeper than {MAX_DEPTH} levels"));
        return None;
    }
    let kinds = [
        "and_rules",
        "or_rules",
        "any",
        "header",
        "url_path",
        "destination_ip",
        "destination_port",
        "destination_port_range",
        "not_rule",
        "requested_server_name",
    ];
    Some(match one_of(&o, &kinds, d)? {
        k @ ("and_rules" | "or_rules") => {
            let set = o.object(k, SET, d)?;
            let items = set.list("rules", d);
            if items.is_empty() {
                d.error(set.at("rules"), "needs at least one rule");
            }
            let rules: Vec<Permission> = items
                .iter()
                .filter_map(|(p, v)| read_permission(v, p, depth + 1, d))
                .collect();
            if k == "and_rules" {
                Permission::And(rules)
            } else {
                Permission::Or(rules)
            }
        }
        "any" => {
            if o.boolean("any", d) != Some(true) {
                d.error(o.at("any"), "must be true");
                return None;
            }
            Permission::Any
        }
        "header" => Permission::Header(read_header_matcher(o.get("header")?, &o.at("header"), d)?),
        "url_path" => Permission::UrlPath(path_matcher(&o, "url_path", d)?),
        "destination_ip" => Permission::DestinationIp(read_cidr(
            o.get("destination_ip")?,
            &o.at("destination_ip"),
            d,
        )?),
        "destination_port" => {
            Permission::DestinationPort(o.uint("destination_port", 0, 65535, d)? as u16)
        }
        "destination_port_range" => {
            let r = o.object("destination_port_range", PORT_RANGE, d)?;
            let start = r.uint("start", 0, 65536, d).unwrap_or(0) as u32;
            let end = r.uint("end", 0, 65536, d).unwrap_or(0) as u32;
            if start >= end {
                d.error(
                    &r.path,
                    "start must be below end (the range is [start, end))",
                );
            }
            Permission::DestinationPortRange(start, end)
        }
        "not_rule" => Permission::Not(Box::new(read_permission(
            o.get("not_rule")?,
            &o.at("not_rule"),
            depth + 1,
            d,
        )?)),
        _ => {
            let m = o.object("requested_server_name", STRING_MATCHER, d)?;
            Permission::RequestedServerName(read_string_matcher(&m, d)?)
        }
    })
}

fn read_principal(v: &Value, path: &str, depth: usize, d: &mut Diagnostics) -> Option<Principal> {
    let o = Obj::new(v, path, PRINCIPAL, d)?;
    if depth > MAX_DEPTH {
        d.error(path, format!("nested deeper than {MAX_DEPTH} levels"));
        return None;
    }
    let kinds = [
        "and_ids",
        "or_ids",
        "any",
        "authenticated",
        "source_ip",
        "direct_remote_ip",
        "remote_ip",
        "header",
        "url_path",
        "not_id",
    ];
    Some(match one_of(&o, &kinds, d)? {
        k @ ("and_ids" | "or_ids") => {
            let set = o.object(k, SET, d)?;
            let items = set.list("ids", d);
            if items.is_empty() {
                d.error(set.at("ids"), "needs at least one principal");
            }
            let ids: Vec<Principal> = items
                .iter()
                .filter_map(|(p, v)| read_principal(v, p, depth + 1, d))
                .collect();
            if k == "and_ids" {
                Principal::And(ids)
            } else {
                Principal::Or(ids)
            }
        }
        "any" => {
            if o.boolean("any", d) != Some(true) {
                d.error(o.at("any"), "must be true");
                return None;
            }
            Principal::Any
        }
        "authenticated" => {
            let a = o.object("authenticated", AUTHENTICATED, d)?;
            let m = match a.object("principal_name", STRING_MATCHER, d) {
                Some(m) => Some(read_string_matcher(&m, d)?),
                None => None,
            };
            Principal::Authenticated(m)
        }
        k @ ("source_ip" | "direct_remote_ip") => {
            Principal::DirectRemoteIp(read_cidr(o.get(k)?, &o.at(k), d)?)
        }
        "remote_ip" => Principal::RemoteIp(read_cidr(o.get("remote_ip")?, &o.at("remote_ip"), d)?),
        "header" => Principal::Header(read_header_matcher(o.get("header")?, &o.at("header"), d)?),
        "url_path" => Principal::UrlPath(path_matcher(&o, "url_path", d)?),
        _ => Principal::Not(Box::new(read_principal(
            o.get("not_id")?,
            &o.at("not_id"),
            depth + 1,
            d,
        )?)),
    })
}

fn read_rules(o: &Obj, key: &str, d: &mut Diagnostics) -> Option<RbacRules> {
    let r = o.object(key, RBAC_RULES, d)?;
    let action = match r.get("action") {
        None => RbacAction::Allow,
        Some(_) => match r
            .enumeration("action", &["ALLOW", "DENY", "LOG"], &[], d)?
            .as_str()
        {
            "ALLOW" => RbacAction::Allow,
            "DENY" => RbacAction::Deny,
            _ => RbacAction::Log,
        },
    };
    let mut policies = Vec::new();
    match r.get("policies") {
        None => {}
        Some(Value::Mapping(m)) => {
            let ppath = r.at("policies");
            for (k, v) in m.iter() {
                let Value::String(name) = k else {
                    d.error(&ppath, "policy names must be strings");
                    continue;
                };
                let path = super::walk::join(&ppath, name);
                let Some(p) = Obj::new(v, &path, POLICY, d) else {
                    continue;
                };
                let permissions: Vec<Permission> = p
                    .list("permissions", d)
                    .iter()
                    .filter_map(|(pp, v)| read_permission(v, pp, 0, d))
                    .collect();
                let principals: Vec<Principal> = p
                    .list("principals", d)
                    .iter()
                    .filter_map(|(pp, v)| read_principal(v, pp, 0, d))
                    .collect();
                if permissions.is_empty() {
                    d.error(
                        p.at("permissions"),
                        "a policy needs at least one permission",
                    );
                }
                if principals.is_empty() {
                    d.error(p.at("principals"), "a policy needs at least one principal");
                }
                policies.push((
                    name.clone(),
                    Policy {
                        permissions,
                        principals,
                    },
                ));
            }
        }
        Some(_) => d.error(
            r.at("policies"),
            "expected a mapping of policy names to policies",
        ),
    }
    Some(RbacRules { action, policies })
}

/// `envoy.filters.network.rbac`'s typed_config.
pub(super) fn read_network_rbac(o: &Obj, d: &mut Diagnostics) -> Option<RbacConfig> {
    let stat_prefix = o.required_string("stat_prefix", d)?;
    Some(RbacConfig {
        stat_prefix,
        rules_stat_prefix: String::new(),
        rules: read_rules(o, "rules", d),
        shadow_rules: read_rules(o, "shadow_rules", d),
        shadow_rules_stat_prefix: o.string("shadow_rules_stat_prefix", d).unwrap_or_default(),
        source: serde_json::Value::Null,
    })
}

/// `envoy.filters.http.rbac`'s typed_config (and the `rbac` of an `RBACPerRoute`).
pub(crate) fn read_http_rbac(o: &Obj, d: &mut Diagnostics) -> Option<RbacConfig> {
    Some(RbacConfig {
        stat_prefix: String::new(),
        rules_stat_prefix: o.string("rules_stat_prefix", d).unwrap_or_default(),
        rules: read_rules(o, "rules", d),
        shadow_rules: read_rules(o, "shadow_rules", d),
        shadow_rules_stat_prefix: o.string("shadow_rules_stat_prefix", d).unwrap_or_default(),
        source: serde_json::Value::Null,
    })
}

/// An HTTP RBAC config from YAML (tests).
#[cfg(test)]
pub(crate) fn parse_http_rbac(yaml: &str) -> Result<RbacConfig, Vec<super::Diag>> {
    let v = super::yaml::parse(yaml, 64).map_err(|e| {
        vec![super::Diag {
            path: String::new(),
            message: e.to_string(),
        }]
    })?;
    let mut d = Diagnostics::default();
    let cfg = Obj::new(&v, "rbac", HTTP_RBAC, &mut d).and_then(|o| read_http_rbac(&o, &mut d));
    match cfg {
        Some(c) if d.errors.is_empty() => Ok(c),
        _ => Err(d.errors),
    }
}

/// Every field table of this family, as documented in docs/tls.md.
#[cfg(test)]
pub(super) const TABLES: &[(&str, FieldTable)] = &[
    ("RBAC (network)", NETWORK_RBAC),
    ("RBAC (HTTP)", HTTP_RBAC),
    ("RBACPerRoute", HTTP_RBAC_PER_ROUTE),
    ("RBAC rules", RBAC_RULES),
    ("Policy", POLICY),
    ("Permission", PERMISSION),
    ("Principal", PRINCIPAL),
    ("Permission.Set / Principal.Set", SET),
    ("Authenticated", AUTHENTICATED),
    ("PathMatcher", PATH_MATCHER),
    ("Int32Range", PORT_RANGE),
];
