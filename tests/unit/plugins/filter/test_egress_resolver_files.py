"""The filtering resolver's files (egress_resolver_files), what tasks/write_files.yml does with a unit after a write
(egress_unit_action), and the one way the role writes its files (issue 27).

The fixtures in tests/unit/fixtures/resolver_files/case*/ are the resolver's files as the role's Jinja templates
rendered them (ansible-core's template module, at commit 88b6180) for the variables in each case's vars.yml: the
Python renderer that replaced the templates writes them byte for byte, so no host's resolver restarts for the move."""
import glob
import os

import pytest
import yaml

from ansible_collections.agentguard.hardening.plugins.filter import egress_boot_files as B

from ...roles.role_tasks import every_task
from .test_egress_phases import MARKER, ROLE_VARS, ROOT

DNS = ROLE_VARS["__egress_dns"]
FIXTURES = os.path.join(ROOT, "tests", "unit", "fixtures", "resolver_files")
# The template each fixture was rendered from, and where the role writes it.
WRITTEN_TO = {
    "agentguard-dnsmasq.conf": DNS["conf"],
    "agentguard-dns.service": "/etc/systemd/system/" + DNS["unit"],
    "dns-before.conf": "/etc/systemd/system/agent.service.d/" + DNS["dropin"],
    "resolved.conf": DNS["resolved_dropin"],
    "resolv.conf": "/etc/resolv.conf",
    "resolv-guard.sh": DNS["resolv_guard"],
    "agentguard-dns-resolv.service": "/etc/systemd/system/%s.service" % DNS["guard_unit"],
    "agentguard-dns-resolv.path": "/etc/systemd/system/%s.path" % DNS["guard_unit"],
}


def options(case):
    return dict(allow=case["egress_allow"], dns_servers=case["egress_dns_servers"], mode=case["egress_mode"],
                families=case["egress_families"], dns_set_timeout=case["egress_dns_set_timeout"],
                scope_networks=case["egress_scope_networks"])


def rendered(case, use_resolved):
    sets = B.egress_resolver_files(options(case), DNS, MARKER, case["__egress_platform"], ["agent.service"], use_resolved)
    return dict((f["path"], f["content"]) for f in sets["resolver"]["files"] + sets["host"]["files"])


CASES = sorted(glob.glob(os.path.join(FIXTURES, "case*")))


@pytest.mark.parametrize("case_dir", CASES, ids=[os.path.basename(c) for c in CASES])
def test_the_files_are_byte_for_byte_what_the_templates_rendered(case_dir):
    with open(os.path.join(case_dir, "vars.yml")) as handle:
        case = yaml.safe_load(handle)
    mine = rendered(case, case["__egress_use_resolved"])
    # Both ways of pointing the host at the resolver: the other set's files come from the other rendering.
    other = rendered(case, not case["__egress_use_resolved"])
    for name, path in sorted(WRITTEN_TO.items()):
        with open(os.path.join(case_dir, name)) as handle:
            expected = handle.read()
        assert mine.get(path, other.get(path)) == expected, name


def sets(use_resolved=False, before=("agent.service",), **over):
    opts = dict(allow=[dict(name="api", host="api.example.com", ports=[443])], dns_servers=["198.18.0.53"],
                mode="enforce", families=["ipv4"], dns_set_timeout=300, scope_networks=[])
    opts.update(over)
    return B.egress_resolver_files(opts, DNS, MARKER, dict(boot_units=["netfilter-persistent.service"]), list(before),
                                   use_resolved)


def test_the_resolver_set_restarts_it_on_a_new_configuration_or_unit_and_prunes_its_drop_ins():
    resolver = sets()["resolver"]
    assert resolver["unit"] == dict(name="agentguard-dns.service", enabled=True)
    assert resolver["prune"] == DNS["dropin"]
    assert [(f["path"], f["kind"], f["mode"], f.get("then")) for f in resolver["files"]] == [
        (DNS["conf"], "config", "0644", "restarted"),
        ("/etc/systemd/system/agentguard-dns.service", "unit", "0644", "restarted"),
        ("/etc/systemd/system/agent.service.d/" + DNS["dropin"], "dropin", "0644", None)]
    assert resolver["files"][0]["validate"] == "/usr/sbin/dnsmasq --test --conf-file=%s"
    assert [f["path"] for f in sets(before=())["resolver"]["files"]][-1].endswith("agentguard-dns.service")


def test_with_systemd_resolved_in_charge_its_drop_in_restarts_it_and_the_unit_does_not_rewrite_resolv_conf():
    both = sets(use_resolved=True)
    assert both["host"]["unit"] == dict(name="systemd-resolved.service")  # not enabled by the role: the host's own
    assert [(f["path"], f["then"]) for f in both["host"]["files"]] == [(DNS["resolved_dropin"], "restarted")]
    assert "ExecStartPost" not in both["resolver"]["files"][1]["content"]
    assert "ExecStartPost=-/etc/agentguard/resolv-guard.sh\n" in sets()["resolver"]["files"][1]["content"]


def test_otherwise_resolv_conf_is_written_in_place_last_with_its_copy_and_the_path_unit_that_restores_it():
    host = sets()["host"]
    assert host["unit"] == dict(name=DNS["guard_unit"] + ".path", enabled=True)
    assert "prune" not in host
    files = host["files"]
    assert [f["path"] for f in files] == [DNS["resolv_copy"], DNS["resolv_guard"],
                                          "/etc/systemd/system/agentguard-dns-resolv.service",
                                          "/etc/systemd/system/agentguard-dns-resolv.path", "/etc/resolv.conf"]
    assert [f["path"] for f in files if f.get("in_place")] == ["/etc/resolv.conf"]
    assert files[0]["content"] == files[-1]["content"]
    assert files[1]["mode"] == "0755" and not any(f.get("then") for f in files)


