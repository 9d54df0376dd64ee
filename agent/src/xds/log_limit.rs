//! Rate limits for repetitive warnings: a control plane that re-sends the same bad resource
//! after every NACK, or a stream that fails over and over, must not flood the log. The first
//! occurrence is logged; further ones within the interval are counted and reported with the
//! next one logged.

use std::time::Duration;
use tokio::time::Instant;

/// At most one line per key per interval.
pub(super) const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(super) struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(n)`: log now, mentioning the `n` occurrences suppressed since the last line.
    /// `None`: suppress this one.
    pub(super) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_interval_with_the_count_of_what_was_suppressed() {
        let mut l = LogLimit::default();
        assert_eq!(l.allow(Instant::now()), Some(0));
        for _ in 0..1000 {
            assert_eq!(l.allow(Instant::now()), None);
        }
        tokio::time::advance(INTERVAL).await;
        assert_eq!(l.allow(Instant::now()), Some(1000));
        assert_eq!(l.allow(Instant::now()), None);
    }
}
