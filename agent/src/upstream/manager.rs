//! The cluster manager: every cluster by name. The data path loads the map lock-free; config
//! changes go through a [`ClusterBatch`], which copies the map once, applies any number of
//! additions, replacements, removals and endpoint updates, and publishes the result once —
//! so a response or reload naming 20,000 clusters costs one copy, not one per cluster.

use super::{dns, futures_join_all, Cluster, Connector, HostSet, Zones};
use crate::config::{self, DiscoveryType};
use crate::http::access_log::EventLog;
use crate::stats::{Counter, Gauge, Store};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    Added,
    Modified,
    Unchanged,
}

/// Envoy's `cluster_manager.*` stats.
#[derive(Debug)]
struct ManagerStats {
    active_clusters: Arc<Gauge>,
    warming_clusters: Arc<Gauge>,
    cluster_added: Arc<Counter>,
    cluster_modified: Arc<Counter>,
    cluster_removed: Arc<Counter>,
}

/// All clusters, by name. Readers (the data path, per connection) load the map lock-free;
/// writers (config updates) are serialized and swap in a new map.
#[derive(Debug)]
pub struct ClusterManager {
    pub(super) clusters: ArcSwap<BTreeMap<String, Arc<Cluster>>>,
    write: Mutex<()>,
    stats: ManagerStats,
    /// Set once the data-path runtime runs: DNS refresh for clusters added later.
    runtime: OnceLock<(tokio::runtime::Handle, crate::drain::Watch)>,
    env: Env,
}

/// What every cluster of the manager shares.
#[derive(Debug)]
pub(super) struct Env {
    pub store: Store,
    pub connector: Connector,
    /// `cluster_manager.outlier_detection.event_log_path`.
    pub outlier_log: Option<EventLog>,
    /// The node's zone and `cluster_manager.local_cluster_name`.
    pub zones: Arc<Zones>,
    /// The bootstrap's static secrets, for TLS contexts that name them.
    pub secrets: Arc<crate::tls::Secrets>,
    /// The control-plane cluster (its TLS always checks the server's name).
    pub ads_cluster: Option<String>,
}

/// Changes to the clusters, published together when the batch is dropped. Holds the
/// manager's write lock meanwhile: the data path keeps reading the previous map.
pub struct ClusterBatch<'a> {
    cm: &'a ClusterManager,
    _write: MutexGuard<'a, ()>,
    /// `None` until the first change copies the published map.
    map: Option<BTreeMap<String, Arc<Cluster>>>,
    published: Arc<BTreeMap<String, Arc<Cluster>>>,
    /// Added or replaced clusters whose background work (DNS, ORIGINAL_DST sweeps) starts
    /// once they are published.
    started: Vec<Arc<Cluster>>,
    /// Warming may have ended: the gauges are recomputed.
    touched: bool,
}

impl ClusterManager {
    /// The bootstrap's static secrets.
    pub fn secrets(&self) -> &Arc<crate::tls::Secrets> {
        &self.env.secrets
    }

    pub fn new(snapshot: &config::Snapshot, store: &Store) -> Self {
        Self::with_connector(snapshot, store, Connector::Tcp)
    }

