//! `plumb-load churn` as a child process: connection churn plus long-lived connections
//! against an echo server, run through an upgrade and then stopped for its report.

use crate::agent::load_bin;
use crate::TempDir;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A running churn, stopped (through its stop file) by `finish`; killed on drop otherwise.
pub struct Churn {
    child: Option<Child>,
    stop: std::path::PathBuf,
}

impl Churn {
    /// Starts churning against `addr` (at most 120 s); `cmd` may place it in a pod.
    pub fn start_with(mut cmd: Command, addr: &str, dir: &TempDir) -> Self {
        let stop = dir.path.join("stop-churn");
        let child = cmd
            .args(["churn", "--addr", addr])
            .args(["--conns", "4", "--hold", "4", "--secs", "120"])
            .arg("--stop-file")
            .arg(&stop)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start plumb-load churn");
        Self {
            child: Some(child),
            stop,
        }
    }

    /// Starts churning from this process's network namespace.
    pub fn start(addr: SocketAddr, dir: &TempDir) -> Self {
        Self::start_with(Command::new(load_bin()), &addr.to_string(), dir)
    }

    /// Stops the churn and returns its report: `requests`, `failures`, `held_exchanges`,
    /// `errors`.
    pub fn finish(mut self) -> Value {
        std::fs::write(&self.stop, b"").unwrap();
        let out = self
            .child
            .take()
            .unwrap()
            .wait_with_output()
            .expect("churn output");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!("bad churn output: {}", String::from_utf8_lossy(&out.stdout))
        })
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
