//! Access logs, written off the request path: a request formats its line when it ends and
//! hands it to a bounded queue (never waiting: a full queue drops the line and counts it);
//! one writer thread per file drains the queue, writes in batches and flushes at least once
//! a second. SIGUSR1 makes every writer reopen its file (log rotation). A writer lives as long
//! as some connection manager logs to its file: a removed configuration ends its thread.

use crate::config::http::access_log::{
    AccessLog, JsonField, LogFilter, LogFormat, LogOp, LogSink, LogToken,
};
use crate::stats::{Counter, Store};
use http::header::HeaderName;
use http::HeaderMap;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

/// Lines queued per file before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// How often a file's writer takes the queued lines, writes and flushes them.
const BATCH_PERIOD: Duration = Duration::from_millis(20);

/// Bumped by SIGUSR1: writers reopen their files.
static REOPEN: AtomicU64 = AtomicU64::new(0);

/// The writer threads, so `flush_all` can wait for those whose configuration went (they write
/// what is left, then end).
#[allow(clippy::type_complexity)]
static THREADS: Mutex<Vec<(Weak<Writer>, std::thread::JoinHandle<()>)>> = Mutex::new(Vec::new());

/// Flush markers the writers have acted on (`flush_all`).
static FLUSHED: (Mutex<u64>, std::sync::Condvar) = (Mutex::new(0), std::sync::Condvar::new());

