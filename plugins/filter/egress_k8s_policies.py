# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: egress_k8s_policies
short_description: Compile the egress role's allowlist into Kubernetes network policies
version_added: 0.1.0
description:
  - Compiles the variables of the role C(agentguard.hardening.egress) (O(_input)) into, for one namespace
    and pod selector, a C(networking.k8s.io/v1) NetworkPolicy, a C(cilium.io/v2) CiliumNetworkPolicy, optionally
    a cluster-wide C(cilium.io/v2) CiliumClusterwideNetworkPolicy, and a C(policy.networking.k8s.io/v1alpha2)
    ClusterNetworkPolicy in the Admin tier (an experimental draft, network-policy-api v0.2.0).
  - What only exists on a host never widens what the pods may reach. Entries of C(egress_allow) with C(users)
    (host services, such as C(_apt) to the mirrors) are left out unless O(include_user_entries); DHCP
    (C(egress_dhcp)), the TLS gate's own user and the filtering resolver's own DNS are never exported. Each is
    named, with the reason, in RV(_value.exports[].left_out), the limitations and the annotation
    C(agentguard.hardening/left-out).
  - Every manifest is checked before it is returned. Its DNS path must be open on UDP and TCP 53 to the resolver
    it relies on, and Cilium's DNS rule must let through every allowed name and its search-list expansions.
    Its metadata must be within the API server's limits.
  - Cilium manifests carry the annotation C(agentguard.hardening/minimum-cilium-version). It is C(1.17), or
    C(1.18) when C(serverNames) holds a wildcard.
  - The variables are validated first by the code the module M(agentguard.hardening.egress_rules) runs, so a
    policy the role would refuse is refused here with the same messages, naming the role variable and its value.
  - Every manifest carries the annotation C(agentguard.hardening/limitations), the list of what its backend
    cannot express for this policy (no uid attribution, no rate-limited deny log, addresses frozen at export
    time, ...); RV(_value.table) lists them all.
  - Names are matched by name where the backend can (Cilium C(toFQDNs), ClusterNetworkPolicy C(domainNames));
    the NetworkPolicy needs their addresses, resolved before (O(resolved)). The playbook
    C(agentguard.hardening.export-kubernetes) resolves them through C(egress_dns_servers).
  - Pure computation on the controller; nothing is read from or sent to a cluster.
author:
  - agentguard.hardening developers (@agentguard)
