# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""The live filter tables hold the policy the scenario converged with (read-only)."""
import re


def _limit_spec(limit):
    """10/minute as iptables-save prints it: 10/min."""
    count, unit = str(limit).split("/")
    return "%s/%s" % (count, {"second": "sec", "minute": "min", "hour": "hour", "day": "day"}.get(unit, unit))


def test_output_policy_and_jump(target, family):
    rules = target.rules(family)
    policy = "DROP" if target.enforce and target.policy["egress_scope"] == "host" else "ACCEPT"
    assert ":OUTPUT %s " % policy in rules
    output = [line for line in rules.splitlines() if line.startswith("-A OUTPUT ")]
    assert output and output[0] == "-A OUTPUT -j AGENTGUARD-EGRESS", output


def test_denials_are_logged_with_uid_and_rate_limit(target, family):
    rules = target.rules(family)
    deny = [line for line in rules.splitlines() if line.startswith("-A AGENTGUARD-DENY ")]
    expected_log = '-A AGENTGUARD-DENY -m limit --limit %s --limit-burst %d -j LOG --log-prefix "%s" --log-uid' % (
        _limit_spec(target.policy["egress_log_limit"]), int(target.policy["egress_log_burst"]),
        target.policy["egress_log_prefix"])
    if target.policy.get("egress_learn"):
        # The recorder comes first: every denied packet is recorded, logged or not (molecule/learn).
        assert deny and deny[0] == "-A AGENTGUARD-DENY -j AGENTGUARD-LEARN", deny
        deny = deny[1:]
    assert deny and deny[0] == expected_log, deny
    if target.enforce:
        assert deny[-1] in ("-A AGENTGUARD-DENY -j DROP", "-A AGENTGUARD-DENY -j REJECT --reject-with "
                            + ("icmp-admin-prohibited" if family == 4 else "icmp6-adm-prohibited")), deny
    else:
        assert deny[-1] == "-A AGENTGUARD-DENY -j RETURN", deny


def test_scope(target, family):
    rules = target.rules(family)
    entry = [line for line in rules.splitlines() if line.startswith("-A AGENTGUARD-EGRESS ")]
    if target.policy["egress_scope"] == "host":
        assert entry == ["-A AGENTGUARD-EGRESS -j AGENTGUARD-ALLOW"]
    else:
        uids = {str(target.check_output("id -u %s", user)) for user in target.policy["egress_scope_users"]}
        got = {m.group(1) for m in (re.search(r"--uid-owner (\d+) ", line) for line in entry) if m}
        assert got == uids, entry
        assert all(line.endswith("-j AGENTGUARD-ALLOW") for line in entry), entry


def test_dns_only_to_trusted_resolvers(target, family):
    rules = target.rules(family)
    dns = [line for line in rules.splitlines() if "--dport 53 " in line]
    servers = [s for s in target.policy["egress_dns_servers"] if (":" in s) == (family == 6)]
    if "ipv%d" % family not in target.policy["egress_families"]:
        servers = []
    want = {"%s/%d" % (s, 32 if family == 4 else 128) for s in servers}
    got = {re.search(r"-d (\S+) ", line).group(1) for line in dns}
    assert got == want, dns
