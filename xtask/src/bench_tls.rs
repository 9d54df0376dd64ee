//! `cargo xtask bench tls`: one run measuring, side by side, Plumb, nginx and haproxy
//! terminating TLS (the same ECDSA P-256 certificate, TLS 1.3 only, one worker each) in
//! front of the same plain HTTP upstream:
//!
//! - full handshakes/s: new connections in a closed loop, each a handshake and one GET
//!   (`plumb-load tls-handshakes`, 16 at a time, no resumption);
//! - resumed handshakes/s: the same with session tickets kept by the client;
//! - HTTPS keep-alive req/s with p50/p99 (wrk, 64 connections);
//! - mTLS origination: plain HTTP in, mTLS (client certificate, verified by the upstream)
//!   out, against the same proxy plain in and out (wrk, 64 connections) — Plumb and nginx.
//!
//! Rounds are interleaved (every target once per round; best of the rounds is kept). Prints
//! ratios and the targets (handshakes/s ≥ nginx; HTTPS req/s ≥ 1.2× nginx). Loopback only;
//! every run is bounded in time.

use crate::bench_http::{load, nginx_conf, start, wait_http, wrk, wrk_url, Wrk};
use crate::util::{self, free_port, root_dir, KillOnDrop, KillTreeOnDrop};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("run openssl")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A throw-away CA (`ca.pem`), a server certificate for `dns` (`server.pem`, `server.key`)
/// and a client certificate with the URI SAN `uri` (`client.pem`, `client.key`), all ECDSA
/// P-256, made with the openssl command.
pub(crate) fn certificates(dir: &Path, dns: &str, uri: &str) -> Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=bench-ca",
    ]);
    openssl(dir, &ca)?;
    for (name, san) in [
        ("server", format!("subjectAltName=DNS:{dns}")),
        ("client", format!("subjectAltName=URI:{uri}")),
    ] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(dir.join(&ext), format!("{san}\n"))?;
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=bench"]);
        openssl(dir, &req)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        )?;
    }
    // haproxy takes the certificate and key in one file.
    let both = std::fs::read_to_string(dir.join("server.pem"))?
        + &std::fs::read_to_string(dir.join("server.key"))?;
    std::fs::write(dir.join("server-both.pem"), both)?;
    Ok(())
}

fn handshakes(port: u16, secs: u64, resume: bool) -> Result<(f64, u64)> {
    let mut args = vec![
        "tls-handshakes".to_string(),
        "--addr".into(),
        format!("127.0.0.1:{port}"),
        "--conns".into(),
        "16".into(),
        "--secs".into(),
        secs.to_string(),
    ];
    if resume {
        args.push("--resume".into());
    }
    let v = load(&args)?;
    let errors = v["errors"].as_u64().unwrap_or(0);
    if resume && v["resumed"].as_u64().unwrap_or(0) * 2 < v["connections"].as_u64().unwrap_or(0) {
        eprintln!("bench tls: port {port}: fewer than half the handshakes were resumed: {v}");
    }
    Ok((v["cps"].as_f64().unwrap_or(0.0), errors))
}

fn wait_tls(port: u16) -> Result<()> {
    util::wait_for(
        &format!("TLS on 127.0.0.1:{port}"),
        Duration::from_secs(15),
        || {
            load(&[
                "tls-handshakes".into(),
                "--addr".into(),
                format!("127.0.0.1:{port}"),
                "--conns".into(),
                "1".into(),
                "--secs".into(),
                "0.2".into(),
            ])
            .is_ok_and(|v| v["connections"].as_u64().unwrap_or(0) > 0)
        },
    )
}

#[derive(Clone, Copy, Default)]
struct Row {
    full: f64,
    resumed: f64,
    https: Wrk,
    /// The proxy's CPU time (user + system, workers included) per HTTPS keep-alive
    /// request, in the round with the most requests per second.
    cpu_us: f64,
    errors: u64,
}

