# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Parse the deny rules' kernel LOG lines into records, and read their rate limit.

Private to agentguard.hardening. Reads the text of any of the places the kernel's LOG
lines end up: `dmesg` (raw or --time-format iso), syslog files such as
/var/log/kern.log (RFC 3339 or traditional timestamps), and `journalctl -o json`.
A line that carries the prefix but cannot be understood is counted, never fatal.
Counting attempts and grouping the records is _denials' part; reading the sources, _log_sources'.

Two kinds of denial share the prefix. A local one (OUTPUT) has an empty IN= and, with
--log-uid, the sending socket's UID=/GID=. A forwarded one (FORWARD, traffic routed through this
host from a container or VM network) has the network's interface in IN= (docker0, a podman
bridge), the container's address in SRC=, no UID= (no local socket), and with br_netfilter the
bridge port in PHYSIN=.

The LOG rule is rate-limited: log_limits() reads the limit from the live rules (iptables-save).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import ipaddress
import json
import re

from ansible_collections.agentguard.hardening.plugins.module_utils._logtime import iso_text, journal_fields, strip_timestamp

MONOTONIC_RE = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")
SYSLOG_HOST_RE = re.compile(r"^(\S+) kernel: (.*)$")
NUMERIC = ("SPT", "DPT", "UID", "GID", "TYPE", "CODE", "LEN")
ICMP_ID_RE = re.compile(r"\bPROTO=ICMP(?:v6)?\b.*?\bID=(\d+)")
COUNTERS_RE = re.compile(r"^\[\d+:\d+\] ")
LIMIT_RE = re.compile(r"-m limit(?: --limit (\S+))?(?: --limit-burst (\d+))?")


def split_line(line, boot_time=None, now=None):
    """Return (timestamp or None, message) for one log line in any supported layout."""
    line = line.rstrip("\n")
    if line.startswith("{"):
        try:
            entry = json.loads(line)
        except ValueError:
            return None, line
        return journal_fields(entry)
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


def _is_local(record, local_addresses, local_interfaces):
    """Whether this host logged the record: a local denial by its source address, a forwarded one
    (whose source is a container's) by the interface it came in on. None means unknown: keep."""
    if record["direction"] == "forward":
        return local_interfaces is None or record["network"] in local_interfaces
    return local_addresses is None or record["src"] in local_addresses


def empty_stats():
    """The stats of no line read."""
    return {"lines": 0, "matched": 0, "malformed": 0, "other_hosts": 0, "older": 0, "no_time": 0}


def collect(lines, prefix, since=None, local_addresses=None, boot_time=None, now=None, local_interfaces=None):
    """Parse lines; return (records, stats). Records older than since, of other hosts (a local
    denial from an address not in local_addresses, a forwarded one in on an interface not in
    local_interfaces; either check is skipped when its set is None), malformed or foreign lines
    are counted in stats."""
    stats = empty_stats()
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
        record["time"] = iso_text(when) if when else None
        # The same kernel line can reach two sources (journal and kern.log): count it once.
        key = (record["time"], message)
        if key in seen:
            continue
        seen.add(key)
        stats["matched"] += 1
        records.append(record)
    return records, stats


def log_limits(save_text, prefix, family):
    """The rate limit of each LOG rule with this prefix in iptables-save output:
    [{family, table, chain, limit ("10/min" or None: no limit), burst}]."""
    found, table = [], None
    quoted = '--log-prefix "%s"' % prefix
    for line in save_text.splitlines():
        line = COUNTERS_RE.sub("", line)  # iptables-save -c
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
