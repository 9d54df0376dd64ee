//! Simulated service replicas: real HTTP/1.1, HTTP/2 and gRPC servers (one port each, the
//! protocol chosen per connection) that take a latency from the service's distribution, call
//! the services they depend on through Plumb, fail at the service's error rate or as a fault
//! tells them, and record every request they receive with why they answered as they did.
//! A replica can crash (its port closes, its connections are cut), restart on the same port,
//! or stop gracefully (as a pod being scaled down).

use crate::caller::{grpc_frame, Call, Caller, MARKER};
use crate::records::{Cause, Receipt, Sent, Sink};
use crate::scenario::{Protocol, Service};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::{JoinHandle, JoinSet};

type Body = BoxBody<Bytes, Infallible>;

static CALLS: AtomicU64 = AtomicU64::new(1);

/// Where each service is reached through Plumb, and how it is spoken to.
pub type Targets = HashMap<String, (SocketAddr, Protocol)>;

/// Run-time knobs a fault turns on one replica (for a replica in a pod, sent to its process
/// as a line on its stdin).
#[derive(Default)]
pub struct Knobs {
    /// An error rate overriding the service's (f64 bits; NaN bits = none).
    error_rate: AtomicU64,
    delay_us: AtomicU64,
    pipe: std::sync::Mutex<Option<std::process::ChildStdin>>,
}

impl Knobs {
    pub fn new() -> Self {
        Self {
            error_rate: AtomicU64::new(f64::NAN.to_bits()),
            delay_us: AtomicU64::new(0),
            pipe: Default::default(),
        }
    }

    pub fn set_error_rate(&self, rate: Option<f64>) {
        self.error_rate
            .store(rate.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
        self.command(&match rate {
            Some(r) => format!("errors {r}"),
            None => "errors none".into(),
        });
    }

    pub fn set_delay(&self, d: Duration) {
        self.delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
        self.command(&format!("delay {}", d.as_micros()));
    }

    /// The stdin of the replica's process, when it runs in a pod.
    pub fn set_pipe(&self, pipe: Option<std::process::ChildStdin>) {
        *self.pipe.lock().unwrap() = pipe;
    }

    /// Sends a command line to the replica's process (nothing for an in-process one).
    pub fn command(&self, line: &str) {
        use std::io::Write;
        if let Some(p) = self.pipe.lock().unwrap().as_mut() {
            let _ = writeln!(p, "{line}");
            let _ = p.flush();
        }
    }

    /// Applies a command line (in the replica's process); false when it says to stop.
    pub fn apply(&self, line: &str) -> bool {
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("errors"), Some("none")) => self.set_error_rate(None),
            (Some("errors"), Some(r)) => self.set_error_rate(r.parse().ok()),
            (Some("delay"), Some(us)) => {
                self.set_delay(Duration::from_micros(us.parse().unwrap_or(0)))
            }
            (Some("stop"), _) => return false,
            _ => {}
        }
        true
    }
}

/// What every replica of a service shares.
pub struct ServiceCtx {
    pub spec: Service,
    pub records: Arc<dyn Sink>,
    pub caller: Arc<Caller>,
    pub targets: Arc<Targets>,
    /// mTLS: the replicas' server configuration (requiring a client certificate).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

pub struct Replica {
    pub name: String,
    pub addr: SocketAddr,
    pub knobs: Arc<Knobs>,
    ctx: Arc<ServiceCtx>,
    state: Option<Running>,
    /// For a replica in a pod: its process (then `state` is unused).
    pod: Option<crate::pods::PodProc>,
}

struct Running {
    task: JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
    inflight: Arc<AtomicUsize>,
}

impl Replica {
    /// Starts a replica on `addr` (port 0: a new one).
    pub async fn start(
        ctx: Arc<ServiceCtx>,
        name: String,
        addr: SocketAddr,
    ) -> std::io::Result<Self> {
        let mut r = Self {
            name,
            addr,
            knobs: Arc::new(Knobs::new()),
            ctx,
            state: None,
            pod: None,
        };
        r.listen().await?;
        Ok(r)
    }

