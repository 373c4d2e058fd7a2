# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""guard: the policy holds between runs (read-only).

side_effect.yml changed the rules four ways other tools and admins do (Debian's nftables.service
restarted with its default `flush ruleset` configuration, `iptables -F`, `ip6tables -P OUTPUT
ACCEPT`, the mangle FORWARD jump deleted), measured each on the host (molecule/guard/tamper.py,
results in /var/tmp/agentguard-guard-tamper.json), then rebooted the host with nftables.service
enabled. Proved here:

- every change really changed our part of the rules, and agentguard-guard put it back within the
  goal (2 s each, median 1 s), forbidden probes blocked again within the goal and never
  connecting after that;
- each restoration is a tamper event in the journal (SYSLOG_IDENTIFIER=agentguard-guard);
- after the reboot with nftables.service enabled, the guard runs, our part is in place, first in
  OUTPUT and in mangle FORWARD, and the forbidden probes are blocked (test_blocked.py runs on this
  host too);
- a real prometheus-node-exporter scrape (HTTP on the host's loopback) shows the guard's metrics:
  the tamper counter, the exact denied counters of both families and the policy hash.
"""
import json
import re
import statistics

import pytest

GOAL_MAX = 2.0
GOAL_MEDIAN = 1.0
CASES = ["nftables-restart", "iptables-flush", "ip6tables-policy-accept", "mangle-jump-deleted"]
RESULTS = "/var/tmp/agentguard-guard-tamper.json"
SCRAPE = "http://127.0.0.1:9100/metrics"


@pytest.fixture(scope="module")
def measured(target):
    data = json.loads(target.check_output("cat %s", RESULTS))
    cases = {c["case"]: c for c in data["cases"]}
    assert sorted(cases) == sorted(CASES), "side_effect measured %s, expected %s" % (sorted(cases), CASES)
    for case in CASES:
        print("guard: %-24s restored after %s s, forbidden blocked after %s s, opened: %s" % (
            case, cases[case]["restored_after"], cases[case]["blocked_after"], cases[case]["opened"]))
    return data["start"], cases, data.get("guard_said", "")


@pytest.mark.parametrize("case", CASES)
def test_change_was_made_and_restored_within_the_goal(measured, case):
    result = measured[1][case]
    assert result["rc"] == 0, result
    assert result["changed_state"], "the change left our rules as they were: it proves nothing: %s" % result
    assert result["restored_after"] is not None, "our part was not restored within 10 s: %s" % result
    assert result["restored_after"] <= GOAL_MAX, result
    assert result["state_now_equal"], result


@pytest.mark.parametrize("case", CASES)
def test_forbidden_blocked_again_within_the_goal_and_never_after(measured, case):
    result = measured[1][case]
    assert result["blocked_before"] == {"4": "blocked", "6": "blocked"}, result
    assert result["blocked_after"] is not None and result["blocked_after"] <= GOAL_MAX, result
    assert result["reached_after_block"] == 0, result


def test_the_flush_opened_a_way_out(measured):
    """The nftables restart flushes everything: forbidden probes connected until the guard acted
    (a control: the probes would see an open firewall)."""
    assert measured[1]["nftables-restart"]["opened"], measured[1]["nftables-restart"]


def test_median_restore_time(measured):
    times = [measured[1][case]["restored_after"] for case in CASES]
    assert statistics.median(times) <= GOAL_MEDIAN, times


def _journal_entries(said):
    """The guard's journal entries as side_effect read them on the host with journalctl, right after the
    changes and before the reboot (a test host, a podman container, boots with a new machine id, and the
    journal of the boot before is not shown after it)."""
    first = said.split("\n===\n", 1)[0]
    return [json.loads(line) for line in first.splitlines() if line.startswith("{")]


def test_each_restoration_is_a_tamper_event_in_the_journal(measured):
    entries = _journal_entries(measured[2])
    events = [e for e in entries if e.get("AGENTGUARD_EVENT") == "tamper" and e.get("AGENTGUARD_RESTORED") == "yes"]
    assert len(events) >= len(CASES), ([e.get("MESSAGE") for e in entries], measured[2][-3000:])
    assert all(e.get("SYSLOG_IDENTIFIER") == "agentguard-guard" for e in events)
    for event in events:
        print("journal: %s" % event.get("MESSAGE"))
    families = " ".join(e.get("AGENTGUARD_FAMILIES", "") for e in events)
    tables = " ".join(e.get("AGENTGUARD_TABLES", "") for e in events)
    assert "ipv4" in families and "ipv6" in families, events
    assert "mangle" in tables and "filter" in tables, events
    assert all(float(e["AGENTGUARD_RESTORE_SECONDS"]) <= GOAL_MAX for e in events), events


def test_guard_runs_after_the_reboot(target):
    assert target.check_output("systemctl is-active agentguard-guard.service") == "active"
    assert target.check_output("systemctl is-enabled nftables.service") == "enabled"
    boot = int(target.check_output("date -d \"$(ps -o lstart= -p 1)\" +%s"))
    started = target.check_output("systemctl show -P ActiveEnterTimestamp agentguard-guard.service")
    assert int(target.check_output("date -d %s +%%s", started)) >= boot


def test_our_jumps_first_after_the_reboot(target, family):
    save = "iptables-save" if family == 4 else "ip6tables-save"
    output = [line for line in target.check_output("%s -t filter", save).splitlines() if line.startswith("-A OUTPUT ")]
    assert output and "AGENTGUARD" in output[0], output
    assert re.search(r"^:OUTPUT DROP ", target.check_output("%s -t filter", save), re.M)
    forward = [line for line in target.check_output("%s -t mangle", save).splitlines() if line.startswith("-A FORWARD ")]
    assert forward and "AGENTGUARD" in forward[0], forward


@pytest.fixture(scope="module")
def scrape(target):
    text = target.check_output("curl -sS --max-time 10 %s", SCRAPE)
    return [line for line in text.splitlines() if line.startswith("agentguard_")]


def _samples(lines, name):
    return [line for line in lines if line.startswith(name + "{") or line.startswith(name + " ")]


def test_scrape_shows_the_tamper_counter(scrape):
    samples = [line for line in scrape if re.match(r"agentguard_\w*tamper\w*_total[{ ]", line)]
    assert samples, scrape
    assert sum(float(line.rsplit(" ", 1)[1]) for line in samples) >= 1, samples


def test_scrape_shows_the_denied_counters_of_both_families(scrape):
    samples = [line for line in scrape if re.match(r"agentguard_\w*denied\w*_total\{", line)]
    assert any('family="ipv4"' in line for line in samples), scrape
    assert any('family="ipv6"' in line for line in samples), scrape


def test_scrape_shows_the_policy_hash(scrape):
    assert any(re.search(r'hash="[0-9a-f]{8,}"', line) for line in scrape), scrape
