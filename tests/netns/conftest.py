"""Real kernels for the module: a host namespace under test and a peer namespace with servers.

Layout (all addresses are the lab's own, inside namespaces the tests create and delete):
  host ns  198.18.1.2/24  fd00:a9e:2::2/64   <-veth->  peer ns: allowed .10/::10, forbidden .66/::66,
                                                       resolver .53/::53 (dnsmasq), and .100-.111 (a CDN)
  and, for the forward path (Lab.add_bridge, add_container), container networks as Docker builds its
  default bridge: in the host ns a bridge (docker0: 198.19.30.1/24, fd00:d0c:30::1/64; agbr1: .31),
  forwarding on, Docker's MASQUERADE; each container a namespace with a veth port on the bridge
  (198.19.30.2, fd00:d0c:30::2, ...) and default routes via it. Every namespace goes with the lab.
"""
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PYTHON = sys.executable
V4 = {"host": "198.18.1.2", "allowed": "198.18.1.10", "forbidden": "198.18.1.66", "dns": "198.18.1.53"}
V6 = {"host": "fd00:a9e:2::2", "allowed": "fd00:a9e:2::10", "forbidden": "fd00:a9e:2::66", "dns": "fd00:a9e:2::53"}
CDN4 = ["198.18.1.%d" % i for i in range(100, 112)]
CDN6 = ["fd00:a9e:2::1%02d" % i for i in range(0, 12)]
HOSTS = "\n".join([
    "%s api.test" % V4["allowed"], "%s api.test" % V6["allowed"],
    "%s forbidden.test" % V4["forbidden"], "%s forbidden.test" % V6["forbidden"],
] + ["%s cdn.test" % a for a in CDN4 + CDN6]) + "\n"


