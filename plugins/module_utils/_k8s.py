# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Compile the egress role's allowlist into Kubernetes network policies.

Private to agentguard.hardening: no compatibility promise outside the collection.

One policy in (the role's variables, validated by the same build_policy the module runs), one
manifest out per backend:

- networking.k8s.io/v1 NetworkPolicy: ipBlocks of the addresses resolved at export time;
- cilium.io/v2 CiliumNetworkPolicy: toFQDNs, DNS through Cilium's proxy limited to the allowed names;
- policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy (experimental draft): domainNames.

Each manifest carries, in its annotations, the list of what its backend cannot express for this
policy. Pure functions: resolution happens before (the caller passes `resolved`), nothing here
reads the network or the disk.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re
import zlib

from collections.abc import Mapping

from ansible_collections.agentguard.hardening.plugins.module_utils._policy import (
    FAMILIES,
    PolicyError,
    build_policy,
)

BACKENDS = ("networkpolicy", "cilium", "clusternetworkpolicy")
DNS_TARGETS = ("cluster", "servers")
TLS_GATES = ("off", "audit", "enforce")
TLS_PORT = "443"

# The role's variables the export reads, their module option and the role's default
# (roles/egress/defaults/main.yml; a unit test keeps them equal).
ROLE_VARIABLES = (
    ("egress_allow", "allow", []),
    ("egress_dns_servers", "dns_servers", []),
    ("egress_dns_mode", "dns_mode", "pinned"),
    ("egress_mode", "mode", "enforce"),
    ("egress_families", "families", ["ipv4", "ipv6"]),
)
OPTION_NAMES = dict((option, variable) for variable, option, default in ROLE_VARIABLES)

ANNOTATION = "agentguard.hardening/"
GENERATED_BY = "agentguard.hardening.egress_k8s_policies"
MANAGED_BY = {"app.kubernetes.io/managed-by": "agentguard.hardening"}
# CoreDNS as kubeadm, EKS, GKE and AKS deploy it.
CLUSTER_DNS = {"namespace": "kube-system", "pod_selector": {"k8s-app": "kube-dns"}}
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


class ExportError(Exception):
    """Raised with every problem found; str() lists them one per line."""

    def __init__(self, errors):
        self.errors = list(errors)
        super(ExportError, self).__init__("\n".join(self.errors))


def _placeholder_uid(name):
    # Users do not exist in a cluster; a stable uid lets build_policy check their form only.
    return 2 ** 31 + zlib.crc32(name.encode("utf-8")) % 2 ** 30


def role_options(variables):
    """Map the role's variables to egress_rules options, with the role's defaults; (options, errors)."""
    errors = []
    if not isinstance(variables, Mapping):
        return {}, ["the policy must be a mapping of the role's variables (%s), not %r"
                    % (", ".join(v for v, o, d in ROLE_VARIABLES), variables)]
    # Like the role, other variables are not read (a host's variables can be passed as they are).
    options = {"state": "present", "scope": "host"}
    for variable, option, default in ROLE_VARIABLES:
        value = variables[variable] if variable in variables else None
        options[option] = default if value is None else value
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
            policy = build_policy(options, _placeholder_uid)
        except PolicyError as exc:
            errors.extend(_rename(error) for error in exc.errors)
        # The role's own check beyond the module's (plugins/filter/egress_phases.py, egress_input_errors),
        # same words; in enforce mode the module's own check already says so.
        if options.get("dns_mode") == "filtering" and options.get("mode") != "enforce" and not options.get("dns_servers"):
            errors.append("egress_dns_servers is empty: egress_dns_mode=filtering needs the upstream resolvers the "
                          "local filtering resolver forwards the allowed names to.")
    if errors:
        raise ExportError(errors)
    return policy


def _rename(message):
    match = re.match(r"^([a-z_]+)(?=[\[.:])", message)
    if match and match.group(1) in OPTION_NAMES:
        return OPTION_NAMES[match.group(1)] + message[match.end():]
    return message


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
        if dest.kind in families:
            out[dest.kind] = [dest.host]
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


# ---------------------------------------------------------------- limitations

def _limitations(backend, policy, opts, resolved_through):
    rows = [LIMIT_UID]
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
        rows.append("additive: another NetworkPolicy (or CNI policy) that selects these pods adds to this allowlist")
    elif backend == "cilium":
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
        rows.append("additive: another CiliumNetworkPolicy or NetworkPolicy that selects these pods adds to this "
                    "allowlist")
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
    if opts["dns"] == "cluster":
        labels = ",".join("%s=%s" % kv for kv in sorted(opts["cluster_dns"]["pod_selector"].items()))
        rows.append("DNS goes to the cluster resolver (%s/%s), which forwards to its own upstream servers, not to "
                    "egress_dns_servers" % (opts["cluster_dns"]["namespace"], labels))
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
    if opts["dns"] == "cluster":
        egress.append({"to": [{
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: opts["cluster_dns"]["namespace"]}},
            "podSelector": {"matchLabels": dict(opts["cluster_dns"]["pod_selector"])},
        }], "ports": dns_ports})
    else:
        servers = _dns_server_cidrs(policy)
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


