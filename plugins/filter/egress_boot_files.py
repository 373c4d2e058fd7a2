# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the role agentguard.hardening.egress writes, byte for byte, and whether the host has it already.

Filters (egress_boot_files and egress_tls_gate_files, each documented in the .yml file of its name beside
this one; tested in tests/unit/plugins/filter/test_egress_phases.py), and the helpers egress_phases decides with:
whether the persisted files and the TLS gate's files are current on the host (from egress_host_state's hashes).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os

from ansible.errors import AnsibleFilterError

# The TLS gate's modes that run it, and where the module resolves through the filtering resolver.
GATE_MODES_ON = ("audit", "enforce")
LOOPBACK_RESOLVERS = ["127.0.0.1"]

RULES_COMMENT = "# Loaded at boot with plain iptables-restore; the live rules are applied by the module."
SETS_COMMENT = "# Loaded at boot with ipset restore, before the rules that use these sets."
DROPIN_BODY = ("# Load the egress rules before any network interface comes up.\n"
               "[Unit]\nWants=network-pre.target\nBefore=network-pre.target\n")
# ipset.service restores the sets the rules use: before the rules' units.
DROPIN_EXTRA = {"ipset.service": "Before=iptables.service ip6tables.service\n"}


def _dict(value):
    return value if isinstance(value, dict) else {}


def _sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def egress_boot_files(result, platform, marker, dropin_name):
    """Every file the role persists for this result, in the order it writes them: the sets file first (loaded
    first at boot), then the rules of each family that has rules, then the boot units' drop-ins.

    Each is {path, content, mode, dropin}; the content is byte for byte what the module returned under the
    role's header, so an unchanged host is recognised from the hashes egress_host_state returns. [] when the
    result holds no rules (a plan that could not run).
    """
    result, platform = _dict(result), _dict(platform)
    rules = result.get("rules")
    if not isinstance(rules, dict) or not platform:
        return []
    header = ("# %s (role egress); do not edit: every run rewrites this file.\n"
              "# It holds only what the module agentguard.hardening.egress_rules manages.\n" % marker)
    files = platform["persist_files"]
    sets = (result.get("sets") or "").strip()
    boot = [dict(path=files["sets"], content=header + SETS_COMMENT + "\n" + (sets + "\n" if sets else ""),
                 mode="0600", dropin=False)]
    for family, text in rules.items():
        if (text or "").strip():
            boot.append(dict(path=files[family], content=header + RULES_COMMENT + "\n" + text.strip() + "\n",
                             mode="0600", dropin=False))
    for unit in platform.get("dropin_units") or []:
        boot.append(dict(path="/etc/systemd/system/%s.d/%s" % (unit, dropin_name),
                         content="# %s (role egress); do not edit.\n" % marker + DROPIN_BODY + DROPIN_EXTRA.get(unit, ""),
                         mode="0644", dropin=True))
    return boot


# The gate's unit. Hardening, each directive checked with `systemd-analyze security` (molecule tls-gate):
# a high port needs no capability, and nginx started as a user never changes user; it writes only its
# logs and pid file (LogsDirectory=, StateDirectory=, owned by its user); it needs IPv4, IPv6 and the
# journal's socket only.
TLS_UNIT = """# {marker} (role egress); do not edit: every run rewrites this file.
[Unit]
Description=agentguard egress TLS gate (nginx stream: allowlisted server names only)
Documentation=man:nginx(8)
# The rules that redirect to it are loaded at boot before it{dns_comment}.
After=network.target {after}
{wants}
[Service]
Type=exec
User={user}
Group={user}
ExecStartPre={binary} -t -q -c {conf}
ExecStart={binary} -c {conf} -g 'daemon off;'
ExecReload=/bin/kill -HUP $MAINPID
KillSignal=SIGQUIT
TimeoutStopSec=10
Restart=on-failure
RestartSec=2
LogsDirectory={log_name}
LogsDirectoryMode=0750
StateDirectory={state_name}
StateDirectoryMode=0750
UMask=0027
CapabilityBoundingSet=
AmbientCapabilities=
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RemoveIPC=yes
KeyringMode=private
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
LimitNOFILE=16384

[Install]
WantedBy=multi-user.target
"""
TLS_DROPIN = """# {marker} (role egress); do not edit: every run rewrites this file.
# This unit's TLS connections go through the TLS gate: start it after the gate.
[Unit]
Wants={unit}
After={unit}
"""


