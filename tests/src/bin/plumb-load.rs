//! plumb-load: the load generator and backends for `cargo xtask bench`.
//!
//!   plumb-load serve --echo ADDR --sink ADDR
//!   plumb-load throughput --addr ADDR --streams N --secs S
//!   plumb-load latency --addr ADDR --conns N --secs S --size BYTES
//!   plumb-load roundtrip --addr ADDR --bytes N   (to an echo server: send, half-close, compare)
//!   plumb-load connrate --addr ADDR --conns N --secs S   (new connection per 64-byte exchange)
//!   plumb-load wait-http --addr ADDR --path P --secs S    (until GET answers 200)
//!   plumb-load churn --addr ADDR --conns N --hold H --secs S [--stop-file F]
//!       (to an echo server: N loops of connect/64-byte exchange/close, plus H connections
//!        held open exchanging every 20 ms; counts every failure, until S or F exists)
//!
//! Every load run is bounded in time (and in request count); results are one JSON line on stdout.

use plumb::stats::{Histogram, StatName};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bound on requests per latency run, whatever the duration.
const MAX_REQUESTS: u64 = 50_000_000;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: Option<T>) -> T {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| die(&format!("bad value for {name}"))),
        None => default.unwrap_or_else(|| die(&format!("missing {name}"))),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("plumb-load: {msg}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        die("usage: plumb-load serve|throughput|latency ...")
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(arg(&args, "--threads", Some(1usize)))
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        match cmd.as_str() {
            "serve" => {
                // Each `--http ADDR`: a minimal HTTP/1.1 server on ADDR.
                let http: Vec<SocketAddr> = args
                    .windows(2)
                    .filter(|w| w[0] == "--http")
                    .filter_map(|w| w[1].parse().ok())
                    .collect();
                serve(arg(&args, "--echo", None), arg(&args, "--sink", None), http).await
            }
            "throughput" => {
                throughput(
                    arg(&args, "--addr", None),
                    arg(&args, "--streams", Some(1)),
                    Duration::from_secs_f64(arg(&args, "--secs", Some(5.0))),
                )
                .await
            }
            "latency" => {
                latency(
                    arg(&args, "--addr", None),
                    arg(&args, "--conns", Some(64)),
                    Duration::from_secs_f64(arg(&args, "--secs", Some(5.0))),
                    arg(&args, "--size", Some(64)),
                )
                .await
            }
            "connrate" => {
                connrate(
                    arg(&args, "--addr", None),
                    arg(&args, "--conns", Some(16)),
                    Duration::from_secs_f64(arg(&args, "--secs", Some(5.0))),
                )
                .await
            }
            "wait-http" => {
                wait_http(
                    arg(&args, "--addr", None),
                    arg(&args, "--path", Some("/ready".to_string())),
                    Duration::from_secs_f64(arg(&args, "--secs", Some(10.0))),
                )
                .await
            }
            "churn" => {
                churn(
                    arg(&args, "--addr", None),
                    arg(&args, "--conns", Some(4)),
                    arg(&args, "--hold", Some(2)),
                    Duration::from_secs_f64(arg(&args, "--secs", Some(10.0))),
                    args.iter()
                        .position(|a| a == "--stop-file")
                        .and_then(|i| args.get(i + 1))
                        .map(std::path::PathBuf::from),
                )
                .await
            }
            "roundtrip" => {
                roundtrip(
                    arg(&args, "--addr", None),
                    arg(&args, "--bytes", Some(1000)),
                )
                .await
            }
            other => die(&format!("unknown command {other}")),
        }
    });
}

/// A minimal HTTP/1.1 server: answers each request (no body expected) with 200 and a body
/// naming the port and the request's `host` and `x-via` headers; keep-alive until EOF.
async fn http_serve(l: TcpListener) {
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            loop {
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if buf.len() > 64 * 1024 {
                        return;
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                buf.drain(..end + 4);
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case(name)
                                .then(|| v.trim().to_string())
                        })
                        .unwrap_or_else(|| "-".into())
                };
                let body = format!(
                    "port={port} host={} via={}\n",
                    header("host"),
                    header("x-via")
                );
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn serve(echo: SocketAddr, sink: SocketAddr, http: Vec<SocketAddr>) {
    let echo_l = TcpListener::bind(echo).await.expect("bind echo");
    let sink_l = TcpListener::bind(sink).await.expect("bind sink");
    for addr in http {
        let l = TcpListener::bind(addr).await.expect("bind http");
        tokio::spawn(http_serve(l));
    }
    println!("ready");
    let echo_task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = echo_l.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    let sink_task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = sink_l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    let _ = tokio::join!(echo_task, sink_task);
}

