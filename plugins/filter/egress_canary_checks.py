# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The canary of the role agentguard.hardening.egress: what it probes, how, and its verdict.

Filters (egress_canary_checks documented below, the others in the .yml file of their name beside this one; tested in
tests/unit/plugins/filter/test_egress_canary_checks.py): egress_canary_targets, egress_canary_checks,
egress_canary_argv, egress_canary_verdict. They take what the role registered as explicit
arguments; the role's tasks/canary.yml runs the probes (files/egress_probe.py) and asserts the verdict.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: egress_canary_checks
short_description: What the canary probes of an egress allowlist
version_added: 0.1.0
description:
  - 'One check per allowed TCP destination, port (the lower bound of a range) and opened family: the first address
    M(agentguard.hardening.egress_rules) resolved for it. Networks wider than one address and UDP are not probed.'
  - Defined in C(plugins/filter/egress_canary_checks.py), unit-tested in C(tests/unit/plugins/filter/test_egress_canary_checks.py).
author:
  - agentguard.hardening developers (@agentguard)
positional: resolved, families
options:
  _input:
    description: C(egress_allow).
    type: list
    required: true
    elements: dict
  resolved:
    description: RV(agentguard.hardening.egress_rules#module:resolved) of this run's result.
    type: dict
    required: true
  families:
    description: The opened families.
    type: list
    default:
      - ipv4
      - ipv6
    elements: str
"""

EXAMPLES = r"""
- name: Probe each allowed destination
  ansible.builtin.command:
    argv: [probe, "{{ item.address }}", "{{ item.port }}"]
  loop: "{{ egress_allow | agentguard.hardening.egress_canary_checks(egress_result.resolved, ['ipv4', 'ipv6']) }}"
"""

RETURN = r"""
_value:
  description: One dictionary per check, with C(name), C(family), C(address) and C(port).
  type: list
  elements: dict
"""

import re
from collections import OrderedDict

from ansible_collections.agentguard.hardening.plugins.module_utils._policy import FAMILIES, parse_host, parse_port
from ansible_collections.agentguard.hardening.plugins.plugin_utils._filters import parse_each

# host:port, IPv6 as [address]:port. The port part is checked by parse_port, the host by parse_host.
_BRACKETED = re.compile(r"^\[([^\[\]]*)\]:([^:\[\]]*)$")
_PLAIN = re.compile(r"^([^:\[\]]+):([^:\[\]]*)$")
_HOST_BITS = {"ipv4": "/32", "ipv6": "/128"}


def _detail(exc, prefix):
    """parse_port/parse_host messages start with the `where` given them: keep what follows."""
    text = str(exc)
    return text[len(prefix) + 2:] if text.startswith(prefix + ": ") else text


def canary_target(entry, where):
    """One egress_canary_forbidden entry as {entry, host, port}, or ValueError naming where and the entry.

    The host is a DNS name or one address (IPv6 in brackets), the port one number from 1 to 65535: the same
    checks as egress_allow's (parse_host, parse_port), so an entry the firewall cannot be what blocks it
    ("[fd00:19::20]:99999" would fail on the port and count as blocked) is refused before anything runs.
    """
    if not isinstance(entry, str):
        raise ValueError("%s: %r is not a string written host:port or [IPv6 address]:port" % (where, entry))
    text = entry.strip()
    match = _BRACKETED.match(text) or _PLAIN.match(text)
    if not match:
        raise ValueError("%s: %r is not written host:port or [IPv6 address]:port" % (where, entry))
    host_text, port_text = match.groups()
    try:
        port = parse_port(port_text, "port")
    except ValueError as exc:
        raise ValueError("%s: %r: port %s" % (where, entry, _detail(exc, "port")))
    if ":" in port:
        raise ValueError("%s: %r: port %r is a range; the canary connects to one port" % (where, entry, port_text))
    try:
        kind, host = parse_host(host_text, "host")
    except ValueError as exc:
        raise ValueError("%s: %r: host %s" % (where, entry, _detail(exc, "host")))
    bracketed = text.startswith("[")
    if bracketed != (kind == "ipv6"):
        raise ValueError("%s: %r: write an IPv6 address, and only an IPv6 address, in brackets: [address]:port"
                         % (where, entry))
    if kind != "name":
        if not host.endswith(_HOST_BITS[kind]):
            raise ValueError("%s: %r: host %r is a network; give one address or a name" % (where, entry, host_text))
        host = host[:-len(_HOST_BITS[kind])]
    return dict(entry=entry, host=host, port=int(port))


def egress_canary_targets(forbidden):
    """The probes of egress_canary_forbidden, in order: [{entry, host, port}]."""
    return parse_each("egress_canary_targets", "egress_canary_forbidden", forbidden, canary_target)


def egress_canary_checks(allow, resolved, families=FAMILIES):
    """One check per allowed TCP destination, port and opened family: the first address the module resolved.

    A range is probed at its lower bound; a network (a CIDR wider than one address) is not probed.
    """
    checks = []
    for dest in allow or []:
        if (dest.get("protocol") or "tcp") != "tcp":
            continue
        answers = (resolved or {}).get(dest.get("name")) or {}
        ports = dest.get("ports")
        for family in FAMILIES:
            if family not in (families or []):
                continue
            for address in (answers.get(family) or [])[:1]:
                host = re.sub(r"/(32|128)$", "", str(address))
                if "/" in host:
                    continue
                for index, port in enumerate([443] if ports is None else ports):
                    low = parse_port(port, "%s ports[%d]" % (dest.get("name"), index)).split(":")[0]
                    checks.append(dict(name=dest.get("name"), family=family, address=host, port=int(low)))
    return checks


def egress_canary_argv(code, python, timeout, user="", passwd=None):
    """The probe's command line before its arguments (HOST PORT TIMEOUT [SOURCE_PORT]).

    With a user (egress_scope=users: the first of egress_scope_users) the probe runs as that user through
    setpriv, with the uid and gid of its passwd entry (ansible_facts.getent_passwd) when there is one.
    The whole probe is bounded by timeout(1) at twice its connect timeout and 2 s.
    """
    prefix = []
    if user:
        entry = (passwd or {}).get(str(user)) or []
        uid = entry[1] if len(entry) > 2 else str(user)
        gid = entry[2] if len(entry) > 2 else str(user)
        prefix = ["setpriv", "--reuid=%s" % uid, "--regid=%s" % gid, "--clear-groups"]
    return prefix + ["timeout", str(int(timeout) * 2 + 2), str(python), "-c", str(code)]


def _results(registered):
    if isinstance(registered, dict):
        return registered.get("results") or []
    return registered or []


def egress_canary_verdict(allowed, forbidden, host="this host"):
    """The canary's verdict from the registered probe loops.

    A failure is an allowed address that answered anything but "connected" or "no route" (rc 0 or 3), an
    allowed destination and port that no family reached, and a forbidden target that accepted a connection.
    Returns {failures, fail_msg, success_msg}.
    """
    failures = []
    reached = OrderedDict()
    allowed, forbidden = _results(allowed), _results(forbidden)
    for result in allowed:
        item = result.get("item") or {}
        key = "%s port %s" % (item.get("name"), item.get("port"))
        reached[key] = reached.get(key, False) or result.get("rc") == 0
        if result.get("rc") not in (0, 3):
            detail = (result.get("stdout") or "").strip() or "rc %s" % result.get("rc")
            failures.append("allowed %s %s port %s is not reachable (%s)"
                            % (item.get("name"), item.get("address"), item.get("port"), detail))
    failures.extend("allowed %s: no resolved address is reachable from the host" % key
                    for key, ok in reached.items() if not ok)
    for result in forbidden:
        if result.get("rc") == 0:
            item = result.get("item")
            failures.append("forbidden %s accepted a connection" % (item.get("entry") if isinstance(item, dict) else item))
    return dict(
        failures=failures,
        fail_msg="Egress canary failed on %s: %s." % (host, "; ".join(failures)),
        success_msg="Egress canary passed: %d allowed connection(s) made, %d forbidden destination(s) blocked."
                    % (len([r for r in allowed if r.get("rc") == 0]), len(forbidden)),
    )


class FilterModule(object):
    def filters(self):
        return {
            "egress_canary_targets": egress_canary_targets,
            "egress_canary_checks": egress_canary_checks,
            "egress_canary_argv": egress_canary_argv,
            "egress_canary_verdict": egress_canary_verdict,
        }
