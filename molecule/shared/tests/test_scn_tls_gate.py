# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""tls-gate: egress_tls_gate=enforce, pinned DNS (ag-mol-tlsgate) and filtering DNS (ag-mol-tlsgate-dns).

The lab's API server (ag-api) answers two names on the same addresses: the allowed
api.openclaw.security and a co-tenant, cotenant.cdn.lab (lab/lab.sh), and logs the server name of
each TLS connection (`sni=`). Real connections from the test host, as root and as the agent:
- the allowed name works with curl and with Python's ssl (certificate checked against the lab CA);
- the co-tenant's name on the API's address never completes a handshake, is logged by the gate as
  not-allowed, and the API never sees it from the host;
- the allowed name sent to another allowed address reaches the name's own address (the gate
  connects where the trusted resolution says, never where the client pointed); to a forbidden
  address it reaches nothing;
- no SNI, an IP literal as SNI and plain TCP on 443 are refused and logged with their reasons;
- the gate's own user is not redirected and is still held to the allowlist; its listener is no
  open proxy for other hosts; the redirect is logged by the kernel ([EGRESS-TLS]);
- the gate runs as its own user under a hardened unit, started after the restart of side_effect
  before the agent's unit; Debian's nginx.service is masked and nothing listens on port 80.
cleanup.yml checks audit mode (passes and logs the co-tenant) and egress_state=absent.
"""
import json
import re
import time

import pytest

from conftest import (API, API_BODY, CA_IN_HOST as CA, COTENANT, GATE_UNIT as UNIT, GATE_USER, MAX_EXPOSURE,
                      as_user as _as, bracket as _bracket, curl, dmesg_mark, denial_lines, gate_lines as _gate_lines,
                      gate_log_since, gate_log_size, gate_users, lab_addr, seen_from as _seen, service_log_since,
                      service_log_sizes, unit_exposure)

USERS = ["root", "agent"]

# One TLS request with Python's ssl: certificate and name checked against the lab CA.
PY_TLS = r"""
import json, socket, ssl, sys
name, address, family, ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
out = {"ok": False}
try:
    ctx = ssl.create_default_context(cafile=ca)
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.settimeout(6)
    sock.connect((address, 443))
    with ctx.wrap_socket(sock, server_hostname=name) as tls:
        tls.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % name).encode())
        data = b""
        while True:
            chunk = tls.recv(4096)
            if not chunk:
                break
            data += chunk
    out.update(ok=True, body=data.decode(errors="replace"))
except Exception as exc:
    out.update(error="%s: %s" % (type(exc).__name__, exc))
print(json.dumps(out))
"""

# Plain bytes, not a ClientHello, to port 443: the gate must close without an answer.
PY_PLAIN = r"""
import json, socket, sys
address, family = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_STREAM)
sock.settimeout(8)
out = {}
try:
    sock.connect((address, 443))
    out["sport"] = sock.getsockname()[1]
    sock.sendall(b"GET / HTTP/1.0\r\nHost: api.openclaw.security\r\n\r\n")
    out["reply"] = sock.recv(4096).decode(errors="replace")
except Exception as exc:
    out["error"] = "%s: %s" % (type(exc).__name__, exc)
