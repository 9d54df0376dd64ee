//! Circuit breakers (Envoy's `circuit_breakers`): per cluster and routing priority, limits on
//! upstream connections, pending requests (waiting for a connection), requests and
//! concurrent retries. Taking a slot is one compare-and-swap on a counter; the `Slot` gives
//! it back when dropped. No lock on the data path.
//!
//! Every cluster has them, with Envoy's defaults (1,024 connections, pending requests and
//! requests; 3 retries) where the configuration says nothing. Stats, as Envoy's:
//! `circuit_breakers.<default|high>.{cx,rq_pending,rq,rq_retry}_open` (1 while the limit is
//! reached) and, with `track_remaining`, `remaining_{cx,pending,rq,retries}`; and
//! `max_connection_pools` (unlimited by default): `cx_pool_open`, `remaining_cx_pools`.

use crate::config::{self, RetryBudget};
use crate::stats::{Gauge, Scope};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Envoy's routing priority: which set of thresholds applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    #[default]
    Default,
    High,
}

impl Priority {
    fn index(self) -> usize {
        match self {
            Priority::Default => 0,
            Priority::High => 1,
        }
    }
}

/// What a slot is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Connections,
    Pending,
    Requests,
    Retries,
    /// Hosts with a connection pool (`max_connection_pools`).
    ConnectionPools,
}

const RESOURCES: [Resource; 5] = [
    Resource::Connections,
    Resource::Pending,
    Resource::Requests,
    Resource::Retries,
    Resource::ConnectionPools,
];

impl Resource {
    fn index(self) -> usize {
        self as usize
    }

    /// Envoy's gauge names: `<x>_open` and `remaining_<y>`.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Resource::Connections => ("cx_open", "remaining_cx"),
            Resource::Pending => ("rq_pending_open", "remaining_pending"),
            Resource::Requests => ("rq_open", "remaining_rq"),
            Resource::Retries => ("rq_retry_open", "remaining_retries"),
            Resource::ConnectionPools => ("cx_pool_open", "remaining_cx_pools"),
        }
    }
}

struct Limit {
    max: u64,
    used: AtomicU64,
    open: Arc<Gauge>,
    remaining: Option<Arc<Gauge>>,
}

impl Limit {
    /// Updates the gauges (a store only when a value changes: `open` flips rarely).
    fn publish(&self, used: u64, max: u64) {
        let open = i64::from(used >= max);
        if self.open.value() != open {
            self.open.set(open);
        }
        if let Some(r) = &self.remaining {
            r.set(max.saturating_sub(used) as i64);
        }
    }
}

struct Level {
    limits: [Limit; 5],
    retry_budget: Option<RetryBudget>,
}

/// One cluster's circuit breakers.
pub struct Breakers {
    levels: [Level; 2],
    /// `per_host_thresholds` `max_connections`: each host's connections (opening or open).
    per_host_max_connections: Option<u64>,
    /// Woken when a connection slot is given back or a pooled connection becomes idle:
    /// requests waiting for a connection (pending) look again.
    available: Notify,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Breakers")
    }
}

/// A taken slot; dropping it gives the slot back.
pub struct Slot {
    breakers: Arc<Breakers>,
    priority: Priority,
    resource: Resource,
    /// A connection slot under a per-host limit: the host's count, given back too.
    host: Option<Arc<super::HostStats>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({:?}, {:?})", self.priority, self.resource)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(h) = &self.host {
            h.cx_slots.fetch_sub(1, Ordering::AcqRel);
        }
        self.breakers.release(self.priority, self.resource);
    }
}

