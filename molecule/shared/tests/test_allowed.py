# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the allowlist must let through, over IPv4 and IPv6, as the restricted user."""
import ipaddress

import pytest

from conftest import CA_IN_HOST, DGRAM_TIMEOUT, lab_addr

API_NAME = "api.openclaw.security"


def _family_open(target, family):
    return "ipv%d" % family in target.policy["egress_families"]


def test_allowed_name_resolves_through_trusted_resolver(target, family):
    """Through the host's resolver: the trusted one (pinned) or the local filtering one, which
    forwards to the trusted one (filtering)."""
    if not _family_open(target, family):
        pytest.skip("ipv%d is not opened by egress_families" % family)
    resolver = target.resolver(family)
    _uid, res = target.probe([
        {"id": "resolve", "kind": "resolve", "family": family, "host": API_NAME},
        {"id": "udp", "kind": "dns-udp", "family": family, "host": resolver, "port": 53,
         "qname": API_NAME, "timeout": DGRAM_TIMEOUT},
        {"id": "tcp", "kind": "dns-tcp", "family": family, "host": resolver, "port": 53,
         "qname": API_NAME, "timeout": DGRAM_TIMEOUT},
    ])
    assert res["resolve"]["detail"] == [lab_addr("api", family)], res["resolve"]
    # The host's resolver answers over UDP and TCP in this family.
    assert res["udp"]["ok"] and "answers=1" in res["udp"]["detail"], res["udp"]
    assert res["tcp"]["ok"] and "answers=1" in res["tcp"]["detail"], res["tcp"]


def test_https_to_allowed_api(target, family):
    """curl -4/-6 with the lab CA: TLS verified, the API's own answer."""
    if not _family_open(target, family):
        pytest.skip("ipv%d is not opened by egress_families" % family)
    cmd = target.run("runuser -u %s -- curl -sS -%s --max-time 5 --cacert %s https://%s/",
                     target.probe_user, str(family), CA_IN_HOST, API_NAME)
    assert cmd.rc == 0, cmd.stderr
    assert cmd.stdout.strip() == "agentguard-lab api ok"


def test_every_allowed_destination_connects(target, family):
    """Each TCP destination:port of egress_allow accepts a NEW connection in this family."""
    if not _family_open(target, family):
        pytest.skip("ipv%d is not opened by egress_families" % family)
    probes = []
    for dest in target.policy["egress_allow"]:
        host = str(dest["host"])
        if dest.get("protocol", "tcp") != "tcp" or "/" in host:
            continue
        if dest.get("users") and target.probe_user not in [str(user) for user in dest["users"]]:
            continue  # another user's way out (the host's services): test_scn_host_services proves it denied
        try:
            if ipaddress.ip_address(host).version != family:
                continue
        except ValueError:
            pass  # a name: resolved by the host's (trusted) resolver
        for port in dest.get("ports", [443]):
            port = int(str(port).split("-", maxsplit=1)[0])
            probes.append({"id": "%s:%d" % (dest["name"], port), "kind": "tcp", "family": family,
                           "host": host, "port": port, "timeout": 2.0})
    assert probes, "egress_allow has no TCP destination to probe"
    _uid, res = target.probe(probes)
    failed = {k: v["outcome"] for k, v in res.items() if not v["ok"]}
    assert not failed, "allowed destinations not reachable: %s" % failed
