//! A real HTTP client for tests (hyper): HTTP/1.1 keep-alive connections and HTTP/2 prior
//! knowledge, with the whole response (status, headers, body, trailers) collected.

use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// A collected response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The fake upstream's JSON description of the request it received.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }
}

/// A request to `path` for `host`, with headers and a body.
pub fn request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body)))
        .expect("valid request")
}

async fn collect(r: http::Response<hyper::body::Incoming>) -> Result<Reply, hyper::Error> {
    let (parts, body) = r.into_parts();
    let c = body.collect().await?;
    let trailers = c.trailers().cloned();
    Ok(Reply {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: c.to_bytes(),
        trailers,
    })
}

/// One HTTP/1.1 keep-alive connection.
pub struct H1 {
    tx: http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.expect("connect");
        let (tx, conn) = http1::handshake(TokioIo::new(s)).await.expect("handshake");
        tokio::spawn(conn);
        Self { tx }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        self.tx.ready().await?;
        let r = tokio::time::timeout(Duration::from_secs(20), self.tx.send_request(req))
            .await
            .expect("response in time")?;
        collect(r).await
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// One HTTP/2 connection (prior knowledge); cheap to clone for concurrent streams.
#[derive(Clone)]
pub struct H2 {
    tx: http2::SendRequest<Full<Bytes>>,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.expect("connect");
        let (tx, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        Self { tx }
    }

    /// `req`'s path becomes an absolute URI (HTTP/2 needs scheme and authority).
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let (mut parts, body) = req.into_parts();
        let host = parts.headers.remove("host").expect("host header");
        parts.uri = format!("http://{}{}", host.to_str().unwrap(), parts.uri)
            .parse()
            .expect("uri");
        parts.version = Version::HTTP_2;
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            self.tx.send_request(Request::from_parts(parts, body)),
        )
        .await
        .expect("response in time")?;
        collect(r).await
    }
}

/// A GET on a new HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    H1::connect(addr)
        .await
        .send(request("GET", host, path, headers, b""))
        .await
        .expect("response")
}
