"""roles/egress/files/host_state.py: the one read-only command an unchanged run relies on.

The role skips persistence when the hashes, modes and owners reported here match what it wants,
so a wrong hash or a missing file reported as present would leave stale rules files behind."""
import hashlib
import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "egress", "files", "host_state.py")


def host_state(query):
    with open(SCRIPT) as handle:
        code = handle.read()
    out = subprocess.run([sys.executable, "-c", code, json.dumps(query)], stdout=subprocess.PIPE, check=True,
                         universal_newlines=True).stdout
    return json.loads(out)


def test_files_are_hashed_and_missing_paths_left_out(tmp_path):
    rules = tmp_path / "rules.v4"
    content = "# Managed by agentguard.hardening\n*filter\n:OUTPUT DROP [0:0]\nCOMMIT\n"
    rules.write_text(content)
    rules.chmod(0o600)
    missing = str(tmp_path / "ipsets")
    state = host_state({"manager": "dpkg", "packages": [], "active": [], "enabled": [],
                        "paths": [str(rules), str(tmp_path), missing]})
    entry = state["paths"][str(rules)]
    assert entry["sha256"] == hashlib.sha256(content.encode()).hexdigest()
    assert entry["mode"] == "0600" and entry["type"] == "file"
    assert entry["uid"] == os.getuid() and entry["gid"] == os.getgid()
    assert state["paths"][str(tmp_path)]["type"] == "other" and "sha256" not in state["paths"][str(tmp_path)]
    assert missing not in state["paths"]


def test_a_changed_file_gets_another_hash(tmp_path):
    rules = tmp_path / "rules.v6"
    rules.write_text("a\n")
    first = host_state({"paths": [str(rules)]})["paths"][str(rules)]["sha256"]
    rules.write_text("a\n\n")
    assert host_state({"paths": [str(rules)]})["paths"][str(rules)]["sha256"] != first


def test_installed_packages_only():
    # bootstrap.sh installs iptables on the test machine (Debian).
    state = host_state({"manager": "dpkg", "packages": ["iptables", "agentguard-no-such-package"], "paths": []})
    assert state["packages"] == ["iptables"]


def test_users_missing_on_the_host_are_named():
    # root exists everywhere, a numeric uid needs no passwd entry.
    state = host_state({"users": ["root", "agentguard-no-such-user", "4242"], "paths": []})
    assert state["missing_users"] == ["agentguard-no-such-user"]
