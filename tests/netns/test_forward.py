"""egress_rules' forward path (scope_networks) against real kernels.

A Docker-like host: the lab's host namespace (where the module runs) gets a bridge docker0
(198.19.30.1/24, fd00:d0c:30::1/64), forwarding on for both families and Docker's MASQUERADE rule; each
container is a namespace with a veth port on it and default routes via the bridge (conftest.Lab.add_bridge,
add_container). Connections leave the containers for the lab's peer namespace (allowed .10, forbidden .66,
resolver .53). What arrives is counted AT THE DESTINATION (conftest.Arrivals: counting rules in the
receiving namespace's raw PREROUTING), so "blocked" means that not one packet got there; denials are read
from the kernel log (conftest.kernel_log sets nf_log_all_netns=1 and restores it).
"""
import ipaddress
import os

import pytest

from .conftest import HERE, PYTHON, V4, V6, Arrivals, parse_target, sh

# A high log rate: every denial of a test must be logged, to prove each one (the default 10/minute
# with a burst of 20 would keep only the first 20 lines of a run).
POLICY = dict(
    allow=[dict(name="inference-api", host="api.test", ports=[443])],
    dns_servers=[V4["dns"], V6["dns"]],
    resolve_timeout=1.0,
    log_limit="100/second",
    log_burst=1000,
)
DOCKER_CIDRS = ["198.19.30.0/24", "fd00:d0c:30::/64"]

ALLOWED = ["tcp:%s:443" % V4["allowed"], "tcp:[%s]:443" % V6["allowed"]]
DNS = ["udp-dns:%s:api.test" % V4["dns"], "udp-dns:[%s]:api.test" % V6["dns"], "tcp-dns:%s:api.test" % V4["dns"]]
# Every way out that the allowlist does not name, over both families.
BLOCKED = [
    "tcp:%s:443" % V4["forbidden"], "tcp:[%s]:443" % V6["forbidden"],          # forbidden host, HTTPS
    "tcp:%s:80" % V4["forbidden"], "tcp:[%s]:80" % V6["forbidden"],            # forbidden host, HTTP
    "tcp:%s:80" % V4["allowed"], "tcp:[%s]:80" % V6["allowed"],                # allowed host, another port
    "tcp:%s:8443" % V4["allowed"], "tcp:[%s]:8443" % V6["allowed"],
    "udp:%s:443" % V4["allowed"], "udp:[%s]:443" % V6["allowed"],              # allowed host, UDP (QUIC)
    "udp-dns:%s:api.test" % V4["forbidden"], "udp-dns:[%s]:api.test" % V6["forbidden"],  # rogue resolver
    "tcp-dns:%s:api.test" % V4["forbidden"], "tcp-dns:[%s]:api.test" % V6["forbidden"],
    "tcp:%s:853" % V4["dns"], "tcp:[%s]:853" % V6["dns"],                      # trusted resolver, DNS over TLS
    "icmp:%s:echo" % V4["forbidden"], "icmp:[%s]:echo" % V6["forbidden"],      # ICMP echo
    "icmp:%s:echo" % V4["allowed"], "icmp:[%s]:echo" % V6["allowed"],
]
FORBIDDEN_443 = BLOCKED[:2]


@pytest.fixture
def docker(lab):
    """The lab with a Docker-like default bridge docker0 and one container on it (198.19.30.2)."""
    bridge = lab.add_bridge("docker0", 30)
    return lab.add_container(bridge, 2)


def full(address):
    """An address as the kernel's LOG lines print it (IPv6 in full, with leading zeros)."""
    return ipaddress.ip_address(address).exploded


def denials(lines, container, target, out=None):
    """The kernel log lines that record the forward path denying `target` to `container`."""
    kind, host, arg = parse_target(target)
    v6 = ":" in host
    need = ["[EGRESS-DENIED] ", "IN=%s " % container.bridge.name,
            "SRC=%s " % full(container.v6 if v6 else container.v4), "DST=%s " % full(host)]
    if out:
        need.append("OUT=%s " % out)
    if kind == "icmp":
        need.append("PROTO=ICMPv6 TYPE=128 " if v6 else "PROTO=ICMP TYPE=8 ")
    else:
        need += ["PROTO=%s " % ("UDP" if kind in ("udp", "udp-dns") else "TCP"),
                 "DPT=%s " % ("53" if kind.endswith("-dns") else arg)]
    return [l for l in lines if all(n in l for n in need)]


