# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The denied-egress report's chart: a true time axis from the hosts' timelines.

Private to agentguard.hardening. egress_denials returns, per host, only the buckets that hold
denials (_denials.timeline); chart() merges the hosts' buckets and places each bar at its own time,
so an idle interval is a gap, never a missing slot. The axis spans the denials (at least MIN_SLOTS
buckets, widened within the report's window); when that is more than MAX_SLOTS buckets, the bars
are merged into a coarser "nice" interval, which the chart names. Pure: unit-tested, and called
by the report's filter plugin on the controller.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import math

UTC = datetime.timezone.utc
MIN_SLOTS = 12
MAX_SLOTS = 240
# Candidate widths of the shown interval and of the x-axis tick steps, in seconds.
NICE_SECONDS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
                86400, 172800, 604800, 1209600, 2592000]
MAX_XTICKS = 7


def _epoch(iso):
    stamp = datetime.datetime.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return int((stamp - datetime.datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())


def _iso(seconds):
    return datetime.datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration_text(seconds):
    """5 s, 2 min, 1 h, 1 day, 2 days, 90 s -> "90 s" (only exact units are named by them)."""
    for unit, name in ((86400, "day"), (3600, "h"), (60, "min")):
        if seconds >= unit and seconds % unit == 0:
            count = seconds // unit
            return "%d %s" % (count, name + ("s" if name == "day" and count > 1 else ""))
    return "%d s" % seconds


def _tick_label(seconds, step, first):
    stamp = datetime.datetime.fromtimestamp(seconds, UTC)
    if step >= 86400:
        return stamp.strftime("%Y-%m-%d")
    clock = stamp.strftime("%H:%M:%S" if step < 60 else "%H:%M")
    return stamp.strftime("%m-%d ") + clock if first or (stamp.hour, stamp.minute, stamp.second) == (0, 0, 0) else clock


def nice_ceiling(value):
    """The smallest 1, 2 or 5 times a power of ten that is at least value (value >= 1)."""
    power = 10 ** int(math.floor(math.log10(value)))
    for factor in (1, 2, 5, 10):
        if factor * power >= value:
            return factor * power
    return 10 * power  # pragma: no cover


def merge(timelines):
    """Sum the hosts' buckets by start: {epoch: {"count", "attempts", "canary"}}."""
    merged = {}
    for buckets in timelines:
        for bucket in buckets or []:
            start = _epoch(bucket["start"])
            total = merged.setdefault(start, {"count": 0, "attempts": 0, "canary": 0})
            for key in total:
                total[key] += int(bucket.get(key, bucket.get("count", 0) if key == "attempts" else 0))
    return merged


def chart(timelines, bucket_seconds, window_start=None, window_end=None, width=900, height=200,
          left=48, right=16, top=12, bottom=26):
    """The chart of the merged timelines as SVG geometry (user units of a width x height viewBox):
    {"bars": [{x, width, start, end, attempts, canary, lines, y, height, canary_y, canary_height}],
    "xticks": [{x, label}], "yticks": [{y, label}], "interval": seconds per bar, "from"/"to" (iso),
    "peak", "baseline" (y of zero), "plot": {left, right, top, bottom}}; None without a timed denial.
    window_start / window_end (iso, optional) bound how far the axis may be widened."""
    buckets = merge(timelines)
    if not buckets:
        return None
    bucket_seconds = max(int(bucket_seconds), 1)
    first, last = min(buckets), max(buckets) + bucket_seconds
    low = _epoch(window_start) // bucket_seconds * bucket_seconds if window_start else None
    high = -(-_epoch(window_end) // bucket_seconds) * bucket_seconds if window_end else None
    # Widen a short burst to MIN_SLOTS buckets: later first (up to the window's end), then earlier.
    want = MIN_SLOTS * bucket_seconds
    if last - first < want:
        last = max(last, first + want if high is None else min(first + want, high))
    if last - first < want:
        first = min(first, last - want if low is None else max(last - want, low))
    # Too many buckets for the width: show them per a nice multiple of the bucket.
    interval = bucket_seconds
    if (last - first) / interval > MAX_SLOTS:
        interval = next((n for n in NICE_SECONDS if n % bucket_seconds == 0 and (last - first) / n <= MAX_SLOTS),
                        bucket_seconds * int(math.ceil((last - first) / float(bucket_seconds * MAX_SLOTS))))
    first = first // interval * interval
    last = -(-last // interval) * interval
    shown = {}
    for start, counts in buckets.items():
        total = shown.setdefault(start // interval * interval, {"count": 0, "attempts": 0, "canary": 0})
        for key in total:
            total[key] += counts[key]
    peak = max(max(c["attempts"] + c["canary"] for c in shown.values()), 1)
    ystep = nice_ceiling(peak / 4.0) if peak > 4 else 1
    ymax = max(ystep * int(math.ceil(peak / float(ystep))), 4 if peak <= 4 else 0)
    plot_w, plot_h = width - left - right, height - top - bottom
    span = float(last - first)
    baseline = top + plot_h

    def x_of(seconds):
        return round(left + (seconds - first) / span * plot_w, 2)

    def h_of(count):
        return round(count / float(ymax) * plot_h, 2)

    bars = []
    for start in sorted(shown):
        counts = shown[start]
        x0, x1 = x_of(start), x_of(start + interval)
        gap = 1.0 if x1 - x0 > 3 else 0.0
        red, grey = h_of(counts["attempts"]), h_of(counts["canary"])
        bars.append({"start": _iso(start), "end": _iso(start + interval), "x": x0 + gap / 2,
                     "width": round(max(x1 - x0 - gap, 1.0), 2), "attempts": counts["attempts"],
                     "canary": counts["canary"], "lines": counts["count"],
                     "y": round(baseline - red, 2), "height": red,
                     "canary_y": round(baseline - red - grey, 2), "canary_height": grey})
    step = next((n for n in NICE_SECONDS if n >= interval and span / n <= MAX_XTICKS), None)
    if step is None:
        step = NICE_SECONDS[-1] * int(math.ceil(span / NICE_SECONDS[-1] / MAX_XTICKS))
    xticks, tick = [], -(-first // step) * step
    while tick <= last:
        xticks.append({"x": x_of(tick), "label": _tick_label(tick, step, not xticks)})
        tick += step
    yticks = [{"y": round(baseline - h_of(value), 2), "label": str(value)} for value in range(0, ymax + 1, ystep)]
    return {"bars": bars, "xticks": xticks, "yticks": yticks, "interval": interval,
            "interval_text": duration_text(interval), "bucket_text": duration_text(bucket_seconds),
            "from": _iso(first), "to": _iso(last), "peak": peak, "ymax": ymax, "baseline": baseline,
            "width": width, "height": height,
            "plot": {"left": left, "right": width - right, "top": top, "bottom": baseline}}
