//! The server: binds sockets, runs the data path on its own multi-threaded runtime and the
//! admin server on a small separate one (so a busy data path never starves observability),
//! and drives startup, readiness and the drain sequence on shutdown.

use crate::admin;
use crate::config::Snapshot;
use crate::drain::{Drain, Phase};
use crate::listener::{self, ListenerManager};
use crate::logging::LogControl;
use crate::redirect::Redirector;
use crate::stats::{Gauge, Store};
use crate::upstream::ClusterManager;
use anyhow::Context as _;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// How long a new agent waits for the old one's offer, and for its release.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds on how long a running agent waits for a successor to be ready (the successor says
/// how long it may take: its initial xDS fetch timeout plus a margin).
const MIN_READY_WAIT: Duration = Duration::from_secs(30);
const MAX_READY_WAIT: Duration = Duration::from_secs(1800);

/// What a successor adds to its initial fetch timeout when telling the old agent how long to
/// wait for it.
const READY_MARGIN: Duration = Duration::from_secs(60);

/// Grace given to connection tasks to finish after the drain time ends and they are told to close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct Options {
    /// Data-path worker threads (Envoy's `--concurrency`).
    pub concurrency: usize,
    pub worker_model: WorkerModel,
    /// How long established connections may continue after shutdown begins (`--drain-time-s`).
    pub drain_time: Duration,
    /// Handle SIGTERM/SIGINT (the binary does; in-process tests do not).
    pub handle_signals: bool,
    /// Write the bound admin address here once listening (Envoy's `--admin-address-path`).
    pub admin_address_path: Option<PathBuf>,
    /// Where the config came from, for `/server_info`.
    pub config_source: String,
    /// The bootstrap file, for reloads (SIGHUP); `None` for the bundled default.
    pub config_path: Option<PathBuf>,
    /// Persist the last good xDS configuration here and start from it (`--xds-cache`).
    pub xds_cache: Option<PathBuf>,
    pub command_line: Vec<String>,
    /// Serve hand-overs to a successor on this unix socket, and take over from the agent
    /// serving it when `takeover` is set (`--upgrade-socket`).
    pub upgrade_socket: Option<PathBuf>,
    /// Take the sockets and eBPF links of the agent serving `upgrade_socket` (`--takeover`).
    pub takeover: bool,
    /// What an agent does once a successor has taken over and its connections have drained.
    pub after_takeover: AfterTakeover,
    /// Command-line overrides of the bootstrap, applied again on reload.
    pub overrides: crate::config::Overrides,
}

/// How the data path uses its worker threads (`--worker-model`; docs/benchmarks.md has the
/// measurements behind the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WorkerModel {
    /// What measured best (docs/benchmarks.md): per-core with one worker (a single-threaded
    /// runtime, no cross-thread wake-ups), shared with several (work stealing evens out
    /// connections that per-core workers would keep where they were accepted).
    #[default]
    Auto,
    /// Thread per core: each worker is a single-threaded runtime that accepts on every
    /// listening socket and runs the connections it accepted, start to end (Envoy's model).
    PerCore,
    /// One multi-threaded work-stealing runtime for every connection.
    Shared,
}

impl WorkerModel {
    fn resolve(self, concurrency: usize) -> WorkerModel {
        match self {
            WorkerModel::Auto if concurrency <= 1 => WorkerModel::PerCore,
            WorkerModel::Auto => WorkerModel::Shared,
            m => m,
        }
    }
}

/// What an agent does after handing over to a successor and draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AfterTakeover {
    /// Exit (systemd, a shell).
    #[default]
    Exit,
    /// Stay idle until SIGTERM: under a supervisor that restarts exited processes (a
    /// Kubernetes pod), exiting would start a fresh agent that takes over back.
    Wait,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            worker_model: WorkerModel::default(),
            drain_time: Duration::from_secs(30),
            handle_signals: false,
            admin_address_path: None,
            config_source: "<in-process>".into(),
            config_path: None,
            xds_cache: None,
            command_line: Vec::new(),
            upgrade_socket: None,
            takeover: false,
            after_takeover: AfterTakeover::Exit,
            overrides: crate::config::Overrides::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    /// Stop accepting, let connections finish within the drain time.
    Graceful,
    /// Close everything now (`/quitquitquit`, a second signal).
    Immediate,
}

/// Envoy's `server.*` gauges.
#[derive(Debug)]
pub struct ServerStats {
    pub live: Arc<Gauge>,
    pub state: Arc<Gauge>,
    pub uptime: Arc<Gauge>,
    pub concurrency: Arc<Gauge>,
    pub memory_allocated: Arc<Gauge>,
    pub memory_heap_size: Arc<Gauge>,
    pub memory_physical_size: Arc<Gauge>,
    pub total_connections: Arc<Gauge>,
}

