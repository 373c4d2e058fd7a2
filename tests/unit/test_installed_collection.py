"""The collection as a Galaxy user gets it: built with ansible-galaxy into a tarball, installed from that
tarball into an empty collections path, and used from an empty directory (no ansible.cfg of this checkout).

- the tarball holds the collection and its docs only: every file is on an allow-list (no lab, scripts,
  Molecule, developer config, unreleased changelog fragments, caches);
- every user playbook runs by its FQCN (agentguard.hardening.harden_agent & co.);
- every plugin and role has its own ansible-doc page, showing its own name, without broken markup;
- the filter list a user sees says which filters are the role's internals.
"""
import fnmatch
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
NAMESPACE = "agentguard.hardening"

# What the tarball may hold (fnmatch's * also matches /). A file elsewhere fails the test.
ALLOWED = [
    "MANIFEST.json", "FILES.json", "README.md", "LICENSE", "LICENSES/*.txt",
    "CHANGELOG.rst", "changelogs/changelog.yaml", "changelogs/config.yaml",
    "meta/*", "docs/*.md", "plugins/*", "roles/*", "playbooks/*", "inventories/example/*",
]
# Never, even below an allowed folder.
FORBIDDEN = ["*__pycache__*", "*.pyc", "*.hypothesis*", "*.pytest_cache*", "*egress-report/*", "*.tar.gz"]
# The files a user must get.
REQUIRED = ["LICENSE", "LICENSES/GPL-3.0-or-later.txt", "CHANGELOG.rst", "changelogs/changelog.yaml",
            "meta/runtime.yml", "README.md", "roles/egress/meta/argument_specs.yml"]
PLAYBOOKS = ["harden_agent", "remove_egress", "egress_report", "export_kubernetes", "egress_learn"]
# The filters a user may call in their own playbooks; every other filter is the role's internal and says so.
PUBLIC_FILTERS = {"egress_policy_errors", "egress_k8s_policies", "egress_report_summary", "egress_report_chart",
                  "egress_learn_proposal"}
INTERNAL_PREFIX = "Internal (role egress) - "


def tarball_problems(names):
    """The file names of a collection tarball that are outside ALLOWED or FORBIDDEN, and REQUIRED files missing."""
    bad = [n for n in names if not any(fnmatch.fnmatch(n, p) for p in ALLOWED)
           or any(fnmatch.fnmatch(n, p) for p in FORBIDDEN)]
    missing = [n for n in REQUIRED if n not in names]
    return sorted(bad), missing


def run(argv, env, cwd, timeout=300):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          env=env, cwd=cwd, timeout=timeout, check=False)
    assert proc.returncode == 0, "%s\n%s\n%s" % (" ".join(argv), proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


@pytest.fixture(scope="module")
def galaxy(tmp_path_factory):
    """(tarball, env, cwd): the built tarball, and an environment whose only collection is its installed copy."""
    out = tmp_path_factory.mktemp("galaxy")
    empty = out / "empty"
    empty.mkdir()
    config = out / "ansible.cfg"
    config.write_text("[defaults]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(config), ANSIBLE_COLLECTIONS_PATH=str(out / "installed"),
               ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false", ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_HOME=str(out / "home"), COLUMNS="200",
               PYTHONWARNINGS="ignore", PATH=BIN + os.pathsep + os.environ["PATH"])
    run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(out), ROOT], env, str(empty))
    tarball = next(str(p) for p in out.glob("agentguard-hardening-*.tar.gz"))
    run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-p", str(out / "installed"), tarball],
        env, str(empty))
    return tarball, env, str(empty)


def test_tarball_holds_the_collection_and_its_docs_only(galaxy):
    with tarfile.open(galaxy[0]) as tar:
        names = [m.name[2:] if m.name.startswith("./") else m.name for m in tar.getmembers() if not m.isdir()]
    bad, missing = tarball_problems(names)
    assert not bad, "the tarball ships files outside the allow-list (galaxy.yml build_ignore):\n" + "\n".join(bad)
    assert not missing, "the tarball lacks " + ", ".join(missing)


