//! Remembered rejections: the bytes of each resource still in error, so a control plane
//! that re-sends it unchanged gets the same NACK without a new translation, and forgetting
//! them once the control plane stops sending the resource.

use super::resources::ResourceType;
use super::{XdsClient, XdsState};
use envoy_types::pb::google::protobuf::Any;
use std::collections::HashSet;

impl XdsClient {
    /// Forgets rejections of resources the control plane no longer sends: with a complete
    /// (state-of-the-world) response, those neither rejected in it (`version`) nor repeated
    /// or unchanged in it (`present`); with delta, those it removes. Bounded by what is sent
    /// now, however many bad names came and went.
    pub(super) fn forget_rejected(
        &self,
        type_url: &str,
        version: &str,
        present: Option<&HashSet<String>>,
        removed: &[String],
    ) {
        let mut st = self.lock();
        if let Some(present) = present {
            st.rejected.retain(|(t, name), r| {
                t != type_url || r.version == version || present.contains(name)
            });
        }
        for name in removed {
            st.rejected.remove(&(type_url.to_string(), name.clone()));
        }
        let XdsState {
            rejected,
            rejected_raw,
            ..
        } = &mut *st;
        if let Some(bad) = rejected_raw.get_mut(type_url) {
            bad.retain(|_, (name, _)| rejected.contains_key(&(type_url.to_string(), name.clone())));
        }
    }

    /// Remembers the bytes of each resource of this response that was rejected, with its
    /// message, and forgets those no longer rejected (accepted since, or rejected for another
    /// reason): at most one remembered copy per resource in error.
    pub(super) fn remember_rejected(
        &self,
        h: &dyn ResourceType,
        version: &str,
        resources: &[(Option<String>, Any)],
    ) {
        let type_url = h.type_url();
        let mut st = self.lock();
        let mut fresh = Vec::new();
        for (hint, any) in resources {
            let Some(name) = hint.clone().or_else(|| h.name_of(any)) else {
                continue;
            };
            if let Some(r) = st.rejected.get(&(type_url.to_string(), name.clone())) {
                if r.version == version {
                    fresh.push((any.value.clone(), name, r.details.clone()));
                }
            }
        }
        let XdsState {
            rejected,
            rejected_raw,
            ..
        } = &mut *st;
        let bad = rejected_raw.entry(type_url.to_string()).or_default();
        for (bytes, name, details) in fresh {
            bad.insert(bytes, (name, details));
        }
        bad.retain(|_, (name, details)| {
            rejected
                .get(&(type_url.to_string(), name.clone()))
                .is_some_and(|r| r.details == *details)
        });
    }
}
