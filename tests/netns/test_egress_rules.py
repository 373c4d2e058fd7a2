"""egress_rules against real kernels: namespaces, real servers, real connections, real logs."""
import os
import select
import stat
import subprocess
import time

import pytest

from .conftest import CDN4, CDN6, PYTHON, V4, V6, ModuleRunner, sh

POLICY = dict(
    allow=[dict(name="inference-api", host="api.test", ports=[443])],
    dns_servers=[V4["dns"], V6["dns"]],
    resolve_timeout=1.0,
)
ALLOWED = ["tcp:%s:443" % V4["allowed"], "tcp:[%s]:443" % V6["allowed"]]
BLOCKED = [
    "tcp:%s:443" % V4["forbidden"], "tcp:[%s]:443" % V6["forbidden"],      # forbidden host
    "tcp:%s:80" % V4["allowed"], "tcp:[%s]:80" % V6["allowed"],            # allowed host, wrong port
    "tcp:%s:8443" % V4["forbidden"], "tcp:[%s]:8443" % V6["forbidden"],
]
DNS = ["udp-dns:%s:api.test" % V4["dns"], "udp-dns:[%s]:api.test" % V6["dns"]]


def add_foreign_rules(lab):
    """What an admin, Docker or fail2ban may have: must be there, unchanged, afterwards."""
    for tool in ("iptables", "ip6tables"):
        lab.run(tool, "-N", "f2b-sshd")
        lab.run(tool, "-A", "f2b-sshd", "-j", "RETURN")
        lab.run(tool, "-I", "INPUT", "-p", "tcp", "--dport", "22", "-j", "f2b-sshd")
        lab.run(tool, "-N", "DOCKER-USER")
        lab.run(tool, "-A", "DOCKER-USER", "-j", "RETURN")
        lab.run(tool, "-A", "FORWARD", "-j", "DOCKER-USER")
        lab.run(tool, "-A", "OUTPUT", "-p", "udp", "--dport", "123", "-m", "comment", "--comment", "admin ntp", "-j", "ACCEPT")
    lab.run("ipset", "create", "f2b-blocklist", "hash:ip")
    lab.run("ipset", "add", "f2b-blocklist", "198.18.9.9")


def foreign_lines(save_text):
    return [l for l in save_text.splitlines() if "AGENTGUARD" not in l and not l.startswith(":OUTPUT")]


def diff_sections(text):
    """egress_rules' diff text ("# ipv4" then its lines, per family) as {family: [lines]}."""
    sections = {}
    for line in text.splitlines():
        if line.startswith("# "):
            sections[line[2:]] = current = []
        else:
            current.append(line)
    return sections


def snapshot(lab):
    return (lab.save("ipv4"), lab.save("ipv6"), lab.ipset())


