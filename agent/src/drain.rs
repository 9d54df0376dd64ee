//! Drain as an explicit object: listeners and connections hold a `Watch`; the server moves
//! the phase forward (running → draining → closing) and waits for connections to finish.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// Stop accepting; established connections continue.
    Draining,
    /// Drain time is over: close what is left.
    Closing,
}

/// One count of what a drain waits for: connections and accept loops together in the low
/// 32 bits, accept loops alone in the high 32 (so both are read at once).
#[derive(Debug)]
struct Tracker {
    count: AtomicU64,
    idle: Notify,
}

const CONNECTION: u64 = 1;
const LOOP: u64 = (1 << 32) | 1;
const LOW: u64 = u32::MAX as u64;

impl Tracker {
    fn add(&self, n: u64) {
        self.count.fetch_add(n, Ordering::AcqRel);
    }

    fn release(&self, n: u64) {
        if self.count.fetch_sub(n, Ordering::AcqRel) & LOW == 1 {
            self.idle.notify_waiters();
        }
    }

    fn load(&self) -> (u64, u64) {
        let c = self.count.load(Ordering::Acquire);
        (c & LOW, c >> 32)
    }
}

/// Owned by the server.
#[derive(Debug, Clone)]
pub struct Drain {
    tx: Arc<watch::Sender<Phase>>,
    tracker: Arc<Tracker>,
}

/// Held by listeners and connections.
#[derive(Debug, Clone)]
pub struct Watch {
    rx: watch::Receiver<Phase>,
    tracker: Arc<Tracker>,
}

/// Counts one in-flight connection for as long as it lives.
#[derive(Debug)]
pub struct ConnectionGuard {
    tracker: Arc<Tracker>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.tracker.release(CONNECTION);
    }
}

/// Held by an accept loop while it runs: a connection it has accepted but not yet counted
/// cannot let the drain find nothing in flight (the loop takes the connection's guard before
/// it lets go of its own, and it ends as soon as the drain starts).
#[derive(Debug)]
pub struct AcceptGuard {
    tracker: Arc<Tracker>,
}

impl Drop for AcceptGuard {
    fn drop(&mut self) {
        self.tracker.release(LOOP);
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Phase::Running);
        Self {
            tx: Arc::new(tx),
            tracker: Arc::new(Tracker {
                count: AtomicU64::new(0),
                idle: Notify::new(),
            }),
        }
    }

    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
            tracker: self.tracker.clone(),
        }
    }

    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }

    /// Moves the phase forward; never backwards.
    pub fn advance(&self, to: Phase) {
        self.tx.send_if_modified(|p| {
            if to > *p {
                *p = to;
                true
            } else {
                false
            }
        });
    }

    /// Connections in flight.
    pub fn active(&self) -> usize {
        let (all, loops) = self.tracker.load();
        (all - loops) as usize
    }

    /// Resolves when no tracked connection (nor accept loop) is left.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.tracker.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.tracker.load().0 == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Watch {
    pub fn track(&self) -> ConnectionGuard {
        self.tracker.add(CONNECTION);
        ConnectionGuard {
            tracker: self.tracker.clone(),
        }
    }

    /// For an accept loop, while it runs (`AcceptGuard`).
    pub fn accepting(&self) -> AcceptGuard {
        self.tracker.add(LOOP);
        AcceptGuard {
            tracker: self.tracker.clone(),
        }
    }

    pub fn phase(&self) -> Phase {
        *self.rx.borrow()
    }

    /// Resolves with the phase once it is past `seen`: one wait for both later phases (a
    /// connection's task polls it at every wake-up, so one registration instead of two).
    pub async fn beyond(&mut self, seen: Phase) -> Phase {
        match self.rx.wait_for(|p| *p > seen).await {
            Ok(p) => *p,
            // The Drain is gone, which only happens at process exit: treat as closing.
            Err(_) => Phase::Closing,
        }
    }

    pub async fn draining(&mut self) {
        self.beyond(Phase::Running).await;
    }

    pub async fn closing(&mut self) {
        self.beyond(Phase::Draining).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_idle_returns_when_last_connection_ends() {
        let drain = Drain::new();
        let w = drain.watch();
        let g1 = w.track();
        let g2 = w.track();
        let d2 = drain.clone();
        let waiter = tokio::spawn(async move { d2.wait_idle().await });
        drop(g1);
        assert!(!waiter.is_finished());
        drop(g2);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("idle")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn accept_loops_hold_the_drain_but_are_not_connections() {
        let drain = Drain::new();
        let w = drain.watch();
        let accepting = w.accepting();
        assert_eq!(drain.active(), 0, "an accept loop is not a connection");
        let accepted = w.track();
        assert_eq!(drain.active(), 1);
        drop(accepting);
        let d = drain.clone();
        let mut waiter = tokio::spawn(async move { d.wait_idle().await });
        // Paused time: the timeout fires only once the waiter can make no more progress.
        let waited = tokio::time::timeout(std::time::Duration::from_secs(1), &mut waiter).await;
        assert!(waited.is_err(), "the accepted connection holds the drain");
        drop(accepted);
        waiter.await.unwrap();
        // The loop alone holds it too.
        let accepting = w.accepting();
        let d = drain.clone();
        let mut waiter = tokio::spawn(async move { d.wait_idle().await });
        let waited = tokio::time::timeout(std::time::Duration::from_secs(1), &mut waiter).await;
        assert!(waited.is_err(), "a running accept loop holds the drain");
        drop(accepting);
        waiter.await.unwrap();
    }

    fn pending<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.poll(&mut cx).is_pending()
    }

    #[tokio::test]
    async fn beyond_resolves_with_the_first_later_phase() {
        let drain = Drain::new();
        let mut w = drain.watch();
        let mut waiting = Box::pin(w.beyond(Phase::Running));
        assert!(pending(waiting.as_mut()));
        drain.advance(Phase::Draining);
        assert_eq!(waiting.await, Phase::Draining);
        let mut w = drain.watch();
        assert_eq!(w.beyond(Phase::Running).await, Phase::Draining);
        let mut waiting = Box::pin(w.beyond(Phase::Draining));
        assert!(pending(waiting.as_mut()));
        drain.advance(Phase::Closing);
        assert_eq!(waiting.await, Phase::Closing);
    }

    #[tokio::test]
    async fn phases_only_move_forward() {
        let drain = Drain::new();
        let mut w = drain.watch();
        drain.advance(Phase::Closing);
        drain.advance(Phase::Draining);
        assert_eq!(drain.phase(), Phase::Closing);
        w.draining().await;
        w.closing().await;
    }
}
