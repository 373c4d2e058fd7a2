"""The role README's variables section is generated from meta/argument_specs.yml (scripts/role_readme.py)
and must not drift from it; defaults/main.yml must say what argument_specs says; the README's "Where
things are" table names every task file and filter."""
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


def test_the_readme_variables_are_the_argument_specs():
    proc = generate("--check", ROLE)
    assert proc.returncode == 0, "%s\n%s" % (proc.stdout[-3000:], proc.stderr)


def test_a_drifted_readme_fails_the_check_and_is_rewritten(tmp_path):
    role = tmp_path / "egress"
    shutil.copytree(os.path.join(ROLE, "meta"), str(role / "meta"))
    shutil.copy(os.path.join(ROLE, "README.md"), str(role / "README.md"))
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
