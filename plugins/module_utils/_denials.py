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

A log line is not an attempt: a blocked TCP connect sends its SYN again (after 1 s, 3 s, 7 s, ...),
each one logged. mark_attempts() counts flows (source and destination address and port, protocol)
instead, a line being a new attempt unless the same flow was logged less than FLOW_GAP_SECONDS
before. Both counts are lower bounds: the LOG rule is rate-limited (log_limits() reads the limit
from the live rules), and packets beyond it are dropped without a line.

The role's canary probes (root, or the first restricted user, to egress_canary_forbidden after
every apply) bind the source port CANARY_SOURCE_PORT, so their lines are told apart (mark_canary).
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
ICMP_ID_RE = re.compile(r"\bPROTO=ICMP(?:v6)?\b.*?\bID=(\d+)")
# TCP_RTO_MAX: the retransmissions of one connection attempt are never further apart than this.
FLOW_GAP_SECONDS = 120
# The source port the role's canary binds for its forbidden probes (roles/egress/vars/main.yml).
CANARY_SOURCE_PORT = 30999
LIMIT_RE = re.compile(r"-m limit(?: --limit (\S+))?(?: --limit-burst (\d+))?")


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


def strip_timestamp(line, now=None):
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
    when, line = strip_timestamp(line, now)
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
    icmp_id = ICMP_ID_RE.search(message[index:])  # the ICMP echo id (after PROTO=; an IPv4 ID= comes first)
    record["icmp_id"] = int(icmp_id.group(1)) if icmp_id and record["protocol"].startswith("icmp") else None
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
    """Who sent an aggregated denial: "agent (1000)", "(no owner)", "container 198.18.210.2 on docker0",
    or "role canary, root (0)"."""
    if group.get("direction") == "forward":
        return "container %s on %s" % (group.get("source"), group.get("network"))
    uid = group.get("uid")
    text = ("%s (%s)" % (group.get("user") or "", "no owner" if uid is None else uid)).strip()
    return "role canary, " + text if group.get("canary") else text


def epoch(iso):
    """Seconds since 1970 of a record time ("2026-11-25T05:20:26.879456Z"), None for None."""
    if not iso:
        return None
    stamp = datetime.datetime.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    seconds = (stamp - datetime.datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
    fraction = iso[19:].rstrip("Z")
    return seconds + (float(fraction) if fraction.startswith(".") and fraction[1:].isdigit() else 0.0)


def time_order(record):
    """Sort key: by time (not by its text: "10:00:01Z" is earlier than "10:00:01.5Z"), untimed last."""
    return (record["time"] is None, epoch(record["time"]) or 0.0)


def flow_key(record):
    """What one connection attempt keeps across its retransmissions."""
    port = record.get("spt") if record.get("spt") is not None else record.get("icmp_id")
    return (record.get("direction"), record["src"], port, record["dst"], record["dpt"], record["protocol"])


def mark_attempts(records, gap=FLOW_GAP_SECONDS):
    """Set record["attempt"]: True on the first line of a flow, False on a retransmission (the same
    flow_key logged at most gap seconds after its previous line). Records are read in time order
    (untimed ones last, in the order given); a packet without a port or ICMP id is its own attempt."""
    last = {}
    for record in sorted(records, key=time_order):
        key = flow_key(record)
        when = epoch(record["time"])
        if key[2] is None:
            record["attempt"] = True
            continue
        previous = last.get(key, False)
        if previous is False:
            record["attempt"] = True
        elif when is None or previous is None:
            record["attempt"] = False
        else:
            record["attempt"] = when - previous > gap
        last[key] = when
    return records


def mark_canary(records, source_port=CANARY_SOURCE_PORT):
    """Set record["canary"]: a local denial from the canary's source port (None or 0: none is)."""
    for record in records:
        record["canary"] = bool(source_port) and record.get("direction") == "output" and record.get("spt") == source_port
    return records


def log_limits(save_text, prefix, family):
    """The rate limit of each LOG rule with this prefix in iptables-save output:
    [{family, table, chain, limit ("10/min" or None: no limit), burst}]."""
    found, table = [], None
    quoted = '--log-prefix "%s"' % prefix
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A ") and "-j LOG" in line and (quoted in line or "--log-prefix %s " % prefix.strip() in line):
            match = LIMIT_RE.search(line)
            found.append({"family": family, "table": table, "chain": line.split()[1],
                          "limit": (match.group(1) or "3/hour") if match else None,
                          "burst": int(match.group(2) or 5) if match else None})
    return found


def limit_text(limits):
    """One line for the report: "10/min, burst 20", per family when they differ, or None when unknown."""
    texts = []
    for item in limits:
        text = "%s, burst %d" % (item["limit"], item["burst"]) if item["limit"] else "no limit"
        if text not in texts:
            texts.append(text)
    return "; ".join(texts) if texts else None


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
    protocol, uid and whether the role's canary sent it; forwarded ones by source (the container's address), network, destination,
    port and protocol (their uid is null)."""
    groups = {}
    for record in records:
        direction = record.get("direction", "output")
        if direction == "forward":
            key = (direction, record["source"], record["network"], record["dst"], record["dpt"], record["protocol"])
        else:
            key = (direction, record["dst"], record["dpt"], record["protocol"], record["uid"], record.get("canary", False))
        group = groups.get(key)
        if group is None:
            group = groups[key] = {
                "dst": record["dst"], "dpt": record["dpt"], "protocol": record["protocol"], "uid": record["uid"],
                "family": record["family"], "count": 0, "first": None, "last": None, "sources": [],
                "direction": direction, "source": record.get("source"), "network": record.get("network"),
                "destination_text": destination_text(record["dst"], record["dpt"]),
                "attempts": 0, "canary": bool(record.get("canary")),
            }
        group["count"] += 1
        group["attempts"] += 1 if record.get("attempt", True) else 0
        if record["src"] not in group["sources"]:
            group["sources"].append(record["src"])
        if record["time"]:
            group["first"] = min(filter(None, [group["first"], record["time"]]), key=epoch)
            group["last"] = max(filter(None, [group["last"], record["time"]]), key=epoch)
    return sorted(groups.values(), key=lambda g: (g["canary"], -g["attempts"], -g["count"], g["dst"], g["dpt"] or 0, g["protocol"], g["direction"],
                                                  -1 if g["uid"] is None else g["uid"], g["source"] or "",
                                                  g["network"] or ""))


def timeline(records, bucket_seconds):
    """The buckets that hold denials, in time order: [{"start": iso, "count": log lines, "attempts":
    attempts (mark_attempts) not of the canary, "canary": the canary's attempts}]. Empty buckets are
    left out: a chart places each bucket by its start (_timeline.chart)."""
    counts = {}
    for record in records:
        if not record["time"]:
            continue
        second = int(epoch(record["time"]))
        bucket = counts.setdefault(second - second % bucket_seconds, {"count": 0, "attempts": 0, "canary": 0})
        bucket["count"] += 1
        if record.get("attempt", True):
            bucket["canary" if record.get("canary") else "attempts"] += 1
    return [dict(counts[s], start=datetime.datetime.fromtimestamp(s, UTC).isoformat().replace("+00:00", "Z"))
            for s in sorted(counts)]