/// Writes and flushes every line queued so far, waiting up to `timeout`: called as the
/// process exits, so the lines of the last requests it served (an agent that drained after a
/// hand-over) are not lost with it. An empty line is the marker: real lines end with `\n`.
pub fn flush_all(timeout: Duration) {
    let writers: Vec<Arc<Writer>> = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    let (lock, cv) = &FLUSHED;
    let start = *lock.lock().unwrap_or_else(|p| p.into_inner());
    let deadline = std::time::Instant::now() + timeout;
    let mut sent = 0;
    for w in &writers {
        loop {
            match w.tx.try_send(String::new()) {
                Ok(()) => {
                    sent += 1;
                    break;
                }
                Err(TrySendError::Full(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(BATCH_PERIOD)
                }
                Err(_) => break,
            }
        }
    }
    drop(writers);
    let mut done = lock.lock().unwrap_or_else(|p| p.into_inner());
    while *done < start + sent {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            tracing::warn!("access logs: not every queued line was written before exit");
            return;
        }
        done = cv
            .wait_timeout(done, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    drop(done);
    // Writers no configuration uses any more end after their last batch: wait for those.
    let threads = THREADS.lock().unwrap_or_else(|p| p.into_inner());
    for (_, t) in threads.iter().filter(|(w, _)| w.strong_count() == 0) {
        while !t.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Reopens every access log file (after a rotation moved them away).
pub fn reopen_all() {
    REOPEN.fetch_add(1, Ordering::Relaxed);
}

/// Plumb's `access_log.*` stats.
#[derive(Debug)]
struct LogStats {
    written: Arc<Counter>,
    dropped: Arc<Counter>,
    write_failed: Arc<Counter>,
    reopen_failed: Arc<Counter>,
}

/// One file's queue; its thread ends when the last `Writer` goes.
#[derive(Debug)]
struct Writer {
    tx: SyncSender<String>,
    stats: Arc<LogStats>,
}

fn registry() -> &'static Mutex<HashMap<LogSink, Weak<Writer>>> {
    static R: OnceLock<Mutex<HashMap<LogSink, Weak<Writer>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

fn open(sink: &LogSink) -> std::io::Result<Box<dyn std::io::Write + Send>> {
    Ok(match sink {
        LogSink::Stdout => Box::new(std::io::stdout()),
        LogSink::Stderr => Box::new(std::io::stderr()),
        LogSink::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
    })
}

fn writer_for(sink: &LogSink, store: &Store) -> Arc<Writer> {
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|_, w| w.strong_count() > 0);
    if let Some(w) = reg.get(sink).and_then(Weak::upgrade) {
        return w;
    }
    let s = store.root_scope("access_log");
    let stats = Arc::new(LogStats {
        written: s.counter("written"),
        dropped: s.counter("dropped"),
        write_failed: s.counter("write_failed"),
        reopen_failed: s.counter("reopen_failed"),
    });
    let (tx, rx) = sync_channel(QUEUE);
    let w = Arc::new(Writer {
        tx,
        stats: stats.clone(),
    });
    let sink2 = sink.clone();
    match std::thread::Builder::new()
        .name("plumb-access-log".into())
        .spawn(move || write_loop(sink2, rx, stats))
    {
        Ok(t) => {
            let mut threads = THREADS.lock().unwrap_or_else(|p| p.into_inner());
            threads.retain(|(_, t)| !t.is_finished());
            threads.push((Arc::downgrade(&w), t));
        }
        Err(e) => tracing::error!(error = %e, "cannot start the access log writer"),
    }
    reg.insert(sink.clone(), Arc::downgrade(&w));
    w
}

fn write_loop(sink: LogSink, rx: Receiver<String>, stats: Arc<LogStats>) {
    let mut out = match open(&sink) {
        Ok(o) => Some(std::io::BufWriter::with_capacity(64 * 1024, o)),
        Err(e) => {
            tracing::error!(?sink, error = %e, "cannot open the access log");
            stats.reopen_failed.inc();
            None
        }
    };
    let mut generation = REOPEN.load(Ordering::Relaxed);
    let mut open_senders = true;
    while open_senders {
        // Sleep, then take what is queued: a request never finds the writer waiting, so its
        // line costs it no wake-up (a futex call and a context switch on a busy machine).
        // The queue holds far more than a batch period's lines.
        std::thread::sleep(BATCH_PERIOD);
        let write =
            |line: String, out: &mut Option<std::io::BufWriter<Box<dyn std::io::Write + Send>>>| {
                match out.as_mut().map(|o| o.write_all(line.as_bytes())) {
                    Some(Ok(())) => stats.written.inc(),
                    _ => stats.write_failed.inc(),
                }
            };
        let mut wrote = false;
        let mut markers = 0;
        for _ in 0..QUEUE {
            match rx.try_recv() {
                Ok(l) if l.is_empty() => markers += 1,
                Ok(l) => {
                    write(l, &mut out);
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open_senders = false;
                    break;
                }
            }
        }
        if wrote {
            if let Some(o) = out.as_mut() {
                if o.flush().is_err() {
                    stats.write_failed.inc();
                }
            }
        }
        if markers > 0 {
            let (lock, cv) = &FLUSHED;
            *lock.lock().unwrap_or_else(|p| p.into_inner()) += markers;
            cv.notify_all();
        }
        let now = REOPEN.load(Ordering::Relaxed);
        if now != generation {
            generation = now;
            match open(&sink) {
                Ok(o) => out = Some(std::io::BufWriter::with_capacity(64 * 1024, o)),
                Err(e) => {
                    tracing::error!(?sink, error = %e, "cannot reopen the access log");
                    stats.reopen_failed.inc();
                }
            }
        }
    }
    if let Some(mut o) = out {
        let _ = o.flush();
    }
}

/// What a log line may say about one request.
pub struct Entry<'a> {
    pub start: SystemTime,
    pub duration: Duration,
    pub response_duration: Option<Duration>,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub protocol: &'a str,
    pub request_headers: &'a HeaderMap,
    pub status: u16,
    pub response_headers: Option<&'a HeaderMap>,
    pub flags: &'a [&'static str],
    pub details: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<&'a str>,
    pub failure_reason: Option<&'a str>,
    pub attempts: u32,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub route_name: &'a str,
    pub connection_id: u64,
    /// What the TLS handshake established, when the connection's chain terminated TLS.
    pub tls: Option<&'a crate::tls::TlsInfo>,
    /// The SNI, when a TLS inspector or handshake read one.
    pub server_name: Option<&'a str>,
}

/// A configured access log.
#[derive(Debug)]
pub struct AccessLogger {
    format: LogFormat,
    filter: Option<LogFilter>,
    writer: Arc<Writer>,
}

impl AccessLogger {
    pub fn new(cfg: &AccessLog, store: &Store) -> Self {
        Self {
            format: cfg.format.clone(),
            filter: cfg.filter.clone(),
            writer: writer_for(&cfg.sink, store),
        }
    }

    /// Formats and queues the line of `e`, if the filter takes it. Never blocks.
    pub fn log(&self, e: &Entry) {
        if let Some(f) = &self.filter {
            if !passes(f, e) {
                return;
            }
        }
        let mut line = String::with_capacity(256);
        match &self.format {
            LogFormat::Text(tokens) => render(tokens, e, &mut line),
            LogFormat::Json(fields) => {
                line.push_str(&json_object(fields, e).to_string());
                line.push('\n');
            }
        }
        match self.writer.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.writer.stats.dropped.inc()
            }
        }
    }
}

