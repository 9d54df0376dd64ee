//! The ADS client: listeners, clusters and endpoints from a control plane over one gRPC
//! stream, state-of-the-world or incremental (delta), with ACK/NACK, reconnection with
//! jittered exponential backoff and last-known-good config.
//!
//! Semantics follow Envoy: each resource is validated on its own; valid ones are applied,
//! invalid ones are NACKed (error_detail names resource and field) and their previous version
//! keeps serving. In state-of-the-world, a cluster or listener missing from a response is
//! removed; EDS resources are only replaced. Static resources from the bootstrap are never
//! touched. The client runs on its own thread and runtime: a slow or broken control plane
//! never stalls the data path, which keeps serving the last good config.

use crate::config::xds::{
    cluster_from_proto, describe, endpoints_from_proto, listener_from_proto, CLUSTER_TYPE,
    ENDPOINT_TYPE, LISTENER_TYPE,
};
use crate::config::{self, DiscoveryType, XdsApi, XdsConfig};
use crate::listener::ListenerManager;
use crate::stats::{Counter, Gauge, Scope, Store};
use crate::upstream::{ClusterManager, LbContext};
use envoy_types::pb::envoy::config::cluster::v3 as pbc;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as pbe;
use envoy_types::pb::envoy::config::listener::v3 as pbl;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// gRPC INVALID_ARGUMENT, the code Envoy puts in a NACK's error_detail.
const INVALID_ARGUMENT: i32 = 3;

/// One applied dynamic resource.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    pub value: Arc<T>,
    pub version: String,
    pub last_updated: SystemTime,
}

/// A rejected update of one resource (shown by `/config_dump`).
#[derive(Debug, Clone)]
pub struct Rejected {
    pub details: String,
    pub version: String,
    pub at: SystemTime,
}

/// What the control plane has given us, for `/config_dump`.
#[derive(Debug, Default, Clone)]
pub struct XdsState {
    pub clusters: BTreeMap<String, Entry<config::Cluster>>,
    pub listeners: BTreeMap<String, Entry<config::Listener>>,
    pub endpoints: BTreeMap<String, Entry<Vec<config::LocalityEndpoints>>>,
    /// (type URL, resource name) → last rejection.
    pub rejected: BTreeMap<(String, String), Rejected>,
    /// Last accepted version per type (SotW `version_info`, delta `system_version_info`).
    pub versions: BTreeMap<String, String>,
    pub last_nack: Option<String>,
    pub connected: bool,
    /// Accepted resources as received, per type and name, for the on-disk cache.
    raw: BTreeMap<String, BTreeMap<String, Any>>,
    pub loaded_from_cache: bool,
    /// Names of unchanged resources of the response being applied (count as present).
    present: HashSet<String>,
}

#[derive(Debug)]
struct TypeStats {
    update_attempt: Arc<Counter>,
    update_success: Arc<Counter>,
    update_rejected: Arc<Counter>,
    update_failure: Arc<Counter>,
    version: Arc<Gauge>,
}

impl TypeStats {
    fn new(s: &Scope) -> Self {
        Self {
            update_attempt: s.counter("update_attempt"),
            update_success: s.counter("update_success"),
            update_rejected: s.counter("update_rejected"),
            update_failure: s.counter("update_failure"),
            version: s.gauge("version"),
        }
    }
}

#[derive(Debug)]
struct Stats {
    connected_state: Arc<Gauge>,
    cds: TypeStats,
    lds: TypeStats,
    eds: TypeStats,
    init_fetch_timeout: Arc<Counter>,
}

