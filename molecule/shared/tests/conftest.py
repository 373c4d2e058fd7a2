# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared fixtures of the Molecule verify step (every scenario uses molecule/shared/tests).

Everything here OBSERVES: probes are real connections made from the test host (as the user the
policy restricts), the kernel log is read on the controller (`dmesg`: the ring buffer is shared
with the containers), rules and counters are read with iptables-save / iptables -L. Nothing is
written to a test host: the probe program is passed as `python3 -c SOURCE`.

Test hosts are the hosts of the Molecule inventory (pytest option --ansible-inventory, set by
Molecule); their policy is read from the same inventory (the scenario's group_vars/host_vars over
the role's defaults), so each scenario's expectations follow from the variables it converged with.
Commands run through the podman:// testinfra backend (podman exec), about 3x faster than ansible://.
Files named test_scn_<scenario>.py are collected only in that scenario (MOLECULE_SCENARIO_NAME).
"""
import functools
import ipaddress
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import testinfra
import yaml

from probe import probe_results  # the reader of probe.py's output lives beside its writer

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PROBE_SOURCE = (HERE / "probe.py").read_text()
CA_IN_HOST = "/usr/local/share/ca-certificates/agentguard-lab-ca.crt"
SIBLING = "ag-sibling"
# Blocked TCP probes give up before the first SYN retransmission (1 s), so one attempt is one
# packet and one LOG line; the same probes from ag-sibling connect within the same timeout.
TCP_TIMEOUT = 0.9
DGRAM_TIMEOUT = 1.5


def pytest_collection_modifyitems(config, items):
    """test_scn_<scenario>.py files belong to one scenario: deselect them in the others."""
    scenario = os.environ.get("MOLECULE_SCENARIO_NAME", "")
    keep, drop = [], []
    for item in items:
        match = re.match(r"test_scn_(.+)\.py$", item.path.name)
        (drop if match and match.group(1).replace("_", "-") != scenario else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


# ------------------------------------------------------------------------------------------ lab
@functools.lru_cache(maxsize=None)
def lab_env():
    """The lab's addresses and paths, from lab/env.sh (the lab's single source of truth)."""
    out = subprocess.run(["bash", "-c", '. "$1" >/dev/null && env -0', "-", str(REPO / "lab" / "env.sh")],
                         check=True, capture_output=True).stdout.decode()
    env = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    return {k: v for k, v in env.items() if k.startswith("LAB_")}


def lab_addr(role, family):
    return lab_env()["LAB_%s%d" % (role.upper(), family)]


# Listeners that speak TLS: lab/services/labserver.py logs such a connection only once its
# handshake ran, so a bare TCP probe leaves no trace there even when it gets through.
TLS_PORTS = {("ag-api", 443), ("ag-rates", 443), ("ag-forbidden", 443), ("ag-forbidden", 853), ("ag-resolver", 853)}


def service_of(address):
    """The lab service container that owns an address (for its connection logs)."""
    for role, name in (("api", "ag-api"), ("rates", "ag-rates"), ("resolver", "ag-resolver"),
                       ("forbidden", "ag-forbidden")):
        if ipaddress.ip_address(address) in (ipaddress.ip_address(lab_addr(role, 4)),
                                             ipaddress.ip_address(lab_addr(role, 6))):
            return name
    return None


SERVICES = ("ag-api", "ag-rates", "ag-resolver", "ag-forbidden")


def service_log_sizes():
    """Current sizes of the services' connection (labserver) and query (dnsmasq) logs."""
    sizes = {}
    for service in SERVICES:
        for path in (Path(lab_env()["LAB_STATE"]) / "logs" / service).glob("*.log"):
            sizes[str(path)] = path.stat().st_size
    return sizes


def service_log_since(service, sizes):
    """What a service logged since `sizes` were taken (None: the service keeps no logs)."""
    paths = sorted((Path(lab_env()["LAB_STATE"]) / "logs" / service).glob("*.log"))
    if not paths:
        return None
    text = ""
    for path in paths:
        with open(path, "rb") as fh:
            fh.seek(sizes.get(str(path), 0))
            text += fh.read().decode(errors="replace")
    return text


# ------------------------------------------------------------------------------------ kernel log
LOG_LINE = re.compile(r"^\[\s*(\d+\.\d+)\]\s(.*)$")


def dmesg_lines():
    out = subprocess.run(["dmesg"], check=True, capture_output=True).stdout.decode(errors="replace")
    lines = []
    for raw in out.splitlines():
        match = LOG_LINE.match(raw)
        if match:
            lines.append((float(match.group(1)), match.group(2)))
    return lines


