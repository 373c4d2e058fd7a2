"""Validation: every malformed value fails with a message naming the field and the value."""
import pytest
from hypothesis import given, strategies as st

from ansible_collections.agentguard.hardening.plugins.module_utils import _policy as P
from ansible_collections.agentguard.hardening.plugins.module_utils._options import validated_policy

USERS = {"root": 0, "agent": 1000}


def lookup(name):
    return USERS[name]


def base(**over):
    params = dict(
        allow=[dict(name="inference-api", host="api.openclaw.security", ports=[443], protocol="tcp")],
        dns_servers=["1.1.1.1"], log_prefix="[EGRESS-DENIED] ", log_limit="10/minute", log_burst=20,
        deny_action="drop", mode="enforce", scope="host", users=[], families=["ipv4", "ipv6"], state="present",
    )
    params.update(over)
    return params


def dest(**over):
    entry = dict(name="x", host="api.example.com", ports=[443], protocol="tcp")
    entry.update(over)
    return entry


def bad_entries(field, problem, *values):
    """MALFORMED rows: an allow entry per value of field, each failing with this problem, the message naming the value."""
    return [(base(allow=[dest(**{field: value})]), "allow[0].%s: %r %s" % (field, value, problem)) for value in values]


# (params, expected fragment of the message)
MALFORMED = bad_entries("host", "is not a valid DNS name", "bad..name", "-bad.example", "bad-.example", "exa mple.com",
                        "a" * 64 + ".com", ("a" * 60 + ".") * 5 + "com", "api.example.com/24") \
    + bad_entries("host", "is not a host", "") \
    + bad_entries("host", "is not a valid IP address or CIDR", "256.1.1.1", "1.2.3", "10.0.0.0/33", "fd00::1::2",
                  "fd00::1/129") \
    + bad_entries("host", "has host bits set; did you mean 10.0.0.0/8?", "10.0.0.1/8") \
    + bad_entries("host", "allows every address", "0.0.0.0/0", "::/0") \
    + bad_entries("name", "is not a valid label", "", "has space", "-lead", "x" * 27, 'quo"te') + [
    # Types, choices and required keys: ARGUMENT_SPEC's, through core's validator (_options.check_options).
    (base(allow=[dest(host=None)]), "allow[0].host: missing; it is required"),
    (base(allow=[{"host": "api.example.com"}]), "allow[0].name: missing; it is required"),
    (base(allow=[dest(ports=[0])]), "allow[0].ports[0]: 0 is out of range; ports are 1 to 65535"),
    (base(allow=[dest(ports=[70000])]), "allow[0].ports[0]: 70000 is out of range; ports are 1 to 65535"),
    (base(allow=[dest(ports=[-1])]), "allow[0].ports[0]: -1 is out of range"),
    (base(allow=[dest(ports=["8010-8000"])]), "allow[0].ports[0]: '8010-8000' is a reversed range"),
    (base(allow=[dest(ports=["80-70000"])]), "allow[0].ports[0]: '80-70000' is out of range"),
    (base(allow=[dest(ports=["https"])]), "allow[0].ports[0]: 'https' is not a port"),
    (base(allow=[dest(ports=["80:90"])]), "allow[0].ports[0]: '80:90' is not a port"),
    (base(allow=[dest(ports=[443, True])]), "allow[0].ports[1]: True is not a port"),
    (base(allow=[dest(ports=[4.5])]), "allow[0].ports[0]: 4.5 is not a port"),
    (base(allow=[dest(ports=[])]), "allow[0].ports: [] must be a non-empty list"),
    (base(allow=[dest(protocol="icmp")]), "allow[0].protocol: 'icmp' is not one of tcp, udp"),
    (base(allow=[dest(protocol="TCP ")]), "allow[0].protocol: 'TCP ' is not one of tcp, udp"),
    (base(allow=[dest(extra=1)]), "allow[0]: unknown key(s) extra"),
    (base(allow=["api.example.com"]), "allow[0]: 'api.example.com' is not a mapping"),
    (base(allow=[dest(name="a"), dest(name="a", host="b.example.com")]), "allow[1].name: 'a' is already used by allow[0]"),
    (base(allow="api.example.com"), "allow: 'api.example.com' is a string, not a list; write a list: ['api.example.com']"),
    (base(allow={"name": "x"}), "allow: {'name': 'x'} is not a list"),
    (base(dns_servers=[]), "dns_servers: [] is empty; enforce mode needs at least one trusted resolver"),
    (base(dns_servers=["dns.google"]), "dns_servers[0]: 'dns.google' is not an IP address"),
    (base(dns_servers=["1.1.1.0/24"]), "dns_servers[0]: '1.1.1.0/24' is not an IP address"),
    (base(dns_servers=["1.1.1.1", 53]), "dns_servers[1]: '53' is not an IP address"),
    (base(mode="audit", dns_servers=[]), "dns_servers: [] is empty but allow[0].host 'api.openclaw.security' is a name"),
    (base(log_limit="ten per minute"), "log_limit: 'ten per minute' is not a rate"),
    (base(log_limit="10/fortnight"), "log_limit: '10/fortnight' is not a rate"),
    (base(log_limit="0/minute"), "log_limit: '0/minute' must allow at least one line"),
    (base(log_limit="20000/second"), "log_limit: '20000/second' is faster than the kernel's maximum"),
    (base(log_limit=10), "log_limit: '10' is not a rate"),
    (base(log_burst=0), "log_burst: 0 is out of range (1 to 10000)"),
    (base(log_burst=10001), "log_burst: 10001 is out of range (1 to 10000)"),
    (base(log_burst="lots"), "log_burst: 'lots' is not a whole number"),
    (base(log_burst=True), "log_burst: True is not a whole number"),
    (base(log_prefix=""), "log_prefix: '' must be a non-empty string"),
    (base(log_prefix="x" * 30), "log_prefix: '%s' is 30 characters; the kernel keeps at most 29" % ("x" * 30)),
    (base(log_prefix='say "hi"'), "log_prefix: 'say \"hi\"' may contain printable ASCII only"),
    (base(log_prefix="tab\there"), "may contain printable ASCII only"),
    (base(deny_action="block"), "deny_action: 'block' is not one of drop, reject"),
    (base(mode="learn"), "mode: 'learn' is not one of enforce, audit"),
    (base(scope="container"), "scope: 'container' is not one of host, users"),
    (base(state="gone"), "state: 'gone' is not one of present, absent"),
    (base(families=[]), "families: [] must be a non-empty list of ipv4, ipv6"),
    (base(families=["ipv5"]), "families[0]: 'ipv5' is not one of ipv4, ipv6"),
    (base(scope="users", users=["nosuchuser"]), "users[0]: user 'nosuchuser' does not exist on this host"),
    (base(scope="users", users=["bad name!"]), "users[0]: 'bad name!' is not a user name or uid"),
    (base(scope="users", users=["99999999999"]), "users[0]: '99999999999' is not a valid uid"),
    (base(scope="users", users=[]), "users: [] is empty; scope=users needs the users"),
    (base(scope="host", users=["agent"]), "users: ['agent'] is only used with scope=users"),
    (base(dns_mode="stub"), "dns_mode: 'stub' is not one of pinned, filtering"),
    (base(allow=[dest(subdomains=True)]), "allow: 'x' set subdomains: true, which only dns_mode=filtering can honour"),
    (base(allow=[dest(subdomains="maybe")], dns_mode="filtering", dns_resolver_user="agent"),
     "allow[0].subdomains: 'maybe' is not a boolean"),
    (base(allow=[dest(tls="maybe")]), "allow[0].tls: 'maybe' is not a boolean"),
    (base(allow=[dest(ports={"a": 1})]), "allow[0].ports: {'a': 1} is not a list"),
    (base(learn="maybe"), "learn: 'maybe' is not a boolean"),
    (base(tls_gate="on"), "tls_gate: 'on' is not one of off, audit, enforce"),
    (base(allow=[dest(host="198.18.0.10", subdomains=True)], dns_mode="filtering", dns_resolver_user="agent"),
     "allow[0].subdomains: true only applies to a DNS name, not '198.18.0.10'"),
    (base(dns_mode="filtering", dns_resolver_user="nosuchuser"), "dns_resolver_user: user 'nosuchuser' does not exist"),
    (base(allow=[dest(host=["198.18.0.1", "api.example.com"])]),
     "allow[0].host[1]: 'api.example.com' is a DNS name; a list holds addresses and CIDRs only"),
    (base(allow=[dest(host=["198.18.0.1", "198.18.1.0/15"])]), "allow[0].host[1]: '198.18.1.0/15' has host bits set"),
    (base(allow=[dest(host=["198.18.0.1", 7])]), "allow[0].host[1]: 7 is not a host"),
    (base(allow=[dest(host=["198.18.0.1", "0.0.0.0/0"])]), "allow[0].host[1]: '0.0.0.0/0' allows every address"),
    (base(allow=[dest(host=[])]), "allow[0].host: [] is empty"),
    (base(allow=[dest(host={"a": 1})]), "allow[0].host: {'a': 1} is not a host"),
    (base(allow=[dest(host=["198.18.0.1"], subdomains=True)]), "allow[0].subdomains: true only applies to a DNS name, not '198.18.0.1/32'"),
    (base(dns_mode="filtering", dns_resolver_user="agent", dns_set_timeout=5), "dns_set_timeout: 5 is out of range"),
    (base(dns_mode="filtering", dns_resolver_user="agent", resolvers=["localhost"]), "resolvers[0]: 'localhost' is not an IP address"),
    (base(dns_mode="filtering"), "dns_resolver_user: None is empty; dns_mode=filtering needs the user"),
    (base(dns_mode="filtering", dns_resolver_user=""), "dns_resolver_user: '' is empty"),
    (base(resolve_timeout="fast"), "resolve_timeout: 'fast' is not a number"),
    (base(resolve_timeout=0), "resolve_timeout: 0.0 is out of range (0.1 to 30)"),
    (base(resolve_retries=-1), "resolve_retries: -1 is out of range (0 to 10)"),
    (base(resolve_retries=11), "resolve_retries: 11 is out of range (0 to 10)"),
]


