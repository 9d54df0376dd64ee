//! plumb-xds-bench: a control plane plus a Plumb subprocess, for `cargo xtask bench xds` and
//! `cargo xtask demo-xds`.
//!
//!   plumb-xds-bench bench --plumb PATH [--churn-secs S]
//!   plumb-xds-bench demo --plumb PATH
//!
//! Loopback only; every loop is bounded in count and time.

use plumb::stats::{Histogram, StatName};
use plumb_tests::servers::{self, Behavior};
use plumb_tests::xds::{ads_bootstrap, eds_cluster, endpoints, tcp_listener, ControlPlane};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

struct Agent {
    child: Child,
    admin: SocketAddr,
    _dir: plumb_tests::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_agent(plumb: &PathBuf, cp: SocketAddr, api: &str) -> Agent {
    let dir = plumb_tests::TempDir::new("xds-bench");
    let cfg = dir.write("bootstrap.yaml", &ads_bootstrap(cp, api));
    let addr_file = dir.path.join("admin");
    let child = Command::new(plumb)
        .args([
            "run",
            "--log-level",
            "warn",
            "--concurrency",
            "1",
            "--config",
        ])
        .arg(&cfg)
        .arg("--admin-address-path")
        .arg(&addr_file)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start plumb");
    let deadline = Instant::now() + Duration::from_secs(20);
    let admin = loop {
        if let Ok(s) = std::fs::read_to_string(&addr_file) {
            if let Ok(a) = s.trim().parse() {
                break a;
            }
        }
        assert!(Instant::now() < deadline, "plumb did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    Agent {
        child,
        admin,
        _dir: dir,
    }
}

async fn stat(admin: SocketAddr, name: &str) -> i64 {
    match plumb_tests::client::http(
        "GET",
        admin,
        &format!(
            "/stats?format=json&filter=%5E{}%24",
            plumb_tests::client::urlencode(&name.replace('.', "\\."))
        ),
    )
    .await
    {
        Ok(r) => r.json()["stats"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == name)
            .and_then(|s| s["value"].as_i64())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn echo_once(addr: SocketAddr) -> Result<Duration, String> {
    let t = Instant::now();
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(&[7u8; 64]).await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 64];
        s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .map_err(|_| "timeout".to_string())??;
    Ok(t.elapsed())
}

fn free_addr() -> SocketAddr {
    servers::closed_port()
}

/// Traffic through `front` until `stop`, on its own thread and runtime so the control plane's
/// work in this process cannot delay it: (ok, failed, latency histogram, thread).
fn traffic(
    front: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: usize,
) -> (
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    Arc<Histogram>,
    std::thread::JoinHandle<()>,
) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Histogram::new(StatName {
        full: "rt".into(),
        extracted: "rt".into(),
        tags: vec![],
    }));
    let (o, f, h) = (ok.clone(), failed.clone(), hist.clone());
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(run_traffic(front, stop, workers, o, f, h));
    });
    (ok, failed, hist, thread)
}

