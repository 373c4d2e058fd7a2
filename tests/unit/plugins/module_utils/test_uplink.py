"""scope_networks that reach the host's way out (issue 24, item 6): _netdev.parse_routes and uplink_errors.

The route fixtures are `ip -j -4|-6 route show table all` of a Debian 12 machine (uplink eth0 with the default
routes of both families, a podman bridge podman1 with 198.18.0.0/24 and fd00:a9e:1::/64, veths without
addresses), captured with: ip -j -4 route show table all > tests/unit/fixtures/ip-route-4-all.json (and -6).
"""
import ipaddress
import json
import os

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _netdev as N

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")
PODMAN1 = {"name": "podman1", "runtime": "podman", "networks": {"ipv4": ["198.18.0.0/24"], "ipv6": ["fd00:a9e:1::/64"]}}


def fixture_routes():
    routes = []
    for family, name in (("ipv4", "ip-route-4-all.json"), ("ipv6", "ip-route-6-all.json")):
        with open(os.path.join(FIXTURES, name)) as handle:
            routes.extend(N.parse_routes(handle.read(), family))
    return routes


def test_routes_parsed_from_real_ip_output():
    routes = fixture_routes()
    assert {"dst": "0.0.0.0/0", "dev": "eth0", "table": "main"} in routes
    assert {"dst": "::/0", "dev": "eth0", "table": "main"} in routes
    assert {"dst": "198.18.0.0/24", "dev": "podman1", "table": "main"} in routes
    # The host's own addresses (table local), multicast and link-local routes forward nothing.
    assert not [r for r in routes if r["table"] == "local" or r["dst"].startswith(("fe80", "ff", "127."))]
    assert sorted(set(r["dev"] for r in routes)) == ["eth0", "podman1"]


def test_multipath_host_routes_and_refusals():
    text = json.dumps([
        {"dst": "10.9.0.0/16", "nexthops": [{"gateway": "10.0.0.1", "dev": "eth0"}, {"gateway": "10.1.0.1", "dev": "eth1"}]},
        {"dst": "10.8.0.7", "dev": "wg0"}, {"type": "blackhole", "dst": "10.66.0.0/16"},
        {"type": "unreachable", "dst": "10.67.0.0/16", "dev": "lo"}, {"dst": "169.254.0.0/16", "dev": "eth0"}])
    assert N.parse_routes(text, "ipv4") == [
        {"dst": "10.9.0.0/16", "dev": "eth0", "table": "main"}, {"dst": "10.9.0.0/16", "dev": "eth1", "table": "main"},
        {"dst": "10.8.0.7/32", "dev": "wg0", "table": "main"}]
    with pytest.raises(ValueError):
        N.parse_routes("{}", "ipv4")


def test_read_routes_asks_both_families_and_warns_on_failure():
    asked = []

    def run(argv):
        asked.append(argv)
        return (0, "[]", "") if "-4" in argv else (1, "", "boom")
    assert N.read_routes(run) == ([], ["`ip -j -6 route show table all` failed (rc=1: boom): the routes are not known"])
    assert asked == [N.ROUTE_ARGV["ipv4"], N.ROUTE_ARGV["ipv6"]]


@pytest.mark.parametrize("scope", [["podman1"], ["podman+"], ["podman1", "docker0", "br-+"],
                                   ["198.18.0.0/24", "fd00:a9e:1::/64"], ["198.18.0.0/24"], ["veth+"]])
def test_the_guest_networks_alone_are_accepted(scope):
    assert N.uplink_errors(scope, [PODMAN1], fixture_routes()) == []


