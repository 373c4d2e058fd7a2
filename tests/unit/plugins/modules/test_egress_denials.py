"""The egress_denials module itself, run in-process on a fake host: its argument spec, that it
returns what its RETURN documents, runs commands with LC_ALL=C, and fails with the message of the
module_utils it calls (_log_sources, tested on its own)."""
import os

import pytest
import yaml
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

from ansible_collections.agentguard.hardening.plugins.modules import egress_denials as M

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "fixtures")


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


class Ended(Exception):
    pass


def run_module(monkeypatch, args, answers):
    """(outcome, result, calls) of main() with these module args; answers: binary -> (rc, out, err)."""
    result, calls = {}, []

    def run_command(self, argv, **kwargs):
        calls.append((list(argv), kwargs))
        return answers[os.path.basename(argv[0])]

    def end(outcome):
        def method(self, **kwargs):
            result.update(kwargs, outcome=outcome)
            raise Ended()
        return method

    monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path",
                        lambda self, name, required=False, opt_dirs=None: "/usr/bin/" + name if name in answers else None)
    monkeypatch.setattr(basic.AnsibleModule, "exit_json", end("exit"))
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", end("fail"))
    with patch_module_args(args), pytest.raises(Ended):
        M.main()
    return result.pop("outcome"), result, calls


HOST = {"dmesg": (0, fixture("denials/dmesg-iso.log"), ""), "iptables-save": (0, fixture("managed-nft.v4"), ""),
        "ip6tables-save": (0, fixture("managed-nft.v6"), "")}


@pytest.mark.parametrize("check_mode", [False, True])
def test_returns_what_its_documentation_says(monkeypatch, check_mode):
    outcome, result, calls = run_module(monkeypatch, dict(source="dmesg", local_only=False, _ansible_check_mode=check_mode),
                                        HOST)
    assert outcome == "exit" and result.pop("changed") is False
    result.pop("invocation", None)
    assert set(result) == set(yaml.safe_load(M.RETURN))
    assert result["source"] == "dmesg" and result["total"] == 8 and result["log_limit_text"] == "10/min, burst 20"
    assert [argv for argv, kwargs in calls] == [["/usr/bin/dmesg", "--time-format", "iso"], ["/usr/bin/iptables-save", "-c"],
                                                ["/usr/bin/ip6tables-save", "-c"]]
    assert all(kwargs["environ_update"] == {"LC_ALL": "C"} and kwargs["data"] is None for argv, kwargs in calls)


def test_argument_spec_matches_the_documentation():
    options = yaml.safe_load(M.DOCUMENTATION)["options"]
    assert set(options) == set(M.ARGUMENT_SPEC)
    for name, spec in M.ARGUMENT_SPEC.items():
        assert options[name]["type"] == spec["type"], name
        assert options[name].get("default") == spec.get("default"), name
        assert options[name].get("choices") == spec.get("choices"), name


@pytest.mark.parametrize("args, message", [
    (dict(source="syslog"), "value of source must be one of: auto, journal, file, dmesg, got: syslog"),
    (dict(prefix=""), "prefix: '' must be the non-empty log prefix of the deny rules"),
    (dict(since="last week"), "since: 'last week' is not a time"),
    (dict(source="journal"), "cannot read journal (no journalctl on this host)"),
    (dict(source="dmesg", dns_source="file", dns_path="/nonexistent/agentguard/syslog"),
     "cannot read the resolver's log from /nonexistent/agentguard/syslog (No such file or directory)"),
])
def test_fails_with_a_message_naming_the_option_or_source(monkeypatch, args, message):
    outcome, result, calls = run_module(monkeypatch, dict(args, local_only=False), HOST)
    assert outcome == "fail" and message in result["msg"]
