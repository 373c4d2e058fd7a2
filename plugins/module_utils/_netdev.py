# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The container and VM networks of a host, the runtimes behind them and who may drive those runtimes.

Private to agentguard.hardening: no compatibility promise outside the collection.
Read-only: the readers ask the host through a HostIO (_hostio) and the rest is pure, so the logic is tested
without root and without the runtimes installed.

Why: the allowlist covers forwarded traffic only for the networks in scope_networks. A guest bridge
(docker0, virbr0, ...) that no element covers forwards its guests' traffic around the allowlist, and
a restricted user who can connect to a runtime's socket can start such a guest, or one on the host's
network. Both are reported, so a host is never called hardened while one is open.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import re

# Port kinds whose lower device ("link") or enslaved ports decide whether they reach the host's LAN.
LOWER_KINDS = ("vlan", "macvlan", "macvtap", "ipvlan")
AGGREGATE_KINDS = ("bond", "team")

# (runtime, pattern of its bridge names), first match wins: cni-podman* before cni*.
RUNTIME_NAMES = (
    ("docker", re.compile(r"^(docker0|br-[0-9a-f]{12})$")),
    ("podman", re.compile(r"^(podman|cni-podman)")),
    ("kubernetes", re.compile(r"^(cni|flannel|cali)")),
    ("libvirt", re.compile(r"^virbr")),
    ("lxd", re.compile(r"^lxdbr")),
)

# What each runtime leaves on a host: systemd units, binaries, API sockets (in the order looked at).
RUNTIMES = (
    ("docker", {"units": ["docker.service"],
                "binaries": ["/usr/bin/docker", "/usr/bin/dockerd"],
                "sockets": ["/run/docker.sock", "/var/run/docker.sock"]}),
    ("podman", {"units": ["podman.socket", "podman.service"],
                "binaries": ["/usr/bin/podman"],
                "sockets": ["/run/podman/podman.sock"]}),
    ("containerd", {"units": ["containerd.service"],
                    "binaries": ["/usr/bin/containerd"],
                    "sockets": ["/run/containerd/containerd.sock"]}),
    ("libvirt", {"units": ["libvirtd.service", "virtqemud.service"],
                 "binaries": ["/usr/sbin/libvirtd"],
                 "sockets": ["/run/libvirt/libvirt-sock"]}),
    ("lxd", {"units": ["lxd.service", "snap.lxd.daemon.service"],
             "binaries": ["/usr/bin/lxd", "/snap/bin/lxd"],
             "sockets": ["/var/snap/lxd/common/lxd/unix.socket", "/var/lib/lxd/unix.socket"]}),
)
RUNTIME_UNITS = [unit for _name, evidence in RUNTIMES for unit in evidence["units"]]
RUNTIME_SOCKETS = [(sock, name) for name, evidence in RUNTIMES for sock in evidence["sockets"]]
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
IP_ARGV = ["ip", "-j", "-d", "addr", "show"]


def parse_links(ip_json_text):
    """The links of `ip -j -d addr show` output, in its order.

    Each is {"name", "kind" (linkinfo.info_kind, "" for a plain device), "addresses" (global scope
    only, as "ADDRESS/PREFIXLEN"), "master" (the bridge or bond it is enslaved to, or None),
    "link" (the lower device of a VLAN or the peer of a veth, or None)}.
    Raises ValueError when the text is not the JSON list iproute2 prints.
    """
    data = json.loads(ip_json_text or "[]")
    if not isinstance(data, list):
        raise ValueError("ip -j printed %s, not a list of links" % type(data).__name__)
    links = []
    for entry in data:
        if not isinstance(entry, dict) or not entry.get("ifname"):
            continue
        addresses = []
        for addr in entry.get("addr_info") or []:
            if addr.get("scope") == "global" and addr.get("local") and addr.get("family") in ("inet", "inet6"):
                addresses.append("%s/%s" % (addr["local"], addr.get("prefixlen", 32 if addr["family"] == "inet" else 128)))
        links.append({
            "name": entry["ifname"],
            "kind": (entry.get("linkinfo") or {}).get("info_kind") or "",
            "addresses": addresses,
            "master": entry.get("master") or None,
            "link": entry.get("link") or None,
        })
    return links


def guess_runtime(name):
    """The runtime that names its bridges like `name` (docker, podman, kubernetes, libvirt, lxd or unknown)."""
    for runtime, pattern in RUNTIME_NAMES:
        if pattern.match(name):
            return runtime
    return "unknown"