/// A file of JSON event lines (outlier detection's `outlier_log_path`, a health check's
/// `event_log_path`), written by the same writer threads as access logs, with the same
/// bounded queue: an event never waits for the disk.
#[derive(Debug, Clone)]
pub struct EventLog(Arc<Writer>);

impl EventLog {
    pub fn open(path: &std::path::Path, store: &Store) -> Self {
        Self(writer_for(&LogSink::File(path.to_path_buf()), store))
    }

    /// Queues one event (a line of JSON).
    pub fn write(&self, event: &serde_json::Value) {
        let mut line = event.to_string();
        line.push('\n');
        if self.0.tx.try_send(line).is_err() {
            self.0.stats.dropped.inc();
        }
    }
}

/// The request and response header names the loggers' formats read (`%REQ(..)%`,
/// `%RESP(..)%`, pseudo-headers aside): a request keeps a copy of only these for its line.
pub fn referenced_headers(loggers: &[AccessLogger]) -> (Vec<HeaderName>, Vec<HeaderName>) {
    fn walk(tokens: &[LogToken], req: &mut Vec<HeaderName>, resp: &mut Vec<HeaderName>) {
        for t in tokens {
            let (names, list) = match t {
                LogToken::Op(LogOp::RequestHeader(m, a, _)) => ([Some(m), a.as_ref()], &mut *req),
                LogToken::Op(LogOp::ResponseHeader(m, a, _)) => ([Some(m), a.as_ref()], &mut *resp),
                _ => continue,
            };
            for n in names.into_iter().flatten() {
                if let Ok(h) = HeaderName::from_bytes(n.as_bytes()) {
                    if !list.contains(&h) {
                        list.push(h);
                    }
                }
            }
        }
    }
    fn json(fields: &[(String, JsonField)], req: &mut Vec<HeaderName>, resp: &mut Vec<HeaderName>) {
        for (_, f) in fields {
            match f {
                JsonField::Format(t) => walk(t, req, resp),
                JsonField::Object(inner) => json(inner, req, resp),
            }
        }
    }
    let (mut req, mut resp) = (Vec::new(), Vec::new());
    for l in loggers {
        match &l.format {
            LogFormat::Text(t) => walk(t, &mut req, &mut resp),
            LogFormat::Json(f) => json(f, &mut req, &mut resp),
        }
    }
    (req, resp)
}

/// The headers of `h` named in `names` (all their values). Copied, not shared: a value
/// parsed from a connection's read buffer shares that buffer, and these copies live as long
/// as the stream (a long response would otherwise keep the whole buffer for a few bytes).
pub fn select_headers(h: &HeaderMap, names: &[HeaderName]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for n in names {
        for v in h.get_all(n) {
            let mut copy =
                http::HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone());
            copy.set_sensitive(v.is_sensitive());
            out.append(n.clone(), copy);
        }
    }
    out
}

fn passes(f: &LogFilter, e: &Entry) -> bool {
    match f {
        LogFilter::StatusCode(op, v) => op.holds(e.status as u64, *v),
        LogFilter::Duration(op, v) => op.holds(e.duration.as_millis() as u64, *v),
        LogFilter::ResponseFlags(want) => {
            if want.is_empty() {
                !e.flags.is_empty()
            } else {
                e.flags.iter().any(|f| want.iter().any(|w| w == f))
            }
        }
        LogFilter::NotHealthCheck => true,
        LogFilter::And(fs) => fs.iter().all(|f| passes(f, e)),
        LogFilter::Or(fs) => fs.iter().any(|f| passes(f, e)),
    }
}

