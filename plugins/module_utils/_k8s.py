# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Compile the egress role's allowlist into Kubernetes network policies.

Private to agentguard.hardening: no compatibility promise outside the collection.

One policy in (the role's variables, validated by the same build_policy the module runs), one
manifest out per backend:

- networking.k8s.io/v1 NetworkPolicy: ipBlocks of the addresses resolved at export time;
- cilium.io/v2 CiliumNetworkPolicy: toFQDNs, DNS through Cilium's proxy limited to the allowed names
  (and their search-list expansions, so a pod's resolver gets NXDOMAIN for them, not REFUSED);
- cilium.io/v2 CiliumClusterwideNetworkPolicy (optional): the same, cluster-wide, selecting the namespace;
- policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy (experimental draft, Admin tier): domainNames.

What only exists on a host never widens what the pods may reach: entries with `users:` (host
services such as _apt to the mirrors), DHCP, the TLS gate's and the filtering resolver's own
traffic are left out and named (include_user_entries=True keeps the entries, with a warning).

Each manifest carries, in its annotations, the list of what its backend cannot express for this
policy, what was left out, and the oldest Cilium it needs. Every manifest is checked before it is
returned: its DNS path is open (the rule it relies on lets the names it allows resolve) and its
metadata is within the API server's limits. Pure functions: resolution happens before (the caller
passes `resolved`), nothing here reads the network or the disk.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re

from collections.abc import Mapping

from ansible_collections.agentguard.hardening.plugins.module_utils._options import (
    ROLE_VARIABLES,
    filtering_upstream_error,
    placeholder_uid,
    rename_option,
    validated_policy,
)
from ansible_collections.agentguard.hardening.plugins.module_utils._policy import FAMILIES, PolicyError, literal_networks

BACKENDS = ("networkpolicy", "cilium", "ciliumclusterwide", "clusternetworkpolicy")
# What the export writes unless told otherwise; the cluster-wide Cilium object is opt-in.
DEFAULT_BACKENDS = ("networkpolicy", "cilium", "clusternetworkpolicy")
DNS_TARGETS = ("cluster", "servers")
TLS_GATES = ("off", "audit", "enforce")
TLS_PORT = "443"

# The options whose role variables the export reads (_options.ROLE_VARIABLES names them); an absent one takes
# the option's default (ARGUMENT_SPEC's, which the role's defaults/main.yml is tested equal to).
EXPORTED_OPTIONS = ("allow", "dns_servers", "dns_mode", "mode", "families", "dhcp")
EXPORTED_VARIABLES = tuple(ROLE_VARIABLES[option] for option in EXPORTED_OPTIONS)
# Read only to name what is left out (a host-only concept), never validated as an option here.
GATE_USER_VARIABLE = ("egress_tls_gate_user", "agentguard-tlsgate")

ANNOTATION = "agentguard.hardening/"
GENERATED_BY = "agentguard.hardening.egress_k8s_policies"
MANAGED_BY = {"app.kubernetes.io/managed-by": "agentguard.hardening"}
# CoreDNS as kubeadm, EKS, GKE and AKS deploy it; the pods' search list is
# <namespace>.svc.<domain> svc.<domain> <domain> (kubelet's ClusterFirst), then the node's own search domains.
CLUSTER_DNS = {"namespace": "kube-system", "pod_selector": {"k8s-app": "kube-dns"}, "addresses": [],
               "domain": "cluster.local", "search": []}
CLUSTER_DNS_KEYS = ("namespace", "pod_selector", "addresses", "domain", "search")
# The oldest Cilium whose CRD schema the tests validate the manifests against (tests/unit/fixtures/k8s/crds),
# and the release that defines wildcards in serverNames.
CILIUM_MINIMUM = "1.17"
CILIUM_SERVER_NAME_WILDCARDS = "1.18"
# API server limits: object names (DNS-1123 subdomain), label values, all annotations of an object.
MAX_NAME = 253
MAX_LABEL = 63
MAX_ANNOTATIONS_BYTES = 256 * 1024
# DNS names: 253 characters in text form (Cilium matchName/matchPattern take 255 with a trailing dot).
MAX_DNS_NAME = 253
# Cilium selects a namespace and Kubernetes labels with its own label sources.
CILIUM_NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# ClusterNetworkPolicy v1alpha2 limits (network-policy-api v0.2.0): rules, peers per rule,
# networks and domain names per peer, protocols per rule.
CNP_MAX_RULES = 25
CNP_MAX_ITEMS = 25
CNP_PRIORITY_MAX = 1000
# CiliumNetworkPolicy: ports per toPorts entry.
CILIUM_MAX_PORTS = 40

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# ClusterNetworkPolicy domainNames need at least two labels.
CNP_DOMAIN = re.compile(r"^([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?$")

LIMIT_UID = ("no uid attribution: the policy selects pods, not users or processes; a connection or a denial "
             "cannot be tied to the uid that made it (egress_scope users has no equivalent)")


LEFT_OUT_USERS = ("only for users %s on the host (a host service, an owner match): a pod has no uid to match, so "
                  "exporting it would let every selected pod reach it")
WIDENED_USERS = ("widened: %s is only for users %s on the host; here every selected pod may reach it "
                 "(include_user_entries is true)")


class ExportError(Exception):
    """Raised with every problem found; str() lists them one per line."""

    def __init__(self, errors):
        self.errors = list(errors)
        super(ExportError, self).__init__("\n".join(self.errors))


def role_options(variables):
    """Map the role's variables to egress_rules options (an absent one is None: build_policy gives it the
    option's default); (options, errors)."""
    errors = []
    if not isinstance(variables, Mapping):
        return {}, ["the policy must be a mapping of the role's variables (%s), not %r"
                    % (", ".join(EXPORTED_VARIABLES), variables)]
    # Like the role, other variables are not read (a host's variables can be passed as they are).
    options = {"state": "present", "scope": "host"}
    options.update((option, variables.get(ROLE_VARIABLES[option])) for option in EXPORTED_OPTIONS)
    if options["dns_mode"] == "filtering":
        # The local resolver's user is the role's business; any valid name passes build_policy.
        options["dns_resolver_user"] = "agentguard-dns"
    return options, errors


def validate_policy(variables):
    """The role's validation of the variables; return a Policy or raise ExportError naming the role variables."""
    options, errors = role_options(variables)
    policy = None
    if options:
        try:
            policy = validated_policy(options, placeholder_uid)
        except PolicyError as exc:
            errors.extend(rename_option(error) for error in exc.errors)
        # The role's own check beyond the module's, as the role makes it (egress_input_errors).
        errors.extend(e for e in [filtering_upstream_error(options)] if e)
    if errors:
        raise ExportError(errors)
    return policy


def _check_selector(value, where, errors):
    if not isinstance(value, dict):
        errors.append("%s: %r must be a mapping of label names to values" % (where, value))
        return {}
    selector = {}
    for key in sorted(value, key=str):
        label = value[key]
        name = key.split("/", 1)[-1] if isinstance(key, str) else None
        prefix = key.split("/", 1)[0] if isinstance(key, str) and "/" in key else None
        if (name is None or len(name) > 63 or not LABEL_NAME.match(name)
                or (prefix is not None and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)))):
            errors.append("%s: %r is not a valid label name" % (where, key))
            continue
        if isinstance(label, bool) or not isinstance(label, (str, int)) or len(str(label)) > 63 \
                or not LABEL_VALUE.match(str(label)):
            errors.append("%s.%s: %r is not a valid label value (at most 63 letters, digits, '-', '_', '.')"
                          % (where, key, label))
            continue
        selector[str(key)] = str(label)
    return selector


