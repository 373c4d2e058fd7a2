# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read-only answers about a host for egress_host_state: packages, units, files, users.

Private to agentguard.hardening: no compatibility promise outside the collection.
Every function takes the command runner it uses, so the logic is tested without the host's tools.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import pwd
import stat

# Which package database answers for an os_family.
MANAGERS = {"Debian": "dpkg", "RedHat": "rpm"}


def installed(manager, names, run):
    """The names among `names` that are installed, sorted. run(argv) returns stdout ('' on error)."""
    names = list(names)
    if not names or manager not in ("dpkg", "rpm"):
        return []
    if manager == "dpkg":
        out = run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n"] + names)
        # "ii" is installed; "rc" (removed, configuration left) and "un" are not.
        return sorted(set(line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["ii"]) & set(names))
    out = run(["rpm", "-q", "--qf", "%{NAME}\n"] + names)
    # For a missing package rpm prints "package X is not installed", never the bare name.
    return sorted(set(line.strip() for line in out.splitlines()) & set(names))


def unit_states(verb, units, run):
    """systemctl is-active / is-enabled per unit ('unknown' when systemctl says nothing)."""
    # One call per unit: given several, systemctl stops at the first unknown one.
    return dict((unit, run(["systemctl", verb, unit]).strip() or "unknown") for unit in units)


def describe(path):
    """type, mode, owner and (regular files) the SHA-256 of a path, not following a link; None if absent."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    entry = {"type": "file" if stat.S_ISREG(info.st_mode) else "other",
             "mode": "%04o" % stat.S_IMODE(info.st_mode), "uid": info.st_uid, "gid": info.st_gid}
    if entry["type"] == "file":
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(65536), b""):
                digest.update(block)
        entry["sha256"] = digest.hexdigest()
    return entry


def missing_users(names, lookup=pwd.getpwnam):
    """The user names without a passwd entry; a numeric uid needs none (the rules match the uid)."""
    missing = []
    for name in names:
        text = str(name)
        if text.isdigit():
            continue
        try:
            lookup(text)
        except KeyError:
            missing.append(text)
    return missing


def host_state(query, run, systemd, os_family):
    """Everything an unchanged run of the role needs to know, as one dictionary."""
    paths = dict((path, describe(path)) for path in query.get("paths") or [])
    return {
        "systemd": systemd,
        "packages": installed(MANAGERS.get(os_family), query.get("packages") or [], run),
        "active": unit_states("is-active", query.get("active") or [], run) if systemd else {},
        "enabled": unit_states("is-enabled", query.get("enabled") or [], run) if systemd else {},
        "paths": dict((path, entry) for path, entry in paths.items() if entry is not None),
        "missing_users": missing_users(query.get("users") or []),
    }