fn header<'h>(h: Option<&'h HeaderMap>, e: &'h Entry, name: &str) -> Option<&'h str> {
    match name {
        // Empty for a TCP connection's line: printed as "-".
        ":method" => Some(e.method).filter(|v| !v.is_empty()),
        ":path" => Some(e.path).filter(|v| !v.is_empty()),
        ":authority" => Some(e.authority).filter(|v| !v.is_empty()),
        ":scheme" => (!e.method.is_empty()).then_some("http"),
        _ => h?.get(name)?.to_str().ok(),
    }
}

fn header_op(
    h: Option<&HeaderMap>,
    e: &Entry,
    main: &str,
    alt: &Option<String>,
    max: &Option<usize>,
    out: &mut String,
) {
    let v = header(h, e, main).or_else(|| alt.as_deref().and_then(|a| header(h, e, a)));
    match v {
        Some(v) => {
            let v = match max {
                Some(n) => &v[..v.len().min(*n)],
                None => v,
            };
            out.push_str(v);
        }
        None => out.push('-'),
    }
}

fn op(o: &LogOp, e: &Entry, out: &mut String) {
    let dash = |out: &mut String| out.push('-');
    match o {
        LogOp::StartTime => out.push_str(&crate::xds::rfc3339(e.start)),
        LogOp::RequestHeader(m, a, n) => header_op(Some(e.request_headers), e, m, a, n, out),
        LogOp::ResponseHeader(m, a, n) => header_op(e.response_headers, e, m, a, n, out),
        LogOp::ResponseTrailer(..) => dash(out),
        LogOp::ResponseCode => {
            let _ = write!(out, "{}", e.status);
        }
        LogOp::ResponseFlags => {
            if e.flags.is_empty() {
                dash(out)
            } else {
                out.push_str(&e.flags.join(","));
            }
        }
        LogOp::ResponseCodeDetails => {
            out.push_str(if e.details.is_empty() { "-" } else { e.details })
        }
        LogOp::BytesReceived => {
            let _ = write!(out, "{}", e.bytes_received);
        }
        LogOp::BytesSent => {
            let _ = write!(out, "{}", e.bytes_sent);
        }
        LogOp::Duration => {
            let _ = write!(out, "{}", e.duration.as_millis());
        }
        LogOp::ResponseDuration => match e.response_duration {
            Some(d) => {
                let _ = write!(out, "{}", d.as_millis());
            }
            None => dash(out),
        },
        LogOp::UpstreamHost => match e.upstream_host {
            Some(h) => {
                let _ = write!(out, "{h}");
            }
            None => dash(out),
        },
        LogOp::UpstreamCluster => out.push_str(e.upstream_cluster.unwrap_or("-")),
        LogOp::UpstreamTransportFailureReason => out.push_str(e.failure_reason.unwrap_or("-")),
        LogOp::UpstreamRequestAttemptCount => {
            let _ = write!(out, "{}", e.attempts);
        }
        LogOp::DownstreamRemoteAddress => {
            let _ = write!(out, "{}", e.peer);
        }
        LogOp::DownstreamRemoteAddressWithoutPort => {
            let _ = write!(out, "{}", e.peer.ip());
        }
        LogOp::DownstreamLocalAddress => {
            let _ = write!(out, "{}", e.local);
        }
        LogOp::DownstreamLocalAddressWithoutPort => {
            let _ = write!(out, "{}", e.local.ip());
        }
        LogOp::DownstreamLocalPort => {
            let _ = write!(out, "{}", e.local.port());
        }
        LogOp::Protocol => out.push_str(e.protocol),
        LogOp::RouteName => out.push_str(if e.route_name.is_empty() {
            "-"
        } else {
            e.route_name
        }),
        LogOp::Hostname => out.push_str(super::headers::hostname()),
        LogOp::ConnectionId => {
            let _ = write!(out, "{}", e.connection_id);
        }
        LogOp::DownstreamPeerUriSan => join_or_dash(e.tls.map(|t| &t.peer_uri_sans[..]), out),
        LogOp::DownstreamPeerDnsSan => join_or_dash(e.tls.map(|t| &t.peer_dns_sans[..]), out),
        LogOp::DownstreamTlsVersion => out.push_str(
            e.tls
                .map(|t| t.version)
                .filter(|v| !v.is_empty())
                .unwrap_or("-"),
        ),
        LogOp::DownstreamTlsCipher => out.push_str(
            e.tls
                .map(|t| t.cipher)
                .filter(|v| !v.is_empty())
                .unwrap_or("-"),
        ),
        LogOp::RequestedServerName => out.push_str(e.server_name.unwrap_or("-")),
    }
}