async fn throughput(addr: SocketAddr, streams: usize, secs: Duration) {
    let total = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let total = total.clone();
        let stop = stop.clone();
        set.spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let chunk = vec![0x5au8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
                total.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
    }
    let started = Instant::now();
    tokio::time::sleep(secs).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let bytes = total.load(Ordering::Relaxed);
    set.abort_all();
    println!(
        "{}",
        serde_json::json!({"bytes": bytes, "secs": elapsed, "gbit_per_s": bytes as f64 * 8.0 / elapsed / 1e9})
    );
}

async fn latency(addr: SocketAddr, conns: usize, secs: Duration, size: usize) {
    let hist = Arc::new(Histogram::new(StatName {
        full: "latency".into(),
        extracted: "latency".into(),
        tags: vec![],
    }));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + secs;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let hist = hist.clone();
        let done = done.clone();
        let errors = errors.clone();
        set.spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let _ = s.set_nodelay(true);
            let req = vec![0x42u8; size];
            let mut resp = vec![0u8; size];
            while Instant::now() < deadline && done.load(Ordering::Relaxed) < MAX_REQUESTS {
                let t = Instant::now();
                if s.write_all(&req).await.is_err() || s.read_exact(&mut resp).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                hist.record(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let started = Instant::now();
    while set.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let snap = hist.cumulative();
    let q = |p: f64| snap.quantile(p).unwrap_or(f64::NAN) * 1000.0;
    let n = done.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "requests": n,
            "errors": errors.load(Ordering::Relaxed),
            "rps": n as f64 / elapsed,
            "p50_us": q(50.0), "p90_us": q(90.0), "p99_us": q(99.0), "p999_us": q(99.9),
        })
    );
}

/// One connection to an echo server: send `bytes` pattern bytes, half-close, read everything
/// back, and report whether it matched. Bounded by a 20 s deadline.
async fn roundtrip(addr: SocketAddr, bytes: usize) {
    let data: Vec<u8> = (0..bytes)
        .map(|i| (i as u64).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect();
    let run = async {
        let mut s = TcpStream::connect(addr).await?;
        let local = s.local_addr()?;
        let (mut r, mut w) = s.split();
        let write = async {
            w.write_all(&data).await?;
            w.shutdown().await
        };
        let mut got = Vec::with_capacity(bytes);
        let (wr, rr) = tokio::join!(write, r.read_to_end(&mut got));
        wr?;
        rr?;
        Ok::<_, std::io::Error>((local, got))
    };
    let out = match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok((local, got))) => serde_json::json!({
            "ok": got == data, "sent": bytes, "received": got.len(), "local": local.to_string(),
        }),
        Ok(Err(e)) => serde_json::json!({"ok": false, "error": e.to_string()}),
        Err(_) => serde_json::json!({"ok": false, "error": "timed out"}),
    };
    println!("{out}");
}