def test_apply_four_ways_and_real_connections(lab, egress):
    add_foreign_rules(lab)
    before = snapshot(lab)
    assert set(lab.probe(BLOCKED).values()) == {"ok"}, "control: every forbidden service must be up first"

    check = egress(POLICY, check=True)
    assert check["changed"] is True
    assert "-P OUTPUT DROP" in check["changes"]["ipv4"]["added"]
    assert snapshot(lab) == before, "check mode must not touch the kernel"

    first = egress(POLICY)
    assert first["changed"] is True
    assert first["resolved"] == {"inference-api": {"ipv4": [V4["allowed"]], "ipv6": [V6["allowed"]]}}
    diff = first["diff"]
    assert (diff["before_header"], diff["after_header"]) == ("managed netfilter state (live)",
                                                             "managed netfilter state (desired)")
    before_text, after_text = diff_sections(diff["before"]), diff_sections(diff["after"])
    assert sorted(before_text) == sorted(after_text) == ["ipv4", "ipv6"]
    for family in ("ipv4", "ipv6"):
        # Nothing of ours before (the admin's rules are not ours to show); after, exactly what changed.
        assert before_text[family] == ["-P OUTPUT ACCEPT"], before_text[family]
        assert after_text[family][0] == "-P OUTPUT DROP"
        assert "-N AGENTGUARD-EGRESS" in after_text[family]
        allowed = "%s/%d" % ((V4["allowed"], 32) if family == "ipv4" else (V6["allowed"], 128))
        assert [l for l in after_text[family] if "-d %s -p tcp -m tcp --dport 443 " % allowed in l], after_text[family]
        assert first["changes"][family]["removed"] == ["-P OUTPUT ACCEPT"]
        assert after_text[family][1:] == first["changes"][family]["added"][1:]

    again_check = egress(POLICY, check=True)
    again = egress(POLICY)
    assert again_check["changed"] is False and again["changed"] is False
    assert again["changes"] == {"ipv4": {"added": [], "removed": []}, "ipv6": {"added": [], "removed": []}}
    assert again["diff"]["before"] == again["diff"]["after"] == diff["after"]

    v4, v6, sets = snapshot(lab)
    assert foreign_lines(v4) == foreign_lines(before[0]) and foreign_lines(v6) == foreign_lines(before[1])
    assert sets == before[2]
    for text in (v4, v6):
        assert text.splitlines()[1:4] == [":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT DROP [0:0]"]
    assert [l for l in v4.splitlines() if l.startswith("-A OUTPUT")][0] == "-A OUTPUT -j AGENTGUARD-EGRESS"

    # What the role will persist is exactly what the kernel now enforces.
    for family, text in (("ipv4", v4), ("ipv6", v6)):
        ours = [l for l in text.splitlines() if "AGENTGUARD" in l]
        assert [l for l in first["rules"][family].splitlines() if "AGENTGUARD" in l] == ours

    results = lab.probe(ALLOWED + BLOCKED + DNS)
    assert {t: results[t] for t in ALLOWED + DNS} == {t: "ok" for t in ALLOWED + DNS}
    assert {t: results[t] for t in BLOCKED} == {t: "timeout" for t in BLOCKED}


def test_users_scope_restricts_only_listed_users(lab, egress):
    egress(dict(POLICY, scope="users", users=["65534"]))
    nobody = lab.probe(ALLOWED + BLOCKED, uid=65534)
    root = lab.probe(BLOCKED, uid=0)
    assert all(nobody[t] == "ok" for t in ALLOWED)
    assert all(nobody[t] == "timeout" for t in BLOCKED)
    assert all(root[t] == "ok" for t in BLOCKED), "users outside the scope are untouched"
    assert ":OUTPUT ACCEPT" in lab.save("ipv4")


def test_reject_fails_fast(lab, egress):
    egress(dict(POLICY, deny_action="reject"))
    results = lab.probe(BLOCKED, timeout=5)
    assert set(results.values()) == {"refused"}


def test_audit_mode_blocks_nothing(lab, egress):
    egress(dict(POLICY, mode="audit"))
    assert set(lab.probe(ALLOWED + BLOCKED).values()) == {"ok"}
    assert "-A AGENTGUARD-DENY -j RETURN" in lab.save("ipv4")


def test_family_not_listed_is_still_locked(lab, egress):
    egress(dict(POLICY, families=["ipv4"]))
    results = lab.probe(ALLOWED)
    assert results[ALLOWED[0]] == "ok" and results[ALLOWED[1]] == "timeout"