def _networks(addresses):
    """{"ipv4": [...], "ipv6": [...]}: the network CIDRs of the addresses, each once, in their order."""
    found = {"ipv4": [], "ipv6": []}
    for address in addresses:
        network = ipaddress.ip_interface(address).network
        family = "ipv4" if network.version == 4 else "ipv6"
        if str(network) not in found[family]:
            found[family].append(str(network))
    return found


def guest_bridges(links, is_physical):
    """The bridges that are container or VM networks, sorted by name.

    A bridge counts unless one of its ports reaches the host's LAN: a physical device
    (is_physical(name): /sys/class/net/NAME/device exists), or a VLAN/macvlan on one, or a bond with
    a physical slave. Such a bridge (br0 with eth0) is the host's own uplink, not a guest network.
    Each is {"name", "networks": {"ipv4": [...], "ipv6": [...]}, "runtime": guess from the name}.
    """
    lan = lan_devices(links, is_physical)
    bridges = []
    for link in links:
        if link["kind"] != "bridge" or link["name"] in lan:
            continue
        bridges.append({"name": link["name"], "networks": _networks(link["addresses"]),
                        "runtime": guess_runtime(link["name"])})
    return sorted(bridges, key=lambda bridge: bridge["name"])


def lan_devices(links, is_physical):
    """The names of the links that reach the host's LAN: physical devices, VLANs, macvlans and bonds on them, and
    bridges with such a port (br0 with eth0). A veth, a container bridge or a tunnel is not one of them."""
    by_name = dict((link["name"], link) for link in links)

    def reaches(name, seen):
        if name in seen or name not in by_name:
            return False
        seen.add(name)
        link = by_name[name]
        if is_physical(name):
            return True
        if link["kind"] in LOWER_KINDS and link.get("link"):
            return reaches(link["link"], seen)
        if link["kind"] in AGGREGATE_KINDS + ("bridge",):
            return any(reaches(port["name"], seen) for port in links if port["master"] == name)
        return False
    return set(link["name"] for link in links if reaches(link["name"], set()))


def iface_matches(pattern, name):
    """Whether iptables' -i/-o `pattern` matches interface `name`: exactly, or as a prefix with a trailing "+"."""
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return pattern == name


def _split_scope(scope_networks):
    """(interface patterns, networks) of scope_networks; an element that is no CIDR is an interface name."""
    patterns, networks = [], []
    for element in scope_networks or []:
        text = str(element).strip()
        try:
            networks.append((text, ipaddress.ip_network(text, strict=False)))
        except ValueError:
            patterns.append(text)
    return patterns, networks


def coverage(scope_networks, bridges):
    """(covered, uncovered): which guest bridges the forwarded-traffic rules of scope_networks reach.

    A bridge is covered when an interface element matches its name, or when, for each family in which
    it has addresses, every one of its networks lies inside a CIDR element of that family. A bridge
    without any address is not routed by the host and counts as covered by CIDRs.
    covered: [{"name", "runtime", "by": [elements]}]; uncovered: [{"name", "runtime", "families",
    "networks", "reason"}] naming only the families (and their networks) that no element covers.
    Both sorted by name.
    """
    patterns, networks = _split_scope(scope_networks)
    covered, uncovered = [], []
    for bridge in sorted(bridges, key=lambda item: item["name"]):
        matching = [pattern for pattern in patterns if iface_matches(pattern, bridge["name"])]
        if matching:
            covered.append({"name": bridge["name"], "runtime": bridge["runtime"], "by": matching})
            continue
        by, families, missing = [], [], []
        for family in ("ipv4", "ipv6"):
            for cidr in bridge["networks"].get(family) or []:
                net = ipaddress.ip_network(cidr)
                inside = [text for text, element in networks
                          if element.version == net.version and net.subnet_of(element)]
                if inside:
                    by.extend(text for text in inside if text not in by)
                else:
                    missing.append(cidr)
                    if family not in families:
                        families.append(family)
        if not missing:
            covered.append({"name": bridge["name"], "runtime": bridge["runtime"], "by": by})
            continue
        uncovered.append({
            "name": bridge["name"], "runtime": bridge["runtime"], "families": families, "networks": missing,
            "reason": "%s (%s) forwards %s traffic of %s around the allowlist: no interface element of "
                      "scope_networks matches it and no CIDR element contains %s" % (
                          bridge["name"], bridge["runtime"], " and ".join(families), ", ".join(missing),
                          "it" if len(missing) == 1 else "them"),
        })
    return covered, uncovered


