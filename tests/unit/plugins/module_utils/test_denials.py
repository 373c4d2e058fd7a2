"""Parsing denied-egress lines captured from a real kernel (fixtures/denials/capture.sh)."""
import datetime
import json
import os

import pytest
from hypothesis import given, strategies as st

from ansible_collections.agentguard.hardening.plugins.module_utils import _denials as D

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "denials")
PREFIX = "[EGRESS-DENIED] "
LOCAL = {"198.18.77.2", "fd00:a9e:77::2"}
UTC = datetime.timezone.utc


def lines(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read().splitlines()


@pytest.mark.parametrize("name", ["dmesg-iso.log", "dmesg-raw.log", "kern-rfc3339.log", "kern-traditional.log"])
def test_every_layout_gives_the_same_records(name):
    boot = datetime.datetime(2026, 11, 25, 4, 42, 0, tzinfo=UTC)
    now = datetime.datetime(2026, 11, 25, 6, 0, 0, tzinfo=UTC)
    records, stats = D.collect(lines(name), PREFIX, boot_time=boot, now=now)
    assert stats["malformed"] == 0 and stats["lines"] == 9
    assert stats["matched"] == 8  # the [FW-OTHER] line is someone else's
    keys = sorted((r["family"], r["protocol"], r["dpt"] or 0, r["uid"] if r["uid"] is not None else -1) for r in records)
    assert keys == sorted([
        ("ipv4", "tcp", 443, 4242), ("ipv6", "tcp", 443, 4242), ("ipv4", "udp", 53, 4242), ("ipv6", "udp", 443, 4242),
        ("ipv4", "udp", 5353, 4242), ("ipv4", "icmp", 0, 0), ("ipv6", "icmpv6", 0, 0), ("ipv4", "tcp", 9999, -1),
    ])
    assert all(r["time"] and r["time"].startswith("2026-11-25T") for r in records)
    v6 = [r for r in records if r["family"] == "ipv6"]
    assert {r["src"] for r in v6} == {"fd00:a9e:77::2"} and {r["dst"] for r in v6} == {"fd00:a9e:77::66"}


def test_fields_of_a_tcp_line():
    when, message = D.split_line(lines("kern-rfc3339.log")[0])
    record = D.parse_record(message, PREFIX)
    assert when.tzinfo is not None and record["src"] == "198.18.77.2" and record["dst"] == "198.18.77.66"
    assert "SYN" in record["flags"] and record["out"] == "agd-ns"


def test_udp_keeps_the_ip_length_not_the_udp_length():
    line = [l for l in lines("dmesg-raw.log") if "DPT=53 " in l][0]
    record = D.parse_record(D.split_line(line)[1], PREFIX)
    assert record["len"] == 30


def test_other_hosts_lines_are_counted_not_returned():
    records, stats = D.collect(lines("dmesg-iso.log"), PREFIX, local_addresses={"198.18.0.20"})
    assert records == [] and stats["other_hosts"] == 8


def test_local_filter_keeps_both_families():
    records, stats = D.collect(lines("dmesg-iso.log"), PREFIX, local_addresses=LOCAL)
    assert stats["other_hosts"] == 0 and len(records) == 8


def test_since_filters_older_records():
    records, stats = D.collect(lines("kern-rfc3339.log"), PREFIX)
    last = max(r["time"] for r in records)
    since = D.parse_since(last)
    newer, stats = D.collect(lines("kern-rfc3339.log"), PREFIX, since=since)
    assert len(newer) >= 1 and stats["older"] == 8 - len(newer)


def test_malformed_and_foreign_lines_never_fail():
    junk = [
        "[ 12.0] [EGRESS-DENIED] IN= OUT=eth0 SRC=not-an-ip DST=1.2.3.4 PROTO=TCP",
        "[ 12.0] [EGRESS-DENIED] IN= OUT=eth0 DST=1.2.3.4 PROTO=TCP",
        "[ 12.0] [EGRESS-DENIED] IN= OUT=eth0 SRC=1.2.3.4 DST=1.2.3.5 PROTO=TCP DPT=eighty",
        "Nov 25 05:19:22 vm sshd[1]: Accepted publickey for root",
        "",
        "{not json",
        '{"MESSAGE": [91, 69]}',
    ]
    records, stats = D.collect(junk + lines("dmesg-raw.log"), PREFIX)
    assert stats["malformed"] == 3 and stats["matched"] == 8 and len(records) == 8


def test_journal_json_lines():
    base = lines("dmesg-raw.log")
    entries = []
    for index, line in enumerate(base):
        message = D.split_line(line)[1]
        entries.append(json.dumps({"MESSAGE": message, "__REALTIME_TIMESTAMP": str(1795000000000000 + index),
                                   "_TRANSPORT": "kernel"}))
    records, stats = D.collect(entries, PREFIX)
    assert stats["matched"] == 8 and records[0]["time"].startswith("2026-11-18T")


def test_the_same_line_from_two_sources_counts_once():
    iso = lines("kern-rfc3339.log")
    records, stats = D.collect(iso + iso, PREFIX)
    assert len(records) == 8


def test_aggregate_counts_and_first_last():
    records, stats = D.collect(lines("kern-rfc3339.log") + lines("kern-traditional.log"), PREFIX,
                               now=datetime.datetime(2026, 11, 25, 6, 0, tzinfo=UTC))
    groups = D.aggregate(records)
    top = groups[0]
    assert sum(g["count"] for g in groups) == len(records)
    assert top["count"] >= 2 and top["first"] <= top["last"]
    assert set(top) >= {"dst", "dpt", "protocol", "uid", "count", "first", "last", "family", "sources"}


def test_timeline_buckets():
    records, stats = D.collect(lines("kern-rfc3339.log"), PREFIX)
    buckets = D.timeline(records, 60)
    assert sum(b["count"] for b in buckets) == 8
    assert [b["start"] for b in buckets] == sorted(b["start"] for b in buckets)
    assert all(b["start"].endswith(":00Z") for b in buckets)


@pytest.mark.parametrize("text,expected", [
    ("2026-11-25T10:00:00Z", datetime.datetime(2026, 11, 25, 10, 0, tzinfo=UTC)),
    ("2026-11-25T10:00:00+01:00", datetime.datetime(2026, 11, 25, 9, 0, tzinfo=UTC)),
    ("2026-11-25", datetime.datetime(2026, 11, 25, tzinfo=UTC)),
    ("24h", datetime.datetime(2026, 11, 24, 12, 0, tzinfo=UTC)),
    ("30m", datetime.datetime(2026, 11, 25, 11, 30, tzinfo=UTC)),
])
def test_parse_since(text, expected):
    assert D.parse_since(text, now=datetime.datetime(2026, 11, 25, 12, 0, tzinfo=UTC)) == expected


@pytest.mark.parametrize("text", ["yesterday", "10 minutes", "2026-13-01T00:00:00Z", "5y"])
def test_parse_since_rejects(text):
    with pytest.raises(ValueError, match="since: "):
        D.parse_since(text)


def test_traditional_timestamp_across_new_year():
    when, message = D.split_line("Dec 31 23:59:59 vm kernel: [EGRESS-DENIED] SRC=1.2.3.4 DST=5.6.7.8 PROTO=TCP",
                                 now=datetime.datetime(2027, 1, 1, 0, 5, tzinfo=UTC))
    assert when.year == 2026


@given(st.text(max_size=200))
def test_parser_never_raises_on_arbitrary_lines(text):
    records, stats = D.collect([text, PREFIX + text], PREFIX)
    assert stats["lines"] == 2
