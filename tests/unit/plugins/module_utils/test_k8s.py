"""The Kubernetes export compiler: one policy in, exact manifests out, per backend, and the role's refusals.

The expected manifests are tests/unit/fixtures/k8s/<case>.<backend>.json, written once by the compiler
(AGENTGUARD_K8S_REGEN=1) and then read line by line; a change to the compiler that changes a manifest
fails here until the fixture is rewritten and reviewed.
"""
import ipaddress
import json
import os

import pytest
import yaml

from ansible_collections.agentguard.hardening.plugins.filter.egress_policy_errors import egress_policy_errors
from ansible_collections.agentguard.hardening.plugins.module_utils import _k8s as K
from ansible_collections.agentguard.hardening.plugins.module_utils._options import ARGUMENT_SPEC, ROLE_VARIABLES
from ansible_collections.agentguard.hardening.tests.unit.plugins.module_utils.k8s_cases import ALLOW, CASES, RESOLVED

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
FIXTURES = os.path.join(ROOT, "tests", "unit", "fixtures", "k8s")
BASE = {"egress_allow": ALLOW, "egress_dns_servers": ["198.18.0.53", "fd00:a9e:1::53"]}


def export(case):
    spec = CASES[case]
    return K.export_policies(spec["variables"], resolved=RESOLVED, **spec["options"])


def by_backend(exports):
    return dict((e["backend"], e) for e in exports)


