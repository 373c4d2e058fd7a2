# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What egress_denials reads and from where: the kernel log's source (journal, a file, dmesg), the
filtering resolver's log, the live rate limits, this host's addresses; and the module's result.

Private to agentguard.hardening. Every question to the host goes through a HostIO, so that unit tests
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
import os
import pwd

from ansible_collections.agentguard.hardening.plugins.module_utils._denials import sender_text, summarize
from ansible_collections.agentguard.hardening.plugins.module_utils._dnslog import aggregate_refused, collect_refused
from ansible_collections.agentguard.hardening.plugins.module_utils._kernlog import (
    destination_text,
    collect,
    empty_stats,
    limit_text,
    log_limits,
)
from ansible_collections.agentguard.hardening.plugins.module_utils._logtime import UTC, iso_text, journal_since, parse_since
from ansible_collections.agentguard.hardening.plugins.module_utils._tlsgate import join_tls_log, parse_gate_log

# source: auto tries these in order and keeps the first that holds a line with the prefix.
AUTO_ORDER = ("journal", "file", "dmesg")


class Failure(Exception):
    """What the module fails with: an option with a bad value, or a source it was asked to read that
    cannot be read. Nothing is changed either way (the module only reads)."""


class Unreadable(Exception):
    """One source that cannot be read; str() names it and says why."""

    def __init__(self, where, why):
        Exception.__init__(self, "%s (%s)" % (where, why))
        self.where = where


def open_text(path):
    """A regular file opened for reading text; OSError otherwise (a FIFO or a device could block)."""
    if os.path.exists(path) and not os.path.isfile(path):
        raise IOError("not a regular file")
    return open(path, errors="replace")


def utc_now():
    return datetime.datetime.now(UTC)


class HostIO(object):
    """The host as the readers see it. run(argv) -> (rc, out, err), run with LC_ALL=C; which(name) ->
    the binary's path or None; warn(text); open_text(path) -> a text file (OSError when it cannot be
    read); now() -> an aware datetime; getpwuid(uid) -> a passwd entry (KeyError when there is none)."""

    def __init__(self, run, which, warn, open_text=open_text, now=utc_now, getpwuid=pwd.getpwuid):
        self.run = run
        self.which = which
        self.warn = warn
        self.open_text = open_text
        self.now = now
        self.getpwuid = getpwuid
        # What one section read that a later one needs: the kernel log's lines (the TLS gate's join).
        self.cache = {}

    def user_name(self, uid):
        """The name of a uid on this host; None for no uid or a uid without a name."""
        if uid is None:
            return None
        try:
            return self.getpwuid(uid).pw_name
        except KeyError:
            return None


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
            return label, records, stats
    if not auto:
        raise Failure("cannot read %s" % unreadable[0])
    if len(unreadable) == len(AUTO_ORDER):
        host.warn("no kernel log could be read, so no denial is reported: %s" % ", ".join(unreadable))
    return "none", [], empty_stats()


def read_limits(host, prefix):
    """The logging rules with this prefix in the live rules of both families, with their rate limit;
    a family whose rules cannot be read is left out (the limit is then unknown, not fatal)."""
    found = []
    for family, command in (("ipv4", "iptables-save"), ("ipv6", "ip6tables-save")):
        binary = host.which(command)
        if binary is None:
            continue
        rc, out, err = host.run([binary])
        if rc == 0:
            found += log_limits(out, prefix, family)
    return found


def kernel_denials(host, params, since, now):
    """The deny rules' log lines: the records, their groups, timeline and counts, and the rate limits."""
    label, records, stats = read_kernel_records(host, params, since, now)
    limits = read_limits(host, params["prefix"])
    result = summarize(records, params["bucket_seconds"], params["max_records"], params["canary_source_port"],
                       host.user_name)
    result.update(log_limits=limits, log_limit_text=limit_text(limits), source=label, stats=stats)
    return result


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
SECTIONS = (kernel_denials, refused_names, tls_refusals)


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
