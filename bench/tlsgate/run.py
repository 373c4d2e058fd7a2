#!/usr/bin/env python
"""The TLS gate as shipped, and the engines, side by side: behaviour checks, handshake rate, time to
first byte, memory.

Three network namespaces (nothing else is touched; addresses only in 198.18.0.0/15 and fd00::/8):

  agtg-client  198.18.48.2  fd00:48:1::2     the agent side (a container network behind the host)
  agtg-host    198.18.48.1  fd00:48:1::1     routes; the egress ruleset; the gates (as uid 65534,
               198.18.49.1  fd00:48:2::1     no capabilities); the trusted resolver (dnsmasq, 127.0.0.1)
  agtg-server  198.18.49.10 fd00:48:2::10    the allowed API's address: nginx with TLS (a lab CA made
                                             here) serving api.agtg.test, *.svc.agtg.test AND the
                                             co-tenant cotenant.agtg.test, which resolves to the same
                                             address
               198.18.49.66 fd00:48:2::66    a forbidden address, serving the same names

Configurations ("sides"):
  shipped      the gate as the collection ships it (the default): the host's rules are exactly what
               egress_rules renders for an empty host (_policy.build_policy, _plan.make_plan) with
               tls_gate=enforce, dns_mode=pinned, scope host (local processes) and scope_networks
               [agtg-h0] (the client namespace's link: the container path), applied as the module applies
               them (ipset restore, iptables-restore --noflush); nginx runs _tlsgate.render_nginx's
               output verbatim on 10443
  direct       the same module-rendered ruleset with tls_gate off: what "shipped" is compared against
  nginx, haproxy, squid
               the engine comparison (docs/tls-gate.md): hand-written rules (FORWARD: only the API's
               addresses on 443; OUTPUT: only the gate's uid, only to them) plus a nat PREROUTING/OUTPUT
               REDIRECT to nginx stream + ssl_preread (8443), HAProxy (req.ssl_sni, do-resolve, set-dst;
               8444) or Squid (ssl_bump peek + splice, host_verify_strict; 8445), with hand-written
               configurations
  direct-hand  the hand-written filter rules without a redirect: what those three are compared against

First the behaviour checks (both families, the forwarded and the local-process path), each read
from the server's own SYN counters; then REPS repetitions of SECONDS of load at each concurrency,
the sides in rotating order; each gate's rate and median TTFB are paired with its own baseline's
within a repetition; the gate's RSS is sampled while it carries the load. Every side starts from
empty tables (filter, nat, mangle, raw; no sets) and a flushed conntrack table.

Usage (root): .venv/bin/python bench/tlsgate/run.py [--reps 5] [--seconds 5] [--clients 1,50]
              [--family 4] [--engines shipped[,nginx,haproxy,squid]] [--no-checks]
              [--out bench/results/tlsgate.json] [--keep]
Needs: nginx-light (or nginx) with libnginx-mod-stream, haproxy, squid-openssl, dnsmasq-base, openssl,
gcc, libssl-dev, ipset and conntrack (apt-get install --no-install-recommends).
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, ".cache", "collections"))

from ansible_collections.agentguard.hardening.plugins.module_utils import (  # noqa: E402
    _plan, _policy, _state, _tlsgate,
)

TOOL = os.path.join(ROOT, ".cache", "tlsload")
PROBE = os.path.join(HERE, "probe.py")
PYTHON = "/usr/bin/python3"  # the probes need only the standard library, and run as the gate's uid too

CLIENT, HOST, SERVER = "agtg-client", "agtg-host", "agtg-server"
GATE_UID = 65534
API4, API6 = "198.18.49.10", "fd00:48:2::10"
BAD4, BAD6 = "198.18.49.66", "fd00:48:2::66"
ALLOWED, COTENANT = "api.agtg.test", "cotenant.agtg.test"
SUBDOMAIN_ALLOWED = "svc.agtg.test"  # an entry with subdomains: true
PORTS = {"nginx": 8443, "haproxy": 8444, "squid": 8445, "shipped": 10443}
# Each gate against the side with its own filter rules and no redirect.
BASELINE = {"shipped": "direct", "nginx": "direct-hand", "haproxy": "direct-hand", "squid": "direct-hand"}
# The policy of the shipped side: one allowed name at the API's addresses, local processes (scope
# host) and the client namespace's link (the container path) restricted, the gate in enforce mode
# as uid 65534 in pinned DNS mode (the gate connects only to the module's own resolution).
SHIPPED_POLICY = {"allow": [{"name": "api", "host": ALLOWED, "ports": [443]}], "dns_servers": ["127.0.0.1", "::1"],
                  "scope": "host", "scope_networks": ["agtg-h0"], "dns_mode": "pinned",
                  "tls_gate": "enforce", "tls_gate_user": str(GATE_UID), "tls_gate_port": PORTS["shipped"]}
SHIPPED_RESOLVED = {"api": {"ipv4": [API4], "ipv6": [API6]}}
FAMILIES = {"4": "ipv4", "6": "ipv6"}

PROCS = []


def sh(*argv, **kw):
    return subprocess.run(argv, check=kw.pop("check", True), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=kw.pop("timeout", 60), **kw)


def nsx(ns, *argv, **kw):
    return sh("ip", "netns", "exec", ns, *argv, **kw)


def loadavg():
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def unprivileged(uid):
    """The argv prefix that runs a command as `uid` with no capabilities (and none to gain)."""
    return ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups", "--no-new-privs",
            "--inh-caps=-all", "--bounding-set=-all", "--"]


def spawn(ns, argv, log, uid=None):
    """A long-running process in `ns` (as `uid`, without capabilities, when given)."""
    prefix = ["ip", "netns", "exec", ns] + (unprivileged(uid) if uid is not None else [])
    proc = subprocess.Popen(prefix + argv, stdout=open(log, "a"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    PROCS.append(proc)
    return proc


def stop_all():
    for proc in reversed(PROCS):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for proc in reversed(PROCS):
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    del PROCS[:]


def wait_port(ns, addr, port, seconds=10):
    family = "-6" if ":" in addr else "-4"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = nsx(ns, "ss", "-Hltn", family, "sport", "=", ":%d" % port).stdout
        if out.strip():
            return
        time.sleep(0.1)
    raise RuntimeError("nothing listens on %s port %d in %s" % (addr, port, ns))


# --- the lab ---------------------------------------------------------------------------------

def make_ca(work):
    """A lab CA and one server certificate for all the names (EC P-256)."""
    def ossl(*argv):
        sh("openssl", *argv, cwd=work)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=agtg lab CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", "ca.key", "-out", "ca.pem")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=" + ALLOWED,
         "-keyout", "server.key", "-out", "server.csr")
    with open(os.path.join(work, "san.ext"), "w") as handle:
        sans = (ALLOWED, COTENANT, SUBDOMAIN_ALLOWED, SUBDOMAIN_ALLOWED)
        handle.write("subjectAltName=DNS:%s,DNS:%s,DNS:%s,DNS:*.%s\n" % sans
                     + "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                     + "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    ossl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    os.chmod(os.path.join(work, "ca.pem"), 0o644)


def namespaces_up():
    for ns in (CLIENT, HOST, SERVER):
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "netns", "add", ns)
        nsx(ns, "ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "agtg-c", "netns", CLIENT, "type", "veth", "peer", "name", "agtg-h0", "netns", HOST)
    sh("ip", "link", "add", "agtg-s", "netns", SERVER, "type", "veth", "peer", "name", "agtg-h1", "netns", HOST)
    addrs = [(CLIENT, "agtg-c", ["198.18.48.2/24", "fd00:48:1::2/64"]),
             (HOST, "agtg-h0", ["198.18.48.1/24", "fd00:48:1::1/64"]),
             (HOST, "agtg-h1", ["198.18.49.1/24", "fd00:48:2::1/64"]),
             (SERVER, "agtg-s", ["198.18.49.2/24", API4 + "/24", BAD4 + "/24",
                                 "fd00:48:2::2/64", API6 + "/64", BAD6 + "/64"])]
    for ns, dev, cidrs in addrs:
        for cidr in cidrs:
            nsx(ns, "ip", "addr", "add", cidr, "dev", dev, *(["nodad"] if ":" in cidr else []))
        nsx(ns, "ip", "link", "set", dev, "up")
    nsx(CLIENT, "ip", "route", "add", "default", "via", "198.18.48.1")
    nsx(CLIENT, "ip", "-6", "route", "add", "default", "via", "fd00:48:1::1")
    nsx(SERVER, "ip", "route", "add", "default", "via", "198.18.49.1")
    nsx(SERVER, "ip", "-6", "route", "add", "default", "via", "fd00:48:2::1")
    nsx(HOST, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    nsx(HOST, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    # The server counts the SYNs that reach each of its addresses: a refused connection must add none.
    for cmd, api, bad in (("iptables", API4, BAD4), ("ip6tables", API6, BAD6)):
        nsx(SERVER, cmd, "-A", "INPUT", "-d", api, "-p", "tcp", "--dport", "443", "--syn", "-j", "ACCEPT")
        nsx(SERVER, cmd, "-A", "INPUT", "-d", bad, "-p", "tcp", "--dport", "443", "--syn", "-j", "ACCEPT")


def namespaces_down():
    for ns in (CLIENT, HOST, SERVER):
        sh("ip", "netns", "del", ns, check=False)


def syn_counts():
    """{address: SYNs received} on the server, from its INPUT rules' counters."""
    counts = {}
    for cmd in ("iptables", "ip6tables"):
        for line in nsx(SERVER, cmd, "-v", "-S", "INPUT").stdout.splitlines():
            words = line.split()
            if "-d" in words and "-c" in words:
                counts[words[words.index("-d") + 1].split("/")[0]] = int(words[words.index("-c") + 1])
    return counts


