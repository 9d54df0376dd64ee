//! The `plumb` command: run the agent, check a configuration, print the version.

use clap::{Parser, Subcommand};
use plumb::config::{self, Snapshot};
use plumb::logging::{self, LogFormat};
use plumb::server::{self, AfterTakeover, Options, WorkerModel};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "plumb", about = "Per-node proxy agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `plumb run` options.
#[derive(clap::Args)]
struct RunArgs {
    /// Envoy v3 bootstrap (YAML or JSON). Without it, the bundled default is used.
    #[arg(long, short = 'c', visible_alias = "config-path")]
    config: Option<PathBuf>,
    /// Data-path worker threads (default: available CPUs).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: Option<u16>,
    /// How connections are spread over the workers: per-core (each worker accepts and runs
    /// its own connections, Envoy's model), shared (one work-stealing pool), or auto
    /// (per-core with one worker, shared with more: what measured best).
    #[arg(long, value_enum, default_value_t = WorkerModel::default())]
    worker_model: WorkerModel,
    /// Seconds established connections may continue after SIGTERM before being closed.
    #[arg(long, default_value_t = 30)]
    drain_time_s: u64,
    /// Initial log level: trace, debug, info, warn, error, off.
    #[arg(long, short = 'l', default_value = "info")]
    log_level: String,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Write the bound admin address (ip:port) to this file once listening.
    #[arg(long)]
    admin_address_path: Option<PathBuf>,
    /// Keep the last good xDS configuration in this file and start from it, so a restart
    /// while the control plane is down still serves.
    #[arg(long)]
    xds_cache: Option<PathBuf>,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Refuse a bootstrap file larger than this many bytes (also on reload).
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONFIG_BYTES, value_name = "BYTES")]
    max_config_bytes: u64,
    /// Unix socket through which this agent hands its listening sockets and eBPF links to
    /// a successor started with --takeover (e.g. /run/plumb/upgrade.sock).
    #[arg(long)]
    upgrade_socket: Option<PathBuf>,
    /// Take over from the agent serving --upgrade-socket: inherit its sockets and eBPF
    /// links, then let it drain. Starts fresh when no agent serves the socket.
    #[arg(long, requires = "upgrade_socket")]
    takeover: bool,
    /// After a successor took over and connections drained: exit, or wait for SIGTERM
    /// (under supervisors that restart exited processes, such as a Kubernetes pod).
    #[arg(long, value_enum, default_value_t = AfterTakeover::Exit)]
    after_takeover: AfterTakeover,
}

/// Per-node values applied to the bootstrap before it is validated (docs/configuration.md).
#[derive(clap::Args)]
struct OverrideArgs {
    /// Override node.id (Envoy's --service-node), e.g. from the Kubernetes downward API.
    #[arg(long)]
    service_node: Option<String>,
    /// Override node.cluster (Envoy's --service-cluster).
    #[arg(long)]
    service_cluster: Option<String>,
    /// Override node.locality.zone (Envoy's --service-zone). Empty: keep the bootstrap's.
    #[arg(long)]
    service_zone: Option<String>,
    /// Add a node.metadata entry sent to the control plane (repeatable), e.g.
    /// HOST_IP=$(HOST_IP) from the Kubernetes downward API.
    #[arg(long, value_name = "KEY=VALUE", value_parser = config::parse_metadata_entry)]
    node_metadata: Vec<(String, String)>,
    /// Set the address captured connects are rewritten to (the plumb.redirect extension's
    /// proxy_address, or proxy_address_v6 for an IPv6 address; repeatable), e.g. the
    /// node's IP from the downward API when one bootstrap serves every node.
    #[arg(long, value_name = "IP")]
    redirect_proxy_address: Vec<std::net::IpAddr>,
}

