//! What a priority level's balancer needs beyond its hosts: the cluster's `common_lb_config`
//! (panic threshold, locality-weighted or zone-aware balancing) and, for zone-aware routing,
//! the local zone's share of the local cluster. Both are computed when a host set is built,
//! off the data path; a pick reads what was precomputed (a random number and a comparison).
//!
//! Zone-aware routing follows Envoy's algorithm: for priority 0, with at least two
//! localities of usable hosts, the local one among them, and at least `min_cluster_size`
//! usable hosts, compare the local zone's share of the *upstream* cluster's usable hosts with
//! its share of the *local* cluster's (`cluster_manager.local_cluster_name`, the cluster of
//! the workloads this node serves). When the upstream share is at least the local one, every
//! request stays in the zone (`lb_zone_routing_all_directly`); otherwise the zone keeps
//! upstream/local of the requests (`lb_zone_routing_sampled`) and the rest go to the other
//! zones in proportion to their spare capacity, upstream share minus local share
//! (`lb_zone_routing_cross_zone`).

use super::host::{Health, Host};
use super::lb::{Group, Weights};
use crate::config::{CommonLb, LbPolicy, Locality, LocalityLb};
use crate::stats::{Counter, Scope};
use std::sync::{Arc, Mutex, Weak};

/// Basis points: the unit of Envoy's locality percentages.
const BP: u64 = 10_000;

/// Everything a host set is balanced by, besides its hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct Balancing {
    pub policy: LbPolicy,
    pub common: CommonLb,
    /// The local zone as the local cluster saw it when the set was built.
    pub local: Option<Arc<LocalZone>>,
}

impl Balancing {
    /// A policy with Envoy's defaults for the rest (tests, benchmarks).
    pub fn of(policy: LbPolicy) -> Arc<Self> {
        Arc::new(Self {
            policy,
            common: CommonLb::default(),
            local: None,
        })
    }
}

/// The local cluster, by locality: how many of its hosts are usable in each.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocalZone {
    /// This node's locality (`node.locality`, `--service-zone`).
    pub locality: Locality,
    /// Usable hosts of the local cluster per locality.
    pub usable: Vec<(Locality, u64)>,
    /// All hosts of the local cluster.
    pub total: u64,
}

impl LocalZone {
    fn usable_total(&self) -> u64 {
        self.usable.iter().map(|(_, n)| n).sum()
    }
}

/// The node's locality, the local cluster's name, and what it looks like now; the clusters
/// balancing zone-aware are rebuilt when it changes.
#[derive(Debug, Default)]
pub struct Zones {
    locality: Locality,
    local_cluster: Option<String>,
    current: Mutex<Option<Arc<LocalZone>>>,
    /// Zone-aware clusters, rebuilt when the local cluster changes.
    subscribers: Mutex<Vec<Weak<super::Cluster>>>,
}

impl Zones {
    pub fn new(locality: Locality, local_cluster: Option<String>) -> Self {
        Self {
            locality,
            local_cluster,
            ..Default::default()
        }
    }

    pub fn current(&self) -> Option<Arc<LocalZone>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn local_cluster(&self) -> Option<&str> {
        self.local_cluster.as_deref()
    }

    pub fn is_local_cluster(&self, name: &str) -> bool {
        self.local_cluster.as_deref() == Some(name)
    }

    pub fn subscribe(&self, c: &Arc<super::Cluster>) {
        let mut s = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|w| w.strong_count() > 0);
        s.push(Arc::downgrade(c));
    }

    /// The local cluster published `hosts`: when what zone-aware routing reads changed, the
    /// subscribed clusters rebuild their balancers.
    pub fn local_hosts_changed(&self, hosts: &[Arc<Host>]) {
        let mut usable: Vec<(Locality, u64)> = Vec::new();
        let eligible = hosts.iter().filter(|h| !h.excluded());
        for h in eligible.clone().filter(|h| h.health() != Health::Unhealthy) {
            match usable.iter_mut().find(|(l, _)| *l == h.locality) {
                Some((_, n)) => *n += 1,
                None => usable.push((h.locality.clone(), 1)),
            }
        }
        let zone = LocalZone {
            locality: self.locality.clone(),
            usable,
            total: eligible.count() as u64,
        };
        {
            let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            if cur.as_deref() == Some(&zone) {
                return;
            }
            *cur = Some(Arc::new(zone));
        }
        let subscribers: Vec<Arc<super::Cluster>> = {
            let mut s = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            s.retain(|w| w.strong_count() > 0);
            s.iter().filter_map(Weak::upgrade).collect()
        };
        for c in subscribers {
            c.hosts_health_changed();
        }
    }
}

