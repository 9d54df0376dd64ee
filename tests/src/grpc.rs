//! A tonic gRPC server and client on raw bytes (no generated code): service `test.Echo` with one
//! method of each kind, the same contract as `tests/scripts/grpc_echo.py`.
//!
//! - `Unary`: answers `echo:<request>`; `fail` is UNAVAILABLE ("asked to fail");
//!   `sleep:<ms>` waits first.
//! - `ServerStream`: the request is a count n; streams `0` .. `n-1`.
//! - `ClientStream`: joins the requests with `|`.
//! - `Bidi`: answers each request with `bidi:<request>`.

use bytes::{Buf, BufMut, Bytes};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type BoxStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// Messages as raw bytes.
#[derive(Clone, Copy, Default)]
pub struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The `test.Echo` service.
#[derive(Clone, Copy, Default)]
pub struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

impl<B> Service<http::Request<B>> for Echo
where
    B: hyper::body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            let mut g = tonic::server::Grpc::new(Raw);
            Ok(match req.uri().path() {
                "/test.Echo/Unary" => g.unary(Unary, req).await,
                "/test.Echo/ServerStream" => g.server_streaming(ServerStream, req).await,
                "/test.Echo/ClientStream" => g.client_streaming(ClientStream, req).await,
                "/test.Echo/Bidi" => g.streaming(Bidi, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

struct Unary;
impl Service<Request<Bytes>> for Unary {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let m = req.into_inner();
            if &m[..] == b"fail" {
                return Err(Status::unavailable("asked to fail"));
            }
            if let Some(ms) = m.strip_prefix(b"sleep:") {
                let ms: u64 = std::str::from_utf8(ms)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let mut out = b"echo:".to_vec();
            out.extend_from_slice(&m);
            Ok(Response::new(out.into()))
        })
    }
}

struct ServerStream;
impl Service<Request<Bytes>> for ServerStream {
    type Response = Response<BoxStream>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<BoxStream>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let n: u32 = std::str::from_utf8(req.get_ref())
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Status::invalid_argument("not a count"))?;
            let s: BoxStream = Box::pin(tokio_stream::iter(
                (0..n.min(10_000)).map(|i| Ok(Bytes::from(i.to_string()))),
            ));
            Ok(Response::new(s))
        })
    }
}

struct ClientStream;
impl Service<Request<Streaming<Bytes>>> for ClientStream {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let mut s = req.into_inner();
            let mut parts = Vec::new();
            while let Some(m) = s.message().await? {
                parts.push(m);
            }
            Ok(Response::new(parts.join(&b"|"[..]).into()))
        })
    }
}

struct Bidi;
impl Service<Request<Streaming<Bytes>>> for Bidi {
    type Response = Response<BoxStream>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<BoxStream>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let s: BoxStream = Box::pin(req.into_inner().map(|m| {
                m.map(|m| {
                    let mut out = b"bidi:".to_vec();
                    out.extend_from_slice(&m);
                    Bytes::from(out)
                })
            }));
            Ok(Response::new(s))
        })
    }
}

/// Serves `test.Echo` (HTTP/2, h2c) on a loopback port until the task is dropped.
pub async fn serve() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(l).await
}

/// Serves `test.Echo` on `l`.
pub async fn serve_on(l: tokio::net::TcpListener) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(Echo)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await;
    });
    (addr, task)
}

/// A `test.Echo` client over one HTTP/2 connection.
#[derive(Clone)]
pub struct Client(tonic::client::Grpc<tonic::transport::Channel>);

impl Client {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(Self(tonic::client::Grpc::new(ch)))
    }

    fn path(m: &'static str) -> http::uri::PathAndQuery {
        http::uri::PathAndQuery::from_static(m)
    }

    /// A unary call, with `grpc-timeout` when `timeout` is set.
    pub async fn unary(&mut self, m: &str, timeout: Option<Duration>) -> Result<String, Status> {
        let mut req = Request::new(Bytes::copy_from_slice(m.as_bytes()));
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        self.0
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let r = self
            .0
            .unary(req, Self::path("/test.Echo/Unary"), Raw)
            .await?;
        Ok(String::from_utf8_lossy(r.get_ref()).into_owned())
    }

    pub async fn server_stream(&mut self, n: u32) -> Result<Vec<String>, Status> {
        self.0
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let r = self
            .0
            .server_streaming(
                Request::new(Bytes::from(n.to_string())),
                Self::path("/test.Echo/ServerStream"),
                Raw,
            )
            .await?;
        collect(r.into_inner()).await
    }

    pub async fn client_stream(&mut self, ms: &[&str]) -> Result<String, Status> {
        let items: Vec<Bytes> = ms.iter().map(|m| Bytes::from(m.to_string())).collect();
        self.0
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let r = self
            .0
            .client_streaming(
                Request::new(tokio_stream::iter(items)),
                Self::path("/test.Echo/ClientStream"),
                Raw,
            )
            .await?;
        Ok(String::from_utf8_lossy(r.get_ref()).into_owned())
    }

    pub async fn bidi(&mut self, ms: &[&str]) -> Result<Vec<String>, Status> {
        let items: Vec<Bytes> = ms.iter().map(|m| Bytes::from(m.to_string())).collect();
        self.0
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let r = self
            .0
            .streaming(
                Request::new(tokio_stream::iter(items)),
                Self::path("/test.Echo/Bidi"),
                Raw,
            )
            .await?;
        collect(r.into_inner()).await
    }
}

async fn collect(mut s: Streaming<Bytes>) -> Result<Vec<String>, Status> {
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.push(String::from_utf8_lossy(&m).into_owned());
    }
    Ok(out)
}
