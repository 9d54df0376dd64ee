//! `envoy.filters.network.local_ratelimit`: a token bucket on new connections. Each connection
//! takes a token; with none left it is closed at once and `rate_limited` counts it. The bucket
//! starts full (`max_tokens`) and gains `tokens_per_fill` every `fill_interval`, filled lazily
//! on use with two atomics: no timer task, no lock.

use crate::config;
use crate::stats::{Counter, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct LocalRateLimit {
    bucket: TokenBucket,
    /// Envoy's name (its code says `local_rate_limit.`, some of its docs `local_ratelimit.`).
    rate_limited: Arc<Counter>,
}

/// A token bucket filled lazily on use with two atomics (shared with the HTTP local rate
/// limit filter).
#[derive(Debug)]
pub struct TokenBucket {
    tokens: AtomicU64,
    /// Fill intervals since `start` already credited.
    filled: AtomicU64,
    start: Instant,
    max_tokens: u64,
    tokens_per_fill: u64,
    fill_interval: Duration,
}

impl LocalRateLimit {
    pub fn new(cfg: &config::LocalRateLimit, store: &Store) -> Self {
        let s = store.tagged_scope(
            "local_rate_limit",
            "envoy_local_network_ratelimit_prefix",
            &cfg.stat_prefix,
        );
        Self {
            bucket: TokenBucket::new(cfg.max_tokens, cfg.tokens_per_fill, cfg.fill_interval),
            rate_limited: s.counter("rate_limited"),
        }
    }

    /// Takes a token for a new connection; `false`: over the limit, close it.
    pub fn admit(&self) -> bool {
        let ok = self.bucket.try_take();
        if !ok {
            self.rate_limited.inc();
        }
        ok
    }
}

impl TokenBucket {
    /// Starts full.
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> Self {
        Self {
            tokens: AtomicU64::new(max_tokens as u64),
            filled: AtomicU64::new(0),
            start: Instant::now(),
            max_tokens: max_tokens as u64,
            tokens_per_fill: tokens_per_fill as u64,
            fill_interval,
        }
    }

    /// Tokens left now (after crediting the intervals passed).
    pub fn remaining(&self) -> u64 {
        self.refill();
        self.tokens.load(Ordering::Acquire)
    }

    pub fn max_tokens(&self) -> u64 {
        self.max_tokens
    }

    /// Time until the next fill.
    pub fn until_refill(&self) -> Duration {
        let i = self.fill_interval.as_nanos().max(1);
        let e = self.start.elapsed().as_nanos();
        Duration::from_nanos((i - e % i) as u64)
    }

    fn refill(&self) {
        let now = (self.start.elapsed().as_nanos() / self.fill_interval.as_nanos().max(1)) as u64;
        let prev = self.filled.load(Ordering::Acquire);
        if now <= prev {
            return;
        }
        // One caller wins each step and credits the intervals since the last one.
        if self
            .filled
            .compare_exchange(prev, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let add = (now - prev).saturating_mul(self.tokens_per_fill);
            let _ = self
                .tokens
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    Some(t.saturating_add(add).min(self.max_tokens))
                });
        }
    }

    /// Takes a token; `false`: none left.
    pub fn try_take(&self) -> bool {
        let take = || {
            self.tokens
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(1))
                .is_ok()
        };
        self.refill();
        // Another caller may be between crediting an interval and adding its tokens: look
        // once more before refusing.
        take() || {
            std::hint::spin_loop();
            self.refill();
            take()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_empties_then_refills_per_interval() {
        let store = Store::new();
        let f = LocalRateLimit::new(
            &config::LocalRateLimit {
                stat_prefix: "rl".into(),
                max_tokens: 3,
                tokens_per_fill: 2,
                fill_interval: Duration::from_secs(1),
            },
            &store,
        );
        assert!((0..3).all(|_| f.admit()));
        assert!(!f.admit());
        assert_eq!(f.rate_limited.value(), 1);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(f.admit() && f.admit());
        assert!(!f.admit());
        // Long idle: never more than max_tokens.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!((0..3).all(|_| f.admit()));
        assert!(!f.admit());
        assert_eq!(f.rate_limited.value(), 3);
    }
}
