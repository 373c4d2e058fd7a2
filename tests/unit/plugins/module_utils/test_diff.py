"""Rule-level change lists and diff text."""
from hypothesis import given, strategies as st

from ansible_collections.agentguard.hardening.plugins.module_utils import _diff as D
from ansible_collections.agentguard.hardening.plugins.module_utils import _state as S

SPEC = st.sampled_from(["-o lo -j ACCEPT", "-j DROP", "-d 10.0.0.1/32 -j ACCEPT", "-p tcp -j REJECT", "-j RETURN"])
STATES = st.builds(
    S.ManagedState,
    st.sampled_from(["ACCEPT", "DROP"]),
    st.lists(st.tuples(st.integers(0, 5), st.just("-j AGENTGUARD-EGRESS")), max_size=2, unique_by=lambda j: j[0]).map(sorted).map(tuple),  # _state reads jumps in hook order
    st.dictionaries(st.sampled_from(["AGENTGUARD-ALLOW", "AGENTGUARD-DENY", "AGENTGUARD-EGRESS"]),
                    st.lists(SPEC, max_size=6).map(tuple)).map(lambda d: tuple(sorted(d.items()))),
)


@given(STATES)
def test_diff_of_state_with_itself_is_empty(state):
    assert D.family_changes(state, state, {}, {}) == {"added": [], "removed": []}


@given(STATES, STATES)
def test_changes_account_for_every_line(before, after):
    changes = D.family_changes(before, after, {}, {})
    old, new = D.state_lines(before), D.state_lines(after)
    # Applying the change list to the old lines, as multisets, gives the new lines.
    remaining = list(old)
    for line in changes["removed"]:
        remaining.remove(line)
    assert sorted(remaining + changes["added"]) == sorted(new)
    assert (changes == {"added": [], "removed": []}) == (before == after)


def test_moved_rule_is_removed_and_added():
    a = S.ManagedState("DROP", (), (("AGENTGUARD-ALLOW", ("-o lo -j ACCEPT", "-j DROP")),))
    b = S.ManagedState("DROP", (), (("AGENTGUARD-ALLOW", ("-j DROP", "-o lo -j ACCEPT")),))
    changes = D.family_changes(a, b, {}, {})
    assert changes["added"] and changes["removed"]


def test_set_members_appear_in_changes():
    ipset = S.IpSet("ag4-cdn", "hash:net", "inet", {}, ("10.0.0.0/24",))
    grown = ipset._replace(members=("10.0.0.0/24", "10.0.1.0/24"))
    state = S.ManagedState("DROP", (), ())
    changes = D.family_changes(state, state, {"ag4-cdn": ipset}, {"ag4-cdn": grown})
    assert changes == {"added": ["ipset add ag4-cdn 10.0.1.0/24"], "removed": []}


def test_diff_text_layout():
    state = S.ManagedState("DROP", ((0, "-j AGENTGUARD-EGRESS"),), (("AGENTGUARD-EGRESS", ("-j AGENTGUARD-ALLOW",)),))
    text = D.diff_text({"ipv6": state, "ipv4": state}, {})
    assert text.splitlines() == [
        "# ipv4", "-P OUTPUT DROP", "-I OUTPUT 1 -j AGENTGUARD-EGRESS", "-N AGENTGUARD-EGRESS",
        "-A AGENTGUARD-EGRESS -j AGENTGUARD-ALLOW",
        "# ipv6", "-P OUTPUT DROP", "-I OUTPUT 1 -j AGENTGUARD-EGRESS", "-N AGENTGUARD-EGRESS",
        "-A AGENTGUARD-EGRESS -j AGENTGUARD-ALLOW",
    ]
