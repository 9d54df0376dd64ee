//! Host sets and load-balancing policies.
//!
//! A `HostSet` is immutable; everything a pick needs is precomputed when it is built: the
//! share of traffic of each priority level (Envoy's priority load with the default
//! overprovisioning factor 1.4: a level keeps all traffic while at least 1/1.4 ≈ 71 % of its
//! hosts are routable, and spills the rest to the next level), and per level a smooth
//! weighted round-robin schedule and cumulative weights for weighted random, and how the
//! level spreads over its localities (`locality.rs`). A level with too few usable hosts is in
//! panic (`healthy_panic_threshold`) and balances over all its hosts, as Envoy. A pick is an
//! atomic increment or a thread-local random number: no locks on the data path.

use super::host::{Health, Host};
use super::locality::{Balancing, LbStats, Spread};
use super::LbContext;
use crate::config::{self, Host as CfgHost, LbPolicy};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest precomputed round-robin schedule; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 1 << 16;
/// Extra picks a retry makes to avoid hosts it already tried (Envoy's
/// host_selection_retry_max_attempts for the previous_hosts predicate).
const HOST_SELECTION_RETRIES: usize = 3;
/// Host count above which no schedule is precomputed.
const MAX_SCHEDULED_HOSTS: usize = 256;

/// Envoy's default overprovisioning factor, in percent.
const OVERPROVISIONING: u64 = 140;

#[derive(Debug)]
pub struct HostSet {
    policy: LbPolicy,
    all: Vec<Arc<Host>>,
    /// Priority levels that receive traffic, in priority order.
    levels: Vec<Level>,
    /// Running sum of the levels' loads (percent, the last is 100), for picking a level.
    level_load: Vec<u32>,
}

/// The healthy (or the degraded) routable hosts of one priority; in panic, all its hosts.
#[derive(Debug)]
struct Level {
    priority: u32,
    degraded: bool,
    /// Too few usable hosts: balances over all of them (`lb_healthy_panic`).
    panic: bool,
    group: Group,
    spread: Spread,
}

/// Hosts and what a pick over them needs, precomputed.
#[derive(Debug)]
pub struct Group {
    active: Vec<Arc<Host>>,
    /// Smooth weighted round robin over `active`; empty when all weights are equal.
    schedule: Vec<u32>,
    /// Running sum of weights of `active`, for weighted random.
    cumulative: Vec<u64>,
    /// RING_HASH and MAGLEV: the hash table over `active`, built with the level.
    hashed: Option<super::hash_lb::Table>,
}

/// The weights a set is built with: the hosts' own, or, while some host is in its slow
/// start window, all scaled by 1,000 and the starting hosts' by their ramp (Envoy's
/// `weight × max(min_weight_percent, (elapsed / window) ^ (1 / aggression))`).
pub struct Weights {
    slow_start: Option<(config::SlowStart, tokio::time::Instant)>,
}

impl Weights {
    fn new(b: &Balancing, hosts: &[Arc<Host>]) -> Self {
        let now = tokio::time::Instant::now();
        let slow_start = b.common.slow_start.filter(|ss| {
            hosts
                .iter()
                .any(|h| h.slow_start_since().is_some_and(|t| now - t < ss.window))
        });
        Self {
            slow_start: slow_start.map(|ss| (ss, now)),
        }
    }

    /// The hosts' own weights (tests, benchmarks).
    pub fn plain() -> Self {
        Self { slow_start: None }
    }

    pub fn of(&self, h: &Host) -> u64 {
        let w = u64::from(h.weight().max(1));
        let Some((ss, now)) = &self.slow_start else {
            return w;
        };
        let factor = match h.slow_start_since() {
            Some(t) if *now - t < ss.window && h.health() == Health::Healthy => {
                let elapsed = (*now - t).max(Duration::from_millis(1));
                let time = elapsed.as_secs_f64() / ss.window.as_secs_f64();
                let ramp = if ss.aggression == 1.0 {
                    time
                } else {
                    time.powf(1.0 / ss.aggression)
                };
                ramp.max(ss.min_weight_percent / 100.0).min(1.0)
            }
            _ => 1.0,
        };
        ((w as f64) * 1000.0 * factor).max(1.0) as u64
    }
}

impl Group {
    pub fn new(policy: LbPolicy, active: Vec<Arc<Host>>, weights: &Weights) -> Self {
        let weights: Vec<u64> = active.iter().map(|h| weights.of(h)).collect();
        let hashed = super::hash_lb::Table::build(policy, &active, &weights);
        let schedule = if hashed.is_some() {
            Vec::new()
        } else {
            smooth_wrr_schedule(&weights)
        };
        let mut sum = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                sum += w;
                sum
            })
            .collect();
        Self {
            active,
            schedule,
            cumulative,
            hashed,
        }
    }
}

