"""Parsing denied-egress lines captured from a real kernel (fixtures/denials/capture.sh)."""
import datetime
import json
import os
import subprocess
import sys

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
    assert top["count"] >= 2 and D.epoch(top["first"]) <= D.epoch(top["last"])
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


# ------------------------------------------------------------------- forwarded (container) denials
# fixtures/denials/capture-forward.sh: a container on docker0 sends TCP/UDP/ICMP over both families,
# routed (no PHYSIN) then with br_netfilter (PHYSIN=vethd0e2); then the host's uid 4242 one TCP SYN.
FORWARD_FILES = ["dmesg-forward-iso.log", "dmesg-forward-raw.log"]
HOST_ADDRESSES = {"198.18.210.1", "198.18.211.2", "fd00:d0e::1", "fd00:d0f::2"}
HOST_INTERFACES = {"lo", "docker0", "vethd0e2", "eth0"}


@pytest.mark.parametrize("name", FORWARD_FILES)
def test_forwarded_lines_parse_with_source_and_network(name):
    records, stats = D.collect(lines(name), PREFIX, boot_time=datetime.datetime(2026, 11, 29, 23, 31, 40, tzinfo=UTC))
    assert stats["lines"] == 13 and stats["matched"] == 13 and stats["malformed"] == 0
    forwarded = [r for r in records if r["direction"] == "forward"]
    assert len(forwarded) == 12
    assert sorted((r["family"], r["protocol"], r["dpt"]) for r in forwarded) == sorted(2 * [
        ("ipv4", "tcp", 443), ("ipv6", "tcp", 443), ("ipv4", "udp", 53), ("ipv6", "udp", 443),
        ("ipv4", "icmp", None), ("ipv6", "icmpv6", None)])
    for record in forwarded:
        assert record["network"] == "docker0" and record["out"] == "eth0"
        assert record["source"] == record["src"] == ("198.18.210.2" if record["family"] == "ipv4" else "fd00:d0e::2")
        assert record["dst"] == ("198.18.211.1" if record["family"] == "ipv4" else "fd00:d0f::1")
        assert record["uid"] is None and "gid" not in record
    # The routed pass has no bridge port; the br_netfilter pass has the container's veth, kept aside.
    assert [r["physin"] for r in forwarded] == 6 * [None] + 6 * ["vethd0e2"]
    local = [r for r in records if r["direction"] == "output"]
    assert [(r["src"], r["uid"], r["gid"], r["source"], r["network"], r["physin"]) for r in local] == [
        ("198.18.211.2", 4242, 4242, None, None, None)]


def test_forwarded_icmp_and_the_local_lines_of_capture_sh_have_a_direction():
    records, stats = D.collect(lines("dmesg-iso.log") + lines("dmesg-forward-iso.log"), PREFIX)
    assert {r["direction"] for r in records if r["src"].startswith(("198.18.77.", "fd00:a9e:77:"))} == {"output"}
    icmp = [r for r in records if r["direction"] == "forward" and r["protocol"].startswith("icmp")]
    assert {(r["family"], r["type"]) for r in icmp} == {("ipv4", 8), ("ipv6", 128)}
    assert all(r["destination_text"] == r["dst"] for r in icmp)  # no port: the bare address


def test_a_forwarded_line_never_gets_a_uid():
    line = [l for l in lines("dmesg-forward-raw.log") if "PHYSIN=" in l and "PROTO=TCP" in l][0]
    # A forwarded packet has no local socket; should a line still carry UID=/GID=, they are not a sender here.
    for text in (line, line + "UID=0 GID=0 ", line.replace("IN=docker0 ", "IN=docker0 UID=1000 GID=1000 ")):
        record = D.parse_record(D.split_line(text)[1], PREFIX)
        assert record["direction"] == "forward" and record["uid"] is None and "gid" not in record
    local = D.parse_record(D.split_line(lines("dmesg-forward-raw.log")[-1])[1], PREFIX)
    assert local["direction"] == "output" and local["uid"] == 4242