@pytest.mark.parametrize("params,message", MALFORMED, ids=[m for p, m in MALFORMED])
def test_malformed_input_names_field_and_value(params, message):
    with pytest.raises(P.PolicyError) as info:
        validated_policy(params, lookup)
    assert any(message in error for error in info.value.errors), info.value.errors


def test_all_errors_reported_at_once():
    params = base(allow=[dest(ports=[0], protocol="sctp")], log_burst=0, mode="x")
    with pytest.raises(P.PolicyError) as info:
        validated_policy(params, lookup)
    text = str(info.value)
    for fragment in ("allow[0].ports[0]: 0", "allow[0].protocol: 'sctp'", "log_burst: 0", "mode: 'x'"):
        assert fragment in text


def test_valid_policy_is_normalised():
    params = base(
        allow=[
            dest(name="api", host="API.OpenClaw.Security.", ports=[443, "443", " 8000 - 8010 "]),
            dest(name="net", host="fd00:0a9e::/32", ports=[53], protocol="udp"),
            dest(name="one", host="198.18.0.10", ports=["8443"], protocol=None),
        ],
        dns_servers=["1.1.1.1", "1.1.1.1", "2606:4700:4700:0::1111"],
        log_limit="5/s", scope="users", users=["agent", "1000", "0"],
    )
    policy = validated_policy(params, lookup)
    assert policy.allow[0] == P.Destination("api", "api.openclaw.security", "name", ("443", "8000:8010"), "tcp", False)
    assert policy.allow[1] == P.Destination("net", "fd00:a9e::/32", "ipv6", ("53",), "udp", False,
                                           networks=(("ipv6", "fd00:a9e::/32"),))
    assert policy.allow[2] == P.Destination("one", "198.18.0.10/32", "ipv4", ("8443",), "tcp", False,
                                           networks=(("ipv4", "198.18.0.10/32"),))
    assert policy.dns_servers == ("1.1.1.1", "2606:4700:4700::1111")
    assert policy.log_limit == "5/sec"
    assert [u.uid for u in policy.users] == [0, 1000]
    assert policy.families == ("ipv4", "ipv6")


