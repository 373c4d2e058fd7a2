# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Apply a plan atomically, and put back what was changed when a step fails.

Private to agentguard.hardening. Sets first (rules refer to them), every payload tested, one
iptables-restore transaction per family; unit-tested with a recording runner, and against real
kernels by tests/netns.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.agentguard.hardening.plugins.module_utils._netfilter import CommandError
from ansible_collections.agentguard.hardening.plugins.module_utils._plan import family_transaction
from ansible_collections.agentguard.hardening.plugins.module_utils._render import (
    render_sets_destroy,
    render_sets_update,
    temp_set_name,
)
from ansible_collections.agentguard.hardening.plugins.module_utils._state import (
    LiveHook,
    ParseError,
    parse_ipset_save,
)


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


def _undo_transaction(plan, family):
    """The payload that puts our part of every table back as plan.live recorded it."""
    live = plan.live[family]
    return family_transaction(
        plan.desired[family],
        dict((table, LiveHook(state, live.hooks[table].foreign_rules)) for table, state in plan.desired_hooks[family].items()),
        live.managed,
        dict((table, hook.managed) for table, hook in live.hooks.items()),
        live.foreign_output_rules)


def _undo_sets(nf, plan, errors):
    """Put our ipsets back as they were in plan.live_sets."""
    try:
        now = parse_ipset_save(nf.ipset_save())
    except (CommandError, ParseError) as exc:
        errors.append("cannot read the sets to put them back: %s" % exc)
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
