# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the collection's filter plugins share. Private to agentguard.hardening; controller side only.

The filter files import the collection's module_utils inside the filters that use them, never at the top:
to find any one filter of a collection, Ansible loads every filter file of that collection, in each worker
process (one per task and host), and its collection loader compiles each module_utils from source on every
import (it keeps no bytecode). Imported at the top, the module_utils of all the filters cost every task
that calls one of them about 0.1 s of CPU per host (bench/plugins/run.py; docs/benchmarks.md, fleet
rollout). tests/unit/plugins/filter/test_filter_imports.py keeps it so.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError


def parse_each(filter_name, variable, value, parse):
    """[parse(item, "variable[index]") for each item of the list value]: the role variable a filter reads,
    checked entry by entry with the module_utils parser that names where and what (ValueError).
    AnsibleFilterError with that message, or saying that value is not a list."""
    if not isinstance(value, list):
        raise AnsibleFilterError("%s expects the list %s, got %s" % (filter_name, variable, type(value).__name__))
    parsed = []
    for index, item in enumerate(value):
        try:
            parsed.append(parse(item, "%s[%d]" % (variable, index)))
        except ValueError as exc:
            raise AnsibleFilterError(str(exc))
    return parsed
