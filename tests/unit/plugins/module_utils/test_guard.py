"""The guard: desired-state file, comparison and restore plan (fed real iptables-save output of both
backends, tests/unit/fixtures/capture-guard.sh), the status file, the journal entry and the lock.
The real guard process against a real kernel: tests/netns/test_guard.py."""
import fcntl
import json
import os
import struct

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _desired as D
from ansible_collections.agentguard.hardening.plugins.module_utils import _guard as G
from ansible_collections.agentguard.hardening.plugins.module_utils import _plan
from ansible_collections.agentguard.hardening.plugins.module_utils import _state as S

from .conftest import Runner, fake_host, fixture, nf, plan_for

BACKENDS = ["nft", "legacy"]
FOREIGN = ("DOCKER-USER", "f2b", "foreign: ntp", "admin: keep loopback", "INPUT", "FORWARD")


def saves(kind, backend):
    name = "managed" if kind == "managed" else "guard-%s" % kind
    return {"ipv4": fixture("%s-%s.v4" % (name, backend)), "ipv6": fixture("%s-%s.v6" % (name, backend))}


def ipsets(backend):
    return fixture("ipset-%s.save" % backend)


def desired_from(backend):
    """What the guard holds: our part of the managed fixture, as the kernel printed it after the apply."""
    live, live_sets = _plan.read_live(nf(Runner(saves("managed", backend), ipset=ipsets(backend))), ["ipv4", "ipv6"])
    managed = dict((f, live[f].managed) for f in live)
    hooks = dict((f, dict((h, lh.managed) for h, lh in live[f].hooks.items())) for f in live)
    return D.Desired(("ipv4", "ipv6"), managed, hooks, live_sets, "h", 1.0)


def live_of(kind, backend, ipset=None):
    runner = Runner(saves(kind, backend), ipset=ipsets(backend) if ipset is None else ipset)
    return _plan.read_live(nf(runner), ["ipv4", "ipv6"])


# The desired-state file ----------------------------------------------------------------------------

def test_desired_document_round_trips_the_plan():
    plan = plan_for(Runner({"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")}))
    doc = D.desired_document(plan, 1234.5)
    doc = json.loads(json.dumps(doc))  # as read back from the file
    desired = D.load_desired(doc)
    assert desired.managed == plan.desired
    assert desired.hooks == plan.desired_hooks
    assert desired.sets == plan.desired_sets
    assert desired.applied == 1234.5
    # The hash says the policy, not when it was applied.
    assert D.desired_document(plan, 99.0)["hash"] == doc["hash"]
    assert len(doc["hash"]) == 64


def test_desired_document_differs_when_the_policy_does():
    runner = Runner({"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")})
    one = D.desired_document(plan_for(runner), 0)
    two = D.desired_document(plan_for(runner, deny_action="reject"), 0)
    assert one["hash"] != two["hash"]


def test_absent_has_no_desired_state():
    plan = plan_for(Runner({"ipv4": fixture("managed-nft.v4"), "ipv6": fixture("managed-nft.v6")}), state="absent")
    assert D.desired_document(plan, 0) is None


def test_a_document_of_another_version_is_refused():
    with pytest.raises(D.GuardError, match="version"):
        D.load_desired({"version": 99})
    with pytest.raises(D.GuardError, match="unreadable"):
        D.load_desired({"version": 1, "families": {"ipv4": {}}})


