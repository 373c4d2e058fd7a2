# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""resolved: systemd-resolved manages /etc/resolv.conf (its stub, 127.0.0.53) and the role, in
egress_dns_mode=filtering, points resolved at the filtering resolver with a drop-in.

Proved from the host as it runs, with real queries and connections:
- /etc/resolv.conf is still resolved's stub: the role did not write it;
- resolved's upstream is what the role says: the filtering resolver's loopback addresses only,
  routing every domain (`~.`), no fallback servers, no link servers;
- the allowed name resolves through the stub and connects; a name outside the allowlist gets
  NXDOMAIN from the stub and the lab resolver never hears of it;
- DNS around the filtering resolver is denied and logged: to the upstream, from the agent and
  from resolved's own user (a resolved that kept its old upstream could not use it either).
pinned mode (side_effect.yml) and egress_state=absent (cleanup.yml) are proved by their playbooks.
"""
import ipaddress
import re
import secrets
import time

import pytest

from conftest import (CA_IN_HOST, DGRAM_TIMEOUT, TCP_TIMEOUT, denial_lines, dmesg_mark, lab_addr, service_log_since,
                      service_log_sizes, wait_for_log_budget)

API = "api.openclaw.security"
STUB = "127.0.0.53"
RESOLVED_USER = "systemd-resolve"
# The role's drop-in (roles/egress/vars/main.yml, __egress_dns.resolved_dropin) and listen addresses.
DROPIN = "/etc/systemd/resolved.conf.d/10-agentguard-egress.conf"
LISTEN = ["127.0.0.1", "::1"]


def _global(target, what):
    """`resolvectl dns` or `resolvectl domain`: {scope: [values]} (Global and each link)."""
    out = target.check_output("resolvectl %s", what)
    scopes = {}
    for line in out.splitlines():
        scope, _sep, values = line.partition(":")  # "Global: 127.0.0.1 ::1", "Link 2 (eth0):"
        scopes[scope.strip()] = values.split()
    return scopes


def test_resolv_conf_is_resolveds_stub(target):
    assert target.check_output("readlink /etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    servers = re.findall(r"^nameserver\s+(\S+)", target.check_output("cat /etc/resolv.conf"), re.M)
    assert servers == [STUB], servers
    assert target.check_output("systemctl is-active systemd-resolved.service") == "active"


def test_resolved_forwards_to_the_filtering_resolver_only(target):
    assert "agentguard" in target.check_output("cat %s", DROPIN)
    dns = _global(target, "dns")
    assert dns.pop("Global") == LISTEN, "resolved's global servers are not the role's"
    assert not any(dns.values()), "a link has its own DNS servers: %s" % dns
    assert _global(target, "domain")["Global"] == ["~."]
    # No fallback servers: resolved's FallbackDNS property is an empty array.
    fallback = target.check_output("busctl get-property org.freedesktop.resolve1 /org/freedesktop/resolve1 "
                                   "org.freedesktop.resolve1.Manager FallbackDNS")
    assert fallback == "a(iiay) 0", fallback
    # The server resolved uses: one it asked for a name just now (as it does for every lookup).
    _uid, res = target.probe([{"id": "q", "kind": "dns-udp", "family": 4, "host": STUB, "port": 53, "qname": API,
                               "timeout": 3.0}])
    assert res["q"]["ok"], res["q"]
    current = target.check_output("resolvectl status")
    match = re.search(r"Current DNS Server:\s*(\S+)", current)
    assert match and match.group(1) in LISTEN, current


def test_allowed_name_resolves_through_the_stub_and_connects(target, family):
    qtype = "A" if family == 4 else "AAAA"
    _uid, res = target.probe([
        {"id": "stub", "kind": "dns-udp", "family": 4, "host": STUB, "port": 53, "qname": API, "qtype": qtype,
         "timeout": 3.0},
        {"id": "resolve", "kind": "resolve", "family": family, "host": API},
    ])
    assert res["stub"]["ok"] and res["stub"]["detail"] == "rcode=0 answers=1", res["stub"]
    assert res["resolve"]["detail"] == [lab_addr("api", family)], res["resolve"]
    cmd = target.run("runuser -u %s -- curl -sS -%s --max-time 5 --cacert %s https://%s/", target.probe_user,
                     str(family), CA_IN_HOST, API)
    assert cmd.rc == 0, cmd.stderr
    assert cmd.stdout.strip() == "agentguard-lab api ok"


def test_other_names_get_nxdomain_and_never_reach_the_upstream(target):
    zone = "r%s.attacker.lab" % secrets.token_hex(4)
    probes = [{"id": qtype, "kind": "dns-udp", "family": 4, "host": STUB, "port": 53,
               "qname": "%s.%s" % (secrets.token_hex(12), zone), "qtype": qtype, "timeout": 3.0}
              for qtype in ("A", "AAAA", "TXT")]
    sizes = service_log_sizes()
    _uid, res = target.probe(probes)
    assert sorted(res) == ["A", "AAAA", "TXT"], res  # each query ran (target.probe checks it too)
    for probe in probes:
        result = res[probe["id"]]
        assert result["ok"] and result["detail"] == "rcode=3 answers=0", (probe["id"], result)
    time.sleep(0.5)  # the lab resolver writes its query log asynchronously (log-async)
    assert zone not in (service_log_since("ag-resolver", sizes) or ""), "the upstream was asked about %s" % zone


@pytest.mark.parametrize("user", ["agent", RESOLVED_USER])
def test_dns_around_the_filtering_resolver_is_denied_and_logged(target, family, user):
    upstream = lab_addr("resolver", family)
    probes = [{"id": kind, "kind": kind, "family": family, "host": upstream, "port": 53,
               "qname": API, "timeout": timeout}
              for kind, timeout in (("dns-udp", DGRAM_TIMEOUT), ("dns-tcp", TCP_TIMEOUT))]
    wait_for_log_budget(target, 2, families=(family,))
    mark = dmesg_mark()
    uid, res = target.probe(probes, user=user)
    assert sorted(res) == ["dns-tcp", "dns-udp"], res  # both probes ran (target.probe checks it too)
    for probe in probes:
        kind, result = probe["id"], res[probe["id"]]
        assert not result["ok"], "%s to the upstream got through as %s: %s" % (kind, user, result)
        assert result["sport"] is not None, result
        proto = "UDP" if kind == "dns-udp" else "TCP"
        lines = denial_lines(mark, target.policy["egress_log_prefix"], target.addr[family], UID=uid,
                             DST=str(ipaddress.ip_address(upstream)), PROTO=proto, SPT=result["sport"], DPT=53)
        assert lines, "no log line for %s from %s (uid %d)" % (kind, user, uid)
