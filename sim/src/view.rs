//! The live view: progress, request and error rates, p99 per flow over the last seconds, and
//! the faults under way. On a terminal it redraws in place every second; otherwise (CI logs)
//! it prints one plain line every ten seconds.

use crate::records::{Outcome, Records};
use crate::scenario::Scenario;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::time::Duration;

struct FlowView {
    sent: u64,
    failed: u64,
    /// (completion second, latency, failed) of the last 5 s.
    recent: VecDeque<(f64, Duration, bool)>,
}

pub struct View {
    tty: bool,
    flows: Vec<String>,
    state: HashMap<String, FlowView>,
    cursor: usize,
    drawn: usize,
    ticks: u64,
}

impl View {
    pub fn new(scenario: &Scenario) -> Self {
        // SAFETY: isatty(2) has no preconditions.
        let tty = unsafe { libc::isatty(1) } == 1 && std::env::var_os("CI").is_none();
        let flows: Vec<String> = scenario.flows.iter().map(|f| f.name.clone()).collect();
        Self {
            tty,
            state: flows
                .iter()
                .map(|f| {
                    (
                        f.clone(),
                        FlowView {
                            sent: 0,
                            failed: 0,
                            recent: VecDeque::new(),
                        },
                    )
                })
                .collect(),
            flows,
            cursor: 0,
            drawn: 0,
            ticks: 0,
        }
    }

    /// Takes in what finished since the last tick and shows it.
    pub fn tick(&mut self, records: &Records, total: Duration) {
        let now = records.now();
        {
            let sent = records.sent.lock().unwrap();
            if self.cursor > sent.len() {
                // A new epoch: its records start over.
                self.cursor = 0;
                for f in self.state.values_mut() {
                    (f.sent, f.failed) = (0, 0);
                    f.recent.clear();
                }
            }
            for s in sent[self.cursor..].iter().filter(|s| s.edge) {
                if let Some(f) = self.state.get_mut(&s.flow) {
                    f.sent += 1;
                    let failed = !s.outcome.ok() && s.outcome != Outcome::Shed;
                    if failed {
                        f.failed += 1;
                    }
                    f.recent.push_back((now, s.latency, failed));
                }
            }
            self.cursor = sent.len();
        }
        for f in self.state.values_mut() {
            while f.recent.front().is_some_and(|r| r.0 < now - 5.0) {
                f.recent.pop_front();
            }
        }
        let faults: Vec<String> = records
            .faults
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.end > now)
            .map(|f| format!("{} ({})", f.kind, f.detail))
            .collect();
        let mut lines = vec![format!(
            "plumb-sim  {:>6.1} s / {:.0} s  faults now: {}",
            now,
            total.as_secs_f64(),
            if faults.is_empty() {
                "none".to_string()
            } else {
                faults.join("; ")
            }
        )];
        for name in &self.flows {
            let f = &self.state[name];
            let window = f.recent.len() as f64 / 5.0;
            let errors = f.recent.iter().filter(|r| r.2).count() as f64;
            let mut lat: Vec<Duration> = f.recent.iter().filter(|r| !r.2).map(|r| r.1).collect();
            lat.sort();
            let p99 = lat
                .get(((lat.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
                .map(|d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
                .unwrap_or_else(|| "-".into());
            lines.push(format!(
                "  {name:<16} sent {:>7}  failed {:>5}  {:>7.1} req/s  errors {:>5.1} %  p99 {p99}",
                f.sent,
                f.failed,
                window,
                if f.recent.is_empty() {
                    0.0
                } else {
                    100.0 * errors / f.recent.len() as f64
                },
            ));
        }
        self.ticks += 1;
        let mut out = std::io::stdout().lock();
        if self.tty {
            if self.drawn > 0 {
                let _ = write!(out, "\x1b[{}A", self.drawn);
            }
            for l in &lines {
                let _ = writeln!(out, "\x1b[2K{l}");
            }
            self.drawn = lines.len();
        } else if self.ticks % 10 == 0 {
            for l in &lines {
                let _ = writeln!(out, "{l}");
            }
        }
        let _ = out.flush();
    }
}
