//! The report directory: `summary.json` (every figure and verdict), `index.html` (charts of
//! latency percentiles and error rate over time per flow with the faults marked on the time
//! axis, per-flow tables, the invariants with their examples), plus the access log and the
//! agents' logs the checks read.

use crate::check::{ms, FlowFigures, Verdict};
use crate::records::{round3, FaultEvent, Records, Sample};
use crate::scenario::Scenario;
use serde_json::{json, Value};
use std::fmt::Write;
use std::time::Duration;

/// One second of one flow.
#[derive(Default, Clone)]
pub struct Bucket {
    pub sent: usize,
    pub failed: usize,
    pub latencies: Vec<Duration>,
}

impl Bucket {
    pub fn pct(&self, p: f64) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        Some(ms(l[i]))
    }
}

/// Per flow, one bucket per second of the run (by the time a request was sent).
pub fn series(
    scenario: &Scenario,
    records: &Records,
    seconds: usize,
) -> Vec<(String, Vec<Bucket>)> {
    let sent = records.sent.lock().unwrap();
    scenario
        .flows
        .iter()
        .map(|f| {
            let mut b = vec![Bucket::default(); seconds.max(1)];
            for s in sent.iter().filter(|s| s.edge && s.flow == f.name) {
                let i = (s.at as usize).min(b.len() - 1);
                b[i].sent += 1;
                if s.outcome.ok() {
                    b[i].latencies.push(s.latency);
                } else {
                    b[i].failed += 1;
                }
            }
            (f.name.clone(), b)
        })
        .collect()
}

fn opt_ms(d: Option<Duration>) -> Value {
    d.map(|d| json!(ms(d))).unwrap_or(Value::Null)
}

pub struct Report<'a> {
    pub scenario: &'a Scenario,
    pub seed: u64,
    pub duration: Duration,
    pub mode: &'a str,
    pub verdicts: &'a [Verdict],
    pub figures: &'a [FlowFigures],
    pub series: &'a [(String, Vec<Bucket>)],
    pub faults: &'a [FaultEvent],
    pub notes: &'a [(f64, String)],
    pub samples: &'a [Sample],
}

