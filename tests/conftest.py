"""Make this checkout importable as ansible_collections.agentguard.hardening for pytest.

Under ansible-test the checkout already sits in an ansible_collections/agentguard/hardening
tree; elsewhere scripts/bootstrap.sh links it into .cache/collections.
"""
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
parts = ROOT.split(os.sep)
if parts[-3:-2] == ["ansible_collections"]:
    base = os.sep.join(parts[:-3])
else:
    base = os.path.join(ROOT, ".cache", "collections")
    link = os.path.join(base, "ansible_collections", "agentguard", "hardening")
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(ROOT, link)
if base not in sys.path:
    sys.path.insert(0, base)


@pytest.fixture
def promtool():
    """Prometheus's promtool (Debian's prometheus, which scripts/bootstrap.sh installs); CI must have it."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (scripts/bootstrap.sh installs Debian's prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return path
