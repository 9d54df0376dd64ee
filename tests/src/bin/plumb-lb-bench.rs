//! plumb-lb-bench: the cluster manager's benchmark, for `cargo xtask bench lb`.
//!
//! 1. ns per pick of each load balancer at 10, 1,000 and 10,000 hosts, and the time to
//!    build each balancer (what a membership or health change costs, off the data path);
//! 2. a circuit breaker tripping under load: latency of the requests it refuses against
//!    those served;
//! 3. outlier detection: the share of requests failed before and after a bad host is ejected.
//!
//! Prints JSON (one object) on stdout. Loopback only; every loop is bounded.

use plumb::config::{HealthStatus, LbPolicy, Locality};
use plumb::stats::{Histogram, StatName};
use plumb::upstream::{Balancing, Host, HostSet, LbContext, LbStats};
use plumb_tests::agent::{any_host, bootstrap, http_listener, static_cluster, TestAgent};
use plumb_tests::http_client::{request, H1};
use plumb_tests::http_upstream;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLICIES: [(&str, LbPolicy); 5] = [
    ("ROUND_ROBIN", LbPolicy::RoundRobin),
    ("LEAST_REQUEST", LbPolicy::least_request()),
    ("RANDOM", LbPolicy::Random),
    (
        "RING_HASH",
        LbPolicy::RingHash {
            min_ring_size: 1024,
            max_ring_size: 8 * 1024 * 1024,
        },
    ),
    ("MAGLEV", LbPolicy::Maglev { table_size: 65_537 }),
];

fn hosts(n: usize) -> Vec<Arc<Host>> {
    (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("10.213.{}.{}:8080", (i / 250) % 250, i % 250 + 1)
                .parse()
                .unwrap();
            Arc::new(Host::new(
                addr,
                String::new(),
                0,
                Locality::default(),
                1 + (i % 3) as u32,
                HealthStatus::Healthy,
            ))
        })
        .collect()
}

/// (ns per pick, ms to build): the best of three runs of `picks` picks each.
fn pick_cost(policy: LbPolicy, n: usize, picks: u64) -> (f64, f64) {
    pick_cost_with(Balancing::of(policy), hosts(n), picks)
}

/// Zone-aware ROUND_ROBIN over three zones where the local one is short of capacity (the
/// costliest path: two random numbers, a cross-zone choice), or a level in panic (every
/// other host unhealthy at a 60 % threshold).
fn special_cost(kind: &str, n: usize, picks: u64) -> (f64, f64) {
    let zone = |i: usize| Locality {
        region: "r".into(),
        zone: ["a", "b", "c"][i % 3].into(),
        sub_zone: String::new(),
    };
    let all: Vec<Arc<Host>> = (0..n)
        .map(|i| {
            let addr: SocketAddr = format!("10.213.{}.{}:8080", (i / 250) % 250, i % 250 + 1)
                .parse()
                .unwrap();
            let health = if kind == "panic" && i % 2 == 0 {
                HealthStatus::Unhealthy
            } else {
                HealthStatus::Healthy
            };
            Arc::new(Host::new(addr, String::new(), 0, zone(i), 1, health))
        })
        .collect();
    let mut common = plumb::config::CommonLb::default();
    let mut local = None;
    if kind == "zone-aware" {
        common.locality = plumb::config::LocalityLb::ZoneAware {
            routing_enabled: 100.0,
            min_cluster_size: 1,
        };
        local = Some(Arc::new(plumb::upstream::locality::LocalZone {
            locality: zone(0),
            usable: vec![(zone(0), 6), (zone(1), 2), (zone(2), 2)],
            total: 10,
        }));
    } else {
        common.healthy_panic_threshold = 60.0;
    }
    let b = Arc::new(Balancing {
        policy: LbPolicy::RoundRobin,
        common,
        local,
    });
    pick_cost_with(b, all, picks)
}

fn pick_cost_with(b: Arc<Balancing>, all: Vec<Arc<Host>>, picks: u64) -> (f64, f64) {
    let mut build_ms = f64::MAX;
    let mut set = None;
    for _ in 0..3 {
        let t = Instant::now();
        let s = HostSet::build(&b.clone(), all.clone());
        build_ms = build_ms.min(t.elapsed().as_secs_f64() * 1e3);
        set = Some(s);
    }
    let set = set.unwrap();
    let cursor = AtomicU64::new(0);
    let stats = LbStats::detached();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut key = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..picks {
            key = key.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let ctx = LbContext {
                hash_key: Some(key),
                ..LbContext::default()
            };
            std::hint::black_box(set.pick(&cursor, &ctx, &stats));
        }
        best = best.min(t.elapsed().as_nanos() as f64 / picks as f64);
    }
    (best, build_ms)
}

