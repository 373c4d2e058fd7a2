# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read the live state and plan the change: everything check mode reports and apply executes.

Private to agentguard.hardening. Pure functions over the parsed state, except read_live, which asks
a Netfilter (_netfilter) for it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from collections import namedtuple

from ansible_collections.agentguard.hardening.plugins.module_utils._diff import (
    diff_text,
    family_changes,
)
from ansible_collections.agentguard.hardening.plugins.module_utils._render import (
    desired_hooks,
    desired_sets,
    desired_state,
    hook_transaction_body,
    merge_section,
    render_persistent,
    render_sets_destroy,
    render_sets_persistent,
    render_sets_update,
    render_transaction,
)
from ansible_collections.agentguard.hardening.plugins.module_utils._state import (
    EMPTY_HOOK,
    HOOK_TABLES,
    SET_PREFIXES,
    TEMP_SET_PREFIXES,
    LiveHook,
    live_state,
    parse_ipset_save,
)

SET_FAMILIES = {"inet": "ipv4", "inet6": "ipv6"}

Plan = namedtuple("Plan", [
    "families", "live", "live_sets", "desired", "desired_sets", "transactions",
    "sets_update", "sets_created", "sets_changed", "sets_obsolete", "changes", "changed",
    "rules", "sets_payload", "desired_hooks",
])


def split_sets(sets):
    """{family: {name: IpSet}} from {name: IpSet}."""
    result = dict((family, {}) for family in SET_PREFIXES)
    for name, ipset in sets.items():
        family = SET_FAMILIES.get(ipset.family)
        if family is None:
            family = "ipv6" if name.startswith(SET_PREFIXES["ipv6"]) else "ipv4"
        result[family][name] = ipset
    return result


def read_live(nf, families):
    live = dict((family, live_state(nf.save(family))) for family in families)
    # Includes leftover temporary sets ("agt4-*") from an interrupted run: ours to clean up.
    live_sets = parse_ipset_save(nf.ipset_save())
    return live, live_sets


def family_transaction(current, current_hooks, desired, desired_hooks_, foreign_output_rules):
    """One iptables-restore --noflush payload turning our part of every table from current into
    desired (filter, then the HOOKS tables), or None when nothing differs.

    current_hooks is {table: LiveHook}; desired_hooks_ is {table: HookState}."""
    bodies = {}
    for hook in sorted(desired_hooks_):
        have = current_hooks.get(hook) or LiveHook(EMPTY_HOOK, 0)
        body = hook_transaction_body(hook, have.managed, desired_hooks_[hook], have.foreign_rules)
        if body is not None:
            bodies.setdefault(HOOK_TABLES[hook], []).append(body)
    # One section per table (one commit each), the filter table first.
    filter_extra = [line for body in bodies.pop("filter", []) for line in body]
    parts = [render_transaction(current, desired, foreign_output_rules, filter_extra)]
    parts.extend(merge_section(table, bodies[table]) for table in sorted(bodies))
    text = "".join(part for part in parts if part)
    return text or None


def make_plan(policy, resolved, families, live, live_sets):
    """Compare and decide: everything check mode reports and apply executes."""
    want_sets = desired_sets(policy, resolved)
    want_sets = dict((n, s) for n, s in want_sets.items() if any(n.startswith(SET_PREFIXES[f]) for f in families))
    current_sets = dict((n, s) for n, s in live_sets.items() if not n.startswith(TEMP_SET_PREFIXES))
    desired = {}
    transactions = {}
    changes = {}
    rules = {}
    have_by_family = split_sets(current_sets)
    want_by_family = split_sets(want_sets)
    hooks = {}
    for family in families:
        desired[family] = desired_state(policy, resolved, family, want_sets)
        hooks[family] = desired_hooks(policy, resolved, family, want_sets)
        transactions[family] = family_transaction(live[family].managed, live[family].hooks, desired[family],
                                                  hooks[family], live[family].foreign_output_rules)
        changes[family] = family_changes(live[family].managed, desired[family],
                                         have_by_family[family], want_by_family[family],
                                         dict((t, h.managed) for t, h in live[family].hooks.items()), hooks[family])
        rules[family] = render_persistent(desired[family], live[family].policies, hooks[family])
    sets_update, created, changed_sets = render_sets_update(current_sets, want_sets)
    # Temporary sets left by an interrupted run would block the next swap: remove them first.
    sets_update = render_sets_destroy(n for n in live_sets if n.startswith(TEMP_SET_PREFIXES)) + sets_update
    obsolete = sorted(set(current_sets) - set(want_sets))
    changed = any(t is not None for t in transactions.values()) or bool(sets_update) or bool(obsolete)
    return Plan(families, live, live_sets, desired, want_sets, transactions, sets_update, created,
                changed_sets, obsolete, changes, changed, rules, render_sets_persistent(want_sets), hooks)


def plan_diff(plan):
    before_sets = split_sets(dict((n, s) for n, s in plan.live_sets.items() if not n.startswith(TEMP_SET_PREFIXES)))
    after_sets = split_sets(plan.desired_sets)
    return {
        "before_header": "managed netfilter state (live)",
        "after_header": "managed netfilter state (desired)",
        "before": diff_text(dict((f, plan.live[f].managed) for f in plan.families), before_sets,
                            dict((f, dict((t, h.managed) for t, h in plan.live[f].hooks.items())) for f in plan.families)),
        "after": diff_text(plan.desired, after_sets, plan.desired_hooks),
    }
