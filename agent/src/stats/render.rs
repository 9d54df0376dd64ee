//! Rendering of the stats store in Envoy's three admin formats: text, JSON and Prometheus.

use super::histogram::{HistogramSnapshot, PROMETHEUS_BUCKETS_MS, SUPPORTED_QUANTILES};
use super::{StatName, StatsSnapshot};
use std::collections::BTreeMap;
use std::fmt::Write;

/// `?filter=REGEX` and `?usedonly` of Envoy's `/stats`.
#[derive(Debug, Default, Clone)]
pub struct StatsFilter {
    pub regex: Option<regex::Regex>,
    pub used_only: bool,
}

impl StatsFilter {
    fn keeps(&self, name: &str, used: bool) -> bool {
        if self.used_only && !used {
            return false;
        }
        self.regex.as_ref().is_none_or(|r| r.is_match(name))
    }
}

/// Envoy prints numbers like `%g`; three decimals is 1 µs resolution for `_ms` stats.
fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(fmt_num).unwrap_or_else(|| "nan".into())
}

pub fn render_text(snap: &StatsSnapshot, filter: &StatsFilter) -> String {
    let mut lines: BTreeMap<&str, String> = BTreeMap::new();
    for c in &snap.counters {
        if filter.keeps(&c.name().full, c.used()) {
            lines.insert(&c.name().full, c.value().to_string());
        }
    }
    for g in &snap.gauges {
        if filter.keeps(&g.name().full, g.used()) {
            lines.insert(&g.name().full, g.value().to_string());
        }
    }
    let mut out = String::new();
    for (name, value) in lines {
        let _ = writeln!(out, "{name}: {value}");
    }
    for h in &snap.histograms {
        let cum = h.cumulative();
        if !filter.keeps(&h.name().full, cum.count > 0) {
            continue;
        }
        let _ = write!(out, "{}:", h.name().full);
        if cum.count == 0 {
            out.push_str(" No recorded values\n");
            continue;
        }
        let int = h.interval();
        for q in SUPPORTED_QUANTILES {
            let _ = write!(
                out,
                " P{}({},{})",
                fmt_num(q),
                fmt_opt(int.quantile(q)),
                fmt_opt(cum.quantile(q))
            );
        }
        out.push('\n');
    }
    out
}

pub fn render_json(snap: &StatsSnapshot, filter: &StatsFilter) -> serde_json::Value {
    use serde_json::json;
    let mut stats: Vec<(String, serde_json::Value)> = Vec::new();
    for c in &snap.counters {
        if filter.keeps(&c.name().full, c.used()) {
            stats.push((c.name().full.clone(), json!(c.value())));
        }
    }
    for g in &snap.gauges {
        if filter.keeps(&g.name().full, g.used()) {
            stats.push((g.name().full.clone(), json!(g.value())));
        }
    }
    stats.sort_by(|a, b| a.0.cmp(&b.0));
    let mut list: Vec<serde_json::Value> = stats
        .into_iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    let mut computed = Vec::new();
    for h in &snap.histograms {
        let cum = h.cumulative();
        if !filter.keeps(&h.name().full, cum.count > 0) {
            continue;
        }
        let int = h.interval();
        let values: Vec<_> = SUPPORTED_QUANTILES
            .iter()
            .map(|q| json!({"interval": int.quantile(*q), "cumulative": cum.quantile(*q)}))
            .collect();
        computed.push(json!({"name": h.name().full, "values": values}));
    }
    if !computed.is_empty() {
        list.push(json!({"histograms": {
            "supported_quantiles": SUPPORTED_QUANTILES,
            "computed_quantiles": computed,
        }}));
    }
    json!({ "stats": list })
}

/// Prometheus metric name for a tag-extracted stat name: `envoy_` + sanitized.
fn prom_name(extracted: &str) -> String {
    let mut s = String::with_capacity(extracted.len() + 6);
    s.push_str("envoy_");
    for ch in extracted.chars() {
        if ch.is_ascii_alphanumeric() || ch == '_' || ch == ':' {
            s.push(ch);
        } else {
            s.push('_');
        }
    }
    s
}

