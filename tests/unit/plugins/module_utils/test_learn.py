"""The recorder (learn): its rules and sets as a real kernel saved them, its set parsing, the joins and
the proposal (names over addresses, users attributed, flagged and withheld destinations)."""
import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils._options import validated_policy
from ansible_collections.agentguard.hardening.plugins.filter.egress_learn_proposal import egress_learn_proposal
from ansible_collections.agentguard.hardening.plugins.module_utils import _learn as L
from ansible_collections.agentguard.hardening.plugins.module_utils import _policy as P
from ansible_collections.agentguard.hardening.plugins.module_utils import _render as R
from ansible_collections.agentguard.hardening.plugins.module_utils import _state as S

from .conftest import fixture

RESOLVED = {"inference-api": {"ipv4": ["198.18.0.20"]}}
HOOK_POLICIES = {"INPUT": "ACCEPT", "FORWARD": "ACCEPT", "OUTPUT": "ACCEPT"}


def policy(**over):
    params = dict(allow=[dict(name="inference-api", host="198.18.0.20")], dns_servers=["198.18.0.53", "fd00:a9e:1::53"],
                  mode="audit", scope="users", users=["1000"], learn=True, learn_users=["100"], scope_networks=["docker0"])
    params.update(over)
    return validated_policy(params, None)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("family,suffix", [("ipv4", "v4"), ("ipv6", "v6")])
def test_recorder_rules_equal_what_the_kernel_saved(backend, family, suffix):
    """capture-learn.sh loaded the rendered rules into a real kernel: filter and mangle match byte for byte."""
    text = fixture("learn-%s.%s" % (backend, suffix))
    live = S.live_state(text)
    want = R.desired_state(policy(), RESOLVED, family)
    assert dict(live.managed.chains) == dict(want.chains)
    hooks = R.desired_hooks(policy(), RESOLVED, family)
    assert live.hooks["mangle"].managed == hooks["mangle"]
    prefix = "ag4-" if family == "ipv4" else "ag6-"
    learn = dict(want.chains)["AGENTGUARD-LEARN"]
    assert learn[-2:] == ("-m set --match-set %s_learn dst,dst" % prefix, "-j SET --add-set %s_learn dst,dst" % prefix)
    assert "-m owner --uid-owner 100 -j RETURN" in learn and "-m owner --uid-owner 1000 -j RETURN" in learn
    assert dict(want.chains)["AGENTGUARD-DENY"][0] == "-j AGENTGUARD-LEARN"
    assert dict(hooks["mangle"].chains)["AGENTGUARD-FWD-DENY"][:2] == (
        "-m set --match-set %s_learn-fwd dst,dst" % prefix, "-j SET --add-set %s_learn-fwd dst,dst" % prefix)


def test_no_recorder_without_learn_or_in_a_family_not_opened():
    off = policy(learn=False)
    assert "AGENTGUARD-LEARN" not in dict(R.desired_state(off, RESOLVED, "ipv4").chains)
    assert not any("_learn" in name for name in R.desired_sets(off, RESOLVED))
    v4 = policy(families=["ipv4"])
    assert "AGENTGUARD-LEARN" not in dict(R.desired_state(v4, RESOLVED, "ipv6").chains)
    assert sorted(R.desired_sets(v4, RESOLVED)) == ["ag4-_learn", "ag4-_learn-fwd", "ag4-_learn-u100", "ag4-_learn-u1000"]


def test_scope_host_records_the_rest_of_the_host_and_learn_users_apart():
    host = policy(scope="host", users=[], scope_networks=[])
    assert sorted(R.desired_sets(host, RESOLVED)) == ["ag4-_learn", "ag4-_learn-u100", "ag6-_learn", "ag6-_learn-u100"]


def test_sets_are_dynamic_and_bounded():
    sets = R.desired_sets(policy(learn_maxelem=500, learn_timeout=60), RESOLVED)
    text, created, changed = R.render_sets_update({}, sets)
    assert "create ag4-_learn hash:ip,port family inet hashsize 1024 maxelem 500 timeout 60 counters" in text
    live = S.parse_ipset_save(text + "add ag4-_learn 198.18.0.99,tcp:443 timeout 59 packets 3 bytes 180\n")
    assert live["ag4-_learn"].members == ("198.18.0.99,tcp:443",)
    # Members are not state: a set holding them is equal; another bound is not (the set is recreated).
    assert R.sets_equal(live["ag4-_learn"], sets["ag4-_learn"])
    assert not R.sets_equal(live["ag4-_learn"], R.desired_sets(policy(learn_maxelem=501, learn_timeout=60), RESOLVED)["ag4-_learn"])


@pytest.mark.parametrize("field,value", [("learn_maxelem", 0), ("learn_timeout", 2147484), ("learn", "maybe"),
                                         ("learn_users", ["no such user!"])])