@pytest.mark.parametrize("backend", K.BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_policy_in_exact_manifest_out(case, backend):
    manifest = by_backend(export(case))[backend]["manifest"]
    path = os.path.join(FIXTURES, "%s.%s.json" % (case, backend))
    if os.environ.get("AGENTGUARD_K8S_REGEN"):
        with open(path, "w") as handle:
            json.dump(manifest, handle, indent=2)
            handle.write("\n")
    with open(path) as handle:
        assert manifest == json.load(handle)


def test_the_cases_cover_both_families_both_dns_modes_audit_and_enforce():
    seen = set()
    for spec in CASES.values():
        v = spec["variables"]
        seen.add(("families", tuple(v.get("egress_families", ["ipv4", "ipv6"]))))
        seen.add(("dns_mode", v.get("egress_dns_mode", "pinned")))
        seen.add(("mode", v.get("egress_mode", "enforce")))
        seen.add(("dns", spec["options"].get("dns", "cluster")))
    assert seen >= {("families", ("ipv4", "ipv6")), ("families", ("ipv4",)), ("families", ("ipv6",)),
                    ("dns_mode", "pinned"), ("dns_mode", "filtering"), ("mode", "audit"), ("mode", "enforce"),
                    ("dns", "cluster"), ("dns", "servers")}


def test_an_absent_variable_takes_the_options_default(monkeypatch):
    """The export states no default of its own: ARGUMENT_SPEC's (which test_option_sources keeps equal to the
    role's defaults/main.yml)."""
    policy = K.validate_policy(BASE)
    assert (policy.mode, policy.dns_mode, policy.families, policy.dhcp) == ("enforce", "pinned", ("ipv4", "ipv6"), True)
    monkeypatch.setitem(ARGUMENT_SPEC["mode"], "default", "audit")
    monkeypatch.setitem(ARGUMENT_SPEC["families"], "default", ["ipv6"])
    policy = K.validate_policy(BASE)
    assert (policy.mode, policy.families) == ("audit", ("ipv6",))


def test_a_hosts_other_variables_are_not_read():
    hostvars = dict(BASE, egress_log_prefix="[X] ", ansible_host="192.0.2.1", egress_scope="users")
    assert K.export_policies(hostvars, "agents", resolved=RESOLVED) == K.export_policies(BASE, "agents", resolved=RESOLVED)


@pytest.mark.parametrize("options", [
    dict(egress_allow=[dict(name="api", host="exa mple.com")]),
    dict(egress_allow=[dict(name="api", host="0.0.0.0/0"), dict(name="api", host="198.18.1.1", ports=[70000])],
         egress_dns_servers=["resolver.example"]),
    dict(egress_allow=[dict(name="rates", host="openexchangerates.org", subdomains=True)]),
    dict(egress_dns_servers=[]),
    dict(egress_mode="observe", egress_families=["ipv5"], egress_dns_mode="dnssec"),
    dict(egress_allow=[dict(name="x", host="198.18.1.1", port=443)]),
])
def test_a_policy_the_role_refuses_is_refused_with_the_roles_messages(options):
    variables = dict(BASE, **options)
    module_options = dict(state="present", scope="host")
    for option in K.EXPORTED_OPTIONS:
        module_options[option] = variables.get(ROLE_VARIABLES[option])
    expected = egress_policy_errors(module_options, ROLE_VARIABLES)
    assert expected, "the case must be one the role refuses"
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(variables, "agents", resolved=RESOLVED)
    assert caught.value.errors == expected
    assert all(e.startswith("egress_") for e in caught.value.errors)


def test_filtering_without_dns_servers_is_refused_like_the_role_does():
    variables = dict(egress_allow=[dict(name="a", host="198.18.1.1")], egress_mode="audit",
                     egress_dns_mode="filtering")
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(variables, "agents")
    assert caught.value.errors == [
        "egress_dns_servers is empty: egress_dns_mode=filtering needs the upstream resolvers the local filtering "
        "resolver forwards the allowed names to."]
    # In enforce mode the module's own check says it, once.
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(dict(variables, egress_mode="enforce"), "agents")
    assert caught.value.errors == [
        "egress_dns_servers: [] is empty; enforce mode needs at least one trusted resolver (it is the only DNS "
        "destination the host may use)"]


def test_every_export_option_is_checked_and_named():
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(BASE, "Agents", pod_selector={"app": "a b", "-x": "y"}, resolved=RESOLVED,
                          backends=["calico"], dns="coredns", tls_gate="on", priority=5000, name="Egress")
    text = "\n".join(caught.value.errors)
    for start in ("namespace: 'Agents'", "name: 'Egress'", "pod_selector.app: 'a b'", "pod_selector: '-x'",
                  "dns: 'coredns'", "tls_gate: 'on'", "backends[0]: 'calico'", "priority: 5000"):
        assert start in text
    assert len(caught.value.errors) == 8


def test_the_networkpolicy_needs_the_names_addresses():
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(BASE, "agents", resolved={"inference-api": RESOLVED["inference-api"]})
    assert caught.value.errors == [
        "resolved: no addresses for currency-rates (openexchangerates.org); resolve the names through "
        "egress_dns_servers first (playbooks/export_kubernetes.yml does)",
        "resolved: no addresses for telemetry (telemetry.example.net); resolve the names through "
        "egress_dns_servers first (playbooks/export_kubernetes.yml does)"]
    # Only the NetworkPolicy needs them.
    assert [e["backend"] for e in K.export_policies(BASE, "agents", backends=["cilium", "clusternetworkpolicy"])] == [
        "cilium", "clusternetworkpolicy"]


def test_a_name_without_an_address_in_the_families_is_refused_not_opened():
    # An empty "to" would allow every destination: refuse instead.
    variables = dict(BASE, egress_families=["ipv4"])
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(variables, "agents", resolved=RESOLVED)
    assert caught.value.errors == ["resolved: telemetry (telemetry.example.net) has no address in ipv4; a rule "
                                   "without addresses would allow every destination"]
    bad = dict(RESOLVED, telemetry={"ipv4": ["fd00::1", "not-an-ip"], "ipv6": []})
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(BASE, "agents", resolved=bad, backends=["networkpolicy"])
    assert caught.value.errors[:2] == ["resolved.telemetry.ipv4: 'fd00::1' is not an ipv4 address",
                                       "resolved.telemetry.ipv4: 'not-an-ip' is not an IP address or network"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_rule_ever_lacks_a_peer(case):
    # NetworkPolicy: an egress rule without "to" allows every destination; Cilium: toPorts without a
    # To* selector is a wildcard. The compiler must never write either.
    for e in export(case):
        spec = e["manifest"]["spec"]
        for rule in spec["egress"]:
            if e["backend"] == "networkpolicy":
                assert rule.get("to")
            elif e["backend"] in ("cilium", "ciliumclusterwide"):
                assert any(rule.get(k) for k in ("toEndpoints", "toFQDNs", "toCIDRSet", "toCIDR"))
            else:
                assert rule["to"] and all(len(peer) == 1 for peer in rule["to"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_networkpolicy_holds_exactly_the_addresses_of_the_families(case):
    spec = CASES[case]
    families = spec["variables"].get("egress_families", ["ipv4", "ipv6"])
    manifest = by_backend(export(case))["networkpolicy"]["manifest"]
    cidrs = set(peer["ipBlock"]["cidr"] for rule in manifest["spec"]["egress"] for peer in rule["to"]
                if "ipBlock" in peer)
    expected = set()
    for entry in spec["variables"]["egress_allow"]:
        if entry["name"] in RESOLVED:
            addrs = [a for f in families for a in RESOLVED[entry["name"]][f]]
            expected.update(str(ipaddress.ip_network(a)) for a in addrs)
        elif "ipv%d" % ipaddress.ip_network(entry["host"]).version in families:
            expected.add(str(ipaddress.ip_network(entry["host"])))
    if spec["options"].get("dns") == "servers":
        expected.update(str(ipaddress.ip_network(s)) for s in spec["variables"]["egress_dns_servers"]
                        if "ipv%d" % ipaddress.ip_address(s).version in families)
    expected.update(str(ipaddress.ip_network(a)) for a in spec["options"].get("cluster_dns", {}).get("addresses", []))
    assert cidrs == expected


def test_cilium_dns_rules_follow_the_dns_mode():
    pinned = by_backend(export("pinned-enforce-dual-cluster"))["cilium"]["manifest"]
    assert pinned["spec"]["egress"][0]["toPorts"][0]["rules"] == {"dns": [{"matchPattern": "*"}]}
    filtering = by_backend(export("filtering-audit-ipv4-servers"))["cilium"]["manifest"]
    assert filtering["spec"]["egress"][0]["toPorts"][0]["rules"] == {"dns": [
        {"matchName": "api.openclaw.security"}, {"matchName": "openexchangerates.org"},
        {"matchPattern": "*.openexchangerates.org"}]}


def test_cilium_server_names_only_with_the_gate_enforced_and_only_on_443():
    gated = by_backend(export("filtering-audit-ipv4-servers"))["cilium"]["manifest"]["spec"]["egress"]
    assert gated[1]["toPorts"] == [{"ports": [{"port": "443", "protocol": "TCP"}],
                                    "serverNames": ["api.openclaw.security"]}]
    batch = [r for r in gated if r.get("toCIDRSet") == [{"cidr": "198.18.7.0/24"}]][0]
    assert all("serverNames" not in p for p in batch["toPorts"])
    audit = by_backend(export("filtering-enforce-ipv6-cluster"))["cilium"]["manifest"]["spec"]["egress"]
    assert not any("serverNames" in p for r in audit for p in r["toPorts"])


def test_audit_mode_is_marked_and_said():
    exports = by_backend(export("filtering-audit-ipv4-servers"))
    cilium = exports["cilium"]["manifest"]["metadata"]["annotations"]
    assert cilium["agentguard.hardening/policy-audit-mode"].startswith("required")
    assert any(row.startswith("audit mode is not a policy field") and "PolicyAuditMode=Enabled" in row
               for row in exports["cilium"]["limitations"])
    for backend in ("networkpolicy", "clusternetworkpolicy"):
        assert any(row.startswith("no audit mode") for row in exports[backend]["limitations"])
    enforce = by_backend(export("pinned-enforce-dual-cluster"))
    assert "agentguard.hardening/policy-audit-mode" not in enforce["cilium"]["manifest"]["metadata"]["annotations"]
    assert not any("audit" in row for e in enforce.values() for row in e["limitations"])


def test_limitations_name_what_this_policy_needs_and_only_that():
    addresses_only = {"egress_allow": [dict(name="batch", host="198.18.7.0/24")], "egress_dns_servers": ["198.18.0.53"]}
    rows = by_backend(K.export_policies(addresses_only, "agents"))
    assert not any(r.startswith("addresses frozen") for r in rows["networkpolicy"]["limitations"])
    assert "agentguard.hardening/resolved-through" not in rows["networkpolicy"]["manifest"]["metadata"]["annotations"]
    named = by_backend(export("pinned-enforce-dual-cluster"))
    frozen = [r for r in named["networkpolicy"]["limitations"] if r.startswith("addresses frozen")]
    assert frozen == ["addresses frozen at export time: api.openclaw.security, openexchangerates.org, "
                      "telemetry.example.net resolved through 198.18.0.53, fd00:a9e:1::53 when exported; export "
                      "and apply again when they change (the role re-resolves on every run)"]
    for e in named.values():
        assert e["limitations"][0] == K.LIMIT_UID
        assert e["manifest"]["metadata"]["annotations"]["agentguard.hardening/limitations"] == "\n".join(
            "- " + r for r in e["limitations"])
        assert not any("subdomain" in r for r in e["limitations"])
    wide = by_backend(export("filtering-audit-ipv4-servers"))
    assert any(r.startswith("no subdomain wildcard: currency-rates (openexchangerates.org)")
               for r in wide["networkpolicy"]["limitations"])
    assert any(r.startswith("one subdomain level") for r in wide["cilium"]["limitations"])
    assert any(r.startswith("no DNS filtering") for r in wide["networkpolicy"]["limitations"])


def test_cluster_network_policy_limits_are_refused_not_truncated():
    many = [dict(name="d%d" % i, host="198.18.9.%d" % i) for i in range(1, 25)]
    variables = {"egress_allow": many, "egress_dns_servers": ["198.18.0.53"]}
    assert K.export_policies(dict(variables, egress_allow=many[:23]), "agents", backends=["clusternetworkpolicy"])
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(variables, "agents", backends=["clusternetworkpolicy"])
    assert caught.value.errors == [
        "egress_allow: 24 destinations; a ClusterNetworkPolicy holds at most 25 rules (23 destinations besides "
        "the DNS and the final deny rule); leave out clusternetworkpolicy or split the allowlist"]
    single = {"egress_allow": [dict(name="intranet", host="intranet")], "egress_dns_servers": ["198.18.0.53"]}
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(single, "agents", backends=["clusternetworkpolicy"])
    assert caught.value.errors == ["egress_allow[0].host: 'intranet' has a single label; ClusterNetworkPolicy "
                                   "domainNames need a name with a dot"]
    # The other backends take it.
    assert K.export_policies(single, "agents", backends=["cilium"])


def test_the_deny_comes_last_in_the_cluster_network_policy():
    rules = by_backend(export("pinned-enforce-dual-cluster"))["clusternetworkpolicy"]["manifest"]["spec"]["egress"]
    assert [r["action"] for r in rules] == ["Accept"] * (len(rules) - 1) + ["Deny"]
    assert rules[-1]["to"] == [{"networks": ["0.0.0.0/0", "::/0"]}]


def test_cilium_ports_are_split_at_the_crd_maximum():
    ports = list(range(1000, 1045))
    variables = {"egress_allow": [dict(name="many", host="198.18.7.1", ports=ports)], "egress_dns_servers": ["198.18.0.53"]}
    rule = K.export_policies(variables, "agents", backends=["cilium"])[0]["manifest"]["spec"]["egress"][1]
    assert [len(p["ports"]) for p in rule["toPorts"]] == [40, 5]


# ---------------------------------------------------------------- host-only concepts (issue 26, item 1)

def _example_inventory():
    with open(os.path.join(ROOT, "inventories", "example", "group_vars", "agents.yml")) as handle:
        return yaml.safe_load(handle)


EXAMPLE_RESOLVED = {"openclaw-inference": {"ipv4": ["198.18.0.10"], "ipv6": ["fd00:a9e:1::10"]}}


def _rules_text(manifest):
    """The manifest without its metadata: what the CNI enforces."""
    return json.dumps(manifest["spec"])


def test_the_example_inventorys_apt_entries_reach_no_backend():
    variables = _example_inventory()
    apt = [e for e in variables["egress_allow"] if e.get("users") == ["_apt"]]
    assert [e["host"] for e in apt] == ["deb.debian.org", "security.debian.org"]
    exports = K.export_policies(variables, "finance-agents", resolved=EXAMPLE_RESOLVED, backends=K.BACKENDS)
    assert [e["backend"] for e in exports] == list(K.BACKENDS)
    for e in exports:
        assert "debian.org" not in _rules_text(e["manifest"]), e["backend"]
        assert "api.openclaw.security" in _rules_text(e["manifest"]) or e["backend"] == "networkpolicy"
        named = [i for i in e["left_out"] if "host" in i]
        assert [(i["entry"], i["host"]) for i in named] == [("egress_allow[1]", "deb.debian.org"),
                                                            ("egress_allow[2]", "security.debian.org")]
        assert all("only for users _apt on the host" in i["reason"] for i in named)
        rows = [r for r in e["limitations"] if r.startswith("left out: egress_allow[1] debian-mirror (deb.debian.org)")]
        assert len(rows) == 1
        annotations = e["manifest"]["metadata"]["annotations"]
        assert annotations["agentguard.hardening/left-out"] == "egress_allow[1], egress_allow[2], egress_dhcp"
        assert e["warnings"] == []
    # The NetworkPolicy did not even need their addresses.
    assert "198.18.0.10/32" in _rules_text(exports[0]["manifest"])


def test_user_entries_are_exported_only_on_request_and_then_with_a_warning():
    variables = _example_inventory()
    resolved = dict(EXAMPLE_RESOLVED, **{"debian-mirror": {"ipv4": ["198.18.5.1"], "ipv6": []},
                                         "debian-security": {"ipv4": ["198.18.5.2"], "ipv6": []}})
    exports = by_backend(K.export_policies(variables, "finance-agents", resolved=resolved, include_user_entries=True))
    for e in exports.values():
        assert "deb.debian.org" in _rules_text(e["manifest"]) or "198.18.5.1/32" in _rules_text(e["manifest"])
        assert e["warnings"] == [
            "widened: egress_allow[1] debian-mirror (deb.debian.org) is only for users _apt on the host; here every "
            "selected pod may reach it (include_user_entries is true)",
            "widened: egress_allow[2] debian-security (security.debian.org) is only for users _apt on the host; "
            "here every selected pod may reach it (include_user_entries is true)"]
        assert set(e["warnings"]) <= set(e["limitations"])
        assert [i["entry"] for i in e["left_out"]] == ["egress_dhcp"]
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(variables, "finance-agents", resolved=resolved, include_user_entries="yes")
    assert caught.value.errors == ["include_user_entries: 'yes' is not a boolean"]


def test_other_host_only_concepts_are_named_not_exported():
    variables = dict(BASE, egress_dns_mode="filtering", egress_tls_gate_user="gate")
    rows = by_backend(K.export_policies(variables, "agents", resolved=RESOLVED, tls_gate="enforce"))["cilium"]
    assert [i["entry"] for i in rows["left_out"]] == ["egress_dhcp", "egress_tls_gate_user", "egress_dns_mode"]
    assert "the TLS gate's own connections (user gate)" in rows["left_out"][1]["reason"]
    assert rows["limitations"][1].startswith("left out: egress_dhcp: DHCP and DHCPv6 lease renewals")
    # Nothing about them in the rules: no DHCP ports, no rule for a user.
    text = _rules_text(rows["manifest"])
    assert '"67"' not in text and '"68"' not in text and "gate" not in text
    quiet = by_backend(K.export_policies(dict(BASE, egress_dhcp=False), "agents", resolved=RESOLVED))["cilium"]
    assert quiet["left_out"] == [] and "agentguard.hardening/left-out" not in quiet["manifest"]["metadata"]["annotations"]


# ---------------------------------------------------------------- empty allowlists (item 4)

@pytest.mark.parametrize("allow", [[], [{"name": "mirror", "host": "deb.debian.org", "ports": [80], "users": ["_apt"]}]])
def test_an_allowlist_with_nothing_for_the_pods_is_refused(allow):
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(dict(BASE, egress_allow=allow), "agents", resolved=RESOLVED)
    assert len(caught.value.errors) == 1
    assert caught.value.errors[0].startswith("egress_allow: no destination is left for the pods")
    assert ("(left out: egress_allow[0])" in caught.value.errors[0]) == bool(allow)


def test_filtering_without_names_writes_no_dns_rule_never_an_empty_one():
    variables = {"egress_allow": [dict(name="batch", host="198.18.7.0/24")], "egress_dns_servers": ["198.18.0.53"],
                 "egress_dns_mode": "filtering"}
    for e in K.export_policies(variables, "agents", backends=K.BACKENDS):
        text = _rules_text(e["manifest"])
        assert '"dns"' not in text and "53" not in text and "kube-dns" not in text, e["backend"]
        assert any(r.startswith("no DNS: egress_dns_mode is filtering and no allowed destination is a name")
                   for r in e["limitations"])
    # Pinned mode keeps DNS (any name, as on the host).
    pinned = by_backend(K.export_policies(dict(variables, egress_dns_mode="pinned"), "agents"))["cilium"]
    assert pinned["manifest"]["spec"]["egress"][0]["toPorts"][0]["rules"] == {"dns": [{"matchPattern": "*"}]}


# ---------------------------------------------------------------- DNS (item 2)

def test_cilium_dns_rule_allows_the_search_list_expansions_of_the_allowed_names():
    variables = dict(BASE, egress_dns_mode="filtering")
    rule = by_backend(K.export_policies(variables, "agents", resolved=RESOLVED,
                                        cluster_dns={"search": ["corp.example"], "domain": "k8s.internal"}))["cilium"]
    selectors = rule["manifest"]["spec"]["egress"][0]["toPorts"][0]["rules"]["dns"]
    for name in ("api.openclaw.security", "openexchangerates.org", "telemetry.example.net"):
        for domain in ("agents.svc.k8s.internal", "svc.k8s.internal", "k8s.internal", "corp.example"):
            assert K.cilium_dns_allows(selectors, "%s.%s" % (name, domain))
        assert K.cilium_dns_allows(selectors, name + ".")
    assert not K.cilium_dns_allows(selectors, "api.openai.com")
    assert not K.cilium_dns_allows(selectors, "api.openai.com.agents.svc.k8s.internal")
    assert not K.cilium_dns_allows(selectors, "x.api.openclaw.security")
    # With dns servers, the pods use dnsConfig without the cluster's search list: no expansions.
    servers = by_backend(K.export_policies(variables, "agents", resolved=RESOLVED, dns="servers"))["cilium"]
    assert servers["manifest"]["spec"]["egress"][0]["toPorts"][0]["rules"]["dns"] == [
        {"matchName": "api.openclaw.security"}, {"matchName": "openexchangerates.org"},
        {"matchName": "telemetry.example.net"}]


@pytest.mark.parametrize("selectors, name, allowed", [
    ([{"matchName": "Example.COM"}], "example.com.", True),
    ([{"matchName": "example.com"}], "www.example.com", False),
    ([{"matchPattern": "*"}], "anything.at.all", True),
    ([{"matchPattern": "*.example.com"}], "a.example.com", True),
    ([{"matchPattern": "*.example.com"}], "a.b.example.com", False),
    ([{"matchPattern": "*.example.com"}], "example.com", False),
    ([{"matchPattern": "api*.example.com"}], "api-eu.example.com", True),
    ([], "example.com", False),
])
def test_the_dns_matcher_follows_ciliums_semantics(selectors, name, allowed):
    assert K.cilium_dns_allows(selectors, name) is allowed


def test_cluster_dns_is_selectable_and_node_local_dns_is_allowed():
    dns = {"namespace": "dns", "pod_selector": {"app": "coredns"}, "addresses": ["169.254.20.10"]}
    exports = by_backend(K.export_policies(BASE, "agents", resolved=RESOLVED, cluster_dns=dns, backends=K.BACKENDS))
    assert exports["networkpolicy"]["manifest"]["spec"]["egress"][0]["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dns"}},
         "podSelector": {"matchLabels": {"app": "coredns"}}},
        {"ipBlock": {"cidr": "169.254.20.10/32"}}]
    cilium = exports["cilium"]["manifest"]["spec"]["egress"]
    assert cilium[0]["toEndpoints"] == [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "dns", "k8s:app": "coredns"}}]
    assert cilium[1]["toCIDRSet"] == [{"cidr": "169.254.20.10/32"}] and cilium[1]["toPorts"] == cilium[0]["toPorts"]
    assert exports["clusternetworkpolicy"]["manifest"]["spec"]["egress"][0]["to"][1] == {"networks": ["169.254.20.10/32"]}
    assert any(r.startswith("node-local DNS: Cilium matches an address of a node") for r in exports["cilium"]["limitations"])
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(BASE, "agents", resolved=RESOLVED, cluster_dns={
            "namespace": "Kube", "pod_selector": {}, "addresses": ["node-local", "fd00::1"], "domain": "-x",
            "search": ["ok.example", "bad domain"], "upstream": 1})
    assert caught.value.errors == [
        "cluster_dns: unknown key(s) upstream; the keys are namespace, pod_selector, addresses, domain, search",
        "cluster_dns.namespace: 'Kube' is not a namespace name",
        "cluster_dns.pod_selector: the cluster resolver's pods need at least one label",
        "cluster_dns.addresses[0]: 'node-local' is not an IP address",
        "cluster_dns.domain: '-x' is not a DNS domain (the cluster domain, cluster.local)",
        "cluster_dns.search[1]: 'bad domain' is not a DNS domain",
    ]
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(dict(BASE, egress_families=["ipv4"]), "agents", resolved=RESOLVED,
                          cluster_dns={"addresses": ["fd00::1"]}, backends=["cilium"])
    assert caught.value.errors == ["cluster_dns.addresses[0]: 'fd00::1' is not in egress_families ['ipv4']"]


