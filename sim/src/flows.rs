//! Open-loop clients: each flow sends requests at Poisson arrival times (its rate, times the
//! burst factor during bursts) whether or not earlier ones have finished — as real users do —
//! up to the scenario's limit of requests in flight. Arrival times come from the seed, so a
//! run's schedule can be repeated.

use crate::caller::{Call, Caller};
use crate::records::{Outcome, Sent, Sink};
use crate::scenario::{Flow, Protocol};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The rate multiplier at `t` seconds into the run.
pub fn burst_factor(flow: &Flow, t: f64) -> f64 {
    match flow.bursts {
        Some(b) if t % b.every.as_secs_f64() >= b.every.as_secs_f64() - b.length.as_secs_f64() => {
            b.factor
        }
        _ => 1.0,
    }
}

pub fn seed_for(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

pub struct FlowRun {
    pub flow: Flow,
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub seed: u64,
    /// Time 0 of the run, and how long traffic lasts.
    pub start: Instant,
    pub duration: Duration,
    pub max_inflight: usize,
}

/// Sends the flow's requests until `duration` has passed since `start`.
pub async fn run(
    f: FlowRun,
    records: Arc<dyn Sink>,
    caller: Arc<Caller>,
    inflight: Arc<AtomicUsize>,
) {
    let (seed, start, duration, max_inflight) = (f.seed, f.start, f.duration, f.max_inflight);
    let mut rng = fastrand::Rng::with_seed(seed_for(seed, &f.flow.name));
    let f = Arc::new(f);
    let mut t = 0.0f64;
    let mut seq = 0u64;
    let end = duration.as_secs_f64();
    loop {
        let rate = f.flow.rate * burst_factor(&f.flow, t);
        t += -(rng.f64().max(f64::MIN_POSITIVE)).ln() / rate;
        if t >= end {
            return;
        }
        tokio::time::sleep_until((start + Duration::from_secs_f64(t)).into()).await;
        seq += 1;
        let id = format!("{}-{seq}", f.flow.name);
        let at = records.now();
        if inflight.load(Ordering::Relaxed) >= max_inflight {
            records.sent(Sent {
                id,
                flow: f.flow.name.clone(),
                service: f.flow.service.clone(),
                at,
                latency: Duration::ZERO,
                outcome: Outcome::Shed,
                edge: true,
            });
            continue;
        }
        inflight.fetch_add(1, Ordering::Relaxed);
        let (f, records, caller, inflight) =
            (f.clone(), records.clone(), caller.clone(), inflight.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let (outcome, id) = caller
                .call(&Call {
                    addr: f.addr,
                    protocol: f.protocol,
                    service: &f.flow.service,
                    path: &f.flow.path,
                    id: &id,
                    flow: &f.flow.name,
                    body_bytes: f.flow.request_bytes,
                    stream: f.flow.stream,
                })
                .await;
            records.sent(Sent {
                id,
                flow: f.flow.name.clone(),
                service: f.flow.service.clone(),
                at,
                latency: started.elapsed(),
                outcome,
                edge: true,
            });
            inflight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Budget, Burst};

    #[test]
    fn bursts_come_at_the_end_of_each_period() {
        let f = Flow {
            name: "f".into(),
            service: "s".into(),
            path: "/".into(),
            rate: 10.0,
            bursts: Some(Burst {
                every: Duration::from_secs(10),
                length: Duration::from_secs(2),
                factor: 3.0,
            }),
            request_bytes: 0,
            stream: 0,
            budget: Budget::default(),
        };
        assert_eq!(burst_factor(&f, 1.0), 1.0);
        assert_eq!(burst_factor(&f, 8.5), 3.0);
        assert_eq!(burst_factor(&f, 10.5), 1.0);
        assert_ne!(seed_for(1, "a"), seed_for(1, "b"));
        assert_ne!(seed_for(1, "a"), seed_for(2, "a"));
    }
}
