# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Other firewall managers on a host (nftables.service, firewalld, ufw) and what each does to the egress rules.

Private to agentguard.hardening: no compatibility promise outside the collection.
Read-only and pure: the readers (file text, glob, command runner) are passed in, so the logic is tested without the
managers installed. What each manager does comes from its Debian 12 unit and scripts (nftables 1.0.6: ExecStart and
ExecReload `nft -f /etc/nftables.conf`, ExecStop `nft flush ruleset`; firewalld 1.3.3: Conflicts= with iptables.service,
ip6tables.service, ipset.service and nftables.service; ufw 0.36.2: /lib/ufw/ufw-init-functions), not from runs of them.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

from ansible_collections.agentguard.hardening.plugins.module_utils._host import parse_show

UNITS = {"nftables": "nftables.service", "firewalld": "firewalld.service", "ufw": "ufw.service"}
PACKAGES = ["nftables", "firewalld", "ufw"]
NFT_EXEC_PROPERTIES = "ExecStart,ExecReload,ExecStop"
FIREWALLD_CONF = "/etc/firewalld/firewalld.conf"
UFW_CONF = "/etc/ufw/ufw.conf"
UFW_DEFAULTS = "/etc/default/ufw"
# nft's default include directory (nft -h: "Default is: /etc"); "./name" is relative to the working directory, which
# systemd sets to / for a service.
NFT_INCLUDE_PATH = "/etc"
MAX_FILES = 64
# Statements that remove the tables iptables-nft keeps this policy in: flush ruleset (of every family, or of ip/ip6),
# and flush/delete/destroy of the ip or ip6 tables iptables-nft uses.
_FLUSH_RULESET = re.compile(r"\bflush\s+ruleset\b(?:\s+(ip6?|inet|arp|bridge|netdev)\b)?")
_TABLE = re.compile(r"\b(flush|delete|destroy)\s+table\s+(ip6?)\s+(filter|mangle|nat|raw)\b")
_INCLUDE = re.compile(r'\binclude\s+"([^"]+)"')
_EXEC_ARGV = re.compile(r"argv\[\]=(.*?) ; ")


def _strip_comments(text):
    """nft text without its comments (# to the end of a line, outside double quotes)."""
    lines = []
    for line in text.splitlines():
        quoted, cut = False, len(line)
        for index, char in enumerate(line):
            if char == '"':
                quoted = not quoted
            elif char == "#" and not quoted:
                cut = index
                break
        lines.append(line[:cut])
    return "\n".join(lines)


def _include_paths(name, glob):
    """The files an `include "name"` statement reads, in the order nft reads them."""
    if name.startswith("/"):
        path = name
    elif name.startswith("./"):
        path = "/" + name[2:]
    else:
        path = os.path.join(NFT_INCLUDE_PATH, name)
    if any(char in name for char in "*?["):
        return sorted(glob(path))
    return [path]


def nft_script_flush(text, where, read, glob, seen=None):
    """(statement, files): the first statement of an nft script (and of what it includes) that removes the iptables-nft
    tables, as "WHERE: STATEMENT" ('' when none), and the files read. read(path) -> text or None; glob(pattern) -> paths."""
    found, where_found, files = _script_flush(text, where, read, glob, [] if seen is None else seen)
    return ("%s: %s" % (where_found, found) if found else ""), files


def _script_flush(text, where, read, glob, seen):
    """(statement, where it is, files read) of nft_script_flush."""
    body = _strip_comments(text or "")
    # Statements outside quoted strings (a comment "flush ruleset" is no statement).
    bare = re.sub(r'"[^"]*"', '""', body)
    for match in _FLUSH_RULESET.finditer(bare):
        if match.group(1) in (None, "ip", "ip6"):
            return " ".join(match.group(0).split()), where, seen
    match = _TABLE.search(bare)
    if match:
        return " ".join(match.group(0).split()), where, seen
    for name in _INCLUDE.findall(body):
        for path in _include_paths(name, glob):
            if path in seen or len(seen) >= MAX_FILES:
                continue
            seen.append(path)
            found, where_found, _files = _script_flush(read(path), path, read, glob, seen)
            if found:
                return found, where_found, seen
    return "", "", seen