@pytest.mark.parametrize("local_interfaces,kept,other", [
    (HOST_INTERFACES, 13, 0),       # this host's bridge: its lines
    ({"lo", "eth0"}, 1, 12),        # docker0 is not ours: a nested host's rules logged them
    (None, 13, 0),                  # interfaces unknown: forwarded lines are kept
])
def test_local_filter_judges_forwarded_lines_by_their_interface(local_interfaces, kept, other):
    records, stats = D.collect(lines("dmesg-forward-iso.log"), PREFIX, local_addresses=HOST_ADDRESSES,
                               local_interfaces=local_interfaces)
    assert len(records) == kept and stats["other_hosts"] == other
    # A local denial is still judged by its source address.
    records, stats = D.collect(lines("dmesg-forward-iso.log"), PREFIX, local_addresses={"198.18.0.20"},
                               local_interfaces=local_interfaces)
    assert [r["direction"] for r in records] == ["forward"] * (kept - 1)


def test_mixed_local_and_forwarded_aggregation():
    forward = lines("dmesg-forward-iso.log")
    # A second container on the same bridge, to the same destination: a group of its own.
    other = [l.replace("SRC=198.18.210.2 ", "SRC=198.18.210.3 ") for l in forward if "PROTO=TCP" in l and "SRC=198" in l
             and "IN=docker0" in l][:1]
    records, stats = D.collect(forward + other + lines("dmesg-iso.log"), PREFIX)
    groups = D.aggregate(records)
    assert sum(g["count"] for g in groups) == len(records) == 13 + 1 + 8
    fwd = dict(((g["source"], g["network"], g["dst"], g["dpt"], g["protocol"]), g) for g in groups
               if g["direction"] == "forward")
    assert len(fwd) == 7  # 6 from 198.18.210.2 / fd00:d0e::2 (both passes: count 2), 1 from 198.18.210.3
    assert all(g["uid"] is None for g in fwd.values())
    tcp4 = fwd[("198.18.210.2", "docker0", "198.18.211.1", 443, "tcp")]
    assert tcp4["count"] == 2 and tcp4["sources"] == ["198.18.210.2"] and tcp4["destination_text"] == "198.18.211.1:443"
    assert fwd[("198.18.210.3", "docker0", "198.18.211.1", 443, "tcp")]["count"] == 1
    tcp6 = fwd[("fd00:d0e::2", "docker0", "fd00:d0f::1", 443, "tcp")]
    assert tcp6["destination_text"] == "[fd00:d0f::1]:443" and tcp6["family"] == "ipv6"
    # The host's own attempt at the same destination and port stays a per-uid group of its own.
    local = [g for g in groups if g["direction"] == "output" and g["dst"] == "198.18.211.1"]
    assert [(g["uid"], g["count"], g["source"], g["network"]) for g in local] == [(4242, 1, None, None)]
    # The local groups of capture.sh are grouped per uid as before.
    assert len([g for g in groups if g["direction"] == "output"]) == 1 + 8


@pytest.mark.parametrize("address,port,text", [
    ("198.18.0.66", 443, "198.18.0.66:443"), ("fd00::66", 443, "[fd00::66]:443"),
    ("fd00::66", None, "fd00::66"), ("198.18.0.66", None, "198.18.0.66"), ("::ffff:198.18.0.66", 0, "[::ffff:198.18.0.66]:0"),
])
def test_destination_text(address, port, text):
    assert D.destination_text(address, port) == text


def test_sender_text():
    records, stats = D.collect(lines("dmesg-forward-iso.log"), PREFIX)
    groups = D.aggregate(records)
    forward = [g for g in groups if g["direction"] == "forward" and g["family"] == "ipv6"]
    assert {D.sender_text(g) for g in forward} == {"container fd00:d0e::2 on docker0"}
    assert D.sender_text({"direction": "output", "uid": 1000, "user": "agent"}) == "agent (1000)"
    assert D.sender_text({"direction": "output", "uid": 4242, "user": None}) == "(4242)"
    assert D.sender_text({"direction": "output", "uid": 0, "user": "root"}) == "root (0)"
    assert D.sender_text({"direction": "output", "uid": None, "user": None}) == "(no owner)"


