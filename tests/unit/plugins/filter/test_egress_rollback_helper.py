# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""The snapshot and rollback helper, rendered in Python like every other file the role writes.
tests/unit/fixtures/rollback_helper.json holds the sha256 of what the role's Jinja template (egress-rollback.sh.j2,
removed in the commit that added this test) rendered for the same settings: the helper is byte for byte what it was."""
import hashlib
import json
import os
import subprocess

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.agentguard.hardening.plugins.filter import egress_boot_files as B

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "fixtures",
                       "rollback_helper.json")
ROLE_TLS = {"unit": "agentguard-tlsgate.service", "conf": "/etc/agentguard/tls-gate/nginx.conf", "binary": "/usr/sbin/nginx"}
CASES = {
    "role-defaults": ("Managed by agentguard.hardening", "/var/lib/agentguard/egress", "agentguard-egress-rollback", ROLE_TLS),
    "other-paths": ("Managed by someone else", "/srv/state dir", "my-rollback", {"unit": "gate.service", "conf": "/etc/gate/nginx.conf"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_helper_is_byte_for_byte_what_the_template_rendered(case):
    with open(FIXTURE) as handle:
        rendered_by_the_template = json.load(handle)[case]
    assert hashlib.sha256(B.egress_rollback_helper(*CASES[case]).encode()).hexdigest() == rendered_by_the_template


def test_the_helper_is_valid_shell_and_holds_no_placeholder():
    script = B.egress_rollback_helper(*CASES["role-defaults"])
    assert "@" not in script.split("\n", 3)[1] and "@SETTINGS@" not in script and "@MARKER@" not in script
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)


@pytest.mark.parametrize("args", [
    ("m", "/var/lib/it's", "u", ROLE_TLS),
    ("m", "/d", "u\nrm -rf /", ROLE_TLS),
    ("m", "/d", "", ROLE_TLS),
    ("m", "/d", "u", {"unit": "gate.service"}),
    ("two\nlines", "/d", "u", ROLE_TLS),
])
def test_a_setting_that_would_change_the_script_fails(args):
    with pytest.raises(AnsibleFilterError, match="egress_rollback_helper"):
        B.egress_rollback_helper(*args)