def _check_choice(value, choices, where, errors):
    if value not in choices:
        errors.append("%s: %r is not one of %s" % (where, value, ", ".join(choices)))
        return choices[0]
    return value


def _addresses(dest, resolved, families, errors):
    """{family: [cidr, ...]} of one destination, sorted; names from `resolved`."""
    out = dict((family, []) for family in families)
    if dest.kind != "name":
        for family, nets in literal_networks(dest, families).items():
            out[family] = [str(n) for n in sorted(ipaddress.ip_network(c) for c in nets)]
        return out
    entry = (resolved or {}).get(dest.name)
    if not isinstance(entry, dict):
        errors.append("resolved: no addresses for %s (%s); resolve the names through egress_dns_servers "
                      "first (playbooks/export_kubernetes.yml does)" % (dest.name, dest.host))
        return out
    for family in families:
        nets = set()
        for address in entry.get(family) or []:
            try:
                net = ipaddress.ip_network(str(address), strict=True)
            except ValueError:
                errors.append("resolved.%s.%s: %r is not an IP address or network" % (dest.name, family, address))
                continue
            if "ipv%d" % net.version != family or net.prefixlen == 0:
                errors.append("resolved.%s.%s: %r is not an %s address" % (dest.name, family, address, family))
                continue
            nets.add(net)
        out[family] = [str(n) for n in sorted(nets)]
    if not any(out.values()):
        errors.append("resolved: %s (%s) has no address in %s; a rule without addresses would allow "
                      "every destination" % (dest.name, dest.host, " or ".join(families)))
    return out


def _port_range(spec):
    bounds = spec.split(":")
    return int(bounds[0]), int(bounds[-1])


