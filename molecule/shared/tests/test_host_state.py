# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""egress_host_state's unit answers, from one systemctl show call, are what is-active and is-enabled
say, for every unit file on the host and units that do not exist (read-only)."""
import json
import os

HOST_PY = os.path.join(os.path.dirname(__file__), "..", "..", "..", "plugins", "module_utils", "_host.py")

CODE = """
import json, subprocess, sys, types
source = sys.argv[1]
H = types.ModuleType("_host")
exec(compile(source, "_host.py", "exec"), H.__dict__)
def run(argv):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True).stdout
files = run(["systemctl", "list-unit-files", "--no-legend", "--type=service,path,timer,socket"]).split("\\n")
units = sorted(set(line.split()[0] for line in files if line.strip()))[:200]
units += ["agentguard-no-such.service", "iptables.service", "ipset.service", "netfilter-persistent.service"]
ours = H.unit_states(units, run)
theirs = dict((u, {"active": run(["systemctl", "is-active", u]).strip() or "unknown",
                   "enabled": run(["systemctl", "is-enabled", u]).strip() or "unknown"}) for u in units)
print(json.dumps({"ours": ours, "theirs": theirs}))
"""


def test_unit_states_match_systemctl(target):
    with open(HOST_PY) as handle:
        source = handle.read()
    out = target.host.run("python3 -c %s %s", CODE, source)
    assert out.rc == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["ours"]) > 20  # the host's own units, not just the few named
    for answer in data["theirs"].values():
        # systemd before 250 (Debian 11, 12) prints nothing for a unit without a unit file.
        if answer["enabled"] == "unknown":
            answer["enabled"] = "not-found"
    differ = dict((u, (data["ours"][u], data["theirs"][u])) for u in data["theirs"] if data["ours"][u] != data["theirs"][u])
    assert not differ, differ
    assert data["ours"]["agentguard-no-such.service"] == {"active": "inactive", "enabled": "not-found"}
