# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Parse denied-egress kernel log lines into records and aggregate them.

Private to agentguard.hardening. Reads the text of any of the places the kernel's LOG
lines end up: `dmesg` (raw or --time-format iso), syslog files such as
/var/log/kern.log (RFC 3339 or traditional timestamps), and `journalctl -o json`.
A line that carries the prefix but cannot be understood is counted, never fatal.

Two kinds of denial share the prefix. A local one (OUTPUT) has an empty IN= and, with
--log-uid, the sending socket's UID=/GID=. A forwarded one (FORWARD, traffic routed through this
host from a container or VM network) has the network's interface in IN= (docker0, a podman
bridge), the container's address in SRC=, no UID= (no local socket), and with br_netfilter the
bridge port in PHYSIN=.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import ipaddress
import json
import re

UTC = datetime.timezone.utc
ISO_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:[.,](\d+))?(Z|[+-]\d\d:?\d\d)?\s+(.*)$")
TRADITIONAL_RE = re.compile(r"^([A-Z][a-z]{2})\s+(\d{1,2}) (\d\d:\d\d:\d\d)\s+(.*)$")
MONOTONIC_RE = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")
SYSLOG_HOST_RE = re.compile(r"^(\S+) kernel: (.*)$")
MONTHS = dict((m, i) for i, m in enumerate(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1))
RELATIVE_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
NUMERIC = ("SPT", "DPT", "UID", "GID", "TYPE", "CODE", "LEN")


def _tz(text):
    if not text or text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return datetime.timezone(sign * datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:4])))


def _iso(seconds_text, fraction, tz):
    stamp = datetime.datetime.strptime(seconds_text, "%Y-%m-%dT%H:%M:%S")
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    return stamp.replace(microsecond=micro, tzinfo=_tz(tz))


def _strip_timestamp(line, now=None):
    """(timestamp or None, rest) of a syslog-style line: RFC 3339 / ISO or traditional "Nov 25 05:20:27"
    (read as UTC; the year is the current one, or the last one for a date in the future)."""
    when = None
    try:
        match = ISO_RE.match(line)
        if match:
            when = _iso(match.group(1), match.group(2), match.group(3))
            line = match.group(4)
        else:
            match = TRADITIONAL_RE.match(line)
            if match and match.group(1) in MONTHS:
                now = now or datetime.datetime.now(UTC)
                when = datetime.datetime.strptime("%d %d %s %s" % (now.year, MONTHS[match.group(1)], match.group(2),
                                                                   match.group(3)), "%Y %m %d %H:%M:%S").replace(tzinfo=UTC)
                if when > now + datetime.timedelta(days=1):  # a December line read in January
                    when = when.replace(year=now.year - 1)
                line = match.group(4)
    except ValueError:  # a timestamp-shaped prefix that is not a date: keep the line, without time
        when = None
    return when, line


def split_line(line, boot_time=None, now=None):
    """Return (timestamp or None, message) for one log line in any supported layout."""
    line = line.rstrip("\n")
    if line.startswith("{"):
        try:
            entry = json.loads(line)
        except ValueError:
            return None, line
        message = entry.get("MESSAGE", "")
        if isinstance(message, list):  # journald stores non-UTF-8 messages as byte arrays
            message = bytes(message).decode("utf-8", "replace")
        stamp = entry.get("__REALTIME_TIMESTAMP")
        when = datetime.datetime.fromtimestamp(int(stamp) / 1e6, UTC) if stamp else None
        return when, message
    when, line = _strip_timestamp(line, now)
    host = SYSLOG_HOST_RE.match(line)
    if host:
        line = host.group(2)
    mono = MONOTONIC_RE.match(line)
    if mono:
        if when is None and boot_time is not None:
            when = boot_time + datetime.timedelta(seconds=float(mono.group(1)))
        line = mono.group(2)
    return when, line


