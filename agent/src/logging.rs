//! Logging through `tracing`: text or JSON lines on stderr, with levels changeable at run time
//! through the admin `/logging` endpoint (all at once, or per component like Envoy's loggers).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tracing_subscriber::{
    layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Registry,
};

/// Components that can be given their own level: modules of this crate.
pub const COMPONENTS: &[&str] = &[
    "admin", "config", "copy", "drain", "filters", "listener", "logging", "server", "stats",
    "upstream",
];

/// Levels accepted by `/logging`, Envoy's names included (`warning`, `critical`).
pub fn normalize_level(level: &str) -> Option<&'static str> {
    Some(match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug)]
struct Levels {
    base: &'static str,
    components: BTreeMap<String, &'static str>,
}

/// Libraries whose warnings are about what a peer sent — rustls's "Sending fatal alert" for
/// every failed handshake, "Illegal SNI extension" for every client that names an IP address
/// — one line per bad connection, each already counted in Plumb's stats (`ssl.*`) and logged
/// by Plumb at debug. They log errors only, unless the level asks for debug or more.
const PEER_NOISE: &[&str] = &["rustls"];

impl Levels {
    fn directives(&self) -> String {
        let mut s = self.base.to_string();
        if matches!(self.base, "info" | "warn") {
            for lib in PEER_NOISE {
                s.push_str(&format!(",{lib}=error"));
            }
        }
        for (c, l) in &self.components {
            s.push_str(&format!(",plumb::{c}={l}"));
        }
        s
    }
}

/// Handle to change log levels at run time.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    levels: Arc<Mutex<Levels>>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl").finish_non_exhaustive()
    }
}

/// Installs the global subscriber. `level` is a level name.
pub fn init(level: &str, format: LogFormat) -> anyhow::Result<LogControl> {
    let base = normalize_level(level).ok_or_else(|| {
        anyhow::anyhow!("unknown log level \"{level}\" (trace, debug, info, warn, error, off)")
    })?;
    let levels = Levels {
        base,
        components: BTreeMap::new(),
    };
    let (filter, handle) = reload::Layer::new(EnvFilter::new(levels.directives()));
    let registry = tracing_subscriber::registry().with(filter);
    let writer = std::io::stderr;
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer),
            )
            .try_init()?,
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(writer),
            )
            .try_init()?,
    }
    Ok(LogControl {
        handle,
        levels: Arc::new(Mutex::new(levels)),
    })
}

impl LogControl {
    fn apply(&self, levels: &Levels) -> Result<(), String> {
        self.handle
            .reload(EnvFilter::new(levels.directives()))
            .map_err(|e| format!("cannot change log levels: {e}"))
    }

    /// Sets every component (and the default) to `level`.
    pub fn set_all(&self, level: &str) -> Result<(), String> {
        let l = normalize_level(level).ok_or_else(|| format!("unknown log level \"{level}\""))?;
        let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        levels.base = l;
        levels.components.clear();
        self.apply(&levels)
    }

    /// Sets one component's level.
    pub fn set_component(&self, component: &str, level: &str) -> Result<(), String> {
        if !COMPONENTS.contains(&component) {
            return Err(format!(
                "unknown logger \"{component}\" (loggers: {})",
                COMPONENTS.join(", ")
            ));
        }
        let l = normalize_level(level).ok_or_else(|| format!("unknown log level \"{level}\""))?;
        let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        levels.components.insert(component.to_string(), l);
        self.apply(&levels)
    }

    /// `component: level` for every component, as Envoy's `/logging` lists its loggers.
    pub fn describe(&self) -> String {
        let levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = String::from("active loggers:\n");
        for c in COMPONENTS {
            let l = levels.components.get(*c).copied().unwrap_or(levels.base);
            s.push_str(&format!("  {c}: {l}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_mistakes_reported_by_libraries_stay_out_of_the_log_unless_debugging() {
        let levels = |base| Levels {
            base,
            components: BTreeMap::from([("upstream".to_string(), "debug")]),
        };
        assert_eq!(
            levels("info").directives(),
            "info,rustls=error,plumb::upstream=debug"
        );
        assert_eq!(
            levels("warn").directives(),
            "warn,rustls=error,plumb::upstream=debug"
        );
        assert_eq!(levels("debug").directives(), "debug,plumb::upstream=debug");
        assert_eq!(levels("error").directives(), "error,plumb::upstream=debug");
        // Each is a directive tracing accepts.
        for base in ["trace", "debug", "info", "warn", "error", "off"] {
            for d in levels(base).directives().split(',') {
                d.parse::<tracing_subscriber::filter::Directive>()
                    .unwrap_or_else(|e| panic!("{d}: {e}"));
            }
        }
    }
}
