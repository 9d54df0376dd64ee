//! A lock-free log-linear histogram for latencies.
//!
//! Values are recorded in microseconds and reported in milliseconds (Envoy's `_ms` stats) so
//! that sub-millisecond loopback latencies stay visible. Buckets: exact below 16 µs, then 16
//! linear sub-buckets per power of two (≤ 6.25 % relative error). Recording is one relaxed
//! `fetch_add` on the bucket plus one on the sum; quantiles are computed at read time.

use super::StatName;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS; // 16
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

/// Quantiles shown by `/stats`, as Envoy's default `supported_quantiles`.
pub const SUPPORTED_QUANTILES: [f64; 10] =
    [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0];

/// Envoy's default Prometheus bucket bounds, in milliseconds.
pub const PROMETHEUS_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

#[inline]
fn bucket_index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let m = ((v >> (e - SUB_BITS)) as usize) & (SUB - 1);
    SUB + (e - SUB_BITS) as usize * SUB + m
}

/// `[lower, upper)` bounds of a bucket, in recorded units.
fn bucket_bounds(i: usize) -> (f64, f64) {
    if i < SUB {
        return (i as f64, i as f64 + 1.0);
    }
    let e = ((i - SUB) / SUB) as u32 + SUB_BITS;
    let m = ((i - SUB) % SUB) as u64;
    let width = 1u64 << (e - SUB_BITS);
    let lower = ((SUB as u64 + m) << (e - SUB_BITS)) as f64;
    (lower, lower + width as f64)
}

#[derive(Debug)]
pub struct Histogram {
    name: StatName,
    /// Allocated on the first sample: most histograms of a large config (a thousand clusters)
    /// never record, and 976 buckets are 7.8 KiB each.
    buckets: std::sync::OnceLock<Box<[AtomicU64]>>,
    sum_us: AtomicU64,
    min_us: AtomicU64,
    max_us: AtomicU64,
    interval: Mutex<IntervalState>,
}

#[derive(Debug, Default)]
struct IntervalState {
    /// Cumulative counts at the last flush.
    at_last_flush: Vec<u64>,
    /// Counts recorded between the two most recent flushes.
    last_interval: Vec<u64>,
}

/// Bucket counts at one moment, with quantile helpers. Values are in milliseconds.
#[derive(Debug, Clone)]
pub struct HistogramSnapshot {
    counts: Vec<u64>,
    pub count: u64,
    pub sum_ms: f64,
    /// Exact extremes (ms) where known, to clamp bucket interpolation.
    min_ms: f64,
    max_ms: f64,
}

impl Histogram {
    pub fn new(name: StatName) -> Self {
        Self {
            name,
            buckets: std::sync::OnceLock::new(),
            sum_us: AtomicU64::new(0),
            min_us: AtomicU64::new(u64::MAX),
            max_us: AtomicU64::new(0),
            interval: Mutex::new(IntervalState::default()),
        }
    }

    pub fn name(&self) -> &StatName {
        &self.name
    }

