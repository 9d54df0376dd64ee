//! Command-line overrides of the bootstrap (Envoy's `--service-node`, `--service-cluster`,
//! `--service-zone`, plus Plumb's `--node-metadata` and `--redirect-proxy-address`), applied to
//! the parsed document before it is validated — so a bootstrap shared by every node (a
//! Kubernetes ConfigMap) gets each node's identity and address from the downward API, the
//! result is validated as a whole, `/config_dump` shows what is in force, and a SIGHUP reload
//! applies the same overrides again.

use super::extensions::REDIRECT_TYPE;
use super::walk::{snake_case, Diag};
use super::yaml::{Mapping, Value};
use std::net::IpAddr;

/// Plumb's redirection extension in `bootstrap_extensions`: found by its `@type`, as the
/// bootstrap reader does (or by its conventional name).
const REDIRECT_EXTENSION: &str = "plumb.redirect";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// node.id
    pub node_id: Option<String>,
    /// node.cluster
    pub node_cluster: Option<String>,
    /// node.locality.zone (an empty value leaves the zone unset)
    pub node_zone: Option<String>,
    /// node.metadata entries (string values), in order.
    pub node_metadata: Vec<(String, String)>,
    /// plumb.redirect proxy_address / proxy_address_v6, by family.
    pub redirect_proxy_addresses: Vec<IpAddr>,
}

/// `KEY=VALUE` for `--node-metadata`.
pub fn parse_metadata_entry(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got \"{s}\"")),
    }
}

/// The key of `map` that reads as `snake` (the bootstrap accepts snake_case and
/// lowerCamelCase alike).
fn key_of(map: &Mapping, snake: &str) -> Option<Value> {
    map.keys()
        .find(|k| k.as_str().is_some_and(|k| snake_case(k) == snake))
        .cloned()
}

/// The mapping at `key` in `map` (under either spelling), created when absent; `None` when
/// something else is there (left for validation to report).
fn child<'a>(map: &'a mut Mapping, key: &str) -> Option<&'a mut Mapping> {
    let k = key_of(map, key).unwrap_or_else(|| Value::String(key.to_string()));
    if map.get(&k).is_none_or(Value::is_null) {
        map.insert(k.clone(), Value::Mapping(Mapping::new()));
    }
    map.get_mut(&k).and_then(Value::as_mapping_mut)
}

/// Sets `key`, replacing it under either spelling (two spellings would be "given twice").
fn set(map: &mut Mapping, key: &str, value: Value) {
    while let Some(k) = key_of(map, key) {
        map.remove(&k);
    }
    map.insert(Value::String(key.to_string()), value);
}