async fn run_traffic(
    front: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: usize,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    hist: Arc<Histogram>,
) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (ok, failed, hist, stop) = (ok.clone(), failed.clone(), hist.clone(), stop.clone());
        set.spawn(async move {
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match echo_once(front).await {
                    Ok(d) => {
                        hist.record(d);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}

async fn bench(plumb: PathBuf, churn_secs: u64, api: &str, real: Vec<SocketAddr>) {
    let cp = ControlPlane::start().await;
    let front = free_addr();
    // Start small: one cluster, one listener.
    cp.set(
        vec![eds_cluster("c0")],
        vec![tcp_listener("front", front, "c0")],
        vec![endpoints("c0", &real)],
    );
    let agent = start_agent(&plumb, cp.addr, api).await;
    let pid = agent.child.id();
    let admin = agent.admin;
    wait_for("first config", Duration::from_secs(20), || async move {
        echo_once(front).await.is_ok()
    })
    .await;
    let rss_small = rss_mib(pid);

    // 1 000 clusters via CDS with 10 endpoints each (10 000 in all) via EDS.
    let n_clusters = 1000;
    let clusters: Vec<_> = (0..n_clusters)
        .map(|i| eds_cluster(&format!("c{i}")))
        .collect();
    let cla: Vec<_> = (0..n_clusters)
        .map(|i| {
            let addrs: Vec<SocketAddr> = if i == n_clusters - 1 {
                real.clone()
            } else {
                (0..10)
                    .map(|j| SocketAddr::from(([127, 0, 1, 1 + (j as u8)], 20000 + i as u16)))
                    .collect()
            };
            endpoints(&format!("c{i}"), &addrs)
        })
        .collect();
    let t0 = Instant::now();
    cp.set(
        clusters.clone(),
        vec![tcp_listener(
            "front",
            front,
            &format!("c{}", n_clusters - 1),
        )],
        cla,
    );
    let last = format!("cluster.c{}.membership_total", n_clusters - 1);
    let t_cds = wait_for("1000 clusters active", Duration::from_secs(120), || {
        let last = last.clone();
        async move {
            stat(admin, "cluster_manager.active_clusters").await == n_clusters as i64 + 1
                && stat(admin, "cluster_manager.warming_clusters").await == 0
                && stat(admin, &last).await == 3
        }
    })
    .await;
    wait_for(
        "traffic on the new config",
        Duration::from_secs(30),
        || async move { echo_once(front).await.is_ok() },
    )
    .await;
    let t_serving = t0.elapsed();
    let rss_large = rss_mib(pid);

    // One EDS update carrying 10 000 endpoints for one cluster.
    let big: Vec<SocketAddr> = (0..10_000u32)
        .map(|k| SocketAddr::from(([127, 0, 2 + (k / 250) as u8, 1 + (k % 250) as u8], 30000)))
        .collect();
    let mut cla: Vec<_> = (0..n_clusters - 1)
        .map(|i| {
            endpoints(
                &format!("c{i}"),
                &[SocketAddr::from(([127, 0, 1, 1], 20000 + i as u16))],
            )
        })
        .collect();
    cla[0] = endpoints("c0", &big);
    cla.push(endpoints(&format!("c{}", n_clusters - 1), &real));
    let t1 = Instant::now();
    cp.set_endpoints(cla);
    wait_for(
        "10 000 endpoints",
        Duration::from_secs(120),
        || async move { stat(admin, "cluster.c0.membership_total").await == 10_000 },
    )
    .await;
    let t_eds = t1.elapsed();
    let rss_eds = rss_mib(pid);

    // Back to small endpoint sets, so the churn measures the agent, not this process encoding
    // a 10 000-endpoint resource a hundred times a second.
    let cla: Vec<_> = (0..n_clusters)
        .map(|i| {
            if i == n_clusters - 1 {
                endpoints(&format!("c{i}"), &real)
            } else {
                endpoints(
                    &format!("c{i}"),
                    &[SocketAddr::from(([127, 0, 1, 1], 20000 + i as u16))],
                )
            }
        })
        .collect();
    cp.set_endpoints(cla);
    wait_for(
        "small endpoint sets",
        Duration::from_secs(60),
        || async move { stat(admin, "cluster.c0.membership_total").await == 1 },
    )
    .await;
    let rss_after = rss_mib(pid);

    // Churn: 100 endpoint updates per second under traffic, against a quiet baseline.
    let baseline = {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed, hist, thread) = traffic(front, stop.clone(), 4);
        tokio::time::sleep(Duration::from_secs(churn_secs.min(5))).await;
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        (
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            hist.cumulative(),
        )
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, hist, thread) = traffic(front, stop.clone(), 4);
    let subsets: [&[usize]; 4] = [&[0], &[1, 2], &[0, 2], &[0, 1, 2]];
    let updates = churn_secs * 100;
    let churn_start = Instant::now();
    for u in 0..updates {
        let target = churn_start + Duration::from_millis(10 * u);
        tokio::time::sleep_until(target.into()).await;
        let set_now: Vec<SocketAddr> = subsets[(u % 4) as usize].iter().map(|&j| real[j]).collect();
        let mut cla = cp.resources().endpoints;
        if let Some(last) = cla.last_mut() {
            *last = endpoints(&format!("c{}", n_clusters - 1), &set_now);
        }
        cp.set_endpoints(cla);
    }
    let churn_elapsed = churn_start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    let during = (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        hist.cumulative(),
    );
    let q =
        |h: &plumb::stats::HistogramSnapshot, p: f64| h.quantile(p).unwrap_or(f64::NAN) * 1000.0;
    let nacks = cp.nacks().len();

    println!(
        "\nxDS benchmark, {api} (Plumb with 1 worker, control plane in this process, loopback)\n"
    );
    println!(
        "  CDS 1000 clusters + EDS 10 000 endpoints → all clusters active:  {:>8.0} ms",
        t_cds.as_secs_f64() * 1000.0
    );
    println!(
        "  … → first connection served by the new listener/cluster:        {:>8.0} ms",
        t_serving.as_secs_f64() * 1000.0
    );
    println!(
        "  one EDS update with 10 000 endpoints for one cluster → applied:  {:>8.0} ms",
        t_eds.as_secs_f64() * 1000.0
    );
    println!("  agent RSS: small config {rss_small:.1} MiB, 1000 clusters/10k endpoints {rss_large:.1} MiB, + 10k-endpoint cluster {rss_eds:.1} MiB, back to small sets {rss_after:.1} MiB");
    println!(
        "  churn: {updates} endpoint updates in {:.1} s ({:.0}/s) under 4 clients",
        churn_elapsed.as_secs_f64(),
        updates as f64 / churn_elapsed.as_secs_f64()
    );
    println!(
        "    baseline : {:>6} connections, {} failed, p50 {:.0} us, p99 {:.0} us",
        baseline.0,
        baseline.1,
        q(&baseline.2, 50.0),
        q(&baseline.2, 99.0)
    );
    println!(
        "    churning : {:>6} connections, {} failed, p50 {:.0} us, p99 {:.0} us (p99 drift {:.2}x)",
        during.0,
        during.1,
        q(&during.2, 50.0),
        q(&during.2, 99.0),
        q(&during.2, 99.0) / q(&baseline.2, 99.0)
    );
    println!("  NACKs: {nacks}");
    println!(
        "{}",
        serde_json::json!({
            "api": api,
            "cds_1000_clusters_ms": t_cds.as_secs_f64() * 1000.0,
            "serving_ms": t_serving.as_secs_f64() * 1000.0,
            "eds_10k_endpoints_ms": t_eds.as_secs_f64() * 1000.0,
            "rss_mib": {"small": rss_small, "large": rss_large, "eds_10k": rss_eds, "after": rss_after},
            "churn": {"updates": updates, "secs": churn_elapsed.as_secs_f64(),
                      "baseline": {"ok": baseline.0, "failed": baseline.1, "p99_us": q(&baseline.2, 99.0)},
                      "during": {"ok": during.0, "failed": during.1, "p99_us": q(&during.2, 99.0)}},
            "nacks": nacks,
        })
    );
    if during.1 > 0 || baseline.1 > 0 || nacks > 0 {
        eprintln!("FAILED: connections failed or resources were rejected");
        std::process::exit(1);
    }
}

async fn demo(plumb: PathBuf) {
    let a = servers::start(Behavior::Named("backend-a\n".into())).await;
    let b = servers::start(Behavior::Named("backend-b\n".into())).await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    println!("control plane (ADS, gRPC) on {}", cp.addr);
    cp.set(
        vec![eds_cluster("backend")],
        vec![tcp_listener("front", front, "backend")],
        vec![endpoints("backend", &[a.addr])],
    );
    let agent = start_agent(&plumb, cp.addr, "GRPC").await;
    let admin = agent.admin;
    wait_for("config", Duration::from_secs(20), || async move {
        plumb_tests::client::read_all(front, Duration::from_secs(2))
            .await
            .is_ok_and(|v| !v.is_empty())
    })
    .await;
    println!("plumb (admin {admin}) got listener \"front\" on {front} and EDS cluster \"backend\" from it");
    for _ in 0..3 {
        let got = plumb_tests::client::read_all(front, Duration::from_secs(2))
            .await
            .unwrap_or_default();
        print!("  {front} -> {}", String::from_utf8_lossy(&got));
    }
    println!(
        "control plane: endpoints of \"backend\" now {} (version 2)",
        b.addr
    );
    cp.set_endpoints(vec![endpoints("backend", &[b.addr])]);
    wait_for("update", Duration::from_secs(10), || async move {
        plumb_tests::client::read_all(front, Duration::from_secs(2))
            .await
            .is_ok_and(|v| v.starts_with(b"backend-b"))
    })
    .await;
    for _ in 0..3 {
        let got = plumb_tests::client::read_all(front, Duration::from_secs(2))
            .await
            .unwrap_or_default();
        print!("  {front} -> {}", String::from_utf8_lossy(&got));
    }
    let stats = plumb_tests::client::get(admin, "/stats?filter=%5E(control_plane%7Ccluster_manager%5C.(cds%7Ceds)%7Clistener_manager%5C.lds)%5C.").await;
    println!("\nxDS stats:\n{}", stats.body);
    let nacks = cp.nacks();
    println!(
        "requests from the agent: {} ({} NACKs)",
        cp.requests().len(),
        nacks.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let plumb =
        PathBuf::from(arg(&args, "--plumb").unwrap_or_else(|| "target/release/plumb".into()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("bench") => {
            // Upstreams on their own runtime: the control plane's work in the bench runtime
            // must not delay their answers (that would be measured as proxy latency).
            let upstream_rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let echoes = upstream_rt.block_on(async {
                [
                    servers::start(Behavior::Echo).await,
                    servers::start(Behavior::Echo).await,
                    servers::start(Behavior::Echo).await,
                ]
            });
            let real = echoes.iter().map(|e| e.addr).collect();
            rt.block_on(bench(
                plumb,
                arg(&args, "--churn-secs")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(10)
                    .clamp(1, 60),
                &arg(&args, "--api").unwrap_or_else(|| "GRPC".into()),
                real,
            ));
            drop(echoes);
        }
        Some("demo") => rt.block_on(demo(plumb)),
        _ => {
            eprintln!("usage: plumb-xds-bench bench|demo --plumb PATH [--churn-secs S]");
            std::process::exit(2);
        }
    }
}