fn prom_labels(tags: &[(String, String)], extra: Option<(&str, &str)>) -> String {
    if tags.is_empty() && extra.is_none() {
        return String::new();
    }
    let mut out = String::from("{");
    let mut first = true;
    let all = tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra);
    for (k, v) in all {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for ch in v.chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// Prometheus text exposition format 0.0.4, names and labels as Envoy's `/stats/prometheus`.
pub fn render_prometheus(snap: &StatsSnapshot, filter: &StatsFilter) -> String {
    // Group by metric family: stats differing only in tags share one TYPE line.
    let mut families: BTreeMap<String, (&'static str, Vec<String>)> = BTreeMap::new();
    let mut add = |name: &StatName, kind: &'static str, value: String| {
        let fam = prom_name(&name.extracted);
        let line = format!("{fam}{} {value}", prom_labels(&name.tags, None));
        families
            .entry(fam)
            .or_insert((kind, Vec::new()))
            .1
            .push(line);
    };
    for c in &snap.counters {
        if filter.keeps(&c.name().full, c.used()) {
            add(c.name(), "counter", c.value().to_string());
        }
    }
    for g in &snap.gauges {
        if filter.keeps(&g.name().full, g.used()) {
            add(g.name(), "gauge", g.value().to_string());
        }
    }
    let mut hist_families: BTreeMap<String, Vec<(StatName, HistogramSnapshot)>> = BTreeMap::new();
    for h in &snap.histograms {
        let cum = h.cumulative();
        if filter.keeps(&h.name().full, cum.count > 0) {
            hist_families
                .entry(prom_name(&h.name().extracted))
                .or_default()
                .push((h.name().clone(), cum));
        }
    }
    let mut out = String::new();
    for (fam, (kind, lines)) in &families {
        let _ = writeln!(out, "# TYPE {fam} {kind}");
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
    }
    for (fam, members) in &hist_families {
        let _ = writeln!(out, "# TYPE {fam} histogram");
        for (name, snap) in members {
            for le in PROMETHEUS_BUCKETS_MS {
                let le_s = fmt_num(le);
                let _ = writeln!(
                    out,
                    "{fam}_bucket{} {}",
                    prom_labels(&name.tags, Some(("le", &le_s))),
                    snap.count_le(le)
                );
            }
            let _ = writeln!(
                out,
                "{fam}_bucket{} {}",
                prom_labels(&name.tags, Some(("le", "+Inf"))),
                snap.count
            );
            let labels = prom_labels(&name.tags, None);
            let _ = writeln!(out, "{fam}_sum{labels} {}", fmt_num(snap.sum_ms));
            let _ = writeln!(out, "{fam}_count{labels} {}", snap.count);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;

    #[test]
    fn prometheus_groups_tagged_stats_into_one_family() {
        let store = Store::new();
        store
            .tagged_scope("cluster", "envoy_cluster_name", "a")
            .counter("upstream_cx_total")
            .add(3);
        store
            .tagged_scope("cluster", "envoy_cluster_name", "b\"x")
            .counter("upstream_cx_total")
            .add(1);
        store.root_scope("server").gauge("live").set(1);
        let text = render_prometheus(&store.snapshot(), &StatsFilter::default());
        assert_eq!(
            text.matches("# TYPE envoy_cluster_upstream_cx_total counter")
                .count(),
            1
        );
        assert!(text.contains("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"a\"} 3"));
        assert!(text.contains("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"b\\\"x\"} 1"));
        assert!(text.contains("envoy_server_live 1"));
    }

    #[test]
    fn text_filters_by_regex_and_used() {
        let store = Store::new();
        let s = store.root_scope("server");
        s.counter("a").inc();
        s.counter("b");
        s.histogram("h_ms").record_us(1500);
        let f = StatsFilter {
            regex: None,
            used_only: true,
        };
        let text = render_text(&store.snapshot(), &f);
        assert!(text.contains("server.a: 1\n"));
        assert!(!text.contains("server.b"));
        assert!(
            text.contains("server.h_ms: P0(nan,1.5) P25(nan,1.5)"),
            "{text}"
        );
        let f = StatsFilter {
            regex: Some(regex::Regex::new("^server\\.b$").unwrap()),
            used_only: false,
        };
        assert_eq!(render_text(&store.snapshot(), &f), "server.b: 0\n");
    }
}
