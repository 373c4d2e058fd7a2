# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What egress_denials reads and from where: the kernel log's source (journal, a file, dmesg), the
filtering resolver's log, the live rate limits, this host's addresses; and the module's result.

Private to agentguard.hardening. Every question to the host goes through a HostIO (_hostio), so that unit tests
drive each choice (which source `source: auto` takes, dmesg's fallback, an unreadable file) without
root and without a journal. Parsing is _kernlog's and _dnslog's part, counting and grouping _denials'.

Each log the module reads is one section in SECTIONS: a function (host, params, since, now) that
returns the result keys it fills, or raises Failure when a source its options ask for cannot be read.
Another log (another place that denies and logs) is one more section there, plus its options.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import errno
import ipaddress
import json

from ansible_collections.agentguard.hardening.plugins.module_utils._denials import sender_text, summarize
from ansible_collections.agentguard.hardening.plugins.module_utils._dnslog import aggregate_refused, collect_refused
from ansible_collections.agentguard.hardening.plugins.module_utils._kernlog import (
    destination_text,
    collect,
    empty_stats,
    limit_text,
    log_limits,
    split_line,
)
from ansible_collections.agentguard.hardening.plugins.module_utils._logtime import UTC, iso_text, journal_since, parse_since
from ansible_collections.agentguard.hardening.plugins.module_utils._metrics import PATHS, read_counters
from ansible_collections.agentguard.hardening.plugins.module_utils._tlsgate import join_tls_log, parse_gate_log

# source: auto tries these in order and keeps the first that holds a line with the prefix.
AUTO_ORDER = ("journal", "file", "dmesg")
# The guard's journal entries (agentguard-guard.service, _guard.tamper_fields).
GUARD_IDENTIFIER = "agentguard-guard"


class Failure(Exception):
    """What the module fails with: an option with a bad value, or a source it was asked to read that
    cannot be read. Nothing is changed either way (the module only reads)."""


class Unreadable(Exception):
    """One source that cannot be read; str() names it and says why."""

    def __init__(self, where, why):
        Exception.__init__(self, "%s (%s)" % (where, why))
        self.where = where


def _failed(name, rc, out, err):
    text = (err or out or "").strip().splitlines()
    return "%s exited %d%s" % (name, rc, ": " + text[0] if text else "")


def _binary(host, name, where):
    path = host.which(name)
    if path is None:
        raise Unreadable(where, "no %s on this host" % name)
    return path


def local_links(host):
    """(addresses, interface names) of this host, from `ip -j addr show`; Unreadable when unknown."""
    ip = _binary(host, "ip", "this host's addresses")
    rc, out, err = host.run([ip, "-j", "addr", "show"])
    if rc != 0:
        raise Unreadable("this host's addresses", _failed("ip", rc, out, err))
    try:
        links = json.loads(out or "[]")
    except ValueError as exc:
        raise Unreadable("this host's addresses", "ip -j printed no JSON: %s" % exc)
    found, names = set(), set()
    for link in links:
        if link.get("ifname"):
            names.add(link["ifname"])
        for info in link.get("addr_info", []):
            try:
                found.add(str(ipaddress.ip_address(info["local"])))
            except (KeyError, ValueError):
                continue
    return found, names


def boot_time(host):
    """When this host booted (/proc/stat), which dates dmesg's raw "[seconds since boot]"; None when unknown."""
    try:
        with host.open_text("/proc/stat") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return datetime.datetime.fromtimestamp(int(line.split()[1]), UTC)
    except (IOError, OSError, ValueError):
        return None
    return None


def file_lines(host, path):
    """The lines of a text file; Unreadable naming the path and why."""
    try:
        with host.open_text(path) as handle:
            return handle.read().splitlines()
    except (IOError, OSError) as exc:
        raise Unreadable(path, getattr(exc, "strerror", None) or str(exc))


# ------------------------------------------------------------------------- the kernel log's sources
# Each takes (host, params, since) and returns (label, lines), or raises Unreadable.
def read_journal(host, params, since):
    """The kernel's lines in the journal (journalctl -k), from since on."""
    journalctl = _binary(host, "journalctl", "journal")
    argv = [journalctl, "-k", "-o", "json", "--no-pager", "-q"]
    if since is not None:
        argv += ["--since", journal_since(since)]
    rc, out, err = host.run(argv)
    if rc != 0:
        raise Unreadable("journal", _failed("journalctl", rc, out, err))
    return "journal", out.splitlines()


def read_file(host, params, since):
    """The syslog file params["path"] (/var/log/kern.log)."""
    return params["path"], file_lines(host, params["path"])


def read_dmesg(host, params, since):
    """The kernel ring buffer with ISO times, or with seconds since boot where dmesg has no --time-format."""
    dmesg = _binary(host, "dmesg", "dmesg")
    rc, out, err = host.run([dmesg, "--time-format", "iso"])
    if rc != 0:
        rc, out, err = host.run([dmesg])
    if rc != 0:
        raise Unreadable("dmesg", _failed("dmesg", rc, out, err))
    return "dmesg", out.splitlines()


KERNEL_SOURCES = {"journal": read_journal, "file": read_file, "dmesg": read_dmesg}


def read_kernel_records(host, params, since, now):
    """(label, records, stats) of the source params["source"] names. With auto, the first source of
    AUTO_ORDER that holds a line with the prefix (kept or not); ("none", [], zeros) when none does."""
    local, interfaces = None, None
    if params["local_only"]:
        try:
            local, interfaces = local_links(host)
        except Unreadable as exc:
            host.warn("cannot list %s; records of every host are returned" % exc)
    boot = boot_time(host)
    auto = params["source"] == "auto"
    unreadable = []
    for name in AUTO_ORDER if auto else (params["source"],):
        try:
            label, lines = KERNEL_SOURCES[name](host, params, since)
        except Unreadable as exc:
            unreadable.append(str(exc))
            continue
        # The first readable source, or the one chosen: where the gate's [EGRESS-TLS] lines are looked up.
        if "kernel_lines" not in host.cache or not auto:
            host.cache["kernel_lines"] = lines
        records, stats = collect(lines, params["prefix"], since=since, local_addresses=local, boot_time=boot, now=now,
                                 local_interfaces=interfaces)
        if not auto or stats["matched"] or stats["older"] or stats["other_hosts"]:
            host.cache["kernel_lines"] = lines
            host.cache["coverage"] = kernel_coverage(host, name, label, lines, since, now, boot)
            return label, records, stats
    if not auto:
        raise Failure("cannot read %s" % unreadable[0])
    if len(unreadable) == len(AUTO_ORDER):
        host.warn("no kernel log could be read, so no denial is reported: %s" % ", ".join(unreadable))
    host.cache["coverage"] = coverage("none", None, since, now, False)
    return "none", [], empty_stats()


# ------------------------------------------------------------------------- how far back a source reaches
def span_text(seconds):
    """A duration as a reader says it: "45 s", "12 min", "5 h", "2.5 h", "3 days"."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % round(seconds / 60.0)
    if seconds < 172800:
        hours = seconds / 3600.0
        return "%d h" % round(hours) if abs(hours - round(hours)) < 0.05 else "%.1f h" % hours
    days = seconds / 86400.0
    return "%d days" % round(days) if abs(days - round(days)) < 0.05 else "%.1f days" % days


def oldest_time(lines, boot, now):
    """The time of the first timed line (the sources are in time order), None when none has a time."""
    for line in lines:
        when, message = split_line(line, boot, now)
        if when is not None:
            return when
    return None


def coverage(label, oldest, since, now, reaches_back, note=""):
    """{source, oldest, start, covered, text}: whether the source holds lines from before the window's start
    (reaches_back), else how much of the window it covers, said per host in the report."""
    result = {"source": label, "oldest": iso_text(oldest) if oldest else None,
              "start": iso_text(since) if since else None, "covered": False, "text": "", "short": "none"}
    if label == "none":
        result["text"] = "no kernel log could be read: the window is not covered"
    elif since is None:
        result["covered"] = True
        result["short"] = "from %s" % result["oldest"][:16].replace("T", " ") if oldest else "empty"
        result["text"] = ("%s: all it holds, from %s%s" % (label, result["oldest"], note) if oldest else
                          "%s holds no line" % label)
    elif reaches_back:
        result["covered"] = True
        result["short"] = "whole window"
        result["text"] = "%s covers the whole window (it holds older lines)" % label
    elif oldest is None:
        result["text"] = "%s holds no line of the %s asked: the window is not covered%s" % (
            label, span_text((now - since).total_seconds()), note)
    else:
        result["short"] = "last %s of %s" % (span_text((now - oldest).total_seconds()),
                                             span_text((now - since).total_seconds()))
        result["text"] = "%s covers only the last %s of the %s asked (its oldest line: %s)%s" % (
            label, span_text((now - oldest).total_seconds()), span_text((now - since).total_seconds()),
            result["oldest"], note)
    return result


def kernel_coverage(host, name, label, lines, since, now, boot):
    """How far back the kernel log source `name` reaches, against the window from since. The journal is read
    from since on (and journalctl -k reads the current boot only): one more query asks for a line before it."""
    oldest = oldest_time(lines, boot, now)
    if name != "journal":
        return coverage(label, oldest, since, now, since is not None and oldest is not None and oldest <= since)
    note = ""
    if boot is not None and since is not None and boot > since:
        note = "; journalctl -k reads this boot only, and the host booted at %s" % iso_text(boot)
    reaches_back = False
    if since is not None:
        rc, out, err = host.run([host.which("journalctl"), "-k", "-o", "json", "--no-pager", "-q", "-n", "1",
                                 "--until", journal_since(since)])
        reaches_back = rc == 0 and bool(out.strip())
    return coverage(label, oldest, since, now, reaches_back, note)


def read_limits(host, prefix):
    """The logging rules with this prefix in the live rules of both families, with their rate limit;
    a family whose rules cannot be read is left out (the limit is then unknown, not fatal)."""
    found = []
    saves = host.cache.setdefault("saves", {})
    for family, command in (("ipv4", "iptables-save"), ("ipv6", "ip6tables-save")):
        binary = host.which(command)
        if binary is None:
            continue
        rc, out, err = host.run([binary, "-c"])  # with counters: exact_counts reads the same text
        if rc == 0:
            saves[command] = out
            found += log_limits(out, prefix, family)
    return found


def kernel_denials(host, params, since, now):
    """The deny rules' log lines: the records, their groups, timeline and counts, and the rate limits."""
    label, records, stats = read_kernel_records(host, params, since, now)
    limits = read_limits(host, params["prefix"])
    result = summarize(records, params["bucket_seconds"], params["max_records"], params["canary_source_port"],
                       host.user_name)
    result.update(log_limits=limits, log_limit_text=limit_text(limits), source=label, stats=stats,
                  coverage=host.cache.get("coverage") or coverage(label, None, since, now, False))
    return result


# ------------------------------------------------------------------------- the exact counts and the guard
def read_guard_status(host, path):
    """The guard's status file (_guard.STATUS_FILE) as a dict; None when there is none or it cannot be read."""
    if not path:
        return None
    try:
        with host.open_text(path) as handle:
            status = json.loads(handle.read())
    except (IOError, OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def _iso_epoch(value):
    try:
        return iso_text(datetime.datetime.fromtimestamp(float(value), UTC)) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def exact_counts(host, params, since, now):
    """The deny rules' kernel counters (_metrics): the exact denied packets per family and path since the
    rules were last loaded, and when that was as far as this host can tell (boot, the last apply that changed
    the policy, the guard's last restore: the latest of them)."""
    counters, errors = read_counters(host, host.cache.get("saves"))
    status = read_guard_status(host, params["guard_status"]) or {}
    loads = [(boot_time(host), "boot")]
    for key, what in (("applied_timestamp", "the last apply that changed the policy"),
                      ("last_restore_timestamp", "the guard's last restore")):
        if status.get(key) is not None:
            try:
                loads.append((datetime.datetime.fromtimestamp(float(status[key]), UTC), what))
            except (TypeError, ValueError, OverflowError):
                continue
    loads = [item for item in loads if item[0] is not None]
    loaded, why = max(loads, key=lambda item: item[0]) if loads else (None, None)
    by_family, modes = {}, set()
    for family in sorted(counters):
        by_family[family] = {}
        for path in PATHS:
            entry = counters[family]["counts"].get(path)
            if entry is not None:
                by_family[family][path] = {"packets": entry["packets"], "bytes": entry["bytes"]}
                modes.add(entry["mode"])
    packets = [c["packets"] for paths in by_family.values() for c in paths.values()]
    forwarded = [paths["forward"]["packets"] for paths in by_family.values() if "forward" in paths]
    total = sum(packets) if packets else None
    if total is None:
        why_not = " (%s)" % "; ".join(sorted(errors.values())) if errors else ": no deny rules are loaded"
        text = "no deny rule counters could be read" + why_not
    else:
        text = "%d denied packet(s)%s, exact kernel counters, since the rules were loaded at %s (%s)" % (
            total, " (would be denied: audit mode)" if modes == {"audit"} else "",
            iso_text(loaded) if loaded else "an unknown time", why or "no boot time or guard status")
    return {"counters": by_family, "denied_packets": total, "denied_packets_forwarded": sum(forwarded) if forwarded else None,
            "counters_mode": sorted(modes)[0] if len(modes) == 1 else ("mixed" if modes else None),
            "counters_since": iso_text(loaded) if loaded else None, "counters_since_reason": why,
            "counters_errors": sorted("%s: %s" % item for item in errors.items()), "counters_text": text}


def parse_guard_entry(line):
    """A tamper event from one `journalctl -o json` line of the guard (None for other entries): time, what
    differed ("ipv4/filter/jump", ...), restore and open seconds, whether it was restored."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or entry.get("AGENTGUARD_EVENT") != "tamper":
        return None

    def seconds(key):
        try:
            return float(entry[key]) if entry.get(key) not in (None, "") else None
        except (TypeError, ValueError):
            return None

    stamp = entry.get("__REALTIME_TIMESTAMP")
    try:
        when = iso_text(datetime.datetime.fromtimestamp(int(stamp) / 1e6, UTC)) if stamp else None
    except (TypeError, ValueError):
        when = None
    differed = str(entry.get("AGENTGUARD_DIFFERED") or "").split()
    restored = entry.get("AGENTGUARD_RESTORED") != "no"
    restore, opened = seconds("AGENTGUARD_RESTORE_SECONDS"), seconds("AGENTGUARD_OPEN_SECONDS")
    if not restored:
        open_text = "not restored: %s" % (entry.get("AGENTGUARD_ERROR") or "see the journal")
    elif opened is not None:
        open_text = "%.2f s" % opened
    else:
        open_text = "unknown (found by the periodic check); restored %.2f s after it was found" % (restore or 0.0)
    return {"time": when, "differed": differed, "differed_text": ", ".join(differed) or "unknown",
            "families": str(entry.get("AGENTGUARD_FAMILIES") or "").split(),
            "tables": str(entry.get("AGENTGUARD_TABLES") or "").split(),
            "kinds": str(entry.get("AGENTGUARD_KINDS") or "").split(),
            "restore_seconds": restore, "open_seconds": opened, "restored": restored, "open_text": open_text,
            "message": entry.get("MESSAGE") if isinstance(entry.get("MESSAGE"), str) else None}


def guard_events(host, params, since, now):
    """The guard's tamper events in the window (its journal entries) and its status file's totals."""
    status = read_guard_status(host, params["guard_status"])
    events, source = [], "none"
    journalctl = host.which("journalctl")
    if journalctl is not None:
        argv = [journalctl, "SYSLOG_IDENTIFIER=" + GUARD_IDENTIFIER, "-o", "json", "--no-pager", "-q"]
        if since is not None:
            argv += ["--since", journal_since(since)]
        rc, out, err = host.run(argv)
        if rc == 0:
            source = "journal"
            events = [e for e in (parse_guard_entry(line) for line in out.splitlines()) if e is not None]
        else:
            host.warn("cannot read the guard's journal entries: %s" % _failed("journalctl", rc, out, err))
    guard = None
    if status is not None:
        guard = {"started": _iso_epoch(status.get("started")), "tamper_events_total": status.get("tamper_events_total"),
                 "restore_failures_total": status.get("restore_failures_total"),
                 "last_restore": _iso_epoch(status.get("last_restore_timestamp")),
                 "last_restore_seconds": status.get("last_restore_seconds"),
                 "last_open_seconds": status.get("last_open_seconds"),
                 "policy_hash": status.get("policy_hash"), "applied": _iso_epoch(status.get("applied_timestamp")),
                 "in_sync": status.get("in_sync"), "tamper_events": status.get("tamper_events") or []}
    return {"tamper_events": events[-params["max_records"]:] if params["max_records"] else [],
            "tamper_total": len(events), "tamper_source": source, "guard": guard}


# ------------------------------------------------------------------------- the resolver's log
def _unit_known(host, journalctl, unit):
    """Whether the resolver's unit exists (systemctl) or has journal entries (a host without systemctl)."""
    systemctl = host.which("systemctl")
    if systemctl is not None:
        rc, out, err = host.run([systemctl, "show", "--property=LoadState", "--value", unit])
        if rc == 0 and out.strip() not in ("", "not-found"):
            return True
    rc, out, err = host.run([journalctl, "-u", unit, "-n", "1", "-o", "cat", "--no-pager", "-q"])
    return rc == 0 and bool(out.strip())


def read_dns(host, params, since):
    """(label, lines) of the resolver's query log; ("none", []) when there is none to read (dns_source
    none, or auto on a host without the unit: pinned DNS mode). Unreadable when the asked source cannot be read."""
    source, unit = params["dns_source"], params["dns_unit"]
    if source == "none":
        return "none", []
    if source == "file":
        return params["dns_path"], file_lines(host, params["dns_path"])
    journalctl = host.which("journalctl")
    if journalctl is None:
        if source == "auto":
            return "none", []
        raise Unreadable("journal", "no journalctl on this host")
    if source == "auto" and not _unit_known(host, journalctl, unit):
        return "none", []
    # Only the fields the parser needs: a query log is large.
    argv = [journalctl, "-u", unit, "-o", "json", "--output-fields=MESSAGE,SYSLOG_IDENTIFIER,_PID,SYSLOG_PID",
            "--no-pager", "-q"]
    if since is not None:
        argv += ["--since", journal_since(since)]
    rc, out, err = host.run(argv)
    if rc != 0:
        if source == "auto":
            host.warn("cannot read the journal of %s: %s" % (unit, (err or out).strip()))
            return "none", []
        raise Unreadable("journal", _failed("journalctl", rc, out, err))
    return "journal", out.splitlines()


def refused_names(host, params, since, now):
    """The names the filtering resolver refused."""
    try:
        label, lines = read_dns(host, params, since)
    except Unreadable as exc:
        raise Failure("cannot read the resolver's log from %s" % exc)
    refused, stats = collect_refused(lines, since=since, now=now)
    names = aggregate_refused(refused)
    return {"refused_names": names[:params["dns_max_names"]], "refused_total": len(refused),
            "refused_distinct": len(names), "dns_source": label, "dns_stats": stats}


# ------------------------------------------------------------------------- the TLS gate's log
def _gate_time(text):
    """nginx's $time_iso8601 (local time with its offset) as the module's UTC text."""
    try:
        return iso_text(datetime.datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=_offset(text[19:])))
    except ValueError:
        return None


def _offset(text):
    if text in ("", "Z"):
        return UTC
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[-2:])
    return datetime.timezone(sign * datetime.timedelta(hours=hours, minutes=minutes))


