"""_host (module egress_host_state): the answers an unchanged run of the role relies on.

The role skips persistence when the hashes, modes and owners reported here match what it wants, and
installs only the packages reported missing: a wrong hash, a missing file reported present or a
package counted as installed while only its configuration is left would leave the host wrong."""
import hashlib
import os
import subprocess
import sys

import pytest

from ansible_collections.agentguard.hardening.plugins.module_utils import _host as H

from .conftest import fake_host


def host(run):
    """A fake host whose commands print what run(argv) answers."""
    return fake_host(lambda argv: (0, run(argv), ""))


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
    state = H.host_state({"paths": [str(rules), str(tmp_path), missing]}, host(Runner()), False, "Debian")
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
    assert H.host_state({"packages": ["iptables"]}, host(run), False, "Debian")["packages"] == ["iptables"]
    assert [c[0] for c in run.calls] == ["dpkg-query"]
    assert H.host_state({"packages": ["iptables"]}, host(run), False, "RedHat")["packages"] == ["iptables"]
    assert [c[0] for c in run.calls] == ["dpkg-query", "rpm"]
    # No package database the role knows: nothing is asked, nothing counts as installed.
    assert H.host_state({"packages": ["iptables"]}, host(run), False, "Suse")["packages"] == []
    assert len(run.calls) == 2


def test_installed_packages_on_this_machine():
    # bootstrap.sh installs iptables on the test machine (Debian); the real dpkg-query answers.
    def run(argv):
        return subprocess.run(argv, stdout=subprocess.PIPE, universal_newlines=True, check=False).stdout
    assert H.installed("dpkg", ["iptables", "agentguard-no-such-package"], run) == ["iptables"]


SHOW = {
    "netfilter-persistent.service": "Id=netfilter-persistent.service\nLoadState=loaded\nActiveState=active\n"
                                    "UnitFileState=enabled\n",
    "agentguard-dns.service": "Id=agentguard-dns.service\nLoadState=loaded\nActiveState=failed\n"
                              "UnitFileState=disabled\n",
    # A unit without a unit file (another platform's): systemctl still answers, with empty UnitFileState.
    "iptables.service": "Id=iptables.service\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n",
    # An alias (Debian's netfilter-persistent is also ipset.service): show answers for its target.
    "ipset.service": "Id=netfilter-persistent.service\nLoadState=loaded\nActiveState=active\n"
                     "UnitFileState=enabled\n",
}


def show(argv):
    assert argv[:3] == ["systemctl", "show", "--property=Id,LoadState,ActiveState,UnitFileState"] and argv[3] == "--"
    return "\n".join(SHOW[unit] for unit in argv[4:])


def test_units_are_asked_in_one_call_and_only_with_systemd():
    run = Runner({"systemctl": show})
    query = {"active": ["agentguard-dns.service", "netfilter-persistent.service"],
             "enabled": ["netfilter-persistent.service", "iptables.service", "ipset.service"]}
    state = H.host_state(query, host(run), True, "Debian")
    assert state["active"] == {"agentguard-dns.service": "failed", "netfilter-persistent.service": "active"}
    # As is-enabled answers: an alias is "alias", whatever its target's state.
    assert state["enabled"] == {"netfilter-persistent.service": "enabled", "iptables.service": "not-found",
                                "ipset.service": "alias"}
    # One call, each unit once.
    assert [c[4:] for c in run.calls if c[0] == "systemctl"] == [
        ["agentguard-dns.service", "netfilter-persistent.service", "iptables.service", "ipset.service"]]
    no_systemd = H.host_state(query, host(Runner()), False, "Debian")
    assert no_systemd["enabled"] == {} and no_systemd["active"] == {}


def test_units_are_asked_one_by_one_when_show_cannot_answer():
    # An invalid name makes systemctl show fail for all; a template cannot be shown: is-active and
    # is-enabled answer them one by one.
    def systemctl(argv):
        if argv[1] == "show":
            return "" if "bad name" in argv else "\n".join(SHOW[unit] for unit in argv[4:])
        return {"is-active": "inactive\n", "is-enabled": "static\n" if "@." in argv[2] else ""}[argv[1]]
    run = Runner({"systemctl": systemctl})
    states = H.unit_states(["netfilter-persistent.service", "bad name"], run)
    assert states == {"netfilter-persistent.service": {"active": "inactive", "enabled": "unknown"},
                      "bad name": {"active": "inactive", "enabled": "unknown"}}
    assert len(run.calls) == 5
    run = Runner({"systemctl": systemctl})
    states = H.unit_states(["getty@.service", "netfilter-persistent.service"], run)
    assert states == {"getty@.service": {"active": "inactive", "enabled": "static"},
                      "netfilter-persistent.service": {"active": "active", "enabled": "enabled"}}
    assert [c[1] for c in run.calls] == ["show", "is-active", "is-enabled"]


def test_show_output_parsed_per_unit():
    text = "Id=a.service\nActiveState=active\nUnitFileState=\n\nId=b.service\nActiveState=inactive\n"
    assert H.parse_show(text) == [{"Id": "a.service", "ActiveState": "active", "UnitFileState": ""},
                                  {"Id": "b.service", "ActiveState": "inactive"}]
    assert H.parse_show("") == []