    /// With another way to reach hosts (in-memory streams in tests).
    pub fn with_connector(
        snapshot: &config::Snapshot,
        store: &Store,
        connector: Connector,
    ) -> Self {
        let cm = store.root_scope("cluster_manager");
        let stats = ManagerStats {
            active_clusters: cm.gauge("active_clusters"),
            warming_clusters: cm.gauge("warming_clusters"),
            cluster_added: cm.counter("cluster_added"),
            cluster_modified: cm.counter("cluster_modified"),
            cluster_removed: cm.counter("cluster_removed"),
        };
        let env = Env {
            store: store.clone(),
            connector,
            outlier_log: snapshot
                .cluster_manager
                .outlier_log_path
                .as_deref()
                .map(|p| EventLog::open(p, store)),
            zones: Arc::new(Zones::new(
                snapshot.node.locality.clone(),
                snapshot.cluster_manager.local_cluster_name.clone(),
            )),
            secrets: Arc::new(crate::tls::Secrets::new(
                snapshot.secrets.clone(),
                Some(store),
            )),
            ads_cluster: snapshot.xds.as_ref().map(|x| x.cluster.clone()),
        };
        let mut map = BTreeMap::new();
        for c in &snapshot.clusters {
            map.insert(c.name.clone(), Cluster::new(c.clone(), &env));
        }
        // The zone-aware clusters exist now: the local cluster tells them its zones.
        if let Some(local) = env.zones.local_cluster().and_then(|n| map.get(n)) {
            local.tell_zones();
        }
        stats.active_clusters.set(map.len() as i64);
        stats.cluster_added.add(map.len() as u64);
        Self {
            clusters: ArcSwap::from_pointee(map),
            write: Mutex::new(()),
            stats,
            runtime: OnceLock::new(),
            env,
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Cluster>> {
        self.clusters.load().get(name).cloned()
    }

    /// Every cluster, sorted by name.
    pub fn all(&self) -> Vec<Arc<Cluster>> {
        self.clusters.load().values().cloned().collect()
    }

    /// Starts a set of changes, published together when the batch is dropped.
    pub fn batch(&self) -> ClusterBatch<'_> {
        let write = self.write.lock().unwrap_or_else(|p| p.into_inner());
        ClusterBatch {
            cm: self,
            _write: write,
            map: None,
            published: self.clusters.load_full(),
            started: Vec::new(),
            touched: false,
        }
    }

    /// Adds a cluster or replaces one with a different config (a batch of one).
    pub fn upsert(&self, cfg: Arc<config::Cluster>) -> Upsert {
        self.batch().upsert(cfg)
    }

    /// Removes a cluster; connections using it finish on it (a batch of one).
    pub fn remove(&self, name: &str) -> bool {
        self.batch().remove(name)
    }

    /// Installs endpoints (EDS) for the cluster, ending its warming. `false` if unknown.
    pub fn set_endpoints(&self, name: &str, localities: Vec<config::LocalityEndpoints>) -> bool {
        self.batch().set_endpoints(name, &localities)
    }

    /// Ends warming without endpoints (Envoy's `initial_fetch_timeout`).
    pub fn end_warming(&self, name: &str) {
        self.batch().end_warming(name)
    }

    /// Recounts the warming clusters (a secret arrived: their TLS clients may be ready).
    pub fn refresh_warming(&self) {
        self.publish_gauges(&self.clusters.load());
    }

    fn publish_gauges(&self, map: &BTreeMap<String, Arc<Cluster>>) {
        let warming = map.values().filter(|c| c.is_warming()).count();
        self.stats.active_clusters.set((map.len() - warming) as i64);
        self.stats.warming_clusters.set(warming as i64);
    }

    fn start_background(&self, c: &Arc<Cluster>) {
        if let (Some(h), Some((rt, watch))) = (&c.config.health_check, self.runtime.get()) {
            rt.spawn(super::health::run(
                Arc::downgrade(c),
                h.initial_jitter,
                watch.clone(),
            ));
        }
        if let (Some(ss), Some((rt, watch))) = (&c.config.common_lb.slow_start, self.runtime.get())
        {
            rt.spawn(super::lb::slow_start_refresh(
                Arc::downgrade(c),
                ss.window,
                watch.clone(),
            ));
        }
        if let (Some(d), Some((rt, watch))) = (&c.outlier, self.runtime.get()) {
            rt.spawn(super::outlier::run(
                Arc::downgrade(c),
                d.interval(),
                watch.clone(),
            ));
        }
        if c.original_dst.is_some() {
            if let Some((rt, watch)) = self.runtime.get() {
                rt.spawn(original_dst_cleanup_loop(c.clone(), watch.clone()));
            }
            return;
        }
        if !matches!(
            c.config.discovery,
            DiscoveryType::StrictDns | DiscoveryType::LogicalDns
        ) {
            return;
        }
        if let Some((rt, watch)) = self.runtime.get() {
            let (c1, c2, w) = (c.clone(), c.clone(), watch.clone());
            rt.spawn(async move {
                dns::refresh(c1).await;
                dns::refresh_loop(c2, w).await;
            });
        }
    }

    /// Resolves DNS clusters once, then keeps refreshing them in the background on the
    /// current runtime (which later additions use too).
    pub async fn initialize(&self, shutdown: crate::drain::Watch) {
        let _ = self
            .runtime
            .set((tokio::runtime::Handle::current(), shutdown.clone()));
        let dns: Vec<Arc<Cluster>> = self
            .all()
            .into_iter()
            .filter(|c| {
                matches!(
                    c.config.discovery,
                    DiscoveryType::StrictDns | DiscoveryType::LogicalDns
                )
            })
            .collect();
        for c in self.all().into_iter().filter(|c| c.original_dst.is_some()) {
            tokio::spawn(original_dst_cleanup_loop(c, shutdown.clone()));
        }
        for c in self.all() {
            if let Some(h) = &c.config.health_check {
                tokio::spawn(super::health::run(
                    Arc::downgrade(&c),
                    h.initial_jitter,
                    shutdown.clone(),
                ));
            }
            if let Some(ss) = &c.config.common_lb.slow_start {
                tokio::spawn(super::lb::slow_start_refresh(
                    Arc::downgrade(&c),
                    ss.window,
                    shutdown.clone(),
                ));
            }
            if let Some(d) = &c.outlier {
                tokio::spawn(super::outlier::run(
                    Arc::downgrade(&c),
                    d.interval(),
                    shutdown.clone(),
                ));
            }
        }
        let first = dns.iter().map(|c| dns::refresh(c.clone()));
        futures_join_all(first).await;
        for c in dns {
            tokio::spawn(dns::refresh_loop(c, shutdown.clone()));
        }
    }
}

impl ClusterBatch<'_> {
    /// The cluster as this batch has it (including its own changes).
    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.view().get(name)
    }

    /// Every cluster as this batch has it, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.view().values()
    }

    fn view(&self) -> &BTreeMap<String, Arc<Cluster>> {
        self.map.as_ref().unwrap_or(&self.published)
    }

    fn map_mut(&mut self) -> &mut BTreeMap<String, Arc<Cluster>> {
        let published = &self.published;
        self.map.get_or_insert_with(|| (**published).clone())
    }

    /// Adds a cluster or replaces one with a different config. A replaced cluster keeps its
    /// hosts (and their stats) when membership comes from outside the config (EDS, DNS),
    /// and connections already using the old one finish on it.
    pub fn upsert(&mut self, cfg: Arc<config::Cluster>) -> Upsert {
        let old = self.get(&cfg.name).cloned();
        if let Some(old) = &old {
            if *old.config == *cfg {
                return Upsert::Unchanged;
            }
        }
        let cm = self.cm;
        let new = Cluster::new(cfg.clone(), &cm.env);
        if let Some(old) = &old {
            old.retire();
            // Hosts carry over only from the same source (same discovery type and, for EDS,
            // the same service name); otherwise the new cluster waits for its own.
            if new.config.discovery == old.config.discovery
                && new.config.discovery != DiscoveryType::Static
                && new.config.eds_service_name == old.config.eds_service_name
            {
                new.adopt_hosts(old);
            }
        }
        self.map_mut().insert(cfg.name.clone(), new.clone());
        self.started.push(new);
        self.touched = true;
        if old.is_some() {
            cm.stats.cluster_modified.inc();
            Upsert::Modified
        } else {
            cm.stats.cluster_added.inc();
            Upsert::Added
        }
    }

    /// Removes a cluster; connections using it finish on it.
    pub fn remove(&mut self, name: &str) -> bool {
        let Some(old) = self.get(name).cloned() else {
            return false;
        };
        old.retire();
        self.map_mut().remove(name);
        self.touched = true;
        self.cm.stats.cluster_removed.inc();
        true
    }

    /// Installs endpoints (EDS) for the cluster, ending its warming. `false` if unknown.
    /// New hosts take effect at once (the cluster object is shared with the data path).
    pub fn set_endpoints(&mut self, name: &str, localities: &[config::LocalityEndpoints]) -> bool {
        let Some(c) = self.get(name) else {
            return false;
        };
        c.set_hosts(HostSet::hosts_of(localities));
        c.warm();
        self.touched = true;
        true
    }

    /// Ends warming without endpoints (Envoy's `initial_fetch_timeout`).
    pub fn end_warming(&mut self, name: &str) {
        if let Some(c) = self.get(name) {
            c.warm();
        }
        self.touched = true;
    }
}

impl Drop for ClusterBatch<'_> {
    fn drop(&mut self) {
        if !self.touched {
            return;
        }
        let cm = self.cm;
        match self.map.take() {
            Some(map) => {
                cm.publish_gauges(&map);
                cm.clusters.store(Arc::new(map));
            }
            None => cm.publish_gauges(&self.published),
        }
        for c in std::mem::take(&mut self.started) {
            cm.start_background(&c);
        }
    }
}

/// Sweeps an ORIGINAL_DST cluster's host cache every `cleanup_interval` until the cluster is
/// replaced or removed.
async fn original_dst_cleanup_loop(c: Arc<Cluster>, mut shutdown: crate::drain::Watch) {
    let every = c.config.cleanup_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {
                if c.is_retired() {
                    return;
                }
                c.cleanup_original_dst();
            }
            _ = shutdown.draining() => return,
        }
    }
}