def _chunks(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def _names_of(dest):
    """DNS names a destination covers, as (exact name, subdomain pattern or None)."""
    return dest.host, ("*." + dest.host) if dest.subdomains else None


# ---------------------------------------------------------------- host-only concepts

def _host_only(policy, variables, opts):
    """(destinations the pods get, what is left out as dicts, warnings): a host concept never widens the pods."""
    kept, left_out, warnings = [], [], []
    for index, dest in enumerate(policy.allow):  # validated: one destination per egress_allow entry, in order
        if not dest.users:
            kept.append(dest)
            continue
        users = ", ".join(u.name for u in dest.users)
        entry = "egress_allow[%d] %s (%s)" % (index, dest.name, dest.host)
        if opts["include_user_entries"]:
            kept.append(dest)
            warnings.append(WIDENED_USERS % (entry, users))
        else:
            left_out.append({"entry": "egress_allow[%d]" % index, "name": dest.name, "host": dest.host,
                             "reason": LEFT_OUT_USERS % users})
    if policy.dhcp:
        left_out.append({"entry": "egress_dhcp", "reason": "DHCP and DHCPv6 lease renewals are the host's; a pod's "
                                                           "address comes from the CNI"})
    if opts["tls_gate"] != "off":
        left_out.append({"entry": "egress_tls_gate_user", "name": opts["gate_user"],
                         "reason": "the TLS gate's own connections (user %s) to the gated destinations: no gate "
                                   "process runs in the cluster" % opts["gate_user"]})
    if policy.dns_mode == "filtering":
        left_out.append({"entry": "egress_dns_mode", "reason": "the local filtering resolver's own DNS to "
                                                               "egress_dns_servers (a host process): the pods ask "
                                                               "the resolver of the export's dns option"})
    return kept, left_out, warnings


def _left_out_row(item):
    what = item["entry"]
    if "host" in item:
        what = "%s %s (%s)" % (what, item["name"], item["host"])
    return "left out: %s: %s" % (what, item["reason"])


# ---------------------------------------------------------------- DNS

def search_domains(opts):
    """The pods' search list with dnsPolicy ClusterFirst: kubelet's three, then the nodes' (cluster_dns.search)."""
    domain = opts["cluster_dns"]["domain"]
    return ["%s.svc.%s" % (opts["namespace"], domain), "svc.%s" % domain, domain] + list(opts["cluster_dns"]["search"])


def _fqdn(name):
    return name.lower().rstrip(".") + "."


def cilium_dns_allows(selectors, qname):
    """Whether Cilium's DNS proxy lets `qname` through rules.dns `selectors` (its matchName/matchPattern semantics).

    matchName: the name, case-insensitive, with or without the final dot. matchPattern: "*" alone matches every
    name; otherwise each "*" matches zero or more DNS characters within one label (never a dot).
    """
    query = _fqdn(qname)
    for selector in selectors:
        if "matchName" in selector and _fqdn(selector["matchName"]) == query:
            return True
        if "matchPattern" in selector:
            pattern = selector["matchPattern"].lower().strip()
            if pattern.rstrip(".") == "*":
                return True
            regex = "^" + re.escape(_fqdn(pattern)).replace(r"\*", "[-a-z0-9_]*") + "$"
            if re.match(regex, query):
                return True
    return False


def _dns_selectors(policy, opts, errors):
    """rules.dns of the Cilium DNS rule: pinned, any name; filtering, the allowed names and their search expansions."""
    if policy.dns_mode != "filtering":
        return [{"matchPattern": "*"}]
    exact, expanded = [], []
    search = search_domains(opts) if opts["dns"] == "cluster" else []
    for dest in policy.allow:
        if dest.kind != "name":
            continue
        name, pattern = _names_of(dest)
        exact.append({"matchName": name})
        if pattern:
            exact.append({"matchPattern": pattern})
        for domain in search:
            for key, value in (("matchName", name), ("matchPattern", pattern)):
                if value is None:
                    continue
                full = "%s.%s" % (value, domain)
                if len(full) > MAX_DNS_NAME:
                    errors.append("cluster_dns.search: %r (the search-list expansion of %s) is longer than %d "
                                  "characters; shorten the search domains or the name"
                                  % (full, dest.host, MAX_DNS_NAME))
                    continue
                if {key: full} not in expanded:
                    expanded.append({key: full})
    return exact + expanded


def _expected_dns_targets(policy, opts):
    """What the pods must reach on UDP and TCP 53: ("pods", namespace, labels) and ("cidr", network) items."""
    if opts["dns"] == "cluster":
        targets = [("pods", opts["cluster_dns"]["namespace"], tuple(sorted(opts["cluster_dns"]["pod_selector"].items())))]
        targets += [("cidr", c) for c in _family_cidrs(opts["cluster_dns"]["addresses"], policy.families)]
        return targets
    return [("cidr", c) for c in _family_cidrs(policy.dns_servers, policy.families)]


def _ports53(ports):
    seen = set()
    for port in ports:
        if str(port.get("port")) == "53" and "endPort" not in port:
            seen.add(str(port.get("protocol", "TCP")).upper())
    return seen >= {"UDP", "TCP"}


def _reachable_dns(backend, manifest):
    """(targets reachable on UDP and TCP 53, the DNS proxy's selectors per target or None) of one manifest."""
    spec = manifest["spec"]
    found = {}
    if backend == "networkpolicy":
        for rule in spec.get("egress", []):
            if not _ports53(rule.get("ports", [])):
                continue
            for peer in rule.get("to", []):
                if "ipBlock" in peer and not peer["ipBlock"].get("except"):
                    found[("cidr", peer["ipBlock"]["cidr"])] = None
                elif "podSelector" in peer:
                    ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get(NAMESPACE_NAME_LABEL)
                    found[("pods", ns, tuple(sorted(peer["podSelector"].get("matchLabels", {}).items())))] = None
    elif backend in ("cilium", "ciliumclusterwide"):
        for rule in spec.get("egress", []):
            for port_rule in rule.get("toPorts", []):
                if not _ports53(port_rule.get("ports", [])):
                    continue
                selectors = port_rule.get("rules", {}).get("dns")
                for endpoint in rule.get("toEndpoints", []):
                    labels = dict(endpoint.get("matchLabels", {}))
                    ns = labels.pop(CILIUM_NAMESPACE_LABEL, None)
                    pods = tuple(sorted((k[4:] if k.startswith("k8s:") else k, v) for k, v in labels.items()))
                    found[("pods", ns, pods)] = selectors
                for cidr in rule.get("toCIDRSet", []):
                    if not cidr.get("except"):
                        found[("cidr", cidr["cidr"])] = selectors
    else:
        for rule in spec.get("egress", []):
            if rule["action"] == "Deny":
                break  # rules run in order: what comes after the deny never applies
            protocols = rule.get("protocols", [])
            udp = {"number": 53} in [p.get("udp", {}).get("destinationPort") for p in protocols]
            tcp = {"number": 53} in [p.get("tcp", {}).get("destinationPort") for p in protocols]
            if rule["action"] != "Accept" or not (udp and tcp):
                continue
            for peer in rule["to"]:
                for network in peer.get("networks", []):
                    found[("cidr", network)] = None
                if "pods" in peer:
                    ns = peer["pods"].get("namespaceSelector", {}).get("matchLabels", {}).get(NAMESPACE_NAME_LABEL)
                    found[("pods", ns, tuple(sorted(peer["pods"]["podSelector"].get("matchLabels", {}).items())))] = None
    return found


def dns_path_errors(backend, manifest, policy, opts):
    """What in `manifest` would block the DNS path the policy relies on; [] when the path is open.

    The policy relies on DNS when it allows a name: the pods must reach every DNS target of the export's dns
    option on UDP and TCP 53, and with Cilium the DNS proxy must let through each allowed name, a subdomain of
    a subdomains entry and, with the cluster resolver, each search-list expansion the pods' resolver asks first.
    """
    names = [d for d in policy.allow if d.kind == "name"]
    if not names:
        return []
    errors = []
    kind = manifest.get("kind", backend)
    found = _reachable_dns(backend, manifest)
    expected = _expected_dns_targets(policy, opts)
    if not expected:
        errors.append("dns: %s has no DNS target in egress_families %s; the pods could not resolve %s"
                      % (kind, list(policy.families), names[0].host))
    for target in expected:
        if target not in found:
            errors.append("dns: %s does not let the pods reach %s on UDP and TCP 53; the names it allows (%s, ...) "
                          "could not be resolved" % (kind, _target_text(target), names[0].host))
            continue
        selectors = found[target]
        if backend not in ("cilium", "ciliumclusterwide"):
            continue
        if selectors is None:
            errors.append("dns: %s sends DNS to %s without rules.dns, so Cilium's DNS proxy never sees the answers "
                          "and toFQDNs allows nothing" % (kind, _target_text(target)))
            continue
        search = search_domains(opts) if opts["dns"] == "cluster" else []
        for dest in names:
            probes = [dest.host] + (["sub." + dest.host] if dest.subdomains else [])
            for probe in list(probes):
                probes += ["%s.%s" % (probe, domain) for domain in search]
            refused = [q for q in probes if not cilium_dns_allows(selectors, q)]
            if refused:
                errors.append("dns: %s's DNS rule to %s refuses %s, which the pods' resolver asks for %s"
                              % (kind, _target_text(target), ", ".join(refused), dest.host))
    return errors


def _target_text(target):
    if target[0] == "cidr":
        return target[1]
    return "%s/%s" % (target[1], ",".join("%s=%s" % kv for kv in target[2]))


# ---------------------------------------------------------------- metadata

def metadata_errors(manifest):
    """Where the manifest's metadata exceeds what the API server accepts; [] when it fits."""
    errors = []
    meta = manifest.get("metadata", {})
    kind = manifest.get("kind", "?")
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > MAX_NAME or not DNS1123_SUBDOMAIN.match(name):
        errors.append("metadata.name: %s %r is not a DNS-1123 subdomain of at most %d characters" % (kind, name, MAX_NAME))
    if "namespace" in meta and (len(meta["namespace"]) > MAX_LABEL or not DNS1123_LABEL.match(meta["namespace"])):
        errors.append("metadata.namespace: %r is not a DNS-1123 label of at most %d characters"
                      % (meta["namespace"], MAX_LABEL))
    _check_selector(meta.get("labels", {}), "metadata.labels", errors)
    annotations = meta.get("annotations", {})
    _check_selector(dict((k, "") for k in annotations), "metadata.annotations", errors)
    size = sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        errors.append("metadata.annotations: %d bytes; the API server takes at most %d" % (size, MAX_ANNOTATIONS_BYTES))
    return errors


# ---------------------------------------------------------------- limitations

def _limitations(backend, policy, opts, resolved_through, left_out=(), warnings=()):
    rows = [LIMIT_UID]
    rows.extend(_left_out_row(item) for item in left_out)
    rows.extend(warnings)
    named = [d for d in policy.allow if d.kind == "name"]
    wide = [d for d in named if d.subdomains]
    audit = policy.mode == "audit"
    gate = opts["tls_gate"]
    if backend == "networkpolicy":
        rows.append("no deny log: NetworkPolicy has no logging; denied attempts are not written as rate-limited "
                    "'%s' lines (some CNIs log drops with their own tools)" % "[EGRESS-DENIED]")
        if audit:
            rows.append("no audit mode (egress_mode is audit): NetworkPolicy always enforces; this manifest denies "
                        "everything else as soon as it is applied")
        if named:
            rows.append("addresses frozen at export time: %s resolved through %s when exported; export and apply "
                        "again when they change (the role re-resolves on every run)"
                        % (", ".join(d.host for d in named), ", ".join(resolved_through) or "the given answers"))
        if wide:
            rows.append("no subdomain wildcard: %s allow only the exported addresses of the names themselves, "
                        "not their subdomains" % ", ".join("%s (%s)" % (d.name, d.host) for d in wide))
        if policy.dns_mode == "filtering":
            rows.append("no DNS filtering (egress_dns_mode is filtering): the pods may ask the allowed resolver "
                        "any name, so DNS tunnelling through it stays open")
        if gate != "off":
            rows.append("no TLS gate (tls_gate is %s): server names are not checked" % gate)
        rows.append("additive and namespaced: another NetworkPolicy (or CNI policy) that selects these pods adds to "
                    "this allowlist, and anyone who may edit NetworkPolicies in %s can add one; the Admin tier of "
                    "the clusternetworkpolicy backend outranks it" % opts["namespace"])
    elif backend in ("cilium", "ciliumclusterwide"):
        rows.append("no deny log: denied attempts are Hubble flow events (hubble observe --verdict DROPPED), "
                    "not rate-limited '[EGRESS-DENIED]' kernel log lines")
        if audit:
            rows.append("audit mode is not a policy field (egress_mode is audit): enable Cilium's policy audit mode "
                        "for the selected pods before applying (cilium-dbg endpoint config <id> "
                        "PolicyAuditMode=Enabled, or Helm policyAuditMode=true for the cluster); without it this "
                        "policy enforces. The annotation %spolicy-audit-mode marks it" % ANNOTATION)
        if wide:
            rows.append("one subdomain level: matchPattern '*.<name>' matches a.<name>, not a.b.<name> "
                        "(dnsmasq in filtering mode allows every depth): %s" % ", ".join(d.host for d in wide))
        if named and set(policy.families) != set(FAMILIES):
            rows.append("both families for names: toFQDNs allows every address a name resolves to, IPv4 and IPv6; "
                        "egress_families %s limits only literal addresses and DNS servers" % list(policy.families))
        if gate == "audit":
            rows.append("no TLS gate audit: serverNames always enforce, so they are left out (tls_gate is audit)")
        if gate == "enforce":
            bare = [d for d in policy.allow if d.kind != "name" and TLS_PORT in d.ports and d.protocol == "tcp"]
            if bare:
                rows.append("no server name for addresses: %s on port 443 %s no serverNames check"
                            % (", ".join(d.name for d in bare), "gets" if len(bare) == 1 else "get"))
        if any("*" in n for d in named for n in _names_of(d) if n) and gate == "enforce":
            rows.append("serverNames wildcards need Cilium %s or later (the annotation %sminimum-cilium-version "
                        "says so)" % (CILIUM_SERVER_NAME_WILDCARDS, ANNOTATION))
        if named and policy.dns_mode == "filtering":
            rows.append("DNS reject: Cilium's DNS proxy answers a name outside rules.dns with REFUSED (agent flag "
                        "--tofqdns-dns-reject-response-code, default refused; nameError answers NXDOMAIN). glibc "
                        "and musl stop their search list at REFUSED (musl then fails the lookup)")
            if opts["dns"] == "cluster":
                rows.append("search list: rules.dns also allows each allowed name followed by %s (the pods' search "
                            "list with ndots:5), so the cluster resolver answers them NXDOMAIN and the search goes "
                            "on to the name itself; node search domains beyond these go in cluster_dns.search. "
                            "Or give the pods dnsConfig options ndots: 1, or use names with a final dot"
                            % ", ".join(search_domains(opts)))
        if backend == "cilium":
            rows.append("additive and namespaced: another CiliumNetworkPolicy or NetworkPolicy that selects these pods "
                        "adds to this allowlist, and anyone who may edit policies in %s can add one; the "
                        "ciliumclusterwide backend keeps this one out of their reach" % opts["namespace"])
        else:
            rows.append("additive: a namespaced CiliumNetworkPolicy or NetworkPolicy that selects these pods still "
                        "adds to this allowlist (Cilium allow rules are a union); being cluster-wide keeps a "
                        "namespace admin from editing or deleting this one, not from adding another: restrict who "
                        "may write policies in %s (RBAC), or use the clusternetworkpolicy Admin tier, whose Deny "
                        "outranks namespaced policies" % opts["namespace"])
    else:
        rows.append("experimental: policy.networking.k8s.io/v1alpha2 is a draft (network-policy-api v0.2.0, "
                    "experimental channel); few CNIs implement domainNames")
        rows.append("no deny log: the API defines no logging; denied attempts are not written as rate-limited "
                    "'[EGRESS-DENIED]' lines")
        if audit:
            rows.append("no audit mode (egress_mode is audit): the Deny rule enforces as soon as it is applied")
        if named and policy.dns_mode == "filtering":
            rows.append("no DNS filtering (egress_dns_mode is filtering): domainNames allow connections, not "
                        "lookups; the pods may ask the resolver any name, so DNS tunnelling stays open")
        if named and set(policy.families) != set(FAMILIES):
            rows.append("both families for names: domainNames allow every address a name resolves to; "
                        "egress_families %s limits only literal addresses and DNS servers" % list(policy.families))
        if gate != "off":
            rows.append("no TLS gate (tls_gate is %s): server names are not checked" % gate)
        rows.append("precedence: ClusterNetworkPolicies of the Admin tier with a lower priority number run first "
                    "and can accept what this one denies")
    if policy.dns_mode == "filtering" and not named:
        rows.append("no DNS: egress_dns_mode is filtering and no allowed destination is a name, so the pods get no "
                    "DNS at all (the host's filtering resolver would answer no name either)")
    elif opts["dns"] == "cluster":
        labels = ",".join("%s=%s" % kv for kv in sorted(opts["cluster_dns"]["pod_selector"].items()))
        local = opts["cluster_dns"]["addresses"]
        rows.append("DNS goes to the cluster resolver (%s/%s%s), which forwards to its own upstream servers, not to "
                    "egress_dns_servers" % (opts["cluster_dns"]["namespace"], labels,
                                            " and node-local DNS at %s" % ", ".join(local) if local else ""))
        if local and backend in ("cilium", "ciliumclusterwide"):
            rows.append("node-local DNS: Cilium matches an address of a node as the host entity, not as a CIDR; "
                        "the toCIDRSet rule for %s is only used when node-local DNS runs as pods (Cilium's "
                        "local redirect policy: select those pods with cluster_dns.pod_selector)" % ", ".join(local))
    else:
        rows.append("DNS only to egress_dns_servers: the pods must use them (dnsPolicy: None with dnsConfig "
                    "nameservers); the cluster resolver is denied")
    return rows


def _metadata(name, namespace, policy, limitations, extra=None):
    annotations = {
        ANNOTATION + "generated-by": GENERATED_BY,
        ANNOTATION + "egress-mode": policy.mode,
        ANNOTATION + "dns-mode": policy.dns_mode,
        ANNOTATION + "limitations": "\n".join("- " + row for row in limitations),
    }
    annotations.update(extra or {})
    meta = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = dict(MANAGED_BY)
    meta["annotations"] = annotations
    return meta


# ---------------------------------------------------------------- NetworkPolicy

def _np_ports(dest):
    ports = []
    for spec in dest.ports:
        low, high = _port_range(spec)
        port = {"protocol": dest.protocol.upper(), "port": low}
        if high != low:
            port["endPort"] = high
        ports.append(port)
    return ports


def _networkpolicy(policy, opts, addresses, limitations):
    egress = []
    dns_ports = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    if not _needs_dns(policy):
        pass
    elif opts["dns"] == "cluster":
        egress.append({"to": [{
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: opts["cluster_dns"]["namespace"]}},
            "podSelector": {"matchLabels": dict(opts["cluster_dns"]["pod_selector"])},
        }] + [{"ipBlock": {"cidr": cidr}} for cidr in _family_cidrs(opts["cluster_dns"]["addresses"], policy.families)],
            "ports": dns_ports})
    else:
        servers = _family_cidrs(policy.dns_servers, policy.families)
        if servers:
            egress.append({"to": [{"ipBlock": {"cidr": cidr}} for cidr in servers], "ports": dns_ports})
    for dest in policy.allow:
        cidrs = [c for family in policy.families for c in addresses[dest.name][family]]
        if not cidrs:
            continue  # a family left out stays locked down; never a rule without peers (that allows all)
        egress.append({"to": [{"ipBlock": {"cidr": cidr}} for cidr in cidrs], "ports": _np_ports(dest)})
    extra = {}
    if any(d.kind == "name" for d in policy.allow):
        extra[ANNOTATION + "resolved-through"] = ", ".join(opts["resolved_through"])
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(opts["name"], opts["namespace"], policy, limitations, extra),
        "spec": {
            "podSelector": {"matchLabels": dict(opts["pod_selector"])} if opts["pod_selector"] else {},
            "policyTypes": ["Egress"],
            "egress": egress,
        },
    }