def assert_enforced(lab, container, kernel_log, blocked=None, allowed=None):
    """From the container: the allowed API and the trusted resolver answer; every other probe times
    out, arrives nowhere, and is logged with the container's address and bridge."""
    blocked = BLOCKED if blocked is None else blocked
    allowed = ALLOWED + DNS if allowed is None else allowed
    arrivals = Arrivals(lab.peer, allowed + blocked)
    mark = kernel_log.mark()
    results = lab.probe(allowed + blocked, ns=container.ns, timeout=1.0)
    assert {t: results[t] for t in allowed} == dict.fromkeys(allowed, "ok"), results
    assert {t: results[t] for t in blocked} == dict.fromkeys(blocked, "timeout"), results
    counts = arrivals.since()
    assert {t: counts[t] for t in blocked} == dict.fromkeys(blocked, 0), "blocked probes arrived: %s" % counts
    assert all(counts[t] > 0 for t in allowed), "the counters must see the allowed probes: %s" % counts
    lines = kernel_log.since(mark)
    unlogged = [t for t in blocked if not denials(lines, container, t, out="agh0")]
    assert not unlogged, "denials not logged: %s\n%s" % (unlogged, "\n".join(lines[-20:]))
    assert not [l for l in lines if "[EGRESS-DENIED] " in l and "UID=" in l and "IN=%s " % container.bridge.name in l]


def assert_open(lab, container, targets):
    """From the container, every target is reached: the probe passes and its packets arrive."""
    arrivals = Arrivals(lab.peer, targets)
    results = lab.probe(targets, ns=container.ns, timeout=1.0)
    counts = arrivals.since()
    assert all(counts[t] > 0 for t in targets), "not arrived: %s (probes: %s)" % (counts, results)
    return results


def table_rules(lab, family, table):
    """The rules (-A lines) of one table, in order."""
    text = lab.save_all(family)
    section = text.split("*%s\n" % table, 1)[1].split("COMMIT", 1)[0] if "*%s\n" % table in text else ""
    return [l for l in section.splitlines() if l.startswith("-A ")]


def agentguard_lines(lab, family, table):
    return [l for l in table_rules(lab, family, table) if "AGENTGUARD" in l]


def assert_applied(lab, result):
    """Our jump is the one rule of mangle FORWARD, pinned DNS redirects nothing, and what the role
    persists (result.rules) is what the kernel now holds, in every table."""
    for family in ("ipv4", "ipv6"):
        assert [l for l in table_rules(lab, family, "mangle") if l.startswith("-A FORWARD")] \
            == ["-A FORWARD -j AGENTGUARD-FORWARD"]
        assert not agentguard_lines(lab, family, "nat"), "pinned DNS mode redirects nothing"
        persisted = [l for l in result["rules"][family].splitlines() if "AGENTGUARD" in l]
        live = [l for l in lab.save_all(family).splitlines() if "AGENTGUARD" in l]
        assert sorted(persisted) == sorted(live)


def test_container_held_to_the_allowlist(lab, egress, docker, kernel_log):
    """scope_networks by interface name (CIDRs: test_four_ways_then_absent; the dock+ wildcard:
    test_other_networks_are_not_covered): the whole probe matrix, counted and logged."""
    result = egress(dict(POLICY, scope_networks=["docker0"]))
    assert result["changed"] is True
    assert result["networks"] == {"covered": [{"name": "docker0", "runtime": "docker", "by": ["docker0"]}],
                                  "uncovered": [], "docker_firewall_backend": "iptables"}
    assert_enforced(lab, docker, kernel_log)
    assert_applied(lab, result)


