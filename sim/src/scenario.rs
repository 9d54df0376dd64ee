//! The scenario file (YAML): services and their call graph, flows of requests, budgets, limits
//! and a schedule of faults. Read strictly: an unknown key, a wrong type or a reference to a
//! service that does not exist is an error naming the field's path (`faults[3].service`).
//! The format is documented in docs/simulator.md.

pub use crate::scenario_reader::parse_duration;
use crate::scenario_reader::{to_json, Node};
use anyhow::{anyhow, bail, Result};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub duration: Duration,
    pub services: Vec<Service>,
    pub flows: Vec<Flow>,
    pub faults: Vec<Fault>,
    pub limits: Limits,
    /// The agent originates mTLS to every replica (secrets over SDS); replicas require it.
    pub mtls: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Grpc,
}

/// A latency distribution: log-normal through the given median and 99th percentile.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
}

impl Latency {
    /// One sample, from a standard normal draw `z`.
    pub fn sample(&self, z: f64) -> Duration {
        let p50 = self.p50.as_secs_f64();
        if p50 <= 0.0 {
            return Duration::ZERO;
        }
        // z(0.99) = 2.326: sigma so that exp(mu + 2.326 sigma) = p99.
        let sigma = (self.p99.as_secs_f64().max(p50) / p50).ln() / 2.326;
        // At most 10 × p99: a tail, not a hang.
        let s = (p50 * (sigma * z).exp()).min(self.p99.as_secs_f64() * 10.0);
        Duration::from_secs_f64(s)
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub protocol: Protocol,
    pub replicas: usize,
    pub canary_replicas: usize,
    pub latency: Latency,
    /// Fraction of requests a replica answers with 503 (gRPC: UNAVAILABLE) on its own.
    pub error_rate: f64,
    pub response_bytes: usize,
    pub calls: Vec<Call>,
    pub route: RoutePolicy,
    pub outlier: Option<Outlier>,
}

/// A request a service makes to another one (through Plumb) for each request it serves.
#[derive(Debug, Clone)]
pub struct Call {
    pub service: String,
    pub path: String,
    /// gRPC server streaming: how many messages to ask for (0: unary).
    pub stream: u32,
}

#[derive(Debug, Clone)]
pub struct RoutePolicy {
    pub timeout: Duration,
    pub retries: Option<Retries>,
}

#[derive(Debug, Clone)]
pub struct Retries {
    pub num: u32,
    pub on: String,
    pub per_try_timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Outlier {
    pub consecutive_5xx: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone)]
pub struct Flow {
    pub name: String,
    pub service: String,
    pub path: String,
    /// Mean arrivals per second (open loop, Poisson).
    pub rate: f64,
    pub bursts: Option<Burst>,
    pub request_bytes: usize,
    pub stream: u32,
    pub budget: Budget,
}

#[derive(Debug, Clone, Copy)]
pub struct Burst {
    pub every: Duration,
    pub length: Duration,
    pub factor: f64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Budget {
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub p999: Option<Duration>,
    /// Failed requests allowed, as a fraction of those sent (faults included).
    pub max_error_rate: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_rss_mb: u64,
    pub max_fds: u64,
    pub max_inflight: usize,
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub at: Duration,
    pub kind: FaultKind,
}

#[derive(Debug, Clone)]
pub enum FaultKind {
    ReplicaErrors {
        service: String,
        replica: usize,
        rate: f64,
        length: Duration,
    },
    ReplicaSlow {
        service: String,
        replica: usize,
        delay: Duration,
        length: Duration,
    },
    PodCrash {
        service: String,
        replica: usize,
        restart_after: Duration,
    },
    EndpointChurn {
        service: String,
        every: Duration,
        length: Duration,
        min: usize,
        max: usize,
    },
    CanaryShift {
        service: String,
        weights: Vec<u32>,
        every: Duration,
    },
    ControlPlaneRestart,
    ControlPlaneOutage {
        length: Duration,
    },
    AgentHandover,
    AgentKill {
        restart_after: Duration,
    },
    CertRotation,
}

impl FaultKind {
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::ReplicaErrors { .. } => "replica-errors",
            FaultKind::ReplicaSlow { .. } => "replica-slow",
            FaultKind::PodCrash { .. } => "pod-crash",
            FaultKind::EndpointChurn { .. } => "endpoint-churn",
            FaultKind::CanaryShift { .. } => "canary-shift",
            FaultKind::ControlPlaneRestart => "control-plane-restart",
            FaultKind::ControlPlaneOutage { .. } => "control-plane-outage",
            FaultKind::AgentHandover => "agent-handover",
            FaultKind::AgentKill { .. } => "agent-kill",
            FaultKind::CertRotation => "cert-rotation",
        }
    }

