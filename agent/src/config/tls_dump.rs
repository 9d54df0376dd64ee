//! How TLS configuration is shown in `/config_dump`: Envoy's shapes, with private keys,
//! passwords, generic secrets and session ticket keys replaced by `[redacted]`.

use super::http::StringMatcher;
use super::tls::*;
use super::type_urls;
use super::DataSource;
use serde_json::{json, Map, Value as Json};

/// Envoy's placeholder for secret material in `/config_dump`.
pub const REDACTED: &str = "[redacted]";

/// Replaces inline private keys, passwords and generic secrets in `j` (anywhere) with
/// `[redacted]`, as Envoy's config dump does. File names stay: they are not secret.
pub fn redact(j: &mut Json) {
    match j {
        Json::Object(m) => {
            for (k, v) in m.iter_mut() {
                if matches!(k.as_str(), "session_ticket_keys" | "sessionTicketKeys") {
                    redact_all(v);
                    continue;
                }
                let secret = matches!(
                    k.as_str(),
                    "private_key" | "password" | "secret" | "privateKey"
                );
                if secret {
                    if let Json::Object(ds) = v {
                        for key in [
                            "inline_string",
                            "inline_bytes",
                            "inlineString",
                            "inlineBytes",
                        ] {
                            if let Some(x) = ds.get_mut(key) {
                                *x = json!(REDACTED);
                            }
                        }
                    }
                } else {
                    redact(v);
                }
            }
        }
        Json::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Every inline value under `j` redacted (session ticket keys).
fn redact_all(j: &mut Json) {
    match j {
        Json::Object(m) => {
            for (k, v) in m.iter_mut() {
                if matches!(
                    k.as_str(),
                    "inline_string" | "inline_bytes" | "inlineString" | "inlineBytes"
                ) {
                    *v = json!(REDACTED);
                } else {
                    redact_all(v);
                }
            }
        }
        Json::Array(a) => a.iter_mut().for_each(redact_all),
        _ => {}
    }
}

fn data_source_json(ds: &DataSource, secret: bool) -> Json {
    match ds {
        DataSource::File(p) => json!({"filename": p.display().to_string()}),
        DataSource::Inline(_) if secret => json!({"inline_string": REDACTED}),
        DataSource::Inline(s) => json!({"inline_string": s}),
    }
}

fn matcher_json(m: &StringMatcher) -> Json {
    use super::http::StringMatch as M;
    let mut j = match &m.kind {
        M::Exact(s) => json!({"exact": s}),
        M::Prefix(s) => json!({"prefix": s}),
        M::Suffix(s) => json!({"suffix": s}),
        M::Contains(s) => json!({"contains": s}),
        M::Regex(p) => json!({"safe_regex": {"regex": p.source}}),
    };
    if m.ignore_case {
        j["ignore_case"] = json!(true);
    }
    j
}

fn sds_json<T>(r: &SecretRef<T>) -> Json {
    match r {
        SecretRef::Named(n) => json!({"name": n}),
        SecretRef::Sds {
            name,
            initial_fetch_timeout,
        } => json!({"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3",
            "initial_fetch_timeout": super::duration_json(*initial_fetch_timeout)}}),
        SecretRef::File { name, path } => json!({"name": name, "sds_config": {
            "path_config_source": {"path": path.display().to_string()}, "resource_api_version": "V3"}}),
        SecretRef::Inline(_) => json!({}),
    }
}

fn certificate_json(c: &TlsCertificate) -> Json {
    json!({
        "certificate_chain": data_source_json(&c.chain, false),
        "private_key": data_source_json(&c.key, true),
    })
}

fn san_type_name(t: SanType) -> &'static str {
    match t {
        SanType::Dns => "DNS",
        SanType::Uri => "URI",
        SanType::Email => "EMAIL",
        SanType::IpAddress => "IP_ADDRESS",
        SanType::Any => "",
    }
}

fn validation_json(v: &Validation) -> Json {
    let mut j = Map::new();
    if let Some(ca) = &v.trusted_ca {
        j.insert("trusted_ca".into(), data_source_json(ca, false));
    }
    let (any, typed): (Vec<&SanMatcher>, Vec<&SanMatcher>) = v
        .san_matchers
        .iter()
        .partition(|m| m.san_type == SanType::Any);
    if !typed.is_empty() {
        j.insert(
            "match_typed_subject_alt_names".into(),
            json!(typed
                .iter()
                .map(|m| json!({"san_type": san_type_name(m.san_type), "matcher": matcher_json(&m.matcher)}))
                .collect::<Vec<_>>()),
        );
    }
    if !any.is_empty() {
        j.insert(
            "match_subject_alt_names".into(),
            json!(any
                .iter()
                .map(|m| matcher_json(&m.matcher))
                .collect::<Vec<_>>()),
        );
    }
    if let Some(crl) = &v.crl {
        j.insert("crl".into(), data_source_json(crl, false));
    }
    if v.only_verify_leaf_cert_crl {
        j.insert("only_verify_leaf_cert_crl".into(), json!(true));
    }
    Json::Object(j)
}

