# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""filtering-dns: the local dnsmasq (agentguard-dns.service) is the host's only resolver.

Proved with real queries and connections from the test host (as the agent's user) against the
lab's trusted resolver, whose own query log (lab/.state/logs/ag-resolver/dnsmasq.log) shows what
reached the upstream:
- rotation: the lab resolver moves rotate.agentguard.lab (this scenario's own name, so the others can
  run beside it) to the forbidden host; with no Ansible run the agent's next lookup makes the new
  address reachable, the old one leaves the name's sets once its entry times out, and moved back, the
  forbidden host is unreachable again by itself;
- tunnelling: random labels under a zone outside the allowlist, over every path (local resolver
  UDP/TCP and several query types, the upstream directly over UDP/TCP, DNS-over-TLS), get no
  answer that carries data, and the upstream never sees a query for the zone;
- direct DNS to the upstream is blocked and logged with the agent's uid; the resolver's own
  upstream traffic works;
- after the restart of side_effect: sets and resolver came back at boot, the resolver before
  the agent's own unit (egress_dns_before_units).
"""
import ipaddress
import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (DGRAM_TIMEOUT, REPO, TCP_TIMEOUT, denial_lines, dmesg_mark, lab_addr, lab_env,
                      service_log_since, service_log_sizes, wait_for_log_budget)

API = "api.openclaw.security"
ROTATING = "rotate.agentguard.lab"  # this scenario's own name (prepare.yml): it starts at the API server
RATES = "openexchangerates.org"
LOCAL = {4: "127.0.0.1", 6: "::1"}
UNIT = "agentguard-dns.service"


def _timeout(target):
    return int(target.policy["egress_dns_set_timeout"])


def _upstream_log(sizes):
    time.sleep(0.5)  # the lab resolver writes its query log asynchronously (log-async)
    return service_log_since("ag-resolver", sizes) or ""


def _monotonic(target, unit, prop):
    return int(target.check_output("systemctl show --property=%s --value %s", prop, unit))


# ------------------------------------------------------------------------------ the resolver
def test_host_resolves_only_through_the_filtering_resolver(target):
    servers = re.findall(r"^nameserver\s+(\S+)", target.check_output("cat /etc/resolv.conf"), re.M)
    assert servers and set(servers) <= {"127.0.0.1", "::1"}, servers
    assert target.check_output("systemctl is-active %s", UNIT) == "active"
    pid = target.check_output("systemctl show --property=MainPID --value %s", UNIT)
    assert target.check_output("ps -o user= -p %s", pid) == "agentguard-dns"


def test_only_the_resolver_user_may_send_dns_upstream(target, family):
    uid = target.check_output("id -u agentguard-dns")
    upstream = str(ipaddress.ip_network(lab_addr("resolver", family)))
    dns_rules = [r for r in target.rules(family).splitlines() if "--dport 53" in r and upstream in r]
    assert len(dns_rules) == 2, dns_rules  # UDP and TCP
    assert all("--uid-owner %s " % uid in r for r in dns_rules), dns_rules


def test_sets_follow_dns(target, family):
    """Each destination's set has a timeout: members come from the resolver's answers."""
    for label in ("inference-api", "currency-rates"):
        header = target.check_output("ipset list -t %s", "ag%d-%s" % (family, label))
        assert "timeout %d" % _timeout(target) in header, header


# ------------------------------------------------------------------------------ boot order
def test_resolver_came_back_at_boot_before_the_agent(target):
    boot = int(target.check_output("date -d \"$(ps -o lstart= -p 1)\" +%s"))
    written = int(target.check_output("stat -c %Y /etc/agentguard/dnsmasq.conf"))
    assert boot > written, "no restart since the role configured the resolver"
    rules = _monotonic(target, "netfilter-persistent.service", "ActiveEnterTimestampMonotonic")
    resolver = _monotonic(target, UNIT, "ActiveEnterTimestampMonotonic")
    agent = _monotonic(target, "agent-demo.service", "ExecMainStartTimestampMonotonic")
    assert 0 < rules <= resolver, "the resolver started before the sets and rules were loaded"
    assert 0 < resolver <= agent, "the agent's unit started before the filtering resolver"
    after = target.check_output("systemctl show --property=After --value agent-demo.service").split()
    assert UNIT in after


def test_boot_units_have_no_ordering_cycle(target):
    """systemd breaks a cycle at boot by dropping a job, not always the same one: at times the
    resolver's start, so a boot-order test alone passes by luck. The boot transaction, simulated."""
    out = target.run("systemd-analyze verify default.target")
    cycles = [line for line in (out.stdout + out.stderr).splitlines() if "cycle" in line.lower()]
    assert not cycles, cycles


# ------------------------------------------------------------------------------ tunnelling
@pytest.fixture(scope="module")
def tunnel(target):
    """Every path for a tunnelling query, once: random labels under a zone nobody allows."""
    zone = "t%s.attacker.lab" % secrets.token_hex(4)
    exact = "x%s.%s" % (secrets.token_hex(4), API)  # below a name allowed as the exact name only
    wide = "w%s.%s" % (secrets.token_hex(4), RATES)  # below a name allowed with its subdomains
    probes = []
    for family in (4, 6):
        for qtype in ("A", "AAAA", "TXT"):
            label = secrets.token_hex(12)  # 24 hex characters of "stolen data" per query
            for kind in ("dns-udp", "dns-tcp"):
                probes.append({"id": "local-%s-%s-v%d" % (kind, qtype, family), "kind": kind, "family": family,
                               "host": LOCAL[family], "port": 53, "qname": "%s.%s" % (label, zone), "qtype": qtype,
                               "timeout": DGRAM_TIMEOUT})
        probes.append({"id": "exact-v%d" % family, "kind": "dns-udp", "family": family, "host": LOCAL[family],
                       "port": 53, "qname": exact, "qtype": "TXT", "timeout": DGRAM_TIMEOUT})
        probes.append({"id": "wide-v%d" % family, "kind": "dns-udp", "family": family, "host": LOCAL[family],
                       "port": 53, "qname": wide, "qtype": "A", "timeout": DGRAM_TIMEOUT})
        upstream = lab_addr("resolver", family)
        for kind, timeout in (("dns-udp", DGRAM_TIMEOUT), ("dns-tcp", TCP_TIMEOUT)):
            probes.append({"id": "upstream-%s-v%d" % (kind, family), "kind": kind, "family": family,
                           "host": upstream, "port": 53, "qname": "%s.%s" % (secrets.token_hex(12), zone),
                           "timeout": timeout, "proto": "UDP" if kind == "dns-udp" else "TCP"})
        probes.append({"id": "dot-v%d" % family, "kind": "tcp", "family": family, "host": upstream, "port": 853,
                       "timeout": TCP_TIMEOUT, "proto": "TCP"})
    wait_for_log_budget(target, 6)  # the direct attempts (3 per family) are logged
    mark, sizes = dmesg_mark(), service_log_sizes()
    uid, results = target.probe(probes)
    return {"zone": zone, "exact": exact, "wide": wide, "uid": uid, "results": results, "mark": mark,
            "upstream_log": _upstream_log(sizes), "probes": {p["id"]: p for p in probes}}


def test_local_resolver_answers_nothing_for_other_zones(tunnel):
    local = {k: v for k, v in tunnel["results"].items() if k.startswith(("local-", "exact-"))}
    assert len(local) == 14
    for key, result in local.items():
        # NXDOMAIN with an empty answer section: nothing comes back that could carry data.
        assert result["ok"] and result["detail"] == "rcode=3 answers=0", (key, result)


def test_upstream_never_saw_the_zone(tunnel):
    log = tunnel["upstream_log"]
    assert tunnel["zone"] not in log, "the upstream resolver was asked about %s" % tunnel["zone"]
    assert tunnel["exact"] not in log, "a subdomain of an exact-name destination reached the upstream"


def test_subdomains_are_forwarded_only_where_allowed(tunnel):
    """The counterpart of the two tests above: a name below `subdomains: true` is forwarded, and
    the upstream's log shows it (so that log does see what the host forwards)."""
    for family in (4, 6):
        result = tunnel["results"]["wide-v%d" % family]
        assert result["ok"] and result["detail"].startswith("rcode=3"), result  # the lab has no such name
    assert tunnel["wide"] in tunnel["upstream_log"]


@pytest.mark.parametrize("path", ["upstream-dns-udp", "upstream-dns-tcp", "dot"])
def test_direct_dns_is_blocked_and_logged(target, tunnel, family, path):
    key = "%s-v%d" % (path, family)
    result, probe = tunnel["results"][key], tunnel["probes"][key]
    assert not result["ok"], "%s got through: %s" % (key, result)
    assert result["sport"] is not None, result
    lines = denial_lines(tunnel["mark"], target.policy["egress_log_prefix"], target.addr[family],
                         UID=tunnel["uid"], DST=str(ipaddress.ip_address(result["daddr"])), PROTO=probe["proto"],
                         SPT=result["sport"], DPT=probe["port"])
    assert lines, "no log line for %s from uid %d" % (key, tunnel["uid"])


def test_resolver_upstream_traffic_works(target, family):
    """The allowed names resolve, through the resolver's own upstream queries."""
    _uid, res = target.probe([{"id": "q", "kind": "dns-udp", "family": family, "host": LOCAL[family], "port": 53,
                               "qname": API, "timeout": 3.0}])
    assert res["q"]["ok"] and res["q"]["detail"] == "rcode=0 answers=1", res["q"]


# ------------------------------------------------------------------------------ rotation
def _hosts_file():
    """This scenario's file of the trusted lab resolver's data (lab/README.md; prepare.yml writes it)."""
    return Path(lab_env().get("LAB_STATE", str(REPO / "lab" / ".state"))) / "dns" / "hosts.d" / "molecule-filtering-dns.hosts"


def _point_rotating_at(role):
    """Make the trusted lab resolver answer rotate.agentguard.lab with the addresses of `role`."""
    _hosts_file().write_text("".join("%s %s\n" % (lab_addr(role, family), ROTATING) for family in (4, 6)))
    subprocess.run([str(REPO / "lab" / "lab.sh"), "dns-reload"], check=True, capture_output=True)


def _connects(target, role):
    probes = [{"id": str(f), "kind": "tcp", "family": f, "host": lab_addr(role, f), "port": 443, "timeout": 1.0}
              for f in (4, 6)]
    _uid, res = target.probe(probes)
    return {f: res[str(f)]["ok"] for f in (4, 6)}


def _lookup_until(target, role, seconds):
    """Ask the host's resolver (getaddrinfo, as the agent) until it answers with `role`'s addresses."""
    want = {4: [lab_addr(role, 4)], 6: [lab_addr(role, 6)]}
    deadline = time.monotonic() + seconds
    while True:
        _uid, res = target.probe([{"id": str(f), "kind": "resolve", "family": f, "host": ROTATING} for f in (4, 6)])
        got = {f: res[str(f)]["detail"] for f in (4, 6)}
        if got == want:
            return
        assert time.monotonic() < deadline, "the host still resolves %s to %s" % (ROTATING, got)
        time.sleep(1)


def _until_blocked(target, role, seconds):
    deadline = time.monotonic() + seconds
    while True:
        reach = _connects(target, role)
        if not any(reach.values()):
            return time.monotonic()
        assert time.monotonic() < deadline, "%s still reachable after %d s: %s" % (role, seconds, reach)
        time.sleep(2)


def _until_left_the_set(target, role, seconds):
    """Wait until neither of `role`'s addresses is a member of the rotating entry's sets any more (the api
    server stays reachable through inference-api, so the set, not a connection, says it left)."""
    deadline = time.monotonic() + seconds
    while True:
        members = set()
        for family in (4, 6):
            out = target.run("ipset list %s", "ag%d-rotating" % family)
            assert out.rc == 0, out.stderr
            listed = out.stdout.split("Members:\n", 1)[1]  # "ADDRESS timeout SECONDS" per line
            members.update(line.split()[0] for line in listed.splitlines() if line.strip())
        left = [lab_addr(role, f) for f in (4, 6) if lab_addr(role, f) in members]
        if not left:
            return
        assert time.monotonic() < deadline, "%s still in the rotating sets after %d s" % (left, seconds)
        time.sleep(2)


def test_rotation_follows_dns_without_ansible(target):
    timeout = _timeout(target)
    cache = max(timeout // 2, 1)  # the resolver's max-cache-ttl
    # Bounds: a cached answer may live `cache` s, a set entry `timeout` s after its last answer.
    bound = cache + timeout + 10
    assert _connects(target, "forbidden") == {4: False, 6: False}, "the forbidden host is reachable before rotation"
    try:
        _point_rotating_at("forbidden")
        _lookup_until(target, "forbidden", cache + 10)
        # The lookup itself put the new addresses into the sets: reachable at once.
        assert _connects(target, "forbidden") == {4: True, 6: True}, "the rotated address is not reachable"
        _until_left_the_set(target, "api", bound)
    finally:
        _point_rotating_at("api")
    _lookup_until(target, "api", cache + 10)
    assert _connects(target, "api") == {4: True, 6: True}
    # The rotated-away address leaves the allowlist again by itself.
    _until_blocked(target, "forbidden", bound)
