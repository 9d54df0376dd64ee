//! DNS-based membership for STRICT_DNS and LOGICAL_DNS clusters.
//!
//! STRICT_DNS: every address each endpoint's name resolves to is a host. LOGICAL_DNS: the
//! one endpoint's first address is the host. A failed resolution keeps the previous hosts.

use super::{Cluster, Host};
use crate::config::{DiscoveryType, DnsLookupFamily, Host as CfgHost};
use crate::drain;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// How long one resolution may take before it counts as a failure.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn resolve(name: &str, port: u16, family: DnsLookupFamily) -> std::io::Result<Vec<IpAddr>> {
    let found: Vec<IpAddr> =
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port))).await {
            Ok(r) => r?.map(|a| a.ip()).collect(),
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "DNS resolution timed out",
                ))
            }
        };
    let v4: Vec<IpAddr> = found.iter().copied().filter(IpAddr::is_ipv4).collect();
    let v6: Vec<IpAddr> = found.iter().copied().filter(IpAddr::is_ipv6).collect();
    let mut out = match family {
        DnsLookupFamily::V4Only => v4,
        DnsLookupFamily::V6Only => v6,
        DnsLookupFamily::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsLookupFamily::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
        DnsLookupFamily::All => found,
    };
    out.dedup();
    if out.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{name} has no address for lookup family {}",
                family.as_str()
            ),
        ));
    }
    Ok(out)
}

/// Resolves the cluster's endpoints once and installs the result.
pub(super) async fn refresh(cluster: Arc<Cluster>) {
    let cfg = &cluster.config;
    cluster.stats.update_attempt.inc();
    let mut hosts = Vec::new();
    for l in &cfg.localities {
        for e in &l.endpoints {
            let ips = match &e.host {
                CfgHost::Ip(ip) => vec![*ip],
                CfgHost::Name(n) => match resolve(n, e.port, cfg.dns_lookup_family).await {
                    Ok(ips) => ips,
                    Err(err) => {
                        tracing::warn!(cluster = %cfg.name, host = %n, error = %err, "DNS resolution failed; keeping previous hosts");
                        cluster.stats.update_failure.inc();
                        return;
                    }
                },
            };
            let take = if cfg.discovery == DiscoveryType::LogicalDns {
                1
            } else {
                ips.len()
            };
            for ip in ips.into_iter().take(take) {
                hosts.push(Arc::new(Host::new(
                    SocketAddr::new(ip, e.port),
                    e.hostname.clone().unwrap_or_else(|| e.host.to_string()),
                    l.priority,
                    l.locality.clone(),
                    e.weight,
                    e.health_status,
                )));
            }
        }
    }
    cluster.set_hosts(hosts);
    cluster.stats.update_success.inc();
}

pub(super) async fn refresh_loop(cluster: Arc<Cluster>, mut shutdown: drain::Watch) {
    let every = cluster.config.dns_refresh_rate;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {
                if cluster.is_retired() {
                    return;
                }
                refresh(cluster.clone()).await
            }
            _ = shutdown.draining() => return,
        }
    }
}
