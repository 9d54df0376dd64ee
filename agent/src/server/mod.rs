//! The server: start-up (this file: bind every socket, take over from a running agent, start
//! the data-path workers and the admin thread), the data plane's life and shutdown (`run`),
//! signals (`signals`) and hand-overs to a successor (`upgrade`). The admin server runs on a
//! small runtime of its own, so a busy data path never starves observability. What these
//! parts share lives in `crate::state`.

use crate::admin;
use crate::config::Snapshot;
use crate::drain::{Drain, Phase};
use crate::listener::{self, ListenerManager};
use crate::logging::LogControl;
use crate::redirect::Redirector;
use crate::stats::Store;
use crate::upstream::ClusterManager;
use anyhow::Context as _;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

mod run;
mod signals;
mod upgrade;

use run::{run_data_plane, Workers};
use signals::handle_signals;
use upgrade::{serve_successors, spawn_successor};

pub use crate::state::{
    memory_usage, AdminLimits, AfterTakeover, MemoryUsage, Options, ServerState, ServerStats,
    Shared, ShutdownKind, WorkerModel,
};

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
    let overload = crate::overload::Overload::new(
        snapshot.overload.as_ref(),
        &snapshot.runtime,
        open_files_limit(),
        &store,
    );
    match overload.max_connections() {
        (max, crate::overload::LimitSource::Configured) => {
            tracing::info!(max, "data-path connections limited by the overload manager")
        }
        (max, crate::overload::LimitSource::OpenFiles) => tracing::info!(
            max,
            reserve = crate::overload::FD_RESERVE,
            "data-path connections limited to half the open-files limit minus a reserve for admin, xDS and DNS (set overload_manager's global_downstream_max_connections to choose)"
        ),
    }
    let listeners = Arc::new(ListenerManager::with_overload(
        clusters.clone(),
        &store,
        overload,
    ));
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
        days_until_first_cert_expiring: server_scope.gauge("days_until_first_cert_expiring"),
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
    let health_check_failed = listeners.health_check_failed.clone();
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        store,
        clusters,
        listeners,
        drain: Drain::new(),
        health_check_failed,
        initialized: AtomicBool::new(false),
        started: Instant::now(),
        started_wall: SystemTime::now(),
        static_status: Default::default(),
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
        serving_handovers: AtomicBool::new(false),
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
            // HTTP connection pools keep one slot per worker.
            crate::upstream::pool::set_workers(concurrency);
            crate::upstream::pool::set_worker_index(0);
            let model = data_shared.options.worker_model.resolve(concurrency);
            crate::upstream::pool::set_pinned(model == WorkerModel::PerCore);
            let (rt, workers) = match model {
                WorkerModel::Shared | WorkerModel::Auto => (
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(concurrency)
                        .thread_name("plumb-worker")
                        .on_thread_start(crate::upstream::pool::assign_worker_index)
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

/// The soft RLIMIT_NOFILE (after `plumb run` raised it).
fn open_files_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur
}