def start_resolver(work):
    """dnsmasq on the host's loopback: the allowed name, the co-tenant and the subdomain entry all
    at the API's addresses (as on a CDN); every query logged to count what the gates ask."""
    argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            "--bind-interfaces", "--listen-address=127.0.0.1", "--listen-address=::1", "--user=root",
            "--local-ttl=30", "--log-queries", "--log-facility=-", "--pid-file="]
    for name in (ALLOWED, COTENANT, SUBDOMAIN_ALLOWED):
        argv += ["--address=/%s/%s" % (name, API4), "--address=/%s/%s" % (name, API6)]
    proc = spawn(HOST, argv, os.path.join(work, "dnsmasq.log"))
    wait_port(HOST, "127.0.0.1", 53)
    return proc


def resolver_down(work, engines, resolver, ca):
    """With the trusted resolver stopped, does the allowed name still pass (from the gate's cache)?"""
    os.killpg(resolver.pid, signal.SIGTERM)
    resolver.wait(timeout=10)
    results = {}
    try:
        for engine in engines:
            apply_ruleset(engine)
            before = syn_counts()
            res = probe(CLIENT, "tls", API4, ALLOWED, ca)
            after = syn_counts()
            res["server_syns"] = dict((a, after[a] - before.get(a, 0)) for a in after if after[a] != before.get(a, 0))
            results[engine] = res
            print("%-8s %-55s %s" % (engine, "resolver down", res.get("body") or res.get("outcome")),
                  file=sys.stderr, flush=True)
    finally:
        PROCS.remove(resolver)
        new = start_resolver(work)
    return results, new


SERVER_NGINX = """
worker_processes 2;
pid {work}/server.pid;
error_log {work}/server-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 0;
    ssl_certificate {work}/server.pem;
    ssl_certificate_key {work}/server.key;
    ssl_session_tickets off;
    ssl_session_cache off;
    server {{
        listen {api4}:443 ssl;
        listen [{api6}]:443 ssl;
        location / {{ return 200 "api $ssl_server_name\\n"; }}
    }}
    server {{
        listen {bad4}:443 ssl;
        listen [{bad6}]:443 ssl;
        location / {{ return 200 "forbidden $ssl_server_name\\n"; }}
    }}
}}
"""


