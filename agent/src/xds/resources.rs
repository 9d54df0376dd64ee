//! One handler per xDS resource type, registered by type URL: how to name, validate, apply
//! and remove its resources, which names to subscribe to, where its accepted copies are kept,
//! and its stats. The session, the cache and `/config_dump` are generic over them: RDS and
//! SDS arrive as two more handlers, without a new `match` arm elsewhere.

use super::dump::{error_state, rejected_only, rfc3339, Sections};
use super::{decode, Applied, Entry, TypeStats, XdsClient, XdsState};
use crate::config::type_urls;
use crate::config::xds::{cluster_from_proto, describe, endpoints_from_proto, listener_from_proto};
use crate::config::{self, DiscoveryType};
use crate::stats::Store;
use envoy_types::pb::envoy::config::cluster::v3 as pbc;
use envoy_types::pb::envoy::config::endpoint::v3 as pbe;
use envoy_types::pb::envoy::config::listener::v3 as pbl;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What a resource type subscribes to on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Interest {
    /// Not configured (e.g. no `lds_config`).
    Off,
    /// Every resource of the type (CDS, LDS).
    Wildcard,
    /// These names, because other resources refer to them (EDS from clusters; RDS and SDS
    /// next).
    Names(BTreeSet<String>),
}

/// The versions of the accepted resources of one type, whatever their value type.
pub(super) trait Versions {
    fn names(&self) -> Vec<String>;
    fn version_mut(&mut self, name: &str) -> Option<&mut String>;
    fn forget(&mut self, name: &str);
}

impl<T> Versions for BTreeMap<String, Entry<T>> {
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
    fn version_mut(&mut self, name: &str) -> Option<&mut String> {
        self.get_mut(name).map(|e| &mut e.version)
    }
    fn forget(&mut self, name: &str) {
        self.remove(name);
    }
}

pub(super) trait ResourceType: Send + Sync {
    fn type_url(&self) -> &'static str;
    fn stats(&self) -> &TypeStats;
    /// The resource's name, from its encoded form.
    fn name_of(&self, any: &Any) -> Option<String>;
    fn interest(&self, client: &XdsClient) -> Interest;
    /// Where accepted resources of this type are kept.
    fn accepted<'a>(&self, st: &'a mut XdsState) -> &'a mut dyn Versions;
    /// Adds this type's dynamic resources to its config dump section.
    fn dump(&self, client: &XdsClient, st: &XdsState, out: &mut Sections);
    /// Validates and applies one response. `complete`: a state-of-the-world response of a
    /// wildcard type, which removes what it does not name.
    fn apply(
        &self,
        client: &Arc<XdsClient>,
        version: &str,
        resources: &[(Option<String>, Any)],
        complete: bool,
        removed: &[String],
    ) -> Applied;
}

/// The handlers, in the order Envoy requests them: clusters, their endpoints, listeners.
pub(super) fn registry(store: &Store) -> Vec<Arc<dyn ResourceType>> {
    vec![
        Arc::new(Clusters {
            stats: TypeStats::new(&store.root_scope("cluster_manager.cds")),
        }),
        Arc::new(Endpoints {
            stats: TypeStats::new(&store.root_scope("cluster_manager.eds")),
        }),
        Arc::new(Listeners {
            stats: TypeStats::new(&store.root_scope("listener_manager.lds")),
        }),
        Arc::new(super::routes::Routes {
            // Plumb's aggregate of every RDS update (Envoy keeps these per connection manager,
            // which Plumb does too: http.<prefix>.rds.<name>.*).
            stats: TypeStats::new(&store.root_scope("plumb.rds")),
        }),
        Arc::new(super::secrets::Secrets {
            // Plumb's aggregate of every SDS update.
            stats: TypeStats::new(&store.root_scope("plumb.sds")),
        }),
    ]
}

struct Clusters {
    stats: TypeStats,
}

