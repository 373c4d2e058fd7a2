# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Exact denial counts and the live metrics (Prometheus text format for node_exporter's textfile collector).

Private to agentguard.hardening. Standard library only, Python 3.9: it runs on the host inside the guard
(agentguard-guard.service, _guard.py) as well as in egress_denials.

Exact counts. Every packet our deny chains judge ends in exactly one rule after the rate-limited LOG rule:
the REJECT / DROP of enforce mode, the RETURN of audit mode (a packet that *would* be denied). The sum of
those rules' kernel counters (`iptables-save -c`, `ip6tables-save -c`) is the exact number of denied packets
of a family and path: "output" (AGENTGUARD-DENY, filter table: sent by this host) and "forward"
(AGENTGUARD-FWD-DENY, mangle table: routed from a container or VM network). A packet is not a connection: a
dropped TCP connect sends its SYN again (after 1 s, 3 s, ...) and each SYN is counted; a REJECTed one sends
one. The kernel resets these counters whenever the chain is loaded again (an apply that changed the
table's rules, a restore by the guard); Prometheus' rate() and increase() handle the reset.

Metrics. collect_sample(host, status, state) reads the host through an injected HostIO (_hostio) and
the guard's status dict; render(sample) is pure; write_atomic(path, text) writes a temporary file in the
same directory, fsyncs it and renames it over path, so the collector never reads half a file.

The guard's status dict (the keys read here; _guard.py documents and writes them; every key may be missing):
  started (epoch seconds), tamper_events_total, restore_failures_total (ints), tamper_events (list of {kind,
  family, table, count}: how many events had each difference), last_restore_timestamp (epoch),
  last_restore_seconds, last_open_seconds (floats), policy_hash (str), applied_timestamp (epoch), in_sync (bool).
The guard calls collect_sample, render and write_atomic (or write_guard_metrics) after each status update; on
the host it needs the files of METRICS_FILES next to it (all standard library only).
`state` is a dict the caller keeps between calls (the resolver journal's cursor, the gate log's offset and
the counts so far): the refusal counters count from the guard's start and restart with it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import json
import math
import os
import tempfile
import time

from ansible_collections.agentguard.hardening.plugins.module_utils._dnslog import collect_refused
from ansible_collections.agentguard.hardening.plugins.module_utils._state import ParseError, parse_ipset_save, parse_save
from ansible_collections.agentguard.hardening.plugins.module_utils._tlsgate import REFUSALS, parse_gate_log

# (table, deny chain, path label). The chain names are _render's CHAIN_DENY and CHAIN_FWD_DENY.
DENY_CHAINS = (("filter", "AGENTGUARD-DENY", "output"), ("mangle", "AGENTGUARD-FWD-DENY", "forward"))
ALLOW_CHAINS = (("filter", "AGENTGUARD-ALLOW"), ("mangle", "AGENTGUARD-FWD-ALLOW"))
FAMILIES = (("ipv4", "iptables-save"), ("ipv6", "ip6tables-save"))
PATHS = ("output", "forward")
# Bounded label values: whatever else the guard or a log says is counted as "other".
TAMPER_KINDS = ("output-policy", "output-jump", "chain", "hook-jump", "ipset", "other")
TAMPER_TABLES = ("filter", "mangle", "nat", "ipset", "other")
TLS_REASONS = tuple(REFUSALS) + ("other",)
FILE_NAME = "agentguard.prom"
# What this module imports, for the guard's copy on the host (_desired.GUARD_FILES).
METRICS_FILES = ("_metrics.py", "_state.py", "_dnslog.py", "_logtime.py", "_tlsgate.py", "_policy.py")
DNS_UNIT = "agentguard-dns.service"
TLS_LOG = "/var/log/agentguard-tlsgate/access.log"


# ------------------------------------------------------------------------- exact counts
def _terminal(spec):
    words = spec.split()
    return words[words.index("-j") + 1] if "-j" in words and words.index("-j") + 1 < len(words) else None


def deny_counts(save_text):
    """{path: {"packets", "bytes", "mode"}} of the deny chains loaded in this `iptables-save -c` text
    (a path whose chain is not loaded is left out). mode: "audit" when the chain's verdict is RETURN
    (it counts what would be denied), "enforce" otherwise. ParseError on text that is not iptables-save's."""
    counters = []
    tables = parse_save(save_text, counters=counters)
    found = {}
    for table, chain, path in DENY_CHAINS:
        loaded = table in tables and any(name == chain for name, policy in tables[table].chains)
        if not loaded:
            continue
        entry = found[path] = {"packets": 0, "bytes": 0, "mode": "enforce"}
        for where, rule_chain, spec, packets, size in counters:
            if (where, rule_chain) != (table, chain) or _terminal(spec) == "LOG":
                continue
            entry["packets"] += packets
            entry["bytes"] += size
            if _terminal(spec) == "RETURN":
                entry["mode"] = "audit"
    return found


def _match_sets(spec):
    words = spec.split()
    return [words[i + 1] for i in range(len(words) - 1) if words[i] == "--match-set"]


def _destination(spec):
    words = spec.split()
    return words[words.index("-d") + 1] if "-d" in words and words.index("-d") + 1 < len(words) else None


def allowlisted(save_text, sets):
    """Distinct destinations (an address or a network each) our allow chains let NEW connections reach:
    the -d of each allow rule and the members of the ipsets they match. DHCP, neighbour discovery, the
    link-local and between-networks RETURNs are not destinations of the allowlist and are left out.
    sets: {name: IpSet} (_state.parse_ipset_save)."""
    tables = parse_save(save_text)
    found = set()
    for table, chain in ALLOW_CHAINS:
        for rule_chain, spec in tables[table].rules if table in tables else ():
            if rule_chain != chain or "--ctstate NEW" not in spec or '"agentguard: dhcp"' in spec:
                continue
            if _terminal(spec) not in ("ACCEPT", "RETURN"):
                continue
            if _destination(spec):
                found.add(_destination(spec))
            for name in _match_sets(spec):
                found.update(sets[name].members if name in sets else ())
    return len(found)


# ------------------------------------------------------------------------- reading the host
def _save(host, command):
    """`command -c` (every table, with counters); (text, None) or (None, why)."""
    binary = host.which(command)
    if binary is None:
        return None, "no %s on this host" % command
    rc, out, err = host.run([binary, "-c"])
    if rc != 0:
        return None, "%s -c exited %d: %s" % (command, rc, (err or out).strip()[:200])
    return out, None


def read_counters(host, saves=None):
    """{family: {"counts": deny_counts(...), "save": text}} for the families whose rules can be read, and
    {family: why} for those that cannot: (counters, errors). saves: {command: `command -c` text} already read."""
    counters, errors = {}, {}
    for family, command in FAMILIES:
        text, why = (saves[command], None) if saves and command in saves else _save(host, command)
        if text is None:
            errors[family] = why
            continue
        try:
            counters[family] = {"counts": deny_counts(text), "save": text}
        except ParseError as exc:
            errors[family] = "%s -c printed what is not iptables-save text: %s" % (command, exc)
    return counters, errors


def read_sets(host):
    """Our ipsets ({name: IpSet}); None when they cannot be read."""
    binary = host.which("ipset")
    if binary is None:
        return None
    rc, out, err = host.run([binary, "save"])
    if rc != 0:
        return None
    try:
        return parse_ipset_save(out)
    except ParseError:
        return None


def count_dns_refusals(host, state, started, unit=DNS_UNIT):
    """Queries the filtering resolver refused since the guard started (None: no resolver on this host,
    or its journal cannot be read). Reads the unit's journal after the cursor kept in state."""
    journalctl = host.which("journalctl")
    if journalctl is None:
        return None
    argv = [journalctl, "-u", unit, "-o", "json", "--output-fields=MESSAGE,SYSLOG_IDENTIFIER,_PID,SYSLOG_PID",
            "--no-pager", "-q"]
    if state.get("dns_cursor"):
        argv += ["--after-cursor", state["dns_cursor"]]
    elif started:
        argv += ["--since", "@%d" % int(started)]
    rc, out, err = host.run(argv)
    if rc != 0:
        return None
    lines = out.splitlines()
    for line in reversed(lines):
        try:
            cursor = json.loads(line).get("__CURSOR")
        except (ValueError, AttributeError):
            continue
        if cursor:
            state["dns_cursor"] = cursor
            break
    records, stats = collect_refused(lines)
    state["dns_refused"] = state.get("dns_refused", 0) + len(records)
    state["dns_seen"] = state.get("dns_seen", False) or stats["queries"] > 0 or bool(records)
    return state["dns_refused"] if state["dns_seen"] or state.get("dns_cursor") else None


def count_tls_refusals(host, state, started, path=TLS_LOG):
    """{reason: connections} the TLS gate refused since the guard started (None: no gate log). Reads the
    lines added since the offset kept in state; a file that shrank (rotated) is read from its start."""
    try:
        handle = host.open_text(path)
    except (IOError, OSError):
        return None
    counts = state.setdefault("tls_counts", dict((reason, 0) for reason in TLS_REASONS))
    with handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        offset = state.get("tls_offset", 0)
        first = "tls_offset" not in state
        if offset > size:
            offset = 0
        handle.seek(offset)
        text = handle.read()
        state["tls_offset"] = handle.tell()
    for record in parse_gate_log(text.splitlines()):
        if not record["refused"]:
            continue
        if first and started and record["time"] and _gate_epoch(record["time"]) < started:
            continue
        counts[record["reason"] if record["reason"] in counts else "other"] += 1
    return counts


def _gate_epoch(text):
    """nginx's $time_iso8601 in epoch seconds (0 when unreadable: counted)."""
    try:
        stamp = datetime.datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")
        zone = text[19:]
        offset = 0 if zone in ("", "Z") else (1 if zone[0] == "+" else -1) * (int(zone[1:3]) * 3600 + int(zone[-2:]) * 60)
        return (stamp - datetime.datetime(1970, 1, 1)).total_seconds() - offset
    except ValueError:
        return 0


def collect_sample(host, status, state=None, dns_unit=DNS_UNIT, tls_log=TLS_LOG, now=None):
    """One sample of everything render() writes, read from host (a _hostio.HostIO) and the guard's
    status dict. state: kept by the caller between samples (see the module docstring)."""
    state = {} if state is None else state
    status = status or {}
    started = status.get("started")
    counters, errors = read_counters(host)
    sets = read_sets(host)
    sample = {
        "time": now if now is not None else time.time(),
        "guard": dict((key, status.get(key)) for key in (
            "started", "tamper_events_total", "restore_failures_total", "tamper_events", "last_restore_timestamp",
            "last_restore_seconds", "last_open_seconds", "policy_hash", "applied_timestamp", "in_sync")),
        "denied": [], "allowlisted": {}, "sources": {},
        "dns_refused": count_dns_refusals(host, state, started, dns_unit),
        "tls_refused": count_tls_refusals(host, state, started, tls_log),
        "errors": sorted("%s: %s" % item for item in errors.items()),
    }
    for family, command in FAMILIES:
        sample["sources"][command] = family in counters
        if family not in counters:
            continue
        for path in PATHS:
            entry = counters[family]["counts"].get(path)
            if entry is not None:
                sample["denied"].append({"family": family, "path": path, "packets": entry["packets"],
                                         "bytes": entry["bytes"], "mode": entry["mode"]})
        if sets is not None:
            sample["allowlisted"][family] = allowlisted(counters[family]["save"], sets)
    sample["sources"]["ipset"] = sets is not None
    return sample


# ------------------------------------------------------------------------- the exposition text
METRICS = (
    ("agentguard_egress_denied_packets_total", "counter",
     "Packets the egress deny rules denied (audit mode: would have denied), from the kernel's exact rule "
     "counters, by family and path (output: sent by this host, forward: from a container or VM network); "
     "reset when the rules are reloaded."),
    ("agentguard_egress_denied_bytes_total", "counter",
     "Bytes of the packets counted in agentguard_egress_denied_packets_total; reset when the rules are reloaded."),
    ("agentguard_egress_audit_mode", "gauge",
     "1 when the deny rules of this family and path only log and count (audit mode), 0 when they deny."),
    ("agentguard_egress_allowlisted_addresses", "gauge",
     "Distinct destination addresses or networks the live allow rules and their ipsets let connections reach."),
    ("agentguard_egress_policy_info", "gauge", "The policy the last successful apply installed (its hash), value 1."),
    ("agentguard_egress_policy_applied_timestamp_seconds", "gauge",
     "When the last successful apply installed the policy, in seconds since the epoch."),
    ("agentguard_egress_policy_in_sync", "gauge",
     "1 when the live rules and sets are the policy the last apply installed, 0 when they differ."),
    ("agentguard_guard_up", "gauge", "1 while the guard writes this file (see node_textfile_mtime_seconds for its age)."),
    ("agentguard_guard_start_time_seconds", "gauge", "When the guard started, in seconds since the epoch."),
    ("agentguard_guard_tamper_events_total", "counter",
     "Times the guard found our rules or sets changed by someone else and restored them."),
    ("agentguard_guard_tamper_differences_total", "counter",
     "Differences the guard restored, by kind (output-policy, output-jump, chain, hook-jump, ipset), family and "
     "table (one event can have several)."),
    ("agentguard_guard_restore_failures_total", "counter",
     "Times the guard found our rules or sets changed and could not restore them (the journal says why)."),
    ("agentguard_guard_last_restore_timestamp_seconds", "gauge",
     "When the guard last restored the policy, in seconds since the epoch."),
    ("agentguard_guard_last_restore_duration_seconds", "gauge",
     "How long the guard's last restoration took, from the change seen to the rules back, in seconds."),
    ("agentguard_guard_last_open_duration_seconds", "gauge",
     "How long the policy was open at the last restoration, from the kernel's first change event to the rules "
     "back, in seconds (absent when the periodic check found the change: its time is unknown)."),
    ("agentguard_egress_dns_refused_queries_total", "counter",
     "Queries the filtering resolver refused (names not on the allowlist), since the guard started."),
    ("agentguard_egress_tls_refused_connections_total", "counter",
     "Connections the TLS gate refused, by reason, since the guard started."),
    ("agentguard_egress_metrics_source_up", "gauge",
     "1 when this sample could read the source (iptables-save, ip6tables-save, ipset), 0 when not."),
)


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    return repr(value) if value != int(value) or abs(value) >= 1e15 else "%d" % value


def _labels(labels):
    if not labels:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (key, _escape(value)) for key, value in labels)


