//! The upstream side of the router: pooled or new HTTP/1.1 and HTTP/2 connections to a
//! host (`upstream::pool`), and sending one request attempt on them.

use super::body::Body;
use super::exchange::Failure;
use super::h1client;
use super::ConnectionManager;
use crate::upstream::pool::{H2Conn, H2Take, H2Ticket, Pooled1};
use crate::upstream::{Cluster, Host, Priority, Resource, Slot};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How an attempt was sent: the connection to release when its response ends.
pub(super) enum Sent {
    H1(Pooled1),
    /// PROTOTYPE: the own client's connection goes back by itself with the response's end.
    Own,
    H2(Stream),
}

/// One stream taken on a shared HTTP/2 connection, given back when dropped: with the
/// response's end, a failed or retried attempt, a timeout or a cancelled request alike.
pub(super) struct Stream(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a request goes through Plumb's own HTTP/1.1 client: every request but an
/// upgrade (hyper hands the connection over after a 101) or a CONNECT.
fn own_client(req: &Request<Body>) -> bool {
    !req.headers().contains_key(http::header::UPGRADE) && req.method() != http::Method::CONNECT
}

/// A request waiting for a connection (Envoy's pending request): it holds the circuit
/// breaker's pending slot and `upstream_rq_pending_active` until it has one.
struct Pending {
    _slot: Slot,
    active: Arc<crate::stats::Gauge>,
    /// `upstream_cx_overflow` counted for this request already.
    overflowed: bool,
}

impl Pending {
    fn enter(cluster: &Cluster, priority: Priority) -> Result<Self, Failure> {
        Self::enter_again(cluster, priority, None)
    }

    /// `before`: the request was pending already, and left with a connection that turned
    /// out closed before its request was written; it is still one pending request, and
    /// `overflowed` says whether it counted `upstream_cx_overflow` then.
    fn enter_again(
        cluster: &Cluster,
        priority: Priority,
        before: Option<bool>,
    ) -> Result<Self, Failure> {
        let hs = cluster.http_stats();
        let Some(slot) = cluster.breakers.try_acquire(priority, Resource::Pending) else {
            hs.upstream_rq_pending_overflow.inc();
            return Err(Failure::Overflow);
        };
        if before.is_none() {
            hs.upstream_rq_pending_total.inc();
        }
        hs.upstream_rq_pending_active.inc();
        Ok(Self {
            _slot: slot,
            active: hs.upstream_rq_pending_active.clone(),
            overflowed: before.unwrap_or(false),
        })
    }

    /// A connection slot, or `None` (counted once per request) when `max_connections` is
    /// reached.
    fn connection_slot(
        &mut self,
        cluster: &Cluster,
        host: &Host,
        priority: Priority,
    ) -> Option<Slot> {
        let slot = cluster.breakers.try_acquire_connection(priority, host);
        if slot.is_none() && !self.overflowed {
            self.overflowed = true;
            cluster.stats.upstream_cx_overflow.inc();
        }
        slot
    }
}

impl Pending {
    /// A connection slot for a request that found no idle connection: at once when the
    /// circuit breaker allows one; else, unless `room` freed one at once (by closing an idle
    /// connection), once a connection closes or idles. `None`: look in the pool again. The
    /// request is pending (`pending`, entered on first use) until it has a connection.
    async fn slot(
        pending: &mut Option<Pending>,
        cluster: &Cluster,
        host: &Host,
        priority: Priority,
        room: impl FnOnce() -> bool,
    ) -> Result<Option<Slot>, Failure> {
        let waiting = match pending.as_mut() {
            Some(p) => p,
            None => pending.insert(Pending::enter(cluster, priority)?),
        };
        // Registered before the check, so a slot given back in between is not missed.
        let available = cluster.breakers.available();
        tokio::pin!(available);
        available.as_mut().enable();
        if let Some(slot) = waiting.connection_slot(cluster, host, priority) {
            return Ok(Some(slot));
        }
        if !room() {
            available.await;
        }
        Ok(None)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.active.dec();
    }
}

impl ConnectionManager {
    /// Sends on a pooled or new connection of `protocol` to `host`. Without an idle
    /// connection the request is pending: it connects when the circuit breaker allows
    /// another connection, else waits for one to idle or close (bounded by the caller's
    /// timeout and by `max_pending_requests`).
    /// `sni`: the request's host on an `auto_sni` cluster (its connections have their own
    /// pool per name).
    pub(super) async fn send(
        &self,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
        req: Request<Body>,
        protocol: Version,
        priority: Priority,
        sni: Option<&Arc<str>>,
    ) -> Result<(Response<Body>, Sent), Failure> {
        if !host.has_pool(&cluster.breakers) {
            cluster.stats.upstream_cx_pool_overflow.inc();
            return Err(Failure::Overflow);
        }
        let sni_pool = sni.map(|n| host.sni_pool(n));
        let pool: &crate::upstream::pool::HostPool = sni_pool.as_deref().unwrap_or(&host.pool);
        if protocol == Version::HTTP_2 {
            // Boxed, as connecting is below: a request's future is moved and kept per request,
            // so it holds room only for the common path (a pooled HTTP/1.1 connection).
            let h2 =
                super::boxed_in_place(|| self.send_h2(cluster, host, req, priority, pool, sni));
            return h2.await.map(|(r, s)| (r.map(Body::incoming), s));
        }
        if own_client(&req) {
            return self
                .send_own(cluster, host, req, priority, pool, sni_pool.as_ref(), sni)
                .await;
        }
        let idle = cluster.config.http.idle_timeout;
        let mut req = req;
        let mut pending: Option<Pending> = None;
        loop {
            // A reused connection may turn out closed before the request was written: then
            // the request comes back untouched and goes on another connection.
            while let Some(mut p) = pool.take_h1(idle) {
                p.sni_pool = sni_pool.clone();
                if p.tx.ready().await.is_err() {
                    continue;
                }
                match p.tx.try_send_request(req).await {
                    Ok(r) => return Ok((r.map(Body::incoming), Sent::H1(p))),
                    Err(mut e) => match e.take_message() {
                        Some(back) => req = back,
                        None => return Err(hyper_failure(e.into_error())),
                    },
                }
            }
            // An idle connection may wait in another worker's slot; else idle connections of
            // the other client hold slots this request may need.
            let room = || pool.gather_h1(idle) || pool.evict_own(idle);
            if let Some(slot) = Pending::slot(&mut pending, cluster, host, priority, room).await? {
                let epoch = pool.epoch();
                let connecting = Box::pin(self.connect_h1(cluster, host, slot, sni));
                let tx = connecting.await?;
                drop(pending);
                let mut p = Pooled1 {
                    tx,
                    served: 0,
                    epoch,
                    sni_pool,
                };
                return match p.tx.send_request(req).await {
                    Ok(r) => Ok((r.map(Body::incoming), Sent::H1(p))),
                    Err(e) => Err(hyper_failure(e)),
                };
            }
        }
    }

    /// Sends a request without a body with Plumb's own HTTP/1.1 client, on a pooled or new
    /// connection (pending, as for hyper's, until the circuit breaker allows one).
    #[allow(clippy::too_many_arguments)]
    async fn send_own(
        &self,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
        req: Request<Body>,
        priority: Priority,
        pool: &crate::upstream::pool::HostPool,
        sni_pool: Option<&Arc<crate::upstream::pool::HostPool>>,
        sni: Option<&Arc<str>>,
    ) -> Result<(Response<Body>, Sent), Failure> {
        let idle = cluster.config.http.idle_timeout;
        let back = |epoch| h1client::ReturnTo {
            host: host.clone(),
            sni_pool: sni_pool.cloned(),
            cluster: cluster.clone(),
            epoch,
        };
        use http_body::Body as _;
        let (parts, body) = req.into_parts();
        let mut upload = (!body.is_end_stream()).then(|| h1client::Upload::new(body));
        let mut pending: Option<Pending> = None;
        // Whether the request was pending before (and counted an overflow then).
        let mut before: Option<bool> = None;
        loop {
            // Before connecting: a drain meanwhile closes the new connection at its end.
            let epoch = pool.epoch();
            let (conn, reused) = loop {
                if let Some(c) = pool.take_own(idle) {
                    break (c, true);
                }
                // An idle connection may wait in another worker's slot; else idle connections
                // (closed ones, or hyper's) hold slots this request may need; hyper's give
                // theirs back when their tasks end.
                let room = || {
                    if pool.gather_own(idle) || pool.evict_own(idle) {
                        return true;
                    }
                    pool.evict_h1();
                    false
                };
                if pending.is_none() && before.is_some() {
                    pending = Some(Pending::enter_again(cluster, priority, before)?);
                }
                let slot = Pending::slot(&mut pending, cluster, host, priority, room).await?;
                if let Some(slot) = slot {
                    // Boxed: off the common path (a pooled connection), so the request's future
                    // keeps no room for it.
                    let up = Box::pin(cluster.connect_with(
                        host.clone(),
                        slot,
                        &["http/1.1"],
                        sni.map(|s| &**s),
                    ))
                    .await
                    .map_err(|e| Failure::Connect(e.to_string()))?;
                    cluster.http_stats().upstream_cx_http1_total.inc();
                    break (h1client::Conn::new(up.stream, Some(up.guard)), false);
                }
            };
            if let Some(p) = pending.take() {
                before = Some(p.overflowed);
            }
            match h1client::send(conn, &parts, &mut upload, Some(back(epoch))).await {
                Ok(r) => return Ok((r, Sent::Own)),
                // A pooled connection that had closed: the request goes on another.
                Err(h1client::Error::NotSent(_)) if reused => continue,
                Err(h1client::Error::Body(why)) => return Err(Failure::Downstream(why)),
                Err(e) => return Err(Failure::Reset(e.to_string())),
            }
        }
    }

    async fn connect_h1(
        &self,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
        slot: Slot,
        sni: Option<&Arc<str>>,
    ) -> Result<http1::SendRequest<Body>, Failure> {
        let up = cluster
            .connect_with(host.clone(), slot, &["http/1.1"], sni.map(|s| &**s))
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        cluster.http_stats().upstream_cx_http1_total.inc();
        let guard = up.guard;
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(up.stream))
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        tokio::spawn(async move {
            let _guard = guard;
            let _ = conn.with_upgrades().await;
        });
        Ok(tx)
    }

    /// A new HTTP/2 connection to `host`.
    async fn connect_h2(
        &self,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
        slot: Slot,
        sni: Option<&Arc<str>>,
    ) -> Result<H2Conn, String> {
        let up = cluster
            .connect_with(host.clone(), slot, &["h2"], sni.map(|s| &**s))
            .await
            .map_err(|e| e.to_string())?;
        cluster.http_stats().upstream_cx_http2_total.inc();
        let guard = up.guard;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(up.stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _guard = guard;
            let _ = conn.await;
        });
        Ok(H2Conn {
            tx,
            streams: Arc::new(1.into()),
            served: Arc::new(0.into()),
        })
    }

    /// An HTTP/2 connection with a stream taken for this request: pooled, awaited while
    /// another request connects, or new (pending, as for HTTP/1.1, until it has one).
    async fn h2_conn(
        &self,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
        priority: Priority,
        pool: &crate::upstream::pool::HostPool,
        sni: Option<&Arc<str>>,
    ) -> Result<H2Conn, Failure> {
        let max = cluster.config.http.max_concurrent_streams as usize;
        let mut pending: Option<Pending> = None;
        loop {
            match pool.take_h2(max) {
                H2Take::Ready(c) => return Ok(c),
                H2Take::Wait(mut rx) => {
                    if pending.is_none() {
                        pending = Some(Pending::enter(cluster, priority)?);
                    }
                    if let Ok(o) = rx.wait_for(|o| o.is_some()).await {
                        if let Some(Err(e)) = &*o {
                            return Err(Failure::Connect(e.clone()));
                        }
                    }
                    // Connected (take a stream like any other request), or the connecting
                    // request went away (connect anew).
                }
                H2Take::Connect(ticket) => {
                    let waiting = match pending.as_mut() {
                        Some(p) => p,
                        None => pending.insert(Pending::enter(cluster, priority)?),
                    };
                    let available = cluster.breakers.available();
                    tokio::pin!(available);
                    available.as_mut().enable();
                    let Some(slot) = waiting.connection_slot(cluster, host, priority) else {
                        // max_connections reached: let another request try, and wait for a
                        // connection to close.
                        pool.abandon_h2(&ticket);
                        drop(ticket);
                        available.await;
                        continue;
                    };
                    // Cleared if this request goes away while connecting.
                    struct Abandon<'a>(&'a crate::upstream::pool::HostPool, Option<H2Ticket>);
                    impl Drop for Abandon<'_> {
                        fn drop(&mut self) {
                            if let Some(t) = &self.1 {
                                self.0.abandon_h2(t);
                            }
                        }
                    }
                    let mut guard = Abandon(pool, Some(ticket));
                    let outcome = self.connect_h2(cluster, host, slot, sni).await;
                    if let Some(t) = guard.1.take() {
                        pool.finish_h2(t, outcome.clone());
                    }
                    return outcome.map_err(Failure::Connect);
                }
            }
        }
    }

    async fn send_h2(
        &self,
        cluster: &Arc<Cluster>,
        host: &Arc<Host>,
        req: Request<Body>,
        priority: Priority,
        pool: &crate::upstream::pool::HostPool,
        sni: Option<&Arc<str>>,
    ) -> Result<(Response<Incoming>, Sent), Failure> {
        let c = self.h2_conn(cluster, host, priority, pool, sni).await?;
        // The stream the pool counted for this request, given back however it ends.
        let stream = Stream(c.streams.clone());
        let served = c.served.fetch_add(1, Ordering::Relaxed) as u32 + 1;
        if cluster
            .config
            .http
            .max_requests_per_connection
            .is_some_and(|m| served >= m)
        {
            pool.retire_h2(&c);
        }
        use http_body::Body as _;
        let mut req = req;
        // hyper resets the stream when the request body fails: this tells whose doing it was.
        let failed = (!req.body().is_end_stream()).then(|| req.body_mut().watch_failure());
        let mut tx = c.tx.clone();
        match tx.send_request(req).await {
            Ok(r) => Ok((r, Sent::H2(stream))),
            Err(e) => match failed.as_ref().and_then(|f| f.get()) {
                Some(why) => Err(Failure::Downstream(why.clone())),
                None => Err(hyper_failure(e)),
            },
        }
    }
}

/// What a failed hyper exchange was: the request body's failure (the client's doing: its
/// body error comes back as hyper's source) or the upstream's reset.
fn hyper_failure(e: hyper::Error) -> Failure {
    use std::error::Error as _;
    if e.is_user() {
        if let Some(b) = e
            .source()
            .and_then(|s| s.downcast_ref::<super::body::BodyError>())
        {
            return Failure::Downstream(h1client::BodyFailure::from(b));
        }
    }
    Failure::Reset(e.to_string())
}