fn histogram(name: &str) -> Arc<Histogram> {
    Arc::new(Histogram::new(StatName {
        full: name.into(),
        extracted: name.into(),
        tags: vec![],
    }))
}

fn percentiles(h: &Histogram) -> Value {
    let s = h.cumulative();
    let q = |x: f64| s.quantile(x).map(|ms| ms * 1000.0);
    json!({"count": s.count, "p50_us": q(0.5), "p99_us": q(0.99)})
}

/// Requests held `delay_ms` at the upstream, from `clients` connections, for `secs`, into a
/// cluster whose `max_requests` is `max`: latency of refused (503) and served (200) ones.
async fn breaker(clients: usize, max: u32, delay_ms: u64, secs: u64) -> Value {
    let up = http_upstream::start("up").await;
    let mut cluster = static_cluster("up", &[up.addr]);
    cluster["circuit_breakers"] = json!({"thresholds": [{"max_requests": max}]});
    let agent = TestAgent::start(&bootstrap(
        vec![http_listener(
            "in",
            any_host(json!([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}])),
        )],
        vec![cluster],
    ))
    .await;
    let addr = agent.listener("in");
    let served = histogram("served");
    let refused = histogram("refused");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (served, refused) = (served.clone(), refused.clone());
        set.spawn(async move {
            let mut c = H1::connect(addr).await;
            let delay = delay_ms.to_string();
            while Instant::now() < deadline {
                let t = Instant::now();
                let Ok(r) = c
                    .send(request("GET", "x", "/", &[("x-delay-ms", &delay)], b""))
                    .await
                else {
                    return;
                };
                let h = if r.status == 503 { &refused } else { &served };
                h.record_us(t.elapsed().as_micros() as u64);
            }
        });
    }
    while set.join_next().await.is_some() {}
    json!({
        "clients": clients, "max_requests": max, "upstream_delay_ms": delay_ms,
        "served": percentiles(&served), "refused": percentiles(&refused),
        "upstream_rq_pending_overflow": agent.stat("cluster.up.upstream_rq_pending_overflow"),
    })
}

/// Ten hosts, one answering 503: the share of requests failed in each block of `block`.
async fn outlier(requests: usize, block: usize) -> Value {
    let mut good = Vec::new();
    for i in 0..9 {
        good.push(http_upstream::start(&format!("h{i}")).await);
    }
    let mut addrs: Vec<SocketAddr> = good.iter().map(|u| u.addr).collect();
    addrs.push(
        plumb_tests::servers::raw_http("bad", 503, Duration::ZERO)
            .await
            .0,
    );
    let mut cluster = static_cluster("up", &addrs);
    cluster["outlier_detection"] =
        json!({"consecutive_5xx": 5, "base_ejection_time": "30s", "max_ejection_percent": 20});
    let agent = TestAgent::start(&bootstrap(
        vec![http_listener(
            "in",
            any_host(json!([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}])),
        )],
        vec![cluster],
    ))
    .await;
    let mut c = H1::connect(agent.listener("in")).await;
    let mut failed_by_block = Vec::new();
    let mut failed = 0;
    for i in 0..requests {
        let r = c.send(request("GET", "x", "/", &[], b"")).await.unwrap();
        if r.status >= 500 {
            failed += 1;
        }
        if (i + 1) % block == 0 {
            failed_by_block.push(failed as f64 / block as f64);
            failed = 0;
        }
    }
    json!({
        "hosts": 10, "bad_hosts": 1, "block": block,
        "failed_share_by_block": failed_by_block,
        "ejections": agent.stat("cluster.up.outlier_detection.ejections_enforced_total"),
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let picks: u64 = args
        .iter()
        .position(|a| a == "--picks")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
        .min(50_000_000);
    let mut lb = Vec::new();
    for (name, policy) in POLICIES {
        for n in [10, 1_000, 10_000] {
            let (ns, build_ms) = pick_cost(policy, n, picks);
            eprintln!("{name} {n} hosts: {ns:.1} ns per pick, built in {build_ms:.2} ms");
            lb.push(json!({"policy": name, "hosts": n, "ns_per_pick": ns, "build_ms": build_ms}));
        }
    }
    for kind in ["zone-aware", "panic"] {
        for n in [10, 1_000, 10_000] {
            let (ns, build_ms) = special_cost(kind, n, picks);
            let name = format!("ROUND_ROBIN, {kind}");
            eprintln!("{name} {n} hosts: {ns:.1} ns per pick, built in {build_ms:.2} ms");
            lb.push(json!({"policy": name, "hosts": n, "ns_per_pick": ns, "build_ms": build_ms}));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (b, o) = rt.block_on(async { (breaker(64, 16, 20, 3).await, outlier(600, 20).await) });
    println!(
        "{}",
        json!({"picks": picks, "lb": lb, "breaker": b, "outlier": o})
    );
}
