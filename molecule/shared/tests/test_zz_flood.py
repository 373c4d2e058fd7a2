# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""A flood of denied attempts is denied in full and logged only within burst + rate.

Runs last (file name): it spends the LOG rule's token bucket, which the per-attempt log checks
of test_blocked.py need. Each flood goes to a random unused port of the forbidden host, so its
LOG lines are told apart from every other test's by destination port and source ports.
"""
import random
import time

from conftest import denial_lines, dmesg_mark, lab_addr, live_log_limit, wait_for_log_budget

FLOOD = 1000


def test_flood_denied_and_log_rate_limited(target, family):
    rate, burst = live_log_limit(target, family)
    wait_for_log_budget(target, 2, families=[family])  # at least one line must appear
    port = random.randint(20000, 29999)
    mark = dmesg_mark()
    log_before, verdict_before = target.deny_counters(family)
    start = time.monotonic()
    uid, res = target.probe([{"id": "flood", "kind": "flood", "family": family, "host": lab_addr("forbidden", family),
                              "port": port, "count": FLOOD, "timeout": 1.0}])
    elapsed = time.monotonic() - start
    log_after, verdict_after = target.deny_counters(family)
    flood = res["flood"]["detail"]
    sports = set(flood["sports"])
    lines = [line for line in denial_lines(mark, target.policy["egress_log_prefix"], target.addr[family],
                                           UID=uid, DPT=port, PROTO="TCP")
             if int(line["SPT"]) in sports]
    allowed = burst + rate * elapsed + 1
    # One source port per attempt. Not all distinct: a refused attempt (audit mode) gives its port
    # back at once, so a later one may get it again; the flood's own random destination port keeps
    # its LOG lines apart from every other test's anyway.
    assert len(flood["sports"]) == FLOOD and len(sports) > FLOOD // 2, len(sports)
    if target.enforce:
        # Nothing listens on that port: without the firewall every attempt is refused at once.
        assert flood["connected"] == 0 and flood["errors"] == {} and flood["timeout"] == FLOOD, flood
        assert verdict_after - verdict_before >= FLOOD, "DROP counter rose by %d only" % (verdict_after - verdict_before)
    else:
        assert flood["errors"].get("ECONNREFUSED") == FLOOD, "audit mode must let the flood through: %s" % flood
    assert 1 <= len(lines) <= allowed, "%d LOG lines for %d denied attempts (burst %d, %.3f/s over %.1f s)" % (
        len(lines), FLOOD, burst, rate, elapsed)
    assert len(lines) <= log_after - log_before