/// Envoy reports a version as a 64-bit hash in a gauge.
fn version_hash(v: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

pub struct XdsClient {
    cfg: XdsConfig,
    /// Where the last good resources are persisted (`--xds-cache`).
    cache: Option<std::path::PathBuf>,
    node: core::Node,
    clusters: Arc<ClusterManager>,
    listeners: Arc<ListenerManager>,
    static_clusters: HashSet<String>,
    static_listeners: HashSet<String>,
    state: Mutex<XdsState>,
    stats: Stats,
    /// Accepted resources changed since the cache file was last written.
    cache_dirty: std::sync::atomic::AtomicBool,
    cache_wake: tokio::sync::Notify,
    /// Set when a successor took over: the cache file (shared with it) is its to write.
    cache_frozen: std::sync::atomic::AtomicBool,
}

/// The cache file's first bytes (then length-delimited DeltaDiscoveryResponses, one per type,
/// each resource with its own version). Files without it are the older format.
const CACHE_MAGIC: &[u8] = b"plumb-xds-cache-2\n";

/// The cache file is rewritten at most this often (and once more at stop): a burst of EDS
/// updates costs one write, not one per update. A crash loses at most this much.
const CACHE_WRITE_INTERVAL: Duration = Duration::from_secs(1);

impl std::fmt::Debug for XdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsClient")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// The outcome of applying one response, for the ACK/NACK.
struct Applied {
    errors: Vec<String>,
}

/// CDS/LDS resources decoded by `decode_named`.
struct Named<M> {
    items: Vec<M>,
    /// Every name the response carried (also rejected ones: they are not removals).
    seen: HashSet<String>,
    undecodable: bool,
    errors: Vec<String>,
}

impl Applied {
    fn error_detail(&self) -> Option<RpcStatus> {
        (!self.errors.is_empty()).then(|| RpcStatus {
            code: INVALID_ARGUMENT,
            message: self.errors.join("\n"),
            details: Vec::new(),
        })
    }
}

fn decode<M: Message + Default>(any: &Any, want: &str) -> Result<M, String> {
    if any.type_url != want {
        return Err(format!(
            "unexpected resource type {} (expected {want})",
            any.type_url
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("cannot decode {want}: {e}"))
}

impl XdsClient {
    pub fn new(
        cfg: XdsConfig,
        snapshot: &config::Snapshot,
        clusters: Arc<ClusterManager>,
        listeners: Arc<ListenerManager>,
        store: &Store,
        cache: Option<std::path::PathBuf>,
    ) -> Arc<Self> {
        let n = &snapshot.node;
        let node = core::Node {
            id: n.id.clone(),
            cluster: n.cluster.clone(),
            locality: Some(core::Locality {
                region: n.locality.region.clone(),
                zone: n.locality.zone.clone(),
                sub_zone: n.locality.sub_zone.clone(),
            }),
            metadata: (!n.metadata.is_empty()).then(|| pb_struct(&n.metadata)),
            user_agent_name: "plumb".into(),
            user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentVersion(
                crate::VERSION.into(),
            )),
            ..Default::default()
        };
        let stats = Stats {
            connected_state: store.root_scope("control_plane").gauge("connected_state"),
            cds: TypeStats::new(&store.root_scope("cluster_manager.cds")),
            lds: TypeStats::new(&store.root_scope("listener_manager.lds")),
            eds: TypeStats::new(&store.root_scope("cluster_manager.eds")),
            init_fetch_timeout: store
                .root_scope("cluster_manager")
                .counter("init_fetch_timeout"),
        };
        Arc::new(Self {
            cfg,
            cache,
            cache_dirty: std::sync::atomic::AtomicBool::new(false),
            cache_wake: tokio::sync::Notify::new(),
            cache_frozen: std::sync::atomic::AtomicBool::new(false),
            node,
            clusters,
            listeners,
            static_clusters: snapshot.clusters.iter().map(|c| c.name.clone()).collect(),
            static_listeners: snapshot.listeners.iter().map(|l| l.name.clone()).collect(),
            state: Mutex::new(XdsState::default()),
            stats,
        })
    }

    pub fn state(&self) -> XdsState {
        self.lock().clone()
    }

    /// Stops writing the cache file: a successor agent owns it now.
    pub fn freeze_cache(&self) {
        self.cache_frozen
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a response of `type_url` has been accepted (cheap: no copy of the state).
    pub fn has_version(&self, type_url: &str) -> bool {
        self.lock().versions.contains_key(type_url)
    }

    pub fn config(&self) -> &XdsConfig {
        &self.cfg
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, XdsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn type_stats(&self, type_url: &str) -> &TypeStats {
        match type_url {
            CLUSTER_TYPE => &self.stats.cds,
            LISTENER_TYPE => &self.stats.lds,
            _ => &self.stats.eds,
        }
    }

    /// Records per-resource versions (delta) for the resources just applied; rejected ones
    /// keep the version of the copy still in force.
    fn set_resource_versions<'a>(
        &self,
        type_url: &str,
        versions: impl Iterator<Item = (&'a str, &'a str)>,
    ) {
        let mut st = self.lock();
        for (name, version) in versions {
            if st
                .rejected
                .contains_key(&(type_url.to_string(), name.to_string()))
            {
                continue;
            }
            let v = match type_url {
                CLUSTER_TYPE => st.clusters.get_mut(name).map(|e| &mut e.version),
                LISTENER_TYPE => st.listeners.get_mut(name).map(|e| &mut e.version),
                _ => st.endpoints.get_mut(name).map(|e| &mut e.version),
            };
            if let Some(v) = v {
                *v = version.to_string();
            }
        }
    }

    /// Forgets endpoints (and their cache copies and rejections) of services no cluster uses
    /// any more: unsubscribed, they would otherwise stay in memory and in `/config_dump`
    /// for as long as the agent runs, growing with every service that came and went.
    fn prune_endpoints(&self, keep: &BTreeSet<String>) {
        let mut st = self.lock();
        st.endpoints.retain(|name, _| keep.contains(name));
        if let Some(raw) = st.raw.get_mut(ENDPOINT_TYPE) {
            raw.retain(|name, _| keep.contains(name));
        }
        st.rejected
            .retain(|(t, name), _| t != ENDPOINT_TYPE || keep.contains(name));
        drop(st);
        if self.cache.is_some() {
            self.cache_dirty
                .store(true, std::sync::atomic::Ordering::Release);
            self.cache_wake.notify_one();
        }
    }

    /// EDS names to subscribe to: the service names of every EDS cluster.
    fn eds_names(&self) -> BTreeSet<String> {
        self.clusters
            .all()
            .iter()
            .filter(|c| c.config.discovery == DiscoveryType::Eds)
            .map(|c| {
                c.config
                    .eds_service_name
                    .clone()
                    .unwrap_or_else(|| c.config.name.clone())
            })
            .collect()
    }

    fn record(&self, type_url: &str, version: &str, applied: &Applied) {
        let s = self.type_stats(type_url);
        if applied.errors.is_empty() {
            s.update_success.inc();
            s.version.set(version_hash(version));
            let mut st = self.lock();
            st.versions
                .insert(type_url.to_string(), version.to_string());
        } else {
            s.update_rejected.inc();
            let msg = applied.errors.join("; ");
            tracing::warn!(type_url, version, "rejected xDS update (NACK): {msg}");
            self.lock().last_nack = Some(format!("{type_url} version {version}: {msg}"));
        }
    }

    fn reject(
        &self,
        type_url: &str,
        name: &str,
        version: &str,
        details: String,
        errors: &mut Vec<String>,
    ) {
        self.lock().rejected.insert(
            (type_url.to_string(), name.to_string()),
            Rejected {
                details: details.clone(),
                version: version.to_string(),
                at: SystemTime::now(),
            },
        );
        errors.push(details);
    }

    /// Records an accepted resource: any earlier rejection of it is over, and it is what
    /// `/config_dump` shows.
    fn accepted<T>(
        &self,
        type_url: &str,
        name: &str,
        version: &str,
        value: Arc<T>,
        map: impl FnOnce(&mut XdsState) -> &mut BTreeMap<String, Entry<T>>,
    ) {
        let mut st = self.lock();
        st.rejected
            .remove(&(type_url.to_string(), name.to_string()));
        map(&mut st).insert(
            name.to_string(),
            Entry {
                value,
                version: version.to_string(),
                last_updated: SystemTime::now(),
            },
        );
    }

    /// Decodes the resources of one CDS/LDS response. Undecodable ones, and ones named like a
    /// static resource, are rejected here; what is left is for the caller to validate.
    fn decode_named<M: Message + Default>(
        &self,
        type_url: &str,
        kind: &str,
        version: &str,
        resources: &[(Option<String>, Any)],
        statics: &HashSet<String>,
        name_of: impl Fn(&M) -> &str,
    ) -> Named<M> {
        let mut named = Named {
            items: Vec::new(),
            seen: HashSet::new(),
            undecodable: false,
            errors: Vec::new(),
        };
        for (hint, any) in resources {
            let m = match decode::<M>(any, type_url) {
                Ok(m) => m,
                Err(e) => {
                    // No name: nothing may be removed by this response then.
                    named.undecodable = true;
                    let hint = hint.as_deref().unwrap_or("?");
                    self.reject(type_url, hint, version, e, &mut named.errors);
                    continue;
                }
            };
            let name = name_of(&m).to_string();
            named.seen.insert(name.clone());
            if statics.contains(&name) {
                let msg = format!("{kind} \"{name}\": a static {kind} of that name exists");
                self.reject(type_url, &name, version, msg, &mut named.errors);
                continue;
            }
            named.items.push(m);
        }
        named
    }

    /// Names a response removes: those listed as removed, plus — for a complete (SotW)
    /// response that decoded fully — every dynamic one it did not name. Never static ones.
    fn removed_names(
        &self,
        removed: &[String],
        complete: bool,
        named: &Named<impl Sized>,
        statics: &HashSet<String>,
        known: impl Fn(&XdsState) -> Vec<String>,
    ) -> Vec<String> {
        let mut gone: Vec<String> = removed.to_vec();
        if complete && !named.undecodable {
            let st = self.lock();
            gone.extend(
                known(&st)
                    .into_iter()
                    .filter(|n| !named.seen.contains(n) && !st.present.contains(n)),
            );
        }
        gone.retain(|n| !statics.contains(n));
        gone
    }

    /// Clusters: apply each valid one; with `complete`, remove dynamic clusters not named.
    fn apply_clusters(
        &self,
        version: &str,
        resources: &[(Option<String>, Any)],
        complete: bool,
        removed: &[String],
    ) -> Applied {
        let mut named = self.decode_named::<pbc::Cluster>(
            CLUSTER_TYPE,
            "cluster",
            version,
            resources,
            &self.static_clusters,
            |c| &c.name,
        );
        let mut errors = std::mem::take(&mut named.errors);
        for c in std::mem::take(&mut named.items) {
            match cluster_from_proto(&c) {
                Err(diags) => {
                    let msg = describe(&format!("cluster \"{}\"", c.name), &diags);
                    self.reject(CLUSTER_TYPE, &c.name, version, msg, &mut errors);
                }
                Ok((model, warnings)) => {
                    for w in warnings {
                        tracing::warn!(cluster = %c.name, field = %w.path, "{}", w.message);
                    }
                    let model = Arc::new(model);
                    let eds = model.discovery == DiscoveryType::Eds;
                    let outcome = self.clusters.upsert(model.clone());
                    let needs_endpoints = eds
                        && self
                            .clusters
                            .get(&model.name)
                            .is_some_and(|c| c.is_warming())
                        && outcome != crate::upstream::Upsert::Unchanged;
                    if needs_endpoints {
                        // New, or its endpoint source changed: use what we already have for
                        // its service name, else warm until EDS delivers.
                        let service = model
                            .eds_service_name
                            .clone()
                            .unwrap_or_else(|| model.name.clone());
                        let known = self.lock().endpoints.get(&service).map(|e| e.value.clone());
                        if let Some(eps) = known {
                            self.clusters.set_endpoints(&model.name, (*eps).clone());
                        } else {
                            self.start_warming_timer(&model.name);
                        }
                    }
                    self.accepted(CLUSTER_TYPE, &c.name, version, model, |st| &mut st.clusters);
                }
            }
        }
        let gone = self.removed_names(removed, complete, &named, &self.static_clusters, |st| {
            st.clusters.keys().cloned().collect()
        });
        for name in gone {
            self.clusters.remove(&name);
            self.lock().clusters.remove(&name);
        }
        Applied { errors }
    }

    fn start_warming_timer(&self, name: &str) {
        let timeout = self.cfg.initial_fetch_timeout;
        if timeout.is_zero() {
            return;
        }
        let (cm, name, counter) = (
            self.clusters.clone(),
            name.to_string(),
            self.stats.init_fetch_timeout.clone(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if cm.get(&name).is_some_and(|c| c.is_warming()) {
                tracing::warn!(cluster = %name, "no endpoints within initial_fetch_timeout; using the cluster without them");
                counter.inc();
                cm.end_warming(&name);
            }
        });
    }

    fn apply_endpoints(
        &self,
        version: &str,
        resources: &[(Option<String>, Any)],
        removed: &[String],
    ) -> Applied {
        let mut errors = Vec::new();
        // Endpoint sets of services no cluster uses (a response in flight when the
        // subscription shrank) are not kept: nothing would ever prune them.
        let subscribed = self.eds_names();
        for (hint, any) in resources {
            let cla = match decode::<pbe::ClusterLoadAssignment>(any, ENDPOINT_TYPE) {
                Ok(c) => c,
                Err(e) => {
                    self.reject(
                        ENDPOINT_TYPE,
                        hint.as_deref().unwrap_or("?"),
                        version,
                        e,
                        &mut errors,
                    );
                    continue;
                }
            };
            if !subscribed.contains(&cla.cluster_name) {
                tracing::debug!(service = %cla.cluster_name, "ignoring endpoints of a service no cluster uses");
                continue;
            }
            match endpoints_from_proto(&cla) {
                Err(diags) => {
                    let msg = describe(&format!("endpoints \"{}\"", cla.cluster_name), &diags);
                    self.reject(ENDPOINT_TYPE, &cla.cluster_name, version, msg, &mut errors);
                }
                Ok((localities, _)) => {
                    for c in self.clusters.all() {
                        let service = c.config.eds_service_name.as_deref().unwrap_or(c.name());
                        if c.config.discovery == DiscoveryType::Eds && service == cla.cluster_name {
                            self.clusters.set_endpoints(c.name(), localities.clone());
                            c.stats.update_success.inc();
                        }
                    }
                    let value = Arc::new(localities);
                    self.accepted(ENDPOINT_TYPE, &cla.cluster_name, version, value, |st| {
                        &mut st.endpoints
                    });
                }
            }
        }
        for name in removed {
            // An EDS resource removed: its clusters have no endpoints any more.
            for c in self.clusters.all() {
                if c.config.discovery == DiscoveryType::Eds
                    && c.config.eds_service_name.as_deref().unwrap_or(c.name()) == name
                {
                    self.clusters.set_endpoints(c.name(), Vec::new());
                }
            }
            self.lock().endpoints.remove(name);
        }
        Applied { errors }
    }

    fn apply_listeners(
        &self,
        version: &str,
        resources: &[(Option<String>, Any)],
        complete: bool,
        removed: &[String],
    ) -> Applied {
        let mut named = self.decode_named::<pbl::Listener>(
            LISTENER_TYPE,
            "listener",
            version,
            resources,
            &self.static_listeners,
            |l| &l.name,
        );
        let mut errors = std::mem::take(&mut named.errors);
        for l in std::mem::take(&mut named.items) {
            let model = match listener_from_proto(&l) {
                Err(diags) => {
                    let msg = describe(&format!("listener \"{}\"", l.name), &diags);
                    self.reject(LISTENER_TYPE, &l.name, version, msg, &mut errors);
                    continue;
                }
                Ok((m, _)) => Arc::new(m),
            };
            match self.listeners.upsert(model.clone()) {
                Err(e) => self.reject(LISTENER_TYPE, &l.name, version, e.to_string(), &mut errors),
                Ok(_) => {
                    self.accepted(LISTENER_TYPE, &l.name, version, model, |st| {
                        &mut st.listeners
                    });
                }
            }
        }
        let gone = self.removed_names(removed, complete, &named, &self.static_listeners, |st| {
            st.listeners.keys().cloned().collect()
        });
        for name in gone {
            self.listeners.remove(&name);
            self.lock().listeners.remove(&name);
        }
        Applied { errors }
    }

    fn apply(
        &self,
        type_url: &str,
        version: &str,
        resources: &[(Option<String>, Any)],
        complete: bool,
        removed: &[String],
    ) -> Applied {
        self.type_stats(type_url).update_attempt.inc();
        // State of the world resends every resource: skip the ones whose bytes are what was
        // last applied (a 1000-cluster CDS response with one change translates one cluster).
        // They still count as present, so a full response removes nothing it repeats.
        let unchanged: HashSet<usize> = {
            let st = self.lock();
            let known: HashSet<&[u8]> = st
                .raw
                .get(type_url)
                .map(|m| m.values().map(|a| a.value.as_slice()).collect())
                .unwrap_or_default();
            resources
                .iter()
                .enumerate()
                .filter(|(_, (_, any))| known.contains(any.value.as_slice()))
                .map(|(i, _)| i)
                .collect()
        };
        let owned: Vec<(Option<String>, Any)>;
        let resources: &[(Option<String>, Any)] = if unchanged.is_empty() {
            resources
        } else {
            let present: HashSet<String> = resources
                .iter()
                .enumerate()
                .filter(|(i, _)| unchanged.contains(i))
                .filter_map(|(_, (_, a))| resource_name(type_url, a))
                .collect();
            self.lock().present = present;
            owned = resources
                .iter()
                .enumerate()
                .filter(|(i, _)| !unchanged.contains(i))
                .map(|(_, r)| r.clone())
                .collect();
            &owned
        };
        let applied = match type_url {
            CLUSTER_TYPE => self.apply_clusters(version, resources, complete, removed),
            LISTENER_TYPE => self.apply_listeners(version, resources, complete, removed),
            ENDPOINT_TYPE => self.apply_endpoints(version, resources, removed),
            other => Applied {
                errors: vec![format!("unsupported resource type {other}")],
            },
        };
        self.record(type_url, version, &applied);
        self.remember_raw(type_url, resources, complete, removed);
        // Translating a large update allocates transient trees (MBs for 10k endpoints);
        // hand the freed pages back instead of keeping them in this thread's arena.
        let bytes: usize = resources.iter().map(|(_, a)| a.value.len()).sum();
        if bytes > 256 * 1024 {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: malloc_trim has no preconditions.
            unsafe {
                libc::malloc_trim(0);
            }
        }
        applied
    }

    /// Keeps the accepted resources as received and rewrites the on-disk cache.
    fn remember_raw(
        &self,
        type_url: &str,
        resources: &[(Option<String>, Any)],
        complete: bool,
        removed: &[String],
    ) {
        let mut st = self.lock();
        let accepted: HashSet<String> = match type_url {
            CLUSTER_TYPE => st.clusters.keys().cloned().collect(),
            LISTENER_TYPE => st.listeners.keys().cloned().collect(),
            _ => st.endpoints.keys().cloned().collect(),
        };
        let present = std::mem::take(&mut st.present);
        let raw = st.raw.entry(type_url.to_string()).or_default();
        if complete {
            // Keep what is still applied: unchanged resources, and the previous copy of any
            // whose update was rejected (it keeps serving, so it must survive a restart too).
            raw.retain(|name, _| present.contains(name) || accepted.contains(name));
        }
        for name in removed {
            raw.remove(name);
        }
        for (_, any) in resources {
            let name = match type_url {
                CLUSTER_TYPE => pbc::Cluster::decode(any.value.as_slice())
                    .map(|c| c.name)
                    .ok(),
                LISTENER_TYPE => pbl::Listener::decode(any.value.as_slice())
                    .map(|l| l.name)
                    .ok(),
                _ => pbe::ClusterLoadAssignment::decode(any.value.as_slice())
                    .map(|e| e.cluster_name)
                    .ok(),
            };
            // Only what was applied: a rejected update leaves the previous copy in place.
            if let Some(name) = name {
                let rejected = st
                    .rejected
                    .contains_key(&(type_url.to_string(), name.clone()));
                if accepted.contains(&name) && !rejected {
                    st.raw
                        .entry(type_url.to_string())
                        .or_default()
                        .insert(name, any.clone());
                }
            }
        }
        drop(st);
        if self.cache.is_some() {
            self.cache_dirty
                .store(true, std::sync::atomic::Ordering::Release);
            self.cache_wake.notify_one();
        }
    }

    /// Writes the accepted resources to the cache file (atomically: a temporary file, then a
    /// rename), if they changed since the last write.
    fn write_cache(&self) {
        let Some(path) = &self.cache else {
            return;
        };
        if self.cache_frozen.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        if !self
            .cache_dirty
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let st = self.lock();
        // Each resource with its own version, so a delta reconnect after a restart from the
        // cache still tells the server what it has.
        let version_of = |t: &str, name: &str| -> Option<String> {
            match t {
                CLUSTER_TYPE => st.clusters.get(name).map(|e| e.version.clone()),
                LISTENER_TYPE => st.listeners.get(name).map(|e| e.version.clone()),
                _ => st.endpoints.get(name).map(|e| e.version.clone()),
            }
        };
        let snapshot: Vec<DeltaDiscoveryResponse> = st
            .raw
            .iter()
            .map(|(t, m)| DeltaDiscoveryResponse {
                system_version_info: st.versions.get(t).cloned().unwrap_or_default(),
                resources: m
                    .iter()
                    .map(|(name, any)| Resource {
                        name: name.clone(),
                        version: version_of(t, name).unwrap_or_default(),
                        resource: Some(any.clone()),
                        ..Default::default()
                    })
                    .collect(),
                type_url: t.clone(),
                ..Default::default()
            })
            .collect();
        drop(st);
        let mut buf = CACHE_MAGIC.to_vec();
        for r in &snapshot {
            let _ = r.encode_length_delimited(&mut buf);
        }
        // A name of its own (two agents may share the path during a hand-over), on disk
        // before it replaces the old file.
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let written = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the xDS cache");
        }
    }

    /// Applies the resources saved by a previous run, so an agent restarted while the
    /// control plane is unreachable still serves. Returns whether anything was loaded.
    fn load_cache(&self) -> bool {
        let Some(path) = &self.cache else {
            return false;
        };
        let Ok(bytes) = std::fs::read(path) else {
            return false;
        };
        // (type, system version, [(name, resource version, resource)])
        type Cached = (String, String, Vec<(Option<String>, String, Any)>);
        let mut responses: Vec<Cached> = Vec::new();
        let corrupt = |e: prost::DecodeError| {
            tracing::warn!(path = %path.display(), error = %e, "ignoring a corrupt xDS cache");
            false
        };
        if let Some(mut buf) = bytes.strip_prefix(CACHE_MAGIC) {
            while !buf.is_empty() {
                match DeltaDiscoveryResponse::decode_length_delimited(&mut buf) {
                    Ok(r) => responses.push((
                        r.type_url,
                        r.system_version_info,
                        r.resources
                            .into_iter()
                            .filter_map(|x| Some((Some(x.name), x.version, x.resource?)))
                            .collect(),
                    )),
                    Err(e) => return corrupt(e),
                }
            }
        } else {
            // Written by an earlier version: no per-resource versions.
            let mut buf = bytes.as_slice();
            while !buf.is_empty() {
                match DiscoveryResponse::decode_length_delimited(&mut buf) {
                    Ok(r) => responses.push((
                        r.type_url,
                        r.version_info,
                        r.resources
                            .into_iter()
                            .map(|a| (None, String::new(), a))
                            .collect(),
                    )),
                    Err(e) => return corrupt(e),
                }
            }
        }
        // Clusters before endpoints before listeners, as on the wire.
        responses.sort_by_key(|(t, _, _)| match t.as_str() {
            CLUSTER_TYPE => 0,
            ENDPOINT_TYPE => 1,
            _ => 2,
        });
        for (type_url, version, cached) in &responses {
            let resources: Vec<(Option<String>, Any)> = cached
                .iter()
                .map(|(name, _, a)| (name.clone(), a.clone()))
                .collect();
            let complete = type_url != ENDPOINT_TYPE;
            let applied = self.apply(type_url, version, &resources, complete, &[]);
            if !applied.errors.is_empty() {
                tracing::warn!(type_url = %type_url, "cached resources partly rejected: {}", applied.errors.join("; "));
            }
            self.set_resource_versions(
                type_url,
                cached
                    .iter()
                    .filter(|(_, v, _)| !v.is_empty())
                    .filter_map(|(n, v, _)| Some((n.as_deref()?, v.as_str()))),
            );
        }
        self.lock().loaded_from_cache = true;
        tracing::info!(path = %path.display(), types = responses.len(), "serving the cached xDS configuration until the control plane answers");
        true
    }

    /// Runs until `stop` resolves: connect, stream, reconnect with backoff.
    pub async fn run(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        let writer = self.cache.is_some().then(|| {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    me.cache_wake.notified().await;
                    me.write_cache();
                    tokio::time::sleep(CACHE_WRITE_INTERVAL).await;
                }
            })
        });
        self.clone().serve(stop).await;
        if let Some(w) = writer {
            w.abort();
        }
        self.write_cache();
    }

    async fn serve(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        self.load_cache();
        let mut attempt: u32 = 0;
        loop {
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                r = self.clone().session() => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            self.stats.connected_state.set(0);
            self.lock().connected = false;
            // Backoff restarts only after a stream that stayed up a while: a control plane
            // that answers once and then breaks must not be hammered.
            let healthy = started.elapsed() > Duration::from_secs(30);
            match result {
                Ok(true) => attempt = 0,
                Ok(false) => {}
                Err(e) => {
                    if healthy {
                        attempt = 0;
                    }
                    for t in [&self.stats.cds, &self.stats.lds] {
                        t.update_failure.inc();
                    }
                    tracing::warn!(error = %e, "xDS stream failed; serving the last good configuration");
                }
            }
            // Jittered exponential backoff: 50–150 % of min(max, base·2^attempt).
            let exp = BACKOFF_BASE
                .saturating_mul(1u32 << attempt.min(16))
                .min(BACKOFF_MAX);
            let delay = exp.mul_f64(0.5 + fastrand::f64());
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// One stream to the control plane. `Ok(true)`: it delivered at least one response.
    async fn session(self: Arc<Self>) -> Result<bool, String> {
        let cluster = self
            .clusters
            .get(&self.cfg.cluster)
            .ok_or_else(|| format!("control plane cluster \"{}\" is missing", self.cfg.cluster))?;
        let host = cluster.pick(&LbContext::default()).map_err(|_| {
            format!(
                "control plane cluster \"{}\" has no usable host",
                self.cfg.cluster
            )
        })?;
        let scheme = if cluster.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", host.address))
                .map_err(|e| e.to_string())?
                .connect_timeout(cluster.config.connect_timeout)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true);
        if let Some(tls) = &cluster.config.tls {
            // Read at each connect: rotated certificate files need no restart.
            let ca = tls
                .trusted_ca
                .read()
                .map_err(|e| format!("read trusted_ca: {e}"))?;
            let mut cfg = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .domain_name(tls.sni.clone());
            if let Some((chain, key)) = &tls.client_cert {
                let chain = chain
                    .read()
                    .map_err(|e| format!("read certificate_chain: {e}"))?;
                let key = key.read().map_err(|e| format!("read private_key: {e}"))?;
                cfg = cfg.identity(tonic::transport::Identity::from_pem(chain, key));
            }
            endpoint = endpoint
                .tls_config(cfg)
                .map_err(|e| format!("TLS configuration: {e}"))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect {}: {e}", host.address))?;
        let client =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
        tracing::info!(control_plane = %host.address, api = ?self.cfg.api, "connected to the control plane");
        match self.cfg.api {
            XdsApi::Sotw => self.sotw(client).await,
            XdsApi::Delta => self.delta(client).await,
        }
    }

    fn connected(&self) {
        self.stats.connected_state.set(1);
        self.lock().connected = true;
    }

    async fn sotw(
        self: Arc<Self>,
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> Result<bool, String> {
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
        let mut first = true;
        let mut request = |type_url: &str,
                           version: String,
                           names: Vec<String>,
                           nonce: String,
                           error: Option<RpcStatus>| {
            let r = DiscoveryRequest {
                version_info: version,
                node: first.then(|| self.node.clone()),
                resource_names: names,
                type_url: type_url.to_string(),
                response_nonce: nonce,
                error_detail: error,
                ..Default::default()
            };
            first = false;
            r
        };
        let versions = self.lock().versions.clone();
        let v = |t: &str| versions.get(t).cloned().unwrap_or_default();
        // Envoy's order: clusters first (their EDS follows), then listeners.
        if self.cfg.cds {
            let _ = tx
                .send(request(
                    CLUSTER_TYPE,
                    v(CLUSTER_TYPE),
                    vec![],
                    String::new(),
                    None,
                ))
                .await;
        }
        let mut eds_names = self.eds_names();
        // What a previous stream left for services no cluster uses any more.
        self.prune_endpoints(&eds_names);
        if !eds_names.is_empty() {
            let _ = tx
                .send(request(
                    ENDPOINT_TYPE,
                    v(ENDPOINT_TYPE),
                    eds_names.iter().cloned().collect(),
                    String::new(),
                    None,
                ))
                .await;
        }
        if self.cfg.lds {
            let _ = tx
                .send(request(
                    LISTENER_TYPE,
                    v(LISTENER_TYPE),
                    vec![],
                    String::new(),
                    None,
                ))
                .await;
        }
        let mut stream = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("open ADS stream: {e}"))?
            .into_inner();
        self.connected();
        let mut got_any = false;
        let mut nonces: HashMap<String, String> = HashMap::new();
        loop {
            let resp: DiscoveryResponse = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(got_any),
                Err(e) => return Err(format!("ADS stream: {e}")),
            };
            got_any = true;
            let t = resp.type_url.clone();
            let resources: Vec<(Option<String>, Any)> =
                resp.resources.iter().map(|a| (None, a.clone())).collect();
            let complete = t == CLUSTER_TYPE || t == LISTENER_TYPE;
            let applied = self.apply(&t, &resp.version_info, &resources, complete, &[]);
            nonces.insert(t.clone(), resp.nonce.clone());
            let version = if applied.errors.is_empty() {
                resp.version_info.clone()
            } else {
                self.lock().versions.get(&t).cloned().unwrap_or_default()
            };
            let names = if t == ENDPOINT_TYPE {
                eds_names.iter().cloned().collect()
            } else {
                vec![]
            };
            let ack = request(
                &t,
                version,
                names,
                resp.nonce.clone(),
                applied.error_detail(),
            );
            if tx.send(ack).await.is_err() {
                return Ok(true);
            }
            // New or removed EDS clusters change the EDS subscription.
            let now = self.eds_names();
            if now != eds_names {
                self.prune_endpoints(&now);
                eds_names = now;
                let version = self
                    .lock()
                    .versions
                    .get(ENDPOINT_TYPE)
                    .cloned()
                    .unwrap_or_default();
                let nonce = nonces.get(ENDPOINT_TYPE).cloned().unwrap_or_default();
                let _ = tx
                    .send(request(
                        ENDPOINT_TYPE,
                        version,
                        eds_names.iter().cloned().collect(),
                        nonce,
                        None,
                    ))
                    .await;
            }
        }
    }

    async fn delta(
        self: Arc<Self>,
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> Result<bool, String> {
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
        let mut first = true;
        let mut request = |type_url: &str| {
            let r = DeltaDiscoveryRequest {
                node: first.then(|| self.node.clone()),
                type_url: type_url.to_string(),
                ..Default::default()
            };
            first = false;
            r
        };
        // On reconnect, tell the server what we have so it sends only what changed.
        let (have_clusters, have_listeners, have_endpoints) = {
            let st = self.lock();
            let versions =
                |m: &BTreeMap<String, String>| m.clone().into_iter().collect::<HashMap<_, _>>();
            (
                versions(
                    &st.clusters
                        .iter()
                        .map(|(k, e)| (k.clone(), e.version.clone()))
                        .collect(),
                ),
                versions(
                    &st.listeners
                        .iter()
                        .map(|(k, e)| (k.clone(), e.version.clone()))
                        .collect(),
                ),
                versions(
                    &st.endpoints
                        .iter()
                        .map(|(k, e)| (k.clone(), e.version.clone()))
                        .collect(),
                ),
            )
        };
        if self.cfg.cds {
            let mut r = request(CLUSTER_TYPE);
            r.resource_names_subscribe = vec!["*".into()];
            r.initial_resource_versions = have_clusters;
            let _ = tx.send(r).await;
        }
        let mut eds_names = self.eds_names();
        // What a previous stream left for services no cluster uses any more.
        self.prune_endpoints(&eds_names);
        if !eds_names.is_empty() {
            let mut r = request(ENDPOINT_TYPE);
            r.resource_names_subscribe = eds_names.iter().cloned().collect();
            r.initial_resource_versions = have_endpoints;
            let _ = tx.send(r).await;
        }
        if self.cfg.lds {
            let mut r = request(LISTENER_TYPE);
            r.resource_names_subscribe = vec!["*".into()];
            r.initial_resource_versions = have_listeners;
            let _ = tx.send(r).await;
        }
        let mut stream = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("open delta ADS stream: {e}"))?
            .into_inner();
        self.connected();
        let mut got_any = false;
        loop {
            let resp: DeltaDiscoveryResponse = match stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(got_any),
                Err(e) => return Err(format!("delta ADS stream: {e}")),
            };
            got_any = true;
            let t = resp.type_url.clone();
            let resources: Vec<(Option<String>, Any)> = resp
                .resources
                .iter()
                .filter_map(|r| r.resource.clone().map(|a| (Some(r.name.clone()), a)))
                .collect();
            let version = if resp.system_version_info.is_empty() {
                resp.nonce.clone()
            } else {
                resp.system_version_info.clone()
            };
            let applied = self.apply(&t, &version, &resources, false, &resp.removed_resources);
            // Delta resources carry their own versions: keep them, so a reconnect's
            // initial_resource_versions lets the server skip what did not change.
            self.set_resource_versions(
                &t,
                resp.resources
                    .iter()
                    .filter(|r| !r.version.is_empty())
                    .map(|r| (r.name.as_str(), r.version.as_str())),
            );
            let mut ack = request(&t);
            ack.response_nonce = resp.nonce.clone();
            ack.error_detail = applied.error_detail();
            if tx.send(ack).await.is_err() {
                return Ok(true);
            }
            let now = self.eds_names();
            if now != eds_names {
                self.prune_endpoints(&now);
                let mut r = request(ENDPOINT_TYPE);
                r.resource_names_subscribe = now.difference(&eds_names).cloned().collect();
                r.resource_names_unsubscribe = eds_names.difference(&now).cloned().collect();
                eds_names = now;
                let _ = tx.send(r).await;
            }
        }
    }
}