def read_gate_log(host, path):
    """The gate's access log lines; None when the file does not exist (no gate on this host)."""
    try:
        with host.open_text(path) as handle:
            return handle.read().splitlines()
    except (IOError, OSError) as exc:
        if getattr(exc, "errno", None) == errno.ENOENT:
            return None
        raise Failure("cannot read the TLS gate's log %s (%s)" % (path, getattr(exc, "strerror", None) or exc))


def group_refusals(joined, user_name):
    """The gate's refusals grouped by server name, reason, sender and original destination, busiest first."""
    groups = {}
    for record in joined:
        forwarded = record.get("network") is not None
        key = (record["sni"], record["reason"], record["uid"], record["source"], record["network"],
               record["dst"], record["dpt"])
        group = groups.get(key)
        if group is None:
            group = groups[key] = {
                "sni": record["sni"], "reason": record["reason"], "uid": record["uid"],
                "user": user_name(record["uid"]), "source": record["source"], "network": record["network"],
                "direction": "forward" if forwarded else ("output" if record["logged"] else None),
                "dst": record["dst"], "dpt": record["dpt"],
                "destination_text": destination_text(record["dst"], record["dpt"]) if record["dst"] else None,
                "count": 0, "first": record["time"], "last": record["time"], "passed": 0,
            }
        group["count"] += 1
        group["passed"] += 0 if record["refused"] else 1
        group["first"] = min(group["first"], record["time"])
        group["last"] = max(group["last"], record["time"])
    for group in groups.values():
        group["sender_text"] = (sender_text(group) if group["direction"] else
                                "unknown (no [EGRESS-TLS] line: rate-limited or rotated)")
    return sorted(groups.values(), key=lambda g: (-g["count"], g["sni"], g["reason"], g["last"]))


