# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""What finding one of the collection's filters costs an Ansible worker (plugins/plugin_utils/_filters.py).

Ansible's filter loader loads every filter file of a collection to find any one filter of it, in each worker
process, and its collection loader compiles a module_utils from source on each import. So the filter files
import no module_utils at the top: finding a filter loads none, and calling it loads only what it uses.
Run in a fresh interpreter with Ansible's own plugin loader, as a worker finds a filter."""

import json
import os
import subprocess
import sys

import pytest

PACKAGE = "ansible_collections.agentguard.hardening.plugins.module_utils."

CHILD = r"""
import json, sys
from ansible.plugins.loader import filter_loader, init_plugin_loader
init_plugin_loader([sys.argv[1]])
found = filter_loader.get(sys.argv[2])
loaded = lambda: sorted(m for m in sys.modules if m.startswith(%r))
after_lookup = loaded()
calls = json.loads(sys.argv[3])
if calls is not None:
    found.j2_function(*calls)
print(json.dumps(dict(found=found is not None, after_lookup=after_lookup, after_call=loaded())))
""" % PACKAGE


def collections_path():
    """The directory holding ansible_collections/agentguard/hardening, this checkout (tests/conftest.py)."""
    for entry in sys.path:
        if os.path.isdir(os.path.join(entry, "ansible_collections", "agentguard", "hardening", "plugins")):
            return entry
    raise AssertionError("tests/conftest.py did not put the collection on sys.path")


def worker(name, args=None):
    out = subprocess.run([sys.executable, "-c", CHILD, collections_path(), name, json.dumps(args)], check=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [
    "agentguard.hardening.egress_decide",         # egress_phases.py, last of the files
    "agentguard.hardening.egress_boot_files",     # the first
    "agentguard.hardening.egress_coverage_warnings",
])
def test_finding_a_filter_loads_no_module_utils(name):
    seen = worker(name)
    assert seen["found"], name
    assert seen["after_lookup"] == [], seen["after_lookup"]


def test_calling_a_filter_loads_what_it_uses_and_no_more():
    # The input check of every run needs the policy's parser and the options; not the guard, the renderer,
    # the Kubernetes export or the learn mode.
    options = {"allow": [{"name": "api", "host": "198.18.0.10"}], "resolvers": ["198.18.0.53"], "state": "present"}
    seen = worker("agentguard.hardening.egress_input_errors", [options])
    assert seen["after_call"], "the call imported nothing: the test does not see imports"
    names = set(m[len(PACKAGE):] for m in seen["after_call"])
    assert names <= {"_options", "_policy", "_state"}, sorted(names)
    assert "_policy" in names
