//! `plumb-sim`: continuous simulated traffic through a fake cluster and the real Plumb agent,
//! with faults on a schedule, invariants checked against every side's records, a live view
//! and a report. See docs/simulator.md.
//!
//!   plumb-sim run --scenario FILE [--duration 60s] [--seed N] [--report DIR] [--plumb BIN]
//!                 [--sabotage retries|handover]
//!   plumb-sim check FILE          read a scenario and say what is wrong with it
//!
//! Exit status: 0 when every invariant held, 1 when one was violated, 2 when the run could
//! not be made (bad scenario, agent not starting).

mod agent;
mod caller;
mod check;
mod epoch;
mod faults;
mod flows;
mod pod_cmd;
mod pods;
mod records;
mod report;
mod scenario;
mod scenario_reader;
mod service;
mod topology;
mod view;

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

struct Args {
    scenario: PathBuf,
    duration: Option<Duration>,
    seed: Option<u64>,
    report: Option<PathBuf>,
    plumb: Option<PathBuf>,
    sabotage: topology::Sabotage,
    loopback: bool,
    /// Incremental xDS (DELTA_GRPC) instead of state of the world.
    delta: bool,
    /// `--duration forever`: epochs of the scenario's duration until SIGINT or SIGTERM.
    soak: bool,
}

const USAGE: &str = "usage: plumb-sim run --scenario FILE [--duration 60s|forever] [--seed N] [--report DIR] [--plumb BIN] [--loopback] [--xds sotw|delta] [--sabotage retries|handover]\n       plumb-sim check FILE";

fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args {
        scenario: PathBuf::new(),
        duration: None,
        seed: None,
        report: None,
        plumb: None,
        sabotage: topology::Sabotage::None,
        loopback: false,
        delta: false,
        soak: false,
    };
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{k} needs a value"))
        };
        match k.as_str() {
            "--scenario" => a.scenario = val()?.into(),
            "--duration" => match val()?.as_str() {
                "forever" => a.soak = true,
                d => a.duration = Some(scenario::parse_duration(d).context("--duration")?),
            },
            "--seed" => a.seed = Some(val()?.parse().context("--seed: a whole number")?),
            "--report" => a.report = Some(val()?.into()),
            "--plumb" => a.plumb = Some(val()?.into()),
            "--loopback" => a.loopback = true,
            "--xds" => {
                a.delta = match val()?.as_str() {
                    "sotw" => false,
                    "delta" => true,
                    other => bail!("--xds: \"{other}\" is not sotw or delta"),
                }
            }
            "--sabotage" => {
                a.sabotage = match val()?.as_str() {
                    "retries" => topology::Sabotage::Retries,
                    "handover" => topology::Sabotage::Handover,
                    other => bail!("--sabotage: \"{other}\" is not retries or handover"),
                }
            }
            other => bail!("unknown argument \"{other}\"\n{USAGE}"),
        }
    }
    if a.scenario.as_os_str().is_empty() {
        bail!("--scenario is required\n{USAGE}");
    }
    Ok(a)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("run") => match parse_args(&args[1..]) {
            Ok(a) => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                match rt.block_on(run(a)) {
                    Ok(true) => 0,
                    Ok(false) => 1,
                    Err(e) => {
                        eprintln!("plumb-sim: error: {e:#}");
                        2
                    }
                }
            }
            Err(e) => {
                eprintln!("plumb-sim: {e:#}");
                2
            }
        },
        Some("pod-serve") => pod_cmd::pod_serve(&args[1..]),
        Some("pod-flow") => pod_cmd::pod_flow(&args[1..]),
        Some("check") if args.len() == 2 => match std::fs::read_to_string(&args[1])
            .map_err(anyhow::Error::from)
            .and_then(|t| scenario::parse(&t))
        {
            Ok(s) => {
                println!(
                    "{}: {} services, {} flows, {} faults, {:?}",
                    s.name,
                    s.services.len(),
                    s.flows.len(),
                    s.faults.len(),
                    s.duration
                );
                0
            }
            Err(e) => {
                eprintln!("plumb-sim: {}: {e:#}", args[1]);
                2
            }
        },
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}

