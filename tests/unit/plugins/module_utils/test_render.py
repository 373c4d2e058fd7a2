"""Rendering: desired state, persistable payloads, --noflush transactions, ipset payloads."""
import pytest
from hypothesis import given, strategies as st

from ansible_collections.agentguard.hardening.plugins.module_utils._options import validated_policy
from ansible_collections.agentguard.hardening.plugins.module_utils import _policy as P
from ansible_collections.agentguard.hardening.plugins.module_utils import _render as R
from ansible_collections.agentguard.hardening.plugins.module_utils import _state as S

from .conftest import RESOLVED, fixture


def policy(**over):
    params = dict(
        allow=[dict(name="inference-api", host="api.openclaw.security"),
               dict(name="cdn", host="cdn.example.com", ports=["8000-8010"])],
        dns_servers=["198.18.0.53", "fd00:a9e:1::53"],
        scope="users", users=["agent"], deny_action="reject",
    )
    params.update(over)
    return P.build_policy(params, lambda name: {"agent": 1000}[name])


@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("family,suffix", [("ipv4", "v4"), ("ipv6", "v6")])
def test_rendered_state_equals_what_the_kernel_saved(backend, family, suffix):
    """The fixture was loaded into a real kernel and saved back: our text must match it exactly, both
    ways, except for the rules the capture script leaves out (two of the three ND types, DNS over TCP)."""
    live = S.live_state(fixture("managed-%s.%s" % (backend, suffix))).managed
    want = R.desired_state(policy(dhcp=False), RESOLVED, family)  # the fixture predates the DHCP rules
    saved = dict(live.chains)
    assert sorted(saved) == sorted(name for name, rules in want.chains)
    abbreviated = set(rule for rule in dict(want.chains)["AGENTGUARD-ALLOW"]
                      if "--icmpv6-type 133 " in rule or "--icmpv6-type 136 " in rule or "-p tcp -m tcp --dport 53 " in rule)
    assert len(abbreviated) == (3 if family == "ipv6" else 1)
    for name, rules in want.chains:
        assert list(saved[name]) == [rule for rule in rules if rule not in abbreviated], name
    assert want.policy == "ACCEPT"  # users scope leaves other users' default alone
    assert want.jumps == live.jumps


