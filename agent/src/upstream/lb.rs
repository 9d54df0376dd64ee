//! Host sets and load-balancing policies.
//!
//! A `HostSet` is immutable; everything a pick needs is precomputed when it is built: the
//! priority level in use (the lowest with routable hosts), a smooth weighted round-robin
//! schedule, and cumulative weights for weighted random. A pick is an atomic increment or a
//! thread-local random number: no locks on the data path.

use super::{Host, HostStats};
use crate::config::{self, Host as CfgHost, LbPolicy};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Longest precomputed round-robin schedule; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 1 << 16;
/// Host count above which no schedule is precomputed.
const MAX_SCHEDULED_HOSTS: usize = 256;

#[derive(Debug)]
pub struct HostSet {
    policy: LbPolicy,
    all: Vec<Arc<Host>>,
    /// Routable hosts of the lowest priority that has any.
    active: Vec<Arc<Host>>,
    /// Smooth weighted round robin over `active`; empty when all weights are equal.
    schedule: Vec<u32>,
    /// Running sum of weights of `active`, for weighted random.
    cumulative: Vec<u64>,
}

impl HostSet {
    pub fn empty(policy: LbPolicy) -> Self {
        Self::build(policy, Vec::new())
    }

    pub fn from_static(c: &config::Cluster) -> Self {
        Self::from_localities(c.lb_policy, &c.localities)
    }

    /// Hosts of IP endpoints (STATIC clusters, EDS assignments).
    pub fn from_localities(policy: LbPolicy, localities: &[config::LocalityEndpoints]) -> Self {
        let mut hosts = Vec::new();
        for l in localities {
            for e in &l.endpoints {
                let CfgHost::Ip(ip) = e.host else { continue };
                hosts.push(Arc::new(Host {
                    address: SocketAddr::new(ip, e.port),
                    hostname: e.hostname.clone().unwrap_or_default(),
                    weight: e.weight,
                    priority: l.priority,
                    locality: l.locality.clone(),
                    health_status: e.health_status,
                    stats: HostStats::default(),
                }));
            }
        }
        Self::build(policy, hosts)
    }

    pub fn build(policy: LbPolicy, all: Vec<Arc<Host>>) -> Self {
        let level = all
            .iter()
            .filter(|h| h.routable())
            .map(|h| h.priority)
            .min();
        let active: Vec<Arc<Host>> = match level {
            Some(p) => all
                .iter()
                .filter(|h| h.routable() && h.priority == p)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        let weights: Vec<u64> = active.iter().map(|h| h.weight.max(1) as u64).collect();
        let schedule = smooth_wrr_schedule(&weights);
        let mut sum = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                sum += w;
                sum
            })
            .collect();
        Self {
            policy,
            all,
            active,
            schedule,
            cumulative,
        }
    }

    pub fn all(&self) -> &[Arc<Host>] {
        &self.all
    }

    /// Reuses the `Host` (and so its stats) of hosts present in `old` with the same attributes.
    pub(crate) fn carry_stats_from(&mut self, old: &HostSet) {
        let by_addr: std::collections::HashMap<SocketAddr, Vec<&Arc<Host>>> =
            old.all.iter().fold(Default::default(), |mut m, h| {
                m.entry(h.address).or_insert_with(Vec::new).push(h);
                m
            });
        let mut changed = false;
        for h in self.all.iter_mut() {
            if let Some(o) = by_addr
                .get(&h.address)
                .and_then(|v| v.iter().find(|o| same_host(o, h)))
            {
                *h = (*o).clone();
                changed = true;
            }
        }
        if changed {
            *self = Self::build(self.policy, std::mem::take(&mut self.all));
        }
    }

    pub(crate) fn same_members(&self, other: &HostSet) -> bool {
        if self.all.len() != other.all.len() {
            return false;
        }
        let theirs: std::collections::HashMap<SocketAddr, Vec<&Arc<Host>>> =
            other.all.iter().fold(Default::default(), |mut m, h| {
                m.entry(h.address).or_insert_with(Vec::new).push(h);
                m
            });
        self.all.iter().all(|h| {
            theirs
                .get(&h.address)
                .is_some_and(|v| v.iter().any(|o| same_host(o, h)))
        })
    }

    pub fn pick(&self, cursor: &AtomicU64) -> Option<Arc<Host>> {
        let n = self.active.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(self.active[0].clone());
        }
        let i = match self.policy {
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided => {
                let c = cursor.fetch_add(1, Ordering::Relaxed);
                let total = *self.cumulative.last().unwrap_or(&0);
                if self.schedule.is_empty() && total != n as u64 {
                    // Unequal weights, many hosts: walk the cumulative weights.
                    let r = c % total.max(1);
                    self.cumulative.partition_point(|&x| x <= r)
                } else if self.schedule.is_empty() {
                    (c % n as u64) as usize
                } else {
                    self.schedule[(c % self.schedule.len() as u64) as usize] as usize
                }
            }
            LbPolicy::Random => self.weighted_random(),
            LbPolicy::LeastRequest => {
                // Power of two choices, comparing active connections relative to weight.
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let load = |i: usize| {
                    let h = &self.active[i];
                    (h.stats.cx_active.load(Ordering::Relaxed) + 1) as u128 * 1_000_000
                        / h.weight.max(1) as u128
                };
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
        };
        Some(self.active[i].clone())
    }

    fn weighted_random(&self) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1);
        let r = fastrand::u64(..total);
        self.cumulative.partition_point(|&c| c <= r)
    }
}