impl Report<'_> {
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.ok)
    }

    pub fn json(&self) -> Value {
        json!({
            "scenario": self.scenario.name,
            "seed": self.seed,
            "duration_s": self.duration.as_secs_f64(),
            "mode": self.mode,
            "passed": self.passed(),
            "violated": self.verdicts.iter().filter(|v| !v.ok).map(|v| v.invariant).collect::<Vec<_>>(),
            "invariants": self.verdicts.iter().map(Verdict::json).collect::<Vec<_>>(),
            "flows": self.figures.iter().map(|f| json!({
                "name": f.name, "sent": f.sent, "ok": f.ok, "failed": f.failed, "shed": f.shed,
                "p50_ms": opt_ms(f.p50), "p99_ms": opt_ms(f.p99), "p999_ms": opt_ms(f.p999),
                "steady": {"p50_ms": opt_ms(f.steady.0), "p99_ms": opt_ms(f.steady.1), "p999_ms": opt_ms(f.steady.2)},
                "failures_by_cause": f.failures_by_cause.iter().map(|(c, n)| json!({"cause": c, "count": n})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "faults": self.faults.iter().map(FaultEvent::json).collect::<Vec<_>>(),
            "notes": self.notes.iter().map(|(t, n)| json!({"at_s": round3(*t), "note": n})).collect::<Vec<_>>(),
            "series": self.series.iter().map(|(name, b)| (name.clone(), b.iter().enumerate().map(|(t, b)| json!({
                "t": t, "sent": b.sent, "failed": b.failed, "p50_ms": b.pct(0.5), "p99_ms": b.pct(0.99),
            })).collect::<Value>())).collect::<serde_json::Map<_, _>>(),
            "agent_samples": self.samples.iter().map(|s| json!({"at_s": round3(s.at), "rss_kb": s.rss_kb, "fds": s.fds, "pid": s.pid})).collect::<Vec<_>>(),
        })
    }

    pub fn html(&self) -> String {
        let mut h = String::new();
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        let _ = write!(
            h,
            "<!doctype html><meta charset=utf-8><title>plumb-sim {name}: {verdict}</title>\
             <style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:1100px}}\
             table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}\
             .ok{{color:#070}}.bad{{color:#b00;font-weight:bold}}pre{{background:#f6f6f6;padding:6px;overflow-x:auto;font-size:12px}}\
             svg{{background:#fcfcfc;border:1px solid #ddd}}</style>\
             <h1>plumb-sim: {name} — <span class={cls}>{verdict}</span></h1>\
             <p>{desc}</p><p>Seed {seed}, {dur:.0} s, {mode}.</p>",
            name = esc(&self.scenario.name),
            cls = if self.passed() { "ok" } else { "bad" },
            desc = esc(&self.scenario.description),
            seed = self.seed,
            dur = self.duration.as_secs_f64(),
            mode = esc(self.mode),
        );
        h.push_str("<h2>Invariants</h2><table><tr><th>invariant</th><th>result</th><th>what was seen</th></tr>");
        for v in self.verdicts {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class={}>{}</td><td>{}</td></tr>",
                v.invariant,
                if v.ok { "ok" } else { "bad" },
                if v.ok { "held" } else { "VIOLATED" },
                esc(&v.summary)
            );
        }
        h.push_str("</table>");
        for v in self.verdicts.iter().filter(|v| !v.ok) {
            let _ = write!(
                h,
                "<h3 class=bad>{} ({} violations)</h3>",
                v.invariant, v.violations
            );
            for e in &v.examples {
                let _ = write!(h, "<p><b>{}</b>: {}</p>", esc(&e.id), esc(&e.detail));
                if !e.log.is_empty() {
                    let _ = write!(h, "<pre>{}</pre>", esc(&e.log.join("\n")));
                }
            }
        }
        h.push_str("<h2>Flows</h2><table><tr><th>flow</th><th>sent</th><th>ok</th><th>failed</th><th>shed</th>\
                    <th>p50 / p99 / p99.9 ms</th><th>outside faults</th><th>failures by cause</th></tr>");
        let f3 = |a: Option<Duration>, b: Option<Duration>, c: Option<Duration>| {
            [a, b, c]
                .iter()
                .map(|d| d.map(|d| format!("{:.2}", ms(d))).unwrap_or("-".into()))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        for f in self.figures {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&f.name),
                f.sent,
                f.ok,
                f.failed,
                f.shed,
                f3(f.p50, f.p99, f.p999),
                f3(f.steady.0, f.steady.1, f.steady.2),
                esc(&f
                    .failures_by_cause
                    .iter()
                    .map(|(c, n)| format!("{n} × {c}"))
                    .collect::<Vec<_>>()
                    .join(", "))
            );
        }
        h.push_str("</table><h2>Over time</h2><p>Latency of successes (p50 blue, p99 orange; left axis, ms) and \
                    error rate (red bars; right axis, %) per second. Shaded: faults.</p>");
        for (name, buckets) in self.series {
            let _ = write!(h, "<h3>{}</h3>", esc(name));
            h.push_str(&chart(buckets, self.faults));
        }
        h.push_str(
            "<h2>Faults</h2><table><tr><th>kind</th><th>from s</th><th>to s</th><th>what</th></tr>",
        );
        for f in self.faults {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
                f.kind,
                f.start,
                if f.end.is_finite() {
                    format!("{:.1}", f.end)
                } else {
                    "-".into()
                },
                esc(&f.detail)
            );
        }
        h.push_str("</table><h2>Timeline</h2><pre>");
        for (t, n) in self.notes {
            let _ = writeln!(h, "{t:8.3} s  {}", esc(n));
        }
        h.push_str("</pre>");
        if let (Some(first), Some(max)) = (
            self.samples.first(),
            self.samples.iter().map(|s| s.rss_kb).max(),
        ) {
            let _ = write!(
                h,
                "<h2>Agent</h2><p>RSS {:.1} MiB at the first sample, {:.1} MiB at most; file descriptors at most {}.</p>",
                first.rss_kb as f64 / 1024.0,
                max as f64 / 1024.0,
                self.samples.iter().map(|s| s.fds).max().unwrap_or(0)
            );
        }
        h
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG chart: p50 and p99 lines, error-rate bars, fault windows shaded.
fn chart(b: &[Bucket], faults: &[FaultEvent]) -> String {
    let (w, h, pad) = (1000.0, 220.0, 40.0);
    let n = b.len().max(1) as f64;
    let x = |t: f64| pad + (t / n) * (w - 2.0 * pad);
    let p99: Vec<Option<f64>> = b.iter().map(|b| b.pct(0.99)).collect();
    let p50: Vec<Option<f64>> = b.iter().map(|b| b.pct(0.5)).collect();
    let top = p99.iter().flatten().cloned().fold(1.0, f64::max) * 1.1;
    let y = |v: f64| h - pad + 10.0 - (v / top).min(1.0) * (h - 2.0 * pad);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">"
    );
    for (i, f) in faults.iter().enumerate() {
        let end = if f.end.is_finite() { f.end } else { n };
        let (x0, x1) = (x(f.start), x(end.max(f.start + 0.3)));
        // Labels on three rows, so faults close together stay readable.
        let ly = 20 + (i % 3) * 11;
        let _ = write!(
            s,
            "<rect x=\"{x0:.1}\" y=\"10\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#8888ff\" opacity=\"0.15\"><title>{}: {}</title></rect>\
             <text x=\"{x0:.1}\" y=\"{ly}\" font-size=\"9\" fill=\"#446\">{}</text>",
            x1 - x0,
            h - pad,
            f.kind,
            esc(&f.detail),
            f.kind
        );
    }
    for (i, bk) in b.iter().enumerate() {
        if bk.failed > 0 && bk.sent > 0 {
            let rate = bk.failed as f64 / bk.sent as f64;
            let bh = rate * (h - 2.0 * pad);
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#d22\" opacity=\"0.7\"><title>{} s: {} of {} failed</title></rect>",
                x(i as f64),
                h - pad + 10.0 - bh,
                ((w - 2.0 * pad) / n).max(1.0),
                i,
                bk.failed,
                bk.sent
            );
        }
    }
    for (series, colour) in [(&p50, "#1f77b4"), (&p99, "#ff7f0e")] {
        let pts: Vec<String> = series
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", x(i as f64 + 0.5), y(v))))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            pts.join(" ")
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{pad}\" y1=\"{b0}\" x2=\"{x1}\" y2=\"{b0}\" stroke=\"#999\"/>\
         <text x=\"2\" y=\"{yt:.1}\" font-size=\"10\">{top:.1} ms</text><text x=\"2\" y=\"{b0}\" font-size=\"10\">0</text>\
         <text x=\"{xr:.1}\" y=\"{yt:.1}\" font-size=\"10\">100 %</text><text x=\"{x1:.1}\" y=\"{bl}\" font-size=\"10\" text-anchor=\"end\">{n:.0} s</text></svg>",
        b0 = h - pad + 10.0,
        x1 = w - pad,
        yt = y(top) + 4.0,
        xr = w - pad + 2.0,
        bl = h - 5.0,
    );
    s
}
