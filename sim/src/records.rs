//! What the simulation observes, from every side: each request a client sent and what came
//! back, each request a replica received and what it answered (and why), the faults with their
//! windows, and samples of the agent's memory and file descriptors. The invariants and the
//! report are computed from these.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The result of one request as its sender saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An HTTP response (gRPC: with `grpc-status` 0).
    Status(u16),
    /// A gRPC response with a non-zero `grpc-status`.
    Grpc(u32),
    /// No response: the connection failed or broke, or the client gave up.
    Transport(String),
    /// Not sent: the scenario's `max_inflight` was reached (the simulator's own limit).
    Shed,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        matches!(self, Outcome::Status(s) if (200..300).contains(s))
    }

    pub fn label(&self) -> String {
        match self {
            Outcome::Status(s) => s.to_string(),
            Outcome::Grpc(c) => format!("grpc-{c}"),
            Outcome::Transport(e) => format!("transport: {e}"),
            Outcome::Shed => "shed".into(),
        }
    }
}

/// A request sent by a flow's client (an edge request) or by a service to another one.
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: String,
    /// The flow it belongs to (for a service's call: the flow of the request that caused it).
    pub flow: String,
    /// The service called.
    pub service: String,
    /// Seconds since the start of the run.
    pub at: f64,
    pub latency: Duration,
    pub outcome: Outcome,
    pub edge: bool,
}

/// Why a replica answered as it did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    Served,
    /// The replica's own error rate, or a `replica-errors` fault.
    Injected,
    /// A call it made failed: that call's ID.
    Downstream(String),
}

/// A request as a replica received it.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub id: String,
    pub service: String,
    pub replica: String,
    pub at: f64,
    pub ok: bool,
    pub cause: Cause,
    /// The URI SAN of the client certificate on the connection (mTLS), else empty.
    pub peer: String,
    /// When the replica accepted that connection.
    pub conn_at: f64,
}

/// A fault as it happened.
#[derive(Debug, Clone)]
pub struct FaultEvent {
    pub kind: &'static str,
    pub detail: String,
    pub start: f64,
    pub end: f64,
    /// Whether traffic may fail while it lasts (an agent killed) or must not (a hand-over).
    pub may_fail_traffic: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: f64,
    pub rss_kb: u64,
    pub fds: u64,
    pub pid: i32,
}

/// Where replicas and clients put what they saw: the run's records (in process), or a pod
/// process's stdout, as JSON lines the simulator reads back (`Wire`).
pub trait Sink: Send + Sync {
    /// The time to stamp records with.
    fn now(&self) -> f64;
    fn sent(&self, s: Sent);
    fn receipt(&self, r: Receipt);
}

impl Sink for Records {
    fn now(&self) -> f64 {
        Records::now(self)
    }
    fn sent(&self, s: Sent) {
        Records::sent(self, s)
    }
    fn receipt(&self, r: Receipt) {
        Records::receipt(self, r)
    }
}

/// Seconds since the Unix epoch (pod processes stamp records with it; the simulator turns it
/// into time since the start of traffic).
pub fn wall() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A pod process's records, one JSON line each on stdout.
pub struct Wire;

impl Wire {
    fn line(v: Value) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }
}

impl Sink for Wire {
    fn now(&self) -> f64 {
        wall()
    }
    fn sent(&self, s: Sent) {
        let outcome = match &s.outcome {
            Outcome::Status(c) => json!({"status": c}),
            Outcome::Grpc(c) => json!({"grpc": c}),
            Outcome::Transport(e) => json!({"transport": e}),
            Outcome::Shed => json!("shed"),
        };
        Self::line(
            json!({"k": "sent", "id": s.id, "flow": s.flow, "service": s.service,
            "at": s.at, "latency_us": s.latency.as_micros() as u64, "outcome": outcome, "edge": s.edge}),
        );
    }
    fn receipt(&self, r: Receipt) {
        let cause = match &r.cause {
            Cause::Served => json!("served"),
            Cause::Injected => json!("injected"),
            Cause::Downstream(id) => json!({"downstream": id}),
        };
        Self::line(
            json!({"k": "receipt", "id": r.id, "service": r.service, "replica": r.replica,
            "at": r.at, "ok": r.ok, "cause": cause, "peer": r.peer, "conn_at": r.conn_at}),
        );
    }
}

