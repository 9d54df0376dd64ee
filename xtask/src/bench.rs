//! `cargo xtask bench l4`: one run measuring, side by side, a direct connection, Plumb and
//! haproxy (TCP mode) for bulk throughput (1 and 32 streams) and small request/response
//! latency (64 connections), plus the proxies' CPU time and memory. Loopback only; every
//! measurement is bounded in time.

use crate::util::{self, cpu_seconds, free_port, root_dir, rss_mib, KillOnDrop};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub fn bench(args: &[String]) -> Result<()> {
    let secs: f64 = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()
        .context("--secs takes a number")?
        .unwrap_or(5.0);
    let threads: usize = args
        .iter()
        .position(|a| a == "--proxy-threads")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()
        .context("--proxy-threads takes a number")?
        .unwrap_or(1);
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let baseline = flag("--baseline").map(std::path::PathBuf::from);
    let plumb_args: Vec<String> = flag("--plumb-args")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("l4") => l4(
            secs.clamp(0.5, 60.0),
            threads.clamp(1, 8),
            baseline.as_deref(),
            &plumb_args,
        ),
        Some("redirect") => crate::bench_redirect::bench(secs.clamp(0.5, 60.0)),
        Some("http") => {
            let rounds: usize = flag("--rounds")
                .map(|s| s.parse())
                .transpose()
                .context("--rounds takes a number")?
                .unwrap_or(2);
            crate::bench_http::bench(secs.clamp(1.0, 60.0), rounds.clamp(1, 10))
        }
        Some("workers") => {
            let rounds: usize = flag("--rounds")
                .map(|s| s.parse())
                .transpose()
                .context("--rounds takes a number")?
                .unwrap_or(5);
            crate::bench_workers::bench(
                secs.clamp(0.5, 60.0),
                rounds.clamp(1, 50),
                threads.clamp(1, 8),
                baseline.as_deref(),
            )
        }
        Some("config") => crate::bench_config::bench(),
        Some("lb") => crate::bench_lb::bench(),
        Some("tls") => {
            let rounds: usize = flag("--rounds")
                .map(|s| s.parse())
                .transpose()
                .context("--rounds takes a number")?
                .unwrap_or(2);
            crate::bench_tls::bench(secs.clamp(1.0, 60.0), rounds.clamp(1, 10))
        }
        Some("upgrade") => crate::bench_upgrade::bench(secs.clamp(2.0, 60.0)),
        Some("xds") => {
            let churn = format!("{}", secs.clamp(1.0, 60.0).round() as u64 * 2);
            crate::xds_tool("bench", &["--churn-secs", &churn, "--api", "GRPC"])?;
            crate::xds_tool("bench", &["--churn-secs", &churn, "--api", "DELTA_GRPC"])
        }
        _ => {
            bail!("usage: cargo xtask bench l4|workers|redirect|xds|upgrade|config|http|lb|tls [--secs S] [--rounds R] [--proxy-threads N] [--baseline PLUMB_BINARY] [--plumb-args 'ARGS']")
        }
    }
}

struct Target {
    name: String,
    echo: String,
    sink: String,
    pid: Option<u32>,
}

fn load(bin: &Path, args: &[&str]) -> Result<Value> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .context("run plumb-load")?;
    if !out.status.success() {
        bail!(
            "plumb-load {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("plumb-load output")
}

fn wait_port(addr: &str) -> Result<()> {
    let sa: std::net::SocketAddr = addr.parse()?;
    util::wait_for(addr, Duration::from_secs(15), || {
        std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(200)).is_ok()
    })
}