/// `cluster.<name>.lb_*`: panic and zone routing, counted per pick.
#[derive(Debug)]
pub struct LbStats {
    pub healthy_panic: Arc<Counter>,
    pub zone_routing_all_directly: Arc<Counter>,
    pub zone_routing_sampled: Arc<Counter>,
    pub zone_routing_cross_zone: Arc<Counter>,
    pub zone_no_capacity_left: Arc<Counter>,
    pub zone_cluster_too_small: Arc<Counter>,
    pub local_cluster_not_ok: Arc<Counter>,
}

impl LbStats {
    pub fn new(s: &Scope) -> Self {
        Self {
            healthy_panic: s.counter("lb_healthy_panic"),
            zone_routing_all_directly: s.counter("lb_zone_routing_all_directly"),
            zone_routing_sampled: s.counter("lb_zone_routing_sampled"),
            zone_routing_cross_zone: s.counter("lb_zone_routing_cross_zone"),
            zone_no_capacity_left: s.counter("lb_zone_no_capacity_left"),
            zone_cluster_too_small: s.counter("lb_zone_cluster_too_small"),
            local_cluster_not_ok: s.counter("lb_local_cluster_not_ok"),
        }
    }

    /// Stats no pick will count (unit tests, benchmarks).
    pub fn detached() -> Self {
        Self::new(&crate::stats::Store::new().root_scope("detached"))
    }
}

/// Why zone-aware routing does not apply to a level right now (counted per pick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneSkip {
    /// No local cluster, the local cluster in panic or without usable hosts, or no usable
    /// upstream host in the local zone.
    LocalClusterNotOk,
    /// Fewer usable hosts than `min_cluster_size`.
    TooSmall,
}

/// How a level shares its picks between its localities.
#[derive(Debug)]
pub enum Spread {
    /// Over all the level's hosts.
    Flat,
    /// Zone-aware routing is configured but does not apply: all hosts, and a stat.
    ZoneSkipped(ZoneSkip),
    /// `locality_weighted_lb_config`: a locality by effective weight, then a host in it.
    Weighted {
        groups: Vec<Group>,
        /// Running sum of the localities' effective weights (thousandths).
        cumulative: Vec<u64>,
    },
    /// Zone-aware: `groups[0]` is the local zone's.
    Zone {
        groups: Vec<Group>,
        /// Basis points of picks zone-aware routing applies to (`routing_enabled`).
        enabled: u64,
        /// Basis points of those kept in the local zone (10,000: all, directly).
        local: u64,
        /// Running sum of the other zones' spare capacity (basis points), by `groups`
        /// index (the local zone's is 0).
        residual: Vec<u64>,
    },
}

/// The hosts of `active`, grouped by locality in first-seen order, local first if given.
fn by_locality(active: &[Arc<Host>], first: Option<&Locality>) -> Vec<(Locality, Vec<Arc<Host>>)> {
    let mut groups: Vec<(Locality, Vec<Arc<Host>>)> = Vec::new();
    if let Some(l) = first {
        groups.push((l.clone(), Vec::new()));
    }
    for h in active {
        match groups.iter_mut().find(|(l, _)| *l == h.locality) {
            Some((_, v)) => v.push(h.clone()),
            None => groups.push((h.locality.clone(), vec![h.clone()])),
        }
    }
    groups
}

/// Envoy's overprovisioning factor, as in the priority loads.
const OVERPROVISIONING: f64 = 1.4;

/// The spread of one level: `active` are its usable hosts (healthy, or degraded), `level`
/// all the hosts of its priority.
pub fn spread(
    b: &Balancing,
    priority: u32,
    active: &[Arc<Host>],
    level: &[&Arc<Host>],
    weights: &Weights,
) -> Spread {
    match b.common.locality {
        LocalityLb::None => Spread::Flat,
        LocalityLb::Weighted => weighted(b.policy, active, level, weights),
        LocalityLb::ZoneAware {
            routing_enabled,
            min_cluster_size,
        } => {
            if priority != 0 {
                // As Envoy: zone-aware routing is for priority 0 only.
                return Spread::Flat;
            }
            zone_aware(b, active, routing_enabled, min_cluster_size, weights)
        }
    }
}

