//! Listening sockets: bind, accept, hand each connection to the listener's filter chain, and
//! stop accepting when the drain starts. `manager` adds, updates and removes listeners at run
//! time without dropping established connections.

mod chain;
pub mod inspector;
mod manager;
pub use chain::{ChainSelector, ConnectionInfo};
pub use manager::{ListenerManager, ListenerUpdateError};

use crate::config;
use crate::drain;
use crate::filters::FilterChain;
use crate::overload::Overload;
use crate::redirect::{self, Redirector};
use crate::stats::{Counter, Gauge, Histogram};
use crate::transport::{Downstream, Stream};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Envoy's `listener.<address>.*` stats.
#[derive(Debug)]
pub struct ListenerStats {
    pub downstream_cx_total: Arc<Counter>,
    pub downstream_cx_active: Arc<Gauge>,
    pub downstream_cx_destroy: Arc<Counter>,
    pub downstream_cx_length_ms: Arc<Histogram>,
    pub no_filter_chain_match: Arc<Counter>,
    pub downstream_pre_cx_timeout: Arc<Counter>,
    /// Closed at accept: the global connection limit (overload manager) was reached.
    pub downstream_global_cx_overflow: Arc<Counter>,
    /// Closed: the listener's own connection limit (runtime) was reached.
    pub downstream_cx_overflow: Arc<Counter>,
    /// Closed at accept by `reject_incoming_connections`.
    pub downstream_cx_overload_reject: Arc<Counter>,
}

/// A listener's connection limit (`envoy.resource_limits.listener.<name>.connection_limit`)
/// and its count, shared by the listener's versions so an update does not reset it.
#[derive(Debug, Default)]
pub struct ListenerLimit {
    active: std::sync::atomic::AtomicU64,
    max: std::sync::atomic::AtomicU64,
}

/// A connection counted against its listener's limit until dropped.
struct LimitSlot<'a>(&'a ListenerLimit);

impl Drop for LimitSlot<'_> {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ListenerLimit {
    fn admit(&self) -> Option<LimitSlot<'_>> {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.active.fetch_add(1, Relaxed);
        if before >= self.max.load(Relaxed) {
            self.active.fetch_sub(1, Relaxed);
            return None;
        }
        Some(LimitSlot(self))
    }
}

/// A bound listener with its filter chain, ready to serve.
#[derive(Debug)]
pub struct ActiveListener {
    pub config: Arc<config::Listener>,
    pub local_address: SocketAddr,
    pub stat_name: String,
    pub stats: ListenerStats,
    /// The filter chains, selected per connection by `filter_chain_match`.
    pub chains: ChainSelector,
    /// `http_inspector`, when the listener has it.
    http_inspector: Option<inspector::HttpInspector>,
    /// `tls_inspector`, when the listener has it.
    tls_inspector: Option<inspector::TlsInspector>,
    /// Where `use_original_dst` listeners hand connections, by original destination; one
    /// handle shared by every listener, replaced whenever the listener set changes.
    pub dispatch: DispatchHandle,
    /// The runtime connection limit, if one is set for this listener's name.
    limit: Option<Arc<ListenerLimit>>,
}

pub type DispatchHandle = Arc<ArcSwap<Dispatch>>;

