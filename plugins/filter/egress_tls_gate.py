# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

# module_utils are imported in the filters that use them (why: plugin_utils/_filters.py).


def egress_tls_gate_config(rules_result, dns_mode, resolvers, log_path, pid_path, error_log_path):
    from ansible_collections.agentguard.hardening.plugins.module_utils._tlsgate import render_nginx

    gate = (rules_result or {}).get("tls_gate") if isinstance(rules_result, dict) else None
    if not gate:
        raise AnsibleFilterError("egress_tls_gate_config expects the result of egress_rules with tls_gate, got %r"
                                 % (type(rules_result).__name__,))
    try:
        return render_nginx(gate, dns_mode, resolvers, log_path, pid_path, error_log_path)
    except (ValueError, KeyError, TypeError) as exc:
        raise AnsibleFilterError("egress_tls_gate_config: %s" % exc)


class FilterModule(object):
    def filters(self):
        return {"egress_tls_gate_config": egress_tls_gate_config}
