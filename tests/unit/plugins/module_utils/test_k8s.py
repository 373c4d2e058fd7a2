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
from ansible_collections.agentguard.hardening.tests.unit.plugins.module_utils.k8s_cases import ALLOW, CASES, RESOLVED

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
FIXTURES = os.path.join(ROOT, "tests", "unit", "fixtures", "k8s")
ROLE_NAMES = {"allow": "egress_allow", "dns_servers": "egress_dns_servers", "mode": "egress_mode",
              "dns_mode": "egress_dns_mode", "families": "egress_families"}
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


def test_defaults_are_the_roles():
    with open(os.path.join(ROOT, "roles", "egress", "defaults", "main.yml")) as handle:
        defaults = yaml.safe_load(handle)
    for variable, option, default in K.ROLE_VARIABLES:
        assert defaults[variable] == default, variable


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
    for variable, option, default in K.ROLE_VARIABLES:
        module_options[option] = variables.get(variable, default)
    expected = egress_policy_errors(module_options, ROLE_NAMES)
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
            elif e["backend"] == "cilium":
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
