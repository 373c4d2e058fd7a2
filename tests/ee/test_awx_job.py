"""The AWX path: the artifacts of the jobs scripts/ee.sh ran in the execution environment image.

scripts/ee.sh builds the EE (execution-environment.yml, ansible-builder, podman), then runs in it
agentguard.hardening.harden_agent twice and a project playbook importing
agentguard.hardening.egress_report, with `ansible-runner transmit | worker (in the EE container) |
process` as AWX does, against a lab host reached over SSH. It then runs this file with AG_EE_OUT
(each job's artifacts in AG_EE_OUT/<job>/artifacts, the reports in AG_EE_OUT/reports), AG_EE_HOST
(the lab host) and AG_EE_IMAGE. Run alone, without them, it is skipped.
"""
import glob
import json
import os
import subprocess

import pytest

OUT = os.environ.get("AG_EE_OUT")
HOST = os.environ.get("AG_EE_HOST")
IMAGE = os.environ.get("AG_EE_IMAGE")
pytestmark = pytest.mark.skipif(not OUT, reason="run by scripts/ee.sh (scripts/test.sh ee)")
# Where the EE image has the collection (ansible-builder's galaxy stage).
INSTALLED = "/usr/share/ansible/collections/ansible_collections/agentguard/hardening/playbooks/"


def _artifact(ident, name):
    with open(os.path.join(OUT, ident, "artifacts", name)) as handle:
        return handle.read().strip()


def _events(ident):
    events = []
    for path in glob.glob(os.path.join(OUT, ident, "artifacts", "job_events", "*.json")):
        with open(path) as handle:
            events.append(json.load(handle))
    assert events, "no job_events for %s" % ident
    return sorted(events, key=lambda event: event["counter"])


def _one(events, name):
    found = [event for event in events if event["event"] == name]
    assert len(found) == 1, [event["event"] for event in events]
    return found[0]["event_data"]


def _stats(ident):
    return _one(_events(ident), "playbook_on_stats")


def _ok(ident):
    """(module, task name, changed) of each task that ran, in order."""
    return [(event["event_data"]["resolved_action"], event["event_data"]["task"], event["event_data"]["res"].get("changed"))
            for event in _events(ident) if event["event"] == "runner_on_ok"]


@pytest.mark.parametrize("ident", ["harden-1", "harden-2", "report"])
def test_each_job_succeeded(ident):
    assert _artifact(ident, "status") == "successful", _artifact(ident, "stdout")[-3000:]
    assert _artifact(ident, "rc") == "0"


@pytest.mark.parametrize("ident", ["harden-1", "harden-2"])
def test_the_playbook_ran_by_its_fqcn_from_the_collection_in_the_image(ident):
    start = _one(_events(ident), "playbook_on_start")
    assert start["playbook"] == INSTALLED + "harden_agent.yml", start["playbook"]


def test_the_report_came_from_the_collection_in_the_image():
    # The project's playbook (what an AWX job template names) imports the collection's; its tasks ran from the image.
    events = _events("report")
    assert _one(events, "playbook_on_start")["playbook"] == "egress_report.yml"
    paths = {event["event_data"]["task_path"].rsplit(":", 1)[0] for event in events if event["event"] == "runner_on_ok"}
    assert paths == {INSTALLED + "egress_report.yml"}, paths


def test_the_first_run_hardens_the_host():
    stats = _stats("harden-1")
    assert stats["changed"].get(HOST, 0) > 0, stats
    assert not stats["failures"] and not stats["dark"], stats
    ran = _ok("harden-1")
    # The rules went in through the module, under the rollback timer, and the canary checked them.
    assert ("agentguard.hardening.egress_rules", "Apply the egress policy", True) in ran, ran
    assert ("ansible.builtin.command", "Disarm the rollback", True) in ran, ran
    assert ("ansible.builtin.assert", "Check the canary results", False) in ran, ran


def test_the_second_run_changes_nothing():
    stats = _stats("harden-2")
    assert stats["ok"].get(HOST, 0) > 0, stats
    assert stats["changed"].get(HOST, 0) == 0, [task for task in _ok("harden-2") if task[2]]
    assert not stats["failures"] and not stats["dark"], stats


def test_the_host_has_the_firewall():
    for binary in ("iptables", "ip6tables"):
        rules = subprocess.run(["podman", "exec", HOST, binary, "-S", "OUTPUT"], stdout=subprocess.PIPE,
                               universal_newlines=True, check=True).stdout
        assert "-j AGENTGUARD-EGRESS" in rules, (binary, rules)


def test_the_report_is_written_to_the_mounted_path():
    reports = os.path.join(OUT, "reports")
    with open(os.path.join(reports, "report.json")) as handle:
        report = json.load(handle)
    assert list(report["hosts"]) == [HOST], report["hosts"]
    assert not report["unread"], report["unread"]
    assert not report["hosts"][HOST].get("failed"), report["hosts"][HOST]
    for name in ("report.md", "report.html"):
        with open(os.path.join(reports, name)) as handle:
            assert HOST in handle.read(), name


def test_the_image_holds_what_the_collection_declares():
    # dnspython came in through the installed collection's meta/execution-environment.yml only.
    out = subprocess.run(["podman", "run", "--rm", IMAGE, "python3", "-c", "import dns.version; print(dns.version.version)"],
                         stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    assert out.strip()
