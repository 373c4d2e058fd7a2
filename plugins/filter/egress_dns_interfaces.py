# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: egress_dns_interfaces
short_description: Internal (role egress) - the interfaces the filtering resolver listens on for the container networks
version_added: 0.1.0
description:
  - Internal to the role M(agentguard.hardening.egress#role) and the collection's playbooks, not an interface for
    your own playbooks - its arguments and result change with the role. Documented so that every filter of the
    collection has its own page.
  - From the role's O(_input) (C(egress_scope_networks)), the interface names in dnsmasq's notation (the
    iptables wildcard C(+) becomes C(*)). DNS from these networks is redirected to the filtering resolver,
    which must therefore listen on them. CIDR elements name no interface and are left out (the role's
    README says to name the interface in filtering mode).
author:
  - agentguard.hardening developers (@agentguard)
options:
  _input:
    description: The elements of C(egress_scope_networks).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Listen on the container bridges
  ansible.builtin.debug:
    msg: "{{ ['docker0', 'br-+', '198.19.0.0/24'] | agentguard.hardening.egress_dns_interfaces }}"  # ['docker0', 'br-*']
"""

RETURN = r"""
_value:
  description: dnsmasq C(interface=) patterns, in the order given, without duplicates.
  type: list
  elements: str
"""

from ansible_collections.agentguard.hardening.plugins.plugin_utils._filters import parse_each

# module_utils are imported in the filters that use them (why: plugin_utils/_filters.py).


def egress_dns_interfaces(networks):
    from ansible_collections.agentguard.hardening.plugins.module_utils._policy import parse_network

    result = []
    for network in parse_each("egress_dns_interfaces", "egress_scope_networks", networks, parse_network):
        if network.kind != "iface":
            continue
        pattern = network.value[:-1] + "*" if network.value.endswith("+") else network.value
        if pattern not in result:
            result.append(pattern)
    return result


class FilterModule(object):
    def filters(self):
        return {"egress_dns_interfaces": egress_dns_interfaces}
