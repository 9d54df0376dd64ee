//! Serving hand-overs to a successor agent (SIGUSR2 starts one) and handing over.

use super::*;

/// SIGUSR2 (binary upgrade, as nginx does): starts the binary this agent was started as —
/// by path, so a package upgrade's new file — with the same arguments plus `--takeover`. The
/// successor takes over through the upgrade socket and tells systemd its PID (MAINPID=); this
/// agent drains and exits.
pub(super) fn spawn_successor(shared: &Shared) -> anyhow::Result<()> {
    anyhow::ensure!(
        shared.options.upgrade_socket.is_some(),
        "SIGUSR2 starts a successor that takes over through --upgrade-socket, which is not set"
    );
    anyhow::ensure!(
        shared.drain.phase() == Phase::Running && !shared.handed_over.load(Ordering::Acquire),
        "this agent is draining"
    );
    // Before this agent listens for a successor, one would find nobody to take over from
    // and start beside it.
    anyhow::ensure!(
        shared.serving_handovers.load(Ordering::Acquire),
        "this agent does not serve hand-overs yet (its upgrade socket is not listening)"
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
pub(super) fn serve_successors(shared: Arc<Shared>, path: &std::path::Path) {
    // Successors are started (SIGUSR2) from the moment the socket listens, before its file
    // appears: one that finds the file can take over.
    let serving = || shared.serving_handovers.store(true, Ordering::Release);
    let listener = match crate::handover::Listener::bind_then(path, serving) {
        Ok(l) => l,
        Err(e) => {
            shared.serving_handovers.store(false, Ordering::Release);
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
pub(super) fn hand_over(
    shared: &Shared,
    channel: &crate::handover::Channel,
) -> anyhow::Result<bool> {
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
    let hosts = shared.clusters.host_states();
    if let Err(e) = channel.send(&Message::Released { hosts }, &[]) {
        tracing::warn!(successor_pid = pid, error = %e, "cannot confirm the release to the successor");
    }
    tracing::info!(
        successor_pid = pid,
        "handed over; draining established connections"
    );
    shared.request_shutdown(ShutdownKind::Graceful);
    Ok(true)
}
