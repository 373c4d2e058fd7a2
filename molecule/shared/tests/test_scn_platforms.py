# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""platforms: the lab policy on Debian 11, 12 and 13, with the TLS gate enforcing (egress_tls_gate=enforce).

The gate runs on each release's own nginx (stream, ssl_preread) and systemd, which the role installs from
the image's offline repository as it would on a real host. On each host, with real connections as the agent,
over IPv4 and IPv6:
- the allowed name goes through the gate (logged allowed) and the API answers;
- the lab's co-tenant name on the API's address gets no handshake: the gate logs it not-allowed without
  opening an upstream connection, and the API never sees it;
- the gate's unit is active, runs as the gate's own user, and `systemd-analyze security` of this release's
  systemd scores it within the bound of the tls-gate scenario;
- which nginx and systemd each host ran is written in the run's output ("recorded:" lines).
Everything else of the gate is proved on Debian 12 by the tls-gate scenario.
"""
import re

import pytest

from conftest import (API, API_BODY, COTENANT, GATE_UNIT, GATE_USER, MAX_EXPOSURE, curl, gate_lines, gate_log_since,
                      gate_log_size, gate_users, lab_addr, record, seen_from, service_log_since, service_log_sizes,
                      unit_exposure)

# Debian's nginx by release: the proof must have run on each of them (a point release keeps the minor version).
NGINX = {"bullseye": "1.18.", "bookworm": "1.22.", "trixie": "1.26."}


@pytest.fixture(scope="module")
def codename(target):
    release = dict(line.split("=", 1) for line in target.check_output("cat /etc/os-release").splitlines() if "=" in line)
    return release["VERSION_CODENAME"].strip('"')


def test_gate_runs_on_this_release_nginx(target, codename):
    out = target.run("nginx -v")
    match = re.search(r"nginx/(\S+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    systemd = target.check_output("systemctl --version").splitlines()[0]
    debian = target.check_output("cat /etc/debian_version")
    record("%s: Debian %s (%s), nginx/%s, %s" % (target.name, debian, codename, match.group(1), systemd))
    assert codename in NGINX, "no expected nginx for %s" % codename
    assert match.group(1).startswith(NGINX[codename]), (codename, match.group(1))


def test_gate_is_active_as_its_own_user(target):
    assert target.check_output("systemctl is-active %s", GATE_UNIT) == "active"
    assert gate_users(target) == {GATE_USER}


def test_gate_unit_is_hardened_on_this_systemd(target):
    exposure, report = unit_exposure(target, GATE_UNIT)
    record("%s: systemd-analyze security %s: %s (bound %.1f)" % (target.name, GATE_UNIT, exposure, MAX_EXPOSURE))
    assert exposure is not None, report
    assert exposure <= MAX_EXPOSURE, report


def test_allowed_name_goes_through_the_gate(target, family):
    size = gate_log_size(target)
    out = curl(target, "agent", family, API)
    assert out.rc == 0 and API_BODY in out.stdout, (out.rc, out.stdout, out.stderr)
    lines = gate_log_since(target, size)
    assert gate_lines(lines, target, family, sni=API, reason="allowed"), lines


def test_cotenant_name_on_the_api_address_is_refused(target, family):
    size, sizes = gate_log_size(target), service_log_sizes()
    out = curl(target, "agent", family, COTENANT, lab_addr("api", family))
    # 35: the TLS handshake failed (the gate closed the connection after the ClientHello).
    assert out.rc == 35 and API_BODY not in out.stdout, (out.rc, out.stdout, out.stderr)
    lines = gate_log_since(target, size)
    refused = gate_lines(lines, target, family, sni=COTENANT, reason="not-allowed")
    assert refused and all('upstream="-"' in line for line in refused), lines
    assert not seen_from(service_log_since("ag-api", sizes), target, "sni=%s " % COTENANT), "the API saw the co-tenant"
