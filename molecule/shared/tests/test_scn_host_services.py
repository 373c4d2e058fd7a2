# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""host-services: the host's own services keep their way out, for their own users only (read-only).

The policy (molecule/host-services/host_vars) gives UDP 123 to the lab's time server to `_chrony`
and TCP 80 to the lab's Debian mirror to `_apt`, one egress_allow entry each with `users:`, under
egress_scope host. Proved here:

- time: chronyd (running as _chrony) selects ag-time over IPv4 and IPv6 (`chronyc sources`: `^*` or
  `^+`, Reach != 0), its packets pass the owner rule of the `time` entry (counters) and reach
  ag-time (its packet log); the agent user's and root's own NTP requests to the same addresses are
  denied, logged with their uid, and never reach ag-time;
- updates: side_effect's `apt-get update` against the mirror alone (IPv4, then IPv6) and its
  install of a package from the mirror succeeded under enforcement, and the mirror's request log
  shows them from this host; the agent user's and root's own HTTP requests to the same mirror are
  denied, logged and never reach it;
- every shared blocked probe (test_blocked.py runs them as the agent user) is denied and logged as
  root too, with these entries present.

The control for each "denied": the same request from the unfirewalled ag-sibling is answered and
shows up in the server's own log, so the servers are up and their logs would show a packet that
got through.
"""
import datetime
import ipaddress
import json
import re
import time
from pathlib import Path

import pytest

from conftest import BLOCKED, BLOCKED_IDS, DGRAM_TIMEOUT, TCP_TIMEOUT, blocked_run_as, denial_lines, dmesg_mark, \
    lab_env, wait_for_log_budget

# ag-time and ag-mirror (lab/lab.sh); lab/env.sh wins once it names them.
TIME = {4: lab_env().get("LAB_TIME4", "198.18.0.12"), 6: lab_env().get("LAB_TIME6", "fd00:a9e:1::12")}
MIRROR = {4: lab_env().get("LAB_MIRROR4", "198.18.0.13"), 6: lab_env().get("LAB_MIRROR6", "fd00:a9e:1::13")}
MIRROR_NAME = "deb.agentguard.lab"
RELEASE = "/debian/dists/bookworm/Release"
HELLO_DEB = "/debian/pool/main/agentguard-lab-hello_1.0_all.deb"
HELLO_FILE = "/usr/share/agentguard-lab/agentguard-lab-hello.txt"
APT_RECORD = "/root/.mol-apt-mirror"
SYNC_WAIT = 60  # seconds chronyd gets to select ag-time (it polls every 1-4 s, iburst at start)

# One NTP client request (mode 3) or one HTTP GET, each one attempt with the source port reported
# (the kernel LOG line and the server's log name it); stdlib only, passed as `python3 -c`.
SERVICE_PROBE = r'''
import json, select, socket, sys
def run(p):
    res = {"id": p["id"], "ok": False, "sport": None, "daddr": None, "outcome": None}
    fam = socket.AF_INET if p["family"] == 4 else socket.AF_INET6
    kind = socket.SOCK_DGRAM if p["kind"] == "ntp" else socket.SOCK_STREAM
    try:
        addr = socket.getaddrinfo(p["host"], p["port"], fam, kind)[0][4]
        res["daddr"] = addr[0]
        s = socket.socket(fam, kind)
        s.setblocking(False)
        if p["kind"] == "ntp":
            s.connect(addr)
            res["sport"] = s.getsockname()[1]
            s.send(b"\x23" + bytes(47))
            if not select.select([s], [], [], p["timeout"])[0]:
                res["outcome"] = "timeout"
                return res
            data = s.recv(2048)
            res["outcome"] = "ntp mode %d stratum %d" % (data[0] & 7, data[1])
            res["ok"] = len(data) >= 48 and data[0] & 7 == 4
            return res
        s.connect_ex(addr)
        res["sport"] = s.getsockname()[1]
        if not select.select([], [s], [], p["timeout"])[1] or s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            res["outcome"] = "timeout or refused"
            return res
        s.setblocking(True)
        s.settimeout(5)
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (p["path"], p["vhost"])).encode())
        res["outcome"] = s.recv(200).split(b"\r\n", 1)[0].decode(errors="replace")
        res["ok"] = res["outcome"].startswith("HTTP/1.") and " 200 " in res["outcome"] + " "
    except OSError as exc:
        res["outcome"] = "%s: %s" % (type(exc).__name__, exc)
    return res
print(json.dumps([run(p) for p in json.loads(sys.argv[1])]))
'''


def service_probes(family):
    return [
        {"id": "v%d-ntp" % family, "kind": "ntp", "family": family, "host": TIME[family], "port": 123,
         "timeout": DGRAM_TIMEOUT, "proto": "UDP", "service": "ag-time"},
        {"id": "v%d-http" % family, "kind": "http", "family": family, "host": MIRROR_NAME, "port": 80,
         "timeout": TCP_TIMEOUT, "proto": "TCP", "service": "ag-mirror", "path": RELEASE, "vhost": MIRROR_NAME},
    ]


PROBES = service_probes(4) + service_probes(6)
USERS = ["agent", "root"]


def _log_path(service):
    return Path(lab_env()["LAB_STATE"]) / "logs" / service / "labserver.log"


def _log_size(service):
    path = _log_path(service)
    return path.stat().st_size if path.exists() else 0


def _log_since(service, offset):
    with open(_log_path(service), "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace").splitlines()


def _peer(address, port=None):
    """A regex for ADDR:PORT / [ADDR]:PORT as labserver.py, ntplog.py and mirror.py write it."""
    addr = str(ipaddress.ip_address(address))
    tail = r":%d(?!\d)" % port if port is not None else r":\d+"
    return re.compile(r"(?<![\w.:])%s%s" % (re.escape(addr) if ":" not in addr else r"\[%s\]" % re.escape(addr), tail))


def _stamp(line):
    return datetime.datetime.fromisoformat(line.split(" ", 1)[0]).replace(tzinfo=None)


def _run_probes(host, user):
    request = json.dumps(PROBES)
    if user == "root":
        out = host.check_output("python3 -c %s %s", SERVICE_PROBE, request)
    else:
        out = host.check_output("runuser -u %s -- python3 -c %s %s", user, SERVICE_PROBE, request)
    return {r["id"]: r for r in json.loads(out)}


class ServiceRun:
    """The NTP and HTTP probes as the agent user and as root, then from ag-sibling (the control)."""

    def __init__(self, target, sibling):
        wait_for_log_budget(target, len(PROBES))  # per family: 2 probes x 2 users
        self.mark = dmesg_mark()
        self.sizes = {service: _log_size(service) for service in ("ag-time", "ag-mirror")}
        self.results = {user: _run_probes(target.host, user) for user in USERS}
        self.uids = {user: int(target.check_output("id -u %s", user)) for user in USERS}
        self.control = _run_probes(sibling, "root")
        time.sleep(0.5)  # the servers' log lines of the control
        self.logs = {service: _log_since(service, size) for service, size in self.sizes.items()}


_SERVICE_RUNS = {}


@pytest.fixture(scope="module")
def service_run(target, sibling):
    if target.name not in _SERVICE_RUNS:
        _SERVICE_RUNS[target.name] = ServiceRun(target, sibling)
    return _SERVICE_RUNS[target.name]


@pytest.fixture(params=PROBES, ids=[p["id"] for p in PROBES])
def service_probe(request):
    return request.param


# ------------------------------------------------------------------------------------ control
def test_control_reaches_the_servers_and_their_logs(service_run, service_probe):
    """From ag-sibling the same request is answered and the server's own log names it."""
    result = service_run.control[service_probe["id"]]
    assert result["ok"], "%s is DOWN from ag-sibling (%s): a denial would prove nothing" % (service_probe["id"], result)
    peer = _peer(lab_env()["LAB_SIBLING%d" % service_probe["family"]], result["sport"])
    seen = [line for line in service_run.logs[service_probe["service"]] if peer.search(line)]
    assert seen, "%s did not log ag-sibling's %s (port %s)" % (service_probe["service"], service_probe["id"], result["sport"])


