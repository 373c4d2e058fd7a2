# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""rollback: after the failing runs of side_effect.yml (canary cases, SSH lockout) the host holds
exactly the state it had before them, nothing is left armed, and each rollback is in its journal."""
import json
import os
import re
from pathlib import Path

import pytest

WORK = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "rollback"
STATE_DIR = "/var/lib/agentguard/egress"


def _load(name):
    path = WORK / name
    if not path.exists():
        pytest.fail("%s missing: side_effect.yml did not run to its end" % path)
    return json.loads(path.read_text())


def _live_state(target):
    def table(cmd):
        return [re.sub(r" \[\d+:\d+\]$", "", line) for line in target.check_output("%s -t filter", cmd).splitlines()
                if not line.startswith("#")]
    sets = [line for line in target.check_output("ipset save").splitlines() if re.match(r"(create|add) ag[46]-", line)]
    files = [target.check_output("sha256sum %s", path).split()[0]
             for path in ("/etc/iptables/rules.v4", "/etc/iptables/rules.v6", "/etc/iptables/ipsets")]
    return {"v4": table("iptables-save"), "v6": table("ip6tables-save"), "sets": sets, "files": files}


def test_state_equals_the_snapshot(target):
    assert _live_state(target) == _load("%s.snapshot.json" % target.name)


def test_nothing_left_armed(target):
    assert target.run("test -e %s/armed", STATE_DIR).rc != 0, "a rollback is still armed"
    assert target.run("systemctl is-active agentguard-egress-rollback.timer").stdout.strip() != "active"


def test_every_failed_run_was_rolled_back(target):
    messages = _load("%s.messages.json" % target.name)
    assert set(messages) == {"canary-unreachable", "canary-leak"}
    journal = target.check_output("journalctl -q -t agentguard-egress --no-pager")
    # two canary rollbacks (restore force) and the lockout's timer rollback
    assert len(re.findall(r"egress rules rolled back to the snapshot", journal)) >= 3, journal


def test_lockout_restored_on_time():
    lockout = _load("lockout.json")
    assert lockout["rc"] != 0
    assert lockout["rollback_timeout_s"] <= lockout["restored_after_s"] <= lockout["rollback_timeout_s"] + 10
