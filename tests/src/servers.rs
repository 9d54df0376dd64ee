//! Fake upstreams speaking real TCP on loopback: echo, named, sink, source, early close,
//! silent, reset, and a blackhole whose accept queue is full (connects hang).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running fake upstream; stops (and closes its listener) on drop.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakeServer {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
pub enum Behavior {
    /// Echo every byte back; close after the client's FIN.
    Echo,
    /// Write the name and close.
    Named(String),
    /// Read to EOF, then answer "<bytes> <fnv1a hex>\n" and close: proves half-close works.
    Sink,
    /// Write this many pattern bytes, then close.
    Source(usize),
    /// Close right after accept.
    CloseImmediately,
    /// Hold the connection open and never write.
    Silent,
    /// Abort the connection with RST once the first byte arrives (so the proxy has surely
    /// finished connecting).
    Reset,
}

async fn serve_one(mut s: TcpStream, behavior: Behavior) {
    match behavior {
        Behavior::Echo => {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
        Behavior::Named(name) => {
            let _ = s.write_all(name.as_bytes()).await;
            let _ = s.shutdown().await;
        }
        Behavior::Sink => {
            let mut buf = vec![0u8; 64 * 1024];
            let mut n = 0usize;
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(k) => {
                        n += k;
                        for b in &buf[..k] {
                            h ^= *b as u64;
                            h = h.wrapping_mul(0x0100_0000_01b3);
                        }
                    }
                    Err(_) => return,
                }
            }
            let _ = s.write_all(format!("{n} {h:016x}\n").as_bytes()).await;
            let _ = s.shutdown().await;
        }
        Behavior::Source(len) => {
            let data = crate::pattern(len);
            let _ = s.write_all(&data).await;
            let _ = s.shutdown().await;
        }
        Behavior::CloseImmediately => {
            drop(s);
        }
        Behavior::Silent => {
            let mut buf = [0u8; 1024];
            // Keep reading (and discarding) until the peer goes away.
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
        Behavior::Reset => {
            let mut b = [0u8; 1];
            let _ = s.read(&mut b).await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
    }
}

/// Starts a fake upstream on 127.0.0.1 with an ephemeral port, on the current runtime.
pub async fn start(behavior: Behavior) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake server");
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                r = listener.accept() => {
                    let Ok((s, _)) = r else { continue };
                    count.fetch_add(1, Ordering::SeqCst);
                    conns.spawn(serve_one(s, behavior.clone()));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    FakeServer {
        addr,
        accepted,
        task,
    }
}

/// An address on 127.0.0.1 where nothing listens (connects are refused), for a test to give
/// to a listener it configures or to use as a dead upstream.
///
/// Not the kernel's `bind(0)`-then-close: that port is from the ephemeral range, which the
/// kernel hands to every outgoing connect of every test running alongside, so another socket
/// could take it before the agent binds it. These come from below the ephemeral range
/// (`ip_local_port_range` starts at 32768 by default), which only explicit binds use, each
/// port at most once per process, and checked free when handed out.
pub fn closed_port() -> SocketAddr {
    free_port_in(20_000, 12_000).expect("a free port in 20000..32000 on 127.0.0.1")
}

/// A port among the `len` from `first` that this process has not handed out before and that
/// can be bound on 127.0.0.1 now (`None`: all taken). The walk starts at an offset from the
/// process id, so two processes at once rarely walk the same ports.
pub fn free_port_in(first: u16, len: u16) -> Option<SocketAddr> {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..len {
        let n = start.wrapping_add(NEXT.fetch_add(1, Ordering::SeqCst)) % u32::from(len);
        let addr = SocketAddr::from(([127, 0, 0, 1], first + n as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return Some(addr);
        }
    }
    None
}

/// A listener that never accepts, with its accept queue filled, so new connects get no
/// SYN-ACK and hang until the client's timeout.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fillers: Vec<std::net::TcpStream>,
}

impl Blackhole {
    pub fn new() -> Self {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        s.listen(0).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        // Fill until a connect no longer completes quickly.
        for _ in 0..64 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(c) => fillers.push(c),
                Err(_) => break,
            }
        }
        Self {
            addr,
            _listener: s,
            _fillers: fillers,
        }
    }
}

impl Default for Blackhole {
    fn default() -> Self {
        Self::new()
    }
}

/// A bare HTTP/1.1 upstream (keep-alive) answering every request with `status` and the body
/// `{"server":"<name>"}` after `delay`: a host that fails, or a slow one. Returns its address
/// and the count of requests it answered; it serves until the runtime ends.
pub async fn raw_http(
    name: &'static str,
    status: u16,
    delay: Duration,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw HTTP server");
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let body = format!(r#"{{"server":"{name}"}}"#);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        c.fetch_add(1, Ordering::SeqCst);
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, count)
}