# ------------------------------------------------------------------------------ agent and root
@pytest.mark.parametrize("user", USERS)
def test_own_requests_are_denied(target, service_run, service_probe, user):
    result = service_run.results[user][service_probe["id"]]
    assert result["sport"] is not None, "the probe did not get as far as sending: %s" % result
    assert not result["ok"], "%s's %s to %s got through: %s" % (user, service_probe["kind"], service_probe["host"], result)


@pytest.mark.parametrize("user", USERS)
def test_own_requests_are_logged(target, service_run, service_probe, user):
    result = service_run.results[user][service_probe["id"]]
    lines = denial_lines(service_run.mark, target.policy["egress_log_prefix"], target.addr[service_probe["family"]],
                         UID=service_run.uids[user], DST=str(ipaddress.ip_address(result["daddr"])),
                         PROTO=service_probe["proto"], SPT=result["sport"], DPT=service_probe["port"])
    assert lines, "no %r line in dmesg for %s's %s (uid %d, %s)" % (
        target.policy["egress_log_prefix"], user, service_probe["id"], service_run.uids[user], result)


@pytest.mark.parametrize("user", USERS)
def test_own_requests_never_reach_the_server(target, service_run, service_probe, user):
    result = service_run.results[user][service_probe["id"]]
    peer = _peer(target.addr[service_probe["family"]], result["sport"])
    seen = [line for line in service_run.logs[service_probe["service"]] if peer.search(line)]
    assert not seen, "%s saw %s's %s: %s" % (service_probe["service"], user, service_probe["id"], seen)


# ------------------------------------------------------------------------------------- time
def _sources(target):
    """chronyc -n sources: {address: (state, reach)}."""
    out = target.check_output("chronyc -n sources")
    found = {}
    for line in out.splitlines():
        match = re.match(r"^\^(.)\s+(\S+)\s+\d+\s+-?\d+\s+([0-7]+)\s", line)
        if match:
            found[str(ipaddress.ip_address(match.group(2)))] = (match.group(1), int(match.group(3), 8))
    return found


