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
//!   plumb-load http-rate --addr ADDR --rate R --conns C --secs S [--path P]
//!       (HTTP/1.1 GETs paced at R per second in all over C keep-alive connections; the
//!        latency each request saw, for the latency a proxy adds at a fixed rate)
//!   plumb-load hold --addr ADDR --conns N --secs S
//!       (N keep-alive connections, one GET each, then held idle: prints a JSON line once
//!        they are open, then waits until S has passed)
//!   plumb-load grpc --addr ADDR --conns C --streams M --secs S
//!       (tonic unary calls to test.Echo, M in flight on each of C connections)
//!   plumb-load serve --grpc ADDR   (the tonic test.Echo server; also with --echo/--sink)
//!   plumb-load tls-handshakes --addr ADDR --conns N --secs S [--resume] [--sni NAME]
//!       (closed loop of new TLS 1.3 connections, each one HTTP/1.1 GET then closed: full
//!        handshakes/s, or resumed ones with --resume; the server certificate is not
//!        verified — this is a load generator)
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
                let grpc: Vec<SocketAddr> = args
                    .windows(2)
                    .filter(|w| w[0] == "--grpc")
                    .filter_map(|w| w[1].parse().ok())
                    .collect();
                for a in grpc {
                    let l = TcpListener::bind(a)
                        .await
                        .unwrap_or_else(|e| die(&format!("bind {a}: {e}")));
                    plumb_tests::grpc::serve_on(l).await;
                }
                if !args.iter().any(|a| a == "--echo") {
                    // gRPC only: serve until killed.
                    std::future::pending::<()>().await;
                }
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
            "http-rate" => {
                http_rate(
                    arg(&args, "--addr", None),
                    arg(&args, "--rate", Some(2000.0)),
                    arg(&args, "--conns", Some(16)),
                    Duration::from_secs_f64(arg(&args, "--secs", Some(5.0))),
                    arg(&args, "--path", Some("/".to_string())),
                )
                .await
            }
            "hold" => {
                hold(
                    arg(&args, "--addr", None),
                    arg(&args, "--conns", Some(1000)),
                    Duration::from_secs_f64(arg(&args, "--secs", Some(30.0))),
                )
                .await
            }
            "grpc" => {
                grpc(
                    arg(&args, "--addr", None),
                    arg(&args, "--conns", Some(4)),
                    arg(&args, "--streams", Some(25)),
                    Duration::from_secs_f64(arg(&args, "--secs", Some(5.0))),
                )
                .await
            }
            "tls-handshakes" => {
                tls_handshakes(
                    arg(&args, "--addr", None),
                    arg(&args, "--conns", Some(16)),
                    Duration::from_secs_f64(arg(&args, "--secs", Some(5.0))),
                    args.iter().any(|a| a == "--resume"),
                    arg(&args, "--sni", Some("bench.example".to_string())),
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

fn histogram(name: &str) -> Arc<Histogram> {
    Arc::new(Histogram::new(StatName {
        full: name.into(),
        extracted: name.into(),
        tags: vec![],
    }))
}

/// One HTTP/1.1 GET on a keep-alive connection; reads the whole response (Content-Length or
/// chunked bodies are not expected: the benchmark upstreams send Content-Length).
async fn get(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> std::io::Result<()> {
    s.write_all(req).await?;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return Err(std::io::Error::other(format!(
                    "status: {}",
                    head.lines().next().unwrap_or("")
                )));
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| std::io::Error::other("no content-length"))?;
            let want = end + 4 + len;
            while buf.len() < want {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(());
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("header section too large"));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Paced GETs: connection i sends at start + (k*conns + i)/rate; a response slower than the
/// pace delays that connection's next request (counted as `late`). Latency is measured from
/// the moment each request is written.
async fn http_rate(addr: SocketAddr, rate: f64, conns: usize, secs: Duration, path: String) {
    let hist = histogram("rate");
    let (done, errors, late) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let rate = rate.clamp(1.0, 1_000_000.0);
    let conns = conns.clamp(1, 10_000);
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let deadline = start + secs;
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..conns {
        let (hist, done, errors, late, req) = (
            hist.clone(),
            done.clone(),
            errors.clone(),
            late.clone(),
            req.clone(),
        );
        set.spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let _ = s.set_nodelay(true);
            let mut buf = Vec::with_capacity(32 * 1024);
            let mut next = start + interval.mul_f64(i as f64 / conns as f64);
            while next < deadline && done.load(Ordering::Relaxed) < MAX_REQUESTS {
                tokio::time::sleep_until(next).await;
                let t = Instant::now();
                if get(&mut s, &req, &mut buf).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                hist.record(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
                next += interval;
                if tokio::time::Instant::now() > next {
                    late.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let snap = hist.cumulative();
    let q = |p: f64| snap.quantile(p).unwrap_or(f64::NAN) * 1000.0;
    let n = done.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "requests": n,
            "errors": errors.load(Ordering::Relaxed),
            "late": late.load(Ordering::Relaxed),
            "rps": n as f64 / secs.as_secs_f64(),
            "p50_us": q(50.0), "p99_us": q(99.0), "p999_us": q(99.9),
        })
    );
}

/// Opens `conns` keep-alive connections (64 at a time), one GET on each, then holds them idle.
async fn hold(addr: SocketAddr, conns: usize, secs: Duration) {
    raise_nofile();
    let deadline = Instant::now() + secs;
    let conns = conns.min(100_000);
    let req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n".to_vec();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (sem, req) = (sem.clone(), req.clone());
        set.spawn(async move {
            let permit = sem.acquire_owned().await.ok()?;
            let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
                .await
                .ok()?
                .ok()?;
            let mut buf = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), get(&mut s, &req, &mut buf))
                .await
                .ok()?
                .ok()?;
            drop(permit);
            Some(s)
        });
    }
    let mut held = Vec::with_capacity(conns);
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Some(s)) => held.push(s),
            _ => failed += 1,
        }
    }
    println!(
        "{}",
        serde_json::json!({"open": held.len(), "failed": failed})
    );
    tokio::time::sleep_until(deadline.into()).await;
    drop(held);
}