def test_units_on_this_machine_match_is_active_and_is_enabled():
    # The real systemctl (when this machine runs systemd) must agree with its own is-active/is-enabled.
    if not os.path.isdir("/run/systemd/system"):
        pytest.skip("systemd is not PID 1 here; the Molecule scenarios run the module on systemd hosts")

    def run(argv):
        return subprocess.run(argv, stdout=subprocess.PIPE, universal_newlines=True, check=False).stdout
    units = ["systemd-journald.service", "agentguard-no-such.service"]
    states = H.unit_states(units, run)
    for unit in units:
        assert states[unit]["active"] == run(["systemctl", "is-active", unit]).strip()
        # systemd before 250 prints nothing for a unit without a unit file.
        assert states[unit]["enabled"] == (run(["systemctl", "is-enabled", unit]).strip() or "not-found")


OS_RELEASES = [
    # (os-release, /etc/debian_version, distribution, major, os_family)
    ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n',
     "12.7\n", "Debian", "12", "Debian"),
    ('PRETTY_NAME="Debian GNU/Linux trixie/sid"\nNAME="Debian GNU/Linux"\nID=debian\n', "trixie/sid\n",
     "Debian", "unknown", "Debian"),
    ('NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\nID_LIKE=debian\n', "trixie/sid\n", "Ubuntu", "24", "Debian"),
    ('NAME="Rocky Linux"\nVERSION_ID="9.4"\nID="rocky"\nID_LIKE="rhel centos fedora"\n', "", "Rocky", "9", "RedHat"),
    ('NAME="Red Hat Enterprise Linux"\nVERSION_ID="8.10"\nID="rhel"\nID_LIKE="fedora"\n', "", "RedHat", "8", "RedHat"),
    ('NAME="AlmaLinux"\nVERSION_ID="9.5"\nID="almalinux"\n', "", "AlmaLinux", "9", "RedHat"),
    ('NAME="Amazon Linux"\nVERSION_ID="2023"\nID="amzn"\nID_LIKE="fedora"\n', "", "Amazon", "2023", "RedHat"),
    # Unknown to the table: named by NAME, family from ID_LIKE (or its own name).
    ('NAME="Example OS"\nVERSION_ID=3\nID=exampleos\nID_LIKE="ubuntu debian"\n', "", "Example OS", "3", "Debian"),
    ('NAME="openSUSE Leap"\nVERSION_ID="15.6"\nID="opensuse-leap"\nID_LIKE="suse opensuse"\n', "",
     "openSUSE Leap", "15", "openSUSE Leap"),
    ("", "", "unknown", "unknown", "unknown"),
]


@pytest.mark.parametrize("text,debian_version,distribution,major,family", OS_RELEASES)
def test_platform_from_os_release(text, debian_version, distribution, major, family):
    facts = H.platform_facts(H.parse_os_release(text), debian_version)
    assert facts == {"distribution": distribution, "distribution_major_version": major, "os_family": family}


def test_os_release_shell_quoting():
    text = "# comment\nNAME='It''s'\nPRETTY_NAME=\"A \\\"quoted\\\" name\"\nBROKEN=\"open\n"
    values = H.parse_os_release(text)
    assert values["NAME"] == "Its" and values["PRETTY_NAME"] == 'A "quoted" name' and values["BROKEN"] == '"open'


def test_platform_of_this_machine_is_what_setup_says():
    # The test machine is Debian 12 (the CI's); setup's own collector must agree with ours.
    from ansible.module_utils.facts.system.distribution import DistributionFactCollector

    class Module:
        @staticmethod
        def get_bin_path(*args, **kwargs):
            return None

        @staticmethod
        def run_command(*args, **kwargs):
            return 1, "", ""
    setup = DistributionFactCollector().collect(module=Module())
    with open("/etc/os-release") as handle:
        text = handle.read()
    debian_version = ""
    if os.path.exists("/etc/debian_version"):
        with open("/etc/debian_version") as handle:
            debian_version = handle.read()
    ours = H.platform_facts(H.parse_os_release(text), debian_version)
    assert ours == dict((k, setup[k]) for k in ("distribution", "distribution_major_version", "os_family"))


def test_the_module_does_not_load_the_fact_collectors():
    # Importing anything under module_utils.facts loads every collector: a third of the module's run.
    code = ("import sys; import ansible_collections.agentguard.hardening.plugins.modules.egress_host_state; "
            "print(sorted(m for m in sys.modules if m.startswith('ansible.module_utils.facts')))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, universal_newlines=True, check=True,
                         env=env).stdout
    assert out.strip() == "[]"


def test_users_missing_on_the_host_are_named():
    # root exists everywhere, a numeric uid needs no passwd entry.
    assert H.missing_users(["root", "agentguard-no-such-user", "4242", 1000]) == ["agentguard-no-such-user"]
    # host_state asks the host's passwd.
    known = {"agent": 1000}.__getitem__
    assert H.host_state({"users": ["agent", "ghost", "4242"]}, fake_host(uid_of=known), False, "Debian")["missing_users"] == ["ghost"]