def _family_cidrs(addresses, families):
    cidrs = []
    for address in addresses:
        net = ipaddress.ip_network(address)
        if "ipv%d" % net.version in families:
            cidrs.append(str(net))
    return cidrs


def _needs_dns(policy):
    """Pinned mode lets the pods ask any name (as the host may); filtering mode, only the allowed names: none, no DNS."""
    return policy.dns_mode != "filtering" or any(d.kind == "name" for d in policy.allow)


# ---------------------------------------------------------------- CiliumNetworkPolicy

def _cilium_port_rules(dest, server_names):
    """toPorts of one destination: port 443/tcp carries serverNames when the TLS gate enforces."""
    plain, tls = [], []
    for spec in dest.ports:
        low, high = _port_range(spec)
        port = {"port": str(low), "protocol": dest.protocol.upper()}
        if high != low:
            port["endPort"] = high
        (tls if server_names and spec == TLS_PORT and dest.protocol == "tcp" else plain).append(port)
    rules = [{"ports": chunk} for chunk in _chunks(plain, CILIUM_MAX_PORTS)]
    if tls:
        rules.append({"ports": tls, "serverNames": list(server_names)})
    return rules


def _cilium(policy, opts, limitations, errors, clusterwide=False):
    # pinned: any name may be asked (the role's pinned mode); filtering: only the allowed names (and expansions).
    dns_ports = {"ports": [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}],
                 "rules": {"dns": _dns_selectors(policy, opts, errors)}}
    egress = []
    if not _needs_dns(policy):
        pass  # never rules.dns: [] (Cilium versions read an empty list differently)
    elif opts["dns"] == "cluster":
        labels = {CILIUM_NAMESPACE_LABEL: opts["cluster_dns"]["namespace"]}
        labels.update(("k8s:" + k, v) for k, v in opts["cluster_dns"]["pod_selector"].items())
        egress.append({"toEndpoints": [{"matchLabels": labels}], "toPorts": [dns_ports]})
        local = _family_cidrs(opts["cluster_dns"]["addresses"], policy.families)
        if local:
            egress.append({"toCIDRSet": [{"cidr": cidr} for cidr in local], "toPorts": [dns_ports]})
    else:
        servers = _family_cidrs(policy.dns_servers, policy.families)
        if servers:
            egress.append({"toCIDRSet": [{"cidr": cidr} for cidr in servers], "toPorts": [dns_ports]})
    for dest in policy.allow:
        if dest.kind == "name":
            exact, pattern = _names_of(dest)
            selectors = [{"matchName": exact}] + ([{"matchPattern": pattern}] if pattern else [])
            server_names = [exact] + ([pattern] if pattern else []) if opts["tls_gate"] == "enforce" else []
            egress.append({"toFQDNs": selectors, "toPorts": _cilium_port_rules(dest, server_names)})
        else:
            cidrs = [c for family, c in dest.networks if family in policy.families]
            if cidrs:
                # Never toPorts alone: Cilium reads a rule without peers as "every destination".
                egress.append({"toCIDRSet": [{"cidr": c} for c in cidrs], "toPorts": _cilium_port_rules(dest, [])})
    wildcards = any("*" in n for r in egress for p in r["toPorts"] for n in p.get("serverNames", []))
    extra = {ANNOTATION + "minimum-cilium-version": CILIUM_SERVER_NAME_WILDCARDS if wildcards else CILIUM_MINIMUM}
    if policy.mode == "audit":
        extra[ANNOTATION + "policy-audit-mode"] = "required: enable Cilium's policy audit mode for these pods"
    if clusterwide:
        # Cluster-wide: the namespace is part of the selector (Cilium's label source for it).
        labels = {CILIUM_NAMESPACE_LABEL: opts["namespace"]}
        labels.update(("k8s:" + k, v) for k, v in opts["pod_selector"].items())
        return {
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": _metadata(opts["cluster_name"], None, policy, limitations, extra),
            "spec": {"endpointSelector": {"matchLabels": labels}, "egress": egress},
        }
    selector = {"matchLabels": dict(opts["pod_selector"])} if opts["pod_selector"] else {}
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": _metadata(opts["name"], opts["namespace"], policy, limitations, extra),
        "spec": {"endpointSelector": selector, "egress": egress},
    }


