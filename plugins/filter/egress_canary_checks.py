# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The canary of the role agentguard.hardening.egress: what it probes, how, and its verdict.

Filters (each documented in the .yml file of its name beside this one, which ansible-doc reads; tested in
tests/unit/plugins/filter/test_egress_canary_checks.py): egress_canary_targets, egress_canary_checks,
egress_canary_gate_checks, egress_canary_argv, egress_canary_verdict. They take what the role registered as explicit
arguments; the role's tasks/canary.yml runs the probes (files/egress_probe.py) and asserts the verdict.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
from collections import OrderedDict

from ansible_collections.agentguard.hardening.plugins.plugin_utils._filters import parse_each

# module_utils are imported in the filters that use them (why: plugin_utils/_filters.py).

# host:port, IPv6 as [address]:port. The port part is checked by parse_port, the host by parse_host.
_BRACKETED = re.compile(r"^\[([^\[\]]*)\]:([^:\[\]]*)$")
_PLAIN = re.compile(r"^([^:\[\]]+):([^:\[\]]*)$")
_HOST_BITS = {"ipv4": "/32", "ipv6": "/128"}
# The server name of the gate's refusal check: reserved (RFC 2606), so it belongs to no one.
FOREIGN_SNI = "agentguard-canary.invalid"


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
    from ansible_collections.agentguard.hardening.plugins.module_utils._policy import parse_host, parse_port

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


def canary_scope_error(scope, forbidden, state="present", mode="enforce", canary=True):
    """Why egress_canary_forbidden cannot be probed with this egress_scope, or '' when it can.

    The canary probes from the host itself (as root, or as the first restricted user with scope users). With
    scope none the policy restricts no local process: the forbidden destinations are open from the host by design,
    so the canary would fail a correct policy and roll it back; what that scope promises, the forwarded path of
    egress_scope_networks, cannot be probed from the host (only from inside a container network, which the role
    does not create). Refused, naming both variables. Only when the canary would run: state present, enforce mode
    (the canary is skipped in audit mode), egress_canary on.
    """
    if scope != "none" or not forbidden or state != "present" or mode != "enforce" or not canary:
        return ""
    return ("egress_canary_forbidden: %r is probed from the host itself, but egress_scope is 'none', which restricts "
            "no local process: those destinations are open from the host by design, and the canary would fail this "
            "policy and roll it back. The canary cannot prove the forwarded path of egress_scope_networks (it does not "
            "run inside a container network): leave egress_canary_forbidden empty with egress_scope none, and check "
            "the containers' denials with egress-report.yml." % (list(forbidden),))


def egress_canary_targets(forbidden):
    """The probes of egress_canary_forbidden, in order: [{entry, host, port}]."""
    return parse_each("egress_canary_targets", "egress_canary_forbidden", forbidden, canary_target)


def _gated(gate):
    """{(name, port)} the TLS gate covers, from the module's tls_gate result (empty when it is off)."""
    gate = gate if isinstance(gate, dict) else {}
    if gate.get("mode") not in ("audit", "enforce"):
        return set()
    return set((str(entry.get("name")), int(port)) for entry in gate.get("names") or [] for port in entry.get("ports") or [])


def _name(host):
    return str(host or "").lower().rstrip(".")


def egress_canary_checks(allow, resolved, families=None, gate=None):
    """One check per allowed TCP destination, port and opened family: the first address the module resolved.
    Entries with users (open to those users only) get no check.

    A range is probed at its lower bound; a network (a CIDR wider than one address) is not probed. A gated
    name and port (gate: the module's tls_gate result) is probed with a TLS handshake for the name (sni).
    """
    from ansible_collections.agentguard.hardening.plugins.module_utils._policy import FAMILIES, parse_port

    families = FAMILIES if families is None else families
    gated = _gated(gate)
    checks = []
    for dest in allow or []:
        # An entry with users: is open to those users' processes only (the host's own services, e.g. _apt to
        # the mirrors): the canary, root or the first restricted user, is not one of them and would fail it.
        if (dest.get("protocol") or "tcp") != "tcp" or dest.get("users"):
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
                    low = int(parse_port(port, "%s ports[%d]" % (dest.get("name"), index)).split(":")[0])
                    sni = _name(dest.get("host")) if (_name(dest.get("host")), low) in gated else ""
                    checks.append(dict(name=dest.get("name"), family=family, address=host, port=low, sni=sni))
    return checks


