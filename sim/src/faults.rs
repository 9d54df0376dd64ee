//! Faults on the scenario's schedule: a replica that fails or slows down, a pod that crashes
//! and comes back, endpoints churned through EDS, a canary shifted through RDS, the control
//! plane restarted or gone for a while, the agent handed over to a successor or killed and
//! restarted. Each records its window (the report marks it on the time axis; the checks know
//! which failures it explains), and some observe Plumb while they run.

use crate::agent::{stats, Agent};
use crate::records::Records;
use crate::scenario::{Fault, FaultKind};
use crate::topology::{Sabotage, Topology};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

pub struct FaultCtx {
    pub topo: Arc<Mutex<Topology>>,
    pub agent: Arc<Mutex<Agent>>,
    pub records: Arc<Records>,
    pub seed: u64,
    pub sabotage: Sabotage,
    /// When traffic stops: faults do not start after it, and long ones end by then.
    pub end: Instant,
}

/// Runs every fault at its time (relative to `start`).
pub async fn schedule(faults: Vec<Fault>, start: Instant, ctx: Arc<FaultCtx>) {
    let mut tasks = Vec::new();
    for (i, f) in faults.into_iter().enumerate() {
        let when = start + f.at;
        if when >= ctx.end {
            ctx.records.note(format!(
                "fault {} at {:?} not run: after the end of the run",
                f.kind.name(),
                f.at
            ));
            continue;
        }
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(when.into()).await;
            run(f.kind, i as u64, &ctx).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// A counter of the live agent, with the generation that answered.
async fn counter(ctx: &FaultCtx, name: &str) -> Option<(u32, i64)> {
    let (admin, n) = {
        let a = ctx.agent.lock().await;
        (a.current.admin, a.current.n)
    };
    let s = stats(admin).await?;
    Some((n, s.get(name).copied().unwrap_or(0)))
}

async fn run(kind: FaultKind, index: u64, ctx: &FaultCtx) {
    let r = &ctx.records;
    let name = kind.name();
    match kind {
        FaultKind::ReplicaErrors {
            service,
            replica,
            rate,
            length,
        } => {
            let Some((knobs, rname, outlier)) = ({
                let mut t = ctx.topo.lock().await;
                let s = t.service(&service);
                let outlier = s.ctx.spec.outlier.is_some();
                s.main
                    .get(replica)
                    .map(|x| (x.knobs.clone(), x.name.clone(), outlier))
            }) else {
                r.note(format!(
                    "{name}: {service} has no replica {replica} now; skipped"
                ));
                return;
            };
            let ejections = format!("cluster.{service}.outlier_detection.ejections_enforced_total");
            let before = counter(ctx, &ejections).await;
            let w = r.start_fault(
                name,
                format!("{rname} answers {:.0} % with errors", rate * 100.0),
                true,
            );
            knobs.set_error_rate(Some(rate));
            tokio::time::sleep(length).await;
            knobs.set_error_rate(None);
            r.end_fault(w);
            if outlier && rate >= 1.0 {
                let after = counter(ctx, &ejections).await;
                match (before, after) {
                    (Some((g1, a)), Some((g2, b))) if g1 == g2 => r.observe(
                        "outlier_ejection",
                        b > a,
                        format!(
                            "{ejections} went from {a} to {b} while {rname} failed every request"
                        ),
                    ),
                    _ => r.note(format!(
                        "{name}: the agent restarted during the fault; ejections not compared"
                    )),
                }
            }
        }
        FaultKind::ReplicaSlow {
            service,
            replica,
            delay,
            length,
        } => {
            let Some((knobs, rname)) = ({
                let mut t = ctx.topo.lock().await;
                t.service(&service)
                    .main
                    .get(replica)
                    .map(|x| (x.knobs.clone(), x.name.clone()))
            }) else {
                r.note(format!(
                    "{name}: {service} has no replica {replica} now; skipped"
                ));
                return;
            };
            let w = r.start_fault(name, format!("{rname} takes {delay:?} more"), true);
            knobs.set_delay(delay);
            tokio::time::sleep(length).await;
            knobs.set_delay(Duration::ZERO);
            r.end_fault(w);
        }
        FaultKind::PodCrash {
            service,
            replica,
            restart_after,
        } => {
            let w;
            {
                let mut t = ctx.topo.lock().await;
                let Some(x) = t.service(&service).main.get_mut(replica) else {
                    r.note(format!(
                        "{name}: {service} has no replica {replica} now; skipped"
                    ));
                    return;
                };
                w = r.start_fault(
                    name,
                    format!("{} crashes, back after {restart_after:?}", x.name),
                    true,
                );
                x.crash();
            }
            tokio::time::sleep(restart_after).await;
            let mut t = ctx.topo.lock().await;
            if let Some(x) = t.service(&service).main.get_mut(replica) {
                if let Err(e) = x.restart().await {
                    r.note(format!("{name}: {} could not restart: {e}", x.name));
                }
            }
            r.end_fault(w);
        }
        FaultKind::EndpointChurn {
            service,
            every,
            length,
            min,
            max,
        } => {
            let mut rng = fastrand::Rng::with_seed(ctx.seed ^ index.wrapping_mul(0x9e37_79b9));
            let w = r.start_fault(
                name,
                format!("{service} scaled between {min} and {max} replicas every {every:?}"),
                true,
            );
            let until = (Instant::now() + length).min(ctx.end);
            let mut leaving = Vec::new();
            while Instant::now() + every < until {
                tokio::time::sleep(every).await;
                let mut t = ctx.topo.lock().await;
                let n = t.service(&service).main.len();
                let up = n < max && (n <= min || rng.bool());
                if up {
                    match t.service(&service).add_replica(false).await {
                        Ok(added) => r.note(format!("{name}: {added} up ({} replicas)", n + 1)),
                        Err(e) => r.note(format!("{name}: a new replica of {service} failed: {e}")),
                    }
                    t.publish();
                } else if n > min {
                    let i = rng.usize(..n);
                    let gone = t.service(&service).main.remove(i);
                    r.note(format!(
                        "{name}: {} leaving ({} replicas)",
                        gone.name,
                        n - 1
                    ));
                    t.publish();
                    drop(t);
                    // As a pod does: endpoints are withdrawn, then it stops after a grace
                    // period (the preStop delay), finishing what it serves.
                    leaving.push(tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        gone.stop().await;
                    }));
                }
            }
            for l in leaving {
                let _ = l.await;
            }
            r.end_fault(w);
        }
        FaultKind::CanaryShift {
            service,
            weights,
            every,
        } => {
            let w = r.start_fault(name, format!("{service} canary share {weights:?} %"), true);
            for weight in weights {
                {
                    let mut t = ctx.topo.lock().await;
                    t.service(&service).canary_weight = weight;
                    t.publish();
                }
                r.note(format!("{name}: {service}-canary at {weight} %"));
                let from = r.now();
                let last = Instant::now() + every >= ctx.end;
                if !last {
                    tokio::time::sleep(every).await;
                }
                let to = if last { from } else { r.now() };
                r.canary_steps
                    .lock()
                    .unwrap()
                    .push((service.clone(), weight, from, to));
                if last {
                    break;
                }
            }
            r.end_fault(w);
        }
        FaultKind::ControlPlaneRestart => {
            let w = r.start_fault(name, "the control plane restarts".into(), false);
            let mut t = ctx.topo.lock().await;
            t.stop_control_plane().await;
            t.start_control_plane().await;
            r.end_fault(w);
        }
        FaultKind::ControlPlaneOutage { length } => {
            let w = r.start_fault(
                name,
                format!("the control plane is down for {length:?}"),
                false,
            );
            ctx.topo.lock().await.stop_control_plane().await;
            tokio::time::sleep(length).await;
            ctx.topo.lock().await.start_control_plane().await;
            r.end_fault(w);
        }
        FaultKind::AgentHandover => {
            let kill_old = ctx.sabotage == Sabotage::Handover;
            let w = r.start_fault(
                name,
                if kill_old {
                    "a successor takes over; the old agent is KILLED (sabotage)".into()
                } else {
                    "a successor takes over; the old agent drains".into()
                },
                false,
            );
            let mut a = ctx.agent.lock().await;
            match a.handover(kill_old).await {
                Ok(()) => r.note(format!(
                    "{name}: generation {} (pid {}) took over",
                    a.current.n,
                    a.current.pid()
                )),
                Err(e) => r.note(format!("{name}: the successor failed: {e:#}")),
            }
            drop(a);
            // The old generation's connections drain (drain time 5 s): failures in that time
            // are the hand-over's.
            tokio::time::sleep(Duration::from_secs(5)).await;
            r.end_fault(w);
        }
        FaultKind::CertRotation => {
            let w = r.start_fault(
                name,
                "the agent's client certificate is rotated over SDS".into(),
                false,
            );
            let id = {
                let mut t = ctx.topo.lock().await;
                let id = t.mtls.as_mut().map(|m| m.rotate());
                t.publish();
                id
            };
            if let Some(id) = id {
                r.note(format!("{name}: the agent's new identity is {id}"));
                r.rotations.lock().unwrap().push((r.now(), id));
            }
            // SDS reaches the agent in milliseconds; new handshakes use the new certificate,
            // established connections keep theirs.
            tokio::time::sleep(Duration::from_secs(2)).await;
            r.end_fault(w);
        }
        FaultKind::AgentKill { restart_after } => {
            let w = r.start_fault(
                name,
                format!("the agent is killed (SIGKILL), restarted after {restart_after:?}"),
                true,
            );
            ctx.agent.lock().await.kill();
            tokio::time::sleep(restart_after).await;
            let mut a = ctx.agent.lock().await;
            match a.restart().await {
                Ok(()) => r.note(format!(
                    "{name}: generation {} (pid {}) started",
                    a.current.n,
                    a.current.pid()
                )),
                Err(e) => r.note(format!("{name}: the restart failed: {e:#}")),
            }
            drop(a);
            // Connections the client pooled to the killed agent fail as they are next used.
            tokio::time::sleep(Duration::from_secs(1)).await;
            r.end_fault(w);
        }
    }
}