def dmesg_mark():
    lines = dmesg_lines()
    return lines[-1][0] if lines else 0.0


def parse_log_line(text, prefix):
    """Fields of one iptables LOG line with `prefix`, or None. ID/TYPE after PROTO= are the
    transport's (the ICMP echo id), SRC/DST are normalised addresses."""
    if not text.startswith(prefix):
        return None
    fields, transport = {}, False
    for token in text[len(prefix):].split():
        key, _sep, value = token.partition("=")
        if key == "PROTO":
            transport = True
        if transport and key in ("ID", "TYPE", "CODE", "SEQ"):
            key = "T" + key
        fields.setdefault(key, value)
    for key in ("SRC", "DST"):
        if key in fields:
            fields[key] = str(ipaddress.ip_address(fields[key]))
    return fields


PER_SECOND = {"sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def live_log_limit(target, family):
    """(rate per second, burst) of the live LOG rule of AGENTGUARD-DENY."""
    rules = target.rules(family)
    match = re.search(r"-A AGENTGUARD-DENY -m limit --limit (\d+)/(\w+) --limit-burst (\d+) -j LOG", rules)
    assert match, "no rate-limited LOG rule in AGENTGUARD-DENY"
    return int(match.group(1)) / PER_SECOND[match.group(2)], int(match.group(3))


BUDGET_WAITS = []
# Facts a proof must name in the run's output (e.g. which nginx and systemd a test ran on): record().
RECORDED = []


def record(line):
    """Print `line` in the verify output's summary, whatever the outcome."""
    RECORDED.append(line)


def pytest_terminal_summary(terminalreporter):
    for line in BUDGET_WAITS:
        terminalreporter.write_line("log budget: " + line)
    for line in RECORDED:
        terminalreporter.write_line("recorded: " + line)


def wait_for_log_budget(target, needed, families=(4, 6)):
    """Wait until the LOG rule's token bucket of each family provably holds `needed` tokens.

    The limit match logs `burst` lines at once, then `rate` lines per second. Earlier runs
    (canary probes, another verify's flood) may have spent the bucket. A lower bound of what is
    left follows from this host's own LOG lines in dmesg: start from an EMPTY bucket burst/rate
    seconds ago (it cannot be emptier), refill at `rate`, take one token per line. Sleeping until
    the bound reaches `needed` makes "every denied attempt is logged" a fair test.
    """
    if os.environ.get("MOL_LOG_BUDGET_WAIT", "1") == "0":  # scripts/molecule.sh: negative control
        return 0.0
    waits = [0.0]
    for family in families:
        rate, burst = live_log_limit(target, family)
        needed_family = min(needed, burst)
        now = time.clock_gettime(time.CLOCK_MONOTONIC)
        start = now - burst / rate
        tokens, last = 0.0, start
        src = str(ipaddress.ip_address(target.addr[family]))
        for stamp, text in dmesg_lines():
            if stamp <= start:
                continue
            fields = parse_log_line(text, target.policy["egress_log_prefix"])
            if fields and fields.get("SRC") == src:
                tokens = max(0.0, min(burst, tokens + (stamp - last) * rate) - 1)
                last = stamp
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < needed_family:
            waits.append((needed_family - tokens) / rate + 0.5)
    if max(waits) > 0:
        time.sleep(max(waits))
        BUDGET_WAITS.append("%s: waited %.1f s for %d LOG tokens" % (target.name, max(waits), needed))
    return max(waits)


def denial_lines(since, prefix, src, **match):
    """LOG lines written after `since` with `prefix` from `src` whose fields equal `match`."""
    src = str(ipaddress.ip_address(src))
    found = []
    for stamp, text in dmesg_lines():
        if stamp <= since:
            continue
        fields = parse_log_line(text, prefix)
        if fields and fields.get("SRC") == src and all(fields.get(k) == str(v) for k, v in match.items()):
            found.append(fields)
    return found


# ------------------------------------------------------------------------------------- targets
def applied_vars(name):
    """The variables a scenario's side_effect applied over the inventory's, for host `name`: verify holds
    the host to the policy it runs. molecule/learn applies the proposal it learnt in enforce mode and
    writes them to <ephemeral directory>/applied-vars/<host>.yml; other scenarios write none."""
    ephemeral = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    path = Path(ephemeral) / "applied-vars" / ("%s.yml" % name) if ephemeral else None
    return yaml.safe_load(path.read_text()) or {} if path is not None and path.is_file() else {}


class Target:
    """One test host: its testinfra host (podman://), addresses and effective policy."""

    def __init__(self, name, hostvars, defaults):
        self.name = name
        self.host = testinfra.get_host("podman://" + name)
        self.policy = dict(defaults)
        self.policy.update({k: v for k, v in hostvars.items() if k.startswith("egress_")})
        self.policy.update(applied_vars(name))
        self.vars = hostvars
        nets = json.loads(subprocess.run(["podman", "inspect", "--format", "{{json .NetworkSettings.Networks}}", name],
                                         check=True, capture_output=True).stdout)
        net = nets[lab_env()["LAB_NET"]]
        self.addr = {4: net["IPAddress"], 6: net["GlobalIPv6Address"]}

    def __repr__(self):
        return self.name

    @property
    def enforce(self):
        return self.policy["egress_mode"] == "enforce"

    @property
    def filtering(self):
        """egress_dns_mode=filtering: the host's only resolver is the local one (loopback)."""
        return self.policy.get("egress_dns_mode") == "filtering"

    def resolver(self, family):
        """The address the host's processes send DNS to, in this family."""
        return ("127.0.0.1" if family == 4 else "::1") if self.filtering else lab_addr("resolver", family)

    def refuses_name(self, probe):
        """In filtering mode a probe by a name outside the allowlist never gets an address, so it
        sends nothing (and logs nothing): the local resolver answers NXDOMAIN."""
        host = probe.get("host", "")
        allowed = {str(d["host"]).lower().rstrip(".") for d in self.policy["egress_allow"]}
        return (self.filtering and self.enforce and probe["kind"] != "resolve"
                and not re.search(r"^[0-9.]+$|:", host) and host.lower().rstrip(".") not in allowed)

    @property
    def probe_user(self):
        """The user whose egress the policy restricts (the AI agent's account)."""
        if self.policy["egress_scope"] == "users":
            return str(self.policy["egress_scope_users"][0])
        return "agent"

    def run(self, command, *args):
        return self.host.run(command, *args)

    def check_output(self, command, *args):
        return self.host.check_output(command, *args)

    def probe(self, probes, user=None):
        """Run probes (in parallel, inside the host) as `user` (default: the restricted user)."""
        user = self.probe_user if user is None else user
        request = json.dumps({"probes": probes})
        if user == "root":
            out = self.check_output("python3 -c %s %s", PROBE_SOURCE, request)
        else:
            out = self.check_output("runuser -u %s -- python3 -c %s %s", user, PROBE_SOURCE, request)
        return probe_results(probes, out)

    def rules(self, family, save="iptables-save"):
        """The live filter table (family 4 or 6) as iptables-save prints it, without counters."""
        cmd = save if family == 4 else save.replace("iptables", "ip6tables")
        return self.check_output("%s -t filter", cmd)

    def deny_counters(self, family):
        """Packets that hit the LOG rule and the final verdict of AGENTGUARD-DENY."""
        cmd = "iptables" if family == 4 else "ip6tables"
        out = self.check_output("%s -w -n -v -x -L AGENTGUARD-DENY", cmd)
        rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
        log = sum(int(r[0]) for r in rows if r[2] == "LOG")
        last = int(rows[-1][0])
        return log, last


@functools.lru_cache(maxsize=None)
def _inventory(path):
    out = subprocess.run(["ansible-inventory", "-i", path, "--list"], check=True, capture_output=True,
                         env=dict(os.environ, ANSIBLE_INVENTORY_UNPARSED_WARNING="False")).stdout
    data = json.loads(out)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    names = set(hostvars)
    for group, body in data.items():
        if group != "_meta" and isinstance(body, dict):
            names.update(body.get("hosts", []))
    return {name: hostvars.get(name, {}) for name in sorted(names)}


@functools.lru_cache(maxsize=None)
def role_defaults():
    return yaml.safe_load((REPO / "roles" / "egress" / "defaults" / "main.yml").read_text())


def inventory_hosts(config):
    path = config.getoption("ansible_inventory", None) or os.environ.get("MOLECULE_INVENTORY_FILE")
    if not path:
        raise pytest.UsageError("run through `molecule verify` (no --ansible-inventory)")
    return _inventory(path)


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        names = list(inventory_hosts(metafunc.config))
        metafunc.parametrize("target", names, indirect=True, scope="module")
    if "family" in metafunc.fixturenames:
        metafunc.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])


