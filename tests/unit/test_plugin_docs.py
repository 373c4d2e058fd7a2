"""Every plugin's DOCUMENTATION, EXAMPLES and RETURN parse as YAML (ansible-doc and validate-modules
read them; a ': ' in a plain scalar silently hides a module's whole documentation)."""
import ast
import glob
import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = sorted(glob.glob(os.path.join(ROOT, "plugins", "modules", "*.py")) + glob.glob(os.path.join(ROOT, "plugins", "filter", "*.py")))


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
