"""_options: the one definition of egress_rules' options, core's validator against it on the controller, and
the helpers every reader of the options shares (one of each)."""
import os

import pytest

from ansible_collections.agentguard.hardening.plugins.filter import egress_policy_errors
from ansible_collections.agentguard.hardening.plugins.filter.egress_phases import egress_input_errors
from ansible_collections.agentguard.hardening.plugins.module_utils import _k8s, _options as O

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGINS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE)))), "plugins")
VALID = dict(allow=[dict(name="api", host="api.example.com")], dns_servers=["198.18.0.53"])


def role_errors(**over):
    """What the role's controller-side check (egress_input_errors) says about these module options."""
    return egress_input_errors(dict(VALID, **over))


# A wrong type, a wrong choice, a wrong element, in an option and in an entry of allow: each message names
# the role variable and the value.
@pytest.mark.parametrize("over, message", [
    (dict(log_burst="lots"), "egress_log_burst: 'lots' is not a whole number"),
    (dict(resolve_timeout="fast"), "resolve_timeout: 'fast' is not a number"),
    (dict(dhcp="maybe"), "egress_dhcp: 'maybe' is not a boolean"),
    (dict(learn=[1]), "egress_learn: [1] is not a boolean"),
    (dict(tls_gate_port="high"), "egress_tls_gate_port: 'high' is not a whole number"),
    (dict(mode="observe"), "egress_mode: 'observe' is not one of enforce, audit"),
    (dict(scope="container"), "egress_scope: 'container' is not one of host, users, none"),
    (dict(tls_gate="on"), "egress_tls_gate: 'on' is not one of off, audit, enforce"),
    (dict(families=["ipv4", "ipv5"]), "egress_families[1]: 'ipv5' is not one of ipv4, ipv6"),
    (dict(dns_servers={"a": 1}), "egress_dns_servers: {'a': 1} is not a list"),
    (dict(allow=[dict(name="api", host="api.example.com", protocol="icmp")]),
     "egress_allow[0].protocol: 'icmp' is not one of tcp, udp"),
    (dict(allow=[dict(name="api", host="api.example.com", subdomains="maybe")]),
     "egress_allow[0].subdomains: 'maybe' is not a boolean"),
    (dict(allow=[dict(name="api")]), "egress_allow[0].host: missing; it is required"),
    (dict(allow=[dict(name="api", host="api.example.com", port=443)]),
     "egress_allow[0]: unknown key(s) port; allowed keys are name, host, ports, protocol, subdomains, users, tls"),
    (dict(allow=["api.example.com"]),
     "egress_allow[0]: 'api.example.com' is not a mapping with name, host, ports, protocol, subdomains, users, tls"),
])
def test_the_spec_refuses_naming_the_role_variable_and_the_value(over, message):
    assert role_errors(**over) == [message]


def test_the_spec_converts_as_the_module_does():
    # Variables arrive from templates as text: "20" is 20 and "no" is false, as AnsibleModule reads them.
    validated, errors, failed = O.check_options(dict(VALID, log_burst="20", dhcp="no", families="ipv4"))
    assert (validated["log_burst"], validated["dhcp"]) == (20, False)
    # ... but a string for a list is the usual slip for a list of one: refused, naming the list to write.
    assert errors == ["families: 'ipv4' is a string, not a list; write a list: ['ipv4']"]
    assert failed == set()
    assert validated["allow"] == [dict(name="api", host="api.example.com", ports=[443], protocol="tcp",
                                       subdomains=False, users=None, tls=None)]


def test_a_refused_value_takes_its_default_and_is_checked_no_further():
    validated, errors, failed = O.check_options(dict(VALID, mode="observe", families=["ipv5"], allow=[
        dict(name="api", host="api.example.com", protocol="icmp"), 7]))
    assert failed == {"mode", "families", "families[0]", "allow[0].protocol", "allow[1]"}
    assert (validated["mode"], validated["families"]) == ("enforce", ["ipv4", "ipv6"])
    assert validated["allow"][0]["protocol"] == "tcp" and validated["allow"][1] is None
    # build_policy says each once, and nothing about what the refused values would have meant.
    assert len(role_errors(mode="observe", families=["ipv5"])) == 2


def test_every_problem_is_reported_at_once_types_and_meaning():
    errors = role_errors(allow=[dict(name="api", host="0.0.0.0/0", protocol="sctp", ports=[0])], log_burst=0,
                         deny_action="block")
    assert errors == [
        "egress_allow[0].protocol: 'sctp' is not one of tcp, udp",
        "egress_deny_action: 'block' is not one of drop, reject",
        "egress_log_burst: 0 is out of range (1 to 10000)",
        "egress_allow[0].host: '0.0.0.0/0' allows every address, which defeats the allowlist",
        "egress_allow[0].ports[0]: 0 is out of range; ports are 1 to 65535",
    ]


@pytest.mark.parametrize("message, renamed", [
    ("allow[0].host: 'x' is bad", "egress_allow[0].host: 'x' is bad"),
    ("users: ['a'] is only used with scope=users", "egress_scope_users: ['a'] is only used with scope=users"),
    ("dns_resolver_user: None is empty", "dns_resolver_user: None is empty"),  # internal to the role
    ("the policy must be a mapping", "the policy must be a mapping"),
])
def test_rename_option_names_the_leading_option_only(message, renamed):
    assert O.rename_option(message) == renamed
    assert O.rename_option(message, {}) == message


