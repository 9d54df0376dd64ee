//! One epoch of a run: traffic and the fault schedule from a fresh time 0, then the checks
//! on what it recorded, and the helpers around it (the access log read from an offset, the
//! verdicts printed).

use crate::{agent, caller, check, faults, flows, pods, records, scenario, service, topology};
use anyhow::Result;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Waits until the access log stops growing (it is written off the request path, at least
/// every 20 ms).
pub async fn settle(access_log: &std::path::Path) {
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

pub fn print_verdicts(figures: &[check::FlowFigures], verdicts: &[check::Verdict]) {
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
pub struct Epoch<'a> {
    pub sc: &'a scenario::Scenario,
    pub n: u64,
    pub seed: u64,
    pub duration: Duration,
    pub records: &'a Arc<records::Records>,
    pub targets: &'a Arc<service::Targets>,
    pub caller: &'a Arc<caller::Caller>,
    pub pool: Option<&'a Arc<std::sync::Mutex<pods::PodPool>>>,
    pub topo: &'a Arc<Mutex<topology::Topology>>,
    pub agent: &'a Arc<Mutex<agent::Agent>>,
    pub sabotage: topology::Sabotage,
    pub access_log: &'a std::path::Path,
    pub log_offset: u64,
    pub problems: &'a Arc<std::sync::Mutex<Vec<String>>>,
}

impl Epoch<'_> {
    pub async fn run(&self) -> Result<(Vec<check::Verdict>, Vec<check::FlowFigures>, u64)> {
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
