"""The exact counts and the metrics file (module_utils/_metrics.py) against real kernels.

Real denied connections from the lab's host namespace and from a container behind its docker0: the deny
rules' counters (read as the guard reads them, iptables-save -c through an injected host) equal the number
of attempts exactly, while the rate-limited LOG rule wrote fewer lines. Every packet that left for the
forbidden address is also counted independently in the raw table (before any verdict), so the expected
figure does not come from the code under test. Then Debian's prometheus-node-exporter, in the host namespace
and bound to its lab address only, serves the written file over HTTP to a scrape from the peer namespace.
"""
import datetime
import os
import re
import shutil
import subprocess
import time

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _metrics as M

from .conftest import PYTHON, V4, V6, sh

POLICY = dict(
    allow=[dict(name="inference-api", host="api.test", ports=[443])],
    dns_servers=[V4["dns"], V6["dns"]],
    resolve_timeout=1.0,
    deny_action="reject",      # one packet per attempt (a REJECTed SYN is not sent again)
    log_limit="2/minute",
    log_burst=3,
)
ATTEMPTS = {"ipv4": 12, "ipv6": 9}
FORWARDED = {"ipv4": 5, "ipv6": 4}
TARGET = {"ipv4": "tcp:%s:443" % V4["forbidden"], "ipv6": "tcp:[%s]:443" % V6["forbidden"]}
EXPORTER_PORT = 9109


class NetnsHost(object):
    """The lab's host namespace as _metrics reads a host (collect_sample's host)."""

    def __init__(self, ns):
        self.ns = ns

    def run(self, argv):
        proc = sh("ip", "netns", "exec", self.ns, *argv, check=False, env=dict(os.environ, LC_ALL="C"))
        return proc.returncode, proc.stdout, proc.stderr

    def which(self, name):
        return shutil.which(name)

    def open_text(self, path):
        return open(path)


class RawCount(object):
    """Packets to a destination, counted in the raw table's OUTPUT (local) or PREROUTING (forwarded) of the
    host namespace: before our rules decide anything."""

    def __init__(self, lab, chain):
        self.lab, self.chain = lab, chain
        for tool, address in (("iptables", V4["forbidden"]), ("ip6tables", V6["forbidden"])):
            lab.run(tool, "-t", "raw", "-A", chain, "-d", address, "-p", "tcp", "--dport", "443", "--syn",
                    "-m", "comment", "--comment", "agit-metrics")

    def read(self):
        counts = {}
        for family, tool in (("ipv4", "iptables-save"), ("ipv6", "ip6tables-save")):
            text = self.lab.run(tool, "-c", "-t", "raw").stdout
            found = re.search(r"^\[(\d+):\d+\] -A %s .*agit-metrics" % self.chain, text, re.M)
            counts[family] = int(found.group(1))
        return counts


def denied(sample):
    return dict(((d["family"], d["path"]), d["packets"]) for d in sample["denied"])


def log_lines(lines, src):
    return [line for line in lines if "[EGRESS-DENIED] " in line and "SRC=%s " % src in line and "DPT=443 " in line]


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_counters_are_exact_where_the_log_is_a_sample(lab, egress, kernel_log, mode):
    bridge = lab.add_bridge("docker0", 30)
    container = lab.add_container(bridge, 2)
    egress(dict(POLICY, mode=mode, scope_networks=["docker0"]))
    time.sleep(3)  # the links' own IPv6 traffic (MLD reports) is over: what is counted next is the probes
    host = NetnsHost(lab.host)
    local, routed = RawCount(lab, "OUTPUT"), RawCount(lab, "PREROUTING")
    before = denied(M.collect_sample(host, {}))
    mark = kernel_log.mark()
    for family in ("ipv4", "ipv6"):
        results = lab.probe([TARGET[family]], repeat=ATTEMPTS[family], timeout=1.5)[TARGET[family]]
        # enforce: every attempt refused at once (REJECT); audit: every attempt reaches the server.
        assert results == ({"refused": ATTEMPTS[family]} if mode == "enforce" else {"ok": ATTEMPTS[family]}), results
        # Forwarded denials are dropped (no REJECT in mangle): a timeout under 1 s sends each SYN once.
        results = lab.probe([TARGET[family]], repeat=FORWARDED[family], timeout=0.6, ns=container.ns)[TARGET[family]]
        assert sum(results.values()) == FORWARDED[family]
    after = denied(M.collect_sample(host, {}))
    sent, forwarded = local.read(), routed.read()
    lines = kernel_log.since(mark)
    for family in ("ipv4", "ipv6"):
        assert sent[family] == ATTEMPTS[family] and forwarded[family] == FORWARDED[family], (sent, forwarded)
        assert after[(family, "output")] - before[(family, "output")] == ATTEMPTS[family], (family, before, after)
        assert after[(family, "forward")] - before[(family, "forward")] == FORWARDED[family], (family, before, after)
    # The LOG rule wrote fewer lines than there were attempts: its burst (3) per family, at most one more.
    for src, family in ((V4["host"], "ipv4"), (V6["host"], "ipv6")):
        written = log_lines(lines, src if family == "ipv4" else _full(src))
        assert 1 <= len(written) <= POLICY["log_burst"] + 1 < ATTEMPTS[family], (family, len(written))
    logged = (len(log_lines(lines, V4["host"])), len(log_lines(lines, _full(V6["host"]))))
    print("%s: counters %s, log lines v4 %d v6 %d" % ((mode, after) + logged))


