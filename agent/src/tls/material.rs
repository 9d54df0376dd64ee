//! PEM certificates, private keys, trusted CAs and CRLs, read from their data sources and
//! checked: a chain that does not parse, a key that does not match its certificate or a CA
//! bundle without a certificate is an error naming the field (never the key's bytes).

use crate::config::tls::{TlsCertificate, MAX_DATA_SOURCE};
use crate::config::DataSource;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use std::sync::Arc;

/// What a data source is called in errors: its file, or "inline".
fn source_name(ds: &DataSource) -> String {
    match ds {
        DataSource::File(p) => format!("file {}", p.display()),
        DataSource::Inline(_) => "inline data".to_string(),
    }
}

/// Reads a data source, bounded (a PEM bundle is kilobytes; a huge file is a mistake).
pub fn read(ds: &DataSource) -> Result<Vec<u8>, String> {
    match ds {
        DataSource::Inline(s) if s.len() > MAX_DATA_SOURCE => {
            Err(format!("inline data over {MAX_DATA_SOURCE} bytes"))
        }
        DataSource::Inline(s) => Ok(s.as_bytes().to_vec()),
        DataSource::File(p) => {
            use std::io::Read;
            let f = std::fs::File::open(p).map_err(|e| format!("read {}: {e}", p.display()))?;
            let mut buf = Vec::new();
            f.take(MAX_DATA_SOURCE as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|e| format!("read {}: {e}", p.display()))?;
            if buf.len() > MAX_DATA_SOURCE {
                return Err(format!("{} is over {MAX_DATA_SOURCE} bytes", p.display()));
            }
            Ok(buf)
        }
    }
}

/// The certificates of a PEM bundle, in order; at least one.
pub fn certificates(ds: &DataSource) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(ds)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", source_name(ds)))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) found",
            source_name(ds)
        ));
    }
    Ok(certs)
}

/// A certificate chain with its key, checked to match.
pub fn certified_key(
    c: &TlsCertificate,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = certificates(&c.chain).map_err(|e| format!("certificate_chain: {e}"))?;
    let pem = read(&c.key).map_err(|e| format!("private_key: {e}"))?;
    // The parse error says nothing of the key's bytes; only where it came from.
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        format!(
            "private_key: {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found",
            source_name(&c.key)
        )
    })?;
    let key = provider.key_provider.load_private_key(key).map_err(|e| {
        format!(
            "private_key: {}: unsupported key ({e})",
            source_name(&c.key)
        )
    })?;
    let ck = CertifiedKey::new(chain, key);
    match ck.keys_match() {
        Ok(()) => Ok(Arc::new(ck)),
        // Keys rustls cannot compare (none with ring today) are taken as given.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(ck)),
        Err(_) => Err(format!(
            "private_key: {} does not match the certificate of certificate_chain ({})",
            source_name(&c.key),
            source_name(&c.chain)
        )),
    }
}

/// A trust store from a CA bundle.
pub fn roots(ds: &DataSource) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for c in certificates(ds).map_err(|e| format!("trusted_ca: {e}"))? {
        store
            .add(c)
            .map_err(|e| format!("trusted_ca: {}: {e}", source_name(ds)))?;
    }
    Ok(store)
}

/// The CRLs of a PEM bundle.
pub fn crls(ds: &DataSource) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let pem = read(ds).map_err(|e| format!("crl: {e}"))?;
    let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("crl: {}: not PEM CRLs: {e}", source_name(ds)))?;
    if crls.is_empty() {
        return Err(format!(
            "crl: {}: no PEM CRL (-----BEGIN X509 CRL-----) found",
            source_name(ds)
        ));
    }
    Ok(crls)
}