def test_absent_needs_no_resolver():
    policy = validated_policy(base(state="absent", dns_servers=[], allow=[]), lookup)
    assert policy.state == "absent"


@pytest.mark.parametrize("text,canonical", [
    ("10/minute", "10/min"), ("1/s", "1/sec"), ("3/hour", "3/hour"), ("7/d", "7/day"), (" 2 / Minute ", "2/min"),
    # iptables-save prints these in another unit (checked against iptables 1.8.9):
    ("60/minute", "1/sec"), ("120/hour", "2/min"), ("24/day", "1/hour"), ("3600/hour", "1/sec"),
    ("90/minute", "90/min"), ("7/minute", "7/min"), ("10000/second", "10000/sec"),
])
def test_log_limit_canonical(text, canonical):
    assert P.parse_log_limit(text) == canonical


@given(st.integers(min_value=1, max_value=65535), st.integers(min_value=1, max_value=65535))
def test_port_ranges_property(low, high):
    text = "%d-%d" % (low, high)
    if low > high:
        with pytest.raises(ValueError, match="reversed range"):
            P.parse_port(text, "p")
    else:
        spec = P.parse_port(text, "p")
        assert spec == (str(low) if low == high else "%d:%d" % (low, high))


@given(st.integers())
def test_port_numbers_property(port):
    if 1 <= port <= 65535:
        assert P.parse_port(port, "p") == str(port)
    else:
        with pytest.raises(ValueError, match="p: .* out of range"):
            P.parse_port(port, "p")


