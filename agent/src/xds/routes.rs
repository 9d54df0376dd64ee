//! RDS: route configurations over the ADS stream, requested because connection managers
//! name them, and the warming of listeners until the routes they name have arrived.
//!
//! As in Envoy: an LDS listener whose connection managers name route configurations that
//! are not here yet is held back (warming); an update of a listener keeps the old version
//! serving meanwhile. It is activated when its routes arrive, or after its
//! `initial_fetch_timeout` without them (then those requests get 404, flag NR, until they
//! come). While the server starts, warming listeners and the routes of static listeners are
//! readiness targets.

use super::dump::{error_state, rejected_only, rfc3339, Sections};
use super::resources::{Interest, ResourceType, Versions};
use super::{decode, Applied, TypeStats, XdsClient, XdsState};
use crate::config::http::Routes as RouteSpec;
use crate::config::xds::{describe, route_from_proto};
use crate::config::{type_urls, Listener, NetworkFilter};
use crate::http::rds::RouteSlot;
use crate::http::route::RouteTable;
use envoy_types::pb::envoy::config::route::v3 as pbr;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A listener waiting for its route configurations.
#[derive(Debug, Clone)]
pub struct Warming {
    pub value: Arc<Listener>,
    pub version: String,
    pub since: SystemTime,
    /// Held so RDS keeps the names subscribed while the listener is not built.
    slots: Vec<Arc<RouteSlot>>,
    /// The same for the SDS secrets its chains name.
    secret_slots: Vec<Arc<crate::tls::secrets::SecretSlot>>,
}

/// The RDS route configuration names of a listener's connection managers, with their
/// initial fetch timeouts.
pub(super) fn rds_names(l: &Listener) -> Vec<(String, Duration)> {
    let mut out: Vec<(String, Duration)> = Vec::new();
    for f in l.all_chains().flat_map(|c| c.filters.iter()) {
        if let NetworkFilter::HttpConnectionManager(h) = f {
            if let RouteSpec::Rds {
                name,
                initial_fetch_timeout,
            } = &h.routes
            {
                if !out.iter().any(|(n, _)| n == name) {
                    out.push((name.clone(), *initial_fetch_timeout));
                }
            }
        }
    }
    out
}

pub(super) fn route_init_key(name: &str) -> String {
    format!("route:{name}")
}

fn listener_init_key(name: &str) -> String {
    format!("listener:{name}")
}

impl XdsClient {
    /// Applies listener `model` now if every route configuration it names is here, else
    /// holds it back until they arrive (or their initial fetch timeout passes).
    pub(super) fn upsert_or_warm(
        self: &Arc<Self>,
        model: Arc<Listener>,
        version: &str,
    ) -> Result<(), String> {
        let mut names = rds_names(&model);
        let slots: Vec<Arc<RouteSlot>> = names
            .iter()
            .map(|(n, _)| self.listeners.routes.slot(n))
            .collect();
        let secret_names = super::secrets::listener_sds_names(&model);
        let secret_slots: Vec<_> = secret_names
            .iter()
            .map(|(n, _)| self.clusters.secrets().slot(n))
            .collect();
        names.extend(secret_names);
        if slots.iter().all(|s| s.has_table()) && secret_slots.iter().all(|s| s.has_value()) {
            self.lock().warming_listeners.remove(&model.name);
            return self.activate(model, version);
        }
        let name = model.name.clone();
        tracing::info!(listener = %name, waiting_for = ?names.iter().map(|(n, _)| n).collect::<Vec<_>>(), "listener warming until its routes and secrets arrive");
        if !self.init.all_ready() {
            let key = listener_init_key(&name);
            let mut targets = self.init_targets.lock().unwrap_or_else(|p| p.into_inner());
            if let std::collections::btree_map::Entry::Vacant(e) = targets.entry(key) {
                let target = self.init.register(e.key());
                e.insert(target);
            }
        }
        let timeout = names.iter().map(|(_, t)| *t).max().unwrap_or_default();
        self.lock().warming_listeners.insert(
            name.clone(),
            Warming {
                value: model.clone(),
                version: version.to_string(),
                since: SystemTime::now(),
                slots,
                secret_slots,
            },
        );
        if !timeout.is_zero() {
            let client = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let still = {
                    let st = client.lock();
                    st.warming_listeners
                        .get(&name)
                        .filter(|w| Arc::ptr_eq(&w.value, &model))
                        .cloned()
                };
                if let Some(w) = still {
                    tracing::warn!(listener = %name, "routes or secrets not received within initial_fetch_timeout; serving without them (404, or refused handshakes, until they arrive)");
                    client.stats.init_fetch_timeout.inc();
                    client.lock().warming_listeners.remove(&name);
                    if let Err(e) = client.activate(w.value, &w.version) {
                        tracing::error!(listener = %name, "cannot activate listener: {e}");
                    }
                }
            });
        }
        Ok(())
    }

    fn activate(&self, model: Arc<Listener>, version: &str) -> Result<(), String> {
        let name = model.name.clone();
        let r = self
            .listeners
            .upsert(model.clone())
            .map_err(|e| super::resources::error_chain(&e));
        if r.is_ok() {
            self.accepted(type_urls::LISTENER, &name, version, model, |st| {
                &mut st.listeners
            });
        }
        self.init_done(&listener_init_key(&name));
        r.map(|_| ())
    }

    /// Activates the warming listeners whose routes and secrets have all arrived.
    pub(super) fn activate_warmed(&self) {
        let ready: Vec<Warming> = {
            let mut st = self.lock();
            let names: Vec<String> = st
                .warming_listeners
                .iter()
                .filter(|(_, w)| {
                    w.slots.iter().all(|s| s.has_table())
                        && w.secret_slots.iter().all(|s| s.has_value())
                })
                .map(|(n, _)| n.clone())
                .collect();
            names
                .iter()
                .filter_map(|n| st.warming_listeners.remove(n))
                .collect()
        };
        if ready.is_empty() {
            return;
        }
        let _batch = self.listeners.batch();
        for w in ready {
            let name = w.value.name.clone();
            if let Err(e) = self.activate(w.value, &w.version) {
                tracing::error!(listener = %name, "cannot activate listener: {e}");
                let mut errors = Vec::new();
                self.reject(type_urls::LISTENER, &name, &w.version, e, &mut errors);
            }
        }
    }
}