impl Breakers {
    pub fn new(cfg: Option<&config::CircuitBreakers>, scope: &Scope) -> Arc<Self> {
        let thresholds = |high: bool| {
            cfg.and_then(|c| c.thresholds.iter().find(|t| t.high_priority == high))
                .cloned()
                .unwrap_or_else(|| config::Thresholds::defaults(high))
        };
        let level = |high: bool| {
            let t = thresholds(high);
            let prefix = if high {
                "circuit_breakers.high."
            } else {
                "circuit_breakers.default."
            };
            let limit = |r: Resource| {
                let max = u64::from(match r {
                    Resource::Connections => t.max_connections,
                    Resource::Pending => t.max_pending_requests,
                    Resource::Requests => t.max_requests,
                    Resource::Retries => t.max_retries,
                    Resource::ConnectionPools => t.max_connection_pools,
                });
                let (open, remaining) = r.names();
                let l = Limit {
                    max,
                    used: AtomicU64::new(0),
                    open: scope.gauge(&format!("{prefix}{open}")),
                    remaining: t
                        .track_remaining
                        .then(|| scope.gauge(&format!("{prefix}{remaining}"))),
                };
                l.publish(0, max);
                l
            };
            Level {
                limits: RESOURCES.map(limit),
                retry_budget: t.retry_budget,
            }
        };
        Arc::new(Self {
            levels: [level(false), level(true)],
            per_host_max_connections: cfg.and_then(|c| c.per_host_max_connections).map(u64::from),
            available: Notify::new(),
        })
    }

    fn limit(&self, p: Priority, r: Resource) -> &Limit {
        &self.levels[p.index()].limits[r.index()]
    }

    /// The limit in force: the configured one, or for retries under a retry budget, the
    /// budget's share of the requests active and pending (at least `min_retry_concurrency`).
    fn max(&self, p: Priority, r: Resource) -> u64 {
        let level = &self.levels[p.index()];
        match (r, &level.retry_budget) {
            (Resource::Retries, Some(b)) => {
                let load = level.limits[Resource::Requests.index()]
                    .used
                    .load(Ordering::Relaxed)
                    + level.limits[Resource::Pending.index()]
                        .used
                        .load(Ordering::Relaxed);
                let share = (load as f64 * b.budget_percent / 100.0) as u64;
                share.max(u64::from(b.min_retry_concurrency))
            }
            _ => level.limits[r.index()].max,
        }
    }