impl Records {
    /// Takes one line a pod process wrote (`Wire`); false if it is not a record.
    pub fn take_line(&self, line: &str) -> bool {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return false;
        };
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let at = v["at"].as_f64().unwrap_or(0.0) - self.wall_origin();
        match v["k"].as_str() {
            Some("sent") => {
                let o = &v["outcome"];
                let outcome = if let Some(c) = o["status"].as_u64() {
                    Outcome::Status(c as u16)
                } else if let Some(c) = o["grpc"].as_u64() {
                    Outcome::Grpc(c as u32)
                } else if let Some(e) = o["transport"].as_str() {
                    Outcome::Transport(e.to_string())
                } else {
                    Outcome::Shed
                };
                self.sent(Sent {
                    id: s("id"),
                    flow: s("flow"),
                    service: s("service"),
                    at,
                    latency: Duration::from_micros(v["latency_us"].as_u64().unwrap_or(0)),
                    outcome,
                    edge: v["edge"].as_bool().unwrap_or(false),
                });
                true
            }
            Some("receipt") => {
                let cause = match &v["cause"] {
                    Value::String(c) if c == "served" => Cause::Served,
                    Value::String(_) => Cause::Injected,
                    other => Cause::Downstream(other["downstream"].as_str().unwrap_or("").into()),
                };
                self.receipt(Receipt {
                    id: s("id"),
                    service: s("service"),
                    replica: s("replica"),
                    at,
                    ok: v["ok"].as_bool().unwrap_or(false),
                    cause,
                    peer: s("peer"),
                    conn_at: v["conn_at"].as_f64().unwrap_or(0.0) - self.wall_origin(),
                });
                true
            }
            _ => false,
        }
    }

    /// The wall-clock time (`wall()`) of the start of traffic.
    pub fn wall_origin(&self) -> f64 {
        f64::from_bits(self.wall_origin.load(Ordering::Relaxed))
    }
}

pub struct Records {
    base: Instant,
    /// `wall()` at the start of traffic (f64 bits).
    wall_origin: AtomicU64,
    /// Nanoseconds from `base` to the start of traffic (`start_clock`).
    offset_ns: AtomicU64,
    pub sent: Mutex<Vec<Sent>>,
    pub receipts: Mutex<Vec<Receipt>>,
    pub faults: Mutex<Vec<FaultEvent>>,
    pub samples: Mutex<Vec<Sample>>,
    /// Plain-text notes for the report (agent generations, control plane restarts).
    pub notes: Mutex<Vec<(f64, String)>>,
    /// Checks made while the run goes (an ejection seen during a fault), for the invariants.
    pub observations: Mutex<Vec<Observation>>,
    /// Certificate rotations: when, and the agent's new identity.
    pub rotations: Mutex<Vec<(f64, String)>>,
    /// Canary steps: (service, percentage, from, to).
    pub canary_steps: Mutex<Vec<(String, u32, f64, f64)>>,
}

/// A check made during the run, by the fault that set it up.
#[derive(Debug, Clone)]
pub struct Observation {
    pub invariant: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Records {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            offset_ns: AtomicU64::new(0),
            wall_origin: AtomicU64::new(wall().to_bits()),
            sent: Default::default(),
            receipts: Default::default(),
            faults: Default::default(),
            samples: Default::default(),
            notes: Default::default(),
            observations: Default::default(),
            rotations: Default::default(),
            canary_steps: Default::default(),
        }
    }

    /// Seconds since the start of traffic (negative before it).
    pub fn now(&self) -> f64 {
        let off = Duration::from_nanos(self.offset_ns.load(Ordering::Relaxed));
        self.base.elapsed().as_secs_f64() - off.as_secs_f64()
    }

    /// Makes now the time origin of every record; returns it.
    pub fn start_clock(&self) -> Instant {
        let now = Instant::now();
        self.wall_origin.store(wall().to_bits(), Ordering::Relaxed);
        self.offset_ns
            .store((now - self.base).as_nanos() as u64, Ordering::Relaxed);
        now
    }

    pub fn sent(&self, s: Sent) {
        self.sent.lock().unwrap().push(s);
    }

    pub fn receipt(&self, r: Receipt) {
        self.receipts.lock().unwrap().push(r);
    }

    pub fn note(&self, text: impl Into<String>) {
        let at = self.now();
        self.notes.lock().unwrap().push((at, text.into()));
    }

    pub fn observe(&self, invariant: &'static str, ok: bool, detail: String) {
        self.observations.lock().unwrap().push(Observation {
            invariant,
            ok,
            detail,
        });
    }

    /// Starts a fault's window; returns its index for `end_fault`.
    pub fn start_fault(&self, kind: &'static str, detail: String, may_fail_traffic: bool) -> usize {
        let at = self.now();
        let mut f = self.faults.lock().unwrap();
        f.push(FaultEvent {
            kind,
            detail,
            start: at,
            end: f64::INFINITY,
            may_fail_traffic,
        });
        f.len() - 1
    }

    pub fn end_fault(&self, i: usize) {
        let at = self.now();
        if let Some(f) = self.faults.lock().unwrap().get_mut(i) {
            f.end = at;
        }
    }
}

impl Default for Records {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultEvent {
    pub fn json(&self) -> Value {
        json!({"kind": self.kind, "detail": self.detail, "start_s": round3(self.start),
               "end_s": if self.end.is_finite() { json!(round3(self.end)) } else { Value::Null }})
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
