//! The TLS family of the configuration: `transport_socket` `envoy.transport_sockets.tls` with
//! a `DownstreamTlsContext` (filter chains) or an `UpstreamTlsContext` (clusters), their
//! `CommonTlsContext`, certificates, validation contexts and data sources, and the bootstrap's
//! static `secrets`. Field tables and readers shared by the bootstrap and xDS (LDS, CDS).
//!
//! Secrets named by `*_sds_secret_config` without an `sds_config` are the bootstrap's static
//! `secrets`; the reader only records the name, and `tls::Secrets` resolves it when the
//! listener or cluster is built (an unknown name is an error there, naming the field).

use super::http::{read_string_matcher, StringMatcher, STRING_MATCHER};
use super::type_urls;
use super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::yaml::Value;
use super::DataSource;
use serde_json::{json, Map, Value as Json};
use std::time::Duration;

use Field::{Ignored as I, Rejected as R, Supported as S};

pub(super) const TRANSPORT_SOCKET: FieldTable = &[("name", S), ("typed_config", S)];

pub(super) const DOWNSTREAM_TLS_CONTEXT: FieldTable = &[
    ("@type", S),
    ("common_tls_context", S),
    ("require_client_certificate", S),
    ("require_sni", S),
    ("disable_stateless_session_resumption", S),
    ("disable_stateful_session_resumption", S),
    (
        "full_scan_certs_on_sni_mismatch",
        I("every certificate's SANs are always scanned for the SNI"),
    ),
    ("ocsp_staple_policy", S),
    (
        "session_ticket_keys",
        I("rustls generates and rotates its own ticket keys"),
    ),
    (
        "session_ticket_keys_sds_secret_config",
        I("rustls generates and rotates its own ticket keys"),
    ),
    (
        "session_timeout",
        I("rustls' session lifetime (tickets: 6 hours) applies"),
    ),
    (
        "prefer_client_ciphers",
        I("the server's cipher preference order applies"),
    ),
];

pub(super) const UPSTREAM_TLS_CONTEXT: FieldTable = &[
    ("@type", S),
    ("sni", S),
    ("common_tls_context", S),
    (
        "auto_host_sni",
        R("SNI from the request's host is not supported yet; set sni"),
    ),
    ("auto_sni_san_validation", S),
    (
        "allow_renegotiation",
        R("renegotiation is never allowed (rustls does not implement it)"),
    ),
    (
        "max_session_keys",
        I("each cluster keeps rustls' session cache (256 sessions)"),
    ),
    ("enforce_rsa_key_usage", I("rustls enforces key usage")),
];

pub(super) const COMMON_TLS_CONTEXT: FieldTable = &[
    ("tls_params", S),
    ("tls_certificates", S),
    ("tls_certificate_sds_secret_configs", S),
    ("validation_context", S),
    ("validation_context_sds_secret_config", S),
    ("combined_validation_context", S),
    ("alpn_protocols", S),
    ("key_log", I("keys are never logged")),
    (
        "tls_certificate_provider_instance",
        R("certificate providers are not supported; use tls_certificates or SDS"),
    ),
    (
        "validation_context_certificate_provider_instance",
        R("certificate providers are not supported; use validation_context or SDS"),
    ),
    (
        "custom_handshaker",
        R("custom handshakers are not supported"),
    ),
    (
        "custom_tls_certificate_selector",
        R("certificates are selected by SNI and the client's signature schemes"),
    ),
];

pub(super) const TLS_PARAMS: FieldTable = &[
    ("tls_minimum_protocol_version", S),
    ("tls_maximum_protocol_version", S),
    ("cipher_suites", S),
    ("ecdh_curves", S),
    (
        "signature_algorithms",
        R("the signature algorithms are rustls' (ECDSA, RSA-PSS, RSA PKCS#1, Ed25519)"),
    ),
    (
        "compliance_policies",
        R("compliance policies are not supported"),
    ),
];

pub(super) const CERT_VALIDATION_CONTEXT: FieldTable = &[
    ("trusted_ca", S),
    ("match_typed_subject_alt_names", S),
    ("match_subject_alt_names", S),
    ("crl", S),
    ("only_verify_leaf_cert_crl", S),
    ("trust_chain_verification", S),
    ("verify_certificate_spki", R("pinning is not supported")),
    ("verify_certificate_hash", R("pinning is not supported")),
    (
        "allow_expired_certificate",
        R("expired certificates are never accepted"),
    ),
    (
        "max_verify_depth",
        I("chains are verified up to the verifier's own depth limit"),
    ),
    ("watched_directory", I("files are re-read when they change")),
    (
        "custom_validator_config",
        R("custom certificate validators are not supported"),
    ),
    (
        "system_root_certs",
        R("system roots are not used; give trusted_ca"),
    ),
];

pub(super) const COMBINED_VALIDATION_CONTEXT: FieldTable = &[
    ("default_validation_context", S),
    ("validation_context_sds_secret_config", S),
];

pub(super) const SAN_MATCHER: FieldTable = &[("san_type", S), ("matcher", S), ("oid", S)];

