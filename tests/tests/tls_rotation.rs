//! Certificate rotation without a failed connection: SDS over the ADS stream (and a bad
//! secret refused with its path while the old one keeps serving), a Kubernetes-style
//! watched directory whose `..data` symlink is swapped, and file-based SDS. Under a steady
//! load of new handshakes, each rotation shows up in the certificates new handshakes
//! present; a connection established before it keeps working.

use plumb_tests::agent::{static_cluster, tcp_listener, TestAgent};
use plumb_tests::client;
use plumb_tests::servers::{self, Behavior};
use plumb_tests::tls::{self, Ca, Leaf};
use plumb_tests::xds::{ads_bootstrap, certificate_secret, ControlPlane};
use plumb_tests::TempDir;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// New TLS connections in a loop (bounded: 30 s, 20,000 connections), each a full handshake
/// and an echo; records the certificates seen, in order, and the failures.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(addr: SocketAddr, sni: &'static str, cfg: Arc<rustls::ClientConfig>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let (s, f, d, v) = (stop.clone(), failures.clone(), done.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            while !s.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(30)
                && d.load(Ordering::Relaxed) < 20_000
            {
                let r = async {
                    let mut c = tls::connect(addr, sni, cfg.clone()).await?;
                    let cert = tls::ClientStreamInfo::of(&c).server_cert;
                    c.write_all(b"ping").await?;
                    let mut got = [0u8; 4];
                    c.read_exact(&mut got).await?;
                    if &got != b"ping" {
                        return Err(std::io::Error::other("wrong echo"));
                    }
                    Ok::<_, std::io::Error>(cert)
                }
                .await;
                match r {
                    Ok(cert) => {
                        let mut v = v.lock().unwrap();
                        if v.last() != Some(&cert) {
                            v.push(cert);
                        }
                    }
                    Err(e) => {
                        eprintln!("load: {e}");
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
                d.fetch_add(1, Ordering::Relaxed);
            }
        });
        Self {
            stop,
            failures,
            done,
            seen,
            task,
        }
    }

    /// Waits until some connections have been made (before a rotation).
    async fn warm_up(&self) {
        let done = self.done.clone();
        plumb_tests::wait_until(
            "connections before the rotation",
            Duration::from_secs(10),
            || {
                let n = done.load(Ordering::Relaxed);
                async move { n >= 20 }
            },
        )
        .await;
    }

    /// Waits until new handshakes present `cert` (then a few more connections).
    async fn wait_for(&self, cert: &Leaf) {
        let want = tls::der(&cert.cert);
        let seen = self.seen.clone();
        plumb_tests::wait_until(
            "new handshakes present the new certificate",
            Duration::from_secs(20),
            || {
                let ok = seen.lock().unwrap().last() == Some(&want);
                async move { ok }
            },
        )
        .await;
        let at = self.done.load(Ordering::Relaxed);
        let done = self.done.clone();
        plumb_tests::wait_until(
            "more connections after the rotation",
            Duration::from_secs(10),
            || {
                let n = done.load(Ordering::Relaxed);
                async move { n >= at + 20 }
            },
        )
        .await;
    }

    async fn finish(self) -> (usize, usize, Vec<Vec<u8>>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let seen = self.seen.lock().unwrap().clone();
        (
            self.done.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            seen,
        )
    }
}

/// An established TLS connection still echoes.
async fn still_echoes(c: &mut tls::ClientStream) {
    c.write_all(b"late").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"late");
}

