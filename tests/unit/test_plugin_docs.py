"""Every plugin's DOCUMENTATION, EXAMPLES and RETURN parse as YAML (ansible-doc and validate-modules
read them; a ': ' in a plain scalar silently hides a module's whole documentation).

A filter file that defines several filters documents each in the .yml file of its name beside it and has no
DOCUMENTATION of its own: ansible-doc reads a .py file's DOCUMENTATION for every filter the file defines, so it
would show one filter's page under all the names (test_installed_collection.py checks the rendered pages)."""
import ast
import glob
import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = sorted(glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py")) + glob.glob(os.path.join(ROOT, "plugins", "lookup", "*.py")))
FILTERS = sorted(glob.glob(os.path.join(ROOT, "plugins", "filter", "*.py")))
SIDECARS = sorted(glob.glob(os.path.join(ROOT, "plugins", "filter", "*.yml")))


def blocks(path):
    with open(path) as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
            yield node.targets[0].id, node.value.value


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(p, ROOT) for p in FILES])
def test_documentation_blocks_parse(path):
    found = dict(blocks(path))
    assert set(found) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}, path
    for name, text in found.items():
        assert yaml.safe_load(text) is not None, name
    assert yaml.safe_load(found["DOCUMENTATION"]).get("short_description")


def filter_names(path):
    """The names a filter file's FilterModule.filters() returns (the keys of its dict literal)."""
    with open(path) as handle:
        tree = ast.parse(handle.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "filters":
            ret = next(n for n in ast.walk(node) if isinstance(n, ast.Return))
            return [k.value for k in ret.value.keys]
    return []


@pytest.mark.parametrize("path", FILTERS, ids=[os.path.relpath(p, ROOT) for p in FILTERS])
def test_each_filter_has_its_own_documentation(path):
    names = filter_names(path)
    assert names, path
    found = dict(blocks(path))
    if found:
        # DOCUMENTATION in the .py shadows every sidecar: only for a file with one filter.
        assert len(names) == 1, "%s defines %s: document each in its own .yml, not in the .py" % (path, names)
        assert set(found) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}, path
        assert yaml.safe_load(found["DOCUMENTATION"])["name"] == names[0]
        return
    for name in names:
        sidecar = os.path.join(os.path.dirname(path), name + ".yml")
        assert sidecar in SIDECARS, "%s: filter %s has no %s" % (path, name, os.path.basename(sidecar))


@pytest.mark.parametrize("path", SIDECARS, ids=[os.path.relpath(p, ROOT) for p in SIDECARS])
def test_sidecar_documentation_parses(path):
    with open(path) as handle:
        doc = yaml.safe_load(handle)
    assert set(doc) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}, path
    assert doc["DOCUMENTATION"]["name"] == os.path.basename(path)[:-4]
    assert doc["DOCUMENTATION"].get("short_description")
