//! One ADS stream, state of the world (`sotw`) or incremental (`delta`): the first requests in
//! the registry's order, ACK/NACK of each response, and re-subscription when the names a type
//! needs change (EDS follows the clusters).

use super::resources::{Interest, ResourceType};
use super::XdsClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

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
            let _ = tx.send(request(t, v(t), names, String::new(), None)).await;
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
            self.delivered
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let t = resp.type_url.clone();
            let resources: Vec<(Option<String>, Any)> =
                resp.resources.iter().map(|a| (None, a.clone())).collect();
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
            if tx.send(ack).await.is_err() {
                return Ok(true);
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
            self.delivered
                .store(true, std::sync::atomic::Ordering::Relaxed);
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
                let _ = tx.send(r).await;
            }
            interests = now;
        }
    }
}