def test_placeholder_uid_is_stable_and_outside_real_uids():
    assert O.placeholder_uid("agent") == O.placeholder_uid("agent") != O.placeholder_uid("agent2")
    assert all(2 ** 31 <= O.placeholder_uid(n) < 2 ** 31 + 2 ** 30 for n in ("a", "agent", "_apt", "x" * 32))


@pytest.mark.parametrize("options, refused", [
    (dict(dns_mode="filtering", mode="audit"), True),
    (dict(dns_mode="filtering", mode="audit", dns_servers=["198.18.0.53"]), False),
    (dict(dns_mode="filtering"), False),  # mode's default is enforce: the module's own check says it
    (dict(dns_mode="filtering", mode="audit", state="absent"), False),
    (dict(mode="audit"), False),
])
def test_filtering_needs_upstream_resolvers(options, refused):
    assert (O.filtering_upstream_error(options) == O.FILTERING_UPSTREAM) is refused


def test_the_role_and_the_export_use_the_one_filtering_rule(monkeypatch):
    monkeypatch.setattr(O, "FILTERING_UPSTREAM", "the one rule")
    options = dict(allow=[dict(name="a", host="198.18.1.1")], mode="audit", dns_mode="filtering",
                   dns_resolver_user="agentguard-dns")
    assert egress_input_errors(options) == ["the one rule"]
    with pytest.raises(_k8s.ExportError) as caught:
        _k8s.export_policies({"egress_allow": options["allow"], "egress_mode": "audit", "egress_dns_mode": "filtering"},
                             "agents")
    assert caught.value.errors == ["the one rule"]


def test_the_filters_and_the_export_use_the_one_rename_and_placeholder(monkeypatch):
    seen = []
    monkeypatch.setitem(O.ROLE_VARIABLES, "mode", "MODE")
    assert role_errors(mode="observe") == ["MODE: 'observe' is not one of enforce, audit"]
    with pytest.raises(_k8s.ExportError) as caught:
        _k8s.export_policies({"MODE": "observe"}, "agents")
    assert caught.value.errors == ["MODE: 'observe' is not one of enforce, audit"]
    # The filter imports _options' own when it runs; the export holds a reference of its own.
    for module in (O, _k8s):
        monkeypatch.setattr(module, "placeholder_uid", lambda name: seen.append(name) or 5000)
    egress_policy_errors.egress_policy_errors(dict(VALID, scope="users", users=["agent"]))
    _k8s.export_policies({"egress_allow": [dict(name="a", host="198.18.1.1", users=["_apt"]),
                                           dict(name="b", host="198.18.1.2")],
                          "egress_dns_servers": ["198.18.0.53"]}, "agents")
    assert seen == ["agent", "_apt"]


def _python_sources():
    for top, _dirs, files in os.walk(PLUGINS):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(top, name)
                with open(path) as handle:
                    yield os.path.relpath(path, PLUGINS), handle.read()


@pytest.mark.parametrize("what, text, where", [
    ("a placeholder uid", "zlib.crc32", "_options.py"),
    ("the leading-option pattern of a rename", "(?=[\\[.:])", "_options.py"),
    ("the filtering-needs-upstream-resolvers rule", "needs the upstream resolvers", "_options.py"),
    ("a table of the role variable of each option", '"egress_scope_users"', "_options.py"),
    ("an option's spec", "log_burst=dict(type=", "_policy.py"),
])
def test_one_copy_in_the_plugins(what, text, where):
    found = [path for path, source in _python_sources() if text in source]
    assert found == ["module_utils/" + where], (what, found)


class _Lazy(dict):
    """Like Ansible's lazy containers: a deep copy would take the whole variable context with it."""

    def __deepcopy__(self, memo):
        raise AssertionError("a lazy mapping was deep-copied")


class _LazyList(list):
    def __deepcopy__(self, memo):
        raise AssertionError("a lazy list was deep-copied")


class _TaggedStr(str):
    pass


def test_templated_inputs_are_made_plain_before_core_deep_copies_them():
    """What a filter gets from Ansible's templating is lazy; core's validator deep-copies its input, which copied
    every variable of the host (about a second per host and task in the fleet bench)."""
    params = _Lazy(allow=_LazyList([_Lazy(name=_TaggedStr("api"), host=_TaggedStr("api.example.org"), ports=_LazyList([443]))]),
                   dns_servers=_LazyList([_TaggedStr("10.0.0.2")]), log_burst=_TaggedStr("20"))
    validated, errors, failed = O.check_options(params)
    assert errors == [] and not failed
    assert validated["allow"][0]["host"] == "api.example.org" and type(validated["allow"][0]["host"]) is str
    assert validated["log_burst"] == 20 and validated["dns_servers"] == ["10.0.0.2"]
    assert O.plain(params) == {"allow": [{"name": "api", "host": "api.example.org", "ports": [443]}],
                               "dns_servers": ["10.0.0.2"], "log_burst": "20"}