def _series(sample):
    """{metric name: [(labels, value)]} of a sample; a metric without a value is left out."""
    guard = sample.get("guard") or {}
    series = dict((name, []) for name, kind, text in METRICS)
    for entry in sample.get("denied", []):
        labels = (("family", entry["family"]), ("path", entry["path"]))
        series["agentguard_egress_denied_packets_total"].append((labels, entry["packets"]))
        series["agentguard_egress_denied_bytes_total"].append((labels, entry["bytes"]))
        series["agentguard_egress_audit_mode"].append((labels, entry.get("mode") == "audit"))
    for family in sorted(sample.get("allowlisted", {})):
        series["agentguard_egress_allowlisted_addresses"].append(((("family", family),), sample["allowlisted"][family]))
    if guard.get("policy_hash"):
        series["agentguard_egress_policy_info"].append(((("policy_hash", guard["policy_hash"]),), 1))
    if guard.get("applied_timestamp") is not None:
        series["agentguard_egress_policy_applied_timestamp_seconds"].append(((), guard["applied_timestamp"]))
    if guard.get("in_sync") is not None:
        series["agentguard_egress_policy_in_sync"].append(((), bool(guard["in_sync"])))
    series["agentguard_guard_up"].append(((), 1))
    if guard.get("started") is not None:
        series["agentguard_guard_start_time_seconds"].append(((), guard["started"]))
        series["agentguard_guard_tamper_events_total"].append(((), guard.get("tamper_events_total") or 0))
        differences = {}
        for event in guard.get("tamper_events") or []:
            kind = event.get("kind") if event.get("kind") in TAMPER_KINDS else "other"
            family = event.get("family") if event.get("family") in ("ipv4", "ipv6") else "other"
            table = event.get("table") if event.get("table") in TAMPER_TABLES else "other"
            key = (("kind", kind), ("family", family), ("table", table))
            differences[key] = differences.get(key, 0) + int(event.get("count") or 0)
        series["agentguard_guard_tamper_differences_total"] = sorted(differences.items())
        series["agentguard_guard_restore_failures_total"].append(((), guard.get("restore_failures_total") or 0))
        for key, name in (("last_restore_timestamp", "agentguard_guard_last_restore_timestamp_seconds"),
                          ("last_restore_seconds", "agentguard_guard_last_restore_duration_seconds"),
                          ("last_open_seconds", "agentguard_guard_last_open_duration_seconds")):
            if guard.get(key) is not None:
                series[name].append(((), guard[key]))
    if sample.get("dns_refused") is not None:
        series["agentguard_egress_dns_refused_queries_total"].append(((), sample["dns_refused"]))
    for reason, count in sorted((sample.get("tls_refused") or {}).items()):
        series["agentguard_egress_tls_refused_connections_total"].append(((("reason", reason),), count))
    for source, ok in sorted((sample.get("sources") or {}).items()):
        series["agentguard_egress_metrics_source_up"].append(((("source", source),), bool(ok)))
    return series


