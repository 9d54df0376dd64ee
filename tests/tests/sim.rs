//! The simulator as a soak test: the short bundled scenario runs through the real agent with
//! every fault kind and must hold every invariant; and the checks are shown to bite — runs
//! with retries left out of the published routes, or with a hand-over that kills the old agent
//! instead of letting it drain, must fail naming the invariant they break.
//!
//! The smoke scenario runs in the pod mode where this machine allows it (root, cgroup2, the
//! eBPF object: replicas and clients in network namespaces, captured by eBPF), which CI
//! requires; the sabotage runs use `--loopback`, so both modes are exercised. The runs go one
//! at a time (each is a whole fake cluster on a 2-core machine).

use plumb_tests::agent::{plumb_bin, sim_bin};
use plumb_tests::TempDir;
use std::process::Command;
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Run {
    code: Option<i32>,
    out: String,
    summary: serde_json::Value,
}

fn sim(scenario: &std::path::Path, extra: &[&str]) -> Run {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let report = TempDir::new("sim");
    let out = Command::new(sim_bin())
        .arg("run")
        .arg("--scenario")
        .arg(scenario)
        .arg("--report")
        .arg(report.path.join("report"))
        .arg("--plumb")
        .arg(plumb_bin())
        .args(extra)
        .env("CI", "true")
        .output()
        .expect("run plumb-sim");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = std::fs::read_to_string(report.path.join("report/summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| panic!("no summary.json; output:\n{text}"));
    let html = std::fs::read_to_string(report.path.join("report/index.html")).unwrap();
    assert!(html.contains("<svg"), "the report has its charts");
    Run {
        code: out.status.code(),
        out: text,
        summary,
    }
}

fn bundled(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sim/scenarios")
        .join(name)
}

fn violated(r: &Run) -> Vec<String> {
    r.summary["violated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_smoke_scenario_holds_every_invariant_through_every_fault() {
    let r = sim(&bundled("smoke.yaml"), &[]);
    assert_eq!(r.code, Some(0), "violated {:?}:\n{}", violated(&r), r.out);
    let mode = r.summary["mode"].as_str().unwrap();
    match plumb_tests::capture::unavailable() {
        None => assert!(mode.starts_with("pods"), "{mode}"),
        Some(why) => {
            assert!(mode.starts_with("loopback"), "{mode}");
            plumb_tests::skip(&format!("the pod mode of plumb-sim: {why}"));
        }
    }
    // Every fault kind ran.
    let kinds: Vec<&str> = r.summary["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    for k in [
        "replica-errors",
        "replica-slow",
        "pod-crash",
        "endpoint-churn",
        "canary-shift",
        "control-plane-restart",
        "control-plane-outage",
        "agent-handover",
        "agent-kill",
        "cert-rotation",
    ] {
        assert!(kinds.contains(&k), "fault {k} did not run: {kinds:?}");
    }
    // Traffic flowed on every flow, and the ejection check really ran.
    for f in r.summary["flows"].as_array().unwrap() {
        assert!(f["ok"].as_u64().unwrap() > 100, "{f}");
    }
    let invariants = r.summary["invariants"].as_array().unwrap();
    for checked in [
        "outlier_ejection",
        "rotated_certificate_in_use",
        "canary_share_follows_weights",
    ] {
        assert!(
            invariants.iter().any(|v| v["invariant"] == checked),
            "{checked} was not checked:\n{}",
            r.out
        );
    }
}

/// A scenario whose only fault is a replica failing one request in two: with retries the
/// callers never see it.
const FLAKY: &str = "
name: flaky
duration: 15s
services:
  - name: front
    calls: [{service: back}]
  - name: back
    protocol: http2
    replicas: 3
    route: {retries: {num: 2, on: 5xx}}
flows:
  - {name: go, service: front, rate: 60, budget: {max_error_rate: 0.5}}
faults:
  - {at: 2s, kind: replica-errors, service: back, replica: 0, rate: 0.5, for: 10s}
";

#[test]
fn without_retries_the_run_fails_naming_the_invariant() {
    let dir = TempDir::new("sim-scenario");
    let file = dir.write("flaky.yaml", FLAKY);
    // (The good run over incremental xDS, so delta is exercised under a fault too.)
    let good = sim(&file, &["--loopback", "--xds", "delta"]);
    assert_eq!(good.code, Some(0), "{}", good.out);
    let bad = sim(&file, &["--loopback", "--sabotage", "retries"]);
    assert_eq!(bad.code, Some(1), "{}", bad.out);
    assert!(
        violated(&bad).contains(&"retries_hide_replica_errors".to_string()),
        "{:?}\n{}",
        violated(&bad),
        bad.out
    );
    assert!(bad.out.contains("VIOLATED: ") && bad.out.contains("retries_hide_replica_errors"));
}

const HANDOVER: &str = "
name: handover
duration: 12s
services:
  - name: front
    protocol: http1
    replicas: 2
    latency: {p50: 200ms, p99: 300ms}
flows:
  - {name: go, service: front, rate: 100, budget: {p99: 2s}}
faults:
  - {at: 4s, kind: agent-handover}
";

#[test]
fn a_handover_that_drops_connections_fails_the_run() {
    let dir = TempDir::new("sim-scenario");
    let file = dir.write("handover.yaml", HANDOVER);
    let good = sim(&file, &["--loopback"]);
    assert_eq!(good.code, Some(0), "{}", good.out);
    let bad = sim(&file, &["--loopback", "--sabotage", "handover"]);
    assert_eq!(bad.code, Some(1), "{}", bad.out);
    assert!(
        violated(&bad).contains(&"lossless_faults_lose_nothing".to_string()),
        "{:?}\n{}",
        violated(&bad),
        bad.out
    );
}

#[test]
fn a_bad_scenario_is_refused_with_the_field_path() {
    let dir = TempDir::new("sim-scenario");
    let file = dir.write(
        "bad.yaml",
        &FLAKY.replace("kind: replica-errors", "kind: replica-errors, colour: red"),
    );
    let out = Command::new(sim_bin())
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("faults[0].colour: unknown field"), "{err}");
}
