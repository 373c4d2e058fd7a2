# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The desired-state file and the apply lock: what egress_rules writes after an apply and the guard holds.

Private to agentguard.hardening. Apart from the guard's daemon (_guard) so that egress_rules and
egress_host_state import only this (the guard's watch loop, metrics and journal code are not theirs to
load on every run). Stdlib only, like everything in GUARD_FILES.

The document (desired_document; DESIRED_FILE in the module's state directory): per family our part of
every table as the module computes it (_plan.make_plan) and our ipsets with their static members, with
the sha256 of that content (policy_hash) and the time of the apply. ApplyLock is the lock (LOCK_FILE) and
the apply-in-progress marker (MARKER_FILE) that egress_rules, the rollback script and the guard share.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import hashlib
import json
import os
import time
from collections import namedtuple

from ansible_collections.agentguard.hardening.plugins.module_utils._state import HookState, IpSet, ManagedState

VERSION = 1
STATE_DIR = "/var/lib/agentguard/egress"
DESIRED_FILE = "desired.json"
MARKER_FILE = "applying"
LOCK_FILE = "lock"
# A marker older than this (seconds) is stale: its apply died, and the armed rollback has run by then.
MARKER_MAX_AGE = 900
# The module_utils the guard (_guard) needs on the host (the role installs them; all import only the stdlib).
# Here, not in _guard: the role's filters read it without loading the guard's code.
GUARD_FILES = ("_guard.py", "_desired.py", "_apply.py", "_netfilter.py", "_plan.py", "_diff.py", "_render.py", "_state.py",
               "_metrics.py", "_dnslog.py", "_logtime.py", "_tlsgate.py", "_policy.py", "_hostio.py")

Desired = namedtuple("Desired", ["families", "managed", "hooks", "sets", "hash", "applied"])
"""managed: {family: ManagedState}; hooks: {family: {hook: HookState}}; sets: {name: IpSet}."""


class GuardError(Exception):
    pass


# The desired-state file -------------------------------------------------------------------------

def _jumps(jumps):
    return [[index, spec] for index, spec in jumps]


def _chains(chains):
    return [[name, list(rules)] for name, rules in chains]


def _content(plan):
    families = {}
    for family in plan.families:
        state = plan.desired[family]
        families[family] = {
            "policy": state.policy,
            "jumps": _jumps(state.jumps),
            "chains": _chains(state.chains),
            "hooks": dict((hook, {"jumps": _jumps(h.jumps), "chains": _chains(h.chains)})
                          for hook, h in sorted(plan.desired_hooks[family].items())),
        }
    sets = dict((name, {"settype": s.settype, "family": s.family, "options": s.options, "members": list(s.members)})
                for name, s in sorted(plan.desired_sets.items()))
    return {"families": families, "sets": sets}


def policy_hash(content):
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def desired_document(plan, applied):
    """The desired-state file's content (a dict for JSON) for a plan that was applied at `applied`
    (epoch seconds); None when the plan removes everything (egress_state=absent: nothing to hold)."""
    if not plan.desired_sets and all(not plan.desired[f].chains for f in plan.families):
        return None
    content = _content(plan)
    return dict(version=VERSION, applied=applied, hash=policy_hash(content), **content)


def _tuple_jumps(items):
    return tuple((int(index), spec) for index, spec in items)


def _tuple_chains(items):
    return tuple((name, tuple(rules)) for name, rules in items)


def load_desired(doc):
    """Desired from a desired-state document; GuardError when it is not one this guard understands."""
    try:
        if doc.get("version") != VERSION:
            raise GuardError("desired state version %r, this guard reads %d" % (doc.get("version"), VERSION))
        managed, hooks = {}, {}
        for family, data in doc["families"].items():
            managed[family] = ManagedState(data["policy"], _tuple_jumps(data["jumps"]), _tuple_chains(data["chains"]))
            hooks[family] = dict((hook, HookState(_tuple_jumps(h["jumps"]), _tuple_chains(h["chains"])))
                                 for hook, h in data["hooks"].items())
        sets = dict((name, IpSet(name, s["settype"], s["family"], dict(s["options"]), tuple(s["members"])))
                    for name, s in doc["sets"].items())
        return Desired(tuple(sorted(managed)), managed, hooks, sets, doc["hash"], doc.get("applied"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise GuardError("desired state unreadable: %r" % (exc,))


def write_json(path, data, mode=0o600):
    """Write, fsync, rename: a reader sees the old file or the new one, never a part."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, sort_keys=True, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path):
    """The JSON document at path, or None when there is no file."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except IOError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


class ApplyLock(object):
    """What egress_rules holds around an apply: the lock (LOCK_FILE, flock, shared with the rollback
    script and the guard) and the apply-in-progress marker (MARKER_FILE). The marker outlives a module
    that dies mid-apply, so the guard leaves the host to the armed rollback (MARKER_MAX_AGE)."""

    def __init__(self, state_dir, timeout=60.0):
        self.state_dir = state_dir
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        if not os.path.isdir(self.state_dir):
            os.makedirs(self.state_dir, 0o700)
        self.fd = os.open(os.path.join(self.state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except (IOError, OSError):
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise GuardError("the lock %s is held by another apply, the rollback or the guard for %d s"
                                     % (os.path.join(self.state_dir, LOCK_FILE), self.timeout))
                time.sleep(0.1)
        with open(os.path.join(self.state_dir, MARKER_FILE), "w") as handle:
            handle.write("%d\n" % os.getpid())
        return self

    def __exit__(self, *exc):
        try:
            os.unlink(os.path.join(self.state_dir, MARKER_FILE))
        except OSError:
            pass
        os.close(self.fd)
        return False


def sync_desired(state_dir, plan, now):
    """Make the desired-state file say what `plan` applied (removed when it removes everything).
    True when the file changed; an unchanged policy (same hash) keeps the file and its time."""
    path = os.path.join(state_dir, DESIRED_FILE)
    doc = desired_document(plan, now)
    try:
        existing = read_json(path)
    except ValueError:
        existing = {}
    if doc is None:
        if existing is None:
            return False
        os.unlink(path)
        return True
    if isinstance(existing, dict) and existing.get("hash") == doc["hash"] and existing.get("version") == VERSION:
        return False
    if not os.path.isdir(state_dir):
        os.makedirs(state_dir, 0o700)
    write_json(path, doc)
    return True


def desired_hash_of(state_dir):
    """The hash of the desired-state file in state_dir, None when there is none (or it is unreadable)."""
    try:
        doc = read_json(os.path.join(state_dir, DESIRED_FILE))
    except (IOError, OSError, ValueError):
        return None
    return doc.get("hash") if isinstance(doc, dict) else None
