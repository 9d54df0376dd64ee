//! The processes of the pod mode: `plumb-sim pod-serve` (one replica) and
//! `plumb-sim pod-flow` (one flow's clients), each in its pod, with records on stdout.

use crate::{caller, flows, pods, records, scenario, service};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs a pod command on a one-worker runtime; its exit status (2, with the error, on failure).
fn run_pod<F>(
    what: &str,
    args: &[String],
    body: impl FnOnce(scenario::Scenario) -> Result<F>,
) -> i32
where
    F: std::future::Future<Output = Result<()>>,
{
    let run = || -> Result<()> {
        let path = flag(args, "--scenario").context("--scenario")?;
        let sc = scenario::parse(&std::fs::read_to_string(path)?)?;
        let fut = body(sc)?;
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(fut)
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("plumb-sim {what}: {e:#}");
            2
        }
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// `plumb-sim pod-serve`: one replica, in its pod. Records on stdout, commands on stdin;
/// stdin closing (the simulator gone) stops it too.
pub fn pod_serve(args: &[String]) -> i32 {
    run_pod("pod-serve", args, |sc| {
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
        Ok(async move {
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
    })
}

/// `plumb-sim pod-flow`: one flow's clients, in a pod, from the simulator's time 0.
pub fn pod_flow(args: &[String]) -> i32 {
    run_pod("pod-flow", args, |sc| {
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
        Ok(async move {
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
    })
}
