"""The TLS gate's options and rules: validation, the nat OUTPUT / PREROUTING redirects, the filter
INPUT guard and OUTPUT accept, the plan, apply/rollback and tear-down.

The fixtures tls-{host,users}-{nft,legacy}.v{4,6} are what each real backend printed after loading
exactly what the renderer produced, beside Docker-like foreign state (tests/unit/fixtures/capture-tls.sh).
"""
import sys

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils._options import validated_policy
from ansible_collections.agentguard.hardening.plugins.module_utils import _apply
from ansible_collections.agentguard.hardening.plugins.module_utils import _diff as D
from ansible_collections.agentguard.hardening.plugins.module_utils import _plan as A
from ansible_collections.agentguard.hardening.plugins.module_utils import _policy as P
from ansible_collections.agentguard.hardening.plugins.module_utils import _render as R
from ansible_collections.agentguard.hardening.plugins.module_utils import _state as S
from ansible_collections.agentguard.hardening.plugins.module_utils import _tlsgate as G

from .conftest import FIXTURES, Runner, fixture, nf

sys.path.insert(0, FIXTURES)
import tls_policy  # noqa: E402  (the fixtures' policies, shared with capture-tls.sh)

UIDS = tls_policy.UIDS
RESOLVED = tls_policy.RESOLVED


def errors(**params):
    base = dict(allow=[dict(name="api", host="api.test")], dns_servers=["198.18.0.53"], tls_gate="enforce",
                tls_gate_user="tlsgate")
    base.update(params)
    with pytest.raises(P.PolicyError) as info:
        validated_policy(base, lambda name: UIDS[name])
    return info.value.errors


def build(**params):
    base = dict(allow=[dict(name="api", host="api.test")], dns_servers=["198.18.0.53", "fd00:a9e:1::53"],
                tls_gate="enforce", tls_gate_user="tlsgate")
    base.update(params)
    return P.build_policy(base, lambda name: UIDS[name])


def live_of(variant, backend):
    return {"ipv4": S.live_state(fixture("tls-%s-%s.v4" % (variant, backend))),
            "ipv6": S.live_state(fixture("tls-%s-%s.v6" % (variant, backend)))}


# --- the rules as the kernel prints them back ---------------------------------------------------

@pytest.mark.parametrize("variant", ["host", "users"])
@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_live_state_reads_back_exactly_what_was_rendered(variant, backend, family):
    live = live_of(variant, backend)[family]
    policy = tls_policy.policy(variant)
    assert live.managed == R.desired_state(policy, RESOLVED, family)
    want = R.desired_hooks(policy, RESOLVED, family)
    for hook in S.HOOKS:
        assert live.hooks[hook].managed == want[hook], hook
    # Docker's nat rules and the sshd INPUT rule are foreign, and counted so.
    assert live.hooks["nat"].foreign_rules == 1 and live.hooks["nat-output"].foreign_rules == 1
    assert live.hooks["filter-input"].foreign_rules == 1
    assert want["nat-output"].chains and want["filter-input"].chains


@pytest.mark.parametrize("variant", ["host", "users"])
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_a_second_run_changes_nothing(variant, backend):
    sets = tls_policy.plan(variant).desired_sets
    plan = A.make_plan(tls_policy.policy(variant), RESOLVED, ["ipv4", "ipv6"], live_of(variant, backend), sets)
    assert not plan.changed and plan.transactions == {"ipv4": None, "ipv6": None}
    assert plan.changes["ipv6"] == {"added": [], "removed": []}


def test_first_run_one_section_per_table_and_the_changes_name_every_new_chain():
    plan = tls_policy.plan("host")
    text = plan.transactions["ipv4"]
    # nat PREROUTING and OUTPUT (and filter OUTPUT and INPUT) change in one commit each.
    assert text.count("*nat\n") == 1 and text.count("*filter\n") == 1 and text.count("COMMIT") == 3
    nat = text.split("*nat\n")[1]
    assert nat.index(":AGENTGUARD-TLS ") < nat.index("-I PREROUTING") and ":AGENTGUARD-TLS-FWD" in nat
    added = plan.changes["ipv4"]["added"]
    assert "-t nat -I OUTPUT 1 -j AGENTGUARD-TLS" in added
    assert "-t filter -I INPUT 1 -j AGENTGUARD-TLS-IN" in added
    assert "-t nat -I PREROUTING 2 -i br-+ -m comment --comment \"agentguard: network br-+\" -j AGENTGUARD-TLS-FWD" in added
    # The persistent file has each table once, with both hooks' jumps.
    rules = plan.rules["ipv4"]
    assert rules.count("*nat\n") == 1 and rules.count("*filter\n") == 1
    assert "-A INPUT -j AGENTGUARD-TLS-IN\n" in rules and "-A OUTPUT -j AGENTGUARD-TLS\n" in rules
    assert "-A PREROUTING -i docker0" in rules and ":AGENTGUARD-TLS-IN - [0:0]" in rules