def test_bad_learn_options_are_named(field, value):
    with pytest.raises(P.PolicyError) as exc:
        policy(**{field: value})
    assert field in str(exc.value)


def test_parse_recorder_reads_a_real_save():
    sets, entries = L.parse_recorder(fixture("learn-ipset.save"), now=1_800_000_000)
    assert sets["ag4-_learn"]["full"] and sets["ag4-_learn"]["entries"] == 3
    assert sets["ag6-_learn-u100"]["bucket"] == "u100" and not sets["ag6-_learn-u100"]["full"]
    by = dict(((e["address"], e["protocol"], e["port"]), e) for e in entries)
    assert by[("198.18.9.2", "tcp", 443)]["count"] == 3
    assert by[("fd00:a9e:9::2", "udp", 123)]["family"] == "ipv6"
    assert by[("fd00:a9e:9::2", "ipv6-icmp", "port-unreachable")]["count"] == 1
    assert by[("198.18.9.2", "tcp", 443)]["first_seen"] == L._iso(1_800_000_000 - 1)


def test_names_come_from_the_resolver_the_gate_and_resolution_only():
    dns = L.dns_answers(["Dec 06 10:00:00 h dnsmasq[5]: 3 127.0.0.1/4000 reply api.test is 198.18.0.20",
                         "dnsmasq[5]: 4 127.0.0.1/4001 cached Fx.Test. is fd00:a9e:1::21",
                         "dnsmasq[5]: 4 127.0.0.1/4001 reply api.test is <CNAME>"])
    assert dns == [("api.test", "198.18.0.20"), ("fx.test", "fd00:a9e:1::21")]
    tls = L.gate_names([{"sni": "api.test", "upstream": "198.18.0.20:443"}, {"sni": "", "upstream": "198.18.0.1:443"},
                        {"sni": "v6.test", "upstream": "[fd00:a9e:1::20]:443"}])
    assert tls == [("api.test", "198.18.0.20"), ("v6.test", "fd00:a9e:1::20")]
    index = L.name_index({"dns": dns, "tls": tls, "resolved": L.resolved_names({"api.test": {"ipv4": ["198.18.0.20/32"]}})})
    assert index["198.18.0.20"] == {"api.test": ["dns", "resolved", "tls"]}


def record(address, port, bucket="host", names=None, count=1, protocol="tcp", host="h1", first="2026-12-06T10:00:00Z"):
    uid = int(bucket[1:]) if bucket.startswith("u") else None
    return {"address": address, "protocol": protocol, "port": port, "bucket": bucket, "count": count, "first_seen": first,
            "names": names or {}, "uid": uid, "user": {100: "_chrony", 1000: "agent"}.get(uid), "host": host}


def test_proposal_prefers_names_attributes_users_and_flags_the_rest():
    records = [
        record("198.18.0.20", 443, names={"api.test": ["dns"]}, count=5),
        record("198.18.0.21", 443, names={"fx.test": ["tls"]}, first="2026-12-06T09:00:00Z"),
        record("198.18.0.21", 443, host="h2", count=2),  # h2 had no name for it: the name from h1 is not reused
        record("198.18.0.123", 123, bucket="u100", names={"ntp.test": ["resolved"]}, protocol="udp"),
        record("198.18.0.124", 443, bucket="u1000", names={"x.test": ["dns"]}),  # uid above system_uid_max
        record("198.18.0.99", 443, count=3),
        record("198.18.0.53", 53, protocol="udp"), record("198.18.0.66", 53, protocol="udp"),
        record("198.18.0.67", 587), record("169.254.169.254", 80), record("fd00:ec2::254", 80),
    ]
    out = L.propose(records, dns_servers=["198.18.0.53"])
    allow = dict((e["host"], e) for e in out["allow"])
    assert sorted(allow) == ["api.test", "fx.test", "ntp.test", "x.test"]
    assert allow["api.test"]["ports"] == [443] and allow["api.test"]["seen"]["count"] == 5
    assert allow["ntp.test"] == dict(allow["ntp.test"], protocol="udp", users=["_chrony"], ports=[123])
    assert "users" not in allow["x.test"] and "users" not in allow["api.test"]
    assert allow["fx.test"]["seen"]["first_seen"] == "2026-12-06T09:00:00Z"
    assert [f["host"] for f in out["flagged"]] == ["198.18.0.21", "198.18.0.99"]
    assert dict((w["host"], w["reason"]) for w in out["withheld"]) == {
        "198.18.0.66": "dns", "198.18.0.67": "smtp", "169.254.169.254": "metadata", "fd00:ec2::254": "metadata"}
    # The trusted resolver's DNS is neither proposed (the policy already has it) nor withheld.
    assert "198.18.0.53" not in allow
    accepted = L.propose(records, dns_servers=["198.18.0.53"], accept=["198.18.0.99/32", "198.18.0.67"], accept_withheld=["smtp"])
    hosts = dict((e["host"], e) for e in accepted["allow"])
    assert hosts["198.18.0.99"]["flag"].startswith("nameless") and hosts["198.18.0.67"]["ports"] == [587]