/// What the admin server and the data path share.
pub struct Shared {
    /// The bootstrap in force (replaced by a reload).
    pub snapshot: ArcSwap<Snapshot>,
    pub store: Store,
    pub clusters: Arc<ClusterManager>,
    pub listeners: Arc<ListenerManager>,
    pub drain: Drain,
    pub health_check_failed: AtomicBool,
    pub initialized: AtomicBool,
    pub started: Instant,
    pub started_wall: SystemTime,
    /// Place in a line of hand-overs (`server.hot_restart_generation`, `uptime_all_epochs`).
    pub epoch: crate::handover::Epoch,
    pub options: Options,
    pub log: Option<LogControl>,
    pub stats: ServerStats,
    /// eBPF redirection, when configured and set up.
    pub redirect: Option<Arc<Redirector>>,
    /// The ADS client, when `dynamic_resources` is configured.
    pub xds: Option<Arc<crate::xds::XdsClient>>,
    /// What must be ready before the server is (Envoy's init manager).
    pub init: Arc<crate::init::InitManager>,
    shutdown_tx: watch::Sender<Option<ShutdownKind>>,
    /// The admin socket (configured address, duplicate descriptor), for a successor.
    admin_socket: Option<(SocketAddr, std::os::fd::OwnedFd)>,
    /// True while a successor is taking over: the admin server stops accepting.
    admin_paused: watch::Sender<bool>,
    /// Set when a successor has taken over: drain without deregistering redirection.
    pub handed_over: AtomicBool,
    /// The hand-over in progress when this agent started with `--takeover`.
    takeover: std::sync::Mutex<Option<crate::handover::Inherited>>,
    /// Set by SIGTERM/SIGINT.
    signalled: watch::Sender<bool>,
}

/// Envoy's server states, as `/server_info` and `server.state` report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    Live = 0,
    Draining = 1,
    PreInitializing = 2,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "LIVE",
            Self::Draining => "DRAINING",
            Self::PreInitializing => "PRE_INITIALIZING",
        }
    }
}

impl Shared {
    pub fn state(&self) -> ServerState {
        if self.drain.phase() != Phase::Running || self.health_check_failed.load(Ordering::Relaxed)
        {
            ServerState::Draining
        } else if !self.initialized.load(Ordering::Acquire) {
            ServerState::PreInitializing
        } else {
            ServerState::Live
        }
    }

    /// Applies the listeners and clusters of `new` (a reloaded bootstrap): clusters are added
    /// or updated first, then listeners; listeners and clusters no longer present are removed
    /// last. Established connections are never dropped. A listener that cannot bind is
    /// reported and left as it was; everything else still applies. Settings that need a
    /// restart (admin, node, redirection) are reported as warnings.
    pub fn apply(&self, new: &Snapshot) -> Vec<String> {
        let mut problems = Vec::new();
        let old = self.snapshot.load_full();
        if old.admin.as_ref().map(|a| a.address) != new.admin.as_ref().map(|a| a.address) {
            problems.push("admin address changes need a restart; kept the current one".into());
        }
        if old.redirect.is_some() != new.redirect.is_some()
            || old
                .redirect
                .as_ref()
                .map(|r| (&r.cgroups, &r.capture, r.sk_msg, &r.listener))
                != new
                    .redirect
                    .as_ref()
                    .map(|r| (&r.cgroups, &r.capture, r.sk_msg, &r.listener))
        {
            problems
                .push("plumb.redirect changes need a restart; kept the current redirection".into());
        }
        // The redirect listener's address is compiled into the eBPF programs: it stays.
        let pinned = old.redirect.as_ref().map(|r| r.listener.clone());
        for c in &new.clusters {
            self.clusters.upsert(c.clone());
        }
        for l in &new.listeners {
            if pinned.as_deref() == Some(l.name.as_str()) {
                if old.listeners.iter().any(|o| o.name == l.name && **o != **l) {
                    problems.push(format!("listener \"{}\" receives redirected connections; changes to it need a restart", l.name));
                }
                continue;
            }
            if let Err(e) = self.listeners.upsert(l.clone()) {
                problems.push(e.to_string());
            }
        }
        // Only what the old bootstrap defined and the new one does not: listeners and
        // clusters from xDS are the control plane's to remove.
        for l in &old.listeners {
            if pinned.as_deref() != Some(l.name.as_str())
                && !new.listeners.iter().any(|n| n.name == l.name)
            {
                self.listeners.remove(&l.name);
            }
        }
        for c in &old.clusters {
            if new.cluster(&c.name).is_none() {
                self.clusters.remove(&c.name);
            }
        }
        let mut kept = new.clone();
        kept.admin = old.admin.clone();
        kept.redirect = old.redirect.clone();
        kept.xds = old.xds.clone();
        if let Some(p) = &pinned {
            kept.listeners.retain(|l| l.name != *p);
            if let Some(l) = old.listeners.iter().find(|l| l.name == *p) {
                kept.listeners.push(l.clone());
            }
        }
        self.snapshot.store(Arc::new(kept));
        problems
    }