impl ResourceType for Clusters {
    fn type_url(&self) -> &'static str {
        type_urls::CLUSTER
    }
    fn stats(&self) -> &TypeStats {
        &self.stats
    }
    fn name_of(&self, any: &Any) -> Option<String> {
        pbc::Cluster::decode(any.value.as_slice())
            .map(|c| c.name)
            .ok()
    }
    fn interest(&self, client: &XdsClient) -> Interest {
        if client.cfg.cds {
            Interest::Wildcard
        } else {
            Interest::Off
        }
    }
    fn accepted<'a>(&self, st: &'a mut XdsState) -> &'a mut dyn Versions {
        &mut st.clusters
    }

    fn dump(&self, client: &XdsClient, st: &XdsState, out: &mut Sections) {
        let t = type_urls::CLUSTER;
        let (mut active, mut warming) = (Vec::new(), Vec::new());
        for (name, e) in &st.clusters {
            let mut j = json!({
                "version_info": e.version,
                "cluster": e.value.to_envoy_json(),
                "last_updated": rfc3339(e.last_updated),
            });
            if let Some(r) = st.rejected.get(&(t.to_string(), name.clone())) {
                j["error_state"] = error_state(r);
            }
            if client.clusters.get(name).is_some_and(|c| c.is_warming()) {
                warming.push(j);
            } else {
                active.push(j);
            }
        }
        for (name, r) in rejected_only(st, t, |n| st.clusters.contains_key(n)) {
            active.push(json!({"name": name, "error_state": error_state(r)}));
        }
        out.clusters["dynamic_active_clusters"] = json!(active);
        out.clusters["dynamic_warming_clusters"] = json!(warming);
        out.clusters["version_info"] = json!(st.versions.get(t));
    }

    /// Applies each valid cluster; with `complete`, removes dynamic clusters not named.
    fn apply(
        &self,
        client: &Arc<XdsClient>,
        version: &str,
        resources: &[(Option<String>, Any)],
        complete: bool,
        removed: &[String],
    ) -> Applied {
        let t = type_urls::CLUSTER;
        let statics = &client.static_clusters;
        // One copy of the cluster map for the whole response, published at the end.
        let batch = std::cell::RefCell::new(client.clusters.batch());
        let apply_one = |c: &pbc::Cluster| -> Result<(), String> {
            let (model, warnings) = cluster_from_proto(c)
                .map_err(|diags| describe(&format!("cluster \"{}\"", c.name), &diags))?;
            for w in warnings {
                tracing::warn!(cluster = %c.name, field = %w.path, "{}", w.message);
            }
            let model = Arc::new(model);
            let eds = model.discovery == DiscoveryType::Eds;
            let sds = !super::secrets::cluster_sds_names(&model).is_empty();
            let mut b = batch.borrow_mut();
            let outcome = b.upsert(model.clone());
            let warming = |b: &crate::upstream::ClusterBatch| {
                b.get(&model.name).is_some_and(|c| c.is_warming())
            };
            if eds && warming(&b) && outcome != crate::upstream::Upsert::Unchanged {
                // New, or its endpoint source changed: use what we already have for its
                // service name, else warm until EDS delivers.
                let service = model
                    .eds_service_name
                    .clone()
                    .unwrap_or_else(|| model.name.clone());
                let known = client
                    .lock()
                    .endpoints
                    .get(&service)
                    .map(|e| e.value.clone());
                if let Some(eps) = known {
                    b.set_endpoints(&model.name, &eps);
                    if !warming(&b) {
                        client.cluster_warmed(&model.name);
                    }
                } else {
                    client.start_warming_timer(&model.name);
                }
            } else if sds && warming(&b) && outcome != crate::upstream::Upsert::Unchanged {
                // Its TLS client waits for SDS secrets (at most initial_fetch_timeout).
                client.start_warming_timer(&model.name);
            }
            // Not (or no longer) warming, e.g. turned from EDS into STATIC: nothing to wait for.
            if !warming(&b) {
                client.cluster_warmed(&model.name);
            }
            client.accepted(t, &c.name, version, model, |st| &mut st.clusters);
            Ok(())
        };
        let remove = |name: &str| {
            batch.borrow_mut().remove(name);
            client.lock().clusters.remove(name);
            client.cluster_warmed(name);
        };
        let wildcard = Wildcard {
            client,
            type_url: t,
            kind: "cluster",
            statics,
            name_of: |c: &pbc::Cluster| c.name.clone(),
            known: |st: &XdsState| st.clusters.keys().cloned().collect(),
        };
        wildcard.apply(version, resources, complete, removed, apply_one, remove)
    }
}

struct Endpoints {
    stats: TypeStats,
}

