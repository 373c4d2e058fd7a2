# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the role agentguard.hardening.egress writes, byte for byte, and whether the host has it already.

Every file the role writes is rendered here, and written by one task file (roles/egress/tasks/write_files.yml).
Filters, each documented in the .yml file of its name beside this one: egress_boot_files (the persisted rules),
egress_tls_gate_files, egress_guard_files (tested in tests/unit/plugins/filter/test_egress_phases.py and
test_egress_guard_files.py), egress_resolver_files and egress_unit_action (what write_files.yml does with the unit;
tests/unit/plugins/filter/test_egress_resolver_files.py); and the helpers egress_phases decides with: whether the
persisted files, the TLS gate's and the guard's are current on the host (from egress_host_state's hashes).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean

# The TLS gate's modes that run it, and where the module resolves through the filtering resolver.
GATE_MODES_ON = ("audit", "enforce")
LOOPBACK_RESOLVERS = ["127.0.0.1"]
RESOLVED_SERVICE = "systemd-resolved.service"

RULES_COMMENT = "# Loaded at boot with plain iptables-restore; the live rules are applied by the module."
SETS_COMMENT = "# Loaded at boot with ipset restore, before the rules that use these sets."
DROPIN_BODY = ("# Load the egress rules before any network interface comes up.\n"
               "[Unit]\nWants=network-pre.target\nBefore=network-pre.target\n")
# ipset.service restores the sets the rules use: before the rules' units.
DROPIN_EXTRA = {"ipset.service": "Before=iptables.service ip6tables.service\n"}


def _dict(value):
    return value if isinstance(value, dict) else {}


def _bool(value):
    return boolean(value, strict=False)


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
                 mode="0600", kind="sets")]
    for family, text in rules.items():
        if (text or "").strip():
            boot.append(dict(path=files[family], content=header + RULES_COMMENT + "\n" + text.strip() + "\n",
                             mode="0600", kind="rules"))
    for unit in platform.get("dropin_units") or []:
        boot.append(dict(path="/etc/systemd/system/%s.d/%s" % (unit, dropin_name),
                         content="# %s (role egress); do not edit.\n" % marker + DROPIN_BODY + DROPIN_EXTRA.get(unit, ""),
                         mode="0644", kind="dropin"))
    return boot


# The sandbox of the units the role writes that run a program (the TLS gate's and the guard's), each directive
# checked with `systemd-analyze security` (molecule tls-gate, guard); each unit adds what is its own.
SANDBOX = """NoNewPrivileges=yes
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
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RemoveIPC=yes
KeyringMode=private
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
"""

# The gate's unit: SANDBOX, and what is the gate's own: a high port needs no capability, and nginx started as a user never changes user; it writes only its
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
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
{sandbox}SystemCallFilter=~@privileged @resources
LimitNOFILE=16384

[Install]
WantedBy=multi-user.target
"""
# The drop-in that orders a unit after one of ours (the TLS gate, the filtering resolver), with why in one line.
ORDER_DROPIN = """# {marker} (role egress); do not edit: every run rewrites this file.
# {why}
[Unit]
Wants={unit}
After={unit}
"""
TLS_DROPIN_WHY = "This unit's TLS connections go through the TLS gate: start it after the gate."


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
        marker=marker, sandbox=SANDBOX, user=user, binary=tls["binary"], conf=tls["conf"], after=after,
        dns_comment=", and asks the filtering resolver" if filtering else "",
        wants="Wants=agentguard-dns.service\n" if filtering else "",
        log_name=log_dir.rsplit("/", 1)[1], state_name=state_dir.rsplit("/", 1)[1])
    # Tested as the gate's user: as root, `nginx -t` would create the log and pid files as root, which the gate could
    # then not open. Ansible's temporary copy is root's only, so the test reads a copy in the state directory.
    validate = ("/bin/sh -c 'cp \"$1\" \"$2\" && chmod 0644 \"$2\" && setpriv --reuid=\"$3\" --regid=\"$3\" --clear-groups "
                "\"$4\" -t -q -c \"$2\"; rc=$?; rm -f \"$2\"; exit $rc' sh %%s %s/validate.conf %s %s" % (state_dir, user, tls["binary"]))
    # A new configuration is reloaded (nginx keeps open connections); a new unit needs a restart.
    files = [dict(path=tls["conf"], content=config, mode="0644", kind="config", then="reloaded", validate=validate),
             dict(path="/etc/systemd/system/%s" % tls["unit"], content=unit, mode="0644", kind="unit", then="restarted")]
    for name in before_units or []:
        files.append(dict(path="/etc/systemd/system/%s.d/%s" % (name, tls["dropin"]), mode="0644", kind="dropin",
                          content=ORDER_DROPIN.format(marker=marker, why=TLS_DROPIN_WHY, unit=tls["unit"])))
    return files


# The filtering resolver (egress_dns_mode filtering): its dnsmasq configuration, its unit and the drop-ins of
# egress_dns_before_units; then what points the host's name resolution at it (systemd-resolved's drop-in, or
# /etc/resolv.conf with a kept copy and the path unit that puts it back).
DNS_CONF_HEAD = """# {marker} (role egress); do not edit: every run rewrites this file.
# The filtering resolver of egress_dns_mode=filtering: the host's only resolver. It answers the
# names of egress_allow alone, forwards them to egress_dns_servers (the only DNS traffic the rules
# let out, and only for its user {user}), and adds every answer's addresses to the
# destination's allow sets, where they stay {timeout} s after the last answer.

