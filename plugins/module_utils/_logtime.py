# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Times in log lines: syslog timestamps, journal entries, the `since` option.

Private to agentguard.hardening. Shared by the kernel log reader (_kernlog) and the resolver log
reader (_dnslog): both read the same syslog files and the same journal.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import re

UTC = datetime.timezone.utc
ISO_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:[.,](\d+))?(Z|[+-]\d\d:?\d\d)?\s+(.*)$")
TRADITIONAL_RE = re.compile(r"^([A-Z][a-z]{2})\s+(\d{1,2}) (\d\d:\d\d:\d\d)\s+(.*)$")
MONTHS = dict((m, i) for i, m in enumerate(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1))
RELATIVE_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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


def iso_text(when):
    """How every time is returned: UTC, "2026-11-25T05:20:26.879456Z"."""
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


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


def journal_fields(entry):
    """(time or None, message) of one decoded `journalctl -o json` entry."""
    message = entry.get("MESSAGE", "")
    if isinstance(message, list):  # journald stores non-UTF-8 messages as byte arrays
        message = bytes(message).decode("utf-8", "replace")
    stamp = entry.get("__REALTIME_TIMESTAMP")
    when = datetime.datetime.fromtimestamp(int(stamp) / 1e6, UTC) if stamp else None
    return when, message


def journal_since(since):
    """A time as `journalctl --since` reads it."""
    return since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def epoch(iso):
    """Seconds since 1970 of a record time ("2026-11-25T05:20:26.879456Z"), None for None."""
    if not iso:
        return None
    stamp = datetime.datetime.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    seconds = (stamp - datetime.datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
    fraction = iso[19:].rstrip("Z")
    return seconds + (float(fraction) if fraction.startswith(".") and fraction[1:].isdigit() else 0.0)


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
