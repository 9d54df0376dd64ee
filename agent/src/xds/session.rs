//! The ADS stream's life: connect to the control plane (TLS if configured), reconnect with
//! jittered backoff, and one stream, state of the world (`sotw`) or incremental (`delta`): the
//! first requests in the registry's order, ACK/NACK of each response, and re-subscription when
//! the names a type needs change (EDS follows the clusters).

use super::resources::{error_chain, Interest, ResourceType};
use super::{log_limit, XdsClient, CACHE_WRITE_INTERVAL};
use crate::config::XdsApi;
use crate::upstream::LbContext;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
impl XdsClient {
    /// What each type subscribes to now, in registry order. Resources of named types that are
    /// no longer wanted are forgotten here (what a previous stream or response left).
    fn interests(&self) -> Vec<Interest> {
        let all: Vec<Interest> = self.types.iter().map(|h| h.interest(self)).collect();
        for (h, i) in self.types.iter().zip(&all) {
            if let Interest::Names(keep) = i {
                self.prune(h.as_ref(), keep);
            }
        }
        all
    }

    /// Per-resource versions of what is accepted, for a delta reconnect.
    fn resource_versions(&self, h: &dyn ResourceType) -> HashMap<String, String> {
        let mut st = self.lock();
        let map = h.accepted(&mut st);
        map.names()
            .into_iter()
            .filter_map(|n| Some((n.clone(), map.version_mut(&n)?.clone())))
            .collect()
    }

    pub(super) async fn sotw(
        self: Arc<Self>,
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> Result<bool, String> {
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
        let mut limiter = self.limiter();
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
        // In the registry's order (Envoy's): clusters, their endpoints, listeners.
        let mut interests = self.interests();
        for (h, interest) in self.types.iter().zip(&interests) {
            let names = match interest {
                Interest::Off => continue,
                Interest::Wildcard => vec![],
                Interest::Names(n) if n.is_empty() => continue,
                Interest::Names(n) => n.iter().cloned().collect(),
            };
            let t = h.type_url();
            limiter.admit().await;
            let _ = tx.send(request(t, v(t), names, String::new(), None)).await;
        }
        let mut stream = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("open ADS stream: {e}"))?
            .into_inner();
        let mut got_any = false;
        let mut nonces: HashMap<String, String> = HashMap::new();
        loop {
            let next = tokio::select! {
                m = stream.message() => Some(m),
                // A route configuration no connection manager uses any more: unsubscribe.
                _ = self.listeners.routes.released() => None,
                // A secret no TLS context names any more: unsubscribe.
                _ = self.clusters.secrets().released() => None,
            };
            if let Some(m) = next {
                let mut resp: DiscoveryResponse = match m {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(got_any),
                    Err(e) => return Err(format!("ADS stream: {e}")),
                };
                got_any = true;
                self.delivered
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let t = resp.type_url.clone();
                // Moved, not copied: a large response is held once.
                let resources: Vec<(Option<String>, Any)> = std::mem::take(&mut resp.resources)
                    .into_iter()
                    .map(|a| (None, a))
                    .collect();
                let complete = self
                    .handler(&t)
                    .is_some_and(|h| h.interest(&self) == Interest::Wildcard);
                let applied = self.apply(&t, &resp.version_info, &resources, complete, &[]);
                nonces.insert(t.clone(), resp.nonce.clone());
                let version = if applied.errors.is_empty() {
                    resp.version_info.clone()
                } else {
                    self.lock().versions.get(&t).cloned().unwrap_or_default()
                };
                let names = self
                    .types
                    .iter()
                    .zip(&interests)
                    .find(|(h, _)| h.type_url() == t)
                    .and_then(|(_, i)| match i {
                        Interest::Names(n) => Some(n.iter().cloned().collect()),
                        _ => None,
                    })
                    .unwrap_or_default();
                let ack = request(
                    &t,
                    version,
                    names,
                    resp.nonce.clone(),
                    applied.error_detail(),
                );
                limiter.admit().await;
                if tx.send(ack).await.is_err() {
                    return Ok(true);
                }
            }
            // New or removed clusters change the EDS subscription (routes will change RDS's,
            // and so on): re-request every named type whose names changed.
            let now = self.interests();
            for ((h, before), after) in self.types.iter().zip(&interests).zip(&now) {
                let Interest::Names(names) = after else {
                    continue;
                };
                if before == after {
                    continue;
                }
                let t = h.type_url();
                let version = self.lock().versions.get(t).cloned().unwrap_or_default();
                let nonce = nonces.get(t).cloned().unwrap_or_default();
                limiter.admit().await;
                let _ = tx
                    .send(request(
                        t,
                        version,
                        names.iter().cloned().collect(),
                        nonce,
                        None,
                    ))
                    .await;
            }
            interests = now;
        }
    }