# Loopback, for the processes of this host{networks}.
{listen}# Binds each address as it appears: container bridges come and go after the resolver starts.
bind-dynamic
port=53
user={user}
group={user}
pid-file=
# Upstreams come from this file alone: not from /etc/resolv.conf (which points here), and no
# answers from /etc/hosts (glibc reads it itself).
no-resolv
no-poll
no-hosts
# Clients never keep an answer, and this cache never serves one, longer than half the sets'
# timeout: an address is still in its set for at least half of it after any client learnt it.
max-ttl={ttl}
max-cache-ttl={ttl}
# Every query and its fate goes to the journal (egress_denials reads the refused names).
log-queries=extra
log-async=50

"""
DNS_UNIT = """# {marker} (role egress); do not edit: every run rewrites this file.
[Unit]
Description=agentguard egress filtering resolver (dnsmasq, allowlisted names only)
Documentation=man:dnsmasq(8)
# The allow sets it fills are restored at boot before it starts; it answers before anything
# that waits for name lookups (nss-lookup.target) starts.
{after}After=network-pre.target
Before=nss-lookup.target
Wants=nss-lookup.target

[Service]
Type=simple
ExecStartPre={binary} --test --conf-file={conf}
ExecStart={binary} --keep-in-foreground --conf-file={conf}
{resolv_guard}ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""
DNS_DROPIN_WHY = "This unit resolves names through the local filtering resolver: start it after that."
RESOLVED_CONF = """# {marker} (role egress); do not edit: every run rewrites this file.
# systemd-resolved forwards every name to the local filtering resolver (agentguard-dns.service)
# and to nothing else: no fallback servers, no multicast name resolution.
# resolved.conf and its drop-ins add up: the empty DNS= and Domains= first drop the servers and
# domains set before this file (resolved.conf's own), which resolved would otherwise ask first.
[Resolve]
DNS=
DNS={listen}
Domains=
Domains=~.
FallbackDNS=
LLMNR=no
MulticastDNS=no
DNSOverTLS=no
DNSSEC=no
"""
RESOLV_CONF = """# {marker} (role egress); do not edit: every run rewrites this file.
# The local filtering resolver (agentguard-dns.service) is this host's only resolver; the rules let
# no other process send DNS anywhere else.
{nameservers}options edns0 trust-ad
"""
RESOLV_GUARD = """#!/bin/sh
# {marker} (role egress); do not edit: every run rewrites this file.
# Points /etc/resolv.conf back at the filtering resolver when something else rewrote it. Written
# in place, as /etc/resolv.conf may be a bind mount (containers).
grep -qF -- '{marker}' /etc/resolv.conf 2>/dev/null && exit 0
cat {copy} > /etc/resolv.conf
echo "agentguard: /etc/resolv.conf pointed at the filtering resolver again"
"""
RESOLV_GUARD_SERVICE = """# {marker} (role egress); do not edit: every run rewrites this file.
[Unit]
Description=agentguard: point /etc/resolv.conf at the filtering resolver again

[Service]
Type=oneshot
ExecStart={guard}
"""
RESOLV_GUARD_PATH = """# {marker} (role egress); do not edit: every run rewrites this file.
[Unit]
Description=agentguard: keep /etc/resolv.conf pointed at the filtering resolver
# No default dependencies: they order a path unit before paths.target, which basic.target and so
# the resolver's unit come after; ordered after the resolver as well, that is a cycle, and systemd
# breaks it at boot by dropping a job, sometimes the resolver's start (no DNS on the host).
DefaultDependencies=no
After={unit}
Conflicts=shutdown.target
Before=shutdown.target

[Path]
PathChanged=/etc/resolv.conf
Unit={guard_unit}.service

[Install]
WantedBy={unit}
"""


