"""The metrics documentation: the README's table names every metric _metrics writes (and no other), and the
alert rule example in README.md and roles/egress/README.md (the same block) passes `promtool check rules` and
fires as its names say under `promtool test rules` (Debian's prometheus package)."""
import os
import re
import subprocess

import pytest
import yaml

from ansible_collections.agentguard.hardening.plugins.module_utils import _metrics as M

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKER = "<!-- alert rules: checked by tests/unit/test_metrics_docs.py -->"


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as handle:
        return handle.read()


def alert_block(text):
    start = text.index(MARKER)
    match = re.compile(r"```yaml\n(.*?)```", re.S).search(text, start)
    return match.group(1)


def test_the_readme_table_lists_exactly_the_metrics_written():
    section = read("README.md").split("## Live metrics (Prometheus)", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(agentguard_\w+)` \| (\w+) \|", section, re.M)
    assert documented == [(name, kind) for name, kind, text in M.METRICS]
    role = read("roles", "egress", "README.md").split("## Metrics", 1)[1].split("\n## ", 1)[0]
    for name, kind, text in M.METRICS:
        assert "`%s`" % name in role, name


def test_both_readmes_hold_the_same_rules_and_they_name_real_metrics():
    block = alert_block(read("README.md"))
    assert alert_block(read("roles", "egress", "README.md")) == block
    known = set(name for name, kind, text in M.METRICS) | {"node_textfile_mtime_seconds"}
    used = set(re.findall(r"\b(agentguard_\w+|node_textfile_\w+)", block))
    assert used and used <= known, used - known


TESTS = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'agentguard_guard_tamper_events_total{instance="a"}'
        values: '0 0 0 1 1 1 1'
      - series: 'agentguard_guard_restore_failures_total{instance="a"}'
        values: '0x6'
      - series: 'agentguard_egress_policy_in_sync{instance="a"}'
        values: '1x6'
      - series: 'agentguard_egress_policy_in_sync{instance="b"}'
        values: '1 1 0 0 0 0 0'
      - series: 'node_textfile_mtime_seconds{instance="a",file="/var/lib/prometheus/node-exporter/agentguard.prom"}'
        values: '0+60x6'
      - series: 'node_textfile_mtime_seconds{instance="c",file="/var/lib/prometheus/node-exporter/agentguard.prom"}'
        values: '0x6'
    alert_rule_test:
      - eval_time: 2m
        alertname: AgentguardEgressTampered
        exp_alerts: []
      - eval_time: 5m
        alertname: AgentguardEgressTampered
        exp_alerts:
          - exp_labels: {severity: warning, instance: a}
            exp_annotations:
              summary: "a: the egress rules were changed by someone else; the guard restored them"
      - eval_time: 5m
        alertname: AgentguardEgressNotRestored
        exp_alerts:
          - exp_labels: {severity: critical, instance: b}
            exp_annotations:
              summary: "b: the egress policy is not what the last apply installed"
      - eval_time: 5m
        alertname: AgentguardGuardSilent
        exp_alerts:
          - exp_labels: {severity: critical, instance: c, file: /var/lib/prometheus/node-exporter/agentguard.prom}
            exp_annotations:
              summary: "c: the egress guard has not written its metrics for 2 minutes"
  - interval: 1m
    input_series:
      - series: 'agentguard_egress_denied_packets_total{instance="a",family="ipv4",path="output"}'
        values: '0+120x30'
      - series: 'agentguard_egress_denied_packets_total{instance="a",family="ipv6",path="forward"}'
        values: '0x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: AgentguardEgressDenials
        exp_alerts:
          - exp_labels: {severity: info, instance: a}
            exp_annotations:
              summary: "a: 2 denied egress packets per second"
"""


@pytest.fixture
def rules(tmp_path):
    path = tmp_path / "rules.yml"
    path.write_text(alert_block(read("README.md")))
    return path


def test_promtool_checks_the_rules(rules, promtool):
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "SUCCESS: 4 rules found" in proc.stdout, proc.stdout + proc.stderr


def test_the_alerts_fire_when_they_should(rules, promtool):
    tests = rules.parent / "tests.yml"
    tests.write_text(TESTS)
    yaml.safe_load(TESTS)
    proc = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, check=False,
                          cwd=str(rules.parent))
    assert proc.returncode == 0, proc.stdout + proc.stderr