def test_dns_servers_outside_the_families_are_refused_not_exported_without_dns():
    variables = dict(BASE, egress_allow=ALLOW[:2], egress_dns_servers=["198.18.0.53"], egress_families=["ipv6"])
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(variables, "agents", resolved=RESOLVED, dns="servers", backends=["cilium"])
    assert caught.value.errors == ["egress_dns_servers: ['198.18.0.53'] has no address in egress_families ['ipv6']; "
                                   "with dns servers the pods could not resolve the allowed names"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_export_keeps_its_dns_path_open(case):
    spec = CASES[case]
    options = dict(spec["options"])
    policy = K.validate_policy(spec["variables"])
    if not options.get("include_user_entries"):
        policy = policy._replace(allow=tuple(d for d in policy.allow if not d.users))
    opts = {"namespace": options["namespace"], "dns": options.get("dns", "cluster"),
            "cluster_dns": K._check_cluster_dns(options.get("cluster_dns"), policy.families, [])}
    for e in export(case):
        assert K.dns_path_errors(e["backend"], e["manifest"], policy, opts) == [], e["backend"]


def _breaks(backend, mutate, variables=None, **options):
    """Errors of dns_path_errors after `mutate` broke the exported manifest."""
    variables = variables or dict(BASE, egress_dns_mode="filtering")
    options.setdefault("resolved", RESOLVED)
    exports = by_backend(K.export_policies(variables, "agents", backends=K.BACKENDS, **options))
    manifest = json.loads(json.dumps(exports[backend]["manifest"]))
    policy = K.validate_policy(variables)
    opts = {"namespace": "agents", "dns": options.get("dns", "cluster"),
            "cluster_dns": K._check_cluster_dns(options.get("cluster_dns"), policy.families, [])}
    assert K.dns_path_errors(backend, manifest, policy, opts) == []
    mutate(manifest["spec"])
    return K.dns_path_errors(backend, manifest, policy, opts)


def test_the_dns_path_check_sees_a_missing_rule_port_target_or_name():
    def drop_first(spec):
        spec["egress"].pop(0)
    for backend in K.BACKENDS:
        errors = _breaks(backend, drop_first)
        assert errors and errors[0].startswith("dns: "), backend
        assert "does not let the pods reach kube-system/k8s-app=kube-dns on UDP and TCP 53" in errors[0]

    def no_tcp(spec):
        spec["egress"][0]["ports"] = spec["egress"][0]["ports"][:1]
    assert _breaks("networkpolicy", no_tcp)

    def no_expansion(spec):
        rules = spec["egress"][0]["toPorts"][0]["rules"]["dns"]
        rules[:] = [r for r in rules if r.get("matchName") != "openexchangerates.org.svc.cluster.local"]
    assert _breaks("cilium", no_expansion) == [
        "dns: CiliumNetworkPolicy's DNS rule to kube-system/k8s-app=kube-dns refuses "
        "openexchangerates.org.svc.cluster.local, which the pods' resolver asks for openexchangerates.org"]

    def no_dns_rules(spec):
        del spec["egress"][0]["toPorts"][0]["rules"]
    assert "without rules.dns" in _breaks("ciliumclusterwide", no_dns_rules)[0]

    def deny_first(spec):
        spec["egress"].insert(0, spec["egress"].pop())
    assert _breaks("clusternetworkpolicy", deny_first)

    def other_server(spec):
        spec["egress"][0]["to"] = [{"ipBlock": {"cidr": "198.18.0.54/32"}}]
    assert _breaks("networkpolicy", other_server, dns="servers")[0].startswith(
        "dns: NetworkPolicy does not let the pods reach 198.18.0.53/32")


def test_a_failing_dns_path_check_stops_the_export(monkeypatch):
    monkeypatch.setattr(K, "_dns_selectors", lambda policy, opts, errors: [{"matchName": "api.openclaw.security"}])
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(dict(BASE, egress_dns_mode="filtering"), "agents", backends=["cilium"])
    assert caught.value.errors[0].startswith("dns: CiliumNetworkPolicy's DNS rule to kube-system/k8s-app=kube-dns "
                                             "refuses api.openclaw.security.agents.svc.cluster.local")


# ---------------------------------------------------------------- cluster-wide objects (item 3)

def test_the_cluster_wide_cilium_policy_selects_the_namespace_and_the_pods():
    e = by_backend(export("pinned-enforce-dual-cluster"))["ciliumclusterwide"]
    manifest = e["manifest"]
    assert manifest["kind"] == "CiliumClusterwideNetworkPolicy"
    assert manifest["metadata"]["name"] == "agentguard-egress-agents" and "namespace" not in manifest["metadata"]
    assert manifest["spec"]["endpointSelector"] == {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "agents",
                                                                    "k8s:app": "agent"}}
    namespaced = by_backend(export("pinned-enforce-dual-cluster"))["cilium"]["manifest"]
    assert manifest["spec"]["egress"] == namespaced["spec"]["egress"]
    assert any(r.startswith("additive: a namespaced CiliumNetworkPolicy") for r in e["limitations"])
    # Opt-in: not in the default backends.
    assert "ciliumclusterwide" not in [x["backend"] for x in K.export_policies(BASE, "agents", resolved=RESOLVED)]


