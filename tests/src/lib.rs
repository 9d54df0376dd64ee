//! Test harness for Plumb: real fake upstreams, real clients, the agent in-process or as a
//! subprocess, and waiting on conditions with deadlines (never sleeping to synchronise).

pub mod agent;
pub mod capture;
pub mod churn;
pub mod client;
pub mod grpc;
pub mod http_client;
pub mod http_upstream;
pub mod pods;
pub mod servers;
pub mod tls;
pub mod xds;

use std::future::Future;
use std::time::{Duration, Instant};

/// True when skips for missing tools or privileges must fail instead (CI sets it).
pub fn strict() -> bool {
    std::env::var("PLUMB_TEST_STRICT").is_ok_and(|v| v == "1" || v == "true")
}

/// Skips the current test with a printed reason, or fails it under `PLUMB_TEST_STRICT`.
/// Returns normally only when the test should be skipped.
pub fn skip(reason: &str) {
    if strict() {
        panic!("required by PLUMB_TEST_STRICT but unavailable: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Polls `cond` until it returns true or `timeout` passes; panics naming `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Same as `wait_until`, for synchronous conditions in non-async code.
pub fn wait_until_blocking(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Deterministic test payload: byte i is a function of i (catches reordering and loss).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect()
}

/// FNV-1a, to compare large transfers by digest.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A scratch directory removed on drop.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "plumb-test-{}-{}-{}",
            tag,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    pub fn write(&self, name: &str, contents: &str) -> std::path::PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
