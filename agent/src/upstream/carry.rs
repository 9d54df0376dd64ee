//! What the cluster manager hands to a successor agent at an upgrade (issue 13, item 8):
//! each host's active health verdict and outlier ejection, so the successor neither waits
//! for its first checks to route to healthy hosts nor sends traffic back to a bad one.
//! Applied to the successor's hosts of the same cluster and address, when its own checker
//! has not judged them yet; ejections keep their remaining time and their count.

use super::{health_flag, ClusterManager};
use crate::handover::HostState;
use std::sync::Arc;

/// At most this many hosts are handed over (the message stays far below its 1 MiB cap);
/// ejected and failing hosts first.
const MAX_HOSTS: usize = 4096;

impl ClusterManager {
    /// Every host with something to hand over.
    pub fn host_states(&self) -> Vec<HostState> {
        let mut out = Vec::new();
        for c in self.all() {
            for h in c.hosts().all() {
                let f = h.health_flags();
                let healthy = (c.health.is_some() && f & health_flag::PENDING_ACTIVE_HC == 0)
                    .then_some(f & health_flag::FAILED_ACTIVE_HC == 0);
                let ejected = c.outlier.as_ref().and_then(|d| d.export(h));
                if healthy.is_none() && ejected.is_none() {
                    continue;
                }
                out.push(HostState {
                    cluster: c.name().to_string(),
                    address: h.address,
                    healthy,
                    ejected,
                });
            }
        }
        // The states that keep traffic away from a host first, should the list be cut.
        out.sort_by_key(|s| (s.ejected.is_none(), s.healthy != Some(false)));
        if out.len() > MAX_HOSTS {
            tracing::warn!(
                hosts = out.len(),
                kept = MAX_HOSTS,
                "hand-over: too many hosts' health to hand over; the rest start afresh"
            );
            out.truncate(MAX_HOSTS);
        }
        out
    }

    /// Takes over the predecessor's host states; returns how many hosts took one.
    pub fn apply_host_states(&self, states: &[HostState]) -> usize {
        let mut applied = 0;
        let mut touched: Vec<Arc<super::Cluster>> = Vec::new();
        for s in states {
            let Some(c) = self.get(&s.cluster) else {
                continue;
            };
            let set = c.hosts();
            let Some(h) = set.all().iter().find(|h| h.address == s.address) else {
                continue;
            };
            let mut changed = false;
            if let (Some(healthy), Some(_)) = (s.healthy, &c.health) {
                // Only a verdict this agent has not reached itself.
                if h.health_flags() & health_flag::PENDING_ACTIVE_HC != 0 {
                    h.set_flags(health_flag::PENDING_ACTIVE_HC, false);
                    h.set_flags(health_flag::FAILED_ACTIVE_HC, !healthy);
                    changed = true;
                }
            }
            if let (Some((ms, n)), Some(d)) = (s.ejected, &c.outlier) {
                changed |= d.import(&c, h, ms, n);
            }
            if changed {
                applied += 1;
                if !touched.iter().any(|t| Arc::ptr_eq(t, &c)) {
                    touched.push(c.clone());
                }
            }
        }
        for c in touched {
            c.hosts_health_changed();
        }
        applied
    }
}