def tls_refusals(host, params, since, now):
    """What the TLS gate refused (and, in audit, would have refused), joined to the [EGRESS-TLS] kernel
    lines for the sender (uid or container) and the destination the client asked for."""
    path = params["tls_log"]
    lines = read_gate_log(host, path) if path else None
    if lines is None:
        return {"tls_refusals": [], "tls_refused_total": 0, "tls_would_refuse_total": 0, "tls_source": "none",
                "tls_stats": {"lines": 0, "connections": 0, "unlogged": 0}}
    start = iso_text(since) if since is not None else None
    records = []
    for record in parse_gate_log(lines):
        record["time"] = _gate_time(record["time"])
        if record["time"] is not None and (start is None or record["time"] >= start):
            records.append(record)
    kernel, _stats = collect(host.cache.get("kernel_lines", []), params["tls_prefix"], since=since,
                             boot_time=boot_time(host), now=now)
    joined = join_tls_log(records, kernel)
    groups = group_refusals(joined, host.user_name)
    return {
        "tls_refusals": groups[:params["tls_max_refusals"]],
        "tls_refused_total": sum(1 for r in joined if r["refused"]),
        "tls_would_refuse_total": sum(1 for r in joined if not r["refused"]),
        "tls_source": path,
        "tls_stats": {"lines": len(lines), "connections": len(records),
                      "unlogged": sum(1 for r in joined if not r["logged"])},
    }


