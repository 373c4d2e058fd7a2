# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the allowlist must deny, over IPv4 and IPv6, with one kernel LOG line per attempt.

Each probe is one attempt (one packet) made by the restricted user; the same probe from the
unfirewalled ag-sibling must succeed (test_control_*), so "blocked" cannot mean "down". In audit
mode every probe must pass and still be logged.
"""
import re

import pytest
from conftest import TLS_PORTS, service_log_since, service_of


def test_control_service_is_up(control_run, blocked_probe):
    """From ag-sibling (no firewall) the same probe reaches a live service."""
    result = control_run[blocked_probe["id"]]
    assert result["ok"], "%s is DOWN from ag-sibling (%s): a blocked result would prove nothing" % (
        blocked_probe["what"], result)


def test_denied(target, blocked_run, blocked_probe):
    result = blocked_run.results[blocked_probe["id"]]
    if target.enforce:
        assert not result["ok"], "%s: %s as uid %d got through (%s)" % (
            target, blocked_probe["what"], blocked_run.uid, result)
    else:
        assert result["ok"], "audit mode must not block %s (%s)" % (blocked_probe["what"], result)


def test_denial_logged(target, blocked_run, blocked_probe):
    """The kernel log has a line with the prefix, this host's source address, this user's uid
    and exactly this attempt's destination, protocol and source port (or ICMP echo id)."""
    result = blocked_run.results[blocked_probe["id"]]
    if target.refuses_name(blocked_probe):
        # Filtering mode: the name never resolved, so no packet left; the refusal is the
        # resolver's (test_scn_filtering_dns checks that upstream never saw the name).
        assert result["outcome"].startswith("not resolved"), result
        return
    assert result["sport"] is not None, "the probe did not get as far as sending: %s" % result
    lines = blocked_run.lines(blocked_probe)
    assert lines, "no %r line in dmesg for %s (src %s, uid %d, %s)" % (
        target.policy["egress_log_prefix"], blocked_probe["what"], target.addr[blocked_probe["family"]],
        blocked_run.uid, result)
    assert all(line["UID"] == str(blocked_run.uid) for line in lines)


def test_never_reached_the_server(target, blocked_run, blocked_probe):
    """The destination's own connection/query log never saw this attempt (enforce mode)."""
    result = blocked_run.results[blocked_probe["id"]]
    service = service_of(result["daddr"]) if result["daddr"] else None
    if not target.enforce:
        pytest.skip("audit mode lets every probe through")
    if target.refuses_name(blocked_probe):
        pytest.skip("filtering mode: %s never resolved, nothing was sent" % blocked_probe["host"])
    if blocked_probe["kind"] == "icmp" or service is None:
        pytest.skip("no service log for %s" % blocked_probe["what"])
    if (service, blocked_probe.get("port")) in TLS_PORTS:
        pytest.skip("%s logs TLS connections only after the handshake" % service)
    logs = service_log_since(service, blocked_run.log_sizes)
    assert logs is not None, "no connection logs of %s under lab/.state/logs" % service
    src = re.escape(target.addr[blocked_probe["family"]])
    # labserver writes 198.18.0.31:40000 / [fd00:a9e:1::31]:40000, dnsmasq 198.18.0.31/40000
    peer = re.compile(r"(?<![\w.:])\[?%s\]?[:/]%d(?!\d)" % (src, result["sport"]))
    seen = [line for line in logs.splitlines() if peer.search(line)]
    assert not seen, "%s saw %s: %s" % (service, blocked_probe["what"], seen)
