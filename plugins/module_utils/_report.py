# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The fleet report's aggregation, computed once for every output format of playbooks/egress_report.yml.

Input: host name -> the registered result of egress_denials (or a failed/unreachable result). The
templates only lay the numbers out; every sum, ranking and merge across hosts is made here.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def unread_hosts(hosts):
    """Hosts whose result is missing, failed or unreachable, sorted."""
    return sorted(name for name, result in hosts.items()
                  if not isinstance(result, dict) or result.get("failed") or result.get("unreachable"))


def _host_row(result):
    denials = result.get("denials") or []
    own = [d for d in denials if not d.get("canary")]
    lasts = [d.get("last") for d in denials if d.get("last")]
    return {
        "attempts": result.get("attempts", result.get("total", 0)) or 0,
        "lines": result.get("total", 0) or 0,
        "forwarded": result.get("forwarded_attempts", result.get("forwarded_total", 0)) or 0,
        "canary": result.get("canary_attempts", 0) or 0,
        "refused": result.get("refused_total", 0) or 0,
        "tls_refused": result.get("tls_refused_total", 0) or 0,
        # denials come sorted busiest first from egress_denials: the first of the agent's own is the busiest
        "top": own[0] if own else None,
        "destinations": len(set(d.get("destination_text") for d in own)),
        "last": max(lasts) if lasts else "",
        # The exact kernel counters (null: not read), since when, and the guard's tamper events in the window.
        "denied_packets": result.get("denied_packets"),
        "counters_since": result.get("counters_since") if result.get("denied_packets") is not None else None,
        "counters_text": result.get("counters_text") or "the deny rules' counters were not read",
        "tamper": result.get("tamper_total", 0) or 0,
        "covered": bool((result.get("coverage") or {}).get("covered")),
        "coverage_short": (result.get("coverage") or {}).get("short") or "unknown",
        "coverage_text": (result.get("coverage") or {}).get("text") or "unknown how far back the kernel log reaches",
    }


def summarise(hosts):
    """Fleet totals, the per-host rows and the refused DNS names merged across hosts."""
    unread = unread_hosts(hosts)
    rows, names, server_names, limits = {}, {}, {}, []
    totals = dict(attempts=0, lines=0, forwarded=0, canary=0, refused=0, tls_refused=0, tamper=0)
    denied, uncounted, uncovered = 0, [], []
    for host in sorted(hosts):
        if host in unread:
            continue
        result = hosts[host]
        row = rows[host] = _host_row(result)
        for key in totals:
            totals[key] += row[key]
        if row["denied_packets"] is None:
            uncounted.append(host)
        else:
            denied += row["denied_packets"]
        if not row["covered"]:
            uncovered.append(host)
        limit = result.get("log_limit_text")
        if limit and limit not in limits:
            limits.append(limit)
        for refused in result.get("refused_names") or []:
            entry = names.setdefault(refused["name"],
                                     {"name": refused["name"], "count": 0, "hosts": [], "qtypes": [], "last": ""})
            entry["count"] += refused.get("count", 0) or 0
            entry["last"] = max(entry["last"], refused.get("last") or "")
            if host not in entry["hosts"]:
                entry["hosts"].append(host)
            qtype = refused.get("qtype")
            if qtype and qtype not in entry["qtypes"]:
                entry["qtypes"].append(qtype)
        for refusal in result.get("tls_refusals") or []:
            key = (refusal.get("sni") or "", refusal.get("reason") or "")
            entry = server_names.setdefault(
                key, {"sni": key[0], "reason": key[1], "count": 0, "passed": 0, "hosts": [], "last": ""})
            entry["count"] += refusal.get("count", 0) or 0
            entry["passed"] += refusal.get("passed", 0) or 0
            entry["last"] = max(entry["last"], refusal.get("last") or "")
            if host not in entry["hosts"]:
                entry["hosts"].append(host)
    return dict(totals, unread=unread, hosts=rows, limits=limits, denied_packets=denied, uncounted=uncounted,
                uncovered=uncovered,
                names=sorted(names.values(), key=lambda e: (-e["count"], e["name"])),
                server_names=sorted(server_names.values(), key=lambda e: (-e["count"], e["sni"], e["reason"])))