def sh(*argv, **kw):
    """Run argv; with check (the default) a failure raises with the command's stderr in the message."""
    check = kw.pop("check", True)
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False, **kw)
    if check and proc.returncode:
        raise AssertionError("%s exited %d: %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()[-2000:]))
    return proc


def require_root():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        reason = "integration tests need root and iproute2 to create network namespaces"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


Bridge = collections.namedtuple("Bridge", ["name", "gw4", "gw6", "net4", "net6", "subnet"])
Container = collections.namedtuple("Container", ["ns", "v4", "v6", "veth", "bridge"])


class Lab(object):
    def __init__(self, tag):
        self.host = "agit-h-%s" % tag
        self.peer = "agit-p-%s" % tag
        self.tag = tag
        self.procs = []
        self.extra_ns = []  # container namespaces (add_container), deleted with the lab
        self.tmp = tempfile.mkdtemp(prefix="agit-")

    def up(self):
        for ns in (self.host, self.peer):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "agh0", "netns", self.host, "type", "veth", "peer", "name", "agp0", "netns", self.peer)
        sh("ip", "-n", self.host, "addr", "add", V4["host"] + "/24", "dev", "agh0")
        sh("ip", "netns", "exec", self.host, "sysctl", "-qw", "net.ipv6.conf.agh0.router_solicitations=0")
        sh("ip", "-n", self.host, "addr", "add", V6["host"] + "/64", "dev", "agh0", "nodad")
        for addr in [V4["allowed"], V4["forbidden"], V4["dns"]] + CDN4:
            sh("ip", "-n", self.peer, "addr", "add", addr + "/24", "dev", "agp0")
        for addr in [V6["allowed"], V6["forbidden"], V6["dns"]] + CDN6:
            sh("ip", "-n", self.peer, "addr", "add", addr + "/64", "dev", "agp0", "nodad")
        for ns, dev in ((self.host, "agh0"), (self.peer, "agp0")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        self.hosts = os.path.join(self.tmp, "hosts")
        with open(self.hosts, "w") as handle:
            handle.write(HOSTS)
        self.upstream_log = os.path.join(self.tmp, "upstream.log")
        self.upstream = self.spawn(self.peer, [
            DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=", "--user=root", "--no-resolv",
            "--no-hosts", "--addn-hosts=" + self.hosts, "--listen-address=%s,%s" % (V4["dns"], V6["dns"]),
            "--bind-interfaces", "--local=/test/", "--log-queries", "--log-facility=" + self.upstream_log])
        self.spawn(self.peer, [PYTHON, os.path.join(HERE, "server.py"), "443", "80", "8443"], ready=True)
        self.wait_ready()
        return self

    def spawn(self, ns, argv, ready=False):
        proc = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True)
        if ready:
            assert proc.stdout.readline().strip() == "ready"
        self.procs.append(proc)
        return proc

    def move_name(self, name, addresses):
        """Point `name` at other addresses on the upstream resolver (as a CDN rotation would)."""
        lines = [l for l in HOSTS.splitlines() if not l.endswith(" " + name)]
        lines += ["%s %s" % (a, name) for a in addresses]
        with open(self.hosts, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        self.upstream.send_signal(signal.SIGHUP)  # dnsmasq re-reads --addn-hosts
        time.sleep(0.3)

    def upstream_queries(self):
        with open(self.upstream_log) as handle:
            return [l for l in handle if "query[" in l]

    def start_filtering_resolver(self, names, set_timeout, listen=("127.0.0.1",)):
        """dnsmasq on the host's loopback (and the other `listen` addresses: a container bridge's, say),
        as user nobody: allowlisted names only, answers fill the sets."""
        conf = os.path.join(self.tmp, "filtering.conf")
        lines = ["listen-address=" + ",".join(listen), "bind-interfaces", "no-resolv", "no-hosts", "address=/#/",
                 "max-ttl=%d" % set_timeout, "max-cache-ttl=%d" % set_timeout, "log-queries"]
        for label, name in names:
            lines += ["server=/%s/%s" % (name, server) for server in (V4["dns"], V6["dns"])]
            lines += ["address=/*.%s/" % name, "ipset=/%s/ag4-%s,ag6-%s" % (name, label, label)]
        with open(conf, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        self.spawn(self.host, [DNSMASQ, "--keep-in-foreground", "--conf-file=" + conf, "--pid-file=", "--user=nobody",
                               "--log-facility=" + os.path.join(self.tmp, "filtering.log")])
        deadline = time.monotonic() + 10
        while self.probe(["udp-dns:127.0.0.1:" + names[0][1]], timeout=0.5) != {"udp-dns:127.0.0.1:" + names[0][1]: "ok"}:
            if time.monotonic() > deadline:
                raise RuntimeError("the filtering resolver did not start")
            time.sleep(0.2)

    def wait_ready(self):
        deadline = time.monotonic() + 15
        want = ["tcp:%s:443" % V4["allowed"], "tcp:[%s]:443" % V6["allowed"], "udp-dns:%s:api.test" % V4["dns"],
                "udp-dns:[%s]:api.test" % V6["dns"]]
        while True:
            results = self.probe(want, timeout=1.0)
            if all(v == "ok" for v in results.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("lab services did not come up: %s" % results)
            time.sleep(0.2)

    def probe(self, targets, uid=None, timeout=1.5, repeat=0, ns=None):
        """Run probe.py in the host namespace (or in `ns`, a container's, say) and return its results."""
        argv = ["ip", "netns", "exec", ns or self.host]
        python = PYTHON
        if uid is not None:
            # An unprivileged uid may not read root's virtualenv: TCP probes need only the system python.
            argv += ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups"]
            python = "/usr/bin/python3"
        with open(os.path.join(HERE, "probe.py")) as handle:
            code = handle.read()
        argv += [python, "-c", code, "--timeout", str(timeout), "--repeat", str(repeat)] + list(targets)
        return json.loads(sh(*argv).stdout)

    def save(self, family="ipv4", tool=None):
        tool = tool or ("iptables-save" if family == "ipv4" else "ip6tables-save")
        text = sh("ip", "netns", "exec", self.host, tool, "-t", "filter").stdout
        # Chain counters count packets (an IPv6 router solicitation after link-up, say), not rules:
        # everything else must match byte for byte.
        return "".join(re.sub(r"\[\d+:\d+\]$", "[0:0]", line) + "\n" for line in text.splitlines()
                       if not line.startswith("#"))

    def ipset(self):
        text = sh("ip", "netns", "exec", self.host, "ipset", "save").stdout
        return "\n".join(sorted(l for l in text.splitlines() if l.startswith("add") or l.split()[:2]))

    def run(self, *argv):
        return sh("ip", "netns", "exec", self.host, *argv)

    # The forward path: container networks behind a bridge of the host namespace, as Docker's default
    # bridge is: the bridge holds the gateway address, each container is a namespace with a veth port
    # on it and default routes via the bridge, the host forwards both families and masquerades the
    # network's traffic that leaves by another interface (Docker's `-s NET ! -o BRIDGE -j MASQUERADE`).

    def add_bridge(self, name, subnet):
        """A bridge `name` with 198.19.<subnet>.1/24 and fd00:d0c:<subnet>::1/64 in the host namespace."""
        bridge = Bridge(name, "198.19.%d.1" % subnet, "fd00:d0c:%d::1" % subnet,
                        "198.19.%d.0/24" % subnet, "fd00:d0c:%d::/64" % subnet, subnet)
        self.run("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                 "net.ipv6.conf.default.accept_dad=0")
        sh("ip", "-n", self.host, "link", "add", name, "type", "bridge")
        sh("ip", "-n", self.host, "addr", "add", bridge.gw4 + "/24", "dev", name)
        sh("ip", "-n", self.host, "addr", "add", bridge.gw6 + "/64", "dev", name, "nodad")
        sh("ip", "-n", self.host, "link", "set", name, "up")
        for tool, net in (("iptables", bridge.net4), ("ip6tables", bridge.net6)):
            self.run(tool, "-t", "nat", "-A", "POSTROUTING", "-s", net, "!", "-o", name, "-j", "MASQUERADE")
        return bridge

    def add_container(self, bridge, index):
        """A container namespace on `bridge` with address .<index> (and ::<index>), ready to use."""
        ns = "agit-c%d%d-%s" % (bridge.subnet, index, self.tag)
        veth = "agv%d-%d" % (bridge.subnet, index)
        container = Container(ns, "198.19.%d.%d" % (bridge.subnet, index), "fd00:d0c:%d::%d" % (bridge.subnet, index),
                              veth, bridge)
        sh("ip", "netns", "add", ns)
        self.extra_ns.append(ns)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0",
           "net.ipv6.conf.default.router_solicitations=0")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", veth, "netns", self.host, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", self.host, "link", "set", veth, "master", bridge.name)
        sh("ip", "-n", self.host, "link", "set", veth, "up")
        sh("ip", "-n", ns, "addr", "add", container.v4 + "/24", "dev", "eth0")
        sh("ip", "-n", ns, "addr", "add", container.v6 + "/64", "dev", "eth0", "nodad")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", bridge.gw4)
        sh("ip", "-n", ns, "-6", "route", "add", "default", "via", bridge.gw6)
        # Bounded wait: the container reaches the allowed API over both families before any rule.
        want = ["tcp:%s:443" % V4["allowed"], "tcp:[%s]:443" % V6["allowed"]]
        deadline = time.monotonic() + 15
        while True:
            results = self.probe(want, timeout=1.0, ns=ns)
            if set(results.values()) == {"ok"}:
                return container
            if time.monotonic() > deadline:
                raise RuntimeError("container %s cannot reach the peer: %s" % (ns, results))
            time.sleep(0.2)

    def save_all(self, family="ipv4"):
        """iptables-save of every table, chain counters zeroed (they count packets, not rules)."""
        tool = "iptables-save" if family == "ipv4" else "ip6tables-save"
        text = self.run(tool).stdout
        return "".join(re.sub(r"\[\d+:\d+\]$", "[0:0]", line) + "\n" for line in text.splitlines()
                       if not line.startswith("#"))

    def down(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in self.extra_ns + [self.host, self.peer]:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def parse_target(target):
    """A probe target ("tcp:[::1]:443", "icmp:198.18.1.66:echo") as (kind, host, argument)."""
    kind, rest = target.split(":", 1)
    host, arg = rest.rsplit(":", 1)
    return kind, host.strip("[]"), arg


class Arrivals(object):
    """Counts, AT THE DESTINATION, the packets that arrive for probe targets: one rule without a verdict
    per target in the raw table's PREROUTING of the namespace `ns` (iptables and ip6tables), any source.
    A zero proves that nothing of a blocked probe got through; the allowed probes' non-zero counts in
    the same run prove the counters see what arrives."""

    def __init__(self, ns, targets):
        self.ns = ns
        self.targets = list(targets)
        payload = {"iptables": [], "ip6tables": []}
        for target in self.targets:
            tool, match = self.rule(target)
            payload[tool].append(" ".join(["-A PREROUTING"] + match + ["-m comment --comment \"agit-count %s\"" % target]))
        for tool, rules in payload.items():
            if rules:
                sh("ip", "netns", "exec", ns, tool + "-restore", "--noflush",
                   input="*raw\n%s\nCOMMIT\n" % "\n".join(rules))
        self.base = self.read()

    @staticmethod
    def rule(target):
        kind, host, arg = parse_target(target)
        v6 = ":" in host
        match = ["-d", host]
        if kind == "icmp":
            match += ["-p", "ipv6-icmp", "--icmpv6-type", "echo-request"] if v6 else ["-p", "icmp", "--icmp-type", "echo-request"]
        else:
            protocol = "udp" if kind in ("udp", "udp-dns") else "tcp"
            port = "53" if kind.endswith("-dns") else arg
            match += ["-p", protocol, "--dport", port]
        return ("ip6tables" if v6 else "iptables"), match

    def read(self):
        counts = {}
        for tool in ("iptables-save", "ip6tables-save"):
            text = sh("ip", "netns", "exec", self.ns, tool, "-c", "-t", "raw").stdout
            for line in text.splitlines():
                found = re.match(r'^\[(\d+):\d+\] -A PREROUTING .*--comment "agit-count (\S+)"', line)
                if found:
                    counts[found.group(2)] = int(found.group(1))
        return counts

    def since(self):
        """Packets per target since the counters were created or last reset."""
        now = self.read()
        return dict((t, now[t] - self.base[t]) for t in self.targets)


KERNEL_LOG_MARK = "kernel_log"


def pytest_configure(config):
    config.addinivalue_line("markers", KERNEL_LOG_MARK + ": reads the kernel's log; runs alone (scripts/netns.sh)")


def pytest_collection_modifyitems(items):
    """Every test that reads the kernel's log is marked so: scripts/netns.sh runs the others side by side
    (pytest-xdist) and these one at a time, after them."""
    for item in items:
        if KERNEL_LOG_MARK in getattr(item, "fixturenames", ()):
            item.add_marker(KERNEL_LOG_MARK)


@pytest.fixture
def kernel_log():
    """Kernel LOG lines from a non-initial namespace need nf_log_all_netns=1 (restored afterwards).
    The fixture is dmesg's text now; kernel_log.since(mark) gives the lines after kernel_log.mark().

    The sysctl and dmesg are the machine's, and every lab namespace has the same addresses: beside another
    test, one test's LOG lines would be counted in the other's, and its restore would switch the other's
    logging off. So a test that reads the log refuses to run beside others (scripts/netns.sh)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or "1")
    if workers > 1:
        pytest.fail("a test that reads the kernel's log runs alone, not with %d pytest-xdist workers: "
                    "scripts/netns.sh runs the tests marked %s after the others, without -n" % (workers, KERNEL_LOG_MARK))
    path = "/proc/sys/net/netfilter/nf_log_all_netns"
    if not os.path.exists(path):
        pytest.skip("this kernel has no nf_log_all_netns sysctl")
    with open(path) as handle:
        old = handle.read().strip()
    with open(path, "w") as handle:
        handle.write("1")
    yield KernelLog()
    with open(path, "w") as handle:
        handle.write(old)


class KernelLog(object):
    STAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")

    def __call__(self):
        return subprocess.run(["dmesg"], stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout

    def mark(self):
        """The time stamp of the newest kernel line (monotonic seconds, as dmesg prints it)."""
        stamps = [self.STAMP.match(l) for l in self().splitlines()]
        stamps = [float(m.group(1)) for m in stamps if m]
        return stamps[-1] if stamps else 0.0

    def since(self, mark):
        lines = []
        for line in self().splitlines():
            found = self.STAMP.match(line)
            if found and float(found.group(1)) > mark:
                lines.append(line)
        return lines


@pytest.fixture
def lab(request):
    require_root()
    # Unique among the labs of pytest-xdist workers running side by side (their namespaces' names).
    worker = os.environ.get("PYTEST_XDIST_WORKER", "").replace("gw", "")
    tag = "%s%d%s" % (worker, os.getpid() % 10000,
                      request.node.name[-6:].replace("[", "").replace("]", "").replace("-", ""))[:12]
    lab = Lab(tag).up()
    yield lab
    lab.down()


class ModuleRunner(object):
    """Runs agentguard.hardening.egress_rules through ansible-playbook inside the lab's host namespace."""

    def __init__(self, lab, path_prefix=None):
        self.lab = lab
        self.path_prefix = path_prefix

    def __call__(self, args, check=False, diff=True, expect_failure=False, module="agentguard.hardening.egress_rules"):
        workdir = tempfile.mkdtemp(prefix="agit-play-")
        try:
            with open(os.path.join(workdir, "args.json"), "w") as handle:
                json.dump({"egress_args": args}, handle)
            with open(os.path.join(workdir, "play.yml"), "w") as handle:
                handle.write("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                             "    - name: Run the module under test\n"
                             "      %s: \"{{ egress_args }}\"\n" % module)
            env = dict(os.environ)
            env.update({
                "AGENTGUARD_NETNS": self.lab.host, "AGENTGUARD_NETNS_PYTHON": PYTHON,
                "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json", "ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg"),
                # AGENTGUARD_IT_COLLECTIONS_PATH: test another copy of the collection (a build, a snapshot).
                "ANSIBLE_COLLECTIONS_PATH": os.environ.get("AGENTGUARD_IT_COLLECTIONS_PATH",
                                                           os.path.join(ROOT, ".cache", "collections")),
                "ANSIBLE_LOCALHOST_WARNING": "false", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
            })
            env["PATH"] = os.path.dirname(PYTHON) + os.pathsep + env["PATH"]
            if self.path_prefix:
                env["PATH"] = self.path_prefix + os.pathsep + env["PATH"]
            argv = [os.path.join(os.path.dirname(PYTHON), "ansible-playbook"), "-i", "localhost,", "-c", "local",
                    "-e", "ansible_python_interpreter=" + os.path.join(HERE, "netns-python"),
                    "-e", "@" + os.path.join(workdir, "args.json"), os.path.join(workdir, "play.yml")]
            if check:
                argv.append("--check")
            if diff:
                argv.append("--diff")
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                                  env=env, cwd=ROOT, timeout=300, check=False)
            try:
                output = json.loads(proc.stdout)
                result = output["plays"][0]["tasks"][0]["hosts"]["localhost"]
            except (ValueError, KeyError, IndexError):
                raise AssertionError("ansible-playbook output not understood (rc %d):\n%s\n%s"
                                     % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
            failed = bool(result.get("failed"))
            outcome = "failure" if failed else "success"
            assert failed == expect_failure, "unexpected %s: %s" % (outcome, result.get("msg", result))
            return result
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def egress(lab):
    return ModuleRunner(lab)


@pytest.fixture
def backend_path(tmp_path):
    """A PATH prefix selecting one iptables backend by name, as update-alternatives would."""
    def make(backend):
        directory = tmp_path / ("bin-" + backend)
        directory.mkdir()
        for family in ("ip", "ip6"):
            for tool in ("save", "restore"):
                real = shutil.which("%stables-%s-%s" % (family, backend, tool))
                if real is None:
                    pytest.fail("%stables-%s-%s is not installed" % (family, backend, tool))
                os.symlink(real, str(directory / ("%stables-%s" % (family, tool))))
        return str(directory)
    return make
