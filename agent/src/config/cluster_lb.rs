//! How a cluster balances, in the configuration: `lb_policy` and its `*_lb_config`,
//! `common_lb_config` (panic threshold, locality-weighted and zone-aware balancing) and
//! slow start; field tables and readers shared by the bootstrap and CDS.

use super::cluster::PERCENT;
use super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::*;

#[allow(unused_imports)]
use Field::{Ignored as I, Rejected as R, Supported as S};

pub(super) const RING_HASH_LB_CONFIG: FieldTable = &[
    ("minimum_ring_size", S),
    ("maximum_ring_size", S),
    ("hash_function", S),
];

pub(super) const MAGLEV_LB_CONFIG: FieldTable = &[("table_size", S)];

pub(super) const LEAST_REQUEST_LB_CONFIG: FieldTable = &[
    ("choice_count", S),
    ("active_request_bias", S),
    ("slow_start_config", S),
    (
        "locality_lb_config",
        I("locality-weighted LB is not applied yet"),
    ),
    ("selection_method", I("the fewest of the choices is taken")),
];

pub(super) const RUNTIME_DOUBLE: FieldTable = &[
    ("default_value", S),
    ("runtime_key", I("runtime overrides are not read")),
];

/// Envoy's bounds: rings of at most 8M entries; Maglev tables of a prime size up to 5,000,011.
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
const MAX_MAGLEV_TABLE: u64 = 5_000_011;

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|i| i * i <= n).all(|i| n % i != 0)
}

pub(super) const ROUND_ROBIN_LB_CONFIG: FieldTable = &[
    ("slow_start_config", S),
    (
        "locality_lb_config",
        I("locality-weighted and zone-aware balancing are set in common_lb_config"),
    ),
];

pub(super) const SLOW_START_CONFIG: FieldTable = &[
    ("slow_start_window", S),
    ("aggression", S),
    ("min_weight_percent", S),
];

/// `slow_start_config` of `round_robin_lb_config` or `least_request_lb_config`.
fn read_slow_start(o: &Obj, d: &mut Diagnostics) -> Option<SlowStart> {
    let s = o.object("slow_start_config", SLOW_START_CONFIG, d)?;
    let window = s.duration("slow_start_window", d).unwrap_or_default();
    if window.is_zero() {
        // As Envoy: no window, no slow start.
        return None;
    }
    let aggression = s
        .object("aggression", RUNTIME_DOUBLE, d)
        .and_then(|a| a.float("default_value", 0.0, 1e6, d))
        .unwrap_or(1.0);
    if aggression <= 0.0 {
        d.error(s.at("aggression"), "must be greater than 0");
    }
    let min_weight_percent = s
        .object("min_weight_percent", PERCENT, d)
        .and_then(|p| p.float("value", 0.0, 100.0, d))
        .unwrap_or(10.0);
    Some(SlowStart {
        window,
        aggression: aggression.max(1e-6),
        min_weight_percent,
    })
}

pub(super) const COMMON_LB_CONFIG: FieldTable = &[
    ("healthy_panic_threshold", S),
    ("zone_aware_lb_config", S),
    ("locality_weighted_lb_config", S),
    (
        "update_merge_window",
        I("host changes are applied as they come"),
    ),
    (
        "ignore_new_hosts_until_first_hc",
        I("with health checks, new hosts always wait for their first check"),
    ),
    (
        "close_connections_on_host_set_change",
        R("closing connections on host set changes is not supported"),
    ),
    (
        "consistent_hashing_lb_config",
        R("use_hostname_for_hashing and hash_balance_factor are not supported"),
    ),
    (
        "override_host_status",
        R("host overrides are not supported"),
    ),
];

pub(super) const ZONE_AWARE_LB_CONFIG: FieldTable = &[
    ("routing_enabled", S),
    ("min_cluster_size", S),
    ("fail_traffic_on_panic", S),
    (
        "force_local_zone",
        R("forcing the local zone is not supported"),
    ),
    // Only HEALTHY_HOSTS_NUM, the default.
    ("locality_basis", S),
];

pub(super) const LOCALITY_WEIGHTED_LB_CONFIG: FieldTable = &[];

