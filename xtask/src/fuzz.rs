//! `cargo xtask fuzz <target>|all [--secs N] [--runs N]`: libFuzzer (cargo-fuzz, nightly) on
//! the parsers of outside input. cargo-fuzz is installed on first use. New inputs a run finds
//! go to `target/fuzz/corpus/<target>` (the committed seeds in `fuzz/corpus/<target>` are
//! read, never written); a crash is saved under `target/fuzz/artifacts/<target>/` and fails the
//! command — fix it and keep the input in `fuzz/regressions/<target>/`, which `cargo test`
//! replays.

use crate::util::{root_dir, which};
use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

/// Every target (the same list as `plumb::fuzzing::TARGETS`).
pub const TARGETS: &[&str] = &[
    "bootstrap",
    "xds_response",
    "admin_request",
    "http_request",
    "http_response",
    "handover_message",
    "ebpf_values",
    "tls_client_hello",
];

/// The nightly toolchain libFuzzer's instrumentation needs.
const NIGHTLY: &str = "+nightly";

fn ensure_cargo_fuzz() -> Result<()> {
    let ok = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::util::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !nightly && which("rustup").is_some() {
        bail!("fuzzing needs a nightly toolchain (rustup toolchain install nightly)");
    }
    Ok(())
}

/// Builds every fuzz target (ASan, nightly), once.
pub fn build() -> Result<()> {
    ensure_cargo_fuzz()?;
    crate::util::run(Command::new("cargo").current_dir(root_dir()).args([
        NIGHTLY,
        "fuzz",
        "build",
        "--fuzz-dir",
        "fuzz",
    ]))
}

/// Runs one built target for at most `secs` seconds or `runs` executions; returns how many
/// inputs it executed.
pub fn run_target(target: &str, secs: u64, runs: Option<u64>) -> Result<u64> {
    if !TARGETS.contains(&target) {
        bail!(
            "unknown fuzz target {target} (targets: {})",
            TARGETS.join(", ")
        );
    }
    let root = root_dir();
    let bin = root.join(format!(
        "fuzz/target/x86_64-unknown-linux-gnu/release/{target}"
    ));
    let scratch = root.join("target/fuzz/corpus").join(target);
    let artifacts = root.join("target/fuzz/artifacts").join(target);
    std::fs::create_dir_all(&scratch)?;
    std::fs::create_dir_all(&artifacts)?;
    let mut cmd = Command::new(&bin);
    cmd.arg(&scratch)
        .arg(root.join("fuzz/corpus").join(target))
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-rss_limit_mb=2048")
        .arg("-timeout=10")
        .arg("-print_final_stats=1");
    if let Some(n) = runs {
        cmd.arg(format!("-runs={n}"));
    }
    eprintln!("xtask: fuzzing {target} ({secs} s at most)");
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let executed = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {target} failed after {executed} executions (inputs in {}):\n{}",
            artifacts.display(),
            tail.join("\n")
        );
    }
    eprintln!("xtask: fuzz {target}: {executed} executions, no failure");
    Ok(executed)
}

pub fn fuzz(args: &[String]) -> Result<()> {
    let flag = |name: &str| -> Result<Option<u64>> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|s| s.parse().with_context(|| format!("{name} takes a number")))
            .transpose()
    };
    let secs = flag("--secs")?.unwrap_or(60);
    let runs = flag("--runs")?;
    let targets: Vec<&str> = match args.first().map(String::as_str) {
        Some("all") => TARGETS.to_vec(),
        Some(t) if !t.starts_with('-') => vec![t],
        _ => bail!(
            "usage: cargo xtask fuzz <{}|all> [--secs N] [--runs N]",
            TARGETS.join("|")
        ),
    };
    build()?;
    for t in targets {
        run_target(t, secs, runs)?;
    }
    Ok(())
}
