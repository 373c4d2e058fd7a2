"""The forward path: container/VM networks (scope_networks) judged in mangle FORWARD, and the
filtering-mode DNS redirect in nat PREROUTING.

The fixtures forward-{nft,legacy}.v{4,6} are what each real backend printed after loading exactly
what the renderer produced, beside Docker-like foreign state (tests/unit/fixtures/capture-forward.sh).
"""
import sys

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _apply
from ansible_collections.agentguard.hardening.plugins.module_utils import _diff as D
from ansible_collections.agentguard.hardening.plugins.module_utils import _plan as A
from ansible_collections.agentguard.hardening.plugins.module_utils import _policy as P
from ansible_collections.agentguard.hardening.plugins.module_utils import _render as R
from ansible_collections.agentguard.hardening.plugins.module_utils import _state as S

from .conftest import FIXTURES, Runner, fixture, nf

sys.path.insert(0, FIXTURES)
import forward_policy  # noqa: E402  (the fixtures' policy, shared with capture-forward.sh)

RESOLVED = {"api": {"ipv4": ["198.18.0.10"], "ipv6": ["fd00:a9e:1::10"]}}


def policy(**over):
    params = dict(allow=[dict(name="api", host="api.test")], dns_servers=["198.18.0.53", "fd00:a9e:1::53"],
                  scope_networks=["docker0", "br-+", "198.19.20.0/24", "fd00:d0c:20::/64"])
    params.update(over)
    return P.build_policy(params, lambda name: 0)


def chain(hooks, table, name):
    return dict(hooks[table].chains)[name]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("family,suffix", [("ipv4", "v4"), ("ipv6", "v6")])
def test_live_hooks_read_back_exactly_what_was_rendered(backend, family, suffix):
    live = S.live_state(fixture("forward-%s.%s" % (backend, suffix)))
    want = R.desired_hooks(forward_policy.policy(), forward_policy.RESOLVED, family)
    assert live.hooks["mangle"].managed == want["mangle"]
    assert live.hooks["nat"].managed == want["nat"]
    # Docker's and the MSS clamp's rules are not ours, and stay counted as foreign.
    assert live.hooks["mangle"].foreign_rules == 1 and live.hooks["nat"].foreign_rules == 1
    # The filter table too: service entries (owner matches) and DHCP read back as rendered, and
    # Docker's filter state is not ours.
    assert live.managed == R.desired_state(forward_policy.policy(), forward_policy.RESOLVED, family)
    assert live.policies["FORWARD"] == "DROP"


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_plan_against_the_loaded_state_changes_nothing(backend):
    live = {"ipv4": S.live_state(fixture("forward-%s.v4" % backend)),
            "ipv6": S.live_state(fixture("forward-%s.v6" % backend))}
    sets = forward_policy.plan().desired_sets  # as `ipset save` shows them once created
    plan = A.make_plan(forward_policy.policy(), forward_policy.RESOLVED, ["ipv4", "ipv6"], live, sets)
    assert not plan.changed and plan.transactions == {"ipv4": None, "ipv6": None}
    assert plan.changes["ipv4"] == {"added": [], "removed": []}


def test_dispatch_uses_goto_and_each_cidr_only_in_its_family():
    for family, own, other in (("ipv4", "-s 198.19.20.0/24", "fd00:d0c:20::/64"),
                               ("ipv6", "-s fd00:d0c:20::/64", "198.19.20.0/24")):
        rules = chain(R.desired_hooks(policy(), RESOLVED, family), "mangle", "AGENTGUARD-FORWARD")
        assert rules[0] == '-i docker0 -m comment --comment "agentguard: network docker0" -g AGENTGUARD-FWD-ALLOW'
        assert rules[1].startswith("-i br-+ ")
        assert rules[2].startswith(own) and rules[2].endswith("-g AGENTGUARD-FWD-ALLOW")
        assert len(rules) == 3 and not any(other in rule for rule in rules)


def test_forward_allow_chain_in_pinned_mode():
    rules = chain(R.desired_hooks(policy(), RESOLVED, "ipv4"), "mangle", "AGENTGUARD-FWD-ALLOW")
    assert rules == (
        "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        '-d 224.0.0.0/24 -m comment --comment "agentguard: link-local" -j RETURN',
        '-d 255.255.255.255/32 -m comment --comment "agentguard: link-local" -j RETURN',
        '-o docker0 -m comment --comment "agentguard: between covered networks" -j RETURN',
        '-o br-+ -m comment --comment "agentguard: between covered networks" -j RETURN',
        '-d 198.19.20.0/24 -m comment --comment "agentguard: between covered networks" -j RETURN',
        '-d 198.18.0.53/32 -p udp -m udp --dport 53 -m conntrack --ctstate NEW -m comment --comment "agentguard: dns" -j RETURN',
        '-d 198.18.0.53/32 -p tcp -m tcp --dport 53 -m conntrack --ctstate NEW -m comment --comment "agentguard: dns" -j RETURN',
        '-d 198.18.0.10/32 -p tcp -m tcp --dport 443 -m conntrack --ctstate NEW -m comment --comment "agentguard: api" -j RETURN',
        "-j AGENTGUARD-FWD-DENY",
    )
    # Never an owner match (invalid in FORWARD) and never ACCEPT (that would skip the runtime's rules).
    assert not any("owner" in rule or "ACCEPT" in rule for rule in rules)
    assert R.desired_hooks(policy(), RESOLVED, "ipv4")["nat"] == S.EMPTY_HOOK


