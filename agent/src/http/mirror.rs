//! Mirrors (Envoy's `request_mirror_policies`): a copy of a request sent to another cluster,
//! fire and forget.

use super::forward::Source;
use super::ConnectionManager;
use crate::config::http::{ClusterSpecifier, MirrorPolicy, UpstreamProtocol};
use crate::upstream::{LbContext, Outcome, Priority};
use http::header::{HeaderValue, HOST};
use http::{HeaderMap, Request, Uri, Version};
use std::sync::Arc;

impl ConnectionManager {
    /// Sends a copy of the request to each mirror's cluster, fire and forget: the main
    /// exchange never waits for, nor fails because of, a mirror. The host gets `-shadow`
    /// appended (unless disabled). A body is copied only when it was read whole and kept;
    /// otherwise the mirror is skipped (`retry_or_shadow_abandoned`).
    pub(super) fn mirror(
        self: &Arc<Self>,
        mirrors: &[&MirrorPolicy],
        parts: &http::request::Parts,
        path_and_query: &str,
        authority: &str,
        headers: HeaderMap,
        body: &Source,
    ) {
        for m in mirrors {
            let name = match &m.cluster {
                ClusterSpecifier::Cluster(c) => c.clone(),
                ClusterSpecifier::Header(h) => {
                    match headers.get(h.as_str()).and_then(|v| v.to_str().ok()) {
                        Some(v) => v.to_string(),
                        None => continue,
                    }
                }
                ClusterSpecifier::Weighted { .. } => continue,
            };
            let Some(cluster) = self.clusters.get(&name) else {
                continue;
            };
            let mbody = match body {
                Source::Replay(r) => r.snapshot(),
                Source::Once(..) => None,
            };
            let Some(mbody) = mbody else {
                cluster.http_stats().retry_or_shadow_abandoned.inc();
                continue;
            };
            let mut host = m
                .host_rewrite_literal
                .clone()
                .unwrap_or_else(|| authority.to_string());
            if m.shadow_suffix {
                // Before any port: `a.example:8080` → `a.example-shadow:8080`.
                let bare = super::route::strip_port(&host).len();
                host = format!("{}-shadow{}", &host[..bare], &host[bare..]);
            }
            let mut headers = headers.clone();
            let h2 = cluster.config.http.protocol == UpstreamProtocol::Http2;
            let uri = if h2 {
                headers.remove(HOST);
                Uri::builder()
                    .scheme("http")
                    .authority(host.as_str())
                    .path_and_query(path_and_query)
                    .build()
                    .ok()
            } else {
                let Ok(hv) = HeaderValue::from_str(&host) else {
                    continue;
                };
                headers.insert(HOST, hv);
                path_and_query.parse::<Uri>().ok()
            };
            let Some(uri) = uri else { continue };
            let sni: Option<Arc<str>> = cluster
                .auto_sni()
                .then(|| Arc::from(super::route::strip_port(&host)));
            let version = if h2 {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            let mut req = Request::new(mbody);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri;
            *req.headers_mut() = headers;
            *req.version_mut() = version;
            let hcm = self.clone();
            tokio::spawn(async move {
                let hs = cluster.http_stats();
                hs.upstream_rq_total.inc();
                let ctx = LbContext::default();
                let Ok(host) = cluster.pick(&ctx) else { return };
                // Bounded: a mirror that does not answer in 15 s is dropped.
                let sent = tokio::time::timeout(
                    std::time::Duration::from_secs(15),
                    hcm.send(
                        &cluster,
                        &host,
                        req,
                        version,
                        Priority::Default,
                        sni.as_ref(),
                    ),
                )
                .await;
                match sent {
                    Ok(Ok((r, _))) => {
                        hs.record_status(r.status().as_u16());
                        cluster.report(&host, Outcome::HttpStatus(r.status().as_u16()));
                    }
                    Ok(Err(_)) => cluster.report(&host, Outcome::Reset),
                    Err(_) => hs.upstream_rq_timeout.inc(),
                }
            });
        }
    }
}
