"""Parsing real iptables-save / ip6tables-save / ipset save output (fixtures captured by capture.sh)."""

import ipaddress

import pytest
from hypothesis import given, strategies as st

from ansible_collections.agentguard.hardening.plugins.module_utils import _state as S

from .conftest import fixture


@pytest.mark.parametrize("backend", ["nft", "legacy"])
@pytest.mark.parametrize("family", ["v4", "v6"])
def test_managed_state_from_real_save(backend, family):
    live = S.live_state(fixture("managed-%s.%s" % (backend, family)))
    assert live.managed.policy == "DROP"
    assert live.managed.jumps == ((0, "-j AGENTGUARD-EGRESS"),)
    chains = dict(live.managed.chains)
    assert sorted(chains) == ["AGENTGUARD-ALLOW", "AGENTGUARD-DENY", "AGENTGUARD-EGRESS"]
    assert chains["AGENTGUARD-EGRESS"] == (
        '-m owner --uid-owner 1000 -m comment --comment "agentguard: user agent" -j AGENTGUARD-ALLOW',)
    assert chains["AGENTGUARD-DENY"][0] == (
        '-m limit --limit 10/min --limit-burst 20 -j LOG --log-prefix "[EGRESS-DENIED] " --log-uid')
    assert chains["AGENTGUARD-ALLOW"][-1] == "-j AGENTGUARD-DENY"
    # The admin's own OUTPUT rule is foreign: counted, never owned.
    assert live.foreign_output_rules == 1
    assert live.policies == {"INPUT": "ACCEPT", "FORWARD": "ACCEPT", "OUTPUT": "DROP"}


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_backends_print_the_same_rules(family):
    nft = S.parse_save(fixture("managed-nft.%s" % family))["filter"]
    legacy = S.parse_save(fixture("managed-legacy.%s" % family))["filter"]
    assert sorted(nft.rules) == sorted(legacy.rules)
    assert sorted(nft.chains) == sorted(legacy.chains)


@pytest.mark.parametrize("name", ["foreign-nft.v4", "foreign-legacy.v6"])
def test_foreign_only_state_has_nothing_managed(name):
    live = S.live_state(fixture(name))
    assert live.managed == S.ManagedState("ACCEPT", (), ())
    tables = S.parse_save(fixture(name))
    assert ("f2b-sshd", "-") in tables["filter"].chains
    assert ("INPUT", "-p tcp -m multiport --dports 22 -j f2b-sshd") in tables["filter"].rules


def test_empty_save_means_default_accept():
    live = S.live_state("")
    assert live.managed.policy == "ACCEPT" and live.managed.chains == () and live.foreign_output_rules == 0


def test_counters_and_warning_comments_are_ignored():
    text = ("# Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n"
            "*filter\n:OUTPUT ACCEPT [12:3400]\n:AGENTGUARD-EGRESS - [0:0]\n"
            "[5:300] -A OUTPUT -j AGENTGUARD-EGRESS\nCOMMIT\n")
    live = S.live_state(text)
    assert live.managed.jumps == ((0, "-j AGENTGUARD-EGRESS"),)


def test_jump_position_counts_foreign_rules():
    text = "*filter\n:OUTPUT ACCEPT [0:0]\n:AGENTGUARD-EGRESS - [0:0]\n-A OUTPUT -o lo -j ACCEPT\n" \
           "-A OUTPUT -d 10.0.0.1/32 -j DROP\n-A OUTPUT -j AGENTGUARD-EGRESS\nCOMMIT\n"
    live = S.live_state(text)
    assert live.managed.jumps == ((2, "-j AGENTGUARD-EGRESS"),)
    assert live.foreign_output_rules == 2


@pytest.mark.parametrize("name,tracking", [
    ("managed-nft.v4", True), ("managed-legacy.v6", True),     # our own --ctstate rules
    ("foreign-nft.v4", False), ("foreign-legacy.v6", False),   # fail2ban-style rules, no conntrack
])
def test_tracking_from_real_save(name, tracking):
    assert S.live_state(fixture(name)).tracking is tracking


def test_empty_save_tracks_nothing():
    assert S.live_state("").tracking is False


@pytest.mark.parametrize("spec,tracking", [
    ("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", True),
    ("-p tcp -m state --state NEW -j ACCEPT", True),
    ("-p tcp -m tcp --dport 22 -m conntrack --ctstate INVALID -j DROP", True),
    ("-o lo -j ACCEPT", False),
    ("-p tcp -m tcp --dport 22 -j f2b-sshd", False),
    ('-m comment --comment "conntrack state" -j ACCEPT', False),   # words, not a match
    ("-m connlimit --connlimit-above 4 -j DROP", False),          # not counted: audit first is the safe side
])
def test_uses_tracking(spec, tracking):
    assert S.uses_tracking(spec) is tracking


def test_foreign_tracking_rule_counts():
    text = ("*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A INPUT -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n")
    live = S.live_state(text)
    assert live.tracking is True and live.managed.chains == ()


