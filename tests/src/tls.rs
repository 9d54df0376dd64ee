//! TLS for tests: a throw-away CA issuing leaf certificates (ECDSA P-256, or RSA keys made
//! by `openssl`), rustls clients and servers, and the JSON of Envoy's TLS contexts.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

/// A certificate authority for one test.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub pem: String,
}

/// What a leaf certificate is for.
#[derive(Default, Clone)]
pub struct LeafSpec<'a> {
    pub dns: &'a [&'a str],
    pub uris: &'a [&'a str],
    pub ips: &'a [&'a str],
    pub rsa: bool,
    pub expired: bool,
}

fn rsa_key() -> KeyPair {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("run openssl genpkey (installed by cargo xtask test)");
    assert!(out.status.success(), "openssl genpkey failed");
    let pem = String::from_utf8(out.stdout).unwrap();
    KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).expect("RSA key")
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let pem = issuer.pem();
        Self { issuer, pem }
    }

    pub fn leaf(&self, spec: LeafSpec) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(
            DnType::CommonName,
            spec.dns
                .first()
                .or(spec.uris.first())
                .copied()
                .unwrap_or("leaf"),
        );
        for d in spec.dns {
            p.subject_alt_names
                .push(SanType::DnsName((*d).try_into().unwrap()));
        }
        for u in spec.uris {
            p.subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        for i in spec.ips {
            p.subject_alt_names
                .push(SanType::IpAddress(i.parse().unwrap()));
        }
        if spec.expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = if spec.rsa {
            rsa_key()
        } else {
            KeyPair::generate().unwrap()
        };
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A leaf for DNS names.
    pub fn server(&self, dns: &[&str]) -> Leaf {
        self.leaf(LeafSpec {
            dns,
            ..Default::default()
        })
    }

    /// A leaf with one URI SAN (a SPIFFE identity).
    pub fn identity(&self, uri: &str) -> Leaf {
        self.leaf(LeafSpec {
            uris: &[uri],
            ..Default::default()
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// A client trusting `ca_pem`, offering `alpn`, presenting `cert` when given.
pub fn client_config(
    ca_pem: &str,
    alpn: &[&str],
    cert: Option<&Leaf>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca_pem) {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match cert {
        Some(l) => b
            .with_client_auth_cert(certs(&l.cert), key(&l.key))
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects and handshakes with `sni`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<ClientStream> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))?
}

/// Connects, handshakes and reads until EOF (a `Named` fake server answers its name).
pub async fn fetch(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<(Vec<u8>, ClientStreamInfo)> {
    let mut s = connect(addr, sni, cfg).await?;
    let info = ClientStreamInfo::of(&s);
    let mut got = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
    Ok((got, info))
}

/// What the client saw of the server.
#[derive(Debug)]
pub struct ClientStreamInfo {
    /// The server certificate's DER.
    pub server_cert: Vec<u8>,
    pub alpn: Option<String>,
    pub version: Option<rustls::ProtocolVersion>,
}

impl ClientStreamInfo {
    pub fn of(s: &ClientStream) -> Self {
        let (_, c) = s.get_ref();
        Self {
            server_cert: c
                .peer_certificates()
                .and_then(|p| p.first())
                .map(|c| c.to_vec())
                .unwrap_or_default(),
            alpn: c.alpn_protocol().map(|p| String::from_utf8_lossy(p).into()),
            version: c.protocol_version(),
        }
    }
}

/// The DER of a PEM certificate (to compare with what a client saw).
pub fn der(pem: &str) -> Vec<u8> {
    certs(pem)[0].to_vec()
}

/// A server config presenting `leaf`, requiring a client certificate from `client_ca`.
pub fn server_config(
    leaf: &Leaf,
    client_ca: Option<&str>,
    alpn: &[&str],
) -> Arc<rustls::ServerConfig> {
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca) {
                roots.add(c).unwrap();
            }
            b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap(),
            )
        }
        None => b.with_no_client_auth(),
    };
    let mut cfg = b
        .with_single_cert(certs(&leaf.cert), key(&leaf.key))
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(cfg)
}

/// A TLS server on 127.0.0.1 that answers each connection with `name`, then the URI SANs of
/// the client's certificate (or `-`), and closes.
pub struct TlsNamedServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsNamedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn named_server(name: &str, cfg: Arc<rustls::ServerConfig>) -> TlsNamedServer {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let name = name.to_string();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, name) = (acceptor.clone(), name.clone());
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| uri_sans(c))
                    .unwrap_or_else(|| "-".into());
                let _ = s.write_all(format!("{name} {peer}").as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    TlsNamedServer { addr, task }
}

/// The URI SANs of a DER certificate, comma-separated (by plumb's own reader).
pub fn uri_sans(der: &[u8]) -> String {
    plumb::tls::san::sans(der)
        .map(|s| s.uri.join(","))
        .unwrap_or_default()
}

/// An inline DataSource.
pub fn inline(pem: &str) -> Value {
    json!({"inline_string": pem})
}

/// A filter chain's `transport_socket` terminating TLS with `certs`.
pub fn downstream_tls(certs: &[&Leaf], extra: Value) -> Value {
    let mut t = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {
            "tls_certificates": certs.iter().map(|l| json!({
                "certificate_chain": inline(&l.cert), "private_key": inline(&l.key)})).collect::<Vec<_>>(),
        },
    });
    merge(&mut t, extra);
    json!({"name": "envoy.transport_sockets.tls", "typed_config": t})
}

/// A cluster's `transport_socket` originating TLS.
pub fn upstream_tls(extra: Value) -> Value {
    let mut t = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    });
    merge(&mut t, extra);
    json!({"name": "envoy.transport_sockets.tls", "typed_config": t})
}

/// Merges `extra` into `v` (objects recursively).
pub fn merge(v: &mut Value, extra: Value) {
    match (v, extra) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, x) in b {
                match a.get_mut(&k) {
                    Some(y) => merge(y, x),
                    None => {
                        a.insert(k, x);
                    }
                }
            }
        }
        (v, x) => *v = x,
    }
}
