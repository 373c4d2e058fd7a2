"""The plan both modules make (egress_rules, and egress_host_state's fast path): options to result, every failure a
RulesError with the module's message, nothing run but reads. A fake host stands in for the machine: a recording
runner for iptables, ipset and ip, a resolver for the trusted resolvers."""
import json

import pytest

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.agentguard.hardening.plugins.module_utils import _rules as R
from ansible_collections.agentguard.hardening.plugins.module_utils._policy import ARGUMENT_SPEC
from ansible_collections.agentguard.hardening.plugins.module_utils._resolve import ResolveError

from .conftest import RESOLVED, Runner, fake_host, fixture

READS = ("iptables-save", "ip6tables-save", "ipset save", "ip")


def options(**over):
    params = dict(allow=[dict(name="inference-api", host="api.openclaw.security")], dns_servers=["198.18.0.53"])
    params.update(over)
    validated = ArgumentSpecValidator(ARGUMENT_SPEC).validate(params)
    assert not validated.error_messages, validated.error_messages
    return validated.validated_parameters


def resolver(answer=None, error=None):
    asked = []

    def resolve(allow, servers, families, timeout, retries):
        asked.append(dict(names=[d.host for d in allow], servers=list(servers), families=list(families)))
        if error:
            raise ResolveError(error)
        return dict((d.name, (answer or RESOLVED)[d.name]) for d in allow)
    resolve.asked = asked
    return resolve


def plan(params, runner, resolve=None, warnings=None, ipv6=True, which=lambda name, required=False: name, **kw):
    host = fake_host(runner, which, warnings, resolve=resolve or resolver(),
                     exists=lambda path: ipv6 and path == "/proc/net/if_inet6")
    return R.plan_rules(params, host, **kw)


DOCKER0_LINK = {"ifname": "docker0", "linkinfo": {"info_kind": "bridge"},
                "addr_info": [{"family": "inet", "local": "172.17.0.1", "prefixlen": 16, "scope": "global"}]}


def with_ip(runner, routes=(), links=(), fails=()):
    """runner, with `ip` answering: routes [{"dst", "dev"}] (ip -j route), links (ip -j addr), and failing with the
    argv words in fails ("-6": the IPv6 routes, "addr": the links)."""
    def run(argv, data=None):
        if argv[0] != "ip":
            return runner(argv, data)
        runner.calls.append((argv, data))
        if any(word in argv for word in fails):
            return 1, "", "Cannot talk to rtnetlink"
        if "route" in argv:
            version = "." if "-4" in argv else ":"
            return 0, json.dumps([dict(r, dst="default" if r["dst"] in ("0.0.0.0/0", "::/0") else r["dst"])
                                  for r in routes if version in r["dst"]]), ""
        return 0, json.dumps(list(links)), ""
    run.names = runner.names
    return run


def test_a_fresh_host_plans_every_rule_and_only_reads():
    runner = Runner({"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")})
    result, planned, nf = plan(options(), runner, want_diff=True)
    assert result["changed"] and planned.changed
    assert set(result) == {"changed", "changes", "resolved", "rules", "sets", "tracking", "families", "tls_gate",
                           "networks", "services", "diff", "desired_state_changed"}
    assert result["desired_state_changed"] is False  # no state_dir: the guard's file is not asked about
    assert result["resolved"] == {"inference-api": RESOLVED["inference-api"]}
    assert "-A AGENTGUARD-ALLOW -d 198.18.0.10/32" in result["rules"]["ipv4"]
    assert "fd00:a9e:1::10" in result["rules"]["ipv6"]
    # A plan reads, never writes: no restore of any kind was run.
    assert runner.names() and all(name in READS for name in runner.names()), runner.names()


def test_a_host_whose_guard_file_differs_is_changed(tmp_path):
    """The fast path must not skip a host whose desired-state file (what the guard holds) is missing or stale."""
    from ansible_collections.agentguard.hardening.plugins.module_utils import _desired as D
    state = str(tmp_path)
    runner = Runner({"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")})
    result, planned, nf = plan(options(state_dir=state), runner)
    assert result["desired_state_changed"] is True
    # The rules applied, the file written: nothing left.
    D.sync_desired(state, planned, 1.0)
    applied = Runner(planned.rules, ipset=planned.sets_payload)
    result, planned, nf = plan(options(state_dir=state), applied)
    assert result["desired_state_changed"] is False and result["changed"] is False
    # Only the file differs (another policy wrote it, or none): changed.
    D.write_json(state + "/desired.json", dict(D.read_json(state + "/desired.json"), hash="other"))
    result, planned, nf = plan(options(state_dir=state), applied)
    assert result["desired_state_changed"] is True and result["changed"] is True and not planned.changed


def test_the_plan_is_what_egress_rules_resolves_through_the_trusted_resolvers():
    resolve = resolver()
    plan(options(resolvers=["127.0.0.1"]), Runner({"ipv4": "", "ipv6": ""}), resolve)
    assert resolve.asked == [dict(names=["api.openclaw.security"], servers=["127.0.0.1"], families=["ipv4", "ipv6"])]


