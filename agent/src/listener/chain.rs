//! Filter chain selection (Envoy's `filter_chain_match`). Criteria are applied in Envoy's
//! order — destination port, destination IP, server name, transport protocol, application
//! protocols, direct source IP, source type, source IP, source port — and at each step only
//! the chains with the most specific value that matches the connection stay candidates. As in
//! Envoy there is no backtracking: when the most specific bucket of one step has nothing that
//! matches later steps, the connection gets the default chain (or none).

use crate::config::{Cidr, FilterChainMatch, SourceType};
use crate::filters::FilterChain;
use crate::transport::Downstream;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What the match looks at, taken from the downstream connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionInfo<'a> {
    /// Where the connection is going: its original destination, else the local address.
    pub destination: SocketAddr,
    pub source: SocketAddr,
    /// The peer of the socket itself (differs from `source` only behind PROXY protocol).
    pub direct_source: SocketAddr,
    pub server_name: Option<&'a str>,
    pub transport_protocol: &'a str,
    pub application_protocols: &'a [String],
}

impl<'a> ConnectionInfo<'a> {
    pub fn of(ds: &'a Downstream) -> Self {
        Self {
            destination: ds.destination(),
            source: ds.peer,
            direct_source: ds.peer,
            server_name: ds.server_name.as_deref(),
            transport_protocol: ds.transport_protocol,
            application_protocols: &ds.application_protocols,
        }
    }
}

#[derive(Debug)]
pub struct ChainSelector {
    chains: Vec<(FilterChainMatch, Arc<FilterChain>)>,
    default: Option<Arc<FilterChain>>,
}

/// How specific a match of one criterion is; higher wins. `None`: no match.
type Score = Option<u32>;

fn cidr_score(ranges: &[Cidr], ip: IpAddr) -> Score {
    if ranges.is_empty() {
        return Some(0);
    }
    // An explicit /0 is the same as no ranges (Envoy's trie holds both as /0); the config
    // check rejects two chains that differ only in that.
    ranges
        .iter()
        .filter(|c| c.contains(ip))
        .map(|c| c.len as u32)
        .max()
}

fn server_name_score(names: &[String], sni: Option<&str>) -> Score {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni.filter(|s| !s.is_empty())?;
    let sni = sni.to_ascii_lowercase();
    names
        .iter()
        .filter_map(|n| {
            if *n == sni {
                // Exact beats any wildcard.
                Some(u32::MAX)
            } else if let Some(suffix) = n.strip_prefix('*') {
                // `*.example.com` matches any depth below example.com, longest suffix first.
                sni.ends_with(suffix).then_some(suffix.len() as u32)
            } else {
                None
            }
        })
        .max()
}

fn is_local_source(info: &ConnectionInfo) -> bool {
    let src = info.source.ip().to_canonical();
    src.is_loopback() || src == info.destination.ip().to_canonical()
}

impl ChainSelector {
    pub fn new(
        chains: Vec<(FilterChainMatch, Arc<FilterChain>)>,
        default: Option<Arc<FilterChain>>,
    ) -> Self {
        Self { chains, default }
    }

    /// Every chain, the default last.
    pub fn all(&self) -> impl Iterator<Item = &Arc<FilterChain>> {
        self.chains
            .iter()
            .map(|(_, c)| c)
            .chain(self.default.as_ref())
    }