def test_without_scope_networks_containers_are_free(lab, egress, docker):
    """The gap the feature closes, and proof that the topology is honest: with host scope only, the
    container reaches every forbidden service (each probe arrives) while the host itself is held."""
    # Never silent: the plan (check mode) names the bridge it leaves open, with both families.
    plan = egress(dict(POLICY, scope_networks=[]), check=True)
    assert plan["networks"]["covered"] == []
    assert [(u["name"], u["families"]) for u in plan["networks"]["uncovered"]] == [("docker0", ["ipv4", "ipv6"])]
    empty = egress(dict(POLICY, scope_networks=[]))
    assert empty["changed"] is True and empty["networks"] == plan["networks"]
    for family in ("ipv4", "ipv6"):
        assert "*mangle" not in empty["rules"][family] and "*nat" not in empty["rules"][family]
        assert not [l for l in empty["changes"][family]["added"] if l.startswith("-t ")]
        assert not agentguard_lines(lab, family, "mangle") and not agentguard_lines(lab, family, "nat")
    # Leaving the option out is the same state: nothing to change, the same rules and diff.
    omitted = egress(dict(POLICY))
    assert omitted["changed"] is False
    assert omitted["rules"] == empty["rules"] and omitted["diff"]["after"] == empty["diff"]["after"]

    results = assert_open(lab, docker, BLOCKED)
    # Answers, and refusals (nothing listens on 853; UDP 443 gets a port unreachable): both came from there.
    answered = dict((t, results[t]) for t in BLOCKED if t.startswith(("tcp:", "icmp:", "udp:")))
    assert set(answered.values()) <= {"ok", "refused"} and answered[FORBIDDEN_443[0]] == "ok", results
    assert set(lab.probe(FORBIDDEN_443, timeout=1.0).values()) == {"timeout"}, "the host's own egress is held"


def test_audit_mode_passes_and_logs(lab, egress, docker, kernel_log):
    egress(dict(POLICY, mode="audit", scope_networks=["docker0"]))
    targets = FORBIDDEN_443 + ["icmp:%s:echo" % V4["forbidden"], "udp:[%s]:443" % V6["allowed"]]
    mark = kernel_log.mark()
    results = assert_open(lab, docker, targets)
    assert [results[t] for t in targets] == ["ok", "ok", "ok", "refused"]
    lines = kernel_log.since(mark)
    assert all(denials(lines, docker, t, out="agh0") for t in targets), "\n".join(lines[-20:])
    assert "-A AGENTGUARD-FWD-DENY -j RETURN" in agentguard_lines(lab, "ipv6", "mangle")


def test_four_ways_then_absent(lab, egress, docker, kernel_log):
    policy = dict(POLICY, scope_networks=DOCKER_CIDRS)
    before = (lab.save_all("ipv4"), lab.save_all("ipv6"))

    check = egress(policy, check=True)
    assert check["changed"] is True
    assert "-t mangle -I FORWARD 1 -j AGENTGUARD-FORWARD" in check["changes"]["ipv4"]["added"]
    assert "-t mangle -I FORWARD 1 -j AGENTGUARD-FORWARD" in check["changes"]["ipv6"]["added"]
    assert "-t mangle -A AGENTGUARD-FORWARD -s fd00:d0c:30::/64" in check["diff"]["after"]
    assert (lab.save_all("ipv4"), lab.save_all("ipv6")) == before, "check mode must not touch the kernel"

    first = egress(policy)
    assert first["changed"] is True
    assert_enforced(lab, docker, kernel_log)
    assert_applied(lab, first)
    applied = (lab.save_all("ipv4"), lab.save_all("ipv6"))
    again_check = egress(policy, check=True)
    again = egress(policy)
    assert again_check["changed"] is False and again["changed"] is False
    assert again["changes"] == {"ipv4": {"added": [], "removed": []}, "ipv6": {"added": [], "removed": []}}
    assert (lab.save_all("ipv4"), lab.save_all("ipv6")) == applied

    removed = egress(dict(state="absent"))
    assert removed["changed"] is True
    assert "-t mangle -I FORWARD 1 -j AGENTGUARD-FORWARD" in removed["changes"]["ipv6"]["removed"]
    for family, text in (("ipv4", before[0]), ("ipv6", before[1])):
        now = lab.save_all(family)
        assert "AGENTGUARD" not in now
        # Back where we started: Docker's MASQUERADE and every other line as they were (an emptied
        # mangle table may stay listed, empty).
        assert [l for l in now.splitlines() if l.startswith("-")] == [l for l in text.splitlines() if l.startswith("-")]
    assert egress(dict(state="absent"))["changed"] is False
    assert set(assert_open(lab, docker, FORBIDDEN_443).values()) == {"ok"}