    /// Re-reads the bootstrap file and applies it (SIGHUP). An invalid file changes nothing.
    pub fn reload(&self) {
        let Some(path) = &self.options.config_path else {
            tracing::warn!("reload requested, but the bundled default configuration is in use: nothing to reload");
            return;
        };
        let scope = self.store.root_scope("server");
        match crate::config::parse_bootstrap_file_with(path, &self.options.overrides) {
            Err(e) => {
                scope.counter("reload_failure").inc();
                tracing::error!(file = %path.display(), "reload rejected, the running configuration stays:\n{e}");
            }
            Ok(new) => {
                let problems = self.apply(&new);
                for p in &problems {
                    tracing::warn!("reload: {p}");
                }
                scope.counter("reload_success").inc();
                tracing::info!(file = %path.display(), listeners = new.listeners.len(), clusters = new.clusters.len(), "configuration reloaded");
            }
        }
    }

    /// Starts the drain: listeners stop accepting and their sockets close (new connects are
    /// refused); established connections continue.
    pub fn stop_listening(&self) {
        // Fail open first: captured connects go to their destinations instead of meeting a
        // closed listener (unless a successor owns capture now).
        if let Some(r) = &self.redirect {
            if !self.handed_over.load(Ordering::Acquire) {
                r.deregister();
            }
        }
        self.listeners.close_duplicates();
        self.drain.advance(Phase::Draining);
    }

    pub fn request_shutdown(&self, kind: ShutdownKind) {
        self.shutdown_tx.send_if_modified(|k| match (*k, kind) {
            (None, _) | (Some(ShutdownKind::Graceful), ShutdownKind::Immediate) => {
                *k = Some(kind);
                true
            }
            _ => false,
        });
    }

    /// Refreshes the computed `server.*` gauges (on every stats read and flush).
    pub fn refresh_server_stats(&self) {
        let s = &self.stats;
        let state = self.state();
        s.live.set((state == ServerState::Live) as i64);
        s.state.set(state as i64);
        s.uptime.set(self.started.elapsed().as_secs() as i64);
        let mem = memory_usage();
        s.memory_allocated.set(mem.allocated as i64);
        s.memory_heap_size.set(mem.heap_size as i64);
        s.memory_physical_size.set(mem.physical as i64);
        s.total_connections.set(
            self.listeners
                .all()
                .iter()
                .map(|l| l.stats.downstream_cx_active.value())
                .sum(),
        );
        if let Some(r) = &self.redirect {
            r.sync_stats();
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryUsage {
    pub allocated: u64,
    pub heap_size: u64,
    pub physical: u64,
}

/// Heap figures from glibc's allocator (no hot-path accounting) and RSS from /proc.
pub fn memory_usage() -> MemoryUsage {
    let mut m = MemoryUsage::default();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value.
        let mi = unsafe { libc::mallinfo2() };
        m.allocated = (mi.uordblks + mi.hblkhd) as u64;
        m.heap_size = (mi.arena + mi.hblkhd) as u64;
    }
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(pages) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u64>().ok())
        {
            // SAFETY: sysconf is always safe to call.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
            m.physical = pages * page;
        }
    }
    m
}

/// A running server. Dropping it does not stop it; call `shutdown` then `wait`.
pub struct ServerHandle {
    shared: Arc<Shared>,
    admin_address: Option<SocketAddr>,
    main: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl ServerHandle {
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin_address
    }

    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.shared.listeners.address_of(name)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn shutdown(&self, kind: ShutdownKind) {
        self.shared.request_shutdown(kind);
    }

    /// Blocks until the server has drained and stopped.
    pub fn wait(mut self) -> anyhow::Result<()> {
        match self.main.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => anyhow::bail!("server thread panicked"),
            None => Ok(()),
        }
    }
}

