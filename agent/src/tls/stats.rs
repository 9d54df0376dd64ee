//! Envoy's `ssl.*` stats of a listener (`listener.<address>.ssl.*`) or a cluster
//! (`cluster.<name>.ssl.*`), and the OpenSSL-style names Envoy gives suites, groups and
//! signature schemes.

use crate::stats::{Counter, Scope};
use rustls::{CipherSuite, NamedGroup, ProtocolVersion, SignatureScheme};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why a handshake failed, as the stats count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Required client certificate not sent (`ssl.fail_verify_no_cert`).
    NoCert,
    /// Chain, signature, expiry or revocation check failed (`ssl.fail_verify_error`).
    VerifyError,
    /// No SAN matched (`ssl.fail_verify_san`).
    San,
    /// Anything else: garbage, protocol or version mismatch, a peer that went away
    /// (`ssl.connection_error`).
    ConnectionError,
}

#[derive(Debug)]
pub struct SslStats {
    scope: Scope,
    pub handshake: Arc<Counter>,
    pub connection_error: Arc<Counter>,
    pub no_certificate: Arc<Counter>,
    pub fail_verify_no_cert: Arc<Counter>,
    pub fail_verify_error: Arc<Counter>,
    pub fail_verify_san: Arc<Counter>,
    pub session_reused: Arc<Counter>,
    /// `ssl.handshake_timeout` is not an Envoy stat; Envoy counts a handshake timeout as a
    /// connection error, and so does Plumb.
    /// Named counters (`versions.*`, `ciphers.*`, `curves.*`, `sigalgs.*`), created on first
    /// use; their names come from closed sets, so the map stays small.
    named: Mutex<HashMap<String, Arc<Counter>>>,
}

impl SslStats {
    /// `scope`: the listener's or cluster's scope; the stats are `<scope>ssl.*`.
    pub fn new(scope: &Scope) -> Arc<Self> {
        Arc::new(Self {
            scope: scope.clone(),
            handshake: scope.counter("ssl.handshake"),
            connection_error: scope.counter("ssl.connection_error"),
            no_certificate: scope.counter("ssl.no_certificate"),
            fail_verify_no_cert: scope.counter("ssl.fail_verify_no_cert"),
            fail_verify_error: scope.counter("ssl.fail_verify_error"),
            fail_verify_san: scope.counter("ssl.fail_verify_san"),
            session_reused: scope.counter("ssl.session_reused"),
            named: Mutex::new(HashMap::new()),
        })
    }

    fn named(&self, kind: &str, name: &str) -> Arc<Counter> {
        let key = format!("ssl.{kind}.{name}");
        let mut m = self.named.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key)
            .or_insert_with_key(|k| self.scope.counter(k))
            .clone()
    }

    pub fn failed(&self, f: Failure) {
        match f {
            Failure::NoCert => &self.fail_verify_no_cert,
            Failure::VerifyError => &self.fail_verify_error,
            Failure::San => &self.fail_verify_san,
            Failure::ConnectionError => &self.connection_error,
        }
        .inc();
    }

    /// Counts a finished handshake under its version, suite and group.
    pub fn completed(&self, conn: &rustls::CommonState, peer_certificate: bool) {
        self.handshake.inc();
        if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.session_reused.inc();
        }
        if !peer_certificate {
            self.no_certificate.inc();
        }
        if let Some(v) = conn.protocol_version() {
            self.named("versions", version_name(v)).inc();
        }
        if let Some(s) = conn.negotiated_cipher_suite() {
            self.named("ciphers", cipher_name(s.suite())).inc();
        }
        if let Some(g) = conn.negotiated_key_exchange_group() {
            self.named("curves", group_name(g.name())).inc();
        }
    }

    /// Counts the signature scheme the peer signed its handshake with.
    pub fn peer_signature(&self, s: SignatureScheme) {
        self.named("sigalgs", sigalg_name(s)).inc();
    }
}

pub fn version_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "other",
    }
}

/// The OpenSSL (BoringSSL) name Envoy uses for a suite.
pub fn cipher_name(s: CipherSuite) -> &'static str {
    match s {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
            "ECDHE-ECDSA-CHACHA20-POLY1305"
        }
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => "other",
    }
}

pub fn group_name(g: NamedGroup) -> &'static str {
    match g {
        NamedGroup::X25519 => "X25519",
        NamedGroup::secp256r1 => "P-256",
        NamedGroup::secp384r1 => "P-384",
        NamedGroup::secp521r1 => "P-521",
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768",
        _ => "other",
    }
}

pub fn sigalg_name(s: SignatureScheme) -> &'static str {
    match s {
        SignatureScheme::ECDSA_NISTP256_SHA256 => "ecdsa_secp256r1_sha256",
        SignatureScheme::ECDSA_NISTP384_SHA384 => "ecdsa_secp384r1_sha384",
        SignatureScheme::ECDSA_NISTP521_SHA512 => "ecdsa_secp521r1_sha512",
        SignatureScheme::RSA_PSS_SHA256 => "rsa_pss_rsae_sha256",
        SignatureScheme::RSA_PSS_SHA384 => "rsa_pss_rsae_sha384",
        SignatureScheme::RSA_PSS_SHA512 => "rsa_pss_rsae_sha512",
        SignatureScheme::RSA_PKCS1_SHA256 => "rsa_pkcs1_sha256",
        SignatureScheme::RSA_PKCS1_SHA384 => "rsa_pkcs1_sha384",
        SignatureScheme::RSA_PKCS1_SHA512 => "rsa_pkcs1_sha512",
        SignatureScheme::ED25519 => "ed25519",
        _ => "other",
    }
}
