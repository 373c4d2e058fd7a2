# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read-only answers about a host for egress_host_state: packages, units, files, users.

Private to agentguard.hardening: no compatibility promise outside the collection.
Every function takes the command runner it uses (host_state: the host, a HostIO of _hostio), so the logic is
tested without the host's tools.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import pwd
import shlex
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


# The systemctl show properties that answer is-active and is-enabled, for several units in one call.
UNIT_PROPERTIES = "Id,LoadState,ActiveState,UnitFileState"


def unit_states(units, run):
    """{unit: {"active": ..., "enabled": ...}}: what systemctl is-active and is-enabled answer.

    One `systemctl show` call answers every unit, known or not, in the order asked. It cannot show a
    template (name@.service), and an invalid name fails the whole call: those units, or all of them
    when the answer is incomplete, are asked with is-active and is-enabled one by one.
    """
    units = list(dict.fromkeys(units))
    shown = [unit for unit in units if "@." not in unit]
    answers = {}
    if shown:
        blocks = parse_show(run(["systemctl", "show", "--property=" + UNIT_PROPERTIES, "--"] + shown))
        if len(blocks) == len(shown):
            answers = dict((unit, {"active": block.get("ActiveState") or "unknown", "enabled": _enabled(unit, block)})
                           for unit, block in zip(shown, blocks))
    for unit in units:
        if unit not in answers:
            answers[unit] = dict((key, run(["systemctl", "is-" + key, unit]).strip() or "unknown")
                                 for key in ("active", "enabled"))
    return answers


def _enabled(unit, block):
    """is-enabled's answer: show reports an alias under its target's Id and with the target's state.

    A unit without a unit file is "not-found" (what recent systemd's is-enabled prints; older print nothing).
    """
    state = block.get("UnitFileState") or ("not-found" if block.get("LoadState") == "not-found" else "unknown")
    if state == "not-found":
        return state
    name = unit if "." in unit else unit + ".service"
    if state != "unknown" and block.get("Id") and block["Id"] != name:
        return "alias"
    return state


def parse_show(text):
    """systemctl show output (blocks of KEY=VALUE lines, one block per unit) as a list of dicts."""
    blocks, block = [], {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if block:
                blocks.append(block)
            block = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            block[key] = value
    return blocks


# os-release ID -> (distribution, os_family) as ansible.builtin.setup names them, for the IDs whose
# names setup does not derive by capitalising. Other IDs: family from ID_LIKE.
DISTRIBUTIONS = {
    "debian": ("Debian", "Debian"), "ubuntu": ("Ubuntu", "Debian"), "raspbian": ("Debian", "Debian"),
    "linuxmint": ("Linux Mint", "Debian"), "pop": ("Pop!_OS", "Debian"), "devuan": ("Devuan", "Debian"),
    "kali": ("Kali", "Debian"),
    "rhel": ("RedHat", "RedHat"), "centos": ("CentOS", "RedHat"), "rocky": ("Rocky", "RedHat"),
    "almalinux": ("AlmaLinux", "RedHat"), "ol": ("OracleLinux", "RedHat"), "fedora": ("Fedora", "RedHat"),
    "amzn": ("Amazon", "RedHat"),
}
FAMILY_LIKE = (("debian", "Debian"), ("ubuntu", "Debian"), ("rhel", "RedHat"), ("fedora", "RedHat"),
               ("centos", "RedHat"))


def parse_os_release(text):
    """The KEY=value pairs of an os-release file (shell syntax: quotes and escapes removed)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            try:
                values[key] = " ".join(shlex.split(value))
            except ValueError:  # unbalanced quote: keep the raw text
                values[key] = value.strip()
    return values


def platform_facts(os_release, debian_version=""):
    """distribution, distribution_major_version and os_family of a Linux host from its os-release.

    What the role keys its per-platform values on, without the facts package of module_utils, whose
    import loads every fact collector (a third of this module's run time).
    debian_version: /etc/debian_version, the major version of Debian releases without VERSION_ID.
    """
    ident = os_release.get("ID", "").lower()
    distribution, family = DISTRIBUTIONS.get(ident, (None, None))
    if distribution is None:
        distribution = os_release.get("NAME") or ident or "unknown"
        like = os_release.get("ID_LIKE", "").lower().split()
        family = next((fam for key, fam in FAMILY_LIKE if key in like), distribution)
    version = os_release.get("VERSION_ID", "")
    if not version and ident == "debian":
        version = debian_version.strip()
    major = version.split(".")[0]
    return {"distribution": distribution, "os_family": family,
            "distribution_major_version": major if major.isdigit() else "unknown"}


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


def host_state(query, host, systemd, os_family):
    """Everything an unchanged run of the role needs to know, as one dictionary."""
    run = host.output
    paths = dict((path, describe(path)) for path in query.get("paths") or [])
    active, enabled = query.get("active") or [], query.get("enabled") or []
    units = unit_states(active + enabled, run) if systemd else {}
    return {
        "systemd": systemd,
        "packages": installed(MANAGERS.get(os_family), query.get("packages") or [], run),
        "active": dict((unit, units[unit]["active"]) for unit in active if unit in units),
        "enabled": dict((unit, units[unit]["enabled"]) for unit in enabled if unit in units),
        "paths": dict((path, entry) for path, entry in paths.items() if entry is not None),
        "missing_users": missing_users(query.get("users") or [], host.uid_of),
    }
