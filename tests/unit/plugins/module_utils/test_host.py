"""_host (module egress_host_state): the answers an unchanged run of the role relies on.

The role skips persistence when the hashes, modes and owners reported here match what it wants, and
installs only the packages reported missing: a wrong hash, a missing file reported present or a
package counted as installed while only its configuration is left would leave the host wrong."""
import hashlib
import os
import subprocess

from ansible_collections.agentguard.hardening.plugins.module_utils import _host as H


class Runner:
    """Records the commands and answers them from a table (argv[0] -> stdout)."""

    def __init__(self, answers=None):
        self.answers = answers or {}
        self.calls = []

    def __call__(self, argv):
        self.calls.append(argv)
        answer = self.answers.get(argv[0], "")
        return answer(argv) if callable(answer) else answer


def test_files_are_hashed_and_missing_paths_left_out(tmp_path):
    rules = tmp_path / "rules.v4"
    content = "# Managed by agentguard.hardening\n*filter\n:OUTPUT DROP [0:0]\nCOMMIT\n"
    rules.write_text(content)
    rules.chmod(0o600)
    missing = str(tmp_path / "ipsets")
    state = H.host_state({"paths": [str(rules), str(tmp_path), missing]}, Runner(), False, "Debian")
    entry = state["paths"][str(rules)]
    assert entry["sha256"] == hashlib.sha256(content.encode()).hexdigest()
    assert entry["mode"] == "0600" and entry["type"] == "file"
    assert entry["uid"] == os.getuid() and entry["gid"] == os.getgid()
    assert state["paths"][str(tmp_path)]["type"] == "other" and "sha256" not in state["paths"][str(tmp_path)]
    assert missing not in state["paths"]


def test_a_link_is_described_not_followed(tmp_path):
    target = tmp_path / "target"
    target.write_text("x\n")
    link = tmp_path / "resolv.conf"
    link.symlink_to(target)
    assert H.describe(str(link))["type"] == "other"


def test_a_changed_file_gets_another_hash(tmp_path):
    rules = tmp_path / "rules.v6"
    rules.write_text("a\n")
    first = H.describe(str(rules))["sha256"]
    rules.write_text("a\n\n")
    assert H.describe(str(rules))["sha256"] != first


def test_dpkg_counts_installed_packages_only():
    # "rc": removed with its configuration left; "un": known but not installed.
    out = "iptables ii \nipset rc \nnetfilter-persistent un \n"
    run = Runner({"dpkg-query": out})
    assert H.installed("dpkg", ["iptables", "ipset", "netfilter-persistent", "dnsmasq"], run) == ["iptables"]
    assert run.calls[0][:3] == ["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n"]


def test_rpm_answers_by_name():
    out = "iptables-nft\npackage ipset-service is not installed\nipset\n"
    assert H.installed("rpm", ["iptables-nft", "ipset", "ipset-service"], Runner({"rpm": out})) == ["ipset", "iptables-nft"]


def test_the_os_family_picks_the_package_database():
    run = Runner({"dpkg-query": "iptables ii \n", "rpm": "iptables\n"})
    assert H.host_state({"packages": ["iptables"]}, run, False, "Debian")["packages"] == ["iptables"]
    assert [c[0] for c in run.calls] == ["dpkg-query"]
    assert H.host_state({"packages": ["iptables"]}, run, False, "RedHat")["packages"] == ["iptables"]
    assert [c[0] for c in run.calls] == ["dpkg-query", "rpm"]
    # No package database the role knows: nothing is asked, nothing counts as installed.
    assert H.host_state({"packages": ["iptables"]}, run, False, "Suse")["packages"] == []
    assert len(run.calls) == 2


def test_installed_packages_on_this_machine():
    # bootstrap.sh installs iptables on the test machine (Debian); the real dpkg-query answers.
    def run(argv):
        return subprocess.run(argv, stdout=subprocess.PIPE, universal_newlines=True, check=False).stdout
    assert H.installed("dpkg", ["iptables", "agentguard-no-such-package"], run) == ["iptables"]


def test_units_are_asked_one_by_one_and_only_with_systemd():
    answers = {"netfilter-persistent.service": "enabled\n", "iptables.service": ""}
    run = Runner({"systemctl": lambda argv: answers[argv[2]]})
    state = H.host_state({"enabled": list(answers), "active": []}, run, True, "Debian")
    assert state["enabled"] == {"netfilter-persistent.service": "enabled", "iptables.service": "unknown"}
    assert run.calls == [["systemctl", "is-enabled", u] for u in answers]
    assert H.host_state({"enabled": list(answers)}, Runner(), False, "Debian")["enabled"] == {}


def test_users_missing_on_the_host_are_named():
    # root exists everywhere, a numeric uid needs no passwd entry.
    assert H.missing_users(["root", "agentguard-no-such-user", "4242", 1000]) == ["agentguard-no-such-user"]