def made_once(cache, key, make):
    """make(), made the first time key is asked for and then kept in cache: a test host, a probe run, ...
    is shared by the tests of every module that asks for it (the fixtures' scope is the module)."""
    if key not in cache:
        cache[key] = make()
    return cache[key]


_TARGETS = {}


@pytest.fixture(scope="module")
def target(request):
    name = request.param
    return made_once(_TARGETS, name, lambda: Target(name, inventory_hosts(request.config)[name], role_defaults()))


@pytest.fixture(scope="session")
def sibling():
    return testinfra.get_host("podman://" + SIBLING)


# ------------------------------------------------------------------------------- probe sets
def lab_probes(family, qname="api.openclaw.security"):
    """Every probe the scenarios try against the lab, by name, for one family (qname: the name the DNS
    probes ask the rogue resolver). A scenario picks its set with probe_set()."""
    forbidden, api, resolver = (lab_addr(r, family) for r in ("forbidden", "api", "resolver"))
    tcp = {"kind": "tcp", "timeout": TCP_TIMEOUT, "proto": "TCP"}
    return {
        "forbidden-443": dict(tcp, what="forbidden host on 443 by address", host=forbidden, port=443),
        "forbidden-name-443": dict(tcp, what="forbidden host on 443 by name", host="exfil.attacker.lab", port=443),
        "forbidden-80": dict(tcp, what="forbidden host on plain HTTP 80", host=forbidden, port=80),
        "api-80": dict(tcp, what="allowed host on plain HTTP 80", host=api, port=80),
        "api-quic": dict(kind="udp", what="allowed host on UDP 443 (QUIC)", host=api, port=443, timeout=DGRAM_TIMEOUT,
                         proto="UDP"),
        "rogue-dns-udp": dict(kind="dns-udp", what="rogue resolver on UDP 53", host=forbidden, port=53,
                              timeout=DGRAM_TIMEOUT, proto="UDP", qname=qname),
        "rogue-dns-tcp": dict(kind="dns-tcp", what="rogue resolver on TCP 53", host=forbidden, port=53,
                              timeout=TCP_TIMEOUT, proto="TCP", qname=qname),
        "dot-853": dict(tcp, what="DNS-over-TLS 853 to the trusted resolver", host=resolver, port=853),
        "smtp-25": dict(tcp, what="SMTP 25 to the forbidden host", host=forbidden, port=25),
        "ssh-22": dict(tcp, what="SSH 22 to the forbidden host", host=forbidden, port=22),
        "icmp": dict(kind="icmp", what="ICMP echo to the forbidden host", host=forbidden, timeout=DGRAM_TIMEOUT,
                     proto="ICMP" if family == 4 else "ICMPv6"),
    }