@given(st.text(max_size=40))
def test_host_parser_never_crashes(text):
    try:
        kind, host = P.parse_host(text, "h")
    except ValueError as exc:
        assert str(exc).startswith("h: ")
    else:
        assert kind in ("name", "ipv4", "ipv6")


BASE = dict(dns_servers=["198.18.0.53"])


@pytest.mark.parametrize("value,network", [
    ("docker0", P.Network("iface", "docker0")),
    ("br-+", P.Network("iface", "br-+")),
    ("virbr+", P.Network("iface", "virbr+")),
    ("abcdefghijklmn+", P.Network("iface", "abcdefghijklmn+")),
    ("198.19.0.0/24", P.Network("ipv4", "198.19.0.0/24")),
    (" fd00:d0c::/64 ", P.Network("ipv6", "fd00:d0c::/64")),
    ("198.19.0.7", P.Network("ipv4", "198.19.0.7/32")),
])
def test_scope_networks_accepted(value, network):
    assert validated_policy(dict(BASE, scope_networks=[value]), lambda n: 0).networks == (network,)


@pytest.mark.parametrize("value,message", [
    ("abcdefghijklmnop", "scope_networks[0]: 'abcdefghijklmnop' is not an interface name"),
    ("br+x", "scope_networks[0]: 'br+x' is not an interface name"),
    ("+", "scope_networks[0]: '+' is not an interface name"),
    ("eth 0", "scope_networks[0]: 'eth 0' is not an interface name"),
    ("!docker0", "scope_networks[0]: '!docker0' is not an interface name"),
    ("198.19.0.1/24", "scope_networks[0]: '198.19.0.1/24' has host bits set; did you mean 198.19.0.0/24?"),
    ("0.0.0.0/0", "scope_networks[0]: '0.0.0.0/0' allows every address"),
    ("fd00::zz/64", "scope_networks[0]: 'fd00::zz/64' is not a valid IP address or CIDR"),
    (7, "scope_networks[0]: '7' is not a valid IP address or CIDR"),
    ("", "scope_networks[0]: '' is not a network"),
])
def test_scope_networks_refused_naming_field_and_value(value, message):
    with pytest.raises(P.PolicyError) as info:
        validated_policy(dict(BASE, scope_networks=[value]), lambda n: 0)
    assert any(error.startswith(message) for error in info.value.errors), info.value.errors


def test_scope_none_needs_networks_and_takes_no_users():
    with pytest.raises(P.PolicyError) as info:
        validated_policy(dict(BASE, scope="none"), lambda n: 0)
    assert info.value.errors == ["scope_networks: [] is empty; scope=none restricts no local process and needs the "
                                 "container networks to restrict"]
    with pytest.raises(P.PolicyError) as info:
        validated_policy(dict(BASE, scope="none", scope_networks=["docker0"], users=["agent"]), lambda n: 0)
    assert info.value.errors[0].startswith("users: ['agent'] is only used with scope=users (scope is 'none'")
    policy = validated_policy(dict(BASE, scope="none", scope_networks=["docker0", "docker0"]), lambda n: 0)
    assert policy.scope == "none" and policy.networks == (P.Network("iface", "docker0"),)
    # Removing needs nothing.
    assert validated_policy(dict(scope="none", state="absent"), lambda n: 0).state == "absent"


def test_entry_users_are_resolved_and_validated():
    lookup_ = {"_chrony": 105, "agent": 1000}.__getitem__
    policy = validated_policy(dict(BASE, allow=[dict(name="time", host="198.18.0.123", ports=[123], protocol="udp",
                                                   users=["_chrony", "0", "_chrony"])]), lookup_)
    assert policy.allow[0].users == (P.User("0", 0), P.User("_chrony", 105))
    assert validated_policy(dict(BASE, allow=[dict(name="a", host="198.18.0.1")]), lookup_).allow[0].users == ()
    for users, message in (([], "allow[0].users: [] must be a non-empty list of user names or uids"),
                           (["nosuch"], "allow[0].users[0]: user 'nosuch' does not exist on this host"),
                           (["bad name"], "allow[0].users[0]: 'bad name' is not a user name or uid"),
                           ({"a": 1}, "allow[0].users: {'a': 1} is not a list")):
        with pytest.raises(P.PolicyError) as info:
            validated_policy(dict(BASE, allow=[dict(name="a", host="198.18.0.1", users=users)]), lookup_)
        assert any(error.startswith(message) for error in info.value.errors), info.value.errors