def test_forward_deny_logs_with_the_prefix_and_drops_even_with_reject():
    hooks = R.desired_hooks(policy(deny_action="reject"), RESOLVED, "ipv6")
    assert chain(hooks, "mangle", "AGENTGUARD-FWD-DENY") == (
        '-m limit --limit 10/min --limit-burst 20 -j LOG --log-prefix "[EGRESS-DENIED] "', "-j DROP")
    audit = R.desired_hooks(policy(mode="audit"), RESOLVED, "ipv6")
    assert chain(audit, "mangle", "AGENTGUARD-FWD-DENY")[-1] == "-j RETURN"


def test_filtering_mode_redirects_dns_and_opens_no_upstream_dns():
    hooks = R.desired_hooks(policy(dns_mode="filtering", dns_resolver_user="0"), RESOLVED, "ipv6")
    allow = chain(hooks, "mangle", "AGENTGUARD-FWD-ALLOW")
    assert not any("--dport 53" in rule for rule in allow)
    assert hooks["nat"].jumps == ((0, "-j AGENTGUARD-DNS"),)
    redirect = chain(hooks, "nat", "AGENTGUARD-DNS")
    assert len(redirect) == 6 and all(rule.endswith("-j REDIRECT --to-ports 53") for rule in redirect)
    assert redirect[4].startswith("-s fd00:d0c:20::/64 -p udp -m udp --dport 53 ")


def test_a_family_not_opened_is_still_locked_down_for_containers():
    rules = chain(R.desired_hooks(policy(families=["ipv4"]), RESOLVED, "ipv6"), "mangle", "AGENTGUARD-FWD-ALLOW")
    assert rules[-1] == "-j AGENTGUARD-FWD-DENY" and not any("dport" in rule for rule in rules)


def test_no_networks_no_forward_path_and_scope_none_no_filter_rules():
    assert R.desired_hooks(policy(scope_networks=[]), RESOLVED, "ipv4") == dict((t, S.EMPTY_HOOK) for t in S.HOOKS)
    assert R.desired_state(policy(scope="none"), RESOLVED, "ipv4") == S.ManagedState("ACCEPT", (), ())
    assert R.desired_state(policy(), RESOLVED, "ipv4").policy == "DROP"


def test_transaction_inserts_first_and_absent_removes_everything():
    live = S.live_state(fixture("forward-nft.v4"))
    empty = {"mangle": S.LiveHook(S.EMPTY_HOOK, 1), "nat": S.LiveHook(S.EMPTY_HOOK, 1)}
    text = A.family_transaction(live.managed, empty, live.managed, R.desired_hooks(policy(), RESOLVED, "ipv4"), 0)
    assert "*mangle\n" in text and "-I FORWARD 1 -j AGENTGUARD-FORWARD\n" in text and "*nat" not in text
    assert "*filter" not in text  # nothing of ours changes there
    gone = A.family_transaction(live.managed, live.hooks, live.managed,
                                {"mangle": S.EMPTY_HOOK, "nat": S.EMPTY_HOOK}, 0)
    assert "-D FORWARD -j AGENTGUARD-FORWARD" in gone and "-X AGENTGUARD-FWD-ALLOW" in gone
    assert "-D PREROUTING -j AGENTGUARD-DNS" in gone and "-X AGENTGUARD-DNS" in gone
    # Foreign chains and rules are never named.
    assert "DOCKER" not in gone and "TCPMSS" not in gone


def test_jump_moved_down_by_someone_is_put_back_first():
    text = fixture("forward-nft.v4").replace(
        "-A FORWARD -j AGENTGUARD-FORWARD\n-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu\n",
        "-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu\n-A FORWARD -j AGENTGUARD-FORWARD\n")
    live = S.live_state(text)
    assert live.hooks["mangle"].managed.jumps == ((1, "-j AGENTGUARD-FORWARD"),)
    plan = A.make_plan(forward_policy.policy(), forward_policy.RESOLVED, ["ipv4"], {"ipv4": live}, {})
    assert plan.changed
    assert "-D FORWARD -j AGENTGUARD-FORWARD\n-I FORWARD 1 -j AGENTGUARD-FORWARD\n" in plan.transactions["ipv4"]