/// `baseline`: another Plumb binary (e.g. the previous commit's) measured in the same run as
/// `plumb-base`; `plumb_args`: extra `plumb run` arguments for the current binary.
fn l4(secs: f64, threads: usize, baseline: Option<&Path>, plumb_args: &[String]) -> Result<()> {
    crate::deps(true)?;
    util::build_release_bins()?;
    let dir = root_dir().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let plumb = root_dir().join("target/release/plumb");
    let loadgen = root_dir().join("target/release/plumb-load");

    let (_backend_guard, echo_p, sink_p) = util::start_backends(&loadgen)?;

    // Plumb with two tcp_proxy listeners.
    let start_plumb = |bin: &Path, tag: &str, extra: &[String]| -> Result<(u32, u16, u16)> {
        let (pe, ps, pa) = (free_port()?, free_port()?, free_port()?);
        let cfg = util::tcp_proxy_bootstrap(pa, &[("echo", pe, echo_p), ("sink", ps, sink_p)]);
        let cfg_path = dir.join(format!("{tag}.yaml"));
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)?)?;
        let log = std::fs::File::create(dir.join(format!("{tag}.log")))?;
        let child = Command::new(bin)
            .args([
                "run",
                "--log-level",
                "warn",
                "--concurrency",
                &threads.to_string(),
            ])
            .args(extra)
            .arg("--config")
            .arg(&cfg_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        for p in [pe, ps] {
            wait_port(&format!("127.0.0.1:{p}"))?;
        }
        Ok((child.id(), pe, ps))
    };
    let (plumb_pid, pe, ps) = start_plumb(&plumb, "plumb", plumb_args)?;
    let _plumb_guard = KillOnDrop(plumb_pid);
    let base = baseline
        .map(|b| start_plumb(b, "plumb-base", &[]))
        .transpose()?;
    let _base_guard = base.map(|(pid, _, _)| KillOnDrop(pid));

    let (he, hs) = (free_port()?, free_port()?);
    let haproxy_cfg = format!(
        "global\n  nbthread {threads}\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n\
         frontend echo\n  bind 127.0.0.1:{he}\n  default_backend echo\nbackend echo\n  server s1 127.0.0.1:{echo_p}\n\
         frontend sink\n  bind 127.0.0.1:{hs}\n  default_backend sink\nbackend sink\n  server s1 127.0.0.1:{sink_p}\n"
    );
    let ha_path = dir.join("haproxy.cfg");
    std::fs::write(&ha_path, haproxy_cfg)?;
    let haproxy = util::which("haproxy").context("haproxy not found")?;
    let ha_child = Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&ha_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("haproxy.log"))?)
        .spawn()
        .context("start haproxy")?;
    let ha_pid = ha_child.id();
    let _ha_guard = KillOnDrop(ha_pid);

    for p in [echo_p, sink_p, he, hs] {
        wait_port(&format!("127.0.0.1:{p}"))?;
    }
    let mut targets = vec![
        Target {
            name: "direct".into(),
            echo: format!("127.0.0.1:{echo_p}"),
            sink: format!("127.0.0.1:{sink_p}"),
            pid: None,
        },
        Target {
            name: "plumb".into(),
            echo: format!("127.0.0.1:{pe}"),
            sink: format!("127.0.0.1:{ps}"),
            pid: Some(plumb_pid),
        },
        Target {
            name: "haproxy".into(),
            echo: format!("127.0.0.1:{he}"),
            sink: format!("127.0.0.1:{hs}"),
            pid: Some(ha_pid),
        },
    ];
    if let Some((pid, e, k)) = base {
        targets.insert(
            2,
            Target {
                name: "plumb-base".into(),
                echo: format!("127.0.0.1:{e}"),
                sink: format!("127.0.0.1:{k}"),
                pid: Some(pid),
            },
        );
    }
    let s = format!("{secs}");
    let mut results = Vec::new();
    for t in &targets {
        eprintln!("xtask: measuring {} ({secs}s per test)...", t.name);
        let cpu0 = t.pid.and_then(cpu_seconds);
        let one = load(
            &loadgen,
            &[
                "throughput",
                "--addr",
                &t.sink,
                "--streams",
                "1",
                "--secs",
                &s,
            ],
        )?;
        let many = load(
            &loadgen,
            &[
                "throughput",
                "--addr",
                &t.sink,
                "--streams",
                "32",
                "--secs",
                &s,
            ],
        )?;
        let lat = load(
            &loadgen,
            &[
                "latency",
                "--addr",
                &t.echo,
                "--conns",
                "64",
                "--secs",
                &s,
                "--size",
                "64",
                "--threads",
                "1",
            ],
        )?;
        let cpu = match (cpu0, t.pid.and_then(cpu_seconds)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        if lat["errors"].as_u64() != Some(0) {
            bail!("{}: {} request errors", t.name, lat["errors"]);
        }
        results.push(json!({
            "target": t.name,
            "gbit_1": one["gbit_per_s"], "gbit_32": many["gbit_per_s"],
            "rps": lat["rps"], "p50_us": lat["p50_us"], "p99_us": lat["p99_us"], "p999_us": lat["p999_us"],
            "cpu_s": cpu, "rss_mib": t.pid.and_then(rss_mib),
        }));
    }
    print_table(&results, secs, threads);
    std::fs::write(dir.join("l4.json"), serde_json::to_string_pretty(&results)?)?;
    eprintln!("xtask: raw results in {}", dir.join("l4.json").display());
    Ok(())
}

fn print_table(results: &[Value], secs: f64, threads: usize) {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let direct = &results[0];
    let ratio = |v: &Value, k: &str| f(v, k) / f(direct, k);
    println!("\nL4 benchmark: {secs}s per test, proxies with {threads} worker thread(s), loopback, 2-core machine");
    println!("ratios are to the direct connection (throughput: higher is better; latency: lower is better)\n");
    println!(
        "{:<8} {:>17} {:>17} {:>15} {:>15} {:>15} {:>15} {:>7} {:>7}",
        "target",
        "1 stream Gbit/s",
        "32 streams Gbit/s",
        "64 conns req/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "CPU s",
        "RSS MiB"
    );
    for r in results {
        let cell = |k: &str, prec: usize| {
            if r["target"] == "direct" {
                format!("{:.*}", prec, f(r, k))
            } else {
                format!("{:.*} ({:.2}x)", prec, f(r, k), ratio(r, k))
            }
        };
        let opt = |k: &str| {
            r[k].as_f64()
                .map(|v| format!("{v:.1}"))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<8} {:>17} {:>17} {:>15} {:>15} {:>15} {:>15} {:>7} {:>7}",
            r["target"].as_str().unwrap_or("?"),
            cell("gbit_1", 2),
            cell("gbit_32", 2),
            cell("rps", 0),
            cell("p50_us", 0),
            cell("p99_us", 0),
            cell("p999_us", 0),
            opt("cpu_s"),
            opt("rss_mib"),
        );
    }
}