@pytest.mark.parametrize("text,error", [
    ("-A OUTPUT -j ACCEPT\n", "outside a table"),
    ("*filter\n:OUTPUT ACCEPT [0:0]\n", "has no COMMIT"),
    ("*filter\n*nat\nCOMMIT\n", "starts before COMMIT"),
    ("*filter\n-X FOO\nCOMMIT\n", "unexpected"),
    ("*filter\n:OUTPUT\nCOMMIT\n", "bad chain line"),
])
def test_malformed_save_raises(text, error):
    with pytest.raises(S.ParseError, match=error):
        S.parse_save(text)


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_ipset_save_keeps_only_our_sets(backend):
    sets = S.parse_ipset_save(fixture("ipset-%s.save" % backend))
    assert sorted(sets) == ["ag4-cdn", "ag6-cdn"]
    v4 = sets["ag4-cdn"]
    assert v4.settype == "hash:net" and v4.family == "inet"
    assert v4.members[0] == "198.18.4.1/32" and "198.18.5.0/24" in v4.members and len(v4.members) == 11
    assert sets["ag6-cdn"].family == "inet6" and sets["ag6-cdn"].members[0] == "fd00:a9e:4::1/128"
    assert v4.options["maxelem"] == "65536"


def test_ipset_bad_member_raises():
    with pytest.raises(S.ParseError, match="bad member"):
        S.parse_ipset_save("create ag4-x hash:net family inet\nadd ag4-x not-an-ip\n")


CHAIN = st.from_regex(r"[A-Z][A-Z0-9_-]{0,20}", fullmatch=True)
# Not -p: a protocol saved by number reads back by name, on purpose (the test after this one).
SPEC = st.from_regex(r"-[a-oq-z] [a-z0-9./:]{1,12}( -m [a-z]{2,8} --[a-z-]{2,10} [0-9]{1,5}){0,3} -j [A-Z]{4,8}", fullmatch=True)


@st.composite
def tables(draw):
    names = draw(st.lists(CHAIN, unique=True, max_size=5))
    chains = [(c, draw(st.sampled_from(["ACCEPT", "DROP"]))) for c in ("INPUT", "FORWARD", "OUTPUT")]
    chains += [(n, "-") for n in names if n not in ("INPUT", "FORWARD", "OUTPUT")]
    rules = draw(st.lists(st.tuples(st.sampled_from([c for c, p in chains]), SPEC), max_size=12))
    return S.Table("filter", chains, rules)


@given(tables())
def test_parse_render_round_trip(table):
    assert S.parse_save(S.render_table(table))["filter"] == table


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_a_protocol_saved_by_number_reads_back_as_the_module_writes_it(backend):
    """Debian 13's images have no /etc/protocols: iptables-save prints "-p 2" for the "-p igmp" the module loaded
    (found by molecule platforms' idempotence on trixie). The live state must be the same either way."""
    text = fixture("managed-%s.v4" % backend)
    assert " -p igmp " in text
    numeric = text.replace(" -p igmp ", " -p 2 ")
    assert S.live_state(numeric) == S.live_state(text)
    # Only a whole protocol word is renamed: a port or another number stays as it is.
    assert S._protocol_by_name("-p 2 -j ACCEPT") == "-p igmp -j ACCEPT"
    assert S._protocol_by_name("-d 198.18.0.2/32 -p 22 -j ACCEPT") == "-d 198.18.0.2/32 -p 22 -j ACCEPT"
    assert S._protocol_by_name("-p tcp -m tcp --dport 2 -j ACCEPT") == "-p tcp -m tcp --dport 2 -j ACCEPT"


def test_networks_are_parsed_once_per_text(monkeypatch):
    monkeypatch.setattr(S, "_NETWORKS", {})
    monkeypatch.setattr(S, "_CANONICAL", {})
    first = S.network_of("10.0.0.1/8")
    assert S.network_of("10.0.0.1/8") is first and S.canonical("10.0.0.1/8") == "10.0.0.0/8"
    # What a strict parse (the policy's validation) remembered is not parsed again, under either text.
    assert S.remember("2001:db8::1", ipaddress.ip_network("2001:db8::1")) == "2001:db8::1/128"

    def refuse(*args, **kwargs):
        raise AssertionError("parsed again")
    monkeypatch.setattr(S.ipaddress, "ip_network", refuse)
    assert S.canonical("2001:db8::1") == S.canonical("2001:db8::1/128") == "2001:db8::1/128"
    assert S.sort_networks(["10.0.0.1/8", "2001:db8::1", "10.0.0.0/8"]) == ["10.0.0.0/8", "2001:db8::1/128"]


def test_the_network_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(S, "_NETWORKS", {})
    monkeypatch.setattr(S, "_CANONICAL", {})
    monkeypatch.setattr(S, "_CACHE_MAX", 8)
    for i in range(50):
        assert S.canonical("198.18.%d.1" % i) == "198.18.%d.1/32" % i
        assert len(S._NETWORKS) <= 8 + 2
