"""Exact denial counts and the Prometheus text of module_utils/_metrics.py.

The counter fixtures (counters-<mode>-<backend>.v4/.v6/.ipset) are `iptables-save -c` of real kernels, both
iptables backends, after capture-counters.sh sent a known number of denied UDP datagrams: 7 (IPv4) and 5
(IPv6) from the host itself, 3 and 2 from a container namespace through it. The rendered text is checked by
the real `promtool check metrics` (Debian's prometheus package)."""
import json
import os
import re
import subprocess

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _metrics as M
from ansible_collections.agentguard.hardening.plugins.module_utils import _state as S

from .conftest import fixture
from .test_log_sources import FakeHost, ok

SENT = {("ipv4", "output"): 7, ("ipv6", "output"): 5, ("ipv4", "forward"): 3, ("ipv6", "forward"): 2}
BACKENDS = ["nft", "legacy"]
MODES = ["enforce", "audit"]


def counters(mode, backend, family):
    return fixture("counters-%s-%s.%s" % (mode, backend, "v4" if family == "ipv4" else "v6"))


# ------------------------------------------------------------------------- exact counts
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_deny_counts_are_the_packets_sent(backend, mode, family):
    counts = M.deny_counts(counters(mode, backend, family))
    assert sorted(counts) == ["forward", "output"]
    for path in ("output", "forward"):
        assert counts[path]["packets"] == SENT[(family, path)], (path, counts)
        assert counts[path]["mode"] == mode
        # UDP datagrams of one byte: IP header + UDP header + 1.
        assert counts[path]["bytes"] == SENT[(family, path)] * (29 if family == "ipv4" else 49)


def test_the_log_rule_is_not_counted():
    """The LOG rule sees every denied packet too: counting it would double the total."""
    text = counters("enforce", "nft", "ipv4")
    assert re.search(r"^\[7:203\] -A AGENTGUARD-DENY .*-j LOG", text, re.M)
    broken = re.sub(r"^\[7:203\] (-A AGENTGUARD-DENY -j REJECT)", r"[0:0] \1", text, flags=re.M)
    assert M.deny_counts(broken)["output"]["packets"] == 0


def test_without_our_chains_nothing_is_counted():
    assert M.deny_counts("") == {}
    counts = M.deny_counts(fixture("managed-legacy.v4"))  # no -c: the host path without counters, no forward path
    assert counts == {"output": {"packets": 0, "bytes": 0, "mode": "enforce"}}


def test_parse_save_hands_out_the_counters_of_every_rule():
    found = []
    tables = S.parse_save(counters("enforce", "legacy", "ipv4"), counters=found)
    assert len(found) == sum(len(t.rules) for t in tables.values())
    assert ("mangle", "AGENTGUARD-FWD-DENY", "-j DROP", 3, 87) in found
    with pytest.raises(S.ParseError, match="bad counters"):
        S.parse_save("*filter\n[x:1] -A OUTPUT -j ACCEPT\nCOMMIT\n", counters=[])


@pytest.mark.parametrize("backend", BACKENDS)
def test_allowlisted_addresses_count_rules_and_set_members(backend):
    sets = S.parse_ipset_save(fixture("counters-enforce-%s.ipset" % backend))
    # IPv4: the resolver (its user's DNS), inference-api (a set), rates, time; IPv6: resolver, inference-api, mirror.
    assert M.allowlisted(counters("enforce", backend, "ipv4"), sets) == 4
    assert M.allowlisted(counters("enforce", backend, "ipv6"), sets) == 3
    assert M.allowlisted(counters("enforce", backend, "ipv4"), {}) == 3  # the set's member unknown


# ------------------------------------------------------------------------- a sample from a host
GATE_LINES = [
    'time=2026-12-05T10:00:0%d+00:00 client=127.0.0.1:4000%d listen=10443 sni="%s" reason=%s status=%s upstream="-" '
    "bytes=0/0" % (n, n, sni, reason, status)
    for n, (sni, reason, status) in enumerate([("a.test", "not-allowed", 500), ("", "no-sni", 500),
                                               ("api.test", "allowed", 200), ("x.test", "not-allowed", 500)])]


def dns_journal(refused, cursor):
    entries = []
    for n, name in enumerate(refused):
        when = str(1795600000000000 + n)
        entries.append({"MESSAGE": "%d 127.0.0.1/5000%d query[A] %s from 127.0.0.1" % (n + 1, n, name),
                        "SYSLOG_IDENTIFIER": "dnsmasq", "_PID": "7", "__REALTIME_TIMESTAMP": when, "__CURSOR": cursor + "q%d" % n})
        entries.append({"MESSAGE": "%d 127.0.0.1/5000%d config %s is NXDOMAIN" % (n + 1, n, name),
                        "SYSLOG_IDENTIFIER": "dnsmasq", "_PID": "7", "__REALTIME_TIMESTAMP": when, "__CURSOR": cursor + "r%d" % n})
    return "".join(json.dumps(e) + "\n" for e in entries)