def parse_exec(value):
    """The command lines (argv lists) of a systemctl show ExecStart=/ExecReload=/ExecStop= value."""
    return [argv.split() for argv in _EXEC_ARGV.findall(value or "")]


def nft_command_flush(argv, read, glob):
    """(statement, files) of one command line of nftables.service: `nft -f FILE` reads FILE, `nft flush ruleset` (or a
    script given as arguments, Enterprise Linux's reload) is read as it is. Other commands: ('', [])."""
    if not argv or os.path.basename(argv[0]) != "nft":
        return "", []
    args = argv[1:]
    for index, arg in enumerate(args):
        if arg in ("-f", "--file") and index + 1 < len(args):
            path = args[index + 1]
            found, files = nft_script_flush(read(path), path, read, glob, [path])
            return found, files
    words = [arg for arg in args if not arg.startswith("-")]
    command = "nft " + " ".join(words)
    found, where, files = _script_flush(" ".join(words), command, read, glob, [])
    if not found:
        return "", files
    # In the command itself: the command says it; in a file it includes: FILE: statement.
    return (command if where == command else "%s: %s" % (where, found)), files


def nftables_flushes(show, read, glob):
    """{"start", "reload", "stop"}: for each action of nftables.service, the statement that removes the iptables-nft
    tables ('' when it keeps them), from `systemctl show -p ExecStart,ExecReload,ExecStop` (show: {property: value});
    and "files", the configuration files read."""
    result, files = {}, []
    for action, prop in (("start", "ExecStart"), ("reload", "ExecReload"), ("stop", "ExecStop")):
        result[action] = ""
        for argv in parse_exec(show.get(prop)):
            found, read_files = nft_command_flush(argv, read, glob)
            files.extend(path for path in read_files if path not in files)
            if found:
                result[action] = found
                break
    result["files"] = files
    return result


def _shell_value(text, key, default):
    """KEY=value of a shell-style configuration file (last one wins; quotes removed)."""
    value = default
    for line in (text or "").splitlines():
        match = re.match(r"^\s*%s\s*=\s*(.*?)\s*$" % re.escape(key), line)
        if match:
            value = match.group(1).strip("\"'")
    return value


def iptables_backend(version_text):
    """nf_tables, legacy or unknown from `iptables -V` ("iptables v1.8.9 (nf_tables)")."""
    if "nf_tables" in (version_text or ""):
        return "nf_tables"
    if "legacy" in (version_text or ""):
        return "legacy"
    return "unknown"


def detect_firewalls(packages, units, read, glob, show_nftables, backend):
    """The firewall managers present on a host, as [{"name", "unit", "installed", "enabled", "active", ...}], each
    with "alters_rules" (whether an action of it changes the egress rules: their chains, jumps or the OUTPUT policy),
    "opens_egress" (whether egress is then open) and "effect" (what it does to them, one sentence).

    packages: the installed names among PACKAGES; units: {unit: {"active", "enabled"}} (empty without systemd);
    read(path) -> text or None; glob(pattern) -> paths; show_nftables() -> {property: value} of nftables.service's
    Exec properties; backend: iptables_backend of the host. A manager counts when its package is installed or its unit
    is enabled or active; one that is neither enabled nor active (nor, for ufw, ENABLED=yes) is listed with
    alters_rules false: only a start by hand would run it.
    """
    found = []
    for name in ("nftables", "firewalld", "ufw"):
        unit = UNITS[name]
        state = units.get(unit) or {}
        enabled, active = state.get("enabled", "unknown"), state.get("active", "unknown")
        installed = name in packages
        running = enabled in ("enabled", "enabled-runtime", "alias") or active in ("active", "activating", "reloading")
        if not installed and not running:
            continue
        entry = {"name": name, "unit": unit, "installed": installed, "enabled": enabled, "active": active}
        entry.update(_effect(name, entry, running, read, glob, show_nftables, backend))
        found.append(entry)
    return found


