//! systemd's notification protocol (`Type=notify`): `READY=1` once listeners (and redirection)
//! serve, `RELOADING=1`/`READY=1` around a SIGHUP reload, `STOPPING=1` when the drain starts,
//! and `WATCHDOG=1` pings from the data-path runtime when `WatchdogSec=` is set — a wedged
//! data path stops the pings and systemd restarts the agent. Without `NOTIFY_SOCKET` every
//! call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn socket_path() -> Option<String> {
    std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Sends one notification; errors are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = socket_path() else { return };
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "sd_notify: cannot create a socket");
            return;
        }
    };
    let result = if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, socket = %path, "sd_notify failed");
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval, from the runtime it is spawned on.
pub async fn watchdog(interval: Duration) {
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tick.tick().await;
        notify("WATCHDOG=1");
    }
}