fn weighted(
    policy: LbPolicy,
    active: &[Arc<Host>],
    level: &[&Arc<Host>],
    weights: &Weights,
) -> Spread {
    let mut groups = Vec::new();
    let mut cumulative = Vec::new();
    let mut sum = 0u64;
    for (locality, hosts) in by_locality(active, None) {
        let all = level
            .iter()
            .filter(|h| h.locality == locality)
            .count()
            .max(1);
        let weight = hosts[0].locality_weight();
        // Envoy's effective weight: the locality's weight × its availability, capped at 1.
        let availability = (OVERPROVISIONING * hosts.len() as f64 / all as f64).min(1.0);
        let w = (f64::from(weight) * availability * 1000.0) as u64;
        if w == 0 {
            // A locality without a weight gets no traffic (as Envoy).
            continue;
        }
        sum += w;
        cumulative.push(sum);
        groups.push(Group::new(policy, hosts, weights));
    }
    if groups.is_empty() {
        return Spread::Flat;
    }
    Spread::Weighted { groups, cumulative }
}

fn zone_aware(
    b: &Balancing,
    active: &[Arc<Host>],
    enabled: f64,
    min_size: u64,
    weights: &Weights,
) -> Spread {
    let Some(local) = b.local.as_deref() else {
        return Spread::ZoneSkipped(ZoneSkip::LocalClusterNotOk);
    };
    let groups = by_locality(active, Some(&local.locality));
    if groups.len() < 2 {
        // A single zone: nothing to choose.
        return Spread::Flat;
    }
    let local_usable = local.usable_total();
    let local_panic = local.total == 0
        || (local_usable as f64 * 100.0 / local.total as f64) < b.common.healthy_panic_threshold;
    if groups[0].1.is_empty() || local_usable == 0 || local_panic {
        return Spread::ZoneSkipped(ZoneSkip::LocalClusterNotOk);
    }
    if (active.len() as u64) < min_size {
        return Spread::ZoneSkipped(ZoneSkip::TooSmall);
    }
    // Each zone's share of the local cluster and of the upstream's usable hosts.
    let upstream_total = active.len() as u64;
    let shares: Vec<(u64, u64)> = groups
        .iter()
        .map(|(l, hosts)| {
            let local_n = local
                .usable
                .iter()
                .find(|(x, _)| x == l)
                .map_or(0, |(_, n)| *n);
            (
                BP * local_n / local_usable,
                BP * hosts.len() as u64 / upstream_total,
            )
        })
        .collect();
    let (local_share, upstream_share) = shares[0];
    let keep = if upstream_share >= local_share {
        BP
    } else {
        upstream_share * BP / local_share.max(1)
    };
    let mut residual = Vec::with_capacity(groups.len());
    let mut sum = 0;
    for (i, (l, u)) in shares.iter().enumerate() {
        if i > 0 && u > l {
            sum += u - l;
        }
        residual.push(sum);
    }
    let policy = b.policy;
    Spread::Zone {
        groups: groups
            .into_iter()
            .map(|(_, hosts)| Group::new(policy, hosts, weights))
            .collect(),
        enabled: (enabled * 100.0) as u64,
        local: keep,
        residual,
    }
}