/// Accepts until the server drains or `stop` turns true, handing each connection to the
/// listener's current version (so an update takes effect for new connections only); the
/// socket closes when this returns. Established connections are not affected.
///
/// The overload manager is consulted here: while `stop_accepting_connections` is active the
/// loop waits (connections queue in the kernel); a connection beyond the global limit, or
/// while `reject_incoming_connections` is active, is reset at once.
pub async fn serve(
    current: Arc<ArcSwap<ActiveListener>>,
    listener: tokio::net::TcpListener,
    mut watch: drain::Watch,
    mut stop: tokio::sync::watch::Receiver<bool>,
    overload: Arc<Overload>,
    // Until this loop ends, a drain waits: it cannot see nothing in flight between an accept
    // and the accepted connection being counted.
    _accepting: drain::AcceptGuard,
) {
    let mut paused = overload.paused();
    loop {
        if *paused.borrow() {
            tokio::select! {
                _ = paused.wait_for(|p| !*p) => {}
                _ = watch.draining() => break,
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let accepted = tokio::select! {
            // A loop told to stop accepts nothing more, even with connections queued.
            biased;
            _ = watch.draining() => break,
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => r,
            // Stop accepting at once when the overload action starts.
            _ = paused.wait_for(|p| *p) => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Counted from the accept on, through the listener filters and the chain
                // match: a drain (a hand-over, a stop) waits for it.
                let counted = watch.track();
                let l = current.load_full();
                if overload.rejecting() {
                    l.stats.downstream_cx_overload_reject.inc();
                    reset(stream);
                    continue;
                }
                let Some(slot) = overload.admit() else {
                    l.stats.downstream_global_cx_overflow.inc();
                    reset(stream);
                    continue;
                };
                let conn_watch = watch.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    l.accepted(stream, peer, conn_watch, counted).await
                });
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off briefly instead of spinning.
                tracing::warn!(listener = %current.load().config.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let l = current.load();
    tracing::info!(listener = %l.config.name, address = %l.local_address, "listener stopped accepting");
}

/// Closes a connection with a reset (SO_LINGER 0), as Envoy closes one it refuses: the
/// client learns at once, and no TIME_WAIT is left behind.
fn reset(stream: tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Original-destination dispatch, shared by `use_original_dst` listeners. It refers to the
/// listeners weakly: they refer to it (through the shared handle), and a cycle would keep
/// every listener alive after its server stopped.
#[derive(Debug, Default)]
pub struct Dispatch {
    pub redirect: Option<Arc<Redirector>>,
    /// `bind_to_port: false` listeners by exact address, and wildcard-address ones by port.
    pub by_addr: HashMap<SocketAddr, Weak<ActiveListener>>,
    pub by_port: HashMap<u16, Weak<ActiveListener>>,
}

impl Dispatch {
    pub fn new(redirect: Option<Arc<Redirector>>, listeners: &[Arc<ActiveListener>]) -> Self {
        let mut d = Self {
            redirect,
            ..Self::default()
        };
        for l in listeners.iter().filter(|l| !l.config.bind_to_port) {
            if l.config.address.ip().is_unspecified() {
                d.by_port.insert(l.config.address.port(), Arc::downgrade(l));
            } else {
                d.by_addr.insert(l.config.address, Arc::downgrade(l));
            }
        }
        d
    }

    /// Whether some listener (alive or not) is registered for `orig`.
    fn knows(&self, orig: SocketAddr) -> bool {
        self.by_addr.contains_key(&orig) || self.by_port.contains_key(&orig.port())
    }

    fn target(&self, orig: SocketAddr) -> Option<Arc<ActiveListener>> {
        self.by_addr
            .get(&orig)
            .and_then(Weak::upgrade)
            .or_else(|| self.by_port.get(&orig.port()).and_then(Weak::upgrade))
    }
}

/// Envoy names listener stats by address with ':' replaced: `listener.127.0.0.1_10000.*`.
pub fn stat_name_for(cfg: &config::Listener, bound: SocketAddr) -> String {
    match &cfg.stat_prefix {
        Some(p) => p.clone(),
        None => bound.to_string().replace(':', "_"),
    }
}

/// Binds a listening socket as Envoy does (SO_REUSEADDR, configured backlog). IPv6 sockets
/// are IPv6-only unless `dual_stack`.
pub fn bind(
    addr: SocketAddr,
    backlog: u32,
    dual_stack: bool,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(!dual_stack)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl ActiveListener {
    pub fn new(
        cfg: Arc<config::Listener>,
        bound: SocketAddr,
        ctx: &crate::filters::BuildContext,
        dispatch: DispatchHandle,
        previous: Option<&ActiveListener>,
        overload: &Overload,
    ) -> Self {
        let store = &ctx.store;
        let stat_name = stat_name_for(&cfg, bound);
        let s = store.tagged_scope("listener", "envoy_listener_address", &stat_name);
        let stats = ListenerStats {
            downstream_cx_total: s.counter("downstream_cx_total"),
            downstream_cx_active: s.gauge("downstream_cx_active"),
            downstream_cx_destroy: s.counter("downstream_cx_destroy"),
            downstream_cx_length_ms: s.histogram("downstream_cx_length_ms"),
            no_filter_chain_match: s.counter("no_filter_chain_match"),
            downstream_pre_cx_timeout: s.counter("downstream_pre_cx_timeout"),
            downstream_global_cx_overflow: s.counter("downstream_global_cx_overflow"),
            downstream_cx_overflow: s.counter("downstream_cx_overflow"),
            downstream_cx_overload_reject: s.counter("downstream_cx_overload_reject"),
        };
        let limit = overload.listener_limit(&cfg.name).map(|max| {
            let l = previous.and_then(|p| p.limit.clone()).unwrap_or_default();
            l.max.store(max, std::sync::atomic::Ordering::Relaxed);
            l
        });
        let http_inspector = cfg
            .listener_filters
            .contains(&config::ListenerFilter::HttpInspector)
            .then(|| inspector::HttpInspector::new(store));
        let any_tls = cfg
            .filter_chains
            .iter()
            .chain(&cfg.default_filter_chain)
            .any(|fc| fc.tls.is_some());
        let ssl = any_tls.then(|| crate::tls::SslStats::new(&s));
        let build = |fc: &config::FilterChain| {
            previous
                .and_then(|p| p.chains.all().find(|c| c.config == *fc).cloned())
                .unwrap_or_else(|| Arc::new(FilterChain::new(fc, ctx, ssl.as_ref())))
        };
        let tls_inspector = cfg
            .listener_filters
            .contains(&config::ListenerFilter::TlsInspector)
            .then(|| inspector::TlsInspector::new(store));
        let chains = ChainSelector::new(
            cfg.filter_chains
                .iter()
                .map(|fc| (fc.filter_chain_match.clone(), build(fc)))
                .collect(),
            cfg.default_filter_chain.as_ref().map(build),
        );
        Self {
            config: cfg,
            local_address: bound,
            stat_name,
            stats,
            chains,
            http_inspector,
            tls_inspector,
            dispatch,
            limit,
        }
    }

    /// Runs the listener filters, then hands the connection to the listener configured for
    /// its original destination (when `use_original_dst` found one) or handles it here.
    async fn accepted(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        watch: drain::Watch,
        counted: drain::ConnectionGuard,
    ) {
        // Dual-stack listeners see IPv4 clients as v4-mapped IPv6: use the plain IPv4 form.
        let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        // A listener bound to one address knows its local address; only a wildcard-bound one
        // asks the socket (a system call per connection).
        let local = if self.local_address.ip().is_unspecified() {
            canonical(stream.local_addr().unwrap_or(self.local_address))
        } else {
            canonical(self.local_address)
        };
        // Boxed: each stage's future then holds a pointer, not its own 200-byte copy, for the
        // connection's life.
        let mut ds = Box::new(Downstream::new(
            Stream::Tcp(stream),
            canonical(peer),
            local,
            watch,
        ));
        // original_dst runs here, on the listener that accepted the connection; the other
        // listener filters run on the listener that handles it (`handle`), as in Envoy, where
        // a handed-off connection goes through its new listener's filters.
        let mut dispatch = None;
        for f in &self.config.listener_filters {
            match f {
                config::ListenerFilter::HttpInspector | config::ListenerFilter::TlsInspector => {}
                config::ListenerFilter::OriginalDst => {
                    let d = self.dispatch.load_full();
                    ds.original_dst = d
                        .redirect
                        .as_ref()
                        .and_then(|r| r.original_dst(ds.peer, ds.local))
                        .or_else(|| ds.io.tcp().and_then(redirect::so_original_dst))
                        // Addressed to this listener itself: no original destination (and no loop).
                        .filter(|o| *o != ds.local);
                    dispatch = Some(d);
                }
            }
        }
        // A listener replaced since this dispatch was loaded no longer upgrades: the current
        // dispatch has its successor.
        let target = match (&dispatch, ds.original_dst) {
            (Some(d), Some(o)) if self.config.use_original_dst => match d.target(o) {
                Some(t) => Some(t),
                // Only an entry whose listener was replaced meanwhile: not every passthrough miss.
                None if d.knows(o) => self.dispatch.load().target(o),
                None => None,
            },
            _ => None,
        };
        match target {
            Some(target) => target.handle(ds, counted).await,
            None => self.handle(ds, counted).await,
        }
    }

    /// Runs the listener filters that read the client's bytes, under
    /// `listener_filters_timeout`. `false`: close the connection.
    async fn inspect(&self, ds: &mut Downstream) -> bool {
        if self.http_inspector.is_none() && self.tls_inspector.is_none() {
            return true;
        }
        let mut closing = ds.watch.clone();
        // In Envoy's usual order: TLS first (the HTTP inspector skips TLS connections).
        let stage = async {
            if let Some(t) = &self.tls_inspector {
                if !t.inspect(ds).await {
                    return false;
                }
            }
            match &self.http_inspector {
                Some(h) => h.inspect(ds).await,
                None => true,
            }
        };
        let bounded = async {
            match self.config.listener_filters_timeout {
                Some(limit) => tokio::time::timeout(limit, stage).await.ok(),
                None => Some(stage.await),
            }
        };
        tokio::select! {
            r = bounded => r.unwrap_or_else(|| {
                self.stats.downstream_pre_cx_timeout.inc();
                // Envoy: close, unless told to match a chain with what is known so far.
                self.config.continue_on_listener_filters_timeout
            }),
            // The drain time is over: a connection that has not yet said what it is ends
            // with the rest.
            _ = closing.closing() => false,
        }
    }

    /// Runs the listener filters, selects the filter chain and runs the connection through it.
    /// `_counted`: the connection's place in the drain, held until it ends.
    async fn handle(&self, mut ds: Box<Downstream>, _counted: drain::ConnectionGuard) {
        let _limit = match &self.limit {
            Some(l) => match l.admit() {
                Some(slot) => Some(slot),
                None => {
                    self.stats.downstream_cx_overflow.inc();
                    if let Some(tcp) = ds.io.tcp() {
                        let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
                    }
                    return;
                }
            },
            None => None,
        };
        // Boxed, as the terminal filters are: a connection's task keeps room only for what
        // it is doing now.
        if !Box::pin(self.inspect(&mut ds)).await {
            return;
        }
        let s = &self.stats;
        let Some(chain) = self.chains.select(&ConnectionInfo::of(&ds)) else {
            // Envoy closes it without creating a connection (not in downstream_cx_total).
            s.no_filter_chain_match.inc();
            tracing::debug!(listener = %self.config.name, peer = %ds.peer, destination = %ds.destination(), "no filter chain matches");
            return;
        };
        let started = Instant::now();
        s.downstream_cx_total.inc();
        s.downstream_cx_active.inc();
        ds.io.set_nodelay();
        chain.run(ds).await;
        s.downstream_cx_active.dec();
        s.downstream_cx_destroy.inc();
        s.downstream_cx_length_ms.record(started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;
    use crate::upstream::ClusterManager;

    #[test]
    fn the_dispatch_does_not_keep_listeners_alive() {
        let snap = crate::config::parse_bootstrap(
            r#"{"static_resources": {
                "listeners": [{"name": "vip", "bind_to_port": false,
                    "address": {"socket_address": {"address": "10.96.0.10", "port_value": 80}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": "vip", "cluster": "c"}}]}]}],
                "clusters": [{"name": "c", "load_assignment": {"cluster_name": "c", "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": 1}}}}]}]}}]}}"#,
            "test",
        )
        .unwrap();
        let store = Store::new();
        let clusters = Arc::new(ClusterManager::new(&snap, &store));
        let handle: DispatchHandle = Arc::new(ArcSwap::from_pointee(Dispatch::default()));
        let cfg = snap.listeners[0].clone();
        let l = Arc::new(ActiveListener::new(
            cfg.clone(),
            cfg.address,
            &crate::filters::BuildContext {
                clusters: clusters.clone(),
                routes: Default::default(),
                health_check_failed: Default::default(),
                store: store.clone(),
            },
            handle.clone(),
            None,
            &Overload::unlimited(&store),
        ));
        handle.store(Arc::new(Dispatch::new(None, std::slice::from_ref(&l))));
        assert!(handle.load().target(cfg.address).is_some());
        let weak = Arc::downgrade(&l);
        drop(l);
        assert!(
            weak.upgrade().is_none(),
            "the listener ↔ dispatch cycle would keep it alive"
        );
        assert!(handle.load().target(cfg.address).is_none());
    }
}