def _dnsmasq_conf(options, dns, marker):
    """The filtering resolver's dnsmasq configuration for egress_rules' options (the role's __egress_rules_args)."""
    from ansible_collections.agentguard.hardening.plugins.filter.egress_dns_interfaces import egress_dns_interfaces
    from ansible_collections.agentguard.hardening.plugins.filter.egress_phases import egress_dns_names

    audit = options.get("mode") == "audit"
    servers = list(options.get("dns_servers") or [])
    interfaces = egress_dns_interfaces(options.get("scope_networks") or [])
    text = DNS_CONF_HEAD.format(
        marker=marker, user=dns["user"], timeout=options.get("dns_set_timeout"),
        networks=", and the container networks of egress_scope_networks, whose DNS the rules redirect here" if interfaces else "",
        listen="".join("listen-address=%s\n" % address for address in dns["listen"])
        + "".join("interface=%s\n" % interface for interface in interfaces),
        ttl=max(_int(options.get("dns_set_timeout")) // 2, 1))
    if audit:
        text += ("# Audit mode: every name is forwarded, nothing is refused; the rules log (and accept) what\n"
                 "# enforce mode would deny.\n" + "".join("server=%s\n" % server for server in servers))
    else:
        text += "# Every name not allowed below: NXDOMAIN, answered here, never asked upstream.\naddress=/#/\n"
    for name in egress_dns_names(options.get("allow"), options.get("families")):
        text += "\n# %s: %s%s\n" % (name["label"], name["host"],
                                    " and its subdomains" if name["subdomains"] else " (this exact name only)")
        text += "".join("server=/%s/%s\n" % (name["host"], server) for server in servers)
        if not name["subdomains"] and not audit:
            text += "address=/*.%s/\n" % name["host"]
        if name["sets"]:
            text += "ipset=/%s/%s\n" % (name["host"], ",".join(name["sets"]))
    return text


def _int(value, fallback=0):
    try:
        return int(value)
    except (TypeError, ValueError):
        return fallback


def egress_resolver_files(options, dns, marker, platform=None, before_units=None, use_resolved=False):
    """The filtering resolver's files, in two sets the role writes in turn (tasks/run_resolver.yml, each through
    tasks/write_files.yml): resolver (its dnsmasq configuration, validated with dnsmasq --test, its unit and a drop-in
    per unit of egress_dns_before_units, with the drop-ins of other units pruned; a change restarts it) and host (what
    points the host's name resolution at it: systemd-resolved's drop-in, which restarts systemd-resolved, when
    use_resolved; else a copy of the role's /etc/resolv.conf, the script, service and path unit that put it back, and
    /etc/resolv.conf itself, written in place). Each set is {files, unit, prune}; each file {path, content, mode, kind,
    then} as egress_unit_action reads them.

    options: egress_rules' options (the role's __egress_rules_args: allow, dns_servers, mode, families, dns_set_timeout,
    scope_networks). dns: the role's __egress_dns (user, unit, conf, binary, resolv_copy, resolv_guard, guard_unit,
    resolved_dropin, dropin, listen).
    """
    options, dns, platform = _dict(options), _dict(dns), _dict(platform)
    unit_path = "/etc/systemd/system/%s" % dns["unit"]
    resolver = [
        dict(path=dns["conf"], content=_dnsmasq_conf(options, dns, marker), mode="0644", kind="config", then="restarted",
             validate="%s --test --conf-file=%%s" % dns["binary"]),
        dict(path=unit_path, mode="0644", kind="unit", then="restarted", content=DNS_UNIT.format(
            marker=marker, binary=dns["binary"], conf=dns["conf"],
            after="".join("After=%s\n" % unit for unit in platform.get("boot_units") or []),
            resolv_guard="" if use_resolved else (
                "# Whatever rewrote /etc/resolv.conf at boot (a DHCP client, a container runtime) is overruled.\n"
                "ExecStartPost=-%s\n" % dns["resolv_guard"]))),
    ]
    for name in before_units or []:
        resolver.append(dict(path="/etc/systemd/system/%s.d/%s" % (name, dns["dropin"]), mode="0644", kind="dropin",
                             content=ORDER_DROPIN.format(marker=marker, why=DNS_DROPIN_WHY, unit=dns["unit"])))
    if use_resolved:
        host = dict(unit=dict(name=RESOLVED_SERVICE), files=[dict(
            path=dns["resolved_dropin"], mode="0644", kind="config", then="restarted",
            content=RESOLVED_CONF.format(marker=marker, listen=" ".join(dns["listen"])))])
    else:
        resolv = RESOLV_CONF.format(marker=marker, nameservers="".join("nameserver %s\n" % a for a in dns["listen"]))
        guard_unit = "/etc/systemd/system/%s" % dns["guard_unit"]
        host = dict(unit=dict(name=dns["guard_unit"] + ".path", enabled=True), files=[
            dict(path=dns["resolv_copy"], content=resolv, mode="0644", kind="config"),
            dict(path=dns["resolv_guard"], mode="0755", kind="config",
                 content=RESOLV_GUARD.format(marker=marker, copy=dns["resolv_copy"])),
            dict(path=guard_unit + ".service", mode="0644", kind="unit",
                 content=RESOLV_GUARD_SERVICE.format(marker=marker, guard=dns["resolv_guard"])),
            dict(path=guard_unit + ".path", mode="0644", kind="unit",
                 content=RESOLV_GUARD_PATH.format(marker=marker, unit=dns["unit"], guard_unit=dns["guard_unit"])),
            # In a container /etc/resolv.conf is a bind mount, which cannot be replaced by a rename: written in place.
            dict(path="/etc/resolv.conf", content=resolv, mode="0644", kind="config", in_place=True),
        ])
    return dict(resolver=dict(files=resolver, unit=dict(name=dns["unit"], enabled=True), prune=dns["dropin"]), host=host)


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
# No network of its own: netlink (nf_tables events, ipset, nft), the legacy backend's raw socket calls
# (AF_INET/AF_INET6, setsockopt only) and the journal; no IP packet may be sent or received.
RestrictAddressFamilies=AF_NETLINK AF_UNIX AF_INET AF_INET6
IPAddressDeny=any
PrivateMounts=yes
{sandbox}MemoryMax=128M
TasksMax=16

[Install]
WantedBy=multi-user.target
"""
GUARD_AFTER = ("nftables.service", "firewalld.service", "ufw.service")
# Where the guard lives on a host (its desired state and status: _desired.STATE_DIR, _guard.GUARD_DIR).
GUARD = dict(unit="agentguard-guard.service", lib="/usr/lib/agentguard/guard", entry="/usr/lib/agentguard/agentguard-guard",
             state_dir="/var/lib/agentguard/egress", guard_dir="/var/lib/agentguard/guard")


def guard_settings(guard):
    """GUARD with the run's settings (the role's __egress_run.guard: wanted, metrics, metrics_dir, before_units)."""
    return dict(GUARD, **_dict(guard))


def _collection_root():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def egress_guard_files(guard, marker, platform=None, metrics=False, metrics_dir=None, before_units=None):
    """The guard's files (agentguard-guard.service, _guard.py), in write order: the module_utils it runs
    (_desired.GUARD_FILES, read from this collection's plugins/module_utils, a checkout's or an installed
    collection's), its entry point (roles/egress/files/agentguard-guard) and its unit. Each is {path,
    content, mode, kind} (kind code, entry or unit). guard: GUARD's keys (lib, entry, unit, state_dir,
    guard_dir) override GUARD."""
    from ansible_collections.agentguard.hardening.plugins.module_utils._desired import GUARD_FILES

    guard, platform = guard_settings(guard), _dict(platform)
    root = _collection_root()
    code_dir = guard["lib"] + "/ansible_collections/agentguard/hardening/plugins/module_utils"
    files = []
    for name in GUARD_FILES:
        with open(os.path.join(root, "plugins", "module_utils", name)) as handle:
            files.append(dict(path="%s/%s" % (code_dir, name), content=handle.read(), mode="0644", kind="code",
                              then="restarted"))
    with open(os.path.join(root, "roles", "egress", "files", "agentguard-guard")) as handle:
        files.append(dict(path=guard["entry"], content=handle.read(), mode="0644", kind="entry", then="restarted"))
    after = list(platform.get("boot_units") or []) + list(GUARD_AFTER)
    unit = GUARD_UNIT.format(
        marker=marker, sandbox=SANDBOX, lib=guard["lib"], entry=guard["entry"], state_dir=guard["state_dir"],
        guard_dir=guard["guard_dir"], guard_name=guard["guard_dir"][len("/var/lib/"):],
        after=" ".join(after), before=" ".join(_unique_list(before_units)),
        metrics=" --metrics-dir %s" % metrics_dir if metrics and metrics_dir else "",
        metrics_path=" -%s" % metrics_dir if metrics and metrics_dir else "")
    files.append(dict(path="/etc/systemd/system/%s" % guard["unit"], content=unit, mode="0644", kind="unit", then="restarted"))
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


# What a changed file needs of its unit (its `then`), strongest first; a unit or drop-in needs systemd to reload.
def egress_rollback_helper(marker, state_dir, unit, tls):
    """The snapshot and rollback helper (roles/egress/files/egress-rollback.sh) with the run's settings: its
    state directory, its timer's unit, the TLS gate's unit and configuration (tls: the role's __egress_tls)."""
    tls = _dict(tls)
    given = dict(state_dir=state_dir, unit=unit, tls_unit=tls.get("unit"), tls_conf=tls.get("conf"))
    for name, value in sorted(given.items()):
        # Each becomes a single-quoted shell word: a quote, a line break or no value would change the script.
        if not isinstance(value, str) or not value or "'" in value or "\n" in value:
            raise AnsibleFilterError("egress_rollback_helper: %s=%r is not a usable setting" % (name, value))
    if not isinstance(marker, str) or "\n" in marker:
        raise AnsibleFilterError("egress_rollback_helper: the marker %r is not one line" % (marker,))
    settings = (("DIR", state_dir), ("UNIT", unit), ("GATE_UNIT", tls["unit"]),
                ("GATE_FILES", "%s /etc/systemd/system/%s" % (tls["conf"], tls["unit"])))
    lines = ["%s='%s'\n" % setting for setting in settings]
    with open(os.path.join(_collection_root(), "roles", "egress", "files", "egress-rollback.sh")) as handle:
        script = handle.read()
    return script.replace("@MARKER@", marker, 1).replace("@SETTINGS@\n", "".join(lines), 1)


THEN = ("restarted", "reloaded")
SYSTEMD_KINDS = ("unit", "dropin")


def egress_unit_action(written, pruned=None, unit=None, systemd=True, check_mode=False):
    """What tasks/write_files.yml does after it wrote a set of files (written: the registered loop of the copy, each
    result's item a file as the role's file filters return them; pruned: the registered removal of stale drop-ins;
    unit: the set's {name, enabled}, none for a set without one, such as the persisted rules).

    {state, daemon_reload, run}: the unit restarted or reloaded as the strongest `then` of a changed file says, else
    started; systemd reloads its units when a unit or drop-in changed or a drop-in was pruned; run: whether the
    systemd task runs at all (for the unit, but not in check mode once its unit file changed: a unit still to be
    written cannot be queried; without a unit, to reload systemd's units on a systemd host).
    """
    changed = [_dict(_dict(result).get("item")) for result in _dict(written).get("results") or []
               if _dict(result).get("changed")]
    thens = set(item.get("then") for item in changed)
    state = next((then for then in THEN if then in thens), "started")
    daemon_reload = any(item.get("kind") in SYSTEMD_KINDS for item in changed) or bool(_dict(pruned).get("changed"))
    unit_written = any(item.get("kind") == "unit" for item in changed)
    if unit:
        run = not (_bool(check_mode) and unit_written)
    else:
        run = daemon_reload and _bool(systemd)
    return dict(state=state if unit else None, daemon_reload=daemon_reload, run=run)


class FilterModule(object):
    def filters(self):
        return {
            "egress_boot_files": egress_boot_files,
            "egress_tls_gate_files": egress_tls_gate_files,
            "egress_guard_files": egress_guard_files,
            "egress_resolver_files": egress_resolver_files,
            "egress_unit_action": egress_unit_action,
            "egress_rollback_helper": egress_rollback_helper,
        }
