//! `cargo xtask bench lb`: the cluster manager's costs. Runs `plumb-lb-bench` (release):
//! ns per pick and build time of each load balancer at 10, 1,000 and 10,000 hosts; a
//! circuit breaker tripping under load (refused against served latency); and outlier
//! detection (share of requests failed before and after the bad host's ejection). Prints
//! tables for docs/benchmarks.md. Loopback only, bounded.

use crate::util::{self, root_dir};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::process::Command;

pub fn bench() -> Result<()> {
    util::build_release_bins()?;
    let out = Command::new(root_dir().join("target/release/plumb-lb-bench"))
        .output()
        .context("run plumb-lb-bench")?;
    if !out.status.success() {
        bail!(
            "plumb-lb-bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r: Value = serde_json::from_slice(&out.stdout).context("plumb-lb-bench output")?;
    let dir = root_dir().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("lb.json"), serde_json::to_string_pretty(&r)?)?;
    println!(
        "\ncargo xtask bench lb: {} picks per run, best of 3\n",
        r["picks"]
    );
    println!("| policy | hosts | ns per pick | build ms |");
    println!("| --- | --- | --- | --- |");
    for row in r["lb"].as_array().into_iter().flatten() {
        println!(
            "| {} | {} | {:.1} | {:.2} |",
            row["policy"].as_str().unwrap_or("?"),
            row["hosts"],
            row["ns_per_pick"].as_f64().unwrap_or(f64::NAN),
            row["build_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let b = &r["breaker"];
    let us = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.0}"));
    println!(
        "\nCircuit breaker: {} clients, max_requests {}, upstream holds each request {} ms:\n",
        b["clients"], b["max_requests"], b["upstream_delay_ms"]
    );
    println!("| requests | count | p50 µs | p99 µs |");
    println!("| --- | --- | --- | --- |");
    for k in ["served", "refused"] {
        println!(
            "| {k} | {} | {} | {} |",
            b[k]["count"],
            us(&b[k]["p50_us"]),
            us(&b[k]["p99_us"])
        );
    }
    let o = &r["outlier"];
    let shares: Vec<String> = o["failed_share_by_block"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| format!("{:.0} %", v.as_f64().unwrap_or(0.0) * 100.0))
        .collect();
    println!(
        "\nOutlier detection: 10 hosts, one answering 503 (consecutive_5xx 5), failed share per {} requests: {}; ejections: {}",
        o["block"],
        shares.join(", "),
        o["ejections"]
    );
    Ok(())
}