    #[inline]
    pub fn record_us(&self, us: u64) {
        let buckets = self
            .buckets
            .get_or_init(|| (0..BUCKETS).map(|_| AtomicU64::new(0)).collect());
        buckets[bucket_index(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        // Plain loads first: after warm-up the extremes rarely change, so no RMW is needed.
        if us < self.min_us.load(Ordering::Relaxed) {
            self.min_us.fetch_min(us, Ordering::Relaxed);
        }
        if us > self.max_us.load(Ordering::Relaxed) {
            self.max_us.fetch_max(us, Ordering::Relaxed);
        }
    }

    #[inline]
    pub fn record(&self, d: Duration) {
        self.record_us(d.as_micros().min(u64::MAX as u128) as u64);
    }

    fn counts(&self) -> Vec<u64> {
        let Some(buckets) = self.buckets.get() else {
            return vec![0; BUCKETS];
        };
        buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }

    pub fn cumulative(&self) -> HistogramSnapshot {
        let counts = self.counts();
        HistogramSnapshot {
            count: counts.iter().sum(),
            counts,
            sum_ms: self.sum_us.load(Ordering::Relaxed) as f64 / 1000.0,
            min_ms: self.min_us.load(Ordering::Relaxed) as f64 / 1000.0,
            max_ms: self.max_us.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }

    /// What was recorded between the two most recent flushes.
    pub fn interval(&self) -> HistogramSnapshot {
        let st = self.interval.lock().unwrap_or_else(|p| p.into_inner());
        let counts = if st.last_interval.is_empty() {
            vec![0; BUCKETS]
        } else {
            st.last_interval.clone()
        };
        let sum_ms = counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (lo, hi) = bucket_bounds(i);
                *c as f64 * (lo + hi) / 2.0
            })
            .sum::<f64>()
            / 1000.0;
        HistogramSnapshot {
            count: counts.iter().sum(),
            counts,
            sum_ms,
            min_ms: 0.0,
            max_ms: f64::INFINITY,
        }
    }

    pub fn flush_interval(&self) {
        if self.buckets.get().is_none() {
            return;
        }
        let now = self.counts();
        let mut st = self.interval.lock().unwrap_or_else(|p| p.into_inner());
        let prev = std::mem::take(&mut st.at_last_flush);
        st.last_interval = if prev.is_empty() {
            now.clone()
        } else {
            now.iter()
                .zip(prev.iter())
                .map(|(n, p)| n.saturating_sub(*p))
                .collect()
        };
        st.at_last_flush = now;
    }
}

impl HistogramSnapshot {
    /// Quantile `q` in percent (0..=100), in milliseconds; `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q / 100.0 * self.count as f64).clamp(0.0, self.count as f64);
        let mut seen = 0u64;
        let mut last_nonempty = 0usize;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            last_nonempty = i;
            if (seen + c) as f64 >= rank {
                let (lo, hi) = bucket_bounds(i);
                // Interpolate linearly inside the bucket.
                let frac = ((rank - seen as f64) / c as f64).clamp(0.0, 1.0);
                let v = if i < SUB { lo } else { lo + (hi - lo) * frac };
                return Some((v / 1000.0).clamp(self.min_ms, self.max_ms.max(self.min_ms)));
            }
            seen += c;
        }
        Some((bucket_bounds(last_nonempty).1 / 1000.0).min(self.max_ms))
    }

    /// Count of samples at or below `le_ms` (a bucket counts when its upper bound is within).
    pub fn count_le(&self, le_ms: f64) -> u64 {
        let le_us = le_ms * 1000.0;
        self.counts
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let (lo, hi) = bucket_bounds(*i);
                if *i < SUB {
                    lo <= le_us
                } else {
                    hi <= le_us + 1.0
                }
            })
            .map(|(_, c)| *c)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist() -> Histogram {
        Histogram::new(StatName {
            full: "h".into(),
            extracted: "h".into(),
            tags: vec![],
        })
    }

    #[test]
    fn bucket_bounds_contain_their_values() {
        for v in [
            0u64,
            1,
            15,
            16,
            17,
            31,
            32,
            1000,
            123_456,
            9_999_999,
            u64::MAX / 3,
        ] {
            let (lo, hi) = bucket_bounds(bucket_index(v));
            assert!(lo <= v as f64 && (v as f64) < hi, "{v} not in [{lo},{hi})");
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_bucket_error() {
        let h = hist();
        for us in 1..=10_000u64 {
            h.record_us(us);
        }
        let s = h.cumulative();
        assert_eq!(s.count, 10_000);
        for (q, want_ms) in [(50.0, 5.0), (90.0, 9.0), (99.0, 9.9), (99.9, 9.99)] {
            let got = s.quantile(q).unwrap();
            assert!(
                (got - want_ms).abs() / want_ms < 0.07,
                "p{q}: {got} vs {want_ms}"
            );
        }
        assert!(hist().cumulative().quantile(50.0).is_none());
    }

    #[test]
    fn interval_counts_only_since_previous_flush() {
        let h = hist();
        h.record_us(100);
        h.flush_interval();
        assert_eq!(h.interval().count, 1);
        h.record_us(200);
        h.record_us(300);
        h.flush_interval();
        assert_eq!(h.interval().count, 2);
        assert_eq!(h.cumulative().count, 3);
    }

    #[test]
    fn prometheus_buckets_are_cumulative() {
        let h = hist();
        h.record_us(300); // 0.3 ms
        h.record_us(2_000); // 2 ms
        h.record_us(20_000); // 20 ms
        let s = h.cumulative();
        assert_eq!(s.count_le(0.5), 1);
        assert_eq!(s.count_le(5.0), 2);
        assert_eq!(s.count_le(25.0), 3);
    }
}
