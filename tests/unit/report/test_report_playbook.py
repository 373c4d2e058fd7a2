"""playbooks/egress-report.yml writes its report when hosts cannot be read, and names them there."""
import json
import os
import sys

import pytest

from .render import run_report

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