# Comparison and restore plan, both backends ----------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_in_sync_plans_nothing(backend):
    live, live_sets = live_of("managed", backend)
    desired = desired_from(backend)
    assert G.differences(desired, live, live_sets) == []
    assert G.restore_plan(desired, live, live_sets) is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,found,expect", [
    ("jump", ["output-jump"], ["-I OUTPUT 1 -j AGENTGUARD-EGRESS"]),
    ("policy", ["output-policy"], [":OUTPUT DROP"]),
    ("chain", ["chain"], [":AGENTGUARD-ALLOW - [0:0]", "-A AGENTGUARD-ALLOW -j AGENTGUARD-DENY"]),
    ("first", ["output-jump"], ["-D OUTPUT -j AGENTGUARD-EGRESS", "-I OUTPUT 1 -j AGENTGUARD-EGRESS"]),
    ("flushed", ["chain", "output-jump", "output-policy"],
     [":OUTPUT DROP", ":AGENTGUARD-EGRESS - [0:0]", "-I OUTPUT 1 -j AGENTGUARD-EGRESS",
      "-A AGENTGUARD-DENY -j REJECT --reject-with"]),
])
def test_each_change_is_found_and_planned_back(backend, kind, found, expect):
    live, live_sets = live_of(kind, backend)
    desired = desired_from(backend)
    differed = G.differences(desired, live, live_sets)
    assert sorted(set(d.kind for d in differed)) == found
    assert set(d.family for d in differed) == {"ipv4", "ipv6"}
    assert set(d.table for d in differed) == {"filter"}
    plan = G.restore_plan(desired, live, live_sets)
    assert plan is not None and plan.sets_update == "" and plan.sets_obsolete == []
    for family in ("ipv4", "ipv6"):
        text = plan.transactions[family]
        assert text.startswith("*filter\n") and text.endswith("COMMIT\n")
        for line in expect:
            assert any(x.startswith(line) for x in text.splitlines()), (family, line, text)
        # Only our part is named: every other chain and rule is left as it is.
        for foreign in FOREIGN:
            assert foreign not in text, (family, foreign)


