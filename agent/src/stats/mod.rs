//! Stats store: counters, gauges and histograms under Envoy's names and meanings.
//!
//! Stats are registered when config is applied (a mutex, off the hot path) and handed out as
//! `Arc`s; recording is a relaxed atomic add. Every stat carries its Envoy name
//! (`cluster.backend.upstream_cx_total`) and the tag-extracted form used by Prometheus
//! (`envoy_cluster_upstream_cx_total{envoy_cluster_name="backend"}`), decided at registration
//! instead of by regex at render time.

mod histogram;
mod render;

pub use histogram::{Histogram, HistogramSnapshot, SUPPORTED_QUANTILES};
pub use render::{render_json, render_prometheus, render_text, StatsFilter};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Names of one stat: the full Envoy name plus its tag-extracted name and tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatName {
    pub full: String,
    pub extracted: String,
    pub tags: Vec<(String, String)>,
}

/// A prefix under which stats are created, e.g. `cluster.backend.` tagged
/// `envoy_cluster_name=backend`.
#[derive(Debug, Clone)]
pub struct Scope {
    store: Store,
    prefix: String,
    extracted_prefix: String,
    tags: Vec<(String, String)>,
}

impl Scope {
    /// Stat `<root>.<name>`; `root` is like "server".
    pub fn counter(&self, name: &str) -> Arc<Counter> {
        self.store.counter(self.name(name))
    }
    pub fn gauge(&self, name: &str) -> Arc<Gauge> {
        self.store.gauge(self.name(name))
    }
    pub fn histogram(&self, name: &str) -> Arc<Histogram> {
        self.store.histogram(self.name(name))
    }
    fn name(&self, name: &str) -> StatName {
        StatName {
            full: format!("{}{}", self.prefix, name),
            extracted: format!("{}{}", self.extracted_prefix, name),
            tags: self.tags.clone(),
        }
    }
}

#[derive(Debug)]
pub struct Counter {
    name: StatName,
    value: AtomicU64,
    used: AtomicBool,
}

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        mark_used(&self.used);
    }
    /// For counters mirrored from an external monotonic source (eBPF per-CPU counters).
    pub fn set_total(&self, v: u64) {
        self.value.store(v, Ordering::Relaxed);
        if v > 0 {
            mark_used(&self.used);
        }
    }
    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
    pub fn name(&self) -> &StatName {
        &self.name
    }
    pub fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct Gauge {
    name: StatName,
    value: AtomicI64,
    used: AtomicBool,
}

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    #[inline]
    pub fn dec(&self) {
        self.add(-1)
    }
    #[inline]
    pub fn add(&self, n: i64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        mark_used(&self.used);
    }
    pub fn set(&self, v: i64) {
        self.value.store(v, Ordering::Relaxed);
        mark_used(&self.used);
    }
    pub fn value(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
    pub fn name(&self) -> &StatName {
        &self.name
    }
    pub fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }
}

/// Avoids dirtying the cache line on every write once the flag is set.
#[inline]
fn mark_used(flag: &AtomicBool) {
    if !flag.load(Ordering::Relaxed) {
        flag.store(true, Ordering::Relaxed);
    }
}

#[derive(Default, Debug)]
struct Registry {
    counters: BTreeMap<String, Arc<Counter>>,
    gauges: BTreeMap<String, Arc<Gauge>>,
    histograms: BTreeMap<String, Arc<Histogram>>,
}