# ---------------------------------------------------------------- ClusterNetworkPolicy

def _cnp_protocols(dest):
    protocols = []
    for spec in dest.ports:
        low, high = _port_range(spec)
        port = {"number": low} if low == high else {"range": {"start": low, "end": high}}
        protocols.append({dest.protocol: {"destinationPort": port}})
    return protocols


def _cnp_networks(cidrs):
    return [{"networks": chunk} for chunk in _chunks(cidrs, CNP_MAX_ITEMS)]


def _clusternetworkpolicy(policy, opts, limitations, errors):
    egress = []
    dns_protocols = [{"udp": {"destinationPort": {"number": 53}}}, {"tcp": {"destinationPort": {"number": 53}}}]
    if not _needs_dns(policy):
        pass
    elif opts["dns"] == "cluster":
        local = _family_cidrs(opts["cluster_dns"]["addresses"], policy.families)
        egress.append({"name": "dns", "action": "Accept", "to": [{"pods": {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: opts["cluster_dns"]["namespace"]}},
            "podSelector": {"matchLabels": dict(opts["cluster_dns"]["pod_selector"])},
        }}] + _cnp_networks(local), "protocols": dns_protocols})
    else:
        servers = _family_cidrs(policy.dns_servers, policy.families)
        if servers:
            egress.append({"name": "dns", "action": "Accept", "to": _cnp_networks(servers), "protocols": dns_protocols})
    for index, dest in enumerate(policy.allow):
        if len(dest.ports) > CNP_MAX_ITEMS:
            errors.append("egress_allow[%d].ports: %d ports; a ClusterNetworkPolicy rule holds at most %d"
                          % (index, len(dest.ports), CNP_MAX_ITEMS))
            continue
        if dest.kind == "name":
            if not CNP_DOMAIN.match(dest.host):
                errors.append("egress_allow[%d].host: %r has a single label; ClusterNetworkPolicy domainNames need "
                              "a name with a dot" % (index, dest.host))
                continue
            exact, pattern = _names_of(dest)
            peers = [{"domainNames": [exact] + ([pattern] if pattern else [])}]
        else:
            cidrs = [c for family, c in dest.networks if family in policy.families]
            if not cidrs:
                continue
            peers = _cnp_networks(cidrs)
        egress.append({"name": dest.name, "action": "Accept", "to": peers, "protocols": _cnp_protocols(dest)})
    # domainNames only accept: the allowlist needs the deny after them (the draft says so).
    egress.append({"name": "deny-everything-else", "action": "Deny",
                   "to": [{"networks": ["0.0.0.0/0", "::/0"]}]})
    if len(egress) > CNP_MAX_RULES:
        errors.append("egress_allow: %d destinations; a ClusterNetworkPolicy holds at most %d rules (%d destinations "
                      "besides the DNS and the final deny rule); leave out clusternetworkpolicy or split the allowlist"
                      % (len(policy.allow), CNP_MAX_RULES, CNP_MAX_RULES - 2))
    namespace_selector = {"matchLabels": {NAMESPACE_NAME_LABEL: opts["namespace"]}}
    pod_selector = {"matchLabels": dict(opts["pod_selector"])} if opts["pod_selector"] else {}
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": _metadata(opts["cluster_name"], None, policy, limitations, {
            ANNOTATION + "experimental": "policy.networking.k8s.io/v1alpha2 draft (network-policy-api v0.2.0, "
                                         "experimental channel)",
        }),
        "spec": {
            "tier": "Admin",
            "priority": opts["priority"],
            "subject": {"pods": {"namespaceSelector": namespace_selector, "podSelector": pod_selector}},
            "egress": egress,
        },
    }