/// Values joined by commas (as Envoy prints several SANs), or `-` when there are none.
fn join_or_dash(v: Option<&[String]>, out: &mut String) {
    match v {
        Some(v) if !v.is_empty() => {
            for (i, s) in v.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(s);
            }
        }
        _ => out.push('-'),
    }
}

fn render(tokens: &[LogToken], e: &Entry, out: &mut String) {
    for t in tokens {
        match t {
            LogToken::Literal(s) => out.push_str(s),
            LogToken::Op(o) => op(o, e, out),
        }
    }
}

fn json_object(fields: &[(String, JsonField)], e: &Entry) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, f) in fields {
        let v = match f {
            JsonField::Object(inner) => json_object(inner, e),
            // A lone operator keeps its type, as in Envoy: numbers stay numbers.
            JsonField::Format(tokens) => {
                let mut s = String::new();
                render(tokens, e, &mut s);
                match tokens.as_slice() {
                    [LogToken::Op(
                        LogOp::ResponseCode
                        | LogOp::BytesReceived
                        | LogOp::BytesSent
                        | LogOp::Duration
                        | LogOp::ResponseDuration
                        | LogOp::UpstreamRequestAttemptCount
                        | LogOp::DownstreamLocalPort
                        | LogOp::ConnectionId,
                    )] => s
                        .parse::<u64>()
                        .map(serde_json::Value::from)
                        .unwrap_or(serde_json::Value::Null),
                    _ if s == "-" => serde_json::Value::Null,
                    _ => serde_json::Value::String(s),
                }
            }
        };
        m.insert(k.clone(), v);
    }
    serde_json::Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_all_writes_what_is_queued_before_returning() {
        let dir = std::env::temp_dir().join(format!("plumb-flush-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.log");
        let store = Store::new();
        let log = EventLog::open(&path, &store);
        for i in 0..100 {
            log.write(&serde_json::json!({"n": i}));
        }
        // The writer takes its queue every 20 ms: read at once, the file would be short.
        flush_all(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(text.lines().count(), 100, "{text}");
        // A writer whose configuration went (the process is exiting): its thread writes what
        // is left and ends; flush_all waits for it.
        for i in 0..100 {
            log.write(&serde_json::json!({"m": i}));
        }
        drop(log);
        flush_all(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(text.lines().count(), 200, "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Logged header values are copies: they live as long as the stream, and must not keep
    /// the connection's whole read buffer (which a parsed value shares) for a few bytes.
    #[test]
    fn selected_headers_are_copied_not_shared() {
        let buf = bytes::Bytes::from(vec![b'a'; 8192]);
        let mut h = HeaderMap::new();
        let mut v = http::HeaderValue::from_maybe_shared(buf.slice(10..20)).unwrap();
        v.set_sensitive(true);
        h.append("x-a", v);
        h.append("x-b", http::HeaderValue::from_static("b"));
        let names = [
            HeaderName::from_static("x-a"),
            HeaderName::from_static("x-c"),
        ];
        let got = select_headers(&h, &names);
        assert_eq!(got.len(), 1);
        let copy = &got["x-a"];
        assert_eq!(copy.as_bytes(), b"aaaaaaaaaa");
        assert!(copy.is_sensitive());
        let (at, range) = (copy.as_bytes().as_ptr(), buf.as_ptr_range());
        assert!(
            !range.contains(&at),
            "the value still shares the read buffer"
        );
    }
}
