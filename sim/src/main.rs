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
mod faults;
mod flows;
mod pods;
mod records;
mod report;
mod scenario;
mod service;
mod topology;
mod view;

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
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
        Some("pod-serve") => pod_serve(&args[1..]),
        Some("pod-flow") => pod_flow(&args[1..]),
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

fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
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
    settle(&access_log).await;
    let mut log_offset = std::fs::metadata(&access_log).map(|m| m.len()).unwrap_or(0);
    let mut epochs = Vec::new();
    let mut all_passed = true;
    for epoch in 1u64.. {
        let ctx = Epoch {
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
        print_verdicts(&figures, &verdicts);
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

/// Waits until the access log stops growing (it is written off the request path, at least
/// every 20 ms).
async fn settle(access_log: &std::path::Path) {
    let mut last = u64::MAX;
    let mut still = 0;
    while still < 3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let len = std::fs::metadata(access_log).map(|m| m.len()).unwrap_or(0);
        if len == last {
            still += 1;
        } else {
            (last, still) = (len, 0);
        }
    }
}

fn print_verdicts(figures: &[check::FlowFigures], verdicts: &[check::Verdict]) {
    for f in figures {
        println!(
            "  flow {:<16} sent {:>7}  ok {:>7}  failed {:>5}  p99 {}",
            f.name,
            f.sent,
            f.ok,
            f.failed,
            f.p99
                .map(|d| format!("{:.2} ms", check::ms(d)))
                .unwrap_or_else(|| "-".into())
        );
    }
    for v in verdicts {
        println!(
            "  {} {:<44} {}",
            if v.ok { "ok  " } else { "FAIL" },
            v.invariant,
            v.summary
        );
        for e in v.examples.iter().filter(|_| !v.ok) {
            println!("         {}: {}", e.id, e.detail);
            for l in e.log.iter().take(4) {
                println!("           {l}");
            }
        }
    }
}

/// One pass of the scenario: traffic and the fault schedule from a fresh time 0, then the
/// checks on what this pass recorded. A bounded run is one epoch; a soak run repeats them
/// (memory stays that of one epoch).
struct Epoch<'a> {
    sc: &'a scenario::Scenario,
    n: u64,
    seed: u64,
    duration: Duration,
    records: &'a Arc<records::Records>,
    targets: &'a Arc<service::Targets>,
    caller: &'a Arc<caller::Caller>,
    pool: Option<&'a Arc<std::sync::Mutex<pods::PodPool>>>,
    topo: &'a Arc<Mutex<topology::Topology>>,
    agent: &'a Arc<Mutex<agent::Agent>>,
    sabotage: topology::Sabotage,
    access_log: &'a std::path::Path,
    log_offset: u64,
    problems: &'a Arc<std::sync::Mutex<Vec<String>>>,
}

