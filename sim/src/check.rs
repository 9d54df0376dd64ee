//! The invariants, checked against everything the run recorded: what clients sent and got,
//! what replicas received and why they answered as they did, Plumb's access log and stats,
//! the faults' windows, and the agent's memory and file descriptors. A violation names the
//! invariant, the request ID and the access-log lines about that request.

use crate::records::{Cause, FaultEvent, Outcome, Receipt, Records, Sent};
use crate::scenario::Scenario;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// After a fault ends, failures are still blamed on it for this long (connections it broke
/// are found broken on their next use; ejected hosts come back).
const GRACE: f64 = 2.0;
/// Examples kept per violated invariant.
const EXAMPLES: usize = 5;

#[derive(Debug, Clone)]
pub struct LogLine {
    pub raw: String,
    pub id: String,
    pub service: String,
    pub status: u16,
    pub flags: String,
    /// The agent generation that wrote it.
    pub gen: String,
}

pub fn parse_log(text: &str) -> Vec<LogLine> {
    text.lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            let s = |k: &str| match &v[k] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            Some(LogLine {
                raw: l.to_string(),
                id: s("id"),
                service: s("service"),
                status: s("status").parse().unwrap_or(0),
                flags: s("flags"),
                gen: s("gen"),
            })
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    pub detail: String,
    pub log: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Verdict {
    pub invariant: &'static str,
    pub ok: bool,
    pub summary: String,
    pub examples: Vec<Example>,
    pub violations: usize,
}

impl Verdict {
    fn new(invariant: &'static str) -> Self {
        Self {
            invariant,
            ok: true,
            summary: String::new(),
            examples: Vec::new(),
            violations: 0,
        }
    }

    /// Counts a violation; its example (which may read the access log) is made only while
    /// fewer than `EXAMPLES` are kept.
    fn violate(&mut self, ex: impl FnOnce() -> Example) {
        self.ok = false;
        self.violations += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(ex());
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "invariant": self.invariant, "ok": self.ok, "summary": self.summary,
            "violations": self.violations,
            "examples": self.examples.iter().map(|e| json!({"id": e.id, "detail": e.detail, "access_log": e.log})).collect::<Vec<_>>(),
        })
    }
}

/// What the checks need besides the records.
pub struct Inputs<'a> {
    pub scenario: &'a Scenario,
    pub records: &'a Records,
    pub log: &'a [LogLine],
    /// Plumb's counters over the epoch (after − before) when one agent generation served all
    /// of it; else the counters of the last generation, which started during the epoch.
    pub final_stats: Option<HashMap<String, i64>>,
    /// With the last generation's counters: its number (only its log lines are compared).
    pub stats_generation: Option<u32>,
    /// Requests still without an outcome when the run ended.
    pub unfinished: usize,
    pub agent_problems: Vec<String>,
}

struct Index<'a> {
    receipts: HashMap<&'a str, Vec<&'a Receipt>>,
    sent: HashMap<&'a str, &'a Sent>,
    log: HashMap<(&'a str, &'a str), Vec<usize>>,
    lines: &'a [LogLine],
    faults: &'a [FaultEvent],
}

impl<'a> Index<'a> {
    /// Access-log lines about a request and the calls it caused.
    fn lines_about(&self, id: &str) -> Vec<String> {
        let root = id.split('.').next().unwrap_or(id);
        self.lines
            .iter()
            .filter(|l| l.id == root || l.id.starts_with(&format!("{root}.")))
            .take(12)
            .map(|l| l.raw.clone())
            .collect()
    }