def test_scope_none_restricts_only_the_containers(lab, egress, docker):
    result = egress(dict(POLICY, scope="none", scope_networks=["docker0"]))
    assert result["changed"] is True
    for family in ("ipv4", "ipv6"):
        assert "AGENTGUARD" not in lab.save(family), "no local process is restricted: the filter table is untouched"
        assert ":OUTPUT ACCEPT" in lab.save(family)
        assert agentguard_lines(lab, family, "mangle")
    host = Arrivals(lab.peer, FORBIDDEN_443)
    assert lab.probe(FORBIDDEN_443, timeout=1.0) == dict.fromkeys(FORBIDDEN_443, "ok")
    assert all(host.since().values())
    container = Arrivals(lab.peer, FORBIDDEN_443 + ALLOWED)
    results = lab.probe(FORBIDDEN_443 + ALLOWED, ns=docker.ns, timeout=1.0)
    assert results == dict(dict.fromkeys(FORBIDDEN_443, "timeout"), **dict.fromkeys(ALLOWED, "ok"))
    counts = container.since()
    assert [counts[t] for t in FORBIDDEN_443] == [0, 0] and all(counts[t] for t in ALLOWED)


FILTERING = dict(POLICY, dns_mode="filtering", dns_resolver_user="nobody", resolvers=["127.0.0.1"], dns_set_timeout=20)


def test_filtering_mode_redirects_container_dns_to_the_host(lab, egress, docker):
    """The container asks an arbitrary resolver (the forbidden host); the host's filtering resolver on
    the bridge answers instead, the forbidden host never sees the query, and the answer opens the
    allowed API for the container (the resolver fills the set); other names get NXDOMAIN."""
    bridge = docker.bridge
    lab.start_filtering_resolver([("inference-api", "api.test")], set_timeout=20,
                                 listen=("127.0.0.1", bridge.gw4, bridge.gw6))
    policy = dict(FILTERING, scope_networks=["docker0"])
    assert egress(policy)["changed"] is True
    assert egress(policy)["changed"] is False, "the redirect is idempotent (the sets' members are not state)"
    # Flush what the module's own lookups put in the sets: the container's answer must open the API.
    for name in ("ag4-inference-api", "ag6-inference-api"):
        lab.run("ipset", "flush", name)
    assert lab.probe(ALLOWED, ns=docker.ns, timeout=1.0) == dict.fromkeys(ALLOWED, "timeout")

    queries = ["udp-dns:%s:api.test" % V4["forbidden"], "udp-dns:[%s]:api.test/AAAA" % V6["forbidden"],
               "tcp-dns:%s:api.test/AAAA" % V4["forbidden"], "tcp-dns:[%s]:api.test" % V6["forbidden"]]
    tunnel = ["udp-dns:%s:c2VjcmV0.exfil.example" % V4["forbidden"], "udp-dns:[%s]:bW9yZQ.exfil.example" % V6["forbidden"]]
    arrivals = Arrivals(lab.peer, queries)
    upstream = len(lab.upstream_queries())
    results = lab.probe(queries + tunnel, ns=docker.ns, timeout=2.0)
    assert {t: results[t] for t in queries} == dict.fromkeys(queries, "ok"), results
    assert {t: results[t] for t in tunnel} == dict.fromkeys(tunnel, "NXDOMAIN"), results
    assert arrivals.since() == dict.fromkeys(queries, 0), "the rogue resolver must never see a query"
    with open(os.path.join(lab.tmp, "filtering.log")) as handle:
        answered_by_host = handle.read()
    assert "api.test from %s" % docker.v4 in answered_by_host and "api.test from %s" % docker.v6 in answered_by_host
    assert not [q for q in lab.upstream_queries()[upstream:] if "exfil.example" in q]
    assert lab.probe(ALLOWED + FORBIDDEN_443, ns=docker.ns, timeout=1.0) == \
        dict(dict.fromkeys(ALLOWED, "ok"), **dict.fromkeys(FORBIDDEN_443, "timeout"))
    for family in ("ipv4", "ipv6"):
        nat = agentguard_lines(lab, family, "nat")
        assert nat[0] == "-A PREROUTING -j AGENTGUARD-DNS" and len(nat) == 3, nat


