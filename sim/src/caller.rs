//! The simulated clients' side of a request: HTTP/1.1 over keep-alive connections, HTTP/2
//! with prior knowledge, and gRPC (unary and server streaming) spoken by hand over HTTP/2, so
//! every status, trailer and failure is seen as it is. Every request carries the simulator's
//! marker header `x-plumb-sim: <flow>` and its own `x-request-id`.

use crate::records::Outcome;
use crate::scenario::Protocol;
use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;

/// The marker header on every simulated request (and gRPC metadata).
pub const MARKER: &str = "x-plumb-sim";

pub struct Caller {
    h1: Client<HttpConnector, Full<Bytes>>,
    h2: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

/// One request to make.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub service: &'a str,
    pub path: &'a str,
    pub id: &'a str,
    pub flow: &'a str,
    pub body_bytes: usize,
    /// gRPC: server streaming with this many messages (0: unary).
    pub stream: u32,
}

impl Caller {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        // Idle connections are dropped before the proxy's drain_timeout (5 s) could close
        // them under a request, as a well-configured client does.
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(3))
            .build(connector.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(3))
            .http2_only(true)
            .build(connector);
        Self { h1, h2, timeout }
    }

    /// Sends the request and waits for the whole response; never fails, never panics.
    /// Returns the outcome and the ID it belongs to: the request's, or `<id>~again` when it
    /// was sent a second time (below).
    pub async fn call(&self, c: &Call<'_>) -> (Outcome, String) {
        match tokio::time::timeout(self.timeout, self.exchange(c)).await {
            Ok(o) => o,
            Err(_) => (
                Outcome::Transport(format!("no response within {:?}", self.timeout)),
                c.id.to_string(),
            ),
        }
    }

    async fn exchange(&self, c: &Call<'_>) -> (Outcome, String) {
        let first = self.attempt(c).await;
        match &first {
            // An HTTP/2 stream the server says it never processed (opened as its GOAWAY
            // arrived, or refused) is sent again once, on a new connection, as RFC 9113 §8.7
            // allows and gRPC's transparent retry does (hyper's pool does not). Under a new ID:
            // if the first one was processed after all, its access-log line names a request no
            // client sent, and the checks say so.
            Outcome::Transport(e) if c.protocol != Protocol::Http1 && unprocessed(e) => {
                let id = format!("{}~again", c.id);
                let again = Call { id: &id, ..*c };
                (self.attempt(&again).await, id)
            }
            _ => (first, c.id.to_string()),
        }
    }

    async fn attempt(&self, c: &Call<'_>) -> Outcome {
        let grpc = c.protocol == Protocol::Grpc;
        let uri = if grpc {
            let method = if c.stream > 0 { "Stream" } else { "Unary" };
            format!("http://{}/sim.{}/{method}", c.addr, camel(c.service))
        } else {
            format!("http://{}{}", c.addr, c.path)
        };
        let mut b = http::Request::builder()
            .uri(uri)
            .header("host", c.service)
            .header("x-request-id", c.id)
            .header(MARKER, c.flow);
        let body = if grpc {
            b = b
                .method("POST")
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            // The request message: how many messages to stream back, then padding.
            let mut msg = c.stream.to_be_bytes().to_vec();
            msg.resize(4 + c.body_bytes, b'q');
            grpc_frame(&msg)
        } else if c.body_bytes > 0 {
            b = b.method("POST");
            Bytes::from(vec![b'q'; c.body_bytes])
        } else {
            b = b.method("GET");
            Bytes::new()
        };
        let req = match b.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => return Outcome::Transport(format!("building the request: {e}")),
        };
        let client = if c.protocol == Protocol::Http1 {
            &self.h1
        } else {
            &self.h2
        };
        let resp = match client.request(req).await {
            Ok(r) => r,
            Err(e) => return Outcome::Transport(error_chain(&e)),
        };
        let status = resp.status().as_u16();
        let header_grpc = grpc_status(resp.headers());
        let collected = match resp.into_body().collect().await {
            Ok(c) => c,
            Err(e) => return Outcome::Transport(format!("reading the body: {}", error_chain(&e))),
        };
        if !grpc || status != 200 {
            return Outcome::Status(status);
        }
        let trailers_status = collected.trailers().and_then(grpc_status);
        let body = collected.to_bytes();
        match trailers_status.or(header_grpc) {
            Some(0) => {
                let messages = count_frames(body);
                let want = c.stream.max(1) as usize;
                if messages == Some(want) {
                    Outcome::Status(200)
                } else {
                    Outcome::Transport(format!(
                        "grpc: {messages:?} whole messages, expected {want}"
                    ))
                }
            }
            Some(code) => Outcome::Grpc(code),
            None => Outcome::Transport("grpc: no grpc-status".into()),
        }
    }
}

/// Whether an HTTP/2 failure says the server did not process the request: the connection
/// went away (GOAWAY) before the stream was accepted, or the stream was refused.
fn unprocessed(e: &str) -> bool {
    e.contains("not a result of an error")
        || e.contains("refused stream")
        || e.contains("REFUSED_STREAM")
}

/// `pricing-v2` → `PricingV2` (a gRPC service name).
pub fn camel(s: &str) -> String {
    s.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    Bytes::from(out)
}

/// How many whole length-prefixed messages `body` holds; `None` if it ends inside one.
pub fn count_frames(mut body: Bytes) -> Option<usize> {
    let mut n = 0;
    while body.has_remaining() {
        if body.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() < 5 + len {
            return None;
        }
        body.advance(5 + len);
        n += 1;
    }
    Some(n)
}

fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_counted_whole() {
        let mut b = grpc_frame(b"abc").to_vec();
        b.extend_from_slice(&grpc_frame(b""));
        assert_eq!(count_frames(Bytes::from(b.clone())), Some(2));
        b.pop();
        b.extend_from_slice(&[0, 0, 0]);
        assert_eq!(count_frames(Bytes::from(b)), None);
        assert_eq!(camel("pricing-v2"), "PricingV2");
    }
}
