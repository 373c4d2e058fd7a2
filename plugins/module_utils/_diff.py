# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Rule-level differences between the live and the desired managed state.

Private to agentguard.hardening. Pure functions over ManagedState / IpSet values.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import difflib

from ansible_collections.agentguard.hardening.plugins.module_utils._state import HOOK_TABLES, HOOKS


def state_lines(state):
    """A ManagedState as the lines iptables-save would show for it (the diff layout)."""
    lines = ["-P OUTPUT %s" % state.policy]
    lines.extend("-I OUTPUT %d %s" % (index + 1, spec) for index, spec in sorted(state.jumps))
    for name, rules in state.chains:
        lines.append("-N %s" % name)
        lines.extend("-A %s %s" % (name, spec) for spec in rules)
    return lines


def hook_lines(hooks):
    """Our part of the other hooks ({hook: HookState}), each line prefixed with "-t TABLE" (the hook's real
    table: nat's OUTPUT hook is "-t nat", as an operator would type it)."""
    lines = []
    for table in sorted(hooks or {}):
        state = hooks[table]
        prefix = "-t %s " % HOOK_TABLES[table]
        lines.extend(prefix + "-I %s %d %s" % (HOOKS[table], index + 1, spec) for index, spec in sorted(state.jumps))
        for name, rules in state.chains:
            lines.append(prefix + "-N %s" % name)
            lines.extend(prefix + "-A %s %s" % (name, spec) for spec in rules)
    return lines


def set_lines(sets):
    """Sets as ipset commands. A set with a timeout is filled by the filtering resolver:
    its members follow DNS, so they are not state to compare or report."""
    lines = []
    for name in sorted(sets):
        ipset = sets[name]
        timeout = ipset.options.get("timeout")
        suffix = " timeout %s" % timeout if timeout else ""
        lines.append("ipset create %s %s family %s%s" % (name, ipset.settype, ipset.family, suffix))
        if not timeout:
            lines.extend("ipset add %s %s" % (name, member) for member in ipset.members)
    return lines


def change_list(before, after):
    """{"added": [...], "removed": [...]} between two line lists, order-aware.

    A rule that only moved shows up as removed and added, because order is
    semantics in a chain.
    """
    added = []
    removed = []
    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("delete", "replace"):
            removed.extend(before[i1:i2])
        if tag in ("insert", "replace"):
            added.extend(after[j1:j2])
    return {"added": added, "removed": removed}


def family_changes(current, desired, current_sets, desired_sets, current_hooks=None, desired_hooks=None):
    """Changes for one family: its rules (filter, then the other tables) and its ipsets."""
    before = state_lines(current) + hook_lines(current_hooks) + set_lines(current_sets)
    after = state_lines(desired) + hook_lines(desired_hooks) + set_lines(desired_sets)
    return change_list(before, after)


def diff_text(states, sets_by_family, hooks_by_family=None):
    """Text for Ansible's diff: one section per family."""
    chunks = []
    for family in sorted(states):
        lines = (state_lines(states[family]) + hook_lines((hooks_by_family or {}).get(family))
                 + set_lines(sets_by_family.get(family, {})))
        chunks.append("# %s\n%s\n" % (family, "\n".join(lines)))
    return "".join(chunks)
