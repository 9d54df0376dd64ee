//! The server side: a filter chain's `DownstreamTlsContext` as a rustls `ServerConfig`, and
//! the handshake that turns a downstream TCP stream into a TLS one.
//!
//! Certificates are chosen per handshake by the client's SNI (exact names, then `*.`
//! wildcards, from each certificate's DNS SANs) and then by the signature schemes the client
//! offers, so an RSA and an ECDSA certificate for the same names serve both kinds of client.
//! The configuration sits in an `ArcSwap`: a rotation swaps it, new handshakes see the new
//! certificate, established connections keep theirs.

use super::certs::{self, CertsInfo};
use super::{material, san, stats::SslStats, Secrets, TlsInfo};
use crate::config::tls::DownstreamTls;
use crate::transport::{Downstream, Stream};
use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use std::sync::Arc;

/// A chain's TLS server: its configuration (swapped on rotation) and stats.
#[derive(Debug)]
pub struct TlsAcceptor {
    cfg: DownstreamTls,
    /// `None` until its secrets are all here (an SDS secret not arrived, a file that cannot
    /// be read): handshakes are refused meanwhile.
    config: ArcSwapOption<ServerConfig>,
    stats: Arc<SslStats>,
    /// The certificates served and trusted (for `/certs`).
    info: ArcSwap<CertsInfo>,
    /// Serialises rebuilds (the file poller and SDS may both trigger one): the last one
    /// started is the one that stays.
    reload_lock: std::sync::Mutex<()>,
    /// Holds the SDS subscriptions of the secrets it names.
    _slots: Vec<Arc<super::secrets::SecretSlot>>,
    what: String,
}

/// One certificate and the names it serves.
#[derive(Debug)]
struct Entry {
    key: Arc<CertifiedKey>,
    /// Lower-case DNS SANs (`*.` wildcards included).
    names: Vec<String>,
}

#[derive(Debug)]
struct Resolver {
    entries: Vec<Entry>,
    require_sni: bool,
}

impl Resolver {
    fn pick(&self, sni: Option<&str>, schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let usable = |e: &&Entry| e.key.key.choose_scheme(schemes).is_some();
        if let Some(sni) = sni {
            let sni = sni.to_ascii_lowercase();
            let exact: Vec<&Entry> = self
                .entries
                .iter()
                .filter(|e| e.names.contains(&sni))
                .collect();
            let named = if exact.is_empty() {
                self.entries
                    .iter()
                    .filter(|e| e.names.iter().any(|n| san::dns_matches(n, &sni)))
                    .collect()
            } else {
                exact
            };
            if let Some(e) = named
                .iter()
                .copied()
                .find(usable)
                .or(named.first().copied())
            {
                return Some(e.key.clone());
            }
        }
        // No name matches (or no SNI): the first certificate the client can verify, else
        // the first one (the default certificate, as in Envoy).
        self.entries
            .iter()
            .find(usable)
            .or(self.entries.first())
            .map(|e| e.key.clone())
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        if self.require_sni && sni.is_none() {
            return None;
        }
        self.pick(sni, hello.signature_schemes())
    }
}

/// The client-certificate check: the chain (rustls' WebPKI verifier, with CRLs), then the
/// SAN matchers. A SAN mismatch is reported as `ApplicationVerificationFailure`, which the
/// stats count as `ssl.fail_verify_san`.
#[derive(Debug)]
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<crate::config::tls::SanMatcher>,
    stats: Arc<SslStats>,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.sans.is_empty() {
            let matched = san::sans(end_entity).is_some_and(|s| s.matches_any(&self.sans));
            if !matched {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.stats.peer_signature(dss.scheme);
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.stats.peer_signature(dss.scheme);
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Builds the rustls configuration of a `DownstreamTlsContext`: every certificate loaded
/// and checked against its key, the trust store and CRLs read. Errors name the field.
pub fn server_config(
    cfg: &DownstreamTls,
    secrets: &Secrets,
    stats: &Arc<SslStats>,
) -> Result<(ServerConfig, CertsInfo), String> {
    let common = &cfg.common;
    let provider = super::provider(common);
    let mut entries = Vec::new();
    let mut info = CertsInfo::default();
    for (i, c) in secrets.certificates(common)?.iter().enumerate() {
        let key = material::certified_key(c, &provider)
            .map_err(|e| format!("tls_certificates[{i}].{e}"))?;
        info.chains
            .extend(certs::describe(certs::path_of(&c.chain), &key.cert));
        let names = key
            .cert
            .first()
            .and_then(|c| san::sans(c))
            .map(|s| s.dns.iter().map(|n| n.to_ascii_lowercase()).collect())
            .unwrap_or_default();
        entries.push(Entry { key, names });
    }
    if entries.is_empty() {
        return Err("no certificate".into());
    }
    let verifier: Arc<dyn ClientCertVerifier> = match secrets.validation(common)? {
        Some(v) if v.trusted_ca.is_some() => {
            let ca = v.trusted_ca.as_ref().expect("checked");
            let roots = material::roots(ca)?;
            info.ca.extend(certs::describe(
                certs::path_of(ca),
                &material::certificates(ca)?,
            ));
            let mut b =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if let Some(crl) = &v.crl {
                b = b.with_crls(material::crls(crl)?);
                if v.only_verify_leaf_cert_crl {
                    b = b.only_check_end_entity_revocation();
                }
            }
            if !cfg.require_client_certificate {
                b = b.allow_unauthenticated();
            }
            let inner = b.build().map_err(|e| format!("validation_context: {e}"))?;
            Arc::new(ClientVerifier {
                inner,
                sans: v.san_matchers,
                stats: stats.clone(),
            })
        }
        // Without a CA nothing about a client certificate can be trusted: refuse rather than
        // let every client in (Envoy refuses this configuration too).
        Some(v) if cfg.require_client_certificate || !v.san_matchers.is_empty() => {
            return Err("validation_context: requiring a client certificate or matching its SANs needs trusted_ca".into())
        }
        None if cfg.require_client_certificate => {
            return Err("require_client_certificate needs a validation context with trusted_ca".into())
        }
        _ => WebPkiClientVerifier::no_client_auth(),
    };
    let versions = super::versions(common);
    let mut sc = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_params: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver {
            entries,
            require_sni: cfg.require_sni,
        }));
    sc.alpn_protocols = common.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // The server's cipher order (Envoy's default, prefer_client_ciphers: false).
    sc.ignore_client_order = true;
    if cfg.disable_stateful_resumption {
        sc.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    } else {
        sc.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    }
    if !cfg.disable_stateless_resumption {
        sc.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| format!("session tickets: {e}"))?;
    }
    if cfg.disable_stateful_resumption && cfg.disable_stateless_resumption {
        sc.send_tls13_tickets = 0;
    }
    Ok((sc, info))
}