    fn faults_at(&self, from: f64, to: f64) -> Vec<&'a FaultEvent> {
        self.faults
            .iter()
            .filter(|f| from <= f.end + GRACE && to >= f.start)
            .collect()
    }

    /// Why a request failed, if anything explains it.
    fn explain(&self, s: &Sent, depth: usize) -> Option<String> {
        if depth > 16 {
            return None;
        }
        if let Some(rs) = self.receipts.get(s.id.as_str()) {
            if let Some(last) = rs.iter().max_by(|a, b| a.at.total_cmp(&b.at)) {
                match &last.cause {
                    Cause::Injected => {
                        return Some(format!("an error injected by {}", last.replica))
                    }
                    Cause::Downstream(child) => {
                        if let Some(c) = self.sent.get(child.as_str()) {
                            if let Some(why) = self.explain(c, depth + 1) {
                                return Some(format!("its call {child} failed: {why}"));
                            }
                        }
                    }
                    Cause::Served => {}
                }
            }
        }
        let key = (s.service.as_str(), s.id.as_str());
        if let Some(flag) = self
            .log
            .get(&key)
            .into_iter()
            .flatten()
            .map(|&i| &self.lines[i])
            .find(|l| !l.flags.is_empty() && l.flags != "-")
        {
            return Some(format!("Plumb's response flag {}", flag.flags));
        }
        let end = s.at + s.latency.as_secs_f64();
        self.faults_at(s.at, end)
            .into_iter()
            .find(|f| f.may_fail_traffic && f.kind.starts_with("agent"))
            .map(|f| format!("fault {} ({})", f.kind, f.detail))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Per-flow figures for the report.
pub struct FlowFigures {
    pub name: String,
    pub sent: usize,
    pub ok: usize,
    pub failed: usize,
    pub shed: usize,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub p999: Option<Duration>,
    /// Latency percentiles of successes outside fault windows (what the budget is held to).
    pub steady: (Option<Duration>, Option<Duration>, Option<Duration>),
    pub failures_by_cause: Vec<(String, usize)>,
}

pub fn check(inp: &Inputs) -> (Vec<Verdict>, Vec<FlowFigures>) {
    let sent = inp.records.sent.lock().unwrap().clone();
    let receipts = inp.records.receipts.lock().unwrap().clone();
    let faults = inp.records.faults.lock().unwrap().clone();
    let mut idx = Index {
        receipts: HashMap::new(),
        sent: HashMap::new(),
        log: HashMap::new(),
        lines: inp.log,
        faults: &faults,
    };
    for r in &receipts {
        idx.receipts.entry(r.id.as_str()).or_default().push(r);
    }
    for s in &sent {
        idx.sent.insert(s.id.as_str(), s);
    }
    for (i, l) in inp.log.iter().enumerate() {
        idx.log
            .entry((l.service.as_str(), l.id.as_str()))
            .or_default()
            .push(i);
    }
    let mut verdicts = Vec::new();

    // 1. Every request got an answer or a failure before the end.
    let mut v = Verdict::new("every_request_finished");
    v.summary = format!(
        "{} requests sent; {} without an outcome at the end",
        sent.len(),
        inp.unfinished
    );
    if inp.unfinished > 0 {
        v.violate(|| Example {
            id: "-".into(),
            detail: format!("{} requests never finished", inp.unfinished),
            log: vec![],
        });
    }
    verdicts.push(v);

    // 2. Every failure is explained; 3. none during a hand-over or a control plane fault.
    let mut explained = Verdict::new("failures_explained");
    let mut calm = Verdict::new("lossless_faults_lose_nothing");
    let mut causes: HashMap<String, HashMap<String, usize>> = HashMap::new();
    let mut failed_total = 0;
    for s in sent
        .iter()
        .filter(|s| !s.outcome.ok() && s.outcome != Outcome::Shed)
    {
        failed_total += 1;
        let why = idx.explain(s, 0);
        let end = s.at + s.latency.as_secs_f64();
        let active = idx.faults_at(s.at, end);
        if s.edge {
            let cause = match &why {
                Some(w) if w.contains("injected") => "injected error".to_string(),
                Some(w) if w.starts_with("Plumb's response flag") => {
                    w.trim_start_matches("Plumb's ").to_string()
                }
                Some(w) if w.contains("response flag") => {
                    format!(
                        "call failed with {}",
                        w.rsplit("Plumb's ").next().unwrap_or(w)
                    )
                }
                Some(w) => w.split(" (").next().unwrap_or(w).to_string(),
                None => "unexplained".into(),
            };
            *causes
                .entry(s.flow.clone())
                .or_default()
                .entry(cause)
                .or_default() += 1;
        }
        // A failure while only faults that must not fail traffic (a hand-over, the control
        // plane going away) are under way is theirs, unless a replica's injected error
        // explains it.
        let risky = active.iter().any(|f| f.may_fail_traffic);
        let calm_fault = active
            .iter()
            .find(|f| !f.may_fail_traffic)
            .filter(|_| !risky);
        let injected = why.as_deref().is_some_and(|w| w.contains("injected"));
        match (calm_fault, &why) {
            (Some(f), _) if !injected => calm.violate(|| Example {
                id: s.id.clone(),
                detail: format!(
                    "{} to {} failed ({}{}) at {:.3} s during {} ({}), which must not fail traffic",
                    if s.edge { "request" } else { "call" },
                    s.service,
                    s.outcome.label(),
                    why.as_deref().map(|w| format!(", {w}")).unwrap_or_default(),
                    s.at,
                    f.kind,
                    f.detail
                ),
                log: idx.lines_about(&s.id),
            }),
            (_, None) => explained.violate(|| Example {
                id: s.id.clone(),
                detail: format!(
                    "{} to {} at {:.3} s failed ({}) with no injected error, response flag or agent fault to explain it",
                    if s.edge { "request" } else { "call" },
                    s.service,
                    s.at,
                    s.outcome.label()
                ),
                log: idx.lines_about(&s.id),
            }),
            _ => {}
        }
    }
    explained.summary = format!(
        "{failed_total} failed requests and calls; {} unexplained",
        explained.violations
    );
    calm.summary = format!(
        "{} failures during hand-overs, control plane restarts and outages, and certificate rotations",
        calm.violations
    );
    verdicts.push(explained);
    verdicts.push(calm);

    // 4. What clients got is what Plumb logged; 5. every success came from a replica.
    let mut logged = Verdict::new("access_log_matches_clients");
    let mut served = Verdict::new("successes_were_served");
    let mut answered = 0;
    for s in &sent {
        let status = match s.outcome {
            Outcome::Status(st) => st,
            Outcome::Grpc(_) => 200,
            _ => continue,
        };
        answered += 1;
        let lines = idx
            .log
            .get(&(s.service.as_str(), s.id.as_str()))
            .cloned()
            .unwrap_or_default();
        let end = s.at + s.latency.as_secs_f64();
        let killed = idx
            .faults_at(s.at - 1.0, end + 1.0)
            .iter()
            .any(|f| f.kind == "agent-kill");
        if (lines.len() != 1 || inp.log[lines[0]].status != status) && !(lines.is_empty() && killed)
        {
            {
                logged.violate(|| Example {
                    id: s.id.clone(),
                    detail: format!(
                        "the client got {} from {} but the access log has {} line(s) for it{}",
                        status,
                        s.service,
                        lines.len(),
                        lines
                            .first()
                            .map(|&i| format!(" (status {})", inp.log[i].status))
                            .unwrap_or_default()
                    ),
                    log: idx.lines_about(&s.id),
                });
            }
        }
        if s.outcome.ok()
            && !idx
                .receipts
                .get(s.id.as_str())
                .is_some_and(|rs| rs.iter().any(|r| r.ok && r.service == s.service))
        {
            served.violate(|| Example {
                id: s.id.clone(),
                detail: format!("a success from {} that no replica of it served", s.service),
                log: idx.lines_about(&s.id),
            });
        }
    }
    let known: std::collections::HashSet<&str> = sent.iter().map(|s| s.id.as_str()).collect();
    for l in inp.log.iter().filter(|l| !known.contains(l.id.as_str())) {
        logged.violate(|| Example {
            id: l.id.clone(),
            detail: "an access-log line for a request no client sent".into(),
            log: vec![l.raw.clone()],
        });
    }
    logged.summary = format!(
        "{answered} answered requests against {} access-log lines; {} mismatches",
        inp.log.len(),
        logged.violations
    );
    served.summary = format!("{} successes not backed by a replica", served.violations);
    verdicts.push(logged);
    verdicts.push(served);

    // 6. Retries hide errors where the route has them.
    for svc in inp
        .scenario
        .services
        .iter()
        .filter(|s| s.route.retries.is_some())
    {
        let mut v = Verdict::new("retries_hide_replica_errors");
        let mut hit = 0;
        let mut still_failed = 0;
        let mut retried = 0;
        for s in sent.iter().filter(|s| s.service == svc.name) {
            let Some(rs) = idx.receipts.get(s.id.as_str()) else {
                continue;
            };
            let rs: Vec<_> = rs.iter().filter(|r| r.service == svc.name).collect();
            if rs.len() > 1 {
                retried += 1;
            }
            if rs.iter().any(|r| r.cause == Cause::Injected) {
                hit += 1;
                if !s.outcome.ok() && rs.iter().all(|r| r.cause == Cause::Injected) && rs.len() == 1
                {
                    still_failed += 1;
                    if still_failed <= EXAMPLES {
                        v.examples.push(Example {
                            id: s.id.clone(),
                            detail: format!(
                                "{} answered with an injected error and the request was not retried",
                                rs[0].replica
                            ),
                            log: idx.lines_about(&s.id),
                        });
                    }
                }
            }
        }
        let share = if hit > 0 {
            still_failed as f64 / hit as f64
        } else {
            0.0
        };
        v.summary = format!(
            "{}: {hit} requests met an injected error; {still_failed} failed on their first and only attempt; {retried} were retried",
            svc.name
        );
        if hit >= 10 && (share > 0.2 || retried == 0) {
            v.ok = false;
            v.violations = still_failed.max(1);
        } else {
            v.examples.clear();
        }
        verdicts.push(v);
    }

    // 7. Ejections seen while a replica failed every request (recorded by the fault).
    for o in inp.records.observations.lock().unwrap().iter() {
        let mut v = Verdict::new(o.invariant);
        v.summary = o.detail.clone();
        if !o.ok {
            v.violate(|| Example {
                id: "-".into(),
                detail: o.detail.clone(),
                log: vec![],
            });
        }
        verdicts.push(v);
    }

    // 8. Budgets per flow.
    let mut figures = Vec::new();
    for flow in &inp.scenario.flows {
        let of_flow: Vec<&Sent> = sent
            .iter()
            .filter(|s| s.edge && s.flow == flow.name)
            .collect();
        let shed = of_flow
            .iter()
            .filter(|s| s.outcome == Outcome::Shed)
            .count();
        let ok: Vec<&&Sent> = of_flow.iter().filter(|s| s.outcome.ok()).collect();
        let failed = of_flow.len() - ok.len() - shed;
        let mut all: Vec<Duration> = ok.iter().map(|s| s.latency).collect();
        all.sort();
        let mut steady: Vec<Duration> = ok
            .iter()
            .filter(|s| {
                idx.faults_at(s.at, s.at + s.latency.as_secs_f64())
                    .is_empty()
            })
            .map(|s| s.latency)
            .collect();
        steady.sort();
        let (p50, p99, p999) = (
            percentile(&steady, 0.5),
            percentile(&steady, 0.99),
            percentile(&steady, 0.999),
        );
        let mut v = Verdict::new("latency_budget");
        let mut parts = Vec::new();
        for (label, got, budget) in [
            ("p50", p50, flow.budget.p50),
            ("p99", p99, flow.budget.p99),
            ("p99.9", p999, flow.budget.p999),
        ] {
            if let (Some(g), Some(b)) = (got, budget) {
                parts.push(format!("{label} {:.2} ms (budget {:.0} ms)", ms(g), ms(b)));
                if g > b {
                    v.violate(|| Example {
                        id: "-".into(),
                        detail: format!(
                            "{}: {label} {:.2} ms outside faults is over its budget of {:.0} ms",
                            flow.name,
                            ms(g),
                            ms(b)
                        ),
                        log: vec![],
                    });
                }
            }
        }
        v.summary = format!("{}: {}", flow.name, parts.join(", "));
        if !parts.is_empty() {
            verdicts.push(v);
        }
        let mut e = Verdict::new("error_budget");
        let counted = of_flow.len() - shed;
        let rate = if counted > 0 {
            failed as f64 / counted as f64
        } else {
            0.0
        };
        e.summary = format!(
            "{}: {failed} of {counted} failed ({:.2} %, budget {:.2} %)",
            flow.name,
            rate * 100.0,
            flow.budget.max_error_rate * 100.0
        );
        if rate > flow.budget.max_error_rate {
            let detail = e.summary.clone();
            e.violate(|| Example {
                id: "-".into(),
                detail,
                log: vec![],
            });
        }
        verdicts.push(e);
        let mut by_cause: Vec<(String, usize)> = causes
            .remove(&flow.name)
            .unwrap_or_default()
            .into_iter()
            .collect();
        by_cause.sort_by_key(|c| std::cmp::Reverse(c.1));
        figures.push(FlowFigures {
            name: flow.name.clone(),
            sent: of_flow.len(),
            ok: ok.len(),
            failed,
            shed,
            p50: percentile(&all, 0.5),
            p99: percentile(&all, 0.99),
            p999: percentile(&all, 0.999),
            steady: (p50, p99, p999),
            failures_by_cause: by_cause,
        });
        if shed > 0 {
            let mut b = Verdict::new("no_backlog");
            b.violate(|| Example {
                id: "-".into(),
                detail: format!(
                    "{}: {shed} requests not sent because {} were already in flight",
                    flow.name, inp.scenario.limits.max_inflight
                ),
                log: vec![],
            });
            b.summary = b.examples[0].detail.clone();
            verdicts.push(b);
        }
    }

    // 8b. After a certificate rotation, new connections to replicas present the new identity.
    let rotations = inp.records.rotations.lock().unwrap().clone();
    for (i, (t, id)) in rotations.iter().enumerate() {
        let until = rotations.get(i + 1).map_or(f64::INFINITY, |r| r.0 + 1.0);
        let mut v = Verdict::new("rotated_certificate_in_use");
        let mut checked = 0;
        for r in receipts
            .iter()
            .filter(|r| r.conn_at > t + 1.0 && r.conn_at < until && !r.peer.is_empty())
        {
            checked += 1;
            if &r.peer != id {
                v.violate(|| Example {
                    id: r.id.clone(),
                    detail: format!(
                        "{} accepted a connection at {:.3} s, after the rotation to {id} at {t:.3} s, from {}",
                        r.replica, r.conn_at, r.peer
                    ),
                    log: idx.lines_about(&r.id),
                });
            }
        }
        let old = receipts
            .iter()
            .filter(|r| r.at > t + 1.0 && r.at < until && !r.peer.is_empty() && &r.peer != id)
            .count();
        v.summary = format!(
            "rotation to {id} at {t:.1} s: {checked} requests on connections opened since, {} with another identity; {old} requests on connections opened before (allowed)",
            v.violations
        );
        verdicts.push(v);
    }

    // 8c. Each canary step sends the canary its share of the service's requests (RDS weighted
    // clusters applied): judged on the first receipt of each request, from 0.5 s into the step.
    let steps = inp.records.canary_steps.lock().unwrap().clone();
    if !steps.is_empty() {
        let mut v = Verdict::new("canary_share_follows_weights");
        let mut parts = Vec::new();
        for (svc, weight, from, to) in &steps {
            let mut first: HashMap<&str, &Receipt> = HashMap::new();
            for r in receipts
                .iter()
                .filter(|r| &r.service == svc && r.at >= from + 0.5 && r.at <= *to)
            {
                first
                    .entry(r.id.as_str())
                    .and_modify(|x| {
                        if r.at < x.at {
                            *x = r
                        }
                    })
                    .or_insert(r);
            }
            let n = first.len();
            if n < 20 {
                parts.push(format!("{weight} %: {n} requests, not judged"));
                continue;
            }
            let canary = first
                .values()
                .filter(|r| r.replica.contains("-canary-"))
                .count();
            let share = canary as f64 / n as f64;
            let p = *weight as f64 / 100.0;
            let tolerance = 4.0 * (p * (1.0 - p) / n as f64).sqrt() + 0.05;
            parts.push(format!("{weight} %: {:.1} % of {n}", share * 100.0));
            if (share - p).abs() > tolerance {
                v.violate(|| Example {
                    id: "-".into(),
                    detail: format!(
                        "{svc}: from {from:.1} s to {to:.1} s the canary was set to {weight} % but got {:.1} % of {n} requests",
                        share * 100.0
                    ),
                    log: vec![],
                });
            }
        }
        v.summary = parts.join("; ");
        verdicts.push(v);
    }

    // 9. Memory and file descriptors bounded and not growing.
    verdicts.push(resources(inp));

    // 10. Plumb's own counts agree with its access log (one generation only).
    let mut st = Verdict::new("stats_match_access_log");
    match &inp.final_stats {
        Some(stats) => {
            let gen = inp.stats_generation.map(|g| g.to_string());
            let mut parts = Vec::new();
            for svc in &inp.scenario.services {
                let stat = stats
                    .get(&format!("http.{}.downstream_rq_total", svc.name))
                    .copied()
                    .unwrap_or(0);
                let lines = inp
                    .log
                    .iter()
                    .filter(|l| l.service == svc.name && gen.as_ref().is_none_or(|g| &l.gen == g))
                    .count() as i64;
                parts.push(format!("{}: {stat} requests, {lines} lines", svc.name));
                if stat != lines {
                    st.violate(|| Example {
                        id: "-".into(),
                        detail: format!(
                            "http.{}.downstream_rq_total is {stat} but the access log has {lines} lines for it{}",
                            svc.name,
                            gen.as_ref().map(|g| format!(" from generation {g}")).unwrap_or_default()
                        ),
                        log: vec![],
                    });
                }
            }
            st.summary = match &gen {
                Some(g) => format!("the last agent generation ({g}): {}", parts.join("; ")),
                None => parts.join("; "),
            };
        }
        None => st.summary = "not compared: the agent's counters could not be read".into(),
    }
    verdicts.push(st);

    let mut g = Verdict::new("agent_generations_exit_cleanly");
    g.summary = format!("{} problems", inp.agent_problems.len());
    for p in &inp.agent_problems {
        g.violate(|| Example {
            id: "-".into(),
            detail: p.clone(),
            log: vec![],
        });
    }
    verdicts.push(g);
    (verdicts, figures)
}

fn resources(inp: &Inputs) -> Verdict {
    let samples = inp.records.samples.lock().unwrap().clone();
    let mut v = Verdict::new("resources_bounded");
    let max_rss = samples.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    let max_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    v.summary = format!(
        "max RSS {:.1} MiB (limit {} MiB), max fds {max_fds} (limit {}), {} samples",
        max_rss as f64 / 1024.0,
        inp.scenario.limits.max_rss_mb,
        inp.scenario.limits.max_fds,
        samples.len()
    );
    if max_rss > inp.scenario.limits.max_rss_mb * 1024 {
        v.violate(|| Example {
            id: "-".into(),
            detail: format!("RSS reached {:.1} MiB", max_rss as f64 / 1024.0),
            log: vec![],
        });
    }
    if max_fds > inp.scenario.limits.max_fds {
        v.violate(|| Example {
            id: "-".into(),
            detail: format!("{max_fds} file descriptors open"),
            log: vec![],
        });
    }
    // Growth: the last quarter against the second (the first is warm-up), per generation.
    if samples.len() >= 40 {
        let q = samples.len() / 4;
        let mean = |s: &[crate::records::Sample]| {
            s.iter().map(|x| x.rss_kb as f64).sum::<f64>() / s.len() as f64
        };
        let (second, last) = (&samples[q..2 * q], &samples[3 * q..]);
        let same_process = second.iter().chain(last).all(|s| s.pid == second[0].pid);
        if same_process && mean(last) > mean(second) * 1.5 + 20_480.0 {
            v.violate(|| Example {
                id: "-".into(),
                detail: format!(
                    "RSS grew from {:.1} MiB to {:.1} MiB on average between the second and the last quarter",
                    mean(second) / 1024.0,
                    mean(last) / 1024.0
                ),
                log: vec![],
            });
        }
    }
    v
}
