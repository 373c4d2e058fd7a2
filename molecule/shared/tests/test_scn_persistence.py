# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""persistence: after `podman restart` (systemd as PID 1, a new network namespace) the rules and
ipsets are back, loaded at boot from the files the role wrote, by a unit ordered before
network-pre.target. The shared tests (blocked, logged, allowed) run on the rebooted host too."""
import ipaddress
import re

import pytest

from conftest import denial_lines, dmesg_mark

FILES = {4: "/etc/iptables/rules.v4", 6: "/etc/iptables/rules.v6"}
SETS_FILE = "/etc/iptables/ipsets"
POOL = {4: ["198.18.0.%d" % i for i in range(100, 112)], 6: ["fd00:a9e:1::%d" % i for i in range(100, 112)]}


def _managed(text):
    """The lines the module owns: OUTPUT policy, the jump, the AGENTGUARD-* chains."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r" \[\d+:\d+\]$", "", line)
        if line.startswith(":OUTPUT ") or "AGENTGUARD-" in line:
            lines.append(line)
    return lines


def test_host_was_rebooted_after_the_rules_were_written(target):
    boot = int(target.check_output("date -d \"$(ps -o lstart= -p 1)\" +%s"))
    written = int(target.check_output("stat -c %%Y %s", FILES[4]))
    assert boot > written, "PID 1 started before the rules files were written: no reboot happened"


def _table(text, table):
    """One table's section of an iptables-save / rules file text."""
    match = re.search(r"^\*%s\n(.*?)^COMMIT$" % table, text, re.M | re.S)
    return match.group(1) if match else ""


def test_rules_loaded_from_the_persisted_files(target, family):
    persisted = _managed(_table(target.check_output("cat %s", FILES[family]), "filter"))
    assert persisted, "%s holds no managed rules" % FILES[family]
    assert _managed(target.rules(family)) == persisted


def test_forward_path_loaded_at_boot_first_in_mangle_forward(target, family):
    """egress_scope_networks: the mangle table's forward path comes back from the file at boot, its
    jump the first rule of FORWARD, before any container runtime could add its own."""
    persisted = _managed(_table(target.check_output("cat %s", FILES[family]), "mangle"))
    assert "-A FORWARD -j AGENTGUARD-FORWARD" in persisted, persisted
    save = "iptables-save" if family == 4 else "ip6tables-save"
    live = target.check_output("%s -t mangle", save)
    assert _managed(live) == persisted
    forward = [line for line in live.splitlines() if line.startswith("-A FORWARD ")]
    assert forward[0] == "-A FORWARD -j AGENTGUARD-FORWARD", forward


def test_ipsets_restored(target, family):
    name = "ag%d-ntp-pool" % family
    assert name in target.check_output("ipset list -n").split()
    members = re.findall(r"^([0-9a-f:.]+)(?:/\d+)?$", target.check_output("ipset list %s", name), re.M)
    assert sorted(ipaddress.ip_address(m) for m in members) == sorted(ipaddress.ip_address(a) for a in POOL[family])
    assert "create %s " % name in target.check_output("cat %s", SETS_FILE)
    assert "--match-set %s dst" % name in target.rules(family)


def test_set_still_matches(target, family):
    """A datagram to a pool address on 123 passes (matched by the set: no EPERM, no LOG line);
    the same address on 124 is denied and logged."""
    mark = dmesg_mark()
    probes = [{"id": str(port), "kind": "udp", "family": family, "host": POOL[family][3], "port": port,
               "timeout": 0.5} for port in (123, 124)]
    uid, res = target.probe(probes)
    prefix, src = target.policy["egress_log_prefix"], target.addr[family]
    allowed, denied = res["123"], res["124"]
    assert allowed["outcome"] == "timeout", allowed  # no host behind the address, but it left
    assert not denial_lines(mark, prefix, src, UID=uid, PROTO="UDP", DPT=123, SPT=allowed["sport"])
    assert denied["outcome"] == "EPERM", denied
    assert denial_lines(mark, prefix, src, UID=uid, PROTO="UDP", DPT=124, SPT=denied["sport"])


@pytest.mark.parametrize("unit", ["netfilter-persistent.service"])
def test_boot_unit_loads_before_the_network(target, unit):
    props = dict(line.split("=", 1) for line in target.check_output(
        "systemctl show %s -p Before -p Wants -p ActiveState -p Result -p UnitFileState", unit).splitlines())
    assert "network-pre.target" in props["Before"].split(), props
    assert props["UnitFileState"] == "enabled", props
    assert (props["ActiveState"], props["Result"]) == ("active", "success"), props