def test_subdomains_only_in_filtering_mode_and_for_several_labels():
    records = [record("198.18.0.30", 443, names={"a.cdn.test": ["dns"]}), record("198.18.0.31", 443, names={"b.cdn.test": ["dns"]}),
               record("198.18.0.32", 443, names={"one.other.test": ["dns"]})]
    filtering = dict((e["host"], e) for e in L.propose(records, dns_mode="filtering")["allow"])
    assert filtering["cdn.test"]["subdomains"] is True and "subdomains" not in filtering["one.other.test"]
    pinned = dict((e["host"], e) for e in L.propose(records)["allow"])
    assert sorted(pinned) == ["a.cdn.test", "b.cdn.test", "one.other.test"]


def learned(entries):
    return {"changed": False, "entries": entries, "sets": {"ag4-_learn": {"entries": len(entries), "maxelem": 65536, "full": False}}}


def test_filter_merges_diffs_and_validates_with_the_role():
    current = [dict(name="inference-api", host="api.test", ports=[443])]
    entries = [dict(record("198.18.0.20", 8443, names={"api.test": ["resolved"]}), host=None),
               dict(record("198.18.0.22", 443, names={"fx.test": ["dns"]}), host=None),
               dict(record("198.18.0.99", 443), host=None)]
    for entry in entries:
        del entry["host"]
    out = egress_learn_proposal({"h1": {"learned": learned(entries), "allow": current, "dns_servers": ["198.18.0.53"]},
                                 "h2": {"learned": {"failed": True, "msg": "unreachable"}}}, generated="2026-12-06T11:00:00Z")
    assert out["errors"] == [] and out["unread"] == ["h2"]
    assert out["allow"][0] == dict(name="inference-api", host="api.test", ports=[443, 8443])
    assert out["allow"][1]["host"] == "fx.test" and "seen" not in out["allow"][1]
    assert out["diffs"]["h1"] == [{"host": "api.test", "protocol": "tcp", "ports": [8443], "new_entry": False},
                                  {"host": "fx.test", "protocol": "tcp", "ports": [443], "new_entry": True}]
    assert "198.18.0.99" not in [e["host"] for e in out["allow"]]
    assert "# FLAGGED, left out" in out["yaml"] and "198.18.0.99" in out["markdown"]
    import yaml
    assert yaml.safe_load(out["yaml"])["egress_allow"] == out["allow"]


def test_an_invalid_proposal_is_reported():
    entries = [record("198.18.0.20", 443, names={"api.test": ["dns"]})]
    out = egress_learn_proposal({"h1": {"learned": learned(entries), "allow": [], "dns_servers": []}})
    assert out["errors"] and out["errors"][0].startswith("egress_dns_servers")


def test_an_address_in_a_list_counts_as_allowed_and_its_list_is_not_widened():
    current = [dict(name="pool", host=["198.18.0.20", "198.18.0.21"], ports=[443]),
               dict(name="one", host="198.18.0.30", ports=[443])]
    seen = {"count": 1, "first_seen": "2026-12-06T11:00:00Z", "hosts": ["h1"]}
    proposal = [dict(name="addr-198.18.0.20", host="198.18.0.20", ports=[443, 8443], seen=seen),
                dict(name="addr-198.18.0.21", host="198.18.0.21", ports=[443], seen=seen),
                dict(name="addr-198.18.0.30", host="198.18.0.30", ports=[8443], seen=seen)]
    # 198.18.0.21:443 is allowed through the list; 198.18.0.20 lacks 8443 only.
    assert L.diff_host(current, proposal, "h1") == [
        {"host": "198.18.0.20", "protocol": "tcp", "ports": [8443], "new_entry": False},
        {"host": "198.18.0.30", "protocol": "tcp", "ports": [8443], "new_entry": False}]
    merged = L.merged_allow(current, proposal)
    # The list keeps its ports (8443 for one address is not 8443 for all of them); an entry of its own gets it.
    assert merged == [dict(name="pool", host=["198.18.0.20", "198.18.0.21"], ports=[443]),
                      dict(name="one", host="198.18.0.30", ports=[443, 8443]),
                      dict(name="addr-198.18.0.20", host="198.18.0.20", ports=[8443])]
    text = L.render_yaml(merged, {"allow": proposal, "flagged": [], "withheld": []}, "2026-12-06T11:00:00Z", ["h1"])
    import yaml
    assert yaml.safe_load(text)["egress_allow"] == merged
