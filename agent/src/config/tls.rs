//! The TLS family of the configuration: `transport_socket` `envoy.transport_sockets.tls` with
//! a `DownstreamTlsContext` (filter chains) or an `UpstreamTlsContext` (clusters), their
//! `CommonTlsContext`, certificates, validation contexts and data sources, and the bootstrap's
//! static `secrets`. Field tables and readers shared by the bootstrap and xDS (LDS, CDS).
//!
//! Secrets named by `*_sds_secret_config` without an `sds_config` are the bootstrap's static
//! `secrets`; the reader only records the name, and `tls::Secrets` resolves it when the
//! listener or cluster is built (an unknown name is an error there, naming the field).

use super::http::{read_string_matcher, STRING_MATCHER};
use super::type_urls;
use super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::yaml::Value;
use super::DataSource;
use std::time::Duration;

use Field::{Ignored as I, Rejected as R, Supported as S};

pub use super::tls_dump::{redact, REDACTED};
pub use super::tls_model::*;
use super::tls_secrets::read_sds_ref;
pub(crate) use super::tls_secrets::read_secret;
pub use super::tls_secrets::{check_names, read_secret_file};

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
    ("auto_host_sni", S),
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

pub(super) fn read_certificate(
    v: &Value,
    path: &str,
    d: &mut Diagnostics,
) -> Option<TlsCertificate> {
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
        auto_host_sni: u.boolean("auto_host_sni", d).unwrap_or(false),
        auto_sni_san_validation: u.boolean("auto_sni_san_validation", d).unwrap_or(false),
    })
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

#[cfg(test)]
#[path = "tls_tests.rs"]
pub(crate) mod tests;
