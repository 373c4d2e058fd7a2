"""The policies the Kubernetes export tests compile, shared by the compiler's and the schema tests.

Each case is one policy in (the role's variables and the export options); its manifests out are
tests/unit/fixtures/k8s/<case>.<backend>.json, compared exactly.
"""

# Addresses as the lookup would have returned them at export time (dnsmasq answers in the lab).
RESOLVED = {
    "inference-api": {"ipv4": ["198.18.0.10", "198.18.0.9"], "ipv6": ["fd00:a9e:1::10"]},
    "currency-rates": {"ipv4": ["198.18.0.11"], "ipv6": ["fd00:a9e:1::11"]},
    "telemetry": {"ipv4": [], "ipv6": ["fd00:a9e:1::12"]},
}

ALLOW = [
    {"name": "inference-api", "host": "api.openclaw.security", "ports": [443]},
    {"name": "currency-rates", "host": "openexchangerates.org", "ports": [443]},
    {"name": "batch", "host": "198.18.7.0/24", "ports": ["8000-8010", 443]},
    {"name": "ntp", "host": "fd00:a9e:2::123", "ports": [123], "protocol": "udp"},
    {"name": "telemetry", "host": "telemetry.example.net", "ports": [4317]},
]

# Every backend, the opt-in cluster-wide Cilium object included.
ALL = ["networkpolicy", "cilium", "ciliumclusterwide", "clusternetworkpolicy"]

CASES = {
    # The role's defaults: pinned DNS, enforce, both families; DNS to kube-dns; no TLS gate.
    "pinned-enforce-dual-cluster": dict(
        variables={"egress_allow": ALLOW, "egress_dns_servers": ["198.18.0.53", "fd00:a9e:1::53"]},
        options=dict(namespace="agents", pod_selector={"app": "agent"}, backends=ALL)),
    # Filtering DNS (subdomains of the rates API), audit, IPv4 only; DNS to egress_dns_servers; TLS gate enforced.
    "filtering-audit-ipv4-servers": dict(
        variables={"egress_allow": [dict(ALLOW[0]), dict(ALLOW[1], subdomains=True), ALLOW[2], ALLOW[3]],
                   "egress_dns_servers": ["198.18.0.53", "fd00:a9e:1::53"], "egress_dns_mode": "filtering",
                   "egress_mode": "audit", "egress_families": ["ipv4"]},
        options=dict(namespace="finance-agents", pod_selector={"app.kubernetes.io/name": "agent", "tier": "llm"},
                     dns="servers", tls_gate="enforce", backends=ALL)),
    # Filtering DNS, enforce, IPv6 only, every pod of the namespace; TLS gate in audit.
    "filtering-enforce-ipv6-cluster": dict(
        variables={"egress_allow": [dict(ALLOW[0], subdomains=True), ALLOW[3], ALLOW[4]],
                   "egress_dns_servers": ["fd00:a9e:1::53"], "egress_dns_mode": "filtering",
                   "egress_mode": "enforce", "egress_families": ["ipv6"]},
        options=dict(namespace="agents", tls_gate="audit", priority=40, backends=ALL)),
    # Filtering DNS with subdomains and the TLS gate enforced (serverNames wildcards: Cilium 1.18), node-local
    # DNS beside kube-dns with a node search domain, a host service included on purpose (a warning), no DHCP.
    "filtering-enforce-dual-nodelocal": dict(
        variables={"egress_allow": [dict(ALLOW[0], subdomains=True), ALLOW[1], ALLOW[2],
                                    {"name": "mirror", "host": "198.18.8.0/24", "ports": [80], "users": ["_apt"]}],
                   "egress_dns_servers": ["198.18.0.53", "fd00:a9e:1::53"], "egress_dns_mode": "filtering",
                   "egress_dhcp": False, "egress_tls_gate_user": "tlsgate"},
        options=dict(namespace="agents", pod_selector={"app": "agent"}, tls_gate="enforce", backends=ALL,
                     include_user_entries=True,
                     cluster_dns={"addresses": ["169.254.20.10", "fd00:a9e:20::10"], "search": ["corp.example"]})),
}