fn sds_ref(name: &str) -> Value {
    json!({"name": name, "sds_config": {"ads": {}, "resource_api_version": "V3"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_rotates_the_certificate_under_load_and_refuses_a_bad_one() {
    let ca = Ca::new("sds ca");
    let (v1, v2) = (ca.server(&["svc.example"]), ca.server(&["svc.example"]));
    let echo = servers::start(Behavior::Echo).await;
    let cp = ControlPlane::start().await;
    cp.set_secrets(vec![certificate_secret("svc-cert", &v1.cert, &v1.key)]);
    let mut b: Value = serde_json::from_str(&ads_bootstrap(cp.addr, "GRPC")).unwrap();
    let mut l = tcp_listener("front", "echo");
    l["filter_chains"][0]["transport_socket"] = json!({"name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {"tls_certificate_sds_secret_configs": [sds_ref("svc-cert")]}}});
    b["static_resources"]["listeners"] = json!([l]);
    b["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
        .push(static_cluster("echo", &[echo.addr]));
    // Ready only once the secret is in.
    let agent = TestAgent::start(&b.to_string()).await;
    let front = agent.listener("front");
    let client = tls::client_config(&ca.pem, &[], None);
    let mut early = tls::connect(front, "svc.example", client.clone())
        .await
        .unwrap();
    assert_eq!(
        tls::ClientStreamInfo::of(&early).server_cert,
        tls::der(&v1.cert)
    );

    let load = Load::start(front, "svc.example", client.clone());
    load.warm_up().await;
    cp.set_secrets(vec![certificate_secret("svc-cert", &v2.cert, &v2.key)]);
    load.wait_for(&v2).await;
    still_echoes(&mut early).await;

    // A key that does not match its certificate: NACKed with the path, v2 keeps serving.
    let v3 = ca.server(&["svc.example"]);
    cp.set_secrets(vec![certificate_secret("svc-cert", &v3.cert, &v1.key)]);
    plumb_tests::wait_until("NACK", Duration::from_secs(10), || async {
        !cp.nacks().is_empty()
    })
    .await;
    let nack = cp.nacks()[0].error.clone().unwrap();
    assert!(
        nack.contains("secret \"svc-cert\"")
            && nack.contains("tls_certificate")
            && nack.contains("does not match"),
        "{nack}"
    );
    assert!(!nack.contains("PRIVATE KEY"), "{nack}");
    let (done, failures, seen) = load.finish().await;
    assert_eq!(failures, 0, "{done} connections");
    eprintln!("sds: {done} connections, 0 failed");
    assert_eq!(
        seen,
        vec![tls::der(&v1.cert), tls::der(&v2.cert)],
        "v1 then v2 only"
    );
    let c = tls::connect(front, "svc.example", client).await.unwrap();
    assert_eq!(
        tls::ClientStreamInfo::of(&c).server_cert,
        tls::der(&v2.cert)
    );

    // The dump shows the secret without its key; /certs the served certificate.
    let dump = client::get(agent.admin(), "/config_dump").await;
    let text = dump.body;
    assert!(
        text.contains("dynamic_active_secrets") && text.contains("[redacted]"),
        "{text}"
    );
    assert!(
        !text.contains("PRIVATE KEY"),
        "a private key in /config_dump"
    );
    let certs = client::get(agent.admin(), "/certs").await.json();
    let serial = plumb::tls::san::facts(&tls::der(&v2.cert)).unwrap().serial;
    assert_eq!(
        certs["certificates"][0]["cert_chain"][0]["serial_number"],
        json!(serial),
        "{certs}"
    );
    assert!(agent.stat("tls.context_reloads") >= 1);
    assert_eq!(agent.stat("plumb.sds.update_rejected"), 1);
}

/// A Kubernetes secret volume: `<dir>/..<version>/` holds the files, `<dir>/..data` links
/// to the current version, `<dir>/tls.crt` and `tls.key` link through `..data`.
struct SecretVolume {
    dir: TempDir,
    n: usize,
}

impl SecretVolume {
    fn new(leaf: &Leaf) -> Self {
        let mut v = Self {
            dir: TempDir::new("secret-volume"),
            n: 0,
        };
        v.publish(&leaf.cert, &leaf.key);
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), v.dir.path.join(f)).unwrap();
        }
        v
    }

    /// Writes a new version and swaps `..data` to it atomically (rename over the link).
    fn publish(&mut self, cert: &str, key: &str) {
        self.n += 1;
        let version = format!("..v{}", self.n);
        let vdir = self.dir.path.join(&version);
        std::fs::create_dir(&vdir).unwrap();
        std::fs::write(vdir.join("tls.crt"), cert).unwrap();
        std::fs::write(vdir.join("tls.key"), key).unwrap();
        let tmp = self.dir.path.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path.join("..data")).unwrap();
    }

    fn path(&self, f: &str) -> String {
        self.dir.path.join(f).display().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_files_and_file_based_sds_rotate_under_load() {
    let ca = Ca::new("volume ca");
    let (v1, v2) = (ca.server(&["svc.example"]), ca.server(&["svc.example"]));
    let echo = servers::start(Behavior::Echo).await;
    let mut vol = SecretVolume::new(&v1);
    // Listener "files": filename data sources through the volume's links.
    let mut files = tcp_listener("files", "echo");
    files["filter_chains"][0]["transport_socket"] = json!({"name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {"tls_certificates": [{
                "certificate_chain": {"filename": vol.path("tls.crt")},
                "private_key": {"filename": vol.path("tls.key")},
                "watched_directory": {"path": vol.path("")}}]}}});
    // Listener "sds-file": file-based SDS naming the same files.
    let sds = TempDir::new("sds-file");
    let sds_path = sds.write(
        "sds.yaml",
        &format!(
            "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: svc\n  tls_certificate:\n    certificate_chain: {{filename: {}}}\n    private_key: {{filename: {}}}\n",
            vol.path("tls.crt"),
            vol.path("tls.key")
        ),
    );
    let mut by_sds = tcp_listener("sds-file", "echo");
    by_sds["address"]["socket_address"]["address"] = json!("127.0.0.2");
    by_sds["filter_chains"][0]["transport_socket"] = json!({"name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {"tls_certificate_sds_secret_configs": [{"name": "svc",
                "sds_config": {"path_config_source": {"path": sds_path.display().to_string(),
                    "watched_directory": {"path": sds.path.display().to_string()}}}}]}}});
    let agent = TestAgent::start(&plumb_tests::agent::bootstrap(
        vec![files, by_sds],
        vec![static_cluster("echo", &[echo.addr])],
    ))
    .await;
    let client = tls::client_config(&ca.pem, &[], None);
    let (a, b) = (agent.listener("files"), agent.listener("sds-file"));
    let mut early = tls::connect(a, "svc.example", client.clone())
        .await
        .unwrap();
    let (load_a, load_b) = (
        Load::start(a, "svc.example", client.clone()),
        Load::start(b, "svc.example", client.clone()),
    );
    load_a.warm_up().await;
    load_b.warm_up().await;
    vol.publish(&v2.cert, &v2.key);
    load_a.wait_for(&v2).await;
    load_b.wait_for(&v2).await;
    still_echoes(&mut early).await;
    // A broken version: refused, v2 keeps serving.
    let failures_before = agent.stat("tls.context_reload_failures");
    vol.publish("not a certificate", &v2.key);
    agent
        .wait_stat("tls.context_reload_failures", |v| v >= failures_before + 2)
        .await;
    for (l, name) in [(load_a, "files"), (load_b, "sds-file")] {
        let (done, failures, seen) = l.finish().await;
        assert_eq!(failures, 0, "{name}: {done} connections");
        eprintln!("{name}: {done} connections, 0 failed");
        assert_eq!(seen, vec![tls::der(&v1.cert), tls::der(&v2.cert)], "{name}");
    }
    let c = tls::connect(a, "svc.example", client).await.unwrap();
    assert_eq!(
        tls::ClientStreamInfo::of(&c).server_cert,
        tls::der(&v2.cert)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lds_listener_warms_until_its_sds_secret_arrives() {
    let ca = Ca::new("lds ca");
    let leaf = ca.server(&["late.example"]);
    let echo = servers::start(Behavior::Echo).await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    let listener = plumb_tests::xds::tls_tcp_listener("front", front, "echo", "late");
    cp.set(
        vec![plumb_tests::xds::static_cluster("echo", echo.addr)],
        vec![listener],
        vec![],
    );
    // Not ready while its listener warms: started without waiting for readiness.
    let agent = TestAgent::start_unready(
        &ads_bootstrap(cp.addr, "GRPC"),
        plumb::server::Options {
            concurrency: 2,
            ..Default::default()
        },
    );
    // Warming: subscribed to the secret, not serving.
    plumb_tests::wait_until("SDS subscription", Duration::from_secs(10), || async {
        cp.requests()
            .iter()
            .any(|r| r.type_url == plumb_tests::xds::SECRET && r.names == ["late"])
    })
    .await;
    let dump = client::get(agent.admin(), "/config_dump").await.body;
    assert!(dump.contains("warming_state"), "{dump}");
    assert_eq!(client::get(agent.admin(), "/ready").await.status, 503);
    assert!(tokio::net::TcpStream::connect(front).await.is_err());
    cp.set_secrets(vec![certificate_secret("late", &leaf.cert, &leaf.key)]);
    let client = tls::client_config(&ca.pem, &[], None);
    plumb_tests::wait_until(
        "listener active with its secret",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            async move { tls::connect(front, "late.example", client).await.is_ok() }
        },
    )
    .await;
    assert!(agent.stat("plumb.sds.update_success") >= 1);
    plumb_tests::wait_until("ready", Duration::from_secs(10), || async {
        client::get(agent.admin(), "/ready").await.status == 200
    })
    .await;
}