def test_many_addresses_use_ipsets(lab, egress):
    policy = dict(POLICY, allow=POLICY["allow"] + [dict(name="cdn", host="cdn.test", ports=[8443])])
    first = egress(policy)
    assert first["resolved"]["cdn"] == {"ipv4": CDN4, "ipv6": CDN6}
    assert egress(policy)["changed"] is False
    sets = lab.run("ipset", "save").stdout
    assert sets.count("add ag4-cdn ") == 12 and sets.count("add ag6-cdn ") == 12
    allow = [l for l in lab.save("ipv4").splitlines() if "agentguard: cdn" in l]
    assert allow == ['-A AGENTGUARD-ALLOW -p tcp -m set --match-set ag4-cdn dst -m tcp --dport 8443 '
                     '-m conntrack --ctstate NEW -m comment --comment "agentguard: cdn" -j ACCEPT']
    results = lab.probe(["tcp:%s:8443" % CDN4[7], "tcp:[%s]:8443" % CDN6[3], "tcp:%s:443" % CDN4[7]])
    assert results == {"tcp:%s:8443" % CDN4[7]: "ok", "tcp:[%s]:8443" % CDN6[3]: "ok", "tcp:%s:443" % CDN4[7]: "timeout"}
    # Dropping the destination removes its sets once no rule refers to them.
    assert egress(POLICY)["changed"] is True
    assert "ag4-cdn" not in lab.run("ipset", "save").stdout


def test_a_list_of_addresses_is_one_destination(lab, egress):
    # Ten IPv4 addresses (one set) and three IPv6 ones (a rule each) under one label; the rest of the CDN is not listed.
    listed4, listed6 = CDN4[:10], CDN6[:3]
    policy = dict(POLICY, allow=POLICY["allow"] + [dict(name="pool", host=listed4 + listed6, ports=[8443])])
    first = egress(policy)
    assert first["changed"] is True
    assert first["resolved"]["pool"] == {"ipv4": [a + "/32" for a in listed4], "ipv6": [a + "/128" for a in listed6]}
    assert egress(policy)["changed"] is False
    sets = lab.run("ipset", "save").stdout
    assert sets.count("add ag4-pool ") == 10 and "ag6-pool" not in sets
    assert sum("agentguard: pool" in l for l in lab.save("ipv4").splitlines()) == 1
    assert sum("agentguard: pool" in l for l in lab.save("ipv6").splitlines()) == 3
    probes = {"tcp:%s:8443" % CDN4[9]: "ok", "tcp:[%s]:8443" % CDN6[2]: "ok",
              "tcp:%s:8443" % CDN4[11]: "timeout", "tcp:[%s]:8443" % CDN6[5]: "timeout"}
    assert lab.probe(list(probes)) == probes


def failing_ip6tables_restore(tmp_path, reads_input):
    """A PATH prefix whose ip6tables-restore validates for real but fails every commit, either after
    reading its input or at once (the module then meets a broken pipe)."""
    directory = tmp_path / "fault"
    directory.mkdir()
    real = sh("sh", "-c", "command -v ip6tables-restore").stdout.strip()
    script = directory / "ip6tables-restore"
    script.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = --test ] && exec %s "$@"; done\n%s'
                      'echo "ip6tables-restore: injected commit failure" >&2\nexit 4\n'
                      % (real, "cat >/dev/null\n" if reads_input else ""))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(directory)


@pytest.mark.parametrize("reads_input", [True, False], ids=["fails-after-input", "dies-before-input"])
@pytest.mark.parametrize("start", ["fresh", "hardened"])
def test_failure_mid_apply_leaves_host_identical(lab, egress, tmp_path, start, reads_input):
    add_foreign_rules(lab)
    if start == "hardened":
        egress(POLICY)
    before = snapshot(lab)
    # The new policy needs sets and changes both families; IPv6 fails after IPv4 committed.
    policy = dict(POLICY, allow=POLICY["allow"] + [dict(name="cdn", host="cdn.test", ports=[8443])], deny_action="reject")
    result = ModuleRunner(lab, failing_ip6tables_restore(tmp_path, reads_input))(policy, expect_failure=True)
    assert "ip6tables-restore" in result["msg"] and "previous rules were restored" in result["msg"], result
    if reads_input:
        assert "injected commit failure" in result["msg"]
    assert snapshot(lab) == before


