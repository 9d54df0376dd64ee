//! ORIGINAL_DST clusters: the host is the connection's original destination. Hosts are cached
//! by address so every connection to one destination shares one `Host` (its stats, its
//! health, later its connection pool and outlier state), and forgotten when unused for a
//! `cleanup_interval` (as Envoy does), so the cache follows what is in use now.

use super::host::Host;
use crate::config::{HealthStatus, Locality};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub(super) struct HostCache {
    /// Read lock-free by every connection; replaced (copy on write) when a destination is
    /// first seen or swept.
    hosts: ArcSwap<HashMap<SocketAddr, Arc<Host>>>,
    write: Mutex<()>,
    /// Serialises publishing the host set (so the last one stored is the newest).
    pub(super) publish: Mutex<()>,
}

impl HostCache {
    /// The host for `addr`, and whether it was just added.
    pub(super) fn get_or_insert(&self, addr: SocketAddr) -> (Arc<Host>, bool) {
        if let Some(h) = self.hosts.load().get(&addr) {
            h.touch();
            return (h.clone(), false);
        }
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.hosts.load_full();
        if let Some(h) = cur.get(&addr) {
            h.touch();
            return (h.clone(), false);
        }
        let host = Arc::new(Host::new(
            addr,
            String::new(),
            0,
            Locality::default(),
            1,
            HealthStatus::Unknown,
        ));
        let mut map = (*cur).clone();
        map.insert(addr, host.clone());
        self.hosts.store(Arc::new(map));
        (host, true)
    }

    /// Drops hosts unused since the previous sweep (connections still using one keep their
    /// `Arc`); returns whether any went.
    pub(super) fn sweep(&self) -> bool {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.hosts.load_full();
        let keep: HashMap<SocketAddr, Arc<Host>> = cur
            .iter()
            .filter(|(_, h)| h.take_used() || h.stats.cx_active.load(Ordering::Relaxed) > 0)
            .map(|(a, h)| (*a, h.clone()))
            .collect();
        let removed = keep.len() != cur.len();
        if removed {
            self.hosts.store(Arc::new(keep));
        }
        removed
    }

    pub(super) fn hosts(&self) -> Vec<Arc<Host>> {
        let mut v: Vec<Arc<Host>> = self.hosts.load().values().cloned().collect();
        v.sort_by_key(|h| h.address);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl HostCache {
        fn len(&self) -> usize {
            self.hosts.load().len()
        }
    }

    #[test]
    fn one_host_per_destination_until_unused_for_a_sweep() {
        let c = HostCache::default();
        let a: SocketAddr = "10.213.0.1:80".parse().unwrap();
        let (h1, added) = c.get_or_insert(a);
        assert!(added);
        let (h2, added) = c.get_or_insert(a);
        assert!(!added);
        assert!(Arc::ptr_eq(&h1, &h2), "the same Host is reused");
        // Used since creation: survives the first sweep, not a second without use.
        assert!(!c.sweep());
        assert_eq!(c.len(), 1);
        assert!(c.sweep());
        assert_eq!(c.len(), 0);
        // A host with an open connection is kept even when not picked again.
        let (h3, _) = c.get_or_insert(a);
        assert!(!Arc::ptr_eq(&h1, &h3), "a new Host after it was forgotten");
        h3.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        c.sweep();
        assert!(!c.sweep());
        assert_eq!(c.len(), 1);
    }
}
