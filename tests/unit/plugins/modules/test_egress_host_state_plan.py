"""egress_host_state's fast path (option plan): the plan of egress_rules made in the same call, on a fake module.
It never fails the module: a host that cannot plan yet answers plan null with the reason, for the role to go on
to its install and egress_rules' own plan. Warnings only when the plan is unchanged (the run ends there)."""
import pytest

from ansible_collections.agentguard.hardening.plugins.modules import egress_host_state as M

from ..module_utils.conftest import RESOLVED


class FakeModule(object):
    def __init__(self, saves, binaries=("iptables-save", "ip6tables-save", "ipset", "ip")):
        self.saves = saves
        self.binaries = binaries
        self.warnings = []
        self.calls = []

    def get_bin_path(self, name, required=False):
        assert not required, "a required lookup would fail the module"
        return "/usr/sbin/" + name if name in self.binaries else None

    def run_command(self, argv, **kwargs):
        self.calls.append(list(argv))
        name = argv[0].rsplit("/", 1)[-1]
        if name in self.saves:
            return 0, self.saves[name], ""
        if name == "ip":
            return 0, "[]", ""
        return 0, "", ""

    def warn(self, text):
        self.warnings.append(text)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No DNS, no /proc, no IPv6 or user question to this machine: the lab answers."""
    from ansible_collections.agentguard.hardening.plugins.module_utils import _rules
    from ansible_collections.agentguard.hardening.plugins.module_utils._hostio import HostIO

    def resolve(allow, servers, families, timeout, retries):
        return dict((d.name, RESOLVED[d.name]) for d in allow)
    monkeypatch.setattr(_rules, "resolve_destinations", resolve)
    monkeypatch.setattr(_rules, "managed_families", lambda host: ["ipv4", "ipv6"])
    monkeypatch.setattr(_rules, "load_dnspython", lambda: None)
    monkeypatch.setattr(HostIO, "comms", staticmethod(lambda: set()))
    monkeypatch.setattr(HostIO, "uid_of", staticmethod(lambda name: 1000))


OPTIONS = dict(allow=[dict(name="inference-api", host="api.openclaw.security")], dns_servers=["198.18.0.53"])


def test_a_host_without_iptables_cannot_plan_yet():
    module = FakeModule({}, binaries=())
    planned, why = M.early_plan(module, OPTIONS)
    assert planned is None and "iptables-save is not installed" in why


def test_invalid_options_answer_why_not_fail():
    planned, why = M.early_plan(FakeModule({}), dict(OPTIONS, mode="loud"))
    assert planned is None and why.startswith("invalid options") and "mode" in why


def test_a_changed_plan_says_nothing_an_unchanged_one_warns():
    fresh = FakeModule({"iptables-save": "", "ip6tables-save": ""})
    options = dict(OPTIONS, tls_gate="enforce", tls_gate_user="gate",
                   allow=OPTIONS["allow"] + [dict(name="cdn", host="198.18.5.0/24")])
    planned, why = M.early_plan(fresh, options)
    assert why == "" and planned["changed"] and fresh.warnings == []
    # Only reads were run.
    assert all(call[0].rsplit("/", 1)[-1] in ("iptables-save", "ip6tables-save", "ipset", "ip") for call in fresh.calls)
    converged = FakeModule({"iptables-save": planned["rules"]["ipv4"], "ip6tables-save": planned["rules"]["ipv6"],
                            "ipset": planned["sets"]})
    again, why = M.early_plan(converged, options)
    assert why == "" and not again["changed"], again["changes"]
    assert any("the TLS gate does not cover egress_allow[1]" in text for text in converged.warnings)