/// Binds every socket (errors are returned here, naming the listener), then starts the admin
/// and data-path runtimes on their own threads.
pub fn start(
    snapshot: Snapshot,
    options: Options,
    log: Option<LogControl>,
) -> anyhow::Result<ServerHandle> {
    let store = Store::new();
    let clusters = Arc::new(ClusterManager::new(&snapshot, &store));

    let mut inherited = None;
    if options.takeover {
        let path = options
            .upgrade_socket
            .as_deref()
            .context("--takeover needs --upgrade-socket: the socket the running agent serves")?;
        let ready_within = snapshot
            .xds
            .as_ref()
            .map(|x| x.initial_fetch_timeout)
            .unwrap_or_default()
            + READY_MARGIN;
        match crate::handover::take_over(
            path,
            TAKEOVER_TIMEOUT,
            crate::redirect::own_cgroup_id(),
            ready_within,
        ) {
            Ok(i) => {
                tracing::info!(
                    old_pid = i.old_pid,
                    old_version = %i.old_version,
                    listeners = i.listeners.len(),
                    links = i.links.len(),
                    "taking over from the running agent"
                );
                inherited = Some(i);
            }
            Err(crate::handover::TakeoverError::NoAgent(p)) => {
                tracing::info!(upgrade_socket = %p.display(), "no running agent to take over: starting fresh");
            }
            Err(e) => return Err(e.into()),
        }
    }

    let inherited_epoch = inherited.as_ref().map(|i| i.old_epoch);
    let admin_socket = match &snapshot.admin {
        Some(a) => {
            let from_old = inherited
                .as_mut()
                .and_then(|i| i.admin.take())
                .filter(|(o, _)| o.configured == a.address || o.bound == a.address)
                .map(|(_, l)| l);
            match from_old {
                Some(l) => Some(l),
                None => Some(
                    listener::bind(a.address, 128, false)
                        .with_context(|| format!("cannot bind admin address {}", a.address))?,
                ),
            }
        }
        None => None,
    };
    let admin_dup = match (&snapshot.admin, &admin_socket) {
        (Some(a), Some(s)) => {
            use std::os::fd::AsFd;
            s.as_fd()
                .try_clone_to_owned()
                .ok()
                .map(|fd| (a.address, fd))
        }
        _ => None,
    };
    let admin_address = admin_socket.as_ref().map(|s| s.local_addr()).transpose()?;
    let listeners = Arc::new(ListenerManager::new(clusters.clone(), &store));
    if let Some(i) = inherited.as_mut() {
        listeners.inherit(std::mem::take(&mut i.listeners));
    }
    for l in &snapshot.listeners {
        listeners.upsert(l.clone())?;
    }
    let redirect = match &snapshot.redirect {
        None => None,
        Some(cfg) => {
            let port = listeners
                .address_of(&cfg.listener)
                .map(|a| a.port())
                .unwrap_or(0);
            let from_old = inherited
                .as_mut()
                .map(|i| crate::redirect::InheritedRedirect {
                    links: std::mem::take(&mut i.links),
                    agent_cgroup_id: i.old_cgroup_id,
                });
            match Redirector::start(cfg, &snapshot.listeners, port, &store, from_old) {
                Ok(r) => {
                    listeners.set_redirect(r.clone());
                    Some(r)
                }
                Err(e) if cfg.required => {
                    anyhow::bail!("eBPF redirection is required but cannot start: {e}");
                }
                Err(e) => {
                    store.root_scope("redirect").gauge("active").set(0);
                    tracing::warn!(
                        "eBPF redirection is OFF: {e}. Plumb proxies only traffic addressed to its \
                         listeners (set required: true in the plumb.redirect extension to make this fatal)"
                    );
                    None
                }
            }
        }
    };
    // From here on a startup error must not leave programs attached and maps pinned.
    struct Undo(Option<Arc<Redirector>>);
    impl Drop for Undo {
        fn drop(&mut self) {
            if let Some(r) = self.0.take() {
                // Taking over: the running agent still owns capture; touch nothing shared.
                if r.taking_over() {
                    r.abandon();
                } else {
                    r.shutdown();
                }
            }
        }
    }
    let mut undo = Undo(redirect.clone());
    let init = Arc::new(crate::init::InitManager::default());
    let xds = snapshot.xds.clone().map(|cfg| {
        crate::xds::XdsClient::new(
            cfg,
            &snapshot,
            clusters.clone(),
            listeners.clone(),
            &store,
            options.xds_cache.clone(),
            &init,
        )
    });
    if let (Some(path), Some(addr)) = (&options.admin_address_path, admin_address) {
        std::fs::write(path, addr.to_string())
            .with_context(|| format!("cannot write admin address to {}", path.display()))?;
    }

    let server_scope = store.root_scope("server");
    let stats = ServerStats {
        live: server_scope.gauge("live"),
        state: server_scope.gauge("state"),
        uptime: server_scope.gauge("uptime"),
        concurrency: server_scope.gauge("concurrency"),
        memory_allocated: server_scope.gauge("memory_allocated"),
        memory_heap_size: server_scope.gauge("memory_heap_size"),
        memory_physical_size: server_scope.gauge("memory_physical_size"),
        total_connections: server_scope.gauge("total_connections"),
    };
    let concurrency = options.concurrency.max(1);
    stats.concurrency.set(concurrency as i64);
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let epoch = match &inherited_epoch {
        Some(old) => crate::handover::Epoch {
            generation: old.generation + 1,
            first_started_unix_ms: old.first_started_unix_ms,
        },
        None => crate::handover::Epoch {
            generation: 0,
            first_started_unix_ms: now_ms,
        },
    };
    server_scope
        .gauge("hot_restart_generation")
        .set(epoch.generation as i64);
    server_scope
        .gauge("hot_restart_epoch")
        .set(epoch.generation as i64);

    let (shutdown_tx, shutdown_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        store,
        clusters,
        listeners,
        drain: Drain::new(),
        health_check_failed: AtomicBool::new(false),
        initialized: AtomicBool::new(false),
        started: Instant::now(),
        started_wall: SystemTime::now(),
        epoch,
        options,
        log,
        stats,
        redirect,
        xds,
        init,
        shutdown_tx,
        admin_socket: admin_dup,
        admin_paused: watch::channel(false).0,
        handed_over: AtomicBool::new(false),
        takeover: std::sync::Mutex::new(inherited),
        signalled: watch::channel(false).0,
    });
    shared.refresh_server_stats();

    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let admin_thread = match admin_socket {
        Some(sock) => {
            let shared = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name("plumb-admin".into())
                    .spawn(move || {
                        let paused = shared.admin_paused.subscribe();
                        admin::run(sock, shared, admin_stop_rx, paused)
                    })?,
            )
        }
        None => None,
    };

    let data_shared = shared.clone();
    let main = std::thread::Builder::new()
        .name("plumb-main".into())
        .spawn(move || {
            let (rt, workers) = match data_shared.options.worker_model.resolve(concurrency) {
                WorkerModel::Shared | WorkerModel::Auto => (
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(concurrency)
                        .thread_name("plumb-worker")
                        .enable_all()
                        .build()
                        .context("cannot start the data-path runtime")?,
                    Workers::default(),
                ),
                // This thread is worker 0; the others run their own runtimes.
                WorkerModel::PerCore => (
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start the data-path runtime")?,
                    Workers::start(concurrency - 1)?,
                ),
            };
            let mut handles = vec![rt.handle().clone()];
            handles.extend(workers.handles.iter().cloned());
            data_shared.listeners.set_workers(handles);
            let result = rt.block_on(run_data_plane(data_shared, shutdown_rx));
            // Connection tasks left after the close grace are dropped with the runtimes.
            workers.stop();
            rt.shutdown_timeout(Duration::from_millis(100));
            let _ = admin_stop_tx.send(true);
            if let Some(t) = admin_thread {
                let _ = t.join();
            }
            result
        })?;

    undo.0 = None;
    Ok(ServerHandle {
        shared,
        admin_address,
        main: Some(main),
    })
}