def test_host_scope_enforce_drops_by_policy():
    state = R.desired_state(policy(scope="host", users=[], deny_action="drop"), RESOLVED, "ipv4")
    chains = dict(state.chains)
    assert state.policy == "DROP"
    assert chains["AGENTGUARD-EGRESS"] == ("-j AGENTGUARD-ALLOW",)
    assert chains["AGENTGUARD-DENY"][-1] == "-j DROP"
    assert chains["AGENTGUARD-ALLOW"][:2] == ("-o lo -j ACCEPT", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")


def test_audit_mode_logs_and_returns():
    state = R.desired_state(policy(scope="host", users=[], mode="audit"), RESOLVED, "ipv6")
    assert state.policy == "ACCEPT"
    assert dict(state.chains)["AGENTGUARD-DENY"] == (
        '-m limit --limit 10/min --limit-burst 20 -j LOG --log-prefix "[EGRESS-DENIED] " --log-uid', "-j RETURN")


def test_log_rule_comes_before_deny_and_is_separate():
    deny = dict(R.desired_state(policy(), RESOLVED, "ipv4").chains)["AGENTGUARD-DENY"]
    assert "-j LOG" in deny[0] and "limit" in deny[0]
    assert all("limit" not in rule for rule in deny[1:])


def test_small_destination_uses_rules_large_uses_sets():
    sets = R.desired_sets(policy(), RESOLVED)
    assert sorted(sets) == ["ag4-cdn", "ag6-cdn"]
    allow = dict(R.desired_state(policy(), RESOLVED, "ipv4", sets).chains)["AGENTGUARD-ALLOW"]
    assert sum("agentguard: cdn" in r for r in allow) == 1
    assert sum("agentguard: inference-api" in r for r in allow) == 1


def test_a_list_of_addresses_is_one_set_per_family_above_the_threshold():
    v4 = ["198.18.16.%d" % i for i in range(1, 11)]
    few6 = ["fd00:a9e:16::1", "fd00:a9e:17::/64"]
    p = policy(allow=[dict(name="pool", host=v4 + few6, ports=[443, 8443])])
    resolved = {"pool": {"ipv4": [n + "/32" for n in v4], "ipv6": ["fd00:a9e:16::1/128", "fd00:a9e:17::/64"]}}
    sets = R.desired_sets(p, resolved)
    assert sorted(sets) == ["ag4-pool"] and sets["ag4-pool"].members == tuple(n + "/32" for n in v4)
    allow4 = dict(R.desired_state(p, resolved, "ipv4", sets).chains)["AGENTGUARD-ALLOW"]
    pool4 = [r for r in allow4 if "agentguard: pool" in r]
    assert len(pool4) == 2 and all("--match-set ag4-pool dst" in r for r in pool4)
    # Two IPv6 networks: under the threshold, a rule per network and port.
    allow6 = dict(R.desired_state(p, resolved, "ipv6", sets).chains)["AGENTGUARD-ALLOW"]
    assert sum("agentguard: pool" in r for r in allow6) == 4 and not any("match-set" in r for r in allow6)


def test_dns_only_to_resolvers_of_the_family():
    allow = dict(R.desired_state(policy(), RESOLVED, "ipv4").chains)["AGENTGUARD-ALLOW"]
    dns = [r for r in allow if "--dport 53 " in r]
    assert dns == [
        '-d 198.18.0.53/32 -p udp -m udp --dport 53 -m conntrack --ctstate NEW -m comment --comment "agentguard: dns" -j ACCEPT',
        '-d 198.18.0.53/32 -p tcp -m tcp --dport 53 -m conntrack --ctstate NEW -m comment --comment "agentguard: dns" -j ACCEPT',
    ]


def test_family_not_listed_is_locked_down_not_opened():
    state = R.desired_state(policy(families=["ipv4"]), RESOLVED, "ipv6")
    allow = dict(state.chains)["AGENTGUARD-ALLOW"]
    assert not any("agentguard: inference-api" in r or "--dport 53" in r for r in allow)
    assert allow[-1] == "-j AGENTGUARD-DENY"


def test_absent_wants_nothing():
    state = R.desired_state(policy(state="absent"), {}, "ipv4")
    assert state == S.ManagedState("ACCEPT", (), ())
    assert R.desired_sets(policy(state="absent"), RESOLVED) == {}


def test_persistent_payload_keeps_other_policies():
    state = R.desired_state(policy(scope="host", users=[]), RESOLVED, "ipv4")
    text = R.render_persistent(state, {"INPUT": "DROP", "FORWARD": "DROP", "OUTPUT": "ACCEPT"})
    lines = text.splitlines()
    assert lines[:4] == ["*filter", ":INPUT DROP [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT DROP [0:0]"]
    assert "-A OUTPUT -j AGENTGUARD-EGRESS" in lines and lines[-1] == "COMMIT"
    # What we persist parses back to exactly the state we enforce.
    assert S.live_state(text).managed == state


def test_transaction_none_when_equal():
    state = R.desired_state(policy(), RESOLVED, "ipv4")
    assert R.render_transaction(state, state, 3) is None


def test_transaction_from_scratch():
    want = R.desired_state(policy(scope="host", users=[]), RESOLVED, "ipv4")
    text = R.render_transaction(S.ManagedState("ACCEPT", (), ()), want, 2)
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines[1] == ":OUTPUT DROP" and lines[-1] == "COMMIT"
    assert "-I OUTPUT 1 -j AGENTGUARD-EGRESS" in lines
    assert not any(line.startswith("-D") or line.startswith("-X") for line in lines)


def test_transaction_removes_obsolete_chain_and_moves_jump():
    have = S.ManagedState("DROP", ((3, "-j AGENTGUARD-EGRESS"),),
                          (("AGENTGUARD-EGRESS", ("-j AGENTGUARD-OLD",)), ("AGENTGUARD-OLD", ("-j DROP",))))
    want = R.desired_state(policy(scope="host", users=[]), RESOLVED, "ipv4")
    lines = R.render_transaction(have, want, 3).splitlines()
    assert ":OUTPUT DROP" not in lines  # policy unchanged: not restated, counters kept
    assert ":AGENTGUARD-OLD - [0:0]" in lines and lines[-2] == "-X AGENTGUARD-OLD"
    assert lines.index("-D OUTPUT -j AGENTGUARD-EGRESS") < lines.index("-I OUTPUT 1 -j AGENTGUARD-EGRESS")


def test_transaction_back_to_absent():
    have = R.desired_state(policy(), RESOLVED, "ipv4")
    lines = R.render_transaction(have, S.ManagedState("ACCEPT", (), ()), 0).splitlines()
    assert "-D OUTPUT -j AGENTGUARD-EGRESS" in lines
    assert [l for l in lines if l.startswith("-X")] == ["-X AGENTGUARD-ALLOW", "-X AGENTGUARD-DENY", "-X AGENTGUARD-EGRESS"]


def test_rollback_transaction_clamps_jump_position():
    old = S.ManagedState("ACCEPT", ((5, "-j AGENTGUARD-EGRESS"),), (("AGENTGUARD-EGRESS", ()),))
    lines = R.render_transaction(S.ManagedState("ACCEPT", (), ()), old, 1).splitlines()
    assert "-I OUTPUT 2 -j AGENTGUARD-EGRESS" in lines


def test_sets_update_creates_and_swaps():
    want = R.desired_sets(policy(), RESOLVED)
    text, created, changed = R.render_sets_update({}, want)
    assert created == ["ag4-cdn", "ag6-cdn"] and changed == []
    assert "create ag4-cdn hash:net family inet hashsize 1024 maxelem 65536" in text.splitlines()
    have = dict(want)
    have["ag4-cdn"] = have["ag4-cdn"]._replace(members=("198.18.4.1/32",))
    text, created, changed = R.render_sets_update(have, want)
    assert created == [] and changed == ["ag4-cdn"]
    lines = text.splitlines()
    assert lines[0].startswith("create agt4-cdn ") and "swap agt4-cdn ag4-cdn" in lines and lines[-1] == "destroy agt4-cdn"


def test_sets_persistent_and_maxelem_grows():
    big = {"ipv4": ["10.%d.%d.0/24" % (i // 256, i % 256) for i in range(40000)], "ipv6": []}
    sets = R.desired_sets(policy(allow=[dict(name="big", host="big.example.com")]), {"big": big})
    text = R.render_sets_persistent(sets)
    assert text.splitlines()[0] == "create ag4-big hash:net family inet hashsize 1024 maxelem 131072"
    assert len(text.splitlines()) == 40001


@given(st.lists(st.ip_addresses(v=4).map(str), min_size=0, max_size=30, unique=True), st.randoms())
def test_rendering_is_deterministic_for_any_answer_order(addresses, rnd):
    shuffled = list(addresses)
    rnd.shuffle(shuffled)
    resolved = {"inference-api": {"ipv4": addresses, "ipv6": []}, "cdn": {"ipv4": [], "ipv6": []}}
    other = {"inference-api": {"ipv4": shuffled, "ipv6": []}, "cdn": {"ipv4": [], "ipv6": []}}
    scoped = policy(scope_networks=["docker0"])
    # Every rule, in order, and the sets and the forward path: equal, not merely the same rules.
    assert R.desired_state(scoped, resolved, "ipv4") == R.desired_state(scoped, other, "ipv4")
    assert R.desired_hooks(scoped, resolved, "ipv4") == R.desired_hooks(scoped, other, "ipv4")
    assert R.desired_sets(scoped, resolved) == R.desired_sets(scoped, other)


def filtering(**over):
    params = dict(allow=[dict(name="inference-api", host="api.openclaw.security"), dict(name="lit", host="198.18.0.77")],
                  dns_servers=["198.18.0.53", "fd00:a9e:1::53"], dns_mode="filtering", dns_resolver_user="dnsmasq",
                  dns_set_timeout=120, resolvers=["127.0.0.1"])
    params.update(over)
    return validated_policy(params, lambda name: {"dnsmasq": 108, "agent": 1000}[name])


def test_filtering_dns_only_from_the_resolver_user():
    allow = dict(R.desired_state(filtering(), RESOLVED, "ipv4").chains)["AGENTGUARD-ALLOW"]
    dns = [r for r in allow if "--dport 53 " in r]
    assert dns == [
        '-d 198.18.0.53/32 -p udp -m udp --dport 53 -m owner --uid-owner 108 -m conntrack --ctstate NEW '
        '-m comment --comment "agentguard: dns via dnsmasq" -j ACCEPT',
        '-d 198.18.0.53/32 -p tcp -m tcp --dport 53 -m owner --uid-owner 108 -m conntrack --ctstate NEW '
        '-m comment --comment "agentguard: dns via dnsmasq" -j ACCEPT',
    ]


def test_filtering_names_use_timed_sets_even_for_one_address():
    policy = filtering()
    resolved = {"inference-api": {"ipv4": ["198.18.0.10"], "ipv6": []}, "lit": {"ipv4": ["198.18.0.77/32"], "ipv6": []}}
    sets = R.desired_sets(policy, resolved)
    assert sorted(sets) == ["ag4-inference-api", "ag6-inference-api"]  # a literal address needs no resolver
    assert sets["ag4-inference-api"].options == {"timeout": "120"} and sets["ag6-inference-api"].members == ()
    text = R.render_sets_persistent(sets)
    assert "create ag4-inference-api hash:net family inet hashsize 1024 maxelem 65536 timeout 120" in text
    allow = dict(R.desired_state(policy, resolved, "ipv4", sets).chains)["AGENTGUARD-ALLOW"]
    assert any("--match-set ag4-inference-api dst" in r for r in allow)
    assert any(r.startswith("-d 198.18.0.77/32 ") for r in allow)


def test_dynamic_set_members_are_not_drift():
    want = R.desired_sets(filtering(), RESOLVED)["ag4-inference-api"]
    learned = want._replace(members=("198.18.0.10/32", "198.18.0.99/32"), options={"timeout": "120", "maxelem": "65536"})
    assert R.sets_equal(learned, want)
    assert not R.sets_equal(learned._replace(options={"timeout": "300"}), want)
    text, created, changed = R.render_sets_update({"ag4-inference-api": learned}, {"ag4-inference-api": want})
    assert (text, created, changed) == ("", [], [])


@pytest.mark.parametrize("over,fragment", [
    (dict(dns_resolver_user="nosuchuser"), "dns_resolver_user: user 'nosuchuser' does not exist"),
    (dict(dns_set_timeout=5), "dns_set_timeout: 5 is out of range (20 to 2147483)"),
    (dict(dns_mode="recursive"), "dns_mode: 'recursive' is not one of pinned, filtering"),
    (dict(resolvers=["localhost"]), "resolvers[0]: 'localhost' is not an IP address"),
    (dict(allow=[dict(name="x", host="a.example", subdomains="maybe")]), "allow[0].subdomains: 'maybe' is not a boolean"),
    (dict(allow=[dict(name="x", host="10.0.0.0/8", subdomains=True)]), "allow[0].subdomains: true only applies to a DNS name"),
])
def test_filtering_options_are_validated(over, fragment):
    with pytest.raises(P.PolicyError) as info:
        filtering(**over)
    assert any(fragment in e for e in info.value.errors), info.value.errors