fn read_common_lb(o: &Obj, policy: LbPolicy, d: &mut Diagnostics) -> CommonLb {
    let percent = |o: &Obj, k: &str, def: f64, d: &mut Diagnostics| {
        o.object(k, PERCENT, d)
            .and_then(|p| p.float("value", 0.0, 100.0, d))
            .unwrap_or(def)
    };
    let healthy_panic_threshold = percent(o, "healthy_panic_threshold", 50.0, d);
    let zone = o.object("zone_aware_lb_config", ZONE_AWARE_LB_CONFIG, d);
    let weighted = o.object(
        "locality_weighted_lb_config",
        LOCALITY_WEIGHTED_LB_CONFIG,
        d,
    );
    let mut fail_traffic_on_panic = false;
    let locality = match (zone, weighted) {
        (Some(_), Some(_)) => {
            d.error(
                o.at("locality_weighted_lb_config"),
                "zone_aware_lb_config and locality_weighted_lb_config are exclusive",
            );
            LocalityLb::None
        }
        (Some(z), None) => {
            z.enumeration(
                "locality_basis",
                &["HEALTHY_HOSTS_NUM"],
                &[(
                    "HEALTHY_HOSTS_WEIGHT",
                    "only HEALTHY_HOSTS_NUM is supported",
                )],
                d,
            );
            fail_traffic_on_panic = z.boolean("fail_traffic_on_panic", d).unwrap_or(false);
            LocalityLb::ZoneAware {
                routing_enabled: percent(&z, "routing_enabled", 100.0, d),
                min_cluster_size: z.uint("min_cluster_size", 0, u64::MAX, d).unwrap_or(6),
            }
        }
        (None, Some(_)) => LocalityLb::Weighted,
        (None, None) => LocalityLb::None,
    };
    if locality != LocalityLb::None
        && matches!(policy, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    {
        d.error(
            o.path.clone(),
            "locality-weighted and zone-aware balancing are not supported with RING_HASH or MAGLEV",
        );
    }
    CommonLb {
        healthy_panic_threshold,
        fail_traffic_on_panic,
        locality,
        slow_start: None,
    }
}

/// `lb_policy` with its policy config, and `common_lb_config`.
pub(super) fn read_lb(c: &Obj, d: &mut Diagnostics) -> (LbPolicy, CommonLb) {
    let mut slow_start = None;
    let lb_policy = match c
        .enumeration(
            "lb_policy",
            &[
                "ROUND_ROBIN",
                "LEAST_REQUEST",
                "RANDOM",
                "CLUSTER_PROVIDED",
                "RING_HASH",
                "MAGLEV",
            ],
            &[(
                "LOAD_BALANCING_POLICY_CONFIG",
                "extension LB policies are not supported",
            )],
            d,
        )
        .as_deref()
    {
        Some("LEAST_REQUEST") => {
            let cfg = c.object("least_request_lb_config", LEAST_REQUEST_LB_CONFIG, d);
            slow_start = cfg.as_ref().and_then(|l| read_slow_start(l, d));
            let choice_count = cfg
                .as_ref()
                .and_then(|l| l.uint("choice_count", 2, 100, d))
                .unwrap_or(2) as u32;
            let bias = cfg
                .as_ref()
                .and_then(|l| l.object("active_request_bias", RUNTIME_DOUBLE, d))
                .and_then(|b| b.float("default_value", 0.0, 100.0, d))
                .unwrap_or(1.0);
            LbPolicy::LeastRequest {
                choice_count,
                bias_milli: (bias * 1000.0).round() as u32,
            }
        }
        Some("RANDOM") => LbPolicy::Random,
        Some("CLUSTER_PROVIDED") => LbPolicy::ClusterProvided,
        Some("RING_HASH") => {
            let cfg = c.object("ring_hash_lb_config", RING_HASH_LB_CONFIG, d);
            let size = |k: &str, def: u64, d: &mut Diagnostics| {
                cfg.as_ref()
                    .and_then(|r| r.uint(k, 1, MAX_RING_SIZE, d))
                    .unwrap_or(def)
            };
            let min_ring_size = size("minimum_ring_size", 1024, d);
            let max_ring_size = size("maximum_ring_size", MAX_RING_SIZE, d);
            if let Some(r) = &cfg {
                r.enumeration(
                    "hash_function",
                    &["XX_HASH"],
                    &[("MURMUR_HASH_2", "only XX_HASH is supported")],
                    d,
                );
                if min_ring_size > max_ring_size {
                    d.error(
                        r.at("minimum_ring_size"),
                        format!("{min_ring_size} is above maximum_ring_size {max_ring_size}"),
                    );
                }
            }
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            }
        }
        Some("MAGLEV") => {
            let table_size = c
                .object("maglev_lb_config", MAGLEV_LB_CONFIG, d)
                .and_then(|m| {
                    let n = m.uint("table_size", 2, MAX_MAGLEV_TABLE, d)?;
                    if !is_prime(n) {
                        d.error(m.at("table_size"), format!("{n} is not a prime number"));
                        return None;
                    }
                    Some(n)
                })
                .unwrap_or(65_537);
            LbPolicy::Maglev { table_size }
        }
        _ => {
            slow_start = c
                .object("round_robin_lb_config", ROUND_ROBIN_LB_CONFIG, d)
                .and_then(|r| read_slow_start(&r, d));
            LbPolicy::RoundRobin
        }
    };
    for (key, wanted) in [
        ("ring_hash_lb_config", "RING_HASH"),
        ("maglev_lb_config", "MAGLEV"),
        ("least_request_lb_config", "LEAST_REQUEST"),
        ("round_robin_lb_config", "ROUND_ROBIN"),
    ] {
        if c.get(key).is_some() && lb_policy.as_str() != wanted {
            d.error(c.at(key), format!("only valid with lb_policy {wanted}"));
        }
    }
    let mut common_lb = c
        .object("common_lb_config", COMMON_LB_CONFIG, d)
        .map(|o| read_common_lb(&o, lb_policy, d))
        .unwrap_or_default();
    common_lb.slow_start = slow_start;
    (lb_policy, common_lb)
}
