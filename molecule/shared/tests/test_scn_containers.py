# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""containers: a real Docker engine and real podman containers on the test host, held to the
allowlist by egress_scope_networks (the mangle FORWARD hook) and, for rootless podman, by the
host's own OUTPUT policy.

Sources (molecule/containers/prepare.yml and side_effect.yml start them):
  agc-bridge    Docker, default bridge docker0          forwarded, IN=docker0
  agc-v6net     Docker, user network with IPv6          forwarded, IN=br-<id>
  agc-late      Docker, a NEW network made after the policy and after `systemctl restart docker`
  agp-root      podman as root, netavark network         forwarded, IN=podman<N>
  agp-rootless  podman as the user agent, slirp4netns    the agent's own sockets: OUTPUT, UID=1000

Everything here observes. Every probe is one attempt from inside a container (probe.py, the same
program as the host's probes); a denied attempt must fail, must have a kernel LOG line naming the
container's address and bridge (forwarded) or the agent's uid (rootless), and must never reach
the lab server, whose own logs see the host's masquerade address if anything gets through.
The unfirewalled ag-sibling's probes (test_blocked.py) prove that those servers are up.
"""
import ipaddress
import json
import re
import time

import pytest

from conftest import (PROBE_SOURCE, dmesg_lines, dmesg_mark, lab_addr, log_match, made_once, parse_log_line,
                      probe_results, probe_set, service_log_since, service_log_sizes, wait_for_log_budget)

API = "api.openclaw.security"
API_BODY = "agentguard-lab api ok"
CA = "/lab-ca.crt"
AGENT = "runuser -u agent -- env XDG_RUNTIME_DIR=/run/user/1000 HOME=/home/agent "
SOURCES = ("agc-bridge", "agc-v6net", "agc-late", "agp-root", "agp-rootless")
FAMILIES = (4, 6)


# ------------------------------------------------------------------------------------ sources
class Source:
    """A container on the test host: how to run a command in it, and where its packets come from."""

    def __init__(self, target, name):
        self.target, self.name = target, name
        self.engine = "docker" if name.startswith("agc-") else ("rootless" if name.endswith("rootless") else "podman")
        self.prefix = {"docker": "docker exec %s " % name, "podman": "podman exec %s " % name,
                       "rootless": AGENT + "podman exec %s " % name}[self.engine]
        self.bridge, self.addr = None, dict(target.addr)  # rootless: the host's own address
        if self.engine == "rootless":
            return
        info = json.loads(self._host("%s inspect %s" % ("docker" if self.engine == "docker" else "podman", name)))[0]
        (net_name, net), = info["NetworkSettings"]["Networks"].items()
        self.addr = {4: net["IPAddress"], 6: net["GlobalIPv6Address"]}
        if self.engine == "docker":
            if net_name == "bridge":
                self.bridge = "docker0"
            else:
                self.bridge = "br-" + net["NetworkID"][:12]
        else:
            self.bridge = json.loads(self._host("podman network inspect %s" % net_name))[0]["network_interface"]

    def __repr__(self):
        return "%s/%s" % (self.target, self.name)

    @property
    def forwarded(self):
        return self.engine != "rootless"

    def _host(self, command):
        return self.target.check_output("cd / && " + command)

    def run(self, command):
        return self.target.run("cd / && " + self.prefix + command)

    def probe(self, probes):
        out = self.target.check_output("cd / && " + self.prefix + "python3 -c %s %s", PROBE_SOURCE,
                                       json.dumps({"probes": probes}))
        return probe_results(probes, out)[1]


_SOURCES = {}


def source_of(target, name):
    return made_once(_SOURCES, (target.name, name), lambda: Source(target, name))


# ------------------------------------------------------------------------------------- probes
def probes_for(family):
    # A name outside the allowlist: the rogue resolver answers it with its own address, the
    # filtering resolver (DNS from containers is redirected to it) with NXDOMAIN.
    return probe_set(family, ("forbidden-443", "forbidden-name-443", "forbidden-80", "api-80", "api-quic",
                              "rogue-dns-udp", "rogue-dns-tcp", "dot-853", "smtp-25", "icmp"),
                     qname="exfil.attacker.lab")


PROBES = probes_for(4) + probes_for(6)
CASES = [(name, p) for name in SOURCES for p in PROBES]
CASE_IDS = ["%s-%s" % (name, p["id"]) for name, p in CASES]


def redirected(target, source, probe):
    """Filtering mode: DNS from a covered network goes to the host's filtering resolver instead
    (nat REDIRECT), which answers; nothing is denied, nothing logged, the rogue sees nothing."""
    return target.filtering and source.forwarded and probe["kind"] in ("dns-udp", "dns-tcp")


def refused_name(target, probe):
    """Filtering mode: a name outside the allowlist never resolves, so nothing is sent."""
    return target.filtering and probe.get("host") == "exfil.attacker.lab"


# ---------------------------------------------------------------------------- the kernel log
def _fwd_lines(target, since, sources):
    """LOG lines of forwarded packets from these containers' addresses after `since`."""
    prefix = target.policy["egress_log_prefix"]
    addrs = {str(ipaddress.ip_address(s.addr[f])) for s in sources for f in FAMILIES}
    out = []
    for stamp, text in dmesg_lines():
        if stamp > since:
            fields = parse_log_line(text, prefix)
            if fields and fields.get("SRC") in addrs:
                out.append((stamp, fields))
    return out


PER_SECOND = {"sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def wait_for_forward_budget(target, sources, needed):
    """The forward LOG rule's token bucket (egress_log_limit / egress_log_burst, its own rule) must
    hold `needed` tokens per family: the lower bound of conftest.wait_for_log_budget, computed from
    the LOG lines of this host's containers."""
    count, unit = target.policy["egress_log_limit"].split("/")
    rate, burst = int(count) / PER_SECOND[unit], int(target.policy["egress_log_burst"])
    needed = min(needed, burst)
    now = time.clock_gettime(time.CLOCK_MONOTONIC)
    start = now - burst / rate
    waits = [0.0]
    for family in FAMILIES:
        tokens, last = 0.0, start
        for stamp, fields in _fwd_lines(target, start, sources):
            if ipaddress.ip_address(fields["SRC"]).version == family:
                tokens = max(0.0, min(burst, tokens + (stamp - last) * rate) - 1)
                last = stamp
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < needed:
            waits.append((needed - tokens) / rate + 0.5)
    time.sleep(max(waits))
    return max(waits)


class ContainerRun:
    """Every probe from every container of one test host, one source after the other."""

    def __init__(self, target):
        self.target = target
        self.sources = {name: source_of(target, name) for name in SOURCES}
        forwarded = [s for s in self.sources.values() if s.forwarded]
        per_family = len(PROBES) // 2
        self.waited = wait_for_forward_budget(target, forwarded, per_family * len(forwarded))
        self.waited += wait_for_log_budget(target, per_family)  # rootless: the host's own LOG rule
        self.mark = dmesg_mark()
        self.log_sizes = service_log_sizes()
        self.results = {name: source.probe(PROBES) for name, source in self.sources.items()}
        time.sleep(0.5)  # dnsmasq writes its query log asynchronously (log-async)
        self.lines = [fields for _stamp, fields in _fwd_lines(target, self.mark, forwarded)]
        self.host_lines = [fields for stamp, fields in
                           ((s, parse_log_line(t, target.policy["egress_log_prefix"])) for s, t in dmesg_lines())
                           if stamp > self.mark and fields
                           and fields.get("SRC") in {str(ipaddress.ip_address(a)) for a in target.addr.values()}]


_RUNS = {}


@pytest.fixture(scope="module")
def ctr_run(target):
    return made_once(_RUNS, target.name, lambda: ContainerRun(target))


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request):
    return request.param


# --------------------------------------------------------------------------------- the engines
def test_engines_and_containers_run(target):
    for name in SOURCES:
        source = source_of(target, name)
        assert source.run("true").rc == 0, "%s is not running" % source
    assert target.check_output("systemctl is-active docker.service") == "active"


def test_docker_was_restarted_after_the_policy(target):
    """side_effect.yml restarted dockerd: it runs a later invocation than the recorded one, and its
    filter chains (rewritten on start, ahead of everything but netavark's) are there. Docker 20.10
    makes no DOCKER-USER chain for IPv6, only its NAT and isolation rules."""
    before = target.check_output("cat /root/.mol-docker-invocation")
    now = target.check_output("systemctl show --property=InvocationID --value docker.service")
    assert before and now and before != now
    assert "-A FORWARD -j DOCKER-USER" in target.rules(4)
    masquerade = "-A POSTROUTING -s %s" % target.vars["mol_ctr"]["docker0"]["v6"]
    assert masquerade in target.check_output("ip6tables-save -t nat")


def test_forward_hook_is_first_in_mangle(target, family):
    cmd = "iptables-save" if family == 4 else "ip6tables-save"
    rules = [line for line in target.check_output("%s -t mangle", cmd).splitlines() if line.startswith("-A FORWARD ")]
    assert rules and rules[0] == "-A FORWARD -j AGENTGUARD-FORWARD", rules


def test_late_network_is_a_new_bridge(target):
    """agc-late's network was created after the policy was applied: its bridge was unknown then."""
    late = source_of(target, "agc-late")
    assert re.match(r"^br-[0-9a-f]{12}$", late.bridge), late.bridge
    assert late.bridge != source_of(target, "agc-v6net").bridge


# ------------------------------------------------------------------------------------ allowed
@pytest.mark.parametrize("name", SOURCES)
def test_allowed_name_resolves_in_the_container(target, name, family):
    source = source_of(target, name)
    result = source.probe([{"id": "r", "kind": "resolve", "family": family, "host": API}])["r"]
    assert result["ok"], "%s: %s did not resolve (%s)" % (source, API, result)
    assert lab_addr("api", family) in [str(ipaddress.ip_address(a)) for a in result["detail"]], result


@pytest.mark.parametrize("name", SOURCES)
def test_https_to_allowed_api_from_the_container(target, name, family):
    source = source_of(target, name)
    out = source.run("curl -sS -%d -m 10 --cacert %s https://%s/" % (family, CA, API))
    assert out.rc == 0 and API_BODY in out.stdout, "%s: curl -%d https://%s/: rc %d %s %s" % (
        source, family, API, out.rc, out.stdout, out.stderr)


# ------------------------------------------------------------------------------------ blocked
def test_container_denied(target, ctr_run, case):
    name, probe = case
    source = ctr_run.sources[name]
    result = ctr_run.results[name][probe["id"]]
    if refused_name(target, probe):
        assert result["outcome"].startswith("not resolved"), "%s: %s (%s)" % (source, probe["what"], result)
    elif redirected(target, source, probe):
        # Answered, by the filtering resolver: NXDOMAIN (or nothing), never the rogue's address.
        assert not result["ok"] or not re.search(r"rcode=0 answers=[1-9]", result["detail"] or ""), (
            "%s: %s got an answer with data (%s)" % (source, probe["what"], result))
    else:
        assert not result["ok"], "%s: %s got through (%s)" % (source, probe["what"], result)


def test_container_denial_logged(target, ctr_run, case):
    """Forwarded: a line with the prefix, the container's own address (the host masquerades only
    afterwards), its bridge as IN and this attempt's destination, protocol and ports.
    Rootless: the agent's uid and the host's address (slirp4netns sends from the agent's sockets,
    with ports of its own: destination and protocol identify the attempt)."""
    name, probe = case
    source = ctr_run.sources[name]
    result = ctr_run.results[name][probe["id"]]
    if refused_name(target, probe) or redirected(target, source, probe):
        pytest.skip("filtering mode: nothing was sent to %s" % probe["host"])
    if not source.forwarded and probe["kind"] == "icmp" and probe["family"] == 6:
        pytest.skip("slirp4netns answers or drops ICMPv6 echo itself: nothing leaves the host")
    assert result["daddr"] is not None, "the probe did not get as far as sending: %s" % result
    want = log_match(probe, result)
    if source.forwarded:
        want.update(IN=source.bridge)
        src = str(ipaddress.ip_address(source.addr[probe["family"]]))
        lines = ctr_run.lines
    else:
        for key in ("SPT", "TID"):
            want.pop(key, None)
        want.update(UID=target.check_output("id -u agent"))
        src = str(ipaddress.ip_address(target.addr[probe["family"]]))
        lines = ctr_run.host_lines
    lines = [f for f in lines if f.get("SRC") == src and all(f.get(k) == str(v) for k, v in want.items())]
    assert lines, "no %r line in dmesg for %s: %s (src %s, %s; %s)" % (
        target.policy["egress_log_prefix"], source, probe["what"], src, want, result)


def test_never_reached_the_servers(target, ctr_run):
    """Whatever a container sends leaves the host from the host's lab address (masquerade,
    slirp4netns): in the window of the blocked probes, the forbidden host (connections and DNS
    queries) and the allowed host's other ports never saw that address."""
    addrs = [re.escape(str(ipaddress.ip_address(a))) for a in target.addr.values()]
    peer = re.compile(r"(?<![\w.:])\[?(%s)\]?[:/]\d+" % "|".join(addrs))
    forbidden = service_log_since("ag-forbidden", ctr_run.log_sizes)
    api = service_log_since("ag-api", ctr_run.log_sizes)
    assert forbidden is not None and api is not None, "no service logs under lab/.state/logs"
    seen = [line for line in forbidden.splitlines() if peer.search(line)]
    seen += [line for line in api.splitlines() if peer.search(line) and re.search(r" (tcp/80|udp/443) ", line)]
    assert not seen, "reached the servers: %s" % seen