    /// Takes a slot of `r`, or `None` when its limit is reached (the caller counts the
    /// overflow).
    pub fn try_acquire(self: &Arc<Self>, p: Priority, r: Resource) -> Option<Slot> {
        let limit = self.limit(p, r);
        let max = self.max(p, r);
        let mut used = limit.used.load(Ordering::Relaxed);
        loop {
            if used >= max {
                limit.publish(used, max);
                return None;
            }
            match limit.used.compare_exchange_weak(
                used,
                used + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    limit.publish(used + 1, max);
                    return Some(Slot {
                        breakers: self.clone(),
                        priority: p,
                        resource: r,
                        host: None,
                    });
                }
                Err(now) => used = now,
            }
        }
    }

    /// A connection slot for `host`: the cluster's `max_connections` and, with
    /// `per_host_thresholds`, the host's own. `None` when either is reached.
    pub fn try_acquire_connection(
        self: &Arc<Self>,
        p: Priority,
        host: &super::Host,
    ) -> Option<Slot> {
        let mut slot = self.try_acquire(p, Resource::Connections)?;
        let Some(max) = self.per_host_max_connections else {
            return Some(slot);
        };
        let count = &host.stats.cx_slots;
        let mut used = count.load(Ordering::Relaxed);
        loop {
            if used >= max {
                return None;
            }
            match count.compare_exchange_weak(used, used + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    slot.host = Some(host.stats.clone());
                    return Some(slot);
                }
                Err(now) => used = now,
            }
        }
    }

    fn release(&self, p: Priority, r: Resource) {
        let limit = self.limit(p, r);
        let used = limit.used.fetch_sub(1, Ordering::AcqRel) - 1;
        limit.publish(used, self.max(p, r));
        if r == Resource::Connections {
            // Every waiter looks again: what was freed may suit only some of them (a host,
            // a worker's pool).
            self.available.notify_waiters();
        }
    }

    /// Slots of `r` in use (tests, admin).
    pub fn used(&self, p: Priority, r: Resource) -> u64 {
        self.limit(p, r).used.load(Ordering::Relaxed)
    }

    /// A pooled connection became idle: one waiting request may take it.
    pub fn connection_idle(&self) {
        self.available.notify_waiters();
    }

    /// Resolves when a connection slot was given back or a pooled connection became idle.
    /// Pin it and `enable` it before checking, so no notification is missed.
    pub fn available(&self) -> tokio::sync::futures::Notified<'_> {
        self.available.notified()
    }

    /// `/clusters`: `<priority>::max_<x>::<n>` lines, as Envoy prints them.
    pub fn thresholds(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (p, name) in [
            (Priority::Default, "default_priority"),
            (Priority::High, "high_priority"),
        ] {
            for (r, key) in [
                (Resource::Connections, "max_connections"),
                (Resource::Pending, "max_pending_requests"),
                (Resource::Requests, "max_requests"),
                (Resource::Retries, "max_retries"),
            ] {
                out.push((name, key, self.limit(p, r).max));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;

    fn breakers(yaml_thresholds: Vec<config::Thresholds>) -> (Arc<Breakers>, Store) {
        let store = Store::new();
        let scope = store.tagged_scope("cluster", "envoy_cluster_name", "c");
        let cb = config::CircuitBreakers {
            thresholds: yaml_thresholds,
            per_host_max_connections: None,
        };
        (Breakers::new(Some(&cb), &scope), store)
    }

    fn limits(cx: u32, pending: u32, rq: u32, retries: u32) -> config::Thresholds {
        config::Thresholds {
            max_connections: cx,
            max_pending_requests: pending,
            max_requests: rq,
            max_retries: retries,
            track_remaining: true,
            ..config::Thresholds::defaults(false)
        }
    }

    #[test]
    fn max_connection_pools_limits_the_hosts_with_a_pool() {
        let (b, store) = breakers(vec![config::Thresholds {
            max_connection_pools: 1,
            ..config::Thresholds::defaults(false)
        }]);
        let host = |port| {
            super::super::Host::new(
                std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                String::new(),
                0,
                Default::default(),
                1,
                config::HealthStatus::Healthy,
            )
        };
        let (a, c) = (host(1), host(2));
        assert!(a.has_pool(&b));
        assert!(a.has_pool(&b), "kept: asked again, still one");
        assert!(!c.has_pool(&b));
        assert_eq!(
            store.value("cluster.c.circuit_breakers.default.cx_pool_open"),
            Some(1)
        );
        // The pool goes with its host.
        drop(a);
        assert!(c.has_pool(&b));
    }

    #[test]
    fn per_host_connections_are_limited_apart_from_the_cluster() {
        let store = Store::new();
        let scope = store.tagged_scope("cluster", "envoy_cluster_name", "c");
        let cb = config::CircuitBreakers {
            thresholds: vec![],
            per_host_max_connections: Some(2),
        };
        let b = Breakers::new(Some(&cb), &scope);
        let host = |port| {
            super::super::Host::new(
                std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                String::new(),
                0,
                Default::default(),
                1,
                config::HealthStatus::Healthy,
            )
        };
        let (h1, h2) = (host(1), host(2));
        let s1 = b.try_acquire_connection(Priority::Default, &h1).unwrap();
        let _s2 = b.try_acquire_connection(Priority::Default, &h1).unwrap();
        assert!(b.try_acquire_connection(Priority::Default, &h1).is_none());
        // The refused attempt gave its cluster slot back.
        assert_eq!(
            b.limit(Priority::Default, Resource::Connections)
                .used
                .load(Ordering::Relaxed),
            2
        );
        let _s3 = b.try_acquire_connection(Priority::Default, &h2).unwrap();
        drop(s1);
        assert_eq!(h1.stats.cx_slots.load(Ordering::Relaxed), 1);
        assert!(b.try_acquire_connection(Priority::Default, &h1).is_some());
    }

    #[test]
    fn slots_are_taken_up_to_the_limit_and_given_back_on_drop() {
        let (b, store) = breakers(vec![limits(2, 1, 3, 0)]);
        let gauge = |n: &str| store.value(&format!("cluster.c.circuit_breakers.default.{n}"));
        let a = b
            .try_acquire(Priority::Default, Resource::Connections)
            .unwrap();
        assert_eq!(
            (gauge("cx_open"), gauge("remaining_cx")),
            (Some(0), Some(1))
        );
        let c = b
            .try_acquire(Priority::Default, Resource::Connections)
            .unwrap();
        assert_eq!(
            (gauge("cx_open"), gauge("remaining_cx")),
            (Some(1), Some(0))
        );
        assert!(b
            .try_acquire(Priority::Default, Resource::Connections)
            .is_none());
        drop(a);
        assert_eq!(
            (gauge("cx_open"), gauge("remaining_cx")),
            (Some(0), Some(1))
        );
        assert!(b
            .try_acquire(Priority::Default, Resource::Connections)
            .is_some());
        drop(c);
        assert_eq!(b.used(Priority::Default, Resource::Connections), 0);
        // A zero limit admits nothing.
        assert!(b
            .try_acquire(Priority::Default, Resource::Retries)
            .is_none());
        assert_eq!(gauge("rq_retry_open"), Some(1));
        // The high priority has its own thresholds (Envoy's defaults here).
        assert!(b.try_acquire(Priority::High, Resource::Retries).is_some());
    }

    #[test]
    fn a_retry_budget_follows_the_requests_in_flight() {
        let mut t = limits(1024, 1024, 1024, 0);
        t.retry_budget = Some(RetryBudget {
            budget_percent: 20.0,
            min_retry_concurrency: 2,
        });
        let (b, _store) = breakers(vec![t]);
        let p = Priority::Default;
        // Below the minimum concurrency: the minimum applies (max_retries is not used).
        let r1 = b.try_acquire(p, Resource::Retries).unwrap();
        let r2 = b.try_acquire(p, Resource::Retries).unwrap();
        assert!(b.try_acquire(p, Resource::Retries).is_none());
        // 20 requests in flight: 20 % of them, 4 retries.
        let rq: Vec<_> = (0..20)
            .map(|_| b.try_acquire(p, Resource::Requests).unwrap())
            .collect();
        let r3 = b.try_acquire(p, Resource::Retries).unwrap();
        let r4 = b.try_acquire(p, Resource::Retries).unwrap();
        assert!(b.try_acquire(p, Resource::Retries).is_none());
        drop(rq);
        assert!(b.try_acquire(p, Resource::Retries).is_none());
        drop((r1, r2, r3, r4));
        assert_eq!(b.used(p, Resource::Retries), 0);
    }

    #[test]
    fn without_configuration_envoys_defaults_apply() {
        let store = Store::new();
        let scope = store.tagged_scope("cluster", "envoy_cluster_name", "c");
        let b = Breakers::new(None, &scope);
        let t = b.thresholds();
        assert_eq!(t.len(), 8);
        assert!(t.contains(&("default_priority", "max_connections", 1024)));
        assert!(t.contains(&("high_priority", "max_retries", 3)));
        let slots: Vec<_> = (0..3)
            .map(|_| b.try_acquire(Priority::Default, Resource::Retries).unwrap())
            .collect();
        assert!(b
            .try_acquire(Priority::Default, Resource::Retries)
            .is_none());
        drop(slots);
    }

    #[test]
    fn concurrent_takers_never_exceed_the_limit() {
        let (b, _store) = breakers(vec![limits(8, 1, 1, 1)]);
        let taken = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, taken, peak) = (b.clone(), taken.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Some(s) = b.try_acquire(Priority::Default, Resource::Connections) {
                            let now = taken.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            taken.fetch_sub(1, Ordering::SeqCst);
                            drop(s);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 8);
        assert_eq!(b.used(Priority::Default, Resource::Connections), 0);
    }
}
