//! What `/certs` and `server.days_until_first_cert_expiring` show of each TLS context: its
//! trusted CA and its certificate chains (where from, serial, SANs, validity), read once when
//! the context is built or rotated.

use super::san::{self, CertFacts};
use crate::config::DataSource;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value as Json};
use std::time::{SystemTime, UNIX_EPOCH};

/// One certificate of a context, with where it came from.
#[derive(Debug, Clone)]
pub struct CertDesc {
    /// The file, or `<inline>`.
    pub path: String,
    pub facts: CertFacts,
}

/// The certificates of one TLS context.
#[derive(Debug, Clone, Default)]
pub struct CertsInfo {
    pub ca: Vec<CertDesc>,
    pub chains: Vec<CertDesc>,
}

pub fn path_of(ds: &DataSource) -> String {
    match ds {
        DataSource::File(p) => p.display().to_string(),
        DataSource::Inline(_) => "<inline>".to_string(),
    }
}

/// The description of the first certificate of `certs` (a chain's leaf, a bundle's first CA).
pub fn describe(path: String, certs: &[CertificateDer<'_>]) -> Option<CertDesc> {
    let facts = san::facts(certs.first()?)?;
    Some(CertDesc { path, facts })
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn rfc3339(secs: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    crate::xds::rfc3339(t)
}

impl CertDesc {
    /// Whole days until it expires (0 once expired), as Envoy counts them.
    pub fn days_until_expiration(&self) -> i64 {
        ((self.facts.not_after - now_secs()) / 86_400).max(0)
    }

    /// Envoy's `CertificateDetails` JSON.
    pub fn to_json(&self) -> Json {
        let s = &self.facts.sans;
        let sans: Vec<Json> = s
            .dns
            .iter()
            .map(|v| json!({"dns": v}))
            .chain(s.uri.iter().map(|v| json!({"uri": v})))
            .chain(s.ip.iter().map(|v| json!({"ip_address": v})))
            .chain(s.email.iter().map(|v| json!({"email": v})))
            .collect();
        json!({
            "path": self.path,
            "serial_number": self.facts.serial,
            "subject_alt_names": sans,
            "days_until_expiration": self.days_until_expiration().to_string(),
            "valid_from": rfc3339(self.facts.not_before),
            "expiration_time": rfc3339(self.facts.not_after),
        })
    }
}

impl CertsInfo {
    /// Envoy's `Certificate` JSON (`ca_cert`, `cert_chain`).
    pub fn to_json(&self) -> Json {
        json!({
            "ca_cert": self.ca.iter().map(CertDesc::to_json).collect::<Vec<_>>(),
            "cert_chain": self.chains.iter().map(CertDesc::to_json).collect::<Vec<_>>(),
        })
    }

    /// Days until its first certificate expires, if it has any.
    pub fn days_until_first_expiring(&self) -> Option<i64> {
        self.ca
            .iter()
            .chain(&self.chains)
            .map(CertDesc::days_until_expiration)
            .min()
    }
}