    /// The chain for a connection, or `None` (no chain matches and there is no default).
    pub fn select(&self, info: &ConnectionInfo) -> Option<&Arc<FilterChain>> {
        match self.chains.as_slice() {
            [] => return self.default.as_ref(),
            // The common case: one chain that matches everything.
            [(m, c)] if *m == FilterChainMatch::default() => return Some(c),
            _ => {}
        }
        let mut candidates: Vec<&(FilterChainMatch, Arc<FilterChain>)> =
            self.chains.iter().collect();
        let dst_ip = info.destination.ip().to_canonical();
        let steps: [&dyn Fn(&FilterChainMatch) -> Score; 9] = [
            &|m| match m.destination_port {
                None => Some(0),
                Some(p) => (p == info.destination.port()).then_some(1),
            },
            &|m| cidr_score(&m.prefix_ranges, dst_ip),
            &|m| server_name_score(&m.server_names, info.server_name),
            &|m| match &m.transport_protocol {
                None => Some(0),
                Some(t) => (t == info.transport_protocol).then_some(1),
            },
            // The client's first protocol that some chain names wins; else the chains that
            // name none.
            &|m| {
                if m.application_protocols.is_empty() {
                    return Some(0);
                }
                let n = info.application_protocols.len() as u32;
                info.application_protocols
                    .iter()
                    .position(|p| m.application_protocols.contains(p))
                    .map(|i| n - i as u32)
            },
            &|m| cidr_score(&m.direct_source_prefix_ranges, info.direct_source.ip()),
            &|m| match m.source_type {
                SourceType::Any => Some(0),
                SourceType::SameIpOrLoopback => is_local_source(info).then_some(1),
                SourceType::External => (!is_local_source(info)).then_some(1),
            },
            &|m| cidr_score(&m.source_prefix_ranges, info.source.ip()),
            &|m| {
                if m.source_ports.is_empty() {
                    Some(0)
                } else {
                    m.source_ports.contains(&info.source.port()).then_some(1)
                }
            },
        ];
        for step in steps {
            let best = candidates.iter().filter_map(|(m, _)| step(m)).max();
            let Some(best) = best else {
                return self.default.as_ref();
            };
            candidates.retain(|(m, _)| step(m) == Some(best));
        }
        candidates.first().map(|(_, c)| c).or(self.default.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    fn chain(name: &str) -> Arc<FilterChain> {
        Arc::new(FilterChain {
            name: name.into(),
            filters: Vec::new(),
            tls: None,
            config: crate::config::FilterChain {
                name: name.into(),
                filter_chain_match: FilterChainMatch::default(),
                filters: Vec::new(),
                tls: None,
            },
        })
    }

    fn cidr(s: &str) -> Cidr {
        let (a, l) = s.split_once('/').unwrap();
        Cidr::new(a.parse().unwrap(), l.parse().unwrap())
    }

    fn info<'a>(dst: &str, src: &str) -> ConnectionInfo<'a> {
        ConnectionInfo {
            destination: dst.parse().unwrap(),
            source: src.parse().unwrap(),
            direct_source: src.parse().unwrap(),
            server_name: None,
            transport_protocol: "raw_buffer",
            application_protocols: &[],
        }
    }

    fn selector(chains: Vec<(&str, FilterChainMatch)>, default: bool) -> ChainSelector {
        ChainSelector::new(
            chains.into_iter().map(|(n, m)| (m, chain(n))).collect(),
            default.then(|| chain("default")),
        )
    }

    fn picked(s: &ChainSelector, i: &ConnectionInfo) -> Option<String> {
        s.select(i).map(|c| c.name.clone())
    }

    #[test]
    fn destination_port_exact_beats_any_and_does_not_fall_back() {
        let s = selector(
            vec![
                (
                    "p80-src10",
                    FilterChainMatch {
                        destination_port: Some(80),
                        source_prefix_ranges: vec![cidr("10.0.0.0/8")],
                        ..Default::default()
                    },
                ),
                (
                    "any",
                    FilterChainMatch {
                        source_prefix_ranges: vec![cidr("0.0.0.0/0")],
                        ..Default::default()
                    },
                ),
            ],
            false,
        );
        assert_eq!(
            picked(&s, &info("1.2.3.4:80", "10.1.1.1:5")).as_deref(),
            Some("p80-src10")
        );
        assert_eq!(
            picked(&s, &info("1.2.3.4:81", "10.1.1.1:5")).as_deref(),
            Some("any")
        );
        // Port 80 has a bucket: its chains are the only candidates, even if none matches.
        assert_eq!(picked(&s, &info("1.2.3.4:80", "192.168.1.1:5")), None);
    }

    #[test]
    fn longest_destination_prefix_wins() {
        let s = selector(
            vec![
                (
                    "wide",
                    FilterChainMatch {
                        prefix_ranges: vec![cidr("10.0.0.0/8")],
                        ..Default::default()
                    },
                ),
                (
                    "narrow",
                    FilterChainMatch {
                        prefix_ranges: vec![cidr("10.1.0.0/16"), cidr("192.168.0.0/16")],
                        ..Default::default()
                    },
                ),
            ],
            true,
        );
        assert_eq!(
            picked(&s, &info("10.1.2.3:80", "1.1.1.1:5")).as_deref(),
            Some("narrow")
        );
        assert_eq!(
            picked(&s, &info("10.2.2.3:80", "1.1.1.1:5")).as_deref(),
            Some("wide")
        );
        assert_eq!(
            picked(&s, &info("172.16.0.1:80", "1.1.1.1:5")).as_deref(),
            Some("default")
        );
        // IPv4-mapped IPv6 destinations match IPv4 ranges.
        assert_eq!(
            picked(&s, &info("[::ffff:10.1.2.3]:80", "1.1.1.1:5")).as_deref(),
            Some("narrow")
        );
    }

    #[test]
    fn server_names_exact_then_longest_wildcard_then_none() {
        let s = selector(
            vec![
                (
                    "exact",
                    FilterChainMatch {
                        server_names: vec!["www.example.com".into()],
                        ..Default::default()
                    },
                ),
                (
                    "wild",
                    FilterChainMatch {
                        server_names: vec!["*.example.com".into()],
                        ..Default::default()
                    },
                ),
                (
                    "wild-deeper",
                    FilterChainMatch {
                        server_names: vec!["*.api.example.com".into()],
                        ..Default::default()
                    },
                ),
                ("none", FilterChainMatch::default()),
            ],
            false,
        );
        let with_sni = |n: &'static str| {
            let mut i = info("1.1.1.1:443", "2.2.2.2:5");
            i.server_name = Some(n);
            picked(&s, &i)
        };
        assert_eq!(with_sni("WWW.example.com").as_deref(), Some("exact"));
        assert_eq!(with_sni("a.b.example.com").as_deref(), Some("wild"));
        assert_eq!(
            with_sni("v1.api.example.com").as_deref(),
            Some("wild-deeper")
        );
        assert_eq!(with_sni("example.com").as_deref(), Some("none"));
        assert_eq!(
            picked(&s, &info("1.1.1.1:443", "2.2.2.2:5")).as_deref(),
            Some("none")
        );
    }

    #[test]
    fn transport_and_application_protocols() {
        let s = selector(
            vec![
                (
                    "tls",
                    FilterChainMatch {
                        transport_protocol: Some("tls".into()),
                        ..Default::default()
                    },
                ),
                (
                    "raw-h2",
                    FilterChainMatch {
                        transport_protocol: Some("raw_buffer".into()),
                        application_protocols: vec!["h2c".into()],
                        ..Default::default()
                    },
                ),
                (
                    "raw-h1",
                    FilterChainMatch {
                        transport_protocol: Some("raw_buffer".into()),
                        application_protocols: vec!["http/1.1".into()],
                        ..Default::default()
                    },
                ),
                (
                    "raw",
                    FilterChainMatch {
                        transport_protocol: Some("raw_buffer".into()),
                        ..Default::default()
                    },
                ),
            ],
            false,
        );
        let mut i = info("1.1.1.1:80", "2.2.2.2:5");
        assert_eq!(picked(&s, &i).as_deref(), Some("raw"));
        let both = ["http/1.1".to_string(), "h2c".to_string()];
        i.application_protocols = &both;
        assert_eq!(
            picked(&s, &i).as_deref(),
            Some("raw-h1"),
            "the client's first protocol wins"
        );
        let h2 = ["h2c".to_string()];
        i.application_protocols = &h2;
        assert_eq!(picked(&s, &i).as_deref(), Some("raw-h2"));
        i.transport_protocol = "tls";
        assert_eq!(picked(&s, &i).as_deref(), Some("tls"));
    }

    #[test]
    fn source_type_prefix_and_port() {
        let s = selector(
            vec![
                (
                    "local",
                    FilterChainMatch {
                        source_type: SourceType::SameIpOrLoopback,
                        ..Default::default()
                    },
                ),
                (
                    "ext-10",
                    FilterChainMatch {
                        source_type: SourceType::External,
                        source_prefix_ranges: vec![cidr("10.0.0.0/8")],
                        ..Default::default()
                    },
                ),
                (
                    "ext-10-port",
                    FilterChainMatch {
                        source_type: SourceType::External,
                        source_prefix_ranges: vec![cidr("10.0.0.0/8")],
                        source_ports: vec![4000],
                        ..Default::default()
                    },
                ),
            ],
            true,
        );
        assert_eq!(
            picked(&s, &info("10.9.9.9:80", "127.0.0.1:5")).as_deref(),
            Some("local")
        );
        assert_eq!(
            picked(&s, &info("10.9.9.9:80", "10.9.9.9:5")).as_deref(),
            Some("local")
        );
        assert_eq!(
            picked(&s, &info("10.9.9.9:80", "10.1.1.1:5")).as_deref(),
            Some("ext-10")
        );
        assert_eq!(
            picked(&s, &info("10.9.9.9:80", "10.1.1.1:4000")).as_deref(),
            Some("ext-10-port")
        );
        assert_eq!(
            picked(&s, &info("10.9.9.9:80", "11.1.1.1:4000")).as_deref(),
            Some("default")
        );
    }

    #[test]
    fn direct_source_prefix() {
        let s = selector(
            vec![(
                "pods",
                FilterChainMatch {
                    direct_source_prefix_ranges: vec![cidr("fd00:213::/32")],
                    ..Default::default()
                },
            )],
            false,
        );
        assert_eq!(
            picked(&s, &info("[::1]:80", "[fd00:213::5]:5")).as_deref(),
            Some("pods")
        );
        assert_eq!(picked(&s, &info("[::1]:80", "[fd00:214::5]:5")), None);
    }
}
