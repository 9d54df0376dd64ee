//! The TLS model: certificates, validation contexts, secret references and the contexts of
//! filter chains and clusters, with the limits the readers apply (`config::tls`).

use super::http::StringMatcher;
use super::DataSource;
use std::time::Duration;

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
    /// `auto_host_sni`: the SNI is the request's host (HTTP routes; connections pooled per
    /// name).
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

/// One of a cluster's `transport_socket_matches`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportSocketMatch {
    pub name: String,
    /// Every key must have this value in the endpoint's
    /// `filter_metadata."envoy.transport_socket_match"` (empty: any endpoint).
    pub criteria: Vec<(String, String)>,
    /// `None`: raw_buffer (plain TCP).
    pub tls: Option<UpstreamTls>,
}

impl TransportSocketMatch {
    pub fn matches(&self, metadata: &[(String, String)]) -> bool {
        self.criteria
            .iter()
            .all(|(k, v)| metadata.iter().any(|(mk, mv)| mk == k && mv == v))
    }
}