# ------------------------------------------------------------------------- the report's templates
def host_result(records):
    """What egress_denials returns for these records (users as this test names them)."""
    users = {4242: "agent"}
    D.mark_attempts(D.mark_canary(records))
    groups = D.aggregate(records)
    for group in groups:
        group["user"] = users.get(group["uid"])
        group["sender_text"] = D.sender_text(group)
    return {"changed": False, "denials": groups, "records": records, "timeline": D.timeline(records, 300),
            "window": {"start": None, "end": None, "bucket_seconds": 300},
            "total": len(records), "forwarded_total": sum(1 for r in records if r["direction"] == "forward"),
            "attempts": sum(1 for r in records if r["attempt"] and not r["canary"]),
            "forwarded_attempts": sum(1 for r in records if r["attempt"] and r["direction"] == "forward"),
            "canary_total": 0, "canary_attempts": 0,
            "log_limits": [{"family": "ipv4", "table": "filter", "chain": "AGENTGUARD-DENY", "limit": "10/min",
                            "burst": 20}], "log_limit_text": "10/min, burst 20",
            "source": "dmesg", "stats": {"lines": len(records), "matched": len(records), "malformed": 0,
                                         "other_hosts": 0, "older": 0, "no_time": 0},
            "refused_names": [], "refused_total": 0, "refused_distinct": 0, "dns_source": "none",
            "dns_stats": {"lines": 0, "queries": 0, "refused": 0, "malformed": 0, "foreign": 0, "older": 0,
                          "no_time": 0}}


@pytest.fixture(scope="module")
def rendered_report(tmp_path_factory):
    """playbooks/egress-report.yml, run as an operator runs it, for one host whose result is given:
    the collecting play matches no host (--limit localhost), so the report play reads the inventory's."""
    playbook_bin = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    if not os.path.exists(playbook_bin):
        pytest.skip("no ansible-playbook next to %s" % sys.executable)
    root = os.path.abspath(os.path.join(FIXTURES, "..", "..", "..", ".."))
    work = tmp_path_factory.mktemp("report")
    records, stats = D.collect(lines("dmesg-forward-iso.log") + lines("dmesg-iso.log"), PREFIX)
    localhost = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    agent = {"egress_report_host": host_result(records)}
    inventory = {"all": {"hosts": {"localhost": localhost}, "children": {"agents": {"hosts": {"agent-1": agent}}}}}
    (work / "inventory.json").write_text(json.dumps(inventory))
    out = work / "out"
    # Where this collection was imported from (ansible-test's tree, or .cache/collections: tests/conftest.py).
    collections = D.__file__.rsplit(os.sep + "ansible_collections" + os.sep, 1)[0]
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(root, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=collections)
    proc = subprocess.run([playbook_bin, "-i", str(work / "inventory.json"), "--limit", "localhost",
                           os.path.join(root, "playbooks", "egress-report.yml"), "-e", "egress_report_dir=%s" % out],
                          capture_output=True, text=True, env=env, cwd=root, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return dict((kind, (out / ("report." + kind)).read_text()) for kind in ("md", "html", "json"))


@pytest.mark.parametrize("kind", ["md", "html"])
def test_report_rows_say_who_sent_it(rendered_report, kind):
    text = rendered_report[kind]
    rows = text.splitlines() if kind == "md" else text.split("<tr>")  # an HTML row spans two lines
    # A forwarded denial: the container and its network, the IPv6 destination as [addr]:port.
    forwarded = [r for r in rows if "container fd00:d0e::2 on docker0" in r and "[fd00:d0f::1]:443" in r and "tcp" in r]
    assert forwarded, text
    assert [r for r in rows if "container 198.18.210.2 on docker0" in r and "198.18.211.1:53" in r]
    # A local one: the user and uid as before; IPv6 with a port bracketed there too.
    assert [r for r in rows if "agent (4242)" in r and "[fd00:a9e:77::66]:443" in r]
    assert [r for r in rows if "(no owner)" in r and "198.18.77.66:9999" in r]
    assert "fd00:d0f::1:443" not in text and "fd00:a9e:77::66:443" not in text


def test_report_summary_counts_forwarded_apart(rendered_report):
    md, html = rendered_report["md"], rendered_report["html"]
    assert "**21 denied attempt(s)** in 21 log line(s), 12 of them forwarded from container or VM networks" in md
    row = [r for r in md.splitlines() if r.startswith("| agent-1 |")][0]
    # exact denied packets (this result has no counters: not read), attempts, log lines, forwarded, canary,
    # tamper events, destinations (address and port: 198.18.211.1:443 is the container's and uid 4242's)
    assert row.split(" | ")[1:8] == ["not read", "21", "21", "12", "0", "0", "12"]
    # attempts, log lines, forwarded, canary, refused names; the destinations in the host's own section
    assert ('<td class="n">21</td><td class="n">21</td><td class="n">12</td><td class="n">0</td>'
            '<td class="n">0</td>') in html
    assert "12 destination(s)." in html
    report = json.loads(rendered_report["json"])
    assert report["hosts"]["agent-1"]["forwarded_total"] == 12