def _state(entry):
    return "%s is %s and %s" % (entry["unit"], entry["enabled"], entry["active"])


def _effect(name, entry, running, read, glob, show_nftables, backend):
    if name == "nftables":
        return _nftables_effect(entry, running, read, glob, show_nftables, backend)
    if name == "firewalld":
        return _firewalld_effect(entry, running, read)
    return _ufw_effect(entry, running, read)


def _nftables_effect(entry, running, read, glob, show_nftables, backend):
    if not running:
        return {"alters_rules": False, "opens_egress": False, "effect": "%s: nothing runs it" % _state(entry)}
    flushes = nftables_flushes(show_nftables(), read, glob)
    actions = [action for action in ("start", "reload", "stop") if flushes[action]]
    extra = {"flushes": dict((action, flushes[action]) for action in ("start", "reload", "stop")),
             "config_files": flushes["files"]}
    if not actions:
        return dict(extra, alters_rules=False, opens_egress=False,
                    effect="%s; its configuration (%s) removes no table of iptables: its own tables run beside ours, "
                           "which still drop what the allowlist does not name" % (_state(entry), ", ".join(flushes["files"]) or "none"))
    when = []
    if flushes["start"]:
        when.append("start" + (" (at every boot: it is enabled)" if entry["enabled"] in ("enabled", "alias") else ""))
    if flushes["stop"] or flushes["start"]:
        when.append("restart")
    when += [action for action in ("reload", "stop") if flushes[action]]
    statements = "; ".join(sorted(set(flushes[action] for action in actions)))
    if backend == "legacy":
        return dict(extra, alters_rules=False, opens_egress=False,
                    effect="%s; its %s run %s, which removes nftables tables only: these rules are iptables' legacy "
                           "backend's, which it does not touch" % (_state(entry), ", ".join(when), statements))
    return dict(extra, alters_rules=True, opens_egress=True,
                effect="%s; its %s run %s, which deletes the tables iptables%s keeps the allowlist in: after it, "
                       "egress is open" % (_state(entry), ", ".join(when), statements,
                                           "" if backend == "nf_tables" else " (if it uses the nf_tables backend, "
                                                                             "Debian's and Enterprise Linux's default)"))


def _firewalld_effect(entry, running, read):
    firewall_backend = _shell_value(read(FIREWALLD_CONF), "FirewallBackend", "nftables").lower()
    extra = {"firewall_backend": firewall_backend}
    if not running:
        return dict(extra, alters_rules=False, opens_egress=False, effect="%s: nothing runs it" % _state(entry))
    conflicts = ("its unit conflicts with iptables.service, ip6tables.service and ipset.service (the Enterprise "
                 "Linux units that load these rules at boot): starting it stops them, and at boot only one side starts")
    if firewall_backend == "iptables":
        return dict(extra, alters_rules=True, opens_egress=True,
                    effect="%s with FirewallBackend=iptables: its start (at boot too), reload and restart flush the "
                           "iptables tables, the allowlist's chains included, so egress is open; and %s"
                           % (_state(entry), conflicts))
    return dict(extra, alters_rules=True, opens_egress=True,
                effect="%s with FirewallBackend=%s: it keeps its rules in tables of its own, but %s, whose stop "
                       "flushes the rules they loaded, the allowlist included" % (_state(entry), firewall_backend, conflicts))