@pytest.mark.parametrize("backend", BACKENDS)
def test_restoring_converges(backend):
    """The restore payload of a flushed table, loaded and saved back, is in sync (the plan's own
    persisted rendering stands in for the kernel here; tests/netns proves it with one)."""
    live, live_sets = live_of("flushed", backend)
    desired = desired_from(backend)
    plan = G.restore_plan(desired, live, live_sets)
    assert plan.desired == desired.managed
    again, again_sets = live_of("managed", backend)
    assert G.restore_plan(desired, again, again_sets) is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_destroyed_set_is_created_and_seeded(backend):
    text = "\n".join(x for x in ipsets(backend).splitlines() if "ag6-cdn" not in x) + "\n"
    live, live_sets = live_of("managed", backend, ipset=text)
    desired = desired_from(backend)
    assert G.differences(desired, live, live_sets) == [G.Difference("ipset", "ipv6", "ipset")]
    plan = G.restore_plan(desired, live, live_sets)
    assert plan.sets_created == ["ag6-cdn"]
    assert plan.sets_update.startswith("create ag6-cdn hash:net family inet6")
    assert "add ag6-cdn fd00:a9e:4::1/128" in plan.sets_update
    assert "ag4-cdn" not in plan.sets_update and "f2b" not in plan.sets_update
    assert all(t is None for t in plan.transactions.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_static_set_that_lost_members_is_swapped_back(backend):
    text = "\n".join(x for x in ipsets(backend).splitlines() if x != "add ag4-cdn 198.18.4.1") + "\n"
    live, live_sets = live_of("managed", backend, ipset=text)
    plan = G.restore_plan(desired_from(backend), live, live_sets)
    assert plan.sets_changed == ["ag4-cdn"]
    assert "swap agt4-cdn ag4-cdn" in plan.sets_update


def test_a_dynamic_set_keeps_the_resolvers_members():
    """Filtering DNS mode: the members the resolver added are the resolver's; only the set's existence,
    type and timeout are held."""
    desired = desired_from("nft")
    sets = dict(desired.sets)
    sets["ag4-api"] = S.IpSet("ag4-api", "hash:net", "inet", {"timeout": "300"}, ("198.18.0.10/32",))
    desired = desired._replace(sets=sets)
    live_text = ipsets("nft") + ("create ag4-api hash:net family inet hashsize 1024 maxelem 65536 timeout 300\n"
                                 "add ag4-api 198.18.7.7 timeout 120\n")
    live, live_sets = live_of("managed", "nft", ipset=live_text)
    assert G.differences(desired, live, live_sets) == []
    assert G.restore_plan(desired, live, live_sets) is None
    # Destroyed: re-created, seeded with the apply's answers.
    live, live_sets = live_of("managed", "nft")
    plan = G.restore_plan(desired, live, live_sets)
    assert "create ag4-api hash:net family inet hashsize 1024 maxelem 65536 timeout 300" in plan.sets_update
    assert "add ag4-api 198.18.0.10/32" in plan.sets_update


# The guard's check, with a recording runner ------------------------------------------------------

class Journal(list):
    def __call__(self, fields):
        self.append(fields)


def write_desired(state_dir, backend="nft"):
    plan = plan_for(Runner({"ipv4": fixture("foreign-%s.v4" % backend), "ipv6": fixture("foreign-%s.v6" % backend)}))
    D.write_json(os.path.join(state_dir, D.DESIRED_FILE), D.desired_document(plan, 10.0))
    return plan


def make_guard(tmp_path, runner, clock=lambda: 1000.0):
    state = tmp_path / "egress"
    state.mkdir(exist_ok=True)
    journal = Journal()
    host = fake_host(runner)
    guard = G.Guard(host, str(state), str(tmp_path / "guard"), journal=journal, clock=clock)
    guard.families = ["ipv4", "ipv6"]
    guard.start("periodic")
    return guard, journal, str(state)


def restores(runner):
    return [c for c in runner.calls if c[0][0] in ("iptables-restore", "ip6tables-restore", "ipset") and c[0][1] != "save"]


def test_without_a_desired_state_the_guard_does_nothing(tmp_path):
    runner = Runner(saves("flushed", "nft"))
    guard, journal = make_guard(tmp_path, runner)[:2]
    assert guard.check_once() == []
    assert runner.calls == [] and journal == []
    assert guard.status["in_sync"] is None


def test_a_change_is_restored_counted_and_journaled(tmp_path):
    runner = Runner({"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")})
    guard, journal, state = make_guard(tmp_path, runner)
    plan = write_desired(state)
    found = guard.check_once(event_time=None)
    assert found
    # Sets first, each family tested then committed: the module's apply (_apply.apply_plan).
    names = [" ".join(a for a in c[0] if a in ("iptables-restore", "ip6tables-restore", "ipset", "--test", "restore"))
             for c in restores(runner)]
    assert names == ["ipset restore", "iptables-restore --test", "ip6tables-restore --test",
                     "iptables-restore", "ip6tables-restore"]
    assert restores(runner)[3][1] == plan.transactions["ipv4"]
    status = guard.status
    assert status["tamper_events_total"] == 1
    assert status["in_sync"] is True and status["policy_hash"] == D.desired_document(plan, 0)["hash"]
    assert status["applied_timestamp"] == 10.0 and status["last_restore_timestamp"] == 1000.0
    assert {(e["kind"], e["family"], e["table"]) for e in status["tamper_events"]} >= {
        ("output-jump", "ipv4", "filter"), ("output-policy", "ipv6", "filter"), ("chain", "ipv4", "filter")}
    assert len(journal) == 1
    entry = journal[0]
    assert entry["SYSLOG_IDENTIFIER"] == "agentguard-guard" and entry["AGENTGUARD_RESTORED"] == "yes"
    assert "ipv4/filter/output-jump" in entry["AGENTGUARD_DIFFERED"].split()
    assert float(entry["AGENTGUARD_RESTORE_SECONDS"]) >= 0
    # The status file says the same.
    with open(os.path.join(str(tmp_path / "guard"), G.STATUS_FILE)) as handle:
        assert json.load(handle)["tamper_events_total"] == 0  # written by save_status, not by a check
    guard.save_status()
    with open(os.path.join(str(tmp_path / "guard"), G.STATUS_FILE)) as handle:
        assert json.load(handle)["tamper_events_total"] == 1


def test_a_failed_restore_is_journaled_as_such(tmp_path):
    runner = Runner({"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")},
                    fail_on=lambda name, argv, n: name == "ip6tables-restore")
    guard, journal, state = make_guard(tmp_path, runner)
    write_desired(state)
    guard.check_once()
    assert guard.status["in_sync"] is False and guard.status["restore_failures_total"] == 1
    assert guard.status["tamper_events_total"] == 0
    assert journal[0]["AGENTGUARD_RESTORED"] == "no" and journal[0]["PRIORITY"] == 3


