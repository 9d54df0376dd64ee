//! TLS end to end on loopback with throw-away certificates: termination with SNI selection,
//! mTLS with SAN matching, the TLS inspector and passthrough by SNI, origination to TLS
//! upstreams, and what bad clients get (each counted under its `ssl.*` stat).

use plumb_tests::agent::{bootstrap, static_cluster, tcp_listener, TestAgent};
use plumb_tests::servers::{self, Behavior};
use plumb_tests::tls::{self, Ca, LeafSpec};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn listener_stat(addr: SocketAddr, stat: &str) -> String {
    format!("listener.{}.{stat}", addr.to_string().replace(':', "_"))
}

/// A tcp_proxy listener whose chain terminates TLS with `transport_socket`.
fn tls_listener(name: &str, cluster: &str, transport_socket: Value) -> Value {
    let mut l = tcp_listener(name, cluster);
    l["filter_chains"][0]["transport_socket"] = transport_socket;
    l
}

/// Reads until EOF, or fails (a refused handshake shows up as a read error in TLS 1.3).
async fn read_all(s: &mut tls::ClientStream) -> std::io::Result<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_among_three_certificates_and_the_handshakes_are_counted() {
    let ca = Ca::new("test ca");
    let (a, b, wild) = (
        ca.server(&["a.example"]),
        ca.server(&["b.example"]),
        ca.server(&["*.c.example"]),
    );
    let backend = servers::start(Behavior::Named("backend".into())).await;
    let agent = TestAgent::start(&bootstrap(
        vec![tls_listener(
            "front",
            "backend",
            tls::downstream_tls(&[&a, &b, &wild], json!({})),
        )],
        vec![static_cluster("backend", &[backend.addr])],
    ))
    .await;
    let front = agent.listener("front");
    let client = tls::client_config(&ca.pem, &[], None);
    for (sni, leaf) in [
        ("a.example", &a),
        ("b.example", &b),
        ("x.c.example", &wild),
        // No certificate names it: the first one (the default) is served.
        ("unknown.example", &a),
    ] {
        let mut s = match tls::connect(front, sni, client.clone()).await {
            Ok(s) => s,
            // The client refuses the default certificate for a name it does not cover.
            Err(e) if sni == "unknown.example" => {
                assert!(e.to_string().contains("certificate"), "{e}");
                continue;
            }
            Err(e) => panic!("{sni}: {e}"),
        };
        let info = tls::ClientStreamInfo::of(&s);
        assert_eq!(info.server_cert, tls::der(&leaf.cert), "{sni}");
        assert_eq!(read_all(&mut s).await.unwrap(), b"backend", "{sni}");
    }
    agent
        .wait_stat(&listener_stat(front, "ssl.handshake"), |v| v == 3)
        .await;
    assert_eq!(agent.stat(&listener_stat(front, "ssl.versions.TLSv1.3")), 3);
    assert_eq!(agent.stat(&listener_stat(front, "ssl.no_certificate")), 3);
    assert_eq!(
        agent.stat(&listener_stat(front, "ssl.ciphers.TLS_AES_256_GCM_SHA384"))
            + agent.stat(&listener_stat(front, "ssl.ciphers.TLS_AES_128_GCM_SHA256"))
            + agent.stat(&listener_stat(
                front,
                "ssl.ciphers.TLS_CHACHA20_POLY1305_SHA256"
            )),
        3
    );
    // The client that refused the certificate closed the connection: a connection error.
    agent
        .wait_stat(&listener_stat(front, "ssl.connection_error"), |v| v == 1)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_one_spiffe_identity_and_refuses_the_others_each_under_its_stat() {
    let ca = Ca::new("mesh ca");
    let other_ca = Ca::new("another ca");
    let server = ca.server(&["svc.example"]);
    let backend = servers::start(Behavior::Named("backend".into())).await;
    let ts = tls::downstream_tls(
        &[&server],
        json!({
            "require_client_certificate": true,
            "common_tls_context": {"validation_context": {
                "trusted_ca": tls::inline(&ca.pem),
                "match_typed_subject_alt_names": [{"san_type": "URI",
                    "matcher": {"exact": "spiffe://test/ns/a/sa/good"}}],
            }},
        }),
    );
    let agent = TestAgent::start(&bootstrap(
        vec![tls_listener("front", "backend", ts)],
        vec![static_cluster("backend", &[backend.addr])],
    ))
    .await;
    let front = agent.listener("front");
    let stat = |s: &str| listener_stat(front, s);

    // The admitted identity.
    let good = ca.identity("spiffe://test/ns/a/sa/good");
    let mut s = tls::connect(
        front,
        "svc.example",
        tls::client_config(&ca.pem, &[], Some(&good)),
    )
    .await
    .unwrap();
    assert_eq!(read_all(&mut s).await.unwrap(), b"backend");
    agent.wait_stat(&stat("ssl.handshake"), |v| v == 1).await;
    assert_eq!(agent.stat(&stat("ssl.sigalgs.ecdsa_secp256r1_sha256")), 1);

    // Each refusal: the handshake (or the first read, in TLS 1.3) fails, and one stat counts it.
    let cases: Vec<(&str, Option<tls::Leaf>)> = vec![
        (
            "ssl.fail_verify_san",
            Some(ca.identity("spiffe://test/ns/a/sa/bad")),
        ),
        ("ssl.fail_verify_no_cert", None),
        (
            "ssl.fail_verify_error",
            Some(ca.leaf(LeafSpec {
                uris: &["spiffe://test/ns/a/sa/good"],
                expired: true,
                ..Default::default()
            })),
        ),
        (
            "ssl.fail_verify_error",
            Some(other_ca.identity("spiffe://test/ns/a/sa/good")),
        ),
    ];
    let mut want_error = 0;
    let mut want_san = 0;
    let mut want_no_cert = 0;
    for (counter, cert) in cases {
        let cfg = tls::client_config(&ca.pem, &[], cert.as_ref());
        let refused = match tls::connect(front, "svc.example", cfg).await {
            Err(_) => true,
            Ok(mut s) => read_all(&mut s).await.is_err(),
        };
        assert!(refused, "{counter}: the connection was not refused");
        match counter {
            "ssl.fail_verify_san" => want_san += 1,
            "ssl.fail_verify_no_cert" => want_no_cert += 1,
            _ => want_error += 1,
        }
        agent
            .wait_stat(&stat("ssl.fail_verify_san"), |v| v == want_san)
            .await;
        agent
            .wait_stat(&stat("ssl.fail_verify_no_cert"), |v| v == want_no_cert)
            .await;
        agent
            .wait_stat(&stat("ssl.fail_verify_error"), |v| v == want_error)
            .await;
    }
    assert_eq!(agent.stat(&stat("ssl.handshake")), 1);
    assert_eq!(
        backend.accepted(),
        1,
        "refused clients never reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_inspector_passes_tls_through_by_sni_and_terminates_other_names() {
    let ca = Ca::new("edge ca");
    let passed = ca.server(&["pass.example"]);
    let terminated = ca.server(&["term.example"]);
    // The upstream terminating the passed-through TLS itself.
    let tls_backend =
        tls::named_server("tls-backend", tls::server_config(&passed, None, &[])).await;
    let term = servers::start(Behavior::Named("term".into())).await;
    let plain = servers::start(Behavior::Named("plain".into())).await;
    let tcp = |cluster: &str| {
        json!([{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": cluster, "cluster": cluster}}])
    };
    let listener = json!({
        "name": "edge",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        "filter_chains": [
            {"filter_chain_match": {"server_names": ["pass.example"]}, "filters": tcp("tls-backend")},
            {"filter_chain_match": {"server_names": ["term.example"]}, "filters": tcp("term"),
             "transport_socket": tls::downstream_tls(&[&terminated], json!({}))},
            {"filter_chain_match": {"transport_protocol": "raw_buffer"}, "filters": tcp("plain")},
        ],
    });
    let agent = TestAgent::start(&bootstrap(
        vec![listener],
        vec![
            static_cluster("tls-backend", &[tls_backend.addr]),
            static_cluster("term", &[term.addr]),
            static_cluster("plain", &[plain.addr]),
        ],
    ))
    .await;
    let edge = agent.listener("edge");
    let client = tls::client_config(&ca.pem, &[], None);

    // Passed through: the upstream's own certificate, its own answer.
    let (got, info) = tls::fetch(edge, "pass.example", client.clone())
        .await
        .unwrap();
    assert_eq!(got, b"tls-backend -");
    assert_eq!(info.server_cert, tls::der(&passed.cert));
    // Terminated here with this chain's certificate.
    let (got, info) = tls::fetch(edge, "term.example", client.clone())
        .await
        .unwrap();
    assert_eq!(got, b"term");
    assert_eq!(info.server_cert, tls::der(&terminated.cert));
    // Plain TCP stays TCP.
    let got = plumb_tests::client::roundtrip(edge, b"").await.unwrap();
    assert_eq!(got, b"plain");
    // A name no chain serves: no chain matches (raw_buffer is not tls).
    assert!(tls::fetch(edge, "other.example", client).await.is_err());
    assert_eq!(agent.stat("tls_inspector.tls_found"), 3);
    assert_eq!(agent.stat("tls_inspector.sni_found"), 3);
    assert_eq!(agent.stat("tls_inspector.tls_not_found"), 1);
    assert_eq!(agent.stat(&listener_stat(edge, "no_filter_chain_match")), 1);
    // Only the terminated connection was a handshake here.
    assert_eq!(agent.stat(&listener_stat(edge, "ssl.handshake")), 1);
}

/// A stream that writes one byte per call (a ClientHello arriving in 1-byte pieces).
struct Trickle(TcpStream);

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(1);
        std::pin::Pin::new(&mut self.0).poll_write(cx, &buf[..n])
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_trickled_hellos_and_silent_clients_affect_only_their_own_connection() {
    let ca = Ca::new("test ca");
    let leaf = ca.server(&["svc.example"]);
    let backend = servers::start(Behavior::Named("backend".into())).await;
    let mut l = tls_listener("front", "backend", tls::downstream_tls(&[&leaf], json!({})));
    l["filter_chains"][0]["transport_socket_connect_timeout"] = json!("0.3s");
    // Behind a TLS inspector (whose own wait is bounded by listener_filters_timeout).
    let mut inspected = tls_listener(
        "inspected",
        "backend",
        tls::downstream_tls(&[&leaf], json!({})),
    );
    inspected["address"]["socket_address"]["address"] = json!("127.0.0.2");
    inspected["listener_filters"] = json!([{"name": "envoy.filters.listener.tls_inspector"}]);
    let agent = TestAgent::start(&bootstrap(
        vec![l, inspected],
        vec![static_cluster("backend", &[backend.addr])],
    ))
    .await;
    let front = agent.listener("front");
    let stat = |s: &str| listener_stat(front, s);

    // Garbage instead of a ClientHello: closed, a connection error.
    let mut g = TcpStream::connect(front).await.unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), g.read_to_end(&mut sink))
        .await
        .expect("closed");
    agent
        .wait_stat(&stat("ssl.connection_error"), |v| v == 1)
        .await;

    // A silent client: closed after the handshake timeout.
    let mut silent = TcpStream::connect(front).await.unwrap();
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut [0u8; 16]))
        .await
        .expect("closed by the handshake timeout");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert!(started.elapsed() >= Duration::from_millis(250));
    agent
        .wait_stat(&stat("ssl.connection_error"), |v| v == 2)
        .await;

    // A ClientHello in 1-byte writes: read by the inspector, then served.
    let inspected = agent.listener("inspected");
    let tcp = TcpStream::connect(inspected).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("svc.example").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls::client_config(&ca.pem, &[], None))
        .connect(name, Trickle(tcp))
        .await
        .unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"backend");
    assert_eq!(agent.stat(&listener_stat(inspected, "ssl.handshake")), 1);
    assert_eq!(agent.stat("tls_inspector.tls_found"), 1);
    assert_eq!(agent.stat(&stat("ssl.handshake")), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_originate_mtls_and_refuse_a_server_whose_san_does_not_match() {
    let ca = Ca::new("mesh ca");
    let server = ca.server(&["backend.example"]);
    let tls_backend = tls::named_server(
        "tls-backend",
        tls::server_config(&server, Some(&ca.pem), &[]),
    )
    .await;
    let me = ca.identity("spiffe://test/ns/plumb/sa/node");
    let origin = |san: &str| {
        tls::upstream_tls(json!({
            "sni": "backend.example",
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": tls::inline(&me.cert),
                    "private_key": tls::inline(&me.key)}],
                "validation_context": {"trusted_ca": tls::inline(&ca.pem),
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": san}}]},
            },
        }))
    };
    let mut good = static_cluster("good", &[tls_backend.addr]);
    good["transport_socket"] = origin("backend.example");
    let mut bad = static_cluster("bad", &[tls_backend.addr]);
    bad["transport_socket"] = origin("other.example");
    let mut to_bad = tcp_listener("to-bad", "bad");
    to_bad["address"]["socket_address"]["address"] = json!("127.0.0.2");
    let agent = TestAgent::start(&bootstrap(
        vec![tcp_listener("to-good", "good"), to_bad],
        vec![good, bad],
    ))
    .await;
    let got = plumb_tests::client::roundtrip(agent.listener("to-good"), b"")
        .await
        .unwrap();
    assert_eq!(got, b"tls-backend spiffe://test/ns/plumb/sa/node");
    assert_eq!(agent.stat("cluster.good.ssl.handshake"), 1);
    assert_eq!(
        agent.stat("cluster.good.ssl.sigalgs.ecdsa_secp256r1_sha256"),
        1
    );

    let got = plumb_tests::client::roundtrip(agent.listener("to-bad"), b"").await;
    assert!(got.map_or(true, |g| g.is_empty()));
    agent
        .wait_stat("cluster.bad.ssl.fail_verify_san", |v| v == 1)
        .await;
    assert_eq!(agent.stat("cluster.bad.upstream_cx_connect_fail"), 1);
    assert_eq!(agent.stat("cluster.bad.ssl.handshake"), 0);
}