def probe_set(family, names, **options):
    """The lab_probes() of these names, in this order, with their ids (with_ids)."""
    catalog = lab_probes(family, **options)
    return with_ids([catalog[name] for name in names], family)


def blocked_probes(family):
    """What the policy must deny (and log), one attempt each, for one family."""
    return probe_set(family, ("forbidden-443", "forbidden-name-443", "api-80", "api-quic", "rogue-dns-udp",
                              "rogue-dns-tcp", "dot-853", "smtp-25", "ssh-22", "icmp"))


def with_ids(probes, family):
    """Each probe gets its family and an id made of the family and what it tries ("v4-smtp-25-to-...")."""
    for probe in probes:
        slug = re.sub(r"[^a-z0-9]+", "-", probe["what"].lower()).strip("-")
        probe.update(id="v%d-%s" % (family, slug), family=family)
    return probes


BLOCKED = blocked_probes(4) + blocked_probes(6)
BLOCKED_IDS = [p["id"] for p in BLOCKED]


def log_match(probe, result):
    """The LOG fields that identify exactly this attempt."""
    match = {"DST": str(ipaddress.ip_address(result["daddr"])), "PROTO": probe["proto"]}
    if probe["kind"] == "icmp":
        match.update(TTYPE=8 if probe["family"] == 4 else 128, TID=result["sport"])
    else:
        match.update(SPT=result["sport"], DPT=probe["port"])
    return match


