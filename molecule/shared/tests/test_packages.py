# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""The role installs what it needs and none of the packages those recommend (read-only).

python3-dnspython recommends an HTTP client stack for DNS over HTTPS and iptables recommends
nftables, whose service flushes the whole ruleset when enabled: a hardened host needs neither.
The lab images have none of them, so any found here came with the role.
"""
import pytest

NEEDED = ["iptables", "ipset", "netfilter-persistent", "iptables-persistent", "python3-dnspython"]
RECOMMENDED_ONLY = ["python3-httpx", "python3-requests", "python3-h2", "python3-cryptography", "nftables",
                    "dns-root-data"]


def test_needed_packages_are_installed(target):
    if target.policy["egress_state"] != "present":
        pytest.skip("egress_state=absent installs nothing")
    missing = [name for name in NEEDED if not target.host.package(name).is_installed]
    assert not missing, missing


def test_no_recommended_packages_came_with_them(target):
    extra = [name for name in RECOMMENDED_ONLY if target.host.package(name).is_installed]
    assert not extra, extra
