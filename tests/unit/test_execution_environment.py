"""execution-environment.yml: `ansible-builder create` writes a build context that holds the collection,
and the installed collection tells ansible-builder what it needs (meta/execution-environment.yml).

This test stops at the build context and then runs the context's galaxy step
(`ansible-galaxy collection install -r requirements.yml` in its _build directory, as the Containerfile
does) on this machine, so the collection the image would get is proved installable and complete, and
`ansible-builder introspect` on that installed copy lists its Python and system requirements.
scripts/ee.sh (stage `ee` of scripts/test.sh) builds the image for real and runs a job in it.
"""
import os
import shutil
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("ansible_builder", reason="ansible-builder is in requirements-dev.txt")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _load(path):
    with open(os.path.join(ROOT, path)) as handle:
        return yaml.safe_load(handle)


def _run(argv, cwd):
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, check=False,
                          env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(cwd, ".none")))
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """The EE definition and the files it names, beside a fresh collection tarball, built into a context."""
    ee = tmp_path_factory.mktemp("ee")
    definition = _load("execution-environment.yml")
    shutil.copy(os.path.join(ROOT, "execution-environment.yml"), str(ee))
    for key in ("galaxy",):
        path = definition["dependencies"][key]
        os.makedirs(str(ee / os.path.dirname(path)), exist_ok=True)
        shutil.copy(os.path.join(ROOT, path), str(ee / path))
    _run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--force", "--output-path", str(ee), ROOT], ROOT)
    out = tmp_path_factory.mktemp("context")
    log = _run([os.path.join(BIN, "ansible-builder"), "create", "-f", str(ee / "execution-environment.yml"),
                "-c", str(out), "--output-filename", "Containerfile"], str(ee))
    assert "No matches" not in log and "does not exist" not in log, log
    return out


def test_the_collection_file_name_follows_galaxy_yml():
    version = _load("galaxy.yml")["version"]
    names = [c["name"] for c in _load("meta/ee-collections.yml")["collections"]]
    assert names == ["collections/agentguard-hardening-%s.tar.gz" % version]


def test_create_writes_a_build_context(context):
    containerfile = (context / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="quay.io/centos/centos:stream9"' in containerfile
    assert "ansible-galaxy collection install" in containerfile
    assert "COPY _build /build" in containerfile
    build = context / "_build"
    # The Python requirements come from the installed collection's meta/execution-environment.yml
    # (introspected in the builder stage), not from the EE definition.
    assert not (build / "requirements.txt").exists()
    version = _load("galaxy.yml")["version"]
    assert (build / "collections" / ("agentguard-hardening-%s.tar.gz" % version)).is_file()


def test_the_contexts_galaxy_step_installs_the_whole_collection(context, tmp_path):
    # As the Containerfile's galaxy stage: WORKDIR /build (the context's _build), install -r requirements.yml.
    build = str(context / "_build")
    _run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-r", "requirements.yml",
          "-p", str(tmp_path)], build)
    installed = tmp_path / "ansible_collections" / "agentguard" / "hardening"
    for path in ("plugins/modules/egress_rules.py", "plugins/filter/egress_k8s_policies.py",
                 "plugins/lookup/egress_resolve.py", "roles/egress/tasks/main.yml",
                 "playbooks/harden-agent.yml", "playbooks/export-kubernetes.yml", "playbooks/egress-report.yml",
                 "meta/execution-environment.yml"):
        assert (installed / path).is_file(), path
    # What ansible-builder's builder stage does with the installed collections.
    proc = subprocess.run([os.path.join(BIN, "ansible-builder"), "introspect", str(tmp_path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert proc.returncode == 0, proc.stderr
    found = yaml.safe_load(proc.stdout)
    origin = "  # from collection agentguard.hardening"
    assert found == {
        "python": ["dnspython>=2.3" + origin],
        "system": ["openssh-client [platform:dpkg]" + origin, "openssh-clients [platform:rpm]" + origin],
    }, found