pub(super) const TLS_CERTIFICATE: FieldTable = &[
    ("certificate_chain", S),
    ("private_key", S),
    ("watched_directory", I("files are re-read when they change")),
    ("password", R("encrypted keys are not supported")),
    (
        "private_key_provider",
        R("private key providers are not supported"),
    ),
    ("pkcs12", R("use PEM certificate_chain and private_key")),
    ("ocsp_staple", R("OCSP stapling is not supported")),
    ("signed_certificate_timestamp", R("SCTs are not supported")),
];

pub(super) const DATA_SOURCE: FieldTable = &[
    ("filename", S),
    ("inline_string", S),
    ("inline_bytes", S),
    ("environment_variable", S),
    ("watched_directory", I("files are re-read when they change")),
];

pub(super) const SDS_SECRET_CONFIG: FieldTable = &[("name", S), ("sds_config", S)];

/// The `sds_config` of a secret: the ADS stream, or a file (file-based SDS).
pub(super) const SDS_CONFIG_SOURCE: FieldTable = &[
    ("ads", S),
    ("path_config_source", S),
    ("path", S),
    ("resource_api_version", S),
    ("initial_fetch_timeout", S),
    (
        "api_config_source",
        R("secrets come over the ADS stream ({ads: {}}) or from a file (path_config_source)"),
    ),
    (
        "self",
        R("secrets come over the ADS stream ({ads: {}}) or from a file (path_config_source)"),
    ),
    ("authorities", I("xDS-TP authorities are not used")),
];

pub(super) const PATH_CONFIG_SOURCE: FieldTable = &[("path", S), ("watched_directory", S)];
pub(super) const WATCHED_DIRECTORY: FieldTable = &[("path", S)];

pub(super) const SECRET: FieldTable = &[
    ("@type", S),
    ("name", S),
    ("tls_certificate", S),
    ("validation_context", S),
    ("generic_secret", S),
    (
        "session_ticket_keys",
        I("rustls generates and rotates its own ticket keys"),
    ),
];

pub(super) const GENERIC_SECRET: FieldTable = &[("secret", S)];

/// A certificate chain and its private key (PEM).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsCertificate {
    pub chain: DataSource,
    pub key: DataSource,
}

/// Which SAN a matcher looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    Dns,
    Uri,
    Email,
    IpAddress,
    /// `match_subject_alt_names` (deprecated): any of DNS, URI, email, IP.
    Any,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SanMatcher {
    pub san_type: SanType,
    pub matcher: StringMatcher,
}

/// A `CertificateValidationContext`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Validation {
    /// `None`: the peer's chain is not verified (Envoy's behaviour without `trusted_ca`).
    pub trusted_ca: Option<DataSource>,
    /// Any one matching is enough; empty: any SAN.
    pub san_matchers: Vec<SanMatcher>,
    pub crl: Option<DataSource>,
    pub only_verify_leaf_cert_crl: bool,
}

/// Something named or given inline.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretRef<T> {
    Inline(T),
    /// A static secret of the bootstrap.
    Named(String),
    /// A secret from SDS over the ADS stream; listeners warm until it arrives (at most
    /// `initial_fetch_timeout`).
    Sds {
        name: String,
        initial_fetch_timeout: Duration,
    },
    /// A secret read from a file holding a DiscoveryResponse (file-based SDS), re-read when
    /// the file (or the symlink it is reached through) changes.
    File {
        name: String,
        path: std::path::PathBuf,
    },
}