/// `openssl s_client`: TLS 1.2 and 1.3, and an RSA and an ECDSA certificate for the same
/// name, each served to the client whose signature algorithms can verify it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_clients_get_the_rsa_or_ecdsa_certificate_their_signature_algorithms_allow() {
    let Some(openssl) = plumb_tests::agent::which("openssl") else {
        return plumb_tests::skip("openssl not installed (cargo xtask deps installs it)");
    };
    let ca = Ca::new("sigalg ca");
    let ecdsa = ca.server(&["both.example"]);
    let rsa = ca.leaf(LeafSpec {
        dns: &["both.example"],
        rsa: true,
        ..Default::default()
    });
    let backend = servers::start(Behavior::Named("backend".into())).await;
    let agent = TestAgent::start(&bootstrap(
        vec![tls_listener(
            "front",
            "backend",
            tls::downstream_tls(&[&rsa, &ecdsa], json!({})),
        )],
        vec![static_cluster("backend", &[backend.addr])],
    ))
    .await;
    let front = agent.listener("front");
    let dir = plumb_tests::TempDir::new("s_client");
    let ca_file = dir.write("ca.pem", &ca.pem);
    let s_client = |extra: &'static [&'static str]| {
        let (openssl, ca_file) = (openssl.clone(), ca_file.clone());
        async move {
            let out = tokio::process::Command::new(&openssl)
                .args(["s_client", "-connect"])
                .arg(front.to_string())
                .args([
                    "-servername",
                    "both.example",
                    "-verify_return_error",
                    "-CAfile",
                ])
                .arg(&ca_file)
                .args(extra)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)
        }
    };
    let text = s_client(&["-tls1_3", "-sigalgs", "ecdsa_secp256r1_sha256"]).await;
    assert!(text.contains("Peer signature type: ECDSA"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let text = s_client(&["-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256"]).await;
    assert!(text.contains("Peer signature type: RSA-PSS"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let text = s_client(&["-tls1_2"]).await;
    assert!(
        text.contains("Protocol  : TLSv1.2") || text.contains("TLSv1.2"),
        "{text}"
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    agent
        .wait_stat(&listener_stat(front, "ssl.versions.TLSv1.2"), |v| v == 1)
        .await;
    assert_eq!(agent.stat(&listener_stat(front, "ssl.versions.TLSv1.3")), 2);
}

/// An upstream whose certificate expired, or was issued by another CA: the cluster's connect
/// fails, counted under `ssl.fail_verify_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_refuse_expired_and_untrusted_server_certificates() {
    let ca = Ca::new("mesh ca");
    let other = Ca::new("other ca");
    let expired = ca.leaf(LeafSpec {
        dns: &["backend.example"],
        expired: true,
        ..Default::default()
    });
    let untrusted = other.server(&["backend.example"]);
    let a = tls::named_server("expired", tls::server_config(&expired, None, &[])).await;
    let b = tls::named_server("untrusted", tls::server_config(&untrusted, None, &[])).await;
    let origin = tls::upstream_tls(json!({
        "sni": "backend.example",
        "common_tls_context": {"validation_context": {"trusted_ca": tls::inline(&ca.pem)}},
    }));
    let mut ca_cluster = static_cluster("expired", &[a.addr]);
    ca_cluster["transport_socket"] = origin.clone();
    let mut other_cluster = static_cluster("untrusted", &[b.addr]);
    other_cluster["transport_socket"] = origin;
    let mut l2 = tcp_listener("to-untrusted", "untrusted");
    l2["address"]["socket_address"]["address"] = json!("127.0.0.2");
    let agent = TestAgent::start(&bootstrap(
        vec![tcp_listener("to-expired", "expired"), l2],
        vec![ca_cluster, other_cluster],
    ))
    .await;
    for (listener, cluster) in [("to-expired", "expired"), ("to-untrusted", "untrusted")] {
        let got = plumb_tests::client::roundtrip(agent.listener(listener), b"").await;
        assert!(got.map_or(true, |g| g.is_empty()), "{cluster}: got bytes");
        agent
            .wait_stat(&format!("cluster.{cluster}.ssl.fail_verify_error"), |v| {
                v == 1
            })
            .await;
        assert_eq!(
            agent.stat(&format!("cluster.{cluster}.upstream_cx_connect_fail")),
            1
        );
    }
}

/// `transport_socket_matches`, as Istio uses them: endpoints whose metadata says
/// `tlsMode: istio` get mTLS, the others plain TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_socket_matches_choose_mtls_or_plain_per_endpoint() {
    let ca = Ca::new("mesh ca");
    let server = ca.server(&["secure.example"]);
    let me = ca.identity("spiffe://test/ns/matches/sa/client");
    let secure = tls::named_server("secure", tls::server_config(&server, Some(&ca.pem), &[])).await;
    let plain = servers::start(Behavior::Named("plain".into())).await;
    let mut c = static_cluster("mixed", &[secure.addr, plain.addr]);
    c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] = json!({
        "filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}});
    c["transport_socket_matches"] = json!([
        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
         "transport_socket": tls::upstream_tls(json!({
            "sni": "secure.example",
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": tls::inline(&me.cert),
                    "private_key": tls::inline(&me.key)}],
                "validation_context": {"trusted_ca": tls::inline(&ca.pem)}}}))},
        {"name": "tlsMode-disabled", "match": {},
         "transport_socket": {"name": "envoy.transport_sockets.raw_buffer"}},
    ]);
    let agent = TestAgent::start(&bootstrap(vec![tcp_listener("front", "mixed")], vec![c])).await;
    let front = agent.listener("front");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let got = plumb_tests::client::roundtrip(front, b"").await.unwrap();
        seen.insert(String::from_utf8(got).unwrap());
    }
    let want: std::collections::BTreeSet<String> = [
        "secure spiffe://test/ns/matches/sa/client".to_string(),
        "plain".to_string(),
    ]
    .into();
    assert_eq!(seen, want);
    assert_eq!(agent.stat("cluster.mixed.ssl.handshake"), 2);
}