fn same_host(a: &Host, b: &Host) -> bool {
    a.address == b.address
        && a.weight == b.weight
        && a.priority == b.priority
        && a.hostname == b.hostname
        && a.health_status == b.health_status
        && a.locality == b.locality
}

/// Smooth weighted round robin (as nginx's): interleaves hosts in proportion to weight.
/// Returns an empty schedule when weights are all equal (plain rotation is then exact).
fn smooth_wrr_schedule(weights: &[u64]) -> Vec<u32> {
    // Building costs O(total weight × hosts): beyond this many hosts, weighted round robin
    // walks the cumulative weights instead (same proportions, less interleaving).
    if weights.windows(2).all(|w| w[0] == w[1]) || weights.len() > MAX_SCHEDULED_HOSTS {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd);
    let mut w: Vec<u64> = weights.iter().map(|x| x / g.max(1)).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        let scale = total as f64 / MAX_SCHEDULE as f64;
        for x in w.iter_mut() {
            *x = ((*x as f64 / scale) as u64).max(1);
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HealthStatus, Locality};

    fn host(port: u16, weight: u32, priority: u32, health: HealthStatus) -> Arc<Host> {
        Arc::new(Host {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            hostname: String::new(),
            weight,
            priority,
            locality: Locality::default(),
            health_status: health,
            stats: HostStats::default(),
        })
    }

    fn counts(set: &HostSet, picks: usize) -> std::collections::BTreeMap<u16, usize> {
        let cursor = AtomicU64::new(0);
        let mut m = std::collections::BTreeMap::new();
        for _ in 0..picks {
            *m.entry(set.pick(&cursor).unwrap().address.port())
                .or_default() += 1;
        }
        m
    }

    #[test]
    fn round_robin_follows_weights_exactly_and_interleaves() {
        let set = HostSet::build(
            LbPolicy::RoundRobin,
            vec![
                host(1, 3, 0, HealthStatus::Unknown),
                host(2, 1, 0, HealthStatus::Unknown),
            ],
        );
        let c = counts(&set, 400);
        assert_eq!(c[&1], 300);
        assert_eq!(c[&2], 100);
        assert_eq!(smooth_wrr_schedule(&[2, 1]), vec![0, 1, 0]);
    }

    #[test]
    fn unhealthy_hosts_and_higher_priorities_are_skipped() {
        let set = HostSet::build(
            LbPolicy::RoundRobin,
            vec![
                host(1, 1, 0, HealthStatus::Unhealthy),
                host(2, 1, 0, HealthStatus::Healthy),
                host(3, 1, 1, HealthStatus::Healthy),
            ],
        );
        assert_eq!(
            counts(&set, 10).keys().copied().collect::<Vec<_>>(),
            vec![2]
        );
        let set = HostSet::build(
            LbPolicy::RoundRobin,
            vec![
                host(1, 1, 0, HealthStatus::Draining),
                host(3, 1, 1, HealthStatus::Unknown),
            ],
        );
        assert_eq!(
            counts(&set, 10).keys().copied().collect::<Vec<_>>(),
            vec![3]
        );
        assert!(
            HostSet::build(LbPolicy::Random, vec![host(1, 1, 0, HealthStatus::Timeout)])
                .pick(&AtomicU64::new(0))
                .is_none()
        );
    }

    #[test]
    fn random_and_least_request_reach_every_host() {
        let hosts = vec![
            host(1, 1, 0, HealthStatus::Unknown),
            host(2, 1, 0, HealthStatus::Unknown),
        ];
        for policy in [LbPolicy::Random, LbPolicy::LeastRequest] {
            let c = counts(&HostSet::build(policy, hosts.clone()), 1000);
            assert!(c[&1] > 300 && c[&2] > 300, "{policy:?}: {c:?}");
        }
    }

    #[test]
    fn least_request_prefers_idle_host() {
        let busy = host(1, 1, 0, HealthStatus::Unknown);
        busy.stats.cx_active.store(100, Ordering::Relaxed);
        let set = HostSet::build(
            LbPolicy::LeastRequest,
            vec![busy, host(2, 1, 0, HealthStatus::Unknown)],
        );
        assert_eq!(counts(&set, 100)[&2], 100);
    }

    #[test]
    fn huge_weights_are_scaled_into_a_bounded_schedule() {
        let s = smooth_wrr_schedule(&[u32::MAX as u64, 1, 7]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 2);
        assert!(s.contains(&1) && s.contains(&2));
    }
}
