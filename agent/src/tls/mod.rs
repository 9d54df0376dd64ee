//! TLS on both sides, on rustls with the ring provider: certificates and keys loaded from PEM
//! (`material`), the server side of filter chains (`server`), the client side of clusters
//! (`client`), peer identities and SAN matching (`san`), the ClientHello reader of the TLS
//! inspector (`client_hello`) and Envoy's `ssl.*` stats (`stats`).
//!
//! Private keys are read, handed to rustls and dropped: no error, log line or dump carries
//! their bytes (errors name the field and the file, never the content).

pub mod certs;
pub mod client;
pub mod client_hello;
pub mod material;
pub mod san;
pub mod secrets;
pub mod server;
pub mod stats;

pub use client::TlsConnector;
pub use secrets::Secrets;
pub use server::TlsAcceptor;
pub use stats::SslStats;

use crate::config::tls::{CommonTls, TlsVersion};
use rustls::crypto::CryptoProvider;
use std::sync::Arc;

/// What the handshake established, kept with the connection (access logs, RBAC).
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// OpenSSL name of the cipher suite.
    pub cipher: &'static str,
    /// The SNI the client asked for (downstream) or sent (upstream).
    pub server_name: Option<String>,
    pub alpn: Option<String>,
    /// The peer certificate's URI and DNS SANs (the peer's identity), empty without one.
    pub peer_uri_sans: Vec<String>,
    pub peer_dns_sans: Vec<String>,
    /// The peer certificate's subject (RFC 4514), for RBAC's `principal_name`.
    pub peer_subject: Option<String>,
    /// Whether the peer presented a certificate.
    pub peer_certificate: bool,
    pub resumed: bool,
}

/// The ring provider limited to the configured TLS 1.2 cipher suites and key exchange
/// groups (TLS 1.3 suites always stay, as in Envoy).
pub fn provider(common: &CommonTls) -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    if !common.cipher_suites.is_empty() {
        let tls13: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .copied()
            .collect();
        let mut suites = tls13;
        for name in &common.cipher_suites {
            if let Some(s) = p
                .cipher_suites
                .iter()
                .find(|s| stats::cipher_name(s.suite()) == name)
            {
                suites.push(*s);
            }
        }
        p.cipher_suites = suites;
    }
    if !common.ecdh_curves.is_empty() {
        let mut groups = Vec::new();
        for name in &common.ecdh_curves {
            if let Some(g) = p
                .kx_groups
                .iter()
                .find(|g| stats::group_name(g.name()) == name)
            {
                groups.push(*g);
            }
        }
        p.kx_groups = groups;
    }
    Arc::new(p)
}

/// The protocol versions between the configured minimum and maximum (1.2 and 1.3).
pub fn versions(common: &CommonTls) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let min = common.min_version.unwrap_or(TlsVersion::V1_2);
    let max = common.max_version.unwrap_or(TlsVersion::V1_3);
    let mut v = Vec::new();
    if min <= TlsVersion::V1_3 && max >= TlsVersion::V1_3 {
        v.push(&rustls::version::TLS13);
    }
    if min <= TlsVersion::V1_2 && max >= TlsVersion::V1_2 {
        v.push(&rustls::version::TLS12);
    }
    v
}

/// Classifies a failed handshake for the `ssl.*` stats: the stat it counts under.
pub fn failure_kind(e: &std::io::Error) -> stats::Failure {
    use rustls::{CertificateError, Error};
    let Some(err) = e.get_ref().and_then(|r| r.downcast_ref::<Error>()) else {
        return stats::Failure::ConnectionError;
    };
    match err {
        Error::NoCertificatesPresented => stats::Failure::NoCert,
        Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
            stats::Failure::San
        }
        Error::InvalidCertificate(_) => stats::Failure::VerifyError,
        _ => stats::Failure::ConnectionError,
    }
}
