//! The byte stream of a proxied connection, on either side, whatever carries it: plain TCP,
//! TLS over TCP (server side for filter chains that terminate it, client side for clusters
//! that originate it; boxed, so the plain variants stay small), and in-memory pipes in tests.
//! Filters, the copy loop and the upstream connect code see only `Stream` and `Downstream`.

use crate::drain;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

/// A connection's byte stream. An enum rather than a trait object: the set is closed, and
/// dispatch is a branch the compiler sees through.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    /// An in-memory pipe (tests, and seams that need no socket).
    Memory(DuplexStream),
    /// TLS terminated here (a downstream connection of a chain with a DownstreamTlsContext).
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS originated here (an upstream connection of a cluster with an UpstreamTlsContext).
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Taken away for a moment (while a handshake owns the socket); reads end, writes fail.
    Detached,
}

/// Dispatches to the variant's stream; `$detached` for `Detached`.
macro_rules! each {
    ($self:expr, $s:ident => $e:expr, $detached:expr) => {
        match $self {
            Stream::Tcp($s) => $e,
            Stream::Memory($s) => $e,
            Stream::TlsServer($s) => $e,
            Stream::TlsClient($s) => $e,
            Stream::Detached => $detached,
        }
    };
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Tcp(s)
    }
}

impl From<DuplexStream> for Stream {
    fn from(s: DuplexStream) -> Self {
        Stream::Memory(s)
    }
}

impl Stream {
    /// Makes the next close an abort (RST) so the peer learns the stream broke; never blocks.
    pub fn set_abort_on_close(&self) {
        if let Some(s) = self.tcp() {
            let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
        }
    }

    pub fn set_nodelay(&self) {
        if let Some(s) = self.tcp() {
            let _ = s.set_nodelay(true);
        }
    }

    /// The protocol ALPN negotiated, on a TLS stream.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Stream::TlsServer(s) => s.get_ref().1.alpn_protocol(),
            Stream::TlsClient(s) => s.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }

    /// Whether the bytes are TLS terminated or originated here.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::TlsServer(_) | Stream::TlsClient(_))
    }

    /// Peeks at the bytes received so far without consuming them, waiting until there are
    /// more than `seen`, or the buffer is full, or the peer has closed its side. Returns the
    /// byte count and whether the peer closed (then no more will come). For listener filters
    /// that inspect the client's first bytes.
    pub async fn peek_more(&self, buf: &mut [u8], seen: usize) -> io::Result<(usize, bool)> {
        let Stream::Tcp(s) = self else {
            // In-memory streams cannot be peeked: nothing to inspect.
            return Ok((0, true));
        };
        use std::os::fd::AsRawFd;
        loop {
            let ready = s.ready(tokio::io::Interest::READABLE).await?;
            let closed = ready.is_read_closed();
            let r = s.try_io(tokio::io::Interest::READABLE, || {
                // SAFETY: `buf` is valid for `buf.len()` writable bytes for the whole call.
                let n = unsafe {
                    libc::recv(
                        s.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_PEEK,
                    )
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let n = n as usize;
                // Nothing new yet: report "would block" so the readiness is cleared and the
                // next wait is for new bytes, not a spin.
                if n == seen && n != 0 && n < buf.len() && !closed {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match r {
                Ok(n) => return Ok((n, closed || n == 0)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The TCP socket underneath, where there is one (original destination lookups).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::TlsServer(s) => Some(s.get_ref().0),
            Stream::TlsClient(s) => Some(s.get_ref().0),
            Stream::Memory(_) | Stream::Detached => None,
        }
    }

    /// TLS: the session holds received data not read yet (plaintext, or the peer's
    /// close_notify), which the socket's readiness does not show.
    pub fn tls_holds_input(&self) -> bool {
        match self {
            Stream::TlsClient(s) => !s.get_ref().1.wants_read(),
            Stream::TlsServer(s) => !s.get_ref().1.wants_read(),
            _ => false,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf), Poll::Ready(Ok(())))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf), Poll::Ready(Err(detached())))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx), Poll::Ready(Ok(())))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx), Poll::Ready(Ok(())))
    }
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream detached")
}

/// Envoy's transport protocol of a connection no TLS inspector has looked at.
pub const RAW_BUFFER: &str = "raw_buffer";
/// The transport protocol the TLS inspector sets.
pub const TLS: &str = "tls";

/// What is known about a downstream connection, handed from listener filters to the filter
/// chain match and then to the network filters (Envoy's connection socket + stream info).
#[derive(Debug)]
pub struct Downstream {
    pub io: Stream,
    /// The client's address (IPv4 clients of a dual-stack socket in plain IPv4 form).
    pub peer: SocketAddr,
    /// The address the connection was accepted on.
    pub local: SocketAddr,
    /// Where the client meant to connect, when it was redirected (eBPF, iptables).
    pub original_dst: Option<SocketAddr>,
    /// SNI, once a TLS inspector has read it.
    pub server_name: Option<String>,
    /// `raw_buffer` until a TLS inspector says `tls`.
    pub transport_protocol: &'static str,
    /// ALPN offered by the client, or protocols an HTTP inspector detected (`http/1.1`, `h2c`).
    pub application_protocols: Vec<String>,
    /// What the TLS handshake established, when the chain terminates TLS.
    pub tls: Option<Box<crate::tls::TlsInfo>>,
    pub watch: drain::Watch,
}

impl Downstream {
    pub fn new(io: Stream, peer: SocketAddr, local: SocketAddr, watch: drain::Watch) -> Self {
        Self {
            io,
            peer,
            local,
            original_dst: None,
            server_name: None,
            transport_protocol: RAW_BUFFER,
            application_protocols: Vec::new(),
            tls: None,
            watch,
        }
    }

    /// The destination the chain match and filters act on: the original destination of a
    /// redirected connection, else the local address (Envoy restores the socket's local
    /// address from the original destination).
    pub fn destination(&self) -> SocketAddr {
        self.original_dst.unwrap_or(self.local)
    }

    /// Takes the stream out (a handshake takes ownership of the socket), leaving `Detached`.
    pub fn take_io(&mut self) -> Stream {
        std::mem::replace(&mut self.io, Stream::Detached)
    }
}