    pub fn service(&self) -> Option<&str> {
        match self {
            FaultKind::ReplicaErrors { service, .. }
            | FaultKind::ReplicaSlow { service, .. }
            | FaultKind::PodCrash { service, .. }
            | FaultKind::EndpointChurn { service, .. }
            | FaultKind::CanaryShift { service, .. } => Some(service),
            _ => None,
        }
    }
}

/// Reads a scenario from YAML (or JSON) text.
pub fn parse(text: &str) -> Result<Scenario> {
    let yaml = plumb::config::yaml::parse(text, 64).map_err(|e| anyhow!("scenario: {e}"))?;
    let v = to_json(&yaml);
    read(&Node::root(&v))
}

fn read(root: &Node) -> Result<Scenario> {
    root.finish_check_is_map()?;
    let name = root.str("name")?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("name: \"{name}\" must be letters, digits and '-'");
    }
    let mut services = Vec::new();
    for s in root.list("services")? {
        services.push(read_service(&s)?);
    }
    if services.is_empty() {
        bail!("services: at least one service is required");
    }
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    for (i, s) in services.iter().enumerate() {
        if names[..i].contains(&s.name.as_str()) {
            bail!("services[{i}].name: \"{}\" is defined twice", s.name);
        }
        for (j, c) in s.calls.iter().enumerate() {
            if !names.contains(&c.service.as_str()) {
                bail!(
                    "services[{i}].calls[{j}].service: no service \"{}\"",
                    c.service
                );
            }
        }
    }
    check_acyclic(&services)?;
    let mut flows = Vec::new();
    for f in root.list("flows")? {
        let flow = read_flow(&f)?;
        if !names.contains(&flow.service.as_str()) {
            bail!("{}.service: no service \"{}\"", f.path, flow.service);
        }
        if flows.iter().any(|x: &Flow| x.name == flow.name) {
            bail!("{}.name: \"{}\" is defined twice", f.path, flow.name);
        }
        flows.push(flow);
    }
    if flows.is_empty() {
        bail!("flows: at least one flow is required");
    }
    let mut faults = Vec::new();
    for f in root.list("faults")? {
        let fault = read_fault(&f)?;
        if let Some(svc) = fault.kind.service() {
            let Some(s) = services.iter().find(|s| s.name == svc) else {
                bail!("{}.service: no service \"{svc}\"", f.path);
            };
            match &fault.kind {
                FaultKind::ReplicaErrors { replica, .. }
                | FaultKind::ReplicaSlow { replica, .. }
                | FaultKind::PodCrash { replica, .. }
                    if *replica >= s.replicas =>
                {
                    bail!(
                        "{}.replica: service \"{svc}\" has {} replicas (0 to {})",
                        f.path,
                        s.replicas,
                        s.replicas - 1
                    );
                }
                FaultKind::CanaryShift { .. } if s.canary_replicas == 0 => {
                    bail!("{}.service: \"{svc}\" has no canary replicas", f.path);
                }
                _ => {}
            }
        }
        faults.push(fault);
    }
    faults.sort_by_key(|f| f.at);
    let limits = match root.obj("limits")? {
        None => Limits {
            max_rss_mb: 256,
            max_fds: 4096,
            max_inflight: 2000,
        },
        Some(l) => {
            let limits = Limits {
                max_rss_mb: l.count("max_rss_mb", 256, 1 << 20)?,
                max_fds: l.count("max_fds", 4096, 1 << 20)?,
                max_inflight: l.count("max_inflight", 2000, 100_000)? as usize,
            };
            l.finish()?;
            limits
        }
    };
    let scenario = Scenario {
        name,
        description: root.opt_str("description")?.unwrap_or_default(),
        seed: root.opt_u64("seed")?.unwrap_or(1),
        duration: root.opt_dur("duration")?.unwrap_or(Duration::from_secs(60)),
        services,
        flows,
        faults,
        limits,
        mtls: match root.get("mtls") {
            None => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(v) => bail!("mtls: expected true or false, got {v}"),
        },
    };
    if !scenario.mtls {
        if let Some(i) = scenario
            .faults
            .iter()
            .position(|f| matches!(f.kind, FaultKind::CertRotation))
        {
            bail!("faults[{i}]: cert-rotation needs `mtls: true`");
        }
    }
    root.finish()?;
    Ok(scenario)
}

