# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: egress_coverage_warnings
short_description: Internal (role egress) - what a hardened host still leaves open to containers, in words for the
  playbook summary
version_added: 0.1.0
description:
  - Internal to the role M(agentguard.hardening.egress#role) and the collection's playbooks, not an interface for
    your own playbooks - its arguments and result change with the role. Documented so that every filter of the
    collection has its own page.
  - From the result of M(agentguard.hardening.egress_rules) (its
    RV(agentguard.hardening.egress_rules#module:networks.uncovered) and
    RV(agentguard.hardening.egress_rules#module:services.blocked),
    C(ungated) of RV(agentguard.hardening.egress_rules#module:tls_gate)) and the C(runtime_access) of
    M(agentguard.hardening.egress_host_state), one warning
    per container or VM network that O(scope_networks_var) does not cover, per host service the policy
    leaves without a way out (time, updates, DHCP), per restricted user who can start containers, and, with
    the TLS gate on, per allowed entry whose TLS it does not check, each naming what is open or cut and why.
  - With O(firewalls) (RV(agentguard.hardening.egress_host_state#module:firewalls)), also one per other firewall
    manager (C(nftables.service), firewalld, ufw) whose start, reload, restart, stop or boot changes the egress rules,
    saying what it does and what the guard does about it (O(guard), the role's C(egress_guard)).
  - Empty when there is nothing to say.
author:
  - agentguard.hardening developers (@agentguard)
positional: runtime_access, scope_networks_var
options:
  _input:
    description: The registered result of M(agentguard.hardening.egress_rules) (plan or apply).
    type: dict
    required: true
  runtime_access:
    description: C(runtime_access) of M(agentguard.hardening.egress_host_state).
    type: list
    elements: dict
    default: []
  scope_networks_var:
    description: The name of the variable to suggest.
    type: str
    default: egress_scope_networks
  firewalls:
    description: RV(agentguard.hardening.egress_host_state#module:firewalls).
    type: list
    elements: dict
    default: []
  guard:
    description: Whether the guard (C(agentguard-guard.service), the role's C(egress_guard)) holds the rules.
    type: bool
    default: true
  host:
    description:
      - The result of M(agentguard.hardening.egress_host_state). When O(guard) is on and systemd is not PID 1 there,
        the guard cannot run. Why (the same text as the role's decision C(guard_skipped)) is then the first warning,
        and the firewall managers' warnings say that nothing restores the rules.
    type: dict
"""

EXAMPLES = r"""
- name: Warn about what the policy leaves open
  ansible.builtin.debug:
    msg: "WARNING: {{ item }}"
  loop: "{{ egress_result | agentguard.hardening.egress_coverage_warnings(host_state.runtime_access) }}"

- name: Also name the other firewall managers that change the rules, and what the guard does about them
  ansible.builtin.debug:
    msg: "WARNING: {{ item }}"
  loop: >-
    {{ egress_result | agentguard.hardening.egress_coverage_warnings(host_state.runtime_access,
       firewalls=host_state.firewalls, guard=true) }}
"""

RETURN = r"""
_value:
  description: One sentence per open path.
  type: list
  elements: str
"""


from ansible.module_utils.parsing.convert_bool import boolean

# module_utils are imported in the filters that use them (why: plugin_utils/_filters.py).


def egress_coverage_warnings(result, runtime_access=None, scope_networks_var="egress_scope_networks", firewalls=None,
                             guard=True, host=None):
    """Warnings for the playbook summary: container/VM networks the policy leaves open (from the
    module's networks.uncovered) and restricted users who can start containers (runtime_access of
    egress_host_state), each naming what is open and the variable that would close it; the other firewall
    managers that change the rules (firewalls of egress_host_state) and what the guard (guard: egress_guard) does,
    or why it cannot run on host (egress_phases.guard_skipped_reason, as the role's decision says it)."""
    from ansible_collections.agentguard.hardening.plugins.filter.egress_phases import guard_skipped_reason
    from ansible_collections.agentguard.hardening.plugins.module_utils._firewalls import firewall_warnings

    guard = boolean(guard, strict=False)
    guard_skipped = guard_skipped_reason(guard, host)
    # A guard that cannot run holds nothing between runs: said every run, in check mode too.
    warnings = [guard_skipped] if guard_skipped else []
    warnings.extend(firewall_warnings(firewalls, guard and not guard_skipped))
    networks = (result or {}).get("networks") or {}
    for entry in networks.get("uncovered") or []:
        families = entry.get("families") or []
        warnings.append(
            "network %s (%s%s, %s) is not covered by %s: containers on it reach every destination%s; add %r to %s"
            % (entry.get("name"), entry.get("runtime") or "unknown runtime",
               ", " + ", ".join(entry.get("networks") or []) if entry.get("networks") else "",
               "/".join(families) if families else "no address",
               scope_networks_var, " over " + "/".join(families) if families else "",
               str(entry.get("name")), scope_networks_var))
    if networks.get("docker_firewall_backend") == "nftables":
        warnings.append("Docker runs its nftables firewall backend: the forward path (mangle FORWARD) still runs "
                        "before Docker's tables, but no test covers this combination; check the containers' egress "
                        "yourself (egress_report.yml shows forwarded denials)")
    for entry in ((result or {}).get("services") or {}).get("blocked") or []:
        warnings.append("%s is running but the policy leaves it no way out (%s): it needs %s"
                        % (entry.get("name"), entry.get("kind"), entry.get("needs")))
    for entry in runtime_access or []:
        warnings.append(
            "restricted user %s can reach the %s socket %s (%s): a container it starts is forwarded, not "
            "matched by uid; use egress_scope host with %s, or take the access away"
            % (entry.get("user"), entry.get("runtime"), entry.get("socket"), entry.get("via"), scope_networks_var))
    # With the TLS gate on: an allowed entry whose TLS it does not check (an address, an entry for users).
    for entry in ((result or {}).get("tls_gate") or {}).get("ungated") or []:
        warnings.append("%s (%s, ports %s) is not gated by the TLS gate: %s"
                        % (entry.get("entry"), entry.get("host"), ", ".join(str(port) for port in entry.get("ports") or []),
                           entry.get("reason")))
    return warnings


class FilterModule(object):
    def filters(self):
        return {"egress_coverage_warnings": egress_coverage_warnings}