/// The extra single-threaded runtimes of the per-core worker model, each on its own thread,
/// running whatever is spawned on it (accept loops and their connections) until stopped.
#[derive(Default)]
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    stop: Option<watch::Sender<bool>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn start(n: usize) -> anyhow::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let mut w = Self {
            stop: Some(stop),
            ..Self::default()
        };
        for i in 1..=n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a data-path worker runtime")?;
            w.handles.push(rt.handle().clone());
            let mut stop_rx = stop_rx.clone();
            w.threads.push(
                std::thread::Builder::new()
                    .name(format!("plumb-worker-{i}"))
                    .spawn(move || {
                        rt.block_on(async {
                            let _ = stop_rx.wait_for(|s| *s).await;
                        });
                        rt.shutdown_timeout(Duration::from_millis(100));
                    })?,
            );
        }
        Ok(w)
    }

    fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

async fn run_data_plane(
    shared: Arc<Shared>,
    mut shutdown_rx: watch::Receiver<Option<ShutdownKind>>,
) -> anyhow::Result<()> {
    if shared.options.handle_signals {
        tokio::spawn(handle_signals(shared.clone()));
    }
    let drain = shared.drain.clone();
    shared.clusters.initialize(drain.watch()).await;
    let taking_over = shared
        .takeover
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_some();
    // When taking over, the old agent accepts on the shared sockets until this one has its
    // configuration and the old one has released them.
    if !taking_over {
        shared.listeners.start(drain.watch());
    }
    let (xds_stop_tx, xds_stop_rx) = watch::channel(false);
    let xds_thread = match &shared.xds {
        Some(x) => match crate::xds::spawn(x.clone(), xds_stop_rx) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the xDS client");
                None
            }
        },
        None => None,
    };
    if let Some(x) = &shared.xds {
        // Ready once every init target is (the first CDS and LDS responses applied), or when
        // the initial fetch timeout passes (then serving whatever is there). As in Envoy, an
        // initial_fetch_timeout of 0 waits for the control plane without limit.
        let timeout = x.config().initial_fetch_timeout;
        let deadline = async {
            if timeout.is_zero() {
                std::future::pending::<()>().await
            }
            tokio::time::sleep(timeout).await
        };
        let mut stop = shutdown_rx.clone();
        tokio::select! {
            _ = shared.init.wait() => {}
            _ = stop.wait_for(|s| s.is_some()) => {}
            _ = deadline => {
                tracing::warn!(
                    waiting_for = ?shared.init.pending(),
                    "initial xDS fetch timed out; serving the configuration received so far"
                );
            }
        }
    }
    // Told to stop before taking over (a rollback deleting the new pod): leave everything to
    // the running agent, which resumes when the hand-over connection closes.
    let abandoned = taking_over && shutdown_rx.borrow().is_some();
    let mut refused: Option<String> = None;
    if abandoned {
        drop(
            shared
                .takeover
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        if let Some(r) = &shared.redirect {
            r.abandon();
        }
        tracing::warn!("stopping before the takeover completed: the running agent carries on");
    } else if taking_over {
        let t = shared
            .takeover
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = t {
            let old_pid = t.old_pid;
            let capture = shared.redirect.is_some();
            use crate::handover::Finish;
            match tokio::task::spawn_blocking(move || t.finish(capture, TAKEOVER_TIMEOUT)).await {
                Ok(Finish::Released) => {
                    tracing::info!(old_pid, "the old agent released its sockets")
                }
                Ok(Finish::Refused(reason)) => refused = Some(reason),
                Ok(Finish::Gone(why)) => {
                    tracing::warn!(
                        old_pid,
                        why,
                        "the old agent did not confirm the release; taking over anyway"
                    )
                }
                Err(e) => tracing::warn!(error = %e, "hand-over task failed"),
            }
        }
        if refused.is_none() {
            shared.listeners.start(drain.watch());
        }
    }
    if let Some(reason) = &refused {
        // The running agent carries on: this one must not touch anything shared, nor serve.
        if let Some(r) = &shared.redirect {
            r.abandon();
        }
        tracing::error!("the running agent refused the takeover: {reason}; stopping");
        shared.request_shutdown(ShutdownKind::Immediate);
    }
    let abandoned = abandoned || refused.is_some();
    shared.listeners.close_inherited();
    if !abandoned {
        shared.initialized.store(true, Ordering::Release);
        if let Some(r) = &shared.redirect {
            r.activate();
        }
        crate::notify::notify(&format!(
            "READY=1\nSTATUS=serving\nMAINPID={}",
            std::process::id()
        ));
    }
    let handover_thread = match shared.options.upgrade_socket.clone() {
        Some(path) if !abandoned => {
            let s = shared.clone();
            std::thread::Builder::new()
                .name("plumb-handover".into())
                .spawn(move || serve_successors(s, &path))
                .map_err(|e| tracing::error!(error = %e, "cannot start the hand-over thread"))
                .ok()
        }
        _ => None,
    };
    tokio::spawn(flush_stats(shared.clone()));
    if !abandoned {
        if let Some(every) = crate::notify::watchdog_interval() {
            tokio::spawn(crate::notify::watchdog(every));
        }
        tracing::info!(
            listeners = shared.listeners.all().len(),
            clusters = shared.clusters.all().len(),
            concurrency = shared.options.concurrency,
            "plumb is live"
        );
    }

    let kind = match shutdown_rx.wait_for(|k| k.is_some()).await {
        Ok(k) => k.unwrap_or(ShutdownKind::Immediate),
        Err(_) => ShutdownKind::Immediate,
    };
    let drain_time = match kind {
        ShutdownKind::Graceful => shared.options.drain_time,
        ShutdownKind::Immediate => Duration::ZERO,
    };
    tracing::info!(
        ?kind,
        drain_time_s = drain_time.as_secs_f64(),
        active = drain.active(),
        "draining"
    );
    let handed_over = shared.handed_over.load(Ordering::Acquire);
    if handed_over || abandoned {
        // Another agent owns the configuration: this one must not bind or change anything
        // the control plane sends, nor write the cache file they share. (Nor, abandoned,
        // tell systemd the unit is stopping.)
        if let Some(x) = &shared.xds {
            x.freeze_cache();
        }
        let _ = xds_stop_tx.send(true);
    } else {
        crate::notify::notify("STOPPING=1\nSTATUS=draining");
    }
    // Fails open first (unless another agent owns capture), then closes the listeners.
    shared.stop_listening();
    let escalated = async {
        let _ = shutdown_rx
            .wait_for(|k| *k == Some(ShutdownKind::Immediate))
            .await;
    };
    tokio::select! {
        _ = drain.wait_idle() => {}
        _ = tokio::time::sleep(drain_time) => {}
        _ = escalated => {}
    }
    if drain.active() > 0 {
        tracing::info!(
            remaining = drain.active(),
            "drain time over; closing remaining connections"
        );
    }
    let _ = xds_stop_tx.send(true);
    if let Some(t) = xds_thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    drain.advance(Phase::Closing);
    let _ = tokio::time::timeout(CLOSE_GRACE, drain.wait_idle()).await;
    if let Some(t) = handover_thread {
        // It notices Closing within its poll interval and removes the socket file.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::task::spawn_blocking(move || t.join()),
        )
        .await;
    }
    if let Some(r) = &shared.redirect {
        r.shutdown();
    }
    if handed_over && shared.options.after_takeover == AfterTakeover::Wait {
        tracing::info!("handed over and drained; waiting for SIGTERM (--after-takeover wait)");
        let mut sig = shared.signalled.subscribe();
        let _ = sig.wait_for(|s| *s).await;
    }
    tracing::info!("stopped");
    match refused {
        Some(reason) => Err(anyhow::anyhow!(
            "takeover refused by the running agent: {reason}"
        )),
        None => Ok(()),
    }
}