def test_the_guard_waits_while_an_apply_holds_the_lock(tmp_path):
    runner = Runner({"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")})
    guard, journal, state = make_guard(tmp_path, runner)
    write_desired(state)
    fd = os.open(os.path.join(state, D.LOCK_FILE), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert guard.check_once() == []
        assert runner.calls == [] and "lock held" in guard.status["paused"]
    finally:
        os.close(fd)
    assert guard.check_once()
    assert guard.status["paused"] is None


def test_the_guard_waits_while_the_apply_marker_is_fresh(tmp_path):
    now = [1000.0]
    runner = Runner({"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")})
    guard, journal, state = make_guard(tmp_path, runner, clock=lambda: now[0])
    write_desired(state)
    marker = os.path.join(state, D.MARKER_FILE)
    open(marker, "w").close()
    os.utime(marker, (now[0] - 10, now[0] - 10))
    assert guard.check_once() == [] and runner.calls == []
    assert "apply in progress" in guard.status["paused"]
    # The marker of an apply that died: stale after MARKER_MAX_AGE (the armed rollback has run).
    now[0] += D.MARKER_MAX_AGE
    assert guard.check_once()


def test_after_a_rollback_the_guard_holds_the_snapshots_rules(tmp_path):
    """The rollback script restores the desired-state file with the rules: the guard then finds the
    host in sync and re-applies nothing."""
    runner = Runner({"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")})
    guard, journal, state = make_guard(tmp_path, runner)
    old = write_desired(state)
    # What the rollback leaves: the old rules live, and the old desired state back in place.
    live = Runner(old.rules, ipset=old.sets_payload)
    guard.nf = nf(live)
    assert guard.check_once() == []
    assert restores(live) == [] and guard.status["in_sync"] is True and journal == []


def test_counters_survive_a_restart(tmp_path):
    runner = Runner({"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")})
    guard, journal, state = make_guard(tmp_path, runner)
    write_desired(state)
    guard.check_once()
    guard.save_status()
    again = make_guard(tmp_path, runner, clock=lambda: 2000.0)[0]
    assert again.status["tamper_events_total"] == 1 and again.status["started"] == 2000.0
    assert again.status["tamper_events"] == guard.status["tamper_events"]


def test_backoff_only_when_something_fights_the_guard(tmp_path):
    """Changes that come one after the other, each after the previous restore settled, are each restored at
    once; a change back within FIGHT_WINDOW of each restore, many times, slows the guard down."""
    runner = Runner({"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")})
    guard, unused, state = make_guard(tmp_path, runner)
    write_desired(state)
    for unused in range(G.BACKOFF_AFTER + 2):
        guard.last_restore = G.time.monotonic() - G.FIGHT_WINDOW - 0.1  # the previous one settled
        assert guard.check_once()
    assert guard.restores == [] and guard.delay() == 0.0
    for unused in range(G.BACKOFF_AFTER + 1):
        assert guard.check_once()  # the runner's state never changes: each restore is needed again at once
    assert guard.delay() == G.BACKOFF_DELAY


# The module's side: lock, marker, desired-state file --------------------------------------------

def test_apply_lock_marks_and_excludes(tmp_path):
    state = str(tmp_path / "egress")
    with D.ApplyLock(state):
        assert os.path.exists(os.path.join(state, D.MARKER_FILE))
        with pytest.raises(D.GuardError, match="held"):
            with D.ApplyLock(state, timeout=0.2):
                pass
    assert not os.path.exists(os.path.join(state, D.MARKER_FILE))
    assert oct(os.stat(state).st_mode & 0o777) == "0o700"


def test_sync_desired_writes_keeps_and_removes(tmp_path):
    state = str(tmp_path / "egress")
    runner = Runner({"ipv4": fixture("foreign-nft.v4"), "ipv6": fixture("foreign-nft.v6")})
    plan = plan_for(runner)
    assert D.sync_desired(state, plan, 1.0) is True
    assert D.desired_hash_of(state) == D.desired_document(plan, 0)["hash"]
    assert D.sync_desired(state, plan, 2.0) is False  # same policy: the file and its time stay
    assert D.read_json(os.path.join(state, D.DESIRED_FILE))["applied"] == 1.0
    assert oct(os.stat(os.path.join(state, D.DESIRED_FILE)).st_mode & 0o777) == "0o600"
    other = plan_for(runner, deny_action="reject")
    assert D.sync_desired(state, other, 4.0) is True  # another policy: rewritten
    assert D.desired_hash_of(state) == D.desired_document(other, 0)["hash"]
    absent = plan_for(runner, state="absent")
    assert D.sync_desired(state, absent, 3.0) is True
    assert D.desired_hash_of(state) is None
    assert D.sync_desired(state, absent, 3.0) is False


