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

fn percent(o: &Obj, k: &str, def: f64, d: &mut Diagnostics) -> f64 {
    o.object(k, PERCENT, d)
        .and_then(|p| p.float("value", 0.0, 100.0, d))
        .unwrap_or(def)
}

/// `zone_aware_lb_config` / `locality_weighted_lb_config` of a `common_lb_config` or of a
/// typed policy's `locality_lb_config` (the same fields); and `fail_traffic_on_panic`.
fn read_locality(o: &Obj, d: &mut Diagnostics) -> (LocalityLb, bool) {
    let zone = o.object("zone_aware_lb_config", ZONE_AWARE_LB_CONFIG, d);
    let weighted = o.object(
        "locality_weighted_lb_config",
        LOCALITY_WEIGHTED_LB_CONFIG,
        d,
    );
    match (zone, weighted) {
        (Some(_), Some(_)) => {
            d.error(
                o.at("locality_weighted_lb_config"),
                "zone_aware_lb_config and locality_weighted_lb_config are exclusive",
            );
            (LocalityLb::None, false)
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
            let fail = z.boolean("fail_traffic_on_panic", d).unwrap_or(false);
            let zone = LocalityLb::ZoneAware {
                routing_enabled: percent(&z, "routing_enabled", 100.0, d),
                min_cluster_size: z.uint("min_cluster_size", 0, u64::MAX, d).unwrap_or(6),
            };
            (zone, fail)
        }
        (None, Some(_)) => (LocalityLb::Weighted, false),
        (None, None) => (LocalityLb::None, false),
    }
}

fn read_common_lb(o: &Obj, d: &mut Diagnostics) -> CommonLb {
    let healthy_panic_threshold = percent(o, "healthy_panic_threshold", 50.0, d);
    let (locality, fail_traffic_on_panic) = read_locality(o, d);
    CommonLb {
        healthy_panic_threshold,
        fail_traffic_on_panic,
        locality,
        slow_start: None,
    }
}

/// LEAST_REQUEST's settings (`least_request_lb_config` or the typed `LeastRequest`).
fn least_request(cfg: Option<&Obj>, d: &mut Diagnostics) -> LbPolicy {
    let choice_count = cfg
        .and_then(|l| l.uint("choice_count", 2, 100, d))
        .unwrap_or(2) as u32;
    let bias = cfg
        .and_then(|l| l.object("active_request_bias", RUNTIME_DOUBLE, d))
        .and_then(|b| b.float("default_value", 0.0, 100.0, d))
        .unwrap_or(1.0);
    if let Some(l) = cfg {
        l.enumeration(
            "selection_method",
            &["N_CHOICES"],
            &[(
                "FULL_SCAN",
                "full scans are not supported; choices are drawn",
            )],
            d,
        );
    }
    LbPolicy::LeastRequest {
        choice_count,
        bias_milli: (bias * 1000.0).round() as u32,
    }
}