def test_local_redirect_exempts_the_gate_user_and_logs_before_redirecting():
    rules = dict(R.desired_hooks(build(), {"api": RESOLVED["inference-api"]}, "ipv4")["nat-output"].chains)[R.CHAIN_TLS]
    assert rules == (
        '-m owner --uid-owner 990 -m comment --comment "agentguard: tls gate user" -j RETURN',
        '-d 198.18.0.10/32 -p tcp -m tcp --dport 443 -m conntrack --ctstate NEW -m comment --comment "agentguard: tls api" '
        '-m limit --limit 10/min --limit-burst 20 -j LOG --log-prefix "[EGRESS-TLS] " --log-uid',
        '-d 198.18.0.10/32 -p tcp -m tcp --dport 443 -m conntrack --ctstate NEW -m comment --comment "agentguard: tls api" '
        '-j REDIRECT --to-ports 10443')
    v6 = dict(R.desired_hooks(build(), {"api": RESOLVED["inference-api"]}, "ipv6")["nat-output"].chains)[R.CHAIN_TLS]
    assert v6[2].startswith("-d fd00:a9e:1::10/128 -p tcp")


def test_filter_accepts_redirected_local_connections_and_input_drops_direct_ones():
    for family, loopback in (("ipv4", "127.0.0.1/32"), ("ipv6", "::1/128")):
        state = R.desired_state(build(), {"api": RESOLVED["inference-api"]}, family)
        allow = dict(state.chains)["AGENTGUARD-ALLOW"]
        assert allow[2] == ('-d %s -p tcp -m tcp --dport 10443 -m conntrack --ctstate DNAT -m comment --comment '
                            '"agentguard: tls gate" -j ACCEPT' % loopback)
        guard = R.desired_hooks(build(), {"api": RESOLVED["inference-api"]}, family)["filter-input"]
        assert guard.jumps == ((0, "-j AGENTGUARD-TLS-IN"),)
        assert guard.chains == (("AGENTGUARD-TLS-IN", (
            '-p tcp -m tcp --dport 10443 -m conntrack ! --ctstate DNAT -m comment --comment '
            '"agentguard: tls gate: redirected connections only" -j DROP',)),)


def test_users_scope_jumps_per_user_and_restricts_the_gate_user():
    policy = tls_policy.policy("users")
    hooks = R.desired_hooks(policy, RESOLVED, "ipv4")
    assert [spec for index, spec in hooks["nat-output"].jumps] == [
        '-m owner --uid-owner 1000 -m comment --comment "agentguard: user agent" -j AGENTGUARD-TLS']
    entry = dict(R.desired_state(policy, RESOLVED, "ipv4").chains)["AGENTGUARD-EGRESS"]
    assert [rule.split(" -m comment")[0] for rule in entry] == ["-m owner --uid-owner 990", "-m owner --uid-owner 1000"]


def test_scope_none_redirects_containers_only_and_holds_the_gate_user():
    policy = build(scope="none", scope_networks=["docker0"])
    hooks = R.desired_hooks(policy, {"api": RESOLVED["inference-api"]}, "ipv4")
    assert hooks["nat-output"] == S.EMPTY_HOOK
    assert hooks["nat"].jumps == ((0, '-i docker0 -m comment --comment "agentguard: network docker0" -j AGENTGUARD-TLS-FWD'),)
    fwd = dict(hooks["nat"].chains)["AGENTGUARD-TLS-FWD"]
    assert fwd[0].endswith('-j LOG --log-prefix "[EGRESS-TLS] "') and fwd[1].endswith("-j REDIRECT --to-ports 10443")
    state = R.desired_state(policy, {"api": RESOLVED["inference-api"]}, "ipv4")
    assert state.policy == "ACCEPT" and dict(state.chains)["AGENTGUARD-EGRESS"] == (
        '-m owner --uid-owner 990 -m comment --comment "agentguard: user tlsgate" -j AGENTGUARD-ALLOW',)
    assert not any("DNAT -m comment" in rule and "ACCEPT" in rule for rule in dict(state.chains)["AGENTGUARD-ALLOW"])


