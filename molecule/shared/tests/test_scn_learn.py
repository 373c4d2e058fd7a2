# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Scenario learn: the recorder, the proposal of agentguard.hardening.egress_learn, and the proposal in enforce mode.

While the host learnt (audit mode, filtering resolver, empty egress_allow), side_effect.yml had the agent
use the inference API and the currency API by name over IPv4 and IPv6 and one raw address on 21 ports,
while chrony (as _chrony, recorded apart) polled the lab's time server by name; it kept on the host
(/var/tmp/agentguard-learn.json) what the agent did, the LOG lines of the raw connections and the
recorder's sets as the playbook read them. The playbook's proposal is in the scenario's ephemeral
directory (egress-learn/). Then side_effect.yml applied proposal.yml in enforce mode.

Proven here: the recorder kept exactly those 27 destinations, each in its bucket, more than the log's
burst and more than the rate-limited log wrote for the raw address; the proposal holds exactly the three
names with their ports (the time server for _chrony only) and flags the raw address with its ports;
after the apply the named destinations work (HTTPS by name as the agent over both families; chrony's
samples after the apply), and the flagged address is blocked while ag-sibling still reaches it.
"""
import ipaddress
import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml

from conftest import CA_IN_HOST, PROBE_SOURCE, lab_addr, lab_env
from probe import probe_results

HOST = "ag-mol-learn"
TIME = {4: lab_env().get("LAB_TIME4", "198.18.0.12"), 6: lab_env().get("LAB_TIME6", "fd00:a9e:1::12")}
NAMES = {"api.openclaw.security": ("api", "agentguard-lab api ok"), "openexchangerates.org": ("rates", "agentguard-lab rates ok")}
LOG_BURST = 20
SAMPLE_WAIT = 30  # seconds for a chrony sample after the apply (it polls every 1-4 s)


def _address(address):
    return str(ipaddress.ip_address(address))


@pytest.fixture(scope="module")
def agent_run(target):
    return json.loads(target.check_output("cat /var/tmp/agentguard-learn.json"))


@pytest.fixture(scope="module")
def proposal():
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not ephemeral:
        raise pytest.UsageError("run through `molecule verify` (no MOLECULE_EPHEMERAL_DIRECTORY)")
    learn_dir = Path(ephemeral) / "egress-learn"
    return {"json": json.loads((learn_dir / "proposal.json").read_text()),
            "yaml_text": (learn_dir / "proposal.yml").read_text(),
            "markdown": (learn_dir / "proposal.md").read_text()}


def _recorded(lines):
    """{(set, address, protocol, port)} from `ipset save` lines of the recorder's sets."""
    found = set()
    for line in lines:
        words = line.split()
        if words[0] != "add":
            continue
        address, proto_port = words[2].rsplit(",", 1)
        protocol, port = proto_port.split(":")
        found.add((words[1], _address(address), protocol, int(port)))
    return found


def test_the_recorder_kept_every_destination_exactly(target, agent_run):
    raw, ports = target.vars["mol_raw_address"], target.vars["mol_raw_ports"]
    chrony = target.check_output("id -u _chrony")
    want = set()
    for name in NAMES.values():
        for family in (4, 6):
            want.add(("ag%d-_learn" % family, _address(lab_addr(name[0], family)), "tcp", 443))
    want |= set(("ag4-_learn", _address(raw), "tcp", port) for port in ports)
    want |= set(("ag%d-_learn-u%s" % (family, chrony), _address(TIME[family]), "udp", 123) for family in (4, 6))
    got = _recorded(agent_run["recorder"])
    assert got == want, "missing %s, not tried %s" % (sorted(want - got), sorted(got - want))
    assert len(got) > LOG_BURST


def test_the_log_sampled_what_the_recorder_kept(target, agent_run):
    """The raw address's connections went out within a second, more than the LOG rule's burst: the log wrote
    fewer lines for them than there were connections; the recorder has each one (test above)."""
    ports = target.vars["mol_raw_ports"]
    results = agent_run["raw"]["results"]
    assert len(results) == len(ports) > LOG_BURST
    logged = set(int(m.group(1)) for m in (re.search(r" DPT=(\d+) ", line) for line in agent_run["raw_log_lines"]) if m)
    assert logged <= set(ports)
    assert len(logged) < len(ports), "the log wrote a line for every one of %d connections" % len(ports)