impl super::secrets::Reload for TlsAcceptor {
    fn reload(&self, secrets: &Secrets) -> Result<(), String> {
        let _one = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (sc, info) = server_config(&self.cfg, secrets, &self.stats)?;
        self.config.store(Some(Arc::new(sc)));
        self.info.store(Arc::new(info));
        Ok(())
    }

    fn files(&self, secrets: &Secrets) -> Vec<std::path::PathBuf> {
        secrets.files_of(&self.cfg.common)
    }

    fn names(&self) -> Vec<String> {
        super::secrets::names_of(&self.cfg.common)
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

impl TlsAcceptor {
    /// Builds the acceptor and registers it for rotation. Without its secrets yet (or with
    /// files that cannot be read) it refuses handshakes until they come; the error is logged.
    /// `what`: the chain, for logs.
    pub fn new(
        cfg: &DownstreamTls,
        secrets: &Arc<Secrets>,
        stats: Arc<SslStats>,
        what: String,
    ) -> Arc<Self> {
        let a = Arc::new(Self {
            cfg: cfg.clone(),
            config: ArcSwapOption::empty(),
            reload_lock: std::sync::Mutex::new(()),
            stats,
            info: ArcSwap::from_pointee(CertsInfo::default()),
            _slots: secrets.hold(&cfg.common),
            what,
        });
        secrets.start(
            a.clone(),
            "TLS server not ready: handshakes are refused until its secrets load",
        );
        a
    }

    /// Whether it can handshake now.
    pub fn ready(&self) -> bool {
        self.config.load().is_some()
    }

    /// The certificates served and trusted now.
    pub fn certificates(&self) -> Arc<CertsInfo> {
        self.info.load_full()
    }

    pub fn stats(&self) -> &Arc<SslStats> {
        &self.stats
    }

    /// Runs the server handshake on the connection's TCP stream, bounded by the chain's
    /// handshake timeout. `false`: it failed (counted and logged at debug), close it.
    pub async fn accept(&self, ds: &mut Downstream) -> bool {
        let Some(config) = self.config.load_full() else {
            self.stats.connection_error.inc();
            tracing::debug!(peer = %ds.peer, context = %self.what, "TLS handshake refused: the certificates have not loaded");
            return false;
        };
        let Stream::Tcp(tcp) = ds.take_io() else {
            self.stats.connection_error.inc();
            return false;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let timeout = self.cfg.handshake_timeout;
        let s = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Err(_) => {
                self.stats.connection_error.inc();
                tracing::debug!(peer = %ds.peer, timeout_ms = timeout.as_millis() as u64, "TLS handshake timed out");
                return false;
            }
            Ok(Err(e)) => {
                self.stats.failed(super::failure_kind(&e));
                tracing::debug!(peer = %ds.peer, error = %e, "TLS handshake failed");
                return false;
            }
            Ok(Ok(s)) => s,
        };
        let (_, conn) = s.get_ref();
        let peer = conn.peer_certificates().and_then(|c| c.first());
        let sans = peer.and_then(|c| san::sans(c)).unwrap_or_default();
        self.stats.completed(conn, peer.is_some());
        let alpn = conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        if let Some(p) = &alpn {
            ds.application_protocols = vec![p.clone()];
        }
        let server_name = conn.server_name().map(str::to_string);
        if ds.server_name.is_none() {
            ds.server_name = server_name.clone();
        }
        ds.tls = Some(Box::new(TlsInfo {
            version: conn
                .protocol_version()
                .map(super::stats::version_name)
                .unwrap_or(""),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|c| super::stats::cipher_name(c.suite()))
                .unwrap_or(""),
            server_name,
            alpn,
            peer_uri_sans: sans.uri,
            peer_dns_sans: sans.dns,
            peer_subject: peer.and_then(|c| san::subject(c)),
            peer_certificate: peer.is_some(),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        }));
        ds.io = Stream::TlsServer(Box::new(s));
        true
    }
}