/// Raises the soft open-files limit to the hard one (10,000 held connections need it).
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// tonic unary calls: `streams` loops on each of `conns` connections.
async fn grpc(addr: SocketAddr, conns: usize, streams: usize, secs: Duration) {
    let hist = histogram("grpc");
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + secs;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conns.clamp(1, 1000) {
        let Ok(client) = plumb_tests::grpc::Client::connect(addr).await else {
            errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        for _ in 0..streams.clamp(1, 1000) {
            let (hist, done, errors, mut c) =
                (hist.clone(), done.clone(), errors.clone(), client.clone());
            set.spawn(async move {
                while Instant::now() < deadline && done.load(Ordering::Relaxed) < MAX_REQUESTS {
                    let t = Instant::now();
                    match c.unary("ping", None).await {
                        Ok(r) if r == "echo:ping" => {
                            hist.record(t.elapsed());
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            });
        }
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
            "p50_us": q(50.0), "p99_us": q(99.0), "p999_us": q(99.9),
        })
    );
}

/// Accepts any server certificate (a load generator measures handshakes, not trust).
#[derive(Debug)]
struct AnyServer(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Closed-loop TLS connections: handshake, one GET, read the response, close. With
/// `resume`, the client keeps tickets (each worker its own cache), so after the first
/// connection the handshakes are resumed. Reports connections/s, the resumed share and the
/// per-connection time.
async fn tls_handshakes(addr: SocketAddr, conns: usize, secs: Duration, resume: bool, sni: String) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let make = || {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            cfg.resumption = rustls::client::Resumption::disabled();
        }
        Arc::new(cfg)
    };
    let hist = Arc::new(Histogram::new(StatName {
        full: "conn".into(),
        extracted: "conn".into(),
        tags: vec![],
    }));
    let (done, errors, resumed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let deadline = Instant::now() + secs;
    let name = rustls::pki_types::ServerName::try_from(sni).unwrap_or_else(|_| die("bad --sni"));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let cfg = make();
        let (hist, done, errors, resumed, name) = (
            hist.clone(),
            done.clone(),
            errors.clone(),
            resumed.clone(),
            name.clone(),
        );
        set.spawn(async move {
            let connector = tokio_rustls::TlsConnector::from(cfg);
            let mut buf = vec![0u8; 4096];
            while Instant::now() < deadline && done.load(Ordering::Relaxed) < MAX_REQUESTS {
                let t = Instant::now();
                let r = async {
                    let tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let mut s = connector.connect(name.clone(), tcp).await?;
                    s.write_all(
                        b"GET / HTTP/1.1\r\nHost: bench.example\r\nConnection: close\r\n\r\n",
                    )
                    .await?;
                    let mut got = 0;
                    loop {
                        let n = s.read(&mut buf).await?;
                        got += n;
                        if n == 0 || buf[..n].windows(4).any(|w| w == b"ok\n\n") || got > 64 {
                            break;
                        }
                    }
                    let again =
                        s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                    socket2::SockRef::from(s.get_ref().0).set_linger(Some(Duration::ZERO))?;
                    Ok::<_, std::io::Error>(again)
                };
                match tokio::time::timeout(Duration::from_secs(5), r).await {
                    Ok(Ok(again)) => {
                        hist.record(t.elapsed());
                        done.fetch_add(1, Ordering::Relaxed);
                        if again {
                            resumed.fetch_add(1, Ordering::Relaxed);
                        }
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
            "resumed": resumed.load(Ordering::Relaxed), "p50_us": q(50.0), "p99_us": q(99.0),
        })
    );
}