# ---------------------------------------------------------------- metadata (item 4)

def test_names_stay_within_the_api_servers_limits():
    long_name = "a" * 200
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(BASE, "n" * 63, resolved=RESOLVED, name=long_name)
    assert caught.value.errors == ["name: %r makes the cluster-wide object name <name>-<namespace> 264 characters "
                                   "long; the API server takes at most 253" % long_name]
    # Only the cluster-wide objects carry <name>-<namespace>.
    assert K.export_policies(BASE, "n" * 63, resolved=RESOLVED, name=long_name, backends=["networkpolicy", "cilium"])
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(BASE, "agents", resolved=RESOLVED, name="a" * 254, backends=["cilium"])
    assert caught.value.errors[0].startswith("name: 'aaaa")
    for e in export("filtering-audit-ipv4-servers"):
        assert K.metadata_errors(e["manifest"]) == []
    broken = json.loads(json.dumps(export("pinned-enforce-dual-cluster")[0]["manifest"]))
    broken["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "x" * 64
    broken["metadata"]["name"] = "Agentguard"
    broken["metadata"]["annotations"]["agentguard.hardening/limitations"] = "x" * (256 * 1024)
    assert len(K.metadata_errors(broken)) == 3


def test_a_search_expansion_over_the_dns_name_limit_is_refused():
    variables = dict(BASE, egress_dns_mode="filtering")
    with pytest.raises(K.ExportError) as caught:
        K.export_policies(variables, "agents", resolved=RESOLVED, backends=["cilium"],
                          cluster_dns={"search": [".".join(c * 60 for c in "abcd")]})
    assert caught.value.errors[0].startswith("cluster_dns.search: 'api.openclaw.security.aaaa")
    assert "is longer than 253 characters" in caught.value.errors[0]


@pytest.mark.parametrize("families", [["ipv4", "ipv6"], ["ipv4"]])
def test_a_list_of_addresses_exports_each_of_its_networks_in_the_families(families):
    variables = {"egress_allow": [dict(name="pool", host=["198.18.7.1", "198.18.8.0/24", "fd00:a9e:7::1"])],
                 "egress_dns_servers": ["198.18.0.53"], "egress_families": families}
    exports = by_backend(K.export_policies(variables, "agents", resolved={}, backends=K.BACKENDS, dns="servers"))
    expected = {"198.18.7.1/32", "198.18.8.0/24"} | ({"fd00:a9e:7::1/128"} if "ipv6" in families else set())
    netpol = exports["networkpolicy"]["manifest"]["spec"]["egress"]
    assert set(p["ipBlock"]["cidr"] for r in netpol for p in r["to"] if "ipBlock" in p) - {"198.18.0.53/32"} == expected
    cilium = exports["cilium"]["manifest"]["spec"]["egress"]
    assert [set(c["cidr"] for c in r["toCIDRSet"]) for r in cilium if "toPorts" in r and r.get("toCIDRSet")
            and r["toPorts"][0]["ports"][0]["port"] == "443"] == [expected]
    cnp = [r for r in exports["clusternetworkpolicy"]["manifest"]["spec"]["egress"] if r["name"] == "pool"]
    assert [set(n for p in r["to"] for n in p["networks"]) for r in cnp] == [expected]
