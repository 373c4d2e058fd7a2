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

from .conftest import fake_host

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


def test_read_routes_asks_both_families_and_the_links_and_warns_on_failure():
    asked = []
    links = json.dumps([{"ifname": "eth0", "addr_info": []}, {"ifname": "br0", "linkinfo": {"info_kind": "bridge"}},
                        {"ifname": "eth1", "master": "br0"},
                        {"ifname": "eth0.7", "link": "eth0", "linkinfo": {"info_kind": "vlan"}},
                        {"ifname": "docker0", "linkinfo": {"info_kind": "bridge"}}, {"ifname": "veth1", "master": "docker0"},
                        {"ifname": "wg0", "linkinfo": {"info_kind": "wireguard"}}])

    def run(argv):
        asked.append(argv)
        if "route" in argv:
            return (0, "[]", "") if "-4" in argv else (1, "", "boom")
        return 0, links, ""
    routes, lan, warnings = N.read_routes(fake_host(run, is_physical=lambda name: name in ("eth0", "eth1")))
    assert (routes, lan) == ([], {"eth0", "eth1", "br0", "eth0.7"})
    assert warnings == ["`ip -j -6 route show table all` failed (rc=1: boom): the routes are not known"]
    assert asked == [N.ROUTE_ARGV["ipv4"], N.ROUTE_ARGV["ipv6"], N.IP_ARGV]


DESTINATIONS = ["203.0.113.10", "2001:db8::10", "192.0.2.53"]


@pytest.mark.parametrize("scope", [["podman1"], ["podman+"], ["podman1", "docker0", "br-+"],
                                   ["198.18.0.0/24", "fd00:a9e:1::/64"], ["198.18.0.0/24"], ["veth+"]])
def test_the_guest_networks_alone_are_accepted(scope):
    assert N.uplink_errors(scope, fixture_routes(), set(), DESTINATIONS) == []


@pytest.mark.parametrize("scope, index, pattern", [(["e+"], 0, "e+"), (["podman1", "eth0"], 1, "eth0"), (["+"], 0, "+")])
def test_an_interface_element_matching_the_uplink_is_refused(scope, index, pattern):
    errors = N.uplink_errors(scope, fixture_routes(), set(), DESTINATIONS)
    assert errors == ["scope_networks[%d]: %r matches eth0, which carries the default route (0.0.0.0/0): every "
                      "connection from a covered network out of it would count as 'between covered networks' and pass "
                      "unchecked; name the container or VM networks only (docker0, br-+, virbr+ or their CIDRs)"
                      % (index, pattern)], errors


LAB = [{"dst": "198.18.1.0/24", "dev": "agh0", "table": "main"}, {"dst": "fd00:a9e:2::/64", "dev": "agh0", "table": "main"},
       {"dst": "198.19.31.0/24", "dev": "agbr1", "table": "main"}, {"dst": "198.18.48.0/24", "dev": "agtg-h0", "table": "main"}]


def test_the_interface_with_the_route_to_the_policys_destinations_is_refused():
    """No default route (the netns lab): agh0 carries the route to the allowed API and the resolver."""
    errors = N.uplink_errors(["ag+"], LAB, set(), ["198.18.1.53", "198.18.1.10/32", "fd00:a9e:2::10"])
    assert errors == ["scope_networks[0]: 'ag+' matches agh0, which carries the route to 198.18.1.0/24 (198.18.1.53/32), "
                      "a destination of the policy: every connection from a covered network out of it would count as "
                      "'between covered networks' and pass unchecked; name the container or VM networks only (docker0, "
                      "br-+, virbr+ or their CIDRs)"]
    # The bridge, and a container's own veth link (a routed container network, as bench/tlsgate's), are not ways out.
    assert N.uplink_errors(["agbr+", "agtg-h0", "198.18.48.0/24"], LAB, set(), ["198.18.1.10"]) == []
    # Without destinations, a link is no way out (as long as it has no default route and is no LAN port).
    assert N.uplink_errors(["ag+"], LAB, set(), []) == []