/// Envoy's priority load. Per level, healthy availability is min(100 %, 1.4 × healthy /
/// total) and degraded availability min(100 % − healthy, 1.4 × degraded / total); healthy
/// availability is handed out first, level by level, then degraded; when the availabilities
/// sum to less than 100 % the loads are scaled up to fill it, and a level whose usable share
/// is below `panic_threshold` (percent; 0: never) is in panic: its load goes to all its hosts.
/// When every level is in panic (or none has a usable host), the load follows the levels'
/// host counts. Returns (priority, degraded, load %, panic) for the host groups that get
/// traffic. With panic mode off, availability that rounds to 0 while a host is usable (1 of
/// 150) does not drop traffic: the lowest usable level then takes it all.
fn priority_loads(all: &[&Arc<Host>], panic_threshold: f64) -> Vec<(u32, bool, u32, bool)> {
    #[derive(Default)]
    struct Count {
        healthy: u64,
        degraded: u64,
        total: u64,
    }
    let mut by_level: std::collections::BTreeMap<u32, Count> = Default::default();
    for h in all {
        let c = by_level.entry(h.priority).or_default();
        c.total += 1;
        match h.health() {
            Health::Degraded => c.degraded += 1,
            Health::Healthy => c.healthy += 1,
            Health::Unhealthy => {}
        }
    }
    let avail: Vec<(u32, u64, u64)> = by_level
        .iter()
        .map(|(p, c)| {
            let total = c.total.max(1);
            let healthy = (OVERPROVISIONING * c.healthy / total).min(100);
            let degraded = (OVERPROVISIONING * c.degraded / total).min(100 - healthy);
            (*p, healthy, degraded)
        })
        .collect();
    let total: u64 = avail.iter().map(|(_, h, d)| h + d).sum::<u64>().min(100);
    let in_panic = |c: &Count| {
        panic_threshold > 0.0
            && ((c.healthy + c.degraded) as f64 * 100.0 / c.total.max(1) as f64) < panic_threshold
    };
    if panic_threshold > 0.0
        && !all.is_empty()
        && (total == 0 || (total < 100 && by_level.values().all(in_panic)))
    {
        // Total panic: each level's share of the hosts.
        let n = all.len() as u64;
        let mut remaining = 100u64;
        let mut loads: Vec<(u32, bool, u32, bool)> = Vec::new();
        for (p, c) in &by_level {
            let load = (c.total * 100 / n).min(remaining);
            remaining -= load;
            if load > 0 {
                loads.push((*p, false, load as u32, true));
            }
        }
        if let Some(first) = loads.first_mut() {
            first.2 += remaining as u32;
        } else if let Some((p, _)) = by_level.iter().next() {
            loads.push((*p, false, 100, true));
        }
        return loads;
    }
    if total == 0 {
        let usable = by_level
            .iter()
            .find(|(_, c)| c.healthy + c.degraded > 0)
            .map(|(p, c)| (*p, c.healthy == 0, 100, false));
        return usable.into_iter().collect();
    }
    let mut remaining = 100u64;
    let mut loads: Vec<(u32, bool, u32, bool)> = Vec::new();
    let groups = avail
        .iter()
        .map(|(p, h, _)| (*p, false, *h))
        .chain(avail.iter().map(|(p, _, d)| (*p, true, *d)));
    for (p, degraded, a) in groups {
        let load = (a * 100 / total).min(remaining);
        remaining -= load;
        if load == 0 {
            continue;
        }
        let panic = total < 100 && by_level.get(&p).is_some_and(in_panic);
        if panic {
            // A level in panic is one group of all its hosts.
            if let Some(l) = loads.iter_mut().find(|l| l.0 == p) {
                l.2 += load as u32;
                continue;
            }
            loads.push((p, false, load as u32, true));
        } else {
            loads.push((p, degraded, load as u32, false));
        }
    }
    // Rounding leftovers go to the first group in use.
    if let Some(first) = loads.first_mut() {
        first.2 += remaining as u32;
    }
    loads
}

impl HostSet {
    pub fn empty(balancing: &Balancing) -> Self {
        Self::build(balancing, Vec::new())
    }

