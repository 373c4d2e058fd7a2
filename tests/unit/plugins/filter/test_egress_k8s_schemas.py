"""The exported manifests against the schemas their APIs publish.

- NetworkPolicy: the real Kubernetes OpenAPI schemas, offline, with kubernetes-validate (PyPI) in strict
  mode (unknown fields refused), for the Kubernetes versions README.md names.
- CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and ClusterNetworkPolicy: the published CRDs, vendored
  in tests/unit/fixtures/k8s/crds (README.md there names each file's repository, version and commit):
  Cilium 1.17.5 and 1.18, network-policy-api v0.2.0 (experimental channel). Each openAPIV3Schema becomes a
  strict JSON Schema (crd_schema below): an object without x-kubernetes-preserve-unknown-fields refuses
  fields it does not define, as the API server's strict field validation does. Upstream CEL rules that
  JSON Schema cannot say (ranges start < end, networks are CIDRs) are checked by hand below.
"""
import copy
import gzip
import hashlib
import ipaddress
import os
import re

import pytest
import yaml

# Not in the compat stage's virtualenv (ansible-core 2.19); requirements-dev.txt has both.
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema comes with kubernetes-validate (requirements-dev.txt)")

from ansible_collections.agentguard.hardening.plugins.filter.egress_k8s_policies import egress_k8s_policies
from ansible_collections.agentguard.hardening.tests.unit.plugins.module_utils.k8s_cases import CASES, RESOLVED

# The Kubernetes versions README.md ("Kubernetes and AWX") names.
KUBERNETES_VERSIONS = ("1.35.0", "1.36.0", "1.37.0")
CRDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures", "k8s", "crds")
# backend: {version: vendored CRD}
CRD_FILES = {
    "cilium": {"1.17": "cilium-1.17.5-ciliumnetworkpolicies.yaml.gz", "1.18": "cilium-1.18-ciliumnetworkpolicies.yaml.gz"},
    "ciliumclusterwide": {"1.17": "cilium-1.17.5-ciliumclusterwidenetworkpolicies.yaml.gz",
                          "1.18": "cilium-1.18-ciliumclusterwidenetworkpolicies.yaml.gz"},
    "clusternetworkpolicy": {"v0.2.0": "network-policy-api-v0.2.0-experimental-clusternetworkpolicies.yaml.gz"},
}
# What the API server requires of any object's metadata (apimachinery validation).
METADATA = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253,
                 "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {
            "type": "string", "maxLength": 63, "pattern": r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict(node):
    """A CRD schema node as a JSON Schema that refuses unknown fields (structural-schema pruning made an error)."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = dict((name, strict(sub)) for name, sub in value.items())
        elif key in ("items", "additionalProperties", "not"):
            out[key] = strict(value) if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict(n) for n in value]
        elif key == "description" or key.startswith("x-kubernetes-") or key == "nullable":
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if out.get("type") == "object" and "additionalProperties" not in out \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_schema(path):
    """The JSON Schema of a vendored CRD's served version, with apiVersion, kind, metadata and scope."""
    with gzip.open(os.path.join(CRDS, path), "rt") as handle:
        crd = yaml.safe_load(handle)
    version = [v for v in crd["spec"]["versions"] if v.get("storage")][0]
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": "%s/%s" % (crd["spec"]["group"], version["name"])}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    metadata = copy.deepcopy(METADATA)
    if crd["spec"]["scope"] == "Namespaced":
        metadata["required"] = ["name", "namespace"]
    else:
        metadata["not"] = {"required": ["namespace"]}
    schema["properties"]["metadata"] = metadata
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return schema


SCHEMAS = dict((backend, dict((version, crd_schema(path)) for version, path in files.items()))
               for backend, files in CRD_FILES.items())


def exports(case):
    spec = CASES[case]
    options = dict(spec["options"])
    namespace = options.pop("namespace")
    result = egress_k8s_policies(spec["variables"], namespace, resolved=RESOLVED, **options)
    return dict((e["backend"], e) for e in result["exports"])