def test_a_port_of_the_hosts_lan_is_refused_even_without_routes():
    errors = N.uplink_errors(["docker0", "e+"], [], {"eth1"}, [])
    assert errors and errors[0].startswith("scope_networks[1]: 'e+' matches eth1, which carries the host's LAN (a "
                                           "physical device, or a VLAN, bond or bridge on one)")


@pytest.mark.parametrize("cidr", ["198.18.0.0/16", "0.0.0.0/0", "fd00::/8", "192.0.2.0/24", "198.18.0.0/23"])
def test_a_cidr_wider_than_the_guest_networks_is_refused(cidr):
    """Addresses of the element that no inner route takes go out of eth0 (its default route or its LAN)."""
    errors = N.uplink_errors(["198.18.0.0/24", cidr], fixture_routes(), set(), DESTINATIONS)
    assert len(errors) == 1 and errors[0].startswith("scope_networks[1]: %r contains " % cidr), errors
    left = ipaddress.ip_network(errors[0].split(" contains ", 1)[1].split(",", 1)[0])
    assert left.subnet_of(ipaddress.ip_network(cidr)) and not left.overlaps(ipaddress.ip_network("198.18.0.0/24"))
    assert "which this host routes out of eth0" in errors[0], errors


def test_a_cidr_holding_a_route_out_of_the_lan_is_refused():
    routes = [{"dst": "10.88.0.0/16", "dev": "cni-podman0", "table": "main"},
              {"dst": "10.88.5.0/24", "dev": "eth1", "table": "main"}]
    assert N.uplink_errors(["10.88.0.0/16"], routes, {"eth1"}, []) == [
        "scope_networks[0]: '10.88.0.0/16' contains 10.88.5.0/24, which this host routes out of eth1 (by the route to "
        "10.88.5.0/24, which carries the host's LAN (a physical device, or a VLAN, bond or bridge on one)): a "
        "connection from a covered network to it would count as 'between covered networks' and pass unchecked; give "
        "the container or VM networks' own CIDRs"]
    # Without that route, and with no default route, nothing else leaves by a way out.
    assert N.uplink_errors(["10.88.0.0/16"], routes[:1], {"eth1"}, []) == []
    # Several inner networks that fill the element together, beside a default route.
    halves = [{"dst": "10.88.0.0/17", "dev": "a0", "table": "main"}, {"dst": "10.88.128.0/17", "dev": "a1", "table": "main"},
              {"dst": "0.0.0.0/0", "dev": "eth0", "table": "main"}]
    assert N.uplink_errors(["10.88.0.0/16"], halves, set(), []) == []
    assert N.uplink_errors(["10.88.0.0/15"], halves, set(), [])[0].startswith(
        "scope_networks[0]: '10.88.0.0/15' contains 10.89.0.0/16, which this host routes out of eth0 (by its default route")


def test_lan_devices_follow_vlans_bonds_and_bridges():
    links = [{"name": n, "kind": k, "master": m, "link": l, "addresses": []} for n, k, m, l in [
        ("eno1", "", "bond0", None), ("bond0", "bond", None, None), ("bond0.5", "vlan", None, "bond0"),
        ("br0", "bridge", None, None), ("eno2", "", "br0", None), ("docker0", "bridge", None, None),
        ("veth9", "veth", "docker0", None), ("mv0", "macvlan", None, "eno2")]]
    assert N.lan_devices(links, lambda name: name.startswith("eno")) == {"eno1", "bond0", "bond0.5", "br0", "eno2", "mv0"}


def test_a_destination_inside_a_guest_bridge_does_not_make_it_a_way_out():
    """A trusted resolver in a container on docker0 (172.17.0.2): docker0 stays a covered network."""
    routes = [{"dst": "172.17.0.0/16", "dev": "docker0", "table": "main"}, {"dst": "0.0.0.0/0", "dev": "eth0", "table": "main"}]
    assert N.uplink_errors(["docker0"], routes, set(), ["172.17.0.2"], ["docker0"]) == []
    # Not a guest bridge (a veth of the host's, the lab's agh0): the route to a destination makes it a way out.
    assert N.uplink_errors(["docker0"], routes, set(), ["172.17.0.2"], [])[0].startswith(
        "scope_networks[0]: 'docker0' matches docker0, which carries the route to 172.17.0.0/16 (172.17.0.2/32)")
