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

mod cache;
mod dump;
mod log_limit;
mod rate_limit;
mod rejected;
mod resources;
mod routes;
mod secrets;
mod session;

pub use dump::rfc3339;

use crate::config::{self, XdsConfig};
use crate::init::{InitManager, InitTarget};
use crate::listener::ListenerManager;
use crate::stats::{Counter, Gauge, Scope, Store};
use crate::upstream::ClusterManager;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use resources::ResourceType;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// gRPC INVALID_ARGUMENT, the code Envoy puts in a NACK's error_detail.
const INVALID_ARGUMENT: i32 = 3;

/// The most resources (plus removals) one xDS response may carry. A response under gRPC's
/// 64 MiB message cap could otherwise hold millions of tiny resources, each translated and
/// kept; 100,000 is five times the largest configs measured (`cargo xtask bench config`).
pub const MAX_RESOURCES_PER_RESPONSE: usize = 100_000;

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
    pub routes: BTreeMap<String, Entry<config::http::RouteConfiguration>>,
    pub secrets: BTreeMap<String, Entry<config::tls::SecretKind>>,
    /// LDS listeners held back until the route configurations they name arrive.
    pub warming_listeners: BTreeMap<String, routes::Warming>,
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
    /// Per type, the bytes of resources rejected and still in error → (name, message): an
    /// identical re-send is rejected again without being translated.
    rejected_raw: BTreeMap<String, HashMap<Vec<u8>, (String, String)>>,
}

#[derive(Debug)]
struct TypeStats {
    update_attempt: Arc<Counter>,
    update_success: Arc<Counter>,
    update_rejected: Arc<Counter>,
    /// Resources rejected again, unchanged, without re-validation (Plumb's).
    update_rejected_repeat: Arc<Counter>,
    update_failure: Arc<Counter>,
    version: Arc<Gauge>,
}

impl TypeStats {
    fn new(s: &Scope) -> Self {
        Self {
            update_attempt: s.counter("update_attempt"),
            update_success: s.counter("update_success"),
            update_rejected: s.counter("update_rejected"),
            update_rejected_repeat: s.counter("update_rejected_repeat"),
            update_failure: s.counter("update_failure"),
            version: s.gauge("version"),
        }
    }
}