class BlockedRun:
    """One run of the blocked probe set: as the restricted user, plus the kernel log since."""

    def __init__(self, target, user=None):
        # One attempt is one packet and one LOG line: the bucket must hold them all.
        self.waited = wait_for_log_budget(target, len(BLOCKED) // 2) if user is None else 0
        self.mark = dmesg_mark()
        self.log_sizes = service_log_sizes()
        self.uid, self.results = target.probe(BLOCKED, user=user)
        self.target = target
        time.sleep(0.3)  # dnsmasq writes its query log asynchronously (log-async)

    def lines(self, probe):
        result = self.results[probe["id"]]
        if result["sport"] is None or result["daddr"] is None:
            return []
        return denial_lines(self.mark, self.target.policy["egress_log_prefix"], self.target.addr[probe["family"]],
                            UID=self.uid, **log_match(probe, result))


_BLOCKED_RUNS = {}


def blocked_run_as(target, user, before=None):
    """The shared blocked probes, run once per host as `user` (BlockedRun) and kept for every test module;
    before() runs first (e.g. waiting for the kernel's log budget)."""
    def make():
        if before is not None:
            before()
        return BlockedRun(target, user=user)
    return made_once(_BLOCKED_RUNS, (target.name, user), make)


@pytest.fixture(scope="module")
def blocked_run(target):
    """The blocked probe set, run once per test host (all probes in parallel, about 1.5 s)."""
    return blocked_run_as(target, None)


@pytest.fixture(scope="session")
def control_run(sibling):
    """The same probes from the unfirewalled ag-sibling: every service must answer there."""
    out = sibling.check_output("python3 -c %s %s", PROBE_SOURCE, json.dumps({"probes": BLOCKED}))
    return probe_results(BLOCKED, out)[1]


@pytest.fixture(params=BLOCKED, ids=BLOCKED_IDS)
def blocked_probe(request):
    return request.param


# ------------------------------------------------------------------------------------- TLS gate
# egress_tls_gate (scenarios tls-gate and platforms). The lab's API server (ag-api) answers the allowed name
# and a co-tenant's on the same addresses, as a CDN does (lab/lab.sh).
API, COTENANT = "api.openclaw.security", "cotenant.cdn.lab"
API_BODY = "agentguard-lab api ok"
GATE_UNIT = "agentguard-tlsgate.service"
GATE_USER = "agentguard-tlsgate"
GATE_LOG = "/var/log/agentguard-tlsgate/access.log"
# Most exposed a hardened unit may score in `systemd-analyze security` (0 best, 10 worst; < 2 is "OK").
MAX_EXPOSURE = 2.0


def as_user(user, command):
    """A shell command line run as `user` (root: as it is)."""
    return command if user == "root" else "runuser -u %s -- %s" % (user, command)


def bracket(address):
    return "[%s]" % address if ":" in address else address


def curl(target, user, family, name, address=None):
    """GET https://name/ as `user` over `family`, checked against the lab CA; address: connect there (curl
    --resolve) instead of where the host's resolver points."""
    resolve = "--resolve %s:443:%s" % (name, bracket(address)) if address else ""
    return target.run(as_user(user, "curl -sS -%d --max-time 8 --cacert %s %s https://%s/"
                              % (family, CA_IN_HOST, resolve, name)))


def gate_log_size(target):
    return int(target.check_output("stat -c %%s %s", GATE_LOG))


def gate_log_since(target, size):
    time.sleep(0.3)  # nginx writes the access line when the session ends
    return target.check_output("tail -c +%s %s", str(size + 1), GATE_LOG).splitlines()


def gate_lines(lines, target, family, **fields):
    """The gate's log lines for connections from the host's address in `family` with these field values."""
    client = re.escape(target.addr[family])
    found = []
    for line in lines:
        if not re.search(r"client=\[?%s\]?:\d+ " % client, line):
            continue
        if all(('%s="%s"' % (k, v) if k == "sni" else "%s=%s" % (k, v)) in line for k, v in fields.items()):
            found.append(line)
    return found


def gate_users(target):
    """The users of the gate's main process and its workers."""
    pid = target.check_output("systemctl show --property=MainPID --value %s", GATE_UNIT)
    return set(target.check_output("ps -o user= --ppid %s -p %s", pid, pid).split())


def unit_exposure(target, unit):
    """(overall exposure level, whole report) of `systemd-analyze security` for the unit; level None if none."""
    out = target.run("systemd-analyze security --no-pager %s", unit)
    text = out.stdout + out.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", text)
    return (float(match.group(1)) if match else None), text


def seen_from(log, target, pattern=""):
    """Lines of a lab service's log (service_log_since) from either of the host's addresses, with pattern."""
    addresses = [re.escape(a) for a in (target.addr[4], target.addr[6])]
    peer = re.compile(r"(?<![\w.:])\[?(%s)\]?:\d+" % "|".join(addresses))
    return [line for line in (log or "").splitlines() if peer.search(line) and pattern in line]