impl OverrideArgs {
    fn into_overrides(self) -> config::Overrides {
        config::Overrides {
            node_id: self.service_node,
            node_cluster: self.service_cluster,
            node_zone: self.service_zone,
            node_metadata: self.node_metadata,
            redirect_proxy_addresses: self.redirect_proxy_address,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run(Box<RunArgs>),
    /// Validate a bootstrap file: print a summary, or every error with its field path.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
        /// The same per-node overrides `run` takes, so a shared bootstrap checks as it runs.
        #[command(flatten)]
        overrides: OverrideArgs,
        /// Refuse a file larger than this many bytes.
        #[arg(long, default_value_t = config::DEFAULT_MAX_CONFIG_BYTES, value_name = "BYTES")]
        max_config_bytes: u64,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // A command that prints (check-config, version) behaves like any CLI tool when its
        // reader goes away (`| head -1`): it stops quietly instead of panicking on EPIPE. The
        // agent itself (`run`) keeps SIGPIPE ignored: a peer closing a socket is no signal.
        // SAFETY: restoring the default disposition before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::Version => {
            println!("plumb {}", plumb::VERSION);
            ExitCode::SUCCESS
        }
        Command::CheckConfig {
            file,
            overrides,
            max_config_bytes,
        } => check_config(&file, &overrides.into_overrides(), max_config_bytes),
        Command::Run(args) => {
            let RunArgs {
                config,
                concurrency,
                worker_model,
                drain_time_s,
                log_level,
                log_format,
                admin_address_path,
                xds_cache,
                overrides,
                max_config_bytes,
                upgrade_socket,
                takeover,
                after_takeover,
            } = *args;
            let log = match logging::init(&log_level, log_format) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let overrides = overrides.into_overrides();
            let (snapshot, source) = match load(config.as_deref(), &overrides, max_config_bytes) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            for w in &snapshot.warnings {
                tracing::warn!(field = %w.path, "{}", w.message);
            }
            let mut options = Options {
                drain_time: Duration::from_secs(drain_time_s),
                handle_signals: true,
                admin_address_path,
                config_source: source,
                config_path: config.clone(),
                xds_cache,
                command_line: std::env::args().collect(),
                upgrade_socket,
                takeover,
                after_takeover,
                overrides,
                max_config_bytes,
                worker_model,
                ..Options::default()
            };
            if let Some(c) = concurrency {
                options.concurrency = c as usize;
            }
            raise_open_files_limit();
            let result = server::start(snapshot, options, Some(log)).and_then(|h| h.wait());
            // The lines of the last requests served are written before the process goes.
            plumb::http::access_log::flush_all(Duration::from_secs(2));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Once: through the log when it shows errors (it writes to stderr too),
                    // else plainly.
                    if tracing::enabled!(tracing::Level::ERROR) {
                        tracing::error!("{e:#}");
                    } else {
                        eprintln!("error: {e:#}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn load(
    path: Option<&Path>,
    overrides: &config::Overrides,
    max_bytes: u64,
) -> Result<(Snapshot, String), String> {
    match path {
        Some(p) => config::parse_bootstrap_file_limited(p, overrides, max_bytes)
            .map(|s| (s, p.display().to_string()))
            .map_err(|e| format_config_error(&e)),
        None => {
            tracing::info!("no --config given: using the bundled default configuration");
            config::parse_bootstrap_with(config::DEFAULT_BOOTSTRAP, "<bundled default>", overrides)
                .map(|s| (s, "<bundled default>".to_string()))
                .map_err(|e| format_config_error(&e))
        }
    }
}

fn format_config_error(e: &config::ConfigError) -> String {
    let mut s = format!(
        "error: {} is invalid ({} error{}):\n",
        e.source_name,
        e.errors.len(),
        if e.errors.len() == 1 { "" } else { "s" }
    );
    for d in &e.errors {
        s.push_str(&format!("  {d}\n"));
    }
    s
}

fn check_config(file: &Path, overrides: &config::Overrides, max_bytes: u64) -> ExitCode {
    match config::parse_bootstrap_file_limited(file, overrides, max_bytes) {
        Ok(s) => {
            println!("{}: OK", file.display());
            if let Some(a) = &s.admin {
                println!("  admin: {}", a.address);
            }
            println!("  listeners: {}", s.listeners.len());
            for l in &s.listeners {
                let target = l
                    .all_chains()
                    .flat_map(|fc| fc.filters.iter())
                    .map(|f| match f {
                        config::NetworkFilter::TcpProxy(tp) => {
                            format!("tcp_proxy -> cluster {}", tp.cluster)
                        }
                        config::NetworkFilter::HttpConnectionManager(h) => match &h.routes {
                            config::http::Routes::Inline(rc) => format!(
                                "http_connection_manager {} ({} virtual hosts)",
                                h.stat_prefix,
                                rc.virtual_hosts.len()
                            ),
                            config::http::Routes::Rds { name, .. } => format!(
                                "http_connection_manager {} (routes \"{name}\" over RDS)",
                                h.stat_prefix
                            ),
                        },
                        config::NetworkFilter::ConnectionLimit(cl) => {
                            format!("connection_limit {}", cl.max_connections)
                        }
                        config::NetworkFilter::LocalRateLimit(_) => "local_ratelimit".to_string(),
                        config::NetworkFilter::Rbac(r) => format!("rbac {}", r.stat_prefix),
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                println!("    {} {} {}", l.name, l.address, target);
            }
            println!("  clusters: {}", s.clusters.len());
            for c in &s.clusters {
                let n: usize = c.localities.iter().map(|l| l.endpoints.len()).sum();
                println!(
                    "    {} {} {} endpoints={} connect_timeout={:?}",
                    c.name,
                    c.discovery.as_str(),
                    c.lb_policy.as_str(),
                    n,
                    c.connect_timeout
                );
            }
            if !s.warnings.is_empty() {
                println!("  warnings: {}", s.warnings.len());
                for w in &s.warnings {
                    println!("    {w}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{}", format_config_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit (capped at 1M): a node proxy holds
/// two descriptors per proxied connection, and the usual soft default (1024) is far too low.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let target = lim.rlim_max.min(1 << 20);
    if lim.rlim_cur >= target {
        tracing::info!(open_files = lim.rlim_cur, "open files limit");
        return;
    }
    let from = lim.rlim_cur;
    lim.rlim_cur = target;
    // SAFETY: raising the soft limit up to the hard limit needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        tracing::info!(from, to = target, "raised the open files limit");
    } else {
        tracing::warn!(open_files = from, "cannot raise the open files limit");
    }
}
