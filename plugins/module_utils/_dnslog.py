# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read the names the filtering resolver refused from its query log.

Private to agentguard.hardening. The kernel's denied-egress lines are read by _kernlog; where the
resolver's lines come from (its journal, a file) is _log_sources' part.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import re

from ansible_collections.agentguard.hardening.plugins.module_utils._logtime import epoch, iso_text, journal_fields, strip_timestamp

# The filtering resolver (dnsmasq, log-queries=extra) logs every query and its fate, one line each,
# numbered per query ("serial") and prefixed with the client's address and port:
#   5 127.0.0.1/40914 query[A] exfil.attacker.test from 127.0.0.1
#   5 127.0.0.1/40914 config exfil.attacker.test is NXDOMAIN      <- answered here: refused
#   1 127.0.0.1/57530 forwarded api.test to 198.18.0.53            <- allowed (then reply / ipset add)
# Plain log-queries lines are the same without "5 127.0.0.1/40914 ". dnsmasq 2.85 writes unknown
# types as query[type=65] where 2.90 writes query[HTTPS]. A TCP query is answered by a forked child:
# another pid, the same serial, so a query is keyed by (pid, serial).
DNSMASQ_TAG_RE = re.compile(r"^(?:(\S+) )?dnsmasq(?:\[(\d+)\])?: (.*)$")
EXTRA_RE = re.compile(r"^(\d+) (\S+)/(\d+) (.*)$")
QUERY_RE = re.compile(r"^query\[([A-Za-z0-9=-]+)\] (\S+) from ([0-9A-Fa-f.:]+(?:%\S+)?)$")
CONFIG_RE = re.compile(r"^config (\S+) is (\S+)$")
TYPE_NUMBERS = {"type=1": "A", "type=28": "AAAA", "type=16": "TXT", "type=65": "HTTPS", "type=64": "SVCB",
                "type=15": "MX", "type=12": "PTR", "type=5": "CNAME", "type=33": "SRV", "type=255": "ANY"}
PENDING_QUERIES = 4096


def _client(text):
    """Canonical text of a client address as dnsmasq writes it (IPv6 may carry a %scope)."""
    return str(ipaddress.ip_address(text.split("%", 1)[0]))


def split_dns_line(line, now=None):
    """(time, identifier, pid, message) of a journal JSON line or a syslog / log-facility line.
    identifier is None for a line of no program ("{not json", a bare message); raises ValueError
    for a journal line that is not valid JSON."""
    line = line.rstrip("\n")
    if line.startswith("{"):
        entry = json.loads(line)  # ValueError: a damaged journal line
        if not isinstance(entry, dict):
            raise ValueError("not a journal entry")
        when, message = journal_fields(entry)
        return when, entry.get("SYSLOG_IDENTIFIER"), entry.get("_PID") or entry.get("SYSLOG_PID"), str(message)
    when, rest = strip_timestamp(line, now)
    tag = DNSMASQ_TAG_RE.match(rest)
    if tag is None:
        return when, None, None, rest
    return when, "dnsmasq", tag.group(2), tag.group(3)


def parse_dns_message(message):
    """One dnsmasq message as (kind, serial, fields): kind "query" (fields: qtype, name, client),
    "refused" (name, client or None), or "other" (a line that is neither: forwarded, reply, startup).
    Raises ValueError for a query or config line that does not parse."""
    serial, client, rest = None, None, message.strip()
    extra = EXTRA_RE.match(rest)
    if extra:
        serial, client, rest = int(extra.group(1)), _client(extra.group(2)), extra.group(4)
    if rest.startswith("query["):
        match = QUERY_RE.match(rest)
        if not match:
            raise ValueError("unreadable query line")
        qtype = match.group(1)
        return "query", serial, {"qtype": TYPE_NUMBERS.get(qtype.lower(), qtype.upper()), "name": match.group(2),
                                 "client": _client(match.group(3))}
    if rest.startswith("config "):
        match = CONFIG_RE.match(rest)
        if not match:
            raise ValueError("unreadable config line")
        if match.group(2) == "NXDOMAIN":
            return "refused", serial, {"name": match.group(1), "client": client}
    return "other", serial, {}


def collect_refused(lines, since=None, now=None, identifier="dnsmasq"):
    """Refused names in dnsmasq's query log: (records, stats). A record is one query the resolver
    answered NXDOMAIN from its own config (address=/#/, address=/*.NAME/): name, qtype (from the
    matching query line; null when that line is missing), client, time. Lines of other programs
    are counted as foreign, unreadable ones as malformed, never fatal."""
    stats = {"lines": 0, "queries": 0, "refused": 0, "malformed": 0, "foreign": 0, "older": 0, "no_time": 0}
    pending = {}
    records = []
    for line in lines:
        stats["lines"] += 1
        try:
            when, ident, pid, message = split_dns_line(line, now)
            if ident != identifier:
                stats["foreign"] += 1
                continue
            kind, serial, fields = parse_dns_message(message)
        except (ValueError, TypeError, OverflowError, OSError):
            stats["malformed"] += 1
            continue
        if kind == "query":
            stats["queries"] += 1
            pending[(pid, serial)] = fields
            if len(pending) > PENDING_QUERIES:  # answered queries are never looked up again
                for key in list(pending)[:PENDING_QUERIES // 2]:
                    del pending[key]
            continue
        if kind != "refused":
            continue
        query = pending.pop((pid, serial), None)
        if query is not None and query["name"] != fields["name"]:
            query = None
        if when is None:
            stats["no_time"] += 1
        elif since is not None and when < since:
            stats["older"] += 1
            continue
        stats["refused"] += 1
        records.append({
            "name": fields["name"],
            "qtype": query["qtype"] if query else None,
            "client": query["client"] if query else fields["client"],
            "time": iso_text(when) if when else None,
        })
    return records, stats


def aggregate_refused(records):
    """Group refused queries by name, query type and client, with counts and first/last seen, busiest first."""
    groups = {}
    for record in records:
        key = (record["name"], record["qtype"], record["client"])
        group = groups.get(key)
        if group is None:
            group = groups[key] = {"name": record["name"], "qtype": record["qtype"], "client": record["client"],
                                   "count": 0, "first": None, "last": None}
        group["count"] += 1
        if record["time"]:
            group["first"] = min(filter(None, [group["first"], record["time"]]), key=epoch)
            group["last"] = max(filter(None, [group["last"], record["time"]]), key=epoch)
    return sorted(groups.values(), key=lambda g: (-g["count"], g["name"], g["qtype"] or "", g["client"] or ""))
