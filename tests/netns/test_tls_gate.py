"""The TLS gate on a real kernel: egress_rules' redirect rules, and a real nginx (stream, ssl_preread)
running the configuration rendered from the module's tls_gate result, as an unprivileged user.

Topology (conftest.Lab): the hardened host namespace (the module's rules, the gate on 10443) with a
Docker-like bridge docker0 and one container behind it; the peer namespace holds the trusted
resolver and, here, a TLS server on 443 (both families) at the allowed address .10/::10 that also
answers a co-tenant name (one address, two names, as on a CDN) and at the forbidden address
.66/::66; its certificate comes from a throwaway CA made by the test. The server logs every
connection it accepts and the server name of every handshake, and packets are counted AT THE
DESTINATION (conftest.Arrivals), so "refused" means the gate never opened a connection upstream.
Scope host with pinned DNS first; then scope users (only the listed users are redirected, the gate's
user is held to the allowlist) and dns_mode filtering (the gate asks a real filtering dnsmasq).
"""
import ipaddress
import json
import os
import shutil
import time

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _tlsgate as G

from .conftest import PYTHON, ROOT, V4, V6, Arrivals, sh

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
GATE_USER = "nobody"
GATE_UID = 65534
AGENT_UID = 4242  # the local client: any uid, restricted like every process with scope host
GATE_PORT = 10443
PROBE_DIR = os.path.join(ROOT, "bench", "tlsgate")

POLICY = dict(
    allow=[dict(name="inference-api", host="api.test", ports=[443])],
    dns_servers=[V4["dns"], V6["dns"]],
    scope_networks=["docker0"],
    resolve_timeout=1.0,
    log_limit="100/second",
    log_burst=1000,
    tls_gate="enforce",
    tls_gate_user=GATE_USER,
    tls_gate_port=GATE_PORT,
)

# The TLS server of the peer namespace: one dual-stack listener on 443, one certificate for both
# names; one log line per accepted connection, and one per handshake with the name it carried.
SERVER = r'''
import json, socket, ssl, sys, threading
cert, key, log_path = sys.argv[1:4]
lock = threading.Lock()
def log(**entry):
    with lock, open(log_path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
def remember(tls, name, context):
    tls.agentguard_sni = name
ctx.sni_callback = remember
def serve(conn, peer):
    local = conn.getsockname()[0]
    log(event="accept", local=local, peer=peer[0])
    try:
        conn.settimeout(5)
        tls = ctx.wrap_socket(conn, server_side=True)
        name = getattr(tls, "agentguard_sni", None)
        log(event="handshake", local=local, peer=peer[0], sni=name)
        tls.recv(4096)
        tls.sendall(("HTTP/1.0 200 OK\r\n\r\nhello %s at %s\n" % (name, local)).encode())
        tls.close()
    except (OSError, ssl.SSLError) as exc:
        log(event="failed", local=local, peer=peer[0], error=str(exc)[:80])
        conn.close()
sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
sock.bind(("::", 443))
sock.listen(64)
print("ready", flush=True)
while True:
    conn, peer = sock.accept()
    threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
'''

# The clients: each case in its own thread, every socket with a timeout; one JSON object out. The TLS client and
# the hand-made ClientHello (Python's ssl never sends an IP literal as the server name) are the TLS gate bench's:
# bench/tlsgate/probe.py, standard library only.
CLIENT = r'''
import json, socket, ssl, sys, threading
sys.path.insert(0, sys.argv[1])
from probe import client_hello, connect, request
cafile, cases = sys.argv[2], json.loads(sys.argv[3])
def tls(addr, sni, timeout):
    ctx = ssl.create_default_context(cafile=cafile)
    if sni is None:
        ctx.check_hostname = False
    with connect(addr, timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as conn:
            return "answered: " + request(conn, sni or addr)
def raw(addr, payload, timeout):
    with connect(addr, timeout) as sock:
        sock.sendall(payload)
        try:
            got = sock.recv(4096)
        except socket.timeout:
            return "no answer"
    return "bytes back" if got else "closed"
def run(key, case):
    kind, addr = case[0], case[1]
    try:
        if kind == "tls":
            results[key] = tls(addr, case[2], case[3])
        elif kind == "hello":
            results[key] = raw(addr, client_hello(case[2]), case[3])
        else:
            results[key] = raw(addr, b"GET / HTTP/1.0\r\nHost: api.test\r\n\r\n", case[2])
    except socket.timeout:
        results[key] = "timeout"
    except (OSError, ssl.SSLError) as exc:
        results[key] = "refused: %s" % type(exc).__name__
results = {}
threads = [threading.Thread(target=run, args=(key, case)) for key, case in cases.items()]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(30)
print(json.dumps(results))
'''


