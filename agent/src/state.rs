//! The state the server's parts share: options, the configuration managers, drain, readiness
//! and server stats (`Shared`). Its own module so that `admin` and `server` both use it
//! without importing each other.

use crate::config::Snapshot;
use crate::drain::{Drain, Phase};
use crate::listener::ListenerManager;
use crate::logging::LogControl;
use crate::redirect::Redirector;
use crate::stats::{Gauge, Store};
use crate::upstream::ClusterManager;
use arc_swap::ArcSwap;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

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
    /// Bootstrap files larger than this are refused, on reload too (`--max-config-bytes`).
    pub max_config_bytes: u64,
    pub admin_limits: AdminLimits,
}

/// Bounds on the admin server's connections.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Connections served at once; more are closed at once and counted in
    /// `http.admin.downstream_cx_overflow`.
    pub max_connections: usize,
    /// A request's headers must arrive within this.
    pub header_read_timeout: Duration,
    /// An admin connection is closed after this long, idle or not.
    pub max_connection_age: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(60),
        }
    }
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
    pub(crate) fn resolve(self, concurrency: usize) -> WorkerModel {
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
            max_config_bytes: crate::config::DEFAULT_MAX_CONFIG_BYTES,
            admin_limits: AdminLimits::default(),
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
    pub days_until_first_cert_expiring: Arc<Gauge>,
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
    /// Set by `POST /healthcheck/fail`; shared with the HTTP health check filters.
    pub health_check_failed: Arc<AtomicBool>,
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
    pub(crate) shutdown_tx: watch::Sender<Option<ShutdownKind>>,
    /// The admin socket (configured address, duplicate descriptor), for a successor.
    pub(crate) admin_socket: Option<(SocketAddr, std::os::fd::OwnedFd)>,
    /// True while a successor is taking over: the admin server stops accepting.
    pub(crate) admin_paused: watch::Sender<bool>,
    /// Set when a successor has taken over: drain without deregistering redirection.
    pub handed_over: AtomicBool,
    /// Set once the upgrade socket listens: SIGUSR2 starts a successor only then.
    pub serving_handovers: AtomicBool,
    /// The hand-over in progress when this agent started with `--takeover`.
    pub(crate) takeover: std::sync::Mutex<Option<crate::handover::Inherited>>,
    /// Set by SIGTERM/SIGINT.
    pub(crate) signalled: watch::Sender<bool>,
    /// When each bootstrap listener and cluster last changed, and reload failures.
    pub static_status: std::sync::Mutex<StaticStatus>,
}