# ---------------------------------------------------------------- entry point

KINDS = {"networkpolicy": "NetworkPolicy", "cilium": "CiliumNetworkPolicy",
         "ciliumclusterwide": "CiliumClusterwideNetworkPolicy", "clusternetworkpolicy": "ClusterNetworkPolicy"}


def _check_cluster_dns(cluster_dns, families, errors):
    """The cluster resolver: CLUSTER_DNS with the given keys replaced; each value checked and named."""
    if cluster_dns is None:
        cluster_dns = {}
    if not isinstance(cluster_dns, Mapping):
        errors.append("cluster_dns: %r must be a mapping with %s" % (cluster_dns, ", ".join(CLUSTER_DNS_KEYS)))
        cluster_dns = {}
    unknown = sorted(set(cluster_dns) - set(CLUSTER_DNS_KEYS), key=str)
    if unknown:
        errors.append("cluster_dns: unknown key(s) %s; the keys are %s" % (", ".join(map(str, unknown)),
                                                                           ", ".join(CLUSTER_DNS_KEYS)))
    merged = dict(CLUSTER_DNS)
    merged.update((k, v) for k, v in cluster_dns.items() if k in CLUSTER_DNS_KEYS and v is not None)
    out = {}
    namespace = merged["namespace"]
    if not isinstance(namespace, str) or len(namespace) > MAX_LABEL or not DNS1123_LABEL.match(namespace):
        errors.append("cluster_dns.namespace: %r is not a namespace name" % (namespace,))
    out["namespace"] = namespace
    out["pod_selector"] = _check_selector(merged["pod_selector"], "cluster_dns.pod_selector", errors)
    if isinstance(merged["pod_selector"], dict) and not out["pod_selector"]:
        errors.append("cluster_dns.pod_selector: the cluster resolver's pods need at least one label")
    out["addresses"] = []
    addresses = merged["addresses"]
    if not isinstance(addresses, (list, tuple)):
        errors.append("cluster_dns.addresses: %r must be a list of IP addresses (node-local DNS)" % (addresses,))
        addresses = []
    for index, address in enumerate(addresses):
        try:
            parsed = ipaddress.ip_address(str(address))
        except ValueError:
            errors.append("cluster_dns.addresses[%d]: %r is not an IP address" % (index, address))
            continue
        if "ipv%d" % parsed.version not in families:
            errors.append("cluster_dns.addresses[%d]: %r is not in egress_families %s" % (index, address, list(families)))
            continue
        out["addresses"].append(str(parsed))
    domain = merged["domain"]
    if not isinstance(domain, str) or len(domain) > MAX_DNS_NAME or not DNS1123_SUBDOMAIN.match(domain):
        errors.append("cluster_dns.domain: %r is not a DNS domain (the cluster domain, cluster.local)" % (domain,))
    out["domain"] = domain
    search = merged["search"]
    if not isinstance(search, (list, tuple)):
        errors.append("cluster_dns.search: %r must be a list of the nodes' search domains" % (search,))
        search = []
    out["search"] = []
    for index, item in enumerate(search):
        if not isinstance(item, str) or len(item) > MAX_DNS_NAME or not DNS1123_SUBDOMAIN.match(item.rstrip(".").lower()):
            errors.append("cluster_dns.search[%d]: %r is not a DNS domain" % (index, item))
            continue
        out["search"].append(item.rstrip(".").lower())
    return out


