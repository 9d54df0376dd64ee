//! Envoy's `rate_limit_settings` for requests to the control plane: a token bucket in front
//! of every request a stream sends (subscriptions, ACKs, NACKs). A request without a token
//! waits for one — counted in `control_plane.rate_limit_enforced`, and in
//! `control_plane.pending_requests` while it waits — so a control plane that answers each NACK
//! with the same bad resource meets a bounded request rate.

use crate::config::XdsRateLimit;
use crate::stats::{Counter, Gauge};
use std::sync::Arc;
use tokio::time::{Duration, Instant};

pub(super) struct RequestLimiter {
    settings: Option<XdsRateLimit>,
    tokens: f64,
    last: Instant,
    enforced: Arc<Counter>,
    pending: Arc<Gauge>,
}

/// Counts a waiting request in `pending_requests` until it is sent or its stream ends.
struct Pending<'a>(&'a Gauge);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl RequestLimiter {
    pub(super) fn new(
        settings: Option<XdsRateLimit>,
        enforced: Arc<Counter>,
        pending: Arc<Gauge>,
    ) -> Self {
        Self {
            settings,
            tokens: settings.map_or(0.0, |s| s.max_tokens as f64),
            last: Instant::now(),
            enforced,
            pending,
        }
    }

    /// Resolves when the next request may be sent.
    pub(super) async fn admit(&mut self) {
        let Some(s) = self.settings else {
            return;
        };
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * s.fill_rate;
        self.tokens = (self.tokens + earned).min(s.max_tokens as f64);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return;
        }
        self.enforced.inc();
        self.pending.inc();
        let _pending = Pending(&self.pending);
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / s.fill_rate);
        tokio::time::sleep(wait).await;
        // The token earned while waiting is spent on this request.
        self.tokens = 0.0;
        self.last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_then_the_fill_rate() {
        let store = Store::new();
        let s = store.root_scope("control_plane");
        let (enforced, pending) = (
            s.counter("rate_limit_enforced"),
            s.gauge("pending_requests"),
        );
        let mut l = RequestLimiter::new(
            Some(XdsRateLimit {
                max_tokens: 3,
                fill_rate: 2.0,
            }),
            enforced.clone(),
            pending.clone(),
        );
        let start = Instant::now();
        for _ in 0..3 {
            l.admit().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the bucket starts full");
        assert_eq!(enforced.value(), 0);
        for _ in 0..4 {
            l.admit().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(2), "then 2 per second");
        assert_eq!(enforced.value(), 4);
        assert_eq!(pending.value(), 0);
        // Idle time refills, up to max_tokens.
        tokio::time::advance(Duration::from_secs(60)).await;
        let t = Instant::now();
        for _ in 0..3 {
            l.admit().await;
        }
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_is_pending_until_sent_or_dropped() {
        let store = Store::new();
        let s = store.root_scope("control_plane");
        let pending = s.gauge("pending_requests");
        let mut l = RequestLimiter::new(
            Some(XdsRateLimit {
                max_tokens: 1,
                fill_rate: 1.0,
            }),
            s.counter("rate_limit_enforced"),
            pending.clone(),
        );
        l.admit().await;
        {
            let wait = l.admit();
            tokio::pin!(wait);
            assert!(futures_poll_once(wait.as_mut()).await.is_pending());
            assert_eq!(pending.value(), 1);
        }
        assert_eq!(
            pending.value(),
            0,
            "a stream that ends takes its waiting request with it"
        );
    }

    #[tokio::test]
    async fn no_settings_means_no_limit() {
        let store = Store::new();
        let s = store.root_scope("control_plane");
        let enforced = s.counter("rate_limit_enforced");
        let mut l = RequestLimiter::new(None, enforced.clone(), s.gauge("pending_requests"));
        for _ in 0..10_000 {
            l.admit().await;
        }
        assert_eq!(enforced.value(), 0);
    }

    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> std::task::Poll<F::Output> {
        let mut f = Some(f);
        std::future::poll_fn(move |cx| {
            let p = std::pin::Pin::new(f.as_mut().unwrap()).poll(cx);
            std::task::Poll::Ready(p)
        })
        .await
    }
}