def openssl(work, *argv):
    sh("openssl", *argv, cwd=work)


def make_ca(work):
    """A throwaway CA and one server certificate for api.test and the co-tenant (EC P-256)."""
    openssl(work, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", "/CN=agentguard test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign", "-keyout", "ca.key", "-out", "ca.pem")
    openssl(work, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=api.test",
            "-keyout", "server.key", "-out", "server.csr")
    with open(os.path.join(work, "san.ext"), "w") as handle:
        handle.write("subjectAltName=DNS:api.test,DNS:cotenant.test\nextendedKeyUsage=serverAuth\n")
    openssl(work, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.ext", "-out", "server.pem")
    os.chmod(os.path.join(work, "ca.pem"), 0o644)


class Gate(object):
    """The lab with the TLS server in place of the plain one, a container, and the gate's files."""

    def __init__(self, lab):
        self.lab = lab
        self.work = os.path.join(lab.tmp, "tls")
        os.mkdir(self.work)
        os.chmod(lab.tmp, 0o755)
        os.chmod(self.work, 0o755)
        make_ca(self.work)
        # As on a CDN, DNS puts the co-tenant at the allowed name's address: only the gate's list
        # (not a failed lookup) can keep it out.
        lab.move_name("cotenant.test", [V4["allowed"], V6["allowed"]])
        # First the container (its readiness probe wants the plain server's answer), then the TLS server.
        bridge = lab.add_bridge("docker0", 30)
        self.container = lab.add_container(bridge, 2)
        for proc in [p for p in lab.procs if "server.py" in " ".join(p.args)]:
            proc.terminate()  # the plain server holds port 443
            proc.wait(timeout=5)
            lab.procs.remove(proc)
        self.server_log = os.path.join(self.work, "server.log")
        code = os.path.join(self.work, "server_code.py")
        with open(code, "w") as handle:
            handle.write(SERVER)
        lab.spawn(lab.peer, [PYTHON, code, os.path.join(self.work, "server.pem"), os.path.join(self.work, "server.key"),
                             self.server_log], ready=True)
        # The gate's own directory: nobody writes its log and pid file there, and nothing else.
        self.gate_dir = os.path.join(self.work, "gate")
        os.mkdir(self.gate_dir)
        os.chown(self.gate_dir, GATE_UID, GATE_UID)
        self.access_log = os.path.join(self.gate_dir, "access.log")
        self.proc = None

    def start(self, result, dns_mode="pinned", resolvers=(V4["dns"], V6["dns"])):
        """(Re)start nginx as the gate user (result.tls_gate.uid) with the configuration rendered from
        result.tls_gate; in filtering mode `resolvers` is the filtering resolver."""
        self.stop()
        uid = result["tls_gate"]["uid"]
        for path in [self.gate_dir] + [os.path.join(self.gate_dir, n) for n in os.listdir(self.gate_dir)]:
            os.chown(path, uid, uid)
        conf = os.path.join(self.work, "nginx.conf")
        with open(conf, "w") as handle:
            handle.write(G.render_nginx(result["tls_gate"], dns_mode, list(resolvers), self.access_log,
                                        os.path.join(self.gate_dir, "nginx.pid"), os.path.join(self.gate_dir, "error.log")))
        os.chmod(conf, 0o644)
        argv = ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups",
                NGINX, "-c", conf, "-e", os.path.join(self.gate_dir, "error.log"), "-g", "daemon off;"]
        self.proc = self.lab.spawn(self.lab.host, argv)
        deadline = time.monotonic() + 10
        while ":%d " % GATE_PORT not in self.lab.run("ss", "-Hltn").stdout:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gate did not start: %s" % self.proc.stderr.read())
            time.sleep(0.1)

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.lab.procs.remove(self.proc)
            self.proc = None

    def clients(self, cases, ns=None, uid=None):
        argv = ["ip", "netns", "exec", ns or self.lab.host]
        if uid is not None:
            argv += ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups"]
        argv += ["/usr/bin/python3", "-c", CLIENT, PROBE_DIR, os.path.join(self.work, "ca.pem"), json.dumps(cases)]
        return json.loads(sh(*argv, timeout=60).stdout)

    def server_events(self):
        if not os.path.exists(self.server_log):
            return []
        with open(self.server_log) as handle:
            return [json.loads(line) for line in handle]

    def gate_log(self):
        with open(self.access_log) as handle:
            return G.parse_gate_log(handle)


@pytest.fixture
def gate(lab):
    if not os.path.exists(G.STREAM_MODULE) or shutil.which("openssl") is None or not os.path.exists(NGINX):
        pytest.skip("needs nginx with its stream module (nginx-light, libnginx-mod-stream) and openssl")
    gate = Gate(lab)
    yield gate
    gate.stop()


def cases_for(addr4, addr6, forbidden4, forbidden6, timeout=1.5):
    """Every case of the matrix, both families."""
    cases = {}
    for family, allowed, forbidden in (("v4", addr4, forbidden4), ("v6", addr6, forbidden6)):
        cases.update({
            family + " allowed": ["tls", allowed, "api.test", 5],
            family + " co-tenant": ["tls", allowed, "cotenant.test", 5],
            family + " no sni": ["tls", allowed, None, 5],
            family + " ip literal": ["hello", allowed, allowed, 5],
            family + " plain tcp": ["plain", allowed, 5],
            family + " allowed name, forbidden address": ["tls", forbidden, "api.test", timeout],
        })
    return cases


def test_enforce_allows_the_name_only_to_its_addresses(lab, egress, gate, kernel_log):
    before = (lab.save_all("ipv4"), lab.save_all("ipv6"))
    plan = egress(POLICY, check=True)
    assert plan["changed"] is True and plan["tls_gate"]["listeners"] == [{"port": 443, "listen": GATE_PORT}]
    assert "-t nat -I OUTPUT 1 -j AGENTGUARD-TLS" in plan["changes"]["ipv6"]["added"]
    assert (lab.save_all("ipv4"), lab.save_all("ipv6")) == before, "check mode must not touch the kernel"
    result = egress(POLICY)
    assert result["changed"] is True and result["tls_gate"] == plan["tls_gate"]
    for family in ("ipv4", "ipv6"):
        live = [line for line in lab.save_all(family).splitlines() if "AGENTGUARD-TLS" in line]
        assert sorted(live) == sorted(line for line in result["rules"][family].splitlines() if "AGENTGUARD-TLS" in line)
    assert result["tls_gate"] == {
        "mode": "enforce", "user": GATE_USER, "uid": GATE_UID, "listeners": [{"port": 443, "listen": GATE_PORT}],
        "names": [{"name": "api.test", "subdomains": False, "ports": [443], "addresses": [V4["allowed"], V6["allowed"]]}],
        "ungated": []}
    gate.start(result)
    forbidden = ["tcp:%s:443" % V4["forbidden"], "tcp:[%s]:443" % V6["forbidden"]]
    arrivals = Arrivals(lab.peer, forbidden)
    mark = kernel_log.mark()
    cases = cases_for(V4["allowed"], V6["allowed"], V4["forbidden"], V6["forbidden"])
    local = gate.clients(cases, uid=AGENT_UID)
    container = gate.clients(cases, ns=gate.container.ns)

    for where, results in (("local", local), ("container", container)):
        for family in ("v4", "v6"):
            assert results[family + " allowed"].startswith("answered: hello api.test at "), (where, results)
            for case in ("co-tenant", "no sni"):
                assert results["%s %s" % (family, case)].startswith("refused: "), (where, case, results)
            assert results[family + " ip literal"] == "closed", (where, results)
            assert results[family + " plain tcp"] == "closed", (where, results)
            assert results[family + " allowed name, forbidden address"] == "timeout", (where, results)

    # At the server: exactly the four allowed handshakes, all from the gate (the host), all for
    # api.test; no connection at all for the refused cases; nothing at the forbidden address.
    events = gate.server_events()
    assert len([e for e in events if e["event"] == "accept"]) == 4, events
    assert sorted(e["sni"] for e in events if e["event"] == "handshake") == ["api.test"] * 4, events
    assert set(e["peer"].replace("::ffff:", "") for e in events) <= {V4["host"], V6["host"]}, events
    assert all(ipaddress.ip_address(e["local"].replace("::ffff:", "")) in
               (ipaddress.ip_address(V4["allowed"]), ipaddress.ip_address(V6["allowed"])) for e in events), events
    assert arrivals.since() == dict.fromkeys(forbidden, 0)

    # Every refusal is in the gate's log, and the [EGRESS-TLS] kernel line joined to it names the
    # sender (the uid, or the container's address) and where the client was going.
    records = gate.gate_log()
    joined = G.join_tls_log(records, G.parse_tls_kernel_log(kernel_log.since(mark)))
    reasons = {"co-tenant": "not-allowed", "no sni": "no-sni", "ip literal": "ip-literal", "plain tcp": "not-tls"}
    for where, source in (("local", None), ("container", gate.container)):
        for family in ("v4", "v6"):
            client = (source.v4 if family == "v4" else source.v6) if source else (V4["host"] if family == "v4" else V6["host"])
            mine = [j for j in joined if j["client"] == client]
            assert sorted(j["reason"] for j in mine) == sorted(reasons.values()), (where, family, records)
            for item in mine:
                assert item["logged"] and item["dst"] == (V4["allowed"] if family == "v4" else V6["allowed"]), item
                assert item["dpt"] == 443 and item["listen"] == GATE_PORT
                if source:
                    assert item["uid"] is None and item["source"] == client and item["network"] == "docker0", item
                else:
                    assert item["uid"] == AGENT_UID and item["source"] is None, item
            allowed = [r for r in records if r["client"] == client and r["reason"] == "allowed"]
            assert len(allowed) == 1 and allowed[0]["sni"] == "api.test" and allowed[0]["status"] == 200

    # Not an open proxy: the listener, reached directly (not redirected) from outside or from the
    # container, is dropped before nginx sees it.
    seen = len(records)
    for ns, targets in ((lab.peer, ["%s:%d" % (V4["host"], GATE_PORT), "[%s]:%d" % (V6["host"], GATE_PORT)]),
                        (gate.container.ns, ["%s:%d" % (gate.container.bridge.gw4, GATE_PORT),
                                             "[%s]:%d" % (gate.container.bridge.gw6, GATE_PORT)])):
        results = lab.probe(["tcp:" + t for t in targets], ns=ns, timeout=1.0)
        assert set(results.values()) == {"timeout"}, results
    assert len(gate.gate_log()) == seen

    again = egress(POLICY)
    assert again["changed"] is False and again["changes"]["ipv4"] == {"added": [], "removed": []}
    removed = egress(dict(state="absent"))
    assert removed["changed"] is True
    assert "AGENTGUARD" not in lab.save_all("ipv4") and "AGENTGUARD" not in lab.save_all("ipv6")


def test_audit_passes_the_cotenant_and_logs_it(lab, egress, gate, kernel_log):
    result = egress(dict(POLICY, tls_gate="audit"))
    assert result["tls_gate"]["mode"] == "audit"
    gate.start(result)
    cases = {"v4 co-tenant": ["tls", V4["allowed"], "cotenant.test", 5],
             "v6 co-tenant": ["tls", V6["allowed"], "cotenant.test", 5],
             "v4 no sni": ["tls", V4["allowed"], None, 5], "v6 ip literal": ["hello", V6["allowed"], V6["allowed"], 5]}
    results = gate.clients(cases, uid=AGENT_UID)
    assert results["v4 co-tenant"].startswith("answered: hello cotenant.test at "), results
    assert results["v6 co-tenant"].startswith("answered: hello cotenant.test at "), results
    # Audit cannot pass what has no name: nginx would not know where it was going.
    assert results["v4 no sni"].startswith("refused: ") and results["v6 ip literal"] == "closed", results
    handshakes = [e["sni"] for e in gate.server_events() if e["event"] == "handshake"]
    assert handshakes == ["cotenant.test"] * 2
    records = gate.gate_log()
    assert sorted(r["reason"] for r in records) == ["ip-literal", "no-sni", "would-refuse-sni", "would-refuse-sni"]
    assert all(r["status"] == 200 for r in records if r["reason"] == "would-refuse-sni")


OTHER_UID = 4343  # a local user that scope users does not restrict


def test_users_scope_gates_only_the_restricted_users(lab, egress, gate, kernel_log):
    """scope users: the restricted user's TLS goes through the gate (the co-tenant refused), another
    user's does not (it reaches the server directly, and the gate never hears of it), and the gate's
    own user, not redirected, is still held to the allowlist by the owner match in filter OUTPUT."""
    result = egress(dict(POLICY, scope="users", users=[str(AGENT_UID)]))
    assert result["tls_gate"]["uid"] == GATE_UID and result["tls_gate"]["listeners"] == [{"port": 443, "listen": GATE_PORT}]
    gate.start(result)
    forbidden = ["tcp:%s:443" % V4["forbidden"], "tcp:[%s]:443" % V6["forbidden"]]
    arrivals = Arrivals(lab.peer, forbidden)
    mark = kernel_log.mark()

    # The gate's user goes where it decides, but only where the allowlist lets it: not to the forbidden server.
    own = gate.clients({"v4 forbidden": ["tls", V4["forbidden"], "api.test", 1.5],
                        "v6 forbidden": ["tls", V6["forbidden"], "api.test", 1.5]}, uid=GATE_UID)
    assert own == {"v4 forbidden": "timeout", "v6 forbidden": "timeout"}, own
    assert arrivals.since() == dict.fromkeys(forbidden, 0)

    restricted = gate.clients({"v4 allowed": ["tls", V4["allowed"], "api.test", 5],
                               "v6 allowed": ["tls", V6["allowed"], "api.test", 5],
                               "v4 co-tenant": ["tls", V4["allowed"], "cotenant.test", 5],
                               "v6 co-tenant": ["tls", V6["allowed"], "cotenant.test", 5]}, uid=AGENT_UID)
    for family in ("v4", "v6"):
        assert restricted[family + " allowed"].startswith("answered: hello api.test at "), restricted
        assert restricted[family + " co-tenant"].startswith("refused: "), restricted
    seen = gate.gate_log()
    assert sorted((r["reason"], r["sni"]) for r in seen) == [("allowed", "api.test")] * 2 + [("not-allowed", "cotenant.test")] * 2

    # Not redirected: the co-tenant answers this user itself (the gate would never pass it in enforce
    # mode), and so does the forbidden server (the control: it was up when the gate's user tried it).
    other = gate.clients({"v4 co-tenant": ["tls", V4["allowed"], "cotenant.test", 5],
                          "v6 co-tenant": ["tls", V6["allowed"], "cotenant.test", 5],
                          "v4 forbidden": ["tls", V4["forbidden"], "api.test", 5]}, uid=OTHER_UID)
    # (The server listens on "::": an IPv4 client reaches it at the IPv4-mapped address.)
    assert other["v4 co-tenant"] == "answered: hello cotenant.test at ::ffff:%s" % V4["allowed"], other
    assert other["v6 co-tenant"] == "answered: hello cotenant.test at %s" % V6["allowed"], other
    assert other["v4 forbidden"] == "answered: hello api.test at ::ffff:%s" % V4["forbidden"], other
    assert arrivals.since()["tcp:%s:443" % V4["forbidden"]] > 0
    assert gate.gate_log() == seen, "the unrestricted user's connections must not reach the gate"

    # At the server: the two allowed handshakes (through the gate), the other user's three, nothing else.
    # (The gate may take either family upstream: only the name is fixed for its two.)
    handshakes = [(e["sni"], e["local"].replace("::ffff:", "")) for e in gate.server_events() if e["event"] == "handshake"]
    assert sorted(h for h in handshakes if h[0] == "cotenant.test" or h[1] == V4["forbidden"]) == [
        ("api.test", V4["forbidden"]), ("cotenant.test", V4["allowed"]), ("cotenant.test", V6["allowed"])], handshakes
    assert sorted(h[0] for h in handshakes) == ["api.test"] * 3 + ["cotenant.test"] * 2, handshakes
    assert len([e for e in gate.server_events() if e["event"] == "accept"]) == 5

    # The refusals name the restricted user; no [EGRESS-TLS] line names the other user or the gate's
    # (the kernel log is the machine's: other namespaces' lines may be there too).
    kernel = G.parse_tls_kernel_log(kernel_log.since(mark))
    assert not [k for k in kernel if k["uid"] in (OTHER_UID, GATE_UID)], kernel
    joined = G.join_tls_log(seen, kernel)
    assert [(j["uid"], j["dpt"], j["logged"]) for j in joined] == [(AGENT_UID, 443, True)] * 2, joined


FILTERING_GATE_UID = 4344  # the filtering resolver runs as nobody; the gate needs a user of its own
FILTERING = dict(POLICY, dns_mode="filtering", dns_resolver_user="nobody", resolvers=["127.0.0.1"], dns_set_timeout=20,
                 tls_gate_user=str(FILTERING_GATE_UID))


def test_filtering_mode_gate_resolves_through_the_filtering_resolver(lab, egress, gate):
    """dns_mode filtering: the gate asks the filtering resolver (allowlisted names only, answers fill
    the destination's sets) for the SNI, and connects to what it answered; a name not on the list is
    refused by the gate without a query, and a co-tenant on the allowed address is refused."""
    lab.start_filtering_resolver([("inference-api", "api.test")], set_timeout=20)

    def resolver_log():
        with open(os.path.join(lab.tmp, "filtering.log")) as handle:
            return handle.readlines()

    result = egress(FILTERING)
    assert result["tls_gate"]["names"] == [{"name": "api.test", "subdomains": False, "ports": [443], "addresses": []}]
    assert result["tls_gate"]["uid"] == FILTERING_GATE_UID
    # The module seeds the sets from its own resolution: empty them, so only the resolver's answers count.
    sets = ["ag4-inference-api", "ag6-inference-api"]
    for name in sets:
        lab.run("ipset", "flush", name)
    gate.start(result, "filtering", ["127.0.0.1"])
    forbidden = ["tcp:%s:443" % V4["forbidden"], "tcp:[%s]:443" % V6["forbidden"]]
    arrivals = Arrivals(lab.peer, forbidden)

    # Before any answer, the allowed address is in no set: not redirected, and denied.
    before = gate.clients({"v4 allowed": ["tls", V4["allowed"], "api.test", 1.5]}, uid=AGENT_UID)
    assert before == {"v4 allowed": "timeout"}, before
    # The agent asks the filtering resolver, as it would through resolv.conf: the answers fill the sets.
    asked = ["udp-dns:127.0.0.1:api.test", "udp-dns:127.0.0.1:api.test/AAAA"]
    assert lab.probe(asked, uid=AGENT_UID) == dict.fromkeys(asked, "ok")
    members = lab.ipset()
    assert "add ag4-inference-api %s" % V4["allowed"] in members and "add ag6-inference-api %s" % V6["allowed"] in members, members

    mark = len(resolver_log())
    upstream_before = len(lab.upstream_queries())
    cases = {}
    for family, allowed, forbidden_addr in (("v4", V4["allowed"], V4["forbidden"]), ("v6", V6["allowed"], V6["forbidden"])):
        cases.update({family + " allowed": ["tls", allowed, "api.test", 5],
                      family + " co-tenant": ["tls", allowed, "cotenant.test", 5],
                      family + " not listed": ["tls", allowed, "forbidden.test", 5],
                      family + " allowed name, forbidden address": ["tls", forbidden_addr, "api.test", 1.5]})
    results = gate.clients(cases, uid=AGENT_UID)
    for family in ("v4", "v6"):
        assert results[family + " allowed"].startswith("answered: hello api.test at "), results
        assert results[family + " co-tenant"].startswith("refused: "), results
        assert results[family + " not listed"].startswith("refused: "), results
        assert results[family + " allowed name, forbidden address"] == "timeout", results

    # nginx resolved api.test through the filtering resolver (the clients connect by address and ask
    # nothing), and asked about no other name, here or upstream.
    queries = [line for line in resolver_log()[mark:] if "query[" in line]
    assert queries and all(" api.test from 127.0.0.1" in q for q in queries), queries
    assert not [q for q in lab.upstream_queries()[upstream_before:] if "cotenant" in q or "forbidden" in q]
    records = gate.gate_log()
    assert sorted(r["reason"] for r in records) == ["allowed"] * 2 + ["not-allowed"] * 4, records
    assert set(r["upstream"] for r in records if r["reason"] == "allowed") <= {
        "%s:443" % V4["allowed"], "[%s]:443" % V6["allowed"]}, records

    # At the destination: the two allowed handshakes, from the gate; nothing at the forbidden address.
    events = gate.server_events()
    assert sorted(e["sni"] for e in events if e["event"] == "handshake") == ["api.test"] * 2, events
    assert len([e for e in events if e["event"] == "accept"]) == 2, events
    assert set(e["peer"].replace("::ffff:", "") for e in events) <= {V4["host"], V6["host"]}, events
    assert arrivals.since() == dict.fromkeys(forbidden, 0)
    # What the resolver added to the sets is not drift, for the gate's redirect rules either.
    assert egress(FILTERING)["changed"] is False

    # audit passes a name that is not on the list to what the trusted resolver gives for it; in
    # filtering mode that is the filtering resolver, which refuses it itself: nothing asks upstream,
    # nothing connects, and the gate's log shows the refusal (the status), not a pass.
    audit = egress(dict(FILTERING, tls_gate="audit"))
    assert audit["tls_gate"]["mode"] == "audit"
    gate.start(audit, "filtering", ["127.0.0.1"])
    mark = len(resolver_log())
    seen = len(gate.gate_log())
    results = gate.clients({"v4 co-tenant": ["tls", V4["allowed"], "cotenant.test", 5],
                            "v6 not listed": ["tls", V6["allowed"], "forbidden.test", 5]}, uid=AGENT_UID)
    assert set(v.split(":")[0] for v in results.values()) == {"refused"}, results
    queries = resolver_log()[mark:]
    for name in ("cotenant.test", "forbidden.test"):
        assert [q for q in queries if "query[" in q and " %s from 127.0.0.1" % name in q], queries
        assert [q for q in queries if "config %s is NXDOMAIN" % name in q], queries
    assert not [q for q in lab.upstream_queries()[upstream_before:] if "cotenant" in q or "forbidden" in q]
    records = gate.gate_log()[seen:]
    # (nginx logs a name its resolver could not resolve with status 500 in the run: anything but 200.)
    assert sorted((r["reason"], r["sni"], r["status"] == 200) for r in records) == [
        ("would-refuse-sni", "cotenant.test", False), ("would-refuse-sni", "forbidden.test", False)], records
    assert sorted(e["sni"] for e in gate.server_events() if e["event"] == "handshake") == ["api.test"] * 2