    pub(super) async fn delta(
        self: Arc<Self>,
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    ) -> Result<bool, String> {
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
        let mut limiter = self.limiter();
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
        let mut interests = self.interests();
        for (h, interest) in self.types.iter().zip(&interests) {
            let names = match interest {
                Interest::Off => continue,
                Interest::Wildcard => vec!["*".to_string()],
                Interest::Names(n) if n.is_empty() => continue,
                Interest::Names(n) => n.iter().cloned().collect(),
            };
            let mut r = request(h.type_url());
            r.resource_names_subscribe = names;
            // On reconnect, tell the server what we have so it sends only what changed.
            r.initial_resource_versions = self.resource_versions(h.as_ref());
            limiter.admit().await;
            let _ = tx.send(r).await;
        }
        let mut stream = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("open delta ADS stream: {e}"))?
            .into_inner();
        let mut got_any = false;
        loop {
            let next = tokio::select! {
                m = stream.message() => Some(m),
                _ = self.listeners.routes.released() => None,
                // A secret no TLS context names any more: unsubscribe.
                _ = self.clusters.secrets().released() => None,
            };
            if let Some(m) = next {
                let mut resp: DeltaDiscoveryResponse = match m {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(got_any),
                    Err(e) => return Err(format!("delta ADS stream: {e}")),
                };
                got_any = true;
                self.delivered
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let t = resp.type_url.clone();
                let resources: Vec<(Option<String>, Any)> = resp
                    .resources
                    .iter_mut()
                    .filter_map(|r| r.resource.take().map(|a| (Some(r.name.clone()), a)))
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
                limiter.admit().await;
                if tx.send(ack).await.is_err() {
                    return Ok(true);
                }
            }
            let now = self.interests();
            for ((h, before), after) in self.types.iter().zip(&interests).zip(&now) {
                let (Interest::Names(old), Interest::Names(new)) = (before, after) else {
                    continue;
                };
                if old == new {
                    continue;
                }
                let mut r = request(h.type_url());
                r.resource_names_subscribe = new.difference(old).cloned().collect();
                r.resource_names_unsubscribe = old.difference(new).cloned().collect();
                limiter.admit().await;
                let _ = tx.send(r).await;
            }
            interests = now;
        }
    }

    /// Runs until `stop` resolves: connect, stream, reconnect with backoff.
    pub async fn run(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        self.start_secret_timers();
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
        if self.load_cache() {
            // The cache is the last good configuration: serve it as it is, without waiting for
            // endpoints it did not have (the control plane may be down). Secrets are never
            // cached (private keys): a cluster whose TLS client waits for SDS secrets keeps
            // readiness waiting, up to its initial_fetch_timeout — a successor must not take
            // over with TLS clients that refuse every connection.
            let clusters: Vec<String> = self
                .init_targets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .filter(|k| k.starts_with("cluster:"))
                .cloned()
                .collect();
            let secrets = self.clusters.secrets();
            for k in clusters {
                let name = &k["cluster:".len()..];
                let needs_secrets = self.clusters.get(name).is_some_and(|c| {
                    super::secrets::cluster_sds_names(&c.config)
                        .iter()
                        .any(|(n, _)| !secrets.slot(n).has_value())
                });
                if !needs_secrets {
                    self.init_done(&k);
                }
            }
        }
        let mut attempt: u32 = 0;
        let mut stream_log = log_limit::LogLimit::default();
        loop {
            let started = tokio::time::Instant::now();
            self.delivered
                .store(false, std::sync::atomic::Ordering::Relaxed);
            let result = tokio::select! {
                r = self.clone().session() => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            self.stats.connected_state.set(0);
            self.lock().connected = false;
            let delivered = self.delivered.load(std::sync::atomic::Ordering::Relaxed);
            if resets_backoff(delivered, started.elapsed()) {
                attempt = 0;
            }
            match result {
                Ok(_) => {}
                Err(e) => {
                    for h in &self.types {
                        if h.interest(&self) == Interest::Wildcard {
                            h.stats().update_failure.inc();
                        }
                    }
                    if let Some(suppressed) = stream_log.allow(tokio::time::Instant::now()) {
                        tracing::warn!(error = %e, suppressed, "xDS stream failed; serving the last good configuration");
                    }
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
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", host.address))
            .map_err(|e| e.to_string())?
            .connect_timeout(cluster.config.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        // TLS to the control plane goes through the cluster's own transport socket (the same
        // TLS client, certificates and rotation as any cluster), offering ALPN h2.
        let channel = match cluster.tls_clients().next().is_some() {
            true => {
                endpoint
                    .connect_with_connector(ClusterTransport {
                        cluster: cluster.clone(),
                        host: host.clone(),
                    })
                    .await
            }
            false => endpoint.connect().await,
        }
        .map_err(|e| format!("connect {}: {}", host.address, error_chain(&e)))?;
        let client =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
        tracing::info!(control_plane = %host.address, api = ?self.cfg.api, "connected to the control plane");
        // Connected as soon as the stream can be opened, as Envoy counts it: a server (grpcio,
        // for one) may send no response headers until it has something to say, and a delta
        // server with nothing new would otherwise look disconnected.
        self.connected();
        match self.cfg.api {
            XdsApi::Sotw => self.sotw(client).await,
            XdsApi::Delta => self.delta(client).await,
        }
    }

    fn limiter(&self) -> super::rate_limit::RequestLimiter {
        super::rate_limit::RequestLimiter::new(
            self.cfg.rate_limit,
            self.stats.rate_limit_enforced.clone(),
            self.stats.pending_requests.clone(),
        )
    }

    fn connected(&self) {
        self.stats.connected_state.set(1);
        self.lock().connected = true;
    }
}

/// How long a stream must have stayed up (having delivered a response) before its end resets
/// the reconnect backoff.
const HEALTHY_STREAM: Duration = Duration::from_secs(30);

/// Whether a finished stream resets the backoff: only one that delivered a response and stayed
/// up `HEALTHY_STREAM`. A control plane that answers once and then drops the stream (or fails
/// at once) is retried with a growing delay, not twice a second forever.
fn resets_backoff(delivered: bool, lived: Duration) -> bool {
    delivered && lived >= HEALTHY_STREAM
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn only_a_stream_that_stayed_up_and_delivered_resets_the_backoff() {
        let s = Duration::from_secs;
        assert!(
            !resets_backoff(true, s(1)),
            "one response, then dropped at once"
        );
        assert!(
            !resets_backoff(false, s(120)),
            "up for long, but never answered"
        );
        assert!(resets_backoff(true, s(30)));
        assert!(resets_backoff(true, s(3600)));
    }
}

/// Connects tonic's channel through a cluster's transport (TCP, then its TLS).
#[derive(Clone)]
struct ClusterTransport {
    cluster: Arc<crate::upstream::Cluster>,
    host: Arc<crate::upstream::Host>,
}

impl tower_service::Service<http::Uri> for ClusterTransport {
    type Response = hyper_util::rt::TokioIo<crate::transport::Stream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (cluster, host) = (self.cluster.clone(), self.host.clone());
        Box::pin(async move {
            cluster
                .open(&host, &["h2"], None)
                .await
                .map(hyper_util::rt::TokioIo::new)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
    }
}