impl Spread {
    /// The group a pick goes to: one of the spread's, or `all` (the whole level).
    pub fn choose<'a>(&'a self, all: &'a Group, stats: &LbStats) -> &'a Group {
        match self {
            Spread::Flat => all,
            Spread::ZoneSkipped(why) => {
                match why {
                    ZoneSkip::LocalClusterNotOk => stats.local_cluster_not_ok.inc(),
                    ZoneSkip::TooSmall => stats.zone_cluster_too_small.inc(),
                }
                all
            }
            Spread::Weighted { groups, cumulative } => {
                let total = *cumulative.last().unwrap_or(&1);
                let r = fastrand::u64(..total);
                &groups[cumulative.partition_point(|&c| c <= r)]
            }
            Spread::Zone {
                groups,
                enabled,
                local,
                residual,
            } => {
                if *enabled < BP && fastrand::u64(..BP) >= *enabled {
                    return all;
                }
                if *local >= BP {
                    stats.zone_routing_all_directly.inc();
                    return &groups[0];
                }
                if fastrand::u64(..BP) < *local {
                    stats.zone_routing_sampled.inc();
                    return &groups[0];
                }
                stats.zone_routing_cross_zone.inc();
                let spare = *residual.last().unwrap_or(&0);
                if spare == 0 {
                    // Rounding left no zone with spare capacity: any other zone.
                    stats.zone_no_capacity_left.inc();
                    return &groups[1 + fastrand::usize(..groups.len() - 1)];
                }
                let r = fastrand::u64(..spare);
                &groups[residual.partition_point(|&c| c <= r)]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthStatus;
    use crate::upstream::{HostSet, LbContext};
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicU64;

    fn zone(z: &str) -> Locality {
        Locality {
            region: "r".into(),
            zone: z.into(),
            sub_zone: String::new(),
        }
    }

    /// `n` hosts in zone `z` (ports `port0`…), `bad` of them unhealthy.
    fn hosts(z: &str, n: u16, bad: u16, port0: u16, weight: Option<u32>) -> Vec<Arc<Host>> {
        (0..n)
            .map(|i| {
                let health = if i < bad {
                    HealthStatus::Unhealthy
                } else {
                    HealthStatus::Healthy
                };
                Arc::new(
                    Host::new(
                        SocketAddr::from(([127, 0, 0, 1], port0 + i)),
                        String::new(),
                        0,
                        zone(z),
                        1,
                        health,
                    )
                    .with_locality_weight(weight),
                )
            })
            .collect()
    }

    fn balancing(locality: LocalityLb, local: Option<LocalZone>) -> Arc<Balancing> {
        Arc::new(Balancing {
            policy: LbPolicy::RoundRobin,
            common: CommonLb {
                locality,
                ..Default::default()
            },
            local: local.map(Arc::new),
        })
    }

    /// Picks per zone (by port range: zone a from 1000, b from 2000, c from 3000).
    fn per_zone(set: &HostSet, stats: &LbStats, picks: usize) -> BTreeMap<u16, usize> {
        let cursor = AtomicU64::new(0);
        let mut m = BTreeMap::new();
        for _ in 0..picks {
            let h = set.pick(&cursor, &LbContext::default(), stats).unwrap();
            *m.entry(h.address.port() / 1000).or_default() += 1;
        }
        m
    }

    fn local(a: u64, b: u64, c: u64) -> LocalZone {
        LocalZone {
            locality: zone("a"),
            usable: vec![(zone("a"), a), (zone("b"), b), (zone("c"), c)],
            total: a + b + c,
        }
    }

    const ZONE_AWARE: LocalityLb = LocalityLb::ZoneAware {
        routing_enabled: 100.0,
        min_cluster_size: 6,
    };

    #[test]
    fn zone_aware_keeps_everything_local_when_the_zone_has_capacity() {
        // Upstream: a has 4 of 10 hosts (40 %); local cluster: a has 2 of 6 (33 %).
        let all = [
            hosts("a", 4, 0, 1000, None),
            hosts("b", 3, 0, 2000, None),
            hosts("c", 3, 0, 3000, None),
        ]
        .concat();
        let set = HostSet::build(&balancing(ZONE_AWARE, Some(local(2, 2, 2))), all);
        let stats = LbStats::detached();
        let m = per_zone(&set, &stats, 1000);
        assert_eq!(m.get(&1), Some(&1000), "{m:?}");
        assert_eq!(stats.zone_routing_all_directly.value(), 1000);
    }

    #[test]
    fn zone_aware_spills_over_in_proportion_to_spare_capacity() {
        // Upstream: a 2 of 10 (20 %), b 5 (50 %), c 3 (30 %). Local: a 50 %, b 25 %, c 25 %.
        // a keeps 20/50 = 40 % of its requests; the other 60 % go to b (spare 25 %) and c
        // (spare 5 %): 50 % and 10 % of all requests.
        let all = [
            hosts("a", 2, 0, 1000, None),
            hosts("b", 5, 0, 2000, None),
            hosts("c", 3, 0, 3000, None),
        ]
        .concat();
        let set = HostSet::build(&balancing(ZONE_AWARE, Some(local(2, 1, 1))), all);
        let stats = LbStats::detached();
        let n = 20_000;
        let m = per_zone(&set, &stats, n);
        let share = |z: u16| m.get(&z).copied().unwrap_or(0) as f64 / n as f64;
        assert!((share(1) - 0.4).abs() < 0.02, "{m:?}");
        assert!((share(2) - 0.5).abs() < 0.02, "{m:?}");
        assert!((share(3) - 0.1).abs() < 0.02, "{m:?}");
        assert_eq!(
            stats.zone_routing_sampled.value() + stats.zone_routing_cross_zone.value(),
            n as u64
        );
        assert_eq!(stats.zone_routing_all_directly.value(), 0);
    }

    #[test]
    fn zone_aware_steps_aside_for_small_clusters_and_a_missing_local_cluster() {
        let all = [hosts("a", 2, 0, 1000, None), hosts("b", 3, 0, 2000, None)].concat();
        // Five usable hosts, under min_cluster_size 6: all hosts, counted.
        let set = HostSet::build(&balancing(ZONE_AWARE, Some(local(1, 1, 0))), all.clone());
        let stats = LbStats::detached();
        let m = per_zone(&set, &stats, 100);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(stats.zone_cluster_too_small.value(), 100);
        // No local cluster known.
        let set = HostSet::build(&balancing(ZONE_AWARE, None), all.clone());
        per_zone(&set, &stats, 10);
        assert_eq!(stats.local_cluster_not_ok.value(), 10);
        // The local cluster in panic (1 usable of 4 at the default 50 %).
        let mut l = local(1, 0, 0);
        l.total = 4;
        let set = HostSet::build(&balancing(ZONE_AWARE, Some(l)), all);
        per_zone(&set, &stats, 10);
        assert_eq!(stats.local_cluster_not_ok.value(), 20);
    }

    #[test]
    fn locality_weights_share_traffic_scaled_by_availability() {
        // a weight 1, b weight 3; c has no weight (no traffic). b has 2 of 4 hosts usable:
        // availability 1.4 × 50 % = 70 %, effective weight 2.1 against a's 1.
        let all = [
            hosts("a", 2, 0, 1000, Some(1)),
            hosts("b", 4, 2, 2000, Some(3)),
            hosts("c", 2, 0, 3000, None),
        ]
        .concat();
        let set = HostSet::build(&balancing(LocalityLb::Weighted, None), all);
        let stats = LbStats::detached();
        let n = 31_000;
        let m = per_zone(&set, &stats, n);
        assert_eq!(m.get(&3), None, "{m:?}");
        let a = m[&1] as f64 / n as f64;
        assert!((a - 1.0 / 3.1).abs() < 0.02, "{m:?}");
        // Only b's usable hosts (the first two are the unhealthy ones).
        let cursor = AtomicU64::new(0);
        for _ in 0..200 {
            let p = set
                .pick(&cursor, &LbContext::default(), &stats)
                .unwrap()
                .address
                .port();
            assert!(p != 2000 && p != 2001, "{p}");
        }
    }

    #[test]
    fn below_the_panic_threshold_a_level_uses_all_its_hosts() {
        // 4 of 10 usable (40 % < 50 %): panic, every host picked, counted.
        let all = hosts("a", 10, 6, 1000, None);
        let set = HostSet::build(&balancing(LocalityLb::None, None), all.clone());
        let stats = LbStats::detached();
        let cursor = AtomicU64::new(0);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let h = set.pick(&cursor, &LbContext::default(), &stats).unwrap();
            seen.insert(h.address.port());
        }
        assert_eq!(seen.len(), 10);
        assert_eq!(stats.healthy_panic.value(), 100);
        // 6 of 10 usable: no panic, only usable hosts.
        let all = hosts("a", 10, 4, 1000, None);
        let set = HostSet::build(&balancing(LocalityLb::None, None), all.clone());
        for _ in 0..100 {
            let h = set.pick(&cursor, &LbContext::default(), &stats).unwrap();
            assert!(h.address.port() >= 1004);
        }
        assert_eq!(stats.healthy_panic.value(), 100);
        // A threshold of 70 %: panic again; with fail_traffic_on_panic, no host at all.
        let mut b = (*balancing(LocalityLb::None, None)).clone();
        b.common.healthy_panic_threshold = 70.0;
        let set = HostSet::build(&Arc::new(b.clone()), all.clone());
        assert!(set.pick(&cursor, &LbContext::default(), &stats).is_some());
        assert_eq!(stats.healthy_panic.value(), 101);
        b.common.fail_traffic_on_panic = true;
        let set = HostSet::build(&Arc::new(b), all);
        assert!(set.pick(&cursor, &LbContext::default(), &stats).is_none());
    }
}
