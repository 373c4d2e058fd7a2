"""The role's shape (issue 15): tasks/main.yml is the list of phases, each included on one decision of
egress_phases with its tags applied once; no include is deeper than two; vars/main.yml holds constants and
the platform table, with no Jinja program in it."""
import glob
import importlib.util
import os
import re

from ansible_collections.agentguard.hardening.plugins.filter.egress_phases import egress_decide

from .role_tasks import ROOT, TASKS, every_task, load, walk

_SPEC = importlib.util.spec_from_file_location("role_readme", os.path.join(ROOT, "scripts", "role_readme.py"))
role_readme = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(role_readme)
included = role_readme.included  # the README's phases table reads the graph with the same function
PHASES = ["validate_inputs.yml", "read_host.yml", "prepare_host.yml", "run_resolver.yml",
          "plan.yml", "apply.yml", "tls_gate.yml", "canary.yml", "persist.yml", "guard.yml", "remove_guard.yml", "remove_role_files.yml",
          "remove_resolver.yml", "remove_tls_gate.yml"]


def depth(name, seen=()):
    assert name not in seen, "include loop: %s" % (seen + (name,),)
    children = [included(task) for task in walk(load(name)) if included(task)]
    return 1 + max([depth(child, seen + (name,)) for child in children] or [0])


def test_main_is_the_list_of_phases_each_on_one_decision():
    main = load("main.yml")
    phases = [included(task) for task in main if included(task)]
    assert phases == PHASES
    for task in main:
        assert task.get("name"), task
        if "ansible.builtin.include_tasks" in task:
            # One condition, computed once by the filter egress_phases; the tags given once, through apply.
            assert re.match(r"^__egress_decision\.[a-z_]+$", task["when"]), task["when"]
            if included(task) == "prepare_host.yml":
                continue
            assert task["ansible.builtin.include_tasks"]["apply"]["tags"] == task["tags"], task["name"]


def test_the_phases_before_the_plan_are_one_include_that_keeps_their_own_tags():
    """An unchanged host skips one include (prepare_host.yml), not one per phase. It carries no tags of its
    own (always), so each phase in it keeps its own: --tags egress_tls creates the gate's user, not the install."""
    main = load("main.yml")
    outer = [task for task in main if included(task) == "prepare_host.yml"][0]
    assert outer["when"] == "__egress_decision.prepare_host" and outer["tags"] == ["always"]
    assert "apply" not in outer["ansible.builtin.include_tasks"]
    inner = load("prepare_host.yml")
    assert "ansible.builtin.assert" in inner[0] and inner[0]["tags"] == ["always"], "the refusal comes first"
    phases = [task for task in inner if included(task)]
    assert [included(task) for task in phases] == ["install_packages.yml", "tls_gate_user.yml"]
    for task in phases:
        assert re.match(r"^__egress_decision\.[a-z_]+$", task["when"]), task["when"]
        assert task["ansible.builtin.include_tasks"]["apply"]["tags"] == task["tags"], task["name"]


def test_the_end_of_an_unchanged_run():
    """Two ends: after egress_host_state (the fast path, whose plan it published in read_host.yml), and after
    egress_rules' plan (filtering DNS mode, or a host whose own plan could not be made)."""
    main = load("main.yml")
    others = [task for task in main if not included(task)]
    assert [list(task)[1] for task in others] == ["ansible.builtin.meta", "ansible.builtin.meta", "ansible.builtin.debug"]
    assert all(task["ansible.builtin.meta"] == "end_role" and task["when"] == "__egress_decision.nothing_to_do" for task in others[:2])
    order = [included(task) or "end" for task in main]
    assert order[:5] == ["validate_inputs.yml", "read_host.yml", "end", "prepare_host.yml", "run_resolver.yml"]
    assert order[5:7] == ["plan.yml", "end"]
    read = load("read_host.yml")
    assert list(read[0])[1] == "agentguard.hardening.egress_host_state" and "plan" in read[0][list(read[0])[1]]
    assert read[1]["ansible.builtin.set_fact"]["egress_result"] == "{{ __egress_host_state.plan }}"


def test_every_flag_the_role_reads_is_one_egress_decide_returns():
    """A condition names a flag of __egress_decision that the filter returns: a misspelled or renamed flag would be
    undefined at run time, on the hosts where the task is reached. Phase includes are named for what they do."""
    keys = set(egress_decide({"state": "present"}, {}, {}))
    used = set()
    for path in glob.glob(os.path.join(ROOT, "roles", "egress", "*", "*.yml")):
        with open(path) as handle:
            used.update(re.findall(r"__egress_decision\.([a-z_]+)", handle.read()))
    assert used and used <= keys, sorted(used - keys)
    for task in load("main.yml") + load("prepare_host.yml"):
        if "ansible.builtin.include_tasks" in task and included(task) != "prepare_host.yml":
            flag = task["when"].split(".", 1)[1]
            assert flag.split("_", 1)[0] in ("install", "run", "apply", "set", "persist", "remove", "create"), flag


def test_no_include_is_deeper_than_two():
    # main.yml (1) -> a phase (2) -> one more (3): two includes deep at the most.
    assert depth("main.yml") <= 3


def test_every_task_file_is_included_and_named_for_what_it_does():
    reached = set(["main.yml"])
    reached.update(included(task) for name, task in every_task() if included(task))
    files = set(os.path.basename(name) for name in glob.glob(os.path.join(TASKS, "*.yml")))
    assert files == reached
    assert not files & {"after_plan.yml", "setup.yml", "prepare.yml"}


def test_every_task_has_a_name():
    for name, task in every_task():
        assert task.get("name"), (name, task)


def test_vars_hold_constants_and_the_platform_table():
    path = os.path.join(ROOT, "roles", "egress", "vars", "main.yml")
    with open(path) as handle:
        text = handle.read()
    assert len(text.splitlines()) <= 120
    assert "{%" not in text, "a Jinja statement in vars/main.yml: make it a filter"
    # Every Jinja expression fits on two lines.
    for expression in re.findall(r"\{\{.*?\}\}", text, re.S):
        assert expression.count("\n") <= 1, expression


def test_the_gate_configuration_test_runs_on_nginx_1_18():
    """The role tests the gate's configuration with `nginx -t` before writing it (egress_tls_gate_files' validate,
    which tasks/write_files.yml passes to the copy): without -e, which nginx 1.18 (Debian 11) does not have."""
    from ansible_collections.agentguard.hardening.plugins.filter.egress_boot_files import egress_tls_gate_files
    tls = dict(unit="agentguard-tlsgate.service", conf="/etc/agentguard/tls-gate/nginx.conf", binary="/usr/sbin/nginx",
               log_dir="/var/log/agentguard-tlsgate", state_dir="/var/lib/agentguard-tlsgate", dropin="10-agentguard-tlsgate.conf")
    result = dict(tls_gate=dict(mode="enforce", user="gate", uid=998, listeners=[dict(port=443, listen=10443)], ungated=[],
                                names=[dict(name="api.example.com", subdomains=False, ports=[443], addresses=["198.18.0.10"])]))
    checks = [f["validate"] for f in egress_tls_gate_files(result, "enforce", "gate", "pinned", ["198.18.0.53"], tls, "m")
              if f.get("validate")]
    assert checks and not [check for check in checks if " -e " in check], checks
    assert checks[0].endswith("sh %s /var/lib/agentguard-tlsgate/validate.conf gate /usr/sbin/nginx")
    copy = [task for task in load("write_files.yml") if "ansible.builtin.copy" in task][0]["ansible.builtin.copy"]
    assert copy["validate"] == "{{ item.validate | default(omit) }}"