impl Epoch<'_> {
    async fn run(&self) -> Result<(Vec<check::Verdict>, Vec<check::FlowFigures>, u64)> {
        let (sc, records, duration, seed) = (self.sc, self.records, self.duration, self.seed);
        // What the previous epoch (or the readiness probes) recorded goes.
        records.sent.lock().unwrap().clear();
        records.receipts.lock().unwrap().clear();
        records.faults.lock().unwrap().clear();
        records.notes.lock().unwrap().clear();
        records.observations.lock().unwrap().clear();
        records.rotations.lock().unwrap().clear();
        let stats_before = {
            let a = self.agent.lock().await;
            (a.current.n, agent::stats(a.current.admin).await)
        };
        let t0 = records.start_clock();
        let end = t0 + duration;
        let inflight = Arc::new(AtomicUsize::new(0));
        let pod_unfinished = Arc::new(AtomicUsize::new(0));
        let mut flow_tasks = Vec::new();
        let mut pod_flows = Vec::new();
        match self.pool {
            None => {
                for f in &sc.flows {
                    let (addr, protocol) = self.targets[&f.service];
                    flow_tasks.push(tokio::spawn(flows::run(
                        flows::FlowRun {
                            flow: f.clone(),
                            addr,
                            protocol,
                            seed,
                            start: t0,
                            duration,
                            max_inflight: sc.limits.max_inflight,
                        },
                        records.clone(),
                        self.caller.clone(),
                        inflight.clone(),
                    )));
                }
            }
            Some(pool) => {
                let mut p = pool.lock().unwrap();
                let clients = p.take()?;
                for f in &sc.flows {
                    let (addr, protocol) = self.targets[&f.service];
                    pod_flows.push(pods::spawn_flow(
                        &p,
                        &clients,
                        &f.name,
                        addr,
                        protocol,
                        seed,
                        duration,
                        sc.limits.max_inflight,
                        pod_unfinished.clone(),
                    )?);
                }
                // The clients' pod is free again once they are done.
                p.give_back(clients);
            }
        }
        let fctx = Arc::new(faults::FaultCtx {
            topo: self.topo.clone(),
            agent: self.agent.clone(),
            records: records.clone(),
            seed,
            sabotage: self.sabotage,
            end,
        });
        let fault_task = tokio::spawn(faults::schedule(sc.faults.clone(), t0, fctx));
        for t in flow_tasks {
            let _ = t.await;
        }
        for t in pod_flows {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        // Requests still under way finish (or time out: the client gives up after 15 s).
        let deadline = Instant::now() + Duration::from_secs(20);
        while inflight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let unfinished = inflight.load(Ordering::Relaxed) + pod_unfinished.load(Ordering::Relaxed);
        let _ = fault_task.await;
        println!();
        settle(self.access_log).await;
        // Old generations finish draining before their exits are judged.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut a = self.agent.lock().await;
            self.problems.lock().unwrap().extend(a.reap());
            if a.draining.is_empty() || Instant::now() > deadline {
                break;
            }
            drop(a);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Plumb's counts over the epoch, when one generation served all of it.
        // Plumb's counters: over the epoch when one generation served all of it, else those
        // of the last generation (which started during the epoch), against its own lines.
        let (stats_delta, stats_generation) = {
            let a = self.agent.lock().await;
            let now = agent::stats(a.current.admin).await;
            match (stats_before, a.current.n) {
                ((n0, Some(before)), n1) if n0 == n1 => (
                    now.map(|after| {
                        after
                            .into_iter()
                            .map(|(k, v)| {
                                let b = before.get(&k).copied().unwrap_or(0);
                                (k, v - b)
                            })
                            .collect()
                    }),
                    None,
                ),
                (_, n1) => (now, Some(n1)),
            }
        };
        let text = read_from(self.access_log, self.log_offset);
        let new_offset = self.log_offset + text.len() as u64;
        let log = check::parse_log(&text);
        let problems = std::mem::take(&mut *self.problems.lock().unwrap());
        let inputs = check::Inputs {
            scenario: sc,
            records,
            log: &log,
            final_stats: stats_delta,
            stats_generation,
            unfinished,
            agent_problems: problems,
        };
        let (verdicts, figures) = check::check(&inputs);
        let _ = self.n;
        Ok((verdicts, figures, new_offset))
    }
}

/// The access log from byte `offset` on (whole lines).
fn read_from(path: &std::path::Path, offset: u64) -> String {
    use std::io::{Read, Seek};
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(std::io::SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_string(&mut s);
        }
    }
    match s.rfind('\n') {
        Some(i) => s.truncate(i + 1),
        None => s.clear(),
    }
    s
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

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn pod_scenario(args: &[String]) -> Result<scenario::Scenario> {
    let path = flag(args, "--scenario").context("--scenario")?;
    scenario::parse(&std::fs::read_to_string(path)?)
}

