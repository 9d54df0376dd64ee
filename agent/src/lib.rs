//! Plumb: a per-node proxy agent. One shared userspace L4 proxy core for every workload on the
//! node, configured with Envoy's bootstrap (and later xDS), observed through Envoy's admin API.
//!
//! Modules, one per concern: `config` (the validated model and its front doors), `listener`
//! (sockets, accept, drain), `filters` (L4 filters such as tcp_proxy), `http` (the HTTP
//! connection manager, routing, the router), `copy` (the byte pump),
//! `upstream` (clusters, hosts, load balancing), `redirect` (eBPF capture), `stats`, `admin`,
//! `drain`, `logging`, `server`.

pub mod admin;
pub mod config;
pub mod copy;
pub mod drain;
pub mod filters;
#[doc(hidden)]
pub mod fuzzing;
pub mod handover;
pub mod http;
pub mod init;
pub mod listener;
pub mod logging;
pub mod notify;
pub mod overload;
pub mod rbac;
pub mod redirect;
pub mod server;
pub mod state;
pub mod stats;
pub mod tls;
pub mod transport;
pub mod upstream;
pub mod xds;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
