# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Count and group denied-egress records: attempts, the canary, groups, a timeline, the module's result.

Private to agentguard.hardening. The records come from _kernlog (the kernel's LOG lines).

A log line is not an attempt: a blocked TCP connect sends its SYN again (after 1 s, 3 s, 7 s, ...),
each one logged. mark_attempts() counts flows (source and destination address and port, protocol)
instead, a line being a new attempt unless the same flow was logged less than FLOW_GAP_SECONDS
before. Both counts are lower bounds: the LOG rule is rate-limited (_kernlog.log_limits() reads the
limit from the live rules), and packets beyond it are dropped without a line.

The role's canary probes (root, or the first restricted user, to egress_canary_forbidden after
every apply) bind the source port CANARY_SOURCE_PORT, so their lines are told apart (mark_canary).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime

# The kernel-log and time names were defined here before _kernlog and _logtime split off; the
# report tests still import them from here.
from ansible_collections.agentguard.hardening.plugins.module_utils._kernlog import (
    collect,
    destination_text,
    limit_text,
    log_limits,
    parse_record,
    split_line,
)
from ansible_collections.agentguard.hardening.plugins.module_utils._logtime import UTC, epoch, iso_text, parse_since

__all__ = [
    "CANARY_SOURCE_PORT", "FLOW_GAP_SECONDS", "aggregate", "flow_key", "mark_attempts", "mark_canary", "sender_text",
    "summarize", "time_order", "timeline",
    # re-exported
    "UTC", "collect", "destination_text", "epoch", "limit_text", "log_limits", "parse_record", "parse_since", "split_line",
]

# TCP_RTO_MAX: the retransmissions of one connection attempt are never further apart than this.
FLOW_GAP_SECONDS = 120
# The source port the role's canary binds for its forbidden probes (roles/egress/vars/main.yml).
CANARY_SOURCE_PORT = 30999


def sender_text(group):
    """Who sent an aggregated denial: "agent (1000)", "(no owner)", "container 198.18.210.2 on docker0",
    or "role canary, root (0)"."""
    if group.get("direction") == "forward":
        return "container %s on %s" % (group.get("source"), group.get("network"))
    uid = group.get("uid")
    text = ("%s (%s)" % (group.get("user") or "", "no owner" if uid is None else uid)).strip()
    return "role canary, " + text if group.get("canary") else text


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
    return [dict(counts[s], start=iso_text(datetime.datetime.fromtimestamp(s, UTC)))
            for s in sorted(counts)]


def summarize(records, bucket_seconds, max_records, canary_source_port, user_name):
    """egress_denials' result for these records (sorted and marked in place): the groups (each with
    user, user_name(uid), and sender_text), the newest max_records records, the timeline and the counts."""
    records.sort(key=time_order)
    mark_attempts(mark_canary(records, canary_source_port))
    groups = aggregate(records)
    for group in groups:
        group["user"] = user_name(group["uid"])
        group["sender_text"] = sender_text(group)
    return {
        "denials": groups,
        "records": records[-max_records:] if max_records else [],
        "timeline": timeline(records, bucket_seconds),
        "total": len(records),
        "attempts": sum(1 for record in records if record["attempt"] and not record["canary"]),
        "forwarded_total": sum(1 for record in records if record["direction"] == "forward"),
        "forwarded_attempts": sum(1 for record in records if record["direction"] == "forward" and record["attempt"]),
        "canary_total": sum(1 for record in records if record["canary"]),
        "canary_attempts": sum(1 for record in records if record["canary"] and record["attempt"]),
    }
