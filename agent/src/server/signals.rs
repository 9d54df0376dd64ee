//! Signals: SIGTERM/SIGINT drain and stop, SIGHUP reloads, SIGUSR1 reopens the access logs,
//! SIGUSR2 starts a successor.

use super::*;

/// Installs the handlers at once (a signal arriving before the returned task first runs must
/// not get the default action, which for every one of these ends the process), and returns
/// the task that acts on them.
pub(super) fn handle_signals(shared: Arc<Shared>) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let installed = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    );
    act_on_signals(shared, installed)
}

type Installed = (
    std::io::Result<tokio::signal::unix::Signal>,
    std::io::Result<tokio::signal::unix::Signal>,
    std::io::Result<tokio::signal::unix::Signal>,
    std::io::Result<tokio::signal::unix::Signal>,
    std::io::Result<tokio::signal::unix::Signal>,
);

async fn act_on_signals(shared: Arc<Shared>, installed: Installed) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1), Ok(mut usr2)) = installed else {
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
            _ = usr1.recv() => {
                tracing::info!(signal = "SIGUSR1", "reopening the access logs");
                crate::http::access_log::reopen_all();
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