    /// Starts a replica as a process in its pod.
    pub fn start_in_pod(
        ctx: Arc<ServiceCtx>,
        name: String,
        mut proc: crate::pods::PodProc,
    ) -> anyhow::Result<Self> {
        let knobs = Arc::new(Knobs::new());
        tokio::task::block_in_place(|| proc.spawn(&knobs, &name))?;
        Ok(Self {
            addr: proc.addr(),
            name,
            knobs,
            ctx,
            state: None,
            pod: Some(proc),
        })
    }

    async fn listen(&mut self) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        self.addr = listener.local_addr()?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let inflight = Arc::new(AtomicUsize::new(0));
        let draining = Arc::new(AtomicBool::new(false));
        let h = Handler {
            ctx: self.ctx.clone(),
            replica: Arc::from(self.name.as_str()),
            knobs: self.knobs.clone(),
            inflight: inflight.clone(),
            draining: draining.clone(),
            peer: Arc::from(""),
            conn_at: 0.0,
        };
        let tls = self.ctx.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let inflight2 = inflight.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let mut h = h.clone();
                        h.conn_at = h.ctx.records.now();
                        let tls = tls.clone();
                        conns.spawn(async move {
                            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                            match tls {
                                None => {
                                    let svc = hyper::service::service_fn(move |req| {
                                        let h = h.clone();
                                        async move { Ok::<_, Infallible>(h.handle(req).await) }
                                    });
                                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                                }
                                Some(acceptor) => {
                                    // A failed handshake shows at the agent (a connect failure).
                                    let Ok(s) = acceptor.accept(stream).await else { return };
                                    h.peer = Arc::from(
                                        s.get_ref()
                                            .1
                                            .peer_certificates()
                                            .and_then(|c| c.first())
                                            .map(|c| plumb_tests::tls::uri_sans(c))
                                            .unwrap_or_default()
                                            .as_str(),
                                    );
                                    let svc = hyper::service::service_fn(move |req| {
                                        let h = h.clone();
                                        async move { Ok::<_, Infallible>(h.handle(req).await) }
                                    });
                                    let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                                }
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    _ = stopped.changed() => break,
                }
            }
            // Graceful stop: no new connections; requests under way finish (HTTP/1.1
            // responses say `connection: close`), then the rest is closed.
            drop(listener);
            draining.store(true, Ordering::Relaxed);
            let deadline = Instant::now() + Duration::from_secs(5);
            while inflight2.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            conns.shutdown().await;
        });
        self.state = Some(Running {
            task,
            stop,
            inflight,
        });
        Ok(())
    }

    /// A crash: the port closes and every connection is cut at once.
    pub fn crash(&mut self) {
        if let Some(p) = self.pod.as_mut() {
            p.kill();
        }
        if let Some(s) = self.state.take() {
            s.task.abort();
        }
    }

    /// Starts again on the same port after a crash.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        if let Some(p) = self.pod.as_mut() {
            let (knobs, name) = (self.knobs.clone(), self.name.clone());
            return tokio::task::block_in_place(|| p.spawn(&knobs, &name))
                .map_err(std::io::Error::other);
        }
        if self.state.is_none() {
            self.listen().await?;
        }
        Ok(())
    }

    /// A pod leaving: stop accepting, let requests under way finish, close.
    pub async fn stop(mut self) {
        if let Some(p) = self.pod.take() {
            let knobs = self.knobs.clone();
            let _ = tokio::task::spawn_blocking(move || p.stop(&knobs)).await;
            return;
        }
        if let Some(s) = self.state.take() {
            let _ = s.stop.send(true);
            let _ = s.task.await;
            let _ = s.inflight;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.crash();
    }
}

#[derive(Clone)]
struct Handler {
    ctx: Arc<ServiceCtx>,
    replica: Arc<str>,
    knobs: Arc<Knobs>,
    inflight: Arc<AtomicUsize>,
    draining: Arc<AtomicBool>,
    /// The connection's client identity (mTLS) and when it was accepted.
    peer: Arc<str>,
    conn_at: f64,
}

struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A standard normal draw (Box–Muller).
fn normal() -> f64 {
    let u1 = fastrand::f64().max(f64::MIN_POSITIVE);
    let u2 = fastrand::f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

impl Handler {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        let _guard = InflightGuard(self.inflight.clone());
        let ctx = &self.ctx;
        let header = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let id = header("x-request-id");
        let flow = header(MARKER);
        let grpc = header("content-type").starts_with("application/grpc");
        let body = req.into_body().collect().await.map(|c| c.to_bytes());
        let stream = match (&body, grpc) {
            (Ok(b), true) if b.len() >= 9 => u32::from_be_bytes([b[5], b[6], b[7], b[8]]),
            _ => 0,
        };
        let delay = ctx.spec.latency.sample(normal())
            + Duration::from_micros(self.knobs.delay_us.load(Ordering::Relaxed));
        tokio::time::sleep(delay).await;
        let mut cause = Cause::Served;
        for (k, call) in ctx.spec.calls.iter().enumerate() {
            let Some(&(addr, protocol)) = ctx.targets.get(&call.service) else {
                continue;
            };
            // Unique per call: a retried request calls again, under its own ID.
            let n = CALLS.fetch_add(1, Ordering::Relaxed);
            let child = format!("{id}.{}{k}-{}-{n}", call.service, self.replica);
            let at = ctx.records.now();
            let started = Instant::now();
            let (outcome, child) = ctx
                .caller
                .call(&Call {
                    addr,
                    protocol,
                    service: &call.service,
                    path: &call.path,
                    id: &child,
                    flow: &flow,
                    body_bytes: 64,
                    stream: call.stream,
                })
                .await;
            let ok = outcome.ok();
            ctx.records.sent(Sent {
                id: child.clone(),
                flow: flow.clone(),
                service: call.service.clone(),
                at,
                latency: started.elapsed(),
                outcome,
                edge: false,
            });
            if !ok {
                cause = Cause::Downstream(child);
                break;
            }
        }
        if cause == Cause::Served {
            let forced = f64::from_bits(self.knobs.error_rate.load(Ordering::Relaxed));
            let rate = if forced.is_nan() {
                ctx.spec.error_rate
            } else {
                forced
            };
            if rate > 0.0 && fastrand::f64() < rate {
                cause = Cause::Injected;
            }
        }
        let ok = cause == Cause::Served && body.is_ok();
        ctx.records.receipt(Receipt {
            id,
            service: ctx.spec.name.clone(),
            replica: self.replica.to_string(),
            at: ctx.records.now(),
            ok,
            cause,
            peer: self.peer.to_string(),
            conn_at: self.conn_at,
        });
        let mut resp = if grpc {
            grpc_response(ok, stream, ctx.spec.response_bytes)
        } else {
            let status = if ok { 200 } else { 503 };
            let mut r = Response::new(
                Full::new(Bytes::from(vec![
                    b'r';
                    if ok {
                        ctx.spec.response_bytes
                    } else {
                        0
                    }
                ]))
                .boxed(),
            );
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            r
        };
        if self.draining.load(Ordering::Relaxed) && !grpc {
            resp.headers_mut()
                .insert("connection", http::HeaderValue::from_static("close"));
        }
        resp
    }
}

fn grpc_response(ok: bool, stream: u32, bytes: usize) -> Response<Body> {
    let mut r = if !ok {
        // Trailers-only: UNAVAILABLE in the headers.
        let mut r = Response::new(Full::new(Bytes::new()).boxed());
        r.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("14"));
        r
    } else {
        let n = stream.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            for i in 0..n {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                if tx
                    .send(Ok(Frame::data(grpc_frame(&vec![b'r'; bytes]))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = tx.send(Ok(Frame::trailers(t))).await;
        });
        Response::new(BodyExt::boxed(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    };
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc"),
    );
    r
}
