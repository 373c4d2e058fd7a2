"""The exported manifests against the schemas their APIs publish.

- NetworkPolicy: the real Kubernetes OpenAPI schemas, offline, with kubernetes-validate (PyPI) in strict
  mode (unknown fields refused), for the Kubernetes versions README.md names.
- CiliumNetworkPolicy and ClusterNetworkPolicy are CRDs that kubernetes-validate does not ship. Their
  allowed fields are written out below by hand from the published CRD schemas (openAPIV3Schema), as
  JSON Schemas with additionalProperties: false at every level, so an unknown field fails:
    * cilium.io/v2 CiliumNetworkPolicy: cilium/cilium, pkg/k8s/apis/cilium.io/client/crds/v2/
      ciliumnetworkpolicies.yaml at commit 02904c9bb25567e06b55639622528a8b8c829f25 (main, controller-gen
      v0.19.0; toFQDNs matchPattern documents the "**." prefix);
    * policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy: kubernetes-sigs/network-policy-api,
      config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml, bundle-version
      v0.2.0, experimental channel (commit 0eec1b0e5fa92715b4c0f4c48d3c8d2913ed2159).
  Each is a subset: only the branches the exporter can write are spelled out (with the upstream types,
  enums, patterns and limits); a sibling that exists upstream but is never written (ingress, toServices,
  http rules, ...) is left out, so the check errs on the strict side. Upstream CEL rules that JSON Schema
  cannot say (ranges start < end, networks are CIDRs) are checked by hand below.
"""
import copy
import ipaddress
import os

import pytest
import yaml

# Not in the compat stage's virtualenv (ansible-core 2.19); requirements-dev.txt has both.
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with kubernetes-validate (requirements-dev.txt)")

from ansible_collections.agentguard.hardening.plugins.filter.egress_k8s_policies import egress_k8s_policies
from ansible_collections.agentguard.hardening.tests.unit.plugins.module_utils.k8s_cases import CASES, RESOLVED

# The Kubernetes versions README.md ("Kubernetes and AWX") names.
KUBERNETES_VERSIONS = ("1.35.0", "1.36.0", "1.37.0")


def obj(properties, required=(), **extra):
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    schema.update(extra)
    return schema


def arr(items, **extra):
    schema = {"type": "array", "items": items}
    schema.update(extra)
    return schema


STR = {"type": "string"}
STRING_MAP = {"type": "object", "additionalProperties": STR}
METADATA = obj({"name": STR, "namespace": STR, "labels": STRING_MAP, "annotations": STRING_MAP}, required=["name"])


def label_selector(value_pattern=None):
    value = {"type": "string"}
    if value_pattern:
        value.update(maxLength=63, pattern=value_pattern)
    return obj({
        "matchLabels": {"type": "object", "additionalProperties": value},
        "matchExpressions": arr(obj({
            "key": STR, "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
            "values": arr(STR)}, required=["key", "operator"])),
    })


# ---- cilium.io/v2 CiliumNetworkPolicy (subset of the published CRD, see the module docstring)
CILIUM_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
CILIUM_SELECTOR = label_selector(CILIUM_LABEL_VALUE)
CILIUM_FQDN = dict(obj({
    "matchName": {"type": "string", "maxLength": 255, "pattern": r"^([-a-zA-Z0-9_]+[.]?)+$"},
    "matchPattern": {"type": "string", "maxLength": 255, "pattern": r"^([-a-zA-Z0-9_*]+[.]?)+$"},
}), oneOf=[{"required": ["matchName"]}, {"required": ["matchPattern"]}])
CILIUM_PORT = obj({
    "port": {"type": "string", "pattern": r"^(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}"
                                          r"|[0-9]{1,4})|([a-zA-Z0-9]-?)*[a-zA-Z](-?[a-zA-Z0-9])*$"},
    "endPort": {"type": "integer", "minimum": 0, "maximum": 65535},
    "protocol": {"type": "string", "enum": ["TCP", "UDP", "SCTP", "VRRP", "IGMP", "ANY"]},
})
CILIUM_PORT_RULE = obj({
    "ports": arr(CILIUM_PORT, maxItems=40),
    "rules": dict(obj({"dns": arr(CILIUM_FQDN)}), oneOf=[{"required": ["http"]}, {"required": ["dns"]}]),
    "serverNames": arr(STR),
})
CILIUM_EGRESS = obj({
    "toEndpoints": arr(CILIUM_SELECTOR),
    "toFQDNs": arr(CILIUM_FQDN),
    "toCIDR": arr(STR),
    "toCIDRSet": arr(dict(obj({"cidr": STR, "except": arr(STR)}), required=["cidr"])),
    "toPorts": arr(CILIUM_PORT_RULE),
})
CILIUM_SCHEMA = obj({
    "apiVersion": {"const": "cilium.io/v2"},
    "kind": {"const": "CiliumNetworkPolicy"},
    "metadata": dict(METADATA, required=["name", "namespace"]),
    "spec": dict(obj({"description": STR, "endpointSelector": CILIUM_SELECTOR, "egress": arr(CILIUM_EGRESS)}),
                 # upstream: oneOf endpointSelector/nodeSelector, anyOf ingress/ingressDeny/egress/egressDeny
                 required=["endpointSelector", "egress"]),
}, required=["apiVersion", "kind", "metadata", "spec"])

