"""Ordering and rollback of the apply engine, with a recording command runner.

The real kernel is exercised by tests/netns; here we check the exact
sequence of commands and what is run to undo a failure.
"""
import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _apply as A

from .conftest import Runner, fixture, nf, plan_for


def fresh():
    return {"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")}


def test_apply_order_sets_test_then_commit():
    runner = Runner(fresh())
    plan = plan_for(runner)
    assert plan.changed and plan.sets_created == ["ag4-cdn", "ag6-cdn"]
    runner.calls = []
    assert A.apply_plan(nf(runner), plan) == []
    assert runner.names() == [
        "ipset restore", "iptables-restore --test", "ip6tables-restore --test",
        "iptables-restore", "ip6tables-restore",
    ]
    assert all("--noflush" in c[0] and "--wait" in c[0] for c in runner.calls[1:])


def test_ipv6_failure_restores_ipv4_and_sets():
    runner = Runner(fresh(), fail_on=lambda name, argv, n: name == "ip6tables-restore" and "--test" not in argv)
    plan = plan_for(runner)
    runner.calls = []
    runner.ipset = plan.sets_payload  # what `ipset save` shows once the sets were created
    with pytest.raises(A.ApplyError) as info:
        A.apply_plan(nf(runner), plan)
    assert "previous rules were restored" in str(info.value) and not info.value.rollback_errors
    names = runner.names()
    assert names[:5] == ["ipset restore", "iptables-restore --test", "ip6tables-restore --test",
                         "iptables-restore", "ip6tables-restore"]
    # The undo: IPv4 back to its previous managed state (nothing), then the new sets destroyed.
    undo_v4 = runner.calls[5]
    assert undo_v4[0][0] == "iptables-restore"
    assert "-D OUTPUT -j AGENTGUARD-EGRESS" in undo_v4[1] and ":OUTPUT ACCEPT" in undo_v4[1]
    assert names[6:] == ["ipset save", "ipset restore"]
    assert runner.calls[-1][1] == "destroy ag4-cdn\ndestroy ag6-cdn\n"


def test_validation_failure_changes_no_rules():
    runner = Runner(fresh(), fail_on=lambda name, argv, n: name == "ip6tables-restore" and "--test" in argv)
    plan = plan_for(runner)
    runner.calls = []
    with pytest.raises(A.ApplyError):
        A.apply_plan(nf(runner), plan)
    committed = [c for c in runner.calls if "restore" in c[0][0] and "--test" not in c[0] and "iptables" in c[0][0]]
    assert committed == []


def test_rollback_failure_is_reported():
    def fail(name, argv, count):
        return name == "ip6tables-restore" and "--test" not in argv or (name == "iptables-restore" and count >= 3)
    runner = Runner(fresh(), fail_on=fail)
    plan = plan_for(runner)
    runner.calls = []
    with pytest.raises(A.ApplyError) as info:
        A.apply_plan(nf(runner), plan)
    assert info.value.rollback_errors and "ROLLBACK ALSO FAILED" in str(info.value)


def test_idempotent_plan_has_nothing_to_do():
    saves = {"ipv4": fixture("managed-nft.v4"), "ipv6": fixture("managed-nft.v6")}
    runner = Runner(saves)
    first = plan_for(runner)
    # Feed the plan's own persisted payload back as the live state: nothing left to change.
    runner2 = Runner(first.rules, ipset=first.sets_payload)
    second = plan_for(runner2)
    assert not second.changed
    assert all(second.transactions[f] is None for f in ("ipv4", "ipv6"))
    assert second.changes == {"ipv4": {"added": [], "removed": []}, "ipv6": {"added": [], "removed": []}}


def test_obsolete_sets_destroyed_after_rules():
    saves = {"ipv4": fixture("managed-nft.v4"), "ipv6": fixture("managed-nft.v6")}
    runner = Runner(saves, ipset=fixture("ipset-nft.save"))
    plan = plan_for(runner, allow=[dict(name="inference-api", host="api.openclaw.security")])
    assert plan.sets_obsolete == ["ag4-cdn", "ag6-cdn"]
    runner.calls = []
    A.apply_plan(nf(runner), plan)
    assert runner.names()[-1] == "ipset restore"
    assert runner.calls[-1][1] == "destroy ag4-cdn\ndestroy ag6-cdn\n"


def test_leftover_temp_set_is_cleaned_first():
    runner = Runner(fresh(), ipset="create agt4-cdn hash:net family inet hashsize 1024 maxelem 65536\n")
    plan = plan_for(runner)
    assert plan.sets_update.startswith("destroy agt4-cdn\n")


def test_filtering_plan_is_stable_while_the_resolver_learns():
    runner = Runner(fresh())
    params = dict(dns_mode="filtering", dns_resolver_user="dnsmasq", resolvers=["127.0.0.1"], dns_set_timeout=60)
    first = plan_for(runner, **params)
    assert first.changed and sorted(first.desired_sets) == ["ag4-cdn", "ag4-inference-api", "ag6-cdn", "ag6-inference-api"]
    learned = first.sets_payload + "add ag4-inference-api 203.0.113.7 timeout 42\n"
    second = plan_for(Runner(first.rules, ipset=learned), **params)
    assert not second.changed and second.sets_update == ""
    assert second.changes["ipv4"] == {"added": [], "removed": []}


def test_unreadable_sets_during_rollback_are_reported_not_raised():
    # The undo of the sets reads `ipset save`; output it cannot parse must not cut the rollback short.
    runner = Runner(fresh(), fail_on=lambda name, argv, n: name == "ip6tables-restore" and "--test" not in argv)
    plan = plan_for(runner)
    runner.calls = []
    runner.ipset = "create ag4-cdn hash:net family inet\nadd ag4-cdn not-an-address\n"
    with pytest.raises(A.ApplyError) as info:
        A.apply_plan(nf(runner), plan)
    assert info.value.rollback_errors == ["cannot read the sets to put them back: ipset line 2: bad member "
                                          "'add ag4-cdn not-an-address'"]
    # The IPv4 rules were still put back before the sets were looked at.
    assert any(argv[0] == "iptables-restore" and "-D OUTPUT -j AGENTGUARD-EGRESS" in (data or "")
               for argv, data in runner.calls)
