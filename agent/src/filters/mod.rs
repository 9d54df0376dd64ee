//! L4 (network) filters, built from the config snapshot. The chain is data: one enum variant
//! per filter kind, constructed once per config and shared by every connection.

pub mod tcp_proxy;

use crate::drain;
use std::net::SocketAddr;
use tokio::net::TcpStream;

#[derive(Debug)]
pub enum NetworkFilter {
    TcpProxy(tcp_proxy::TcpProxy),
}

impl NetworkFilter {
    /// Runs the terminal filter for one accepted connection.
    pub async fn handle(
        &self,
        downstream: TcpStream,
        peer: SocketAddr,
        original_dst: Option<SocketAddr>,
        watch: drain::Watch,
    ) {
        match self {
            NetworkFilter::TcpProxy(tp) => tp.handle(downstream, peer, original_dst, watch).await,
        }
    }
}