def egress_tls_gate_files(result, mode, user, dns_mode, dns_servers, tls, marker, before_units=None, platform=None):
    """The TLS gate's files for this run's result of egress_rules, in write order: its nginx configuration
    (agentguard.hardening.egress_tls_gate_config, under the marker), its unit, and a drop-in per unit of
    egress_tls_gate_before_units. Each is {path, content, mode, kind} (kind config, unit or dropin). [] when the
    gate is off or the result has no tls_gate (a plan that could not run).

    The gate asks the filtering resolver in filtering mode, the trusted resolvers (egress_dns_servers) in pinned
    mode (only for names audit mode passes: an allowed name connects to the module's own resolution there).
    """
    from ansible_collections.agentguard.hardening.plugins.module_utils._tlsgate import render_nginx

    result, tls, platform = _dict(result), _dict(tls), _dict(platform)
    gate = _dict(result.get("tls_gate"))
    if mode not in GATE_MODES_ON or gate.get("mode") not in GATE_MODES_ON or not gate.get("listeners"):
        return []
    resolvers = LOOPBACK_RESOLVERS if dns_mode == "filtering" else list(dns_servers or [])
    log_dir, state_dir = tls["log_dir"], tls["state_dir"]
    try:
        config = render_nginx(gate, dns_mode, resolvers, log_dir + "/access.log", state_dir + "/nginx.pid",
                              log_dir + "/error.log")
    except (ValueError, KeyError, TypeError) as exc:
        raise AnsibleFilterError("egress_tls_gate_files: %s" % exc)
    config = "# %s (role egress); do not edit: every run rewrites this file.\n%s" % (marker, config)
    filtering = dns_mode == "filtering"
    after = " ".join(list(platform.get("boot_units") or []) + (["agentguard-dns.service"] if filtering else []))
    unit = TLS_UNIT.format(
        marker=marker, user=user, binary=tls["binary"], conf=tls["conf"], after=after,
        dns_comment=", and asks the filtering resolver" if filtering else "",
        wants="Wants=agentguard-dns.service\n" if filtering else "",
        log_name=log_dir.rsplit("/", 1)[1], state_name=state_dir.rsplit("/", 1)[1])
    files = [dict(path=tls["conf"], content=config, mode="0644", kind="config"),
             dict(path="/etc/systemd/system/%s" % tls["unit"], content=unit, mode="0644", kind="unit")]
    for name in before_units or []:
        files.append(dict(path="/etc/systemd/system/%s.d/%s" % (name, tls["dropin"]), mode="0644", kind="dropin",
                          content=TLS_DROPIN.format(marker=marker, unit=tls["unit"])))
    return files


def _files_current(files, host):
    """True when every file ({path, content, mode}) exists with that content and mode, owned by root, as
    egress_host_state found it when the run started."""
    paths = _dict(host.get("paths"))
    for wanted in files:
        have = _dict(paths.get(wanted["path"]))
        if (have.get("sha256") != _sha256(wanted["content"]) or have.get("mode") != wanted["mode"]
                or have.get("uid") != 0 or have.get("gid") != 0):
            return False
    return True


def _boot_files_current(boot_files, host, platform):
    """True when every file has the wanted content, owner and mode, and the boot units are enabled (as
    egress_host_state found them when the run started)."""
    if not _files_current(boot_files, host):
        return False
    if host.get("systemd"):
        enabled = _dict(host.get("enabled"))
        return all(enabled.get(unit) == "enabled" for unit in platform.get("boot_units") or [])
    return True


def _tls_files_current(tls_files, host, unit):
    """True when the gate's files have the wanted content, owner and mode, and its unit is enabled and active."""
    return (_files_current(tls_files, host) and _dict(host.get("enabled")).get(unit) == "enabled"
            and _dict(host.get("active")).get(unit) == "active")


