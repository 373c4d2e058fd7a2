"""What egress_denials adds from the guard's side (module_utils/_log_sources.py), on a fake host: how far back
the kernel log source reaches against the window, the exact counts from the deny rules' counters and since
when, and the guard's tamper events as _guard writes them to the journal."""
import datetime
import json

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _guard as G
from ansible_collections.agentguard.hardening.plugins.module_utils import _log_sources as S

from .conftest import fixture
from .test_log_sources import GUARD_STATUS, ISO, KERN, NOW, FakeHost, dmesg, fails, journal, ok, params

UTC = datetime.timezone.utc
DAY = datetime.timedelta(hours=24)


def kernel_coverage(host, since, **over):
    S.read_kernel_records(host, params(**over), since, NOW)
    return host.cache["coverage"]


# ------------------------------------------------------------------------- coverage
def test_dmesg_that_holds_minutes_says_so_against_a_day():
    """The issue's case: "since 24h" read from a ring buffer that holds the last 40 minutes."""
    cov = kernel_coverage(FakeHost({"dmesg": dmesg()}), NOW - DAY, source="dmesg")
    assert cov["covered"] is False and cov["oldest"] == "2026-11-25T05:20:26.879456Z"
    assert cov["text"] == ("dmesg covers only the last 40 min of the 24 h asked "
                           "(its oldest line: 2026-11-25T05:20:26.879456Z)")
    assert cov["start"] == "2026-11-24T06:00:00.123456Z" and cov["short"] == "last 40 min of 24 h"


def test_a_source_older_than_the_window_covers_it():
    since = datetime.datetime(2026, 11, 25, 5, 30, tzinfo=UTC)
    assert kernel_coverage(FakeHost({"dmesg": dmesg()}), since, source="dmesg")["covered"] is True
    cov = kernel_coverage(FakeHost(files={"/var/log/kern.log": KERN}), since, source="file")
    assert cov["covered"] is True and cov["source"] == "/var/log/kern.log"
    assert kernel_coverage(FakeHost({"dmesg": dmesg()}), None, source="dmesg")["covered"] is True


def test_the_journal_is_asked_for_a_line_before_the_window():
    before = json.dumps({"MESSAGE": "Linux version 6.1", "__REALTIME_TIMESTAMP": "1795500000000000"}) + "\n"

    def answer(older):
        return lambda argv: (0, (older if "--until" in argv else journal(ISO)), "")

    since = NOW - DAY
    host = FakeHost({"journalctl": answer(before)})
    cov = kernel_coverage(host, since, source="journal")
    assert cov["covered"] is True and "whole window" in cov["text"]
    probe = [argv for argv in host.ran("journalctl") if "--until" in argv]
    assert probe == [["/usr/bin/journalctl", "-k", "-o", "json", "--no-pager", "-q", "-n", "1",
                      "--until", "2026-11-24 06:00:00 UTC"]]
    cov = kernel_coverage(FakeHost({"journalctl": answer("")}), since, source="journal")
    assert cov["covered"] is False and cov["text"].startswith("journal covers only the last 40 min of the 24 h asked")
    # The host booted inside the window (FakeHost's /proc/stat: 04:41:57): journalctl -k reads this boot only.
    assert "the host booted at 2026-11-25T04:41:57Z" in cov["text"]


def test_no_source_and_an_empty_source_cover_nothing():
    host = FakeHost({"journalctl": fails()})
    S.read_kernel_records(host, params(), NOW - DAY, NOW)
    assert host.cache["coverage"]["covered"] is False and host.cache["coverage"]["source"] == "none"
    cov = kernel_coverage(FakeHost({"dmesg": ok("")}), NOW - DAY, source="dmesg")
    assert cov == {"source": "dmesg", "oldest": None, "start": "2026-11-24T06:00:00.123456Z", "covered": False,
                   "text": "dmesg holds no line of the 24 h asked: the window is not covered", "short": "none"}


@pytest.mark.parametrize("seconds, text", [(45, "45 s"), (720, "12 min"), (7200, "2 h"), (9000, "2.5 h"),
                                           (86400, "24 h"), (259200, "3 days")])
def test_span_text(seconds, text):
    assert S.span_text(seconds) == text


def test_the_result_carries_the_coverage():
    result = S.denials_result(FakeHost({"dmesg": dmesg()}), params(source="dmesg", since="24h"))
    assert result["coverage"]["covered"] is False and "of the 24 h asked" in result["coverage"]["text"]


# ------------------------------------------------------------------------- exact counts
def counting_host(status=None, **binaries):
    saves = {"iptables-save": ok(fixture("counters-enforce-nft.v4")), "ip6tables-save": ok(fixture("counters-enforce-nft.v6")),
             "dmesg": dmesg()}
    saves.update(binaries)
    return FakeHost(saves, {GUARD_STATUS: json.dumps(status)} if status is not None else {})


