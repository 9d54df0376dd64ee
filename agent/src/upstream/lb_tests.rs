use super::*;
use crate::config::{HealthStatus, Locality};

fn host(port: u16, weight: u32, priority: u32, health: HealthStatus) -> Arc<Host> {
    Arc::new(Host::new(
        SocketAddr::from(([127, 0, 0, 1], port)),
        String::new(),
        priority,
        Locality::default(),
        weight,
        health,
    ))
}

fn build(policy: LbPolicy, hosts: Vec<Arc<Host>>) -> HostSet {
    HostSet::build(&Balancing::of(policy), hosts)
}

fn counts(set: &HostSet, picks: usize) -> std::collections::BTreeMap<u16, usize> {
    let stats = LbStats::detached();
    let cursor = AtomicU64::new(0);
    let mut m = std::collections::BTreeMap::new();
    for _ in 0..picks {
        *m.entry(
            set.pick(&cursor, &LbContext::default(), &stats)
                .unwrap()
                .address
                .port(),
        )
        .or_default() += 1;
    }
    m
}

#[test]
fn round_robin_follows_weights_exactly_and_interleaves() {
    let set = build(
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
fn unhealthy_hosts_are_skipped_and_a_healthy_priority_keeps_all_traffic() {
    let set = build(
        LbPolicy::RoundRobin,
        vec![
            host(1, 1, 0, HealthStatus::Unhealthy),
            host(2, 1, 0, HealthStatus::Healthy),
            host(3, 1, 0, HealthStatus::Healthy),
            host(4, 1, 0, HealthStatus::Healthy),
            host(9, 1, 1, HealthStatus::Healthy),
        ],
    );
    // 3 of 4 routable: 1.4 × 75 % ≥ 100 %, so P1 gets nothing.
    assert_eq!(set.priority_loads(), vec![(0, false, 100)]);
    assert_eq!(
        counts(&set, 30).keys().copied().collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    let set = build(
        LbPolicy::RoundRobin,
        vec![
            host(1, 1, 0, HealthStatus::Draining),
            host(3, 1, 1, HealthStatus::Unknown),
        ],
    );
    assert_eq!(set.priority_loads(), vec![(1, false, 100)]);
    assert_eq!(
        counts(&set, 10).keys().copied().collect::<Vec<_>>(),
        vec![3]
    );
    // No usable host: in panic (the default threshold, 50 %), the unusable one is
    // picked, as Envoy; with panic mode off, none.
    let stats = LbStats::detached();
    let only = vec![host(1, 1, 0, HealthStatus::Timeout)];
    assert!(build(LbPolicy::Random, only.clone())
        .pick(&AtomicU64::new(0), &LbContext::default(), &stats)
        .is_some());
    assert_eq!(stats.healthy_panic.value(), 1);
    assert!(HostSet::build(&no_panic(LbPolicy::Random), only)
        .pick(&AtomicU64::new(0), &LbContext::default(), &stats)
        .is_none());
}

#[test]
fn a_degraded_priority_spills_over_like_envoy() {
    let level = |p: u32, ok: usize, bad: usize, port0: u16| {
        (0..ok)
            .map(move |i| host(port0 + i as u16, 1, p, HealthStatus::Healthy))
            .chain(
                (0..bad).map(move |i| host(port0 + 100 + i as u16, 1, p, HealthStatus::Unhealthy)),
            )
            .collect::<Vec<_>>()
    };
    // Half of P0 routable: health 70 %, the other 30 % spill to P1.
    let set = build(
        LbPolicy::RoundRobin,
        [level(0, 2, 2, 1000), level(1, 2, 0, 2000)].concat(),
    );
    assert_eq!(set.priority_loads(), vec![(0, false, 70), (1, false, 30)]);
    let c = counts(&set, 10_000);
    let p1: usize = c.iter().filter(|(p, _)| **p >= 2000).map(|(_, n)| n).sum();
    assert!((2_500..3_500).contains(&p1), "P1 got {p1} of 10000: {c:?}");
    // Both levels at 20 %: healths 28 % + 28 % scaled up to fill 100 %.
    let set = build(
        LbPolicy::Random,
        [level(0, 1, 4, 1000), level(1, 1, 4, 2000)].concat(),
    );
    assert_eq!(set.priority_loads(), vec![(0, false, 50), (1, false, 50)]);
    // Three levels: 70 %, then P1's 14 %, then the rest.
    let set = build(
        LbPolicy::least_request(),
        [
            level(0, 1, 1, 1000),
            level(1, 1, 9, 2000),
            level(2, 1, 0, 3000),
        ]
        .concat(),
    );
    assert_eq!(
        set.priority_loads(),
        vec![(0, false, 70), (1, false, 14), (2, false, 16)]
    );
    // One usable host among 150, panic mode off: its availability rounds to 0, traffic
    // still flows to it.
    let set = HostSet::build(&no_panic(LbPolicy::RoundRobin), level(0, 1, 149, 1000));
    assert_eq!(set.priority_loads(), vec![(0, false, 100)]);
    assert_eq!(
        set.pick(
            &AtomicU64::new(0),
            &LbContext::default(),
            &LbStats::detached()
        )
        .unwrap()
        .address
        .port(),
        1000
    );
    // Degraded hosts take load only after every level's healthy hosts: all-degraded P0
    // and all-healthy P1 → P1 takes everything, as in Envoy.
    let degraded = |p: u32, n: usize, port0: u16| {
        (0..n)
            .map(move |i| host(port0 + i as u16, 1, p, HealthStatus::Degraded))
            .collect::<Vec<_>>()
    };
    let set = build(
        LbPolicy::RoundRobin,
        [degraded(0, 2, 1000), level(1, 2, 0, 2000)].concat(),
    );
    assert_eq!(set.priority_loads(), vec![(1, false, 100)]);
    // Half healthy, half degraded in P0 alone: healthy 70 %, degraded the other 30 %.
    let set = build(
        LbPolicy::RoundRobin,
        [level(0, 2, 0, 1000), degraded(0, 2, 3000)].concat(),
    );
    assert_eq!(set.priority_loads(), vec![(0, false, 70), (0, true, 30)]);
}

fn no_panic(policy: LbPolicy) -> Arc<Balancing> {
    let mut b = (*Balancing::of(policy)).clone();
    b.common.healthy_panic_threshold = 0.0;
    Arc::new(b)
}

#[test]
fn random_and_least_request_reach_every_host() {
    let hosts = vec![
        host(1, 1, 0, HealthStatus::Unknown),
        host(2, 1, 0, HealthStatus::Unknown),
    ];
    for policy in [LbPolicy::Random, LbPolicy::least_request()] {
        let c = counts(&build(policy, hosts.clone()), 1000);
        assert!(c[&1] > 300 && c[&2] > 300, "{policy:?}: {c:?}");
    }
}

#[test]
fn least_request_prefers_idle_host() {
    let busy = host(1, 1, 0, HealthStatus::Unknown);
    busy.stats.cx_active.store(100, Ordering::Relaxed);
    let set = build(
        LbPolicy::least_request(),
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

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_new_hosts_weight_up() {
    let mut b = (*Balancing::of(LbPolicy::RoundRobin)).clone();
    b.common.slow_start = Some(config::SlowStart {
        window: Duration::from_secs(10),
        aggression: 1.0,
        min_weight_percent: 10.0,
    });
    let b = Arc::new(b);
    let (old, new) = (
        host(1, 1, 0, HealthStatus::Healthy),
        host(2, 1, 0, HealthStatus::Healthy),
    );
    new.start_slow_start();
    let share = |set: &HostSet| {
        let c = counts(set, 1100);
        c.get(&2).copied().unwrap_or(0) as f64 / 1100.0
    };
    // At once: the floor, 10 % of its weight → 1/11 of the picks.
    let set = HostSet::build(&b.clone(), vec![old.clone(), new.clone()]);
    assert!((share(&set) - 1.0 / 11.0).abs() < 0.01, "{}", share(&set));
    // Half the window: half its weight → 1/3.
    tokio::time::advance(Duration::from_secs(5)).await;
    let set = HostSet::build(&b.clone(), vec![old.clone(), new.clone()]);
    assert!((share(&set) - 1.0 / 3.0).abs() < 0.01, "{}", share(&set));
    // With aggression 2, the ramp is sqrt(0.5) ≈ 0.71 at the same point.
    let mut b2 = (*b).clone();
    b2.common.slow_start.as_mut().unwrap().aggression = 2.0;
    let set = HostSet::build(&Arc::new(b2), vec![old.clone(), new.clone()]);
    let w = 0.5f64.sqrt();
    assert!(
        (share(&set) - w / (1.0 + w)).abs() < 0.01,
        "{}",
        share(&set)
    );
    // After the window: equal.
    tokio::time::advance(Duration::from_secs(5)).await;
    let set = HostSet::build(&b, vec![old, new]);
    assert_eq!(share(&set), 0.5);
}
