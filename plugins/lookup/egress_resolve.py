# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: egress_resolve
short_description: Resolve the egress allowlist's names through the trusted resolvers, on the controller
version_added: 0.1.0
description:
  - Validates the role's variables like the role does (the same code as M(agentguard.hardening.egress_rules))
    and resolves every name of C(egress_allow) (A and AAAA for the families of C(egress_families)) through
    C(egress_dns_servers) only, never through the system resolver, as the module does on a host.
  - "Returns C({label: {ipv4: [...], ipv6: [...]}}), sorted and deduplicated; literal addresses and CIDRs
    pass through. This is what the NetworkPolicy of P(agentguard.hardening.egress_k8s_policies#filter)
    needs, as its addresses are frozen at export time."
  - Needs the Python library dnspython on the controller (the execution environment has it).
author:
  - agentguard.hardening developers (@agentguard)
options:
  _terms:
    description:
      - One dictionary of the role's variables C(egress_allow), C(egress_dns_servers), C(egress_dns_mode),
        C(egress_mode) and C(egress_families).
    required: true
    type: list
    elements: dict
  port:
    description: Port of the resolvers (53; another only for tests).
    type: int
    default: 53
  timeout:
    description: Seconds to wait for each answer.
    type: float
    default: 3.0
  retries:
    description: Extra attempts after a timeout or a server failure (an NXDOMAIN is an answer, not retried).
    type: int
    default: 2
  include_user_entries:
    description:
      - Resolve the entries of C(egress_allow) that have C(users) too. They are host services, which the
        Kubernetes export leaves out unless told otherwise, so by default they are not resolved.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Resolve the allowed names through the trusted resolvers
  ansible.builtin.set_fact:
    egress_resolved: >-
      {{ query('agentguard.hardening.egress_resolve',
               {'egress_allow': egress_allow, 'egress_dns_servers': egress_dns_servers}) | first }}
"""

RETURN = r"""
_raw:
  description: "One dictionary, label to C({ipv4: [...], ipv6: [...]})."
  type: list
  elements: dict
"""

from collections.abc import Mapping

from ansible.errors import AnsibleLookupError
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.lookup import LookupBase
from ansible_collections.agentguard.hardening.plugins.module_utils._k8s import ExportError, validate_policy
from ansible_collections.agentguard.hardening.plugins.module_utils._resolve import ResolveError, resolve_destinations


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        if len(terms) != 1 or not isinstance(terms[0], Mapping):
            raise AnsibleLookupError("egress_resolve takes one dictionary of the egress role's variables")
        try:
            policy = validate_policy(terms[0])
        except ExportError as exc:
            raise AnsibleLookupError(" ".join(to_native(e) for e in exc.errors))
        allow = [d for d in policy.allow if self.get_option("include_user_entries") or not d.users]
        try:
            resolved = resolve_destinations(allow, policy.resolvers, policy.families,
                                            timeout=self.get_option("timeout"), retries=self.get_option("retries"),
                                            port=self.get_option("port"))
        except ResolveError as exc:
            raise AnsibleLookupError(to_native(exc))
        return [resolved]
