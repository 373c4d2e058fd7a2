"""What the filter plugins share (plugin_utils/_filters.py): a role variable read entry by entry."""
import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.agentguard.hardening.plugins.plugin_utils._filters import parse_each


def port(value, where):
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError("%s: %r is not a port" % (where, value))
    return value * 10


def test_each_entry_parsed_in_order():
    assert parse_each("f", "egress_ports", [1, 2, 3], port) == [10, 20, 30]
    assert parse_each("f", "egress_ports", [], port) == []


def test_the_first_bad_entry_is_named_with_its_index():
    with pytest.raises(AnsibleFilterError) as info:
        parse_each("f", "egress_ports", [443, 0, "x"], port)
    assert info.value.message == "egress_ports[1]: 0 is not a port"


@pytest.mark.parametrize("value", ["443", None, {"a": 1}, (443,)])
def test_not_a_list_names_the_filter_and_the_variable(value):
    with pytest.raises(AnsibleFilterError) as info:
        parse_each("egress_x", "egress_ports", value, port)
    assert info.value.message == "egress_x expects the list egress_ports, got %s" % type(value).__name__