/// SIGUSR2 (binary upgrade, as nginx does): starts the binary this agent was started as —
/// by path, so a package upgrade's new file — with the same arguments plus `--takeover`. The
/// successor takes over through the upgrade socket and tells systemd its PID (MAINPID=); this
/// agent drains and exits.
fn spawn_successor(shared: &Shared) -> anyhow::Result<()> {
    anyhow::ensure!(
        shared.options.upgrade_socket.is_some(),
        "SIGUSR2 starts a successor that takes over through --upgrade-socket, which is not set"
    );
    anyhow::ensure!(
        shared.drain.phase() == Phase::Running && !shared.handed_over.load(Ordering::Acquire),
        "this agent is draining"
    );
    let argv = &shared.options.command_line;
    let program = argv.first().context("the command line is unknown")?;
    let mut args: Vec<String> = argv[1..].to_vec();
    if !args.iter().any(|a| a == "--takeover") {
        args.push("--takeover".into());
    }
    let mut child = std::process::Command::new(program)
        .args(&args)
        // systemd's watchdog follows the main PID, which the successor becomes.
        .env_remove("WATCHDOG_PID")
        .stdin(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let pid = child.id();
    tracing::info!(successor_pid = pid, program = %program, "successor started");
    // Reap it if it fails before taking over (it outlives this agent otherwise).
    std::thread::Builder::new()
        .name("plumb-successor".into())
        .spawn(move || match child.wait() {
            Ok(st) if !st.success() => {
                tracing::error!(successor_pid = pid, status = %st, "the successor exited")
            }
            _ => {}
        })?;
    Ok(())
}

/// Serves hand-overs to successor agents on `path` until one takes over or this agent stops.
fn serve_successors(shared: Arc<Shared>, path: &std::path::Path) {
    let listener = match crate::handover::Listener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(upgrade_socket = %path.display(), error = %e, "cannot serve hand-overs");
            return;
        }
    };
    tracing::info!(upgrade_socket = %path.display(), "serving hand-overs to a successor");
    loop {
        if shared.drain.phase() == Phase::Closing {
            break;
        }
        let channel = match listener.accept(Instant::now() + Duration::from_millis(250)) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "hand-over accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        match hand_over(&shared, &channel) {
            Ok(true) => return, // the successor serves `path` now
            Ok(false) => {}
            Err(e) => {
                let _ = shared.admin_paused.send(false);
                shared.listeners.freeze_binds(false);
                if let Some(r) = &shared.redirect {
                    r.handover_aborted();
                }
                tracing::warn!(error = %e, "hand-over aborted; this agent carries on");
            }
        }
    }
    if listener.still_ours() {
        let _ = std::fs::remove_file(path);
    }
}

