//! The HTTP readers: what is supported, what is refused (with the field path), and what the
//! compiled model holds.

use crate::config::http::*;
use crate::config::{parse_bootstrap, NetworkFilter};

fn boot(hcm: &str, clusters: &str) -> String {
    format!(
        r#"{{"static_resources": {{"listeners": [{{"name": "l",
        "address": {{"socket_address": {{"address": "127.0.0.1", "port_value": 0}}}},
        "filter_chains": [{{"filters": [{{"name": "envoy.filters.network.http_connection_manager",
          "typed_config": {hcm}}}]}}]}}],
        "clusters": [{clusters}]}}}}"#
    )
}

const CLUSTER: &str = r#"{"name": "c", "connect_timeout": "1s", "load_assignment": {"cluster_name": "c",
    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]}}"#;

fn hcm(routes: &str) -> String {
    format!(
        r#"{{"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "in", "route_config": {{"name": "r", "virtual_hosts": [{{"name": "v", "domains": ["*"], "routes": {routes}}}]}},
        "http_filters": [{{"name": "envoy.filters.http.router", "typed_config": {{"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}}}]}}"#
    )
}

fn read(hcm: &str) -> Result<HttpConnectionManager, String> {
    match parse_bootstrap(&boot(hcm, CLUSTER), "t") {
        Ok(s) => match &s.listeners[0].filter_chains[0].filters[0] {
            NetworkFilter::HttpConnectionManager(h) => Ok((**h).clone()),
            other => panic!("{other:?}"),
        },
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn a_connection_manager_with_routes_is_read_with_envoy_defaults() {
    let h = read(&hcm(
        r#"[{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]"#,
    ))
    .unwrap();
    assert_eq!(h.stat_prefix, "in");
    assert_eq!(h.codec_type, CodecType::Auto);
    assert_eq!(h.max_request_headers_bytes, 60 * 1024);
    assert_eq!(
        h.stream_idle_timeout,
        Some(std::time::Duration::from_secs(300))
    );
    assert_eq!(h.idle_timeout, Some(std::time::Duration::from_secs(3600)));
    assert!(h.generate_request_id);
    let Routes::Inline(rc) = &h.routes else {
        panic!()
    };
    let r = &rc.virtual_hosts[0].routes[0];
    let Action::Forward(f) = &r.action else {
        panic!()
    };
    assert_eq!(f.cluster, ClusterSpecifier::Cluster("c".into()));
    assert_eq!(f.timeout, Some(std::time::Duration::from_secs(15)));
    assert_eq!(h.source["stat_prefix"], "in");
}

#[test]
fn unknown_clusters_are_refused_in_a_static_route_unless_validation_is_off() {
    let e = read(&hcm(
        r#"[{"match": {"prefix": "/"}, "route": {"cluster": "nope"}}]"#,
    ))
    .unwrap_err();
    assert!(
        e.contains(
            "route_config.virtual_hosts[0].routes[0].route.cluster: unknown cluster \"nope\""
        ),
        "{e}"
    );
    let off = hcm(r#"[{"match": {"prefix": "/"}, "route": {"cluster": "nope"}}]"#).replace(
        r#""name": "r","#,
        r#""name": "r", "validate_clusters": false,"#,
    );
    assert!(read(&off).is_ok());
}

#[test]
fn bad_routes_name_the_field() {
    let cases = [
        (
            r#"[{"match": {"prefix": "/", "path": "/x"}, "route": {"cluster": "c"}}]"#,
            "routes[0].match: exactly one of prefix",
        ),
        (
            r#"[{"match": {"safe_regex": {"regex": "("}}, "route": {"cluster": "c"}}]"#,
            "routes[0].match.safe_regex.regex: invalid regex",
        ),
        (
            r#"[{"match": {"safe_regex": {"regex": "\\w{100}"}}, "route": {"cluster": "c"}}]"#,
            "routes[0].match.safe_regex.regex: invalid regex",
        ),
        (
            r#"[{"match": {"prefix": "/"}}]"#,
            "routes[0]: exactly one of route, redirect or direct_response",
        ),
        (
            r#"[{"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {"retry_on": "5xx,sometimes"}}}]"#,
            "routes[0].route.retry_policy.retry_on: unknown retry_on condition \"sometimes\"",
        ),
        (
            r#"[{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [{"name": "c", "weight": 0}]}}}]"#,
            "weights must not all be 0",
        ),
        (
            r#"[{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"total_weight": 5, "clusters": [{"name": "c", "weight": 3}]}}}]"#,
            "total_weight: 5 is not the sum",
        ),
        (
            r#"[{"match": {"prefix": "/", "headers": [{"name": "a b", "exact_match": "x"}]}, "route": {"cluster": "c"}}]"#,
            "headers[0].name: \"a b\" is not a valid header name",
        ),
        (
            r#"[{"match": {"prefix": "/"}, "direct_response": {"status": 99}}]"#,
            "direct_response.status: 99 is out of range",
        ),
        (
            r#"[{"match": {"prefix": "/"}, "route": {"cluster": "c"}, "request_headers_to_add": [{"header": {"key": "x", "value": "%NOPE%"}}]}]"#,
            "request_headers_to_add[0].header.value: unsupported variable %NOPE%",
        ),
        (
            r#"[{"match": {"prefix": "/"}, "route": {"cluster": "c"}, "request_headers_to_add": [{"header": {"key": ":path", "value": "x"}}]}]"#,
            "is not a header that can be added",
        ),
        (
            r#"[{"match": {"path_separated_prefix": "/a/"}, "route": {"cluster": "c"}}]"#,
            "path_separated_prefix: must start with /",
        ),
    ];
    let more = [
        (
            r#"[{"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {"retry_host_predicate": [{"name": "envoy.retry_host_predicates.omit_canary_hosts"}]}}}]"#,
            "retry_host_predicate[0]: unsupported retry host predicate",
        ),
        (
            r#"[{"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {"retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}}}}]"#,
            "retry_back_off.max_interval: must not be less than base_interval",
        ),
    ];
    for (routes, want) in cases.into_iter().chain(more) {
        let e = read(&hcm(routes)).unwrap_err();
        assert!(e.contains(want), "{routes}\nwant: {want}\ngot: {e}");
    }
}

#[test]
fn domains_are_unique_and_wildcards_only_at_an_end() {
    let two = r#"{"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "in", "route_config": {"virtual_hosts": [
          {"name": "a", "domains": ["x.com", "*.y.com"], "routes": []},
          {"name": "b", "domains": ["X.com", "a*b"], "routes": []}]},
        "http_filters": [{"name": "envoy.filters.http.router"}]}"#;
    let e = read(two).unwrap_err();
    assert!(
        e.contains("virtual_hosts[1].domains[0]: domain \"x.com\" is also in virtual host \"a\""),
        "{e}"
    );
    assert!(
        e.contains("virtual_hosts[1].domains[1]: invalid domain \"a*b\""),
        "{e}"
    );
}

#[test]
fn http_filters_other_than_the_router_are_refused_unless_optional() {
    let with = |filters: &str| {
        hcm(r#"[{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]"#).replace(
            r#""http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]"#,
            &format!(r#""http_filters": {filters}"#),
        )
    };
    let e = read(&with(
        r#"[{"name": "envoy.filters.http.cors"}, {"name": "envoy.filters.http.router"}]"#,
    ))
    .unwrap_err();
    assert!(
        e.contains("http_filters[0]: unsupported HTTP filter \"envoy.filters.http.cors\""),
        "{e}"
    );
    assert!(read(&with(r#"[{"name": "envoy.filters.http.cors", "is_optional": true}, {"name": "envoy.filters.http.router"}]"#)).is_ok());
    let e = read(&with(r#"[{"name": "envoy.filters.http.router"}, {"name": "envoy.filters.http.cors", "is_optional": true}]"#)).unwrap_err();
    assert!(
        e.contains("http_filters[0]: the router must be the last HTTP filter"),
        "{e}"
    );
    let e = read(&with("[]")).unwrap_err();
    assert!(e.contains("http_filters: missing required field"), "{e}");
}

#[test]
fn rds_names_a_route_configuration_over_ads() {
    let rds = |source: &str| {
        format!(
            r#"{{"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "in", "rds": {{"route_config_name": "r", "config_source": {source}}},
            "http_filters": [{{"name": "envoy.filters.http.router"}}]}}"#
        )
    };
    // Without a control plane there is nothing to fetch the routes from.
    let e = read(&rds(r#"{"ads": {}}"#)).unwrap_err();
    assert!(
        e.contains("typed_config.rds: RDS needs an ADS control plane"),
        "{e}"
    );
    let e = read(&rds(r#"{"path": "/etc/routes.yaml"}"#)).unwrap_err();
    assert!(e.contains("rds.config_source.path: not supported"), "{e}");
    let e = read(&rds(r#"{"ads": {}}"#).replace(
        r#""stat_prefix": "in","#,
        r#""stat_prefix": "in", "route_config": {"virtual_hosts": []},"#,
    ))
    .unwrap_err();
    assert!(
        e.contains("route_config and rds are mutually exclusive"),
        "{e}"
    );
}

#[test]
fn header_formats_are_parsed_once() {
    let mut d = crate::config::walk::Diagnostics::default();
    let f = super::headers::parse_header_format(
        "a %DOWNSTREAM_REMOTE_ADDRESS% 100%% %REQ(X-Y)%",
        "p",
        &mut d,
    )
    .unwrap();
    assert!(d.errors.is_empty());
    assert_eq!(
        f.parts,
        vec![
            FormatPart::Literal("a ".into()),
            FormatPart::DownstreamRemoteAddress,
            FormatPart::Literal(" 100% ".into()),
            FormatPart::RequestHeader("x-y".into()),
        ]
    );
    assert!(super::headers::parse_header_format("%UNCLOSED", "p", &mut d).is_none());
}

#[test]
fn cluster_protocol_options_choose_the_upstream_protocol() {
    let cluster = |extra: &str| {
        let c = CLUSTER.replacen(r#""name": "c","#, &format!(r#""name": "c", {extra}"#), 1);
        let s = parse_bootstrap(
            &boot(
                &hcm(r#"[{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]"#),
                &c,
            ),
            "t",
        );
        s.map(|s| s.clusters[0].http).map_err(|e| e.to_string())
    };
    assert_eq!(cluster("").unwrap().protocol, UpstreamProtocol::Http1);
    assert_eq!(
        cluster(r#""http2_protocol_options": {},"#)
            .unwrap()
            .protocol,
        UpstreamProtocol::Http2
    );
    let typed = r#""typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "common_http_protocol_options": {"max_requests_per_connection": 3},
        "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 7}}}},"#;
    let h = cluster(typed).unwrap();
    assert_eq!(h.protocol, UpstreamProtocol::Http2);
    assert_eq!(h.max_requests_per_connection, Some(3));
    assert_eq!(h.max_concurrent_streams, 7);
    let down = r#""typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "use_downstream_protocol_config": {}}},"#;
    assert_eq!(
        cluster(down).unwrap().protocol,
        UpstreamProtocol::Downstream
    );
    let auto = r#""typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "auto_config": {}}},"#;
    assert_eq!(cluster(auto).unwrap().protocol, UpstreamProtocol::Auto);
    let both = r#""typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "auto_config": {},
        "use_downstream_protocol_config": {}}},"#;
    assert!(cluster(both).unwrap_err().contains("mutually exclusive"));
}

#[test]
fn re2_substitutions_become_the_regex_crates() {
    assert_eq!(
        super::action::re2_substitution(r"/v2/\1/\\x$"),
        "/v2/${1}/\\x$$"
    );
}

#[test]
fn every_http_field_table_entry_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/http.md"))
        .expect("docs/http.md");
    let all = || {
        HCM_TABLES
            .iter()
            .chain(ROUTE_TABLES)
            .chain(RETRY_TABLES)
            .chain(LOG_TABLES)
            .chain(FILTER_TABLES)
            .chain(UPSTREAM_TABLES)
    };
    let rows: usize = all().map(|(_, t)| t.len()).sum();
    let tables = doc
        .split_once("## Field tables")
        .expect("a Field tables section")
        .1;
    let doc_rows = tables.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(doc_rows, rows, "docs/http.md field tables are out of date (python3 xtask/scripts/gen-field-tables.py http)");
    for (msg, table) in all() {
        for (field, how) in table.iter() {
            let want = match how {
                crate::config::walk::Field::Supported => format!("| `{field}` | supported |"),
                crate::config::walk::Field::Ignored(why) => {
                    format!("| `{field}` | ignored: {why} |")
                }
                crate::config::walk::Field::Rejected(why) => {
                    format!("| `{field}` | **rejected**: {why} |")
                }
            };
            assert!(
                tables.contains(&want),
                "{msg}.{field} is not documented as: {want}"
            );
        }
    }
}

#[test]
fn the_environment_operator_reads_a_variable_once() {
    use crate::config::http::access_log::{self, LogToken};
    let mut d = crate::config::Diagnostics::default();
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let t = access_log::parse_log_format(
        "[%ENVIRONMENT(CARGO_MANIFEST_DIR):4%|%ENVIRONMENT(PLUMB_SURELY_UNSET_VAR)%]",
        "p",
        &mut d,
    )
    .unwrap();
    let want: String = dir.chars().take(4).collect();
    assert_eq!(t, vec![LogToken::Literal(format!("[{want}|-]"))]);
    assert!(access_log::parse_log_format("%ENVIRONMENT()%", "p.f", &mut d).is_none());
    assert!(format!("{d:?}").contains("name the variable"), "{d:?}");
}

#[test]
fn access_logs_are_read_and_bad_ones_named() {
    let with = |logs: &str| {
        hcm(r#"[{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]"#).replace(
            r#""stat_prefix": "in","#,
            &format!(r#""stat_prefix": "in", "access_log": {logs},"#),
        )
    };
    let file = |extra: &str| {
        format!(
            r#"[{{"name": "envoy.access_loggers.file", "typed_config": {{"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/tmp/x.log"{extra}}}}}]"#
        )
    };
    let h = read(&with(&file(""))).unwrap();
    assert_eq!(h.access_logs.len(), 1);
    assert!(matches!(&h.access_logs[0].format, access_log::LogFormat::Text(t) if t.len() > 20));
    let cases = [
        (file(r#", "log_format": {"text_format": "%NOPE%"}"#), "unsupported command operator %NOPE%"),
        (file(r#", "log_format": {"text_format": "%REQ(a b)%"}"#), "\"a b\" is not a header name"),
        (file(r#", "log_format": {"text_format": "%RESPONSE_CODE"}"#), "unterminated command operator"),
        (file(r#", "log_format": {"text_format": "%START_TIME(%Y-%m-%d)%"}"#), "custom time formats are not supported"),
        (
            r#"[{"name": "envoy.access_loggers.http_grpc", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"}}]"#.to_string(),
            "access_log[0]: unsupported access logger",
        ),
        (
            format!(r#"[{{"filter": {{"response_flag_filter": {{"flags": ["XX"]}}}}, {}"#, &file("")[2..]),
            "filter.response_flag_filter.flags[0]: unknown response flag",
        ),
    ];
    for (logs, want) in cases {
        let e = read(&with(&logs)).unwrap_err();
        assert!(e.contains(want), "{logs}\nwant: {want}\ngot: {e}");
    }
    let mut d = crate::config::Diagnostics::default();
    let t =
        access_log::parse_log_format("a%%b %REQ(X-Y?:PATH):3%c%PROTOCOL%", "p", &mut d).unwrap();
    assert_eq!(
        t,
        vec![
            access_log::LogToken::Literal("a%b ".into()),
            access_log::LogToken::Op(access_log::LogOp::RequestHeader(
                "x-y".into(),
                Some(":path".into()),
                Some(3)
            )),
            access_log::LogToken::Literal("c".into()),
            access_log::LogToken::Op(access_log::LogOp::Protocol),
        ]
    );
    let json = read(&with(&file(
        r#", "log_format": {"json_format": {"a": "%RESPONSE_CODE%", "b": {"c": "x %PROTOCOL%"}}}"#,
    )))
    .unwrap();
    assert!(matches!(&json.access_logs[0].format, access_log::LogFormat::Json(f) if f.len() == 2));
}

#[test]
fn typed_per_filter_config_takes_local_rate_limits_and_disabled_and_refuses_faults() {
    let rl = r#"{"@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "r", "token_bucket": {"max_tokens": 2, "fill_interval": "1s"}}"#;
    let h = read(&hcm(&format!(
        r#"[{{"match": {{"prefix": "/a"}}, "route": {{"cluster": "c"}},
             "typed_per_filter_config": {{"envoy.filters.http.local_ratelimit": {rl}}}}},
            {{"match": {{"prefix": "/b"}}, "route": {{"cluster": "c"}},
             "typed_per_filter_config": {{"x": {{"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true}}}}}}]"#
    )))
    .unwrap();
    let Routes::Inline(rc) = &h.routes else {
        panic!("inline routes expected")
    };
    let routes = &rc.virtual_hosts[0].routes;
    assert!(matches!(
        &routes[0].per_filter[..],
        [(n, PerFilterConfig::LocalRateLimit(l))] if n == "envoy.filters.http.local_ratelimit" && l.bucket.is_some()
    ));
    assert_eq!(
        routes[1].per_filter,
        vec![("x".to_string(), PerFilterConfig::Disabled)]
    );
    // A per-route fault would be lost: refused with its path.
    let e = read(&hcm(
        r#"[{"match": {"prefix": "/"}, "route": {"cluster": "c"},
            "typed_per_filter_config": {"envoy.filters.http.fault": {
              "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}}]"#,
    ))
    .unwrap_err();
    assert!(
        e.contains("routes[0].typed_per_filter_config.envoy.filters.http.fault: not supported: per-route fault"),
        "{e}"
    );
    // A bad bucket inside a FilterConfig names the inner path.
    let e = read(&hcm(
        r#"[{"match": {"prefix": "/"}, "route": {"cluster": "c"},
            "typed_per_filter_config": {"rl": {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
              "config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "r", "token_bucket": {"max_tokens": 2, "fill_interval": "0.001s"}}}}}]"#,
    ))
    .unwrap_err();
    assert!(
        e.contains(
            "typed_per_filter_config.rl.config.token_bucket.fill_interval: must be at least 50ms"
        ),
        "{e}"
    );
}

#[test]
fn hash_policies_are_read_and_bad_ones_named() {
    let h = read(&hcm(
        r#"[{"match": {"prefix": "/"}, "route": {"cluster": "c", "hash_policy": [
            {"header": {"header_name": "X-User"}},
            {"cookie": {"name": "session"}, "terminal": true},
            {"connection_properties": {"source_ip": true}},
            {"query_parameter": {"name": "id"}}]}}]"#,
    ))
    .unwrap();
    let Routes::Inline(rc) = &h.routes else {
        panic!("inline routes expected")
    };
    let Action::Forward(f) = &rc.virtual_hosts[0].routes[0].action else {
        panic!("a forward route expected")
    };
    assert_eq!(
        f.hash_policy
            .iter()
            .map(|p| (&p.on, p.terminal))
            .collect::<Vec<_>>(),
        vec![
            (&HashOn::Header("x-user".into()), false),
            (&HashOn::Cookie("session".into(), None), true),
            (&HashOn::SourceIp, false),
            (&HashOn::QueryParameter("id".into()), false),
        ]
    );
    for (policy, want) in [
        (
            r#"{"cookie": {"name": "a b", "ttl": "1s"}}"#,
            "hash_policy[0].cookie.name: \"a b\" is not a valid cookie name",
        ),
        (
            r#"{"filter_state": {}}"#,
            "hash_policy[0].filter_state.key: missing required field",
        ),
        (r#"{}"#, "hash_policy[0]: exactly one of header, cookie"),
        (
            r#"{"connection_properties": {}}"#,
            "connection_properties.source_ip: must be true",
        ),
    ] {
        let e = read(&hcm(&format!(
            r#"[{{"match": {{"prefix": "/"}}, "route": {{"cluster": "c", "hash_policy": [{policy}]}}}}]"#
        )))
        .unwrap_err();
        assert!(e.contains(want), "{policy}: {e}");
    }
}
