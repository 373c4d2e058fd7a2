"""The role refuses bad input before it touches the host, naming the variable and the value.

Runs the role with ansible-playbook against this machine, in check mode and with --tags always
(the checks and the read-only module egress_host_state; never an install or a rule),
so a check that let a bad value through shows as a run that got further, not as a changed host.
"""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = os.path.dirname(sys.executable)
COLLECTIONS = next(p for p in sys.path if os.path.isdir(os.path.join(p, "ansible_collections", "agentguard", "hardening")))
PLAY = "- hosts: localhost\n  gather_facts: false\n  roles:\n    - agentguard.hardening.egress\n"
# An address, not a name: a run that gets past the checks plans the rules on this machine (egress_host_state's
# fast path, read-only), and a name would send a DNS query to a resolver this test did not create.
GOOD = {"egress_allow": [{"name": "inference-api", "host": "198.18.1.10"}], "egress_dns_servers": ["198.18.0.53"]}
INPUT_CHECK = "Check the inputs beyond their types"


def run_role(tmp_path, **variables):
    play = tmp_path / "play.yml"
    play.write_text(PLAY)
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(dict(GOOD, **variables)))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
               ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_CALLBACK_FORMAT_PRETTY="false",
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", PATH=BIN + os.pathsep + os.environ["PATH"])
    proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", "ansible_python_interpreter=" + sys.executable, "-e", "@" + str(extra),
                           "--check", "--tags", "always", str(play)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env,
                          cwd=ROOT, timeout=300, check=False)
    # The default callback, results as one-line JSON: "TASK [role : name] ***", then the host's line.
    tasks = []
    for line in proc.stdout.splitlines():
        header = re.match(r"^TASK \[(?:[^:\]]+ : )?(.*)\] \*+$", line)
        if header:
            tasks.append((header.group(1), {}))
        elif tasks and line.startswith(("ok: [localhost]", "fatal: [localhost]", "skipping: [localhost]")):
            status, body = (line.split(" => ", 1) + [""])[:2]
            result = json.loads(body) if body else {}
            result["failed"] = status.startswith("fatal")
            tasks[-1] = (tasks[-1][0], result)
    assert tasks, proc.stdout + proc.stderr
    return proc.returncode, tasks


BAD = [
    # (variables, task that must fail, fragments of its message)
    ({"egress_allow": [{"name": "api", "host": "api.exa mple.com"}]}, INPUT_CHECK,
     ["egress_allow[0].host", "'api.exa mple.com'"]),
    ({"egress_allow": [{"name": "api", "host": "198.18.1.1", "ports": [443, 70000]}]}, INPUT_CHECK,
     ["egress_allow[0].ports[1]", "70000"]),
    ({"egress_allow": [{"name": "everything", "host": "::/0"}]}, INPUT_CHECK,
     ["egress_allow[0].host", "'::/0'", "defeats the allowlist"]),
    ({"egress_dns_servers": ["resolver.example"]}, INPUT_CHECK, ["egress_dns_servers[0]", "'resolver.example'"]),
    ({"egress_dns_servers": []}, INPUT_CHECK, ["egress_dns_servers", "[] is empty"]),
    ({"egress_log_limit": "10/fortnight"}, INPUT_CHECK, ["egress_log_limit", "'10/fortnight'"]),
    ({"egress_scope": "users"}, INPUT_CHECK, ["egress_scope_users", "is empty"]),
    ({"egress_scope_users": ["agent"]}, INPUT_CHECK, ["egress_scope_users", "['agent']", "scope=users"]),
    ({"egress_allow": [{"name": "api", "host": "api.example.com", "subdomains": True}]}, INPUT_CHECK,
     ["egress_allow", "'api'", "subdomains: true", "dns_mode=filtering"]),
    ({"egress_rollback_timeout": 5}, INPUT_CHECK, ["egress_rollback_timeout is 5"]),
    ({"egress_dns_set_timeout": 15, "egress_dns_mode": "filtering"}, INPUT_CHECK, ["egress_dns_set_timeout: 15 is out of range"]),
    ({"egress_canary_forbidden": ["198.18.0.99"]}, INPUT_CHECK, ["egress_canary_forbidden", "198.18.0.99"]),
    # A connect that fails on the port, not on the firewall, must not count as blocked.
    ({"egress_canary_forbidden": ["198.18.0.66:443", "[fd00:19::20]:99999"]}, INPUT_CHECK,
     ["egress_canary_forbidden[1]", "'[fd00:19::20]:99999'", "port '99999' is out of range"]),
    ({"egress_dns_before_units": ["agent"]}, INPUT_CHECK, ["egress_dns_before_units", "agent"]),
    ({"egress_scope": "none"}, INPUT_CHECK, ["egress_scope_networks", "[] is empty", "scope=none"]),
    ({"egress_scope_networks": ["docker0", "br+x"]}, INPUT_CHECK, ["egress_scope_networks[1]", "'br+x'"]),
    ({"egress_scope_networks": ["198.19.0.1/24"]}, INPUT_CHECK,
     ["egress_scope_networks[0]", "'198.19.0.1/24'", "198.19.0.0/24"]),
    # Types and choices: the role's argument specification.
    ({"egress_scope": "everyone"}, "Validating arguments", ["egress_scope", "everyone"]),
    ({"egress_mode": "block"}, "Validating arguments", ["egress_mode", "block"]),
    ({"egress_allow": [{"name": "api"}]}, "Validating arguments", ["host"]),
]


