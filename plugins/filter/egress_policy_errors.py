# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: egress_policy_errors
short_description: Validate egress_rules options on the controller, before any host is touched
version_added: 0.1.0
description:
  - Runs the validation of M(agentguard.hardening.egress_rules) (the same code the module runs on the
    host) on the controller and returns every problem as a message that names the option and its value.
  - Types, choices and required keys are checked against the module's argument spec with ansible-core's
    C(ArgumentSpecValidator), with the conversions the module applies (V("20") is the number 20); then what
    the values mean (addresses, ports, rates, the rules between options).
    An empty list means the options are valid as far as they can be checked without the host.
  - Whether the users in O(_input.users) exist is a question for the host; any well-formed name passes here.
  - The role C(agentguard.hardening.egress) runs it before it installs or changes anything, so a
    mistyped destination fails the host with nothing changed.
author:
  - agentguard.hardening developers (@agentguard)
positional: names
options:
  _input:
    description: The options of M(agentguard.hardening.egress_rules), as a dictionary.
    type: dict
    required: true
  names:
    description:
      - Maps option names to the names the messages should use instead (for example the role's
        variables, C(allow) to C(egress_allow)). Options not in it keep their own name.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Refuse an invalid policy before anything runs on the host
  ansible.builtin.assert:
    that: errors | length == 0
    fail_msg: "{{ errors | join(' ') }}"
  vars:
    errors: >-
      {{ {'allow': [{'name': 'api', 'host': 'api.example.com'}], 'dns_servers': ['192.0.2.53']}
         | agentguard.hardening.egress_policy_errors }}
"""

RETURN = r"""
_value:
  description: One message per problem, each starting with the option (renamed through O(names)) and naming the value.
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_native

# module_utils are imported in the filters that use them (why: plugin_utils/_filters.py).


def egress_policy_errors(options, names=None):
    from ansible_collections.agentguard.hardening.plugins.module_utils._options import placeholder_uid, rename_option, validated_policy
    from ansible_collections.agentguard.hardening.plugins.module_utils._policy import PolicyError

    if not isinstance(options, dict):
        raise AnsibleFilterError("egress_policy_errors expects a dictionary of egress_rules options, got %s"
                                 % type(options).__name__)
    try:
        validated_policy(options, placeholder_uid)
    except PolicyError as exc:
        return [rename_option(to_native(error), names or {}) for error in exc.errors]
    return []


class FilterModule(object):
    def filters(self):
        return {"egress_policy_errors": egress_policy_errors}
