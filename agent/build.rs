//! Compiles the descriptors of the Envoy API messages Plumb reads by reflection (the HTTP
//! connection manager, route configurations and the HTTP filters inside them) from the
//! `.proto` files that ship with the `envoy-types` crate, into `$OUT_DIR/envoy.bin`.
//! Nothing is generated as code: `config::xds::reflect` renders these messages as the JSON
//! Envoy would print, for the same readers and field tables as the bootstrap.

use std::path::PathBuf;
use std::process::Command;

/// The messages read by reflection, by file; their imports come along.
const FILES: &[&str] = &[
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/config/route/v3/route.proto",
    // Clusters' health checks, balancer settings and retry budgets (CDS), by reflection.
    "envoy/config/cluster/v3/cluster.proto",
    // Typed load balancing policies (a cluster's load_balancing_policy).
    "envoy/extensions/load_balancing_policies/round_robin/v3/round_robin.proto",
    "envoy/extensions/load_balancing_policies/least_request/v3/least_request.proto",
    "envoy/extensions/load_balancing_policies/random/v3/random.proto",
    "envoy/extensions/load_balancing_policies/ring_hash/v3/ring_hash.proto",
    "envoy/extensions/load_balancing_policies/maglev/v3/maglev.proto",
    "envoy/extensions/load_balancing_policies/cluster_provided/v3/cluster_provided.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/http/health_check/v3/health_check.proto",
    "envoy/extensions/filters/http/set_filter_state/v3/set_filter_state.proto",
    "envoy/extensions/filters/http/grpc_stats/v3/config.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    // TLS transport sockets (filter chains, clusters), secrets and the TLS inspector.
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    // RBAC, network and HTTP (and its per-route form).
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
];

/// Where the `envoy-types` package (and its `proto/` tree) is, from `cargo metadata`.
fn envoy_types_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("Cargo.toml");
    // Offline first: the build has already fetched every package it compiles. But `cargo
    // metadata` reads the manifests of the whole graph, other platforms' packages included,
    // which a fresh cargo home has not downloaded yet; then it may fetch them.
    let metadata = |offline: bool| {
        let mut c = Command::new(&cargo);
        c.args(["metadata", "--format-version", "1", "--locked"]);
        if offline {
            c.arg("--offline");
        }
        c.arg("--manifest-path")
            .arg(&manifest)
            .output()
            .expect("run cargo metadata")
    };
    let mut out = metadata(true);
    if !out.status.success() {
        let offline = out;
        out = metadata(false);
        assert!(
            out.status.success(),
            "cargo metadata failed offline:\n{}\nand online:\n{}",
            String::from_utf8_lossy(&offline.stderr),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let pkg = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "envoy-types"))
        .expect("envoy-types in the dependency graph");
    PathBuf::from(pkg["manifest_path"].as_str().expect("manifest path"))
        .parent()
        .expect("package dir")
        .to_path_buf()
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let proto = envoy_types_dir().join("proto");
    let includes = [
        "data-plane-api",
        "xds",
        "googleapis",
        "protoc-gen-validate",
        "cel-spec/proto",
        "opentelemetry-proto",
        "client_model",
    ]
    .map(|d| proto.join(d));
    let mut compiler = protox::Compiler::new(includes).expect("proto include paths");
    compiler.include_imports(true).include_source_info(false);
    compiler
        .open_files(FILES)
        .expect("compile the Envoy API descriptors");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("envoy.bin");
    std::fs::write(out, compiler.encode_file_descriptor_set()).expect("write descriptors");
}
