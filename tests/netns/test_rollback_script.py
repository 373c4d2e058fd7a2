"""The role's on-host rollback (roles/egress/files/egress-rollback.sh as the filter egress_rollback_helper
renders it, the way the role installs it), run for real in a network
namespace: `save`, then other rules of ours, then `restore force` must give back the snapshot's state of
the tables it owns, mangle and nat included (the container networks' forward path, the redirects), with
our jumps where they were among the rules of others, which stay; sets made after the snapshot go."""
import os
import re
import subprocess

import pytest

from ansible_collections.agentguard.hardening.plugins.filter.egress_boot_files import egress_rollback_helper

from .conftest import require_root, sh

NS = "agit-rollback-%d" % os.getpid()
SET = "ag4-rbtest%d" % (os.getpid() % 10000)


def render(state_dir):
    text = egress_rollback_helper("test", state_dir, "agentguard-rb-test",
                                  {"unit": "agentguard-tlsgate-test.service", "conf": os.path.join(state_dir, "gate.conf")})
    path = os.path.join(state_dir, "egress-rollback.sh")
    with open(path, "w") as handle:
        handle.write(text)
    return path


@pytest.fixture
def ns(tmp_path):
    require_root()
    sh("ip", "netns", "add", NS)
    try:
        yield str(tmp_path)
    finally:
        sh("ip", "netns", "del", NS, check=False)
        sh("ipset", "destroy", SET, check=False)


def run(*argv, stdin=None):
    return subprocess.run(("ip", "netns", "exec", NS) + argv, input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, check=True)


def load(cmd, payload):
    run(cmd + "-restore", "--noflush", stdin=payload)


def tables(cmd):
    """mangle and nat as iptables-save prints them, without comments and counters."""
    out = []
    for table in ("mangle", "nat"):
        text = run(cmd + "-save", "-t", table).stdout
        out += [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#")]
    return out


FOREIGN = {
    "iptables": "*mangle\n-A FORWARD -i veth9 -j MARK --set-mark 9\n-A FORWARD -o veth9 -j MARK --set-mark 8\nCOMMIT\n"
                "*nat\n-A PREROUTING -p tcp --dport 81 -j DNAT --to-destination 198.18.9.9:81\nCOMMIT\n",
    "ip6tables": "*mangle\n-A FORWARD -i veth9 -j MARK --set-mark 9\n-A FORWARD -o veth9 -j MARK --set-mark 8\nCOMMIT\n"
                 "*nat\n-A PREROUTING -p tcp --dport 81 -j DNAT --to-destination [fd00:9::9]:81\nCOMMIT\n",
}
OURS = ("*mangle\n:AGENTGUARD-FORWARD - [0:0]\n-I FORWARD 1 -j AGENTGUARD-FORWARD\n"
        "-A AGENTGUARD-FORWARD -i docker0 -j DROP\nCOMMIT\n"
        "*nat\n:AGENTGUARD-DNS - [0:0]\n-I PREROUTING 1 -j AGENTGUARD-DNS\n"
        "-A AGENTGUARD-DNS -i docker0 -p udp --dport 53 -j REDIRECT --to-ports 53\nCOMMIT\n")
OTHER = ("*mangle\n:AGENTGUARD-FORWARD - [0:0]\n:AGENTGUARD-FWD-ALLOW - [0:0]\n-A FORWARD -j AGENTGUARD-FORWARD\n"
         "-A AGENTGUARD-FORWARD -i br-+ -g AGENTGUARD-FWD-ALLOW\n-A AGENTGUARD-FWD-ALLOW -j RETURN\nCOMMIT\n")


@pytest.mark.parametrize("cmd", ["iptables", "ip6tables"])
def test_restore_gives_back_mangle_and_nat_as_they_were(ns, cmd):
    script = render(ns)
    load(cmd, FOREIGN[cmd])
    load(cmd, OURS)                          # the snapshot: our chains, our jumps first, the foreign rules after
    before = tables(cmd)
    assert any("-A FORWARD -j AGENTGUARD-FORWARD" in line for line in before)
    run("sh", script, "save")
    # What a failed apply leaves: our jumps moved to the end, a chain changed, one added, one removed
    # (with its jump), and a set that the new forward path references.
    if cmd == "iptables":
        run("ipset", "create", SET, "hash:net")
        other = OTHER.replace("-A AGENTGUARD-FWD-ALLOW -j RETURN", "-A AGENTGUARD-FWD-ALLOW -m set --match-set %s dst -j RETURN" % SET)
    else:
        other = OTHER
    run(cmd, "-t", "mangle", "-D", "FORWARD", "-j", "AGENTGUARD-FORWARD")
    run(cmd, "-t", "mangle", "-F", "AGENTGUARD-FORWARD")
    run(cmd, "-t", "nat", "-D", "PREROUTING", "-j", "AGENTGUARD-DNS")
    run(cmd, "-t", "nat", "-F", "AGENTGUARD-DNS")
    run(cmd, "-t", "nat", "-X", "AGENTGUARD-DNS")
    load(cmd, other)
    assert tables(cmd) != before
    run("sh", script, "restore", "force")
    assert tables(cmd) == before
    if cmd == "iptables":
        assert SET not in run("ipset", "list", "-n").stdout, "a set made after the snapshot is removed"


@pytest.mark.parametrize("cmd", ["iptables", "ip6tables"])
def test_restore_removes_what_the_snapshot_did_not_have_and_keeps_the_others(ns, cmd):
    script = render(ns)
    load(cmd, FOREIGN[cmd])
    before = tables(cmd)
    run("sh", script, "save")
    load(cmd, OURS)
    load(cmd, "*nat\n-A PREROUTING -p tcp --dport 82 -j DNAT --to-destination %s\nCOMMIT\n"
         % ("198.18.9.9:82" if cmd == "iptables" else "[fd00:9::9]:82"))   # another's rule, added meanwhile
    run("sh", script, "restore", "force")
    after = tables(cmd)
    assert not any("AGENTGUARD" in line for line in after)
    assert [line for line in after if "--dport 82" not in line] == before
    assert any("--dport 82" in line for line in after), "a rule of others added after the snapshot stays"