def start_server(work):
    conf = os.path.join(work, "server.conf")
    with open(conf, "w") as handle:
        handle.write(SERVER_NGINX.format(work=work, api4=API4, api6=API6, bad4=BAD4, bad6=BAD6))
    spawn(SERVER, ["nginx", "-c", conf, "-e", os.path.join(work, "server-error.log"), "-g", "daemon off;"],
          os.path.join(work, "server.out"))
    wait_port(SERVER, API4, 443)


# --- the gates ---------------------------------------------------------------------------------

NGINX_GATE = """
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes auto;
pid {gate}/nginx.pid;
error_log {gate}/nginx-error.log notice;
events {{ worker_connections 4096; }}

stream {{
    # The trusted resolver. nginx resolves the SNI itself, per connection, from this cache.
    resolver 127.0.0.1 ipv6=on valid=30s;
    resolver_timeout 2s;

    preread_buffer_size 16k;
    preread_timeout 5s;
    proxy_connect_timeout 5s;
    proxy_timeout 1h;

    # The allowlist: exact names, and ".name" for an entry with subdomains (the name and below it).
    map $ssl_preread_server_name $tls_gate_upstream {{
        hostnames;
        default "";
        {allowed} $ssl_preread_server_name:443;
        .{subdomains} $ssl_preread_server_name:443;
    }}

    # Why a connection was refused (empty when it passed), for the log.
    map "$ssl_preread_protocol|$ssl_preread_server_name|$tls_gate_upstream" $tls_gate_reason {{
        "~^\\|" not-a-client-hello;
        "~^[^|]+\\|\\|" no-sni;
        "~^[^|]+\\|([0-9.]+|[^|]*:[^|]*)\\|" ip-literal-sni;
        "~^[^|]+\\|[^|]+\\|.+" "";
        default sni-not-allowlisted;
    }}
    # Log every session that did not end normally: the refusals, and a resolution or upstream
    # failure (status 500 or 502, with an empty reason).
    map $status $tls_gate_log {{
        200 "";
        default 1;
    }}
    log_format tls_gate '$time_iso8601 gate=nginx client=$remote_addr:$remote_port '
                        'sni="$ssl_preread_server_name" tls=$ssl_preread_protocol '
                        'upstream=$upstream_addr reason=$tls_gate_reason status=$status';
    access_log {gate}/refusals.log tls_gate if=$tls_gate_log;

    server {{
        listen 0.0.0.0:{port};
        listen [::]:{port} ipv6only=on;
        ssl_preread on;
        proxy_pass $tls_gate_upstream;
    }}
}}
"""

HAPROXY_GATE = """
global
    log stdout format raw local0 info
    maxconn 8000
    nbthread 2
    hard-stop-after 5s

# The trusted resolver. "hold valid" keeps an answer for sessions that overlap only: measured,
# do-resolve asked once per connection at 1 client (docs/tls-gate.md).
resolvers trusted
    nameserver local 127.0.0.1:53
    accepted_payload_size 1232
    resolve_retries 2
    timeout resolve 1s
    timeout retry 1s
    hold valid 30s
    hold nx 5s
    hold other 5s
    hold refused 5s
    hold timeout 5s

defaults
    mode tcp
    log global
    # Log the refusals only: a session that passed every rule is made silent by the last rule.
    option dontlog-normal
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    log-format "{log_format}"

{frontends}
backend upstream
    # 0.0.0.0: connect to the session's destination, which set-dst made the resolved address.
    server upstream 0.0.0.0:443
"""

# One frontend per family: do-resolve asks for the client's own family.
HAPROXY_FRONTEND = """frontend tls_gate_v{version}
    bind {bind}
    default_backend upstream
    tcp-request connection set-var(sess.odst) dst
    tcp-request connection set-var(sess.odport) dst_port
    tcp-request inspect-delay 5s
{rules}
"""

HAPROXY_LOG = ('%t gate=haproxy client=%ci:%cp orig_dst=%[var(sess.odst)]:%[var(sess.odport)] '
               'sni=\\"%[var(sess.sni)]\\" upstream=%[var(sess.dstip)] reason=%[var(sess.reason)] term=%ts')

HAPROXY_RULES = """\
    acl hello req.ssl_hello_type 1
    acl sni_ip_literal var(sess.sni) -m reg ^[0-9.]+$|:
    acl sni_allowed var(sess.sni) -m str -f {gate}/allow-exact.txt
    acl sni_allowed var(sess.sni) -m end -f {gate}/allow-suffix.txt
    tcp-request content set-var(sess.reason) str(not-a-client-hello) if !hello
    tcp-request content reject if !hello
    tcp-request content set-var(sess.sni) req.ssl_sni,lower
    tcp-request content set-var(sess.reason) str(no-sni) if !{{ var(sess.sni) -m found }}
    tcp-request content reject if !{{ var(sess.sni) -m found }}
    tcp-request content set-var(sess.reason) str(ip-literal-sni) if sni_ip_literal
    tcp-request content reject if sni_ip_literal
    tcp-request content set-var(sess.reason) str(sni-not-allowlisted) if !sni_allowed
    tcp-request content reject if !sni_allowed
    tcp-request content do-resolve(sess.dstip,trusted,{family}) var(sess.sni)
    tcp-request content set-var(sess.reason) str(not-resolved) if !{{ var(sess.dstip) -m found }}
    tcp-request content reject if !{{ var(sess.dstip) -m found }}
    tcp-request content set-dst var(sess.dstip)
    tcp-request content set-log-level silent"""