#[derive(Debug)]
struct Stats {
    connected_state: Arc<Gauge>,
    rate_limit_enforced: Arc<Counter>,
    pending_requests: Arc<Gauge>,
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
    /// The SDS secrets static listeners and clusters wait for at start, with their initial
    /// fetch timeouts (timers start with the client).
    secret_waits: Mutex<Vec<(String, Duration)>>,
    /// Where the last good resources are persisted (`--xds-cache`).
    cache: Option<std::path::PathBuf>,
    node: core::Node,
    clusters: Arc<ClusterManager>,
    listeners: Arc<ListenerManager>,
    static_clusters: HashSet<String>,
    static_listeners: HashSet<String>,
    state: Mutex<XdsState>,
    stats: Stats,
    /// One handler per resource type, in the order they are requested.
    types: Vec<Arc<dyn ResourceType>>,
    /// Readiness targets still pending, by key: the first accepted response of each wildcard
    /// type (CDS, LDS, keyed by type URL), and each EDS cluster of the initial configuration
    /// until it has endpoints or its initial_fetch_timeout passes (`cluster:<name>`), as
    /// Envoy's init manager waits for cluster warming: a server that said ready with a cluster
    /// still empty would close connections.
    init_targets: Arc<Mutex<BTreeMap<String, InitTarget>>>,
    init: Arc<InitManager>,
    /// Accepted resources changed since the cache file was last written.
    cache_dirty: std::sync::atomic::AtomicBool,
    cache_wake: tokio::sync::Notify,
    /// NACK warnings, rate limited per resource type.
    nack_log: Mutex<std::collections::HashMap<&'static str, log_limit::LogLimit>>,
    /// The current stream delivered at least one response (for the backoff decision).
    delivered: std::sync::atomic::AtomicBool,
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
        init: &Arc<InitManager>,
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
            rate_limit_enforced: store
                .root_scope("control_plane")
                .counter("rate_limit_enforced"),
            pending_requests: store.root_scope("control_plane").gauge("pending_requests"),
            init_fetch_timeout: store
                .root_scope("cluster_manager")
                .counter("init_fetch_timeout"),
        };
        let types = resources::registry(store);
        let mut init_targets = BTreeMap::new();
        // Like Envoy's init manager: the server is ready once the first CDS and LDS
        // responses are applied (or the initial fetch timeout passes).
        for (on, t) in [
            (cfg.cds, crate::config::type_urls::CLUSTER),
            (cfg.lds, crate::config::type_urls::LISTENER),
        ] {
            if on {
                init_targets.insert(t.to_string(), init.register(t));
            }
        }
        // Static listeners whose routes come over RDS wait for them too.
        for l in &snapshot.listeners {
            for (name, _) in routes::rds_names(l) {
                let key = routes::route_init_key(&name);
                let target = init.register(&key);
                init_targets.entry(key).or_insert(target);
            }
        }
        // And static listeners and clusters for their SDS secrets (at most their initial
        // fetch timeouts: `secret_timers` starts them).
        let mut secret_waits: Vec<(String, Duration)> = Vec::new();
        for (name, t) in snapshot
            .listeners
            .iter()
            .flat_map(|l| secrets::listener_sds_names(l))
            .chain(
                snapshot
                    .clusters
                    .iter()
                    .flat_map(|c| secrets::cluster_sds_names(c)),
            )
        {
            let key = secrets::secret_init_key(&name);
            if let std::collections::btree_map::Entry::Vacant(e) = init_targets.entry(key) {
                let target = init.register(e.key());
                e.insert(target);
                secret_waits.push((name, t));
            }
        }
        Arc::new(Self {
            types,
            secret_waits: Mutex::new(secret_waits),
            init_targets: Arc::new(Mutex::new(init_targets)),
            init: init.clone(),
            cfg,
            cache,
            cache_dirty: std::sync::atomic::AtomicBool::new(false),
            cache_wake: tokio::sync::Notify::new(),
            cache_frozen: std::sync::atomic::AtomicBool::new(false),
            delivered: std::sync::atomic::AtomicBool::new(false),
            nack_log: Mutex::new(Default::default()),
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

    fn handler(&self, type_url: &str) -> Option<&Arc<dyn ResourceType>> {
        self.types.iter().find(|h| h.type_url() == type_url)
    }

    /// Records per-resource versions (delta) for the resources just applied; rejected ones
    /// keep the version of the copy still in force.
    fn set_resource_versions<'a>(
        &self,
        type_url: &str,
        versions: impl Iterator<Item = (&'a str, &'a str)>,
    ) {
        let Some(h) = self.handler(type_url) else {
            return;
        };
        let mut st = self.lock();
        for (name, version) in versions {
            if st
                .rejected
                .contains_key(&(type_url.to_string(), name.to_string()))
            {
                continue;
            }
            if let Some(v) = h.accepted(&mut st).version_mut(name) {
                *v = version.to_string();
            }
        }
    }

    /// Forgets resources of a named-interest type (and their cache copies and rejections)
    /// that nothing refers to any more: unsubscribed, they would otherwise stay in memory
    /// and in `/config_dump` for as long as the agent runs, growing with every service that
    /// came and went.
    fn prune(&self, h: &dyn ResourceType, keep: &BTreeSet<String>) {
        let t = h.type_url();
        let mut st = self.lock();
        let map = h.accepted(&mut st);
        let mut pruned = false;
        for name in map.names() {
            if !keep.contains(&name) {
                map.forget(&name);
                pruned = true;
            }
        }
        if let Some(raw) = st.raw.get_mut(t) {
            let before = raw.len();
            raw.retain(|name, _| keep.contains(name));
            pruned |= raw.len() != before;
        }
        st.rejected
            .retain(|(rt, name), _| rt != t || keep.contains(name));
        drop(st);
        if pruned {
            self.mark_cache_dirty();
        }
    }

    fn mark_cache_dirty(&self) {
        if self.cache.is_some() {
            self.cache_dirty
                .store(true, std::sync::atomic::Ordering::Release);
            self.cache_wake.notify_one();
        }
    }

    fn record(&self, h: &dyn ResourceType, version: &str, applied: &Applied) {
        let (s, type_url) = (h.stats(), h.type_url());
        if applied.errors.is_empty() {
            s.update_success.inc();
            s.version.set(version_hash(version));
            let mut st = self.lock();
            st.versions
                .insert(type_url.to_string(), version.to_string());
            drop(st);
        } else {
            s.update_rejected.inc();
            let msg = applied.errors.join("; ");
            let allowed = self
                .nack_log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(type_url)
                .or_default()
                .allow(tokio::time::Instant::now());
            if let Some(suppressed) = allowed {
                tracing::warn!(
                    type_url,
                    version,
                    suppressed,
                    "rejected xDS update (NACK): {msg}"
                );
            }
            self.lock().last_nack = Some(format!("{type_url} version {version}: {msg}"));
        }
        // As in Envoy, a first response counts for readiness whether or not it was accepted:
        // a rejected one must not hold the server back forever.
        self.init_done(type_url);
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
        name_of: impl Fn(&M) -> String,
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
            let name = name_of(&m);
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

    /// Validates and applies one response of `type_url`; a response with more resources than
    /// [`MAX_RESOURCES_PER_RESPONSE`] is refused whole.
    fn apply(
        self: &Arc<Self>,
        type_url: &str,
        version: &str,
        resources: &[(Option<String>, Any)],
        complete: bool,
        removed: &[String],
    ) -> Applied {
        let Some(h) = self.handler(type_url).cloned() else {
            return Applied {
                errors: vec![format!("unsupported resource type {type_url}")],
            };
        };
        h.stats().update_attempt.inc();
        if resources.len() + removed.len() > MAX_RESOURCES_PER_RESPONSE {
            let applied = Applied {
                errors: vec![format!(
                    "the response carries {} resources, more than the limit of {MAX_RESOURCES_PER_RESPONSE} per response; nothing of it was applied",
                    resources.len() + removed.len()
                )],
            };
            self.record(h.as_ref(), version, &applied);
            return applied;
        }
        // State of the world resends every resource: skip the ones whose bytes are what was
        // last applied (a 1000-cluster CDS response with one change translates one cluster).
        // They still count as present, so a full response removes nothing it repeats.
        // Likewise a resource whose bytes were rejected before is rejected again with the
        // same message, without translating it again (a control plane answering each NACK
        // with the same bad resource costs a lookup, not a validation).
        let mut skipped: HashSet<usize> = HashSet::new();
        let mut present: HashSet<String> = HashSet::new();
        let mut repeated: Vec<(String, String)> = Vec::new();
        {
            let st = self.lock();
            let known: HashSet<&[u8]> = st
                .raw
                .get(type_url)
                .map(|m| m.values().map(|a| a.value.as_slice()).collect())
                .unwrap_or_default();
            let bad = st.rejected_raw.get(type_url);
            for (i, (_, any)) in resources.iter().enumerate() {
                if known.contains(any.value.as_slice()) {
                    skipped.insert(i);
                    if let Some(name) = h.name_of(any) {
                        present.insert(name);
                    }
                } else if let Some((name, details)) = bad.and_then(|b| b.get(&any.value)) {
                    skipped.insert(i);
                    present.insert(name.clone());
                    repeated.push((name.clone(), details.clone()));
                }
            }
        }
        let owned: Vec<(Option<String>, Any)>;
        let resources: &[(Option<String>, Any)] = if skipped.is_empty() {
            resources
        } else {
            self.lock().present = present.clone();
            owned = resources
                .iter()
                .enumerate()
                .filter(|(i, _)| !skipped.contains(i))
                .map(|(_, r)| r.clone())
                .collect();
            &owned
        };
        let mut applied = h.apply(self, version, resources, complete, removed);
        if !repeated.is_empty() {
            h.stats().update_rejected_repeat.add(repeated.len() as u64);
            let mut st = self.lock();
            for (name, details) in repeated {
                if let Some(r) = st.rejected.get_mut(&(type_url.to_string(), name)) {
                    r.version = version.to_string();
                    r.at = SystemTime::now();
                }
                applied.errors.push(details);
            }
        }
        self.forget_rejected(type_url, version, complete.then_some(&present), removed);
        if !applied.errors.is_empty() {
            self.remember_rejected(h.as_ref(), version, resources);
        }
        self.record(h.as_ref(), version, &applied);
        self.remember_raw(h.as_ref(), resources, complete, removed);
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

    /// Marks init target `key` ready (if it is pending).
    fn init_done(&self, key: &str) {
        let t = self
            .init_targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Some(t) = t {
            t.ready();
        }
    }

    /// Stops waiting for the secrets of the static configuration after their initial fetch
    /// timeouts: the contexts then refuse handshakes until the secrets come.
    fn start_secret_timers(&self) {
        let waits =
            std::mem::take(&mut *self.secret_waits.lock().unwrap_or_else(|p| p.into_inner()));
        for (name, timeout) in waits {
            let (targets, counter) = (
                self.init_targets.clone(),
                self.stats.init_fetch_timeout.clone(),
            );
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let t = targets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&secrets::secret_init_key(&name));
                if let Some(t) = t {
                    tracing::warn!(secret = %name, "SDS secret not received within initial_fetch_timeout; its TLS contexts refuse handshakes until it arrives");
                    counter.inc();
                    t.ready();
                }
            });
        }
    }

    fn cluster_init_key(name: &str) -> String {
        format!("cluster:{name}")
    }

    /// A cluster that now has endpoints (or is gone) no longer holds up readiness.
    fn cluster_warmed(&self, name: &str) {
        self.init_done(&Self::cluster_init_key(name));
    }

    /// Starts warming EDS cluster `name`: while the server initialises, readiness waits for
    /// it; after `initial_fetch_timeout` it is used without endpoints.
    fn start_warming_timer(&self, name: &str) {
        if !self.init.all_ready() {
            let key = Self::cluster_init_key(name);
            let mut targets = self.init_targets.lock().unwrap_or_else(|p| p.into_inner());
            if let std::collections::btree_map::Entry::Vacant(e) = targets.entry(key) {
                let target = self.init.register(e.key());
                e.insert(target);
            }
        }
        let timeout = self.cfg.initial_fetch_timeout;
        if timeout.is_zero() {
            return;
        }
        let (cm, name, counter, targets) = (
            self.clusters.clone(),
            name.to_string(),
            self.stats.init_fetch_timeout.clone(),
            self.init_targets.clone(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if cm.get(&name).is_some_and(|c| c.is_warming()) {
                tracing::warn!(cluster = %name, "no endpoints within initial_fetch_timeout; using the cluster without them");
                counter.inc();
                cm.end_warming(&name);
            }
            let t = targets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&Self::cluster_init_key(&name));
            drop(t);
        });
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
