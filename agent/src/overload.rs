//! The overload manager (Envoy's): resource monitors read every `refresh_interval`, actions
//! that fire on their pressure, and the limits checked on every accepted connection — one
//! atomic add per connection, no lock.
//!
//! - `global_downstream_max_connections` is checked at accept: beyond it a connection is
//!   closed at once (`listener.<addr>.downstream_global_cx_overflow`). Without it, the limit is
//!   derived from the open-files limit, keeping [`FD_RESERVE`] descriptors for the admin
//!   server, the control plane and upstream DNS, so the data path can never starve them.
//! - A listener's `envoy.resource_limits.listener.<name>.connection_limit` (runtime) is checked
//!   when the listener takes the connection (`downstream_cx_overflow`).
//! - `stop_accepting_connections` pauses the accept loops (connections wait in the kernel's
//!   queue); `reject_incoming_connections` closes accepted connections with a reset
//!   (`downstream_cx_overload_reject`); `shrink_heap` hands free heap back to the system.

use crate::config::{ActionKind, Monitor, OverloadConfig, RuntimeLimits, TriggerKind};
use crate::stats::{Gauge, Store};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// File descriptors kept out of the data path's reach when no global connection limit is
/// configured: the admin server's 64 connections, the control plane, DNS, eBPF maps, logs and
/// the hand-over socket, with room to spare.
pub const FD_RESERVE: u64 = 256;

/// Where the global connection limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    Configured,
    OpenFiles,
}

#[derive(Debug)]
struct ActionState {
    kind: ActionKind,
    active: Arc<Gauge>,
    scale_percent: Arc<Gauge>,
}

#[derive(Debug)]
pub struct Overload {
    active: AtomicU64,
    max: u64,
    source: LimitSource,
    listener_limits: std::collections::BTreeMap<String, u64>,
    paused: watch::Sender<bool>,
    rejecting: AtomicBool,
    config: Option<OverloadConfig>,
    pressure: Vec<(Monitor, Arc<Gauge>)>,
    actions: Vec<ActionState>,
}