def docker_firewall_backend(host):
    """"nftables" when /etc/docker/daemon.json selects Docker's nftables firewall backend (Docker 29 and later),
    else "iptables" (also without Docker, or with a file Docker would refuse)."""
    return _docker_firewall_backend(host.read_text(DOCKER_DAEMON_JSON))[0]


def _docker_firewall_backend(text):
    """(backend, error) from the text of /etc/docker/daemon.json (None: no file)."""
    if text is None or not text.strip():
        return "iptables", None
    try:
        config = json.loads(text)
    except ValueError as exc:
        return "iptables", "%s is not valid JSON (%s); Docker refuses to start with it" % (DOCKER_DAEMON_JSON, exc)
    if not isinstance(config, dict):
        return "iptables", "%s is not a JSON object" % DOCKER_DAEMON_JSON
    return ("nftables" if config.get("firewall-backend") == "nftables" else "iptables"), None


def detect_runtimes(host, units):
    """The container and VM runtimes the host shows any sign of, in the order of RUNTIMES.

    units: {unit: what systemctl is-active says} (empty without systemd). Each runtime is {"name", "active" (a unit is active or its API socket
    exists), "evidence": ["unit docker.service active", "binary /usr/bin/docker", "socket ..."],
    "sockets": [the API sockets that exist]}. Docker also has "firewall_backend" (from daemon.json:
    "nftables" or "iptables") and, when daemon.json cannot be read as JSON, "config_error".
    """
    found = []
    for name, signs in RUNTIMES:
        active = [unit for unit in signs["units"] if units.get(unit) == "active"]
        binaries = [path for path in signs["binaries"] if host.exists(path)]
        sockets = [path for path in signs["sockets"] if host.exists(path)]
        evidence = (["unit %s active" % unit for unit in active] + ["binary %s" % path for path in binaries]
                    + ["socket %s" % path for path in sockets])
        if not evidence:
            continue
        runtime = {"name": name, "active": bool(active or sockets), "evidence": evidence, "sockets": sockets}
        if name == "docker":
            runtime["firewall_backend"], error = _docker_firewall_backend(host.read_text(DOCKER_DAEMON_JSON))
            if error:
                runtime["config_error"] = error
        found.append(runtime)
    return found


def _access(uid, groups, owner, group, mode):
    """How a process of uid with groups (gid -> name) may connect to a socket (write permission), or None."""
    if uid == 0:
        return "root"
    # The kernel applies one class only: the owner's bits to the owner, the group's to a member.
    if uid == owner:
        return "owner" if mode & 0o200 else None
    if group in groups:
        return "group %s" % groups[group] if mode & 0o020 else None
    return "others" if mode & 0o002 else None


def runtime_access(host, users, sockets=None):
    """Which runtime API sockets each restricted user can connect to.

    users: [(name, uid)]; sockets: [(path, runtime)], RUNTIME_SOCKETS by default (host.stat says whether each
    exists and its owner, group and mode; host.groups a user's groups, the primary one too). Write permission on
    the socket decides (ACLs and the directories on the way are not looked at). Returns [{"user", "uid", "socket",
    "runtime", "via"}], via being "owner", "group NAME", "others" or "root", in the order of users and sockets.
    """
    sockets = RUNTIME_SOCKETS if sockets is None else sockets
    stats = [(path, runtime, host.stat(path)) for path, runtime in sockets]
    stats = [(path, runtime, info) for path, runtime, info in stats if info is not None]
    found = []
    for name, uid in users:
        groups = dict((gid, group) for gid, group in (host.groups(name) if stats else []))
        for path, runtime, (owner, group, mode) in stats:
            via = _access(uid, groups, owner, group, mode)
            if via:
                found.append({"user": name, "uid": uid, "socket": path, "runtime": runtime, "via": via})
    return found


def read_networks(host):
    """(guest bridges, warnings) of this host: runs `ip -j -d addr show`."""
    try:
        rc, out, err = host.run(IP_ARGV)
    except (IOError, OSError) as exc:  # ip is not installed
        return [], ["cannot list the network links (%s): guest bridges are not known" % exc]
    if rc != 0:
        return [], ["`%s` failed (rc=%s: %s): guest bridges are not known" % (" ".join(IP_ARGV), rc, (err or out).strip())]
    try:
        links = parse_links(out)
    except ValueError as exc:
        return [], ["`%s` printed no JSON (%s): guest bridges are not known" % (" ".join(IP_ARGV), exc)]
    return guest_bridges(links, host.is_physical), []