def test_exact_counts_come_from_the_counters_and_say_since_when():
    status = {"applied_timestamp": 1795583000, "last_restore_timestamp": 1795585000.5}  # 2026-11-25T05:03:20 / 05:36:40.5
    result = S.denials_result(counting_host(status), params(source="dmesg", since="24h"))
    assert result["counters"] == {"ipv4": {"output": {"packets": 7, "bytes": 203}, "forward": {"packets": 3, "bytes": 87}},
                                  "ipv6": {"output": {"packets": 5, "bytes": 245}, "forward": {"packets": 2, "bytes": 98}}}
    assert result["denied_packets"] == 17 and result["denied_packets_forwarded"] == 5
    assert result["counters_mode"] == "enforce"
    assert result["counters_since"] == "2026-11-25T05:36:40.500000Z"
    assert result["counters_since_reason"] == "the guard's last restore"
    assert result["counters_text"] == ("17 denied packet(s), exact kernel counters, since the rules were loaded at "
                                       "2026-11-25T05:36:40.500000Z (the guard's last restore)")
    # Only iptables-save -c, once per family: the log limits are read from the same text.
    host = counting_host()
    S.denials_result(host, params(source="dmesg"))
    assert host.ran("iptables-save") == [["/usr/bin/iptables-save", "-c"]]
    # Without a guard the boot is the latest known load.
    assert S.exact_counts(host, params(), None, NOW)["counters_since_reason"] == "boot"


def test_exact_counts_when_they_cannot_be_read():
    host = counting_host(**{"ip6tables-save": fails("ip6tables-save: Permission denied")})
    del host.binaries["iptables-save"]
    result = S.exact_counts(host, params(), None, NOW)
    assert result["denied_packets"] is None and result["counters"] == {}
    assert result["counters_errors"] == ["ipv4: no iptables-save on this host",
                                         "ipv6: ip6tables-save -c exited 1: ip6tables-save: Permission denied"]
    assert result["counters_text"].startswith("no deny rule counters could be read (")
    audit = counting_host(**{"iptables-save": ok(fixture("counters-audit-legacy.v4")),
                             "ip6tables-save": ok(fixture("counters-audit-legacy.v6"))})
    result = S.exact_counts(audit, params(), None, NOW)
    assert result["counters_mode"] == "audit" and "(would be denied: audit mode)" in result["counters_text"]


# ------------------------------------------------------------------------- tamper events
def guard_journal(*events):
    """`journalctl -o json` of the guard's entries, made by _guard.tamper_fields itself (the contract)."""
    lines = [json.dumps({"MESSAGE": "agentguard-guard started", "SYSLOG_IDENTIFIER": "agentguard-guard",
                         "__REALTIME_TIMESTAMP": "1795583000000000"})]
    for when, found, seconds, opened, restored in events:
        fields = G.tamper_fields(found, seconds, opened, "sha256:abc", restored, None if restored else "iptables-restore: line 3 failed")
        entry = dict((key, str(value)) for key, value in fields.items())
        entry["__REALTIME_TIMESTAMP"] = str(int(when * 1e6))
        lines.append(json.dumps(entry))
    return "\n".join(lines) + "\n"


def test_tamper_events_from_the_guards_journal_entries():
    jump = G.Difference("output-jump", "ipv4", "filter")
    flushed = [G.Difference("chain", "ipv6", "filter"), G.Difference("ipset", "ipv6", "ipset")]
    text = guard_journal((1795584000.25, [jump], 0.18, 0.41, True), (1795585000, flushed, 0.3, None, True),
                         (1795586000, [jump], 0.05, None, False))
    status = {"started": 1795583000, "tamper_events_total": 7, "restore_failures_total": 1, "in_sync": True,
              "policy_hash": "sha256:abc", "last_restore_timestamp": 1795585000.3}
    host = FakeHost({"journalctl": ok(text)}, {GUARD_STATUS: json.dumps(status)})
    result = S.guard_events(host, params(), NOW - DAY, NOW)
    assert host.ran("journalctl") == [["/usr/bin/journalctl", "SYSLOG_IDENTIFIER=agentguard-guard", "-o", "json",
                                       "--no-pager", "-q", "--since", "2026-11-24 06:00:00 UTC"]]
    assert result["tamper_total"] == 3 and result["tamper_source"] == "journal"
    first, second, third = result["tamper_events"]
    assert first["time"] == "2026-11-25T05:20:00.250000Z" and first["differed"] == ["ipv4/filter/output-jump"]
    assert first["restore_seconds"] == 0.18 and first["open_seconds"] == 0.41 and first["open_text"] == "0.41 s"
    assert second["differed_text"] == "ipv6/filter/chain, ipv6/ipset/ipset" and second["kinds"] == ["chain", "ipset"]
    assert second["open_text"] == "unknown (found by the periodic check); restored 0.30 s after it was found"
    assert third["restored"] is False and third["open_text"] == "not restored: iptables-restore: line 3 failed"
    guard = result["guard"]
    assert guard["started"] == "2026-11-25T05:03:20Z" and guard["tamper_events_total"] == 7
    assert guard["last_restore"] == "2026-11-25T05:36:40.300000Z" and guard["in_sync"] is True


def test_no_guard_no_figures():
    result = S.guard_events(FakeHost(), params(), None, NOW)
    assert result == {"tamper_events": [], "tamper_total": 0, "tamper_source": "none", "guard": None}
    host = FakeHost({"journalctl": ok("{not json\n")}, {GUARD_STATUS: "[1, 2]"})
    assert S.guard_events(host, params(), None, NOW)["guard"] is None