pub(super) struct Routes {
    pub(super) stats: TypeStats,
}

impl ResourceType for Routes {
    fn type_url(&self) -> &'static str {
        type_urls::ROUTE
    }
    fn stats(&self) -> &TypeStats {
        &self.stats
    }
    fn name_of(&self, any: &Any) -> Option<String> {
        pbr::RouteConfiguration::decode(any.value.as_slice())
            .map(|r| r.name)
            .ok()
    }
    /// The route configurations connection managers (and warming listeners) name.
    fn interest(&self, client: &XdsClient) -> Interest {
        Interest::Names(client.listeners.routes.names())
    }
    fn accepted<'a>(&self, st: &'a mut XdsState) -> &'a mut dyn Versions {
        &mut st.routes
    }

    fn dump(&self, _client: &XdsClient, st: &XdsState, out: &mut Sections) {
        let t = type_urls::ROUTE;
        let mut dynamic = Vec::new();
        for (name, e) in &st.routes {
            let mut rc = e.value.source.clone();
            if let Some(m) = rc.as_object_mut() {
                m.insert("@type".into(), json!(t));
            }
            let mut j = json!({
                "version_info": e.version,
                "route_config": rc,
                "last_updated": rfc3339(e.last_updated),
            });
            if let Some(r) = st.rejected.get(&(t.to_string(), name.clone())) {
                j["error_state"] = error_state(r);
            }
            dynamic.push(j);
        }
        for (name, r) in rejected_only(st, t, |n| st.routes.contains_key(n)) {
            dynamic.push(json!({"name": name, "error_state": error_state(r)}));
        }
        out.extra.push(json!({
            "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "dynamic_route_configs": dynamic,
        }));
    }

    fn apply(
        &self,
        client: &Arc<XdsClient>,
        version: &str,
        resources: &[(Option<String>, Any)],
        _complete: bool,
        _removed: &[String],
    ) -> Applied {
        let t = type_urls::ROUTE;
        let mut errors = Vec::new();
        let registry = &client.listeners.routes;
        for (hint, any) in resources {
            let rc = match decode::<pbr::RouteConfiguration>(any, t) {
                Ok(r) => r,
                Err(e) => {
                    let hint = hint.as_deref().unwrap_or("?");
                    client.reject(t, hint, version, e, &mut errors);
                    continue;
                }
            };
            let Some(slot) = registry.get(&rc.name) else {
                tracing::debug!(route = %rc.name, "ignoring a route configuration no listener uses");
                continue;
            };
            match route_from_proto(any) {
                Err(diags) => {
                    slot.rejected();
                    let msg = describe(&format!("route configuration \"{}\"", rc.name), &diags);
                    client.reject(t, &rc.name, version, msg, &mut errors);
                }
                Ok((model, warnings)) => {
                    for w in warnings {
                        tracing::warn!(route = %rc.name, field = %w.path, "{}", w.message);
                    }
                    let model = Arc::new(model);
                    registry.set(
                        &rc.name,
                        RouteTable::new(model.clone(), client.listeners.store()),
                        version,
                    );
                    client.accepted(t, &rc.name, version, model, |st| &mut st.routes);
                    client.init_done(&route_init_key(&rc.name));
                }
            }
        }
        // A removed route configuration keeps serving its last version (as Envoy does):
        // removing it would turn every request into a 404.
        client.activate_warmed();
        Applied { errors }
    }
}