positional: namespace
options:
  _input:
    description:
      - The role's variables C(egress_allow), C(egress_dns_servers), C(egress_dns_mode), C(egress_mode),
        C(egress_families) and C(egress_dhcp), as a dictionary (a host's C(hostvars) will do). Absent ones take
        the role's defaults. C(egress_tls_gate_user) is read only to name it as left out; other keys are not read.
    type: dict
    required: true
  namespace:
    description: Namespace of the pods the policy applies to (and of the namespaced policies).
    type: str
    required: true
  pod_selector:
    description: Labels (C(matchLabels)) of the pods the policy applies to; empty selects every pod of O(namespace).
    type: dict
    default: {}
  resolved:
    description:
      - "Addresses of the names in C(egress_allow), C({label: {ipv4: [...], ipv6: [...]}}), as the lookup at
        export time found them. Required for the NetworkPolicy when C(egress_allow) has names."
    type: dict
  resolved_through:
    description: Resolvers that gave O(resolved), named in the NetworkPolicy's annotations (default C(egress_dns_servers)).
    type: list
    elements: str
  backends:
    description:
      - Which manifests to produce.
      - V(ciliumclusterwide) (a C(CiliumClusterwideNetworkPolicy) named C(<name>-<namespace>) that selects the
        namespace and the pods) is only written when listed.
    type: list
    elements: str
    choices: [networkpolicy, cilium, ciliumclusterwide, clusternetworkpolicy]
    default: [networkpolicy, cilium, clusternetworkpolicy]
  dns:
    description:
      - V(cluster) allows DNS to the cluster resolver only (O(cluster_dns), kube-dns); V(servers) to
        C(egress_dns_servers) only, as addresses (the pods must then be configured to use them).
    type: str
    choices: [cluster, servers]
    default: cluster
  cluster_dns:
    description:
      - The cluster resolver, for O(dns=cluster). Keys left out take their defaults.
      - C(namespace) and C(pod_selector) (labels) select its pods (default C(kube-system), C(k8s-app=kube-dns)).
      - C(addresses) lists node-local DNS addresses (NodeLocal DNSCache, for example C(169.254.20.10)), also allowed
        on UDP and TCP 53 (default none).
      - C(domain) is the cluster domain (default C(cluster.local)). C(search) lists the nodes' own search domains
        that kubelet appends to the pods' search list (default none).
      - The pods' search-list expansions of the allowed names are allowed in Cilium's DNS rule.
    type: dict
    default: {namespace: kube-system, pod_selector: {k8s-app: kube-dns}, addresses: [], domain: cluster.local, search: []}
  include_user_entries:
    description:
      - Export the entries of C(egress_allow) that have C(users) too. On the host only those users may reach
        them; in the cluster every selected pod can. Each one is then listed as a warning (RV(_value.warnings)).
    type: bool
    default: false
  tls_gate:
    description:
      - The role's TLS gate. With V(enforce), destinations on TCP port 443 are TLS destinations and the Cilium
        policy checks their server name (C(serverNames)); V(audit) cannot be expressed and is listed as a limitation.
    type: str
    choices: ['off', audit, enforce]
    default: 'off'
  name:
    description:
      - Name of the namespaced policies; the ClusterNetworkPolicy is named C(<name>-<namespace>).
    type: str
    default: agentguard-egress
  priority:
    description: Priority of the ClusterNetworkPolicy in the Admin tier (0 to 1000; lower runs first).
    type: int
    default: 100
  names:
    description:
      - Maps the option names above to the names error messages should use (for example a playbook's
        variables, C(namespace) to C(egress_export_namespace)).
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Compile the allowlist of the agents' namespace
  ansible.builtin.set_fact:
    egress_k8s: >-
      {{ {'egress_allow': egress_allow, 'egress_dns_servers': egress_dns_servers, 'egress_mode': 'enforce'}
         | agentguard.hardening.egress_k8s_policies('agents', pod_selector={'app': 'agent'},
                                                     backends=['cilium']) }}

- name: Write the manifests
  ansible.builtin.copy:
    content: "{{ item.content }}"
    dest: "/srv/k8s-export/{{ item.file }}"
    mode: "0644"
  loop: "{{ egress_k8s.exports }}"
  loop_control:
    label: "{{ item.file }}"
"""

RETURN = r"""
_value:
  description: The manifests and the table of what their backends cannot express.
  type: dict
  contains:
    exports:
      description: One entry per backend, in the order networkpolicy, cilium, ciliumclusterwide, clusternetworkpolicy.
      type: list
      elements: dict
      contains:
        backend:
          description: V(networkpolicy), V(cilium) or V(clusternetworkpolicy).
          type: str
        kind:
          description: The manifest's kind.
          type: str
        file:
          description: A file name for it, C(<namespace>.<backend>.yaml).
          type: str
        manifest:
          description: The manifest.
          type: dict
        content:
          description: The manifest as YAML, headed by comments listing its limitations.
          type: str
        limitations:
          description: What the backend cannot express for this policy, one sentence each (what is left out first).
          type: list
          elements: str
        left_out:
          description: "What the pods do not get, as C({entry, reason}) (with C(name) and C(host) for an allow entry)."
          type: list
          elements: dict
    warnings:
      description: Host-only entries that were exported anyway (O(include_user_entries)), one sentence each.
      type: list
      elements: str
    table:
      description: "Every limitation as C(Kind: sentence), for a summary."
      type: list
      elements: str
"""

import yaml

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_native

# module_utils are imported in the filters that use them (why: plugin_utils/_filters.py).


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (the limitations annotation) as literal blocks, one line per limitation."""


def _represent_str(dumper, data):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_ManifestDumper.add_representer(str, _represent_str)


def _plain(value):
    """The same data as plain dicts, lists, str, int and bool (no templating types, whatever came in)."""
    if isinstance(value, dict):
        return dict((_plain(k), _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return value.encode("utf-8").decode("utf-8")
    raise AnsibleFilterError("egress_k8s_policies: unexpected %s in a manifest" % type(value).__name__)


def _render(export):
    header = ["# %s generated by agentguard.hardening.egress_k8s_policies from the egress role's variables."
              % export["kind"],
              "# What %s cannot express for this policy (also in the annotation agentguard.hardening/limitations):"
              % export["kind"]]
    header.extend("#   - %s" % row for row in export["limitations"])
    body = yaml.dump(export["manifest"], Dumper=_ManifestDumper, default_flow_style=False, sort_keys=False,
                     allow_unicode=True, width=1000)
    return "\n".join(header) + "\n---\n" + body


def egress_k8s_policies(variables, namespace, pod_selector=None, resolved=None, resolved_through=None,
                        backends=None, dns="cluster", cluster_dns=None, tls_gate="off",
                        name="agentguard-egress", priority=100, names=None, include_user_entries=False):
    from ansible_collections.agentguard.hardening.plugins.module_utils._k8s import DEFAULT_BACKENDS, ExportError, export_policies
    from ansible_collections.agentguard.hardening.plugins.module_utils._options import rename_option

    backends = DEFAULT_BACKENDS if backends is None else backends
    try:
        exports = export_policies(variables, namespace, pod_selector=pod_selector, resolved=resolved,
                                  backends=backends, dns=dns, tls_gate=tls_gate, name=name, priority=priority,
                                  cluster_dns=cluster_dns, resolved_through=resolved_through,
                                  include_user_entries=include_user_entries)
    except ExportError as exc:
        raise AnsibleFilterError(" ".join(rename_option(to_native(error), names or {}) for error in exc.errors))
    exports = _plain(exports)
    for export in exports:
        export["content"] = _render(export)
    table = ["%s: %s" % (e["kind"], row) for e in exports for row in e["limitations"]]
    warnings = exports[0]["warnings"] if exports else []
    return {"exports": exports, "table": table, "warnings": warnings}


class FilterModule(object):
    def filters(self):
        return {"egress_k8s_policies": egress_k8s_policies}
