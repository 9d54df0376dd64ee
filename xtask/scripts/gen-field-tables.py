import re
s=''.join(open(f'agent/src/config/{f}.rs' if f != 'listener' else 'agent/src/config/listener/mod.rs').read() for f in ('bootstrap','extensions','cluster','endpoint','listener'))
consts=dict(re.findall(r'const (\w+): &str =\s*"((?:[^"\\]|\\.)*)";', s))
names={'BOOTSTRAP':'Bootstrap (top level)','NODE':'node','LOCALITY':'Locality','ADMIN':'admin','STATIC_RESOURCES':'static_resources','ADDRESS':'Address','SOCKET_ADDRESS':'SocketAddress','LISTENER':'Listener','FILTER_CHAIN':'FilterChain','FILTER':'Filter (network filter)','TCP_PROXY':'TcpProxy (typed_config of envoy.filters.network.tcp_proxy)','CLUSTER':'Cluster','LOAD_ASSIGNMENT':'ClusterLoadAssignment (load_assignment)','LOCALITY_LB_ENDPOINTS':'LocalityLbEndpoints (load_assignment.endpoints[])','LB_ENDPOINT':'LbEndpoint (lb_endpoints[])','ENDPOINT':'Endpoint (lb_endpoints[].endpoint)','LISTENER_FILTER':'ListenerFilter (listener_filters[])','TYPED_ANY':'typed_config of envoy.filters.listener.original_dst and envoy.filters.listener.http_inspector','BOOTSTRAP_EXTENSION':'bootstrap_extensions[]','REDIRECT':'plumb.redirect.v1.Redirect (typed_config of the plumb.redirect bootstrap extension)','CAPTURE_RULE':'capture[] of plumb.redirect','EDS_CLUSTER_CONFIG':'eds_cluster_config','CONFIG_SOURCE':'ConfigSource (eds_config, cds_config, lds_config)','DYNAMIC_RESOURCES':'dynamic_resources','API_CONFIG_SOURCE':'ApiConfigSource (dynamic_resources.ads_config)','RATE_LIMIT_SETTINGS':'RateLimitSettings (ads_config.rate_limit_settings)','GRPC_SERVICE':'GrpcService (ads_config.grpc_services[])','ENVOY_GRPC':'envoy_grpc','CIRCUIT_BREAKERS':'circuit_breakers (carried, not enforced yet)','THRESHOLDS':'circuit_breakers.thresholds[]','OUTLIER_DETECTION':'outlier_detection (carried, not enforced yet)','TRANSPORT_SOCKET':'transport_socket (ADS cluster only)','UPSTREAM_TLS_CONTEXT':'UpstreamTlsContext (typed_config of envoy.transport_sockets.tls)','COMMON_TLS_CONTEXT':'common_tls_context','CERT_VALIDATION_CONTEXT':'validation_context','TLS_CERTIFICATE':'tls_certificates[]','DATA_SOURCE':'DataSource (trusted_ca, certificate_chain, private_key)','FILTER_CHAIN_MATCH':'FilterChainMatch (filter_chains[].filter_chain_match)','CIDR_RANGE':'CidrRange (prefix_ranges[], source_prefix_ranges[], direct_source_prefix_ranges[])','CONNECTION_LIMIT':'ConnectionLimit (typed_config of envoy.filters.network.connection_limit)','LOCAL_RATELIMIT':'LocalRateLimit (typed_config of envoy.filters.network.local_ratelimit)','TOKEN_BUCKET':'token_bucket of LocalRateLimit'}
out=[]
lit=r'("(?:[^"\\]|\\.)*"|\w+)'
for m in re.finditer(r'const (\w+): FieldTable =\s*&\[(.*?)\];\n', s, re.S):
    name, body = m.group(1), m.group(2)
    out.append(f"\n### {names[name]}\n\n| field | handling |\n| --- | --- |")
    for fm in re.finditer(r'\(\s*"([@\w]+)",\s*(S|I\(\s*'+lit+r'\s*\)|R\(\s*'+lit+r'\s*\))\s*,?\s*\)', body, re.S):
        f=fm.group(1); kind=fm.group(2)
        if kind=='S': h='supported'
        else:
            arg=(fm.group(3) or fm.group(4)).strip()
            txt=consts[arg] if arg in consts else arg.strip('"')
            h=('ignored: ' if kind.startswith('I') else '**rejected**: ')+txt
        out.append(f"| `{f}` | {h} |")
print("\n".join(out))