print(json.dumps(out))
"""


# ------------------------------------------------------------------------------ the gate itself
def test_gate_runs_as_its_own_user(target):
    assert target.check_output("systemctl is-active %s", UNIT) == "active"
    users = gate_users(target)
    assert users == {GATE_USER}, users


def test_gate_unit_is_hardened(target):
    exposure, report = unit_exposure(target, UNIT)
    assert exposure is not None, report
    assert exposure <= MAX_EXPOSURE, report


def test_debian_nginx_service_is_masked_and_port_80_closed(target):
    assert target.run("systemctl is-enabled nginx.service").stdout.strip() == "masked"
    assert target.check_output("ss -Hltn sport = :80") == ""


def test_gate_started_at_boot_before_the_agent(target):
    boot = int(target.check_output("date -d \"$(ps -o lstart= -p 1)\" +%s"))
    written = int(target.check_output("stat -c %Y /etc/agentguard/tls-gate/nginx.conf"))
    assert boot > written, "no restart since the role configured the gate"
    gate = int(target.check_output("systemctl show --property=ActiveEnterTimestampMonotonic --value %s", UNIT))
    agent = int(target.check_output("systemctl show --property=ExecMainStartTimestampMonotonic --value agent-demo.service"))
    assert 0 < gate <= agent, "the agent's unit started before the TLS gate"
    assert UNIT in target.check_output("systemctl show --property=After --value agent-demo.service").split()


def test_redirect_rules(target, family):
    save = "iptables-save" if family == 4 else "ip6tables-save"
    nat = target.check_output("%s -t nat", save)
    uid = target.check_output("id -u %s", GATE_USER)
    redirects = [r for r in nat.splitlines() if "-j REDIRECT" in r and "--to-ports 10443" in r]
    assert redirects, nat
    assert re.search(r"-A OUTPUT .*-j AGENTGUARD-TLS", nat), nat
    # The gate's own connections leave the chain first: they are not redirected.
    first = [r for r in nat.splitlines() if r.startswith("-A AGENTGUARD-TLS ")][0]
    assert re.search(r"-m owner --uid-owner %s .*-j RETURN$" % uid, first), first


# ------------------------------------------------------------------------------ allowed
@pytest.mark.parametrize("user", USERS)
def test_allowed_name_works_with_curl(target, family, user):
    sizes = service_log_sizes()
    out = curl(target, user, family, API)
    assert out.rc == 0 and API_BODY in out.stdout, (out.rc, out.stdout, out.stderr)
    time.sleep(0.3)
    assert _seen(service_log_since("ag-api", sizes), target, "sni=%s " % API), "the API never saw the gate's connection"


@pytest.mark.parametrize("user", USERS)
def test_allowed_name_works_with_python_ssl(target, family, user):
    out = json.loads(target.check_output(_as(user, "python3 -c %s %s %s %s %s"), PY_TLS, API,
                                         lab_addr("api", family), str(family), CA))
    assert out["ok"] and API_BODY in out["body"], out


def test_allowed_name_reaches_only_its_own_address(target, family):
    """Sent to another allowed address (the currency API's), the allowed name still reaches its own."""
    sizes = service_log_sizes()
    out = curl(target, "agent", family, API, lab_addr("rates", family))
    assert out.rc == 0 and API_BODY in out.stdout, (out.rc, out.stdout, out.stderr)
    time.sleep(0.3)
    assert not _seen(service_log_since("ag-rates", sizes), target), "the client's chosen address was reached"


def test_allowed_name_to_a_forbidden_address_reaches_nothing(target, family):
    sizes = service_log_sizes()
    out = curl(target, "agent", family, API, lab_addr("forbidden", family))
    assert out.rc != 0 and API_BODY not in out.stdout, (out.rc, out.stdout)
    time.sleep(0.3)
    assert not _seen(service_log_since("ag-forbidden", sizes), target), "the forbidden host saw the connection"


# ------------------------------------------------------------------------------ refused
@pytest.mark.parametrize("user", USERS)
def test_cotenant_name_is_refused_and_logged(target, family, user):
    size, sizes = gate_log_size(target), service_log_sizes()
    out = curl(target, user, family, COTENANT, lab_addr("api", family))
    assert out.rc != 0 and API_BODY not in out.stdout, (out.rc, out.stdout)
    # 35: the TLS handshake failed (the gate closed the connection after the ClientHello).
    assert out.rc == 35, (out.rc, out.stderr)
    lines = gate_log_since(target, size)
    assert _gate_lines(lines, target, family, sni=COTENANT, reason="not-allowed"), lines
    assert not _seen(service_log_since("ag-api", sizes), target, "sni=%s " % COTENANT), "the API saw the co-tenant"


def test_cotenant_name_fails_with_python_ssl(target, family):
    out = json.loads(target.check_output(_as("agent", "python3 -c %s %s %s %s %s"), PY_TLS, COTENANT,
                                         lab_addr("api", family), str(family), CA))
    assert not out["ok"], out


@pytest.mark.parametrize("case", ["no-sni", "ip-literal"])
def test_no_sni_and_ip_literal_are_refused_and_logged(target, family, case):
    api = lab_addr("api", family)
    name = "-noservername" if case == "no-sni" else "-servername %s" % api
    size, sizes = gate_log_size(target), service_log_sizes()
    out = target.run("runuser -u agent -- timeout 10 openssl s_client -brief -connect %s:443 %s </dev/null"
                     % (_bracket(api), name))
    assert "CONNECTION ESTABLISHED" not in out.stdout + out.stderr, out.stdout + out.stderr
    lines = gate_log_since(target, size)
    fields = {"reason": case} if case == "no-sni" else {"reason": case, "sni": api}
    assert _gate_lines(lines, target, family, **fields), lines
    assert not _seen(service_log_since("ag-api", sizes), target), "the API saw the connection"


def test_plain_tcp_is_refused_and_logged(target, family):
    size = gate_log_size(target)
    out = json.loads(target.check_output("runuser -u agent -- python3 -c %s %s %s", PY_PLAIN,
                                         lab_addr("api", family), str(family)))
    assert not out.get("reply"), out
    lines = gate_log_since(target, size)
    assert _gate_lines(lines, target, family, reason="not-tls"), lines


def test_redirect_is_logged_by_the_kernel(target, family):
    """The [EGRESS-TLS] line (rate-limited: retried while the bucket refills) joins a refusal to its uid."""
    uid = target.check_output("id -u agent")
    for _attempt in range(4):
        mark = dmesg_mark()
        curl(target, "agent", family, COTENANT, lab_addr("api", family))
        time.sleep(0.5)
        if denial_lines(mark, "[EGRESS-TLS] ", target.addr[family], UID=uid, DPT=443):
            return
        time.sleep(7)
    pytest.fail("no [EGRESS-TLS] kernel line for the agent's redirected connection")


# ------------------------------------------------------------------------------ the gate's user
def test_gate_user_is_not_redirected_but_held_to_the_allowlist(target, family):
    size = gate_log_size(target)
    out = curl(target, GATE_USER, family, API)
    assert out.rc == 0 and API_BODY in out.stdout, (out.rc, out.stdout, out.stderr)
    assert not _gate_lines(gate_log_since(target, size), target, family), "the gate's own connection was redirected"
    out = curl(target, GATE_USER, family, "exfil.attacker.lab", lab_addr("forbidden", family))
    assert out.rc != 0, "the gate's user reached the forbidden host"


def test_gate_listener_is_no_open_proxy(target, family, sibling):
    out = sibling.run("nc -z -w 2 %s 10443", target.addr[family])
    assert out.rc != 0, "another host connected to the gate's listener"