def parse_fields(text):
    """key=value fields and bare flags (DF, SYN, ...) of a netfilter LOG message."""
    fields = {}
    flags = []
    for token in text.split():
        if "=" in token:
            key, value = token.split("=", 1)
            if key not in fields:  # the second LEN= is the transport length; keep the IP one
                fields[key] = value
        else:
            flags.append(token)
    return fields, flags


def parse_record(message, prefix):
    """A record dict for a message starting with prefix; None if the line is not ours;
    raises ValueError when it is ours but unusable."""
    index = message.find(prefix)
    if index < 0:
        return None
    fields, flags = parse_fields(message[index + len(prefix):])
    for key in ("SRC", "DST", "PROTO"):
        if not fields.get(key):
            raise ValueError("no %s= field" % key)
    src = ipaddress.ip_address(fields["SRC"])
    dst = ipaddress.ip_address(fields["DST"])
    network = fields.get("IN", "")
    record = {
        "family": "ipv%d" % src.version,
        "src": str(src),
        "dst": str(dst),
        "protocol": fields["PROTO"].lower(),
        "out": fields.get("OUT", ""),
        "direction": "forward" if network else "output",
        # Who sent it when it was not a local process: the container's address and its network.
        "source": str(src) if network else None,
        "network": network or None,
        "physin": fields.get("PHYSIN") or None,
    }
    for key in NUMERIC:
        if key in fields:
            if not fields[key].isdigit():
                raise ValueError("%s=%s is not a number" % (key, fields[key]))
            record[key.lower()] = int(fields[key])
    record.setdefault("dpt", None)
    if network:  # a routed packet has no local socket: whatever UID= says is not a sender of this host
        record.pop("gid", None)
        record["uid"] = None
    record.setdefault("uid", None)
    record["flags"] = [f for f in flags if f.isupper() and f.isalpha()]
    record["destination_text"] = destination_text(record["dst"], record["dpt"])
    return record


def destination_text(address, port):
    """How a destination is written: 198.18.0.66:443, [fd00::66]:443, or the bare address without a port."""
    if port is None:
        return address
    return ("[%s]:%d" if ":" in address else "%s:%d") % (address, port)


def sender_text(group):
    """Who sent an aggregated denial: "agent (1000)", "(no owner)", or "container 198.18.210.2 on docker0"."""
    if group.get("direction") == "forward":
        return "container %s on %s" % (group.get("source"), group.get("network"))
    uid = group.get("uid")
    return ("%s (%s)" % (group.get("user") or "", "no owner" if uid is None else uid)).strip()


def parse_since(text, now=None):
    """An aware datetime from "2026-11-25T10:00:00Z", "2026-11-25", or a relative "24h", "7d", "30m"."""
    if text is None or text == "":
        return None
    now = now or datetime.datetime.now(UTC)
    match = RELATIVE_RE.match(str(text))
    if match:
        return now - datetime.timedelta(seconds=int(match.group(1)) * UNIT_SECONDS[match.group(2)])
    text = str(text).strip()
    if re.match(r"^\d{4}-\d\d-\d\d$", text):
        text += "T00:00:00Z"
    match = re.match(r"^(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:[.,](\d+))?(Z|[+-]\d\d:?\d\d)?$", text)
    try:
        if not match:
            raise ValueError()
        return _iso(match.group(1) + "T" + match.group(2), match.group(3), match.group(4))
    except ValueError:
        raise ValueError("since: %r is not a time; use ISO 8601 (2026-11-25T10:00:00Z) or a duration like 24h, 7d, 30m" % text)


def _is_local(record, local_addresses, local_interfaces):
    """Whether this host logged the record: a local denial by its source address, a forwarded one
    (whose source is a container's) by the interface it came in on. None means unknown: keep."""
    if record["direction"] == "forward":
        return local_interfaces is None or record["network"] in local_interfaces
    return local_addresses is None or record["src"] in local_addresses