def test_the_proposal_holds_exactly_what_the_agent_used(target, proposal):
    data = proposal["json"]
    assert data["errors"] == [] and data["unread"] == [], (data["errors"], data["unread"])
    entries = dict(((e["host"], e.get("protocol", "tcp")), e) for e in data["proposal"]["allow"])
    assert sorted(entries) == sorted([("api.openclaw.security", "tcp"), ("openexchangerates.org", "tcp"),
                                      ("time.agentguard.lab", "udp")]), sorted(entries)
    for name in NAMES:
        assert entries[(name, "tcp")]["ports"] == [443]
        assert "users" not in entries[(name, "tcp")], entries[(name, "tcp")]  # the agent is no system user
        assert entries[(name, "tcp")]["seen"]["count"] >= 2  # one connection per family at least
    ntp = entries[("time.agentguard.lab", "udp")]
    assert ntp["ports"] == [123] and ntp["users"] == ["_chrony"], ntp
    for entry in entries.values():
        assert entry["seen"]["hosts"] == [HOST] and entry["seen"]["first_seen"], entry
        assert "flag" not in entry  # named, not accepted by address
    assert data["proposal"]["withheld"] == []
    assert data["diffs"] == {HOST: [{"host": h, "protocol": p, "ports": entries[(h, p)]["ports"], "new_entry": True}
                                    for (h, p) in sorted(entries)]}


def test_the_raw_address_is_flagged_and_left_out(target, proposal):
    raw, ports = _address(target.vars["mol_raw_address"]), sorted(target.vars["mol_raw_ports"])
    flagged = proposal["json"]["proposal"]["flagged"]
    assert [(f["host"], f["protocol"], f["ports"]) for f in flagged] == [(raw, "tcp", ports)], flagged
    assert flagged[0]["seen"]["count"] >= len(ports)
    applied = yaml.safe_load(proposal["yaml_text"])["egress_allow"]
    assert all(str(e["host"]) != raw for e in applied), applied
    assert "# FLAGGED, left out" in proposal["yaml_text"] and "#   %s tcp" % raw in proposal["yaml_text"]
    assert "## Flagged (nameless, left out)" in proposal["markdown"] and "- %s tcp" % raw in proposal["markdown"]


def test_the_host_runs_the_proposal_in_enforce_mode(target, proposal):
    assert target.enforce and target.policy["egress_allow"] == yaml.safe_load(proposal["yaml_text"])["egress_allow"]
    rules = target.rules(4)
    assert ":OUTPUT DROP" in rules
    for entry in target.policy["egress_allow"]:
        assert "agentguard: %s" % entry["name"] in rules, entry


@pytest.mark.parametrize("name", sorted(NAMES))
def test_named_destinations_work(target, family, name):
    """HTTPS by name as the agent, through the filtering resolver, TLS verified against the lab CA."""
    out = target.run("runuser -u agent -- curl -sS -%s --max-time 8 --cacert %s https://%s/", str(family), CA_IN_HOST, name)
    assert out.rc == 0 and out.stdout.strip() == NAMES[name][1], out.stderr


def test_chrony_keeps_time_after_the_apply(target, family):
    """chrony (as _chrony) had a sample from the time server's address of this family after the apply."""
    enforced = int(target.check_output("cat /var/tmp/agentguard-learn-enforced"))
    want = _address(TIME[family])
    deadline = time.monotonic() + SAMPLE_WAIT
    while True:
        now = int(target.check_output("date +%s"))
        last = None
        for line in target.check_output("chronyc -n -c sources").splitlines():
            fields = line.split(",")
            if len(fields) > 6 and _address(fields[2]) == want and fields[6].isdigit():
                last = now - int(fields[6])
        if (last is not None and last > enforced) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert last is not None, "chronyc sources has no %s: %s" % (want, target.check_output("chronyc -n sources"))
    assert last > enforced, "no sample from %s since the apply (%d s before it)" % (want, enforced - last)
    assert set(target.check_output("ps -o user= -C chronyd").split()) == {"_chrony"}


def test_the_flagged_address_is_blocked(target, sibling):
    """As the agent (and as root: host scope restricts every process) no connection to the raw address gets
    through, while ag-sibling reaches the same ports (443 answers, 8000 resets): a drop, not a down host."""
    raw, ports = target.vars["mol_raw_address"], target.vars["mol_raw_ports"]
    probes = [{"id": "raw-%d" % port, "kind": "tcp", "family": 4, "host": raw, "port": port, "timeout": 1.5}
              for port in (ports[0], ports[1], ports[-1])]
    for user in ("agent", "root"):
        _uid, results = target.probe(probes, user=user)
        assert set(r["outcome"] for r in results.values()) == {"timeout"}, (user, results)
    _uid, control = probe_results(probes, sibling.check_output("python3 -c %s %s", PROBE_SOURCE,
                                                               json.dumps({"probes": probes})))
    assert control["raw-%d" % ports[0]]["outcome"] == "connected", control
    assert all(control["raw-%d" % port]["outcome"] == "ECONNREFUSED" for port in (ports[1], ports[-1])), control
