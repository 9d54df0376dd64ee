//! The set of listeners, changeable at run time (bootstrap at start, LDS later).
//!
//! - Added: bound (a bind error is returned, nothing changes) and served.
//! - Modified at the same address: the socket stays; new connections get the new filter
//!   chain, established ones finish on the old one.
//! - Modified to another address: the new socket is bound first, then the old one stops
//!   accepting; its connections continue.
//! - Removed: stops accepting; its connections continue until they end (or the server's
//!   drain closes them).

use super::{bind, serve, ActiveListener, Dispatch, DispatchHandle};
use crate::config;
use crate::drain;
use crate::handover::{Inherited, OfferedSocket};
use crate::overload::Overload;
use crate::redirect::Redirector;
use crate::stats::{Counter, Gauge, Store};
use crate::upstream::{ClusterManager, Upsert};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ListenerUpdateError {
    #[error("listener \"{name}\": not bound now: a hand-over to a successor agent is in progress (the successor binds it)")]
    HandoverInProgress { name: String },
    #[error(
        "listener \"{name}\": not bound: this agent is draining (its listeners no longer accept)"
    )]
    Draining { name: String },
    // The OS error is the source: `{:#}` (anyhow) and `error_chain` print it once.
    #[error("listener \"{name}\": cannot bind {address}")]
    Bind {
        name: String,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Stats {
    added: Arc<Counter>,
    modified: Arc<Counter>,
    removed: Arc<Counter>,
    create_failure: Arc<Counter>,
    active: Arc<Gauge>,
}

#[derive(Debug)]
struct Slot {
    config: Arc<config::Listener>,
    current: Arc<ArcSwap<ActiveListener>>,
    /// Bound address and the switch that stops its accept loop; `None` when not bound.
    socket: Option<(SocketAddr, watch::Sender<bool>)>,
    /// A duplicate of the listening socket, to hand to a successor agent.
    dup: Option<std::os::fd::OwnedFd>,
}

type Pending = (
    Arc<ArcSwap<ActiveListener>>,
    std::net::TcpListener,
    watch::Receiver<bool>,
);

#[derive(Debug, Default)]
struct Inner {
    slots: BTreeMap<String, Slot>,
    /// Bound before the runtime started; served by `start`.
    pending: Vec<Pending>,
    /// Listening sockets received from the agent this one takes over, used instead of
    /// binding when a listener matches one; the rest are closed by `close_inherited`.
    inherited: Vec<(OfferedSocket, std::net::TcpListener)>,
    /// Open batches: while above zero, the view and dispatch are rebuilt once at the end
    /// instead of after every change.
    batches: usize,
    /// Versions replaced or removed during a batch, kept alive until the dispatch that may
    /// still refer to them is rebuilt.
    retired: Vec<Arc<ActiveListener>>,
}

/// Changes made while it lives are published together (one rebuild of the view, the
/// dispatch and the capture destinations) when it is dropped.
pub struct ListenerBatch<'a>(&'a ListenerManager);

impl Drop for ListenerBatch<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.batches -= 1;
        if inner.batches == 0 {
            self.0.refresh_view(&inner);
            inner.retired.clear();
        }
    }
}

#[derive(Debug)]
pub struct ListenerManager {
    inner: Mutex<Inner>,
    view: ArcSwap<Vec<Arc<ActiveListener>>>,
    dispatch: DispatchHandle,
    clusters: Arc<ClusterManager>,
    /// Route configurations by name, for connection managers that use RDS.
    pub routes: Arc<crate::http::rds::RouteRegistry>,
    /// `POST /healthcheck/fail`, for the HTTP health check filters.
    pub health_check_failed: Arc<std::sync::atomic::AtomicBool>,
    store: Store,
    redirect: OnceLock<Arc<Redirector>>,
    /// The data-path runtimes each listening socket is served on: one accept loop per
    /// worker (per-core model), or one on the shared runtime.
    workers: OnceLock<Vec<tokio::runtime::Handle>>,
    runtime: OnceLock<drain::Watch>,
    /// Set while a successor is taking over: a socket bound now would not be offered to it.
    frozen: std::sync::atomic::AtomicBool,
    stats: Stats,
    overload: Arc<Overload>,
}

