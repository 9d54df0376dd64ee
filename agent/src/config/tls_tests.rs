use super::*;
use serde_json::{json, Value as Json};

#[test]
fn every_field_table_entry_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/tls.md"))
        .expect("docs/tls.md");
    let tables = doc
        .split_once("## Field tables")
        .expect("a Field tables section")
        .1;
    let all: Vec<&(&str, FieldTable)> = TABLES.iter().chain(super::super::rbac::TABLES).collect();
    let rows: usize = all.iter().map(|(_, t)| t.len()).sum();
    let doc_rows = tables.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(doc_rows, rows, "docs/tls.md field tables are out of date");
    for (msg, table) in all {
        for (field, how) in table.iter() {
            let want = match how {
                Field::Supported => format!("| `{field}` | supported |"),
                Field::Ignored(why) => format!("| `{field}` | ignored: {why} |"),
                Field::Rejected(why) => format!("| `{field}` | **rejected**: {why} |"),
            };
            assert!(
                tables.contains(&want),
                "{msg}.{field} is not documented as: {want}"
            );
        }
    }
}

/// A bootstrap with one cluster whose transport socket is `ts`, and one listener whose
/// chain's is `lts`; the errors.
fn errors(ts: Json, lts: Json) -> String {
    let b = json!({"static_resources": {
        "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
            "filter_chains": [{"transport_socket": lts, "filters": [{"name": "envoy.filters.network.tcp_proxy",
                "typed_config": {"@type": type_urls::TCP_PROXY, "stat_prefix": "t", "cluster": "c"}}]}]}],
        "clusters": [{"name": "c", "transport_socket": ts, "load_assignment": {"cluster_name": "c",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": 2}}}}]}]}}]}});
    match crate::config::parse_bootstrap(&b.to_string(), "t") {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn trust_without_a_ca_is_refused() {
    let cert = rcgen_free_cert();
    let server = |extra: Json| {
        let mut t = json!({"@type": type_urls::DOWNSTREAM_TLS, "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"inline_string": cert.0}, "private_key": {"inline_string": cert.1}}]}});
        if let (Some(a), Json::Object(b)) = (t.as_object_mut(), extra) {
            for (k, v) in b {
                if k == "validation_context" {
                    a["common_tls_context"]["validation_context"] = v;
                } else {
                    a.insert(k, v);
                }
            }
        }
        json!({"name": "envoy.transport_sockets.tls", "typed_config": t})
    };
    let raw = json!({"name": "envoy.transport_sockets.raw_buffer"});
    let plain = json!({"name": "envoy.transport_sockets.tls", "typed_config": {"@type": type_urls::UPSTREAM_TLS}});
    // A client certificate required, but nothing to verify it against.
    let e = errors(
        plain.clone(),
        server(json!({"require_client_certificate": true, "validation_context": {}})),
    );
    assert!(e.contains("require_client_certificate: requiring a client certificate needs a validation context with trusted_ca"), "{e}");
    // Upstream SAN matchers without a CA.
    let sans = json!({"name": "envoy.transport_sockets.tls", "typed_config": {"@type": type_urls::UPSTREAM_TLS,
        "common_tls_context": {"validation_context": {"match_typed_subject_alt_names": [
            {"san_type": "URI", "matcher": {"exact": "spiffe://x"}}]}}}});
    let e = errors(sans, raw.clone());
    assert!(e.contains("SAN matchers need trusted_ca"), "{e}");
    assert_eq!(errors(plain, raw), "");
}

/// A throw-away self-signed ECDSA P-256 certificate for `fixed.test` and its key (made
/// with openssl for this test only; it protects nothing).
fn rcgen_free_cert() -> (&'static str, &'static str) {
    (FIXED_CERT, FIXED_KEY)
}

pub(crate) const FIXED_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBmDCCAT6gAwIBAgIUfsYLwQr1u9OQtBWS+PA6Q+TWxP8wCgYIKoZIzj0EAwIw\nFTETMBEGA1UEAwwKZml4ZWQudGVzdDAgFw0yNjExMjgwOTMxMzBaGA8yMTI2MTEw\nNDA5MzEzMFowFTETMBEGA1UEAwwKZml4ZWQudGVzdDBZMBMGByqGSM49AgEGCCqG\nSM49AwEHA0IABLqT0D2mSKEsyHXubgA+tUyOEESUSaydyFW6gwodUA0QvZa/A9rp\n4pxgllsyzdmBx1gWFN1I/akzWNq+Qww7jqWjajBoMB0GA1UdDgQWBBQToqSk7H1I\nm/mJWeteDVRziHE/VDAfBgNVHSMEGDAWgBQToqSk7H1Im/mJWeteDVRziHE/VDAP\nBgNVHRMBAf8EBTADAQH/MBUGA1UdEQQOMAyCCmZpeGVkLnRlc3QwCgYIKoZIzj0E\nAwIDSAAwRQIhAJe2Ke+lWQKD6JSo2UAbSx3/7q5XH2PUyvc7X5Q/ocXXAiBO80Io\n4OaASBzwFSx10H9GozjzGwvLB6uayyysjCZZKQ==\n-----END CERTIFICATE-----\n";
pub(crate) const FIXED_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgRaEqC2zFm7/Vv+KO\nAyr94m4wOVuITIGoCNLjW+C4JVehRANCAAS6k9A9pkihLMh17m4APrVMjhBElEms\nnchVuoMKHVANEL2WvwPa6eKcYJZbMs3ZgcdYFhTdSP2pM1javkMMO46l\n-----END PRIVATE KEY-----\n";

#[test]
fn base64_decodes_as_proto3_json_renders_bytes() {
    assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
    assert!(decode_base64("a*b").is_none());
}

#[test]
fn private_keys_are_redacted() {
    let mut j = json!({"tickets": {"session_ticket_keys": {"keys": [{"inline_bytes": "VElDS0VU"}]}},
        "static_resources": {"secrets": [{"name": "s", "tls_certificate": {
        "certificate_chain": {"inline_string": "CERT"},
        "private_key": {"inline_string": "KEY"}}},
        {"name": "g", "generic_secret": {"secret": {"inline_bytes": "c2VjcmV0"}}}]}});
    redact(&mut j);
    let s = j.to_string();
    assert!(
        !s.contains("KEY") && !s.contains("c2VjcmV0") && !s.contains("VElDS0VU"),
        "{s}"
    );
    assert!(s.contains("CERT") && s.contains(REDACTED));
}