SQUID_GATE = """
# Squid as a TLS gate: intercept, peek at the ClientHello, splice (never bump) the allowlisted names.
pid_filename {gate}/squid.pid
cache_log {gate}/squid-cache.log
coredump_dir {gate}
cache deny all
cache_mem 8 MB
workers 1
shutdown_lifetime 1 seconds
dns_nameservers 127.0.0.1
# An intercepted connection's SNI must resolve to the address the client chose, else refused.
host_verify_strict on
client_dst_passthru off
http_port 127.0.0.1:{admin_port}
# One dual-stack listener: Squid sets no IPV6_V6ONLY, so a second one on 0.0.0.0 fails (EADDRINUSE).
https_port [::]:{port} intercept ssl-bump tls-cert={gate}/squid-ca.pem generate-host-certificates=off
# How long a client may stay silent before its ClientHello (default 5 minutes).
request_start_timeout 5 seconds
acl step1 at_step SslBump1
acl allowed_sni ssl::server_name {allowed} .{subdomains}
ssl_bump peek step1
ssl_bump splice allowed_sni
ssl_bump terminate all
on_unsupported_protocol respond all
http_access allow all
logformat tls_gate {log_format}
access_log stdio:{gate}/squid-access.log tls_gate
"""


SQUID_LOG = ('%{%Y-%m-%dT%H:%M:%S}tl gate=squid client=%>a:%>p dst=%>la:%>lp sni="%ssl::>sni" '
             'upstream=%<a:%<p bump=%ssl::bump_mode status=%Ss/%>Hs err=%err_code/%err_detail')


def gate_dir(work):
    gate = os.path.join(work, "gate")
    os.makedirs(gate, exist_ok=True)
    os.chown(gate, GATE_UID, GATE_UID)
    return gate


def start_nginx(work):
    gate = gate_dir(work)
    conf = os.path.join(gate, "nginx.conf")
    with open(conf, "w") as handle:
        handle.write(NGINX_GATE.format(gate=gate, port=PORTS["nginx"], allowed=ALLOWED,
                                       subdomains=SUBDOMAIN_ALLOWED))
    proc = spawn(HOST, ["nginx", "-c", conf, "-e", os.path.join(gate, "nginx-error.log"), "-g", "daemon off;"],
                 os.path.join(gate, "nginx.out"), uid=GATE_UID)
    wait_port(HOST, "0.0.0.0", PORTS["nginx"])
    return proc


def haproxy_config(gate):
    port = PORTS["haproxy"]
    frontends = [HAPROXY_FRONTEND.format(version=version, bind=bind, rules=HAPROXY_RULES.format(gate=gate, family=family))
                 for version, bind, family in (("4", "0.0.0.0:%d" % port, "ipv4"), ("6", "[::]:%d v6only" % port, "ipv6"))]
    return HAPROXY_GATE.format(log_format=HAPROXY_LOG, frontends="\n".join(frontends))


def start_haproxy(work):
    gate = gate_dir(work)
    with open(os.path.join(gate, "allow-exact.txt"), "w") as handle:
        handle.write("%s\n%s\n" % (ALLOWED, SUBDOMAIN_ALLOWED))
    with open(os.path.join(gate, "allow-suffix.txt"), "w") as handle:
        handle.write(".%s\n" % SUBDOMAIN_ALLOWED)
    conf = os.path.join(gate, "haproxy.cfg")
    with open(conf, "w") as handle:
        handle.write(haproxy_config(gate))
    sh("haproxy", "-c", "-f", conf)
    proc = spawn(HOST, ["haproxy", "-db", "-f", conf], os.path.join(gate, "haproxy.log"), uid=GATE_UID)
    wait_port(HOST, "0.0.0.0", PORTS["haproxy"])
    return proc


def start_squid(work):
    gate = gate_dir(work)
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
       "-subj", "/CN=agtg squid (never used: splice only)", "-keyout", "squid-ca.pem", "-out", "squid-cert.pem",
       cwd=gate)
    with open(os.path.join(gate, "squid-ca.pem"), "a") as handle, \
            open(os.path.join(gate, "squid-cert.pem")) as cert:
        handle.write(cert.read())
    for name in os.listdir(gate):
        os.chown(os.path.join(gate, name), GATE_UID, GATE_UID)
    conf = os.path.join(gate, "squid.conf")
    with open(conf, "w") as handle:
        handle.write(SQUID_GATE.format(gate=gate, port=PORTS["squid"], admin_port=PORTS["squid"] + 100,
                                       log_format=SQUID_LOG,
                                       allowed=ALLOWED, subdomains=SUBDOMAIN_ALLOWED))
    proc = spawn(HOST, ["squid", "-N", "-f", conf], os.path.join(gate, "squid.out"), uid=GATE_UID)
    wait_port(HOST, "::", PORTS["squid"], seconds=30)
    return proc


def start_shipped(work, gate_result):
    """nginx with _tlsgate.render_nginx's output, unchanged, as the role writes it for pinned mode
    (the trusted resolvers are egress_dns_servers); started as the role's unit starts it."""
    gate = gate_dir(work)
    conf = os.path.join(gate, "shipped.conf")
    with open(conf, "w") as handle:
        handle.write(_tlsgate.render_nginx(gate_result, "pinned", SHIPPED_POLICY["dns_servers"],
                                           os.path.join(gate, "shipped-access.log"),
                                           os.path.join(gate, "shipped-nginx.pid"),
                                           os.path.join(gate, "shipped-error.log")))
    os.chmod(conf, 0o644)
    # As the unit's ExecStartPre: checked as the gate's user, so the files it opens are the user's.
    nsx(HOST, *unprivileged(GATE_UID), "nginx", "-t", "-q", "-e", "stderr", "-c", conf)
    proc = spawn(HOST, ["nginx", "-e", "stderr", "-c", conf, "-g", "daemon off;"],
                 os.path.join(gate, "shipped.out"), uid=GATE_UID)
    wait_port(HOST, "0.0.0.0", PORTS["shipped"])
    return proc


def refusal_log(work, engine):
    path = os.path.join(work, "gate", {"nginx": "refusals.log", "haproxy": "haproxy.log",
                                       "squid": "squid-access.log", "shipped": "shipped-access.log"}[engine])
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return []
    if engine == "shipped":  # the shipped gate logs every connection: keep what it did not pass as allowed
        lines = [line for line in lines if any(r["reason"] != "allowed" for r in _tlsgate.parse_gate_log([line]))]
    return lines