def test_audit_mode_forwards_every_name_and_refuses_none():
    conf = sets(mode="audit")["resolver"]["files"][0]["content"]
    assert "server=198.18.0.53\n" in conf and "address=/#/" not in conf and "address=/*.api.example.com/" not in conf
    conf = sets()["resolver"]["files"][0]["content"]
    assert "address=/#/\n" in conf and "address=/*.api.example.com/\n" in conf


# ------------------------------------------------------------------------------------- egress_unit_action
def written(*items):
    """A registered copy loop: each (file, changed)."""
    return dict(changed=any(c for _, c in items), results=[dict(item=f, changed=c) for f, c in items])


CONFIG = dict(path="/c", kind="config", then="reloaded")
UNIT = dict(path="/u", kind="unit", then="restarted")
DROPIN = dict(path="/d", kind="dropin")
GATE = dict(name="agentguard-tlsgate.service", enabled=True)


def test_a_changed_unit_restarts_a_changed_configuration_reloads_else_started():
    assert B.egress_unit_action(written((CONFIG, True), (UNIT, True)), {}, GATE) == dict(
        state="restarted", daemon_reload=True, run=True)
    assert B.egress_unit_action(written((CONFIG, True), (UNIT, False)), {}, GATE) == dict(
        state="reloaded", daemon_reload=False, run=True)
    assert B.egress_unit_action(written((CONFIG, False), (UNIT, False)), {}, GATE) == dict(
        state="started", daemon_reload=False, run=True)


def test_a_changed_or_pruned_drop_in_reloads_systemd_without_restarting_the_unit():
    assert B.egress_unit_action(written((DROPIN, True)), {}, GATE) == dict(state="started", daemon_reload=True, run=True)
    assert B.egress_unit_action(written((DROPIN, False)), dict(changed=True), GATE)["daemon_reload"]


def test_check_mode_does_not_query_a_unit_still_to_be_written():
    assert not B.egress_unit_action(written((UNIT, True)), {}, GATE, True, True)["run"]
    assert B.egress_unit_action(written((CONFIG, True)), {}, GATE, True, True)["run"]


def test_a_set_without_a_unit_only_reloads_systemd_and_only_where_it_runs():
    boot = dict(path="/etc/iptables/rules.v4", kind="rules")
    assert B.egress_unit_action(written((boot, True)), {}, None) == dict(state=None, daemon_reload=False, run=False)
    assert B.egress_unit_action(written((DROPIN, True)), {}, None) == dict(state=None, daemon_reload=True, run=True)
    assert not B.egress_unit_action(written((DROPIN, True)), {}, None, False)["run"]
    # A prune alone (remove_resolver.yml, remove_tls_gate.yml: no files).
    assert B.egress_unit_action(dict(results=[]), dict(changed=True), None)["run"]
    assert not B.egress_unit_action(dict(skipped=True), dict(changed=False), None)["run"]


# ------------------------------------------------------------------------------------- one way to write
def test_the_role_writes_its_files_in_one_task_file():
    """Every file the role renders is written by the copy of tasks/write_files.yml; no task file templates one. The
    exceptions, each a copy of the host's own data, not a rendered file: the original /etc/resolv.conf and its link's
    target, kept for egress_dns_mode pinned or egress_state absent (run_resolver.yml), and what remove_resolver.yml
    puts back. No template is left: the role has no templates directory."""
    writers = []
    for name, task in every_task():
        for action in ("ansible.builtin.copy", "ansible.builtin.template"):
            if action in task:
                writers.append((name, action, task[action].get("dest")))
    assert [w for w in writers if w[1] == "ansible.builtin.template"] == []
    copies = [(name, dest) for name, action, dest in writers if action == "ansible.builtin.copy"]
    assert copies == [("remove_resolver.yml", "/etc/resolv.conf"),
                      ("run_resolver.yml", "{{ __egress_dns.state_dir }}/resolv.conf.link"),
                      ("run_resolver.yml", "{{ __egress_dns.state_dir }}/resolv.conf.orig"),
                      ("write_files.yml", "{{ item.path }}")]
    assert not os.path.exists(os.path.join(ROOT, "roles", "egress", "templates"))


def test_drop_ins_are_pruned_in_one_place():
    finds = [(name, task["ansible.builtin.find"]["patterns"]) for name, task in every_task() if "ansible.builtin.find" in task]
    assert finds == [("write_files.yml", "{{ __egress_write.prune }}")]


def test_the_gate_and_the_guard_share_one_sandbox():
    """The hardening both units hold is defined once (SANDBOX); each unit adds only what is its own."""
    lines = [line for line in B.SANDBOX.splitlines() if line]
    for unit in (B.TLS_UNIT, B.GUARD_UNIT):
        assert "{sandbox}" in unit
        assert not [line for line in lines if line in unit.splitlines()], "a sandbox line outside SANDBOX"
    for name in set(line.split("=", 1)[0] for line in lines) - {"SystemCallFilter"}:
        assert "\n%s=" % name not in B.TLS_UNIT + B.GUARD_UNIT, name