/// What `/config_dump` reports about the bootstrap's own resources beyond their config: when
/// each was last changed by a reload, and the reload's failures (the resource keeps serving
/// its previous version, or is not serving at all if it is new).
#[derive(Debug, Default)]
pub struct StaticStatus {
    /// ("listener" | "cluster", name) → last change; absent: since start-up.
    pub last_updated: std::collections::HashMap<(&'static str, String), SystemTime>,
    /// Listener name → the rejected update.
    pub failed_listeners: std::collections::BTreeMap<String, FailedUpdate>,
    /// When the bootstrap was last (re)loaded.
    pub bootstrap_updated: Option<SystemTime>,
}

/// A listener update a reload could not apply (Envoy's `UpdateFailureState`).
#[derive(Debug, Clone)]
pub struct FailedUpdate {
    pub config: serde_json::Value,
    pub details: String,
    pub at: SystemTime,
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
        if old.overload != new.overload || old.runtime != new.runtime {
            problems.push(
                "overload_manager and layered_runtime changes need a restart; kept the current ones"
                    .into(),
            );
        }
        // The redirect listener's address is compiled into the eBPF programs: it stays.
        let pinned = old.redirect.as_ref().map(|r| r.listener.clone());
        let new_clusters: HashSet<&str> = new.clusters.iter().map(|c| c.name.as_str()).collect();
        let new_listeners: HashSet<&str> = new.listeners.iter().map(|l| l.name.as_str()).collect();
        let now = SystemTime::now();
        let mut changed: Vec<(&'static str, String)> = Vec::new();
        // New static secrets first: the contexts that name them rebuild.
        self.clusters.secrets().set_statics(new.secrets.clone());
        // One batch: the cluster map is copied and published once, however many change.
        let mut batch = self.clusters.batch();
        for c in &new.clusters {
            if batch.upsert(c.clone()) != crate::upstream::Upsert::Unchanged {
                changed.push(("cluster", c.name.clone()));
            }
        }
        drop(batch);
        // Listeners that could not be updated keep serving their old version (or, if new,
        // are not serving): the snapshot shows what serves, and `/config_dump` the failure.
        let mut failed: Vec<(String, FailedUpdate)> = Vec::new();
        let listener_batch = self.listeners.batch();
        for l in &new.listeners {
            if pinned.as_deref() == Some(l.name.as_str()) {
                if old.listeners.iter().any(|o| o.name == l.name && **o != **l) {
                    problems.push(format!("listener \"{}\" receives redirected connections; changes to it need a restart", l.name));
                }
                continue;
            }
            match self.listeners.upsert(l.clone()) {
                Ok(crate::upstream::Upsert::Unchanged) => {}
                Ok(_) => changed.push(("listener", l.name.clone())),
                Err(e) => {
                    let details = format!("{:#}", anyhow::Error::from(e));
                    problems.push(details.clone());
                    failed.push((
                        l.name.clone(),
                        FailedUpdate {
                            config: l.to_envoy_json(),
                            details,
                            at: now,
                        },
                    ));
                }
            }
        }
        // Only what the old bootstrap defined and the new one does not: listeners and
        // clusters from xDS are the control plane's to remove.
        for l in &old.listeners {
            if pinned.as_deref() != Some(l.name.as_str())
                && !new_listeners.contains(l.name.as_str())
            {
                self.listeners.remove(&l.name);
            }
        }
        drop(listener_batch);
        let mut batch = self.clusters.batch();
        for c in &old.clusters {
            if !new_clusters.contains(c.name.as_str()) {
                batch.remove(&c.name);
            }
        }
        drop(batch);
        let mut kept = new.clone();
        kept.admin = old.admin.clone();
        kept.redirect = old.redirect.clone();
        kept.xds = old.xds.clone();
        kept.overload = old.overload.clone();
        kept.runtime = old.runtime.clone();
        // The bootstrap shown is the new file with the sections that need a restart as they
        // are in force (parsing the old text only when one of them changed).
        let restart_sections_changed = old.admin != new.admin
            || old.xds != new.xds
            || old.overload != new.overload
            || old.runtime != new.runtime
            || old.redirect.is_some() != new.redirect.is_some()
            || format!("{:?}", old.redirect) != format!("{:?}", new.redirect);
        if restart_sections_changed {
            kept.bootstrap = new.bootstrap.with_sections_from(
                &old.bootstrap,
                &[
                    "admin",
                    "bootstrap_extensions",
                    "dynamic_resources",
                    "overload_manager",
                    "layered_runtime",
                ],
            );
        }
        let failed_names: HashSet<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
        let mut pinned_or_failed = pinned.iter().map(String::as_str).collect::<HashSet<_>>();
        pinned_or_failed.extend(failed_names.iter().copied());
        kept.listeners
            .retain(|l| !pinned_or_failed.contains(l.name.as_str()));
        kept.listeners.extend(
            old.listeners
                .iter()
                .filter(|l| pinned_or_failed.contains(l.name.as_str()))
                .cloned(),
        );
        {
            let mut st = self.static_status.lock().unwrap_or_else(|p| p.into_inner());
            for key in changed {
                st.failed_listeners.remove(&key.1);
                st.last_updated.insert(key, now);
            }
            st.failed_listeners
                .retain(|name, _| new_listeners.contains(name.as_str()));
            st.last_updated.retain(|(kind, name), _| match *kind {
                "listener" => new_listeners.contains(name.as_str()),
                _ => new_clusters.contains(name.as_str()),
            });
            st.failed_listeners.extend(failed);
            st.bootstrap_updated = Some(now);
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
        match crate::config::parse_bootstrap_file_limited(
            path,
            &self.options.overrides,
            self.options.max_config_bytes,
        ) {
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

    /// The certificates of every TLS context in use: listeners' chains, then clusters.
    pub fn tls_contexts(&self) -> Vec<Arc<crate::tls::certs::CertsInfo>> {
        let mut out = Vec::new();
        for l in self.listeners.all().iter() {
            for c in l.chains.all() {
                if let Some(a) = &c.tls {
                    out.push(a.certificates());
                }
            }
        }
        for c in self.clusters.all() {
            out.extend(c.tls_clients().map(|t| t.certificates()));
        }
        out
    }

    /// Refreshes the computed `server.*` gauges (on every stats read and flush).
    pub fn refresh_server_stats(&self) {
        let s = &self.stats;
        let state = self.state();
        s.live.set((state == ServerState::Live) as i64);
        s.state.set(state as i64);
        s.uptime.set(self.started.elapsed().as_secs() as i64);
        // Envoy's value when no certificate is managed: the largest 32-bit count.
        s.days_until_first_cert_expiring.set(
            self.tls_contexts()
                .iter()
                .filter_map(|c| c.days_until_first_expiring())
                .min()
                .unwrap_or(u32::MAX as i64),
        );
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

/// Hands free heap memory back to the system when there is a lot of it: after a thousand
/// clusters are removed, their memory is free inside the allocator's arenas but still counted
/// in RSS. Trims when the free part exceeds 8 MiB and a quarter of what is allocated, so an
/// agent's RSS follows what is configured now rather than its history's peak.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let m = memory_usage_heap();
        let free = m.heap_size.saturating_sub(m.allocated);
        if free > 8 << 20 && free > m.allocated / 4 {
            trim_heap();
        }
    }
}

/// Hands every free heap page back to the system (the overload manager's `shrink_heap`).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas, under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes the heap holds from the system (the `fixed_heap` monitor's measure).
pub fn heap_size() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        memory_usage_heap().heap_size
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn memory_usage_heap() -> MemoryUsage {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value.
    let mi = unsafe { libc::mallinfo2() };
    MemoryUsage {
        allocated: (mi.uordblks + mi.hblkhd) as u64,
        heap_size: (mi.arena + mi.hblkhd) as u64,
        physical: 0,
    }
}

/// Heap figures from glibc's allocator (no hot-path accounting) and RSS from /proc.
pub fn memory_usage() -> MemoryUsage {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let mut m = memory_usage_heap();
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let mut m = MemoryUsage::default();
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