def test_persistent_rules_carry_the_hook_tables_only_when_used():
    plan = forward_policy.plan()
    rules = plan.rules["ipv4"]
    assert rules.count("*filter") == rules.count("*mangle") == rules.count("*nat") == 1
    assert ":FORWARD ACCEPT [0:0]\n" in rules.split("*mangle", 1)[1]
    assert "-A FORWARD -j AGENTGUARD-FORWARD\n" in rules and "-A PREROUTING -j AGENTGUARD-DNS\n" in rules
    without = A.make_plan(policy(scope_networks=[]), RESOLVED, ["ipv4"], {"ipv4": S.live_state("")}, {})
    assert "*mangle" not in without.rules["ipv4"] and "*nat" not in without.rules["ipv4"]


def test_diff_lines_name_the_table():
    hooks = R.desired_hooks(policy(), RESOLVED, "ipv4")
    lines = D.hook_lines(hooks)
    assert lines[0] == "-t mangle -I FORWARD 1 -j AGENTGUARD-FORWARD"
    assert "-t mangle -N AGENTGUARD-FWD-DENY" in lines
    changes = D.family_changes(S.ManagedState("ACCEPT", (), ()), S.ManagedState("ACCEPT", (), ()), {}, {},
                               {"mangle": S.EMPTY_HOOK}, hooks)
    assert changes["removed"] == [] and changes["added"] == lines


def test_rollback_puts_the_forward_path_back():
    saves = {"ipv4": fixture("forward-nft.v4"), "ipv6": fixture("forward-nft.v6")}
    runner = Runner(saves, fail_on=lambda name, argv, n: name == "ip6tables-restore" and "--test" not in argv)
    live, live_sets = A.read_live(nf(runner), ["ipv4", "ipv6"])
    assert runner.calls[0][0] == ["iptables-save"]  # every table in one call
    plan = A.make_plan(policy(state="absent"), {}, ["ipv4", "ipv6"], live, live_sets)
    runner.calls = []
    with pytest.raises(_apply.ApplyError):
        _apply.apply_plan(nf(runner), plan)
    undo = [data for argv, data in runner.calls if argv[0] == "iptables-restore" and "--test" not in argv][-1]
    assert "-I FORWARD 1 -j AGENTGUARD-FORWARD" in undo and "-I PREROUTING 1 -j AGENTGUARD-DNS" in undo
    assert "-A AGENTGUARD-FWD-DENY -j DROP" in undo


def test_service_entries_are_owner_matched_and_never_open_to_containers():
    policy_ = forward_policy.policy()
    allow = dict(R.desired_state(policy_, forward_policy.RESOLVED, "ipv4").chains)["AGENTGUARD-ALLOW"]
    time_rules = [rule for rule in allow if '"agentguard: time"' in rule]
    assert time_rules == [
        '-d 198.18.0.123/32 -p udp -m udp --dport %d -m owner --uid-owner %d -m conntrack --ctstate NEW '
        '-m comment --comment "agentguard: time" -j ACCEPT' % (port, uid) for port in (123, 4460) for uid in (0, 105)]
    for family in ("ipv4", "ipv6"):
        forward = chain(R.desired_hooks(policy_, forward_policy.RESOLVED, family), "mangle", "AGENTGUARD-FWD-ALLOW")
        assert not any("time" in rule or "mirror" in rule or "owner" in rule for rule in forward)
        assert any("rates" in rule for rule in forward) == (family == "ipv4")


def test_dhcp_rules_from_the_client_ports_only_and_kept_in_a_locked_down_family():
    v4 = dict(R.desired_state(policy(), RESOLVED, "ipv4").chains)["AGENTGUARD-ALLOW"]
    assert [rule for rule in v4 if "dhcp" in rule] == [
        '-p udp -m udp --sport 68 --dport 67 -m conntrack --ctstate NEW -m comment --comment "agentguard: dhcp" -j ACCEPT']
    v6 = dict(R.desired_state(policy(families=["ipv4"]), RESOLVED, "ipv6").chains)["AGENTGUARD-ALLOW"]
    assert [rule.split(" -m conntrack")[0] for rule in v6 if "dhcp" in rule] == [
        "-d ff02::1:2/128 -p udp -m udp --sport 546 --dport 547", "-d fe80::/10 -p udp -m udp --sport 546 --dport 547"]
    assert v6[-1] == "-j AGENTGUARD-DENY"
    off = dict(R.desired_state(policy(dhcp=False), RESOLVED, "ipv6").chains)["AGENTGUARD-ALLOW"]
    assert not any("dhcp" in rule or "547" in rule for rule in off)