/// One accepted data-path connection, counted until dropped.
#[derive(Debug)]
pub struct Slot(Arc<Overload>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Overload {
    /// `open_files`: the soft RLIMIT_NOFILE (for the derived limit when none is configured).
    pub fn new(
        config: Option<&OverloadConfig>,
        runtime: &RuntimeLimits,
        open_files: u64,
        store: &Store,
    ) -> Arc<Self> {
        let configured = config
            .and_then(|c| c.max_downstream_connections)
            .or(runtime.global_connections);
        let (max, source) = match configured {
            Some(m) => (m, LimitSource::Configured),
            None => (
                open_files.saturating_sub(FD_RESERVE).max(2) / 2,
                LimitSource::OpenFiles,
            ),
        };
        let mut pressure = Vec::new();
        let mut actions = Vec::new();
        if let Some(c) = config {
            for m in [Monitor::DownstreamConnections, Monitor::FixedHeap] {
                let on = match m {
                    Monitor::DownstreamConnections => c.max_downstream_connections.is_some(),
                    Monitor::FixedHeap => c.max_heap_bytes.is_some(),
                };
                if on {
                    let g = store
                        .root_scope("overload")
                        .gauge(&format!("{}.pressure", m.name()));
                    pressure.push((m, g));
                }
            }
            for a in &c.actions {
                let s = store.root_scope("overload");
                actions.push(ActionState {
                    kind: a.kind,
                    active: s.gauge(&format!("{}.active", a.kind.name())),
                    scale_percent: s.gauge(&format!("{}.scale_percent", a.kind.name())),
                });
            }
        }
        Arc::new(Self {
            active: AtomicU64::new(0),
            max,
            source,
            listener_limits: runtime.listener_connections.clone(),
            paused: watch::channel(false).0,
            rejecting: AtomicBool::new(false),
            config: config.cloned(),
            pressure,
            actions,
        })
    }

    /// No overload configuration and no limit (tests, tools).
    pub fn unlimited(store: &Store) -> Arc<Self> {
        let mut o = Self::new(None, &RuntimeLimits::default(), u64::MAX, store);
        Arc::get_mut(&mut o).expect("fresh").max = u64::MAX;
        o
    }

    /// The global limit on data-path connections and where it comes from.
    pub fn max_connections(&self) -> (u64, LimitSource) {
        (self.max, self.source)
    }

    /// The runtime connection limit of listener `name`, if any.
    pub fn listener_limit(&self, name: &str) -> Option<u64> {
        self.listener_limits.get(name).copied()
    }

    /// Counts an accepted connection, or `None` when the global limit is reached.
    #[inline]
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let before = self.active.fetch_add(1, Ordering::Relaxed);
        if before >= self.max {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(self.clone()))
    }

    pub fn active_connections(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether `reject_incoming_connections` is in force.
    #[inline]
    pub fn rejecting(&self) -> bool {
        self.rejecting.load(Ordering::Relaxed)
    }

    /// `true` while `stop_accepting_connections` is in force.
    pub fn paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    /// Reads the monitors and sets each action's state; returns the pressures (0..=1+).
    pub fn refresh(&self) -> Vec<(Monitor, f64)> {
        let Some(cfg) = &self.config else {
            return Vec::new();
        };
        let mut pressures = Vec::new();
        for (m, gauge) in &self.pressure {
            let p = match m {
                Monitor::DownstreamConnections => {
                    self.active_connections() as f64
                        / cfg.max_downstream_connections.unwrap_or(u64::MAX) as f64
                }
                Monitor::FixedHeap => {
                    crate::state::heap_size() as f64 / cfg.max_heap_bytes.unwrap_or(u64::MAX) as f64
                }
            };
            gauge.set((p * 100.0).round().min(i64::MAX as f64) as i64);
            pressures.push((*m, p));
        }
        for (state, action) in self.actions.iter().zip(&cfg.actions) {
            let value = action
                .triggers
                .iter()
                .map(|t| {
                    let p = pressures
                        .iter()
                        .find(|(m, _)| *m == t.monitor)
                        .map_or(0.0, |(_, p)| *p);
                    match t.kind {
                        TriggerKind::Threshold(v) => {
                            if p >= v {
                                1.0
                            } else {
                                0.0
                            }
                        }
                        TriggerKind::Scaled {
                            scaling,
                            saturation,
                        } => {
                            if p >= saturation {
                                1.0
                            } else if p <= scaling {
                                0.0
                            } else {
                                (p - scaling) / (saturation - scaling)
                            }
                        }
                    }
                })
                .fold(0.0f64, f64::max);
            let saturated = value >= 1.0;
            state.active.set(saturated as i64);
            state.scale_percent.set((value * 100.0).round() as i64);
            match state.kind {
                ActionKind::StopAcceptingConnections => {
                    self.paused.send_if_modified(|p| {
                        let changed = *p != saturated;
                        *p = saturated;
                        changed
                    });
                }
                ActionKind::RejectIncomingConnections => {
                    self.rejecting.store(saturated, Ordering::Relaxed)
                }
                ActionKind::ShrinkHeap => {}
                ActionKind::Http(_) => {}
            }
        }
        pressures
    }

    fn shrink_heap_active(&self) -> bool {
        self.actions
            .iter()
            .any(|a| a.kind == ActionKind::ShrinkHeap && a.active.value() == 1)
    }

    /// Refreshes every `refresh_interval` until the drain starts; while `shrink_heap` is
    /// active, free heap is handed back at most every 10 s.
    pub async fn run(self: Arc<Self>, mut drain: crate::drain::Watch) {
        let Some(every) = self.config.as_ref().map(|c| c.refresh_interval) else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_shrink: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = drain.draining() => return,
            }
            self.refresh();
            if self.shrink_heap_active()
                && last_shrink.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                last_shrink = Some(tokio::time::Instant::now());
                crate::state::trim_heap();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OverloadAction, Trigger};

    fn config(max: u64, actions: Vec<(ActionKind, TriggerKind)>) -> OverloadConfig {
        OverloadConfig {
            refresh_interval: Duration::from_secs(1),
            max_downstream_connections: Some(max),
            max_heap_bytes: None,
            actions: actions
                .into_iter()
                .map(|(kind, t)| OverloadAction {
                    kind,
                    triggers: vec![Trigger {
                        monitor: Monitor::DownstreamConnections,
                        kind: t,
                    }],
                })
                .collect(),
        }
    }

    #[test]
    fn the_global_limit_counts_live_connections() {
        let store = Store::new();
        let o = Overload::new(
            Some(&config(2, vec![])),
            &RuntimeLimits::default(),
            1024,
            &store,
        );
        let a = o.admit().unwrap();
        let _b = o.admit().unwrap();
        assert!(o.admit().is_none(), "a third is refused");
        assert_eq!(o.active_connections(), 2);
        drop(a);
        assert!(o.admit().is_some(), "room again once one closes");
    }

    #[test]
    fn without_a_configured_limit_the_open_files_limit_leaves_a_reserve() {
        let store = Store::new();
        let o = Overload::new(None, &RuntimeLimits::default(), 1024, &store);
        assert_eq!(o.max_connections(), (384, LimitSource::OpenFiles));
        let rt = RuntimeLimits {
            global_connections: Some(10),
            ..Default::default()
        };
        let o = Overload::new(None, &rt, 1024, &store);
        assert_eq!(o.max_connections(), (10, LimitSource::Configured));
    }

    #[test]
    fn actions_follow_pressure_with_thresholds_and_scaling() {
        let store = Store::new();
        let o = Overload::new(
            Some(&config(
                10,
                vec![
                    (
                        ActionKind::StopAcceptingConnections,
                        TriggerKind::Threshold(0.5),
                    ),
                    (
                        ActionKind::RejectIncomingConnections,
                        TriggerKind::Scaled {
                            scaling: 0.6,
                            saturation: 0.8,
                        },
                    ),
                ],
            )),
            &RuntimeLimits::default(),
            1024,
            &store,
        );
        let paused = o.paused();
        let mut held: Vec<Slot> = (0..4).map(|_| o.admit().unwrap()).collect();
        o.refresh();
        assert!(!*paused.borrow());
        assert!(!o.rejecting());
        assert_eq!(
            store.value(
                "overload.envoy.resource_monitors.global_downstream_max_connections.pressure"
            ),
            Some(40)
        );
        held.extend((0..3).map(|_| o.admit().unwrap()));
        o.refresh();
        assert!(*paused.borrow(), "70 % ≥ 50 %: stop accepting");
        assert!(!o.rejecting(), "scaled, not saturated");
        assert_eq!(
            store
                .value("overload.envoy.overload_actions.reject_incoming_connections.scale_percent"),
            Some(50)
        );
        held.push(o.admit().unwrap());
        o.refresh();
        assert!(o.rejecting(), "80 %: saturated");
        assert_eq!(
            store.value("overload.envoy.overload_actions.reject_incoming_connections.active"),
            Some(1)
        );
        held.clear();
        o.refresh();
        assert!(
            !*paused.borrow() && !o.rejecting(),
            "pressure gone: actions end"
        );
    }
}