def test_dhcp_must_be_a_boolean():
    assert validated_policy(BASE, lambda n: 0).dhcp is True
    # As AnsibleModule reads it on the host: "yes" is true, "maybe" is refused.
    assert validated_policy(dict(BASE, dhcp="no"), lambda n: 0).dhcp is False
    with pytest.raises(P.PolicyError) as info:
        validated_policy(dict(BASE, dhcp="maybe"), lambda n: 0)
    assert info.value.errors == ["dhcp: 'maybe' is not a boolean"]


@pytest.mark.parametrize("text,message", [
    ("https://api.example.com", "h: 'https://api.example.com' is a URL; write the host alone (host: api.example.com) "
                                "and its port in ports (ports: [443])"),
    ("http://user@api.example.com:8080/v1?x=1", "h: 'http://user@api.example.com:8080/v1?x=1' is a URL; write the host "
                                                "alone (host: api.example.com) and its port in ports (ports: [8080])"),
    ("https://[fd00::1]/", "h: 'https://[fd00::1]/' is a URL; write the host alone (host: fd00::1) and its port in "
                           "ports (ports: [443])"),
    ("git+ssh://git.example.com", "h: 'git+ssh://git.example.com' is a URL; write the host alone (host: git.example.com)"),
    ("api.example.com:443", "h: 'api.example.com:443' has a port; write the host alone (host: api.example.com) and "
                            "the port in ports (ports: [443])"),
    ("198.18.1.1:53", "h: '198.18.1.1:53' has a port; write the host alone (host: 198.18.1.1) and the port in "
                      "ports (ports: [53])"),
    ("[fd00::1]:443", "h: '[fd00::1]:443' has a port; write the host alone (host: fd00::1) and the port in "
                      "ports (ports: [443])"),
])
def test_a_url_or_a_port_in_a_host_says_what_to_write(text, message):
    with pytest.raises(ValueError) as exc:
        P.parse_host(text, "h")
    assert str(exc.value) == message


def test_an_ipv6_address_is_not_taken_for_a_host_with_a_port():
    assert P.parse_host("fd00::443", "h") == ("ipv6", "fd00::443/128")


@pytest.mark.parametrize("option,value,message", [
    ("dns_servers", "198.18.0.53", "dns_servers: '198.18.0.53' is a string, not a list; write a list: ['198.18.0.53']"),
    ("dns_servers", "198.18.0.53, 198.18.0.54",
     "dns_servers: '198.18.0.53, 198.18.0.54' is a string, not a list; write a list: ['198.18.0.53', '198.18.0.54']"),
    ("families", "ipv4", "families: 'ipv4' is a string, not a list; write a list: ['ipv4']"),
    ("scope_networks", "docker0", "scope_networks: 'docker0' is a string, not a list; write a list: ['docker0']"),
])
def test_a_string_for_a_list_is_one_error_naming_the_field(option, value, message):
    params = dict(BASE, allow=[dict(name="api", host="198.18.1.10")], **{option: value})
    if option == "scope_networks":
        params["scope"] = "none"
    with pytest.raises(P.PolicyError) as exc:
        validated_policy(params, lambda name: 1000)
    assert exc.value.errors == [message]


def test_a_list_of_addresses_is_one_destination():
    hosts = ["198.18.0.1", "fd00:a9e::1", "198.18.0.1", "198.18.4.0/24", "FD00:A9E::1"]
    policy = validated_policy(base(allow=[dest(name="pool", host=hosts)]), lookup)
    (pool,) = policy.allow
    assert pool.kind == "networks" and pool.name == "pool"
    # In the order given, each once (an address written twice, or in two spellings, is one network).
    assert pool.networks == (("ipv4", "198.18.0.1/32"), ("ipv6", "fd00:a9e::1/128"), ("ipv4", "198.18.4.0/24"))
    assert pool.host == "198.18.0.1/32, fd00:a9e::1/128, 198.18.4.0/24"
    assert P.literal_networks(pool, ["ipv4"]) == {"ipv4": ["198.18.0.1/32", "198.18.4.0/24"]}
    many = validated_policy(base(allow=[dest(name="many", host=["198.18.0.%d" % i for i in range(1, 11)])]), lookup)
    assert many.allow[0].host == "198.18.0.1/32, 198.18.0.2/32 and 8 more"


def test_a_list_has_no_server_name_for_the_gate():
    params = base(allow=[dest(host=["198.18.0.1"], tls=True)], tls_gate="enforce", tls_gate_user="agent", scope="users",
                  users=["agent"])
    with pytest.raises(P.PolicyError) as info:
        validated_policy(params, lookup)
    assert "allow[0].host: '198.18.0.1/32' holds addresses and networks; an address has no server name" in str(info.value)