def test_absent_returns_to_original_rules(lab, egress):
    add_foreign_rules(lab)
    before = snapshot(lab)
    egress(dict(POLICY, allow=POLICY["allow"] + [dict(name="cdn", host="cdn.test", ports=[8443])]))
    assert snapshot(lab) != before
    removed = egress(dict(state="absent"))
    assert removed["changed"] is True
    assert snapshot(lab) == before
    assert egress(dict(state="absent"))["changed"] is False


@pytest.mark.parametrize("params,fragment", [
    (dict(POLICY, allow=[dict(name="x", host="api.test", ports=[70000])]), "allow[0].ports[0]: 70000 is out of range"),
    (dict(POLICY, scope="users", users=["no-such-user-here"]), "users[0]: user 'no-such-user-here' does not exist"),
    (dict(POLICY, allow=[dict(name="x", host="nx.test")]), "cannot resolve nx.test (A) through 198.18.1.53, fd00:a9e:2::53"),
    (dict(POLICY, log_limit="ten per minute"), "log_limit: 'ten per minute' is not a rate"),
    # Types and choices: AnsibleModule's, against the one ARGUMENT_SPEC; what it lets through, build_policy refuses.
    (dict(POLICY, allow=[dict(name="x", host="api.test", protocol="icmp")]), "value of protocol must be one of: tcp, udp"),
    (dict(POLICY, log_burst=True), "log_burst: True is not a whole number"),
])
def test_bad_input_changes_nothing(lab, egress, params, fragment):
    add_foreign_rules(lab)
    before = snapshot(lab)
    result = egress(params, expect_failure=True)
    assert fragment in result["msg"]
    assert snapshot(lab) == before


@pytest.mark.parametrize("backend,other", [("nft", "legacy"), ("legacy", "nft")])
def test_rules_land_in_the_backend_in_use(lab, backend_path, backend, other):
    runner = ModuleRunner(lab, backend_path(backend))
    assert runner(POLICY)["changed"] is True
    assert runner(POLICY)["changed"] is False
    assert "AGENTGUARD-EGRESS" in lab.save("ipv4", "iptables-%s-save" % backend)
    assert "AGENTGUARD-EGRESS" in lab.save("ipv6", "ip6tables-%s-save" % backend)
    assert "AGENTGUARD" not in lab.save("ipv4", "iptables-%s-save" % other)
    results = lab.probe(ALLOWED + BLOCKED[:2])
    assert [results[t] for t in ALLOWED + BLOCKED[:2]] == ["ok", "ok", "timeout", "timeout"]
    assert runner(dict(state="absent"))["changed"] is True


def test_denials_are_logged_with_uid_and_rate_limited(lab, egress, kernel_log):
    egress(dict(POLICY, log_limit="1/hour", log_burst=5, scope="users", users=["65534"]))
    port = 20000 + os.getpid() % 10000  # unique per run, so earlier runs' lines do not count
    lab.run("ip", "link", "set", "lo", "up")
    targets = ["tcp:%s:%d" % (V4["forbidden"], port)]
    assert lab.probe(targets, uid=65534, timeout=0.5) == {targets[0]: "timeout"}
    lines = [l for l in kernel_log().splitlines() if "DPT=%d " % port in l]
    assert lines and all("[EGRESS-DENIED] " in l and "UID=65534" in l and "DST=%s" % V4["forbidden"] in l for l in lines)
    # A flood of 1,000 more attempts: every one denied, but the log stays within burst + rate.
    flood = lab.probe(targets, uid=65534, timeout=0.2, repeat=1000)
    assert flood == {targets[0]: {"timeout": 1000}}
    lines = [l for l in kernel_log().splitlines() if "DPT=%d " % port in l]
    assert 1 <= len(lines) <= 5 + 1, "log not rate-limited: %d lines" % len(lines)

    # egress_denials finds them as structured records of this host only, with uid, destination and port.
    report = egress(dict(source="dmesg", since="10m"), module="agentguard.hardening.egress_denials", diff=False)
    mine = [d for d in report["denials"] if d["dpt"] == port]
    assert len(mine) == 1 and mine[0]["count"] == len(lines)
    assert mine[0]["dst"] == V4["forbidden"] and mine[0]["uid"] == 65534 and mine[0]["protocol"] == "tcp"
    assert mine[0]["sources"] == [V4["host"]] and mine[0]["first"] <= mine[0]["last"]
    assert report["changed"] is False and report["source"] == "dmesg"