fn check_acyclic(services: &[Service]) -> Result<()> {
    fn visit(s: &str, services: &[Service], stack: &mut Vec<String>) -> Result<()> {
        if stack.iter().any(|x| x == s) {
            stack.push(s.to_string());
            bail!("services: the calls form a cycle: {}", stack.join(" → "));
        }
        stack.push(s.to_string());
        if let Some(svc) = services.iter().find(|x| x.name == s) {
            for c in &svc.calls {
                visit(&c.service, services, stack)?;
            }
        }
        stack.pop();
        Ok(())
    }
    for s in services {
        visit(&s.name, services, &mut Vec::new())?;
    }
    Ok(())
}

fn valid_name(n: &Node, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 40
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!(
            "{}: \"{name}\" must be 1 to 40 lowercase letters, digits and '-'",
            n.child_path("name")
        );
    }
    Ok(())
}

fn read_service(n: &Node) -> Result<Service> {
    let name = n.str("name")?;
    valid_name(n, &name)?;
    let protocol = match n.opt_str("protocol")?.as_deref() {
        None | Some("http1") => Protocol::Http1,
        Some("http2") => Protocol::Http2,
        Some("grpc") => Protocol::Grpc,
        Some(p) => bail!(
            "{}: \"{p}\" is not one of http1, http2, grpc",
            n.child_path("protocol")
        ),
    };
    let latency = match n.obj("latency")? {
        None => Latency {
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(5),
        },
        Some(l) => {
            let lat = Latency {
                p50: l.dur("p50")?,
                p99: l.dur("p99")?,
            };
            if lat.p99 < lat.p50 {
                bail!("{}: p99 is below p50", l.path);
            }
            l.finish()?;
            lat
        }
    };
    let mut calls = Vec::new();
    for c in n.list("calls")? {
        calls.push(Call {
            service: c.str("service")?,
            path: c.opt_str("path")?.unwrap_or_else(|| "/".into()),
            stream: c.count("stream", 0, 1000)? as u32,
        });
        c.finish()?;
    }
    let route = match n.obj("route")? {
        None => RoutePolicy {
            timeout: Duration::from_secs(5),
            retries: None,
        },
        Some(r) => {
            let retries = match r.obj("retries")? {
                None => None,
                Some(x) => {
                    let retries = Retries {
                        num: x.count("num", 1, 10)? as u32,
                        on: x
                            .opt_str("on")?
                            .unwrap_or_else(|| "5xx,reset,connect-failure".into()),
                        per_try_timeout: x.opt_dur("per_try_timeout")?,
                    };
                    x.finish()?;
                    Some(retries)
                }
            };
            let p = RoutePolicy {
                timeout: r.opt_dur("timeout")?.unwrap_or(Duration::from_secs(5)),
                retries,
            };
            r.finish()?;
            p
        }
    };
    let outlier = match n.obj("outlier_detection")? {
        None => None,
        Some(o) => {
            let out = Outlier {
                consecutive_5xx: o.count("consecutive_5xx", 5, 1000)? as u32,
                interval: o.opt_dur("interval")?.unwrap_or(Duration::from_millis(500)),
                base_ejection_time: o
                    .opt_dur("base_ejection_time")?
                    .unwrap_or(Duration::from_secs(5)),
                max_ejection_percent: o.count("max_ejection_percent", 50, 100)? as u32,
            };
            o.finish()?;
            Some(out)
        }
    };
    let s = Service {
        protocol,
        replicas: n.count("replicas", 1, 16)? as usize,
        canary_replicas: n.count("canary_replicas", 0, 16)? as usize,
        latency,
        error_rate: n.fraction("error_rate", 0.0)?,
        response_bytes: n.count("response_bytes", 64, 1 << 20)? as usize,
        calls,
        route,
        outlier,
        name,
    };
    if s.replicas == 0 {
        bail!("{}: at least 1", n.child_path("replicas"));
    }
    n.finish()?;
    Ok(s)
}