def test_chrony_synchronises_from_the_lab_time_server(target, family):
    """ag-time's address of this family is selected (`^*`) or combined (`^+`) and reachable."""
    want = str(ipaddress.ip_address(TIME[family]))
    deadline = time.monotonic() + SYNC_WAIT
    while True:
        sources = _sources(target)
        state, reach = sources.get(want, ("?", 0))
        selected = any(s == "*" for s, _r in sources.values())
        if (state in "*+" and reach and selected) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert want in sources, "chronyc sources has no %s: %s" % (want, sources)
    assert reach, "%s is not reachable (Reach 0): %s" % (want, target.check_output("chronyc -n sources"))
    assert state in "*+" and selected, "%s is not selected or combined: %s" % (want, target.check_output("chronyc -n sources"))


def test_chronyd_runs_as_chrony(target):
    users = target.check_output("ps -o user= -C chronyd").split()
    assert users and set(users) == {"_chrony"}, users


def test_chronyd_passes_the_time_entry_rule(target, family):
    """Its packets match the `time` entry's owner rule for _chrony (the only way to UDP 123 there)."""
    uid = int(target.check_output("id -u _chrony"))
    save = "iptables-save" if family == 4 else "ip6tables-save"
    rules = [line for line in target.check_output("%s -c -t filter", save).splitlines()
             if "agentguard: time" in line]
    assert rules, "no rule of the time entry"
    for line in rules:
        assert "--uid-owner %d " % uid in line and "--dport 123 " in line and "-p udp" in line, line
    packets = sum(int(re.match(r"^\[(\d+):", line).group(1)) for line in rules)
    assert packets > 0, "no packet matched the time entry: %s" % rules


def test_lab_time_server_hears_chronyd(target, family):
    """ag-time's packet log has this host's address in the last 30 s: chronyd's polls arrive."""
    since = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(seconds=30)
    peer = _peer(target.addr[family])
    seen = [line for line in _log_since("ag-time", 0) if peer.search(line) and _stamp(line) >= since]
    assert seen, "ag-time logged nothing from %s since %s" % (target.addr[family], since)


# ------------------------------------------------------------------------------------ updates
@pytest.fixture(scope="module")
def apt_record(target):
    record = target.host.file(APT_RECORD)
    assert record.exists, "%s is written by molecule/host-services/side_effect.yml" % APT_RECORD
    return json.loads(record.content_string)


def test_apt_downloads_as_apt(target):
    """apt's own default (the lab image sets root, the scenario's prepare puts Debian's back)."""
    assert target.check_output("apt-config dump APT::Sandbox::User") == 'APT::Sandbox::User "_apt";'


def test_apt_update_and_install_from_the_mirror(target, apt_record):
    """side_effect fails on an error or warning of apt-get update; here: its record, and the package."""
    assert apt_record["update"] == [0, 0], apt_record
    for output in apt_record["update_output"]:
        assert "http://deb.agentguard.lab/debian bookworm" in output, output
    status = target.check_output("dpkg-query -W -f='${Status}' agentguard-lab-hello")
    assert status == "install ok installed", status
    assert target.host.file(HELLO_FILE).contains("from the agentguard lab mirror")


def test_mirror_served_apt(target, family, apt_record):
    """The mirror's log: apt's requests from this host's address of this family, after side_effect began."""
    since = datetime.datetime.fromisoformat(apt_record["start"])
    peer = _peer(target.addr[family])
    lines = [line for line in _log_since("ag-mirror", 0) if peer.search(line) and _stamp(line) >= since]
    release = [line for line in lines if "'GET %s HTTP/1.1' -> " % RELEASE in line]
    assert release and all(line.endswith(("-> 200", "-> 304")) for line in release), lines


def test_mirror_served_the_package(target, apt_record):
    """The install's download (either family: apt picks one) came from the mirror."""
    since = datetime.datetime.fromisoformat(apt_record["start"])
    peers = [_peer(target.addr[family]) for family in (4, 6)]
    fetched = [line for line in _log_since("ag-mirror", 0) if "'GET %s HTTP/1.1' -> 200" % HELLO_DEB in line
               and _stamp(line) >= since and any(peer.search(line) for peer in peers)]
    assert fetched, "the mirror never served %s to this host" % HELLO_DEB


# ---------------------------------------------------------------------- shared probes as root
@pytest.fixture(scope="module")
def root_run(target):
    return blocked_run_as(target, "root", before=lambda: wait_for_log_budget(target, len(BLOCKED) // 2))


@pytest.mark.parametrize("probe", BLOCKED, ids=BLOCKED_IDS)
def test_shared_blocked_probes_as_root(target, root_run, probe):
    """With the service entries present root is held to the allowlist too: denied and logged (uid 0)."""
    assert root_run.uid == 0
    result = root_run.results[probe["id"]]
    assert not result["ok"], "root: %s got through (%s)" % (probe["what"], result)
    assert result["sport"] is not None, "the probe did not get as far as sending: %s" % result
    lines = root_run.lines(probe)
    assert lines and all(line["UID"] == "0" for line in lines), "root's %s was not logged (%s)" % (probe["what"], result)