/// `plumb-sim pod-serve`: one replica, in its pod. Records on stdout, commands on stdin;
/// stdin closing (the simulator gone) stops it too.
fn pod_serve(args: &[String]) -> i32 {
    let run = || -> Result<()> {
        let sc = pod_scenario(args)?;
        let name = flag(args, "--service").context("--service")?;
        let spec = sc
            .services
            .iter()
            .find(|s| s.name == name)
            .context("no such service")?
            .clone();
        let replica = flag(args, "--replica").context("--replica")?.to_string();
        let listen: SocketAddr = flag(args, "--listen").context("--listen")?.parse()?;
        let targets =
            pods::decode_targets(flag(args, "--targets").unwrap_or("")).context("--targets")?;
        let tls = match flag(args, "--tls") {
            None => None,
            Some(d) => {
                let d = std::path::Path::new(d);
                let read = |f: String| std::fs::read_to_string(d.join(&f)).with_context(|| f);
                let leaf = plumb_tests::tls::Leaf {
                    cert: read(format!("{name}.pem"))?,
                    key: read(format!("{name}.key"))?,
                };
                let ca = read("ca.pem".into())?;
                Some(plumb_tests::tls::server_config(
                    &leaf,
                    Some(&ca),
                    &["h2", "http/1.1"],
                ))
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let ctx = Arc::new(service::ServiceCtx {
                spec,
                records: Arc::new(records::Wire),
                caller: Arc::new(caller::Caller::new(Duration::from_secs(15))),
                targets: Arc::new(targets),
                tls,
            });
            let r = service::Replica::start(ctx, replica, listen).await?;
            println!("{{\"k\":\"ready\"}}");
            let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::stdin().lock().lines().map_while(|l| l.ok()) {
                    if tx.blocking_send(line).is_err() {
                        return;
                    }
                }
            });
            let knobs = r.knobs.clone();
            while let Some(line) = rx.recv().await {
                if !knobs.apply(&line) {
                    break;
                }
            }
            r.stop().await;
            Ok(())
        })
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("plumb-sim pod-serve: {e:#}");
            2
        }
    }
}

/// `plumb-sim pod-flow`: one flow's clients, in a pod, from the simulator's time 0.
fn pod_flow(args: &[String]) -> i32 {
    let run = || -> Result<()> {
        let sc = pod_scenario(args)?;
        let name = flag(args, "--flow").context("--flow")?;
        let flow = sc
            .flows
            .iter()
            .find(|f| f.name == name)
            .context("no such flow")?
            .clone();
        let (addr, protocol) =
            pods::decode_target(flag(args, "--target").context("--target")?).context("--target")?;
        let seed: u64 = flag(args, "--seed").context("--seed")?.parse()?;
        let start_wall: f64 = flag(args, "--start-wall")
            .context("--start-wall")?
            .parse()?;
        let duration = scenario::parse_duration(flag(args, "--duration").context("--duration")?)?;
        let max_inflight: usize = flag(args, "--max-inflight")
            .context("--max-inflight")?
            .parse()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let behind = records::wall() - start_wall;
            let now = Instant::now();
            let start = if behind >= 0.0 {
                now.checked_sub(Duration::from_secs_f64(behind))
                    .unwrap_or(now)
            } else {
                now + Duration::from_secs_f64(-behind)
            };
            let inflight = Arc::new(AtomicUsize::new(0));
            flows::run(
                flows::FlowRun {
                    flow,
                    addr,
                    protocol,
                    seed,
                    start,
                    duration,
                    max_inflight,
                },
                Arc::new(records::Wire),
                Arc::new(caller::Caller::new(Duration::from_secs(15))),
                inflight.clone(),
            )
            .await;
            let deadline = Instant::now() + Duration::from_secs(20);
            while inflight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            println!(
                "{{\"k\":\"done\",\"unfinished\":{}}}",
                inflight.load(Ordering::Relaxed)
            );
            Ok(())
        })
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("plumb-sim pod-flow: {e:#}");
            2
        }
    }
}
