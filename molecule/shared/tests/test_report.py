# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""The denied-egress report finds a denied attempt made just now, with its uid, destination and port.

Per test host: one TCP attempt per family to a port of the forbidden host chosen at random for this
run (4000-4999, never in the policy's allowlist, so its denial is certain), made by the user the
scope restricts (root, uid 0, in host scope, which restricts everyone; the first listed user in
users scope). Then the controller runs playbooks/egress-report.yml exactly as an operator does,
against the Molecule inventory, for this host, into a temporary directory, and report.json must hold
that attempt: this host, that uid, that destination address and port (and that source port, so an
earlier run's line cannot stand in for it). In audit mode the attempt gets through and is still
logged, so it must still be in the report. Markdown and HTML must name the destination with its port
as written for people (198.18.0.66:4123, [fd00::66]:4123).

In filtering DNS mode the restricted user also asks the host's resolver for a name made up for this
run; the report must list it among the refused names.

The report also counts attempts beside log lines (this attempt's SYN and its retransmissions are one
attempt), states the logging rate limit it read from the live rules, and marks the role's own canary
probes (source port 30999, after every apply) as such, counted apart.

MOL_REPORT_EXPECT_PORT=N makes the test look for port N instead of the attempted one: with a port
that was not attempted the test must fail (its negative check).
"""
import ipaddress
import json
import os
import random
import shutil
import subprocess
import tempfile
import time

import pytest
from conftest import REPO, TCP_TIMEOUT, lab_addr, wait_for_log_budget

REPORT_TIMEOUT = 300
_RUNS = {}


def allowed_ports(policy):
    ports = {53, 853}
    for rule in policy.get("egress_allow") or []:
        ports.update(int(p) for p in rule.get("ports") or [])
    return ports


def resolver_address(target):
    """The first nameserver of the host's resolv.conf (filtering mode: its local resolver)."""
    for line in target.check_output("cat /etc/resolv.conf").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            return parts[1]
    return None


def inventory_path(config):
    path = config.getoption("ansible_inventory", None) or os.environ.get("MOLECULE_INVENTORY_FILE")
    if not path:
        raise pytest.UsageError("run through `molecule verify` (no --ansible-inventory)")
    return path


class ReportRun:
    """The attempts (one per family), then one egress-report.yml run for this host."""

    def __init__(self, target, config):
        self.target = target
        user = "root" if target.policy["egress_scope"] == "host" else target.probe_user
        taken = allowed_ports(target.policy)
        self.port = random.choice([p for p in range(4000, 5000) if p not in taken])
        wait_for_log_budget(target, 1)
        probes = [{"id": "v%d" % family, "kind": "tcp", "family": family, "host": lab_addr("forbidden", family),
                   "port": self.port, "timeout": TCP_TIMEOUT} for family in (4, 6)]
        self.qname = None
        if target.policy.get("egress_dns_mode") == "filtering":
            resolver = resolver_address(target)
            self.qname = "ag-report-%08x.attacker.lab" % random.getrandbits(32)
            probes.append({"id": "dns", "kind": "dns-udp", "family": 6 if ":" in resolver else 4, "host": resolver,
                           "port": 53, "qname": self.qname, "timeout": 1.5})
        self.uid, self.results = target.probe(probes, user=user)
        time.sleep(1.0)  # the kernel log and the resolver's asynchronous log reach the journal
        self.dir = tempfile.mkdtemp(prefix="egress-report-")
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
                   ANSIBLE_COLLECTIONS_PATH=str(REPO / ".cache" / "collections"), ANSIBLE_NOCOLOR="1")
        self.proc = subprocess.run(
            ["ansible-playbook", "-i", inventory_path(config), str(REPO / "playbooks" / "egress-report.yml"),
             "-e", "egress_report_dir=" + self.dir, "-e", "egress_report_target=" + target.name,
             "-e", "egress_report_since=30m"],
            capture_output=True, text=True, env=env, timeout=REPORT_TIMEOUT, cwd=str(REPO), check=False)
        path = os.path.join(self.dir, "report.json")
        self.report = json.load(open(path)) if os.path.exists(path) else None

    def host(self):
        assert self.proc.returncode == 0, "egress-report.yml failed:\n%s\n%s" % (
            self.proc.stdout[-3000:], self.proc.stderr[-2000:])
        assert self.report is not None, "no report.json in %s" % self.dir
        assert list(self.report["hosts"]) == [self.target.name], "the report covers %s" % list(self.report["hosts"])
        result = self.report["hosts"][self.target.name]
        assert not result.get("failed"), "the host could not be read: %s" % result.get("msg")
        return result


@pytest.fixture(scope="module")
def report_run(target, request):
    if target.name not in _RUNS:
        _RUNS[target.name] = ReportRun(target, request.config)
        request.addfinalizer(lambda: shutil.rmtree(_RUNS[target.name].dir, ignore_errors=True))
    return _RUNS[target.name]


def test_report_has_the_denied_attempt(target, report_run, family):
    result = report_run.results["v%d" % family]
    assert result["sport"] is not None and result["daddr"], "the attempt was not made: %s" % result
    if target.enforce:
        assert not result["ok"], "port %d of the forbidden host was reached: %s" % (report_run.port, result)
    port = int(os.environ.get("MOL_REPORT_EXPECT_PORT", report_run.port))
    dst = str(ipaddress.ip_address(lab_addr("forbidden", family)))
    host = report_run.host()
    records = [r for r in host["records"] if r["dst"] == dst and r["dpt"] == port and r["protocol"] == "tcp"]
    assert records, "no record of %s port %d in the report of %s (%d records; denials: %s)" % (
        dst, port, target, len(host["records"]), host["denials"][:10])
    assert any(r["spt"] == result["sport"] for r in records), "no record with this attempt's source port %d: %s" % (
        result["sport"], records)
    assert all(r["uid"] == report_run.uid for r in records), "uid %d expected: %s" % (report_run.uid, records)
    assert all(r["src"] == str(ipaddress.ip_address(target.addr[family])) for r in records)
    groups = [g for g in host["denials"] if (g["dst"], g["dpt"], g["protocol"], g["uid"]) == (dst, port, "tcp",
                                                                                              report_run.uid)]
    assert len(groups) == 1 and groups[0]["count"] >= 1 and groups[0]["family"] == "ipv%d" % family
    assert groups[0]["direction"] == "output" and groups[0]["source"] is None and groups[0]["network"] is None
    assert groups[0]["destination_text"] == ("[%s]:%d" if family == 6 else "%s:%d") % (dst, port)
    # One attempt however many SYNs the kernel logged for it; never counted as the canary.
    mine = [r for r in records if r["spt"] == result["sport"]]
    assert sum(1 for r in mine if r["attempt"]) == 1 and not any(r["canary"] for r in mine), mine
    assert 1 <= groups[0]["attempts"] <= groups[0]["count"] and not groups[0]["canary"]
    if report_run.uid == 0 or not target.probe_user.isdigit():
        assert groups[0]["user"] == ("root" if report_run.uid == 0 else target.probe_user)


def test_report_documents_name_the_attempt(target, report_run):
    report_run.host()
    port = int(os.environ.get("MOL_REPORT_EXPECT_PORT", report_run.port))
    for name in ("report.md", "report.html"):
        with open(os.path.join(report_run.dir, name)) as handle:
            text = handle.read()
        for family in (4, 6):
            dst = str(ipaddress.ip_address(lab_addr("forbidden", family)))
            written = ("[%s]:%d" if family == 6 else "%s:%d") % (dst, port)
            row = [line for line in text.splitlines() if " %s " % written in line or ">%s<" % written in line]
            assert row, "%s has no row for %s" % (name, written)


def test_report_has_the_refused_name(target, report_run):
    if report_run.qname is None:
        pytest.skip("pinned DNS mode: the host runs no filtering resolver")
    host = report_run.host()
    assert host["dns_source"] == "journal", host.get("dns_stats")
    names = [n for n in host["refused_names"] if n["name"] == report_run.qname]
    assert names and names[0]["qtype"] in ("A", "AAAA"), "%s not among the refused names: %s" % (
        report_run.qname, host["refused_names"][:10])


def test_report_states_the_live_rate_limit_and_sets_the_canary_apart(target, report_run):
    host = report_run.host()
    families = set(limit["family"] for limit in host["log_limits"])
    assert families == {"ipv4", "ipv6"}, host["log_limits"]
    assert host["log_limit_text"] and all(limit["limit"] for limit in host["log_limits"]), host["log_limits"]
    canary = [r for r in host["records"] if r.get("spt") == 30999 and r["direction"] == "output"]
    assert all(r["canary"] for r in canary)
    assert host["canary_total"] == sum(1 for r in host["records"] if r["canary"]) or len(host["records"]) < host["total"]
    assert all(g["sender_text"].startswith("role canary, ") for g in host["denials"] if g["canary"])
    assert host["attempts"] == sum(g["attempts"] for g in host["denials"] if not g["canary"])
    with open(os.path.join(report_run.dir, "report.md")) as handle:
        md = handle.read()
    assert "at most %s per logging rule" % host["log_limit_text"] in md


def test_report_shows_what_the_host_learnt(target, report_run):
    """With egress_learn, report.html and report.md have the "Learned destinations" section: every entry the
    recorder's proposal holds (by name, with its count) and every flagged address (molecule/learn)."""
    if not target.policy.get("egress_learn"):
        pytest.skip("egress_learn is off on this host")
    report_run.host()
    learn = report_run.report.get("learn")
    assert learn and list(learn["sets"]) == [target.name] and not learn["unread"], learn and learn.get("unread")
    proposal = learn["proposal"]
    assert proposal["allow"] and proposal["flagged"], proposal
    texts = {}
    for name in ("report.md", "report.html"):
        with open(os.path.join(report_run.dir, name)) as handle:
            texts[name] = handle.read()
    assert 'id="learned"' in texts["report.html"] and "## Learned destinations (egress_learn)" in texts["report.md"]
    for entry in proposal["allow"]:
        assert "<td><code>%s</code></td>" % entry["host"] in texts["report.html"], entry
        assert "| `%s` | %s | %s |" % (entry["host"], entry.get("protocol", "tcp"), ", ".join(str(p) for p in entry["ports"])) \
            in texts["report.md"], entry
    for flagged in proposal["flagged"]:
        assert '<td class="addr">%s</td>' % flagged["host"] in texts["report.html"], flagged
