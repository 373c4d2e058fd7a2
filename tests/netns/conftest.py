"""Real kernels for the module: a host namespace under test and a peer namespace with servers.

Layout (all addresses are the lab's own, inside namespaces the tests create and delete):
  host ns  198.18.1.2/24  fd00:a9e:2::2/64   <-veth->  peer ns: allowed .10/::10, forbidden .66/::66,
                                                       resolver .53/::53 (dnsmasq), and .100-.111 (a CDN)
"""
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
    check = kw.pop("check", True)
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=check, **kw)


def require_root():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        reason = "integration tests need root and iproute2 to create network namespaces"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


class Lab(object):
    def __init__(self, tag):
        self.host = "agit-h-%s" % tag
        self.peer = "agit-p-%s" % tag
        self.procs = []
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

    def start_filtering_resolver(self, names, set_timeout):
        """dnsmasq on the host's loopback, as user nobody: allowlisted names only, answers fill the sets."""
        conf = os.path.join(self.tmp, "filtering.conf")
        lines = ["listen-address=127.0.0.1", "bind-interfaces", "no-resolv", "no-hosts", "address=/#/",
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

    def probe(self, targets, uid=None, timeout=1.5, repeat=0):
        argv = ["ip", "netns", "exec", self.host]
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

    def down(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in (self.host, self.peer):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def lab(request):
    require_root()
    tag = "%d%s" % (os.getpid() % 10000, request.node.name[-6:].replace("[", "").replace("]", "").replace("-", ""))[:10]
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
                "ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, ".cache", "collections"),
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