def read_host(host, users, units, networks=True):
    """{"bridges", "runtimes", "runtime_access", "warnings"}: what egress_host_state adds to its answer.

    networks=False leaves out bridges and runtimes (and does not run ip). users: [(name, uid)] for
    runtime_access; units: {unit: what systemctl is-active says} for detect_runtimes. Sockets are named by
    their canonical path (host.realpath): /var/run/docker.sock and /run/docker.sock are one socket, named once.
    """
    sockets, seen = [], set()
    for path, runtime in RUNTIME_SOCKETS:
        key = host.realpath(path)
        if key not in seen:
            seen.add(key)
            sockets.append((path, runtime))
    found = {"warnings": [], "runtime_access": runtime_access(host, users, sockets)}
    if networks:
        found["bridges"], found["warnings"] = read_networks(host)
        kept = set(path for path, _runtime in sockets)
        found["runtimes"] = detect_runtimes(host, units)
        for runtime in found["runtimes"]:
            runtime["sockets"] = [path for path in runtime["sockets"] if path in kept]
            if runtime.get("config_error"):
                found["warnings"].append(runtime["config_error"])
    return found


def runtime_users(host, names):
    """[(name, uid)] of user names or numeric uids; a name without a passwd entry is left out."""
    found = []
    for name in names:
        try:
            found.append((name, host.uid_of(name)))
        except KeyError:
            if name.isdigit():
                found.append((name, int(name)))
    return found


# The forward path's "between covered networks" (a connection from a covered network that leaves by an interface an
# interface element matches, or to an address inside a CIDR element, RETURNs unchecked) is safe only while no element
# reaches the host's way out. These read the host's routes and say which element does.
ROUTE_ARGV = {"ipv4": ["ip", "-j", "-4", "route", "show", "table", "all"],
              "ipv6": ["ip", "-j", "-6", "route", "show", "table", "all"]}
# Kernel route types that forward nothing to a device (local, broadcast... are the host's own addresses).
UNICAST_TYPES = ("", "unicast")
LINK_LOCAL_NETS = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))


def parse_routes(ip_json_text, family):
    """The unicast routes of `ip -j -4|-6 route show table all` output, as [{"dst": network, "dev", "table"}].

    "default" is 0.0.0.0/0 or ::/0, a host route its /32 or /128; a multipath route gives one entry per next hop.
    Local, broadcast, multicast, anycast, blackhole, unreachable and prohibit routes are left out (they send nothing
    through a device), and so are link-local destinations (never forwarded). Raises ValueError on other text.
    """
    data = json.loads(ip_json_text or "[]")
    if not isinstance(data, list):
        raise ValueError("ip -j printed %s, not a list of routes" % type(data).__name__)
    routes = []
    for entry in data:
        if not isinstance(entry, dict) or (entry.get("type") or "") not in UNICAST_TYPES:
            continue
        dst = entry.get("dst") or ""
        if dst == "default":
            dst = "0.0.0.0/0" if family == "ipv4" else "::/0"
        try:
            network = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if any(network.version == local.version and network.subnet_of(local) for local in LINK_LOCAL_NETS):
            continue
        devices = [hop.get("dev") for hop in entry.get("nexthops") or [] if isinstance(hop, dict)] or [entry.get("dev")]
        for dev in devices:
            if dev:
                routes.append({"dst": str(network), "dev": dev, "table": str(entry.get("table") or "main")})
    return routes


def read_routes(host):
    """(routes, lan, warnings) of this host: the routes of both families (parse_routes) and the links that reach its
    LAN (lan_devices, from `ip -j -d addr show`)."""
    routes, lan, warnings = [], set(), []
    for family in ("ipv4", "ipv6"):
        argv = ROUTE_ARGV[family]
        try:
            rc, out, err = host.run(argv)
            if rc != 0:
                raise ValueError("rc=%s: %s" % (rc, (err or out).strip()))
            routes.extend(parse_routes(out, family))
        except (IOError, OSError, ValueError) as exc:
            warnings.append("`%s` failed (%s): the routes are not known" % (" ".join(argv), exc))
    try:
        rc, out, err = host.run(IP_ARGV)
        if rc != 0:
            raise ValueError("rc=%s: %s" % (rc, (err or out).strip()))
        lan = lan_devices(parse_links(out), host.is_physical)
    except (IOError, OSError, ValueError) as exc:
        warnings.append("`%s` failed (%s): the host's LAN ports are not known" % (" ".join(IP_ARGV), exc))
    return routes, lan, warnings