# Journal and helpers -----------------------------------------------------------------------------

def test_journal_payload_is_the_native_protocol():
    data = G.journal_payload({"MESSAGE": "two\nlines", "PRIORITY": 4})
    assert data == b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\nPRIORITY=4\n"


def test_journal_falls_back_to_stderr(tmp_path):
    import io
    stream = io.StringIO()
    assert G.send_journal({"MESSAGE": "x"}, path=str(tmp_path / "none"), stream=stream) is False
    assert json.loads(stream.getvalue()) == {"MESSAGE": "x"}


def test_journal_datagram_reaches_a_socket(tmp_path):
    import socket
    path = str(tmp_path / "journal")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    try:
        assert G.send_journal({"MESSAGE": "hi", "SYSLOG_IDENTIFIER": "agentguard-guard"}, path=path) is True
        assert server.recv(4096) == b"MESSAGE=hi\nSYSLOG_IDENTIFIER=agentguard-guard\n"
    finally:
        server.close()


@pytest.mark.parametrize("backend,want", [("nft", "nf_tables"), ("legacy", "legacy")])
def test_backend_of(backend, want):
    assert G.backend_of(fixture("managed-%s.v4" % backend)) == want


@pytest.mark.parametrize("backend,interval", [("nft", G.INTERVAL), ("legacy", G.LEGACY_INTERVAL)])
def test_the_legacy_backend_is_checked_every_second(tmp_path, backend, interval):
    """Nothing announces a change of the legacy backend: the periodic check must meet the 2 s goal alone."""
    guard = make_guard(tmp_path, Runner(saves("managed", backend)))[0]
    guard.read_backend()
    assert guard.interval == interval and guard.status["interval_seconds"] == interval
    assert G.LEGACY_INTERVAL <= 1.0


def test_guard_files_import_only_the_stdlib_and_each_other():
    """The role installs GUARD_FILES on hosts without Ansible: every import must be the stdlib or one of them."""
    import ast
    import sys
    here = os.path.dirname(G.__file__)
    stdlib = getattr(sys, "stdlib_module_names", None)
    for name in D.GUARD_FILES:
        with open(os.path.join(here, name)) as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith(".module_utils"):
                for alias in node.names:
                    assert alias.name + ".py" in D.GUARD_FILES, (name, alias.name)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ansible_collections"):
                assert node.module.rsplit(".", 1)[-1] + ".py" in D.GUARD_FILES, (name, node.module)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
                assert not node.module.startswith("ansible"), (name, node.module)
                if stdlib:
                    assert node.module.split(".")[0] in stdlib, (name, node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("ansible"), (name, alias.name)
                    if stdlib:
                        assert alias.name.split(".")[0] in stdlib, (name, alias.name)


def test_tamper_kinds_are_the_metrics_kinds():
    from ansible_collections.agentguard.hardening.plugins.module_utils import _metrics as M
    kinds = set()
    for backend in BACKENDS:
        for kind in ("jump", "policy", "chain", "first", "flushed"):
            live, live_sets = live_of(kind, backend, ipset="")
            kinds.update(d.kind for d in G.differences(desired_from(backend), live, live_sets))
    assert kinds == {"output-jump", "output-policy", "chain", "ipset"}
    assert kinds <= set(M.TAMPER_KINDS) and "hook-jump" in M.TAMPER_KINDS


def test_metrics_of_a_status(tmp_path):
    """The guard's writer: _metrics' exposition of the status, in the textfile directory."""
    runner = Runner(saves("managed", "nft"), ipset=ipsets("nft"))
    write = G.metrics_writer(str(tmp_path), fake_host(runner, G.bin_path))
    status = G.new_status(None, 100.0, 1, "netlink", 5.0)
    status.update(tamper_events_total=2, policy_hash="abc", in_sync=True)
    write(status)
    text = (tmp_path / "agentguard.prom").read_text()
    assert "agentguard_guard_tamper_events_total 2" in text
    assert 'policy_hash="abc"' in text