@pytest.mark.parametrize("variables,failing,fragments", BAD, ids=[";".join(sorted(b[0])) + str(i) for i, b in enumerate(BAD)])
def test_bad_input_fails_before_the_host_is_read(tmp_path, variables, failing, fragments):
    rc, tasks = run_role(tmp_path, **variables)
    assert rc != 0
    name, result = tasks[-1]
    assert failing in name and result.get("failed"), tasks
    message = str(result.get("msg")) + str(result.get("argument_errors", ""))
    for fragment in fragments:
        assert fragment in message, message
    assert "Nothing was changed" in message or failing != INPUT_CHECK
    # Nothing ran after the failed check: not even the read-only look at the host.
    assert not any("Read the host's" in task[0] for task in tasks)


NEWCOMER = [
    # (variables, the one line the message has for it): the mistakes of a first run, each with its fix.
    ({"egress_alow": [{"name": "api", "host": "198.18.1.10"}]},
     "egress_alow is not a variable of the role egress (did you mean egress_allow?); a misspelled variable would be "
     "ignored, so the role refuses it (its variables are in roles/egress/README.md)."),
    ({"egress_dns_server": ["198.18.0.53"]},
     "egress_dns_server is not a variable of the role egress (did you mean egress_dns_servers?); a misspelled "
     "variable would be ignored, so the role refuses it (its variables are in roles/egress/README.md)."),
    ({"egress_firewall": True},
     "egress_firewall is not a variable of the role egress; a misspelled variable would be ignored, so the role "
     "refuses it (its variables are in roles/egress/README.md)."),
    ({"egress_dns_servers": "1.1.1.1"},
     "egress_dns_servers: '1.1.1.1' is a string, not a list; write a list: ['1.1.1.1']"),
    ({"egress_dns_before_units": "agent.service"},
     "egress_dns_before_units: 'agent.service' is a string, not a list; write a list: ['agent.service']"),
    ({"egress_allow": [{"name": "api", "host": "https://api.example.com"}]},
     "egress_allow[0].host: 'https://api.example.com' is a URL; write the host alone (host: api.example.com) "
     "and its port in ports (ports: [443])"),
    ({"egress_allow": [{"name": "api", "host": "api.example.com:8443"}]},
     "egress_allow[0].host: 'api.example.com:8443' has a port; write the host alone (host: api.example.com) "
     "and the port in ports (ports: [8443])"),
]


@pytest.mark.parametrize("variables,line", NEWCOMER, ids=[sorted(n[0])[0] + str(i) for i, n in enumerate(NEWCOMER)])
def test_newcomer_mistake_gets_one_line_that_names_the_fix(tmp_path, variables, line):
    rc, tasks = run_role(tmp_path, **variables)
    assert rc != 0
    name, result = tasks[-1]
    assert INPUT_CHECK in name and result.get("failed"), tasks
    assert result["msg"] == "The role egress refuses these inputs:\n- %s\n-- Nothing was changed." % line


def test_the_collections_own_variables_are_not_refused(tmp_path):
    """What the role sets and what the collection's playbooks read are egress_* names too."""
    rc, tasks = run_role(tmp_path, egress_target="agents", egress_serial=[1], egress_report_since="7d",
                         egress_export_namespace="agents", egress_warnings=[])
    assert rc == 0, tasks


def test_several_bad_inputs_are_reported_together(tmp_path):
    rc, tasks = run_role(tmp_path, egress_allow=[{"name": "api", "host": "0.0.0.0/0"}], egress_rollback_timeout=5)
    assert rc != 0
    lines = tasks[-1][1]["msg"].splitlines()
    # One problem per line, between a title and the separated last line.
    assert lines[0] == "The role egress refuses these inputs:" and lines[-1] == "-- Nothing was changed."
    assert lines[1].startswith("- egress_allow[0].host: '0.0.0.0/0'") and lines[2].startswith("- egress_rollback_timeout is 5")
    assert len(lines) == 4


def test_good_input_passes_the_checks(tmp_path):
    rc, tasks = run_role(tmp_path)
    names = [task[0] for task in tasks]
    assert rc == 0, tasks
    assert any(INPUT_CHECK in n for n in names) and any("Read the host's platform and state" in n for n in names)


def test_unknown_users_of_an_entry_fail_after_the_read_naming_the_entry(tmp_path):
    """Whether a user exists is the host's to say: the read-only look at the host answers it, and the run
    stops right after, before anything is installed."""
    rc, tasks = run_role(tmp_path, egress_allow=[
        {"name": "inference-api", "host": "api.example.com"},
        {"name": "time", "host": "198.18.0.123", "ports": [123], "protocol": "udp", "users": ["no-such-user-x", "0"]}])
    assert rc != 0
    name, result = tasks[-1]
    assert "users that do not exist" in name and result.get("failed"), tasks
    assert "egress_allow[1].users: user 'no-such-user-x' does not exist" in result["msg"], result["msg"]
    assert "Nothing was changed" in result["msg"]


@pytest.mark.parametrize("over", [{"egress_dns_mode": "filtering"}, {"egress_state": "absent"}])
def test_the_read_of_the_host_works_without_its_plan(tmp_path, over):
    """egress_host_state plans only in pinned DNS mode with egress_state present: in the other runs its answer
    has no plan, and the role must not stumble on that (it did: `plan is mapping` on a missing key)."""
    rc, tasks = run_role(tmp_path, **over)
    assert rc == 0, tasks
    published = [result for name, result in tasks if name.startswith("Publish the host's plan")]
    assert published and not published[0]["failed"], tasks
