"""The canary's filters (what it probes, how, its verdict) and its probe program, files/egress_probe.py."""
import os
import socket
import subprocess
import sys

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.agentguard.hardening.plugins.filter.egress_canary_checks import FilterModule, canary_target

F = FilterModule().filters()
targets = F["egress_canary_targets"]
checks = F["egress_canary_checks"]
argv = F["egress_canary_argv"]
verdict = F["egress_canary_verdict"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
PROBE = os.path.join(ROOT, "roles", "egress", "files", "egress_probe.py")


# ------------------------------------------------------------------------------------- forbidden targets
def test_targets_are_one_host_and_one_port_each():
    assert targets(["198.18.0.66:443", "[FD00:A9E:1::66]:443", "API.OpenAI.com.:443", " 10.0.0.1/32:25 "]) == [
        dict(entry="198.18.0.66:443", host="198.18.0.66", port=443),
        dict(entry="[FD00:A9E:1::66]:443", host="fd00:a9e:1::66", port=443),
        dict(entry="API.OpenAI.com.:443", host="api.openai.com", port=443),
        dict(entry=" 10.0.0.1/32:25 ", host="10.0.0.1", port=25),
    ]
    assert targets([]) == []


@pytest.mark.parametrize("entry,fragments", [
    # The defect: the connect failed on the port, not on the firewall, and counted as blocked.
    ("[fd00:19::20]:99999", ["egress_canary_forbidden[3]", "'[fd00:19::20]:99999'", "port '99999' is out of range"]),
    ("198.18.0.66:0", ["'198.18.0.66:0'", "port '0' is out of range"]),
    ("198.18.0.66:https", ["'198.18.0.66:https'", "port 'https' is not a port"]),
    ("198.18.0.66:8000-8010", ["'198.18.0.66:8000-8010'", "is a range"]),
    ("198.18.0.66", ["'198.18.0.66'", "host:port"]),
    ("fd00:19::20:443", ["'fd00:19::20:443'", "host:port"]),
    ("[198.18.0.66]:443", ["'[198.18.0.66]:443'", "only an IPv6 address, in brackets"]),
    ("198.18.0.0/24:443", ["'198.18.0.0/24:443'", "is a network"]),
    ("exa mple.com:443", ["'exa mple.com:443'", "host 'exa mple.com' is not a valid DNS name"]),
    ("0.0.0.0/0:443", ["allows every address"]),
    (443, ["443", "not a string"]),
])
def test_a_target_the_firewall_cannot_be_what_blocks_is_refused_by_name_and_value(entry, fragments):
    with pytest.raises(ValueError) as exc:
        canary_target(entry, "egress_canary_forbidden[3]")
    assert str(exc.value).startswith("egress_canary_forbidden[3]: ")
    for fragment in fragments:
        assert fragment in str(exc.value), str(exc.value)
    with pytest.raises(AnsibleFilterError):
        targets(["198.18.0.66:443", entry])


# ------------------------------------------------------------------------------------- allowed checks
RESOLVED = {
    "api": {"ipv4": ["198.18.0.10/32", "198.18.0.12/32"], "ipv6": ["fd00:a9e:1::10/128"]},
    "net": {"ipv4": ["198.18.1.0/24"], "ipv6": []},
    "rates": {"ipv4": ["198.18.0.11/32"]},
}


def test_one_check_per_tcp_destination_port_and_family_first_address_only():
    allow = [dict(name="api", host="api.example", ports=[443, "8000-8010"]), dict(name="net", host="198.18.1.0/24"),
             dict(name="rates", host="rates.example", ports=["8443"], protocol="tcp"),
             dict(name="ntp", host="pool.example", ports=[123], protocol="udp")]
    assert checks(allow, RESOLVED) == checks(allow, RESOLVED, ["ipv4", "ipv6"])  # no families: both
    assert checks(allow, RESOLVED, ["ipv4", "ipv6"]) == [
        dict(name="api", family="ipv4", address="198.18.0.10", port=443, sni=""),
        dict(name="api", family="ipv4", address="198.18.0.10", port=8000, sni=""),
        dict(name="api", family="ipv6", address="fd00:a9e:1::10", port=443, sni=""),
        dict(name="api", family="ipv6", address="fd00:a9e:1::10", port=8000, sni=""),
        dict(name="rates", family="ipv4", address="198.18.0.11", port=8443, sni=""),
    ]


def test_checks_default_to_443_and_only_the_opened_families():
    assert checks([dict(name="api", host="api.example")], RESOLVED, ["ipv6"]) == [
        dict(name="api", family="ipv6", address="fd00:a9e:1::10", port=443, sni="")]
    assert checks([dict(name="api", host="api.example", ports=[])], RESOLVED, ["ipv4"]) == []
    assert checks([dict(name="gone", host="gone.example")], RESOLVED, ["ipv4"]) == []
    assert checks([dict(name="api", host="api.example")], {}, ["ipv4"]) == []


def test_entries_for_other_users_get_no_check():
    """users: [_apt] opens the mirror to apt's downloads only: a canary as root would fail on it."""
    mirror = dict(name="api", host="api.example", ports=[80], users=["_apt"])
    assert checks([mirror], RESOLVED, ["ipv4", "ipv6"]) == []
    assert checks([dict(mirror, users=[])], RESOLVED, ["ipv4"]) == [
        dict(name="api", family="ipv4", address="198.18.0.10", port=80, sni="")]


# ------------------------------------------------------------------------------------- probe command line
def test_argv_as_root_and_as_the_restricted_user():
    assert argv("CODE", "/usr/bin/python3", 5) == ["timeout", "12", "/usr/bin/python3", "-c", "CODE"]
    passwd = {"agent": ["x", "1001", "1002", "", "/home/agent", "/bin/sh"]}
    assert argv("CODE", "/usr/bin/python3", 5, "agent", passwd)[:4] == [
        "setpriv", "--reuid=1001", "--regid=1002", "--clear-groups"]
    # No passwd entry (a numeric uid): setpriv is given the user as it was written.
    assert argv("CODE", "/usr/bin/python3", 5, "1500", {"1500": None})[:3] == ["setpriv", "--reuid=1500", "--regid=1500"]


# ------------------------------------------------------------------------------------- verdict
def probe(name, address, port, rc, stdout=""):
    return dict(item=dict(name=name, address=address, port=port), rc=rc, stdout=stdout)


def test_a_clean_canary_passes_and_counts():
    allowed = {"results": [probe("api", "198.18.0.10", 443, 0, "connected"),
                           probe("api", "fd00:a9e:1::10", 443, 3, "[Errno 101] Network is unreachable")]}
    forbidden = {"results": [dict(item=dict(entry="198.18.0.66:443"), rc=1)]}
    result = verdict(allowed, forbidden, "ag-agent")
    assert result["failures"] == []
    assert result["success_msg"] == ("Egress canary passed: 1 allowed connection(s) made, "
                                     "1 forbidden destination(s) blocked.")


def test_failures_name_each_failed_check_and_each_leak():
    allowed = {"results": [probe("api", "198.18.0.10", 443, 1, "timed out\n"), probe("api", "fd00::10", 443, 3),
                           probe("rates", "198.18.0.11", 443, 124)]}
    forbidden = {"results": [dict(item=dict(entry="198.18.0.66:443"), rc=0), dict(item="legacy:80", rc=0),
                             dict(item=dict(entry="[fd00::66]:443"), rc=1)]}
    result = verdict(allowed, forbidden, "ag-agent")
    assert result["failures"] == [
        "allowed api 198.18.0.10 port 443 is not reachable (timed out)",
        "allowed rates 198.18.0.11 port 443 is not reachable (rc 124)",
        "allowed api port 443: no resolved address is reachable from the host",
        "allowed rates port 443: no resolved address is reachable from the host",
        "forbidden 198.18.0.66:443 accepted a connection",
        "forbidden legacy:80 accepted a connection",
    ]
    assert result["fail_msg"].startswith("Egress canary failed on ag-agent: allowed api 198.18.0.10")
    assert result["fail_msg"].endswith("forbidden legacy:80 accepted a connection.")


def test_no_route_in_every_family_fails():
    result = verdict({"results": [probe("api", "198.18.0.10", 443, 3)]}, {"results": []})
    assert result["failures"] == ["allowed api port 443: no resolved address is reachable from the host"]


# ------------------------------------------------------------------------------------- the probe program
def run_probe(*args):
    with open(PROBE) as handle:
        code = handle.read()
    proc = subprocess.run([sys.executable, "-c", code] + [str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=30, check=False)
    return proc.returncode, proc.stdout.strip()


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server
    server.close()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_probe_connects_and_says_so(listener):
    assert run_probe("127.0.0.1", listener.getsockname()[1], 2) == (0, "connected")


def test_probe_refused_is_1():
    rc, out = run_probe("127.0.0.1", free_port(), 2)
    assert rc == 1 and "refused" in out.lower()


def test_probe_binds_the_source_port_and_falls_back_when_it_is_taken(listener):
    source = free_port()
    assert run_probe("127.0.0.1", listener.getsockname()[1], 2, source) == (0, "connected")
    peer = listener.accept()[0]
    assert peer.getpeername()[1] == source
    peer.close()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        assert run_probe("127.0.0.1", listener.getsockname()[1], 2, busy) == (0, "connected")
        peer = listener.accept()[0]
        assert peer.getpeername()[1] != busy
        peer.close()


# ------------------------------------------------------------------------------------- the TLS gate
GATE = dict(mode="enforce", listeners=[dict(port=443, listen=10443)],
            names=[dict(name="api.example", subdomains=False, ports=[443], addresses=[])])
GATE_ALLOW = [dict(name="api", host="API.example.", ports=[443, 8443]), dict(name="net", host="198.18.1.10")]
GATE_RESOLVED = dict(RESOLVED, net={"ipv4": ["198.18.1.10/32"]})


def test_gated_checks_carry_the_name_as_sni():
    assert checks(GATE_ALLOW, GATE_RESOLVED, ["ipv4"], GATE) == [
        dict(name="api", family="ipv4", address="198.18.0.10", port=443, sni="api.example"),
        dict(name="api", family="ipv4", address="198.18.0.10", port=8443, sni=""),
        dict(name="net", family="ipv4", address="198.18.1.10", port=443, sni=""),
    ]
    # Off (or no gate in the result): plain connects.
    assert all(c["sni"] == "" for c in checks(GATE_ALLOW, GATE_RESOLVED, ["ipv4"], dict(GATE, mode="off")))


def test_gate_checks_send_a_foreign_name_only_when_the_gate_enforces():
    gate_checks = F["egress_canary_gate_checks"]
    assert gate_checks(GATE_ALLOW, GATE_RESOLVED, ["ipv4", "ipv6"], GATE) == [
        dict(name="api", family="ipv4", address="198.18.0.10", port=443, sni="agentguard-canary.invalid",
             allowed_sni="api.example"),
        dict(name="api", family="ipv6", address="fd00:a9e:1::10", port=443, sni="agentguard-canary.invalid",
             allowed_sni="api.example"),
    ]
    assert gate_checks(GATE_ALLOW, GATE_RESOLVED, ["ipv4"], dict(GATE, mode="audit")) == []
    assert gate_checks(GATE_ALLOW, GATE_RESOLVED, ["ipv4"], {}) == []


def test_a_foreign_name_through_the_gate_fails_the_canary():
    allowed = {"results": [probe("api", "198.18.0.10", 443, 0, "handshake completed")]}
    leak = dict(item=dict(name="api", address="198.18.0.10", port=443, sni="agentguard-canary.invalid"), rc=0)
    refused = dict(leak, rc=1)
    result = verdict(allowed, {"results": []}, "h", {"results": [leak, dict(leak, rc=3)]})
    assert result["failures"] == ["the TLS gate let the server name agentguard-canary.invalid through to api "
                                  "(198.18.0.10) port 443"]
    result = verdict(allowed, {"results": []}, "h", {"results": [refused]})
    assert result["failures"] == []
    assert result["success_msg"] == ("Egress canary passed: 1 allowed connection(s) made, 0 forbidden destination(s) "
                                     "blocked, 1 foreign server name(s) refused by the TLS gate.")


def test_a_refusal_counts_only_with_the_gates_own_log_line():
    """A failed handshake proves nothing by itself (a name nobody resolves fails through a gate that passes
    every name): the gate must have logged not-allowed, no upstream, for the probe's source port."""
    allowed = {"results": [probe("api", "198.18.0.10", 443, 0, "handshake completed")]}
    item = dict(name="api", address="198.18.0.10", port=443, sni="agentguard-canary.invalid")
    refused = dict(item=item, rc=1, stdout="source port 30999\nhandshake for agentguard-canary.invalid failed: EOF")
    line = ('time=2026-11-30T05:00:00+00:00 client=198.18.0.47:30999 listen=10443 sni="agentguard-canary.invalid" '
            'reason=not-allowed status=500 upstream="-" bytes=517/0')
    assert verdict(allowed, {"results": []}, "h", {"results": [refused]}, [line])["failures"] == []
    broken = [  # what a gate that passes every name logs: it tried (and failed) to resolve and connect
        line.replace('status=500 upstream="-"', 'status=502 upstream="agentguard-canary.invalid:443"'),
        line.replace("client=198.18.0.47:30999", "client=198.18.0.47:41000"),   # another connection
        line.replace("reason=not-allowed", "reason=allowed"),
    ]
    for lines in ([], broken):
        failures = verdict(allowed, {"results": []}, "h", {"results": [refused]}, lines)["failures"]
        assert failures == ["the handshake with the server name agentguard-canary.invalid to api (198.18.0.10) port "
                            "443 failed, but the TLS gate's log has no refusal (not-allowed) of that connection"], lines
    # no source port printed (an older probe): no evidence either
    assert verdict(allowed, {"results": []}, "h", {"results": [dict(refused, stdout="EOF")]}, [line])["failures"]


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory):
    work = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", "/CN=api.example", "-keyout", str(work / "key.pem"),
                    "-out", str(work / "cert.pem")], check=True, capture_output=True)
    return str(work / "cert.pem"), str(work / "key.pem")


def tls_server(pair, refuse):
    """A one-connection TLS server: completes the handshake, or (a gate refusing) reads and closes."""
    import ssl
    import threading
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*pair)

    def serve():
        conn, _addr = server.accept()
        try:
            if refuse:
                conn.recv(4096)
            else:
                context.wrap_socket(conn, server_side=True).close()
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()
            server.close()
    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def test_probe_with_sni_needs_a_completed_handshake(tls_pair):
    rc, out = run_probe("127.0.0.1", tls_server(tls_pair, refuse=False), 3, 0, "api.example")
    port, rest = out.split("\n", 1)
    assert rc == 0 and rest.startswith("handshake completed") and out.endswith("for api.example"), out
    assert port.startswith("source port ") and int(port.split()[-1]) > 0, out   # the gate's log names it
    rc, out = run_probe("127.0.0.1", tls_server(tls_pair, refuse=True), 3, 0, "agentguard-canary.invalid")
    assert rc == 1 and out.split("\n", 1)[1].startswith("handshake for agentguard-canary.invalid failed"), out