class Host(FakeHost):
    def __init__(self, mode="enforce", backend="nft", dns=None, gate=None, **kw):
        saves = {"iptables-save": ok(counters(mode, backend, "ipv4")), "ip6tables-save": ok(counters(mode, backend, "ipv6")),
                 "ipset": ok(fixture("counters-%s-%s.ipset" % (mode, backend)))}
        if dns is not None:
            saves["journalctl"] = dns
        saves.update(kw.pop("binaries", {}))
        FakeHost.__init__(self, saves, {M.TLS_LOG: gate} if gate is not None else {}, **kw)


STATUS = {"started": 1795600000, "tamper_events_total": 3, "last_restore_timestamp": 1795600100.25,
          "last_restore_seconds": 0.183, "last_open_seconds": 0.412, "restore_failures_total": 1,
          "policy_hash": "sha256:0f1e2d", "applied_timestamp": 1795599000, "in_sync": True,
          "tamper_events": [{"kind": "output-jump", "family": "ipv4", "table": "filter", "count": 2},
                            {"kind": "ipset", "family": "ipv6", "table": "ipset", "count": 1},
                            {"kind": "something new", "family": "ipv6", "table": "raw", "count": 4}]}


def test_a_sample_reads_the_counters_sets_resolver_and_gate():
    answers = [dns_journal(["exfil.attacker.test", "b.test"], "c1"), dns_journal(["c.test"], "c2"), ""]
    host = Host(dns=lambda argv: (0, answers.pop(0), ""), gate="\n".join(GATE_LINES[:2]) + "\n")
    state = {}
    sample = M.collect_sample(host, STATUS, state, now=1795600200)
    assert sorted((d["family"], d["path"], d["packets"]) for d in sample["denied"]) == sorted(
        (f, p, n) for (f, p), n in SENT.items())
    assert sample["allowlisted"] == {"ipv4": 4, "ipv6": 3}
    assert sample["dns_refused"] == 2 and sample["tls_refused"]["not-allowed"] == 1
    assert sample["tls_refused"]["no-sni"] == 1
    assert host.ran("journalctl")[0][-2:] == ["--since", "@1795600000"]
    assert host.ran("iptables-save")[0][1:] == ["-c"]
    # The next sample reads only what is new: after the journal's cursor, after the gate log's offset.
    host.files[M.TLS_LOG] = "\n".join(GATE_LINES) + "\n"
    sample = M.collect_sample(host, STATUS, state, now=1795600260)
    assert host.ran("journalctl")[1][-2:] == ["--after-cursor", "c1r1"]
    assert sample["dns_refused"] == 3
    assert sample["tls_refused"]["not-allowed"] == 2 and sample["tls_refused"]["no-sni"] == 1
    # A rotated (shorter) gate log is read from its start.
    host.files[M.TLS_LOG] = GATE_LINES[3] + "\n"
    assert M.collect_sample(host, STATUS, state)["tls_refused"]["not-allowed"] == 3


def test_a_sample_says_which_source_could_not_be_read():
    host = Host(binaries={"ip6tables-save": lambda argv: (1, "", "ip6tables-save: permission denied")})
    del host.binaries["ipset"]
    sample = M.collect_sample(host, {})
    assert sample["sources"] == {"iptables-save": True, "ip6tables-save": False, "ipset": False}
    assert [d["family"] for d in sample["denied"]] == ["ipv4", "ipv4"]
    assert sample["allowlisted"] == {} and sample["dns_refused"] is None and sample["tls_refused"] is None
    assert sample["errors"] == ["ipv6: ip6tables-save -c exited 1: ip6tables-save: permission denied"]
    text = M.render(sample)
    assert 'agentguard_egress_metrics_source_up{source="ip6tables-save"} 0' in text
    assert "agentguard_guard_start_time_seconds" not in text  # no status: no guard figures


# ------------------------------------------------------------------------- rendering
def full_sample(mode="enforce"):
    host = Host(mode=mode, dns=lambda argv: (0, dns_journal(["a.test"], "c"), ""), gate="\n".join(GATE_LINES) + "\n")
    return M.collect_sample(host, STATUS, {}, now=1795600200)


