# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read the live netfilter state, plan the change, and apply it atomically with rollback.

Private to agentguard.hardening. All commands go through one runner,
run(argv, data) -> (rc, stdout, stderr), so the ordering and rollback logic is
unit-tested with a recording runner and integration-tested against real kernels.
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
    render_hook_transaction,
    render_persistent,
    render_sets_destroy,
    render_sets_persistent,
    render_sets_update,
    render_transaction,
    temp_set_name,
)
from ansible_collections.agentguard.hardening.plugins.module_utils._state import (
    SET_PREFIXES,
    TEMP_SET_PREFIXES,
    LiveHook,
    live_state,
    parse_ipset_save,
)

SAVE = {"ipv4": "iptables-save", "ipv6": "ip6tables-save"}
RESTORE = {"ipv4": "iptables-restore", "ipv6": "ip6tables-restore"}
SET_FAMILIES = {"inet": "ipv4", "inet6": "ipv6"}
XTABLES_WAIT = "10"

Plan = namedtuple("Plan", [
    "families", "live", "live_sets", "desired", "desired_sets", "transactions",
    "sets_update", "sets_created", "sets_changed", "sets_obsolete", "changes", "changed",
    "rules", "sets_payload", "desired_hooks",
])


class CommandError(Exception):
    def __init__(self, argv, rc, out, err):
        self.argv, self.rc, self.out, self.err = argv, rc, out, err
        detail = (err or out or "").strip()
        super(CommandError, self).__init__("%s exited %d: %s" % (" ".join(argv), rc, detail))


class ApplyError(Exception):
    def __init__(self, cause, rollback_errors):
        self.cause = cause
        self.rollback_errors = list(rollback_errors)
        text = "apply failed: %s" % cause
        if self.rollback_errors:
            text += "; ROLLBACK ALSO FAILED, the host may be half-changed: %s" % "; ".join(self.rollback_errors)
        else:
            text += "; the previous rules were restored"
        super(ApplyError, self).__init__(text)


class Netfilter(object):
    """The commands we run, with argv lists only and the xtables lock honoured."""

    def __init__(self, run, bin_path):
        self._run = run
        self._bin = bin_path

    def _call(self, argv, data=None):
        rc, out, err = self._run(argv, data)
        if rc != 0:
            raise CommandError(argv, rc, out, err)
        return out

    def save(self, family):
        # Every table at once: filter, and mangle/nat where the forward path hooks in (HOOKS).
        return self._call([self._bin(SAVE[family], True)])

    def restore(self, family, payload, test=False):
        argv = [self._bin(RESTORE[family], True), "--noflush", "--wait", XTABLES_WAIT]
        if test:
            argv.append("--test")
        self._call(argv, payload)

    def has_ipset(self):
        return self._bin("ipset", False) is not None

    def ipset_save(self):
        if not self.has_ipset():
            return ""
        return self._call([self._bin("ipset", True), "save"])

    def ipset_restore(self, payload):
        self._call([self._bin("ipset", True), "restore"], payload)


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
    parts = [render_transaction(current, desired, foreign_output_rules)]
    for table in sorted(desired_hooks_):
        have = current_hooks[table]
        parts.append(render_hook_transaction(table, have.managed, desired_hooks_[table], have.foreign_rules))
    text = "".join(part for part in parts if part)
    return text or None


def _undo_transaction(plan, family):
    """The payload that puts our part of every table back as plan.live recorded it."""
    live = plan.live[family]
    return family_transaction(
        plan.desired[family],
        dict((table, LiveHook(state, live.hooks[table].foreign_rules)) for table, state in plan.desired_hooks[family].items()),
        live.managed,
        dict((table, hook.managed) for table, hook in live.hooks.items()),
        live.foreign_output_rules)


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


def _undo_sets(nf, plan, errors):
    """Put our ipsets back as they were in plan.live_sets."""
    try:
        now = parse_ipset_save(nf.ipset_save())
    except CommandError as exc:
        errors.append(str(exc))
        return
    old = dict((n, plan.live_sets[n]) for n in plan.sets_changed if n in plan.live_sets)
    text, created, changed = render_sets_update(dict((n, now[n]) for n in old if n in now), old)
    drop = [n for n in plan.sets_created if n in now]
    drop += [temp_set_name(n) for n in plan.sets_changed if temp_set_name(n) in now]
    payload = text + render_sets_destroy(drop)
    if payload:
        try:
            nf.ipset_restore(payload)
        except CommandError as exc:
            errors.append(str(exc))


def apply_plan(nf, plan):
    """Apply a changed plan; on any failure restore what was changed and raise ApplyError.

    Order: sets first (rules refer to them), every payload tested, then one
    iptables-restore transaction per family; obsolete sets are destroyed last,
    once no rule refers to them. Returns a list of warnings.
    """
    warnings = []
    applied = []
    sets_touched = False
    try:
        if plan.sets_update:
            sets_touched = True
            nf.ipset_restore(plan.sets_update)
        for family in plan.families:
            if plan.transactions[family]:
                nf.restore(family, plan.transactions[family], test=True)
        for family in plan.families:
            if plan.transactions[family]:
                nf.restore(family, plan.transactions[family])
                applied.append(family)
    except CommandError as exc:
        errors = []
        for family in reversed(applied):
            undo = _undo_transaction(plan, family)
            try:
                nf.restore(family, undo)
            except CommandError as undo_exc:
                errors.append(str(undo_exc))
        if sets_touched:
            _undo_sets(nf, plan, errors)
        raise ApplyError(exc, errors)
    if plan.sets_obsolete:
        try:
            nf.ipset_restore(render_sets_destroy(plan.sets_obsolete))
        except CommandError as exc:
            # The rules are final and correct; a set we no longer use is only clutter.
            warnings.append("could not destroy unused ipset(s) %s: %s" % (", ".join(plan.sets_obsolete), exc))
    return warnings