def bridged_through_iptables(lab):
    """As Docker does: bridged frames meet ip(6)tables (br_netfilter; per namespace here)."""
    if not os.path.exists("/proc/sys/net/bridge/bridge-nf-call-ip6tables"):
        pytest.skip("this kernel has no br_netfilter")
    lab.run("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1")


def test_other_networks_are_not_covered(lab, egress, docker, kernel_log):
    """With the wildcard dock+: docker0's container is held (the whole matrix); a container on agbr1
    (not matched) is free; a covered container's connection to agbr1 is judged by the allowlist (it
    never arrives, and is logged with OUT=agbr1); container to container inside docker0 passes, although
    br_netfilter sends those bridged frames through FORWARD; agbr1 may connect into docker0."""
    bridged_through_iptables(lab)
    neighbour = lab.add_container(docker.bridge, 3)
    other = lab.add_container(lab.add_bridge("agbr1", 31), 2)
    for container in (neighbour, other):
        lab.spawn(container.ns, [PYTHON, os.path.join(HERE, "server.py"), "443"], ready=True)
    result = egress(dict(POLICY, scope_networks=["dock+"]))
    assert_enforced(lab, docker, kernel_log)
    assert set(assert_open(lab, other, FORBIDDEN_443).values()) == {"ok"}, "agbr1 is not covered"

    # Neighbours forget each other: the next IPv6 connection needs neighbour discovery through the bridge.
    for container in (docker, neighbour):
        sh("ip", "-n", container.ns, "neigh", "flush", "all")
    to_other = ["tcp:%s:443" % other.v4, "tcp:[%s]:443" % other.v6]
    to_neighbour = ["tcp:%s:443" % neighbour.v4, "tcp:[%s]:443" % neighbour.v6]
    at_other, at_neighbour = Arrivals(other.ns, to_other), Arrivals(neighbour.ns, to_neighbour)
    mark = kernel_log.mark()
    results = lab.probe(to_other + to_neighbour, ns=docker.ns, timeout=1.0)
    assert results == dict(dict.fromkeys(to_other, "timeout"), **dict.fromkeys(to_neighbour, "ok")), results
    assert at_other.since() == dict.fromkeys(to_other, 0)
    assert all(at_neighbour.since().values())
    lines = kernel_log.since(mark)
    assert all(denials(lines, docker, t, out="agbr1") for t in to_other), "\n".join(lines[-20:])
    assert not [l for l in lines if "[EGRESS-DENIED] " in l and "OUT=docker0 " in l], "\n".join(lines[-20:])
    # The uncovered network may open connections into the covered one (replies are not judged).
    assert lab.probe(to_neighbour, ns=other.ns, timeout=1.0) == dict.fromkeys(to_neighbour, "ok")
    assert_applied(lab, result)