/// One hand-over: offer, then release on `Ready`. `Ok(false)`: refused or abandoned.
fn hand_over(shared: &Shared, channel: &crate::handover::Channel) -> anyhow::Result<bool> {
    use crate::handover::{Message, OfferedSocket, PROTOCOL};
    use std::os::fd::AsFd;
    let hello = channel.recv(Some(Instant::now() + Duration::from_secs(5)))?;
    let Some((
        Message::Hello {
            protocol,
            pid,
            version,
            agent_cgroup_id: successor_cgroup,
            ready_within_ms,
        },
        _,
    )) = hello
    else {
        anyhow::bail!("expected a hello from the successor, got {hello:?}");
    };
    let refuse = |reason: String| -> anyhow::Result<bool> {
        tracing::warn!(successor_pid = pid, "refusing hand-over: {reason}");
        channel.send(&Message::Refused { reason }, &[])?;
        Ok(false)
    };
    if protocol != PROTOCOL {
        return refuse(format!(
            "successor speaks hand-over protocol {protocol}, this agent {PROTOCOL}"
        ));
    }
    if shared.drain.phase() != Phase::Running || shared.handed_over.load(Ordering::Acquire) {
        return refuse("this agent is draining".into());
    }
    tracing::info!(successor_pid = pid, successor_version = %version, "a successor is taking over");
    if let Some(r) = &shared.redirect {
        r.exclude_successor(successor_cgroup);
    }
    let mut sockets: Vec<(OfferedSocket, std::os::fd::OwnedFd)> = Vec::new();
    if let Some((configured, fd)) = &shared.admin_socket {
        let bound = std::net::TcpListener::from(fd.try_clone()?).local_addr()?;
        sockets.push((
            OfferedSocket {
                name: None,
                configured: *configured,
                bound,
            },
            fd.try_clone()?,
        ));
    }
    sockets.extend(shared.listeners.offer());
    let links = shared
        .redirect
        .as_ref()
        .map(|r| r.offer_links())
        .unwrap_or_default();
    let cgroup_id = shared
        .redirect
        .as_ref()
        .map(|r| r.agent_cgroup_id())
        .unwrap_or(0);
    // Probes and operators see the successor from now on.
    let _ = shared.admin_paused.send(true);
    // A socket bound from now on would not be in the offer: listener changes that need one
    // wait for the successor (which binds it) or for an abort.
    shared.listeners.freeze_binds(true);
    {
        let sockets: Vec<_> = sockets
            .iter()
            .map(|(o, f)| (o.clone(), f.as_fd()))
            .collect();
        let links: Vec<_> = links.iter().map(|(o, f)| (o.clone(), f.as_fd())).collect();
        channel.send_offer(cgroup_id, shared.epoch, &sockets, &links)?;
    }
    // The duplicates close here: the successor has its own.
    drop((sockets, links));
    // The successor loads its configuration (xDS included) before it is ready; one that takes
    // longer is considered hung, and this agent carries on.
    let ready_within = Duration::from_millis(ready_within_ms).clamp(MIN_READY_WAIT, MAX_READY_WAIT);
    let capture = match channel.recv(Some(Instant::now() + ready_within)) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            // Say so before closing, so the successor stops instead of taking over.
            let reason = format!("not ready within {ready_within:?}; the running agent carries on");
            let _ = channel.send(
                &Message::Refused {
                    reason: reason.clone(),
                },
                &[],
            );
            anyhow::bail!("the successor was {reason}");
        }
        other => other?,
    };
    let capture = match capture {
        Some((Message::Ready { capture }, _)) => capture,
        None => anyhow::bail!("the successor went away before taking over"),
        Some((other, _)) => anyhow::bail!("unexpected message from the successor: {other:?}"),
    };
    shared.listeners.stop_accepting();
    if let Some(r) = &shared.redirect {
        if capture {
            r.release();
        } else {
            tracing::warn!("the successor does not capture: releasing eBPF capture (fail open)");
            r.deregister();
            r.withdraw_offer();
        }
    }
    shared.handed_over.store(true, Ordering::Release);
    // Under systemd the successor becomes the main process: say so before this one can exit.
    crate::notify::notify(&format!("MAINPID={pid}"));
    // Past this point there is no way back (this agent no longer accepts or captures): a
    // successor that does not read the answer takes over anyway.
    if let Err(e) = channel.send(&Message::Released, &[]) {
        tracing::warn!(successor_pid = pid, error = %e, "cannot confirm the release to the successor");
    }
    tracing::info!(
        successor_pid = pid,
        "handed over; draining established connections"
    );
    shared.request_shutdown(ShutdownKind::Graceful);
    Ok(true)
}

async fn handle_signals(shared: Arc<Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr2)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined2()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let mut seen = 0;
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => {
                tracing::info!(signal = "SIGHUP", "reloading the configuration");
                crate::notify::notify("RELOADING=1");
                let s = shared.clone();
                // Binding sockets and parsing happen off the async workers.
                let _ = tokio::task::spawn_blocking(move || s.reload()).await;
                crate::notify::notify("READY=1\nSTATUS=serving");
                continue;
            }
            _ = usr2.recv() => {
                tracing::info!(signal = "SIGUSR2", "starting a successor to take over");
                if let Err(e) = spawn_successor(&shared) {
                    tracing::error!("cannot start a successor: {e:#}");
                }
                continue;
            }
        };
        seen += 1;
        let _ = shared.signalled.send(true);
        let kind = if seen == 1 {
            ShutdownKind::Graceful
        } else {
            ShutdownKind::Immediate
        };
        tracing::info!(signal = name, ?kind, "shutdown requested");
        shared.request_shutdown(kind);
    }
}

async fn flush_stats(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.snapshot.load().stats_flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shared.refresh_server_stats();
        shared.store.flush_intervals();
    }
}
