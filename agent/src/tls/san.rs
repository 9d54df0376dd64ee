//! Subject alternative names of a certificate: the peer's identity (URI SANs such as SPIFFE
//! IDs, DNS SANs), Envoy's `match_typed_subject_alt_names`, and the facts `/certs` shows.

use crate::config::tls::{SanMatcher, SanType};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The SANs of a certificate, by type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sans {
    pub dns: Vec<String>,
    pub uri: Vec<String>,
    pub email: Vec<String>,
    pub ip: Vec<String>,
}

/// Most SANs of one kind kept (a hostile certificate could carry thousands).
const MAX_SANS: usize = 256;

fn ip_string(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => Some(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
        16 => {
            let a: [u8; 16] = b.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(a).to_string())
        }
        _ => None,
    }
}

/// The SANs of a DER certificate; `None` if it does not parse.
pub fn sans(der: &[u8]) -> Option<Sans> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut out = Sans::default();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            let (list, v) = match name {
                GeneralName::DNSName(s) => (&mut out.dns, s.to_string()),
                GeneralName::URI(s) => (&mut out.uri, s.to_string()),
                GeneralName::RFC822Name(s) => (&mut out.email, s.to_string()),
                GeneralName::IPAddress(b) => match ip_string(b) {
                    Some(ip) => (&mut out.ip, ip),
                    None => continue,
                },
                _ => continue,
            };
            if list.len() < MAX_SANS {
                list.push(v);
            }
        }
    }
    Some(out)
}

/// The subject of a DER certificate (RFC 4514 form), if it parses.
pub fn subject(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let s = cert.subject().to_string();
    // Bounded: a hostile certificate's subject could be large.
    (s.len() <= 4096).then_some(s)
}

/// Whether a DNS SAN (which may be a `*.` wildcard) covers `name` (lower-case).
pub fn dns_matches(san: &str, name: &str) -> bool {
    let san = san.to_ascii_lowercase();
    if san == name {
        return true;
    }
    // A wildcard covers exactly one label, as in RFC 6125.
    match (san.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((label, rest))) => !label.is_empty() && rest == suffix,
        _ => false,
    }
}

impl Sans {
    /// Whether any matcher accepts one of the SANs of its type (Envoy: any one is enough).
    pub fn matches_any(&self, matchers: &[SanMatcher]) -> bool {
        matchers.iter().any(|m| {
            let lists: &[&Vec<String>] = match m.san_type {
                SanType::Dns => &[&self.dns],
                SanType::Uri => &[&self.uri],
                SanType::Email => &[&self.email],
                SanType::IpAddress => &[&self.ip],
                SanType::Any => &[&self.dns, &self.uri, &self.email, &self.ip],
            };
            lists.iter().any(|l| {
                l.iter().any(|v| {
                    // A DNS wildcard SAN is matched as Envoy does: exact matchers see the
                    // wildcard literally, and also match names it covers.
                    m.matcher.matches(v)
                        || (m.san_type == SanType::Dns
                            && v.starts_with("*.")
                            && matches!(&m.matcher.kind, crate::config::http::StringMatch::Exact(e) if dns_matches(v, e)))
                })
            })
        })
    }

    /// Whether the certificate is valid for `name` (a DNS name or an IP address).
    pub fn valid_for(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        if name.parse::<std::net::IpAddr>().is_ok() {
            return self.ip.contains(&name);
        }
        self.dns.iter().any(|d| dns_matches(d, &name))
    }
}

/// What `/certs` shows of a certificate.
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub serial: String,
    pub sans: Sans,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
}

pub fn facts(der: &[u8]) -> Option<CertFacts> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(CertFacts {
        serial: cert.raw_serial_as_string().replace(':', ""),
        sans: sans(der).unwrap_or_default(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(dns_matches("*.example.com", "a.example.com"));
        assert!(dns_matches("*.Example.com", "a.example.com"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(dns_matches("example.com", "example.com"));
        assert!(!dns_matches("example.com", "a.example.com"));
    }
}