def test_neighbours_in_a_covered_cidr_talk(lab, egress, docker, kernel_log):
    """Two containers of one network given as CIDRs talk to each other over both families while
    br_netfilter sends their bridged frames through FORWARD (as on Docker hosts)."""
    bridged_through_iptables(lab)
    neighbour = lab.add_container(docker.bridge, 3)
    lab.spawn(neighbour.ns, [PYTHON, os.path.join(HERE, "server.py"), "443"], ready=True)
    egress(dict(POLICY, scope_networks=DOCKER_CIDRS))
    for container in (docker, neighbour):
        sh("ip", "-n", container.ns, "neigh", "flush", "all")
    v4, v6 = "tcp:%s:443" % neighbour.v4, "tcp:[%s]:443" % neighbour.v6
    mark = kernel_log.mark()
    # The IPv6 neighbour solicitation goes to the solicited-node multicast address, outside the
    # CIDR: the link-local rule lets it through (it was dropped before that rule existed).
    assert lab.probe([v4, v6], ns=docker.ns, timeout=2.0) == {v4: "ok", v6: "ok"}
    assert not [l for l in kernel_log.since(mark) if "[EGRESS-DENIED] " in l and "OUT=docker0 " in l]


DOCKER_FILTER = [  # filter FORWARD as dockerd leaves it for the default bridge, in order
    ["-j", "DOCKER-USER"],
    ["-o", "docker0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
    ["-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT"],
    ["-i", "docker0", "-o", "docker0", "-j", "ACCEPT"],
]


def add_docker_rules(lab):
    for tool in ("iptables", "ip6tables"):
        lab.run(tool, "-N", "DOCKER-USER")
        lab.run(tool, "-A", "DOCKER-USER", "-j", "RETURN")
        lab.run(tool, "-P", "FORWARD", "DROP")
        for rule in DOCKER_FILTER:
            lab.run(tool, "-A", "FORWARD", *rule)
        lab.run(tool, "-t", "nat", "-N", "DOCKER")
        lab.run(tool, "-t", "nat", "-A", "DOCKER", "-i", "docker0", "-j", "RETURN")
        lab.run(tool, "-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER")
        # A router's MSS clamp, the kind of rule other tools keep in mangle FORWARD.
        lab.run(tool, "-t", "mangle", "-A", "FORWARD", "-p", "tcp", "--tcp-flags", "SYN,RST", "SYN",
                "-j", "TCPMSS", "--clamp-mss-to-pmtu")


def restart_docker(lab):
    """What dockerd does to filter FORWARD when it starts: its rules out, then in again at the top."""
    for tool in ("iptables", "ip6tables"):
        for rule in DOCKER_FILTER:
            lab.run(tool, "-D", "FORWARD", *rule)
        for rule in reversed(DOCKER_FILTER):
            lab.run(tool, "-I", "FORWARD", "1", *rule)


def foreign(text):
    """Every line that is not ours, but the filter OUTPUT policy (scope host sets it to DROP)."""
    return [l for l in text.splitlines() if "AGENTGUARD" not in l and not l.startswith(":OUTPUT ")]


def test_docker_rules_cannot_outrank_the_forward_path(lab, egress, docker):
    add_docker_rules(lab)
    assert set(assert_open(lab, docker, FORBIDDEN_443).values()) == {"ok"}, "Docker's rules let it out"
    before = dict((f, lab.save_all(f)) for f in ("ipv4", "ipv6"))
    policy = dict(POLICY, scope_networks=["docker0"])
    egress(policy)

    def holds():
        arrivals = Arrivals(lab.peer, FORBIDDEN_443 + ALLOWED)
        results = lab.probe(FORBIDDEN_443 + ALLOWED, ns=docker.ns, timeout=1.0)
        counts = arrivals.since()
        return results == dict(dict.fromkeys(FORBIDDEN_443, "timeout"), **dict.fromkeys(ALLOWED, "ok")) \
            and [counts[t] for t in FORBIDDEN_443] == [0, 0], (results, counts)

    assert holds()[0], holds()[1]
    for family in ("ipv4", "ipv6"):
        assert foreign(lab.save_all(family)) == foreign(before[family]), "foreign rules must stay byte-identical"

    restart_docker(lab)
    assert holds()[0], "after a Docker restart, without a module run: %s" % (holds()[1],)
    for tool in ("iptables", "ip6tables"):
        lab.run(tool, "-I", "FORWARD", "1", "-j", "ACCEPT")
    assert holds()[0], "after a filter FORWARD ACCEPT above everyone: %s" % (holds()[1],)
    for family in ("ipv4", "ipv6"):
        mangle = [l for l in table_rules(lab, family, "mangle") if l.startswith("-A FORWARD")]
        assert mangle[0] == "-A FORWARD -j AGENTGUARD-FORWARD" and "TCPMSS" in mangle[1]
    restarted = dict((f, lab.save_all(f)) for f in ("ipv4", "ipv6"))
    assert egress(policy)["changed"] is False, "Docker's filter rules are not ours to fight"
    assert dict((f, lab.save_all(f)) for f in ("ipv4", "ipv6")) == restarted

    # Something inserted above our jump in mangle FORWARD is drift: the next run puts the jump first again.
    for tool in ("iptables", "ip6tables"):
        lab.run(tool, "-t", "mangle", "-I", "FORWARD", "1", "-j", "ACCEPT")
    assert not holds()[0], "a mangle ACCEPT above the jump skips the forward path"
    rerun = egress(policy)
    assert rerun["changed"] is True
    assert holds()[0], holds()[1]
    for family in ("ipv4", "ipv6"):
        mangle = [l for l in table_rules(lab, family, "mangle") if l.startswith("-A FORWARD")]
        assert mangle[:2] == ["-A FORWARD -j AGENTGUARD-FORWARD", "-A FORWARD -j ACCEPT"]


def uplink_opening(lab, egress, scope_networks, interface):
    """A scope_networks that also matches the host's uplink (agh0, the route to the lab's servers): refused with a
    message naming the element and the interface, in check mode too, and nothing changed. Before the refusal
    existed, every forwarded connection counted as 'between covered networks' and RETURNed: the forbidden
    probes of the container arrived at their servers."""
    before = (lab.save_all("ipv4"), lab.save_all("ipv6"))
    for check in (True, False):
        failed = egress(dict(POLICY, scope_networks=scope_networks), check=check, expect_failure=True)
        assert "scope_networks" in failed["msg"] and interface in failed["msg"], failed["msg"]
        assert "nothing was changed" in failed["msg"], failed["msg"]
        assert (lab.save_all("ipv4"), lab.save_all("ipv6")) == before, "a refused policy changes nothing"
    return failed["msg"]


def test_a_wildcard_matching_the_uplink_is_refused(lab, egress, kernel_log):
    """'ag+' matches the container bridge agbr1 and the host's uplink agh0 (the path to every lab server)."""
    bridge = lab.add_bridge("agbr1", 31)
    container = lab.add_container(bridge, 2)
    msg = uplink_opening(lab, egress, ["ag+"], "agh0")
    assert "'ag+'" in msg and "198.18.1.0/24" in msg, msg
    # The bridge alone is fine, and holds the container to the allowlist.
    egress(dict(POLICY, scope_networks=["agbr+"]))
    assert_enforced(lab, container, kernel_log)


def test_a_list_naming_the_uplink_is_refused(lab, egress, docker):
    uplink_opening(lab, egress, ["docker0", "agh0"], "agh0")


def test_a_cidr_containing_the_uplink_path_is_refused(lab, egress, docker):
    """198.18.0.0/15 holds docker0's 198.19.30.0/24 and the lab servers' 198.18.1.0/24, routed out of agh0."""
    msg = uplink_opening(lab, egress, ["198.18.0.0/15", "fd00:d0c:30::/64"], "agh0")
    assert "198.18.1.0/24" in msg, msg
    # A default route through the uplink: a CIDR wider than the bridges' own networks sends the rest out by it.
    lab.run("ip", "route", "add", "default", "dev", "agh0")
    uplink_opening(lab, egress, ["198.19.0.0/16", "fd00:d0c:30::/64"], "agh0")
    assert egress(dict(POLICY, scope_networks=DOCKER_CIDRS))["changed"] is True
    assert set(lab.probe(FORBIDDEN_443, ns=docker.ns, timeout=1.0).values()) == {"timeout"}


def probe_like_the_canary(lab, ns, target):
    """The role's canary probe (roles/egress/files/egress_probe.py, as tasks/canary.yml runs it), in namespace ns:
    its registered result as egress_canary_verdict reads it."""
    with open(os.path.join(os.path.dirname(os.path.dirname(HERE)), "roles", "egress", "files", "egress_probe.py")) as handle:
        code = handle.read()
    kind, host, port = parse_target(target)
    proc = sh("ip", "netns", "exec", ns, "timeout", "12", PYTHON, "-c", code, host, port, "5", check=False)
    return dict(rc=proc.returncode, stdout=proc.stdout, item=dict(entry="%s:%s" % (host if ":" not in host else "[%s]" % host, port)))


def run_role_validation(lab, role_vars):
    """The role egress in the lab's host namespace, as far as its first phase (input validation on the controller):
    (failed, message)."""
    import json
    import subprocess
    import tempfile
    workdir = tempfile.mkdtemp(prefix="agit-role-")
    with open(os.path.join(workdir, "vars.json"), "w") as handle:
        json.dump(role_vars, handle)
    with open(os.path.join(workdir, "play.yml"), "w") as handle:
        handle.write("- hosts: localhost\n  gather_facts: false\n  roles:\n    - role: agentguard.hardening.egress\n")
    root = os.path.dirname(os.path.dirname(HERE))
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_CONFIG=os.path.join(root, "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.environ.get("AGENTGUARD_IT_COLLECTIONS_PATH", os.path.join(root, ".cache", "collections")),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               AGENTGUARD_NETNS=lab.host, AGENTGUARD_NETNS_PYTHON=PYTHON)
    proc = subprocess.run([os.path.join(os.path.dirname(PYTHON), "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", "ansible_python_interpreter=" + os.path.join(HERE, "netns-python"),
                           "-e", "@" + os.path.join(workdir, "vars.json"), os.path.join(workdir, "play.yml")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env, cwd=root,
                          timeout=300, check=False)
    output = json.loads(proc.stdout)
    tasks = output["plays"][0]["tasks"]
    assert "Validating arguments against arg spec" in tasks[0]["task"]["name"], tasks[0]["task"]
    check = [t for t in tasks if t["task"]["name"].endswith("Check the inputs beyond their types")]
    assert len(check) == 1 and tasks.index(check[0]) == 1, [t["task"]["name"] for t in tasks]
    result = check[0]["hosts"]["localhost"]
    return bool(result.get("failed")), result.get("msg", "")


def test_scope_none_and_forbidden_canary_probes_are_refused(lab, egress, docker):
    """issue 24 item 6: with egress_scope none the canary's probe from the host reaches a forbidden destination (the
    scope leaves the host open by design), so egress_canary_forbidden would fail a correct policy and roll it back;
    only a probe from inside the container network shows what the scope promises. The role refuses the combination
    in its first phase, naming both variables, before the host is read or changed."""
    from ansible_collections.agentguard.hardening.plugins.filter.egress_canary_checks import egress_canary_verdict
    egress(dict(POLICY, scope="none", scope_networks=["docker0"]))
    target = FORBIDDEN_443[0]
    from_host, from_container = probe_like_the_canary(lab, lab.host, target), probe_like_the_canary(lab, docker.ns, target)
    assert from_host["rc"] == 0 and from_container["rc"] == 1, (from_host, from_container)
    assert egress_canary_verdict([], [from_host])["failures"] == ["forbidden %s accepted a connection" % from_host["item"]["entry"]]
    assert egress_canary_verdict([], [from_container])["failures"] == []

    before = (lab.save_all("ipv4"), lab.save_all("ipv6"))
    role_vars = dict(egress_allow=POLICY["allow"], egress_dns_servers=POLICY["dns_servers"], egress_scope="none",
                     egress_scope_networks=["docker0"], egress_canary_forbidden=["%s:443" % V4["forbidden"]])
    failed, msg = run_role_validation(lab, role_vars)
    assert failed and "egress_canary_forbidden" in msg and "egress_scope is 'none'" in msg and "Nothing was changed." in msg, msg
    assert (lab.save_all("ipv4"), lab.save_all("ipv6")) == before
