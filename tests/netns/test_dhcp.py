"""DHCP through the egress rules (issue 18): real clients renew real leases from dnsmasq, or are denied.

A link of its own between the lab's namespaces: dnsmasq in the peer serves DHCPv4 (198.18.7.50-59) and
DHCPv6 (fd00:a9e:7::50-59) on it with its shortest lease (2 minutes, so T1 is a minute away); in the
host namespace busybox's udhcpc holds the IPv4 lease and dhcpcd the IPv6 one (Debian 12's busybox has no
udhcpc6), and both renew at once on SIGUSR1. Their hooks only record the event (udhcpc's also puts the
leased address on the test's link, as DHCPv4 clients do): nothing outside the namespace is touched.

What OUTPUT sees, and so what the rules can allow or deny:
- udhcpc's DISCOVER and first REQUEST leave by a packet socket that netfilter never sees; its renewal
  (SIGUSR1 in BOUND) is a unicast REQUEST from a UDP socket bound to port 68: through OUTPUT.
- every dhcpcd DHCPv6 message (SOLICIT, REQUEST, RENEW) goes from a UDP socket on port 546 to ff02::1:2.
So each renewal is counted three ways: by dnsmasq's log (DHCPREQUEST/DHCPACK, DHCPRENEW/DHCPREPLY), at
the server's door (a counting rule in the peer's raw table), and on the module's dhcp rules.

Renewals seconds apart would be ESTABLISHED flows (a unicast renewal's reply keeps its conntrack entry
for 30 s) and never meet the dhcp rule; real renewals are T1 apart, so the host namespace's UDP conntrack
timeout is set to 1 s (a sysctl of that namespace, gone with it) and renewals are 1.5 s apart: each one
is NEW, as on a real host.
"""
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from .conftest import V4, V6, Arrivals, sh

POLICY = dict(
    allow=[dict(name="inference-api", host="api.test", ports=[443])],
    dns_servers=[V4["dns"], V6["dns"]],
    resolve_timeout=1.0,
)
SERVER4, SERVER6 = "198.18.7.1", "fd00:a9e:7::1"
RANGE4, RANGE6 = ("198.18.7.50", "198.18.7.59"), ("fd00:a9e:7::50", "fd00:a9e:7::59")
DOORS = ["udp:%s:67" % SERVER4, "udp:[ff02::1:2]:547"]  # unicast DHCPv4 renewals, DHCPv6 to the group
RENEWALS = 2
CONNTRACK_UDP_TIMEOUT = 1  # seconds; see the module docstring
SERVER_LOG = {  # dnsmasq --log-dhcp lines, per message (DHCPv6's REQUEST names no address: not counted)
    "request4": re.compile(r"DHCPREQUEST\(\S+\) 198\.18\.7\.\d+ "),
    "ack4": re.compile(r"DHCPACK\(\S+\) 198\.18\.7\.\d+ "),
    "renew6": re.compile(r"DHCPRENEW\(\S+\) "),
    "reply6": re.compile(r"DHCPREPLY\(\S+\) fd00:a9e:7::"),
}
UDHCPC_HOOK = """#!/bin/sh
# udhcpc's hook, run in the test's host namespace: the leased address on the test's link, nothing else.
case "$1" in
  bound|renew) %(ip)s addr replace "$ip/$mask" dev "$interface" ;;
  deconfig) %(ip)s -4 addr flush dev "$interface" ;;
esac
echo "$1" >> %(events)s
"""
DHCPCD_HOOK = """#!/bin/sh
# dhcpcd's hook: records the event only (dhcpcd itself adds the leased address in the namespace).
echo "$reason" >> %(events)s
"""
DHCPCD_CONF = "noipv6rs\nia_na 1\n"  # no router advertisement to wait for: solicit at once