def _ufw_effect(entry, running, read):
    ufw_enabled = _shell_value(read(UFW_CONF), "ENABLED", "no").lower() == "yes"
    defaults = read(UFW_DEFAULTS)
    manage_builtins = _shell_value(defaults, "MANAGE_BUILTINS", "no").lower() == "yes"
    output_policy = _shell_value(defaults, "DEFAULT_OUTPUT_POLICY", "ACCEPT").upper()
    extra = {"ufw_enabled": ufw_enabled, "manage_builtins": manage_builtins, "output_policy": output_policy}
    if not ufw_enabled:
        return dict(extra, alters_rules=False, opens_egress=False,
                    effect="%s, but ufw is not enabled (%s: ENABLED=no): its unit does nothing until `ufw enable`"
                           % (_state(entry), UFW_CONF))
    if manage_builtins:
        return dict(extra, alters_rules=True, opens_egress=True,
                    effect="%s with MANAGE_BUILTINS=yes (%s): its start (at boot too), reload, `ufw enable` and "
                           "`ufw disable` flush every filter chain and the mangle and nat builtin chains, the allowlist's "
                           "included, so egress is open" % (_state(entry), UFW_DEFAULTS))
    return dict(extra, alters_rules=True, opens_egress=False,
                effect="%s: its start (at boot too), reload and `ufw disable` set the OUTPUT policy (%s, then ACCEPT on "
                       "disable; egress_scope host sets DROP): the allowlist's chains, which end in a DROP of their own, "
                       "still hold, the policy is their backstop only" % (_state(entry), output_policy))


def read_firewalls(host, packages, active, enabled):
    """{"iptables_backend", "firewalls"} of host (a HostIO of _hostio) for egress_host_state: packages: the installed
    names (of a query that held PACKAGES); active, enabled: {unit: answer} of a query that held UNITS (empty without
    systemd). Runs `iptables -V`, and `systemctl show` of nftables.service's Exec properties only when that unit is
    enabled or active."""
    run = host.output
    units = dict((unit, {"active": active.get(unit, "unknown"), "enabled": enabled.get(unit, "unknown")})
                 for unit in UNITS.values() if unit in active or unit in enabled)
    backend = iptables_backend(run(["iptables", "-V"]))

    def show_nftables():
        blocks = parse_show(run(["systemctl", "show", "--property=" + NFT_EXEC_PROPERTIES, "--", UNITS["nftables"]]))
        return blocks[0] if blocks else {}
    return {"iptables_backend": backend,
            "firewalls": detect_firewalls(packages, units, host.read_text, host.glob, show_nftables, backend)}


# What the guard (agentguard-guard.service, egress_guard) does about it, by whether egress_guard is on.
GUARD_ON = ("agentguard-guard.service (egress_guard) restores the allowlist's part within about 2 s of the change, "
            "and logs it as a tamper event")
GUARD_OFF = ("the guard does not run (egress_guard false, or no systemd): nothing restores the allowlist's part until "
             "the next run of the role")
ADVICE = {
    "nftables": "disable nftables.service or take the statement out of its configuration (its ExecStop flushes the "
                "ruleset whatever its configuration says)",
    "firewalld": "disable firewalld.service (systemctl disable --now firewalld.service) where this role manages the "
                 "firewall",
    "ufw": "disable ufw (ufw disable, then systemctl disable ufw.service), or set MANAGE_BUILTINS=no",
}


def firewall_warnings(firewalls, guard=True):
    """One sentence per firewall manager that changes the egress rules: what it does, and what the guard does about it
    (guard: egress_guard), for the plan and the playbook summary. [] when none does."""
    warnings = []
    for entry in firewalls or []:
        if not isinstance(entry, dict) or not entry.get("alters_rules"):
            continue
        text = "%s (%s)" % (entry.get("name"), entry.get("effect"))
        if guard:
            text += "; %s" % GUARD_ON
            if entry.get("opens_egress"):
                text += ", so egress is open for that long each time"
        else:
            text += "; %s" % GUARD_OFF
            if entry.get("opens_egress"):
                text += ", and egress stays open until then"
        if entry.get("opens_egress") and entry.get("name") in ADVICE:
            text += "; %s" % ADVICE[entry["name"]]
        warnings.append(text)
    return warnings