def egress_canary_gate_checks(allow, resolved, families=None, gate=None):
    """With the TLS gate enforcing: per gated name and port, to the first address per family the module resolved
    for it, a TLS handshake with a server name that is not allowlisted (FOREIGN_SNI), which the gate must refuse.
    [] in audit mode (it passes such a name) or when the gate is off."""
    if not isinstance(gate, dict) or gate.get("mode") != "enforce":
        return []
    return [dict(check, sni=FOREIGN_SNI, allowed_sni=check["sni"])
            for check in egress_canary_checks(allow, resolved, families, gate) if check["sni"]]


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


_SOURCE_PORT = re.compile(r"^source port (\d+)$", re.M)


def _gate_refusal_logged(result, records):
    """Whether the gate's log holds its own refusal of this probe: the probe's source port and server
    name, reason not-allowed, no upstream connection."""
    match = _SOURCE_PORT.search(result.get("stdout") or "")
    if not match:
        return False
    port, sni = int(match.group(1)), (result.get("item") or {}).get("sni")
    return any(r["client_port"] == port and r["sni"] == sni and r["reason"] == "not-allowed" and r["refused"]
               and not r["upstream"] for r in records)


def egress_canary_verdict(allowed, forbidden, host="this host", gate_refused=None, gate_log=None):
    """The canary's verdict from the registered probe loops.

    A failure is an allowed address that answered anything but "connected" or "no route" (rc 0 or 3), an
    allowed destination and port that no family reached, a forbidden target that accepted a connection, and
    a foreign server name that the TLS gate let through (gate_refused: the loop of egress_canary_gate_checks)
    or whose refusal the gate did not log (gate_log: the lines of its access log after those probes; a
    handshake that failed for another reason, such as a name nobody can resolve, proves nothing).
    Returns {failures, fail_msg, success_msg}.
    """
    from ansible_collections.agentguard.hardening.plugins.module_utils._tlsgate import parse_gate_log

    failures = []
    reached = OrderedDict()
    allowed, forbidden, gate_refused = _results(allowed), _results(forbidden), _results(gate_refused)
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
    records = parse_gate_log(gate_log or [])
    for result in gate_refused:
        item = result.get("item") or {}
        where = "%s (%s) port %s" % (item.get("name"), item.get("address"), item.get("port"))
        if result.get("rc") == 0:
            failures.append("the TLS gate let the server name %s through to %s" % (item.get("sni"), where))
        elif result.get("rc") != 3 and gate_log is not None and not _gate_refusal_logged(result, records):
            failures.append("the handshake with the server name %s to %s failed, but the TLS gate's log has no "
                            "refusal (not-allowed) of that connection" % (item.get("sni"), where))
    refused = len([r for r in gate_refused if r.get("rc") not in (0, 3)])
    return dict(
        failures=failures,
        fail_msg="Egress canary failed on %s: %s." % (host, "; ".join(failures)),
        success_msg="Egress canary passed: %d allowed connection(s) made, %d forbidden destination(s) blocked%s."
                    % (len([r for r in allowed if r.get("rc") == 0]), len(forbidden),
                       ", %d foreign server name(s) refused by the TLS gate" % refused if gate_refused else ""),
    )


class FilterModule(object):
    def filters(self):
        return {
            "egress_canary_targets": egress_canary_targets,
            "egress_canary_checks": egress_canary_checks,
            "egress_canary_gate_checks": egress_canary_gate_checks,
            "egress_canary_argv": egress_canary_argv,
            "egress_canary_verdict": egress_canary_verdict,
        }