impl ResourceType for Endpoints {
    fn type_url(&self) -> &'static str {
        type_urls::ENDPOINT
    }
    fn stats(&self) -> &TypeStats {
        &self.stats
    }
    fn name_of(&self, any: &Any) -> Option<String> {
        pbe::ClusterLoadAssignment::decode(any.value.as_slice())
            .map(|e| e.cluster_name)
            .ok()
    }
    /// The service names of every EDS cluster.
    fn interest(&self, client: &XdsClient) -> Interest {
        let names: BTreeSet<String> = client
            .clusters
            .all()
            .iter()
            .filter(|c| c.config.discovery == DiscoveryType::Eds)
            .map(|c| {
                c.config
                    .eds_service_name
                    .clone()
                    .unwrap_or_else(|| c.config.name.clone())
            })
            .collect();
        Interest::Names(names)
    }
    fn accepted<'a>(&self, st: &'a mut XdsState) -> &'a mut dyn Versions {
        &mut st.endpoints
    }

    fn dump(&self, _client: &XdsClient, st: &XdsState, out: &mut Sections) {
        let eps: Vec<_> = st
            .endpoints
            .iter()
            .map(|(name, e)| {
                let lj: Vec<_> = e
                    .value
                    .iter()
                    .map(|l| {
                        json!({"locality": l.locality.to_json(), "priority": l.priority, "lb_endpoints":
                            l.endpoints.iter().map(|ep| json!({
                                "endpoint": {"address": {"socket_address": {"address": ep.host.to_string(), "port_value": ep.port}}},
                                "health_status": ep.health_status.as_str(),
                                "load_balancing_weight": ep.weight,
                            })).collect::<Vec<_>>()})
                    })
                    .collect();
                json!({
                    "version_info": e.version,
                    "endpoint_config": {"cluster_name": name, "endpoints": lj},
                    "last_updated": rfc3339(e.last_updated),
                })
            })
            .collect();
        out.extra.push(json!({
            "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            "dynamic_endpoint_configs": eps,
        }));
    }

    fn apply(
        &self,
        client: &Arc<XdsClient>,
        version: &str,
        resources: &[(Option<String>, Any)],
        _complete: bool,
        removed: &[String],
    ) -> Applied {
        let t = type_urls::ENDPOINT;
        let mut errors = Vec::new();
        // Endpoint sets of services no cluster uses (a response in flight when the
        // subscription shrank) are not kept: nothing would ever prune them.
        let subscribed = match self.interest(client) {
            Interest::Names(n) => n,
            _ => BTreeSet::new(),
        };
        let mut batch = client.clusters.batch();
        let by_service = eds_clusters_by_service(&batch);
        for (hint, any) in resources {
            let cla = match decode::<pbe::ClusterLoadAssignment>(any, t) {
                Ok(c) => c,
                Err(e) => {
                    let hint = hint.as_deref().unwrap_or("?");
                    client.reject(t, hint, version, e, &mut errors);
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
                    client.reject(t, &cla.cluster_name, version, msg, &mut errors);
                    // As Envoy: a rejected first assignment ends the warming (the cluster is
                    // used without endpoints) instead of holding readiness back.
                    for name in by_service
                        .get(cla.cluster_name.as_str())
                        .into_iter()
                        .flatten()
                    {
                        if batch.get(name).is_some_and(|c| c.is_warming()) {
                            batch.end_warming(name);
                            client.cluster_warmed(name);
                        }
                    }
                }
                Ok((localities, _)) => {
                    set_service_endpoints(
                        client,
                        &mut batch,
                        &by_service,
                        &cla.cluster_name,
                        &localities,
                        true,
                    );
                    let value = Arc::new(localities);
                    client.accepted(t, &cla.cluster_name, version, value, |st| &mut st.endpoints);
                }
            }
        }
        for name in removed {
            // An EDS resource removed: its clusters have no endpoints any more.
            set_service_endpoints(client, &mut batch, &by_service, name, &[], false);
            client.lock().endpoints.remove(name);
        }
        Applied { errors }
    }
}

/// The EDS clusters of each service name: built once per response, so each assignment
/// finds its clusters without a scan of every cluster.
fn eds_clusters_by_service(
    batch: &crate::upstream::ClusterBatch,
) -> std::collections::HashMap<String, Vec<String>> {
    let mut m: std::collections::HashMap<String, Vec<String>> = Default::default();
    for c in batch.iter() {
        if c.config.discovery == DiscoveryType::Eds {
            let service = c.config.eds_service_name.as_deref().unwrap_or(c.name());
            m.entry(service.to_string())
                .or_default()
                .push(c.name().to_string());
        }
    }
    m
}

/// Installs `localities` in every EDS cluster whose service name is `service`.
fn set_service_endpoints(
    client: &XdsClient,
    batch: &mut crate::upstream::ClusterBatch,
    by_service: &std::collections::HashMap<String, Vec<String>>,
    service: &str,
    localities: &[config::LocalityEndpoints],
    count: bool,
) {
    for name in by_service.get(service).into_iter().flatten() {
        batch.set_endpoints(name, localities);
        // Still warming only while its TLS client waits for SDS secrets.
        if !batch.get(name).is_some_and(|c| c.is_warming()) {
            client.cluster_warmed(name);
        }
        if count {
            if let Some(c) = batch.get(name) {
                c.stats.update_success.inc();
            }
        }
    }
}

struct Listeners {
    stats: TypeStats,
}

