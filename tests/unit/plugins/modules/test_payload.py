# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the modules that run on every role run ship and import: their module_utils closure, as Ansible
builds it into the module's payload (every module_utils the module imports, transitively). The guard's
daemon and the metrics code are the guard's, not theirs: each costs compile time on the controller and
on the host on every run (docs/benchmarks.md, apply cost)."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
PACKAGE = "ansible_collections.agentguard.hardening.plugins.module_utils"
NOT_THEIRS = {"_guard", "_metrics", "_dnslog", "_logtime"}


def imported(path):
    """The collection's module_utils that the file at path imports."""
    with open(path) as handle:
        tree = ast.parse(handle.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            rest = node.module[len(PACKAGE):].lstrip(".")
            names.update([rest] if rest else [alias.name for alias in node.names])
    return names


def closure(module):
    seen, todo = set(), imported(os.path.join(ROOT, "plugins", "modules", module + ".py"))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo |= imported(os.path.join(ROOT, "plugins", "module_utils", name + ".py"))
    return seen


@pytest.mark.parametrize("module", ["egress_rules", "egress_host_state"])
def test_the_apply_modules_do_not_load_the_guards_daemon(module):
    shipped = closure(module)
    assert "_desired" in shipped and "_rules" in shipped  # the closure is really computed
    assert not shipped & NOT_THEIRS, sorted(shipped & NOT_THEIRS)