impl ListenerManager {
    /// The stats store (route tables from RDS register their filters' stats in it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn new(clusters: Arc<ClusterManager>, store: &Store) -> Self {
        Self::with_overload(clusters, store, Overload::unlimited(store))
    }

    /// With the overload manager whose limits and actions the accept loops follow.
    pub fn with_overload(
        clusters: Arc<ClusterManager>,
        store: &Store,
        overload: Arc<Overload>,
    ) -> Self {
        let s = store.root_scope("listener_manager");
        Self {
            inner: Mutex::new(Inner::default()),
            view: ArcSwap::from_pointee(Vec::new()),
            dispatch: Arc::new(ArcSwap::from_pointee(Dispatch::default())),
            clusters,
            routes: Default::default(),
            health_check_failed: Default::default(),
            store: store.clone(),
            redirect: OnceLock::new(),
            workers: OnceLock::new(),
            runtime: OnceLock::new(),
            frozen: std::sync::atomic::AtomicBool::new(false),
            overload,
            stats: Stats {
                added: s.counter("listener_added"),
                modified: s.counter("listener_modified"),
                removed: s.counter("listener_removed"),
                create_failure: s.counter("listener_create_failure"),
                active: s.gauge("total_listeners_active"),
            },
        }
    }

    /// The overload manager the accept loops follow.
    pub fn overload(&self) -> &Arc<Overload> {
        &self.overload
    }

    /// Every listener's current version, by name.
    pub fn all(&self) -> Arc<Vec<Arc<ActiveListener>>> {
        self.view.load_full()
    }

    /// Bound (or, when not bound, configured) address of listener `name`.
    pub fn address_of(&self, name: &str) -> Option<SocketAddr> {
        self.all()
            .iter()
            .find(|l| l.config.name == name)
            .map(|l| l.local_address)
    }

    /// Configs of the listeners that are not bound: the destinations eBPF captures.
    pub fn unbound_configs(&self) -> Vec<Arc<config::Listener>> {
        self.all()
            .iter()
            .filter(|l| !l.config.bind_to_port)
            .map(|l| l.config.clone())
            .collect()
    }

    /// Connects eBPF redirection (for original-destination lookups).
    pub fn set_redirect(&self, r: Arc<Redirector>) {
        let _ = self.redirect.set(r);
        self.refresh_view(&self.inner.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// `previous`: the version being replaced, whose unchanged filter chains are kept (with
    /// their state: connection_limit counts, token buckets), as Envoy updates only the
    /// chains that changed.
    fn build(
        &self,
        cfg: &Arc<config::Listener>,
        bound: SocketAddr,
        previous: Option<&ActiveListener>,
    ) -> Arc<ActiveListener> {
        Arc::new(ActiveListener::new(
            cfg.clone(),
            bound,
            &crate::filters::BuildContext {
                clusters: self.clusters.clone(),
                routes: self.routes.clone(),
                health_check_failed: self.health_check_failed.clone(),
                store: self.store.clone(),
            },
            self.dispatch.clone(),
            previous,
            &self.overload,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a set of changes, published together when the batch is dropped (an xDS
    /// response or a reload naming many listeners costs one rebuild, not one per listener).
    pub fn batch(&self) -> ListenerBatch<'_> {
        self.lock().batches += 1;
        ListenerBatch(self)
    }

    /// After a change: rebuilds the view now, or at the end of the open batch.
    fn changed(&self, inner: &mut Inner, retired: Vec<Arc<ActiveListener>>) {
        if inner.batches > 0 {
            inner.retired.extend(retired);
        } else {
            self.refresh_view(inner);
            drop(retired);
        }
    }

    /// Rebuilds the admin view and the original-destination dispatch after a change.
    fn refresh_view(&self, inner: &Inner) {
        let all: Vec<Arc<ActiveListener>> = inner
            .slots
            .values()
            .map(|s| s.current.load_full())
            .collect();
        self.dispatch
            .store(Arc::new(Dispatch::new(self.redirect.get().cloned(), &all)));
        self.stats.active.set(all.len() as i64);
        self.view.store(Arc::new(all));
        if let Some(r) = self.redirect.get() {
            r.set_listener_destinations(
                &inner
                    .slots
                    .values()
                    .map(|s| s.config.clone())
                    .collect::<Vec<_>>(),
            );
        }
    }

    /// Where accept loops run: the configured workers, else the current runtime.
    fn worker_handles(&self) -> Vec<tokio::runtime::Handle> {
        match self.workers.get() {
            Some(h) if !h.is_empty() => h.clone(),
            _ => vec![tokio::runtime::Handle::current()],
        }
    }

    /// The runtimes listening sockets are served on (before `start`).
    pub fn set_workers(&self, handles: Vec<tokio::runtime::Handle>) {
        let _ = self.workers.set(handles);
    }

    /// Starts one accept loop per worker on `sock` (each on its own duplicate of the socket;
    /// the kernel hands each connection to one of them).
    fn spawn_accept_loops(
        &self,
        current: &Arc<ArcSwap<ActiveListener>>,
        sock: std::net::TcpListener,
        rx: &watch::Receiver<bool>,
        watch: &drain::Watch,
    ) {
        let handles = self.worker_handles();
        let last = handles.len() - 1;
        let mut sock = Some(sock);
        for (i, rt) in handles.iter().enumerate() {
            let s = if i == last {
                sock.take()
            } else {
                sock.as_ref().and_then(|s| s.try_clone().ok())
            };
            let Some(s) = s else { continue };
            let (current, rx, watch) = (current.clone(), rx.clone(), watch.clone());
            let overload = self.overload.clone();
            // Counted from now, not from the task's first poll: a drain that starts in
            // between waits for the loop to see it.
            let accepting = watch.accepting();
            rt.spawn(async move {
                match tokio::net::TcpListener::from_std(s) {
                    Ok(l) => serve(current, l, watch, rx, overload, accepting).await,
                    Err(e) => tracing::error!(error = %e, "cannot register listener socket"),
                }
            });
        }
    }

    fn serve_socket(
        &self,
        inner: &mut Inner,
        current: Arc<ArcSwap<ActiveListener>>,
        sock: std::net::TcpListener,
    ) -> watch::Sender<bool> {
        let (tx, rx) = watch::channel(false);
        match self.runtime.get() {
            Some(watch) => self.spawn_accept_loops(&current, sock, &rx, watch),
            None => inner.pending.push((current, sock, rx)),
        }
        tx
    }

    /// Adds or replaces listener `cfg.name`.
    pub fn upsert(&self, cfg: Arc<config::Listener>) -> Result<Upsert, ListenerUpdateError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inherited = Inherited::take_listener(&mut inner.inherited, &cfg.name, cfg.address);
        if let Some(l) = &inherited {
            tracing::info!(listener = %cfg.name, address = ?l.local_addr().ok(), "using the listening socket inherited from the previous agent");
        }
        let bind_new = |cfg: &config::Listener| {
            if let Some(l) = inherited {
                return Ok(l);
            }
            if self.frozen.load(std::sync::atomic::Ordering::Acquire) {
                return Err(ListenerUpdateError::HandoverInProgress {
                    name: cfg.name.clone(),
                });
            }
            // Its accept loop would end at once, and the socket would queue connects that
            // nobody answers until the process exits.
            if self
                .runtime
                .get()
                .is_some_and(|w| w.phase() >= drain::Phase::Draining)
            {
                return Err(ListenerUpdateError::Draining {
                    name: cfg.name.clone(),
                });
            }
            bind(cfg.address, cfg.tcp_backlog_size, cfg.ipv4_compat).map_err(|source| {
                self.stats.create_failure.inc();
                ListenerUpdateError::Bind {
                    name: cfg.name.clone(),
                    address: cfg.address,
                    source,
                }
            })
        };
        // Versions replaced below stay alive until the dispatch no longer refers to them
        // (it holds them weakly), so no connection is dispatched to nothing meanwhile.
        let mut retired: Vec<Arc<ActiveListener>> = Vec::new();
        let result = match inner.slots.get(&cfg.name) {
            Some(slot) if *slot.config == *cfg => return Ok(Upsert::Unchanged),
            Some(slot)
                if slot.config.address == cfg.address
                    && slot.config.bind_to_port == cfg.bind_to_port
                    && slot.config.ipv4_compat == cfg.ipv4_compat =>
            {
                // Same socket, new chain for new connections.
                let bound = slot.socket.as_ref().map(|(a, _)| *a).unwrap_or(cfg.address);
                let new = self.build(&cfg, bound, Some(&slot.current.load()));
                retired.push(slot.current.swap(new));
                let slot = inner.slots.get_mut(&cfg.name).expect("slot exists");
                slot.config = cfg.clone();
                Upsert::Modified
            }
            existing => {
                let replacing = existing.is_some();
                let previous = existing.map(|s| s.current.load_full());
                let previous = previous.as_deref();
                let (current, socket, dup) = if cfg.bind_to_port {
                    let sock = bind_new(&cfg)?;
                    let dup = std::os::fd::AsFd::as_fd(&sock).try_clone_to_owned().ok();
                    let addr = sock
                        .local_addr()
                        .map_err(|source| ListenerUpdateError::Bind {
                            name: cfg.name.clone(),
                            address: cfg.address,
                            source,
                        })?;
                    let current = Arc::new(ArcSwap::new(self.build(&cfg, addr, previous)));
                    let stop = self.serve_socket(&mut inner, current.clone(), sock);
                    (current, Some((addr, stop)), dup)
                } else {
                    (
                        Arc::new(ArcSwap::new(self.build(&cfg, cfg.address, previous))),
                        None,
                        None,
                    )
                };
                let old = inner.slots.insert(
                    cfg.name.clone(),
                    Slot {
                        config: cfg.clone(),
                        current,
                        socket,
                        dup,
                    },
                );
                if let Some(old) = old {
                    if let Some((_, stop)) = &old.socket {
                        let _ = stop.send(true);
                    }
                    retired.push(old.current.load_full());
                }
                if replacing {
                    Upsert::Modified
                } else {
                    Upsert::Added
                }
            }
        };
        match result {
            Upsert::Added => self.stats.added.inc(),
            Upsert::Modified => self.stats.modified.inc(),
            Upsert::Unchanged => {}
        }
        if let Some(a) = inner.slots.get(&cfg.name).and_then(|s| s.socket.as_ref()) {
            tracing::info!(listener = %cfg.name, address = %a.0, ?result, "listener updated");
        }
        self.changed(&mut inner, retired);
        Ok(result)
    }

    /// Stops accepting on listener `name`; its connections continue.
    pub fn remove(&self, name: &str) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = inner.slots.remove(name) else {
            return false;
        };
        if let Some((_, stop)) = slot.socket {
            let _ = stop.send(true);
        }
        self.stats.removed.inc();
        tracing::info!(listener = %name, "listener removed; its connections continue");
        self.changed(&mut inner, vec![slot.current.load_full()]);
        true
    }

    /// While set, listeners that need a new socket are refused (a hand-over is offering the
    /// current sockets to a successor, which binds new ones itself).
    pub fn freeze_binds(&self, frozen: bool) {
        self.frozen
            .store(frozen, std::sync::atomic::Ordering::Release);
    }

    /// Listening sockets from the agent this one takes over; call before adding listeners.
    pub fn inherit(&self, sockets: Vec<(OfferedSocket, std::net::TcpListener)>) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .inherited = sockets;
    }

    /// Closes inherited sockets no listener took (once the initial configuration is in).
    pub fn close_inherited(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (o, _) in inner.inherited.drain(..) {
            tracing::info!(listener = ?o.name, address = %o.bound, "closing an inherited listening socket no listener uses");
        }
    }

    /// Duplicates of every listening socket, for a successor agent.
    pub fn offer(&self) -> Vec<(OfferedSocket, std::os::fd::OwnedFd)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .slots
            .values()
            .filter_map(|s| {
                let (bound, _) = s.socket.as_ref()?;
                let fd = s.dup.as_ref()?.try_clone().ok()?;
                Some((
                    OfferedSocket {
                        name: Some(s.config.name.clone()),
                        configured: s.config.address,
                        bound: *bound,
                    },
                    fd,
                ))
            })
            .collect()
    }

    /// Closes the duplicates kept for a successor, so that once the accept loops stop the
    /// sockets really close (a draining agent refuses new connections instead of queueing
    /// them). Called when the drain starts.
    pub fn close_duplicates(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for s in inner.slots.values_mut() {
            s.dup = None;
        }
    }

    /// Stops accepting on every listener (a successor accepts on the same sockets); their
    /// connections continue.
    pub fn stop_accepting(&self) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for s in inner.slots.values() {
            if let Some((_, stop)) = &s.socket {
                let _ = stop.send(true);
            }
        }
    }

    /// Serves the listeners bound so far on the workers; later ones start at once.
    pub fn start(&self, watch: drain::Watch) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.runtime.set(watch.clone());
        for (current, sock, rx) in std::mem::take(&mut inner.pending) {
            let a = current.load();
            tracing::info!(listener = %a.config.name, address = %a.local_address, "listening");
            self.spawn_accept_loops(&current, sock, &rx, &watch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(second_cluster: &str) -> Arc<config::Listener> {
        let tp = |c: &str| {
            format!(
                r#"{{"name": "envoy.filters.network.tcp_proxy", "typed_config": {{"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "{c}", "cluster": "{c}"}}}}"#
            )
        };
        let cl = r#"{"name": "envoy.filters.network.connection_limit", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit", "stat_prefix": "cl", "max_connections": 1}}"#;
        let snap = config::parse_bootstrap(
            &format!(
                r#"{{"static_resources": {{
                "listeners": [{{"name": "vip", "bind_to_port": false,
                    "address": {{"socket_address": {{"address": "10.96.0.10", "port_value": 80}}}},
                    "filter_chains": [
                        {{"filter_chain_match": {{"destination_port": 80}}, "filters": [{cl}, {a}]}},
                        {{"filter_chain_match": {{"destination_port": 81}}, "filters": [{b}]}}]}}],
                "clusters": [
                    {{"name": "a", "load_assignment": {{"cluster_name": "a", "endpoints": []}}}},
                    {{"name": "b", "load_assignment": {{"cluster_name": "b", "endpoints": []}}}},
                    {{"name": "c", "load_assignment": {{"cluster_name": "c", "endpoints": []}}}}]}}}}"#,
                a = tp("a"),
                b = tp(second_cluster)
            ),
            "test",
        )
        .unwrap();
        snap.listeners[0].clone()
    }

    #[test]
    fn an_update_keeps_unchanged_chains_and_their_state() {
        let store = Store::new();
        let snap = config::parse_bootstrap(r#"{"static_resources": {}}"#, "t").unwrap();
        let clusters = Arc::new(ClusterManager::new(&snap, &store));
        let m = ListenerManager::new(clusters, &store);
        m.upsert(listener("b")).unwrap();
        let first = |m: &ListenerManager| m.all()[0].chains.all().next().unwrap().clone();
        let second = |m: &ListenerManager| m.all()[0].chains.all().nth(1).unwrap().clone();
        let (keep, change) = (first(&m), second(&m));
        assert_eq!(m.upsert(listener("c")).unwrap(), Upsert::Modified);
        assert!(
            Arc::ptr_eq(&keep, &first(&m)),
            "the unchanged chain (with its connection_limit count) is kept"
        );
        assert!(!Arc::ptr_eq(&change, &second(&m)), "the changed one is new");
    }
}
