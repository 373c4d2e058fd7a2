"""Where egress_denials reads (module_utils/_log_sources.py), on a fake host: which source `source: auto`
takes, dmesg's fallback, unreadable files named with their path, the resolver's log, the live rate
limits, the boot time and the since filter. No root, no journal, no command is run."""
import datetime
import errno
import io
import json
import os

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _log_sources as S
from ansible_collections.agentguard.hardening.plugins.module_utils._hostio import HostIO

from .conftest import fixture

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 25, 6, 0, 0, 123456, tzinfo=UTC)
BOOT = 1795581717  # 2026-11-25T04:41:57Z: dmesg-raw.log's seconds since boot land on dmesg-iso.log's times
PREFIX = "[EGRESS-DENIED] "
TLS_PREFIX = "[EGRESS-TLS] "
GATE_LOG = "/var/log/agentguard-tlsgate/access.log"
GUARD_STATUS = "/var/lib/agentguard/guard/status.json"
ISO = fixture("denials/dmesg-iso.log")
RAW = fixture("denials/dmesg-raw.log")
KERN = fixture("denials/kern-rfc3339.log")
IP = json.dumps([{"ifname": "agd-ns", "addr_info": [{"local": "198.18.77.2"}, {"local": "fd00:a9e:77::2"}]},
                 {"ifname": "lo", "addr_info": [{"local": "127.0.0.1"}, {"local": "not an address"}, {}]}])
OTHER_HOST = "2026-11-25T05:30:00,000000+00:00 %sIN= OUT=eth0 SRC=198.18.99.9 DST=198.18.77.66 PROTO=TCP SPT=1 DPT=443\n" % PREFIX


