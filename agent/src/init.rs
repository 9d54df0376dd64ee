//! The init manager (Envoy's): subsystems register what the server must wait for before it
//! reports ready — today the first CDS and LDS responses; RDS and SDS next — and mark each
//! target ready when it is. The server waits for all of them (or a deadline) instead of
//! polling.

use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug)]
pub struct InitManager {
    /// Targets not ready yet: (unique id, name). Ids, not names, identify a target, so two
    /// registrations under one name are two targets.
    pending: Arc<watch::Sender<BTreeMap<u64, String>>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// One registered target; ready when `ready()` is called or it is dropped without it being
/// possible any more (then the server stops waiting for it too).
#[derive(Debug)]
pub struct InitTarget {
    id: u64,
    pending: Arc<watch::Sender<BTreeMap<u64, String>>>,
}

impl InitTarget {
    pub fn ready(self) {
        // Drop does it.
    }
}

impl Drop for InitTarget {
    fn drop(&mut self) {
        self.pending
            .send_if_modified(|p| p.remove(&self.id).is_some());
    }
}

impl Default for InitManager {
    fn default() -> Self {
        Self {
            pending: Arc::new(watch::channel(BTreeMap::new()).0),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl InitManager {
    pub fn register(&self, name: &str) -> InitTarget {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pending.send_modify(|p| {
            p.insert(id, name.to_string());
        });
        InitTarget {
            id,
            pending: self.pending.clone(),
        }
    }

    /// Whether no target is pending (the server is, or may be, ready).
    pub fn all_ready(&self) -> bool {
        self.pending.borrow().is_empty()
    }

    /// Names of the targets still pending.
    pub fn pending(&self) -> Vec<String> {
        self.pending.borrow().values().cloned().collect()
    }

    /// Resolves when every registered target is ready.
    pub async fn wait(&self) {
        let mut rx = self.pending.subscribe();
        let _ = rx.wait_for(|p| p.is_empty()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn waits_for_every_target() {
        let init = InitManager::default();
        init.wait().await; // nothing registered: ready at once
        let cds = init.register("cds");
        let lds = init.register("lds");
        let waiter = {
            let pending = init.pending.clone();
            tokio::spawn(async move {
                let mut rx = pending.subscribe();
                let _ = rx.wait_for(|p| p.is_empty()).await;
            })
        };
        // Two targets under one name are two targets.
        let again = init.register("lds");
        cds.ready();
        drop(again);
        assert_eq!(init.pending(), vec!["lds".to_string()]);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!waiter.is_finished());
        lds.ready();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("ready")
            .unwrap();
    }
}
