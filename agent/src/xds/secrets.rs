//! SDS over the ADS stream: secrets requested because listeners and clusters name them
//! (`sds_config: {ads: {}}`), validated (a key that does not match its certificate is
//! refused with the field's path, and the previous secret keeps serving), then handed to the
//! secret store, which rebuilds the TLS contexts that use them. LDS listeners warm until the
//! secrets they name arrive (as for RDS), and while the server starts, the secrets of its
//! static listeners and clusters are readiness targets.

use super::dump::{error_state, rejected_only, rfc3339, Sections};
use super::resources::{Interest, ResourceType, Versions};
use super::{decode, Applied, TypeStats, XdsClient, XdsState};
use crate::config::tls::SecretKind;
use crate::config::xds::{describe, secret_from_proto};
use crate::config::{type_urls, Cluster, Listener};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pbt;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The SDS secrets a listener's chains name, with their initial fetch timeouts.
pub(super) fn listener_sds_names(l: &Listener) -> Vec<(String, Duration)> {
    let mut out: Vec<(String, Duration)> = Vec::new();
    for c in l.all_chains() {
        if let Some(t) = &c.tls {
            for n in t.common.sds_names() {
                if !out.iter().any(|(x, _)| *x == n.0) {
                    out.push(n);
                }
            }
        }
    }
    out
}

pub(super) fn cluster_sds_names(c: &Cluster) -> Vec<(String, Duration)> {
    c.tls
        .iter()
        .chain(c.tls_matches.iter().filter_map(|m| m.tls.as_ref()))
        .flat_map(|t| t.common.sds_names())
        .collect()
}

pub(super) fn secret_init_key(name: &str) -> String {
    format!("secret:{name}")
}

pub(super) struct Secrets {
    pub(super) stats: TypeStats,
}

impl ResourceType for Secrets {
    fn type_url(&self) -> &'static str {
        type_urls::SECRET
    }
    fn stats(&self) -> &TypeStats {
        &self.stats
    }
    fn name_of(&self, any: &Any) -> Option<String> {
        pbt::Secret::decode(any.value.as_slice())
            .map(|s| s.name)
            .ok()
    }
    /// The secrets TLS contexts (and warming listeners) name.
    fn interest(&self, client: &XdsClient) -> Interest {
        Interest::Names(client.clusters.secrets().names())
    }
    fn accepted<'a>(&self, st: &'a mut XdsState) -> &'a mut dyn Versions {
        &mut st.secrets
    }

    /// `dynamic_active_secrets`, private keys and generic secrets as `[redacted]`.
    fn dump(&self, _client: &XdsClient, st: &XdsState, out: &mut Sections) {
        let t = type_urls::SECRET;
        let mut dynamic = Vec::new();
        for (name, e) in &st.secrets {
            let secret = crate::config::tls::Secret {
                name: name.clone(),
                kind: (*e.value).clone(),
            };
            let mut j = json!({
                "name": name,
                "version_info": e.version,
                "last_updated": rfc3339(e.last_updated),
                "secret": secret.to_envoy_json(),
            });
            if let Some(r) = st.rejected.get(&(t.to_string(), name.clone())) {
                j["error_state"] = error_state(r);
            }
            dynamic.push(j);
        }
        for (name, r) in rejected_only(st, t, |n| st.secrets.contains_key(n)) {
            dynamic.push(json!({"name": name, "error_state": error_state(r)}));
        }
        out.extra.push(json!({
            "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
            "dynamic_active_secrets": dynamic,
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
        let t = type_urls::SECRET;
        let mut errors = Vec::new();
        let store = client.clusters.secrets();
        for (hint, any) in resources {
            let name = match decode::<pbt::Secret>(any, t) {
                Ok(s) => s.name,
                Err(e) => {
                    let hint = hint.as_deref().unwrap_or("?");
                    client.reject(t, hint, version, e, &mut errors);
                    continue;
                }
            };
            if store.get_slot(&name).is_none() {
                tracing::debug!(secret = %name, "ignoring a secret no TLS context uses");
                continue;
            }
            match secret_from_proto(any) {
                // The previous value (if any) keeps serving.
                Err(diags) => {
                    let msg = describe(&format!("secret \"{name}\""), &diags);
                    client.reject(t, &name, version, msg, &mut errors);
                }
                Ok((secret, warnings)) => {
                    for w in warnings {
                        tracing::warn!(secret = %name, field = %w.path, "{}", w.message);
                    }
                    let kind: SecretKind = secret.kind;
                    store.set(&name, kind.clone(), version);
                    client.accepted(t, &name, version, Arc::new(kind), |st| &mut st.secrets);
                    client.init_done(&secret_init_key(&name));
                    // Clusters whose TLS clients waited for it may be warm now.
                    for c in client.clusters.all() {
                        let uses = cluster_sds_names(&c.config).iter().any(|(n, _)| *n == name);
                        if uses && !c.is_warming() {
                            client.cluster_warmed(&c.config.name);
                        }
                    }
                    client.clusters.refresh_warming();
                }
            }
        }
        // A removed secret keeps serving its last value (as Envoy does).
        client.activate_warmed();
        Applied { errors }
    }
}