def render(sample):
    """The Prometheus text exposition of a sample (collect_sample): HELP and TYPE for each metric that has a
    value, no timestamps (node_exporter's textfile collector refuses them)."""
    series = _series(sample)
    lines = []
    for name, kind, text in METRICS:
        if not series[name]:
            continue
        lines.append("# HELP %s %s" % (name, text.replace("\\", "\\\\").replace("\n", "\\n")))
        lines.append("# TYPE %s %s" % (name, kind))
        lines.extend("%s%s %s" % (name, _labels(labels), _number(value)) for labels, value in series[name])
    return "\n".join(lines) + "\n"


def write_atomic(path, text, mode=0o644):
    """Write text to path so that a reader sees the old file or the new one, never a part: a temporary file in
    the same directory (node_exporter ignores names not ending in .prom), fsync, rename, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.rename(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ------------------------------------------------------------------------- in the guard
_GUARD_STATE = {}


def write_guard_metrics(directory, status, host, state=None):
    """One sample of host (the part of _hostio.HostIO collect_sample uses: run, which, open_text), rendered
    and written atomically to directory/FILE_NAME; state kept per directory unless given. Returns the text."""
    state = _GUARD_STATE.setdefault(directory, {}) if state is None else state
    text = render(collect_sample(host, status, state))
    write_atomic(os.path.join(directory, FILE_NAME), text)
    return text