/// `plumb` next to this binary (target/<profile>/), unless `--plumb` says otherwise.
fn plumb_bin(arg: Option<PathBuf>) -> Result<PathBuf> {
    let p = match arg {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this binary")?
            .join("plumb"),
    };
    if !p.is_file() {
        bail!(
            "no plumb binary at {} (build it, or pass --plumb)",
            p.display()
        );
    }
    Ok(p)
}

/// A port on 127.0.0.1 for a service's listener, free now: from below the kernel's ephemeral
/// range (a port learnt by binding port 0 could be taken by any outgoing connect before the
/// agent binds it) and above the test suite's ports (20000–31999).
fn free_port() -> Result<SocketAddr> {
    plumb_tests::servers::free_port_in(32_000, 700)
        .context("no free port left in 32000..32700 on 127.0.0.1")
}

async fn run(a: Args) -> Result<bool> {
    let text = std::fs::read_to_string(&a.scenario)
        .with_context(|| format!("reading {}", a.scenario.display()))?;
    let sc = scenario::parse(&text).with_context(|| a.scenario.display().to_string())?;
    let duration = a.duration.unwrap_or(sc.duration);
    let seed = a.seed.unwrap_or(sc.seed);
    let bin = plumb_bin(a.plumb)?;
    let dir = a
        .report
        .unwrap_or_else(|| PathBuf::from(format!("plumb-sim-report/{}", sc.name)));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    // Pods with eBPF capture when this machine can; else loopback, saying why.
    let why_not_pods = if a.loopback {
        Some("--loopback was given".to_string())
    } else {
        pods::unavailable(&bin)
    };
    let mode = match &why_not_pods {
        None => "pods: replicas and clients run in network namespaces and cgroups of their own; \
                 the agent captures their connects to service virtual IPs with eBPF"
            .to_string(),
        Some(why) => format!(
            "loopback: Plumb's listeners are addressed explicitly on 127.0.0.1 (no pods: {why})"
        ),
    };
    println!(
        "plumb-sim: scenario {} (seed {seed}, {:.0} s); report in {}\nplumb-sim: mode {mode}",
        sc.name,
        duration.as_secs_f64(),
        dir.display()
    );
    if a.sabotage != topology::Sabotage::None {
        println!(
            "plumb-sim: SABOTAGE {:?}: this run is meant to fail",
            a.sabotage
        );
    }

    let records = Arc::new(records::Records::new());
    let caller = Arc::new(caller::Caller::new(Duration::from_secs(15)));
    let cp = plumb_tests::xds::ControlPlane::start().await;
    let pool = match why_not_pods {
        None => {
            let logs = dir.join("pods");
            std::fs::create_dir_all(&logs)?;
            Some(Arc::new(std::sync::Mutex::new(pods::PodPool::new(
                std::env::current_exe()?,
                a.scenario.canonicalize()?,
                logs,
                records.clone(),
            ))))
        }
        Some(_) => None,
    };
    let mut listen = HashMap::new();
    for (k, s) in sc.services.iter().enumerate() {
        let addr = match pool {
            Some(_) => pods::vip(k),
            None => free_port()?,
        };
        listen.insert(s.name.clone(), (addr, s.protocol));
    }
    let targets = Arc::new(listen);
    let mtls = sc.mtls.then(topology::Mtls::new);
    let mut server_tls = HashMap::new();
    if let Some(m) = &mtls {
        let tls_dir = dir.join("tls");
        std::fs::create_dir_all(&tls_dir)?;
        std::fs::write(tls_dir.join("ca.pem"), &m.ca.pem)?;
        for s in &sc.services {
            let leaf = m.server(&s.name);
            std::fs::write(tls_dir.join(format!("{}.pem", s.name)), &leaf.cert)?;
            std::fs::write(tls_dir.join(format!("{}.key", s.name)), &leaf.key)?;
            server_tls.insert(
                s.name.clone(),
                plumb_tests::tls::server_config(&leaf, Some(&m.ca.pem), &["h2", "http/1.1"]),
            );
        }
        if let Some(p) = &pool {
            p.lock().unwrap().tls_dir = Some(tls_dir);
        }
    }
    let mut states = Vec::new();
    for s in &sc.services {
        let ctx = Arc::new(service::ServiceCtx {
            spec: s.clone(),
            records: records.clone(),
            caller: caller.clone(),
            targets: targets.clone(),
            tls: server_tls.get(&s.name).cloned(),
        });
        let mut st = topology::ServiceState::new(ctx, targets[&s.name].0);
        st.pool = pool.clone();
        for _ in 0..s.replicas {
            st.add_replica(false).await?;
        }
        for _ in 0..s.canary_replicas {
            st.add_replica(true).await?;
        }
        states.push(st);
    }
    let access_log = dir.join("access.log");
    let mut topo =
        topology::Topology::new(states, cp, access_log.clone(), a.sabotage, records.clone());
    topo.vips = pool.is_some();
    topo.mtls = mtls;
    topo.publish();
    let cp_addr = topo.cp_addr;
    let topo = Arc::new(Mutex::new(topo));
    let pin = PathBuf::from(format!("/sys/fs/bpf/plumb-sim-{}", std::process::id()));
    let _unpin = Unpin(pin.clone());
    let bootstrap = match &pool {
        Some(p) => {
            let p = p.lock().unwrap();
            let obj = pods::bpf_object(&bin).context("the eBPF object")?;
            agent::bootstrap_pods(cp_addr, a.delta, &p.node, &pin, &obj)
        }
        None => agent::bootstrap(cp_addr, a.delta),
    };
    let agent = agent::Agent::start(bin, dir.join("agent"), &bootstrap).await?;
    println!(
        "plumb-sim: agent ready (pid {}, admin {})",
        agent.current.pid(),
        agent.current.admin
    );
    let admin = agent.current.admin;
    let agent = Arc::new(Mutex::new(agent));
    match &pool {
        None => wait_routable(&sc, &targets, &caller).await?,
        Some(_) => wait_configured(&sc, admin).await?,
    }

    // Sampling and the live view, for the whole run.
    let problems = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = {
        let (agent, records, problems) = (agent.clone(), records.clone(), problems.clone());
        let sc = sc.clone();
        tokio::spawn(async move {
            let mut view = view::View::new(&sc);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                {
                    let mut a = agent.lock().await;
                    if let Some((rss_kb, fds)) = a.sample() {
                        records.samples.lock().unwrap().push(records::Sample {
                            at: records.now(),
                            rss_kb,
                            fds,
                            pid: a.current.pid(),
                        });
                    }
                    problems.lock().unwrap().extend(a.reap());
                }
                view.tick(&records, duration);
            }
        })
    };
    // A soak run stops after the epoch under way when told to (SIGINT, SIGTERM).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if a.soak {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let term = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term => {}
            }
            println!("\nplumb-sim: stopping after this epoch");
            stop.store(true, Ordering::Relaxed);
        });
    }
    epoch::settle(&access_log).await;
    let mut log_offset = std::fs::metadata(&access_log).map(|m| m.len()).unwrap_or(0);
    let mut epochs = Vec::new();
    let mut all_passed = true;
    for epoch in 1u64.. {
        let ctx = epoch::Epoch {
            sc: &sc,
            n: epoch,
            seed: seed.wrapping_add(epoch - 1),
            duration,
            records: &records,
            targets: &targets,
            caller: &caller,
            pool: pool.as_ref(),
            topo: &topo,
            agent: &agent,
            sabotage: a.sabotage,
            access_log: &access_log,
            log_offset,
            problems: &problems,
        };
        let (verdicts, figures, new_offset) = ctx.run().await?;
        log_offset = new_offset;
        let series = report::series(&sc, &records, duration.as_secs() as usize + 1);
        let faults = records.faults.lock().unwrap().clone();
        let notes = records.notes.lock().unwrap().clone();
        let samples = records.samples.lock().unwrap().clone();
        let rep = report::Report {
            scenario: &sc,
            seed: seed.wrapping_add(epoch - 1),
            duration,
            mode: &mode,
            verdicts: &verdicts,
            figures: &figures,
            series: &series,
            faults: &faults,
            notes: &notes,
            samples: &samples,
        };
        let out = if a.soak {
            dir.join(format!("epoch-{epoch}"))
        } else {
            dir.clone()
        };
        std::fs::create_dir_all(&out)?;
        std::fs::write(
            out.join("summary.json"),
            serde_json::to_string_pretty(&rep.json())?,
        )?;
        std::fs::write(out.join("index.html"), rep.html())?;
        epoch::print_verdicts(&figures, &verdicts);
        let passed = rep.passed();
        all_passed &= passed;
        let violated: Vec<&str> = verdicts
            .iter()
            .filter(|v| !v.ok)
            .map(|v| v.invariant)
            .collect();
        println!(
            "plumb-sim: {}{} — report: {}",
            if a.soak {
                format!("epoch {epoch}: ")
            } else {
                String::new()
            },
            if passed {
                "every invariant held".to_string()
            } else {
                format!("VIOLATED: {}", violated.join(", "))
            },
            out.join("index.html").display()
        );
        epochs.push(serde_json::json!({"epoch": epoch, "passed": passed, "violated": violated}));
        if a.soak {
            std::fs::write(
                dir.join("summary.json"),
                serde_json::to_string_pretty(&serde_json::json!({
                    "scenario": sc.name, "mode": mode, "soak": true, "passed": all_passed,
                    "epoch_duration_s": duration.as_secs_f64(), "epochs": epochs,
                }))?,
            )?;
        }
        if !a.soak || stop.load(Ordering::Relaxed) {
            break;
        }
    }
    sampler.abort();
    let _ = sampler.await;
    let agent = Arc::try_unwrap(agent)
        .map_err(|_| anyhow::anyhow!("the agent is still shared"))?
        .into_inner();
    agent.stop().await;
    topo.lock().await.stop_control_plane().await;
    // Replicas' processes end before their pods go (with the pool, last).
    drop(topo);
    drop(pool);
    if a.soak {
        println!(
            "plumb-sim: {} epochs, {} — {}",
            epochs.len(),
            if all_passed {
                "every invariant held in each"
            } else {
                "some VIOLATED"
            },
            dir.join("summary.json").display()
        );
    }
    Ok(all_passed)
}