/// Closed-loop connection rate: each worker connects, exchanges 64 bytes with an echo server,
/// closes (abortively, see below), and repeats until the deadline. Reports connections/s and per-connection time.
async fn connrate(addr: SocketAddr, conns: usize, secs: Duration) {
    let hist = Arc::new(Histogram::new(StatName {
        full: "conn".into(),
        extracted: "conn".into(),
        tags: vec![],
    }));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + secs;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (hist, done, errors) = (hist.clone(), done.clone(), errors.clone());
        set.spawn(async move {
            let mut buf = [0u8; 64];
            while Instant::now() < deadline && done.load(Ordering::Relaxed) < MAX_REQUESTS {
                let t = Instant::now();
                let r = async {
                    let mut s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    s.write_all(&[0x42u8; 64]).await?;
                    s.read_exact(&mut buf).await?;
                    // Close with RST: tens of thousands of TIME_WAIT sockets would otherwise
                    // exhaust ephemeral ports (client and proxy side) within a run.
                    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
                    Ok::<_, std::io::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(5), r).await {
                    Ok(Ok(())) => {
                        hist.record(t.elapsed());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    let started = Instant::now();
    while set.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let snap = hist.cumulative();
    let q = |p: f64| snap.quantile(p).unwrap_or(f64::NAN) * 1000.0;
    let n = done.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "connections": n, "errors": errors.load(Ordering::Relaxed), "cps": n as f64 / elapsed,
            "p50_us": q(50.0), "p99_us": q(99.0),
        })
    );
}

/// Exchanges 64 bytes carrying `seq` with an echo server and checks the echo.
async fn exchange(s: &mut TcpStream, seq: u64) -> std::io::Result<()> {
    let mut msg = [0x5au8; 64];
    msg[..8].copy_from_slice(&seq.to_be_bytes());
    s.write_all(&msg).await?;
    let mut back = [0u8; 64];
    s.read_exact(&mut back).await?;
    if back != msg {
        return Err(std::io::Error::other("echo differs from what was sent"));
    }
    Ok(())
}

/// Connection churn plus long-lived connections against an echo server, counting every
/// failure (a refused connect, a reset, a wrong echo, a 5 s stall).
async fn churn(
    addr: SocketAddr,
    conns: usize,
    hold: usize,
    secs: Duration,
    stop_file: Option<std::path::PathBuf>,
) {
    let deadline = Instant::now() + secs;
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let held_exchanges = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let fail = {
        let (failures, errors) = (failures.clone(), errors.clone());
        move |what: String| {
            failures.fetch_add(1, Ordering::Relaxed);
            let mut e = errors.lock().unwrap();
            if e.len() < 20 {
                e.push(what);
            }
        }
    };
    let mut set = tokio::task::JoinSet::new();
    for h in 0..hold {
        let (stop, n, fail) = (stop.clone(), held_exchanges.clone(), fail.clone());
        set.spawn(async move {
            let r = async {
                let mut s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::timeout(Duration::from_secs(5), exchange(&mut s, seq))
                        .await
                        .map_err(|_| std::io::Error::other("held exchange stalled 5 s"))??;
                    n.fetch_add(1, Ordering::Relaxed);
                    seq += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // A clean end: half-close, the echo server closes too.
                s.shutdown().await?;
                let mut rest = Vec::new();
                tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
                    .await
                    .map_err(|_| std::io::Error::other("no FIN after half-close"))??;
                Ok::<_, std::io::Error>(())
            };
            if let Err(e) = r.await {
                fail(format!("held connection {h}: {e}"));
            }
        });
    }
    for _ in 0..conns {
        let (stop, requests, fail) = (stop.clone(), requests.clone(), fail.clone());
        set.spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) && requests.load(Ordering::Relaxed) < MAX_REQUESTS {
                let r = async {
                    let mut s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    exchange(&mut s, seq).await?;
                    // RST close: no TIME_WAIT pile-up over a long run.
                    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
                    Ok::<_, std::io::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(5), r).await {
                    Ok(Ok(())) => {
                        requests.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => fail(format!("request {seq}: {e}")),
                    Err(_) => fail(format!("request {seq}: stalled 5 s")),
                }
                seq += 1;
            }
        });
    }
    let started = Instant::now();
    while Instant::now() < deadline && !stop_file.as_ref().is_some_and(|f| f.exists()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while set.join_next().await.is_some() {}
    let n = requests.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "requests": n,
            "failures": failures.load(Ordering::Relaxed),
            "held": hold,
            "held_exchanges": held_exchanges.load(Ordering::Relaxed),
            "rps": n as f64 / started.elapsed().as_secs_f64(),
            "errors": *errors.lock().unwrap(),
        })
    );
}

/// Polls `GET path` until it answers 200 or the time is up (exit status 1).
async fn wait_http(addr: SocketAddr, path: String, secs: Duration) {
    let deadline = Instant::now() + secs;
    while Instant::now() < deadline {
        let attempt = async {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            Ok::<_, std::io::Error>(out.starts_with(b"HTTP/1.1 200"))
        };
        if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    die(&format!("{addr}{path} did not answer 200 within {secs:?}"));
}