# ---- policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy (subset, network-policy-api v0.2.0 experimental)
CNP_SELECTOR = label_selector()
CNP_PORT_NUMBER = {"type": "integer", "minimum": 1, "maximum": 65535}
CNP_PORT = dict(obj({
    "destinationPort": dict(obj({
        "number": CNP_PORT_NUMBER,
        "range": obj({"start": CNP_PORT_NUMBER, "end": CNP_PORT_NUMBER}, required=["start", "end"]),
    }), minProperties=1, maxProperties=1),
}), minProperties=1)
CNP_PROTOCOL = dict(obj({"tcp": CNP_PORT, "udp": CNP_PORT, "sctp": CNP_PORT, "destinationNamedPort": STR}),
                    minProperties=1, maxProperties=1)
CNP_PODS = obj({"namespaceSelector": CNP_SELECTOR, "podSelector": CNP_SELECTOR}, required=["podSelector"])
CNP_PEER = dict(obj({
    "domainNames": arr({"type": "string", "pattern": r"^(\*\.)?([a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+"
                                                     r"[a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$"},
                       minItems=1, maxItems=25, uniqueItems=True),
    "namespaces": CNP_SELECTOR,
    "networks": arr({"type": "string", "maxLength": 43}, minItems=1, maxItems=25, uniqueItems=True),
    "nodes": CNP_SELECTOR,
    "pods": CNP_PODS,
}), minProperties=1, maxProperties=1)
CNP_EGRESS = obj({
    "name": {"type": "string", "maxLength": 100},
    "action": {"type": "string", "enum": ["Accept", "Deny", "Pass"]},
    "to": arr(CNP_PEER, minItems=1, maxItems=25),
    "protocols": arr(CNP_PROTOCOL, minItems=1, maxItems=25),
}, required=["action", "to"])
CNP_SCHEMA = obj({
    "apiVersion": {"const": "policy.networking.k8s.io/v1alpha2"},
    "kind": {"const": "ClusterNetworkPolicy"},
    "metadata": METADATA,  # cluster-scoped: no namespace (checked below)
    "spec": obj({
        "tier": {"type": "string", "enum": ["Admin", "Baseline"]},
        "priority": {"type": "integer", "minimum": 0, "maximum": 1000},
        "subject": dict(obj({"namespaces": CNP_SELECTOR, "pods": CNP_PODS}), minProperties=1, maxProperties=1),
        "egress": arr(CNP_EGRESS, maxItems=25),
    }, required=["priority", "subject", "tier"]),
}, required=["apiVersion", "kind", "metadata", "spec"])

SCHEMAS = {"cilium": CILIUM_SCHEMA, "clusternetworkpolicy": CNP_SCHEMA}


def exports(case):
    spec = CASES[case]
    options = dict(spec["options"])
    namespace = options.pop("namespace")
    result = egress_k8s_policies(spec["variables"], namespace, resolved=RESOLVED, **options)
    return dict((e["backend"], e) for e in result["exports"])