impl CommonTls {
    pub fn to_envoy_json(&self) -> Json {
        let mut j = Map::new();
        let inline: Vec<Json> = self
            .certificates
            .iter()
            .filter_map(|c| match c {
                SecretRef::Inline(c) => Some(certificate_json(c)),
                _ => None,
            })
            .collect();
        let named: Vec<Json> = self
            .certificates
            .iter()
            .filter_map(|c| match c {
                SecretRef::Inline(_) => None,
                r => Some(sds_json(r)),
            })
            .collect();
        if !inline.is_empty() {
            j.insert("tls_certificates".into(), json!(inline));
        }
        if !named.is_empty() {
            j.insert("tls_certificate_sds_secret_configs".into(), json!(named));
        }
        match (&self.validation, self.extra_san_matchers.is_empty()) {
            (Some(SecretRef::Inline(v)), _) => {
                j.insert("validation_context".into(), validation_json(v));
            }
            (Some(r), true) => {
                j.insert("validation_context_sds_secret_config".into(), sds_json(r));
            }
            (Some(r), false) => {
                let defaults = Validation {
                    san_matchers: self.extra_san_matchers.clone(),
                    ..Validation::default()
                };
                j.insert(
                    "combined_validation_context".into(),
                    json!({
                        "default_validation_context": validation_json(&defaults),
                        "validation_context_sds_secret_config": sds_json(r),
                    }),
                );
            }
            (None, _) => {}
        }
        if !self.alpn.is_empty() {
            j.insert("alpn_protocols".into(), json!(self.alpn));
        }
        let mut p = Map::new();
        let name = |v: TlsVersion| match v {
            TlsVersion::V1_2 => "TLSv1_2",
            TlsVersion::V1_3 => "TLSv1_3",
        };
        if let Some(v) = self.min_version {
            p.insert("tls_minimum_protocol_version".into(), json!(name(v)));
        }
        if let Some(v) = self.max_version {
            p.insert("tls_maximum_protocol_version".into(), json!(name(v)));
        }
        if !self.cipher_suites.is_empty() {
            p.insert("cipher_suites".into(), json!(self.cipher_suites));
        }
        if !self.ecdh_curves.is_empty() {
            p.insert("ecdh_curves".into(), json!(self.ecdh_curves));
        }
        if !p.is_empty() {
            j.insert("tls_params".into(), Json::Object(p));
        }
        Json::Object(j)
    }
}

impl DownstreamTls {
    /// The chain's `transport_socket`, private keys redacted.
    pub fn to_envoy_json(&self) -> Json {
        let mut t = json!({
            "@type": type_urls::DOWNSTREAM_TLS,
            "common_tls_context": self.common.to_envoy_json(),
        });
        for (k, v) in [
            (
                "require_client_certificate",
                self.require_client_certificate,
            ),
            ("require_sni", self.require_sni),
            (
                "disable_stateless_session_resumption",
                self.disable_stateless_resumption,
            ),
            (
                "disable_stateful_session_resumption",
                self.disable_stateful_resumption,
            ),
        ] {
            if v {
                t[k] = json!(true);
            }
        }
        json!({"name": "envoy.transport_sockets.tls", "typed_config": t})
    }
}

impl UpstreamTls {
    /// The cluster's `transport_socket`, private keys redacted.
    pub fn to_envoy_json(&self) -> Json {
        let mut t = json!({
            "@type": type_urls::UPSTREAM_TLS,
            "common_tls_context": self.common.to_envoy_json(),
        });
        if let Some(s) = &self.sni {
            t["sni"] = json!(s);
        }
        if self.auto_host_sni {
            t["auto_host_sni"] = json!(true);
        }
        if self.auto_sni_san_validation {
            t["auto_sni_san_validation"] = json!(true);
        }
        json!({"name": "envoy.transport_sockets.tls", "typed_config": t})
    }
}

impl Secret {
    /// Envoy's `Secret` JSON, private keys and generic secrets redacted.
    pub fn to_envoy_json(&self) -> Json {
        let mut j = json!({"name": self.name});
        match &self.kind {
            SecretKind::Certificate(c) => j["tls_certificate"] = certificate_json(c),
            SecretKind::Validation(v) => j["validation_context"] = validation_json(v),
            SecretKind::Generic(g) => {
                j["generic_secret"] = json!({"secret": data_source_json(g, true)})
            }
        }
        j
    }
}
