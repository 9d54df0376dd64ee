//! ORIGINAL_DST clusters: the host is the connection's original destination. Hosts are cached
//! by address so every connection to one destination shares one `Host` (its stats, its
//! health, later its connection pool and outlier state), and forgotten when unused for a
//! `cleanup_interval` (as Envoy does), so the cache follows what is in use now.

use super::host::Host;
use crate::config::{HealthStatus, Locality};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Shards of the host map: a connection locks one, briefly, and only connections to
/// destinations hashing to the same shard can meet there.
const SHARDS: usize = 16;

#[derive(Debug, Default)]
pub(super) struct HostCache {
    shards: [Mutex<HashMap<SocketAddr, Arc<Host>>>; SHARDS],
    /// Hosts were added or removed since the host set was last published.
    dirty: AtomicBool,
    /// Serialises publishing the host set (so the last one stored is the newest).
    pub(super) publish: Mutex<()>,
}

fn shard_of(addr: &SocketAddr) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    addr.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl HostCache {
    fn shard(
        &self,
        addr: &SocketAddr,
    ) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Host>>> {
        self.shards[shard_of(addr)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The host for `addr`, created on first use: O(1) per connection. The host set shown by
    /// `/clusters` is published from the cleanup pass, off the data path.
    pub(super) fn get_or_insert(&self, addr: SocketAddr) -> Arc<Host> {
        let mut shard = self.shard(&addr);
        if let Some(h) = shard.get(&addr) {
            h.touch();
            return h.clone();
        }
        let host = Arc::new(Host::new(
            addr,
            String::new(),
            0,
            Locality::default(),
            1,
            HealthStatus::Unknown,
        ));
        shard.insert(addr, host.clone());
        self.dirty.store(true, Ordering::Release);
        host
    }

    /// Drops hosts unused since the previous sweep (connections still using one keep their
    /// `Arc`); returns whether the set changed since it was last published.
    pub(super) fn sweep(&self) -> bool {
        for shard in &self.shards {
            let mut m = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = m.len();
            m.retain(|_, h| h.take_used() || h.stats.cx_active.load(Ordering::Relaxed) > 0);
            if m.len() != before {
                self.dirty.store(true, Ordering::Release);
            }
        }
        self.dirty.swap(false, Ordering::AcqRel)
    }

    pub(super) fn hosts(&self) -> Vec<Arc<Host>> {
        let mut v: Vec<Arc<Host>> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort_by_key(|h| h.address);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl HostCache {
        fn len(&self) -> usize {
            self.hosts().len()
        }
    }

    #[test]
    fn one_host_per_destination_until_unused_for_a_sweep() {
        let c = HostCache::default();
        let a: SocketAddr = "10.213.0.1:80".parse().unwrap();
        let h1 = c.get_or_insert(a);
        let h2 = c.get_or_insert(a);
        assert!(Arc::ptr_eq(&h1, &h2), "the same Host is reused");
        // Used since creation: survives the first sweep (which reports the addition), not a
        // second without use.
        assert!(c.sweep());
        assert_eq!(c.len(), 1);
        assert!(c.sweep());
        assert_eq!(c.len(), 0);
        assert!(!c.sweep(), "nothing changed");
        // A host with an open connection is kept even when not picked again.
        let h3 = c.get_or_insert(a);
        assert!(!Arc::ptr_eq(&h1, &h3), "a new Host after it was forgotten");
        h3.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        c.sweep();
        assert!(!c.sweep());
        assert_eq!(c.len(), 1);
    }
}
