# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: egress_report_summary
short_description: The denied-egress report's fleet totals, host rows and refused names, computed once
version_added: 0.1.0
description:
  - Aggregates the results that M(agentguard.hardening.egress_denials) returned for each host of the report
    once, for every output format of C(playbooks/egress_report.yml) (JSON, Markdown, HTML), so the templates
    only lay figures out and cannot disagree.
  - Hosts whose result is missing, failed or unreachable are listed in C(unread) and left out of every total.
author:
  - agentguard.hardening developers (@agentguard)
extends_documentation_fragment:
  - agentguard.hardening.report_hosts
"""

EXAMPLES = r"""
- name: Summarise the fleet once
  ansible.builtin.set_fact:
    egress_report_summary: "{{ egress_report.hosts | agentguard.hardening.egress_report_summary }}"
"""

RETURN = r"""
_value:
  description:
    - C(attempts), C(lines), C(forwarded), C(canary), C(refused) (DNS) and C(tls_refused) (connections the TLS
      gate refused), summed over the hosts that were read.
    - C(denied_packets), the exact denied packets summed over the hosts whose deny rule counters were read (each
      host's since its rules were loaded); C(uncounted), the hosts whose counters were not read; C(tamper), the
      guard's tamper events in the window; C(uncovered), the hosts whose kernel log does not reach back to the
      window's start (their attempts and log lines are only what the log still holds).
    - C(unread), the sorted names of the hosts that could not be read.
    - C(hosts), host name to its row (C(attempts), C(lines), C(forwarded), C(canary), C(refused), C(top), the
      busiest denial that is not the role's canary or null, C(tls_refused), C(destinations), the number of distinct
      destinations of those, C(last), the latest time a denial was seen, C(denied_packets) (exact, null when not
      read), C(counters_since), C(counters_text), C(tamper), C(covered), C(coverage_short), C(coverage_text)).
    - C(limits), the distinct logging rate limits the hosts reported, in host order.
    - C(names), the refused DNS names merged across hosts (C(name), C(count), C(hosts), C(qtypes), C(last)),
      busiest first, then by name.
    - C(server_names), the TLS gate's refusals merged across hosts by server name and reason (C(sni), C(reason),
      C(count), C(passed), connections audit let through, C(hosts), C(last)), busiest first.
  type: dict
"""

from ansible.errors import AnsibleFilterError

# module_utils are imported in the filters that use them (why: plugin_utils/_filters.py).


def egress_report_summary(hosts):
    from ansible_collections.agentguard.hardening.plugins.module_utils._report import summarise

    if not isinstance(hosts, dict):
        raise AnsibleFilterError("egress_report_summary expects the report's hosts (a dict), got %s"
                                 % type(hosts).__name__)
    return summarise(hosts)


class FilterModule(object):
    def filters(self):
        return {"egress_report_summary": egress_report_summary}
