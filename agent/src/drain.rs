//! Drain as an explicit object: listeners and connections hold a `Watch`; the server moves
//! the phase forward (running → draining → closing) and waits for connections to finish.

use std::sync::atomic::{AtomicUsize, Ordering};
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

#[derive(Debug)]
struct Tracker {
    active: AtomicUsize,
    idle: Notify,
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
        if self.tracker.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.idle.notify_waiters();
        }
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
                active: AtomicUsize::new(0),
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

    pub fn active(&self) -> usize {
        self.tracker.active.load(Ordering::Acquire)
    }

    /// Resolves when no tracked connection is left.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.tracker.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Watch {
    pub fn track(&self) -> ConnectionGuard {
        self.tracker.active.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard {
            tracker: self.tracker.clone(),
        }
    }

    pub fn phase(&self) -> Phase {
        *self.rx.borrow()
    }

    async fn reached(&mut self, phase: Phase) {
        // An error means the Drain is gone, which only happens at process exit: treat as closing.
        let _ = self.rx.wait_for(|p| *p >= phase).await;
    }

    pub async fn draining(&mut self) {
        self.reached(Phase::Draining).await
    }

    pub async fn closing(&mut self) {
        self.reached(Phase::Closing).await
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