/// The process-wide stats store. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Store {
    inner: Arc<Mutex<Registry>>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// A scope without tags, e.g. `server.`.
    pub fn root_scope(&self, root: &str) -> Scope {
        Scope {
            store: self.clone(),
            prefix: format!("{root}."),
            extracted_prefix: format!("{root}."),
            tags: Vec::new(),
        }
    }

    /// A scope `<root>.<value>.` whose middle element is extracted as tag `tag`, as Envoy's
    /// default tag extractors do for `cluster.<name>.`, `listener.<address>.`, `tcp.<prefix>.`.
    pub fn tagged_scope(&self, root: &str, tag: &str, value: &str) -> Scope {
        Scope {
            store: self.clone(),
            prefix: format!("{root}.{value}."),
            extracted_prefix: format!("{root}."),
            tags: vec![(tag.to_string(), value.to_string())],
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the maps inconsistent (single inserts),
        // so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn counter(&self, name: StatName) -> Arc<Counter> {
        let mut reg = self.lock();
        reg.counters
            .entry(name.full.clone())
            .or_insert_with(|| {
                Arc::new(Counter {
                    name,
                    value: AtomicU64::new(0),
                    used: AtomicBool::new(false),
                })
            })
            .clone()
    }

    pub fn gauge(&self, name: StatName) -> Arc<Gauge> {
        let mut reg = self.lock();
        reg.gauges
            .entry(name.full.clone())
            .or_insert_with(|| {
                Arc::new(Gauge {
                    name,
                    value: AtomicI64::new(0),
                    used: AtomicBool::new(false),
                })
            })
            .clone()
    }

    pub fn histogram(&self, name: StatName) -> Arc<Histogram> {
        let mut reg = self.lock();
        reg.histograms
            .entry(name.full.clone())
            .or_insert_with(|| Arc::new(Histogram::new(name)))
            .clone()
    }

    /// Moves every histogram's interval window forward (Envoy's stats flush).
    pub fn flush_intervals(&self) {
        let hists: Vec<Arc<Histogram>> = self.lock().histograms.values().cloned().collect();
        for h in hists {
            h.flush_interval();
        }
    }

    /// Frees the stats of removed clusters, listeners and filters: tagged stats (those of a
    /// `tagged_scope`) that nothing but the store refers to any more, as Envoy frees a scope's
    /// stats with the scope. A cluster or listener that is replaced keeps its stats (the new
    /// one looks them up by name before the old one is dropped); one still used by
    /// connections keeps them until they finish. Untagged stats (`server.*`, `cluster_manager.*`)
    /// are fixed in number and stay. Returns how many were freed.
    pub fn sweep(&self) -> usize {
        fn retain<T>(m: &mut BTreeMap<String, Arc<T>>, tagged: impl Fn(&T) -> bool) -> usize {
            let before = m.len();
            m.retain(|_, v| Arc::strong_count(v) > 1 || !tagged(v));
            before - m.len()
        }
        let mut reg = self.lock();
        retain(&mut reg.counters, |c| !c.name.tags.is_empty())
            + retain(&mut reg.gauges, |g| !g.name.tags.is_empty())
            + retain(&mut reg.histograms, |h| !h.name().tags.is_empty())
    }

    /// How many stats the store holds (tests, churn checks).
    pub fn len(&self) -> usize {
        let reg = self.lock();
        reg.counters.len() + reg.gauges.len() + reg.histograms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A consistent list of all stats, sorted by name, for rendering.
    pub fn snapshot(&self) -> StatsSnapshot {
        let reg = self.lock();
        StatsSnapshot {
            counters: reg.counters.values().cloned().collect(),
            gauges: reg.gauges.values().cloned().collect(),
            histograms: reg.histograms.values().cloned().collect(),
        }
    }

    /// Value of a counter or gauge by full name (tests, admin helpers).
    pub fn value(&self, full: &str) -> Option<i64> {
        let reg = self.lock();
        if let Some(c) = reg.counters.get(full) {
            return Some(c.value() as i64);
        }
        reg.gauges.get(full).map(|g| g.value())
    }
}

pub struct StatsSnapshot {
    pub counters: Vec<Arc<Counter>>,
    pub gauges: Vec<Arc<Gauge>>,
    pub histograms: Vec<Arc<Histogram>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_returns_same_counter() {
        let store = Store::new();
        let scope = store.tagged_scope("cluster", "envoy_cluster_name", "backend");
        let a = scope.counter("upstream_cx_total");
        let b = scope.counter("upstream_cx_total");
        a.inc();
        b.add(2);
        assert_eq!(store.value("cluster.backend.upstream_cx_total"), Some(3));
        assert_eq!(a.name().extracted, "cluster.upstream_cx_total");
        assert_eq!(
            a.name().tags,
            vec![("envoy_cluster_name".to_string(), "backend".to_string())]
        );
    }

    #[test]
    fn sweep_frees_tagged_stats_nobody_holds() {
        let store = Store::new();
        let server = store.root_scope("server").counter("transient");
        drop(server);
        let kept = store
            .tagged_scope("cluster", "envoy_cluster_name", "kept")
            .counter("upstream_cx_total");
        {
            let gone = store.tagged_scope("cluster", "envoy_cluster_name", "gone");
            let _c = gone.counter("upstream_cx_total");
            let _g = gone.gauge("membership_healthy");
            let _h = gone.histogram("upstream_cx_length_ms");
            assert_eq!(store.sweep(), 0, "held stats stay");
        }
        assert_eq!(store.len(), 5);
        assert_eq!(store.sweep(), 3);
        assert_eq!(store.value("cluster.gone.membership_healthy"), None);
        assert!(
            store.value("server.transient").is_some(),
            "untagged stats stay"
        );
        kept.inc();
        assert_eq!(store.value("cluster.kept.upstream_cx_total"), Some(1));
    }

    #[test]
    fn gauge_tracks_used_even_when_back_to_zero() {
        let store = Store::new();
        let g = store.root_scope("server").gauge("total_connections");
        assert!(!g.used());
        g.inc();
        g.dec();
        assert_eq!(g.value(), 0);
        assert!(g.used());
    }
}