def test_without_a_diff_unless_asked():
    result = plan(options(), Runner({"ipv4": "", "ipv6": ""}))[0]
    assert "diff" not in result


@pytest.mark.parametrize("params, resolve, runner, message", [
    (dict(scope="users", users=[]), None, None, "invalid options, nothing was changed"),
    ({}, resolver(error="answer NXDOMAIN (the name does not exist)"), None,
     "answer NXDOMAIN (the name does not exist); nothing was changed"),
    ({}, None, Runner({"ipv4": "", "ipv6": ""}, fail_on=lambda name, argv, n: name == "iptables-save"),
     "cannot read the live netfilter state, nothing was changed"),
    ({}, None, Runner({"ipv4": "*filter\n-A OUTPUT -j\nbroken", "ipv6": ""}),
     "cannot read the live netfilter state, nothing was changed"),
])
def test_each_failure_says_nothing_was_changed(params, resolve, runner, message):
    runner = runner or Runner({"ipv4": "", "ipv6": ""})
    with pytest.raises(R.RulesError) as info:
        plan(options(**params), runner, resolve)
    assert message in str(info.value)
    assert all(name in READS for name in runner.names())


def test_a_policy_error_carries_its_errors_for_the_module_result():
    with pytest.raises(R.RulesError) as info:
        plan(options(scope="users", users=[]), Runner({"ipv4": "", "ipv6": ""}))
    assert info.value.extra["errors"] and not info.value.missing_lib


def test_sets_without_ipset_are_refused():
    runner = Runner({"ipv4": "", "ipv6": ""})
    cdn = [dict(name="cdn", host="cdn.example.com", ports=["8000-8010"])]
    with pytest.raises(R.RulesError) as info:
        plan(options(allow=cdn), runner, which=lambda name, required=False: None if name == "ipset" else name)
    assert "need ipset, which is not installed" in str(info.value)


def test_what_the_plan_leaves_open_is_said():
    warnings = []
    runner = Runner({"ipv4": "", "ipv6": ""})
    plan(options(), with_ip(runner, fails=["addr"]), warnings=warnings, ipv6=False)
    assert warnings == ["this kernel has no IPv6; only IPv4 is managed",
                        "`ip -j -d addr show` failed (rc=1: Cannot talk to rtnetlink): guest bridges are not known"]


def test_an_unchanged_host_plans_no_change():
    runner = Runner({"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")})
    first = plan(options(), runner)[0]
    converged = Runner({"ipv4": fixture("foreign-nft.v4") + "", "ipv6": fixture("foreign-nft.v6")})
    assert first["changed"]
    # What the first plan renders, read back as live state, leaves nothing to change.
    converged.saves = {"ipv4": first["rules"]["ipv4"], "ipv6": first["rules"]["ipv6"]}
    second = plan(options(), converged)[0]
    assert not second["changed"], second["changes"]


def test_scope_networks_reaching_the_uplink_are_refused_and_nothing_is_changed():
    """issue 24 item 6: the plan refuses (check mode too) a scope_networks element that matches the uplink."""
    runner = Runner({"ipv4": "", "ipv6": ""})
    routes = [{"dst": "0.0.0.0/0", "dev": "eth0"}, {"dst": "172.17.0.0/16", "dev": "docker0"}]
    with pytest.raises(R.RulesError) as info:
        plan(options(scope_networks=["docker0", "eth0"]), with_ip(runner, routes, [DOCKER0_LINK]), ipv6=False)
    assert "invalid options, nothing was changed:\nscope_networks[1]: 'eth0' matches eth0" in str(info.value)
    assert info.value.extra["errors"] and all(name in READS for name in runner.names())
    warnings = []
    result = plan(options(scope_networks=["docker0"]), with_ip(runner, routes, [DOCKER0_LINK], fails=["-6"]),
                  warnings=warnings, ipv6=False)[0]
    assert result["networks"]["covered"] == [{"name": "docker0", "runtime": "docker", "by": ["docker0"]}]
    assert "`ip -j -6 route show table all` failed (rc=1: Cannot talk to rtnetlink): the routes are not known" in warnings


def test_the_policys_destinations_make_their_interface_a_way_out():
    """No default route: the interface with the route to the resolved allowed address (RESOLVED) is a way out."""
    address = RESOLVED["inference-api"]["ipv4"][0]
    routes = [{"dst": address.split("/", maxsplit=1)[0] + "/32", "dev": "up0"}]
    with pytest.raises(R.RulesError) as info:
        plan(options(scope_networks=["up+"]), with_ip(Runner({"ipv4": "", "ipv6": ""}), routes), ipv6=False)
    assert "'up+' matches up0, which carries the route to" in str(info.value) and "a destination of the policy" in str(info.value)