GUARD_UNIT = """# {marker} (role egress); do not edit: every run rewrites this file.
[Unit]
Description=agentguard egress guard (holds the host to the last applied egress rules)
Documentation=file://{lib}/ansible_collections/agentguard/hardening/plugins/module_utils/_guard.py
# After the persisted rules and the firewall managers that load or reset netfilter at boot; ready
# (Type=notify) once its first check has restored our part, so the units Before= it find the rules.
DefaultDependencies=no
After=local-fs.target {after}
Before=network-pre.target shutdown.target {before}
Wants=network-pre.target
Conflicts=shutdown.target

[Service]
Type=notify
ExecStart=/usr/bin/python3 -I {entry} --state-dir {state_dir} --guard-dir {guard_dir}{metrics}
Restart=always
RestartSec=1
TimeoutStartSec=60
StateDirectory={guard_name}
StateDirectoryMode=0700
ReadWritePaths={state_dir} /run{metrics_path}
# Root-only files (the metrics file is made readable to node_exporter by its writer).
UMask=0077
# Root for netfilter, with only the capabilities iptables, ip6tables and ipset need.
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW
AmbientCapabilities=
NoNewPrivileges=yes
# No network of its own: netlink (nf_tables events, ipset, nft), the legacy backend's raw socket calls
# (AF_INET/AF_INET6, setsockopt only) and the journal; no IP packet may be sent or received.
RestrictAddressFamilies=AF_NETLINK AF_UNIX AF_INET AF_INET6
IPAddressDeny=any
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateMounts=yes
DevicePolicy=closed
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
MemoryMax=128M
TasksMax=16

[Install]
WantedBy=multi-user.target
"""
GUARD_AFTER = ("nftables.service", "firewalld.service", "ufw.service")
# Where the guard lives on a host (its desired state and status: _guard.STATE_DIR, _guard.GUARD_DIR).
GUARD = dict(unit="agentguard-guard.service", lib="/usr/lib/agentguard/guard", entry="/usr/lib/agentguard/agentguard-guard",
             state_dir="/var/lib/agentguard/egress", guard_dir="/var/lib/agentguard/guard")


def guard_settings(guard):
    """GUARD with the run's settings (the role's __egress_run.guard: wanted, metrics, metrics_dir, before_units)."""
    return dict(GUARD, **_dict(guard))


def _collection_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def egress_guard_files(guard, marker, platform=None, metrics=False, metrics_dir=None, before_units=None):
    """The guard's files (agentguard-guard.service, _guard.py), in write order: the module_utils it runs
    (_guard.GUARD_FILES, read from this collection's plugins/module_utils, a checkout's or an installed
    collection's), its entry point (roles/egress/files/agentguard-guard) and its unit. Each is {path,
    content, mode, kind} (kind code, entry or unit). guard: GUARD's keys (lib, entry, unit, state_dir,
    guard_dir) override GUARD."""
    from ansible_collections.agentguard.hardening.plugins.module_utils._guard import GUARD_FILES

    guard, platform = guard_settings(guard), _dict(platform)
    root = _collection_root()
    code_dir = guard["lib"] + "/ansible_collections/agentguard/hardening/plugins/module_utils"
    files = []
    for name in GUARD_FILES:
        with open(os.path.join(root, "plugins", "module_utils", name)) as handle:
            files.append(dict(path="%s/%s" % (code_dir, name), content=handle.read(), mode="0644", kind="code"))
    with open(os.path.join(root, "roles", "egress", "files", "agentguard-guard")) as handle:
        files.append(dict(path=guard["entry"], content=handle.read(), mode="0644", kind="entry"))
    after = list(platform.get("boot_units") or []) + list(GUARD_AFTER)
    unit = GUARD_UNIT.format(
        marker=marker, lib=guard["lib"], entry=guard["entry"], state_dir=guard["state_dir"],
        guard_dir=guard["guard_dir"], guard_name=guard["guard_dir"][len("/var/lib/"):],
        after=" ".join(after), before=" ".join(_unique_list(before_units)),
        metrics=" --metrics-dir %s" % metrics_dir if metrics and metrics_dir else "",
        metrics_path=" -%s" % metrics_dir if metrics and metrics_dir else "")
    files.append(dict(path="/etc/systemd/system/%s" % guard["unit"], content=unit, mode="0644", kind="unit"))
    return files


def _unique_list(items):
    seen = []
    for item in items or []:
        if item not in seen:
            seen.append(item)
    return seen


def guard_paths(guard):
    """What the guard leaves on a host: its unit, its entry point and its code's directory."""
    guard = guard_settings(guard)
    return ["/etc/systemd/system/%s" % guard["unit"], guard["entry"], guard["lib"]]


def guard_files_current(files, host, unit):
    """True when the guard's files have the wanted content, owner and mode, and its unit is enabled and active."""
    return (_files_current(files, host) and _dict(host.get("enabled")).get(unit) == "enabled"
            and _dict(host.get("active")).get(unit) == "active")


class FilterModule(object):
    def filters(self):
        return {
            "egress_boot_files": egress_boot_files,
            "egress_tls_gate_files": egress_tls_gate_files,
            "egress_guard_files": egress_guard_files,
        }
