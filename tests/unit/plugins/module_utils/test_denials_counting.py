"""What the denied-egress report counts: attempts beside log lines, the canary apart, the live rate limit,
and a timeline whose chart keeps its gaps (module_utils/_denials.py, _timeline.py)."""
import datetime
import os

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _denials as D
from ansible_collections.agentguard.hardening.plugins.module_utils import _timeline as T
from ansible_collections.agentguard.hardening.plugins.filter.egress_report_chart import FilterModule

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")
PREFIX = "[EGRESS-DENIED] "
UTC = datetime.timezone.utc
BASE = datetime.datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)


def tcp_line(seconds, spt=40000, dpt=443, dst="198.18.77.66", src="198.18.77.2", uid=0, inside=""):
    """A kernel line as dmesg --time-format iso writes it, `seconds` after BASE (a SYN, as a blocked connect sends)."""
    stamp = (BASE + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S,%f+00:00")
    owner = "" if inside else " UID=%d GID=%d" % (uid, uid)
    return ("%s %sIN=%s OUT=eth0 SRC=%s DST=%s LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=1 DF PROTO=TCP SPT=%d DPT=%d "
            "WINDOW=64240 RES=0x00 SYN URGP=0%s" % (stamp, PREFIX, inside, src, dst, spt, dpt, owner))


def records_of(lines, canary_port=D.CANARY_SOURCE_PORT):
    records, stats = D.collect(lines, PREFIX)
    records.sort(key=D.time_order)
    return D.mark_attempts(D.mark_canary(records, canary_port))


# ------------------------------------------------------------------------------------------ attempts
def test_a_syn_and_its_retransmissions_are_one_attempt():
    # nc -w2: the SYN and one retransmission 1 s later; curl: SYNs at 0, 1, 3, 7, 15 s.
    records = records_of([tcp_line(0), tcp_line(1.02), tcp_line(3.1), tcp_line(7.2), tcp_line(15.4)])
    assert [r["attempt"] for r in records] == [True, False, False, False, False]
    (group,) = D.aggregate(records)
    assert (group["count"], group["attempts"]) == (5, 1)


def test_new_source_port_or_a_long_pause_is_a_new_attempt():
    records = records_of([tcp_line(0, spt=40000), tcp_line(1, spt=40000), tcp_line(1.5, spt=40001),
                          tcp_line(1 + D.FLOW_GAP_SECONDS + 1, spt=40000)])
    assert [r["attempt"] for r in records] == [True, False, True, True]
    (group,) = D.aggregate(records)
    assert (group["count"], group["attempts"]) == (4, 3)
    buckets = D.timeline(records, 60)
    assert sum(b["count"] for b in buckets) == 4 and sum(b["attempts"] for b in buckets) == 3


def test_the_same_port_to_another_destination_is_another_attempt():
    records = records_of([tcp_line(0, dpt=443), tcp_line(0.5, dpt=80), tcp_line(1, dst="198.18.77.67")])
    assert all(r["attempt"] for r in records)


def test_icmp_echo_is_grouped_by_its_echo_id_not_the_ip_id():
    def ping(seconds, echo_id, seq):
        stamp = (BASE + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S,%f+00:00")
        return ("%s %sIN= OUT=eth0 SRC=198.18.77.2 DST=198.18.77.66 LEN=84 TOS=0x00 PREC=0x00 TTL=64 ID=%d DF "
                "PROTO=ICMP TYPE=8 CODE=0 ID=%d SEQ=%d UID=0 GID=0" % (stamp, PREFIX, 5000 + seq, echo_id, seq))
    records = records_of([ping(0, 7, 1), ping(1, 7, 2), ping(2, 7, 3), ping(2.5, 9, 1)])
    assert [r["icmp_id"] for r in records] == [7, 7, 7, 9]
    assert [r["attempt"] for r in records] == [True, False, False, True]


def test_real_forwarded_lines_count_an_attempt_per_flow():
    with open(os.path.join(FIXTURES, "denials", "dmesg-forward-iso.log")) as handle:
        records = records_of(handle.read().splitlines())
    flows = set(D.flow_key(r) for r in records)
    assert sum(r["attempt"] for r in records) == len(flows)


# ------------------------------------------------------------------------------------------- canary
def test_canary_probes_are_told_by_their_source_port_and_counted_apart():
    lines = [tcp_line(0, spt=D.CANARY_SOURCE_PORT), tcp_line(1, spt=D.CANARY_SOURCE_PORT),
             tcp_line(2, spt=41000, uid=1000),
             # a forwarded packet from that port is a container's, never the role's canary
             tcp_line(3, spt=D.CANARY_SOURCE_PORT, src="198.18.210.2", inside="docker0")]
    records = records_of(lines)
    assert [r["canary"] for r in records] == [True, True, False, False]
    groups = D.aggregate(records)
    canary = [g for g in groups if g["canary"]]
    assert len(canary) == 1 and (canary[0]["count"], canary[0]["attempts"]) == (2, 1)
    assert groups[-1]["canary"], "the canary's groups come last"
    canary[0]["user"] = "root"
    assert D.sender_text(canary[0]) == "role canary, root (0)"
    buckets = D.timeline(records, 300)
    assert [(b["attempts"], b["canary"], b["count"]) for b in buckets] == [(2, 1, 4)]


def test_canary_port_zero_marks_nothing():
    records = records_of([tcp_line(0, spt=D.CANARY_SOURCE_PORT)], canary_port=0)
    assert records[0]["canary"] is False


def test_the_roles_canary_binds_the_port_the_module_looks_for():
    import yaml
    path = os.path.join(FIXTURES, "..", "..", "..", "roles", "egress", "vars", "main.yml")
    with open(path) as handle:
        role_vars = yaml.safe_load(handle)
    assert role_vars["__egress_canary_source_port"] == D.CANARY_SOURCE_PORT
    with open(os.path.join(os.path.dirname(path), "..", "files", "egress_probe.py")) as handle:
        probe = handle.read()  # the probe the role runs (python3 -c), its 4th argument the source port
    assert "argv[4]" in probe


# ---------------------------------------------------------------------------------------- rate limit
@pytest.mark.parametrize("name,family,chain", [
    ("managed-nft.v4", "ipv4", "AGENTGUARD-DENY"), ("managed-legacy.v6", "ipv6", "AGENTGUARD-DENY"),
    ("forward-nft.v4", "ipv4", "AGENTGUARD-FWD-DENY"), ("forward-legacy.v6", "ipv6", "AGENTGUARD-FWD-DENY"),
])
def test_log_limits_read_from_real_iptables_save(name, family, chain):
    with open(os.path.join(FIXTURES, name)) as handle:
        limits = D.log_limits(handle.read(), PREFIX, family)
    assert {"family": family, "table": limits[0]["table"], "chain": chain, "limit": "10/min", "burst": 20} in limits
    assert D.limit_text(limits) == "10/min, burst 20"


def test_log_limits_of_other_prefixes_and_unlimited_rules():
    save = "\n".join(["*filter", '-A X -m limit --limit 5/sec --limit-burst 7 -j LOG --log-prefix "[OTHER] "',
                      '-A Y -j LOG --log-prefix "[EGRESS-DENIED] " --log-uid', "COMMIT"])
    limits = D.log_limits(save, PREFIX, "ipv4")
    assert limits == [{"family": "ipv4", "table": "filter", "chain": "Y", "limit": None, "burst": None}]
    assert D.limit_text(limits) == "no limit" and D.limit_text([]) is None


# ----------------------------------------------------------------------------------------- addresses
def test_kernel_full_form_ipv6_is_written_compressed_in_brackets():
    record = D.parse_record(PREFIX + "IN= OUT=eth0 SRC=fd00:0a9e:0001:0000:0000:0000:0000:0002 "
                            "DST=fd00:0a9e:0001:0000:0000:0000:0000:0066 LEN=80 PROTO=TCP SPT=1 DPT=443 UID=0", PREFIX)
    assert record["destination_text"] == "[fd00:a9e:1::66]:443"
    assert D.destination_text("fd00:a9e:1::66", None) == "fd00:a9e:1::66"


# ------------------------------------------------------------------------------------------ timeline
def iso(seconds):
    return (BASE + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_bursty_minute_keeps_its_gaps():
    """The issue's case: 70 s in 5 s buckets, 7 of 15 empty: 8 bars at their own times, not 8 touching bars."""
    filled = [0, 1, 3, 5, 7, 9, 12, 14]
    chart = T.chart([[{"start": iso(5 * i), "count": 2, "attempts": 1, "canary": 0} for i in filled]], 5)
    left, right = chart["plot"]["left"], chart["plot"]["right"]
    slot = (right - left) / 15.0
    assert chart["interval"] == 5 and (chart["from"], chart["to"]) == (iso(0), iso(75))
    assert [round((b["x"] - left) / slot) for b in chart["bars"]] == filled
    for one, following in zip(chart["bars"], chart["bars"][1:]):
        assert one["x"] + one["width"] < following["x"], "bars touch or overlap"
    # the distance between bars is their distance in time
    assert chart["bars"][-1]["x"] - chart["bars"][-2]["x"] == pytest.approx(2 * slot, abs=0.05)
    assert 3 <= len(chart["yticks"]) <= 5 and chart["yticks"][0]["label"] == "0"
    assert 2 <= len(chart["xticks"]) <= T.MAX_XTICKS
    assert chart["xticks"][0]["label"].startswith("11-25 10:00:")


def test_one_short_incident_in_a_300_s_bucket_is_not_one_full_width_block():
    chart = T.chart([[{"start": iso(0), "count": 3}]], 300, window_start=iso(-86400), window_end=iso(100))
    (one,) = chart["bars"]
    plot = chart["plot"]
    assert one["width"] < (plot["right"] - plot["left"]) / 10.0
    assert chart["from"] != chart["to"] and len(set(t["label"] for t in chart["xticks"])) == len(chart["xticks"]) >= 2
    # widened within the window: never past its end
    assert chart["to"] == iso(300) and chart["from"] == iso(-11 * 300)


def test_a_week_of_5_s_buckets_is_shown_per_a_nice_interval():
    chart = T.chart([[{"start": iso(0), "count": 1}, {"start": iso(6 * 86400 + 5), "count": 30}]], 5)
    assert chart["interval"] == 3600 and chart["interval_text"] == "1 h" and chart["bucket_text"] == "5 s"
    assert len(chart["bars"]) == 2 and chart["bars"][1]["attempts"] == 30
    assert all(len(t["label"]) == 10 for t in chart["xticks"])  # dates, one a day or less often
    assert [t["label"] for t in chart["yticks"]] == ["0", "10", "20", "30"]


def test_day_buckets_label_dates():
    day = 86400
    start = BASE.replace(hour=0)
    days = [{"start": (start + datetime.timedelta(days=d)).strftime("%Y-%m-%dT%H:%M:%SZ"), "count": 5} for d in (0, 3)]
    chart = T.chart([days], day, window_start=(start - datetime.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    window_end=(start + datetime.timedelta(days=4, hours=5)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert chart["interval_text"] == "1 day" and len(chart["bars"]) == 2
    assert chart["to"] == (start + datetime.timedelta(days=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert all(t["label"].startswith("2026-11-") for t in chart["xticks"])


def test_hosts_are_merged_and_unreadable_hosts_left_out():
    chart_of = FilterModule().filters()["egress_report_chart"]
    window = {"start": iso(-3600), "end": iso(600), "bucket_seconds": 60}
    hosts = {"a": {"timeline": [{"start": iso(0), "count": 4, "attempts": 2, "canary": 1}], "window": window},
             "b": {"timeline": [{"start": iso(0), "count": 1, "attempts": 1, "canary": 0},
                                {"start": iso(120), "count": 1, "attempts": 1, "canary": 0}], "window": window},
             "c": {"unreachable": True, "msg": "ssh: connection closed"}, "d": {"failed": True}}
    chart = chart_of(hosts)
    assert [(b["attempts"], b["canary"], b["lines"]) for b in chart["bars"]] == [(3, 1, 5), (1, 0, 1)]
    first = chart["bars"][0]
    assert first["canary_y"] + first["canary_height"] == pytest.approx(first["y"])
    assert chart_of({"c": {"unreachable": True}}) is None