fn resource_name(type_url: &str, any: &Any) -> Option<String> {
    match type_url {
        CLUSTER_TYPE => pbc::Cluster::decode(any.value.as_slice())
            .map(|c| c.name)
            .ok(),
        LISTENER_TYPE => pbl::Listener::decode(any.value.as_slice())
            .map(|l| l.name)
            .ok(),
        _ => pbe::ClusterLoadAssignment::decode(any.value.as_slice())
            .map(|e| e.cluster_name)
            .ok(),
    }
}

/// Starts the client on its own thread and runtime; it stops when `stop` turns true.
pub fn spawn(
    client: Arc<XdsClient>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("plumb-xds".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the xDS runtime");
                    return;
                }
            };
            rt.block_on(client.run(stop));
        })
}

/// JSON → google.protobuf.Struct (node metadata).
fn pb_struct(
    m: &serde_json::Map<String, serde_json::Value>,
) -> envoy_types::pb::google::protobuf::Struct {
    envoy_types::pb::google::protobuf::Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), pb_value(v))).collect(),
    }
}

fn pb_value(v: &serde_json::Value) -> envoy_types::pb::google::protobuf::Value {
    use envoy_types::pb::google::protobuf::{value::Kind, ListValue};
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(pb_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(pb_struct(o)),
    };
    envoy_types::pb::google::protobuf::Value { kind: Some(kind) }
}
