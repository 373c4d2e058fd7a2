"""The role README's variables section is generated from meta/argument_specs.yml, and its phases table ("How
the role works") from tasks/main.yml (scripts/role_readme.py); neither may drift. defaults/main.yml must say what
argument_specs says; the README's "Where things are" table names every task file and filter, and "Dependencies"
every module the role calls."""
import glob
import os
import re
import shutil
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROLE = os.path.join(ROOT, "roles", "egress")
SCRIPT = os.path.join(ROOT, "scripts", "role_readme.py")


def generate(*args):
    return subprocess.run([sys.executable, SCRIPT] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60, check=False)


def load(path):
    with open(path) as handle:
        return yaml.safe_load(handle)


def copy_role(tmp_path):
    role = tmp_path / "egress"
    for name in ("meta", "tasks"):
        shutil.copytree(os.path.join(ROLE, name), str(role / name))
    shutil.copy(os.path.join(ROLE, "README.md"), str(role / "README.md"))
    return role


def section(readme, title):
    return readme.split("\n## %s\n" % title, 1)[1].split("\n## ", 1)[0]


def test_the_readme_variables_and_phases_are_generated_and_current():
    proc = generate("--check", ROLE)
    assert proc.returncode == 0, "%s\n%s" % (proc.stdout[-3000:], proc.stderr)


def test_a_drifted_readme_fails_the_check_and_is_rewritten(tmp_path):
    role = copy_role(tmp_path)
    specs = load(str(role / "meta" / "argument_specs.yml"))
    specs["argument_specs"]["main"]["options"]["egress_log_burst"]["description"] = ["Now 42 lines a burst."]
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump(specs))
    proc = generate("--check", str(role))
    assert proc.returncode == 1 and "+Now 42 lines a burst." in proc.stdout, proc.stdout + proc.stderr
    assert "drifted" in proc.stderr
    assert generate(str(role)).returncode == 0
    assert generate("--check", str(role)).returncode == 0
    readme = (role / "README.md").read_text()
    assert "Now 42 lines a burst." in readme and "## License" in readme


def test_the_phases_table_is_tasks_main_in_order_with_each_condition():
    """Read back from the README, independent of the generator: one numbered row per task of tasks/main.yml, in
    its order, with its file and its when: (or every run)."""
    with open(os.path.join(ROLE, "README.md")) as handle:
        text = section(handle.read(), "How the role works")
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in text.splitlines()
            if re.match(r"^\| \d+ \|", line)]
    main = load(os.path.join(ROLE, "tasks", "main.yml"))
    assert [int(row[0]) for row in rows] == list(range(1, len(main) + 1))
    for row, task in zip(rows, main):
        assert row[1] == task["name"]
        include = task.get("ansible.builtin.include_tasks") or task.get("ansible.builtin.import_tasks")
        if include:
            assert row[2] == "`%s`" % (include["file"] if isinstance(include, dict) else include)
        when = task.get("when")
        assert row[3] == ("`%s`" % when.replace("|", "\\|") if when else "every run"), row
    assert "| 4 | Refuse a host" in text and "| | ↳ Install the missing packages | `install_packages.yml` | " \
        "`__egress_decision.install_packages` |" in text


def test_a_changed_condition_in_tasks_main_fails_the_check_and_is_rewritten(tmp_path):
    role = copy_role(tmp_path)
    main = (role / "tasks" / "main.yml").read_text()
    assert main.count("when: __egress_decision.persist_rules\n") == 1
    (role / "tasks" / "main.yml").write_text(main.replace("when: __egress_decision.persist_rules\n",
                                                          "when: __egress_decision.persist_rules and egress_persist\n"))
    proc = generate("--check", str(role))
    assert proc.returncode == 1 and "drifted" in proc.stderr, proc.stdout + proc.stderr
    assert "-| 12 | Persist the rules for the next boot | `persist.yml` | `__egress_decision.persist_rules` |" in proc.stdout
    assert "+| 12 | Persist the rules for the next boot | `persist.yml` | `__egress_decision.persist_rules and " \
        "egress_persist` |" in proc.stdout
    assert generate(str(role)).returncode == 0
    assert generate("--check", str(role)).returncode == 0


def test_a_readme_without_markers_is_an_error(tmp_path):
    role = tmp_path / "egress"
    shutil.copytree(os.path.join(ROLE, "meta"), str(role / "meta"))
    (role / "README.md").write_text("# egress\n")
    proc = generate("--check", str(role))
    assert proc.returncode == 2 and "no section between" in proc.stderr


def test_every_variable_has_its_default_in_defaults_main():
    options = load(os.path.join(ROLE, "meta", "argument_specs.yml"))["argument_specs"]["main"]["options"]
    defaults = load(os.path.join(ROLE, "defaults", "main.yml"))
    assert defaults == dict((name, spec.get("default")) for name, spec in options.items())
    assert all(name.startswith("egress_") for name in options)


def test_where_things_are_names_every_task_file_and_filter():
    with open(os.path.join(ROLE, "README.md")) as handle:
        table = handle.read().split("## Where things are", 1)[1].split("\n## ", 1)[0]
    for path in sorted(glob.glob(os.path.join(ROLE, "tasks", "*.yml"))):
        assert "| `tasks/%s` |" % os.path.basename(path) in table, path
    for path in sorted(glob.glob(os.path.join(ROLE, "files", "*"))):
        assert "| `files/%s` |" % os.path.basename(path) in table, path
    used = set()
    for path in glob.glob(os.path.join(ROLE, "*", "*.yml")) + glob.glob(os.path.join(ROLE, "templates", "*.j2")):
        with open(path) as handle:
            text = handle.read()
        used.update(re.findall(r"agentguard\.hardening\.(egress_[a-z0-9_]+)", text))
    filters = set(name for name in used if os.path.exists(os.path.join(ROOT, "plugins", "filter", name + ".py"))
                  or os.path.exists(os.path.join(ROOT, "plugins", "filter", name + ".yml")))
    assert len(filters) >= 10, used
    for name in sorted(filters):
        assert "| filter `%s` |" % name in table, name


def test_dependencies_names_every_module_the_role_calls():
    """Only ansible.builtin and this collection; the collection's modules the role calls are the ones named."""
    with open(os.path.join(ROLE, "README.md")) as handle:
        text = section(handle.read(), "Dependencies")
    actions = set()
    for path in glob.glob(os.path.join(ROLE, "tasks", "*.yml")) + glob.glob(os.path.join(ROLE, "handlers", "*.yml")):
        stack = list(load(path) or [])
        while stack:
            task = stack.pop()
            stack.extend(sum((task.get(key) or [] for key in ("block", "rescue", "always")), []))
            actions.update(key for key in task if key.count(".") == 2)
            actions.update(key for key in task.get("module_defaults") or {})
    assert actions and all(action.startswith(("ansible.builtin.", "agentguard.hardening.")) for action in actions), actions
    ours = sorted(action for action in actions if action.startswith("agentguard.hardening."))
    assert ours == ["agentguard.hardening.egress_host_state", "agentguard.hardening.egress_rules"]
    for action in ours:
        assert "`%s`" % action in text, action
    assert "`dependencies: []`" in text and load(os.path.join(ROLE, "meta", "main.yml"))["dependencies"] == []