def test_allow_list_catches_what_must_not_ship():
    names = ["plugins/filter/egress_phases.py", "ansible.cfg", "lab/rogue-dns/dnsmasq.conf", "Makefile",
             "changelogs/fragments/egress-role.yml", "plugins/filter/__pycache__/x.pyc", "inventories/lab/hosts.yml"]
    bad, missing = tarball_problems(names)
    assert bad == sorted(names[1:])
    assert "LICENSES/GPL-3.0-or-later.txt" in missing


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_runs_by_fqcn(galaxy, playbook):
    out = run([os.path.join(BIN, "ansible-playbook"), "%s.%s" % (NAMESPACE, playbook), "--syntax-check"],
              galaxy[1], galaxy[2])
    assert "playbooks/%s.yml" % playbook in out


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, ".git")) and not os.path.isfile(os.path.join(ROOT, ".git")),
                    reason="not a git checkout")
def test_fresh_clone_runs_the_playbooks_without_setup(galaxy, tmp_path):
    """The README's fleet commands on a fresh clone (of the last commit): ./ansible.cfg finds the checkout as
    agentguard.hardening through the committed link collections/ansible_collections/agentguard/hardening."""
    clone = tmp_path / "clone"
    env = {k: v for k, v in galaxy[1].items() if k not in ("ANSIBLE_CONFIG", "ANSIBLE_COLLECTIONS_PATH")}
    run(["git", "clone", "-q", ROOT, str(clone)], env, str(tmp_path))
    for playbook in PLAYBOOKS + ["harden-agent"]:
        out = run([os.path.join(BIN, "ansible-playbook"), "-i", "inventories/example", "playbooks/%s.yml" % playbook,
                   "--syntax-check"], env, str(clone))
        assert "playbook: playbooks/%s.yml" % playbook in out


def listed(galaxy, plugin_type):
    """{fqcn: short description} of the collection's plugins of that type, as ansible-doc -l lists them."""
    return json.loads(run([os.path.join(BIN, "ansible-doc"), "-l", "-t", plugin_type, "--json", NAMESPACE],
                          galaxy[1], galaxy[2]))


# Markup that rendered: ansible-doc turns O(x) into `x' and so on; what is left looks like one of these.
BROKEN = re.compile(r"\b(?:RV|[BCEILMOPUV])\((?!\))|\bRV [a-z_]|\[ERROR|\bERROR while")


def broken_markup(text):
    return sorted({text[max(0, m.start() - 30):m.end() + 30].replace("\n", " ") for m in BROKEN.finditer(text)})


@pytest.mark.parametrize("plugin_type", ["module", "filter", "lookup", "role"])
def test_each_plugin_has_its_own_page(galaxy, plugin_type):
    names = sorted(listed(galaxy, plugin_type))
    assert names, plugin_type
    docs = json.loads(run([os.path.join(BIN, "ansible-doc"), "-t", plugin_type, "--json"] + names,
                          galaxy[1], galaxy[2]))
    wrong = []
    for fqcn in names:
        short = fqcn.rsplit(".", 1)[1]
        page = docs[fqcn]
        if plugin_type == "role":
            shown = sorted(page.get("entry_points", {}))
            if "main" not in shown:
                wrong.append("%s: no main entry point (%s)" % (fqcn, shown))
            continue
        doc = page["doc"]
        shown = doc.get("module") or doc.get("name")
        if shown != short:
            wrong.append("%s shows the page of %s (%s)" % (fqcn, shown, doc.get("filename")))
    assert not wrong, "\n".join(wrong)
    text = run([os.path.join(BIN, "ansible-doc"), "-t", plugin_type] + names, galaxy[1], galaxy[2])
    assert not broken_markup(text), "broken markup in the %s pages:\n%s" % (plugin_type, "\n".join(broken_markup(text)))


def test_broken_markup_is_seen():
    assert broken_markup("From the RV tls_gate result") and broken_markup("see O(allow") \
        and not broken_markup("the `tls_gate' result (C) of M") and not broken_markup("RV() only")


def test_filter_list_says_which_filters_are_internal(galaxy):
    filters = {fqcn.rsplit(".", 1)[1]: text for fqcn, text in listed(galaxy, "filter").items()}
    assert PUBLIC_FILTERS <= set(filters)
    public = sorted(n for n, text in filters.items() if not text.startswith(INTERNAL_PREFIX))
    assert public == sorted(PUBLIC_FILTERS), "filters listed without %r: %s" % (INTERNAL_PREFIX, public)
