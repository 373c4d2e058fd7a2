"""The fleet report's aggregation (module_utils._report), computed once for every format."""
import pytest

from ansible_collections.agentguard.hardening.plugins.filter.egress_report_summary import egress_report_summary
from ansible_collections.agentguard.hardening.plugins.module_utils._report import summarise, unread_hosts
from ansible.errors import AnsibleFilterError


def denial(dest, attempts, last, canary=False):
    return {"destination_text": dest, "attempts": attempts, "count": attempts * 2, "last": last, "canary": canary,
            "protocol": "tcp", "sender_text": "agent (1000)"}


def refused(name, count, last, qtype="A"):
    return {"name": name, "count": count, "last": last, "qtype": qtype}


HOSTS = {
    "b": {"attempts": 5, "total": 9, "forwarded_attempts": 2, "canary_attempts": 1, "refused_total": 4,
          "log_limit_text": "10/minute, burst 20",
          "denials": [denial("[fd00::66]:443", 3, "2026-11-30T01:00:00Z"),
                      denial("198.18.0.66:443", 2, "2026-11-30T02:00:00Z"),
                      denial("198.18.0.66:443", 1, "2026-11-30T03:00:00Z", canary=True)],
          "refused_names": [refused("x.attacker.lab", 3, "2026-11-30T01:00:00Z"),
                            refused("a.attacker.lab", 1, "2026-11-30T00:30:00Z", qtype="TXT")]},
    "a": {"attempts": 1, "total": 1, "forwarded_total": 1, "refused_total": 2,
          "log_limit_text": "10/minute, burst 20",
          "denials": [denial("198.18.0.66:25", 1, "2026-11-30T00:10:00Z")],
          "refused_names": [refused("x.attacker.lab", 2, "2026-11-30T04:00:00Z", qtype="AAAA")]},
    "down": {"unreachable": True, "msg": "ssh: connection refused"},
    "broken": {"failed": True, "msg": "no result"},
    "empty": {"attempts": 0, "total": 0, "denials": [], "log_limit_text": "5/second, burst 5"},
}


def test_totals_leave_out_the_hosts_that_were_not_read():
    s = summarise(HOSTS)
    assert s["unread"] == ["broken", "down"] == unread_hosts(HOSTS)
    assert (s["attempts"], s["lines"], s["forwarded"], s["canary"], s["refused"]) == (6, 10, 3, 1, 6)
    assert sorted(s["hosts"]) == ["a", "b", "empty"]


def test_host_rows_name_the_busiest_own_denial_and_count_destinations_without_the_canary():
    row = summarise(HOSTS)["hosts"]["b"]
    assert row["top"]["destination_text"] == "[fd00::66]:443"
    assert row["destinations"] == 2          # the canary's 198.18.0.66:443 is the same destination as the agent's
    assert row["last"] == "2026-11-30T03:00:00Z"   # the canary's time counts for "last seen"
    empty = summarise(HOSTS)["hosts"]["empty"]
    assert (empty["top"], empty["destinations"], empty["last"]) == (None, 0, "")


def test_only_canary_denials_have_no_busiest_row():
    canary = denial("198.18.0.66:443", 1, "2026-11-30T01:00:00Z", canary=True)
    hosts = {"c": {"attempts": 0, "total": 2, "denials": [canary]}}
    row = summarise(hosts)["hosts"]["c"]
    assert row["top"] is None and row["destinations"] == 0


def test_refused_names_merge_across_hosts_busiest_first():
    names = summarise(HOSTS)["names"]
    assert [(n["name"], n["count"]) for n in names] == [("x.attacker.lab", 5), ("a.attacker.lab", 1)]
    assert names[0]["hosts"] == ["a", "b"] and names[0]["qtypes"] == ["AAAA", "A"]
    assert names[0]["last"] == "2026-11-30T04:00:00Z"


def test_ties_are_ordered_by_name_and_limits_are_distinct():
    hosts = {"h": {"denials": [], "refused_names": [refused("b.lab", 1, ""), refused("a.lab", 1, "")],
                   "log_limit_text": "1/second"},
             "i": {"denials": [], "log_limit_text": "1/second"}}
    s = summarise(hosts)
    assert [n["name"] for n in s["names"]] == ["a.lab", "b.lab"]
    assert s["limits"] == ["1/second"]


def test_the_filter_refuses_what_is_not_a_dict():
    with pytest.raises(AnsibleFilterError, match="expects the report's hosts"):
        egress_report_summary(["a"])
    assert egress_report_summary({}) == summarise({})


def test_tls_gate_refusals_merge_by_server_name_and_reason():
    def refusal(sni, reason, count, last, passed=0):
        return {"sni": sni, "reason": reason, "count": count, "passed": passed, "last": last}
    hosts = {
        "g1": {"denials": [], "tls_refused_total": 4,
               "tls_refusals": [refusal("cotenant.cdn.lab", "not-allowed", 3, "2026-11-30T01:00:00Z"),
                                refusal("", "no-sni", 1, "2026-11-30T02:00:00Z")]},
        "g2": {"denials": [], "tls_refused_total": 2,
               "tls_refusals": [refusal("cotenant.cdn.lab", "not-allowed", 2, "2026-11-30T03:00:00Z"),
                                refusal("cotenant.cdn.lab", "would-refuse-sni", 1, "2026-11-30T00:00:00Z", passed=1)]},
        "down": {"unreachable": True},
    }
    s = summarise(hosts)
    assert s["tls_refused"] == 6 and s["hosts"]["g2"]["tls_refused"] == 2
    assert [(e["sni"], e["reason"], e["count"], e["passed"]) for e in s["server_names"]] == [
        ("cotenant.cdn.lab", "not-allowed", 5, 0), ("", "no-sni", 1, 0), ("cotenant.cdn.lab", "would-refuse-sni", 1, 1)]
    assert s["server_names"][0]["hosts"] == ["g1", "g2"] and s["server_names"][0]["last"] == "2026-11-30T03:00:00Z"


def test_exact_counts_tamper_events_and_coverage_per_host():
    hosts = dict(HOSTS)
    hosts["a"] = dict(HOSTS["a"], denied_packets=40, counters_since="2026-11-29T00:00:00Z", counters_text="40 denied",
                      tamper_total=2, coverage={"covered": True, "short": "whole window", "text": "journal covers it"})
    hosts["b"] = dict(HOSTS["b"], denied_packets=2, tamper_total=1,
                      coverage={"covered": False, "short": "last 12 min of 24 h", "text": "dmesg covers only ..."})
    s = summarise(hosts)
    # Exact totals are summed over the hosts whose counters were read; the others are named.
    assert s["denied_packets"] == 42 and s["uncounted"] == ["empty"]
    assert s["tamper"] == 3
    # A host without a coverage answer is not covered: never "0 denials" for a log that was not there.
    assert s["uncovered"] == ["b", "empty"]
    assert s["hosts"]["b"]["coverage_short"] == "last 12 min of 24 h" and s["hosts"]["a"]["covered"] is True
    assert s["hosts"]["empty"]["denied_packets"] is None
    assert s["hosts"]["empty"]["coverage_text"] == "unknown how far back the kernel log reaches"


def test_counters_since_is_only_said_of_counters_that_were_read():
    hosts = {"a": {"denied_packets": None, "counters_since": "2026-11-29T00:00:00Z"},
             "b": {"denied_packets": 3, "counters_since": "2026-11-29T00:00:00Z"}}
    rows = summarise(hosts)["hosts"]
    assert rows["a"]["counters_since"] is None and rows["b"]["counters_since"] == "2026-11-29T00:00:00Z"