def test_filtering_mode_redirect_matches_the_resolver_filled_set():
    rules = dict(R.desired_hooks(tls_policy.policy("users"), RESOLVED, "ipv4")["nat-output"].chains)[R.CHAIN_TLS]
    assert rules[2].startswith("-p tcp -m set --match-set ag4-inference-api dst -m tcp --dport 443 ")
    assert rules[2].endswith("-j REDIRECT --to-ports 20443")


def test_a_family_not_opened_gets_no_redirect_and_gate_off_gets_nothing():
    policy = build(families=["ipv4"])
    assert R.desired_hooks(policy, {"api": RESOLVED["inference-api"]}, "ipv6")["nat-output"] == S.EMPTY_HOOK
    off = build(tls_gate="off")
    hooks = R.desired_hooks(off, {"api": RESOLVED["inference-api"]}, "ipv4")
    assert hooks["nat-output"] == S.EMPTY_HOOK and hooks["filter-input"] == S.EMPTY_HOOK
    assert not any("DNAT" in rule for rule in dict(R.desired_state(off, {"api": RESOLVED["inference-api"]}, "ipv4").chains)
                   ["AGENTGUARD-ALLOW"])


@pytest.mark.parametrize("how", [dict(state="absent"), dict(tls_gate="off")])
def test_absent_or_off_tears_the_gate_down(how):
    live = live_of("host", "nft")
    policy = tls_policy.policy("host", **how)
    plan = A.make_plan(policy, RESOLVED, ["ipv4", "ipv6"], live, {})
    text = plan.transactions["ipv4"]
    assert "-D OUTPUT -j AGENTGUARD-TLS\n" in text and "-X AGENTGUARD-TLS\n" in text
    assert "-D INPUT -j AGENTGUARD-TLS-IN\n" in text and "-X AGENTGUARD-TLS-IN\n" in text
    assert "-X AGENTGUARD-TLS-FWD\n" in text and text.count("*nat\n") == 1
    assert "DOCKER" not in text and "dport 22" not in text  # foreign rules are never named
    assert "-t nat -N AGENTGUARD-TLS" in plan.changes["ipv6"]["removed"]


def test_rollback_puts_the_gate_rules_back():
    saves = {"ipv4": fixture("tls-host-nft.v4"), "ipv6": fixture("tls-host-nft.v6")}
    runner = Runner(saves, fail_on=lambda name, argv, n: name == "ip6tables-restore" and "--test" not in argv)
    live, live_sets = A.read_live(nf(runner), ["ipv4", "ipv6"])
    plan = A.make_plan(tls_policy.policy("host", state="absent"), {}, ["ipv4", "ipv6"], live, live_sets)
    runner.calls = []
    with pytest.raises(_apply.ApplyError):
        _apply.apply_plan(nf(runner), plan)
    undo = [data for argv, data in runner.calls if argv[0] == "iptables-restore" and "--test" not in argv][-1]
    assert "-I OUTPUT 1 -j AGENTGUARD-TLS\n" in undo and "-I INPUT 1 -j AGENTGUARD-TLS-IN\n" in undo
    assert undo.count("*nat\n") == 1 and "-A AGENTGUARD-TLS-FWD " in undo


def test_diff_shows_the_gate_chains():
    plan = tls_policy.plan("host")
    diff = A.plan_diff(plan)
    assert "-t nat -N AGENTGUARD-TLS" in diff["after"] and "AGENTGUARD-TLS" not in diff["before"]
    assert D.hook_lines({"filter-input": S.EMPTY_HOOK}) == []


# --- options --------------------------------------------------------------------------------

def test_gated_ports_by_the_tls_key():
    policy = tls_policy.policy("host")
    ports = dict((d.name, d.tls_ports) for d in policy.allow)
    assert ports == {"inference-api": (443,), "cdn": (443, 8443), "status": (), "mirror": (), "plain": ()}
    assert policy.tls_listeners == ((443, 10443), (8443, 10444))
    assert [u["entry"] for u in policy.tls_ungated] == ["egress_allow[2]", "egress_allow[3]"]
    assert policy.tls_ungated[0] == {"entry": "egress_allow[2]", "host": "198.18.0.11/32", "ports": [443],
                                     "reason": "an address has no server name to check: TLS to it is not gated"}
    # Unset on an entry without 443: nothing gated there.
    assert build(allow=[dict(name="api", host="api.test"), dict(name="x", host="x.test", ports=[8443])]).allow[1].tls_ports == ()