def export_policies(variables, namespace, pod_selector=None, resolved=None, backends=DEFAULT_BACKENDS, dns="cluster",
                    tls_gate="off", name="agentguard-egress", priority=100, cluster_dns=None, resolved_through=None,
                    include_user_entries=False):
    """Compile the role's variables into one manifest per backend.

    variables: the role's egress_allow, egress_dns_servers, egress_dns_mode, egress_mode, egress_families,
    egress_dhcp (absent ones take the role's defaults) and egress_tls_gate_user (named only). resolved:
    {label: {"ipv4": [...], "ipv6": [...]}} as _resolve.resolve_destinations returns it, needed for
    NetworkPolicy when egress_allow has names. Entries with users are left out unless include_user_entries.
    Returns [{"backend", "kind", "file", "manifest", "limitations", "left_out", "warnings"}] in the order of
    BACKENDS; raises ExportError listing every problem, each starting with the variable or option it is about.
    """
    errors = []
    try:
        policy = validate_policy(variables)
    except ExportError as exc:
        policy = None
        errors.extend(exc.errors)
    if not isinstance(namespace, str) or len(namespace) > MAX_LABEL or not DNS1123_LABEL.match(namespace):
        errors.append("namespace: %r is not a namespace name (lower-case letters, digits and '-', at most 63)"
                      % (namespace,))
        namespace = "x"
    if not isinstance(name, str) or len(name) > MAX_NAME or not DNS1123_SUBDOMAIN.match(name):
        errors.append("name: %r is not an object name (lower-case letters, digits, '-' and '.', at most %d)"
                      % (name, MAX_NAME))
        name = "x"
    cluster_name = "%s-%s" % (name, namespace)
    selector = _check_selector(pod_selector if pod_selector is not None else {}, "pod_selector", errors)
    dns = _check_choice(dns, DNS_TARGETS, "dns", errors)
    tls_gate = _check_choice(tls_gate, TLS_GATES, "tls_gate", errors)
    if not isinstance(include_user_entries, bool):
        errors.append("include_user_entries: %r is not a boolean" % (include_user_entries,))
        include_user_entries = False
    if isinstance(backends, str):
        backends = [backends]
    if not isinstance(backends, (list, tuple)) or not backends:
        errors.append("backends: %r must be a non-empty list of %s" % (backends, ", ".join(BACKENDS)))
        backends = []
    for index, backend in enumerate(backends):
        _check_choice(backend, BACKENDS, "backends[%d]" % index, errors)
    chosen = [b for b in BACKENDS if b in backends]
    if len(cluster_name) > MAX_NAME and set(chosen) & {"ciliumclusterwide", "clusternetworkpolicy"}:
        errors.append("name: %r makes the cluster-wide object name <name>-<namespace> %d characters long; the API "
                      "server takes at most %d" % (name, len(cluster_name), MAX_NAME))
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= CNP_PRIORITY_MAX:
        errors.append("priority: %r is not a ClusterNetworkPolicy priority (0 to %d)" % (priority, CNP_PRIORITY_MAX))
    families = policy.families if policy is not None else FAMILIES
    cluster_dns = _check_cluster_dns(cluster_dns, families, errors)
    if policy is None:
        raise ExportError(errors)

    gate_variable, gate_default = GATE_USER_VARIABLE
    gate_user = variables.get(gate_variable) or gate_default
    opts = {"name": name, "namespace": namespace, "pod_selector": selector, "dns": dns, "tls_gate": tls_gate,
            "priority": priority, "cluster_dns": cluster_dns, "cluster_name": cluster_name,
            "include_user_entries": include_user_entries, "gate_user": str(gate_user)}
    kept, left_out, warnings = _host_only(policy, variables, opts)
    if not kept:
        errors.append("egress_allow: no destination is left for the pods%s; an empty allowlist has no unambiguous "
                      "form across the backends (Cilium reads an empty egress list, or a DNS rule without names, "
                      "differently across versions): allow at least one destination, or write a deny-all policy "
                      "by hand" % (" (left out: %s)" % ", ".join(i["entry"] for i in left_out if "host" in i)
                                   if any("host" in i for i in left_out) else ""))
        raise ExportError(errors)
    policy = policy._replace(allow=tuple(kept))
    if dns == "servers" and _needs_dns(policy) and not _family_cidrs(policy.dns_servers, policy.families):
        errors.append("egress_dns_servers: %s has no address in egress_families %s; with dns servers the pods "
                      "could not resolve the allowed names" % (list(policy.dns_servers), list(policy.families)))

    addresses = {}
    if "networkpolicy" in chosen:
        for dest in policy.allow:
            addresses[dest.name] = _addresses(dest, resolved, policy.families, errors)
    through = list(resolved_through) if resolved_through else list(policy.resolvers)
    opts["resolved_through"] = through
    if errors:
        raise ExportError(errors)

    exports = []
    for backend in chosen:
        limitations = _limitations(backend, policy, opts, through, left_out, warnings)
        if backend == "networkpolicy":
            manifest = _networkpolicy(policy, opts, addresses, limitations)
        elif backend in ("cilium", "ciliumclusterwide"):
            manifest = _cilium(policy, opts, limitations, errors, clusterwide=backend == "ciliumclusterwide")
        else:
            manifest = _clusternetworkpolicy(policy, opts, limitations, errors)
        if left_out:
            manifest["metadata"]["annotations"][ANNOTATION + "left-out"] = ", ".join(i["entry"] for i in left_out)
        # Safety nets: an export that would block its own DNS path, or that the API server would refuse, stops here.
        errors.extend(dns_path_errors(backend, manifest, policy, opts))
        errors.extend(metadata_errors(manifest))
        exports.append({"backend": backend, "kind": KINDS[backend], "manifest": manifest,
                        "limitations": limitations, "left_out": left_out, "warnings": warnings,
                        "file": "%s.%s.yaml" % (namespace, backend)})
    if errors:
        raise ExportError(errors)
    return exports
