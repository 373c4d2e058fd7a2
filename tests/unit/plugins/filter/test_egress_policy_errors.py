"""egress_policy_errors: the module's validation, run on the controller by the role before it changes anything."""
import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.agentguard.hardening.plugins.filter.egress_policy_errors import FilterModule

check = FilterModule().filters()["egress_policy_errors"]

ROLE_NAMES = {"allow": "egress_allow", "dns_servers": "egress_dns_servers", "users": "egress_scope_users",
              "scope": "egress_scope", "log_prefix": "egress_log_prefix"}


def options(**over):
    params = dict(allow=[dict(name="inference-api", host="api.example.com")], dns_servers=["198.18.0.53"],
                  mode="enforce", scope="host", users=[], families=["ipv4", "ipv6"], state="present")
    params.update(over)
    return params


def test_a_valid_policy_has_no_errors():
    assert check(options()) == []
    # As role variables arrive: numbers as text, ports as text ranges, optional keys left out.
    assert check(options(log_burst="20", dns_set_timeout="300",
                         allow=[dict(name="a", host="198.18.1.1", ports=["8000-8010", "443"])])) == []


def test_messages_name_the_role_variable_and_the_value():
    errors = check(options(allow=[dict(name="api", host="exa mple.com")]), ROLE_NAMES)
    assert len(errors) == 1
    assert errors[0].startswith("egress_allow[0].host: ") and "'exa mple.com'" in errors[0]


def test_a_list_of_addresses_is_checked_element_by_element():
    assert check(options(allow=[dict(name="pool", host=["198.18.1.1", "fd00:a9e::/64"])])) == []
    errors = check(options(allow=[dict(name="pool", host=["198.18.1.1", "api.example.com", "198.18.1.1/16"])]), ROLE_NAMES)
    # Every bad element, each named.
    assert errors == ["egress_allow[0].host[1]: 'api.example.com' is a DNS name; a list holds addresses and CIDRs only "
                      "(give the name an entry of its own)",
                      "egress_allow[0].host[2]: '198.18.1.1/16' has host bits set; did you mean 198.18.0.0/16?"]


def test_every_problem_is_reported_at_once():
    errors = check(options(allow=[dict(name="api", host="0.0.0.0/0"), dict(name="api", host="198.18.1.1", ports=[70000])],
                           dns_servers=["resolver.example"], log_prefix="x" * 40), ROLE_NAMES)
    text = "\n".join(errors)
    assert "egress_allow[0].host: '0.0.0.0/0' allows every address" in text
    assert "egress_allow[1].ports[0]: 70000 is out of range" in text
    assert "egress_dns_servers[0]: 'resolver.example' is not an IP address" in text
    assert text.count("egress_log_prefix: ") == 1
    assert len(errors) == 4


def test_options_without_a_name_keep_their_own():
    errors = check(options(deny_action="accept"), ROLE_NAMES)
    assert errors == ["deny_action: 'accept' is not one of drop, reject"]
    assert check(options(allow=[dict(name="a", host="-bad-")]))[0].startswith("allow[0].host: ")


def test_only_the_leading_option_is_renamed():
    errors = check(options(scope="host", users=["agent"]), ROLE_NAMES)
    assert errors == ["egress_scope_users: ['agent'] is only used with scope=users (scope is 'host', which restricts every user)"]


def test_user_names_are_left_to_the_host():
    # Existence is checked on the host; only the form is checked here.
    assert check(options(scope="users", users=["agent", "1000"])) == []
    assert check(options(scope="users", users=["bad name"]), ROLE_NAMES) == [
        "egress_scope_users[0]: 'bad name' is not a user name or uid"]


def test_empty_resolvers_in_enforce_mode():
    errors = check(options(dns_servers=[]), ROLE_NAMES)
    assert len(errors) == 1 and errors[0].startswith("egress_dns_servers: [] is empty; enforce mode")


@pytest.mark.parametrize("value", [None, "allow: []", ["allow"]])
def test_anything_but_a_dictionary_is_refused(value):
    with pytest.raises(AnsibleFilterError, match="expects a dictionary"):
        check(value)
