//! The listener model: listeners, their listener filters, filter chains and how a chain is
//! matched, and the network filters (`config::listener` reads them).

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub stat_prefix: Option<String>,
    pub tcp_backlog_size: u32,
    /// Selected per connection by their `filter_chain_match` (Envoy's order and specificity).
    pub filter_chains: Vec<FilterChain>,
    /// Used when no chain matches; without it such a connection is closed and counted.
    pub default_filter_chain: Option<FilterChain>,
    /// Run in order on each accepted connection, before the chain match.
    pub listener_filters: Vec<ListenerFilter>,
    /// `None`: no limit (Envoy's `0s`). Envoy's default is 15 s.
    pub listener_filters_timeout: Option<Duration>,
    /// On that timeout, match a chain with what is known instead of closing.
    pub continue_on_listener_filters_timeout: bool,
    /// Hand each connection to the listener whose address is its original destination
    /// (Envoy's `use_original_dst` / original_dst listener filter).
    pub use_original_dst: bool,
    /// `false`: not bound; the address names a destination that redirected connections to it
    /// are handed to (and that eBPF captures).
    pub bind_to_port: bool,
    /// On `::`: accept IPv4 too (dual-stack socket).
    pub ipv4_compat: bool,
}

/// Listener filters: they read what the connection is (original destination; SNI and ALPN
/// once the inspectors exist) before a filter chain is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerFilter {
    OriginalDst,
    /// Reads the client's first bytes: HTTP/1.x or HTTP/2 prior knowledge sets the
    /// application protocol (`http/1.0`, `http/1.1`, `h2c`) for the chain match.
    HttpInspector,
    /// Reads the ClientHello: sets the transport protocol (`tls`), the server name (SNI)
    /// and the application protocols (ALPN) for the chain match.
    TlsInspector,
}

impl ListenerFilter {
    /// Waits for the client's bytes (so it runs under `listener_filters_timeout`).
    pub fn reads_data(self) -> bool {
        matches!(
            self,
            ListenerFilter::HttpInspector | ListenerFilter::TlsInspector
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilterChain {
    pub name: String,
    pub filter_chain_match: FilterChainMatch,
    /// Non-terminal filters first, exactly one terminal filter last.
    pub filters: Vec<NetworkFilter>,
    /// TLS termination (`transport_socket` with a DownstreamTlsContext); `None`: the bytes
    /// are handed on as they come (plain, or TLS passed through).
    pub tls: Option<DownstreamTls>,
}

/// An IP prefix, normalised (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub net: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, len: u8) -> Self {
        let net = match addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - len.min(32))
                };
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len.min(128))
                };
                IpAddr::V6((bits & mask).into())
            }
        };
        Self { net, len }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.net, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Cidr::new(ip, self.len).net == self.net
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// Envoy's `FilterChainMatch.source_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SourceType {
    #[default]
    Any,
    SameIpOrLoopback,
    External,
}

/// Envoy's `FilterChainMatch`: an empty field matches anything (as the least specific choice).
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct FilterChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<Cidr>,
    /// Lower-cased; `*.example.com` matches any name below example.com.
    pub server_names: Vec<String>,
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
    pub direct_source_prefix_ranges: Vec<Cidr>,
    pub source_type: SourceType,
    pub source_prefix_ranges: Vec<Cidr>,
    pub source_ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NetworkFilter {
    TcpProxy(TcpProxy),
    HttpConnectionManager(Box<http::HttpConnectionManager>),
    ConnectionLimit(ConnectionLimit),
    LocalRateLimit(LocalRateLimit),
    Rbac(Box<rbac::RbacConfig>),
}

impl NetworkFilter {
    /// A terminal filter ends the chain: it owns the connection from then on.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            NetworkFilter::TcpProxy(_) | NetworkFilter::HttpConnectionManager(_)
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub cluster: String,
    /// `None`: disabled (Envoy's `idle_timeout: 0s`). Envoy's default is one hour.
    pub idle_timeout: Option<Duration>,
    pub max_connect_attempts: u32,
    pub max_downstream_connection_duration: Option<Duration>,
    /// Written when each connection ends (the HTTP access loggers and formats).
    pub access_logs: Vec<http::access_log::AccessLog>,
    /// `hash_policy: [{source_ip: {}}]`: the client's IP is the key of hashing balancers.
    pub hash_source_ip: bool,
}

/// `envoy.filters.network.connection_limit`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionLimit {
    pub stat_prefix: String,
    pub max_connections: u64,
    /// How long a connection over the limit is held before it is closed.
    pub delay: Option<Duration>,
}

/// `envoy.filters.network.local_ratelimit`: a token bucket on new connections.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRateLimit {
    pub stat_prefix: String,
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
}