# Read in this order; a Failure of one stops the module before the next is read.
SECTIONS = (kernel_denials, refused_names, tls_refusals, exact_counts, guard_events)


def check_params(params):
    """Failure naming the option and its value, for values the argument spec cannot refuse."""
    if not params["prefix"]:
        raise Failure("prefix: '' must be the non-empty log prefix of the deny rules")
    if params["bucket_seconds"] < 1 or min(params["max_records"], params["dns_max_names"], params["tls_max_refusals"]) < 0:
        raise Failure("bucket_seconds must be at least 1, max_records, dns_max_names and tls_max_refusals at least 0 "
                      "(got %s, %s, %s, %s)" % (params["bucket_seconds"], params["max_records"], params["dns_max_names"],
                                                params["tls_max_refusals"]))
    if not params["tls_prefix"]:
        raise Failure("tls_prefix: '' must be the non-empty log prefix of the TLS gate's redirect rules")
    if not 0 <= params["canary_source_port"] <= 65535:
        raise Failure("canary_source_port must be a port (0 for none), got %s" % params["canary_source_port"])


def denials_result(host, params):
    """egress_denials' result (without changed) for its params; Failure when it cannot give one."""
    check_params(params)
    now = host.now().replace(microsecond=0)
    try:
        since = parse_since(params["since"], now=now)
    except ValueError as exc:
        raise Failure(str(exc))
    result = {"window": {"start": iso_text(since) if since else None, "end": iso_text(now),
                         "bucket_seconds": params["bucket_seconds"]}}
    for section in SECTIONS:
        result.update(section(host, params, since, now))
    return result
