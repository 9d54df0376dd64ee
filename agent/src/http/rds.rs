//! Route configurations by name, for connection managers whose routes come over RDS.
//!
//! A connection manager naming route configuration `r` holds `r`'s slot; the slot holds the
//! current compiled table, swapped whole when RDS delivers (requests read it lock-free). The
//! registry keeps slots weakly: the names with a live slot are what RDS subscribes to, and a
//! name no listener uses any more is forgotten with its last slot.

use super::route::RouteTable;
use crate::stats::{Counter, Gauge, Store};
use arc_swap::ArcSwapOption;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};

/// Envoy's `http.<stat_prefix>.rds.<route_config_name>.*`.
#[derive(Debug)]
pub struct RdsStats {
    pub config_reload: Arc<Counter>,
    pub update_attempt: Arc<Counter>,
    pub update_success: Arc<Counter>,
    pub update_rejected: Arc<Counter>,
    pub update_empty: Arc<Counter>,
    pub version: Arc<Gauge>,
}

impl RdsStats {
    fn new(store: &Store, prefix: &str, name: &str) -> Self {
        let s = store.tagged_scope(
            "http",
            "envoy_http_conn_manager_prefix",
            &format!("{prefix}.rds.{name}"),
        );
        Self {
            config_reload: s.counter("config_reload"),
            update_attempt: s.counter("update_attempt"),
            update_success: s.counter("update_success"),
            update_rejected: s.counter("update_rejected"),
            update_empty: s.counter("update_empty"),
            version: s.gauge("version"),
        }
    }
}

/// One route configuration name and its current table.
#[derive(Debug)]
pub struct RouteSlot {
    pub name: String,
    table: ArcSwapOption<RouteTable>,
    /// The hash of the table's version (the `version` gauge).
    version: std::sync::atomic::AtomicI64,
    /// The stats of each connection manager using the slot (held by them).
    watchers: Mutex<Vec<Weak<RdsStats>>>,
    /// Signalled when the slot goes (its name may leave the subscription).
    released: Arc<tokio::sync::Notify>,
}

impl Drop for RouteSlot {
    fn drop(&mut self) {
        self.released.notify_one();
    }
}

impl RouteSlot {
    pub fn table(&self) -> Option<Arc<RouteTable>> {
        self.table.load_full()
    }

    pub fn has_table(&self) -> bool {
        self.table.load().is_some()
    }

    /// Stats for a connection manager with `prefix` that uses this slot. A table that came
    /// before the connection manager was built (its listener warmed) counts as its first load.
    pub fn watch(&self, store: &Store, prefix: &str) -> Arc<RdsStats> {
        let s = Arc::new(RdsStats::new(store, prefix, &self.name));
        if self.has_table() && s.config_reload.value() == 0 {
            s.update_attempt.inc();
            s.update_success.inc();
            s.config_reload.inc();
            s.version
                .set(self.version.load(std::sync::atomic::Ordering::Relaxed));
        }
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|x| x.strong_count() > 0);
        w.push(Arc::downgrade(&s));
        s
    }

    fn each_watcher(&self, f: impl Fn(&RdsStats)) {
        let w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        for s in w.iter().filter_map(Weak::upgrade) {
            f(&s);
        }
    }

    /// Counts an RDS update of this name that was rejected.
    pub fn rejected(&self) {
        self.each_watcher(|s| {
            s.update_attempt.inc();
            s.update_rejected.inc();
        });
    }
}

#[derive(Debug, Default)]
pub struct RouteRegistry {
    slots: Mutex<HashMap<String, Weak<RouteSlot>>>,
    released: Arc<tokio::sync::Notify>,
}

impl RouteRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<RouteSlot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of `name`, created (empty) if no one holds it.
    pub fn slot(&self, name: &str) -> Arc<RouteSlot> {
        let mut slots = self.lock();
        if let Some(s) = slots.get(name).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(RouteSlot {
            name: name.to_string(),
            table: ArcSwapOption::empty(),
            version: Default::default(),
            watchers: Mutex::new(Vec::new()),
            released: self.released.clone(),
        });
        slots.insert(name.to_string(), Arc::downgrade(&s));
        // Forget names whose last holder went away.
        slots.retain(|_, w| w.strong_count() > 0);
        s
    }

    /// Resolves when a slot has gone since the last call (the xDS session then recomputes
    /// what RDS subscribes to).
    pub async fn released(&self) {
        self.released.notified().await
    }

    /// The slot of `name` if someone holds it.
    pub fn get(&self, name: &str) -> Option<Arc<RouteSlot>> {
        self.lock().get(name).and_then(Weak::upgrade)
    }

    /// Every name some connection manager (or warming listener) uses: what RDS subscribes to.
    pub fn names(&self) -> BTreeSet<String> {
        self.lock()
            .iter()
            .filter(|(_, w)| w.strong_count() > 0)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Installs a new table for `name` (if anyone uses it); returns whether it was used.
    pub fn set(&self, name: &str, table: RouteTable, version: &str) -> bool {
        let Some(slot) = self.get(name) else {
            return false;
        };
        let empty = table.config.virtual_hosts.is_empty();
        slot.table.store(Some(Arc::new(table)));
        let hash = version_hash(version);
        slot.version
            .store(hash, std::sync::atomic::Ordering::Relaxed);
        slot.each_watcher(|s| {
            s.update_attempt.inc();
            s.update_success.inc();
            s.config_reload.inc();
            if empty {
                s.update_empty.inc();
            }
            s.version.set(hash);
        });
        true
    }
}

/// Envoy shows a version as a hash of its text in the `version` gauge.
fn version_hash(v: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_slots_held() {
        let r = RouteRegistry::default();
        let a = r.slot("a");
        let a2 = r.slot("a");
        assert!(Arc::ptr_eq(&a, &a2));
        let b = r.slot("b");
        assert_eq!(r.names().into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
        drop(b);
        assert_eq!(r.names().into_iter().collect::<Vec<_>>(), vec!["a"]);
        let store = Store::new();
        let stats = a.watch(&store, "in");
        let cfg = crate::config::http::RouteConfiguration {
            name: "a".into(),
            virtual_hosts: vec![],
            headers: Default::default(),
            per_filter: vec![],
            ignore_port_in_host_matching: false,
            validate_clusters: false,
            source: serde_json::Value::Null,
        };
        assert!(r.set(
            "a",
            RouteTable::new(Arc::new(cfg.clone()), &Store::new()),
            "1"
        ));
        assert!(a.has_table());
        assert_eq!(stats.config_reload.value(), 1);
        assert_eq!(stats.update_empty.value(), 1);
        assert!(store.value("http.in.rds.a.update_success").is_some());
        drop((a, a2));
        assert!(
            !r.set("a", RouteTable::new(Arc::new(cfg), &Store::new()), "2"),
            "nobody uses it"
        );
        assert!(r.names().is_empty());
    }
}