def collect(lines, prefix, since=None, local_addresses=None, boot_time=None, now=None, local_interfaces=None):
    """Parse lines; return (records, stats). Records older than since, of other hosts (a local
    denial from an address not in local_addresses, a forwarded one in on an interface not in
    local_interfaces; either check is skipped when its set is None), malformed or foreign lines
    are counted in stats."""
    stats = {"lines": 0, "matched": 0, "malformed": 0, "other_hosts": 0, "older": 0, "no_time": 0}
    records = []
    seen = set()
    for line in lines:
        stats["lines"] += 1
        when, message = split_line(line, boot_time, now)
        try:
            record = parse_record(message, prefix)
        except ValueError:
            stats["malformed"] += 1
            continue
        if record is None:
            continue
        if not _is_local(record, local_addresses, local_interfaces):
            stats["other_hosts"] += 1
            continue
        if when is None:
            stats["no_time"] += 1
        elif since is not None and when < since:
            stats["older"] += 1
            continue
        record["time"] = when.astimezone(UTC).isoformat().replace("+00:00", "Z") if when else None
        # The same kernel line can reach two sources (journal and kern.log): count it once.
        key = (record["time"], message)
        if key in seen:
            continue
        seen.add(key)
        stats["matched"] += 1
        records.append(record)
    return records, stats


def aggregate(records):
    """Group with counts and first/last seen, busiest first: local denials by destination, port,
    protocol and uid; forwarded ones by source (the container's address), network, destination,
    port and protocol (their uid is null)."""
    groups = {}
    for record in records:
        direction = record.get("direction", "output")
        if direction == "forward":
            key = (direction, record["source"], record["network"], record["dst"], record["dpt"], record["protocol"])
        else:
            key = (direction, record["dst"], record["dpt"], record["protocol"], record["uid"])
        group = groups.get(key)
        if group is None:
            group = groups[key] = {
                "dst": record["dst"], "dpt": record["dpt"], "protocol": record["protocol"], "uid": record["uid"],
                "family": record["family"], "count": 0, "first": None, "last": None, "sources": [],
                "direction": direction, "source": record.get("source"), "network": record.get("network"),
                "destination_text": destination_text(record["dst"], record["dpt"]),
            }
        group["count"] += 1
        if record["src"] not in group["sources"]:
            group["sources"].append(record["src"])
        if record["time"]:
            group["first"] = min(filter(None, [group["first"], record["time"]]))
            group["last"] = max(filter(None, [group["last"], record["time"]]))
    return sorted(groups.values(), key=lambda g: (-g["count"], g["dst"], g["dpt"] or 0, g["protocol"], g["direction"],
                                                  -1 if g["uid"] is None else g["uid"], g["source"] or "",
                                                  g["network"] or ""))


def timeline(records, bucket_seconds):
    """Denials per time bucket: [{"start": iso, "count": n}], in time order."""
    counts = {}
    for record in records:
        if not record["time"]:
            continue
        stamp = datetime.datetime.strptime(record["time"][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        epoch = int((stamp - datetime.datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
        start = epoch - epoch % bucket_seconds
        counts[start] = counts.get(start, 0) + 1
    return [{"start": datetime.datetime.fromtimestamp(s, UTC).isoformat().replace("+00:00", "Z"), "count": counts[s]}
            for s in sorted(counts)]


# ------------------------------------------------------------------------------- refused DNS names
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
        message = entry.get("MESSAGE", "")
        if isinstance(message, list):  # journald stores non-UTF-8 messages as byte arrays
            message = bytes(message).decode("utf-8", "replace")
        stamp = entry.get("__REALTIME_TIMESTAMP")
        when = datetime.datetime.fromtimestamp(int(stamp) / 1e6, UTC) if stamp else None
        return when, entry.get("SYSLOG_IDENTIFIER"), entry.get("_PID") or entry.get("SYSLOG_PID"), str(message)
    when, rest = _strip_timestamp(line, now)
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
            "time": when.astimezone(UTC).isoformat().replace("+00:00", "Z") if when else None,
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
            group["first"] = min(filter(None, [group["first"], record["time"]]))
            group["last"] = max(filter(None, [group["last"], record["time"]]))
    return sorted(groups.values(), key=lambda g: (-g["count"], g["name"], g["qtype"] or "", g["client"] or ""))
