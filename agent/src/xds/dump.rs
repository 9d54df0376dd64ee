//! What the xDS client contributes to `/config_dump`: each resource type fills its section
//! (Envoy's ClustersConfigDump, ListenersConfigDump, EndpointsConfigDump) with the dynamic
//! resources, versions and rejections it holds; the client adds its own status.

use super::{Rejected, XdsClient, XdsState};
use crate::config::type_urls;
use serde_json::{json, Value as Json};

/// The sections of a config dump the xDS client fills.
pub(super) struct Sections<'a> {
    pub clusters: &'a mut Json,
    pub listeners: &'a mut Json,
    /// Further `configs[]` entries (endpoints, status).
    pub extra: &'a mut Vec<Json>,
}

pub(super) fn error_state(r: &Rejected) -> Json {
    json!({"details": r.details, "version_info": r.version, "last_update_attempt": rfc3339(r.at)})
}

/// Rejections of resources of `type_url` that have no accepted copy (so no entry of their own).
pub(super) fn rejected_only<'a>(
    st: &'a XdsState,
    type_url: &'a str,
    known: impl Fn(&str) -> bool + 'a,
) -> impl Iterator<Item = (&'a String, &'a Rejected)> + 'a {
    st.rejected
        .iter()
        .filter(move |((t, name), _)| t == type_url && !known(name))
        .map(|((_, name), r)| (name, r))
}

impl XdsClient {
    /// Adds the dynamic resources to `clusters` and `listeners` (Envoy's config dump
    /// sections) and the endpoint and status entries to `extra`.
    pub fn dump(&self, clusters: &mut Json, listeners: &mut Json, extra: &mut Vec<Json>) {
        let st = self.state();
        let mut sections = Sections {
            clusters,
            listeners,
            extra,
        };
        for h in &self.types {
            h.dump(self, &st, &mut sections);
        }
        sections.extra.push(json!({
            "@type": "type.googleapis.com/plumb.admin.v1.XdsStatus",
            "api": format!("{:?}", self.cfg.api),
            "control_plane_cluster": self.cfg.cluster,
            "connected": st.connected,
            "versions": {
                "clusters": st.versions.get(type_urls::CLUSTER),
                "listeners": st.versions.get(type_urls::LISTENER),
                "endpoints": st.versions.get(type_urls::ENDPOINT),
            },
            "last_nack": st.last_nack,
        }));
    }
}

/// An RFC 3339 UTC timestamp, as Envoy prints `last_updated`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since.as_secs(), since.subsec_millis());
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date crate for one timestamp.
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    // Protobuf's JSON form: fractional seconds only when there are some.
    let frac = if millis == 0 {
        String::new()
    } else {
        format!(".{millis:03}")
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}
