# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: egress_tls_gate_config
short_description: The nginx configuration of the TLS gate, from the result of egress_rules
version_added: 0.1.0
description:
  - From the RV tls_gate result of M(agentguard.hardening.egress_rules) (plan or apply), the complete
    C(nginx.conf) of the TLS gate (nginx stream with C(ssl_preread)) - one listener pair per gated upstream
    port, the allowlisted server names, and where each may connect (pinned DNS mode - the addresses the module
    resolved; filtering mode - what the filtering resolver answers).
  - In audit mode a server name that is not on the list passes too and is logged C(reason=would-refuse-sni);
    a connection without a server name, with an IP literal, or that is not TLS is refused in both modes,
    since the gate cannot know where it was going.
  - The access log has one line per connection, C(key=value) fields (time, client, listen, sni, reason,
    status, upstream, bytes).
  - Defined over C(plugins/module_utils/_tlsgate.py), unit-tested in
    C(tests/unit/plugins/module_utils/test_tlsgate.py), and checked with a real C(nginx -t) there.
author:
  - agentguard.hardening developers (@agentguard)
positional: dns_mode, resolvers, log_path, pid_path, error_log_path
options:
  _input:
    description: The registered result of M(agentguard.hardening.egress_rules), with RV tls_gate.
    type: dict
    required: true
  dns_mode:
    description: C(egress_dns_mode), V(pinned) or V(filtering).
    type: str
    required: true
  resolvers:
    description:
      - The resolvers nginx asks - in filtering mode the filtering resolver (V(127.0.0.1)); in pinned mode the
        trusted resolvers, used only for the names audit mode passes.
    type: list
    elements: str
    required: true
  log_path:
    description: The access log (a file, or C(syslog:server=unix:/dev/log,tag=...)).
    type: str
    required: true
  pid_path:
    description: The pid file.
    type: str
    required: true
  error_log_path:
    description: The error log (a file, or C(stderr)).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Write the gate's configuration
  ansible.builtin.copy:
    dest: /etc/agentguard/tls-gate/nginx.conf
    content: >-
      {{ egress_result | agentguard.hardening.egress_tls_gate_config('pinned', ['10.0.0.2'],
         'syslog:server=unix:/dev/log,tag=agentguard_tls_gate', '/run/agentguard-tlsgate/nginx.pid', 'stderr') }}
    mode: "0644"
"""

RETURN = r"""
_value:
  description: The text of C(nginx.conf).
  type: str
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.agentguard.hardening.plugins.module_utils._tlsgate import render_nginx


def egress_tls_gate_config(rules_result, dns_mode, resolvers, log_path, pid_path, error_log_path):
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