@pytest.mark.parametrize("scope, index, pattern", [(["e+"], 0, "e+"), (["podman1", "eth0"], 1, "eth0"), (["+0"], 0, None)])
def test_an_interface_element_matching_the_uplink_is_refused(scope, index, pattern):
    if pattern is None:
        return  # "+0" is no iptables pattern (the policy refuses it); nothing to say here
    errors = N.uplink_errors(scope, [PODMAN1], fixture_routes())
    assert len(errors) == 1
    assert errors[0].startswith("scope_networks[%d]: %r matches eth0, which carries the default route (0.0.0.0/0)"
                                % (index, pattern)), errors


def test_a_route_outside_the_covered_networks_is_refused_too():
    """No default route through it, but the path to the lab servers (the netns lab's agh0)."""
    routes = [{"dst": "198.18.1.0/24", "dev": "agh0", "table": "main"},
              {"dst": "198.19.31.0/24", "dev": "agbr1", "table": "main"}]
    bridge = {"name": "agbr1", "runtime": "unknown", "networks": {"ipv4": ["198.19.31.0/24"], "ipv6": []}}
    errors = N.uplink_errors(["ag+"], [bridge], routes)
    assert errors == ["scope_networks[0]: 'ag+' matches agh0, which carries the route to 198.18.1.0/24, outside the "
                      "covered networks: every connection from a covered network out of it would count as 'between "
                      "covered networks' and pass unchecked; name the container or VM networks only (docker0, br-+, "
                      "virbr+ or their CIDRs)"]
    assert N.uplink_errors(["agbr+"], [bridge], routes) == []
    # A CIDR element covering that route makes it a covered network (the operator said so).
    assert N.uplink_errors(["ag+", "198.18.1.0/24"], [bridge], routes) == []


@pytest.mark.parametrize("cidr", ["198.18.0.0/16", "0.0.0.0/0", "fd00::/8", "192.0.2.0/24", "198.18.0.0/23"])
def test_a_cidr_wider_than_the_guest_networks_is_refused(cidr):
    """Addresses of the element that no guest network's route takes go out of eth0 (its default route or its LAN)."""
    errors = N.uplink_errors(["198.18.0.0/24", cidr], [PODMAN1], fixture_routes())
    assert len(errors) == 1 and errors[0].startswith("scope_networks[1]: %r contains " % cidr), errors
    left = ipaddress.ip_network(errors[0].split(" contains ", 1)[1].split(",", 1)[0])
    assert left.subnet_of(ipaddress.ip_network(cidr)) and not left.overlaps(ipaddress.ip_network("198.18.0.0/24"))
    assert "which this host routes out of eth0" in errors[0], errors


def test_a_more_specific_uplink_route_inside_a_cidr_is_refused():
    routes = [{"dst": "10.88.0.0/16", "dev": "cni-podman0", "table": "main"},
              {"dst": "10.88.5.0/24", "dev": "eth1", "table": "main"}]
    bridge = {"name": "cni-podman0", "runtime": "podman", "networks": {"ipv4": ["10.88.0.0/16"], "ipv6": []}}
    assert N.uplink_errors(["10.88.0.0/16"], [bridge], routes) == [
        "scope_networks[0]: '10.88.0.0/16' contains 10.88.5.0/24, which this host routes out of eth1 (route to "
        "10.88.5.0/24): a connection from a covered network to it would count as 'between covered networks' and "
        "pass unchecked; give the container or VM networks' own CIDRs"]
    # Without that route, and with no default route, nothing else leaves by another interface.
    assert N.uplink_errors(["10.88.0.0/16"], [bridge], routes[:1]) == []
    # Several guest networks that fill the element together.
    halves = [{"dst": "10.88.0.0/17", "dev": "a0", "table": "main"}, {"dst": "10.88.128.0/17", "dev": "a1", "table": "main"},
              {"dst": "0.0.0.0/0", "dev": "eth0", "table": "main"}]
    bridges = [{"name": "a%d" % i, "runtime": "unknown", "networks": {"ipv4": [r["dst"]], "ipv6": []}}
               for i, r in enumerate(halves[:2])]
    assert N.uplink_errors(["10.88.0.0/16"], bridges, halves) == []