def _full(address):
    import ipaddress
    return ipaddress.ip_address(address).exploded


def test_node_exporter_serves_the_file(lab, egress, tmp_path):
    exporter = shutil.which("prometheus-node-exporter")
    if exporter is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus-node-exporter is not installed (scripts/bootstrap.sh installs it)")
        pytest.skip("prometheus-node-exporter is not installed")
    egress(dict(POLICY))
    results = lab.probe([TARGET["ipv4"]], repeat=4, timeout=1.5)
    assert results[TARGET["ipv4"]] == {"refused": 4}
    directory = str(tmp_path / "textfile")
    os.makedirs(directory)
    status = {"started": 1795600000, "tamper_events_total": 2, "policy_hash": "sha256:abc", "in_sync": True,
              "tamper_events": [{"kind": "output-jump", "family": "ipv4", "table": "filter", "count": 2}]}
    written = M.write_guard_metrics(directory, status, host=NetnsHost(lab.host), state={})
    assert 'agentguard_egress_denied_packets_total{family="ipv4",path="output"} 4' in written
    os.chmod(directory, 0o755)
    os.chmod(os.path.join(directory, M.FILE_NAME), 0o644)
    lab.spawn(lab.host, [exporter, "--web.listen-address=%s:%d" % (V4["host"], EXPORTER_PORT),
                         "--collector.disable-defaults", "--collector.textfile",
                         "--collector.textfile.directory=" + directory])
    scrape = ("import sys, urllib.request\n"
              "print(urllib.request.urlopen('http://%s:%d/metrics', timeout=2).read().decode())" % (V4["host"], EXPORTER_PORT))
    deadline = time.monotonic() + 20
    while True:
        proc = subprocess.run(["ip", "netns", "exec", lab.peer, PYTHON, "-c", scrape], capture_output=True, text=True,
                              check=False)
        if proc.returncode == 0:
            break
        assert time.monotonic() < deadline, "node_exporter did not answer: %s" % proc.stderr[-1000:]
        time.sleep(0.3)
    page = proc.stdout
    assert 'agentguard_egress_denied_packets_total{family="ipv4",path="output"} 4' in page
    assert 'agentguard_egress_policy_info{policy_hash="sha256:abc"} 1' in page
    assert "agentguard_guard_tamper_events_total 2" in page
    assert re.search(r"^node_textfile_scrape_error 0$", page, re.M), page[-2000:]
    assert re.search(r'^node_textfile_mtime_seconds\{file="[^"]*agentguard\.prom"\} ', page, re.M)


def test_egress_denials_returns_the_exact_counts(lab, egress, kernel_log):
    """The module as a playbook runs it: its denied_packets are the kernel's counters, its log a sample."""
    egress(dict(POLICY))
    time.sleep(1)
    # The ring buffer is shared with earlier tests (the same lab addresses): read the lines of a port no other
    # test uses (REJECT answers without a server), from shortly before now (dmesg's ISO times are computed from
    # the boot time and drift from the wall clock by a second or so here).
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
    target = "tcp:%s:9444" % V4["forbidden"]
    results = lab.probe([target], repeat=8, timeout=1.5)
    assert results[target] == {"refused": 8}
    report = egress(dict(source="dmesg", since=start.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), guard_status=""),
                    module="agentguard.hardening.egress_denials", diff=False)
    assert report["counters"]["ipv4"]["output"]["packets"] == 8, report["counters"]
    assert report["counters_mode"] == "enforce" and report["denied_packets"] >= 8
    assert report["counters_text"].startswith("%d denied packet(s), exact kernel counters, since the rules were loaded at "
                                              % report["denied_packets"])
    assert report["counters_since_reason"] == "boot"
    lines = [r for r in report["records"] if r["dst"] == V4["forbidden"] and r["dpt"] == 9444]
    assert 1 <= len(lines) <= POLICY["log_burst"] + 1 < 8  # the log is a sample
    assert report["coverage"]["source"] == "dmesg" and report["coverage"]["text"].startswith("dmesg ")
