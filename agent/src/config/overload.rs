//! Envoy's `overload_manager` (resource monitors, actions and their triggers) and the
//! `layered_runtime` keys Plumb reads (connection limits): field tables and readers.

use super::walk::{Diagnostics, Field, FieldTable, Obj};
use super::yaml::Value;
use super::*;

#[allow(unused_imports)]
use Field::{Ignored as I, Rejected as R, Supported as S};

pub(super) const OVERLOAD_MANAGER: FieldTable = &[
    ("refresh_interval", S),
    ("resource_monitors", S),
    ("actions", S),
    ("buffer_factory_config", I("there are no HTTP buffers yet")),
    (
        "loadshed_points",
        I("there are no HTTP load shed points yet"),
    ),
];

pub(super) const RESOURCE_MONITOR: FieldTable = &[("name", S), ("typed_config", S)];

pub(super) const DOWNSTREAM_CONNECTIONS: FieldTable =
    &[("@type", S), ("max_active_downstream_connections", S)];

pub(super) const FIXED_HEAP: FieldTable = &[("@type", S), ("max_heap_size_bytes", S)];

pub(super) const OVERLOAD_ACTION: FieldTable = &[
    ("name", S),
    ("triggers", S),
    (
        "typed_config",
        I("scaled timers apply to HTTP, which is not implemented yet"),
    ),
];

pub(super) const TRIGGER: FieldTable = &[("name", S), ("threshold", S), ("scaled", S)];

pub(super) const THRESHOLD_TRIGGER: FieldTable = &[("value", S)];

pub(super) const SCALED_TRIGGER: FieldTable =
    &[("scaling_threshold", S), ("saturation_threshold", S)];

pub(super) const LAYERED_RUNTIME: FieldTable = &[("layers", S)];

pub(super) const RUNTIME_LAYER: FieldTable = &[
    ("name", S),
    ("static_layer", S),
    ("disk_layer", I("only static_layer keys are read")),
    ("admin_layer", I("only static_layer keys are read")),
    ("rtds_layer", I("only static_layer keys are read")),
];

pub const GLOBAL_CONNECTIONS_MONITOR: &str =
    "envoy.resource_monitors.global_downstream_max_connections";
pub const FIXED_HEAP_MONITOR: &str = "envoy.resource_monitors.fixed_heap";

/// A resource the overload manager watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Monitor {
    /// Active downstream connections against `max_active_downstream_connections`.
    DownstreamConnections,
    /// Heap in use against `max_heap_size_bytes`.
    FixedHeap,
}

impl Monitor {
    pub fn name(self) -> &'static str {
        match self {
            Monitor::DownstreamConnections => GLOBAL_CONNECTIONS_MONITOR,
            Monitor::FixedHeap => FIXED_HEAP_MONITOR,
        }
    }
}

/// What an action does when its triggers fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    /// Listeners stop accepting; connections wait in the kernel's accept queue.
    StopAcceptingConnections,
    /// Accepted connections are closed at once (with a reset).
    RejectIncomingConnections,
    /// Free heap is handed back to the system.
    ShrinkHeap,
    /// An HTTP action: accepted and reported, with nothing to act on until HTTP exists.
    Http(&'static str),
}

impl ActionKind {
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::StopAcceptingConnections => {
                "envoy.overload_actions.stop_accepting_connections"
            }
            ActionKind::RejectIncomingConnections => {
                "envoy.overload_actions.reject_incoming_connections"
            }
            ActionKind::ShrinkHeap => "envoy.overload_actions.shrink_heap",
            ActionKind::Http(name) => name,
        }
    }
}