def _subtract(pieces, network):
    """pieces (networks) without the addresses of network."""
    left = []
    for piece in pieces:
        if piece.version != network.version or not piece.overlaps(network):
            left.append(piece)
        elif not piece.subnet_of(network):
            left.extend(piece.address_exclude(network))
    return left


def best_route(routes, network):
    """The route the host takes to the first address of network (longest prefix; None when it has none)."""
    address = network.network_address
    best = None
    for route in routes:
        dst = ipaddress.ip_network(route["dst"])
        if dst.version == address.version and address in dst and (best is None or dst.prefixlen > best[1].prefixlen):
            best = (route, dst)
    return best[0] if best else None


def uplinks(routes, lan=(), destinations=(), guests=()):
    """{interface: why it is a way out of the host}: the interfaces that carry a default route, the route to one of
    the policy's destinations (destinations: networks, the allowed addresses and the trusted resolvers; but a guest
    bridge, guests: names, that holds one, a resolver container say, is a covered network and no way out), or reach
    the host's LAN (lan: lan_devices)."""
    found = {}
    for route in routes:
        if ipaddress.ip_network(route["dst"]).prefixlen == 0:
            found.setdefault(route["dev"], "the default route (%s)" % route["dst"])
    for text in destinations:
        network = ipaddress.ip_network(str(text), strict=False)
        route = best_route(routes, network)
        if route is not None and route["dev"] not in guests:
            found.setdefault(route["dev"], "the route to %s (%s), a destination of the policy" % (route["dst"], network))
    for name in sorted(lan):
        found.setdefault(name, "the host's LAN (a physical device, or a VLAN, bond or bridge on one)")
    return found


def uplink_errors(scope_networks, routes, lan=(), destinations=(), guests=()):
    """Why scope_networks may not be used on this host: [] when no element reaches the host's way out.

    The forward path lets a connection from a covered network pass unchecked when it goes to another covered network:
    out of an interface that an interface element matches, or to an address inside a CIDR element. So no element may
    reach a way out of the host (uplinks: an interface with a default route, the route to one of the policy's
    destinations, or a port of the host's LAN):
    - an interface element must not match one (e+ and the uplink eth0; a list naming it);
    - a CIDR element must not contain an address that the host routes out of one (by the longest matching route:
      172.16.0.0/12 with only docker0's 172.17.0.0/16 sends 172.20.0.1 out by the default route).
    routes: parse_routes of both families; lan: lan_devices; destinations: the allowed networks and the trusted
    resolvers; guests: the names of the guest bridges (guest_bridges). Each error names the element, its value, the
    interface and why it is a way out.
    """
    ways_out = uplinks(routes, lan, destinations, guests)
    patterns, networks = _split_scope(scope_networks)
    errors = []
    elements = [str(element).strip() for element in scope_networks or []]
    for index, text in enumerate(elements):
        if text not in patterns:
            continue
        for name in sorted(ways_out):
            if iface_matches(text, name):
                errors.append("scope_networks[%d]: %r matches %s, which carries %s: every connection from a covered "
                              "network out of it would count as 'between covered networks' and pass unchecked; name "
                              "the container or VM networks only (docker0, br-+, virbr+ or their CIDRs)"
                              % (index, text, name, ways_out[name]))
                break
    inner = [ipaddress.ip_network(route["dst"]) for route in routes if route["dev"] not in ways_out]
    for index, text in enumerate(elements):
        element = dict(networks).get(text)
        if element is None:
            continue
        for route in routes:
            dst = ipaddress.ip_network(route["dst"])
            if route["dev"] not in ways_out or dst.version != element.version or not dst.overlaps(element):
                continue
            # The addresses of the element this route takes: those no more specific route inside the host takes.
            left = [dst if dst.subnet_of(element) else element]
            for other in inner:
                if other.version == dst.version and other.prefixlen > dst.prefixlen:
                    left = _subtract(left, other)
            if left:
                errors.append("scope_networks[%d]: %r contains %s, which this host routes out of %s (%s, which carries "
                              "%s): a connection from a covered network to it would count as 'between covered "
                              "networks' and pass unchecked; give the container or VM networks' own CIDRs"
                              % (index, text, left[0], route["dev"],
                                 "by its default route" if dst.prefixlen == 0 else "by the route to %s" % dst,
                                 ways_out[route["dev"]]))
                break
    return errors
