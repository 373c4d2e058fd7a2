# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: egress_report_chart
short_description: The denied-egress report's chart of the fleet's denials, on a true time axis
version_added: 0.1.0
description:
  - Merges the timelines that M(agentguard.hardening.egress_denials) returned for each host (hosts that
    could not be read are left out) and lays them out as SVG geometry. Each bar sits at its own time, so
    an interval without denials is a gap; the axis spans the denials, widened to at least 12 buckets
    within the report's window, and shows them per a coarser interval when there would be more than
    240 bars.
  - Bars count attempts (retransmissions of one connection are one attempt), the role's canary probes
    apart; the x-axis has at most 7 labelled ticks, the y-axis 3 to 5.
  - Used by C(playbooks/egress_report.yml)'s HTML template.
author:
  - agentguard.hardening developers (@agentguard)
extends_documentation_fragment:
  - agentguard.hardening.report_hosts
options:
  width:
    description: Width of the SVG viewBox.
    type: int
    default: 900
  height:
    description: Height of the SVG viewBox.
    type: int
    default: 200
"""

EXAMPLES = r"""
- name: Bars of the fleet chart
  ansible.builtin.debug:
    msg: "{{ (egress_report.hosts | agentguard.hardening.egress_report_chart).bars | length }}"
"""

RETURN = r"""
_value:
  description:
    - Null when no host has a timed denial. Otherwise C(bars) (C(x), C(width), C(y), C(height) of the
      attempts, C(canary_y), C(canary_height) of the canary's, C(start), C(end), C(attempts), C(canary),
      C(lines)), C(xticks) and C(yticks) (C(x) or C(y), C(label)), C(interval) (seconds per bar) and
      C(interval_text), C(bucket_text), C(from), C(to), C(peak), C(ymax), C(baseline), C(plot), C(width), C(height).
  type: dict
"""

from ansible.errors import AnsibleFilterError

# module_utils are imported in the filters that use them (why: plugin_utils/_filters.py).


def egress_report_chart(hosts, width=900, height=200):
    from ansible_collections.agentguard.hardening.plugins.module_utils._timeline import chart

    if not isinstance(hosts, dict):
        raise AnsibleFilterError("egress_report_chart expects the report's hosts (a dict), got %s" % type(hosts).__name__)
    results = [r for r in hosts.values() if isinstance(r, dict) and not r.get("failed") and not r.get("unreachable")]
    windows = [r.get("window") or {} for r in results]
    bucket = max([w.get("bucket_seconds") or 0 for w in windows] + [0]) or 300
    starts = [w["start"] for w in windows if w.get("start")]
    ends = [w["end"] for w in windows if w.get("end")]
    return chart([r.get("timeline") or [] for r in results], bucket, window_start=min(starts) if starts else None,
                 window_end=max(ends) if ends else None, width=int(width), height=int(height))


class FilterModule(object):
    def filters(self):
        return {"egress_report_chart": egress_report_chart}