/// Waits until each service answers through Plumb (listeners, routes, clusters and
/// endpoints have all arrived), with requests marked as probes.
async fn wait_routable(
    sc: &scenario::Scenario,
    targets: &service::Targets,
    caller: &caller::Caller,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in &sc.services {
        let (addr, protocol) = targets[&s.name];
        let mut n = 0;
        loop {
            n += 1;
            let id = format!("probe-{}-{n}", s.name);
            let (o, _) = caller
                .call(&caller::Call {
                    addr,
                    protocol,
                    service: &s.name,
                    path: "/",
                    id: &id,
                    flow: "probe",
                    body_bytes: 0,
                    stream: 0,
                })
                .await;
            if o.ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer through Plumb within 30 s (last: {})",
                    s.name,
                    o.label()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Removes the pinned maps of the run's agents.
struct Unpin(PathBuf);

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until the agent has every service's listener and endpoints (in the pod mode the
/// simulator itself is not captured, so it cannot probe through a virtual IP).
async fn wait_configured(sc: &scenario::Scenario, admin: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = agent::stats(admin).await {
            let listeners = s
                .get("listener_manager.total_listeners_active")
                .copied()
                .unwrap_or(0);
            let members = sc.services.iter().all(|svc| {
                s.get(&format!("cluster.{}.membership_total", svc.name))
                    .is_some_and(|n| *n >= svc.replicas as i64)
            });
            if listeners > sc.services.len() as i64 && members {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the agent did not get every listener and endpoint within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