fn read_flow(n: &Node) -> Result<Flow> {
    let name = n.str("name")?;
    valid_name(n, &name)?;
    let rate = n
        .opt_f64("rate")?
        .ok_or_else(|| anyhow!("{}: required", n.child_path("rate")))?;
    if !(rate > 0.0 && rate <= 20_000.0) {
        bail!(
            "{}: {rate} requests/s is outside 0 … 20000",
            n.child_path("rate")
        );
    }
    let bursts = match n.obj("bursts")? {
        None => None,
        Some(b) => {
            let burst = Burst {
                every: b.dur("every")?,
                length: b.dur("length")?,
                factor: b.opt_f64("factor")?.unwrap_or(2.0),
            };
            if burst.length >= burst.every || !(1.0..=20.0).contains(&burst.factor) {
                bail!("{}: length must be below every, factor in 1 … 20", b.path);
            }
            b.finish()?;
            Some(burst)
        }
    };
    let budget = match n.obj("budget")? {
        None => Budget {
            max_error_rate: 0.01,
            ..Default::default()
        },
        Some(b) => {
            let budget = Budget {
                p50: b.opt_dur("p50")?,
                p99: b.opt_dur("p99")?,
                p999: b.opt_dur("p999")?,
                max_error_rate: b.fraction("max_error_rate", 0.01)?,
            };
            b.finish()?;
            budget
        }
    };
    let path = n.opt_str("path")?.unwrap_or_else(|| "/".into());
    if !path.starts_with('/') {
        bail!("{}: must start with '/'", n.child_path("path"));
    }
    let f = Flow {
        service: n.str("service")?,
        path,
        rate,
        bursts,
        request_bytes: n.count("request_bytes", 0, 1 << 20)? as usize,
        stream: n.count("stream", 0, 1000)? as u32,
        budget,
        name,
    };
    n.finish()?;
    Ok(f)
}