@pytest.mark.parametrize("params,expected", [
    (dict(tls_gate="strict"), "tls_gate: 'strict' is not one of off, audit, enforce"),
    (dict(tls_gate_user=None), "tls_gate_user: None is empty"),
    (dict(tls_gate_user="nobody-here"), "tls_gate_user: user 'nobody-here' does not exist on this host"),
    (dict(tls_gate_user="0"), "tls_gate_user: '0' is uid 0"),
    (dict(tls_gate_port=80), "tls_gate_port: 80 is out of range (1024 to 65535)"),
    (dict(tls_gate_port="high"), "tls_gate_port: 'high' is not a whole number"),
    (dict(tls_gate_port=65535, allow=[dict(name="a", host="a.test", ports=[443, 8443], tls=True)]),
     "tls_gate_port: 65535 leaves no room for 2 listeners"),
    (dict(allow=[dict(name="a", host="198.18.0.1", tls=True)]),
     "allow[0].host: '198.18.0.1/32' is an address; an address has no server name to check; set tls: false"),
    (dict(allow=[dict(name="a", host="a.test", protocol="udp", tls=True)]), "allow[0].tls: true needs protocol tcp"),
    (dict(allow=[dict(name="a", host="a.test", tls="maybe")]), "allow[0].tls: 'maybe' is not a boolean"),
    (dict(allow=[dict(name="a", host="a.test", ports=["8000-8010"], tls=True)]), "allow[0].ports: '8000-8010' is a range"),
    (dict(allow=[dict(name="a", host="a.test", users=["agent"], tls=True)]), "allow[0].tls: true cannot combine with users"),
    (dict(allow=[dict(name="a", host="a.test", tls=False)]), "tls_gate: 'enforce' but no allow entry is gated"),
    (dict(dns_mode="filtering", dns_resolver_user="dnsmasq", tls_gate_user="dnsmasq", resolvers=["127.0.0.1"]),
     "tls_gate_user: 'dnsmasq' is also dns_resolver_user"),
    (dict(scope="users", users=["agent", "tlsgate"]), "tls_gate_user: 'tlsgate' is one of users"),
])
def test_bad_gate_options_name_the_field_and_value(params, expected):
    assert any(e.startswith(expected) for e in errors(**params)), errors(**params)


def test_udp_tls_true_fails_even_with_the_gate_off_and_address_tls_true_only_with_it_on():
    assert any(e.startswith("allow[0].tls: true needs protocol tcp")
               for e in errors(tls_gate="off", allow=[dict(name="a", host="a.test", protocol="udp", tls=True)]))
    assert build(tls_gate="off", allow=[dict(name="a", host="198.18.0.1", tls=True)]).tls_gate == "off"


def test_absent_needs_no_gate_user():
    assert build(state="absent", tls_gate_user=None).tls_gate == "enforce"


# --- the tls_gate return value -------------------------------------------------------------

def test_gate_result_pinned_lists_the_resolved_addresses():
    result = G.gate_result(tls_policy.policy("host"), RESOLVED)
    assert result["mode"] == "enforce" and result["user"] == "tlsgate" and result["uid"] == 990
    assert result["listeners"] == [{"port": 443, "listen": 10443}, {"port": 8443, "listen": 10444}]
    assert result["names"][0] == {"name": "api.test", "subdomains": False, "ports": [443],
                                  "addresses": ["198.18.0.10", "fd00:a9e:1::10"]}
    assert result["names"][1]["name"] == "cdn.test" and result["names"][1]["ports"] == [443, 8443]
    assert len(result["names"][1]["addresses"]) == 12 and len(result["ungated"]) == 2


def test_gate_result_filtering_has_no_addresses_and_off_is_empty():
    result = G.gate_result(tls_policy.policy("users"), RESOLVED)
    assert result["names"] == [{"name": "api.test", "subdomains": True, "ports": [443], "addresses": []}]
    assert result["mode"] == "audit" and result["listeners"] == [{"port": 443, "listen": 20443}]
    assert G.gate_result(build(tls_gate="off"), RESOLVED) == {
        "mode": "off", "user": None, "uid": None, "listeners": [], "names": [], "ungated": []}
