//! The on-disk cache of accepted resources (`--xds-cache`): written atomically, at most once a
//! second, and read at start so an agent restarted while the control plane is down serves.

use super::resources::Interest;
use super::{XdsClient, CACHE_MAGIC};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;

impl XdsClient {
    /// Keeps the accepted resources as received and rewrites the on-disk cache.
    pub(super) fn remember_raw(
        &self,
        h: &dyn super::resources::ResourceType,
        resources: &[(Option<String>, Any)],
        complete: bool,
        removed: &[String],
    ) {
        let type_url = h.type_url();
        // Private keys never reach the disk: secrets are fetched again after a restart (and
        // resources with inline keys are skipped below).
        if type_url == crate::config::type_urls::SECRET {
            return;
        }
        let mut st = self.lock();
        let mut accepted: std::collections::HashSet<String> =
            h.accepted(&mut st).names().into_iter().collect();
        // A listener waiting for its routes or secrets is accepted too: it activates when they
        // come, with no further LDS update to write it down, so it is kept now — else a
        // restart from the cache (or a successor taking over) would come up without it.
        if type_url == crate::config::type_urls::LISTENER {
            accepted.extend(st.warming_listeners.keys().cloned());
        }
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
            let name = h.name_of(any);
            // Private keys never reach the disk: a resource carrying an inline one (a
            // listener's or cluster's inline certificate) is not cached; after a restart it
            // comes from the control plane again.
            if any.value.windows(16).any(|w| w == b"PRIVATE KEY-----") {
                if let Some(n) = &name {
                    st.raw.entry(type_url.to_string()).or_default().remove(n);
                }
                continue;
            }
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
        self.mark_cache_dirty();
    }

    /// Writes the accepted resources to the cache file (atomically: a temporary file, then a
    /// rename), if they changed since the last write.
    pub(super) fn write_cache(&self) {
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
        let mut st = st;
        let mut versions: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for h in &self.types {
            let map = h.accepted(&mut st);
            let mut v = BTreeMap::new();
            for name in map.names() {
                if let Some(ver) = map.version_mut(&name) {
                    v.insert(name, ver.clone());
                }
            }
            versions.insert(h.type_url().to_string(), v);
        }
        let version_of = |t: &str, name: &str| -> Option<String> {
            versions.get(t).and_then(|m| m.get(name)).cloned()
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
            // Owner-only: the cache holds the configuration (never private keys: see
            // `remember_raw`), which is still nobody else's business.
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
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
    pub(super) fn load_cache(self: &Arc<Self>) -> bool {
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
        responses.sort_by_key(|(t, _, _)| {
            self.types
                .iter()
                .position(|h| h.type_url() == t)
                .unwrap_or(usize::MAX)
        });
        for (type_url, version, cached) in &responses {
            let resources: Vec<(Option<String>, Any)> = cached
                .iter()
                .map(|(name, _, a)| (name.clone(), a.clone()))
                .collect();
            let complete = self
                .handler(type_url)
                .is_some_and(|h| h.interest(self) == Interest::Wildcard);
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
}