/// When a trigger fires: at a threshold, or scaled between two.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TriggerKind {
    Threshold(f64),
    Scaled { scaling: f64, saturation: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trigger {
    pub monitor: Monitor,
    pub kind: TriggerKind,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OverloadAction {
    pub kind: ActionKind,
    pub triggers: Vec<Trigger>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OverloadConfig {
    /// How often monitors are read (Envoy's default 1 s).
    pub refresh_interval: Duration,
    /// `global_downstream_max_connections`: connections beyond it are closed at accept.
    pub max_downstream_connections: Option<u64>,
    pub max_heap_bytes: Option<u64>,
    pub actions: Vec<OverloadAction>,
}

const HTTP_ACTIONS: &[&str] = &[
    "envoy.overload_actions.stop_accepting_requests",
    "envoy.overload_actions.disable_http_keepalive",
];

const OTHER_ENVOY_ACTIONS: &[&str] = &[
    "envoy.overload_actions.reduce_timeouts",
    "envoy.overload_actions.reset_high_memory_stream",
];

pub(super) fn read_overload_manager(o: &Obj, d: &mut Diagnostics) -> OverloadConfig {
    let mut cfg = OverloadConfig {
        refresh_interval: o
            .duration("refresh_interval", d)
            .unwrap_or(Duration::from_secs(1)),
        max_downstream_connections: None,
        max_heap_bytes: None,
        actions: Vec::new(),
    };
    if cfg.refresh_interval < Duration::from_millis(10) {
        d.error(
            o.at("refresh_interval"),
            "must be at least 0.01s (monitors are read on this interval)",
        );
    }
    let mut monitors = Vec::new();
    for (path, v) in o.list("resource_monitors", d) {
        let Some(m) = Obj::new(v, &path, RESOURCE_MONITOR, d) else {
            continue;
        };
        let Some(name) = m.required_string("name", d) else {
            continue;
        };
        let monitor = match name.as_str() {
            GLOBAL_CONNECTIONS_MONITOR => Monitor::DownstreamConnections,
            FIXED_HEAP_MONITOR => Monitor::FixedHeap,
            other => {
                d.error(
                    m.at("name"),
                    format!("unsupported resource monitor \"{other}\" (supported: {GLOBAL_CONNECTIONS_MONITOR}, {FIXED_HEAP_MONITOR}); refusing rather than running without the protection it is meant to give"),
                );
                continue;
            }
        };
        if monitors.contains(&monitor) {
            d.error(
                m.at("name"),
                format!("resource monitor \"{name}\" is configured twice"),
            );
            continue;
        }
        monitors.push(monitor);
        let (table, key) = match monitor {
            Monitor::DownstreamConnections => {
                (DOWNSTREAM_CONNECTIONS, "max_active_downstream_connections")
            }
            Monitor::FixedHeap => (FIXED_HEAP, "max_heap_size_bytes"),
        };
        let Some(tc) = m.object("typed_config", table, d) else {
            d.error(
                m.at("typed_config"),
                format!("missing required field (with {key})"),
            );
            continue;
        };
        let Some(max) = tc.uint(key, 1, i64::MAX as u64, d) else {
            if tc.get(key).is_none() {
                d.error(tc.at(key), "missing required field");
            }
            continue;
        };
        match monitor {
            Monitor::DownstreamConnections => cfg.max_downstream_connections = Some(max),
            Monitor::FixedHeap => cfg.max_heap_bytes = Some(max),
        }
    }
    let mut seen_actions: Vec<String> = Vec::new();
    for (path, v) in o.list("actions", d) {
        let Some(a) = Obj::new(v, &path, OVERLOAD_ACTION, d) else {
            continue;
        };
        let Some(name) = a.required_string("name", d) else {
            continue;
        };
        if seen_actions.contains(&name) {
            d.error(
                a.at("name"),
                format!("action \"{name}\" is configured twice"),
            );
            continue;
        }
        seen_actions.push(name.clone());
        let kind = match name.as_str() {
            "envoy.overload_actions.stop_accepting_connections" => {
                ActionKind::StopAcceptingConnections
            }
            "envoy.overload_actions.reject_incoming_connections" => {
                ActionKind::RejectIncomingConnections
            }
            "envoy.overload_actions.shrink_heap" => ActionKind::ShrinkHeap,
            n => match HTTP_ACTIONS.iter().find(|h| **h == n) {
                Some(h) => {
                    d.warn(
                        a.at("name"),
                        format!("{h} acts on HTTP, which is not implemented yet: it is reported in overload.* stats but has nothing to act on"),
                    );
                    ActionKind::Http(h)
                }
                None if OTHER_ENVOY_ACTIONS.contains(&n) => {
                    d.warn(a.at("name"), format!("{n} is not implemented: ignored"));
                    continue;
                }
                None => {
                    d.error(
                        a.at("name"),
                        format!("unknown overload action \"{n}\" (supported: stop_accepting_connections, reject_incoming_connections, shrink_heap, stop_accepting_requests, disable_http_keepalive under envoy.overload_actions.)"),
                    );
                    continue;
                }
            },
        };
        let mut triggers = Vec::new();
        for (tpath, tv) in a.list("triggers", d) {
            if let Some(t) = read_trigger(tv, &tpath, &monitors, d) {
                triggers.push(t);
            }
        }
        if triggers.is_empty() && a.get("triggers").is_none() {
            d.error(a.at("triggers"), "an action needs at least one trigger");
        }
        cfg.actions.push(OverloadAction { kind, triggers });
    }
    cfg
}

fn read_trigger(
    v: &Value,
    path: &str,
    monitors: &[Monitor],
    d: &mut Diagnostics,
) -> Option<Trigger> {
    let t = Obj::new(v, path, TRIGGER, d)?;
    let name = t.required_string("name", d)?;
    let Some(monitor) = monitors.iter().copied().find(|m| m.name() == name) else {
        d.error(
            t.at("name"),
            format!("no resource monitor \"{name}\" is configured"),
        );
        return None;
    };
    let kind = match (t.get("threshold"), t.get("scaled")) {
        (Some(_), Some(_)) => {
            d.error(path, "set threshold or scaled, not both");
            return None;
        }
        (Some(_), None) => {
            let th = t.object("threshold", THRESHOLD_TRIGGER, d)?;
            TriggerKind::Threshold(th.float("value", 0.0, 1.0, d)?)
        }
        (None, Some(_)) => {
            let sc = t.object("scaled", SCALED_TRIGGER, d)?;
            let scaling = sc.float("scaling_threshold", 0.0, 1.0, d)?;
            let saturation = sc.float("saturation_threshold", 0.0, 1.0, d)?;
            if scaling >= saturation {
                d.error(
                    sc.at("scaling_threshold"),
                    format!("must be below saturation_threshold ({scaling} >= {saturation})"),
                );
                return None;
            }
            TriggerKind::Scaled {
                scaling,
                saturation,
            }
        }
        (None, None) => {
            d.error(path, "missing trigger: set threshold or scaled");
            return None;
        }
    };
    Some(Trigger { monitor, kind })
}

/// The runtime keys Plumb reads from `layered_runtime` static layers (later layers win):
/// per-listener connection limits and the (deprecated in Envoy) global connection limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeLimits {
    /// `envoy.resource_limits.listener.<listener name>.connection_limit`.
    pub listener_connections: std::collections::BTreeMap<String, u64>,
    /// `overload.global_downstream_max_connections`.
    pub global_connections: Option<u64>,
}

const LISTENER_LIMIT_PREFIX: &str = "envoy.resource_limits.listener.";
const LISTENER_LIMIT_SUFFIX: &str = ".connection_limit";
const GLOBAL_LIMIT_KEY: &str = "overload.global_downstream_max_connections";

pub(super) fn read_layered_runtime(rt: &Obj, d: &mut Diagnostics) -> RuntimeLimits {
    let mut limits = RuntimeLimits::default();
    for (path, v) in rt.list("layers", d) {
        let Some(layer) = Obj::new(v, &path, RUNTIME_LAYER, d) else {
            continue;
        };
        let Some(Value::Mapping(_)) = layer.get("static_layer") else {
            if let Some(other) = layer.get("static_layer") {
                d.error(
                    layer.at("static_layer"),
                    format!("expected a mapping, found {}", super::walk::kind(other)),
                );
            }
            continue;
        };
        let mut flat = Vec::new();
        flatten(
            "",
            layer.get("static_layer").expect("checked"),
            &mut flat,
            0,
        );
        let at = layer.at("static_layer");
        for (key, value) in flat {
            let limit = || match value {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            };
            let listener = key
                .strip_prefix(LISTENER_LIMIT_PREFIX)
                .and_then(|k| k.strip_suffix(LISTENER_LIMIT_SUFFIX));
            if listener.is_some() || key == GLOBAL_LIMIT_KEY {
                let Some(n) = limit() else {
                    d.error(
                        format!("{at}.{key}"),
                        "expected a non-negative integer (a connection count)",
                    );
                    continue;
                };
                match listener {
                    Some(name) => {
                        limits.listener_connections.insert(name.to_string(), n);
                    }
                    None => limits.global_connections = Some(n),
                }
            } else {
                d.warn(
                    format!("{at}.{key}"),
                    "runtime key not read by Plumb: ignored",
                );
            }
        }
    }
    limits
}

/// Envoy flattens nested static-layer mappings into dotted keys.
fn flatten<'v>(prefix: &str, v: &'v Value, out: &mut Vec<(String, &'v Value)>, depth: usize) {
    match v {
        Value::Mapping(m) if depth < 32 => {
            for (k, v) in m {
                let k = match k {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out, depth + 1);
            }
        }
        _ => out.push((prefix.to_string(), v)),
    }
}
