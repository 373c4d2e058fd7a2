# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The input of the report's filters: what playbooks/egress_report.yml gathered from the hosts.
    DOCUMENTATION = r"""
options:
  _input:
    description: The report's hosts, host name to the registered result of M(agentguard.hardening.egress_denials).
    type: dict
    required: true
"""