/// The value at `key` under either spelling.
fn get_mut<'a>(map: &'a mut Mapping, key: &str) -> Option<&'a mut Value> {
    let k = key_of(map, key)?;
    map.get_mut(&k)
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Applies the overrides to a parsed bootstrap; returns warnings for overrides that have
    /// nothing to apply to.
    pub fn apply(&self, doc: &mut Value) -> Vec<Diag> {
        let mut warnings = Vec::new();
        if self.is_empty() {
            return warnings;
        }
        if doc.is_null() {
            *doc = Value::Mapping(Mapping::new());
        }
        let Some(root) = doc.as_mapping_mut() else {
            return warnings; // not a mapping: validation reports it
        };
        let wants_node = self.node_id.is_some()
            || self.node_cluster.is_some()
            || self.node_zone.is_some()
            || !self.node_metadata.is_empty();
        if wants_node {
            if let Some(node) = child(root, "node") {
                if let Some(id) = &self.node_id {
                    set(node, "id", Value::String(id.clone()));
                }
                if let Some(c) = &self.node_cluster {
                    set(node, "cluster", Value::String(c.clone()));
                }
                if let Some(z) = self.node_zone.as_ref().filter(|z| !z.is_empty()) {
                    if let Some(loc) = child(node, "locality") {
                        set(loc, "zone", Value::String(z.clone()));
                    }
                }
                if !self.node_metadata.is_empty() {
                    if let Some(md) = child(node, "metadata") {
                        // Metadata keys are opaque: exact, no spelling conversion.
                        for (k, v) in &self.node_metadata {
                            md.insert(Value::String(k.clone()), Value::String(v.clone()));
                        }
                    }
                }
            }
        }
        if !self.redirect_proxy_addresses.is_empty() {
            let redirect = get_mut(root, "bootstrap_extensions")
                .and_then(Value::as_sequence_mut)
                .and_then(|exts| {
                    exts.iter_mut().find_map(|e| {
                        let e = e.as_mapping_mut()?;
                        let named = key_of(e, "name")
                            .and_then(|k| e.get(&k))
                            .and_then(Value::as_str)
                            == Some(REDIRECT_EXTENSION);
                        let tc = get_mut(e, "typed_config")?.as_mapping_mut()?;
                        let typed = tc.get("@type").and_then(Value::as_str) == Some(REDIRECT_TYPE);
                        (typed || named).then_some(tc)
                    })
                });
            match redirect {
                Some(tc) => {
                    for ip in &self.redirect_proxy_addresses {
                        let key = if ip.is_ipv4() {
                            "proxy_address"
                        } else {
                            "proxy_address_v6"
                        };
                        set(tc, key, Value::String(ip.to_string()));
                    }
                }
                None => warnings.push(Diag {
                    path: "--redirect-proxy-address".into(),
                    message: format!(
                        "ignored: the configuration has no {REDIRECT_EXTENSION} extension"
                    ),
                }),
            }
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_fields_are_set_and_created() {
        let mut doc: Value = super::super::yaml::parse_test("node: {id: a}\nadmin: {}").unwrap();
        let o = Overrides {
            node_id: Some("n1".into()),
            node_zone: Some("z1".into()),
            node_metadata: vec![("HOST_IP".into(), "10.0.0.5".into())],
            ..Overrides::default()
        };
        assert!(o.apply(&mut doc).is_empty());
        assert_eq!(doc["node"]["id"], "n1");
        assert_eq!(doc["node"]["locality"]["zone"], "z1");
        assert_eq!(doc["node"]["metadata"]["HOST_IP"], "10.0.0.5");
        // Metadata keys are kept exactly as given, next to similar-looking ones.
        let mut doc: Value =
            super::super::yaml::parse_test("node: {metadata: {clusterId: a}}").unwrap();
        let o = Overrides {
            node_metadata: vec![("cluster_id".into(), "b".into())],
            ..Overrides::default()
        };
        o.apply(&mut doc);
        assert_eq!(doc["node"]["metadata"]["clusterId"], "a");
        assert_eq!(doc["node"]["metadata"]["cluster_id"], "b");
        // An empty zone (an unset downward-API label) leaves the zone alone.
        let mut doc: Value = super::super::yaml::parse_test("admin: {}").unwrap();
        let o = Overrides {
            node_zone: Some(String::new()),
            ..Overrides::default()
        };
        o.apply(&mut doc);
        assert!(doc["node"].get("locality").is_none());
    }

    #[test]
    fn redirect_proxy_addresses_go_to_the_extension_by_family() {
        let mut doc: Value = super::super::yaml::parse_test(
            "bootstrap_extensions:\n- name: other\n- name: plumb.redirect\n  typed_config: {listener: out}\n",
        )
        .unwrap();
        let o = Overrides {
            redirect_proxy_addresses: vec!["10.1.2.3".parse().unwrap(), "fd00::1".parse().unwrap()],
            ..Overrides::default()
        };
        assert!(o.apply(&mut doc).is_empty());
        let tc = &doc["bootstrap_extensions"][1]["typed_config"];
        assert_eq!(tc["proxy_address"], "10.1.2.3");
        assert_eq!(tc["proxy_address_v6"], "fd00::1");
        assert!(doc["bootstrap_extensions"][0].get("typed_config").is_none());
        // lowerCamelCase spellings are found and replaced, never duplicated.
        let mut doc: Value = super::super::yaml::parse_test(
            "bootstrapExtensions:\n- name: plumb.redirect\n  typedConfig: {listener: out, proxyAddress: 1.1.1.1}\n",
        )
        .unwrap();
        assert!(o.apply(&mut doc).is_empty());
        let tc = &doc["bootstrapExtensions"][0]["typedConfig"];
        assert_eq!(tc["proxy_address"], "10.1.2.3");
        assert!(tc.get("proxyAddress").is_none());
        // Found by @type whatever its name.
        let mut doc: Value = super::super::yaml::parse_test(
            "bootstrap_extensions:\n- name: capture\n  typed_config: {\"@type\": type.googleapis.com/plumb.redirect.v1.Redirect}\n",
        )
        .unwrap();
        assert!(o.apply(&mut doc).is_empty());
        assert_eq!(
            doc["bootstrap_extensions"][0]["typed_config"]["proxy_address"],
            "10.1.2.3"
        );
        // Without the extension: a warning, nothing changed.
        let mut doc: Value = super::super::yaml::parse_test("admin: {}").unwrap();
        let w = o.apply(&mut doc);
        assert_eq!(w.len(), 1);
        assert!(w[0].message.contains("no plumb.redirect"));
    }

    #[test]
    fn metadata_entries_parse() {
        assert_eq!(
            parse_metadata_entry("A=b=c").unwrap(),
            ("A".into(), "b=c".into())
        );
        assert!(parse_metadata_entry("novalue").is_err());
        assert!(parse_metadata_entry("=x").is_err());
    }
}