def _dns_server_cidrs(policy):
    cidrs = []
    for server in policy.dns_servers:
        net = ipaddress.ip_network(server)
        if "ipv%d" % net.version in policy.families:
            cidrs.append(str(net))
    return cidrs


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


def _cilium(policy, opts, limitations):
    names = []
    for dest in policy.allow:
        if dest.kind == "name":
            exact, pattern = _names_of(dest)
            names.append({"matchName": exact})
            if pattern:
                names.append({"matchPattern": pattern})
    # pinned: any name may be asked (the role's pinned mode); filtering: only the allowed names.
    dns_rules = names if policy.dns_mode == "filtering" else [{"matchPattern": "*"}]
    dns_ports = {"ports": [{"port": "53", "protocol": "UDP"}, {"port": "53", "protocol": "TCP"}],
                 "rules": {"dns": dns_rules}}
    egress = []
    if opts["dns"] == "cluster":
        labels = {CILIUM_NAMESPACE_LABEL: opts["cluster_dns"]["namespace"]}
        labels.update(("k8s:" + k, v) for k, v in opts["cluster_dns"]["pod_selector"].items())
        egress.append({"toEndpoints": [{"matchLabels": labels}], "toPorts": [dns_ports]})
    else:
        servers = _dns_server_cidrs(policy)
        if servers:
            egress.append({"toCIDRSet": [{"cidr": cidr} for cidr in servers], "toPorts": [dns_ports]})
    for dest in policy.allow:
        if dest.kind == "name":
            exact, pattern = _names_of(dest)
            selectors = [{"matchName": exact}] + ([{"matchPattern": pattern}] if pattern else [])
            server_names = [exact] + ([pattern] if pattern else []) if opts["tls_gate"] == "enforce" else []
            egress.append({"toFQDNs": selectors, "toPorts": _cilium_port_rules(dest, server_names)})
        elif dest.kind in policy.families:
            # Never toPorts alone: Cilium reads a rule without peers as "every destination".
            egress.append({"toCIDRSet": [{"cidr": dest.host}], "toPorts": _cilium_port_rules(dest, [])})
    extra = {}
    if policy.mode == "audit":
        extra[ANNOTATION + "policy-audit-mode"] = "required: enable Cilium's policy audit mode for these pods"
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
    if opts["dns"] == "cluster":
        egress.append({"name": "dns", "action": "Accept", "to": [{"pods": {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: opts["cluster_dns"]["namespace"]}},
            "podSelector": {"matchLabels": dict(opts["cluster_dns"]["pod_selector"])},
        }}], "protocols": dns_protocols})
    else:
        servers = _dns_server_cidrs(policy)
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
        elif dest.kind in policy.families:
            peers = _cnp_networks([dest.host])
        else:
            continue
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
        "metadata": _metadata(opts["cnp_name"], None, policy, limitations, {
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
         "clusternetworkpolicy": "ClusterNetworkPolicy"}


def export_policies(variables, namespace, pod_selector=None, resolved=None, backends=BACKENDS, dns="cluster",
                    tls_gate="off", name="agentguard-egress", priority=100, cluster_dns=None, resolved_through=None):
    """Compile the role's variables into one manifest per backend.

    variables: the role's egress_allow, egress_dns_servers, egress_dns_mode, egress_mode, egress_families
    (absent ones take the role's defaults). resolved: {label: {"ipv4": [...], "ipv6": [...]}} as
    _resolve.resolve_destinations returns it, needed for NetworkPolicy when egress_allow has names.
    Returns [{"backend", "kind", "file", "manifest", "limitations"}] in the order of `backends`;
    raises ExportError listing every problem, each starting with the variable or option it is about.
    """
    errors = []
    try:
        policy = validate_policy(variables)
    except ExportError as exc:
        policy = None
        errors.extend(exc.errors)
    if not isinstance(namespace, str) or len(namespace) > 63 or not DNS1123_LABEL.match(namespace):
        errors.append("namespace: %r is not a namespace name (lower-case letters, digits and '-', at most 63)"
                      % (namespace,))
    if not isinstance(name, str) or len(name) > 200 or not DNS1123_SUBDOMAIN.match(name):
        errors.append("name: %r is not an object name (lower-case letters, digits, '-' and '.', at most 200)" % (name,))
    selector = _check_selector(pod_selector if pod_selector is not None else {}, "pod_selector", errors)
    dns = _check_choice(dns, DNS_TARGETS, "dns", errors)
    tls_gate = _check_choice(tls_gate, TLS_GATES, "tls_gate", errors)
    if isinstance(backends, str):
        backends = [backends]
    if not isinstance(backends, (list, tuple)) or not backends:
        errors.append("backends: %r must be a non-empty list of %s" % (backends, ", ".join(BACKENDS)))
        backends = []
    for index, backend in enumerate(backends):
        _check_choice(backend, BACKENDS, "backends[%d]" % index, errors)
    chosen = [b for b in BACKENDS if b in backends]
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= CNP_PRIORITY_MAX:
        errors.append("priority: %r is not a ClusterNetworkPolicy priority (0 to %d)" % (priority, CNP_PRIORITY_MAX))
    cluster_dns = cluster_dns or CLUSTER_DNS
    dns_namespace = cluster_dns.get("namespace") if isinstance(cluster_dns, dict) else None
    if not isinstance(dns_namespace, str) or not DNS1123_LABEL.match(dns_namespace):
        errors.append("cluster_dns.namespace: %r is not a namespace name" % (dns_namespace,))
    dns_selector = _check_selector(cluster_dns.get("pod_selector") if isinstance(cluster_dns, dict) else None,
                                   "cluster_dns.pod_selector", errors)
    if isinstance(cluster_dns, dict) and not dns_selector:
        errors.append("cluster_dns.pod_selector: the cluster resolver's pods need at least one label")
    if policy is None:
        raise ExportError(errors)

    addresses = {}
    if "networkpolicy" in chosen:
        for dest in policy.allow:
            addresses[dest.name] = _addresses(dest, resolved, policy.families, errors)
    through = list(resolved_through) if resolved_through else list(policy.resolvers)
    opts = {"name": name, "namespace": namespace, "pod_selector": selector, "dns": dns, "tls_gate": tls_gate,
            "priority": priority, "cluster_dns": {"namespace": dns_namespace, "pod_selector": dns_selector},
            "resolved_through": through, "cnp_name": "%s-%s" % (name, namespace)}
    if errors:
        raise ExportError(errors)

    exports = []
    for backend in chosen:
        limitations = _limitations(backend, policy, opts, through)
        if backend == "networkpolicy":
            manifest = _networkpolicy(policy, opts, addresses, limitations)
        elif backend == "cilium":
            manifest = _cilium(policy, opts, limitations)
        else:
            manifest = _clusternetworkpolicy(policy, opts, limitations, errors)
        exports.append({"backend": backend, "kind": KINDS[backend], "manifest": manifest,
                        "limitations": limitations, "file": "%s.%s.yaml" % (namespace, backend)})
    if errors:
        raise ExportError(errors)
    return exports


def limitation_table(exports):
    """Rows {backend, kind, limitation} of every export, for the playbook's summary."""
    return [{"backend": e["backend"], "kind": e["kind"], "limitation": row}
            for e in exports for row in e["limitations"]]