pub fn bench(secs: f64, rounds: usize) -> Result<()> {
    crate::deps(true)?;
    util::build_release_bins()?;
    let secs = secs.ceil() as u64;
    let dir = root_dir().join("target/bench-tls");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    certificates(&dir, "bench.example", "spiffe://bench/client")?;
    let d = dir.display().to_string();
    let nginx = util::which("nginx").context("nginx not found")?;
    let haproxy = util::which("haproxy").context("haproxy not found")?;
    let port = free_port;
    let (up, up_tls) = (port()?, port()?);
    let (pn, pn_plain, pn_orig) = (port()?, port()?, port()?);
    let ph = port()?;
    let (pp, pp_plain, pp_orig, admin) = (port()?, port()?, port()?, port()?);
    let script = dir.join("latency.lua");
    std::fs::write(
        &script,
        "done = function(summary, latency, requests)\n  io.write(string.format(\"LATENCY_US %d %d %d\\n\", latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))\nend\n",
    )?;

    // The upstreams: plain HTTP, and TLS requiring a client certificate from the CA.
    let up_conf = nginx_conf(
        &dir,
        "upstream",
        &format!(
            "  server {{ listen 127.0.0.1:{up} backlog=4096; location / {{ return 200 \"ok\\n\"; }} }}\n  \
             server {{ listen 127.0.0.1:{up_tls} ssl backlog=4096; ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;\n    \
             ssl_protocols TLSv1.3; ssl_client_certificate {d}/ca.pem; ssl_verify_client on;\n    \
             location / {{ return 200 \"ok\\n\"; }} }}"
        ),
    )?;
    let up_pid = start(
        Command::new(&nginx)
            .arg("-c")
            .arg(&up_conf)
            .arg("-p")
            .arg(&dir),
        None,
        &dir.join("upstream.log"),
    )?;
    let _up = KillTreeOnDrop(up_pid);

    // nginx: TLS in; plain in and out; plain in, mTLS out.
    let keep = "proxy_http_version 1.1; proxy_set_header Connection \"\";";
    let proxy_conf = nginx_conf(
        &dir,
        "proxy",
        &format!(
            "  upstream up {{ server 127.0.0.1:{up}; keepalive 128; }}\n  \
             upstream uptls {{ server 127.0.0.1:{up_tls}; keepalive 128; }}\n  \
             server {{ listen 127.0.0.1:{pn} ssl backlog=4096; ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;\n    \
             ssl_protocols TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;\n    \
             location / {{ proxy_pass http://up; {keep} }} }}\n  \
             server {{ listen 127.0.0.1:{pn_plain} backlog=4096; location / {{ proxy_pass http://up; {keep} }} }}\n  \
             server {{ listen 127.0.0.1:{pn_orig} backlog=4096; location / {{ proxy_pass https://uptls; {keep}\n    \
             proxy_ssl_certificate {d}/client.pem; proxy_ssl_certificate_key {d}/client.key; proxy_ssl_protocols TLSv1.3;\n    \
             proxy_ssl_session_reuse on; proxy_ssl_verify on; proxy_ssl_trusted_certificate {d}/ca.pem; proxy_ssl_name bench.example; }} }}"
        ),
    )?;
    let nginx_pid = start(
        Command::new(&nginx)
            .arg("-c")
            .arg(&proxy_conf)
            .arg("-p")
            .arg(&dir),
        None,
        &dir.join("proxy.log"),
    )?;
    let _ng = KillTreeOnDrop(nginx_pid);

    // haproxy, one thread, TLS in.
    let ha_cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &ha_cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 9990\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 30s\n  option http-keep-alive\n\
             frontend f\n  bind 127.0.0.1:{ph} ssl crt {d}/server-both.pem alpn http/1.1\n  default_backend b\n\
             backend b\n  http-reuse always\n  server s1 127.0.0.1:{up}\n"
        ),
    )?;
    let ha_pid = start(
        Command::new(&haproxy).args(["-db", "-f"]).arg(&ha_cfg),
        None,
        &dir.join("haproxy.log"),
    )?;
    let _ha = KillOnDrop(ha_pid);

    // Plumb, one worker.
    let hcm = |prefix: &str, cluster: &str| {
        json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": prefix, "generate_request_id": false,
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                "suppress_envoy_headers": true}}]}})
    };
    let file = |f: &str| json!({"filename": format!("{d}/{f}")});
    let listener = |name: &str, port: u16, cluster: &str, tls: bool| {
        let mut chain = json!({"filters": [hcm(name, cluster)]});
        if tls {
            chain["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_3"},
                    "alpn_protocols": ["http/1.1"],
                    "tls_certificates": [{"certificate_chain": file("server.pem"), "private_key": file("server.key")}]}}});
        }
        json!({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [chain]})
    };
    let cluster = |name: &str, port: u16| {
        json!({"name": name, "connect_timeout": "1s", "load_assignment": {"cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}})
    };
    let mut mtls_up = cluster("uptls", up_tls);
    mtls_up["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "bench.example",
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_3"},
            "tls_certificates": [{"certificate_chain": file("client.pem"), "private_key": file("client.key")}],
            "validation_context": {"trusted_ca": file("ca.pem"),
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "bench.example"}}]}}}});
    let plumb_cfg = dir.join("plumb.yaml");
    std::fs::write(
        &plumb_cfg,
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [
                    listener("tls", pp, "up", true),
                    listener("plain", pp_plain, "up", false),
                    listener("orig", pp_orig, "uptls", false),
                ],
                "clusters": [cluster("up", up), mtls_up],
            },
        })
        .to_string(),
    )?;
    let plumb_pid = start(
        Command::new(root_dir().join("target/release/plumb"))
            .args([
                "run",
                "--log-level",
                "warn",
                "--concurrency",
                "1",
                "--config",
            ])
            .arg(&plumb_cfg),
        None,
        &dir.join("plumb.log"),
    )?;
    let _pl = KillOnDrop(plumb_pid);
    for p in [up, pn_plain, pn_orig, pp_plain, pp_orig] {
        wait_http(p)?;
    }
    for p in [pn, ph, pp] {
        wait_tls(p)?;
    }

    let targets: [(&str, u16, u32); 3] = [
        ("plumb", pp, plumb_pid),
        ("nginx", pn, nginx_pid),
        ("haproxy", ph, ha_pid),
    ];
    let origination: [(&str, u16, u16); 2] =
        [("plumb", pp_plain, pp_orig), ("nginx", pn_plain, pn_orig)];
    let mut rows = [Row::default(); 3];
    let mut orig = [(Wrk::default(), Wrk::default()); 2];
    let better = |cur: &mut Wrk, new: Wrk| {
        if new.rps > cur.rps {
            *cur = new;
        }
    };
    for round in 0..rounds {
        for (i, (name, port, pid)) in targets.iter().enumerate() {
            let r = &mut rows[i];
            let (full, e1) = handshakes(*port, secs, false)?;
            let (resumed, e2) = handshakes(*port, secs, true)?;
            let before = util::cpu_seconds_tree(*pid).unwrap_or(0.0);
            let w = wrk_url(&format!("https://127.0.0.1:{port}/"), secs, &script)?;
            let after = util::cpu_seconds_tree(*pid).unwrap_or(0.0);
            if w.rps > r.https.rps {
                r.cpu_us = (after - before) / (w.rps * secs as f64) * 1e6;
            }
            r.full = r.full.max(full);
            r.resumed = r.resumed.max(resumed);
            r.errors += e1 + e2;
            better(&mut r.https, w);
            eprintln!(
                "round {round}: {name}: {full:.0} full handshakes/s, {resumed:.0} resumed/s, HTTPS {:.0} req/s (p99 {:.2} ms)",
                w.rps, w.p99
            );
        }
        for (i, (name, plain, mtls)) in origination.iter().enumerate() {
            let p = wrk(*plain, "/", secs, &script)?;
            let m = wrk(*mtls, "/", secs, &script)?;
            better(&mut orig[i].0, p);
            better(&mut orig[i].1, m);
            eprintln!(
                "round {round}: {name}: plain {:.0} req/s, mTLS origination {:.0} req/s",
                p.rps, m.rps
            );
        }
    }

    println!("\ncargo xtask bench tls: {secs} s per run, best of {rounds} interleaved rounds, 1 worker each, TLS 1.3, ECDSA P-256\n");
    println!("| target | full handshakes/s | resumed handshakes/s | HTTPS keep-alive req/s | p50 ms | p99 ms | CPU µs/req | handshake errors |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for ((name, _, _), r) in targets.iter().zip(&rows) {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} | {} |",
            r.full, r.resumed, r.https.rps, r.https.p50, r.https.p99, r.cpu_us, r.errors
        );
    }
    println!("\nmTLS origination (plain HTTP in, mTLS with a client certificate out; wrk, 64 connections):\n");
    println!("| proxy | plain req/s | plain p99 ms | mTLS out req/s | mTLS out p99 ms | cost |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for ((name, _, _), (p, m)) in origination.iter().zip(&orig) {
        println!(
            "| {name} | {:.0} | {:.2} | {:.0} | {:.2} | {:.1} % |",
            p.rps,
            p.p99,
            m.rps,
            m.p99,
            (1.0 - m.rps / p.rps) * 100.0
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let (p, n, h) = (&rows[0], &rows[1], &rows[2]);
    println!();
    for (peer, q) in [("nginx", n), ("haproxy", h)] {
        println!(
            "Plumb / {peer}: full handshakes {:.2}x, resumed {:.2}x, HTTPS req/s {:.2}x, HTTPS requests per CPU second {:.2}x; p99 {:.2} vs {:.2} ms",
            ratio(p.full, q.full),
            ratio(p.resumed, q.resumed),
            ratio(p.https.rps, q.https.rps),
            ratio(q.cpu_us, p.cpu_us),
            p.https.p99,
            q.https.p99
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "Targets: handshakes/s ≥ nginx: {}; HTTPS req/s ≥ 1.2× nginx: {}",
        verdict(p.full >= n.full),
        verdict(p.https.rps >= 1.2 * n.https.rps)
    );
    if rows.iter().any(|r| r.full <= 0.0 || r.https.rps <= 0.0) {
        bail!("a target answered nothing; see {}", dir.display());
    }
    Ok(())
}
