"""Helpers shared by the module_utils tests: fixture files, the resolution the renders use, and a
recording command runner standing in for iptables, ip6tables and ipset."""
import os

from ansible_collections.agentguard.hardening.plugins.module_utils import _netfilter as N

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "fixtures")

RESOLVED = {
    "inference-api": {"ipv4": ["198.18.0.10"], "ipv6": ["fd00:a9e:1::10"]},
    "cdn": {"ipv4": ["198.18.4.%d" % i for i in range(1, 11)] + ["198.18.5.0/24"],
            "ipv6": ["fd00:a9e:4::%d" % i for i in range(1, 10)]},
}


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


class Runner(object):
    """Records every call; answers the saves from `saves`, fails where fail_on(name, argv, nth call) says."""

    def __init__(self, saves, fail_on=None, ipset=""):
        self.saves = saves
        self.fail_on = fail_on
        self.ipset = ipset
        self.calls = []

    def __call__(self, argv, data=None):
        self.calls.append((argv, data))
        name = argv[0].rsplit("/", 1)[-1]
        if self.fail_on and self.fail_on(name, argv, len([c for c in self.calls if c[0][0] == argv[0]])):
            return 1, "", "%s: line 4 failed" % name
        if name == "iptables-save":
            return 0, self.saves["ipv4"], ""
        if name == "ip6tables-save":
            return 0, self.saves["ipv6"], ""
        if name == "ipset" and argv[1] == "save":
            return 0, self.ipset, ""
        return 0, "", ""

    def names(self):
        return [" ".join([c[0][0]] + [a for a in c[0][1:] if a in ("--test", "save", "restore", "-t")]) for c in self.calls]


def nf(runner):
    return N.Netfilter(runner, lambda name, required: name)


def plan_for(runner, **over):
    """The module's plan of a two-entry policy (one name, one port range) against the live state runner gives."""
    from ansible_collections.agentguard.hardening.plugins.module_utils import _plan
    from ansible_collections.agentguard.hardening.plugins.module_utils import _policy as P
    params = dict(allow=[dict(name="inference-api", host="api.openclaw.security"),
                         dict(name="cdn", host="cdn.example.com", ports=["8000-8010"])],
                  dns_servers=["198.18.0.53"])
    params.update(over)
    policy = P.build_policy(params, lambda n: 1000)
    live, live_sets = _plan.read_live(nf(runner), ["ipv4", "ipv6"])
    return _plan.make_plan(policy, RESOLVED, ["ipv4", "ipv6"], live, live_sets)


def fake_host(run=None, which=lambda name, required=False: name, warnings=None, **readers):
    """A HostIO (_hostio) that asks this machine nothing: no file, process, route, user but uid 1000, link or
    IPv6 unless readers say so; run answers the commands (a Runner); warnings (a list) collects warn."""
    from ansible_collections.agentguard.hardening.plugins.module_utils._hostio import HostIO
    defaults = dict(exists=lambda path: False, read_text=lambda path: None, stat=lambda path: None,
                    realpath=lambda path: path, is_physical=lambda name: False, glob=lambda pattern: [],
                    uid_of=lambda name: 1000, groups=lambda name: [], comms=lambda: set())
    defaults.update(readers)
    return HostIO(run=run, which=which, warn=(warnings if warnings is not None else []).append, **defaults)