FILTERING = dict(POLICY, dns_mode="filtering", dns_resolver_user="nobody", resolvers=["127.0.0.1"], dns_set_timeout=20)


def test_filtering_resolver_follows_dns_and_closes_tunnels(lab, egress, kernel_log):
    lab.start_filtering_resolver([("inference-api", "api.test")], set_timeout=20)
    first = egress(FILTERING)
    assert first["changed"] is True and first["resolved"]["inference-api"]["ipv4"] == [V4["allowed"]]
    # The resolver keeps learning; that is not drift.
    lab.probe(["udp-dns:127.0.0.1:api.test"])
    assert egress(FILTERING)["changed"] is False
    assert egress(FILTERING, check=True)["changed"] is False

    agent = 4242
    assert lab.probe(["udp-dns:127.0.0.1:api.test"] + ALLOWED, uid=agent) == dict.fromkeys(["udp-dns:127.0.0.1:api.test"] + ALLOWED, "ok")

    # Tunnelling: a non-allowlisted zone gets NXDOMAIN from the local resolver and never reaches upstream,
    # and the upstream is unreachable directly over UDP and TCP, and by DNS-over-TLS.
    before = len(lab.upstream_queries())
    tunnel = ["udp-dns:127.0.0.1:c2VjcmV0LWRhdGE.exfil.example", "tcp-dns:127.0.0.1:bW9yZS1kYXRh.exfil.example",
              "udp-dns:127.0.0.1:x1.api.test.exfil.example", "udp-dns:127.0.0.1:deep.api.test"]
    direct = ["udp-dns:%s:q1.exfil.example" % V4["dns"], "tcp-dns:%s:q2.exfil.example" % V4["dns"],
              "udp-dns:[%s]:q3.exfil.example" % V6["dns"], "tcp:%s:853" % V4["dns"]]
    results = lab.probe(tunnel + direct, uid=agent)
    assert {t: results[t] for t in tunnel} == dict.fromkeys(tunnel, "NXDOMAIN")
    assert {t: results[t] in ("timeout", "denied") for t in direct} == dict.fromkeys(direct, True), results
    assert not [q for q in lab.upstream_queries()[before:] if "exfil.example" in q or "deep.api.test" in q]
    denied_dns = [l for l in kernel_log().splitlines()
                  if "DST=%s " % V4["dns"] in l and "DPT=53 " in l and "UID=%d " % agent in l and "[EGRESS-DENIED] " in l]
    assert denied_dns, "direct DNS to the upstream must be logged"

    # Rotation: the API moves; without re-running Ansible the next lookup opens the new address...
    new = CDN4[5]
    lab.move_name("api.test", [new])
    assert lab.probe(["tcp:%s:443" % new], uid=agent) == {"tcp:%s:443" % new: "timeout"}
    assert lab.probe(["udp-dns:127.0.0.1:api.test"], uid=agent) == {"udp-dns:127.0.0.1:api.test": "ok"}
    assert lab.probe(["tcp:%s:443" % new], uid=agent) == {"tcp:%s:443" % new: "ok"}
    # ...and the old one closes once its timeout (20 s, the least the module takes) has passed without an answer naming it.
    deadline = time.monotonic() + 35
    while lab.probe([ALLOWED[0]], uid=agent, timeout=0.5)[ALLOWED[0]] == "ok":
        assert time.monotonic() < deadline, "the old address is still open after its timeout"
        time.sleep(1)