/// A cluster to `backend` originating mTLS with SDS secret `client-cert` (over ADS).
fn sds_cluster(
    ca: &Ca,
    backend: SocketAddr,
) -> envoy_types::pb::envoy::config::cluster::v3::Cluster {
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pbt;
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;
    let inline = |s: &str| core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineString(s.to_string())),
        ..Default::default()
    };
    let ctx = pbt::UpstreamTlsContext {
        sni: "secure.example".into(),
        common_tls_context: Some(pbt::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![pbt::SdsSecretConfig {
                name: "client-cert".into(),
                sds_config: Some(core::ConfigSource {
                    config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                        core::AggregatedConfigSource {},
                    )),
                    resource_api_version: core::ApiVersion::V3 as i32,
                    ..Default::default()
                }),
            }],
            validation_context_type: Some(
                pbt::common_tls_context::ValidationContextType::ValidationContext(
                    pbt::CertificateValidationContext {
                        trusted_ca: Some(inline(&ca.pem)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut cluster = plumb_tests::xds::static_cluster("secure", backend);
    cluster.transport_socket = Some(core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(Any {
            type_url:
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
                    .into(),
            value: ctx.encode_to_vec(),
        })),
    });
    cluster
}

fn free_addr() -> SocketAddr {
    plumb_tests::servers::closed_port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cds_cluster_warms_until_its_client_certificate_arrives_over_sds() {
    let ca = Ca::new("cds ca");
    let server = ca.server(&["secure.example"]);
    let me = ca.identity("spiffe://test/ns/cds/sa/client");
    let backend =
        tls::named_server("secure", tls::server_config(&server, Some(&ca.pem), &[])).await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    let cluster = sds_cluster(&ca, backend.addr);
    cp.set(
        vec![cluster],
        vec![plumb_tests::xds::tcp_listener("front", front, "secure")],
        vec![],
    );
    let agent = TestAgent::start_unready(
        &ads_bootstrap(cp.addr, "GRPC"),
        plumb::server::Options {
            concurrency: 2,
            ..Default::default()
        },
    );
    plumb_tests::wait_until(
        "the cluster warms for its secret",
        Duration::from_secs(10),
        || async {
            agent.stat("cluster_manager.warming_clusters") == 1
                && cp
                    .requests()
                    .iter()
                    .any(|r| r.type_url == plumb_tests::xds::SECRET && r.names == ["client-cert"])
        },
    )
    .await;
    assert_eq!(client::get(agent.admin(), "/ready").await.status, 503);
    cp.set_secrets(vec![certificate_secret("client-cert", &me.cert, &me.key)]);
    agent
        .wait_stat("cluster_manager.warming_clusters", |v| v == 0)
        .await;
    plumb_tests::wait_until("traffic over mTLS", Duration::from_secs(10), || async {
        matches!(client::roundtrip(front, b"").await, Ok(v) if v == b"secure spiffe://test/ns/cds/sa/client")
    })
    .await;
    plumb_tests::wait_until("ready", Duration::from_secs(10), || async {
        client::get(agent.admin(), "/ready").await.status == 200
    })
    .await;
}

/// Secrets are never written to the xDS cache (they carry private keys): an agent restarted
/// from the cache — or a successor taking over with it — must still wait for its clusters'
/// SDS secrets before it is ready, instead of going live with TLS clients that refuse every
/// connection (plumb-sim's hand-over with mTLS found this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_the_cache_waits_for_its_clusters_sds_secrets() {
    use plumb::server::ShutdownKind;
    let ca = Ca::new("cache ca");
    let server = ca.server(&["secure.example"]);
    let me = ca.identity("spiffe://test/ns/cache/sa/client");
    let backend =
        tls::named_server("secure", tls::server_config(&server, Some(&ca.pem), &[])).await;
    let cp = ControlPlane::start().await;
    let front = free_addr();
    cp.set_secrets(vec![certificate_secret("client-cert", &me.cert, &me.key)]);
    cp.set(
        vec![sds_cluster(&ca, backend.addr)],
        vec![plumb_tests::xds::tcp_listener("front", front, "secure")],
        vec![],
    );
    let dir = TempDir::new("sds-cache");
    let options = || plumb::server::Options {
        concurrency: 2,
        xds_cache: Some(dir.path.join("xds.cache")),
        ..Default::default()
    };
    let bootstrap = ads_bootstrap(cp.addr, "GRPC");
    let agent = TestAgent::start_with(&bootstrap, options()).await;
    plumb_tests::wait_until("traffic over mTLS", Duration::from_secs(10), || async {
        matches!(client::roundtrip(front, b"").await, Ok(v) if v.starts_with(b"secure spiffe://"))
    })
    .await;
    agent.shutdown(ShutdownKind::Immediate);
    agent.join().await;

    // The control plane holds the secret back: the restarted agent has its cluster from the
    // cache but must not be ready.
    cp.set_secrets(vec![]);
    let agent = TestAgent::start_unready(&bootstrap, options());
    plumb_tests::wait_until(
        "the secret is asked for",
        Duration::from_secs(10),
        || async {
            cp.requests()
                .iter()
                .filter(|r| r.type_url == plumb_tests::xds::SECRET)
                .count()
                >= 2
        },
    )
    .await;
    assert_eq!(client::get(agent.admin(), "/ready").await.status, 503);
    cp.set_secrets(vec![certificate_secret("client-cert", &me.cert, &me.key)]);
    plumb_tests::wait_until("ready", Duration::from_secs(10), || async {
        client::get(agent.admin(), "/ready").await.status == 200
    })
    .await;
    assert!(
        matches!(client::roundtrip(front, b"").await, Ok(v) if v.starts_with(b"secure spiffe://"))
    );
}