def metric_lines(text):
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_render_names_types_and_values():
    text = M.render(full_sample())
    assert 'agentguard_egress_denied_packets_total{family="ipv4",path="output"} 7' in text
    assert 'agentguard_egress_denied_packets_total{family="ipv6",path="forward"} 2' in text
    assert 'agentguard_egress_denied_bytes_total{family="ipv4",path="forward"} 87' in text
    assert 'agentguard_egress_audit_mode{family="ipv4",path="output"} 0' in text
    assert "# TYPE agentguard_egress_denied_packets_total counter" in text
    assert "reset when the rules are reloaded" in text
    assert 'agentguard_egress_allowlisted_addresses{family="ipv6"} 3' in text
    assert 'agentguard_egress_policy_info{policy_hash="sha256:0f1e2d"} 1' in text
    assert "agentguard_egress_policy_applied_timestamp_seconds 1795599000" in text
    assert "agentguard_egress_policy_in_sync 1" in text
    assert "agentguard_guard_up 1" in text
    assert "agentguard_guard_tamper_events_total 3" in text
    assert 'agentguard_guard_tamper_differences_total{kind="output-jump",family="ipv4",table="filter"} 2' in text
    # Unknown kinds and tables never make new label values.
    assert 'agentguard_guard_tamper_differences_total{kind="other",family="ipv6",table="other"} 4' in text
    assert "agentguard_guard_last_restore_timestamp_seconds 1795600100.25" in text
    assert "agentguard_guard_last_restore_duration_seconds 0.183" in text
    assert "agentguard_guard_last_open_duration_seconds 0.412" in text
    assert "agentguard_guard_restore_failures_total 1" in text
    assert "agentguard_egress_dns_refused_queries_total 1" in text
    assert 'agentguard_egress_tls_refused_connections_total{reason="not-allowed"} 2' in text
    assert 'agentguard_egress_tls_refused_connections_total{reason="no-sni"} 1' in text
    assert 'agentguard_egress_audit_mode{family="ipv4",path="output"} 1' in M.render(full_sample("audit"))


def test_labels_are_bounded():
    """No label carries an address, a name or a user: only these values can ever appear."""
    allowed = {"family": {"ipv4", "ipv6", "other"}, "path": {"output", "forward"}, "kind": set(M.TAMPER_KINDS),
               "table": set(M.TAMPER_TABLES), "reason": set(M.TLS_REASONS),
               "source": {"iptables-save", "ip6tables-save", "ipset"}}
    for line in metric_lines(M.render(full_sample())):
        for key, value in re.findall(r'(\w+)="([^"]*)"', line):
            if key == "policy_hash":
                continue
            assert value in allowed[key], line


def test_every_metric_has_help_and_type_once_and_no_timestamps():
    text = M.render(full_sample())
    names = [name for name, kind, help_text in M.METRICS]
    for name in names:
        assert text.count("# TYPE %s " % name) == 1, name
        assert text.count("# HELP %s " % name) == 1, name
    for line in metric_lines(text):
        assert len(line.rsplit(" ", 1)) == 2 and "}" not in line.rsplit(" ", 1)[1]  # value only, no timestamp
        name = re.match(r"[a-z_]+", line).group(0)
        kind = dict((n, k) for n, k, h in M.METRICS)[name]
        assert name.endswith("_total") == (kind == "counter"), name


def test_promtool_accepts_the_text(promtool):
    for sample in (full_sample(), full_sample("audit"), M.collect_sample(Host(), {})):
        text = M.render(sample)
        proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
        assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr + text


def test_promtool_would_refuse_a_broken_text(promtool):
    """The check above can fail: a counter without _total is what promtool reports."""
    text = M.render(full_sample()).replace("agentguard_egress_denied_packets_total", "agentguard_egress_denied_packets")
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert proc.returncode != 0 or "counter metrics should have" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------- the file
def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / M.FILE_NAME)
    M.write_atomic(path, "a 1\n")
    M.write_atomic(path, "a 2\n")
    with open(path) as handle:
        assert handle.read() == "a 2\n"
    assert os.listdir(str(tmp_path)) == [M.FILE_NAME]
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / M.FILE_NAME)
    M.write_atomic(path, "a 1\n")

    def broken(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(M.os, "fsync", broken)
    with pytest.raises(OSError):
        M.write_atomic(path, "a 2\n")
    with open(path) as handle:
        assert handle.read() == "a 1\n"
    assert os.listdir(str(tmp_path)) == [M.FILE_NAME]


def test_write_guard_metrics_is_what_the_guard_calls(tmp_path):
    """One call for a guard: sample, render, write (_guard.metrics_writer does the same three steps)."""
    state = {}
    text = M.write_guard_metrics(str(tmp_path), STATUS, host=Host(), state=state)
    with open(str(tmp_path / M.FILE_NAME)) as handle:
        assert handle.read() == text
    assert "agentguard_guard_tamper_events_total 3" in text
    assert set(M.METRICS_FILES) >= {"_metrics.py", "_state.py"}
    for name in M.METRICS_FILES:
        assert os.path.exists(os.path.join(os.path.dirname(M.__file__), name))


def test_the_guard_imports_only_what_metrics_files_lists():
    """On the host the guard has only its own files and METRICS_FILES: every module_utils _metrics imports is listed."""
    with open(M.__file__) as handle:
        imported = set(re.findall(r"plugins\.module_utils\.(_\w+) import", handle.read()))
    assert set(name + ".py" for name in imported) <= set(M.METRICS_FILES)
    for name in M.METRICS_FILES:
        with open(os.path.join(os.path.dirname(M.__file__), name)) as handle:
            for module in re.findall(r"plugins\.module_utils\.(_\w+) import", handle.read()):
                assert module + ".py" in M.METRICS_FILES, (name, module)