def test_log_limit_is_rendered_as_iptables_prints_it(tmp_path):
    """Every rate must come back from iptables-save exactly as we render it, or runs never converge."""
    from .conftest import require_root
    require_root()
    from ansible_collections.agentguard.hardening.plugins.module_utils._policy import parse_log_limit
    rates = ["%d/%s" % (n, unit) for unit in ("second", "minute", "hour", "day")
             for n in (1, 2, 3, 7, 10, 24, 59, 60, 61, 90, 120, 1000, 3600) if not (unit == "second" and n > 1000)]
    ns = "agit-rate-%d" % os.getpid()
    sh("ip", "netns", "add", ns)
    try:
        for rate in rates:
            sh("ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-m", "limit", "--limit", rate, "-j", "ACCEPT")
        saved = [l.split("--limit ")[1].split()[0] for l in sh("ip", "netns", "exec", ns, "iptables-save").stdout.splitlines()
                 if "--limit " in l]
    finally:
        sh("ip", "netns", "del", ns, check=False)
    assert saved == [parse_log_limit(rate) for rate in rates]


# A TCP session into the host (as Ansible's SSH session is): the host's server answers "<word>\n"
# for each word fed to it; the peer only listens after its first line, so the host sends first.
SESSION_SERVER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); c.recv(100); print("accepted", flush=True)
for line in sys.stdin:
    c.sendall(line.encode())
"""
SESSION_PEER = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); c.sendall(b"hello\\n")
c.settimeout(None)
for line in c.makefile():
    print("got " + line.strip(), flush=True)
"""


class Session(object):
    """A connection opened from the peer to a server in the host before the host's rules change."""

    def __init__(self, lab, address, port):
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", lab.host, PYTHON, "-u", "-c", SESSION_SERVER, address, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
        lab.procs.append(self.server)
        assert self.server.stdout.readline().strip() == "ready"
        self.peer = lab.spawn(lab.peer, [PYTHON, "-u", "-c", SESSION_PEER, address, str(port)])
        assert self.server.stdout.readline().strip() == "accepted"

    def host_sends(self, word, timeout=3.0):
        """The host sends first; True when the peer got it within the timeout."""
        self.server.stdin.write(word + "\n")
        self.server.stdin.flush()
        ready = select.select([self.peer.stdout], [], [], timeout)[0]
        return bool(ready) and self.peer.stdout.readline().strip() == "got " + word


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_tracking_tells_when_an_open_session_needs_audit_mode_first(lab, egress, family):
    """The role's first-apply order, on a real kernel: the module reports whether tracking runs;
    when it does not, audit mode first keeps a session opened before the rules alive, and enforcing
    at once cuts it. The report must be false again after state=absent, although tracked
    connections outlive the rules (the count of tracked connections is no guide)."""
    host = V4["host"] if family == "ipv4" else V6["host"]
    assert egress(POLICY, check=True)["tracking"] == {"ipv4": False, "ipv6": False}

    kept = Session(lab, host, 2201)
    egress(dict(POLICY, mode="audit"))
    assert kept.host_sends("after-audit"), "audit mode blocks nothing"
    egress(POLICY)
    assert kept.host_sends("after-enforce"), "the session seen in audit mode is ESTABLISHED now"
    assert egress(POLICY, check=True)["tracking"] == {"ipv4": True, "ipv6": True}

    egress(dict(state="absent"))
    assert int(lab.run("cat", "/proc/sys/net/netfilter/nf_conntrack_count").stdout) > 0
    assert egress(POLICY, check=True)["tracking"] == {"ipv4": False, "ipv6": False}

    # Control: enforcing at once, as the role did after remove-egress.yml, cuts such a session.
    cut = Session(lab, host, 2202)
    egress(POLICY)
    assert not cut.host_sends("after-enforce"), "the host's first packet is NEW and must be dropped"