# --- the rulesets ------------------------------------------------------------------------------

def module_payloads(tls_gate):
    """What egress_rules applies to an empty host for SHIPPED_POLICY with `tls_gate`: ({"4": v4
    iptables-restore --noflush payload, "6": v6 payload}, ipset restore payload, the tls_gate result
    the role renders nginx.conf from). Bad input fails here, before any namespace exists."""
    def lookup(name):
        raise KeyError(name)  # the gate's user is given as a uid: no passwd entry needed
    policy = _policy.build_policy(dict(SHIPPED_POLICY, tls_gate=tls_gate), lookup)
    families = sorted(FAMILIES.values())
    plan = _plan.make_plan(policy, SHIPPED_RESOLVED, families, dict((f, _state.live_state("")) for f in families), {})
    rules = dict((fam, plan.transactions[family]) for fam, family in FAMILIES.items())
    return rules, plan.sets_update, _tlsgate.gate_result(policy, SHIPPED_RESOLVED)


# Empty tables, every policy ACCEPT and no chain of ours: where every side starts.
BUILTIN_CHAINS = (("filter", ("INPUT", "FORWARD", "OUTPUT")),
                  ("nat", ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")),
                  ("mangle", ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")),
                  ("raw", ("PREROUTING", "OUTPUT")))
EMPTY_TABLES = "".join("*%s\n%sCOMMIT\n" % (table, "".join(":%s ACCEPT [0:0]\n" % chain for chain in chains))
                       for table, chains in BUILTIN_CHAINS)

MODULE_SIDES = {}  # "shipped" and "direct": (rules, sets) from module_payloads, filled by main()


def ruleset(engine):
    """Hand-written iptables-restore payloads (v4, v6) for the engine comparison: the same filter
    rules for every side, plus the REDIRECT of NEW TCP to 443 to the gate's port when `engine` is a
    gate (not direct-hand)."""
    out = {}
    for fam, api, client_if in (("4", API4, "agtg-h0"), ("6", API6, "agtg-h0")):
        lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT DROP [0:0]",
                 "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                 "-A FORWARD -i %s -d %s -p tcp --dport 443 -j ACCEPT" % (client_if, api),
                 "-A OUTPUT -o lo -j ACCEPT",
                 "-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                 "-A OUTPUT -m owner --uid-owner %d -d %s -p tcp --dport 443 -j ACCEPT" % (GATE_UID, api),
                 "COMMIT", "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
                 ":POSTROUTING ACCEPT [0:0]"]
        if fam == "6":
            lines.insert(4, "-A FORWARD -p ipv6-icmp -j ACCEPT")
            lines.insert(7, "-A OUTPUT -p ipv6-icmp -j ACCEPT")
        if engine != "direct-hand":
            port = PORTS[engine]
            # A local process's connection, redirected to the loopback: filter OUTPUT still sees the
            # output device of the route before the NAT (not lo), so accept it by its new destination.
            lines.insert(lines.index("COMMIT"), "-A OUTPUT -d %s -p tcp --dport %d -m conntrack --ctstate DNAT "
                         "-j ACCEPT" % ("127.0.0.1" if fam == "4" else "::1", port))
            lines += ["-A PREROUTING -i %s -p tcp --dport 443 -j REDIRECT --to-ports %d" % (client_if, port),
                      "-A OUTPUT -p tcp --dport 443 -m owner ! --uid-owner %d -j REDIRECT --to-ports %d"
                      % (GATE_UID, port)]
        lines.append("COMMIT")
        out[fam] = "\n".join(lines) + "\n"
    return out


def apply_ruleset(side):
    """The host's rules for `side`, from empty tables: the module's payloads as the module applies
    them (sets first, then iptables-restore --noflush), or the hand-written ones."""
    for cmd in ("iptables-restore", "ip6tables-restore"):
        nsx(HOST, cmd, "--wait", "10", input=EMPTY_TABLES)
    nsx(HOST, "ipset", "destroy")
    if side in MODULE_SIDES:
        rules, sets = MODULE_SIDES[side]
        if sets:
            nsx(HOST, "ipset", "restore", input=sets)
        nsx(HOST, "iptables-restore", "--noflush", "--wait", "10", input=rules["4"])
        nsx(HOST, "ip6tables-restore", "--noflush", "--wait", "10", input=rules["6"])
    else:
        rules = ruleset(side)
        nsx(HOST, "iptables-restore", "--wait", "10", input=rules["4"])
        nsx(HOST, "ip6tables-restore", "--wait", "10", input=rules["6"])
    # Connections tracked under the previous side would keep its NAT decision.
    for family in ("ipv4", "ipv6"):
        nsx(HOST, "conntrack", "-F", "-f", family)


# --- the behaviour checks ----------------------------------------------------------------------

def probe(ns, *args, uid=None, timeout=30):
    prefix = []
    if uid is not None:
        prefix = ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups"]
    out = nsx(ns, *prefix, PYTHON, PROBE, *args, timeout=timeout).stdout
    return json.loads(out)


def checks(work, engine, ca):
    """Each case: the probe's result, the SYNs the server's two addresses received, and a verdict."""
    cases = []
    for fam, api, bad in (("4", API4, BAD4), ("6", API6, BAD6)):
        if engine == "shipped":  # pinned mode takes no subdomains: true entry, so the name is not on the list
            subdomain = ("v%s subdomain eu.%s (pinned: not allowlisted)" % (fam, SUBDOMAIN_ALLOWED), CLIENT,
                         ["tls", api, "eu." + SUBDOMAIN_ALLOWED, ca], {"refuse": True})
        else:
            subdomain = ("v%s allowed subdomain eu.%s" % (fam, SUBDOMAIN_ALLOWED), CLIENT,
                         ["tls", api, "eu." + SUBDOMAIN_ALLOWED, ca], {"pass": (API4, API6)})
        cases += [
            ("v%s allowed name" % fam, CLIENT, ["tls", api, ALLOWED, ca], {"pass": (API4, API6)}),
            subdomain,
            ("v%s look-alike x%s" % (fam, SUBDOMAIN_ALLOWED), CLIENT,
             ["hello", api, "x" + SUBDOMAIN_ALLOWED, "0", "2"], {"refuse": True}),
            ("v%s co-tenant on the allowed address" % fam, CLIENT, ["tls", api, COTENANT, ca], {"refuse": True}),
            ("v%s allowed name sent to a forbidden address" % fam, CLIENT, ["tls", bad, ALLOWED, ca],
             {"pass": (API4, API6), "or_refuse": True}),
            ("v%s no SNI" % fam, CLIENT, ["tls", api, "-", ca], {"refuse": True}),
            ("v%s IP-literal SNI" % fam, CLIENT, ["hello", api, api, "0", "2"], {"refuse": True}),
            ("v%s ECH, outer name not allowlisted" % fam, CLIENT, ["hello", api, "public.cdn.test", "1", "2"],
             {"refuse": True}),
            ("v%s ECH, outer name allowlisted (inner unknown)" % fam, CLIENT, ["hello", api, ALLOWED, "1", "2"],
             {"pass": (API4, API6)}),
            ("v%s plain TCP, HTTP bytes" % fam, CLIENT, ["raw", api, b"GET / HTTP/1.0\r\n\r\n".hex(), "2"],
             {"refuse": True}),
            ("v%s plain TCP, silent client" % fam, CLIENT, ["silent", api, "8"], {"refuse": True, "closed": True}),
            ("v%s allowed name in capitals (informational)" % fam, CLIENT,
             ["hello", api, ALLOWED.upper(), "0", "2"], {"info": True}),
            ("v%s allowed name with a trailing dot (informational)" % fam, CLIENT,
             ["hello", api, ALLOWED + ".", "0", "2"], {"info": True}),
            ("v%s local process (uid 0), allowed name" % fam, HOST, ["tls", api, ALLOWED, ca], {"pass": (API4, API6)}),
            ("v%s local process (uid 0), co-tenant" % fam, HOST, ["tls", api, COTENANT, ca], {"refuse": True}),
        ]
    results = []
    for name, ns, args, expect in cases:
        if engine in BASELINE.values() and ns == HOST:
            continue
        before = syn_counts()
        res = probe(ns, *args)
        time.sleep(0.2)
        after = syn_counts()
        reached = dict((addr, after.get(addr, 0) - before.get(addr, 0)) for addr in after
                       if after.get(addr, 0) != before.get(addr, 0))
        if expect.get("info"):  # no verdict: what the engine does with it is recorded
            good = True
            res["passed"] = bool(reached)
        elif "pass" in expect:
            good = len(reached) == 1 and set(reached) <= set(expect["pass"]) and (
                res.get("body", "").startswith("api") or res.get("outcome") == "bytes back")
            if expect.get("or_refuse") and not good:  # the gate may refuse instead of redirecting
                good = not reached and not res.get("handshake")
                res["refused_instead"] = good
        else:
            # Refused: nothing reached the server, no handshake completed (a gate may answer with an
            # alert or an error page of its own: "received" counts those bytes, and is reported).
            good = not reached and not res.get("handshake") and res.get("closed_by_peer", True)
        results.append({"case": name, "result": res, "server_syns": reached, "expected":
                        "passes to the allowed name's address" + (" or is refused" if expect.get("or_refuse") else "")
                        if "pass" in expect else "no verdict" if expect.get("info")
                        else "refused, nothing reaches the server",
                        "ok": good})
        print("%-8s %-55s %-4s %s %s" % (engine, name, "ok" if good else "FAIL", reached,
                                         res.get("body") or res.get("outcome")), file=sys.stderr, flush=True)
    # The gate's own uid is still held to the allowlist: it cannot reach the forbidden address.
    if engine not in BASELINE.values():
        res = probe(HOST, "raw", BAD4, b"x".hex(), "2", uid=GATE_UID)
        good = "Error" in res["outcome"] or "timed out" in res["outcome"]
        results.append({"case": "v4 gate uid connects to the forbidden address itself", "result": res,
                        "expected": "blocked by the OUTPUT owner rule", "ok": good})
        print("%-8s %-55s %-4s %s" % (engine, results[-1]["case"], "ok" if good else "FAIL", res["outcome"]),
              file=sys.stderr, flush=True)
    return results


# --- the load ----------------------------------------------------------------------------------

def gate_pids(proc):
    """The gate's processes: the setpriv'd process and its children (nginx's workers)."""
    pids = [proc.pid]
    try:
        children = sh("pgrep", "-P", str(proc.pid), check=False).stdout.split()
    except subprocess.SubprocessError:
        children = []
    return pids + [int(p) for p in children]


def rss_kib(pids):
    total_rss = total_pss = 0
    for pid in pids:
        try:
            with open("/proc/%d/smaps_rollup" % pid) as handle:
                for line in handle:
                    if line.startswith("Rss:"):
                        total_rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        total_pss += int(line.split()[1])
        except OSError:
            pass
    return total_rss, total_pss


def cpu_seconds(pids):
    """User + system CPU time of these processes (nginx's workers included: they are listed)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / float(ticks)


class Sampler(threading.Thread):
    """Samples the gate's RSS and PSS every 0.25 s until stopped (bounded by `limit` samples)."""

    def __init__(self, pids, limit=4000):
        super().__init__(daemon=True)
        self.pids, self.limit, self.peak = pids, limit, (0, 0)
        self.done = threading.Event()

    def run(self):
        for _sample in range(self.limit):
            rss, pss = rss_kib(self.pids)
            self.peak = (max(self.peak[0], rss), max(self.peak[1], pss))
            if self.done.wait(0.25):
                return


def load(address, clients, seconds, ca):
    out = nsx(CLIENT, TOOL, address, "443", ALLOWED, ca, str(clients), str(seconds),
              timeout=seconds + 120).stdout.split()
    ok, errors, p50, p99, elapsed = int(out[0]), int(out[1]), int(out[2]), int(out[3]), float(out[4])
    return {"ok": ok, "errors": errors, "rate": ok / elapsed, "p50_ms": p50 / 1000.0, "p99_ms": p99 / 1000.0}


def nat_redirects():
    """NEW connections the host's nat REDIRECT rules sent to a gate since the side's rules were
    applied (both families), from the rules' counters."""
    total = 0
    for cmd in ("iptables-save", "ip6tables-save"):
        for line in nsx(HOST, cmd, "-c", "-t", "nat").stdout.splitlines():
            if line.startswith("[") and "-j REDIRECT" in line:
                total += int(line[1:].split(":", 1)[0])
    return total


def prove_path(side, run):
    """The load took the side's path: every handshake through the gate's redirect (none without a
    gate), and at least one SYN at the server per handshake."""
    gated = side not in BASELINE.values()
    if (gated and run["redirected"] < run["ok"]) or (not gated and run["redirected"]):
        raise RuntimeError("%s: %d connections redirected for %d handshakes" % (side, run["redirected"], run["ok"]))
    if sum(run["server_syns"].values()) < run["ok"]:
        raise RuntimeError("%s: %s SYNs at the server for %d handshakes" % (side, run["server_syns"], run["ok"]))


def dns_queries(work):
    with open(os.path.join(work, "dnsmasq.log")) as handle:
        return sum(1 for line in handle if " query[" in line)


def build_tool():
    src = os.path.join(HERE, "tlsload.c")
    if not os.path.exists(TOOL) or os.path.getmtime(TOOL) < os.path.getmtime(src):
        os.makedirs(os.path.dirname(TOOL), exist_ok=True)
        sh("gcc", "-O2", "-Wall", "-pthread", "-o", TOOL, src, "-lssl", "-lcrypto")


def commit():
    """The checkout's commit, and whether bench/ or plugins/ differ from it (what ran is not only HEAD)."""
    head = sh("git", "-C", ROOT, "rev-parse", "--short", "HEAD", check=False).stdout.strip()
    dirty = sh("git", "-C", ROOT, "status", "--porcelain", "--", "bench", "plugins", check=False).stdout.strip()
    return head + (" (with uncommitted changes under bench/ or plugins/)" if dirty else "")


def versions():
    return {"nginx": sh("nginx", "-v").stderr.strip(),
            "haproxy": sh("haproxy", "-v").stdout.splitlines()[0],
            "openssl": sh("openssl", "version").stdout.strip(),
            "kernel": os.uname().release}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", default="1,50")
    parser.add_argument("--family", choices=("4", "6"), default="4")
    parser.add_argument("--engines", default="shipped",
                        help="comma-separated, among shipped, nginx, haproxy, squid (default: shipped)")
    parser.add_argument("--no-checks", action="store_true")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "tlsgate.json"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/tlsgate needs root (network namespaces)")
    engines = args.engines.split(",")
    for engine in engines:
        if engine not in BASELINE:
            sys.exit("--engines: %r is not one of %s" % (engine, ", ".join(sorted(BASELINE))))
    if len(set(engines)) != len(engines):
        sys.exit("--engines: %r names an engine twice" % args.engines)
    if args.reps < 1 or args.seconds <= 0:
        sys.exit("--reps: %r and --seconds: %r must be positive" % (args.reps, args.seconds))
    sides = [b for b in ("direct", "direct-hand") if b in (BASELINE[e] for e in engines)] + engines
    # The module's payloads first: a policy the module would refuse stops the bench before any namespace.
    gate_result = None
    if "shipped" in engines:
        shipped_rules, shipped_sets, gate_result = module_payloads("enforce")
        direct_rules, direct_sets, _off = module_payloads("off")
        MODULE_SIDES.update(shipped=(shipped_rules, shipped_sets), direct=(direct_rules, direct_sets))
    build_tool()
    work = tempfile.mkdtemp(prefix="agtg-")
    os.chmod(work, 0o755)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_start": loadavg(),
               "versions": versions(), "reps": args.reps, "seconds": args.seconds, "family": args.family,
               "argv": sys.argv[1:], "commit": commit(), "baseline": dict((e, BASELINE[e]) for e in engines),
               "module_rules": dict((side, {"rules": r, "sets": st}) for side, (r, st) in MODULE_SIDES.items()),
               "tls_gate": gate_result,
               "checks": {}, "resolver_down": {}, "warmup": {}, "load": {}, "logs": {}, "work": work}
    try:
        make_ca(work)
        ca = os.path.join(work, "ca.pem")
        namespaces_up()
        resolver = start_resolver(work)
        start_server(work)
        procs = {}
        for engine in engines:
            if engine == "shipped":
                procs[engine] = start_shipped(work, gate_result)
            else:
                procs[engine] = {"nginx": start_nginx, "haproxy": start_haproxy, "squid": start_squid}[engine](work)
        if not args.no_checks:
            for side in sides:
                apply_ruleset(side)
                results["checks"][side] = checks(work, side, ca)
            results["resolver_down"], resolver = resolver_down(work, engines, resolver, ca)
            for engine in engines:
                results["logs"][engine] = refusal_log(work, engine)
        address = API4 if args.family == "4" else API6
        # A fresh lab loses its first SYNs (neighbour discovery) and a gate's first upstream connections
        # warm its workers: one discarded second per side before anything is measured.
        for side in sides:
            apply_ruleset(side)
            results["warmup"][side] = load(address, 1, 1.0, ca)
        for clients in [int(c) for c in args.clients.split(",")]:
            runs = dict((side, []) for side in sides)
            peaks = dict((engine, []) for engine in engines)
            queries = dict((engine, 0) for engine in engines)
            for rep in range(args.reps):
                order = sides[rep % len(sides):] + sides[:rep % len(sides)]
                for side in order:
                    apply_ruleset(side)
                    sampler = None
                    if side in procs:
                        pids = gate_pids(procs[side])
                        sampler = Sampler(pids)
                        sampler.start()
                        cpu_before = cpu_seconds(pids)
                    before, syns = dns_queries(work), syn_counts()
                    run = load(address, clients, args.seconds, ca)
                    after = syn_counts()
                    run["server_syns"] = dict((a, n - syns.get(a, 0)) for a, n in after.items() if n != syns.get(a, 0))
                    run["redirected"] = nat_redirects()
                    prove_path(side, run)
                    if sampler:
                        sampler.done.set()
                        sampler.join(5)
                        peaks[side].append(sampler.peak)
                        queries[side] += dns_queries(work) - before
                        # The gate's own CPU per connection: what it costs, whatever else runs.
                        run["gate_cpu_us_per_conn"] = 1e6 * (cpu_seconds(pids) - cpu_before) / max(1, run["ok"])
                    runs[side].append(run)
                    print("c=%-3d rep %d %-11s %7.0f hs/s  p50 %6.2f ms  p99 %7.2f ms  errors %d" % (
                        clients, rep + 1, side, run["rate"], run["p50_ms"], run["p99_ms"], run["errors"]),
                        file=sys.stderr, flush=True)
            summary = {}
            for side in sides:
                rates = [r["rate"] for r in runs[side]]
                summary[side] = {"rate_median": statistics.median(rates), "rate_min": min(rates),
                                 "rate_max": max(rates),
                                 "p50_ms_median": statistics.median(r["p50_ms"] for r in runs[side]),
                                 "p99_ms_median": statistics.median(r["p99_ms"] for r in runs[side]),
                                 "errors": sum(r["errors"] for r in runs[side]), "runs": runs[side],
                                 # Where the upstream connections went (a gate may use any of the name's addresses).
                                 "server_syns": dict((a, sum(r["server_syns"].get(a, 0) for r in runs[side]))
                                                     for a in sorted(set(a for r in runs[side] for a in r["server_syns"])))}
            for engine in engines:
                # Each repetition ran every side back to back: compare within a repetition, then take
                # the median over repetitions (the machine's load moves between repetitions).
                baseline = runs[BASELINE[engine]]
                ratios = [g["rate"] / d["rate"] for g, d in zip(runs[engine], baseline)]
                added = [g["p50_ms"] - d["p50_ms"] for g, d in zip(runs[engine], baseline)]
                summary[engine]["baseline"] = BASELINE[engine]
                summary[engine]["vs_direct"] = statistics.median(ratios)
                summary[engine]["vs_direct_range"] = (min(ratios), max(ratios))
                summary[engine]["added_p50_ms"] = statistics.median(added)
                summary[engine]["added_p50_ms_range"] = (min(added), max(added))
                summary[engine]["gate_cpu_us_per_conn"] = statistics.median(
                    r["gate_cpu_us_per_conn"] for r in runs[engine])
                summary[engine]["peak_rss_kib"] = max(p[0] for p in peaks[engine])
                summary[engine]["peak_pss_kib"] = max(p[1] for p in peaks[engine])
                summary[engine]["dns_queries"] = queries[engine]
            results["load"][str(clients)] = summary
        results["loadavg_end"] = loadavg()
        results["ended"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)
    finally:
        stop_all()
        namespaces_down()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(results, engines)


