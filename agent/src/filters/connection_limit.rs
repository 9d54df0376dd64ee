//! `envoy.filters.network.connection_limit`: at most `max_connections` connections through
//! this filter at once (one atomic count per filter config, shared by every worker). A
//! connection over the limit is held for `delay` (to slow down reconnect storms), then closed.

use crate::config;
use crate::stats::{Counter, Gauge, Store};
use crate::transport::Downstream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
struct Shared {
    active: AtomicU64,
    max: u64,
    /// `connection_limit.<stat_prefix>.active_connections`: every connection through the
    /// filter, rejected ones included until they close (as Envoy counts).
    active_connections: Arc<Gauge>,
}

#[derive(Debug)]
pub struct ConnectionLimit {
    shared: Arc<Shared>,
    delay: Option<std::time::Duration>,
    limited_connections: Arc<Counter>,
}

/// An admitted connection's place under the limit, given back on drop.
#[derive(Debug)]
pub struct Slot {
    shared: Arc<Shared>,
    counted: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.counted {
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared.active_connections.dec();
    }
}

/// A connection over the limit.
#[derive(Debug)]
pub struct Rejected {
    _slot: Slot,
    delay: Option<std::time::Duration>,
}

impl Rejected {
    /// Holds the connection for the configured delay (or until the drain closes it), reading
    /// nothing, then closes it.
    pub async fn close(self, ds: &mut Downstream) {
        if let Some(d) = self.delay {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = ds.watch.closing() => {}
            }
        }
    }
}

impl ConnectionLimit {
    pub fn new(cfg: &config::ConnectionLimit, store: &Store) -> Self {
        let s = store.tagged_scope(
            "connection_limit",
            "envoy_connection_limit_prefix",
            &cfg.stat_prefix,
        );
        Self {
            shared: Arc::new(Shared {
                active: AtomicU64::new(0),
                max: cfg.max_connections,
                active_connections: s.gauge("active_connections"),
            }),
            delay: cfg.delay,
            limited_connections: s.counter("limited_connections"),
        }
    }

    pub fn admit(&self) -> Result<Slot, Rejected> {
        self.shared.active_connections.inc();
        let admitted = self
            .shared
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.shared.max).then_some(n + 1)
            })
            .is_ok();
        let slot = Slot {
            shared: self.shared.clone(),
            counted: admitted,
        };
        if admitted {
            Ok(slot)
        } else {
            self.limited_connections.inc();
            Err(Rejected {
                _slot: slot,
                delay: self.delay,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(max: u64) -> (ConnectionLimit, Store) {
        let store = Store::new();
        let f = ConnectionLimit::new(
            &config::ConnectionLimit {
                stat_prefix: "cl".into(),
                max_connections: max,
                delay: None,
            },
            &store,
        );
        (f, store)
    }

    #[test]
    fn admits_up_to_the_limit_and_frees_slots_on_close() {
        let (f, _store) = filter(2);
        let a = f.admit().expect("first");
        let _b = f.admit().expect("second");
        let rejected = f.admit().expect_err("third is over the limit");
        assert_eq!(f.limited_connections.value(), 1);
        assert_eq!(f.shared.active_connections.value(), 3);
        drop(rejected);
        drop(a);
        assert_eq!(f.shared.active_connections.value(), 1);
        let _c = f.admit().expect("a slot was freed");
        assert_eq!(f.limited_connections.value(), 1);
    }
}