def crd_errors(backend, manifest):
    """Schema errors plus the upstream CEL rules JSON Schema cannot state."""
    errors = [e.message for e in jsonschema.Draft7Validator(SCHEMAS[backend]).iter_errors(manifest)]
    if backend == "clusternetworkpolicy":
        if "namespace" in manifest["metadata"]:
            errors.append("a cluster-scoped object has no namespace")
        for rule in manifest["spec"]["egress"]:
            for peer in rule["to"]:
                for network in peer.get("networks", []):
                    ipaddress.ip_network(network)  # isCIDR(self)
            for protocol in rule.get("protocols", []):
                for port in protocol.values():
                    span = port.get("destinationPort", {}).get("range")
                    if span and not span["start"] < span["end"]:
                        errors.append("Start port must be less than End port")
            if rule["action"] != "Accept" and any("domainNames" in p for p in rule["to"]):
                errors.append("DomainNames is only supported for Accept rules")
    else:
        for rule in manifest["spec"]["egress"]:
            for cidr in rule.get("toCIDRSet", []):
                ipaddress.ip_network(cidr["cidr"])  # format: cidr
            for port_rule in rule.get("toPorts", []):
                for port in port_rule["ports"]:
                    if "endPort" in port and not int(port["port"]) < port["endPort"]:
                        errors.append("endPort below port")
    return errors


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("backend", sorted(SCHEMAS))
def test_crd_manifests_have_only_fields_the_published_schema_defines(case, backend):
    assert crd_errors(backend, exports(case)[backend]["manifest"]) == []


@pytest.mark.parametrize("backend, path, key", [
    ("cilium", ("spec",), "enableAuditMode"),
    ("cilium", ("spec", "egress", 1), "toFQDN"),
    ("cilium", ("spec", "egress", 1, "toPorts", 0), "serverName"),
    ("cilium", ("spec", "egress", 0, "toPorts", 0, "ports", 0), "endport"),
    ("clusternetworkpolicy", ("spec",), "mode"),
    ("clusternetworkpolicy", ("spec", "egress", 1), "ports"),
    ("clusternetworkpolicy", ("spec", "egress", 1, "to", 0), "fqdns"),
    ("clusternetworkpolicy", ("spec", "subject", "pods"), "selector"),
])
def test_an_unknown_field_fails_the_check(backend, path, key):
    manifest = copy.deepcopy(exports("filtering-audit-ipv4-servers")[backend]["manifest"])
    node = manifest
    for step in path:
        node = node[step]
    node[key] = "x"
    assert any("Additional properties are not allowed ('%s' was unexpected)" % key in e
               for e in crd_errors(backend, manifest))


def test_out_of_range_values_fail_the_check():
    cnp = copy.deepcopy(exports("pinned-enforce-dual-cluster")["clusternetworkpolicy"]["manifest"])
    cnp["spec"]["priority"] = 1001
    cnp["spec"]["egress"][1]["to"][0]["domainNames"].append("*.*.example.com")
    cnp["metadata"]["namespace"] = "agents"
    assert len(crd_errors("clusternetworkpolicy", cnp)) == 3
    cilium = copy.deepcopy(exports("pinned-enforce-dual-cluster")["cilium"]["manifest"])
    cilium["spec"]["egress"][1]["toPorts"][0]["ports"][0]["port"] = 443  # upstream: a string
    cilium["spec"]["egress"][1]["toFQDNs"][0]["matchName"] = "api example"
    assert len(crd_errors("cilium", cilium)) == 2


@pytest.fixture(name="kubernetes_validate")
def fixture_kubernetes_validate():
    return pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in requirements-dev.txt")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_networkpolicy_validates_against_the_kubernetes_schema(case, version, kubernetes_validate):
    manifest = exports(case)["networkpolicy"]["manifest"]
    # It answers with the schema it used: that version's own, not an older one.
    assert kubernetes_validate.validate(manifest, version, strict=True) == version.rsplit(".", 1)[0]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kubernetes_schema_check_refuses_a_broken_networkpolicy(version, kubernetes_validate):
    manifest = copy.deepcopy(exports("pinned-enforce-dual-cluster")["networkpolicy"]["manifest"])
    manifest["spec"]["egress"][1]["to"][0]["ipBlock"]["cidrs"] = ["198.18.0.10/32"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, version, strict=True)
    manifest = copy.deepcopy(exports("pinned-enforce-dual-cluster")["networkpolicy"]["manifest"])
    manifest["spec"]["egress"][1]["ports"][0]["port"] = [443]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, version, strict=True)


def test_the_written_files_hold_the_manifest_under_a_limitations_header():
    for export in exports("filtering-audit-ipv4-servers").values():
        header, body = export["content"].split("\n---\n", 1)
        assert yaml.safe_load(body) == export["manifest"]
        assert [line[6:] for line in header.splitlines()[2:]] == export["limitations"]
        assert all(line.startswith("#") for line in header.splitlines())


def test_fixture_dir_exists():
    here = os.path.dirname(os.path.abspath(__file__))
    assert os.path.isdir(os.path.join(here, "..", "..", "fixtures", "k8s"))