def test_the_vendored_crds_are_the_upstream_files_the_readme_names():
    with open(os.path.join(CRDS, "README.md")) as handle:
        sums = dict(re.findall(r"^- `([^`]+)`: `([0-9a-f]{64})`$", handle.read(), re.M))
    files = sorted(f for files in CRD_FILES.values() for f in files.values())
    assert sorted(name + ".gz" for name in sums) == files
    for name, digest in sums.items():
        with gzip.open(os.path.join(CRDS, name + ".gz"), "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == digest, name


def _version_key(version):
    return tuple(int(part) for part in version.lstrip("v").split("."))


def versions_for(backend, manifest):
    """The vendored schema versions a manifest must pass: for Cilium, from its stated minimum on."""
    versions = sorted(SCHEMAS[backend], key=_version_key)
    minimum = manifest["metadata"]["annotations"].get("agentguard.hardening/minimum-cilium-version")
    if minimum:
        versions = [v for v in versions if _version_key(v) >= _version_key(minimum)]
    return versions


def crd_errors(backend, manifest, version):
    """Schema errors plus the upstream CEL rules JSON Schema cannot state."""
    errors = ["%s: %s" % ("/".join(map(str, e.absolute_path)), e.message)
              for e in jsonschema.Draft7Validator(SCHEMAS[backend][version]).iter_errors(manifest)]
    if backend == "clusternetworkpolicy":
        for rule in manifest["spec"]["egress"]:
            for peer in rule["to"]:
                for network in peer.get("networks", []):
                    try:
                        ipaddress.ip_network(network)  # isCIDR(self)
                    except ValueError:
                        errors.append("Invalid CIDR format provided")
            for protocol in rule.get("protocols", []):
                for port in protocol.values():
                    span = port.get("destinationPort", {}).get("range")
                    if span and not span["start"] < span["end"]:
                        errors.append("Start port must be less than End port")
            if any("destinationNamedPort" in p for p in rule.get("protocols", [])):
                errors.append("networks/nodes/domainNames peer cannot be set with namedPorts")
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
    manifest = exports(case)[backend]["manifest"]
    versions = versions_for(backend, manifest)
    assert versions, "no vendored schema at or above the manifest's minimum version"
    for version in versions:
        assert crd_errors(backend, manifest, version) == [], version


def test_every_vendored_schema_is_used_and_two_cilium_minors_are_checked():
    assert sorted(SCHEMAS["cilium"]) == ["1.17", "1.18"]
    used = set()
    for case in CASES:
        for backend in SCHEMAS:
            used.update((backend, v) for v in versions_for(backend, exports(case)[backend]["manifest"]))
    assert used == set((b, v) for b in SCHEMAS for v in SCHEMAS[b])


def test_the_minimum_cilium_version_follows_server_name_wildcards():
    for case in CASES:
        for backend in ("cilium", "ciliumclusterwide"):
            manifest = exports(case)[backend]["manifest"]
            names = [n for r in manifest["spec"]["egress"] for p in r["toPorts"] for n in p.get("serverNames", [])]
            expected = "1.18" if any("*" in n for n in names) else "1.17"
            assert manifest["metadata"]["annotations"]["agentguard.hardening/minimum-cilium-version"] == expected
    assert any(exports(c)["cilium"]["manifest"]["metadata"]["annotations"][
        "agentguard.hardening/minimum-cilium-version"] == "1.18" for c in CASES)


def test_the_converter_keeps_preserve_unknown_fields_open_and_int_or_string():
    schema = strict({"type": "object", "properties": {
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "closed": {"type": "object"},
        "port": {"x-kubernetes-int-or-string": True}}})
    validator = jsonschema.Draft7Validator(schema)
    assert not list(validator.iter_errors({"open": {"anything": 1}, "port": "https"}))
    assert not list(validator.iter_errors({"port": 443}))
    assert len(list(validator.iter_errors({"closed": {"anything": 1}}))) == 1
    assert len(list(validator.iter_errors({"extra": 1}))) == 1


@pytest.mark.parametrize("backend, path, key", [
    ("cilium", ("spec",), "enableAuditMode"),
    ("cilium", ("spec", "egress", 1), "toFQDN"),
    ("cilium", ("spec", "egress", 1, "toPorts", 0), "serverName"),
    ("cilium", ("spec", "egress", 0, "toPorts", 0, "ports", 0), "endport"),
    ("cilium", ("metadata",), "labelz"),
    ("ciliumclusterwide", ("spec", "egress", 0), "toEndpoint"),
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
    for version in SCHEMAS[backend]:
        assert any("Additional properties are not allowed ('%s' was unexpected)" % key in e
                   for e in crd_errors(backend, manifest, version)), version


def test_out_of_range_values_fail_the_check():
    cnp = copy.deepcopy(exports("pinned-enforce-dual-cluster")["clusternetworkpolicy"]["manifest"])
    cnp["spec"]["priority"] = 1001
    cnp["spec"]["egress"][1]["to"][0]["domainNames"].append("*.*.example.com")
    cnp["metadata"]["namespace"] = "agents"
    assert len(crd_errors("clusternetworkpolicy", cnp, "v0.2.0")) == 3
    for version in ("1.17", "1.18"):
        cilium = copy.deepcopy(exports("pinned-enforce-dual-cluster")["cilium"]["manifest"])
        cilium["spec"]["egress"][1]["toPorts"][0]["ports"][0]["port"] = 443  # upstream: a string
        cilium["spec"]["egress"][1]["toFQDNs"][0]["matchName"] = "api example"
        cilium["metadata"]["name"] = "x" * 254
        assert len(crd_errors("cilium", cilium, version)) == 3, version
        ccnp = copy.deepcopy(exports("pinned-enforce-dual-cluster")["ciliumclusterwide"]["manifest"])
        ccnp["metadata"]["namespace"] = "agents"  # cluster-scoped
        assert len(crd_errors("ciliumclusterwide", ccnp, version)) == 1, version


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