/// RING_HASH's settings (`ring_hash_lb_config` or the typed `RingHash`).
fn ring_hash(cfg: Option<&Obj>, d: &mut Diagnostics) -> LbPolicy {
    let size = |k: &str, def: u64, d: &mut Diagnostics| {
        cfg.and_then(|r| r.uint(k, 1, MAX_RING_SIZE, d))
            .unwrap_or(def)
    };
    let min_ring_size = size("minimum_ring_size", 1024, d);
    let max_ring_size = size("maximum_ring_size", MAX_RING_SIZE, d);
    if let Some(r) = cfg {
        r.enumeration(
            "hash_function",
            &["XX_HASH", "DEFAULT_HASH"],
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

/// MAGLEV's settings (`maglev_lb_config` or the typed `Maglev`).
fn maglev(cfg: Option<&Obj>, d: &mut Diagnostics) -> LbPolicy {
    let table_size = cfg
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

pub(super) const LOAD_BALANCING_POLICY: FieldTable = &[("policies", S)];
pub(super) const LB_POLICY_ENTRY: FieldTable = &[("typed_extension_config", S)];
pub(super) const TYPED_EXTENSION_CONFIG: FieldTable = &[("name", S), ("typed_config", S)];
pub(super) const LOCALITY_LB_CONFIG: FieldTable = &[
    ("zone_aware_lb_config", S),
    ("locality_weighted_lb_config", S),
];
pub(super) const TYPED_ROUND_ROBIN: FieldTable = &[
    ("@type", S),
    ("slow_start_config", S),
    ("locality_lb_config", S),
];
pub(super) const TYPED_LEAST_REQUEST: FieldTable = &[
    ("@type", S),
    ("choice_count", S),
    ("active_request_bias", S),
    ("slow_start_config", S),
    ("locality_lb_config", S),
    (
        "enable_full_scan",
        R("full scans are not supported; choices are drawn"),
    ),
    ("selection_method", S),
];
pub(super) const TYPED_RANDOM: FieldTable = &[("@type", S), ("locality_lb_config", S)];
pub(super) const TYPED_RING_HASH: FieldTable = &[
    ("@type", S),
    ("hash_function", S),
    ("minimum_ring_size", S),
    ("maximum_ring_size", S),
    ("use_hostname_for_hashing", R("hosts are hashed by address")),
    ("hash_balance_factor", R("bounded loads are not supported")),
    (
        "consistent_hashing_lb_config",
        R("use_hostname_for_hashing and hash_balance_factor are not supported"),
    ),
    (
        "locality_weighted_lb_config",
        R("locality-weighted hashing is not supported"),
    ),
];
pub(super) const TYPED_MAGLEV: FieldTable = &[
    ("@type", S),
    ("table_size", S),
    (
        "consistent_hashing_lb_config",
        R("use_hostname_for_hashing and hash_balance_factor are not supported"),
    ),
    (
        "locality_weighted_lb_config",
        R("locality-weighted hashing is not supported"),
    ),
];
pub(super) const TYPED_CLUSTER_PROVIDED: FieldTable = &[("@type", S)];

/// The typed policies Plumb knows, by type name.
const TYPED_POLICIES: &[(&str, FieldTable)] = &[
    (
        "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
        TYPED_ROUND_ROBIN,
    ),
    (
        "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
        TYPED_LEAST_REQUEST,
    ),
    (
        "envoy.extensions.load_balancing_policies.random.v3.Random",
        TYPED_RANDOM,
    ),
    (
        "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
        TYPED_RING_HASH,
    ),
    (
        "envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
        TYPED_MAGLEV,
    ),
    (
        "envoy.extensions.load_balancing_policies.cluster_provided.v3.ClusterProvided",
        TYPED_CLUSTER_PROVIDED,
    ),
];

/// A typed policy: the policy, its slow start and its locality settings.
type Typed = (LbPolicy, Option<SlowStart>, Option<(LocalityLb, bool)>);

/// `load_balancing_policy`: the first of `policies` Plumb supports, as Envoy takes the
/// first it knows; the others before it are skipped with a warning.
fn read_typed_lb(o: &Obj, d: &mut Diagnostics) -> Option<Typed> {
    let policies = o.list("policies", d);
    for (path, v) in &policies {
        let Some(entry) = Obj::new(v, path, LB_POLICY_ENTRY, d) else {
            continue;
        };
        let Some(ext) = entry.object("typed_extension_config", TYPED_EXTENSION_CONFIG, d) else {
            d.error(entry.at("typed_extension_config"), "missing required field");
            continue;
        };
        let Some(tc) = ext.get("typed_config") else {
            d.error(ext.at("typed_config"), "missing required field");
            continue;
        };
        let type_url = tc.get("@type").and_then(|t| t.as_str()).unwrap_or_default();
        let name = type_url.rsplit('/').next().unwrap_or_default();
        let Some((_, table)) = TYPED_POLICIES.iter().find(|(n, _)| *n == name) else {
            d.warn(
                ext.at("typed_config"),
                format!("skipped: load balancing policy {name:?} is not supported"),
            );
            continue;
        };
        let t = Obj::new(tc, &ext.at("typed_config"), table, d)?;
        let locality = t
            .object("locality_lb_config", LOCALITY_LB_CONFIG, d)
            .map(|l| read_locality(&l, d));
        let policy = match name.rsplit('.').next().unwrap_or_default() {
            "LeastRequest" => least_request(Some(&t), d),
            "Random" => LbPolicy::Random,
            "RingHash" => ring_hash(Some(&t), d),
            "Maglev" => maglev(Some(&t), d),
            "ClusterProvided" => LbPolicy::ClusterProvided,
            _ => LbPolicy::RoundRobin,
        };
        return Some((policy, read_slow_start(&t, d), locality));
    }
    let names: Vec<&str> = TYPED_POLICIES
        .iter()
        .map(|(n, _)| n.rsplit('.').next().unwrap_or(n))
        .collect();
    d.error(
        o.at("policies"),
        format!(
            "none of the policies is supported (supported: {})",
            names.join(", ")
        ),
    );
    None
}

/// `lb_policy` with its policy config, or the typed `load_balancing_policy` (which wins, as
/// in Envoy); and `common_lb_config`.
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
                "LOAD_BALANCING_POLICY_CONFIG",
            ],
            &[],
            d,
        )
        .as_deref()
    {
        Some("LEAST_REQUEST") => {
            let cfg = c.object("least_request_lb_config", LEAST_REQUEST_LB_CONFIG, d);
            slow_start = cfg.as_ref().and_then(|l| read_slow_start(l, d));
            least_request(cfg.as_ref(), d)
        }
        Some("RANDOM") => LbPolicy::Random,
        Some("CLUSTER_PROVIDED") => LbPolicy::ClusterProvided,
        Some("RING_HASH") => {
            let cfg = c.object("ring_hash_lb_config", RING_HASH_LB_CONFIG, d);
            ring_hash(cfg.as_ref(), d)
        }
        Some("MAGLEV") => {
            let cfg = c.object("maglev_lb_config", MAGLEV_LB_CONFIG, d);
            maglev(cfg.as_ref(), d)
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
        .map(|o| read_common_lb(&o, d))
        .unwrap_or_default();
    common_lb.slow_start = slow_start;
    let mut lb_policy = lb_policy;
    let typed = c
        .object("load_balancing_policy", LOAD_BALANCING_POLICY, d)
        .and_then(|o| read_typed_lb(&o, d));
    if let Some((policy, slow_start, locality)) = typed {
        lb_policy = policy;
        common_lb.slow_start = slow_start;
        if let Some((locality, fail)) = locality {
            common_lb.locality = locality;
            common_lb.fail_traffic_on_panic = fail;
        }
    } else if c.get("lb_policy").and_then(|v| v.as_str()) == Some("LOAD_BALANCING_POLICY_CONFIG") {
        d.error(
            c.at("load_balancing_policy"),
            "lb_policy LOAD_BALANCING_POLICY_CONFIG needs a load_balancing_policy",
        );
    }
    if common_lb.locality != LocalityLb::None
        && matches!(
            lb_policy,
            LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }
        )
    {
        d.error(
            c.at("common_lb_config"),
            "locality-weighted and zone-aware balancing are not supported with RING_HASH or MAGLEV",
        );
    }
    (lb_policy, common_lb)
}
