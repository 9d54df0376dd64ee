//! The data plane's life: the per-core worker runtimes, initialisation (readiness through the
//! init manager, a takeover's last steps), serving, and the shutdown sequence; stats flushing.

use super::*;

/// The extra single-threaded runtimes of the per-core worker model, each on its own thread,
/// running whatever is spawned on it (accept loops and their connections) until stopped.
#[derive(Default)]
pub(super) struct Workers {
    pub(super) handles: Vec<tokio::runtime::Handle>,
    stop: Option<watch::Sender<bool>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    pub(super) fn start(n: usize) -> anyhow::Result<Self> {
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
                        crate::upstream::pool::set_worker_index(i);
                        crate::upstream::pool::set_pinned(true);
                        rt.block_on(async {
                            let _ = stop_rx.wait_for(|s| *s).await;
                        });
                        rt.shutdown_timeout(Duration::from_millis(100));
                    })?,
            );
        }
        Ok(w)
    }

    pub(super) fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub(super) async fn run_data_plane(
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
                Ok(Finish::Released(hosts)) => {
                    let applied = shared.clusters.apply_host_states(&hosts);
                    tracing::info!(
                        old_pid,
                        hosts = hosts.len(),
                        applied,
                        "the old agent released its sockets"
                    )
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
    // Certificate, key and CA files (and file-based SDS) are re-read when they change.
    tokio::spawn(
        shared
            .clusters
            .secrets()
            .clone()
            .watch_files(shared.drain.watch()),
    );
    tokio::spawn(
        shared
            .listeners
            .overload()
            .clone()
            .run(shared.drain.watch()),
    );
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

pub(super) async fn flush_stats(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.snapshot.load().stats_flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_trim = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        shared.refresh_server_stats();
        shared.store.flush_intervals();
        // Stats of removed clusters and listeners go once nothing uses them; free heap is
        // handed back at most once a second.
        shared.store.sweep();
        if last_trim.elapsed() >= std::time::Duration::from_secs(1) {
            last_trim = tokio::time::Instant::now();
            crate::state::release_free_memory();
        }
    }
}
