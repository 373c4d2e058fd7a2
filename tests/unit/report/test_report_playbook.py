"""playbooks/egress-report.yml writes its report when hosts cannot be read, and names them there."""
import datetime
import json
import os
import re
import sys

import pytest

from .render import UTC, host_result, kernel_line, learned_result, run_report, tamper_line

# Unreachable without any network traffic: ssh runs `false` as its proxy and the connection closes at once.
UNREACHABLE = {"ansible_connection": "ssh", "ansible_host": "agent-gone.invalid", "ansible_user": "root",
               "ansible_ssh_common_args": "-o ProxyCommand=false -o BatchMode=yes", "ansible_ssh_retries": 0}
# Reached (locally), but the module cannot run there.
BROKEN = {"ansible_connection": "local", "ansible_python_interpreter": "/nonexistent/python3",
          "ansible_become": False}


@pytest.fixture(scope="module")
def unread_run(tmp_path_factory):
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ansible-playbook")):
        pytest.skip("no ansible-playbook next to %s" % sys.executable)
    return run_report(tmp_path_factory.mktemp("unread"), {"agent-gone": UNREACHABLE, "agent-broken": BROKEN})


def test_every_host_unreachable_still_writes_the_report(unread_run):
    proc, out = unread_run
    # The report is written, and the run says it is incomplete.
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "could not be read: agent-broken, agent-gone" in proc.stdout, proc.stdout[-3000:]
    with open(os.path.join(out, "report.json")) as handle:
        report = json.load(handle)
    assert report["unread"] == ["agent-broken", "agent-gone"]
    assert report["hosts"]["agent-gone"].get("unreachable") is True
    assert report["hosts"]["agent-broken"].get("failed") is True


@pytest.mark.parametrize("kind", ["md", "html"])
def test_the_report_lists_the_hosts_it_could_not_read(unread_run, kind):
    proc, out = unread_run
    with open(os.path.join(out, "report." + kind)) as handle:
        text = handle.read()
    assert "2 could not be read" in text
    gone = [line for line in text.splitlines() if "agent-gone" in line and "unreachable: " in line]
    broken = [line for line in text.splitlines() if "agent-broken" in line and "could not be read: " in line]
    assert gone and broken, text


@pytest.fixture(scope="module")
def guard_run(tmp_path_factory):
    """A host with exact counters and two tamper events, and one whose dmesg holds 12 minutes of the 24 hours."""
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ansible-playbook")):
        pytest.skip("no ansible-playbook next to %s" % sys.executable)
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    since = now - datetime.timedelta(hours=24)
    start = now - datetime.timedelta(hours=2)
    lines = [kernel_line(start + datetime.timedelta(seconds=n), "198.18.77.66", 443, 40000 + n) for n in range(3)]
    tamper = [tamper_line(start + datetime.timedelta(seconds=20), ["ipv4/filter/output-jump"], 0.21, 0.43),
              tamper_line(start + datetime.timedelta(seconds=50), ["ipv6/ipset/ipset"], 0.3, None, restored=False)]
    results = {
        "agent-1": host_result(lines, 300, since, now, users={1000: "agent"},
                               counters={"ipv4": {"output": 40, "forward": 2}, "ipv6": {"output": 3}}, tamper=tamper),
        "agent-2": host_result([], 300, since, now, oldest=now - datetime.timedelta(minutes=12)),
    }
    results["agent-1"]["guard"] = {"started": "2026-12-01T08:00:00Z", "tamper_events_total": 5, "restore_failures_total": 1,
                                   "last_restore": "2026-12-06T19:00:50Z", "last_restore_seconds": 0.3,
                                   "last_open_seconds": None, "policy_hash": "sha256:abc", "applied": None,
                                   "in_sync": False, "tamper_events": []}
    proc, out = run_report(tmp_path_factory.mktemp("guard"), dict((h, {}) for h in results), results)
    assert proc.returncode == 0, proc.stdout[-3000:]
    texts = {}
    for kind in ("md", "html", "json"):
        with open(os.path.join(out, "report." + kind)) as handle:
            texts[kind] = handle.read()
    return texts