fn read_fault(n: &Node) -> Result<Fault> {
    let at = n.dur("at")?;
    let kind = n.str("kind")?;
    let svc = || n.str("service");
    let replica = || n.count("replica", 0, 15).map(|r| r as usize);
    let kind = match kind.as_str() {
        "replica-errors" => FaultKind::ReplicaErrors {
            service: svc()?,
            replica: replica()?,
            rate: n.fraction("rate", 1.0)?,
            length: n.dur("for")?,
        },
        "replica-slow" => FaultKind::ReplicaSlow {
            service: svc()?,
            replica: replica()?,
            delay: n.dur("delay")?,
            length: n.dur("for")?,
        },
        "pod-crash" => FaultKind::PodCrash {
            service: svc()?,
            replica: replica()?,
            restart_after: n
                .opt_dur("restart_after")?
                .unwrap_or(Duration::from_secs(2)),
        },
        "endpoint-churn" => {
            let (min, max) = (
                n.count("min", 1, 16)? as usize,
                n.count("max", 4, 16)? as usize,
            );
            if min == 0 || min > max {
                bail!("{}: need 1 ≤ min ≤ max", n.path);
            }
            FaultKind::EndpointChurn {
                service: svc()?,
                every: n.opt_dur("every")?.unwrap_or(Duration::from_secs(3)),
                length: n.dur("for")?,
                min,
                max,
            }
        }
        "canary-shift" => {
            let mut weights = Vec::new();
            for w in n.list("weights")? {
                match w.v.as_u64() {
                    Some(x) if x <= 100 => weights.push(x as u32),
                    _ => bail!("{}: a percentage 0 … 100", w.path),
                }
            }
            if weights.is_empty() {
                bail!("{}: at least one weight", n.child_path("weights"));
            }
            FaultKind::CanaryShift {
                service: svc()?,
                weights,
                every: n.opt_dur("every")?.unwrap_or(Duration::from_secs(5)),
            }
        }
        "control-plane-restart" => FaultKind::ControlPlaneRestart,
        "control-plane-outage" => FaultKind::ControlPlaneOutage {
            length: n.dur("for")?,
        },
        "agent-handover" => FaultKind::AgentHandover,
        "cert-rotation" => FaultKind::CertRotation,
        "agent-kill" => FaultKind::AgentKill {
            restart_after: n
                .opt_dur("restart_after")?
                .unwrap_or(Duration::from_secs(1)),
        },
        other => bail!(
            "{}: unknown fault \"{other}\" (replica-errors, replica-slow, pod-crash, \
             endpoint-churn, canary-shift, control-plane-restart, control-plane-outage, \
             agent-handover, agent-kill, cert-rotation)",
            n.child_path("kind")
        ),
    };
    n.finish()?;
    Ok(Fault { at, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
name: t
services:
  - {name: a, calls: [{service: b}]}
  - {name: b, protocol: grpc, replicas: 2}
flows:
  - {name: f, service: a, rate: 10}
";

    #[test]
    fn reads_a_minimal_scenario_with_defaults() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.services.len(), 2);
        assert_eq!(s.services[1].protocol, Protocol::Grpc);
        assert_eq!(s.duration, Duration::from_secs(60));
        assert_eq!(s.flows[0].budget.max_error_rate, 0.01);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                MINIMAL.replace("rate: 10", "rate: 10, colour: red"),
                "flows[0].colour: unknown field",
            ),
            (
                MINIMAL.replace("service: b}", "service: c}"),
                "services[0].calls[0].service: no service \"c\"",
            ),
            (
                format!(
                    "{MINIMAL}faults:\n  - {{at: 1s, kind: pod-crash, service: b, replica: 2}}\n"
                ),
                "faults[0].replica: service \"b\" has 2 replicas",
            ),
            (
                format!("{MINIMAL}faults:\n  - {{at: soon, kind: agent-kill}}\n"),
                "faults[0].at: \"soon\" is not a number followed by a unit",
            ),
            (
                MINIMAL.replace("replicas: 2}", "replicas: 2, calls: [{service: a}]}"),
                "the calls form a cycle",
            ),
            (
                format!("{MINIMAL}faults:\n  - {{at: 1s, kind: meteor}}\n"),
                "faults[0].kind: unknown fault \"meteor\"",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5").is_err());
    }

    #[test]
    fn latency_samples_follow_the_percentiles() {
        let l = Latency {
            p50: Duration::from_millis(2),
            p99: Duration::from_millis(20),
        };
        assert_eq!(l.sample(0.0), Duration::from_millis(2));
        let at99 = l.sample(2.326).as_secs_f64();
        assert!((at99 - 0.020).abs() < 0.0005, "{at99}");
        assert!(l.sample(100.0) <= Duration::from_millis(200));
    }

    #[test]
    fn the_bundled_scenarios_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            parse(&text).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
            n += 1;
        }
        assert!(n >= 2, "expected the bundled scenarios");
    }
}