impl ResourceType for Listeners {
    fn type_url(&self) -> &'static str {
        type_urls::LISTENER
    }
    fn stats(&self) -> &TypeStats {
        &self.stats
    }
    fn name_of(&self, any: &Any) -> Option<String> {
        pbl::Listener::decode(any.value.as_slice())
            .map(|l| l.name)
            .ok()
    }
    fn interest(&self, client: &XdsClient) -> Interest {
        if client.cfg.lds {
            Interest::Wildcard
        } else {
            Interest::Off
        }
    }
    fn accepted<'a>(&self, st: &'a mut XdsState) -> &'a mut dyn Versions {
        &mut st.listeners
    }

    fn dump(&self, _client: &XdsClient, st: &XdsState, out: &mut Sections) {
        let t = type_urls::LISTENER;
        let mut dynamic = Vec::new();
        for (name, e) in &st.listeners {
            let mut j = json!({"name": name, "active_state": {
                "version_info": e.version,
                "listener": e.value.to_envoy_json(),
                "last_updated": rfc3339(e.last_updated),
            }});
            if let Some(r) = st.rejected.get(&(t.to_string(), name.clone())) {
                j["error_state"] = error_state(r);
            }
            dynamic.push(j);
        }
        for (name, w) in &st.warming_listeners {
            let state = json!({
                "version_info": w.version,
                "listener": w.value.to_envoy_json(),
                "last_updated": rfc3339(w.since),
            });
            match dynamic.iter_mut().find(|j| j["name"] == json!(name)) {
                Some(j) => j["warming_state"] = state,
                None => dynamic.push(json!({"name": name, "warming_state": state})),
            }
        }
        for (name, r) in rejected_only(st, t, |n| {
            st.listeners.contains_key(n) || st.warming_listeners.contains_key(n)
        }) {
            dynamic.push(json!({"name": name, "error_state": error_state(r)}));
        }
        out.listeners["dynamic_listeners"] = json!(dynamic);
        out.listeners["version_info"] = json!(st.versions.get(t));
    }

    fn apply(
        &self,
        client: &Arc<XdsClient>,
        version: &str,
        resources: &[(Option<String>, Any)],
        complete: bool,
        removed: &[String],
    ) -> Applied {
        let t = type_urls::LISTENER;
        let _batch = client.listeners.batch();
        let apply_one = |l: &pbl::Listener| -> Result<(), String> {
            let (model, _) = listener_from_proto(l)
                .map_err(|diags| describe(&format!("listener \"{}\"", l.name), &diags))?;
            client.upsert_or_warm(Arc::new(model), version)
        };
        let remove = |name: &str| {
            client.listeners.remove(name);
            let mut st = client.lock();
            st.listeners.remove(name);
            st.warming_listeners.remove(name);
        };
        let wildcard = Wildcard {
            client,
            type_url: t,
            kind: "listener",
            statics: &client.static_listeners,
            name_of: |l: &pbl::Listener| l.name.clone(),
            known: |st: &XdsState| {
                st.listeners
                    .keys()
                    .chain(st.warming_listeners.keys())
                    .cloned()
                    .collect()
            },
        };
        wildcard.apply(version, resources, complete, removed, apply_one, remove)
    }
}

/// The skeleton every wildcard type (CDS, LDS) shares: decode and name each resource
/// (refusing names of static resources), translate and apply each on its own (an error
/// rejects that one resource), then remove what the response removes.
struct Wildcard<'a, N, K> {
    client: &'a XdsClient,
    type_url: &'static str,
    kind: &'static str,
    statics: &'a std::collections::HashSet<String>,
    name_of: N,
    known: K,
}

impl<N, K> Wildcard<'_, N, K> {
    fn apply<M: Message + Default>(
        &self,
        version: &str,
        resources: &[(Option<String>, Any)],
        complete: bool,
        removed: &[String],
        mut apply_one: impl FnMut(&M) -> Result<(), String>,
        remove: impl Fn(&str),
    ) -> Applied
    where
        N: Fn(&M) -> String,
        K: Fn(&XdsState) -> Vec<String>,
    {
        let c = self.client;
        let mut named = c.decode_named::<M>(
            self.type_url,
            self.kind,
            version,
            resources,
            self.statics,
            |m| (self.name_of)(m),
        );
        let mut errors = std::mem::take(&mut named.errors);
        for m in std::mem::take(&mut named.items) {
            if let Err(msg) = apply_one(&m) {
                c.reject(
                    self.type_url,
                    &(self.name_of)(&m),
                    version,
                    msg,
                    &mut errors,
                );
            }
        }
        for name in c.removed_names(removed, complete, &named, self.statics, &self.known) {
            remove(&name);
        }
        Applied { errors }
    }
}

/// An error with its sources, `outer: inner: …` (a NACK's message must say why).
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}