def journal(text):
    """`journalctl -k -o json` for the lines of a dmesg --time-format iso capture."""
    entries = []
    for line in text.splitlines():
        stamp, message = line.split(" ", 1)
        when = datetime.datetime.strptime(stamp[:26].replace(",", "."), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
        entries.append(json.dumps({"MESSAGE": message, "__REALTIME_TIMESTAMP": str(int(when.timestamp() * 10 ** 6))}))
    return "\n".join(entries) + "\n"


def ok(out):
    return lambda argv: (0, out, "")


def fails(err="Failed to open journal: Permission denied"):
    return lambda argv: (1, "", err + "\n")


class FakeHost(HostIO):
    """binaries: name -> answer(argv) -> (rc, out, err); files: path -> text, or an errno to fail with."""

    def __init__(self, binaries=None, files=None, users=None):
        self.binaries = dict({"ip": ok(IP)}, **(binaries or {}))
        self.files = dict({"/proc/stat": "cpu 1 2 3\nbtime %d\nprocesses 9\n" % BOOT}, **(files or {}))
        self.users = users or {}
        self.calls = []
        self.warnings = []
        HostIO.__init__(self, run=self._run, which=self._which, warn=self.warnings.append, open_text=self._open,
                        now=lambda: NOW, getpwuid=self._getpwuid)

    def _run(self, argv):
        self.calls.append(argv)
        return self.binaries[os.path.basename(argv[0])](argv)

    def _which(self, name):
        return "/usr/bin/" + name if name in self.binaries else None

    def _open(self, path):
        content = self.files.get(path, errno.ENOENT)
        if isinstance(content, int):
            raise OSError(content, os.strerror(content), path)
        return io.StringIO(content)

    def _getpwuid(self, uid):
        if uid not in self.users:
            raise KeyError(uid)
        return type("pw", (), {"pw_name": self.users[uid]})

    def ran(self, name):
        return [argv for argv in self.calls if os.path.basename(argv[0]) == name]


def params(**over):
    base = dict(prefix=PREFIX, source="auto", path="/var/log/kern.log", since=None, local_only=True, bucket_seconds=300,
                max_records=200, dns_source="none", dns_unit="agentguard-dns.service", dns_path="/var/log/syslog",
                dns_max_names=200, canary_source_port=30999, tls_log=GATE_LOG, tls_prefix=TLS_PREFIX, tls_max_refusals=200,
                guard_status=GUARD_STATUS)
    base.update(over)
    return base


def kernel(host, since=None, **over):
    return S.read_kernel_records(host, params(**over), since, NOW)


def dmesg(iso=ok(ISO), raw=ok(RAW)):
    return lambda argv: iso(argv) if "--time-format" in argv else raw(argv)


# ------------------------------------------------------------------------- source: auto
def test_auto_reads_the_journal_when_it_holds_our_lines():
    host = FakeHost({"journalctl": ok(journal(ISO)), "dmesg": dmesg()}, {"/var/log/kern.log": KERN})
    label, records, stats = kernel(host)
    assert label == "journal" and stats["matched"] == len(records) == 8
    assert host.ran("journalctl") == [["/usr/bin/journalctl", "-k", "-o", "json", "--no-pager", "-q"]]
    assert not host.ran("dmesg") and not host.warnings


def test_auto_without_journalctl_reads_the_file():
    host = FakeHost({"dmesg": dmesg()}, {"/var/log/kern.log": KERN})
    label, records, stats = kernel(host)
    assert label == "/var/log/kern.log" and len(records) == 8 and not host.ran("dmesg")


@pytest.mark.parametrize("answer", [ok(""), ok(journal("2026-11-25T05:20:26,879456+00:00 systemd[1]: Started x")),
                                    fails()], ids=["no lines", "no line with the prefix", "fails"])
def test_auto_passes_over_a_journal_without_our_lines_and_a_missing_file(answer):
    host = FakeHost({"journalctl": answer, "dmesg": dmesg()})
    label, records, stats = kernel(host)
    assert label == "dmesg" and len(records) == 8
    assert host.ran("journalctl") and host.ran("dmesg") == [["/usr/bin/dmesg", "--time-format", "iso"]]
    assert not host.warnings  # a source that is not there is normal for auto


def test_auto_keeps_a_source_whose_lines_are_all_older_or_of_other_hosts():
    """The journal holds our lines, only none to return: auto must not go on to an older file."""
    host = FakeHost({"journalctl": ok(journal(ISO + OTHER_HOST))}, {"/var/log/kern.log": KERN})
    since = datetime.datetime(2026, 11, 25, 5, 29, tzinfo=UTC)
    label, records, stats = kernel(host, since=since)
    assert label == "journal" and records == []
    assert stats["older"] == 8 and stats["other_hosts"] == 1
    assert host.ran("journalctl")[0][-2:] == ["--since", "2026-11-25 05:29:00 UTC"]


def test_auto_with_no_readable_source_says_so():
    host = FakeHost({"journalctl": fails(), "dmesg": dmesg(iso=fails("x"), raw=fails("dmesg: read kernel buffer failed"))},
                    {"/var/log/kern.log": errno.EACCES})
    assert kernel(host) == ("none", [], {"lines": 0, "matched": 0, "malformed": 0, "other_hosts": 0, "older": 0,
                                         "no_time": 0})
    assert host.warnings == ["no kernel log could be read, so no denial is reported: journal (journalctl exited 1: "
                             "Failed to open journal: Permission denied), /var/log/kern.log (Permission denied), "
                             "dmesg (dmesg exited 1: dmesg: read kernel buffer failed)"]


def test_auto_with_readable_but_empty_sources_is_none_without_a_warning():
    host = FakeHost({"journalctl": ok(""), "dmesg": dmesg(iso=ok(""))}, {"/var/log/kern.log": ""})
    assert kernel(host)[0] == "none" and not host.warnings


# ------------------------------------------------------------------------- one source asked for
def test_dmesg_without_time_format_falls_back_to_seconds_since_boot():
    host = FakeHost({"dmesg": dmesg(iso=fails("dmesg: unrecognized option '--time-format'"))})
    label, records, stats = kernel(host, source="dmesg")
    assert host.ran("dmesg") == [["/usr/bin/dmesg", "--time-format", "iso"], ["/usr/bin/dmesg"]]
    assert label == "dmesg" and len(records) == 8 and stats["no_time"] == 0
    # The boot time from /proc/stat dates the raw lines: the same times as the ISO capture's, to the second.
    iso_times = sorted(r["time"][:19] for r in kernel(FakeHost({"dmesg": dmesg()}), source="dmesg")[1])
    assert sorted(r["time"][:19] for r in records) == iso_times


def test_raw_dmesg_without_a_boot_time_keeps_its_lines_untimed():
    host = FakeHost({"dmesg": dmesg(iso=fails())}, {"/proc/stat": errno.ENOENT})
    label, records, stats = kernel(host, source="dmesg", since=NOW - datetime.timedelta(hours=1))
    assert stats["no_time"] == 8 and all(r["time"] is None for r in records)


@pytest.mark.parametrize("source, host, message", [
    ("journal", FakeHost(), "cannot read journal (no journalctl on this host)"),
    ("journal", FakeHost({"journalctl": fails()}),
     "cannot read journal (journalctl exited 1: Failed to open journal: Permission denied)"),
    ("file", FakeHost(), "cannot read /var/log/kern.log (No such file or directory)"),
    ("file", FakeHost(files={"/var/log/kern.log": errno.EACCES}), "cannot read /var/log/kern.log (Permission denied)"),
    ("dmesg", FakeHost(), "cannot read dmesg (no dmesg on this host)"),
    ("dmesg", FakeHost({"dmesg": dmesg(iso=fails(), raw=fails("dmesg: read kernel buffer failed: Operation not permitted"))}),
     "cannot read dmesg (dmesg exited 1: dmesg: read kernel buffer failed: Operation not permitted)"),
])
def test_a_source_asked_for_that_cannot_be_read_fails_naming_it(source, host, message):
    with pytest.raises(S.Failure) as info:
        kernel(host, source=source)
    assert str(info.value) == message


def test_a_source_asked_for_is_kept_even_without_lines():
    host = FakeHost({"journalctl": ok(""), "dmesg": dmesg()})
    assert kernel(host, source="journal") == ("journal", [], {"lines": 0, "matched": 0, "malformed": 0,
                                                              "other_hosts": 0, "older": 0, "no_time": 0})
    assert not host.ran("dmesg")


def test_the_path_option_names_the_file():
    host = FakeHost(files={"/srv/log/kernel": KERN})
    assert kernel(host, source="file", path="/srv/log/kernel")[0] == "/srv/log/kernel"


def test_real_files_only_regular_ones_are_opened(tmp_path):
    plain = tmp_path / "kern.log"
    plain.write_bytes(b"caf\xe9 line\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    host = HostIO(run=None, which=None, warn=None)
    assert S.file_lines(host, str(plain)) == [u"caf\ufffd line"]
    for path, why in ((tmp_path, "not a regular file"), (fifo, "not a regular file"),
                      (tmp_path / "missing", "No such file or directory")):
        with pytest.raises(S.Unreadable) as info:
            S.file_lines(host, str(path))
        assert str(info.value) == "%s (%s)" % (path, why)


# ------------------------------------------------------------------------- this host
def test_local_only_keeps_this_hosts_lines_and_warns_when_it_cannot_tell():
    lines = ISO + OTHER_HOST
    host = FakeHost({"dmesg": dmesg(iso=ok(lines))})
    label, records, stats = kernel(host, source="dmesg")
    assert len(records) == 8 and stats["other_hosts"] == 1 and not host.warnings
    for binaries, why in (({}, "no ip on this host"), ({"ip": fails("RTNETLINK answers: Operation not permitted")},
                                                       "ip exited 1: RTNETLINK answers: Operation not permitted"),
                          ({"ip": ok("not json")}, "ip -j printed no JSON")):
        host = FakeHost(dict({"dmesg": dmesg(iso=ok(lines))}, **binaries))
        if not binaries:
            del host.binaries["ip"]
        label, records, stats = kernel(host, source="dmesg")
        assert len(records) == 9 and stats["other_hosts"] == 0
        assert len(host.warnings) == 1 and host.warnings[0].startswith("cannot list this host's addresses (" + why)
        assert host.warnings[0].endswith("; records of every host are returned")
    host = FakeHost({"dmesg": dmesg(iso=ok(lines))})
    assert len(kernel(host, source="dmesg", local_only=False)[1]) == 9 and not host.ran("ip")


def test_local_links_reads_addresses_and_interfaces():
    assert S.local_links(FakeHost()) == ({"198.18.77.2", "fd00:a9e:77::2", "127.0.0.1"}, {"agd-ns", "lo"})


def test_boot_time_from_proc_stat():
    assert S.boot_time(FakeHost()) == datetime.datetime(2026, 11, 25, 4, 41, 57, tzinfo=UTC)
    assert S.boot_time(FakeHost(files={"/proc/stat": "cpu 1\n"})) is None
    assert S.boot_time(FakeHost(files={"/proc/stat": "btime soon\n"})) is None


def test_user_names_come_from_the_injected_lookup():
    host = FakeHost(users={4242: "agent"})
    assert [host.user_name(uid) for uid in (4242, 0, None)] == ["agent", None, None]


# ------------------------------------------------------------------------- the resolver's log
DNS_JOURNAL = fixture("denials/dnsmasq-2.90-journal.json")
DNS_SYSLOG = fixture("denials/dnsmasq-2.90-syslog.log")


def unit_journal(lines=ok(DNS_JOURNAL), last=ok("")):
    """journalctl -u: the unit's entries; with -n 1 (the existence probe of a host without systemctl) `last`."""
    return lambda argv: last(argv) if "-n" in argv else lines(argv)


def dns(host, since=None, **over):
    return S.read_dns(host, params(**over), since)


def test_dns_none_and_file():
    assert dns(FakeHost({"journalctl": unit_journal()}), dns_source="none") == ("none", [])
    host = FakeHost(files={"/var/log/syslog": DNS_SYSLOG})
    assert dns(host, dns_source="file") == ("/var/log/syslog", DNS_SYSLOG.splitlines())
    with pytest.raises(S.Unreadable) as info:
        dns(FakeHost(), dns_source="file", dns_path="/var/log/daemon.log")
    assert str(info.value) == "/var/log/daemon.log (No such file or directory)"


@pytest.mark.parametrize("binaries, label", [
    ({}, "none"),  # no journal at all: pinned mode on a host without systemd
    ({"journalctl": unit_journal(), "systemctl": ok("loaded\n")}, "journal"),
    ({"journalctl": unit_journal(last=ok("started, version 2.90\n")), "systemctl": ok("not-found\n")}, "journal"),
    ({"journalctl": unit_journal(last=ok("started, version 2.90\n"))}, "journal"),
    ({"journalctl": unit_journal(), "systemctl": ok("not-found\n")}, "none"),
    ({"journalctl": unit_journal(last=fails()), "systemctl": fails()}, "none"),
], ids=["no journalctl", "unit loaded", "unit gone, journal has it", "no systemctl, journal has it", "unknown unit",
        "nothing answers"])
def test_dns_auto_reads_the_units_journal_only_when_the_unit_is_known(binaries, label):
    host = FakeHost(binaries)
    found, lines = dns(host, dns_source="auto")
    assert found == label
    assert lines == (DNS_JOURNAL.splitlines() if label == "journal" else [])
    reads = [argv for argv in host.ran("journalctl") if "-n" not in argv]
    assert len(reads) == (1 if label == "journal" else 0)
    if reads:
        assert reads[0][1:4] == ["-u", "agentguard-dns.service", "-o"]


def test_dns_auto_warns_when_the_known_units_journal_fails():
    host = FakeHost({"journalctl": unit_journal(lines=fails()), "systemctl": ok("loaded\n")})
    assert dns(host, dns_source="auto") == ("none", [])
    assert host.warnings == ["cannot read the journal of agentguard-dns.service: Failed to open journal: Permission denied"]


@pytest.mark.parametrize("binaries, why", [
    ({}, "no journalctl on this host"),
    ({"journalctl": unit_journal(lines=fails())}, "journalctl exited 1: Failed to open journal: Permission denied"),
])
def test_dns_journal_asked_for_that_cannot_be_read_fails(binaries, why):
    host = FakeHost(binaries)
    with pytest.raises(S.Unreadable) as info:
        dns(host, dns_source="journal")
    assert str(info.value) == "journal (%s)" % why
    with pytest.raises(S.Failure) as info:
        S.refused_names(host, params(dns_source="journal"), None, NOW)
    assert str(info.value) == "cannot read the resolver's log from journal (%s)" % why


def test_dns_journal_is_read_from_since_on_and_counted():
    host = FakeHost({"journalctl": unit_journal()})
    since = datetime.datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
    result = S.refused_names(host, params(dns_source="journal", dns_max_names=2), since, NOW)
    assert host.ran("journalctl")[-1][-2:] == ["--since", "2026-11-25 07:00:00 UTC"]
    assert result["dns_source"] == "journal" and result["refused_total"] == 16 and result["refused_distinct"] == 14
    assert len(result["refused_names"]) == 2 and result["dns_stats"]["queries"] == 24


# ------------------------------------------------------------------------- the live rate limits
def test_limits_of_both_families_and_a_family_that_cannot_be_read_left_out():
    saves = {"iptables-save": ok(fixture("managed-nft.v4")), "ip6tables-save": ok(fixture("managed-nft.v6"))}
    limits = S.read_limits(FakeHost(saves), PREFIX)
    assert [(item["family"], item["chain"], item["limit"], item["burst"]) for item in limits] == [
        ("ipv4", "AGENTGUARD-DENY", "10/min", 20), ("ipv6", "AGENTGUARD-DENY", "10/min", 20)]
    # A save that fails is not read, even the part it printed.
    saves["ip6tables-save"] = lambda argv: (1, fixture("managed-nft.v6"), "ip6tables-save: cannot initialize\n")
    assert [item["family"] for item in S.read_limits(FakeHost(saves), PREFIX)] == ["ipv4"]
    assert S.read_limits(FakeHost(), PREFIX) == []


# ------------------------------------------------------------------------- the whole result
def test_result_window_and_since_filter():
    host = FakeHost({"dmesg": dmesg()}, users={4242: "agent"})
    result = S.denials_result(host, params(source="dmesg", since="30m", bucket_seconds=60))
    assert result["window"] == {"start": "2026-11-25T05:30:00Z", "end": "2026-11-25T06:00:00Z", "bucket_seconds": 60}
    assert result["total"] == 0 and result["stats"]["older"] == 8  # the capture is from 05:20
    result = S.denials_result(host, params(source="dmesg", since="2026-11-25T05:20:28Z"))
    assert result["window"]["start"] == "2026-11-25T05:20:28Z"
    assert result["stats"]["older"] + result["total"] == 8 and 0 < result["total"] < 8
    assert all(record["time"] >= "2026-11-25T05:20:28" for record in result["records"])
    result = S.denials_result(host, params(source="dmesg"))
    assert result["window"]["start"] is None and result["total"] == 8
    assert {(group["uid"], group["user"]) for group in result["denials"]} == {(4242, "agent"), (0, None), (None, None)}
    assert result["source"] == "dmesg" and result["dns_source"] == "none" and result["log_limits"] == []


@pytest.mark.parametrize("over, message", [
    (dict(prefix=""), "prefix: '' must be the non-empty log prefix of the deny rules"),
    (dict(bucket_seconds=0), "bucket_seconds must be at least 1, max_records, dns_max_names and tls_max_refusals at "
                             "least 0 (got 0, 200, 200, 200)"),
    (dict(max_records=-1), "(got 300, -1, 200, 200)"),
    (dict(dns_max_names=-1), "(got 300, 200, -1, 200)"),
    (dict(tls_max_refusals=-1), "(got 300, 200, 200, -1)"),
    (dict(tls_prefix=""), "tls_prefix: '' must be the non-empty log prefix of the TLS gate's redirect rules"),
    (dict(canary_source_port=65536), "canary_source_port must be a port (0 for none), got 65536"),
    (dict(since="yesterday"), "since: 'yesterday' is not a time"),
])
def test_bad_options_fail_before_anything_is_read(over, message):
    host = FakeHost({"dmesg": dmesg(), "journalctl": ok("")})
    with pytest.raises(S.Failure) as info:
        S.denials_result(host, params(**over))
    assert message in str(info.value)
    assert host.calls == []


def test_a_kernel_source_that_fails_stops_before_the_resolvers_log_is_read():
    journalctl = unit_journal(lines=lambda argv: fails()(argv) if "-k" in argv else ok(DNS_JOURNAL)(argv))
    host = FakeHost({"systemctl": ok("loaded\n"), "journalctl": journalctl})
    with pytest.raises(S.Failure) as info:
        S.denials_result(host, params(source="journal", dns_source="auto"))
    assert str(info.value).startswith("cannot read journal (journalctl exited 1")
    assert not host.ran("systemctl") and [argv[1] for argv in host.ran("journalctl")] == ["-k"]


def test_result_counts_and_the_newest_records():
    forward = fixture("denials/dmesg-forward-iso.log")
    routed = sum(1 for line in forward.splitlines() if PREFIX + "IN= " not in line)  # the rest is the host's own
    host = FakeHost({"dmesg": dmesg(ok(forward + ISO))})
    result = S.denials_result(host, params(source="dmesg", local_only=False, max_records=2, canary_source_port=37986))
    assert result["total"] == result["stats"]["matched"] > 8
    assert [r["time"] for r in result["records"]] == sorted(r["time"] for r in result["records"])
    assert result["records"][-1]["time"].startswith("2026-11-29T") and len(result["records"]) == 2
    assert result["canary_total"] == 1 and result["forwarded_total"] == routed
    assert result["attempts"] == sum(group["attempts"] for group in result["denials"] if not group["canary"])
    assert S.denials_result(host, params(source="dmesg", local_only=False, max_records=0))["records"] == []


# ------------------------------------------------------------------------- the TLS gate's log
def gate_line(when, client, port, sni, reason, status=500, offset="+00:00"):
    upstream = '"198.18.0.10:443"' if status == 200 else '"-"'
    return ('time=%s%s client=%s:%d listen=10443 sni="%s" reason=%s status=%d upstream=%s bytes=517/0'
            % (when, offset, client, port, sni, reason, status, upstream))


def tls_kernel(when, src, spt, dst, uid=None, inside=""):
    owner = " UID=%d GID=%d" % (uid, uid) if uid is not None else ""
    return ("%s,000000+00:00 %sIN=%s OUT=eth0 SRC=%s DST=%s LEN=60 TTL=64 PROTO=TCP SPT=%d DPT=443 SYN%s"
            % (when, TLS_PREFIX, inside, src, dst, spt, owner))


GATE = "\n".join([
    gate_line("2026-11-25T05:50:00", "198.18.77.2", 40001, "cotenant.cdn.lab", "not-allowed"),
    # the same refusal again, from another port, with the time in another zone (06:51 at +01:00 = 05:51Z)
    gate_line("2026-11-25T06:51:00", "198.18.77.2", 40002, "cotenant.cdn.lab", "not-allowed", offset="+01:00"),
    gate_line("2026-11-25T05:52:00", "198.18.77.2", 40003, "api.openclaw.security", "allowed", status=200),
    gate_line("2026-11-25T05:53:00", "198.18.240.2", 40004, "", "no-sni"),
    gate_line("2026-11-25T05:54:00", "198.18.77.2", 40005, "198.18.0.66", "ip-literal"),   # no kernel line
    gate_line("2026-11-25T05:55:00", "198.18.77.2", 40006, "other.cdn.lab", "would-refuse-sni", status=200),
    gate_line("2026-11-25T04:00:00", "198.18.77.2", 40007, "old.cdn.lab", "not-allowed"),   # before since
]) + "\n"
TLS_DMESG = "\n".join([
    tls_kernel("2026-11-25T05:50:00", "198.18.77.2", 40001, "198.18.0.10", uid=4242),
    tls_kernel("2026-11-25T05:51:00", "198.18.77.2", 40002, "198.18.0.10", uid=4242),
    tls_kernel("2026-11-25T05:52:00", "198.18.77.2", 40003, "198.18.0.10", uid=4242),
    tls_kernel("2026-11-25T05:53:00", "198.18.240.2", 40004, "198.18.0.10", inside="docker0"),
    tls_kernel("2026-11-25T05:55:00", "198.18.77.2", 40006, "198.18.0.10", uid=0),
]) + "\n"


def test_no_gate_log_means_no_gate():
    host = FakeHost({"dmesg": dmesg(ok(ISO))})
    result = S.denials_result(host, params(source="dmesg"))
    assert (result["tls_source"], result["tls_refusals"], result["tls_refused_total"]) == ("none", [], 0)
    assert S.denials_result(host, params(source="dmesg", tls_log=""))["tls_source"] == "none"


def test_gate_refusals_are_joined_to_their_kernel_lines_and_grouped():
    host = FakeHost({"dmesg": dmesg(ok(ISO + TLS_DMESG))}, files={GATE_LOG: GATE}, users={4242: "agent", 0: "root"})
    since = datetime.datetime(2026, 11, 25, 5, 0, tzinfo=UTC)
    S.read_kernel_records(host, params(source="dmesg", local_only=False), since, NOW)   # fills the kernel cache
    result = S.tls_refusals(host, params(source="dmesg"), since, NOW)
    groups = {(g["sni"], g["reason"]): g for g in result["tls_refusals"]}
    assert set(groups) == {("cotenant.cdn.lab", "not-allowed"), ("", "no-sni"), ("198.18.0.66", "ip-literal"),
                           ("other.cdn.lab", "would-refuse-sni")}
    cotenant = result["tls_refusals"][0]
    assert (cotenant["sni"], cotenant["count"], cotenant["passed"]) == ("cotenant.cdn.lab", 2, 0)
    assert (cotenant["uid"], cotenant["user"], cotenant["sender_text"]) == (4242, "agent", "agent (4242)")
    assert cotenant["destination_text"] == "198.18.0.10:443" and cotenant["direction"] == "output"
    assert (cotenant["first"], cotenant["last"]) == ("2026-11-25T05:50:00Z", "2026-11-25T05:51:00Z")
    container = groups[("", "no-sni")]
    assert container["sender_text"] == "container 198.18.240.2 on docker0" and container["uid"] is None
    unlogged = groups[("198.18.0.66", "ip-literal")]
    assert unlogged["uid"] is None and unlogged["dst"] is None and unlogged["sender_text"].startswith("unknown")
    assert groups[("other.cdn.lab", "would-refuse-sni")]["passed"] == 1
    assert (result["tls_refused_total"], result["tls_would_refuse_total"]) == (4, 1)
    assert result["tls_stats"] == {"lines": 7, "connections": 6, "unlogged": 1}
    assert result["tls_source"] == GATE_LOG


def test_the_whole_result_carries_the_gate_section_from_the_chosen_kernel_source():
    host = FakeHost({"journalctl": ok(journal(ISO + TLS_DMESG))}, files={GATE_LOG: GATE}, users={4242: "agent"})
    result = S.denials_result(host, params(source="journal", local_only=False, tls_max_refusals=1))
    assert [g["sni"] for g in result["tls_refusals"]] == ["cotenant.cdn.lab"]
    assert result["tls_refusals"][0]["user"] == "agent" and result["tls_refused_total"] == 5   # no since: all


def test_an_unreadable_gate_log_fails_naming_it():
    host = FakeHost({"dmesg": dmesg(ok(ISO))}, files={GATE_LOG: errno.EACCES})
    with pytest.raises(S.Failure) as info:
        S.denials_result(host, params(source="dmesg"))
    assert str(info.value) == "cannot read the TLS gate's log %s (Permission denied)" % GATE_LOG
