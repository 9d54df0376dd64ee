//! A fake HTTP upstream on loopback speaking real HTTP/1.1 and HTTP/2 (hyper, auto-detected):
//! it answers every request with a JSON description of what it received, and lets the
//! request steer the answer through headers:
//! - `x-status: N`: answer with status N;
//! - `x-delay-ms: N`: wait N ms first;
//! - `x-close: 1`: answer with `Connection: close`;
//! - `x-body-bytes: N`: answer with N bytes instead of the JSON;
//! - `x-trailer: value`: end the body with a trailer `x-trailer: value`;
//! - `x-drip: n,ms`: answer with n chunks of 10 bytes, each ms after the previous;
//! - `x-fail-key: k` with `x-fail-times: n`: the first n requests with key k fail, with
//!   `x-fail-status` (default 503), or by closing the connection without an answer when
//!   `x-fail-status: reset`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A running fake HTTP upstream; stops on drop.
pub struct HttpUpstream {
    pub addr: SocketAddr,
    pub name: String,
    connections: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    seen: Seen,
    task: JoinHandle<()>,
}

/// The JSON description of every request answered, in order.
type Seen = Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

impl HttpUpstream {
    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    /// What the requests answered so far looked like (the JSON each answer describes).
    pub fn seen(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct OpenGuard(Arc<AtomicUsize>);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

type Failures = Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>;

/// The failure this request must produce, if any: `Some(None)` is a reset.
fn failure(fails: &Failures, req: &Request<Incoming>) -> Option<Option<u16>> {
    let h = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok());
    let key = h("x-fail-key")?;
    let times: u32 = h("x-fail-times")?.parse().ok()?;
    let mut m = fails.lock().unwrap();
    let n = m.entry(key.to_string()).or_insert(0);
    if *n >= times {
        return None;
    }
    *n += 1;
    Some(match h("x-fail-status") {
        Some("reset") => None,
        Some(s) => s.parse().ok(),
        None => Some(503),
    })
}

/// `Upgrade: websocket`: answers 101, then echoes every byte on the upgraded connection.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let mut io = TokioIo::new(up);
            let (mut r, mut w) = tokio::io::split(&mut io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert("upgrade", http::HeaderValue::from_static("websocket"));
    r.headers_mut()
        .insert("connection", http::HeaderValue::from_static("upgrade"));
    r
}

async fn answer(name: Arc<str>, conn: usize, seen: Seen, req: Request<Incoming>) -> Response<Body> {
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v == "websocket")
    {
        return websocket(req);
    }
    let drip = req
        .headers()
        .get("x-drip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(','))
        .and_then(|(n, ms)| Some((n.parse::<usize>().ok()?, ms.parse::<u64>().ok()?)));
    if let Some((n, ms)) = drip {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tokio::spawn(async move {
            for _ in 0..n {
                if tx
                    .send(Ok(Frame::data(Bytes::from_static(b"0123456789"))))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
        return Response::new(body);
    }
    let h = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if let Some(ms) = h("x-delay-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = h("x-status").and_then(|v| v.parse().ok()).unwrap_or(200u16);
    let close = h("x-close").is_some();
    let trailer = h("x-trailer");
    let body_bytes: Option<usize> = h("x-body-bytes").and_then(|v| v.parse().ok());
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    let received = req.into_body().collect().await;
    let (len, req_trailers) = match received {
        Ok(c) => {
            let t = c.trailers().cloned();
            (c.to_bytes().len(), t)
        }
        Err(_) => (0, None),
    };
    let description = json!({
        "server": &*name,
        "conn": conn,
        "method": method,
        "uri": uri,
        "path": path,
        "version": version,
        "headers": headers,
        "body_len": len,
        "trailers": req_trailers.map(|t| t.iter().map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or(""))).collect::<Vec<_>>()),
    });
    seen.lock().unwrap().push(description.clone());
    let payload: Bytes = match body_bytes {
        Some(n) => Bytes::from(vec![b'x'; n]),
        None => Bytes::from(description.to_string()),
    };
    let body: Body = match trailer {
        Some(t) => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-trailer", t.parse().expect("trailer value"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(payload)),
                Ok(Frame::trailers(trailers)),
            ];
            StreamBody::new(futures_stream(frames)).boxed()
        }
        None => Full::new(payload).boxed(),
    };
    let mut r = Response::new(body);
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r.headers_mut()
        .insert("x-upstream", name.parse().expect("name is a header value"));
    if close {
        r.headers_mut()
            .insert("connection", http::HeaderValue::from_static("close"));
    }
    r
}

fn futures_stream<T: Send + 'static>(items: Vec<T>) -> tokio_stream::Iter<std::vec::IntoIter<T>> {
    tokio_stream::iter(items)
}

/// Starts a fake HTTP upstream named `name` on an ephemeral loopback port.
pub async fn start(name: &str) -> HttpUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let name_arc: Arc<str> = Arc::from(name);
    let (c, o, r) = (connections.clone(), open.clone(), requests.clone());
    let fails: Failures = Default::default();
    let seen: Seen = Default::default();
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let conn = c.fetch_add(1, Ordering::SeqCst) + 1;
            o.fetch_add(1, Ordering::SeqCst);
            let guard = OpenGuard(o.clone());
            let name = name_arc.clone();
            let r = r.clone();
            let fails = fails.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let _guard = guard;
                let svc = hyper::service::service_fn(move |req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let name = name.clone();
                    let seen = seen.clone();
                    let fail = failure(&fails, &req);
                    async move {
                        match fail {
                            // An error from the service: hyper closes without an answer.
                            Some(None) => Err("reset on request".to_string()),
                            Some(Some(status)) => {
                                let mut r =
                                    Response::new(Full::new(Bytes::from("failing")).boxed());
                                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                                r.headers_mut().insert("x-upstream", name.parse().unwrap());
                                Ok(r)
                            }
                            None => Ok(answer(name, conn, seen, req).await),
                        }
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    HttpUpstream {
        addr,
        name: name.to_string(),
        connections,
        open,
        requests,
        seen,
        task,
    }
}
