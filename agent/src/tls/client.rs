//! The client side: a cluster's `UpstreamTlsContext` as a rustls `ClientConfig` (built once
//! per cluster version, so its session cache is shared by the cluster's pooled connections
//! and resumption works across them), and the handshake after the TCP connect.
//!
//! Verification follows Envoy: with `trusted_ca` the server's chain must verify; the name is
//! checked only with `auto_sni_san_validation` (against the SNI sent); the SAN matchers, when
//! given, must accept one SAN. Without a validation context nothing is verified (Envoy's
//! behaviour; `/config_dump` shows it). The control-plane cluster is stricter: it must have a
//! trusted CA, and the control plane's certificate must be valid for the SNI.

use super::certs::{self, CertsInfo};
use super::{material, san, stats::SslStats, Secrets};
use crate::config::tls::{SanMatcher, UpstreamTls};
use crate::transport::Stream;
use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug)]
struct ServerVerifier {
    /// `None`: no trusted CA, the chain is not verified.
    inner: Option<Arc<WebPkiServerVerifier>>,
    sans: Vec<SanMatcher>,
    /// Check the certificate is valid for the SNI sent (`auto_sni_san_validation`,
    /// `auto_san_validation`); not for a connection sent without SNI (an IP address)
    /// unless `strict`.
    verify_name: bool,
    /// The control plane: the name (or IP address) is always checked.
    strict: bool,
    algs: WebPkiSupportedAlgorithms,
    stats: Arc<SslStats>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let check_name =
            self.verify_name && (self.strict || !matches!(server_name, ServerName::IpAddress(_)));
        let name_error = |e: &rustls::Error| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            )
        };
        match &self.inner {
            Some(inner) => {
                match inner.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                ) {
                    Ok(_) => {}
                    // The chain verified (rustls checks the name last); Envoy does not check
                    // the name unless asked to.
                    Err(e) if name_error(&e) && !check_name => {}
                    Err(e) => return Err(e),
                }
            }
            None if check_name => {
                let ok = san::sans(end_entity).is_some_and(|s| s.valid_for(&server_name.to_str()));
                if !ok {
                    return Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName,
                    ));
                }
            }
            None => {}
        }
        if !self.sans.is_empty() {
            let matched = san::sans(end_entity).is_some_and(|s| s.matches_any(&self.sans));
            if !matched {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.stats.peer_signature(dss.scheme);
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.stats.peer_signature(dss.scheme);
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The client certificate, offered whatever the server hints.
#[derive(Debug)]
struct ClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A cluster's TLS client.
#[derive(Debug)]
pub struct TlsConnector {
    cfg: UpstreamTls,
    verify_name: bool,
    /// `None` until its secrets are all here: connections fail meanwhile.
    config: ArcSwapOption<ClientConfig>,
    stats: Arc<SslStats>,
    /// The client certificate and trusted CA (for `/certs`).
    info: ArcSwap<CertsInfo>,
    /// Serialises rebuilds (the file poller and SDS may both trigger one): the last one
    /// started is the one that stays.
    reload_lock: std::sync::Mutex<()>,
    _slots: Vec<Arc<super::secrets::SecretSlot>>,
    what: String,
}

/// Builds the rustls configuration of an `UpstreamTlsContext`. Errors name the field.
/// `verify_name`: check the certificate against the SNI even without
/// `auto_sni_san_validation` (the control-plane cluster always does).
pub fn client_config(
    cfg: &UpstreamTls,
    secrets: &Secrets,
    stats: &Arc<SslStats>,
    verify_name: bool,
) -> Result<(ClientConfig, CertsInfo), String> {
    let common = &cfg.common;
    let provider = super::provider(common);
    let validation = secrets.validation(common)?;
    let mut info = CertsInfo::default();
    let (inner, sans) = match validation {
        Some(v) => {
            let inner = match &v.trusted_ca {
                Some(ca) => {
                    let roots = material::roots(ca)?;
                    info.ca.extend(certs::describe(
                        certs::path_of(ca),
                        &material::certificates(ca)?,
                    ));
                    let mut b = WebPkiServerVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider.clone(),
                    );
                    if let Some(crl) = &v.crl {
                        b = b.with_crls(material::crls(crl)?);
                        if v.only_verify_leaf_cert_crl {
                            b = b.only_check_end_entity_revocation();
                        }
                    }
                    Some(b.build().map_err(|e| format!("validation_context: {e}"))?)
                }
                None => None,
            };
            (inner, v.san_matchers)
        }
        None => (None, Vec::new()),
    };
    // Envoy checks the name only when there is an SNI to check it against.
    let strict = verify_name;
    let verify_name = strict || cfg.auto_sni_san_validation;
    if inner.is_none() && (verify_name || !sans.is_empty()) {
        // Names and SANs of a certificate whose chain nobody verified prove nothing.
        return Err(
            "validation_context: checking the server's name or SANs needs trusted_ca".into(),
        );
    }
    let verifier = Arc::new(ServerVerifier {
        inner,
        sans,
        verify_name,
        strict,
        algs: provider.signature_verification_algorithms,
        stats: stats.clone(),
    });
    let versions = super::versions(common);
    let b = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_params: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cc = match secrets.certificates(common)?.first() {
        Some(c) => {
            let key = material::certified_key(c, &provider)
                .map_err(|e| format!("tls_certificates[0].{e}"))?;
            info.chains
                .extend(certs::describe(certs::path_of(&c.chain), &key.cert));
            b.with_client_cert_resolver(Arc::new(ClientCert(key)))
        }
        None => b.with_no_client_auth(),
    };
    cc.alpn_protocols = common.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok((cc, info))
}

impl super::secrets::Reload for TlsConnector {
    fn reload(&self, secrets: &Secrets) -> Result<(), String> {
        let _one = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (cc, info) = client_config(&self.cfg, secrets, &self.stats, self.verify_name)?;
        self.config.store(Some(Arc::new(cc)));
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

impl TlsConnector {
    /// Builds the connector and registers it for rotation; without its secrets yet it fails
    /// connections until they come. `verify_name`: see `client_config`.
    pub fn new(
        cfg: &UpstreamTls,
        secrets: &Arc<Secrets>,
        stats: Arc<SslStats>,
        verify_name: bool,
        what: String,
    ) -> Arc<Self> {
        let c = Arc::new(Self {
            cfg: cfg.clone(),
            verify_name,
            config: ArcSwapOption::empty(),
            reload_lock: std::sync::Mutex::new(()),
            stats,
            info: ArcSwap::from_pointee(CertsInfo::default()),
            _slots: secrets.hold(&cfg.common),
            what,
        });
        secrets.start(
            c.clone(),
            "TLS client not ready: connections fail until its secrets load",
        );
        c
    }

    /// Whether it can connect now (its secrets loaded).
    pub fn ready(&self) -> bool {
        self.config.load().is_some()
    }

    /// The client certificate and trusted CA now.
    pub fn certificates(&self) -> Arc<CertsInfo> {
        self.info.load_full()
    }

    pub fn stats(&self) -> &Arc<SslStats> {
        &self.stats
    }

    /// The server name sent: the configured SNI, else the host's address (an IP address
    /// sends no SNI).
    fn server_name(&self, ip: IpAddr, sni: Option<&str>) -> ServerName<'static> {
        sni.or(self.cfg.sni.as_deref())
            .and_then(|n| ServerName::try_from(n.to_string()).ok())
            .unwrap_or(ServerName::IpAddress(ip.into()))
    }

    /// The client handshake over a connected TCP stream. Failures are counted under the
    /// cluster's `ssl.*` stats; the error says why (for `%UPSTREAM_TRANSPORT_FAILURE_REASON%`).
    /// `alpn`: offered when the context configures no ALPN (the protocols the connection
    /// may speak).
    /// `sni`: the request's host (`auto_sni`), instead of the configured `sni`.
    pub async fn connect(
        &self,
        tcp: tokio::net::TcpStream,
        ip: IpAddr,
        alpn: &[&str],
        sni: Option<&str>,
    ) -> io::Result<Stream> {
        let Some(config) = self.config.load_full() else {
            self.stats.connection_error.inc();
            return Err(io::Error::other(
                "the TLS client's certificates have not loaded",
            ));
        };
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let name = self.server_name(ip, sni);
        let handshake = if !alpn.is_empty() && config.alpn_protocols.is_empty() {
            connector
                .with_alpn(alpn.iter().map(|p| p.as_bytes().to_vec()).collect())
                .connect(name, tcp)
                .await
        } else {
            connector.connect(name, tcp).await
        };
        match handshake {
            Ok(s) => {
                let (_, conn) = s.get_ref();
                self.stats.completed(conn, true);
                Ok(Stream::TlsClient(Box::new(s)))
            }
            Err(e) => {
                self.stats.failed(super::failure_kind(&e));
                tracing::debug!(upstream = %ip, error = %e, "TLS handshake failed");
                Err(e)
            }
        }
    }
}