    /// The hosts of IP endpoints (STATIC clusters, EDS assignments).
    pub fn hosts_of(localities: &[config::LocalityEndpoints]) -> Vec<Arc<Host>> {
        let mut hosts = Vec::new();
        for l in localities {
            for e in &l.endpoints {
                let CfgHost::Ip(ip) = e.host else { continue };
                hosts.push(Arc::new(
                    Host::new(
                        SocketAddr::new(ip, e.port),
                        e.hostname.clone().unwrap_or_default(),
                        l.priority,
                        l.locality.clone(),
                        e.weight,
                        e.health_status,
                    )
                    .with_locality_weight(l.load_balancing_weight)
                    .with_canary(e.canary)
                    .with_socket_match(e.socket_match.clone()),
                ));
            }
        }
        hosts
    }

    pub fn build(balancing: &Balancing, all: Vec<Arc<Host>>) -> Self {
        let b = balancing;
        let mut levels = Vec::new();
        let mut level_load = Vec::new();
        let mut sum = 0;
        let eligible: Vec<&Arc<Host>> = all.iter().filter(|h| !h.excluded()).collect();
        let weights = Weights::new(b, &all);
        for (priority, degraded, load, panic) in
            priority_loads(&eligible, b.common.healthy_panic_threshold)
        {
            let level: Vec<&Arc<Host>> = eligible
                .iter()
                .filter(|h| h.priority == priority)
                .copied()
                .collect();
            let active: Vec<Arc<Host>> = if panic && b.common.fail_traffic_on_panic {
                Vec::new()
            } else if panic {
                level.iter().map(|h| (*h).clone()).collect()
            } else {
                level
                    .iter()
                    .filter(|h| {
                        let health = h.health();
                        health != Health::Unhealthy && (health == Health::Degraded) == degraded
                    })
                    .map(|h| (*h).clone())
                    .collect()
            };
            let spread = if panic {
                Spread::Flat
            } else {
                super::locality::spread(b, priority, &active, &level, &weights)
            };
            levels.push(Level {
                priority,
                degraded,
                panic,
                group: Group::new(b.policy, active, &weights),
                spread,
            });
            sum += load;
            level_load.push(sum);
        }
        Self {
            policy: balancing.policy,
            all,
            levels,
            level_load,
        }
    }

    /// Each host group in use — (priority, degraded) — and its share of traffic (percent).
    pub fn priority_loads(&self) -> Vec<(u32, bool, u32)> {
        let mut prev = 0;
        self.levels
            .iter()
            .zip(&self.level_load)
            .map(|(l, c)| {
                let load = c - prev;
                prev = *c;
                (l.priority, l.degraded, load)
            })
            .collect()
    }

    pub fn all(&self) -> &[Arc<Host>] {
        &self.all
    }

    /// In `hosts`, replaces each host already in this set (same identity) by its `Host`,
    /// taking the new weight, EDS status and canary flag into its live state: its stats and
    /// the flags detectors set survive.
    pub(crate) fn adopt_into(&self, hosts: &mut [Arc<Host>]) {
        let by_addr = by_address(&self.all);
        for h in hosts.iter_mut() {
            if let Some(o) = by_addr
                .get(&h.address)
                .and_then(|v| v.iter().find(|o| o.same_identity(h)))
            {
                o.update_from_eds(h.weight(), h.locality_weight(), h.eds_health_status());
                o.set_canary(h.canary());
                o.set_socket_match(h.socket_match());
                *h = (*o).clone();
            }
        }
    }

    /// Same hosts by identity (health and weight aside): what Envoy's membership_change counts.
    pub(crate) fn same_members(&self, other: &HostSet) -> bool {
        if self.all.len() != other.all.len() {
            return false;
        }
        let theirs = by_address(&other.all);
        self.all.iter().all(|h| {
            theirs
                .get(&h.address)
                .is_some_and(|v| v.iter().any(|o| o.same_identity(h)))
        })
    }

    /// Picks a host of the policy. A retry (`ctx.tried` not empty) re-picks a few times to
    /// avoid hosts already tried, when there are others.
    pub fn pick(&self, cursor: &AtomicU64, ctx: &LbContext, stats: &LbStats) -> Option<Arc<Host>> {
        // Hashing policies: the request's hash, or a random one without a hash policy
        // (Envoy); a re-pick moves the hash on.
        let mut hash = ctx.hash_key.unwrap_or_else(|| fastrand::u64(..));
        let mut host = self.pick_once(cursor, hash, stats)?;
        for _ in 0..HOST_SELECTION_RETRIES {
            if !ctx.tried.iter().any(|t| Arc::ptr_eq(t, &host)) {
                break;
            }
            hash = hash.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15;
            host = self.pick_once(cursor, hash, stats)?;
        }
        Some(host)
    }

