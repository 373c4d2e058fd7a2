# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""The role installs what it needs and none of the packages those recommend (read-only).

python3-dnspython recommends an HTTP client stack for DNS over HTTPS and iptables recommends
nftables, whose service flushes the whole ruleset when enabled: a hardened host needs neither.
The shared prepare step records the packages a host had before the role ran (a scenario may
install iptables, with its recommendations, as an operator would have); only the others count.
"""
import pytest

NEEDED = ["iptables", "ipset", "netfilter-persistent", "iptables-persistent", "python3-dnspython"]
RECOMMENDED_ONLY = ["python3-httpx", "python3-requests", "python3-h2", "python3-cryptography", "nftables",
                    "dns-root-data"]
BEFORE = "/root/.mol-packages-before"


def test_needed_packages_are_installed(target):
    if target.policy["egress_state"] != "present":
        pytest.skip("egress_state=absent installs nothing")
    missing = [name for name in NEEDED if not target.host.package(name).is_installed]
    assert not missing, missing


def test_no_recommended_packages_came_with_them(target):
    record = target.host.file(BEFORE)
    assert record.exists, "%s is written by molecule/shared/prepare.yml" % BEFORE
    before = set(line.split()[0] for line in record.content_string.splitlines() if line.split()[1:2] == ["ii"])
    assert "systemd" in before  # the record is a real package list
    extra = [name for name in RECOMMENDED_ONLY if target.host.package(name).is_installed and name not in before]
    assert not extra, "installed with the role's packages: %s" % extra