def wait_for(what, condition, timeout=10.0):
    """Polls `condition` until it is true, for `timeout` seconds at most; `what` may be a callable
    (called on failure, to say what was seen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what() if callable(what) else what))
        time.sleep(0.1)


class DhcpLink(object):
    """The DHCP server's link in the lab, its dnsmasq and the host's two clients."""

    def __init__(self, lab):
        self.lab = lab
        self.dev = "dh-" + lab.tag  # the host's side; the kernel's LOG lines name it (OUT=...)
        self.server_dev = "ds-" + lab.tag
        self.clients = {}
        sh("ip", "link", "add", self.dev, "netns", lab.host, "type", "veth", "peer", "name", self.server_dev,
           "netns", lab.peer)
        for ns, dev in ((lab.host, self.dev), (lab.peer, self.server_dev)):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.%s.accept_dad=0" % dev)
        sh("ip", "-n", lab.peer, "addr", "add", SERVER4 + "/24", "dev", self.server_dev)
        sh("ip", "-n", lab.peer, "addr", "add", SERVER6 + "/64", "dev", self.server_dev, "nodad")
        for ns, dev in ((lab.host, self.dev), (lab.peer, self.server_dev)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        self.server_log = self.path("dhcp-server.log")
        self.spawn("dnsmasq", lab.peer, [
            shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
            "--pid-file=", "--user=root", "--port=0", "--interface=" + self.server_dev, "--bind-interfaces",
            "--dhcp-range=%s,%s,255.255.255.0,2m" % RANGE4, "--dhcp-range=%s,%s,64,2m" % RANGE6,
            "--dhcp-leasefile=" + self.path("leases"), "--log-dhcp", "--log-facility=" + self.server_log])
        wait_for("dnsmasq's DHCP sockets", lambda: "DHCP, sockets bound" in self.read(self.server_log), 5)

    def path(self, name):
        return os.path.join(self.lab.tmp, name)

    @staticmethod
    def read(path):
        try:
            with open(path) as handle:
                return handle.read()
        except IOError:
            return ""

    def spawn(self, name, ns, argv):
        with open(self.path(name + ".out"), "w") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdout=out, stderr=subprocess.STDOUT)
        self.lab.procs.append(proc)  # the lab ends it at the latest
        self.clients[name] = proc
        return proc

    def hook(self, name, template):
        path = self.path(name + "-hook")
        with open(path, "w") as handle:
            handle.write(template % {"ip": shutil.which("ip"), "events": self.path(name + ".events")})
        os.chmod(path, 0o700)
        return path

    def events(self, name):
        return self.read(self.path(name + ".events")).split()

    def start_clients(self):
        """udhcpc and dhcpcd in the host namespace; returns once both hold a lease."""
        self.spawn("udhcpc", self.lab.host, ["busybox", "udhcpc", "-f", "-i", self.dev, "-T", "1", "-t", "10",
                                             "-s", self.hook("udhcpc", UDHCPC_HOOK)])
        with open(self.path("dhcpcd.conf"), "w") as handle:
            handle.write(DHCPCD_CONF)
        # dhcpcd keeps its DUID, leases, pid file and control socket under /run/dhcpcd and /var/lib/dhcpcd:
        # tmpfs over both in the mount namespace `ip netns exec` made for it (a slave of the host's, so
        # nothing propagates out), then exec, so that the pid signalled is dhcpcd's own.
        self.spawn("dhcpcd", self.lab.host, [
            "sh", "-ec", 'mount -t tmpfs agit /run; mkdir /run/dhcpcd; mount -t tmpfs agit /var/lib/dhcpcd; '
            'exec dhcpcd -6 -B -f "$1" -c "$2" "$3"', "dhcpcd", self.path("dhcpcd.conf"),
            self.hook("dhcpcd", DHCPCD_HOOK), self.dev])
        wait_for("udhcpc's lease", lambda: "bound" in self.events("udhcpc"), 15)
        wait_for("dhcpcd's lease", lambda: "BOUND6" in self.events("dhcpcd"), 15)
        addresses = sh("ip", "-n", self.lab.host, "-o", "addr", "show", "dev", self.dev).stdout
        assert re.search(r"inet 198\.18\.7\.5\d/24 ", addresses), addresses
        assert re.search(r"inet6 fd00:a9e:7::5\d/128 ", addresses), addresses

    def renew(self):
        """SIGUSR1 to both clients: udhcpc unicasts a REQUEST to the server, dhcpcd multicasts a RENEW."""
        for name in ("udhcpc", "dhcpcd"):
            self.clients[name].send_signal(signal.SIGUSR1)

    def server_counts(self):
        text = self.read(self.server_log)
        return dict((key, len(pattern.findall(text))) for key, pattern in SERVER_LOG.items())

    def dhcp_rule_packets(self):
        """Packets through the module's dhcp rules per family; None where there is no such rule."""
        counts = {}
        for family, tool in (("ipv4", "iptables-save"), ("ipv6", "ip6tables-save")):
            text = self.lab.run(tool, "-c", "-t", "filter").stdout
            found = re.findall(r'^\[(\d+):\d+\] -A AGENTGUARD-ALLOW .*--comment "agentguard: dhcp" -j ACCEPT$',
                               text, re.M)
            counts[family] = sum(int(n) for n in found) if found else None
        return counts

    def stop(self):
        for proc in self.clients.values():
            proc.terminate()
        for proc in self.clients.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        # dhcpcd's privilege-separated helpers live in the host namespace too: none may outlive the test.
        for pid in sh("ip", "netns", "pids", self.lab.host, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def dhcp(lab):
    for tool in ("busybox", "dhcpcd"):
        if shutil.which(tool) is None:
            pytest.fail("%s is not installed (scripts/bootstrap.sh installs it)" % tool)
    link = DhcpLink(lab)
    yield link
    link.stop()


def short_udp_conntrack(lab):
    lab.run("sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=%d" % CONNTRACK_UDP_TIMEOUT)


def denials(kernel_log, mark, dev, port):
    """The kernel's LOG lines since `mark` of UDP denied on the test's link to server port `port`."""
    return [line for line in kernel_log.since(mark) if "[EGRESS-DENIED] " in line and "OUT=%s " % dev in line
            and "PROTO=UDP " in line and "DPT=%d " % port in line]


def test_leases_are_got_and_renewed_under_enforcement(lab, egress, dhcp, kernel_log):
    result = egress(POLICY)  # host scope, enforce, and dhcp left at its default
    assert result["changed"] is True
    rules = dhcp.dhcp_rule_packets()
    assert rules == {"ipv4": 0, "ipv6": 0}, "the default must open DHCP in both families: %s" % rules
    short_udp_conntrack(lab)
    mark = kernel_log.mark()

    dhcp.start_clients()
    # The DHCPv6 lease itself (SOLICIT, REQUEST) came through OUTPUT, by the dhcp rule.
    assert dhcp.dhcp_rule_packets()["ipv6"] >= 2
    doors = Arrivals(lab.peer, DOORS)
    before_rules, before_log = dhcp.dhcp_rule_packets(), dhcp.server_counts()

    for n in range(1, RENEWALS + 1):
        time.sleep(CONNTRACK_UDP_TIMEOUT + 0.5)  # the last renewal's conntrack entry is gone: NEW again
        dhcp.renew()
        want = dict((key, before_log[key] + n) for key in SERVER_LOG)
        wait_for(lambda: "renewal %d in dnsmasq's log (have %s, want %s)" % (n, dhcp.server_counts(), want),
                 lambda: all(dhcp.server_counts()[key] >= want[key] for key in want), 5)

    log = dhcp.server_counts()
    assert dict((k, log[k] - before_log[k]) for k in log) == dict.fromkeys(SERVER_LOG, RENEWALS), log
    assert doors.since() == dict.fromkeys(DOORS, RENEWALS), "each renewal reached the server through OUTPUT"
    rules = dhcp.dhcp_rule_packets()
    assert rules["ipv4"] - before_rules["ipv4"] == RENEWALS, (before_rules, rules)
    assert rules["ipv6"] - before_rules["ipv6"] == RENEWALS, (before_rules, rules)
    assert dhcp.events("udhcpc").count("renew") == RENEWALS
    assert dhcp.events("dhcpcd").count("RENEW6") == RENEWALS
    assert not denials(kernel_log, mark, dhcp.dev, 67) + denials(kernel_log, mark, dhcp.dev, 547)


def test_dhcp_false_blocks_and_logs_renewals(lab, egress, dhcp, kernel_log):
    dhcp.start_clients()  # leased before the rules, as on a host hardened after boot
    result = egress(dict(POLICY, dhcp=False))
    assert result["changed"] is True
    assert dhcp.dhcp_rule_packets() == {"ipv4": None, "ipv6": None}
    short_udp_conntrack(lab)
    doors = Arrivals(lab.peer, DOORS)
    before_log = dhcp.server_counts()
    mark = kernel_log.mark()

    dhcp.renew()
    wait_for("the renewals' denials in the kernel log",
             lambda: denials(kernel_log, mark, dhcp.dev, 67) and denials(kernel_log, mark, dhcp.dev, 547), 5)
    time.sleep(1.0)  # time enough for an answer, had the request left
    for client_port, server_port in ((68, 67), (546, 547)):
        lines = denials(kernel_log, mark, dhcp.dev, server_port)
        assert all("SPT=%d " % client_port in line for line in lines), lines
    assert doors.since() == dict.fromkeys(DOORS, 0), "no renewal may reach the server through OUTPUT"
    log = dhcp.server_counts()
    assert log["renew6"] == before_log["renew6"] and log["reply6"] == before_log["reply6"], log
    assert "RENEW6" not in dhcp.events("dhcpcd")
    # udhcpc's renewal failed at send (EPERM) and it fell back to rebinding by broadcast, which leaves
    # by its packet socket and so is beyond any OUTPUT rule: dnsmasq may log that one for IPv4.