def report(results, engines):
    print("started %s, load average %s at the start, %s at the end" % (
        results["started"], results["loadavg_start"], results.get("loadavg_end")))
    for side, cases in results["checks"].items():
        bad = [c["case"] for c in cases if not c["ok"]]
        if side in BASELINE.values():  # no gate: what reaches the server here is what the gate has to stop
            print("checks %-11s (no gate) %d/%d cases behave as a gate must; not: %s" % (
                side, len(cases) - len(bad), len(cases), ", ".join(bad)))
            continue
        print("checks %-11s %d/%d as expected%s" % (side, len(cases) - len(bad), len(cases),
                                                    ("; NOT: " + ", ".join(bad)) if bad else ""))
    for engine, res in results["resolver_down"].items():
        print("resolver down, %-8s %s (%.1f s), server SYNs %s" % (
            engine, res.get("body") or res.get("outcome"), res["elapsed"], res["server_syns"]))
    print()
    print("paired with: " + ", ".join("%s vs %s" % item for item in sorted(results["baseline"].items())))
    print("| clients | side | handshakes/s (median, min-max) | vs direct, paired (median, min-max) "
          "| TTFB p50 (ms) | added p50, paired (ms, min-max) | TTFB p99 (ms) | gate CPU per connection (us) "
          "| gate RSS / PSS peak (MiB) | DNS queries | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for clients, summary in results["load"].items():
        for side, s in summary.items():
            gate = side in engines
            print("| %s | %s | %.0f (%.0f-%.0f) | %s | %.2f | %s | %.2f | %s | %s | %s | %d |" % (
                clients, side, s["rate_median"], s["rate_min"], s["rate_max"],
                "%.1f %% (%.0f-%.0f)" % (100 * s["vs_direct"], 100 * s["vs_direct_range"][0],
                                         100 * s["vs_direct_range"][1]) if gate else "-",
                s["p50_ms_median"],
                "%+.2f (%+.2f to %+.2f)" % ((s["added_p50_ms"],) + tuple(s["added_p50_ms_range"])) if gate else "-",
                s["p99_ms_median"], "%.0f" % s["gate_cpu_us_per_conn"] if gate else "-",
                "%.1f / %.1f" % (s["peak_rss_kib"] / 1024.0, s["peak_pss_kib"] / 1024.0) if gate else "-",
                s["dns_queries"] if gate else "-", s["errors"]))
    print()
    for clients, summary in results["load"].items():
        print("%s clients, SYNs at the server per address over all repetitions: %s" % (
            clients, "; ".join("%s %s" % (side, s["server_syns"]) for side, s in summary.items())))


if __name__ == "__main__":
    main()