def test_the_report_gives_exact_totals_tamper_events_and_coverage(guard_run):
    report = json.loads(guard_run["json"])
    summary = report["summary"]
    assert summary["denied_packets"] == 45 and summary["uncounted"] == ["agent-2"]
    assert summary["tamper"] == 2 and summary["uncovered"] == ["agent-2"]
    assert report["hosts"]["agent-1"]["tamper_events"][1]["restored"] is False
    for kind in ("md", "html"):
        text = guard_run[kind]
        assert re.search(r"(<strong[^>]*>|\*\*)45(</strong>)? denied packet\(s\)", text), kind
        assert "not read on agent-2" in text
        assert "The kernel log of 1 host(s) does not cover the whole window" in text
        assert "dmesg covers only the last 12 min of the 24 h asked" in text
        assert "45 denied packet(s), exact kernel counters, since the rules were loaded at" in text
        assert "ipv4/filter/output-jump" in text and "0.43 s" in text
        assert "not restored: iptables-restore failed" in text
        assert "last 12 min of 24 h" in text
        assert "Guard: started 2026-12-01 08:00:00, 5 tamper event(s)" in text and "policy NOT in sync" in text
    md_row = [line for line in guard_run["md"].splitlines() if line.startswith("| agent-1 |")][0]
    assert md_row.split(" | ")[1:3] == ["45", "3"]  # exact denied packets, then the attempts in the log
    assert "learn" not in report and "Learned destinations" not in guard_run["md"] + guard_run["html"]


# The recorder's sets as `ipset save` prints them (counters, the timeout left of each entry).
LEARN_SAVE = """create ag4-_learn hash:ip,port family inet hashsize 1024 maxelem 65536 timeout 604800 counters
add ag4-_learn 198.18.77.10,tcp:443 timeout 604000 packets 3 bytes 180
add ag4-_learn 198.18.77.66,tcp:8443 timeout 604700 packets 2 bytes 120
create ag4-_learn-u100 hash:ip,port family inet hashsize 1024 maxelem 65536 timeout 604800 counters
add ag4-_learn-u100 198.18.77.12,udp:123 timeout 604790 packets 5 bytes 380
"""


@pytest.fixture(scope="module")
def learn_run(tmp_path_factory):
    """A host that learns (egress_learn: true) and one that does not, with what egress_learned read on the first."""
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ansible-playbook")):
        pytest.skip("no ansible-playbook next to %s" % sys.executable)
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    learned = learned_result(LEARN_SAVE, [("api.example.test", "198.18.77.10"), ("time.example.test", "198.18.77.12")],
                             {100: "_chrony"}, now)
    results = dict((h, host_result([], 300, now - datetime.timedelta(hours=24), now)) for h in ("agent-1", "agent-2"))
    agents = {"agent-1": {"egress_learn": True, "egress_report_learned": learned, "egress_dns_servers": ["198.18.77.53"]},
              "agent-2": {}}
    proc, out = run_report(tmp_path_factory.mktemp("learn"), agents, results)
    assert proc.returncode == 0, proc.stdout[-3000:]
    texts = {}
    for kind in ("md", "html", "json"):
        with open(os.path.join(out, "report." + kind)) as handle:
            texts[kind] = handle.read()
    return now, texts


def test_the_report_shows_the_learned_proposal(learn_run):
    now, texts = learn_run
    learn = json.loads(texts["json"])["learn"]
    assert sorted(learn["sets"]) == ["agent-1"] and learn["errors"] == []
    proposed = dict((e["host"], e) for e in learn["proposal"]["allow"])
    assert sorted(proposed) == ["api.example.test", "time.example.test"]
    assert proposed["time.example.test"]["users"] == ["_chrony"] and proposed["time.example.test"]["seen"]["count"] == 5
    assert [(f["host"], f["ports"]) for f in learn["proposal"]["flagged"]] == [("198.18.77.66", [8443])]
    api_first = (now - datetime.timedelta(seconds=800)).strftime("%Y-%m-%d %H:%M:%S")
    flagged_first = (now - datetime.timedelta(seconds=100)).strftime("%Y-%m-%d %H:%M:%S")
    md, html = texts["md"], texts["html"]
    assert "## Learned destinations (egress_learn)" in md and 'id="learned"' in html
    for text in (md, html):
        assert "1 host(s) record every would-be-denied destination (agent-1)" in text
        assert "Last seen is not recorded" in text
    assert "| api.example.test | `api.example.test` | tcp | 443 |  | 3 | %s | agent-1 |" % api_first in md
    assert "| time.example.test | `time.example.test` | udp | 123 | _chrony | 5 |" in md
    assert "| 198.18.77.66 | tcp | 8443 |  | 2 | %s | agent-1 |" % flagged_first in md
    assert re.search(r'<strong id="learn-proposed">2</strong> entries proposed by name', html)
    assert re.search(r'<strong id="learn-flagged">1</strong> nameless destination\(s\) flagged', html)
    assert ('<tr><td class="addr">198.18.77.66</td><td>tcp</td><td class="wrap">8443</td><td></td>\n<td class="n">2</td>'
            '<td class="time">%s</td>' % flagged_first) in html