    fn pick_once(&self, cursor: &AtomicU64, hash: u64, stats: &LbStats) -> Option<Arc<Host>> {
        let level = match self.levels.len() {
            0 => return None,
            1 => &self.levels[0],
            _ => {
                let r = fastrand::u32(..100);
                &self.levels[self.level_load.partition_point(|&c| c <= r)]
            }
        };
        if level.panic {
            stats.healthy_panic.inc();
        }
        let group = match level.spread {
            Spread::Flat => &level.group,
            _ => level.spread.choose(&level.group, stats),
        };
        group.pick(self.policy, cursor, hash)
    }
}

impl Group {
    fn pick(&self, policy: LbPolicy, cursor: &AtomicU64, hash: u64) -> Option<Arc<Host>> {
        let n = self.active.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(self.active[0].clone());
        }
        let i = match policy {
            LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => match &self.hashed {
                Some(t) => t.pick(hash),
                None => self.weighted_random(),
            },
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
            LbPolicy::LeastRequest {
                choice_count,
                bias_milli,
            } => {
                // Requests in flight (HTTP); for hosts that never had one (TCP proxy),
                // connections.
                let active = |h: &Host| {
                    let s = &h.stats;
                    if s.rq_total.load(Ordering::Relaxed) == 0 {
                        s.cx_active.load(Ordering::Relaxed)
                    } else {
                        s.rq_active.load(Ordering::Relaxed)
                    }
                };
                let equal = *self.cumulative.last().unwrap_or(&0) == n as u64;
                let score = |i: usize| -> f64 {
                    let h = &self.active[i];
                    let a = active(h) as f64;
                    if equal {
                        a
                    } else {
                        (a + 1.0).powf(f64::from(bias_milli) / 1000.0) / self.weight(i) as f64
                    }
                };
                let k = choice_count.max(2) as usize;
                let mut best = fastrand::usize(..n);
                let mut best_score = score(best);
                if n <= k {
                    // As many choices as hosts: all of them.
                    for c in 0..n {
                        let sc = score(c);
                        if sc < best_score {
                            (best, best_score) = (c, sc);
                        }
                    }
                } else {
                    // k distinct hosts (a few redraws at most; k is small next to n).
                    let mut seen = [best; 8];
                    let mut drawn = 1;
                    let mut tries = 0;
                    while drawn < k && tries < 4 * k {
                        tries += 1;
                        let c = fastrand::usize(..n);
                        if seen[..drawn.min(8)].contains(&c) {
                            continue;
                        }
                        if drawn < 8 {
                            seen[drawn] = c;
                        }
                        drawn += 1;
                        let sc = score(c);
                        if sc < best_score {
                            (best, best_score) = (c, sc);
                        }
                    }
                }
                best
            }
        };
        Some(self.active[i].clone())
    }

    /// The weight the group was built with for host `i`.
    fn weight(&self, i: usize) -> u64 {
        self.cumulative[i] - if i == 0 { 0 } else { self.cumulative[i - 1] }
    }

    fn weighted_random(&self) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1);
        let r = fastrand::u64(..total);
        self.cumulative.partition_point(|&c| c <= r)
    }
}

fn by_address(hosts: &[Arc<Host>]) -> std::collections::HashMap<SocketAddr, Vec<&Arc<Host>>> {
    hosts.iter().fold(Default::default(), |mut m, h| {
        m.entry(h.address).or_insert_with(Vec::new).push(h);
        m
    })
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

/// Slow start's refresher for one cluster: while a host is in its window, the balancer is
/// rebuilt every tenth of the window (between 50 ms and 5 s), so the weights ramp up off the
/// data path. Holds the cluster weakly; ends with it or at shutdown.
pub async fn slow_start_refresh(
    cluster: std::sync::Weak<super::Cluster>,
    window: Duration,
    mut shutdown: crate::drain::Watch,
) {
    let step = (window / 10).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut ramping = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(step) => {}
            _ = shutdown.draining() => return,
        }
        let Some(c) = cluster.upgrade() else { return };
        if c.is_retired() {
            return;
        }
        let now = tokio::time::Instant::now();
        let in_window = c
            .hosts()
            .all()
            .iter()
            .any(|h| h.slow_start_since().is_some_and(|t| now - t < window));
        // One more rebuild after the last host left its window: full weights.
        if in_window || ramping {
            c.hosts_health_changed();
        }
        ramping = in_window;
    }
}

#[cfg(test)]
#[path = "lb_tests.rs"]
mod tests;
