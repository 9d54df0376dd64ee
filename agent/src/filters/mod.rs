//! Network (L4) filters and the chains they form, built once per listener config and shared by
//! every connection. A chain is data: non-terminal filters (connection_limit, local_ratelimit)
//! decide whether the connection goes on, then the terminal filter (tcp_proxy or the HTTP
//! connection manager) owns it.

pub mod connection_limit;
pub mod local_ratelimit;
pub mod tcp_proxy;

use crate::config;
use crate::http::rds::RouteRegistry;
use crate::stats::Store;
use crate::transport::Downstream;
use crate::upstream::ClusterManager;
use std::sync::Arc;

/// What building filter chains needs: the clusters filters send to, the route
/// configurations connection managers read (RDS), and the stats store.
#[derive(Debug, Clone)]
pub struct BuildContext {
    pub clusters: Arc<ClusterManager>,
    pub routes: Arc<RouteRegistry>,
    /// `POST /healthcheck/fail` (the HTTP health check filter answers 503 then).
    pub health_check_failed: Arc<std::sync::atomic::AtomicBool>,
    pub store: Store,
}

#[derive(Debug)]
pub enum NetworkFilter {
    TcpProxy(tcp_proxy::TcpProxy),
    Http(Arc<crate::http::ConnectionManager>),
    ConnectionLimit(connection_limit::ConnectionLimit),
    LocalRateLimit(local_ratelimit::LocalRateLimit),
    Rbac(crate::rbac::Rbac),
}

impl NetworkFilter {
    pub fn new(cfg: &config::NetworkFilter, ctx: &BuildContext) -> Self {
        let (clusters, store) = (&ctx.clusters, &ctx.store);
        match cfg {
            config::NetworkFilter::TcpProxy(tp) => NetworkFilter::TcpProxy(
                tcp_proxy::TcpProxy::new(tp.clone(), clusters.clone(), store),
            ),
            config::NetworkFilter::HttpConnectionManager(h) => {
                NetworkFilter::Http(crate::http::ConnectionManager::new(h, ctx))
            }
            config::NetworkFilter::ConnectionLimit(cl) => {
                NetworkFilter::ConnectionLimit(connection_limit::ConnectionLimit::new(cl, store))
            }
            config::NetworkFilter::LocalRateLimit(rl) => {
                NetworkFilter::LocalRateLimit(local_ratelimit::LocalRateLimit::new(rl, store))
            }
            config::NetworkFilter::Rbac(r) => NetworkFilter::Rbac(crate::rbac::Rbac::new(
                r,
                &store.root_scope(r.stat_prefix.trim_end_matches('.')),
            )),
        }
    }
}

/// One built filter chain of a listener.
#[derive(Debug)]
pub struct FilterChain {
    pub name: String,
    pub filters: Vec<NetworkFilter>,
    /// TLS termination (refusing handshakes while its secrets have not loaded).
    pub tls: Option<Arc<crate::tls::TlsAcceptor>>,
    /// What it was built from: an updated listener keeps the chains whose config is equal.
    pub config: config::FilterChain,
}

/// The value, with its box freed now (what the lint suggests, taking `T`, is what would
/// keep the box alive).
#[allow(clippy::boxed_local)]
fn unbox<T>(b: Box<T>) -> T {
    *b
}

impl FilterChain {
    /// `ssl`: the listener's `ssl.*` stats (needed when the chain terminates TLS).
    pub fn new(
        cfg: &config::FilterChain,
        ctx: &BuildContext,
        ssl: Option<&Arc<crate::tls::SslStats>>,
    ) -> Self {
        let tls = cfg.tls.as_ref().map(|t| {
            let stats = ssl
                .cloned()
                .unwrap_or_else(|| crate::tls::SslStats::new(&ctx.store.root_scope("listener")));
            crate::tls::TlsAcceptor::new(
                t,
                ctx.clusters.secrets(),
                stats,
                format!("filter chain \"{}\"", cfg.name),
            )
        });
        Self {
            name: cfg.name.clone(),
            tls,
            config: cfg.clone(),
            filters: cfg
                .filters
                .iter()
                .map(|f| NetworkFilter::new(f, ctx))
                .collect(),
        }
    }

    /// Runs the connection through the chain. Admission tokens taken by non-terminal filters
    /// (a connection_limit slot) are held until the connection ends.
    pub async fn run(&self, mut ds: Box<Downstream>) {
        if let Some(acceptor) = &self.tls {
            if !Box::pin(acceptor.accept(&mut ds)).await {
                return;
            }
        }
        let mut held: Vec<connection_limit::Slot> = Vec::new();
        for f in &self.filters {
            match f {
                NetworkFilter::ConnectionLimit(cl) => match cl.admit() {
                    Ok(slot) => held.push(slot),
                    Err(rejected) => return Box::pin(rejected.close(&mut ds)).await,
                },
                NetworkFilter::LocalRateLimit(rl) => {
                    if !rl.admit() {
                        return;
                    }
                }
                NetworkFilter::Rbac(r) => {
                    let subject = crate::rbac::Subject {
                        peer: ds.peer,
                        remote: ds.peer,
                        destination: ds.destination(),
                        server_name: ds.server_name.as_deref(),
                        tls: ds.tls.as_deref(),
                        headers: None,
                        path: None,
                        pseudo: None,
                    };
                    if !r.check(&subject) {
                        // Denied: closed at once (a reset, so the client learns).
                        ds.io.set_abort_on_close();
                        return;
                    }
                }
                // Boxed: the connection's task then holds only the terminal filter it runs,
                // not room for the largest of them (an idle connection costs less).
                // `unbox`: moving out with `*ds` would keep the box's allocation until this
                // function returns, that is for the connection's life.
                NetworkFilter::TcpProxy(tp) => return Box::pin(tp.handle(unbox(ds))).await,
                NetworkFilter::Http(h) => return Box::pin(h.handle(unbox(ds))).await,
            }
        }
    }
}