impl<T> SecretRef<T> {
    /// The SDS (ADS) name, if it is one.
    pub fn sds_name(&self) -> Option<(&str, Duration)> {
        match self {
            SecretRef::Sds {
                name,
                initial_fetch_timeout,
            } => Some((name, *initial_fetch_timeout)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// A `CommonTlsContext`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CommonTls {
    pub certificates: Vec<SecretRef<TlsCertificate>>,
    pub validation: Option<SecretRef<Validation>>,
    /// `combined_validation_context`: the named secret's trust plus these matchers.
    pub extra_san_matchers: Vec<SanMatcher>,
    pub alpn: Vec<String>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
    /// TLS 1.2 cipher suites by their OpenSSL names, in preference order (TLS 1.3's are
    /// always offered, as in Envoy). Empty: the defaults.
    pub cipher_suites: Vec<String>,
    /// Key exchange groups by Envoy's names (`X25519`, `P-256`, `P-384`). Empty: defaults.
    pub ecdh_curves: Vec<String>,
}

/// A `DownstreamTlsContext` on a filter chain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DownstreamTls {
    pub common: CommonTls,
    pub require_client_certificate: bool,
    pub require_sni: bool,
    pub disable_stateless_resumption: bool,
    pub disable_stateful_resumption: bool,
    /// `transport_socket_connect_timeout` of the chain (Envoy's default: none; Plumb keeps
    /// a bound of 10 s so a handshake that never finishes cannot hold a connection).
    pub handshake_timeout: Duration,
}

/// An `UpstreamTlsContext` on a cluster.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UpstreamTls {
    pub common: CommonTls,
    pub sni: Option<String>,
    /// `auto_host_sni`: the SNI is the request's host (HTTP clusters).
    pub auto_host_sni: bool,
    /// `auto_sni_san_validation`: the server certificate must be valid for the SNI sent.
    pub auto_sni_san_validation: bool,
}

/// A static secret of the bootstrap (`static_resources.secrets[]`).
#[derive(Debug, Clone, PartialEq)]
pub enum SecretKind {
    Certificate(TlsCertificate),
    Validation(Validation),
    Generic(DataSource),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Secret {
    pub name: String,
    pub kind: SecretKind,
}

/// Envoy's default when no `transport_socket_connect_timeout` is given is none; a bound
/// keeps a silent client from holding a connection forever.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS 1.2 suites rustls (ring) implements, by the OpenSSL names Envoy uses.
pub const TLS12_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

/// TLS 1.3 suites: Envoy does not configure them, but names them in `ssl.ciphers.*`; given
/// in `cipher_suites` they are accepted and always on.
pub const TLS13_CIPHER_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

pub const ECDH_CURVES: &[&str] = &["X25519", "P-256", "P-384"];

/// Most bytes a PEM data source may hold (a chain of a few certificates is a few KiB).
pub const MAX_DATA_SOURCE: usize = 1 << 20;

pub(super) fn read_data_source(o: &Obj, d: &mut Diagnostics) -> Option<DataSource> {
    let given: Vec<&str> = [
        "filename",
        "inline_string",
        "inline_bytes",
        "environment_variable",
    ]
    .into_iter()
    .filter(|k| o.get(k).is_some())
    .collect();
    if given.len() != 1 {
        d.error(
            &o.path,
            "expected exactly one of filename, inline_string, inline_bytes or environment_variable",
        );
        return None;
    }
    match given[0] {
        "filename" => {
            let f = o.string("filename", d)?;
            if f.is_empty() {
                d.error(o.at("filename"), "must not be empty");
                return None;
            }
            Some(DataSource::File(std::path::PathBuf::from(f)))
        }
        "inline_string" => Some(DataSource::Inline(o.string("inline_string", d)?)),
        "inline_bytes" => {
            let s = o.string("inline_bytes", d)?;
            match decode_base64(&s) {
                Some(b) => match String::from_utf8(b) {
                    Ok(s) => Some(DataSource::Inline(s)),
                    Err(_) => {
                        d.error(o.at("inline_bytes"), "expected PEM text (base64 of UTF-8)");
                        None
                    }
                },
                None => {
                    d.error(o.at("inline_bytes"), "invalid base64");
                    None
                }
            }
        }
        _ => {
            let var = o.string("environment_variable", d)?;
            match std::env::var(&var) {
                Ok(v) => Some(DataSource::Inline(v)),
                Err(_) => {
                    d.error(
                        o.at("environment_variable"),
                        format!("environment variable \"{var}\" is not set (or not UTF-8)"),
                    );
                    None
                }
            }
        }
    }
}

/// Standard base64 (with or without padding), as proto3 JSON renders bytes.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => continue,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn read_certificate(v: &Value, path: &str, d: &mut Diagnostics) -> Option<TlsCertificate> {
    let c = Obj::new(v, path, TLS_CERTIFICATE, d)?;
    let chain = c.required("certificate_chain", d).and_then(|_| {
        c.object("certificate_chain", DATA_SOURCE, d)
            .and_then(|o| read_data_source(&o, d))
    });
    let key = c.required("private_key", d).and_then(|_| {
        c.object("private_key", DATA_SOURCE, d)
            .and_then(|o| read_data_source(&o, d))
    });
    let cert = TlsCertificate {
        chain: chain?,
        key: key?,
    };
    // Loaded now so a bad chain, key or pair is refused with its path (a bootstrap error,
    // an xDS NACK) instead of failing handshakes later.
    let provider = rustls::crypto::ring::default_provider();
    if let Err(e) = crate::tls::material::certified_key(&cert, &provider) {
        d.error(path, e);
        return None;
    }
    Some(cert)
}

fn read_san_matcher(v: &Value, path: &str, d: &mut Diagnostics) -> Option<SanMatcher> {
    let m = Obj::new(v, path, SAN_MATCHER, d)?;
    let san_type = match m
        .required("san_type", d)
        .and_then(|_| {
            m.enumeration(
                "san_type",
                &["DNS", "URI", "EMAIL", "IP_ADDRESS"],
                &[
                    ("OTHER_NAME", "other-name SANs are not supported"),
                    ("SAN_TYPE_UNSPECIFIED", "give a SAN type"),
                ],
                d,
            )
        })?
        .as_str()
    {
        "DNS" => SanType::Dns,
        "URI" => SanType::Uri,
        "EMAIL" => SanType::Email,
        _ => SanType::IpAddress,
    };
    if m.get("oid").is_some() {
        d.error(m.at("oid"), "only OTHER_NAME SANs take an oid");
    }
    let matcher = m
        .required("matcher", d)
        .and_then(|_| m.object("matcher", STRING_MATCHER, d))
        .and_then(|s| read_string_matcher(&s, d))?;
    Some(SanMatcher { san_type, matcher })
}

pub(super) fn read_validation(o: &Obj, d: &mut Diagnostics) -> Validation {
    let trusted_ca = o
        .object("trusted_ca", DATA_SOURCE, d)
        .and_then(|ds| read_data_source(&ds, d));
    let mut san_matchers: Vec<SanMatcher> = o
        .list("match_typed_subject_alt_names", d)
        .iter()
        .filter_map(|(p, v)| read_san_matcher(v, p, d))
        .collect();
    for (p, v) in o.list("match_subject_alt_names", d) {
        if let Some(m) = Obj::new(v, &p, STRING_MATCHER, d) {
            if let Some(matcher) = read_string_matcher(&m, d) {
                san_matchers.push(SanMatcher {
                    san_type: SanType::Any,
                    matcher,
                });
            }
        }
    }
    let crl = o
        .object("crl", DATA_SOURCE, d)
        .and_then(|ds| read_data_source(&ds, d));
    if let Some(ca) = &trusted_ca {
        if let Err(e) = crate::tls::material::roots(ca) {
            d.error(o.at("trusted_ca"), e);
        }
    }
    if let Some(c) = &crl {
        if let Err(e) = crate::tls::material::crls(c) {
            d.error(o.at("crl"), e);
        }
    }
    let only_verify_leaf_cert_crl = o.boolean("only_verify_leaf_cert_crl", d).unwrap_or(false);
    if o.get("trust_chain_verification").is_some() {
        let _ = o.enumeration(
            "trust_chain_verification",
            &["VERIFY_TRUST_CHAIN"],
            &[(
                "ACCEPT_UNTRUSTED",
                "the chain is always verified against trusted_ca",
            )],
            d,
        );
    }
    if crl.is_some() && trusted_ca.is_none() {
        d.error(o.at("crl"), "a CRL needs trusted_ca");
    }
    Validation {
        trusted_ca,
        san_matchers,
        crl,
        only_verify_leaf_cert_crl,
    }
}

/// An `SdsSecretConfig`: a static secret (no `sds_config`), one from the ADS stream, or one
/// from a file.
fn read_sds_ref<T>(o: &Obj, d: &mut Diagnostics) -> Option<SecretRef<T>> {
    let name = o.required_name("name", d)?;
    let Some(src) = o.object("sds_config", SDS_CONFIG_SOURCE, d) else {
        return Some(SecretRef::Named(name));
    };
    let initial_fetch_timeout = src
        .duration("initial_fetch_timeout", d)
        .unwrap_or(Duration::from_secs(15));
    let path = match (
        src.get("ads"),
        src.get("path_config_source"),
        src.get("path"),
    ) {
        (Some(_), None, None) => {
            return Some(SecretRef::Sds {
                name,
                initial_fetch_timeout,
            })
        }
        (None, Some(_), None) => {
            let p = src.object("path_config_source", PATH_CONFIG_SOURCE, d)?;
            // The directory is watched through the file itself: its changes (a symlink
            // swapped by Kubernetes) are seen when the file is polled.
            if let Some(w) = p.object("watched_directory", WATCHED_DIRECTORY, d) {
                let _ = w.required_string("path", d);
            }
            p.required_string("path", d)?
        }
        (None, None, Some(_)) => src.required_string("path", d)?,
        _ => {
            d.error(
                &src.path,
                "expected exactly one of ads, path_config_source or path",
            );
            return None;
        }
    };
    if path.is_empty() {
        d.error(src.at("path"), "must not be empty");
        return None;
    }
    let path = std::path::PathBuf::from(path);
    // Read now: a file that is missing or holds no such secret is refused with its path.
    if let Err(e) = read_secret_file(&path, &name) {
        d.error(&src.path, e);
        return None;
    }
    Some(SecretRef::File { name, path })
}

/// Secret `name` from a file-based SDS file: a DiscoveryResponse in YAML or JSON whose
/// `resources` are Secrets.
pub fn read_secret_file(path: &std::path::Path, name: &str) -> Result<SecretKind, String> {
    let text = crate::tls::material::read(&DataSource::File(path.to_path_buf()))?;
    let text = String::from_utf8(text).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    let v = super::yaml::parse(&text, super::MAX_YAML_DEPTH)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut d = Diagnostics::default();
    let at = path.display().to_string();
    let Some(resources) = v.get("resources") else {
        return Err(format!(
            "{at}: no resources (expected a DiscoveryResponse of Secrets)"
        ));
    };
    let Value::Sequence(items) = resources else {
        return Err(format!("{at}: resources: expected a list"));
    };
    for (i, item) in items.iter().enumerate() {
        if item.get("name").and_then(|n| n.as_str()) != Some(name) {
            continue;
        }
        let rpath = format!("{at}: resources[{i}]");
        let secret = read_secret(item, &rpath, &mut d);
        return match (secret, d.errors.first()) {
            (Some(s), None) => Ok(s.kind),
            (_, Some(e)) => Err(format!("{}: {}", e.path, e.message)),
            (None, None) => Err(format!("{rpath}: not a secret")),
        };
    }
    Err(format!("{at}: no secret named \"{name}\""))
}

fn version(o: &Obj, key: &str, d: &mut Diagnostics) -> Option<Option<TlsVersion>> {
    if o.get(key).is_none() {
        return Some(None);
    }
    let v = o.enumeration(
        key,
        &["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"],
        &[],
        d,
    )?;
    Some(match v.as_str() {
        "TLSv1_2" => Some(TlsVersion::V1_2),
        "TLSv1_3" => Some(TlsVersion::V1_3),
        "TLS_AUTO" => None,
        old if key == "tls_maximum_protocol_version" => {
            d.error(
                o.at(key),
                format!("{old} is not supported: the oldest version offered is TLS 1.2"),
            );
            return None;
        }
        old => {
            d.warn(
                o.at(key),
                format!("{old}: the oldest version offered is TLS 1.2"),
            );
            None
        }
    })
}

fn names_in(o: &Obj, key: &str, known: &[&str], what: &str, d: &mut Diagnostics) -> Vec<String> {
    let mut out = Vec::new();
    for (p, v) in o.list(key, d) {
        let Some(s) = v.as_str() else {
            d.error(p, "expected a string");
            continue;
        };
        // Envoy's equal-preference groups: `[A|B]`.
        for name in s.trim_matches(|c| c == '[' || c == ']').split('|') {
            let name = name.trim();
            if known.contains(&name) {
                if !out.iter().any(|n| n == name) {
                    out.push(name.to_string());
                }
            } else {
                d.error(
                    &p,
                    format!(
                        "{what} \"{name}\" is not supported (supported: {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }
    out
}

fn read_common(o: &Obj, d: &mut Diagnostics) -> CommonTls {
    let mut c = CommonTls::default();
    for (p, v) in o.list("tls_certificates", d) {
        if let Some(cert) = read_certificate(v, &p, d) {
            c.certificates.push(SecretRef::Inline(cert));
        }
    }
    for (p, v) in o.list("tls_certificate_sds_secret_configs", d) {
        if let Some(r) = Obj::new(v, &p, SDS_SECRET_CONFIG, d).and_then(|s| read_sds_ref(&s, d)) {
            c.certificates.push(r);
        }
    }
    let given: Vec<&str> = [
        "validation_context",
        "validation_context_sds_secret_config",
        "combined_validation_context",
    ]
    .into_iter()
    .filter(|k| o.get(k).is_some())
    .collect();
    if given.len() > 1 {
        d.error(
            &o.path,
            "give at most one of validation_context, validation_context_sds_secret_config and combined_validation_context",
        );
    }
    if let Some(vc) = o.object("validation_context", CERT_VALIDATION_CONTEXT, d) {
        c.validation = Some(SecretRef::Inline(read_validation(&vc, d)));
    }
    if let Some(s) = o.object("validation_context_sds_secret_config", SDS_SECRET_CONFIG, d) {
        c.validation = read_sds_ref(&s, d);
    }
    if let Some(cv) = o.object(
        "combined_validation_context",
        COMBINED_VALIDATION_CONTEXT,
        d,
    ) {
        if let Some(dv) = cv.object("default_validation_context", CERT_VALIDATION_CONTEXT, d) {
            let v = read_validation(&dv, d);
            if v.trusted_ca.is_some() || v.crl.is_some() {
                d.error(
                    dv.at("trusted_ca"),
                    "the trust of a combined validation context comes from its secret; give only SAN matchers here",
                );
            }
            c.extra_san_matchers = v.san_matchers;
        }
        match cv.object("validation_context_sds_secret_config", SDS_SECRET_CONFIG, d) {
            Some(s) => c.validation = read_sds_ref(&s, d),
            None => d.error(
                cv.at("validation_context_sds_secret_config"),
                "missing required field",
            ),
        }
    }
    for (p, v) in o.list("alpn_protocols", d) {
        match v.as_str() {
            Some(s) if !s.is_empty() && s.len() < 256 => c.alpn.push(s.to_string()),
            _ => d.error(p, "expected a protocol name of 1 to 255 bytes"),
        }
    }
    if let Some(tp) = o.object("tls_params", TLS_PARAMS, d) {
        c.min_version = version(&tp, "tls_minimum_protocol_version", d).flatten();
        c.max_version = version(&tp, "tls_maximum_protocol_version", d).flatten();
        if let (Some(min), Some(max)) = (c.min_version, c.max_version) {
            if min > max {
                d.error(
                    tp.at("tls_minimum_protocol_version"),
                    "the minimum protocol version is above the maximum",
                );
            }
        }
        let all: Vec<&str> = TLS12_CIPHER_SUITES
            .iter()
            .chain(TLS13_CIPHER_SUITES)
            .copied()
            .collect();
        c.cipher_suites = names_in(&tp, "cipher_suites", &all, "cipher suite", d)
            .into_iter()
            .filter(|s| TLS12_CIPHER_SUITES.contains(&s.as_str()))
            .collect();
        if tp.get("cipher_suites").is_some()
            && c.cipher_suites.is_empty()
            && c.max_version != Some(TlsVersion::V1_3)
            && c.min_version != Some(TlsVersion::V1_3)
        {
            // Only TLS 1.3 suites named: TLS 1.2 cannot be negotiated.
            c.min_version = Some(TlsVersion::V1_3);
        }
        c.ecdh_curves = names_in(&tp, "ecdh_curves", ECDH_CURVES, "curve", d);
    }
    c
}

/// The `typed_config` of a transport socket, checked to be `envoy.transport_sockets.tls`
/// with the wanted context type.
fn tls_config<'v>(
    ts: &Obj<'v>,
    want: &str,
    table: FieldTable,
    d: &mut Diagnostics,
) -> Option<Obj<'v>> {
    let name = ts.string("name", d).unwrap_or_default();
    let type_url = ts
        .get("typed_config")
        .and_then(|t| t.get("@type"))
        .and_then(|t| t.as_str());
    match type_url {
        Some(t) if t == want => ts.object("typed_config", table, d),
        None if name == "envoy.transport_sockets.raw_buffer" => None,
        Some(type_urls::RAW_BUFFER) => None,
        other => {
            d.error(
                ts.at("typed_config"),
                format!(
                    "unsupported transport socket \"{}\" (supported here: envoy.transport_sockets.tls with @type {want}, envoy.transport_sockets.raw_buffer)",
                    other.unwrap_or(&name)
                ),
            );
            None
        }
    }
}

/// A filter chain's `transport_socket`; `None` for raw_buffer (or on error, reported).
pub(super) fn read_downstream_tls(
    ts: &Obj,
    handshake_timeout: Option<Duration>,
    d: &mut Diagnostics,
) -> Option<DownstreamTls> {
    let t = tls_config(ts, type_urls::DOWNSTREAM_TLS, DOWNSTREAM_TLS_CONTEXT, d)?;
    let common = t
        .object("common_tls_context", COMMON_TLS_CONTEXT, d)
        .map(|c| read_common(&c, d))
        .unwrap_or_default();
    if common.certificates.is_empty() {
        d.error(
            t.at("common_tls_context.tls_certificates"),
            "a TLS server needs a certificate: give tls_certificates or tls_certificate_sds_secret_configs",
        );
    }
    let require_client_certificate = t.boolean("require_client_certificate", d).unwrap_or(false);
    let inline_without_ca =
        matches!(&common.validation, Some(SecretRef::Inline(v)) if v.trusted_ca.is_none());
    if require_client_certificate && (common.validation.is_none() || inline_without_ca) {
        d.error(
            t.at("require_client_certificate"),
            "requiring a client certificate needs a validation context with trusted_ca",
        );
    }
    if let Some(SecretRef::Inline(v)) = &common.validation {
        if v.trusted_ca.is_none() && !v.san_matchers.is_empty() {
            d.error(
                t.at("common_tls_context.validation_context"),
                "SAN matchers need trusted_ca to verify the client's chain first",
            );
        }
    }
    if t.get("ocsp_staple_policy").is_some() {
        let _ = t.enumeration(
            "ocsp_staple_policy",
            &["LENIENT_STAPLING"],
            &[
                ("STRICT_STAPLING", "OCSP stapling is not supported"),
                ("MUST_STAPLE", "OCSP stapling is not supported"),
            ],
            d,
        );
    }
    Some(DownstreamTls {
        common,
        require_client_certificate,
        require_sni: t.boolean("require_sni", d).unwrap_or(false),
        disable_stateless_resumption: t
            .boolean("disable_stateless_session_resumption", d)
            .unwrap_or(false),
        disable_stateful_resumption: t
            .boolean("disable_stateful_session_resumption", d)
            .unwrap_or(false),
        handshake_timeout: handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
    })
}

/// A cluster's `transport_socket`; `None` for raw_buffer (or on error, reported).
pub(super) fn read_upstream_tls(ts: &Obj, d: &mut Diagnostics) -> Option<UpstreamTls> {
    let u = tls_config(ts, type_urls::UPSTREAM_TLS, UPSTREAM_TLS_CONTEXT, d)?;
    let common = u
        .object("common_tls_context", COMMON_TLS_CONTEXT, d)
        .map(|c| read_common(&c, d))
        .unwrap_or_default();
    if common.certificates.len() > 1 {
        d.error(
            u.at("common_tls_context.tls_certificates"),
            "at most one client certificate",
        );
    }
    if let Some(SecretRef::Inline(v)) = &common.validation {
        if v.trusted_ca.is_none()
            && !(v.san_matchers.is_empty() && common.extra_san_matchers.is_empty())
        {
            d.error(
                u.at("common_tls_context.validation_context"),
                "SAN matchers need trusted_ca to verify the server's chain first",
            );
        }
    }
    let sni = u.string("sni", d).filter(|s| !s.is_empty());
    if let Some(s) = &sni {
        if rustls_pki_types::ServerName::try_from(s.as_str()).is_err() || s.len() > 255 {
            d.error(u.at("sni"), format!("\"{s}\" is not a valid server name"));
        }
    }
    Some(UpstreamTls {
        common,
        sni,
        auto_host_sni: false,
        auto_sni_san_validation: u.boolean("auto_sni_san_validation", d).unwrap_or(false),
    })
}

/// `static_resources.secrets[]`.
pub(crate) fn read_secret(v: &Value, path: &str, d: &mut Diagnostics) -> Option<Secret> {
    let s = Obj::new(v, path, SECRET, d)?;
    let name = s.required_name("name", d)?;
    let given: Vec<&str> = ["tls_certificate", "validation_context", "generic_secret"]
        .into_iter()
        .filter(|k| s.get(k).is_some())
        .collect();
    if given.len() != 1 {
        d.error(
            path,
            "expected exactly one of tls_certificate, validation_context or generic_secret",
        );
        return None;
    }
    let kind = match given[0] {
        "tls_certificate" => SecretKind::Certificate(read_certificate(
            s.get("tls_certificate")?,
            &s.at("tls_certificate"),
            d,
        )?),
        "validation_context" => SecretKind::Validation(read_validation(
            &s.object("validation_context", CERT_VALIDATION_CONTEXT, d)?,
            d,
        )),
        _ => {
            let g = s.object("generic_secret", GENERIC_SECRET, d)?;
            let ds = g
                .required("secret", d)
                .and_then(|_| g.object("secret", DATA_SOURCE, d))
                .and_then(|o| read_data_source(&o, d))?;
            SecretKind::Generic(ds)
        }
    };
    Some(Secret { name, kind })
}

/// Every field table of this family, as documented in docs/tls.md.
#[cfg(test)]
pub(super) const TABLES: &[(&str, FieldTable)] = &[
    ("TransportSocket", TRANSPORT_SOCKET),
    ("DownstreamTlsContext", DOWNSTREAM_TLS_CONTEXT),
    ("UpstreamTlsContext", UPSTREAM_TLS_CONTEXT),
    ("CommonTlsContext", COMMON_TLS_CONTEXT),
    ("TlsParameters", TLS_PARAMS),
    ("CertificateValidationContext", CERT_VALIDATION_CONTEXT),
    (
        "CombinedCertificateValidationContext",
        COMBINED_VALIDATION_CONTEXT,
    ),
    ("SubjectAltNameMatcher", SAN_MATCHER),
    ("TlsCertificate", TLS_CERTIFICATE),
    ("DataSource", DATA_SOURCE),
    ("SdsSecretConfig", SDS_SECRET_CONFIG),
    ("ConfigSource (sds_config)", SDS_CONFIG_SOURCE),
    ("PathConfigSource", PATH_CONFIG_SOURCE),
    ("WatchedDirectory", WATCHED_DIRECTORY),
    ("Secret", SECRET),
    ("GenericSecret", GENERIC_SECRET),
];

impl CommonTls {
    /// The SDS (ADS) secrets it names, with their initial fetch timeouts.
    pub fn sds_names(&self) -> Vec<(String, Duration)> {
        self.certificates
            .iter()
            .filter_map(|c| c.sds_name())
            .chain(self.validation.iter().filter_map(|v| v.sds_name()))
            .map(|(n, t)| (n.to_string(), t))
            .collect()
    }
}

/// Checks that the secrets `common` names are static secrets of the right kind.
pub fn check_names(common: &CommonTls, secrets: &[Secret]) -> Result<(), String> {
    let find = |n: &str| secrets.iter().find(|s| s.name == n);
    for c in &common.certificates {
        if let SecretRef::Named(n) = c {
            match find(n).map(|s| &s.kind) {
                Some(SecretKind::Certificate(_)) => {}
                Some(_) => return Err(format!("secret \"{n}\" is not a tls_certificate")),
                None => return Err(format!("unknown secret \"{n}\" (static_resources.secrets)")),
            }
        }
    }
    if let Some(SecretRef::Named(n)) = &common.validation {
        match find(n).map(|s| &s.kind) {
            Some(SecretKind::Validation(_)) => {}
            Some(_) => return Err(format!("secret \"{n}\" is not a validation_context")),
            None => return Err(format!("unknown secret \"{n}\" (static_resources.secrets)")),
        }
    }
    Ok(())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_table_entry_is_documented() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/tls.md"))
            .expect("docs/tls.md");
        let tables = doc
            .split_once("## Field tables")
            .expect("a Field tables section")
            .1;
        let all: Vec<&(&str, FieldTable)> =
            TABLES.iter().chain(super::super::rbac::TABLES).collect();
        let rows: usize = all.iter().map(|(_, t)| t.len()).sum();
        let doc_rows = tables.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(doc_rows, rows, "docs/tls.md field tables are out of date");
        for (msg, table) in all {
            for (field, how) in table.iter() {
                let want = match how {
                    Field::Supported => format!("| `{field}` | supported |"),
                    Field::Ignored(why) => format!("| `{field}` | ignored: {why} |"),
                    Field::Rejected(why) => format!("| `{field}` | **rejected**: {why} |"),
                };
                assert!(
                    tables.contains(&want),
                    "{msg}.{field} is not documented as: {want}"
                );
            }
        }
    }

    /// A bootstrap with one cluster whose transport socket is `ts`, and one listener whose
    /// chain's is `lts`; the errors.
    fn errors(ts: Json, lts: Json) -> String {
        let b = json!({"static_resources": {
            "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                "filter_chains": [{"transport_socket": lts, "filters": [{"name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {"@type": type_urls::TCP_PROXY, "stat_prefix": "t", "cluster": "c"}}]}]}],
            "clusters": [{"name": "c", "transport_socket": ts, "load_assignment": {"cluster_name": "c",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": 2}}}}]}]}}]}});
        match crate::config::parse_bootstrap(&b.to_string(), "t") {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn trust_without_a_ca_is_refused() {
        let cert = rcgen_free_cert();
        let server = |extra: Json| {
            let mut t = json!({"@type": type_urls::DOWNSTREAM_TLS, "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"inline_string": cert.0}, "private_key": {"inline_string": cert.1}}]}});
            if let (Some(a), Json::Object(b)) = (t.as_object_mut(), extra) {
                for (k, v) in b {
                    if k == "validation_context" {
                        a["common_tls_context"]["validation_context"] = v;
                    } else {
                        a.insert(k, v);
                    }
                }
            }
            json!({"name": "envoy.transport_sockets.tls", "typed_config": t})
        };
        let raw = json!({"name": "envoy.transport_sockets.raw_buffer"});
        let plain = json!({"name": "envoy.transport_sockets.tls", "typed_config": {"@type": type_urls::UPSTREAM_TLS}});
        // A client certificate required, but nothing to verify it against.
        let e = errors(
            plain.clone(),
            server(json!({"require_client_certificate": true, "validation_context": {}})),
        );
        assert!(e.contains("require_client_certificate: requiring a client certificate needs a validation context with trusted_ca"), "{e}");
        // Upstream SAN matchers without a CA.
        let sans = json!({"name": "envoy.transport_sockets.tls", "typed_config": {"@type": type_urls::UPSTREAM_TLS,
            "common_tls_context": {"validation_context": {"match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"exact": "spiffe://x"}}]}}}});
        let e = errors(sans, raw.clone());
        assert!(e.contains("SAN matchers need trusted_ca"), "{e}");
        assert_eq!(errors(plain, raw), "");
    }

    /// A throw-away self-signed ECDSA P-256 certificate for `fixed.test` and its key (made
    /// with openssl for this test only; it protects nothing).
    fn rcgen_free_cert() -> (&'static str, &'static str) {
        (FIXED_CERT, FIXED_KEY)
    }

    const FIXED_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBmDCCAT6gAwIBAgIUfsYLwQr1u9OQtBWS+PA6Q+TWxP8wCgYIKoZIzj0EAwIw\nFTETMBEGA1UEAwwKZml4ZWQudGVzdDAgFw0yNjExMjgwOTMxMzBaGA8yMTI2MTEw\nNDA5MzEzMFowFTETMBEGA1UEAwwKZml4ZWQudGVzdDBZMBMGByqGSM49AgEGCCqG\nSM49AwEHA0IABLqT0D2mSKEsyHXubgA+tUyOEESUSaydyFW6gwodUA0QvZa/A9rp\n4pxgllsyzdmBx1gWFN1I/akzWNq+Qww7jqWjajBoMB0GA1UdDgQWBBQToqSk7H1I\nm/mJWeteDVRziHE/VDAfBgNVHSMEGDAWgBQToqSk7H1Im/mJWeteDVRziHE/VDAP\nBgNVHRMBAf8EBTADAQH/MBUGA1UdEQQOMAyCCmZpeGVkLnRlc3QwCgYIKoZIzj0E\nAwIDSAAwRQIhAJe2Ke+lWQKD6JSo2UAbSx3/7q5XH2PUyvc7X5Q/ocXXAiBO80Io\n4OaASBzwFSx10H9GozjzGwvLB6uayyysjCZZKQ==\n-----END CERTIFICATE-----\n";
    const FIXED_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgRaEqC2zFm7/Vv+KO\nAyr94m4wOVuITIGoCNLjW+C4JVehRANCAAS6k9A9pkihLMh17m4APrVMjhBElEms\nnchVuoMKHVANEL2WvwPa6eKcYJZbMs3ZgcdYFhTdSP2pM1javkMMO46l\n-----END PRIVATE KEY-----\n";

    #[test]
    fn base64_decodes_as_proto3_json_renders_bytes() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert!(decode_base64("a*b").is_none());
    }

    #[test]
    fn private_keys_are_redacted() {
        let mut j = json!({"tickets": {"session_ticket_keys": {"keys": [{"inline_bytes": "VElDS0VU"}]}},
            "static_resources": {"secrets": [{"name": "s", "tls_certificate": {
            "certificate_chain": {"inline_string": "CERT"},
            "private_key": {"inline_string": "KEY"}}},
            {"name": "g", "generic_secret": {"secret": {"inline_bytes": "c2VjcmV0"}}}]}});
        redact(&mut j);
        let s = j.to_string();
        assert!(
            !s.contains("KEY") && !s.contains("c2VjcmV0") && !s.contains("VElDS0VU"),
            "{s}"
        );
        assert!(s.contains("CERT") && s.contains(REDACTED));
    }
}
